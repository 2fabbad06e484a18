"""Conversions of bool tensors that the engine makes on every call, at a CPU's best speed."""

from __future__ import annotations

import torch
from torch import Tensor

# From this many elements on, bool -> float goes through uint8 (the same values): the bool
# conversion kernel is three to four times slower on a CPU (16k elements: 23 us against 11 us).
_VIA_BYTES = 4096


def as_float(bits: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """``bits.to(dtype)`` for a bool tensor (any other dtype: converted as it is), exactly."""
    if bits.dtype == torch.bool and bits.numel() >= _VIA_BYTES:
        return bits.view(torch.uint8).to(dtype)
    return bits.to(dtype)
