"""Keypoint localisation with PCK (paper sec. 4.2): the ``digits-pose`` benchmark, heatmap losses,
the experiments ``digits-pose`` / ``digits-pose-paper`` / ``mpii-head`` / ``mpii-all`` and the
tables ``pose`` / ``pose-paper`` / ``pose-mpii``.

The paper trains a single-stack hourglass on MPII (head joint, PCKh@0.5) with MSE against Gaussian
target heatmaps for seven widths sigma, and with UniLoss-PCK, which needs no target design
(Table 1). MPII cannot be had offline, so this module builds a keypoint benchmark from real images.

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

Example::

    >>> import torch
    >>> kp = torch.tensor([[[2.0, 1.0]]])                     # one sample, one joint at x=2, y=1
    >>> h = gaussian_heatmaps(kp, torch.ones(1, 1), (4, 5), sigma=1.0)
    >>> h.shape, heatmap_argmax(h).tolist()
    (torch.Size([1, 1, 4, 5]), [[[2.0, 1.0]]])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import partial
from typing import Callable, Dict, NamedTuple, Optional, Sequence, Tuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import uniloss

from .registry import MNIST_MEAN, MNIST_STD, Experiment, Recipe, Splits, Table, register, register_table

__all__ = [
    "CanvasSpec", "DIGITS_POSE", "SIGMAS", "LOSSES", "PAPER_PCKH", "REDUCED", "PAPER", "PoseConfig",
    "make_canvases", "ink_boxes", "head_size", "digits_pose_split", "load_digits_pose",
    "pack_keypoints", "keypoint_target", "to_heatmap", "from_heatmap",
    "gaussian_heatmaps", "exact_heatmaps", "heatmap_argmax", "keypoint_pck", "HeatmapNet",
    "heatmap_mse", "pose_loss", "pose_evaluate", "plot_examples",
]

# --------------------------------------------------------------------------- the benchmark


@dataclass(frozen=True)
class CanvasSpec:
    """How ``digits-pose`` canvases are drawn (see the module docstring).

    Attributes:
        size: canvas side in pixels.
        max_digits: digits per canvas are uniform in ``1 .. max_digits`` (one of them the 0).
        min_side, max_side: range of the resized 28 x 28 MNIST frame's side, uniform.
        candidates: places tried per distractor.
        max_cover: largest share of the 0's ink box a distractor's ink box may cover.
        ink: a source pixel is ink when ``>= ink`` (of 255); the joint and normaliser come from
            the 0's ink box.
    """

    size: int = 64
    max_digits: int = 4
    min_side: float = 16.0
    max_side: float = 34.0
    candidates: int = 16
    max_cover: float = 0.25
    ink: int = 128


#: The benchmark's split sizes and seeds: ``name -> (canvases, seed, MNIST split, image range)``.
DIGITS_POSE: Dict[str, Tuple[int, int, str, Tuple[int, Optional[int]]]] = {
    "train": (20_000, 2021, "train", (6000, None)),
    "val": (500, 2022, "train", (0, 6000)),
    "test": (2_000, 2023, "test", (0, None)),
}

#: MPII's head-size factor: PCKh normalises by 0.6 x the head box's diagonal.
HEAD_SIZE_FACTOR = 0.6


def ink_boxes(images: Tensor, ink: int = 128) -> Tensor:
    """Tight boxes of the ink of 28 x 28 digits: ``[N, 4]`` = ``(col0, row0, col1, row1)``,
    inclusive pixel indices of the pixels ``>= ink``; an image without such a pixel falls back to
    its non-zero pixels, then to the whole frame.

    Example::

        >>> img = torch.zeros(1, 28, 28, dtype=torch.uint8); img[0, 5:9, 10:12] = 200
        >>> ink_boxes(img).tolist()
        [[10, 5, 11, 8]]
    """
    n, h, w = images.shape
    mask = images >= ink
    empty = ~mask.flatten(1).any(1)
    mask = torch.where(empty[:, None, None], images > 0, mask)
    rows, cols = mask.any(2), mask.any(1)
    none = ~rows.any(1)
    rows[none], cols[none] = True, True

    def first_last(m: Tensor) -> Tuple[Tensor, Tensor]:
        k = m.shape[1]
        return m.float().argmax(1), k - 1 - m.flip(1).float().argmax(1)

    r0, r1 = first_last(rows)
    c0, c1 = first_last(cols)
    return torch.stack([c0, r0, c1, r1], 1)


def head_size(width: Tensor, height: Tensor) -> Tensor:
    """MPII's head size of a box: ``0.6 * sqrt(width^2 + height^2)``."""
    return HEAD_SIZE_FACTOR * torch.sqrt(width * width + height * height)


