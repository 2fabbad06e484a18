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
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor

from ._decomposition import Decomposition

__all__ = ["GlobalBatch", "CrossBatchMemory", "PerRankWarning"]


class PerRankWarning(UserWarning):
    """Under ``torch.distributed``, a loss that is not the global batch's: a set-level metric
    computed on each rank's batch (wrap it in :class:`GlobalBatch`), or ranks that draw different
    anchors (give the loss a generator seeded identically on every rank). Issued once per loss.

    Silence it for a metric you know to be a mean over samples (so per-rank training optimises
    the same metric) with ``warnings.simplefilter("ignore", uniloss.distributed.PerRankWarning)``.
    """

_REDUCTIONS = ("mean", "sum")


def _check_decomposition(decomposition: object) -> Decomposition:
    if not isinstance(decomposition, Decomposition):
        raise TypeError(
            "Expected `decomposition` to be a uniloss.Decomposition, but got "
            f"{type(decomposition).__name__}"
        )
    return decomposition


def _check_tensor_rows(name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(
            f"Expected `{name}` to be a tensor with one row per sample (dim 0), but got "
            f"{type(value).__name__}"
        )
    if value.dim() == 0:
        raise ValueError(f"Expected `{name}` to have a batch dimension (dim 0), but got a scalar")
    return value


class _ScaleGrad(torch.autograd.Function):
    """Identity in the forward pass; multiplies the gradient by ``factor``."""

    @staticmethod
    def forward(ctx, x: Tensor, factor: float) -> Tensor:  # type: ignore[override]
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return grad * ctx.factor, None


def _scale_grad(x: Tensor, factor: float) -> Tensor:
    return x if factor == 1.0 or not x.requires_grad else _ScaleGrad.apply(x, factor)


# --------------------------------------------------------------------------- global batch


@dataclass(frozen=True)
class _GlobalPlan:
    local: Tensor  # this rank's scores, as the engine passed them
    scores: Tensor  # [sum n_k, ...] the global batch's scores (grad flows to `local` only)
    target: Any  # the wrapped decomposition's prepared target of the global batch
    sizes: Tuple[int, ...]  # n_k of every rank


def _encode_rows(target: Tensor, capacity: int) -> Tensor:
    """``[8 + capacity * row_bytes]`` uint8: the row count (int64) then the rows, zero padded."""
    n = target.shape[0]
    header = torch.tensor([n], dtype=torch.int64, device=target.device).view(torch.uint8)
    body = target.contiguous().reshape(-1).view(torch.uint8)
    row_bytes = body.numel() // n if n else _row_bytes(target)
    pad = body.new_zeros((capacity - n) * row_bytes)
    return torch.cat([header, body, pad])


def _row_bytes(t: Tensor) -> int:
    numel = 1
    for d in t.shape[1:]:
        numel *= d
    return numel * t.element_size()


def _decode_rows(buf: Tensor, like: Tensor) -> Tuple[int, Tensor]:
    n = int(buf[:8].clone().view(torch.int64)[0])
    rows = buf[8:8 + n * _row_bytes(like)].clone().view(like.dtype)
    return n, rows.reshape(n, *like.shape[1:])


class GlobalBatch(Decomposition):
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
    their comparisons block by block (PCK on huge heatmaps) run densely through the wrapper.

    Without an initialised process group (or with a world size of 1) the wrapper is the
    identity: the same script runs on one process.

    Args:
        decomposition: the metric, any :class:`uniloss.Decomposition` whose ``scores`` and
            ``target`` are tensors with one row per sample (dim 0); the other dimensions and
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
        self.decomposition = _check_decomposition(decomposition)
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
        self.higher_is_better = decomposition.higher_is_better

    def __repr__(self) -> str:
        return f"GlobalBatch({self.decomposition!r}, grad_reduction={self.grad_reduction!r})"

    def world(self) -> Tuple[int, int]:
        """``(rank, world_size)`` in the group; ``(0, 1)`` without an initialised group."""
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()):
            return 0, 1
        return dist.get_rank(self.group), dist.get_world_size(self.group)

    def check(self, scores: Tensor, target: Any) -> None:
        """The wrapped decomposition's checks, on this rank's batch."""
        if isinstance(target, _GlobalPlan):
            return
        _check_tensor_rows("scores", scores)
        _check_tensor_rows("target", target)
        if self.batch_size is not None and scores.shape[0] > self.batch_size:
            raise ValueError(
                f"Expected at most batch_size={self.batch_size} samples per rank, but got "
                f"{scores.shape[0]}"
            )
        self.decomposition.check(scores, target)

    def gather(self, scores: Tensor, target: Tensor) -> Tuple[Tensor, Tensor, Tuple[int, ...]]:
        """All ranks' ``scores`` and ``target`` concatenated in rank order, and the batch sizes.

        Collective: every rank of the group must call it. Gradients flow to this rank's
        ``scores`` as the class documents."""
        rank, world = self.world()
        if world == 1:
            return scores, target, (scores.shape[0],)
        dist = torch.distributed
        n = scores.shape[0]
        if target.shape[0] != n:
            raise ValueError(
                f"Expected `target` with one row per score ({n}), but got {target.shape[0]} rows"
            )
        capacity = self.batch_size
        if capacity is None:
            counts = [torch.zeros(1, dtype=torch.int64, device=scores.device) for _ in range(world)]
            dist.all_gather(counts, torch.tensor([n], dtype=torch.int64, device=scores.device), group=self.group)
            capacity = max(int(c) for c in counts)
        # 1. targets, with each rank's size in an 8-byte header: a plain all-gather.
        buf = _encode_rows(target, capacity)
        bufs = [torch.empty_like(buf) for _ in range(world)]
        dist.all_gather(bufs, buf, group=self.group)
        decoded = [_decode_rows(b, target) for b in bufs]
        sizes = tuple(k for k, _ in decoded)
        global_target = torch.cat([rows for _, rows in decoded])
        # 2. scores, padded to the common size.
        factor = 1.0
        if self.sync_grads and self.grad_reduction == "sum":
            factor = 1.0 / world  # the backward pass sums the W identical gradients
        elif not self.sync_grads and self.grad_reduction == "mean":
            factor = float(world)  # DDP divides the parameter gradients by W
        live = _scale_grad(scores, factor)
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
                PerRankWarning, stacklevel=4,
            )
        elif len(set(codes)) > 1:
            warnings.warn(
                f"GlobalBatch: the loss's generators are in {len(set(codes))} different states across the "
                f"{world} ranks (seeded with the rank?), so the ranks draw different anchors and compute "
                "different losses. Seed the generator identically on every rank.",
                PerRankWarning, stacklevel=4,
            )

    def prepare(self, scores: Tensor, target: Any, generator: Optional[torch.Generator] = None) -> _GlobalPlan:
        """Gathers the global batch (the step's two collectives) and prepares the wrapped
        decomposition on it. On the first call in a group of several ranks, also checks once that
        the ranks' generators agree (see :class:`PerRankWarning`)."""
        if isinstance(target, _GlobalPlan):
            return target
        _check_tensor_rows("target", target)
        if not self._generator_checked:
            _, world = self.world()
            if world > 1:
                self._check_generator(generator, scores.device, world)
        global_scores, global_target, sizes = self.gather(scores, target)
        inner = self.decomposition.prepare(global_scores, global_target, generator)
        return _GlobalPlan(scores, global_scores, inner, sizes)

    def _plan(self, scores: Optional[Tensor], target: Any) -> _GlobalPlan:
        if isinstance(target, _GlobalPlan):
            return target
        if scores is None:
            raise TypeError(
                "GlobalBatch.best() and .evaluate() take the target returned by "
                f".prepare(scores, target), but got {type(target).__name__}"
            )
        return self.prepare(scores, target)

    def comparisons(self, scores: Tensor, target: Any) -> Tensor:
        """The wrapped comparisons on the global batch gathered by :meth:`prepare`."""
        plan = self._plan(scores, target)
        if scores is not plan.local:
            raise ValueError(
                "GlobalBatch.comparisons() got other scores than those its target was prepared "
                "with; call prepare(scores, target) with the same scores"
            )
        return self.decomposition.comparisons(plan.scores, plan.target)

    def metric(self, scores: Tensor, target: Any) -> Tensor:
        """The exact metric of the global batch (collective: every rank must call it)."""
        with torch.no_grad():
            global_scores, global_target, _ = self.gather(_check_tensor_rows("scores", scores),
                                                          _check_tensor_rows("target", target))
            return self.decomposition.metric(global_scores, global_target)

    def best(self, target: Any) -> Tensor:
        """The wrapped ``best`` on the global batch."""
        return self.decomposition.best(self._plan(None, target).target)

    def evaluate(self, bits: Tensor, target: Any) -> Tensor:
        """The wrapped ``evaluate`` on the global batch."""
        return self.decomposition.evaluate(bits, self._plan(None, target).target)

    def batch_metric(self, target: Any) -> Optional[Tensor]:
        """The wrapped ``batch_metric`` on the global batch."""
        return self.decomposition.batch_metric(self._plan(None, target).target)

    def segments(self, target: Any):
        """The wrapped ``segments`` on the global batch."""
        return self.decomposition.segments(self._plan(None, target).target)

    def evaluate_zeros(self, zeros: Tensor, target: Any) -> Tensor:
        """The wrapped ``evaluate_zeros`` on the global batch."""
        return self.decomposition.evaluate_zeros(zeros, self._plan(None, target).target)

    def evaluate_zeros_plus_one(self, zeros: Tensor, target: Any) -> Tensor:
        """The wrapped ``evaluate_zeros_plus_one`` on the global batch."""
        return self.decomposition.evaluate_zeros_plus_one(zeros, self._plan(None, target).target)

    def num_good_flips(self, target: Any, num_bits: int) -> int:
        """The wrapped ``num_good_flips`` on the global batch."""
        return self.decomposition.num_good_flips(self._plan(None, target).target, num_bits)

    def state_dict(self) -> Any:
        """The wrapped decomposition's state (e.g. a :class:`CrossBatchMemory`'s memory)."""
        return self.decomposition.state_dict()

    def load_state_dict(self, state: Any) -> None:
        """Restores the wrapped decomposition's state."""
        self.decomposition.load_state_dict(state)


