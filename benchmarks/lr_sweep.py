"""Learning-rate sensitivity: UniLoss-accuracy (the paper's gradient, the defaults of earlier versions,
``nearby="informative"`` and today's defaults) against cross-entropy on scikit-learn's digits, the same MLP, SGD (momentum 0.9), batch 128, 30 epochs.

    python benchmarks/lr_sweep.py --out docs/results/lr-sweep

Writes ``results.json`` and ``results.md`` (mean test accuracy over the seeds, per rate).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

import uniloss
from uniloss.experiments.digits import train_digits
from uniloss.experiments.reproduce import command_line

# The earlier defaults are spelled out (they predate `step`, which is "sum" for them); accuracy's
# loss is the same in 0.3-0.5 (no margins, no run weights), so "defaults" is 0.3's row too.
LOSSES = [
    ("cross-entropy", dict(loss="ce")),
    ("UniLoss, the paper's -g~ (grad_scale=1, pull=0)",
     dict(loss="uniloss", grad_scale=1.0, options={"pull": 0, "step": "sum", "interpolation": "anchors"})),
    ('UniLoss, grad_scale="distance", pull=0 (the defaults before metric-wins)',
     dict(loss="uniloss", grad_scale="distance", options={"pull": 0, "step": "sum", "interpolation": "anchors"})),
    ('UniLoss, pull per comparison (the defaults of 0.1: grad_scale="bounded", pull=1)',
     dict(loss="uniloss", options={"pull_per": "comparison", "step": "sum", "interpolation": "anchors"})),
    ('UniLoss, 0.2\'s defaults (step="sum": the interpolation\'s step plus the pull\'s)',
     dict(loss="uniloss", options={"step": "sum", "interpolation": "anchors"})),
    ('UniLoss, nearby="informative" (with step="sum")', dict(loss="uniloss", options={"nearby": "informative", "step": "sum", "interpolation": "anchors"})),
    ('UniLoss, 0.3-0.7\'s defaults (step="pull": every step of the pull\'s size; the anchors)',
     dict(loss="uniloss", options={"interpolation": "anchors"})),
    ('UniLoss, defaults (the chain, since 0.8)', dict(loss="uniloss")),
]


def _paired_lines(rows, lrs):
    """The defaults minus cross-entropy at each rate, seed by seed (empty unless both ran on 2+ seeds)."""
    def seeds(label, lr):
        return next((r["seeds"] for r in rows if r["loss"] == label and r["lr"] == lr), None)

    ce_label, ours = LOSSES[0][0], LOSSES[-1][0]
    lines = []
    for lr in lrs:
        ce, un = seeds(ce_label, lr), seeds(ours, lr)
        if ce is None or un is None or len(ce) < 2:
            continue
        diff = [100 * (u - c) for u, c in zip(un, ce)]
        lines.append(f"- lr {lr}: the defaults minus cross-entropy, seed by seed, "
                     f"{statistics.mean(diff):+.2f} ± {statistics.stdev(diff):.2f} "
                     f"(ahead on {sum(d > 0 for d in diff)} of {len(diff)} seeds, level on "
                     f"{sum(d == 0 for d in diff)})")
    return ["", *lines] if lines else []


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.003, 0.01, 0.03, 0.1, 0.3, 1.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--out", default="docs/results/lr-sweep")
    parser.add_argument("--losses", nargs="+", metavar="TEXT",
                        help="only the losses whose label contains one of these (default: all)")
    args = parser.parse_args(argv)
    losses = [(label, kw) for label, kw in LOSSES if not args.losses or any(t in label for t in args.losses)]
    if not losses:
        parser.error(f"no loss matches {args.losses}; labels: {[label for label, _ in LOSSES]}")
    rows = []
    for label, kw in losses:
        for lr in args.lrs:
            accs = [train_digits("accuracy", lr=lr, epochs=args.epochs, seed=s, **kw).test_metric for s in args.seeds]
            rows.append(dict(loss=label, lr=lr, mean=statistics.mean(accs), seeds=accs))
            print(f"{label:45s} lr={lr:<6} {statistics.mean(accs):.4f}", flush=True)
    report = dict(
        table="lr-sweep", machine=f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
                                  f"uniloss {uniloss.__version__}",
        date=time.strftime("%Y-%m-%d"),
        command=command_line("benchmarks/lr_sweep.py", argv),
        seeds=args.seeds, epochs=args.epochs, rows=rows,
    )
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as fh:
        json.dump(report, fh, indent=2)
    lines = [
        "# Learning-rate sweep: digits, 10 classes, MLP 64-128-10, SGD momentum 0.9, batch 128",
        "",
        f"Test accuracy, mean over seeds {args.seeds}, {args.epochs} epochs. Machine: {report['machine']}; "
        f"date {report['date']}. Regenerate: `{report['command'].strip()}`.",
        "",
        "| loss | " + " | ".join(f"lr {lr}" for lr in args.lrs) + " |",
        "|---|" + "---|" * len(args.lrs),
    ]
    for label, _ in losses:
        cells = [f"{r['mean'] * 100:.1f}" for r in rows if r["loss"] == label]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += _paired_lines(rows, args.lrs)
    with open(os.path.join(args.out, "results.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