def _render(images: Tensor, left: Tensor, top: Tensor, side: Tensor, size: int) -> Tensor:
    """Each 28 x 28 image resized to ``side`` and placed with its frame's top-left edge at
    ``(left, top)`` on a ``size`` x ``size`` black canvas: ``[B, size, size]`` in [0, 1].

    Canvas pixel centre ``X`` samples the source at edge coordinate ``(X + 0.5 - left) * 28 /
    side`` (bilinear, zeros outside), i.e. source pixel centre ``u`` lands at canvas
    ``left + (u + 0.5) * side / 28 - 0.5``."""
    b = images.shape[0]
    grid_pos = torch.arange(size, dtype=torch.float32) + 0.5
    gx = 2 * (grid_pos[None, :] - left[:, None]) / side[:, None] - 1  # [B, size]
    gy = 2 * (grid_pos[None, :] - top[:, None]) / side[:, None] - 1
    grid = torch.stack([gx[:, None, :].expand(b, size, size), gy[:, :, None].expand(b, size, size)], -1)
    src = images[:, None].float() / 255.0
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]


def _cover(box: Tensor, other: Tensor) -> Tensor:
    """Share of ``other``'s area (``[..., 4]`` = x0, y0, x1, y1 edges) that ``box`` covers."""
    iw = (torch.minimum(box[..., 2], other[..., 2]) - torch.maximum(box[..., 0], other[..., 0])).clamp(min=0)
    ih = (torch.minimum(box[..., 3], other[..., 3]) - torch.maximum(box[..., 1], other[..., 1])).clamp(min=0)
    area = (other[..., 2] - other[..., 0]) * (other[..., 3] - other[..., 1])
    return iw * ih / area


