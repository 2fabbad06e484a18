"""A concordance index written on all pairs of scores, trained through ``from_metric``.

    python benchmarks/traced_concordance.py --out docs/results/from-metric/concordance.md
    python benchmarks/traced_concordance.py --quick          # a smoke run

The metric is the share of the pairs the target orders (``y_i > y_j``) that the scores order
alike, Harrell's C without censoring, as a user writes it in torch::

    def concordance(s, y):
        ordered = (y[:, None] > y[None, :]).float()
        return ((s[:, None] > s[None, :]).float() * ordered).sum() / ordered.sum()

No target holds its best output (an ``[n, n]`` tensor of pairs), so ``from_metric`` probes it on
every call, through the metric's sums. Two tasks of scikit-learn's, offline: ``diabetes`` (442
patients, a disease-progression score; 70/30 split by seed) and ``digits`` as grades (each 8 x 8
image scored by its digit's value, 0-9: an ordinal target of ten grades; 1,257 training, 540
test images by seed). Model: MLP ``d``-64-1, batch 64, SGD momentum 0.9, 60 epochs (diabetes)
or 20 (digits). Rows: mean squared error on the standardised target (the usual regression loss),
the pairwise logistic loss on the batch's ordered pairs (RankNet's, the usual ranking loss for
a concordance), and UniLoss at its defaults on ``from_metric(concordance)``. Each at rates 0.001
to 3 (eight, a factor of about 3 apart), seeds 0-4 (the split, the initialisation and the batches); the test set's
concordance after the last epoch (a tie in the scores counts half; a run whose scores are not
finite diverged).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F
from sklearn.datasets import load_diabetes, load_digits
from sklearn.model_selection import train_test_split

import uniloss


def concordance(s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Of the pairs ``y`` orders, the share ``s`` orders alike: the metric as a user writes it."""
    ordered = (y[:, None] > y[None, :]).float()
    return ((s[:, None] > s[None, :]).float() * ordered).sum() / ordered.sum()


def harrell_c(s: torch.Tensor, y: torch.Tensor) -> float:
    """The test metric: ``concordance`` with a tie in the scores counted half."""
    ordered = y[:, None] > y[None, :]
    won = ((s[:, None] > s[None, :]) & ordered).sum() + 0.5 * ((s[:, None] == s[None, :]) & ordered).sum()
    return float(won / ordered.sum())


def pairwise_logistic(s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """RankNet's loss, ``log(1 + exp(s_j - s_i))`` over the batch's pairs with ``y_i > y_j``."""
    ordered = (y[:, None] > y[None, :]).float()
    return (F.softplus(s[None, :] - s[:, None]) * ordered).sum() / ordered.sum().clamp_min(1)


def standardised_split(name: str, seed: int):
    """``diabetes`` or ``digits`` split 70/30 by ``seed``: features and target standardised on the
    training split, ``(x_train, y_train, x_test, y_test)``."""
    x, y = load_diabetes(return_X_y=True) if name == "diabetes" else load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.3, random_state=seed)
    mean, std = xtr.mean(0), xtr.std(0) + 1e-8
    tensor = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    centre, scale = ytr.mean(), ytr.std()
    return (tensor((xtr - mean) / std), tensor((ytr - centre) / scale), tensor((xte - mean) / std),
            tensor((yte - centre) / scale))


def fit(x: torch.Tensor, y: torch.Tensor, outputs: int, loss_fn, lr: float, seed: int, epochs: int) -> torch.nn.Module:
    """An MLP ``d``-64-``outputs`` trained on ``(x, y)`` by ``loss_fn(scores, y)`` (scores squeezed to
    ``[n]`` for one output), batch 64, SGD momentum 0.9; the initialisation and batches by ``seed``."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 64), torch.nn.ReLU(), torch.nn.Linear(64, outputs))
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            batch = order[i:i + 64]
            if len(batch) < 8:  # a last batch of a few samples
                continue
            scores = net(x[batch])
            loss = loss_fn(scores.squeeze(1) if outputs == 1 else scores, y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net


def held_out(task: str, loss_fn, lr: float, seed: int, epochs: int, metric) -> float:
    """``metric(scores, y)`` on ``task``'s test split (:func:`standardised_split` by ``seed``) of the
    MLP :func:`fit` by ``loss_fn``; NaN where the run diverged (scores not finite on the test set, or
    in training, which UniLoss refuses with a ``ValueError``)."""
    xtr, ytr, xte, yte = standardised_split(task, seed)
    try:
        net = fit(xtr, ytr, 1, loss_fn, lr, seed, epochs)
    except ValueError as error:
        if "finite" not in str(error):
            raise
        return float("nan")
    with torch.no_grad():
        scores = net(xte).squeeze(1)
    return float(metric(scores, yte)) if bool(torch.isfinite(scores).all()) else float("nan")


def seeded(metric, seed: int, **options) -> uniloss.UniLoss:
    """``UniLoss(from_metric(metric), **options)`` with its anchors' generator seeded by ``seed``."""
    return uniloss.UniLoss(uniloss.from_metric(metric), generator=torch.Generator().manual_seed(seed), **options)


