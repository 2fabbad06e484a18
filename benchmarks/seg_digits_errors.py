"""Where the pixels go wrong on eleven-class mean IoU: each loss's test errors, class by class.

    python benchmarks/seg_digits_errors.py --jobs 2   # writes docs/results/metric-wins/seg-miou-digits-errors.{md,json}
    python benchmarks/seg_digits_errors.py --quick    # a smoke run: seed 0, per-pixel CE, the quick schedule

The ``seg-miou-digits`` probe task of the metric-wins suite (MNIST digits labelled by their class
on noisy, occluded images: eleven classes, background 0; ``uniloss reproduce metric-wins --tasks
seg-miou-digits``) trained again with each loss at its best rate of that task's grid (per-pixel
cross-entropy 2x, Lovász-softmax 8x, UniLoss at its defaults 2x; ``--losses`` names others as
``loss@scale``, the losses of ``uniloss.experiments.metric_wins.run_segmentation``), the same
seeds and the same data drawn by each seed, so each run's mean IoU repeats the grid's (the script
checks its own count against the run's). Its test predictions are then counted against the
labels, 11 x 11, and the errors split by kind: a digit's pixel called background (*missed*), a
background pixel called a digit (*spurious*), a digit's pixel called another digit (*wrong
digit*), each as a share of the pixels of its true kind, the missed ones also split into those
under the occluding 10x10 patch, where only the rest of the digit's shape tells, and those
visible (shares of all the digits' pixels that add up to the missed share); beside them the
background's IoU, the ten digits' mean IoU, and the IoU of "any digit" against background (the
two-class task's score, blind to which digit).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any, Optional

import torch
from torch import Tensor

import uniloss.experiments.metric_wins as mw
from uniloss.experiments.loop import run_jobs
from uniloss.experiments.reproduce import command_line, machine

CLASSES = 11
#: Each loss at its best rate of the task's grid (docs/results/metric-wins/seg-miou-digits-8x/).
DEFAULT_LOSSES = ["ce@2", "lovasz@8", "uniloss@2"]
LABELS = {"ce": "per-pixel cross-entropy", "lovasz": "Lovász-softmax", "uniloss": "UniLoss (defaults)"}


def confusion(pred: Tensor, target: Tensor, classes: int = CLASSES) -> Tensor:
    """``[classes, classes]`` int64 counts, row the true class, column the predicted one."""
    return torch.bincount(target.reshape(-1) * classes + pred.reshape(-1), minlength=classes * classes).reshape(
        classes, classes)


def breakdown(counts: Tensor) -> dict[str, Any]:
    """The errors of a confusion matrix (class 0 the background): mean IoU over the classes present
    in the labels or the predictions (``uniloss.zoo.mean_iou``'s), each class's IoU (``None`` where
    absent from both), the background's, the digits' mean, "any digit" against background, and the
    three kinds of error as shares (missed and wrong digit of the digits' pixels, spurious of the
    background's)."""
    c = counts.double()
    tp = c.diag()
    union = c.sum(0) + c.sum(1) - tp
    iou = [float(t / u) if u > 0 else None for t, u in zip(tp, union)]
    present = [v for v in iou if v is not None]
    digits = [v for v in iou[1:] if v is not None]
    fg_true, fg_pred = c[1:].sum(), c[:, 1:].sum()
    fg_tp = c[1:, 1:].sum()
    return dict(miou=sum(present) / len(present), iou=iou, background=iou[0],
                digits=sum(digits) / len(digits) if digits else float("nan"),
                any_digit=float(fg_tp / (fg_true + fg_pred - fg_tp)),
                missed=float(c[1:, 0].sum() / fg_true), spurious=float(c[0, 1:].sum() / c[0].sum()),
                wrong_digit=float((fg_tp - tp[1:].sum()) / fg_true))


def by_patch(pred: Tensor, target: Tensor, hidden: Tensor) -> dict[str, float]:
    """The missed digit pixels (a digit's pixel called background) split by ``hidden`` (the
    pixels under the occluding patch), each a share of all the digits' pixels (the two add up to
    :func:`breakdown`'s ``missed``), and the share of the digits' pixels that are hidden."""
    digit = target > 0
    missed = digit & (pred == 0)
    total = digit.sum().double()
    return dict(missed_hidden=float((missed & hidden).sum() / total),
                missed_visible=float((missed & ~hidden).sum() / total), hidden_share=float((digit & hidden).sum() / total))


def run(job: tuple[str, float, int, bool, Optional[str]]) -> dict[str, Any]:
    """One training run, ``(loss, learning-rate scale, seed, quick, data dir)``: the run's curve
    and the test split's :func:`breakdown` and :func:`by_patch`."""
    loss, scale, seed, quick, data_dir = job
    torch.set_num_threads(1)
    mw._LR_SCALE = scale  # (the suite's --lr-scales)
    trained: list = []
    # the task's own call (metric_wins.TASKS["seg-miou-digits"]: the data drawn by the seed) and its test split
    curve = mw.run_segmentation(loss, seed, quick, {}, data_dir=data_dir, draw=seed, digits=True, trained=trained)
    model, x, target = trained[0]
    with torch.no_grad():
        pred = model(x).argmax(1)
    found = breakdown(confusion(pred, target))
    found.update(by_patch(pred, target, hidden=x[:, 0] == 0))  # the patch is 0; the noise elsewhere never is
    if abs(found["miou"] - curve[-1]) > 1e-4:  # the counts here and the suite's metric must agree
        raise RuntimeError(f"{loss}@{scale:g} seed {seed}: mean IoU {found['miou']:.6f} from the counts, "
                           f"{curve[-1]:.6f} from the run")
    return dict(curve=curve, **found)


def _stats(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def table(results: dict[tuple[str, float], list[dict[str, Any]]]) -> list[str]:
    """The page's tables: the scores and the errors (x100, mean ± std over the seeds), and each
    row's difference to the last row (UniLoss at the defaults), seed by seed."""
    columns = [("miou", "mean IoU"), ("background", "background IoU"), ("digits", "digits' mean IoU"),
               ("any_digit", "any digit IoU"), ("missed", "missed, % of digit pixels"),
               ("missed_hidden", "of them under the patch"), ("missed_visible", "of them visible"),
               ("spurious", "spurious, % of background"), ("wrong_digit", "wrong digit, % of digit pixels")]
    lines = ["| loss | lr x | " + " | ".join(label for _, label in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for (loss, scale), runs in results.items():
        cells = " | ".join("{:.2f} ± {:.2f}".format(*_stats([100 * r[key] for r in runs])) for key, _ in columns)
        lines.append(f"| {LABELS.get(loss, loss)} | {scale:g} | {cells} |")
    *others, (last, last_scale) = results
    if others:
        lines += ["", f"{LABELS.get(last, last)} ({last_scale:g}x) minus each other row, seed by seed "
                  "(x100; for the error shares, a negative difference is fewer errors):", "",
                  "| against | " + " | ".join(label for _, label in columns) + " |",
                  "|---|" + "---|" * len(columns)]
        for key in others:
            gaps = [[100 * (u[column] - o[column]) for u, o in zip(results[(last, last_scale)], results[key])]
                    for column, _ in columns]
            lines.append(f"| {LABELS.get(key[0], key[0])} ({key[1]:g}x) | "
                         + " | ".join("{:+.2f} ± {:.2f}".format(*_stats(gap)) for gap in gaps) + " |")
    per_class = ["", "Each class's IoU (x100, mean over the seeds; class 0 the background, class d + 1 the "
                 "digit d; – where no seed has the class in its labels or predictions):", "",
                 "| loss | " + " | ".join(str(c) for c in range(CLASSES)) + " |", "|---|" + "---|" * CLASSES]
    for (loss, scale), runs in results.items():
        seen = [[100 * r["iou"][c] for r in runs if r["iou"][c] is not None] for c in range(CLASSES)]
        per_class.append(f"| {LABELS.get(loss, loss)} ({scale:g}x) | "
                         + " | ".join(f"{statistics.mean(v):.1f}" if v else "–" for v in seen) + " |")
    return lines + per_class


def publish(lines: list[str], minutes: float, args: argparse.Namespace, argv: Optional[list[str]], script: str,
            doc: str, start: str, title: str, caption: str, seeds: list[int], payload: dict[str, Any]) -> None:
    """Print ``lines`` and, unless ``args.quick``, write ``args.out``.md (the title, ``doc`` from
    ``start``, the caption with the seeds, the machine, the date and the command that reruns
    ``script`` with ``argv``, then ``lines``) and ``args.out``.json (the command, machine, date,
    seeds, minutes and ``payload``): the pages of this script and of ``seg_digits_steps.py``."""
    print("\n".join(lines) + f"\n\n{minutes:.1f} minutes", flush=True)
    if args.quick:
        return
    command = command_line(script, argv)
    text = doc[doc.index(start):].replace("``", "`").strip()
    write_pages(args.out, title, text, caption, seeds, args.jobs, minutes, command, lines, payload)


def write_pages(out: str, title: str, text: str, caption: str, seeds: list[int], jobs: int, minutes: float,
                command: str, lines: list[str], payload: dict[str, Any]) -> None:
    """``out``.md (the title, ``text``, the caption with the seeds, the machine, the date and the
    command, then ``lines``) and ``out``.json (the command, machine, date, seeds, minutes and
    ``payload``)."""
    with open(out + ".md", "w") as f:
        f.write(f"# {title}\n\n{text}\n\n{caption}, mean ± std over seeds {seeds}; {machine()}, one thread a run, "
                f"{jobs} at a time, {time.strftime('%Y-%m-%d')}, {minutes:.1f} minutes. Command: `{command}`.\n\n"
                + "\n".join(lines) + "\n")
    with open(out + ".json", "w") as f:
        json.dump(dict(command=command, machine=machine(), date=time.strftime("%Y-%m-%d"), seeds=seeds,
                       minutes=minutes, **payload), f, indent=1)


def _parse(spec: str) -> tuple[str, float]:
    loss, _, scale = spec.partition("@")
    if loss not in ("ce", "lovasz", "uniloss") or not scale:
        raise argparse.ArgumentTypeError(f"{spec!r}: give loss@scale, loss one of ce, lovasz, uniloss")
    return loss, float(scale)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--losses", type=_parse, nargs="+", default=[_parse(s) for s in DEFAULT_LOSSES],
                        help="loss@scale, the last one compared with the others (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a smoke run: seed 0, per-pixel CE, the quick schedule")
    parser.add_argument("--data-dir", default=None, help="MNIST's folder (default: $UNILOSS_DATA or the cache)")
    parser.add_argument("--out", default="docs/results/metric-wins/seg-miou-digits-errors")
    args = parser.parse_args(argv)
    seeds, losses = ([0], [("ce", 2.0)]) if args.quick else (args.seeds, args.losses)
    start = time.time()
    jobs = [(loss, scale, s, args.quick, args.data_dir) for loss, scale in losses for s in seeds]
    done = run_jobs(run, jobs, args.jobs)
    minutes = (time.time() - start) / 60
    results = {(loss, scale): [done[(loss, scale, s, args.quick, args.data_dir)] for s in seeds]
               for loss, scale in losses}
    rows = [dict(loss=loss, lr_scale=scale, label=LABELS.get(loss, loss), runs=runs)
            for (loss, scale), runs in results.items()]
    publish(table(results), minutes, args, argv, "benchmarks/seg_digits_errors.py", __doc__ or "", "The ``seg-miou",
            "Eleven-class mean IoU: where each loss's pixels go wrong", "Test split, x100", seeds, dict(rows=rows))


if __name__ == "__main__":
    main()
