"""The ``digits-pose`` benchmark (paper sec. 4.2; see :mod:`uniloss.experiments.pose` for its
definition): MNIST digits composited on 64 x 64 canvases, the 0's ink-box centre the joint, its
splits and the loader the training loop calls; and MPII's splits for users who have MPII.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..registry import Splits
from .heatmaps import pack_keypoints

__all__ = [
    "CanvasSpec", "DIGITS_POSE", "HEAD_SIZE_FACTOR", "ink_boxes", "head_size", "cover", "make_canvases",
    "mnist_images", "digits_pose_split", "load_digits_pose", "MPII_MEAN", "MPII_STD", "load_mpii_splits",
]


@dataclass(frozen=True)
class CanvasSpec:
    """How ``digits-pose`` canvases are drawn (see :mod:`uniloss.experiments.pose`).

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


def cover(box: Tensor, other: Tensor) -> Tensor:
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
    ok = cover(cand_box, box0[:, None, None]) <= spec.max_cover
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


def mnist_images(data_dir: Optional[str], split: str) -> Tuple[Tensor, Tensor]:
    """MNIST's ``split`` as ``(images uint8 [N, 28, 28], labels [N])``, read once per process."""
    from ..data import load_mnist

    key = (None if data_dir is None else str(data_dir), split)
    if key not in _POOLS:  # loading MNIST takes seconds; tests and in-process runs reuse it
        d = load_mnist(split, data_dir=data_dir)
        _POOLS[key] = (d.images, d.labels)
    return _POOLS[key]


def digits_pose_split(
    split: str, data_dir: Optional[str] = None, *, size: Optional[int] = None, spec: CanvasSpec = CanvasSpec(),
    return_sources: bool = False, draw: int = 0,
):
    """One split of ``digits-pose``: ``(canvases uint8 [k, 1, 64, 64], targets [k, 1, 4])``.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"`` (sizes and seeds in :data:`DIGITS_POSE`).
        data_dir: where MNIST is (see :mod:`uniloss.experiments.data`).
        size: render only the first ``size`` canvases (a prefix of the full split).
        return_sources: also return the MNIST split name and ``[n, D]`` indices into it of the
            images drawn (slot 0 the 0, -1 for an absent distractor), for all ``n`` canvases.
        draw: which draw of the canvases (``0``: the benchmark's; another draws them with the
            split's seed plus ``10000 x draw``, from the same MNIST images): the data's own
            spread, which a run's seed (the network and the batches) leaves out
            (``benchmarks/pose_draws_probe.py``).

    Example::

        >>> x, y = digits_pose_split("val", size=4)  # doctest: +SKIP
        >>> x.shape, y.shape  # doctest: +SKIP
        (torch.Size([4, 1, 64, 64]), torch.Size([4, 1, 4]))
    """
    if split not in DIGITS_POSE:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(DIGITS_POSE)}")
    if not isinstance(draw, int) or isinstance(draw, bool) or draw < 0:
        raise ValueError(f"draw must be a non-negative int, got {draw!r}")
    n, seed, source, (lo, hi) = DIGITS_POSE[split]
    if size is not None and not 0 < size <= n:
        raise ValueError(f"size must be in 1..{n} for split {split!r}, got {size}")
    images, labels = mnist_images(data_dir, source)
    images, labels = images[lo:hi], labels[lo:hi]
    zero = labels == 0
    g = torch.Generator().manual_seed(seed + 10_000 * draw)
    x, y, layout = make_canvases(images[zero], images[~zero], n, g, spec, render=size)
    if not return_sources:
        return x, y
    index = torch.arange(lo, lo + len(labels))
    sources = torch.cat([index[zero][layout["zero_index"]][:, None], index[~zero][layout["other_index"]]], 1)
    return x, y, source, torch.where(layout["present"], sources, -1)


def load_digits_pose(
    data_dir: Optional[str], device: torch.device, *, train: int, val: int = DIGITS_POSE["val"][0],
    test: int = DIGITS_POSE["test"][0], draw: int = 0,
) -> Splits:
    """The benchmark's splits (the first ``train`` / ``val`` / ``test`` canvases of each) as
    uint8 canvases and packed targets on ``device``; :class:`HeatmapNet` normalises them.
    ``draw``: of the canvases (:func:`digits_pose_split`)."""
    parts = [digits_pose_split(s, data_dir, size=k, draw=draw) for s, k in (("train", train), ("val", val), ("test", test))]
    return Splits(*(t.to(device) for part in parts for t in part))


# --------------------------------------------------------------------------- MPII (for users who have it)

#: Per-channel mean and std of MPII images (those of the PyTorch hourglass code, bearpaw/pytorch-pose).
MPII_MEAN, MPII_STD = (0.4404, 0.4440, 0.4327), (0.2458, 0.2410, 0.2468)


def load_mpii_splits(data_dir: Optional[str], device: torch.device, *, joints: Optional[Sequence[int]],
                     size: int = 256) -> Splits:
    """MPII's training people for training, its validation people for validation and test (the
    test set's labels are not public; the paper reports validation). Crops are cached under the
    user cache folder (``~/.cache/uniloss/mpii``) after the first read."""
    from ..data import default_cache_dir
    from ..mpii import find_mpii, load_mpii

    root = find_mpii(data_dir)
    cache = default_cache_dir() / "mpii"
    x_tr, y_tr, _ = load_mpii(root, "train", size=size, joints=joints, cache_dir=cache)
    x_va, y_va, _ = load_mpii(root, "valid", size=size, joints=joints, cache_dir=cache)
    x_tr, y_tr, x_va, y_va = (t.to(device) for t in (x_tr, y_tr, x_va, y_va))
    return Splits(x_tr, y_tr, x_va, y_va, x_va, y_va)
