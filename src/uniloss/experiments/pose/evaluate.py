"""Evaluation of a pose network on a whole split: PCK of the last stack's heatmap argmax on
``digits-pose`` (:func:`pose_evaluate`) and MPII's PCKh (:func:`mpii_evaluate`).
"""

from __future__ import annotations

from typing import Dict

from torch import Tensor

from .heatmaps import from_heatmap, heatmap_argmax, keypoint_pck

__all__ = ["pose_evaluate", "mpii_evaluate"]


def pose_evaluate(outputs: Tensor, y: Tensor, *, stride: int) -> Dict[str, float]:
    """PCK of the last stack's argmax on a whole split: ``pck`` (threshold 0.5, the headline),
    ``pck_0.25`` and ``mean_distance`` (distance / normaliser, averaged over visible joints).

    Example::

        >>> import torch
        >>> from uniloss.experiments.pose import pack_keypoints
        >>> y = pack_keypoints(torch.tensor([[[30.0, 20.0]]]), torch.ones(1, 1), torch.tensor([12.0]))
        >>> heat = torch.zeros(1, 1, 1, 16, 16); heat[0, 0, 0, 5, 7] = 1.0  # argmax (7, 5): input (29.5, 21.5)
        >>> pose_evaluate(heat, y, stride=4)
        {'pck': 1.0, 'pck_0.25': 1.0, 'mean_distance': 0.131...}
    """
    heat = outputs[:, -1]
    pred = from_heatmap(heatmap_argmax(heat), stride)
    gt, vis, norm = y[..., :2], y[..., 2], y[:, 0, 3]
    dist = (pred - gt).norm(dim=-1) / norm[:, None]
    return {
        "pck": float(keypoint_pck(pred, gt, vis, norm, 0.5)),
        "pck_0.25": float(keypoint_pck(pred, gt, vis, norm, 0.25)),
        "mean_distance": float(dist[vis != 0].mean()),
    }


def mpii_evaluate(outputs: Tensor, y: Tensor, *, stride: int) -> Dict[str, float]:
    """PCKh@0.5 as MPII computes it, in crop pixels (the crop is a similarity, so this equals
    PCKh in image pixels up to the heatmap's quantisation): ``pckh`` is the head joint's with one
    joint, the benchmark's mean (pelvis and thorax left out) with all 16; ``pckh_all`` every
    visible joint; ``pckh_head`` the head top's."""
    from ..mpii import HEAD_TOP, mpii_pckh

    pred = from_heatmap(heatmap_argmax(outputs[:, -1]), stride)
    gt, vis, norm = y[..., :2], y[..., 2], y[:, 0, 3]
    if y.shape[1] == 1:
        head = float(keypoint_pck(pred, gt, vis, norm, 0.5))
        return {"pckh": head, "pckh_head": head, "pckh_all": head}
    r = mpii_pckh(pred, gt, vis, norm, 0.5)
    return {"pckh": float(r["mean"]), "pckh_head": float(r["per_joint"][HEAD_TOP]), "pckh_all": float(r["all"])}
