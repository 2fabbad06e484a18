r"""The structured engine: distances, metric values and gradients from a structured AnchorSet.

Notation (see :mod:`uniloss._interpolation`): ``h = [c > 0]``, ``r = sigmoid(-|c| / tau)``,
``w = 1 - 2 r``, ``R = sum_k r_k^2``. An anchor ``a`` that differs from ``h`` on the bits
``D(a)`` lies at

.. math:: d(u, a)^2 = R + \sum_{k \in D(a)} w_k .

* A base ``b`` (best or hard) with flipped bits ``F``: ``D = (b != h) xor F``, so
  ``d^2 = R + S_b + sum_{f in F} s_f w_f`` with ``S_b`` the sum of ``w`` where ``b != h`` and
  ``s_f = +1`` where ``b_f = h_f`` (the flip adds a disagreement), ``-1`` where it removes one.
* Random anchors, held as packed disagreement bytes: ``sum_k D_jk w_k`` for eight anchors at once
  from a 256-bin histogram of the bytes weighted by ``w``.

The gradient of ``d_i^2`` in ``r_k`` is ``2 r_k - 2 [k in D_i]``; with ``G_i`` the loss's
gradient in ``d_i^2``, ``dL/dr = 2 r sum_i G_i - 2 M`` where ``M_k = sum_i G_i [k in D_i]`` has
the same structure (a 256-entry table lookup per byte for the random anchors). Every step is
``O(l)`` per block plus ``O(t k)``; no ``[t, l]`` tensor is formed.

Metric values come from per-run zero counts when the decomposition has a
:class:`~uniloss.Structure`: the counts of ``best`` and ``hard``, one count changed
per flipped bit, and the random anchors' counts from their unpacked bits.

With ``good_anchors="all"`` the ``num_good`` sampled good anchors are replaced by all ``l``
single-bit flips of ``best``, each weighted ``num_good / l``: the expectation of the sampled
ones (uniform draws), so the interpolation loses their sampling noise. Their distances are
``R + S_best -/+ w_k`` and their values depend only on the run of the flipped bit
(:attr:`~uniloss.Structure.evaluate_zeros_plus_one`): ``O(l)`` in all.

Double backward (``torch.autograd.grad(..., create_graph=True)``, e.g. a gradient penalty): the
closed-form gradient is a constant for autograd, so such a backward pass recomputes the
interpolation through autograd from the same anchors (:func:`double_backward_grad`), which gives
the dense path's first and second derivatives. Block by block (:func:`chunked_loss`) it raises,
naming the ``chunk_bits`` that would avoid the blocks.
"""

from __future__ import annotations


from typing import Callable, List, Optional, Tuple, Union, cast

import torch
from torch import Tensor

from ._anchors import AnchorSet, draw_anchors, unpack_codes
from ._bits import as_float
from ._decomposition import Structure
from ._function import is_wrapped, two_way
from ._interpolation import (
    agreement, agreement_slope, anchor_weights, bit_costs, gradient_scale, idw_closed_form, idw_from_sq_distances,
    last_of_runs, pull_cost, rms_unit, run_chain_gains, step_factor,
)
from . import _validation as V
from ._cache import TensorCache
from ._pairs import counts
from ._limits import current_limits

_TABLES = TensorCache()


def bit_table(device: torch.device, dtype: torch.dtype) -> Tensor:
    """``[256, 8]``: bit ``j`` of byte value ``v``."""
    def make() -> Tensor:
        v = torch.arange(256, device=device)
        return ((v[:, None] >> torch.arange(8, device=device)) & 1).to(dtype)

    return _TABLES.get((device, dtype), make)