# --------------------------------------------------------------------------- cross-batch memory


@dataclass(frozen=True)
class _MemoryPlan:
    current: Tensor  # the scores of this call
    scores: Tensor  # [n + m, ...] this call's scores, then the memory's (detached)
    target: Any  # the wrapped decomposition's prepared target of the enlarged set


class CrossBatchMemory(Decomposition):
    r"""A decomposition evaluated on the batch plus a bounded memory of recent batches.

    Set-level metrics (AP, AUROC, NDCG) are noisy on small batches with few positives. This
    wrapper appends to each batch the detached scores and targets of up to ``size`` most recent
    samples from earlier calls (a FIFO queue), so the comparisons, anchors and metric cover
    ``n + m`` samples; gradients flow to the current batch's scores only (for AP: to the pairs
    with at least one current sample). Stored scores come from older weights (the cross-batch
    memory of Wang et al., CVPR 2020); a memory of a few batches keeps them close.

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
        decomposition: the metric; ``scores`` and ``target`` tensors with one row per sample.
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
        self.decomposition = _check_decomposition(decomposition)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"Expected `size` to be a non-negative int, but got {size!r}")
        self.size = size
        self.higher_is_better = decomposition.higher_is_better
        self._scores: Optional[Tensor] = None
        self._target: Optional[Tensor] = None
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

    def _base(self) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        """The memory a call is evaluated against: the current one, or inside :meth:`same_batch`
        the one at the block's start."""
        return (self._scores, self._target) if self._block is None else self._block[1]

    def _follow(self, scores: Tensor, target: Any) -> None:
        """Moves the memory (and a block's start) to the devices of ``scores`` and ``target``."""
        if self._scores is None and (self._block is None or self._block[1][0] is None):
            return
        target_device = target.device if isinstance(target, Tensor) else scores.device

        def move(pair):
            s, t = pair
            if s is None:
                return pair
            return (s if s.device == scores.device else s.to(scores.device),
                    t if t.device == target_device else t.to(target_device))

        self._scores, self._target = move((self._scores, self._target))
        if self._block is not None:
            self._block[1] = move(self._block[1])

    @staticmethod
    def _recording() -> bool:
        """Whether a call pushes its batch: autograd records (not no_grad, not inference mode)."""
        return torch.is_grad_enabled() and not torch.is_inference_mode_enabled()

    def state_dict(self) -> Dict[str, Optional[Tensor]]:
        """The memory, ``{"scores": ..., "target": ...}`` (``None`` when empty), for a checkpoint.

        :class:`~uniloss.UniLoss` puts it in its own ``state_dict()`` (key ``"decomposition"``),
        so a resumed run continues with the memory it had, not an empty one.
        """
        return {"scores": self._scores, "target": self._target}

    def load_state_dict(self, state: Dict[str, Optional[Tensor]]) -> None:
        """Restore a memory saved by :meth:`state_dict` (its newest ``size`` samples)."""
        if not isinstance(state, dict) or set(state) != {"scores", "target"}:
            raise ValueError(f"Expected a CrossBatchMemory state {{'scores': ..., 'target': ...}}, but got {state!r:.200}")
        scores, target = state["scores"], state["target"]
        if (scores is None) != (target is None):
            raise ValueError("Expected `scores` and `target` both stored or both None")
        if scores is not None:
            assert target is not None  # both stored (checked above)
            _check_tensor_rows("scores", scores)
            _check_tensor_rows("target", target)
            if scores.shape[0] != target.shape[0]:
                raise ValueError(f"Expected as many stored scores as targets, but got {scores.shape[0]} and {target.shape[0]}")
        self.reset()
        if scores is not None and self.size:
            assert target is not None  # both stored (checked above)
            self._scores, self._target = scores.detach()[-self.size:], target.detach()[-self.size:]
            if self._block is not None:
                self._block[1] = (self._scores, self._target)

    @property
    def memory(self) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        """The stored ``(scores, target)``, oldest first (``(None, None)`` when empty)."""
        return self._scores, self._target

    def check(self, scores: Tensor, target: Any) -> None:
        """The wrapped decomposition's checks on the batch, and agreement with the memory."""
        if isinstance(target, _MemoryPlan):
            return
        _check_tensor_rows("scores", scores)
        _check_tensor_rows("target", target)
        self.decomposition.check(scores, target)
        stored_scores, stored_target = self._base()
        if stored_scores is not None:  # (the device may differ: the memory follows the batch)
            assert stored_target is not None  # stored together with the scores
            for name, new, old in (("scores", scores, stored_scores), ("target", target, stored_target)):
                if new.shape[1:] != old.shape[1:] or new.dtype != old.dtype:
                    raise ValueError(
                        f"Expected `{name}` rows of shape {tuple(old.shape[1:])} and dtype {old.dtype}, "
                        f"as stored in the memory, but got {tuple(new.shape[1:])} and {new.dtype}; "
                        "call reset() to change them"
                    )

    def _enlarged(self, scores: Tensor, target: Tensor) -> Tuple[Tensor, Tensor]:
        """The batch followed by the memory it is evaluated against (see :meth:`_base`)."""
        self._follow(scores, target)
        stored_scores, stored_target = self._base()
        if stored_scores is None or not self.size:
            return scores, target
        assert stored_target is not None  # stored together with the scores
        return torch.cat([scores, stored_scores]), torch.cat([target, stored_target])

    def push(self, scores: Tensor, target: Tensor) -> None:
        """Append a batch (detached) and drop the oldest samples beyond ``size``; inside
        :meth:`same_batch`, replace the block's batch instead. Pushes whatever the grad mode (the
        loss calls :meth:`prepare`, which pushes only while autograd records)."""
        if not self.size:
            return
        self._follow(scores, target)
        scores, target = scores.detach(), target.detach()
        stored_scores, stored_target = self._base()
        if stored_scores is not None:
            assert stored_target is not None  # stored together with the scores
            scores, target = torch.cat([stored_scores, scores]), torch.cat([stored_target, target])
        self._scores, self._target = scores[-self.size:], target[-self.size:]

    def prepare(self, scores: Tensor, target: Any, generator: Optional[torch.Generator] = None) -> _MemoryPlan:
        """Prepares the wrapped decomposition on the batch plus the memory, then pushes the
        batch into the memory if autograd records (see the class documentation)."""
        if isinstance(target, _MemoryPlan):
            return target
        _check_tensor_rows("target", target)
        all_scores, all_target = self._enlarged(scores, target)
        plan = _MemoryPlan(scores, all_scores, self.decomposition.prepare(all_scores, all_target, generator))
        if self._recording():
            self.push(scores, target)
        return plan

    def metric(self, scores: Tensor, target: Any) -> Tensor:
        """The exact metric of the batch plus the memory (inside :meth:`same_batch`, the memory
        at the block's start), without pushing the batch."""
        with torch.no_grad():
            all_scores, all_target = self._enlarged(scores, target)
            return self.decomposition.metric(all_scores, all_target)

    def _plan(self, target: Any) -> _MemoryPlan:
        if not isinstance(target, _MemoryPlan):
            raise TypeError(
                "CrossBatchMemory.comparisons(), .best() and .evaluate() take the target returned "
                f"by .prepare(scores, target), but got {type(target).__name__}"
            )
        return target

    def comparisons(self, scores: Tensor, target: Any) -> Tensor:
        """The wrapped comparisons on the batch plus the memory."""
        plan = self._plan(target)
        all_scores = plan.scores
        if scores is not plan.current:  # e.g. another forward pass on the same prepared target
            all_scores = torch.cat([scores, plan.scores[scores.shape[0]:].detach()])
        return self.decomposition.comparisons(all_scores, plan.target)

    def best(self, target: Any) -> Tensor:
        """The wrapped ``best`` on the enlarged set."""
        return self.decomposition.best(self._plan(target).target)

    def evaluate(self, bits: Tensor, target: Any) -> Tensor:
        """The wrapped ``evaluate`` on the enlarged set."""
        return self.decomposition.evaluate(bits, self._plan(target).target)

    def batch_metric(self, target: Any) -> Optional[Tensor]:
        """The wrapped ``batch_metric`` on the enlarged set."""
        return self.decomposition.batch_metric(self._plan(target).target)

    def segments(self, target: Any):
        """The wrapped ``segments`` on the enlarged set."""
        return self.decomposition.segments(self._plan(target).target)

    def evaluate_zeros(self, zeros: Tensor, target: Any) -> Tensor:
        """The wrapped ``evaluate_zeros`` on the enlarged set."""
        return self.decomposition.evaluate_zeros(zeros, self._plan(target).target)

    def evaluate_zeros_plus_one(self, zeros: Tensor, target: Any) -> Tensor:
        """The wrapped ``evaluate_zeros_plus_one`` on the enlarged set."""
        return self.decomposition.evaluate_zeros_plus_one(zeros, self._plan(target).target)

    def num_good_flips(self, target: Any, num_bits: int) -> int:
        """The wrapped ``num_good_flips`` on the enlarged set."""
        return self.decomposition.num_good_flips(self._plan(target).target, num_bits)
