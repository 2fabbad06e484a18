"""Vectorised construction of within-group pairs (a ragged Cartesian product)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ._cache import TensorCache


def counts(index: Tensor, size: int, weights: Optional[Tensor] = None) -> Tensor:
    """``bincount(index, weights, minlength=size)`` for ``index`` in ``[0, size)``: ``[size]``, int64
    (float with ``weights``). ``bincount`` on a CPU in eager mode (the fastest); elsewhere a
    scatter-add of that fixed size: ``bincount`` reads the largest index on a GPU's host (a
    synchronisation) and its size is the data's, which ``torch.compile`` cannot put in a graph."""
    if index.device.type == "cpu" and not torch.compiler.is_compiling():
        return torch.bincount(index, weights, minlength=size)
    if weights is None:
        weights = torch.ones((), dtype=torch.long, device=index.device).expand(index.numel())
    return weights.new_zeros(size).index_add_(0, index.reshape(-1).long(), weights.reshape(-1))


def grouped_pairs(group_a: Tensor, group_b: Tensor, num_groups: int) -> Tuple[Tensor, Tensor]:
    """All pairs ``(i, j)`` with ``group_a[i] == group_b[j]``, without a Python loop.

    Args:
        group_a: ``[A]`` int64 group id of each a-item, sorted ascending.
        group_b: ``[B]`` int64 group id of each b-item, sorted ascending.
        num_groups: number of groups ``G`` (ids in ``[0, G)``).

    Returns:
        ``(ia, ib)``: indices into the a- and b-items of every pair, ordered by group, then
        a-item, then b-item (so ``ia`` is sorted: the pairs of one a-item form a run).
    """
    device = group_a.device
    cb = torch.bincount(group_b, minlength=num_groups)
    sb = torch.cumsum(cb, 0) - cb
    # For every a-item, its group's b-items form one run of length cb[group].
    per_a = cb[group_a]
    ia = torch.repeat_interleave(torch.arange(group_a.numel(), device=device), per_a)
    run_start = torch.cumsum(per_a, 0) - per_a
    offset = torch.arange(ia.numel(), device=device) - run_start[ia]
    ib = sb[group_a[ia]] + offset
    return ia, ib


