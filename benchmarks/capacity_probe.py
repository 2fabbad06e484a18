"""Where the usual loss is already right: UniLoss against the usual loss as the model grows.

    python benchmarks/capacity_probe.py      # writes docs/results/metric-wins/capacity.{md,json,png}

The question behind the suite's ties. For AP of binary labels the best ranking is by the
posterior ``P(y = 1 | x)``, and for F1 at a threshold the best decision thresholds the posterior
(at ``F1* / 2``): binary cross-entropy estimates that posterior (it is a proper scoring rule), so
with a model that can represent it the usual loss, with a tuned threshold for F1, is already
consistent for the metric and a metric-trained loss has only finite-sample effects to gain
from. The same holds for macro-F1 of balanced classes (close to accuracy's argmax of the
posterior: cross-entropy) and for balanced accuracy (the argmax of the posterior over the class
prior: class-weighted cross-entropy). Where the model cannot represent the posterior, the best
model for the metric within the family is not the likelihood's, and a loss that follows the
metric can be ahead. The prediction: UniLoss's lead over the usual loss (and over the strongest
baseline) shrinks as the model grows.

The metric-wins tasks below, at their quick schedules and recipes (SGD, momentum 0.9, batch 128), with
the model's hidden widths varied (``--models``: names; ``linear``: none) and the data drawn again
(``--draws``; network seed ``--seed``), so the spread is the data's and the initialisation's;
``--batches`` trains each model with other batch sizes too, at the recipes' learning rates and
epochs (so a smaller batch takes more, noisier steps, and holds fewer positives or samples of a
class: the metric of a batch is then a coarser estimate of the data set's):

* ``ap``, ``f1``: the ``imb-ap`` / ``imb-f1`` data (``make_classification``, 5% positives, 2%
  random labels, 20 features, two clusters a class, ``random_state`` the draw; 20 epochs, lr
  0.1, cosine). AP: binary cross-entropy, the pairwise logistic loss, UniLoss
  (``AveragePrecision()``); F1 at logit 0: binary cross-entropy at logit 0 and at the threshold
  tuned on the validation split, UniLoss (``zoo.f_beta(1, threshold=0)``) at logit 0.
* ``macro-f1``: the ``digits-f1`` task (scikit-learn's digits, the train/test split of the draw;
  30 epochs): cross-entropy, UniLoss (``zoo.macro_f1(10)``).
* ``pairs-f1``: the ``pairs-f1`` probe task (MNIST digit pairs, 100 balanced classes, 5 epochs;
  not in the default ``--metrics``): cross-entropy, UniLoss (``zoo.macro_f1(100)``). Its data set
  is fixed, so there a draw seeds the network and the batches (``--seed`` plus the draw).
* ``bal-acc``: the ``bal-acc`` task's imbalanced MNIST (digit ``c`` keeps ``0.6 ** c`` of its
  images, drawn at random with the draw as seed, as the ``bal-acc-draws`` probe; 5 epochs):
  cross-entropy, class-weighted cross-entropy, UniLoss (``zoo.balanced_accuracy(10)``); with
  ``--extras uniloss-traced``, balanced accuracy written as plain torch through ``from_metric``
  (``metric_wins.plain_balanced_accuracy``) beside them.
* ``imb-macro-f1``: the same data scored by macro-F1 (no suite task; not in the default
  ``--metrics``): cross-entropy, class-weighted cross-entropy, UniLoss (``zoo.macro_f1(10)``).
  The test split is balanced and the training split is not, so this is macro-F1 under a shift
  of the class prior; beside the defaults, UniLoss on macro-F1 at the test split's class shares
  (each sample weighed by its class's test share over its training share,
  ``metric_wins.class_weighted_macro_f1`` through ``from_metric``), the metric as it is scored;
  the same path on the plain macro-F1 (its control); and the test-prior metric as the zoo's
  ``macro_f1(10, class_weights=...)``, alone and in a ``CrossBatchMemory`` of 896 samples (the
  loss scaled back to the batch's step; ``--extras`` keeps some of these rows only).
  ``imb-macro-f1-train-prior``: the same runs, the test macro-F1 at the
  training split's class shares (each test sample weighed by its class's training share over
  its test share: ``metric_wins.prior_weighted_macro_f1``), so the held-out data differ from
  the training data by the sample only.
* ``imb-mcc``: the same data scored by the multi-class Matthews correlation (no suite task, not
  in the default ``--metrics``; no default was chosen on it): cross-entropy, class-weighted
  cross-entropy, UniLoss (``zoo.matthews_corrcoef(10)``). ``imb-mcc-train-prior``: the same
  runs scored at the training split's class shares (``metric_wins.prior_weighted_mcc``).
* ``fashion-ap``, ``fashion-f1``: real images, no suite task (not in the default ``--metrics``):
  Fashion-MNIST's shirts (class 6, the class most confused with others) against the rest, the
  shirts kept at random (the draw the seed) so that they are 5% of each split, a tenth of the
  training split held out for validation (``metric_wins.fashion_binary``); 5 epochs, lr 0.1,
  cosine, batch 128. The losses of ``ap`` / ``f1``, and BCE with ``pos_weight`` (negatives over
  positives) for F1.
* ``fashion-bal-acc``, ``fashion-imb-macro-f1``, ``fashion-imb-macro-f1-train-prior``,
  ``fashion-imb-mcc``, ``fashion-imb-mcc-train-prior``: the five above on Fashion-MNIST, real
  images (no suite task; not in the default ``--metrics``): class ``c`` keeps ``0.6 ** order[c]``
  of its training images, ``order`` a random permutation of the classes drawn with the images
  (the draw the seed), so that the rarest class changes from draw to draw
  (``metric_wins.imbalanced_mnist(source="fashion")``); the same losses and recipe.
* ``mlabel-f1``: multi-label mosaics, no suite task (not in the default ``--metrics``; no default
  was chosen on it): each image a 2 x 2 grid of MNIST digits, each slot filled with probability
  1/2, digit ``c`` with probability proportional to ``0.7 ** c`` (class 0 on 49% of the mosaics,
  class 9 on 2.5%), the labels the classes shown (``metric_wins.multilabel_mnist``, the draw its
  seed); test macro-F1 over the ten labels at logit 0; 5 epochs, lr 0.1, cosine, batch 128.
  Binary cross-entropy at logit 0, BCE with each label's ``pos_weight``, BCE at each label's
  threshold tuned on the validation mosaics, and UniLoss on the metric's plain torch code
  (``metric_wins.multilabel_macro_f1``) through ``uniloss.from_metric``: the route of a metric
  the zoo lacked (an extra row: the zoo's ``f_beta(1, average="macro")``, added after 0.12.2).
  ``fashion-mlabel-f1``: the same with Fashion-MNIST's images, the classes'
  shares dealt in a random order. ``mlabel-f1-15``: ``mlabel-f1`` trained for 15 epochs (the
  cosine over 15), to see what more training does to the lead. ``mlabel-map``: the same mosaics
  scored by the labels' mean AP (``metric_wins.multilabel_map``, scikit-learn's macro average
  precision); BCE, BCE with ``pos_weight``, the pairwise logistic loss within each label, and
  UniLoss on ``zoo.average_precision()`` with each label a query. ``mlabel-samples-f1``: the same
  mosaics scored by F1 per sample at logit 0 (``metric_wins.multilabel_samples_f1``, scikit-learn's
  ``average="samples"``); BCE, BCE with ``pos_weight``, BCE at one threshold tuned on the
  validation mosaics, and UniLoss on the metric's plain torch code through ``from_metric``.
* ``recall-at-p80``, ``precision-at-r60``: the ``imb-ap`` data scored at one operating point of
  the precision-recall curve (no suite task; not in the default ``--metrics``): the largest recall
  at a precision of at least 0.8, and the largest precision at a recall of at least 0.6
  (``metric_wins.operating_point``, scikit-learn's curve). Binary cross-entropy, BCE with
  ``pos_weight``, the pairwise logistic loss, UniLoss on the metric
  (``zoo.recall_at_precision(0.8)``, ``zoo.precision_at_recall(0.6)``) and, an extra row, UniLoss
  on ``zoo.average_precision()`` (the whole curve instead of the point).

UniLoss at its defaults everywhere. Test metric x100; differences draw by draw (same
initialisation and batches).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import textwrap
import time

import torch

from uniloss.experiments.loop import run_jobs
from uniloss.experiments.reproduce import command_line, machine

BINARY_MODELS = {"linear": (), "8": (8,), "64-64": (64, 64), "256-256": (256, 256)}  # hidden widths
CLASS_MODELS = {"linear": (), "8": (8,), "32": (32,), "128": (128,), "512": (512,)}
FASHION_MODELS = {"linear": (), "16": (16,), "128": (128,)}
FASHION_CLASS_MODELS = {"linear": (), "32": (32,), "128": (128,), "512": (512,)}
PAIRS_MODELS = {"32": (32,), "64": (64,), "128": (128,), "512": (512,)}
MLABEL_MODELS = {"linear": (), "128": (128,), "512-512": (512, 512)}
TASKS = {  # metric -> title, models, suite's model, [(row, loss)]: the first the usual loss, the last UniLoss
    "ap": ("imb-ap: test AP", BINARY_MODELS, "64-64",
           [("binary cross-entropy", "bce"), ("pairwise logistic", "pairwise"), ("UniLoss (defaults)", "uniloss")]),
    "f1": ("imb-f1: test F1 at logit 0", BINARY_MODELS, "64-64",
           [("binary cross-entropy", "bce"), ("BCE, validation-tuned threshold", "bce-tuned"),
            ("UniLoss (defaults)", "uniloss")]),
    "macro-f1": ("digits-f1: test macro-F1", CLASS_MODELS, "128",
                 [("cross-entropy", "ce"), ("UniLoss (defaults)", "uniloss")]),
    "bal-acc": ("bal-acc (random images): test balanced accuracy", CLASS_MODELS, "128",
                [("cross-entropy", "ce"), ("class-weighted CE", "ce-weighted"), ("UniLoss (defaults)", "uniloss")]),
    "pairs-f1": ("pairs-f1: test macro-F1, 100 classes", PAIRS_MODELS, "512",
                 [("cross-entropy", "ce"), ("UniLoss (defaults)", "uniloss")]),
    "imb-macro-f1": ("imbalanced MNIST (random images): test macro-F1", CLASS_MODELS, None,  # no suite task
                     [("cross-entropy", "ce"), ("class-weighted CE", "ce-weighted"), ("UniLoss (defaults)", "uniloss")]),
    "imb-mcc": ("imbalanced MNIST (random images): test Matthews correlation", CLASS_MODELS, None,  # no suite task
                [("cross-entropy", "ce"), ("class-weighted CE", "ce-weighted"), ("UniLoss (defaults)", "uniloss")]),
    "imb-mcc-train-prior": ("imbalanced MNIST (random images): test Matthews correlation at the training split's "
                            "class shares", CLASS_MODELS, None,
                            [("cross-entropy", "ce"), ("class-weighted CE", "ce-weighted"),
                             ("UniLoss (defaults)", "uniloss")]),
    "imb-macro-f1-train-prior": ("imbalanced MNIST (random images): test macro-F1 at the training split's class shares",
                                 CLASS_MODELS, None,
                                 [("cross-entropy", "ce"), ("class-weighted CE", "ce-weighted"),
                                  ("UniLoss (defaults)", "uniloss")]),
    "fashion-ap": ("Fashion-MNIST shirts (5%) vs rest: test AP", FASHION_MODELS, None,
                   [("binary cross-entropy", "bce"), ("pairwise logistic", "pairwise"), ("UniLoss (defaults)", "uniloss")]),
    "fashion-f1": ("Fashion-MNIST shirts (5%) vs rest: test F1 at logit 0", FASHION_MODELS, None,
                   [("binary cross-entropy", "bce"), ("BCE, pos_weight", "bce-posweight"),
                    ("BCE, validation-tuned threshold", "bce-tuned"), ("UniLoss (defaults)", "uniloss")]),
    "mlabel-f1": ("multi-label MNIST mosaics: test macro-F1 over 10 labels at logit 0", MLABEL_MODELS, None,
                  [("binary cross-entropy", "bce"), ("BCE, pos_weight", "bce-posweight"),
                   ("BCE, validation-tuned thresholds", "bce-tuned"), ("UniLoss (defaults)", "uniloss")]),
}
for _m, _title in (("recall-at-p80", "recall at precision >= 0.8"), ("precision-at-r60", "precision at recall >= 0.6")):
    TASKS[_m] = (f"imb-ap's data: test {_title}", BINARY_MODELS, None,
                 [("binary cross-entropy", "bce"), ("BCE, pos_weight", "bce-posweight"),
                  ("pairwise logistic", "pairwise"), ("UniLoss (defaults)", "uniloss")])
TASKS["mlabel-f1-15"] = (TASKS["mlabel-f1"][0] + ", 15 epochs", MLABEL_MODELS, None, TASKS["mlabel-f1"][3])
TASKS["mlabel-map"] = ("multi-label MNIST mosaics: test mean AP over 10 labels", MLABEL_MODELS, None,
                       [("binary cross-entropy", "bce"), ("BCE, pos_weight", "bce-posweight"),
                        ("pairwise logistic per label", "pairwise"), ("UniLoss (defaults)", "uniloss")])
TASKS["mlabel-samples-f1"] = ("multi-label MNIST mosaics: test F1 per sample at logit 0", MLABEL_MODELS, None,
                              [("binary cross-entropy", "bce"), ("BCE, pos_weight", "bce-posweight"),
                               ("BCE, a validation-tuned threshold", "bce-tuned"), ("UniLoss (defaults)", "uniloss")])
# the same on Fashion-MNIST
for _m in ("bal-acc", "imb-macro-f1", "imb-macro-f1-train-prior", "imb-mcc", "imb-mcc-train-prior", "mlabel-f1"):
    _title, _models, _, _rows = TASKS[_m]
    TASKS["fashion-" + _m] = (_title.replace("bal-acc (random images)", "imbalanced Fashion-MNIST")
                              .replace("imbalanced MNIST (random images)", "imbalanced Fashion-MNIST")
                              .replace("MNIST mosaics", "Fashion-MNIST mosaics"),
                              _models if _m == "mlabel-f1" else FASHION_CLASS_MODELS, None, _rows)
PROBES_ONLY = ("pairs-f1", "imb-macro-f1", "imb-macro-f1-train-prior", "imb-mcc", "imb-mcc-train-prior",  # not in
               "fashion-ap", "fashion-f1", "fashion-bal-acc", "fashion-imb-macro-f1",  # the default --metrics
               "fashion-imb-macro-f1-train-prior", "fashion-imb-mcc", "fashion-imb-mcc-train-prior",
               "mlabel-f1", "fashion-mlabel-f1", "mlabel-f1-15", "mlabel-map", "mlabel-samples-f1",
               "recall-at-p80", "precision-at-r60")
# Rows beside the defaults on some metrics, reported as the variants are: UniLoss on macro-F1 at the
# test split's class shares through from_metric (metric_wins.class_weighted_macro_f1), its control
# (the same path on the plain macro-F1), and the same metric as the zoo's macro_f1(class_weights=...),
# alone and in a memory
EXTRA = {m: [("UniLoss, macro-F1 at the test's class shares", "uniloss-test-prior", "{}"),
             ("UniLoss, macro-F1 through from_metric", "uniloss-traced", "{}"),
             ("UniLoss, zoo.macro_f1(class_weights=test share / training share)", "uniloss-class-weights", "{}"),
             ("UniLoss, class_weights, a memory of 896 samples", "uniloss-class-weights-memory", '{"memory": 896}')]
         for m in ("imb-macro-f1", "fashion-imb-macro-f1")}
EXTRA["mlabel-f1"] = [("UniLoss, zoo.f_beta(1, average='macro')", "uniloss-zoo", "{}")]  # the zoo's, not traced
for _m in ("recall-at-p80", "precision-at-r60"):  # UniLoss on AP, the operating point's ranking metric of the zoo
    EXTRA[_m] = [("UniLoss on zoo.average_precision()", "uniloss-ap", "{}")]
# Rows run only where --extras names them (the tables whose commands leave --extras out keep their
# rows): balanced accuracy written as plain torch, through from_metric (metric_wins.plain_balanced_accuracy)
NAMED_EXTRA = {"bal-acc": [("UniLoss, balanced accuracy through from_metric", "uniloss-traced", "{}")]}
# The metrics on the bal-acc task's imbalanced MNIST: the zoo metric trained and scored, the test's class shares
IMBALANCED_MNIST = {"bal-acc": ("balanced_accuracy", "balanced"), "imb-macro-f1": ("macro_f1", "balanced"),
                    "imb-macro-f1-train-prior": ("macro_f1", "train"), "imb-mcc": ("matthews_corrcoef", "balanced"),
                    "imb-mcc-train-prior": ("matthews_corrcoef", "train")}


def _one(job):
    from uniloss import zoo
    from uniloss.experiments import metric_wins as mw

    torch.set_num_threads(1)
    metric, (model, batch), loss, draw, seed, options, scale = job
    hidden, options = TASKS[metric][1][model], json.loads(options)
    loss = loss.removesuffix("-memory")  # (an extra row's name: the memory is in its options)
    mw._LR_SCALE = scale  # (the suite's --lr-scales)
    if metric == "macro-f1":
        return mw.run_digits_f1(loss, seed, True, options, draw=draw, hidden=hidden, batch=batch)[-1]
    if metric == "pairs-f1":  # one data set (MNIST's pairs): the draw seeds the network and the batches
        return mw.run_pairs(loss, seed + draw, True, options, metric=zoo.macro_f1(100), hidden=hidden,
                            batch=batch)[-1]
    if metric in ("mlabel-map", "mlabel-samples-f1"):
        return mw.run_multilabel(loss, seed, True, options, draw=draw, hidden=hidden, batch=batch,
                                 metric=metric.removeprefix("mlabel-"))[-1]
    if metric.removeprefix("fashion-").startswith("mlabel-f1"):
        return mw.run_multilabel(loss, seed, True, options, draw=draw, hidden=hidden, batch=batch,
                                 source="fashion" if metric.startswith("fashion-") else "mnist",
                                 epochs=15 if metric.endswith("-15") else 5)[-1]
    if metric.removeprefix("fashion-") in IMBALANCED_MNIST:
        name, test_prior = IMBALANCED_MNIST[metric.removeprefix("fashion-")]
        return mw.run_imbalanced_mnist(name, loss, seed, True, options, draw=draw, hidden=hidden, batch=batch,
                                       test_prior=test_prior,
                                       source="fashion" if metric.startswith("fashion-") else "mnist")[-1]
    source = "fashion" if metric.startswith("fashion-") else "synthetic"
    return mw.run_imbalanced(metric.removeprefix("fashion-"), loss, seed, True, options, draw=draw, hidden=hidden,
                             batch=batch, source=source)[-1]


def _only(args, models, losses, values, command, start) -> dict:
    """``--only``: each trained row's test metric (x100) per model and learning-rate scale, mean and
    std over the draws, printed and written to ``OUT.json``."""
    rows = []
    for metric in args.metrics:
        for model in models[metric]:
            for label, loss, options in losses[metric]:
                for x in args.lr_scales:
                    v = [100 * values[(metric, model, loss, d, args.seed, options, x)] for d in args.draws]
                    rows.append(dict(metric=metric, model=model[0], batch=model[1], loss=label, lr_scale=x,
                                     per_draw=v, mean=statistics.mean(v), std=_spread(v)))
                    print(f"{metric} {_name(model):8s} {label} x{x:g}: {rows[-1]['mean']:.2f} ± {rows[-1]['std']:.2f}",
                          flush=True)
    report = dict(table="capacity, --only", machine=f"{machine()}, {args.jobs} runs at a time, 1 thread a run",
                  date=time.strftime("%Y-%m-%d"), command=command, draws=args.draws, seed=args.seed,
                  minutes=round((time.time() - start) / 60, 1), rows=rows)
    with open(args.out + ".json", "w") as f:
        json.dump(report, f, indent=1)
    return report


def _name(setting):
    """A setting's label: the model's name, and its batch size where it is not the suite's 128."""
    model, batch = setting
    return model if batch == 128 else f"{model}, batch {batch}"


