"""A misclassification cost matrix as the metric: Fashion-MNIST, a cost per (true, predicted) class.

    python benchmarks/cost_sensitive_probe.py --jobs 2    # writes docs/results/metric-wins/cost-sensitive.{md,json}
    python benchmarks/cost_sensitive_probe.py --quick     # a smoke run: seed 0, rate 0.1, one epoch
    python benchmarks/cost_sensitive_probe.py --jobs 2 --losses uniloss-target uniloss-target-pull0 \
        uniloss-all uniloss-all-pull0 --rates 0.003125 0.00625 0.0125 0.025 0.05 0.1 0.2 0.4 0.8 \
        --out docs/results/metric-wins/cost-sensitive-pairs  # which comparisons the argmax makes
    python benchmarks/cost_sensitive_probe.py --jobs 2 --losses ce uniloss expected-cost ce-expected-cost \
        --rates 0.0015625 0.003125 0.00625 0.0125 0.025 0.05 0.1 0.2 --versus ce:bayes \
        --out docs/results/metric-wins/cost-sensitive-expected  # the metric's expectation under the softmax
    python benchmarks/cost_sensitive_probe.py --jobs 2 --losses ce uniloss-bayes uniloss-bayes-pull0 \
        --rates 0.003125 0.00625 0.0125 0.025 0.05 0.1 --versus ce:bayes \
        --out docs/results/metric-wins/cost-sensitive-deployed  # the Bayes decision's cost as the metric
    python benchmarks/cost_sensitive_probe.py --jobs 2 --cost per-class --losses ce ce-cost-weighted uniloss \
        --rates 0.0125 0.025 0.05 0.1 0.2 --versus ce:bayes \
        --out docs/results/metric-wins/cost-sensitive-per-class  # one price per true class: no hedges
    python benchmarks/cost_sensitive_probe.py --jobs 2 --cost reject --losses ce uniloss uniloss-accuracy \
        uniloss-bayes --rates 0.0125 0.025 0.05 0.1 0.2 --versus ce:bayes \
        --out docs/results/metric-wins/cost-sensitive-reject  # a reject option: Chow's risk
    python benchmarks/cost_sensitive_probe.py --jobs 2 --losses ce uniloss-accuracy --rates 0.025 0.05 0.1 0.2 \
        --versus ce:bayes --out docs/results/metric-wins/cost-sensitive-accuracy  # decided on its softmax

The metric is the mean cost of the argmax decisions, as a user writes it in torch (lower is
better)::

    def mean_cost(scores, target):
        return cost[target, scores.argmax(1)].mean()

with ``cost[i, j]`` the price of calling an item of class ``i`` class ``j``: 0 on the diagonal,
the rest drawn uniformly from [1, 10] afresh for each seed (a task no default saw, and a cost
matrix nobody chose). The decision that minimises the expected cost is not the posterior's
argmax but ``argmin_j sum_i P(i | x) cost[i, j]``: the usual loss, cross-entropy, scored by its
argmax ignores the costs; scored by that Bayes decision on its softmax it is the plug-in rule, the
strongest simple baseline where the model estimates the posterior well. Rows: cross-entropy (its
argmax; and the same models' Bayes decisions), cross-entropy weighted per class by the row's mean
cost (a practitioner's first try; its argmax), and UniLoss at its defaults on
``from_metric(mean_cost, higher_is_better=False)`` (its argmax, the decision it trains); and, a
diagnosis added after the first grid had run, UniLoss with ``pull=0``, the interpolated cost
alone, without the pull (cross-entropy on each sample's scores, every sample alike: a traced
metric gives the pull no weights per run), and with ``pull_per="comparison"`` (the pairwise
logistic loss on each comparison of the true class's score with another's, every comparison
alike); and, added with them, the hand-written pull a cost asks for, the pairwise logistic loss on
those comparisons each weighed by the cost of its error, ``cost[y, j]`` (with two classes its
minimiser decides as the Bayes decision does). Data and recipe: the metric-wins suite's quick
Fashion-MNIST task (60,000 training and 10,000 test images, MLP 784-256-10, batch 128, SGD momentum
0.9, weight decay 1e-4, cosine over 8 epochs), each loss at its best of the rates 0.0125 to 0.8, a
factor of 2 apart (the recipe's 0.1 halved and doubled first; every row of that grid was best at
0.05, so an eighth and a quarter of it were added; the diagnoses' pairwise losses were best at 0.2,
so 0.4 and 0.8 were added), seeds 0-4 (the cost matrix, the initialisation and the batches; the
split is Fashion-MNIST's own). Scored: the test set's mean cost after the last epoch, and its
accuracy.

The rows ``--losses`` trains only when named (session 63) ask whether the comparisons the argmax
is decomposed into are what keeps UniLoss from the Bayes decision's hedges: the same metric as a
``uniloss.DecodedMetric`` on ``Argmax(pairs="target")`` (the comparisons ``from_metric``
finds: the true class against each other) and on ``Argmax(pairs="all")`` (every pair of classes,
so that which wrong class wins is a comparison the chain can turn), each at the defaults and with
``pull=0``.

The rows ``expected-cost`` and ``ce-expected-cost`` (session 64, also only when named) ask whether
a relaxation that is an expectation over decisions learns the Bayes decision's hedges: the expected
cost under the softmax, ``mean_n sum_j softmax(s_n)_j cost[y_n, j]`` (the argmax's one-hot
replaced by the softmax; over a population its minimiser decides as the Bayes decision does), alone
and added to cross-entropy, the usual way to train with it.

The rows ``uniloss-bayes`` and ``uniloss-bayes-pull0`` (session 64, also only when named) train the
decision a user deploys with a cost matrix: UniLoss on ``from_metric(bayes_cost)``, the mean cost
of the Bayes decision on the scores' softmax, ``cost[target, (softmax @ cost).argmin(1)]``, at the
defaults and with ``pull=0``, scored by that decision (and, for comparison, by the argmax).

With ``--cost per-class`` (session 64) the matrix has one price per true class, uniform in [1, 10],
whatever the wrong decision: ``cost[i, j] = w_i`` off the diagonal. Its Bayes decision is
``argmax_j w_j P(j | x)``, the posterior reweighted, which cross-entropy weighted by ``w`` is
consistent for and which never needs a hedge; it asks whether UniLoss's distance from the plug-in
rule on the first matrix is the hedges.

With ``--cost reject`` (session 65) the decisions are the ten classes and one more, no class: a
wrong class costs 1 and rejecting ``--reject-cost`` (0.2), Chow's risk of classification with a
reject option. Its Bayes decision on a softmax is Chow's rule, reject where the largest probability
is below ``1 - c``, the plug-in rule a practitioner deploys on cross-entropy's softmax. The reject is
no sample's label, a hedge in the extreme, so UniLoss on the metric as written (the argmax of one
output more) is predicted never to learn it. The rows: cross-entropy (its argmax; Chow's rule on its
softmax), UniLoss on ``from_metric(mean_cost)`` with eleven outputs (its argmax), UniLoss on
``from_metric(bayes_cost)`` (Chow's rule written into the metric, ten outputs) and, only when named,
``uniloss-accuracy``: UniLoss at its defaults on ``MulticlassAccuracy()`` (its argmax; Chow's rule on
its softmax, or with any other cost the Bayes decision on it). The table adds the share of the test
set each decision rejects.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

import uniloss
from uniloss.decoders import Argmax
from uniloss.experiments import metric_wins as mw
from uniloss.experiments.loop import predict, run_jobs
from uniloss.experiments.reproduce import command_line, machine

RATES = [0.0125, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8]
TRAINED = ["ce", "ce-cost-weighted", "uniloss", "uniloss-pull0", "uniloss-comparison", "pairwise-cost"]
DECODED = ["uniloss-target", "uniloss-target-pull0", "uniloss-all", "uniloss-all-pull0"]  # --losses names them
EXTRA = ["expected-cost", "ce-expected-cost"]  # --losses names them
DEPLOYED = ["uniloss-bayes", "uniloss-bayes-pull0"]  # --losses names them
PLAIN = ["uniloss-accuracy"]  # UniLoss on plain accuracy, decided afterwards; --losses names it
WIDE = ["uniloss", "uniloss-pull0", "uniloss-comparison", "pairwise-cost", *DECODED, *EXTRA]  # argmax over cost's columns
ROWS = [  # (row, the loss it trains, its decision)
    ("cross-entropy, argmax", "ce", "argmax"),
    ("cross-entropy, Bayes decision", "ce", "bayes"),
    ("cross-entropy weighted by each class's mean cost, argmax", "ce-cost-weighted", "argmax"),
    ("UniLoss (defaults), from_metric(mean_cost)", "uniloss", "argmax"),
    ("UniLoss, pull=0 (a diagnosis, added after the first grid ran)", "uniloss-pull0", "argmax"),
    ('UniLoss, pull_per="comparison" (the same)', "uniloss-comparison", "argmax"),
    ("pairwise logistic weighted by the cost, argmax (the same)", "pairwise-cost", "argmax"),
    ('UniLoss (defaults), DecodedMetric(Argmax(pairs="target"), cost)', "uniloss-target", "argmax"),
    ('UniLoss, DecodedMetric(Argmax(pairs="target"), cost), pull=0', "uniloss-target-pull0", "argmax"),
    ('UniLoss (defaults), DecodedMetric(Argmax(pairs="all"), cost)', "uniloss-all", "argmax"),
    ('UniLoss, DecodedMetric(Argmax(pairs="all"), cost), pull=0', "uniloss-all-pull0", "argmax"),
    ("expected cost under the softmax, argmax", "expected-cost", "argmax"),
    ("expected cost under the softmax, Bayes decision on its softmax", "expected-cost", "bayes"),
    ("cross-entropy plus the expected cost, argmax", "ce-expected-cost", "argmax"),
    ("UniLoss (defaults), from_metric(bayes_cost), argmax", "uniloss-bayes", "argmax"),
    ("UniLoss (defaults), from_metric(bayes_cost), Bayes decision (the one it trains)", "uniloss-bayes", "bayes"),
    ("UniLoss, from_metric(bayes_cost), pull=0, argmax", "uniloss-bayes-pull0", "argmax"),
    ("UniLoss, from_metric(bayes_cost), pull=0, Bayes decision (the one it trains)", "uniloss-bayes-pull0", "bayes"),
    ("UniLoss (defaults) on accuracy, argmax", "uniloss-accuracy", "argmax"),
    ("UniLoss (defaults) on accuracy, Bayes decision on its softmax", "uniloss-accuracy", "bayes"),
]


def cost_matrix(seed: int, classes: int = 10, kind: str = "pairs", reject: float = 0.2) -> Tensor:
    """``[classes, classes]``: 0 on the diagonal, drawn by ``seed``; ``kind="pairs"``: elsewhere
    uniform in [1, 10] for each pair, ``"per-class"``: one price per true class, uniform in [1, 10],
    whatever the wrong decision (whose Bayes decision, ``argmax_j w_j P(j | x)`` with ``w_j`` the
    price of class ``j``, is the posterior reweighted, never a hedge). ``kind="reject"``:
    ``[classes, classes + 1]``, 1 for a wrong class and ``reject`` for the last column, a decision
    that is no class (Chow's risk; its Bayes decision rejects where the posterior's largest
    probability is below ``1 - reject``); the same for every seed."""
    if kind == "reject":
        return torch.cat([1 - torch.eye(classes), torch.full((classes, 1), reject)], 1)
    g = torch.Generator().manual_seed(10_000 + seed)
    cost = 1 + 9 * torch.rand(classes, classes if kind == "pairs" else 1, generator=g)
    return cost * (1 - torch.eye(classes))


def mean_cost_metric(cost: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    """The metric as a user writes it: the mean of ``cost[target, argmax]``."""
    def mean_cost(scores: Tensor, target: Tensor) -> Tensor:
        return cost[target, scores.argmax(1)].mean()
    return mean_cost


def bayes_cost_metric(cost: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    """The mean cost of the decision a user deploys with a cost matrix, the Bayes decision on the
    scores' softmax, written as plain torch: ``cost[target, (softmax @ cost).argmin(1)].mean()``."""
    def bayes_cost(scores: Tensor, target: Tensor) -> Tensor:
        return cost[target, (scores.softmax(1) @ cost).argmin(1)].mean()
    return bayes_cost


