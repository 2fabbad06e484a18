"""Imbalanced AP with label noise: the last epoch against the epoch a validation split keeps.

    python benchmarks/early_stopping_probe.py      # writes docs/results/metric-wins/early-stopping.{md,json}

The metric-wins task ``imb-ap`` (``make_classification``, 5% positives, 2% of the labels drawn at
random, MLP 20-64-64-1, SGD with momentum 0.9, batch 128, cosine schedule; the full schedule, 40
epochs) for binary cross-entropy and UniLoss at its defaults, at 0.5x, 1x and 2x the recipe's
learning rate. The benchmark scores the last epoch; a practitioner would also keep the epoch whose
validation AP (the task's 5,000-sample validation split) is highest, and this probe scores that
one too (test AP x100, mean and std over the seeds, one thread a run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

import torch

from uniloss.experiments.reproduce import machine

LOSSES = [("binary cross-entropy", "bce"), ("UniLoss (defaults)", "uniloss")]


def _one(job):
    from uniloss.experiments import metric_wins as mw

    torch.set_num_threads(1)
    loss, scale, seed = job
    mw._LR_SCALE = scale
    validation: list = []
    test = mw.run_imbalanced("ap", loss, seed, False, {}, validation=validation)
    keep = max(range(len(validation)), key=validation.__getitem__)  # the first epoch of the highest
    return {"last": test[-1], "kept": test[keep], "kept_epoch": keep + 1, "test": test, "validation": validation}


def _stat(xs):
    return statistics.mean(xs) * 100, (statistics.stdev(xs) * 100 if len(xs) > 1 else 0.0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--lr-scales", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default="docs/results/metric-wins/early-stopping")
    args = parser.parse_args(argv)
    jobs = [(loss, scale, seed) for _, loss in LOSSES for scale in args.lr_scales for seed in args.seeds]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as pool:
        runs = dict(zip(jobs, pool.map(_one, jobs)))
    minutes = (time.perf_counter() - t0) / 60
    rows = []
    for label, loss in LOSSES:
        for scale in args.lr_scales:
            got = [runs[(loss, scale, seed)] for seed in args.seeds]
            rows.append({"loss": label, "lr_scale": scale,
                         "last": _stat([r["last"] for r in got]), "kept": _stat([r["kept"] for r in got]),
                         "kept_epochs": [r["kept_epoch"] for r in got],
                         "runs": {str(seed): r for seed, r in zip(args.seeds, got)}})
    when = time.strftime("%Y-%m-%d")
    info = machine()
    lines = [
        "# Imbalanced AP: the last epoch and the epoch a validation split keeps",
        "",
        f"Test AP x100, mean ± std over seeds {args.seeds}; the metric-wins task `imb-ap` (2% random labels), "
        f"full schedule (40 epochs). {info}, torch {torch.__version__}, {args.jobs} runs at a time, one thread a "
        f"run; {when}; {minutes:.1f} minutes. Regenerate: `python benchmarks/early_stopping_probe.py`.",
        "",
        "| loss | lr | last epoch | epoch of the best validation AP | epochs kept |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['loss']} | {r['lr_scale']:g}x | {r['last'][0]:.2f} ± {r['last'][1]:.2f} | "
                     f"{r['kept'][0]:.2f} ± {r['kept'][1]:.2f} | {' '.join(map(str, r['kept_epochs']))} |")
    lines += ["", "Each loss at its best rate:", "", "| loss | last epoch | kept epoch |", "|---|---|---|"]
    for label, _ in LOSSES:
        mine = [r for r in rows if r["loss"] == label]
        last = max(mine, key=lambda r: r["last"][0])
        kept = max(mine, key=lambda r: r["kept"][0])
        lines.append(f"| {label} | {last['last'][0]:.2f} ± {last['last'][1]:.2f} ({last['lr_scale']:g}x) | "
                     f"{kept['kept'][0]:.2f} ± {kept['kept'][1]:.2f} ({kept['lr_scale']:g}x) |")
    text = "\n".join(lines) + "\n"
    with open(args.out + ".md", "w") as f:
        f.write(text)
    with open(args.out + ".json", "w") as f:
        json.dump({"command": "python benchmarks/early_stopping_probe.py", "date": when, "machine": info, "torch": torch.__version__,
                   "seeds": args.seeds, "minutes": minutes, "rows": rows}, f, indent=1)
    print(text)


if __name__ == "__main__":
    main()
