"""The pose experiments and tables, registered in :mod:`uniloss.experiments.registry` on import:
experiments ``digits-pose`` (reduced, CPU), ``digits-pose-paper`` (the paper's configuration),
``mpii-head`` and ``mpii-all`` (MPII, for users who have it); tables ``pose``, ``pose-paper`` and
``pose-mpii``, with the paper's Table 1 (:data:`PAPER_PCKH`) beside ours.

Example::

    >>> from uniloss.experiments.registry import EXPERIMENTS, TABLES
    >>> EXPERIMENTS["digits-pose"].losses == LOSSES, TABLES["pose"].experiment, PAPER_PCKH["uniloss"]
    (True, 'digits-pose', 0.9577)
"""

from __future__ import annotations

from functools import partial
from typing import Dict, Optional, Tuple

from ..registry import Experiment, Recipe, Table, register, register_table
from .data import MPII_MEAN, MPII_STD, load_digits_pose, load_mpii_splits
from .evaluate import mpii_evaluate, pose_evaluate
from .losses import LOSSES, TABLE_LOSSES, pose_loss
from .model import PAPER, PAPER_RECIPE, REDUCED, REDUCED_RECIPE, HeatmapNet, PoseConfig

__all__ = ["PAPER_PCKH"]

#: The paper's Table 1: PCKh of the head joint on MPII's validation set (a different dataset).
PAPER_PCKH: Dict[str, float] = {
    "mse-sigma-0.1": 0.9131, "mse-sigma-0.5": 0.9513, "mse-sigma-0.7": 0.9306, "mse-sigma-1": 0.9571,
    "mse-sigma-3": 0.9574, "mse-sigma-5": 0.9499, "mse-sigma-10": 0.9225, "uniloss": 0.9577,
}


def _experiment(name: str, config: PoseConfig, recipe: Recipe, what: str) -> Experiment:
    return Experiment(
        name=name,
        description=f"find the 0 on 64x64 MNIST canvases, single-stack hourglass width "
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
register_table("pose", Table("digits-pose", TABLE_LOSSES, ("pck", "pck_0.25"),
                             title="Keypoint PCK@0.5 on digits-pose (reduced CPU configuration) beside the "
                                   "paper's MPII head PCKh (a different dataset)",
                             paper_dataset="MPII validation, head PCKh"))
register_table("pose-paper", Table("digits-pose-paper", TABLE_LOSSES, ("pck", "pck_0.25"),
                                   title="Keypoint PCK@0.5 on digits-pose (the paper's configuration) beside "
                                         "the paper's MPII head PCKh (a different dataset)",
                                   paper_dataset="MPII validation, head PCKh"))


def _mpii_experiment(name: str, joints: Optional[Tuple[int, ...]], what: str) -> Experiment:
    from ..mpii import JOINTS

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
    from ..mpii import HEAD_TOP

    register(_mpii_experiment("mpii-head", (HEAD_TOP,), "head top joint, as the paper"))
    register(_mpii_experiment("mpii-all", None, "all 16 joints"))
    register_table("pose-mpii", Table("mpii-head", TABLE_LOSSES, ("pckh",), seeds=(0,),
                                      title="PCKh@0.5 of the head joint on MPII validation (paper Table 1)"))


_register_mpii()
