"""uniloss.from_metric: a metric written as plain torch code, traced into a decomposition.

Exact on untied scores (equal to fn itself and to an independent reference), with the very bits
of the hand-written decompositions (so the same loss and gradient for the same anchors);
torchmetrics' functional metrics unmodified; clear errors for what cannot be traced; training.
"""

import functools
import importlib
import math
import re
import warnings

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

import uniloss
import uniloss._traced as traced
from uniloss import TraceError, from_metric, zoo
from uniloss.decoders import RankingTarget
from uniloss.testing import assert_exact_decomposition


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- metrics as plain torch code


def accuracy(scores, target):  # [n, C], [n]
    return (scores.argmax(dim=1) == target).float().mean()


def top3_accuracy(scores, target):  # [n, C], [n]
    return (scores.topk(3, dim=1).indices == target[:, None]).any(dim=1).float().mean()


def average_precision(scores, target):  # [n], [n] in {0, 1}; written with argsort
    order = torch.argsort(scores, descending=True)
    relevant = target[order].float()
    precision = relevant.cumsum(0) / torch.arange(1, scores.numel() + 1)
    return (precision * relevant).sum() / relevant.sum()


def f1_at_zero(scores, target):  # [n], [n] in {0, 1}
    pred = scores > 0.0
    tp = (pred & (target == 1)).sum()
    return 2 * tp / (pred.sum() + (target == 1).sum()).clamp_min(1)


def ndcg_at_5(scores, relevance):  # [n], [n] graded relevance
    k = 5
    top = scores.argsort(descending=True)[:k]
    discount = 1.0 / torch.log2(torch.arange(k, dtype=torch.float64) + 2)
    dcg = (relevance[top].double() * discount).sum()
    ideal = (relevance.double().sort(descending=True).values[:k] * discount).sum()
    return dcg / ideal


def mean_iou(scores, target, num_classes=3):  # [n, C, H, W], [n, H, W]; classes in either map
    pred = scores.argmax(dim=1)
    ious = []
    for c in range(num_classes):
        inter = ((pred == c) & (target == c)).sum()
        union = ((pred == c) | (target == c)).sum()
        ious.append(torch.where(union > 0, inter / union.clamp_min(1), torch.nan))
    return torch.stack(ious).nanmean()


def pck(heatmaps, target, threshold=0.5):  # [n, J, H, W], KeypointTarget
    keypoints, visible, normalizer = target
    width = heatmaps.shape[-1]
    pixel = heatmaps.flatten(2).argmax(dim=-1)  # [n, J]
    xy = torch.stack([pixel % width, pixel // width], dim=-1).to(keypoints.dtype)
    close = ((xy - keypoints) ** 2).sum(-1) <= (threshold * normalizer[:, None]) ** 2
    return (close & visible).sum() / visible.sum()


# --------------------------------------------------------------------------- data


def _multiclass(seed, n=40, c=6):
    g = _gen(seed)
    scores = torch.randn(n, c, generator=g, dtype=torch.float64)
    target = torch.randint(0, c, (n,), generator=g)
    scores[: n // 3] += 2 * torch.nn.functional.one_hot(target[: n // 3], c)  # some right
    return scores, target


def _binary(seed, n=50):
    g = _gen(seed)
    target = (torch.rand(n, generator=g) < 0.3).long()
    target[0], target[1] = 1, 0
    return torch.randn(n, generator=g, dtype=torch.float64) + target, target


def _graded(seed, n=30):
    g = _gen(seed)
    relevance = torch.randint(0, 4, (n,), generator=g)
    return torch.randn(n, generator=g, dtype=torch.float64) + 0.5 * relevance, relevance


def _segmentation(seed):
    g = _gen(seed)
    return torch.randn(2, 3, 5, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (2, 5, 6), generator=g)


def _keypoints(seed):
    g = _gen(seed)
    heat = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    keypoints = torch.rand(2, 3, 2, generator=g, dtype=torch.float64) * 7
    heat[0, 0, int(keypoints[0, 0, 1].round()), int(keypoints[0, 0, 0].round())] += 5  # one joint right
    visible = torch.tensor([[True, True, False], [True, True, True]])
    return heat, uniloss.KeypointTarget(keypoints, visible, torch.tensor([3.0, 4.0], dtype=torch.float64))


def _sk_ap(scores, target):
    return skm.average_precision_score(target.numpy(), scores.numpy())


def _sk_ndcg5(scores, relevance):
    return skm.ndcg_score(relevance[None].numpy(), scores[None].numpy(), k=5)


def _sk_miou(scores, target):
    return skm.jaccard_score(target.reshape(-1).numpy(), scores.argmax(1).reshape(-1).numpy(), average="macro")


def _sk_top3(scores, target):
    return skm.top_k_accuracy_score(target.numpy(), scores.numpy(), k=3, labels=list(range(scores.shape[1])))


def _sk_f1(scores, target):
    return skm.f1_score(target.numpy(), (scores > 0).long().numpy(), zero_division=0)


# name: (fn, hand-written decomposition, data, independent reference)
CASES = {
    "accuracy": (accuracy, uniloss.MulticlassAccuracy, _multiclass,
                 lambda s, y: float((s.argmax(1) == y).double().mean())),
    "top3_accuracy": (top3_accuracy, lambda: zoo.top_k_accuracy(3), _multiclass, _sk_top3),
    "average_precision": (average_precision, uniloss.AveragePrecision, _binary, _sk_ap),
    "f1": (f1_at_zero, lambda: zoo.f_beta(1.0), _binary, _sk_f1),
    "ndcg_at_5": (ndcg_at_5, lambda: zoo.ndcg_at_k(5), _graded, _sk_ndcg5),
    "mean_iou": (mean_iou, lambda: zoo.mean_iou(3), _segmentation, _sk_miou),
    "pck": (pck, lambda: uniloss.PCK(0.5), _keypoints, lambda s, t: float(uniloss.PCK(0.5).metric(s, t))),
}


# --------------------------------------------------------------------------- exact, and the hand-written bits


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("seed", [0, 1])
def test_traced_metric_is_exact_against_fn_and_a_reference(name, seed):
    fn, _, data, reference = CASES[name]
    scores, target = data(seed)
    traced = from_metric(fn)
    assert float(traced.metric(scores, target)) == pytest.approx(float(fn(scores, target)), abs=1e-12)
    assert float(traced.metric(scores, target)) == pytest.approx(reference(scores, target), abs=1e-6)
    # evaluate() vectorised over configurations, and best() the best of those tried
    assert_exact_decomposition(traced, scores, target, fn, atol=1e-9)


@pytest.mark.parametrize("name", sorted(CASES))
def test_traced_bits_are_the_hand_written_decompositions(name):
    fn, hand, data, _ = CASES[name]
    scores, target = data(3)
    traced, hand = from_metric(fn), hand()
    plan, hand_plan = traced.prepare(scores, target), hand.prepare(scores, target)
    c, c_hand = traced.comparisons(scores, plan), hand.comparisons(scores, hand_plan)
    assert c.shape == c_hand.shape and torch.equal(c, c_hand)
    assert torch.equal(traced.best(plan), hand.best(hand_plan).reshape(-1))
    # the same anchors give the same loss and gradient, the pull per run included (a traced
    # ranking site's runs are the zoo's Ranking decoder's: an item's pairs with the less relevant;
    # a traced function has no margins, so the built-in AP is compared with its pull per run, nor
    # the runs' weights, so the zoo's argmax metrics with every run alike)
    results = []
    for decomposition in (traced, hand):
        x = scores.clone().requires_grad_(True)
        loss_fn = uniloss.UniLoss(decomposition, generator=_gen(7), pull_per="run", pull_weights="equal", interpolation="anchors")
        loss = loss_fn(x, target)
        loss.backward()
        results.append((loss.detach(), x.grad, loss_fn.last.metric))
    assert torch.allclose(results[0][0], results[1][0], atol=1e-6)  # fn's float32 values
    assert torch.allclose(results[0][1], results[1][1], atol=1e-6)
    assert float(results[0][2]) == pytest.approx(float(results[1][2]), abs=1e-6)


@pytest.mark.parametrize("name", ["accuracy", "average_precision", "f1", "pck"])
def test_on_every_device(name, device):
    fn, hand, data, _ = CASES[name]
    scores, target = data(5)
    scores = scores.to(device)
    target = tuple(t.to(device) for t in target) if isinstance(target, tuple) else target.to(device)
    target = uniloss.KeypointTarget(*target) if name == "pck" else target
    traced = from_metric(fn)
    assert float(traced.metric(scores, target)) == pytest.approx(float(fn(scores, target)), abs=1e-6)
    x = scores.clone().requires_grad_(True)
    loss_fn = uniloss.UniLoss(traced, generator=_gen(0), interpolation="anchors")
    loss_fn(x, target).backward()
    y = scores.clone().requires_grad_(True)
    uniloss.UniLoss(hand(), generator=_gen(0), pull_per="run", interpolation="anchors")(y, target).backward()  # traced: no margins
    assert x.grad.device == scores.device and torch.allclose(x.grad, y.grad, atol=1e-6)


def test_pck_through_zoo_pck_too():
    heat, target = _keypoints(4)
    traced, plan = from_metric(pck), None
    plan = traced.prepare(heat, target)
    hand = zoo.pck(0.5)
    hand_plan = hand.prepare(heat, target)
    assert torch.equal(traced.comparisons(heat, plan), hand.comparisons(heat, hand_plan))


def _f1_of_probabilities(s, y):
    pred = torch.sigmoid(s) > 0.5  # seen as s > 0; sigmoid rounds a score within eps of 0 to 0.5 exactly
    return 2 * (pred & (y == 1)).sum() / (pred.sum() + (y == 1).sum()).clamp_min(1)


def _accuracy_of_probabilities(s, y):
    return (torch.softmax(s, dim=1).argmax(1) == y).float().mean()  # seen as s.argmax(1)


@pytest.mark.parametrize("dtype, tiny", [(torch.float32, 1e-9), (torch.float64, 1e-18), (torch.bfloat16, 1e-3),
                                         (torch.float16, 1e-4)])
def test_a_score_that_fns_map_rounds_to_the_threshold_is_not_an_error(dtype, tiny):
    """A score above 0 by less than the map's rounding: fn's sigmoid says 0.5, not above it, where
    the comparison says right; the first call's check takes it as fn counts it (wrong)."""
    y = torch.tensor([1, 0, 1, 0, 1, 0, 0, 1])
    s = torch.tensor([tiny, -0.7, 0.9, 0.3, -1.2, -0.2, 0.5, -0.4], dtype=dtype)
    assert bool(torch.sigmoid(s[:1]) == 0.5) and bool(s[0] > 0)
    loss = uniloss.UniLoss(from_metric(_f1_of_probabilities))
    value = loss(s.clone().requires_grad_(), y)
    assert torch.isfinite(value)
    assert float(loss.last.metric) == pytest.approx(float(_f1_of_probabilities(s, y)))
    s2, y2 = torch.tensor([[0.0, 1e-7, -1.0], [2.0, 0.0, 0.1]]), torch.tensor([1, 0])  # softmax rounds row 0 to a tie
    loss = uniloss.UniLoss(from_metric(_accuracy_of_probabilities))
    loss(s2.clone().requires_grad_(), y2)
    assert float(loss.last.metric) == pytest.approx(float(_accuracy_of_probabilities(s2, y2)))


def test_a_replay_that_disagrees_with_fn_raises_unless_a_comparison_is_within_rounding(monkeypatch):
    """The first call's check: a replay of fn on the comparisons' configuration that differs from
    fn's value raises (fn depends on something the trace misses: here a replay made wrong); with
    a comparison within rounding of a tie it stays undecided and a later call decides."""
    y = torch.tensor([1, 0, 1, 0, 1, 0, 0, 1])
    wrong = uniloss.TracedMetric._values
    monkeypatch.setattr(uniloss.TracedMetric, "_values", lambda self, *args: wrong(self, *args) + 0.25)
    s = torch.tensor([0.4, -0.7, 0.9, 0.3, -1.2, -0.2, 0.5, -0.4])
    with pytest.raises(TraceError, match="do not capture"):
        from_metric(_f1_of_probabilities).prepare(s, y)
    s[0] = 1e-9
    metric = from_metric(_f1_of_probabilities)
    metric.prepare(s, y)  # undecided, not kept
    assert not metric._decisions


def test_monotone_maps_are_looked_through():
    """sigmoid(s) > 0.5 compares s with 0; softmax(s).argmax is s.argmax; -s sorted ascending
    is s sorted descending: the comparisons are in the scores' own units."""
    scores, target = _binary(5)

    def f1_prob(s, y):
        pred = torch.sigmoid(2.0 * s + 1.0) > 0.5  # s > -0.5
        return 2 * (pred & (y == 1)).sum() / (pred.sum() + (y == 1).sum())

    plan = from_metric(f1_prob).prepare(scores, target)
    assert torch.allclose(plan.sites[0].comparisons(), scores + 0.5)

    def acc_softmax(s, y):
        return (torch.softmax(s, dim=1).argmax(1) == y).float().mean()

    s, y = _multiclass(5)
    assert torch.equal(from_metric(acc_softmax).comparisons(s, y), uniloss.MulticlassAccuracy().comparisons(s, y))

    def ap_ascending(s, y):
        order = (-s).argsort()
        rel = y[order].float()
        return (rel.cumsum(0) / torch.arange(1, s.numel() + 1) * rel).sum() / rel.sum()

    traced = from_metric(ap_ascending)
    assert torch.equal(traced.comparisons(scores, target), uniloss.AveragePrecision().comparisons(scores, target))
    assert float(traced.metric(scores, target)) == pytest.approx(_sk_ap(scores, target), abs=1e-6)


def _specificity(scores, target):
    return ((scores < 0) & (target == 0)).sum() / (target == 0).sum().clamp_min(1)


def _recall(scores, target):
    return ((scores > 0) & (target == 1)).sum() / (target == 1).sum().clamp_min(1)


def _hamming(scores, target):  # passed without higher_is_better=False: the distance is trained up
    return ((scores > 0) != (target == 1)).float().mean()


def _accuracy(scores, target):
    return ((scores > 0) == (target == 1)).float().mean()


@pytest.mark.parametrize("fn, same, sign", [(_specificity, _recall, -1), (_hamming, _accuracy, 1)],
                         ids=["specificity", "hamming"])
def test_a_comparison_best_where_the_target_is_zero_takes_its_complement_not_probing(fn, same, sign, monkeypatch):
    """``s < 0`` scored where ``y == 0`` (specificity), or a distance trained up: the best output
    of each element is the complement of the 0/1 target. The first call finds it (a spot check of
    the complement) and later calls read it from the target instead of probing each element on
    every call (``O(n^2)``: 3.7 s a call at n = 20,000 before). The loss and gradient are those
    of the same metric written on the target itself, where the target is the best output:
    specificity is recall of ``-s`` against ``1 - y``, the distance trained up accuracy against
    ``1 - y``."""
    import uniloss._traced as traced

    g = torch.Generator().manual_seed(0)
    y = (torch.rand(40, generator=g) < 0.3).long()
    s = torch.randn(40, generator=g) - y
    metric = from_metric(fn)
    loss = uniloss.UniLoss(metric)
    loss(s, y)  # the first call decides
    assert [d[0] for d in metric._decisions.values()] == [{"complement": True}]
    monkeypatch.setattr(traced.TracedMetric, "_probe_compare", lambda self, *a: pytest.fail("probed"))
    scores = s.clone().requires_grad_()
    value = loss(scores, y)
    value.backward()
    reference, written = (sign * s).clone().requires_grad_(), from_metric(same)
    expected = uniloss.UniLoss(written)(reference, 1 - y)
    expected.backward()
    assert [d[0] for d in written._decisions.values()] == [{}]  # the target itself: no complement, no probe
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(scores.grad, sign * reference.grad)


def test_a_target_of_minus_one_and_one_labels_gives_the_best_output_without_probing(monkeypatch):
    """Labels in {-1, +1} (the margin losses' convention): ``t > 0`` is the best output of ``s > 0``,
    not found by probing each element every call; the loss and gradient of the same metric on 0/1
    labels."""
    import uniloss._traced as traced

    g = torch.Generator().manual_seed(1)
    positive = torch.rand(40, generator=g) < 0.3
    s = torch.randn(40, generator=g) + positive
    signed = torch.where(positive, 1, -1)
    monkeypatch.setattr(traced.TracedMetric, "_probe_compare", lambda self, *a: pytest.fail("probed"))
    values, grads = [], []
    for fn, y in ((lambda a, b: ((a > 0) == (b > 0)).float().mean(), signed), (_accuracy, positive.long())):
        scores = s.clone().requires_grad_()
        loss = uniloss.UniLoss(from_metric(fn))
        for _ in range(2):
            scores.grad = None
            value = loss(scores, y)
            value.backward()
        values.append(value)
        grads.append(scores.grad)
    torch.testing.assert_close(values[0], values[1])
    torch.testing.assert_close(grads[0], grads[1])


def _macro_recall_of_rows(scores, target):  # target [n, C]: one row per sample, its class highest
    hits = torch.nn.functional.one_hot(scores.argmax(1), target.shape[1]) * (target == target.amax(1, keepdim=True))
    return (hits.sum(0) / (target == target.amax(1, keepdim=True)).sum(0).clamp_min(1)).mean()


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("fn", [lambda s, y: (s.argmax(1) == y.argmax(1)).float().mean(), _macro_recall_of_rows],
                         ids=["accuracy", "macro_recall"])
def test_one_hot_and_smoothed_targets_give_the_labels_loss(fn, smoothing):
    """``y`` one-hot or label-smoothed ``[n, C]``, read as ``y.argmax(1)`` or by its row maxima:
    the argmax takes each row's highest entry as its label (the fast path of the labels; it had
    been a ranking by relevance through the tape at every point, 2 s a call at 256 x 10), with
    the loss and gradient of the same metric on the integer labels."""
    scores, labels = _multiclass(3)
    rows = torch.nn.functional.one_hot(labels, scores.shape[1]).double() * (1 - smoothing) + smoothing / scores.shape[1]
    metric = from_metric(fn)
    assert [(type(s).__name__, s.mode) for s in metric.prepare(scores, rows).sites] == [("_ClassSite", "label")]
    on_labels = from_metric(lambda s, y: fn(s, torch.nn.functional.one_hot(y, s.shape[1])))
    results = []
    for m, y in ((metric, rows), (on_labels, labels)):
        s = scores.clone().requires_grad_()
        loss = uniloss.UniLoss(m)
        for _ in range(2):
            s.grad = None
            value = loss(s, y)
            value.backward()
        results.append((value, s.grad))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])


def test_class_indices_stored_as_floats_are_labels():
    """Labels loaded as floats (``y.float()``, whole numbers): the labels' path and loss, not a
    probe of each row and class on every call."""
    scores, labels = _multiclass(5)
    results = []
    for y in (labels.double(), labels):
        metric = from_metric(lambda s, t: (s.argmax(1) == t).double().mean())
        assert [(type(x).__name__, x.mode) for x in metric.prepare(scores, y).sites] == [("_ClassSite", "label")]
        s = scores.clone().requires_grad_()
        value = uniloss.UniLoss(metric)(s, y)
        value.backward()
        results.append((value, s.grad))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])


