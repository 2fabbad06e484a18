"""What the pull per run (``pull_per="run"``, 0.2) costs per loss call against the pull per
comparison, what ``step="pull"`` (0.3) adds to it, and the defaults of 0.4 (``pull_per="sample"``:
AP's pull on per-sample margins; accuracy keeps 0.3's), and what 0.5's ``pull_weights="metric"``
(each run weighed by the metric's change when it alone toggles) costs the zoo's argmax metrics against every run alike:
forward and backward, eager, one thread, all measured interleaved in one process (median of 250
calls after 50 warm-up ones; 60 after 10 for the segmentation cases), ratios beside the absolute
times.

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
    configs = {"per comparison": dict(pull_per="comparison", step="sum", pull_weights="equal"),
               "per run": dict(pull_per="run", step="sum", pull_weights="equal"),
               'step="pull"': dict(pull_per="run", step="pull", pull_weights="equal"), "0.4 defaults": dict(pull_weights="equal")}
    for name, (dec, scores, target) in cases.items():
        lines.append(_row(name, dec, scores, target, configs, "per run"))
    zoo = uniloss.zoo
    weighted = {
        "balanced_accuracy(10), 128 x 10": (zoo.balanced_accuracy(10), torch.randn(128, 10, generator=g),
                                            torch.randint(0, 10, (128,), generator=g)),
        "macro_f1(100), 128 x 100": (zoo.macro_f1(100), torch.randn(128, 100, generator=g),
                                     torch.randint(0, 100, (128,), generator=g)),
        "mean_iou(2), 16 x 2 x 64 x 64": (zoo.mean_iou(2), torch.randn(16, 2, 64, 64, generator=g),
                                          torch.randint(0, 2, (16, 64, 64), generator=g)),
        "mean_iou(21), 4 x 21 x 32 x 32": (zoo.mean_iou(21), torch.randn(4, 21, 32, 32, generator=g),
                                           torch.randint(0, 21, (4, 32, 32), generator=g)),
    }
    lines += ["", "0.5: the runs weighed by the metric (pull_weights=\"metric\") against every run alike (0.4)"]
    for name, (dec, scores, target) in weighted.items():
        calls = 70 if scores.numel() > 20000 else 300
        lines.append(_row(name, dec, scores, target, {"equal": dict(pull_weights="equal"), "metric": {}}, "equal", calls))
    text = "\n".join(lines) + "\n"
    OUT.write_text(text)
    return text


def _row(name: str, dec, scores, target, configs: dict, base: str, calls: int = 300) -> str:
    """One line: each configuration's median time (interleaved calls), and its ratio to ``base``."""
    fns = {k: uniloss.UniLoss(dec, validate_args=False, generator=torch.Generator().manual_seed(0), **kw)
           for k, kw in configs.items()}
    times: dict = {k: [] for k in fns}
    for _ in range(calls):
        for k, fn in fns.items():
            x = scores.clone().requires_grad_()
            start = time.perf_counter()
            fn(x, target).backward()
            times[k].append(time.perf_counter() - start)
    med = {k: statistics.median(v[calls // 6:]) for k, v in times.items()}
    return f"{name:20s} " + "   ".join(
        f"{k} {1e3 * t:.3f} ms" + ("" if k == base else f" ({t / med[base]:.2f}x)") for k, t in med.items())


if __name__ == "__main__":
    print(main(), end="")
