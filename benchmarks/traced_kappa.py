"""Quadratic weighted kappa, written as a user writes it, trained through ``from_metric``.

    python benchmarks/traced_kappa.py --out docs/results/from-metric/kappa.md
    python benchmarks/traced_kappa.py --quick          # a smoke run

Quadratic weighted kappa scores ordinal grades: a prediction one grade off costs little, one far
off costs the square of the distance. It is the metric of ordinal competitions (diabetic
retinopathy grades, essay scores), written in torch from a confusion matrix counted with
``index_put_``::

    def quadratic_kappa(s, y):                        # s [n, C] scores, y [n] grades
        observed = torch.zeros(C, C).index_put_((y, s.argmax(1)), torch.ones(len(y)), accumulate=True)
        ...                                           # weights (i - j)^2, expected from the margins
        return 1 - (weights * observed).sum() / (weights * expected).sum()

Two ordinal tasks of scikit-learn's, offline: ``diabetes`` (442 patients, the disease-progression
score cut into 5 grades at the training split's quintiles; 70/30 split by seed) and ``digits``
with the digit's value as its grade (10 grades). Model: MLP ``d``-64-``C`` (``d``-64-1 for the
regression row), batch 64, SGD momentum 0.9, 60 epochs (diabetes) or 20 (digits). Rows:
cross-entropy over the grades (argmax), mean squared error on the grade as a number (rounded and
clipped to the grades: the usual regression route to kappa), and UniLoss at its defaults on
``from_metric(quadratic_kappa)``. Each at rates 0.001 to 1 (seven, a factor of about 3 apart),
seeds 0-4 (the split, the initialisation and the batches); the test set's kappa after the last
epoch (a run whose scores are not finite diverged).
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_diabetes, load_digits
from sklearn.metrics import cohen_kappa_score
from sklearn.model_selection import train_test_split

import uniloss

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from traced_concordance import fit, grid_main  # noqa: E402  (the MLP, its loop, the grid of rates and seeds)


def quadratic_kappa(s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cohen's kappa with quadratic weights of ``[n, C]`` scores' argmax against grades ``y``."""
    c = s.shape[1]
    observed = torch.zeros(c, c).index_put_((y, s.argmax(1)), torch.ones(len(y)), accumulate=True)
    weights = (torch.arange(c)[:, None] - torch.arange(c)[None, :]).float() ** 2 / (c - 1) ** 2
    expected = observed.sum(1, keepdim=True) * observed.sum(0, keepdim=True) / observed.sum()
    return 1 - (weights * observed).sum() / (weights * expected).sum()


def load(name: str, seed: int):
    """``(x_train, grades_train, x_test, grades_test, grades)``, features standardised on the training split."""
    if name == "diabetes":
        x, target = load_diabetes(return_X_y=True)
    else:
        x, target = load_digits(return_X_y=True)
    xtr, xte, ttr, tte = train_test_split(x, target, test_size=0.3, random_state=seed)
    if name == "diabetes":  # five grades at the training split's quintiles
        cuts = np.quantile(ttr, [0.2, 0.4, 0.6, 0.8])
        ttr, tte, grades = np.searchsorted(cuts, ttr), np.searchsorted(cuts, tte), 5
    else:
        grades = 10
    mean, std = xtr.mean(0), xtr.std(0) + 1e-8
    as_x = lambda a: torch.tensor((a - mean) / std, dtype=torch.float32)  # noqa: E731
    return as_x(xtr), torch.tensor(ttr, dtype=torch.long), as_x(xte), torch.tensor(tte, dtype=torch.long), grades


def run(task: str, loss_name: str, lr: float, seed: int, epochs: int) -> float:
    xtr, ytr, xte, yte, grades = load(task, seed)
    if loss_name == "mse":  # the grade as a number, rounded and clipped at test
        net = fit(xtr, ytr.float(), 1, F.mse_loss, lr, seed, epochs)
        with torch.no_grad():
            out = net(xte).squeeze(1)
        pred = out.round().clamp(0, grades - 1).long() if bool(torch.isfinite(out).all()) else None
    else:
        loss_fn = F.cross_entropy if loss_name == "ce" else uniloss.UniLoss(
            uniloss.from_metric(quadratic_kappa), generator=torch.Generator().manual_seed(seed))
        net = fit(xtr, ytr, grades, loss_fn, lr, seed, epochs)
        with torch.no_grad():
            out = net(xte)
        pred = out.argmax(1) if bool(torch.isfinite(out).all()) else None
    if pred is None:
        return math.nan  # diverged
    return float(cohen_kappa_score(yte.numpy(), pred.numpy(), weights="quadratic", labels=list(range(grades))))


ROWS = [("ce", "cross-entropy"), ("mse", "mean squared error, rounded"),
        ("uniloss", "UniLoss, from_metric(quadratic_kappa)")]


def main() -> None:
    grid_main(__doc__, ROWS, run, [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0],
              "Quadratic weighted kappa trained through `from_metric`", "Quadratic weighted kappa scores",
              "Test kappa x100", "python benchmarks/traced_kappa.py --out docs/results/from-metric/kappa.md")


if __name__ == "__main__":
    main()
