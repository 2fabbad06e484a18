"""Set-level metrics beyond one batch: the global batch under ``torch.distributed`` and a
cross-batch memory.

AP, AUROC or NDCG are defined over a set of samples. Under DistributedDataParallel each rank
sees only its slice of the batch, so a loss computed per rank optimises a different, noisier
metric. The two wrappers here enlarge the set the metric is computed over without touching the
engine: each is a :class:`uniloss.Decomposition` that wraps another one.

* :class:`GlobalBatch` gathers scores and targets from every rank (one all-gather of each per
  step) and evaluates the wrapped decomposition on the global batch; each rank's gradient flows
  back to its own scores.
* :class:`CrossBatchMemory` appends a bounded queue of recent, detached scores and targets to the
  batch.

They compose: ``GlobalBatch(CrossBatchMemory(AveragePrecision(), size=4096))`` keeps a memory of
gathered batches, identical on every rank, at no extra communication.

See ``docs/distributed.md`` for DDP, Lightning and Accelerate recipes.
"""

from __future__ import annotations

import contextlib
import warnings
import zlib
from dataclasses import replace
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor

from . import _validation as V
from ._decomposition import Decomposition, Structure
from ._function import two_way
from ._wrapped import WrappedDecomposition, WrappedPlan, check_rows, map_rows, row_fields

__all__ = ["GlobalBatch", "CrossBatchMemory", "PerRankWarning"]


class PerRankWarning(UserWarning):
    """Under ``torch.distributed``, a loss that is not the global batch's: a set-level metric
    computed on each rank's batch (wrap it in :class:`GlobalBatch`), or ranks that draw different
    anchors (give the loss a generator seeded identically on every rank). Issued once per loss.

    Silence it for a metric you know to be a mean over samples (so per-rank training optimises
    the same metric) with ``warnings.simplefilter("ignore", uniloss.distributed.PerRankWarning)``.
    """

_REDUCTIONS = ("mean", "sum")


