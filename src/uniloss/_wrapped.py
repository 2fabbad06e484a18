"""The base of the decompositions that wrap another one: :class:`WrappedDecomposition`."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Optional, Tuple

import torch
from torch import Tensor

from ._decomposition import Decomposition, Structure

__all__ = ["WrappedDecomposition", "WrappedPlan", "check_rows", "map_rows", "row_fields"]


def check_rows(name: str, value: object) -> Any:
    """``value`` if it holds one row per sample: a tensor with a batch dimension (dim 0), or a
    tuple of them with as many rows each (e.g. a :class:`~uniloss.KeypointTarget`)."""
    fields = value if isinstance(value, tuple) and value else (value,)
    for field in fields:
        if not isinstance(field, Tensor):
            raise TypeError(
                f"Expected `{name}` to be a tensor (or a tuple of tensors) with one row per sample "
                f"(dim 0), but got {type(field).__name__}"
            )
        if field.dim() == 0:
            raise ValueError(f"Expected `{name}` to have a batch dimension (dim 0), but got a scalar")
    if len({field.shape[0] for field in fields}) > 1:
        raise ValueError(f"Expected the tensors of `{name}` to have as many rows each, but got "
                         f"{[field.shape[0] for field in fields]}")
    return value


def row_fields(value: Any) -> Tuple[Tensor, ...]:
    """The tensors of a value :func:`check_rows` accepts."""
    return (value,) if isinstance(value, Tensor) else tuple(value)


def map_rows(fn: Callable[..., Tensor], *values: Any) -> Any:
    """``fn`` applied to the tensors of values :func:`check_rows` accepts, field by field (a tuple
    comes back as the first value's type: a named tuple stays one)."""
    first = values[0]
    if isinstance(first, Tensor):
        return fn(*values)
    out = [fn(*fields) for fields in zip(*values)]
    return type(first)(*out) if hasattr(first, "_fields") else type(first)(out)


@dataclass(frozen=True)
class WrappedPlan:
    """What a wrapper's ``prepare`` returns: the set the inner decomposition was prepared on."""

    scores: Tensor  # this call's scores, as the engine passed them
    inner_scores: Tensor  # the inner decomposition's scores; rows offset .. offset + n are `scores`'
    target: Any  # the inner decomposition's prepared target
    offset: int = 0


class WrappedDecomposition(Decomposition):
    r"""A decomposition that evaluates another one (``self.decomposition``) on a set of samples
    made from each call's batch: the global batch of all ranks, the batch plus a memory.

    A subclass defines :meth:`expand` (the set, for one call's ``scores`` and ``target``, both with
    one row per sample) and whatever else differs (checks, side effects). Every other hook of
    :class:`~uniloss.Decomposition` is forwarded here to the inner decomposition on the prepared
    set, so a wrapped metric keeps each of its fast paths: its :class:`~uniloss.Structure`
    (anchors from per-run counts, block by block on huge heatmaps), ``batch_metric``,
    ``state_dict``.
    """

    def __init__(self, decomposition: Decomposition) -> None:
        if not isinstance(decomposition, Decomposition):
            raise TypeError(
                "Expected `decomposition` to be a uniloss.Decomposition, but got "
                f"{type(decomposition).__name__}"
            )
        self.decomposition = decomposition

    # ------------------------------------------------------------------ what a subclass defines

    def expand(self, scores: Tensor, target: Any) -> Tuple[Tensor, Any, int]:  # pragma: no cover
        """The set the inner decomposition sees for this call (``target``: what :func:`check_rows`
        accepts): its scores (holding ``scores`` at the rows ``offset ..``, differentiable in
        them), its target, and ``offset``."""
        raise NotImplementedError(f"{type(self).__name__} does not define expand(scores, target)")

    def _live(self, scores: Tensor) -> Tensor:
        """``scores`` as they enter the inner set when the engine passes others than those the
        target was prepared with (the block-by-block gradient pass works on detached copies)."""
        return scores

    # ------------------------------------------------------------------ the hooks, forwarded

    @property
    def higher_is_better(self) -> bool:  # type: ignore[override]  # (a class attribute on Decomposition)
        return self.decomposition.higher_is_better

    def check(self, scores: Tensor, target: Any) -> None:
        """The inner decomposition's checks, on this call's batch."""
        if isinstance(target, WrappedPlan):
            return
        check_rows("scores", scores)
        check_rows("target", target)
        self.decomposition.check(scores, target)

    def prepare(self, scores: Tensor, target: Any, generator: Optional[torch.Generator] = None) -> WrappedPlan:
        """Prepares the inner decomposition on the set :meth:`expand` makes of this call's batch."""
        if isinstance(target, WrappedPlan):
            return target
        inner_scores, inner_target, offset = self.expand(scores, check_rows("target", target))
        return WrappedPlan(scores, inner_scores, self.decomposition.prepare(inner_scores, inner_target, generator),
                           offset)

    def metric(self, scores: Tensor, target: Any) -> Tensor:
        """The inner decomposition's exact metric on the set :meth:`expand` makes."""
        with torch.no_grad():
            inner_scores, inner_target, _ = self.expand(check_rows("scores", scores), check_rows("target", target))
            return self.decomposition.metric(inner_scores, inner_target)

    def _plan(self, target: Any, scores: Optional[Tensor]) -> WrappedPlan:
        if not isinstance(target, WrappedPlan):
            raise TypeError(
                f"{type(self).__name__}.comparisons(), .best() and .evaluate() take the target returned "
                f"by .prepare(scores, target), but got {type(target).__name__}"
            )
        return target

    def unwrap(self, target: Any, scores: Optional[Tensor] = None) -> Tuple[Tensor, Any]:
        """The inner decomposition's ``(scores, target)`` for a target :meth:`prepare` returned;
        given ``scores`` other than those it was prepared with (the same shape), the inner scores
        hold them in place of those, the rest detached."""
        plan = self._plan(target, scores)
        if scores is None or scores is plan.scores:
            return plan.inner_scores, plan.target
        rest = plan.inner_scores.detach()
        start, stop = plan.offset, plan.offset + scores.shape[0]
        return torch.cat([rest[:start], self._live(scores), rest[stop:]]), plan.target

    def comparisons(self, scores: Tensor, target: Any) -> Tensor:
        """The inner comparisons on the prepared set."""
        return self.decomposition.comparisons(*self.unwrap(target, scores))

    def best(self, target: Any) -> Tensor:
        """The inner ``best`` on the prepared set."""
        return self.decomposition.best(self.unwrap(target)[1])

    def evaluate(self, bits: Tensor, target: Any) -> Tensor:
        """The inner ``evaluate`` on the prepared set."""
        return self.decomposition.evaluate(bits, self.unwrap(target)[1])

    def batch_metric(self, target: Any) -> Optional[Tensor]:
        """The inner ``batch_metric`` on the prepared set."""
        return self.decomposition.batch_metric(self.unwrap(target)[1])

    def structure(self, target: Any) -> Optional[Structure]:
        """The inner ``structure`` on the prepared set (its ``rows`` the set's); its
        ``comparisons_block``, ``margins``, ``run_pull`` and ``run_least`` take this call's scores (placed in the
        set as :meth:`unwrap` places them)."""
        inner_scores, inner_target = self.unwrap(target)
        inner = self.decomposition.structure(inner_target)
        if inner is None:
            return None
        rows = inner.rows if inner.rows is not None else (inner_scores.shape[0] if inner_scores.dim() else 1)
        block, margins, run_pull, run_least = inner.comparisons_block, inner.margins, inner.run_pull, inner.run_least
        if margins is not None:
            inner = replace(inner, margins=lambda scores: margins(self.unwrap(target, scores)[0]))
        if run_pull is not None:
            inner = replace(inner, run_pull=lambda scores, tau: run_pull(self.unwrap(target, scores)[0], tau))
        if run_least is not None:
            inner = replace(inner, run_least=lambda scores: run_least(self.unwrap(target, scores)[0]))
        if block is None:
            return replace(inner, rows=rows)

        def comparisons_block(scores: Tensor, start: int, stop: int) -> Tensor:
            return block(self.unwrap(target, scores)[0], start, stop)

        return replace(inner, comparisons_block=comparisons_block, rows=rows)

    def state_dict(self) -> Any:
        """The inner decomposition's state (e.g. a :class:`~uniloss.distributed.CrossBatchMemory`'s)."""
        return self.decomposition.state_dict()

    def load_state_dict(self, state: Any) -> None:
        """Restores the inner decomposition's state."""
        self.decomposition.load_state_dict(state)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.decomposition!r})"
