"""The share of predictions within a tolerance of a regression target, trained through ``from_metric``.

    python benchmarks/traced_tolerance.py --out docs/results/from-metric/tolerance.md
    python benchmarks/traced_tolerance.py --quick          # a smoke run

The metric is the share of the samples whose prediction lies within ``tol`` of the target (an
"accuracy within tolerance" of a regression), as a user writes it in torch::

    def within(pred, y, tol):
        return ((pred - y).abs() < tol).float().mean()

One comparison per sample, of ``|pred - y|`` with ``tol``, found by tracing. Its best prediction
is the centre of the window of width ``2 tol`` that holds the most of the target's conditional
distribution (for a narrow window, its mode), where mean squared error predicts the conditional
mean and the absolute error its median: the three agree on a symmetric unimodal residual and part
where it is skewed or has several modes. Two tasks of scikit-learn's, offline, the target
standardised on the training split: ``diabetes`` (442 patients, a disease-progression score;
70/30 split by seed), ``tol`` half the training target's standard deviation; ``digits`` as
grades (each 8 x 8 image scored by its digit's value, 0-9; 1,257 training, 540 test images by
seed), ``tol`` half a grade, so the metric is the share of images whose prediction rounds to
their digit. Model: MLP ``d``-64-1, batch 64, SGD momentum 0.9, 60 epochs (diabetes) or 20
(digits). Rows: mean squared error and mean absolute error on the standardised target (the two
usual regression losses) and UniLoss at its defaults on ``from_metric(within)``. Each at rates
0.001 to 3 (eight, a factor of about 3 apart), seeds 0-4 (the split, the initialisation and the
batches); the test set's share within ``tol`` after the last epoch (a run whose predictions are
not finite, on the test set or in training, diverged).
"""

from __future__ import annotations

import functools
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from traced_concordance import grid_main, held_out, seeded  # noqa: E402


def within(pred: torch.Tensor, y: torch.Tensor, tol: float) -> torch.Tensor:
    """The share of ``pred`` within ``tol`` of ``y`` (strictly): the metric as a user writes it."""
    return ((pred - y).abs() < tol).float().mean()


def _share_within(pred: torch.Tensor, y: torch.Tensor, tol: float) -> float:
    """The test metric, in NumPy's float64."""
    return float(np.mean(np.abs(pred.double().numpy() - y.double().numpy()) < tol))


def tolerance(task: str, seed: int) -> float:
    """``tol`` in the standardised target's units: half a standard deviation (diabetes), or half a
    grade (digits: 0.5 over the training split's standard deviation of the digits' values, the
    scale :func:`traced_concordance.standardised_split` divides by)."""
    if task == "diabetes":
        return 0.5
    _, y = load_digits(return_X_y=True)
    _, _, ytr, _ = train_test_split(y, y, test_size=0.3, random_state=seed)
    return 0.5 / float(ytr.std())


def run(task: str, loss_name: str, lr: float, seed: int, epochs: int) -> float:
    tol = tolerance(task, seed)
    metric = functools.partial(within, tol=tol)
    loss_fn = seeded(metric, seed) if loss_name == "uniloss" else {"mse": F.mse_loss, "mae": F.l1_loss}[loss_name]
    return held_out(task, loss_fn, lr, seed, epochs, functools.partial(_share_within, tol=tol))


ROWS = [("mse", "mean squared error"), ("mae", "mean absolute error"),
        ("uniloss", "UniLoss, from_metric(within)")]


def main() -> None:
    grid_main(__doc__, ROWS, run, [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0],
              "Accuracy within a tolerance trained through `from_metric`", "The metric is",
              "Test share within the tolerance x100",
              "python benchmarks/traced_tolerance.py --out docs/results/from-metric/tolerance.md")


if __name__ == "__main__":
    main()
