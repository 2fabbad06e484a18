"""uniloss.distributed: the global batch under torch.distributed (2 gloo processes on CPU,
checked against one process on the whole batch with the same anchors) and the cross-batch
memory."""

import os
import pickle

import pytest
import torch

import uniloss
from _reference import run_ranks
from uniloss.distributed import CrossBatchMemory, GlobalBatch

WORLD = 2
SEED = 7
TOL = dict(rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- the 2-process run


def _batch(n, seed, positives=None):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(n, generator=g, dtype=torch.float64)
    target = (torch.rand(n, generator=g) < 0.4).long() if positives is None else positives
    return scores, target


# name -> (rank 0's rows, rank 1's rows) of one batch; the single process takes them concatenated
_AP_CASES = {
    "even": (slice(0, 6), slice(6, 12)),
    "uneven": (slice(0, 9), slice(9, 12)),
    "empty rank": (slice(0, 12), slice(12, 12)),
}


def _ap_reference(scores, target, **kw):
    s = scores.clone().requires_grad_(True)
    loss_fn = uniloss.UniLoss(uniloss.AveragePrecision(), generator=torch.Generator().manual_seed(SEED), **kw)
    loss = loss_fn(s, target)
    loss.backward()
    return float(loss.detach()), s.grad, float(loss_fn.last.metric)


def _global(scores, target, rows, dec, **kw):
    s = scores[rows].clone().requires_grad_(True)
    loss_fn = uniloss.UniLoss(dec, generator=torch.Generator().manual_seed(SEED), **kw)
    loss = loss_fn(s, target[rows])
    loss.backward()
    return float(loss.detach()), s.grad, float(loss_fn.last.metric)


def _mlp(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()


def _train(model, batches, loss_fn, steps_per_batch=1):
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for x, y in batches:
        for _ in range(steps_per_batch):
            loss = loss_fn(model(x)[:, 0], y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return [p.detach().clone() for p in model.parameters()]


def _ddp_batches(seed, sizes):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in sizes:
        x = torch.randn(n, 5, generator=g, dtype=torch.float64)
        y = (x[:, 0] + 0.5 * torch.randn(n, generator=g, dtype=torch.float64) > 0.3).long()
        out.append((x, y))
    return out


def _worker(rank, port, path):
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    torch.set_num_threads(1)
    out = {}
    try:
        scores, target = _batch(12, 0)
        target[0] = 1  # a positive on rank 0 in every split
        # AP: loss and each rank's score gradient against one process on the whole batch.
        for name, rows in _AP_CASES.items():
            for sync in (False, True):
                for reduction in ("sum", "mean"):
                    for batch_size in (None, 12):
                        dec = GlobalBatch(uniloss.AveragePrecision(), grad_reduction=reduction,
                                          sync_grads=sync, batch_size=batch_size)
                        out[("ap", name, sync, reduction, batch_size)] = (rows[rank], _global(scores, target, rows[rank], dec))
        # A rank with no positive, and a global batch with none.
        no_pos = target.clone()
        no_pos[6:] = 0
        out[("ap-rank-no-positive",)] = (slice(6 * rank, 6 * rank + 6), _global(
            scores, no_pos, slice(6 * rank, 6 * rank + 6), GlobalBatch(uniloss.AveragePrecision(), grad_reduction="sum")))
        zero = torch.zeros_like(target)
        out[("ap-global-no-positive",)] = (slice(6 * rank, 6 * rank + 6), _global(
            scores, zero, slice(6 * rank, 6 * rank + 6), GlobalBatch(uniloss.AveragePrecision(), grad_reduction="sum")))
        # Accuracy (per-sample) through the wrapper: exact on the global batch too.
        g = torch.Generator().manual_seed(1)
        s_acc = torch.randn(10, 4, generator=g, dtype=torch.float64)
        t_acc = torch.randint(0, 4, (10,), generator=g)
        rows = slice(0, 7) if rank == 0 else slice(7, 10)
        out[("acc",)] = (rows, _global(s_acc, t_acc, rows, GlobalBatch(uniloss.MulticlassAccuracy(), grad_reduction="sum")))
        # metric(): collective, the global batch's exact AP.
        rows = _AP_CASES["uneven"][rank]
        out[("metric",)] = float(GlobalBatch(uniloss.AveragePrecision()).metric(scores[rows], target[rows]))

        # DDP training: global AP (uneven last batch) and a global memory.
        batches = _ddp_batches(3, [8, 8, 5])
        shard = [(x[rank::WORLD], y[rank::WORLD]) for x, y in batches]
        for name, dec in (
            ("ddp-ap", GlobalBatch(uniloss.AveragePrecision())),
            ("ddp-ap-sync", GlobalBatch(uniloss.AveragePrecision(), sync_grads=True)),
            ("ddp-memory", GlobalBatch(CrossBatchMemory(uniloss.AveragePrecision(), size=6))),
        ):
            model = torch.nn.parallel.DistributedDataParallel(_mlp(0))
            loss_fn = uniloss.UniLoss(dec, generator=torch.Generator().manual_seed(SEED))
            out[(name,)] = _train(model, shard, loss_fn)
        # Per-sample accuracy kept local: each rank its own anchors, DDP averages.
        acc_batches = []
        for x, y in _ddp_batches(4, [8, 8]):
            acc_batches.append((x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()))
        model = torch.nn.parallel.DistributedDataParallel(
            torch.nn.Sequential(torch.nn.Linear(5, 3)).double())
        torch.manual_seed(0)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, dtype=p.dtype))
        loss_fn = uniloss.UniLoss(uniloss.MulticlassAccuracy(), generator=torch.Generator().manual_seed(SEED + rank))
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        for x, y in acc_batches:
            loss = loss_fn(model(x[rank::WORLD]), y[rank::WORLD])
            opt.zero_grad()
            loss.backward()
            opt.step()
        out[("ddp-acc-local",)] = [p.detach().clone() for p in model.parameters()]
    finally:
        torch.distributed.destroy_process_group()
    with open(f"{path}.{rank}", "wb") as fh:
        pickle.dump(out, fh)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    return run_ranks(_worker, WORLD, str(tmp_path_factory.mktemp("ddp")))


@pytest.mark.parametrize("name", list(_AP_CASES))
@pytest.mark.parametrize("sync", [False, True])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("batch_size", [None, 12])
def test_global_ap_equals_single_process(ranks, name, sync, reduction, batch_size):
    scores, target = _batch(12, 0)
    target[0] = 1
    ref_loss, ref_grad, ref_metric = _ap_reference(scores, target)
    factor = WORLD if reduction == "mean" else 1
    for rank in range(WORLD):
        rows, (loss, grad, metric) = ranks[rank][("ap", name, sync, reduction, batch_size)]
        assert loss == pytest.approx(ref_loss, abs=1e-6)  # the same anchors on every rank
        assert metric == pytest.approx(ref_metric, abs=1e-12)
        torch.testing.assert_close(grad, factor * ref_grad[rows], **TOL)


def test_rank_without_positives(ranks):
    scores, target = _batch(12, 0)
    target[0] = 1
    target[6:] = 0
    ref_loss, ref_grad, _ = _ap_reference(scores, target)
    for rank in range(WORLD):
        rows, (loss, grad, _) = ranks[rank][("ap-rank-no-positive",)]
        assert loss == pytest.approx(ref_loss, abs=1e-6)
        torch.testing.assert_close(grad, ref_grad[rows], **TOL)
        if rank == 1:
            assert grad.abs().sum() > 0  # its negatives still train against rank 0's positives


def test_global_batch_without_positives_gives_zero_and_the_margin_pull(ranks):
    # AP undefined: a zero loss; its gradient the default pull's on the margins, binary
    # cross-entropy over the global batch of 12 (grad_reduction="sum": the one-process gradient).
    scores, _ = _batch(12, 0)
    for rank in range(WORLD):
        rows, (loss, grad, metric) = ranks[rank][("ap-global-no-positive",)]
        assert loss == 0.0 and metric != metric  # NaN: AP undefined
        torch.testing.assert_close(grad, torch.sigmoid(scores[rows]) / 12, **TOL)


def test_accuracy_through_wrapper_equals_single_process(ranks):
    g = torch.Generator().manual_seed(1)
    s = torch.randn(10, 4, generator=g, dtype=torch.float64)
    t = torch.randint(0, 4, (10,), generator=g)
    ref = s.clone().requires_grad_(True)
    loss_fn = uniloss.UniLoss(uniloss.MulticlassAccuracy(), generator=torch.Generator().manual_seed(SEED))
    ref_loss = loss_fn(ref, t)
    ref_loss.backward()
    for rank in range(WORLD):
        rows, (loss, grad, _) = ranks[rank][("acc",)]
        assert loss == pytest.approx(float(ref_loss.detach()), abs=1e-6)
        torch.testing.assert_close(grad, ref.grad[rows], **TOL)


def test_metric_is_global(ranks):
    scores, target = _batch(12, 0)
    target[0] = 1
    expected = float(uniloss.AveragePrecision().metric(scores, target))
    assert [r[("metric",)] for r in ranks] == pytest.approx([expected] * WORLD, abs=1e-12)


@pytest.mark.parametrize("name", ["ddp-ap", "ddp-ap-sync", "ddp-memory"])
def test_ddp_training_equals_single_process(ranks, name):
    dec = uniloss.AveragePrecision()
    if name == "ddp-memory":
        dec = CrossBatchMemory(dec, size=6)
    batches = _ddp_batches(3, [8, 8, 5])
    # Rank r holds rows r::2; the global batch is rank 0's rows then rank 1's.
    ordered = [(torch.cat([x[0::2], x[1::2]]), torch.cat([y[0::2], y[1::2]])) for x, y in batches]
    expected = _train(_mlp(0), ordered, uniloss.UniLoss(dec, generator=torch.Generator().manual_seed(SEED)))
    for rank in range(WORLD):
        for got, want in zip(ranks[rank][(name,)], expected):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-9)
    assert not torch.equal(expected[0], _mlp(0)[0].weight)  # it trained


