"""Anchor configurations for the adaptive interpolation (paper sec. 3.5).

The sampler knows nothing about a metric's meaning: it sees the best configuration (from the
ground truth), the current hard configuration ``[c > 0]`` and a random generator. Anchors are an
:class:`AnchorSet`, a type of its own, so that their storage can change (e.g. a base
configuration plus flipped indices) without touching decompositions or the interpolation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor

from ._random import multinomial as _multinomial, rand as _rand, randint as _randint


@dataclass(frozen=True)
class AnchorSet:
    """A set of ``t`` anchor configurations over ``l`` bits.

    Attributes:
        bits: ``[t, l]`` bool, one configuration per row.
        kinds: ``(name, count)`` pairs in row order, e.g.
            ``(("best", 1), ("good", 16), ("nearby", 16), ("bad", 16))``.
    """

    bits: Tensor
    kinds: Tuple[Tuple[str, int], ...]

    @property
    def num_anchors(self) -> int:
        return self.bits.shape[0]

    def dense(self) -> Tensor:
        """The anchors as a dense ``[t, l]`` bool tensor."""
        return self.bits

    def disagreement(self, hard: Tensor) -> Tensor:
        """``[t, l]`` float: 1 where an anchor's bit differs from ``hard``, else 0."""
        return (self.bits != hard).to(torch.get_default_dtype())

    def kind_slices(self) -> dict:
        """Row ranges of each kind, e.g. ``{"best": slice(0, 1), ...}``."""
        out, start = {}, 0
        for name, count in self.kinds:
            out[name] = slice(start, start + count)
            start += count
        return out


def sample_anchors(
    best: Tensor,
    hard: Tensor,
    *,
    num_good: int = 16,
    num_nearby: int = 16,
    num_bad: int = 16,
    good_flips: int = 1,
    generator: Optional[torch.Generator] = None,
) -> AnchorSet:
    """Draw the paper's anchors: best, good, nearby and bad.

    Args:
        best: ``[l]`` bool, the ground-truth configuration (every comparison right).
        hard: ``[l]`` bool, the current hard configuration ``[c > 0]``.
        num_good: anchors equal to ``best`` with ``good_flips`` random bits flipped.
        num_nearby: anchors equal to ``hard`` with one bit flipped toward ``best`` (a bit
            where they differ, uniformly); a uniformly random bit when ``hard == best``.
        num_bad: uniformly random configurations.
        good_flips: bits flipped per good anchor (drawn with replacement, so a good anchor may
            flip fewer when draws repeat; for 1, exactly one).
        generator: source of randomness; the same generator state gives the same anchors.

    Returns:
        An :class:`AnchorSet` of ``1 + num_good + num_nearby + num_bad`` rows; the best anchor
        is always row 0. No Python loop over anchors or bits and no host synchronisation.
    """
    l = best.numel()
    device = best.device
    rows = [best[None]]
    kinds = [("best", 1)]
    if num_good and l:
        good = best.expand(num_good, l).clone()
        idx = _randint(l, (num_good, good_flips), generator, device)
        good.scatter_(1, idx, ~best[idx])
        rows.append(good)
        kinds.append(("good", num_good))
    if num_nearby and l:
        differ = hard != best
        # Flip toward best where they differ; anywhere (uniformly) when hard is already best.
        weights = torch.where(differ.any(), differ, torch.ones_like(differ)).float()
        idx = _multinomial(weights, num_nearby, generator)
        near = hard.expand(num_nearby, l).clone()
        near.scatter_(1, idx[:, None], ~hard[idx][:, None])
        rows.append(near)
        kinds.append(("nearby", num_nearby))
    if num_bad and l:
        rows.append(_rand((num_bad, l), generator, device) < 0.5)
        kinds.append(("bad", num_bad))
    return AnchorSet(torch.cat(rows, 0), tuple(kinds))