class _ScaleGrad(torch.autograd.Function):
    """Identity in the forward pass; multiplies the gradient by ``factor``."""

    @staticmethod
    def forward(x: Tensor, factor: float) -> Tensor:  # type: ignore[override]
        return x.view_as(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.factor = inputs[1]

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return grad * ctx.factor, None


_apply_scale_grad = two_way(_ScaleGrad)


def _scale_grad(x: Tensor, factor: float) -> Tensor:
    return x if factor == 1.0 or not x.requires_grad else _apply_scale_grad(x, factor)


def _cat_rows(*values: Any) -> Any:
    """The rows of ``values`` (tensors, or tuples of them) one after the other."""
    return map_rows(lambda *fields: torch.cat(fields), *values)


# --------------------------------------------------------------------------- global batch


def _encode_rows(target: Any, capacity: int) -> Tensor:
    """``[8 + capacity * row_bytes]`` uint8: the row count (int64) then the rows of each tensor of
    ``target``, zero padded to ``capacity`` rows."""
    fields = row_fields(target)
    n = fields[0].shape[0]
    parts = [torch.tensor([n], dtype=torch.int64, device=fields[0].device).view(torch.uint8)]
    for field in fields:
        body = field.contiguous().reshape(-1).view(torch.uint8)
        parts += [body, body.new_zeros((capacity - n) * _row_bytes(field))]
    return torch.cat(parts)


def _row_bytes(t: Tensor) -> int:
    numel = 1
    for d in t.shape[1:]:
        numel *= d
    return numel * t.element_size()


def _decode_rows(buf: Tensor, like: Any, capacity: int) -> Tuple[int, Any]:
    n = int(buf[:8].clone().view(torch.int64)[0])
    start = 8

    def rows(field: Tensor) -> Tensor:
        nonlocal start
        out = buf[start:start + n * _row_bytes(field)].clone().view(field.dtype)
        start += capacity * _row_bytes(field)
        return out.reshape(n, *field.shape[1:])

    return n, map_rows(rows, like)


class GlobalBatch(WrappedDecomposition):
    r"""A decomposition evaluated on the global batch of all ranks of a process group.

    ``UniLoss(GlobalBatch(AveragePrecision()), generator=g)(scores, target)``, called on every
    rank with that rank's ``scores`` and ``target``, returns on every rank the UniLoss of the
    *concatenated* batch (ranks in order): the comparisons, anchors, metric and interpolation
    cover all ranks' samples. Per step it makes one all-gather of the targets (plain, carrying
    each rank's batch size) and one of the scores, in :meth:`prepare`; with ``batch_size=None``
    a third, of one int64 per rank, first exchanges the batch sizes.

    **Same anchors on every rank.** Every rank must draw the same anchors: give the loss a
    generator seeded identically on every rank, ``generator=torch.Generator().manual_seed(s)``
    (advanced in lockstep, since every rank makes the same draws). Then every rank computes the
    same loss value. The first call in a group of several ranks compares the ranks' generators
    (one all-gather of an int64) and warns once (:class:`PerRankWarning`) when a rank has none
    (``generator=None`` draws from each rank's global random state, which the ranks do not share)
    or their states differ. (The wrapper cannot draw the anchors itself: the engine does, from
    the loss's generator; and a seed broadcast on every step would cost a collective per step.)

    **Gradient convention.** Let ``L`` be the loss of the global batch and ``W`` the world size.

    * ``grad_reduction="mean"`` (default: DDP, FSDP, Lightning and Accelerate *average* the
      parameter gradients over ranks): rank ``r``'s scores receive ``W * dL/ds_r``, so the
      averaged parameter gradient equals the single-process gradient of ``L`` exactly.
    * ``grad_reduction="sum"`` (gradients summed over ranks, or no reduction): rank ``r``'s
      scores receive exactly ``dL/ds_r``, the single-process gradient of its scores.

    By default the gathered copies of other ranks' scores are detached and rank ``r``'s own
    slice is its live ``scores``: since every rank computes the same ``L``, that gives the exact
    gradient with no communication in the backward pass. ``sync_grads=True`` instead gathers
    with the autograd-aware ``torch.distributed.nn.functional.all_gather``, whose backward pass
    sums every rank's gradient with respect to each slice (an all-to-all on gloo, a
    reduce-scatter on NCCL): the same gradient when the anchors agree, the gradient of the sum
    of the per-rank losses when they do not.

    Uneven batches (a smaller last batch, a rank with no sample) are padded to a common size for
    the collectives and unpadded before the metric. A rank with no positive sample is fine: the
    metric sees the global batch; if the *global* batch has none, the loss is zero on every rank
    with zero gradients, as for one process. Every rank must call the loss (and its backward
    pass, with ``sync_grads=True``) the same number of times.

    Per-sample metrics (accuracy, PCK) need no gathering: their metric is a mean over samples,
    so plain ``UniLoss`` per rank under DDP already trains on the same metric (with each rank's
    own anchors). Wrapping them still works and then matches single-process training on the
    global batch exactly, at the cost of gathering their scores. Decompositions that process
    their comparisons block by block (PCK on huge heatmaps) keep that path through the wrapper,
    except with ``sync_grads=True`` (whose gradient flows back through the gather: densely).
    ``metric(scores, target)`` is collective too.

    Without an initialised process group (or with a world size of 1) the wrapper is the
    identity: the same script runs on one process.

    Args:
        decomposition: the metric, any :class:`uniloss.Decomposition` whose ``scores`` and
            ``target`` are tensors (a target may be a tuple of them, e.g. a
            :class:`~uniloss.KeypointTarget`) with one row per sample (dim 0); the other dimensions and
            the dtypes must agree across ranks.
        group: the process group (default: the global group).
        batch_size: the largest per-rank batch (e.g. the DataLoader's ``batch_size``); saves the
            size exchange. A batch larger than it raises ``ValueError``.
        grad_reduction: ``"mean"`` or ``"sum"``, how parameter gradients are reduced across
            ranks (see above).
        sync_grads: gather the scores with the autograd-aware all-gather (see above).

    Memory: each rank holds the global batch's comparisons (``P*N`` for AP over the global
    batch: ``W**2`` times a rank's share), plus ``W`` copies of a rank's scores and targets.

    Example (one process: the identity)::

        >>> import torch, uniloss
        >>> from uniloss.distributed import GlobalBatch
        >>> loss_fn = uniloss.UniLoss(GlobalBatch(uniloss.AveragePrecision()),
        ...                           generator=torch.Generator().manual_seed(0))
        >>> scores = torch.tensor([0.9, 0.8, 0.3, 0.1], requires_grad=True)
        >>> loss = loss_fn(scores, torch.tensor([1, 0, 1, 0]))
        >>> round(float(loss_fn.last.metric), 4)
        0.8333
    """

    def __init__(
        self,
        decomposition: Decomposition,
        *,
        group: Any = None,
        batch_size: Optional[int] = None,
        grad_reduction: str = "mean",
        sync_grads: bool = False,
    ) -> None:
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise ValueError(f"Expected `batch_size` to be a positive int or None, but got {batch_size!r}")
        if grad_reduction not in _REDUCTIONS:
            raise ValueError(f"Expected `grad_reduction` in {_REDUCTIONS}, but got {grad_reduction!r}")
        if not isinstance(sync_grads, bool):
            raise TypeError(f"Expected `sync_grads` to be a bool, but got {type(sync_grads).__name__}")
        self.group = group
        self.batch_size = batch_size
        self.grad_reduction = grad_reduction
        self.sync_grads = sync_grads
        super().__init__(decomposition)

    def __repr__(self) -> str:
        return f"GlobalBatch({self.decomposition!r}, grad_reduction={self.grad_reduction!r})"

    def world(self) -> Tuple[int, int]:
        """``(rank, world_size)`` in the group; ``(0, 1)`` without an initialised group."""
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()):
            return 0, 1
        return dist.get_rank(self.group), dist.get_world_size(self.group)

    def structure(self, target: Any) -> Optional[Structure]:
        """The wrapped decomposition's structure; without its ``comparisons_block`` where
        ``sync_grads=True`` (whose gradient flows back through the gather, in one graph)."""
        inner = super().structure(target)
        if inner is None or not self.sync_grads or inner.comparisons_block is None:
            return inner
        return replace(inner, comparisons_block=None)

    def check(self, scores: Tensor, target: Any) -> None:
        """The wrapped decomposition's checks, on this rank's batch."""
        super().check(scores, target)
        if not isinstance(target, WrappedPlan) and self.batch_size is not None and scores.shape[0] > self.batch_size:
            raise ValueError(
                f"Expected at most batch_size={self.batch_size} samples per rank, but got "
                f"{scores.shape[0]}"
            )

    def gather(self, scores: Tensor, target: Any) -> Tuple[Tensor, Any, Tuple[int, ...]]:
        """All ranks' ``scores`` and ``target`` concatenated in rank order, and the batch sizes.

        Collective: every rank of the group must call it. Gradients flow to this rank's
        ``scores`` as the class documents."""
        rank, world = self.world()
        if world == 1:
            return scores, target, (scores.shape[0],)
        dist = torch.distributed
        n = scores.shape[0]
        rows = row_fields(target)[0].shape[0]
        if rows != n:
            raise ValueError(f"Expected `target` with one row per score ({n}), but got {rows} rows")
        capacity = self.batch_size
        if capacity is None:
            counts = [torch.zeros(1, dtype=torch.int64, device=scores.device) for _ in range(world)]
            dist.all_gather(counts, torch.tensor([n], dtype=torch.int64, device=scores.device), group=self.group)
            capacity = max(int(c) for c in counts)
        # 1. targets, with each rank's size in an 8-byte header: a plain all-gather.
        buf = _encode_rows(target, capacity)
        bufs = [torch.empty_like(buf) for _ in range(world)]
        dist.all_gather(bufs, buf, group=self.group)
        decoded = [_decode_rows(b, target, capacity) for b in bufs]
        sizes = tuple(k for k, _ in decoded)
        global_target = _cat_rows(*[rows for _, rows in decoded])
        # 2. scores, padded to the common size.
        live = _scale_grad(scores, self._factor(world))
        padded = live
        if capacity > n:
            padded = torch.cat([live, live.new_zeros(capacity - n, *live.shape[1:])])
        if self.sync_grads:
            from torch.distributed.nn.functional import all_gather as all_gather_autograd

            parts: List[Tensor] = list(all_gather_autograd(padded, group=self.group))
        else:
            parts = [torch.empty_like(padded) for _ in range(world)]
            dist.all_gather(parts, padded.detach().contiguous(), group=self.group)
            parts[rank] = padded
        global_scores = torch.cat([p[:k] for p, k in zip(parts, sizes)])
        return global_scores, global_target, sizes

    def _factor(self, world: int) -> float:
        """The factor on this rank's gradient (see the class documentation)."""
        if self.sync_grads and self.grad_reduction == "sum":
            return 1.0 / world  # the backward pass sums the W identical gradients
        if not self.sync_grads and self.grad_reduction == "mean":
            return float(world)  # DDP divides the parameter gradients by W
        return 1.0

    def expand(self, scores: Tensor, target: Any) -> Tuple[Tensor, Any, int]:
        """The global batch (:meth:`gather`) and where this rank's rows start in it."""
        global_scores, global_target, sizes = self.gather(scores, target)
        return global_scores, global_target, sum(sizes[:self.world()[0]])

    def _live(self, scores: Tensor) -> Tensor:
        _, world = self.world()
        if self.sync_grads and world > 1:
            raise ValueError(
                "GlobalBatch.comparisons() got other scores than those its target was prepared "
                "with; call prepare(scores, target) with the same scores"
            )
        return _scale_grad(scores, self._factor(world))

    # Whether the first multi-rank call has compared the ranks' generators (a class default, for
    # objects pickled before it existed).
    _generator_checked = False

    def _check_generator(self, generator: Optional[torch.Generator], device: torch.device, world: int) -> None:
        """On the first multi-rank call: warn (:class:`PerRankWarning`) when the ranks would draw
        different anchors, i.e. a loss without a generator on some rank, or generators in different
        states (e.g. seeded with the rank). Collective: one all-gather of an int64 per rank, once."""
        self._generator_checked = True
        code = -1 if generator is None else zlib.crc32(bytes(generator.get_state().tolist()))
        gathered = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world)]
        torch.distributed.all_gather(gathered, torch.tensor([code], dtype=torch.int64, device=device), group=self.group)
        codes = [int(c) for c in gathered]
        missing = sum(c == -1 for c in codes)
        if missing:
            warnings.warn(
                f"GlobalBatch: the loss has no generator (generator=None) on {missing} of the {world} ranks: "
                "each rank draws its anchors from its own global random state, which the ranks do not share "
                "(dropout, augmentation and uneven batches consume it differently), so the ranks interpolate "
                "different anchors and compute different losses. Give the loss a generator seeded identically "
                "on every rank: UniLoss(GlobalBatch(...), generator=torch.Generator().manual_seed(seed)).",
                PerRankWarning, stacklevel=V.user_stacklevel(),
            )
        elif len(set(codes)) > 1:
            warnings.warn(
                f"GlobalBatch: the loss's generators are in {len(set(codes))} different states across the "
                f"{world} ranks (seeded with the rank?), so the ranks draw different anchors and compute "
                "different losses. Seed the generator identically on every rank.",
                PerRankWarning, stacklevel=V.user_stacklevel(),
            )

    def prepare(self, scores: Tensor, target: Any, generator: Optional[torch.Generator] = None) -> WrappedPlan:
        """Gathers the global batch (the step's two collectives) and prepares the wrapped
        decomposition on it. On the first call in a group of several ranks, also checks once that
        the ranks' generators agree (see :class:`PerRankWarning`)."""
        if not self._generator_checked and not isinstance(target, WrappedPlan):
            _, world = self.world()
            if world > 1:
                self._check_generator(generator, scores.device, world)
        return super().prepare(scores, target, generator)

    def _plan(self, target: Any, scores: Optional[Tensor]) -> WrappedPlan:
        if scores is not None and not isinstance(target, WrappedPlan):
            return self.prepare(scores, target)  # comparisons() on a raw target: prepare it here
        return super()._plan(target, scores)