def test_local_per_sample_training_equals_single_process(ranks):
    """Accuracy kept local (plain UniLoss per rank): DDP equals one process minimising the mean
    of the per-shard losses, each shard with its rank's generator."""
    model = torch.nn.Sequential(torch.nn.Linear(5, 3)).double()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, dtype=p.dtype))
    losses = [uniloss.UniLoss(uniloss.MulticlassAccuracy(), generator=torch.Generator().manual_seed(SEED + r))
              for r in range(WORLD)]
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for x, _ in _ddp_batches(4, [8, 8]):
        y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
        loss = sum(losses[r](model(x[r::WORLD]), y[r::WORLD]) for r in range(WORLD)) / WORLD
        opt.zero_grad()
        loss.backward()
        opt.step()
    for rank in range(WORLD):
        for got, want in zip(ranks[rank][("ddp-acc-local",)], model.parameters()):
            torch.testing.assert_close(got, want.detach(), rtol=0, atol=1e-9)


# --------------------------------------------------------------------------- one process


def test_global_batch_is_identity_without_process_group():
    scores, target = _batch(12, 0)
    target[0] = 1
    ref_loss, ref_grad, _ = _ap_reference(scores, target)
    loss, grad, _ = _global(scores, target, slice(0, 12), GlobalBatch(uniloss.AveragePrecision()))
    assert loss == ref_loss
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=0)


