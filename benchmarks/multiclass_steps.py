"""Training-step time of ResNet-20 with cross-entropy against UniLoss, measured in one run.

    python benchmarks/multiclass_steps.py                        # Fashion-MNIST, CE vs UniLoss, 2 threads
    python benchmarks/multiclass_steps.py --memory-format both   # also the contiguous layout
    python benchmarks/multiclass_steps.py --device cuda --amp --steps 200 --json steps.json

Method: the step of ``uniloss train`` (batch gathered from the device-resident split, crop + flip
on the device, forward, loss, backward, SGD with the paper's recipe) for each variant (loss x
memory layout), same initial weights; ``--warmup`` steps each, then rounds of ``--block`` steps
per variant, the variants in turn (their order alternating), until each has run ``--steps``:
load drift of a shared machine then falls on all of them alike. On CUDA the blocks are timed
between synchronisations (none inside a block). Reported per variant: the median and quartiles
of the per-step time over blocks, the epoch time it implies (``ceil(train / batch)`` steps), and
the ratio to the first variant of the same layout, from the medians and as the median of the
per-round ratios; the evaluation time per image; on CUDA, the host synchronisations a step makes
(``torch.cuda.set_sync_debug_mode``). Also the wall time of the ``short`` schedule for each loss.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from typing import Dict, List, Optional

import torch

from uniloss.experiments.loop import train_epoch


def _quartiles(values: List[float]) -> Dict[str, float]:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return {"median": statistics.median(values), "q1": q[0], "q3": q[2]}


def _machine(device: torch.device) -> Dict:
    from uniloss.experiments.reproduce import machine

    info = {"cpu": machine(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "load_average": list(os.getloadavg()), "date": time.strftime("%Y-%m-%d"), "python": platform.python_version()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


class _Variant:
    """One loss in one memory layout, with its model, optimiser, generators and batch order."""

    def __init__(self, exp, loss: str, channels_last: bool, device: torch.device, n: int, seed: int = 0) -> None:
        from uniloss.experiments.train import make_optimizer

        self.name = f"{loss}/{'channels_last' if channels_last else 'contiguous'}"
        self.loss_name, self.channels_last = loss, channels_last
        torch.manual_seed(seed)
        self.model = exp.model(loss)
        if hasattr(self.model, "channels_last") and not channels_last:
            self.model.channels_last = False
            self.model.to(memory_format=torch.contiguous_format)
        self.model.to(device)
        recipe = exp.recipe_for("paper", loss) if hasattr(exp, "recipe_for") else exp.recipe
        self.batch = recipe.batch_size
        self.optimizer = make_optimizer(recipe, self.model.parameters())
        self.anchor_gen = torch.Generator(device=device).manual_seed(seed + 2)
        self.augment_gen = torch.Generator(device=device).manual_seed(seed + 3)
        self.fn, self.module = exp.loss(loss, self.anchor_gen)
        self.order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1)).to(device)
        self.cursor = 0

    def step(self, exp, x: torch.Tensor, y: torch.Tensor, amp: bool) -> None:
        """One training step, as ``uniloss train`` makes it (its loop, :func:`~uniloss.experiments.loop.train_epoch`,
        over one batch; no host synchronisation of its own)."""
        if self.cursor + self.batch > len(self.order):
            self.cursor = 0
        idx = self.order[self.cursor : self.cursor + self.batch]
        self.cursor += self.batch
        xb, yb = x[idx], y[idx]
        if exp.augment is not None:
            xb = exp.augment(xb, self.augment_gen)
        train_epoch(self.model, self.optimizer, [(xb, yb)], self.step_loss, autocast=x.device.type if amp else None)

    def step_loss(self, model, batch) -> torch.Tensor:
        return self.fn(model(batch[0]), batch[1])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _host_syncs_per_step(variant: _Variant, exp, x, y, amp: bool, steps: int = 3) -> Optional[float]:
    """Synchronisations the CUDA sync-debug mode reports per step (``None`` on a CPU)."""
    if x.device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                variant.step(exp, x, y, amp)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught) / steps


def measure(args) -> Dict:
    from uniloss.experiments.registry import get_experiment

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    exp = get_experiment(args.experiment)
    data = exp.load(args.data_dir, device)
    x, y = data.x_train, data.y_train
    if args.limit_train:
        x, y = x[: args.limit_train], y[: args.limit_train]
    layouts = {"channels_last": [True], "contiguous": [False], "both": [True, False]}[args.memory_format]
    variants = [_Variant(exp, loss, cl, device, len(y)) for cl in layouts for loss in args.losses]
    for v in variants:
        for _ in range(args.warmup):
            v.step(exp, x, y, args.amp)
    _sync(device)
    syncs = {v.name: _host_syncs_per_step(v, exp, x, y, args.amp) for v in variants}
    times: Dict[str, List[float]] = {v.name: [] for v in variants}
    rounds = math.ceil(args.steps / args.block)
    for r in range(rounds):
        for v in variants if r % 2 == 0 else variants[::-1]:
            _sync(device)
            t = time.perf_counter()
            for _ in range(args.block):
                v.step(exp, x, y, args.amp)
            _sync(device)
            times[v.name].append((time.perf_counter() - t) / args.block)
        print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{k} {ts[-1] * 1e3:.1f} ms" for k, ts in times.items()),
              file=sys.stderr, flush=True)
    # evaluation forward per image (the loop evaluates validation and test after every epoch)
    model = variants[0].model.eval()
    chunk = min(len(data.x_val), 1024)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=False):
        model(data.x_val[:chunk])
        _sync(device)
        t = time.perf_counter()
        model(data.x_val[:chunk])
        _sync(device)
    eval_per_image = (time.perf_counter() - t) / chunk
    steps_per_epoch = math.ceil(len(data.y_train) / variants[0].batch)
    eval_images = len(data.y_val) + len(data.y_test)
    results: Dict = {"experiment": exp.name, "device": str(device), "amp": args.amp, "block": args.block,
                     "steps_per_variant": rounds * args.block, "steps_per_epoch": steps_per_epoch,
                     "eval_per_image_s": eval_per_image, "variants": {}}
    for v in variants:
        base = next(b for b in variants if b.channels_last == v.channels_last)
        step = _quartiles(times[v.name])
        paired = [a / b for a, b in zip(times[v.name], times[base.name])]
        epoch = steps_per_epoch * step["median"]
        recipe = exp.recipe_for("short", v.loss_name) if hasattr(exp, "recipe_for") else exp.recipe
        results["variants"][v.name] = {
            "step_s": step, "epoch_s": epoch, "ratio_to": base.name,
            "ratio_of_medians": step["median"] / statistics.median(times[base.name]),
            "ratio_median_of_rounds": statistics.median(paired),
            "host_syncs_per_step": syncs[v.name],
            "short_schedule": {"epochs": recipe.epochs, "wall_s": recipe.epochs * (epoch + eval_images * eval_per_image)},
        }
    results["machine"] = _machine(device)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--experiment", default="fashion-resnet20")
    parser.add_argument("--losses", nargs="+", default=["ce", "uniloss"], help="the first is the baseline of the ratios")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per variant")
    parser.add_argument("--block", type=int, default=5, help="steps per timed block")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast of the forward pass")
    parser.add_argument("--memory-format", choices=("channels_last", "contiguous", "both"), default="channels_last")
    parser.add_argument("--data-dir")
    parser.add_argument("--limit-train", type=int, help="train split's first N samples (checks)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    results = measure(args)
    print(f"{results['experiment']} on {results['machine'].get('gpu', results['machine']['cpu'])}, "
          f"{results['machine']['threads']} threads, amp {results['amp']}, {results['steps_per_variant']} steps each, "
          f"load average {results['machine']['load_average'][0]:.1f}")
    print("| variant | step (ms, median [q1, q3]) | epoch (s) | ratio (medians) | ratio (median of rounds) | host syncs/step | short schedule (min) |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results["variants"].items():
        s = r["step_s"]
        print(f"| {name} | {s['median'] * 1e3:.1f} [{s['q1'] * 1e3:.1f}, {s['q3'] * 1e3:.1f}] | {r['epoch_s']:.1f} | "
              f"{r['ratio_of_medians']:.3f} | {r['ratio_median_of_rounds']:.3f} | {r['host_syncs_per_step']} | "
              f"{r['short_schedule']['wall_s'] / 60:.0f} ({r['short_schedule']['epochs']} epochs) |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
