"""Regressions for issue #16, bugs 4 and 7: the cross-batch memory pushed on every call (under
no_grad / inference mode, and once per evaluation of an optimizer closure) and did not follow the
scores to another device; float64 inside a loss call on float32 scores (Apple MPS has none)."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import uniloss
from uniloss import _anchors, _limits, zoo
from uniloss.decoders import RankingTarget
from uniloss.distributed import CrossBatchMemory, GlobalBatch


# ---------------------------------------------------------------------------- bug 4: memory


def _ap_batch(n, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(n, generator=g, dtype=dtype)
    target = (torch.rand(n, generator=g) < 0.4).long()
    target[0], target[1] = 1, 0
    return scores, target


def _memory_loss(size=16):
    memory = CrossBatchMemory(uniloss.AveragePrecision(), size=size)
    return memory, uniloss.UniLoss(memory, generator=torch.Generator().manual_seed(0), interpolation="anchors")


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_memory_does_not_push_without_autograd(mode):
    memory, loss_fn = _memory_loss()
    context = torch.no_grad if mode == "no_grad" else torch.inference_mode
    scores, target = _ap_batch(6, 0)
    with context():  # a validation batch, or Lightning's sanity check, before training
        loss_fn(scores, target)
    assert len(memory) == 0 and memory.memory == (None, None)
    loss_fn(scores.clone().requires_grad_(), target)  # a training step pushes
    stored = memory.memory
    assert len(memory) == 6
    other_scores, other_target = _ap_batch(6, 1)
    with context():  # evaluation reads the memory (6 + 6 samples) without changing it
        loss_fn(other_scores, other_target)
    both = torch.cat([other_target, target])
    assert loss_fn.last.num_bits == int((both == 1).sum()) * int((both == 0).sum())
    assert memory.memory[0] is stored[0] and memory.memory[1] is stored[1]


def test_memory_pushes_with_autograd_on_scores_without_grad():
    """Autograd recording decides, not whether these scores need a gradient (unchanged)."""
    memory, loss_fn = _memory_loss()
    loss_fn(*_ap_batch(6, 0))
    assert len(memory) == 6


def _lbfgs_step(model, x, y, loss_fn, memory, calls):
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4)

    def closure():
        opt.zero_grad()
        scores = model(x)[:, 0]
        loss = loss_fn(scores, y)
        loss.backward()
        calls.append((scores.detach().clone(), loss_fn.last.num_bits))
        return loss

    with memory.same_batch():
        opt.step(closure)


def test_memory_stores_an_lbfgs_closure_batch_once():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 1)).double()
    memory, loss_fn = _memory_loss(size=32)
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(2):
        x = torch.randn(8, 3, generator=g, dtype=torch.float64)
        y = torch.tensor([1, 0, 0, 1, 0, 0, 0, 1])
        batches.append((x, y))
    calls = []
    _lbfgs_step(model, *batches[0], loss_fn, memory, calls)
    assert len(calls) > 1  # the closure ran several times on one batch
    assert len(memory) == 8  # stored once, not once per evaluation
    # no evaluation saw the batch's own copy: 3 positives x 5 negatives each time
    assert [bits for _, bits in calls] == [15] * len(calls)
    torch.testing.assert_close(memory.memory[0], calls[-1][0], rtol=0, atol=0)  # the latest scores
    first = memory.memory[0]
    calls = []
    _lbfgs_step(model, *batches[1], loss_fn, memory, calls)
    assert len(memory) == 16
    assert [bits for _, bits in calls] == [6 * 10] * len(calls)  # the batch plus the first, once
    torch.testing.assert_close(memory.memory[0][:8], first, rtol=0, atol=0)
    torch.testing.assert_close(memory.memory[0][8:], calls[-1][0], rtol=0, atol=0)
    torch.testing.assert_close(memory.memory[1], torch.cat([batches[0][1], batches[1][1]]))


def test_memory_same_batch_two_passes_sam_style():
    """SAM: two forward-backward passes on one batch, each the loss on the batch plus the memory
    as it was before; the batch stored once (with the second pass's scores); blocks nest."""
    memory, loss_fn = _memory_loss(size=16)
    loss_fn(*_ap_batch(6, 0))
    before_s, before_t = memory.memory
    scores, target = _ap_batch(6, 1)
    state = loss_fn.generator.get_state()
    with memory.same_batch():
        first = loss_fn(scores.clone().requires_grad_(), target)
        with memory.same_batch():  # nested: still the same batch
            second = loss_fn((scores + 0.5).requires_grad_(), target)
        assert len(memory) == 12
    assert len(memory) == 12
    torch.testing.assert_close(memory.memory[0], torch.cat([before_s, scores + 0.5]), rtol=0, atol=0)
    reference = torch.Generator().set_state(state)
    for got, s in ((first, scores), (second, scores + 0.5)):
        expected = uniloss.functional.uniloss(torch.cat([s, before_s]), torch.cat([target, before_t]),
                                              uniloss.AveragePrecision(), generator=reference, interpolation="anchors")
        assert float(got.detach()) == float(expected)
    loss_fn(*_ap_batch(4, 2))  # after the block, calls push again
    assert len(memory) == 16


def test_memory_same_batch_second_pass_sees_the_memory_of_the_block_start():
    memory, loss_fn = _memory_loss(size=16)
    loss_fn(*_ap_batch(6, 0))
    before_s, before_t = memory.memory
    scores, target = _ap_batch(6, 1)
    with memory.same_batch():
        loss_fn(scores.clone().requires_grad_(), target)
        state = loss_fn.generator.get_state()
        second = loss_fn((scores + 0.5).requires_grad_(), target)
        assert float(memory.metric(scores, target)) == float(
            uniloss.AveragePrecision().metric(torch.cat([scores, before_s]), torch.cat([target, before_t])))
    full_s, full_t = torch.cat([scores + 0.5, before_s]), torch.cat([target, before_t])
    expected = uniloss.functional.uniloss(full_s, full_t, uniloss.AveragePrecision(),
                                          generator=torch.Generator().set_state(state), interpolation="anchors")
    assert float(second.detach()) == float(expected)


def test_memory_without_same_batch_still_pushes_every_recorded_call():
    """A target tensor reused for different batches (a fixed label layout) is not a repeated batch."""
    memory, loss_fn = _memory_loss(size=16)
    target = torch.tensor([1, 0, 0, 0])
    for seed in range(3):
        loss_fn(torch.randn(4, generator=torch.Generator().manual_seed(seed), requires_grad=True), target)
    assert len(memory) == 12


def test_memory_reset_and_load_inside_same_batch():
    memory, loss_fn = _memory_loss(size=16)
    loss_fn(*_ap_batch(6, 0))
    state = memory.state_dict()
    with memory.same_batch():
        memory.reset()
        loss_fn(*_ap_batch(6, 1))
        assert loss_fn.last.num_bits == int((_ap_batch(6, 1)[1] == 1).sum() * (_ap_batch(6, 1)[1] == 0).sum())
        memory.load_state_dict(state)
        loss_fn(*_ap_batch(6, 1))
        assert len(memory) == 12
    torch.testing.assert_close(memory.memory[0][:6], state["scores"], rtol=0, atol=0)


class _Spy(uniloss.Decomposition):
    """Records the enlarged batch it is prepared on; works on any device (even ``meta``)."""

    def __init__(self):
        self.seen = []

    def prepare(self, scores, target, generator=None):
        self.seen.append((scores, target))
        return target

    def check(self, scores, target):
        pass


def test_memory_follows_the_scores_to_another_device():
    """The memory moves to the device of the incoming batch (``meta`` stands for a GPU here);
    it raised "call reset()" in check() and cat() failed across devices."""
    spy = _Spy()
    memory = CrossBatchMemory(spy, size=8)
    memory.prepare(torch.randn(3), torch.tensor([1, 0, 1]))
    assert len(memory) == 3 and memory.memory[0].device.type == "cpu"
    scores = torch.randn(2, device="meta")
    target = torch.tensor([0, 1], device="meta")
    memory.check(scores, target)
    memory.prepare(scores, target)
    enlarged_scores, enlarged_target = spy.seen[-1]
    assert enlarged_scores.device.type == "meta" and enlarged_scores.shape == (5,)
    assert enlarged_target.device.type == "meta"
    assert len(memory) == 5 and memory.memory[0].device.type == "meta" and memory.memory[1].device.type == "meta"
    # a checkpoint restored on the CPU follows the batch too, also inside same_batch()
    memory.load_state_dict({"scores": torch.randn(4), "target": torch.tensor([1, 0, 0, 1])})
    with memory.same_batch():
        memory.prepare(scores, target)
        memory.prepare(scores, target)
    assert len(memory) == 6 and memory.memory[0].device.type == "meta"
    with pytest.raises(ValueError, match="reset"):  # a new dtype still needs reset()
        memory.check(torch.randn(2, dtype=torch.float64, device="meta"), target)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_memory_follows_a_loss_moved_to_cuda():
    memory, loss_fn = _memory_loss(size=16)
    loss_fn(*_ap_batch(6, 0))
    loss_fn.to("cuda")
    scores, target = _ap_batch(6, 1)
    stored_s, stored_t = memory.memory
    state = loss_fn.generator.get_state()
    s = scores.cuda().requires_grad_()
    loss = loss_fn(s, target.cuda())
    loss.backward()
    assert memory.memory[0].device.type == "cuda" and len(memory) == 12
    ref = scores.clone().requires_grad_()
    expected = uniloss.functional.uniloss(torch.cat([ref, stored_s]), torch.cat([target, stored_t]),
                                          uniloss.AveragePrecision(), generator=torch.Generator().set_state(state), interpolation="anchors")
    expected.backward()
    assert float(loss) == pytest.approx(float(expected), abs=1e-10)
    torch.testing.assert_close(s.grad.cpu(), ref.grad, rtol=0, atol=1e-10)
    # and through GlobalBatch (one process: the identity)
    wrapped = uniloss.UniLoss(GlobalBatch(CrossBatchMemory(uniloss.AveragePrecision(), size=8)), interpolation="anchors")
    wrapped(*_ap_batch(6, 2))
    wrapped(scores.cuda(), target.cuda())
    assert wrapped.decomposition.decomposition.memory[0].device.type == "cuda"


# ---------------------------------------------------------------------------- bug 7: float64


class _Float64Recorder(TorchDispatchMode):
    """Records every aten op that produces a float64 tensor."""

    def __init__(self):
        super().__init__()
        self.float64 = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.dtype == torch.float64:
                self.float64.append(str(func))
        return out


def _float32_cases():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (24,), generator=g)
    binary = torch.tensor([1, 0, 0] * 8)
    ranking = RankingTarget(torch.randint(0, 3, (24,), generator=g), torch.tensor([0] * 12 + [1] * 12))
    heat_target = uniloss.KeypointTarget(torch.rand(2, 2, 2, generator=g) * 5, torch.ones(2, 2, dtype=torch.bool),
                                         torch.full((2,), 2.0))
    return [
        ("average_precision", uniloss.AveragePrecision, (24,), binary),
        ("average_precision_large", uniloss.AveragePrecision, (300,), torch.tensor([1, 0, 0] * 100)),
        ("multiclass_accuracy", uniloss.MulticlassAccuracy, (24, 4), labels),
        ("ndcg_at_k", lambda: zoo.ndcg_at_k(5), (24,), ranking),
        ("ndcg", lambda: zoo.ndcg_at_k(), (24,), ranking),
        ("macro_f1", lambda: zoo.macro_f1(4), (24, 4), labels),
        ("auroc", zoo.auroc, (24,), ranking),
        ("auroc_binary", zoo.auroc, (24,), binary),
        ("zoo_average_precision", zoo.average_precision, (24,), ranking),
        ("mrr", zoo.mrr, (24,), ranking),
        ("precision_at_k", lambda: zoo.precision_at_k(3), (24,), ranking),
        ("recall_at_k", lambda: zoo.recall_at_k(3), (24,), ranking),
        ("top_k_accuracy", lambda: zoo.top_k_accuracy(2), (24, 4), labels),
        ("balanced_accuracy", lambda: zoo.balanced_accuracy(4), (24, 4), labels),
        ("matthews_corrcoef", lambda: zoo.matthews_corrcoef(4), (24, 4), labels),
        ("f_beta", zoo.f_beta, (24,), binary),
        ("mean_iou", lambda: zoo.mean_iou(3), (2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4), generator=g)),
        ("pck", lambda: zoo.pck(0.5), (2, 2, 6, 6), heat_target),
        ("pck_paper", lambda: uniloss.PCK(0.5), (2, 2, 6, 6), heat_target),
    ]