# --------------------------------------------------------------------------- cross-batch memory


class CrossBatchMemory(WrappedDecomposition):
    r"""A decomposition evaluated on the batch plus a bounded memory of recent batches.

    Set-level metrics (AP, AUROC, NDCG) are noisy on small batches with few positives. This
    wrapper appends to each batch the detached scores and targets of up to ``size`` most recent
    samples from earlier calls (a FIFO queue), so the comparisons, anchors and metric cover
    ``n + m`` samples; gradients flow to the current batch's scores only (for AP: to the pairs
    with at least one current sample). Stored scores come from older weights (the cross-batch
    memory of Wang et al., CVPR 2020); a memory of a few batches keeps them close.

    **The step.** The loss averages its terms over the ``n + m`` rows, of which the batch's ``n``
    carry the gradient, so the batch's gradient is about ``n / (n + m)`` of the unwrapped loss's:
    a memory lowers the effective learning rate (multiply the loss by ``(n + m) / n``, ``m =
    len(memory)`` before the call, to keep it). For balanced accuracy at batches of 16-32 with a
    memory up to 128 samples, that lower step was the one it needed: unscaled, at the recipe's
    rate, level with class-weighted cross-entropy at its own best rate
    (``docs/results/metric-wins/small-batch-memory.md``).

    **When a batch enters the memory.** A loss call pushes its batch, detached, into the queue
    (after computing the loss on the batch plus the memory as it was) *only while autograd
    records*: ``torch.is_grad_enabled()`` and not in ``torch.inference_mode()``. A call under
    ``torch.no_grad()`` or ``torch.inference_mode()`` (validation, Lightning's sanity check) reads
    the memory without changing it; evaluate under one of them, or call ``reset()`` afterwards,
    since the wrapper cannot see ``model.eval()``. ``metric(scores, target)`` never pushes.
    ``reset()`` empties the memory (e.g. between epochs or before evaluation on another set).

    **One batch evaluated several times** (an optimizer closure: ``torch.optim.LBFGS`` evaluates
    it up to ``max_iter`` times per step, SAM twice): without help every evaluation would push
    the batch again and the next one would compare it with its own copy. Wrap the step in
    :meth:`same_batch`: every call inside the block sees the memory as it was when the block
    began, and the batch is stored once, with the scores of its latest evaluation::

        with memory.same_batch():
            optimizer.step(closure)            # LBFGS: the closure calls the loss several times

    (The wrapper does not guess: a target tensor reused for different batches, e.g. a fixed
    ``P x K`` label layout in metric learning, is common, so repeated targets do not mean a
    repeated batch.)

    **Device.** The memory is plain tensors, not module buffers: ``UniLoss(...).to(device)``
    cannot reach it. It follows the scores instead: a call with scores (and target) on another
    device moves the memory there first, so a checkpoint loaded on the CPU or a model moved to
    the GPU just works. A new dtype or row shape still raises (call ``reset()``).

    Under DDP, ``GlobalBatch(CrossBatchMemory(dec, size=...))`` stores gathered batches: the
    memory is the same on every rank and costs no communication.
    ``CrossBatchMemory(GlobalBatch(dec), ...)`` would not work (the memory would be gathered
    every step).

    Args:
        decomposition: the metric; ``scores`` and ``target`` tensors (or a tuple of them for the
            target) with one row per sample.
        size: the most samples the memory holds (``0``: the wrapped decomposition alone).

    Memory: ``size`` rows of scores and targets, plus the enlarged set's comparisons (for AP,
    ``(P + P_m)(N + N_m)`` instead of ``P N``).

    Example::

        >>> import torch, uniloss
        >>> from uniloss.distributed import CrossBatchMemory
        >>> memory = CrossBatchMemory(uniloss.AveragePrecision(), size=8)
        >>> loss_fn = uniloss.UniLoss(memory, generator=torch.Generator().manual_seed(0))
        >>> for _ in range(3):
        ...     loss = loss_fn(torch.randn(4, requires_grad=True), torch.tensor([1, 0, 0, 0]))
        >>> len(memory), loss_fn.last.num_bits                 # 8 stored; (1+2) x (3+6) pairs
        (8, 27)
    """

    # Inside same_batch(): [depth, memory at the block's start]; None outside a block (a class
    # default too, for objects pickled before it existed).
    _block: Optional[List[Any]] = None

    def __init__(self, decomposition: Decomposition, *, size: int) -> None:
        super().__init__(decomposition)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"Expected `size` to be a non-negative int, but got {size!r}")
        self.size = size
        self._scores: Optional[Tensor] = None
        self._target: Any = None  # a tensor, or a tuple of them (as the targets are)
        self._block = None

    def __repr__(self) -> str:
        return f"CrossBatchMemory({self.decomposition!r}, size={self.size})"

    def __len__(self) -> int:
        return 0 if self._scores is None else int(self._scores.shape[0])

    def reset(self) -> None:
        """Empty the memory."""
        self._scores = self._target = None
        if self._block is not None:
            self._block[1] = (None, None)

    @contextlib.contextmanager
    def same_batch(self) -> Iterator["CrossBatchMemory"]:
        """A block in which every loss call evaluates the same batch (an optimizer closure).

        Each call inside sees the memory as it was when the block began (never the batch's own
        earlier copy); a call that records autograd replaces the batch's entry with its scores
        instead of pushing it again, so on leaving the block the memory holds the batch once,
        with its latest scores. Blocks nest (an inner block is part of the outer one)::

            with memory.same_batch():                     # SAM: two passes on one batch
                loss_fn(model(x), y).backward(); opt.first_step(zero_grad=True)
                loss_fn(model(x), y).backward(); opt.second_step(zero_grad=True)
        """
        outer = self._block is None
        if outer:
            self._block = [0, (self._scores, self._target)]
        assert self._block is not None  # inside a block
        self._block[0] += 1
        try:
            yield self
        finally:
            assert self._block is not None  # still inside the block
            self._block[0] -= 1
            if outer:
                self._block = None

    def _base(self) -> Tuple[Optional[Tensor], Any]:
        """The memory a call is evaluated against: the current one, or inside :meth:`same_batch`
        the one at the block's start."""
        return (self._scores, self._target) if self._block is None else self._block[1]

    def _follow(self, scores: Tensor, target: Any) -> None:
        """Moves the memory (and a block's start) to the devices of ``scores`` and ``target``."""
        if self._scores is None and (self._block is None or self._block[1][0] is None):
            return
        target_device = row_fields(target)[0].device

        def move(pair):
            s, t = pair
            if s is None:
                return pair
            return s.to(scores.device), map_rows(lambda field: field.to(target_device), t)

        self._scores, self._target = move((self._scores, self._target))
        if self._block is not None:
            self._block[1] = move(self._block[1])

    @staticmethod
    def _recording() -> bool:
        """Whether a call pushes its batch: autograd records (not no_grad, not inference mode)."""
        return torch.is_grad_enabled() and not torch.is_inference_mode_enabled()

    def state_dict(self) -> Dict[str, Any]:
        """The memory, ``{"scores": ..., "target": ...}`` (``None`` when empty), for a checkpoint.

        :class:`~uniloss.UniLoss` puts it in its own ``state_dict()`` (key ``"decomposition"``),
        so a resumed run continues with the memory it had, not an empty one.
        """
        return {"scores": self._scores, "target": self._target}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore a memory saved by :meth:`state_dict` (its newest ``size`` samples)."""
        if not isinstance(state, dict) or set(state) != {"scores", "target"}:
            raise ValueError(f"Expected a CrossBatchMemory state {{'scores': ..., 'target': ...}}, but got {state!r:.200}")
        scores, target = state["scores"], state["target"]
        if (scores is None) != (target is None):
            raise ValueError("Expected `scores` and `target` both stored or both None")
        if scores is not None:
            assert target is not None  # both stored (checked above)
            check_rows("scores", scores)
            rows = row_fields(check_rows("target", target))[0].shape[0]
            if scores.shape[0] != rows:
                raise ValueError(f"Expected as many stored scores as targets, but got {scores.shape[0]} and {rows}")
        self.reset()
        if scores is not None and self.size:
            assert target is not None  # both stored (checked above)
            self._scores, self._target = scores.detach()[-self.size:], map_rows(lambda t: t.detach()[-self.size:], target)
            if self._block is not None:
                self._block[1] = (self._scores, self._target)

    @property
    def memory(self) -> Tuple[Optional[Tensor], Any]:
        """The stored ``(scores, target)``, oldest first (``(None, None)`` when empty)."""
        return self._scores, self._target

    def check(self, scores: Tensor, target: Any) -> None:
        """The wrapped decomposition's checks on the batch, and agreement with the memory."""
        super().check(scores, target)
        stored_scores, stored_target = self._base()
        # (the device may differ: the memory follows the batch)
        if stored_scores is not None and not isinstance(target, WrappedPlan):
            assert stored_target is not None  # stored together with the scores
            pairs = [("scores", scores, stored_scores)] + [
                ("target", new, old) for new, old in zip(row_fields(target), row_fields(stored_target))]
            for name, new, old in pairs:
                if new.shape[1:] != old.shape[1:] or new.dtype != old.dtype:
                    raise ValueError(
                        f"Expected `{name}` rows of shape {tuple(old.shape[1:])} and dtype {old.dtype}, "
                        f"as stored in the memory, but got {tuple(new.shape[1:])} and {new.dtype}; "
                        "call reset() to change them"
                    )

    def expand(self, scores: Tensor, target: Any) -> Tuple[Tensor, Any, int]:
        """The batch followed by the memory it is evaluated against (see :meth:`_base`), and 0."""
        self._follow(scores, target)
        stored_scores, stored_target = self._base()
        if stored_scores is None or not self.size:
            return scores, target, 0
        assert stored_target is not None  # stored together with the scores
        return torch.cat([scores, stored_scores]), _cat_rows(target, stored_target), 0

    def push(self, scores: Tensor, target: Any) -> None:
        """Append a batch (detached) and drop the oldest samples beyond ``size``; inside
        :meth:`same_batch`, replace the block's batch instead. Pushes whatever the grad mode (the
        loss calls :meth:`prepare`, which pushes only while autograd records)."""
        if not self.size:
            return
        self._follow(scores, target)
        scores, target = scores.detach(), map_rows(Tensor.detach, target)
        stored_scores, stored_target = self._base()
        if stored_scores is not None:
            assert stored_target is not None  # stored together with the scores
            scores, target = torch.cat([stored_scores, scores]), _cat_rows(stored_target, target)
        self._scores, self._target = scores[-self.size:], map_rows(lambda t: t[-self.size:], target)

    def prepare(self, scores: Tensor, target: Any, generator: Optional[torch.Generator] = None) -> WrappedPlan:
        """Prepares the wrapped decomposition on the batch plus the memory, then pushes the
        batch into the memory if autograd records (see the class documentation)."""
        if isinstance(target, WrappedPlan):
            return target
        plan = super().prepare(scores, target, generator)
        if self._recording():
            self.push(scores, target)
        return plan
