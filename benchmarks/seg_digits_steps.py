"""How large is each loss's step on eleven-class mean IoU, at the same learning rate?

    python benchmarks/seg_digits_steps.py --jobs 2   # writes docs/results/metric-wins/seg-miou-digits-steps.{md,json}
    python benchmarks/seg_digits_steps.py --quick    # a smoke run: seed 0, one epoch, two batches
    python benchmarks/seg_digits_steps.py --on logits --jobs 2   # seg-miou-digits-logit-steps.{md,json}

On the ``seg-miou-digits`` probe task of the metric-wins suite (eleven classes; the data drawn by
the seed, ``DigitSegmenter`` initialised by it), a network is trained with per-pixel
cross-entropy at its best rate (2x, batch 32, SGD momentum 0.9, cosine over 10 epochs), and at
the start of epochs 0, 3, 6 and 9 each loss's gradient is taken on the same ten batches of 32
training images at that network: per-pixel cross-entropy, Lovász-softmax and UniLoss at its
defaults (``zoo.mean_iou(11)``). The L2 norm of the gradient on the network's parameters is the
size of the step each loss takes at one learning rate (SGD's step is the rate times it, before
momentum). The networks are cross-entropy's, so every loss is measured at the same models and
batches; BatchNorm's running statistics are restored after each measurement.

With ``--on logits`` the gradient is taken on the network's logits instead, where the engine's
step rule sizes a step: its total push (L1 norm) and its L2 norm, for the same three losses and
for UniLoss's two parts alone, the chain (``pull=0``: the metric's Lovász extension, unscaled, as
in the paper) and the pull (``grad_scale`` so small that the step rule sizes the step by the pull alone).
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
PARTS = {"chain": "the chain alone (pull=0)", "pull": "the pull alone"}  # (--on logits)
RATIOS = {"lovasz": "Lovász-softmax", "ce": "cross-entropy", "chain": "chain"}  # the ratio columns' names


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


def logit_norms(model: nn.Module, loss: Callable[[Tensor, Tensor], Tensor], x: Tensor,
                target: Tensor) -> list[float]:
    """``[L1, L2]``: the norms of ``loss(logits, target)``'s gradient on ``logits = model(x)``, the
    model's state (BatchNorm's running statistics included) left as it was."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        logits = model(x)
    model.load_state_dict(state)
    leaf = logits.detach().requires_grad_()
    grad = torch.autograd.grad(loss(leaf, target), leaf)[0].double()
    return [float(grad.abs().sum()), float(torch.linalg.vector_norm(grad))]


def run(job: tuple) -> dict[str, Any]:
    """``(seed, learning-rate scale, epochs, probe batches, data dir[, on])``: ``{loss: {epoch:
    [norm per batch]}}`` along cross-entropy's trajectory; ``on="logits"``: ``[L1, L2]`` per
    batch on the logits, with the chain and the pull beside the three losses."""
    seed, scale, epochs, count, data_dir = job[:5]
    on = job[5] if len(job) > 5 else "parameters"
    torch.set_num_threads(1)
    train = 4000
    x, masks = mw.noisy_masks("train", train, seed=2 * seed, data_dir=data_dir, digits=True, noise=mw.DIGITS_NOISE)
    model = mw.seeded(seed, lambda: mw.DigitSegmenter(11))
    losses: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
        "ce": F.cross_entropy, "lovasz": mw.lovasz_softmax,
        "uniloss": uniloss.UniLoss(uniloss.zoo.mean_iou(11), generator=torch.Generator().manual_seed(seed + 1000))}
    measure: Callable[..., Any] = grad_norm
    if on == "logits":
        measure = logit_norms
        losses.update(chain=uniloss.UniLoss(uniloss.zoo.mean_iou(11), pull=0),
                      pull=uniloss.UniLoss(uniloss.zoo.mean_iou(11), grad_scale=mw._PULL_ALONE))
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
                norms[name][epoch] = [measure(model, fn, x[b], masks[b]) for b in probe]
        for idx in batches(epoch):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), masks[idx]).backward()
            opt.step()
        schedule.step()
    return norms


