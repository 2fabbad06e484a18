"""Why the old defaults lost: the first steps' push and the scores' scale, per loss.

    python benchmarks/saturation_probe.py     # writes docs/results/metric-wins/probe.txt (about 2 minutes)

Three of the metric-wins tasks (``uniloss.experiments.metric_wins``), one seed, one thread:

* segmentation (25,088 comparisons a batch): the total push ``sum |dL/dscores|`` of the first
  step and the share of pixels predicted foreground over the first 40 steps;
* imbalanced F1 at logit 0: train and test F1 and the test scores' standard deviation after 20
  epochs (the scores grow until the sigmoid saturates, then UniLoss stops learning);
* imbalanced AP (the full suite's run that collapsed): per epoch, the largest score and the share
  of each step's push that lands on a single sample;
* Fashion-MNIST MLP: the push on the logits over the first steps and after a few hundred.

Losses: the usual one, UniLoss with the paper's gradient (``pull=0, grad_scale=1.0``), the
previous defaults (``pull=0, grad_scale="distance"``) and the current defaults.
"""

from __future__ import annotations

import io
import os
import time

import torch
import torch.nn.functional as F

import uniloss
from uniloss import zoo
from uniloss.experiments import metric_wins as M
from uniloss.experiments.loop import train_epoch

SETTINGS = {
    "paper (pull=0, grad_scale=1)": dict(pull=0.0, grad_scale=1.0),
    "previous defaults (pull=0, distance)": dict(pull=0.0, grad_scale="distance"),
    "defaults (pull=1, bounded)": {},
}


class Pushes:
    """``step_loss`` and ``on_step`` of :func:`~uniloss.experiments.loop.train_epoch` that probe the
    push on the logits: ``loss_fn(logits, y)`` on each ``(x, y)`` batch, and after each step the
    logits (before the step), the total push ``sum |dL/dlogits|`` and its share on the most-pushed
    sample."""

    def __init__(self, loss_fn) -> None:
        self.loss_fn = loss_fn
        self.logits: list = []
        self.pushes: list = []
        self.shares: list = []
        self._live = None

    def step_loss(self, model, batch):
        x, y = batch
        self._live = model(x)
        self._live.retain_grad()
        return self.loss_fn(self._live, y)

    def on_step(self, step: int, loss) -> None:
        push = self._live.grad.abs()
        self.shares.append(float(push.reshape(len(push), -1).sum(1).max() / push.sum().clamp_min(1e-30)))
        self.logits.append(self._live.detach())
        self.pushes.append(float(push.sum()))

    def train(self, model, opt, x, y, batches) -> None:
        """One :func:`~uniloss.experiments.loop.train_epoch` over the index tensors ``batches``."""
        train_epoch(model, opt, ((x[idx], y[idx]) for idx in batches), self.step_loss, on_step=self.on_step)


def segmentation(out: io.StringIO) -> None:
    xtr, mtr = M.noisy_masks("train", 2000, seed=0)
    out.write("segmentation, seed 1, batch 32 (25,088 comparisons), SGD lr 0.1 momentum 0.9\n")
    out.write("  loss: first-step push on the logits | foreground share predicted at steps 0, 5, 10, 20, 39\n")
    for name, options in [("per-pixel cross-entropy", None)] + list(SETTINGS.items()):
        model = M.seeded(1, M.fcn)
        opt = M.sgd(model, 0.1)
        lf = F.cross_entropy if options is None else uniloss.UniLoss(
            zoo.mean_iou(2), generator=torch.Generator().manual_seed(1001), **options)
        batches = M.shuffled(2000, 32, torch.Generator().manual_seed(1))(0)
        probe = Pushes(lf)
        probe.train(model, opt, xtr, mtr, batches[:40])
        pushes = probe.pushes
        shares = [float((probe.logits[i][:, 1] > probe.logits[i][:, 0]).float().mean()) for i in (0, 5, 10, 20, 39)]
        out.write(f"  {name:38s} {pushes[0]:7.2f} | " + " ".join(f"{s:.2f}" for s in shares) + "\n")


