"""The engine: anchors, interpolation, gradients, determinism, dtypes, devices."""

import math

import pytest
import torch

import uniloss
from uniloss import functional as F
from uniloss._interpolation import idw_from_residual, residual
from _reference import idw_loop, uniloss_oracle


def _ap_batch(n=12, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(n, generator=g, dtype=dtype)
    labels = torch.zeros(n, dtype=torch.long)
    labels[torch.randperm(n, generator=g)[: max(1, n // 3)]] = 1
    labels[0] = 1 - labels[1] if n > 1 else labels[0]
    return scores, labels


# ---------------------------------------------------------------------------- anchors


def test_anchor_kinds_and_counts():
    best = torch.ones(50, dtype=torch.bool)
    hard = torch.rand(50, generator=torch.Generator().manual_seed(0)) < 0.5
    a = uniloss.sample_anchors(best, hard, num_good=5, num_nearby=6, num_bad=7,
                               generator=torch.Generator().manual_seed(1))
    assert a.bits.shape == (19, 50)
    s = a.kind_slices()
    assert torch.equal(a.bits[s["best"]][0], best)
    good = a.bits[s["good"]]
    assert ((good != best).sum(1) == 1).all()  # one bit flipped from best
    near = a.bits[s["nearby"]]
    flipped = near != hard
    assert (flipped.sum(1) == 1).all()
    assert (near[flipped] == best[flipped.nonzero()[:, 1]]).all()  # toward best
    assert a.kinds == (("best", 1), ("good", 5), ("nearby", 6), ("bad", 7))


def test_nearby_flips_a_random_bit_when_hard_is_best():
    best = torch.ones(10, dtype=torch.bool)
    a = uniloss.sample_anchors(best, best.clone(), num_good=0, num_nearby=30, num_bad=0,
                               generator=torch.Generator().manual_seed(0))
    near = a.bits[1:]
    assert ((near != best).sum(1) == 1).all()
    assert len(set((near != best).nonzero()[:, 1].tolist())) > 3


@pytest.mark.parametrize("counts", [(0, 0, 0), (0, 3, 0), (3, 0, 0), (0, 0, 3)])
def test_zero_counts_allowed(counts):
    scores, labels = _ap_batch()
    g, n, b = counts
    loss_fn = uniloss.UniLoss(uniloss.AveragePrecision(), num_good=g, num_nearby=n, num_bad=b, interpolation="anchors")
    loss = loss_fn(scores.requires_grad_(), labels)
    loss.backward()
    assert loss_fn.last.anchor_values.shape == (1 + g + n + b,)
    assert torch.isfinite(scores.grad).all()


# ---------------------------------------------------------------------------- interpolation


def test_interpolation_exact_at_every_anchor_and_bounded():
    g = torch.Generator().manual_seed(0)
    anchors = torch.rand(9, 13, generator=g) < 0.5
    values = torch.rand(9, generator=g, dtype=torch.float64)
    for i in range(9):
        u = anchors[i].double().requires_grad_()
        out = uniloss.interpolate(u, anchors, values)
        assert float(out.detach()) == pytest.approx(float(values[i]), abs=0)
        out.backward()
        assert torch.isfinite(u.grad).all()
    for _ in range(20):
        u = torch.rand(13, generator=g, dtype=torch.float64)
        out = float(uniloss.interpolate(u, anchors, values))
        assert float(values.min()) - 1e-12 <= out <= float(values.max()) + 1e-12
        assert out == pytest.approx(idw_loop(u.tolist(), anchors.tolist(), values.tolist()), rel=1e-12)


def test_residual_form_keeps_precision_where_sigmoid_rounds():
    c = torch.tensor([30.0, -30.0, 0.0, 2.0])  # sigmoid(30) == 1.0 in float32
    hard, r = residual(c)
    assert hard.tolist() == [True, False, False, True]
    assert (r[:2] > 0).all() and float(r[2]) == 0.5
    anchors = torch.stack([hard, ~hard])
    out = idw_from_residual(hard, r, (anchors != hard).float(), torch.tensor([1.0, 0.0]))
    assert torch.isfinite(out)


def test_saturated_scores_give_finite_zero_gradient():
    scores = torch.tensor([200.0, -200.0, 150.0, -150.0], requires_grad=True)
    labels = torch.tensor([1, 0, 1, 0])
    loss = F.uniloss(scores, labels, uniloss.AveragePrecision(), generator=torch.Generator().manual_seed(0), interpolation="anchors")
    loss.backward()
    assert float(loss.detach()) == -1.0  # sits on the best anchor: exact
    assert torch.isfinite(scores.grad).all()


# ---------------------------------------------------------------------------- against the oracle


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("kind", ["ap", "ap-interp", "accuracy", "pck"])
def test_vectorised_loss_and_gradient_equal_the_loop_oracle(seed, kind):
    g = torch.Generator().manual_seed(seed)
    if kind.startswith("ap"):
        scores, target = _ap_batch(9, seed)
        dec = uniloss.AveragePrecision(interpolated=kind == "ap-interp")
    elif kind == "accuracy":
        scores = torch.randn(5, 4, generator=g, dtype=torch.float64)
        target = torch.randint(0, 4, (5,), generator=g)
        dec = uniloss.MulticlassAccuracy()
    else:
        scores = torch.randn(2, 2, 4, 4, generator=g, dtype=torch.float64)
        target = uniloss.KeypointTarget(torch.rand(2, 2, 2, generator=g, dtype=torch.float64) * 3,
                                        torch.tensor([[True, True], [True, False]]),
                                        torch.tensor([2.0, 3.0], dtype=torch.float64))
        dec = uniloss.PCK()
    prepared = dec.prepare(scores, target)
    l = dec.comparisons(scores, prepared).numel()
    anchors = uniloss.sample_anchors(dec.best(prepared), dec.comparisons(scores, prepared) > 0,
                                     num_good=4, num_nearby=4, num_bad=4, generator=g).bits
    s1 = scores.clone().requires_grad_()
    ours = F.uniloss(s1, target, dec, anchors=anchors, grad_scale=1.0, pull=0, temperature=0.7, interpolation="anchors")  # the paper
    ours.backward()
    s2 = scores.clone().requires_grad_()
    ref = uniloss_oracle(s2, target, dec, anchors, temperature=0.7)
    ref.backward()
    assert float(ours.detach()) == pytest.approx(float(ref.detach()), rel=1e-10, abs=1e-12)
    torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-8, atol=1e-12)
    assert l > 0


def test_gradcheck_float64_fixed_anchors():
    scores, labels = _ap_batch(7, 1)
    dec = uniloss.AveragePrecision()
    prepared = dec.prepare(scores, labels)
    anchors = uniloss.sample_anchors(dec.best(prepared), dec.comparisons(scores, prepared) > 0,
                                     num_good=3, num_nearby=3, num_bad=3,
                                     generator=torch.Generator().manual_seed(0)).bits
    fn = lambda s: F.uniloss(s, labels, dec, anchors=anchors, grad_scale=1.0, pull=0, interpolation="anchors")
    assert torch.autograd.gradcheck(fn, (scores.clone().requires_grad_(),))
    scores = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 3, 1])
    acc = uniloss.MulticlassAccuracy()
    anchors = torch.rand(10, 9, generator=torch.Generator().manual_seed(2)) < 0.5
    assert torch.autograd.gradcheck(lambda s: F.uniloss(s, target, acc, anchors=anchors, grad_scale=1.0, pull=0, interpolation="anchors"),
                                    (scores,))


def test_distance_grad_scale_multiplies_the_gradient_only():
    scores, labels = _ap_batch(10, 2)
    dec = uniloss.AveragePrecision()
    anchors = torch.rand(12, (labels == 1).sum() * (labels == 0).sum(), generator=torch.Generator().manual_seed(0)) < 0.5
    grads, values = [], []
    for scale in (1.0, "distance", 3.0):
        s = scores.clone().requires_grad_()
        loss = F.uniloss(s, labels, dec, anchors=anchors, grad_scale=scale, pull=0, interpolation="anchors")
        loss.backward()
        grads.append(s.grad)
        values.append(float(loss.detach()))
    assert values[0] == values[1] == values[2]
    torch.testing.assert_close(grads[2], 3 * grads[0])
    ratio = grads[1].norm() / grads[0].norm()
    assert ratio > 1  # harmonic mean distance of far anchors
    torch.testing.assert_close(grads[1], ratio * grads[0])


# ---------------------------------------------------------------------------- module, determinism, logging


def test_module_and_functional_agree():
    scores, labels = _ap_batch(20, 3)
    m = uniloss.UniLoss(uniloss.AveragePrecision(), generator=torch.Generator().manual_seed(5), interpolation="anchors")
    f = F.uniloss(scores, labels, uniloss.AveragePrecision(), generator=torch.Generator().manual_seed(5), interpolation="anchors")
    assert float(m(scores, labels)) == float(f)


def test_same_generator_state_same_loss_and_different_state_differs():
    scores, labels = _ap_batch(40, 4)
    dec = uniloss.AveragePrecision()
    a = F.uniloss(scores, labels, dec, generator=torch.Generator().manual_seed(7), interpolation="anchors")
    b = F.uniloss(scores, labels, dec, generator=torch.Generator().manual_seed(7), interpolation="anchors")
    c = F.uniloss(scores, labels, dec, generator=torch.Generator().manual_seed(8), interpolation="anchors")
    assert float(a) == float(b)
    assert float(a) != float(c)


def test_last_reports_exact_metric_and_surrogate():
    scores = torch.randn(32, 10, requires_grad=True)
    target = torch.randint(0, 10, (32,))
    loss_fn = uniloss.UniLoss(uniloss.MulticlassAccuracy(), generator=torch.Generator().manual_seed(0), interpolation="anchors")
    loss = loss_fn(scores, target)
    assert float(loss_fn.last.metric) == float((scores.argmax(1) == target).float().mean())
    assert float(loss_fn.last.surrogate) == pytest.approx(-float(loss.detach()))
    assert float(loss.detach()) != 0.0
    assert not loss_fn.last.metric.requires_grad and not loss_fn.last.surrogate.requires_grad
    assert loss_fn.last.num_bits == 32 * 9


def test_lower_is_better_decomposition_gives_plus_g():
    class Error(uniloss.MulticlassAccuracy):
        higher_is_better = False

    scores, target = torch.randn(8, 3), torch.randint(0, 3, (8,))
    a = F.uniloss(scores, target, uniloss.MulticlassAccuracy(), generator=torch.Generator().manual_seed(0), interpolation="anchors")
    b = F.uniloss(scores, target, Error(), generator=torch.Generator().manual_seed(0), interpolation="anchors")
    assert float(a) == -float(b)


# ---------------------------------------------------------------------------- undefined batches


@pytest.mark.parametrize("labels", [torch.zeros(6, dtype=torch.long), torch.ones(6, dtype=torch.long)])
def test_ap_undefined_batch_gives_attached_zero_loss(labels):
    scores = torch.randn(6, requires_grad=True)
    loss_fn = uniloss.UniLoss(uniloss.AveragePrecision(), pull_per="run", interpolation="anchors")
    loss = loss_fn(scores, labels)
    assert float(loss.detach()) == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(scores.grad, torch.zeros(6))
    assert loss_fn.last.num_bits == 0
    # the default pull on the margins still pulls every score: binary cross-entropy's gradient
    (grad,) = torch.autograd.grad(uniloss.UniLoss(uniloss.AveragePrecision(), interpolation="anchors")(scores, labels), scores)
    torch.testing.assert_close(grad, (torch.sigmoid(scores.detach()) - labels) / 6)


@pytest.mark.parametrize("interpolation", ["chain", "anchors"])
def test_no_comparison_logs_the_metric_as_the_surrogate(interpolation):
    # One class: every argmax is right and there is no comparison to relax, so the interpolated
    # value is the metric at the one configuration (1), not NaN; AP without a positive stays NaN.
    loss_fn = uniloss.UniLoss(uniloss.MulticlassAccuracy(), interpolation=interpolation)
    loss_fn(torch.randn(4, 1, requires_grad=True), torch.zeros(4, dtype=torch.long))
    assert loss_fn.last.num_bits == 0
    assert float(loss_fn.last.metric) == float(loss_fn.last.surrogate) == 1.0
    loss_fn = uniloss.UniLoss(uniloss.AveragePrecision(), interpolation=interpolation)
    loss_fn(torch.randn(4, requires_grad=True), torch.zeros(4, dtype=torch.long))
    assert torch.isnan(loss_fn.last.metric) and torch.isnan(loss_fn.last.surrogate)

def test_pck_without_visible_joint_gives_attached_zero_loss():
    heat = torch.randn(2, 3, 5, 5, requires_grad=True)
    target = uniloss.KeypointTarget(torch.ones(2, 3, 2), torch.zeros(2, 3, dtype=torch.bool), torch.ones(2))
    loss_fn = uniloss.UniLoss(uniloss.PCK(), interpolation="anchors")
    loss = loss_fn(heat, target)
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.equal(heat.grad, torch.zeros_like(heat))
    assert math.isnan(float(loss_fn.last.metric))


# ---------------------------------------------------------------------------- dtypes and devices


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_dtypes_give_finite_loss_and_gradient(dtype, device):
    g = torch.Generator().manual_seed(0)
    scores = (torch.randn(64, 10, generator=g) * 20).to(device=device, dtype=dtype).requires_grad_()
    target = torch.randint(0, 10, (64,), generator=g).to(device)
    loss = F.uniloss(scores, target, uniloss.MulticlassAccuracy(), generator=g, interpolation="anchors")
    loss.backward()
    assert loss.dtype == dtype and loss.device == scores.device
    assert torch.isfinite(loss) and torch.isfinite(scores.grad).all()
    ap_scores = (torch.randn(32, generator=g) * 50).to(device=device, dtype=dtype).requires_grad_()
    labels = (torch.arange(32) % 3 == 0).to(device)
    loss = F.uniloss(ap_scores, labels, uniloss.AveragePrecision(), generator=g, interpolation="anchors")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(ap_scores.grad).all()


def test_runs_on_device_with_cpu_generator(device):
    scores, labels = _ap_batch(16, 0, torch.float32)
    scores, labels = scores.to(device), labels.to(device)
    a = F.uniloss(scores, labels, uniloss.AveragePrecision(), generator=torch.Generator().manual_seed(1), interpolation="anchors")
    b = F.uniloss(scores.cpu(), labels.cpu(), uniloss.AveragePrecision(), generator=torch.Generator().manual_seed(1), interpolation="anchors")
    assert float(a) == pytest.approx(float(b), rel=1e-5)


def test_fraction_draws_come_from_the_generator():
    scores, target = torch.randn(16, 20), torch.randint(0, 20, (16,))
    dec = uniloss.MulticlassAccuracy(fraction=0.2)
    a = F.uniloss(scores, target, dec, generator=torch.Generator().manual_seed(3), interpolation="anchors")
    b = F.uniloss(scores, target, dec, generator=torch.Generator().manual_seed(3), interpolation="anchors")
    assert float(a) == float(b)


def test_fraction_reports_the_exact_metric_and_trains_from_scratch():
    # A fresh 100-class network: no sample right, about half of each one's comparisons wrong.
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(32, 100, generator=g)
    target = torch.randint(0, 100, (32,), generator=g)
    rows = torch.arange(32)
    top = scores.argmax(1) == target
    scores[rows[top], target[top]] -= 3.0
    assert not bool((scores.argmax(1) == target).any())
    up = {}
    for undrawn in ("right", "current"):
        dec = uniloss.MulticlassAccuracy(fraction=0.2, undrawn=undrawn)
        pushed = 0
        for seed in range(6):
            s = scores.clone().requires_grad_(True)
            loss, info = F.uniloss_with_info(s, target, dec, generator=torch.Generator().manual_seed(seed), pull=0, interpolation="anchors")
            assert float(info.metric) == 0.0  # exact, whatever the anchors assume
            loss.backward()
            pushed += int((s.grad[rows, target] < 0).sum())  # descent raises the target score
        up[undrawn] = pushed
    # "current": an undrawn wrong bit keeps every sample wrong at every anchor; all anchors
    # score 0 and the interpolation is flat. "right" (default) scores the drawn bits.
    assert up["current"] == 0
    assert up["right"] > 0.8 * 6 * 32
    # The dense path (anchors given) reports the exact metric too.
    scores[:4] += 10 * torch.nn.functional.one_hot(target[:4], 100)
    dec = uniloss.MulticlassAccuracy(fraction=0.2)
    plan = dec.prepare(scores, target, torch.Generator().manual_seed(0))
    bits = torch.rand(3, plan.selected.numel(), generator=g) < 0.5
    _, info = F.uniloss_with_info(scores, plan, dec, anchors=bits, interpolation="anchors")
    assert float(info.metric) == pytest.approx(4 / 32)


def test_fraction_exact_metric_through_cross_batch_memory():
    from uniloss.distributed import CrossBatchMemory

    g = torch.Generator().manual_seed(3)
    dec = CrossBatchMemory(uniloss.MulticlassAccuracy(fraction=0.2), size=16)
    first, y1 = torch.randn(8, 30, generator=g), torch.randint(0, 30, (8,), generator=g)
    second, y2 = torch.randn(8, 30, generator=g), torch.randint(0, 30, (8,), generator=g)
    second[:5] += 10 * torch.nn.functional.one_hot(y2[:5], 30)
    F.uniloss_with_info(first, y1, dec, generator=g, interpolation="anchors")
    _, info = F.uniloss_with_info(second, y2, dec, generator=g, interpolation="anchors")  # the batch plus the first in memory
    both, labels = torch.cat([second, first]), torch.cat([y2, y1])
    assert float(info.metric) == pytest.approx(float((both.argmax(1) == labels).float().mean()))