def make_canvases(
    zeros: Tensor, others: Tensor, n: int, generator: torch.Generator, spec: CanvasSpec = CanvasSpec(),
    *, render: Optional[int] = None, chunk: int = 2048,
) -> Tuple[Tensor, Tensor, Dict[str, Tensor]]:
    """Draw ``n`` canvases (every random number for all ``n``) and render the first ``render``.

    Args:
        zeros: ``[Z, 28, 28]`` uint8 images of the digit 0 (the targets).
        others: ``[M, 28, 28]`` uint8 images of digits 1-9 (the distractors).
        n: canvases drawn; the draws depend only on ``n``, ``spec`` and the generator's state,
            so the first ``k`` canvases of a split are the same whatever ``render`` is.
        generator: the split's generator (CPU).
        render: how many to render (default all).
        chunk: canvases rendered at a time (memory).

    Returns:
        ``(canvases, keypoints, layout)``: uint8 ``[render, 1, size, size]``; ``[render, 1, 4]``
        packed targets ``(x, y, 1, normaliser)`` in canvas pixels (:func:`pack_keypoints`);
        ``layout`` the draws (``present [n, D]`` bool, ``side``, ``left``, ``top`` ``[n, D]``,
        ``box`` ``[n, 4]`` the 0's ink box in canvas edge coordinates, ``zero_index [n]`` and
        ``other_index [n, D-1]`` into ``zeros`` and ``others``), slot 0 being the 0.
    """
    g, d, size = generator, spec.max_digits, spec.size
    count = torch.randint(1, d + 1, (n,), generator=g)
    zero_idx = torch.randint(0, len(zeros), (n,), generator=g)
    other_idx = torch.randint(0, len(others), (n, d - 1), generator=g)
    side = spec.min_side + (spec.max_side - spec.min_side) * torch.rand(n, d, generator=g)
    first = torch.rand(n, 2, generator=g) * (size - side[:, :1])  # the 0's frame: left, top
    cand = torch.rand(n, d - 1, spec.candidates, 2, generator=g) * (size - side[:, 1:, None, None])

    zero_box = ink_boxes(zeros, spec.ink).float()[zero_idx]  # source pixel indices
    other_box = ink_boxes(others, spec.ink).float()[other_idx]  # [n, d-1, 4]

    def to_canvas(box: Tensor, left: Tensor, top: Tensor, s: Tensor) -> Tensor:  # -> edge coords
        k = s / 28.0
        return torch.stack([left + box[..., 0] * k, top + box[..., 1] * k,
                            left + (box[..., 2] + 1) * k, top + (box[..., 3] + 1) * k], -1)

    box0 = to_canvas(zero_box, first[:, 0], first[:, 1], side[:, 0])  # [n, 4]
    cand_box = to_canvas(other_box[:, :, None], cand[..., 0], cand[..., 1], side[:, 1:, None])  # [n, d-1, K, 4]
    ok = _cover(cand_box, box0[:, None, None]) <= spec.max_cover
    pick = ok.float().argmax(-1)  # the first acceptable candidate (0 when none: masked below)
    chosen = cand.gather(2, pick[..., None, None].expand(n, d - 1, 1, 2))[:, :, 0]
    wanted = torch.arange(1, d, dtype=torch.long)[None, :] < count[:, None]
    present = torch.cat([torch.ones(n, 1, dtype=torch.bool), wanted & ok.any(-1)], 1)
    left = torch.cat([first[:, :1], chosen[..., 0]], 1)
    top = torch.cat([first[:, 1:], chosen[..., 1]], 1)

    # joint: the centre of the 0's ink box; normaliser: MPII's head size of that box
    x = (box0[:, 0] + box0[:, 2]) / 2 - 0.5  # edge -> pixel-centre coordinates
    y = (box0[:, 1] + box0[:, 3]) / 2 - 0.5
    norm = head_size(box0[:, 2] - box0[:, 0], box0[:, 3] - box0[:, 1])
    keypoints = pack_keypoints(torch.stack([x, y], -1)[:, None], torch.ones(n, 1), norm)

    m = n if render is None else min(render, n)
    out = torch.empty(m, 1, size, size, dtype=torch.uint8)
    for s in range(0, m, chunk):
        e = min(m, s + chunk)
        imgs = torch.cat([zeros[zero_idx[s:e]][:, None], others[other_idx[s:e]]], 1)  # [b, d, 28, 28]
        b = e - s
        layers = _render(imgs.reshape(b * d, 28, 28), left[s:e].reshape(-1), top[s:e].reshape(-1),
                         side[s:e].reshape(-1), size).reshape(b, d, size, size)
        layers = layers * present[s:e, :, None, None]
        out[s:e, 0] = (layers.amax(1) * 255).round().to(torch.uint8)
    layout = {"present": present, "side": side, "left": left, "top": top, "box": box0,
              "zero_index": zero_idx, "other_index": other_idx}
    return out, keypoints[:m], layout


_POOLS: Dict[Tuple[Optional[str], str], Tuple[Tensor, Tensor]] = {}


def _mnist(data_dir: Optional[str], split: str) -> Tuple[Tensor, Tensor]:
    from .data import load_mnist

    key = (None if data_dir is None else str(data_dir), split)
    if key not in _POOLS:  # loading MNIST takes seconds; tests and in-process runs reuse it
        d = load_mnist(split, data_dir=data_dir)
        _POOLS[key] = (d.images, d.labels)
    return _POOLS[key]


