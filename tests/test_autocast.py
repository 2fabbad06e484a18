"""The loss under ``torch.autocast``: computed as outside it, as PyTorch's own losses are.

Found 2026-12-01: under CPU bfloat16 autocast the engine's products and sums (the anchors'
distances, the closed-form gradient) ran in bfloat16, which moved the gradient by about 1e-4
relative and the loss by 1e-5 for float32 scores: the same call, another result.
"""

import pytest
import torch

import uniloss
from uniloss import zoo

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _cases():
    g = torch.Generator().manual_seed(0)
    heat = uniloss.KeypointTarget(torch.rand(2, 3, 2, generator=g) * 15, torch.ones(2, 3, dtype=torch.bool),
                                  torch.full((2,), 8.0))
    return [
        ("accuracy", uniloss.MulticlassAccuracy(), torch.randn(2048, 10, generator=g),
         torch.randint(0, 10, (2048,), generator=g), {}),
        ("ap", uniloss.AveragePrecision(), torch.randn(128, generator=g), (torch.rand(128, generator=g) < 0.3).long(), {}),
        ("ndcg", zoo.ndcg_at_k(5), torch.randn(200, generator=g), torch.randint(0, 3, (200,), generator=g), {}),
        ("pck blocks", uniloss.PCK(0.5), torch.randn(2, 3, 16, 16, generator=g), heat, {"chunk_bits": 4096}),
    ]


def _call(dec, scores, target, opts, device, dtype=None):
    x = scores.to(device).requires_grad_()
    target = target.to(device) if isinstance(target, torch.Tensor) else type(target)(*(t.to(device) for t in target))
    fn = uniloss.UniLoss(dec, generator=torch.Generator(device).manual_seed(0), **opts)
    with torch.autocast(device, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        loss = fn(x, target)
    loss.backward()
    return loss.detach(), x.grad, fn.last


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", _cases(), ids=lambda c: c[0])
def test_loss_under_autocast_is_the_loss_outside(case, device):
    _, dec, scores, target, opts = case
    dtypes = [torch.bfloat16] + ([torch.float16] if device == "cuda" else [])
    plain, grad, info = _call(dec, scores, target, opts, device)
    for dtype in dtypes:
        loss, grad_ac, info_ac = _call(dec, scores, target, opts, device, dtype)
        assert loss.dtype == torch.float32  # float32 scores: a float32 loss, as outside
        torch.testing.assert_close(loss, plain, rtol=0, atol=0)
        torch.testing.assert_close(grad_ac, grad, rtol=0, atol=0)
        assert float(info_ac.metric) == float(info.metric) and info_ac.path == info.path


def test_model_under_autocast_trains():
    # the usual mixed-precision step: the model's bfloat16 output straight into the loss
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 5)
    x, y = torch.randn(64, 8), torch.randint(0, 5, (64,))
    loss_fn = uniloss.UniLoss(uniloss.MulticlassAccuracy(), generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = model(x)
        loss = loss_fn(scores, y)
    assert scores.dtype == torch.bfloat16 and loss.dtype == torch.bfloat16
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in model.parameters())
    assert not torch.is_autocast_enabled("cpu")  # the context was left as it was


def test_a_device_type_autocast_does_not_know_is_not_autocast():
    # torch.is_autocast_enabled("meta") raises; the loss's check must not
    from uniloss.functional import _autocast_enabled

    assert _autocast_enabled("meta") is False
    assert _autocast_enabled("cpu") is False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _autocast_enabled("cpu") is True
