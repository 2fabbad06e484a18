"""The ``uniloss`` command.

    uniloss demo            # UniLoss against the usual loss on scikit-learn's digits, ~1 minute
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="uniloss",
        description="Train with evaluation metrics as losses (UniLoss, Liu, Wang, Deng, ECCV 2020).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="UniLoss against the usual loss on scikit-learn's digits (about a minute)",
        description="Train a small MLP on scikit-learn's digits with UniLoss and with the usual loss "
        "(AP for digit 0 vs rest; accuracy over 10 classes), print a side-by-side table and write "
        "a plot of the test metric per epoch.",
    )
    demo.add_argument("--epochs", type=int, default=30, help="epochs per run (default 30)")
    demo.add_argument("--lr", type=float, default=0.1, help="SGD learning rate for both losses (default 0.1)")
    demo.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    demo.add_argument("--out", default="uniloss-demo", help="folder for demo.json and demo.png")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    if getattr(args, "epochs", 1) is not None and getattr(args, "epochs", 1) < 1:
        parser.error(f"--epochs must be at least 1, got {args.epochs}")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
