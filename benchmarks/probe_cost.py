"""What probing a traced step's best output costs: metrics whose best output is not in the target,
by this checkout's ``from_metric`` and by a commit's.

    python benchmarks/probe_cost.py 7 c6eb0f6     # each case by this checkout and by the commit's

Where the target holds no tensor of a traced step's best output (a 0/1 tensor for a
comparison, a label per row for an ``argmax``), ``from_metric`` probes ``fn`` on every call: each
element of the step's output changed alone, ``fn`` replayed on each of those configurations
(``O(P m)`` for ``P`` probes of an output of ``m`` elements). Pairwise metrics written with all
pairs of scores (a concordance index, Kendall's tau: ``s[:, None] > s[None, :]``, whose best
pairs are the target's order) probe ``n^2`` comparisons on an ``n^2`` tensor. Where the step
reaches ``fn``'s value only through elementwise operations and sums, the probes now go through
the sums, each one a change and its undoing on a chain (``O(P)``, and the code after the sums
at each probe). Each case times one loss call (forward and backward, library defaults, one
thread) of this checkout and of the commit's, interleaved call by call in one process (medians),
and checks that both give the same loss and gradient.
"""

from __future__ import annotations

import os
import sys

import torch

import uniloss

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from from_metric_training import pck  # noqa: E402  (PCK in torch: a target of keypoints, so probed)
from version_cost import traced_table  # noqa: E402  (this checkout against a commit, call by call)


def concordance(scores, target):
    """Of the pairs the target orders, the share the scores order alike (Harrell's C without
    censoring; AUROC for a 0/1 target)."""
    ordered = (target[:, None] > target[None, :]).float()
    return ((scores[:, None] > scores[None, :]).float() * ordered).sum() / ordered.sum()


def kendall_tau(scores, target):
    """Kendall's tau-a against a graded target, each pair's sign of the scores as ``2 [s_i > s_j] - 1``
    (ties in the scores aside)."""
    n = scores.numel()
    graded = torch.sign(target[:, None] - target[None, :]).float()
    return (((scores[:, None] > scores[None, :]).float() * 2 - 1) * graded).sum() / (n * (n - 1))


def thresholds_counted(scores, target):
    """An ordinal prediction, the number of thresholds a score passes, against a grade."""
    passed = (scores[:, None] > torch.tensor([-1.0, 0.0, 1.0])).sum(1)
    return (passed == target).float().mean()


def _cases(g):
    for n in (64, 128, 256):
        y = torch.randint(0, 4, (n,), generator=g)
        yield f"concordance, [{n}] ({n * n:,} pairs)", concordance, torch.randn(n, generator=g) + y, y
    y = torch.randint(0, 4, (128,), generator=g)
    yield "Kendall's tau, [128]", kendall_tau, torch.randn(128, generator=g) + y, y
    y = torch.randint(0, 4, (4000,), generator=g)
    yield "thresholds passed against a grade, [4000]", thresholds_counted, torch.randn(4000, generator=g) + y - 1.5, y
    keypoints = torch.rand(16, 1, 2, generator=g) * 15
    target = uniloss.KeypointTarget(keypoints, torch.ones(16, 1, dtype=torch.bool), torch.full((16,), 4.0))
    yield "PCK, [16, 1, 16, 16] (keypoints: each pixel probed)", pck, torch.randn(16, 1, 16, 16, generator=g), target


def main(calls: int, ref: str) -> None:
    traced_table(_cases(torch.Generator().manual_seed(0)), calls, ref, same=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10, sys.argv[2] if len(sys.argv) > 2 else "HEAD")