def test_a_target_of_two_other_values_is_read_as_where_it_holds_the_higher(monkeypatch):
    """Smoothed binary labels (0.1 and 0.9) thresholded inside ``fn``: the target where it holds
    the higher value is the best output of ``s > 0``, not found by probing every call; the loss
    and gradient of the same metric on 0/1 labels."""
    import uniloss._traced as traced

    g = torch.Generator().manual_seed(2)
    positive = torch.rand(40, generator=g) < 0.3
    s = torch.randn(40, generator=g) + positive
    monkeypatch.setattr(traced.TracedMetric, "_probe_compare", lambda self, *a: pytest.fail("probed"))
    results = []
    for y in (torch.where(positive, 0.9, 0.1), positive.double()):
        scores = s.clone().requires_grad_()
        value = uniloss.UniLoss(from_metric(lambda a, b: ((a > 0) == (b > 0.5)).float().mean()))(scores, y)
        value.backward()
        results.append((value, scores.grad))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])


def _pixels(seed, ignore):
    g = _gen(seed)
    labels = torch.randint(0, 4, (2, 6, 6), generator=g)
    scores = torch.randn(2, 4, 6, 6, generator=g, dtype=torch.float64) + torch.nn.functional.one_hot(labels, 4).movedim(-1, 1)
    labels[:, :2] = ignore
    labels[1, 3, 3] = ignore
    return scores, labels


@pytest.mark.parametrize("ignore", [255, -100])
def test_an_ignore_index_leaves_its_pixels_out_without_probing(ignore, monkeypatch):
    """Segmentation labels with an ignore index (VOC's 255, PyTorch's -100) left out by ``fn``:
    the labelled pixels' labels are their best outputs and the ignored pixels have no
    comparisons, read from the target, not probed each call (each pixel and class: past
    ``probe_limit`` at 4 x 64 x 64 pixels of 21 classes, a TraceError). The loss and gradient
    are those of the metric on the labelled pixels alone; the ignored pixels get none."""
    import uniloss._traced as traced

    def pixel_accuracy(s, y):
        valid = y != ignore
        return ((s.argmax(1) == y) & valid).sum() / valid.sum()

    scores, labels = _pixels(6, ignore)
    valid = labels != ignore
    metric = from_metric(pixel_accuracy)
    loss = uniloss.UniLoss(metric)
    loss(scores, labels)  # the first call checks
    monkeypatch.setattr(traced.TracedMetric, "_probe_class", lambda self, *a: pytest.fail("probed"))
    x = scores.clone().requires_grad_()
    value = loss(x, labels)
    value.backward()
    kept = scores.movedim(1, -1)[valid].clone().requires_grad_()
    expected = uniloss.UniLoss(from_metric(lambda s, y: (s.argmax(1) == y).double().mean()))(kept, labels[valid])
    expected.backward()
    torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-9)
    grad = x.grad.movedim(1, -1)
    assert bool((grad[~valid] == 0).all())
    torch.testing.assert_close(grad[valid], kept.grad, rtol=1e-5, atol=1e-9)


def test_an_out_of_range_label_the_metric_reads_is_probed():
    """A label outside the classes that ``fn`` does score (here: as the last class) is not an
    ignore index; the first call's spot check finds it and the best outputs are probed."""
    scores, labels = _pixels(7, 255)
    fn = lambda s, y: (s.argmax(1) == y.clamp(max=3)).double().mean()  # noqa: E731
    metric = from_metric(fn)
    sites = metric.prepare(scores, labels).sites
    assert [d[0] for d in metric._decisions.values()] == [{"mode": "probe"}]
    assert sites[0].ignoring is None
    assert_exact_decomposition(metric, scores, labels, fn, atol=1e-9)


def test_graded_relevance_rows_stay_a_ranking():
    """Rows of graded relevance (more than two values in a row), or a row whose highest entry is
    shared, are not read as labels: the argmax stays a ranking by relevance."""
    scores, labels = _multiclass(4, n=12, c=5)
    graded = torch.nn.functional.one_hot(labels, 5).double() * 2 + torch.linspace(0, 1, 5)  # three values or more
    shared = torch.nn.functional.one_hot(labels, 5).double()
    shared[0] = 1.0  # one row all highest
    fn = lambda s, y: y.gather(1, s.argmax(1, keepdim=True)).mean()  # noqa: E731  (relevance of the pick)
    for y in (graded, shared):
        assert [type(s).__name__ for s in from_metric(fn).prepare(scores, y).sites] == ["_RankSite"]


@pytest.mark.filterwarnings("ignore:from_metric.*fn is lowest where a row")  # labels not best by design
def test_best_output_found_by_probing_when_the_target_holds_none():
    """A cost-sensitive metric whose target is not the best prediction: the best outputs come
    from probing fn, one row at a time."""
    cost = torch.tensor([[0.0, 1.0, 5.0], [1.0, 0.0, 1.0], [10.0, 1.0, 0.0]])

    def shifted(scores, target):  # the right answer is the next class
        return ((scores.argmax(1) == (target + 1) % 3).float()).mean()

    def neg_cost(scores, target):
        return -cost[target, scores.argmax(1)].mean()

    s, y = _multiclass(6, c=3)
    traced = from_metric(shifted)
    plan = traced.prepare(s, y)
    assert plan.sites[0].mode == "probe"
    assert_exact_decomposition(traced, s, y, shifted, atol=1e-9)
    best = traced.evaluate(traced.best(plan)[None], plan)
    assert float(best) == 1.0
    assert_exact_decomposition(from_metric(neg_cost), s, y, neg_cost, atol=1e-6)


def test_several_discrete_steps_and_held_control_flow():
    """Two trained steps (a threshold and a ranking) and one step that only steers control flow."""
    def precision_at_3_of_confident(scores, relevance):
        if not torch.all((scores >= 0) * (scores <= 1)):  # held at its current result
            scores = scores.sigmoid()
        confident = scores > 0.5
        top = scores.topk(3).indices
        return (relevance[top] * confident[top]).float().mean()

    scores, target = _binary(8, n=20)
    traced = from_metric(precision_at_3_of_confident)
    plan = traced.prepare(scores, target)
    assert [type(s).__name__ for s in plan.sites] == ["_CompareSite", "_RankSite"]
    assert_exact_decomposition(traced, scores, target, precision_at_3_of_confident, atol=1e-9)
    text = traced.explain(scores, target)
    assert "held at its current result" in text and "topk" in text


def test_degenerate_batch_gives_a_zero_loss_with_finite_gradients():
    traced = from_metric(average_precision)
    scores = torch.randn(10, requires_grad=True)
    loss = uniloss.UniLoss(traced, interpolation="anchors")(scores, torch.zeros(10, dtype=torch.long))
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.isfinite(scores.grad).all()
    assert torch.isnan(traced.metric(scores, torch.zeros(10, dtype=torch.long)))


def test_batching_vmap_loop_and_fallback_agree():
    def f1_masked(scores, target):  # boolean indexing: no vmap
        pred = scores > 0
        tp = target[pred].sum()
        return 2 * tp / (pred.sum() + target.sum())

    scores, target = _binary(9)
    auto = from_metric(f1_masked)
    with pytest.warns(UserWarning, match="one anchor at a time"):
        value = auto.metric(scores, target)
    assert float(value) == pytest.approx(float(f1_masked(scores, target)))
    bits = torch.rand(5, scores.numel(), generator=_gen(0)) < 0.5
    loop = from_metric(f1_masked, batched="loop")
    assert torch.equal(auto.evaluate(bits, auto.prepare(scores, target)),
                       loop.evaluate(bits, loop.prepare(scores, target)))
    with pytest.raises(TraceError, match="batched='loop'"):
        from_metric(f1_masked, batched="vmap").metric(scores, target)
    vm = from_metric(f1_at_zero)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vm_values = vm.evaluate(bits, vm.prepare(scores, target))
    lp = from_metric(f1_at_zero, batched="loop")
    assert torch.allclose(vm_values, lp.evaluate(bits, lp.prepare(scores, target)))


def _kappa_counted_by_index_put(s, y):  # a confusion matrix by index_put_(accumulate=True): the anchors' rows
    c = s.shape[1]
    observed = torch.zeros(c, c, dtype=s.dtype).index_put_((y, s.argmax(1)), torch.ones(len(y), dtype=s.dtype),
                                                           accumulate=True)
    weights = (torch.arange(c)[:, None] - torch.arange(c)[None, :]).to(s.dtype) ** 2
    expected = observed.sum(1, keepdim=True) * observed.sum(0, keepdim=True) / observed.sum()
    return 1 - (weights * observed).sum() / (weights * expected).sum()


def _hits_put_per_class(s, y):  # the values change with the step, the indices are the target's
    hits = torch.zeros(s.shape[1], dtype=s.dtype).index_put_((y,), (s.argmax(1) == y).to(s.dtype), accumulate=True)
    return (hits / torch.bincount(y, minlength=s.shape[1]).clamp_min(1)).mean()


