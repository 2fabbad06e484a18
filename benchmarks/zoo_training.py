"""Training evidence for the metric zoo: UniLoss on three zoo metrics against the usual loss.

    python benchmarks/zoo_training.py                      # writes docs/results/zoo/
    python benchmarks/zoo_training.py --seeds 0 --quick    # a smoke run

The same model, optimiser (SGD, momentum 0.9), learning rate, batch size and epochs for both
losses; one thread; seeds fix the initialisation, batch order and UniLoss's anchors. Three tasks,
each judged on the test split by the metric UniLoss targets (computed exactly by the zoo metric):

* ``macro-F1``: scikit-learn's digits, ten classes made imbalanced (class ``c`` keeps
  ``0.7 ** c`` of its images, train and test alike), MLP 64-128-10; UniLoss
  ``zoo.macro_f1(10)`` (target-vs-rest pairs, the default, and all pairs; each also with
  ``pull=0``, the metric's interpolation alone) against cross-entropy.
* ``NDCG@5``: digit retrieval on scikit-learn's digits -- a query is a digit ``q`` and 20 images,
  1 to 6 of them showing ``q`` (relevance 1), the rest other digits; the score of an image for
  query ``q`` is the MLP's output ``q``. UniLoss ``zoo.ndcg_at_k(5)`` over queries against
  pointwise binary cross-entropy on (score, relevant). Fresh training queries every epoch; 300
  fixed test queries from the test images.
* ``mean IoU``: digit-versus-background segmentation from MNIST (``../shared/data``): the input is
  the image with Gaussian noise (sigma 0.8) and a random 10x10 occluding patch, the target the
  clean image's mask (pixel > 0.5); a 3-layer fully convolutional network (1-16-16-2 channels,
  3x3); UniLoss ``zoo.mean_iou(2)`` (temperature 1, the default, and 4) against per-pixel
  cross-entropy; 2,000 training and 1,000 test images.

Writes ``results.json`` (every seed, every epoch's test metric) and ``results.md`` (the table).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Any, Callable, Dict, List

import torch
from torch import nn

import uniloss
from uniloss import zoo
from uniloss.decoders import RankingTarget

# --------------------------------------------------------------------------- data
# The tasks' data live in the metric-wins benchmark (the same digits split, queries and masks).
from uniloss.experiments import metric_wins as M  # noqa: E402
from uniloss.experiments.metric_wins import digits_split as _digits  # noqa: E402
from uniloss.experiments.metric_wins import imbalanced_digits, noisy_masks, retrieval_queries  # noqa: E402,F401
from uniloss.experiments.reproduce import command_line  # noqa: E402


# --------------------------------------------------------------------------- models and training


def mlp(seed: int) -> nn.Module:
    return M.seeded(seed, lambda: M.mlp(64, 128, 10))


def fcn(seed: int) -> nn.Module:
    return M.seeded(seed, M.fcn)


def fit(model: nn.Module, step_loss: Callable[[nn.Module, int, int], torch.Tensor], steps_per_epoch: int,
        epochs: int, lr: float, evaluate: Callable[[nn.Module], float]) -> List[float]:
    """The metric-wins training loop at a constant rate (SGD momentum 0.9); ``step_loss(model, epoch, step)``."""
    return M.fit(model, M.sgd(model, lr), lambda epoch: [(epoch, step) for step in range(steps_per_epoch)],
                 lambda m, batch: step_loss(m, *batch), epochs, evaluate)


def run_macro_f1(loss: str, seed: int, epochs: int, lr: float, batch: int = 64, metric=None, **options) -> List[float]:
    xtr, ytr, xte, yte = imbalanced_digits()
    metric = metric or zoo.macro_f1(10)
    gen = torch.Generator().manual_seed(seed)
    loss_fn = uniloss.UniLoss(metric, generator=gen, **options) if loss == "uniloss" else nn.functional.cross_entropy
    steps = (len(ytr) + batch - 1) // batch
    order = {}

    def step_loss(model, epoch, step):
        if step == 0:
            order["idx"] = torch.randperm(len(ytr), generator=gen)
        idx = order["idx"][step * batch:(step + 1) * batch]
        return loss_fn(model(xtr[idx]), ytr[idx])

    return fit(mlp(seed), step_loss, steps, epochs, lr, lambda m: float(metric.metric(m(xte), yte)))


def run_ndcg(loss: str, seed: int, epochs: int, lr: float, queries_per_batch: int = 8, size: int = 20,
             train_queries: int = 160, k: int = 5, **options) -> List[float]:
    xtr, xte, ytr, yte = _digits()
    metric = zoo.ndcg_at_k(k)
    gen = torch.Generator().manual_seed(seed)
    test_items, test_q, test_rel, test_query = retrieval_queries(yte, 300, size, torch.Generator().manual_seed(1234))
    test_target = RankingTarget(test_rel, test_query)
    loss_fn = uniloss.UniLoss(metric, generator=gen, **options) if loss == "uniloss" else None
    data = {}

    def scores_of(model, x, items, q):
        out = model(x[items]).reshape(len(q), -1, 10)
        return out.gather(2, q[:, None, None].expand(-1, out.shape[1], 1)).reshape(-1)

    def step_loss(model, epoch, step):
        if step == 0:
            data["batch"] = retrieval_queries(ytr, train_queries, size, gen)
        items, q, rel, query = data["batch"]
        sl = slice(step * queries_per_batch * size, (step + 1) * queries_per_batch * size)
        qs = q[step * queries_per_batch:(step + 1) * queries_per_batch]
        s = scores_of(model, xtr, items[sl], qs)
        if loss_fn is None:
            return nn.functional.binary_cross_entropy_with_logits(s, rel[sl].float())
        return loss_fn(s, RankingTarget(rel[sl], query[sl]))

    def evaluate(model):
        return float(metric.metric(scores_of(model, xte, test_items, test_q), test_target))

    return fit(mlp(seed), step_loss, train_queries // queries_per_batch, epochs, lr, evaluate)


def run_mean_iou(loss: str, seed: int, epochs: int, lr: float, batch: int = 32, train: int = 2000,
                 test: int = 1000, metric=None, **options) -> List[float]:
    xtr, mtr = noisy_masks("train", train, seed=0)
    xte, mte = noisy_masks("test", test, seed=1)
    metric = metric or zoo.mean_iou(2)
    gen = torch.Generator().manual_seed(seed)
    loss_fn = uniloss.UniLoss(metric, generator=gen, **options) if loss == "uniloss" else nn.functional.cross_entropy
    order = {}

    def step_loss(model, epoch, step):
        if step == 0:
            order["idx"] = torch.randperm(train, generator=gen)
        idx = order["idx"][step * batch:(step + 1) * batch]
        return loss_fn(model(xtr[idx]), mtr[idx])

    return fit(fcn(seed), step_loss, train // batch, epochs, lr, lambda m: float(metric.metric(m(xte), mte)))


TASKS: Dict[str, Dict[str, Any]] = {
    "macro-F1": dict(run=run_macro_f1, epochs=40, lr=0.1,
                     data="digits, 10 classes, class c keeps 0.7^c (train 476, test 207 images)",
                     model="MLP 64-128-10, batch 64", baseline="cross-entropy",
                     variants={"UniLoss, zoo.macro_f1(10)": {},
                               'UniLoss, zoo.macro_f1(10, pairs="all")': dict(metric=zoo.macro_f1(10, pairs="all")),
                               "UniLoss, zoo.macro_f1(10), pull=0": dict(pull=0.0),
                               'UniLoss, zoo.macro_f1(10, pairs="all"), pull=0': dict(metric=zoo.macro_f1(10, pairs="all"),
                                                                                    pull=0.0)}),
    "NDCG@5": dict(run=run_ndcg, epochs=30, lr=0.1,
                   data="digit retrieval on digits: queries of 20 images, 1-6 relevant (160 train queries per epoch, 300 test)",
                   model="MLP 64-128-10 (score = output of the query digit), 8 queries a batch",
                   baseline="binary cross-entropy (pointwise)",
                   variants={"UniLoss, zoo.ndcg_at_k(5)": {}}),
    "mean IoU": dict(run=run_mean_iou, epochs=6, lr=0.1,
                     data="MNIST digit-vs-background masks, noisy occluded inputs (2,000 train, 1,000 test)",
                     model="FCN 1-16-16-2, 3x3 convs, batch 32", baseline="per-pixel cross-entropy",
                     variants={"UniLoss, zoo.mean_iou(2)": {},
                               "UniLoss, zoo.mean_iou(2), temperature=4": dict(temperature=4.0)}),
}


NOTES = """
What the table shows (see also docs/custom-metrics.md; the first defaults' table, with its own
notes, is docs/results/zoo/results.md):

