"""What the form of the target costs a traced metric: the same metrics with the best output read
from the target as it is written, against a commit's ``from_metric``.

    python benchmarks/target_forms.py 7 d762a79     # each case by this checkout and by a commit's

``from_metric`` takes a step's best output from the target: a label per row for an ``argmax``, a
0/1 tensor for a comparison. Where it finds none, it probes ``fn`` for each element's best
output on every call (a comparison: ``O(n^2)``), or, for an ``argmax`` whose target has the
scores' shape, ranks the classes by it, through the tape at every point of the chain. Written
naturally, specificity (``s < 0`` scored where ``y == 0``: the target's complement), accuracy on
-1/+1 or smoothed 0.1/0.9 labels, on class indices stored as floats and on one-hot or
label-smoothed targets, and pixel accuracy with an ignore index took those slow paths. Each case
times one loss call (forward and backward, library defaults, one thread) of this checkout and of
the commit's, interleaved call by call in one process (medians).
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as nnf

import uniloss

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from version_cost import traced_table  # noqa: E402  (this checkout against a commit, call by call)


def specificity(scores, target):
    """The negatives predicted negative: ``s < 0`` where ``y == 0``."""
    return ((scores < 0) & (target == 0)).sum() / (target == 0).sum().clamp_min(1)


def signed_accuracy(scores, target):
    """Accuracy on -1/+1 labels."""
    return ((scores > 0) == (target > 0)).float().mean()


def rows_accuracy(scores, target):
    """Accuracy on a one-hot (or smoothed) ``[n, C]`` target."""
    return (scores.argmax(1) == target.argmax(1)).float().mean()


def accuracy(scores, target):
    """Accuracy on class indices (here stored as floats)."""
    return (scores.argmax(1) == target).float().mean()


def smoothed_binary_accuracy(scores, target):
    """Binary accuracy on smoothed labels (0.1 and 0.9), thresholded at 0.5."""
    return ((scores > 0) == (target > 0.5)).float().mean()


def pixel_accuracy(scores, target):
    """Pixel accuracy of ``[b, C, H, W]`` scores, pixels labelled 255 left out."""
    valid = target != 255
    return ((scores.argmax(1) == target) & valid).sum() / valid.sum()


def _cases(g):
    for n in (2000, 8000):
        y = (torch.rand(n, generator=g) < 0.3).long()
        yield f"specificity with s < 0, [{n}]", specificity, torch.randn(n, generator=g) - y, y
    n = 4000
    y = torch.where(torch.rand(n, generator=g) < 0.3, 1, -1)
    yield f"accuracy on -1/+1 labels, [{n}]", signed_accuracy, torch.randn(n, generator=g) + y, y
    y = torch.where(torch.rand(n, generator=g) < 0.3, 0.9, 0.1)
    yield f"accuracy on 0.1/0.9 labels, [{n}]", smoothed_binary_accuracy, torch.randn(n, generator=g) + y, y
    labels = torch.randint(0, 10, (1024,), generator=g)
    yield ("accuracy on class indices stored as floats, [1024, 10]", accuracy,
           torch.randn(1024, 10, generator=g) + nnf.one_hot(labels, 10), labels.float())
    for n in (64, 256):
        labels = torch.randint(0, 10, (n,), generator=g)
        x = torch.randn(n, 10, generator=g) + nnf.one_hot(labels, 10)
        yield f"accuracy on one-hot targets, [{n}, 10]", rows_accuracy, x, nnf.one_hot(labels, 10).float()
        yield (f"accuracy on smoothed targets (0.1), [{n}, 10]", rows_accuracy, x,
               nnf.one_hot(labels, 10).float() * 0.9 + 0.01)
    labels = torch.randint(0, 5, (2, 32, 32), generator=g)  # past 65,536 pixel-classes the probe raises
    x = torch.randn(2, 5, 32, 32, generator=g) + nnf.one_hot(labels, 5).movedim(-1, 1)
    labels[:, :4] = 255
    yield "pixel accuracy, ignore index 255, [2, 5, 32, 32]", pixel_accuracy, x, labels


def main(calls: int, ref: str) -> None:
    traced_table(_cases(torch.Generator().manual_seed(0)), calls, ref)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10, sys.argv[2] if len(sys.argv) > 2 else "HEAD")