def _written(s, y):  # without accumulate: each row's prediction written twice, by 2-D indices
    n = len(y)
    put = torch.full((n, 3), -1).index_put_((torch.arange(n)[:, None], torch.tensor([[0, 2]])),
                                            s.argmax(1)[:, None].expand(-1, 2))
    return ((put[:, 0] == y) & (put[:, 1] == -1) & (put[:, 2] == y)).to(s.dtype).mean()


@pytest.mark.parametrize("fn", [_kappa_counted_by_index_put, _hits_put_per_class, _written],
                         ids=lambda f: f.__name__)
def test_index_put_runs_on_the_anchors_batch_by_hand_as_fn_one_at_a_time(fn):
    scores, target = _multiclass(3, n=30, c=4)
    _assert_batched_by_hand(fn, scores, target, 7)


def _assert_batched_by_hand(fn, scores, target, t):
    """``fn``'s tape runs on ``t`` random configurations by hand (no warning of one anchor at a
    time), each value as ``fn`` replayed alone gives it."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "one anchor at a time"
        metric = from_metric(fn)
        plan = metric.prepare(scores, target)
        assert plan.tape == "direct"
        bits = torch.rand(t, plan.num_bits, generator=_gen(1)) < 0.5
        values = metric.evaluate(bits, plan)
    loop = from_metric(fn, batched="loop")
    torch.testing.assert_close(values, loop.evaluate(bits, loop.prepare(scores, target)))
    assert float(metric.metric(scores, target)) == pytest.approx(float(fn(scores, target)))


def _spearman_by_scatter(s, y):  # ranks written by `r[order] = arange` (torchmetrics' _rank_data)
    r = torch.empty(len(s), dtype=s.dtype)
    r[s.argsort()] = torch.arange(len(s), dtype=s.dtype)
    q = y.argsort().argsort().to(s.dtype)
    r, q = r - r.mean(), q - q.mean()
    return (r * q).sum() / (r.norm() * q.norm())


def _running_target_written_back(s, y):  # a value per anchor (the target in its rank order, summed) written back
    order = s.argsort(descending=True)
    back = torch.zeros(len(s), dtype=s.dtype)
    back[order] = y[order].to(s.dtype).cumsum(0)
    return (back * y).sum() / (y.sum() * len(s))


def _rows_written(s, y):  # rows of a 2-D tensor written by each anchor's order, a value of the row's shape
    n = len(s)
    table = torch.zeros(n, 2, dtype=s.dtype)
    table[s.argsort()] = torch.stack([torch.arange(n), torch.arange(n) % 3], 1).to(s.dtype)
    return (table[:, 0] * y + table[:, 1]).sum() / n ** 2


def _rank_distances(s, y):  # Spearman's footrule and the largest displacement, by norms of the ranks' difference
    r = torch.empty(len(s), dtype=s.dtype)
    r[s.argsort()] = torch.arange(len(s), dtype=s.dtype)
    d = r - y.argsort().argsort().to(s.dtype)
    return torch.linalg.vector_norm(d, ord=1) / len(s) ** 2 + d.norm(p=float("inf")) / len(s) + torch.norm(d) / 100


@pytest.mark.parametrize("fn", [_spearman_by_scatter, _running_target_written_back, _rows_written, _rank_distances],
                         ids=lambda f: f.__name__)
def test_a_write_at_an_integer_index_per_anchor_runs_on_the_batch_by_hand(fn):
    """``x[i] = value`` with ``i`` from a ranking: vmap cannot batch it (its ``x`` is not batched),
    so ``fn`` was replayed one configuration at a time; the tape writes each anchor's row."""
    g = _gen(4)
    target = torch.randn(24, generator=g, dtype=torch.float64)
    if fn in (_running_target_written_back, _rows_written):
        target = (target > 0).long()
    scores = torch.randn(24, generator=g, dtype=torch.float64) + target
    _assert_batched_by_hand(fn, scores, target, 9)


def test_structured_and_dense_engines_agree():
    scores, target = _binary(10)
    traced = from_metric(average_precision)
    x1, x2 = scores.clone().requires_grad_(), scores.clone().requires_grad_()
    plan = traced.prepare(x1, target)
    assert traced.structure(plan) is not None
    anchors = torch.rand(20, plan.num_bits, generator=_gen(1)) < 0.5  # dense anchors
    assert traced.structure(plan).margins is None  # a traced function: the pull per run
    l1 = uniloss.functional.uniloss(x1, target, traced, anchors=anchors, interpolation="anchors")
    l2 = uniloss.functional.uniloss(x2, target, uniloss.AveragePrecision(), anchors=anchors, pull_per="run", interpolation="anchors")
    l1.backward(), l2.backward()
    assert torch.allclose(l1, l2) and torch.allclose(x1.grad, x2.grad)


# --------------------------------------------------------------------------- torchmetrics, unmodified


def _tm():
    return pytest.importorskip("torchmetrics")


@pytest.mark.filterwarnings("ignore:Metric `SpearmanCorrcoef` will save")  # its buffer, unused here
def test_torchmetrics_metric_objects_are_refused_for_their_functional_form():
    torchmetrics = _tm()
    named = {  # the message names the function where the class's name gives it, and it exists
        torchmetrics.classification.BinaryF1Score(): "torchmetrics.functional.classification.binary_f1_score",
        torchmetrics.classification.BinaryAUROC(): "torchmetrics.functional.classification.binary_auroc",
        torchmetrics.classification.MulticlassAccuracy(num_classes=3):
            "torchmetrics.functional.classification.multiclass_accuracy",
        torchmetrics.regression.SpearmanCorrCoef(): "torchmetrics.functional.regression.spearman_corrcoef",
    }
    for metric, functional in named.items():
        module, name = functional.rsplit(".", 1)
        assert callable(getattr(importlib.import_module(module), name))
        with pytest.raises(TypeError, match=re.escape(f"functools.partial({functional}, ...)")):
            from_metric(metric)
    with pytest.raises(TypeError, match=r"functional form \(e\.g\."):  # no function of its name: an example
        from_metric(torchmetrics.retrieval.RetrievalMAP())


@pytest.mark.parametrize("seed", [0, 1])
def test_torchmetrics_functional_metrics_work_as_fn(seed):
    _tm()
    from torchmetrics.functional.classification import (binary_average_precision, binary_f1_score,
                                                        multiclass_accuracy)
    from torchmetrics.functional.retrieval import retrieval_normalized_dcg

    s, y = _multiclass(seed, n=64, c=5)
    s, y = s.float(), y
    sb, yb = _binary(seed, n=64)
    sb = sb.float()
    sr, rel = _graded(seed)
    sr = sr.float()
    cases = [
        (functools.partial(multiclass_accuracy, num_classes=5), s, y, None),  # macro: mean recall
        (functools.partial(multiclass_accuracy, num_classes=5, average="micro"), s, y, uniloss.MulticlassAccuracy()),
        (functools.partial(multiclass_accuracy, num_classes=5, top_k=2, average="micro"), s, y, None),  # batched
        (binary_f1_score, sb, yb, zoo.f_beta(1.0)),  # sigmoid(s) > 0.5 seen as s > 0
        (binary_average_precision, sb, yb, uniloss.AveragePrecision()),
        (retrieval_normalized_dcg, sr, rel, zoo.ndcg_at_k()),  # torch.unique(-s) as a ranking
        (functools.partial(retrieval_normalized_dcg, top_k=5), sr, rel, zoo.ndcg_at_k(5)),
    ]
    for fn, scores, target, hand in cases:
        traced = from_metric(fn)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # batched with vmap: no fallback warning
            value = traced.metric(scores, target)
        assert torch.allclose(value, fn(scores, target).to(value.dtype), atol=1e-6), fn
        if hand is not None:
            plan, hand_plan = traced.prepare(scores, target), hand.prepare(scores, target)
            assert torch.equal(traced.comparisons(scores, plan), hand.comparisons(scores, hand_plan)), fn
            assert torch.equal(traced.best(plan), hand.best(hand_plan).reshape(-1)), fn
        x = scores.clone().requires_grad_()
        uniloss.UniLoss(traced, interpolation="anchors")(x, target).backward()
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["binary_auroc", "retrieval_reciprocal_rank", "binary_matthews_corrcoef",
                                  "retrieval_average_precision"])
def test_torchmetrics_with_python_control_flow_on_their_steps_trace(name):
    """`if fps[-1] <= 0: warn`, `if not target.sum():`, `if tp + tn != 0 and fp + fn == 0:`: each
    configuration whose values read there differ from the trace's replays fn (tests/test_traced_guards.py)."""
    _tm()
    from torchmetrics.functional import classification, retrieval

    fn = getattr(classification, name, None) or getattr(retrieval, name)
    scores, target = _binary(2, n=24)
    scores = scores.float()
    grads = []
    for batched in ("auto", "loop"):  # "loop": fn itself at every configuration
        x = scores.clone().requires_grad_()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # retrieval's nonzero: vmap cannot batch fn
            loss = uniloss.UniLoss(from_metric(fn, batched=batched))
            loss(x, target).backward()
        assert float(loss.last.metric) == pytest.approx(float(fn(scores, target)), abs=1e-6)
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1])
    assert grads[0].abs().sum() > 0


@pytest.mark.parametrize("name, kind, higher", [
    ("binary_fbeta_score", "binary", True), ("binary_jaccard_index", "binary", True),
    ("binary_hamming_distance", "binary", False), ("multiclass_specificity", "multiclass", True),
    ("retrieval_hit_rate", "retrieval", True), ("retrieval_fall_out", "retrieval", False),
    ("retrieval_r_precision", "retrieval", True), ("multiclass_average_precision", "multiclass", True),
    ("binary_cohen_kappa", "binary", True), ("multiclass_cohen_kappa", "multiclass", True),
    ("binary_specificity_at_sensitivity", "binary", True),
])
def test_more_torchmetrics_functions_give_their_value_and_a_gradient(name, kind, higher):
    _tm()
    from torchmetrics.functional import classification, retrieval

    fn = getattr(classification, name, None) or getattr(retrieval, name)
    if kind == "multiclass":
        fn = functools.partial(fn, num_classes=4)
    elif name == "binary_fbeta_score":
        fn = functools.partial(fn, beta=2.0)
    elif name == "binary_specificity_at_sensitivity":
        fn = lambda s, y, f=fn: f(s, y, min_sensitivity=0.5)[0]  # noqa: E731
    if kind == "multiclass":
        scores, target = _multiclass(3, n=24, c=4)
    else:
        scores, target = _binary(3, n=24)
    scores = scores.float()
    x = scores.clone().requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the last one replays fn one configuration at a time
        loss = uniloss.UniLoss(from_metric(fn, higher_is_better=higher))
        loss(x, target).backward()
    assert float(loss.last.metric) == pytest.approx(float(fn(scores, target)), abs=1e-6)
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_torchmetrics_recall_at_fixed_precision_raises_saying_why():
    """A threshold on a curve of the ranking is a step on another step's result (docs/custom-metrics.md)."""
    _tm()
    from torchmetrics.functional.classification import binary_recall_at_fixed_precision

    scores, target = _binary(4, n=24)
    with pytest.raises(TraceError, match=r"depend on the scores and on another discrete step"):
        uniloss.UniLoss(from_metric(lambda s, y: binary_recall_at_fixed_precision(s, y, min_precision=0.5)[0]))(
            scores.float().clone().requires_grad_(), target)


def _multilabel(seed, n=24, labels=3):
    g = _gen(seed)
    target = (torch.rand(n, labels, generator=g) < 0.4).long()
    target[0], target[1] = 1, 0  # every label has both
    return torch.randn(n, labels, generator=g, dtype=torch.float64) + target, target


def column_mean_ap(scores, target):  # [n, L], [n, L]: each label's AP (written with argsort), their mean
    return torch.stack([average_precision(scores[:, i], target[:, i]) for i in range(scores.shape[1])]).mean()


def test_a_ranking_of_a_column_takes_the_targets_column_as_relevance():
    """s[:, i] ranked: its relevance is y[:, i] (the scores' moves applied to the target), so the
    mean of the columns' AP is the zoo's AP with each label a query: the same comparisons, loss and
    gradient (no pull: the zoo's is per sample)."""
    scores, target = _multilabel(5)
    n, labels = scores.shape
    x, z = scores.clone().requires_grad_(), scores.clone().requires_grad_()
    traced = uniloss.UniLoss(from_metric(column_mean_ap), pull=0)
    hand = uniloss.UniLoss(zoo.average_precision(), pull=0)
    query = torch.arange(labels).repeat_interleave(n)
    a = traced(x, target)
    b = hand(z.T.reshape(-1), RankingTarget(target.T.reshape(-1), query))
    a.backward()
    b.backward()
    assert float(traced.last.metric) == pytest.approx(float(column_mean_ap(scores, target)))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(x.grad, z.grad)


def test_a_ranking_per_column_pulls_as_the_zoos_form_of_its_items():
    """The pull per run of a ranking per label's column is divided by the items ranked (``n L``),
    as the zoo's form of the same metric divides it, each label a query of the flattened scores
    (binary cross-entropy's mean over the ``[n, L]`` elements): the same loss and gradient with the
    pull on, where dividing by the scores' first dimension ``n`` pulled ``L`` times as hard."""
    scores, target = _multilabel(5)
    n, labels = scores.shape
    x, z = scores.clone().requires_grad_(), scores.clone().requires_grad_()
    traced = uniloss.UniLoss(from_metric(column_mean_ap), pull_weights="equal")
    hand = uniloss.UniLoss(zoo.average_precision(), pull_per="run", pull_weights="equal")
    query = torch.arange(labels).repeat_interleave(n)
    a = traced(x, target)
    b = hand(z.T.reshape(-1), RankingTarget(target.T.reshape(-1), query))
    a.backward()
    b.backward()
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(x.grad, z.grad)


