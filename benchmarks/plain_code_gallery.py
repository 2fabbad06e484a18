"""Metrics as a user writes them in plain torch, each through ``uniloss.from_metric``: does it
train, is its value the metric's, what does a loss call cost.

    python benchmarks/plain_code_gallery.py                       # prints a markdown table
    python benchmarks/plain_code_gallery.py --out docs/performance/plain-code-gallery.md

The torchmetrics survey (``benchmarks/torchmetrics_survey.py``) runs a library's functions; this
gallery runs the metrics people write themselves, in the forms they write them (a confusion
matrix by ``bincount`` or ``index_put_``, a Python loop over classes or queries, ranks by
``argsort`` twice, pairs by broadcasting). Each metric is first
checked against an independent reference on the hard scores (scikit-learn or scipy, else a loop
written in Python). A row is ``trains`` when ``UniLoss(from_metric(fn))`` ran a loss call and its
backward, ``last.metric`` equals ``fn`` (within 1e-5) and the gradient is finite; the cost is the
median of 5 loss calls (forward and backward, library defaults, one thread) after two that fill
the caches, and its ratio to the usual loss on the same scores (binary cross-entropy,
cross-entropy or mean squared error), measured alongside.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from typing import Callable, List, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from sklearn import metrics as skm

import uniloss

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torchmetrics_survey import median_ms, print_page  # noqa: E402  (a few calls' median in ms; a page out)


# --------------------------------------------------------------------------- the metrics, as written

def quadratic_kappa(s, y):
    """Cohen's kappa with quadratic weights of ``[n, C]`` scores' argmax (ordinal grades)."""
    c = s.shape[1]
    pred = s.argmax(1)
    observed = torch.zeros(c, c).index_put_((y, pred), torch.ones(len(y)), accumulate=True)
    weights = (torch.arange(c)[:, None] - torch.arange(c)[None, :]).float() ** 2 / (c - 1) ** 2
    expected = observed.sum(1, keepdim=True) * observed.sum(0, keepdim=True) / observed.sum()
    return 1 - (weights * observed).sum() / (weights * expected).sum()


def recall_at_10(s, y):
    """The share of the relevant items among the 10 highest scores."""
    return y[s.topk(10).indices].sum() / y.sum().clamp_min(1)


def precision_at_top_tenth(s, y):
    """Precision of the highest tenth of the scores, by a descending ``argsort``."""
    k = max(1, s.numel() // 10)
    return y[s.argsort(descending=True)][:k].float().mean()


def reciprocal_rank(s, y):
    """One over the rank of the first relevant item (``nonzero`` of the ranked relevance)."""
    first = torch.nonzero(y[torch.argsort(s, descending=True)])[0, 0]
    return 1.0 / (first + 1)


def top3_accuracy(s, y):
    """A hit where the label is among a row's three highest scores."""
    return (s.topk(3, dim=1).indices == y[:, None]).any(1).float().mean()


def balanced_accuracy_loop(s, y):
    """The mean over classes of each class's recall, a Python loop over the classes."""
    pred = s.argmax(1)
    recalls = [((pred == c) & (y == c)).sum() / (y == c).sum().clamp_min(1) for c in range(s.shape[1])]
    return torch.stack(recalls).mean()


def macro_f1_bincount(s, y):
    """Macro-F1 from a confusion matrix counted by ``bincount``."""
    c = s.shape[1]
    cm = torch.bincount(y * c + s.argmax(1), minlength=c * c).reshape(c, c).float()
    return (2 * cm.diag() / (cm.sum(0) + cm.sum(1)).clamp_min(1)).mean()


def weighted_f1(s, y):
    """Each class's F1 weighted by its support."""
    pred = s.argmax(1)
    f1, support = [], []
    for c in range(s.shape[1]):
        tp = ((pred == c) & (y == c)).sum()
        f1.append(2 * tp / ((pred == c).sum() + (y == c).sum()).clamp_min(1))
        support.append((y == c).sum())
    weights = torch.stack(support).float()
    return (torch.stack(f1) * weights).sum() / weights.sum()