def table(results: list[dict[str, dict[int, Any]]], labels: Optional[dict[str, str]] = None,
          ratios: tuple[str, ...] = ("lovasz", "ce"), pick: Callable[[Any], float] = float,
          digits: int = 4) -> list[str]:
    """Each loss's norm at each measured epoch (the median over the batches, then mean ± std over
    the seeds) and the ratios of ``ratios``' to UniLoss's (the median of the per-batch ratios, mean
    over seeds); ``pick``: the norm of one batch's measurement."""
    labels = labels or LABELS
    epochs = [e for e in EPOCHS if e in results[0]["ce"]]

    def spread(values: list[float], places: int) -> str:
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.{places}f} ± {std:.{places}f}"

    lines = ["| epoch | " + " | ".join(labels.values()) + " | "
             + " | ".join(f"{RATIOS[k]} / UniLoss" for k in ratios) + " |",
             "|---|" + "---|" * (len(labels) + len(ratios))]
    for e in epochs:
        cells = [spread([statistics.median(pick(v) for v in r[k][e]) for r in results], digits) for k in labels]
        cells += [spread([statistics.median(pick(a) / pick(b) for a, b in zip(r[k][e], r["uniloss"][e]))
                          for r in results], 2) for k in ratios]
        lines.append(f"| {e} | " + " | ".join(cells) + " |")
    return lines


def logit_table(results: list[dict[str, dict[int, list[list[float]]]]], norm: int) -> list[str]:
    """``--on logits``: :func:`table` of each loss's and part's norm (``norm`` 0: L1, 1: L2), with
    Lovász-softmax's and the chain's over UniLoss's."""
    return table(results, {**LABELS, **PARTS}, ("lovasz", "chain"), lambda v: v[norm], 5 if norm else 3)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a smoke run: seed 0, one epoch, two batches")
    parser.add_argument("--data-dir", default=None, help="MNIST's folder (default: $UNILOSS_DATA or the cache)")
    parser.add_argument("--on", choices=("parameters", "logits"), default="parameters",
                        help="where the gradient's norm is taken (logits: L1 and L2, the chain and the pull too)")
    parser.add_argument("--out", default=None, help="the pages' path without .md/.json (default: by --on)")
    args = parser.parse_args(argv)
    args.out = args.out or "docs/results/metric-wins/seg-miou-digits-" + ("logit-" if args.on == "logits" else "") + "steps"
    seeds, epochs, count = ([0], 1, 2) if args.quick else (args.seeds, 10, 10)
    start = time.time()
    jobs = [(s, 2.0, epochs, count, args.data_dir, args.on) for s in seeds]
    done = run_jobs(run, jobs, args.jobs)
    minutes = (time.time() - start) / 60
    results = [done[job] for job in jobs]
    norms = [{k: {str(e): v for e, v in r[k].items()} for k in r} for r in results]
    if args.on == "logits":
        lines = (["Total push (L1 norm) on the logits:", ""] + logit_table(results, 0)
                 + ["", "L2 norm on the logits:", ""] + logit_table(results, 1))
        publish(lines, minutes, args, argv, "benchmarks/seg_digits_steps.py", __doc__ or "", "On the ``seg",
                "Eleven-class mean IoU: each loss's step on the logits",
                "Gradient norms on the logits, the median over the ten batches", seeds, dict(norms=norms))
        return
    publish(table(results), minutes, args, argv, "benchmarks/seg_digits_steps.py", __doc__ or "", "On the ``seg",
            "Eleven-class mean IoU: each loss's step at one learning rate",
            "Gradient L2 norm on the parameters, the median over the ten batches", seeds, dict(norms=norms))


if __name__ == "__main__":
    main()
