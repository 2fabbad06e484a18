"""``torch.func.grad`` (and ``functional_call``) through the loss: the engine's autograd
Functions use the ``setup_context`` form that ``torch.func`` transforms need, and the gradient
equals ``.backward()``'s."""

import pytest
import torch
from sklearn.metrics import average_precision_score

import uniloss
from uniloss import functional as F
from uniloss import zoo


def _cases():
    g = torch.Generator().manual_seed(0)
    binary = (torch.arange(24) % 4 == 0).long()
    classes = torch.randint(0, 5, (32,), generator=g)
    heat = torch.randn(2, 3, 12, 12, generator=g, dtype=torch.float64)
    joints = uniloss.KeypointTarget(torch.randint(0, 12, (2, 3, 2), generator=g).double(),
                                    torch.ones(2, 3, dtype=torch.bool), torch.full((2,), 4.0, dtype=torch.float64))

    def agreement(scores, target):  # a user's metric, traced
        return ((scores > 0) == (target > 0)).float().mean()

    return {
        "ap": (uniloss.AveragePrecision(), torch.randn(24, generator=g, dtype=torch.float64), binary),
        "accuracy": (uniloss.MulticlassAccuracy(), torch.randn(32, 5, generator=g, dtype=torch.float64), classes),
        "macro_f1": (zoo.macro_f1(5), torch.randn(32, 5, generator=g, dtype=torch.float64), classes),
        "auroc": (zoo.auroc(), torch.randn(24, generator=g, dtype=torch.float64), binary),
        "pck": (uniloss.PCK(0.5), heat, joints),
        "from_metric": (uniloss.from_metric(agreement), torch.randn(24, generator=g, dtype=torch.float64), binary),
    }


CASES = _cases()


@pytest.mark.parametrize("interpolation", ["anchors", "chain"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_func_grad_equals_backward(name, interpolation):
    dec, scores, target = CASES[name]

    def loss(s):
        return F.uniloss(s, target, dec, generator=torch.Generator().manual_seed(0), interpolation=interpolation)

    grad = torch.func.grad(loss)(scores)
    leaf = scores.clone().requires_grad_()
    loss(leaf).backward()
    assert leaf.grad.abs().max() > 0
    torch.testing.assert_close(grad, leaf.grad, rtol=1e-10, atol=1e-14)


def test_functional_call_of_a_model_with_the_module():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1).double()
    x = torch.randn(16, 3, dtype=torch.float64)
    target = (torch.arange(16) % 4 == 0).long()
    loss_fn = uniloss.UniLoss(uniloss.AveragePrecision(), generator=torch.Generator().manual_seed(0))
    params = dict(model.named_parameters())

    def loss(p):
        return loss_fn(torch.func.functional_call(model, p, (x,))[:, 0], target)

    grads = torch.func.grad(loss)(params)
    metric = float(loss_fn.last.metric)
    loss_fn.generator.manual_seed(0)
    loss(params).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-10, atol=1e-14)
    assert metric == pytest.approx(average_precision_score(target.numpy(), model(x)[:, 0].detach().numpy()))


def test_block_by_block_path_refuses_a_transform_clearly():
    dec, heat, joints = CASES["pck"]
    with pytest.raises(RuntimeError, match="chunk_bits"):
        torch.func.grad(lambda s: F.uniloss(s, joints, dec, chunk_bits=64, interpolation="anchors"))(heat)
    # the chain of PCK's runs forms no block at any size (the path "runs"): a transform runs it
    gen = torch.Generator()
    grad = torch.func.grad(lambda s: F.uniloss(s, joints, dec, chunk_bits=64, generator=gen))(heat)
    leaf = heat.clone().requires_grad_(True)
    loss, info = F.uniloss_with_info(leaf, joints, dec, chunk_bits=64)
    loss.backward()
    assert info.path == "runs" and info.num_bits > 64
    torch.testing.assert_close(grad, leaf.grad)
