"""The paper's three decompositions: average precision, multi-class accuracy, PCK."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import NamedTuple, Optional, Union, cast

import torch
from torch import Tensor

from . import _validation as V
from ._bits import as_float
from ._cache import TensorCache
from ._decomposition import Decomposition, Structure, static_layout, validate_scores
from ._pairs import (
    SetPairs, binary_margins, least_differences, other_classes, pair_differences, row_differences, set_least,
    set_pairs, set_pull, softmax_pull, static_pair_differences,
)
from ._random import randperm
from ._structured import PREFIX_COUNTS, Runs

__all__ = ["AveragePrecision", "MulticlassAccuracy", "PCK", "KeypointTarget"]


def _segment_sum(values: Tensor, segment: Tensor, num_segments: int) -> Tensor:
    """Sum ``values [t, m]`` over the columns of each segment: ``[t, num_segments]``."""
    out = values.new_zeros(values.shape[0], num_segments)
    return out.index_add_(1, segment, values)


# Cached constant tensors (see uniloss._cache: made outside inference mode, afresh when compiled).
_TRUE = TensorCache()
_RANKS = TensorCache()
_ARANGE = TensorCache()


def _ranks(n: int, device, dtype) -> Tensor:
    """``1 .. n`` (cached: AP needs it every step)."""
    return _RANKS.get((n, device, dtype), lambda: torch.arange(1, n + 1, device=device, dtype=dtype))


_DOWN = TensorCache()
_AP_START = TensorCache()


def _down(n: int, device, dtype) -> Tensor:
    """``n .. 1`` (cached: AP's chain needs it every step)."""
    return _DOWN.get((n, device, dtype), lambda: torch.arange(n, 0, -1, device=device, dtype=dtype))


def _ap_start(num_pos: int, num_neg: int, device, dtype) -> Tensor:
    """AP with every negative above every positive: ``sum_k k / (k + N) / P``."""
    k = _ranks(num_pos, device, dtype)
    return (k / (k + num_neg)).sum() / num_pos


# From this many comparisons on, a static layout's indices are spread with repeat_interleave
# rather than computed by a division per bit (fewer passes, more operator calls).
_SPREAD_BITS = 1 << 13
_ENDS_BITS = 1 << 11


_FLOAT_DIV_BITS = (1 << 23) - 1  # k + 0.5 exact in float32, its quotient's error below 0.5 / width


def _floor_div(k: Tensor, width: Tensor) -> Tensor:
    """``k // width`` of the static layouts' bit numbers ``k = 0 .. l - 1`` (int64) and a 0-dim
    ``width >= 1``. Below :data:`_FLOAT_DIV_BITS` bits as ``floor((k + 0.5) / width)`` in
    float32, exact there (``k + 0.5`` is exact, lies at least ``0.5 / width`` from a multiple of
    ``width``, and the division's rounding error is at most ``(k + 0.5) / width x 2^-24``, less) and
    a vector division where an int64 one is a loop of scalar ones (a CPU kernel of
    ``torch.compile``, a GPU); above, integer division."""
    if k.numel() > _FLOAT_DIV_BITS:
        return torch.div(k, width, rounding_mode="floor")
    return ((k.to(torch.float32) + 0.5) / width.to(torch.float32)).to(torch.int64)  # (positive: truncation is floor)


def _arange(n: int, device) -> Tensor:
    """``0 .. n - 1`` int64 (cached: the static layouts index with it every step)."""
    return _ARANGE.get((n, device), lambda: torch.arange(n, device=device))


def all_true(num_bits: int, device) -> Tensor:
    """``[num_bits]`` bool of ones, as an expanded view (no memory per bit)."""
    return _TRUE.get(device, lambda: torch.ones((), dtype=torch.bool, device=device)).expand(num_bits)


def is_all_true(bits: Tensor) -> bool:
    """Whether ``bits`` is a view made by :func:`all_true` (every bit 1, known without reading it;
    ``False`` inside ``torch.compile``, where the view is made afresh: the general path)."""
    return bits.dim() == 1 and bits.stride(0) == 0 and bits._base is not None and bits._base is _TRUE.peek(bits.device)


_FLOAT_RANGE = TensorCache()


def _float_range(n: int, device) -> Tensor:
    """``0 .. n - 1`` float32 (cached)."""
    return _FLOAT_RANGE.get((n, device), lambda: torch.arange(n, device=device, dtype=torch.float32))


def _share_turned(turn: Tensor, num_bits: int, units: Optional[Tensor] = None) -> Tensor:
    """``[num_bits + 1]``: at each point ``j`` of the chain of ``interpolation="chain"``, the share
    of the units (samples, joints) right by then, each right from its point ``turn`` on
    (``num_bits + 1``: never); ``units``: how many count (a 0-dim tensor), where not all of ``turn``."""
    right = torch.searchsorted(turn.sort().values, torch.arange(num_bits + 1, device=turn.device), right=True)
    return right.float() / (turn.numel() if units is None else units)


def _check_scores(scores) -> None:
    """:func:`validate_scores` with one reduction on the fast path: a NaN or an infinity makes
    the sum non-finite (so can an overflow, which the full check then clears)."""
    if isinstance(scores, Tensor) and scores.is_floating_point():
        if not scores.numel() or math.isfinite(float(scores.detach().sum())):
            return
    validate_scores(scores)


_SIGNED = (torch.int8, torch.int16, torch.int32, torch.int64)


def _check_binary(name: str, target: Tensor) -> None:
    """``V.check_binary_labels`` with one reduction on the fast path: signed integers hold only 0
    and 1 iff no bit but the lowest is set (``t & -2 == 0``; two's complement: a negative has its
    sign bit), other dtypes iff ``t (1 - t) == 0`` exactly (three operator calls)."""
    if target.dtype == torch.bool or not target.numel():
        return
    extra = target.bitwise_and(-2) if target.dtype in _SIGNED else target * (1 - target)
    if bool(extra.any()):
        V.check_binary_labels(name, target)


def _prepared(decomposition: Decomposition, target, plan_type):
    """``best`` and ``evaluate`` of decompositions whose bits depend on the scores take the
    target as ``prepare(scores, target)`` returned it."""
    return V.check_plan(decomposition, target, plan_type)


# --------------------------------------------------------------------------- average precision


@dataclass(frozen=True)
class _APPlan:
    pos: Tensor  # [P] indices of positive samples
    neg: Tensor  # [N] indices of negative samples
    scores: Optional[Tensor] = None  # [n] the scores prepared with, detached (the reported AP on ties)


@dataclass(frozen=True)
class _APStatic:
    """AP's comparisons in a static layout (see :class:`uniloss._decomposition.StaticLayout`):
    ``L = floor(n^2 / 4)`` bits, the most ``P N`` can be; bit ``k < P N`` is the exact layout's,
    positive ``k // N`` (in index order) against negative ``k % N``; the rest is padding."""

    positive: Tensor  # [n] bool
    num_pos: Tensor  # 0-dim int64 P
    a: Tensor  # [L] the positive sample of each bit (clamped on the padding)
    b: Tensor  # [L] the negative sample of each bit
    padding: Tensor  # [L] bool, bits from P N on
    runs: Runs  # one run per positive slot (n runs, those from P on empty)
    empty_run: Tensor  # [n] bool, the runs from P on
    scores: Optional[Tensor] = None  # [n] the scores prepared with (the reported AP on ties)


class AveragePrecision(Decomposition):
    r"""Binary average precision over positive x negative pairs (paper sec. 4.1).

    Comparisons ``c_ij = s_i - s_j`` for every positive ``i`` and negative ``j`` (``l = P*N``,
    positive-major); pos-pos and neg-neg pairs cannot change AP and are pruned. From the bits,
    with ``n_k`` the number of negatives above the ``k``-th positive (``n`` sorted ascending):

    .. math:: AP = \frac{1}{P} \sum_{k=1}^{P} \frac{k}{k + n_k}

    which equals scikit-learn's ``average_precision_score`` for untied scores. With
    ``interpolated=True`` the precision at each positive is replaced by its running maximum from
    the right (VOC-style, what the paper's published evaluation computes).

    **Ties.** The bits count a tie (``c_ij = 0``) as a wrong comparison, the negative above the
    positive, and ``k`` is the positive's place among the positives: so the anchors' values and
    the loss do (a tie is a step still to take). The reported metric, :meth:`metric` and
    ``UniLoss.last.metric`` (:meth:`batch_metric`), is scikit-learn's instead: a run of tied
    scores is one threshold, and each positive in it counts the precision at the run's end,
    ``k`` and ``n_k`` the positives and negatives scoring at least as high as it (constant scores:
    ``P / (P + N)``, where the bits give ``(1/P) sum_k k / (k + N)``). Without ties the two agree
    to the last bit. With ``interpolated=True`` they always agree: the running maximum already
    gives every positive of a tied run the precision at the run's end.

    Shapes: ``scores`` ``[n]`` or ``[n, 1]`` float; ``target`` ``[n]`` with values in {0, 1}
    (bool, int or float). A batch without a positive has an undefined AP (metric NaN); without a
    negative AP is 1. Either way there are no comparisons and the loss is zero.

    Inside a loss call with sampled anchors the comparisons are laid out statically, ``n^2 / 4`` of
    them with the ``P*N`` real ones first (see :class:`uniloss._decomposition.StaticLayout`): the
    same loss, with no host synchronisation when ``validate_args=False``.
    :meth:`prepare` called directly gives the exact ``P*N`` layout.

    Example::

        >>> import torch, uniloss
        >>> ap = uniloss.AveragePrecision()
        >>> ap.metric(torch.tensor([0.9, 0.8, 0.3, 0.1]), torch.tensor([1, 0, 1, 0]))
        tensor(0.8333)
        >>> ap.metric(torch.zeros(4), torch.tensor([1, 0, 1, 0]))     # all tied: P / (P + N)
        tensor(0.5000)
    """

    def __init__(self, interpolated: bool = False) -> None:
        if not isinstance(interpolated, bool):
            raise TypeError(f"Expected `interpolated` to be a bool, but got {type(interpolated).__name__}")
        self.interpolated = interpolated

    def __repr__(self) -> str:
        return f"AveragePrecision(interpolated={self.interpolated})"

    @staticmethod
    def _flat(scores: Tensor) -> Tensor:
        return scores.reshape(-1) if scores.dim() == 2 else scores

    def check(self, scores: Tensor, target: Tensor) -> None:
        _check_scores(scores)
        if scores.dim() == 2 and scores.shape[1] != 1 or scores.dim() not in (1, 2):
            raise ValueError(f"Expected `scores` of shape [n] or [n, 1], but got shape {tuple(scores.shape)}")
        if isinstance(target, _APPlan):
            return
        V.check_tensor("target", target)
        V.check_same_device(scores=scores, target=target)
        V.check_shape("target", target, (scores.shape[0],), f"[{scores.shape[0]}] (one label per score)")
        _check_binary("target", target)

    def prepare(self, scores: Optional[Tensor], target, generator=None):
        if isinstance(target, (_APPlan, _APStatic)):
            return target
        positive = target != 0
        n = positive.numel()
        layout = static_layout()
        if layout is not None and layout.claim(self, n * n // 4):
            # (the scores as they are: batch_metric reads them without gradient)
            return self._static(positive, None if scores is None else self._flat(scores), layout)
        flat = None if scores is None else self._flat(scores).detach()
        return _APPlan(positive.nonzero().reshape(-1), (~positive).nonzero().reshape(-1), flat)

    @staticmethod
    def _static(positive: Tensor, flat: Optional[Tensor], layout) -> _APStatic:
        """The static layout: the samples sorted positives first (each class in index order), bit
        ``k`` the pair of positive slot ``k // N`` and negative slot ``P + k % N``."""
        n, device = positive.numel(), positive.device
        order = torch.sort(positive, descending=True, stable=True).indices
        num_pos = positive.sum()
        num_neg = n - num_pos
        num_valid = num_pos * num_neg
        k = _arange(n * n // 4, device)
        padding = k >= num_valid
        layout.set_valid(num_valid, padding)
        slots = _arange(n, device)
        empty = slots >= num_pos
        if k.numel() < _SPREAD_BITS:  # few operator calls: what a small batch costs
            width = num_neg.clamp_min(1)
            quotient = _floor_div(k, width)
            slot = quotient.clamp_max(n - 1)
            a = order.index_select(0, slot)
            b = order.index_select(0, (k - quotient * width + num_pos).clamp_max_(n - 1))
            runs = Runs(None, slot, None, n)
            if k.numel() >= _ENDS_BITS:  # counted from prefix sums where the anchors' rows are large
                runs.ends = ((slots + 1) * width).clamp_max_(k.numel())
        else:  # one pass a tensor (a division a bit costs more): each slot's bits spread from it
            per = torch.where(empty, 0, num_neg)  # bits of each positive's run
            start = torch.cumsum(per, 0) - per
            spread = per.clone()
            spread[-1] += k.numel() - num_valid  # the last slot (empty unless N = 0) takes the padding
            a = torch.repeat_interleave(order, spread, output_size=k.numel())
            column = k - torch.repeat_interleave(start, spread, output_size=k.numel())
            b = order.index_select(0, (column + num_pos).clamp_max_(n - 1))
            runs = Runs(None, None, start + per, n)  # counted from prefix sums; the empty runs end at P N
        return _APStatic(positive, num_pos, a, b, padding, runs, empty, flat)

    def metric(self, scores: Tensor, target) -> Tensor:
        """The AP of ``scores``, tied scores counted as scikit-learn counts them (see the class
        documentation); float32, NaN without a positive."""
        if self.interpolated:
            return super().metric(scores, target)
        with torch.no_grad():
            plan = self.prepare(scores, target)
            return self._tied(plan.pos, plan.neg, self._flat(scores).detach())

    def batch_metric(self, target) -> Optional[Tensor]:
        """The reported metric of the batch: :meth:`metric` of the scores ``prepare`` saw
        (``None`` for a plan prepared without scores)."""
        plan = self.prepare(None, target)
        if self.interpolated or plan.scores is None:
            return None  # (interpolated: the bits' AP is already the tied one)
        if isinstance(plan, _APStatic):
            return self._tied_static(plan)
        return self._tied(plan.pos, plan.neg, plan.scores)

    @staticmethod
    def _tied_static(plan: _APStatic) -> Tensor:
        """:meth:`_tied` with the positives' and negatives' scores sorted in ``[n]`` tensors (the
        other class's entries ``+inf``, last), the terms of the slots past ``P`` exact zeros (so the
        value is :meth:`_tied`'s to the last bit)."""
        assert plan.scores is not None
        with torch.no_grad():
            up = -plan.scores
            inf = torch.full_like(up, float("inf"))
            down = torch.where(plan.positive, up, inf).sort().values  # the positives from the top, then +inf
            k = torch.searchsorted(down, down, right=True)
            above = torch.searchsorted(torch.where(plan.positive, inf, up).sort().values, down, right=True)
            dtype = torch.float64 if plan.scores.dtype == torch.float64 else torch.float32  # as in _tied
            precision = (k.to(dtype) / (k + above).to(dtype)).masked_fill_(plan.empty_run, 0.0)
            return precision.cumsum(0)[-1] / plan.num_pos

    def _tied(self, pos: Tensor, neg: Tensor, scores: Tensor) -> Tensor:
        """AP with each run of tied scores one threshold (scikit-learn): each positive, from the
        top, counts the positives ``k`` and negatives ``n_k`` scoring at least as high (two
        sorts and two binary searches). In float32 counts as :meth:`evaluate_zeros`: without
        ties, its value to the last bit."""
        num_pos = pos.numel()
        if num_pos == 0:
            return torch.full((), float("nan"), device=scores.device)
        down = -scores[pos].sort(descending=True).values  # ascending: the positives from the top
        dtype = torch.float64 if scores.dtype == torch.float64 else torch.float32  # float64 scores: float64 metric
        k = torch.searchsorted(down, down, right=True).to(dtype)  # non-decreasing, as n_k
        above = torch.searchsorted((-scores[neg]).sort().values, down, right=True).to(dtype)
        return (k / (k + above)).cumsum(0)[-1] / num_pos  # summed as evaluate_zeros sums

    def comparisons(self, scores: Tensor, target) -> Tensor:
        plan = self.prepare(scores, target)
        if isinstance(plan, _APStatic):
            return static_pair_differences(self._flat(scores), plan.a, plan.b, plan.padding)
        return pair_differences(self._flat(scores), plan.pos, plan.neg)

    def best(self, target) -> Tensor:
        plan = self.prepare(None, target)
        if isinstance(plan, _APStatic):
            return all_true(plan.a.numel(), plan.a.device)
        return all_true(plan.pos.numel() * plan.neg.numel(), plan.pos.device)

    def structure(self, target) -> Structure:
        """One run per positive: its ``N`` comparisons with the negatives; AP from the sorted
        counts (:meth:`evaluate_zeros`), one more negative above a positive in closed form; the
        margins ``s`` of a positive and ``-s`` of a negative (AP ranks a whole data set)."""
        plan = self.prepare(None, target)
        if isinstance(plan, _APStatic):
            positive = plan.positive
            # (a plan prepared without scores has no order to give: the engine evaluates the chain)
            static_gains = (None if self.interpolated or plan.scores is None
                            else lambda v: self._static_chain_gains_by_scores(plan))
            return Structure(plan.runs, lambda zeros: self.evaluate_zeros(zeros, plan),
                             margins=lambda scores: binary_margins(self._flat(scores), positive),
                             chain_gains=static_gains)
        plus_one = None if self.interpolated else self._plus_one
        pos = plan.pos
        num_neg = plan.neg.numel()
        chain = None if self.interpolated else (lambda rank: self._chain(rank, pos.numel(), num_neg))
        scores = plan.scores  # (a plan prepared without scores: the closed form along the sorted chain)
        gains = (None if self.interpolated or scores is None
                 else lambda v: self._chain_gains_by_scores(scores[pos], scores[plan.neg]))
        return Structure(num_neg, lambda zeros: self.evaluate_zeros(zeros, plan), plus_one,
                         margins=lambda scores: binary_margins(self._flat(scores), pos), chain=chain,
                         chain_gains=gains)

    @staticmethod
    def _chain_gains_by_scores(positives: Tensor, negatives: Tensor) -> "tuple[Tensor, Tensor]":
        """Plain AP's chain without its order (:attr:`Structure.chain_gains`), from the scores the
        plan was prepared with (``[P]`` and ``[N]``): ``(start, gains [P N])``.

        :meth:`_chain`'s steps need of the order only each positive's ``m``-th step (its
        comparisons in the chain's order) and that step's place ``k`` among the ``m``-th steps;
        the change is then ``(k / (k + v - 1) - k / (k + v)) / P`` with ``v = N - m + 1``. The
        relaxed bits ``v = sigmoid((s_p - s_q) / tau)`` fall with ``s_q`` and rise with ``s_p``,
        so every positive's comparisons take one order, the negatives by score ascending (ties by
        index), and every column of ``m``-th steps one order, the positives by score descending
        (ties by index): two sorts of ``P`` and ``N`` scores, where sorting the ``v`` would take
        two sorts of ``[P, N]`` along its axes (0.10). The same gains in float64; in float32 the
        ``v`` themselves order less well (the sigmoid rounds distinct comparisons to one value near
        1, its resolution there ``6e-8``, and may round one comparison two ways by its place in a
        vector), the scores as the comparisons do."""
        num_pos, num_neg, device = positives.numel(), negatives.numel(), positives.device
        dtype = torch.float64 if device.type == "cpu" else torch.float32
        place = torch.empty(num_pos, dtype=dtype, device=device).scatter_(
            0, positives.argsort(descending=True, stable=True), _ranks(num_pos, device, dtype))  # 1-based
        down = torch.empty(num_neg, dtype=dtype, device=device).scatter_(
            0, negatives.argsort(stable=True), _down(num_neg, device, dtype))  # N - m: the count before the step
        k = place[:, None]
        q = k + down  # k + v
        gains = k / (q * (q - 1.0) * num_pos)  # (k / (k + v - 1) - k / (k + v)) / P
        start = _AP_START.get((num_pos, num_neg, device, dtype), lambda: _ap_start(num_pos, num_neg, device, dtype))
        return start, gains.view(-1)

    @staticmethod
    def _static_chain_gains_by_scores(plan: _APStatic) -> "tuple[Tensor, Tensor]":
        """:meth:`_chain_gains_by_scores` in the static layout, whose first ``P N`` bits are the
        exact layout's ``[P, N]`` row by row and the rest padding (no gain), in shapes from the
        layout's (``P`` and ``N`` stay tensors: no host synchronisation, one graph under
        ``torch.compile``): each bit's positive's place among the positives (by score, descending)
        and its negative's step among the negatives (by score, ascending), from two stable sorts
        of the ``n`` scores (the other class last)."""
        assert plan.scores is not None  # (see structure)
        n, device = plan.positive.numel(), plan.a.device
        dtype = torch.float64 if device.type == "cpu" else torch.float32
        scores, positive = plan.scores.detach(), plan.positive
        num_pos = plan.num_pos
        num_neg = n - num_pos
        ranks = _ranks(n, device, dtype)
        inf = torch.full_like(scores, float("inf"))
        # each sample's place among its class: positives from the highest score, negatives from the lowest
        by_class = torch.empty(n, dtype=dtype, device=device)
        by_class.scatter_(0, torch.where(positive, -scores, inf).sort(stable=True).indices, ranks)  # positives first
        place = by_class.gather(0, plan.a)  # 1-based among the positives
        by_class.scatter_(0, torch.where(positive, inf, scores).sort(stable=True).indices, ranks)  # negatives first
        q = place + (num_neg.to(dtype) + 1.0 - by_class.gather(0, plan.b))  # k + v, v = N - m the count before the step
        change = torch.where(plan.padding, 0.0, place / (q * (q - 1.0)).clamp_min(1.0)) / num_pos.clamp_min(1).to(dtype)
        start = torch.where(ranks <= num_pos, ranks / (ranks + num_neg.to(dtype)), 0.0).sum() / num_pos.clamp_min(1).to(dtype)
        return start, change

    @staticmethod
    def _chain(rank: Tensor, num_pos: int, num_neg: int) -> Tensor:
        """Plain AP along the chain of ``interpolation="chain"`` (:attr:`Structure.chain`),
        ``O(l log l)`` instead of ``[l + 1, P]`` counts.

        Each step of the chain puts one more negative below a positive: that positive's count
        ``v`` of negatives above it drops by one. In the ascending counts the first ``v`` sits at
        place ``k = 1 + #{counts < v}`` and becomes ``v - 1`` there, so AP changes by one term,
        ``(k / (k + v - 1) - k / (k + v)) / P``. A positive's ``m``-th step takes it from ``N - m
        + 1`` to ``N - m``, and the counts below ``N - m + 1`` then are those of the positives
        whose ``m``-th step came earlier: ``k - 1`` is the step's place among the ``m``-th steps
        in chain order. Two sorts give every step's change; AP at ``S_0`` (every count ``N``)
        plus their running sum gives the chain."""
        l = rank.numel()
        dtype = torch.float64 if rank.device.type == "cpu" else torch.float32
        times = rank.view(num_pos, num_neg).sort(1).values  # [P, N]: column m-1 holds each positive's m-th step
        place = times.argsort(0).argsort(0).to(dtype) + 1  # k: the step's place among the m-th steps
        before = num_neg - torch.arange(num_neg, device=rank.device, dtype=dtype)  # v: the count before the m-th step
        change = (place / (place + before - 1) - place / (place + before)) / num_pos
        k = _ranks(num_pos, rank.device, dtype)
        start = (k / (k + num_neg)).sum() / num_pos
        steps = torch.zeros(l, dtype=dtype, device=rank.device).index_put_((times.reshape(-1),), change.reshape(-1))
        return torch.cat([start[None], start + steps.cumsum(0)])

    def evaluate(self, bits: Tensor, target) -> Tensor:
        plan = self.prepare(None, target)
        t = bits.shape[0]
        if isinstance(plan, _APStatic):
            return self.evaluate_zeros(plan.runs.zeros(~bits, torch.float32), plan)
        if plan.pos.numel() == 0:
            return torch.full((t,), float("nan"), device=bits.device)
        above = (~bits).reshape(t, plan.pos.numel(), plan.neg.numel()).sum(-1, dtype=torch.float32)
        return self.evaluate_zeros(above, plan)

    def evaluate_zeros(self, zeros: Tensor, target) -> Tensor:
        """``zeros[:, i]``: the negatives above positive ``i``; AP from them sorted ascending."""
        num_pos = zeros.shape[-1]
        if num_pos == 0:
            return torch.full(zeros.shape[:-1], float("nan"), device=zeros.device)
        plan = target if isinstance(target, _APStatic) else None
        if plan is not None:  # the runs from P on are empty: +inf, sorted last, their terms 0
            zeros = zeros.masked_fill(plan.empty_run, float("inf"))
        above = zeros.sort(-1).values  # n_k ascending
        k = _ranks(num_pos, zeros.device, zeros.dtype)
        precision = k / (k + above)
        if self.interpolated:
            precision = precision.flip(-1).cummax(-1).values.flip(-1)
        # The sum in order (a CPU cumsum accumulates in float64): the static layout's empty runs add
        # exact zeros at the end, so both layouts give the same value to the last bit.
        total = precision.cumsum(-1)[..., -1]
        return total / (num_pos if plan is None else plan.num_pos)

    @staticmethod
    def _plus_one(zeros: Tensor) -> Tensor:
        """Closed form (plain AP): one more negative above positive ``i`` moves the last of the
        equal counts at sorted position ``k*`` from ``v`` to ``v + 1``, changing one term."""
        if zeros.numel() == 0:
            return zeros.new_zeros(0)
        above = zeros.sort().values
        k = torch.arange(1, zeros.numel() + 1, device=zeros.device, dtype=zeros.dtype)
        ap = (k / (k + above)).mean()
        last = torch.searchsorted(above, zeros, right=True).to(zeros.dtype)
        return ap + (last / (last + zeros + 1) - last / (last + zeros)) / zeros.numel()


# --------------------------------------------------------------------------- multi-class accuracy


@dataclass(frozen=True)
class _AccuracyPlan:
    labels: Tensor  # [n]
    given_cols: Optional[Tensor]  # [n, m] the other classes each sample's target is compared with (None: every one)
    selected: Optional[Tensor] = None  # [l] flat indices into [n*m] trained this step
    fixed_ok: Optional[Tensor] = None  # [n] bool: every bit not selected is currently right
    exact: Optional[Tensor] = None  # with undrawn="right": the batch's exact accuracy
    num_classes: int = 0  # p, where every other class is compared (given_cols None)

    @property
    def cols(self) -> Tensor:
        """``[n, m]`` the other classes compared; every one in class order, formed when first read
        (the path "runs" never reads them: three operator calls a step)."""
        if self.given_cols is None:
            object.__setattr__(self, "given_cols", other_classes(self.labels, self.num_classes))
        return cast(Tensor, self.given_cols)

    @property
    def shape(self) -> "tuple[int, int]":
        """``(n, m)``: the shape of :attr:`cols`, without forming them."""
        if self.given_cols is None:
            return self.labels.numel(), max(self.num_classes - 1, 0)
        return self.given_cols.shape[0], self.given_cols.shape[1]


class MulticlassAccuracy(Decomposition):
    r"""Multi-class accuracy from ``n*(p-1)`` comparisons (paper sec. 3.2).

    For sample ``i`` with label ``y_i``: ``c_ij = s_{i,y_i} - s_{i,j}`` for every class
    ``j != y_i``; the sample is correct iff all its bits are 1; ``g`` is the mean over samples.

    Args:
        top_k: keep only the target and the ``top_k`` highest-scoring other classes of each
            sample (the published CIFAR-100 code uses 20): ``l = n*top_k``. Still exact, since the
            target beats every class iff it beats the highest-scoring ones.
        fraction: train only a random fraction of the bits each call (the paper: 20% on
            CIFAR-100; at least one bit). Draws come from the loss's generator.
        undrawn: with ``fraction``, what the anchors assume of the bits not drawn:
            ``"right"`` (default): the metric is scored on the drawn bits only (a sample is right
            in an anchor iff its drawn comparisons are), so every drawn bit can earn a gradient,
            even from a freshly initialised network; ``"current"``: they keep their current hard
            values, so ``evaluate`` of the hard configuration is the exact accuracy, but a sample
            wrong through a bit not drawn is wrong at every anchor and gives no gradient (with
            many classes from scratch, most samples). Either way ``UniLoss.last.metric`` and
            :meth:`metric` are the exact accuracy of the whole batch (:meth:`batch_metric`).

    Shapes: ``scores`` ``[n, p]`` float; ``target`` ``[n]`` int64 in ``[0, p)``.

    Example::

        >>> import torch, uniloss
        >>> acc = uniloss.MulticlassAccuracy()
        >>> acc.metric(torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]]), torch.tensor([0, 1]))
        tensor(0.5000)
    """

    # batch_metric reads a value the plan already holds: the engine reports it at once rather than
    # keep the plan until last.metric is read (see functional.with_exact_metric).
    _batch_metric_is_cheap = True

    def __init__(self, *, top_k: Optional[int] = None, fraction: Optional[float] = None, undrawn: str = "right") -> None:
        self.top_k = None if top_k is None else V.check_count("top_k", top_k, allow_zero=False)
        self.fraction = None if fraction is None else V.check_fraction("fraction", fraction)
        if undrawn not in ("right", "current"):
            raise ValueError(f"Expected `undrawn` to be 'right' or 'current', but got {undrawn!r}")
        self.undrawn = undrawn

    def __repr__(self) -> str:
        extra = "" if self.fraction is None or self.undrawn == "right" else f", undrawn={self.undrawn!r}"
        return f"MulticlassAccuracy(top_k={self.top_k}, fraction={self.fraction}{extra})"

    def check(self, scores: Tensor, target) -> None:
        _check_scores(scores)
        V.check_shape("scores", scores, (None, None), "[n, p] (samples x classes)")
        if isinstance(target, _AccuracyPlan):
            return
        V.check_tensor("target", target)
        V.check_same_device(scores=scores, target=target)
        V.check_shape("target", target, (scores.shape[0],), f"[{scores.shape[0]}] (one label per row of scores)")
        V.check_integer_labels("target", target, 0, scores.shape[1])

    def prepare(self, scores: Tensor, target, generator=None) -> _AccuracyPlan:
        if isinstance(target, _AccuracyPlan):
            return target
        labels = target.long()
        n, p = scores.shape
        if self.top_k is not None and self.top_k < p - 1:
            masked = scores.detach().scatter(1, labels[:, None], float("-inf"))
            cols: Optional[Tensor] = masked.topk(self.top_k, dim=1).indices
        else:  # every other class, in class order (formed when read: _AccuracyPlan.cols)
            cols = None
        if self.fraction is None:
            return _AccuracyPlan(labels, cols, num_classes=p)
        cols = _AccuracyPlan(labels, cols, num_classes=p).cols
        total = cols.numel()
        keep = max(1, round(self.fraction * total)) if total else 0
        selected = randperm(total, generator, scores.device)[:keep].sort().values
        with torch.no_grad():
            right = self._full(scores, labels, cols) > 0
            if self.undrawn == "right":
                return _AccuracyPlan(labels, cols, selected, exact=right.all(1).float().mean())
            right.view(-1)[selected] = True
        return _AccuracyPlan(labels, cols, selected, fixed_ok=right.all(1))

    def batch_metric(self, target) -> Optional[Tensor]:
        """The exact accuracy of the batch when ``fraction`` scores anchors on the drawn bits."""
        return _prepared(self, target, _AccuracyPlan).exact

    def metric(self, scores: Tensor, target) -> Tensor:
        """The exact accuracy of ``scores``' argmax (every comparison, whatever ``top_k`` and
        ``fraction`` train; ties count as wrong)."""
        with torch.no_grad():
            plan = target if isinstance(target, _AccuracyPlan) else None
            labels = plan.labels if plan is not None else target.long()
            cols = other_classes(labels, scores.shape[1])
            return (self._full(scores, labels, cols) > 0).all(1).float().mean()

    @staticmethod
    def _full(scores: Tensor, labels: Tensor, cols: Tensor) -> Tensor:
        return scores.gather(1, labels[:, None]) - scores.gather(1, cols)

    def comparisons(self, scores: Tensor, target) -> Tensor:
        plan = self.prepare(scores, target)
        c = row_differences(scores, plan.labels, plan.cols)
        return c if plan.selected is None else c[plan.selected]

    def best(self, target) -> Tensor:
        plan = _prepared(self, target, _AccuracyPlan)
        n, m = plan.shape
        l = n * m if plan.selected is None else plan.selected.numel()
        return all_true(l, plan.labels.device)

    def structure(self, target) -> Structure:
        """One run per sample: its comparisons (the trained ones, with ``fraction``)."""
        plan = _prepared(self, target, _AccuracyPlan)
        n, m = plan.shape
        if plan.selected is None:
            runs: Union[int, Tensor] = m
        else:
            sample = torch.div(plan.selected, m, rounding_mode="floor")
            # (not bincount: on a GPU it reads the largest value on the host)
            runs = torch.zeros(n, dtype=torch.long, device=sample.device).index_add_(0, sample, torch.ones_like(sample))
        every = plan.selected is None and self.top_k is None and m > 0  # compared with every other class
        return Structure(runs, lambda zeros: self.evaluate_zeros(zeros, plan),
                         lambda zeros: self._plus_one(zeros, plan),
                         chain=lambda turn, length: self._chain(turn, length, plan), chain_by_runs=True,
                         run_pull=(lambda scores, temperature: softmax_pull(scores, plan.labels, temperature)) if every else None,
                         run_least=(lambda scores: least_differences(scores, plan.labels)) if every else None)

    @staticmethod
    def _chain(turn: Tensor, length: int, plan: "_AccuracyPlan") -> Tensor:
        """The accuracy along the chain of ``interpolation="chain"`` (:attr:`Structure.chain`,
        ``chain_by_runs``): a sample is right from its run's turn on (at once where none of its
        comparisons is drawn; never where, with ``undrawn="current"``, one not drawn is wrong),
        so the accuracy at point ``j`` counts the samples turned by then."""
        if plan.selected is None and length == turn.numel():
            # the chain of the runs' last comparisons (run_chain_gains): every sample a run, each turning at its own
            # point (a chain turns one comparison a step), so the turns are 1 .. n and j samples are right at point j:
            # _share_turned's values without its sort
            return _float_range(length + 1, turn.device) / turn.numel()
        if plan.fixed_ok is not None:
            turn = torch.where(plan.fixed_ok, turn, length + 1)
        return _share_turned(turn, length)

    def evaluate_zeros(self, zeros: Tensor, target) -> Tensor:
        """A sample is right iff none of its comparisons is 0 (and, with ``undrawn="current"``,
        its comparisons not drawn are currently right)."""
        plan = _prepared(self, target, _AccuracyPlan)
        ok = zeros == 0
        if plan.fixed_ok is not None:
            ok = ok & plan.fixed_ok
        return as_float(ok).mean(-1)

    @staticmethod
    def _plus_one(zeros: Tensor, plan: "_AccuracyPlan") -> Tensor:
        """Closed form: one more wrong comparison makes sample ``i`` wrong."""
        ok = zeros == 0
        if plan.fixed_ok is not None:
            ok = ok & plan.fixed_ok
        ok = ok.float()
        return (ok.sum() - ok) / zeros.numel()

    def evaluate(self, bits: Tensor, target) -> Tensor:
        plan = _prepared(self, target, _AccuracyPlan)
        t = bits.shape[0]
        n, m = plan.shape
        if plan.selected is None:
            return as_float(bits.reshape(t, n, m).all(-1)).mean(-1)
        sample = torch.div(plan.selected, m, rounding_mode="floor")
        ok = _segment_sum((~bits).float(), sample, n) == 0
        if plan.fixed_ok is not None:
            ok = ok & plan.fixed_ok
        return ok.float().mean(-1)


# --------------------------------------------------------------------------- PCK


class KeypointTarget(NamedTuple):
    """Ground truth for :class:`PCK`, in heatmap pixel coordinates.

    Attributes:
        keypoints: ``[n, J, 2]`` float, the ``(x, y)`` = (column, row) of each joint; pixel
            ``(i, j)`` of a heatmap (row ``i``, column ``j``) has its centre at ``(x=j, y=i)``.
        visible: ``[n, J]`` bool; invisible joints are left out of the metric.
        normalizer: ``[n]`` float > 0, the per-sample length the threshold multiplies
            (PCKh: the head size, in heatmap pixels).
    """

    keypoints: Tensor
    visible: Tensor
    normalizer: Tensor


@dataclass(frozen=True)
class _PCKStatic:
    """PCK's comparisons in a static layout (see :class:`uniloss._decomposition.StaticLayout`):
    ``L = n J floor((H W)^2 / 4)`` bits (the most ``sum_joints P (H W - P)`` can be); the first
    ``l`` are the exact layout's (visible joints in order, each positive pixel against the joint's
    negative pixels, both in pixel order), the rest padding. Runs: one per positive pixel, in
    that order, then empty runs and a last run holding the padding."""

    visible: Tensor  # [G] bool, G = n J
    num_visible: Tensor  # 0-dim int64
    a: Tensor  # [L] flat index of the positive pixel of each bit
    b: Tensor  # [L] flat index of the negative pixel
    padding: Tensor  # [L] bool
    runs: Runs  # G H W + 1 runs
    run_joint: Tensor  # [G H W + 1] joint of each run, G for the empty ones and the padding's


def _laid_out(plan):
    """``plan`` where it lays out comparisons (not :class:`_PCKPixels`, which has none)."""
    if isinstance(plan, _PCKPixels):
        raise RuntimeError("This PCK plan lays out runs, not comparisons (the engine's path 'runs' asked for it): "
                           "call prepare() outside a loss call for a plan with comparisons")
    return plan


@dataclass(frozen=True)
class _PCKPixels:
    """PCK's runs in a layout of runs (see :class:`uniloss._decomposition.StaticLayout`,
    ``runs_only``): one run per pixel of every joint, ``G H W``, those of the exact layout (the
    positive pixels of the visible joints, in its order) among them and the others without
    comparisons, in no joint. For the path ``"runs"`` alone: no comparison is laid out."""

    visible: Tensor  # [G] bool
    num_visible: Tensor  # 0-dim int64
    positive: Tensor  # [G, H W] bool: the exact layout's runs (positive pixels of visible joints)
    runs: Runs  # G H W runs: `ends` the comparisons' cumulative count, `real` the exact layout's runs
    run_joint: Tensor  # [G H W] joint of each run, G for the pixels that are none


class PCK(Decomposition):
    r"""Percentage of correct keypoints from heatmaps (paper sec. 4.2).

    For each visible joint, pixels within ``threshold * normalizer`` (Euclidean, inclusive) of
    the true location are positive, the rest negative. Comparisons ``c = s_pos - s_neg`` for
    every positive/negative pair of a heatmap; the joint is correct iff some positive pixel beats
    every negative one, i.e. the heatmap's argmax lies within the radius (ties among positives do
    not matter). ``g`` is the fraction of visible joints that are correct. A visible joint whose
    disc holds no pixel is always wrong.

    Shapes: ``scores`` (heatmaps) ``[n, J, H, W]`` float; ``target`` a :class:`KeypointTarget`
    (or a tuple ``(keypoints [n, J, 2], visible [n, J], normalizer [n])``). With no visible
    joint the metric is undefined (NaN) and the loss is zero.

    Memory: ``l = sum_joints P*(H*W - P)`` (a 64x64 heatmap with a 180-pixel disc has about 700k
    comparisons per joint). The default ``interpolation="chain"`` forms none of them: a joint's
    runs turn on each positive pixel's least comparison, its score minus the joint's best
    negative one (:attr:`Structure.run_least`, path ``"runs"``), ``O(n J H W)`` time and memory.
    The anchors (``interpolation="anchors"``), ``pull_per="comparison"`` and
    ``temperature_scale`` form them, block by block above ``chunk_bits``.

    Host synchronisation: inside a loss call with sampled anchors, heatmaps whose bound
    ``n J floor((H W)^2 / 4)`` on ``l`` is at most ``chunk_bits`` (default ``2**22``: e.g. 4 x 16
    heatmaps of 22x22 pixels) are laid out statically (see
    :class:`uniloss._decomposition.StaticLayout`), with no synchronisation when
    ``validate_args=False``. Larger ones keep the exact layout, which finds the disc pixels
    (``nonzero``, three calls); block by block it also plans the blocks on the host.

    Example::

        >>> import torch, uniloss
        >>> heat = torch.zeros(1, 1, 8, 8); heat[0, 0, 2, 5] = 1.0       # argmax at x=5, y=2
        >>> t = uniloss.KeypointTarget(torch.tensor([[[4.0, 2.0]]]), torch.tensor([[True]]),
        ...                            torch.tensor([2.0]))
        >>> uniloss.PCK(threshold=0.5).metric(heat, t)                 # radius 1: distance 1 ok
        tensor(1.)
    """

    def __init__(self, threshold: float = 0.5, *, good_flips: int = 1) -> None:
        self.threshold = V.check_positive("threshold", threshold)
        self.good_flips = V.check_count("good_flips", good_flips, allow_zero=False)

    def __repr__(self) -> str:
        return f"PCK(threshold={self.threshold}, good_flips={self.good_flips})"

    def check(self, scores: Tensor, target) -> None:
        _check_scores(scores)
        V.check_shape("scores", scores, (None, None, None, None), "[n, J, H, W] (heatmaps)")
        if isinstance(target, SetPairs):
            return
        if not isinstance(target, tuple) or len(target) != 3:
            raise TypeError(
                "Expected `target` to be a KeypointTarget (keypoints, visible, normalizer), but got "
                f"{type(target).__name__}"
            )
        keypoints, visible, normalizer = target
        n, j = scores.shape[:2]
        V.check_floating("target.keypoints", keypoints)
        V.check_shape("target.keypoints", keypoints, (n, j, 2), f"[{n}, {j}, 2] ((x, y) per joint)")
        V.check_tensor("target.visible", visible)
        V.check_shape("target.visible", visible, (n, j), f"[{n}, {j}]")
        V.check_binary_labels("target.visible", visible)
        if keypoints.numel() and not bool(torch.isfinite(keypoints).all()):
            hidden = bool((torch.isfinite(keypoints).all(-1) | (visible == 0)).all())
            raise ValueError(
                "Expected `target.keypoints` to hold finite values"
                + (": the NaN or Inf coordinates are all at joints marked invisible, which are not scored but "
                   "still take part in the plan; give them any finite value (torch.nan_to_num(keypoints))"
                   if hidden else f", but got {int((~torch.isfinite(keypoints)).sum())} NaN or Inf value(s)"))
        V.check_floating("target.normalizer", normalizer)
        V.check_shape("target.normalizer", normalizer, (n,), f"[{n}] (one length per sample)")
        if normalizer.numel() and not bool((normalizer > 0).all() & torch.isfinite(normalizer).all()):
            raise ValueError(f"Expected `target.normalizer` to be finite and > 0, but got {normalizer.tolist()}")
        V.check_same_device(scores=scores, keypoints=keypoints, visible=visible, normalizer=normalizer)

    def positive_mask(self, shape, target) -> Tensor:
        """``[n, J, H, W]`` bool: the pixels within the radius of each joint (any visibility)."""
        n, j, h, w = shape
        keypoints, _, normalizer = target
        device = keypoints.device
        ys = torch.arange(h, device=device, dtype=keypoints.dtype)[:, None]
        xs = torch.arange(w, device=device, dtype=keypoints.dtype)[None, :]
        dx = xs - keypoints[..., 0, None, None]
        dy = ys - keypoints[..., 1, None, None]
        radius = (self.threshold * normalizer)[:, None, None, None]
        return dx * dx + dy * dy <= radius * radius

    def prepare(self, scores: Tensor, target, generator=None):
        if isinstance(target, (SetPairs, _PCKStatic, _PCKPixels)):
            return target
        keypoints, visible, normalizer = target
        n, j, h, w = scores.shape
        pos = self.positive_mask(scores.shape, (keypoints, visible, normalizer)).reshape(n * j, h * w)
        vis = visible.reshape(-1) != 0
        layout = static_layout()
        if layout is not None and layout.runs_only and n * j * h * w <= layout.max_bits:
            if layout.claim(self, n * j * h * w, runs=True):
                return self._pixels(pos, vis, layout)
        elif layout is not None and layout.claim(self, n * j * ((h * w) ** 2 // 4), blockwise=True):
            return self._static(pos, vis, layout)
        joint_index = vis.nonzero().reshape(-1)  # flat (sample, joint) of each visible joint
        if joint_index.numel() == n * j:  # every joint visible: its rows are the heatmaps themselves
            return set_pairs(pos, joint_index, h * w, whole=True)
        return set_pairs(pos[joint_index], joint_index, h * w)

    @staticmethod
    def _pixels(pos: Tensor, vis: Tensor, layout) -> _PCKPixels:
        """The layout of runs: a run per pixel, each positive pixel of a visible joint against
        its joint's negatives, the other pixels runs of no comparison and no joint."""
        num_joints, size = pos.shape
        positive = pos & vis[:, None]
        num_pos = positive.sum(1)
        lengths = torch.where(positive, (size - num_pos)[:, None], 0).reshape(-1)
        ends = torch.cumsum(lengths, 0)
        layout.set_valid(ends[-1])
        joint = torch.arange(num_joints, device=pos.device)[:, None].expand(num_joints, size)
        run_joint = torch.where(positive, joint, num_joints).reshape(-1)
        return _PCKPixels(vis, vis.sum(), positive, Runs(None, None, ends, num_joints * size,
                          real=num_pos.sum()), run_joint)

    @staticmethod
    def _pixels_least(plan: _PCKPixels, scores: Tensor) -> Tensor:
        """``[G H W]`` :attr:`Structure.run_least` of :meth:`_pixels` (:func:`uniloss._pairs.set_least`
        of each joint's pixels, as the exact layout's :meth:`uniloss._pairs.SetPairs.least`)."""
        return set_least(scores.reshape(plan.positive.shape), plan.positive).reshape(-1)

    @staticmethod
    def _pixels_pull(plan: _PCKPixels, scores: Tensor, temperature) -> Tensor:
        """``[G H W]`` :attr:`Structure.run_pull` of :meth:`_pixels`: :meth:`_run_pull`'s terms on
        the positive pixels of visible joints, 0 elsewhere."""
        return set_pull(scores.reshape(plan.positive.shape), plan.positive, temperature).reshape(-1)

    @staticmethod
    def _static(pos: Tensor, vis: Tensor, layout) -> _PCKStatic:
        """The static layout: bit ``k`` of joint ``g`` (its bits from ``start_g``) pairs the
        ``(k - start_g) // N_g``-th positive pixel with the ``(k - start_g) % N_g``-th negative one."""
        num_joints, size = pos.shape
        device = pos.device
        pos = pos & vis[:, None]  # an invisible joint has no comparison
        order = torch.sort(pos, dim=1, descending=True, stable=True).indices  # positives first, in pixel order
        num_pos = pos.sum(1)
        num_neg = size - num_pos
        pairs = num_pos * num_neg
        ends = torch.cumsum(pairs, 0)
        num_valid = ends[-1]
        k = _arange(num_joints * (size * size // 4), device)
        joint = torch.searchsorted(ends, k, right=True).clamp_max_(num_joints - 1)
        local = k - (ends - pairs)[joint]
        width = num_neg.clamp_min(1)[joint]
        row = torch.div(local, width, rounding_mode="floor").clamp_max_(size - 1)
        col = (local - row * width + num_pos[joint]).clamp_max_(size - 1)
        rows = order.reshape(-1)
        base = joint * size
        padding = k >= num_valid
        layout.set_valid(num_valid, padding)
        # Runs: positive `row` of joint `joint` is run (positives before the joint) + row.
        first = torch.cumsum(num_pos, 0) - num_pos
        num_runs = num_joints * size + 1
        run = torch.where(padding, num_runs - 1, first[joint] + row)
        run_index = _arange(num_runs, device)
        run_joint = torch.searchsorted(torch.cumsum(num_pos, 0), run_index, right=True)
        # (the exact layout has a run per positive pixel, also in a joint without a negative pixel)
        runs = Runs(None, run, None, num_runs, real=num_pos.sum())
        if k.numel() * 8 >= PREFIX_COUNTS:  # large: the runs' ends too, for counts by prefix sums
            of = run_joint.clamp_max(num_joints - 1)
            ends_of_runs = (ends - pairs)[of] + (run_index - first[of] + 1) * num_neg[of]
            # the empty runs end where the comparisons do, the last (the padding's) at L
            runs.ends = torch.where(run_joint < num_joints, ends_of_runs, num_valid)
            runs.ends[-1] = k.numel()
        return _PCKStatic(vis, vis.sum(), base + rows[base + row], base + rows[base + col], padding, runs, run_joint)

    def comparisons(self, scores: Tensor, target) -> Tensor:
        plan = _laid_out(self.prepare(scores, target))
        if isinstance(plan, _PCKStatic):
            return static_pair_differences(scores.reshape(-1), plan.a, plan.b, plan.padding)
        return plan.comparisons(scores)

    @staticmethod
    def _block(plan: "SetPairs", scores: Tensor, start: int, stop: int) -> Tensor:
        """The comparisons of positives ``start .. stop - 1``: per joint, positive scores minus
        that joint's negative scores, ``[rows, N]`` flattened, without an index per pair."""
        pos_starts, neg_starts = plan.starts()
        flat = scores.reshape(-1)
        joint = bisect.bisect_right(pos_starts, start) - 1
        pieces = []
        while start < stop:
            end = min(stop, pos_starts[joint + 1])
            if end > start:
                sp = flat[plan.pos_flat[start:end]]
                sn = flat[plan.neg_flat[neg_starts[joint] : neg_starts[joint + 1]]]
                pieces.append((sp[:, None] - sn[None, :]).reshape(-1))
            start, joint = end, joint + 1
        if not pieces:
            return flat.new_zeros(0)
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def best(self, target) -> Tensor:
        plan = _laid_out(_prepared(self, target, (SetPairs, _PCKStatic, _PCKPixels)))
        if isinstance(plan, _PCKStatic):
            return all_true(plan.a.numel(), plan.a.device)
        return all_true(plan.num_bits(), plan.pos_flat.device)

    def structure(self, target) -> Structure:
        """One run per positive pixel: its comparisons with its joint's negatives (block by
        block on the exact layout); ``good_flips`` bits per good anchor."""
        plan = _prepared(self, target, (SetPairs, _PCKStatic, _PCKPixels))
        if isinstance(plan, _PCKPixels):
            return Structure(plan.runs, lambda zeros: self.evaluate_zeros(zeros, plan), good_flips=self.good_flips,
                             chain=lambda turn, length: self._static_chain(turn, length, plan), chain_by_runs=True,
                             run_pull=lambda scores, temperature: self._pixels_pull(plan, scores, temperature),
                             run_least=lambda scores: self._pixels_least(plan, scores))
        if isinstance(plan, _PCKStatic):
            return Structure(plan.runs, lambda zeros: self.evaluate_zeros(zeros, plan), good_flips=self.good_flips,
                             chain=lambda turn, length: self._static_chain(turn, length, plan), chain_by_runs=True)
        return Structure(plan.run_lengths(), lambda zeros: self.evaluate_zeros(zeros, plan),
                         lambda zeros: self._plus_one(zeros, plan),
                         lambda scores, start, stop: self._block(plan, scores, start, stop), self.good_flips,
                         chain=lambda turn, length: self._chain(turn, length, plan), chain_by_runs=True,
                         run_pull=lambda scores, temperature: self._run_pull(plan, scores, temperature),
                         run_least=plan.least)

    @staticmethod
    def _run_pull(plan: "SetPairs", scores: Tensor, temperature) -> Tensor:
        """``[A]`` each positive pixel's term of the pull per run (:attr:`Structure.run_pull`),
        ``log(1 + sum_n exp((s_n - s_p) / tau))`` over its joint's negatives ``n``
        (:func:`uniloss._pairs.set_pull` of the visible joints, at the positives)."""
        return set_pull(plan.rows_of(scores), plan.mask, temperature)[plan.pos_row, plan.pos_col]

    @staticmethod
    def _chain(turn: Tensor, length: int, plan: "SetPairs") -> Tensor:
        """PCK along the chain of ``interpolation="chain"`` (:attr:`Structure.chain`,
        ``chain_by_runs``): a positive pixel beats every negative from its run's turn on (at once
        without negatives), a joint is correct from its first such positive on, and PCK at point
        ``j`` counts the joints correct by then."""
        if plan.num_rows == 0:
            return torch.full((length + 1,), float("nan"), device=turn.device)
        joint_turn = torch.full((plan.num_rows,), length + 1, dtype=turn.dtype, device=turn.device)
        joint_turn.scatter_reduce_(0, plan.pos_row, turn, "amin")
        return _share_turned(joint_turn, length)

    @staticmethod
    def _static_chain(turn: Tensor, length: int, plan: Union[_PCKStatic, _PCKPixels]) -> Tensor:
        """:meth:`_chain` in the static layout: its runs are the exact layout's positive pixels,
        then empty slots and the padding's run, whose joint (``run_joint``) is none of the
        ``G`` joints; an invisible joint is never correct, and PCK counts the visible ones (NaN
        without one, as :meth:`evaluate_zeros`)."""
        num_joints = plan.visible.numel()
        joint_turn = torch.full((num_joints + 1,), length + 1, dtype=turn.dtype, device=turn.device)
        joint_turn = joint_turn.scatter_reduce_(0, plan.run_joint, turn, "amin")[:num_joints]
        return _share_turned(torch.where(plan.visible, joint_turn, length + 1), length, plan.num_visible)

    def evaluate(self, bits: Tensor, target) -> Tensor:
        plan = _laid_out(_prepared(self, target, (SetPairs, _PCKStatic, _PCKPixels)))
        if isinstance(plan, _PCKStatic):
            return self.evaluate_zeros(plan.runs.zeros(~bits, torch.float32), plan)
        if plan.num_rows == 0:
            return torch.full((bits.shape[0],), float("nan"), device=bits.device)
        ia, _ = plan.pairs()
        return self.evaluate_zeros(_segment_sum((~bits).float(), ia, plan.pos_row.numel()), plan)

    def evaluate_zeros(self, zeros: Tensor, target) -> Tensor:
        """A joint is correct iff one of its positives has no 0-bit (beats every negative)."""
        plan = _prepared(self, target, (SetPairs, _PCKStatic, _PCKPixels))
        if isinstance(plan, (_PCKStatic, _PCKPixels)):  # (a run in no joint: joint G, left out)
            ok = (zeros == 0).float()
            num_joints = plan.visible.numel()
            correct = _segment_sum(ok, plan.run_joint, num_joints + 1)[..., :num_joints] > 0
            return (correct & plan.visible).sum(-1) / plan.num_visible  # NaN without a visible joint
        if plan.num_rows == 0:
            return torch.full(zeros.shape[:-1], float("nan"), device=zeros.device)
        row_ok = (zeros == 0).float()  # a positive pixel beating every negative
        correct = _segment_sum(row_ok, plan.pos_row, plan.num_rows) > 0
        return correct.float().mean(-1)

    @staticmethod
    def _plus_one(zeros: Tensor, plan: "SetPairs") -> Tensor:
        """Closed form: positive ``i`` losing stops its joint being correct iff it was the
        joint's only positive beating every negative."""
        if plan.num_rows == 0:
            return torch.full_like(zeros, float("nan"))
        ok = (zeros == 0).float()
        ok_per_joint = _segment_sum(ok[None], plan.pos_row, plan.num_rows)[0]
        correct = (ok_per_joint > 0).float()
        still = ((ok_per_joint[plan.pos_row] - ok) > 0).float()
        return (correct.sum() - correct[plan.pos_row] + still) / plan.num_rows
