r"""A metric zoo: common metrics as UniLoss decompositions, each a one-liner.

Every function returns a :class:`uniloss.DecodedMetric` -- a decoder from
:mod:`uniloss.decoders` followed by a vectorised evaluator -- to pass to :class:`uniloss.UniLoss`
(``mean_iou`` and ``dice`` with an ``ignore_index``: a wrapper of one, on the pixels kept).
Each is exact: ``metric(scores, target)`` equals scikit-learn's (or the stated reference) on
untied scores, which the test suite checks on random inputs.

**Ties.** The bits ``[c > 0]`` count an exact tie as a wrong comparison (against the target, the
relevant item or the threshold; elsewhere toward the lower index, see :mod:`uniloss.decoders`),
and so do the anchors' values and the loss. The reported value (``metric()`` and
``UniLoss.last.metric``) of ``auroc``, ``average_precision``, ``recall_at_precision`` and
``precision_at_recall`` counts ties as scikit-learn does (a tied pair counts half; a run of tied
scores is one threshold); that of the other metrics is
the metric of the bits, so on tied scores it can differ from scikit-learn's (which breaks ties
by ``argmax``'s first index, or averages over them, as in ``ndcg_score``).

Shapes, by family:

* multi-class (``top_k_accuracy``, ``macro_f1``, ``balanced_accuracy``, ``matthews_corrcoef``):
  ``scores [n, C]`` float, ``target [n]`` int64 in ``[0, C)``;
* binary (``f_beta``, ``precision``, ``recall``): ``scores [n]`` (or any shape: every element is
  a decision, pooled, as multi-label micro averaging) float, ``target`` the same shape in {0, 1};
  with ``average="macro"``, multi-label ``[n, L]``: each label's metric, averaged over the labels;
* ranking (``auroc``, ``average_precision``, ``precision_at_k``, ``recall_at_k``, ``ndcg_at_k``,
  ``mrr``, ``recall_at_precision``, ``precision_at_recall``): ``scores [n]`` (or ``[n, 1]``) float; ``target`` a
  :class:`uniloss.decoders.RankingTarget` ``(relevance [n] >= 0, query [n] integer ids)`` or
  just ``relevance [n]`` (the batch is one query). Per-query values are averaged over the
  queries where the metric is defined (NaN if none);
* segmentation (``mean_iou``, ``dice``): ``scores [n, C, H, W]`` float, ``target [n, H, W]``
  int64 in ``[0, C)``; counts pooled over the batch's pixels;
* keypoints (``pck``): heatmaps ``[n, J, H, W]`` and a :class:`uniloss.KeypointTarget`.

Classes absent from both the target and the prediction are left out of macro averages, as
scikit-learn does when ``labels`` is not given; an undefined ratio (``0/0``) counts as 0, as
scikit-learn's default ``zero_division`` does.

Values are computed in float64 for float64 scores and in float32 otherwise (counts in int64;
``macro_f1``'s class-weighted counts in float64, in float32 on MPS), so float32 scores never need
float64 on a device that lacks it (Apple MPS).

Example::

    >>> import torch, uniloss
    >>> loss_fn = uniloss.UniLoss(uniloss.zoo.macro_f1(num_classes=3))
    >>> scores = torch.randn(16, 3, requires_grad=True)
    >>> loss = loss_fn(scores, torch.randint(0, 3, (16,)))
    >>> loss.backward()
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable, Dict, Optional, Tuple, cast

import torch
from torch import Tensor

from . import _validation as V
from ._decoded import DecodedMetric
from ._decomposition import Decomposition, Structure
from ._limits import current_limits
from ._metrics import PCK
from ._pairs import at_or_above, counts, least_differences, softmax_pull
from ._wrapped import WrappedDecomposition, WrappedPlan
from .decoders import Argmax, PixelArgmax, Ranking, RankingTarget, SpatialArgmax, Threshold, TopK, sort_within

_DEFAULT_DTYPE = torch.float32  # values' dtype for a plan without one (a custom decoder's)

__all__ = [
    "top_k_accuracy",
    "macro_f1",
    "balanced_accuracy",
    "matthews_corrcoef",
    "f_beta",
    "precision",
    "recall",
    "auroc",
    "average_precision",
    "precision_at_k",
    "recall_at_k",
    "ndcg_at_k",
    "mrr",
    "recall_at_precision",
    "precision_at_recall",
    "mean_iou",
    "dice",
    "pck",
]


class _Evaluator:
    """An evaluator with its options, named for ``repr``: ``macro_f1(num_classes=3)``. It computes
    its values in ``dtype`` (float32 when called as a plain ``(decoded, target)`` evaluator)."""

    def __init__(self, fn: Callable[..., Tensor], name: str, **options: Any) -> None:
        self.fn, self.__name__, self.options = fn, name, options
        self.counts = _COUNTS.get(fn)  # the same metric of the class counts, where it is one

    def __call__(self, decoded: Any, target: Any, dtype: torch.dtype = _DEFAULT_DTYPE) -> Tensor:
        return self.fn(decoded, target, dtype=dtype, **self.options)

    def __repr__(self) -> str:
        return f"{self.__name__}({', '.join(f'{k}={v!r}' for k, v in self.options.items())})"


class _ZooMetric(DecodedMetric):
    """A :class:`DecodedMetric` whose evaluator computes in the plan's ``dtype`` (float64 for
    float64 scores, float32 otherwise; see :func:`uniloss.decoders.values_dtype`)."""

    def _values(self, decoded: Any, plan: Any, t: int) -> Tensor:
        return self.evaluator(decoded, plan.target, getattr(plan, "dtype", _DEFAULT_DTYPE))

    def _run_weights(self, plan: Any) -> Optional[Tensor]:
        """A metric of the class counts: each run's change from ``[S, C]`` counts (a right row:
        its label one fewer right and predicted, its highest other class one more predicted; a
        wrong row the reverse) instead of ``S`` decoded outputs, or where there are fewer, once
        per (right or wrong, label, other class), ``2 C^2`` rows, looked up; ``None`` above
        ``weight_counts`` counts (:mod:`uniloss._limits`)."""
        counts = getattr(self.evaluator, "counts", None)
        if counts is None:
            return super()._run_weights(plan)
        with torch.no_grad():
            pair = self.decoder.toggled(plan)
            if pair is None:
                return None
            labels, c, right, other = plan.labels, plan.num_classes, plan.right, plan.ranked[:, 0]
            w = self._class_weights(labels.device)  # a row counts its label's weight (1 without)
            kind = torch.long if w is None else w.dtype
            one = torch.ones((), dtype=kind, device=labels.device).expand(labels.numel()) if w is None else w[labels]
            actual = torch.zeros(c, dtype=kind, device=labels.device).index_add_(0, labels, one)
            tp_now = torch.zeros(c, dtype=kind, device=labels.device).index_add_(0, labels, one * right)
            predicted_now = torch.zeros(c, dtype=kind, device=labels.device).index_add_(0, pair[0], one)
            grouped = 2 * c * c < labels.numel()
            if min(2 * c * c, labels.numel()) * c > current_limits().weight_counts:
                return None
            if grouped:  # row r * C^2 + y * C + k: a right (r = 1) or wrong row of label y, other class k
                code = torch.arange(2 * c * c, device=labels.device)
                is_right, label, k = code >= c * c, (code // c) % c, code % c
                now, then = torch.where(is_right, label, k), torch.where(is_right, k, label)
            else:
                is_right, label, (now, then) = right, labels, pair
            rows = torch.arange(label.numel(), device=labels.device)
            unit = 1 if w is None else w[label]  # the toggled row's count
            tp = tp_now.expand(label.numel() + 1, c).clone()  # the last row: now
            tp[rows, label] -= (is_right.long() * 2 - 1) * unit
            predicted = predicted_now.expand(label.numel() + 1, c).clone()
            predicted[rows, now] -= unit
            predicted[rows, then] += unit
            values = counts(tp, predicted, actual, plan.dtype)
            change = (values[:-1] - values[-1]).abs()
            return change[right.long() * (c * c) + labels * c + other] if grouped else change

    def _class_weights(self, device: torch.device) -> Optional[Tensor]:
        """``[C]`` the evaluator's ``class_weights`` (a row counts its label's) in the weighted
        counts' dtype (:func:`_weighted_dtype`), or ``None``."""
        w = getattr(self.evaluator, "options", {}).get("class_weights")
        return None if w is None else w.to(device=device, dtype=_weighted_dtype(device))

    def structure(self, target: Any) -> Optional[Structure]:
        """:meth:`DecodedMetric.structure`, and for a metric of the class counts decoded with one
        run per row (``Argmax``/``PixelArgmax`` with ``pairs="target"``, where :meth:`_chain`
        gives the chain in closed form) what the path ``"runs"`` needs
        (:attr:`uniloss.Structure.run_least`): each row's least comparison (its label's score
        minus the best other class's), its pull per run (cross-entropy of the scores over the
        temperature) and the metric from the runs' counts of wrong comparisons (a row decodes to
        its label iff it has none, else to its best other class, as :meth:`Argmax.decode`), so the
        engine forms ``[G]`` comparisons instead of ``[G, C - 1]``, with the same loss."""
        structure = super().structure(target)
        if structure is None or structure.chain is None:
            return structure
        plan = target

        def least(scores: Tensor) -> Tensor:  # (the rows of [n, C, *spatial] scores, pixel-major: a copy)
            return least_differences(scores.movedim(1, -1).reshape(-1, scores.shape[1]), plan.labels)

        return dataclasses.replace(structure, evaluate_zeros=lambda zeros: self._of_zeros(plan, zeros),
                                   run_pull=lambda scores, temperature: softmax_pull(scores, plan.labels, temperature),
                                   run_least=least)

    def _of_zeros(self, plan: Any, zeros: Tensor) -> Tensor:
        """``[t]`` the metric where row ``s`` has ``zeros[:, s]`` wrong comparisons (:attr:`uniloss.
        Structure.evaluate_zeros`): the evaluator's values of the labels decoded from them
        (:meth:`uniloss.decoders.Argmax.decode_losses`)."""
        decoder = self.decoder
        assert isinstance(decoder, Argmax)  # (see _chain: the structure gives this for Argmax alone)
        return self._values(decoder.decode_losses(zeros, plan), plan, zeros.shape[0])

    def _chain(self, plan: Any) -> Optional[Callable[..., Tensor]]:
        """For a metric of the class counts decoded with one run per row (``Argmax``/
        ``PixelArgmax`` with ``pairs="target"``): its values along the chain of
        ``interpolation="chain"`` in closed form (:meth:`_chain_values`)."""
        if (getattr(self.evaluator, "counts", None) is None or not isinstance(self.decoder, Argmax)
                or self.decoder.pairs != "target"):
            return None
        return lambda turn, length: self._chain_values(plan, turn, length)

    def _chain_values(self, plan: Any, turn: Tensor, length: int) -> Tensor:
        """``[length + 1]`` the metric at every point of the chain (:attr:`uniloss.Structure.chain`,
        ``chain_by_runs``).

        A row decodes to its label once all its ``C - 1`` comparisons are right and to its
        highest-scoring other class before, so along the chain it turns right at one point, its
        run's ``turn``: its label gains a true positive and a prediction, its other class loses a
        prediction. The rows in the order of that point and a cumulative sum give the class counts
        after each of the ``S`` turns (``[S + 1, C]``, in blocks of at most ``chain_elements``
        counts), and the counts give the values; the chain holds each value until the next turn.
        The turns are distinct but for the runs whole from the start (0), so the sort is a count
        of the turns at each point and its cumulative sum (no sort: ``O(S + length)``)."""
        of_counts = getattr(self.evaluator, "counts")
        with torch.no_grad():
            labels, c, other = plan.labels, plan.num_classes, plan.ranked[:, 0]
            n, device = labels.numel(), labels.device
            one = torch.ones((), dtype=torch.long, device=device).expand(n)
            w = self._class_weights(device)  # a row counts its label's weight (1 without)
            kind = torch.long if w is None else w.dtype
            turned = torch.zeros(length + 1, dtype=torch.long, device=device).index_add_(0, turn, one).cumsum_(0)
            first = turn == 0
            place = torch.where(first, first.long().cumsum(0), turned.index_select(0, turn)) - 1  # each row's place by turn
            order = torch.empty_like(place).scatter_(0, place, torch.arange(n, device=device))
            label, other = labels.index_select(0, order), other.index_select(0, order)  # (index_select: a gather's speed)
            count = one if w is None else w[label]  # (in the turns' order, as label and other)
            actual = torch.zeros(c, dtype=kind, device=device).index_add_(0, label, count)
            tp = torch.zeros(c, dtype=kind, device=device)  # S_0: every row wrong
            predicted = torch.zeros(c, dtype=kind, device=device).index_add_(0, other, count)
            values = [of_counts(tp[None], predicted[None], actual, plan.dtype)]
            classes = torch.arange(c, device=device)
            step = max(1, current_limits().chain_elements // (2 * c))
            for start in range(0, n, step):
                stop = min(n, start + step)
                hit, lost = label[start:stop, None] == classes, other[start:stop, None] == classes
                if w is not None:  # each turned row counts its label's weight
                    hit, lost = hit * w[label[start:stop], None], lost * w[label[start:stop], None]
                gained = hit.cumsum(0)  # each turned row: its label
                tps = tp + gained
                predicteds = predicted + gained - lost.cumsum(0)  # not its other class
                values.append(of_counts(tps, predicteds, actual, plan.dtype))
                tp, predicted = tps[-1], predicteds[-1]
            return torch.cat(values).index_select(0, turned)  # (at point j: the rows turned by j)


def _metric(decoder, fn: Callable[..., Tensor], name: str, **options: Any) -> DecodedMetric:
    return _ZooMetric(decoder, _Evaluator(fn, name, **options))


class _RankingWithTies(_ZooMetric):
    """A ranking metric whose reported value, :meth:`metric` and ``UniLoss.last.metric``
    (:meth:`batch_metric`), counts tied scores as scikit-learn does, computed from the scores by
    ``tied(scores [n], target, dtype)``. The bits, hence the anchors' values and the loss, count a
    tie as the relevant item below (see :mod:`uniloss.decoders`); without ties the two agree (to the
    rounding of a sum taken in another order)."""

    def __init__(self, decoder, evaluator: "_Evaluator", tied: Callable[..., Tensor],
                 gains: Optional[Callable[[Any, Tensor], Tuple[Tensor, Tensor]]] = None) -> None:
        super().__init__(decoder, evaluator)
        self.tied = tied
        self.gains = gains

    def structure(self, target: Any) -> Optional[Structure]:
        """:meth:`DecodedMetric.structure`, with the chain's gains in closed form where the metric
        gives them (``gains(plan, v)``: :attr:`uniloss.Structure.chain_gains`, from the plan, the
        scores it was prepared with and the relaxed agreements ``v``; AUROC, AP and the operating
        points of the precision-recall curve). The engine otherwise evaluates the chain by
        decoding ``[points, l]`` configurations (AUROC at 128 scores, 2,247 pairs: 10.2 ms a call on
        a CPU core against 2.7 ms)."""
        structure = super().structure(target)
        gains = self.gains
        if structure is None or gains is None or getattr(target, "scores", None) is None:
            return structure
        return dataclasses.replace(structure, chain_gains=lambda v: gains(target, v))

    def batch_metric(self, target: Any) -> Optional[Tensor]:
        scores = getattr(target, "scores", None)
        return None if scores is None else self.tied(scores, target.target, target.dtype)

    def metric(self, scores: Tensor, target: Any) -> Tensor:
        with torch.no_grad():
            plan = self.prepare(scores, target)
            return self.tied(scores.detach().reshape(-1), plan.target, plan.dtype)


def _class_sizes(plan: Any) -> Tuple[Tensor, Tensor, Tensor, torch.dtype]:
    """A binary ranking plan's ``(relevant [n] bool, P [queries], N [queries], dtype)``: each
    query's relevant and irrelevant items, counted in float64 on a CPU (float32 elsewhere), the
    dtype of the chain's gains (as :class:`uniloss.AveragePrecision`'s); no host synchronisation."""
    target = plan.target
    assert target.query is not None  # a plan's target: the query filled in
    device = plan.a.device
    dtype = torch.float64 if device.type == "cpu" else torch.float32
    relevant = target.relevance > 0
    share = relevant.to(dtype)
    positives = torch.zeros(plan.num_queries, dtype=dtype, device=device).index_add_(0, target.query, share)
    negatives = torch.zeros(plan.num_queries, dtype=dtype, device=device).index_add_(0, target.query, 1.0 - share)
    return relevant, positives, negatives, dtype


def _auroc_gains(plan: Any) -> Tuple[Tensor, Tensor]:
    """``(start, gains [l])`` of :func:`auroc`'s chain (:attr:`uniloss.Structure.chain_gains`).
    AUROC is linear in the bits, a query's right pairs over its ``P_q N_q`` averaged over the ``Q``
    queries with both classes, for every configuration (the decoder counts a positive's negatives
    above it by its wrong comparisons, consistent or not), so the gains do not depend on the
    chain's order: 0 (every pair wrong), and each pair ``1 / (Q P_q N_q)`` (0 on a static layout's
    padding)."""
    _, positives, negatives, dtype = _class_sizes(plan)
    pairs = positives * negatives
    queries = (pairs > 0).sum()
    gains = 1.0 / (pairs.clamp_min(1.0) * queries.clamp_min(1))[plan.target.query[plan.a]]
    if plan.padding is not None:
        gains = gains.masked_fill(plan.padding, 0.0)
    return torch.zeros((), dtype=dtype, device=gains.device), gains


def _average_precision_gains(plan: Any) -> Tuple[Tensor, Tensor]:
    """``(start, gains [l])`` of :func:`average_precision`'s chain, per query as
    :meth:`uniloss.AveragePrecision._chain_gains_by_scores` gives one ranking's (the relaxed bits
    ``sigmoid(s_a - s_b)`` order each positive's pairs by its negatives' scores, ascending, and
    each column of ``m``-th steps by the positives' scores, descending; ties by index), over the
    ``Q`` queries with a relevant item, whose AP the metric averages: a pair of a positive at place
    ``k`` among its query's positives and a negative ``v``-th from the top of its query's
    negatives gains ``(k / (k + v - 1) - k / (k + v)) / (P_q Q)``, from ``sum_q sum_k k / (k + N_q)
    / (P_q Q)`` (every negative above every positive). The plan holds the scores it was
    prepared with (the order)."""
    scores = plan.scores
    relevant, positives, negatives, dtype = _class_sizes(plan)
    query = plan.target.query
    # each item's 0-based place in its query's class: positives by score descending, negatives ascending
    place = sort_within(torch.where(relevant, -scores, scores)[None], query * 2 + (~relevant).long())[0].to(dtype)
    queries = (positives > 0).sum().clamp_min(1)
    k = place[plan.a] + 1.0  # 1-based among the positives
    q = k + (negatives[query[plan.b]] - place[plan.b])  # k + v, v = N - m the count before the step
    gains = k / (q * (q - 1.0) * positives[query[plan.a]]) / queries
    if plan.padding is not None:
        gains = gains.masked_fill(plan.padding, 0.0)
    above = (place + 1.0) / (place + 1.0 + negatives[query]) / positives[query].clamp_min(1.0)
    start = torch.where(relevant, above, 0.0).sum() / queries
    return start, gains


class _RanksOfRelevant(_ZooMetric):
    """A ranking metric of 0/1 relevance that sums, per query, a function of its relevant items'
    ranks, ``sum_i F(i, r_(i))`` over its relevant items in rank order (``i`` 0-based), averaged
    over queries (precision@k, recall@k, MRR, NDCG): its chain's gains in closed form
    (:func:`_ranks_of_relevant_gains`), where the engine had decoded ``[257, l]`` configurations
    and averaged the gains over segments. ``F = weight_q * term(i, r)``: ``term(i, r, k)`` per
    item (floating tensors), ``weight(positives [Q], k, n)`` per query, from its number of
    relevant items, computed once a call (``n`` the items); ``every_query``: the average is over
    every query (precision@k), else over the queries with a relevant item."""

    def __init__(self, decoder, evaluator: "_Evaluator", term: Callable[..., Tensor],
                 weight: Callable[..., Tensor], every_query: bool) -> None:
        super().__init__(decoder, evaluator)
        self.term, self.weight, self.every_query = term, weight, every_query
        self.k = evaluator.options.get("k")

    def structure(self, target: Any) -> Optional[Structure]:
        structure = super().structure(target)
        if structure is None or not getattr(target, "binary", False):
            return structure
        k, term, weight = self.k, self.term, self.weight
        return dataclasses.replace(structure, chain_gains=lambda v: _ranks_of_relevant_gains(
            target, v, lambda i, r: term(i, r, k), lambda positives, n: weight(positives, k, n), self.every_query))


def _chain_steps(plan: Any, v: Tensor, negatives: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The steps of the chain of a ranking decoded by ``Ranking`` from 0/1 relevance
    (:func:`_ranks_of_relevant_gains` derives them): ``(order [l], q [l], m [l], i [l])``, the
    comparisons in the chain's order (``v`` descending, ties by index, a static layout's padding
    last), and for each comparison its query, the wrong comparisons ``m`` its relevant item has
    left once it comes right, and the place ``i`` (0-based) among its query's relevant items
    sorted by their wrong comparisons whose count it lowers from ``m + 1`` to ``m`` (int64).
    ``negatives``: each query's irrelevant items (:func:`_class_sizes`)."""
    key = v if plan.padding is None else v.masked_fill(plan.padding, -1.0)  # (v in [0, 1]: the padding last)
    order = torch.argsort(key, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=v.device))
    q = plan.target.query.index_select(0, plan.a)
    m = negatives.long().index_select(0, q) - 1 - sort_within(rank[None], plan.a)[0]  # wrong ones left once it is right
    n = plan.target.query.numel()
    i = sort_within(rank[None], q * (n + 1) + m)[0]  # (the padding, last, below every real one)
    return order, q, m, i


