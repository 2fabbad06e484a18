"""The chain of a metric that ``from_metric`` must replay one configuration at a time, at every
point (``REF``) or at ``chain_segments + 1`` points, segment-averaged (this checkout).

    python benchmarks/traced_replay_points.py 0e6635b            # gradients, costs and training
    python benchmarks/traced_replay_points.py 0e6635b --quick    # a smoke run

torchmetrics' ``retrieval_average_precision``, ``retrieval_reciprocal_rank``, ``binary_logauc``
and ``binary_sensitivity_at_specificity`` compute with data-dependent shapes behind Python
branches (``if not target.sum()``, boolean indexing): neither the recorded tape nor vmap can stand
in for them, so every configuration the loss evaluates is a call of the function. With the chain
(the default interpolation) that was every one of its ``l + 1`` points, ``l`` the comparisons
(a ranking's relevant-irrelevant pairs). Two parts, each version of ``from_metric`` in this
process:

* one loss call on batches of the survey's inputs (``benchmarks/torchmetrics_survey.py``; 64
  items): the cosine between the two versions' gradients, the ratio of their norms and of their
  times (4 batches each);
* training: the metric-wins suite's ``imb-ap`` task (``make_classification``, 5% positives, 2% of
  the labels drawn at random; MLP 20-64-64-1, batch 128, SGD lr 0.1 momentum 0.9, cosine over 20
  epochs), each batch one query of ``retrieval_average_precision``, seeds 0-2; binary
  cross-entropy beside; the test AP (scikit-learn's) and the seconds a run takes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings

import torch
import torch.nn.functional as F

import uniloss
from uniloss.experiments import metric_wins as M

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torchmetrics_survey as S  # noqa: E402  (the survey's inputs)
from version_cost import load_ref  # noqa: E402  (a commit's package, imported as uniloss_ref)


def _first(f):
    """``f``'s value, the first of a ``(value, threshold)`` pair."""
    def fn(s, y):
        out = f(s, y)
        return out[0] if isinstance(out, tuple) else out

    return fn


def _functions() -> dict:
    from torchmetrics.functional import classification as C
    from torchmetrics.functional import retrieval as R

    return {"retrieval_average_precision": ("retrieval", R.retrieval_average_precision),
            "retrieval_reciprocal_rank": ("retrieval", R.retrieval_reciprocal_rank),
            "binary_logauc": ("binary", C.binary_logauc),
            "binary_sensitivity_at_specificity": (
                "binary", lambda s, y: C.binary_sensitivity_at_specificity(s, y, min_specificity=0.5))}


def gradients(packages: dict, batches: int) -> None:
    names = list(packages)
    print(f"## One loss call, {batches} batches of 64 items\n")
    print(f"| function | comparisons (last batch) | gradient cosine, this against {names[0]} | norm ratio | time ratio |")
    print("|---|---|---|---|---|")
    for name, (kind, f) in _functions().items():
        fn = _first(f)
        g = torch.Generator().manual_seed(1)
        losses = {k: pkg.UniLoss(pkg.from_metric(fn), generator=torch.Generator().manual_seed(0))
                  for k, pkg in packages.items()}
        cosines, norms, times = [], [], {k: 0.0 for k in packages}
        for _ in range(batches):
            s, y, _ = S._inputs(kind, g)
            grads = {}
            for k, loss in losses.items():
                x = s.clone().requires_grad_()
                start = time.perf_counter()
                loss(x, y).backward()
                times[k] += time.perf_counter() - start
                grads[k] = x.grad
            old, new = grads[names[0]], grads[names[1]]
            cosines.append(float(F.cosine_similarity(old, new, dim=0)))
            norms.append(float(new.norm() / old.norm()))
        bits = losses[names[1]].last.bit_count
        print(f"| `{name}` | {bits} | {min(cosines):.3f}-{max(cosines):.3f} | {min(norms):.2f}-{max(norms):.2f} | "
              f"{times[names[1]] / times[names[0]]:.2f}x |", flush=True)


def train(make, seed: int, epochs: int) -> float:
    xtr, ytr, _, _, xte, yte = M.imbalanced_binary(0)
    model = M.seeded(seed, lambda: M.mlp(xtr.shape[1], 64, 64, 1))
    gen = torch.Generator().manual_seed(seed)
    opt, loss = M.sgd(model, 0.1), make(seed)
    test = M.fit(model, opt, M.shuffled(len(ytr), 128, gen),
                 lambda m, idx: loss(m(xtr[idx]).reshape(-1), ytr[idx]), epochs,
                 lambda m: 100 * M.average_precision(m(xte).reshape(-1), yte), M.cosine(opt, epochs))
    return test[-1]


def training(packages: dict, seeds: list, epochs: int) -> None:
    from torchmetrics.functional.retrieval import retrieval_average_precision

    routes = {"binary cross-entropy": lambda seed: lambda s, y: F.binary_cross_entropy_with_logits(s, y.float())}
    for name, pkg in packages.items():
        routes[f"UniLoss, traced, {name}"] = (lambda pkg: lambda seed: pkg.UniLoss(
            pkg.from_metric(retrieval_average_precision), generator=torch.Generator().manual_seed(seed + 1000)))(pkg)
    print(f"\n## Training on `imb-ap`, each batch one query of `retrieval_average_precision`, {epochs} epochs, "
          f"seeds {seeds}: test AP x100\n")
    print("| loss | test AP | seeds | seconds a run |")
    print("|---|---|---|---|")
    for route, make in routes.items():
        values, seconds = [], []
        for seed in seeds:
            start = time.perf_counter()
            values.append(train(make, seed, epochs))
            seconds.append(time.perf_counter() - start)
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"| {route} | {statistics.mean(values):.2f} ± {std:.2f} | {' '.join(f'{v:.2f}' for v in values)} | "
              f"{statistics.mean(seconds):.0f} |", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ref", help="a commit whose from_metric to compare with")
    parser.add_argument("--quick", action="store_true", help="1 epoch, seed 0, one batch")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # the replays' warning, said once per metric
    print(f"# from_metric's replayed chains: this checkout against {args.ref}\n")
    print(f"`python benchmarks/traced_replay_points.py {args.ref}{' --quick' if args.quick else ''}`; "
          f"torch {torch.__version__}, one thread, {time.strftime('%Y-%m-%d')}.\n")
    with tempfile.TemporaryDirectory() as tmp:
        packages = {args.ref: load_ref(tmp, args.ref), "this checkout": uniloss}
        gradients(packages, 1 if args.quick else 4)
        training(packages, [0] if args.quick else [0, 1, 2], 1 if args.quick else 20)


if __name__ == "__main__":
    main()