def iou_at_half(s, y):
    """Jaccard index of "probability above 1/2" (a sigmoid, looked through to ``s > 0``)."""
    pred, truth = torch.sigmoid(s) > 0.5, y.bool()
    return (pred & truth).sum() / (pred | truth).sum().clamp_min(1)


def ordinal_mae(s, y):
    """Mean absolute error of an ordinal prediction, the number of cut points a score passes."""
    pred = (s[:, None] > torch.tensor([-1.0, 0.0, 1.0])).sum(1)
    return (pred - y).abs().float().mean()


def concordance(s, y):
    """Of the pairs the target orders, the share the scores order alike (Harrell's C, no censoring)."""
    ordered = (y[:, None] > y[None, :]).float()
    return ((s[:, None] > s[None, :]).float() * ordered).sum() / ordered.sum()


def kendall_tau(s, y):
    """Kendall's tau-b: the signs of all pairs' differences, ties in either counted out."""
    a, b = torch.sign(s[:, None] - s[None, :]), torch.sign(y[:, None] - y[None, :])
    return (a * b).sum() / (a.abs().sum() * b.abs().sum()).sqrt()


def directional_accuracy(s, y):
    """The share of predictions on the target's side of zero (a forecast's direction)."""
    return (torch.sign(s) == torch.sign(y)).float().mean()


def interval_coverage(s, y):
    """The share of targets inside a predicted interval, ``s[:, 0]`` to ``s[:, 1]``: two comparisons."""
    return ((y > s[:, 0]) & (y < s[:, 1])).float().mean()


def f1_over_thresholds(s, y):
    """F1 at five thresholds, averaged (a loop: a comparison at each)."""
    pos, total = y == 1, 0.0
    for t in (-1.0, -0.5, 0.0, 0.5, 1.0):
        pred = s > t
        total = total + 2 * (pred & pos).sum() / (pred.sum() + pos.sum()).clamp_min(1)
    return total / 5


def spearman_rho(s, y):
    """The correlation of the ranks (``argsort`` twice), against a regression target."""
    r, q = s.argsort().argsort().float(), y.argsort().argsort().float()
    r, q = r - r.mean(), q - q.mean()
    return (r * q).sum() / (r.norm() * q.norm())


def auroc_by_ranks(s, y):
    """AUROC by the Mann-Whitney statistic of the ranks."""
    ranks = s.argsort().argsort().float() + 1
    positive = y == 1
    p, n = positive.sum(), (~positive).sum()
    return (ranks[positive].sum() - p * (p + 1) / 2) / (p * n)


def map_of_queries(s, y):
    """Mean AP over queries of 8 consecutive items, a Python loop over the queries."""
    aps = []
    for i in range(0, s.numel(), 8):
        relevant = y[i:i + 8][s[i:i + 8].argsort(descending=True)].float()
        precision = relevant.cumsum(0) / torch.arange(1, len(relevant) + 1)
        aps.append((precision * relevant).sum() / relevant.sum().clamp_min(1))
    return torch.stack(aps).mean()


def ndcg_at_10(s, y):
    """NDCG@10 of graded relevance (linear gains), one query."""
    discount = 1 / torch.log2(torch.arange(2, s.numel() + 2).float())
    dcg = (y[s.argsort(descending=True)] * discount)[:10].sum()
    return dcg / (y.sort(descending=True).values * discount)[:10].sum()


def dice_per_class(s, y):
    """Mean over classes of the Dice score of a segmentation's per-pixel argmax, ``[b, C, H, W]``."""
    pred = s.argmax(1)
    dice = [2 * ((pred == c) & (y == c)).sum() / ((pred == c).sum() + (y == c).sum()).clamp_min(1)
            for c in range(s.shape[1])]
    return torch.stack(dice).mean()


def precision_at_recall_80(s, y):
    """The best precision of a cut of the ranking whose recall is at least 0.8."""
    relevant = y[s.argsort(descending=True)].float()
    hits = relevant.cumsum(0)
    precision, recall = hits / torch.arange(1, s.numel() + 1), hits / relevant.sum()
    return (precision * (recall >= 0.8).float()).max()


def multilabel_hamming(s, y):
    """The share of labels predicted wrong at probability 1/2 (lower is better)."""
    return ((torch.sigmoid(s) > 0.5) != y.bool()).float().mean()


