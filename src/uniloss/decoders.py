r"""Decoders: the discrete step of a metric, written as comparisons of scores.

A metric is usually computed in two steps: a *decoder* turns the network's scores into discrete
outputs (labels by argmax, binary predictions by a threshold, a ranking by sorting, top-k sets,
keypoint coordinates, label maps), then an *evaluator* compares those outputs with the ground
truth. The decoder's only discrete step is comparing scores (paper, sec. 3.3), so UniLoss's bits
``b = [c > 0]`` are the decoder's comparisons and ``g`` is "decode the bits, then evaluate". With
a decoder from this module a user writes only the evaluator: see :class:`uniloss.DecodedMetric`
and the ready-made metrics in :mod:`uniloss.zoo`.

Every decoder knows

* its comparisons ``c`` (``[l]``, differentiable in the scores), in a documented layout, each a
  difference ``s_a - s_b`` (or ``s_a - t``) whose bit 1 means "``a`` wins";
* its best configuration for a target: bits that decode to the ground truth;
* how to decode bits ``[t, l]`` (``t`` configurations at once, no Python loop over them) into
  outputs with a leading dimension ``t``.

Random anchors produce inconsistent bits (``a`` beats ``b``, ``b`` beats ``c``, ``c`` beats
``a``); each decoder documents its rule for them. On bits that real scores produce, decoding
equals the ordinary decoder (``argmax``, thresholding, a stable sort, ``topk``), and exact score
ties are broken toward the lower index, as ``torch.argmax`` and a stable descending sort do --
except that with ``pairs="target"`` a tie with the target counts against the target (it must
beat every other class strictly, as in :class:`uniloss.MulticlassAccuracy`).

**Pruning.** Where some comparisons cannot change what the evaluator looks at, a decoder can
leave them out (the ``pairs`` option): the paper prunes positive-positive pairs for AP and keeps
only target-versus-other pairs for accuracy. Outputs that the dropped comparisons would decide are
taken from the current scores (those bits keep their current values, as bits not trained do), so
decoding stays complete and the metric exact on every configuration; only the training signal
through the dropped comparisons is lost.

**Writing a decoder.** Subclass :class:`Decoder`: ``prepare`` returns a plan (anything with a
``target`` attribute, which the evaluator receives), and ``comparisons``, ``best`` and ``decode``
take that plan. See ``docs/custom-metrics.md``.

Example -- the argmax decoder on three classes (three pairs per sample)::

    >>> import torch
    >>> from uniloss.decoders import Argmax
    >>> scores = torch.tensor([[0.1, 2.0, 0.5], [3.0, 1.0, 0.0]])
    >>> dec = Argmax()
    >>> plan = dec.prepare(scores, torch.tensor([1, 2]))
    >>> bits = dec.comparisons(scores, plan) > 0          # pairs (0,1), (0,2), (1,2) per sample
    >>> dec.decode(bits[None], plan)                       # one configuration -> [1, n] labels
    tensor([[1, 0]])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor

from . import _validation as V
from ._cache import TensorCache
from ._decomposition import static_layout, validate_scores
from ._metrics import PCK, KeypointTarget
from ._pairs import (SetPairs, SetRanks, binary_margins, decode_sets, index_differences, ordinal_margins, other_classes,
                     row_differences, set_pairs, set_ranks, static_pair_differences)
from ._structured import Runs

__all__ = [
    "Decoder",
    "Argmax",
    "TopK",
    "PixelArgmax",
    "Threshold",
    "Ranking",
    "RankingTarget",
    "SpatialArgmax",
    "KeypointTarget",
]


def _check_choice(name: str, value: object, choices: Tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"Expected `{name}` to be one of {choices}, but got {value!r}")
    return value


class Decoder:
    r"""Base class of decoders: scores -> discrete outputs, through comparisons only.

    A decoder implements

    * ``check(scores, target)``: validate the tensors, raising ``ValueError``/``TypeError`` that
      name the argument;
    * ``prepare(scores, target, generator=None) -> plan``: per call, whatever the other methods
      need (pair indices, the current values of pruned comparisons); ``plan.target`` is what the
      evaluator receives (the built-in plans also carry ``plan.dtype``, the floating dtype the
      zoo computes metric values in: :func:`values_dtype` of the scores);
    * ``comparisons(scores, plan) -> [l]``: the score differences, differentiable in ``scores``;
    * ``best(plan) -> [l] bool``: a configuration that decodes to the ground truth;
    * ``decode(bits, plan) -> outputs``: bits ``[t, l]`` to outputs with a leading ``t``,
      vectorised over ``t``;
    * optionally ``runs(plan)``: how the comparisons group into the units they decode (an
      :class:`Argmax` row's ``C - 1`` comparisons with its label), as
      :attr:`uniloss.Structure.runs`; the pull toward ``best`` is then taken per unit (for
      :class:`Argmax`, cross-entropy). ``None`` (the default): no grouping.

    ``comparisons`` also accepts an unprepared target (it prepares it); ``best`` and ``decode``
    need the plan. Use a decoder through :class:`uniloss.DecodedMetric`.

    Example::

        >>> import torch
        >>> from uniloss.decoders import Threshold
        >>> dec = Threshold(0.0)
        >>> plan = dec.prepare(torch.tensor([0.3, -1.0]), torch.tensor([1, 1]))
        >>> dec.best(plan), dec.decode(torch.tensor([[True, False]]), plan)
        (tensor([True, True]), tensor([[ True, False]]))
    """

    _plan_type: type = type(None)

    def check(self, scores: Tensor, target: Any) -> None:
        """Validate ``scores`` and ``target``; raise ``ValueError``/``TypeError`` naming them."""

    def prepare(self, scores: Tensor, target: Any, generator: Optional[torch.Generator] = None) -> Any:
        """Return the plan the other methods take (``plan.target`` goes to the evaluator)."""
        raise _missing(self, "prepare")

    def comparisons(self, scores: Tensor, plan: Any) -> Tensor:
        """The ``[l]`` score differences; bit 1 (``c > 0``) means the first term wins."""
        raise _missing(self, "comparisons")

    def best(self, plan: Any) -> Tensor:
        """An ``[l]`` bool configuration that decodes to the ground truth."""
        raise _missing(self, "best")

    def runs(self, plan: Any) -> Optional[Union[int, Tensor, Runs]]:
        """Optional: the units the comparisons decode, as :attr:`uniloss.Structure.runs` (a
        :class:`uniloss._structured.Runs` where the run of each bit is given, e.g. in a static layout)."""
        return None

    def margins(self, plan: Any) -> Optional[Callable[[Tensor], Tensor]]:
        """Optional: per-sample margins for the pull, as :attr:`uniloss.Structure.margins`."""
        return None

    def toggled(self, plan: Any) -> Optional[Tuple[Tensor, Tensor]]:
        """Optional, with :meth:`runs`, where a run is one element of the decoded output:
        ``(current, toggled)``, ``[S]`` each, what each run's element decodes to now and when
        that run alone toggles (a right run's comparison closest to wrong flips; a wrong run's
        comparisons all go right: :class:`Argmax`, a right row becomes its highest-scoring other
        class and a wrong one its label). :class:`uniloss.DecodedMetric` evaluates these ``S``
        single changes, in the shape of ``plan.target``, for the runs' weights in the pull
        (:attr:`uniloss.Structure.run_weights`). ``None`` (the default): no weights."""
        return None

    def decode(self, bits: Tensor, plan: Any) -> Any:
        """Decode bits ``[t, l]`` (bool) into outputs with a leading dimension ``t``."""
        raise _missing(self, "decode")

    def _plan(self, scores: Tensor, target: Any) -> Any:
        return target if isinstance(target, self._plan_type) else self.prepare(scores, target)

    def _prepared(self, plan: Any) -> Any:
        return V.check_plan(self, plan, self._plan_type, ".best() and .decode()", "plan")


def values_dtype(scores: Tensor) -> torch.dtype:
    """The floating dtype metric values of ``scores`` are computed in: float64 for float64 scores,
    float32 otherwise. The built-in decoders' plans carry it as ``plan.dtype`` (the zoo's
    evaluators compute in it), so float32 scores never need float64, which some devices (Apple
    MPS) lack, and float64 scores keep float64's precision."""
    return torch.float64 if scores.dtype == torch.float64 else torch.float32