def test_a_target_the_scores_moves_cannot_take_is_no_relevance():
    """`view` of a transposed (non-contiguous) target fails: no relevance from it, a TraceError
    (not the view's RuntimeError)."""
    scores, target = _multilabel(7)
    fn = lambda s, y: average_precision(s.view(-1)[::3], y.reshape(-1)[::3])  # noqa: E731  (label 0)
    with pytest.raises(TraceError, match="no tensor to infer the best result from"):
        from_metric(fn).metric(scores, target.T.contiguous().T)


@pytest.mark.parametrize("name", ["multilabel_auroc", "multilabel_average_precision"])
def test_torchmetrics_multilabel_rankings_trace(name):
    """Each label's curve ranks a column of sigmoid(scores): relevance the target's column."""
    _tm()
    from torchmetrics.functional import classification

    fn = functools.partial(getattr(classification, name), num_labels=3)
    scores, target = _multilabel(6)
    scores = scores.float()
    grads = []
    for batched in ("auto", "loop"):  # "loop": fn itself at every configuration
        x = scores.clone().requires_grad_()
        metric = from_metric(fn, batched=batched)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loss = uniloss.UniLoss(metric)
            loss(x, target).backward()
        assert float(loss.last.metric) == pytest.approx(float(fn(scores, target)), abs=1e-6)
        grads.append(x.grad)
    pairs = sum(int(target[:, i].sum()) * int((1 - target[:, i]).sum()) for i in range(3))
    assert metric.prepare(scores, target).num_bits == pairs  # each label's positives against its negatives
    torch.testing.assert_close(grads[0], grads[1])


def _same_loss_and_gradient(a, b, scores, target, seed):
    """UniLoss at its defaults on two decompositions of one metric: the same loss and gradient."""
    grads = []
    for metric in (a, b):
        x = scores.clone().requires_grad_()
        loss = uniloss.UniLoss(metric, generator=_gen(seed))(x, target)
        loss.backward()
        grads.append((loss.detach(), x.grad))
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("name", ["hand", "multilabel_average_precision", "multilabel_ranking_average_precision",
                                  "multilabel_ranking_loss"])
def test_a_ranking_under_moves_of_a_sigmoid_compares_the_scores(name, monkeypatch):
    """A column (or a row) of ``s.sigmoid()`` ranked: the sigmoid is looked through under the move,
    as without one, so the comparisons are the scores' differences, linear in the scores (a
    probabilities' difference is at most 1 and flattens as the scores grow); by hand, those of
    the same metric on the raw scores' columns, with its loss and gradient, on the first call and
    on the re-runs after it. torchmetrics' multi-label curves take a column of ``sigmoid(preds)``,
    its label rankings a row of ``-sigmoid(preds)`` (the ranking loss after a row filter from the
    target, a move by a tensor)."""
    if name == "hand":
        fn = lambda s, y: column_mean_ap(s.sigmoid(), y)  # noqa: E731
    else:
        _tm()
        from torchmetrics.functional import classification

        fn = functools.partial(getattr(classification, name), num_labels=3)
    traced = from_metric(fn, higher_is_better=name != "multilabel_ranking_loss")
    written = from_metric(column_mean_ap)
    traces = []
    full = uniloss.TracedMetric._full_trace
    monkeypatch.setattr(uniloss.TracedMetric, "_full_trace", lambda self, *a: traces.append(1) or full(self, *a))
    for seed in range(3):
        scores, target = _multilabel(seed)
        scores = scores.float()
        if seed == 1:
            traces.clear()  # the first calls traced
        assert float(traced.metric(scores, target)) == pytest.approx(float(fn(scores, target)), abs=1e-6)
        comparisons = [traced.comparisons(k * scores, traced.prepare(k * scores, target)) for k in (1, 4)]
        torch.testing.assert_close(comparisons[1], 4 * comparisons[0])
        if name != "hand":
            continue
        torch.testing.assert_close(comparisons[0], written.comparisons(scores, written.prepare(scores, target)))
        _same_loss_and_gradient(traced, written, scores, target, seed)
    if name == "hand":
        assert not traces  # the later calls re-ran fn and looked through the sigmoid under the move again


def _one_vs_rest(s):
    """Each entry of ``[n, C]`` logits less the log-sum-exp of its row's others: the logit of
    ``softmax(s, 1)``'s entry, ``log(p / (1 - p))``."""
    return torch.stack([s[:, c] - torch.cat([s[:, :c], s[:, c + 1:]], 1).logsumexp(1) for c in range(s.shape[1])], 1)


def _softmax_column_ap(s, y, log=False):
    """Each class's AP, its column of ``softmax(s, 1)`` (or of its one-vs-rest logits) ranked over
    the samples, as torchmetrics' one-vs-rest curves take logits."""
    p = _one_vs_rest(s) if log else s.softmax(1)
    return torch.stack([average_precision(p[:, c], (y == c).long()) for c in range(s.shape[1])]).mean()


@pytest.mark.parametrize("fn", ["hand", "hand, log_softmax", "multiclass_average_precision"])
def test_a_softmax_column_ranked_is_compared_in_the_scores_units(fn, monkeypatch):
    """A column of ``softmax(s, 1)`` ranked over the samples is not a monotone map of ``s[:, c]``,
    but it is the sigmoid of the one-vs-rest logits (each logit less its row's others' log-sum-exp):
    the same order, in the scores' units. The comparisons, loss and gradient are those of the same
    metric written on those logits (not probabilities' differences of at most 1), on the first call
    and on the re-runs after it; the metric itself is fn's."""
    if fn == "hand":
        fn = _softmax_column_ap
    elif fn == "hand, log_softmax":  # the same order, in log units: ranked by the same logits
        fn = lambda s, y: torch.stack([average_precision(s.log_softmax(1)[:, c], (y == c).long())  # noqa: E731
                                       for c in range(s.shape[1])]).mean()
    else:
        _tm()
        from torchmetrics.functional.classification import multiclass_average_precision

        fn = functools.partial(multiclass_average_precision, num_classes=4)
    batches = [(3 * s.float(), y) for s, y in (_multiclass(seed, n=24, c=4) for seed in range(3))]
    _compared_as_written(fn, functools.partial(_softmax_column_ap, log=True), batches, monkeypatch)


def _compared_as_written(fn, reference, batches, monkeypatch, higher_is_better=True):
    """``fn`` through ``from_metric`` gives its own value, and the comparisons, loss and gradient
    of ``reference``, the same decisions written on the scores' units (a comparison beyond a
    probabilities' difference of 1), on the first call and on the re-runs after it, which look
    through again without tracing."""
    traced, written = (from_metric(f, higher_is_better=higher_is_better) for f in (fn, reference))
    traces = []
    full = uniloss.TracedMetric._full_trace
    monkeypatch.setattr(uniloss.TracedMetric, "_full_trace", lambda self, *a: traces.append(1) or full(self, *a))
    for i, (s, y) in enumerate(batches):
        assert float(traced.metric(s, y)) == pytest.approx(float(fn(s, y)), abs=1e-6)
        comparisons = traced.comparisons(s, traced.prepare(s, y))
        torch.testing.assert_close(comparisons, written.comparisons(s, written.prepare(s, y)))
        assert float(comparisons.abs().max()) > 1.5
        _same_loss_and_gradient(traced, written, s, y, i)
        if i == 0:
            traces.clear()  # the first calls traced
    assert not traces


def _column_threshold(s, y, log=False):
    """Accuracy of "class 1 has probability above 0.3" against a binary target: a threshold on a
    column of ``softmax(s, 1)`` (or on its one-vs-rest logits against ``logit(0.3)``)."""
    p = _one_vs_rest(s)[:, 1] > math.log(0.3 / 0.7) if log else s.softmax(1)[:, 1] > 0.3
    return (p.long() == y).float().mean()


def _one_hot(y):
    return torch.nn.functional.one_hot(y, 3).bool()


_THRESHOLDS = {  # fn, and the same decisions written on the scores' own units
    "sigmoid column": (lambda s, y: ((s.sigmoid()[:, 0] > 0.5).long() == y).float().mean(),
                       lambda s, y: ((s[:, 0] > 0).long() == y).float().mean()),
    "scaled sigmoid row": (lambda s, y: ((2 * s).sigmoid().t()[0] >= 0.25).float().sub(y).abs().mean(),
                           lambda s, y: ((2 * s)[:, 0] >= -math.log(3)).float().sub(y).abs().mean()),
    "softmax column": (_column_threshold, functools.partial(_column_threshold, log=True)),
    "log_softmax column": (lambda s, y: ((s.log_softmax(1)[:, 1] > math.log(0.3)).long() == y).float().mean(),
                           functools.partial(_column_threshold, log=True)),
    "softmax, a tensor threshold": (
        lambda s, y: (s.softmax(1) > torch.tensor(0.3)).eq(_one_hot(y)).float().mean(),
        lambda s, y: (_one_vs_rest(s) > math.log(0.3 / 0.7)).eq(_one_hot(y)).float().mean()),
    "two classes": (lambda s, y: ((s[:, :2].softmax(1)[:, 1] > 0.5).long() == y).float().mean(),
                    lambda s, y: ((s[:, 1] - s[:, 0] > 0).long() == y).float().mean()),
}


@pytest.mark.parametrize("name", list(_THRESHOLDS))
def test_a_threshold_under_moves_or_on_a_softmax_compares_the_scores(name, monkeypatch):
    """A threshold on a column of ``s.sigmoid()`` (or a row of its transpose) looks through the
    sigmoid under the move, as without one; a threshold ``t`` on ``softmax(s, 1)`` compares the
    one-vs-rest logits with ``logit(t)`` (the same decisions, in the scores' units, where
    probabilities differ by at most 1; of two classes, ``s1 - s0``). The comparisons, loss and
    gradient are those of the same decisions written on those units, on the first call and on the
    re-runs after it."""
    batches = [(3 * _multiclass(seed, n=24, c=3)[0].float(), torch.randint(0, 2, (24,), generator=_gen(seed)))
               for seed in range(3)]
    _compared_as_written(*_THRESHOLDS[name], batches, monkeypatch, higher_is_better=name != "scaled sigmoid row")


def _agree(pred, y):
    return (pred.long() == y).float().mean()


_BOTH_SIDES = {  # fn comparing two maps of the scores, and the same decisions on the scores themselves
    "one row of a softmax": (lambda s, y: _agree(s.softmax(1)[:, 1] > s.softmax(1)[:, 0], y),
                             lambda s, y: _agree(s[:, 1] > s[:, 0], y)),
    "a sigmoid each side": (lambda s, y: _agree(s[:, 1].sigmoid() > s[:, 0].sigmoid(), y),
                            lambda s, y: _agree(s[:, 1] > s[:, 0], y)),
    "a decreasing map, >=": (lambda s, y: _agree((-s.sigmoid())[:, 0] >= (-s.sigmoid())[:, 1], y),
                             lambda s, y: _agree(s[:, 1] >= s[:, 0], y)),
    "an affine map by one number": (lambda s, y: _agree((2 * s - 1)[:, 2] > (2 * s - 1)[:, 0], y),
                                    lambda s, y: _agree(s[:, 2] > s[:, 0], y)),
}


@pytest.mark.parametrize("name", list(_BOTH_SIDES))
def test_a_comparison_of_two_maps_of_the_scores_compares_the_scores(name, monkeypatch):
    """Both sides the same monotone map (elementwise, or two entries of one softmax row, whose
    normaliser cancels): the comparisons, loss and gradient of the same decisions written on the
    scores, on the first call and on the re-runs after it."""
    batches = [(3 * _multiclass(seed, n=24, c=3)[0].float(), torch.randint(0, 2, (24,), generator=_gen(seed)))
               for seed in range(3)]
    _compared_as_written(*_BOTH_SIDES[name], batches, monkeypatch)


def test_a_map_with_a_domain_is_not_looked_through_on_both_sides():
    """``log(a) > log(b)`` is False where ``a`` is negative, where ``a > b`` may be True: compared
    as it is, so the hard bits are fn's decisions."""
    fn = lambda s, y: _agree(s[:, 1].log() > s[:, 0].log(), y)  # noqa: E731
    s, y = _multiclass(0, n=16, c=3)[0].float().abs() + 0.1, torch.randint(0, 2, (16,), generator=_gen(0))
    traced = from_metric(fn)
    comparisons = traced.comparisons(s, traced.prepare(s, y))
    torch.testing.assert_close(comparisons, s[:, 1].log() - s[:, 0].log())


def test_entries_of_different_softmax_rows_are_compared_as_probabilities():
    """Entries of two rows of a softmax have two normalisers: their order is not their logits',
    so they are compared as they are (the metric exact, the comparisons within a probability's range)."""
    fn = lambda s, y: _agree(s.softmax(1)[:8, 1] > s.softmax(1)[8:, 0], y[:8])  # noqa: E731
    s, y = 3 * _multiclass(0, n=16, c=3)[0].float(), torch.randint(0, 2, (16,), generator=_gen(0))
    traced = from_metric(fn)
    assert float(traced.metric(s, y)) == pytest.approx(float(fn(s, y)))
    comparisons = traced.comparisons(s, traced.prepare(s, y))
    torch.testing.assert_close(comparisons, s.softmax(1)[:8, 1] - s.softmax(1)[8:, 0])


def _replayed_ap(s, y):
    """AP with boolean indexing (a data-dependent shape): neither vmap nor the recorded tape can
    stand in for it, so each configuration is a call of it."""
    hits = y[s.argsort(descending=True)]
    positions = torch.arange(1, len(hits) + 1, dtype=torch.float32)[hits > 0]
    return (torch.arange(1, len(positions) + 1, dtype=torch.float32) / positions).mean()


class _Plain(uniloss.Decomposition):
    """A metric's comparisons and values alone: the engine's chain through ``evaluate``."""

    def __init__(self, metric):
        self.inner = metric

    def prepare(self, scores, target, generator=None):
        return self.inner.prepare(scores, target)

    def comparisons(self, scores, plan):
        return self.inner.comparisons(scores, plan)

    def best(self, plan):
        return self.inner.best(plan)

    def evaluate(self, bits, plan):
        return self.inner.evaluate(bits, plan)


