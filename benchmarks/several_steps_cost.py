"""What a metric of several traced comparisons costs through ``from_metric``, by this checkout and
by a commit's: a chain through the sums over several steps, and probes of one with the others held.

    python benchmarks/several_steps_cost.py 5 4cd3142     # medians of 5, against 4cd3142

Where a metric takes two or more comparisons of the scores (a band, ``(s > lo) & (s < hi)``; a
loop over thresholds; a sign written as ``(x > 0) - (x < 0)``), the chain through the sums took
only one trained step: several went through the tape at every point, ``O(l^2)``, and beyond
``chain_elements`` at fewer points, segment-averaged; and the probes of a step whose best output
no target holds replayed ``fn`` at every probe. Each element of the cut now follows at most one
element of each step's output (up to 64 steps, up to eight comparisons meeting in an element),
each slot of the elementwise part holds its values at every configuration of the comparisons it
follows, and each sum takes an element's change at each of its comparisons' points; a probe
holds the other steps at their outputs. Each case
times one loss call (forward and backward, library defaults, one thread) of this checkout and of
the commit's, interleaved call by call in one process (medians); the first table's cases, whose
chain the commit took at every point, give the same loss and gradient in both (checked in the
script), the second's the commit took at fewer points.
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from version_cost import traced_table  # noqa: E402  (this checkout against a commit, call by call)


def within_the_grade(s, y):
    """The share of scores within half a grade of their target: two steps, both probed."""
    return ((s > y - 0.5) & (s < y + 0.5)).float().mean()


def f1_at_three_thresholds(s, y):
    """F1 at thresholds -0.5, 0 and 0.5, averaged: a loop, a step at each threshold."""
    pos, total = y == 1, 0.0
    for t in (-0.5, 0.0, 0.5):
        pred = s > t
        total = total + 2 * (pred & pos).sum() / (pred.sum() + pos.sum()).clamp_min(1)
    return total / 3


def f1_at_ten_thresholds(s, y):
    """F1 at ten thresholds from -1 to 1, averaged: ten steps, each summed apart."""
    pos, total = y == 1, 0.0
    for t in torch.linspace(-1.0, 1.0, 10).tolist():
        pred = s > t
        total = total + 2 * (pred & pos).sum() / (pred.sum() + pos.sum()).clamp_min(1)
    return total / 10


def ordinal_by_a_loop(s, y):
    """The grade predicted as the thresholds passed, counted in a loop (each element meets five
    steps), against the target's grade."""
    passed = sum((s > t).long() for t in (-1.5, -0.5, 0.5, 1.5, 2.5))
    return (passed == y).float().mean()


def kendall_two_comparisons(s, y):
    """Kendall's tau-a, the scores' sign written as two comparisons."""
    n, d = s.numel(), s[:, None] - s[None, :]
    return (((d > 0).float() - (d < 0).float()) * torch.sign(y[:, None] - y[None, :])).sum() / (n * (n - 1))


def _cases(g, large: bool):
    for n in ((4096,) if large else (256,)):
        y = torch.randint(0, 4, (n,), generator=g).float()
        yield f"within half a grade, [{n}]", within_the_grade, y + torch.randn(n, generator=g) * 0.6, y
        y = (torch.rand(n, generator=g) < 0.3).long()
        yield f"F1 at three thresholds, [{n}]", f1_at_three_thresholds, torch.randn(n, generator=g) + y, y
        yield f"F1 at ten thresholds, [{n}]", f1_at_ten_thresholds, torch.randn(n, generator=g) + y, y
        y = torch.randint(0, 6, (n,), generator=g)
        yield f"grade by five thresholds in a loop, [{n}]", ordinal_by_a_loop, y - 1 + torch.randn(n, generator=g), y
    for n in ((64, 128) if large else (24,)):
        y = torch.randint(0, 4, (n,), generator=g).float()
        scores = torch.randn(n, generator=g) + y
        yield f"Kendall's tau, sign as two comparisons, [{n}]", kendall_two_comparisons, scores, y


def main(calls: int, ref: str) -> None:
    print("Every point of the commit's chain (the same loss and gradient, checked):\n")
    traced_table(_cases(torch.Generator().manual_seed(0), large=False), calls, ref, same=True)
    print("\nPast `chain_elements` (the commit's chain at fewer points, segment-averaged):\n")
    traced_table(_cases(torch.Generator().manual_seed(1), large=True), calls, ref, same=False)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5, sys.argv[2] if len(sys.argv) > 2 else "HEAD")
