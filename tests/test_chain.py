"""``interpolation="chain"``: the metric's Lovász extension along the chain of its comparisons.

References: a brute-force extension (every prefix of the order evaluated by a hand-written
metric in a Python loop), the exact metric at the vertices, and the telescoping of the gains.
"""

import dataclasses

import math

import pytest
import torch

import uniloss
from uniloss import _limits, zoo
from uniloss import functional as F
from uniloss._interpolation import chain_extension, chain_segments, last_of_runs, run_turns
from uniloss._structured import Runs


def _accuracy_by_hand(bits, n, k):
    """Accuracy from ``[l]`` bits laid out ``[n, k]``: a sample is right when all its bits are."""
    return sum(all(bool(b) for b in bits[i * k:(i + 1) * k]) for i in range(n)) / n


def _brute_force_extension(c, best, metric, temperature):
    """g(S_0) + sum_k v_(k) (g(S_k) - g(S_(k-1))), every prefix built and evaluated one by one."""
    u = torch.sigmoid(c / temperature)
    v = torch.where(best, u, 1 - u)
    order = sorted(range(len(c)), key=lambda k: -float(v[k].detach()))
    current = [not bool(b) for b in best]  # S_0: every comparison the other way from best
    previous = metric(current)
    total = torch.zeros((), dtype=c.dtype) + previous
    for k in order:
        current[k] = bool(best[k])
        value = metric(current)
        total = total + v[k] * (value - previous)
        previous = value
    return total


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_accuracy_chain_equals_the_brute_force_extension_value_and_gradient(seed):
    g = torch.Generator().manual_seed(seed)
    n, classes = 6, 4
    scores = torch.randn(n, classes, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, classes, (n,), generator=g)
    dec = uniloss.MulticlassAccuracy()
    loss, info = F.uniloss_with_info(scores, target, dec, interpolation="chain", pull=0.0, temperature=0.7)
    (grad,) = torch.autograd.grad(loss, scores)

    ref_scores = scores.detach().clone().requires_grad_(True)
    c = dec.comparisons(ref_scores, dec.prepare(ref_scores, target)).reshape(-1)
    best = dec.best(dec.prepare(ref_scores, target)).reshape(-1)
    ref = _brute_force_extension(c, best, lambda bits: _accuracy_by_hand(bits, n, classes - 1), 0.7)
    (ref_grad,) = torch.autograd.grad(-ref, ref_scores)
    # walked by the samples' runs, on each one's least comparison (Structure.run_least)
    assert info.path == "runs" and info.kinds == (("chain", n + 1),)
    torch.testing.assert_close(loss, -ref)
    torch.testing.assert_close(grad, ref_grad)
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("make", [
    lambda g: (uniloss.AveragePrecision(), torch.randn(30, generator=g), (torch.rand(30, generator=g) < 0.3).long()),
    lambda g: (uniloss.MulticlassAccuracy(), torch.randn(16, 5, generator=g), torch.randint(0, 5, (16,), generator=g)),
    lambda g: (zoo.mean_iou(3), torch.randn(2, 3, 5, 5, generator=g), torch.randint(0, 3, (2, 5, 5), generator=g)),
    lambda g: (zoo.macro_f1(4), torch.randn(20, 4, generator=g), torch.randint(0, 4, (20,), generator=g)),
])
def test_at_a_vertex_the_chain_gives_the_exact_metric(make):
    # a tiny temperature puts the relaxed bits at the hard configuration's vertex; up to
    # chain_segments comparisons the extension is exact there
    dec, scores, target = make(torch.Generator().manual_seed(3))
    scores = scores.double()
    loss, info = F.uniloss_with_info(scores, target, dec, interpolation="chain", temperature=1e-12)
    assert info.num_bits <= _limits.current_limits().chain_segments
    # (the reported metric may be float32: AP's tie-aware batch metric)
    torch.testing.assert_close(info.surrogate, info.metric.to(info.surrogate.dtype), atol=1e-6, rtol=0)
    assert float(loss) == pytest.approx(-float(info.metric), abs=1e-6)


def test_a_coarse_chain_keeps_the_ends_and_telescopes():
    g = torch.Generator().manual_seed(4)
    c = torch.randn(50, generator=g, dtype=torch.float64)
    best = torch.rand(50, generator=g) < 0.7

    def share_right(bits):  # any metric of the bits: the share that agree with best, squared
        return (bits == best).double().mean(1).square()

    for segments in (1, 3, 7, 50):
        value, values, gains, _ = chain_extension(c, best, share_right, 1.0, segments)
        assert values.shape == (segments + 1,)
        assert float(values[0]) == 0.0 and float(values[-1]) == 1.0  # S_0 all wrong, S_l best
        assert float(gains.sum()) == pytest.approx(1.0)  # the gains telescope to g(best) - g(S_0)
        assert 0.0 <= float(value) <= 1.0
    # at best itself every segment's v is ~1: g~ = g(best), whatever the segments
    value, *_ = chain_extension(torch.where(best, 50.0, -50.0).double(), best, share_right, 1.0, 3)
    assert float(value) == pytest.approx(1.0)


