"""Network architectures used in the UniLoss experiments (Liu, Wang & Deng, ECCV 2020).

Everything here is written in plain :mod:`torch` (no torchvision):

* :class:`MLP` -- the 3-layer fully connected MNIST network (784-500-300-out, ReLU) of the
  paper's binary-classification / average-precision experiment.
* :class:`ResNet20` and :func:`resnet_cifar` -- the CIFAR ResNets of He et al. 2016
  ("Deep Residual Learning for Image Recognition", section 4.2): a 3x3 stem, three stages of
  ``n`` basic blocks with 16/32/64 channels, option-A (parameter-free) identity shortcuts,
  global average pooling and a linear head; ``depth = 6n + 2`` (ResNet-20 has ``n = 3``).
* :class:`StackedHourglass` -- the stacked hourglass network of Newell, Yang & Deng 2016
  ("Stacked Hourglass Networks for Human Pose Estimation") with residual bottleneck blocks and
  intermediate supervision, scaled down so that it trains on a small CPU for 64x64 inputs.

Example::

    >>> import torch
    >>> from uniloss.experiments.models import MLP, ResNet20, StackedHourglass
    >>> MLP()(torch.randn(8, 1, 28, 28)).shape
    torch.Size([8, 1])
    >>> ResNet20(num_classes=10, in_channels=1)(torch.randn(8, 1, 28, 28)).shape
    torch.Size([8, 10])
    >>> [h.shape for h in StackedHourglass(num_stacks=2, num_joints=5, in_channels=1)(torch.randn(2, 1, 64, 64))]
    [torch.Size([2, 5, 32, 32]), torch.Size([2, 5, 32, 32])]
"""

from __future__ import annotations

from typing import List, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "MLP",
    "BasicBlock",
    "CifarResNet",
    "ResNet20",
    "resnet_cifar",
    "Residual",
    "Hourglass",
    "StackedHourglass",
    "count_parameters",
]


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of ``module``.

    Example::

        >>> count_parameters(ResNet20())
        269722
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


# ----------------------------------------------------------------------------------------------
# MLP
# ----------------------------------------------------------------------------------------------


