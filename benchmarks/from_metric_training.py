"""uniloss.from_metric against the hand-written decompositions: training results and cost per call.

    python benchmarks/from_metric_training.py                   # writes docs/results/from-metric/
    python benchmarks/from_metric_training.py --seeds 0 --quick # a smoke run (prints, writes nothing)

Training: the same model, optimiser (SGD, momentum 0.9, cosine decay), learning rate, batch size,
epochs, seeds and anchors for both routes; only the decomposition differs -- the metric written as
plain torch code and traced by ``uniloss.from_metric``, or the library's hand-written one. Three
small tasks, each judged on its test split by the metric trained:

* digits accuracy: scikit-learn's digits (10 classes), MLP 64-128-10, batch 128, 30 epochs;
  ``from_metric(accuracy)`` (an ``argmax``) against ``uniloss.MulticlassAccuracy()``;
* imbalanced AP: ``make_classification`` with 5% positives (the metric-wins task), MLP
  20-64-64-1, batch 128, 20 epochs; ``from_metric(average_precision)`` (an ``argsort``) against
  ``uniloss.AveragePrecision()``;
* F1 at a threshold: the same data and model; ``from_metric(f1)`` (``scores > 0``) against
  ``uniloss.zoo.f_beta(1.0)``.

On untied scores the two routes have the same comparisons, best configuration and metric values
(``tests/test_from_metric.py``), so with the same anchors they give the same loss up to float
rounding (the traced AP is computed in float32 by the user's code, the hand-written one by its
own formula); over a whole run such rounding can move a result within the seeds' spread.

Cost: forward + backward of the loss on one batch of 128 (``[128, 10]`` scores for accuracy,
``[128]`` with 20% positives for AP and F1), traced against hand-written, interleaved call by
call so that machine noise hits both; the medians of the calling thread's CPU time (robust to
other jobs on the machine) and of wall time, and their ratio, measured in one run. Also the
torchmetrics functional metrics through ``from_metric`` against the same hand-written ones.

Writes ``results.json`` (every seed, every epoch's test metric, every timing) and ``README.md``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Dict, List

import torch
from torch import nn

import uniloss
from uniloss import zoo
from uniloss.experiments import metric_wins as M

# --------------------------------------------------------------------------- the metrics, as plain code


def accuracy(scores, target):
    """``scores [n, C]``, ``target [n]``: the fraction of argmax predictions that are right."""
    return (scores.argmax(dim=1) == target).float().mean()


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


# --------------------------------------------------------------------------- training


def _digits_run(decomposition: uniloss.Decomposition, seed: int, epochs: int) -> List[float]:
    xtr, xte, ytr, yte = M.digits_split()
    return M._run_classes(xtr, ytr, xte, yte, lambda: M.mlp(64, 128, 10), lambda out, y: accuracy(out, y), "uniloss",
                          seed, {}, decomposition=decomposition, epochs=epochs)


def _binary_run(decomposition: uniloss.Decomposition, seed: int, epochs: int, evaluate: Callable) -> List[float]:
    xtr, ytr, _, _, xte, yte = M.imbalanced_binary()
    model = M.seeded(seed, lambda: M.mlp(20, 64, 64, 1))
    gen = torch.Generator().manual_seed(seed)
    loss_fn = uniloss.UniLoss(decomposition, generator=torch.Generator().manual_seed(seed + 1000))
    opt = M.sgd(model, 0.1)
    return M.fit(model, opt, M.shuffled(len(ytr), 128, gen),
                 lambda m, idx: loss_fn(m(xtr[idx]).reshape(-1), ytr[idx]), epochs,
                 lambda m: float(evaluate(m(xte).reshape(-1), yte)), M.cosine(opt, epochs))


TASKS: Dict[str, Dict[str, Any]] = {
    "digits accuracy": dict(
        epochs=30, quick_epochs=3,
        routes={"hand-written: uniloss.MulticlassAccuracy()": uniloss.MulticlassAccuracy,
                "traced: from_metric(accuracy)": lambda: uniloss.from_metric(accuracy)},
        run=lambda dec, seed, epochs: _digits_run(dec, seed, epochs)),
    "imbalanced AP": dict(
        epochs=20, quick_epochs=1,
        routes={"hand-written: uniloss.AveragePrecision()": uniloss.AveragePrecision,
                "traced: from_metric(average_precision)": lambda: uniloss.from_metric(average_precision)},
        run=lambda dec, seed, epochs: _binary_run(dec, seed, epochs, average_precision)),
    "F1 at threshold 0": dict(
        epochs=20, quick_epochs=1,
        routes={"hand-written: zoo.f_beta(1.0)": lambda: zoo.f_beta(1.0),
                "traced: from_metric(f1)": lambda: uniloss.from_metric(f1)},
        run=lambda dec, seed, epochs: _binary_run(dec, seed, epochs, f1)),
}


def train_all(seeds: List[int], quick: bool) -> List[dict]:
    M.digits_split(), M.imbalanced_binary()  # load (and import scikit-learn) before the timed runs
    rows = []
    for task, spec in TASKS.items():
        epochs = spec["quick_epochs"] if quick else spec["epochs"]
        for route, make in spec["routes"].items():
            for seed in seeds:
                start = time.perf_counter()
                curve = spec["run"](make(), seed, epochs)
                seconds = time.perf_counter() - start
                rows.append(dict(task=task, route=route, seed=seed, epochs=epochs, curve=curve, final=curve[-1],
                                 seconds=seconds))
                print(f"{task:18s} {route:45s} seed {seed}: {100 * curve[-1]:.2f}%  ({seconds:.1f} s)", flush=True)
    return rows


# --------------------------------------------------------------------------- cost per call


def _cost_cases() -> List[tuple]:
    g = torch.Generator().manual_seed(0)
    s10, y10 = torch.randn(128, 10, generator=g), torch.randint(0, 10, (128,), generator=g)
    sb, yb = torch.randn(128, generator=g), (torch.rand(128, generator=g) < 0.2).long()
    cases = [
        ("accuracy, [128, 10]", accuracy, uniloss.MulticlassAccuracy(), "uniloss.MulticlassAccuracy()", s10, y10),
        ("AP, [128], 20% positives", average_precision, uniloss.AveragePrecision(), "uniloss.AveragePrecision()",
         sb, yb),
        ("F1 at 0, [128]", f1, zoo.f_beta(1.0), "zoo.f_beta(1.0)", sb, yb),
    ]
    try:
        from torchmetrics.functional.classification import (binary_average_precision, binary_f1_score,
                                                            multiclass_accuracy)
    except ImportError:  # torchmetrics is an optional extra
        return [c + (False,) for c in cases]
    cases = [c + (False,) for c in cases]
    cases += [
        ("torchmetrics multiclass_accuracy (micro)",
         functools.partial(multiclass_accuracy, num_classes=10, average="micro"), uniloss.MulticlassAccuracy(),
         "uniloss.MulticlassAccuracy()", s10, y10, True),
        ("torchmetrics binary_average_precision", binary_average_precision, uniloss.AveragePrecision(),
         "uniloss.AveragePrecision()", sb, yb, True),
        ("torchmetrics binary_f1_score", binary_f1_score, zoo.f_beta(1.0), "zoo.f_beta(1.0)", sb, yb, True),
    ]
    return cases


def _call(loss_fn: nn.Module, scores: torch.Tensor, target: torch.Tensor) -> tuple:
    x = scores.clone().requires_grad_(True)
    cpu, wall = time.thread_time(), time.perf_counter()
    loss_fn(x, target).backward()
    return time.thread_time() - cpu, time.perf_counter() - wall


def cost(repeats: int) -> List[dict]:
    rows = []
    for name, fn, hand, hand_name, scores, target, extra in _cost_cases():
        traced_fn = uniloss.UniLoss(uniloss.from_metric(fn), generator=torch.Generator().manual_seed(0))
        hand_fn = uniloss.UniLoss(hand, generator=torch.Generator().manual_seed(0))
        for _ in range(20):  # warm-up (and the traced metric's first-call checks)
            _call(traced_fn, scores, target), _call(hand_fn, scores, target)
        t_cpu, t_wall, h_cpu, h_wall = [], [], [], []
        for _ in range(repeats):
            c, w = _call(traced_fn, scores, target)
            t_cpu.append(c), t_wall.append(w)
            c, w = _call(hand_fn, scores, target)
            h_cpu.append(c), h_wall.append(w)
        med = statistics.median
        row = dict(case=name, hand=hand_name, torchmetrics=extra, repeats=repeats,
                   traced_cpu_ms=1e3 * med(t_cpu), hand_cpu_ms=1e3 * med(h_cpu),
                   traced_wall_ms=1e3 * med(t_wall), hand_wall_ms=1e3 * med(h_wall))
        row["ratio_cpu"] = row["traced_cpu_ms"] / row["hand_cpu_ms"]
        row["ratio_wall"] = row["traced_wall_ms"] / row["hand_wall_ms"]
        rows.append(row)
        print(f"{name:42s} traced {row['traced_cpu_ms']:.2f} ms  {hand_name} {row['hand_cpu_ms']:.2f} ms  "
              f"ratio {row['ratio_cpu']:.2f} (cpu) {row['ratio_wall']:.2f} (wall)", flush=True)
    return rows


# --------------------------------------------------------------------------- report


def _markdown(report: dict) -> str:
    seeds = report["seeds"]
    lines = [
        "# `uniloss.from_metric`: traced metrics against the hand-written decompositions",
        "",
        f"Machine: {report['machine']}. Date: {report['date']}. Seeds: {seeds} (each: initialisation, batch order, "
        f"anchors). Command: `{report['command']}` ({report['total_seconds'] / 60:.1f} minutes in all, one process, "
        "one thread). Raw figures: [`results.json`](results.json).",
        "",
        "## Training",
        "",
        "Test metric (%) after the last epoch, mean ± standard deviation over the seeds. Both routes of a task share "
        "the model, optimiser (SGD, momentum 0.9, cosine decay), learning rate 0.1, batch 128, epochs, seeds and "
        "anchor generator; only the decomposition differs. The traced metric is plain torch code "
        "(`benchmarks/from_metric_training.py`: `accuracy` with an `argmax`, `average_precision` with an "
        "`argsort`, `f1` with `scores > 0`).",
        "",
        "| task | route | test metric (%) | traced − hand-written (points) | seconds per run |",
        "|---|---|---|---|---|",
    ]
    by_task: Dict[str, Dict[str, List[dict]]] = {}
    for row in report["training"]:
        by_task.setdefault(row["task"], {}).setdefault(row["route"], []).append(row)
    for task, routes in by_task.items():
        means = {}
        for route, rows in routes.items():
            values = [100 * r["final"] for r in rows]
            means[route] = statistics.mean(values)
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            diff = ""
            if route.startswith("traced"):
                hand = [m for r, m in means.items() if r.startswith("hand")]
                diff = f"{means[route] - hand[0]:+.2f}" if hand else ""
            secs = statistics.mean(r["seconds"] for r in rows)
            lines.append(f"| {task} | {route} | {means[route]:.2f} ± {std:.2f} | {diff} | {secs:.1f} |")
    lines += [
        "",
        "Set-ups (the metric-wins suite's data and models, `uniloss.experiments.metric_wins`):",
        "",
        "| task | data | model | epochs |",
        "|---|---|---|---|",
        "| digits accuracy | scikit-learn's digits, 10 classes (1,257 train, 540 test images) | MLP 64-128-10 | "
        f"{report['epochs']['digits accuracy']} |",
        "| imbalanced AP | `make_classification`, 5% positives, 2% label noise (10,000 train, 5,000 test) | MLP 20-64-64-1 "
        f"| {report['epochs']['imbalanced AP']} |",
        "| F1 at threshold 0 | the same | the same | " f"{report['epochs']['F1 at threshold 0']} |",
    ]
    lines += ["", "Per seed (%):", "", "| task | route | " + " | ".join(f"seed {s}" for s in seeds) + " |",
              "|---|---|" + "---|" * len(seeds)]
    for task, routes in by_task.items():
        for route, rows in routes.items():
            lines.append(f"| {task} | {route} | " + " | ".join(f"{100 * r['final']:.2f}" for r in rows) + " |")
    lines += [
        "",
        "## Cost per call",
        "",
        f"Forward + backward of the loss on one batch, median over {report['cost'][0]['repeats']} calls of each, "
        "traced and hand-written interleaved call by call; CPU time of the calling thread (what the loss costs, "
        "robust to other jobs on the machine) and wall time. The traced route runs `fn` once per call to trace it "
        "and once more, vmapped over the 49 anchors and the current configuration, to evaluate them.",
        "",
        "| case | hand-written | traced (ms) | hand-written (ms) | ratio (CPU) | ratio (wall) |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["cost"]:
        lines.append(f"| {row['case']} | `{row['hand']}` | {row['traced_cpu_ms']:.2f} | {row['hand_cpu_ms']:.2f} | "
                     f"{row['ratio_cpu']:.2f} | {row['ratio_wall']:.2f} |")
    lines.append("")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="a smoke run: few epochs, nothing written")
    parser.add_argument("--repeats", type=int, default=300, help="timed calls per cost case")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs",
                                                      "results", "from-metric"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    training = train_all(args.seeds, args.quick)
    timings = cost(30 if args.quick else args.repeats)
    report = dict(
        command="python benchmarks/from_metric_training.py" + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else ""),
        machine=f"{platform.machine()} ({platform.processor() or 'cpu'}), {os.cpu_count()} cores shared with other "
                f"jobs, 1 thread, torch {torch.__version__}, Python {platform.python_version()}",
        date=time.strftime("%Y-%m-%d"), seeds=args.seeds, training=training, cost=timings,
        epochs={task: spec["quick_epochs"] if args.quick else spec["epochs"] for task, spec in TASKS.items()},
        total_seconds=time.perf_counter() - start,
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
