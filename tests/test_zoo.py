"""Every zoo metric is exact: equal to scikit-learn (or torchmetrics, or a brute-force loop) on
random untied inputs, with evaluate() vectorised over configurations and best() the best."""

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

import uniloss
from uniloss import zoo
from uniloss.decoders import RankingTarget
from uniloss.testing import assert_exact_decomposition


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _check(metric, scores, target, reference):
    """Exact against the reference on the scores, and the decomposition contract on any bits."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn warns on 0/0, which is part of the contract
        assert_exact_decomposition(metric, scores, target, reference, atol=1e-9)


# ------------------------------------------------------------------ multi-class


def _multiclass(n, c, seed):
    g = _gen(seed)
    scores = torch.randn(n, c, generator=g, dtype=torch.float64)
    target = torch.randint(0, c, (n,), generator=g)
    scores[: n // 2] += 2 * torch.nn.functional.one_hot(target[: n // 2], c)  # some right
    return scores, target


MULTICLASS = [(1, 3), (9, 3), (40, 5), (64, 10)]


@pytest.mark.parametrize("n,c", MULTICLASS)
@pytest.mark.parametrize("seed", range(2))
def test_top_k_accuracy_equals_sklearn(n, c, seed):
    scores, target = _multiclass(n, c, seed)
    for k in (1, 2, c - 1):
        _check(zoo.top_k_accuracy(k), scores, target,
               lambda s, y: skm.top_k_accuracy_score(y.numpy(), s.numpy(), k=k, labels=np.arange(c)))


@pytest.mark.parametrize("n,c", MULTICLASS)
@pytest.mark.parametrize("pairs", ["all", "target"])
@pytest.mark.parametrize("seed", range(2))
def test_macro_f1_balanced_accuracy_and_mcc_equal_sklearn(n, c, pairs, seed):
    scores, target = _multiclass(n, c, seed)
    pred = lambda s: s.argmax(1).numpy()  # noqa: E731
    _check(zoo.macro_f1(c, pairs=pairs), scores, target, lambda s, y: skm.f1_score(y.numpy(), pred(s), average="macro"))
    _check(zoo.balanced_accuracy(c, pairs=pairs), scores, target, lambda s, y: skm.balanced_accuracy_score(y.numpy(), pred(s)))
    _check(zoo.matthews_corrcoef(c, pairs=pairs), scores, target, lambda s, y: skm.matthews_corrcoef(y.numpy(), pred(s)))


@pytest.mark.parametrize("seed", range(3))
def test_every_pairs_interpolation_moves_the_wrong_classes_among_themselves(seed):
    """docs/custom-metrics.md ("Prune"): with ``pairs="target"`` every comparison holds the
    target's score, so the target's column takes exactly half of the interpolation's gradient
    (``pull=0``); with ``pairs="all"`` part of the push falls on comparisons of two wrong classes,
    and the target's share is below half."""
    g = _gen(seed)
    scores = 2 * torch.randn(64, 10, generator=g)
    target = torch.randint(0, 10, (64,), generator=g)
    share = {}
    for pairs in ("target", "all"):
        x = scores.clone().requires_grad_()
        uniloss.UniLoss(zoo.macro_f1(10, pairs=pairs), pull=0.0)(x, target).backward()
        mass = x.grad.abs()
        share[pairs] = float(mass[torch.arange(64), target].sum() / mass.sum())
    assert share["target"] == pytest.approx(0.5, abs=1e-5)
    assert share["all"] < 0.45


@pytest.mark.parametrize("n,c", MULTICLASS)
@pytest.mark.parametrize("pairs", ["all", "target"])
def test_class_weighted_macro_f1_equals_sklearn_with_sample_weights(n, c, pairs):
    scores, target = _multiclass(n, c, 3)
    weights = torch.rand(c, generator=_gen(4), dtype=torch.float64) * 5 + 0.1

    def reference(s, y):  # the classes in the target or the prediction, as the zoo's macro-F1
        pred = s.argmax(1).numpy()
        labels = sorted(set(y.tolist()) | set(pred.tolist()))
        return skm.f1_score(y.numpy(), pred, average="macro", labels=labels, sample_weight=weights[y].numpy())

    _check(zoo.macro_f1(c, pairs=pairs, class_weights=weights), scores, target, reference)
    # equal weights: the plain macro-F1, any scale
    plain = zoo.macro_f1(c, pairs=pairs)
    torch.testing.assert_close(zoo.macro_f1(c, pairs=pairs, class_weights=torch.full((c,), 3.0)).metric(scores, target),
                               plain.metric(scores, target))


def test_class_weights_are_checked():
    for bad in (torch.ones(4), torch.tensor([1.0, 0.0, 1.0]), torch.tensor([1, 2, 3]),
                torch.tensor([1.0, float("inf"), 1.0])):
        with pytest.raises(ValueError, match="class_weights"):
            zoo.macro_f1(3, class_weights=bad)


def test_macro_metrics_on_a_batch_with_one_class():
    scores = torch.randn(6, 3, generator=_gen(0), dtype=torch.float64)
    target = torch.ones(6, dtype=torch.long)
    _check(zoo.matthews_corrcoef(3), scores, target, lambda s, y: skm.matthews_corrcoef(y.numpy(), s.argmax(1).numpy()))
    _check(zoo.macro_f1(3), scores, target, lambda s, y: skm.f1_score(y.numpy(), s.argmax(1).numpy(), average="macro"))


# ------------------------------------------------------------------ binary


def _binary(n, seed, rate=0.3, shape=None):
    g = _gen(seed)
    scores = torch.randn(n, generator=g, dtype=torch.float64)
    target = (torch.rand(n, generator=g) < rate).long()
    return (scores, target) if shape is None else (scores.reshape(shape), target.reshape(shape))


