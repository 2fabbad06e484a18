"""A directional accuracy written with ``torch.sign``, trained through ``from_metric``.

    python benchmarks/traced_direction.py --out docs/results/from-metric/direction.md
    python benchmarks/traced_direction.py --quick          # a smoke run

The metric is the share of predictions on the target's side of zero (whether a forecast gets
the direction of a change right, or a score the side of a threshold), as a user writes it in
torch::

    def directional(s, y):
        return (torch.sign(s) == torch.sign(y)).float().mean()

``torch.sign`` of the scores is one traced step of two comparisons per element, ``s > 0`` and
``s < 0``; no target holds its best output (a sign), so ``from_metric`` probes each element at
its three values. Two tasks of scikit-learn's, offline, with a regression target centred on the
training split's mean: ``diabetes`` (442 patients, a disease-progression score; 70/30 split by
seed) and ``digits`` as grades (each 8 x 8 image scored by its digit's value less the mean, about
4.5: the side is whether the digit is 5 or more; 1,257 training, 540 test images by seed). Model:
MLP ``d``-64-1, batch 64, SGD momentum 0.9, 60 epochs (diabetes) or 20 (digits). Rows: mean
squared error on the standardised target (the usual regression loss), binary cross-entropy on
the target's side (``y > 0``, logistic regression of the direction: what a practitioner would
train for it), and UniLoss at its defaults on ``from_metric(directional)``. Each at rates 0.001
to 3 (eight, a factor of about 3 apart), seeds 0-4 (the split, the initialisation and the
batches); the test set's directional accuracy after the last epoch (a run whose scores are not
finite, on the test set or in training, diverged).
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from traced_concordance import grid_main, held_out, seeded  # noqa: E402  (the MLP, the grid, the tasks)


def directional(s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The share of ``s`` on ``y``'s side of zero: the metric as a user writes it."""
    return (torch.sign(s) == torch.sign(y)).float().mean()


def side_bce(s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the scores as logits of the target's side, ``y > 0``."""
    return F.binary_cross_entropy_with_logits(s, (y > 0).float())


def run(task: str, loss_name: str, lr: float, seed: int, epochs: int) -> float:
    loss_fn = seeded(directional, seed) if loss_name == "uniloss" else {"mse": F.mse_loss, "bce": side_bce}[loss_name]
    return held_out(task, loss_fn, lr, seed, epochs, directional)


ROWS = [("mse", "mean squared error"), ("bce", "binary cross-entropy of the side"),
        ("uniloss", "UniLoss, from_metric(directional)")]


def main() -> None:
    grid_main(__doc__, ROWS, run, [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0],
              "A directional accuracy trained through `from_metric`", "The metric is",
              "Test directional accuracy x100",
              "python benchmarks/traced_direction.py --out docs/results/from-metric/direction.md")


if __name__ == "__main__":
    main()