class _APWithoutCounts(_Plain):
    """The built-in AP without its counts (``evaluate_zeros``) or margins: its chain goes through
    ``evaluate`` at ``chain_segments + 1`` points, segment-averaged, and its pull is per run."""

    def __init__(self):
        super().__init__(uniloss.AveragePrecision())

    def structure(self, plan):
        return uniloss.Structure(self.inner.structure(plan).runs)


@pytest.mark.parametrize("segments", [None, 4096])
def test_a_metric_replayed_per_configuration_takes_the_chain_at_chain_segments_points(segments):
    """Where fn is called once per configuration, the chain takes ``chain_segments + 1`` points
    (segment-averaged, as for a metric evaluated without counts), not all ``l + 1``: the loss and
    gradient of the built-in AP without its counts, a few hundred calls of fn where the exact chain
    took one per comparison, and the same value on a second call; with ``chain_segments`` at least
    ``l``, the exact chain of every point again."""
    from uniloss._limits import limits

    g = _gen(0)
    y = (torch.rand(64, generator=g) < 0.2).long()
    y[0] = 1
    s = torch.randn(64, generator=g) + 1.5 * y
    calls = []
    traced = from_metric(lambda a, b: calls.append(1) or _replayed_ap(a, b))
    with warnings.catch_warnings(), limits(**({} if segments is None else {"chain_segments": segments})):
        warnings.simplefilter("ignore")  # the replays' warning
        results = []
        for metric in (traced, traced, _APWithoutCounts()):
            x = s.clone().requires_grad_()
            calls.clear()
            loss = uniloss.UniLoss(metric, generator=_gen(0), pull_per="run")
            value = loss(x, y)
            value.backward()
            results.append((value.detach(), x.grad, len(calls), loss.last.bit_count))
    (first, g1, _, bits), (second, g2, count, _), (reference, g3, _, _) = results
    assert bits > 256
    torch.testing.assert_close((first, g1), (second, g2))
    torch.testing.assert_close((second, g2), (reference, g3))
    if segments is None:
        assert count <= 256 + 8  # the chain's 257 points and the hard configuration's few
    else:
        assert count > bits  # every point of the chain
    looped = from_metric(lambda a, b: calls.append(1) or _replayed_ap(a, b), batched="loop")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss = uniloss.UniLoss(looped, generator=_gen(0), pull_per="run")
        loss(s, y)
        calls.clear()
        loss(s, y)
    assert len(calls) > bits  # batched="loop", the check of the other modes: every point, by request


# --------------------------------------------------------------------------- what cannot be traced


def _item(s, y):
    return torch.tensor(float(s.max().item() > 0))


def _continuous(s, y):
    return s.softmax(1).max(1).values.mean()


def _rounding(s, y):
    return (s.round() == 1).float().mean()


def _cast(s, y):
    return (s.long() == y[:, None]).float().mean()


def _constant(s, y):
    return y.float().mean()


def _equality(s, y):
    return (s == s.max(1, keepdim=True).values).float()[torch.arange(len(y)), y].mean()


def _nested(s, y):
    return (torch.where(s > 0, s, 0.0).argmax(1) == y).float().mean()


def _sort_without_relevance(s, y):
    return (s.sort(dim=1).indices[:, -1] == y).float().mean() + (s[:, 0].argsort()[:2] == 0).float().mean() * 0


def _no_grad(s, y):
    with torch.no_grad():
        first = s[:, :2] + s[:, 1:]  # not a monotone map of one tensor: not looked through
    return (first.argmax(1) == y.clamp(max=1)).float().mean()


def _bucketized(s, y):
    return (torch.bucketize(s[:, 0], torch.tensor([-1.0, 0.0, 1.0])) == y).float().mean()


def _rounded(s, y):
    return (s[:, 0].round().clamp(0, 2) == y).float().mean()


@pytest.mark.parametrize("fn, match", [
    (_item, r"reads the scores' values as a Python value \(item\).*_item"),
    (_bucketized, r"applies `bucketize` to the scores.*`\(x\[\.\.\., None\] > b\).sum\(-1\)`"),
    (_rounded, r"applies `round` to the scores.*`lo \+ \(x\[\.\.\., None\] > torch.arange\(lo, hi\) \+ 0.5\).sum\(-1\)`"),
    (_continuous, r"_continuous at .*: its value depends on the scores other than through comparisons"),
    (_rounding, r"applies `round` to the scores"),
    (_cast, r"turns the scores into torch.int64 values with `long`"),
    (_constant, r"_constant at .*: its value does not depend on any discrete step"),
    (_equality, r"applies `__eq__` to the scores' values"),
    (_nested, r"already depend on another discrete step"),
    (_sort_without_relevance, r"no tensor to infer the best result from"),
])
def test_untraceable_steps_raise_naming_the_operation_and_the_line(fn, match):
    scores, target = _multiclass(0, n=8, c=3)
    with pytest.raises(TraceError, match=match) as info:
        from_metric(fn).metric(scores, target)
    message = str(info.value)
    assert "test_from_metric.py:" in message and "DecodedMetric" in message


def _sign_of_a_score_and_a_step(s, y):
    return torch.sign(s[:, 0] * (s[:, 1] > 0)).mean()


def test_the_sign_of_scores_masked_by_a_comparison_raises():
    scores, target = _multiclass(0, n=8, c=3)
    with pytest.raises(TraceError, match=r"takes the sign \(sign\) of values that depend on the scores and on "
                                         r"another discrete step"):
        from_metric(_sign_of_a_score_and_a_step).metric(scores, target)


def _directional(s, y):  # the share of predictions on the target's side of 0
    return (torch.sign(s) == torch.sign(y)).float().mean()


def test_the_sign_of_the_scores_is_two_comparisons_with_zero_per_element():
    s = torch.tensor([0.5, -2.0, 3.0, 0.0, -1.0, 0.7])
    y = torch.tensor([1.0, 1.0, -1.0, 0.0, -2.0, 0.0])  # the second and third: two flips from the best sign
    forms = [_directional, lambda s, y: (s.sgn() == y.sign()).float().mean(),  # sgn, and the method
             lambda s, y: (torch.sign(s.sigmoid() - 0.5) == torch.sign(y)).float().mean()]  # looked through
    for fn in forms:
        metric = from_metric(fn)
        plan = metric.prepare(s, y)
        assert float(metric.metric(s, y)) == pytest.approx(3 / 6)  # a tie of the scores counts as sign 0
        torch.testing.assert_close(metric.comparisons(s, y), torch.cat([s, -s]))  # s > 0, then s < 0
        best = metric.best(plan).reshape(2, -1)
        torch.testing.assert_close(best[0].float() - best[1].float(), torch.sign(y))  # neither bit for a 0
        assert float(metric.evaluate(metric.best(plan)[None], plan)) == 1.0
        assert "the sign of each element as two comparisons with 0" in metric.explain(s, y)
    g = torch.Generator().manual_seed(3)
    for _ in range(4):  # against a loop, ties of the scores with 0 included
        s, y = torch.randn(30, generator=g).round(decimals=1), torch.randn(30, generator=g)
        expected = sum((a > 0) - (a < 0) == (b > 0) - (b < 0) for a, b in zip(s.tolist(), y.tolist())) / 30
        assert float(from_metric(_directional).metric(s, y)) == pytest.approx(expected)


def test_a_sign_trains_toward_the_targets_side():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(64, generator=g)
    scores = (y + torch.randn(64, generator=g)).requires_grad_()
    loss = uniloss.UniLoss(from_metric(_directional))
    loss(scores, y).backward()
    wrong = torch.sign(scores.detach()) != torch.sign(y)
    assert bool(wrong.any()) and torch.isfinite(scores.grad).all()
    assert bool((-scores.grad[wrong] * y[wrong] > 0).all())  # a descent step moves each wrong one toward y's side


def _tutorial_accuracy(outputs, labels):  # the PyTorch CIFAR-10 tutorial's accuracy, as written there
    _, predicted = torch.max(outputs.data, 1)
    total = labels.size(0)
    correct = (predicted == labels).sum().item()
    return torch.tensor(correct / total)


def test_accuracy_through_data_is_accuracy_through_the_scores():
    # `.data` is the scores' values without their graph, as `.detach()`: looked through, so the
    # argmax's comparisons are the scores' and train them; the count read with .item() replays fn.
    scores, target = _multiclass(1)
    expected = sum(max(range(6), key=lambda c: row[c]) == label for row, label in zip(scores.tolist(), target.tolist()))
    grads = []
    for fn in (lambda s, y: (torch.max(s.data, 1)[1] == y).float().mean(), _tutorial_accuracy, accuracy):
        s = scores.clone().requires_grad_()
        loss_fn = uniloss.UniLoss(from_metric(fn))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="from_metric: fn reads the result of max")
            loss_fn(s, target).backward()
        assert float(loss_fn.last.metric) == pytest.approx(expected / 40)
        grads.append(s.grad)
    torch.testing.assert_close(grads[0], grads[2])
    torch.testing.assert_close(grads[1], grads[2])
    assert bool(grads[2].abs().sum() > 0)


def _accuracy_as_a_number(output, target):  # returns a Python float, as evaluation loops write it
    pred = output.argmax(dim=1)
    correct = pred.eq(target).sum().item()
    return correct / len(target)


def _top_k_transposed(k):  # the top k of each row as rows of k (as the PyTorch ImageNet example), in percent
    def fn(output, target):
        pred = output.topk(k, 1, True, True).indices.t()
        return pred.eq(target.view(1, -1).expand_as(pred)).float().sum().mul_(100.0 / target.size(0))
    return fn


def test_a_metric_returning_a_python_number_trains_as_the_tensor_form():
    # `correct / total` of a count read with .item(): the value a Python float (kept as a double),
    # the count carried through the division as a tensor (one batched replay, nothing to warn
    # about); the same loss and gradient as accuracy written in tensors
    scores, target = _multiclass(4)
    results = []
    for fn in (_accuracy_as_a_number, accuracy):
        s = scores.clone().requires_grad_()
        loss_fn = uniloss.UniLoss(from_metric(fn))
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            loss = loss_fn(s, target)
        loss.backward()
        results.append((loss.detach(), s.grad, loss_fn.last.metric, said))
    expected = float((scores.argmax(1) == target).double().mean())
    assert float(results[0][2]) == expected and results[0][2].dtype == torch.float64
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])
    assert bool(results[1][1].abs().sum() > 0)
    assert not [w for w in results[0][3] if "from_metric" in str(w.message)]  # its count batched: nothing to say
    text = from_metric(_accuracy_as_a_number).explain(scores, target)
    assert "fn returns a Python number (float)" in text
    assert "each value it reads with .item() or .tolist() carried" in text
    with pytest.raises(TraceError, match=r"to return a tensor or a Python number, but it returned str"):
        from_metric(lambda s, y: "0.5").metric(scores, target)
    for flag in (True, np.bool_(True)):  # a bool (Python's or NumPy's) is not a metric's value
        with pytest.raises(TraceError, match=r"but it returned (bool|bool_)"):
            from_metric(lambda s, y, flag=flag: flag).metric(scores, target)