def _missing(obj: object, method: str) -> TypeError:
    return TypeError(f"{type(obj).__name__} subclasses uniloss.decoders.Decoder but does not define {method}()")


# --------------------------------------------------------------------------- tournaments
# Every pair of m items in a row: pair p compares item k[p] (the later) with item j[p] (the
# earlier), c = s_k - s_j, so bit 1 means "the later item wins" and an exact tie goes to the
# earlier item (as torch.argmax and a stable descending sort break ties).


_TRIU_PAIRS = TensorCache()


def _triu_pairs(m: int, device: torch.device) -> Tuple[Tensor, Tensor]:
    return _TRIU_PAIRS.get((m, str(device)), lambda: tuple(torch.triu_indices(m, m, 1, device=device)))


def _tournament(rows: Tensor) -> Tensor:
    """``[G, P]`` comparisons ``s_k - s_j`` of every pair ``j < k`` of each row of ``rows [G, m]``."""
    j, k = _triu_pairs(rows.shape[1], rows.device)
    return rows[:, k] - rows[:, j]


def _tournament_best(hard: Tensor, winner: Tensor, m: int) -> Tensor:
    """``[G, P]``: ``winner`` (``[G]``) beats every item; other pairs keep their current bits."""
    j, k = _triu_pairs(m, hard.device)
    w = winner[:, None]
    return torch.where(k[None] == w, True, torch.where(j[None] == w, False, hard))


def _wins(bits: Tensor, num_rows: int, m: int) -> Tensor:
    """``[t, m, G]`` float: how many comparisons item ``i`` of row ``g`` wins, class-major so that
    reductions over the items (argmax, sort) run over an outer dimension, which is fast."""
    j, k = _triu_pairs(m, bits.device)
    b = bits.reshape(bits.shape[0], num_rows, j.numel()).transpose(1, 2).float()
    wins = b.new_zeros(bits.shape[0], m, num_rows)
    wins.index_add_(1, k, b)
    wins.index_add_(1, j, 1.0 - b)
    return wins


def _first_argmax(wins: Tensor) -> Tensor:
    """``[t, G]``: the first item with the most wins (``argmax`` over dim 1 of ``[t, m, G]``),
    through ``amax``, which is far faster than ``argmax`` over an outer dimension on CPU."""
    m = wins.shape[1]
    if m <= 2:
        return (wins[:, -1] > wins[:, 0]).long()  # m == 1: always 0
    hit = wins == wins.amax(1, keepdim=True)
    first = torch.arange(m, 0, -1, dtype=wins.dtype, device=wins.device)[None, :, None]
    return m - (hit * first).amax(1).long()


# --------------------------------------------------------------------------- classes per row


@dataclass(frozen=True)
class _ClassPlan:
    target: Tensor  # the labels as given: what the evaluator receives
    labels: Tensor  # [G] int64, the label of each row (sample or pixel)
    num_classes: int
    hard: Optional[Tensor] = None  # pairs="all": [G, P] current bits
    cols: Optional[Tensor] = None  # pairs="target": [G, m-1] other classes, class order
    ranked: Optional[Tensor] = None  # pairs="target": [G, m-1] other classes, best score first ([G, 1] for Argmax)
    dtype: torch.dtype = torch.float32  # values_dtype(scores)
    right: Optional[Tensor] = None  # pairs="target": [G] bool, the label beats every other class now


def ranked_others(rows: Tensor, cols: Tensor, everyone: bool = True) -> Tensor:
    """``[G, m - 1]``: each row's other classes ``cols`` by its scores ``rows [G, m]``, best first
    (ties in ``cols``' order); or, without ``everyone``, ``[G, 1]`` the best alone, the same
    class (an argmax of the others, the first of those tied), without sorting them."""
    if cols.shape[1] < 2:  # (two classes: one other class, already in order)
        return cols
    others = rows.gather(1, cols)
    if everyone:
        return cols.gather(1, others.sort(dim=1, descending=True, stable=True).indices)
    return cols.gather(1, others.argmax(1, keepdim=True))


