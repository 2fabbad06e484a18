"""Spearman's rank correlation, written with ``argsort``, trained through ``from_metric``.

    python benchmarks/traced_spearman.py --out docs/results/from-metric/spearman.md
    python benchmarks/traced_spearman.py --quick          # a smoke run

The metric is the correlation of the scores' ranks with the target's, as a user writes it in
torch (the target's tied values at their average rank, as scipy's ``spearmanr``; the scores'
ranks by ``argsort`` twice)::

    def spearman(s, y):
        r = s.argsort().argsort().float()
        q = (y[:, None] > y[None, :]).sum(1) + ((y[:, None] == y[None, :]).sum(1) - 1) / 2
        r, q = r - r.mean(), q - q.mean()
        return (r * q).sum() / (r.norm() * q.norm())

The ranks are one traced step, a ranking whose best output is the target's order (every pair of
different target values, each value its own grade: decoded in ``log2(n)`` merges since
``benchmarks/ranking_decode_cost.py``, which made this grid affordable). Two tasks of
scikit-learn's, offline: ``diabetes`` (442 patients, a disease-progression score; 70/30 split by
seed) and ``digits`` as grades (each 8 x 8 image scored by its digit's value, 0-9: ten grades, many
ties; 1,257 training, 540 test images by seed). Model: MLP ``d``-64-1, batch 64, SGD momentum 0.9,
60 epochs (diabetes) or 20 (digits). Rows: mean squared error on the standardised target (the
usual regression loss), the pairwise logistic loss on the batch's ordered pairs (RankNet's, the
usual ranking loss), UniLoss at its defaults on ``from_metric(spearman)``, and the same with
``pull_per="comparison"`` (a variant, added after the defaults' row had run: the defaults take the
pull per run where the relevance is neither 0/1 nor integer grades, and on digits that row fell
behind RankNet and diverged from rate 0.3 on). Each at rates 0.001
to 3 (eight, a factor of about 3 apart), seeds 0-4 (the split, the initialisation and the
batches); the test set's Spearman correlation after the last epoch (scipy's ``spearmanr``; a run
whose scores are not finite, on the test set or in training, diverged).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from scipy import stats


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from traced_concordance import grid_main, held_out, pairwise_logistic, seeded  # noqa: E402


def spearman(s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Spearman's rho of ``s`` against ``y``: the metric as a user writes it."""
    r = s.argsort().argsort().float()
    q = (y[:, None] > y[None, :]).sum(1) + ((y[:, None] == y[None, :]).sum(1) - 1) / 2
    r, q = r - r.mean(), q - q.mean()
    return (r * q).sum() / (r.norm() * q.norm())


def _spearmanr(scores: torch.Tensor, y: torch.Tensor) -> float:
    """The test metric: scipy's ``spearmanr`` (tied values at their average rank, both sides)."""
    return float(stats.spearmanr(scores.numpy(), y.numpy()).statistic)


def run(task: str, loss_name: str, lr: float, seed: int, epochs: int) -> float:
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    if loss_name.startswith("uniloss"):  # the defaults, or the pull per comparison
        loss_fn = seeded(spearman, seed, **({"pull_per": "comparison"} if loss_name == "uniloss-comparison" else {}))
    else:
        losses: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
            "mse": F.mse_loss, "pairwise": pairwise_logistic}
        loss_fn = losses[loss_name]
    return held_out(task, loss_fn, lr, seed, epochs, _spearmanr)


ROWS = [("mse", "mean squared error"), ("pairwise", "pairwise logistic (RankNet)"),
        ("uniloss", "UniLoss, from_metric(spearman)"),
        ("uniloss-comparison", "UniLoss, from_metric(spearman), pull_per=\"comparison\"")]


def main() -> None:
    grid_main(__doc__, ROWS, run, [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0],
              "Spearman's rho trained through `from_metric`", "The metric is", "Test Spearman's rho x100",
              "python benchmarks/traced_spearman.py --out docs/results/from-metric/spearman.md")


if __name__ == "__main__":
    main()
