"""The wrappers of uniloss.distributed share one base that forwards every hook of Decomposition, so
a wrapped metric keeps each of its fast paths (per-run counts, block by block): the same loss,
gradient and engine path as the metric alone, in one process and with an empty memory."""

import copy
import inspect
import os
import pickle

import pytest
import torch

import uniloss
from _reference import run_ranks
from uniloss._decomposition import Decomposition, Structure
from uniloss._wrapped import WrappedDecomposition, WrappedPlan
from uniloss.distributed import CrossBatchMemory, GlobalBatch

SEED = 3

# Decomposition's hooks: its public attributes (a hook added later is listed here by itself).
HOOKS = sorted(name for name in vars(Decomposition) if not name.startswith("_"))
# What the base does not merely forward: the hooks that take this call's batch, not a prepared set.
ON_THE_BATCH = {"prepare", "check", "metric"}


class _Identity(WrappedDecomposition):
    """The smallest wrapper: the inner decomposition on the batch itself."""

    def expand(self, scores, target):
        return scores, target, 0


def _spy():
    """A Decomposition overriding every hook, each recording its name and the target it got."""
    calls = []

    def recorder(name):
        def hook(self, *args):
            targets = [a for a, p in zip(args, list(inspect.signature(getattr(Decomposition, name)).parameters)[1:])
                       if p == "target"]
            calls.append((name, targets[0] if targets else None))
            if name == "structure":  # its block takes the scores as the inner set holds them
                return Structure(torch.ones(3, dtype=torch.long), lambda zeros: zeros,
                                 comparisons_block=lambda s, start, stop: ("block", s, start, stop))
            return WrappedPlan(args[0], args[0], "inner") if name == "prepare" else f"from {name}"
        return hook

    namespace = {name: recorder(name) for name in HOOKS if callable(getattr(Decomposition, name))}
    namespace["higher_is_better"] = False
    return type("Spy", (Decomposition,), namespace)(), calls


def _arguments(name, plan, batch):
    values = {"scores": batch[0], "target": batch[1] if name in ON_THE_BATCH else plan, "generator": None,
              "bits": torch.ones(1, 3, dtype=torch.bool), "zeros": torch.zeros(1, 3), "start": 0, "stop": 1,
              "num_bits": 3, "state": {}}
    params = list(inspect.signature(getattr(Decomposition, name)).parameters)[1:]
    missing = [p for p in params if p not in values]
    assert not missing, f"test_wrappers does not know the arguments {missing} of Decomposition.{name}: teach it"
    return [values[p] for p in params]


def test_the_base_forwards_every_hook():
    assert {"structure", "batch_metric", "state_dict"} <= set(HOOKS)
    not_forwarded = [name for name in HOOKS if name not in vars(WrappedDecomposition)]
    assert not not_forwarded, f"WrappedDecomposition does not forward {not_forwarded}"
    spy, calls = _spy()
    wrapper = _Identity(spy)
    assert wrapper.higher_is_better is False
    batch = (torch.randn(3), torch.tensor([1, 0, 1]))
    plan = WrappedPlan(batch[0], batch[0], "inner")
    for name in HOOKS:
        if not callable(getattr(Decomposition, name)):
            continue
        calls.clear()
        result = getattr(wrapper, name)(*_arguments(name, plan, batch))
        if name == "prepare":  # the inner prepare ran on the set (here the batch itself)
            assert calls == [("prepare", batch[1])] and result.target.target == "inner"
            continue
        assert [c[0] for c in calls] == [name], f"{name} was not forwarded: {calls}"
        if name not in {"state_dict", "load_state_dict"}:
            expected = batch[1] if name in ON_THE_BATCH else "inner"
            assert calls[0][1] is expected or calls[0][1] == expected, name
        if name == "structure":
            assert isinstance(result, Structure) and result.comparisons_block(batch[0], 0, 1) == ("block", batch[0], 0, 1)
        elif name not in {"check", "load_state_dict"}:
            assert result == f"from {name}"


@pytest.mark.parametrize("make", [GlobalBatch, lambda d: CrossBatchMemory(d, size=4), _Identity,
                                  lambda d: GlobalBatch(CrossBatchMemory(d, size=4))])
def test_block_hook_exactly_when_the_inner_decomposition_has_it(make):
    """A wrapper's structure has a block hook (the engine may run it block by block) exactly when
    its inner decomposition's does, also after pickling and copying."""

    def blockwise(dec, name):
        _, scores, target, _, _ = _case(name)
        return dec.structure(dec.prepare(scores, target)).comparisons_block is not None

    for inner, name, expected in ((uniloss.PCK(), "pck", True), (uniloss.AveragePrecision(), "ap", False)):
        wrapper = make(inner)
        assert blockwise(wrapper, name) is expected
        assert type(wrapper).__name__ == type(make(uniloss.AveragePrecision())).__name__  # messages unchanged
        for other in (pickle.loads(pickle.dumps(wrapper)), copy.deepcopy(wrapper)):
            assert type(other) is type(wrapper) and blockwise(other, name) is expected
    assert not blockwise(GlobalBatch(uniloss.PCK(), sync_grads=True), "pck")  # its gradient goes through the gather
    assert isinstance(GlobalBatch(uniloss.PCK()), GlobalBatch) and type(GlobalBatch(uniloss.PCK())).__name__ == "GlobalBatch"


