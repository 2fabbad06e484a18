"""The loss's options: one table (``uniloss.functional.OPTIONS``) that the functional form, the
module and the argument checks share."""

import inspect

import pytest
import torch

import uniloss
from uniloss import functional as F
from uniloss.functional import OPTIONS


def _keywords(fn, skip=()):
    params = inspect.signature(fn).parameters.values()
    return [(p.name, p.default) for p in params if p.kind is p.KEYWORD_ONLY and p.name not in skip]


@pytest.mark.parametrize("fn", [F.uniloss, F.uniloss_with_info, uniloss.UniLoss.__init__],
                         ids=["uniloss", "uniloss_with_info", "UniLoss"])
def test_signatures_are_the_table(fn):
    """Each signature takes the table's options, in its order, with its defaults (a default
    changed in one place only, or an option added to one signature, fails here)."""
    assert _keywords(fn, skip=("anchors",)) == list(OPTIONS.items())


def test_functions_take_anchors_after_generator():
    names = [name for name, _ in _keywords(F.uniloss)]
    assert names[names.index("generator") + 1] == "anchors"
    assert [name for name, _ in _keywords(F.uniloss_with_info)] == names


# One value per option that the module stores and forwards, other than the default, and a call
# that differs with it (the anchors' generator state fixed).
_OTHER = dict(num_good=3, num_nearby=2, num_bad=5, temperature=2.5, grad_scale=3.0,
              good_anchors="all", temperature_scale="rms", distance="cross_entropy", pull=0.5,
              nearby="informative", pull_per="run", step="sum", pull_weights="equal", chunk_bits=1 << 30,
              validate_args=False)
_OTHER["interpolation"] = "chain" if OPTIONS["interpolation"] == "anchors" else "anchors"


@pytest.mark.parametrize("name", sorted(_OTHER))
def test_module_forwards_each_option(name):
    """``UniLoss(m, **{name: v})(s, y)`` equals ``uniloss(s, y, m, **{name: v})``: the module stores
    every option and passes it on (an option dropped on the way gives the default's loss)."""
    assert name in OPTIONS and _OTHER[name] != OPTIONS[name]
    scores = torch.randn(12, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    target = torch.arange(12) % 4
    metric: uniloss.Decomposition = uniloss.MulticlassAccuracy()
    # the anchors' options on the anchors' interpolation; the step's size is the pull's by default
    base = {} if name == "interpolation" else {"interpolation": "anchors"}
    if name == "grad_scale":
        base["step"] = "sum"
    if name == "pull_weights":  # classes of unequal counts, which balanced accuracy weighs unequally
        metric, target = uniloss.zoo.balanced_accuracy(4), torch.tensor([0] * 6 + [1, 1, 1, 2, 2, 3])
    if name == "pull_per":  # binary labels, which the default pulls per sample
        metric, scores, target = uniloss.AveragePrecision(), scores[:, 0], target % 2
    kw = {**base, name: _OTHER[name]}

    def loss_and_grad(call):
        s = scores.clone().requires_grad_(True)
        loss = call(s)
        loss.backward()
        return torch.cat([loss.detach().reshape(1), s.grad.flatten()])

    module = uniloss.UniLoss(metric, generator=torch.Generator().manual_seed(0), **kw)
    assert getattr(module, name) == _OTHER[name]
    got = loss_and_grad(lambda s: module(s, target))
    want = loss_and_grad(lambda s: F.uniloss(s, target, metric, generator=torch.Generator().manual_seed(0), **kw))
    default = loss_and_grad(lambda s: F.uniloss(s, target, metric, generator=torch.Generator().manual_seed(0), **base))
    assert torch.equal(got, want)
    if name not in ("chunk_bits", "validate_args"):  # these two change the path or checks, not the values
        assert not torch.allclose(got, default)


@pytest.mark.parametrize("name, bad, error", [
    ("num_good", -1, ValueError), ("temperature", 0.0, ValueError), ("grad_scale", -1.0, ValueError),
    ("chunk_bits", 0, ValueError), ("pull", -1.0, ValueError), ("generator", 3, TypeError),
    ("good_anchors", "some", ValueError), ("temperature_scale", "max", ValueError),
    ("distance", "cosine", ValueError), ("nearby", "most", ValueError), ("pull_per", "batch", ValueError),
    ("step", "big", ValueError), ("pull_weights", "inverse", ValueError),
])
def test_bad_options_fail_in_both_forms(name, bad, error):
    scores, target = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    with pytest.raises(error, match=name):
        uniloss.UniLoss(uniloss.MulticlassAccuracy(), **{name: bad})
    with pytest.raises(error, match=name):
        F.uniloss(scores, target, uniloss.MulticlassAccuracy(), **{name: bad})