class _ClassDecoder(Decoder):
    """Shared by :class:`Argmax`, :class:`TopK` and :class:`PixelArgmax`: class scores on dim 1."""

    _ranks_every_class = True  # (pairs="target") the plan ranks every other class; Argmax reads only the best

    _plan_type = _ClassPlan
    _spatial: bool = False  # PixelArgmax: scores [n, C, *spatial]

    def __init__(self, pairs: str = "all", num_classes: Optional[int] = None) -> None:
        self.pairs = _check_choice("pairs", pairs, ("all", "target"))
        self.num_classes = None if num_classes is None else V.check_count("num_classes", num_classes, allow_zero=False)

    def _repr_args(self) -> str:
        extra = "" if self.num_classes is None else f", num_classes={self.num_classes}"
        return f"pairs={self.pairs!r}{extra}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._repr_args()})"

    @staticmethod
    def _rows(scores: Tensor) -> Tensor:
        return scores.movedim(1, -1).reshape(-1, scores.shape[1])

    def check(self, scores: Tensor, target: Any) -> None:
        validate_scores(scores)
        if self._spatial:
            if scores.dim() < 3:
                raise ValueError(
                    f"Expected `scores` of shape [n, C, H, W] (or [n, C, *spatial]), but got shape {tuple(scores.shape)}"
                )
        else:
            V.check_shape("scores", scores, (None, None), "[n, C] (samples x classes)")
        c = scores.shape[1]
        if self.num_classes is not None and c != self.num_classes:
            raise ValueError(f"Expected `scores` with {self.num_classes} classes on dim 1, but got shape {tuple(scores.shape)}")
        if isinstance(target, _ClassPlan):
            return
        V.check_tensor("target", target)
        V.check_same_device(scores=scores, target=target)
        expected = (scores.shape[0],) + tuple(scores.shape[2:])
        V.check_shape("target", target, expected, f"{list(expected)} (one label per row of scores)")
        V.check_integer_labels("target", target, 0, c)

    def prepare(self, scores: Tensor, target: Any, generator: Optional[torch.Generator] = None) -> _ClassPlan:
        if isinstance(target, _ClassPlan):
            return target
        rows = self._rows(scores.detach())
        labels = target.reshape(-1).long()
        m = rows.shape[1]
        if self.pairs == "all":
            return _ClassPlan(target, labels, m, hard=_tournament(rows) > 0, dtype=values_dtype(scores))
        cols = other_classes(labels, m)
        ranked = ranked_others(rows, cols, everyone=self._ranks_every_class)
        right = (rows.gather(1, labels[:, None]) > rows.gather(1, ranked[:, :1]))[:, 0] if m > 1 else None
        return _ClassPlan(target, labels, m, cols=cols, ranked=ranked, dtype=values_dtype(scores), right=right)

    def comparisons(self, scores: Tensor, plan: Any) -> Tensor:
        plan = self._plan(scores, plan)
        rows = self._rows(scores)
        if self.pairs == "all":
            return _tournament(rows).reshape(-1)
        return row_differences(rows, plan.labels, plan.cols)  # MulticlassAccuracy's layout and kernel

    def best(self, plan: Any) -> Tensor:
        plan = self._prepared(plan)
        if self.pairs == "all":
            return _tournament_best(plan.hard, plan.labels, plan.num_classes).reshape(-1)
        return torch.ones(plan.cols.numel(), dtype=torch.bool, device=plan.labels.device)

    def runs(self, plan: Any) -> Optional[int]:
        """``pairs="target"``: one run per row, its ``C - 1`` comparisons with the label."""
        plan = self._prepared(plan)
        return None if self.pairs == "all" or plan.num_classes < 2 else plan.num_classes - 1

    def _target_losses(self, bits: Tensor, plan: _ClassPlan) -> Tensor:
        """pairs="target": ``[t, G]`` how many other classes beat each row's label."""
        t, g, m = bits.shape[0], plan.labels.numel(), plan.num_classes
        if m == 2:  # one comparison per row (a reduction over a size-1 dimension is slow)
            return (~bits).reshape(t, g).long()
        return (~bits).reshape(t, g, m - 1).sum(-1)


class Argmax(_ClassDecoder):
    r"""Predicted labels ``argmax_j s_ij`` from comparisons of class scores.

    Shapes: ``scores`` ``[n, C]`` float; ``target`` ``[n]`` int64 in ``[0, C)``. Decodes bits
    ``[t, l]`` into labels ``[t, n]`` (int64).

    Args:
        pairs: ``"all"`` (default) compares every pair of classes of a sample,
            ``C(C-1)/2`` comparisons per sample: pair ``(j, k)``, ``j < k``, in
            ``torch.triu_indices`` order, is ``c = s_k - s_j``. The label is the class with the
            most wins (Copeland); from inconsistent bits (cycles) several may tie, and the lowest
            class index wins the tie. The best configuration: the target beats every class;
            pairs without the target keep their current bits.

            ``"target"`` compares only the target with every other class, ``C-1`` per sample:
            ``c = s_y - s_j`` for ``j != y`` in class order -- exactly the layout of
            :class:`uniloss.MulticlassAccuracy` (paper, sec. 3.2). The label is the target when
            it beats every other class (strictly: an exact tie counts against it), otherwise the
            highest-scoring other class of the current scores. Exact for every evaluator; evaluators that only ask "is the prediction
            right?" (accuracy, balanced accuracy) lose nothing by it. It also trains better:
            macro-F1 on imbalanced digits reached 97-98% with ``"target"`` and 71-75% with
            ``"all"`` (``docs/results/zoo``), the bits between wrong classes diluting the
            interpolation, so :mod:`uniloss.zoo` uses ``"target"``.
        num_classes: if given, ``scores`` must have this many columns.

    Example::

        >>> import torch
        >>> from uniloss.decoders import Argmax
        >>> scores = torch.tensor([[0.2, 0.9, 0.1], [0.5, 0.1, 0.4]])
        >>> dec = Argmax()
        >>> plan = dec.prepare(scores, torch.tensor([1, 2]))
        >>> dec.decode((dec.comparisons(scores, plan) > 0)[None], plan)
        tensor([[1, 0]])
        >>> dec.decode(dec.best(plan)[None], plan)                 # best decodes to the target
        tensor([[1, 2]])
    """

    _ranks_every_class = False  # (its plan's `ranked` holds each row's best other class alone)

    def toggled(self, plan: Any) -> Optional[Tuple[Tensor, Tensor]]:
        """``pairs="target"``: each row's current label and its label when the row alone toggles
        (right: its highest-scoring other class; wrong: its target); ``None`` for
        ``pairs="all"``."""
        plan = self._prepared(plan)
        if self.pairs == "all" or plan.num_classes < 2 or plan.right is None:
            return None
        first = plan.ranked[:, 0]
        return torch.where(plan.right, plan.labels, first), torch.where(plan.right, first, plan.labels)

    def decode(self, bits: Tensor, plan: Any) -> Tensor:
        plan = self._prepared(plan)
        t, m = bits.shape[0], plan.num_classes
        if self.pairs == "all" and m == 2:  # one pair per row: its bit is "class 1 wins"
            labels = bits.reshape(t, -1).long()
        elif self.pairs == "all":
            labels = _first_argmax(_wins(bits, plan.labels.numel(), m))
        elif m == 2:  # the label if its one comparison is won, else the other class
            labels = (plan.labels.bool()[None] ^ ~bits.reshape(t, -1)).long()
        else:
            return self.decode_losses(self._target_losses(bits, plan), plan)
        return labels.reshape((t,) + tuple(plan.target.shape))

    def decode_losses(self, losses: Tensor, plan: Any) -> Tensor:
        """``pairs="target"``: the labels ``[t, *target.shape]`` from ``losses [t, G]``, each row's
        number of lost comparisons (its run's 0-bits), all that :meth:`decode` reads of the bits:
        a row without a loss decodes to its label, any other to its highest-scoring other class
        now (the first of those tied). Lets a caller that holds those counts (per-run 0-bit counts,
        see :class:`uniloss.Structure`) skip the bits."""
        plan = self._prepared(plan)
        if self.pairs == "all":
            raise ValueError("Argmax(pairs='all') decodes from the tournament's wins: use decode(bits, plan)")
        fallback = plan.ranked[:, 0] if plan.num_classes > 1 else plan.labels
        labels = torch.where(losses == 0, plan.labels, fallback)
        return labels.reshape((losses.shape[0],) + tuple(plan.target.shape))


