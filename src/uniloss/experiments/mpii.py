"""MPII Human Pose (Andriluka et al., CVPR 2014) for users who have it: the single-person JSON
annotations, crops around the person, and PCKh as the MPII benchmark computes it.

MPII cannot be downloaded here; this module reads the files where a user has put them, in the
layout the widely used PyTorch pose code (Xiao et al.'s Simple Baselines, HRNet) uses::

    <data root>/mpii/annot/train.json      [{"image": "015601864.jpg", "center": [x, y],
    <data root>/mpii/annot/valid.json        "scale": s, "joints": [[x, y] x 16],
    <data root>/mpii/annot/gt_valid.mat      "joints_vis": [0/1 x 16], "headbox"?: [[x1, y1], [x2, y2]]}, ...]
    <data root>/mpii/images/*.jpg          (gt_valid.mat: the benchmark's head boxes, optional)

Conventions (those of that code and of MPII's MATLAB evaluation):

* coordinates in the JSON are MATLAB 1-based; they are read as 0-based pixel centres
  (``one_based=True``), so pixel ``(row i, column j)`` is at ``(x=j, y=i)``;
* ``scale`` is the person's height / 200 px; the crop is the square of side
  ``200 * scale * 1.25`` centred on ``center`` moved down by ``15 * scale`` px, resized to
  ``size`` x ``size`` (bilinear, no anti-aliasing, like ``cv2.warpAffine``);
* ``joints_vis`` marks annotated joints (the evaluation's ``1 - jnt_missing``); the others are
  left out of losses and metrics;
* the 16 joints, in MPII's order: :data:`JOINTS`; the head joint of PCKh tables is ``head_top``
  (index 9);
* PCKh@0.5: a joint is correct when its predicted position lies within ``0.5 * head size`` of
  the truth (inclusive), head size = ``0.6 * ||headbox corner 2 - corner 1||``; the benchmark's
  mean weights the joints by their visible counts and leaves out pelvis and thorax
  (:func:`mpii_pckh`). Head boxes come from the entries' ``"headbox"``, from a ``headboxes``
  file (``gt_valid.mat``'s ``headboxes_src``, or ``.json`` / ``.npy`` ``[N, 2, 2]``), or, where
  neither exists (the training split of that format), from the head segment: the distance from
  upper neck to head top (the paper's "head segment length"), as the head size itself.

Images are read with Pillow when it is installed (``pip install pillow``); without it, PNG
images are read with matplotlib and ``.npy`` arrays ``[H, W, 3]`` with numpy, and a JPEG raises an
ImportError that says what to install.

Example (a person whose crop is the whole 400 x 400 image)::

    >>> import torch
    >>> c, side = crop_box(torch.tensor([[199.5, 124.5]]), torch.tensor([1.6]))
    >>> c.tolist(), side.tolist()
    ([[199.5, 148.5]], [400.0])
    >>> to_crop(torch.tensor([[[199.5, 148.5]]]), c, side, 64).tolist()  # the centre
    [[[31.5, 31.5]]]
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "JOINTS", "HEAD_TOP", "MPIIAnnotations", "read_annotations", "read_headboxes", "read_image",
    "crop_box", "to_crop", "from_crop", "crop_image", "head_sizes", "mpii_pckh", "load_mpii",
    "find_mpii",
]

#: MPII's 16 joints in the annotation order.
JOINTS: Tuple[str, ...] = (
    "r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "pelvis", "thorax",
    "upper_neck", "head_top", "r_wrist", "r_elbow", "r_shoulder", "l_shoulder", "l_elbow", "l_wrist",
)
HEAD_TOP = 9
UPPER_NECK = 8
_EXCLUDED_FROM_MEAN = (6, 7)  # pelvis, thorax: left out of the benchmark's mean
PIXEL_STD = 200.0
SCALE_PAD = 1.25
CENTER_SHIFT = 15.0
HEAD_SIZE_FACTOR = 0.6

PathArg = Union[str, "os.PathLike[str]"]


@dataclass
class MPIIAnnotations:
    """Single-person annotations as tensors (0-based pixel coordinates).

    Attributes:
        images: image file names, one per person.
        joints: ``[N, 16, 2]`` ``(x, y)``.
        visible: ``[N, 16]`` bool, annotated joints.
        center: ``[N, 2]`` the person's centre as annotated (before the crop's shift).
        scale: ``[N]`` person height / 200 px.
        headboxes: ``[N, 2, 2]`` head boxes ``((x1, y1), (x2, y2))``, or ``None``.
    """

    images: List[str]
    joints: Tensor
    visible: Tensor
    center: Tensor
    scale: Tensor
    headboxes: Optional[Tensor] = None

    def __len__(self) -> int:
        return len(self.images)

    def head_sizes(self) -> Tensor:
        """``[N]`` PCKh normalisers: ``0.6 * ||headbox diagonal||``, or the upper neck to head
        top distance where there are no head boxes."""
        if self.headboxes is not None:
            return head_sizes(self.headboxes)
        return (self.joints[:, HEAD_TOP] - self.joints[:, UPPER_NECK]).norm(dim=-1)


def head_sizes(headboxes: Tensor) -> Tensor:
    """MPII's head size ``0.6 * ||(x2, y2) - (x1, y1)||`` of ``[N, 2, 2]`` boxes: ``[N]``."""
    return HEAD_SIZE_FACTOR * (headboxes[:, 1] - headboxes[:, 0]).norm(dim=-1)


