"""What the zoo's argmax metrics save by 0.11's plans and 0.12's path "runs", measured in one run.

    python benchmarks/argmax_plan_cost.py            # a table on stdout (about two minutes)

Since 0.11 an ``Argmax`` plan (``PixelArgmax`` too) holds each row's best other class alone, an
argmax of the others, where it held every other class sorted (``TopK`` still does); since 0.12
the zoo's metrics of class counts take the path ``"runs"`` (each row's least comparison alone,
:attr:`uniloss.Structure.run_least`) where they formed all ``[G, C - 1]`` comparisons. This
times one loss call (forward and backward, library defaults, ``validate_args=False``, one
thread) of four zoo metrics three ways in one process, interleaved call by call: as they are
(0.12), with the structure of any decoded metric (no ``run_least``, ``run_pull`` or
``evaluate_zeros``: 0.11's chain on every comparison) and with that and the plan ranking every
other class (the decoder's ``_ranks_every_class`` flag: 0.10). The same loss each way.
"""

from __future__ import annotations

import statistics
import time

import torch

import uniloss
from uniloss import zoo


def _times(fn, x, y, reps):
    times = []
    for _ in range(reps):
        leaf = x.clone().requires_grad_(True)
        start = time.perf_counter()
        fn(leaf, y).backward()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    cases = [
        ("zoo.mean_iou(21), 4 x 21 x 32 x 32", lambda: zoo.mean_iou(21), torch.randn(4, 21, 32, 32, generator=g),
         torch.randint(0, 21, (4, 32, 32), generator=g), 40),
        ("zoo.macro_f1(100), 128 x 100", lambda: zoo.macro_f1(100), torch.randn(128, 100, generator=g),
         torch.randint(0, 100, (128,), generator=g), 200),
        ("zoo.macro_f1(10), 128 x 10", lambda: zoo.macro_f1(10), torch.randn(128, 10, generator=g),
         torch.randint(0, 10, (128,), generator=g), 200),
        ("zoo.balanced_accuracy(10), 128 x 10", lambda: zoo.balanced_accuracy(10), torch.randn(128, 10, generator=g),
         torch.randint(0, 10, (128,), generator=g), 200),
    ]
    print("| case | 0.12: runs (ms) | 0.11: every comparison (ms) | 0.10: and every class sorted (ms) "
          "| 0.12 / 0.11 | 0.12 / 0.10 |")
    print("|---|---|---|---|---|---|")
    for name, make, x, y, reps in cases:
        metrics = [make(), make(), make()]
        for old in metrics[1:]:  # the structure of any decoded metric: the chain on every comparison
            old.structure = lambda target, m=old: uniloss.DecodedMetric.structure(m, target)  # type: ignore[method-assign]
        metrics[2].decoder._ranks_every_class = True  # the plan before 0.11
        fns = [uniloss.UniLoss(m, validate_args=False) for m in metrics]
        losses = [fn(x, y) for fn in fns]
        assert all(torch.allclose(loss, losses[0], rtol=1e-5, atol=1e-7) for loss in losses)  # the same loss
        times: list = [[], [], []]
        for r in range(reps):  # interleaved, rotating which goes first
            for k in range(3):
                i = (r + k) % 3
                times[i] += _times(fns[i], x, y, 1)
        a, b, c = (statistics.median(t) * 1e3 for t in times)
        print(f"| {name} | {a:.2f} | {b:.2f} | {c:.2f} | {a / b:.2f}x | {a / c:.2f}x |")


if __name__ == "__main__":
    main()