class Runs:
    """How the bits fall into runs (see :attr:`~uniloss.Structure.runs`).

    Either every run is ``width`` bits, or ``ids`` ``[l]`` holds the run of each bit and ``ends``
    ``[S]`` the cumulative run lengths. ``num`` is ``S``. ``real``: for a static layout's runs, the
    number of the exact layout's runs among them (a 0-dim tensor; the others are padding), where
    some of those may hold no comparison; ``None``: the runs that hold one.
    """

    __slots__ = ("width", "ids", "ends", "num", "real")

    def __init__(self, width: Optional[int], ids: Optional[Tensor], ends: Optional[Tensor], num: int,
                 real: Optional[Tensor] = None):
        # (a static layout may give only ids, or only ends: see its decomposition)
        self.width, self.ids, self.ends, self.num, self.real = width, ids, ends, num, real

    @staticmethod
    def of(segments: Union[int, Tensor, "Runs"], num_bits: int, device: torch.device, validate: bool) -> "Runs":
        if isinstance(segments, Runs):  # a static layout's runs (see _decomposition.StaticLayout)
            return segments
        if isinstance(segments, int):
            if validate and (segments <= 0 or num_bits % segments):
                raise ValueError(
                    f"Expected Structure.runs to give a run width dividing the {num_bits} bits, but got {segments}"
                )
            return Runs(segments, None, None, num_bits // segments if segments > 0 else 0)
        lengths = segments.to(device=device, dtype=torch.int64)
        if validate and int(lengths.sum()) != num_bits:
            raise ValueError(
                f"Expected Structure.runs (run lengths) to sum to the {num_bits} bits, but they sum to "
                f"{int(lengths.sum())}"
            )
        ids = torch.repeat_interleave(
            torch.arange(lengths.numel(), device=device), lengths, output_size=num_bits
        )
        return Runs(None, ids, torch.cumsum(lengths, 0), lengths.numel())

    def zeros(self, is_zero: Tensor, dtype: torch.dtype) -> Tensor:
        """``[R, L]`` bool -> ``[R, S]``: how many set entries each run holds."""
        if self.width is not None:
            return byte_sum(is_zero.view(torch.uint8).view(is_zero.shape[0], self.num, self.width), dtype)
        if self.ends is not None and (self.ids is None or is_zero.numel() >= PREFIX_COUNTS):
            return _counts_by_ends(is_zero, self.ends).to(dtype)
        assert self.ids is not None  # the run-length layout
        out = torch.zeros(is_zero.shape[0], self.num, dtype=dtype, device=is_zero.device)
        return out.index_add_(1, self.ids, as_float(is_zero, dtype))

    def run_of(self, index: Tensor) -> Tensor:
        if self.width is not None:
            return torch.div(index, self.width, rounding_mode="floor")
        if self.ends is None:  # a static layout's runs: the run of every bit
            assert self.ids is not None
            return self.ids[index]
        return self._past_ends(torch.searchsorted(self.ends, index, right=True))

    def _past_ends(self, run: Tensor) -> Tensor:
        """A static layout's padding past the runs' ends (AP's, counted by their ends) in the last
        run, whose count the metric ignores there: an empty slot, or, without a real comparison,
        a layout whose loss is zero."""
        return run.clamp_max_(self.num - 1) if self.num else run

    def run_ids(self, num_bits: int, device: torch.device) -> Tensor:
        if self.ids is not None:
            return self.ids
        if self.ends is not None:
            return self._past_ends(torch.searchsorted(self.ends, torch.arange(num_bits, device=device), right=True))
        assert self.width is not None  # the fixed-width layout
        return torch.div(torch.arange(num_bits, device=device), self.width, rounding_mode="floor")


# From this many entries on, runs of consecutive bits are counted from prefix sums (a scatter into
# the runs costs several times more on a CPU).
PREFIX_COUNTS = 1 << 16
_BYTE_LANES = 0x0101010101010101  # times the word of eight 0/1 bytes: their sum in the top byte


def _counts_by_ends(is_zero: Tensor, ends: Tensor) -> Tensor:
    """``[R, L]`` bool -> ``[R, S]`` int32: the set entries of each run of consecutive bits, run
    ``s`` ending (exclusive) at ``ends[s]`` (non-decreasing, at most ``L``; the first starts at 0).
    Prefix sums at the ends: the bits summed eight at a time (the bytes of an int64 word, by one
    multiplication) and cumulated, plus the bits of each end's own word before it. Exact; no host
    synchronisation."""
    rows, num_bits = is_zero.shape
    if rows == 0:  # (no anchor of a kind: nothing to count)
        return torch.zeros(0, ends.numel(), dtype=torch.int32, device=ends.device)
    words = -(-num_bits // 8)
    x = is_zero.view(torch.uint8)
    if words * 8 != num_bits or x.stride(0) != words * 8:
        x = torch.nn.functional.pad(x, (0, words * 8 - num_bits))
    per_word = (x.view(torch.int64) * _BYTE_LANES) >> 56  # 0..8, in the top byte: no sign
    cumulated = torch.cumsum(per_word, 1, dtype=torch.int32)
    word = torch.div(ends, 8, rounding_mode="floor")
    offset = torch.arange(8, device=ends.device)
    window = x.index_select(1, (word[:, None] * 8 + offset).clamp_max_(words * 8 - 1).reshape(-1))
    within = (window.view(rows, -1, 8) & (offset < (ends - word * 8)[:, None])).sum(-1, dtype=torch.int32)
    # the words before the end's own: none for word 0
    prefix = cumulated.index_select(1, (word - 1).clamp_min_(0)).mul_(word > 0).add_(within)
    return torch.diff(prefix, dim=1, prepend=prefix.new_zeros(rows, 1))


def byte_sum(x: Tensor, dtype: torch.dtype = torch.int32) -> Tensor:
    """``[R, S, w]`` uint8 of 0/1 -> ``[R, S]`` sums along ``w`` (``dtype``, exact below 2**24).

    Large inputs are summed eight bytes at a time as int64 words (each byte a lane that cannot
    overflow below 256 words), then the lanes: a reduction over bytes is about ten times slower
    on a CPU than one over words.
    """
    R, S, w = x.shape
    if x.numel() < (1 << 16) or x.device.type != "cpu":
        if w <= 16 and x.numel() >= (1 << 14) and dtype.is_floating_point and x.device.type == "cpu":
            # narrow runs (accuracy's C - 1): a product with ones, twice as fast as the reduction
            return torch.matmul(x.to(dtype), _ones(w, dtype, x.device))
        return x.sum(-1, dtype=dtype)
    words = -(-w // 8)
    size = _lane_group(words)
    groups = -(-words // size)
    padded = groups * size * 8
    if padded != w:
        x = torch.nn.functional.pad(x, (0, padded - w))
    lanes = x.contiguous().view(torch.int64)
    lanes = lanes.view(R, S, groups, size).sum(-1) if groups > 1 else lanes.sum(-1, keepdim=True)
    return lanes.view(torch.uint8).view(R, S, -1).sum(-1, dtype=dtype)


def _lane_group(words: int) -> int:
    """How many int64 words :func:`byte_sum` adds per group: at most 255 (a byte lane holds up to
    255 ones), the largest such divisor of ``words`` where there is a good one (no copy;
    ``_pick_index``'s 4096-bit chunks: 4 x 128), else 255 and zero padding. (Plain Python on
    an int, about 10 microseconds, for inputs of 65,536 bytes or more; no cache, which a compiled
    graph would break at.)"""
    if words <= 255:
        return words
    return max((d for d in range(128, 256) if words % d == 0), default=255)


_ONES = TensorCache()


def _ones(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    return _ONES.get((n, dtype, device), lambda: torch.ones(n, dtype=dtype, device=device))


# ------------------------------------------------------------------------------ block kernels


class Random:
    """The random anchors over one block of bits."""

    __slots__ = ("codes", "num", "bits", "bits_f")

    def __init__(self, codes: Tensor, num: int, dtype: torch.dtype):
        self.codes, self.num = codes, num
        self.bits = self.bits_f = None
        if num and num * codes.shape[-1] <= current_limits().unpack_bits:
            self.bits = unpack_codes(codes, num)
            self.bits_f = self.bits.to(dtype)

    def dots(self, w: Tensor) -> Tensor:
        """``[num]``: ``sum_k D_jk w_k``."""
        if self.num == 0:
            return w.new_zeros(0)
        if self.bits_f is not None:
            return self.bits_f @ w
        return random_dots(self.codes, w, self.num)

    def zeros(self, hard: Tensor, runs: "Runs", zeros_hard: Optional[Tensor] = None) -> Tensor:
        """``[num, S]``: 0-bits per run of each random anchor ``hard xor D_j`` (``zeros_hard``:
        ``hard``'s own ``[S]``, float32, which the histograms below start from)."""
        if (zeros_hard is not None and self.bits is None and runs.width is not None
                and runs.width >= HISTOGRAM_WIDTH and hard.device.type == "cpu" and not torch.compiler.is_compiling()):
            return random_zeros(self.codes, self.num, hard, runs.width, zeros_hard)
        bits = self.bits if self.bits is not None else unpack_codes(self.codes, self.num)
        return runs.zeros(bits == hard.to(torch.uint8)[None], torch.float32)

    def add_membership(self, member: Tensor, grad: Tensor) -> None:
        """``member += sum_j grad_j D_j``."""
        if self.bits_f is not None:
            member.addmv_(self.bits_f.T, grad)
        else:
            member += random_lookup(random_tables(grad, self.codes.shape[0]), self.codes)


def random_dots(codes: Tensor, w: Tensor, num: int) -> Tensor:
    """``[num]``: ``sum_k D_jk w_k`` of the random anchors, from weighted byte histograms."""
    hist = torch.stack([counts(codes[g], 256, w) for g in range(codes.shape[0])])
    return (hist @ bit_table(w.device, w.dtype)).reshape(-1)[:num]


# Runs at least this wide are counted from byte histograms per run on a CPU (see random_zeros).
HISTOGRAM_WIDTH = 64


def random_zeros(codes: Tensor, num: int, hard: Tensor, width: int, zeros_hard: Tensor) -> Tensor:
    """``[num, S]`` float32: the 0-bits per run (``width`` bits each) of each random anchor
    ``hard xor D_j``, as ``zeros_hard + sum_k D_jk (2 hard_k - 1)``: a histogram of the code bytes
    per run weighed by ``+/-1``, then the bits of each byte value (one pass over the bytes per
    group of 8 anchors, instead of one per anchor). Exact: integer sums below ``2**24``."""
    groups, num_bits = codes.shape
    num_runs = num_bits // width
    sign = hard.to(torch.float32).mul_(2.0).sub_(1.0)
    base = torch.arange(num_runs, device=codes.device)[:, None] * 256
    table = bit_table(codes.device, torch.float32)
    parts = [
        torch.bincount((codes[g].view(num_runs, width) + base).view(-1), sign, minlength=num_runs * 256)
        .view(num_runs, 256) @ table
        for g in range(groups)
    ]
    return torch.cat(parts, 1).T[:num] + zeros_hard


def random_tables(grad: Tensor, groups: int) -> Tensor:
    """``[groups, 256]``: for each byte value, the sum of ``grad_j`` over its set bits."""
    padded = torch.nn.functional.pad(grad, (0, groups * 8 - grad.numel()))
    return padded.view(groups, 8) @ bit_table(grad.device, grad.dtype).T


def random_lookup(tables: Tensor, codes: Tensor) -> Tensor:
    """``[L]``: ``sum_j grad_j D_jk`` over the random anchors, by table lookup: per pair of code
    bytes (16 anchors) one lookup in a 65,536-entry table of the pair's sums (an int32 index), a
    last odd byte alone."""
    groups = codes.shape[0]
    out: Optional[Tensor] = None
    for g in range(0, groups, 2):
        if g + 1 < groups:
            table = (tables[g + 1][:, None] + tables[g][None, :]).reshape(-1)
            part = table.index_select(0, codes[g + 1].to(torch.int32).mul_(256).add_(codes[g]))
        else:
            part = tables[g].index_select(0, codes[g].to(torch.int32))
        out = part if out is None else out.add_(part)
    assert out is not None  # at least one group
    return out


def residual(c: Tensor, temperature) -> Tensor:
    """``r = sigmoid(-|c| / tau)`` alone (no grad): the first of :func:`residuals`."""
    z = c.abs()
    if isinstance(temperature, Tensor) or temperature != 1.0:
        z.div_(temperature)
    return z.neg_().sigmoid_()


def residuals(c: Tensor, temperature: float, distance: str = "euclidean") -> Tuple[Tensor, Tensor, Tensor]:
    """``(r, base, w)`` (no grad): ``r = sigmoid(-|c| / tau)`` and the per-bit costs of
    :func:`uniloss._interpolation.bit_costs`, ``sum(base)`` and the flip cost ``w``."""
    z = c.abs()
    if isinstance(temperature, Tensor) or temperature != 1.0:
        z.div_(temperature)
    r = torch.sigmoid(-z)
    if distance == "euclidean":
        return r, r * r, r.mul(-2.0).add_(1.0)
    return r, torch.nn.functional.softplus(-z), z


def grad_factor(temperature, distance: str):
    """The factor of ``d(d^2)/dc`` that :func:`grad_comparisons` leaves to the anchors' gradients."""
    return (2.0 if distance == "euclidean" else 1.0) / temperature


def grad_comparisons(r: Tensor, hard: Tensor, member: Tensor, total: Tensor, distance: str = "euclidean") -> Tensor:
    """``dL/dc`` from ``dL/d(base_k) = total`` and ``dL/d(flip_k) = member_k``.

    Euclidean: ``dL/dr = 2 r total - 2 member``, ``dr/dc = -/+ r (1 - r) / tau``;
    cross-entropy: ``d base/dc = -/+ r / tau``, ``d flip/dc = +/- 1 / tau``. The anchors' gradients
    (``total``, ``member``) already carry :func:`grad_factor`."""
    g = (r * total).sub_(member)
    if distance == "euclidean":
        g.mul_(r).mul_(1.0 - r)
    return torch.where(hard, -g, g)


class Flips:
    """The flip anchors' geometry: clamped indices, the sign ``s_f`` of each flipped bit (0 for
    no flip) and the change ``2 b_f - 1`` of its run's zero count."""

    __slots__ = ("index", "sign", "delta", "num_from_best", "count")

    def __init__(self, anchors: AnchorSet, hard: Tensor, dtype: torch.dtype):
        flips = anchors.flips
        assert flips is not None and anchors.best is not None  # a structured anchor set
        self.count = flips.shape[0]
        self.num_from_best = anchors.num_from_best
        self.index = flips if flips.shape[1] == 1 else flips.clamp_min(0)
        hard_at = hard[self.index]
        # From best: the flip removes a disagreement where best != hard (s = -1), adds one
        # elsewhere; from hard it always adds one.
        sign = (hard_at != anchors.best[self.index]).to(dtype).mul_(-2.0).add_(1.0)
        sign[self.num_from_best :] = 1.0
        if flips.shape[1] != 1:
            sign.mul_(flips >= 0)
        self.sign = sign
        # The base bit b_f is h_f where s = 1 and not h_f where s = -1: 2 b_f - 1 = s (2 h_f - 1).
        self.delta = hard_at.to(dtype).mul_(2.0).sub_(1.0).mul_(sign)

    def sq(self, R: Tensor, s_best: Tensor, w: Tensor) -> Tensor:
        out = (self.sign * w[self.index]).sum(1).add_(R)
        out[: self.num_from_best] += s_best
        return out

    def zeros(self, zeros_best: Tensor, zeros_hard: Tensor, runs: "Runs") -> Tensor:
        nb, S = self.num_from_best, zeros_best.numel()
        counts = torch.cat([zeros_best.expand(nb, S), zeros_hard.expand(self.count - nb, S)])
        return counts.scatter_add_(1, runs.run_of(self.index), self.delta.to(counts.dtype))

    def add_membership(self, member: Tensor, grad: Tensor) -> None:
        member.index_add_(0, self.index.reshape(-1), (self.sign * grad[:, None]).reshape(-1))


class _Surrogate(torch.autograd.Function):
    """Attaches a precomputed loss value to ``x`` (and ``y``, optional: a second input, e.g. the
    pull's margins); the backward pass is a closure ``backward(grad, x, y) -> (dx, dy)`` (``dy``
    ``None`` without ``y``). Under ``create_graph=True`` (grad mode is then on in the backward
    pass) ``x`` and ``y`` come with their graph, so the closure can return a gradient that
    autograd differentiates again."""

    @staticmethod
    def forward(x: Tensor, y: Optional[Tensor], value: Tensor, sign: float,
                backward: Callable[[Tensor, Tensor, Optional[Tensor]], Tuple[Tensor, Optional[Tensor]]]) -> Tensor:
        return value * sign  # (a new tensor: the output is no input)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, y, _, _, backward = inputs
        ctx.backward_fn = backward
        ctx.save_for_backward(x, y)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, y = ctx.saved_tensors
        dx, dy = ctx.backward_fn(grad, x, y)
        return dx, dy, None, None, None


apply_surrogate = two_way(_Surrogate)


def disagreement_rows(anchors: AnchorSet, wrong: Tensor) -> Tensor:
    """``[t + 1, l]`` bool: where each anchor differs from ``hard`` (then a zero row: ``hard``
    itself), from the structured form (single-bit flips)."""
    assert anchors.flips is not None and anchors.codes is not None  # the structured form
    l, t_f, nb = wrong.numel(), anchors.flips.shape[0], anchors.num_from_best
    parts = [wrong[None]]
    if t_f:
        rows = wrong.expand(nb, l) if nb == t_f else torch.cat([wrong.expand(nb, l), wrong.new_zeros(t_f - nb, l)])
        rows = rows.clone() if nb == t_f else rows
        flips = anchors.flips
        parts.append(rows.scatter_(1, flips, ~rows.gather(1, flips)))
    if anchors.num_random:
        parts.append(unpack_codes(anchors.codes, anchors.num_random).view(torch.bool))
    parts.append(wrong.new_zeros(1, l))
    return torch.cat(parts)


def structured_loss(
    c: Tensor,
    hard: Tensor,
    wrong: Tensor,
    anchors: AnchorSet,
    decomposition,
    target,
    runs: Optional[Runs],
    *,
    temperature: float,
    grad_scale,
    sign: float,
    structure: Optional[Structure] = None,
    all_good: int = 0,
    distance: str = "euclidean",
    nearby: str = "all",
    invalid: Optional[Tensor] = None,
    undefined: Optional[Tensor] = None,
    detached: Optional[Tensor] = None,
    need_push: bool = False,
):
    """The loss from comparisons ``c`` (attached to them) and a structured anchor set.

    ``wrong`` is ``hard != best``. With ``runs`` (the :class:`Runs` of ``structure.runs``) the
    anchors' values come from ``structure.evaluate_zeros``, else from ``decomposition.evaluate``.
    Returns ``(loss, values [t], metric, surrogate, kinds, push)``, ``push`` the interpolation's
    total push on ``c`` where ``need_push`` asks for it or the gradient's scale measured it (see
    :func:`uniloss._interpolation.gradient_scale`), else ``None``;
    ``all_good`` > 0 adds the ``l`` single-flip good anchors weighted ``all_good / l`` (see the
    module documentation). ``invalid``: the padding of a static layout (``c = +inf`` there, where
    every anchor is 1), left out of the distances; ``undefined``: its 0-dim bool "no comparison",
    where the loss is zero. ``detached``: ``c.detach()`` where the caller has it.
    """
    dtype, l = c.dtype, c.numel()
    r, base, w = residuals(c.detach() if detached is None else detached, temperature, distance)
    if invalid is not None and distance != "euclidean":
        # At c = +inf base is 0 and no anchor differs from hard: the Euclidean flip cost (1) is
        # multiplied by 0 wherever it is used, the cross-entropy one (+inf) would give NaN.
        w.masked_fill_(invalid, 0.0)
    R = base.sum()
    wrong_f = s_best = zeros_best = None
    # The structured form: its fields are all set.
    assert anchors.flips is not None and anchors.codes is not None and anchors.best is not None
    if anchors.num_anchors * l <= current_limits().dense_bits and anchors.flips.shape[1] == 1:
        rows = disagreement_rows(anchors, wrong)
        rows_f = as_float(rows[:-1], dtype)
        sq = torch.mv(rows_f, w).add_(R)
        if runs is None:
            values = V.evaluated(decomposition, rows ^ hard, target)
        else:
            zeros = runs.zeros(rows == hard, torch.float32)
            zeros_best = zeros[0]
            assert structure is not None and structure.evaluate_zeros is not None  # runs for counts
            values = structure.evaluate_zeros(zeros)
        flips = rnd = None
    else:
        wrong_f = as_float(wrong, dtype)
        s_best = torch.dot(w, wrong_f)
        flips = Flips(anchors, hard, dtype)
        rnd = Random(anchors.codes, anchors.num_random, dtype)
        sq = torch.cat([(R + s_best).reshape(1), flips.sq(R, s_best, w), rnd.dots(w).add_(R)])
        if runs is None:
            values = V.evaluated(decomposition, torch.cat([anchors.dense(), hard[None]]), target)
        else:
            # Counts in float32 (exact below 2**24 a run), as evaluate() counts them.
            zeros_hard = runs.zeros((~hard)[None], torch.float32)[0]
            zeros_best = runs.zeros((~anchors.best)[None], torch.float32)[0]
            zeros = torch.cat([
                zeros_best[None], flips.zeros(zeros_best, zeros_hard, runs), rnd.zeros(hard, runs), zeros_hard[None]
            ])
            assert structure is not None and structure.evaluate_zeros is not None  # runs for counts
            values = structure.evaluate_zeros(zeros)
    if values.dtype != dtype:
        values = values.to(dtype)
    metric, values = values[-1], values[:-1]
    kinds, weights = anchors.kinds, None
    if all_good:
        if wrong_f is None:
            wrong_f = as_float(wrong, dtype)
            s_best = torch.dot(w, wrong_f)
        assert s_best is not None and zeros_best is not None and runs is not None and structure is not None
        single_sign = wrong_f.mul(-2.0).add_(1.0)
        per_run = structure.plus_one(zeros_best).to(dtype)
        sq = torch.cat([sq[:1], (single_sign * w).add_(R + s_best), sq[1:]])
        values = torch.cat([values[:1], per_run[runs.run_ids(l, c.device)], values[1:]])
        weights = torch.ones_like(sq)
        weights[1 : 1 + l] = all_good / l
        kinds = kinds[:1] + (("good", l),) + kinds[1:]
    useful = anchor_weights(nearby, kinds, values, metric, sign)
    if useful is not None:
        weights = useful if weights is None else weights * useful
    g, dg_dsq, harmonic = idw_closed_form(sq, values, weights)
    # The factor 2 / tau (or 1 / tau) of d(d^2)/dc (see grad_comparisons), times the gradient's scale.
    factor = grad_factor(temperature, distance)

    def grad_c(coef) -> Tensor:
        G = dg_dsq * coef
        total = G.sum()
        G_single = None
        if all_good:
            G_single, G = G[1 : 1 + l], torch.cat([G[:1], G[1 + l :]])
        if flips is None:
            member = torch.mv(rows_f.T, G)
        else:
            assert rnd is not None and wrong_f is not None  # set with flips
            G_flip = G[1 : 1 + flips.count]
            member = wrong_f * (G[0] + G_flip[: flips.num_from_best].sum())
            flips.add_membership(member, G_flip)
            if rnd.num:
                rnd.add_membership(member, G[1 + flips.count :])
        if G_single is not None:
            member.add_(wrong_f * G_single.sum()).addcmul_(G_single, single_sign)
        return grad_comparisons(r, hard, member, total, distance)

    # grad_c is linear in its coefficient: the push measured here (grad_c(factor)) is kept, and the
    # backward pass rescales it instead of running grad_c again (an operator per term fewer).
    measured: List[Tensor] = []

    def total_push() -> Tensor:
        measured.append(grad_c(factor))
        return measured[-1].abs().sum()

    scale, push = gradient_scale(grad_scale, harmonic, total_push, need_push)
    coef = sign * factor * scale

    def sq_of(c_in: Tensor) -> Tensor:
        """``sq`` above as a differentiable function of the comparisons (for double backward)."""
        _, base_d, flip_d = bit_costs(c_in, temperature, distance)
        if invalid is not None:
            flip_d = torch.where(invalid, 0.0, flip_d)
        R_d = base_d.sum()
        if flips is None:
            out = torch.mv(rows_f, flip_d) + R_d
        else:
            assert rnd is not None and wrong_f is not None  # set with flips
            s_best_d = torch.dot(flip_d, wrong_f)
            nb = flips.num_from_best
            flip_sq = (flips.sign * flip_d[flips.index]).sum(1) + R_d
            bits_f = rnd.bits_f if rnd.bits_f is not None else unpack_codes(rnd.codes, rnd.num).to(dtype)
            out = torch.cat([(R_d + s_best_d).reshape(1), flip_sq[:nb] + s_best_d, flip_sq[nb:],
                             torch.mv(bits_f, flip_d) + R_d])
        if all_good:
            assert wrong_f is not None  # set for all_good
            single = single_sign * flip_d + (R_d + torch.dot(flip_d, wrong_f))
            out = torch.cat([out[:1], single, out[1:]])
        return out

    def backward(grad_out: Tensor, c_in: Tensor, _: None) -> "tuple[Tensor, None]":
        if torch.is_grad_enabled():  # create_graph=True: see double_backward_grad
            return double_backward_grad(c_in, sq_of, values, weights, sign * scale * grad_out), None
        if measured:
            return measured[-1] * (sign * scale * grad_out), None
        return grad_c(coef * grad_out), None

    # A static layout without a comparison (e.g. AP without a positive): a zero loss, as the exact
    # layout's l == 0 gives (its gradient is the padding's: zero).
    loss = apply_surrogate(c, None, g if undefined is None else g.masked_fill(undefined, 0.0), sign, backward)
    return loss, values, metric, g, kinds, push


def double_backward_grad(c: Tensor, sq_of: Callable[[Tensor], Tensor], values: Tensor, weights: Optional[Tensor],
                         coef) -> Tensor:
    """``coef * d g~ / dc`` as a differentiable function of ``c`` (with its graph), for a backward
    pass with ``create_graph=True`` (a gradient penalty, a Hessian-vector product).

    The structured backward pass is a closed form computed without autograd. Here ``g~`` is
    recomputed through autograd from the squared distances ``sq_of(c)`` with the dense path's
    interpolation (:func:`uniloss._interpolation.idw_from_sq_distances`; an anchor of weight
    ``w`` at squared distance ``d^2`` weighs ``w / d``, as one at ``d^2 / w^2``), so the first and
    second derivatives are the dense path's on the same anchors. The gradient's scale stays the
    constant of the forward pass, as in the dense path. Costs a float ``[b, l]`` copy of the
    ``b`` random anchors' bits where they were held packed."""
    with torch.enable_grad():
        sq = sq_of(c)
        if weights is not None:
            sq = sq / weights.square()
        g = idw_from_sq_distances(sq, values)
        (grad,) = torch.autograd.grad(g, c, grad_outputs=coef * torch.ones_like(g), create_graph=True)
    return grad


# ------------------------------------------------------------------------------ block by block


def blocks_of(lengths: Tensor, chunk_bits: int) -> List[Tuple[int, int, int, int, int]]:
    """``(run_start, run_stop, bit_start, bit_stop, width)`` blocks of consecutive runs of equal
    length, each at most ``chunk_bits`` bits (at least one run); empty runs are skipped."""
    lengths = lengths.cpu()
    num = lengths.numel()
    if num == 0:
        return []
    change = torch.nonzero(lengths[1:] != lengths[:-1]).reshape(-1) + 1
    starts = [0] + change.tolist()
    ends = starts[1:] + [num]
    widths = lengths[starts].tolist()
    offsets = torch.cumsum(lengths, 0).tolist()
    blocks = []
    for start, end, width in zip(starts, ends, widths):
        if width == 0:
            continue
        rows = max(1, chunk_bits // width)
        for s0 in range(start, end, rows):
            s1 = min(end, s0 + rows)
            b0 = offsets[s0] - width
            blocks.append((s0, s1, b0, b0 + (s1 - s0) * width, width))
    return blocks


def chunked_loss(
    scores: Tensor,
    target,
    decomposition,
    structure: Structure,
    *,
    chunk_bits: int,
    num_good: int,
    num_nearby: int,
    num_bad: int,
    generator,
    temperature: float,
    grad_scale,
    sign: float,
    temperature_scale: Optional[str] = None,
    distance: str = "euclidean",
    pull: float = 0.0,
    nearby: str = "all",
    pull_per: str = "sample",
    rows: Optional[int] = None,
    step: str = "pull",
    margins: Optional[Callable[[Tensor], Tensor]] = None,
    run_weights: Optional[Tensor] = None,
    chain: bool = False,
    run_pull: Optional[Callable[[Tensor, float], Tensor]] = None,
):
    """The loss of :func:`structured_loss` for a huge ``l``, block by block (``pull``,
    ``pull_per`` and ``step`` as :func:`uniloss.functional.uniloss` documents them; each block
    holds whole runs, so a run's pull is one block's). ``margins``: the structure's per-sample
    margins, on which the pull is then taken once (``pull_per="sample"``); ``run_weights``: the
    runs' ``[S]`` weights in a pull per run, already over their mean; ``run_pull``: the runs'
    terms of a pull per run in closed form (:attr:`Structure.run_pull`), then taken once.

    Needs a :class:`~uniloss.Structure` with ``comparisons_block`` and run lengths. Holds ``hard``
    (1 byte a bit) and the random anchors' codes (1 byte a bit per 8 anchors); every other
    tensor is one block's. Three passes over the blocks, each forming its comparisons anew:
    ``hard``; the anchors' squared distances and zero counts; and, when autograd records (scores
    that require grad, grad mode on), the gradients of the interpolation and of the pull at unit
    size with the pushes that size them, so that the backward pass only scales two tensors of
    the scores' shape. The anchors, values, loss and gradient are those of the one-block engine.

    ``chain``: ``interpolation="chain"`` for a metric of whole runs (:attr:`Structure.chain_by_runs`)
    instead of the anchors: the second pass finds each run's last comparison in the chain
    (:func:`uniloss._interpolation.last_of_runs`), and the gradient's pass puts each run's gain
    on it; the loss and gradient are the one-block chain's (the runs' gains of
    :func:`uniloss._interpolation.run_chain_gains`).
    """
    if is_wrapped(scores):
        raise RuntimeError(
            "UniLoss computes its gradient block by block, with autograd passes of its own, above chunk_bits "
            "comparisons, which a torch.func transform (torch.func.grad, vjp, ...) cannot run inside: pass a "
            "larger chunk_bits (e.g. the call's number of comparisons) to use the one-block engine, or call "
            ".backward() instead of the transform"
        )
    device = scores.device
    dtype = torch.float32 if scores.dtype in (torch.float16, torch.bfloat16) else scores.dtype
    lengths, block_of, evaluate_zeros = structure.runs, structure.comparisons_block, structure.evaluate_zeros
    assert isinstance(lengths, Tensor) and block_of is not None and evaluate_zeros is not None  # see choose_path
    blocks = blocks_of(lengths, chunk_bits)
    num_runs = lengths.numel()
    num_bits = blocks[-1][3] if blocks else 0

    def comparisons(s: Tensor, block) -> Tensor:
        return block_of(s, block[0], block[1]).reshape(-1).to(dtype)

    def local(index: Tensor, b0: int, b1: int):
        return (index >= b0) & (index < b1), (index - b0).clamp(0, b1 - b0 - 1)

    with torch.no_grad():
        s_det = scores.detach()
        first_pass = not chain or temperature_scale is not None  # (the chain's own pass sees hard)
        hard = torch.empty(num_bits if first_pass else 0, dtype=torch.bool, device=device)
        sum_sq = torch.zeros((), dtype=dtype, device=device)
        for block in (blocks if first_pass else ()):
            c_block = comparisons(s_det, block)
            torch.gt(c_block, 0, out=hard[block[2] : block[3]])
            if temperature_scale is not None:
                sum_sq += c_block.square().sum()
        if temperature_scale is not None:  # see _interpolation.comparison_scale
            # a 0-dim tensor from here on, used as the scalar it holds (no host sync)
            temperature = cast(float, temperature * rms_unit((sum_sq / max(num_bits, 1)).sqrt(), scores.dtype))
        best = decomposition.best(target).reshape(-1).to(device=device, dtype=torch.bool)
    if chain:
        return _chunked_chain(scores, blocks, comparisons, best, structure, evaluate_zeros, temperature,
                              grad_scale, sign, pull, pull_per, rows, step, margins, run_weights, run_pull)
    with torch.no_grad():
        anchors = draw_anchors(
            best, hard, hard != best, num_good=num_good, num_nearby=num_nearby, num_bad=num_bad,
            good_flips=min(structure.good_flips, max(num_bits, 1)), generator=generator,
        )
        assert anchors.codes is not None  # drawn anchors: the structured form
        flips = Flips(anchors, hard, dtype)
        b = anchors.num_random
        R = torch.zeros((), dtype=dtype, device=device)
        s_best = torch.zeros((), dtype=dtype, device=device)
        dots = torch.zeros(b, dtype=dtype, device=device)
        w_flip = torch.zeros_like(flips.sign)
        zeros_hard = torch.zeros(num_runs, device=device)
        zeros_best = torch.zeros(num_runs, device=device)
        zeros_random = torch.zeros(b, num_runs, device=device)
        for block in blocks:
            s0, s1, b0, b1, width = block
            h = hard[b0:b1]
            r, base, w = residuals(comparisons(s_det, block), temperature, distance)
            R += base.sum()
            s_best += torch.dot(w, (h != best[b0:b1]).to(dtype))
            rnd = Random(anchors.codes[:, b0:b1], b, dtype)
            inside, at = local(flips.index, b0, b1)
            w_flip += torch.where(inside, w[at], 0.0)
            runs = Runs(width, None, None, s1 - s0)
            zeros_hard[s0:s1] = runs.zeros((~h)[None], torch.float32)[0]
            zeros_best[s0:s1] = runs.zeros((~best[b0:b1])[None], torch.float32)[0]
            if b:
                dots += rnd.dots(w)
                zeros_random[:, s0:s1] = rnd.zeros(h, runs, zeros_hard[s0:s1])
        all_runs = Runs(None, None, torch.cumsum(lengths, 0), num_runs)
        flip_sq = (flips.sign * w_flip).sum(1).add_(R)
        flip_sq[: flips.num_from_best] += s_best
        sq = torch.cat([(R + s_best).reshape(1), flip_sq, dots + R])
        zeros = torch.cat([
            zeros_best[None], flips.zeros(zeros_best, zeros_hard, all_runs), zeros_random, zeros_hard[None]
        ])
        values = evaluate_zeros(zeros).to(dtype)
        metric, values = values[-1], values[:-1]
        g, dg_dsq, harmonic = idw_closed_form(sq, values, anchor_weights(nearby, anchors.kinds, values, metric, sign))

    def block_grads(coef, s: Tensor):
        """``(c, dL/dc)`` of every block, the interpolation's part only, for the gradient ``coef``."""
        assert anchors.codes is not None  # drawn anchors: the structured form
        G = dg_dsq * coef
        total = G.sum()
        G_flip, G_rand = G[1 : 1 + flips.count], G[1 + flips.count :]
        from_best = G[0] + G_flip[: flips.num_from_best].sum()
        flip_coef = flips.sign * G_flip[:, None]
        tables = random_tables(G_rand, anchors.codes.shape[0]) if b else None
        for block in blocks:
            s0, s1, b0, b1, width = block
            c = comparisons(s, block)
            h = hard[b0:b1]
            with torch.no_grad():
                r = residual(c.detach(), temperature)
                member = torch.where(h != best[b0:b1], from_best, 0.0)
                inside, at = local(flips.index, b0, b1)
                member.index_add_(0, at.reshape(-1), torch.where(inside, flip_coef, 0.0).reshape(-1))
                if tables is not None:
                    member += random_lookup(tables, anchors.codes[:, b0:b1])
                grad_c = grad_comparisons(r, h, member, total, distance)
            yield block, c, grad_c  # outside no_grad: the caller differentiates c

    loss = _blockwise_loss(
        scores, g, sign, lambda leaf: block_grads(grad_factor(temperature, distance), leaf), comparisons, best, temperature,
        lambda push, stepped: gradient_scale(grad_scale, harmonic, lambda: push, stepped), pull, pull_per, rows, step,
        margins, run_weights, num_runs, num_bits, run_pull)
    return loss, values, metric, g, anchors.kinds, num_bits


def _blockwise_loss(scores: Tensor, g: Tensor, sign: float, grads_of, comparisons, best: Tensor, temperature,
                    scale_of, pull: float, pull_per: str, rows: Optional[int], step: str, margins, run_weights,
                    num_runs: int, num_bits: int, run_pull=None) -> Tensor:
    """The block-by-block loss of value ``sign * g`` (:func:`chunked_loss`): one pass over the
    blocks gives the interpolation's gradient on each block's comparisons (``grads_of``, a
    function of the scores' leaf yielding ``(block, c, dg/dc)`` at unit size) and the pull's, with
    the pushes that size them (``scale_of(push, stepped) -> (scale, scaled push)``: the
    interpolation's factor); the backward pass then scales two tensors of the scores' shape."""
    device = scores.device
    dtype = g.dtype
    # the pull's denominator over all blocks: max(runs, rows) per run, the comparisons per comparison
    if rows is None:  # the batch size the runs are over (a wrapper's set: see functional._rows)
        rows = scores.shape[0] if scores.dim() else 1
    pull_rows = max(num_runs, rows) if pull_per != "comparison" else num_bits
    stepped = step == "pull" and bool(pull)  # the step rule (pull=0: no pull to size the step by)

    def block_runs(block) -> Optional[Runs]:
        return Runs(block[4], None, None, block[1] - block[0]) if pull_per != "comparison" else None

    # One pass over the blocks gives the interpolation's total push, the pull's, and the gradients
    # of both at unit size: each is linear in its coefficient, which the totals fix only after the
    # pass, so the backward pass just scales them. Two leaves (the scores twice) keep the two
    # gradients apart in one backward call per block. Without a graph to record (no_grad, or
    # scores without grad) no backward pass can follow: the pass is skipped.
    record = torch.is_grad_enabled() and scores.requires_grad
    leaves = [scores.detach().requires_grad_(True) for _ in range(2 if pull else 1)] if record else []
    push = torch.zeros((), dtype=dtype, device=device)
    pull_push = torch.zeros((), dtype=dtype, device=device)
    coef: Union[float, Tensor] = sign
    pull_weight: Union[float, Tensor] = pull
    with torch.enable_grad():
        if pull and margins is not None and record:  # the pull on the margins, once (see functional._with_pull)
            m = margins(leaves[1])
            cost = pull_cost(m.float() if m.dtype in (torch.float16, torch.bfloat16) else m, None, temperature,
                             with_push=stepped)
            if stepped:
                cost, block_push = cost
                pull_push += block_push * pull
            cost.backward()
        if pull and margins is None and run_pull is not None and record:  # the runs' terms in closed form, once
            cost = pull_cost(None, None, temperature, Runs(None, None, None, num_runs), denominator=pull_rows,
                             with_push=stepped, weights=run_weights, per=run_pull(leaves[1], temperature).to(dtype))
            if stepped:
                cost, block_push = cost
                pull_push += block_push * pull
            cost.backward()
        for block, c, grad_c in (grads_of(leaves[0]) if record else ()):
            b0, b1 = block[2], block[3]
            push += grad_c.abs().sum()
            # A scalar's backward: backward(c, grad_c) would import sympy on first use.
            total = torch.dot(c, grad_c)
            if pull and margins is None and run_pull is None:  # this block's part of the pull per run, over the whole call's count
                weights = None if run_weights is None else run_weights[block[0]:block[1]]
                cost = pull_cost(comparisons(leaves[1], block), best[b0:b1], temperature, block_runs(block),
                                 denominator=pull_rows, with_push=stepped, weights=weights)
                if stepped:  # the pull's push in the same pass (see pull_cost)
                    cost, block_push = cost
                    pull_push += block_push * pull
                total = total + cost
            total.backward()
    with torch.no_grad():
        scale, scaled_push = scale_of(push, stepped)
        coef = sign * scale
        if stepped:  # every step of the pull's size (see functional._with_pull)
            assert scaled_push is not None  # asked for
            f = step_factor(pull_push, scaled_push, margins is not None)
            coef, pull_weight = coef * f, f * pull
    grads = [leaf.grad if leaf.grad is not None else torch.zeros_like(scores) for leaf in leaves] if record else []

    def backward(grad_out: Tensor, _scores: Tensor, _: None) -> "tuple[Tensor, None]":
        if torch.is_grad_enabled():  # create_graph=True
            raise RuntimeError(
                f"UniLoss cannot differentiate its gradient again (create_graph=True) block by block: this "
                f"call had {num_bits} comparisons, more than its chunk_bits. Pass chunk_bits={num_bits} or "
                "more to UniLoss (or uniloss()) to use the one-block engine, which supports it"
            )
        assert record  # a graph was recorded: the forward's scores required grad under grad mode
        out = grads[0] * (coef * grad_out)
        return (out + grads[1] * (pull_weight * grad_out) if pull else out), None

    return apply_surrogate(scores, None, g, sign, backward)


def _chunked_chain(scores: Tensor, blocks, comparisons, best: Tensor, structure: Structure,
                   evaluate_zeros, temperature, grad_scale, sign: float, pull: float, pull_per: str,
                   rows: Optional[int], step: str, margins, run_weights, run_pull):
    """:func:`chunked_loss` with ``chain``: the chain of a metric of whole runs
    (:func:`uniloss._interpolation.run_chain_gains`) block by block.
    Each block holds whole runs, so a run's last comparison is found within its block; the
    gradient's pass puts each run's gain on its last comparison."""
    device = scores.device
    dtype = torch.float32 if scores.dtype in (torch.float16, torch.bfloat16) else scores.dtype
    num_runs = structure.runs.numel()
    num_bits = best.numel()
    closed_form = structure.chain
    assert closed_form is not None  # chain_by_runs: see choose_path
    with torch.no_grad():
        least = torch.full((num_runs,), float("inf"), dtype=dtype, device=device)  # runs without bits: no block
        last = torch.full((num_runs,), -1, dtype=torch.long, device=device)
        zeros_hard = torch.zeros(num_runs, device=device)
        s_det = scores.detach()
        for block in blocks:
            s0, s1, b0, b1, width = block
            runs = Runs(width, None, None, s1 - s0)
            c_block = comparisons(s_det, block)
            _, v = agreement(c_block, best[b0:b1], temperature)
            least[s0:s1], at = last_of_runs(v, runs)
            last[s0:s1] = at + b0
            zeros_hard[s0:s1] = runs.zeros((~(c_block > 0))[None], torch.float32)[0]
        metric = evaluate_zeros(zeros_hard[None]).to(dtype)[0]
        values, gains = run_chain_gains(least, last, closed_form, dtype)
        g = torch.nan_to_num(values[0], nan=0.0) + torch.dot(gains, least.masked_fill(last < 0, 0.0))

    def block_grads(leaf: Tensor):
        """``(block, c, d g~ / d c)``: each run's gain on its last comparison, ``dv / dc`` there."""
        for block in blocks:
            s0, s1, b0, b1, _ = block
            c = comparisons(leaf, block)
            with torch.no_grad():
                at = last[s0:s1] - b0  # (every run of a block holds bits)
                chosen = best[b0:b1][at]
                u, _ = agreement(c.detach()[at], chosen, temperature)
                grad_c = torch.zeros_like(c).index_put_((at,), gains[s0:s1] * agreement_slope(u, chosen, temperature))
            yield block, c, grad_c

    scale = 1.0 if isinstance(grad_scale, str) else float(grad_scale)
    loss = _blockwise_loss(scores, g, sign, block_grads, comparisons, best, temperature,
                           lambda push, stepped: (scale, push * scale if stepped else None), pull, pull_per, rows,
                           step, margins, run_weights, num_runs, num_bits, run_pull)
    return loss, values, metric, g, (("chain", num_runs + 1),), num_bits
