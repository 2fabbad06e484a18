"""Deep metric learning: UniLoss on the retrieval AP of an embedding, against the field's losses.

    python benchmarks/metric_learning_probe.py      # writes docs/results/metric-wins/metric-learning.{md,json,png}
    python benchmarks/metric_learning_probe.py --quick --out ml-smoke   # a smoke run, ml-smoke.{md,json,png}

A task no default was chosen on, and the one where UniLoss's own sales pitch is loudest: Smooth-AP
(Brown et al. 2020) relaxes the ranks of retrieval AP with a sigmoid at a hand-set temperature,
and UniLoss promises the same metric with nothing to set. An MLP 784-256-64 embeds Fashion-MNIST
images on the unit sphere; it is trained on five classes (dealt at random, ``--draws`` the deals,
each draw also seeding the network and the batches) and scored by retrieval among the test
images: each image queries all the others by cosine similarity, relevant the images of its
class. Two held-out scores: among the five classes held out (the field's protocol: classes never
seen in training) and among the test images of the five training classes (retrieval of the
classes trained on, on images not trained on). Each by mAP and recall@1. Batch 128 (each sample
queries the batch's others), SGD momentum 0.9, cosine over 5 epochs, the recipe's learning rate
0.1 times each of ``--lr-scales``; every loss is reported at its best scale for each score (the
mean over the draws; chosen alike for all), which is generous to every row.

Rows (``uniloss.experiments.metric_wins.run_metric_learning``): the contrastive loss (Hadsell et
al. 2006; margins of pytorch-metric-learning's cosine form), the normalised softmax (Zhai & Wu
2019: cross-entropy over the training classes with cosine logits at temperature 0.05, a strong
baseline of the field), Smooth-AP (temperature 0.01, its paper's), RankNet's pairwise logistic
loss within each query (on the cosines over 0.05), and UniLoss at its defaults on
``zoo.average_precision()`` with each sample a query, on the same scaled cosines and on the
cosines as they are. Beside them, the raw pixels' retrieval (no training).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from uniloss.experiments.loop import run_jobs
from uniloss.experiments.reproduce import command_line, machine

ROWS = [("contrastive", "contrastive"), ("normsoftmax", "normalised softmax"), ("smooth-ap", "Smooth-AP"),
        ("pairwise", "pairwise logistic"), ("uniloss", "UniLoss (defaults), scores cos / 0.05"),
        ("uniloss-cos", "UniLoss (defaults), scores cos")]
EXTRA_ROWS = [("uniloss-offset", "UniLoss (defaults), scores cos / 0.05 minus a learnt offset"),  # only when named
              ("uniloss-centred", "UniLoss (defaults), scores cos / 0.05 minus their query's mean")]
SCORES = [("map", "mAP, held-out classes"), ("r1", "recall@1, held-out classes"),
          ("map-seen", "mAP, the training classes' test images"), ("r1-seen", "recall@1, the same")]


def _one(job):
    from uniloss.experiments import metric_wins as mw

    torch.set_num_threads(1)
    _, scale, draw, epochs, loss, options = job
    mw._LR_SCALE = scale  # (the suite's --lr-scales, as benchmarks/capacity_probe.py sets it)
    record: list = []
    mw.run_metric_learning(loss, draw, True, json.loads(options), draw=draw, epochs=epochs, record=record)
    return record[-1]


def _pixels(draw):
    """The raw pixels' retrieval scores (no training): the standardised images, normalised."""
    import torch.nn.functional as F

    from uniloss.experiments.metric_learning import retrieval_metrics, unseen_classes

    split = unseen_classes(draw)
    (a, b), (c, d) = (retrieval_metrics(F.normalize(x, dim=1), y)
                      for x, y in ((split.x_unseen, split.y_unseen), (split.x_seen, split.y_seen)))
    return {"map": a, "r1": b, "map-seen": c, "r1-seen": d}