def mean_iou_ignoring(s, y):
    """Mean IoU of a segmentation's per-pixel argmax over the pixels not labelled 255 (boolean indexing)."""
    valid = y != 255
    pred, truth = s.argmax(1)[valid], y[valid]
    ious = [((pred == c) & (truth == c)).sum() / ((pred == c) | (truth == c)).sum().clamp_min(1)
            for c in range(s.shape[1])]
    return torch.stack(ious).mean()


def precision_at_3_per_row(s, y):
    """Multi-label: the share of each row's three highest scores that are its labels, averaged."""
    return y.gather(1, s.topk(3, dim=1).indices).float().mean(1).mean()


def f2_at_probability(s, y):
    """F2 of "probability above 0.3" (a sigmoid, compared in the scores' units)."""
    pred, truth = torch.sigmoid(s) > 0.3, y == 1
    tp, fp, fn = (pred & truth).sum(), (pred & ~truth).sum(), (~pred & truth).sum()
    return 5 * tp / (5 * tp + 4 * fn + fp).clamp_min(1)


def mrr_of_rows(s, y):
    """Mean reciprocal rank of ``[queries, items]``: each row's first relevant item, by ``cumsum``."""
    relevant = y.gather(1, s.argsort(1, descending=True))
    first = (relevant.cumsum(1) > 0).float().argmax(1)
    return (1.0 / (first + 1).float() * (relevant.sum(1) > 0).float()).mean()


def map_at_5_of_rows(s, y):
    """Mean AP@5 of ``[queries, items]`` (each row's AP over its five highest, over min(relevant, 5))."""
    relevant = y.gather(1, s.topk(5, 1).indices).float()
    precision = relevant.cumsum(1) / torch.arange(1, 6)
    return ((precision * relevant).sum(1) / y.sum(1).clamp(1, 5)).mean()


def coral_accuracy(s, y):
    """Ordinal accuracy of cumulative logits ``[n, K - 1]`` (CORAL): the grade is the logits above 0."""
    return ((s > 0).long().sum(1) == y).float().mean()


def matthews_by_hand(s, y):
    """Matthews' correlation of ``s > 0``, from the four counts."""
    p, t = s > 0, y == 1
    tp, tn = (p & t).sum().float(), (~p & ~t).sum().float()
    fp, fn = (p & ~t).sum().float(), (~p & t).sum().float()
    return (tp * tn - fp * fn) / torch.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)).clamp_min(1e-8)


# --------------------------------------------------------------------------- inputs and references

def rounded_accuracy(s, y):
    """Binary accuracy as tutorials write it: the rounded probability against the label."""
    return (torch.round(torch.sigmoid(s)) == y).float().mean()


def tutorial_accuracy(s, y):
    """Accuracy as the PyTorch CIFAR-10 tutorial writes it: ``torch.max(outputs.data, 1)``, the
    count read with ``.item()`` (a Python number, so fn is replayed one configuration at a time)."""
    _, predicted = torch.max(s.data, 1)
    correct = (predicted == y).sum().item()
    return torch.tensor(correct / y.size(0))

def accuracy_as_a_number(output, target):
    """Accuracy as evaluation loops write it: the count read with ``.item()``, a Python float
    returned (fn replayed at every configuration)."""
    pred = output.argmax(dim=1)
    correct = pred.eq(target).sum().item()
    return correct / len(target)


def imagenet_accuracy(output, target, topk=(1,)):
    """Top-1 accuracy in percent as the PyTorch ImageNet example writes it (topk, a transpose,
    ``mul_`` in place, under ``no_grad``)."""
    with torch.no_grad():
        maxk = max(topk)
        batch_size = target.size(0)
        _, pred = output.topk(maxk, 1, True, True)
        pred = pred.t()
        correct = pred.eq(target.view(1, -1).expand_as(pred))
        res = []
        for k in topk:
            correct_k = correct[:k].reshape(-1).float().sum(0, keepdim=True)
            res.append(correct_k.mul_(100.0 / batch_size))
        return res[0]


