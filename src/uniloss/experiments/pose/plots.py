"""The picture of ``digits-pose`` (``docs/results/pose/examples.png``; ``python -m
uniloss.experiments.pose PATH`` draws it): validation canvases with their joint, UniLoss's positive
pixels and the MSE targets of a few widths.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

import uniloss

from .data import digits_pose_split
from .heatmaps import gaussian_heatmaps, keypoint_target

__all__ = ["example_panels", "plot_examples"]


def example_panels(y: Tensor, sigmas: Sequence[float], *, stride: int = 4,
                   shape: Tuple[int, int] = (16, 16)) -> Tuple[Tensor, Tensor]:
    """The heatmaps :func:`plot_examples` draws under each canvas, for packed targets ``y``
    ``[N, J, 4]`` (:func:`~uniloss.experiments.pose.pack_keypoints`): UniLoss's positive pixels
    under PCK@0.5 ``[N, J, H, W]`` (every other pixel is a negative: the whole of its target
    design) and the MSE targets ``[len(sigmas), N, J, H, W]``, both on ``shape`` heatmaps of a
    network of output ``stride``.

    Example::

        >>> from uniloss.experiments.pose import pack_keypoints
        >>> y = pack_keypoints(torch.tensor([[[30.0, 20.0]]]), torch.ones(1, 1), torch.tensor([12.0]))
        >>> pos, targets = example_panels(y, (1.0, 3.0))
        >>> pos.shape, targets.shape, bool(pos[0, 0, 5, 7]), int(pos.sum())
        (torch.Size([1, 1, 16, 16]), torch.Size([2, 1, 1, 16, 16]), True, 7)
    """
    t = keypoint_target(y, stride)
    pos = uniloss.PCK(0.5).positive_mask((len(y), y.shape[1], *shape), t)
    targets = torch.stack([gaussian_heatmaps(t.keypoints, t.visible, shape, s) for s in sigmas])
    return pos, targets


def plot_examples(path: str, *, count: int = 6, sigmas: Sequence[float] = (0.5, 1.0, 3.0, 10.0),
                  data_dir: Optional[str] = None) -> str:
    """A PNG of the first ``count`` validation canvases with their heatmaps: the canvas with the
    joint and its PCK@0.5 disc; UniLoss's positive pixels on the 16 x 16 heatmap (the rest are
    its negatives: the whole target design); the MSE targets for ``sigmas``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, y = digits_pose_split("val", data_dir, size=count)
    t = keypoint_target(y, 4)
    rows = 2 + len(sigmas)
    fig, axes = plt.subplots(rows, count, figsize=(1.9 * count, 1.95 * rows))
    pos, targets = example_panels(y, sigmas)
    for i in range(count):
        cx, cy, _, norm = y[i, 0].tolist()
        axes[0, i].imshow(x[i, 0].numpy(), cmap="gray", vmin=0, vmax=255)
        axes[0, i].add_patch(plt.Circle((cx, cy), 0.5 * norm, fill=False, color="tab:orange", lw=1.2))
        axes[0, i].plot([cx], [cy], "+", color="tab:red", ms=9, mew=2)
        axes[1, i].imshow(pos[i, 0].numpy(), cmap="Oranges", vmin=0, vmax=1.5)
        for r in range(2, rows):
            axes[r, i].imshow(targets[r - 2, i, 0].numpy(), cmap="magma", vmin=0, vmax=1)
        for ax in axes[1:, i]:
            ax.plot([float(t.keypoints[i, 0, 0])], [float(t.keypoints[i, 0, 1])], "+", color="tab:cyan", ms=7, mew=1.5)
        for ax in axes[:, i]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("canvas 64x64\njoint, PCK@0.5 disc", fontsize=8)
    axes[1, 0].set_ylabel("UniLoss: positives\n(16x16 heatmap)", fontsize=8)
    for r, sigma in enumerate(sigmas, start=2):
        axes[r, 0].set_ylabel(f"MSE target\nsigma {sigma:g}", fontsize=8)
    fig.suptitle("digits-pose (validation canvases): the joint is the centre of the 0's ink box", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
