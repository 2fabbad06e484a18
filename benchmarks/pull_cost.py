"""What the pull per run (``pull_per="run"``, 0.2) costs per loss call against the pull per
comparison, what ``step="pull"`` (0.3) adds to it, and the defaults of 0.4 (``pull_per="sample"``:
AP's pull on per-sample margins; accuracy keeps 0.3's): forward and backward, eager, one thread,
all measured interleaved in one process (median of 250 calls after 50 warm-up ones), ratios to
the pull per run beside the absolute times.

    python benchmarks/pull_cost.py     # writes docs/results/metric-wins/pull-cost.txt
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

import uniloss
from uniloss.experiments.reproduce import machine

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
    lines = [f"{machine()}, torch {torch.__version__}, 1 thread, "
             f"{time.strftime('%Y-%m-%d')}. Regenerate: `python benchmarks/pull_cost.py`.", ""]
    for name, (dec, scores, target) in cases.items():
        configs = {"per comparison": dict(pull_per="comparison", step="sum"), "per run": dict(pull_per="run", step="sum"),
                   'step="pull"': dict(pull_per="run", step="pull"), "0.4 defaults": {}}
        fns = {k: uniloss.UniLoss(dec, validate_args=False, generator=torch.Generator().manual_seed(0), **kw)
               for k, kw in configs.items()}
        times: dict = {per: [] for per in fns}
        for _ in range(300):
            for per, fn in fns.items():
                x = scores.clone().requires_grad_()
                start = time.perf_counter()
                fn(x, target).backward()
                times[per].append(time.perf_counter() - start)
        med = {k: statistics.median(v[50:]) for k, v in times.items()}
        lines.append(f"{name:20s} " + "   ".join(
            f"{k} {1e3 * t:.3f} ms" + ("" if k == "per run" else f" ({t / med['per run']:.2f}x)") for k, t in med.items()))
    text = "\n".join(lines) + "\n"
    OUT.write_text(text)
    return text


if __name__ == "__main__":
    print(main(), end="")