* Prune the comparisons. `zoo.macro_f1(10, pairs="all")` compares every pair of classes (45 a
  sample) and trails far behind the default target-versus-rest layout (9 a sample) on the same
  metric. The pairs between two wrong classes do not matter at the best configuration, but they
  do along the way: turning one changes which wrong class is predicted, so part of the chain's
  push moves the wrong classes' scores among themselves (compare the two `pull=0` rows: the
  metric's interpolation alone, over all pairs and over the target's; the likely reason, not
  isolated). And a decoder with `pairs="all"` has no runs, so its pull is the logistic loss on
  every comparison toward the best configuration, whose wrong-against-wrong bits are the current
  ones: it pushes the wrong classes further apart in their current order (compare each layout
  with and without the pull: the pull helps the target's layout and costs the full one).
* The temperature. At the defaults (the chain and the pull) the segmentation network trains at
  the default `temperature=1`; the `temperature=4` row is kept from the first defaults, which
  collapsed to "background" everywhere at `temperature=1` (43.3 on every seed) and trained only
  at 4.
"""


def main(argv=None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--quick", action="store_true", help="a third of the epochs (smoke run; not for the docs)")
    parser.add_argument("--out", default="docs/results/zoo")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    rows = []
    for task in args.tasks:
        spec = TASKS[task]
        epochs = max(1, spec["epochs"] // 3) if args.quick else spec["epochs"]
        for label, options in [(spec["baseline"], None)] + list(spec["variants"].items()):
            for seed in args.seeds:
                t0 = time.perf_counter()
                if options is None:
                    curve = spec["run"]("usual", seed, epochs, spec["lr"])
                else:
                    curve = spec["run"]("uniloss", seed, epochs, spec["lr"], **options)
                rows.append(dict(task=task, loss=label, seed=seed, final=curve[-1], curve=curve,
                                 seconds=time.perf_counter() - t0))
                print(f"{task:9s} {label:45s} seed {seed}: {curve[-1]:.4f}  ({rows[-1]['seconds']:.1f} s)", flush=True)
    report = dict(
        table="zoo-training", command=command_line("benchmarks/zoo_training.py", argv),
        machine=f"{platform.machine()}, 1 thread, torch {torch.__version__}", date=time.strftime("%Y-%m-%d"),
        seeds=args.seeds, optimiser="SGD momentum 0.9, same lr / batch / epochs for both losses",
        tasks={t: {k: (list(v) if k == "variants" else v) for k, v in TASKS[t].items() if k != "run"} for t in args.tasks},
        rows=rows, total_seconds=time.perf_counter() - start,
    )
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as fh:
        json.dump(report, fh, indent=2)
    lines = [
        "# Training evidence: UniLoss on zoo metrics against the usual loss",
        "",
        f"Test metric (%) after the last epoch, mean ± standard deviation over seeds {args.seeds} "
        f"(each seed: initialisation, batch order, anchors). {report['optimiser']}; "
        f"machine {report['machine']}; {report['date']}; {report['total_seconds'] / 60:.1f} minutes in all. "
        f"Regenerate: `{report['command'].strip()}`.",
        "",
        "| metric (UniLoss's target) | loss | test metric (%) | difference to the usual loss |",
        "|---|---|---|---|",
    ]
    for task in args.tasks:
        spec = TASKS[task]
        labels = [spec["baseline"]] + list(spec["variants"])
        means = {}
        for label in labels:
            vals = [r["final"] * 100 for r in rows if r["task"] == task and r["loss"] == label]
            means[label] = statistics.mean(vals)
            spread = statistics.stdev(vals) if len(vals) > 1 else 0.0
            diff = "" if label == spec["baseline"] else f"{means[label] - means[spec['baseline']]:+.1f}"
            lines.append(f"| {task} | {label} | {means[label]:.1f} ± {spread:.1f} | {diff} |")
    lines += ["", "Set-ups (the same optimiser, learning rate, batch and epochs for every loss of a task):", "",
              "| metric | data | model | epochs, lr |", "|---|---|---|---|"]
    for task in args.tasks:
        spec = TASKS[task]
        epochs = max(1, spec["epochs"] // 3) if args.quick else spec["epochs"]
        lines.append(f"| {task} | {spec['data']} | {spec['model']} | {epochs}, {spec['lr']} |")
    lines += ["", "Per seed (%):", "", "| metric | loss | " + " | ".join(f"seed {s}" for s in args.seeds) + " |",
              "|---|---|" + "---|" * len(args.seeds)]
    for task in args.tasks:
        for label in [TASKS[task]["baseline"]] + list(TASKS[task]["variants"]):
            vals = [f"{r['final'] * 100:.2f}" for r in rows if r["task"] == task and r["loss"] == label]
            lines.append(f"| {task} | {label} | " + " | ".join(vals) + " |")
    with open(os.path.join(args.out, "results.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n" + NOTES)
    print("\n".join(lines))
    return report


if __name__ == "__main__":
    main()
