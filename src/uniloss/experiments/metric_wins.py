"""``uniloss reproduce metric-wins``: does UniLoss beat the usual loss on the metric it trains?

The benchmark that decides the library's defaults. Each task trains one network with the usual
loss (``kind="usual"``: cross-entropy, binary cross-entropy), with the strongest simple thing a
practitioner would try for that metric (``kind="baseline"``: BCE with ``pos_weight``, a
validation-tuned threshold, a pairwise logistic ranking loss, class-weighted cross-entropy,
Lovász-softmax) and with UniLoss at the library's defaults (``kind="uniloss"``), then scores the
held-out split with the metric UniLoss trains. Extra UniLoss settings can be screened beside the
defaults (``--variant NAME=JSON``, ``kind="variant"``): ``JSON`` holds keywords of
:class:`uniloss.UniLoss`.

Tasks (``--quick`` / full; the learning rate follows a cosine to 0 unless a schedule is named):

* ``mnist0-ap``: MNIST digit 0 vs rest, VOC-interpolated test AP; the paper's MLP 784-500-300-1
  and recipe (batch 16, SGD lr 0.01 momentum 0.5, constant); 4 / 30 epochs.
* ``fashion-acc``: Fashion-MNIST accuracy; quick: MLP 784-256-10, 8 epochs; full: ResNet-20 with
  crop and flip, 30 epochs (lr 0.1, /10 after 21 and 26); batch 128, SGD lr 0.1 momentum 0.9,
  weight decay 1e-4.
* ``pairs-acc``: MNIST digit pairs, 100 classes (45k training images 28x56); MLP 1568-512-100,
  batch 128, SGD lr 0.1 momentum 0.9; 5 / 15 epochs.
* ``digits-f1``: scikit-learn's digits, macro-F1 over 10 classes, MLP 64-128-10, batch 128,
  SGD lr 0.1 momentum 0.9, 30 epochs; UniLoss ``zoo.macro_f1(10)``.
* ``imb-ap``: ``make_classification`` with 5% positives (10k train, 5k validation, 5k test),
  MLP 20-64-64-1, batch 128, SGD lr 0.1 momentum 0.9; 20 / 40 epochs; test AP (plain);
  baselines BCE with ``pos_weight`` and the pairwise logistic loss.
* ``imb-f1``: same data and network, F1 of the decision ``logit > 0``; baselines BCE with
  ``pos_weight = negatives / positives`` and BCE with the threshold tuned on the validation split;
  UniLoss ``zoo.f_beta(1, threshold=0)``.
* ``bal-acc``: MNIST whose training digit ``c`` keeps ``0.6 ** c`` of its images, balanced
  accuracy on the whole test split; MLP 784-128-10, batch 128, SGD lr 0.1 momentum 0.9, 5 / 15
  epochs; baseline class-weighted cross-entropy; UniLoss ``zoo.balanced_accuracy(10)``.
* ``ndcg5``: digit retrieval on digits (queries of 20 images, 1-6 relevant), NDCG@5; usual
  pointwise BCE, baseline pairwise logistic (RankNet) within queries; UniLoss
  ``zoo.ndcg_at_k(5)``; 30 epochs.
* ``seg-miou``: MNIST digit-vs-background masks from noisy occluded inputs, mean IoU over the two
  classes; FCN 1-16-16-2, batch 32, SGD lr 0.1 momentum 0.9; usual per-pixel cross-entropy,
  baseline Lovász-softmax (Berman et al. 2018); 2,000 / 4,000 training images, 5 / 10 epochs.

Probe tasks, run only when ``--tasks`` names them: metrics of the zoo on the suite's data and
recipes that played no part in choosing the defaults, to check that what the suite decided
carries over (``docs/results/metric-wins/probe-tasks/``):

* ``auroc`` / ``auroc-clean``: the ``imb-ap`` task (with / without its 2% random labels) on
  ``zoo.auroc()``; usual BCE, baseline the pairwise logistic loss.
* ``f1-clean`` / ``f2-clean``: the same data without label noise, F1 / F2 at logit 0
  (``zoo.f_beta(1)``, ``zoo.f_beta(2)``); usual BCE, baselines BCE with ``pos_weight`` (and, for
  F1, BCE with a validation-tuned threshold).
* ``f1-tuned`` / ``f2-tuned``: the ``imb-f1`` task (with its label noise) / ``f2-clean``, every
  loss's model scored at the threshold that maximises its F1 / F2 on the validation split: what a
  user who tunes the decision after training gets; usual BCE, baseline BCE with ``pos_weight``.
* ``f1-clean-draws`` / ``f2-clean-draws``: ``f1-clean`` / ``f2-clean`` with the data set drawn
  again for each seed, as the ``-draws`` probes below.
* ``imb-ap-draws`` / ``imb-f1-draws``: the ``imb-ap`` / ``imb-f1`` tasks with the data set drawn
  again for each seed (``make_classification``'s ``random_state`` the seed; the suite's tasks fix
  draw 0, so their seeds vary the network's initialisation and the batches, not the data).
* ``digits-f1-draws``: the ``digits-f1`` task with its train/test split drawn again for each seed.
* ``bal-acc-draws``: the ``bal-acc`` task with the images each digit keeps drawn at random for
  each seed (the suite's task keeps the first ones).
* ``seg-miou-draws``: the ``seg-miou`` task with its images, noise and patches drawn for each seed.
* ``seg-miou-fashion``: the ``seg-miou-draws`` probe on Fashion-MNIST's images (real images no
  default was chosen on; the mask: the clean image's pixels above 0.5).
* ``ndcg5-draws``: the ``ndcg5`` task with digits' split and its test queries drawn for each seed.
* ``p-at-5`` / ``r-at-5`` / ``mrr``: the ``ndcg5`` task on ``zoo.precision_at_k(5)`` /
  ``zoo.recall_at_k(5)`` / ``zoo.mrr()``.
* ``ndcg10-graded``: learning to rank with graded relevance (grades 0-4, half the items
  irrelevant; :func:`graded_queries`, drawn per seed), MLP 20-64-64-1, batches of 8 queries of
  30 items, 15 / 30 epochs; test NDCG@10; usual MSE on the grade, baselines the pairwise logistic
  loss over pairs of different grades, ListNet and LambdaRank; UniLoss
  ``zoo.ndcg_at_k(10, num_grades=5)``.
* ``ndcg5-graded``: the ``ndcg5`` task's digit retrieval with graded relevance (2: the query's
  digit, 1 to 4 images; 1: its two most similar digits, 2 to 6; 0: the rest;
  :func:`graded_retrieval_queries`), digits' split and test queries drawn per seed; NDCG@5 of
  grades 0-2; the losses of ``ndcg10-graded``. The suite's rankings have 0/1 relevance.
* ``dice``: the ``seg-miou`` task on ``zoo.dice(2)``.
* ``seg-miou-digits``: the ``seg-miou-draws`` probe with each digit's pixels labelled by its class,
  mean IoU over 11 classes (the background, 87% of the pixels, and ten digits of 1-2% each), which a
  pixel's neighbourhood cannot tell: a small encoder-decoder (:class:`DigitSegmenter`) in place of
  the FCN, and noise of sigma 0.4 instead of 0.8; UniLoss ``zoo.mean_iou(11)``.
* ``top5``: the ``pairs-acc`` task on ``zoo.top_k_accuracy(5)``.
* ``pairs-f1``: the ``pairs-acc`` task on ``zoo.macro_f1(100)`` (about one sample of a class in a
  batch of 128).
* ``mlabel-f1``: multi-label MNIST mosaics (2 x 2 slots, each a digit with probability 1/2,
  digit ``c`` with probability proportional to ``0.7 ** c``; :func:`multilabel_mnist`, drawn per
  seed), MLP 784-128-10, batch 128, SGD lr 0.1 momentum 0.9, 5 epochs; test macro-F1 over the ten
  labels at logit 0; usual BCE, baselines BCE with each label's ``pos_weight`` and BCE at each
  label's validation-tuned threshold; UniLoss on the metric's plain torch code through
  :func:`uniloss.from_metric` (:func:`multilabel_macro_f1`, the route of a metric the zoo lacked;
  the zoo has it now, as ``zoo.f_beta(1, average="macro")``, added after 0.12.2).

Every run uses one thread; ``--jobs`` runs go side by side. ``results.json`` follows the
reproduction schema (``rows`` of dataset, loss, metric, mean, std, seeds, paper) with ``kind``
added per row, and keeps every run's curve under ``runs``; ``results.md`` has the table and the
verdict per task.

``--lr-scales 0.5 1 2`` runs every row at each recipe's learning rate times each scale and adds a
table of each loss at its best scale: at one learning rate, a loss whose gradient is larger than
the usual loss's also takes larger steps, and a win can be the step's size rather than its
direction (docs/results/metric-wins/lr-grid/ measures it).

``--optimizer adam`` trains every row with :class:`torch.optim.Adam` at its default learning rate
``1e-3`` (times ``--lr-scales``; the recipe's weight decay and schedule kept) instead of the
recipes' SGD: the defaults were chosen with SGD, and a practitioner who does not tune reaches for
Adam (docs/results/metric-wins/quick-adam/).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import uniloss
from uniloss import zoo
from uniloss.decoders import Ranking, RankingTarget

from .loop import predict, shuffled, train_epochs
from .metrics import average_precision

#: Called after each epoch of a run as ``(epoch, held-out metric)`` (``--progress``; set per run).
_ON_EPOCH: Optional[Callable[[int, float], None]] = None


def fit(model: nn.Module, opt: torch.optim.Optimizer, batches, step_loss, epochs: int, evaluate,
        scheduler=None) -> List[float]:
    """The training loop of every task (:func:`uniloss.experiments.loop.train_epochs`, reporting
    each epoch to ``--progress``): the held-out metric per epoch. (Scripts import ``fit`` and
    ``shuffled`` from here.)"""
    return train_epochs(model, opt, batches, step_loss, epochs, evaluate, scheduler, on_epoch=_ON_EPOCH)

# --------------------------------------------------------------------------- data


def digits_split(seed_split: int = 0, test_size: float = 0.3):
    """scikit-learn's digits as ``(x_train [N, 64] in [0, 1], x_test, y_train, y_test)``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    return train_test_split(x, y, test_size=test_size, random_state=seed_split, stratify=y)


def imbalanced_digits(ratio: float = 0.7):
    """Digits with class ``c`` keeping ``ratio ** c`` of its images (first ones, fixed split):
    ``(x_train, y_train, x_test, y_test)``."""
    xtr, xte, ytr, yte = digits_split()

    def subsample(x, y):
        keep = torch.zeros_like(y, dtype=torch.bool)
        for c in range(10):  # data preparation, once: not a training hot path
            idx = (y == c).nonzero().reshape(-1)
            keep[idx[: max(2, int(round(len(idx) * ratio**c)))]] = True
        return x[keep], y[keep]

    return subsample(xtr, ytr) + subsample(xte, yte)


def retrieval_queries(y: Tensor, num_queries: int, size: int, generator: torch.Generator):
    """``(items [Q*size] image indices, query digit [Q], relevance [Q*size], query id [Q*size])``:
    each query is a digit and ``size`` images, 1 to 6 of them showing it (relevance 1)."""
    q = torch.randint(0, 10, (num_queries,), generator=generator)
    num_rel = torch.randint(1, 7, (num_queries,), generator=generator)
    same = y[None, :] == q[:, None]
    noise = torch.rand(num_queries, y.numel(), generator=generator)
    rel_pick = torch.where(same, noise, torch.full_like(noise, -1.0)).topk(size, dim=1).indices
    irr_pick = torch.where(~same, noise, torch.full_like(noise, -1.0)).topk(size, dim=1).indices
    slot = torch.arange(size)[None, :]
    relevant = slot < num_rel[:, None]
    items = torch.where(relevant, rel_pick, irr_pick)
    query = torch.arange(num_queries)[:, None].expand(-1, size)
    return items.reshape(-1), q, relevant.reshape(-1).long(), query.reshape(-1)


@functools.lru_cache(maxsize=1)
def digit_neighbours() -> Tensor:
    """``[10, 2]``: each digit's two most similar other digits, by the cosine of the centred
    class-mean images of scikit-learn's whole digits set (e.g. 3's are 9 and 5's 9; fixed, no draw;
    computed once)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x, y = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y)
    means = torch.stack([x[y == c].mean(0) for c in range(10)])
    unit = F.normalize(means - means.mean(0), dim=1)
    return (unit @ unit.T).fill_diagonal_(-2.0).topk(2, dim=1).indices


def graded_retrieval_queries(y: Tensor, num_queries: int, size: int, generator: torch.Generator):
    """:func:`retrieval_queries` with graded relevance: ``(items, query digit [Q], relevance [Q*size]
    in {0, 1, 2}, query id)``; each query is a digit with 1 to 4 images of it (grade 2), 2 to 6 of
    its two most similar digits (grade 1, :func:`digit_neighbours`) and other digits' (grade 0)."""
    q = torch.randint(0, 10, (num_queries,), generator=generator)
    num_exact = torch.randint(1, 5, (num_queries,), generator=generator)
    num_near = torch.randint(2, 7, (num_queries,), generator=generator)
    near_digits = digit_neighbours()[q]  # [Q, 2]
    exact = y[None, :] == q[:, None]
    near = (y[None, :, None] == near_digits[:, None, :]).any(2)
    noise = torch.rand(num_queries, y.numel(), generator=generator)
    pick = [torch.where(kind, noise, torch.full_like(noise, -1.0)).topk(size, dim=1).indices
            for kind in (exact, near, ~(exact | near))]
    slot = torch.arange(size)[None, :]
    grade = torch.where(slot < num_exact[:, None], 2, torch.where(slot < (num_exact + num_near)[:, None], 1, 0))
    items = torch.where(grade == 2, pick[0], torch.where(grade == 1, pick[1], pick[2]))
    query = torch.arange(num_queries)[:, None].expand(-1, size)
    return items.reshape(-1), q, grade.reshape(-1), query.reshape(-1)


GRADE_SHARES = (0.5, 0.25, 0.13, 0.08, 0.04)  # of grades 0-4 in graded_queries


