"""Where the usual loss is already right: UniLoss against binary cross-entropy as the model grows.

    python benchmarks/capacity_probe.py      # writes docs/results/metric-wins/capacity.{md,json,png}

The question behind the suite's ties. For AP of binary labels the best ranking is by the
posterior ``P(y = 1 | x)``, and for F1 at a threshold the best decision thresholds the posterior
(at ``F1* / 2``): binary cross-entropy estimates that posterior (it is a proper scoring rule), so
with a model that can represent it the usual loss, with a tuned threshold for F1, is already
consistent for the metric and a metric-trained loss has only finite-sample effects to gain
from. Where the model cannot represent the posterior, the best model for the metric within the
family is not the likelihood's, and a loss that follows the metric can be ahead. The prediction:
UniLoss's lead over binary cross-entropy (and over the strongest baseline) shrinks as the model
grows.

The metric-wins tasks ``imb-ap`` and ``imb-f1`` (``make_classification``, 5% positives, 2% random
labels, 20 features, two clusters a class; SGD lr 0.1, momentum 0.9, batch 128, cosine, the
quick schedule of 20 epochs) with the model varied (``--models``: hidden widths; ``linear``: none)
and the data set drawn again (``--draws``: ``make_classification``'s ``random_state``, network seed
``--seed``), so the spread is the data's and the initialisation's. AP: binary cross-entropy, the
pairwise logistic loss and UniLoss (``AveragePrecision()``, defaults); F1 at logit 0: binary
cross-entropy at logit 0 and at the threshold tuned on the validation split, UniLoss
(``zoo.f_beta(1, threshold=0)``, defaults) at logit 0. Test metric x100; differences draw by draw
(same initialisation and batches).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import torch

from uniloss.experiments.reproduce import machine

MODELS = {"linear": (), "8": (8,), "64-64": (64, 64), "256-256": (256, 256)}  # hidden widths; 64-64: the suite's
LOSSES = {  # metric -> [(row, loss)]; the first is the usual loss, the last UniLoss
    "ap": [("binary cross-entropy", "bce"), ("pairwise logistic", "pairwise"), ("UniLoss (defaults)", "uniloss")],
    "f1": [("binary cross-entropy", "bce"), ("BCE, validation-tuned threshold", "bce-tuned"),
           ("UniLoss (defaults)", "uniloss")],
}
TITLES = {"ap": "test AP", "f1": "test F1 at logit 0"}


def _one(job):
    from uniloss.experiments import metric_wins as mw

    torch.set_num_threads(1)
    metric, model, loss, draw, seed = job
    return mw.run_imbalanced(metric, loss, seed, True, {}, draw=draw, hidden=MODELS[model])[-1]


def _spread(values):
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _plot(rows, out):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the table is the result; the figure is a reading aid
        return None
    fig, axes = plt.subplots(1, len(LOSSES), figsize=(5 * len(LOSSES), 3.6))
    for ax, metric in zip(axes, LOSSES):
        per = [r for r in rows if r["metric"] == metric]
        xs = list(range(len(per)))
        for key, label, marker in (("vs_usual", "UniLoss - binary cross-entropy", "o"),
                                   ("vs_best", "UniLoss - strongest other row", "s")):
            means = [r[key]["mean"] for r in per]
            stds = [r[key]["std"] for r in per]
            ax.errorbar(xs, means, yerr=stds, marker=marker, capsize=3, label=label)
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xticks(xs, [r["model"] for r in per])
        ax.set_xlabel("model (hidden widths)")
        ax.set_ylabel(f"{TITLES[metric]} x100, difference")
        ax.set_title(f"imb-{metric} data, mean ± std over draws")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out + ".png", dpi=110)
    plt.close(fig)
    return out + ".png"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--metrics", nargs="+", default=list(LOSSES), choices=list(LOSSES))
    parser.add_argument("--draws", type=int, nargs="+", default=list(range(8)))
    parser.add_argument("--seed", type=int, default=1, help="network seed on every draw")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default="docs/results/metric-wins/capacity")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    start = time.time()
    jobs = [(m, h, loss, d, args.seed) for m in args.metrics for h in args.models for _, loss in LOSSES[m]
            for d in args.draws]
    with ProcessPoolExecutor(args.jobs) as pool:
        values = dict(zip(jobs, pool.map(_one, jobs)))
    rows = []
    for metric in args.metrics:
        for model in args.models:
            per = {label: [100 * values[(metric, model, loss, d, args.seed)] for d in args.draws]
                   for label, loss in LOSSES[metric]}
            labels = [label for label, _ in LOSSES[metric]]
            uni, usual, others = per[labels[-1]], per[labels[0]], labels[:-1]
            best = max(others, key=lambda k: statistics.mean(per[k]))  # the strongest other row on this model
            row = dict(metric=metric, model=model, hidden=list(MODELS[model]), per_draw=per,
                       mean={k: statistics.mean(v) for k, v in per.items()},
                       std={k: _spread(v) for k, v in per.items()}, strongest=best)
            for key, ref in (("vs_usual", usual), ("vs_best", per[best])):
                diff = [u - r for u, r in zip(uni, ref)]
                row[key] = dict(per_draw=diff, mean=statistics.mean(diff), std=_spread(diff),
                                ahead=sum(d > 0 for d in diff))
            rows.append(row)
            print(f"{metric} {model:8s} " + "  ".join(f"{k} {row['mean'][k]:.2f}" for k in labels)
                  + f"  UniLoss - {best}: {row['vs_best']['mean']:+.2f} ± {row['vs_best']['std']:.2f}"
                  + f" ({row['vs_best']['ahead']}/{len(args.draws)})", flush=True)
    command = "python benchmarks/capacity_probe.py" + ("" if not argv else " " + " ".join(argv))
    report = dict(table="capacity", machine=f"{machine()}, {args.jobs} runs at a time, 1 thread a run",
                  date=time.strftime("%Y-%m-%d"), command=command, draws=args.draws, seed=args.seed, epochs=20,
                  minutes=round((time.time() - start) / 60, 1), rows=rows)
    with open(args.out + ".json", "w") as f:
        json.dump(report, f, indent=1)
    figure = _plot(rows, args.out)
    lines = ["# UniLoss against the usual loss as the model grows", "",
             f"The metric-wins tasks `imb-ap` and `imb-f1` (quick schedule, 20 epochs) with the model varied "
             f"(hidden widths; `64-64` is the suite's) on draws {args.draws} of the data "
             f"(`make_classification(random_state=draw)`), network seed {args.seed}. Test metric x100, mean ± "
             f"std over the draws; UniLoss minus the usual loss and minus the strongest other row (the one "
             f"with the best mean on that model), draw by draw. {report['machine']}; {report['date']}; "
             f"{report['minutes']} minutes. Regenerate: `{command}`.", ""]
    for metric in args.metrics:
        labels = [label for label, _ in LOSSES[metric]]
        lines += [f"## {TITLES[metric]}", "",
                  "| model | " + " | ".join(labels) + " | UniLoss - usual | UniLoss - strongest other (which) |",
                  "|---|" + "---|" * (len(labels) + 2)]
        for r in (r for r in rows if r["metric"] == metric):
            n = len(r["vs_usual"]["per_draw"])
            lines.append(f"| {r['model']} | " + " | ".join(f"{r['mean'][k]:.2f} ± {r['std'][k]:.2f}" for k in labels)
                         + f" | {r['vs_usual']['mean']:+.2f} ± {r['vs_usual']['std']:.2f} ({r['vs_usual']['ahead']} of {n})"
                         + f" | {r['vs_best']['mean']:+.2f} ± {r['vs_best']['std']:.2f} ({r['vs_best']['ahead']} of {n};"
                         + f" {r['strongest']}) |")
        lines.append("")
    if figure:
        name = figure.rsplit("/", 1)[-1]
        lines += [f"![UniLoss's lead against model size]({name})", ""]
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines))
    return report


if __name__ == "__main__":
    main()
