"""What from_metric's chain through sums saves: traced metrics with and without it, against the zoo's.

    python benchmarks/traced_chain_cost.py          # a table on stdout (a few minutes)
    python benchmarks/traced_chain_cost.py 20 AP    # the cases whose name holds "AP"
    python benchmarks/traced_chain_cost.py 30 "" bfa6f31   # each case traced by this checkout and by a commit's

``interpolation="chain"`` (the default) walks ``l + 1`` configurations of the comparisons. A
metric traced by :func:`uniloss.from_metric` was evaluated at those points through its recorded
code (the tape): the runs' counts of each point decoded and replayed, ``O(l S)`` for ``S`` runs,
and beyond ``chain_elements`` (``[points, S]`` counts) at fewer points with each segment's gains
averaged, another loss. Where the one trained step's output (a comparison's mask, an argmax's
labels) reaches the metric only through elementwise operations and sums or counts, the cut
(``_traced._split_at_sums``) gives every point from each element's change and a cumulative sum.
Where the sums are per row and the rest takes them elementwise into more sums (subset accuracy,
scikit-learn's ``average="samples"``) or a confusion matrix's diagonal and sums into each class's
IoU, the steps after the sums are taken on their changes too (``_traced._walks``, as far as
``_traced._boundary`` finds it pays): each point's change is one row's. A binary ranking read as ``target[order]`` into a cumulative sum (AP
with ``argsort``; torchmetrics' ``binary_average_precision``, whose curve also slices, flips and
appends, and ``binary_auroc``, whose trapezoids add and subtract shifted copies of its curve) changes two neighbouring slots a point (``_traced._split_at_ranks``), as ``topk`` with a
label per row does at each of a row's last ``k`` turns. This times one loss call (forward and backward, library defaults, on
a model's output ``x * w``, one thread) of each metric traced with the cut, with the cut once
(never again), without it (the tape at every point), the zoo's decomposition of the same metric
and the usual loss, interleaved call by call in one process.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as nnf

import uniloss
import uniloss._traced as traced
from uniloss import zoo
from uniloss.experiments.metric_wins import multilabel_macro_f1
from uniloss.experiments.metric_wins import multilabel_samples_f1 as samples_f1

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from from_metric_training import average_precision, top2_accuracy  # noqa: E402  (AP with an argsort; topk)
from version_cost import load_ref, alternate  # noqa: E402  (a commit's package; calls in turn, the first rotating)


def subset_accuracy(scores, target):
    """Multi-label exact match: every label of a row right (``all``, a count of wrong ones)."""
    return ((scores > 0) == (target == 1)).all(1).float().mean()


def macro_f1(scores, target, num_classes=10):
    """Multi-class macro-F1 of ``argmax``, one class at a time."""
    pred = scores.argmax(1)
    per_class = [2 * ((pred == c) & (target == c)).sum() / ((pred == c).sum() + (target == c).sum()).clamp_min(1)
                 for c in range(num_classes)]
    return torch.stack(per_class).mean()


def mean_iou(scores, target, num_classes=21):
    """Mean IoU of ``argmax`` over the pixels, from the confusion matrix (``bincount``)."""
    pred = scores.argmax(1)
    confusion = torch.bincount((target * num_classes + pred).reshape(-1),
                               minlength=num_classes * num_classes).reshape(num_classes, num_classes)
    inter = confusion.diag()
    return (inter / (confusion.sum(0) + confusion.sum(1) - inter).clamp_min(1)).mean()


def _cases(g):
    x = torch.randn(512, 10, generator=g)
    y = (torch.rand(512, 10, generator=g) < 0.2).long()
    bce = lambda s, t: nnf.binary_cross_entropy_with_logits(s, t.float())  # noqa: E731
    yield "multi-label macro-F1, [512, 10]", multilabel_macro_f1, zoo.f_beta(1.0, average="macro"), bce, x, y
    yield "multi-label subset accuracy, [512, 10]", subset_accuracy, None, bce, x, y
    yield "multi-label samples-F1, [512, 10]", samples_f1, None, bce, x, y
    try:  # torchmetrics (optional): its multi-label functions move the mask (movedim, reshapes) before counting
        from torchmetrics.functional.classification import multilabel_exact_match, multilabel_jaccard_index
    except ImportError:
        pass
    else:
        yield ("torchmetrics multilabel_exact_match, [512, 10]",
               lambda s, t: multilabel_exact_match(s, t, num_labels=10), None, bce, x, y)  # logits: sigmoid, 0.5
        yield ("torchmetrics multilabel_jaccard_index, [512, 10]",  # a filter x[x >= 0] before its bincount
               lambda s, t: multilabel_jaccard_index(s, t, num_labels=10), None, bce, x, y)
    y = torch.randint(0, 10, (128,), generator=g)
    x = torch.randn(128, 10, generator=g) + 2.0 * nnf.one_hot(y, 10)
    yield "macro-F1 of 10 classes, [128, 10]", macro_f1, zoo.macro_f1(10), nnf.cross_entropy, x, y
    y = torch.randint(0, 21, (4, 32, 32), generator=g)
    x = torch.randn(4, 21, 32, 32, generator=g) + 2.0 * nnf.one_hot(y, 21).movedim(-1, 1)
    yield "mean IoU of 21 classes, [4, 21, 32, 32]", mean_iou, zoo.mean_iou(21), nnf.cross_entropy, x, y
    for n in (128, 1024):  # topk with labels: the label climbs a slot at each of its row's last k turns
        y = torch.randint(0, 10, (n,), generator=g)
        x = torch.randn(n, 10, generator=g) + nnf.one_hot(y, 10)
        yield f"top-2 accuracy with topk, [{n}, 10]", top2_accuracy, zoo.top_k_accuracy(2), nnf.cross_entropy, x, y
    try:
        from torchmetrics.functional.classification import binary_auroc, binary_average_precision
    except ImportError:
        binary_auroc = binary_average_precision = None
    for n in (128, 512, 1024):  # a ranking read as target[order] into a cumsum: the chain through the ranking
        y = (torch.rand(n, generator=g) < 0.3).long()
        x = torch.randn(n, generator=g) + y
        yield f"AP with argsort, [{n}], 30% relevant", average_precision, uniloss.AveragePrecision(), bce, x, y
        if binary_average_precision is not None:  # its curve: slices, flips, cat with its end
            yield (f"torchmetrics binary_average_precision, [{n}]", binary_average_precision,
                   uniloss.AveragePrecision(), bce, x, y)
            # its ROC curve: cat with its start, the trapezoids of two shifted copies (trapz)
            yield f"torchmetrics binary_auroc, [{n}]", binary_auroc, zoo.auroc(), bce, x, y


def main(calls: int = 20, only: str = "") -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(torch.ones(1))
    print("| case | traced, cut (ms) | cut once (ms) | no cut (ms) | zoo (ms) | usual (ms) | cut / once | "
          "cut / no cut | cut / zoo | cut / usual |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, fn, zoo_metric, usual, x, y in _cases(g):
        if only not in name:
            continue
        uncut = uniloss.from_metric(fn)
        uncut._chain_by_sums = lambda plan: None  # type: ignore[method-assign]  # the path before the cut
        uncut._chain_by_ranks = lambda plan: None  # type: ignore[method-assign]
        losses = {"cut": uniloss.UniLoss(uniloss.from_metric(fn)), "once": uniloss.UniLoss(uniloss.from_metric(fn)),
                  "uncut": uniloss.UniLoss(uncut), "usual": usual}
        if zoo_metric is not None:
            losses["zoo"] = uniloss.UniLoss(zoo_metric)
        runs = {k: (lambda f=f, x=x, y=y, k=k: _call(f, x * w, y, once=k == "once")) for k, f in losses.items()}
        med = alternate(runs, calls, warmup=3)
        zoo_ms = f"{med['zoo']:.2f}" if "zoo" in med else "-"
        zoo_ratio = f"{med['cut'] / med['zoo']:.2f}x" if "zoo" in med else "-"
        print(f"| {name} | {med['cut']:.2f} | {med['once']:.2f} | {med['uncut']:.2f} | {zoo_ms} | {med['usual']:.3f} | "
              f"{med['cut'] / med['once']:.3f}x | {med['cut'] / med['uncut']:.3f}x | {zoo_ratio} | "
              f"{med['cut'] / med['usual']:.0f}x |", flush=True)


def against(ref: str, calls: int = 30, only: str = "") -> None:
    """Each case traced with this checkout's ``from_metric`` and with ``ref``'s (its package loaded
    as ``uniloss_ref``), calls interleaved in one process: the ratio is the change's."""
    import tempfile

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(torch.ones(1))
    print(f"| case | {ref} (ms) | this checkout (ms) | this / {ref} |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        old = load_ref(tmp, ref)
        for name, fn, _, _, x, y in _cases(g):
            if only not in name:
                continue
            losses = {"ref": old.UniLoss(old.from_metric(fn)), "this": uniloss.UniLoss(uniloss.from_metric(fn))}
            med = alternate({k: (lambda f=f, x=x, y=y: f(x * w, y).backward()) for k, f in losses.items()}, calls,
                            warmup=3)
            print(f"| {name} | {med['ref']:.2f} | {med['this']:.2f} | {med['this'] / med['ref']:.2f}x |", flush=True)


def _call(loss, scores, target, once):
    """One loss call and its backward; ``once``: nothing after the sums taken on their changes."""
    nest = traced._NEST
    traced._NEST = float("inf") if once else nest
    try:
        loss(scores, target).backward()
    finally:
        traced._NEST = nest


if __name__ == "__main__":
    if len(sys.argv) > 3:
        against(sys.argv[3], int(sys.argv[1]), sys.argv[2])
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 20, sys.argv[2] if len(sys.argv) > 2 else "")