def graded_queries(draw: int, num_queries: int, size: int = 30, *, split: int = 0):
    """A learning-to-rank set with graded relevance, in the shape of the web-search benchmarks
    (query-item feature vectors, grades 0-4, most items irrelevant): ``(x [Q*size, 20], relevance
    [Q*size] int64 in [0, 5), query id [Q*size])``. Each query draws a context (4 features shared
    by its items) and each item 16 features of its own; a fixed random teacher network of the
    ``draw`` (20-32-1, tanh; the context at twice the items' spread, so queries differ in how many
    relevant items they hold) scores the pair, noise of a third of the teacher's spread is added,
    and the grades cut the noisy utility at fixed values (the quantiles of :data:`GRADE_SHARES`
    over a large sample of the draw), so some queries have no relevant item and some many.
    ``split`` picks independent queries of the same draw (0 training, 1 test)."""
    teacher = torch.Generator().manual_seed(7919 * draw + 17)
    w1 = torch.randn(20, 32, generator=teacher) / 20 ** 0.5
    b1 = 0.5 * torch.randn(32, generator=teacher)
    w2 = torch.randn(32, generator=teacher) / 32 ** 0.5

    def sample(count: int, g: torch.Generator):
        context = 2.0 * torch.randn(count, 1, 4, generator=g).expand(count, size, 4)
        x = torch.cat([torch.randn(count, size, 16, generator=g), context], 2).reshape(-1, 20)
        return x, torch.tanh(x @ w1 + b1) @ w2, torch.randn(count * size, generator=g)

    _, reference, noise = sample(2000, torch.Generator().manual_seed(7919 * draw + 18))
    spread = reference.std() / 3.0
    cuts = torch.quantile(reference + spread * noise, torch.tensor(GRADE_SHARES).cumsum(0)[:-1])
    x, utility, noise = sample(num_queries, torch.Generator().manual_seed(7919 * draw + 19 + split))
    noisy = utility + spread * noise
    relevance = torch.bucketize(noisy, cuts, right=True)
    query = torch.arange(num_queries)[:, None].expand(-1, size).reshape(-1)
    return x, relevance, query


def _image_loader(source: str) -> Callable[..., Any]:
    """The loader of ``source``'s images: ``"mnist"`` or ``"fashion"`` (Fashion-MNIST)."""
    from .data import load_fashion_mnist, load_mnist

    loaders = {"mnist": load_mnist, "fashion": load_fashion_mnist}
    if source not in loaders:
        raise ValueError(f"source must be 'mnist' or 'fashion', not {source!r}")
    return loaders[source]


#: The noise of the ``seg-miou-digits`` probe's images (the binary tasks' 0.8 hides which digit it is).
DIGITS_NOISE = 0.4


def noisy_masks(split: str, count: int, seed: int, data_dir: Optional[str] = None, source: str = "mnist",
                digits: bool = False, noise: float = 0.8):
    """MNIST images with Gaussian noise (sigma ``noise``, 0.8) and a random 10x10 occluding patch,
    and the clean digits' masks (pixel > 0.5): ``(x [count, 1, 28, 28], mask [count, 28, 28]
    int64)``; ``source="fashion"``: Fashion-MNIST's images instead (the ``seg-miou-fashion``
    probe); ``digits=True``: each mask pixel holds its image's class plus one, 0 the background (11
    classes; the ``seg-miou-digits`` probe), the same images and patches."""
    images, labels = _image_loader(source)(split, data_dir=data_dir)
    g = torch.Generator().manual_seed(seed)
    index = torch.randperm(images.shape[0], generator=g)[:count]
    clean = images[index].float()[:, None] / 255.0
    mask = (clean[:, 0] > 0.5).long()
    if digits:
        mask = mask * (labels[index].long() + 1)[:, None, None]
    x = clean + noise * torch.randn(clean.shape, generator=g)
    corner = torch.randint(0, 18, (count, 2), generator=g)
    rows = torch.arange(28)[None, :, None]
    cols = torch.arange(28)[None, None, :]
    patch = ((rows >= corner[:, 0, None, None]) & (rows < corner[:, 0, None, None] + 10)
             & (cols >= corner[:, 1, None, None]) & (cols < corner[:, 1, None, None] + 10))
    x = torch.where(patch[:, None], torch.zeros_like(x), x)
    return x, mask


def imbalanced_binary(seed: int = 0, flip_y: float = 0.02, class_sep: float = 0.8):
    """``make_classification`` with 5% positives, 20 features (5 informative), 2% label noise
    (``flip_y``: the share of labels drawn at random; ``class_sep``: the classes' separation):
    ``(x_train [10000, 20], y_train, x_val [5000, 20], y_val, x_test [5000, 20], y_test)``,
    standardised with the training split's statistics."""
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=20_000, n_features=20, n_informative=5, n_redundant=5,
                               weights=[0.95], flip_y=flip_y, class_sep=class_sep, random_state=seed)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.int64)
    mean, std = x[:10_000].mean(0), x[:10_000].std(0)
    x = (x - mean) / std
    return x[:10_000], y[:10_000], x[10_000:15_000], y[10_000:15_000], x[15_000:], y[15_000:]


# --------------------------------------------------------------------------- baselines


def pairwise_logistic(scores: Tensor, target: Tensor, group: Optional[Tensor] = None) -> Tensor:
    """RankNet's pairwise logistic loss ``mean softplus(s_j - s_i)`` over every pair whose item
    ``i`` is more relevant than item ``j`` (binary relevance: every (relevant, irrelevant) pair;
    graded: every pair of different grades), within each ``group`` when one is given. Zero
    (attached) without a pair."""
    pair = target[:, None] > target[None, :]
    if group is not None:
        pair = pair & (group[:, None] == group[None, :])
    diff = scores[None, :] - scores[:, None]  # [i, j] = s_j - s_i
    count = pair.sum()
    return torch.where(pair, F.softplus(diff), torch.zeros_like(diff)).sum() / count.clamp_min(1)


def listnet(scores: Tensor, relevance: Tensor, size: int) -> Tensor:
    """ListNet's top-one loss (Cao et al. 2007): per query of ``size`` consecutive items, the
    cross-entropy of the scores' softmax against the relevance grades' softmax, averaged over the
    queries."""
    s, r = scores.reshape(-1, size), relevance.reshape(-1, size).to(scores.dtype)
    return -(torch.softmax(r, 1) * torch.log_softmax(s, 1)).sum(1).mean()


def lambdarank(scores: Tensor, relevance: Tensor, size: int) -> Tensor:
    """LambdaRank for NDCG (Burges et al. 2006), without truncation or per-query normalisation
    (LightGBM's ``lambdarank`` adds both): the pairwise logistic loss of every pair of different grades within a query of
    ``size`` consecutive items, each pair weighted by ``|delta NDCG|``, the change of the query's
    NDCG (linear gains, as :func:`uniloss.zoo.ndcg_at_k`) if the two swapped places in the current
    ranking; a weighted mean over the pairs, so its scale is :func:`pairwise_logistic`'s. Zero
    (attached) without a pair."""
    s, r = scores.reshape(-1, size), relevance.reshape(-1, size).to(scores.dtype)
    with torch.no_grad():
        rank = s.argsort(1, descending=True).argsort(1).to(s.dtype)
        discount = 1.0 / torch.log2(rank + 2.0)
        ideal = (r.sort(1, descending=True).values / torch.log2(torch.arange(size, dtype=s.dtype) + 2.0)).sum(1)
        weight = ((r[:, :, None] - r[:, None, :]).abs() * (discount[:, :, None] - discount[:, None, :]).abs()
                  / ideal.clamp_min(1e-12)[:, None, None])
        weight = weight * (r[:, :, None] > r[:, None, :])
    terms = F.softplus(s[:, None, :] - s[:, :, None]) * weight  # [q, i, j]: i more relevant than j
    return terms.sum() / weight.sum().clamp_min(1e-12)


def lovasz_grad(gt_sorted: Tensor) -> Tensor:
    """Gradient of the Lovász extension of the Jaccard loss for errors sorted descending."""
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1.0 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])


def lovasz_softmax(logits: Tensor, target: Tensor) -> Tensor:
    """Lovász-softmax (Berman, Triki, Blaschko, CVPR 2018) over the batch's pixels, averaged over
    the classes present in ``target``. ``logits [n, C, H, W]``, ``target [n, H, W]`` int64.

    On one-hot probabilities it equals ``1 - IoU`` per class (the Lovász extension is tight at
    the vertices), which the tests check."""
    probs = logits.softmax(1).movedim(1, -1).reshape(-1, logits.shape[1])
    labels = target.reshape(-1)
    losses = []
    for c in range(logits.shape[1]):
        fg = (labels == c).to(probs.dtype)
        if fg.sum() == 0:
            continue
        errors = (fg - probs[:, c]).abs()
        errors_sorted, perm = torch.sort(errors, descending=True)
        losses.append(torch.dot(errors_sorted, lovasz_grad(fg[perm])))
    return torch.stack(losses).mean()


def f1_at(scores: Tensor, target: Tensor, threshold: float) -> float:
    """F1 of the decision ``scores > threshold`` (0 without a true positive)."""
    pred = scores > threshold
    pos = target.bool()
    tp = float((pred & pos).sum())
    return 2 * tp / max(1.0, float(pred.sum()) + float(pos.sum())) if tp > 0 else 0.0


def operating_point(scores: Tensor, target: Tensor, level: float, of_recall: bool) -> float:
    """scikit-learn's precision-recall curve of ``(scores, target)`` read at one operating point:
    the largest recall at a precision ``>= level`` (``of_recall``; 0 where none is), or the largest
    precision at a recall ``>= level`` (leaving out the curve's end point, recall 0 at precision 1,
    which no threshold gives; torchmetrics leaves it out too). The held-out score of the
    ``recall-at-p80`` and ``precision-at-r60`` probes; ``uniloss.zoo.recall_at_precision`` and
    ``precision_at_recall`` train them."""
    from sklearn.metrics import precision_recall_curve

    precision, recall, _ = precision_recall_curve(target.reshape(-1).numpy(), scores.reshape(-1).double().numpy())
    if of_recall:
        return float(max([r for p, r in zip(precision, recall) if p >= level], default=0.0))
    return float(max(p for p, r in zip(precision[:-1], recall[:-1]) if r >= level))


def tuned_threshold(scores: Tensor, target: Tensor, beta: float = 1.0) -> float:
    """The threshold among the midpoints of ``scores`` that maximises F-beta (default F1) on
    ``(scores, target)``: ``(1 + beta^2) TP / (predicted + beta^2 positives)`` over every cut."""
    s, order = torch.sort(scores.reshape(-1), descending=True)
    pos = target.reshape(-1)[order].double()
    tp = pos.cumsum(0)
    f = (1 + beta**2) * tp / (torch.arange(1, len(s) + 1, dtype=torch.float64) + beta**2 * pos.sum())
    k = int(f.argmax())
    return float((s[k] + s[k + 1]) / 2) if k + 1 < len(s) else float(s[k]) - 1.0


# --------------------------------------------------------------------------- training


#: The learning-rate multiplier of the run in progress (``--lr-scales``): every recipe's SGD
#: learning rate is its own times this. Set by :func:`_run_job` in the process that runs the job.
_LR_SCALE = 1.0

#: The optimiser of the run in progress (``--optimizer``): ``"sgd"``, each recipe's own, or
#: ``"adam"``, :class:`torch.optim.Adam` at its default learning rate ``1e-3`` for every task and
#: loss (times the learning-rate scale; the recipe's weight decay and schedule kept, its momentum
#: unused): what a practitioner who does not tune would try, and a setting the defaults were not
#: chosen on. Set by :func:`_run_job` in the process that runs the job.
_OPTIMIZER = "sgd"

#: Adam's learning rate in ``--optimizer adam`` runs (before the learning-rate scale).
ADAM_LR = 1e-3


