"""torchmetrics' one-vs-rest curves of several classes through ``from_metric``: the best
configuration the trace infers, the cost of a loss call and what training on them gives.

    python benchmarks/traced_class_curves.py c95936b            # against a commit's from_metric
    python benchmarks/traced_class_curves.py c95936b --quick    # a smoke run (2 epochs, 1 seed)
    python benchmarks/traced_class_curves.py c95936b --costs-only   # the best configurations and costs
    python benchmarks/traced_class_curves.py c95936b --pull-probe   # the per-class AP, the pull varied
    python benchmarks/traced_class_curves.py 8b3393e --multilabel   # torchmetrics' per-label AP, trained

``multiclass_auroc`` and ``multiclass_average_precision`` rank each class's column of the scores
with its own ``argsort`` and read ``target[order] == c``: the relevance of class ``c``'s ranking
is the label vector with one grade, ``c``, on top and the others alike. From the label vector
alone a trace inferred its grades in order (label ``C - 1`` above ``C - 2`` ...), or reversed,
whose best ranking is the best of class ``c``'s only for the first and the last class. Three
parts, each against ``REF``'s ``from_metric`` in the same process:

* the metric at each trace's best configuration (1 where it is the best ranking of every class),
  on a batch of 128 digits with random scores;
* the cost of one loss call (forward and backward, library defaults, one thread), interleaved
  call by call, medians; also this checkout's with its chain through the rankings' swaps turned
  off (the tape at 257 points or fewer, segment-averaged, as before that chain took these);
  also ``multilabel_auroc`` and ``multilabel_average_precision`` (a ranking per label's column,
  20% of the labels relevant), whose relevance was right before;
* training: scikit-learn's digits (10 classes, 1,257 train, 540 test images), MLP 64-128-10,
  batch 128, SGD lr 0.1 momentum 0.9, the rate on a cosine to 0 over 20 epochs, seeds 0-2 (the
  model's initialisation and the batches), cross-entropy, UniLoss at its defaults on the zoo's
  form of the metric (``zoo.auroc()``, ``zoo.average_precision()``, each class a query) and on
  the traced metric of each version; the test metric of the metric trained after the last epoch.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

import uniloss
from uniloss.experiments import metric_wins as M

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from version_cost import alternate, load_ref  # noqa: E402  (a commit's package; calls in turn, medians)

C = 10


def _metrics():
    from torchmetrics.functional.classification import multiclass_auroc, multiclass_average_precision

    return {"multiclass_auroc": functools.partial(multiclass_auroc, num_classes=C),
            "multiclass_average_precision": functools.partial(multiclass_average_precision, num_classes=C)}


def _multilabel_metrics():
    """The same curves of a multi-label target, a ranking per label's column (its relevance that
    column: binary already), timed only."""
    from torchmetrics.functional.classification import multilabel_auroc, multilabel_average_precision

    return {"multilabel_auroc": functools.partial(multilabel_auroc, num_labels=C),
            "multilabel_average_precision": functools.partial(multilabel_average_precision, num_labels=C)}


def pull_probe(epochs: int, seeds: list) -> None:
    """``--pull-probe``: the traced route's gap to the zoo's form on the per-class AP, with the
    pull's options that differ between them varied on both (the zoo's structure gives the pull
    each item's margin and the metric's weights; a traced metric's gives neither)."""
    name = "multiclass_average_precision"
    fn = _metrics()[name]
    variants = [("the zoo's form", {}), ("the zoo's form", {"pull_per": "run"}),
                ("the zoo's form", {"pull_per": "comparison"}), ("the zoo's form", {"pull_weights": "equal"}),
                ("traced", {}), ("traced", {"pull_per": "run"}), ("traced", {"pull_per": "comparison"}),
                ("traced", {"pull_weights": "equal"}), ("traced, float64 scores", {})]
    print(f"\n## The pull's options on `{name}`, {epochs} epochs, seeds {seeds}: test AP x100\n")
    print("| route | options | test AP | seeds |")
    print("|---|---|---|---|")
    for route, options in variants:
        results = []
        for seed in seeds:
            if route.startswith("traced"):
                traced = uniloss.UniLoss(uniloss.from_metric(fn), generator=torch.Generator().manual_seed(seed + 1000),
                                         **options)
                wide = route.endswith("float64 scores")  # torchmetrics' curve then computed in float64
                loss = (lambda x, y, f=traced: f(x.double(), y)) if wide else traced
            else:
                loss = _zoo_route(name, seed, **options)
            results.append(train(loss, seed, epochs, fn))
        mean, std = statistics.mean(results), statistics.pstdev(results)
        seeds_text = " ".join(f"{r:.2f}" for r in results)
        print(f"| {route} | {options or 'defaults'} | {mean:.2f} ± {std:.2f} | {seeds_text} |", flush=True)


