"""``temperature_scale="rms"``: the temperature measured in the comparisons' root mean square."""

import pytest
import torch

import uniloss
from uniloss import functional as F


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(10, 6, generator=g, dtype=torch.float64)
    target = torch.randint(0, 6, (10,), generator=g)
    dec = uniloss.MulticlassAccuracy()
    prepared = dec.prepare(scores, target, None)
    c = dec.comparisons(scores, prepared).reshape(-1)
    anchors = uniloss.sample_anchors(dec.best(prepared).reshape(-1), c > 0, num_good=4, num_nearby=4, num_bad=4,
                                     generator=torch.Generator().manual_seed(1))
    return dec, scores, target, anchors.dense(), c


def _loss_grad(scores, target, dec, **kw):
    s = scores.clone().requires_grad_()
    loss = F.uniloss(s, target, dec, **kw)
    loss.backward()
    return loss.detach(), s.grad


@pytest.mark.parametrize("grad_scale", [1.0, "distance"])
def test_rms_scale_is_the_absolute_temperature_of_that_value(grad_scale):
    # The scale is detached: the loss and its gradient are those of the absolute temperature
    # tau * rms(c), computed by hand here.
    dec, scores, target, anchors, c = _batch()
    rms = float(c.square().mean().sqrt())
    rel = _loss_grad(scores, target, dec, anchors=anchors, temperature=0.5, temperature_scale="rms",
                     grad_scale=grad_scale)
    ab = _loss_grad(scores, target, dec, anchors=anchors, temperature=0.5 * rms, grad_scale=grad_scale)
    torch.testing.assert_close(rel[0], ab[0], rtol=1e-12, atol=0)
    torch.testing.assert_close(rel[1], ab[1], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("k", [0.01, 7.0, 1e4])
def test_rms_scale_makes_the_loss_invariant_to_the_scores_scale(k):
    # Absolute temperature: large scores saturate the sigmoid. Relative: the same loss, and a
    # gradient that scales as 1/k (the loss is a function of scores / rms).
    dec, scores, target, anchors, _ = _batch(1)
    base = _loss_grad(scores, target, dec, anchors=anchors, temperature_scale="rms")
    scaled = _loss_grad(scores * k, target, dec, anchors=anchors, temperature_scale="rms")
    torch.testing.assert_close(scaled[0], base[0], rtol=1e-10, atol=0)
    torch.testing.assert_close(scaled[1] * k, base[1], rtol=1e-8, atol=1e-14)
    absolute = _loss_grad(scores * 1e4, target, dec, anchors=anchors)
    assert absolute[1].abs().max() < 1e-12 < base[1].abs().max()  # saturated: no gradient at all


def test_rms_scale_on_an_undefined_batch_and_bad_values():
    s = torch.randn(5, requires_grad=True)
    loss = uniloss.UniLoss(uniloss.AveragePrecision(), temperature_scale="rms")(s, torch.zeros(5, dtype=torch.long))
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.equal(s.grad, torch.zeros(5))
    with pytest.raises(ValueError, match="temperature_scale"):
        uniloss.UniLoss(uniloss.AveragePrecision(), temperature_scale="max")
    with pytest.raises(ValueError, match="temperature_scale"):
        F.uniloss(s, torch.ones(5, dtype=torch.long), uniloss.AveragePrecision(), temperature_scale=1.0)