class MLP(nn.Module):
    """Fully connected ReLU network, by default the paper's 3-layer MNIST net 784-500-300-1.

    Args:
        in_features: size of the flattened input (784 for 28x28 MNIST).
        hidden: widths of the hidden layers (each followed by a ReLU).
        out_features: number of outputs (1 = a single score/logit for binary classification).

    Shapes:
        input ``[N, 1, 28, 28]``, ``[N, 784]`` or anything whose trailing dims multiply to
        ``in_features`` (everything after dim 0 is flattened); output ``[N, out_features]``
        (raw scores, no final activation).

    Example::

        >>> net = MLP()
        >>> net(torch.randn(4, 1, 28, 28)).shape
        torch.Size([4, 1])
        >>> MLP(in_features=10, hidden=(32,), out_features=3)(torch.randn(4, 10)).shape
        torch.Size([4, 3])
    """

    def __init__(
        self,
        in_features: int = 784,
        hidden: Sequence[int] = (500, 300),
        out_features: int = 1,
    ) -> None:
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        layers: List[nn.Module] = []
        prev = self.in_features
        for h in hidden:
            layers += [nn.Linear(prev, int(h)), nn.ReLU(inplace=True)]
            prev = int(h)
        layers.append(nn.Linear(prev, self.out_features))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``[N, ...]`` with ``in_features`` elements per sample -> ``[N, out_features]``."""
        return self.net(x.reshape(x.shape[0], -1))


# ----------------------------------------------------------------------------------------------
# CIFAR ResNets (He et al. 2016, section 4.2)
# ----------------------------------------------------------------------------------------------


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Basic residual block: conv3x3-BN-ReLU-conv3x3-BN, plus shortcut, then ReLU.

    Args:
        in_planes: input channels.
        planes: output channels.
        stride: stride of the first conv (2 halves the resolution).
        shortcut: ``"A"`` (He et al.'s option A, used for the CIFAR ResNets: identity, with
            stride-2 subsampling and zero-padding of the extra channels when the shape changes;
            parameter free) or ``"B"`` (1x1 conv + BN projection when the shape changes).

    Shapes:
        ``[N, in_planes, H, W]`` -> ``[N, planes, ceil(H / stride), ceil(W / stride)]``.

    Example::

        >>> BasicBlock(16, 32, stride=2)(torch.randn(2, 16, 28, 28)).shape
        torch.Size([2, 32, 14, 14])
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A") -> None:
        super().__init__()
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        if planes < in_planes:
            raise ValueError("BasicBlock cannot reduce the number of channels")
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride = stride
        self.extra_channels = planes - in_planes
        self.shortcut_type = shortcut
        self.needs_projection = stride != 1 or in_planes != planes
        self.projection: nn.Module
        if shortcut == "B" and self.needs_projection:
            self.projection = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        else:
            self.projection = nn.Identity()

    def _shortcut(self, x: Tensor) -> Tensor:
        if not self.needs_projection:
            return x
        if self.shortcut_type == "B":
            return self.projection(x)
        # option A: subsample spatially, zero-pad the new channels (half on each side as in the
        # reference implementations; the split does not matter for the function class).
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra_channels:
            lo = self.extra_channels // 2
            x = F.pad(x, (0, 0, 0, 0, lo, self.extra_channels - lo))
        return x

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self._shortcut(x), inplace=True)


class CifarResNet(nn.Module):
    """CIFAR-style ResNet of depth ``6n + 2`` (He et al. 2016, section 4.2).

    Stem conv3x3(16)-BN-ReLU; three stages of ``n`` :class:`BasicBlock` with 16, 32, 64
    channels (the first block of stages 2 and 3 has stride 2); global average pooling; linear
    head. Convolutions and the linear layer use Kaiming-normal init, BN starts at (1, 0).

    Args:
        depth: total depth, ``6n + 2`` (20, 32, 44, 56, 110, ...).
        num_classes: outputs of the linear head.
        in_channels: input channels (1 for MNIST, 3 for CIFAR).
        shortcut: ``"A"`` (default, parameter-free, as in the paper) or ``"B"`` (projections).

    Shapes:
        input ``[N, in_channels, H, W]`` (any H, W >= 4; 28x28 and 32x32 are the intended sizes:
        feature maps are HxW, H/2xW/2 and H/4xW/4 in the three stages), output
        ``[N, num_classes]`` logits.

    Example::

        >>> net = CifarResNet(depth=32, num_classes=100)
        >>> net(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 100])
    """

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        in_channels: int = 3,
        shortcut: str = "A",
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6n + 2 with n >= 1, got {depth}")
        n = (depth - 2) // 6
        self.depth = depth
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.conv1 = _conv3x3(in_channels, 16)
        self.bn1 = nn.BatchNorm2d(16)
        stages = []
        in_planes = 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1, shortcut))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(64, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal init of convs and the head (zero bias); BN weight 1, bias 0."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                mode: Literal["fan_in", "fan_out"] = "fan_out" if isinstance(m, nn.Conv2d) else "fan_in"
                nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def features(self, x: Tensor) -> Tensor:
        """``[N, in_channels, H, W]`` -> pooled features ``[N, 64]``."""
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.layer3(self.layer2(self.layer1(out)))
        return out.mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        """``[N, in_channels, H, W]`` -> logits ``[N, num_classes]``."""
        return self.fc(self.features(x))


def resnet_cifar(depth: int = 20, num_classes: int = 10, in_channels: int = 3, shortcut: str = "A") -> CifarResNet:
    """Build a CIFAR ResNet of depth ``6n + 2``; see :class:`CifarResNet`.

    Example::

        >>> count_parameters(resnet_cifar(20))
        269722
        >>> count_parameters(resnet_cifar(56))  # ~0.85M as in He et al.'s table 6
        853018
    """
    return CifarResNet(depth=depth, num_classes=num_classes, in_channels=in_channels, shortcut=shortcut)


class ResNet20(CifarResNet):
    """ResNet-20 for CIFAR-10 (He et al. 2016): 0.27M parameters (269,722 for 3 input channels
    and 10 classes with the option-A shortcuts; 272,474 with ``shortcut="B"``).

    Args:
        num_classes: outputs of the linear head.
        in_channels: 1 (MNIST, 28x28) or 3 (CIFAR, 32x32).
        shortcut: ``"A"`` (default) or ``"B"``, see :class:`BasicBlock`.

    Shapes:
        ``[N, in_channels, H, W]`` -> ``[N, num_classes]``.

    Example::

        >>> ResNet20(num_classes=10, in_channels=1)(torch.randn(4, 1, 28, 28)).shape
        torch.Size([4, 10])
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, shortcut: str = "A") -> None:
        super().__init__(depth=20, num_classes=num_classes, in_channels=in_channels, shortcut=shortcut)