def _python_arithmetic(s, y):  # ints and floats mixed as Python mixes them, reflected operands too
    c = (s.argmax(1) == y).sum().item()
    w = (s.argmax(1) == 0).sum().item()
    return ((3 * c - 7) // 2 % 5 + 1.5 * c / len(y) - abs(-w) + (2 - c) * 0.25 - 10 / (c + 1)) / (1 - 0.1 * -w)


def _precision_by_items(s, y):  # Python raises where nothing is predicted positive: fn's own fallback
    pred = s[:, 1] > s[:, 0]
    tp, fp = (pred & (y == 1)).sum().item(), (pred & (y != 1)).sum().item()
    try:
        return tp / (tp + fp)
    except ZeroDivisionError:
        return 0.0


def _branch_on_a_count(s, y):  # a branch on the number: each path batched on its own
    c = (s.argmax(1) == y).sum().item()
    return torch.tensor(c / len(y) if c > 3 else 0.0)


def _f1_with_zero_division_guards(s, y):  # per-class F1 as written by hand, guarded as scikit-learn's zero_division
    pred, total = s.argmax(1), 0.0
    for c in range(3):
        tp = ((pred == c) & (y == c)).sum().item()
        pp, ap = (pred == c).sum().item(), (y == c).sum().item()
        precision = tp / pp if pp > 0 else 0.0
        recall = tp / max(ap, 1)
        if not (precision or recall) or tp == 0 and pp != 0:
            continue
        total += 2 * precision * recall / (precision + recall)
    return total / 3


def _many_paths(s, y):  # a Python loop run as many times as a count: more paths than are batched
    c, k = (s.argmax(1) == y).sum().item(), 0
    while c >= 2:
        c, k = c - 2, k + 1
    return k / len(y) + c


def _f1_by_tolist(s, y):  # a confusion matrix's cells unpacked from .tolist()
    p = s.argmax(1) == 1
    tp, fp, fn, tn = torch.stack([(p & (y == 1)).sum(), (p & (y != 1)).sum(), (~p & (y == 1)).sum(),
                                  (~p & (y != 1)).sum()]).tolist()
    return 2 * tp / max(2 * tp + fp + fn, 1) + 0 * tn


def _recall_by_nested_tolist(s, y):  # hits per class from a 2-d .tolist(), summed in Python
    hits = ((s.argmax(1) == y)[:, None] & (y[:, None] == torch.arange(3))).reshape(-1, 3, 1).sum(0).tolist()
    counts = torch.bincount(y, minlength=3).tolist()
    return sum(h[0] / n for h, n in zip(hits, counts) if n) / 3


def _tensor_branch_and_item(s, y):  # a branch on a tensor beside a number: followed as on a number
    correct = (s.argmax(1) == y).sum()
    if correct < 9:
        return 0.0
    return correct.item() / len(y)


def _ints_past_int64(s, y):  # Python's ints are unbounded: int64 would wrap (at 23 wrong), fn itself there
    w = (s.argmax(1) != y).sum().item()
    return (len(y) - w) / len(y) - (w // 23) * 2 ** 62 * 2 / 1e19


def _int_division_past_2_53(s, y):  # Python divides two ints rounding once; float64 would round twice
    x = ((s.argmax(1) == y).sum() * 2 ** 49 + 1).item()  # read past 2**53 from 16 right
    return x / 3 / 2 ** 49


def _int_against_float_past_2_53(s, y):  # Python compares an int with a float exactly; float64 would not
    c = (s.argmax(1) == y).sum()
    x = (c * 2 ** 49 + 1).item()  # read past 2**53 from 16 right
    return (x > c.item() * 2.0 ** 49) * 0.5 + c.item() / len(y)


def _rounded_number(s, y):  # round() of a float to digits: fn replayed one configuration at a time
    return round((s.argmax(1) == y).sum().item() / len(y), 3)


def _rounded_to_ints(s, y):  # round(), math.floor/ceil/trunc and an int's power: Python ints, batched
    c = (s.argmax(1) == y).sum().item()
    share = c / len(y)
    return (round(share * 10) + math.floor(share * 7.5) - math.ceil(-share * 3.3) + math.trunc(-share * 2.5)
            + round(c / 2) + c ** 2 / len(y) ** 2 + round(c, 1) + round(c > 5) + c ** 11 / 24 ** 11) / 30


def _rounded_where_python_raises(s, y):  # round() of inf or NaN, a power past int64: fn itself there
    c = (s.argmax(1) == y).sum().item()
    try:
        return round(c * (math.inf if c < 3 else 1.0)) / 100 + c ** 14 / 1e19
    except (ValueError, OverflowError):
        return -c / len(y)


def _swallowed(s, y):  # the batched replay's number escapes into math.sqrt, and fn catches it
    c = (s.argmax(1) == y).sum().item()
    try:
        r = math.sqrt(c)
    except Exception:
        r = -1.0
    return r / len(y)


def _recall_per_class_by_numpy(s, y):  # NumPy's mean of Python numbers (it asks them for a dtype first)
    pred = s.argmax(1)
    return np.mean([((pred == c) & (y == c)).sum().item() / max((y == c).sum().item(), 1) for c in range(3)])


def _hits_as_a_tensor_of_a_list(s, y):  # torch.tensor of a list of numbers, then tensor arithmetic
    pred = s.argmax(1)
    return torch.tensor([((pred == c) & (y == c)).sum().item() for c in range(3)] + [0.5]).mean() / len(y)


def _bools_read_with_item(s, y):  # Python bools: torch.tensor of them is bool, their sum an int
    every = (s.argmax(1) == y).all().item()
    most = ((s.argmax(1) == y).sum() > len(y) // 2).item()
    return (~torch.tensor(every)).float() * 0.25 + torch.tensor([most, True]).float().mean() + \
        torch.tensor((most + most) / 4)


@pytest.mark.parametrize("fn, batched", [(_python_arithmetic, True), (_precision_by_items, True),
                                         (_bools_read_with_item, True),
                                         (_recall_per_class_by_numpy, True), (_hits_as_a_tensor_of_a_list, True),
                                         (_branch_on_a_count, True), (_f1_with_zero_division_guards, True),
                                         (_many_paths, True), (_f1_by_tolist, True), (_recall_by_nested_tolist, True),
                                         (_tensor_branch_and_item, True), (_rounded_to_ints, True),
                                         (_rounded_where_python_raises, True), (_ints_past_int64, True),
                                         (_int_division_past_2_53, True), (_int_against_float_past_2_53, True),
                                         (_rounded_number, False),
                                         (_swallowed, False),
                                         (_accuracy_as_a_number, True), (_tutorial_accuracy, True)],
                         ids=lambda x: getattr(x, "__name__", str(x)))
def test_numbers_read_with_item_batch_as_python_computes_them(fn, batched):
    # The numbers fn reads with .item() carried as tensors through Python's arithmetic: the values
    # at every configuration those of fn called at each (batched="loop"), to the bit, a divisor of
    # 0 where Python raises included, and branches on the numbers (each path batched, the paths
    # beyond the first few replayed one at a time), round() and math.floor to Python ints (where
    # Python raises, or an int passes int64 or 2**53 in a division, fn itself); round() to digits,
    # or a number that escapes into math.sqrt even where fn catches that, leaves fn replayed one
    # configuration at a time, as exact
    g = torch.Generator().manual_seed(2)
    target = torch.randint(0, 3, (24,), generator=g)
    scores = torch.randn(24, 3, generator=g) + 2 * torch.nn.functional.one_hot(target, 3)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="from_metric: fn reads")
        metric, loop = from_metric(fn), from_metric(fn, batched="loop")
        plan, loop_plan = metric.prepare(scores, target), loop.prepare(scores, target)
        bits = torch.rand(40, plan.num_bits, generator=g) < torch.linspace(0, 1, 40)[:, None]
        bits[0], bits[-1] = False, True  # every comparison wrong (nothing predicted right), every one right
        got, expected = metric.evaluate(bits, plan), loop.evaluate(bits, loop_plan)
        text = metric.explain(scores, target)
    assert torch.equal(got.double(), expected.double())
    assert ("each value it reads with .item() or .tolist() carried as a tensor" in text) == batched
    x = scores.clone().requires_grad_()
    loss_fn = uniloss.UniLoss(metric)
    loss_fn(x, target).backward()
    assert float(loss_fn.last.metric) == pytest.approx(float(fn(scores, target))) and torch.isfinite(x.grad).all()


def test_the_warning_names_what_stopped_the_batched_replay():
    # round() of a float to digits, or math.sqrt (which asks for float()), even where fn catches that:
    # the warning that fn is replayed one configuration at a time says which use it was
    g = torch.Generator().manual_seed(2)
    target = torch.randint(0, 3, (24,), generator=g)
    scores = torch.randn(24, 3, generator=g) + 2 * torch.nn.functional.one_hot(target, 3)
    for fn, use in ((_rounded_number, "`round()` with digits"), (_swallowed, "`float()`")):
        with pytest.warns(UserWarning, match="one at a time") as said:
            uniloss.UniLoss(from_metric(fn))(scores.clone().requires_grad_(), target)
        assert any(str(w.message).endswith(f"batched replay stopped at a number read with .item() or .tolist() used in {use})")
                   for w in said)


def _guarded_for_some_targets(s, y):  # a truth value read on some calls only (the target decides)
    c = (s.argmax(1) == y).sum().item()
    if int(y[0]) == 0:
        return c / len(y)
    return c / len(y) if c > 3 else 0.0


def test_a_structure_without_branches_on_numbers_skips_the_reference_replay_until_one_is_read():
    # A structure whose numbers were read without a branch replays them batched without a
    # reference configuration; a later call that reads a truth value redoes the replay with one:
    # the values are fn's at every configuration on both calls, to the bit
    g = torch.Generator().manual_seed(5)
    target = torch.randint(1, 3, (24,), generator=g)
    scores = torch.randn(24, 3, generator=g) + 2 * torch.nn.functional.one_hot(target, 3)
    calls = [0]

    def counted(s, y):
        calls[0] += 1
        return _guarded_for_some_targets(s, y)

    metric, loop = from_metric(counted), from_metric(_guarded_for_some_targets, batched="loop")
    straight, replays = [], []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="from_metric: fn reads")
        for first in (0, 1):  # the first label decides whether fn branches on the count
            y = target.clone()
            y[0] = first
            plan, loop_plan = metric.prepare(scores, y), loop.prepare(scores, y)
            bits = torch.rand(40, plan.num_bits, generator=g) < torch.linspace(0, 1, 40)[:, None]
            calls[0] = 0
            assert torch.equal(metric.evaluate(bits, plan).double(), loop.evaluate(bits, loop_plan).double())
            straight.append(dict(metric._straight))
            replays.append(calls[0])
    assert True in straight[0].values() and replays[0] == 1  # no truth value read: one batched replay alone
    assert straight[1] != straight[0] and False in straight[1].values()
    assert 3 <= replays[1] < 10  # the straight replay, then a reference and a batched replay a path


def test_a_numpy_metric_evaluates_as_the_zoos_form():
    # scikit-learn's macro-F1 on the argmax: its comparisons and its value at every configuration
    # are zoo.macro_f1's (the same layout), a NumPy float turned into a tensor at each replay
    skm = pytest.importorskip("sklearn.metrics")

    def sk_macro_f1(output, target):
        return skm.f1_score(target.numpy(), output.argmax(1).numpy(), average="macro", labels=list(range(4)),
                            zero_division=0)

    g = torch.Generator().manual_seed(0)
    scores, target = torch.randn(40, 4, generator=g), torch.randint(0, 4, (40,), generator=g)
    traced, zoo_f1 = from_metric(sk_macro_f1), zoo.macro_f1(4)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="from_metric: fn")
        plan, zoo_plan = traced.prepare(scores, target), zoo_f1.prepare(scores, target)
        assert torch.equal(traced.comparisons(scores, plan), zoo_f1.comparisons(scores, zoo_plan))
        bits = torch.rand(12, plan.num_bits, generator=g) < 0.7
        bits[0] = traced.best(plan)
        torch.testing.assert_close(traced.evaluate(bits, plan), zoo_f1.evaluate(bits, zoo_plan).double())
        assert float(traced.metric(scores, target)) == pytest.approx(sk_macro_f1(scores, target), abs=1e-12)


def test_a_numpy_metric_of_the_scores_themselves_names_the_ways_out():
    # roc_auc_score of the scores' values cannot be traced: the error names the zoo's form and
    # the ranks as a step's output, which is exact (fn replayed at each configuration)
    skm = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(1)
    scores, target = torch.randn(32, generator=g), (torch.rand(32, generator=g) < 0.3).long()
    with pytest.raises(TraceError, match=r"scores' values as a Python value \(numpy\).*uniloss.zoo.auroc\(\).*"
                                         r"s.argsort\(\).argsort\(\).numpy\(\)"):
        from_metric(lambda s, y: skm.roc_auc_score(y.numpy(), s.detach().numpy())).metric(scores, target)
    by_ranks = from_metric(lambda s, y: skm.roc_auc_score(y.numpy(), s.argsort().argsort().numpy()))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="from_metric: fn reads")
        value = float(by_ranks.metric(scores, target))
    assert value == pytest.approx(skm.roc_auc_score(target.numpy(), scores.numpy()), abs=1e-12)