def sklearn_macro_f1(output, target):
    """scikit-learn's macro-F1 of the argmax, through ``.numpy()`` (a NumPy float returned)."""
    return skm.f1_score(target.numpy(), output.argmax(1).numpy(), average="macro", zero_division=0)


def macro_f1_guarded(output, target, num_classes=5):
    """Macro-F1 by hand from counts read with ``.item()``, each division guarded as scikit-learn's
    ``zero_division=0`` does (branches on the counts: each path batched)."""
    pred, total = output.argmax(1), 0.0
    for c in range(num_classes):
        tp = ((pred == c) & (target == c)).sum().item()
        pp, ap = (pred == c).sum().item(), (target == c).sum().item()
        precision = tp / pp if pp > 0 else 0.0
        recall = tp / ap if ap > 0 else 0.0
        total += 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return total / num_classes


def f1_from_tolist(output, target):
    """F1 at logit 0 from the confusion's cells unpacked from ``.tolist()``, the division guarded
    by ``max``."""
    pred = output > 0
    tp, fp, fn = torch.stack([(pred & (target == 1)).sum(), (pred & (target == 0)).sum(),
                              (~pred & (target == 1)).sum()]).tolist()
    return 2 * tp / max(2 * tp + fp + fn, 1)


def kappa_by_hand(output, target, num_classes=5):
    """Cohen's kappa by hand from a confusion matrix of counts read with ``.item()``: the agreement
    expected by chance over ``n ** 2`` (an int's power), the division guarded."""
    pred = output.argmax(1)
    cm = [[((target == i) & (pred == j)).sum().item() for j in range(num_classes)] for i in range(num_classes)]
    n = sum(map(sum, cm))
    agree = sum(cm[i][i] for i in range(num_classes)) / n
    chance = sum(sum(cm[i]) * sum(row[i] for row in cm) for i in range(num_classes)) / n ** 2
    return (agree - chance) / (1 - chance) if chance < 1 else 0.0


def _macro_f1_loop(s, y):
    pred, f1 = s.argmax(1), []
    for c in sorted(set(y.tolist()) | set(pred.tolist())):
        tp, fp, fn = np.sum((pred == c) & (y == c)), np.sum((pred == c) & (y != c)), np.sum((pred != c) & (y == c))
        f1.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1))


def _binary(g, n=128, share=0.3):
    y = (torch.rand(n, generator=g) < share).long()
    y[:2] = torch.tensor([0, 1])  # both classes present
    return torch.randn(n, generator=g) + 0.7 * y, y


def _classes(g, n=128, c=5):
    y = torch.randint(0, c, (n,), generator=g)
    return torch.randn(n, c, generator=g) + F.one_hot(y, c), y


def _grades(g, n=128, grades=4):
    y = torch.randint(0, grades, (n,), generator=g)
    return torch.randn(n, generator=g) + 0.5 * y, y


def _continuous(g, n=128):
    y = torch.randn(n, generator=g)
    return y + torch.randn(n, generator=g), y


def _intervals(g, n=128):
    y = torch.randn(n, generator=g)
    middle = y + 0.5 * torch.randn(n, generator=g)
    return torch.stack([middle - 1 + 0.3 * torch.randn(n, generator=g), middle + 1 + 0.3 * torch.randn(n, generator=g)],
                       1), y


def _segmentation(g, b=4, c=3, size=16):
    y = torch.randint(0, c, (b, size, size), generator=g)
    return torch.randn(b, c, size, size, generator=g) + 2 * F.one_hot(y, c).movedim(-1, 1), y


def _multilabel(g, n=64, labels=6):
    y = (torch.rand(n, labels, generator=g) < 0.3).long()
    return torch.randn(n, labels, generator=g) + 2 * y - 1, y


def _segmentation_ignoring(g):
    s, y = _segmentation(g)
    y[:, :3] = 255  # the top rows unlabelled
    return s, y


def _queries(g, q=8, items=20):
    y = (torch.rand(q, items, generator=g) < 0.2).long()
    y[:, 0] = 1  # every query has a relevant item
    return torch.randn(q, items, generator=g) + y, y


def _cumulative(g, n=128, grades=5):
    y = torch.randint(0, grades, (n,), generator=g)
    return torch.randn(n, grades - 1, generator=g) + 2 * (torch.arange(grades - 1)[None, :] < y[:, None]) - 1, y


