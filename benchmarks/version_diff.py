"""Does this checkout compute the same losses as an earlier commit? Loss, metric and gradient, side by side.

    python benchmarks/version_diff.py --ref 7903d63      # 0.8.0

Extracts ``src/`` of ``--ref`` with ``git archive`` (as ``benchmarks/version_cost.py`` does) and,
in a fresh interpreter for each version, calls each version's default loss (``uniloss_with_info``
with the library's defaults and each of the option sets below) on the same inputs: AP,
accuracy (plain and ``top_k=2``), PCK and ten of the zoo's metrics, float32 and float64, seeds 0
and 1 (560 calls). Prints, per dtype, how many losses and metrics are equal to the bit, the
largest relative difference of a gradient (to its largest entry), and every call that differs by
more than the dtype's tolerance (1e-5 for float32, 1e-11 for float64).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter with one version of the package on its path; saves
# {key: (loss, metric, grad)} to the file named by its first argument.
PROBE = r"""
import sys, torch, uniloss
from uniloss import functional as F, zoo
torch.set_num_threads(1)
def cases(dtype, g):
    n = 24
    s1 = torch.randn(n, generator=g, dtype=dtype) * 2
    y1 = (torch.rand(n, generator=g) < 0.4).long(); y1[0] = 1; y1[1] = 0
    s5 = torch.randn(n, 5, generator=g, dtype=dtype) * 2
    y5 = torch.randint(0, 5, (n,), generator=g)
    seg = torch.randn(2, 3, 4, 4, generator=g, dtype=dtype); yseg = torch.randint(0, 3, (2, 4, 4), generator=g)
    rel = zoo.RankingTarget(torch.randint(0, 3, (24,), generator=g), torch.arange(3).repeat_interleave(8))
    sr = torch.randn(24, generator=g, dtype=dtype)
    heat = torch.randn(2, 3, 8, 8, generator=g, dtype=dtype)
    kp = uniloss.KeypointTarget(torch.rand(2, 3, 2, generator=g, dtype=dtype) * 7, torch.ones(2, 3, dtype=torch.bool),
                                torch.full((2,), 3.0, dtype=dtype))
    return [("ap", uniloss.AveragePrecision(), s1, y1), ("accuracy", uniloss.MulticlassAccuracy(), s5, y5),
            ("accuracy top_k=2", uniloss.MulticlassAccuracy(top_k=2), s5, y5), ("pck", uniloss.PCK(), heat, kp),
            ("macro_f1", zoo.macro_f1(5), s5, y5), ("balanced_accuracy", zoo.balanced_accuracy(5), s5, y5),
            ("f_beta", zoo.f_beta(1.0), s1, y1), ("top_k_accuracy", zoo.top_k_accuracy(2), s5, y5),
            ("auroc", zoo.auroc(), s1, y1), ("mean_iou", zoo.mean_iou(3), seg, yseg), ("dice", zoo.dice(3), seg, yseg),
            ("ndcg_at_k", zoo.ndcg_at_k(4), sr, rel), ("mrr", zoo.mrr(), sr, rel),
            ("precision_at_k", zoo.precision_at_k(3), sr, rel)]
OPTIONS = [{}, {"pull": 0.0}, {"step": "sum"}, {"grad_scale": 2.0}, {"temperature": 0.5},
           {"temperature_scale": "rms"}, {"pull_per": "comparison"}, {"pull_per": "run"},
           {"pull_weights": "equal"}, {"pull": 0.3}]
out = {}
for dtype in (torch.float32, torch.float64):
    for seed in (0, 1):
        for name, dec, scores, target in cases(dtype, torch.Generator().manual_seed(seed)):
            for options in OPTIONS:
                s = scores.clone().requires_grad_(True)
                loss, info = F.uniloss_with_info(s, target, dec, generator=torch.Generator().manual_seed(seed), **options)
                loss.backward()
                key = (str(dtype), seed, name, repr(options))
                out[key] = (loss.detach(), info.metric.to(dtype), s.grad)
torch.save(out, sys.argv[1])
"""


def run(src: Path, path: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-c", PROBE, path], env=env, check=True)
    return torch.load(path)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", required=True, help="the earlier commit")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.ref, "src"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        ref = run(Path(tmp) / "src", os.path.join(tmp, "ref.pt"))
        now = run(ROOT / "src", os.path.join(tmp, "now.pt"))
    summary: dict = {}
    for key in ref:
        dtype = key[0]
        row = summary.setdefault(dtype, {"calls": 0, "loss": 0, "metric": 0, "grad": 0, "worst": 0.0, "differ": [],
                                         "moved": set()})
        (loss_a, metric_a, grad_a), (loss_b, metric_b, grad_b) = ref[key], now[key]
        tolerance = 1e-5 if dtype == "torch.float32" else 1e-11
        worst = float((grad_a - grad_b).abs().max() / grad_a.abs().max().clamp_min(1e-30))
        row["calls"] += 1
        row["loss"] += bool(torch.equal(loss_a, loss_b))
        row["metric"] += bool(torch.equal(metric_a, metric_b))
        row["grad"] += bool(torch.equal(grad_a, grad_b))
        if not torch.equal(grad_a, grad_b):
            row["moved"].add(key[2])
        row["worst"] = max(row["worst"], worst)
        if worst > tolerance or not torch.allclose(loss_a, loss_b, rtol=tolerance, atol=0):
            row["differ"].append((key, float(loss_a), float(loss_b), worst))
    for dtype, row in summary.items():
        print(f"{dtype}: {row['calls']} calls; loss equal to the bit {row['loss']}, metric {row['metric']}, gradient "
              f"{row['grad']}; largest relative gradient difference {row['worst']:.2e}; beyond tolerance: "
              f"{len(row['differ'])}" + (f"; gradients not equal to the bit: {', '.join(sorted(map(str, row['moved'])))}"
                                         if row["moved"] else ""))
        for key, a, b, worst in row["differ"]:
            print(f"  {key}: loss {a!r} (ref) vs {b!r}, gradient {worst:.2e}")
    return summary


if __name__ == "__main__":
    main()