@pytest.mark.parametrize("name,make,shape,target", _float32_cases(), ids=[c[0] for c in _float32_cases()])
def test_no_float64_inside_a_loss_call_on_float32_scores(name, make, shape, target):
    loss_fn = uniloss.UniLoss(make(), generator=torch.Generator().manual_seed(0), interpolation="anchors")
    scores = torch.randn(shape, generator=torch.Generator().manual_seed(1), requires_grad=True)
    with _Float64Recorder() as recorder:
        loss = loss_fn(scores, target)
        loss.backward()
        metric = loss_fn.decomposition.metric(scores.detach(), target)
    assert recorder.float64 == []
    assert loss.dtype == loss_fn.last.metric.dtype == metric.dtype == torch.float32
    assert torch.isfinite(scores.grad).all()


@pytest.mark.parametrize("options", [{"good_anchors": "all"}, {"num_nearby": 64}])
def test_no_float64_with_other_anchor_options(options):
    loss_fn = uniloss.UniLoss(uniloss.AveragePrecision(), generator=torch.Generator().manual_seed(0), **options, interpolation="anchors")
    scores = torch.randn(40, generator=torch.Generator().manual_seed(1), requires_grad=True)
    with _Float64Recorder() as recorder:
        loss_fn(scores, torch.tensor([1, 0] * 20)).backward()
    assert recorder.float64 == []