def _rows_ranked(s, y, score):
    return np.mean([score(y[i][np.argsort(-s[i], kind="stable")], y[i]) for i in range(len(s))])


def _ap_at_5(ranked, labels):
    hits = np.cumsum(ranked[:5])
    return (hits / np.arange(1, 6) * ranked[:5]).sum() / min(max(labels.sum(), 1), 5)


def _reciprocal_rank(s, y):
    ranked = y[np.argsort(-s, kind="stable")]
    return 1 / (np.flatnonzero(ranked)[0] + 1)


def _pairs(s, y, weigh):
    return sum(weigh(s[i] - s[j], y[i] - y[j]) for i in range(len(s)) for j in range(len(s)) if i != j)


def _recall_at(s, y, k):
    return y[np.argsort(-s, kind="stable")[:k]].sum() / max(y.sum(), 1)


def _precision_at_recall(s, y, least):
    precision, recall, _ = skm.precision_recall_curve(y, s)
    return precision[recall >= least].max()


def _map_of_queries(s, y):
    return np.mean([skm.average_precision_score(y[i:i + 8], s[i:i + 8]) if y[i:i + 8].any() else 0.0
                    for i in range(0, len(s), 8)])


class Case(NamedTuple):
    name: str
    fn: Callable
    inputs: Callable  # generator -> (scores, target)
    reference: Callable  # numpy scores, numpy target -> the metric, computed independently
    usual: Callable  # the usual loss on (scores, target)
    higher_is_better: bool = True


def _bce(s, y):
    return F.binary_cross_entropy_with_logits(s, y.float())


def _mse(s, y):
    return F.mse_loss(s, y.float())


def _pinball(s, y):
    """The quantile losses of the 5% and 95% quantiles, the usual loss for an interval's ends."""
    q = torch.tensor([0.05, 0.95])
    diff = y[:, None] - s
    return torch.maximum(q * diff, (q - 1) * diff).mean()


