"""``uniloss reproduce TABLE``: every run of one of the paper's tables, then the table itself.

Each run is a ``uniloss train`` subprocess (one thread each, ``--jobs`` at a time) writing to
``<runs-dir>/<table>/<loss>-seed<N>/``; finished runs are reused and interrupted ones resumed, so
the command can be re-run after a crash. The table goes to ``<out>/``: ``results.json`` (the
schema below), ``results.md`` and ``curves.png``::

    {"table": str, "machine": str, "date": str, "command": str,
     "rows": [{"dataset": str, "loss": str, "metric": str, "mean": float, "std": float,
               "seeds": [float, ...], "paper": float or null}]}
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from .registry import TABLES, Table, get_experiment


METRIC_NAMES = {"ap_interpolated": "test AP (VOC-interpolated)", "ap": "test AP (plain)",
                "accuracy": "test accuracy", "pck": "test PCK"}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()}"


def _run_command(table: Table, loss: str, seed: int, run_dir: Path, args) -> List[str]:
    cmd = [sys.executable, "-m", "uniloss.experiments.cli", "train", table.experiment, "--loss", loss,
           "--seed", str(seed), "--out", str(run_dir), "--threads", "1", "--resume", "--device", args.device]
    if args.epochs is not None:
        cmd += ["--epochs", str(args.epochs)]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    if getattr(args, "limit_train", None):
        cmd += ["--limit-train", str(args.limit_train)]
    return cmd


def _finished(run_dir: Path, epochs: Optional[int]) -> bool:
    final = run_dir / "final.json"
    if not final.exists():
        return False
    done = json.loads(final.read_text())
    return epochs is None or done.get("epochs") == epochs


def run_table(name: str, args) -> int:
    if name not in TABLES:
        raise ValueError(f"unknown table {name!r}; choose one of: {', '.join(sorted(TABLES))}")
    table = TABLES[name]
    exp = get_experiment(table.experiment)
    seeds = list(args.seeds) if args.seeds else list(table.seeds)
    runs_root = Path(args.runs_dir) / name
    pending = []
    for loss in table.losses:
        for seed in seeds:
            run_dir = runs_root / f"{loss}-seed{seed}"
            if not _finished(run_dir, args.epochs):
                pending.append((loss, seed, run_dir))
    print(f"uniloss reproduce {name}: {len(table.losses) * len(seeds)} runs "
          f"({len(pending)} to train), {args.jobs} at a time, in {runs_root}", file=sys.stderr, flush=True)
    failures = _run_all(table, pending, args)
    if failures:
        for loss, seed, run_dir, code in failures:
            print(f"uniloss: run {loss} seed {seed} failed (exit {code}); see {run_dir}/stdout.log", file=sys.stderr)
        return 1
    report = _collect(table, exp, seeds, runs_root, args)
    out = Path(args.out) if args.out else Path("docs/results") / name
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "results.md").write_text(_markdown(report, table, exp))
    plot = _plot(table, seeds, runs_root, out / "curves.png")
    print((out / "results.md").read_text())
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}" + (f", {plot}" if plot else ""), file=sys.stderr)
    return 0


def _run_all(table: Table, pending, args):
    from tqdm import tqdm

    failures, running = [], []
    queue = list(pending)
    bar = tqdm(total=len(pending), desc="runs", disable=not sys.stderr.isatty(), file=sys.stderr)
    while queue or running:
        while queue and len(running) < args.jobs:
            loss, seed, run_dir = queue.pop(0)
            run_dir.mkdir(parents=True, exist_ok=True)
            log = open(run_dir / "stdout.log", "a")
            proc = subprocess.Popen(_run_command(table, loss, seed, run_dir, args), stdout=log, stderr=subprocess.STDOUT)
            running.append((proc, log, loss, seed, run_dir))
        time.sleep(0.5)
        for item in list(running):
            proc, log, loss, seed, run_dir = item
            if proc.poll() is not None:
                log.close()
                running.remove(item)
                bar.update(1)
                if proc.returncode != 0:
                    failures.append((loss, seed, run_dir, proc.returncode))
                elif not sys.stderr.isatty():
                    print(json.dumps({"run": f"{loss}-seed{seed}", "test": json.loads((run_dir / "final.json").read_text())["test"]}), flush=True)
    bar.close()
    return failures


def _collect(table: Table, exp, seeds, runs_root: Path, args) -> Dict:
    rows = []
    for loss in table.losses:
        finals = [json.loads((runs_root / f"{loss}-seed{s}" / "final.json").read_text()) for s in seeds]
        for metric in table.metrics:
            values = [f["test"][metric] for f in finals]
            rows.append({
                "dataset": exp.dataset, "loss": loss, "metric": metric,
                "mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "seeds": values, "paper": exp.paper.get((loss, metric)),
                "mean_epoch_time_s": statistics.mean(f["mean_epoch_time_s"] for f in finals),
            })
    epochs = finals[0]["epochs"]
    command = f"uniloss reproduce {table.experiment} --seeds {' '.join(map(str, seeds))}"
    if args.epochs is not None:
        command += f" --epochs {args.epochs}"
    return {"table": table.experiment, "machine": machine(), "date": time.strftime("%Y-%m-%d"),
            "command": command, "epochs": epochs, "seeds_used": list(seeds), "rows": rows}


def _markdown(report: Dict, table: Table, exp) -> str:
    lines = [f"# {table.title or report['table']}", "",
             f"Command: `{report['command']}`  ", f"Machine: {report['machine']}  ",
             f"Date: {report['date']}; seeds {report['seeds_used']}; {report['epochs']} epochs; "
             f"settings: {exp.description}.", ""]
    if exp.notes:
        lines += [exp.notes, ""]
    lines += ["| dataset | loss | metric | paper | ours (mean ± std) | gap | per seed | s/epoch |",
              "|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        paper = "—" if r["paper"] is None else f"{r['paper']:.4f}"
        gap = "—" if r["paper"] is None else f"{r['mean'] - r['paper']:+.4f}"
        seeds = ", ".join(f"{v:.4f}" for v in r["seeds"])
        lines.append(f"| {r['dataset']} | {r['loss']} | {METRIC_NAMES.get(r['metric'], r['metric'])} | {paper} | "
                     f"{r['mean']:.4f} ± {r['std']:.4f} | {gap} | {seeds} | {r['mean_epoch_time_s']:.1f} |")
    lines += ["", "Curves of the validation metric per epoch: `curves.png`.", ""]
    return "\n".join(lines)


def _plot(table: Table, seeds, runs_root: Path, path: Path) -> Optional[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    metric = table.metrics[0]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, loss in enumerate(table.losses):
        curves = []
        for s in seeds:
            log = runs_root / f"{loss}-seed{s}" / "log.jsonl"
            curves.append([json.loads(line)["val"][metric] for line in log.read_text().splitlines() if line])
            ax.plot(range(1, len(curves[-1]) + 1), curves[-1], color=f"C{i}", alpha=0.25, lw=0.8)
        mean = [statistics.mean(v) for v in zip(*curves)]
        ax.plot(range(1, len(mean) + 1), mean, color=f"C{i}", lw=2, label=f"{loss} (mean of {len(seeds)} seeds)")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation {METRIC_NAMES.get(metric, metric).replace('test ', '')}")
    ax.set_title(table.title or table.experiment, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)
