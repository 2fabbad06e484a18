"""Checks for users' own decompositions."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import Tensor

from ._decomposition import Decomposition

__all__ = ["assert_exact_decomposition"]


def assert_exact_decomposition(
    decomposition: Decomposition,
    scores: Tensor,
    target: Any,
    reference_fn: Callable[[Tensor, Any], Any],
    *,
    atol: float = 1e-6,
    num_random: int = 8,
    generator: Optional[torch.Generator] = None,
) -> None:
    """Assert that a decomposition computes the metric it claims, and keeps its contract.

    Checks, raising ``AssertionError`` with what differed:

    1. exactness: ``evaluate(comparisons(scores) > 0)`` (or ``batch_metric``, for a
       decomposition that has one) equals ``reference_fn(scores, target)`` within ``atol`` (use
       scores without ties: a tie is where decompositions may legitimately differ from a
       reference);
    2. shapes: ``comparisons`` is ``[l]`` floating, ``best`` is ``[l]`` bool;
    3. gradient: ``comparisons`` is differentiable in ``scores`` (when ``l > 0``);
    4. vectorisation: ``evaluate`` on ``t`` stacked configurations (the current one, best and
       ``num_random`` random ones) equals ``evaluate`` on each row alone;
    5. best is best: no configuration tried scores better than ``best``.

    Example::

        >>> import torch, uniloss
        >>> from uniloss.testing import assert_exact_decomposition
        >>> def accuracy(scores, target):
        ...     return (scores.argmax(1) == target).float().mean()
        >>> assert_exact_decomposition(uniloss.MulticlassAccuracy(), torch.randn(6, 4),
        ...                            torch.randint(0, 4, (6,)), accuracy)
    """
    scores = scores.detach().clone().requires_grad_(True)
    prepared = decomposition.prepare(scores, target, generator)
    c = decomposition.comparisons(scores, prepared)
    assert c.dim() == 1 and c.is_floating_point(), (
        f"comparisons() must return a 1-D floating tensor, got shape {tuple(c.shape)} dtype {c.dtype}"
    )
    best = decomposition.best(prepared)
    assert best.dtype == torch.bool and best.shape == c.shape, (
        f"best() must return a bool tensor shaped like comparisons() {tuple(c.shape)}, got "
        f"{best.dtype} {tuple(best.shape)}"
    )
    if c.numel():
        (grad,) = torch.autograd.grad(c.sum(), scores, allow_unused=True)
        assert grad is not None, "comparisons() is not differentiable in scores (no gradient path)"

    with torch.no_grad():
        hard = c.detach() > 0
        ours = decomposition.batch_metric(prepared)
        if ours is None:
            ours = decomposition.evaluate(hard[None], prepared)[0]
        reference = torch.as_tensor(reference_fn(scores.detach(), target), dtype=torch.float64)
        assert torch.allclose(ours.double().cpu(), reference.cpu(), atol=atol, equal_nan=True), (
            f"the batch metric (evaluate(comparisons > 0)) = {ours.item():.10g} but reference_fn gave "
            f"{reference.item():.10g} (difference {abs(ours.item() - reference.item()):.3g})"
        )
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        rand = torch.rand((num_random, c.numel()), generator=generator).to(c.device) < 0.5
        configs = torch.cat([hard[None], best[None], rand], 0)
        stacked = decomposition.evaluate(configs, prepared)
        assert stacked.shape == (configs.shape[0],), (
            f"evaluate() on [t, l] bits must return [t] values, got shape {tuple(stacked.shape)}"
        )
        rows = torch.stack([decomposition.evaluate(row[None], prepared)[0] for row in configs])
        assert torch.allclose(stacked, rows, atol=atol, equal_nan=True), (
            "evaluate() on stacked configurations differs from evaluate() row by row: "
            f"{stacked.tolist()} vs {rows.tolist()}"
        )
        top = stacked[1]
        if not torch.isnan(top):
            worse = stacked > top + atol if decomposition.higher_is_better else stacked < top - atol
            assert not bool(worse.any()), (
                f"best() is not the best configuration: it scores {top.item():.6g}, another "
                f"scored {stacked[worse][0].item():.6g}"
            )