def sgd(model: nn.Module, lr: float, momentum: float = 0.9, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """The recipes' SGD, at ``lr`` times the suite's learning-rate scale of the run; with
    ``--optimizer adam``, Adam at :data:`ADAM_LR` times that scale instead (``lr`` and ``momentum``
    unused)."""
    if _OPTIMIZER == "adam":
        return torch.optim.Adam(model.parameters(), lr=ADAM_LR * _LR_SCALE, weight_decay=weight_decay)
    return torch.optim.SGD(model.parameters(), lr=lr * _LR_SCALE, momentum=momentum, weight_decay=weight_decay)


def cosine(opt: torch.optim.Optimizer, epochs: int):
    """Cosine decay of the learning rate to 0 over ``epochs`` (stepped once an epoch)."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)


def seeded(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(seed)
    return build()


def mlp(*sizes: int) -> nn.Module:
    """:class:`~uniloss.experiments.models.MLP` with layer widths ``sizes`` (input first)."""
    from .models import MLP

    return MLP(sizes[0], sizes[1:-1], sizes[-1])


def fcn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 2, 3, padding=1),
    )


class DigitSegmenter(nn.Module):
    """A small encoder-decoder for ``[n, 1, 28, 28]`` images, ``[n, classes, 28, 28]`` logits: two
    3x3 convolutions of 16 channels at full resolution; two stride-2 convolutions to 64 channels at
    7x7 and two more there (each convolution followed by BatchNorm and a ReLU); the coarse features
    upsampled bilinearly and their global average (the whole digit, to tell which it is) broadcast
    to every pixel, joined with the full-resolution features, and a 1x1 convolution to the logits."""

    def __init__(self, classes: int = 11) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int = 1) -> List[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.stem = nn.Sequential(*block(1, 16), *block(16, 16))
        self.down = nn.Sequential(*block(16, 32, 2), *block(32, 64, 2), *block(64, 64), *block(64, 64))
        self.head = nn.Conv2d(16 + 64 + 64, classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        full = self.stem(x)
        coarse = self.down(full)
        size = x.shape[-2:]
        up = F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
        whole = coarse.mean((2, 3), keepdim=True).expand(-1, -1, *size)
        return self.head(torch.cat([full, up, whole], 1))


# --------------------------------------------------------------------------- tasks


@dataclass
class Task:
    """One benchmark task.

    ``losses`` maps a row label to ``(kind, name)``; ``run(name, seed, quick, options)`` trains
    with loss ``name`` (``"uniloss"`` takes ``options``, keywords of :class:`uniloss.UniLoss`)
    and returns the held-out metric per epoch.
    """

    name: str
    metric: str
    data: str
    run: Callable[[str, int, bool, dict], List[float]]
    losses: Dict[str, Tuple[str, str]]
    weight: float = 1.0  # rough relative cost, to start the long runs first
    suite: bool = True  # False: a probe task (run only when named), not one the defaults were chosen on


def _binary_logits(model: nn.Module, x: Tensor) -> Tensor:
    return model(x).reshape(-1)


def _uniloss(metric: uniloss.Decomposition, seed: int, options: dict) -> Callable[..., Tensor]:
    options = dict(options)
    for key in (SIZE_OF, DIRECTION_OF):
        if key in options:
            raise ValueError(f"--variant {key}: only the segmentation tasks take it (run_segmentation)")
    if options.pop(EUCLIDEAN_STEP, False):
        return _resized_step(_uniloss(metric, seed, options),
                             _uniloss(metric, seed, {**options, "grad_scale": _PULL_ALONE}))
    chain_step = options.pop(CHAIN_STEP, None)
    if chain_step is not None:
        if chain_step not in CHAIN_STEPS:
            raise ValueError(f"--variant {CHAIN_STEP}: {chain_step!r} is not one of {CHAIN_STEPS}")
        return _resized_step(_uniloss(metric, seed, options), _uniloss(metric, seed, {**options, "pull": 0}),
                             order=1, keep_larger=chain_step == "max")
    if options.pop(ORDINAL_PULL, False):
        metric = with_ordinal_pull(metric)
    momentum = options.pop(PLUG_IN, None)
    if momentum is not None:
        metric = _PlugInWeights(metric, float(momentum))
    if options.pop(CENTRED_QUERIES, False):
        return _centred_queries(_uniloss(metric, seed, options))
    size, as_is = options.pop(MEMORY, 0), options.pop(MEMORY_AS_IS, 0)
    if size and as_is:
        raise ValueError(f"give {MEMORY!r} or {MEMORY_AS_IS!r}, not both")
    if not (size or as_is):
        return uniloss.UniLoss(metric, generator=torch.Generator().manual_seed(seed + 1000), **options)
    from ..distributed import CrossBatchMemory

    memory = CrossBatchMemory(metric, size=int(size or as_is))
    fn = uniloss.UniLoss(memory, generator=torch.Generator().manual_seed(seed + 1000), **options)
    if as_is:  # as a user writes it: the step shrinks with the batch's share n / (n + m)
        return fn

    def loss(scores: Tensor, target: Tensor) -> Tensor:
        # The engine averages over batch + memory, whose rows carry no gradient: scaled back
        # to the batch's share, so a step keeps the batch's size (the probe's assumption).
        n, m = scores.shape[0], len(memory)
        return fn(scores, target) * ((n + m) / n)

    return loss


# A probe keyword of --variant (benchmarks/push_concentration.py's question; not adopted): the
# defaults' step direction, its size the pull's Euclidean norm on the scores instead of its total
# push (_resized_step).
EUCLIDEAN_STEP = "euclidean_step"
# grad_scale that leaves the pull's gradient alone: the chain's push times it is below float32's
# resolution of the pull's, and the step rule then sizes the step by the pull alone (tested)
_PULL_ALONE = 1e-12


def _resized_step(loss_fn: Callable[..., Tensor], size_fn: Callable[..., Tensor], order: int = 2,
                  keep_larger: bool = False) -> Callable[..., Tensor]:
    """A loss whose gradient on the scores is ``loss_fn``'s, rescaled to the Euclidean norm of
    ``size_fn``'s, batch by batch (``order=1``: to its total push, the L1 norm; ``keep_larger``:
    to the larger of the two gradients' norms). :data:`EUCLIDEAN_STEP`: ``size_fn`` the defaults'
    pull alone (``grad_scale`` :data:`_PULL_ALONE`); the step rule (``step="pull"``) matches the
    pull's total push ``sum |g|``, which a direction concentrated on a few scores meets with a few
    large entries; matching ``||g||_2`` instead shrinks such a step by how concentrated it is.
    :data:`SIZE_OF` and :data:`DIRECTION_OF`: one loss's direction at another's size;
    :data:`CHAIN_STEP`: the defaults' direction at the chain's total push. Its value is a
    surrogate whose gradient is that step (two loss calls a step: a probe)."""

    def loss(scores: Tensor, target: Any) -> Tensor:
        leaf = scores.detach().requires_grad_()
        step = torch.autograd.grad(loss_fn(leaf, target), leaf)[0]
        leaf = scores.detach().requires_grad_()
        other = torch.autograd.grad(size_fn(leaf, target), leaf)[0]
        size = torch.linalg.vector_norm(step, ord=order)
        tiny = torch.finfo(size.dtype).tiny
        wanted = torch.linalg.vector_norm(other, ord=order)
        if keep_larger:
            wanted = torch.maximum(wanted, size)
        scale = torch.where(size > 0, wanted / size.clamp_min(tiny), 0.0)
        return (scores * (step * scale).detach()).sum()

    return loss


# Probe keywords of --variant on the segmentation tasks (run_segmentation; session 68): one loss's
# step direction at another's size, its Euclidean norm on the logits batch by batch
# (_resized_step), to tell the step's profile over a run from its direction. The value names
# the other loss, a key of SEGMENTATION_LOSSES. SIZE_OF: UniLoss's direction at that loss's size;
# DIRECTION_OF: that loss's direction at UniLoss's size.
SIZE_OF = "size_of"
DIRECTION_OF = "direction_of"
# A probe keyword of --variant (session 68): the defaults' step direction at the chain's size, the
# total push on the scores of UniLoss with pull=0 (the interpolation's own gradient, unscaled),
# batch by batch ("chain"), or at the larger of that and the defaults' own (the pull's; "max").
CHAIN_STEP = "chain_step"
CHAIN_STEPS = ("chain", "max")


# A probe keyword of --variant: F-beta at a threshold with its pull's samples weighed by the
# plug-in rule at running counts (_PlugInWeights; the value: the counts' momentum per call;
# screen v51, not adopted).
PLUG_IN = "plug_in"


class _PlugInWeights(uniloss.Decomposition):
    """A zoo F-beta at a threshold (:func:`uniloss.zoo.f_beta`) whose pull takes each sample as a
    run of its one comparison, weighed by F's change when that sample alone flips at counts
    averaged over calls: a positive ``1 + beta^2 - F``, a negative ``F`` (over their mean), so
    the weighted binary cross-entropy decides at ``P(y = 1 | x) > F / (1 + beta^2)``, the plug-in
    threshold that maximises F of a calibrated model. ``F`` comes from an exponential average of
    the training batches' ``TP``, ``FP`` and ``FN`` at their current decisions (``momentum`` per
    call), not from one batch's (screen v37 took the batch's: about 6 positives, noisy)."""

    def __init__(self, metric: uniloss.Decomposition, momentum: float) -> None:
        decoder, evaluator = getattr(metric, "decoder", None), getattr(metric, "evaluator", None)
        if not isinstance(decoder, uniloss.decoders.Threshold) or "beta" not in getattr(evaluator, "options", {}):
            raise ValueError(f"--variant {PLUG_IN}: {metric!r} is not the zoo's f_beta")
        self.inner, self.momentum = metric, momentum
        self.beta2 = float(evaluator.options["beta"]) ** 2  # type: ignore[union-attr]
        self.threshold = decoder.threshold
        self.counts: Optional[Tensor] = None  # [TP, FP, FN], averaged

    def check(self, scores: Tensor, target: Any) -> None:
        self.inner.check(scores, target)

    def prepare(self, scores: Tensor, target: Any, generator: Optional[torch.Generator] = None) -> Any:
        plan = self.inner.prepare(scores, target, generator)
        if scores is not None and isinstance(target, Tensor) and torch.is_grad_enabled():
            with torch.no_grad():
                pred, truth = scores.detach().reshape(-1) > self.threshold, target.reshape(-1) != 0
                batch = torch.stack([(pred & truth).sum(), (pred & ~truth).sum(), (~pred & truth).sum()]).double()
                self.counts = batch if self.counts is None else self.momentum * self.counts + (1 - self.momentum) * batch
        return plan

    def comparisons(self, scores: Tensor, target: Any) -> Tensor:
        return self.inner.comparisons(scores, target)

    def best(self, target: Any) -> Tensor:
        return self.inner.best(target)

    def evaluate(self, bits: Tensor, target: Any) -> Tensor:
        return self.inner.evaluate(bits, target)

    def metric(self, scores: Tensor, target: Any) -> Tensor:
        return self.inner.metric(scores, target)

    def structure(self, target: Any) -> Optional[uniloss.Structure]:
        truth = target.target.reshape(-1) != 0  # (the Threshold plan's target: a bool tensor)
        if self.counts is None:
            return None
        tp, fp, fn = self.counts
        den = (1 + self.beta2) * tp + self.beta2 * fn + fp
        f = float((1 + self.beta2) * tp / den) if float(den) > 0 else 0.0
        weights = torch.where(truth, 1 + self.beta2 - f, f)
        return uniloss.Structure(1, run_weights=lambda: weights)


# A probe keyword of --variant: the metric over the batch plus the last N samples' detached
# scores (uniloss.distributed.CrossBatchMemory), the loss scaled by (n + m) / n.
MEMORY = "memory"
# The same memory as a user writes it, the loss not scaled (the batch's gradient then shrinks by
# about n / (n + m), a lower step).
MEMORY_AS_IS = "memory_as_is"


# A probe keyword of --variant beside UniLoss's own (a prototype, not a library option).
ORDINAL_PULL = "ordinal_pull"


class _OrdinalRanking(Ranking):
    """:class:`uniloss.decoders.Ranking` whose graded relevance's ordinal margins (0.10's, see
    :func:`uniloss._pairs.ordinal_margins`) come flattened to ``[n x boundaries]``, so the pull
    averages its terms over all of them instead of summing them per item and averaging over the
    items: the form the ``ordinal_pull`` probe measured before 0.10 took the summed one (each step
    smaller by the number of boundaries where the pull dominates). 0/1 relevance is unchanged."""

    def margins(self, plan: Any) -> Optional[Callable[[Tensor], Tensor]]:
        margins = super().margins(plan)
        if margins is None or self._prepared(plan).binary:
            return margins
        return lambda scores: margins(scores).reshape(-1)


# A probe keyword of --variant: each query's mean score taken out before the loss (the metric
# learning probe's uniloss-centred row, on any ranking task).
CENTRED_QUERIES = "centred_queries"


def _centred_queries(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """``fn`` on scores minus the mean score of their query (``target.query``), gradient included:
    a pull that can no longer move a query's level, which a ranking metric ignores."""

    def loss(scores: Tensor, target: RankingTarget) -> Tensor:
        if not isinstance(target, RankingTarget):
            raise TypeError(f"--variant {CENTRED_QUERIES}: needs a RankingTarget, got {type(target).__name__}")
        if target.query is None:  # one query
            return fn(scores - scores.mean(), target)
        query = torch.unique(target.query, return_inverse=True)[1]  # ids as 0 .. Q - 1
        count = torch.bincount(query).to(scores.dtype)
        mean = torch.zeros(len(count), dtype=scores.dtype, device=scores.device).index_add(0, query, scores) / count
        return fn(scores - mean[query], target)

    return loss


# The --variant keywords that _uniloss takes before UniLoss sees the rest.
PROBE_KEYWORDS = (ORDINAL_PULL, MEMORY, MEMORY_AS_IS, PLUG_IN, EUCLIDEAN_STEP, CENTRED_QUERIES, SIZE_OF, DIRECTION_OF,
                  CHAIN_STEP)


def with_ordinal_pull(metric: uniloss.Decomposition) -> uniloss.Decomposition:
    """``metric`` (a zoo ranking metric of graded relevance) with :class:`_OrdinalRanking` as its
    decoder: a copy, the metric itself unchanged."""
    decoder = getattr(metric, "decoder", None)
    if not isinstance(decoder, Ranking):
        raise ValueError(f"--variant {ORDINAL_PULL}: {metric!r} is not a ranking metric of the zoo")
    copy = cast(Any, metric.__class__.__new__(metric.__class__))
    copy.__dict__.update(metric.__dict__)
    ordinal = _OrdinalRanking.__new__(_OrdinalRanking)
    ordinal.__dict__.update(decoder.__dict__)
    copy.decoder = ordinal
    return copy


def run_mnist0(loss: str, seed: int, quick: bool, options: dict, data_dir: Optional[str] = None) -> List[float]:
    from .data import load_mnist

    train, test = load_mnist("train", data_dir=data_dir), load_mnist("test", data_dir=data_dir)
    xtr, ytr = train.images.float().reshape(-1, 784) / 255.0, (train.labels == 0).long()
    xte, yte = test.images.float().reshape(-1, 784) / 255.0, (test.labels == 0).long()
    model = seeded(seed, lambda: mlp(784, 500, 300, 1))
    gen = torch.Generator().manual_seed(seed)
    fn = _binary_loss(loss, uniloss.AveragePrecision(), seed, options, pos_weight=None)
    return fit(model, sgd(model, 0.01, momentum=0.5), shuffled(len(ytr), 16, gen),
               lambda m, idx: fn(_binary_logits(m, xtr[idx]), ytr[idx]), 4 if quick else 30,
               lambda m: average_precision(_binary_logits(m, xte), yte, interpolated=True))


def _binary_loss(loss: str, decomposition, seed: int, options: dict, pos_weight: Optional[float]):
    if loss == "bce":
        return lambda s, y: F.binary_cross_entropy_with_logits(s, y.float())
    if loss == "bce-posweight":
        w = torch.tensor(pos_weight)
        return lambda s, y: F.binary_cross_entropy_with_logits(s, y.float(), pos_weight=w)
    if loss == "pairwise":
        return pairwise_logistic
    if loss == "uniloss":
        return _uniloss(decomposition, seed, options)
    raise ValueError(f"unknown loss {loss!r}")


_BINARY: Dict[str, Callable[[], uniloss.Decomposition]] = {
    "ap": uniloss.AveragePrecision, "f1": lambda: zoo.f_beta(1.0, threshold=0.0),
    "f2": lambda: zoo.f_beta(2.0, threshold=0.0), "auroc": zoo.auroc,
    "recall-at-p80": lambda: zoo.recall_at_precision(0.8), "precision-at-r60": lambda: zoo.precision_at_recall(0.6),
}
# The operating-point probes: (level, of_recall) of metric_wins.operating_point.
_OPERATING_POINTS = {"recall-at-p80": (0.8, True), "precision-at-r60": (0.6, False)}
# Scored at a validation-tuned threshold, every loss alike: F-beta's beta.
_TUNED = {"f1-tuned": 1.0, "f2-tuned": 2.0}


def fashion_binary(draw: int = 0, positive: int = 6, share: float = 0.05, data_dir: Optional[str] = None):
    """Fashion-MNIST, one class (``positive``, default 6: shirt, the class most confused with
    others) against the rest, its images kept at random (``draw`` the seed) so that they are
    ``share`` of each split: ``(x_train, y_train, x_val, y_val, x_test, y_test)``, images flattened
    to ``[n, 784]`` and standardised with the training split's statistics; the validation split
    is a random tenth of the training images (about 51k / 5.7k / 9.5k images at 5%)."""
    from .data import load_fashion_mnist

    g = torch.Generator().manual_seed(draw)

    def kept(split: str) -> Tuple[Tensor, Tensor]:
        data = load_fashion_mnist(split, data_dir=data_dir)
        y = (data.labels == positive).long()
        pos, neg = torch.nonzero(y == 1).flatten(), torch.nonzero(y == 0).flatten()
        keep = round(share / (1 - share) * len(neg))
        if not 0 < keep <= len(pos):
            raise ValueError(f"share={share}: {keep} images of class {positive} wanted in the {split} split, "
                             f"which has {len(pos)}")
        index = torch.cat([neg, pos[torch.randperm(len(pos), generator=g)[:keep]]])
        index = index[torch.randperm(len(index), generator=g)]
        return data.images[index].float().reshape(-1, 784) / 255.0, y[index]

    (x, y), (xte, yte) = kept("train"), kept("test")
    nva = len(y) // 10
    xva, yva, xtr, ytr = x[:nva], y[:nva], x[nva:], y[nva:]
    mean, std = xtr.mean(), xtr.std()
    return (xtr - mean) / std, ytr, (xva - mean) / std, yva, (xte - mean) / std, yte