def test_the_number_of_segments_follows_the_limits():
    assert chain_segments(100, 256, 1 << 25) == 100
    assert chain_segments(10_000, 256, 1 << 25) == 256
    assert chain_segments(1 << 22, 256, 1 << 25) == 7  # [8, 4M] bits at most 32M
    assert chain_segments(1 << 26, 256, 1 << 25) == 1
    s = torch.randn(40, 3)
    t = torch.randint(0, 3, (40,))
    with _limits.limits(chain_segments=5):  # a metric known only through evaluate
        _, info = F.uniloss_with_info(s, t, _BitsAccuracy(2), interpolation="chain")
    assert info.kinds == (("chain", 6),)
    # a metric of the runs' counts (VOC AP: 8 positives, 8 x 32 comparisons): every point, whatever
    # chain_segments says, fewer where [points, S] counts would pass chain_elements
    ap_target = (torch.arange(40) < 8).long()
    voc = uniloss.AveragePrecision(interpolated=True)
    _, info = F.uniloss_with_info(s[:, 0], ap_target, voc, interpolation="chain")
    assert info.kinds == (("chain", 257),)  # exact: 256 comparisons
    with _limits.limits(chain_segments=5):
        _, info = F.uniloss_with_info(s[:, 0], ap_target, voc, interpolation="chain")
    assert info.kinds == (("chain", 257),)
    with _limits.limits(chain_elements=8 * 9):
        _, info = F.uniloss_with_info(s[:, 0], ap_target, voc, interpolation="chain")
    assert info.kinds == (("chain", 9),)
    # a closed form along the chain (accuracy, plain AP): exact whatever the limits
    with _limits.limits(chain_segments=5, chain_elements=10):
        _, info = F.uniloss_with_info(s, t, uniloss.MulticlassAccuracy(), interpolation="chain")
        assert info.kinds == (("chain", 41),)  # by the 40 samples' runs (chain_by_runs)
        _, info = F.uniloss_with_info(s[:, 0], ap_target, uniloss.AveragePrecision(), interpolation="chain")
        assert info.kinds == (("chain", 2),)  # its gains without the order: the chain's two ends


class _BitsAccuracy(uniloss.Decomposition):
    """Accuracy of ``[n, C]`` scores with ``C - 1`` comparisons per row, known to the engine only
    through ``evaluate`` (no structure): the chain evaluates its bits."""

    def __init__(self, k):
        self.k = k

    def comparisons(self, scores, target):
        return uniloss.MulticlassAccuracy().comparisons(scores, target)

    def best(self, target):
        return torch.ones(target.numel() * self.k, dtype=torch.bool)

    def evaluate(self, bits, target):
        return bits.reshape(bits.shape[0], -1, self.k).all(-1).double().mean(-1)


_COUNT_METRICS = [
    lambda g: (zoo.mean_iou(2), torch.randn(3, 2, 5, 5, generator=g), torch.randint(0, 2, (3, 5, 5), generator=g)),
    lambda g: (zoo.mean_iou(4), torch.randn(2, 4, 4, 4, generator=g), torch.randint(0, 4, (2, 4, 4), generator=g)),
    lambda g: (zoo.dice(3), torch.randn(2, 3, 4, 5, generator=g), torch.randint(0, 3, (2, 4, 5), generator=g)),
    lambda g: (zoo.macro_f1(5), torch.randn(30, 5, generator=g), torch.randint(0, 5, (30,), generator=g)),
    lambda g: (zoo.macro_f1(5, class_weights=torch.tensor([0.2, 1.0, 2.5, 4.0, 9.0])), torch.randn(30, 5, generator=g),
               torch.randint(0, 5, (30,), generator=g)),  # counts weighted by the target's class
    lambda g: (zoo.balanced_accuracy(4), torch.randn(25, 4, generator=g), torch.randint(0, 4, (25,), generator=g)),
    lambda g: (zoo.matthews_corrcoef(3), torch.randn(25, 3, generator=g), torch.randint(0, 3, (25,), generator=g)),
    lambda g: (uniloss.AveragePrecision(), torch.randn(40, generator=g), (torch.rand(40, generator=g) < 0.3).long()),
    lambda g: (uniloss.AveragePrecision(), torch.randn(30, generator=g).round(), (torch.rand(30, generator=g) < 0.5).long()),
    lambda g: (uniloss.AveragePrecision(interpolated=True), torch.randn(40, generator=g),
               (torch.rand(40, generator=g) < 0.3).long()),
    lambda g: (uniloss.MulticlassAccuracy(), torch.randn(20, 6, generator=g), torch.randint(0, 6, (20,), generator=g)),
    lambda g: (uniloss.MulticlassAccuracy(fraction=0.5, undrawn="current"), torch.randn(20, 6, generator=g),
               torch.randint(0, 6, (20,), generator=g)),
    lambda g: (uniloss.MulticlassAccuracy(fraction=0.1), torch.randn(20, 6, generator=g),
               torch.randint(0, 6, (20,), generator=g)),  # samples with no comparison drawn: right throughout
    lambda g: (uniloss.MulticlassAccuracy(top_k=2), torch.randn(20, 6, generator=g), torch.randint(0, 6, (20,), generator=g)),
    lambda g: (uniloss.MulticlassAccuracy(), torch.randn(20, 2, generator=g),  # a comparison a run: the turns are 1 .. n
               torch.randint(0, 2, (20,), generator=g)),
    lambda g: (uniloss.MulticlassAccuracy(top_k=1), torch.randn(20, 6, generator=g), torch.randint(0, 6, (20,), generator=g)),
    lambda g: (uniloss.PCK(0.5), torch.randn(3, 2, 5, 5, generator=g),
               uniloss.KeypointTarget(torch.rand(3, 2, 2, generator=g) * 4, torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]]),
                                      torch.tensor([2.0, 3.0, 0.5]))),
    lambda g: (uniloss.PCK(0.5), torch.randn(2, 1, 3, 3, generator=g),  # sample 0: every pixel positive, no negative
               uniloss.KeypointTarget(torch.ones(2, 1, 2), torch.ones(2, 1), torch.tensor([6.0, 1.0]))),
    # ties in the relaxed bits (rounded scores): the runs' last comparisons break them as the full chain
    lambda g: (uniloss.MulticlassAccuracy(), torch.randn(20, 6, generator=g).round(), torch.randint(0, 6, (20,), generator=g)),
    lambda g: (zoo.mean_iou(3), torch.randn(2, 3, 4, 4, generator=g).round(), torch.randint(0, 3, (2, 4, 4), generator=g)),
    lambda g: (uniloss.PCK(0.5), torch.randn(3, 2, 5, 5, generator=g).round(),
               uniloss.KeypointTarget(torch.rand(3, 2, 2, generator=g) * 4, torch.ones(3, 2), torch.tensor([2.0, 3.0, 1.5]))),
]


