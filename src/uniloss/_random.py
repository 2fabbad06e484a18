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


def random_bytes(n: int, generator, device) -> Tensor:
    """``[n]`` uint8, uniform over all 256 values: eight per 64-bit draw (full-range ``random_``)."""
    where = device if generator is None else generator.device
    words = torch.empty((n + 7) // 8, dtype=torch.int64, device=where)
    words.random_(-(2**63), None, generator=generator)
    out = words.view(torch.uint8)
    return _on(out if out.numel() == n else out[:n], device)
