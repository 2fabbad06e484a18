"""Memory of the global-batch AP loss on each rank, for 1, 2 and 8 simulated ranks.

Under ``GlobalBatch`` every rank computes the loss of the global batch (``W`` ranks x ``n``
samples), so its memory is that of one process on the concatenated batch, plus the gathered
copies of the scores and targets. This script simulates the ranks in one process: it runs
forward and backward of ``UniLoss(AveragePrecision())`` on ``W * n`` samples (10% positives) and
records

* ``peak_rss_bytes``: on a CPU, how much the process's peak resident memory grows over one
  forward and backward pass, each configuration in a fresh process after a small warm-up step
  (resolution: a few pages; the allocator may reuse freed memory, so it is a lower bound),
* ``gather_bytes``: the all-gather buffers of one rank (``W`` padded copies of a rank's scores
  and targets, float32 and int64, plus 8-byte headers),
* ``peak_cuda_bytes``: the peak allocation on a GPU when one is present (else null),
* ``ms``: the median time of a forward and backward pass (5 runs after one warm-up).

    python benchmarks/distributed_memory.py [--out results.json]
"""

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

import uniloss

RANKS = (1, 2, 8)
PER_RANK = (16, 64, 256)


def measure(world: int, n: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    total = world * n
    target = torch.zeros(total, dtype=torch.long)
    target[torch.randperm(total, generator=g)[: max(1, total // 10)]] = 1
    scores = torch.randn(total, generator=g).to(device)
    target = target.to(device)
    loss_fn = uniloss.UniLoss(uniloss.AveragePrecision(), generator=torch.Generator().manual_seed(0))

    def step():
        s = scores.clone().requires_grad_(True)
        loss = loss_fn(s, target)
        loss.backward()

    small = uniloss.UniLoss(uniloss.AveragePrecision())  # warm-up: code paths, thread pools
    small(torch.randn(16, requires_grad=True).to(device), (torch.arange(16) % 4 == 0).long().to(device)).backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    step()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    gather = world * (8 + n * 8) + world * n * 4 if world > 1 else 0
    return {
        "ranks": world, "per_rank": n, "global_batch": total, "comparisons": loss_fn.last.num_bits,
        "peak_rss_bytes": rss, "gather_bytes": gather, "peak_cuda_bytes": peak,
        "ms": statistics.median(times), "ms_spread": [min(times), max(times)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    parser.add_argument("--one", nargs=2, type=int, metavar=("RANKS", "PER_RANK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1], device)))
        return
    rows = [json.loads(subprocess.run([sys.executable, __file__, "--one", str(w), str(n)], check=True,
                                      capture_output=True, text=True).stdout) for n in PER_RANK for w in RANKS]
    print(f"{'per rank':>8} {'ranks':>5} {'global':>6} {'comparisons':>11} {'peak MiB':>9} "
          f"{'gather KiB':>10} {'ms':>7}")
    for row in rows:
        print(f"{row['per_rank']:>8} {row['ranks']:>5} {row['global_batch']:>6} {row['comparisons']:>11} "
              f"{row['peak_rss_bytes'] / 2**20:>9.2f} {row['gather_bytes'] / 1024:>10.1f} {row['ms']:>7.2f}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"machine": platform.platform(), "processor": platform.processor(),
                       "torch": torch.__version__, "device": str(device), "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