def test_top_k_from_counts_is_top_k_from_bits():
    # a top-k step decodes from each row's count of classes above its label (the chain's counts)
    # as from bits holding that count; top-k accuracy so written is zoo.top_k_accuracy's
    scores, target = _multiclass(5)
    for fn, k in ((_top_k_transposed(1), 1), (top3_accuracy, 3), (_top_k_transposed(2), 2)):
        traced = from_metric(fn)
        plan = traced.prepare(scores, target)
        assert plan.width == 5
        zeros = torch.randint(0, 6, (9, plan.num_bits // 5), generator=torch.Generator().manual_seed(k)).float()
        bits = (torch.arange(5)[None, None, :] >= zeros[..., None]).reshape(9, -1)  # the 0-bits first in each run
        torch.testing.assert_close(traced.evaluate_zeros(zeros, plan), traced.evaluate(bits, plan))
        hand = zoo.top_k_accuracy(k)
        scale = 100.0 if fn is not top3_accuracy else 1.0
        hand_plan = hand.prepare(scores, target)
        assert torch.equal(traced.comparisons(scores, plan), hand.comparisons(scores, hand_plan))
        torch.testing.assert_close(traced.evaluate(bits, plan), scale * hand.evaluate(bits, hand_plan), check_dtype=False)


def _accuracy_by_lists(s, y):  # labels compared as Python lists: fn replayed one configuration at a time
    return sum(int(p == q) for p, q in zip(s.argmax(1).tolist(), y.tolist())) / len(y)


def test_from_metric_warnings_point_at_the_users_loss_call():
    scores, target = _multiclass(2)
    calls = [(lambda: uniloss.UniLoss(from_metric(lambda s, y: 1 - (s.argmax(1) == y).float().mean())),
              "fn is lowest where a row's output is its label"),
             (lambda: uniloss.UniLoss(from_metric(_accuracy_by_lists)), "as a Python value")]
    for make, match in calls:
        loss_fn = make()
        with pytest.warns(UserWarning, match=match) as said:
            loss_fn(scores.clone().requires_grad_(), target)
        assert {w.filename for w in said if match in str(w.message)} == {__file__}

# Binary accuracy as tutorials write it: the rounded probability against the label.
_ROUNDED = {
    "round": lambda s, y: (torch.round(torch.sigmoid(s)) == y).float().mean(),
    "method": lambda s, y: (s.sigmoid().float().round() == y).float().mean(),  # looked through .float()
    "expit": lambda s, y: (torch.special.expit(s).round() == y).float().mean(),
    "softmax": lambda s, y: (torch.softmax(torch.stack([-s, s], 1) / 2, 1)[:, 1].round() == y).float().mean(),
    # its float output in arithmetic, which a bool mask would refuse: 1 - p
    "specificity": lambda s, y: ((1 - s.sigmoid().round()) * (1 - y)).sum() / (1 - y).sum(),
}
_AS_COMPARISONS = {"specificity": lambda s, y: ((s <= 0) & (y == 0)).sum() / (y == 0).sum()}


@pytest.mark.parametrize("form", sorted(_ROUNDED))
def test_the_round_of_a_probability_is_one_comparison_per_element(form):
    fn = _ROUNDED[form]
    as_comparisons = _AS_COMPARISONS.get(form, lambda s, y: ((s > 0) == (y == 1)).float().mean())
    g = _gen(5)
    for _ in range(3):  # against a loop, ties of the scores with 0 included (0.5 rounds to 0)
        s, y = torch.randn(40, generator=g, dtype=torch.float64).round(decimals=1), (torch.rand(40, generator=g) < 0.4).long()
        right = [(a > 0) == (b == 1) for a, b in zip(s.tolist(), y.tolist())]
        expected = sum(right) / 40 if form not in _AS_COMPARISONS else \
            sum(r for r, b in zip(right, y.tolist()) if b == 0) / (40 - sum(y.tolist()))
        assert float(from_metric(fn).metric(s, y)) == pytest.approx(expected)
    s, y = _binary(2)
    metric = from_metric(fn)
    torch.testing.assert_close(metric.comparisons(s, y), s)  # in the scores' units, the sigmoid looked through
    assert "one comparison per element (p > 0.5, as 0. or 1.)" in metric.explain(s, y)
    # the same loss, value and gradient, as the metric written with `s > 0`
    grads = []
    for f in (fn, as_comparisons):
        scores = s.clone().requires_grad_()
        loss_fn = uniloss.UniLoss(from_metric(f))
        loss_fn(scores, y).backward()
        grads.append((scores.grad, loss_fn.last.metric))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    assert float(grads[0][1]) == pytest.approx(float(grads[1][1]))
    assert bool(grads[0][0].abs().sum() > 0)


@pytest.mark.parametrize("value, strict", [(0.0, True), (1.0, False)])
def test_heaviside_with_a_constant_zero_or_one_is_a_comparison_with_zero(value, strict):
    fn = lambda s, y: (torch.heaviside(s, torch.tensor(value, dtype=s.dtype)) == y).float().mean()
    s = torch.tensor([0.5, -2.0, 0.0, 0.0, -1.0, 0.7], dtype=torch.float64)
    y = torch.tensor([1, 1, 0, 1, 0, 0])
    expected = sum((a > 0 if strict else a >= 0) == (b == 1) for a, b in zip(s.tolist(), y.tolist())) / 6
    metric = from_metric(fn)
    assert float(metric.metric(s, y)) == pytest.approx(expected)
    written = from_metric(lambda s, y: ((s > 0 if strict else s >= 0) == (y == 1)).float().mean())
    torch.testing.assert_close(metric.comparisons(s, y), written.comparisons(s, y))  # (s >= 0: -s, negated)
    torch.testing.assert_close(metric.comparisons(s, y), s if strict else -s)
    plan = metric.prepare(s, y)
    assert bool((metric.best(plan) == written.best(written.prepare(s, y))).all())
    assert float(metric.evaluate(metric.best(plan)[None], plan)) == 1.0


@pytest.mark.parametrize("fn, match", [
    (lambda s, y: (s.round() == y).float().mean(), r"applies `round` to the scores.*sigmoid's or a softmax's"),
    (lambda s, y: (s.sigmoid().round(decimals=1) == y).float().mean(), r"applies `round` to the scores"),
    (lambda s, y: (torch.tanh(s).round() == y).float().mean(), r"applies `round` to the scores"),
    (lambda s, y: (torch.heaviside(s, torch.tensor(0.5, dtype=s.dtype)) == y).float().mean(), r"`heaviside`"),
    (lambda s, y: (s.sigmoid().round_() == y).float().mean(), r"`round_` to the scores in place; write it out of "),
    (lambda s, y: (s.clone().sign_() == y).float().mean(), r"`sign_` to the scores in place"),
    (lambda s, y: ((s.sigmoid() + 0.5).floor_() == y).float().mean(), r"applies `floor` to the scores, a discrete"),
], ids=["unbounded", "decimals", "tanh", "heaviside-half", "round_", "sign_", "floor_"])
def test_rounding_that_is_not_one_comparison_raises(fn, match):
    s, y = _binary(0)
    with pytest.raises(TraceError, match=match):
        from_metric(fn).metric(s, y)

def _kendall_b(s, y):  # Kendall's tau-b as people write it: the signs of all pairs
    a, b = torch.sign(s[:, None] - s[None, :]), torch.sign(y[:, None] - y[None, :])
    return (a * b).sum() / (a.abs().sum() * b.abs().sum()).sqrt()


def test_kendalls_tau_by_torch_sign_is_scipys_and_the_two_comparison_forms_loss():
    from scipy.stats import kendalltau

    g = torch.Generator().manual_seed(0)
    scores, target = torch.randn(24, generator=g), torch.randint(0, 3, (24,), generator=g).float()
    scores[1] = scores[0]  # a tie in the scores: a pair neither concordant nor discordant
    by_sign = from_metric(_kendall_b)
    assert float(by_sign.metric(scores, target)) == pytest.approx(kendalltau(scores, target).statistic, abs=1e-6)
    tau_a = lambda s, y: (torch.sign(s[:, None] - s[None, :]) * torch.sign(y[:, None] - y[None, :])).sum() / (24 * 23)
    losses = []
    for fn in (tau_a, _kendall):  # torch.sign, one step; and (x > 0) - (x < 0), two steps: the same loss
        s = scores.clone().requires_grad_()
        value = uniloss.UniLoss(from_metric(fn))(s, target)
        value.backward()
        losses.append((value.detach(), s.grad))
    torch.testing.assert_close(losses[0][0], losses[1][0])
    torch.testing.assert_close(losses[0][1], losses[1][1])


def _kendall(s, y):  # tau-a: sign(x) written as two comparisons
    def sign(x):
        return (x > 0).float() - (x < 0).float()

    n = s.numel()
    return (sign(s[:, None] - s[None, :]) * sign(y[:, None] - y[None, :]).float()).sum() / (n * (n - 1))


def test_kendalls_tau_with_sign_as_two_comparisons_is_its_value_and_trains():
    g = torch.Generator().manual_seed(0)
    scores, target = torch.randn(24, generator=g), torch.randint(0, 3, (24,), generator=g)
    scores[1] = scores[0]  # a tie in the scores: a pair counted neither concordant nor discordant
    concordant = sum((float(scores[i] - scores[j]) * float(target[i] - target[j]) > 0) -
                     (float(scores[i] - scores[j]) * float(target[i] - target[j]) < 0)
                     for i in range(24) for j in range(24) if i != j)
    loss = uniloss.UniLoss(from_metric(_kendall))
    s = scores.clone().requires_grad_()
    loss(s, target).backward()
    assert float(loss.last.metric) == pytest.approx(concordant / (24 * 23), abs=1e-6)
    centred = target.float() - target.float().mean()  # a descent step raises the higher grades' scores
    assert torch.isfinite(s.grad).all() and float((-s.grad * centred).sum()) > 0


def _spearman(s, y):  # Spearman's rho: the correlation of the ranks (no ties)
    r = s.argsort().argsort().float()
    q = y.argsort().argsort().float()
    r, q = r - r.mean(), q - q.mean()
    return (r * q).sum() / (r.norm() * q.norm())


def test_a_regression_target_with_negative_values_ranks_the_scores():
    from scipy.stats import spearmanr

    g = torch.Generator().manual_seed(0)
    target = torch.randn(24, generator=g)  # a regression target: negative values too, only its order counts
    scores = target + torch.randn(24, generator=g)
    loss = uniloss.UniLoss(from_metric(_spearman))
    s = scores.clone().requires_grad_()
    loss(s, target).backward()
    assert float(loss.last.metric) == pytest.approx(spearmanr(scores.numpy(), target.numpy()).statistic, abs=1e-6)
    centred = target - target.mean()  # a descent step raises the scores of the higher targets
    assert torch.isfinite(s.grad).all() and float((-s.grad * centred).sum()) > 0
    metric = loss.decomposition
    plan = metric.prepare(scores, target)
    assert float(metric.evaluate(metric.best(plan)[None], plan)) == pytest.approx(1.0)  # the target's order


def _ap_of_signed_labels(s, y):  # AP by argsort, on -1/+1 labels
    relevant = (y[s.argsort(descending=True)] > 0).float()
    hits = relevant.cumsum(0)
    return (hits / torch.arange(1, len(s) + 1) * relevant).sum() / relevant.sum()


def test_a_ranking_of_minus_one_plus_one_labels_is_a_binary_ranking():
    g = torch.Generator().manual_seed(2)
    target = torch.where(torch.rand(40, generator=g) < 0.3, 1, -1)
    scores = torch.randn(40, generator=g) + target
    metric = from_metric(_ap_of_signed_labels)
    loss = uniloss.UniLoss(metric)
    loss(scores.clone().requires_grad_(), target)
    assert float(loss.last.metric) == pytest.approx(skm.average_precision_score(target > 0, scores), abs=1e-6)
    plan = metric.prepare(scores, target)
    assert plan.sites[0].binary and plan.sites[0].num_bits == int((target > 0).sum() * (target < 0).sum())
    assert float(metric.evaluate(metric.best(plan)[None], plan)) == pytest.approx(1.0)


def test_the_rewrites_the_errors_suggest_are_the_same_metric_and_train():
    cuts = torch.tensor([-1.0, 0.0, 1.0])
    g = torch.Generator().manual_seed(4)
    scores, target = 2 * torch.randn(60, generator=g), torch.randint(0, 4, (60,), generator=g)
    rewrites = [(lambda s, y: (torch.bucketize(s, cuts) == y).float().mean(),
                 lambda s, y: ((s[..., None] > cuts).sum(-1) == y).float().mean()),
                (lambda s, y: (torch.bucketize(s, cuts, right=True) == y).float().mean(),
                 lambda s, y: ((s[..., None] >= cuts).sum(-1) == y).float().mean()),
                (lambda s, y: (s.round().clamp(0, 3) == y).float().mean(),
                 lambda s, y: (0 + (s[..., None] > torch.arange(0, 3) + 0.5).sum(-1) == y).float().mean())]
    for written, rewritten in rewrites:
        assert float(rewritten(scores, target)) == float(written(scores, target))
        loss = uniloss.UniLoss(from_metric(rewritten))
        x = scores.clone().requires_grad_()
        loss(x, target).backward()
        assert float(loss.last.metric) == pytest.approx(float(written(scores, target)))
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_a_step_without_gradient_path_raises():
    scores, target = _multiclass(0, n=8, c=3)
    with pytest.raises(TraceError, match="without a gradient path"):
        uniloss.UniLoss(from_metric(_no_grad), interpolation="anchors")(scores.clone().requires_grad_(), target)


def test_an_error_rate_without_higher_is_better_false_is_warned_about():
    """fn lowest wherever a row takes its label: an error rate passed as a score, which probing
    would train away from the labels without a word."""
    s, y = _multiclass(0, c=4)

    def error(scores, target):
        return (scores.argmax(1) != target).float().mean()

    with pytest.warns(UserWarning, match="Pass higher_is_better=False for an error rate"):
        from_metric(error).prepare(s, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_metric(error, higher_is_better=False).prepare(s, y)
        from_metric(lambda a, b: (a.argmax(1) == b).float().mean()).prepare(s, y)


@pytest.mark.filterwarnings("ignore:from_metric.*fn is lowest where a row")  # labels not best by design
def test_probing_beyond_the_limit_raises():
    def shifted(scores, target):  # logsumexp, not a sum: the probes replay fn, one configuration each
        return (scores.argmax(1) == (target + 1) % 3).float().logsumexp(0)

    s, y = _multiclass(0, c=3)
    with pytest.raises(TraceError, match="probe_limit=10"):
        from_metric(shifted, probe_limit=10).metric(s, y)


@pytest.mark.filterwarnings("ignore:from_metric.*fn is lowest where a row")  # labels not best by design
def test_probes_through_the_sums_replay_a_few_configurations_whatever_the_limit(monkeypatch):
    def shifted(scores, target):  # a mean: each probe's change goes through the sum, fn replayed for a check
        return (scores.argmax(1) == (target + 1) % 3).float().mean()

    s, y = _multiclass(0, n=40, c=3)
    monkeypatch.setattr(traced, "_PROBES_CUT", 0)  # 121 configurations of 40 rows: taken through the sums at any size
    replayed = []
    values = traced.TracedMetric._values
    monkeypatch.setattr(traced.TracedMetric, "_values", lambda self, plan, payloads, sites: replayed.append(
        next(iter(payloads.values())).shape[0]) or values(self, plan, payloads, sites))
    metric = from_metric(shifted, probe_limit=10)
    loss = uniloss.UniLoss(metric)
    loss(s.clone().requires_grad_(), y)
    assert max(replayed) <= 2 * 32 + 1  # the first call's check: 120 probes and the current output before
    replayed.clear()
    loss(s.clone().requires_grad_(), y)
    assert replayed == [] and float(loss.last.metric) == pytest.approx(float(shifted(s, y)))
    torch.testing.assert_close(metric.best(metric.prepare(s, y)).reshape(40, 2), torch.ones(40, 2, dtype=torch.bool))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(fn=3), TypeError, "Expected `fn` to be callable"),
    (dict(fn=accuracy, batched="x"), ValueError, "Expected `batched`"),
    (dict(fn=accuracy, higher_is_better=1), TypeError, "Expected `higher_is_better` to be a bool"),
    (dict(fn=accuracy, probe_limit=-1), ValueError, "probe_limit"),
])
def test_bad_arguments_raise_naming_them(kwargs, error, match):
    with pytest.raises(error, match=match):
        from_metric(**kwargs)


def test_public_names_have_docstrings_and_examples():
    for obj in (uniloss.from_metric, uniloss.TracedMetric.explain):
        assert ">>>" in obj.__doc__
    assert uniloss.TracedMetric.__doc__ and uniloss.TraceError.__doc__


# --------------------------------------------------------------------------- it trains


def _blobs(seed, n=256, d=8, c=4):
    centres = torch.randn(c, d, generator=_gen(100)) * 0.7  # the same task for every split
    g = _gen(seed)
    y = torch.randint(0, c, (n,), generator=g)
    return centres[y] + torch.randn(n, d, generator=g), y


def _imbalanced(seed, n=512, d=8):
    direction = torch.randn(d, generator=_gen(100)) * 0.4
    g = _gen(seed)
    y = (torch.rand(n, generator=g) < 0.15).long()
    return torch.randn(n, d, generator=g) + y[:, None] * direction, y