@pytest.mark.parametrize("n", [1, 7, 50])
@pytest.mark.parametrize("threshold", [0.0, 0.4])
@pytest.mark.parametrize("seed", range(2))
def test_f_beta_precision_recall_equal_sklearn(n, threshold, seed):
    scores, target = _binary(n, seed)
    pred = lambda s: (s > threshold).numpy()  # noqa: E731
    for beta in (0.5, 1.0, 2.0):
        _check(zoo.f_beta(beta, threshold), scores, target,
               lambda s, y: skm.fbeta_score(y.numpy(), pred(s), beta=beta, zero_division=0))
    _check(zoo.precision(threshold), scores, target, lambda s, y: skm.precision_score(y.numpy(), pred(s), zero_division=0))
    _check(zoo.recall(threshold), scores, target, lambda s, y: skm.recall_score(y.numpy(), pred(s), zero_division=0))


def test_binary_metrics_pool_every_element_of_a_multilabel_batch():
    scores, target = _binary(24, 4, rate=0.5, shape=(6, 4))
    _check(zoo.f_beta(), scores, target, lambda s, y: skm.f1_score(y.numpy(), (s > 0).numpy(), average="micro"))


@pytest.mark.parametrize("n, labels", [(1, 3), (7, 4), (50, 10)])
def test_binary_metrics_average_macro_over_the_labels_as_sklearn(n, labels):
    # multi-label: each label's (last axis's) metric averaged over every label, 0 for a label with
    # neither a positive nor a positive decision, as scikit-learn's label-indicator macro average
    scores, target = _binary(n * labels, n, rate=0.3, shape=(n, labels))
    scores[:, 0] = -1.0  # a label never decided positive
    target[:, -1] = 0  # and one never present
    pred = lambda s: (s > 0).numpy()  # noqa: E731
    for beta in (0.5, 1.0, 2.0):
        _check(zoo.f_beta(beta, average="macro"), scores, target,
               lambda s, y: skm.fbeta_score(y.numpy(), pred(s), beta=beta, average="macro", zero_division=0))
    _check(zoo.precision(average="macro"), scores, target,
           lambda s, y: skm.precision_score(y.numpy(), pred(s), average="macro", zero_division=0))
    _check(zoo.recall(average="macro"), scores, target,
           lambda s, y: skm.recall_score(y.numpy(), pred(s), average="macro", zero_division=0))
    # three dimensions: the labels are the last axis, the others pooled
    cube = scores.reshape(1, n, labels).expand(2, n, labels)
    assert float(zoo.f_beta(average="macro").metric(cube, target.expand(2, n, labels))) == pytest.approx(
        float(zoo.f_beta(average="macro").metric(scores, target)))


def test_macro_f_beta_trains_as_the_same_metric_written_in_torch():
    # an independent route: the metric's plain torch code, traced; below the chain's segment count
    # both evaluate every point, so loss and gradient agree (to float32: the torch code divides
    # integer counts, which gives float32 values)
    def macro_f1(scores, target):
        pred, pos = scores > 0, target == 1
        tp = (pred & pos).sum(0)
        return (2 * tp / (pred.sum(0) + pos.sum(0)).clamp_min(1)).mean()

    scores, target = _binary(48, 6, rate=0.3, shape=(12, 4))
    grads = []
    for metric in (zoo.f_beta(average="macro"), uniloss.from_metric(macro_f1)):
        s = scores.clone().requires_grad_()
        loss = uniloss.UniLoss(metric)(s, target)
        loss.backward()
        grads.append((float(loss.detach()), s.grad))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-6)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-5, atol=1e-8)


def test_average_is_checked():
    with pytest.raises(ValueError, match="average must be 'micro' .* or 'macro' .* not 'weighted'"):
        zoo.f_beta(average="weighted")
    for metric in (zoo.f_beta(average="macro"), zoo.precision(average="macro"), zoo.recall(average="macro")):
        with pytest.raises(ValueError, match=r"average='macro' averages over the last axis .* shape \(5,\)"):
            metric.metric(torch.randn(5), torch.tensor([1, 0, 1, 0, 0]))
    assert repr(zoo.f_beta()) == "DecodedMetric(Threshold(0.0), f_beta(beta=1.0), higher_is_better=True, batched=True)"


def test_threshold_metrics_take_scores_n_by_1_with_target_n_as_average_precision_does():
    scores, target = _binary(12, 5, rate=0.5)
    column = scores[:, None].clone().requires_grad_()  # a network's single output, [n, 1]
    uniloss.UniLoss(uniloss.AveragePrecision(), interpolation="anchors")(column, target)  # accepted there ...
    for metric in (zoo.f_beta(), zoo.precision(), zoo.recall()):  # ... so here too, with the same values
        assert float(metric.metric(column, target)) == float(metric.metric(scores, target))
        loss = uniloss.UniLoss(metric, generator=_gen(0), interpolation="anchors")(column, target)
        assert float(loss.detach()) == float(uniloss.UniLoss(metric, generator=_gen(0), interpolation="anchors")(scores, target))
        loss.backward()
        assert column.grad.shape == (12, 1) and torch.isfinite(column.grad).all()
        column.grad = None
    with pytest.raises(ValueError, match=r"Expected `target` of shape \[12, 2\] \(the shape of scores"):
        uniloss.UniLoss(zoo.f_beta(), interpolation="anchors")(torch.randn(12, 2), target)  # [n, L] with L > 1: multi-label, same shape only
    uniloss.UniLoss(zoo.f_beta(), interpolation="anchors")(column, target[:, None])  # the same shape still works


