"""Keypoint localisation with PCK (paper sec. 4.2): the ``digits-pose`` benchmark, heatmap losses,
the experiments ``digits-pose`` / ``digits-pose-paper`` / ``mpii-head`` / ``mpii-all`` and the
tables ``pose`` / ``pose-paper`` / ``pose-mpii``.

The paper trains a single-stack hourglass on MPII (head joint, PCKh@0.5) with MSE against Gaussian
target heatmaps for seven widths sigma, and with UniLoss-PCK, which needs no target design
(Table 1). MPII cannot be had offline, so this package builds a keypoint benchmark from real images.

**digits-pose** (fixed seed, built vectorised, the same tensors on every machine)::

    canvas   64 x 64, grey, black background; 1 to 4 MNIST digits (uniform), composited by
             pixel-wise maximum
    target   exactly one digit 0 per canvas; the others (distractors) are digits 1-9
    scale    each digit's 28 x 28 MNIST frame is resized to a side S ~ U[16, 34] px (bilinear);
             the ink of an MNIST digit fills about 20/28 of its frame: 11-24 px tall here
    position frame top-left uniform with the frame inside the canvas; each distractor takes the
             first of 16 uniform candidate places whose ink box covers at most 25% of the 0's
             ink box, or is left out when none does (so the 0 stays visible)
    joint    the centre of the 0's ink bounding box (its pixels >= 128 of 255 in the MNIST
             image), mapped exactly through the resize and shift (sub-pixel)
    normaliser  0.6 x the diagonal of that ink box: MPII's head size (0.6 x head-box diagonal),
             with the 0's box as the head box; PCK@0.5 accepts a prediction within
             0.5 x normaliser (about 0.38 x the digit's height, 4-10 px; 1-2.6 heatmap pixels
             at stride 4)
    splits   train: canvases from MNIST training images 6000-59999; validation: from MNIST
             training images 0-5999; test: from the MNIST test set. The source images of the
             three splits are disjoint; within a split, digits are drawn with replacement.
             Sizes: 20,000 / 500 / 2,000 canvases (seeds 2021, 2022, 2023).

Coordinates are ``(x, y)`` = (column, row) with pixel ``(i, j)`` centred at ``x = j, y = i``.
Targets travel through the training loop as one tensor per sample, ``[N, J, 4]`` = ``(x, y,
visible, normaliser)`` in input-image pixels (:func:`pack_keypoints`); losses and evaluation unpack
them into heatmap pixels for the network's output stride (:func:`keypoint_target`).

**Losses** (``--loss``): ``mse-sigma-S`` for S in the paper's table (0.1, 0.5, 0.7, 1, 3, 5, 10):
mean squared error against ``exp(-d^2 / (2 sigma^2))`` heatmaps centred on the sub-pixel joint
(sigma in heatmap pixels, as the paper's, whose heatmaps are a quarter of the input); ``mse-exact``:
1 at the heatmap pixel nearest the joint, 0 elsewhere (the target the paper reports diverging);
``uniloss``: :class:`uniloss.UniLoss` over :class:`uniloss.PCK` (threshold 0.5), no target.

**Configurations.** ``digits-pose-paper`` is the paper's: single-stack hourglass, width 256,
depth 4, stride-4 stem (16 x 16 heatmaps for 64 x 64 canvases), RMSProp lr 2.5e-4, 50 epochs with
the rate divided by 4 after epochs 30 and 40, batch 16, all 20,000 training canvases (MPII has
about 22k training people). ``digits-pose`` is the reduced one for a 2-core CPU (see
:data:`REDUCED`): the same network at width 32, the first 1,280 training canvases, 10 epochs with
the rate divided by 4 after epochs 6 and 8 (the paper's 30/50 and 40/50), same optimiser, lr and
batch. ``uniloss reproduce pose`` runs its 9 losses x 3 seeds; ``scripts/gpu_pose.sh`` runs
``pose-paper``.

**Modules**: :mod:`~uniloss.experiments.pose.data` (the benchmark's canvases and splits, MPII's
splits), :mod:`~uniloss.experiments.pose.heatmaps` (packed targets, coordinate maps, target
heatmaps, argmax, PCK), :mod:`~uniloss.experiments.pose.model` (:class:`HeatmapNet`, the two
configurations and their recipes), :mod:`~uniloss.experiments.pose.losses`,
:mod:`~uniloss.experiments.pose.evaluate`, :mod:`~uniloss.experiments.pose.tables` (the
experiments and tables, registered on import) and :mod:`~uniloss.experiments.pose.plots`; every
public name is importable from here.

Example::

    >>> import torch
    >>> kp = torch.tensor([[[2.0, 1.0]]])                     # one sample, one joint at x=2, y=1
    >>> h = gaussian_heatmaps(kp, torch.ones(1, 1), (4, 5), sigma=1.0)
    >>> h.shape, heatmap_argmax(h).tolist()
    (torch.Size([1, 1, 4, 5]), [[[2.0, 1.0]]])
"""

from __future__ import annotations

from . import tables  # noqa: F401  (registers the experiments and tables)
from .data import (
    DIGITS_POSE, HEAD_SIZE_FACTOR, MPII_MEAN, MPII_STD, CanvasSpec, cover, digits_pose_split, head_size, ink_boxes,
    load_digits_pose, load_mpii_splits, make_canvases, mnist_images,
)
from .evaluate import mpii_evaluate, pose_evaluate
from .heatmaps import (
    exact_heatmaps, from_heatmap, gaussian_heatmaps, heatmap_argmax, keypoint_pck, keypoint_target, pack_keypoints,
    to_heatmap,
)
from .losses import LOSSES, SIGMAS, TABLE_LOSSES, heatmap_mse, pose_loss
from .model import PAPER, PAPER_RECIPE, REDUCED, REDUCED_RECIPE, HeatmapNet, PoseConfig
from .plots import example_panels, plot_examples
from .tables import PAPER_PCKH

__all__ = [
    "CanvasSpec", "DIGITS_POSE", "SIGMAS", "LOSSES", "TABLE_LOSSES", "PAPER_PCKH", "REDUCED", "PAPER", "PoseConfig",
    "make_canvases", "ink_boxes", "head_size", "digits_pose_split", "load_digits_pose",
    "pack_keypoints", "keypoint_target", "to_heatmap", "from_heatmap",
    "gaussian_heatmaps", "exact_heatmaps", "heatmap_argmax", "keypoint_pck", "HeatmapNet",
    "heatmap_mse", "pose_loss", "pose_evaluate", "plot_examples",
    # public before the split too, not listed then
    "HEAD_SIZE_FACTOR", "PAPER_RECIPE", "REDUCED_RECIPE", "MPII_MEAN", "MPII_STD", "load_mpii_splits",
    "mpii_evaluate",
    # new public names of the split (private helpers before it)
    "cover", "mnist_images", "example_panels",
]