def cost_weighted_pairwise(scores: Tensor, target: Tensor, cost: Tensor) -> Tensor:
    """``mean_n sum_j cost[y_n, j] log(1 + exp(s_nj - s_ny)) / w``: the pairwise logistic loss on
    each comparison of the true class's score with another's, weighed by the cost of that error
    (with two classes its minimiser decides as the Bayes decision does), ``w`` the mean of the cost
    matrix's row sums (a constant: a sample's weights sum to 1 on average, as in cross-entropy)."""
    margins = scores - scores.gather(1, target[:, None])
    return (cost[target] * F.softplus(margins)).sum(1).mean() / cost.sum(1).mean()


def expected_cost(scores: Tensor, target: Tensor, cost: Tensor) -> Tensor:
    """``mean_n sum_j softmax(s_n)_j cost[y_n, j]``: the metric with the argmax's one-hot replaced by
    the softmax, the cost a sample would pay deciding at random by its softmax. Over a population
    its minimiser puts each input's softmax on the decision of least expected cost, so its argmax
    is the Bayes decision, hedges included (in principle: the loss is not convex)."""
    return (scores.softmax(1) * cost[target]).sum(1).mean()


def decoded_cost(cost: Tensor, pairs: str) -> uniloss.DecodedMetric:
    """The mean cost as a :class:`uniloss.DecodedMetric` on ``Argmax(pairs)``: ``"target"`` compares
    each sample's true class with the others (the comparisons ``from_metric`` finds), ``"all"``
    every pair of classes, so that which wrong class wins is a comparison too."""
    def evaluate(pred: Tensor, target: Tensor) -> Tensor:  # pred [t, n] labels, target [n]
        return cost[target.expand_as(pred), pred].mean(-1)
    return uniloss.DecodedMetric(Argmax(pairs=pairs, num_classes=cost.shape[1]), evaluate, higher_is_better=False)


