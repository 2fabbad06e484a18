"""What the pull per run (``pull_per="run"``, the default since 0.2) costs per loss call against the
pull per comparison: forward and backward, eager, one thread, both measured interleaved in one
process (median of 250 calls after 50 warm-up ones), ratio beside the absolute times.

    python benchmarks/pull_cost.py     # writes docs/results/metric-wins/pull-cost.txt
"""

from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path

import torch

import uniloss

OUT = Path(__file__).resolve().parents[1] / "docs" / "results" / "metric-wins" / "pull-cost.txt"


def main() -> str:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    cases = {
        "AP, batch 16": (uniloss.AveragePrecision(), torch.randn(16, generator=g), torch.arange(16) % 4 == 0),
        "AP, batch 128": (uniloss.AveragePrecision(), torch.randn(128, generator=g), torch.arange(128) % 20 == 0),
        "accuracy, 128 x 10": (uniloss.MulticlassAccuracy(), torch.randn(128, 10, generator=g),
                               torch.randint(0, 10, (128,), generator=g)),
        "accuracy, 128 x 100": (uniloss.MulticlassAccuracy(), torch.randn(128, 100, generator=g),
                                torch.randint(0, 100, (128,), generator=g)),
    }
    lines = [f"{platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread, "
             f"{time.strftime('%Y-%m-%d')}. Regenerate: `python benchmarks/pull_cost.py`.", ""]
    for name, (dec, scores, target) in cases.items():
        fns = {per: uniloss.UniLoss(dec, pull_per=per, validate_args=False, generator=torch.Generator().manual_seed(0))
               for per in ("comparison", "run")}
        times: dict = {per: [] for per in fns}
        for _ in range(300):
            for per, fn in fns.items():
                x = scores.clone().requires_grad_()
                start = time.perf_counter()
                fn(x, target).backward()
                times[per].append(time.perf_counter() - start)
        c, r = (statistics.median(times[p][50:]) for p in ("comparison", "run"))
        lines.append(f"{name:20s} per comparison {1e3 * c:.3f} ms   per run {1e3 * r:.3f} ms   ratio {r / c:.2f}")
    text = "\n".join(lines) + "\n"
    OUT.write_text(text)
    return text


if __name__ == "__main__":
    print(main(), end="")
