"""What a multi-label macro-F1 loss costs, its two routes against binary cross-entropy, in one run.

    python benchmarks/multilabel_cost.py          # a table on stdout (under a minute)

The ``mlabel-f1`` probe (``benchmarks/capacity_probe.py``) trains macro-F1 over ten labels at
logit 0 through :func:`uniloss.from_metric` on the metric's plain torch code
(``metric_wins.multilabel_macro_f1``); the zoo has the same metric as
``zoo.f_beta(1, average="macro")``. This times one loss call (forward and backward, library
defaults, on a model's output ``x * w``, one thread) of each route and of binary cross-entropy,
interleaved call by call, at the probe's batch (``[128, 10]``) and a smaller and a larger one.
Both routes give the chain at every one of its ``l + 1`` points (the exact extension, the same
loss up to the traced metric's float32 rounding). The zoo's takes the gains in closed form (a
sort and a cumulative sum). The traced route evaluated the metric's code on ``[l + 1, l]``
configurations' counts (quadratic in the scores) until its chain through sums: the metric's
mask reaches its value only through sums, so the ``l + 1`` points' sums come from each
element's change and a cumulative sum, and the metric's code after the sums runs on those.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as nnf

import uniloss
from uniloss import zoo
from uniloss.experiments.metric_wins import multilabel_macro_f1

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from version_cost import alternate  # noqa: E402  (calls in turn, the first rotating)


def main(calls: int = 200) -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(torch.ones(1))
    print("| batch | traced (ms) | zoo (ms) | BCE (ms) | traced / zoo | traced / BCE | zoo / BCE |")
    print("|---|---|---|---|---|---|---|")
    for n in (16, 128, 512):
        x = torch.randn(n, 10, generator=g)
        y = (torch.rand(n, 10, generator=g) < 0.2).long()
        losses = {"traced": uniloss.UniLoss(uniloss.from_metric(multilabel_macro_f1)),
                  "zoo": uniloss.UniLoss(zoo.f_beta(1.0, average="macro")),
                  "bce": lambda s, t: nnf.binary_cross_entropy_with_logits(s, t.float())}
        runs = {k: (lambda f=f, x=x, y=y: f(x * w, y).backward()) for k, f in losses.items()}
        med = alternate(runs, calls if n <= 128 else max(calls // 4, 5), warmup=5)
        print(f"| [{n}, 10] | {med['traced']:.2f} | {med['zoo']:.2f} | {med['bce']:.3f} | "
              f"{med['traced'] / med['zoo']:.2f}x | {med['traced'] / med['bce']:.0f}x | "
              f"{med['zoo'] / med['bce']:.0f}x |", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