class PixelArgmax(Argmax):
    r"""Label maps: :class:`Argmax` at every pixel (semantic segmentation).

    Shapes: ``scores`` ``[n, C, H, W]`` (or ``[n, C, *spatial]``) float; ``target``
    ``[n, H, W]`` int64 in ``[0, C)``. Decodes into label maps ``[t, n, H, W]``.

    ``pairs="all"`` (default): ``C(C-1)/2`` comparisons per pixel, pixel-major (pixels in
    ``[n, H, W]`` row-major order, then pairs as in :class:`Argmax`); ``pairs="target"``:
    ``C-1`` per pixel. Decoding and ties follow :class:`Argmax`. For two classes both are one
    comparison per pixel.

    Example::

        >>> import torch
        >>> from uniloss.decoders import PixelArgmax
        >>> scores = torch.randn(2, 3, 4, 5)
        >>> dec = PixelArgmax()
        >>> plan = dec.prepare(scores, torch.zeros(2, 4, 5, dtype=torch.long))
        >>> maps = dec.decode((dec.comparisons(scores, plan) > 0)[None], plan)[0]
        >>> torch.equal(maps, scores.argmax(1))
        True
    """

    _spatial = True


class TopK(_ClassDecoder):
    r"""Top-k sets: the ``k`` highest-scoring classes of each sample, as a membership mask.

    Shapes: ``scores`` ``[n, C]`` float; ``target`` ``[n]`` int64 in ``[0, C)``. Decodes into
    a bool mask ``[t, n, C]`` with ``min(k, C)`` classes set per sample.

    Args:
        k: the set size (> 0).
        pairs: ``"all"`` (default): every pair of classes, as :class:`Argmax`; the set is the
            ``k`` classes with the most wins, ties to the lower class index. ``"target"``: the
            target against every other class (``C-1`` per sample, as
            :class:`uniloss.MulticlassAccuracy`); the target is in the set iff fewer than ``k``
            classes beat it, and the other members are the best other classes of the current
            scores. Top-k accuracy needs only ``"target"``.
        num_classes: if given, ``scores`` must have this many columns.

    Example::

        >>> import torch
        >>> from uniloss.decoders import TopK
        >>> scores = torch.tensor([[0.1, 0.7, 0.3, 0.9]])
        >>> dec = TopK(2)
        >>> plan = dec.prepare(scores, torch.tensor([2]))
        >>> dec.decode((dec.comparisons(scores, plan) > 0)[None], plan)
        tensor([[[False,  True, False,  True]]])
    """

    def __init__(self, k: int, pairs: str = "all", num_classes: Optional[int] = None) -> None:
        self.k = V.check_count("k", k, allow_zero=False)
        super().__init__(pairs, num_classes)

    def _repr_args(self) -> str:
        return f"{self.k}, " + super()._repr_args()

    def decode(self, bits: Tensor, plan: Any) -> Tensor:
        plan = self._prepared(plan)
        t, g, m, k = bits.shape[0], plan.labels.numel(), plan.num_classes, self.k
        if self.pairs == "all":
            top = _wins(bits, g, m).sort(dim=1, descending=True, stable=True).indices[:, :k]
            mask = torch.zeros(t, m, g, dtype=torch.bool, device=bits.device).scatter_(1, top, True).transpose(1, 2)
        else:
            inside = (self._target_losses(bits, plan) < k)[..., None]  # [t, G, 1]
            ranked = plan.ranked
            others = torch.zeros(g, m, dtype=torch.bool, device=bits.device).scatter_(1, ranked[:, : k - 1], True)
            kth = torch.zeros_like(others)
            if k - 1 < m - 1:
                kth.scatter_(1, ranked[:, k - 1 : k], True)
            label = torch.zeros_like(others).scatter_(1, plan.labels[:, None], True)
            mask = others[None] | (label[None] & inside) | (kth[None] & ~inside)
        return mask.reshape((t,) + tuple(plan.target.shape) + (m,))


# --------------------------------------------------------------------------- threshold


@dataclass(frozen=True)
class _ThresholdPlan:
    target: Tensor  # bool, the scores' shape
    dtype: torch.dtype = torch.float32  # values_dtype(scores)


class Threshold(Decoder):
    r"""Binary predictions ``[s > threshold]``, one comparison ``c = s - threshold`` per score.

    Shapes: ``scores`` any shape (``[n]`` for binary classification, ``[n, L]`` for multi-label)
    float; ``target`` the same shape, values in {0, 1} (bool, int or float) -- or ``[n]`` with
    scores ``[n, 1]`` (a network's single output, as :class:`uniloss.AveragePrecision` takes).
    Decodes into a bool tensor ``[t, *target.shape]``; ``l = scores.numel()``, in row-major order. The best
    configuration is the target itself. A score exactly at the threshold decodes to 0.

    Example::

        >>> import torch
        >>> from uniloss.decoders import Threshold
        >>> dec = Threshold(0.5)
        >>> scores = torch.tensor([0.2, 0.9, 0.6])
        >>> plan = dec.prepare(scores, torch.tensor([0, 1, 0]))
        >>> dec.decode((dec.comparisons(scores, plan) > 0)[None], plan)
        tensor([[False,  True,  True]])
    """

    _plan_type = _ThresholdPlan

    def __init__(self, threshold: float = 0.0) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or threshold != threshold or abs(threshold) == float("inf"):
            raise ValueError(f"Expected `threshold` to be a finite number, but got {threshold!r}")
        self.threshold = float(threshold)

    def __repr__(self) -> str:
        return f"Threshold({self.threshold})"

    def check(self, scores: Tensor, target: Any) -> None:
        validate_scores(scores)
        if isinstance(target, _ThresholdPlan):
            return
        V.check_tensor("target", target)
        V.check_same_device(scores=scores, target=target)
        V.check_target_like_scores("target", target, scores)
        V.check_binary_labels("target", target)

    def prepare(self, scores: Tensor, target: Any, generator: Optional[torch.Generator] = None) -> _ThresholdPlan:
        if isinstance(target, _ThresholdPlan):
            return target
        return _ThresholdPlan(target != 0, values_dtype(scores))

    def comparisons(self, scores: Tensor, plan: Any) -> Tensor:
        return (scores - self.threshold).reshape(-1)

    def best(self, plan: Any) -> Tensor:
        return self._prepared(plan).target.reshape(-1)

    def decode(self, bits: Tensor, plan: Any) -> Tensor:
        plan = self._prepared(plan)
        return bits.reshape((bits.shape[0],) + tuple(plan.target.shape))


# --------------------------------------------------------------------------- ranking


class RankingTarget(NamedTuple):
    """Ground truth for :class:`Ranking`: a relevance per item and the query it belongs to.

    Attributes:
        relevance: ``[n]`` float or int >= 0 (0 = irrelevant; graded relevance allowed).
        query: ``[n]`` integer query (group) ids, any values, items of a query need not be
            contiguous; ``None`` puts every item in one query.
    """

    relevance: Tensor
    query: Optional[Tensor] = None


@dataclass(frozen=True)
class _RankingPlan:
    target: RankingTarget  # relevance [n], query [n] int64 in [0, num_queries)
    num_queries: int
    a: Tensor  # [l] item ranked above in comparison p: c = s_a - s_b
    b: Tensor  # [l]
    start: Tensor  # [n] first slot of each item's query in the query-blocked slot order
    grade: Tensor  # [n] int64, 0 = most relevant (pruned modes)
    num_grades: int
    best: Tensor  # [l] bool
    dtype: torch.dtype = torch.float32  # values_dtype(scores)
    scores: Optional[Tensor] = None  # [n] the scores prepared with, detached (a metric's value on ties)
    padding: Optional[Tensor] = None  # a static layout's padding (see _decomposition.StaticLayout)
    binary: bool = False  # relevance that is 0/1 (or read as such: pairs="binary"): margins for the pull


