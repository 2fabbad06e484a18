"""The pose losses (``--loss``, paper sec. 4.2, Table 1): ``mse-sigma-S`` for the paper's seven
widths (MSE against Gaussian target heatmaps, sigma in heatmap pixels), ``mse-exact`` (1 at the
pixel nearest the joint), ``uniloss`` (:class:`uniloss.UniLoss` over :class:`uniloss.PCK`, no
target design), ``uniloss-chain`` (the same with ``interpolation="chain"``, the defaults since
0.8) and ``uniloss-pck0.25`` (UniLoss over ``PCK(0.25)``: the stricter threshold the tables also
report, trained instead of PCK@0.5's).
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Optional, Tuple, cast

import torch
from torch import Tensor, nn

import uniloss

from .heatmaps import exact_heatmaps, gaussian_heatmaps, keypoint_target

__all__ = ["SIGMAS", "LOSSES", "TABLE_LOSSES", "heatmap_mse", "pose_loss"]


SIGMAS: Tuple[float, ...] = (0.1, 0.5, 0.7, 1.0, 3.0, 5.0, 10.0)


def _sigma_name(sigma: float) -> str:
    return f"mse-sigma-{sigma:g}"


#: Loss names: UniLoss first (the training loop's convention), then MSE per sigma, then exact,
#: then UniLoss with the chain's interpolation, then UniLoss trained on PCK@0.25.
LOSSES: Tuple[str, ...] = (("uniloss",) + tuple(_sigma_name(s) for s in SIGMAS)
                           + ("mse-exact", "uniloss-chain", "uniloss-pck0.25"))

#: The tables' rows: the paper's (UniLoss on PCK@0.5, MSE per sigma) and the exact target. Left
#: out: ``uniloss-chain``, which the defaults have been since 0.8 (its runs equal ``uniloss``'s to
#: the bit), and ``uniloss-pck0.25``, a probe; ``--losses`` trains either.
TABLE_LOSSES: Tuple[str, ...] = tuple(name for name in LOSSES if name not in ("uniloss-chain", "uniloss-pck0.25"))


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

        >>> from uniloss.experiments.pose import pack_keypoints
        >>> fn, module = pose_loss("mse-sigma-1", torch.Generator(), stride=4)
        >>> y = pack_keypoints(torch.full((2, 1, 2), 30.0), torch.ones(2, 1), torch.full((2,), 12.0))
        >>> float(fn(torch.zeros(2, 1, 1, 16, 16), y)) > 0, module is None
        (True, True)
    """
    if name in ("uniloss", "uniloss-chain", "uniloss-pck0.25"):
        # "uniloss": the library's defaults (the chain from 0.8; the tables before it: the anchors)
        if name == "uniloss-pck0.25":
            threshold = 0.25
        module = (uniloss.UniLoss(uniloss.PCK(threshold), generator=generator, interpolation="chain")
                  if name == "uniloss-chain" else uniloss.UniLoss(uniloss.PCK(threshold), generator=generator))

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