# ----------------------------------------------------------------------------------------------
# Stacked hourglass (Newell et al. 2016)
# ----------------------------------------------------------------------------------------------


class Residual(nn.Module):
    """Pre-activation residual bottleneck of the hourglass network.

    BN-ReLU-conv1x1(out/2), BN-ReLU-conv3x3(out/2), BN-ReLU-conv1x1(out), plus the input
    (through a 1x1 conv when ``in_ch != out_ch``).

    Shapes:
        ``[N, in_ch, H, W]`` -> ``[N, out_ch, H, W]``.

    Example::

        >>> Residual(32, 64)(torch.randn(2, 32, 16, 16)).shape
        torch.Size([2, 64, 16, 16])
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        mid = max(out_ch // 2, 1)
        self.body = nn.Sequential(
            nn.BatchNorm2d(in_ch),
            nn.ReLU(inplace=False),
            nn.Conv2d(in_ch, mid, 1),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, padding=1),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_ch, 1),
        )
        self.skip: nn.Module = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + self.skip(x)


def _blocks(ch: int, num_blocks: int) -> nn.Sequential:
    return nn.Sequential(*[Residual(ch, ch) for _ in range(num_blocks)])


class Hourglass(nn.Module):
    """One recursive hourglass module of the given ``depth`` (number of 2x downsamplings).

    At every level: an upper branch of ``num_blocks`` residuals at the current resolution, and a
    lower branch max-pool(2) -> residuals -> (hourglass of depth-1, or residuals at the bottom)
    -> residuals -> nearest-neighbour upsampling back to the current size; the two are summed.

    Shapes:
        ``[N, channels, H, W]`` -> ``[N, channels, H, W]``. H and W divisible by ``2**depth``
        keep every level exact; other sizes work (the upsampling targets the skip's size).

    Example::

        >>> Hourglass(depth=3, channels=32)(torch.randn(2, 32, 16, 16)).shape
        torch.Size([2, 32, 16, 16])
    """

    def __init__(self, depth: int, channels: int, num_blocks: int = 1) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError("hourglass depth must be >= 1")
        self.up1 = _blocks(channels, num_blocks)
        self.low1 = _blocks(channels, num_blocks)
        self.low2: nn.Module = (
            Hourglass(depth - 1, channels, num_blocks) if depth > 1 else _blocks(channels, num_blocks)
        )
        self.low3 = _blocks(channels, num_blocks)

    def forward(self, x: Tensor) -> Tensor:
        up1 = self.up1(x)
        low = self.low3(self.low2(self.low1(F.max_pool2d(x, 2))))
        return up1 + F.interpolate(low, size=up1.shape[-2:], mode="nearest")


class StackedHourglass(nn.Module):
    """Stacked hourglass network (Newell et al. 2016) with intermediate supervision.

    ``stem`` -> ``num_stacks`` x [hourglass(depth) -> ``num_blocks`` residuals ->
    conv1x1-BN-ReLU -> conv1x1 heatmap head], with the usual re-injection
    ``x + conv1x1(features) + conv1x1(heatmaps)`` between stacks. Every stack predicts heatmaps;
    train with a loss on each of them (intermediate supervision) and evaluate the last one.

    Args:
        num_stacks: number of hourglasses (the paper uses 8; 1-2 are enough here).
        num_joints: number of keypoint heatmaps.
        in_channels: image channels (1 for the synthetic 64x64 canvases, 3 for RGB).
        width: feature channels inside the hourglasses (the paper uses 256).
        depth: downsamplings per hourglass (the paper uses 4).
        num_blocks: residual blocks per hourglass branch (the paper uses 1).
        stem: ``"light"`` (default) -- conv3x3(width/2)-BN-ReLU at full resolution, max-pool 2,
            two residuals: heatmaps at **half** the input resolution (64x64 input -> 32x32
            heatmaps, 4 px -> 2 heatmap cells), cheap and precise enough for small canvases.
            ``"full"`` -- the paper's conv7x7/2-BN-ReLU, residual, max-pool 2, two residuals:
            heatmaps at a **quarter** of the input resolution (256x256 -> 64x64, 64x64 -> 16x16).

    Shapes:
        input ``[N, in_channels, H, W]`` with H, W divisible by ``2 ** (depth + 1)``
        (``"light"``) or ``2 ** (depth + 2)`` (``"full"``) for exact pooling (64 works for both
        with depth 4); output a list of ``num_stacks`` tensors ``[N, num_joints, H/s, W/s]``,
        ``s = 2`` (light) or ``4`` (full), raw (unbounded) heatmap scores.

    The defaults (1 stack, width 64, depth 4, light stem; ~0.23M parameters) train on a 2-core
    CPU in reasonable time for 64x64 inputs.

    Example::

        >>> net = StackedHourglass(num_stacks=2, num_joints=16, in_channels=1)
        >>> outs = net(torch.randn(2, 1, 64, 64))
        >>> len(outs), outs[-1].shape
        (2, torch.Size([2, 16, 32, 32]))
        >>> StackedHourglass(stem="full")(torch.randn(2, 3, 64, 64))[0].shape
        torch.Size([2, 16, 16, 16])
    """

    def __init__(
        self,
        num_stacks: int = 1,
        num_joints: int = 16,
        in_channels: int = 3,
        width: int = 64,
        depth: int = 4,
        num_blocks: int = 1,
        stem: str = "light",
    ) -> None:
        super().__init__()
        if num_stacks < 1:
            raise ValueError("num_stacks must be >= 1")
        if width < 2 or width % 2:
            raise ValueError("width must be an even number >= 2")
        half = width // 2
        if stem == "light":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, half, 3, padding=1, bias=False),
                nn.BatchNorm2d(half),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
                Residual(half, width),
                Residual(width, width),
            )
            self.stride = 2
        elif stem == "full":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, half, 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(half),
                nn.ReLU(inplace=True),
                Residual(half, width),
                nn.MaxPool2d(2),
                Residual(width, width),
                Residual(width, width),
            )
            self.stride = 4
        else:
            raise ValueError(f"stem must be 'light' or 'full', got {stem!r}")
        self.num_stacks = num_stacks
        self.num_joints = num_joints
        self.hourglasses = nn.ModuleList([Hourglass(depth, width, num_blocks) for _ in range(num_stacks)])
        self.features = nn.ModuleList(
            [
                nn.Sequential(
                    _blocks(width, num_blocks),
                    nn.Conv2d(width, width, 1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                )
                for _ in range(num_stacks)
            ]
        )
        self.heads = nn.ModuleList([nn.Conv2d(width, num_joints, 1) for _ in range(num_stacks)])
        self.merge_features = nn.ModuleList([nn.Conv2d(width, width, 1) for _ in range(num_stacks - 1)])
        self.merge_heatmaps = nn.ModuleList([nn.Conv2d(num_joints, width, 1) for _ in range(num_stacks - 1)])

    def forward(self, x: Tensor) -> List[Tensor]:
        """``[N, in_channels, H, W]`` -> list of ``num_stacks`` heatmaps ``[N, num_joints, H/s, W/s]``."""
        x = self.stem(x)
        outputs: List[Tensor] = []
        for i in range(self.num_stacks):
            feat = self.features[i](self.hourglasses[i](x))
            heat = self.heads[i](feat)
            outputs.append(heat)
            if i < self.num_stacks - 1:
                x = x + self.merge_features[i](feat) + self.merge_heatmaps[i](heat)
        return outputs