def _dense_ids(values: Tensor) -> Tensor:
    """``torch.unique(values, return_inverse=True)[1]`` (ids ``0..G-1`` in sorted order of the
    values) without the unique values, whose number a GPU's host would wait for."""
    ordered, order = torch.sort(values, stable=True)
    new = torch.ones_like(ordered, dtype=torch.bool)
    new[1:] = ordered[1:] != ordered[:-1]
    return torch.empty_like(order).scatter_(0, order, torch.cumsum(new, 0) - 1)


def _block_ends(new_block: Tensor) -> Tensor:
    """For each position of a sequence cut into blocks (``new_block``: ``True`` at each block's
    first position), the exclusive end of its block."""
    n = new_block.numel()
    index = torch.arange(n, device=new_block.device)
    last = torch.ones_like(new_block)
    last[:-1] = new_block[1:]
    ends = torch.where(last, index + 1, n)
    return ends.flip(0).cummin(0).values.flip(0)


def _pairs_static(query: Tensor, key: Tensor, num_bits: int):
    """:func:`_pairs_within` in a static layout of ``num_bits`` pairs (see
    :class:`uniloss._decomposition.StaticLayout`): ``(a, b, padding, number of pairs)``, the pairs
    first and in :func:`_pairs_within`'s order, the indices of the padding clamped into range."""
    n = query.numel()
    device = query.device
    order = torch.sort(key, stable=True).indices
    order = order[torch.sort(query[order], stable=True).indices]
    q, k = query[order], key[order]
    new_query = torch.ones(n, dtype=torch.bool, device=device)
    new_query[1:] = q[1:] != q[:-1]
    new_block = new_query.clone()
    new_block[1:] |= k[1:] != k[:-1]
    block_end = _block_ends(new_block)
    count = _block_ends(new_query) - block_end  # the items of the query after the item's block
    ends = torch.cumsum(count, 0)
    num_valid = ends[-1]
    bit = torch.arange(num_bits, device=device)
    first = torch.searchsorted(ends, bit, right=True).clamp_max_(n - 1)
    second = (block_end[first] + bit - (ends - count)[first]).clamp_max_(n - 1)
    return order[first], order[second], bit >= num_valid, num_valid


def _pairs_within(query: Tensor, key: Tensor, num_queries: int) -> Tuple[Tensor, Tensor]:
    """Every pair ``(i, j)`` of items of one query with ``key[i] < key[j]``, without a loop.

    Items are ordered by (query, key, index); the pairs come ordered by ``i`` then ``j`` in that
    order (for one query and binary keys: positives in index order x negatives in index order).
    """
    n = query.numel()
    device = query.device
    if n == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty
    order = torch.sort(key, stable=True).indices
    order = order[torch.sort(query[order], stable=True).indices]
    q, k = query[order], key[order]
    new_block = torch.ones(n, dtype=torch.bool, device=device)
    new_block[1:] = (q[1:] != q[:-1]) | (k[1:] != k[:-1])
    block = torch.cumsum(new_block.long(), 0) - 1
    block_end = torch.cumsum(torch.bincount(block), 0)[block]  # exclusive, in sorted positions
    query_end = torch.cumsum(torch.bincount(q, minlength=num_queries), 0)[q]
    count = query_end - block_end
    ia = torch.repeat_interleave(torch.arange(n, device=device), count)
    run_start = torch.cumsum(count, 0) - count
    ib = block_end[ia] + torch.arange(ia.numel(), device=device) - run_start[ia]
    return order[ia], order[ib]


def _segment_count(bits: Tensor, index: Tensor, size: int) -> Tensor:
    """``[t, size]`` int64: how many of the columns of ``bits [t, m]`` (bool) are set per ``index
    [m]``, counted in int32 (a column count below ``2^31``; 1.6x faster than in int64 over
    ``[257, 130816]`` bits, the chain of Spearman's rho at 512 items)."""
    counts = torch.zeros(bits.shape[0], size, dtype=torch.int32, device=bits.device)
    return counts.index_add_(1, index, bits.to(torch.int32)).long()