def bayes_decision(logits: Tensor, cost: Tensor) -> Tensor:
    """``argmin_j sum_i softmax(logits)_i cost[i, j]``, ``[n]``: the decision of least expected cost."""
    return (logits.double().softmax(1) @ cost.double()).argmin(1)


def bayes_moves(logits: Tensor, cost: Tensor, target: Tensor) -> dict[str, float]:
    """Where the Bayes decision leaves the argmax: the share of samples it moves to the posterior's
    second class and to a class outside its top two, the mean cost each kind of move saves (over all
    samples: the two add up to the argmax's mean cost minus the Bayes decision's), and the median
    posterior probability of the class chosen outside the top two (NaN where none is)."""
    bayes, top2 = bayes_decision(logits, cost), logits.topk(2, 1).indices
    moved = bayes != top2[:, 0]
    second, outside = moved & (bayes == top2[:, 1]), moved & (bayes != top2[:, 1])
    saved = (cost[target, top2[:, 0]] - cost[target, bayes]).double()
    chosen = logits.double().softmax(1).gather(1, bayes[:, None]).squeeze(1)
    return {"to_second": float(second.double().mean()), "outside_top2": float(outside.double().mean()),
            "saved_second": float(saved[second].sum() / len(target)),
            "saved_outside": float(saved[outside].sum() / len(target)),
            "p_outside": float(chosen[outside].median()) if bool(outside.any()) else float("nan")}


