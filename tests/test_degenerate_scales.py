"""Regressions found by fuzzing every metric on degenerate inputs (2026-12-01): a temperature in
units of the comparisons' RMS when every comparison is 0 (and, for float16 scores, when it is
below float16's ``sqrt(tiny)``), and the normalised gradient scale when the interpolation's push
underflows. Each gave inf or NaN gradients with a finite loss."""

import pytest
import torch

import uniloss
from uniloss import _limits, zoo
from uniloss._interpolation import comparison_scale, gradient_scale, rms_unit


def _constant_cases():
    """``(name, decomposition, constant scores, target)``: every comparison is exactly 0."""
    y = torch.zeros(16, dtype=torch.long)
    y[3] = 1
    heat_target = uniloss.KeypointTarget(torch.tensor([[[1.0, 2.0]]]), torch.tensor([[True]]), torch.tensor([2.0]))
    return [
        ("ap", uniloss.AveragePrecision(), torch.full((16,), 0.5), y),
        ("accuracy", uniloss.MulticlassAccuracy(), torch.full((7, 5), 0.5), torch.arange(7) % 5),
        ("accuracy fraction", uniloss.MulticlassAccuracy(fraction=0.5), torch.full((4, 3), 0.5), torch.tensor([0, 1, 2, 0])),
        ("pck", uniloss.PCK(0.5), torch.full((1, 1, 4, 4), 0.5), heat_target),
        ("recall", zoo.recall(), torch.zeros(1), torch.tensor([1])),
        ("auroc", zoo.auroc(), torch.full((8,), -1.0), torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])),
        ("macro-F1", zoo.macro_f1(4), torch.full((6, 4), 2.0), torch.tensor([0, 1, 2, 3, 0, 1])),
        ("dice", zoo.dice(2), torch.full((1, 2, 3, 3), 0.5), torch.randint(0, 2, (1, 3, 3), generator=torch.Generator().manual_seed(0))),
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", _constant_cases(), ids=lambda c: c[0])
def test_rms_temperature_on_constant_scores_is_finite_and_absolute(case, dtype):
    # RMS 0 used to be floored at `tiny`: 1 / temperature ~ 1e38 (float32) overflowed the gradient
    _, dec, scores, target = case
    x = scores.detach().to(dtype).clone().requires_grad_()
    loss_fn = uniloss.UniLoss(dec, temperature_scale="rms", generator=torch.Generator().manual_seed(0))
    loss = loss_fn(x, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    # with nothing to measure the temperature is the absolute one: the loss and gradient of temperature_scale=None
    y = scores.detach().to(dtype).clone().requires_grad_()
    plain = uniloss.UniLoss(dec, generator=torch.Generator().manual_seed(0))(y, target)
    plain.backward()
    torch.testing.assert_close(loss, plain)
    torch.testing.assert_close(x.grad, y.grad)


def test_rms_temperature_of_the_block_path_on_constant_scores(monkeypatch):
    monkeypatch.setattr(_limits, "LIMITS", _limits.LIMITS.override(chunk_bits=8))
    target = uniloss.KeypointTarget(torch.tensor([[[1.0, 2.0]]]), torch.tensor([[True]]), torch.tensor([2.0]))
    x = torch.full((1, 1, 4, 4), 0.5, requires_grad=True)
    loss_fn = uniloss.UniLoss(uniloss.PCK(0.5), temperature_scale="rms", generator=torch.Generator().manual_seed(0))
    loss = loss_fn(x, target)
    loss.backward()
    assert loss_fn.last.path == "chunked"
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rms_unit(dtype):
    tiny = torch.finfo(dtype).tiny
    assert float(rms_unit(torch.tensor(0.0, dtype=dtype))) == 1.0
    assert float(rms_unit(torch.tensor(tiny, dtype=dtype))) == pytest.approx(tiny ** 0.5)
    assert float(rms_unit(torch.tensor(0.25, dtype=dtype))) == 0.25  # any realistic scale: itself
    c = torch.tensor([3.0, -4.0], dtype=dtype)
    assert float(comparison_scale(c, "rms")) == pytest.approx((12.5) ** 0.5)


def test_rms_unit_floor_follows_the_scores_dtype():
    # float16 scores are relaxed in float32, but their gradient leaves in float16
    half = torch.finfo(torch.float16).tiny ** 0.5  # 7.8e-3
    rms = torch.tensor(1e-6)
    assert float(rms_unit(rms, torch.float16)) == pytest.approx(half)
    assert float(rms_unit(rms, torch.float32)) == pytest.approx(1e-6)
    assert float(rms_unit(rms, torch.bfloat16)) == pytest.approx(1e-6)  # float32's range
    assert float(rms_unit(torch.tensor(0.25), torch.float16)) == 0.25
    c = torch.tensor([1e-6, -1e-6])
    assert float(comparison_scale(c, "rms", torch.float16)) == pytest.approx(half)


def _tiny_half_cases():
    """Found by fuzzing float16 (67 of 12,712 cases, every one with ``temperature_scale="rms"``):
    comparisons of about 1e-6 made ``1 / temperature`` about 1e6, beyond float16's 65,504."""
    g = torch.Generator().manual_seed(0)
    heat = uniloss.KeypointTarget(torch.tensor([[[1.0, 2.0]]]), torch.tensor([[True]]), torch.tensor([2.0]))
    return [
        ("accuracy", uniloss.MulticlassAccuracy(), torch.tensor([[6.6e-07, 1.13e-06]]), torch.tensor([1]), {}),
        ("ap", uniloss.AveragePrecision(), torch.tensor([-4.2e-07, 1.3e-06, -1.8e-06]), torch.tensor([0, 1, 1]), {}),
        ("ndcg", zoo.ndcg_at_k(3), torch.tensor([-7.7e-07, 7.2e-07, -2.0e-06]), torch.tensor([0, 0, 1]), {}),
        ("pck", uniloss.PCK(0.5), torch.randn(1, 1, 4, 4, generator=g) * 1e-6, heat, {}),
        ("pck blocks", uniloss.PCK(0.5), torch.randn(1, 1, 4, 4, generator=g) * 1e-6, heat, {"chunk_bits": 8}),
    ]


@pytest.mark.parametrize("static", [False, True], ids=["exact", "static"])
@pytest.mark.parametrize("case", _tiny_half_cases(), ids=lambda c: c[0])
def test_rms_temperature_on_tiny_float16_scores_is_finite(case, static):
    _, dec, scores, target, opts = case
    x = scores.to(torch.float16).requires_grad_()
    loss_fn = uniloss.UniLoss(dec, temperature_scale="rms", pull_per="comparison",
                              generator=torch.Generator().manual_seed(0), **opts)
    with _limits.limits(cpu_static_max_bits=1 << 22 if static else 0):
        loss = loss_fn(x, target)
    loss.backward()
    assert torch.isfinite(loss) and x.grad is not None and torch.isfinite(x.grad).all()
    assert x.grad.abs().max() > 0  # finite because the unit is floored, not because the push vanished


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_normalized_scale_on_saturated_scores_is_finite(seed):
    # the interpolation's push underflows to a subnormal: 1 / push overflowed the backward pass
    x = torch.tensor([365.13177108313033, -5537.387548659693, -915.0879713355854], dtype=torch.float64,
                     requires_grad=True)
    loss_fn = uniloss.UniLoss(zoo.recall(), grad_scale="normalized", pull=0.3, generator=torch.Generator().manual_seed(seed))
    loss = loss_fn(x, torch.tensor([1, 1, 1]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    x32 = torch.tensor([-2990.296630859375, 2886.93505859375, -2939.85791015625]).reshape(1, 3).requires_grad_()
    loss = uniloss.UniLoss(zoo.macro_f1(3), grad_scale="normalized", pull_weights="equal", num_good=2,
                           generator=torch.Generator().manual_seed(seed))(x32, torch.tensor([2]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x32.grad).all()


def test_normalized_scale_ignores_an_underflowed_push_only():
    harmonic = torch.tensor(3.0, dtype=torch.float64)
    for push, expected in [(0.5, 2.0), (1e-100, 1e100), (1e-200, 1.0), (0.0, 1.0)]:
        value = torch.tensor(push, dtype=torch.float64)
        scale, _ = gradient_scale("normalized", harmonic, lambda: value)
        assert float(scale) == pytest.approx(expected)


@pytest.mark.parametrize("interpolation", ["chain", "anchors"])
@pytest.mark.parametrize("name", ["accuracy", "macro-F1"])
def test_float16_scores_at_a_small_temperature_give_a_finite_loss_and_gradient(name, interpolation):
    """The pull per run (cross-entropy of ``scores / temperature``) ran in the scores' dtype: at
    ``temperature=1e-5`` float16 overflowed (1e5 > 65,504) and the loss was NaN (the audit of
    2026-12-03); it is relaxed in float32 as the comparisons are. (Below about 1e-7 the gradient
    itself, ~1 / temperature, leaves float16's range.)"""
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(8, 10, generator=g).half().requires_grad_()
    target = torch.randint(0, 10, (8,), generator=g)
    metric = uniloss.MulticlassAccuracy() if name == "accuracy" else zoo.macro_f1(10)
    loss = uniloss.UniLoss(metric, temperature=1e-5, interpolation=interpolation)(scores, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(scores.grad).all()
