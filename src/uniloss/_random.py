"""Random draws from an optional generator that may live on another device than the data.

A ``torch.Generator`` is tied to a device; the draws are made there and moved to ``device``, so a
CPU generator seeds anchors for CUDA scores reproducibly.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor


def randint(high: int, size: Tuple[int, ...], generator, device) -> Tensor:
    if generator is None:
        return torch.randint(high, size, device=device)
    return torch.randint(high, size, generator=generator, device=generator.device).to(device)


def rand(size: Tuple[int, ...], generator, device) -> Tensor:
    if generator is None:
        return torch.rand(size, device=device)
    return torch.rand(size, generator=generator, device=generator.device).to(device)


def multinomial(weights: Tensor, num: int, generator) -> Tensor:
    if generator is None or generator.device == weights.device:
        return torch.multinomial(weights, num, replacement=True, generator=generator)
    return torch.multinomial(
        weights.to(generator.device), num, replacement=True, generator=generator
    ).to(weights.device)


def randperm(n: int, generator, device) -> Tensor:
    if generator is None:
        return torch.randperm(n, device=device)
    return torch.randperm(n, generator=generator, device=generator.device).to(device)