def read_headboxes(path: PathArg) -> Tensor:
    """Head boxes ``[N, 2, 2]`` from ``gt_valid.mat`` (``headboxes_src`` ``[2, 2, N]``, needs
    scipy), or a ``.json`` / ``.npy`` array ``[N, 2, 2]``; coordinates as stored."""
    path = Path(path)
    if path.suffix == ".mat":
        try:
            from scipy.io import loadmat
        except ImportError as exc:  # pragma: no cover - scipy ships with scikit-learn
            raise ImportError("reading gt_valid.mat needs scipy: pip install scipy") from exc
        boxes = torch.as_tensor(loadmat(str(path))["headboxes_src"], dtype=torch.float32).permute(2, 0, 1)
    elif path.suffix == ".npy":
        import numpy as np

        boxes = torch.as_tensor(np.load(path), dtype=torch.float32)
    else:
        boxes = torch.tensor(json.loads(path.read_text()), dtype=torch.float32)
    if boxes.dim() != 3 or boxes.shape[1:] != (2, 2):
        raise ValueError(f"head boxes in {path} must have shape [N, 2, 2], got {tuple(boxes.shape)}")
    return boxes


def read_annotations(path: PathArg, *, headboxes: Optional[Union[PathArg, Tensor]] = None,
                     one_based: bool = True) -> MPIIAnnotations:
    """Read the single-person JSON (a list of people, see the module docstring).

    Args:
        path: the JSON file.
        headboxes: head boxes for the entries, in order (a file for :func:`read_headboxes` or a
            ``[N, 2, 2]`` tensor), used where the entries have no ``"headbox"``.
        one_based: the file's coordinates are MATLAB 1-based (the format's convention).

    Raises:
        ValueError: an entry without the format's keys, or head boxes of another count.
    """
    entries = json.loads(Path(path).read_text())
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of people, got {type(entries).__name__}")
    need = ("image", "center", "scale", "joints", "joints_vis")
    for i, e in enumerate(entries):
        missing = [k for k in need if k not in e]
        if missing:
            raise ValueError(f"{path}: entry {i} lacks {', '.join(missing)} (keys: {', '.join(sorted(e))})")
    off = 1.0 if one_based else 0.0
    joints = torch.tensor([e["joints"] for e in entries], dtype=torch.float32).reshape(len(entries), -1, 2) - off
    visible = torch.tensor([e["joints_vis"] for e in entries], dtype=torch.float32).reshape(len(entries), -1) > 0
    center = torch.tensor([e["center"] for e in entries], dtype=torch.float32).reshape(-1, 2) - off
    scale = torch.tensor([float(e["scale"]) for e in entries], dtype=torch.float32)
    boxes: Optional[Tensor] = None
    if entries and all("headbox" in e for e in entries):
        boxes = torch.tensor([e["headbox"] for e in entries], dtype=torch.float32).reshape(-1, 2, 2) - off
    elif headboxes is not None:
        boxes = headboxes if isinstance(headboxes, Tensor) else read_headboxes(headboxes)
        if len(boxes) != len(entries):
            raise ValueError(f"{len(boxes)} head boxes for the {len(entries)} people of {path}")
        boxes = boxes.float() - off
    return MPIIAnnotations([e["image"] for e in entries], joints, visible, center, scale, boxes)