def test_an_evaluator_on_a_batch_where_its_metric_is_undefined_behaves_as_documented():
    """The contract in DecodedMetric's docstring and docs/custom-metrics.md: a decoder with
    comparisons calls the evaluator on every batch; NaN at an anchor makes loss and gradient NaN,
    a constant value gives a finite loss whose only push is the pull toward the target."""
    from uniloss.decoders import Threshold

    def recall(pred, target, undefined):  # pred [t, n], target [n] bool
        hits = (pred & target).sum(-1).to(torch.float32)
        return hits / target.sum() if target.any() else torch.full_like(hits, undefined)

    no_positive = torch.zeros(6, dtype=torch.long)
    for undefined, pull, finite in ((0.0, 1.0, True), (0.0, 0.0, True), (float("nan"), 1.0, False)):
        metric = uniloss.DecodedMetric(Threshold(), lambda p, t: recall(p, t, undefined))
        scores = torch.randn(6, generator=_gen(1), requires_grad=True)
        loss_fn = uniloss.UniLoss(metric, generator=_gen(0), pull=pull, interpolation="anchors")
        loss = loss_fn(scores, no_positive)
        loss.backward()
        loss = loss.detach()
        assert loss_fn.last.num_bits == 6  # the evaluator was called: Threshold compares every score
        assert bool(torch.isfinite(loss)) == finite and bool(torch.isfinite(scores.grad).all()) == finite
        if finite:
            assert float(loss) == 0.0 and (float(scores.grad.abs().max()) == 0.0) == (pull == 0.0)


# ------------------------------------------------------------------ ranking


def _queries(n, num_queries, grades, seed, rate=0.3):
    g = _gen(seed)
    scores = torch.randn(n, generator=g, dtype=torch.float64)
    if grades == 2:
        relevance = (torch.rand(n, generator=g) < rate).long()
    else:
        relevance = torch.randint(0, grades, (n,), generator=g)
    query = torch.randint(0, num_queries, (n,), generator=g) * 3 + 1
    return scores, RankingTarget(relevance, query)


def _per_query(reference, defined=lambda rel: (rel > 0).any()):
    """Mean over queries of reference(scores_q, relevance_q), over queries where it is defined."""

    def mean(scores, target):
        values = []
        for q in target.query.unique():
            mask = target.query == q
            rel = target.relevance[mask]
            if defined(rel):
                values.append(reference(scores[mask], rel))
        return float(np.mean(values)) if values else float("nan")

    return mean


def _sorted_relevance(scores, rel):
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return [float(rel[i]) for i in order]


def precision_at_k_loop(scores, rel, k):
    return sum(r > 0 for r in _sorted_relevance(scores, rel)[:k]) / k


def recall_at_k_loop(scores, rel, k):
    ranked = _sorted_relevance(scores, rel)
    return sum(r > 0 for r in ranked[:k]) / sum(r > 0 for r in ranked)


def mrr_loop(scores, rel):
    return next(1 / (i + 1) for i, r in enumerate(_sorted_relevance(scores, rel)) if r > 0)


RANKING = [(1, 1), (12, 1), (40, 1), (40, 5), (90, 6)]


@pytest.mark.parametrize("n,num_queries", RANKING)
@pytest.mark.parametrize("seed", range(2))
def test_auroc_and_average_precision_equal_sklearn_per_query(n, num_queries, seed):
    scores, target = _queries(n, num_queries, 2, seed)
    both = lambda rel: 0 < int((rel > 0).sum()) < len(rel)  # noqa: E731
    _check(zoo.auroc(), scores, target, _per_query(lambda s, r: skm.roc_auc_score(r.numpy() > 0, s.numpy()), both))
    _check(zoo.average_precision(), scores, target, _per_query(lambda s, r: skm.average_precision_score(r.numpy() > 0, s.numpy())))


def test_auroc_on_a_plain_label_tensor():
    scores, labels = _binary(60, 1, rate=0.4)
    _check(zoo.auroc(), scores, labels, lambda s, y: skm.roc_auc_score(y.numpy(), s.numpy()))


@pytest.mark.parametrize("n,num_queries", RANKING)
@pytest.mark.parametrize("grades", [2, 4])
@pytest.mark.parametrize("seed", range(2))
def test_ndcg_at_k_equals_sklearn_per_query(n, num_queries, grades, seed):
    scores, target = _queries(n, num_queries, grades, seed)
    for k in (1, 3, None):
        _check(zoo.ndcg_at_k(k), scores, target,
               _per_query(lambda s, r: skm.ndcg_score(r.numpy()[None], s.numpy()[None], k=k) if len(r) > 1 else 1.0))


@pytest.mark.parametrize("n,num_queries", RANKING)
@pytest.mark.parametrize("seed", range(2))
def test_precision_recall_at_k_and_mrr_equal_loops(n, num_queries, seed):
    scores, target = _queries(n, num_queries, 3, seed, rate=0.4)
    for k in (1, 3, 5):
        _check(zoo.precision_at_k(k), scores, target, _per_query(lambda s, r: precision_at_k_loop(s, r, k), lambda r: True))
        _check(zoo.recall_at_k(k), scores, target, _per_query(lambda s, r: recall_at_k_loop(s, r, k)))
    _check(zoo.mrr(), scores, target, _per_query(mrr_loop))