def sort_within(key: Tensor, block: Tensor) -> Tensor:
    """Per row of ``key [t, n]``: each item's place (0-based) among the items of its block
    (``block [n]``, any integer ids), ordered by key, then by index. No host synchronisation."""
    t, n = key.shape
    order = torch.sort(key, dim=1, stable=True).indices
    order = order.gather(1, torch.sort(block[order], dim=1, stable=True).indices)
    ordered = block[order]
    index = torch.arange(n, device=key.device).expand(t, n)
    new = torch.ones_like(ordered, dtype=torch.bool)
    new[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    start = torch.where(new, index, 0).cummax(1).values if n else index  # each sorted position's block start
    return torch.empty_like(order).scatter_(1, order, index - start)


def _free_slots(skip: Tensor) -> Tensor:
    """Per row of ``skip [t, n]``: the slot (0-based) each item takes when the items, in column
    order, take one slot each, item ``k`` the ``(skip[k] + 1)``-th still free (``0 <= skip[k] <=
    n - 1 - k``: an inversion table, decoded). Blocks of ``b`` items merge pairwise: the left
    block's slots are counted among those free before it; the right block's, counted among those
    the left left free, become ``r + #{i: left_sorted[i] - i <= r}``. ``log2(n)`` merges, each a
    sort and a search of ``[t, n]``: no pass per item, no host synchronisation.

    Example::

        >>> _free_slots(torch.tensor([[2, 0, 1, 0]]))  # 0 takes slot 2; 1 slot 0; 2 the 2nd of 1, 3
        tensor([[2, 0, 3, 1]])
    """
    t, n = skip.shape
    size = 1 << max(n - 1, 0).bit_length()  # padded items (skip 0) come last and take the slots past n
    slots = torch.cat([skip, skip.new_zeros(t, size - n)], 1)
    b = 1
    while b < size:
        blocks = slots.view(t, size // (2 * b), 2, b)
        left, right = blocks[:, :, 0], blocks[:, :, 1].contiguous()
        taken = left.sort(-1).values - torch.arange(b, device=skip.device)  # free slots before each
        blocks[:, :, 1] = right + torch.searchsorted(taken, right, right=True)
        b *= 2
    return slots[:, :n]


class Ranking(Decoder):
    r"""Ranks of items within queries (or the whole batch), from pairwise comparisons.

    Shapes: ``scores`` ``[n]`` or ``[n, 1]`` float; ``target`` a :class:`RankingTarget`
    ``(relevance [n] >= 0, query [n] integer ids or None)`` or just the relevance ``[n]`` (one
    query). Decodes into ranks ``[t, n]`` int64: each item's 0-based position in its query's
    ranking (0 = top), a permutation of ``0..n_q-1`` per query.

    Args:
        pairs: which pairs of items of a query are compared (``c = s_a - s_b``, bit 1 = ``a``
            above ``b``):

            * ``"relevance"`` (default): pairs of different relevance, ``a`` the more relevant;
              with 0/1 relevance the paper's positive x negative pairs for AP, in its layout
              (positives in index order, each against the negatives in index order).
            * ``"binary"``: relevant (``> 0``) x irrelevant pairs only; grades are ignored.
            * ``"all"``: every pair ``i < j`` of a query, ``a = j``, ``b = i`` (so exact ties keep
              the earlier item above, as a stable sort does).

            Pruned pairs cannot change a metric that looks only at the relevance in rank order
            (AP, AUROC, NDCG, precision/recall@k, MRR): swapping two items of one grade does not
            change it. The best configuration: every more relevant item above every less relevant
            one (``"all"``: pairs of equal relevance keep their current bits).

    Decoding: with ``"all"`` items are ranked by their number of wins (Copeland), ties to the
    lower index. With pruned pairs the grades are placed from the most relevant down: an item's
    position among the slots that more relevant grades left free is the number of less
    relevant items that beat it plus the number of its own grade placed before it (ordered by
    that number, then by index). On bits from real scores both give the ranking of a stable
    descending sort, up to the order among items of one grade that were not compared; from
    inconsistent bits they still give a permutation, and with 0/1 relevance the positives sit
    where :class:`uniloss.AveragePrecision` puts them (so AP, AUROC, precision@k... agree with the
    paper's AP decomposition on every configuration). Decoding loops in Python over the distinct
    relevance grades (not over items, pairs or anchors): prefer few grades.

    ``num_grades`` (``pairs="relevance"``): the relevance is an integer in ``[0, num_grades)``, so
    the grades need not be counted. Inside a loss call the pairs are then laid out in a static
    layout (see :class:`uniloss._decomposition.StaticLayout`; ``"binary"``, ``"all"`` and a bool
    relevance always are): no host synchronisation with ``validate_args=False``. Graded
    relevance without it counts its grades and pairs on the host.

    Example::

        >>> import torch
        >>> from uniloss.decoders import Ranking, RankingTarget
        >>> scores = torch.tensor([0.3, 0.9, 0.1, 0.5, 0.7])
        >>> target = RankingTarget(torch.tensor([1, 0, 0, 1, 0]), torch.tensor([0, 0, 0, 1, 1]))
        >>> dec = Ranking()
        >>> plan = dec.prepare(scores, target)
        >>> dec.comparisons(scores, plan)          # query 0: 0 vs 1, 0 vs 2; query 1: 3 vs 4
        tensor([-0.6000,  0.2000, -0.2000])
        >>> dec.decode((dec.comparisons(scores, plan) > 0)[None], plan)
        tensor([[1, 0, 2, 1, 0]])
    """

    _plan_type = _RankingPlan

    def __init__(self, pairs: str = "relevance", *, num_grades: Optional[int] = None) -> None:
        self.pairs = _check_choice("pairs", pairs, ("relevance", "binary", "all"))
        self.num_grades = None if num_grades is None else V.check_count("num_grades", num_grades, allow_zero=False)

    def __repr__(self) -> str:
        extra = "" if self.num_grades is None else f", num_grades={self.num_grades}"
        return f"Ranking(pairs={self.pairs!r}{extra})"

    @staticmethod
    def _flat(scores: Tensor) -> Tensor:
        return scores.reshape(-1) if scores.dim() == 2 else scores

    @staticmethod
    def _split(target: Any) -> Tuple[Any, Any]:
        if isinstance(target, tuple):
            if len(target) != 2:
                raise TypeError(
                    f"Expected `target` to be a RankingTarget (relevance, query) or a relevance tensor, "
                    f"but got a tuple of {len(target)}"
                )
            return target[0], target[1]
        return target, None

    def check(self, scores: Tensor, target: Any) -> None:
        validate_scores(scores)
        if scores.dim() not in (1, 2) or scores.dim() == 2 and scores.shape[1] != 1:
            raise ValueError(f"Expected `scores` of shape [n] or [n, 1], but got shape {tuple(scores.shape)}")
        if isinstance(target, _RankingPlan):
            return
        relevance, query = self._split(target)
        n = scores.shape[0]
        V.check_tensor("target.relevance", relevance)
        V.check_same_device(scores=scores, relevance=relevance, query=query)
        V.check_shape("target.relevance", relevance, (n,), f"[{n}] (one relevance per score)")
        if relevance.dtype == torch.bool:
            relevance = relevance.long()
        if relevance.is_floating_point():
            V.check_finite("target.relevance", relevance)
        if relevance.numel() and float(relevance.min()) < 0:
            raise ValueError(f"Expected `target.relevance` to be >= 0, but got minimum {relevance.min().item()}")
        if self.num_grades is not None and self.pairs == "relevance" and relevance.numel():
            whole = relevance == relevance.round() if relevance.is_floating_point() else torch.ones((), dtype=torch.bool)
            if not bool(whole.all()) or float(relevance.max()) >= self.num_grades:
                raise ValueError(
                    f"Expected `target.relevance` to hold integers in [0, {self.num_grades}) (num_grades="
                    f"{self.num_grades}), but got values up to {relevance.max().item()}"
                )
        if query is not None:
            V.check_tensor("target.query", query)
            V.check_shape("target.query", query, (n,), f"[{n}] (one query id per score)")
            if query.is_floating_point() or query.is_complex() or query.dtype == torch.bool:
                raise TypeError(f"Expected `target.query` to be an integer tensor, but got dtype {query.dtype}")

    def prepare(self, scores: Tensor, target: Any, generator: Optional[torch.Generator] = None) -> _RankingPlan:
        if isinstance(target, _RankingPlan):
            return target
        relevance, query = self._split(target)
        n = relevance.numel()
        device = relevance.device
        binary = relevance.dtype == torch.bool
        if binary:
            relevance = relevance.long()
        layout = static_layout()
        grades = self._static_grades(relevance, binary)
        if n and grades is not None and layout is not None and layout.claim(
                self, n * n // 4 if self.pairs == "binary" else n * (n - 1) // 2):
            return self._static(scores, relevance, query, grades, layout)
        if query is None:
            query = torch.zeros(n, dtype=torch.long, device=device)
            num_queries = 1 if n else 0
        else:
            _, query = torch.unique(query, return_inverse=True)
            num_queries = int(query.max()) + 1 if n else 0
        counts = torch.bincount(query, minlength=num_queries)
        start = (torch.cumsum(counts, 0) - counts)[query]
        if self.pairs == "all":
            grade = torch.zeros(n, dtype=torch.long, device=device)
            earlier, later = _pairs_within(query, torch.arange(n, device=device), num_queries)
            a, b = later, earlier
            s = self._flat(scores.detach())
            best = torch.where(relevance[a] == relevance[b], s[a] - s[b] > 0, relevance[a] > relevance[b])
        else:
            # The grades of the relevance as it is (integers as int64, floats in their own dtype):
            # no float64 copy (MPS has none), the same grades.
            if self.pairs == "binary":
                key = (relevance > 0).long()
            else:
                key = relevance if relevance.is_floating_point() else relevance.long()
            _, grade = torch.unique(-key, return_inverse=True)  # 0 = most relevant
            grade = grade.reshape(-1)
            a, b = _pairs_within(query, grade, num_queries)
            best = torch.ones(a.numel(), dtype=torch.bool, device=device)
        num_grades = int(grade.max()) + 1 if n else 0
        # 0/1 relevance: margins for the pull. As the static layout decides (pairs="binary", a bool
        # relevance, num_grades=2), else from the values (this layout reads the grades on the host anyway).
        if self.pairs == "all":
            binary = False
        elif not binary and self.pairs == "relevance":
            binary = (self.num_grades == 2 if self.num_grades is not None
                      else num_grades <= 2 and bool(((relevance == 0) | (relevance == 1)).all()))
        else:
            binary = True
        return _RankingPlan(RankingTarget(relevance, query), num_queries, a, b, start, grade, num_grades, best,
                            values_dtype(scores), self._flat(scores).detach(), binary=binary)

    def _static_grades(self, relevance: Tensor, binary: bool) -> Optional[Tuple[Tensor, int]]:
        """``(grade [n], number of grades)`` known without reading the relevance on the host, or
        ``None`` (graded relevance without ``num_grades``: the grades are counted). ``binary``:
        the relevance was a bool tensor."""
        if self.pairs == "all":
            return torch.zeros_like(relevance, dtype=torch.long), 1
        if self.pairs == "binary" or binary:
            return (relevance <= 0).long(), 2  # grade 0: relevant
        if self.num_grades is not None:
            return (self.num_grades - 1) - relevance.long(), self.num_grades
        return None

    def _static(self, scores: Tensor, relevance: Tensor, query: Optional[Tensor], grades: Tuple[Tensor, int],
                layout) -> _RankingPlan:
        """The static layout: the pairs of :func:`_pairs_within`, padded to the most there can be
        (``n^2 / 4`` relevant x irrelevant, ``n (n - 1) / 2`` otherwise); query ids counted up to
        ``n`` (the evaluators' per-query tensors have ``n`` columns, the absent queries empty)."""
        n = relevance.numel()
        device = relevance.device
        query = torch.zeros(n, dtype=torch.long, device=device) if query is None else _dense_ids(query)
        counts = torch.zeros(n, dtype=torch.long, device=device).index_add_(0, query, torch.ones_like(query))
        start = (torch.cumsum(counts, 0) - counts)[query]
        grade, num_grades = grades
        s = self._flat(scores.detach())
        if self.pairs == "all":
            a, b, padding, num_valid = _pairs_static(query, torch.arange(n, device=device), layout.num_bits)
            a, b = b, a  # the later item first: c = s_later - s_earlier
            best = torch.where(relevance[a] == relevance[b], s[a] - s[b] > 0, relevance[a] > relevance[b]) | padding
        else:
            a, b, padding, num_valid = _pairs_static(query, grade, layout.num_bits)
            best = torch.ones(a.numel(), dtype=torch.bool, device=device)
        layout.set_valid(num_valid, padding)
        binary = self.pairs != "all" and num_grades == 2  # pairs="binary", a bool relevance, or num_grades=2
        return _RankingPlan(RankingTarget(relevance, query), n, a, b, start, grade, num_grades, best,
                            values_dtype(scores), self._flat(scores).detach(), padding, binary)

    def comparisons(self, scores: Tensor, plan: Any) -> Tensor:
        plan = self._plan(scores, plan)
        s = self._flat(scores)
        if plan.padding is not None:
            return static_pair_differences(s, plan.a, plan.b, plan.padding)
        return index_differences(s, plan.a, plan.b)

    def best(self, plan: Any) -> Tensor:
        return self._prepared(plan).best

    def runs(self, plan: Any) -> Optional[Runs]:
        """Pruned pairs (``"relevance"``, ``"binary"``): one run per item, its comparisons with the
        less relevant items of its query (for 0/1 relevance a positive's with the negatives, as
        :class:`uniloss.AveragePrecision`'s runs); the items of the least relevant grade have an
        empty run. ``"all"`` compares items of one grade too: no runs."""
        plan = self._prepared(plan)
        if self.pairs == "all":
            return None
        return Runs(None, plan.a, None, plan.target.relevance.numel())

    def margins(self, plan: Any) -> Optional[Callable[[Tensor], Tensor]]:
        """Binary relevance (``pairs="binary"``, which reads relevance ``> 0`` as relevant, or 0/1
        relevance; a static layout knows it from a bool relevance or ``num_grades=2``): ``s`` for
        a relevant item, ``-s`` for another (:attr:`uniloss.Structure.margins`: the pull is then
        binary cross-entropy, the usual loss of binary labels). Graded relevance of integer
        grades: one margin per item and grade boundary, :func:`uniloss._pairs.ordinal_margins`
        (the pull is then the all-threshold ordinal logistic loss, binary cross-entropy's
        extension to grades; ``num_grades - 1`` boundaries where ``num_grades`` is given, else up
        to the batch's highest grade). Grades that are not integers, and ``pairs="all"``:
        ``None`` (the pull per run)."""
        plan = self._prepared(plan)
        if self.pairs == "all":
            return None
        relevance = plan.target.relevance
        if plan.binary:
            relevant = relevance > 0
            return lambda scores: binary_margins(self._flat(scores), relevant)
        if self.num_grades is not None:
            boundaries = self.num_grades - 1
        elif relevance.is_floating_point() and not bool((relevance == relevance.round()).all()):
            return None  # (this layout reads the grades on the host anyway)
        else:
            boundaries = int(relevance.max()) if relevance.numel() else 0
        level = relevance.long().clamp_min(0)
        return lambda scores: ordinal_margins(self._flat(scores), level, boundaries)

    def decode(self, bits: Tensor, plan: Any) -> Tensor:
        plan = self._prepared(plan)
        t, n = bits.shape[0], plan.start.numel()
        query = plan.target.query
        if n == 0:
            return torch.zeros(t, 0, dtype=torch.long, device=bits.device)
        a_loses = _segment_count(~bits, plan.a, n)  # less relevant items that beat a (padding: 1)
        if self.pairs == "all":
            wins = bits if plan.padding is None else bits & ~plan.padding
            losses = a_loses + _segment_count(wins, plan.b, n)
            return sort_within(losses, query)
        return self.decode_losses(a_loses, plan)

    def decode_losses(self, a_loses: Tensor, plan: Any) -> Tensor:
        """Ranks ``[t, n]`` from ``a_loses [t, n]``: how many less relevant items beat each item
        (the 0-bits among its comparisons as ``a``), all that :meth:`decode` reads of the bits
        with pruned pairs (``"relevance"``, ``"binary"``). Lets a caller that holds those counts
        (per-run 0-bit counts, see :class:`uniloss.Structure`) skip the bits."""
        plan = self._prepared(plan)
        if self.pairs == "all":
            raise ValueError("Ranking(pairs='all') decodes from wins and losses both: use decode(bits, plan)")
        t, n = a_loses.shape
        query = plan.target.query
        if n == 0:
            return torch.zeros(t, 0, dtype=torch.long, device=a_loses.device)
        # Grades from the most relevant down, an item's slot the (a_loses + place + 1)-th of those
        # its query's more relevant grades left free: the same as taking the items one at a time in
        # the order (query, grade, a_loses, index), each the (a_loses + 1)-th slot still free (the
        # earlier items of its grade took slots before its own), which _free_slots decodes for all
        # items at once in log2(n) merges instead of one pass a grade.
        order = torch.sort(a_loses, dim=1, stable=True).indices
        order = order.gather(1, torch.sort((query * plan.num_grades + plan.grade)[order], dim=1, stable=True).indices)
        slots = _free_slots(a_loses.gather(1, order))
        return torch.empty_like(order).scatter_(1, order, slots) - plan.start


# --------------------------------------------------------------------------- spatial argmax


@dataclass(frozen=True)
class _SpatialPlan:
    target: KeypointTarget
    shape: Tuple[int, ...]  # (n, J, H, W)
    joints: Tensor  # [G] flat (sample, joint) index of each visible joint
    current: Tensor  # [n*J] current argmax pixel of every heatmap
    hard: Optional[Tensor] = None  # all pixels: [G, P] current bits
    winner: Optional[Tensor] = None  # all pixels: [G] pixel nearest the keypoint
    region: Optional[SetPairs] = None  # region: the disc's pixels against the rest (PCK's layout)
    ranks: Optional[SetRanks] = None  # region: the current scores' order, for decoding
    dtype: torch.dtype = torch.float32  # values_dtype(scores)


class SpatialArgmax(Decoder):
    r"""Predicted keypoint coordinates: the argmax pixel of each heatmap.

    Shapes: ``scores`` (heatmaps) ``[n, J, H, W]`` float; ``target`` a
    :class:`uniloss.KeypointTarget` ``(keypoints [n, J, 2] (x, y), visible [n, J],
    normalizer [n])``. Decodes into coordinates ``[t, n, J, 2]`` (``x`` = column, ``y`` = row,
    the keypoints' dtype). Only visible joints have comparisons; invisible ones decode to the
    current argmax.

    Args:
        threshold: ``None`` (default): every pair of pixels of a visible heatmap,
            ``HW(HW-1)/2`` comparisons per joint (small heatmaps only), decoded as
            :class:`Argmax` over the flattened pixels (most wins, ties to the lower pixel index);
            the best configuration: the pixel nearest the keypoint (clamped into the heatmap)
            beats every other. A number: only pixels within ``threshold * normalizer`` of the
            keypoint (positives) against the rest, ``P(HW-P)`` per joint, in the layout of
            :class:`uniloss.PCK` (paper, sec. 4.2: visible joints in order, each positive pixel
            against the joint's negative pixels, both in pixel order). The prediction is the best
            positive (by the current scores) among those that beat every negative, otherwise the
            best negative; exact for evaluators that ask only whether the prediction lies within
            that radius.

    Example::

        >>> import torch, uniloss
        >>> from uniloss.decoders import SpatialArgmax
        >>> heat = torch.zeros(1, 1, 4, 4); heat[0, 0, 2, 3] = 1.0          # argmax x=3, y=2
        >>> target = uniloss.KeypointTarget(torch.tensor([[[3.0, 1.0]]]), torch.tensor([[True]]),
        ...                                 torch.tensor([2.0]))
        >>> dec = SpatialArgmax(threshold=0.5)
        >>> plan = dec.prepare(heat, target)
        >>> dec.decode((dec.comparisons(heat, plan) > 0)[None], plan)
        tensor([[[[3., 2.]]]])
    """

    _plan_type = _SpatialPlan

    def __init__(self, threshold: Optional[float] = None) -> None:
        self.threshold = None if threshold is None else V.check_positive("threshold", threshold)
        self._pck = PCK(threshold=self.threshold if self.threshold is not None else 1.0)

    def __repr__(self) -> str:
        return f"SpatialArgmax(threshold={self.threshold})"

    def check(self, scores: Tensor, target: Any) -> None:
        if isinstance(target, _SpatialPlan):
            validate_scores(scores)
            return
        self._pck.check(scores, target)

    def prepare(self, scores: Tensor, target: Any, generator: Optional[torch.Generator] = None) -> _SpatialPlan:
        if isinstance(target, _SpatialPlan):
            return target
        target = KeypointTarget(*target)
        n, j, h, w = shape = tuple(scores.shape)
        flat = scores.detach().reshape(n * j, h * w)
        joints = (target.visible.reshape(-1) != 0).nonzero().reshape(-1)
        current = flat.argmax(1)
        rows = flat[joints]
        if self.threshold is None:
            xy = target.keypoints.reshape(n * j, 2)[joints].round().long()
            x, y = xy[:, 0].clamp(0, w - 1), xy[:, 1].clamp(0, h - 1)
            return _SpatialPlan(target, shape, joints, current, hard=_tournament(rows) > 0, winner=y * w + x,
                                dtype=values_dtype(scores))
        positive = self._pck.positive_mask(shape, target).reshape(n * j, h * w)[joints]
        region = set_pairs(positive, joints, h * w)
        return _SpatialPlan(target, shape, joints, current, region=region, ranks=set_ranks(rows, positive, region),
                            dtype=values_dtype(scores))

    def comparisons(self, scores: Tensor, plan: Any) -> Tensor:
        plan = self._plan(scores, plan)
        n, j, h, w = plan.shape
        if self.threshold is None:
            return _tournament(scores.reshape(n * j, h * w)[plan.joints]).reshape(-1)
        return plan.region.comparisons(scores)

    def best(self, plan: Any) -> Tensor:
        plan = self._prepared(plan)
        if self.threshold is None:
            return _tournament_best(plan.hard, plan.winner, plan.shape[2] * plan.shape[3]).reshape(-1)
        return torch.ones(plan.region.pairs()[0].numel(), dtype=torch.bool, device=plan.joints.device)

    def runs(self, plan: Any) -> Optional[Tensor]:
        """With ``threshold`` (the region): one run per positive pixel, its comparisons with its
        joint's negatives (:class:`uniloss.PCK`'s runs); the tournament of all pixels has none."""
        plan = self._prepared(plan)
        if self.threshold is None or plan.region is None:
            return None
        return plan.region.run_lengths()

    def decode(self, bits: Tensor, plan: Any) -> Tensor:
        plan = self._prepared(plan)
        n, j, h, w = plan.shape
        t, g = bits.shape[0], plan.joints.numel()
        if self.threshold is None:
            pixel = _first_argmax(_wins(bits, g, h * w))
        else:
            pixel = decode_sets(bits, plan.region, plan.ranks)
        pixels = plan.current.expand(t, n * j).clone()
        pixels[:, plan.joints] = pixel
        dtype = plan.target.keypoints.dtype
        xy = torch.stack([pixels % w, torch.div(pixels, w, rounding_mode="floor")], -1).to(dtype)
        return xy.reshape(t, n, j, 2)
