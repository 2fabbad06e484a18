"""The runs of the pull weighed by the metric (``pull_weights="metric"``, 0.5) on tasks outside the
metric-wins suite: imbalanced MNIST (the ``bal-acc`` task's data, model and quick recipe: digit
``c`` keeps ``0.6 ** c`` of its training images, the test split whole) trained and scored on
macro-F1 and on Matthews' correlation, besides balanced accuracy.

    python benchmarks/imbalanced_classes_probe.py   # writes docs/results/metric-wins/imbalanced-classes.{md,json}

Each metric: cross-entropy, class-weighted cross-entropy, UniLoss with every run alike
(``pull_weights="equal"``, 0.4) and UniLoss at its defaults. Test metric x100, mean over seeds
0-2, one thread a run, at the recipe's learning rate (0.1).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

import torch

from uniloss.experiments.reproduce import machine

METRICS = ["balanced_accuracy", "macro_f1", "matthews_corrcoef"]
LOSSES = [
    ("cross-entropy", "ce", {}),
    ("class-weighted cross-entropy", "ce-weighted", {}),
    ('UniLoss, pull_weights="equal" (0.4)', "uniloss", {"pull_weights": "equal"}),
    ("UniLoss (defaults)", "uniloss", {}),
]


def _one(job):
    from uniloss.experiments import metric_wins as mw

    torch.set_num_threads(1)
    metric, (_, loss, options), seed = job
    return mw.run_imbalanced_mnist(metric, loss, seed, True, options)[-1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--metrics", nargs="+", default=METRICS, choices=METRICS)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default="docs/results/metric-wins/imbalanced-classes")
    args = parser.parse_args(argv)
    start = time.time()
    jobs = [(m, l, s) for m in args.metrics for l in LOSSES for s in args.seeds]
    with ProcessPoolExecutor(args.jobs) as pool:
        values = list(pool.map(_one, jobs))
    rows = []
    for i in range(0, len(jobs), len(args.seeds)):
        metric, (label, _, options), _ = jobs[i]
        seeds = [100 * v for v in values[i: i + len(args.seeds)]]
        rows.append(dict(metric=metric, loss=label, options=options, mean=statistics.mean(seeds),
                         std=statistics.stdev(seeds) if len(seeds) > 1 else 0.0, seeds=seeds))
        print(f"{metric:20s} {label:40s} {rows[-1]['mean']:.2f}", flush=True)
    minutes = (time.time() - start) / 60
    head = (f"{machine()}, torch {torch.__version__}, one thread a run, seeds {args.seeds}, "
            f"{time.strftime('%Y-%m-%d')}, {minutes:.1f} minutes with {args.jobs} runs at a time. "
            "Regenerate: `python benchmarks/imbalanced_classes_probe.py`.")
    lines = ["# The pull weighed by the metric on imbalanced classes (outside the metric-wins suite)", "", head, "",
             "| test metric | loss | mean ± std | seeds |", "|---|---|---|---|"]
    lines += [f"| {r['metric']} | {r['loss']} | {r['mean']:.2f} ± {r['std']:.2f} | "
              + " ".join(f"{v:.2f}" for v in r["seeds"]) + " |" for r in rows]
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(args.out + ".json", "w") as f:
        json.dump(dict(machine=machine(), torch=torch.__version__, seeds=args.seeds, date=time.strftime("%Y-%m-%d"),
                       minutes=minutes, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
