"""Does UniLoss's PCK win on digits-pose hold on other draws of the data?

    python benchmarks/pose_draws_probe.py          # writes docs/results/pose/draws.{md,json}
    python benchmarks/pose_draws_probe.py --draws 0 1 --epochs 1 --limit-train 64 --out pose-draws-smoke  # a smoke run (writes pose-draws-smoke.{md,json} here)
    python benchmarks/pose_draws_probe.py --threshold 0.25 --jobs 2 --out docs/results/pose/draws-pck025-0.14

The pose reproduction's reduced task (``uniloss reproduce pose``: find the 0 on 64x64 MNIST
canvases, hourglass width 32, 1,280 training canvases, 10 epochs of RMSProp) renders its canvases
from fixed seeds, so its seeds vary the network's initialisation and the batches, not the data.
This probe draws the canvases again (every split; ``draw`` of
:func:`uniloss.experiments.pose.data.digits_pose_split`, draw 0 the benchmark's own) and trains
UniLoss at its defaults and the strongest baseline of the metric-wins table (MSE against Gaussian
heatmaps of sigma 1) on each draw with the network seed equal to the draw. It reports each loss's
test PCK@0.5 x100 (mean ± std over the draws) and UniLoss minus MSE draw by draw (same
initialisation, batches and data). ``--threshold 0.25`` trains and scores PCK@0.25 instead: UniLoss
is then ``uniloss-pck0.25`` (``UniLoss(PCK(0.25))``), and MSE keeps sigma 1, the best sigma at
PCK@0.25 on the benchmark's own draw too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial

from uniloss.experiments.reproduce import command_line, machine

LOSSES = [("MSE, sigma 1", "mse-sigma-1"), ("UniLoss (defaults)", "uniloss")]
#: ``--threshold``: (UniLoss's loss name, the metric read from the run) for each PCK threshold.
THRESHOLDS = {0.5: ("uniloss", "pck"), 0.25: ("uniloss-pck0.25", "pck_0.25")}


def _one(job):
    from uniloss.experiments.pose.data import load_digits_pose
    from uniloss.experiments.pose.model import REDUCED
    from uniloss.experiments.registry import EXPERIMENTS
    from uniloss.experiments.train import RunOptions, run_training

    draw, loss, epochs, limit, data_dir, metric = job
    exp = dataclasses.replace(EXPERIMENTS["digits-pose"], load=partial(load_digits_pose, train=REDUCED.train, draw=draw))
    with tempfile.TemporaryDirectory() as out:
        final = run_training(exp, RunOptions(loss=loss, seed=draw, epochs=epochs, out=out, threads=1, progress=False,
                                             limit_train=limit, data_dir=data_dir))
    return final["test"][metric]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--draws", type=int, nargs="+", default=list(range(6)))
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's (10)")
    parser.add_argument("--limit-train", type=int, default=None, help="the first N training canvases (smoke runs)")
    parser.add_argument("--data-dir", default=None, help="where MNIST is (see uniloss.experiments.data)")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--out", default="docs/results/pose/draws")
    parser.add_argument("--threshold", type=float, default=0.5, choices=sorted(THRESHOLDS),
                        help="the PCK threshold UniLoss trains and both losses are scored on (default 0.5)")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    start = time.time()
    uniloss_name, metric = THRESHOLDS[args.threshold]
    losses = [(label, uniloss_name if loss == "uniloss" else loss) for label, loss in LOSSES]
    jobs = [(d, loss, args.epochs, args.limit_train, args.data_dir, metric) for d in args.draws for _, loss in losses]
    with ProcessPoolExecutor(args.jobs) as pool:
        values = dict(zip(jobs, pool.map(_one, jobs)))
    per = {label: [100 * values[(d, loss, args.epochs, args.limit_train, args.data_dir, metric)] for d in args.draws]
           for label, loss in losses}
    (b, _), (u, _) = losses
    diff = [x - y for x, y in zip(per[u], per[b])]
    spread = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
    command = command_line("benchmarks/pose_draws_probe.py", argv)
    report = dict(table="pose-draws", machine=f"{machine()}, {args.jobs} run(s) at a time, 1 thread a run",
                  date=time.strftime("%Y-%m-%d"), command=command, draws=args.draws, threshold=args.threshold, epochs=args.epochs or 10,
                  minutes=round((time.time() - start) / 60, 1), per_draw=per, difference=diff,
                  mean={k: statistics.mean(v) for k, v in per.items()}, std={k: spread(v) for k, v in per.items()},
                  difference_mean=statistics.mean(diff), difference_std=spread(diff),
                  uniloss_ahead=sum(d > 0 for d in diff))
    with open(args.out + ".json", "w") as f:
        json.dump(report, f, indent=1)
    lines = [f"# PCK@{args.threshold:g} on other draws of digits-pose", "",
             f"The pose reproduction's reduced task with its canvases drawn again (draws {args.draws}; draw 0 the "
             f"benchmark's own), network seed = draw, {report['epochs']} epochs"
             + (f", the first {args.limit_train} training canvases" if args.limit_train else "")
             + (f", UniLoss trained on PCK@{args.threshold:g} (`{uniloss_name}`)" if args.threshold != 0.5 else "")
             + f". Test PCK@{args.threshold:g} x100. {report['machine']}; {report['date']}; {report['minutes']} minutes. "
             f"Regenerate: `{command}`.", "",
             "| loss | mean ± std over draws | " + " | ".join(f"draw {d}" for d in args.draws) + " |",
             "|---|---|" + "---|" * len(args.draws)]
    for label, _ in losses:
        lines.append(f"| {label} | {report['mean'][label]:.2f} ± {report['std'][label]:.2f} | "
                     + " | ".join(f"{x:.2f}" for x in per[label]) + " |")
    lines.append(f"| UniLoss minus MSE | {report['difference_mean']:+.2f} ± {report['difference_std']:.2f} "
                 f"(ahead on {report['uniloss_ahead']} of {len(diff)}) | " + " | ".join(f"{d:+.2f}" for d in diff) + " |")
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return report


if __name__ == "__main__":
    main()
