"""``uniloss reproduce TABLE``: every run of one of the paper's tables, then the table itself.

Each run is a ``uniloss train`` subprocess (one thread each, ``--jobs`` at a time) writing to
``<runs-dir>/<table>/<loss>-seed<N>/``; finished runs are reused and interrupted ones resumed, so
the command can be re-run after a crash (a finished run of other settings, e.g. of an older
``short`` schedule, stops the command with the difference instead of entering the table). The
table goes to ``<out>/``: ``results.json`` (the schema below), ``results.md`` and ``curves.png``::

    {"table": str, "machine": str, "date": str, "command": str,
     "rows": [{"dataset": str, "loss": str, "metric": str, "mean": float, "std": float,
               "seeds": [float, ...], "paper": float or null}]}

A table may be a group of tables (an object with ``parts``, e.g.
:class:`~uniloss.experiments.multiclass.TableGroup`): its runs go to
``<runs-dir>/<table>/<experiment>/<loss>-seed<N>/`` and its rows follow each other in one
``results.json``. An experiment with ``missing_data(data_dir)`` (e.g.
:class:`~uniloss.experiments.multiclass.ScheduledExperiment`) whose data is absent is not run:
its rows have ``mean``, ``std`` null, no seeds and ``"note": "data not available here"``. With
``--schedule S`` (other than ``paper``) the runs go to ``<runs-dir>/<table>-<S>/``.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import textwrap
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .registry import TABLES, Table, get_experiment
from .train import RunOptions, resolve_recipe, settings_differ


METRIC_NAMES = {"ap_interpolated": "test AP (VOC-interpolated)", "ap": "test AP (plain)",
                "accuracy": "test accuracy", "pck": "test PCK", "top5": "test top-5 accuracy"}


def command_line(script: str, argv: Optional[Sequence[str]] = None) -> str:
    """The shell command that reruns ``python script argv`` (``sys.argv[1:]`` when ``argv`` is
    None), each argument quoted where the shell would split it, so that a results page's command
    can be pasted as it stands.

    >>> print(command_line("benchmarks/lr_sweep.py", ["--losses", 'interpolation="chain"', "--seeds", "0"]))
    python benchmarks/lr_sweep.py --losses 'interpolation="chain"' --seeds 0
    >>> command_line("benchmarks/lr_sweep.py", [])
    'python benchmarks/lr_sweep.py'
    """
    return shlex.join(["python", script, *(sys.argv[1:] if argv is None else argv)])


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


def _parts(table) -> Tuple[Table, ...]:
    """The tables of a table: a group's ``parts``, or the table itself."""
    parts = getattr(table, "parts", None)
    return tuple(parts) if parts is not None else (table,)


def _run_command(table: Table, loss: str, seed: int, run_dir: Path, args) -> List[str]:
    cmd = [sys.executable, "-m", "uniloss.experiments.cli", "train", table.experiment, "--loss", loss,
           "--seed", str(seed), "--out", str(run_dir), "--threads", "1", "--resume", "--device", args.device]
    if args.epochs is not None:
        cmd += ["--epochs", str(args.epochs)]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    if getattr(args, "limit_train", None):
        cmd += ["--limit-train", str(args.limit_train)]
    if getattr(args, "schedule", None):
        cmd += ["--schedule", args.schedule]
    if getattr(args, "amp", False):
        cmd += ["--amp"]
    return cmd


def _finished(run_dir: Path, recipe) -> bool:
    """Whether ``run_dir`` holds a finished run of ``recipe``.

    A finished run of another recipe (e.g. one left by an older ``short`` schedule with fewer
    epochs) is an error, not a result to reuse: its numbers would go into the table under the
    wrong schedule, and resuming it would mix two schedules.
    """
    final = run_dir / "final.json"
    if not final.exists():
        return False
    done = json.loads(final.read_text())
    want = json.loads(json.dumps(asdict(recipe)))  # tuples as JSON lists, as final.json has them
    have = done.get("config") or {"epochs": done.get("epochs")}  # a run without its config: its epochs
    shared = [k for k in want if k in have]  # a run's config holds more than its recipe
    diff = settings_differ({k: have[k] for k in shared}, {k: want[k] for k in shared})
    if diff:
        raise ValueError(f"{run_dir} holds a finished run of other settings: {diff}; "
                         "move it away or choose another --runs-dir")
    return True


