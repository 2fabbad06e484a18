"""One training run: data in memory, live progress, JSON-lines log, atomic checkpoints, resume.

Output folder layout::

    config.json      the settings of the run (printed at its start too)
    log.jsonl        one JSON object per finished epoch
    checkpoint.pt    model, optimiser, schedule, RNG states and history after the last epoch
    final.json       the final metrics, written when the run ends

A run killed at any moment and restarted with ``resume=True`` continues from its last checkpoint
and ends with the metrics of a run never interrupted (same seed, same device and thread count):
every random draw (batch order, anchors, augmentation) comes from generators whose states are
checkpointed.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, cast

import torch

from ..functional import LossInfo
from .checkpoint import CheckpointError, load_checkpoint, remove_stale_temporaries, save_checkpoint
from .loop import predict, train_epoch
from .registry import Experiment, Recipe

_STATE_KEYS = ("batch_generator", "anchor_generator", "augment_generator")


class RunError(RuntimeError):
    """A run that cannot start as asked (e.g. an existing run in --out without --resume)."""


@dataclass
class RunOptions:
    loss: str
    seed: int = 0
    epochs: Optional[int] = None  # default: the recipe's
    out: str = "runs"
    data_dir: Optional[str] = None
    device: str = "cpu"
    resume: bool = False
    threads: Optional[int] = None
    lr: Optional[float] = None
    batch_size: Optional[int] = None
    limit_train: Optional[int] = None  # use the first N training samples (tests, smoke runs)
    progress: Optional[bool] = None  # None: bars when stderr is a terminal
    schedule: Optional[str] = None  # a named recipe of the experiment (None: its own, "paper")
    amp: bool = False  # bfloat16 autocast of the forward pass (the loss gets float32 outputs)


#: Config entries that describe a run without changing it: a checkpoint resumes across edits of them.
_DESCRIPTIVE = ("notes",)


def settings_differ(old: Dict, new: Dict) -> str:
    """The settings in which a checkpoint's config ``old`` and a run's ``new`` differ, as text
    (``"lr 0.1 (now 0.3), ..."``); ``""`` where the run may resume it (only descriptive text differs).
    """
    keys = [k for k in dict.fromkeys([*old, *new]) if k not in _DESCRIPTIVE and old.get(k) != new.get(k)]
    return ", ".join(f"{k} {old.get(k, 'unset')} (now {new.get(k, 'unset')})" for k in keys)


def resolve_recipe(exp: Experiment, opts: RunOptions) -> Recipe:
    # An experiment with named schedules has recipe_for(schedule, loss) (multiclass.ScheduledExperiment).
    recipe_for = getattr(exp, "recipe_for", None)
    if recipe_for is not None:
        try:
            base = recipe_for(opts.schedule, opts.loss)
        except ValueError as exc:
            raise RunError(str(exc)) from None
    elif opts.schedule in (None, "paper"):
        base = exp.recipe
    else:
        raise RunError(f"experiment {exp.name} has only the paper's schedule; got --schedule {opts.schedule}")
    r = Recipe(**{k: getattr(base, k) for k in base.__dataclass_fields__})
    if opts.epochs is not None:
        r.epochs = opts.epochs
    if opts.lr is not None:
        r.lr = opts.lr
    if opts.batch_size is not None:
        r.batch_size = opts.batch_size
    return r


def make_optimizer(recipe: Recipe, params):
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}")


def _to_device(obj, device: torch.device):
    """``obj`` with every tensor inside (dicts, lists, tuples) moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return type(obj)((k, _to_device(v, device)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def _check_device(name: str) -> torch.device:
    """``torch.device(name)``, or a :class:`RunError` that says what is missing (before any folder is made)."""
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise RunError(f"--device {name!r} is not a device torch knows ({exc})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunError(f"--device {name} asks for CUDA, but this torch ({torch.__version__}) sees no CUDA device; "
                       "use --device cpu")
    if device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise RunError(f"--device {name} asks for Apple's MPS, which this machine does not have; use --device cpu")
    return device


def amp_warning(device: torch.device) -> Optional[str]:
    """What ``--amp`` does on ``device`` when that is not what a user expects (the CPU), else ``None``.

    On the CPU, ``torch.autocast`` does run the matrix products in bfloat16 (measured with the MNIST
    MLP on a 2-core CPU with AMX: 2.5-2.8 ms a step against 1.3-2.1 ms without, results off in the
    fourth digit), so the option is not ignored there: it is slower and less precise.
    """
    if device.type != "cpu":
        return None
    return ("--amp on the CPU: autocast runs the forward pass's matrix products in bfloat16 here too, "
            "which changes the results slightly and is usually slower, not faster, than float32 on a CPU; "
            "it is meant for a GPU (--device cuda): drop --amp on the CPU")


def _batches(x: torch.Tensor, y: torch.Tensor, order: torch.Tensor, batch_size: int,
             augment: Optional[Callable[[torch.Tensor, torch.Generator], torch.Tensor]], generator: torch.Generator):
    """The epoch's ``(inputs, targets)`` batches in ``order``, each augmented when drawn (lazily)."""
    for idx in order.split(batch_size):
        xb, yb = x[idx], y[idx]
        if augment is not None:
            xb = augment(xb, generator)
        yield xb, yb


class _EpochSums:
    """``on_step`` of :func:`~uniloss.experiments.loop.train_epoch` for a run: the epoch's sums (on
    the device: no host synchronisation) of the loss and, with a UniLoss module, of its batch metric
    and surrogate over the batches where the metric is defined; and the progress bar's updates."""

    def __init__(self, device: torch.device, ul_module, bar) -> None:
        self.loss, self.metric, self.surrogate, self.count = (torch.zeros((), device=device) for _ in range(4))
        self.ul_module, self.bar = ul_module, bar

    def __call__(self, step: int, loss: torch.Tensor) -> None:
        self.loss += loss.detach()
        if self.ul_module is not None:
            info = cast(LossInfo, self.ul_module.last)  # the loss module's (nn.Module's typing hides it)
            m, s = info.metric.detach(), info.surrogate.detach()
            ok = ~torch.isnan(m)
            self.metric += torch.where(ok, m, 0.0)
            self.surrogate += torch.where(ok, s, 0.0)
            self.count += ok.float()
        if self.bar is not None:
            self.bar.update(1)
            if step % 50 == 0:
                post = {"loss": f"{float(loss.detach()):.4f}"}  # float() of a grad tensor warns into the bar
                if self.ul_module is not None:
                    post.update(metric=f"{float(m):.3f}", surrogate=f"{float(s):.3f}")
                self.bar.set_postfix(post)


def run_training(exp: Experiment, opts: RunOptions) -> Dict:
    """Train ``exp`` with ``opts.loss`` and return the final metrics (also in ``final.json``)."""
    if opts.loss not in exp.losses:
        raise RunError(f"experiment {exp.name} has no loss {opts.loss!r}; choose one of {', '.join(exp.losses)}")
    if opts.threads:
        torch.set_num_threads(opts.threads)
    device = _check_device(opts.device)
    if opts.amp and amp_warning(device):  # once per run, before any progress bar
        print(f"uniloss: warning: {amp_warning(device)}", file=sys.stderr, flush=True)
    recipe = resolve_recipe(exp, opts)
    out = Path(opts.out)
    ckpt_path = out / "checkpoint.pt"
    if ckpt_path.exists() and not opts.resume:
        raise RunError(f"{out} already holds a run (checkpoint.pt); pass --resume to continue it or choose another --out")
    config = {**exp.config(), **asdict(recipe),
              "loss": opts.loss, "seed": opts.seed, "device": opts.device, "threads": torch.get_num_threads(),
              "limit_train": opts.limit_train, "notes": exp.notes}
    config.update({k: v for k, v in (("schedule", opts.schedule), ("amp", opts.amp)) if v})  # only when set: older runs resume
    interactive = sys.stderr.isatty() if opts.progress is None else opts.progress
    if interactive:
        print("uniloss train " + " ".join(f"{k}={v}" for k, v in config.items() if k != "notes"), file=sys.stderr)

    data = exp.load(opts.data_dir, device)
    out.mkdir(parents=True, exist_ok=True)  # after the data: a run that cannot start leaves no empty folder
    remove_stale_temporaries(ckpt_path)  # of a write killed midway (each save removes them too)
    x_train, y_train = data.x_train, data.y_train
    if opts.limit_train:
        x_train, y_train = x_train[: opts.limit_train], y_train[: opts.limit_train]

    torch.manual_seed(opts.seed)
    model = exp.model(opts.loss).to(device)
    optimizer = make_optimizer(recipe, model.parameters())
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(recipe.milestones), recipe.gamma)
    # Anchors and augmentations are drawn on the training device (a CPU generator would copy to the GPU
    # and wait for it on every step); the batch order once per epoch on the CPU.
    gens = {k: torch.Generator(device="cpu" if k == "batch_generator" else device).manual_seed(opts.seed * 1000 + i + 1)
            for i, k in enumerate(_STATE_KEYS)}
    loss_fn, ul_module = exp.loss(opts.loss, gens["anchor_generator"])
    history: List[Dict] = []
    start_epoch = 0
    if opts.resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        missing = [k for k in ("config", "epoch", "model", "optimizer", "scheduler", "history", *_STATE_KEYS)
                   if k not in state]
        if missing or not isinstance(state["config"], dict):
            raise CheckpointError(f"Checkpoint {ckpt_path} has the uniloss marker but lacks "
                                  f"{', '.join(missing) or 'a config dict'}; delete it to start the run afresh, "
                                  "or point --out at another folder.")
        differ = settings_differ(state["config"], config)
        if differ:
            raise RunError(f"{ckpt_path} was written with other settings: {differ}; "
                           "resume it with those, or choose another --out")
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if isinstance(ul_module, torch.nn.Module) and "loss" in state:  # a loss with state (e.g. a warm-up's step count)
                ul_module.load_state_dict(_to_device(state["loss"], device))  # checkpoints load on the CPU
            for k in _STATE_KEYS:
                gens[k].set_state(state[k])
            history = list(state["history"])
            start_epoch = int(state["epoch"])
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError) as exc:
            detail = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
            detail = detail if len(detail) <= 300 else detail[:297] + "..."
            raise CheckpointError(f"Checkpoint {ckpt_path} does not fit this run's model, optimiser or state "
                                  f"({type(exc).__name__}: {detail or 'no detail'}); delete it to start the run "
                                  "afresh, or point --out at another folder.") from None
        if interactive:
            print(f"resuming {out} after epoch {start_epoch}", file=sys.stderr)
    _write_json(out / "config.json", config)
    with open(out / "log.jsonl", "w") as fh:  # the log is rewritten from the checkpoint's history
        fh.writelines(json.dumps(h) + "\n" for h in history)

    n = len(x_train)
    steps = math.ceil(n / recipe.batch_size)

    def step_loss(m: torch.nn.Module, batch: Tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return loss_fn(m(batch[0]), batch[1])  # float32 outputs (train_epoch's autocast casts them back)

    for epoch in range(start_epoch, recipe.epochs):
        t0 = time.perf_counter()
        order = torch.randperm(n, generator=gens["batch_generator"]).to(device)
        bar = None
        if interactive:
            from tqdm import tqdm

            bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{recipe.epochs}", leave=False, mininterval=0.5, file=sys.stderr)
        sums = _EpochSums(device, ul_module, bar)
        batches = _batches(x_train, y_train, order, recipe.batch_size, exp.augment, gens["augment_generator"])
        train_epoch(model, optimizer, batches, step_loss, on_step=sums, autocast=device.type if opts.amp else None)
        if bar is not None:
            bar.close()
        lr = optimizer.param_groups[0]["lr"]  # the epoch's (before the scheduler moves to the next one's)
        scheduler.step()
        train_time = time.perf_counter() - t0
        record = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": float(sums.loss) / steps,
            "val": exp.evaluate(predict(model, data.x_val), data.y_val),
            "test": exp.evaluate(predict(model, data.x_test), data.y_test),
            "epoch_time_s": train_time,
        }
        if ul_module is not None and float(sums.count) > 0:
            record["train_batch_metric"] = float(sums.metric / sums.count)
            record["train_surrogate"] = float(sums.surrogate / sums.count)
        history.append(record)
        state = {"config": config, "epoch": epoch + 1, "model": model.state_dict(),
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "history": history, **{k: g.get_state() for k, g in gens.items()}}
        if isinstance(ul_module, torch.nn.Module):
            state["loss"] = ul_module.state_dict()
        save_checkpoint(state, ckpt_path)
        with open(out / "log.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")
        headline = next(iter(record["val"]))
        line = (f"epoch {epoch + 1}/{recipe.epochs} loss {record['train_loss']:.4f} "
                f"val {headline} {record['val'][headline]:.4f} test {record['test'][headline]:.4f} "
                f"({train_time:.1f}s)")
        if interactive:
            print(line, file=sys.stderr)
        else:
            print(json.dumps(record), flush=True)

    final = {
        "experiment": exp.name, "loss": opts.loss, "seed": opts.seed, "epochs": recipe.epochs,
        "test": history[-1]["test"] if history else {}, "val": history[-1]["val"] if history else {},
        "mean_epoch_time_s": sum(h["epoch_time_s"] for h in history) / max(len(history), 1),
        "config": config,
    }
    _write_json(out / "final.json", final)
    if interactive:
        print(f"final test: {final['test']}", file=sys.stderr)
    else:
        print(json.dumps({"final": final["test"]}), flush=True)
    return final