def test_global_batch_arguments():
    with pytest.raises(TypeError, match="decomposition"):
        GlobalBatch("ap")
    with pytest.raises(ValueError, match="grad_reduction"):
        GlobalBatch(uniloss.AveragePrecision(), grad_reduction="avg")
    with pytest.raises(ValueError, match="batch_size"):
        GlobalBatch(uniloss.AveragePrecision(), batch_size=0)
    loss_fn = uniloss.UniLoss(GlobalBatch(uniloss.AveragePrecision(), batch_size=2))
    with pytest.raises(ValueError, match="batch_size=2"):
        loss_fn(torch.randn(3), torch.tensor([1, 0, 0]))
    with pytest.raises(TypeError, match="target"):
        uniloss.UniLoss(GlobalBatch(uniloss.AveragePrecision()))(torch.randn(3), [1, 0, 0])


def test_memory_equals_loss_on_enlarged_batch():
    dec = uniloss.AveragePrecision()
    memory = CrossBatchMemory(dec, size=10)
    loss_fn = uniloss.UniLoss(memory, generator=torch.Generator().manual_seed(SEED))
    batches = [_batch(6, seed) for seed in range(4)]
    for b, (scores, target) in enumerate(batches):
        target[0] = 1
        stored_s, stored_t = memory.memory
        expected_metric = dec.metric(*(
            (scores, target) if stored_s is None else (torch.cat([scores, stored_s]), torch.cat([target, stored_t]))))
        assert float(memory.metric(scores, target)) == pytest.approx(float(expected_metric))
        s = scores.clone().requires_grad_(True)
        state = loss_fn.generator.get_state()
        loss = loss_fn(s, target)
        loss.backward()
        # the same loss as the plain AP on [batch, memory.detach()], gradient to the batch only
        ref = scores.clone().requires_grad_(True)
        full_s = ref if stored_s is None else torch.cat([ref, stored_s])
        full_t = target if stored_t is None else torch.cat([target, stored_t])
        ref_loss = uniloss.functional.uniloss(full_s, full_t, dec, generator=torch.Generator().set_state(state))
        ref_loss.backward()
        assert float(loss.detach()) == pytest.approx(float(ref_loss.detach()), abs=1e-12)
        torch.testing.assert_close(s.grad, ref.grad, rtol=0, atol=1e-12)
        assert len(memory) == min(10, 6 * (b + 1))
    # the newest samples are kept, oldest dropped
    torch.testing.assert_close(memory.memory[0], torch.cat([batches[2][0], batches[3][0]])[-10:])
    memory.reset()
    assert len(memory) == 0 and memory.memory == (None, None)