def multilabel(packages: dict, draws: list, epochs: int) -> None:
    """``--multilabel``: torchmetrics' ``multilabel_average_precision`` (each label's column of
    ``sigmoid(preds)`` ranked) trained through each version's ``from_metric`` on the multi-label
    MNIST mosaics of ``benchmarks/capacity_probe.py``'s ``mlabel-map`` (MLP 784-128-10, batch 128,
    SGD lr 0.1 momentum 0.9, cosine over the epochs; ``draw`` the data's draw and the seed),
    beside binary cross-entropy and the zoo's form (``zoo.average_precision()``, each label a
    query); the test split's mean AP over the labels."""
    from torchmetrics.functional.classification import multilabel_average_precision

    from uniloss import zoo
    from uniloss.decoders import RankingTarget

    fn = functools.partial(multilabel_average_precision, num_labels=C)
    routes = {"binary cross-entropy": lambda seed: lambda s, y: F.binary_cross_entropy_with_logits(s, y.float())}

    def zoo_route(seed):
        loss = uniloss.UniLoss(zoo.average_precision(), generator=torch.Generator().manual_seed(seed + 1000))

        def route(s, y):  # each label's column a query of the flattened, label-major scores
            query = torch.arange(s.shape[1]).repeat_interleave(s.shape[0])
            return loss(s.T.reshape(-1), RankingTarget(y.T.reshape(-1), query))

        return route

    routes["UniLoss, the zoo's form"] = zoo_route
    for name, pkg in packages.items():
        routes[f"UniLoss, traced, {name}"] = (lambda pkg: lambda seed: pkg.UniLoss(
            pkg.from_metric(fn), generator=torch.Generator().manual_seed(seed + 1000)))(pkg)
    print(f"\n## torchmetrics' `multilabel_average_precision` on MNIST mosaics, {epochs} epochs, draws {draws}: "
          "test mean AP x100\n")
    print("| loss | test mean AP | draws |")
    print("|---|---|---|")
    for route, make in routes.items():
        results = []
        for draw in draws:
            xtr, ytr, _, _, xte, yte = M.multilabel_mnist(draw)
            model = M.seeded(draw, lambda: M.mlp(784, 128, C))
            gen = torch.Generator().manual_seed(draw)
            opt, loss = M.sgd(model, 0.1), make(draw)
            test = M.fit(model, opt, M.shuffled(len(ytr), 128, gen), lambda m, idx: loss(m(xtr[idx]), ytr[idx]),
                         epochs, lambda m: 100 * M.multilabel_map(m(xte), yte), M.cosine(opt, epochs))
            results.append(test[-1])
        cell = f"{statistics.mean(results):.2f} ± {statistics.pstdev(results):.2f}"
        print(f"| {route} | {cell} | {' '.join(f'{r:.2f}' for r in results)} |", flush=True)