def read_image(path: PathArg) -> Tensor:
    """An RGB image as uint8 ``[3, H, W]`` (Pillow; PNG and ``.npy`` also without it)."""
    path = Path(path)
    if path.suffix == ".npy":
        import numpy as np

        arr = np.load(path)
    else:
        try:
            from PIL import Image
        except ImportError:
            if path.suffix.lower() != ".png":
                raise ImportError(f"reading {path.name} needs Pillow: pip install pillow") from None
            import matplotlib.image as mpimg
            import numpy as np

            arr = mpimg.imread(str(path))
            arr = (arr * 255).round().astype(np.uint8) if arr.dtype != np.uint8 else arr
        else:
            with Image.open(path) as img:
                import numpy as np

                arr = np.array(img.convert("RGB"))
    t = torch.as_tensor(arr)
    if t.dim() == 2:
        t = t[..., None].expand(*t.shape, 3)
    return t[..., :3].permute(2, 0, 1).contiguous().to(torch.uint8)


def crop_box(
    center: Tensor, scale: Tensor, *, pad: float = SCALE_PAD, shift: float = CENTER_SHIFT,
) -> Tuple[Tensor, Tensor]:
    """The square around each person: ``(centre [N, 2], side [N])`` in image pixels; the centre
    moved down by ``shift * scale``, the side ``200 * scale * pad``."""
    c = center.clone()
    c[:, 1] = c[:, 1] + shift * scale
    return c, PIXEL_STD * scale * pad


def to_crop(points: Tensor, center: Tensor, side: Tensor, size: int) -> Tensor:
    """Image coordinates ``[N, J, 2]`` -> crop coordinates of the ``size`` x ``size`` crop of
    the square ``(center, side)``: ``(p - c + side / 2) * size / side - 0.5`` (pixel centres)."""
    k = (size / side)[:, None, None]
    return (points - center[:, None] + side[:, None, None] / 2) * k - 0.5


def from_crop(points: Tensor, center: Tensor, side: Tensor, size: int) -> Tensor:
    """Inverse of :func:`to_crop`: crop coordinates back to the image's."""
    k = (side / size)[:, None, None]
    return (points + 0.5) * k + center[:, None] - side[:, None, None] / 2