def run_imbalanced(metric: str, loss: str, seed: int, quick: bool, options: dict,
                   validation: Optional[List[float]] = None, draw: int = 0, hidden: Sequence[int] = (64, 64),
                   batch: int = 128, source: str = "synthetic", **data) -> List[float]:
    """An ``imb-ap`` (``metric="ap"``) or ``imb-f1`` (``"f1"``) run: the held-out metric per epoch;
    ``draw``: the data set's draw (``make_classification``'s ``random_state``; the suite's tasks
    fix draw 0, the ``-draws`` probes draw one per seed); ``data``: other keywords of
    :func:`imbalanced_binary` (``benchmarks/label_noise_probe.py`` varies them); ``hidden``: the
    MLP's hidden widths (``()``: a linear model) and ``batch`` the batch size
    (``benchmarks/capacity_probe.py`` varies them).
    ``validation``: a list that receives the validation split's AP after each epoch (the epoch a
    practitioner's early stopping would keep; ``benchmarks/early_stopping_probe.py``).
    The probe tasks also train and score ``"f2"`` (F2 at logit 0), ``"auroc"``, and ``"f1-tuned"``
    / ``"f2-tuned"`` (F1 / F2 at the threshold tuned on the validation split, for every loss);
    ``benchmarks/capacity_probe.py`` ``"recall-at-p80"`` (recall at precision >= 0.8) and
    ``"precision-at-r60"`` (precision at recall >= 0.6), scored by :func:`operating_point`, where
    the loss ``"uniloss-ap"`` is UniLoss on ``uniloss.zoo.average_precision()`` instead of the
    metric scored.
    ``source="fashion"``: the data of :func:`fashion_binary` (``data``: its keywords) instead, 5
    epochs (``benchmarks/capacity_probe.py``'s ``fashion-ap`` and ``fashion-f1``)."""
    if source == "fashion":
        xtr, ytr, xva, yva, xte, yte = fashion_binary(draw, **data)
    elif source == "synthetic":
        xtr, ytr, xva, yva, xte, yte = imbalanced_binary(draw, **data)
    else:
        raise ValueError(f"unknown source {source!r}: 'synthetic' or 'fashion'")
    model = seeded(seed, lambda: mlp(xtr.shape[1], *hidden, 1))
    gen = torch.Generator().manual_seed(seed)
    pos_weight = float((ytr == 0).sum()) / float((ytr == 1).sum())
    decomposition = _BINARY[metric.removesuffix("-tuned")]()  # (a tuned probe trains as its metric at logit 0)
    if loss == "uniloss-ap":  # UniLoss on AP, whatever the metric scored (the operating-point probes)
        decomposition, loss = zoo.average_precision(), "uniloss"
    fn = _binary_loss(loss.replace("-tuned", ""), decomposition, seed, options, pos_weight)

    def evaluate(m: nn.Module) -> float:
        s = _binary_logits(m, xte)
        if validation is not None:
            validation.append(average_precision(_binary_logits(m, xva), yva))
        if metric == "ap":
            return average_precision(s, yte)
        if metric in _OPERATING_POINTS:
            return operating_point(s, yte, *_OPERATING_POINTS[metric])
        if metric in _TUNED:  # every loss's decision at the threshold that maximises F-beta on the validation split
            return float(decomposition.metric(s - tuned_threshold(_binary_logits(m, xva), yva, _TUNED[metric]), yte))
        if metric != "f1":
            return float(decomposition.metric(s, yte))
        threshold = tuned_threshold(_binary_logits(m, xva), yva) if loss.endswith("-tuned") else 0.0
        return f1_at(s, yte, threshold)

    epochs = 5 if source == "fashion" else 20 if quick else 40
    opt = sgd(model, 0.1)
    return fit(model, opt, shuffled(len(ytr), batch, gen),
               lambda m, idx: fn(_binary_logits(m, xtr[idx]), ytr[idx]), epochs, evaluate, cosine(opt, epochs))


def _run_classes(xtr, ytr, xte, yte, build, metric_fn, loss: str, seed: int, options: dict, *, decomposition,
                 epochs: int, lr: float = 0.1, batch: int = 128, weight_decay: float = 0.0,
                 transform: Optional[Callable[[Tensor, torch.Generator], Tensor]] = None,
                 milestones: Optional[Sequence[int]] = None) -> List[float]:
    """A classification run: CE (``"ce"``), class-weighted CE (``"ce-weighted"``) or UniLoss;
    the learning rate drops 10x at ``milestones``, or follows a cosine without them."""
    model = seeded(seed, build)
    gen = torch.Generator().manual_seed(seed)
    fn: Callable[..., Tensor]
    if loss == "ce":
        fn = F.cross_entropy
    elif loss == "ce-weighted":
        counts = torch.bincount(ytr, minlength=int(ytr.max()) + 1).float()
        weight = counts.sum() / (len(counts) * counts)
        fn = lambda s, y: F.cross_entropy(s, y, weight=weight)  # noqa: E731
    elif loss == "uniloss":
        fn = _uniloss(decomposition, seed, options)
    else:
        raise ValueError(f"unknown loss {loss!r}")
    opt = sgd(model, lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(milestones), 0.1) if milestones else cosine(opt, epochs)

    def step(m, idx):
        x = xtr[idx]
        if transform is not None:
            x = transform(x, gen)
        return fn(m(x), ytr[idx])

    def evaluate(m):
        out = torch.cat([m(xte[i:i + 1000]) for i in range(0, len(xte), 1000)])
        return float(metric_fn(out, yte))

    return fit(model, opt, shuffled(len(ytr), batch, gen), step, epochs, evaluate, sched)


def _accuracy(out: Tensor, y: Tensor) -> Tensor:
    return (out.argmax(1) == y).double().mean()


def run_fashion(loss: str, seed: int, quick: bool, options: dict, data_dir: Optional[str] = None) -> List[float]:
    from .data import load_fashion_mnist

    train, test = load_fashion_mnist("train", data_dir=data_dir), load_fashion_mnist("test", data_dir=data_dir)
    xtr = train.images.float()[:, None] / 255.0
    xte = test.images.float()[:, None] / 255.0
    mean, std = float(xtr.mean()), float(xtr.std())
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    if quick:
        return _run_classes(xtr, train.labels, xte, test.labels, lambda: mlp(784, 256, 10), _accuracy, loss, seed,
                            options, decomposition=uniloss.MulticlassAccuracy(), epochs=8, weight_decay=1e-4)
    from .augment import random_crop, random_hflip
    from .models import ResNet20

    def augment(x: Tensor, g: torch.Generator) -> Tensor:
        return cast(Tensor, random_hflip(cast(Tensor, random_crop(x, 4, generator=g)), generator=g))

    return _run_classes(xtr, train.labels, xte, test.labels, lambda: ResNet20(10, in_channels=1), _accuracy, loss,
                        seed, options, decomposition=uniloss.MulticlassAccuracy(), epochs=30, weight_decay=1e-4,
                        transform=augment, milestones=(21, 26))


def run_pairs(loss: str, seed: int, quick: bool, options: dict, data_dir: Optional[str] = None,
              metric: Optional[uniloss.Decomposition] = None, hidden: Sequence[int] = (512,),
              batch: int = 128) -> List[float]:
    """The ``pairs-acc`` task; ``metric``: another metric of the zoo to train and score (the probe
    tasks ``top5``: ``zoo.top_k_accuracy(5)``, ``pairs-f1``: ``zoo.macro_f1(100)``), accuracy by
    default; ``hidden``: the MLP's hidden widths and ``batch`` the batch size
    (``benchmarks/capacity_probe.py`` varies them)."""
    from .multiclass import load_digit_pairs

    s = load_digit_pairs(data_dir, torch.device("cpu"))
    xtr, xte = s.x_train.float() / 255.0, s.x_test.float() / 255.0
    decomposition = uniloss.MulticlassAccuracy() if metric is None else metric
    return _run_classes(xtr, s.y_train, xte, s.y_test, lambda: mlp(1568, *hidden, 100),
                        _accuracy if metric is None else metric.metric, loss, seed, options,
                        decomposition=decomposition, epochs=5 if quick else 15, batch=batch)


def run_digits_f1(loss: str, seed: int, quick: bool, options: dict, draw: int = 0,
                  hidden: Sequence[int] = (128,), batch: int = 128) -> List[float]:
    """The ``digits-f1`` task; ``draw``: the train/test split's (the suite's task fixes 0, the
    ``digits-f1-draws`` probe splits again for each seed); ``hidden``: the MLP's hidden widths
    (``()``: linear) and ``batch`` the batch size (``benchmarks/capacity_probe.py``)."""
    xtr, xte, ytr, yte = digits_split(draw, test_size=0.25)
    metric = zoo.macro_f1(10)
    return _run_classes(xtr, ytr, xte, yte, lambda: mlp(64, *hidden, 10), metric.metric, loss, seed, options,
                        decomposition=metric, epochs=30, batch=batch)


def noisy_labels(y: Tensor, noise: float, num_classes: int, generator: torch.Generator) -> Tensor:
    """``y`` with each label drawn again uniformly over ``num_classes`` with probability ``noise``
    (symmetric label noise: a redrawn label keeps its class with probability ``1 / num_classes``).
    One uniform and one class are drawn per sample whatever ``noise``, so rates share their draws."""
    redraw = torch.rand(len(y), generator=generator) < noise
    return torch.where(redraw, torch.randint(0, num_classes, (len(y),), generator=generator), y)


def run_noisy_digits(loss: str, seed: int, noise: float, options: dict) -> List[float]:
    """Digits accuracy (the ``digits-f1`` task's split, network and recipe) with a fraction
    ``noise`` of the training labels drawn again uniformly over the 10 classes (so about
    ``0.9 noise`` of them wrong; the same labels for every loss and seed: generator 1234); the
    test labels are clean. ``loss`` ``"ce"`` or ``"uniloss"`` (``MulticlassAccuracy``, with
    ``options``). ``benchmarks/label_noise_probe.py`` uses it."""
    xtr, xte, ytr, yte = digits_split(test_size=0.25)
    ytr = noisy_labels(ytr, noise, 10, torch.Generator().manual_seed(1234))
    return _run_classes(xtr, ytr, xte, yte, lambda: mlp(64, 128, 10), _accuracy, loss, seed, options,
                        decomposition=uniloss.MulticlassAccuracy(), epochs=30)


def imbalanced_mnist(ratio: float = 0.6, data_dir: Optional[str] = None, draw: Optional[int] = None,
                     source: str = "mnist"):
    """MNIST whose training digit ``c`` keeps its first ``ratio ** c`` images (15,225 of 60,000
    at 0.6; ``draw``: as many drawn at random with that seed instead, the ``bal-acc-draws``
    probe), flattened to ``[N, 784]`` in ``[0, 1]``; the test split whole (balanced):
    ``(x_train, y_train, x_test, y_test)``.

    ``source="fashion"``: Fashion-MNIST instead (a probe on real images, no suite task), where
    the classes' shares are dealt at random too: class ``c`` keeps ``ratio ** order[c]`` of its
    images, ``order`` a random permutation of the ten classes drawn with the same seed (``draw``
    is then required), so that no one class is always the rarest."""
    load = _image_loader(source)
    if source == "fashion" and draw is None:
        raise ValueError("source='fashion' deals the classes' shares at random: give a draw")
    train, test = load("train", data_dir=data_dir), load("test", data_dir=data_dir)
    y = train.labels
    rank = torch.zeros_like(y)
    gen = None if draw is None else torch.Generator().manual_seed(draw)
    order = torch.arange(10) if source == "mnist" else torch.randperm(10, generator=gen)
    for c in range(10):  # data preparation, once
        idx = (y == c).nonzero().reshape(-1)
        if gen is not None:
            idx = idx[torch.randperm(len(idx), generator=gen)]
        rank[idx] = torch.arange(len(idx)) - round(len(idx) * ratio ** int(order[c]))
    keep = rank < 0
    flat = lambda images: images.float().reshape(len(images), -1) / 255.0  # noqa: E731
    return flat(train.images[keep]), y[keep], flat(test.images), test.labels


def run_balanced(loss: str, seed: int, quick: bool, options: dict, draw: Optional[int] = None) -> List[float]:
    return run_imbalanced_mnist("balanced_accuracy", loss, seed, quick, options, draw=draw)


