"""What ``interpolation="chain"`` costs per loss call against the anchors' interpolation (the
default): forward and backward, eager, one thread, the two interleaved in one process (median of
60 calls after 10 warm-up ones; 20 after 3 for the segmentation batch, 8 after 2 for the
largest cases), ratios beside the absolute times.

    python benchmarks/chain_cost.py     # writes docs/results/metric-wins/screens/v41/cost.txt

PCK at 16 x 16 joints x 64 x 64 (180M comparisons, above ``chunk_bits``) runs block by block on
both sides, once after one warm-up call each (``--no-large`` skips it: about two minutes).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

import uniloss
from uniloss import zoo
from uniloss.experiments.reproduce import machine

OUT = Path(__file__).resolve().parents[1] / "docs" / "results" / "metric-wins" / "screens" / "v41" / "cost.txt"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import pck_inputs  # noqa: E402  (the PCK cases of benchmarks/speed.py)


def main(large: bool = True, out: Path = OUT) -> str:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    cases = {
        "AP, batch 128 (10% positives)": (uniloss.AveragePrecision(), torch.randn(128, generator=g),
                                          (torch.rand(128, generator=g) < 0.1).long()),
        "accuracy, 128 x 10": (uniloss.MulticlassAccuracy(), torch.randn(128, 10, generator=g),
                               torch.randint(0, 10, (128,), generator=g)),
        "mean IoU, 32 x 2 x 28 x 28 (the suite's segmentation batch)": (
            zoo.mean_iou(2), torch.randn(32, 2, 28, 28, generator=g), torch.randint(0, 2, (32, 28, 28), generator=g)),
        "macro-F1, 128 x 10": (zoo.macro_f1(10), torch.randn(128, 10, generator=g),
                               torch.randint(0, 10, (128,), generator=g)),
        "NDCG@5, 8 queries x 32 (no closed form: 257 points evaluated)": (
            zoo.ndcg_at_k(5), torch.randn(256, generator=g),
            uniloss.decoders.RankingTarget(torch.randint(0, 4, (256,), generator=g), torch.arange(256) // 32)),
        "AP, batch 1024 (10% positives)": (uniloss.AveragePrecision(), torch.randn(1024, generator=g),
                                           (torch.rand(1024, generator=g) < 0.1).long()),
        "accuracy, 1024 x 1000": (uniloss.MulticlassAccuracy(), torch.randn(1024, 1000, generator=g),
                                  torch.randint(0, 1000, (1024,), generator=g)),
        "PCK, 2 x 8 joints x 32 x 32": (uniloss.PCK(), *pck_inputs(2, 8, 32, "cpu")[:2]),
    }
    if large:
        cases["PCK, 16 x 16 joints x 64 x 64 (block by block)"] = (uniloss.PCK(), *pck_inputs(16, 16, 64, "cpu")[:2])
    lines = [f"interpolation='chain' against the anchors' (the default), forward + backward per call, eager; "
             f"{machine()}, torch {torch.__version__}, 1 thread; {time.strftime('%Y-%m-%d %H:%M')}. "
             "Regenerate: python benchmarks/chain_cost.py", ""]
    for name, (dec, scores, target) in cases.items():
        fns = {kind: uniloss.UniLoss(dec, interpolation=kind) for kind in ("anchors", "chain")}
        small = scores.numel() < 10_000
        warm, calls = (10, 60) if small else (3, 20) if scores.numel() < 100_000 else (2, 8) if "block" not in name else (1, 1)
        times: dict = {kind: [] for kind in fns}
        for i in range(warm + calls):
            for kind, fn in fns.items():
                s = scores.clone().requires_grad_(True)
                t0 = time.perf_counter()
                fn(s, target).backward()
                if i >= warm:
                    times[kind].append(time.perf_counter() - t0)
        a, c = (statistics.median(times[k]) * 1e3 for k in ("anchors", "chain"))
        lines.append(f"{name}: anchors {a:.2f} ms, chain {c:.2f} ms ({c / a:.2f}x), "
                     f"{fns['chain'].last.kinds[0][1]} points of the chain, {fns['chain'].last.num_bits} comparisons")
    text = "\n".join(lines) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-large", action="store_true", help="skip PCK at 16 x 16 joints x 64 x 64")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    print(main(not args.no_large, args.out), end="")
