"""The published code's training update, vectorised (paper sec. 4.1 and 4.3).

The paper's MNIST number (UniLoss 0.9988 test AP) comes from its published training script
(``binary_classficiation/train_mnist.py`` of princeton-vl/uniloss), whose hand-written backward
differs from the gradient of the interpolation the paper describes in one sign; the CIFAR-10
script (``multi_classification/train_cifar10.py``) has the same backward. With
``w_i = 1 / d_i`` the inverse-distance weights of the anchors ``a_i`` (values ``v_i = -AP(a_i)``),
``S = sum_i w_i`` and ``f = sum_i v_i w_i / S`` the interpolated loss, the gradient of ``f`` with
respect to the relaxed bits ``u`` is::

    df/du = -(1/S) * sum_i (v_i - f) * (u - a_i) / d_i^3

The published backward computes::

    g = -(1/S) * sum_i (v_i + f) * (u - a_i) / d_i^3

(the second term of the quotient rule has its sign flipped). Since ``v_i + f < 0`` for every
anchor, ``-g`` pulls ``u`` toward *every* anchor, the better ones more, and never vanishes
while ``u`` stays inside ``(-1, 1)``: it behaves like a pairwise ranking loss that keeps
pushing every positive above every negative, where the true gradient of the interpolation
fades once a batch is ranked right. The script also differs from the paper's text in two
details kept here: the network's output goes through a sigmoid before the pair differences are
taken (so ``u = 2 * sigmoid(p_i - p_j) - 1`` stays within about ``(-0.46, 0.46)``), and an anchor
whose bits contradict each other (no ranking has them, e.g. ``p1 > n1 > p2 > n2 > p1``) is given
AP 0 (the script's ``ap_frombins``); a consistent anchor gets its VOC-interpolated AP.

This module exists to reproduce the paper's tables and to measure what that sign does
(``uniloss train mnist-ap --loss uniloss-published``, ``--loss uniloss-published-truegrad``: the
same script with the true gradient, and ``uniloss train fashion-resnet20 --loss
uniloss-published``: :class:`PublishedLoss` on multi-class accuracy, where the script's anchor
value is the fraction of samples whose bits are all right); the library's
:class:`uniloss.UniLoss` follows the paper's equations and differentiates the interpolation
exactly.

Anchors, as the script draws them, with every bit oriented so that 1 is right (positive above
negative): the best configuration; ``num_each`` *good* ones (the best with one random bit
flipped); ``num_each`` *nearby* ones (the current hard configuration with one random wrong bit
set right, or the best with one random bit flipped when nothing is wrong); ``num_each`` *bad*
ones (uniformly random). The script orders its pairs as ``i < j`` over the batch instead of
positive-then-negative; the pair orientation does not change a distance or a value, so the
update has the same distribution.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

import uniloss
from uniloss import LossInfo
from uniloss.functional import with_exact_metric, zero_loss

__all__ = ["PublishedLoss", "PublishedAPLoss", "published_anchors", "published_values", "published_gradient"]


def published_anchors(sign: Tensor, num_each: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """Anchors of the published script: ``[1 + 3 * num_each, l]`` in {-1, 0, +1}, best first.

    Args:
        sign: ``[l]`` the sign of the current relaxed bits (``+1`` right, ``-1`` wrong, ``0``
            a tie, counted as wrong as the script does).
        num_each: anchors of each kind (good, nearby, bad).
        generator: random source.
    """
    l, dev = sign.numel(), sign.device
    t = 1 + 3 * num_each
    rows = torch.ones(t, l, device=dev)
    k = torch.arange(num_each, device=dev)
    good = torch.randint(l, (num_each,), generator=generator, device=dev)
    rows[1 + k, good] = -1.0
    wrong = torch.nonzero(sign != 1).flatten()
    near_rows = 1 + num_each + k
    if wrong.numel() == 0:
        pick = torch.randint(l, (num_each,), generator=generator, device=dev)
        rows[near_rows, pick] = -1.0
    else:
        pick = wrong[torch.randint(wrong.numel(), (num_each,), generator=generator, device=dev)]
        rows[near_rows] = sign.to(rows.dtype)
        rows[near_rows, pick] = -sign[pick].to(rows.dtype)
    bad = torch.rand(num_each, l, generator=generator, device=dev)
    rows[1 + 2 * num_each :] = torch.sign(bad - 0.5)
    return rows


def published_values(bits: Tensor, num_pos: int, num_neg: int) -> Tensor:
    """``ap_frombins`` for many anchors: ``[t]`` VOC AP, 0 where the bits are contradictory.

    Args:
        bits: ``[t, P * N]`` bool, positive-major: ``bits[:, i * N + j]`` is "positive ``i`` is
            above negative ``j``".
    """
    t = bits.shape[0]
    beats = bits.reshape(t, num_pos, num_neg).double()
    # Contradictory iff two positives each beat a negative the other does not (a 4-cycle; a
    # bipartite tournament with a cycle has one).
    only = beats @ (1.0 - beats).transpose(1, 2)  # [t, P, P]: negatives i beats and i' does not
    contradictory = ((only > 0) & (only.transpose(1, 2) > 0)).flatten(1).any(1)
    above = num_neg - beats.sum(-1)  # negatives above each positive
    n_k = above.sort(-1).values
    k = torch.arange(1, num_pos + 1, device=bits.device, dtype=n_k.dtype)
    precision = k / (k + n_k)
    interpolated = precision.flip(-1).cummax(-1).values.flip(-1)
    ap = interpolated.mean(-1)
    return torch.where(contradictory, torch.zeros_like(ap), ap)


def published_gradient(u: Tensor, anchors: Tensor, values: Tensor, *, published_sign: bool = True) -> Tensor:
    """The published backward with respect to the relaxed bits: ``[l]``.

    ``g = -(1/S) sum_i (v_i + f) (u - a_i) / d_i^3`` with ``v = values`` (the loss at each
    anchor, ``-AP``), ``d_i = ||u - a_i||``, ``S = sum_i 1/d_i``, ``f = sum_i v_i / d_i / S``.
    ``published_sign=False`` gives the true gradient of ``f`` instead (``v_i - f``).
    """
    return _published_step(u, anchors, values, published_sign)[0]


def _published_step(u: Tensor, anchors: Tensor, values: Tensor, published_sign: bool) -> "tuple[Tensor, Tensor]":
    """:func:`published_gradient` and the interpolated value ``f`` it computes on the way."""
    diff = u[None, :] - anchors  # [t, l]
    dist = diff.norm(dim=1)
    s = (1.0 / dist).sum()
    f = (values / dist).sum() / s
    centred = values + f if published_sign else values - f
    return -(centred / dist**3) @ diff / s, f


class PublishedLoss(nn.Module):
    """The published scripts' training update for a decomposition whose best configuration is
    every comparison right (AP, accuracy), as a loss module (see the module docstring).

    ``loss = module(scores, target)``: the sigmoid of the published models is applied to
    ``scores`` here, the decomposition's comparisons ``c`` of those probabilities are relaxed to
    ``u = 2 * sigmoid(c) - 1``, anchors are drawn as :func:`published_anchors` does and valued by
    ``decomposition.evaluate`` (or :meth:`anchor_values`), and the gradient is
    :func:`published_gradient` chained through ``c``. ``published_sign=False`` keeps everything
    but the sign (the ablation that shows what the sign does). The value is ``-g~``, the
    interpolated metric at the current bits; the gradient is the published one, not the gradient
    of that value. ``.last`` holds a :class:`uniloss.LossInfo` (``metric``: the batch's exact
    metric; ``surrogate``: the interpolated one). A batch where the metric is undefined gives an
    attached zero loss.

    Example::

        >>> import torch, uniloss
        >>> loss_fn = PublishedLoss(uniloss.MulticlassAccuracy(), generator=torch.Generator().manual_seed(0))
        >>> scores = torch.randn(8, 10, requires_grad=True)
        >>> loss_fn(scores, torch.arange(8)).backward()
        >>> bool(scores.grad.abs().sum() > 0)
        True
    """

    def __init__(self, decomposition: uniloss.Decomposition, num_each: int = 16,
                 generator: Optional[torch.Generator] = None, *, published_sign: bool = True):
        super().__init__()
        if num_each < 1:
            raise ValueError(f"num_each must be a positive integer, got {num_each}")
        self.decomposition = decomposition
        self.num_each = num_each
        self.published_sign = published_sign
        self.generator = generator
        self.last: Optional[LossInfo] = None
        self._best_checked = False

    def anchor_values(self, bits: Tensor, plan) -> Tensor:
        """The metric at anchors ``bits`` ``[t, l]``: the decomposition's ``evaluate``."""
        return self.decomposition.evaluate(bits, plan)

    def forward(self, scores: Tensor, target: Tensor) -> Tensor:
        dec = self.decomposition
        probs = torch.sigmoid(scores)  # the published models' last layer
        plan = dec.prepare(probs, target, self.generator)
        c = dec.comparisons(probs.double(), plan).reshape(-1)  # float64, as the scripts' numpy
        nan = torch.tensor(float("nan"), device=scores.device)
        if c.numel() == 0:
            zero = zero_loss(scores)  # exact 0 even where the scores' sum overflows
            self.last = LossInfo(nan, nan, zero.detach(), 0, torch.empty(0), ())
            return zero
        if not self._best_checked:  # once: a check per step would wait for the GPU every step
            self._best_checked = True
            if not bool(dec.best(plan).all()):
                raise ValueError(f"the published update needs a best configuration of all-right bits; {dec!r} has another")
        sig = torch.sigmoid(c.detach())
        u = 2.0 * sig - 1.0
        anchors = published_anchors(torch.sign(u), self.num_each, self.generator).double()
        value = self.anchor_values(torch.cat([anchors > 0, (u > 0)[None]]), plan).double()
        value, metric = value[:-1], value[-1]
        grad_u, f = _published_step(u, anchors, -value, self.published_sign)
        grad_c = 2.0 * sig * (1.0 - sig) * grad_u
        surrogate = -f
        loss = -surrogate + (grad_c * (c - c.detach())).sum()
        kinds = (("best", 1), ("good", self.num_each), ("nearby", self.num_each), ("bad", self.num_each))
        self.last = with_exact_metric(LossInfo(metric.float(), surrogate.float(), loss.detach(), u.numel(), value.float(), kinds),
                           dec, plan)
        return loss.to(scores.dtype)


