"""Random draws from an optional generator that may live on another device than the data.

A ``torch.Generator`` is tied to a device; the draws are made there and moved to ``device``, so a
CPU generator seeds anchors for CUDA scores reproducibly.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor


def _on(x: Tensor, device) -> Tensor:
    return x if x.device == torch.device(device) else x.to(device)


def randint(high: int, size: Tuple[int, ...], generator, device) -> Tensor:
    if generator is None:
        return torch.randint(high, size, device=device)
    return _on(torch.randint(high, size, generator=generator, device=generator.device), device)


def rand(size: Tuple[int, ...], generator, device, dtype=None) -> Tensor:
    if generator is None:
        return torch.rand(size, device=device, dtype=dtype)
    return _on(torch.rand(size, generator=generator, device=generator.device, dtype=dtype), device)


def multinomial(weights: Tensor, num: int, generator) -> Tensor:
    if generator is None or generator.device == weights.device:
        return torch.multinomial(weights, num, replacement=True, generator=generator)
    return torch.multinomial(
        weights.to(generator.device), num, replacement=True, generator=generator
    ).to(weights.device)


def randperm(n: int, generator, device) -> Tensor:
    if generator is None:
        return torch.randperm(n, device=device)
    return _on(torch.randperm(n, generator=generator, device=generator.device), device)


_SIGN = -(2**63)


def random_words(n: int, generator, device) -> Tensor:
    """``[n]`` int64, uniform over all ``2**64`` values, drawn where the generator lives.

    The stream of ``Tensor.random_(-2**63, None)`` (one 64-bit draw each), written as a
    ``torch.randint`` that ``torch.compile`` keeps in its graph (``random_`` breaks it):
    ``randint(-2**63, 2**63 - 1)`` is the same 64-bit draw modulo ``2**64 - 1`` plus ``-2**63``,
    that is the draw with its sign bit flipped, except for the one draw ``2**64 - 1`` (probability
    ``2**-64``); flipping the sign bit back gives ``random_``'s values.
    """
    where = device if generator is None else generator.device
    return torch.randint(_SIGN, -_SIGN - 1, (n,), generator=generator, device=where) ^ _SIGN


def random_bytes(n: int, generator, device) -> Tensor:
    """``[n]`` uint8, uniform over all 256 values: eight per 64-bit draw (:func:`random_words`)."""
    out = random_words((n + 7) // 8, generator, device).view(torch.uint8)
    return _on(out if out.numel() == n else out[:n], device)