@pytest.mark.parametrize("fn, data, out", [
    (accuracy, _blobs, 4),
    (average_precision, _imbalanced, 1),
    (f1_at_zero, _imbalanced, 1),
])
def test_a_small_model_trained_with_the_traced_metric_improves_it(fn, data, out):
    x, y = data(0)
    xt, yt = data(1)
    torch.manual_seed(0)
    model = torch.nn.Linear(x.shape[1], out)
    with torch.no_grad():
        model.bias.fill_(-1.0 if out == 1 else 0.0)  # F1 starts from predicting (almost) nothing

    def scores(inputs):
        s = model(inputs)
        return s.reshape(-1) if out == 1 else s

    metric = from_metric(fn)
    loss_fn = uniloss.UniLoss(metric, generator=_gen(0), interpolation="anchors")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with torch.no_grad():
        before = float(metric.metric(scores(xt), yt))
    g = _gen(1)
    for _ in range(6):
        for idx in torch.randperm(len(y), generator=g).split(64):
            loss = loss_fn(scores(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        after = float(metric.metric(scores(xt), yt))
    assert after > before + 0.1, (before, after)


def test_a_step_repeated_on_the_same_scores_is_compared_once():
    def precision(s, y):
        pred = s > 0
        return (pred & (y == 1)).sum() / pred.sum().clamp_min(1)

    def recall(s, y):
        pred = s > 0
        return (pred & (y == 1)).sum() / (y == 1).sum()

    def f1_of_helpers(s, y):  # two helpers each threshold the scores
        p, r = precision(s, y), recall(s, y)
        return 2 * p * r / (p + r).clamp_min(1e-12)

    scores, target = _binary(11)
    traced = from_metric(f1_of_helpers)
    plan = traced.prepare(scores, target)
    assert torch.equal(traced.comparisons(scores, plan), zoo.f_beta(1.0).comparisons(scores, target))
    assert_exact_decomposition(traced, scores, target, f1_of_helpers, atol=1e-6)
    assert "the same step as gt" in traced.explain(scores, target)


def test_rankings_per_row_are_queries():
    """Scores ``[Q, n]`` sorted along dim 1 with a relevance ``[Q, n]``: one query per row, the
    general Ranking plan (graded relevance), the layout of zoo.ndcg_at_k with query ids."""
    def ndcg_rows(scores, relevance, k=4):
        top = scores.argsort(dim=1, descending=True)[:, :k]
        discount = 1.0 / torch.log2(torch.arange(k, dtype=torch.float64) + 2)
        dcg = (relevance.gather(1, top).double() * discount).sum(1)
        ideal = (relevance.double().sort(dim=1, descending=True).values[:, :k] * discount).sum(1)
        return (dcg / ideal).mean()

    g = _gen(12)
    relevance = torch.randint(0, 3, (5, 9), generator=g)
    relevance[:, 0] = 2
    scores = torch.randn(5, 9, generator=g, dtype=torch.float64) + 0.4 * relevance
    traced = from_metric(ndcg_rows)
    assert_exact_decomposition(traced, scores, relevance, ndcg_rows, atol=1e-9)
    query = torch.arange(5).repeat_interleave(9)
    target = uniloss.decoders.RankingTarget(relevance.reshape(-1), query)
    hand = zoo.ndcg_at_k(4)
    assert torch.equal(traced.comparisons(scores, traced.prepare(scores, relevance)),
                       hand.comparisons(scores.reshape(-1), hand.prepare(scores.reshape(-1), target)))
    assert float(traced.metric(scores, relevance)) == pytest.approx(float(hand.metric(scores.reshape(-1), target)))


def test_binary_ranking_decodes_as_the_ranking_decoder():
    """The two-grade fast path decodes every configuration as decoders.Ranking does."""
    scores, target = _binary(13, n=30)
    plan = from_metric(average_precision).prepare(scores, target)
    site = plan.sites[0]
    decoder = uniloss.decoders.Ranking("relevance")
    ranking_plan = decoder.prepare(scores, target)
    bits = torch.rand(16, plan.num_bits, generator=_gen(2)) < 0.5
    assert torch.equal(site.decode(bits)[1], decoder.decode(bits, ranking_plan))


# --------------------------------------------------------------------------- later calls: re-run fn, replay the tape


def _torchmetrics_cases():
    tm = pytest.importorskip("torchmetrics")
    from torchmetrics.functional.classification import (binary_average_precision, binary_f1_score,
                                                        multiclass_accuracy)
    from torchmetrics.functional.retrieval import retrieval_normalized_dcg

    def mc(seed):
        s, y = _multiclass(seed, n=64, c=5)
        return s.float(), y

    def binary(seed):
        s, y = _binary(seed, n=64)
        return s.float(), y

    def graded(seed):
        s, r = _graded(seed)
        return s.float(), r

    del tm
    return {
        "tm_multiclass_accuracy_micro": (functools.partial(multiclass_accuracy, num_classes=5, average="micro"), mc),
        "tm_multiclass_accuracy_macro": (functools.partial(multiclass_accuracy, num_classes=5), mc),
        "tm_binary_average_precision": (binary_average_precision, binary),
        "tm_binary_f1_score": (binary_f1_score, binary),
        "tm_retrieval_normalized_dcg": (functools.partial(retrieval_normalized_dcg, top_k=5), graded),
    }


def _all_cases():
    cases = {name: (fn, data) for name, (fn, _, data, _) in CASES.items()}
    try:
        cases.update(_torchmetrics_cases())
    except pytest.skip.Exception:
        pass
    return cases


def _same_decomposition(a, b, scores, target, seed):
    """Two TracedMetrics of one fn give the same comparisons, best bits, values and loss."""
    pa, pb = a.prepare(scores, target), b.prepare(scores, target)
    assert torch.equal(a.comparisons(scores, pa), b.comparisons(scores, pb))
    assert torch.equal(a.best(pa), b.best(pb))
    bits = torch.rand(7, pa.num_bits, generator=_gen(seed)) < 0.5
    assert torch.equal(a.evaluate(bits, pa), b.evaluate(bits, pb))
    grads = []
    for metric in (a, b):
        x = scores.clone().requires_grad_()
        loss = uniloss.UniLoss(metric, generator=_gen(seed), interpolation="anchors")(x, target)
        loss.backward()
        grads.append((loss.detach(), x.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


@pytest.mark.parametrize("name", sorted(_all_cases()))
def test_later_calls_rerun_fn_without_tracing_and_match_a_fresh_trace(name, monkeypatch):
    """After the first call of an input shape, fn runs under a mode that only checks it takes the
    recorded operations; the discrete steps, comparisons, tape and loss are those a fresh trace
    finds, bit for bit."""
    fn, data = _all_cases()[name]
    traced = from_metric(fn)
    traced.prepare(*data(0))  # the first call traces
    traced.metric(*data(0))  # so does the first under no_grad
    traces = []
    full = uniloss.TracedMetric._full_trace
    monkeypatch.setattr(uniloss.TracedMetric, "_full_trace", lambda self, *a: traces.append(1) or full(self, *a))
    for seed in (1, 2, 3):
        scores, target = data(seed)
        fresh = from_metric(fn)
        _same_decomposition(traced, fresh, scores, target, seed)
        assert float(traced.metric(scores, target)) == pytest.approx(float(fn(scores, target)), abs=1e-6)
    assert len(traces) == 3  # the fresh metrics only: `traced` re-ran fn


def test_a_branch_that_goes_the_other_way_is_traced_again(monkeypatch):
    """Python control flow on the target (not on discrete results) may change from call to call:
    a re-run that meets other operations, other arguments or other shapes traces fn again."""
    def branching(s, y):
        pred = s.argmax(1)
        if int(y.max()) >= 2:  # a Python read of the target, not of a discrete result
            return (pred == y).float().mean()
        return (pred != y).float().mean()

    def positives_only(s, y):  # the shapes depend on the target's values
        keep = (y > 0).nonzero().reshape(-1)
        return (s[keep].argmax(1) == y[keep]).float().mean()

    for fn in (branching, positives_only):
        traced = from_metric(fn)
        traces = []
        full = uniloss.TracedMetric._full_trace
        monkeypatch.setattr(uniloss.TracedMetric, "_full_trace", lambda self, *a: traces.append(1) or full(self, *a))
        for seed in range(6):
            s, y = _multiclass(seed, n=12, c=3)
            y = y.clamp(max=1) if seed % 2 else y  # the branch alternates
            y[0] = 1 if seed % 2 else 2
            y[1 + seed % 3:] = y[1 + seed % 3:]  # different numbers of positives
            assert float(traced.metric(s, y)) == pytest.approx(float(fn(s, y)), abs=1e-9)
            x = s.clone().requires_grad_()
            uniloss.UniLoss(traced, generator=_gen(seed), interpolation="anchors")(x, y).backward()
            assert torch.isfinite(x.grad).all()
        assert len(traces) >= 2  # traced again when the branch changed
        monkeypatch.undo()


@pytest.mark.parametrize("name", sorted(_all_cases()))
def test_the_tape_batched_by_hand_under_vmap_and_fn_itself_agree(name):
    """The anchors' values from the tape batched by hand ("direct"), from the tape under vmap and
    from fn replayed whole are the same, for every operation these metrics use."""
    fn, data = _all_cases()[name]
    scores, target = data(4)
    traced = from_metric(fn)
    plan = traced.prepare(scores, target)
    assert plan.trace.tape is not None and plan.trace.tape.direct, plan.trace.why_no_tape
    bits = torch.rand(9, plan.num_bits, generator=_gen(5)) < 0.5
    traced.evaluate(bits, plan)
    assert traced._tapes[plan.key] == "direct"  # chosen after checks against fn on the first call
    values = {}
    for kind in ("direct", "vmap", "off"):
        plan.tape = kind
        values[kind] = traced.evaluate(bits, plan)
    assert torch.allclose(values["direct"], values["off"], atol=1e-6, equal_nan=True)
    assert torch.allclose(values["vmap"], values["off"], atol=1e-6, equal_nan=True)


def test_writes_into_tensors_made_before_the_step_are_replayed_on_copies():
    """``pred[s > 0] = True`` into a tensor made before the comparison: the tape replays the write
    on a copy per anchor (vmap cannot batch it; fn replayed whole falls back to a loop)."""
    def f1_written(s, y):
        pred = torch.zeros_like(y, dtype=torch.bool)
        pred[s > 0] = True
        tp = (pred & (y == 1)).sum()
        return 2 * tp / (pred.sum() + (y == 1).sum()).clamp_min(1)

    scores, target = _binary(14)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the first call's check replays fn whole, one anchor at a time
        traced = from_metric(f1_written)
        plan = traced.prepare(scores, target)
        bits = torch.rand(6, plan.num_bits, generator=_gen(6)) < 0.5
        values = traced.evaluate(bits, plan)
    hand = zoo.f_beta(1.0)
    assert torch.allclose(values, hand.evaluate(bits, hand.prepare(scores, target)).to(values.dtype), atol=1e-6)
    assert traced._tapes[plan.key] == "direct"
    scores2, target2 = _binary(15)
    assert float(traced.metric(scores2, target2)) == pytest.approx(float(f1_written(scores2, target2)))


def test_a_cached_trace_keeps_no_tensor_of_its_call_alive():
    import gc
    import weakref

    traced = from_metric(average_precision)
    scores, target = _binary(16)
    x = scores.clone().requires_grad_()
    loss = uniloss.UniLoss(traced, generator=_gen(0), interpolation="anchors")(x * 2, target)
    loss.backward()
    ref = weakref.ref(x)
    del x, loss
    gc.collect()
    assert ref() is None
    assert traced._graphs  # cached


def _prec_at_3(scores, target):
    return target[scores.argsort(descending=True)[:3]].float().mean()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reported_metric_is_fns_own_value_on_ties(dtype):
    """``metric()`` and ``last.metric`` are ``fn``'s value, tied scores included: constant scores
    make ``torch.argmax`` pick class 0 and ``argsort`` keep the index order, while the bits count
    every tied comparison as wrong (accuracy 0 there before 2026-12-01; found by fuzzing)."""
    y = torch.tensor([0, 2, 0, 1, 0])
    relevance = torch.tensor([1, 1, 0, 0, 1, 0])
    for fn, scores, target in [(accuracy, torch.zeros(5, 3, dtype=dtype), y),
                               (accuracy, torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0], [3.0, 0.0, 3.0],
                                                        [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]], dtype=dtype), y),
                               (_prec_at_3, torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0], dtype=dtype), relevance)]:
        metric = from_metric(fn)
        want = float(fn(scores, target))
        assert float(metric.metric(scores, target)) == pytest.approx(want, abs=1e-7)
        loss_fn = uniloss.UniLoss(metric, generator=torch.Generator().manual_seed(0), interpolation="anchors")
        x = scores.clone().requires_grad_()
        loss_fn(x, target).backward()
        assert float(loss_fn.last.metric) == pytest.approx(want, abs=1e-7)
        assert torch.isfinite(x.grad).all()


def test_a_loop_that_writes_on_every_pass_looks_up_the_tapes_tensors_once_each(monkeypatch):
    """A write checks whether the tape holds a tensor sharing its memory. The held tensors are
    indexed as they come, so a loop of ``fn`` writing on every pass (torchmetrics'
    ``multilabel_ranking_average_precision``: ``score += ...`` per sample) walks each step's
    arguments once, not once per write (twice the passes: about twice the walks, not four times)."""
    walked = []
    walk = traced._walk_tensors
    monkeypatch.setattr(traced, "_walk_tensors", lambda value: walked.append(1) or walk(value))

    def per_row_hits(s, y):  # a running sum, written into on every row
        total = torch.zeros(())
        order = s.argsort(1, descending=True)
        for i in range(s.shape[0]):
            total += y[i][order[i][0]].float()
        return total / s.shape[0]

    counts = []
    for n in (20, 40):
        g = _gen(n)
        scores, target = torch.randn(n, 4, generator=g), (torch.rand(n, 4, generator=g) < 0.5).long()
        metric = from_metric(per_row_hits)
        walked.clear()
        metric.prepare(scores, target)
        counts.append(len(walked))
        plan = metric.prepare(scores, target)
        bits = torch.rand(3, plan.num_bits, generator=g) < 0.5
        assert torch.isfinite(metric.evaluate(bits, plan)).all()
    assert counts[1] < 2.5 * counts[0], counts
    hard = metric.evaluate((metric.comparisons(scores, plan) > 0)[None], plan)
    assert float(hard[0]) == pytest.approx(float(per_row_hits(scores, target)))