def _zoo_route(name: str, seed: int, **options):
    """The zoo's form of the same metric: each class a query of the ``[n, C]`` scores (one-vs-rest)."""
    from uniloss import zoo
    from uniloss.decoders import RankingTarget

    metric = zoo.auroc() if name == "multiclass_auroc" else zoo.average_precision()
    loss = uniloss.UniLoss(metric, generator=torch.Generator().manual_seed(seed + 1000), **options)

    def route(scores, target):
        queries = torch.arange(C).repeat(scores.shape[0])  # item (i, c) of the row-major scores: query c
        return loss(scores.reshape(-1), RankingTarget(F.one_hot(target, C).reshape(-1), queries))

    return route


def _batch(n: int, seed: int = 0):
    xtr, _, ytr, _ = M.digits_split()
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(ytr), generator=g)[:n]
    return torch.randn(n, C, generator=g), ytr[idx]


def best_values(packages: dict) -> list:
    """The metric at each version's inferred best configuration, on 128 labels."""
    scores, target = _batch(128)
    rows = []
    for name, fn in _metrics().items():
        row = [name]
        for pkg in packages.values():
            metric = pkg.from_metric(fn)
            plan = metric.prepare(scores, target)
            row.append(float(metric.evaluate(metric.best(plan)[None], plan)[0]))
            row.append(int(plan.num_bits))
        rows.append(row)
    return rows


def costs(packages: dict, calls: int) -> list:
    """Each case's medians (ms): ``REF``'s, this checkout's, and this checkout's with the chain
    through the rankings' swaps turned off (the tape at fewer points, segment-averaged)."""
    w = torch.nn.Parameter(torch.ones(1))
    rows = []
    for n in (64, 128, 512):  # at 64 the tape is exact at every point too
        scores, target = _batch(n, seed=1)
        g = torch.Generator().manual_seed(2)
        labels = (torch.rand(n, C, generator=g) < 0.2).long()  # 20% of the labels relevant
        cases = [(name, fn, scores, target) for name, fn in _metrics().items()] + \
            [(name, fn, scores, labels) for name, fn in _multilabel_metrics().items()]
        for name, fn, scores, target in cases:
            losses = {k: pkg.UniLoss(pkg.from_metric(fn)) for k, pkg in packages.items()}
            untaken = uniloss.from_metric(fn)
            untaken._chain_by_ranks = lambda plan: None  # type: ignore[method-assign]
            losses["tape"] = uniloss.UniLoss(untaken)
            med = alternate({k: (lambda f=f, x=scores, y=target: f(x * w, y).backward()) for k, f in losses.items()},
                            calls, warmup=2)
            rows.append([f"{name}, [{n}, {C}]"] + [med[k] for k in packages] + [med["tape"]])
    return rows


