"""The ``uniloss`` command.

    uniloss demo                              # UniLoss vs the usual loss on scikit-learn's digits
    uniloss train mnist-ap --loss uniloss     # one run of an experiment, with progress and a log
    uniloss reproduce mnist-ap                # every run of a paper table, then the table
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import List, Optional


def _demo(args: argparse.Namespace) -> int:
    from .digits import train_digits

    runs = [
        ("ap", "digit 0 vs rest", "test AP", "ce", "binary cross-entropy"),
        ("accuracy", "10 classes", "test accuracy", "ce", "cross-entropy"),
    ]
    print(f"uniloss demo: scikit-learn digits, MLP 64-128-out, SGD lr {args.lr} momentum 0.9, "
          f"batch 128, {args.epochs} epochs, seeds {args.seeds}", flush=True)
    results = []
    for task, what, metric, _, base_name in runs:
        for loss, name in (("uniloss", "UniLoss"), ("ce", base_name)):
            curves, finals = [], []
            for seed in args.seeds:
                r = train_digits(task, loss, lr=args.lr, epochs=args.epochs, seed=seed)
                curves.append(r.curve)
                finals.append(r.test_metric)
            results.append(dict(task=task, what=what, metric=metric, loss=name, finals=finals,
                                mean=statistics.mean(finals), curves=curves))
            print(f"  {what:16s} {name:22s} {metric} {statistics.mean(finals):.4f}", flush=True)

    print()
    print("| task | metric | UniLoss | usual loss |")
    print("|---|---|---|---|")
    for i in range(0, len(results), 2):
        ul, base = results[i], results[i + 1]
        print(f"| {ul['what']} | {ul['metric']} | {ul['mean']:.4f} | {base['mean']:.4f} ({base['loss']}) |")

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "demo.json"), "w") as fh:
        json.dump(results, fh, indent=2)
    plot = _plot_demo(results, os.path.join(args.out, "demo.png"))
    print(f"\nwrote {os.path.join(args.out, 'demo.json')}" + (f" and {plot}" if plot else ""))
    return 0


def _plot_demo(results, path: str) -> Optional[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install 'uniloss[experiments]')", file=sys.stderr)
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, task in zip(axes, ("ap", "accuracy")):
        for r in (r for r in results if r["task"] == task):
            mean = [statistics.mean(v) for v in zip(*r["curves"])]
            ax.plot(range(1, len(mean) + 1), mean, label=r["loss"])
        ax.set_title(f"digits, {r['what']}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(r["metric"])
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_ylim(0.95, 1.001)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _train(args: argparse.Namespace) -> int:
    from .registry import get_experiment
    from .train import RunOptions, run_training

    exp = get_experiment(args.experiment)
    out = args.out or os.path.join("runs", exp.name, f"{args.loss}-seed{args.seed}")
    run_training(exp, RunOptions(
        loss=args.loss, seed=args.seed, epochs=args.epochs, out=out, data_dir=args.data_dir,
        device=args.device, resume=args.resume, threads=args.threads, lr=args.lr,
        batch_size=args.batch_size, limit_train=args.limit_train, schedule=args.schedule, amp=args.amp,
    ))
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from .reproduce import run_table

    if getattr(args, "amp", False):  # once here: each run's own warning goes to its stdout.log
        import torch

        from .train import amp_warning

        try:
            note = amp_warning(torch.device(args.device))
        except RuntimeError:  # an unknown device: the runs say so
            note = None
        if note:
            print(f"uniloss: warning: {note}", file=sys.stderr, flush=True)
    return run_table(args.table, args)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _existing_dir(text: str) -> str:
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is not a folder")
    return text


_SCHEDULE_HELP = ("training schedule: paper (default: the paper's recipe), a schedule the experiment names "
                  "(e.g. short, for a 2-core CPU), or NAME:EPOCHS (NAME squeezed into EPOCHS epochs, milestones in proportion)")


_DOWNLOAD_HELP = "fetch missing data files from the publishers' mirrors, checksums verified (needs a network)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="uniloss",
        description="Train with evaluation metrics as losses (UniLoss, Liu, Wang, Deng, ECCV 2020).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="UniLoss against the usual loss on scikit-learn's digits (about 20 seconds on a 2-core CPU)",
        description="Train a small MLP on scikit-learn's digits with UniLoss and with the usual loss "
        "(AP for digit 0 vs rest; accuracy over 10 classes), print a side-by-side table and write "
        "a plot of the test metric per epoch.",
    )
    demo.add_argument("--epochs", type=_positive_int, default=30, help="epochs per run (default 30)")
    demo.add_argument("--lr", type=float, default=0.1, help="SGD learning rate for both losses (default 0.1)")
    demo.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    demo.add_argument("--out", default="uniloss-demo", help="folder for demo.json and demo.png")
    demo.set_defaults(func=_demo)

    from .registry import EXPERIMENTS
    from .reproduce import TABLES

    listing = "; ".join(f"{e.name}: {e.description}" for e in EXPERIMENTS.values())
    train = sub.add_parser(
        "train", help="one training run of an experiment",
        description="Train one experiment with one loss: live progress bars (loss, exact batch metric, "
        "surrogate) on a terminal, one JSON line per epoch otherwise; writes config.json, log.jsonl, "
        f"checkpoint.pt and final.json to --out. Experiments: {listing}. Defaults are the paper's settings.",
    )
    train.add_argument("experiment", choices=sorted(EXPERIMENTS), help="which experiment")
    train.add_argument("--loss", default="uniloss", help="uniloss (default), or the experiment's usual losses (e.g. ce)")
    train.add_argument("--seed", type=int, default=0, help="seed of initialisation, batch order and anchors (default 0)")
    train.add_argument("--epochs", type=_positive_int, help="epochs (default: the paper's)")
    train.add_argument("--out", help="run folder (default runs/EXPERIMENT/LOSS-seedN)")
    train.add_argument("--data-dir", type=_existing_dir, help="data root (else $UNILOSS_DATA, ../shared/data, ~/.cache/uniloss)")
    train.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    train.add_argument("--threads", type=_positive_int, help="torch CPU threads")
    train.add_argument("--lr", type=float, help="learning rate (default: the paper's)")
    train.add_argument("--batch-size", type=_positive_int, help="batch size (default: the paper's)")
    train.add_argument("--limit-train", type=_positive_int, help="train on the first N samples only (smoke tests)")
    train.add_argument("--schedule", help=_SCHEDULE_HELP)
    train.add_argument("--amp", action="store_true", help="bfloat16 autocast of the forward pass (for a GPU)")
    train.add_argument("--download", action="store_true", help=_DOWNLOAD_HELP)
    train.set_defaults(func=_train)

    rep = sub.add_parser(
        "reproduce", help="every run of one of the paper's tables, then the table",
        description="Run every (loss, seed) of a table as `uniloss train` subprocesses (finished runs "
        "are reused, interrupted ones resumed), then write results.json, results.md (paper, ours "
        "mean ± std, gap) and curves.png. Tables: " + ", ".join(sorted(TABLES)) + "; and metric-wins, the "
        "suite that decides the defaults (`uniloss reproduce metric-wins --help`).",
    )
    rep.add_argument("table", choices=sorted(TABLES), help="which table (metric-wins: `uniloss reproduce metric-wins --help`)")
    rep.add_argument("--seeds", type=int, nargs="+", help="seeds (default 0 1 2)")
    rep.add_argument("--epochs", type=_positive_int, help="epochs per run (default: the paper's)")
    rep.add_argument("--losses", nargs="+", metavar="LOSS", help="only these losses: rows of the table, or other losses its experiment trains, added after the rows (default: the table's rows)")
    rep.add_argument("--jobs", type=_positive_int, default=2, help="runs at a time, one thread each (default 2)")
    rep.add_argument("--runs-dir", default="runs", help="where the runs go (default runs/)")
    rep.add_argument("--out", help="where the table goes (default docs/results/TABLE)")
    rep.add_argument("--data-dir", type=_existing_dir, help="data root")
    rep.add_argument("--device", default="cpu", help="cpu or cuda")
    rep.add_argument("--limit-train", type=_positive_int, help=argparse.SUPPRESS)
    rep.add_argument("--schedule", help=_SCHEDULE_HELP)
    rep.add_argument("--amp", action="store_true", help="bfloat16 autocast of the forward pass (for a GPU)")
    rep.add_argument("--download", action="store_true", help=_DOWNLOAD_HELP)
    rep.set_defaults(func=_reproduce)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["reproduce", "metric-wins"]:  # its own options (see metric_wins.add_arguments)
        from .metric_wins import main as metric_wins

        try:
            metric_wins(argv[2:], prog="uniloss reproduce metric-wins")
        except ValueError as exc:
            print(f"uniloss: error: {exc}", file=sys.stderr)
            return 2
        return 0
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    from .checkpoint import CheckpointError
    from .data import ChecksumError, DatasetNotFoundError, DownloadError
    from .train import RunError

    if getattr(args, "download", False):
        from .data.loaders import DOWNLOAD_VAR

        os.environ[DOWNLOAD_VAR] = "1"  # this process's loaders and the runs it starts
    try:
        return args.func(args)
    except (ValueError, RunError, CheckpointError, DatasetNotFoundError, ChecksumError, DownloadError) as exc:
        print(f"uniloss: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
