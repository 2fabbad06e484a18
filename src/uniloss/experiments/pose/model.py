"""The pose network and its configurations (paper sec. 4.2): :class:`HeatmapNet` wraps a
:class:`~uniloss.experiments.models.StackedHourglass` for the training loop; :data:`PAPER` is the
paper's single-stack hourglass of width 256 with its schedule, :data:`REDUCED` the same network at
width 32 on fewer canvases and epochs for a 2-core CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from ..registry import MNIST_MEAN, MNIST_STD, Recipe
from .data import DIGITS_POSE

__all__ = ["HeatmapNet", "PoseConfig", "PAPER", "PAPER_RECIPE", "REDUCED", "REDUCED_RECIPE"]


class HeatmapNet(nn.Module):
    """A :class:`~uniloss.experiments.models.StackedHourglass` for the training loop: uint8 (or
    float) images in, one tensor ``[N, stacks, J, H, W]`` out (the loop concatenates outputs);
    uint8 input is scaled to [0, 1], then standardised by ``mean`` and ``std`` per channel. In
    eval mode the batch is processed ``eval_chunk`` samples at a time (memory).

    Example::

        >>> from uniloss.experiments.models import StackedHourglass
        >>> net = HeatmapNet(StackedHourglass(1, 1, 1, width=8, depth=2, stem="full"))
        >>> net(torch.zeros(2, 1, 64, 64, dtype=torch.uint8)).shape
        torch.Size([2, 1, 1, 16, 16])
    """

    mean: Tensor  # buffers, registered in __init__
    std: Tensor

    def __init__(self, hourglass: nn.Module, *, mean: Sequence[float] = (MNIST_MEAN,),
                 std: Sequence[float] = (MNIST_STD,), eval_chunk: int = 256) -> None:
        super().__init__()
        self.hourglass = hourglass
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1), persistent=False)
        self.eval_chunk = eval_chunk

    def forward(self, x: Tensor) -> Tensor:
        """``[N, C, H, W]`` -> ``[N, stacks, J, H / stride, W / stride]``."""
        if not self.training and len(x) > self.eval_chunk:
            return torch.cat([self(x[i : i + self.eval_chunk]) for i in range(0, len(x), self.eval_chunk)])
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        return torch.stack(self.hourglass((x - self.mean) / self.std), 1)


@dataclass(frozen=True)
class PoseConfig:
    """Network and data size of a ``digits-pose`` configuration (the recipe sits beside it).

    Attributes:
        width, depth, stacks, stem: of the :class:`StackedHourglass` (``stem="full"``: the
            paper's stride-4 stem, 16 x 16 heatmaps for 64 x 64 canvases).
        train: training canvases (a prefix of the 20,000).
    """

    width: int
    depth: int = 4
    stacks: int = 1
    stem: str = "full"
    train: int = DIGITS_POSE["train"][0]

    @property
    def stride(self) -> int:
        """Input pixels per heatmap pixel (4 for the paper's stem, 2 for the light one)."""
        return 4 if self.stem == "full" else 2

    def model(self, num_joints: int = 1, in_channels: int = 1) -> HeatmapNet:
        """A fresh :class:`HeatmapNet` of this configuration (MNIST normalisation)."""
        from ..models import StackedHourglass

        return HeatmapNet(StackedHourglass(self.stacks, num_joints, in_channels, width=self.width,
                                           depth=self.depth, stem=self.stem))


#: The paper's configuration (for a GPU): single-stack hourglass of width 256.
PAPER = PoseConfig(width=256)
PAPER_RECIPE = Recipe(epochs=50, batch_size=16, optimizer="rmsprop", lr=2.5e-4, milestones=(30, 40), gamma=0.25)

#: The reduced configuration for a 2-core CPU: width 32, 1,280 canvases, 10 epochs.
REDUCED = PoseConfig(width=32, train=1_280)
REDUCED_RECIPE = Recipe(epochs=10, batch_size=16, optimizer="rmsprop", lr=2.5e-4, milestones=(6, 8), gamma=0.25)