def test_ranking_metrics_equal_torchmetrics_retrieval():
    retrieval = pytest.importorskip("torchmetrics.functional.retrieval")
    scores, target = _queries(60, 4, 3, 7, rate=0.4)
    for metric, reference, defined in [
        (zoo.precision_at_k(3), lambda s, r: retrieval.retrieval_precision(s, r > 0, top_k=3), lambda r: True),
        (zoo.recall_at_k(3), lambda s, r: retrieval.retrieval_recall(s, r > 0, top_k=3), lambda r: (r > 0).any()),
        (zoo.mrr(), lambda s, r: retrieval.retrieval_reciprocal_rank(s, r > 0), lambda r: (r > 0).any()),
        (zoo.ndcg_at_k(4), lambda s, r: retrieval.retrieval_normalized_dcg(s, r, top_k=4), lambda r: (r > 0).any()),
    ]:
        _check(metric, scores, target, _per_query(lambda s, r: float(reference(s, r)), defined))


def _operating_point(scores, rel, alpha, of_recall):
    """scikit-learn's precision-recall curve: the largest recall at precision >= alpha
    (``of_recall``), or the largest precision at recall >= alpha, leaving out the curve's end point
    (recall 0, precision 1: no threshold; torchmetrics leaves it out too)."""
    precision, recall, _ = skm.precision_recall_curve(rel.numpy() > 0, scores.numpy())
    if of_recall:
        return max([r for p, r in zip(precision, recall) if p >= alpha], default=0.0)
    return max(p for p, r in zip(precision[:-1], recall[:-1]) if r >= alpha)


@pytest.mark.parametrize("n,num_queries", RANKING)
@pytest.mark.parametrize("seed", range(2))
def test_recall_at_precision_and_precision_at_recall_equal_sklearn_per_query(n, num_queries, seed):
    scores, target = _queries(n, num_queries, 2, seed, rate=0.4)
    for alpha in (0.25, 0.5, 0.8, 1.0):
        _check(zoo.recall_at_precision(alpha), scores, target,
               _per_query(lambda s, r: _operating_point(s, r, alpha, of_recall=True)))
        _check(zoo.precision_at_recall(alpha), scores, target,
               _per_query(lambda s, r: _operating_point(s, r, alpha, of_recall=False)))


@pytest.mark.parametrize("seed", range(4))
def test_recall_at_precision_and_precision_at_recall_equal_torchmetrics_on_tied_float32_scores(seed):
    # torchmetrics computes the curve in the scores' dtype and takes a run of tied scores as one
    # threshold: the reported value (metric(), last.metric) does the same; the loss trains.
    classification = pytest.importorskip("torchmetrics.functional.classification")
    g = _gen(seed)
    scores = (torch.randn(80, generator=g) * 2).round() / 2  # many ties
    labels = (torch.rand(80, generator=g) < 0.25).long()
    probabilities = torch.sigmoid(scores)  # (torchmetrics reads scores outside [0, 1] as logits)
    for alpha in (0.3, 0.5, 0.7, 0.9):
        expected = float(classification.binary_recall_at_fixed_precision(probabilities, labels, alpha)[0])
        assert float(zoo.recall_at_precision(alpha).metric(scores, labels)) == pytest.approx(expected, abs=1e-6)
        expected = float(classification.binary_precision_at_fixed_recall(probabilities, labels, alpha)[0])
        assert float(zoo.precision_at_recall(alpha).metric(scores, labels)) == pytest.approx(expected, abs=1e-6)
        for metric in (zoo.recall_at_precision(alpha), zoo.precision_at_recall(alpha)):
            free = scores.clone().requires_grad_()
            loss_fn = uniloss.UniLoss(metric)
            loss_fn(free, labels).backward()
            assert float(loss_fn.last.metric) == float(metric.metric(scores, labels))
            assert torch.isfinite(free.grad).all() and free.grad.abs().sum() > 0


def test_operating_point_metrics_check_their_level():
    for make, name in ((zoo.recall_at_precision, "min_precision"), (zoo.precision_at_recall, "min_recall")):
        for bad in (0.0, -0.1, 1.5):
            with pytest.raises(ValueError, match=rf"`{name}` in \(0, 1\]"):
                make(bad)
        with pytest.raises(TypeError, match=f"`{name}` to be a number"):
            make(True)


def test_queries_without_a_relevant_item_are_left_out():
    scores = torch.tensor([0.5, 0.1, 0.9, 0.3])
    target = RankingTarget(torch.tensor([0, 0, 1, 0]), torch.tensor([0, 0, 1, 1]))
    assert float(zoo.mrr().metric(scores, target)) == 1.0
    assert float(zoo.precision_at_k(1).metric(scores, target)) == 0.5  # defined for every query
    assert math.isnan(float(zoo.recall_at_k(1).metric(scores, torch.zeros(4))))


# ------------------------------------------------------------------ segmentation and keypoints


@pytest.mark.parametrize("shape", [(1, 2, 3, 3), (2, 2, 8, 8), (2, 4, 5, 6)])
@pytest.mark.parametrize("pairs", ["all", "target"])
@pytest.mark.parametrize("seed", range(2))
def test_mean_iou_and_dice_equal_sklearn_on_flattened_maps(shape, pairs, seed):
    g = _gen(seed)
    n, c, h, w = shape
    scores = torch.randn(shape, generator=g, dtype=torch.float64)
    target = torch.randint(0, c, (n, h, w), generator=g)
    pred = lambda s: s.argmax(1).reshape(-1).numpy()  # noqa: E731
    _check(zoo.mean_iou(c, pairs=pairs), scores, target,
           lambda s, y: skm.jaccard_score(y.reshape(-1).numpy(), pred(s), average="macro"))
    _check(zoo.dice(c, pairs=pairs), scores, target,
           lambda s, y: skm.f1_score(y.reshape(-1).numpy(), pred(s), average="macro"))