def run_table(name: str, args) -> int:
    if name not in TABLES:
        raise ValueError(f"unknown table {name!r}; choose one of: {', '.join(sorted(TABLES))}")
    table = TABLES[name]
    grouped = hasattr(table, "parts")
    schedule = getattr(args, "schedule", None)
    runs_root = Path(args.runs_dir) / (name if schedule in (None, "paper") else f"{name}-{schedule.replace(':', '-')}")
    plans, pending = [], []  # plans: (table, experiment, seeds, runs folder, why not run or None)
    only = getattr(args, "losses", None)
    if only:  # a table's rows, or any other loss its experiment trains (a probe beside the rows)
        known = [loss for part in _parts(table) for loss in part.losses + get_experiment(part.experiment).losses]
        unknown = [loss for loss in only if loss not in known]
        if unknown:
            raise ValueError(f"table {name!r} has no loss {', '.join(map(repr, unknown))}; its losses: {', '.join(dict.fromkeys(known))}")
    for part in _parts(table):
        exp = get_experiment(part.experiment)
        if only:  # the rows asked for, in the table's order, then the experiment's other losses asked for
            extra = tuple(loss for loss in only if loss not in part.losses and loss in exp.losses)
            part = replace(part, losses=tuple(loss for loss in part.losses if loss in only) + extra)
            if not part.losses:
                continue
        for loss in part.losses:  # an unknown schedule or loss fails here, before any run starts
            resolve_recipe(exp, RunOptions(loss=loss, schedule=schedule))
        seeds = list(args.seeds) if args.seeds else list(part.seeds)
        root = runs_root / part.experiment if grouped else runs_root
        missing = getattr(exp, "missing_data", None)
        reason = missing(args.data_dir) if missing is not None else None
        plans.append((part, exp, seeds, root, reason))
        if reason:
            print(f"uniloss reproduce {name}: {part.experiment}: {reason}; not run", file=sys.stderr)
            continue
        for loss in part.losses:
            for seed in seeds:
                run_dir = root / f"{loss}-seed{seed}"
                recipe = resolve_recipe(exp, RunOptions(loss=loss, schedule=schedule, epochs=args.epochs))
                if not _finished(run_dir, recipe):
                    pending.append((part, loss, seed, run_dir))
    total = sum(len(p.losses) * len(seeds) for p, _, seeds, _, reason in plans if not reason)
    print(f"uniloss reproduce {name}: {total} runs ({len(pending)} to train), {args.jobs} at a time, "
          f"in {runs_root}", file=sys.stderr, flush=True)
    failures = _run_all(pending, args)
    if failures:
        for loss, seed, run_dir, code in failures:
            print(f"uniloss: run {loss} seed {seed} failed (exit {code}); see {run_dir}/stdout.log", file=sys.stderr)
        return 1
    report = _collect(name, plans, args)
    out = Path(args.out) if args.out else Path("docs/results") / name
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "results.md").write_text(_markdown(report, table, plans))
    plot = _plot(table, plans, out / "curves.png")
    print((out / "results.md").read_text())
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}" + (f", {plot}" if plot else ""), file=sys.stderr)
    return 0


def _run_all(pending, args):
    from tqdm import tqdm

    failures, running = [], []
    queue = list(pending)
    bar = tqdm(total=len(pending), desc="runs", disable=not sys.stderr.isatty(), file=sys.stderr)
    while queue or running:
        while queue and len(running) < args.jobs:
            part, loss, seed, run_dir = queue.pop(0)
            run_dir.mkdir(parents=True, exist_ok=True)
            log = open(run_dir / "stdout.log", "a")
            proc = subprocess.Popen(_run_command(part, loss, seed, run_dir, args), stdout=log, stderr=subprocess.STDOUT)
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
                    print(json.dumps({"run": str(run_dir), "test": json.loads((run_dir / "final.json").read_text())["test"]}), flush=True)
    bar.close()
    return failures


def _collect(name: str, plans, args) -> Dict:
    rows, epochs, seeds_used = [], None, None
    for part, exp, seeds, root, reason in plans:
        for loss in part.losses:
            finals = [] if reason else [json.loads((root / f"{loss}-seed{s}" / "final.json").read_text()) for s in seeds]
            if finals and epochs is None:
                epochs, seeds_used = finals[0]["epochs"], list(seeds)
            other = {"paper_dataset": part.paper_dataset} if getattr(part, "paper_dataset", None) else {}
            for metric in part.metrics:
                paper = exp.paper.get((loss, metric))
                if reason:
                    rows.append({"dataset": exp.dataset, "loss": loss, "metric": metric, "mean": None, "std": None,
                                 "seeds": [], "paper": paper, "note": "data not available here", **other})
                    continue
                values = [f["test"][metric] for f in finals]
                rows.append({
                    "dataset": exp.dataset, "loss": loss, "metric": metric,
                    "mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "seeds": values, "paper": paper, "epochs": finals[0]["epochs"],
                    "mean_epoch_time_s": statistics.mean(f["mean_epoch_time_s"] for f in finals), **other,
                })
    schedule = getattr(args, "schedule", None)
    command = f"uniloss reproduce {name} --seeds {' '.join(map(str, seeds_used or plans[0][2]))}"
    if schedule:
        command += f" --schedule {schedule}"
    if getattr(args, "losses", None):
        command += f" --losses {' '.join(args.losses)}"
    if args.epochs is not None:
        command += f" --epochs {args.epochs}"
    out = getattr(args, "out", None)
    if out and Path(out) != Path("docs/results") / name:  # regenerating writes where this table is
        command += f" --out {out}"
    return {"table": name, "machine": machine(), "date": time.strftime("%Y-%m-%d"), "command": command,
            "schedule": schedule or "paper", "epochs": epochs, "seeds_used": seeds_used or plans[0][2], "rows": rows}


