"""Is the imbalanced-AP gap the label noise's or the data set's? The same task on other draws.

    python benchmarks/data_draws_probe.py          # writes docs/results/metric-wins/data-draws.{md,json}
    python benchmarks/data_draws_probe.py --full --lr-scales 0.5 1 --flips 0 0.02 --out docs/results/metric-wins/data-draws-full

The metric-wins task ``imb-ap`` (``make_classification``, 5% positives, MLP 20-64-64-1, SGD; by
default the quick schedule of 20 epochs at the recipe's rate, ``--full``: 40 epochs) fixes one data set: ``random_state=0``. Its seeds
vary the network's initialisation and the batches, so their spread leaves out the data's. This
probe draws the data set again (``random_state`` = the draw, ``--draws``) at three shares of
random labels (``flip_y`` 0, 0.02: the task's, 0.05) and, at each learning-rate scale
(``--lr-scales``, the suite's), trains binary cross-entropy and UniLoss at
its defaults on each draw with the same network seeds (``--seeds``). It reports, per share of
random labels, each loss's test AP x100 (mean ± std over draws, each draw the mean over the
network seeds) and UniLoss minus binary cross-entropy draw by draw (same initialisation and
batches), the task's own draw 0 apart.

Note that ``make_classification`` draws everything from one random stream whose use depends on
``flip_y``, so at one ``random_state`` two shares of random labels are two different data sets (no
row in common between 0 and 0.02 at ``random_state=0``):
``benchmarks/label_noise_probe.py`` compares its noise levels on draw 0 alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import torch

from uniloss.experiments.reproduce import command_line, machine

FLIPS = [0.0, 0.02, 0.05]  # make_classification's flip_y; 0.02: the imb-ap task's
LOSSES = [("binary cross-entropy", "bce"), ("UniLoss (defaults)", "uniloss")]


def _one(job):
    from uniloss.experiments import metric_wins as mw

    torch.set_num_threads(1)
    flip, scale, draw, (_, loss), seed, quick = job
    mw._LR_SCALE = scale  # (the suite's --lr-scales)
    return mw.run_imbalanced("ap", loss, seed, quick, {}, draw=draw, flip_y=flip)[-1]


def _spread(values):
    return statistics.stdev(values) if len(values) > 1 else 0.0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--draws", type=int, nargs="+", default=list(range(8)))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="network seeds on every draw")
    parser.add_argument("--flips", type=float, nargs="+", default=FLIPS)
    parser.add_argument("--lr-scales", type=float, nargs="+", default=[1.0],
                        help="the recipe's learning rate times each (a row each)")
    parser.add_argument("--full", action="store_true", help="the task's full schedule (40 epochs) instead of 20")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default="docs/results/metric-wins/data-draws")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    start = time.time()
    quick = not args.full
    jobs = [(f, x, d, l, s, quick) for f in args.flips for x in args.lr_scales for d in args.draws for l in LOSSES
            for s in args.seeds]
    with ProcessPoolExecutor(args.jobs) as pool:
        values = dict(zip(jobs, pool.map(_one, jobs)))
    rows = []
    for flip, scale in [(f, x) for f in args.flips for x in args.lr_scales]:
        # per draw: each loss's mean over the network seeds, and UniLoss minus BCE seed by seed
        per = {label: [100 * statistics.mean(values[(flip, scale, d, (label, loss), s, quick)] for s in args.seeds)
                       for d in args.draws] for label, loss in LOSSES}
        diff = [u - b for u, b in zip(per[LOSSES[1][0]], per[LOSSES[0][0]])]
        rows.append(dict(flip_y=flip, lr_scale=scale, draws=args.draws, per_draw=per, difference=diff,
                         mean={k: statistics.mean(v) for k, v in per.items()},
                         std={k: _spread(v) for k, v in per.items()},
                         difference_mean=statistics.mean(diff), difference_std=_spread(diff),
                         uniloss_ahead=sum(d > 0 for d in diff)))
        print(f"flip {flip} lr x{scale:g}: UniLoss - BCE {rows[-1]['difference_mean']:+.2f} ± {rows[-1]['difference_std']:.2f}, "
              f"ahead on {rows[-1]['uniloss_ahead']} of {len(diff)} draws", flush=True)
    command = command_line("benchmarks/data_draws_probe.py", argv)
    report = dict(table="data-draws", machine=f"{machine()}, {args.jobs} runs at a time, 1 thread a run",
                  date=time.strftime("%Y-%m-%d"), command=command, seeds=args.seeds, epochs=20 if quick else 40,
                  minutes=round((time.time() - start) / 60, 1), rows=rows)
    with open(args.out + ".json", "w") as f:
        json.dump(report, f, indent=1)
    b, u = (label for label, _ in LOSSES)
    zero = 0 in args.draws
    lines = ["# Imbalanced AP on other draws of its data", "",
             f"The metric-wins task `imb-ap` ({'quick schedule, 20' if quick else 'full schedule, 40'} epochs) with its data set drawn again: "
             f"`make_classification(random_state=draw)` for draws {args.draws}, each trained with network seeds "
             f"{args.seeds}. Test AP x100: mean ± std over the draws of each draw's mean over the seeds; "
             f"UniLoss minus binary cross-entropy draw by draw (same initialisation and batches)"
             + ("; the task's own draw 0 in its column" if zero else "") + f". {report['machine']}; "
             f"{report['date']}; {report['minutes']} minutes. Regenerate: `{command}`.", "",
             f"| random labels (flip_y) | lr x | {b} | {u} | difference (mean ± std) | UniLoss ahead on |"
             + (" draw 0's difference |" if zero else ""),
             "|---|---|---|---|---|---|" + ("---|" if zero else "")]
    for r in rows:
        mark = " (imb-ap)" if r["flip_y"] == 0.02 else ""
        cells = [f"{r['mean'][k]:.2f} ± {r['std'][k]:.2f}" for k in (b, u)]
        line = (f"| {r['flip_y']}{mark} | {r['lr_scale']:g} | " + " | ".join(cells)
                + f" | {r['difference_mean']:+.2f} ± {r['difference_std']:.2f} | {r['uniloss_ahead']} of {len(r['difference'])} draws |")
        if zero:
            line += f" {r['difference'][args.draws.index(0)]:+.2f} |"
        lines.append(line)
    lines += ["", "UniLoss minus binary cross-entropy on each draw:", "",
              "| random labels | lr x | " + " | ".join(f"draw {d}" for d in args.draws) + " |",
              "|---|---|" + "---|" * len(args.draws)]
    for r in rows:
        lines.append(f"| {r['flip_y']} | {r['lr_scale']:g} | " + " | ".join(f"{d:+.2f}" for d in r["difference"]) + " |")
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    return report


if __name__ == "__main__":
    main()
