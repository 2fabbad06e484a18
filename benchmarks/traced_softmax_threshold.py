"""A threshold on a softmax's probability, written as a user writes it, trained through
``from_metric``: this checkout against an earlier commit's ``from_metric``.

    python benchmarks/traced_softmax_threshold.py c173616                 # the recipe's rate
    python benchmarks/traced_softmax_threshold.py c173616 --lrs 0.1 0.3 1  # each loss at each rate
    python benchmarks/traced_softmax_threshold.py c173616 --quick          # a smoke run

The task is the metric-wins suite's ``imb-f1`` data (``make_classification``, 5% positives, 2%
of the labels drawn at random; 10,000 training, 5,000 test samples) with a model that emits two
logits (MLP 20-64-64-2), as a classifier of two classes usually does. The metric is F1 of the
decision "the positive class's probability is above 1/2", written in plain torch::

    def f1(s, y):
        pred = torch.softmax(s, 1)[:, 1] > 0.5
        ...

Rows: cross-entropy (its argmax is the same decision), cross-entropy with class weights (the
inverse class frequencies: the strongest simple baseline for F1 on imbalanced classes), UniLoss at
its defaults on ``from_metric(f1)`` of ``REF`` and of this checkout, and on the same F1 written on
the logits' difference (``s[:, 1] - s[:, 0] > 0``, through this checkout's ``from_metric``). The
recipe: batch 128, SGD momentum 0.9, the rate on a cosine to 0 over the epochs (20), seeds 0-2
(the model's initialisation, the batches and the anchors). The test F1 after the last epoch.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

import uniloss
from uniloss.experiments import metric_wins as M

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from version_cost import load_ref  # noqa: E402  (a commit's package, imported as uniloss_ref)


def f1(s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """F1 of "class 1's probability above 1/2" on ``[n, 2]`` logits: the metric as a user writes it."""
    pred = torch.softmax(s, 1)[:, 1] > 0.5
    positive = y == 1
    tp = (pred & positive).sum()
    return 2 * tp / (pred.sum() + positive.sum()).clamp(min=1)


def f1_on_logits(s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The same decisions written on the logits' difference."""
    pred = s[:, 1] - s[:, 0] > 0
    positive = y == 1
    tp = (pred & positive).sum()
    return 2 * tp / (pred.sum() + positive.sum()).clamp(min=1)


def _weighted_ce(ytr: torch.Tensor, seed: int):
    counts = torch.bincount(ytr, minlength=2).float()
    weight = counts.sum() / (2 * counts)
    return lambda s, y: F.cross_entropy(s, y, weight=weight)


def _uniloss(pkg, fn, ytr: torch.Tensor, seed: int):
    return pkg.UniLoss(pkg.from_metric(fn), generator=torch.Generator().manual_seed(seed + 1000))


def routes(packages: dict) -> dict:
    """Each row's loss, made from the training labels and the seed."""
    out = {"cross-entropy": lambda ytr, seed: F.cross_entropy, "class-weighted cross-entropy": _weighted_ce}
    for name, pkg in packages.items():
        out[f"UniLoss, traced softmax, {name}"] = functools.partial(_uniloss, pkg, f1)
    out["UniLoss, written on s1 - s0"] = functools.partial(_uniloss, uniloss, f1_on_logits)
    return out


def train(make, seed: int, epochs: int, lr: float, data) -> float:
    xtr, ytr, _, _, xte, yte = data
    model = M.seeded(seed, lambda: M.mlp(xtr.shape[1], 64, 64, 2))
    gen = torch.Generator().manual_seed(seed)
    opt, loss = M.sgd(model, lr), make(ytr, seed)
    test = M.fit(model, opt, M.shuffled(len(ytr), 128, gen), lambda m, idx: loss(m(xtr[idx]), ytr[idx]), epochs,
                 lambda m: 100 * float(f1(m(xte).detach(), yte)), M.cosine(opt, epochs))
    return test[-1]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ref", help="a commit whose from_metric to compare with")
    parser.add_argument("--quick", action="store_true", help="2 epochs, seed 0")
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.1], help="SGD rates (default: the recipe's 0.1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    epochs, seeds = (2, [0]) if args.quick else (20, [0, 1, 2])
    data = M.imbalanced_binary(0)
    flags = (" --quick" if args.quick else "") + ("" if args.lrs == [0.1] else " --lrs " + " ".join(
        f"{lr:g}" for lr in args.lrs))
    print(f"# F1 of a softmax's probability above 1/2, trained through from_metric: this checkout against "
          f"{args.ref}\n")
    print(f"`python benchmarks/traced_softmax_threshold.py {args.ref}{flags}`; torch {torch.__version__}, "
          f"one thread, {time.strftime('%Y-%m-%d')}. Test F1 x100 after {epochs} epochs, mean ± std over seeds "
          f"{seeds} (each seed's value in brackets).\n")
    with tempfile.TemporaryDirectory() as tmp:
        packages = {args.ref: load_ref(tmp, args.ref), "this checkout": uniloss}
        print("| loss | " + " | ".join(f"SGD rate {lr:g}" for lr in args.lrs) + " |")
        print("|---|" + "---|" * len(args.lrs))
        for name, make in routes(packages).items():
            cells = []
            for lr in args.lrs:
                values = [train(make, seed, epochs, lr, data) for seed in seeds]
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                cells.append(f"{statistics.mean(values):.2f} ± {std:.2f} ({', '.join(f'{v:.2f}' for v in values)})")
            print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
