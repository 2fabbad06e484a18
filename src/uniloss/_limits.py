"""The engine's size limits, in one object: :class:`EngineLimits`.

Every engine module reads its sizes from :func:`current_limits` at call time (no size constant
lives anywhere else), and :func:`uniloss.functional.choose_path` picks the engine path from them.
The defaults are :data:`DEFAULT_LIMITS`; the limits in force are held in one place,
:data:`LIMITS`, which :func:`limits` overrides for a ``with`` block (tests shrink them to reach the
large-problem code on small problems, ``scripts/gpu_performance.py`` gives a CPU the
accelerators' static-layout policy; a pytest test may equally
``monkeypatch.setattr(_limits, "LIMITS", _limits.LIMITS.override(dense_bits=0))``)::

    >>> from uniloss._limits import current_limits, limits
    >>> with limits(dense_bits=0):
    ...     current_limits().dense_bits
    0
    >>> current_limits().dense_bits
    131072
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Iterator, Union

import torch

__all__ = ["EngineLimits", "DEFAULT_LIMITS", "LIMITS", "current_limits", "limits"]


@dataclass(frozen=True)
class EngineLimits:
    """Every size the engine decides by. Counts are of comparisons (bits) unless noted.

    Attributes:
        chunk_bits: ``chunk_bits``'s default: above this many comparisons a decomposition whose
            :class:`~uniloss.Structure` has ``comparisons_block`` (PCK on large heatmaps) is
            processed block by block (the ``"chunked"`` path): about 4 bytes a bit per float
            tensor otherwise.
        block_bits: the size of those blocks (at most ``chunk_bits``): ``2**20``, a few float
            tensors of 4 MB each at a time; each block's backward also writes a gradient of the
            scores' size, so smaller blocks cost more where the scores are large (16 x 16 heatmaps
            of 64 x 64: 1.1x the time at ``2**18``).
        static_max_bits: the most comparisons a static layout (see
            :class:`uniloss._decomposition.StaticLayout`) offered on an accelerator may hold
            (besides ``chunk_bits`` for a decomposition processed block by block); a larger one is
            laid out exactly. A static layout holds the most comparisons the target's shape allows
            (AP: ``n^2 / 4``, whatever the number of positives), which on a GPU costs little next
            to a synchronisation per call.
        cpu_static_max_bits: the same on a CPU: 0 (no offer but an empty layout). A CPU has no
            device to synchronise with (``nonzero`` reads memory the host already has), and the
            static layout cost 1.2-1.8x the exact one per AP call (batch 16-256, one thread,
            2026-11-30), so a CPU lays every problem out exactly. tests/test_no_sync.py checks the
            accelerators' policy on a CPU by raising it to ``static_max_bits``.
        unpack_bits: random anchors x bits up to this many are unpacked once, with a float copy
            for the distances and the backward pass; above it the distances come from byte
            histograms of the packed codes and the backward pass from 256-entry tables (no float
            ``[b, L]`` tensor: with the CPU allocator a large temporary costs page faults on every
            call).
        dense_bits: below this many anchors x bits the structured engine forms the anchors'
            disagreement with ``hard`` densely (one ``[t, l]`` bool and its float copy): fewer
            operations, which is what small problems cost.
        select_block: above this many bits, the rank-select of a nearby flip works chunk by chunk
            (an int64 cumsum over all bits would cost 8 bytes a bit).
        select_chunk: the bits of one of those chunks.
        weight_outputs: the most elements the ``S`` toggled outputs of a decoded metric's run
            weights (:attr:`uniloss.Structure.run_weights`, ``pull_weights="metric"``) may hold;
            above it its runs weigh alike.
        weight_counts: the most class counts (``[rows, C]``) the run weights of a metric of the
            class counts (the zoo's argmax metrics) may take; above it its runs weigh alike.
        chain_segments: how many segments ``interpolation="chain"`` cuts the chain of comparisons into
            for a metric known only through ``evaluate`` (evaluated at one more point than this;
            exact up to this many comparisons). Metrics with ``Structure.chain`` or
            ``chain_gains`` are exact whatever it says, and so are metrics of the runs' counts
            (``Structure.evaluate_zeros``: every point, up to ``chain_elements``).
        chain_elements: the most elements the chain's evaluations may hold together: the
            ``[points, l]`` bits of ``evaluate``, the ``[points, S]`` counts of
            ``evaluate_zeros``, the class counts of a block of the zoo's closed form; above it
            fewer points (fewer rows per block). A traced step's chain through sums
            (:func:`uniloss.from_metric`) holds a row of its sums' elements per point; above it
            the chain is evaluated through the traced code. A static layout counts the runs and bits of its
            shapes (AP: ``n`` runs and ``n^2 / 4`` bits, where the exact layout has ``P`` and
            ``P N``), so on large batches it may take fewer points than the exact layout (AP
            interpolated from about ``n = 600``).
    """

    chunk_bits: int = 1 << 22
    block_bits: int = 1 << 20
    static_max_bits: int = 1 << 22
    cpu_static_max_bits: int = 0
    unpack_bits: int = 1 << 15
    dense_bits: int = 1 << 17
    select_block: int = 1 << 22
    select_chunk: int = 4096
    weight_outputs: int = 1 << 24
    weight_counts: int = 1 << 22
    chain_segments: int = 256
    chain_elements: int = 1 << 25

    def static_bits_for(self, device: Union[torch.device, str]) -> int:
        """The most comparisons a static layout may hold on ``device`` (the device policy). Inside
        ``torch.compile`` every device gets the accelerators' (a graph has no data-dependent shape)."""
        if torch.device(device).type != "cpu" or torch.compiler.is_compiling():
            return self.static_max_bits
        return self.cpu_static_max_bits

    def override(self, **changes: int) -> "EngineLimits":
        """These limits with some fields changed (an unknown field name raises ``TypeError``)."""
        return replace(self, **changes)


DEFAULT_LIMITS = EngineLimits()

# The limits in force: DEFAULT_LIMITS but inside `limits(...)` (process-wide, like the module
# constants it replaced: an override holds for every thread).
LIMITS = DEFAULT_LIMITS


def current_limits() -> EngineLimits:
    """The limits in force, :data:`LIMITS`: :data:`DEFAULT_LIMITS`, or those of the innermost
    :func:`limits`."""
    return LIMITS


@contextmanager
def limits(**overrides: int) -> Iterator[EngineLimits]:
    """Overrides some fields of the limits in force for a ``with`` block (nests; restores on
    exit). An unknown field name raises ``TypeError``."""
    global LIMITS
    previous = LIMITS
    LIMITS = previous.override(**overrides)
    try:
        yield LIMITS
    finally:
        LIMITS = previous