def _void_pixels(seed, shape=(2, 3, 5, 6), void=255):
    g = _gen(seed)
    scores = torch.randn(shape, generator=g, dtype=torch.float64)
    target = torch.randint(0, shape[1], (shape[0],) + shape[2:], generator=g)
    target[torch.rand(target.shape, generator=g) < 0.3] = void  # a void border, scattered
    return scores, target


@pytest.mark.parametrize("pairs", ["all", "target"])
@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("void", [255, -100])
def test_mean_iou_and_dice_ignore_the_void_pixels_as_sklearn_on_the_others(pairs, seed, void):
    scores, target = _void_pixels(seed, void=void)
    keep = target != void
    pred = lambda s: s.argmax(1)[keep].numpy()  # noqa: E731
    _check(zoo.mean_iou(3, pairs=pairs, ignore_index=void), scores, target,
           lambda s, y: skm.jaccard_score(y[keep].numpy(), pred(s), average="macro"))
    _check(zoo.dice(3, pairs=pairs, ignore_index=void), scores, target,
           lambda s, y: skm.f1_score(y[keep].numpy(), pred(s), average="macro"))


@pytest.mark.parametrize("interpolation", ["chain", "anchors"])
def test_ignored_pixels_get_no_gradient_and_the_others_their_rows_loss(interpolation):
    scores, target = _void_pixels(3)
    keep = target != 255
    rows = scores.movedim(1, -1)[keep][..., None]  # [P, C, 1]: the kept pixels, row-major, as one-pixel maps
    grads, losses = [], []
    for metric, s, y in ((zoo.mean_iou(3, ignore_index=255), scores, target),
                         (zoo.mean_iou(3), rows, target[keep][:, None])):
        x = s.clone().requires_grad_()
        loss_fn = uniloss.UniLoss(metric, interpolation=interpolation, generator=torch.Generator().manual_seed(0))
        loss = loss_fn(x, y)
        loss.backward()
        grads.append(x.grad)
        losses.append((float(loss.detach()), float(loss_fn.last.metric)))
    assert losses[0] == pytest.approx(losses[1])
    assert bool((grads[0].movedim(1, -1)[~keep] == 0).all())
    torch.testing.assert_close(grads[0].movedim(1, -1)[keep], grads[1][..., 0])
    # without a void pixel, the label maps' own loss
    plain = target.masked_fill(~keep, 0)
    for metric in (zoo.mean_iou(3), zoo.mean_iou(3, ignore_index=255)):
        x = scores.clone().requires_grad_()
        loss = uniloss.UniLoss(metric, interpolation=interpolation, generator=torch.Generator().manual_seed(0))(x, plain)
        loss.backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[2], grads[3])


def test_ignore_index_errors_and_an_all_void_batch():
    with pytest.raises(ValueError, match=r"`ignore_index` to be an int outside \[0, 3\)"):
        zoo.mean_iou(3, ignore_index=2)
    with pytest.raises(ValueError, match="`ignore_index`"):
        zoo.dice(3, ignore_index=True)
    scores, target = _void_pixels(0)
    loss_fn = uniloss.UniLoss(zoo.mean_iou(3, ignore_index=255))
    with pytest.raises(ValueError, match=r"`target` to hold integers in \[0, 3\)"):
        loss_fn(scores, target.masked_fill(target == 0, 7))  # a label that is neither a class nor void
    with pytest.raises(ValueError, match="shape"):
        loss_fn(scores, target[:, :-1])
    x = scores.clone().requires_grad_()
    loss = loss_fn(x, torch.full_like(target, 255))  # nothing to score: undefined, a zero loss on the graph
    loss.backward()
    assert float(loss.detach()) == 0.0 and loss.requires_grad and bool((x.grad == 0).all())
    assert math.isnan(float(loss_fn.last.metric))
    # the distributed wrapper composes (without a process group it is the metric itself)
    gathered = uniloss.UniLoss(uniloss.distributed.GlobalBatch(zoo.mean_iou(3, ignore_index=255)))
    assert float(gathered(scores, target)) == pytest.approx(float(loss_fn(scores, target)))

def test_pck_equals_the_paper_decomposition():
    g = _gen(3)
    heat = torch.randn(3, 2, 6, 7, generator=g, dtype=torch.float64)
    target = uniloss.KeypointTarget(torch.rand(3, 2, 2, generator=g, dtype=torch.float64) * 6,
                                    torch.rand(3, 2, generator=g) < 0.8, 1 + torch.rand(3, generator=g, dtype=torch.float64))
    heat[0, 0, int(target.keypoints[0, 0, 1].round()), int(target.keypoints[0, 0, 0].round())] += 9
    _check(zoo.pck(0.6), heat, target, lambda s, t: uniloss.PCK(0.6).metric(s, t))


# ------------------------------------------------------------------ every zoo metric trains


ZOO = [
    (zoo.top_k_accuracy(2), lambda: _multiclass(32, 5, 0)),
    (zoo.macro_f1(5), lambda: _multiclass(32, 5, 0)),
    (zoo.balanced_accuracy(5), lambda: _multiclass(32, 5, 0)),
    (zoo.matthews_corrcoef(5), lambda: _multiclass(32, 5, 0)),
    (zoo.f_beta(2.0), lambda: _binary(32, 0)),
    (zoo.precision(), lambda: _binary(32, 0)),
    (zoo.recall(), lambda: _binary(32, 0)),
    (zoo.auroc(), lambda: _binary(32, 0)),
    (zoo.average_precision(), lambda: _queries(32, 3, 2, 0)),
    (zoo.precision_at_k(3), lambda: _queries(32, 3, 2, 0)),
    (zoo.recall_at_k(3), lambda: _queries(32, 3, 2, 0)),
    (zoo.ndcg_at_k(3), lambda: _queries(32, 3, 4, 0)),
    (zoo.mrr(), lambda: _queries(32, 3, 2, 0)),
    (zoo.recall_at_precision(0.5), lambda: _queries(32, 3, 2, 0)),
    (zoo.precision_at_recall(0.5), lambda: _queries(32, 3, 2, 0)),
    (zoo.mean_iou(3), lambda: (torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.randint(0, 3, (2, 4, 4)))),
    (zoo.dice(3), lambda: (torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.randint(0, 3, (2, 4, 4)))),
]


