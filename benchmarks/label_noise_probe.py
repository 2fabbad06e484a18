"""Where the interpolation's AP direction costs: imbalanced AP with and without label noise.

    python benchmarks/label_noise_probe.py          # writes docs/results/metric-wins/label-noise.{md,json}

The metric-wins task ``imb-ap`` (``make_classification``, 5% positives, MLP, SGD, 20 epochs, the
quick schedule) on its own data (2% of the labels drawn at random, class separation 0.8) and on
variants of it: no label noise, 5%, and better separated classes. Each row trains binary
cross-entropy, UniLoss at its defaults, UniLoss with 0.3's pull per positive (``pull_per="run"``),
that pull alone (no anchor but best: a listwise loss, no interpolation) and UniLoss without good
anchors (``num_good=0``). Test AP x100, mean over seeds 0-2, one thread a run.

A second table asks whether the cost is AP's alone: 10-class accuracy on scikit-learn's digits
(the ``digits-f1`` task's split, MLP and recipe) with 0%, 20% and 40% of the training labels
drawn again at random (``metric_wins.run_noisy_digits``), cross-entropy against UniLoss
(``MulticlassAccuracy``) at its defaults, seeds 0-4 (``--class-seeds``).

Read the first table with ``benchmarks/data_draws_probe.py``: ``make_classification`` draws from
one random stream whose use depends on ``flip_y``, so at the task's one ``random_state`` each noise
level here is also another data set; that probe compares the noise levels over eight draws.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

import torch

from uniloss.experiments.reproduce import command_line, machine

DATA = [(0.0, 0.8), (0.02, 0.8), (0.05, 0.8), (0.0, 1.5), (0.02, 1.5)]  # (flip_y, class_sep); (0.02, 0.8): imb-ap
NONE = {"num_good": 0, "num_nearby": 0, "num_bad": 0}
LOSSES = [
    ("binary cross-entropy", "bce", {}),
    ("UniLoss (defaults)", "uniloss", {}),
    ('UniLoss, pull_per="run" (0.3)', "uniloss", {"pull_per": "run"}),
    ('pull per positive alone (pull_per="run", no anchor but best)', "uniloss", dict(NONE, pull_per="run")),
    ("UniLoss, num_good=0", "uniloss", {"num_good": 0}),
]


def _one(job):
    from uniloss.experiments import metric_wins as mw

    torch.set_num_threads(1)
    (flip, sep), (label, loss, options), seed = job
    return mw.run_imbalanced("ap", loss, seed, True, options, flip_y=flip, class_sep=sep)[-1]


NOISE = [0.0, 0.2, 0.4]  # the multi-class table: fraction of the training labels drawn again
CLASS_LOSSES = [("cross-entropy", "ce"), ("UniLoss (defaults)", "uniloss")]


def _one_class(job):
    from uniloss.experiments import metric_wins as mw

    torch.set_num_threads(1)
    noise, (_, loss), seed = job
    return mw.run_noisy_digits(loss, seed, noise, {})[-1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--class-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default="docs/results/metric-wins/label-noise")
    args = parser.parse_args(argv)
    start = time.time()
    jobs = [(d, l, s) for d in DATA for l in LOSSES for s in args.seeds]
    with ProcessPoolExecutor(args.jobs) as pool:
        values = list(pool.map(_one, jobs))
    class_jobs = [(n, l, s) for n in NOISE for l in CLASS_LOSSES for s in args.class_seeds]
    with ProcessPoolExecutor(args.jobs) as pool:
        class_values = list(pool.map(_one_class, class_jobs))
    rows, class_rows = [], []
    for i in range(0, len(class_jobs), len(args.class_seeds)):
        noise, (label, _), _ = class_jobs[i]
        seeds = [100 * v for v in class_values[i: i + len(args.class_seeds)]]
        class_rows.append(dict(noise=noise, loss=label, mean=statistics.mean(seeds),
                               std=statistics.stdev(seeds) if len(seeds) > 1 else 0.0, seeds=seeds))
    for i in range(0, len(jobs), len(args.seeds)):
        (flip, sep), (label, _, options), _ = jobs[i]
        seeds = [100 * v for v in values[i: i + len(args.seeds)]]
        rows.append(dict(flip_y=flip, class_sep=sep, loss=label, options=options, mean=statistics.mean(seeds),
                         std=statistics.stdev(seeds) if len(seeds) > 1 else 0.0, seeds=seeds))
        print(f"flip {flip} sep {sep} {label:60s} {rows[-1]['mean']:.2f}", flush=True)
    command = command_line("benchmarks/label_noise_probe.py", argv)
    report = dict(table="label-noise", machine=f"{machine()}, {args.jobs} runs at a time, 1 thread a run",
                  date=time.strftime("%Y-%m-%d"), command=command,
                  seeds=args.seeds, minutes=round((time.time() - start) / 60, 1), rows=rows,
                  class_seeds=args.class_seeds, class_rows=class_rows)
    with open(args.out + ".json", "w") as f:
        json.dump(report, f, indent=1)
    losses = [l for l, _, _ in LOSSES]
    lines = ["# Imbalanced AP with and without label noise", "",
             f"Test AP x100, mean ± std over seeds {args.seeds}; the metric-wins task `imb-ap` (quick schedule) on "
             f"variants of its data. {report['machine']}; {report['date']}; {report['minutes']} minutes. "
             f"Regenerate: `{command}`.", "",
             "| label noise (flip_y) | class separation | " + " | ".join(losses) + " |",
             "|---|---|" + "---|" * len(losses)]
    for flip, sep in DATA:
        cells = [f"{r['mean']:.2f} ± {r['std']:.2f}" for r in rows if (r["flip_y"], r["class_sep"]) == (flip, sep)]
        mark = " (imb-ap)" if (flip, sep) == (0.02, 0.8) else ""
        lines.append(f"| {flip}{mark} | {sep} | " + " | ".join(cells) + " |")
    lines += ["", "## Multi-class accuracy with label noise", "",
              f"Digits, 10 classes (the `digits-f1` task's split, MLP 64-128-10 and recipe: SGD lr 0.1, momentum "
              f"0.9, batch 128, 30 epochs), a fraction of the training labels drawn again uniformly (clean test "
              f"labels); test accuracy x100, mean ± std over seeds {args.class_seeds}, and UniLoss minus "
              f"cross-entropy seed by seed (same initialisation and batches).", "",
              "| labels drawn again | " + " | ".join(l for l, _ in CLASS_LOSSES) + " | difference (mean ± std) |",
              "|---|" + "---|" * (len(CLASS_LOSSES) + 1)]
    for noise in NOISE:
        per = [r for r in class_rows if r["noise"] == noise]
        diff = [u - c for u, c in zip(per[1]["seeds"], per[0]["seeds"])]
        spread = statistics.stdev(diff) if len(diff) > 1 else 0.0
        lines.append(f"| {noise:.0%} | " + " | ".join(f"{r['mean']:.2f} ± {r['std']:.2f}" for r in per)
                     + f" | {statistics.mean(diff):+.2f} ± {spread:.2f} |")
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    return report


if __name__ == "__main__":
    main()
