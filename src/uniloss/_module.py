"""The loss as a ``torch.nn.Module``: a thin wrapper over :func:`uniloss.functional.uniloss`."""

from __future__ import annotations

import re
import warnings
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from . import _validation as V
from ._decoded import DecodedMetric
from ._decomposition import Decomposition
from ._metrics import PCK, MulticlassAccuracy
from .distributed import CrossBatchMemory, GlobalBatch, PerRankWarning
from .functional import OPTIONS, LossInfo, check_options, options_of, uniloss_with_info

# Built-in metrics that are means over samples: per-rank training under DDP optimises the same
# metric (the zoo's evaluators are named after the zoo function that makes them: top_5_accuracy).
_PER_SAMPLE = (MulticlassAccuracy, PCK)
_PER_SAMPLE_ZOO = re.compile(r"top_\d+_accuracy|pck")
# The options a module pickled before they existed keeps (it has no attribute): the behaviour of
# its version (nearby: before the option; pull_per and step: before 0.3; pull_weights: before 0.5;
# interpolation: before 0.6).
_PICKLED_BEFORE: "dict[str, Any]" = {"nearby": "all", "pull_per": "comparison", "step": "sum", "pull_weights": "equal",
                                     "interpolation": "anchors"}


def _per_rank_set_metric(decomposition: Decomposition) -> bool:
    """Whether ``decomposition``, called on each rank's batch, computes a set-level metric (AP,
    AUROC, F1, ...) per rank: not wrapped in :class:`~uniloss.distributed.GlobalBatch` and not a
    known mean over samples. A user's own metric counts as set-level (the warning says how to
    silence it)."""
    while isinstance(decomposition, CrossBatchMemory):
        decomposition = decomposition.decomposition
    if isinstance(decomposition, (GlobalBatch,) + _PER_SAMPLE):
        return False
    if isinstance(decomposition, DecodedMetric):
        return not _PER_SAMPLE_ZOO.fullmatch(str(getattr(decomposition.evaluator, "__name__", "")))
    return True


