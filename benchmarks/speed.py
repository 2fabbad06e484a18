"""Loss forward+backward time: UniLoss against the usual loss on the same inputs, in one run.

    python benchmarks/speed.py                 # table on stdout
    python benchmarks/speed.py --json out.json # also the raw figures

Method: fixed seeds; each case is warmed up, then timed ``--repeats`` times (each repeat the
mean over ``--inner`` calls); the median and interquartile range are reported, and the ratio of
medians to the baseline measured in the same run, interleaved so machine noise hits both.
The machine, torch version and thread count are recorded.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Callable, Dict, List

import torch
import torch.nn.functional as nnf

import uniloss


def _time(fn: Callable[[], None], inner: int) -> float:
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / inner


def _step(loss_fn, scores, target) -> Callable[[], None]:
    def run():
        s = scores.detach().requires_grad_()
        loss_fn(s, target).backward()

    return run


def cases(device: str) -> List[Dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for n in (16, 128):
        scores = torch.randn(n, generator=g).to(device)
        labels = (torch.rand(n, generator=g) < 0.1).long()
        labels[0] = 1
        labels = labels.to(device)
        out.append(dict(
            name=f"AP, batch {n}", baseline="BCE",
            uniloss=_step(uniloss.UniLoss(uniloss.AveragePrecision(), generator=torch.Generator().manual_seed(0)), scores, labels),
            base=_step(lambda s, y: nnf.binary_cross_entropy_with_logits(s, y.float()), scores, labels),
        ))
    for n, p in ((128, 10), (128, 100)):
        scores = torch.randn(n, p, generator=g).to(device)
        target = torch.randint(0, p, (n,), generator=g).to(device)
        out.append(dict(
            name=f"accuracy, {n} x {p}", baseline="CE",
            uniloss=_step(uniloss.UniLoss(uniloss.MulticlassAccuracy(), generator=torch.Generator().manual_seed(0)), scores, target),
            base=_step(nnf.cross_entropy, scores, target),
        ))
    return out


def main(argv=None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--inner", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows = []
    for case in cases(args.device):
        for _ in range(args.warmup):
            case["uniloss"]()
            case["base"]()
        ul, base = [], []
        for _ in range(args.repeats):  # interleaved: noise hits both
            ul.append(_time(case["uniloss"], args.inner))
            base.append(_time(case["base"], args.inner))
        q = lambda xs: statistics.quantiles(xs, n=4)
        rows.append(dict(
            case=case["name"], baseline=case["baseline"],
            uniloss_ms=statistics.median(ul) * 1e3, uniloss_iqr_ms=(q(ul)[2] - q(ul)[0]) * 1e3,
            baseline_ms=statistics.median(base) * 1e3, baseline_iqr_ms=(q(base)[2] - q(base)[0]) * 1e3,
            ratio=statistics.median(ul) / statistics.median(base),
        ))
    report = dict(
        machine=f"{platform.machine()} {platform.processor() or ''}".strip() + f", {torch.get_num_threads()} threads",
        python=platform.python_version(), torch=torch.__version__, device=args.device,
        date=time.strftime("%Y-%m-%d"), repeats=args.repeats, inner=args.inner, rows=rows,
    )
    print(f"# {report['machine']}, torch {report['torch']}, {args.device}, {report['date']}")
    print("| case | UniLoss (ms) | baseline (ms) | ratio |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['uniloss_ms']:.3f} ± {r['uniloss_iqr_ms'] / 2:.3f} | "
              f"{r['baseline']} {r['baseline_ms']:.3f} | {r['ratio']:.1f}x |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
    return report


if __name__ == "__main__":
    main()
