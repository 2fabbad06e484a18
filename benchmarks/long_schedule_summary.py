"""The phases of a long training schedule, read from the runs' logs: held-out accuracy by blocks
of epochs, around each learning-rate drop, and at the end, loss by loss.

    python benchmarks/long_schedule_summary.py docs/results/multiclass/paper-200/fashion-resnet20 \\
        --out docs/results/multiclass/paper-200/phases.md

Each run folder (``<loss>-seed<N>/``, as ``uniloss reproduce`` writes them) holds ``log.jsonl``,
one JSON line per epoch with its ``lr``, its ``test`` and ``val`` metrics and, for UniLoss, the
mean exact metric of its training batches (``train_batch_metric``). The page gives, per run: the
mean held-out metric (``--split``: ``test``, the default, or ``val``, the validation set) of
each block of ``--block`` epochs (of the epochs every run has finished), of the ``--block``
epochs before and after each learning-rate drop, of the last ``--block`` epochs, the final and
the best epoch; and each run minus the first run's (the usual loss's, when it is listed first)
at the same epochs.
"""

import argparse
import json
import os
import sys
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def read_log(folder: str) -> List[dict]:
    """The epochs of one run, in order (a line without ``epoch``, such as ``final``, is left out)."""
    with open(os.path.join(folder, "log.jsonl")) as f:
        return [row for row in map(json.loads, filter(str.strip, f)) if "epoch" in row]


def metric_of(row: dict, split: str = "test", name: Optional[str] = None) -> float:
    """One epoch's ``split`` metric, in percent (``name``, or the split's only metric)."""
    values = row[split]
    return 100 * float(values[name] if name is not None else next(iter(values.values())))


