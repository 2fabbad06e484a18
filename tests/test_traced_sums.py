"""from_metric's chain through sums: a traced comparison whose mask reaches the metric only
through elementwise operations and sums or counts (F-beta's, precision's, recall's counts,
``count_nonzero``, ``any``, ``all``: subset accuracy) gives the
chain's ``l + 1`` values from per-element changes and a cumulative sum (``O(l S)``) instead of
replaying the tape at every point (``O(l^2)``).

The reference is the tape itself, replayed on every one of the ``l + 1`` configurations of a
chain (the engine's path without the cut), and the loss and gradient of the same metric with
the cut turned off; a metric the cut cannot take must fall back to that path.
"""

import pytest
import torch

import uniloss
import uniloss._traced as traced
from uniloss import _limits
from uniloss import from_metric, zoo


def _multilabel(n=24, labels=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    target = (torch.rand(n, labels, generator=g) < 0.3).long()
    scores = torch.randn(n, labels, generator=g) + target - 0.5
    scores[0, 0] = 0.0  # a tie at the threshold: counted wrong, as fn counts it
    return scores, target


def macro_f1(s, y):
    pred, pos = s > 0, y == 1
    tp = (pred & pos).sum(0)
    return (2 * tp / (pred.sum(0) + pos.sum(0)).clamp_min(1)).mean()


def micro_f1(s, y):
    pred, pos = torch.sigmoid(s) > 0.5, y == 1  # looked through: s > 0
    tp = (pred & pos).sum()
    return 2 * tp / (pred.sum() + pos.sum())


def precision_of_means(s, y):
    pred = (s > 0).float()
    return (pred * y).mean() / pred.mean().clamp_min(1e-6)


def flat_keepdim_dtype(s, y):
    pred = (s >= 0.25).reshape(-1)
    tp = torch.sum(pred & (y.reshape(-1) == 1), dtype=torch.float64)
    per_label = (s.ge(0.25) & (y == 1)).sum(dim=0, keepdim=True)
    return tp / y.sum() + per_label.float().mean() / 100


def row_recall(s, y):
    hits = torch.where(s > 0, 1.0, 0.0) * y  # a sum per row: one cell per sample
    return (hits.sum(1) / y.sum(1).clamp_min(1)).mean()


def negated_with_weights(s, y):
    kept = s < 0.5  # best: kept where the label is 0
    weights = torch.linspace(0.5, 2.0, s.shape[1])
    return ((kept == (y == 0)).double() * weights).sum() / (weights.sum() * s.shape[0])


def repeated_step(s, y):
    a, b = s > 0, s > 0  # the same step twice (one site and its repeat)
    return (a & (y == 1)).sum() / (b.sum() + (y == 1).sum()).clamp_min(1)


def subset_accuracy(s, y):
    return ((s > 0) == (y == 1)).all(1).float().mean()  # `all`: no element of a row at zero


def any_and_counted(s, y):
    hit = (s > 0) & (y == 1)
    some = hit.any(dim=0).float().mean()  # `any`: a nonzero element in a column
    return some + torch.count_nonzero(hit, dim=1).float().mean() / 10 + hit.all().float()


SUMMED = [macro_f1, micro_f1, precision_of_means, flat_keepdim_dtype, row_recall, negated_with_weights,
          repeated_step, subset_accuracy, any_and_counted]


def largest_per_row(s, y):
    return ((s > 0).float() * y).amax(1).mean()  # `amax`: not a count


def running_count(s, y):
    return ((s > 0).float().cumsum(0) * y).sum() / y.numel()  # a cumulative sum before the sum


def gated_by_own_sum(s, y):
    pred = s > 0
    return (pred & (pred.sum(0, keepdim=True) > 2) & (y == 1)).sum().float()  # the mask meets its own sum


def two_thresholds(s, y):
    return (((s > 0) & (y == 1)).sum() + ((s > 1) & (y == 1)).sum()).float()  # two trained steps


NOT_SUMMED = [largest_per_row, running_count, gated_by_own_sum, two_thresholds]


def _checked(fn, scores, target):
    """The metric and its plan after a first loss call (which checks its tape against fn)."""
    metric = from_metric(fn)
    uniloss.UniLoss(metric)(scores.clone().requires_grad_(), target)
    plan = metric.prepare(scores, target)
    return metric, plan


def _every_point(metric, plan, rank):
    """The tape at each of the chain's ``l + 1`` configurations: the path without the cut."""
    best = metric.best(plan)
    l = best.numel()
    at = torch.arange(l + 1)
    return metric.evaluate(torch.where(rank[None] < at[:, None], best[None], ~best[None]), plan)


@pytest.mark.parametrize("fn", SUMMED, ids=lambda f: f.__name__)
def test_the_chain_through_sums_is_the_tape_at_every_point(fn):
    scores, target = _multilabel()
    metric, plan = _checked(fn, scores, target)
    assert plan.tape == "direct"
    chain = metric.structure(plan).chain
    assert chain is not None, "the cut should take this metric"
    l = scores.numel()
    for seed in range(3):
        rank = torch.randperm(l, generator=torch.Generator().manual_seed(seed))
        values, reference = chain(rank), _every_point(metric, plan, rank)
        assert values.shape == (l + 1,)
        torch.testing.assert_close(values.double(), reference.double(), rtol=1e-6, atol=1e-7, equal_nan=True)


@pytest.mark.parametrize("fn", NOT_SUMMED, ids=lambda f: f.__name__)
def test_a_mask_that_reaches_the_value_otherwise_takes_the_tape_at_every_point(fn):
    scores, target = _multilabel()
    metric, plan = _checked(fn, scores, target)
    structure = metric.structure(plan)
    assert structure is None or structure.chain is None


def _loss_and_grad(metric, scores, target, calls=3):
    loss = uniloss.UniLoss(metric)
    for _ in range(calls):  # the first call checks the tape, the second the cut
        s = scores.clone().requires_grad_()
        value = loss(s, target)
        value.backward()
    return value.detach(), s.grad


@pytest.mark.parametrize("fn", SUMMED, ids=lambda f: f.__name__)
def test_the_loss_and_gradient_are_those_without_the_cut(fn, monkeypatch):
    scores, target = _multilabel(n=40, seed=1)
    with_cut = from_metric(fn)
    loss, grad = _loss_and_grad(with_cut, scores, target)
    assert with_cut._sums and all(with_cut._sums.values())
    monkeypatch.setattr(traced.TracedMetric, "_chain_by_sums", lambda self, plan: None)
    loss_ref, grad_ref = _loss_and_grad(from_metric(fn), scores, target)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-5, atol=1e-7)