def _markdown(report: Dict, table, plans) -> str:
    lines = [f"# {table.title or report['table']}", "",
             f"Command: `{report['command']}`  ", f"Machine: {report['machine']}  ",
             f"Date: {report['date']}; seeds {report['seeds_used']}; {report['epochs']} epochs"
             + ("" if report.get("schedule", "paper") == "paper" else f" (schedule {report['schedule']})")]
    if not hasattr(table, "parts"):
        lines[-1] += f"; settings: {plans[0][1].description}."
        lines += [""] + ([plans[0][1].notes, ""] if plans[0][1].notes else [])
    else:  # a group: each part's settings, the notes of those that ran
        lines[-1] += "; settings:"
        lines += [""] + [f"- {exp.description}" + (f": {reason}." if reason else ".") for _, exp, _, _, reason in plans]
        lines += [""] + [line for _, exp, _, _, reason in plans if exp.notes and not reason for line in (exp.notes, "")]
    other = getattr(table, "paper_dataset", None)
    if other:
        lines += [f"The paper's numbers are on {other}, a different dataset: they are shown for reference, "
                  "with no gap computed.", ""]
    paper_head = f"paper ({other})" if other else "paper"
    lines += [f"| dataset | loss | metric | {paper_head} | ours (mean ± std) | gap | per seed | s/epoch |",
              "|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        paper = "—" if r["paper"] is None else f"{r['paper']:.4f}"
        metric = METRIC_NAMES.get(r["metric"], r["metric"])
        if r["mean"] is None:
            lines.append(f"| {r['dataset']} | {r['loss']} | {metric} | {paper} | {r.get('note', '—')} | — | — | — |")
            continue
        gap = "—" if r["paper"] is None or other else f"{r['mean'] - r['paper']:+.4f}"
        seeds = ", ".join(f"{v:.4f}" for v in r["seeds"])
        loss = r["loss"] if r.get("epochs", report["epochs"]) == report["epochs"] else f"{r['loss']} ({r['epochs']} epochs)"
        lines.append(f"| {r['dataset']} | {loss} | {metric} | {paper} | "
                     f"{r['mean']:.4f} ± {r['std']:.4f} | {gap} | {seeds} | {r['mean_epoch_time_s']:.1f} |")
    lines += ["", "Curves of the validation metric per epoch: `curves.png`.", ""]
    return "\n".join(lines)


def _curve_label(loss: str, seeds: Sequence[int]) -> str:
    """Legend text of a loss's bold curve: the seed it is, or the number of seeds it averages."""
    return f"{loss} (seed {seeds[0]})" if len(seeds) == 1 else f"{loss} (mean of {len(seeds)} seeds)"


def _plot(table, plans, path: Path) -> Optional[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    shown = [(part, exp, seeds, root) for part, exp, seeds, root, reason in plans if not reason]
    if not shown:
        return None
    # Many rows (the keypoint table's ten losses) put the legend beside the axes, not over the curves.
    beside = max(len(part.losses) for part, *_ in shown) > 5
    fig, axes = plt.subplots(1, len(shown), figsize=((9.0 if beside else 6.5) * len(shown), 4), squeeze=False)
    for ax, (part, exp, seeds, root) in zip(axes[0], shown):
        metric = part.metrics[0]
        for i, loss in enumerate(part.losses):
            curves = []
            for s in seeds:
                log = root / f"{loss}-seed{s}" / "log.jsonl"
                curves.append([json.loads(line)["val"][metric] for line in log.read_text().splitlines() if line])
                ax.plot(range(1, len(curves[-1]) + 1), curves[-1], color=f"C{i}", alpha=0.25, lw=0.8)
            mean = [statistics.mean(v) for v in zip(*curves)]
            ax.plot(range(1, len(mean) + 1), mean, color=f"C{i}", lw=2, label=_curve_label(loss, seeds))
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"validation {METRIC_NAMES.get(metric, metric).replace('test ', '')}")
        title = exp.dataset if hasattr(table, "parts") else table.title or table.experiment
        ax.set_title(textwrap.fill(title, 70), fontsize=10)  # long titles wrap instead of running off the figure
        ax.grid(alpha=0.3)
        if beside:
            ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
        else:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)
