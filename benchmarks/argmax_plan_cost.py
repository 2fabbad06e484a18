"""What ranking only the best other class saves the zoo's argmax metrics, measured in one run.

    python benchmarks/argmax_plan_cost.py            # a table on stdout (about a minute)

Since 0.11 an ``Argmax`` plan (``PixelArgmax`` too) holds each row's best other class alone, an
argmax of the others, where it held every other class sorted (``TopK`` still does). This times
one loss call (forward and backward, library defaults, ``validate_args=False``, one thread) of
three zoo metrics both ways in one process, interleaved call by call, the old way switched back
on through the decoder's ``_ranks_every_class`` flag: the same loss, less sorting.
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
    ]
    print("| case | best other class alone (ms) | every other class sorted (ms) | ratio |")
    print("|---|---|---|---|")
    for name, make, x, y, reps in cases:
        new_metric, old_metric = make(), make()
        old_metric.decoder._ranks_every_class = True  # the plan before 0.11
        new, old = uniloss.UniLoss(new_metric, validate_args=False), uniloss.UniLoss(old_metric, validate_args=False)
        assert torch.equal(new(x, y), old(x, y))  # the same loss
        t_new, t_old = [], []
        for r in range(reps):  # interleaved, alternating which goes first
            for fn, out in ((new, t_new), (old, t_old)) if r % 2 else ((old, t_old), (new, t_new)):
                out += _times(fn, x, y, 1)
        a, b = statistics.median(t_new) * 1e3, statistics.median(t_old) * 1e3
        print(f"| {name} | {a:.2f} | {b:.2f} | {a / b:.2f}x |")


if __name__ == "__main__":
    main()
