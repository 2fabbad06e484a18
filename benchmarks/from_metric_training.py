"""uniloss.from_metric against the hand-written decompositions: training results and cost per call.

    python benchmarks/from_metric_training.py                   # writes docs/results/from-metric/
    python benchmarks/from_metric_training.py --seeds 0 --quick # a smoke run (prints, writes nothing)

Training: every metric of issue #18 (accuracy, top-k accuracy, AP written with argsort, F1 at a
threshold, NDCG@k, mean IoU with a pixel argmax, PCK with a spatial argmax, and torchmetrics'
``multiclass_accuracy``, ``binary_f1_score``, ``binary_average_precision``,
``retrieval_normalized_dcg``, and ``binary_auroc`` and ``multiclass_matthews_corrcoef``, which
branch in Python on their counts) trained through ``uniloss.from_metric`` and through the library's
hand-written decomposition of the same metric, on a small task that uses it. Within a task every
route shares the model, optimiser, learning rate, batches, epochs, seeds and anchor generator;
only the decomposition differs. Small tasks, each judged on its test split by the metric
trained (``TASKS`` below; the metric-wins suite's data and models where they fit):

* digits accuracy, digits top-2 accuracy: scikit-learn's digits, MLP 64-128-10, batch 128;
* digits Matthews correlation: the same data and model;
* imbalanced AP, F1 at threshold 0, AUROC: ``make_classification`` with 5% positives, MLP 20-64-64-1;
* digit retrieval NDCG@5: the metric-wins ``ndcg5`` task (queries of 20 digits images);
* mean IoU: the metric-wins ``seg-miou`` task (noisy occluded MNIST masks, FCN), shortened;
* PCK: ``digits-pose`` canvases (a 0 among distractor digits, 64 x 64), a small stride-4 CNN.

On untied scores the two routes have the same comparisons, best configuration and metric values
(``tests/test_from_metric.py``), so with the same anchors they give the same loss up to float
rounding (a traced metric is computed by the user's code in its own dtype, the hand-written one
by its own formula); over a whole run such rounding can move a result within the seeds' spread.
The verdict of a traced row: its mean is within the larger of the two routes' standard
deviations of the hand-written mean.

Cost: forward + backward of the loss on one batch of 128 (rows, items or pixels), traced against
hand-written, interleaved call by call so that machine noise hits both; the medians of the
calling thread's CPU time (robust to other jobs on the machine) and of wall time, and their
ratio, measured in one run. ``--baseline FILE`` also times an earlier ``_traced.py`` (e.g.
``git show d81d48e:src/uniloss/_traced.py > old_traced.py``, the commit that added ``from_metric``) in the same interleaving.

Writes ``results.json`` (every seed, every epoch's test metric, every timing) and ``README.md``.
Training runs go ``--jobs`` at a time (one thread each).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

import uniloss
from uniloss import zoo
from uniloss.decoders import RankingTarget
from uniloss.experiments import metric_wins as M
from uniloss.experiments.reproduce import command_line

# --------------------------------------------------------------------------- the metrics, as plain code


def accuracy(scores, target):
    """``scores [n, C]``, ``target [n]``: the fraction of argmax predictions that are right."""
    return (scores.argmax(dim=1) == target).float().mean()


def top2_accuracy(scores, target):
    """``scores [n, C]``, ``target [n]``: the fraction of rows whose target is among the top 2."""
    return (scores.topk(2, dim=1).indices == target[:, None]).any(dim=1).float().mean()


def average_precision(scores, target):
    """``scores [n]``, ``target [n]`` in {0, 1}: AP of the ranking by score, with an argsort."""
    order = torch.argsort(scores, descending=True)
    relevant = target[order].float()
    precision = relevant.cumsum(0) / torch.arange(1, scores.numel() + 1)
    return (precision * relevant).sum() / relevant.sum()


def f1(scores, target):
    """``scores [n]``, ``target [n]`` in {0, 1}: F1 of the decisions ``scores > 0``."""
    pred = scores > 0.0
    tp = (pred & (target == 1)).sum()
    return 2 * tp / (pred.sum() + (target == 1).sum()).clamp_min(1)


def ndcg_at_5(scores, relevance):
    """``scores [Q, n]``, ``relevance [Q, n]``: NDCG@5 of each query's ranking (argsort), averaged."""
    top = scores.argsort(dim=1, descending=True)[:, :5]
    discount = 1.0 / torch.log2(torch.arange(5, dtype=torch.float64) + 2)
    dcg = (relevance.gather(1, top).double() * discount).sum(1)
    ideal = (relevance.double().sort(dim=1, descending=True).values[:, :5] * discount).sum(1)
    return (dcg / ideal).mean()