class PublishedAPLoss(PublishedLoss):
    """:class:`PublishedLoss` for binary average precision, as the MNIST script: ``scores``
    ``[n]``, ``target`` ``[n]`` in {0, 1}; an anchor is valued by :func:`published_values` (VOC
    AP, 0 where its bits contradict each other), ``.last.metric`` is the batch's VOC AP.

    Example::

        >>> import torch
        >>> loss_fn = PublishedAPLoss(generator=torch.Generator().manual_seed(0))
        >>> scores = torch.randn(16, requires_grad=True)
        >>> loss_fn(scores, (torch.arange(16) < 4).long()).backward()
        >>> bool(scores.grad.abs().sum() > 0)
        True
    """

    def __init__(self, num_each: int = 16, generator: Optional[torch.Generator] = None, *, published_sign: bool = True):
        super().__init__(uniloss.AveragePrecision(interpolated=True), num_each, generator, published_sign=published_sign)

    def anchor_values(self, bits: Tensor, plan) -> Tensor:
        return published_values(bits, plan.pos.numel(), plan.neg.numel())

    def forward(self, scores: Tensor, target: Tensor) -> Tensor:
        scores, target = scores.reshape(-1), target.reshape(-1)
        if scores.shape != target.shape:
            raise ValueError(f"scores and target must have the same number of samples, got {scores.shape} and {target.shape}")
        return super().forward(scores, target)
