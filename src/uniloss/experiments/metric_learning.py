"""Deep metric learning: an embedding trained on some classes, scored by retrieval on others.

The task no default of UniLoss was chosen on, and one where no usual loss is consistent for the
metric: the test classes are not the training classes, so no posterior of the training labels
ranks them. Each image is embedded on the unit sphere and every test image queries all the
others by cosine similarity; relevant are the images of its class. Scored by the mean over the
queries of average precision (mAP) and by recall@1 (the nearest other image is of the class).

The pieces ``benchmarks/metric_learning_probe.py`` trains with
(:func:`uniloss.experiments.metric_wins.run_metric_learning`):

* :func:`unseen_classes`: Fashion-MNIST (or MNIST) with its ten classes dealt at random into five
  for training and five held out (and the training classes' test images, for retrieval among the
  classes trained on);
* :class:`Embedder`: a network whose output is L2-normalised, with one proxy vector per training
  class for the normalised softmax;
* the losses of the field beside UniLoss: :func:`contrastive` (Hadsell et al. 2006, in cosine
  similarity), :func:`normalized_softmax` (classification with cosine logits, Zhai & Wu 2019's
  strong baseline) and :func:`smooth_ap` (Brown et al. 2020, a sigmoid relaxation of AP's ranks at a
  hand-set temperature: what UniLoss replaces with no temperature to set);
* :func:`query_pairs`: a batch's similarities as per-query rankings for the zoo's ranking metrics;
  :func:`pairwise_logistic_per_query`: RankNet's loss within each query; :func:`retrieval_metrics`:
  the held-out mAP and recall@1.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ClassSplit", "Embedder", "contrastive", "normalized_softmax", "pairwise_logistic_per_query", "query_pairs",
           "retrieval_metrics", "smooth_ap", "unseen_classes"]


class ClassSplit(NamedTuple):
    """:func:`unseen_classes`' images (``[n, 784]``, standardised) and labels: the training
    split's images of the training classes (labels ``0..4``, the classes' positions in the deal,
    for a classifier over them), and the test split's images of the held-out classes (``unseen``)
    and of the training classes (``seen``), labelled by their original classes."""

    x_train: Tensor
    y_train: Tensor
    x_unseen: Tensor
    y_unseen: Tensor
    x_seen: Tensor
    y_seen: Tensor


def unseen_classes(draw: int = 0, source: str = "fashion", data_dir: Optional[str] = None) -> ClassSplit:
    """The ten classes of ``source`` (``"fashion"`` or ``"mnist"``) dealt at random (``draw`` the
    seed), five for training and five held out: the training split's images of the first five
    (about 30,000), and the test split's images of the other five (``unseen``, about 5,000) and of
    the first five (``seen``), as a :class:`ClassSplit`, standardised with the training images'
    mean and std.

    Example::

        >>> split = unseen_classes(0)                    # doctest: +SKIP
        >>> sorted(set(split.y_train.tolist())), len(set(split.y_unseen.tolist()))  # doctest: +SKIP
        ([0, 1, 2, 3, 4], 5)
    """
    from .data import load_fashion_mnist, load_mnist

    loaders = {"mnist": load_mnist, "fashion": load_fashion_mnist}
    if source not in loaders:
        raise ValueError(f"source must be 'mnist' or 'fashion', not {source!r}")
    order = torch.randperm(10, generator=torch.Generator().manual_seed(draw))
    position = torch.empty(10, dtype=torch.long)
    position[order] = torch.arange(10)
    train, test = loaders[source]("train", data_dir=data_dir), loaders[source]("test", data_dir=data_dir)
    keep_train, unseen = position[train.labels] < 5, position[test.labels] >= 5
    xtr = train.images[keep_train].float().reshape(-1, 784) / 255.0
    mean, std = float(xtr.mean()), float(xtr.std())

    def test_images(keep: Tensor) -> Tensor:
        return (test.images[keep].float().reshape(-1, 784) / 255.0 - mean) / std

    return ClassSplit((xtr - mean) / std, position[train.labels[keep_train]], test_images(unseen),
                      test.labels[unseen], test_images(~unseen), test.labels[~unseen])


class Embedder(nn.Module):
    """``net``'s output L2-normalised (``[n, dim]`` on the unit sphere), and ``proxies`` ``[classes,
    dim]``: one learnt vector per training class, used by :func:`normalized_softmax` only (the
    other losses leave it untouched), and ``offset`` ``[]``: a learnt threshold on the scaled
    similarities, used by the ``uniloss-offset`` row of
    :func:`uniloss.experiments.metric_wins.run_metric_learning` only."""

    def __init__(self, net: nn.Module, classes: int, dim: int) -> None:
        super().__init__()
        self.net = net
        self.proxies = nn.Parameter(torch.randn(classes, dim) / dim ** 0.5)
        self.offset = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.net(x), dim=1)


def query_pairs(e: Tensor, y: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """A batch of embeddings ``e`` ``[n, dim]`` and labels ``y`` ``[n]`` as ``n`` rankings: each
    sample queries the ``n - 1`` others. Returns ``(similarity [n (n - 1)], relevance [n (n - 1)]
    in {0, 1}, query [n (n - 1)])``: the cosine similarity of each (query, other) pair (``e`` is
    normalised), whether the two share a label, and the query's index.

    Example::

        >>> e = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]]), dim=1)
        >>> s, rel, q = query_pairs(e, torch.tensor([0, 0, 1]))
        >>> rel.tolist(), q.tolist()
        ([1, 0, 1, 0, 0, 0], [0, 0, 1, 1, 2, 2])
    """
    n = e.shape[0]
    others = ~torch.eye(n, dtype=torch.bool, device=e.device)
    query = torch.arange(n, device=e.device)[:, None].expand(n, n)[others]
    return (e @ e.T)[others], (y[:, None] == y[None, :])[others].long(), query



def pairwise_logistic_per_query(e: Tensor, y: Tensor, scale: float) -> Tensor:
    """RankNet's pairwise logistic loss within each query of a batch (each sample against the
    others): the mean over every (query, same-label other ``i``, different-label other ``j``) of
    ``softplus(scale (s_qj - s_qi))`` on cosine similarities ``s``; the same value as
    :func:`uniloss.experiments.metric_wins.pairwise_logistic` of :func:`query_pairs` grouped by
    query (tested), with ``[n, n, n]`` memory instead of ``[n^2, n^2]``."""
    n = e.shape[0]
    s = scale * (e @ e.T)
    eye = torch.eye(n, dtype=torch.bool, device=e.device)
    same = y[:, None] == y[None, :]
    pair = (same & ~eye)[:, :, None] & ~same[:, None, :]  # [q, i, j]: i relevant to q, j not
    diff = s[:, None, :] - s[:, :, None]
    return torch.where(pair, F.softplus(diff), torch.zeros_like(diff)).sum() / pair.sum().clamp_min(1)

def contrastive(e: Tensor, y: Tensor, pos_margin: float = 1.0, neg_margin: float = 0.0) -> Tensor:
    """The contrastive loss (Hadsell, Chopra, LeCun 2006) on cosine similarities ``s`` of a
    batch's pairs: the mean over same-label pairs of ``relu(pos_margin - s)`` plus the mean over
    different-label pairs of ``relu(s - neg_margin)`` (the margins of pytorch-metric-learning's
    ``ContrastiveLoss`` with cosine similarity). Zero (attached) for a side without a pair."""
    s, same, _ = query_pairs(e, y)
    pos, neg = same.bool(), ~same.bool()
    loss = (F.relu(pos_margin - s) * pos).sum() / pos.sum().clamp_min(1)
    return loss + (F.relu(s - neg_margin) * neg).sum() / neg.sum().clamp_min(1)


def normalized_softmax(e: Tensor, proxies: Tensor, y: Tensor, temperature: float = 0.05) -> Tensor:
    """Cross-entropy over the training classes with cosine logits ``e . p_c / |p_c|`` divided by
    ``temperature`` (Zhai & Wu, "Classification is a strong baseline for deep metric learning",
    BMVC 2019, temperature 0.05). ``e`` ``[n, dim]`` normalised, ``proxies`` ``[classes, dim]``, ``y``
    ``[n]`` in ``0..classes - 1``."""
    return F.cross_entropy(e @ F.normalize(proxies, dim=1).T / temperature, y)


def smooth_ap(e: Tensor, y: Tensor, temperature: float = 0.01) -> Tensor:
    """Smooth-AP (Brown, Xie, Kalogeiton, Zisserman, ECCV 2020): one minus the mean over the
    batch's queries (each sample, against the others; queries without a same-label other are left
    out) of AP whose ranks are relaxed by a sigmoid at ``temperature`` on similarity differences:

    .. math:: \\mathrm{AP}_q = \\frac{1}{|P|} \\sum_{i \\in P} \\frac{1 + \\sum_{j \\in P, j \\ne i}
        \\sigma((s_j - s_i) / \\tau)}{1 + \\sum_{j \\ne i} \\sigma((s_j - s_i) / \\tau)}

    over the query's positives ``P`` and all its others ``j`` (0.01, the paper's temperature, on
    cosine similarities). As ``temperature -> 0`` it is one minus the exact mean AP of distinct
    scores (tested against scikit-learn). ``[n, n, n]`` memory."""
    n = e.shape[0]
    s = e @ e.T
    eye = torch.eye(n, dtype=torch.bool, device=e.device)
    same = (y[:, None] == y[None, :]) & ~eye  # [q, j]: j a positive of q
    # [q, i, j]: whether j counts in i's rank among q's others (j is neither q nor i)
    counted = ~eye[:, None, :] & ~eye[None, :, :]
    step = torch.sigmoid((s[:, None, :] - s[:, :, None]) / temperature) * counted
    rank_all = 1 + step.sum(-1)
    rank_pos = 1 + (step * same[:, None, :]).sum(-1)
    positives = same.sum(1)
    ap = ((rank_pos / rank_all) * same).sum(1) / positives.clamp_min(1)
    has = positives > 0
    if not bool(has.any()):
        return e.sum() * 0.0
    return 1 - ap[has].mean()


@torch.no_grad()
def retrieval_metrics(e: Tensor, y: Tensor, chunk: int = 1000) -> Tuple[float, float]:
    """``(mAP, recall@1)`` of every sample of ``e`` ``[m, dim]`` (normalised) querying the ``m -
    1`` others by cosine similarity, relevant where the label ``y`` ``[m]`` is the query's: AP per
    query as scikit-learn's ``average_precision_score`` of distinct scores, averaged over the
    queries that have a relevant other; recall@1 the share of queries whose most similar other
    is relevant. ``chunk`` queries at a time (``[chunk, m]`` memory).

    Example::

        >>> e = F.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.2, 1.0]]), dim=1)
        >>> retrieval_metrics(e, torch.tensor([0, 0, 1, 1]))
        (1.0, 1.0)
    """
    m = e.shape[0]
    aps, hits = [], []
    for start in range(0, m, chunk):
        rows = torch.arange(start, min(start + chunk, m), device=e.device)
        s = (e[rows] @ e.T).double()
        s[torch.arange(len(rows)), rows] = -torch.inf  # the query itself comes last
        relevant = y[rows][:, None] == y[None, :]
        relevant[torch.arange(len(rows)), rows] = False
        ranked = relevant.gather(1, torch.argsort(s, dim=1, descending=True, stable=True)).double()
        precision = ranked.cumsum(1) / torch.arange(1, m + 1, device=e.device, dtype=torch.float64)
        count = ranked.sum(1)
        has = count > 0
        aps.append(((precision * ranked).sum(1) / count.clamp_min(1))[has])
        hits.append(ranked[:, 0][has])
    return float(torch.cat(aps).mean()), float(torch.cat(hits).mean())