@pytest.mark.parametrize("metric,batch", ZOO, ids=[repr(m.evaluator) for m, _ in ZOO])
def test_gradient_steps_on_the_loss_raise_the_metric_of_a_free_score_tensor(metric, batch):
    # The scores themselves are the parameters: a few steps of gradient descent on UniLoss must
    # raise the exact metric (a direct check that the sign and the scale of the gradient are right).
    scores, target = batch()
    scores = scores.clone().requires_grad_()
    loss_fn = uniloss.UniLoss(metric, generator=_gen(0), interpolation="anchors")
    opt = torch.optim.SGD([scores], lr=10.0)
    start = float(metric.metric(scores.detach(), target))
    for _ in range(30):
        loss = loss_fn(scores, target)
        opt.zero_grad()
        loss.backward()
        assert torch.isfinite(scores.grad).all()
        opt.step()
    assert float(metric.metric(scores.detach(), target)) > start, (metric, start)


@pytest.mark.parametrize("make", [lambda n: zoo.macro_f1(n), lambda n: zoo.balanced_accuracy(n),
                                  lambda n: zoo.matthews_corrcoef(n), lambda n: zoo.mean_iou(n),
                                  lambda n: zoo.dice(n), lambda n: zoo.top_k_accuracy(1, num_classes=n)])
def test_one_class_is_refused_with_the_reason(make):
    # With one class every argmax is right: the metric is constant and the loss has no gradient.
    with pytest.raises(ValueError, match="num_classes` >= 2"):
        make(1)
    make(2)


def _exact_chains(monkeypatch, static: bool = False) -> None:
    """Limits under which the engine evaluates a decoded metric's chain at every point (and, with
    ``static``, lays the comparisons out statically on a CPU, the accelerators' policy)."""
    from uniloss import _limits

    limits = _limits.LIMITS.override(chain_segments=100_000, chain_elements=1 << 30)
    if static:
        limits = limits.override(cpu_static_max_bits=limits.static_max_bits)
    monkeypatch.setattr(_limits, "LIMITS", limits)


def _closed_and_evaluated(make, scores, target):
    """``(loss, grad, info)`` of ``make()`` as it is and with the chain the engine evaluates by
    decoding (:class:`uniloss.DecodedMetric`'s own structure), on leaf scores."""
    closed, evaluated = make(), make()
    evaluated.structure = lambda plan: uniloss.DecodedMetric.structure(evaluated, plan)
    out = []
    for metric in (closed, evaluated):
        leaf = scores.clone().requires_grad_(True)
        loss, info = uniloss.functional.uniloss_with_info(leaf, target, metric)
        out.append((loss.detach(), torch.autograd.grad(loss, leaf)[0], info))
    (loss, grad, _), (ref_loss, ref_grad, _) = out
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-14)
    assert torch.equal(out[0][2].metric, out[1][2].metric)
    return out


_RANKING_CHAINS = {"auroc()": zoo.auroc, "average_precision()": zoo.average_precision,
                   "precision_at_k(3)": lambda: zoo.precision_at_k(3), "precision_at_k(1)": lambda: zoo.precision_at_k(1),
                   "recall_at_k(4)": lambda: zoo.recall_at_k(4), "mrr()": zoo.mrr,
                   "ndcg_at_k(5)": lambda: zoo.ndcg_at_k(5), "ndcg_at_k()": lambda: zoo.ndcg_at_k(),
                   "ndcg_at_k(3, num_grades=2)": lambda: zoo.ndcg_at_k(3, num_grades=2),
                   "recall_at_precision(0.6)": lambda: zoo.recall_at_precision(0.6),
                   "recall_at_precision(1)": lambda: zoo.recall_at_precision(1.0),
                   "precision_at_recall(0.5)": lambda: zoo.precision_at_recall(0.5),
                   "precision_at_recall(0.2)": lambda: zoo.precision_at_recall(0.2)}


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("n, queries, share, ties", [(2, 1, 0.5, False), (40, 1, 0.1, False), (60, 4, 0.3, False),
                                                     (30, 5, 0.5, False), (40, 3, 0.4, True), (50, 2, 0.8, False)])
@pytest.mark.parametrize("name", list(_RANKING_CHAINS))
def test_ranking_chains_in_closed_form_equal_the_evaluated_chain(name, n, queries, share, ties, static, monkeypatch):
    """The zoo's ranking chains in closed form (:attr:`uniloss.Structure.chain_gains`) give the
    loss, gradient, metric and chain ends of the chain the engine evaluates by decoding at every
    point, in float64, on one query and several, with tied scores, queries where most items are
    relevant, also in a static layout: AUROC (each pair ``1 / (Q P_q N_q)``, linear in the bits),
    AP (each query's gains from the order of its scores, as uniloss.AveragePrecision's), and
    precision@k, recall@k, MRR and NDCG of 0/1 relevance (a comparison that comes right lowers
    one relevant item's rank by one, at the place its query's relevant items already that far up
    give it; 0.12.2)."""
    _exact_chains(monkeypatch, static)
    g = torch.Generator().manual_seed(n + queries)
    relevance = (torch.rand(n, generator=g) < share).long()
    relevance[0], relevance[1] = 1, 0
    query = torch.randint(0, queries, (n,), generator=g)
    query[1] = query[0]
    target = RankingTarget(relevance, query) if queries > 1 else relevance
    scores = torch.randn(n, generator=g, dtype=torch.float64)
    if ties:
        scores = (scores * 2).round()
    (_, grad, info), (_, _, ref_info) = _closed_and_evaluated(_RANKING_CHAINS[name], scores, target)
    assert info.path == ref_info.path == "chain" and info.kinds == (("chain", 2),)
    assert grad.abs().sum() > 0 or name.startswith(("precision", "recall")) and n == 2
    torch.testing.assert_close(info.anchor_values, ref_info.anchor_values[[0, -1]])  # the chain's two ends


