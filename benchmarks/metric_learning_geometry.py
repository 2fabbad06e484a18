"""Where the similarities end: the cosines of one draw's trained embeddings, by loss and rate.

    python benchmarks/metric_learning_geometry.py    # writes docs/results/metric-wins/metric-learning-geometry.{md,json}
    python benchmarks/metric_learning_probe.py --help   # the probe these runs come from

One run of `benchmarks/metric_learning_probe.py`'s grid for each `--runs` entry, `LOSS@SCALE`
or `LOSS@SCALE@JSON` (UniLoss keywords): draw 0 unless `--draw`, 5 epochs. Each trained embedding
is read on the first 2,000 test images of the training classes: the quantiles of the cosine
similarities of the pairs that share a class (relevant) and of those that do not (irrelevant),
the mAP of those images' retrieval, and the learnt offset of the `uniloss-offset` row (the
threshold the scaled cosines are measured from: `offset / 20` in cosine units, 20 the probe's
scale; 0 for the rows that do not learn it).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import torch

from uniloss.experiments.loop import run_jobs
from uniloss.experiments.reproduce import command_line, machine

QUANTILES = (0.05, 0.5, 0.95)
RUNS = ["uniloss@0.0625", "uniloss@1", "uniloss@1@{\"pull_per\": \"comparison\"}", "uniloss-offset@0.0625",
        "uniloss-offset@1", "uniloss-centred@1"]


def _one(job):
    from uniloss.experiments import metric_wins as mw
    from uniloss.experiments.metric_learning import query_pairs, retrieval_metrics, unseen_classes

    torch.set_num_threads(1)
    loss, scale, options, draw, epochs = job
    mw._LR_SCALE = scale  # (the suite's --lr-scales, as the probe sets it)
    trained: list = []
    mw.run_metric_learning(loss, draw, True, json.loads(options), draw=draw, epochs=epochs, trained=trained)
    model, split = trained[0], unseen_classes(draw)
    with torch.no_grad():
        e, y = model(split.x_seen[:2000]), split.y_seen[:2000]
        s, relevant, _ = query_pairs(e, y)
    return dict(map_seen=retrieval_metrics(e, y)[0], offset=float(model.offset.detach()),
                relevant=[float(q) for q in torch.quantile(s[relevant == 1], torch.tensor(QUANTILES))],
                irrelevant=[float(q) for q in torch.quantile(s[relevant == 0], torch.tensor(QUANTILES))])


def main(argv=None):
    from uniloss.experiments.metric_wins import SIMILARITY_SCALE

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", default=RUNS, metavar="LOSS@SCALE[@JSON]")
    parser.add_argument("--draw", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default="docs/results/metric-wins/metric-learning-geometry")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    start = time.time()
    jobs = []
    for run in args.runs:
        loss, scale, *options = run.split("@", 2)
        jobs.append((loss, float(scale), json.dumps(json.loads(options[0] if options else "{}"), sort_keys=True),
                     args.draw, args.epochs))
    values = run_jobs(_one, jobs, args.jobs)
    command = command_line("benchmarks/metric_learning_geometry.py", argv)
    report = dict(table="metric-learning geometry", machine=f"{machine()}, {args.jobs} runs at a time, 1 thread a run",
                  date=time.strftime("%Y-%m-%d"), command=command, draw=args.draw, epochs=args.epochs,
                  minutes=round((time.time() - start) / 60, 1), quantiles=list(QUANTILES),
                  runs=[dict(loss=j[0], lr_scale=j[1], options=json.loads(j[2]), **values[j]) for j in jobs])
    with open(args.out + ".json", "w") as f:
        json.dump(report, f, indent=1)
    title, _, rest = (__doc__ or "").partition("\n\n")
    q = " / ".join(f"{x:g}" for x in QUANTILES)
    lines = [f"# {title.rstrip('.')}", "", rest.split("\n\n", 1)[1].strip(), "",
             f"Draw {args.draw}, {args.epochs} epochs. {report['machine']}; torch {torch.__version__}; "
             f"{report['date']}; {report['minutes']} minutes. Regenerate: `{command}`.", "",
             f"| loss | rate / 0.1 | keywords | mAP x100 | learnt offset (cosine units) | relevant cosines, "
             f"quantiles {q} | irrelevant cosines, quantiles {q} |", "|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        lines.append(f"| {r['loss']} | {r['lr_scale']:g} | {json.dumps(r['options']) if r['options'] else '-'} | "
                     f"{100 * r['map_seen']:.2f} | {r['offset']:.2f} ({r['offset'] / SIMILARITY_SCALE:.3f}) | "
                     + " / ".join(f"{v:.3f}" for v in r["relevant"]) + " | "
                     + " / ".join(f"{v:.3f}" for v in r["irrelevant"]) + " |")
    page = "\n".join(lines) + "\n"
    pathlib.Path(args.out + ".md").write_text(page)
    print(page, end="")
    return report


if __name__ == "__main__":
    main()
