"""How large is UniLoss's step next to the usual loss's at one learning rate, and does that explain
where it trails on imbalanced AP?

    python benchmarks/step_size_probe.py          # writes docs/results/metric-wins/step-size.{md,json}

Part 1, the step: along a trajectory trained with the usual loss (so both losses see the same
models and batches), the gradient of each loss on 20 batches at a few epochs: its L1 and L2 norms
on the scores, its L2 norm on the network's parameters, and the cosine between the two losses'
parameter gradients. Two tasks of the metric-wins suite: ``imb-ap`` (binary cross-entropy against
``AveragePrecision()``, draw 0, network seed 1) and ``digits-f1`` (cross-entropy against
``zoo.macro_f1(10)``, network seed 0).

Part 2, the consequence: the ``imb-ap`` task on eight draws of its data (``--draws``; see
``benchmarks/data_draws_probe.py``), the full schedule (40 epochs), at 0.5x and 1x the recipe's rate,
network seeds ``--seeds``: binary cross-entropy, UniLoss at its defaults, and UniLoss with its
gradient on the scores rescaled to binary cross-entropy's L2 norm on the same batch (a hook on the
scores: the direction UniLoss's, the size the usual loss's; an experiment, not a library option).
Test AP x100; UniLoss minus binary cross-entropy seed by seed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import torch
import torch.nn.functional as F

from uniloss.experiments.reproduce import command_line, machine

EPOCHS = [0, 5, 10, 20, 30, 39]  # where part 1 measures (of 40 epochs; digits: of 30)
LOSSES = [("binary cross-entropy", "bce"), ("UniLoss (defaults)", "uniloss"),
          ("UniLoss, the step rescaled to BCE's L2 norm on the scores", "uniloss-l2")]


def _norms(model, logits, loss, x, y) -> "tuple[float, float, torch.Tensor]":
    """``(L1 on the scores, L2 on the scores, parameter gradient)`` of ``loss(logits(x), y)``."""
    model.zero_grad()
    scores = logits(x)
    scores.retain_grad()
    loss(scores, y).backward()
    g = scores.grad
    return float(g.abs().sum()), float(g.norm()), torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def step_sizes(task: str) -> list:
    """Part 1 on ``task`` (``"imb-ap"`` or ``"digits-f1"``): one row per measured epoch."""
    import uniloss
    from uniloss import zoo
    from uniloss.experiments import metric_wins as mw

    torch.set_num_threads(1)
    if task == "imb-ap":
        xtr, ytr, *_ = mw.imbalanced_binary(0)
        model = mw.seeded(1, lambda: mw.mlp(20, 64, 64, 1))
        ul = uniloss.UniLoss(uniloss.AveragePrecision(), generator=torch.Generator().manual_seed(1))
        usual = lambda s, y: F.binary_cross_entropy_with_logits(s, y.float())  # noqa: E731
        logits = lambda x: model(x).reshape(-1)  # noqa: E731
        epochs = 40
    else:
        xtr, _, ytr, _ = mw.digits_split(0, test_size=0.25)
        model = mw.seeded(0, lambda: mw.mlp(64, 128, 10))
        ul = uniloss.UniLoss(zoo.macro_f1(10), generator=torch.Generator().manual_seed(1))
        usual, logits = F.cross_entropy, model
        epochs = 30
    opt = mw.sgd(model, 0.1)
    scheduler = mw.cosine(opt, epochs)
    batches = mw.shuffled(len(ytr), 128, torch.Generator().manual_seed(0))
    rows = []
    for epoch in range(epochs):
        if epoch in EPOCHS or epoch == epochs - 1:
            per = []
            for idx in batches(1000 + epoch)[:20]:
                x, y = xtr[idx], ytr[idx]
                l1u, l2u, gu = _norms(model, logits, usual, x, y)
                l1m, l2m, gm = _norms(model, logits, ul, x, y)
                per.append(dict(l1=l1m / l1u, l2=l2m / l2u, params=float(gm.norm() / gu.norm()),
                                cosine=float(gm @ gu / (gm.norm() * gu.norm()).clamp_min(1e-30))))
            rows.append(dict(task=task, epoch=epoch + 1, **{k: statistics.mean(p[k] for p in per) for k in per[0]}))
        for idx in batches(epoch):
            opt.zero_grad()
            usual(logits(xtr[idx]), ytr[idx]).backward()
            opt.step()
        scheduler.step()
    return rows


def _train(job) -> float:
    import uniloss
    from uniloss.experiments import metric_wins as mw

    torch.set_num_threads(1)
    loss, draw, seed, scale = job
    mw._LR_SCALE = scale
    xtr, ytr, _, _, xte, yte = mw.imbalanced_binary(draw)
    model = mw.seeded(seed, lambda: mw.mlp(20, 64, 64, 1))
    ul = uniloss.UniLoss(uniloss.AveragePrecision(), generator=torch.Generator().manual_seed(seed + 1000))

    def fn(s, y):
        if loss == "bce":
            return F.binary_cross_entropy_with_logits(s, y.float())
        if loss == "uniloss-l2":
            usual = (torch.sigmoid(s.detach()) - y.float()) / len(y)  # BCE's gradient on the scores

            def rescale(g):
                return g * (usual.norm() / g.norm().clamp_min(1e-30))

            s.register_hook(rescale)
        return ul(s, y)

    opt = mw.sgd(model, 0.1)
    curve = mw.fit(model, opt, mw.shuffled(len(ytr), 128, torch.Generator().manual_seed(seed)),
                   lambda m, idx: fn(mw._binary_logits(m, xtr[idx]), ytr[idx]), 40,
                   lambda m: mw.average_precision(mw._binary_logits(m, xte), yte), mw.cosine(opt, 40))
    return 100 * curve[-1]


def _spread(values):
    return statistics.stdev(values) if len(values) > 1 else 0.0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--draws", type=int, nargs="+", default=list(range(8)))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="network seeds on every draw")
    parser.add_argument("--lr-scales", type=float, nargs="+", default=[0.5, 1.0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default="docs/results/metric-wins/step-size")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    start = time.time()
    jobs = [(loss, d, s, x) for x in args.lr_scales for d in args.draws for _, loss in LOSSES for s in args.seeds]
    with ProcessPoolExecutor(args.jobs) as pool:
        sizes = list(pool.map(step_sizes, ["imb-ap", "digits-f1"]))
        values = dict(zip(jobs, pool.map(_train, jobs)))
    rows = []
    for scale in args.lr_scales:
        per = {loss: [statistics.mean(values[(loss, d, s, scale)] for s in args.seeds) for d in args.draws]
               for _, loss in LOSSES}
        for label, loss in LOSSES:
            row = dict(lr_scale=scale, loss=label, mean=statistics.mean(per[loss]), std=_spread(per[loss]),
                       per_draw=per[loss])
            if loss != "bce":
                diff = [a - b for a, b in zip(per[loss], per["bce"])]
                row.update(difference=diff, difference_mean=statistics.mean(diff), difference_std=_spread(diff),
                           ahead=sum(d > 0 for d in diff))
            rows.append(row)
            print(f"lr x{scale:g} {label:60s} {row['mean']:.2f}"
                  + (f"  {row['difference_mean']:+.2f} ± {row['difference_std']:.2f}" if "difference" in row else ""),
                  flush=True)
    command = command_line("benchmarks/step_size_probe.py", argv)
    report = dict(table="step-size", machine=f"{machine()}, {args.jobs} runs at a time, 1 thread a run",
                  date=time.strftime("%Y-%m-%d"), command=command, draws=args.draws, seeds=args.seeds,
                  minutes=round((time.time() - start) / 60, 1), step_sizes=sizes[0] + sizes[1], rows=rows)
    with open(args.out + ".json", "w") as f:
        json.dump(report, f, indent=1)
    lines = ["# UniLoss's step beside the usual loss's", "",
             f"{report['machine']}; {report['date']}; {report['minutes']} minutes. Regenerate: `{command}`.", "",
             "## The step at one learning rate", "",
             "Along a trajectory trained with the usual loss, UniLoss's gradient over the usual loss's on the same "
             "model and batch (mean of 20 batches): L1 and L2 norms on the scores, L2 norm on the parameters, and "
             "the cosine of the two parameter gradients. `imb-ap`: binary cross-entropy against "
             "`AveragePrecision()` (draw 0, network seed 1, 40 epochs); `digits-f1`: cross-entropy against "
             "`zoo.macro_f1(10)` (network seed 0, 30 epochs).", "",
             "| task | epoch | L1 on the scores | L2 on the scores | L2 on the parameters | cosine |",
             "|---|---|---|---|---|---|"]
    for r in report["step_sizes"]:
        lines.append(f"| {r['task']} | {r['epoch']} | {r['l1']:.2f}x | {r['l2']:.2f}x | {r['params']:.2f}x | {r['cosine']:.2f} |")
    lines += ["", "## Imbalanced AP with UniLoss's step at the usual loss's size", "",
              f"The `imb-ap` task (2% random labels), full schedule (40 epochs), draws {args.draws} of its data, "
              f"network seeds {args.seeds} on each. Test AP x100: mean ± std over the draws of each draw's mean over "
              "the seeds; the difference to binary cross-entropy draw by draw.", "",
              "| lr x | loss | test AP | minus BCE (mean ± std) | ahead on | " + " | ".join(f"draw {d}" for d in args.draws) + " |",
              "|---|---|---|---|---|" + "---|" * len(args.draws)]
    for r in rows:
        if "difference" in r:
            cells = f"{r['difference_mean']:+.2f} ± {r['difference_std']:.2f} | {r['ahead']} of {len(args.draws)} | " + \
                " | ".join(f"{d:+.2f}" for d in r["difference"])
        else:
            cells = " | | " + " | ".join(f"{v:.2f}" for v in r["per_draw"])
        lines.append(f"| {r['lr_scale']:g} | {r['loss']} | {r['mean']:.2f} ± {r['std']:.2f} | {cells} |")
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    return report


if __name__ == "__main__":
    main()