def _spread(values):
    """The sample standard deviation (0 for one value)."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _plot(report, out):
    """Each score against the learning-rate scale, a line per loss (None without matplotlib: the
    table is the result, the figure a reading aid)."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SCORES), figsize=(4.4 * len(SCORES), 3.6), squeeze=False)
    scales = report["lr_scales"]
    for ax, (key, title) in zip(axes[0], SCORES):
        for loss, label in report["rows"]:
            means = [report["per_scale"][loss][str(x)][key]["mean"] for x in scales]
            ax.plot(scales, [100 * m for m in means], marker="o", label=label,
                    ls="-" if loss.startswith("uniloss") else "--")
        ax.axhline(100 * report["pixels"][key]["mean"], color="grey", lw=0.8, label="raw pixels")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("learning rate / 0.1")
        ax.set_ylabel("x100, mean over draws")
        ax.set_title(title, fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path = f"{out}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--draws", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--lr-scales", type=float, nargs="+", default=[0.0625, 0.125, 0.25, 0.5, 1.0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--losses", nargs="+", choices=[k for k, _ in ROWS + EXTRA_ROWS], default=None,
                        help="train only these rows (e.g. those best at an edge of the rates, at more rates); "
                             "uniloss-offset and uniloss-centred only when named")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                        help="also train UniLoss on the cosines over 0.05 with these keywords (a row 'UniLoss, NAME')")
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side (1: in this process)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: draw 0, the recipe's rate, 1 epoch")
    parser.add_argument("--out", default="docs/results/metric-wins/metric-learning")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.quick:
        args.draws, args.lr_scales, args.epochs = [0], [1.0], 1
    start = time.time()
    rows = list(ROWS) if args.losses is None else [row for row in ROWS + EXTRA_ROWS if row[0] in args.losses]
    spec = {key: (key, "{}") for key, _ in rows}  # a row's loss and UniLoss keywords
    for name, options in (v.split("=", 1) for v in args.variant):
        rows.append((name, f"UniLoss, {name} (scores cos / 0.05)"))
        spec[name] = ("uniloss", json.dumps(json.loads(options), sort_keys=True))
    jobs = [(key, x, d, args.epochs, *spec[key]) for key, _ in rows for x in args.lr_scales for d in args.draws]
    values = run_jobs(_one, jobs, args.jobs)
    pixels = [_pixels(d) for d in args.draws]
    per_scale = {loss: {str(x): {key: dict(per_draw=v, mean=statistics.mean(v), std=_spread(v))
                                 for key, _ in SCORES
                                 for v in [[values[(loss, x, d, args.epochs, *spec[loss])][key] for d in args.draws]]}
                        for x in args.lr_scales} for loss, _ in rows}
    best = {key: {loss: max(args.lr_scales, key=lambda x: per_scale[loss][str(x)][key]["mean"]) for loss, _ in rows}
            for key, _ in SCORES}
    command = command_line("benchmarks/metric_learning_probe.py", argv)
    report = dict(table="metric learning", machine=f"{machine()}, {args.jobs} runs at a time, 1 thread a run",
                  date=time.strftime("%Y-%m-%d"), command=command, draws=args.draws, lr_scales=args.lr_scales,
                  rows=rows, options={key: json.loads(spec[key][1]) for key, _ in rows},
                  epochs=args.epochs, minutes=round((time.time() - start) / 60, 1), per_scale=per_scale, best_scale=best,
                  pixels={key: dict(per_draw=[p[key] for p in pixels], mean=statistics.mean(p[key] for p in pixels),
                                    std=_spread([p[key] for p in pixels])) for key, _ in SCORES})
    with open(args.out + ".json", "w") as f:
        json.dump(report, f, indent=1)
    figure = _plot(report, args.out)
    title, _, rest = (__doc__ or "").partition("\n\n")
    lines = [f"# {title.rstrip('.')}", "", rest.split("\n\n", 1)[1].replace("``", "`").strip(), "",
             f"Test score x100, mean ± std over draws {args.draws}, each loss at its best learning-rate scale of "
             f"{args.lr_scales} for that score (in brackets). {report['machine']}; torch {torch.__version__}; "
             f"{report['date']}; {report['minutes']} minutes. Regenerate: `{command}`.", ""]
    for key, name in SCORES:
        lines += [f"## {name}", "", "| loss | at its best rate | seeds | UniLoss (cos / 0.05) minus it, draw by draw |",
                  "|---|---|---|---|"]
        uni = per_scale["uniloss"][str(best[key]["uniloss"])][key]["per_draw"] if "uniloss" in per_scale else None
        for loss, label in rows:
            cell = per_scale[loss][str(best[key][loss])][key]
            diff = [100 * (u - v) for u, v in zip(uni or [], cell["per_draw"])]
            versus = "" if loss == "uniloss" or not diff else (f"{statistics.mean(diff):+.2f} ± {_spread(diff):.2f} "
                                                               f"({sum(x > 0 for x in diff)} of {len(diff)} ahead)")
            lines.append(f"| {label} | {100 * cell['mean']:.2f} ± {100 * cell['std']:.2f} (x{best[key][loss]:g}) | "
                         + " ".join(f"{100 * v:.2f}" for v in cell["per_draw"]) + f" | {versus} |")
        pix = report["pixels"][key]
        lines += [f"| raw pixels (no training) | {100 * pix['mean']:.2f} ± {100 * pix['std']:.2f} | "
                  + " ".join(f"{100 * v:.2f}" for v in pix["per_draw"]) + " | |", ""]
    lines += ["## Every rate", "", "| loss | " + " | ".join(f"x{x:g}" for x in args.lr_scales) + " |",
              "|---|" + "---|" * len(args.lr_scales)]
    for key, name in SCORES[:1] + SCORES[2:3]:
        for loss, label in rows:
            lines.append(f"| {label}, {name} | " + " | ".join(
                f"{100 * per_scale[loss][str(x)][key]['mean']:.2f}" for x in args.lr_scales) + " |")
    if figure:
        lines += ["", f"![each score against the learning rate]({figure.rsplit('/', 1)[-1]})"]
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return report


if __name__ == "__main__":
    main()