def digits_pose_split(
    split: str, data_dir: Optional[str] = None, *, size: Optional[int] = None, spec: CanvasSpec = CanvasSpec(),
    return_sources: bool = False,
):
    """One split of ``digits-pose``: ``(canvases uint8 [k, 1, 64, 64], targets [k, 1, 4])``.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"`` (sizes and seeds in :data:`DIGITS_POSE`).
        data_dir: where MNIST is (see :mod:`uniloss.experiments.data`).
        size: render only the first ``size`` canvases (a prefix of the full split).
        return_sources: also return the MNIST split name and ``[n, D]`` indices into it of the
            images drawn (slot 0 the 0, -1 for an absent distractor), for all ``n`` canvases.

    Example::

        >>> x, y = digits_pose_split("val", size=4)  # doctest: +SKIP
        >>> x.shape, y.shape  # doctest: +SKIP
        (torch.Size([4, 1, 64, 64]), torch.Size([4, 1, 4]))
    """
    if split not in DIGITS_POSE:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(DIGITS_POSE)}")
    n, seed, source, (lo, hi) = DIGITS_POSE[split]
    if size is not None and not 0 < size <= n:
        raise ValueError(f"size must be in 1..{n} for split {split!r}, got {size}")
    images, labels = _mnist(data_dir, source)
    images, labels = images[lo:hi], labels[lo:hi]
    zero = labels == 0
    g = torch.Generator().manual_seed(seed)
    x, y, layout = make_canvases(images[zero], images[~zero], n, g, spec, render=size)
    if not return_sources:
        return x, y
    index = torch.arange(lo, lo + len(labels))
    sources = torch.cat([index[zero][layout["zero_index"]][:, None], index[~zero][layout["other_index"]]], 1)
    return x, y, source, torch.where(layout["present"], sources, -1)


def load_digits_pose(
    data_dir: Optional[str], device: torch.device, *, train: int, val: int = DIGITS_POSE["val"][0],
    test: int = DIGITS_POSE["test"][0],
) -> Splits:
    """The benchmark's splits (the first ``train`` / ``val`` / ``test`` canvases of each) as
    uint8 canvases and packed targets on ``device``; :class:`HeatmapNet` normalises them."""
    parts = [digits_pose_split(s, data_dir, size=k) for s, k in (("train", train), ("val", val), ("test", test))]
    return Splits(*(t.to(device) for part in parts for t in part))


# --------------------------------------------------------------------------- targets and metric


def pack_keypoints(xy: Tensor, visible: Tensor, normalizer: Tensor) -> Tensor:
    """``[N, J, 4]`` = ``(x, y, visible, normaliser)``: keypoint targets as one tensor per sample,
    so that the training loop can index them like labels.

    Args:
        xy: ``[N, J, 2]`` joint coordinates in input-image pixels.
        visible: ``[N, J]`` (0/1 or bool); invisible joints are left out of losses and metrics.
        normalizer: ``[N]`` per-sample length (head size) in input-image pixels.
    """
    n, j = xy.shape[:2]
    return torch.cat([xy.float(), visible.float().reshape(n, j, 1),
                      normalizer.float().reshape(n, 1, 1).expand(n, j, 1)], -1)


def to_heatmap(xy: Tensor, stride: int) -> Tensor:
    """Input-pixel coordinates -> heatmap-pixel coordinates for a network of output ``stride``
    (heatmap pixel ``k`` covers input pixels ``k*stride .. k*stride + stride - 1``)."""
    return (xy - (stride - 1) / 2) / stride


def from_heatmap(xy: Tensor, stride: int) -> Tensor:
    """Inverse of :func:`to_heatmap`."""
    return xy * stride + (stride - 1) / 2


def keypoint_target(y: Tensor, stride: int) -> uniloss.KeypointTarget:
    """Unpack ``[N, J, 4]`` targets into a :class:`uniloss.KeypointTarget` in heatmap pixels."""
    return uniloss.KeypointTarget(to_heatmap(y[..., :2], stride).contiguous(), y[..., 2] > 0, y[:, 0, 3] / stride)


