"""Loss forward+backward time of every zoo metric against the usual loss, in one run.

    python benchmarks/zoo_speed.py                  # table on stdout
    python benchmarks/zoo_speed.py --json out.json  # also the raw figures
    python benchmarks/zoo_speed.py --threads 1 --json docs/results/zoo/speed.json --md docs/results/zoo/speed.md

The method of ``benchmarks/speed.py``: fixed seeds; each case is warmed up, then timed
``--repeats`` times (each repeat the mean over ``--inner`` calls), UniLoss and its baseline
interleaved so that machine noise hits both; the median and interquartile range are reported and
the ratio of medians to the baseline (cross-entropy, binary cross-entropy or MSE on the same
scores) measured in the same run. Sizes are those of realistic mini-batches. The machine, torch
version and thread count are recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Dict, List

import torch
import torch.nn.functional as nnf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from speed import timed_step, time_call  # noqa: E402  (the same timing helpers as the core benchmark)

import uniloss  # noqa: E402
from uniloss import zoo  # noqa: E402
from uniloss.decoders import RankingTarget  # noqa: E402


def _ce(s, y):
    return nnf.cross_entropy(s, y)


def _bce(s, y):
    return nnf.binary_cross_entropy_with_logits(s, y.float())


def _bce_relevance(s, y):
    return nnf.binary_cross_entropy_with_logits(s, (y.relevance > 0).float())


def _mse_heatmaps(s, y):
    return nnf.mse_loss(s, torch.zeros_like(s))


def batches(device: str) -> Dict[str, tuple]:
    g = torch.Generator().manual_seed(0)

    def to(*xs):
        return tuple(x.to(device) if isinstance(x, torch.Tensor) else x for x in xs)

    ranking_rel = torch.randint(0, 4, (256,), generator=g)
    return {
        "128 x 10": to(torch.randn(128, 10, generator=g), torch.randint(0, 10, (128,), generator=g)),
        "128 x 100": to(torch.randn(128, 100, generator=g), torch.randint(0, 100, (128,), generator=g)),
        "binary 128": to(torch.randn(128, generator=g), (torch.rand(128, generator=g) < 0.3).long()),
        "binary 128, 10% positive": to(torch.randn(128, generator=g), (torch.rand(128, generator=g) < 0.1).long()),
        "8 queries x 32 (0/1)": (torch.randn(256, generator=g).to(device),
                                 RankingTarget(*to((ranking_rel == 3).long(), torch.arange(256) // 32))),
        "8 queries x 32 (grades 0-3)": (torch.randn(256, generator=g).to(device),
                                        RankingTarget(*to(ranking_rel, torch.arange(256) // 32))),
        "16 x 2 x 64 x 64": to(torch.randn(16, 2, 64, 64, generator=g), torch.randint(0, 2, (16, 64, 64), generator=g)),
        "4 x 21 x 32 x 32": to(torch.randn(4, 21, 32, 32, generator=g), torch.randint(0, 21, (4, 32, 32), generator=g)),
        "heatmaps 8 x 4 x 16 x 16": (torch.randn(8, 4, 16, 16, generator=g).to(device), uniloss.KeypointTarget(*to(
            torch.rand(8, 4, 2, generator=g) * 15, torch.ones(8, 4, dtype=torch.bool), torch.full((8,), 4.0)))),
    }


CASES = [
    # (name, metric, batch, baseline name, baseline)
    ("top_k_accuracy(5)", lambda: zoo.top_k_accuracy(5), "128 x 100", "CE", _ce),
    ("macro_f1(10)", lambda: zoo.macro_f1(10), "128 x 10", "CE", _ce),
    ('macro_f1(10, pairs="all")', lambda: zoo.macro_f1(10, pairs="all"), "128 x 10", "CE", _ce),
    ("balanced_accuracy(10)", lambda: zoo.balanced_accuracy(10), "128 x 10", "CE", _ce),
    ("matthews_corrcoef(10)", lambda: zoo.matthews_corrcoef(10), "128 x 10", "CE", _ce),
    ("macro_f1(100)", lambda: zoo.macro_f1(100), "128 x 100", "CE", _ce),
    ("f_beta(1.0)", lambda: zoo.f_beta(1.0), "binary 128", "BCE", _bce),
    ("precision()", lambda: zoo.precision(), "binary 128", "BCE", _bce),
    ("recall()", lambda: zoo.recall(), "binary 128", "BCE", _bce),
    ("auroc()", lambda: zoo.auroc(), "binary 128, 10% positive", "BCE", _bce),
    ("average_precision()", lambda: zoo.average_precision(), "binary 128, 10% positive", "BCE", _bce),
    ("precision_at_k(5)", lambda: zoo.precision_at_k(5), "8 queries x 32 (0/1)", "BCE", _bce_relevance),
    ("recall_at_k(5)", lambda: zoo.recall_at_k(5), "8 queries x 32 (0/1)", "BCE", _bce_relevance),
    ("mrr()", lambda: zoo.mrr(), "8 queries x 32 (0/1)", "BCE", _bce_relevance),
    ("ndcg_at_k(5)", lambda: zoo.ndcg_at_k(5), "8 queries x 32 (grades 0-3)", "BCE", _bce_relevance),
    ("mean_iou(2)", lambda: zoo.mean_iou(2), "16 x 2 x 64 x 64", "CE", _ce),
    ("dice(2)", lambda: zoo.dice(2), "16 x 2 x 64 x 64", "CE", _ce),
    ("mean_iou(21)", lambda: zoo.mean_iou(21), "4 x 21 x 32 x 32", "CE", _ce),
    ("pck(0.5)", lambda: zoo.pck(0.5), "heatmaps 8 x 4 x 16 x 16", "MSE", _mse_heatmaps),
    # The paper's hand-written decompositions with the same bits, for comparison.
    ("uniloss.MulticlassAccuracy()", lambda: uniloss.MulticlassAccuracy(), "128 x 10", "CE", _ce),
    ("uniloss.AveragePrecision()", lambda: uniloss.AveragePrecision(), "binary 128, 10% positive", "BCE", _bce),
    ("uniloss.PCK(0.5)", lambda: uniloss.PCK(0.5), "heatmaps 8 x 4 x 16 x 16", "MSE", _mse_heatmaps),
]


def main(argv=None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--inner", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--only", nargs="+", help="case names to run (default: all)")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--md", help="write the table (markdown) to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    data = batches(args.device)
    rows: List[Dict] = []
    for name, make, batch, base_name, base_fn in CASES:
        if args.only and name not in args.only:
            continue
        scores, target = data[batch]
        metric = make()
        bits = metric.comparisons(scores, metric.prepare(scores, target)).numel()
        ul = timed_step(uniloss.UniLoss(metric, generator=torch.Generator().manual_seed(0)), scores, target)
        base = timed_step(base_fn, scores, target)
        for _ in range(args.warmup):
            ul()
            base()
        t_ul, t_base = [], []
        for _ in range(args.repeats):  # interleaved: noise hits both
            t_ul.append(time_call(ul, args.inner))
            t_base.append(time_call(base, args.inner))
        q = lambda xs: statistics.quantiles(xs, n=4)  # noqa: E731
        rows.append(dict(
            metric=name, batch=batch, comparisons=bits, baseline=base_name,
            uniloss_ms=statistics.median(t_ul) * 1e3, uniloss_iqr_ms=(q(t_ul)[2] - q(t_ul)[0]) * 1e3,
            baseline_ms=statistics.median(t_base) * 1e3, baseline_iqr_ms=(q(t_base)[2] - q(t_base)[0]) * 1e3,
            ratio=statistics.median(t_ul) / statistics.median(t_base),
        ))
        print(f"{name:28s} {batch:28s} l={bits:7d}  {rows[-1]['uniloss_ms']:8.3f} ms  "
              f"{base_name} {rows[-1]['baseline_ms']:.3f} ms  {rows[-1]['ratio']:.1f}x", flush=True)
    report = dict(
        machine=f"{platform.machine()} {platform.processor() or ''}".strip() + f", {torch.get_num_threads()} threads",
        python=platform.python_version(), torch=torch.__version__, device=args.device,
        date=time.strftime("%Y-%m-%d"), repeats=args.repeats, inner=args.inner, rows=rows,
        load_average=[load_before, os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")],
    )
    lines = [
        f"# {report['machine']}, torch {report['torch']}, {args.device}, {report['date']}, "
        f"median of {args.repeats} repeats of {args.inner} calls (± half the interquartile range); "
        f"1-minute load average {report['load_average'][0]:.1f} before, {report['load_average'][1]:.1f} after "
        "(other jobs share the machine: compare ratios within one table, not absolute times across runs)",
        "",
        "| metric | batch | comparisons l | UniLoss (ms) | baseline (ms) | ratio |",
        "|---|---|---|---|---|---|",
    ] + [
        f"| `{r['metric']}` | {r['batch']} | {r['comparisons']:,} | {r['uniloss_ms']:.2f} ± {r['uniloss_iqr_ms'] / 2:.2f} | "
        f"{r['baseline']} {r['baseline_ms']:.3f} | {r['ratio']:.0f}x |"
        for r in rows
    ]
    print("\n" + "\n".join(lines))
    if args.md:
        with open(args.md, "w") as fh:
            fh.write("\n".join(lines) + "\n")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
    return report


if __name__ == "__main__":
    main()