def test_memory_size_zero_is_the_wrapped_decomposition():
    scores, target = _batch(12, 0)
    target[0] = 1
    ref_loss, ref_grad, _ = _ap_reference(scores, target)
    loss, grad, _ = _global(scores, target, slice(0, 12), CrossBatchMemory(uniloss.AveragePrecision(), size=0))
    assert loss == ref_loss
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=0)


def test_memory_helps_batches_without_positives():
    memory = CrossBatchMemory(uniloss.AveragePrecision(), size=8)
    loss_fn = uniloss.UniLoss(memory, generator=torch.Generator().manual_seed(0))
    loss_fn(torch.randn(4, requires_grad=True), torch.tensor([1, 1, 0, 0]))
    s = torch.randn(4, requires_grad=True)
    loss = loss_fn(s, torch.zeros(4, dtype=torch.long))  # no positive in the batch
    loss.backward()
    assert loss_fn.last.num_bits == 2 * 6 and s.grad.abs().sum() > 0


def test_memory_travels_in_the_loss_state_dict():
    """A UniLoss restored from ``state_dict()`` continues with the memory it had: the next loss and
    gradient equal the original's (an empty memory would give a loss on the batch alone)."""
    def make(size=8):
        return uniloss.UniLoss(GlobalBatch(CrossBatchMemory(uniloss.AveragePrecision(), size=size)),
                               generator=torch.Generator().manual_seed(0))

    original = make()
    for seed in range(3):
        original(*_batch(4, seed, torch.tensor([1, 0, 0, 0])))
    state = original.state_dict()
    assert list(state) == ["decomposition"] and state["decomposition"]["scores"].shape == (8,)
    restored = make()
    restored.load_state_dict(state)
    gen_state = original.generator.get_state()
    losses, grads = [], []
    for fn in (original, restored, make()):  # the third: a fresh (empty) memory
        fn.generator.set_state(gen_state)
        s = _batch(4, 9)[0].requires_grad_(True)
        loss = fn(s, torch.tensor([0, 1, 0, 0]))
        losses.append(float(loss.detach()))
        grads.append(torch.autograd.grad(loss, s)[0])
    assert losses[0] == losses[1] != losses[2]
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)
    torch.testing.assert_close(restored.decomposition.decomposition.memory[0], original.decomposition.decomposition.memory[0])
    # a smaller memory keeps the newest samples; a decomposition without state keeps an empty state_dict
    small = make(size=3)
    small.load_state_dict(state)
    torch.testing.assert_close(small.decomposition.decomposition.memory[0], state["decomposition"]["scores"][-3:])
    assert uniloss.UniLoss(uniloss.AveragePrecision()).state_dict() == {}
    with pytest.raises(RuntimeError, match='Missing key.*"decomposition"'):
        make().load_state_dict({})
    with pytest.raises(RuntimeError, match="keeps no state"):
        uniloss.UniLoss(uniloss.AveragePrecision()).load_state_dict(state)
    with pytest.raises(RuntimeError, match="both stored or both None"):
        make().load_state_dict({"decomposition": {"scores": torch.zeros(2), "target": None}})


def test_memory_checks():
    with pytest.raises(ValueError, match="size"):
        CrossBatchMemory(uniloss.AveragePrecision(), size=-1)
    memory = CrossBatchMemory(uniloss.AveragePrecision(), size=8)
    loss_fn = uniloss.UniLoss(memory)
    loss_fn(torch.randn(4), torch.tensor([1, 0, 0, 0]))
    with pytest.raises(ValueError, match="reset"):
        loss_fn(torch.randn(4, dtype=torch.float64), torch.tensor([1, 0, 0, 0]))