def _spread(values):
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _plot(rows, out):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the table is the result; the figure is a reading aid
        return None
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    cols = min(2, len(metrics))
    grid = (len(metrics) + cols - 1) // cols
    fig, axes = plt.subplots(grid, cols, figsize=(5.5 * cols, 3.6 * grid), squeeze=False)
    for ax, metric in zip(axes.reshape(-1), metrics):
        per = [r for r in rows if r["metric"] == metric]
        xs = list(range(len(per)))
        for key, label, marker in (("vs_usual", "the usual loss", "o"),
                                   ("vs_best", "the strongest other row", "s")):
            means = [r[key]["mean"] for r in per]
            stds = [r[key]["std"] for r in per]
            ax.errorbar(xs, means, yerr=stds, marker=marker, capsize=3, label=label)
        for variant in per[0].get("variants_vs_best", {}):  # a variant minus the strongest other row
            ax.errorbar(xs, [r["variants_vs_best"][variant]["mean"] for r in per],
                        yerr=[r["variants_vs_best"][variant]["std"] for r in per], marker="^", capsize=3,
                        ls="--", label=f"{variant} minus the strongest other row")
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xticks(xs, [_name((r["model"], r["batch"]))
                           + (" (suite)" if (r["model"], r["batch"]) == (TASKS[metric][2], 128) else "") for r in per],
                      rotation=20 if len(per) > 5 else 0, fontsize=8)
        ax.set_xlabel("model (hidden widths)" + (", batch size" if any(r["batch"] != 128 for r in per) else ""))
        ax.set_ylabel("x100, UniLoss minus")
        ax.set_title(textwrap.fill(f"{TASKS[metric][0]}, mean ± std over draws", 70), fontsize=9)
        ax.legend(fontsize=8)
    for ax in axes.reshape(-1)[len(metrics):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out + ".png", dpi=110)
    plt.close(fig)
    return out + ".png"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=None, help="names of the models to train (default: all)")
    parser.add_argument("--metrics", nargs="+", default=[m for m in TASKS if m not in PROBES_ONLY], choices=list(TASKS))
    parser.add_argument("--batches", type=int, nargs="+", default=[128],
                        help="batch sizes to train each model with (the suite's: 128; the learning rate stays the recipe's)")
    parser.add_argument("--lr-scales", type=float, nargs="+", default=[1.0],
                        help="train at each recipe's learning rate times each scale; each loss is then reported at "
                             "the scale with its best mean over the draws (chosen on the test metric, alike for all)")
    parser.add_argument("--draws", type=int, nargs="+", default=list(range(8)))
    parser.add_argument("--seed", type=int, default=1, help="network seed on every draw")
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side (1: in this process)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                        help="also train UniLoss with these keywords (a row 'UniLoss, NAME' beside the defaults)")
    parser.add_argument("--extras", nargs="*", default=None, metavar="LOSS",
                        help="of the rows beside the defaults that some metrics have (EXTRA), only these losses "
                             "(default: all of them; none: no extra row); the rows of NAMED_EXTRA (bal-acc's "
                             "uniloss-traced) run only when named here")
    parser.add_argument("--only", nargs="+", default=None, metavar="LOSS",
                        help="train only these rows' losses (e.g. a row best at the grid's edge, at more scales): "
                             "writes each one's test metric per model and scale (OUT.json), no comparison table")
    parser.add_argument("--out", default="docs/results/metric-wins/capacity")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    start = time.time()
    models = {m: [(h, b) for h in TASKS[m][1] if args.models is None or h in args.models for b in args.batches]
              for m in args.metrics}
    variants = [(f"UniLoss, {name}", "uniloss", json.dumps(json.loads(options), sort_keys=True))
                for name, options in (v.split("=", 1) for v in args.variant)]
    extra = {m: [row for row in EXTRA.get(m, []) if args.extras is None or row[1] in args.extras]
             + [row for row in NAMED_EXTRA.get(m, []) if args.extras is not None and row[1] in args.extras]
             + variants for m in args.metrics}  # rows beside the defaults
    losses = {m: [(label, loss, "{}") for label, loss in TASKS[m][3]] + extra[m] for m in args.metrics}
    if args.only is not None:
        losses = {m: [row for row in rows if row[1] in args.only] for m, rows in losses.items()}
    jobs = [(m, h, loss, d, args.seed, options, x) for m in args.metrics for h in models[m]
            for _, loss, options in losses[m] for x in args.lr_scales for d in args.draws]
    values = run_jobs(_one, jobs, args.jobs)
    command = command_line("benchmarks/capacity_probe.py", argv)
    if args.only is not None:
        return _only(args, models, losses, values, command, start)
    rows = []
    for metric in args.metrics:
        for model in models[metric]:
            at = {(label, x): [100 * values[(metric, model, loss, d, args.seed, options, x)] for d in args.draws]
                  for label, loss, options in losses[metric] for x in args.lr_scales}
            scale = {label: max(args.lr_scales, key=lambda x: statistics.mean(at[(label, x)]))
                     for label, _, _ in losses[metric]}  # each loss at its best scale (the only one by default)
            per = {label: at[(label, scale[label])] for label, _, _ in losses[metric]}
            labels = [label for label, _ in TASKS[metric][3]]  # (the variants' rows: after these)
            uni, usual, others = per[labels[-1]], per[labels[0]], labels[:-1]
            best = max(others, key=lambda k: statistics.mean(per[k]))  # the strongest other row on this model
            row = dict(metric=metric, model=model[0], batch=model[1], hidden=list(TASKS[metric][1][model[0]]), per_draw=per,
                       mean={k: statistics.mean(v) for k, v in per.items()},
                       std={k: _spread(v) for k, v in per.items()}, strongest=best, lr_scale=scale,
                       per_scale={f"{k} x{x:g}": v for (k, x), v in at.items()} if len(args.lr_scales) > 1 else None)
            for key, ref in (("vs_usual", usual), ("vs_best", per[best])):
                diff = [u - r for u, r in zip(uni, ref)]
                row[key] = dict(per_draw=diff, mean=statistics.mean(diff), std=_spread(diff),
                                ahead=sum(d > 0 for d in diff))
            for label, _, _ in extra[metric]:  # each variant minus the defaults and the strongest other, draw by draw
                for key, ref in (("variants_vs_defaults", uni), ("variants_vs_best", per[best])):
                    diff = [v - u for v, u in zip(per[label], ref)]
                    row.setdefault(key, {})[label] = dict(
                        per_draw=diff, mean=statistics.mean(diff), std=_spread(diff), ahead=sum(d > 0 for d in diff))
            rows.append(row)
            print(f"{metric} {_name(model):8s} " + "  ".join(f"{k} {row['mean'][k]:.2f}" for k in per)
                  + f"  UniLoss - {best}: {row['vs_best']['mean']:+.2f} ± {row['vs_best']['std']:.2f}"
                  + f" ({row['vs_best']['ahead']}/{len(args.draws)})", flush=True)
    report = dict(table="capacity", machine=f"{machine()}, {args.jobs} runs at a time, 1 thread a run",
                  date=time.strftime("%Y-%m-%d"), command=command, draws=args.draws, seed=args.seed, batches=args.batches,
                  lr_scales=args.lr_scales,
                  minutes=round((time.time() - start) / 60, 1), rows=rows)
    with open(args.out + ".json", "w") as f:
        json.dump(report, f, indent=1)
    figure = _plot(rows, args.out)
    batches = "" if args.batches == [128] else f" and batch sizes {args.batches} (the recipes' learning rates)"
    if args.lr_scales != [1.0]:
        batches = (batches.replace(" (the recipes' learning rates)", "") + f", each loss at its best of the recipes' "
                   f"learning rates times {args.lr_scales} (the scale in brackets; chosen on the mean test metric "
                   f"over the draws, alike for every loss)")
    varied = args.batches != [128]
    lines = ["# UniLoss against the usual loss as the model grows" + (" and the batch size varies" if varied else ""), "",
             f"Metric-wins tasks (quick schedules) with the model's hidden widths varied (the suite's model "
             f"marked){batches} on draws {args.draws} of their data, network seed {args.seed}; the tasks, losses and "
             f"data draws: `python benchmarks/capacity_probe.py --help`. Test metric x100, mean ± "
             f"std over the draws; UniLoss minus the usual loss and minus the strongest other row (the one "
             f"with the best mean on that model), draw by draw, and the draws where UniLoss is ahead. "
             f"{report['machine']}; {report['date']}; {report['minutes']} minutes. Regenerate: `{command}`.", ""]
    for metric in args.metrics:
        labels = [label for label, _, _ in losses[metric]]
        columns = [f"{label} - {ref}" for label, _, _ in extra[metric] for ref in ("defaults", "strongest other")]
        lines += [f"## {TASKS[metric][0]}", "",
                  "| model | " + " | ".join(labels) + " | UniLoss - usual | UniLoss - strongest other (which) |"
                  + "".join(f" {e} |" for e in columns),
                  "|---|" + "---|" * (len(labels) + 2 + len(columns))]
        for r in (r for r in rows if r["metric"] == metric):
            n = len(r["vs_usual"]["per_draw"])
            mark = " (the suite's)" if (r["model"], r["batch"]) == (TASKS[metric][2], 128) else ""
            lines.append(f"| {_name((r['model'], r['batch']))}{mark} | " + " | ".join(f"{r['mean'][k]:.2f} ± {r['std'][k]:.2f}"
                                                                            + ("" if len(args.lr_scales) == 1 else f" (x{r['lr_scale'][k]:g})")
                                                                            for k in labels)
                         + f" | {r['vs_usual']['mean']:+.2f} ± {r['vs_usual']['std']:.2f} ({r['vs_usual']['ahead']} of {n})"
                         + f" | {r['vs_best']['mean']:+.2f} ± {r['vs_best']['std']:.2f} ({r['vs_best']['ahead']} of {n};"
                         + f" {r['strongest']}) |"
                         + "".join(f" {d['mean']:+.2f} ± {d['std']:.2f} ({d['ahead']} of {n}) |"
                                   for label in r.get("variants_vs_defaults", {})
                                   for d in (r["variants_vs_defaults"][label], r["variants_vs_best"][label])))
        lines.append("")
    if figure:
        name = figure.rsplit("/", 1)[-1]
        lines += [f"![UniLoss's lead against model size]({name})", ""]
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines))
    return report


if __name__ == "__main__":
    main()