class _PairDifferences(torch.autograd.Function):
    """``c[i, j] = s[a[i]] - s[b[j]]`` flattened, with a one-node backward (two index sums)."""

    @staticmethod
    def forward(ctx, s: Tensor, a: Tensor, b: Tensor) -> Tensor:
        ctx.save_for_backward(a, b)
        ctx.size = s.shape[0]
        return (s.index_select(0, a)[:, None] - s.index_select(0, b)[None, :]).reshape(-1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        a, b = ctx.saved_tensors
        grad = grad.view(a.numel(), b.numel())
        out = grad.new_zeros(ctx.size)
        out.index_add_(0, a, grad.sum(1))
        out.index_add_(0, b, grad.sum(0), alpha=-1)
        return out, None, None


def pair_differences(s: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``(s[a][:, None] - s[b][None, :]).reshape(-1)`` for a 1-D ``s``: every pair of an a-item
    and a b-item, a-major; differentiable in ``s`` with a single autograd node."""
    return _PairDifferences.apply(s, a, b)


class _StaticPairDifferences(torch.autograd.Function):
    """``c[k] = s[a[k]] - s[b[k]]``, ``+inf`` (no gradient) where ``padding[k]``."""

    @staticmethod
    def forward(ctx, s: Tensor, a: Tensor, b: Tensor, padding: Tensor) -> Tensor:
        ctx.save_for_backward(a, b, padding)
        ctx.size = s.shape[0]
        return (s.index_select(0, a) - s.index_select(0, b)).masked_fill_(padding, float("inf"))

    @staticmethod
    def backward(ctx, grad: Tensor):
        a, b, padding = ctx.saved_tensors
        grad = grad.masked_fill(padding, 0.0)
        out = grad.new_zeros(ctx.size)
        out.index_add_(0, a, grad)
        out.index_add_(0, b, grad, alpha=-1)
        return out, None, None, None


def static_pair_differences(s: Tensor, a: Tensor, b: Tensor, padding: Tensor) -> Tensor:
    """``s[a] - s[b]`` for a 1-D ``s``, ``+inf`` where ``padding`` (a static layout's padding, see
    :class:`uniloss._decomposition.StaticLayout`); differentiable in ``s`` with a single autograd
    node, the padding's gradient zero."""
    return _StaticPairDifferences.apply(s, a, b, padding)


class _RowDifferences(torch.autograd.Function):
    """``c[i, j] = s[i, y[i]] - s[i, cols[i, j]]`` flattened (``cols[i]`` never holds ``y[i]``)."""

    @staticmethod
    def forward(ctx, s: Tensor, y: Tensor, cols: Tensor) -> Tensor:
        ctx.save_for_backward(y, cols)
        ctx.shape = s.shape
        return (s.gather(1, y) - s.gather(1, cols)).reshape(-1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        y, cols = ctx.saved_tensors
        grad = grad.view(cols.shape)
        out = grad.new_zeros(ctx.shape)
        out.scatter_add_(1, cols, -grad)
        out.scatter_add_(1, y, grad.sum(1, keepdim=True))
        return out, None, None


def row_differences(s: Tensor, y: Tensor, cols: Tensor) -> Tensor:
    """``(s.gather(1, y[:, None]) - s.gather(1, cols)).reshape(-1)`` for ``s`` ``[n, p]``: each
    row's entry ``y`` against its entries ``cols``; differentiable with a single autograd node."""
    return _RowDifferences.apply(s, y[:, None], cols)


_OTHERS = TensorCache()


def other_classes(labels: Tensor, num_classes: int) -> Tensor:
    """``[n, num_classes - 1]``: for each label, the other classes in class order."""
    others = _OTHERS.get((num_classes, labels.device),
                         lambda: torch.arange(num_classes - 1, device=labels.device)[None, :])
    return others + (others >= labels[:, None])  # (int64 + bool: int64)


def binary_margins(flat: Tensor, positive: Tensor) -> Tensor:
    """``[n]`` margins of binary labels, right when ``> 0``: ``s`` for a positive, ``-s`` for a
    negative (``positive``: an ``[n]`` bool mask or the positives' indices); the pull on them is
    binary cross-entropy (:attr:`uniloss.Structure.margins`)."""
    if positive.dtype == torch.bool:
        return torch.where(positive, flat, -flat)
    return flat * flat.new_full(flat.shape, -1.0).index_fill_(0, positive, 1.0)


def at_or_above(scores: Tensor, positive: Tensor, group: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """For every item, how many positive and how many negative items of its group score at least
    as high, itself included: ``(pos [n], neg [n])`` int64, in ``O(n log n)`` without the pairs.

    Tied scores are at or above each other: these are the counts at the item's score taken as a
    threshold, as scikit-learn's precision-recall and ROC curves take them (a tie is one
    threshold). For an untied item, ``pos`` is its place among its group's positives from the
    top (1-based) and ``pos + neg`` its rank in the group.

    Args:
        scores: ``[n]`` floating (no NaN).
        positive: ``[n]`` bool.
        group: optional ``[n]`` integer group ids (queries); default one group.

    Example::

        >>> import torch
        >>> at_or_above(torch.tensor([0.9, 0.5, 0.5, 0.1]), torch.tensor([False, True, False, True]))
        (tensor([0, 1, 1, 2]), tensor([1, 2, 2, 2]))
    """
    s = scores.reshape(-1)
    n = s.numel()
    device = s.device
    order = torch.sort(s, descending=True, stable=True).indices
    if group is not None:
        order = order[torch.sort(group.reshape(-1)[order], stable=True).indices]
    s_o, pos_o = s[order], positive.reshape(-1)[order].long()
    index = torch.arange(n, device=device)
    cum_pos = torch.cumsum(pos_o, 0)
    cum_neg = index + 1 - cum_pos
    # Runs of one group: their counts start after the previous groups' items.
    new_group = torch.ones(n, dtype=torch.bool, device=device)
    if group is not None and n:
        g_o = group.reshape(-1)[order]
        new_group[1:] = g_o[1:] != g_o[:-1]
    else:
        new_group[1:] = False
    # Runs of one score within a group (a threshold): every item takes the counts at its run's end.
    new_run = new_group.clone()
    new_run[1:] |= s_o[1:] != s_o[:-1]
    run = torch.cumsum(new_run.long(), 0) - 1
    run_end = torch.zeros(n, dtype=torch.long, device=device).scatter_reduce_(0, run, index, "amax")[run]
    group_start = torch.cummax(torch.where(new_group, index, torch.zeros_like(index)), 0).values
    before_pos = cum_pos[group_start] - pos_o[group_start]
    before_neg = cum_neg[group_start] - (1 - pos_o[group_start])
    out_pos = torch.empty_like(cum_pos).scatter_(0, order, cum_pos[run_end] - before_pos)
    out_neg = torch.empty_like(cum_neg).scatter_(0, order, cum_neg[run_end] - before_neg)
    return out_pos, out_neg