CASES: List[Case] = [
    Case("quadratic weighted kappa", quadratic_kappa, _classes,
         lambda s, y: skm.cohen_kappa_score(y, s.argmax(1), weights="quadratic"), F.cross_entropy),
    Case("recall@10", recall_at_10, _binary, lambda s, y: _recall_at(s, y, 10), _bce),
    Case("precision of the top tenth", precision_at_top_tenth, _binary,
         lambda s, y: y[np.argsort(-s, kind="stable")[:len(s) // 10]].mean(), _bce),
    Case("reciprocal rank", reciprocal_rank, lambda g: _binary(g, share=0.05), _reciprocal_rank, _bce),
    Case("top-3 accuracy", top3_accuracy, _classes,
         lambda s, y: skm.top_k_accuracy_score(y, s, k=3, labels=range(s.shape[1])), F.cross_entropy),
    Case("balanced accuracy, a loop over classes", balanced_accuracy_loop, _classes,
         lambda s, y: skm.balanced_accuracy_score(y, s.argmax(1)), F.cross_entropy),
    Case("macro-F1 from a bincount confusion matrix", macro_f1_bincount, _classes,
         lambda s, y: skm.f1_score(y, s.argmax(1), average="macro"), F.cross_entropy),
    Case("support-weighted F1", weighted_f1, _classes,
         lambda s, y: skm.f1_score(y, s.argmax(1), average="weighted"), F.cross_entropy),
    Case("IoU at probability 1/2", iou_at_half, _binary, lambda s, y: skm.jaccard_score(y, s > 0), _bce),
    Case("ordinal MAE, cut points passed", ordinal_mae, _grades,
         lambda s, y: skm.mean_absolute_error(y, (s[:, None] > np.array([-1.0, 0.0, 1.0])).sum(1)), _mse, False),
    Case("concordance index, all pairs", concordance, _grades,
         lambda s, y: _pairs(s, y, lambda ds, dy: float(dy > 0 and ds > 0)) / _pairs(s, y, lambda ds, dy: float(dy > 0)),
         _mse),
    Case("Kendall's tau-b by torch.sign, all pairs", kendall_tau, _continuous,
         lambda s, y: stats.kendalltau(s, y).statistic, _mse),
    Case("directional accuracy, torch.sign", directional_accuracy, _continuous,
         lambda s, y: np.mean(np.sign(s) == np.sign(y)), _mse),
    Case("interval coverage, two comparisons", interval_coverage, _intervals,
         lambda s, y: np.mean((y > s[:, 0]) & (y < s[:, 1])), _pinball),
    Case("F1 averaged over five thresholds, a loop", f1_over_thresholds, _binary,
         lambda s, y: np.mean([skm.f1_score(y, s > t) for t in (-1.0, -0.5, 0.0, 0.5, 1.0)]), _bce),
    Case("Spearman's rho, ranks by argsort", spearman_rho, _continuous,
         lambda s, y: stats.spearmanr(s, y).statistic, _mse),
    Case("AUROC by Mann-Whitney ranks", auroc_by_ranks, _binary, lambda s, y: skm.roc_auc_score(y, s), _bce),
    Case("mean AP of queries, a loop", map_of_queries, _binary, _map_of_queries, _bce),
    Case("NDCG@10, graded", ndcg_at_10, _grades, lambda s, y: skm.ndcg_score(y[None], s[None], k=10), _mse),
    Case("Dice per class, segmentation", dice_per_class, _segmentation,
         lambda s, y: skm.f1_score(y.reshape(-1), s.argmax(1).reshape(-1), average="macro"), F.cross_entropy),
    Case("precision at recall 0.8", precision_at_recall_80, _binary, lambda s, y: _precision_at_recall(s, y, 0.8),
         _bce),
    Case("multi-label Hamming loss", multilabel_hamming, _multilabel,
         lambda s, y: skm.hamming_loss(y, s > 0), _bce, False),
    Case("mean IoU, pixels labelled 255 left out", mean_iou_ignoring, _segmentation_ignoring,
         lambda s, y: skm.jaccard_score(y[y != 255], s.argmax(1)[y != 255], average="macro", labels=range(3),
                                        zero_division=0), lambda s, y: F.cross_entropy(s, y, ignore_index=255)),
    Case("multi-label precision@3 per row", precision_at_3_per_row, _multilabel,
         lambda s, y: _rows_ranked(s, y, lambda ranked, labels: ranked[:3].mean()), _bce),
    Case("F2 at probability 0.3", f2_at_probability, _binary,
         lambda s, y: skm.fbeta_score(y, s > math.log(0.3 / 0.7), beta=2), _bce),
    Case("MRR of query rows, by cumsum", mrr_of_rows, _queries,
         lambda s, y: _rows_ranked(s, y, lambda ranked, labels: 1 / (np.flatnonzero(ranked)[0] + 1)), _bce),
    Case("mAP@5 of query rows", map_at_5_of_rows, _queries, lambda s, y: _rows_ranked(s, y, _ap_at_5), _bce),
    Case("CORAL ordinal accuracy", coral_accuracy, _cumulative,
         lambda s, y: skm.accuracy_score(y, (s > 0).sum(1)),
         lambda s, y: F.binary_cross_entropy_with_logits(s, (torch.arange(s.shape[1])[None, :] < y[:, None]).float())),
    Case("Matthews' correlation by hand", matthews_by_hand, _binary,
         lambda s, y: skm.matthews_corrcoef(y, s > 0), _bce),
    Case("binary accuracy, rounded probability", rounded_accuracy, _binary,
         lambda s, y: skm.accuracy_score(y, s > 0), _bce),
    Case("accuracy as the PyTorch tutorial writes it", tutorial_accuracy, _classes,
         lambda s, y: skm.accuracy_score(y, s.argmax(1)), F.cross_entropy),
    Case("accuracy returned as a Python number", accuracy_as_a_number, _classes,
         lambda s, y: np.mean(s.argmax(1) == y), F.cross_entropy),
    Case("top-1 accuracy as the PyTorch ImageNet example writes it", imagenet_accuracy, _classes,
         lambda s, y: 100 * np.mean(s.argmax(1) == y), F.cross_entropy),
    Case("scikit-learn's macro-F1 of the argmax", sklearn_macro_f1, _classes, _macro_f1_loop, F.cross_entropy),
    Case("macro-F1 by hand, .item() counts, divisions guarded", macro_f1_guarded, _classes,
         lambda s, y: skm.f1_score(y, s.argmax(1), average="macro", labels=range(5), zero_division=0),
         F.cross_entropy),
    Case("F1 from a confusion's .tolist()", f1_from_tolist, _binary, lambda s, y: skm.f1_score(y, s > 0), _bce),
    Case("Cohen's kappa by hand, .item() counts, n ** 2", kappa_by_hand, _classes,
         lambda s, y: skm.cohen_kappa_score(y, s.argmax(1)), F.cross_entropy),
]


# --------------------------------------------------------------------------- the gallery

def run(case: Case, seed: int = 0, times: int = 5) -> dict:
    """One case: its reference check, whether it trains, and its cost."""
    scores, target = case.inputs(torch.Generator().manual_seed(seed))
    value = float(case.fn(scores, target))
    reference = float(case.reference(scores.numpy(), target.numpy()))
    row = {"name": case.name, "fn": case.fn.__name__, "value": value, "reference": reference,
           "as the reference": abs(value - reference) <= 1e-5}
    loss = uniloss.UniLoss(uniloss.from_metric(case.fn, higher_is_better=case.higher_is_better))

    def call() -> torch.Tensor:
        x = scores.clone().requires_grad_()
        loss(x, target).backward()
        return x

    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        try:
            x = call()
        except uniloss.TraceError as error:
            return dict(row, result="refused", why=str(error).split(". ")[0])
        call()
        ms = median_ms(call, times)
    usual_ms = median_ms(lambda: case.usual(scores.clone().requires_grad_(), target).backward(), times)
    exact = abs(float(loss.last.metric) - value) <= 1e-5 and bool(torch.isfinite(_grad_or_nan(x)).all())
    return dict(row, result="trains" if exact else f"last.metric {float(loss.last.metric):.4f}", ms=ms,
                ratio=ms / usual_ms, warnings=sorted({_relative(str(w.message).split(":", 1)[1].split(" (")[0].strip())
                                                      for w in said if str(w.message).startswith("from_metric")}))


def _relative(text: str) -> str:
    """A warning's text with this checkout's folder left out of the file names it gives."""
    return text.replace(os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep, "")


def _grad_or_nan(x: torch.Tensor) -> torch.Tensor:
    return x.grad if x.grad is not None else torch.tensor([float("nan")])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="write the table there (markdown) as well")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.time()
    rows = []
    for case in CASES:
        rows.append(run(case))
        print(f"{case.name}: {rows[-1]['result']}", flush=True)
    trains = sum(r["result"] == "trains" for r in rows)
    lines = ["# Metrics as plain code through `from_metric`", "",
             " ".join((__doc__ or "").split("\n\n")[2].split()).replace("``", "`"), "",
             f"`python benchmarks/plain_code_gallery.py --out docs/performance/plain-code-gallery.md`; AMD EPYC "
             f"2-core, torch {torch.__version__}, uniloss {uniloss.__version__}, one thread, "
             f"{time.strftime('%Y-%m-%d')}, {time.time() - start:.0f} seconds. {trains} of {len(rows)} train.",
             "", "| metric | function | inputs | reference | result | cost of a loss call | from_metric said |",
             "|---|---|---|---|---|---|---|"]
    for case, r in zip(CASES, rows):
        scores, target = case.inputs(torch.Generator().manual_seed(0))
        inputs = f"scores {list(scores.shape)}, target {list(target.shape)}"
        check = f"{r['reference']:.4f} ({'equal' if r['as the reference'] else 'differs: ' + format(r['value'], '.4f')})"
        cost = f"{r['ms']:.1f} ms ({r['ratio']:.0f}x the usual loss)" if "ms" in r else r.get("why", "")
        if not case.higher_is_better:
            cost += "; higher_is_better=False"
        lines.append(f"| {case.name} | `{r['fn']}` | {inputs} | {check} | {r['result']} | {cost} | "
                     f"{'; '.join(r.get('warnings', []))} |")
    print_page(lines, args.out)


if __name__ == "__main__":
    main()