def crop_image(image: Tensor, center: Tensor, side: float, size: int) -> Tensor:
    """The ``size`` x ``size`` crop of the square of ``side`` px centred on ``center`` (``[2]``,
    image pixels) from ``image`` (``[C, H, W]`` uint8): bilinear, black outside the image."""
    c, h, w = image.shape
    j = torch.arange(size, dtype=torch.float32) + 0.5
    px = j * (side / size) + float(center[0]) - side / 2  # source pixel-centre coordinates
    py = j * (side / size) + float(center[1]) - side / 2
    gx, gy = 2 * (px + 0.5) / w - 1, 2 * (py + 0.5) / h - 1
    grid = torch.stack([gx[None, :].expand(size, size), gy[:, None].expand(size, size)], -1)[None]
    out = F.grid_sample(image[None].float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[0].round().clamp(0, 255).to(torch.uint8)


def mpii_pckh(pred: Tensor, gt: Tensor, visible: Tensor, headsize: Tensor, threshold: float = 0.5) -> Dict[str, Tensor]:
    """PCKh as MPII's evaluation computes it (``evaluatePCKh.m``; HRNet's ``mpii.evaluate``).

    Args:
        pred, gt: ``[N, 16, 2]`` in the same (image) coordinates.
        visible: ``[N, 16]`` annotated joints.
        headsize: ``[N]`` head sizes (:func:`head_sizes`).
        threshold: 0.5 for PCKh@0.5.

    Returns:
        ``{"per_joint": [16] fractions (NaN for a joint never visible), "head": head top's,
        "mean": the benchmark's mean (joints weighted by their visible counts, pelvis and thorax
        left out), "all": over every visible joint}``.

    Example::

        >>> gt = torch.zeros(1, 16, 2); vis = torch.ones(1, 16)
        >>> pred = gt.clone(); pred[0, :8, 0] = 4.0                   # 8 joints 4 px off
        >>> r = mpii_pckh(pred, gt, vis, torch.tensor([6.0]))         # radius 3 px
        >>> float(r["head"]), round(float(r["mean"]), 4), float(r["all"])
        (1.0, 0.5714, 0.5)
    """
    vis = visible != 0
    err = (pred - gt).norm(dim=-1) / headsize[:, None]
    ok = (err <= threshold) & vis
    count = vis.sum(0).float()
    per_joint = ok.sum(0).float() / count
    weight = count.clone()
    weight[list(_EXCLUDED_FROM_MEAN)] = 0
    mean = (per_joint.nan_to_num(0.0) * weight).sum() / weight.sum()
    return {"per_joint": per_joint, "head": per_joint[HEAD_TOP], "mean": mean, "all": ok.sum() / vis.sum()}


def find_mpii(data_dir: Optional[PathArg] = None) -> Path:
    """The ``mpii`` folder of the first data root holding ``mpii/annot/valid.json``.

    Raises:
        DatasetNotFoundError: naming every folder searched and the expected layout.
    """
    from .data import DatasetNotFoundError, search_roots

    roots = search_roots(data_dir)
    for root in roots:
        if (root.path / "mpii" / "annot" / "valid.json").is_file():
            return root.path / "mpii"
    searched = [str(r.path / "mpii") for r in roots]
    raise DatasetNotFoundError(
        "MPII is not here (it cannot be downloaded automatically: get it from "
        "http://human-pose.mpi-inf.mpg.de and the single-person JSON annotations, e.g. those of "
        "HRNet's repository). Expected <root>/mpii/annot/{train,valid}.json and <root>/mpii/images/; "
        f"searched: {', '.join(searched)}",
        dataset="mpii", missing=("annot/valid.json",), searched=searched,
    )


def load_mpii(
    root: PathArg, split: str, *, size: int = 256, joints: Optional[Sequence[int]] = None,
    cache_dir: Optional[PathArg] = None, limit: Optional[int] = None,
) -> Tuple[Tensor, Tensor, Dict[str, Tensor]]:
    """Person crops and packed targets of one split of MPII.

    Args:
        root: the ``mpii`` folder (``annot/``, ``images/``).
        split: ``"train"`` or ``"valid"`` (``annot/<split>.json``; ``annot/gt_valid.mat`` gives
            the validation head boxes when present).
        size: crop side in pixels (the paper's network: 256).
        joints: joint indices to keep (default all 16; ``(HEAD_TOP,)`` is the paper's setting).
        cache_dir: where the crops are kept between runs (a file per split, size, annotation
            content); ``None``: no cache.
        limit: the first ``limit`` people only.

    Returns:
        ``(images uint8 [N, 3, size, size], targets [N, J, 4], meta)``: targets are
        ``(x, y, visible, head size)`` in crop pixels (head size scaled like the crop, so that
        PCKh in crop pixels equals PCKh in image pixels); ``meta`` holds ``center`` and ``side``
        of each crop (:func:`from_crop` maps predictions back) and ``headsize`` in image pixels.
    """
    from .pose import pack_keypoints

    root = Path(root)
    ann_path = root / "annot" / f"{split}.json"
    mat = root / "annot" / f"gt_{split}.mat"
    ann = read_annotations(ann_path, headboxes=mat if mat.is_file() else None)
    n = len(ann) if limit is None else min(limit, len(ann))
    keep = list(range(len(JOINTS))) if joints is None else list(joints)
    center, side = crop_box(ann.center[:n], ann.scale[:n])
    cache = None
    if cache_dir is not None:
        digest = hashlib.sha256(ann_path.read_bytes()).hexdigest()[:16]
        cache = Path(cache_dir) / f"mpii-{split}-{size}-{n}-{digest}.pt"
    if cache is not None and cache.is_file():
        images = torch.load(cache)
    else:
        images = torch.empty(n, 3, size, size, dtype=torch.uint8)
        for i in range(n):
            images[i] = crop_image(read_image(root / "images" / ann.images[i]), center[i], float(side[i]), size)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp")
            torch.save(images, tmp)
            os.replace(tmp, cache)
    hs = ann.head_sizes()[:n]
    xy = to_crop(ann.joints[:n][:, keep], center, side, size)
    targets = pack_keypoints(xy, ann.visible[:n][:, keep], hs * size / side)
    return images, targets, {"center": center, "side": side, "headsize": hs}