def imbalanced_f1(out: io.StringIO) -> None:
    xtr, ytr, _, _, xte, yte = M.imbalanced_binary()
    out.write("\nimbalanced F1 at logit 0, seed 0, 20 epochs, cosine lr from 0.1\n")
    out.write("  loss: train F1 | test F1 | std of the test scores\n")
    for name, options in [("binary cross-entropy", None)] + list(SETTINGS.items()):
        model = M.seeded(0, lambda: M.mlp(20, 64, 64, 1))
        opt = M.sgd(model, 0.1)
        sched = M.cosine(opt, 20)
        lf = (lambda s, y: F.binary_cross_entropy_with_logits(s, y.float())) if options is None else uniloss.UniLoss(
            zoo.f_beta(1.0, threshold=0.0), generator=torch.Generator().manual_seed(1000), **options)
        batches = M.shuffled(len(ytr), 128, torch.Generator().manual_seed(0))
        for epoch in range(20):
            train_epoch(model, opt, batches(epoch), lambda m, idx: lf(m(xtr[idx]).reshape(-1), ytr[idx]))
            sched.step()
        with torch.no_grad():
            s_tr, s_te = model(xtr).reshape(-1), model(xte).reshape(-1)
        out.write(f"  {name:38s} {M.f1_at(s_tr, ytr, 0):.3f} | {M.f1_at(s_te, yte, 0):.3f} | {float(s_te.std()):6.1f}\n")


def imbalanced_ap_collapse(out: io.StringIO) -> None:
    """The full suite's collapsed imbalanced-AP run (defaults, seed 0), epoch by epoch."""
    xtr, ytr, _, _, xte, yte = M.imbalanced_binary()
    out.write("\nimbalanced AP, defaults, seed 0 (the full suite's collapsed run), cosine lr from 0.1 over 40 epochs\n")
    out.write("  epoch: test AP | largest |score| seen | mean share of the step's push on its top sample\n")
    for name, options in [("binary cross-entropy", None), ("defaults (pull=1, bounded)", {})]:
        model = M.seeded(0, lambda: M.mlp(20, 64, 64, 1))
        opt = M.sgd(model, 0.1)
        sched = M.cosine(opt, 40)
        lf = (lambda s, y: F.binary_cross_entropy_with_logits(s, y.float())) if options is None else uniloss.UniLoss(
            uniloss.AveragePrecision(), generator=torch.Generator().manual_seed(1000), **options)
        batches = M.shuffled(len(ytr), 128, torch.Generator().manual_seed(0))
        out.write(f"  {name}\n")
        for epoch in range(8):
            probe = Pushes(lambda logits, y: lf(logits.reshape(-1), y))
            probe.train(model, opt, xtr, ytr, batches(epoch))
            largest, shares = max([0.0, *(float(s.abs().max()) for s in probe.logits)]), probe.shares
            sched.step()
            with torch.no_grad():
                ap = M.average_precision(model(xte).reshape(-1), yte)
            out.write(f"    {epoch}: {ap:.3f} | {largest:8.1f} | {sum(shares) / len(shares):.2f}\n")


def fashion(out: io.StringIO) -> None:
    from uniloss.experiments.data import load_fashion_mnist

    train = load_fashion_mnist("train")
    x = train.images.float()[:, None] / 255.0
    x = (x - x.mean()) / x.std()
    y = train.labels
    out.write("\nFashion-MNIST, MLP 784-256-10, seed 0, batch 128, SGD lr 0.1 momentum 0.9\n")
    out.write("  loss: push on the logits at steps 0, 1, 5 | mean over steps 200-399 | logits' std at step 399\n")
    for name, options in [("cross-entropy", None)] + list(SETTINGS.items()):
        model = M.seeded(0, lambda: M.mlp(784, 256, 10))
        opt = M.sgd(model, 0.1, weight_decay=1e-4)
        lf = F.cross_entropy if options is None else uniloss.UniLoss(
            uniloss.MulticlassAccuracy(), generator=torch.Generator().manual_seed(1000), **options)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        probe = Pushes(lf)
        probe.train(model, opt, x, y, order.split(128)[:400])
        pushes, logits = probe.pushes, probe.logits[-1]
        late = sum(pushes[200:]) / 200
        out.write(f"  {name:38s} {pushes[0]:.2f} {pushes[1]:.2f} {pushes[5]:.2f} | {late:.3f} | "
                  f"{float(logits.std()):.1f}\n")


def main() -> str:
    torch.set_num_threads(1)
    start = time.perf_counter()
    out = io.StringIO()
    out.write(f"# {__doc__.strip().splitlines()[0]}\n# {time.strftime('%Y-%m-%d')}, torch {torch.__version__}, "
              "1 thread; regenerate: python benchmarks/saturation_probe.py\n\n")
    segmentation(out)
    imbalanced_f1(out)
    imbalanced_ap_collapse(out)
    fashion(out)
    out.write(f"\n({time.perf_counter() - start:.0f} s)\n")
    path = os.path.join(os.path.dirname(__file__), "..", "docs", "results", "metric-wins", "probe.txt")
    with open(path, "w") as fh:
        fh.write(out.getvalue())
    return out.getvalue()


if __name__ == "__main__":
    print(main())
