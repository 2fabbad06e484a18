"""Vectorised construction of within-group pairs (a ragged Cartesian product)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from ._cache import TensorCache
from ._function import two_way


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


@dataclass(frozen=True)
class SetPairs:
    """Every positive entry of a row against every negative entry of the same row: the layout of
    :class:`uniloss.PCK` (a heatmap's disc pixels against the rest), of
    :class:`uniloss.decoders.SpatialArgmax` with a threshold and of a traced categorical step with
    a mask of best outputs. Rows ``0 .. num_rows - 1``; the positives and the negatives each
    sorted by row, then column; comparison ``k`` is ``s[pos_flat[ia[k]]] - s[neg_flat[ib[k]]]``,
    a run per positive entry (its row's negatives). Made by :func:`set_pairs`."""

    num_rows: int  # G
    pos_row: Tensor  # [A] row of each positive entry, sorted
    neg_row: Tensor  # [B] row of each negative entry, sorted
    pos_col: Tensor  # [A] column of each positive entry
    pos_flat: Tensor  # [A] index into the scores' flat view
    neg_flat: Tensor  # [B]
    mask: Tensor  # [G, C] bool, the positive entries (set_pairs's `positive`)
    rows: Tensor  # [G] row g's entries are the scores' flat rows[g] * width + 0 .. C - 1
    width: int
    whole: bool = False  # rows is 0 .. G - 1 and the scores hold G rows of C (PCK with every joint visible)
    cache: dict = field(default_factory=dict, compare=False, repr=False)

    def pairs(self) -> Tuple[Tensor, Tensor]:
        """``(ia, ib)`` ``[l]`` each: the positive and the negative of every comparison."""
        if "pairs" not in self.cache:
            self.cache["pairs"] = grouped_pairs(self.pos_row, self.neg_row, self.num_rows)
        return self.cache["pairs"]

    def run_lengths(self) -> Tensor:
        """``[A]``: the negatives each positive is compared with (its row's)."""
        if "runs" not in self.cache:
            self.cache["runs"] = torch.bincount(self.neg_row, minlength=self.num_rows)[self.pos_row]
        return self.cache["runs"]

    def num_bits(self) -> int:
        if "l" not in self.cache:
            self.cache["l"] = int(self.run_lengths().sum())
        return self.cache["l"]

    def starts(self) -> Tuple[List[int], List[int]]:
        """Host lists: where each row's positives and negatives start (length ``G + 1``)."""
        if "starts" not in self.cache:
            g = self.num_rows
            pos = torch.cumsum(torch.bincount(self.pos_row, minlength=g), 0).tolist()
            neg = torch.cumsum(torch.bincount(self.neg_row, minlength=g), 0).tolist()
            self.cache["starts"] = ([0] + pos, [0] + neg)
        return self.cache["starts"]

    def rows_of(self, scores: Tensor) -> Tensor:
        """``[G, C]``: the scores of the rows, in the layout of ``mask`` (differentiable; a view of
        the scores where the rows are all of them, ``whole``)."""
        flat, size = scores.reshape(-1), self.mask.shape[1]
        if self.whole and flat.numel() == self.num_rows * size:  # every row, in order: no copy
            return flat.view(-1, size)
        if size == self.width and flat.numel() % size == 0:  # whole rows of the scores (PCK's heatmaps)
            return flat.view(-1, size).index_select(0, self.rows)
        return flat[self.rows[:, None] * self.width + torch.arange(size, device=self.rows.device)]

    def least(self, scores: Tensor) -> Tensor:
        """``[A]``: each run's least comparison (:func:`set_least` at the positives, in their
        order; :attr:`uniloss.Structure.run_least`). ``O(G C)``, no comparison formed."""
        return set_least(self.rows_of(scores), self.mask)[self.pos_row, self.pos_col]

    def comparisons(self, scores: Tensor) -> Tensor:
        """``[l]``: every positive's score minus each negative's of its row (differentiable)."""
        ia, ib = self.pairs()
        return index_differences(scores.reshape(-1), self.pos_flat[ia], self.neg_flat[ib])


def set_pairs(positive: Tensor, rows: Tensor, width: int, whole: bool = False) -> SetPairs:
    """:class:`SetPairs` of ``positive [G, C]`` (bool), row ``g`` being the scores' flat entries
    ``rows[g] * width .. + C`` (``rows [G]`` int64, e.g. the visible joints of ``[n J, H W]`` heatmaps);
    ``whole``: the caller knows ``rows`` is ``0 .. G - 1`` and ``width`` is ``C`` (every joint visible)."""
    pos_row, pos_col = positive.nonzero(as_tuple=True)
    neg_row, neg_col = (~positive).nonzero(as_tuple=True)
    base = rows * width
    return SetPairs(positive.shape[0], pos_row, neg_row, pos_col, base[pos_row] + pos_col, base[neg_row] + neg_col,
                    positive, rows, width, whole and width == positive.shape[1])


def set_least(rows: Tensor, positive: Tensor) -> Tensor:
    """``[G, C]``: each positive entry's score minus the best negative score of its row (of those
    tied for it, the last: its run's comparison of largest index in the set-against-set layout),
    ``+inf`` at the negative entries and in a row without negatives: each run's least comparison
    (:attr:`uniloss.Structure.run_least`) with ``rows [G, C]`` the scores and ``positive [G, C]``
    bool. Differentiable in ``rows``."""
    size = rows.shape[1]
    with torch.no_grad():
        negatives = rows.detach().masked_fill(positive, float("-inf"))
        top = negatives.amax(1, keepdim=True)
        index = torch.arange(size, device=rows.device)
        last = torch.where((negatives == top) & ~positive, index, 0).amax(1, keepdim=True)
        empty = ~(positive & (~positive).any(1, keepdim=True))
    return (rows - rows.gather(1, last)).masked_fill(empty, float("inf"))


def set_pull(rows: Tensor, positive: Tensor, temperature) -> Tensor:
    """``[G, C]``: each positive entry's term of the pull per run (:attr:`uniloss.Structure.run_pull`),
    ``log(1 + sum_n exp((s_n - s_p) / tau))`` over its row's negatives ``n`` (0 without any: the
    entries' gradient 0, not NaN), 0 at the negative entries: the negatives' log-sum-exp once per
    row, ``O(G C)`` instead of one term per comparison. ``rows``, ``positive`` as :func:`set_least`."""
    rows = rows / temperature
    negatives = rows.masked_fill(positive, float("-inf"))
    top = negatives.detach().amax(1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, 0.0)
    total = (negatives - top).exp().sum(1, keepdim=True)
    joint = torch.where(total > 0, total.clamp_min(torch.finfo(total.dtype).tiny).log() + top, float("-inf"))
    lse = joint - rows
    return torch.where(positive, torch.logaddexp(torch.zeros_like(lse), lse), 0.0)


@dataclass(frozen=True)
class SetRanks:
    """What decoding a :class:`SetPairs` needs of the current scores (:func:`set_ranks`)."""

    by_rank: Tensor  # [G, C] each row's columns, positives first, each by current score, best first
    pos_rank: Tensor  # [A] each positive's place in its row's ``by_rank``
    top_negative: Tensor  # [G] each row's best negative column by current score


def set_ranks(rows: Tensor, positive: Tensor, pairs: SetPairs) -> SetRanks:
    """:class:`SetRanks` of the detached scores ``rows [G, C]`` and their ``positive`` mask."""
    inf = torch.full_like(rows, float("-inf"))
    by_rank = torch.where(positive, rows, inf).sort(dim=1, descending=True, stable=True).indices
    columns = torch.arange(rows.shape[1], device=rows.device).expand_as(by_rank)
    rank_of = torch.empty_like(by_rank).scatter_(1, by_rank, columns)
    return SetRanks(by_rank, rank_of[pairs.pos_row, pairs.pos_col], torch.where(positive, inf, rows).argmax(1))


def decode_sets(bits: Tensor, pairs: SetPairs, ranks: SetRanks) -> Tensor:
    """``[t, G]``: the column each row decodes to at each configuration ``bits [t, l]``, the best
    positive (by the current scores) that beats every negative of its row, else the best negative
    (the argmax, where the question is only whether it is positive)."""
    t, width = bits.shape[0], ranks.by_rank.shape[1]
    ia, _ = pairs.pairs()
    wrong = torch.zeros(t, pairs.pos_row.numel(), dtype=torch.long, device=bits.device).index_add_(1, ia, (~bits).long())
    key = torch.where(wrong == 0, ranks.pos_rank[None, :], torch.full_like(wrong, width))
    rank = torch.full((t, pairs.num_rows), width, dtype=torch.long, device=bits.device)
    rank.scatter_reduce_(1, pairs.pos_row.expand(t, -1), key, "amin")
    chosen = ranks.by_rank.gather(1, rank.clamp(max=width - 1).t()).t()
    return torch.where(rank < width, chosen, ranks.top_negative[None, :])


class _PairDifferences(torch.autograd.Function):
    """``c[i, j] = s[a[i]] - s[b[j]]`` flattened, with a one-node backward (two index sums)."""

    @staticmethod
    def forward(s: Tensor, a: Tensor, b: Tensor) -> Tensor:
        return (s.index_select(0, a)[:, None] - s.index_select(0, b)[None, :]).reshape(-1)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        s, a, b = inputs
        ctx.save_for_backward(a, b)
        ctx.size = s.shape[0]

    @staticmethod
    def backward(ctx, grad: Tensor):
        a, b = ctx.saved_tensors
        grad = grad.view(a.numel(), b.numel())
        out = grad.new_zeros(ctx.size)
        out.index_add_(0, a, grad.sum(1))
        out.index_add_(0, b, grad.sum(0), alpha=-1)
        return out, None, None


_apply_pair_differences = two_way(_PairDifferences)


def pair_differences(s: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``(s[a][:, None] - s[b][None, :]).reshape(-1)`` for a 1-D ``s``: every pair of an a-item
    and a b-item, a-major; differentiable in ``s`` with a single autograd node."""
    return _apply_pair_differences(s, a, b)


class _IndexDifferences(torch.autograd.Function):
    """``c[k] = s[a[k]] - s[b[k]]``, ``+inf`` (no gradient) where ``padding[k]`` (``None``: none)."""

    @staticmethod
    def forward(s: Tensor, a: Tensor, b: Tensor, padding: Optional[Tensor]) -> Tensor:
        c = s.index_select(0, a) - s.index_select(0, b)
        return c if padding is None else c.masked_fill_(padding, float("inf"))

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        s, a, b, padding = inputs
        ctx.save_for_backward(a, b, padding)
        ctx.size = s.shape[0]

    @staticmethod
    def backward(ctx, grad: Tensor):
        a, b, padding = ctx.saved_tensors
        if padding is None:  # each side summed apart, then their difference: plain indexing's gradient to the bit
            above = grad.new_zeros(ctx.size).index_add_(0, a, grad)
            return above - grad.new_zeros(ctx.size).index_add_(0, b, grad), None, None, None
        grad = grad.masked_fill(padding, 0.0)
        out = grad.new_zeros(ctx.size)
        out.index_add_(0, a, grad)
        out.index_add_(0, b, grad, alpha=-1)
        return out, None, None, None


_apply_index_differences = two_way(_IndexDifferences)


def index_differences(s: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``s[a] - s[b]`` for a 1-D ``s`` and index tensors ``a``, ``b`` of one shape (pairs listed
    one by one: a ranking's, a set-against-set layout's); differentiable in ``s`` with a single
    autograd node (where plain indexing makes three)."""
    return _apply_index_differences(s, a, b, None)


def static_pair_differences(s: Tensor, a: Tensor, b: Tensor, padding: Tensor) -> Tensor:
    """:func:`index_differences`, ``+inf`` where ``padding`` (a static layout's padding, see
    :class:`uniloss._decomposition.StaticLayout`); the padding's gradient zero."""
    return _apply_index_differences(s, a, b, padding)


class _RowDifferences(torch.autograd.Function):
    """``c[i, j] = s[i, y[i]] - s[i, cols[i, j]]`` flattened (``cols[i]`` never holds ``y[i]``)."""

    @staticmethod
    def forward(s: Tensor, y: Tensor, cols: Tensor) -> Tensor:
        return (s.gather(1, y) - s.gather(1, cols)).reshape(-1)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        s, y, cols = inputs
        ctx.save_for_backward(y, cols)
        ctx.shape = s.shape

    @staticmethod
    def backward(ctx, grad: Tensor):
        y, cols = ctx.saved_tensors
        grad = grad.view(cols.shape)
        out = grad.new_zeros(ctx.shape)
        out.scatter_add_(1, cols, -grad)
        out.scatter_add_(1, y, grad.sum(1, keepdim=True))
        return out, None, None


_apply_row_differences = two_way(_RowDifferences)


def row_differences(s: Tensor, y: Tensor, cols: Tensor) -> Tensor:
    """``(s.gather(1, y[:, None]) - s.gather(1, cols)).reshape(-1)`` for ``s`` ``[n, p]``: each
    row's entry ``y`` against its entries ``cols``; differentiable with a single autograd node."""
    return _apply_row_differences(s, y[:, None], cols)


def least_differences(rows: Tensor, labels: Tensor) -> Tensor:
    """``[G]`` each row's least comparison of its label with the other classes, ``s[y] - max_{j !=
    y} s[j]`` (:attr:`uniloss.Structure.run_least` of a run of ``C - 1`` comparisons ``s_y - s_j``
    in class order, ``rows [G, C]``, ``C >= 2``): of the other classes tied for the best, the last,
    its run's comparison of largest index, so the gradient goes where the chain on every
    comparison sends it (ties in the chain's order by index). Differentiable in ``rows``."""
    with torch.no_grad():
        others = rows.detach().scatter(1, labels[:, None], float("-inf"))
        last = (others.shape[1] - 1) - others.flip(1).argmax(1)
    return row_differences(rows, labels, last[:, None])


def softmax_pull(scores: Tensor, labels: Tensor, temperature) -> Tensor:
    """Each row's term of the pull per run (:attr:`uniloss.Structure.run_pull`) of the runs of
    :func:`least_differences`: ``log(1 + sum_{j != y} exp((s_j - s_y) / tau))``, the
    cross-entropy of ``scores / tau``; ``scores [n, C]`` or ``[n, C, *spatial]`` with ``labels``
    ``[n]`` or ``[n, *spatial]`` (in any shape with their elements: rows in ``[n, *spatial]``
    order), ``[G]`` terms."""
    unit = not isinstance(temperature, Tensor) and temperature == 1.0
    shape = (scores.shape[0],) + tuple(scores.shape[2:])
    return torch.nn.functional.cross_entropy(scores if unit else scores / temperature, labels.reshape(shape),
                                             reduction="none").reshape(-1)


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


def ordinal_margins(flat: Tensor, level: Tensor, boundaries: int) -> Tensor:
    """``[n, boundaries]`` margins of integer grades, right when ``> 0``: for item ``i`` and grade
    boundary ``b = 1 .. boundaries``, ``s_i - (b - 1)`` where ``level_i >= b`` and ``(b - 1) - s_i``
    otherwise. The pull on them (:attr:`uniloss.Structure.margins`) is the all-threshold ordinal
    logistic loss with thresholds ``0, 1, 2, ...``, summed over the boundaries and averaged over
    the items; with one boundary, binary cross-entropy on :func:`binary_margins`."""
    threshold = torch.arange(boundaries, device=flat.device)
    above = level[:, None] > threshold[None, :]  # level >= b, b = threshold + 1
    m = flat[:, None] - threshold.to(flat.dtype)[None, :]
    return torch.where(above, m, -m)


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
