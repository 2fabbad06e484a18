"""How large is each loss's step on eleven-class mean IoU, at the same learning rate?

    python benchmarks/seg_digits_steps.py --jobs 2   # writes docs/results/metric-wins/seg-miou-digits-steps.{md,json}
    python benchmarks/seg_digits_steps.py --quick    # a smoke run: seed 0, one epoch, two batches

On the ``seg-miou-digits`` probe task of the metric-wins suite (eleven classes; the data drawn by
the seed, ``DigitSegmenter`` initialised by it), a network is trained with per-pixel
cross-entropy at its best rate (2x, batch 32, SGD momentum 0.9, cosine over 10 epochs), and at
the start of epochs 0, 3, 6 and 9 each loss's gradient is taken on the same ten batches of 32
training images at that network: per-pixel cross-entropy, Lovász-softmax and UniLoss at its
defaults (``zoo.mean_iou(11)``). The L2 norm of the gradient on the network's parameters is the
size of the step each loss takes at one learning rate (SGD's step is the rate times it, before
momentum). The networks are cross-entropy's, so every loss is measured at the same models and
batches; BatchNorm's running statistics are restored after each measurement.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import uniloss
import uniloss.experiments.metric_wins as mw
from uniloss.experiments.loop import run_jobs, shuffled

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from seg_digits_errors import publish  # noqa: E402  (the pages' layout, shared)

EPOCHS = [0, 3, 6, 9]  # where the gradients are taken (of 10)
LABELS = {"ce": "per-pixel cross-entropy", "lovasz": "Lovász-softmax", "uniloss": "UniLoss (defaults)"}


def grad_norm(model: nn.Module, loss: Callable[[Tensor, Tensor], Tensor], x: Tensor, target: Tensor) -> float:
    """The L2 norm of ``loss(model(x), target)``'s gradient on ``model``'s parameters, the model's
    state (BatchNorm's running statistics included) left as it was."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.zero_grad()
    loss(model(x), target).backward()
    norm = torch.sqrt(sum(((p.grad.double() ** 2).sum() for p in model.parameters() if p.grad is not None),
                          torch.zeros((), dtype=torch.float64)))
    model.zero_grad()
    model.load_state_dict(state)
    return float(norm)


def run(job: tuple[int, float, int, int, Optional[str]]) -> dict[str, Any]:
    """``(seed, learning-rate scale, epochs, probe batches, data dir)``: ``{loss: {epoch: [norm per
    batch]}}`` along cross-entropy's trajectory."""
    seed, scale, epochs, count, data_dir = job
    torch.set_num_threads(1)
    train = 4000
    x, masks = mw.noisy_masks("train", train, seed=2 * seed, data_dir=data_dir, digits=True, noise=mw.DIGITS_NOISE)
    model = mw.seeded(seed, lambda: mw.DigitSegmenter(11))
    losses: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
        "ce": F.cross_entropy, "lovasz": mw.lovasz_softmax,
        "uniloss": uniloss.UniLoss(uniloss.zoo.mean_iou(11), generator=torch.Generator().manual_seed(seed + 1000))}
    probe = torch.randperm(train, generator=torch.Generator().manual_seed(seed + 500))[:32 * count].reshape(count, 32)
    gen = torch.Generator().manual_seed(seed)
    batches = shuffled(train, 32, gen)
    opt = torch.optim.SGD(model.parameters(), lr=0.1 * scale, momentum=0.9)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 10)
    norms: dict[str, dict[int, list[float]]] = {name: {} for name in losses}
    for epoch in range(epochs):
        model.train()
        if epoch in EPOCHS:
            for name, fn in losses.items():
                norms[name][epoch] = [grad_norm(model, fn, x[b], masks[b]) for b in probe]
        for idx in batches(epoch):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), masks[idx]).backward()
            opt.step()
        schedule.step()
    return norms


def table(results: list[dict[str, dict[int, list[float]]]]) -> list[str]:
    """Each loss's norm at each measured epoch (the median over the batches, then mean ± std over
    the seeds) and the ratios to UniLoss's (the median of the per-batch ratios, mean over seeds)."""
    epochs = [e for e in EPOCHS if e in results[0]["ce"]]

    def spread(values: list[float], digits: int) -> str:
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.{digits}f} ± {std:.{digits}f}"

    lines = ["| epoch | " + " | ".join(LABELS.values()) + " | Lovász-softmax / UniLoss | cross-entropy / UniLoss |",
             "|---|" + "---|" * (len(LABELS) + 2)]
    for e in epochs:
        cells = [spread([statistics.median(r[k][e]) for r in results], 4) for k in LABELS]
        cells += [spread([statistics.median(a / b for a, b in zip(r[k][e], r["uniloss"][e])) for r in results], 2)
                  for k in ("lovasz", "ce")]
        lines.append(f"| {e} | " + " | ".join(cells) + " |")
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a smoke run: seed 0, one epoch, two batches")
    parser.add_argument("--data-dir", default=None, help="MNIST's folder (default: $UNILOSS_DATA or the cache)")
    parser.add_argument("--out", default="docs/results/metric-wins/seg-miou-digits-steps")
    args = parser.parse_args(argv)
    seeds, epochs, count = ([0], 1, 2) if args.quick else (args.seeds, 10, 10)
    start = time.time()
    jobs = [(s, 2.0, epochs, count, args.data_dir) for s in seeds]
    done = run_jobs(run, jobs, args.jobs)
    minutes = (time.time() - start) / 60
    results = [done[job] for job in jobs]
    norms = [{k: {str(e): v for e, v in r[k].items()} for k in r} for r in results]
    publish(table(results), minutes, args, argv, "benchmarks/seg_digits_steps.py", __doc__ or "", "On the ``seg",
            "Eleven-class mean IoU: each loss's step at one learning rate",
            "Gradient L2 norm on the parameters, the median over the ten batches", seeds, dict(norms=norms))


if __name__ == "__main__":
    main()
