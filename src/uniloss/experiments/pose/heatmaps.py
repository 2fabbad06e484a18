"""Keypoint targets and the PCK metric of ``digits-pose`` (paper sec. 4.2): targets packed as one
tensor per sample, the input-pixel <-> heatmap-pixel maps, the MSE losses' target heatmaps, the
heatmap argmax and PCK.

Coordinates are ``(x, y)`` = (column, row) with pixel ``(i, j)`` centred at ``x = j, y = i``.
Targets travel through the training loop as ``[N, J, 4]`` = ``(x, y, visible, normaliser)`` in
input-image pixels (:func:`pack_keypoints`); losses and evaluation unpack them into heatmap pixels
for the network's output stride (:func:`keypoint_target`).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

import uniloss

__all__ = [
    "pack_keypoints", "to_heatmap", "from_heatmap", "keypoint_target",
    "gaussian_heatmaps", "exact_heatmaps", "heatmap_argmax", "keypoint_pck",
]


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