def test_macro_f1_through_the_cut_is_the_zoos_macro_f1():
    scores, target = _multilabel(n=300, labels=4, seed=2)  # 1,200 comparisons
    loss, grad = _loss_and_grad(from_metric(macro_f1), scores, target)
    loss_zoo, grad_zoo = _loss_and_grad(zoo.f_beta(1.0, average="macro"), scores, target, calls=1)
    torch.testing.assert_close(loss, loss_zoo, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, grad_zoo, rtol=1e-4, atol=1e-7)


def test_a_cut_that_disagrees_with_the_tape_is_dropped(monkeypatch):
    scores, target = _multilabel()
    reference = _loss_and_grad(from_metric(macro_f1), scores, target)
    wrong = traced._chain_by_sums
    monkeypatch.setattr(traced, "_chain_by_sums", lambda *args: wrong(*args) + 0.01)
    metric = from_metric(macro_f1)
    loss, grad = _loss_and_grad(metric, scores, target)
    assert list(metric._sums.values()) == [False]
    assert metric.structure(metric.prepare(scores, target)).chain is None
    torch.testing.assert_close(loss, reference[0])
    torch.testing.assert_close(grad, reference[1])


def test_the_cut_stays_within_chain_elements():
    scores, target = _multilabel()
    metric, plan = _checked(macro_f1, scores, target)
    with _limits.limits(chain_elements=(scores.numel() + 1) * target.shape[1] * 2 - 1):  # two sums of [5]
        assert metric.structure(plan).chain is None
    assert metric.structure(plan).chain is not None


def test_a_cut_that_fails_later_falls_back_to_the_tape(monkeypatch):
    scores, target = _multilabel()
    reference = _loss_and_grad(from_metric(macro_f1), scores, target)
    metric = from_metric(macro_f1)
    _loss_and_grad(metric, scores, target, calls=2)  # checked: the cut is taken
    assert list(metric._sums.values()) == [True]

    def broken(*args):
        raise RuntimeError("an operation the cut did not foresee")

    monkeypatch.setattr(traced, "_chain_by_sums", broken)
    loss, grad = _loss_and_grad(metric, scores, target, calls=1)
    assert list(metric._sums.values()) == [False]
    torch.testing.assert_close(loss, reference[0])
    torch.testing.assert_close(grad, reference[1])


@pytest.mark.parametrize("name", ["multilabel_f1_score", "multilabel_precision", "binary_recall"])
def test_torchmetrics_thresholded_metrics_take_the_cut(name):
    classification = pytest.importorskip("torchmetrics.functional.classification")
    scores, target = _multilabel(n=30, labels=4, seed=3)
    if name.startswith("binary"):
        scores, target = scores.reshape(-1), target.reshape(-1)
        fn = getattr(classification, name)
    else:
        fn = lambda s, y: getattr(classification, name)(s, y, num_labels=4, average="macro")  # noqa: E731
    metric, plan = _checked(fn, scores, target)
    chain = metric.structure(plan).chain
    assert chain is not None  # torchmetrics' counts are sums of the thresholded mask
    rank = torch.randperm(scores.numel(), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(chain(rank).double(), _every_point(metric, plan, rank).double(), rtol=1e-6,
                               atol=1e-7, equal_nan=True)