def train(loss_fn, seed: int, epochs: int, metric, lr: float = 0.1) -> float:
    xtr, xte, ytr, yte = M.digits_split()
    model = M.seeded(seed, lambda: M.mlp(64, 128, C))
    gen = torch.Generator().manual_seed(seed)
    opt = M.sgd(model, lr)
    test = M.fit(model, opt, M.shuffled(len(ytr), 128, gen), lambda m, idx: loss_fn(m(xtr[idx]), ytr[idx]), epochs,
                 lambda m: float(metric(m(xte), yte)), M.cosine(opt, epochs))
    return 100 * test[-1]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ref", help="a commit whose from_metric to compare with")
    parser.add_argument("--quick", action="store_true", help="2 epochs, seed 0, few timed calls")
    parser.add_argument("--calls", type=int, default=9, help="timed loss calls per case and version")
    parser.add_argument("--costs-only", action="store_true", help="the best configurations and the costs only")
    parser.add_argument("--pull-probe", action="store_true",
                        help="only the training of the per-class AP with the pull's options varied")
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.1],
                        help="the training table at each of these SGD rates (default: the recipe's 0.1)")
    parser.add_argument("--multilabel", action="store_true",
                        help="only torchmetrics' multi-label AP trained on MNIST mosaics, REF against this checkout")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    epochs, seeds = (2, [0]) if args.quick else (20, [0, 1, 2])
    calls = 3 if args.quick else args.calls
    if args.pull_probe:
        print(f"`python benchmarks/traced_class_curves.py {args.ref} --pull-probe{' --quick' if args.quick else ''}`; "
              f"torch {torch.__version__}, one thread, {time.strftime('%Y-%m-%d')}.")
        pull_probe(epochs, seeds)
        return
    with tempfile.TemporaryDirectory() as tmp:
        packages = {args.ref: load_ref(tmp, args.ref), "this checkout": uniloss}
        if args.multilabel:
            quick = " --quick" if args.quick else ""
            print(f"`python benchmarks/traced_class_curves.py {args.ref} --multilabel{quick}`; "
                  f"torch {torch.__version__}, one thread, {time.strftime('%Y-%m-%d')}.")
            multilabel(packages, [0] if args.quick else [0, 1, 2], 1 if args.quick else 5)
            return
        print(f"# torchmetrics' per-class curves through from_metric: this checkout against {args.ref}\n")
        lrs = "" if args.lrs == [0.1] else " --lrs " + " ".join(f"{lr:g}" for lr in args.lrs)
        print(f"`python benchmarks/traced_class_curves.py {args.ref}{' --quick' if args.quick else ''}{lrs}`; "
              f"torch {torch.__version__}, one thread, {time.strftime('%Y-%m-%d')}.\n")
        print("## The metric at the inferred best configuration (128 digits' labels, random scores)\n")
        print(f"| metric | {args.ref} | its comparisons | this checkout | its comparisons |")
        print("|---|---|---|---|---|")
        for row in best_values(packages):
            print(f"| `{row[0]}` | {row[1]:.4f} | {row[2]:,} | {row[3]:.4f} | {row[4]:,} |", flush=True)
        print(f"\n## A loss call (forward and backward), medians of {calls}, interleaved\n")
        print(f"| case | {args.ref} (ms) | this checkout (ms) | this / {args.ref} | this, the chain through the "
              "swaps off (ms) | this / that |")
        print("|---|---|---|---|---|---|")
        for row in costs(packages, calls):
            print(f"| {row[0]} | {row[1]:.1f} | {row[2]:.1f} | {row[2] / row[1]:.2f}x | {row[3]:.1f} | "
                  f"{row[2] / row[3]:.2f}x |", flush=True)
        if args.costs_only:
            return
        print(f"\n## Training on digits, {epochs} epochs, seeds {seeds}: test metric x100\n")
        print(f"| metric trained and tested | SGD rate | cross-entropy | UniLoss, the zoo's form | "
              f"UniLoss, {args.ref} | UniLoss, this checkout | this - {args.ref}, seed by seed |")
        print("|---|---|---|---|---|---|---|")
        for (name, fn), lr in itertools.product(_metrics().items(), args.lrs):
            results = {"ce": [], "zoo": [], "ref": [], "this": []}
            for seed in seeds:
                gen = lambda: torch.Generator().manual_seed(seed + 1000)  # noqa: E731
                results["ce"].append(train(F.cross_entropy, seed, epochs, fn, lr))
                results["zoo"].append(train(_zoo_route(name, seed), seed, epochs, fn, lr))
                results["ref"].append(train(packages[args.ref].UniLoss(packages[args.ref].from_metric(fn),
                                                                       generator=gen()), seed, epochs, fn, lr))
                results["this"].append(train(uniloss.UniLoss(uniloss.from_metric(fn), generator=gen()), seed,
                                             epochs, fn, lr))
            diff = [a - b for a, b in zip(results["this"], results["ref"])]
            cell = lambda v: f"{statistics.mean(v):.2f} ± {statistics.pstdev(v):.2f}"  # noqa: E731
            ahead = sum(d > 0 for d in diff)
            print(f"| `{name}` | {lr:g} | {cell(results['ce'])} | {cell(results['zoo'])} | {cell(results['ref'])} | "
                  f"{cell(results['this'])} | "
                  f"{statistics.mean(diff):+.2f} ± {statistics.pstdev(diff):.2f} (ahead on {ahead} of {len(diff)}) |",
                  flush=True)


if __name__ == "__main__":
    main()
