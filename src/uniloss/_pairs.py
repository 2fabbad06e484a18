"""Vectorised construction of within-group pairs (a ragged Cartesian product)."""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor


def grouped_pairs(group_a: Tensor, group_b: Tensor, num_groups: int) -> Tuple[Tensor, Tensor]:
    """All pairs ``(i, j)`` with ``group_a[i] == group_b[j]``, without a Python loop.

    Args:
        group_a: ``[A]`` int64 group id of each a-item, sorted ascending.
        group_b: ``[B]`` int64 group id of each b-item, sorted ascending.
        num_groups: number of groups ``G`` (ids in ``[0, G)``).

    Returns:
        ``(ia, ib)``: indices into the a- and b-items of every pair, ordered by group, then
        a-item, then b-item (so ``ia`` is sorted: the pairs of one a-item form a run).
    """
    device = group_a.device
    cb = torch.bincount(group_b, minlength=num_groups)
    sb = torch.cumsum(cb, 0) - cb
    # For every a-item, its group's b-items form one run of length cb[group].
    per_a = cb[group_a]
    ia = torch.repeat_interleave(torch.arange(group_a.numel(), device=device), per_a)
    run_start = torch.cumsum(per_a, 0) - per_a
    offset = torch.arange(ia.numel(), device=device) - run_start[ia]
    ib = sb[group_a[ia]] + offset
    return ia, ib