def test_no_float64_in_the_rank_select_of_a_huge_mask(monkeypatch):
    monkeypatch.setattr(_limits, "LIMITS", _limits.LIMITS.override(select_block=64, select_chunk=96))
    mask = torch.rand(1000, generator=torch.Generator().manual_seed(0)) < 0.1
    best = torch.zeros(1000, dtype=torch.bool)
    with _Float64Recorder() as recorder:
        anchors = _anchors.draw_anchors(best, mask, mask, num_good=4, num_nearby=32, num_bad=8, good_flips=1,
                                        generator=torch.Generator().manual_seed(2))
    assert recorder.float64 == []
    nearby = anchors.flips[anchors.kind_slices()["nearby"].start - 1:][:, 0]
    assert bool(mask[nearby].all())


@pytest.mark.parametrize("block", [None, (64, 96)])
@pytest.mark.parametrize("density", [0.0, 0.002, 0.3])
def test_nearby_draws_are_the_float64_draws_of_before(monkeypatch, block, density):
    """The integer draw is the float64 ``torch.rand`` draw of before (u = r / 2**53 on a CPU
    generator): the anchors of a seeded run do not change."""
    if block:
        monkeypatch.setattr(_limits, "LIMITS", _limits.LIMITS.override(select_block=block[0], select_chunk=block[1]))
    g = torch.Generator().manual_seed(3)
    mask = torch.rand(1000, generator=g) < density
    anchors = _anchors.draw_anchors(torch.zeros(1000, dtype=torch.bool), mask, mask, num_good=0, num_nearby=50,
                                    num_bad=0, good_flips=1, generator=torch.Generator().manual_seed(5))
    u = torch.rand(50, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    cum = torch.cumsum(mask | ~mask.any(), 0)
    expected = torch.searchsorted(cum, (u * cum[-1]).long(), right=True)
    assert torch.equal(anchors.flips[:, 0], expected)


def test_ranking_grades_without_float64():
    """Ranking.prepare's grades from integer and float relevance, without a float64 copy."""
    dec = uniloss.decoders.Ranking()
    scores = torch.randn(6)
    for relevance in (torch.tensor([2, 0, 1, 1, 0, 2]), torch.tensor([2.0, 0, 0.5, 0.5, 0, 2.0]),
                      torch.tensor([2, 0, 1, 1, 0, 2], dtype=torch.uint8)):
        with _Float64Recorder() as recorder:
            plan = dec.prepare(scores, relevance)
        assert recorder.float64 == []
        assert plan.grade.tolist() == [0, 2, 1, 1, 2, 0]
    binary = uniloss.decoders.Ranking("binary").prepare(scores, torch.tensor([2, 0, 1, 1, 0, 2]))
    assert binary.grade.tolist() == [0, 1, 0, 0, 1, 0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zoo_values_follow_the_scores_dtype(dtype):
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(24, 4, generator=g, dtype=dtype)
    labels = torch.randint(0, 4, (24,), generator=g)
    for metric in (zoo.macro_f1(4), zoo.matthews_corrcoef(4), zoo.top_k_accuracy(2)):
        assert metric.metric(scores, labels).dtype == dtype
    relevance = torch.randint(0, 3, (24,), generator=g)
    for metric in (zoo.ndcg_at_k(5), zoo.auroc(), zoo.average_precision(), zoo.mrr()):
        assert metric.metric(scores[:, 0], relevance).dtype == dtype
    loss_fn = uniloss.UniLoss(zoo.auroc(), generator=torch.Generator().manual_seed(0), interpolation="anchors")
    loss_fn(scores[:, 0].clone().requires_grad_(), relevance)
    assert loss_fn.last.metric.dtype == loss_fn.last.anchor_values.dtype == dtype


def test_zoo_float64_values_are_exact_and_float32_close():
    """float64 scores keep float64's values; float32 ones agree to float32 precision."""
    g = torch.Generator().manual_seed(4)
    scores = torch.randn(40, generator=g, dtype=torch.float64)
    target = RankingTarget(torch.randint(0, 3, (40,), generator=g), torch.randint(0, 3, (40,), generator=g))
    for metric in (zoo.auroc(), zoo.ndcg_at_k(4), zoo.average_precision()):
        value = metric.metric(scores, target)
        value32 = metric.metric(scores.float(), target)
        assert value.dtype == torch.float64 and value32.dtype == torch.float32
        assert float(value32) == pytest.approx(float(value), abs=1e-6)
    # AUROC from exact integer counts: the fraction of correctly ordered pairs, per query
    binary = (target.relevance > 0).long()
    expected = []
    for q in range(3):
        pos = scores[(target.query == q) & (binary == 1)]
        neg = scores[(target.query == q) & (binary == 0)]
        expected.append(float((pos[:, None] > neg[None, :]).double().mean()))
    assert float(zoo.auroc().metric(scores, target)) == pytest.approx(sum(expected) / 3, abs=1e-15)
