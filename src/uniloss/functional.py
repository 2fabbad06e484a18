"""Functional form of the UniLoss surrogate: :func:`uniloss`.

The module :class:`uniloss.UniLoss` is a thin wrapper around :func:`uniloss_with_info`.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional, Union, cast

import torch
from torch import Tensor

from . import _validation as V
from ._anchors import AnchorSet, draw_anchors
from ._cache import TensorCache
from ._decomposition import Decomposition, StaticLayout, Structure, prepare_with_layout, validate_scores
from ._function import is_wrapped
from ._interpolation import (
    DISTANCES, INTERPOLATIONS, NEARBY, PULL_PER, PULL_WEIGHTS, STEPS, TEMPERATURE_SCALES, agreement, agreement_slope,
    anchor_weights, bit_costs,
    chain_segments, chain_steps, chain_zeros, comparison_scale, gradient_scale, harmonic_distance, idw_from_sq_distances,
    last_of_runs, pull_cost, rms_unit, run_chain_gains, sq_distances_from_costs, step_factor,
)
from ._limits import EngineLimits, current_limits
from ._metrics import PCK, AveragePrecision, MulticlassAccuracy, all_true, is_all_true
from ._structured import Runs, apply_surrogate, chunked_loss, structured_loss

__all__ = ["uniloss", "uniloss_with_info", "LossInfo"]


@dataclass(frozen=True)
class LossInfo:
    """What one loss call saw, for logging. Tensors are detached scalars unless noted.

    Attributes:
        metric: the exact metric of the batch's hard decisions ``g([c > 0])``, or the
            decomposition's ``batch_metric`` where it has one (AP's equals scikit-learn's on
            tied scores, where ``[c > 0]`` counts a tie as wrong); NaN where the metric is
            undefined on the batch, e.g. AP without a positive. A ``batch_metric`` of a model's
            output is computed when this is first read (modifying the scores in place before
            then raises an error on reading).
        surrogate: the interpolated value ``g~(u)`` (NaN where undefined); with no comparison
            in the batch (one class), the metric itself.
        loss: the returned loss, detached.
        num_bits: ``l``, the number of comparisons the loss saw (a property: on a static layout
            with ``validate_args=False`` the count stays a 0-dim tensor on the device,
            :attr:`bit_count`, until this reads it, which then synchronises once).
        bit_count: ``l`` as an ``int``, or as a 0-dim int64 tensor (see ``num_bits``).
        anchor_values: ``[t]`` metric values at the anchors, best first.
        kinds: ``(name, count)`` of the anchor rows.
        path: the engine path that ran: ``"dense"`` (given dense anchors, or no comparison),
            ``"structured"`` (sampled anchors, the default) or ``"chunked"`` (the structured engine
            block by block, above ``chunk_bits`` comparisons), as :func:`choose_path` picked it;
            ``"chain"`` with ``interpolation="chain"`` (``anchor_values`` then holds the metric
            along the chain; for a metric of whole runs at the ``S + 1`` points where the first
            ``j`` runs are whole; block by block the path is ``"chunked"`` with the chain's kinds),
            ``"runs"`` where that chain took each run's least comparison alone, at any size
            (:attr:`uniloss.Structure.run_least`: accuracy, PCK).
    """

    metric: Tensor
    surrogate: Tensor
    loss: Tensor
    bit_count: Union[int, Tensor]
    anchor_values: Tensor
    kinds: tuple
    path: str = "dense"

    def __getstate__(self) -> "dict[str, Any]":
        """Pickling and copying read the metric (a deferred one holds the call's decomposition)."""
        state = dict(self.__dict__)
        state["_metric"] = _info_metric(self)
        state["_anchor_values"] = _info_values(self)
        return state

    @property
    def num_bits(self) -> int:
        """``l``, the number of comparisons the loss saw, as an ``int``."""
        return self.bit_count if isinstance(self.bit_count, int) else int(self.bit_count)


_HALF = (torch.float16, torch.bfloat16)

_GOOD_ANCHORS = ("sample", "all")
GRAD_SCALES = ("distance", "bounded", "normalized")


#: The loss's options and their defaults, in signature order: :func:`uniloss`,
#: :func:`uniloss_with_info` and :class:`uniloss.UniLoss` take exactly these keywords (the two
#: functions also take ``anchors``, after ``generator``). One table: the module stores, checks and
#: passes them on through it, and tests/test_options.py compares the three signatures with it.
OPTIONS: "dict[str, Any]" = dict(
    num_good=16, num_nearby=16, num_bad=16, temperature=1.0, grad_scale="bounded", generator=None,
    validate_args=True, good_anchors="sample", chunk_bits=None, temperature_scale=None,
    distance="euclidean", pull=1.0, nearby="all", pull_per="sample", step="pull", pull_weights="metric",
    interpolation="chain",
)


def options_of(values: "dict[str, Any]") -> "dict[str, Any]":
    """The options among ``values`` (a signature's ``locals()``), in :data:`OPTIONS`' order."""
    return {name: values[name] for name in OPTIONS}


def check_options(options: "dict[str, Any]") -> None:
    """Argument checks of the options (:data:`OPTIONS`), run once by the module and on every
    functional call with ``validate_args``."""
    for name in ("num_good", "num_nearby", "num_bad"):
        V.check_count(name, options[name])
    V.check_positive("temperature", options["temperature"])
    if isinstance(options["grad_scale"], str) and options["grad_scale"] not in GRAD_SCALES:
        raise ValueError(f"Expected `grad_scale` in {GRAD_SCALES} or a finite number > 0, but got "
                         f"{options['grad_scale']!r}")
    if options["grad_scale"] not in GRAD_SCALES:
        V.check_positive("grad_scale", options["grad_scale"])
    if options["chunk_bits"] is not None:
        V.check_count("chunk_bits", options["chunk_bits"], allow_zero=False)
    if options["pull"] != 0.0:
        V.check_positive("pull", options["pull"], bound=">= 0 (0: no pull, as in the paper's loss)")
    V.check_generator(options["generator"])
    for name, choices in (("good_anchors", _GOOD_ANCHORS), ("temperature_scale", TEMPERATURE_SCALES),
                          ("distance", DISTANCES), ("nearby", NEARBY), ("pull_per", PULL_PER),
                          ("step", STEPS), ("pull_weights", PULL_WEIGHTS), ("interpolation", INTERPOLATIONS)):
        if options[name] not in choices:
            raise ValueError(f"Expected `{name}` in {choices}, but got {options[name]!r}")


def _as_anchor_set(anchors: Union[Tensor, AnchorSet], num_bits: int) -> AnchorSet:
    if isinstance(anchors, AnchorSet):
        if anchors.num_bits != num_bits:
            raise ValueError(
                f"Expected `anchors` over the {num_bits} bits of the comparisons, but got an "
                f"AnchorSet over {anchors.num_bits}"
            )
        return anchors
    bits = V.check_tensor("anchors", anchors)
    if bits.dtype != torch.bool:
        raise TypeError(f"Expected `anchors` to be a bool tensor, but got dtype {bits.dtype}")
    V.check_shape("anchors", bits, (None, num_bits), f"[t, {num_bits}] (t anchors over the l bits)")
    if bits.shape[0] == 0:
        raise ValueError("Expected `anchors` to hold at least one configuration, but got 0 rows")
    return AnchorSet(bits, (("given", bits.shape[0]),))


# The built-in decompositions' check() validates the scores itself.
_CHECKS_SCORES = (AveragePrecision.check, MulticlassAccuracy.check, PCK.check)


@dataclass(frozen=True)
class Plan:
    """What :func:`choose_path` decided, and what it prepared to decide it.

    Attributes:
        path: the engine path to run (:attr:`LossInfo.path`): ``"dense"`` (given dense anchors,
            or no comparison), ``"structured"`` (sampled anchors or a given structured
            :class:`~uniloss.AnchorSet`), ``"chunked"`` (the structured engine block by block:
            more than ``chunk_bits`` comparisons and a :class:`~uniloss.Structure` with
            ``comparisons_block``), ``"chain"`` (``interpolation="chain"``, some comparisons) or
            ``"runs"`` (the chain on the runs' least comparisons, :attr:`uniloss.Structure.run_least`).
        static_bits: the static layout offered to ``prepare`` (the most comparisons it may hold:
            :meth:`EngineLimits.static_bits_for` the device; a decomposition that can also be
            processed block by block claims at most ``chunk_bits``; ``0`` on a CPU, which then gets
            no offer), or ``None``: no offer (given ``anchors``, ``good_anchors="all"``).
        layout: the static layout the comparisons are in (``None``: the exact layout).
        target: the prepared target.
        structure: ``decomposition.structure(target)``.
        comparisons: the ``[l]`` comparisons ``c`` (``None`` on the chunked path, which computes
            them block by block; the runs' ``[S]`` least ones on the path ``"runs"``).
        anchor_set: the given ``anchors`` as an :class:`~uniloss.AnchorSet` (made dense where
            they were drawn for other comparisons); ``None`` for sampled anchors.
        chunk_bits: the call's ``chunk_bits`` (its default from the limits).
        block_bits: the size of a block on the chunked path.
    """

    path: str
    static_bits: Optional[int]
    layout: Optional[StaticLayout]
    target: Any
    structure: Optional[Structure]
    comparisons: Optional[Tensor]
    anchor_set: Optional[AnchorSet]
    chunk_bits: int
    block_bits: int


def choose_path(
    scores: Tensor,
    target: Any,
    decomposition: Decomposition,
    *,
    anchors: Optional[Union[Tensor, AnchorSet]] = None,
    good_anchors: str = "sample",
    chunk_bits: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    limits: Optional[EngineLimits] = None,
    interpolation: str = "chain",
    temperature_scale: Optional[str] = None,
    pull_per: str = "sample",
) -> Plan:
    """The engine's one dispatch: the path of a loss call (see :class:`Plan`), from the limits
    (``limits``, default those in force: :func:`uniloss._limits.current_limits`), the
    decomposition's :class:`~uniloss.Structure` (runs, ``comparisons_block``), a static layout, the
    ``anchors`` argument and the device. It prepares the target on the way (with the static
    layout offered where anchors are sampled) and computes the comparisons unless the path is
    ``"chunked"``: the decision needs their number. ``interpolation="chain"`` takes the
    comparisons as the anchors do (a static layout where offered), goes block by block for a
    metric of whole runs (:attr:`uniloss.Structure.chain_by_runs`), and raises where ``anchors``
    are given or another metric has more than ``chunk_bits`` comparisons in the exact layout. A
    metric of whole runs whose structure gives each run's least comparison
    (:attr:`uniloss.Structure.run_least`) takes the path ``"runs"`` with the chain, at any size:
    ``comparisons`` are then those ``[S]``, unless ``temperature_scale`` or
    ``pull_per="comparison"``, which read every comparison, are asked for."""
    limits = current_limits() if limits is None else limits
    limit = limits.chunk_bits if chunk_bits is None else chunk_bits
    # Sampled anchors: a decomposition whose number of comparisons depends on the target may lay
    # them out in a static layout (shapes from shapes, no host synchronisation; see StaticLayout),
    # at most `limit` comparisons where it could also be processed block by block.
    offer = None
    chain = interpolation == "chain"
    if chain and anchors is not None:
        raise ValueError("interpolation='chain' evaluates the metric along the chain of the comparisons, not at "
                         "anchors: pass anchors=None (or interpolation='anchors')")
    if anchors is None and good_anchors == "sample":
        offer = limits.static_bits_for(scores.device)
    # the path "runs" (if the structure gives run_least) reads no comparison: a layout of runs may be claimed
    runs_only = chain and temperature_scale is None and pull_per != "comparison"
    layout = None if not offer else StaticLayout.for_decomposition(offer, decomposition, limit, runs_only)  # (0: a CPU's, none)
    prepared = prepare_with_layout(decomposition, scores, target, generator, layout)
    if layout is not None and layout.used and layout.runs:  # a layout of runs: the path "runs", or exactly
        structure = decomposition.structure(prepared)
        least = _runs_least(structure, scores)
        if least is not None and least.numel() == layout.num_bits:
            return Plan("runs", offer, layout, prepared, structure, least, None, limit, min(limit, limits.block_bits))
        prepared = prepare_with_layout(decomposition, scores, target, generator, None)  # (a wrapper changed them)
        layout = None
    if layout is not None and not layout.used:
        if layout.claims > 1 and layout.num_bits >= 0:  # two static layouts in one: prepare exactly
            prepared = prepare_with_layout(decomposition, scores, target, generator, None)
        layout = None
    c = None  # the comparisons of a static layout, computed early to check their number
    if layout is not None:
        c = decomposition.comparisons(scores, prepared).reshape(-1)
        if c.numel() != layout.num_bits:  # a wrapper changed the comparisons: lay them out exactly
            prepared = prepare_with_layout(decomposition, scores, target, generator, None)
            layout = c = None
    structure = decomposition.structure(prepared)
    if structure is not None and not isinstance(structure, Structure):
        raise TypeError(f"Expected {type(decomposition).__name__}.structure() to return a uniloss.Structure "
                        f"or None, but got {type(structure).__name__}")
    counts = structure is not None and structure.evaluate_zeros is not None
    if good_anchors == "all" and (not counts or anchors is not None):
        raise ValueError(
            "good_anchors='all' needs sampled anchors and a decomposition whose structure() has "
            f"evaluate_zeros (its metric from per-run counts); {type(decomposition).__name__} has none"
            if not counts else "good_anchors='all' cannot be combined with given `anchors`"
        )
    block_bits = min(limit, limits.block_bits)
    least = _runs_least(structure, scores) if runs_only and anchors is None and layout is None else None
    if least is not None and least.numel():  # (no run: no comparison, the dense path's zero loss)
        return Plan("runs", offer, None, prepared, structure, least, None, limit, block_bits)
    if (layout is None and anchors is None and structure is not None and structure.comparisons_block is not None
            and isinstance(structure.runs, Tensor) and int(structure.runs.sum()) > limit):
        if chain and not structure.chain_by_runs:
            raise ValueError(
                f"interpolation='chain' evaluates {type(decomposition).__name__} on all the comparisons at once (it "
                f"is not a metric of whole runs, Structure.chain_by_runs), and there are more than "
                f"chunk_bits={limit} ({int(structure.runs.sum())}); use interpolation='anchors' (block by block) or "
                "raise chunk_bits")
        return Plan("chunked", offer, None, prepared, structure, None, None, limit, block_bits)
    if c is None:
        c = decomposition.comparisons(scores, prepared).reshape(-1)
    anchor_set = None
    if anchors is not None:
        with torch.no_grad():
            anchor_set = _as_anchor_set(anchors, c.numel())
            if anchor_set.is_structured and not torch.equal(cast(Tensor, anchor_set.hard), c.detach() > 0):
                anchor_set = AnchorSet(anchor_set.dense(), anchor_set.kinds)  # drawn for another c
    dense = c.numel() == 0 or (anchor_set is not None and not anchor_set.is_structured)
    path = "dense" if dense else "chain" if chain else "structured"
    return Plan(path, offer, layout, prepared, structure, c, anchor_set, limit, block_bits)


def _runs_least(structure: Optional[Structure], scores: Tensor) -> Optional[Tensor]:
    """The path ``"runs"``'s comparisons: each run's least one (:attr:`uniloss.Structure.run_least`),
    flat, where the structure gives them; else ``None``."""
    return None if structure is None or structure.run_least is None else structure.run_least(scores).reshape(-1)


def _autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (``torch.is_autocast_enabled(device_type)`` from
    torch 2.4 on; CPU and CUDA before)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()
    except RuntimeError:  # a device type autocast does not know (e.g. "meta"): no autocast there
        return False


def _wide(scores: Tensor) -> Tensor:
    """Half-precision scores in float32, as the comparisons are relaxed (``scores / temperature``
    in float16 overflows at small temperatures: a NaN pull); others as they are."""
    return scores.float() if scores.dtype in _HALF else scores


def _outside_autocast(fn):
    """Run the loss with autocast off on the scores' device, as PyTorch's own losses run in float32
    under it: autocast would otherwise take the engine's products and sums (distances, counts,
    the gradient's closed form) to bfloat16 / float16 and change the loss and gradient (measured:
    1e-4 relative on the gradient, CPU bfloat16). The scores keep their dtype."""

    @functools.wraps(fn)
    def wrapper(scores, *args, **kwargs):
        with _autocast_off(scores.device.type if isinstance(scores, Tensor) else "cpu"):
            return fn(scores, *args, **kwargs)

    return wrapper


def _autocast_off(device_type: str):
    """A context with autocast off on ``device_type`` (nothing to do where it is not on)."""
    return torch.autocast(device_type, enabled=False) if _autocast_enabled(device_type) else contextlib.nullcontext()


@_outside_autocast
def uniloss_with_info(
    scores: Tensor,
    target: Any,
    decomposition: Decomposition,
    *,
    num_good: int = 16,
    num_nearby: int = 16,
    num_bad: int = 16,
    temperature: float = 1.0,
    grad_scale: Union[str, float] = "bounded",
    generator: Optional[torch.Generator] = None,
    anchors: Optional[Union[Tensor, AnchorSet]] = None,
    validate_args: bool = True,
    good_anchors: str = "sample",
    chunk_bits: Optional[int] = None,
    temperature_scale: Optional[str] = None,
    distance: str = "euclidean",
    pull: float = 1.0,
    nearby: str = "all",
    pull_per: str = "sample",
    step: str = "pull",
    pull_weights: str = "metric",
    interpolation: str = "chain",
) -> "tuple[Tensor, LossInfo]":
    """:func:`uniloss`, also returning a :class:`LossInfo` for logging."""
    if not isinstance(decomposition, Decomposition):
        raise TypeError(
            "Expected `decomposition` to be a uniloss.Decomposition, but got "
            f"{type(decomposition).__name__}"
        )
    if validate_args:
        check_options(options_of(locals()))
        if type(decomposition).check not in _CHECKS_SCORES:
            validate_scores(scores)
        decomposition.check(scores, target)
    plan = choose_path(scores, target, decomposition, anchors=anchors, good_anchors=good_anchors,
                       chunk_bits=chunk_bits, generator=generator, interpolation=interpolation,
                       temperature_scale=temperature_scale, pull_per=pull_per)
    target = plan.target
    sign = -1.0 if decomposition.higher_is_better else 1.0
    all_good = num_good if good_anchors == "all" else 0
    if plan.path == "chunked":
        if all_good:
            raise ValueError(
                f"good_anchors='all' is not available block by block (more than chunk_bits={plan.chunk_bits} comparisons)"
            )
        structure = plan.structure
        assert structure is not None and isinstance(structure.runs, Tensor)  # the chunked path: set by choose_path
        margins_of, block_weights, run_pull = _pull_terms(structure, pull, pull_per, pull_weights,
                                                          structure.runs.numel(),
                                                          torch.float32 if scores.dtype in _HALF else scores.dtype)
        loss, values, metric, surrogate, kinds, l = chunked_loss(
            scores, target, decomposition, structure, chunk_bits=plan.block_bits, num_good=num_good,
            num_nearby=num_nearby, num_bad=num_bad, generator=generator,
            temperature=temperature, grad_scale=grad_scale, sign=sign, temperature_scale=temperature_scale,
            distance=distance, pull=pull, nearby=nearby, pull_per=pull_per, rows=_pull_rows(scores, structure),
            step=step, margins=margins_of, run_weights=block_weights, chain=interpolation == "chain", run_pull=run_pull,
        )
        loss = loss.to(scores.dtype)
        return loss, with_exact_metric(LossInfo(metric, surrogate, loss.detach(), l, values, kinds, "chunked"), decomposition, target,
                                       scores)
    assert plan.comparisons is not None  # every path but the chunked one
    if plan.path == "runs":
        loss, info = _runs_loss(scores, plan, decomposition, target, temperature, grad_scale, sign, pull=pull,
                                pull_per=pull_per, pull_weights=pull_weights, step=step, validate_args=validate_args)
        return loss, with_exact_metric(info, decomposition, target, scores)
    c = plan.comparisons
    scores_dtype = c.dtype
    if c.dtype in _HALF:  # relax and interpolate in float32: sigmoid tails and sums need it
        c = c.float()
    l = c.numel()
    static = None  # a static layout: (number of real comparisons, [l] bool padding)
    layout = plan.layout
    if layout is not None:
        assert layout.num_valid is not None  # layout.used
        padding = layout.padding if layout.padding is not None else _padding(l, layout.num_valid)
        static = (layout.num_valid, padding)
    chained = plan.path == "chain"
    # the hard bits: the chain computes them where it needs them (its value alone does not)
    detached = cast(Tensor, None) if chained else c.detach()
    hard = cast(Tensor, None) if chained else detached > 0
    best = None  # the best bits, where drawing the anchors computed them (the pull reuses them)
    scale = (comparison_scale(c, temperature_scale, scores_dtype) if static is None
             else _static_scale(c, static, temperature_scale, scores_dtype))
    if scale is not None:  # a 0-dim tensor from here on, used as the scalar it holds (no host sync)
        temperature = cast(float, temperature * scale)
    wrong: Optional[Tensor]  # hard != best; None for dense anchors
    anchor_set: Optional[AnchorSet]  # None with interpolation="chain" (no anchors drawn)
    with torch.no_grad():
        if anchors is None:
            best = decomposition.best(target)
            if best.dim() != 1 or best.dtype != torch.bool or best.device != c.device:
                best = best.reshape(-1).to(device=c.device, dtype=torch.bool)
            if validate_args and best.numel() != l:
                raise ValueError(
                    f"{type(decomposition).__name__}.best() returned {best.numel()} bits but "
                    f"comparisons() returned {l}"
                )
            wrong = None if chained else hard != best
            good_flips = 1 if plan.structure is None else min(plan.structure.good_flips, max(l, 1))
            anchor_set = None if chained else draw_anchors(
                best, hard, cast(Tensor, wrong), num_good=0 if all_good else num_good, num_nearby=num_nearby,
                num_bad=num_bad, good_flips=good_flips, generator=generator,
                num_valid=None if static is None else static[0], invalid=None if static is None else static[1],
            )
        else:
            assert plan.anchor_set is not None  # given anchors: set by choose_path
            anchor_set = plan.anchor_set
            wrong = hard != cast(Tensor, anchor_set.best) if anchor_set.is_structured else None
    structure = plan.structure
    runs = None if structure is None or not l else Runs.of(structure.runs, l, c.device, validate_args and static is None)
    pull_runs = runs if pull_per != "comparison" else None
    margins_of, run_weights, run_pull = _pull_terms(structure, pull, pull_per, pull_weights,
                                                    None if pull_runs is None else pull_runs.num, c.dtype)
    margins = None if margins_of is None else margins_of(scores)  # the pull's per-sample margins
    if margins is not None and margins.dtype in _HALF:
        margins = margins.float()
    per_run = None if run_pull is None or not l else run_pull(_wide(scores), temperature).to(c.dtype)  # its terms per run
    pull_rows = _pull_rows(scores, structure)
    num_valid = None if static is None else static[0]
    stepped = step == "pull" and bool(pull)  # the step rule needs the interpolation's push (pull=0: none)
    # the pull's input where it is not c: the per-sample margins, or the runs' terms in closed form
    pulling = _Pull(pull, stepped, margins if margins is not None else per_run, margins is not None, pull_runs,
                    pull_rows, num_valid, run_weights)
    if chained:
        assert best is not None  # no anchors given (choose_path): computed above
        loss, info = _chain_loss(scores, c, None, best, decomposition, target, temperature, grad_scale, sign,
                                 structure=structure, runs=runs, static=static,
                                 count=_bit_count(l, static, validate_args), pull=pulling)
        return loss, with_exact_metric(info, decomposition, target, scores)
    assert anchor_set is not None  # drawn or given: every path but the chain's
    if plan.path == "dense":
        loss, info, push = _dense_loss(scores, c, hard, anchor_set, decomposition, target, temperature, grad_scale,
                                       sign, distance, nearby, need_push=stepped)
        loss = _with_pull(loss, c, best, decomposition, target, temperature, pulling, push if stepped else None)
        return loss, with_exact_metric(info, decomposition, target, scores)
    if all_good and structure is not None and min(structure.good_flips, max(l, 1)) != 1:
        raise ValueError(
            f"good_anchors='all' takes every single-bit flip of best, but {decomposition!r} flips "
            f"{structure.good_flips} bits per good anchor"
        )
    if structure is not None and structure.evaluate_zeros is None:
        runs = None  # runs for the pull only: the anchors are evaluated densely
    assert wrong is not None  # structured anchors: set above
    loss, values, metric, surrogate, kinds, push = structured_loss(
        c, hard, wrong, anchor_set, decomposition, target, runs, temperature=temperature,
        grad_scale=grad_scale, sign=sign, structure=structure, all_good=all_good, distance=distance, nearby=nearby,
        invalid=None if static is None else static[1], undefined=None if static is None else static[0] == 0,
        detached=detached, need_push=stepped,
    )
    loss = _with_pull(loss.to(scores.dtype), c, anchor_set.best, decomposition, target, temperature, pulling,
                      push if stepped else None)
    count = _bit_count(l, static, validate_args)
    return loss, with_exact_metric(LossInfo(metric, _detached(surrogate), loss.detach(), count, values, kinds,
                                            "structured"), decomposition, target, scores)


_PADDING = TensorCache()


def _bit_count(num_bits: int, static: "Optional[tuple[Tensor, Tensor]]", validate_args: bool) -> Union[int, Tensor]:
    """``LossInfo.bit_count``: the comparisons, or a static layout's real ones (a 0-dim tensor
    unless ``validate_args``, which reads it on the host anyway)."""
    if static is None:
        return num_bits
    return int(static[0]) if validate_args else static[0]


def _padding(num_bits: int, num_valid: Tensor) -> Tensor:
    """``[num_bits]`` bool: ``True`` from bit ``num_valid`` on (the padding of a static layout)."""
    index = _PADDING.get((num_bits, num_valid.device), lambda: torch.arange(num_bits, device=num_valid.device))
    return index >= num_valid


def _static_scale(c: Tensor, static: "tuple[Tensor, Tensor]", mode: Optional[str],
                  scores_dtype: Optional[torch.dtype] = None) -> Optional[Tensor]:
    """:func:`uniloss._interpolation.comparison_scale` of the real comparisons of a static layout."""
    if mode is None:
        return None
    num_valid, padding = static
    square = torch.where(padding, 0.0, c.detach()).square().sum()
    return rms_unit((square / num_valid.clamp_min(1)).sqrt(), scores_dtype)


class _Pull(NamedTuple):
    """The pull of a loss call, one description for every path (:func:`_with_pull` and the
    chain's node): its weight, whether it sizes the step (``step="pull"``), its input where it is
    not the comparisons (the per-sample margins, or the runs' terms in closed form: ``margins``
    says which), and the runs, rows, static layout's count and run weights of
    :func:`uniloss._interpolation.pull_cost`."""

    weight: float
    stepped: bool
    input: Optional[Tensor]
    margins: bool
    runs: Optional[Runs]
    rows: int
    num_valid: Optional[Tensor]
    run_weights: Optional[Tensor]

    def cost(self, c: Tensor, best: Tensor, temperature, pulled: Optional[Tensor], with_push: bool = False,
             with_grad: bool = False):
        """:func:`uniloss._interpolation.pull_cost` of the comparisons ``c`` (``best`` theirs),
        or of ``pulled``, the pull's own input (``with_grad``: ``(push, grad)``, no cost)."""
        with_push = with_push or with_grad
        if self.margins:
            return pull_cost(pulled, None, temperature, with_push=with_push, with_grad=with_grad)
        if pulled is not None:  # the runs' terms
            return pull_cost(None, None, temperature, self.runs, self.rows, self.num_valid, with_push=with_push,
                             weights=self.run_weights, per=pulled, with_grad=with_grad)
        return pull_cost(c, None if is_all_true(best) else best, temperature, self.runs, self.rows, self.num_valid,
                         with_push=with_push, weights=self.run_weights, with_grad=with_grad)


def _with_pull(loss: Tensor, c: Tensor, best: Optional[Tensor], decomposition: Decomposition, target: Any,
               temperature, pull: _Pull, interp_push: Optional[Tensor] = None) -> Tensor:
    """``loss`` whose gradient also carries ``pull.weight`` times that of
    :func:`uniloss._interpolation.pull_cost` (:meth:`_Pull.cost`: on the comparisons ``c``, per run
    where the pull has runs, else per comparison; or on its own input, the per-sample margins of
    :attr:`uniloss.Structure.margins`, every one right when ``> 0``, or the runs' terms of
    :attr:`uniloss.Structure.run_pull`); the value stays the interpolated metric's. ``best``: the
    ``[l]`` best bits where the caller has them. ``interp_push`` (``step="pull"``): the
    interpolation's total push ``I`` on ``c``; the whole gradient is then multiplied by
    ``P / (P + I)``, ``P`` the pull's (:func:`uniloss._interpolation.step_factor`)."""
    on = pull.input if pull.margins else c  # (the margins' pull applies also without a comparison)
    assert on is not None  # (margins: given)
    if not pull.weight or on.numel() == 0:
        return loss
    if pull.input is None and best is None:
        with torch.no_grad():
            best = decomposition.best(target).reshape(-1).to(device=c.device)
    if interp_push is None:
        cost, weight = pull.cost(c, cast(Tensor, best), temperature, pull.input), pull.weight
    else:
        cost, push = pull.cost(c, cast(Tensor, best), temperature, pull.input, with_push=True)
        with torch.no_grad():
            f = step_factor(push * pull.weight if pull.weight != 1.0 else push, interp_push, pull.margins)
        value = loss.detach()
        pulled = cost - cost.detach()
        total = (loss - value) + (pulled if pull.weight == 1.0 else pulled * pull.weight).to(loss.dtype)
        return value + total * (f if f.dtype == loss.dtype else f.to(loss.dtype))
    if weight == 1.0:
        return loss + (cost - cost.detach()).to(loss.dtype)
    return loss + ((cost - cost.detach()) * weight).to(loss.dtype)


def _pull_terms(structure: Optional[Structure], pull: float, pull_per: str, pull_weights: str,
                num_runs: Optional[int], dtype: torch.dtype):
    """``(margins, run_weights, run_pull)`` of the pull, each ``None`` where it does not apply:
    the structure's per-sample margins (a callable, scores -> ``[n]``) where the pull is taken per
    sample on them, else the runs' ``[S]`` weights over their mean (``pull_weights="metric"``, a
    pull per run: ``num_runs`` given), in ``dtype``, and the runs' terms in closed form
    (:attr:`uniloss.Structure.run_pull`, a callable). One rule for the structured and block paths."""
    if not pull or structure is None:
        return None, None, None
    if pull_per == "sample" and structure.margins is not None:
        return structure.margins, None, None
    if num_runs is None or pull_per == "comparison":
        return None, None, None
    weights = None
    if pull_weights == "metric" and structure.run_weights is not None:
        weights = _run_weights(structure.run_weights(), num_runs, dtype)
    return None, weights, structure.run_pull


def _run_weights(weights: Optional[Tensor], num: int, dtype: torch.dtype = torch.float32) -> Optional[Tensor]:
    """``[S]`` weights of the runs in the pull from :attr:`uniloss.Structure.run_weights`, in
    ``dtype`` (the comparisons'): over their mean (negative ones as 0); one each where all are 0."""
    if weights is None:
        return None
    weights = weights.reshape(-1).to(dtype).clamp_min(0)
    if weights.numel() != num:
        raise ValueError(f"Expected Structure.run_weights to give one weight per run ({num}), but got {weights.numel()}")
    mean = weights.mean()
    return torch.where(mean > 0, weights / mean.clamp_min(torch.finfo(weights.dtype).tiny), torch.ones_like(weights))


def _pull_rows(scores: Tensor, structure: Optional[Structure]) -> int:
    """The samples the runs are drawn from: the structure's ``rows``, else the batch size."""
    if structure is not None and structure.rows is not None:
        return structure.rows
    return scores.shape[0] if scores.dim() else 1


def with_exact_metric(info: LossInfo, decomposition: Decomposition, target: Any,
                      scores: Optional[Tensor] = None) -> LossInfo:
    """``info`` with the decomposition's exact batch metric where it has one (``batch_metric``),
    computed when ``info.metric`` is first read where ``scores`` (the call's) are a model's output
    (a step that does not log it does not pay for it: AP's tied ranking is about a tenth of a small
    batch's call); their in-place modification before that read is then an error, not a silently
    different value. Leaf scores (optimised directly, which an optimiser's step modifies in place;
    or computed without grad), ``scores=None``, inside ``torch.compile``, inside a ``torch.func``
    transform, and a decomposition whose ``batch_metric`` only reads a value its plan holds
    (``_batch_metric_is_cheap``: ``from_metric``'s, ``MulticlassAccuracy``'s; nothing to save, and
    the plan is not kept): computed now."""
    if type(decomposition).batch_metric is Decomposition.batch_metric:
        return info  # the default: the hard configuration's value, already in info (or when read)
    fallback = info.__dict__["_metric"]  # (a _Deferred: not computed unless batch_metric has no value)
    if (scores is None or scores.is_leaf or torch.compiler.is_compiling() or is_wrapped(scores)
            or getattr(decomposition, "_batch_metric_is_cheap", False)):
        # (compiled: traced in the graph; a torch.func transform's scores: read while it is live)
        exact = decomposition.batch_metric(target)
        if exact is not None:
            _set_info_metric(info, _detached(exact).to(info.surrogate.dtype))
        return info
    object.__setattr__(info, "_metric", _DeferredMetric(decomposition, target, fallback, scores, info.surrogate))
    return info


class _Deferred:
    """A value computed when first read (``LossInfo.metric``): ``fn()``."""

    __slots__ = ("fn",)

    def __init__(self, fn):
        self.fn = fn

    def __call__(self) -> Tensor:
        return self.fn()


class _DeferredMetric:
    """``LossInfo.metric`` until first read: ``decomposition.batch_metric(target)`` (the prepared
    target of the call, which holds what it needs), else the hard configuration's value."""

    __slots__ = ("decomposition", "target", "fallback", "scores", "version", "like")

    def __init__(self, decomposition: Decomposition, target: Any, fallback: "Union[Tensor, _Deferred]",
                 scores: Optional[Tensor], like: Tensor):
        # like: a tensor of the metric's dtype and device (the call's surrogate)
        self.decomposition, self.target, self.fallback, self.like = decomposition, target, fallback, like
        self.scores = self.version = None
        if scores is not None and not scores.is_inference():  # (inference tensors have no version counter)
            self.scores, self.version = scores.detach(), scores._version  # (detached: not the graph)

    def __call__(self) -> Tensor:
        if self.scores is not None and self.scores._version != self.version:
            raise RuntimeError(
                "The scores of this loss call were modified in place after it, before LossInfo.metric "
                "was first read (it is computed from them then): read it before modifying them"
            )
        with torch.no_grad(), _autocast_off(self.like.device.type):
            exact = self.decomposition.batch_metric(self.target)
            if exact is None:
                return self.fallback() if isinstance(self.fallback, _Deferred) else self.fallback
        return exact.to(self.like.dtype)


def _info_metric(info: LossInfo) -> Tensor:
    value = info.__dict__["_metric"]
    if isinstance(value, (_DeferredMetric, _Deferred)):
        value = info.__dict__["_metric"] = value()
    return value


def _set_info_metric(info: LossInfo, value: Tensor) -> None:
    info.__dict__["_metric"] = value


LossInfo.metric = property(_info_metric, _set_info_metric, doc="The batch's exact metric (see LossInfo).")  # type: ignore[assignment]


def _info_values(info: LossInfo) -> Tensor:
    value = info.__dict__["_anchor_values"]
    if isinstance(value, _Deferred):
        value = info.__dict__["_anchor_values"] = value()
    return value


def _set_info_values(info: LossInfo, value: "Union[Tensor, _Deferred]") -> None:
    info.__dict__["_anchor_values"] = value


# (a _Deferred where the values cost operator calls the loss does not need: read when asked)
LossInfo.anchor_values = property(_info_values, _set_info_values,  # type: ignore[assignment]
                                  doc="The metric at the anchors, or along the chain (see LossInfo).")


def _shares_storage(a: Tensor, b: Tensor) -> bool:
    """Whether ``a`` and ``b`` are views of one storage (``True`` where it cannot be read, e.g. a
    ``torch.func`` transform's wrapper)."""
    try:
        return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return True


def _detached(x: Tensor) -> Tensor:
    """``x.detach()``, or ``x`` itself where it has no graph (one operator call less per step)."""
    return x.detach() if x.requires_grad else x


def _dense_loss(scores, c, hard, anchor_set, decomposition, target, temperature, grad_scale, sign, distance,
                nearby="all", need_push=False):
    """The dense path: anchors as a ``[t, l]`` tensor, interpolation through autograd. Returns
    ``(loss, info, push)``, ``push`` as :func:`uniloss._structured.structured_loss` gives it."""
    l = c.numel()
    _, base, flip = bit_costs(c, temperature, distance)
    with torch.no_grad():
        bits = anchor_set.dense()
        # One evaluate call for the anchors and the current configuration (last row).
        values = V.evaluated(decomposition, torch.cat([bits, hard[None]], 0), target).to(c.dtype)
        metric, values = values[-1], values[:-1]
    push = None
    if l == 0:
        surrogate = metric  # no comparison to relax: g~ is g at the one configuration (NaN where undefined)
        loss = zero_loss(scores)
    else:
        sq = sq_distances_from_costs(base, flip, (bits != hard).to(c.dtype))
        weights = anchor_weights(nearby, anchor_set.kinds, values, metric, sign)
        g = idw_from_sq_distances(sq, values, weights)
        surrogate = g.detach()
        scale, push = gradient_scale(grad_scale, harmonic_distance(sq, weights), lambda: _total_push(g, c), need_push)
        signed = sign * g
        # The scale multiplies the gradient only: the value stays -g~ (or g~) so it reads as the metric.
        loss = signed.detach() + (signed - signed.detach()) * scale
        loss = loss.to(scores.dtype)
    return loss, LossInfo(metric, surrogate, loss.detach(), l, values, anchor_set.kinds), push


def _runs_loss(scores, plan: Plan, decomposition, target, temperature, grad_scale, sign, *, pull: float,
               pull_per: str, pull_weights: str, step: str, validate_args: bool):
    """The path ``"runs"``: :func:`_chain_loss` on the runs' least comparisons
    (:attr:`uniloss.Structure.run_least`, ``plan.comparisons``), one a run of one bit, every
    best bit 1. A metric of whole runs changes along its chain only where a run's least
    comparison takes its best value, and a run is whole iff that one is ``> 0``, so the chain,
    its gains and the current value are those of all the comparisons; the pull is the
    structure's (per run in closed form, or on the margins). Returns ``(loss, info)``."""
    structure = plan.structure
    assert structure is not None and plan.comparisons is not None  # the path "runs": set by choose_path
    c = plan.comparisons
    if c.dtype in _HALF:
        c = c.float()
    num = c.numel()
    lengths, real = structure.runs, None
    count: Union[int, Tensor]
    if isinstance(lengths, Runs):  # a layout of runs (see StaticLayout): its comparisons' count and real runs
        assert lengths.ends is not None and lengths.real is not None
        count, real = lengths.ends[-1], lengths.real
    else:
        count = lengths * num if isinstance(lengths, int) else lengths.sum()
    runs = Runs(1, None, None, num, real)
    margins_of, run_weights, run_pull = _pull_terms(structure, pull, pull_per, pull_weights, num, c.dtype)
    margins = None if margins_of is None else margins_of(scores)
    if margins is not None and margins.dtype in _HALF:
        margins = margins.float()
    per_run = None if run_pull is None or not num else run_pull(_wide(scores), temperature).to(c.dtype)
    stepped = step == "pull" and bool(pull)
    # (a layout of runs: the pull over the exact layout's runs, runs.real, as pull_cost counts a static layout's)
    pulling = _Pull(pull, stepped, margins if margins is not None else per_run, margins is not None, runs,
                    _pull_rows(scores, structure), None if real is None else cast(Tensor, count), run_weights)
    if validate_args or not isinstance(count, Tensor):
        count = int(count)
    with torch.no_grad():
        best = all_true(num, c.device)
    return _chain_loss(scores, c, None, best, decomposition, target, temperature, grad_scale, sign,
                       structure=structure, runs=runs, count=count, pull=pulling, least=True)


def _chain_loss(scores, c, hard, best, decomposition, target, temperature, grad_scale, sign, *, structure=None,
                runs=None, static=None, count=None, pull: Optional[_Pull] = None, least: bool = False):
    """``interpolation="chain"``: the metric's extension along the chain of the comparisons
    (:func:`uniloss._interpolation.chain_extension`) and the pull (:func:`_with_pull`), one
    autograd node with the gradient in closed form. The extension is ``g~ = g(S_0) + sum_k
    gain_k v_k``, linear in the relaxed bits' agreements ``v`` with gains fixed by their order,
    so its gradient is ``gain_k dv_k / dc_k``; the pull's comes from
    :func:`uniloss._interpolation.pull_cost` (``with_grad``). Under ``create_graph=True`` the
    backward pass recomputes both through autograd, which differentiates them again.

    The chain's values: from the structure's closed form where it gives one
    (:attr:`uniloss.Structure.chain_gains`, :attr:`~uniloss.Structure.chain` with
    :attr:`~uniloss.Structure.chain_by_runs`: the runs' last comparisons alone, or ``chain``
    along the sorted comparisons), from the runs' counts where the metric is a function of them
    (``evaluate_zeros``; every point, within ``chain_elements``), else from ``evaluate`` at the
    limits' number of points. A number ``grad_scale`` multiplies the extension's gradient; the
    anchors' scales (``"bounded"``, ...) do not apply, its push being in the metric's own units.
    In a static layout (``static``: the number of real comparisons and the padding) the padding
    comes last in the chain, with no gain; of the closed forms ``chain_gains`` and ``chain`` with
    ``chain_by_runs`` apply there, a static layout's structure giving its own (AP's gains, PCK's
    runs: its padding a run of no joint). Where no gradient can be asked for (grad mode off,
    or no input that requires it) only the value is computed. Returns ``(loss, info)``;
    ``info.metric`` is the hard configuration's value, computed when read unless the chain's
    evaluation gives it. ``least`` (:func:`_runs_loss`): ``c`` holds each run's least comparison,
    a run of one bit each (``+inf``: a run without bits); the metric is then evaluated from the
    runs' wholeness (``evaluate_zeros``). ``hard``: ``c > 0``, or ``None`` to compute it where it
    is read."""
    l = c.numel()
    dtype = c.dtype
    if hard is None and not torch.compiler.is_compiling() and _shares_storage(c, scores):
        hard = c.detach() > 0  # (comparisons that are the scores, which may change in place before a read: now)
    metric = None
    at = None  # the comparisons the gains are on, where not every one (a metric of whole runs: each run's last)
    all_best = is_all_true(best)  # (AP's: v is u, and every slope positive)
    pulled = pull.input if pull is not None and pull.weight else None
    # whether autograd records this call's node (else no gradient can be asked for: the value alone)
    recorded = torch.is_grad_enabled() and (c.requires_grad or (pulled is not None and pulled.requires_grad))
    with torch.no_grad():
        u, v = agreement(c.detach(), best, temperature, all_best)
        if least:  # each run's least comparison, given (the path "runs"): a run without bits is +inf
            # (the chain's order, v descending, from c itself: v is monotone in it, and c does not tie
            # where sigmoid rounds two values alike)
            held = c.detach()
            if isinstance(structure.runs, int):  # runs of equal width: every one holds bits, in index order
                values, gains = run_chain_gains(held, held, structure.chain, dtype, in_order=True)
            else:
                last = torch.where(torch.isposinf(held), -1, torch.arange(l, device=c.device))
                values, gains = run_chain_gains(held, last, structure.chain, dtype)
            start, points = values[0], values.numel()
        elif structure is not None and structure.chain_gains is not None:  # (a static layout's structure gives its own)
            start, gains = structure.chain_gains(v)
            ends = (start, gains)  # the chain's two ends, computed when read (info.anchor_values)
            values = cast(Tensor, _Deferred(lambda: torch.stack([ends[0], ends[0] + ends[1].sum()]).to(dtype)))
            start, gains, points = start.to(dtype), gains.to(dtype), 2
        elif structure is not None and structure.chain_by_runs and runs is not None:  # (a static layout's own too)
            least_v, last = last_of_runs(v, runs)
            values, gains = run_chain_gains(least_v, last, structure.chain, dtype, runs.width is not None)
            start, at, points = values[0], last.clamp_min(0), values.numel()
        else:
            limits = current_limits()
            along = None
            if structure is not None and structure.chain is not None and static is None and not structure.chain_by_runs:
                segments, closed_form = l, structure.chain
                along = lambda rank, cuts: closed_form(rank)[cuts]  # noqa: E731
            elif structure is not None and structure.evaluate_zeros is not None and runs is not None:
                # every point, the exact extension, as a closed form gives it (the [points, S] counts: O(l S),
                # fewer points above chain_elements); in both layouts alike (a static layout's cuts over its real
                # comparisons: the exact layout's points)
                segments = max(1, min(l, limits.chain_elements // max(runs.num, 1) - 1))
                of_zeros = structure.evaluate_zeros
                along = lambda rank, cuts: of_zeros(chain_zeros(runs, best, rank, cuts, dtype))  # noqa: E731
            else:
                segments = chain_segments(l, limits.chain_segments, limits.chain_elements)

            current = c.detach() > 0 if hard is None else hard

            def evaluate(bits: Tensor) -> Tensor:  # the chain and the current configuration (last row) in one call
                return V.evaluated(decomposition, torch.cat([bits, current[None]], 0), target)

            values, start, gains = chain_steps(v, best, evaluate, segments, along,
                                               *((None, None) if static is None else (static[1], static[0])))
            if along is None:
                metric, values = values[-1], values[:-1]
            points = segments + 1
        on = v if at is None else v[at]
        g = torch.nan_to_num(start, nan=0.0) + torch.dot(gains, on)
        if static is not None:  # no real comparison (padding alone): the exact layout's zero loss, not g(S_0)
            g = g.masked_fill(static[0] == 0, 0.0)
        scale = 1.0 if isinstance(grad_scale, str) else float(grad_scale)
        coef: Union[float, Tensor] = sign * scale
        weight: Union[float, Tensor] = 0.0 if pull is None else pull.weight
        grad_c: Optional[Tensor] = None
        grad_p: Optional[Tensor] = None
        if recorded:
            # d g~ / d c: each gain times dv / dc = +-u (1 - u) / tau (a number grad_scale times it)
            # (on the comparisons `at` only, where given: a metric of whole runs, each run's last)
            chained = gains * (agreement_slope(u, best, temperature, all_best) if at is None
                               else agreement_slope(u[at], best[at], temperature, all_best))
            pulled_c = None  # the pull's gradient where it is on the comparisons
            if pull is not None and pull.weight:
                pull_push, grad_pull = pull.cost(c.detach(), best, temperature, pull.input, with_grad=True)
                if pull.stepped:  # every step of the pull's size (see _with_pull)
                    push = chained.abs().sum()  # the interpolation's
                    f = step_factor(pull_push * pull.weight if pull.weight != 1.0 else pull_push,
                                    push if scale == 1.0 else push * scale, pull.margins)
                    coef, weight = coef * f, (f if pull.weight == 1.0 else f * pull.weight)
                if pull.input is None:
                    pulled_c = grad_pull.mul_(weight)
                else:
                    grad_p = grad_pull.mul_(weight)
            # the two gradients on the comparisons in one tensor, a pass over them each
            chained = chained.mul_(coef)
            if at is not None:
                grad_c = (torch.zeros_like(c) if pulled_c is None else pulled_c).index_add_(0, at, chained)
            else:
                grad_c = chained if pulled_c is None else pulled_c.add_(chained)
        reported: Union[Tensor, _Deferred]
        if metric is not None:
            reported = metric
        else:
            def bits() -> Tensor:  # (from c when read: c is the call's own tensor where hard is None; no graph)
                return c > 0 if hard is None else hard

            if least:  # a run whole iff its least comparison is right (read when asked, as below)
                of_zeros = structure.evaluate_zeros
                if torch.compiler.is_compiling():
                    reported = of_zeros((~bits())[None].to(dtype)).to(dtype)[0]
                else:
                    reported = _Deferred(lambda: of_zeros((~bits())[None].to(dtype)).to(dtype)[0])
            elif torch.compiler.is_compiling():
                reported = V.evaluated(decomposition, bits()[None], target).to(dtype)[0]
            else:  # read when asked (a batch_metric, or no logging, may never ask)
                reported = _Deferred(lambda: V.evaluated(decomposition, bits()[None], target).to(dtype)[0])

    def backward(grad_out: Tensor, c_in: Tensor, pulled_in: Optional[Tensor]) -> "tuple[Tensor, Optional[Tensor]]":
        if not torch.is_grad_enabled():
            assert grad_c is not None  # computed: the forward pass recorded this node
            return grad_c * grad_out, None if grad_p is None else grad_p * grad_out
        # create_graph=True: the same gradient through autograd, differentiable again
        _, v_in = agreement(c_in, best, temperature)
        total = torch.dot(gains, v_in if at is None else v_in[at]) * coef
        if pull is not None and pull.weight:
            total = total + pull.cost(c_in, best, temperature, pulled_in) * weight
        inputs = [c_in] if pulled_in is None else [c_in, pulled_in]
        found = torch.autograd.grad(total, inputs, grad_out, create_graph=True, allow_unused=True)
        grads = [torch.zeros_like(x) if d is None else d for x, d in zip(inputs, found)]
        return grads[0], (grads[1] if pulled_in is not None else None)

    loss = apply_surrogate(c, pulled, g, sign, backward).to(scores.dtype)
    info = LossInfo(cast(Tensor, reported), g, loss.detach(), l if count is None else count, values,
                    (("chain", points),), "runs" if least else "chain")  # (a _Deferred: the LossInfo.metric property reads it)
    return loss, info


def zero_loss(scores: Tensor) -> Tensor:
    """An exact zero of the scores' dtype, attached to their graph with a gradient of exact zeros.

    The sum of an empty slice: it reads no score, so it stays 0 where ``scores.sum() * 0`` is NaN
    (a sum that overflows, e.g. float16 scores of 5000, or an infinite score).
    """
    return scores.reshape(-1)[:0].sum()


def _total_push(g: Tensor, c: Tensor) -> Tensor:
    """``sum_k |d g / d c_k|`` (detached; zero where ``c`` needs no gradient)."""
    if not (c.requires_grad and torch.is_grad_enabled()):
        return torch.zeros((), dtype=g.dtype, device=g.device)
    (grad_c,) = torch.autograd.grad(g, c, retain_graph=True)
    return grad_c.abs().sum()


def uniloss(
    scores: Tensor,
    target: Any,
    decomposition: Decomposition,
    *,
    num_good: int = 16,
    num_nearby: int = 16,
    num_bad: int = 16,
    temperature: float = 1.0,
    grad_scale: Union[str, float] = "bounded",
    generator: Optional[torch.Generator] = None,
    anchors: Optional[Union[Tensor, AnchorSet]] = None,
    validate_args: bool = True,
    good_anchors: str = "sample",
    chunk_bits: Optional[int] = None,
    temperature_scale: Optional[str] = None,
    distance: str = "euclidean",
    pull: float = 1.0,
    nearby: str = "all",
    pull_per: str = "sample",
    step: str = "pull",
    pull_weights: str = "metric",
    interpolation: str = "chain",
) -> Tensor:
    r"""The UniLoss surrogate of a metric on one batch (Liu, Wang, Deng, ECCV 2020).

    Computes ``c = f(scores)`` with ``decomposition.comparisons``, relaxes the bits
    ``u = sigmoid(c / temperature)`` and interpolates the metric between configurations of the
    bits: by default (0.8, ``interpolation="chain"``) along the chain of the comparisons, the
    metric's Lovász extension (the comparisons ordered by how far their relaxed bits agree with
    the best configuration, each pushed by its marginal gain at that order); with
    ``interpolation="anchors"`` (the paper) by inverse distance weighting over drawn anchors (the
    best configuration; ``num_good`` with a bit of best flipped; ``num_nearby`` with one bit of
    the current configuration flipped toward best; ``num_bad`` uniformly random). Returns
    ``-g~(u)`` for a metric where higher is better (``g~`` otherwise), so minimising the loss
    maximises the interpolated metric; both interpolations equal the metric at every vertex.

    The defaults were chosen on the metric-wins benchmark (``docs/results/metric-wins/``): the
    chain and a pull toward the best configuration (``pull=1``, per run or per sample). The
    paper's loss is ``interpolation="anchors", pull=0, grad_scale=1.0``.

    Args:
        scores: the network's output, floating point, shape as the decomposition documents.
        target: the ground truth, as the decomposition documents.
        decomposition: a :class:`uniloss.Decomposition`.
        num_good, num_nearby, num_bad: anchors of each kind (0 allowed), 16 each in the paper;
            with ``interpolation="anchors"`` (the chain draws none).
        temperature: ``tau`` of the sigmoid relaxation (> 0).
        grad_scale: multiplies the gradient (not the value) of the interpolation (the chain takes
            a number only, its modes being the anchors'). The
            interpolation's gradient is a weighted sum of ``(g(a_i) - g~) (a_i - u) / d_i^2``: it
            has units of metric per unit distance and shrinks as the anchors lie farther apart
            (``d ~ sqrt(l)`` early in training, ``~1`` later). ``"distance"`` multiplies it by the
            harmonic mean of the distances from ``u`` to the anchors, ``t / sum_i 1/d_i``
            (detached), which makes the step size independent of ``l`` late in training but
            gives the comparisons a total push ``sum_k |dL/dc_k|`` of order ``sqrt(l)`` in the
            first steps (20x cross-entropy's on a 25k-pixel segmentation batch, which then
            collapsed to all-background). ``"bounded"`` (default) is the distance scale capped
            so that this total push is at most one (cross-entropy's, mean-reduced, is at most
            about two). ``"normalized"`` always sets it to one (measured: unstable), except
            where it is below ``sqrt(tiny)`` of the dtype (saturated scores): then it is left as
            it is.
            A number uses that constant instead (``1.0``: the paper's plain ``-g~``).
        pull: weight of a pull toward the best configuration added to the gradient (not the
            value), the cross-entropy from the relaxed bits to best (see ``pull_per``). The
            interpolated metric is bounded, so its push on a comparison that is wrong by a wide
            margin vanishes (like ``exp(-|c|/tau)``) and a network can saturate its scores on
            wrong decisions and stop learning from them; the pull's push stays of order one
            there and fades on comparisons that are right by a margin. ``0`` is the paper.
        pull_per: the unit the pull is taken over (:func:`uniloss._interpolation.pull_cost`),
            with ``z_k = -(2 best_k - 1) c_k / tau``. ``"sample"`` (default since 0.4): per
            sample on the margins of a decomposition whose :class:`~uniloss.Structure` gives them
            (binary labels: AP, and the zoo's ranking metrics of 0/1 relevance; ``mean
            softplus(-m / tau)``, binary cross-entropy, also in a batch without a comparison;
            integer grades of relevance, 0.10: one margin per grade boundary, the all-threshold
            ordinal logistic loss, :func:`uniloss._pairs.ordinal_margins`), else per run.
            In-batch pairs tie nothing across batches, which a held-out AP compares
            (MNIST 0-vs-rest, batch 16: AP 99.74 against 99.16 per run, BCE 99.74; NDCG@5 of 0/1
            relevance at each loss's best rate 99.95 against 99.86 per run and BCE's 99.86;
            ``docs/results/metric-wins/``). ``"run"``: per run of the
            decomposition's :class:`~uniloss.Structure` (a sample's comparisons for accuracy and
            the argmax metrics of the zoo, a positive's for AP, a positive pixel's for PCK, an
            item's with the less relevant items of its query for the zoo's ranking metrics: 0.9's
            pull of graded relevance),
            ``log(1 + sum_{k in run} exp(z_k))``, summed and divided by the larger of the number
            of runs and the batch size: for accuracy, cross-entropy on the logits exactly. A
            decomposition without runs takes it per comparison. ``"comparison"``:
            ``mean_k softplus(z_k)``, each comparison on its own (for accuracy, each competitor
            gets ``1 / (C - 1)`` of a sample's pull: diluted on many classes; the default before
            0.2, measured on the metric-wins suite, ``docs/results/metric-wins/``). For a ranking
            of similarities, whose level means nothing across queries (an embedding's cosines),
            it is the pull to pass: retrieval AP of Fashion-MNIST embeddings 91.98 against the
            default's 90.78, ahead on 4 of 4 draws, and steady over a 16x range of learning rates
            (``docs/results/metric-wins/``, "Deep metric learning": the default pull trains
            each query's level, and taking each query's mean out of the scores recovers two
            thirds of the gain, a learnt global threshold none); on the suite's NDCG@5 of
            class logits it trails the default at each one's best rate (99.35 against 99.82).
        pull_weights: how the runs weigh in a pull taken per run. ``"metric"`` (default since
            0.5): run ``s`` weighs how much the metric changes when that run alone toggles at the
            current configuration (a right run goes wrong, a wrong one right;
            :attr:`uniloss.Structure.run_weights`, over their mean), so the pull weighs the units
            as the metric does: balanced accuracy's pull is class-weighted cross-entropy,
            macro-F1's and mean IoU's weigh a rare class's samples up and a missed pixel above a
            false one while a class's IoU is low (imbalanced MNIST at the recipe's rate: balanced
            accuracy 90.25 against 86.44 with every run alike, class-weighted cross-entropy 90.30;
            segmentation at each loss's best rate 71.61 against 71.23, Lovász-softmax 72.03;
            ``docs/results/metric-wins/``, 0.5). The zoo's argmax metrics give them
            (:meth:`uniloss.decoders.Decoder.toggled`); every other built-in metric weighs its
            units alike or pulls on margins, and is unchanged. ``"equal"`` (0.4): every run
            alike. The weights follow the model's predictions (for macro-F1, a class predicted
            less weighs more), which costs a model with fewer hidden units than balanced classes:
            an MLP of 8 hidden units on scikit-learn's 10 digits scores macro-F1 2.6 points below
            cross-entropy with ``"metric"`` and 0.3 below with ``"equal"`` (both level with it
            from 32 hidden units; ``docs/results/metric-wins/capacity-pull-weights.md``). There,
            prefer ``"equal"``; on imbalanced classes keep ``"metric"`` (``"equal"`` loses about 2
            points of balanced accuracy there at every size).
        step: how the interpolation's push and the pull's make one step. ``"pull"`` (default
            since 0.3): the whole gradient is multiplied by ``P / (P + I)``, ``P`` the pull's total
            push and ``I`` the interpolation's, both on the variables the pull is taken on, so a
            step has the pull's size (for accuracy, cross-entropy's; for AP, binary
            cross-entropy's: a learning rate tuned for the usual loss carries over) and the
            direction of both (:func:`uniloss._interpolation.step_factor`). A pull per run or per
            comparison is on the comparisons; a pull on per-sample margins (AP, AUROC, the
            rankings of 0/1 relevance) is on the scores, where a comparison, a positive's score
            minus a negative's, pushes two of them: ``I`` is twice its push on the comparisons
            (0.9; before, the push on the comparisons, and a step on AP 1.4-1.6x binary
            cross-entropy's at the same rate: ``docs/results/metric-wins/``, screen v45). ``"sum"``
            (0.2): they add (for accuracy, cross-entropy's gradient plus the interpolation's, whose
            total push is up to one with ``grad_scale="bounded"``): a larger step than
            cross-entropy's at the same learning rate (measured on the metric-wins suite over a
            learning-rate grid, ``docs/results/metric-wins/``). With ``pull=0`` there is no pull
            to size the step by and both are the interpolation's gradient alone.
        interpolation: how the metric is interpolated between configurations of the bits.
            ``"chain"`` (default since 0.8): the metric's Lovász extension along the chain of its
            comparisons (:func:`uniloss._interpolation.chain_extension`): the comparisons ordered
            by how far their relaxed bits agree with the best configuration, the metric evaluated
            where the first ``j`` of them are right, and each pushed by its marginal gain at that
            order, the construction Lovász-softmax applies to IoU. Equal to the metric at every
            vertex, like the anchors' interpolation. Its values along the chain come from counts
            where the metric is a function of them, exact at every step: in closed form where the
            structure gives one (:attr:`uniloss.Structure.chain`: AP, accuracy, PCK, the zoo's
            metrics of class counts, mean IoU, Dice, macro-F1, balanced accuracy), from the runs'
            counts otherwise (``evaluate_zeros``: VOC AP, at every point while the ``[l + 1, S]`` counts
            fit in ``chain_elements``; the traced metrics of :func:`uniloss.from_metric` through their own
            sums or rankings, or their counts where every point's bits fit). A metric of whole runs (accuracy, PCK,
            the zoo's argmax metrics; :attr:`uniloss.Structure.chain_by_runs`) changes along the
            chain only at its runs' last comparisons, so the chain walks those alone (``O(l)`` and
            a sort of the runs) and goes block by block above ``chunk_bits`` (PCK on large
            heatmaps). Measured (``benchmarks/chain_cost.py``, screen v41): 0.3-0.9x the anchors'
            call on AP and accuracy batches of 128, a segmentation batch of 25,088 pixels,
            accuracy 1024 x 1000 and PCK at 16 x 16 joints x 64 x 64; 1.5x at AP batch 1024 (AP
            changes at every step: its gains from a sort of each positive's row and of each
            column, :attr:`uniloss.Structure.chain_gains`). Other metrics (the ranking metrics, F-beta at a
            threshold) are evaluated at up to 257 points of the chain (``[257, l]`` bits, 2.7x on
            NDCG@5): exact up to 256 comparisons, the mean gain over 256 segments above. The anchor
            keywords do not apply, nor ``grad_scale``'s modes (a number still multiplies the
            gradient); the pull and ``step`` do. Measured (``docs/results/metric-wins/``, screen
            v40, full schedules, each loss at its best SGD rate): mean IoU 72.65 +- 0.22 against
            Lovász-softmax's 72.03 +- 0.16 and the anchors' 71.52 +- 0.55, Dice 82.80 against
            82.29 and 82.00, balanced accuracy 90.19 against class-weighted cross-entropy's 90.02
            and the anchors' 89.99, PCK 96.64 against the anchors' 96.06; level elsewhere (with
            Adam too; Fashion-MNIST's ResNet-20, seed 0: 93.92 against cross-entropy's 93.90). A metric that is not one of whole runs
            and has no closed form (VOC AP, the ranking metrics) takes at most ``chunk_bits``
            comparisons. It takes the static layouts as the anchors do (no host synchronisation on
            an accelerator, static shapes under ``torch.compile``). ``"anchors"`` (the paper):
            inverse distance weighting over the drawn anchors (or the ``anchors`` given, which
            only it takes); the anchor keywords and ``grad_scale``'s modes apply to it alone.
        temperature_scale: ``None`` (default: ``temperature`` in the comparisons' units) or
            ``"rms"`` (in units of the batch's root-mean-square comparison, detached; measured,
            with the anchors and with the chain (metric-wins screen v57): the scores then grow
            without bound and training stalls). Where every comparison is
            0 (constant scores) there is no scale to measure and the temperature is absolute;
            the unit is at least ``sqrt(tiny)`` of the scores' dtype (float16: 7.8e-3), so the
            gradient stays within that dtype's range.
        nearby: ``"all"`` (default, the paper) or ``"informative"``: a nearby anchor weighs 0
            unless its metric is better than the current configuration's (see
            :func:`uniloss._interpolation.anchor_weights`; measured on the metric-wins suite:
            ahead of the default on balanced accuracy, macro-F1 and NDCG, no imbalanced-AP
            collapse, 0.5 behind on Fashion-MNIST; not the default yet).
        distance: ``"euclidean"`` (default, the paper) or ``"cross_entropy"`` (per bit, the
            Bernoulli cross-entropy of the anchor's bit under ``u``; see
            :func:`uniloss._interpolation.bit_costs`).
        generator: source of the anchors' randomness; the same state gives the same loss.
        anchors: fixed anchors ``[t, l]`` bool (or an :class:`~uniloss.AnchorSet`) instead of
            sampling, e.g. for tests and gradcheck.
        validate_args: check the arguments and tensors (set ``False`` in a hot loop whose inputs
            are trusted: it avoids a device synchronisation for the NaN check). With ``False`` and
            sampled anchors the built-in decompositions and the zoo make no host synchronisation
            per call: those whose number of comparisons depends on the target (AP, AUROC, the
            ranking metrics, PCK) lay them out in a static layout (see
            :class:`uniloss._decomposition.StaticLayout`). Exceptions: PCK on heatmaps too large
            for one (see :class:`uniloss.PCK`), graded relevance without ``num_grades`` (see
            :func:`uniloss.zoo.ndcg_at_k`), and ``good_anchors="all"`` or given ``anchors``, which
            use the exact layout.

    Returns:
        A scalar tensor (the scores' dtype). Where the metric is undefined on the batch (no
        comparisons, e.g. AP with no positive or no negative) the loss is zero, still attached
        to the graph, and its gradient is zero.

    Example::

        >>> import torch, uniloss
        >>> scores = torch.tensor([2.0, -1.0, 0.5, -0.3], requires_grad=True)
        >>> target = torch.tensor([1, 0, 0, 1])
        >>> g = torch.Generator().manual_seed(0)
        >>> loss = uniloss.functional.uniloss(scores, target, uniloss.AveragePrecision(), generator=g)
        >>> loss.backward()
        >>> bool(loss < 0), scores.grad.shape
        (True, torch.Size([4]))
    """
    loss, _ = uniloss_with_info(scores, target, decomposition, anchors=anchors, **options_of(locals()))
    return loss