def _data() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from uniloss.experiments.data import load_fashion_mnist

    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    xtr, xte = train.images.float().flatten(1) / 255.0, test.images.float().flatten(1) / 255.0
    mean, std = float(xtr.mean()), float(xtr.std())
    return (xtr - mean) / std, train.labels, (xte - mean) / std, test.labels


def train_mlp(fn: Callable[..., Tensor], xtr: Tensor, ytr: Tensor, outputs: int, lr: float, seed: int,
              epochs: int) -> torch.nn.Module | None:
    """The suite's quick Fashion-MNIST recipe on ``(xtr, ytr)`` with loss ``fn(scores, target)``: MLP
    784-256-``outputs``, batch 128, SGD momentum 0.9, weight decay 1e-4, cosine over ``epochs``; the
    initialisation and batches by ``seed``. ``None`` where the run diverged (UniLoss refuses scores
    that are not finite)."""
    model = mw.seeded(seed, lambda: mw.mlp(784, 256, outputs))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    try:
        mw.fit(model, opt, mw.shuffled(len(ytr), 128, gen), lambda m, idx: fn(m(xtr[idx]), ytr[idx]), epochs,
               lambda m: 0.0, mw.cosine(opt, epochs))
    except ValueError as error:
        if "finite" not in str(error):
            raise
        return None
    return model


