"""How a loss's push on the scores is spread over the batch: binary cross-entropy against UniLoss
on AP and on one operating point of the precision-recall curve.

    python benchmarks/push_concentration.py --out docs/results/metric-wins/operating-points-push.md

The defaults' step rule (``step="pull"``) gives every step the pull's size, measured as the
total push ``sum |d loss / d s|`` (binary cross-entropy's where the pull is on the samples'
margins), and the direction of the pull plus the interpolation. The size says nothing about how
that push is spread: a chain whose gains fall on a few comparisons gives those few scores the
push of the whole batch. This measures it on the ``imb-ap`` data (draw 0) with the suite's
64-64 model after three epochs of binary cross-entropy (lr 0.1, batch 128): for each loss the
total push, the largest push on one score and the share of the two largest, on batches of 128
and 512 drawn at random (means over 20 batches; one thread). No training: a snapshot of where
each loss pushes.
"""

from __future__ import annotations

import argparse
import pathlib
import time

import torch
import torch.nn.functional as nnf

import uniloss
from uniloss import zoo
from uniloss.experiments import metric_wins as mw
from uniloss.experiments.reproduce import machine


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--samples", type=int, default=20, help="batches a size")
    parser.add_argument("--out", default=None, help="write the table to this Markdown file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.time()
    xtr, ytr, *_ = mw.imbalanced_binary(0)
    model = mw.seeded(0, lambda: mw.mlp(20, 64, 64, 1))
    bce = lambda s, y: nnf.binary_cross_entropy_with_logits(s, y.float())  # noqa: E731
    logits = lambda m, x: m(x).reshape(-1)  # noqa: E731  (the suite's [n] logits of its [n, 1] output)
    opt = mw.sgd(model, 0.1)
    mw.fit(model, opt, mw.shuffled(len(ytr), 128, torch.Generator().manual_seed(0)),
           lambda m, idx: bce(logits(m, xtr[idx]), ytr[idx]), 3, lambda m: 0.0, mw.cosine(opt, 20))
    losses = {"binary cross-entropy": bce, "UniLoss, zoo.average_precision()": uniloss.UniLoss(zoo.average_precision()),
              "UniLoss, zoo.recall_at_precision(0.8)": uniloss.UniLoss(zoo.recall_at_precision(0.8)),
              "UniLoss, zoo.precision_at_recall(0.6)": uniloss.UniLoss(zoo.precision_at_recall(0.6))}
    lines = ["| batch | loss | total push | largest push on one score | its ratio to BCE's "
             "| share of the two largest |", "|---|---|---|---|---|---|"]
    for size in args.batches:
        stats = {}
        for name, fn in losses.items():
            total = largest = top = 0.0
            for draw in range(args.samples):
                idx = torch.randperm(len(ytr), generator=torch.Generator().manual_seed(draw))[:size]
                scores = logits(model, xtr[idx]).detach().requires_grad_()
                push = torch.autograd.grad(fn(scores, ytr[idx]), scores)[0].abs()
                total += float(push.sum()) / args.samples
                largest += float(push.max()) / args.samples
                top += float(push.sort(descending=True).values[:2].sum() / push.sum()) / args.samples
            stats[name] = (total, largest, top)
        for name, (total, largest, top) in stats.items():
            ratio = largest / stats["binary cross-entropy"][1]
            lines.append(f"| {size} | {name} | {total:.4f} | {largest:.4f} | {ratio:.1f}x | {top:.2f} |")
    head = (f"Push on the scores, means over {args.samples} random batches a size; {machine()}, one thread, "
            f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}, {(time.time() - start) / 60:.1f} minutes. "
            f"Command: `python benchmarks/push_concentration.py{' --out ' + args.out if args.out else ''}`.")
    text = "\n".join(["# Where each loss pushes: one snapshot", "", head, "", *lines, ""])
    print(text)
    if args.out:  # (the table as printed)
        pathlib.Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
