"""The training-step cost of this checkout against an earlier commit's, measured in one run.

    python benchmarks/version_cost.py --ref c54ecf7      # the commit of docs/performance's table

Extracts ``src/`` of ``--ref`` with ``git archive`` into a temporary folder and times, in fresh
interpreters alternating between the two versions (``--rounds`` each, one thread), the issue's
two small cases with each version's default loss: the MNIST MLP training step (784-500-300-1,
batch 16, SGD lr 0.01 momentum 0.5; ``UniLoss(AveragePrecision())`` against binary
cross-entropy) and an accuracy loss call at 128 x 10 (forward and backward, against
cross-entropy), and an AP loss call at batch 16 (leaf scores, about 30% positives; against binary
cross-entropy). Prints each round's medians and ratios, then the median over rounds per version.
The machine is shared and noisy: read the ratios, measured side by side, not the milliseconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter with one version of the package on its path; prints one line of
# `key=value` medians (milliseconds).
PROBE = r"""
import statistics, time, torch, torch.nn.functional as F, uniloss
from torch import nn
torch.set_num_threads(1)
def med(f, inner=50, reps=15):
    for _ in range(10):
        f()
    ts = []
    for _ in range(reps):
        a = time.perf_counter()
        for _ in range(inner):
            f()
        ts.append((time.perf_counter() - a) / inner * 1e3)
    return statistics.median(ts)
g = torch.Generator().manual_seed(0)
x = torch.randn(16, 1, 28, 28, generator=g)
y = (torch.rand(16, generator=g) < 0.1).long()
y[0] = 1
def stepper(loss):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(784, 500), nn.ReLU(), nn.Linear(500, 300), nn.ReLU(), nn.Linear(300, 1))
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.5)
    def run():
        value = loss(m(x).reshape(-1), y)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
    return run
ap = uniloss.UniLoss(uniloss.AveragePrecision(), generator=torch.Generator().manual_seed(0))
xa = torch.randn(128, 10, generator=g)
ya = torch.randint(0, 10, (128,), generator=g)
acc = uniloss.UniLoss(uniloss.MulticlassAccuracy(), generator=torch.Generator().manual_seed(0))
def call(loss):
    def run():
        s = xa.detach().requires_grad_()
        loss(s, ya).backward()
    return run
xb = torch.randn(16, generator=g)
yb = (torch.rand(16, generator=g) < 0.3).long()
yb[0], yb[1] = 1, 0
def call_ap(loss):
    def run():
        s = xb.detach().requires_grad_()
        loss(s, yb).backward()
    return run
r = dict(mlp_uniloss=med(stepper(ap)), mlp_bce=med(stepper(lambda s, t: F.binary_cross_entropy_with_logits(s, t.float()))),
         acc_uniloss=med(call(acc)), acc_ce=med(call(F.cross_entropy)),
         ap_uniloss=med(call_ap(ap)), ap_bce=med(call_ap(lambda s, t: F.binary_cross_entropy_with_logits(s, t.float()))))
print(" ".join(f"{k}={v:.4f}" for k, v in r.items()))
"""


def measure(src: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    values = dict(item.split("=") for item in out.stdout.split())
    r = {k: float(v) for k, v in values.items()}
    r["mlp_ratio"] = r["mlp_uniloss"] / r["mlp_bce"]
    r["acc_ratio"] = r["acc_uniloss"] / r["acc_ce"]
    r["ap_ratio"] = r["ap_uniloss"] / r["ap_bce"]
    return r


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", default="c54ecf7", help="the earlier commit (default: docs/performance's table)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    results: dict = {"ref": [], "now": []}
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.ref, "src"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        versions = {"ref": Path(tmp) / "src", "now": ROOT / "src"}
        for i in range(args.rounds):
            for name in (("ref", "now") if i % 2 == 0 else ("now", "ref")):
                r = measure(versions[name])
                results[name].append(r)
                print(f"round {i + 1} {name:3s} ({args.ref if name == 'ref' else 'this checkout'}): MLP step "
                      f"{r['mlp_uniloss']:.2f} ms vs BCE {r['mlp_bce']:.2f} ms = {r['mlp_ratio']:.2f}x; accuracy 128 x 10 "
                      f"{r['acc_uniloss']:.3f} ms vs CE {r['acc_ce']:.3f} ms = {r['acc_ratio']:.1f}x; AP batch 16 "
                      f"{r['ap_uniloss']:.3f} ms vs BCE {r['ap_bce']:.3f} ms = {r['ap_ratio']:.1f}x", flush=True)
    for name in ("ref", "now"):
        rows = results[name]
        print(f"median over {len(rows)} rounds, {args.ref if name == 'ref' else 'this checkout'}: MLP step "
              f"{statistics.median(r['mlp_ratio'] for r in rows):.2f}x BCE's, accuracy loss call "
              f"{statistics.median(r['acc_uniloss'] for r in rows):.3f} ms = "
              f"{statistics.median(r['acc_ratio'] for r in rows):.1f}x CE's, AP batch 16 loss call "
              f"{statistics.median(r['ap_uniloss'] for r in rows):.3f} ms = "
              f"{statistics.median(r['ap_ratio'] for r in rows):.1f}x BCE's")
    return results


if __name__ == "__main__":
    main()