def run(job: tuple[str, float, int, int, str]) -> dict[str, dict[str, Any]]:
    """One training run, ``(loss, lr, seed, epochs, cost kind)``: the test mean cost and accuracy
    of each decision scored on it (none where the run diverged: scores not finite in training or
    on the test set), and how many classes it decides for at least 1% of the test set."""
    loss, lr, seed, epochs, kind = job
    torch.set_num_threads(1)
    xtr, ytr, xte, yte = _data()
    kind, _, reject = kind.partition(":")  # "reject:0.2"
    cost = cost_matrix(seed, kind=kind, reject=float(reject or 0.2))
    fn: Callable[..., Tensor]
    if loss == "ce":
        fn = F.cross_entropy
    elif loss == "expected-cost":
        fn = lambda s, y: expected_cost(s, y, cost)
    elif loss == "ce-expected-cost":
        fn = lambda s, y: F.cross_entropy(s, y) + expected_cost(s, y, cost)
    elif loss == "pairwise-cost":
        fn = lambda s, y: cost_weighted_pairwise(s, y, cost)
    elif loss == "ce-cost-weighted":
        weight = cost.sum(1) / (len(cost) - 1)
        fn = lambda s, y: F.cross_entropy(s, y, weight=weight / weight.mean())
    elif loss == "uniloss-accuracy":
        fn = uniloss.UniLoss(uniloss.MulticlassAccuracy(), generator=torch.Generator().manual_seed(seed + 1000))
    else:  # UniLoss: from_metric's decomposition, or a DecodedMetric on either layout (DECODED)
        decomposition = (decoded_cost(cost, loss.split("-")[1]) if loss in DECODED
                         else uniloss.from_metric((bayes_cost_metric if loss in DEPLOYED else mean_cost_metric)(cost),
                                                  higher_is_better=False))
        fn = uniloss.UniLoss(decomposition, generator=torch.Generator().manual_seed(seed + 1000),
                             pull=0.0 if loss.endswith("pull0") else 1.0,
                             pull_per="comparison" if loss == "uniloss-comparison" else "sample")
    outputs = cost.shape[1] if loss in WIDE else len(cost)  # a reject option: one output more for the argmax
    model = train_mlp(fn, xtr, ytr, outputs, lr, seed, epochs)
    if model is None:
        return {}
    logits = predict(model, xte)
    if not bool(torch.isfinite(logits).all()):
        return {}
    decisions = {"argmax": logits.argmax(1)}
    if loss in ("ce", "expected-cost", *DEPLOYED, *PLAIN) and logits.shape[1] == len(cost):
        decisions["bayes"] = bayes_decision(logits, cost)
    scores: dict[str, dict[str, Any]] = {
        name: {"cost": float(cost[yte, pred].double().mean()), "accuracy": float((pred == yte).double().mean()),
               "classes": int((pred.bincount(minlength=cost.shape[1]) >= 0.01 * len(pred)).sum()),
               "rejected": float((pred >= len(cost)).double().mean())}  # decided no class (a reject option)
        for name, pred in decisions.items()}
    if "bayes" in scores and cost.shape[0] == cost.shape[1]:
        scores["bayes"]["moves"] = bayes_moves(logits, cost, yte)
    return scores


