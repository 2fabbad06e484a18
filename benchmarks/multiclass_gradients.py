"""How large and how CE-like UniLoss-accuracy's gradient is on a given ResNet-20, against cross-entropy's.

For one batch of 128 training images (seed 0) through the network in a checkpoint of ``uniloss
train`` (or a fresh one: ``init``), prints per UniLoss variant, its gradient with respect to the
logits against cross-entropy's on the same logits:

* ``|g|/|g_ce|``: the ratio of the norms (one anchor draw, averaged over 5 draws);
* ``cos(mean, ce)``: the cosine between the mean over the draws and cross-entropy's gradient;
* ``cos(draw, mean)``: how much one draw of anchors varies around that mean (1: not at all);
* ``push wrong`` / ``push right``: the summed rise of the target logit that each asks for, on the
  misclassified and on the correctly classified samples, UniLoss over cross-entropy;
* ``distance scale``: the factor ``grad_scale="distance"`` (the default) applies, the anchors'
  harmonic distance: it shrinks as the network grows confident, and the gradient with it.

Then, for 8 batches, the samples grouped by how many classes score above their target
(0, 1, 2 or more), the misclassified ones also by their margin (best other logit minus the
target's: below 1, 1-3, 3 or more), and the target push of the first loss named over
cross-entropy's in each group (a relaxation that saturates on samples wrong by a wide margin
shows as a ratio that falls with the margin). To regenerate ``docs/results/multiclass/gradients.txt``:
``bash benchmarks/multiclass_gradients.sh RUNS_DIR`` (the runs of the tables it names)::

    python benchmarks/multiclass_gradients.py fashion runs/fashion-variants-short-4/uniloss-seed0/checkpoint.pt
    python benchmarks/multiclass_gradients.py pairs init uniloss uniloss-frac20 uniloss-top20

Losses: the experiments' UniLoss names (``uniloss.experiments.multiclass.UNILOSS_VARIANTS``,
default ``uniloss``: every comparison).
"""
import sys

import torch
import torch.nn.functional as F

import uniloss
from uniloss.experiments.multiclass import (FASHION_MEAN, FASHION_STD, UNILOSS_VARIANTS, resnet20_for, load_digit_pairs,
                                             load_fashion_splits, multiclass_loss)
from uniloss.experiments.registry import MNIST_MEAN, MNIST_STD


def cos(a, b):
    return float(a.flatten() @ b.flatten() / a.norm() / b.norm())


def grads(z0, y, fn):
    z = z0.clone().requires_grad_(True)
    fn(z, y).backward()
    return z.grad


def target_push(g, y, mask):
    return -g[mask].gather(1, y[mask][:, None]).sum()


def main(task, checkpoint, variants):
    torch.set_num_threads(1)
    if task == "fashion":
        splits, classes, norm = load_fashion_splits(None, torch.device("cpu")), 10, (FASHION_MEAN, FASHION_STD)
    elif task == "pairs":
        splits, classes, norm = load_digit_pairs(None, torch.device("cpu")), 100, ((MNIST_MEAN,), (MNIST_STD,))
    else:
        raise SystemExit(f"task must be fashion or pairs, not {task!r}")
    torch.manual_seed(0)  # the fresh network of `uniloss train --seed 0`
    model = resnet20_for("uniloss", num_classes=classes, in_channels=1, mean=norm[0], std=norm[1])
    if checkpoint != "init":
        model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["model"])
    model.eval()
    idx = torch.randint(len(splits.x_train), (8 * 128,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(splits.x_train[idx]).float()
    labels = splits.y_train[idx]
    z0, y = logits[:128], labels[:128]
    wrong = z0.argmax(1) != y
    g_ce = grads(z0, y, F.cross_entropy)
    print(f"{task}, {checkpoint}: batch accuracy {1 - float(wrong.float().mean()):.3f}")
    print("loss            |g|/|g_ce|  cos(mean,ce)  cos(draw,mean)  push wrong  push right  distance scale")
    for name in variants:
        draws = torch.stack([grads(z0, y, multiclass_loss(name, torch.Generator().manual_seed(s))[0]) for s in range(5)])
        mean = draws.mean(0)
        ratio = float(draws.norm(dim=(1, 2)).mean() / g_ce.norm())
        spread = sum(cos(d, mean) for d in draws) / len(draws)
        pw = float(target_push(mean, y, wrong) / target_push(g_ce, y, wrong)) if wrong.any() else float("nan")
        pr = float(target_push(mean, y, ~wrong) / target_push(g_ce, y, ~wrong)) if (~wrong).any() else float("nan")
        # grad_scale="distance" multiplies the gradient by the anchors' harmonic distance: read it off
        # as the ratio to the same draw with a unit scale.
        variant = UNILOSS_VARIANTS[name]
        unit = grads(z0, y, uniloss.UniLoss(uniloss.MulticlassAccuracy(**variant.metric), **{**variant.loss, "grad_scale": 1.0},
                                            generator=torch.Generator().manual_seed(0)))
        scale = float(draws[0].norm() / (variant.gain * unit.norm())) if variant.loss.get("grad_scale", "distance") == "distance" else float("nan")
        print(f"{name:14s} {ratio:10.3f} {cos(mean, g_ce):13.3f} {spread:15.3f} {pw:11.3f} {pr:11.3f} {scale:14.2f}")
    target_logit = logits.gather(1, labels[:, None])
    above = (logits > target_logit).sum(1)
    # how far a misclassified sample is from right: the best other class's logit minus the target's
    margin = logits.scatter(1, labels[:, None], float("-inf")).max(1).values - target_logit[:, 0]
    groups = {"0": above == 0, "1": above == 1, ">=2": above >= 2,
              "wrong, margin < 1": (above > 0) & (margin < 1), "wrong, margin 1-3": (above > 0) & (margin >= 1) & (margin < 3),
              "wrong, margin >= 3": (above > 0) & (margin >= 3)}
    sums = {group: [0.0, 0.0, 0] for group in groups}
    for b in range(8):
        rows = slice(b * 128, (b + 1) * 128)
        z, t = logits[rows], labels[rows]
        g_ce = grads(z, t, F.cross_entropy)
        g_ul = grads(z, t, multiclass_loss(variants[0], torch.Generator().manual_seed(b))[0])
        for group, mask in groups.items():
            s = sums[group]
            s[0] += float(target_push(g_ul, t, mask[rows]))
            s[1] += float(target_push(g_ce, t, mask[rows]))
            s[2] += int(mask[rows].sum())
    print(f"classes above the target (and the misclassified by margin): samples of 1024, target push {variants[0]} / "
          f"cross-entropy, and per sample (x 128: {variants[0]}, cross-entropy)")
    nan = float("nan")
    for group, (u, c, n) in sums.items():
        print(f"  {group:>18s}: {n:4d}, {u / c if n else nan:.3f}  ({128 * u / n if n else nan:.3f}, {128 * c / n if n else nan:.3f})")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3:] or ["uniloss"])
