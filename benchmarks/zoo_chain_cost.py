"""What the zoo's closed-form chains save (0.12.1), measured in one run.

    python benchmarks/zoo_chain_cost.py            # a table on stdout (about a minute)

``zoo.auroc`` and ``zoo.average_precision`` take their chain's gains in closed form
(:attr:`uniloss.Structure.chain_gains`) and ``zoo.pck`` takes ``uniloss.PCK``'s structure on its
region; before 0.12.1 the engine evaluated their chain by decoding ``[points, l]`` configurations
(257 points above 256 comparisons). This times one loss call (forward and backward, library
defaults, on a model's output ``x * w``, one thread) of each both ways in one process,
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from speed import pck_inputs  # noqa: E402  (the PCK cases of benchmarks/speed.py)
from version_cost import alternate  # noqa: E402  (calls in turn, the first rotating)


def _evaluated(name: str):
    """``zoo.<name>`` with the chain the engine evaluates by decoding (0.12.0's)."""
    metric = getattr(zoo, name)(0.5) if name == "pck" else getattr(zoo, name)()
    if name == "pck":
        metric.structure = lambda target, m=metric: uniloss.DecodedMetric.structure(m, target)  # type: ignore[method-assign]
        metric.evaluate = lambda bits, target, m=metric: uniloss.DecodedMetric.evaluate(m, bits, target)  # type: ignore[method-assign]
    else:
        metric.gains = None
    return metric


def main(calls: int = 200) -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, generator=g)
    y = (torch.rand(128, generator=g) < 0.1).long()
    y[0] = 1
    heat, keypoints, _ = pck_inputs(8, 4, 16, "cpu")
    w = torch.nn.Parameter(torch.ones(1))
    cases = [
        ("zoo.auroc(), binary 128, 10% positive", "auroc", x, y, lambda s, t: nnf.binary_cross_entropy_with_logits(s, t.float()), calls),
        ("zoo.average_precision(), binary 128, 10% positive", "average_precision", x, y,
         lambda s, t: nnf.binary_cross_entropy_with_logits(s, t.float()), calls),
        ("zoo.pck(0.5), heatmaps 8 x 4 x 16 x 16", "pck", heat, keypoints, lambda s, t: (s ** 2).mean(), max(calls // 20, 5)),
    ]
    print("| case | 0.12.1: closed form (ms) | 0.12.0: evaluated chain (ms) | usual loss (ms) | 0.12.1 / 0.12.0 "
          "| 0.12.1 / usual |")
    print("|---|---|---|---|---|---|")
    for label, name, scores, target, usual, n in cases:
        now = uniloss.UniLoss(zoo.pck(0.5) if name == "pck" else getattr(zoo, name)())
        before = uniloss.UniLoss(_evaluated(name))
        runs = {k: (lambda f=f: f(scores * w, target).backward()) for k, f in
                {"now": now, "before": before, "usual": usual}.items()}
        med = alternate(runs, n, warmup=2)
        print(f"| {label} | {med['now']:.2f} | {med['before']:.2f} | {med['usual']:.3f} | "
              f"{med['now'] / med['before']:.2f}x | {med['now'] / med['usual']:.1f}x |", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
