"""What the zoo's closed-form chains save (0.12.1, 0.12.2), measured in one run.

    python benchmarks/zoo_chain_cost.py            # a table on stdout (about a minute)
    python benchmarks/zoo_chain_cost.py 200 recall_at_precision precision_at_recall   # those cases only

``zoo.auroc`` and ``zoo.average_precision`` take their chain's gains in closed form
(:attr:`uniloss.Structure.chain_gains`) and ``zoo.pck`` takes ``uniloss.PCK``'s structure on its
region; before 0.12.1 the engine evaluated their chain by decoding ``[points, l]`` configurations
(257 points above 256 comparisons). ``zoo.top_k_accuracy`` gives its chain in closed form
(:attr:`uniloss.Structure.chain`, a row turning at its ``C - k``-th comparison to come right) and
its metric of the runs' counts since 0.12.2, and ``precision_at_k``, ``recall_at_k``, ``mrr`` and
``ndcg_at_k`` of 0/1 relevance their chain's gains (a comparison that comes right lowers one
relevant item's rank by one); ``recall_at_precision`` and ``precision_at_recall`` (0.14.0)
their chain's gains too (a running maximum per query of the cuts each step makes). This times one
loss call (forward and backward, library defaults, on a model's output ``x * w``, one thread) of
each both ways in one process,
interleaved call by call with the usual loss: as they are, and with the decoded metric's own
evaluation (``gains=None``; for PCK :class:`uniloss.DecodedMetric`'s ``structure`` and
``evaluate``), which is the chain before 0.12.1. (Above 256 comparisons that chain averaged its
gains over 256 segments, so for AP and PCK it was also another loss; ``tests/test_zoo.py`` holds
the closed forms to the chain evaluated at every point.)
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as nnf

import uniloss
from uniloss import zoo
from uniloss.decoders import RankingTarget

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from speed import pck_inputs  # noqa: E402  (the PCK cases of benchmarks/speed.py)
from version_cost import alternate  # noqa: E402  (calls in turn, the first rotating)


_MAKE = {"pck": lambda: zoo.pck(0.5), "top_k_accuracy": lambda: zoo.top_k_accuracy(5),
         "precision_at_k": lambda: zoo.precision_at_k(5), "recall_at_k": lambda: zoo.recall_at_k(5),
         "ndcg_at_k": lambda: zoo.ndcg_at_k(5)}
_MAKE.update({"recall_at_precision": lambda: zoo.recall_at_precision(0.8),
              "precision_at_recall": lambda: zoo.precision_at_recall(0.5)})
_GAINS = ("auroc", "average_precision", "recall_at_precision", "precision_at_recall")  # evaluated where `gains` is None


def _make(name: str):
    return _MAKE[name]() if name in _MAKE else getattr(zoo, name)()


def _evaluated(name: str):
    """``zoo.<name>`` with the chain the engine evaluates by decoding (before the closed form)."""
    metric = _make(name)
    if name in _GAINS:
        metric.gains = None
        return metric
    metric.structure = lambda target, m=metric: uniloss.DecodedMetric.structure(m, target)  # type: ignore[method-assign]
    if name == "pck":
        metric.evaluate = lambda bits, target, m=metric: uniloss.DecodedMetric.evaluate(m, bits, target)  # type: ignore[method-assign]
    return metric


def main(calls: int = 200, only: tuple = ()) -> None:
    """``only``: the cases of these metrics alone (all where empty)."""
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, generator=g)
    y = (torch.rand(128, generator=g) < 0.1).long()
    y[0] = 1
    heat, keypoints, _ = pck_inputs(8, 4, 16, "cpu")
    logits, labels = torch.randn(128, 100, generator=g), torch.randint(0, 100, (128,), generator=g)
    w = torch.nn.Parameter(torch.ones(1))
    cases = [
        ("zoo.auroc(), binary 128, 10% positive", "auroc", x, y, lambda s, t: nnf.binary_cross_entropy_with_logits(s, t.float()), calls),
        ("zoo.average_precision(), binary 128, 10% positive", "average_precision", x, y,
         lambda s, t: nnf.binary_cross_entropy_with_logits(s, t.float()), calls),
        ("zoo.pck(0.5), heatmaps 8 x 4 x 16 x 16", "pck", heat, keypoints, lambda s, t: (s ** 2).mean(), max(calls // 20, 5)),
        ("zoo.top_k_accuracy(5), 128 x 100", "top_k_accuracy", logits, labels, nnf.cross_entropy, max(calls // 4, 5)),
    ]
    items = torch.randn(256, generator=g)
    relevant = RankingTarget((torch.randint(0, 4, (256,), generator=g) == 3).long(), torch.arange(256) // 32)
    bce = lambda s, t: nnf.binary_cross_entropy_with_logits(s, t.relevance.float())  # noqa: E731
    for name in ("precision_at_k", "recall_at_k", "mrr", "ndcg_at_k"):
        label = f"zoo.{name}({'' if name == 'mrr' else '5'}), 8 queries x 32 (0/1)"
        cases.append((label, name, items, relevant, bce, max(calls // 4, 5)))
    wide = torch.randn(512, generator=g)
    rare = (torch.rand(512, generator=g) < 0.05).long()
    rare[0] = 1
    for name, level in (("recall_at_precision", "0.8"), ("precision_at_recall", "0.5")):
        for size, scores, target in ((128, x, y), (512, wide, rare)):
            share = "10%" if size == 128 else "5%"
            cases.append((f"zoo.{name}({level}), binary {size}, {share} positive", name, scores, target,
                          lambda s, t: nnf.binary_cross_entropy_with_logits(s, t.float()), max(calls // 4, 5)))
    if only:
        cases = [case for case in cases if case[1] in only]
    print("| case | closed form (ms) | evaluated chain (ms) | usual loss (ms) | closed / evaluated "
          "| closed / usual |")
    print("|---|---|---|---|---|---|")
    for label, name, scores, target, usual, n in cases:
        now = uniloss.UniLoss(_make(name))
        before = uniloss.UniLoss(_evaluated(name))
        runs = {k: (lambda f=f: f(scores * w, target).backward()) for k, f in
                {"now": now, "before": before, "usual": usual}.items()}
        med = alternate(runs, n, warmup=2)
        print(f"| {label} | {med['now']:.2f} | {med['before']:.2f} | {med['usual']:.3f} | "
              f"{med['now'] / med['before']:.2f}x | {med['now'] / med['usual']:.1f}x |", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200, tuple(sys.argv[2:]))