def gaussian_heatmaps(keypoints: Tensor, visible: Tensor, shape: Sequence[int], sigma: float) -> Tensor:
    """Gaussian target heatmaps ``exp(-((X - x)^2 + (Y - y)^2) / (2 sigma^2))`` (peak 1 at the
    sub-pixel joint, untruncated), zero for invisible joints.

    Args:
        keypoints: ``[N, J, 2]`` ``(x, y)`` in heatmap pixels.
        visible: ``[N, J]``.
        shape: ``(H, W)``.
        sigma: width in heatmap pixels.

    Returns:
        ``[N, J, H, W]`` float.
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    h, w = shape
    ys = torch.arange(h, device=keypoints.device, dtype=torch.float32)[:, None]
    xs = torch.arange(w, device=keypoints.device, dtype=torch.float32)[None, :]
    dx = xs - keypoints[..., 0, None, None]
    dy = ys - keypoints[..., 1, None, None]
    return torch.exp(-(dx * dx + dy * dy) / (2 * sigma * sigma)) * (visible != 0)[..., None, None]


def exact_heatmaps(keypoints: Tensor, visible: Tensor, shape: Sequence[int]) -> Tensor:
    """Target 1 at the heatmap pixel nearest the joint, 0 elsewhere (all 0 for an invisible
    joint or one outside the heatmap). ``[N, J, H, W]``."""
    h, w = shape
    col, row = keypoints[..., 0].round().long(), keypoints[..., 1].round().long()
    inside = (visible != 0) & (col >= 0) & (col < w) & (row >= 0) & (row < h)
    flat = (row.clamp(0, h - 1) * w + col.clamp(0, w - 1))
    out = torch.zeros(*keypoints.shape[:2], h * w, device=keypoints.device)
    out.scatter_(2, flat[..., None], inside[..., None].float())
    return out.reshape(*keypoints.shape[:2], h, w)


def heatmap_argmax(heatmaps: Tensor) -> Tensor:
    """``[N, J, H, W]`` -> ``[N, J, 2]`` ``(x, y)`` of each heatmap's maximum (the first on ties),
    in heatmap pixels."""
    w = heatmaps.shape[-1]
    idx = heatmaps.flatten(2).argmax(-1)
    return torch.stack([idx % w, torch.div(idx, w, rounding_mode="floor")], -1).float()


def keypoint_pck(pred: Tensor, gt: Tensor, visible: Tensor, normalizer: Tensor, threshold: float = 0.5) -> Tensor:
    """PCK: the share of visible joints whose prediction lies within ``threshold * normalizer``
    (Euclidean, inclusive) of the truth. ``pred``, ``gt`` ``[N, J, 2]``, ``visible`` ``[N, J]``,
    ``normalizer`` ``[N]``, all in the same units; NaN without a visible joint.

    Example::

        >>> gt = torch.zeros(2, 1, 2); pred = torch.tensor([[[3.0, 4.0]], [[0.0, 6.0]]])
        >>> keypoint_pck(pred, gt, torch.ones(2, 1), torch.tensor([10.0, 10.0]))   # 5 <= 5, 6 > 5
        tensor(0.5000)
    """
    dist = (pred - gt).norm(dim=-1)
    ok = (dist <= threshold * normalizer[:, None]) & (visible != 0)
    return ok.sum() / (visible != 0).sum()


# --------------------------------------------------------------------------- model and losses


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


SIGMAS: Tuple[float, ...] = (0.1, 0.5, 0.7, 1.0, 3.0, 5.0, 10.0)


def _sigma_name(sigma: float) -> str:
    return f"mse-sigma-{sigma:g}"


#: Loss names: UniLoss first (the training loop's convention), then MSE per sigma, then exact.
LOSSES: Tuple[str, ...] = ("uniloss",) + tuple(_sigma_name(s) for s in SIGMAS) + ("mse-exact",)

#: The paper's Table 1: PCKh of the head joint on MPII's validation set (a different dataset).
PAPER_PCKH: Dict[str, float] = {
    "mse-sigma-0.1": 0.9131, "mse-sigma-0.5": 0.9513, "mse-sigma-0.7": 0.9306, "mse-sigma-1": 0.9571,
    "mse-sigma-3": 0.9574, "mse-sigma-5": 0.9499, "mse-sigma-10": 0.9225, "uniloss": 0.9577,
}


def heatmap_mse(heatmaps: Tensor, target: Tensor, visible: Tensor) -> Tensor:
    """Mean squared error over every pixel of every heatmap, invisible joints weighted 0:
    ``sum(vis * (h - t)^2) / (N * J * H * W)`` (the hourglass code's target-weighted MSE)."""
    return ((heatmaps - target) ** 2 * (visible != 0)[..., None, None]).mean()


def pose_loss(
    name: str, generator: torch.Generator, *, stride: int, threshold: float = 0.5,
) -> Tuple[Callable, Optional[nn.Module]]:
    """The loss ``name`` as the training loop wants it: ``(fn(outputs, y), module)``.

    ``outputs`` is :class:`HeatmapNet`'s ``[N, S, J, H, W]``; every stack is supervised
    (intermediate supervision) and the losses summed, the last stack last so that ``module.last``
    describes it. ``y`` is ``[N, J, 4]`` (:func:`pack_keypoints`) in input pixels.

    Example::

        >>> fn, module = pose_loss("mse-sigma-1", torch.Generator(), stride=4)
        >>> y = pack_keypoints(torch.full((2, 1, 2), 30.0), torch.ones(2, 1), torch.full((2,), 12.0))
        >>> float(fn(torch.zeros(2, 1, 1, 16, 16), y)) > 0, module is None
        (True, True)
    """
    if name == "uniloss":
        module = uniloss.UniLoss(uniloss.PCK(threshold), generator=generator)

        def ul(outputs: Tensor, y: Tensor) -> Tensor:
            """Sum over stacks of ``-PCK~`` of each stack's heatmaps."""
            t = keypoint_target(y, stride)
            return sum(module(outputs[:, k], t) for k in range(outputs.shape[1]))

        return ul, module
    if name == "mse-exact":
        make = exact_heatmaps
    elif name.startswith("mse-sigma-") and name in LOSSES:
        make = partial(gaussian_heatmaps, sigma=float(name[len("mse-sigma-"):]))
    else:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")

    def mse(outputs: Tensor, y: Tensor) -> Tensor:
        """Sum over stacks of the MSE against the same target heatmaps."""
        t = keypoint_target(y, stride)
        target = make(t.keypoints, t.visible, outputs.shape[-2:])
        return cast(Tensor, sum(heatmap_mse(outputs[:, k], target, t.visible) for k in range(outputs.shape[1])))

    return mse, None


def pose_evaluate(outputs: Tensor, y: Tensor, *, stride: int) -> Dict[str, float]:
    """PCK of the last stack's argmax on a whole split: ``pck`` (threshold 0.5, the headline),
    ``pck_0.25`` and ``mean_distance`` (distance / normaliser, averaged over visible joints)."""
    heat = outputs[:, -1]
    pred = from_heatmap(heatmap_argmax(heat), stride)
    gt, vis, norm = y[..., :2], y[..., 2], y[:, 0, 3]
    dist = (pred - gt).norm(dim=-1) / norm[:, None]
    return {
        "pck": float(keypoint_pck(pred, gt, vis, norm, 0.5)),
        "pck_0.25": float(keypoint_pck(pred, gt, vis, norm, 0.25)),
        "mean_distance": float(dist[vis != 0].mean()),
    }


# --------------------------------------------------------------------------- configurations


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
        from .models import StackedHourglass

        return HeatmapNet(StackedHourglass(self.stacks, num_joints, in_channels, width=self.width,
                                           depth=self.depth, stem=self.stem))


#: The paper's configuration (for a GPU): single-stack hourglass of width 256.
PAPER = PoseConfig(width=256)
PAPER_RECIPE = Recipe(epochs=50, batch_size=16, optimizer="rmsprop", lr=2.5e-4, milestones=(30, 40), gamma=0.25)

#: The reduced configuration for a 2-core CPU: width 32, 1,280 canvases, 10 epochs.
REDUCED = PoseConfig(width=32, train=1_280)
REDUCED_RECIPE = Recipe(epochs=10, batch_size=16, optimizer="rmsprop", lr=2.5e-4, milestones=(6, 8), gamma=0.25)


def _experiment(name: str, config: PoseConfig, recipe: Recipe, what: str) -> Experiment:
    return Experiment(
        name=name,
        description=f"digits-pose: find the 0 on 64x64 MNIST canvases, single-stack hourglass width "
        f"{config.width}, PCK@0.5 ({what}; paper sec. 4.2)",
        dataset="digits-pose (MNIST canvases; paper column: MPII head)",
        losses=LOSSES,
        recipe=recipe,
        load=partial(load_digits_pose, train=config.train),
        model=lambda loss: config.model(),
        loss=partial(pose_loss, stride=config.stride),
        evaluate=partial(pose_evaluate, stride=config.stride),
        paper={(loss, "pck"): v for loss, v in PAPER_PCKH.items()},
        notes=f"The paper column is the paper's Table 1, PCKh@0.5 of the head joint on MPII validation: a "
        f"different dataset, for the ordering of the losses only (its gap column means nothing here). "
        f"Ours: PCK@0.5 on the digits-pose test split (2,000 canvases), the joint the centre of the 0's ink "
        f"box, normaliser 0.6 x its diagonal; {config.train} training canvases, hourglass width "
        f"{config.width}, {16 * 4 // config.stride}x{16 * 4 // config.stride} heatmaps, sigma in heatmap "
        f"pixels; MSE targets are sub-pixel Gaussians (mse-exact: one-hot at the nearest pixel); UniLoss is "
        f"UniLoss(PCK(0.5)) with its defaults.",
    )


register(_experiment("digits-pose", REDUCED, REDUCED_RECIPE, "reduced configuration for a 2-core CPU"))
register(_experiment("digits-pose-paper", PAPER, PAPER_RECIPE, "the paper's network and schedule, for a GPU"))
register_table("pose", Table("digits-pose", LOSSES, ("pck", "pck_0.25"),
                             title="Keypoint PCK@0.5 on digits-pose (reduced CPU configuration) beside the "
                                   "paper's MPII head PCKh (a different dataset)",
                             paper_dataset="MPII validation, head PCKh"))
register_table("pose-paper", Table("digits-pose-paper", LOSSES, ("pck", "pck_0.25"),
                                   title="Keypoint PCK@0.5 on digits-pose (the paper's configuration) beside "
                                         "the paper's MPII head PCKh (a different dataset)",
                                   paper_dataset="MPII validation, head PCKh"))


# --------------------------------------------------------------------------- MPII (for users who have it)

#: Per-channel mean and std of MPII images (those of the PyTorch hourglass code, bearpaw/pytorch-pose).
MPII_MEAN, MPII_STD = (0.4404, 0.4440, 0.4327), (0.2458, 0.2410, 0.2468)


def load_mpii_splits(data_dir: Optional[str], device: torch.device, *, joints: Optional[Sequence[int]],
                     size: int = 256) -> Splits:
    """MPII's training people for training, its validation people for validation and test (the
    test set's labels are not public; the paper reports validation). Crops are cached under the
    user cache folder (``~/.cache/uniloss/mpii``) after the first read."""
    from .data import default_cache_dir
    from .mpii import find_mpii, load_mpii

    root = find_mpii(data_dir)
    cache = default_cache_dir() / "mpii"
    x_tr, y_tr, _ = load_mpii(root, "train", size=size, joints=joints, cache_dir=cache)
    x_va, y_va, _ = load_mpii(root, "valid", size=size, joints=joints, cache_dir=cache)
    x_tr, y_tr, x_va, y_va = (t.to(device) for t in (x_tr, y_tr, x_va, y_va))
    return Splits(x_tr, y_tr, x_va, y_va, x_va, y_va)


def mpii_evaluate(outputs: Tensor, y: Tensor, *, stride: int) -> Dict[str, float]:
    """PCKh@0.5 as MPII computes it, in crop pixels (the crop is a similarity, so this equals
    PCKh in image pixels up to the heatmap's quantisation): ``pckh`` is the head joint's with one
    joint, the benchmark's mean (pelvis and thorax left out) with all 16; ``pckh_all`` every
    visible joint; ``pckh_head`` the head top's."""
    from .mpii import HEAD_TOP, mpii_pckh

    pred = from_heatmap(heatmap_argmax(outputs[:, -1]), stride)
    gt, vis, norm = y[..., :2], y[..., 2], y[:, 0, 3]
    if y.shape[1] == 1:
        head = float(keypoint_pck(pred, gt, vis, norm, 0.5))
        return {"pckh": head, "pckh_head": head, "pckh_all": head}
    r = mpii_pckh(pred, gt, vis, norm, 0.5)
    return {"pckh": float(r["mean"]), "pckh_head": float(r["per_joint"][HEAD_TOP]), "pckh_all": float(r["all"])}


def _mpii_experiment(name: str, joints: Optional[Tuple[int, ...]], what: str) -> Experiment:
    from .mpii import JOINTS

    num = len(JOINTS) if joints is None else len(joints)
    return Experiment(
        name=name,
        description=f"MPII validation, {what}: the paper's single-stack hourglass (width 256, 256x256 crops, "
        f"64x64 heatmaps), PCKh@0.5 (paper sec. 4.2; needs MPII under --data-dir)",
        dataset=f"MPII ({what})",
        losses=LOSSES,
        recipe=PAPER_RECIPE,
        load=partial(load_mpii_splits, joints=joints),
        model=lambda loss: HeatmapNet(PAPER.model(num, 3).hourglass, mean=MPII_MEAN, std=MPII_STD, eval_chunk=64),
        loss=partial(pose_loss, stride=PAPER.stride),
        evaluate=partial(mpii_evaluate, stride=PAPER.stride),
        paper={(loss, "pckh"): v for loss, v in PAPER_PCKH.items()} if num == 1 else {},
        notes="MPII's validation people serve as validation and test; no augmentation; head sizes from "
        "annot/gt_valid.mat where present, else 0.6 x the entries' headbox diagonal, else the upper-neck to "
        "head-top distance.",
    )


def _register_mpii() -> None:
    from .mpii import HEAD_TOP

    register(_mpii_experiment("mpii-head", (HEAD_TOP,), "head top joint, as the paper"))
    register(_mpii_experiment("mpii-all", None, "all 16 joints"))
    register_table("pose-mpii", Table("mpii-head", LOSSES, ("pckh",), seeds=(0,),
                                      title="PCKh@0.5 of the head joint on MPII validation (paper Table 1)"))


_register_mpii()


# --------------------------------------------------------------------------- picture


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
    pos = uniloss.PCK(0.5).positive_mask((count, 1, 16, 16), t)
    for i in range(count):
        cx, cy, _, norm = y[i, 0].tolist()
        axes[0, i].imshow(x[i, 0], cmap="gray", vmin=0, vmax=255)
        axes[0, i].add_patch(plt.Circle((cx, cy), 0.5 * norm, fill=False, color="tab:orange", lw=1.2))
        axes[0, i].plot([cx], [cy], "+", color="tab:red", ms=9, mew=2)
        axes[1, i].imshow(pos[i, 0], cmap="Oranges", vmin=0, vmax=1.5)
        for r, sigma in enumerate(sigmas, start=2):
            axes[r, i].imshow(gaussian_heatmaps(t.keypoints[i : i + 1], t.visible[i : i + 1], (16, 16), sigma)[0, 0],
                              cmap="magma", vmin=0, vmax=1)
        for ax in axes[1:, i]:
            ax.plot([t.keypoints[i, 0, 0]], [t.keypoints[i, 0, 1]], "+", color="tab:cyan", ms=7, mew=1.5)
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


if __name__ == "__main__":  # python -m uniloss.experiments.pose docs/results/pose/examples.png
    import sys

    print(plot_examples(sys.argv[1] if len(sys.argv) > 1 else "digits-pose-examples.png"))