@pytest.mark.parametrize("make", _COUNT_METRICS)
@pytest.mark.parametrize("seed", [0, 1])
def test_the_chain_from_counts_equals_the_chain_of_evaluated_bits(make, seed):
    # The values along the chain from the zoo's closed form (Structure.chain) or from the runs'
    # counts (evaluate_zeros) against evaluate() of every configuration of the chain, bits and
    # all; the closed form also block by block (a tiny chain_elements).
    dec, scores, target = make(torch.Generator().manual_seed(seed))
    scores = (2 * scores).double()
    plan = dec.prepare(scores, target, torch.Generator().manual_seed(seed))
    c = dec.comparisons(scores, plan).reshape(-1)
    best = dec.best(plan).reshape(-1)
    l = c.numel()
    evaluated = chain_extension(c, best, lambda bits: dec.evaluate(bits, plan), 1.0, l)
    structure = dec.structure(plan)
    leaf = scores.clone().requires_grad_(True)
    loss, info = F.uniloss_with_info(leaf, target, dec, interpolation="chain", pull=0.0,
                                     generator=torch.Generator().manual_seed(seed))
    if structure.chain_by_runs or structure.chain_gains is not None:
        # walked by the runs' last comparisons (S + 1 points: the values where the first j runs are
        # whole) or given its gains without the order (the chain's two ends reported): the same
        # extension and gradient as the full chain of evaluated bits
        points = 2 if structure.chain_gains is not None else Runs.of(structure.runs, l, c.device, True).num + 1
        assert info.kinds == (("chain", points),)
        ref_leaf = scores.clone().requires_grad_(True)
        ref_plan = dec.prepare(ref_leaf, target, torch.Generator().manual_seed(seed))
        ref_c = dec.comparisons(ref_leaf, ref_plan).reshape(-1)
        ref, *_ = chain_extension(ref_c, best, lambda bits: dec.evaluate(bits, plan), 1.0, l)
        torch.testing.assert_close(loss, -ref.to(loss.dtype))
        torch.testing.assert_close(torch.autograd.grad(loss, leaf)[0], torch.autograd.grad(-ref, ref_leaf)[0])
    else:  # the runs' counts at every point (fewer where [points, S] counts would pass chain_elements)
        runs = Runs.of(structure.runs, l, c.device, True).num
        segments = max(1, min(l, _limits.current_limits().chain_elements // max(runs, 1) - 1))
        assert segments == l and info.kinds == (("chain", l + 1),)
        torch.testing.assert_close(info.anchor_values, evaluated[1].to(info.anchor_values.dtype), equal_nan=True)
    if structure.chain is not None:
        rank = torch.randperm(l, generator=torch.Generator().manual_seed(seed))
        runs = Runs.of(structure.runs, l, c.device, True)

        def along(rank):
            return structure.chain(run_turns(rank, runs), l) if structure.chain_by_runs else structure.chain(rank)

        whole = along(rank)
        # the closed form against evaluate() of every configuration of this chain, bits and all
        agree = rank[None, :] < torch.arange(l + 1)[:, None]
        torch.testing.assert_close(whole.double(), dec.evaluate(torch.where(agree, best, ~best), plan).double(),
                                   equal_nan=True)
        with _limits.limits(chain_elements=7):
            torch.testing.assert_close(along(rank), whole, equal_nan=True)


def test_the_closed_form_chain_by_hand():
    # mean IoU of 2 pixels x 2 classes (one comparison each, label 1 then 0), the second pixel's
    # comparison first in the chain: S_0 both wrong (IoU 0, 0), then pixel 2 right (class 0: 1/2,
    # class 1: 0), then both (1, 1)
    dec = zoo.mean_iou(2)
    scores = torch.zeros(1, 2, 1, 2)
    plan = dec.prepare(scores, torch.tensor([[[1, 0]]]))
    values = dec.structure(plan).chain(torch.tensor([2, 1]), 2)  # the runs' turns: pixel 2 first
    torch.testing.assert_close(values, torch.tensor([0.0, 0.25, 1.0]))


def test_the_step_rule_push_is_the_chain_gradient_total():
    # with step="pull" the chain's push sizes the step: it must be sum_k |d g~ / d c_k|
    g = torch.Generator().manual_seed(5)
    c = torch.randn(40, generator=g, dtype=torch.float64, requires_grad=True)
    best = torch.rand(40, generator=g) < 0.5

    def metric(bits):
        return (bits == best).double().mean(1) ** 3

    value, _, gains, u = chain_extension(c, best, metric, 0.5, 40)
    (grad,) = torch.autograd.grad(value, c)
    assert float((gains.abs() * u * (1 - u)).sum() / 0.5) == pytest.approx(float(grad.abs().sum()))


def test_module_and_functional_forms_agree_and_the_pull_still_applies():
    g = torch.Generator().manual_seed(6)
    scores = torch.randn(12, 4, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 4, (12,), generator=g)
    module = uniloss.UniLoss(zoo.balanced_accuracy(4), interpolation="chain")
    (a,) = torch.autograd.grad(module(scores, target), scores)
    (b,) = torch.autograd.grad(F.uniloss(scores, target, zoo.balanced_accuracy(4), interpolation="chain"), scores)
    torch.testing.assert_close(a, b)
    (no_pull,) = torch.autograd.grad(F.uniloss(scores, target, zoo.balanced_accuracy(4), interpolation="chain",
                                               pull=0.0), scores)
    assert not torch.allclose(a, no_pull)
    assert "interpolation" not in repr(module) and "num_good" not in repr(module)  # the default: no anchors
    anchors = repr(uniloss.UniLoss(uniloss.MulticlassAccuracy(), interpolation="anchors"))
    assert "interpolation='anchors'" in anchors and "num_good=16" in anchors and "grad_scale='bounded'" in anchors


def test_training_on_the_chain_raises_average_precision():
    torch.manual_seed(0)
    x = torch.randn(400, 5)
    y = (x[:, 0] + 0.5 * x[:, 1] + 0.3 * torch.randn(400) > 1.0).long()
    model = torch.nn.Linear(5, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    loss_fn = uniloss.UniLoss(uniloss.AveragePrecision(), interpolation="chain")
    before = float(uniloss.AveragePrecision().metric(model(x).squeeze(1).detach(), y))
    for _ in range(60):
        idx = torch.randint(0, 400, (64,))
        opt.zero_grad()
        loss_fn(model(x[idx]).squeeze(1), y[idx]).backward()
        opt.step()
    after = float(uniloss.AveragePrecision().metric(model(x).squeeze(1).detach(), y))
    assert after > max(before, 0.8)


class _PCKWithoutLeast(uniloss.PCK):
    """PCK whose structure does not give its runs' least comparisons: the chain forms them all."""
    def structure(self, target):
        return dataclasses.replace(super().structure(target), run_least=None)


class _PCKWithoutClosedForm(uniloss.PCK):
    """PCK whose structure keeps its blocks but not its chain: the engine must evaluate it."""
    def structure(self, target):
        return dataclasses.replace(super().structure(target), chain=None, chain_by_runs=False, run_least=None)


def test_the_chain_refuses_what_it_cannot_do():
    s = torch.randn(8, requires_grad=True)
    y = torch.tensor([1, 0, 0, 1, 0, 0, 0, 1])
    with pytest.raises(ValueError, match="interpolation"):
        uniloss.UniLoss(uniloss.AveragePrecision(), interpolation="lovasz")
    anchors = torch.ones(1, 15, dtype=torch.bool)
    with pytest.raises(ValueError, match="anchors=None"):
        F.uniloss(s, y, uniloss.AveragePrecision(), anchors=anchors, interpolation="chain")
    g = torch.Generator().manual_seed(0)
    heat = torch.randn(2, 2, 6, 6, generator=g, requires_grad=True)
    target = uniloss.KeypointTarget(torch.rand(2, 2, 2, generator=g) * 5, torch.ones(2, 2, dtype=torch.bool),
                                    torch.full((2,), 2.0))
    with pytest.raises(ValueError, match="chunk_bits=40"):  # not a metric of whole runs: no blocks
        F.uniloss(heat, target, _PCKWithoutClosedForm(), chunk_bits=40, interpolation="chain")
    loss = F.uniloss(heat, target, _PCKWithoutClosedForm(), interpolation="chain")  # below chunk_bits: fine
    loss.backward()
    assert heat.grad is not None and torch.isfinite(heat.grad).all()


def test_no_comparison_is_the_anchors_path_unchanged():
    # AP without a positive has no comparison: the zero interpolation plus the pull on the margins
    s = torch.randn(5, requires_grad=True)
    y = torch.zeros(5, dtype=torch.long)
    loss, info = F.uniloss_with_info(s, y, uniloss.AveragePrecision(), interpolation="chain")
    (grad,) = torch.autograd.grad(loss, s)
    ref = F.uniloss(s, y, uniloss.AveragePrecision())
    (ref_grad,) = torch.autograd.grad(ref, s)
    assert info.num_bits == 0 and float(loss.detach()) == float(ref.detach()) == 0.0
    torch.testing.assert_close(grad, ref_grad)


@pytest.mark.parametrize("labels", ["no positive", "no negative"])
def test_a_batch_without_a_comparison_is_as_the_readme_says(labels):
    """README/getting-started: zero loss; zero gradients but the pull on the margins (none with
    pull_per="run"); last.metric NaN where AP is undefined, scikit-learn's value (1) where not."""
    sklearn = pytest.importorskip("sklearn.metrics")
    y = torch.zeros(6, dtype=torch.long) if labels == "no positive" else torch.ones(6, dtype=torch.long)
    s = torch.randn(6, generator=torch.Generator().manual_seed(0), requires_grad=True)
    loss = uniloss.UniLoss(uniloss.AveragePrecision())
    value = loss(s, y)
    (grad,) = torch.autograd.grad(value, s)
    assert float(value.detach()) == 0.0 and grad.abs().sum() > 0  # binary cross-entropy's push
    if labels == "no positive":
        assert math.isnan(float(loss.last.metric))
    else:
        assert float(loss.last.metric) == sklearn.average_precision_score(y.numpy(), s.detach().numpy()) == 1.0
    (grad,) = torch.autograd.grad(uniloss.UniLoss(uniloss.AveragePrecision(), pull_per="run")(s, y), s)
    assert torch.equal(grad, torch.zeros_like(grad))


def test_a_module_pickled_before_the_option_keeps_the_anchors():
    g = torch.Generator().manual_seed(7)
    scores = torch.randn(16, 4, generator=g, dtype=torch.float64)
    target = torch.randint(0, 4, (16,), generator=g)

    def grad(module):
        s = scores.clone().requires_grad_()
        module(s, target).backward()
        return s.grad

    old = uniloss.UniLoss(uniloss.MulticlassAccuracy(), generator=torch.Generator().manual_seed(3))
    delattr(old, "interpolation")  # as unpickled from 0.5
    assert "interpolation='anchors'" in repr(old)  # its own (0.8's default is the chain)
    current = uniloss.UniLoss(uniloss.MulticlassAccuracy(), generator=torch.Generator().manual_seed(3),
                              interpolation="anchors")
    torch.testing.assert_close(grad(old), grad(current), rtol=0, atol=0)
    assert old.last.path == "structured"


@pytest.mark.parametrize("n", [1, 7, 1000, 50_000])
def test_the_chain_order_is_the_stable_descending_sort(n):
    # float32 sorts an int64 key (v's bits over the reversed index) without stability; ties
    # (saturated bits, rounded values) and a static layout's padding must come out as the stable
    # sort orders them, in float32 and float64 alike
    from uniloss._interpolation import _chain_order

    g = torch.Generator().manual_seed(n)
    v = torch.rand(n, generator=g)
    v = torch.where(torch.rand(n, generator=g) < 0.3, v.round(decimals=2), v)
    v[: n // 10], v[n // 10: n // 5] = 1.0, 0.0
    padding = torch.rand(n, generator=g) < 0.2
    for invalid in (None, padding):
        reference = torch.argsort(v if invalid is None else v.masked_fill(invalid, -1.0), descending=True, stable=True)
        assert torch.equal(_chain_order(v, invalid), reference)
        assert torch.equal(_chain_order(v.double(), invalid), reference)


@pytest.mark.parametrize("n", [7, 1000, 20_000, 70_000])
def test_the_runs_descending_order_is_the_stable_descending_sort(n):
    # run_chain_gains orders the runs' least comparisons (any sign, infinities for runs without
    # bits, -0.0) by an int64 key of their float32 bits above the index from _KEYED_SORT values:
    # the stable sort's order, ties included, in float32 and float64
    from uniloss._interpolation import _KEYED_SORT, _descending

    assert 1000 < _KEYED_SORT <= 20_000  # (the sizes fall on both sides of the threshold)
    g = torch.Generator().manual_seed(n)
    x = (torch.randn(n, generator=g) * 3).round()  # many ties
    x[::97], x[::89], x[::83] = float("inf"), float("-inf"), -0.0
    for values in (x, x.double()):
        assert torch.equal(_descending(values), torch.argsort(values, descending=True, stable=True))


def _last_by_hand(v, lengths):
    """Each run's last comparison in the chain's order, a Python loop: the least v, the largest
    index among equals; (inf, -1) for an empty run."""
    out, start = [], 0
    for n in lengths:
        items = [(float(v[k]), k) for k in range(start, start + n)]
        out.append(min(items, key=lambda x: (x[0], -x[1])) if items else (float("inf"), -1))
        start += n
    return out


@pytest.mark.parametrize("layout", ["width", "lengths"])
def test_the_runs_last_comparisons_by_hand(layout):
    g = torch.Generator().manual_seed(11)
    if layout == "width":
        lengths, runs = [4] * 6, Runs(4, None, None, 6)
    else:
        lengths = [3, 0, 5, 1, 0, 4]
        runs = Runs.of(torch.tensor(lengths), sum(lengths), torch.device("cpu"), True)
    v = torch.randint(0, 3, (sum(lengths),), generator=g).double() / 2  # many ties
    least, last = last_of_runs(v, runs)
    expected = _last_by_hand(v, lengths)
    assert last.tolist() == [k for _, k in expected]
    assert least.tolist() == [x for x, _ in expected]


@pytest.mark.parametrize("options", [{}, {"pull": 0.0}, {"step": "sum"}, {"grad_scale": 2.5, "temperature": 0.3},
                                     {"temperature_scale": "rms"}])
def test_a_huge_metric_of_whole_runs_takes_the_chain_block_by_block(options):
    # PCK above chunk_bits: the chain by runs block by block gives the one-block chain's loss and
    # gradient, pull and step rule included
    g = torch.Generator().manual_seed(12)
    scores = torch.randn(3, 2, 6, 6, generator=g, dtype=torch.float64)
    target = uniloss.KeypointTarget(torch.rand(3, 2, 2, generator=g) * 5, torch.ones(3, 2), torch.tensor([1.5, 2.0, 1.0]))
    dec = _PCKWithoutLeast(0.5)  # (with run_least both take the path "runs": see test_runs.py)
    results = []
    for chunk_bits in (None, 40):
        leaf = scores.clone().requires_grad_(True)
        loss, info = F.uniloss_with_info(leaf, target, dec, interpolation="chain", chunk_bits=chunk_bits, **options)
        (grad,) = torch.autograd.grad(loss, leaf)
        results.append((loss, grad, info))
    (loss, grad, info), (chunked_loss, chunked_grad, chunked_info) = results
    assert info.path == "chain" and chunked_info.path == "chunked" and info.num_bits > 40
    torch.testing.assert_close(chunked_loss, loss)
    torch.testing.assert_close(chunked_grad, grad)
    assert grad.abs().sum() > 0
    assert chunked_info.kinds == info.kinds
    torch.testing.assert_close(chunked_info.metric, info.metric)
    torch.testing.assert_close(chunked_info.surrogate, info.surrogate)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aps_gains_without_the_order_are_the_closed_form_chains(seed, ties):
    # Structure.chain_gains (a sort of each row and column) against the closed form along the full
    # chain (Structure.chain of the global order), in float64: the same start, the same gain for
    # every comparison, hence the same loss and gradient
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(40, generator=g, dtype=torch.float64)
    scores = scores.round() if ties else scores
    target = (torch.rand(40, generator=g) < 0.35).long()
    dec = uniloss.AveragePrecision()
    plan = dec.prepare(scores, target)
    structure = dec.structure(plan)
    c = dec.comparisons(scores, plan).reshape(-1)
    v = torch.sigmoid(c / 0.8)  # (best: every comparison 1)
    start, gains = structure.chain_gains(v)
    _, values, ref_gains, _ = chain_extension(c, dec.best(plan).reshape(-1), None, 0.8, c.numel(),
                                              along=lambda rank, cuts: structure.chain(rank)[cuts])
    torch.testing.assert_close(start, values[0].double())
    torch.testing.assert_close(gains, ref_gains.double())
    assert float(start + gains.sum()) == pytest.approx(1.0)  # the chain ends at best: AP 1


def test_the_static_layouts_float_division_is_integer_division_up_to_its_limit():
    # floor((k + 0.5) / w) in float32 against int64 floor division, every k below the limit, at
    # widths where the quotient sits nearest a rounding error (large k / w, w near powers of 2)
    from uniloss._metrics import _FLOAT_DIV_BITS, _floor_div

    k = torch.arange(_FLOAT_DIV_BITS)
    for w in (1, 2, 3, 7, 255, 4093, 4096, 65_537, (1 << 22) + 1, _FLOAT_DIV_BITS):
        width = torch.tensor(w)
        assert torch.equal(_floor_div(k, width), torch.div(k, width, rounding_mode="floor")), w
    above = torch.arange((1 << 24) + 16)  # above the limit integer division (float32's would miss 1.4M here)
    assert torch.equal(_floor_div(above, torch.tensor(3)), above // 3)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])  # (float32: one sort of int64 keys a pair)
@pytest.mark.parametrize("n", [23, 200])  # (200: the layout spreads its indices from each slot, _SPREAD_BITS)
@pytest.mark.parametrize("labels", ["mixed", "ties", "no positive", "no negative", "one negative"])
def test_aps_gains_in_the_static_layout_are_the_exact_layouts(labels, n, dtype):
    # the static layout's chain_gains (stable sorts of all L = n^2/4 bits, P and N tensors) against
    # the exact layout's on its first P N bits; the padding gains nothing
    from uniloss._decomposition import StaticLayout, prepare_with_layout

    g = torch.Generator().manual_seed(3)
    scores = torch.randn(n, generator=g, dtype=dtype)
    target = (torch.rand(n, generator=g) < 0.35).long()
    if labels == "ties":
        scores = scores.round()
    target = {"no positive": torch.zeros_like(target), "no negative": torch.ones_like(target),
              "one negative": (torch.arange(n) != 5).long()}.get(labels, target)
    dec = uniloss.AveragePrecision()
    layout = StaticLayout.for_decomposition(1 << 20, dec, 1 << 20)
    static = prepare_with_layout(dec, scores, target, None, layout)
    c = dec.comparisons(scores, static).reshape(-1)
    assert c.numel() == n * n // 4
    num_valid = int(layout.num_valid)
    v = torch.sigmoid(torch.where(layout.padding, 0.0, c) / 0.8)
    start, gains = dec.structure(static).chain_gains(v)
    assert torch.equal(gains[num_valid:], torch.zeros(c.numel() - num_valid, dtype=gains.dtype))
    if num_valid == 0:
        return
    exact = dec.prepare(scores, target)
    ref_start, ref_gains = dec.structure(exact).chain_gains(v[:num_valid])
    torch.testing.assert_close(start, ref_start)
    torch.testing.assert_close(gains[:num_valid], ref_gains)


# ------------------------------------------------------------- one node: the gradient in closed form

def _chain_cases(dtype=torch.float64):
    g = torch.Generator().manual_seed(11)
    heat = torch.randn(2, 3, 6, 6, generator=g, dtype=dtype)
    keypoints = uniloss.KeypointTarget(torch.rand(2, 3, 2, generator=g, dtype=dtype) * 5,
                                       torch.ones(2, 3, dtype=torch.bool), torch.full((2,), 2.0, dtype=dtype))
    labels = (torch.rand(14, generator=g) < 0.4).long()
    labels[:2] = torch.tensor([1, 0])
    return {
        "ap": (uniloss.AveragePrecision(), torch.randn(14, generator=g, dtype=dtype), labels),  # pull on the margins
        "acc": (uniloss.MulticlassAccuracy(), torch.randn(9, 4, generator=g, dtype=dtype), torch.randint(0, 4, (9,), generator=g)),
        "pck": (uniloss.PCK(), heat, keypoints),  # the runs' terms in closed form
        "macro_f1": (zoo.macro_f1(3), torch.randn(10, 3, generator=g, dtype=dtype), torch.randint(0, 3, (10,), generator=g)),
        "ndcg": (zoo.ndcg_at_k(3), torch.randn(12, generator=g, dtype=dtype),
                 zoo.RankingTarget(torch.randint(0, 3, (12,), generator=g), torch.arange(12) // 6)),
    }


@pytest.mark.parametrize("options", [dict(), dict(step="sum"), dict(pull_per="comparison"), dict(pull_per="run"),
                                     dict(grad_scale=2.0, temperature=0.6), dict(temperature_scale="rms", pull=0.4),
                                     dict(pull=0.0)], ids=["defaults", "sum", "per-comparison", "per-run", "scaled",
                                                           "rms", "no-pull"])
@pytest.mark.parametrize("name", ["ap", "acc", "pck", "macro_f1", "ndcg"])
def test_the_closed_form_gradient_equals_autograd_through_the_same_terms(name, options):
    """The chain's node returns its gradient in closed form; with ``create_graph=True`` it takes
    the extension and the pull through autograd instead: the two first derivatives agree."""
    dec, scores, target = _chain_cases()[name]
    s = scores.clone().requires_grad_(True)
    loss = F.uniloss(s, target, dec, **options)
    (closed,) = torch.autograd.grad(loss, s, retain_graph=True)
    (traced,) = torch.autograd.grad(loss, s, create_graph=True)
    assert traced.requires_grad
    torch.testing.assert_close(closed, traced.detach(), rtol=1e-10, atol=1e-14)
    assert closed.abs().sum() > 0


@pytest.mark.parametrize("name", ["ap", "acc", "pck", "macro_f1"])
def test_the_chain_gradgradcheck(name):
    """The second derivative against finite differences of the first (``step="sum"``: the step
    factor is a detached function of the comparisons; the gains are fixed by the order, which a
    small step does not change)."""
    dec, scores, target = _chain_cases()[name]

    def loss(s):
        return F.uniloss(s, target, dec, step="sum", temperature=0.8)

    assert torch.autograd.gradgradcheck(loss, (scores.clone().requires_grad_(True),), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_the_hard_metric_is_evaluated_only_when_read():
    """The chain's closed forms do not evaluate the hard configuration: ``info.metric`` does when
    read, and not at all where ``batch_metric`` gives the value (AP's tied ranking)."""

    class Counting(uniloss.MulticlassAccuracy):
        calls = 0

        def evaluate(self, bits, target):
            Counting.calls += 1
            return super().evaluate(bits, target)

    g = torch.Generator().manual_seed(3)
    scores, target = torch.randn(8, 4, generator=g, requires_grad=True), torch.randint(0, 4, (8,), generator=g)
    loss, info = F.uniloss_with_info(scores * 1.0, target, Counting())
    loss.backward()
    assert Counting.calls == 0
    expected = (scores.detach().argmax(1) == target).float().mean()
    assert float(info.metric) == pytest.approx(float(expected))

    class CountingAP(uniloss.AveragePrecision):
        calls = 0

        def evaluate(self, bits, target):
            CountingAP.calls += 1
            return super().evaluate(bits, target)

    labels = torch.tensor([1, 0, 1, 0, 0, 1])
    s = torch.tensor([0.5, 0.5, 2.0, -1.0, 0.5, 0.1], requires_grad=True)  # a tie: batch_metric's value differs
    _, info = F.uniloss_with_info(s * 1.0, labels, CountingAP())
    from sklearn.metrics import average_precision_score
    assert float(info.metric) == pytest.approx(average_precision_score(labels.numpy(), s.detach().numpy()), rel=1e-6)
    assert CountingAP.calls == 0


def _pull_grads(c, best, temperature, runs, rows, num_valid, weights, per, denominator):
    """``pull_cost``'s ``(push, gradient)`` through autograd and in closed form (``with_grad``, which
    computes no cost), and the cost of both ways (``with_push``)."""
    from uniloss._interpolation import pull_cost
    leaf = (per if per is not None else c).detach().clone().requires_grad_(True)
    kw = dict(with_push=True, weights=weights, per=leaf if per is not None else None)
    cost, push = pull_cost(None if per is not None else leaf, best, temperature, runs, rows, num_valid, denominator, **kw)
    (grad,) = torch.autograd.grad(cost, leaf)
    with torch.no_grad():
        kw["per"] = leaf.detach() if per is not None else None
        closed = pull_cost(None if per is not None else leaf.detach(), best, temperature, runs, rows, num_valid,
                           denominator, with_grad=True, **kw)
        again, _ = pull_cost(None if per is not None else leaf.detach(), best, temperature, runs, rows, num_valid,
                             denominator, **kw)
    return (cost.detach(), push, grad), (again, *closed)


@pytest.mark.parametrize("temperature", [1.0, 0.7, "tensor"])
@pytest.mark.parametrize("form", ["comparison", "width", "width-weights", "ids", "ids-weights", "ids-denominator",
                                  "per", "per-weights", "static-comparison", "static-ids"])
def test_the_pulls_closed_form_gradient_equals_autograd(form, temperature):
    g = torch.Generator().manual_seed(4)
    temperature = torch.tensor(1.3, dtype=torch.float64) if temperature == "tensor" else temperature
    c = torch.randn(12, generator=g, dtype=torch.float64) * 3
    best = torch.rand(12, generator=g) < 0.7
    weights = torch.rand(4, generator=g, dtype=torch.float64)
    ids = Runs(None, torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 3, 3]), torch.tensor([3, 5, 10, 12]), 4)
    per = torch.rand(3, generator=g, dtype=torch.float64) + 0.1
    static_c, static_best = c.clone(), best.clone()
    static_c[9:], static_best[9:] = float("inf"), True  # a static layout's padding
    static_runs = Runs(None, torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 3]), None, 4)
    args = {  # c, best, runs, rows, num_valid, weights, per, denominator
        "comparison": (c, best, None, 1, None, None, None, None),
        "width": (c, best, Runs(4, None, None, 3), 5, None, None, None, None),
        "width-weights": (c, None, Runs(4, None, None, 3), 2, None, weights[:3], None, None),
        "ids": (c, best, ids, 2, None, None, None, None),
        "ids-weights": (c, best, ids, 2, None, weights, None, None),
        "ids-denominator": (c, best, ids, 2, None, None, None, 7),
        "per": (None, None, Runs(None, None, None, 3), 5, None, None, per, None),
        "per-weights": (None, None, Runs(None, None, None, 3), 5, None, weights[:3], per, None),
        "static-comparison": (static_c, static_best, None, 1, torch.tensor(9), None, None, None),
        "static-ids": (static_c, static_best, static_runs, 2, torch.tensor(9), None, None, None),
    }[form]
    c_, best_, runs, rows, num_valid, w, per_, den = args
    reference, closed = _pull_grads(c_, best_, temperature, runs, rows, num_valid, w, per_, den)
    for a, b in zip(closed, reference):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    assert reference[2].abs().sum() > 0


@pytest.mark.parametrize("name", ["ap", "acc", "pck", "macro_f1", "ndcg"])
def test_without_a_graph_the_value_alone_is_the_same_loss(name):
    """Under ``no_grad``/``inference_mode`` (or for scores without grad) the chain computes its
    value alone, no gradient: the same loss and metric as a recorded call."""
    dec, scores, target = _chain_cases()[name]
    recorded, info = F.uniloss_with_info(scores.clone().requires_grad_(True), target, dec)
    for context in (torch.no_grad, torch.inference_mode):
        with context():
            value, quiet = F.uniloss_with_info(scores.clone(), target, dec)
        assert torch.equal(value, recorded.detach()) and torch.equal(quiet.metric, info.metric)
    value, _ = F.uniloss_with_info(scores.clone(), target, dec)  # grad mode on, nothing requires grad
    assert torch.equal(value, recorded.detach()) and not value.requires_grad


# ------------------------------------------------------------------ AP's chain ordered by the scores


@pytest.mark.parametrize("static", [False, True], ids=["exact layout", "static layout"])
@pytest.mark.parametrize("seed, ties, n", [(0, False, 9), (1, False, 64), (2, True, 40), (3, True, 300), (4, False, 301)])
def test_aps_gains_from_the_scores_are_the_gains_of_the_comparisons_order(seed, ties, n, static):
    # v = sigmoid((s_p - s_q) / tau) orders every positive's comparisons by its negative's score
    # and every column of m-th steps by the positive's score: two sorts of the scores give the
    # gains the two sorts of [P, N] give (float64, where v does not round distinct scores alike)
    from uniloss._decomposition import StaticLayout, prepare_with_layout

    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(n, generator=g, dtype=torch.float64)
    scores = scores.round() if ties else scores
    target = (torch.rand(n, generator=g) < 0.3).long()
    target[:2] = torch.tensor([1, 0])
    dec = uniloss.AveragePrecision()
    layout = StaticLayout(1 << 22, (dec,)) if static else None
    plan = prepare_with_layout(dec, scores, target, None, layout)
    v = torch.sigmoid(dec.comparisons(scores, plan) / 0.7)
    start, gains = dec.structure(plan).chain_gains(v)  # from the scores
    # the reference: the closed form along the chain of the exact layout's comparisons, sorted
    exact = dec.prepare(scores, target)
    c = dec.comparisons(scores, exact)
    structure = dec.structure(exact)
    _, values, ref_gains, _ = chain_extension(c, dec.best(exact), None, 0.7, c.numel(),
                                              along=lambda rank, cuts: structure.chain(rank)[cuts])
    real = c.numel()
    torch.testing.assert_close(start, values[0].double(), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(gains[:real], ref_gains.double(), rtol=1e-9, atol=1e-15)
    assert not gains[real:].any() and (gains > 0).any()


def test_aps_gains_from_the_scores_order_comparisons_sigmoid_rounds_alike():
    # float32, tau 0.3: sigmoid rounds distinct comparisons near 1 to one value (and the same
    # comparison to two, by its place in a vector); the scores' order is the comparisons' own,
    # the gradient the same wherever sigmoid's slope is not below float32's resolution
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(200, generator=g)
    target = (torch.rand(200, generator=g) < 0.3).long()
    dec = uniloss.AveragePrecision()
    plan = dec.prepare(scores, target)
    c = dec.comparisons(scores, plan)
    start, gains = dec.structure(plan).chain_gains(torch.sigmoid(c / 0.3))
    # the reference: the order of c itself (its relaxed bits in float64, which do not round them
    # alike), the closed form along that chain
    structure = dec.structure(plan)
    _, values, ref_gains, _ = chain_extension(c.double(), dec.best(plan), None, 0.3, c.numel(),
                                              along=lambda rank, cuts: structure.chain(rank)[cuts])
    torch.testing.assert_close(gains, ref_gains, rtol=1e-9, atol=1e-15)
    torch.testing.assert_close(start, values[0].double())
    # (the float32 relaxed bits themselves tie distinct comparisons here: the test means something)
    u = torch.sigmoid(c / 0.3)
    assert u.unique().numel() < c.unique().numel()


def test_ap_plan_prepared_without_scores_takes_the_closed_form_along_the_sorted_chain():
    # no scores to order by: the engine sorts the comparisons and walks AP's closed form, the same loss
    g = torch.Generator().manual_seed(5)
    scores = torch.randn(30, generator=g, dtype=torch.float64)
    target = (torch.rand(30, generator=g) < 0.3).long()
    dec = uniloss.AveragePrecision()
    plan = dec.prepare(None, target)
    assert dec.structure(plan).chain_gains is None and dec.structure(dec.prepare(scores, target)).chain_gains is not None
    out = []
    for t in (target, plan):
        leaf = scores.clone().requires_grad_(True)
        loss = F.uniloss(leaf, t, dec)
        loss.backward()
        out.append((loss.detach(), leaf.grad))
    torch.testing.assert_close(out[0][0], out[1][0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(out[0][1], out[1][1], rtol=1e-10, atol=1e-14)