_THRESHOLD_CHAINS = {"f_beta(1)": lambda: zoo.f_beta(1.0), "f_beta(2, 0.3)": lambda: zoo.f_beta(2.0, 0.3),
                     "precision()": zoo.precision, "recall(-0.2)": lambda: zoo.recall(-0.2),
                     "f_beta(0.5, macro)": lambda: zoo.f_beta(0.5, average="macro"),
                     "precision(macro)": lambda: zoo.precision(average="macro"),
                     "recall(macro)": lambda: zoo.recall(average="macro")}


@pytest.mark.parametrize("shape, share, ties", [((2,), 0.5, False), ((300,), 0.1, False), ((40, 8), 0.3, False),
                                                ((6, 5, 7), 0.4, True), ((50, 3), 0.9, False), ((30, 4), 0.0, False)])
@pytest.mark.parametrize("name", list(_THRESHOLD_CHAINS))
def test_threshold_chains_in_closed_form_equal_the_evaluated_chain(name, shape, share, ties, monkeypatch):
    """F-beta, precision and recall at a threshold, pooled and averaged over labels: the chain's
    gains in closed form (a comparison that comes right changes its label's counts by one) give the
    loss, gradient, metric and chain ends of the chain evaluated by decoding at every point, at
    sizes above the engine's 256 segments too (300 and 320 scores), with tied scores, labels
    without a positive, and a label where most are positive."""
    _exact_chains(monkeypatch)
    if "macro" in name and len(shape) == 1:
        shape = shape + (1,)  # one label: the macro average is the pooled metric
    g = torch.Generator().manual_seed(len(shape) + int(10 * share))
    target = (torch.rand(shape, generator=g) < share).long()
    scores = torch.randn(shape, generator=g, dtype=torch.float64)
    if ties:
        scores = (scores * 2).round() / 2
    (_, grad, info), (_, _, ref_info) = _closed_and_evaluated(_THRESHOLD_CHAINS[name], scores, target)
    assert info.path == ref_info.path == "chain" and info.kinds == (("chain", 2),)
    torch.testing.assert_close(info.anchor_values, ref_info.anchor_values[[0, -1]], equal_nan=True)