def _case(name, seed=0):
    """``(decomposition, scores float64, target, loss options, expected path)``."""
    g = torch.Generator().manual_seed(seed)
    if name == "ap":
        scores = torch.randn(30, generator=g, dtype=torch.float64)
        labels = (torch.rand(30, generator=g) < 0.3).long()
        labels[:2] = torch.tensor([0, 1])
        return uniloss.AveragePrecision(), scores, labels, {}, "structured"
    if name.startswith("acc"):
        scores = torch.randn(12, 7, generator=g, dtype=torch.float64)
        dec = uniloss.MulticlassAccuracy(**({"fraction": 0.3} if name == "acc-fraction" else {}))
        return dec, scores, torch.randint(0, 7, (12,), generator=g), {}, "structured"
    n, joints, height, width = 4, 3, 6, 7
    heat = torch.randn(n, joints, height, width, generator=g, dtype=torch.float64)
    heat[0, 0, 2, 3] += 6  # some joints right
    xy = [torch.rand(n, joints, generator=g, dtype=torch.float64) * (size - 1) for size in (width, height)]
    visible = torch.rand(n, joints, generator=g) < 0.8
    visible[0, 0] = True
    target = uniloss.KeypointTarget(torch.stack(xy, -1), visible, 1 + 3 * torch.rand(n, generator=g, dtype=torch.float64))
    return uniloss.PCK(), heat, target, {"chunk_bits": 40}, "chunked"


def _loss(dec, scores, target, options, generator_seed=SEED):
    s = scores.clone().requires_grad_(True)
    loss_fn = uniloss.UniLoss(dec, generator=torch.Generator().manual_seed(generator_seed), **options, interpolation="anchors")
    loss = loss_fn(s, target)
    loss.backward()
    return loss.detach(), s.grad, loss_fn.last


WRAPPERS = {
    "global": GlobalBatch,
    "global-sum": lambda d: GlobalBatch(d, grad_reduction="sum"),
    "memory": lambda d: CrossBatchMemory(d, size=8),
    "global-memory": lambda d: GlobalBatch(CrossBatchMemory(d, size=8)),
}


@pytest.mark.parametrize("wrap", list(WRAPPERS))
@pytest.mark.parametrize("name", ["ap", "acc", "acc-fraction", "pck"])
def test_wrapped_equals_unwrapped(name, wrap):
    """GlobalBatch in one process and CrossBatchMemory with an empty memory are the identity: the
    same loss, gradient, metric and engine path (PCK: block by block) as the metric alone."""
    dec, scores, target, options, path = _case(name)
    ref_loss, ref_grad, ref_info = _loss(dec, scores, target, options)
    loss, grad, info = _loss(WRAPPERS[wrap](dec), scores, target, options)
    assert ref_info.path == info.path == path
    assert torch.equal(loss, ref_loss) and info.num_bits == ref_info.num_bits
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=0)
    torch.testing.assert_close(info.metric, ref_info.metric, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(info.anchor_values, ref_info.anchor_values, rtol=0, atol=0)


def test_memory_of_keypoint_targets_block_by_block():
    """PCK with a memory: the loss of PCK on the batch followed by the memory (detached), block by
    block, with the gradient to the batch only."""
    dec, _, _, options, _ = _case("pck")
    memory = CrossBatchMemory(dec, size=6)
    for step in range(3):
        _, scores, target, _, _ = _case("pck", seed=step)
        stored_s, stored_t = memory.memory
        loss, grad, info = _loss(memory, scores, target, options, generator_seed=step)
        full_s = scores if stored_s is None else torch.cat([scores, stored_s])
        full_t = target if stored_t is None else uniloss.KeypointTarget(*[torch.cat(p) for p in zip(target, stored_t)])
        ref_loss, ref_grad, ref_info = _loss(dec, full_s, full_t, options, generator_seed=step)
        assert info.path == ref_info.path == "chunked"
        assert torch.equal(loss, ref_loss)
        torch.testing.assert_close(grad, ref_grad[:4], rtol=0, atol=0)
        assert len(memory) == min(6, 4 * (step + 1)) and isinstance(memory.memory[1], uniloss.KeypointTarget)


# --------------------------------------------------------------------------- two processes


def _worker(rank, port, path):
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    out = {}
    try:
        dec, scores, target, options, _ = _case("pck")
        rows = slice(0, 3) if rank == 0 else slice(3, 4)  # uneven
        local = uniloss.KeypointTarget(*[t[rows] for t in target])
        for reduction in ("sum", "mean"):
            loss, grad, info = _loss(GlobalBatch(dec, grad_reduction=reduction), scores[rows], local, options)
            out[reduction] = (rows, float(loss), grad, info.path)
    finally:
        torch.distributed.destroy_process_group()
    with open(f"{path}.{rank}", "wb") as fh:
        pickle.dump(out, fh)


def test_global_keypoint_targets_block_by_block_on_two_ranks(tmp_path):
    """GlobalBatch(PCK) on 2 gloo ranks: keypoint targets gathered, the global batch's loss block by
    block, and each rank's gradient that of one process on the whole batch (times 2 for "mean")."""
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    dec, scores, target, options, _ = _case("pck")
    ref_loss, ref_grad, ref_info = _loss(dec, scores, target, options)
    assert ref_info.path == "chunked"
    for out in run_ranks(_worker, 2, str(tmp_path)):
        for reduction, factor in (("sum", 1.0), ("mean", 2.0)):
            rows, loss, grad, path = out[reduction]
            assert path == "chunked" and loss == pytest.approx(float(ref_loss), abs=1e-12)
            torch.testing.assert_close(grad, factor * ref_grad[rows], rtol=0, atol=1e-12)