def _stats(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a smoke run: seed 0, rate 0.1, one epoch")
    parser.add_argument("--losses", nargs="+", choices=TRAINED + DECODED + EXTRA + DEPLOYED + PLAIN, default=TRAINED,
                        help="the losses to train (default: the first page's; the other rows only when named)")
    parser.add_argument("--rates", type=float, nargs="+", default=RATES)
    parser.add_argument("--cost", choices=["pairs", "per-class", "reject"], default="pairs",
                        help="a price per (true, decided) pair (default), one per true class, or 0/1 with a "
                             "reject option (a decision that is no class) at --reject-cost")
    parser.add_argument("--reject-cost", type=float, default=0.2, help="the price of rejecting (--cost reject)")
    parser.add_argument("--versus", default="", metavar="LOSS:DECISION",
                        help='the row the last column compares with, e.g. "ce:bayes" (default: UniLoss\'s)')
    parser.add_argument("--out", default="docs/results/metric-wins/cost-sensitive")
    args = parser.parse_args(argv)
    trained = {(loss, decision) for _, loss, decision in ROWS if loss in args.losses}
    if args.versus and tuple(args.versus.split(":")) not in trained:
        parser.error(f"--versus {args.versus}: no row of the losses trained; one of "
                     + ", ".join(sorted(":".join(pair) for pair in trained)))
    seeds, rates, epochs = ([0], [0.1], 1) if args.quick else (args.seeds, args.rates, 8)
    start = time.time()
    kind = f"reject:{args.reject_cost}" if args.cost == "reject" else args.cost
    jobs = [(loss, lr, s, epochs, kind) for loss in args.losses for lr in rates for s in seeds]
    results = run_jobs(run, jobs, args.jobs)
    minutes = (time.time() - start) / 60
    rows: list[dict[str, Any]] = []
    best: dict[str, list[float]] = {}
    for label, loss, decision in (row for row in ROWS if row[1] in args.losses):
        per_rate = {}
        for lr in rates:
            runs = [results[(loss, lr, s, epochs, kind)] for s in seeds]
            if all(decision in r for r in runs):
                per_rate[lr] = [r[decision] for r in runs]
        if not per_rate:  # diverged at every rate, or a decision this cost has not (a Bayes decision on 11 outputs)
            print(f"{label}: no rate scored it, so no row", flush=True)
            continue
        lr_best = min(per_rate, key=lambda lr: statistics.mean(r["cost"] for r in per_rate[lr]))
        best[label] = [r["cost"] for r in per_rate[lr_best]]
        rows.append(dict(loss=label, trains=loss, decision=decision, best_lr=lr_best,
                         by_rate={str(lr): _stats([r["cost"] for r in v]) for lr, v in per_rate.items()},
                         seeds=best[label], accuracy=[r["accuracy"] for r in per_rate[lr_best]],
                         classes=[r["classes"] for r in per_rate[lr_best]],
                         rejected=[r["rejected"] for r in per_rate[lr_best]],
                         diverged={str(lr): len(seeds) - len(per_rate.get(lr, [])) for lr in rates}))
    # "UniLoss minus it": the defaults' row, or the first UniLoss row trained; or the row --versus names
    reference = next(row["loss"] for row in sorted(rows, key=lambda row: row["trains"] != "uniloss")
                     if (row["trains"], row["decision"]) == tuple(args.versus.split(":"))
                     or (args.versus == "" and row["trains"].startswith("uniloss")))
    name = "UniLoss" if args.versus == "" else reference[0].upper() + reference[1:]
    ref = best[reference]
    rejecting = args.cost == "reject"
    lines = ["| loss, decision | " + " | ".join(f"lr {lr}" for lr in rates) +
             " | best rate | mean cost at it, seeds | accuracy x100 at it | "
             + ("rejected % at it | " if rejecting else "") + f"{name} minus it, seed by seed |",
             "|---|" + "---|" * len(rates) + "---|---|---|" + ("---|" if rejecting else "") + "---|"]
    for row in rows:
        cells = " | ".join("{:.4f} ± {:.4f}".format(*row["by_rate"][str(lr)]) if str(lr) in row["by_rate"]
                           else "diverged" for lr in rates)
        gap = [u - o for u, o in zip(ref, row["seeds"])]
        versus = "" if row["loss"] == reference else "{:+.4f} ± {:.4f}, lower on {} of {}".format(
            *_stats(gap), sum(d < 0 for d in gap), len(gap))
        lines.append(f"| {row['loss']} | {cells} | {row['best_lr']} | "
                     f"{' '.join(f'{v:.4f}' for v in row['seeds'])} | "
                     "{:.2f} ± {:.2f} | ".format(*_stats([100 * a for a in row["accuracy"]]))
                     + ("{:.2f} ± {:.2f} | ".format(*_stats([100 * r for r in row["rejected"]])) if rejecting else "")
                     + f"{versus} |")
    bayes_row = next((row for row in rows if row["decision"] == "bayes" and not rejecting), None)
    if bayes_row is not None:
        trains, lr_bayes = bayes_row["trains"], bayes_row["best_lr"]
        moves = [results[(trains, lr_bayes, s, epochs, kind)]["bayes"]["moves"] for s in seeds]
        lines += ["", f"Where the Bayes decision leaves {bayes_row['loss'].split(',')[0]}'s argmax "
                  f"(rate {lr_bayes}), seed by seed:",
                  "", "| seed | moved to the second class | cost it saves | moved outside the top two | cost it saves | "
                  "median probability of the class chosen there |", "|---|---|---|---|---|---|"]
        for s, m in zip(seeds, moves):
            lines.append(f"| {s} | {100 * m['to_second']:.2f}% | {m['saved_second']:.4f} | "
                         f"{100 * m['outside_top2']:.2f}% | {m['saved_outside']:.4f} | {m['p_outside']:.1e} |")
    print("\n".join(lines) + f"\n\n{minutes:.1f} minutes", flush=True)
    if args.quick:
        return
    command = command_line("benchmarks/cost_sensitive_probe.py", argv)
    text = (__doc__ or "")[(__doc__ or "").index("The metric is"):].replace("``", "`").replace("::", ":").strip()
    with open(args.out + ".md", "w") as f:
        title = f"Classification with a reject option at cost {args.reject_cost} (Chow's risk) as the metric" if rejecting \
            else "A misclassification cost matrix as the metric" + (
            ": which comparisons the argmax makes" if set(args.losses) & set(DECODED) else
            ": the expected cost under the softmax" if set(args.losses) & set(EXTRA) else
            ": the Bayes decision's cost as the metric" if set(args.losses) & set(DEPLOYED) else
            ": decided on UniLoss-on-accuracy's softmax" if set(args.losses) & set(PLAIN) else "") + (
            ", one price per true class" if args.cost == "per-class" else "")
        f.write(f"# {title}\n\n{text}\n\nTest mean cost (lower is better), "
                f"mean ± std over seeds {seeds}; {machine()}, one thread a run, {args.jobs} at a time, "
                f"{time.strftime('%Y-%m-%d')}, {minutes:.1f} minutes. Command: `{command}`.\n\n" + "\n".join(lines) + "\n")
    with open(args.out + ".json", "w") as f:
        json.dump(dict(command=command, machine=machine(), date=time.strftime("%Y-%m-%d"), seeds=seeds, rates=rates,
                       epochs=epochs, minutes=minutes, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
