"""Regressions for issue #16: tensor caches under inference mode, NaN gradients on saturated
batches, and the undefined-batch loss on overflowing scores."""

import pytest
import torch

import uniloss
from uniloss import _anchors, _metrics, _structured, decoders, functional, zoo
from uniloss._interpolation import idw_closed_form
from uniloss.decoders import RankingTarget
from uniloss.functional import uniloss as uniloss_fn, zero_loss


# ---------------------------------------------------------------------------- bug 1: caches


def _keypoints(n=2, j=1, h=3, w=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    keypoints = torch.stack([torch.randint(0, w, (n, j), generator=g), torch.randint(0, h, (n, j), generator=g)], -1)
    target = uniloss.KeypointTarget(keypoints.float(), torch.ones(n, j, dtype=torch.bool), torch.full((n,), 2.0))
    return (n, j, h, w), target


def _cache_cases():
    labels3 = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    binary = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    pixels2 = torch.tensor([[[0, 1, 1], [1, 0, 0], [0, 1, 0]], [[1, 1, 0], [0, 0, 1], [1, 0, 1]]])
    pixels3 = pixels2 + torch.tensor([[[2, 0, 0], [0, 0, 2], [0, 0, 0]], [[0, 0, 2], [0, 2, 0], [0, 0, 0]]])
    ranking = RankingTarget(torch.tensor([2, 0, 1, 1, 0, 2]), torch.tensor([0, 0, 0, 1, 1, 1]))
    pose_shape, pose_target = _keypoints()
    return [
        ("macro_f1", lambda: zoo.macro_f1(3), (8, 3), labels3),
        ("macro_f1_all_pairs", lambda: zoo.macro_f1(3, pairs="all"), (8, 3), labels3),
        ("top_k_accuracy", lambda: zoo.top_k_accuracy(2), (8, 3), labels3),
        ("mean_iou", lambda: zoo.mean_iou(2), (2, 2, 3, 3), pixels2),
        ("mean_iou_all_pairs", lambda: zoo.mean_iou(3, pairs="all"), (2, 3, 3, 3), pixels3),
        ("ndcg_at_k", lambda: zoo.ndcg_at_k(3), (6,), ranking),
        ("auroc", lambda: zoo.auroc(), (8,), binary),
        ("pck_zoo", lambda: zoo.pck(0.5), pose_shape, pose_target),
        ("average_precision", lambda: uniloss.AveragePrecision(), (8,), binary),
        ("multiclass_accuracy", lambda: uniloss.MulticlassAccuracy(), (8, 3), labels3),
        ("pck", lambda: uniloss.PCK(0.5), pose_shape, pose_target),
    ]


def _inference_cases():
    cases = [(name, make, shape, target, {}) for name, make, shape, target in _cache_cases()]
    for name, make, shape, target in _cache_cases():
        if name in ("average_precision", "multiclass_accuracy"):  # per-run counts
            cases.append((name + "_all_good", make, shape, target, {"good_anchors": "all"}))
    return cases


@pytest.mark.parametrize("name,make,shape,target,options", _inference_cases(), ids=[c[0] for c in _inference_cases()])
def test_inference_mode_first_call_then_training_step(empty_caches, name, make, shape, target, options):
    loss_fn = uniloss.UniLoss(make(), **options)
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():  # Lightning's sanity check: the first call fills the caches
        loss_fn(torch.randn(shape, generator=g), target)
    scores = torch.randn(shape, generator=g, requires_grad=True)
    loss = loss_fn(scores, target)
    loss.backward()  # raised "Inference tensors cannot be saved for backward"
    assert torch.isfinite(scores.grad).all()


CACHES = {
    # name: (a call that fills the cache, the tensors the cache then holds)
    "triu_pairs": (lambda: decoders._triu_pairs(4, torch.device("cpu")),
                   lambda: [t for pair in decoders._TRIU_PAIRS.values() for t in pair]),
    "ranks": (lambda: _metrics._ranks(5, torch.device("cpu"), torch.float32), _metrics._RANKS.values),
    "arange": (lambda: _metrics._arange(5, torch.device("cpu")), _metrics._ARANGE.values),
    "all_true": (lambda: _metrics.all_true(3, torch.device("cpu")), _metrics._TRUE.values),
    "bit_table": (lambda: _structured.bit_table(torch.device("cpu"), torch.float32), _structured._TABLES.values),
    "shifts_bytes": (lambda: _anchors.unpack_codes(torch.zeros(1, 4, dtype=torch.uint8), 8), _anchors._SHIFTS.values),
    "shifts_words": (lambda: _anchors.unpack_codes(torch.zeros(1, 300, dtype=torch.uint8), 8), _anchors._SHIFTS.values),
    "padding": (lambda: functional._padding(6, torch.tensor(4)), functional._PADDING.values),
}


@pytest.mark.parametrize("name", sorted(CACHES))
def test_cached_tensors_are_not_inference_tensors(empty_caches, name):
    fill, contents = CACHES[name]
    with torch.inference_mode():
        fill()
    held = contents()
    assert held and not any(t.is_inference() for t in held)
    fill()  # outside inference mode: still a cache hit, the same tensors
    assert len(contents()) == len(held) and all(a is b for a, b in zip(contents(), held))


@pytest.mark.parametrize("name", sorted(CACHES))
def test_a_cache_is_not_filled_inside_a_func_transform(empty_caches, name):
    """A first call inside ``torch.func.grad`` (or ``vmap``) makes its constants afresh: kept,
    they would be the transform's wrapped tensors after it ends (AP's every-bit-one view was then
    no longer recognised, and every later step took the general path)."""
    fill, contents = CACHES[name]
    torch.func.grad(lambda x: (fill(), x.sum())[1])(torch.ones(2))
    assert not contents()
    fill()
    held = contents()
    assert held and not any(torch._C._functorch.is_functorch_wrapped_tensor(t) for t in held)


def test_ap_keeps_its_fast_path_after_a_func_transform(empty_caches):
    """The every-bit-one view of AP's best configuration is recognised after ``torch.func.grad``
    ran the loss first."""
    scores, target = torch.randn(12, dtype=torch.float64), (torch.arange(12) % 3 == 0).long()
    torch.func.grad(lambda s: uniloss.functional.uniloss(s, target, uniloss.AveragePrecision()))(scores)
    assert _metrics.is_all_true(_metrics.all_true(12, torch.device("cpu")))


# ---------------------------------------------------------------------------- bug 2: saturated batches


# Small batches whose comparisons are all far from zero (float32): the relaxed point sits all but
# on an anchor. Each gave NaN gradients (with a finite loss) for most generator seeds.
SATURATED = {
    "average_precision": ([40.0, 0.0], [1, 0], uniloss.AveragePrecision),
    "average_precision_n4": ([346.0, -101.0, -441.0, -542.0], [1, 0, 1, 0], uniloss.AveragePrecision),
    "top_k_accuracy": ([[484.0, 340.0, 681.0]], [1], lambda: zoo.top_k_accuracy(2)),
    "multiclass_accuracy": ([[23.0, 376.0, -226.0]], [2], uniloss.MulticlassAccuracy),
    "multiclass_accuracy_n2": ([[202.0, -179.0, -458.0], [-384.0, -550.0, -607.0]], [2, 1], uniloss.MulticlassAccuracy),
    "auroc": ([40.0, 0.0, -50.0], [1, 0, 0], zoo.auroc),
    "f_beta": ([40.0, -60.0, 90.0], [1, 0, 0], zoo.f_beta),
    "ndcg_at_k": ([40.0, 0.0, 90.0], [2, 0, 1], lambda: zoo.ndcg_at_k(3)),
    "mean_iou": ([[[[37.0], [173.0]], [[403.0], [666.0]]]], [[[0], [0]]], lambda: zoo.mean_iou(2)),
    "mean_iou_3": ([[[[-375.0], [29.0]], [[85.0], [123.0]], [[-277.0], [-55.0]]]], [[[0], [0]]], lambda: zoo.mean_iou(3)),
}


def _check_saturated(values, target, make, **options):
    for seed in range(20):
        scores = torch.tensor(values, requires_grad=True)
        loss = uniloss_fn(scores, torch.tensor(target), make(), generator=torch.Generator().manual_seed(seed), **options)
        loss.backward()
        assert torch.isfinite(loss), seed
        assert torch.isfinite(scores.grad).all(), (seed, scores.grad)


@pytest.mark.parametrize("grad_scale", ["distance", 1.0])
@pytest.mark.parametrize("name", sorted(SATURATED))
def test_saturated_small_batch_gradients_are_finite(name, grad_scale):
    _check_saturated(*SATURATED[name], grad_scale=grad_scale)


def test_saturated_small_batch_gradients_are_finite_cross_entropy():
    _check_saturated([627.0, -143.0, 699.0], [1, 0, 0], uniloss.AveragePrecision, distance="cross_entropy")


def test_saturated_small_batch_gradients_are_finite_all_good_anchors():
    _check_saturated([344.0, -637.0, -190.0, -308.0], [1, 0, 0, 1], uniloss.AveragePrecision, good_anchors="all")


@pytest.mark.parametrize("near", [1.8e-35, 1e-30, 1e-20])
def test_idw_closed_form_near_a_hit(near):
    """Ten anchors (one configuration) all but on the point, 39 at distance 1: the interpolation is
    their value and the gradient in the squared distances is finite and right (it overflowed)."""
    sq = torch.cat([torch.full((10,), near), torch.ones(39)])
    values = torch.cat([torch.ones(10), torch.full((39,), 0.5)])
    g, grad, harmonic = idw_closed_form(sq, values)
    assert abs(float(g) - 1.0) <= 2 * torch.finfo(torch.float32).eps
    assert torch.isfinite(grad).all() and torch.isfinite(harmonic)
    # dg/d(d_0^2) = (g - v_0) rho_0 / (2 P d_0^2) with g - v_0 = -19.5 d_0 / 10 and P = 10 / d_0,
    # to first order in d_0: -19.5 / (200 d_0).
    d0 = near ** 0.5
    assert torch.allclose(grad[:10], torch.full((10,), -19.5 / (200.0 * d0)), rtol=1e-4)
    assert torch.allclose(grad[10:], torch.full((39,), 0.5 * d0 / 20.0), rtol=1e-4)


def test_idw_closed_form_exact_hit_has_zero_gradient():
    sq = torch.cat([torch.zeros(3), torch.ones(5), torch.full((4,), 2.0)])
    values = torch.cat([torch.ones(3), torch.full((5,), 0.5), torch.zeros(4)])
    g, grad, harmonic = idw_closed_form(sq, values)
    assert g == 1.0 and harmonic < 1e-15
    assert torch.equal(grad, torch.zeros_like(grad))


def test_idw_closed_form_matches_autograd_on_ordinary_inputs():
    g = torch.Generator().manual_seed(0)
    sq = (torch.rand(20, generator=g, dtype=torch.float64) * 3 + 0.1).requires_grad_()
    values = torch.rand(20, generator=g, dtype=torch.float64)
    weights = torch.rand(20, generator=g, dtype=torch.float64) + 0.5
    for w in (None, weights):
        rho = sq.rsqrt() * (1.0 if w is None else w)
        ref = (rho * values).sum() / rho.sum()
        (expected,) = torch.autograd.grad(ref, sq)
        out, grad, _ = idw_closed_form(sq.detach(), values, w)
        assert torch.allclose(out, ref.detach(), rtol=1e-12)
        assert torch.allclose(grad, expected, rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------------------- bug 3: undefined batch


@pytest.mark.parametrize("make", [uniloss.AveragePrecision, zoo.auroc], ids=["average_precision", "auroc"])
def test_undefined_batch_loss_is_exact_zero_when_the_sum_overflows(make):
    scores = torch.full((64,), 5000.0, dtype=torch.float16, requires_grad=True)
    assert torch.isinf(scores.detach().sum())  # the old scores.sum() * 0.0 was NaN
    loss = uniloss_fn(scores, torch.zeros(64, dtype=torch.long), make(), pull_per="run")
    assert loss.requires_grad
    assert loss.dtype == torch.float16
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(scores.grad, torch.zeros_like(scores))
    # the default pull on the margins: binary cross-entropy's gradient, sigmoid(5000) / 64, finite
    (grad,) = torch.autograd.grad(uniloss_fn(scores, torch.zeros(64, dtype=torch.long), make()), scores)
    assert grad.dtype == torch.float16 and torch.equal(grad, torch.full_like(grad, 1 / 64))


def test_undefined_batch_loss_through_the_module():
    scores = torch.full((64,), 5000.0, dtype=torch.float16, requires_grad=True)
    loss = uniloss.UniLoss(uniloss.AveragePrecision(), pull_per="run")(scores, torch.zeros(64, dtype=torch.long))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(scores.grad, torch.zeros_like(scores))
    loss = uniloss.UniLoss(uniloss.AveragePrecision())(scores, torch.zeros(64, dtype=torch.long))
    assert loss.item() == 0.0 and torch.isfinite(torch.autograd.grad(loss, scores)[0]).all()


def test_zero_loss_reads_no_score():
    scores = torch.tensor([[float("inf"), 1.0], [float("nan"), -float("inf")]], requires_grad=True)
    loss = zero_loss(scores)
    assert loss.item() == 0.0 and loss.requires_grad and loss.dim() == 0
    loss.backward()
    assert torch.equal(scores.grad, torch.zeros_like(scores))
