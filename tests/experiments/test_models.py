"""Tests for uniloss.experiments.models: parameter counts, shapes, gradients."""

import pytest
import torch

from uniloss.experiments.models import (
    MLP,
    BasicBlock,
    Hourglass,
    ResNet20,
    StackedHourglass,
    count_parameters,
    resnet_cifar,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _assert_all_grads(module):
    missing = [name for name, p in module.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    for name, p in module.named_parameters():
        assert torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in module.parameters())


# ---------------------------------------------------------------------------------------------- MLP


def test_mlp_parameter_count_and_layers():
    net = MLP()
    assert count_parameters(net) == 784 * 500 + 500 + 500 * 300 + 300 + 300 * 1 + 1
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 500), (500, 300), (300, 1)]


def test_mlp_flattens_images():
    net = MLP(out_features=3)
    x = torch.randn(5, 1, 28, 28)
    out = net(x)
    assert out.shape == (5, 3)
    torch.testing.assert_close(out, net(x.reshape(5, 784)))


def test_mlp_gradients():
    net = MLP()
    net(torch.randn(4, 784)).sum().backward()
    _assert_all_grads(net)


# ------------------------------------------------------------------------------------------ ResNet


def test_resnet20_parameter_count():
    n3 = count_parameters(ResNet20(num_classes=10, in_channels=3))
    assert n3 == 269_722  # option A (parameter-free shortcuts)
    assert abs(n3 - 270_000) / 270_000 < 0.01  # "0.27M" of He et al., table 6
    assert count_parameters(ResNet20(num_classes=10, in_channels=1)) == 269_722 - 2 * 16 * 9
    assert count_parameters(ResNet20(shortcut="B")) == 272_474  # + 1x1 projections and their BN
    assert count_parameters(resnet_cifar(20)) == n3


def test_resnet_depths():
    # 6n + 2 layers: 18 convs in the blocks + stem conv + fc for ResNet-20
    convs = [m for m in resnet_cifar(32).modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 31
    assert abs(count_parameters(resnet_cifar(56)) - 0.85e6) / 0.85e6 < 0.01
    with pytest.raises(ValueError):
        resnet_cifar(21)


@pytest.mark.parametrize("in_channels,size", [(1, 28), (3, 32), (1, 32), (3, 28)])
def test_resnet20_shapes(in_channels, size):
    net = ResNet20(num_classes=7, in_channels=in_channels)
    out = net(torch.randn(3, in_channels, size, size))
    assert out.shape == (3, 7)
    net.eval()
    with torch.no_grad():
        assert net(torch.randn(1, in_channels, size, size)).shape == (1, 7)


def test_resnet20_gradients():
    net = ResNet20(num_classes=10, in_channels=1)
    out = net(torch.randn(4, 1, 28, 28))
    torch.nn.functional.cross_entropy(out, torch.tensor([0, 1, 2, 3])).backward()
    _assert_all_grads(net)


def test_option_a_shortcut_is_subsample_and_zero_pad():
    block = BasicBlock(16, 32, stride=2)
    assert count_parameters(block) == 16 * 32 * 9 + 32 * 32 * 9 + 4 * 32
    x = torch.randn(2, 16, 8, 8)
    sc = block._shortcut(x)
    assert sc.shape == (2, 32, 4, 4)
    torch.testing.assert_close(sc[:, 8:24], x[:, :, ::2, ::2])
    assert (sc[:, :8] == 0).all() and (sc[:, 24:] == 0).all()


def test_kaiming_init_scale():
    net = ResNet20()
    w = net.layer3[1].conv1.weight  # fan_out = 64 * 9
    assert abs(w.std().item() - (2.0 / (64 * 9)) ** 0.5) < 0.1 * (2.0 / (64 * 9)) ** 0.5
    assert torch.all(net.bn1.weight == 1) and torch.all(net.bn1.bias == 0)


# ---------------------------------------------------------------------------------------- Hourglass


def test_hourglass_module_preserves_shape():
    hg = Hourglass(depth=3, channels=16)
    assert hg(torch.randn(2, 16, 16, 16)).shape == (2, 16, 16, 16)
    assert hg(torch.randn(2, 16, 12, 20)).shape == (2, 16, 12, 20)  # not divisible by 8: still works


@pytest.mark.parametrize(
    "num_stacks,in_channels,stem,expected_hw",
    [(1, 1, "light", 32), (2, 1, "light", 32), (3, 3, "light", 32), (2, 3, "full", 16)],
)
def test_stacked_hourglass_shapes(num_stacks, in_channels, stem, expected_hw):
    net = StackedHourglass(num_stacks=num_stacks, num_joints=5, in_channels=in_channels, width=32, stem=stem)
    outs = net(torch.randn(2, in_channels, 64, 64))
    assert isinstance(outs, list) and len(outs) == num_stacks
    for o in outs:
        assert o.shape == (2, 5, expected_hw, expected_hw)


def test_stacked_hourglass_defaults():
    net = StackedHourglass(in_channels=1)
    assert net.num_stacks == 1 and net.num_joints == 16 and net.stride == 2
    assert count_parameters(net) < 500_000
    outs = net(torch.randn(2, 1, 64, 64))
    assert len(outs) == 1 and outs[0].shape == (2, 16, 32, 32)


def test_stacked_hourglass_gradients_and_intermediate_supervision():
    net = StackedHourglass(num_stacks=2, num_joints=4, in_channels=1, width=16, depth=3)
    outs = net(torch.randn(2, 1, 32, 32))
    sum(o.pow(2).mean() for o in outs).backward()
    _assert_all_grads(net)
    # a loss on the first stack alone reaches the stem but not the second stack's head
    net.zero_grad(set_to_none=True)
    net(torch.randn(2, 1, 32, 32))[0].pow(2).mean().backward()
    assert net.stem[0].weight.grad is not None and net.stem[0].weight.grad.abs().sum() > 0
    assert net.heads[1].weight.grad is None


def test_stacked_hourglass_bad_args():
    with pytest.raises(ValueError):
        StackedHourglass(stem="huge")
    with pytest.raises(ValueError):
        StackedHourglass(num_stacks=0)