def mean(values: List[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def drops(rows: List[dict]) -> List[int]:
    """The epochs that start at a lower learning rate than the one before."""
    return [b["epoch"] for a, b in zip(rows, rows[1:]) if b["lr"] < a["lr"]]


def phases(rows: List[dict], block: int, split: str = "test") -> Dict[str, float]:
    """Named means of the ``split`` metric (epochs are 1-based, ``a-b`` inclusive)."""
    acc = {row["epoch"]: metric_of(row, split) for row in rows}
    last = max(acc)
    out: Dict[str, float] = {}
    for start in range(1, last + 1, block):
        stop = min(start + block - 1, last)
        out[f"epochs {start}-{stop}"] = mean([acc[e] for e in range(start, stop + 1) if e in acc])
    for d in drops(rows):
        out[f"before the drop at {d} ({d - block}-{d - 1})"] = mean([acc[e] for e in range(d - block, d) if e in acc])
        out[f"after it ({d}-{d + block - 1})"] = mean([acc[e] for e in range(d, d + block) if e in acc])
    start = max(1, last - block + 1)  # a run shorter than a block: all its epochs
    out[f"last {last - start + 1} ({start}-{last})"] = mean([acc[e] for e in range(start, last + 1) if e in acc])
    out[f"final (epoch {last})"] = acc[last]
    best = max(acc, key=lambda e: acc[e])
    out[f"best epoch ({best} for this run)"] = acc[best]
    return out


def differences(logs: Dict[str, List[dict]], split: str = "test") -> Dict[str, List[float]]:
    """Each run's ``split`` metric minus the first run's, epoch by epoch (percentage points), over
    the epochs both have; the first run's entry is its own metric."""
    first, *others = logs
    base = {row["epoch"]: metric_of(row, split) for row in logs[first]}
    out = {first: [base[e] for e in sorted(base)]}
    for run in others:
        mine = {row["epoch"]: metric_of(row, split) for row in logs[run]}
        out[run] = [mine[e] - base[e] for e in sorted(base) if e in mine]
    return out


def plot(logs: Dict[str, List[dict]], path: str, since: int = 1) -> Optional[str]:
    """Each run minus the first, epoch by epoch from ``since``, on the test and validation sets
    (where the logs have ``val``), with the learning-rate drops marked; ``None`` without
    matplotlib (the tables are the result, the figure a reading aid)."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first, *others = logs
    splits = [s for s in ("test", "val") if all(s in row for rows in logs.values() for row in rows)]
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    for split in splits:
        diff = differences(logs, split)
        for run in others:
            # the epochs differences() pairs: the first run's, in order, that this run has too
            epochs = sorted({row["epoch"] for row in logs[first]} & {row["epoch"] for row in logs[run]})
            kept = [(e, d) for e, d in zip(epochs, diff[run]) if e >= since]
            ax.plot([e for e, _ in kept], [d for _, d in kept], lw=1.2, ls="-" if split == "test" else "--",
                    label=f"{run} - {first}, {'test' if split == 'test' else 'validation'} set")
    for d in drops(logs[first]):
        if d >= since:
            ax.axvline(d - 0.5, color="grey", lw=0.8)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xlabel("epoch (grey: a learning-rate drop)")
    ax.set_ylabel("difference (points)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="the experiment's folder of runs (<loss>-seed<N>/log.jsonl)")
    parser.add_argument("--block", type=int, default=10, help="epochs per block (default 10)")
    parser.add_argument("--split", choices=("test", "val"), default="test",
                        help="the held-out set whose metric is read (default test; val: the validation set)")
    parser.add_argument("--out", help="write the page there (markdown) as well")
    parser.add_argument("--plot", help="draw each run minus the first, epoch by epoch, on both held-out sets there (PNG)")
    parser.add_argument("--plot-since", type=int, default=1, help="the plot's first epoch (default 1)")
    args = parser.parse_args()
    runs = sorted(d for d in os.listdir(args.folder) if os.path.isfile(os.path.join(args.folder, d, "log.jsonl")))
    if not runs:
        sys.exit(f"no run folder with a log.jsonl in {args.folder}")
    runs.sort(key=lambda d: not d.startswith(("ce-", "bce-", "mse-")))  # the usual loss first
    logs = {run: read_log(os.path.join(args.folder, run)) for run in runs}
    common = min(max(r["epoch"] for r in rows) for rows in logs.values())  # runs still going: their common epochs
    logs = {run: [r for r in rows if r["epoch"] <= common] for run, rows in logs.items()}
    table = {run: phases(rows, args.block, args.split) for run, rows in logs.items()}
    first = runs[0]
    names = list(table[first])
    lines = [f"# Phases of the schedule: {os.path.basename(os.path.normpath(args.folder))}", "",
             f"`python benchmarks/long_schedule_summary.py {args.folder} --block {args.block}"
             + (" --split val`. Validation" if args.split == "val" else "`. Test") + " metric (%), "
             f"means over the epochs named, epochs 1-{common} (those every run has finished).", "",
             "| epochs | " + " | ".join(runs) + "".join(f" | {run} - {first}" for run in runs[1:]) + " |",
             "|---" * (2 * len(runs)) + "|"]
    for name in names:
        if "best epoch" in name:
            cells = [f"{table[run][k]:.2f} ({k.split('(')[1].split()[0]})" for run in runs
                     for k in table[run] if k.startswith("best epoch")]
            lines.append(f"| best epoch | " + " | ".join(cells) + " |" + " |" * (len(runs) - 1))
            continue
        values = [table[run].get(name, float("nan")) for run in runs]
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in values)
                     + "".join(f" | {v - values[0]:+.2f}" for v in values[1:]) + " |")
    for run, rows in logs.items():
        if "train_batch_metric" in rows[-1]:
            lines += ["", f"{run}: exact metric of its training batches, mean of the last epoch "
                          f"({rows[-1]['epoch']}): {100 * rows[-1]['train_batch_metric']:.2f}%."]
    page = "\n".join(lines) + "\n"
    print(page)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(page)
    if args.plot and len(runs) > 1:
        drawn = plot(logs, args.plot, args.plot_since)
        print(f"wrote {drawn}" if drawn else "no plot: matplotlib is not installed")


if __name__ == "__main__":
    main()