class UniLoss(nn.Module):
    r"""UniLoss: a metric turned into a differentiable training loss (Liu, Wang, Deng, ECCV 2020).

    ``loss = UniLoss(decomposition)(scores, target)`` is ``-g~(sigmoid(c / tau))``, the metric
    interpolated along the chain of its comparisons (its Lovász extension; 0.8) or, with
    ``interpolation="anchors"``, by inverse distance weighting over anchors drawn afresh on every
    call (see :func:`uniloss.functional.uniloss` for the method and every keyword). The paper's
    loss is ``UniLoss(decomposition, interpolation="anchors", pull=0, grad_scale=1.0)``; the
    defaults were chosen on the metric-wins benchmark (``docs/results/metric-wins/``). Options are checked
    once, here; tensors on every call unless ``validate_args=False``.

    After each call, :attr:`last` holds a :class:`~uniloss.functional.LossInfo`:
    ``last.metric`` is the exact metric of the batch's hard decisions and ``last.surrogate`` the
    interpolated value, both detached, for logging. A hard decision is a bit ``[c > 0]``, so a
    tied comparison counts as wrong (an argmax tied with the target, a positive tied with a
    negative), except that :class:`~uniloss.AveragePrecision`, ``zoo.auroc`` and
    ``zoo.average_precision`` report scikit-learn's value on tied scores (the loss is unchanged).

    Under ``torch.distributed`` (an initialised process group of several ranks) the first call
    warns once (:class:`~uniloss.distributed.PerRankWarning`) when the metric is set-level (AP,
    AUROC, F1, ...) and not wrapped in :class:`~uniloss.distributed.GlobalBatch`: each rank would
    optimise the metric of its own batch. Accuracy and PCK, means over samples, do not warn.

    Args:
        decomposition: the metric, a :class:`uniloss.Decomposition`.
        num_good, num_nearby, num_bad: anchors of each kind per call (16 each in the paper), with
            ``interpolation="anchors"``.
        temperature: ``tau`` of the sigmoid relaxation.
        grad_scale: ``"bounded"`` (default: the gradient measured in units of the anchors'
            harmonic-mean distance, which makes cross-entropy's learning rates work, capped at a
            total push of one on the comparisons), ``"distance"`` (uncapped), ``"normalized"``
            or a constant (``1.0``: the paper's plain ``-g~``).
        pull: weight of the pull toward the best configuration added to the gradient (default
            1; 0 is the paper); see :func:`uniloss.functional.uniloss`.
        pull_per: ``"sample"`` (default: per run, or per sample on the structure's margins where
            it gives them: for binary labels, binary cross-entropy), ``"run"`` (0.3) or
            ``"comparison"``; see
            :func:`uniloss.functional.uniloss`.
        step: ``"pull"`` (default: every step of the pull's size) or ``"sum"`` (0.2: the
            interpolation's push plus the pull's); see :func:`uniloss.functional.uniloss`.
        pull_weights: ``"metric"`` (default: a run of the pull weighs how much the metric
            changes when it alone toggles at the current configuration; balanced accuracy's pull
            is class-weighted cross-entropy) or ``"equal"`` (0.4; better on balanced classes
            with fewer hidden units than classes); see :func:`uniloss.functional.uniloss`.
        interpolation: ``"chain"`` (default since 0.8: the metric's Lovász extension along the
            chain of its comparisons, exact for the metrics of counts; measured ahead of the
            strongest baseline on mean IoU and PCK, by a hair on balanced accuracy, level
            elsewhere) or ``"anchors"``
            (the paper: inverse distance weighting over drawn anchors; the anchor keywords and
            ``grad_scale``'s modes apply to it alone); see :func:`uniloss.functional.uniloss`.
        temperature_scale, distance, nearby: see :func:`uniloss.functional.uniloss`.
        generator: a ``torch.Generator`` for the anchors (same state, same loss).
        validate_args: check tensors on every call (their values are read on the host: a
            synchronisation on an accelerator and a graph break under ``torch.compile``; pass
            ``False`` for trusted inputs in a compiled step).
        good_anchors: ``"sample"`` (default, the paper: ``num_good`` random single-bit flips of
            best) or ``"all"`` (every one of the ``l`` single-bit flips, each weighted
            ``num_good / l``: the expectation of the sampled ones, in ``O(l)``; for
            decompositions with a :class:`~uniloss.Structure`).
        chunk_bits: above this many comparisons (default ``2**22``), a decomposition whose
            :class:`~uniloss.Structure` has ``comparisons_block`` (PCK) is processed block by
            block in bounded memory (with ``interpolation="chain"`` too).

    Shapes: as the decomposition documents; the result is a scalar.

    Example::

        >>> import torch, uniloss
        >>> loss_fn = uniloss.UniLoss(uniloss.MulticlassAccuracy(),
        ...                           generator=torch.Generator().manual_seed(0))
        >>> scores = torch.randn(8, 5, requires_grad=True)
        >>> target = torch.randint(0, 5, (8,))
        >>> loss = loss_fn(scores, target)
        >>> loss.backward()
        >>> float(loss_fn.last.metric) == float((scores.argmax(1) == target).float().mean())
        True
    """

    last: Optional[LossInfo]

    def __init__(
        self,
        decomposition: Decomposition,
        *,
        num_good: int = 16,
        num_nearby: int = 16,
        num_bad: int = 16,
        temperature: float = 1.0,
        grad_scale: Union[str, float] = "bounded",
        generator: Optional[torch.Generator] = None,
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
    ) -> None:
        super().__init__()
        if not isinstance(decomposition, Decomposition):
            raise TypeError(
                "Expected `decomposition` to be a uniloss.Decomposition, but got "
                f"{type(decomposition).__name__}"
            )
        options = options_of(locals())
        check_options(options)
        options["temperature"] = float(temperature)
        self.decomposition = decomposition
        for name, value in options.items():  # one attribute each: loss_fn.temperature = 2.0 works
            setattr(self, name, value)
        self.last = None

    # Whether forward() has seen an initialised process group (a class default, for modules
    # pickled before it existed).
    _world_checked = False

    def _check_world(self) -> None:
        """Warn once (:class:`~uniloss.distributed.PerRankWarning`) when a set-level metric is
        computed on each rank's batch of a process group of several ranks."""
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()):
            return  # asked again on the next call: the group may be initialised later
        self._world_checked = True
        world = dist.get_world_size()
        if world > 1 and _per_rank_set_metric(self.decomposition):
            warnings.warn(
                f"UniLoss({self.decomposition!r}) runs in a process group of {world} ranks but computes the "
                "metric on each rank's batch only: for a set-level metric (AP, AUROC, F1, NDCG, IoU) that "
                "optimises a per-rank metric, not the global batch's. Wrap it: UniLoss(GlobalBatch(metric), "
                "generator=torch.Generator().manual_seed(seed)) with uniloss.distributed.GlobalBatch and the "
                "same seed on every rank. A mean over samples (accuracy, PCK) is fine per rank: silence this "
                "with warnings.simplefilter('ignore', uniloss.distributed.PerRankWarning).",
                PerRankWarning, stacklevel=V.user_stacklevel(),
            )

    def forward(self, scores: Tensor, target: Any) -> Tensor:
        if not self._world_checked:
            self._check_world()
        options: "dict[str, Any]" = {name: getattr(self, name, _PICKLED_BEFORE.get(name)) for name in OPTIONS}
        loss, self.last = uniloss_with_info(scores, target, self.decomposition, **options)
        return loss

    # The decomposition's state (e.g. a cross-batch memory) travels in the module's state_dict
    # under "decomposition", only for a decomposition that has one (the others' state_dicts stay
    # empty, so checkpoints written before this key existed still load).
    _STATE_KEY = "decomposition"

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        state = self.decomposition.state_dict()
        if state is not None:
            destination[prefix + self._STATE_KEY] = state

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        key = prefix + self._STATE_KEY
        if key in state_dict:
            try:
                self.decomposition.load_state_dict(state_dict[key])
            except (TypeError, ValueError) as exc:
                error_msgs.append(f"While loading {key}: {exc}")
            state_dict = {k: v for k, v in state_dict.items() if k != key}
        elif strict and self.decomposition.state_dict() is not None:
            missing_keys.append(key)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        # the anchors' keywords where the anchors interpolate (a number grad_scale applies to both)
        anchors = getattr(self, "interpolation", _PICKLED_BEFORE["interpolation"]) == "anchors"
        counts = f"num_good={self.num_good}, num_nearby={self.num_nearby}, num_bad={self.num_bad}, " if anchors else ""
        scale = f", grad_scale={self.grad_scale!r}" if anchors or not isinstance(self.grad_scale, str) else ""
        return (
            f"{self.decomposition!r}, {counts}temperature={self.temperature}{scale}, pull={self.pull}"
            + "".join(f", {name}={getattr(self, name, _PICKLED_BEFORE[name])!r}"
                      for name in ("pull_per", "step", "pull_weights", "interpolation")
                      if getattr(self, name, _PICKLED_BEFORE[name]) != OPTIONS[name])
            + ("" if self.good_anchors == "sample" or not anchors else f", good_anchors={self.good_anchors!r}")
        )