def class_weighted_macro_f1(scores: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Macro-F1 of ``argmax scores`` with each sample of class ``c`` weighing ``weight[c]`` in the
    counts ``TP``, ``FP`` and ``FN``, averaged over the classes in the target or the prediction.
    Written with one-hot counts, no data-dependent shapes, so :func:`uniloss.from_metric` takes it
    as it is (a loss for macro-F1 at other class shares: ``weight`` the test's share of a class
    over its training share). Reference: ``sklearn.metrics.f1_score(average="macro",
    sample_weight=weight[target])``. Shapes: ``scores [n, C]``, ``target [n]`` int64, ``weight [C]``
    positive."""
    num = scores.shape[1]
    w = weight.to(scores.dtype)[target][:, None]
    pred = F.one_hot(scores.argmax(1), num).to(scores.dtype)
    true = F.one_hot(target, num).to(scores.dtype)
    tp, support = (pred * true * w).sum(0), ((pred + true) * w).sum(0)  # support: 2 TP + FP + FN
    present = support > 0
    return torch.where(present, 2 * tp / support.clamp_min(1e-30), 0.0).sum() / present.sum()


def plain_balanced_accuracy(scores: Tensor, target: Tensor) -> Tensor:
    """Balanced accuracy of ``argmax scores`` as a user writes it in torch: each class's recall,
    averaged over the classes in the target (:func:`uniloss.from_metric` takes it as it is).
    Reference: ``sklearn.metrics.balanced_accuracy_score``. Shapes: ``scores [n, C]``, ``target
    [n]`` int64."""
    true = F.one_hot(target, scores.shape[1]).to(scores.dtype)
    hits = (true * F.one_hot(scores.argmax(1), scores.shape[1]).to(scores.dtype)).sum(0)
    support = true.sum(0)
    present = support > 0
    return (hits / support.clamp_min(1))[present].mean()


def _prior_weights(target: Tensor, prior: Tensor) -> Tensor:
    """``[C]`` float64: ``prior[c] / share[c]``, each class's weight that moves a sample with the
    class shares ``share`` of ``target`` to the shares ``prior`` (prior shift)."""
    num = prior.numel()
    share = torch.bincount(target, minlength=num).double() / len(target)
    if bool((prior <= 0).any()) or bool((share == 0).any()):
        raise ValueError("prior must be positive, and every class present in target")
    return prior.double() / share


def prior_weighted_macro_f1(scores: Tensor, target: Tensor, prior: Tensor) -> Tensor:
    """Macro-F1 of ``argmax scores`` as it would be on data whose classes have the shares
    ``prior`` (``[C]``, summing to 1), estimated from a sample with other shares: each sample of
    class ``c`` weighs ``prior[c] / share[c]`` (its class's share in ``target``) in the counts
    ``TP``, ``FP`` and ``FN`` -- the confusion matrix expected under the new shares where only
    the classes' frequencies change (prior shift). Reference:
    ``sklearn.metrics.f1_score(average="macro", sample_weight=...)``. Shapes: ``scores [n, C]``,
    ``target [n]`` int64 with every class present, ``prior`` positive."""
    return class_weighted_macro_f1(scores.double(), target, _prior_weights(target, prior))


def prior_weighted_mcc(scores: Tensor, target: Tensor, prior: Tensor) -> Tensor:
    r"""The multi-class Matthews correlation (Gorodkin's :math:`R_K`, as
    :func:`uniloss.zoo.matthews_corrcoef`) of ``argmax scores`` at the class shares ``prior``:
    each sample weighs ``prior[c] / share[c]`` in the confusion matrix, as in
    :func:`prior_weighted_macro_f1`; 0 where the denominator is 0. Reference:
    ``sklearn.metrics.matthews_corrcoef(sample_weight=...)``. Shapes: those of
    :func:`prior_weighted_macro_f1`."""
    weight = _prior_weights(target, prior)
    num = weight.numel()
    w = weight[target]
    pred = scores.argmax(1)
    true_counts = w.new_zeros(num).index_add_(0, target, w)
    pred_counts = w.new_zeros(num).index_add_(0, pred.to(target.device), w)
    correct, total = (w * (pred == target)).sum(), w.sum()
    cov = correct * total - (pred_counts * true_counts).sum()
    den = ((total ** 2 - (pred_counts ** 2).sum()) * (total ** 2 - (true_counts ** 2).sum())).sqrt()
    return torch.where(den > 0, cov / den.clamp_min(1e-300), 0.0)


# test_prior="train": the metrics of run_imbalanced_mnist scored at the training split's class shares
_PRIOR_WEIGHTED = {"macro_f1": prior_weighted_macro_f1, "matthews_corrcoef": prior_weighted_mcc}


def run_imbalanced_mnist(metric_name: str, loss: str, seed: int, quick: bool, options: dict,
                         draw: Optional[int] = None, hidden: Sequence[int] = (128,), batch: int = 128,
                         test_prior: str = "balanced", source: str = "mnist") -> List[float]:
    """The ``bal-acc`` task's data, model and recipe (:func:`imbalanced_mnist`; ``draw``: its
    images drawn at random) trained and scored on the zoo's ``metric_name``
    (``"balanced_accuracy"``, ``"macro_f1"``, ``"matthews_corrcoef"`` of 10 classes); ``loss``
    ``"ce"``, ``"ce-weighted"``, ``"uniloss"`` (with ``options``) or, for ``"macro_f1"``,
    ``"uniloss-test-prior"``: UniLoss on macro-F1 at the class shares it is scored at (each sample
    weighed by its class's share there over its training share,
    :func:`class_weighted_macro_f1` through :func:`uniloss.from_metric`), and ``"uniloss-traced"``,
    its control: the same path on the plain macro-F1 (every weight 1; for ``"balanced_accuracy"``,
    :func:`plain_balanced_accuracy` through :func:`uniloss.from_metric`); ``"uniloss-class-weights"``:
    the test-prior metric as the zoo's ``macro_f1(10, class_weights=...)`` (its fast path and the
    pull of :func:`uniloss.zoo.macro_f1`); ``hidden``: the MLP's hidden
    widths (``()``: linear) and ``batch`` the batch size (``benchmarks/capacity_probe.py``).

    ``test_prior``: ``"balanced"`` scores the (balanced) test split as it is; ``"train"`` scores
    macro-F1 or the Matthews correlation as on test data with the training split's class shares
    (:func:`prior_weighted_macro_f1`, :func:`prior_weighted_mcc`), so held-out and training data
    differ by the sample only, not by the classes' shares. ``source="fashion"``:
    the same on Fashion-MNIST, the classes' shares dealt at random (:func:`imbalanced_mnist`)."""
    xtr, ytr, xte, yte = imbalanced_mnist(draw=draw, source=source)
    metric = getattr(zoo, metric_name)(10)
    if loss == "uniloss-traced" and metric_name == "balanced_accuracy":  # the user's own, traced
        loss = "uniloss"
        decomposition: uniloss.Decomposition = uniloss.from_metric(plain_balanced_accuracy)
    elif loss in ("uniloss-test-prior", "uniloss-traced", "uniloss-class-weights"):
        if metric_name != "macro_f1":
            raise ValueError(f"loss {loss!r} trains macro_f1 only (uniloss-traced: balanced_accuracy too), "
                             f"not {metric_name!r}")
        train_share = torch.bincount(ytr, minlength=10).double() / len(ytr)
        test_share = torch.bincount(yte, minlength=10).double() / len(yte)  # known to the user: the prior
        # ("uniloss-traced": the same path at the training shares, the plain macro-F1: its control)
        prior = test_share if test_prior == "balanced" and loss != "uniloss-traced" else train_share
        decomposition = (
            zoo.macro_f1(10, class_weights=prior / train_share) if loss == "uniloss-class-weights"
            else uniloss.from_metric(functools.partial(class_weighted_macro_f1, weight=prior / train_share)))
        loss = "uniloss"
    else:
        decomposition = metric
    score = metric.metric
    if test_prior == "train":
        if metric_name not in _PRIOR_WEIGHTED:
            raise ValueError(f"test_prior='train' scores {' and '.join(_PRIOR_WEIGHTED)} only, "
                             f"not {metric_name!r}")
        prior = torch.bincount(ytr, minlength=10).double() / len(ytr)
        score = functools.partial(_PRIOR_WEIGHTED[metric_name], prior=prior)
    elif test_prior != "balanced":
        raise ValueError(f"test_prior must be 'balanced' or 'train', not {test_prior!r}")
    return _run_classes(xtr, ytr, xte, yte, lambda: mlp(784, *hidden, 10), score, loss, seed, options,
                        decomposition=decomposition, epochs=5 if quick else 15, batch=batch)


def multilabel_mnist(draw: int = 0, *, fill: float = 0.5, decay: float = 0.7, source: str = "mnist",
                     data_dir: Optional[str] = None):
    """Multi-label mosaics: each image a 2 x 2 grid of four 14 x 14 slots, each slot holding a
    digit with probability ``fill`` (else blank), the digit of class ``c`` with probability
    proportional to ``decay ** c``, a random image of it; the labels ``[n, 10]`` in {0, 1} say
    which classes the mosaic shows. At the defaults class 0 is on about 49% of the mosaics and
    class 9 on about 2.5%. ``source="fashion"``: Fashion-MNIST's images, the classes' shares
    dealt in a random order (the draw the seed), as :func:`imbalanced_mnist` does.

    The training images are split 9:1 before the mosaics are drawn, so that the validation
    mosaics (for the tuned thresholds) share no image with the training ones. Returns
    ``(x_train [54000, 784], y_train [54000, 10], x_val [6000, 784], y_val, x_test [10000, 784],
    y_test)``, standardised with the training mosaics' statistics; ``draw`` seeds everything."""
    load = _image_loader(source)
    g = torch.Generator().manual_seed(draw)
    order = torch.arange(10) if source == "mnist" else torch.randperm(10, generator=g)
    share = decay ** order.double()
    share = share / share.sum()

    def mosaics(images: Tensor, labels: Tensor, count: int) -> Tuple[Tensor, Tensor]:
        small = F.avg_pool2d(images.float()[:, None] / 255.0, 2)[:, 0]  # [N, 14, 14]
        by_class = torch.argsort(labels, stable=True)
        sizes = torch.bincount(labels, minlength=10)
        starts = torch.cumsum(sizes, 0) - sizes
        cls = torch.multinomial(share, count * 4, replacement=True, generator=g).reshape(count, 4)
        filled = torch.rand(count, 4, generator=g) < fill
        pick = starts[cls] + (torch.rand(count, 4, generator=g) * sizes[cls]).long()
        tiles = small[by_class[pick]] * filled[..., None, None]  # [count, 4, 14, 14]
        x = tiles.reshape(count, 2, 2, 14, 14).permute(0, 1, 3, 2, 4).reshape(count, 784)
        y = torch.zeros(count, 10, dtype=torch.int64)
        y.scatter_add_(1, cls, filled.long())
        return x, (y > 0).long()

    train, test = load("train", data_dir=data_dir), load("test", data_dir=data_dir)
    index = torch.randperm(len(train.labels), generator=g)
    cut = len(index) // 10
    xva, yva = mosaics(train.images[index[:cut]], train.labels[index[:cut]], 6000)
    xtr, ytr = mosaics(train.images[index[cut:]], train.labels[index[cut:]], 54000)
    xte, yte = mosaics(test.images, test.labels, 10000)
    mean, std = xtr.mean(), xtr.std()
    return (xtr - mean) / std, ytr, (xva - mean) / std, yva, (xte - mean) / std, yte


def multilabel_macro_f1(scores: Tensor, target: Tensor) -> Tensor:
    """Macro-F1 of multi-label decisions ``scores > 0``: each label's F1 (0 where it has no
    positive in the target nor in the decisions, as scikit-learn's ``zero_division=0``) averaged
    over the labels. Plain torch, the metric :func:`uniloss.from_metric` traces for the
    ``mlabel-f1`` probe. Shapes: ``scores [n, L]`` float, ``target [n, L]`` in {0, 1}."""
    pred, pos = scores > 0, target == 1
    tp = (pred & pos).sum(0)
    return (2 * tp / (pred.sum(0) + pos.sum(0)).clamp_min(1)).mean()


def multilabel_samples_f1(scores: Tensor, target: Tensor) -> Tensor:
    """F1 per sample of multi-label decisions ``scores > 0``: each row's F1 between its predicted
    and its true labels (0 where it has neither, as scikit-learn's ``zero_division=0``), averaged
    over the rows (``f1_score(average="samples")``). Plain torch, the metric
    :func:`uniloss.from_metric` traces for the ``mlabel-samples-f1`` probe: a sum per row, then
    their mean. Shapes: ``scores [n, L]`` float, ``target [n, L]`` in {0, 1}."""
    pred, pos = scores > 0, target == 1
    tp, fp, fn = (pred & pos).sum(1), (pred & ~pos).sum(1), (~pred & pos).sum(1)
    return (2 * tp / (2 * tp + fp + fn).clamp_min(1)).float().mean()


def tuned_samples_threshold(scores: Tensor, target: Tensor, candidates: int = 199) -> float:
    """One threshold for every label, among ``0`` and ``candidates`` quantiles of ``scores``,
    that maximises :func:`multilabel_samples_f1` of ``scores - threshold`` on ``(scores,
    target)`` (the validation mosaics)."""
    at = torch.cat([torch.zeros(1), torch.quantile(scores.reshape(-1).float(),
                                                   torch.linspace(0.005, 0.995, candidates))])
    values = torch.stack([multilabel_samples_f1(scores - t, target) for t in at])
    return float(at[int(values.argmax())])


def multilabel_map(scores: Tensor, target: Tensor) -> float:
    """Mean over the labels of each label's average precision (scikit-learn's
    ``average_precision_score(target, scores, average="macro")``; a label without a positive is
    NaN, as there). Shapes: ``scores [n, L]``, ``target [n, L]`` in {0, 1}."""
    return statistics.fmean(average_precision(scores[:, j], target[:, j]) for j in range(scores.shape[1]))