def mean_iou(scores, target):
    """``scores [n, 2, H, W]``, ``target [n, H, W]``: IoU of the pixel argmax, averaged over the
    classes present in either map."""
    pred = scores.argmax(dim=1)
    ious = []
    for c in range(scores.shape[1]):
        inter = ((pred == c) & (target == c)).sum()
        union = ((pred == c) | (target == c)).sum()
        ious.append(torch.where(union > 0, inter / union.clamp_min(1), torch.nan))
    return torch.stack(ious).nanmean()


def pck(heatmaps, target, threshold=0.5):
    """``heatmaps [n, J, H, W]``, a ``uniloss.KeypointTarget``: the share of visible joints whose
    heatmap argmax lies within ``threshold * normaliser`` of the joint."""
    keypoints, visible, normalizer = target
    width = heatmaps.shape[-1]
    pixel = heatmaps.flatten(2).argmax(dim=-1)
    xy = torch.stack([pixel % width, pixel // width], dim=-1).to(keypoints.dtype)
    close = ((xy - keypoints) ** 2).sum(-1) <= (threshold * normalizer[:, None]) ** 2
    return (close & visible).sum() / visible.sum()


def _torchmetrics():
    """torchmetrics' functional metrics (an optional extra): name -> fn, or {} without it."""
    try:
        from torchmetrics.functional.classification import (binary_auroc, binary_average_precision,
                                                            binary_f1_score, multiclass_accuracy,
                                                            multiclass_matthews_corrcoef)
        from torchmetrics.functional.retrieval import retrieval_normalized_dcg
    except ImportError:
        return {}

    return {
        "multiclass_accuracy": functools.partial(multiclass_accuracy, num_classes=10, average="micro"),
        "binary_average_precision": binary_average_precision,
        "binary_f1_score": binary_f1_score,
        "binary_auroc": binary_auroc,  # Python branches on its counts: followed (tests/test_traced_guards.py)
        "multiclass_matthews_corrcoef": functools.partial(multiclass_matthews_corrcoef, num_classes=10),
        "retrieval_normalized_dcg": functools.partial(retrieval_normalized_dcg, top_k=5),
        "retrieval_normalized_dcg (all items)": retrieval_normalized_dcg,
    }


# --------------------------------------------------------------------------- training

NDCG_QUERIES, NDCG_SIZE = 8, 20  # per batch: queries of 20 items (the metric-wins ndcg5 task)


def _digits_run(decomposition, seed: int, epochs: int, evaluate: Callable) -> List[float]:
    xtr, xte, ytr, yte = M.digits_split()
    return M._run_classes(xtr, ytr, xte, yte, lambda: M.mlp(64, 128, 10), evaluate, "uniloss", seed, {},
                          decomposition=decomposition, epochs=epochs)


def _binary_run(decomposition, seed: int, epochs: int, evaluate: Callable) -> List[float]:
    xtr, ytr, _, _, xte, yte = M.imbalanced_binary()
    model = M.seeded(seed, lambda: M.mlp(20, 64, 64, 1))
    gen = torch.Generator().manual_seed(seed)
    # the pull per run: a traced function has no margins (0.4's pull on them is the built-in AP's
    # alone), and this table compares the routes like for like
    loss_fn = M._uniloss(decomposition, seed, {"pull_per": "run"})
    opt = M.sgd(model, 0.1)
    return M.fit(model, opt, M.shuffled(len(ytr), 128, gen),
                 lambda m, idx: loss_fn(m(xtr[idx]).reshape(-1), ytr[idx]), epochs,
                 lambda m: float(evaluate(m(xte).reshape(-1), yte)), M.cosine(opt, epochs))


def _ndcg_run(decomposition, seed: int, epochs: int, rows: bool, per_batch: int = NDCG_QUERIES) -> List[float]:
    """The metric-wins ``ndcg5`` task (``M.run_ndcg``) with ``decomposition``: scores of
    ``per_batch`` queries x 20 items per batch, flat with a ``RankingTarget`` (``rows=False``, the
    library's layout) or ``[per_batch, 20]`` with the relevance of that shape (``rows=True``, a
    plain function's; with one query per batch, ``[20]``: torchmetrics' retrieval functions take
    one query)."""
    xtr, xte, ytr, yte = M.digits_split()
    metric = zoo.ndcg_at_k(5)
    gen = torch.Generator().manual_seed(seed)
    test_items, test_q, test_rel, test_query = M.retrieval_queries(yte, 300, NDCG_SIZE,
                                                                   torch.Generator().manual_seed(1234))
    test_target = RankingTarget(test_rel, test_query)
    model = M.seeded(seed, lambda: M.mlp(64, 128, 10))
    loss_fn = M._uniloss(decomposition, seed, {})
    train_queries = 160

    def scores_of(m, x, items, q):
        out = m(x[items]).reshape(len(q), -1, 10)
        return out.gather(2, q[:, None, None].expand(-1, out.shape[1], 1)).reshape(-1)

    def batches(epoch):
        items, q, rel, query = M.retrieval_queries(ytr, train_queries, NDCG_SIZE, gen)
        n = per_batch * NDCG_SIZE
        return [(items[i * n:(i + 1) * n], q[i * per_batch:(i + 1) * per_batch], rel[i * n:(i + 1) * n],
                 query[i * n:(i + 1) * n] - i * per_batch) for i in range(train_queries // per_batch)]

    def step(m, batch):
        items, q, rel, query = batch
        s = scores_of(m, xtr, items, q)
        if rows:
            shape = (per_batch, NDCG_SIZE) if per_batch > 1 else (NDCG_SIZE,)
            return loss_fn(s.reshape(shape), rel.reshape(shape))
        return loss_fn(s, RankingTarget(rel, query))

    opt = M.sgd(model, 0.1)
    return M.fit(model, opt, batches, step, epochs,
                 lambda m: float(metric.metric(scores_of(m, xte, test_items, test_q), test_target)),
                 M.cosine(opt, epochs))


SEG_TRAIN, SEG_TEST = 2000, 1000


def _seg_run(decomposition, seed: int, epochs: int) -> List[float]:
    """The metric-wins ``seg-miou`` task in its quick form (``M.run_segmentation``): 2,000
    training and 1,000 test images, batch 32."""
    xtr, mtr = M.noisy_masks("train", SEG_TRAIN, seed=0)
    xte, mte = M.noisy_masks("test", SEG_TEST, seed=1)
    metric = zoo.mean_iou(2)
    loss_fn = M._uniloss(decomposition, seed, {})
    model = M.seeded(seed, M.fcn)
    gen = torch.Generator().manual_seed(seed)
    opt = M.sgd(model, 0.1)
    return M.fit(model, opt, M.shuffled(SEG_TRAIN, 32, gen), lambda m, idx: loss_fn(m(xtr[idx]), mtr[idx]), epochs,
                 lambda m: float(metric.metric(m(xte), mte)), M.cosine(opt, epochs))


POSE_TRAIN, POSE_TEST, POSE_STRIDE = 1280, 500, 4


def _pose_net() -> nn.Module:
    """``[N, 1, 64, 64]`` uint8 canvases -> ``[N, 1, 16, 16]`` heatmaps (stride 4)."""
    from uniloss.experiments.registry import MNIST_MEAN, MNIST_STD

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(1, 16, 5, stride=2, padding=2), nn.ReLU(),
                nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                nn.Conv2d(32, 32, 3, padding=2, dilation=2), nn.ReLU(),
                nn.Conv2d(32, 1, 1),
            )

        def forward(self, x):
            return self.body((x.float() / 255.0 - MNIST_MEAN) / MNIST_STD)

    return Net()


def _pose_run(decomposition, seed: int, epochs: int) -> List[float]:
    """PCK@0.5 on ``digits-pose`` (``uniloss.experiments.pose``): the first 1,280 training and 500
    test canvases, one joint (the 0's centre), heatmaps at stride 4; RMSProp lr 1e-3, batch 16."""
    from uniloss.experiments import pose as P

    xtr, ytr = P.digits_pose_split("train", size=POSE_TRAIN)
    xte, yte = P.digits_pose_split("test", size=POSE_TEST)
    model = M.seeded(seed, _pose_net)
    gen = torch.Generator().manual_seed(seed)
    loss_fn = M._uniloss(decomposition, seed, {})
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    test_target = P.keypoint_target(yte, POSE_STRIDE)
    metric = uniloss.PCK(0.5)
    return M.fit(model, opt, M.shuffled(POSE_TRAIN, 16, gen),
                 lambda m, idx: loss_fn(m(xtr[idx]), P.keypoint_target(ytr[idx], POSE_STRIDE)), epochs,
                 lambda m: float(metric.metric(m(xte), test_target)), M.cosine(opt, epochs))


def _tasks() -> Dict[str, Dict[str, Any]]:
    """Each task: its set-up, epochs (full / ``--quick``), the hand-written route first, then the
    traced ones: route name -> factory of the decomposition; ``run(decomposition, seed, epochs)``
    -> the test metric after each epoch."""
    tm = _torchmetrics()

    def traced(name: str, fn: Callable) -> Dict[str, Callable]:
        return {f"traced: from_metric({name})": lambda: uniloss.from_metric(fn)}

    def tm_route(name: str) -> Dict[str, Callable]:
        return traced(f"torchmetrics {name}", tm[name]) if name in tm else {}

    top2 = zoo.top_k_accuracy(2)
    return {
        "digits accuracy": dict(
            data="scikit-learn's digits, 10 classes (1,257 train, 540 test images)", model="MLP 64-128-10, batch 128",
            epochs=30, quick_epochs=3,
            routes={"hand-written: uniloss.MulticlassAccuracy()": uniloss.MulticlassAccuracy,
                    **traced("accuracy", accuracy), **tm_route("multiclass_accuracy")},
            run=lambda dec, seed, epochs: _digits_run(dec, seed, epochs, accuracy)),
        "digits top-2 accuracy": dict(
            data="the same", model="the same", epochs=30, quick_epochs=3,
            routes={"hand-written: zoo.top_k_accuracy(2)": lambda: zoo.top_k_accuracy(2),
                    **traced("top2_accuracy", top2_accuracy)},
            run=lambda dec, seed, epochs: _digits_run(dec, seed, epochs, top2.metric)),
        "imbalanced AP": dict(
            data="`make_classification`, 5% positives, 2% label noise (10,000 train, 5,000 test)",
            model="MLP 20-64-64-1, batch 128", epochs=20, quick_epochs=1,
            routes={"hand-written: uniloss.AveragePrecision()": uniloss.AveragePrecision,
                    **traced("average_precision", average_precision), **tm_route("binary_average_precision")},
            run=lambda dec, seed, epochs: _binary_run(dec, seed, epochs, average_precision)),
        "F1 at threshold 0": dict(
            data="the same", model="the same", epochs=20, quick_epochs=1,
            routes={"hand-written: zoo.f_beta(1.0)": lambda: zoo.f_beta(1.0), **traced("f1", f1),
                    **tm_route("binary_f1_score")},
            run=lambda dec, seed, epochs: _binary_run(dec, seed, epochs, f1)),
        "imbalanced AUROC": dict(
            data="the same", model="the same", epochs=20, quick_epochs=1,
            routes={"hand-written: zoo.auroc()": zoo.auroc, **tm_route("binary_auroc")},
            run=lambda dec, seed, epochs: _binary_run(dec, seed, epochs, zoo.auroc().metric)),
        "digits Matthews correlation": dict(
            data="scikit-learn's digits, 10 classes", model="MLP 64-128-10, batch 128", epochs=30, quick_epochs=3,
            routes={"hand-written: zoo.matthews_corrcoef(10)": lambda: zoo.matthews_corrcoef(10),
                    **tm_route("multiclass_matthews_corrcoef")},
            run=lambda dec, seed, epochs: _digits_run(dec, seed, epochs, zoo.matthews_corrcoef(10).metric)),
        "digit retrieval NDCG@5": dict(
            data="the metric-wins `ndcg5` task: queries of 20 digits images (1-6 relevant), 160 fresh "
                 "training queries an epoch, 300 test queries",
            model=f"MLP 64-128-10, batch {NDCG_QUERIES} queries", epochs=30, quick_epochs=2,
            routes={"hand-written: zoo.ndcg_at_k(5)": lambda: zoo.ndcg_at_k(5), **traced("ndcg_at_5", ndcg_at_5)},
            run=lambda dec, seed, epochs: _ndcg_run(dec, seed, epochs, rows=isinstance(dec, uniloss.TracedMetric))),
        "digit retrieval NDCG@5, one query a batch": dict(
            data="the same queries, one a batch (torchmetrics' retrieval functions rank one query)",
            model="MLP 64-128-10, batch 1 query (20 items)", epochs=30, quick_epochs=1,
            routes={"hand-written: zoo.ndcg_at_k(5)": lambda: zoo.ndcg_at_k(5),
                    **tm_route("retrieval_normalized_dcg")},
            run=lambda dec, seed, epochs: _ndcg_run(dec, seed, epochs, rows=isinstance(dec, uniloss.TracedMetric),
                                                    per_batch=1)),
        "noisy-mask mean IoU": dict(
            data=f"the metric-wins `seg-miou` task: MNIST masks from noisy occluded digits ({SEG_TRAIN:,} train, "
                 f"{SEG_TEST:,} test images)", model="FCN 1-16-16-2, batch 32", epochs=5, quick_epochs=1,
            routes={"hand-written: zoo.mean_iou(2)": lambda: zoo.mean_iou(2), **traced("mean_iou", mean_iou)},
            run=_seg_run),
        "digits-pose PCK@0.5": dict(
            data=f"`digits-pose` canvases 64 x 64, one joint ({POSE_TRAIN:,} train, {POSE_TEST} test)",
            model="CNN 1-16-32-32-32-1, stride 4 (16 x 16 heatmaps), batch 16, RMSProp lr 1e-3", epochs=8,
            quick_epochs=1, routes={"hand-written: uniloss.PCK(0.5)": lambda: uniloss.PCK(0.5), **traced("pck", pck)},
            run=_pose_run),
    }


def _run_job(job: tuple) -> dict:
    task, route, seed, epochs = job
    torch.set_num_threads(1)
    spec = _tasks()[task]
    start = time.perf_counter()
    curve = spec["run"](spec["routes"][route](), seed, epochs)
    seconds = time.perf_counter() - start
    return dict(task=task, route=route, seed=seed, epochs=epochs, curve=curve, final=curve[-1], seconds=seconds)


def train_all(seeds: List[int], quick: bool, jobs: int, only: Optional[List[str]] = None) -> List[dict]:
    tasks = _tasks()
    work = [(task, route, seed, spec["quick_epochs"] if quick else spec["epochs"])
            for task, spec in tasks.items() if not only or task in only
            for route in spec["routes"] for seed in seeds]
    rows = []

    def show(row: dict) -> None:
        print(f"{row['task']:24s} {row['route']:62s} seed {row['seed']}: {100 * row['final']:.2f}%  "
              f"({row['seconds']:.1f} s)", flush=True)

    if jobs <= 1:
        for job in work:
            rows.append(_run_job(job))
            show(rows[-1])
    else:
        with multiprocessing.get_context("spawn").Pool(jobs) as pool:
            for row in pool.imap_unordered(_run_job, work):
                rows.append(row)
                show(row)
    order = {job[:3]: i for i, job in enumerate(work)}
    return sorted(rows, key=lambda r: order[(r["task"], r["route"], r["seed"])])


def verdicts(training: List[dict]) -> List[dict]:
    """Per task and route: the per-seed values, mean and std (%), and for a traced route its
    difference to the hand-written mean and whether it lies within the larger std."""
    out = []
    by_task: Dict[str, Dict[str, List[dict]]] = {}
    for row in training:
        by_task.setdefault(row["task"], {}).setdefault(row["route"], []).append(row)
    for task, routes in by_task.items():
        hand = None
        for route, rows in routes.items():
            values = [100 * r["final"] for r in rows]
            mean = statistics.mean(values)
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            item = dict(task=task, route=route, values=values, mean=mean, std=std,
                        seconds=statistics.mean(r["seconds"] for r in rows))
            if route.startswith("hand"):
                hand = item
            elif hand is not None:
                item["hand_std"] = hand["std"]
                item["difference"] = mean - hand["mean"]
                item["tolerance"] = max(std, hand["std"])
                item["within"] = abs(item["difference"]) <= item["tolerance"] + 1e-9
            out.append(item)
    return out


# --------------------------------------------------------------------------- cost per call


def _cost_cases() -> List[tuple]:
    """``(name, fn, hand-written decomposition, its name, scores, target)`` at batch 128; the
    scores and target of the hand-written route follow where they differ."""
    g = torch.Generator().manual_seed(0)
    s10, y10 = torch.randn(128, 10, generator=g), torch.randint(0, 10, (128,), generator=g)
    sb, yb = torch.randn(128, generator=g), (torch.rand(128, generator=g) < 0.2).long()
    rel = torch.randint(0, 2, (NDCG_QUERIES, 16), generator=g)
    rel[:, 0] = 1
    sq = torch.randn(NDCG_QUERIES, 16, generator=g) + rel
    query = torch.arange(NDCG_QUERIES).repeat_interleave(16)
    sr, rr = torch.randn(128, generator=g), torch.randint(0, 4, (128,), generator=g)
    sseg, yseg = torch.randn(2, 2, 8, 8, generator=g), torch.randint(0, 2, (2, 8, 8), generator=g)
    heat = torch.randn(2, 1, 8, 8, generator=g)
    keypoints = torch.rand(2, 1, 2, generator=g) * 7
    kp = uniloss.KeypointTarget(keypoints, torch.ones(2, 1, dtype=torch.bool), torch.tensor([3.0, 4.0]))
    cases = [
        ("accuracy, [128, 10]", accuracy, uniloss.MulticlassAccuracy(), "uniloss.MulticlassAccuracy()", s10, y10),
        ("top-2 accuracy, [128, 10]", top2_accuracy, zoo.top_k_accuracy(2), "zoo.top_k_accuracy(2)", s10, y10),
        ("AP, [128], 20% positives", average_precision, uniloss.AveragePrecision(), "uniloss.AveragePrecision()",
         sb, yb),
        ("F1 at 0, [128]", f1, zoo.f_beta(1.0), "zoo.f_beta(1.0)", sb, yb),
        ("NDCG@5, [8, 16] (8 queries)", ndcg_at_5, zoo.ndcg_at_k(5), "zoo.ndcg_at_k(5)", sq, rel,
         sq.reshape(-1), RankingTarget(rel.reshape(-1), query)),
        ("mean IoU, [2, 2, 8, 8] (128 pixels)", mean_iou, zoo.mean_iou(2), "zoo.mean_iou(2)", sseg, yseg),
        ("PCK, [2, 1, 8, 8] (2 joints x 64 pixels)", pck, uniloss.PCK(0.5), "uniloss.PCK(0.5)", heat, kp),
    ]
    tm = _torchmetrics()
    if tm:
        cases += [
            ("torchmetrics multiclass_accuracy (micro), [128, 10]", tm["multiclass_accuracy"],
             uniloss.MulticlassAccuracy(), "uniloss.MulticlassAccuracy()", s10, y10),
            ("torchmetrics binary_average_precision, [128]", tm["binary_average_precision"],
             uniloss.AveragePrecision(), "uniloss.AveragePrecision()", sb, yb),
            ("torchmetrics binary_f1_score, [128]", tm["binary_f1_score"], zoo.f_beta(1.0), "zoo.f_beta(1.0)",
             sb, yb),
            ("torchmetrics retrieval_normalized_dcg, [128] (one query)", tm["retrieval_normalized_dcg (all items)"],
             zoo.ndcg_at_k(), "zoo.ndcg_at_k()", sr, rr),
            ("torchmetrics binary_auroc, [128]", tm["binary_auroc"], zoo.auroc(), "zoo.auroc()", sb, yb),
            ("torchmetrics multiclass_matthews_corrcoef, [128, 10]", tm["multiclass_matthews_corrcoef"],
             zoo.matthews_corrcoef(10), "zoo.matthews_corrcoef(10)", s10, y10),
        ]
    return cases


def _call(loss_fn: nn.Module, scores: torch.Tensor, target: Any) -> tuple:
    x = scores.clone().requires_grad_(True)
    cpu, wall = time.thread_time(), time.perf_counter()
    loss_fn(x, target).backward()
    return time.thread_time() - cpu, time.perf_counter() - wall


def _load_baseline(path: str):
    """An earlier ``_traced.py``, imported as a module of this uniloss (its relative imports)."""
    spec = importlib.util.spec_from_file_location("uniloss._traced_baseline", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    module.__package__ = "uniloss"
    sys.modules[spec.name] = module  # type: ignore[union-attr]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def cost(repeats: int, baseline: Optional[str] = None) -> List[dict]:
    old = _load_baseline(baseline) if baseline else None
    rows = []
    med = statistics.median
    for name, fn, hand, hand_name, scores, target, *hand_inputs in _cost_cases():
        hand_scores, hand_target = hand_inputs if hand_inputs else (scores, target)
        fns = {"traced": (uniloss.UniLoss(uniloss.from_metric(fn), generator=torch.Generator().manual_seed(0)),
                          scores, target),
               "hand": (uniloss.UniLoss(hand, generator=torch.Generator().manual_seed(0)), hand_scores, hand_target)}
        if old is not None:
            fns["baseline"] = (uniloss.UniLoss(old.from_metric(fn), generator=torch.Generator().manual_seed(0)),
                               scores, target)
        for _ in range(20):  # warm-up (and the traced metric's first-call checks)
            for loss_fn, s, t in fns.values():
                _call(loss_fn, s, t)
        times: Dict[str, tuple] = {k: ([], []) for k in fns}
        for _ in range(repeats):
            for key, (loss_fn, s, t) in fns.items():
                c, w = _call(loss_fn, s, t)
                times[key][0].append(c)
                times[key][1].append(w)
        row = dict(case=name, hand=hand_name, repeats=repeats)
        for key, (cpu, wall) in times.items():
            row[f"{key}_cpu_ms"], row[f"{key}_wall_ms"] = 1e3 * med(cpu), 1e3 * med(wall)
        row["ratio_cpu"] = row["traced_cpu_ms"] / row["hand_cpu_ms"]
        row["ratio_wall"] = row["traced_wall_ms"] / row["hand_wall_ms"]
        if old is not None:
            row["baseline_ratio_cpu"] = row["baseline_cpu_ms"] / row["hand_cpu_ms"]
        rows.append(row)
        extra = f"  (baseline {row['baseline_ratio_cpu']:.2f})" if old is not None else ""
        print(f"{name:58s} traced {row['traced_cpu_ms']:.2f} ms  {hand_name} {row['hand_cpu_ms']:.2f} ms  "
              f"ratio {row['ratio_cpu']:.2f} (cpu) {row['ratio_wall']:.2f} (wall){extra}", flush=True)
    return rows


# --------------------------------------------------------------------------- report


def _markdown(report: dict) -> str:
    seeds = report["seeds"]
    summary = report["summary"]
    within = [r for r in summary if "within" in r]
    lines = [
        "# `uniloss.from_metric`: traced metrics against the hand-written decompositions",
        "",
        f"Machine: {report['machine']}. Date: {report['date']}. Seeds: {seeds} (each: initialisation, batch order, "
        f"anchors). Command: `{report['command']}` ({report['total_seconds'] / 60:.1f} minutes in all, "
        f"{report['jobs']} training processes side by side, one thread each; {report['train_cpu_minutes']:.1f} "
        "CPU-minutes of training). Raw figures: [`results.json`](results.json).",
        "",
        "## Training",
        "",
        "Test metric (%) after the last epoch. Within a task every route shares the model, optimiser, learning rate, "
        "batches, epochs, seeds and anchor generator; only the decomposition differs. The traced metrics are plain "
        "torch code (`benchmarks/from_metric_training.py`) or torchmetrics' functions, unmodified. Verdict: the "
        "traced mean lies within the larger of the two routes' standard deviations of the hand-written mean "
        f"(**{sum(r['within'] for r in within)} of {len(within)} traced rows**; "
        f"{sum(r['difference'] == 0 and r['std'] == r['hand_std'] for r in within)} of them give the hand-written "
        "route's result seed for seed: the same bits, anchors and, up to float rounding, values; where the traced "
        "metric computes its value in another precision or order than the hand-written formula, such rounding "
        "moves a run within the seeds' spread).",
        "",
        "| task | route | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± std | traced − hand (points) "
        "| verdict | s per run |",
        "|---|---|" + "---|" * len(seeds) + "---|---|---|---|",
    ]
    for r in summary:
        values = " | ".join(f"{v:.2f}" for v in r["values"])
        diff = f"{r['difference']:+.2f}" if "difference" in r else ""
        verdict = ("within ±{:.2f}".format(r["tolerance"]) if r.get("within") else
                   "outside ±{:.2f}".format(r["tolerance"])) if "within" in r else ""
        lines.append(f"| {r['task']} | {r['route']} | {values} | {r['mean']:.2f} ± {r['std']:.2f} | {diff} | "
                     f"{verdict} | {r['seconds']:.1f} |")
    if any(r["task"].endswith("PCK@0.5") for r in summary):
        lines += ["", "Seconds per run include each epoch's test evaluation. The traced PCK runs take longer "
                  "than the hand-written ones: its target holds keypoints rather than the pixel the `argmax` should "
                  "return, so every call probes `fn` for each joint's best pixels (16 heatmaps x 256 pixels a "
                  "batch), where `uniloss.PCK` computes them from the keypoints. Its chain goes through the "
                  "sums of `fn` (each joint's distance, a count of the joints within reach), as exact as "
                  "`uniloss.PCK`'s closed form."]
    lines += ["", "Set-ups (`benchmarks/from_metric_training.py`; data and models of "
              "`uniloss.experiments.metric_wins` where they fit):", "",
              "| task | data | model | epochs |", "|---|---|---|---|"]
    for task, setup in report["setups"].items():
        lines.append(f"| {task} | {setup['data']} | {setup['model']} | {setup['epochs']} |")
    cost_rows = report["cost"]
    has_base = bool(cost_rows) and "baseline_cpu_ms" in cost_rows[0]
    lines += [
        "",
        "## Cost per call",
        "",
        f"Forward + backward of the loss on one batch of 128 (rows, items or pixels), median over "
        f"{cost_rows[0]['repeats'] if cost_rows else 0} calls of each, the routes interleaved call by call; CPU time "
        "of the calling thread (what the loss costs, robust to other jobs on the machine) and wall time. "
        "On the first call of an input shape the traced route traces `fn` (a `TorchFunctionMode`) and records "
        "the operations it runs; on later calls it runs `fn` under a lighter mode that only checks that each "
        "operation is the recorded one on the same kind of arguments (a Python branch that goes the other way is "
        "traced again), and evaluates the 49 anchors and the current configuration by replaying only the "
        "operations downstream of the discrete steps, batched by hand over the anchors (under `vmap` where an "
        "operation has no rule)."
        + (f" Baseline ({report['baseline']}), timed in the same interleaving." if has_base else ""),
        "",
        "| case | hand-written | traced (ms) | hand-written (ms) | ratio (CPU) | ratio (wall) |"
        + (" baseline (ms) | baseline ratio (CPU) |" if has_base else ""),
        "|---|---|---|---|---|---|" + ("---|---|" if has_base else ""),
    ]
    for row in cost_rows:
        line = (f"| {row['case']} | `{row['hand']}` | {row['traced_cpu_ms']:.2f} | {row['hand_cpu_ms']:.2f} | "
                f"{row['ratio_cpu']:.2f} | {row['ratio_wall']:.2f} |")
        if has_base:
            line += f" {row['baseline_cpu_ms']:.2f} | {row['baseline_ratio_cpu']:.2f} |"
        lines.append(line)
    for note in report.get("notes", []):
        lines += ["", note]
    lines.append("")
    return "\n".join(lines)


# Why a case costs more than 2x the hand-written route, where it does (by the start of its name).
OVER_2X = {
    "PCK": "PCK: its target holds keypoints, not the pixel index `fn`'s `argmax` should return, so `from_metric` "
           "finds each joint's best pixels by probing `fn` on every call (one replay per joint and pixel: 128 "
           "configurations here, evaluated like anchors), where `uniloss.PCK` computes them from the keypoints. "
           "A target that holds the best pixel (a label per heatmap) gives the argmax layout of "
           "`MulticlassAccuracy` and the cost of the other cases.",
}


def _notes(cost_rows: List[dict]) -> List[str]:
    over = [r for r in cost_rows if r["ratio_cpu"] > 2.0]
    if not over:
        return ["Every case costs at most 2x the hand-written route (CPU time)."]
    notes = [f"Over 2x: {', '.join(r['case'] for r in over)}."]
    for r in over:
        why = next((text for key, text in OVER_2X.items() if r["case"].startswith(key)), None)
        if why:
            notes.append(why)
    return notes


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="a smoke run: few epochs, nothing written")
    parser.add_argument("--jobs", type=int, default=2, help="training runs side by side (one thread each)")
    parser.add_argument("--tasks", nargs="+", default=None, help="only these tasks (names as in the table)")
    parser.add_argument("--repeats", type=int, default=300, help="timed calls per cost case")
    parser.add_argument("--baseline", default=None, help="an earlier _traced.py to time beside (optional)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs",
                                                      "results", "from-metric"))
    parser.add_argument("--render", action="store_true", help="rewrite README.md from the results.json in --out")
    args = parser.parse_args(argv)
    if args.render:
        with open(os.path.join(args.out, "results.json")) as f:
            report = json.load(f)
        report["summary"] = verdicts(report["training"])
        with open(os.path.join(args.out, "README.md"), "w") as f:
            f.write(_markdown(report))
        return
    torch.set_num_threads(1)
    start = time.perf_counter()
    training = train_all(args.seeds, args.quick, args.jobs, args.tasks)
    timings = cost(30 if args.quick else args.repeats, args.baseline)
    tasks = _tasks()
    report = dict(
        command=command_line("benchmarks/from_metric_training.py", argv),
        machine=f"{platform.machine()} ({platform.processor() or 'cpu'}), {os.cpu_count()} cores shared with other "
                f"jobs, torch {torch.__version__}, Python {platform.python_version()}",
        date=time.strftime("%Y-%m-%d"), seeds=args.seeds, jobs=args.jobs, training=training,
        summary=verdicts(training), cost=timings,
        baseline=args.baseline and ("the `_traced.py` before the tape and the re-run: `git show "
                                    "d81d48e:src/uniloss/_traced.py > old_traced.py`, the commit that added `from_metric`"),
        setups={task: dict(data=spec["data"], model=spec["model"],
                           epochs=spec["quick_epochs"] if args.quick else spec["epochs"])
                for task, spec in tasks.items() if not args.tasks or task in args.tasks},
        train_cpu_minutes=sum(r["seconds"] for r in training) / 60, total_seconds=time.perf_counter() - start,
        notes=_notes(timings),
    )
    if args.quick:
        print(_markdown(report))
        return
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write(_markdown(report))
    print(f"wrote {os.path.normpath(args.out)}/README.md and results.json")


if __name__ == "__main__":
    main()
