"""Anchor configurations for the adaptive interpolation (paper sec. 3.5).

The sampler knows nothing about a metric's meaning: it sees the best configuration (from the
ground truth), the current hard configuration ``[c > 0]`` and a random generator. Anchors are an
:class:`AnchorSet`, a type of its own, held either densely (``[t, l]`` bits) or in the
structured form the sampler produces:

* the best anchor is ``best`` itself (row 0);
* the good and nearby anchors are a *base* configuration with a few bits flipped: ``flips``
  ``[t_f, k]`` int64 bit indices (``-1``: no flip; a row never repeats an index), the first
  ``num_from_best`` rows flipped from ``best``, the others from ``hard``;
* the ``b`` random ("bad") anchors are held as their disagreement with ``hard``, packed eight
  anchors to a byte: bit ``j`` of ``codes[g, k]`` is 1 where random anchor ``8 g + j`` differs
  from ``hard`` at bit ``k`` (``hard`` XOR uniform bits is uniform).

Measured from ``hard``, a squared distance is a sum over the bits where the anchor differs from
``hard`` (see :mod:`uniloss._interpolation`), so the structured form gives every distance in
``O(k)`` per flip anchor and ``O(l)`` per byte of random anchors without a ``[t, l]`` tensor, and
lets a decomposition with a :class:`~uniloss.Structure` evaluate the metric at the
anchors incrementally. :meth:`AnchorSet.dense` materialises the bits (the dense fallback).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ._cache import TensorCache
from ._function import is_wrapped
from ._limits import current_limits
from ._random import randint as _randint, random_bytes as _random_bytes, random_word_rows as _random_word_rows  # noqa: F401 (the tests draw bytes with it)


class AnchorSet:
    """A set of ``t`` anchor configurations over ``l`` bits, dense or structured.

    ``AnchorSet(bits, kinds)`` wraps dense ``[t, l]`` bool bits; :func:`sample_anchors` returns
    the structured form (see the module documentation), which :meth:`dense` (and :attr:`bits`)
    materialise. Row order is the order of ``kinds``, e.g.
    ``(("best", 1), ("good", 16), ("nearby", 16), ("bad", 16))``: in the structured form the
    best anchor, then the flip anchors, then the random ones.

    Attributes:
        kinds: ``(name, count)`` pairs in row order.
        num_bits: ``l``.
        best, hard: ``[l]`` bool base configurations (structured form; ``None`` when dense).
        flips: ``[t_f, k]`` int64 flipped bits, ``-1`` for none (``k == 1``: never ``-1``).
        num_from_best: how many of the ``flips`` rows start from ``best`` (the rest: ``hard``).
        codes: ``[ceil(b / 8), l]`` uint8 packed disagreement of the ``b = num_random`` random
            anchors with ``hard``.
    """

    def __init__(
        self,
        bits: Optional[Tensor] = None,
        kinds: Tuple[Tuple[str, int], ...] = (),
        *,
        best: Optional[Tensor] = None,
        hard: Optional[Tensor] = None,
        flips: Optional[Tensor] = None,
        num_from_best: int = 0,
        codes: Optional[Tensor] = None,
        num_random: int = 0,
    ) -> None:
        self.kinds = tuple(kinds)
        self._bits = bits
        self.best, self.hard = best, hard
        self.flips, self.num_from_best = flips, num_from_best
        self.codes, self.num_random = codes, num_random
        if bits is not None:
            self.num_bits = bits.shape[-1] if bits.dim() else 0
        else:
            assert best is not None, "a structured AnchorSet needs best"
            self.num_bits = best.numel()

    @property
    def is_structured(self) -> bool:
        return self._bits is None

    @property
    def num_anchors(self) -> int:
        if self._bits is not None:
            return self._bits.shape[0]
        assert self.flips is not None  # structured form
        return 1 + self.flips.shape[0] + self.num_random

    @property
    def bits(self) -> Tensor:
        """The anchors as a dense ``[t, l]`` bool tensor (materialised for a structured set)."""
        return self.dense()

    def dense(self) -> Tensor:
        """The anchors as a dense ``[t, l]`` bool tensor."""
        if self._bits is not None:
            return self._bits
        # The structured form: its fields are all set.
        assert self.best is not None and self.hard is not None and self.flips is not None and self.codes is not None
        l, t_f, nb = self.num_bits, self.flips.shape[0], self.num_from_best
        rows = torch.cat([self.best.expand(1 + nb, l), self.hard.expand(t_f - nb, l)])
        if self.flips.numel() and l:
            valid = self.flips >= 0
            count = torch.zeros(t_f, l, dtype=torch.int32, device=rows.device)
            count.scatter_add_(1, self.flips.clamp_min(0), valid.to(torch.int32))
            rows = torch.cat([rows[:1], rows[1:] ^ (count > 0)])
        random = self.hard[None] ^ unpack_codes(self.codes, self.num_random).bool()
        return torch.cat([rows, random], 0)

    def kind_slices(self) -> dict:
        """Row ranges of each kind, e.g. ``{"best": slice(0, 1), ...}``."""
        out, start = {}, 0
        for name, count in self.kinds:
            out[name] = slice(start, start + count)
            start += count
        return out

    def __repr__(self) -> str:
        form = "structured" if self.is_structured else "dense"
        return f"AnchorSet({form}, num_bits={self.num_bits}, kinds={self.kinds})"


_SHIFTS = TensorCache()
_LOW_BITS = 0x0101010101010101  # bit 0 of each byte of an int64 word


def unpack_codes(codes: Tensor, num: int) -> Tensor:
    """``[num, l]`` uint8 0/1: the random anchors' disagreement bits from ``codes`` ``[g, l]``.

    Long rows are unpacked eight bytes at a time as int64 words (shift, then keep bit 0 of each
    byte): the same bytes in an eighth of the element operations.
    """
    groups, l = codes.shape
    dtype = torch.int64 if l >= 256 else torch.uint8
    shifts = _SHIFTS.get((codes.device, dtype), lambda: torch.arange(8, dtype=dtype, device=codes.device).view(1, 8, 1))
    if l < 256 or torch.compiler.is_compiling() or is_wrapped(codes):  # (compiled: fused anyway; no storage arithmetic)
        bits = (codes[:, None, :] >> shifts.to(codes.dtype)) & 1
        return bits.view(groups * 8, l)[:num]
    width = -(-l // 8) * 8
    if codes.stride(1) != 1 or codes.stride(0) % 8 or codes.storage_offset() % 8 or (
        codes.storage_offset() + (groups - 1) * codes.stride(0) + width > codes.untyped_storage().nbytes()
    ):
        aligned = codes.new_empty(groups, width)
        aligned[:, :l] = codes
        codes = aligned
    words = codes.as_strided((groups, width), (codes.stride(0), 1)).view(torch.int64)
    bits = (words[:, None, :] >> shifts) & _LOW_BITS
    return bits.view(torch.uint8).view(groups * 8, width)[:num, :l]


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
    """Draw the paper's anchors: best, good, nearby and bad, in the structured form.

    Args:
        best: ``[l]`` bool, the ground-truth configuration (every comparison right).
        hard: ``[l]`` bool, the current hard configuration ``[c > 0]``.
        num_good: anchors equal to ``best`` with ``good_flips`` random bits flipped.
        num_nearby: anchors equal to ``hard`` with one bit flipped toward ``best`` (a bit
            where they differ, uniformly); a uniformly random bit when ``hard == best``.
        num_bad: uniformly random configurations.
        good_flips: bits flipped per good anchor (drawn with replacement, so a good anchor may
            flip fewer when draws repeat; for 1, exactly one).
        generator: source of randomness; the same generator state gives the same anchors. A
            draw does not depend on how many bits follow the ones it touches (a good flip is bit
            ``floor(u l)``, ``u = r / 2**53``; a random anchor's bits come from 64-bit words drawn
            in bit order, see ``_random_codes``), so the engine draws the same anchors over a
            static layout's first ``l`` bits (see :class:`uniloss._decomposition.StaticLayout`).

    Returns:
        A structured :class:`AnchorSet` of ``1 + num_good + num_nearby + num_bad`` rows; the
        best anchor is always row 0. Memory ``O(t k + l b / 8)``; no Python loop over anchors
        or bits and no host synchronisation (below ``2**22`` bits).
    """
    return draw_anchors(
        best, hard, hard != best, num_good=num_good, num_nearby=num_nearby, num_bad=num_bad,
        good_flips=good_flips, generator=generator,
    )


def draw_anchors(
    best: Tensor, hard: Tensor, wrong: Tensor, *, num_good: int, num_nearby: int, num_bad: int,
    good_flips: int, generator: Optional[torch.Generator], num_valid: Optional[Tensor] = None,
    invalid: Optional[Tensor] = None,
) -> AnchorSet:
    """:func:`sample_anchors` given ``wrong = hard != best`` (which the engine has already).

    ``num_valid`` (a 0-dim int64 tensor) and ``invalid`` (``[l]`` bool, ``True`` from bit
    ``num_valid`` on): a static layout (see :class:`uniloss._decomposition.StaticLayout`) whose
    first ``num_valid`` bits only are comparisons. The draws are the same as for those
    ``num_valid`` bits alone: the good and nearby flips scale their uniform draws by the count
    (on the device: no host synchronisation), the random codes of a bit do not depend on how many
    bits there are (see :func:`_random_codes`), and the random anchors agree with ``hard`` on the
    padding."""
    l = best.numel()
    device = best.device
    count = l if num_valid is None else num_valid
    num_good, num_nearby, num_bad = (num_good, num_nearby, num_bad) if l else (0, 0, 0)
    # Every draw of the call at once, in the order good, nearby, random (the stream's order). A
    # graph cannot hold a generator: with one, torch.compile breaks at each draw and runs it eagerly.
    good_r, near_r, words = _draws(num_good, good_flips, num_nearby, (num_bad + 7) // 8, l, generator, device)
    flips, kinds = [], [("best", 1)]
    if num_good:
        # Bit floor(u * l), u = r / 2**53 uniform (53 random bits a draw, as an integer: no
        # float64, which MPS lacks).
        assert good_r is not None
        good = _scale(good_r, count, l)
        flips.append(_without_repeats(good) if good_flips > 1 else good)
        kinds.append(("good", num_good))
    if num_nearby:
        assert near_r is not None
        # On a CPU generator the draws are the bits of float64 ``torch.rand`` (u = r / 2**53), so
        # the anchors are those drawn before with u.
        near = _pick_index(wrong, near_r, num_valid)
        if good_flips > 1:
            near = torch.cat([near, near.new_full((num_nearby, good_flips - 1), -1)], 1)
        flips.append(near)
        kinds.append(("nearby", num_nearby))
    if num_bad:
        assert words is not None  # drawn for num_bad
        codes = _random_codes(words, l)
        if invalid is not None:
            codes.masked_fill_(invalid, 0)
        kinds.append(("bad", num_bad))
    else:
        codes = torch.zeros(0, l, dtype=torch.uint8, device=device)
    if flips:
        flip_rows = flips[0] if len(flips) == 1 else torch.cat(flips, 0)
    else:
        flip_rows = torch.zeros(0, max(good_flips, 1), dtype=torch.int64, device=device)
    return AnchorSet(
        kinds=tuple(kinds), best=best, hard=hard, flips=flip_rows,
        num_from_best=num_good if num_good and l else 0, codes=codes, num_random=num_bad,
    )


def _draws(num_good: int, good_flips: int, num_nearby: int, groups: int, l: int,
           generator: Optional[torch.Generator], device) -> "tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]":
    """The random draws of one call of :func:`draw_anchors`: the good flips' and the nearby
    flips' 53-bit integers and the random anchors' 64-bit words (``None`` where none)."""
    good = _randint(_UNIFORM, (num_good, good_flips), generator, device) if num_good else None
    near = _randint(_UNIFORM, (num_nearby, 1), generator, device) if num_nearby else None
    words = _random_word_rows(groups, -(-l // 8), generator, device) if groups else None
    return good, near, words


def _random_codes(drawn: Tensor, l: int) -> Tensor:
    """``[groups, l]`` uint8 uniform codes from the ``[groups, ceil(l / 8)]`` 64-bit words
    ``drawn`` (:func:`uniloss._random.random_word_rows`), rows starting on 8-byte boundaries (for
    :func:`unpack_codes`). Row ``g``'s bytes ``8 w .. 8 w + 7`` are the word ``w groups + g`` of the
    stream: the codes of the first ``k`` bits are the same whatever ``l`` (a static layout draws
    those of its real comparisons). One group: the bytes in the order drawn."""
    groups, words = drawn.shape
    return drawn.view(torch.uint8).view(groups, words * 8)[:, :l]


def _without_repeats(idx: Tensor) -> Tensor:
    """Sort each row and replace repeated indices by -1 (a bit flipped twice is flipped once,
    as the dense sampler's scatter did)."""
    idx = idx.sort(1).values
    repeat = idx[:, 1:] == idx[:, :-1]
    return torch.cat([idx[:, :1], torch.where(repeat, -1, idx[:, 1:])], 1)


_UNIFORM = 1 << 53  # draws r in [0, 2**53) stand for u = r / 2**53 in [0, 1)


def _scale(r: Tensor, n, bound: int) -> Tensor:
    """``floor(r * n / 2**53)`` in ``[0, n)`` for int64 ``r`` in ``[0, 2**53)`` and ``0 <= n <= bound``
    (an int or a 0-dim int64 tensor; ``bound < 2**36``, known on the host), exactly, in int64. Up
    to ``2**10``, ``r * n`` fits in int64; above, with ``r = hi * 2**26 + lo``:
    ``floor((hi * n + floor(lo * n / 2**26)) / 2**27)``."""
    if bound <= (1 << 10):
        return (r * n) >> 53
    hi, lo = r >> 26, r & ((1 << 26) - 1)
    return (hi * n + ((lo * n) >> 26)) >> 27


def _pick_index(mask: Tensor, r: Tensor, num_valid: Optional[Tensor] = None) -> Tensor:
    """For each int64 ``r`` in ``[0, 2**53)``, the index of the ``floor(r * n / 2**53)``-th set bit
    of ``mask`` (``n`` set bits): a uniform draw among them; ``floor(r * l / 2**53)`` when none
    is set (``floor(r * num_valid / 2**53)`` with ``num_valid``, a static layout's count, the set
    bits among its first ``num_valid``). Integer arithmetic only (no float64: MPS has none), no
    host synchronisation (up to ``EngineLimits.select_block`` bits)."""
    l = mask.numel()
    count = l if num_valid is None else num_valid
    limits = current_limits()
    if l <= limits.select_block:
        cum = torch.cumsum(mask, 0)
        total = cum[-1]
        some = total > 0
        rank = _scale(r, torch.where(some, total, count), l)
        # None set: the rank itself, a uniform draw among the first `count` bits.
        return torch.where(some, torch.searchsorted(cum, rank, right=True), rank)
    # Large l: count the set bits of each chunk (select_chunk bits), find each draw's chunk, rank-select in it.
    from ._structured import byte_sum

    size = limits.select_chunk
    full = l // size
    counts = byte_sum(mask[: full * size].view(torch.uint8).view(1, full, size))[0].long()
    if full * size < l:
        counts = torch.cat([counts, mask[full * size :].sum().reshape(1)])
    cum = torch.cumsum(counts, 0)
    rank = _scale(r, cum[-1], l)
    chunk = torch.searchsorted(cum, rank, right=True).clamp_max(counts.numel() - 1)
    within = rank - (cum[chunk] - counts[chunk])
    index = chunk[..., None] * size + torch.arange(size, device=mask.device)
    rows = torch.where(index < l, mask[index.clamp_max(l - 1)], False)
    pos = torch.searchsorted(torch.cumsum(rows, -1), within[..., None], right=True)[..., 0] + chunk * size
    return torch.where((rank < cum[-1]) & (pos < l), pos, _scale(r, count, l))