def _by_label(scores: Tensor, target: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """``[n, L]`` scores and 0/1 targets as one list of ``L n`` items, each label a query:
    ``(scores, relevance, query)``, label-major."""
    n, labels = scores.shape
    query = torch.arange(labels, device=scores.device).repeat_interleave(n)
    return scores.t().reshape(-1), target.t().reshape(-1), query


def run_multilabel(loss: str, seed: int, quick: bool, options: dict, draw: int = 0, hidden: Sequence[int] = (128,),
                   batch: int = 128, source: str = "mnist", epochs: int = 5, metric: str = "f1") -> List[float]:
    """The ``mlabel-f1`` probe: multi-label mosaics (:func:`multilabel_mnist`, ``draw`` its
    seed), an MLP 784-``hidden``-10, batch 128, SGD lr 0.1 momentum 0.9, cosine over ``epochs``
    (5, also with ``quick``); test macro-F1 over the ten labels at logit 0
    (:func:`multilabel_macro_f1`). ``loss``: ``"bce"``; ``"bce-posweight"`` (each label's
    negatives over its positives); ``"bce-tuned"``, BCE scored at each label's threshold tuned
    for its F1 on the validation mosaics; ``"uniloss"``, the metric's plain-torch code through
    :func:`uniloss.from_metric` (no hand-written decomposition: the route a user takes for a
    metric the zoo lacked); ``"uniloss-zoo"``, the same metric as ``zoo.f_beta(1, average="macro")``.
    ``hidden``: the MLP's hidden widths (``()``: linear). ``metric="map"``: the ``mlabel-map``
    probe, the same data and model scored by the labels' mean AP (:func:`multilabel_map`);
    ``"pairwise"``, the pairwise logistic loss within each label; ``"uniloss"``,
    ``zoo.average_precision()`` with each label a query. ``metric="samples-f1"``: the
    ``mlabel-samples-f1`` probe, scored by F1 per sample at logit 0
    (:func:`multilabel_samples_f1`); ``"bce-tuned"`` at one threshold for every label tuned on
    the validation mosaics (:func:`tuned_samples_threshold`); ``"uniloss"``, the metric's plain
    torch code through :func:`uniloss.from_metric`."""
    if metric not in ("f1", "map", "samples-f1"):
        raise ValueError(f"unknown metric {metric!r}: 'f1', 'map' or 'samples-f1'")
    xtr, ytr, xva, yva, xte, yte = multilabel_mnist(draw, source=source)
    model = seeded(seed, lambda: mlp(784, *hidden, 10))
    gen = torch.Generator().manual_seed(seed)
    fn: Callable[..., Tensor]
    if metric == "map" and loss in ("uniloss", "pairwise"):
        ranked = _uniloss(zoo.average_precision(), seed, options) if loss == "uniloss" else None

        def fn(s: Tensor, y: Tensor) -> Tensor:
            flat, relevance, query = _by_label(s, y)
            if ranked is None:
                return pairwise_logistic(flat, relevance, query)
            return ranked(flat, RankingTarget(relevance, query))
    elif metric == "map" and loss not in ("bce", "bce-posweight"):
        raise ValueError(f"unknown loss {loss!r} for the labels' mean AP")
    elif loss in ("bce", "bce-tuned"):
        fn = lambda s, y: F.binary_cross_entropy_with_logits(s, y.float())  # noqa: E731
    elif loss == "bce-posweight":
        positives = ytr.sum(0).double()
        w = ((len(ytr) - positives) / positives.clamp_min(1)).float()
        fn = lambda s, y: F.binary_cross_entropy_with_logits(s, y.float(), pos_weight=w)  # noqa: E731
    elif loss == "uniloss":
        traced = multilabel_samples_f1 if metric == "samples-f1" else multilabel_macro_f1
        fn = _uniloss(uniloss.from_metric(traced), seed, options)
    elif loss == "uniloss-zoo" and metric == "f1":  # the same metric from the zoo
        fn = _uniloss(zoo.f_beta(1.0, average="macro"), seed, options)
    else:
        raise ValueError(f"unknown loss {loss!r}")

    def evaluate(m: nn.Module) -> float:
        with torch.no_grad():
            s = m(xte)
            if metric == "map":
                return multilabel_map(s, yte)
            if loss == "bce-tuned" and metric == "samples-f1":
                s = s - tuned_samples_threshold(m(xva), yva)
            elif loss == "bce-tuned":
                sv = m(xva)
                s = s - torch.tensor([tuned_threshold(sv[:, j], yva[:, j]) for j in range(sv.shape[1])])
        return float((multilabel_samples_f1 if metric == "samples-f1" else multilabel_macro_f1)(s, yte))

    opt = sgd(model, 0.1)
    return fit(model, opt, shuffled(len(ytr), batch, gen), lambda m, idx: fn(m(xtr[idx]), ytr[idx]), epochs,
               evaluate, cosine(opt, epochs))


def _ranking_loss(loss: str, fn: Optional[Callable[..., Tensor]], s: Tensor, rel: Tensor, query: Tensor,
                  size: int) -> Tensor:
    """One batch's loss of the ranking tasks: ``s`` ``[Q * size]`` scores of queries of ``size``
    consecutive items, ``rel`` their relevance, ``query`` their query ids; ``loss`` ``"bce"``,
    ``"mse"``, ``"pairwise"``, ``"listnet"``, ``"lambdarank"``, else ``fn`` (UniLoss)."""
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(s, rel.float())
    if loss == "mse":
        return F.mse_loss(s, rel.to(s.dtype))
    if loss == "pairwise":
        return pairwise_logistic(s, rel, query)
    if loss == "listnet":
        return listnet(s, rel, size)
    if loss == "lambdarank":
        return lambdarank(s, rel, size)
    if fn is None:
        raise ValueError(f"unknown loss {loss!r}")
    return fn(s, RankingTarget(rel, query))


def run_ndcg(loss: str, seed: int, quick: bool, options: dict, size: int = 20, per_batch: int = 8,
             train_queries: int = 160, metric: Optional[uniloss.Decomposition] = None, draw: int = 0,
             graded: bool = False) -> List[float]:
    """The ``ndcg5`` task; ``metric``: another ranking metric of the zoo to train and score (the
    probe tasks), NDCG@5 by default; ``draw``: digits' split and the test queries (the suite's task
    fixes 0, the ``ndcg5-draws`` probe draws them for each seed); ``graded``: the queries of
    :func:`graded_retrieval_queries` (the ``ndcg5-graded`` probe: NDCG@5 of grades 0-2, the usual
    loss ``"mse"`` on the grade)."""
    xtr, xte, ytr, yte = digits_split(draw)
    metric = (zoo.ndcg_at_k(5, num_grades=3) if graded else zoo.ndcg_at_k(5)) if metric is None else metric
    queries = graded_retrieval_queries if graded else retrieval_queries
    gen = torch.Generator().manual_seed(seed)
    test_items, test_q, test_rel, test_query = queries(yte, 300, size, torch.Generator().manual_seed(1234 + draw))
    test_target = RankingTarget(test_rel, test_query)
    model = seeded(seed, lambda: mlp(64, 128, 10))
    fn = _uniloss(metric, seed, options) if loss == "uniloss" else None

    def scores_of(m, x, items, q):
        out = m(x[items]).reshape(len(q), -1, 10)
        return out.gather(2, q[:, None, None].expand(-1, out.shape[1], 1)).reshape(-1)

    def batches(epoch):
        items, q, rel, query = queries(ytr, train_queries, size, gen)
        n = per_batch * size
        return [(items[i * n:(i + 1) * n], q[i * per_batch:(i + 1) * per_batch], rel[i * n:(i + 1) * n],
                 query[i * n:(i + 1) * n]) for i in range(train_queries // per_batch)]

    def step(m, batch):
        items, q, rel, query = batch
        return _ranking_loss(loss, fn, scores_of(m, xtr, items, q), rel, query, size)

    opt = sgd(model, 0.1)
    return fit(model, opt, batches, step, 30, lambda m: float(metric.metric(scores_of(m, xte, test_items, test_q), test_target)),
               cosine(opt, 30))


def run_graded_ranking(loss: str, seed: int, quick: bool, options: dict, k: int = 10, size: int = 30,
                       per_batch: int = 8, train_queries: int = 400) -> List[float]:
    """The ``ndcg10-graded`` probe: :func:`graded_queries` of draw ``seed`` (400 training queries
    of 30 items, 300 test queries), MLP 20-64-64-1 scoring each item, batches of 8 queries, SGD lr
    0.1 momentum 0.9 with a cosine over 15 (quick) / 30 epochs; test NDCG@``k`` of grades 0-4.
    ``loss``: ``"mse"`` (regression on the grade, the usual pointwise loss), ``"pairwise"``
    (:func:`pairwise_logistic` over pairs of different grades), ``"listnet"``, ``"lambdarank"``
    or ``"uniloss"`` (``zoo.ndcg_at_k(k, num_grades=5)``)."""
    xtr, rtr, _ = graded_queries(seed, train_queries, size)
    xte, rte, qte = graded_queries(seed, 300, size, split=1)
    metric = zoo.ndcg_at_k(k, num_grades=len(GRADE_SHARES))
    test_target = RankingTarget(rte, qte)
    model = seeded(seed, lambda: mlp(20, 64, 64, 1))
    gen = torch.Generator().manual_seed(seed)
    fn = _uniloss(metric, seed, options) if loss == "uniloss" else None
    local = torch.arange(per_batch)[:, None].expand(-1, size).reshape(-1)  # a batch's query ids

    def batches(epoch):
        order = torch.randperm(train_queries, generator=gen)
        return [order[i:i + per_batch] for i in range(0, train_queries - per_batch + 1, per_batch)]

    def step(m, queries):
        items = (queries[:, None] * size + torch.arange(size)).reshape(-1)
        return _ranking_loss(loss, fn, m(xtr[items]).reshape(-1), rtr[items], local, size)

    epochs = 15 if quick else 30
    opt = sgd(model, 0.1)
    return fit(model, opt, batches, step, epochs, lambda m: float(metric.metric(m(xte).reshape(-1), test_target)),
               cosine(opt, epochs))


#: The usual and baseline losses of the segmentation tasks, by the names that :data:`SIZE_OF` and
#: :data:`DIRECTION_OF` take.
SEGMENTATION_LOSSES: Dict[str, Callable[..., Tensor]] = {"ce": F.cross_entropy, "lovasz": lovasz_softmax}


def _segmentation_loss(name: Any) -> str:
    if name not in SEGMENTATION_LOSSES:
        raise ValueError(f"--variant {SIZE_OF}/{DIRECTION_OF}: {name!r} is not one of {sorted(SEGMENTATION_LOSSES)}")
    return str(name)


def run_segmentation(loss: str, seed: int, quick: bool, options: dict, data_dir: Optional[str] = None,
                     metric: Optional[uniloss.Decomposition] = None, draw: int = 0,
                     source: str = "mnist", digits: bool = False,
                     trained: Optional[list] = None) -> List[float]:
    """The ``seg-miou`` task; ``metric``: another per-pixel metric of the zoo to train and score
    (the probe tasks: ``zoo.dice(2)``), mean IoU by default; ``draw``: the images, noise and
    patches of both splits (:func:`noisy_masks`' seeds ``2 draw`` and ``2 draw + 1``; the suite's
    task fixes 0, the ``seg-miou-draws`` probe draws them for each seed); ``source``: the images'
    data set, ``"mnist"`` or ``"fashion"`` (the ``seg-miou-fashion`` probe); ``digits=True``: each
    digit's pixels labelled by its class (11 classes, :func:`noisy_masks`), noise of sigma
    :data:`DIGITS_NOISE` and the :class:`DigitSegmenter` in place of the three-layer FCN (the
    ``seg-miou-digits`` probe); ``trained``: a list that receives the trained network and the test
    split it was scored on, ``(model, x, masks)`` (``benchmarks/seg_digits_errors.py``). UniLoss's
    ``options`` may hold the probe keywords :data:`SIZE_OF` and :data:`DIRECTION_OF`."""
    train, epochs = (2000, 5) if quick else (4000, 10)
    masks = functools.partial(noisy_masks, data_dir=data_dir, source=source, digits=digits,
                              noise=DIGITS_NOISE if digits else 0.8)
    xtr, mtr = masks("train", train, seed=2 * draw)
    xte, mte = masks("test", 1000, seed=2 * draw + 1)
    metric = zoo.mean_iou(11 if digits else 2) if metric is None else metric
    options = dict(options)
    size_of, direction_of = options.pop(SIZE_OF, None), options.pop(DIRECTION_OF, None)
    fn = SEGMENTATION_LOSSES.get(loss) or _uniloss(metric, seed, options)
    if loss not in SEGMENTATION_LOSSES and (size_of or direction_of):
        if size_of and direction_of:
            raise ValueError(f"--variant: give {SIZE_OF!r} or {DIRECTION_OF!r}, not both")
        other = SEGMENTATION_LOSSES[_segmentation_loss(size_of or direction_of)]
        fn = _resized_step(fn, other) if size_of else _resized_step(other, fn)
    model = seeded(seed, lambda: DigitSegmenter(11)) if digits else seeded(seed, fcn)
    gen = torch.Generator().manual_seed(seed)
    opt = sgd(model, 0.1)
    curve = fit(model, opt, shuffled(train, 32, gen), lambda m, idx: fn(m(xtr[idx]), mtr[idx]), epochs,
                lambda m: float(metric.metric(m(xte), mte)), cosine(opt, epochs))
    if trained is not None:
        trained.append((model, xte, mte))
    return curve


#: The similarities' scale for the pairwise logistic loss and UniLoss in :func:`run_metric_learning`:
#: cosines over the normalised softmax's temperature 0.05 (``"uniloss-cos"``: the cosines as they are).
SIMILARITY_SCALE = 20.0


def run_metric_learning(loss: str, seed: int, quick: bool, options: dict, draw: int = 0,
                        hidden: Sequence[int] = (256,), batch: int = 128, dim: int = 64, epochs: int = 5,
                        source: str = "fashion", metric: str = "map", record: Optional[list] = None,
                        trained: Optional[list] = None) -> List[float]:
    """Deep metric learning on classes held out (``benchmarks/metric_learning_probe.py``): an MLP
    784-``hidden``-``dim`` whose output is L2-normalised (:class:`metric_learning.Embedder`),
    trained on five classes of Fashion-MNIST and scored by retrieval among the test images of the
    other five (:func:`metric_learning.unseen_classes`, ``draw`` the deal); batch 128, SGD lr 0.1
    momentum 0.9, cosine over ``epochs`` (5, also with ``quick``). Held out, each test image
    querying the others (:func:`metric_learning.retrieval_metrics`): mAP (``metric="map"``) or
    recall@1 (``"r1"``) among the held-out classes, or the same among the training classes' test
    images (``"map-seen"``, ``"r1-seen"``); ``record``: a list that receives each epoch's four, a dict;
    ``trained``: a list that receives the trained :class:`metric_learning.Embedder`.
    ``loss``: ``"contrastive"`` (:func:`metric_learning.contrastive`), ``"normsoftmax"``
    (:func:`metric_learning.normalized_softmax`, temperature 0.05), ``"smooth-ap"``
    (:func:`metric_learning.smooth_ap`, temperature 0.01), ``"pairwise"``
    (:func:`metric_learning.pairwise_logistic_per_query`, RankNet's loss within each query of the batch,
    on the cosines times :data:`SIMILARITY_SCALE`), ``"uniloss"`` (``zoo.average_precision()`` with
    each sample a query of the batch's others, on the same scaled cosines), ``"uniloss-cos"`` (the
    same on the cosines as they are), ``"uniloss-offset"`` (the scaled cosines minus a learnt
    threshold, :class:`metric_learning.Embedder`'s ``offset``, in place of the threshold at 0 that
    the default pull of binary labels, binary cross-entropy on each score, sets) or
    ``"uniloss-centred"`` (the scaled cosines minus their query's mean, gradient included: each
    query's own level, which the metric ignores, taken out of the pull). The last two test why the
    defaults trail ``pull_per="comparison"`` here (``docs/results/metric-wins/``)."""
    from .metric_learning import (Embedder, contrastive, normalized_softmax, pairwise_logistic_per_query, query_pairs,
                                  retrieval_metrics, smooth_ap, unseen_classes)

    metrics = ("map", "r1", "map-seen", "r1-seen")
    if metric not in metrics:
        raise ValueError(f"unknown metric {metric!r}: one of {metrics}")
    if loss not in ("contrastive", "normsoftmax", "smooth-ap", "pairwise", "uniloss", "uniloss-cos", "uniloss-offset",
                    "uniloss-centred"):
        raise ValueError(f"unknown loss {loss!r}")
    split = unseen_classes(draw, source=source)
    xtr, ytr = split.x_train, split.y_train
    model = seeded(seed, lambda: Embedder(mlp(784, *hidden, dim), 5, dim))
    gen = torch.Generator().manual_seed(seed)
    ranked = _uniloss(zoo.average_precision(), seed, options) if loss.startswith("uniloss") else None

    def step(m: nn.Module, idx: Tensor) -> Tensor:
        e, y = m(xtr[idx]), ytr[idx]
        if loss == "contrastive":
            return contrastive(e, y)
        if loss == "normsoftmax":
            return normalized_softmax(e, cast(Tensor, m.proxies), y)
        if loss == "smooth-ap":
            return smooth_ap(e, y)
        if ranked is None:
            return pairwise_logistic_per_query(e, y, SIMILARITY_SCALE)
        s, relevance, query = query_pairs(e, y)
        if loss == "uniloss-offset":
            s = s * SIMILARITY_SCALE - cast(Tensor, m.offset)
        elif loss == "uniloss-centred":  # (query_pairs lists each query's n - 1 others in a row)
            s = s * SIMILARITY_SCALE
            s = (s.reshape(len(y), -1) - s.reshape(len(y), -1).mean(1, keepdim=True)).reshape(-1)
        elif loss == "uniloss":
            s = s * SIMILARITY_SCALE
        return ranked(s, RankingTarget(relevance, query))

    def evaluate(m: nn.Module) -> float:
        values = {}
        for suffix, x, y in (("", split.x_unseen, split.y_unseen), ("-seen", split.x_seen, split.y_seen)):
            e = predict(m, x, chunk=1000)
            finite = bool(torch.isfinite(e).all())
            values["map" + suffix], values["r1" + suffix] = retrieval_metrics(e, y) if finite else (math.nan, math.nan)
        if record is not None:
            record.append(values)
        return values[metric]

    opt = sgd(model, 0.1)
    curve = fit(model, opt, shuffled(len(ytr), batch, gen), step, epochs, evaluate, cosine(opt, epochs))
    if trained is not None:
        trained.append(model)
    return curve


_UNI = {"UniLoss (defaults)": ("uniloss", "uniloss")}

_PAIRWISE = {"pairwise logistic": ("baseline", "pairwise")}
_POS_WEIGHT = {"BCE, pos_weight": ("baseline", "bce-posweight")}


def _binary_probe(name: str, metric: str, label: str, flip_y: float, baselines: Dict[str, Tuple[str, str]],
                  draws: bool = False) -> Task:
    """A probe task on the ``imb-ap`` data (``flip_y``: its share of random labels) scored on ``metric``;
    ``draws``: the data drawn again for each seed (``make_classification``'s ``random_state`` the
    seed) instead of the suite's one draw."""
    data = ("make_classification, 5% positives" + ("" if flip_y else ", no label noise")
            + (", a draw per seed" if draws else ""))
    return Task(name, label, data,
                lambda loss, seed, quick, options: run_imbalanced(metric, loss, seed, quick, options, flip_y=flip_y,
                                                                  draw=seed if draws else 0),
                {"binary cross-entropy": ("usual", "bce"), **baselines, **_UNI}, weight=0.5, suite=False)


def _retrieval_probe(name: str, label: str, make: Callable[[], uniloss.Decomposition]) -> Task:
    """A probe task on the ``ndcg5`` task's queries, trained and scored on ``make()``."""
    return Task(name, label, "digit retrieval on digits",
                lambda loss, seed, quick, options: run_ndcg(loss, seed, quick, options, metric=make()),
                {"binary cross-entropy (pointwise)": ("usual", "bce"), **_PAIRWISE, **_UNI}, weight=0.8, suite=False)


TASKS: Dict[str, Task] = {t.name: t for t in [
    Task("mnist0-ap", "test AP (VOC-interpolated)", "MNIST digit 0 vs rest", run_mnist0,
         {"binary cross-entropy": ("usual", "bce"), "pairwise logistic": ("baseline", "pairwise"), **_UNI},
         weight=6.0),
    Task("fashion-acc", "test accuracy", "Fashion-MNIST, 10 classes", run_fashion,
         {"cross-entropy": ("usual", "ce"), **_UNI}, weight=4.0),
    Task("pairs-acc", "test accuracy", "MNIST digit pairs, 100 classes", run_pairs,
         {"cross-entropy": ("usual", "ce"), **_UNI}, weight=4.0),
    Task("digits-f1", "test macro-F1", "scikit-learn digits, 10 classes", run_digits_f1,
         {"cross-entropy": ("usual", "ce"), **_UNI}, weight=0.3),
    Task("imb-ap", "test AP", "make_classification, 5% positives",
         lambda loss, seed, quick, options: run_imbalanced("ap", loss, seed, quick, options),
         {"binary cross-entropy": ("usual", "bce"), "BCE, pos_weight": ("baseline", "bce-posweight"),
          "pairwise logistic": ("baseline", "pairwise"), **_UNI}, weight=0.5),
    Task("imb-f1", "test F1 at logit 0 (tuned threshold for its row)", "make_classification, 5% positives",
         lambda loss, seed, quick, options: run_imbalanced("f1", loss, seed, quick, options),
         {"binary cross-entropy": ("usual", "bce"), "BCE, pos_weight": ("baseline", "bce-posweight"),
          "BCE, validation-tuned threshold": ("baseline", "bce-tuned"), **_UNI}, weight=0.5),
    Task("bal-acc", "test balanced accuracy", "MNIST, training digit c keeps 0.6^c", run_balanced,
         {"cross-entropy": ("usual", "ce"), "class-weighted CE": ("baseline", "ce-weighted"), **_UNI}, weight=1.0),
    Task("ndcg5", "test NDCG@5", "digit retrieval on digits", run_ndcg,
         {"binary cross-entropy (pointwise)": ("usual", "bce"), "pairwise logistic": ("baseline", "pairwise"), **_UNI},
         weight=0.8),
    Task("seg-miou", "test mean IoU", "MNIST masks from noisy occluded digits", run_segmentation,
         {"per-pixel cross-entropy": ("usual", "ce"), "Lovász-softmax": ("baseline", "lovasz"), **_UNI}, weight=3.0),
    # Probe tasks: metrics of the zoo that played no part in choosing the defaults (run when named).
    _binary_probe("auroc", "auroc", "test AUROC", 0.02, _PAIRWISE),
    _binary_probe("auroc-clean", "auroc", "test AUROC", 0.0, _PAIRWISE),
    _binary_probe("f1-clean", "f1", "test F1 at logit 0 (tuned threshold for its row)", 0.0,
                  {**_POS_WEIGHT, "BCE, validation-tuned threshold": ("baseline", "bce-tuned")}),
    _binary_probe("f2-clean", "f2", "test F2 at logit 0", 0.0, _POS_WEIGHT),
    # The same trainings scored at the threshold each model's validation F-beta prefers: what a
    # user who tunes the decision after training gets (imb-f1's data, with its label noise; F2's).
    _binary_probe("f1-tuned", "f1-tuned", "test F1 at the validation-tuned threshold", 0.02, _POS_WEIGHT),
    _binary_probe("f2-tuned", "f2-tuned", "test F2 at the validation-tuned threshold", 0.0, _POS_WEIGHT),
    # imb-ap and imb-f1 with the data set drawn again for each seed: the suite's tasks fix one draw,
    # so their seeds' spread leaves out the data's (docs/results/metric-wins/data-draws.md).
    _binary_probe("imb-ap-draws", "ap", "test AP", 0.02, {**_POS_WEIGHT, **_PAIRWISE}, draws=True),
    _binary_probe("imb-f1-draws", "f1", "test F1 at logit 0 (tuned threshold for its row)", 0.02,
                  {**_POS_WEIGHT, "BCE, validation-tuned threshold": ("baseline", "bce-tuned")}, draws=True),
    # F1 and F2 without label noise on a draw per seed (screen v51 measured its probe with them)
    _binary_probe("f1-clean-draws", "f1", "test F1 at logit 0 (tuned threshold for its row)", 0.0,
                  {**_POS_WEIGHT, "BCE, validation-tuned threshold": ("baseline", "bce-tuned")}, draws=True),
    _binary_probe("f2-clean-draws", "f2", "test F2 at logit 0", 0.0, _POS_WEIGHT, draws=True),
    Task("bal-acc-draws", "test balanced accuracy", "MNIST, training digit c keeps 0.6^c, drawn per seed",
         lambda loss, seed, quick, options: run_balanced(loss, seed, quick, options, draw=seed),
         {"cross-entropy": ("usual", "ce"), "class-weighted CE": ("baseline", "ce-weighted"), **_UNI},
         weight=1.0, suite=False),
    Task("seg-miou-draws", "test mean IoU", "MNIST masks from noisy occluded digits, drawn per seed",
         lambda loss, seed, quick, options: run_segmentation(loss, seed, quick, options, draw=seed),
         {"per-pixel cross-entropy": ("usual", "ce"), "Lovász-softmax": ("baseline", "lovasz"), **_UNI},
         weight=3.0, suite=False),
    Task("seg-miou-fashion", "test mean IoU", "Fashion-MNIST masks from noisy occluded images, drawn per seed",
         lambda loss, seed, quick, options: run_segmentation(loss, seed, quick, options, draw=seed, source="fashion"),
         {"per-pixel cross-entropy": ("usual", "ce"), "Lovász-softmax": ("baseline", "lovasz"), **_UNI},
         weight=3.0, suite=False),
    Task("ndcg5-draws", "test NDCG@5", "digit retrieval on digits, a split and test queries per seed",
         lambda loss, seed, quick, options: run_ndcg(loss, seed, quick, options, draw=seed),
         {"binary cross-entropy (pointwise)": ("usual", "bce"), **_PAIRWISE, **_UNI}, weight=0.8, suite=False),
    Task("digits-f1-draws", "test macro-F1", "scikit-learn digits, 10 classes, a split per seed",
         lambda loss, seed, quick, options: run_digits_f1(loss, seed, quick, options, draw=seed),
         {"cross-entropy": ("usual", "ce"), **_UNI}, weight=0.3, suite=False),
    Task("ndcg10-graded", "test NDCG@10", "synthetic learning to rank, grades 0-4, a draw per seed",
         run_graded_ranking,
         {"MSE on the grade (pointwise)": ("usual", "mse"), **_PAIRWISE, "ListNet": ("baseline", "listnet"),
          "LambdaRank": ("baseline", "lambdarank"), **_UNI}, weight=0.5, suite=False),
    Task("ndcg5-graded", "test NDCG@5", "digit retrieval on digits, grades 0-2 (the digit, its two nearest digits)",
         lambda loss, seed, quick, options: run_ndcg(loss, seed, quick, options, draw=seed, graded=True),
         {"MSE on the grade (pointwise)": ("usual", "mse"), **_PAIRWISE, "ListNet": ("baseline", "listnet"),
          "LambdaRank": ("baseline", "lambdarank"), **_UNI}, weight=0.8, suite=False),
    _retrieval_probe("p-at-5", "test precision@5", lambda: zoo.precision_at_k(5)),
    _retrieval_probe("mrr", "test MRR", zoo.mrr),
    _retrieval_probe("r-at-5", "test recall@5", lambda: zoo.recall_at_k(5)),
    Task("dice", "test mean Dice", "MNIST masks from noisy occluded digits",
         lambda loss, seed, quick, options: run_segmentation(loss, seed, quick, options, metric=zoo.dice(2)),
         {"per-pixel cross-entropy": ("usual", "ce"), "Lovász-softmax": ("baseline", "lovasz"), **_UNI},
         weight=3.0, suite=False),
    Task("seg-miou-digits", "test mean IoU", "MNIST masks labelled by digit (11 classes), drawn per seed",
         lambda loss, seed, quick, options: run_segmentation(loss, seed, quick, options, draw=seed, digits=True),
         {"per-pixel cross-entropy": ("usual", "ce"), "Lovász-softmax": ("baseline", "lovasz"), **_UNI},
         weight=6.0, suite=False),
    Task("top5", "test top-5 accuracy", "MNIST digit pairs, 100 classes",
         lambda loss, seed, quick, options: run_pairs(loss, seed, quick, options, metric=zoo.top_k_accuracy(5)),
         {"cross-entropy": ("usual", "ce"), **_UNI}, weight=4.0, suite=False),
    Task("pairs-f1", "test macro-F1", "MNIST digit pairs, 100 classes",
         lambda loss, seed, quick, options: run_pairs(loss, seed, quick, options, metric=zoo.macro_f1(100)),
         {"cross-entropy": ("usual", "ce"), **_UNI}, weight=4.0, suite=False),
    Task("mlabel-f1", "test macro-F1 of 10 labels at logit 0 (tuned thresholds for its row)",
         "MNIST multi-label mosaics, drawn per seed",
         lambda loss, seed, quick, options: run_multilabel(loss, seed, quick, options, draw=seed),
         {"binary cross-entropy": ("usual", "bce"), **_POS_WEIGHT,
          "BCE, validation-tuned thresholds": ("baseline", "bce-tuned"), **_UNI}, weight=2.0, suite=False),
]}
SUITE = [name for name, task in TASKS.items() if task.suite]


# --------------------------------------------------------------------------- running and reporting


@dataclass
class Job:
    task: str
    label: str
    kind: str
    loss: str
    seed: int
    options: dict = field(default_factory=dict)
    lr_scale: float = 1.0
    optimizer: str = "sgd"


def _run_job(job: Job, quick: bool, progress: bool = False) -> dict:
    """One run; a run whose network diverged (non-finite scores) is recorded with a NaN metric
    and the error, so the suite goes on and the table shows it. ``progress``: a line on stderr
    after each epoch."""
    global _LR_SCALE, _ON_EPOCH, _OPTIMIZER
    torch.set_num_threads(1)
    _LR_SCALE = job.lr_scale
    _OPTIMIZER = job.optimizer
    t0 = time.perf_counter()

    def report_epoch(epoch: int, value: float) -> None:
        print(f"{job.task} {job.label} seed {job.seed}{'' if job.lr_scale == 1.0 else f' lr x{job.lr_scale:g}'}: "
              f"epoch {epoch + 1} {value:.4f} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)

    _ON_EPOCH = report_epoch if progress else None
    error = None
    try:
        curve = TASKS[job.task].run(job.loss, job.seed, quick, dict(job.options))
    except ValueError as exc:
        if "finite" not in str(exc):
            raise
        curve, error = [float("nan")], f"diverged: {exc}"
    row = dict(task=job.task, loss=job.label, kind=job.kind, seed=job.seed, final=curve[-1], curve=curve,
               seconds=time.perf_counter() - t0, options=job.options, lr_scale=job.lr_scale)
    if job.optimizer != "sgd":
        row["optimizer"] = job.optimizer
    if error:
        row["error"] = error
    return row


def jobs_for(tasks: Sequence[str], seeds: Sequence[int], variants: Dict[str, dict],
             kinds: Sequence[str] = ("usual", "baseline", "uniloss", "variant"),
             lr_scales: Sequence[float] = (1.0,), optimizer: str = "sgd") -> List[Job]:
    """Every (task, loss, learning-rate scale, seed) to run, the costliest tasks first."""
    jobs = []
    for name in sorted(tasks, key=lambda t: -TASKS[t].weight):
        task = TASKS[name]
        rows: List[Tuple[str, str, str, dict]] = [(label, kind, loss, {}) for label, (kind, loss) in task.losses.items()]
        rows += [(f"UniLoss, {v}", "variant", "uniloss", opts) for v, opts in variants.items()]
        for label, kind, loss, opts in rows:
            if kind in kinds:
                jobs += [Job(name, label, kind, loss, s, opts, lr, optimizer) for lr in lr_scales for s in seeds]
    return jobs


def summarise(runs: List[dict]) -> List[dict]:
    """Rows of the results schema (mean, std over seeds, per task and loss, in run order)."""
    rows: Dict[Tuple[str, str, float], dict] = {}
    for r in runs:
        key = (r["task"], r["loss"], r.get("lr_scale", 1.0))
        row = rows.setdefault(key, dict(dataset=r["task"], loss=r["loss"], kind=r["kind"], lr_scale=key[2],
                                        metric=TASKS[r["task"]].metric, seeds=[], seed_ids=[], paper=None))
        row["seeds"].append(r["final"])
        row["seed_ids"].append(r["seed"])
    for row in rows.values():  # a diverged seed (NaN) makes the row NaN: it is not averaged away
        row["diverged"] = sum(math.isnan(v) for v in row["seeds"])
        if row["diverged"]:
            row["mean"] = row["std"] = float("nan")
            continue
        row["mean"] = statistics.mean(row["seeds"])
        row["std"] = statistics.stdev(row["seeds"]) if len(row["seeds"]) > 1 else 0.0
    return list(rows.values())


def best_of_grid(rows: List[dict]) -> List[dict]:
    """Each (task, loss) row at the learning-rate scale of the grid where its mean is highest
    (selected on the held-out metric itself, the same way for every loss; a diverged scale is
    never the best). With one scale these are the rows themselves."""
    best: Dict[Tuple[str, str], dict] = {}
    for r in rows:
        key = (r["dataset"], r["loss"])
        mean = -math.inf if math.isnan(r["mean"]) else r["mean"]
        if key not in best or mean > (-math.inf if math.isnan(best[key]["mean"]) else best[key]["mean"]):
            best[key] = r
    return list(best.values())


def verdicts(rows: List[dict], same_lr: bool = True) -> Dict[str, dict]:
    """Per task and UniLoss row: its difference to the usual loss and to the best baseline at the
    same learning-rate scale (any scale with ``same_lr=False``: for :func:`best_of_grid`'s rows),
    and whether it wins (ahead by more than the larger std), ties (within it) or loses. Keyed by
    task, then by the row's loss label (with `` @ lr xS`` where the scale is not 1)."""
    out: Dict[str, dict] = {}
    scale = (lambda r: r.get("lr_scale", 1.0)) if same_lr else (lambda r: None)
    for task, lr in dict.fromkeys((r["dataset"], scale(r)) for r in rows):
        mine = [r for r in rows if r["dataset"] == task and scale(r) == lr]
        usual = [r for r in mine if r["kind"] == "usual"]
        base = max([r for r in mine if r["kind"] in ("usual", "baseline") and not math.isnan(r["mean"])],
                   key=lambda r: r["mean"], default=None)
        for r in mine:
            if r["kind"] not in ("uniloss", "variant"):
                continue
            entry = {}
            for name, ref in (("usual", usual[0] if usual else None), ("best", base)):
                if ref is None:
                    continue
                diff = r["mean"] - ref["mean"]
                noise = max(r["std"], ref["std"])
                verdict = "win" if diff > noise else ("tie" if diff >= -noise else "loss")
                entry[name] = dict(ref=ref["loss"], diff=diff, verdict="diverged" if math.isnan(diff) else verdict)
                paired = _paired(r, ref)
                if paired is not None:
                    entry[name]["paired"] = paired
            out.setdefault(task, {})[_label(r)] = entry
    return out


def _paired(row: dict, ref: dict) -> Optional[dict]:
    """``row`` minus ``ref`` seed by seed, where both ran the same seeds (a seed fixes the network's
    initialisation, the batches and, in the ``-draws`` probes, the data: the comparison the rows'
    own std cannot make when seeds differ more than losses): the differences' mean and std and the
    number of seeds ``row`` is ahead on. ``None`` without the seeds' ids, with other seeds, or with
    a diverged seed."""
    ids, ref_ids = row.get("seed_ids"), ref.get("seed_ids")
    if not ids or ref_ids is None or sorted(ids) != sorted(ref_ids) or len(set(ids)) != len(ids):
        return None
    theirs = dict(zip(ref_ids, ref["seeds"]))
    diffs = [v - theirs[i] for i, v in zip(ids, row["seeds"])]
    if any(math.isnan(d) for d in diffs):
        return None
    return dict(mean=statistics.mean(diffs), std=statistics.stdev(diffs) if len(diffs) > 1 else 0.0,
                ahead=sum(d > 0 for d in diffs), seeds=len(diffs))


def _label(row: dict) -> str:
    lr = row.get("lr_scale", 1.0)
    return row["loss"] if lr == 1.0 else f"{row['loss']} @ lr x{lr:g}"


def write_report(report: dict, out: str, plot: bool = True) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as fh:
        json.dump(report, fh, indent=2)
    lines = [f"# {report['title']}", "",
             f"Held-out metric (x100), mean ± std over seeds {report['seeds']}; {report['machine']}; "
             f"{report['date']}; {report['total_seconds'] / 60:.1f} minutes with {report['jobs']} runs at a time. "
             f"Regenerate: `{report['command']}`.", ""]
    lines += _table(report["rows"], verdicts(report["rows"]))
    lines += ["", "`win`: ahead by more than the larger of the two rows' std; `tie`: within it; `loss`: behind "
              "(a seed that collapsed widens the std: read the seeds). 'seed by seed': the differences to the usual "
              "loss (and the best other row) on each seed (same initialisation and batches; in the `-draws` probes the "
              "same data too), their mean ± std and the seeds ahead on.",
              "'best other' is the best of the usual loss and the baselines"
              + (" at the same learning-rate scale." if len(report.get("lr_scales", [1.0])) > 1 else ".")]
    if len(report.get("lr_scales", [1.0])) > 1:
        best = best_of_grid(report["rows"])
        lines += ["", f"## Each loss at its best learning rate of the grid x{report['lr_scales']}", "",
                  "Every recipe's learning rate times each scale; each row is the scale with the highest mean "
                  "(chosen on the held-out metric, the same way for every loss, so each row is optimistic by "
                  "the same selection), compared with the usual loss and the baselines at their own best scale.", ""]
        lines += _table(best, verdicts(best, same_lr=False))
    if report.get("variants"):
        lines += ["", "Variants (keywords of `uniloss.UniLoss` beside the defaults):", ""]
        lines += [f"- `{k}`: `{json.dumps(opts)}`" for k, opts in report["variants"].items()]
    if not report.get("complete", True):
        lines += ["", f"**Incomplete**: {len(report['runs'])} runs finished when this was written."]
    with open(os.path.join(out, "results.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    if plot:
        _plot(report, os.path.join(out, "curves.png"))


def _table(rows: List[dict], v: Dict[str, dict]) -> List[str]:
    scale = 100.0
    lines = ["| task | metric | loss | kind | lr x | mean ± std | seeds | vs usual | vs best other "
             "| vs usual, seed by seed | vs best other, seed by seed |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        e = v.get(r["dataset"], {}).get(_label(r), {})
        cells = [f"{e[k]['diff'] * scale:+.2f} ({e[k]['verdict']})" if k in e else "" for k in ("usual", "best")]
        for k in ("usual", "best"):
            p = e.get(k, {}).get("paired")
            cells.append("" if p is None else f"{p['mean'] * scale:+.2f} ± {p['std'] * scale:.2f}, "
                                              f"ahead on {p['ahead']} of {p['seeds']}")
        seeds = " ".join(f"{v * scale:.2f}" for v in r["seeds"])
        lines.append(f"| {r['dataset']} | {r['metric']} | {r['loss']} | {r['kind']} | {r.get('lr_scale', 1.0):g} | "
                     f"{r['mean'] * scale:.2f} ± {r['std'] * scale:.2f} | {seeds} | " + " | ".join(cells) + " |")
    return lines


def _plot(report: dict, path: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - experiments extra absent
        return
    tasks = list(dict.fromkeys(r["task"] for r in report["runs"]))
    cols = 3
    fig, axes = plt.subplots(math.ceil(len(tasks) / cols), cols, figsize=(4.2 * cols, 3.2 * math.ceil(len(tasks) / cols)),
                             squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        labels = list(dict.fromkeys(_label(r) for r in report["runs"] if r["task"] == task))
        for label in labels:
            curves = [r["curve"] for r in report["runs"] if r["task"] == task and _label(r) == label]
            n = min(len(c) for c in curves)
            mean = [statistics.mean(c[i] for c in curves) for i in range(n)]
            ax.plot(range(1, n + 1), mean, marker="." if n < 12 else None, label=label)
        ax.set_title(f"{task}: {TASKS[task].metric}", fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    fig.suptitle(f"{report['title']} (mean of seeds {report['seeds']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_variant(text: str) -> Tuple[str, dict]:
    """``NAME=JSON`` -> ``(NAME, dict)``; JSON holds keywords of :class:`uniloss.UniLoss`, and
    the probe keywords (:data:`PROBE_KEYWORDS`, prototypes, not library options):
    ``"ordinal_pull": true`` (:func:`with_ordinal_pull`, graded rankings), ``"memory": N`` (the
    metric over the batch plus the last ``N`` samples, the loss scaled to the batch's share,
    screen v49; ``"memory_as_is": N``: the same memory as a user writes it, unscaled) and
    ``"plug_in": momentum``
    (:class:`_PlugInWeights`, the zoo's F-beta at a threshold, screen v51) and
    ``"euclidean_step": true`` (:func:`_resized_step`: the defaults' step sized by the pull's
    Euclidean norm on the scores) and ``"centred_queries": true`` (:func:`_centred_queries`: each
    query's mean score taken out of the scores, the ranking tasks) and, on the segmentation tasks,
    ``"size_of": LOSS`` or ``"direction_of": LOSS`` (:data:`SIZE_OF`, :data:`DIRECTION_OF`:
    UniLoss's step direction at ``LOSS``'s size, or the converse; ``LOSS`` ``"ce"`` or
    ``"lovasz"``) and ``"chain_step": "chain"`` or ``"max"`` (:data:`CHAIN_STEP`: the defaults'
    direction at the chain's total push on the scores, or at the larger of it and their own)."""
    name, sep, body = text.partition("=")
    if not sep or not name:
        raise ValueError(f"expected --variant NAME=JSON, got {text!r}")
    try:
        options = json.loads(body)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--variant {name}: {body!r} is not JSON ({exc})") from None
    if not isinstance(options, dict):
        raise ValueError(f"--variant {name}: expected a JSON object of UniLoss keywords, got {body!r}")
    for key in (SIZE_OF, DIRECTION_OF):
        if key in options:
            _segmentation_loss(options[key])
    if options.get(CHAIN_STEP, CHAIN_STEPS[0]) not in CHAIN_STEPS:
        raise ValueError(f"--variant {name}: {CHAIN_STEP} {options[CHAIN_STEP]!r} is not one of {CHAIN_STEPS}")
    checked = {k: v for k, v in options.items() if k not in PROBE_KEYWORDS}
    uniloss.UniLoss(uniloss.AveragePrecision(), **checked)  # fails here, not in a worker, on a bad keyword
    return name, options


def run(args: argparse.Namespace) -> dict:
    """Run the suite described by ``args`` (see :func:`add_arguments`) and write the report."""
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from .reproduce import machine

    variants = dict(parse_variant(v) for v in (args.variant or []))
    seeds = args.seeds if args.seeds is not None else [0, 1, 2]
    kinds = ("usual", "baseline", "uniloss", "variant") if not args.variants_only else ("variant",)
    lr_scales = args.lr_scales or [1.0]
    jobs = jobs_for(args.tasks or SUITE, seeds, variants, kinds, lr_scales, args.optimizer)
    start = time.perf_counter()
    out = args.out or ("docs/results/metric-wins" + ("/quick" if args.quick else ""))
    header = dict(
        table="metric-wins" + ("-quick" if args.quick else ""),
        title="Metric wins: UniLoss against the usual loss and the strongest simple baseline"
        + (" (quick screen)" if args.quick else "")
        + ("" if args.optimizer == "sgd" else f", every loss with Adam (lr {ADAM_LR:g})"),
        machine=machine() + f", torch {torch.__version__}, 1 thread a run", date=time.strftime("%Y-%m-%d"),
        command="uniloss reproduce metric-wins " + shlex.join(args.argv), seeds=seeds, jobs=args.jobs,
        quick=args.quick, variants=variants, lr_scales=lr_scales, optimizer=args.optimizer,
    )
    done: Dict[int, dict] = {}
    progress = _progress(len(jobs))

    def report(final: bool) -> dict:
        runs = [done[i] for i in sorted(done)]  # job order, whatever order they finished in
        rep = dict(header, rows=summarise(runs), runs=runs, total_seconds=time.perf_counter() - start,
                   complete=len(done) == len(jobs))
        rep["verdicts"] = verdicts(rep["rows"])
        if len(lr_scales) > 1:
            rep["best_lr_rows"] = best = best_of_grid(rep["rows"])
            rep["best_lr_verdicts"] = verdicts(best, same_lr=False)
        write_report(rep, out, plot=final)
        return rep

    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(_run_job, job, args.quick, args.progress): i for i, job in enumerate(jobs)}
        for fut in as_completed(futures):
            done[futures[fut]] = r = fut.result()
            progress(f"{r['task']:11s} {_label(r):34s} seed {r['seed']}: {r['final']:.4f} ({r['seconds']:.0f} s)"
                     + (" DIVERGED" if "error" in r else ""))
            report(final=False)  # a killed screen keeps what it measured
    return report(final=True)


def _progress(total: int) -> Callable[[str], None]:
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    bar = tqdm(total=total, desc="runs", unit="run") if tqdm is not None else None

    def step(line: str) -> None:
        if bar is not None:
            bar.write(line)
            bar.update(1)
        else:
            print(line, flush=True)
    return step


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="the screen: shorter runs (about 7 minutes with 2 jobs)")
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS),
                        help="only these tasks (default: the suite's nine; the probe tasks run only when named)")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (default 0 1 2)")
    parser.add_argument("--variant", action="append", metavar="NAME=JSON",
                        help='extra UniLoss row with these UniLoss keywords, e.g. t4=\'{"temperature": 4}\' '
                             '(and the probe keywords ordinal_pull, memory, memory_as_is, plug_in, euclidean_step, '
                             'centred_queries: see parse_variant)')
    parser.add_argument("--variants-only", action="store_true", help="run only the --variant rows")
    parser.add_argument("--lr-scales", type=_positive_float, nargs="+", metavar="S",
                        help="run every row at each recipe's learning rate times each S, and add a table of each "
                             "loss at its best scale (default: 1)")
    parser.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd",
                        help="sgd: each recipe's SGD (default); adam: torch.optim.Adam at lr 1e-3 (times "
                             "--lr-scales) for every task and loss, the recipe's weight decay and schedule kept")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each (default 2)")
    parser.add_argument("--out", help="where the table goes (default docs/results/metric-wins[/quick])")
    parser.add_argument("--progress", action="store_true",
                        help="print each run's held-out metric after every epoch on stderr (the full "
                             "Fashion-MNIST ResNet-20 runs take about 2 hours each on a 2-core CPU)")


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def main(argv: Optional[List[str]] = None, prog: str = "python -m uniloss.experiments.metric_wins") -> dict:
    import sys

    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    return run(args)


if __name__ == "__main__":
    main()