def run(task: str, loss_name: str, lr: float, seed: int, epochs: int) -> float:
    loss_fn = seeded(concordance, seed) if loss_name == "uniloss" else \
        {"mse": F.mse_loss, "pairwise": pairwise_logistic}[loss_name]
    return held_out(task, loss_fn, lr, seed, epochs, harrell_c)


ROWS = [("mse", "mean squared error"), ("pairwise", "pairwise logistic (RankNet)"),
        ("uniloss", "UniLoss, from_metric(concordance)")]


def rate_grid(tasks: dict, rows: list, run, lrs: list, seeds: list, quick: bool) -> tuple:
    """Each of ``rows`` (``(key, label)``, the UniLoss row keyed ``"uniloss"``, variants of it keyed
    ``"uniloss-..."``) on each of ``tasks``
    (name -> epochs) at each rate of ``lrs`` and seed of ``seeds``, ``run(task, key, lr, seed, epochs)``
    giving the test metric (NaN: diverged): the markdown table's lines and, per task, UniLoss (and
    each variant) against the stronger of the other rows at each one's best rate, seed by seed."""
    lines = ["| task | loss | " + " | ".join(f"lr {lr}" for lr in lrs) + " | best rate | seeds at the best rate |",
             "|---|---|" + "---|" * len(lrs) + "---|---|"]
    verdicts = []
    for task, epochs in tasks.items():
        at_best = {}
        for key, label in rows:
            scores = {lr: [100 * run(task, key, lr, seed, 2 if quick else epochs) for seed in seeds] for lr in lrs}
            diverged = {lr: sum(x != x for x in v) for lr, v in scores.items()}
            mean = {lr: statistics.mean(v) if not diverged[lr] else math.nan for lr, v in scores.items()}
            std = {lr: statistics.stdev(v) if len(v) > 1 and not diverged[lr] else 0.0 for lr, v in scores.items()}
            best = max(lrs, key=lambda lr: mean[lr] if mean[lr] == mean[lr] else -1e9)
            cells = " | ".join(f"{mean[lr]:.2f} ± {std[lr]:.2f}" if mean[lr] == mean[lr] else
                               f"diverged ({diverged[lr]} of {len(seeds)})" for lr in lrs)
            lines.append(f"| {task} | {label} | {cells} | {best} | {' '.join(f'{v:.2f}' for v in scores[best])} |")
            print(lines[-1], flush=True)
            at_best[key] = scores[best]
        other = max((k for k, _ in rows if not k.startswith("uniloss")), key=lambda k: statistics.mean(at_best[k]))
        for key in (k for k, _ in rows if k.startswith("uniloss")):  # the defaults' row, then any variant's
            gap = [u - o for u, o in zip(at_best[key], at_best[other])]
            spread = statistics.stdev(gap) if len(gap) > 1 else 0.0
            name = "UniLoss" if key == "uniloss" else dict(rows)[key]
            verdicts.append(f"- **{task}**, each loss at its best rate: {name} minus the stronger other row "
                            f"({dict(rows)[other]}) {statistics.mean(gap):+.2f} ± {spread:.2f} seed by seed, ahead "
                            f"on {sum(d > 0 for d in gap)} of {len(gap)} seeds.")
    return lines, verdicts


def write_results(out: str, title: str, doc: str, start_at: str, unit: str, seeds: list, minutes: float,
                  command: str, lines: list, verdicts: list) -> None:
    """The results page: ``title``, ``doc`` from ``start_at`` on, the machine and date, the table and the verdicts."""
    text = doc[doc.index(start_at):].replace("``", "`").replace("::", ":").strip()
    with open(out, "w") as f:
        f.write(f"# {title}\n\n{text}\n\n{unit}, mean ± std over seeds {seeds}; AMD EPYC 2-core, torch "
                f"{torch.__version__}, one thread, {time.strftime('%Y-%m-%d')}, {minutes:.1f} minutes. Command: "
                f"`{command}`.\n\n" + "\n".join(lines) + "\n\n" + "\n".join(verdicts) + "\n")


def grid_main(doc: str, rows: list, run, lrs: list, title: str, start_at: str, unit: str, command: str) -> None:
    """The command line of a grid benchmark (``--out``, ``--quick``): :func:`rate_grid` on diabetes
    (60 epochs) and digits (20) at ``lrs`` and seeds 0-4, its page by :func:`write_results`."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--out", help="write the markdown table there as well")
    parser.add_argument("--quick", action="store_true", help="a smoke run: one seed, one rate, 2 epochs")
    args = parser.parse_args()
    quick, out = args.quick, args.out
    torch.set_num_threads(1)
    lrs, seeds = ([0.03], [0]) if quick else (lrs, [0, 1, 2, 3, 4])
    start = time.time()
    lines, verdicts = rate_grid({"diabetes": 60, "digits": 20}, rows, run, lrs, seeds, quick)
    minutes = (time.time() - start) / 60
    print("\n".join(verdicts) + f"\n\n{minutes:.1f} minutes")
    if out:
        write_results(out, title, doc, start_at, unit, seeds, minutes, command, lines, verdicts)


def main() -> None:
    grid_main(__doc__, ROWS, run, [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0],
              "A concordance index trained through `from_metric`", "The metric is", "Test concordance x100",
              "python benchmarks/traced_concordance.py --out docs/results/from-metric/concordance.md")


if __name__ == "__main__":
    main()