def _ranks_of_relevant_gains(plan: Any, v: Tensor, term: Callable[..., Tensor], weight: Callable[..., Tensor],
                             every_query: bool) -> Tuple[Tensor, Tensor]:
    """``(start, gains [l])`` of the chain (:attr:`uniloss.Structure.chain_gains`) of a metric
    ``mean_q weight_q sum_i term(i, r_(i))`` over each query's relevant items in rank order, decoded by
    ``Ranking`` from 0/1 relevance: a relevant item with ``z`` wrong comparisons (irrelevant items
    above it) is placed by ``(z, index)`` among its query's relevant items, ``i``-th at rank
    ``r_(i) = z_(i) + i``.

    Along the chain (``v`` descending, ties by index, a static layout's padding last) each
    comparison that comes right takes its relevant item from ``z = m + 1`` wrong comparisons to
    ``m``, ``m = N_q - 1 -`` its place among its item's comparisons by the chain's order. Of the
    sorted ``z`` this lowers the first ``m + 1``, at place ``i = `` the number of the query's
    relevant items already at ``m`` or below, which is the comparison's place by the chain's order
    among the query's comparisons of the same ``m`` (one per relevant item): the rank ``m + 1 + i``
    becomes ``m + i``, a gain of ``weight_q (term(i, m + i) - term(i, m + 1 + i))``. At the start (every comparison
    wrong, ``z = N_q``) the ``i``-th relevant item is at ``N_q + i``. Five sorts of ``l`` (the
    chain's order, two per :func:`uniloss.decoders.sort_within`), no host synchronisation."""
    relevant, positives, negatives, dtype = _class_sizes(plan)
    query, n = plan.target.query, relevant.numel()
    _, q, m, i_steps = _chain_steps(plan, v, negatives)
    i = i_steps.to(dtype)
    counted = (positives + negatives > 0) if every_query else positives > 0
    per_query = weight(positives, n) / counted.sum().clamp_min(1)  # [Q]: each query's share of the mean
    gains = (term(i, m.to(dtype) + i) - term(i, m.to(dtype) + 1.0 + i)) * per_query.index_select(0, q)
    if plan.padding is not None:
        gains = gains.masked_fill(plan.padding, 0.0)
    place = sort_within(torch.arange(n, device=v.device)[None], query * 2 + (~relevant).long())[0].to(dtype)
    at_start = term(place, negatives.index_select(0, query) + place) * per_query.index_select(0, query)
    return torch.where(relevant, at_start, 0.0).sum(), gains


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` (floating tensors), 0 where ``den == 0`` (scikit-learn's ``zero_division``
    default)."""
    return torch.where(den > 0, num / den.clamp_min(1e-30), torch.zeros_like(num))


def _mean_where(values: Tensor, defined: Tensor) -> Tensor:
    """Mean over the last dimension of the defined entries; NaN where none is."""
    count = defined.sum(-1)
    total = torch.where(defined, values, torch.zeros_like(values)).sum(-1)
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))


# --------------------------------------------------------------------------- multi-class


def _weighted_dtype(device: torch.device) -> torch.dtype:
    """The dtype of weighted class counts: float64, float32 where the device has no float64 (MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _class_counts(pred: Tensor, target: Tensor, num_classes: int,
                  class_weights: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """Per-class counts of ``pred [t, N]`` against ``target [N]``: ``(tp [t, C], predicted [t, C],
    actual [C])`` as int64, from one count of the ``t`` confusion matrices' codes
    ``row * C^2 + pred * C + target`` (int32, about twice as fast as int64 on CPU;
    :func:`uniloss._pairs.counts`: no synchronisation, a fixed size). ``class_weights`` ``[C]``:
    each sample counts its target class's weight instead of 1 (float counts, :func:`_weighted_dtype`)."""
    t, c = pred.shape[0], num_classes
    code = pred.reshape(t, -1).int() * c  # (a Python number: a tensor made from one is a copy to the device)
    code += target.reshape(1, -1).int()
    code += torch.arange(0, t * c * c, c * c, dtype=torch.int32, device=pred.device)[:, None]
    code = code.reshape(-1)
    confusion = counts(code, t * c * c).reshape(t, c, c)
    if class_weights is not None:  # confusion[row, predicted class, target class]
        confusion = confusion * class_weights.to(device=pred.device, dtype=_weighted_dtype(pred.device))
    return confusion.diagonal(dim1=1, dim2=2), confusion.sum(2), confusion[0].sum(0)


def _macro_f1_counts(tp: Tensor, predicted: Tensor, actual: Tensor, dtype: torch.dtype) -> Tensor:
    support = predicted + actual  # 2 tp + fp + fn
    return _mean_where(_ratio((2 * tp).to(dtype), support.to(dtype)), support > 0)


def _mean_iou_counts(tp: Tensor, predicted: Tensor, actual: Tensor, dtype: torch.dtype) -> Tensor:
    union = predicted + actual - tp  # tp + fp + fn
    return _mean_where(_ratio(tp.to(dtype), union.to(dtype)), union > 0)


def _balanced_accuracy_counts(tp: Tensor, predicted: Tensor, actual: Tensor, dtype: torch.dtype) -> Tensor:
    return _mean_where(_ratio(tp.to(dtype), actual.expand_as(tp).to(dtype)), (actual > 0).expand_as(tp))


def _matthews_counts(tp: Tensor, predicted: Tensor, actual: Tensor, dtype: torch.dtype) -> Tensor:
    # The covariances exactly in int64 (no overflow below 3e9 samples), then in `dtype`.
    s = actual.sum()
    cov_yp = (tp.sum(-1) * s - (predicted * actual).sum(-1)).to(dtype)
    cov_pp = (s * s - (predicted * predicted).sum(-1)).to(dtype)
    cov_yy = (s * s - (actual * actual).sum()).to(dtype)
    den = cov_pp * cov_yy
    return torch.where(den > 0, cov_yp / den.clamp_min(1e-30).sqrt(), torch.zeros_like(cov_yp))


def _macro_f1(pred: Tensor, target: Tensor, num_classes: int, dtype: torch.dtype,
              class_weights: Optional[Tensor] = None) -> Tensor:
    return _macro_f1_counts(*_class_counts(pred, target, num_classes, class_weights), dtype)


def _mean_iou(pred: Tensor, target: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    return _mean_iou_counts(*_class_counts(pred, target, num_classes), dtype)


def _balanced_accuracy(pred: Tensor, target: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    return _balanced_accuracy_counts(*_class_counts(pred, target, num_classes), dtype)


def _matthews(pred: Tensor, target: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    return _matthews_counts(*_class_counts(pred, target, num_classes), dtype)


# The multi-class evaluators that are functions of the class counts ``(tp [t, C], predicted
# [t, C], actual [C])`` alone, with those functions (see _Evaluator and _ZooMetric._run_weights).
_COUNTS = {_macro_f1: _macro_f1_counts, _mean_iou: _mean_iou_counts,
           _balanced_accuracy: _balanced_accuracy_counts, _matthews: _matthews_counts}


def _top_k_hit(member: Tensor, target: Tensor, dtype: torch.dtype) -> Tensor:
    t = member.shape[0]
    return member.gather(2, target.long().reshape(1, -1, 1).expand(t, -1, 1)).reshape(t, -1).to(dtype).mean(-1)


def _check_classes(num_classes: object) -> int:
    n = V.check_count("num_classes", num_classes, allow_zero=False)
    if n < 2:  # one class: every argmax is right, the metric is constant and the loss has no gradient
        raise ValueError(f"Expected `num_classes` >= 2 (with one class every prediction is right and the loss "
                         f"has no gradient), but got {n}")
    return n


def top_k_accuracy(k: int = 5, *, num_classes: Optional[int] = None) -> DecodedMetric:
    r"""Top-k accuracy: the fraction of samples whose target is among their ``k`` best classes.

    :math:`\frac{1}{n}\sum_i [\,|\{j : s_{ij} > s_{i y_i}\}| < k\,]`. Decoder
    ``TopK(k, pairs="target")``: ``C-1`` comparisons per sample (the target against every other
    class, :class:`uniloss.MulticlassAccuracy`'s layout; ``k=1`` is exactly that decomposition).
    Reference: ``sklearn.metrics.top_k_accuracy_score``.

    Shapes: ``scores [n, C]`` float, ``target [n]`` int64 in ``[0, C)``. With ``k >= C`` every
    sample is a hit: the metric is 1, the loss has no gradient, and the first call warns (as
    scikit-learn does).

    Example::

        >>> import torch, uniloss
        >>> scores = torch.tensor([[0.1, 0.5, 0.4], [0.7, 0.2, 0.1]])
        >>> uniloss.zoo.top_k_accuracy(2).metric(scores, torch.tensor([2, 2]))
        tensor(0.5000)
    """
    dec = TopK(k, pairs="target", num_classes=None if num_classes is None else _check_classes(num_classes))
    return _TopKAccuracy(dec, _Evaluator(_top_k_hit, f"top_{dec.k}_accuracy"))


class _TopKAccuracy(_ZooMetric):
    """:func:`top_k_accuracy`: a row is a hit iff fewer than ``k`` of its ``C - 1`` comparisons
    (its label's score minus each other class's) are wrong, so the metric is a function of the
    runs' counts of wrong comparisons (``evaluate_zeros``), and along the chain a row turns at its
    ``(C - k)``-th comparison to come right, its ``k``-th least agreement (:meth:`_chain_of_ranks`):
    the chain in closed form, ``O(l)`` after the engine's sort, where the engine had decoded
    ``[points, n, C]`` masks at 257 points."""

    def __init__(self, decoder: TopK, evaluator: "_Evaluator") -> None:
        super().__init__(decoder, evaluator)
        self.k = decoder.k

    def check(self, scores: Tensor, target: Any) -> None:
        super().check(scores, target)
        if scores.dim() == 2 and self.k >= scores.shape[1] and not getattr(self, "_warned_k", False):
            self._warned_k = True
            warnings.warn(f"top_k_accuracy({self.k}) of scores with {scores.shape[1]} classes: every sample is a "
                          "hit, so the metric is 1 and the loss has no gradient (k must be below the number of "
                          "classes to train)", UserWarning, stacklevel=V.user_stacklevel())

    def structure(self, target: Any) -> Optional[Structure]:
        structure = super().structure(target)
        if structure is None:
            return structure
        plan, k = target, self.k
        return dataclasses.replace(
            structure, evaluate_zeros=lambda zeros: (zeros < k).to(plan.dtype).mean(-1),
            chain=lambda rank: self._chain_of_ranks(plan, rank))

    def _chain_of_ranks(self, plan: Any, rank: Tensor) -> Tensor:
        """``[l + 1]`` the metric at every point of the chain (:attr:`uniloss.Structure.chain`):
        row ``g`` is a hit from the point after its ``C - k``-th smallest ``rank`` (``need`` right
        comparisons leave at most ``k - 1`` wrong; from the start where ``k >= C``), so the values
        are the share of rows turned by each point: a count of the turns and a cumulative sum."""
        with torch.no_grad():
            n, width = plan.labels.numel(), plan.num_classes - 1
            need = width - self.k + 1
            l = rank.numel()
            if need <= 0:
                turn = torch.zeros(n, dtype=torch.long, device=rank.device)
            else:
                turn = rank.view(n, width).kthvalue(need, dim=1).values + 1
            one = torch.ones((), dtype=plan.dtype, device=rank.device).expand(n)
            turned = torch.zeros(l + 1, dtype=plan.dtype, device=rank.device).index_add_(0, turn, one)
            return turned.cumsum(0) / max(n, 1)


def macro_f1(num_classes: int, *, pairs: str = "target", class_weights: Optional[Tensor] = None) -> DecodedMetric:
    r"""Macro-averaged F1 of multi-class predictions ``argmax_j s_ij``.

    :math:`F_1 = \mathrm{mean}_c\, \frac{2\,TP_c}{2\,TP_c + FP_c + FN_c}` over the classes present
    in the target or the prediction. Decoder ``Argmax(pairs)``: ``"target"`` (default) compares
    each sample's target with the other classes, ``C-1`` per sample; a wrong prediction takes its
    class from the current scores, so the metric stays exact. ``"all"`` compares every pair,
    ``C(C-1)/2`` per sample, so the class of a wrong prediction (a false positive) is a variable
    too -- but it trains worse: on imbalanced digits it reached 73% macro-F1 where ``"target"``
    reached 99% (``benchmarks/zoo_training.py``, 0.14: part of the chain's push likely moves the
    wrong classes' scores among themselves, and without runs the pull holds the wrong classes in
    their current order; see ``docs/custom-metrics.md``).
    Reference: ``sklearn.metrics.f1_score(average="macro")``.

    ``class_weights`` ``[num_classes]`` (positive): each sample counts its target class's weight
    in ``TP``, ``FP`` and ``FN`` instead of 1 (scikit-learn's ``sample_weight=class_weights[y]``),
    e.g. a class's share in the data the model will be scored on over its share in the training
    data, for macro-F1 under that class prior. Measured on imbalanced MNIST and Fashion-MNIST
    scored on their balanced test splits (``docs/results/metric-wins/README.md``, session 35):
    those weights recover 0.3-4.3 points of macro-F1 over the plain metric at batch 128, where
    UniLoss stays 0.7-2.4 points behind cross-entropy with class weights: a batch of 128 holds
    the rarest classes less than once. In batches of 512 it is level with it on Fashion-MNIST
    (+0.10 ± 0.45) and 0.59 ± 0.56 behind on MNIST. Where the class prior shifts, use batches
    that hold the rare classes, or class weights in the usual loss (or ``balanced_accuracy``,
    level with it there).

    Shapes: ``scores [n, num_classes]`` float, ``target [n]`` int64 in ``[0, num_classes)``.

    Example::

        >>> import torch, uniloss
        >>> scores = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 2.0, 0.0]])
        >>> round(float(uniloss.zoo.macro_f1(3).metric(scores, torch.tensor([0, 1, 2]))), 4)  # (1 + 2/3 + 0) / 3
        0.5556
    """
    n = _check_classes(num_classes)
    if class_weights is None:
        return _metric(Argmax(pairs, num_classes=n), _macro_f1, "macro_f1", num_classes=n)
    w = torch.as_tensor(class_weights)
    if w.shape != (n,) or not w.is_floating_point() or not bool((w > 0).all()) or not bool(torch.isfinite(w).all()):
        raise ValueError(f"Expected `class_weights` to be a floating tensor of {n} positive finite weights, one per "
                         f"class, but got {tuple(w.shape)} {w.dtype}")
    return _metric(Argmax(pairs, num_classes=n), _macro_f1, "macro_f1", num_classes=n, class_weights=w)


def balanced_accuracy(num_classes: int, *, pairs: str = "target") -> DecodedMetric:
    r"""Balanced accuracy: the mean over classes present in the target of each class's recall.

    :math:`\mathrm{mean}_{c : n_c > 0}\, TP_c / n_c`. Depends only on whether each sample is
    right, so the default decoder ``Argmax(pairs="target")`` needs ``C-1`` comparisons per sample.
    Reference: ``sklearn.metrics.balanced_accuracy_score``.

    As a loss, the batch's balanced accuracy weighs a sample by one over its class's count in the
    batch: a class expected less than once a batch is weighted only when it appears, so with small
    batches (16-32 on imbalanced MNIST) it corrects the class prior less than class-weighted
    cross-entropy and, like it, wants a lower learning rate; batches of 128 or more avoid both
    (``docs/results/metric-wins/batch-size.md``). With small batches, a memory of recent samples
    gives the class counts of a larger set: ``UniLoss(CrossBatchMemory(balanced_accuracy(C),
    size=128 - batch))`` (:class:`uniloss.distributed.CrossBatchMemory`), at the recipe's
    learning rate, was level with class-weighted cross-entropy at its best (8x and 4x lower) rate at
    batches of 16-32; the memory's average over more rows gives the smaller step
    (``docs/results/metric-wins/small-batch-memory.md``).

    Shapes: ``scores [n, num_classes]`` float, ``target [n]`` int64 in ``[0, num_classes)``.

    Example::

        >>> import torch, uniloss
        >>> scores = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
        >>> float(uniloss.zoo.balanced_accuracy(2).metric(scores, torch.tensor([0, 0, 1])))
        0.25
    """
    n = _check_classes(num_classes)
    return _metric(Argmax(pairs, num_classes=n), _balanced_accuracy, "balanced_accuracy", num_classes=n)


def matthews_corrcoef(num_classes: int, *, pairs: str = "target") -> DecodedMetric:
    r"""Matthews correlation coefficient (multi-class, Gorodkin's R_K) of ``argmax`` predictions.

    With ``t_k`` true and ``p_k`` predicted counts of class ``k``, ``c`` correct predictions and
    ``s`` samples: :math:`\frac{c s - \sum_k p_k t_k}{\sqrt{(s^2 - \sum_k p_k^2)(s^2 - \sum_k
    t_k^2)}}`, 0 where the denominator is 0. Decoder ``Argmax(pairs)``: ``C-1`` comparisons per
    sample by default, ``C(C-1)/2`` with ``pairs="all"`` (see :func:`macro_f1` for why the default
    prunes). Reference: ``sklearn.metrics.matthews_corrcoef``.

    Shapes: ``scores [n, num_classes]`` float, ``target [n]`` int64 in ``[0, num_classes)``.

    Example::

        >>> import torch, uniloss
        >>> scores = torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 2.0], [2.0, 0.0]])
        >>> float(uniloss.zoo.matthews_corrcoef(2).metric(scores, torch.tensor([0, 1, 1, 0])))
        1.0
    """
    n = _check_classes(num_classes)
    return _metric(Argmax(pairs, num_classes=n), _matthews, "matthews_corrcoef", num_classes=n)


# --------------------------------------------------------------------------- binary


def _binary_counts(pred: Tensor, target: Tensor, dtype: torch.dtype, average: str) -> Tuple[Tensor, Tensor, Tensor]:
    """``(tp, predicted, actual)``: ``[t]`` counts pooled over every element (``"micro"``), or
    ``[t, L]`` per label, the target's last axis (``"macro"``)."""
    t = pred.shape[0]
    if average == "micro":
        pred, target = pred.reshape(t, -1), target.reshape(1, -1)
        tp = (pred & target).sum(-1).to(dtype)
        return tp, pred.sum(-1).to(dtype), target.sum().to(dtype).expand(t)
    if target.dim() < 2:
        raise ValueError(f"average='macro' averages over the last axis of the target, the labels: give scores and "
                         f"target [n, L], not a target of shape {tuple(target.shape)}")
    labels = target.shape[-1]
    pred, target = pred.reshape(t, -1, labels), target.reshape(1, -1, labels)
    tp = (pred & target).sum(1).to(dtype)
    return tp, pred.sum(1).to(dtype), target.sum(1).to(dtype).expand(t, labels)


def _averaged(values: Tensor, average: str) -> Tensor:
    return values if average == "micro" else values.mean(-1)


def _f_beta_of(tp: Tensor, predicted: Tensor, actual: Tensor, beta: float) -> Tensor:
    b2 = beta * beta
    return _ratio((1 + b2) * tp, b2 * actual + predicted)


def _precision_of(tp: Tensor, predicted: Tensor, actual: Tensor) -> Tensor:
    return _ratio(tp, predicted)


def _recall_of(tp: Tensor, predicted: Tensor, actual: Tensor) -> Tensor:
    return _ratio(tp, actual)


def _f_beta(pred: Tensor, target: Tensor, beta: float, dtype: torch.dtype, average: str = "micro") -> Tensor:
    return _averaged(_f_beta_of(*_binary_counts(pred, target, dtype, average), beta), average)


def _precision(pred: Tensor, target: Tensor, dtype: torch.dtype, average: str = "micro") -> Tensor:
    return _averaged(_precision_of(*_binary_counts(pred, target, dtype, average)), average)


def _recall(pred: Tensor, target: Tensor, dtype: torch.dtype, average: str = "micro") -> Tensor:
    return _averaged(_recall_of(*_binary_counts(pred, target, dtype, average)), average)


_OF_COUNTS: Dict[Callable[..., Tensor], Callable[..., Tensor]] = {
    _f_beta: _f_beta_of, _precision: _precision_of, _recall: _recall_of}


class _ThresholdCounts(_ZooMetric):
    """F-beta, precision or recall at a threshold, whose chain along the comparisons has its gains
    in closed form (:attr:`uniloss.Structure.chain_gains`): the chain starts with every decision
    wrong (each positive predicted negative, each negative positive), and a comparison that comes
    right changes one label's counts by one (a positive: one more true positive and prediction; a
    negative: one prediction fewer). A sort of the comparisons by label and place in the chain and
    a cumulative sum give each one's counts before and after its step, ``O(l log l)``, exact at
    every step at any size (the engine's evaluated chain takes at most ``chain_segments + 1``
    points, and averages the gains over segments above that many comparisons). Each comparison is
    its own run, and the pull, per comparison, is the same as without runs."""

    def structure(self, target: Any) -> Optional[Structure]:
        return Structure(1, chain_gains=lambda v: self._gains(target, v))

    def _gains(self, plan: Any, v: Tensor) -> Tuple[Tensor, Tensor]:
        evaluator = cast(_Evaluator, self.evaluator)
        options = dict(evaluator.options)
        macro = options.pop("average", "micro") == "macro"
        of_counts = _OF_COUNTS[evaluator.fn]
        with torch.no_grad():
            target = plan.target
            labels = target.shape[-1] if macro else 1
            positive = target.reshape(-1)
            l, device = positive.numel(), v.device
            dtype = torch.float64 if v.dtype == torch.float64 else torch.float32
            order = torch.sort(v, descending=True, stable=True).indices  # the chain's (ties by index)
            place = torch.empty_like(order).scatter_(0, order, torch.arange(l, device=device))
            label = torch.arange(l, device=device) % labels  # (row-major [..., L]: the last axis)
            # by label, then by place in the chain (one label: the chain's order itself, no second sort)
            by = order if labels == 1 else torch.argsort(label * l + place)
            pos = positive.index_select(0, by).to(dtype)
            neg = 1 - pos
            lab = label.index_select(0, by)
            size = l // labels  # comparisons a label ([..., L] row-major: every label alike)
            first = torch.arange(labels, device=device) * size  # each label's first position in `by`
            seen_pos, seen_neg = pos.cumsum(0), neg.cumsum(0)
            zero = seen_pos.new_zeros(1)
            seen_pos = seen_pos - torch.cat([zero, seen_pos])[first].index_select(0, lab)  # within the label
            seen_neg = seen_neg - torch.cat([zero, seen_neg])[first].index_select(0, lab)
            actual = torch.zeros(labels, dtype=dtype, device=device).index_add_(0, label, positive.to(dtype))
            negatives = size - actual  # predicted at the start: every negative
            act = actual.index_select(0, lab)
            predicted = negatives.index_select(0, lab) + seen_pos - seen_neg
            after = of_counts(seen_pos, predicted, act, **options)
            before = of_counts(seen_pos - pos, predicted - pos + neg, act, **options)
            gains = torch.empty(l, dtype=dtype, device=device).scatter_(0, by, (after - before) / labels)
            start = of_counts(torch.zeros_like(actual), negatives, actual, **options).mean()
            return start.to(v.dtype), gains.to(v.dtype)


def _check_average(average: str) -> str:
    if average not in ("micro", "macro"):
        raise ValueError(f"average must be 'micro' (every decision pooled) or 'macro' (the mean over the labels, the "
                         f"last axis), not {average!r}")
    return average


def f_beta(beta: float = 1.0, threshold: float = 0.0, average: str = "micro") -> DecodedMetric:
    r"""F-beta score of binary decisions ``[s > threshold]`` (``beta=1``: F1).

    :math:`F_\beta = \frac{(1+\beta^2)\,TP}{(1+\beta^2)\,TP + \beta^2 FN + FP}`, 0 when there is
    no positive in the target nor in the prediction. Decoder ``Threshold(threshold)``: one
    comparison ``s - threshold`` per score. Reference: ``sklearn.metrics.fbeta_score``.

    Shapes: ``scores [n]`` (or any shape, every element pooled) float; ``target`` the same shape,
    values in {0, 1} -- or ``[n]`` with scores ``[n, 1]``, as :class:`uniloss.AveragePrecision` takes.

    ``average="macro"``: multi-label, ``scores`` and ``target`` ``[n, L]`` (or ``[..., L]``):
    each label's F-beta (the last axis), averaged over the ``L`` labels, a label with no positive
    in the target nor in the decisions counting 0, as scikit-learn's
    ``fbeta_score(average="macro")`` on a label indicator matrix does. The default ``"micro"``
    pools every decision.

    Example::

        >>> import torch, uniloss
        >>> scores = torch.tensor([1.0, -1.0, 2.0, 0.5])
        >>> round(float(uniloss.zoo.f_beta(1.0).metric(scores, torch.tensor([1, 1, 0, 1]))), 4)  # tp 2, fp 1, fn 1
        0.6667
        >>> multi = torch.tensor([[1.0, -1.0], [2.0, 1.0], [-1.0, -2.0]])  # 3 samples, 2 labels
        >>> labels = torch.tensor([[1, 0], [0, 1], [1, 0]])  # label 0: tp 1, fp 1, fn 1; label 1: tp 1
        >>> float(uniloss.zoo.f_beta(1.0, average="macro").metric(multi, labels))  # (1/2 + 1) / 2
        0.75
    """
    beta = V.check_positive("beta", beta)
    return _ThresholdCounts(Threshold(threshold), _Evaluator(_f_beta, "f_beta", beta=beta, **_average(average)))


def _average(average: str) -> dict:
    """The evaluator's options for ``average`` (none for the default, so its ``repr`` is unchanged)."""
    return {} if _check_average(average) == "micro" else {"average": average}


def precision(threshold: float = 0.0, average: str = "micro") -> DecodedMetric:
    r"""Precision ``TP / (TP + FP)`` of binary decisions ``[s > threshold]`` (0 with no predicted
    positive). Decoder ``Threshold(threshold)``, one comparison per score. Reference:
    ``sklearn.metrics.precision_score``. Shapes and ``average`` as :func:`f_beta`.

    Example::

        >>> import torch, uniloss
        >>> float(uniloss.zoo.precision().metric(torch.tensor([1.0, 2.0, -1.0]), torch.tensor([1, 0, 1])))
        0.5
    """
    return _ThresholdCounts(Threshold(threshold), _Evaluator(_precision, "precision", **_average(average)))


def recall(threshold: float = 0.0, average: str = "micro") -> DecodedMetric:
    r"""Recall ``TP / (TP + FN)`` of binary decisions ``[s > threshold]`` (0 with no positive in
    the target). Decoder ``Threshold(threshold)``, one comparison per score. Reference:
    ``sklearn.metrics.recall_score``. Shapes and ``average`` as :func:`f_beta`.

    Example::

        >>> import torch, uniloss
        >>> float(uniloss.zoo.recall().metric(torch.tensor([1.0, 2.0, -1.0]), torch.tensor([1, 0, 1])))
        0.5
    """
    return _ThresholdCounts(Threshold(threshold), _Evaluator(_recall, "recall", **_average(average)))


# --------------------------------------------------------------------------- ranking


def _per_query(values: Tensor, query: Tensor) -> Tensor:
    """``[t, n]`` sums of ``values [t, n]`` per query (ids ``0..G-1``, ``G <= n``: the columns from
    ``G`` on are empty queries, which every average here leaves out). ``n`` columns, not ``G``: no
    host synchronisation to count the queries."""
    return values.new_zeros(values.shape[0], query.numel()).index_add_(1, query, values)


def _query_sizes(target: RankingTarget):
    """``relevant [n]`` int64 0/1, and per query the relevant and all items ``[G]`` int64."""
    assert target.query is not None  # a plan's target: the query filled in
    relevant = (target.relevance > 0).long()
    num_rel = _per_query(relevant[None], target.query)[0]
    num_all = _per_query(torch.ones_like(relevant)[None], target.query)[0]
    return relevant, num_rel, num_all


def _precision_at_k(ranks: Tensor, target: RankingTarget, k: int, dtype: torch.dtype) -> Tensor:
    assert target.query is not None  # a plan's target: the query filled in
    relevant, _, num_all = _query_sizes(target)
    hits = _per_query((ranks < k).long() * relevant, target.query).to(dtype)
    return _mean_where(hits / k, (num_all > 0).expand_as(hits))


def _recall_at_k(ranks: Tensor, target: RankingTarget, k: int, dtype: torch.dtype) -> Tensor:
    assert target.query is not None  # a plan's target: the query filled in
    relevant, num_rel, _ = _query_sizes(target)
    hits = _per_query((ranks < k).long() * relevant, target.query).to(dtype)
    return _mean_where(_ratio(hits, num_rel.to(dtype).expand_as(hits)), (num_rel > 0).expand_as(hits))


def _mrr(ranks: Tensor, target: RankingTarget, dtype: torch.dtype) -> Tensor:
    assert target.query is not None  # a plan's target: the query filled in
    relevant, num_rel, _ = _query_sizes(target)
    t, n = ranks.shape
    big = torch.full_like(ranks, n)
    first = torch.full((t, num_rel.numel()), n, dtype=ranks.dtype, device=ranks.device)
    first.scatter_reduce_(1, target.query.expand(t, -1), torch.where(relevant > 0, ranks, big), "amin")
    return _mean_where(1.0 / (first.to(dtype) + 1), (num_rel > 0).expand(t, -1))


def _discount(ranks: Tensor, k: Optional[int], dtype: torch.dtype) -> Tensor:
    d = 1.0 / torch.log2(ranks.to(dtype) + 2)
    return d if k is None else torch.where(ranks < k, d, torch.zeros_like(d))


def _ndcg_at_k(ranks: Tensor, target: RankingTarget, k: Optional[int], dtype: torch.dtype) -> Tensor:
    assert target.query is not None  # a plan's target: the query filled in
    gain = target.relevance.to(dtype)
    ideal_ranks = sort_within(-gain[None], target.query)
    ideal = _per_query(gain * _discount(ideal_ranks, k, dtype), target.query)
    dcg = _per_query(gain * _discount(ranks, k, dtype), target.query)
    return _mean_where(_ratio(dcg, ideal.expand_as(dcg)), (ideal > 0).expand_as(dcg))


# The metrics of the relevant items' ranks (_RanksOfRelevant): a term per relevant item, of its
# place i among its query's relevant items and its rank r (floating), and a weight per query, of
# its number of relevant items P ([Q], floating; n the items).


def _hit_at_k(i: Tensor, r: Tensor, k: int) -> Tensor:  # precision@k, recall@k
    return (r < k).to(r.dtype)


def _over_k(positives: Tensor, k: int, n: int) -> Tensor:  # precision@k
    return torch.full_like(positives, 1.0 / k)


def _over_relevant(positives: Tensor, k: Optional[int], n: int) -> Tensor:  # recall@k
    return 1.0 / positives.clamp_min(1.0)


def _first_reciprocal(i: Tensor, r: Tensor, k: None) -> Tensor:  # MRR
    return (i == 0).to(r.dtype) / (r + 1.0)


def _unweighted(positives: Tensor, k: Optional[int], n: int) -> Tensor:  # MRR
    return torch.ones_like(positives)


def _discounted(i: Tensor, r: Tensor, k: Optional[int]) -> Tensor:  # NDCG@k
    return _discount(r, k, r.dtype)


def _over_ideal_dcg(positives: Tensor, k: Optional[int], n: int) -> Tensor:
    """NDCG@k of 0/1 relevance: one over the ideal DCG, ``min(P, k)`` relevant items at the top."""
    places = torch.arange(n, device=positives.device, dtype=positives.dtype)
    ideal = torch.cat([places.new_zeros(1), (1.0 / torch.log2(places + 2.0)).cumsum(0)])  # [n + 1]
    top = positives if k is None else positives.clamp_max(k)
    return 1.0 / ideal.index_select(0, top.long()).clamp_min(1e-30)


def _auroc(ranks: Tensor, target: RankingTarget, dtype: torch.dtype) -> Tensor:
    assert target.query is not None  # a plan's target: the query filled in
    relevant, num_pos, num_all = _query_sizes(target)
    num_neg = num_all - num_pos
    # Exact in int64: the rank sums, and the negatives ranked above each query's positives.
    rank_sum = _per_query(ranks * relevant, target.query)
    negatives_above = rank_sum - num_pos * (num_pos - 1) // 2  # positives' ranks are distinct
    pairs = (num_pos * num_neg).expand_as(rank_sum)
    return _mean_where(1 - _ratio(negatives_above.to(dtype), pairs.to(dtype)), pairs > 0)


def _average_precision(ranks: Tensor, target: RankingTarget, dtype: torch.dtype) -> Tensor:
    assert target.query is not None  # a plan's target: the query filled in
    relevant, num_pos, _ = _query_sizes(target)
    # place of each relevant item among its query's relevant items, by rank
    block = target.query * 2 + (relevant == 0).long()
    place = sort_within(ranks, block)
    precision_at = (place + 1).to(dtype) / (ranks + 1).to(dtype) * relevant.to(dtype)
    ap = _ratio(_per_query(precision_at, target.query), num_pos.to(dtype).expand(ranks.shape[0], -1))
    return _mean_where(ap, (num_pos > 0).expand_as(ap))


def _auroc_tied(scores: Tensor, target: RankingTarget, dtype: torch.dtype) -> Tensor:
    """:func:`_auroc` of the scores with a tie counted half (``roc_auc_score``): twice the
    negatives above a positive are those at or above it plus those strictly above, exact in int64."""
    assert target.query is not None  # a plan's target: the query filled in
    relevant, num_pos, num_all = _query_sizes(target)
    num_neg = num_all - num_pos
    _, at_or_above_neg = at_or_above(scores, relevant > 0, target.query)
    _, at_or_below_neg = at_or_above(-scores, relevant > 0, target.query)
    strictly_above = num_neg[target.query] - at_or_below_neg
    twice_above = _per_query(((at_or_above_neg + strictly_above) * relevant)[None], target.query)
    pairs = (num_pos * num_neg).expand_as(twice_above)
    return _mean_where(1 - _ratio(twice_above.to(dtype), (2 * pairs).to(dtype)), pairs > 0)[0]


def _average_precision_tied(scores: Tensor, target: RankingTarget, dtype: torch.dtype) -> Tensor:
    """:func:`_average_precision` of the scores with each run of tied scores one threshold
    (``average_precision_score``): a relevant item counts the relevant and all items at or above it."""
    assert target.query is not None  # a plan's target: the query filled in
    relevant, num_pos, _ = _query_sizes(target)
    above_rel, above_irr = at_or_above(scores, relevant > 0, target.query)
    precision_at = above_rel.to(dtype) / (above_rel + above_irr).to(dtype) * relevant.to(dtype)
    ap = _ratio(_per_query(precision_at[None], target.query), num_pos.to(dtype).expand(1, -1))
    return _mean_where(ap, (num_pos > 0).expand_as(ap))[0]


def _at_relevant(ranks: Tensor, target: RankingTarget, dtype: torch.dtype) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The operating points of a ranking that end at a relevant item (the others add an irrelevant
    item to one of them, which lowers its precision at the same recall): ``(relevant [n] bool,
    precision [t, n], recall [t, n], num_rel [n])``, the cut just below each relevant item (its
    place ``k`` among its query's relevant items, 1-based, over its rank, and over the query's
    relevant items), ``num_rel`` per query (:func:`_query_sizes`)."""
    assert target.query is not None  # a plan's target: the query filled in
    relevant, num_rel, _ = _query_sizes(target)
    k = sort_within(ranks, target.query * 2 + (relevant == 0).long()) + 1
    recall = _ratio(k.to(dtype), num_rel.index_select(0, target.query).to(dtype).expand_as(k))
    return relevant > 0, k.to(dtype) / (ranks + 1).to(dtype), recall, num_rel


def _best_cut(relevant: Tensor, precision: Tensor, recall: Tensor, num_rel: Tensor, target: RankingTarget,
              dtype: torch.dtype, *, min_precision: Optional[float] = None,
              min_recall: Optional[float] = None) -> Tensor:
    """Per query the largest recall of the cuts at a precision ``>= min_precision``, or the largest
    precision of those at a recall ``>= min_recall`` (0 where none is), averaged over the queries
    with a relevant item: ``[t]``, from :func:`_at_relevant`'s ``[t, n]`` cuts."""
    assert target.query is not None  # a plan's target: the query filled in
    if min_precision is not None:
        value, allowed = recall, relevant & (precision >= min_precision)
    else:
        value, allowed = precision, relevant & (recall >= cast(float, min_recall))
    best = torch.zeros(value.shape[0], target.query.numel(), dtype=dtype, device=value.device)
    best.scatter_reduce_(1, target.query.expand_as(value), torch.where(allowed, value.to(dtype), 0.0), "amax")
    return _mean_where(best, (num_rel > 0).expand_as(best))


def _operating_point(ranks: Tensor, target: RankingTarget, dtype: torch.dtype, **level: float) -> Tensor:
    """:func:`recall_at_precision` (``min_precision=``) or :func:`precision_at_recall`
    (``min_recall=``) of decoded ranks ``[t, n]``."""
    relevant, precision, recall, num_rel = _at_relevant(ranks, target, dtype)
    return _best_cut(relevant, precision, recall, num_rel, target, dtype, **level)


def _operating_point_tied(scores: Tensor, target: RankingTarget, dtype: torch.dtype, **level: float) -> Tensor:
    """:func:`_operating_point` of the scores with each run of tied scores one threshold
    (scikit-learn's ``precision_recall_curve``): the cut at a relevant item's score keeps every
    item at or above it."""
    assert target.query is not None  # a plan's target: the query filled in
    relevant, num_rel, _ = _query_sizes(target)
    above_rel, above_irr = at_or_above(scores, relevant > 0, target.query)
    precision = _ratio(above_rel.to(dtype), (above_rel + above_irr).to(dtype))
    recall = _ratio(above_rel.to(dtype), num_rel.index_select(0, target.query).to(dtype))
    return _best_cut(relevant[None] > 0, precision[None], recall[None], num_rel, target, dtype, **level)[0]


def _operating_point_gains(plan: Any, v: Tensor, *, min_precision: Optional[float] = None,
                           min_recall: Optional[float] = None) -> Tuple[Tensor, Tensor]:
    """``(start, gains [l])`` of :func:`recall_at_precision`'s or :func:`precision_at_recall`'s chain
    (:attr:`uniloss.Structure.chain_gains`), from the steps of :func:`_chain_steps`.

    A query's value is the best of its cuts below a relevant item: the ``k``-th of them by rank,
    with ``z_(k)`` irrelevant items above it, has precision ``k / (z_(k) + k)`` and recall
    ``k / P_q``. Along the chain each step lowers one ``z_(k)`` by one (``k = i + 1``, to ``m``), so
    every cut's precision only grows, a cut allowed once stays allowed, and the query's value
    after a step is the largest of its value at the start (every comparison wrong, ``z = N_q``) and
    the values its steps so far made: a running maximum over each query's steps in the chain's
    order (one sort by query; exact integer keys, no host synchronisation). The gains are its
    increases over the ``Q`` queries with a relevant item; the allowed test in the plan's
    ``dtype``, as the evaluator's."""
    relevant, positives, negatives, dtype = _class_sizes(plan)
    query, values_dtype = plan.target.query, plan.dtype

    def value(k: Tensor, z: Tensor, of: Tensor) -> Tensor:  # a cut's value where it is allowed, else 0
        if min_precision is not None:
            allowed = k.to(values_dtype) / (z + k).to(values_dtype) >= min_precision
            return torch.where(allowed, k.to(dtype) / positives.index_select(0, of).clamp_min(1), 0.0)
        recall = _ratio(k.to(values_dtype), positives.index_select(0, of).to(values_dtype))
        return torch.where(recall >= cast(float, min_recall), k.to(dtype) / (z + k).to(dtype), 0.0)

    # at the start: every relevant item below every irrelevant one of its query, in index order
    place = sort_within(torch.arange(query.numel(), device=v.device)[None], query * 2 + (~relevant).long())[0]
    at_start = torch.where(relevant, value(place + 1, negatives.long().index_select(0, query), query), 0.0)
    start = torch.zeros_like(positives).scatter_reduce_(0, query, at_start, "amax")  # [Q]
    queries = (positives > 0).sum().clamp_min(1)
    order, q, m, i = _chain_steps(plan, v, negatives)
    made = value(i + 1, m, q)
    if plan.padding is not None:
        made = made.masked_fill(plan.padding, 0.0)
    # each query's steps in the chain's order, its running maximum over integer keys (a value's place)
    q_chain = q.index_select(0, order)
    grouped = order.index_select(0, torch.argsort(q_chain, stable=True))  # comparisons: by query, then by chain
    q_grouped = q.index_select(0, grouped)
    after = torch.maximum(made.index_select(0, grouped), start.index_select(0, q_grouped))
    ascending = torch.argsort(after, stable=True)
    place_of = torch.empty_like(ascending).scatter_(0, ascending, torch.arange(ascending.numel(), device=v.device))
    steps = ascending.numel()
    # (each query's keys lie above the previous query's: the running maximum restarts per query)
    best = torch.cummax(q_grouped * steps + place_of, 0).values - q_grouped * steps
    after = after.index_select(0, ascending.index_select(0, best))
    first = torch.ones_like(q_grouped, dtype=torch.bool)
    first[1:] = q_grouped[1:] != q_grouped[:-1]
    before = torch.where(first, start.index_select(0, q_grouped), after.roll(1))
    gains = torch.zeros_like(made).index_copy_(0, grouped, (after - before) / queries)
    return start.sum() / queries, gains


def _operating_point_metric(name: str, **level: float) -> DecodedMetric:
    return _RankingWithTies(Ranking("binary"), _Evaluator(_operating_point, name, **level),
                            lambda scores, target, dtype: _operating_point_tied(scores, target, dtype, **level),
                            lambda plan, v: _operating_point_gains(plan, v, **level))


def _check_k(k: object) -> int:
    return V.check_count("k", k, allow_zero=False)


def auroc() -> DecodedMetric:
    r"""Area under the ROC curve: the fraction of (positive, negative) pairs ranked correctly.

    :math:`\frac{1}{PN}\sum_{i \in +, j \in -} [s_i > s_j]` (Wilcoxon-Mann-Whitney), per query
    when query ids are given, averaged over queries with both classes. Decoder
    ``Ranking(pairs="binary")``: the ``P*N`` positive x negative pairs of each query (the
    AP layout of the paper). Relevance ``> 0`` is positive. Reference:
    ``sklearn.metrics.roc_auc_score``, also on tied scores: the reported value (``metric()``,
    ``UniLoss.last.metric``) counts a tied pair half (constant scores: 0.5), where the bits, the
    anchors' values and the loss count it wrong.

    Shapes: ``scores [n]`` float; ``target`` ``[n]`` in {0, 1} or a ``RankingTarget``. A batch
    with one class only has no comparisons: metric NaN, loss zero.

    Example::

        >>> import torch, uniloss
        >>> float(uniloss.zoo.auroc().metric(torch.tensor([0.9, 0.3, 0.5, 0.1]), torch.tensor([1, 1, 0, 0])))
        0.75
    """
    return _RankingWithTies(Ranking("binary"), _Evaluator(_auroc, "auroc"), _auroc_tied,
                            lambda plan, v: _auroc_gains(plan))


def average_precision() -> DecodedMetric:
    r"""Average precision per query, averaged over queries with a relevant item (MAP).

    :math:`AP = \frac{1}{P}\sum_{k=1}^{P} \frac{k}{r_k + 1}` with ``r_k`` the 0-based rank of the
    ``k``-th relevant item. Decoder ``Ranking(pairs="binary")``: on one query with 0/1 labels this
    is :class:`uniloss.AveragePrecision` (same comparisons, values and loss). Reference:
    ``sklearn.metrics.average_precision_score`` (per query), also on tied scores: the reported
    value (``metric()``, ``UniLoss.last.metric``) takes a run of tied scores as one threshold
    (constant scores: ``P / n``), where the bits, the anchors' values and the loss count a tie as
    the relevant item below.

    Shapes: ``scores [n]`` float; ``target`` ``[n]`` relevance (``> 0`` relevant) or a
    ``RankingTarget``.

    Example::

        >>> import torch, uniloss
        >>> round(float(uniloss.zoo.average_precision().metric(torch.tensor([0.9, 0.8, 0.3, 0.1]),
        ...                                                     torch.tensor([1, 0, 1, 0]))), 4)
        0.8333
    """
    return _RankingWithTies(Ranking("binary"), _Evaluator(_average_precision, "average_precision"),
                            _average_precision_tied, lambda plan, v: _average_precision_gains(plan))


def precision_at_k(k: int) -> DecodedMetric:
    r"""Precision@k: the fraction of each query's top ``k`` that is relevant, averaged over queries.

    :math:`\frac{1}{k}|\{i : r_i < k,\ rel_i > 0\}|` (divided by ``k`` even when a query has fewer
    items, as ``torchmetrics.functional.retrieval_precision``). Decoder
    ``Ranking(pairs="binary")``: relevant x irrelevant pairs within each query.

    Shapes: ``scores [n]`` float; ``target`` a ``RankingTarget(relevance [n], query [n])`` or a
    relevance ``[n]`` (one query).

    Example::

        >>> import torch, uniloss
        >>> from uniloss.decoders import RankingTarget
        >>> scores = torch.tensor([0.9, 0.8, 0.1, 0.7, 0.2, 0.3])
        >>> target = RankingTarget(torch.tensor([0, 1, 1, 1, 0, 0]), torch.tensor([0, 0, 0, 1, 1, 1]))
        >>> float(uniloss.zoo.precision_at_k(2).metric(scores, target))     # (1/2 + 1/2) / 2
        0.5
    """
    return _RanksOfRelevant(Ranking("binary"), _Evaluator(_precision_at_k, "precision_at_k", k=_check_k(k)),
                            _hit_at_k, _over_k, every_query=True)


def recall_at_k(k: int) -> DecodedMetric:
    r"""Recall@k: the fraction of each query's relevant items in its top ``k``, averaged over the
    queries with a relevant item. Decoder ``Ranking(pairs="binary")``. Reference:
    ``torchmetrics.functional.retrieval_recall``. Shapes as :func:`precision_at_k`.

    Example::

        >>> import torch, uniloss
        >>> float(uniloss.zoo.recall_at_k(1).metric(torch.tensor([0.9, 0.8, 0.1]), torch.tensor([1, 0, 1])))
        0.5
    """
    return _RanksOfRelevant(Ranking("binary"), _Evaluator(_recall_at_k, "recall_at_k", k=_check_k(k)),
                            _hit_at_k, _over_relevant, every_query=False)


def ndcg_at_k(k: Optional[int] = None, *, num_grades: Optional[int] = None) -> DecodedMetric:
    r"""Normalised discounted cumulative gain at ``k`` (all items when ``k`` is ``None``).

    :math:`DCG@k = \sum_{i : r_i < k} rel_i / \log_2(r_i + 2)`, divided by the DCG of the ideal
    ranking of the query, averaged over queries with a relevant item. Linear gains, as
    ``sklearn.metrics.ndcg_score`` (the reference, per query). Decoder
    ``Ranking(pairs="relevance")``: pairs of different relevance within each query, graded
    relevance allowed (any number of grades: the decode takes ``log2(n)`` merges, not a pass per
    grade).

    The pull (0.10): binary cross-entropy for 0/1 relevance; for integer grades the all-threshold
    ordinal logistic loss, one margin per grade boundary (:attr:`uniloss.Structure.margins`).

    ``num_grades``: the relevance is an integer in ``[0, num_grades)`` (grades need not all occur).
    The decoder then takes the grades without counting the distinct ones, so a loss call makes no
    host synchronisation (with ``validate_args=False``); without it, graded relevance costs one
    (the number of grades) and the comparisons are laid out exactly.

    Shapes as :func:`precision_at_k`.

    Example::

        >>> import torch, uniloss
        >>> scores, relevance = torch.tensor([0.1, 0.9, 0.5]), torch.tensor([2, 0, 1])
        >>> round(float(uniloss.zoo.ndcg_at_k(3).metric(scores, relevance)), 4)
        0.6199
    """
    return _RanksOfRelevant(Ranking("relevance", num_grades=num_grades),
                            _Evaluator(_ndcg_at_k, "ndcg_at_k", k=None if k is None else _check_k(k)),
                            _discounted, _over_ideal_dcg, every_query=False)


def mrr() -> DecodedMetric:
    r"""Mean reciprocal rank: ``1 / (rank of the first relevant item)`` (1-based), averaged over the
    queries with a relevant item. Decoder ``Ranking(pairs="binary")``. Reference:
    ``torchmetrics.functional.retrieval_reciprocal_rank``. Shapes as :func:`precision_at_k`.

    Example::

        >>> import torch, uniloss
        >>> float(uniloss.zoo.mrr().metric(torch.tensor([0.9, 0.8, 0.1]), torch.tensor([0, 1, 1])))
        0.5
    """
    return _RanksOfRelevant(Ranking("binary"), _Evaluator(_mrr, "mrr"), _first_reciprocal, _unweighted, every_query=False)


def recall_at_precision(min_precision: float) -> DecodedMetric:
    r"""Recall at a precision of at least ``min_precision``: the largest recall of a threshold on
    the scores whose precision is at least ``min_precision`` (0 where none is), per query, averaged
    over the queries with a relevant item. The operating point of a detector that must keep its
    false alarms below a share (Eban et al., "Scalable learning of non-decomposable objectives",
    2017).

    :math:`\max \{k / P : k / (r_k + 1) \ge \alpha\}` over the ``k``-th relevant item by rank, at
    0-based rank ``r_k``, of the ``P`` relevant items, :math:`\alpha` = ``min_precision`` (a
    threshold that ends at an irrelevant item has the recall of the relevant one above it and less
    precision). Decoder
    ``Ranking(pairs="binary")``. References: the largest recall of
    ``sklearn.metrics.precision_recall_curve`` with precision ``>= min_precision``, and
    ``torchmetrics.functional.classification.binary_recall_at_fixed_precision`` (its first output).
    The reported value (``metric()``, ``UniLoss.last.metric``) takes a run of tied scores as one
    threshold, as those do; the bits, the anchors' values and the loss count a tie as the relevant
    item below. Precision is compared in the metric's dtype (float32 for float32 scores), as
    torchmetrics does.

    Training for the point: measured on an imbalanced task (``docs/results/metric-wins/``,
    "One operating point of the precision-recall curve"), UniLoss on this metric is level with
    binary cross-entropy and collapses from 4x the recipe's learning rate (its chain changes only
    where a step makes a new best cut, so its push falls on a few scores), while UniLoss on
    :func:`average_precision` is ahead of both at the point with 64 or more hidden units. Train
    with that and monitor this one (``metric()``).

    Args:
        min_precision: the least precision, in ``(0, 1]``.

    Shapes: ``scores [n]`` (or ``[n, 1]``) float; ``target`` ``[n]`` relevance (``> 0`` relevant)
    or a ``RankingTarget`` with query ids.

    Example::

        >>> import torch, uniloss
        >>> scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
        >>> float(uniloss.zoo.recall_at_precision(0.6).metric(scores, torch.tensor([1, 0, 1, 0, 1])))
        1.0
        >>> round(float(uniloss.zoo.recall_at_precision(0.7).metric(scores, torch.tensor([1, 0, 1, 0, 1]))), 4)
        0.3333
    """
    return _operating_point_metric("recall_at_precision",
                                   min_precision=V.check_fraction("min_precision", min_precision))


def precision_at_recall(min_recall: float) -> DecodedMetric:
    r"""Precision at a recall of at least ``min_recall``: the largest precision of a threshold on
    the scores whose recall is at least ``min_recall``, per query, averaged over the queries with a
    relevant item (the counterpart of :func:`recall_at_precision`).

    :math:`\max \{k / (r_k + 1) : k / P \ge \beta\}` over the ``k``-th relevant item by rank, at
    0-based rank ``r_k``, of the ``P`` relevant items, :math:`\beta` = ``min_recall``. Decoder
    ``Ranking(pairs="binary")``. References: the largest precision of
    ``sklearn.metrics.precision_recall_curve`` with recall ``>= min_recall`` (leaving out the
    curve's last point, recall 0 at precision 1, as torchmetrics does), and
    ``torchmetrics.functional.classification.binary_precision_at_fixed_recall`` (its first
    output). Ties, dtype and what trains the point best as :func:`recall_at_precision`.

    Args:
        min_recall: the least recall, in ``(0, 1]``.

    Shapes: as :func:`recall_at_precision`.

    Example::

        >>> import torch, uniloss
        >>> scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
        >>> round(float(uniloss.zoo.precision_at_recall(0.5).metric(scores, torch.tensor([1, 0, 1, 0, 1]))), 4)
        0.6667
    """
    return _operating_point_metric("precision_at_recall", min_recall=V.check_fraction("min_recall", min_recall))


# --------------------------------------------------------------------------- segmentation


def mean_iou(num_classes: int, *, pairs: str = "target", ignore_index: Optional[int] = None) -> Decomposition:
    r"""Mean intersection over union of label maps ``argmax_c s[:, c]``, pooled over the batch.

    :math:`\mathrm{mean}_c\, \frac{TP_c}{TP_c + FP_c + FN_c}` over the classes present in the
    target or the prediction. Decoder ``PixelArgmax(pairs)``: ``C-1`` comparisons per pixel
    (``pairs="all"``: ``C(C-1)/2``, see :func:`macro_f1`; for two classes both are one). Reference:
    ``sklearn.metrics.jaccard_score(average="macro")`` on the flattened maps.

    ``ignore_index`` (e.g. 255, the void label of Pascal VOC and Cityscapes): pixels labelled so
    take no comparison and count nowhere, as in ``torch.nn.functional.cross_entropy(...,
    ignore_index=255)``, which is then the pull's per-pixel term. The metric is a wrapper of the
    same metric of the kept pixels' score rows (their count varies with the batch: on an
    accelerator, one host synchronisation a call).

    Shapes: ``scores [n, num_classes, H, W]`` (or ``[n, C, *spatial]``) float, ``target [n, H, W]``
    int64 in ``[0, num_classes)`` (or ``ignore_index``).

    Training: at the defaults (since 0.8: the chain and the pull) a segmentation network trains
    at ``temperature=1``, 71.3 mean IoU against per-pixel cross-entropy's 69.4 at the same
    learning rate (``docs/results/zoo/defaults-0.14``); the first defaults (the anchors without
    the pull) collapsed there to "all background", the saturated sigmoid giving confidently
    wrong pixels no gradient, which ``temperature=4`` had avoided.

    Example::

        >>> import torch, uniloss
        >>> scores = torch.zeros(1, 2, 2, 2)
        >>> scores[0, 1, 0], scores[0, 0, 1] = 1.0, 1.0          # top row predicted 1, bottom row 0
        >>> target = torch.tensor([[[1, 1], [1, 0]]])
        >>> round(float(uniloss.zoo.mean_iou(2).metric(scores, target)), 4)   # (1/2 + 2/3) / 2
        0.5833
        >>> target[0, 0, 0] = 255                                  # a void pixel
        >>> round(float(uniloss.zoo.mean_iou(2, ignore_index=255).metric(scores, target)), 4)  # (1/2 + 1/2) / 2
        0.5
    """
    n = _check_classes(num_classes)
    return _label_maps(n, pairs, ignore_index, _mean_iou, "mean_iou")


def dice(num_classes: int, *, pairs: str = "target", ignore_index: Optional[int] = None) -> Decomposition:
    r"""Mean Dice coefficient (per-class F1 of the pixels) of label maps, pooled over the batch.

    :math:`\mathrm{mean}_c\, \frac{2\,TP_c}{2\,TP_c + FP_c + FN_c}` over the classes present in
    the target or the prediction. Decoder ``PixelArgmax(pairs)`` as :func:`mean_iou` (which says
    how it trains). Reference: ``sklearn.metrics.f1_score(average="macro")`` on the flattened maps.

    Shapes and ``ignore_index`` as :func:`mean_iou`.

    Example::

        >>> import torch, uniloss
        >>> scores = torch.zeros(1, 2, 2, 2)
        >>> scores[0, 1, 0], scores[0, 0, 1] = 1.0, 1.0
        >>> target = torch.tensor([[[1, 1], [1, 0]]])
        >>> round(float(uniloss.zoo.dice(2).metric(scores, target)), 4)       # (2/3 + 4/5) / 2
        0.7333
    """
    n = _check_classes(num_classes)
    return _label_maps(n, pairs, ignore_index, _macro_f1, "dice")


def _label_maps(n: int, pairs: str, ignore_index: Optional[int], fn: Callable[..., Tensor], name: str
                ) -> Decomposition:
    """:func:`mean_iou`'s and :func:`dice`'s metric of label maps, or of the pixels not labelled
    ``ignore_index``."""
    maps = _metric(PixelArgmax(pairs, num_classes=n), fn, name, num_classes=n)
    if ignore_index is None:
        return maps
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int) or 0 <= ignore_index < n:
        raise ValueError(f"Expected `ignore_index` to be an int outside [0, {n}) (a label no class has, e.g. "
                         f"255 or -100) or None, but got {ignore_index!r}")
    return _IgnoredPixels(_metric(Argmax(pairs, num_classes=n), fn, name, num_classes=n), maps, ignore_index)


@dataclasses.dataclass(frozen=True)
class _KeptPlan(WrappedPlan):
    keep: Optional[Tensor] = None  # [n, *spatial] bool: the pixels not labelled ignore_index


class _IgnoredPixels(WrappedDecomposition):
    """A metric of label maps on the pixels whose label is not ``ignore_index``: the inner metric
    (of :class:`~uniloss.decoders.Argmax` rows) takes their score rows ``[P, C]`` and labels ``[P]``
    in the pixels' row-major order, which is :class:`~uniloss.decoders.PixelArgmax`'s, so without an
    ignored pixel the comparisons, the best configuration and the loss are the label maps' own."""

    def __init__(self, rows: DecodedMetric, maps: DecodedMetric, ignore_index: int) -> None:
        super().__init__(rows)
        self.maps, self.ignore_index = maps, ignore_index

    def check(self, scores: Tensor, target: Any) -> None:
        """The label maps' checks, the ignored pixels read as class 0."""
        if isinstance(target, WrappedPlan):
            return
        V.check_tensor("target", target)
        self.maps.check(scores, target.masked_fill(target == self.ignore_index, 0))

    def expand(self, scores: Tensor, target: Any) -> Tuple[Tensor, Any, int]:
        keep = target != self.ignore_index
        return scores.movedim(1, -1)[keep], target[keep], 0

    def prepare(self, scores: Tensor, target: Any, generator: Optional[torch.Generator] = None) -> WrappedPlan:
        if isinstance(target, WrappedPlan):
            return target
        keep = target != self.ignore_index  # (expand's, kept in the plan for unwrap)
        rows, labels = scores.movedim(1, -1)[keep], target[keep]
        return _KeptPlan(scores, rows, self.decomposition.prepare(rows, labels, generator), 0, keep)

    def unwrap(self, target: Any, scores: Optional[Tensor] = None) -> Tuple[Tensor, Any]:
        plan = cast(_KeptPlan, self._plan(target, scores))
        if scores is None or scores is plan.scores:
            return plan.inner_scores, plan.target
        return scores.movedim(1, -1)[plan.keep], plan.target

    def __repr__(self) -> str:
        return f"IgnoredPixels({self.maps!r}, ignore_index={self.ignore_index})"


# --------------------------------------------------------------------------- keypoints


def _pck(xy: Tensor, target, threshold: float, dtype: torch.dtype) -> Tensor:
    keypoints, visible, normalizer = target
    d = xy - keypoints[None]
    radius = threshold * normalizer[None, :, None]
    within = (d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1]) <= radius * radius
    return _mean_where(within.reshape(xy.shape[0], -1).to(dtype), (visible != 0).reshape(1, -1).expand(xy.shape[0], -1))


def pck(threshold: float = 0.5) -> DecodedMetric:
    r"""PCK from heatmaps through :class:`~uniloss.decoders.SpatialArgmax`: the fraction of
    visible joints whose argmax pixel lies within ``threshold * normalizer`` of the keypoint.

    Same comparisons, values and loss as :class:`uniloss.PCK` (paper, sec. 4.2), written as a
    decoder and a three-line evaluator on coordinates.

    Shapes: ``scores [n, J, H, W]`` float; ``target`` a :class:`uniloss.KeypointTarget`.

    Example::

        >>> import torch, uniloss
        >>> heat = torch.zeros(1, 1, 8, 8); heat[0, 0, 2, 5] = 1.0
        >>> t = uniloss.KeypointTarget(torch.tensor([[[4.0, 2.0]]]), torch.tensor([[True]]), torch.tensor([2.0]))
        >>> float(uniloss.zoo.pck(0.5).metric(heat, t))
        1.0
    """
    threshold = V.check_positive("threshold", threshold)
    return _RegionPCK(threshold)


class _RegionPCK(_ZooMetric):
    """:func:`pck`: its evaluator asks only whether the decoded pixel lies within the radius, so
    its values are :class:`uniloss.PCK`'s on the same layout (the decoder's region, a
    :class:`uniloss._pairs.SetPairs` of the disc's pixels against the rest), and so are its
    evaluation of bits and its structure: the path ``"runs"``, the chain in closed form. The engine
    otherwise evaluates the chain by decoding ``[points, l]`` configurations (8 x 4 x 16 x 16
    heatmaps, 89,181 comparisons: 305 ms a call on a CPU core)."""

    def __init__(self, threshold: float) -> None:
        super().__init__(SpatialArgmax(threshold), _Evaluator(_pck, "pck", threshold=threshold))
        self.pck = PCK(threshold)

    def evaluate(self, bits: Tensor, target: Any) -> Tensor:
        return self.pck.evaluate(bits, self._region(target))

    def structure(self, target: Any) -> Optional[Structure]:
        return self.pck.structure(self._region(target))

    def _region(self, plan: Any) -> Any:
        region = getattr(plan, "region", None)
        if region is None:
            raise TypeError(f"zoo.pck's .evaluate() and .structure() take the target returned by .prepare(scores, "
                            f"target), but got {type(plan).__name__}")
        return region