def test_threshold_chains_in_closed_form_keep_the_loss_below_the_segments_and_make_it_exact_above():
    """At the library's limits: below 257 comparisons the closed form is the loss the evaluated
    chain gave (every point); above, where the evaluated chain averaged its gains over 256
    segments, it is the chain evaluated at every point (the multi-label probe's [128, 10])."""
    from uniloss import _limits

    g = torch.Generator().manual_seed(5)
    for shape in ((128,), (16, 10), (128, 10)):
        target = (torch.rand(shape, generator=g) < 0.2).long()
        scores = torch.randn(shape, generator=g, dtype=torch.float64)
        evaluated = zoo.f_beta(1.0, average="macro" if len(shape) > 1 else "micro")
        evaluated.structure = lambda plan, m=evaluated: uniloss.DecodedMetric.structure(m, plan)
        closed = zoo.f_beta(1.0, average="macro" if len(shape) > 1 else "micro")
        with _limits.limits(chain_segments=100_000, chain_elements=1 << 30):
            exact = _loss_and_grad(evaluated, scores, target)
        segmented = _loss_and_grad(evaluated, scores, target)
        got = _loss_and_grad(closed, scores, target)
        torch.testing.assert_close(got[0], exact[0], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(got[1], exact[1], rtol=1e-10, atol=1e-14)
        if scores.numel() > 256:  # the segments' average was another gradient
            assert not torch.allclose(segmented[1], exact[1], rtol=1e-3, atol=0)


def _loss_and_grad(metric, scores, target):
    leaf = scores.clone().requires_grad_(True)
    loss = uniloss.UniLoss(metric)(leaf, target)
    return loss.detach(), torch.autograd.grad(loss, leaf)[0]


def test_graded_ndcg_keeps_the_evaluated_chain():
    """The closed form assumes 0/1 relevance (a relevant item's rank from its own wrong
    comparisons); graded relevance keeps the chain evaluated by decoding."""
    metric = zoo.ndcg_at_k(5)
    scores, relevance = torch.randn(12), torch.tensor([0, 1, 2, 3] * 3)
    assert metric.structure(metric.prepare(scores, relevance)).chain_gains is None
    assert metric.structure(metric.prepare(scores, relevance.clamp_max(1))).chain_gains is not None


def test_top_k_accuracy_with_k_of_every_class_warns_once_at_the_users_call():
    scores, target = _multiclass(8, 5, 0)
    loss_fn = uniloss.UniLoss(zoo.top_k_accuracy(5))
    with pytest.warns(UserWarning, match=r"top_k_accuracy\(5\) of scores with 5 classes: every sample is a hit") as said:
        loss_fn(scores.clone().requires_grad_(), target)
    assert [w.filename for w in said] == [__file__]  # the user's line, not the library's
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss_fn(scores.clone().requires_grad_(), target)  # once per metric
        uniloss.UniLoss(zoo.top_k_accuracy(4))(scores.clone().requires_grad_(), target)  # k < C: no warning


@pytest.mark.parametrize("k, n, c, ties", [(1, 20, 5, False), (3, 30, 10, False), (5, 16, 100, False),
                                         (2, 40, 3, True), (9, 8, 10, False), (12, 8, 10, False)])
@pytest.mark.filterwarnings("ignore:top_k_accuracy.*every sample is a hit")  # k >= C, on purpose
@pytest.mark.filterwarnings("ignore:'k' .* greater than or equal to 'n_classes'")  # scikit-learn's, the same
def test_top_k_accuracy_chain_in_closed_form_equals_the_evaluated_chain(k, n, c, ties, monkeypatch):
    """zoo.top_k_accuracy's chain in closed form (a row turns at its ``C - k``-th comparison to come
    right) and its metric of the runs' counts give the loss, gradient and metric of the chain the
    engine evaluates by decoding ``TopK`` masks at every point, in float64: k = 1 (accuracy), k of
    C - 1 and k >= C (every row a hit: a constant chain), tied scores."""
    _exact_chains(monkeypatch)
    g = torch.Generator().manual_seed(k * 100 + c)
    scores = torch.randn(n, c, generator=g, dtype=torch.float64)
    if ties:
        scores = scores.round()
    target = torch.randint(0, c, (n,), generator=g)
    (_, _, info), (_, _, ref_info) = _closed_and_evaluated(lambda: zoo.top_k_accuracy(k), scores, target)
    assert info.path == ref_info.path == "chain" and info.kinds == ref_info.kinds == (("chain", n * (c - 1) + 1),)
    torch.testing.assert_close(info.anchor_values, ref_info.anchor_values)
    assert info.metric == skm.top_k_accuracy_score(target.numpy(), scores.numpy(), k=k, labels=np.arange(c)) or ties
    closed = zoo.top_k_accuracy(k)
    plan = closed.prepare(scores, target)  # the counts' metric on any bits, consistent or not
    bits = torch.rand(25, n * (c - 1), generator=g) < 0.7
    zeros = (~bits).view(25, n, c - 1).sum(-1).double()
    torch.testing.assert_close(closed.structure(plan).evaluate_zeros(zeros), closed.evaluate(bits, plan))


def test_auroc_is_linear_in_the_bits_on_every_configuration():
    """The closed form's premise: the decoded AUROC of any bits, consistent or not, is the sum of
    the right pairs' ``1 / (Q P_q N_q)``."""
    g = torch.Generator().manual_seed(0)
    relevance = (torch.rand(50, generator=g) < 0.3).long()
    query = torch.randint(0, 4, (50,), generator=g)
    metric = zoo.auroc()
    plan = metric.prepare(torch.randn(50, generator=g, dtype=torch.float64), RankingTarget(relevance, query))
    bits = torch.rand(30, plan.a.numel(), generator=g) < 0.5
    _, gains = zoo._auroc_gains(plan)
    torch.testing.assert_close(metric.evaluate(bits, plan), (bits.double() * gains).sum(1), rtol=1e-12, atol=1e-14)


def test_zoo_average_precision_on_one_query_is_the_built_in_loss_at_any_size():
    """On one query of 0/1 labels zoo.average_precision is uniloss.AveragePrecision: the same
    comparisons, values, and now the same chain at any size (above 256 comparisons the evaluated
    chain had averaged its gains over segments)."""
    g = torch.Generator().manual_seed(1)
    target = (torch.rand(128, generator=g) < 0.2).long()
    scores = torch.randn(128, generator=g, dtype=torch.float64)
    out = []
    for metric in (zoo.average_precision(), uniloss.AveragePrecision()):
        leaf = scores.clone().requires_grad_(True)
        loss, info = uniloss.functional.uniloss_with_info(leaf, target, metric)
        out.append((loss.detach(), torch.autograd.grad(loss, leaf)[0], info))
    assert out[0][2].num_bits == out[1][2].num_bits > 256
    torch.testing.assert_close(out[0][0], out[1][0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(out[0][1], out[1][1], rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(out[0][2].metric, out[1][2].metric, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("visible", ["all", "some"])
def test_zoo_pck_is_the_built_in_pck_loss(dtype, visible):
    """zoo.pck's evaluator asks only whether the decoded pixel lies within the radius: its values
    are uniloss.PCK's on the same layout, and it takes PCK's structure (the path "runs"), so the
    loss, gradient and reported metric are PCK's to the bit; the decoded metric agrees."""
    g = torch.Generator().manual_seed(2)
    heat = torch.randn(2, 3, 12, 12, generator=g, dtype=dtype)
    keypoints = 2 + 8 * torch.rand(2, 3, 2, generator=g)
    shown = torch.ones(2, 3, dtype=torch.bool) if visible == "all" else torch.tensor([[True, False, True], [True, True, False]])
    target = uniloss.KeypointTarget(keypoints, shown, torch.tensor([3.0, 4.0]))
    out = []
    for metric in (zoo.pck(0.5), uniloss.PCK(0.5)):
        leaf = heat.clone().requires_grad_(True)
        loss, info = uniloss.functional.uniloss_with_info(leaf, target, metric)
        out.append((loss.detach(), torch.autograd.grad(loss, leaf)[0], info))
    assert out[0][2].path == out[1][2].path == "runs"
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])
    assert torch.equal(out[0][2].metric, out[1][2].metric)
    assert float(zoo.pck(0.5).metric(heat, target)) == pytest.approx(float(out[1][2].metric), abs=1e-6)
    with pytest.raises(TypeError, match="returned by .prepare"):
        zoo.pck(0.5).structure(target)
