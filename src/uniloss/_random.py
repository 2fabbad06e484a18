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
    return torch.randint(_SIGN, -_SIGN - 1, (n,), generator=generator, device=where).bitwise_xor_(_SIGN)


_PIECE_WORDS = 1 << 20  # words a piece of a large draw on a CPU generator (8 MB)


def random_word_rows(rows: int, per_row: int, generator, device) -> Tensor:
    """``[rows, per_row]`` int64: :func:`random_words` of ``rows * per_row``, the stream dealt out
    over the rows (word ``w * rows + g`` at ``[g, w]``), on ``device``.

    A large draw on a CPU generator (the global one where ``generator`` is ``None``) is made a
    piece at a time into the result: a CPU generator's stream does not depend on how its draws
    are split (tested), and the peak memory is the result's instead of twice it (the draw and its
    transposed copy). On another device's generator, or inside ``torch.compile``, one draw."""
    where = torch.device(device if generator is None else generator.device)
    n = rows * per_row
    if rows == 1 or per_row == 1:
        return _on(random_words(n, generator, where).view(rows, per_row), device)
    if where.type != "cpu" or n <= 2 * _PIECE_WORDS or torch.compiler.is_compiling():
        return _on(random_words(n, generator, where).view(per_row, rows).t().contiguous(), device)
    out = torch.empty(rows, per_row, dtype=torch.int64, device=where)
    piece = max(1, _PIECE_WORDS // rows)  # words a row per piece
    for start in range(0, per_row, piece):
        stop = min(per_row, start + piece)
        out[:, start:stop] = random_words((stop - start) * rows, generator, where).view(stop - start, rows).t()
    return _on(out, device)


def random_bytes(n: int, generator, device) -> Tensor:
    """``[n]`` uint8, uniform over all 256 values: eight per 64-bit draw (:func:`random_words`)."""
    out = random_words((n + 7) // 8, generator, device).view(torch.uint8)
    return _on(out if out.numel() == n else out[:n], device)
