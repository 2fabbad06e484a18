"""Whole-split evaluation metrics (ties handled as scikit-learn does)."""

from __future__ import annotations

import torch
from torch import Tensor


def average_precision(scores: Tensor, labels: Tensor, *, interpolated: bool = False) -> float:
    """Average precision of ``scores`` ``[N]`` for binary ``labels`` ``[N]``.

    ``interpolated=False`` equals scikit-learn's ``average_precision_score`` (tied scores form
    one threshold); ``interpolated=True`` replaces each precision by its running maximum toward
    higher recall (the all-point VOC AP the paper's evaluation code computes). NaN without a
    positive.

    Example::

        >>> import torch
        >>> average_precision(torch.tensor([0.9, 0.8, 0.3, 0.1]), torch.tensor([1, 0, 1, 0]))
        0.8333333333333333
    """
    scores = scores.detach().reshape(-1).double().cpu()
    labels = (labels.detach().reshape(-1) != 0).cpu()
    num_pos = int(labels.sum())
    if num_pos == 0:
        return float("nan")
    order = torch.argsort(scores, descending=True, stable=True)
    s, y = scores[order], labels[order].double()
    tp = torch.cumsum(y, 0)
    fp = torch.cumsum(1 - y, 0)
    # The last index of each group of tied scores is one threshold.
    last = torch.ones_like(s, dtype=torch.bool)
    last[:-1] = s[1:] != s[:-1]
    tp, fp = tp[last], fp[last]
    precision = tp / (tp + fp)
    recall = tp / num_pos
    if interpolated:
        precision = precision.flip(0).cummax(0).values.flip(0)
    step = torch.diff(recall, prepend=torch.zeros(1, dtype=recall.dtype))
    return float((step * precision).sum())


def accuracy(outputs: Tensor, labels: Tensor) -> float:
    """Fraction of rows of ``outputs`` ``[N, C]`` whose argmax equals ``labels`` ``[N]``."""
    return float((outputs.argmax(1) == labels).double().mean())
