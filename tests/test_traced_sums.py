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
from test_from_metric import _Plain  # a metric's comparisons and values alone
from test_from_metric import pck  # PCK in torch: x and y by torch.stack; a target of keypoints, so probed
from uniloss import _limits
from uniloss import from_metric, zoo
from uniloss.experiments.metric_wins import multilabel_samples_f1 as samples_f1  # F1 of each row, their mean


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


def nine_thresholds_counted(s, y):  # each element meets nine trained steps: past the comparisons a cut follows
    passed = sum((s > t).long() for t in torch.linspace(-1.0, 1.0, 9).tolist())
    return (passed == 4 * y).float().mean()


NOT_SUMMED = [largest_per_row, running_count, gated_by_own_sum, nine_thresholds_counted]


def two_thresholds(s, y):
    return (((s > 0) & (y == 1)).sum() + ((s > 1) & (y == 1)).sum()).float()  # two trained steps, summed apart


def within_a_band(s, y):  # two steps meeting in each element: above the lower edge and below the upper
    inside = (s > -0.4) & (s < 0.6)
    return (inside == (y == 0)).float().mean()


def f1_at_three_thresholds(s, y):  # a loop over thresholds: a step each, their F1s averaged
    pos, total = y == 1, 0.0
    for t in (-0.5, 0.0, 0.5):
        pred = s > t
        total = total + 2 * (pred & pos).sum() / (pred.sum() + pos.sum()).clamp_min(1)
    return total / 3


def sign_and_threshold(s, y):  # a sign (two comparisons) and a comparison, per element
    return ((torch.sign(s[:, 0] - 0.2) + (s[:, 1] > 0).float()) * (y[:, 0] - y[:, 1]).float()).mean()


def five_thresholds(s, y):  # five trained steps, each summed apart: an element follows one
    return sum(((s > t) & (y == 1)).sum() for t in (-1.0, -0.5, 0.0, 0.5, 1.0)).float()


def band_and_sign(s, y):  # a band of two steps beside a sign of a column: four comparisons meet in an element
    inside = ((s[:, 0] > -0.4) & (s[:, 0] < 0.6)).float()
    return (inside * torch.sign(s[:, 1]) * (y[:, 0] - y[:, 1]).float()).mean()


def five_thresholds_counted(s, y):  # an ordinal prediction by a loop: each element meets five steps
    passed = sum((s > t).long() for t in (-1.0, -0.5, 0.0, 0.5, 1.0))
    return (passed == 2 * y).float().mean()


SEVERAL = [two_thresholds, within_a_band, f1_at_three_thresholds, sign_and_threshold, five_thresholds, band_and_sign,
           five_thresholds_counted]


@pytest.mark.parametrize("fn", SEVERAL, ids=lambda f: f.__name__)
def test_a_chain_of_several_steps_through_sums_is_the_tape_at_every_point(fn):
    scores, target = _multilabel(n=12, labels=3, seed=4)
    scores[1, 0] = 0.2  # a tie at a sign's zero
    metric, plan = _checked(fn, scores, target)
    assert len(plan.sites) > 1
    chain = metric.structure(plan).chain
    assert chain is not None and list(metric._sums.values()) == [True]
    l = metric.best(plan).numel()
    for seed in range(3):  # the comparisons of the steps interleaved along the chain
        rank = torch.randperm(l, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(chain(rank).double(), _every_point(metric, plan, rank).double(), rtol=1e-6,
                                   atol=1e-7)


def test_an_element_at_every_configuration_of_its_comparisons_stays_within_chain_elements():
    scores, target = _multilabel(n=24, labels=5, seed=4)  # 120 elements, each at 2^5 configurations
    metric = from_metric(five_thresholds_counted)
    with _limits.limits(chain_elements=1000):  # the chain's 601 points fit, the elements' 3,840 rows do not
        uniloss.UniLoss(metric)(scores.clone().requires_grad_(), target)
        assert metric.structure(metric.prepare(scores, target)).chain is None
    assert list(metric._sums.values()) == [False]


@pytest.mark.parametrize("fn", SEVERAL, ids=lambda f: f.__name__)
def test_a_cut_of_several_steps_gives_the_loss_and_gradient_without_it(fn, monkeypatch):
    _same_as_without_the_cut(fn, *_multilabel(n=20, labels=3, seed=5), monkeypatch)


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
    _takes_no_cut(fn, *_multilabel())


def _takes_no_cut(fn, scores, target):
    metric, plan = _checked(fn, scores, target)
    structure = metric.structure(plan)
    assert structure is None or structure.chain is None


def _loss_and_grad(metric, scores, target, calls=3, **options):
    loss = uniloss.UniLoss(metric, **options)
    for _ in range(calls):  # the first call checks the tape, the second the cut
        s = scores.clone().requires_grad_()
        value = loss(s, target)
        value.backward()
    return value.detach(), s.grad


@pytest.mark.parametrize("fn", SUMMED, ids=lambda f: f.__name__)
def test_the_loss_and_gradient_are_those_without_the_cut(fn, monkeypatch):
    _same_as_without_the_cut(fn, *_multilabel(n=40, seed=1), monkeypatch)


def _same_as_without_the_cut(fn, scores, target, monkeypatch, name="_chain_by_sums"):
    """The loss and gradient with the cut (``TracedMetric.<name>``) and with it turned off."""
    with_cut = from_metric(fn)
    loss, grad = _loss_and_grad(with_cut, scores, target)
    assert with_cut._sums and all(with_cut._sums.values())
    monkeypatch.setattr(traced.TracedMetric, name, lambda self, plan: None)
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
    _a_wrong_cut_is_dropped(macro_f1, *_multilabel(), "_chain_by_sums", monkeypatch)


def _a_wrong_cut_is_dropped(fn, scores, target, name, monkeypatch):
    """A cut (``traced.<name>``) whose values are off fails its check: the tape's loss and
    gradient, and the verdict kept."""
    reference = _loss_and_grad(from_metric(fn), scores, target)
    wrong = getattr(traced, name)
    monkeypatch.setattr(traced, name, lambda *args: wrong(*args) + 0.01)
    metric = from_metric(fn)
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
    _a_failing_cut_falls_back(macro_f1, *_multilabel(), "_chain_by_sums", monkeypatch)


def _a_failing_cut_falls_back(fn, scores, target, name, monkeypatch):
    """A checked cut (``traced.<name>``) that raises on a later call: that call and the next
    take the tape, with its loss and gradient."""
    reference = _loss_and_grad(from_metric(fn), scores, target)
    metric = from_metric(fn)
    _loss_and_grad(metric, scores, target, calls=2)  # checked: the cut is taken
    assert list(metric._sums.values()) == [True]

    def broken(*args):
        raise RuntimeError("an operation the cut did not foresee")

    monkeypatch.setattr(traced, name, broken)
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


# --------------------------------------------------------------------------- an argmax with a label per row

C = 4


def accuracy(s, y):
    return (s.argmax(1) == y).float().mean()


def macro_f1_by_class(s, y):
    pred = s.argmax(dim=1)
    scores = [2 * ((pred == c) & (y == c)).sum() / ((pred == c).sum() + (y == c).sum()).clamp_min(1)
              for c in range(C)]
    return torch.stack(scores).mean()


def mean_iou_by_bincount(s, y):  # s [n, C, H, W], y [n, H, W]: the confusion matrix of every pixel
    pred = s.argmax(1)
    confusion = torch.bincount((y * C + pred).reshape(-1), minlength=C * C).reshape(C, C)
    inter = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - inter
    return (inter / union.clamp_min(1)).mean()


def _classes(n=30, seed=0, spatial=()):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, C, (n,) + spatial, generator=g)
    scores = torch.randn((n, C) + spatial, generator=g) + 1.5 * torch.nn.functional.one_hot(target, C).movedim(-1, 1)
    return scores, target


def weighted_macro_f1_by_one_hot(s, y):  # metric_wins.class_weighted_macro_f1: each class a column of one_hot
    from uniloss.experiments.metric_wins import class_weighted_macro_f1
    return class_weighted_macro_f1(s, y, torch.tensor([0.5, 1.0, 2.0, 4.0]))


CLASS_CASES = [(accuracy, {}), (macro_f1_by_class, {}), (mean_iou_by_bincount, {"n": 3, "spatial": (6, 5)}),
               (weighted_macro_f1_by_one_hot, {})]


@pytest.mark.parametrize("fn, shape", CLASS_CASES, ids=lambda c: getattr(c, "__name__", ""))
def test_an_argmax_chain_through_sums_is_the_tape_at_every_point(fn, shape):
    _argmax_chain_is_the_tape(fn, **shape)


def _argmax_chain_is_the_tape(fn, **shape):
    scores, target = _classes(**shape)
    metric, plan = _checked(fn, scores, target)
    structure = metric.structure(plan)
    assert structure.chain is not None and structure.chain_by_runs  # a row turns once: when its run is whole
    rows = target.numel()
    for seed in range(2):
        turn = torch.randperm(rows, generator=torch.Generator().manual_seed(seed)) + 1
        at = torch.arange(rows + 1)
        # the runs' counts of wrong comparisons: none once a row's run is whole, all C - 1 before
        zeros = torch.where(turn[None] <= at[:, None], 0.0, float(C - 1))
        torch.testing.assert_close(structure.chain(turn, rows).double(), metric.evaluate_zeros(zeros, plan).double(),
                                   rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("fn, shape", CLASS_CASES, ids=lambda c: getattr(c, "__name__", ""))
def test_an_argmax_cut_gives_the_loss_and_gradient_without_it(fn, shape, monkeypatch):
    _same_as_without_the_cut(fn, *_classes(seed=1, **shape), monkeypatch)


@pytest.mark.parametrize("fn, zoo_metric", [(macro_f1_by_class, zoo.macro_f1(C)),
                                            (mean_iou_by_bincount, zoo.mean_iou(C))], ids=["macro_f1", "mean_iou"])
def test_an_argmax_cut_is_the_zoos_exact_chain_where_the_tape_took_segments(fn, zoo_metric, monkeypatch):
    # 2 x 16 x 16 pixels (512 rows, 1,536 comparisons): within 12,000 elements the runs' counts through
    # the tape take 22 points of the chain, the cut (counts of at most 16 elements) every one of them
    scores, target = _classes(n=2, seed=2, spatial=(16, 16))
    if fn is macro_f1_by_class:
        scores, target = scores.movedim(1, -1).reshape(-1, C), target.reshape(-1)
    with _limits.limits(chain_elements=12000):
        loss, grad = _loss_and_grad(from_metric(fn), scores, target)
        # the zoo's metric of class counts: its chain in closed form; its pull's runs alike, as the traced one's
        loss_zoo, grad_zoo = _loss_and_grad(zoo_metric, scores, target, calls=1, pull_weights="equal")
        monkeypatch.setattr(traced.TracedMetric, "_chain_by_sums", lambda self, plan: None)
        segmented, _ = _loss_and_grad(from_metric(fn), scores, target)
    torch.testing.assert_close(loss, loss_zoo, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, grad_zoo, rtol=1e-4, atol=1e-7)
    assert abs(float(segmented) - float(loss)) > 1e-4  # the segments were another loss


def test_one_hot_of_the_labels_runs_batched_by_hand_only_with_its_number_of_classes():
    scores, target = _classes()
    metric, plan = _checked(weighted_macro_f1_by_one_hot, scores, target)
    assert plan.tape == "direct"  # one_hot(labels, C) batched as it is
    inferred = lambda s, y: (torch.nn.functional.one_hot(s.argmax(1)) * torch.nn.functional.one_hot(y, C)).sum() \
        / y.numel()  # noqa: E731  (num_classes inferred from the labels: not batched by hand)
    with pytest.warns(UserWarning, match="one anchor at a time"):  # vmap wants the number too
        metric, plan = _checked(inferred, scores, target)
    assert plan.tape != "direct"
    assert metric.structure(plan).chain is None
    torch.testing.assert_close(metric.metric(scores, target), inferred(scores, target))


def running_accuracy(s, y):
    return ((s.argmax(1) == y).float().cumsum(0) / torch.arange(1, len(y) + 1)).mean()  # a cumulative sum: no cut



def test_counts_that_decode_to_more_bits_than_chain_elements_take_the_chain_through_evaluate():
    # 30 rows of 3 comparisons: within 600 elements the runs' counts would take 20 points, each decoded to 90
    # bits (1,800 elements); the chain through evaluate takes 5 points of 90 bits instead
    scores, target = _classes(seed=4)
    metric, plan = _checked(running_accuracy, scores, target)
    assert metric.structure(plan).evaluate_zeros is not None
    with _limits.limits(chain_elements=600):
        structure = metric.structure(plan)
        assert structure.evaluate_zeros is None and structure.chain is None
        assert torch.equal(torch.as_tensor(structure.runs), torch.as_tensor(3))  # the runs stay, for the pull
        loss, grad = _loss_and_grad(from_metric(running_accuracy), scores, target, pull=0.0)
        loss_ref, grad_ref = _loss_and_grad(_Plain(from_metric(running_accuracy)), scores, target, pull=0.0)
    torch.testing.assert_close(loss, loss_ref)
    torch.testing.assert_close(grad, grad_ref)


# ------------------------------------------------------------- a sum per row, then their mean: the rest cut again

def samples_jaccard_weighted(s, y):  # each row's IoU, rows weighed by a tensor of fn's own
    pred, pos = s > 0, y == 1
    weights = torch.linspace(1.0, 2.0, s.shape[0])
    inter, union = (pred & pos).float().sum(dim=1), (pred | pos).float().sum(dim=1)
    return ((inter / union.clamp_min(1)) * weights).sum() / weights.sum()


def groups_mostly_exact(s, y):  # three sums deep: rows exact, the share of exact rows per group, groups above half
    exact = ((s > 0) == (y == 1)).all(1).float()
    share = exact.reshape(4, -1).mean(1)
    return (share >= 0.5).float().mean() + share.mean()


def per_image_accuracy(s, y):  # s [n, C, H, W]: each image's pixel accuracy, then the images above 0.8 and the mean
    correct = (s.argmax(1) == y).float().mean(dim=(1, 2))
    return (correct >= 0.8).float().mean() + correct.sqrt().mean()


def row_shares(s, y):  # each row's hits over all hits: a changing total broadcast over the rows, then a max
    hits = ((s > 0) & (y == 1)).float().sum(1)
    return (hits / hits.sum().clamp_min(1)).max()


def repeated_rows(s, y):  # each row's sum read twice (an element in two places): its changes stop there, its values go on
    hits = ((s > 0) & (y == 1)).sum(1)
    return hits[torch.arange(s.shape[0]).repeat_interleave(2)].float().mean()


def cumulative_label_counts(s, y):  # each label's hits, then their running total: a cumsum after the sums
    hits = ((s > 0) & (y == 1)).sum(0)
    return hits.cumsum(0).float().mean()


NESTED = [subset_accuracy, row_recall, any_and_counted, samples_f1, samples_jaccard_weighted, groups_mostly_exact,
          row_shares, repeated_rows, cumulative_label_counts]


def test_the_steps_after_the_sums_are_taken_on_their_changes_up_to_a_changing_number_broadcast():
    for fn, walk, rest in [(samples_f1, 6, 6), (samples_jaccard_weighted, 5, 5), (groups_mostly_exact, 8, 8),
                           (subset_accuracy, 2, 2), (macro_f1, 5, 5), (micro_f1, 3, 3), (flat_keepdim_dtype, 5, 5),
                           (row_shares, 2, 4),  # hits.sum(), its clamp_min; not hits / that, nor the max after it
                           (repeated_rows, 3, 3)]:  # its index is a move until it runs (a row in two places)
        scores, target = _multilabel(n=24)
        metric, plan = _checked(fn, scores, target)
        tape = plan.trace.tape
        site = plan.sites[0]
        indices = {site.index} | {a for a, o in plan.trace.aliases.items() if o == site.index}
        split = traced._split_at_sums(tape, [(indices, site.num_runs())])
        assert (split.walk, len(split.rest)) == (walk, rest), fn.__name__
        assert len(split.widths) == walk + 1 and split.widths[-1] >= 1


@pytest.mark.parametrize("nest", [0, traced._NEST, float("inf")], ids=["always", "default", "never"])
@pytest.mark.parametrize("fn", NESTED, ids=lambda f: f.__name__)
def test_the_chain_cut_again_is_the_tape_at_every_point(fn, nest, monkeypatch):
    monkeypatch.setattr(traced, "_NEST", nest)
    scores, target = _multilabel(n=24)
    metric, plan = _checked(fn, scores, target)
    chain = metric.structure(plan).chain
    assert chain is not None and list(metric._sums.values()) == [True]
    l = scores.numel()
    for seed in range(3):
        rank = torch.randperm(l, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(chain(rank).double(), _every_point(metric, plan, rank).double(), rtol=1e-6,
                                   atol=1e-7, equal_nan=True)


def test_rows_sums_are_taken_on_their_changes_at_the_defaults(monkeypatch):
    scores, target = _multilabel(n=200, labels=6, seed=4)
    metric, plan = _checked(samples_f1, scores, target)
    calls = []
    nested = traced._events_sums  # on this path, the sums after the first ones only
    monkeypatch.setattr(traced, "_events_sums", lambda *args: calls.append(1) or nested(*args))
    rank = torch.randperm(scores.numel(), generator=torch.Generator().manual_seed(0))
    values = metric.structure(plan).chain(rank)
    assert calls  # a [1201, 200] count of each row at every point would be 200 times the 1,200 elements
    at = torch.arange(0, scores.numel() + 1, 97)
    torch.testing.assert_close(values[at].double(), _every_point(metric, plan, rank)[at].double(), rtol=1e-6,
                               atol=1e-7)


@pytest.mark.parametrize("fn", [samples_f1, groups_mostly_exact], ids=lambda f: f.__name__)
def test_a_cut_again_gives_the_loss_and_gradient_without_the_cut(fn, monkeypatch):
    monkeypatch.setattr(traced, "_NEST", 0)
    _same_as_without_the_cut(fn, *_multilabel(n=40, seed=1), monkeypatch)


def test_samples_f1_through_the_cut_is_scikit_learns_on_the_hard_scores():
    sklearn = pytest.importorskip("sklearn.metrics")
    scores, target = _multilabel(n=60, labels=5, seed=5)
    metric = from_metric(samples_f1)
    reference = sklearn.f1_score(target.numpy(), (scores > 0).long().numpy(), average="samples", zero_division=0)
    assert abs(float(metric.metric(scores, target)) - reference) < 1e-6


@pytest.mark.parametrize("nest", [0, float("inf")], ids=["always", "never"])
@pytest.mark.parametrize("fn", [per_image_accuracy, mean_iou_by_bincount], ids=lambda f: f.__name__)
def test_an_argmax_through_sums_and_on_is_the_tape_at_every_point(fn, nest, monkeypatch):
    monkeypatch.setattr(traced, "_NEST", nest)  # a confusion matrix: its diagonal, its sums, each class's IoU
    _argmax_chain_is_the_tape(fn, n=5, seed=3, spatial=(4, 3))


def test_the_steps_taken_on_the_changes_are_those_that_cost_least():
    split = traced._SumSplit([], [], [], [], {}, elements=10 ** 6, walk=3, widths=[50, 50, 10, 1])
    step = traced._STEP + 4 * 10 ** 6  # each step on the changes, in elements of values at every point
    assert traced._boundary(split, 9) == 0  # 10 points: 500 elements at every point, against a step
    points = 2 * step // 40  # 40 elements fewer at every point pay for two steps: b = 2 just does
    costs = [b * step + (points + 1) * w for b, w in enumerate(split.widths)]
    assert traced._boundary(split, points) == costs.index(min(costs)) == 2
    assert traced._boundary(split, 100 * step) == 3  # the last step's single value at every point


def test_a_confusion_matrix_is_taken_on_its_changes_at_the_defaults():
    g = torch.Generator().manual_seed(0)  # the benchmark's mean IoU: 4,096 pixels, 21 classes
    y = torch.randint(0, 21, (4, 32, 32), generator=g)
    x = torch.randn(4, 21, 32, 32, generator=g) + 2.0 * torch.nn.functional.one_hot(y, 21).movedim(-1, 1)

    def mean_iou(s, y):
        pred = s.argmax(1)
        confusion = torch.bincount((y * 21 + pred).reshape(-1), minlength=21 * 21).reshape(21, 21)
        inter = confusion.diag()
        return (inter / (confusion.sum(0) + confusion.sum(1) - inter).clamp_min(1)).mean()

    metric = from_metric(mean_iou)
    plan = metric.prepare(x, y)
    site = plan.sites[0]
    split = traced._split_at_sums(plan.trace.tape, [({site.index}, site.num_runs())])
    assert split.walk == len(split.rest) == 9  # reshape, diag, two sums, the IoU's four steps, the mean
    b = traced._boundary(split, site.num_runs())  # not [4,097, 441] counts at every point, but the IoU's
    assert b >= 4 and split.widths[b] <= 42  # numerator and denominator, or fewer


# ------------------------------------------------------------- stacks, and an argmax with probed best outputs

def counts_stacked(s, y):  # each label's true and false positives side by side: stack along a new last dim
    pred, pos = s > 0, y == 1
    counts = torch.stack([pred & pos, pred & ~pos], dim=-1).sum(0)  # [labels, 2]
    return (counts[:, 0] / counts.sum(1).clamp_min(1)).mean()


def stacked_first(s, y):  # stack along dim 0
    pred, pos = s > 0, y == 1
    return torch.stack([pred & pos, pred & ~pos]).sum((1, 2)).float().softmax(0)[0]


def moved_and_indexed(s, y):  # as torchmetrics' multilabel functions: movedim, reshape, indexing by constants
    pred = (s > 0).reshape(s.shape[0], -1, 1).movedim(1, -1).reshape(s.shape[0], -1)
    keep = (torch.arange(s.shape[1]) != 2).nonzero().reshape(-1)  # constant indices: label 2 ignored
    exact = (pred == (y == 1)).index_select(1, keep).t().expand(2, -1, -1).all(1)  # [2, n]: each row, twice
    return exact.float().mean() + pred[::2, 1:].sum() / pred.numel()


def concatenated_with_a_constant(s, y):  # cat with a tensor not from the step: its elements follow no comparison
    pred = (s > 0).float()
    both = torch.cat([pred, torch.ones(1, s.shape[1])])
    return (both * torch.cat([y.float(), torch.zeros(1, s.shape[1])])).sum() / y.sum()


def along_the_diagonal(s, y):  # diag_embed makes zeros that follow no comparison
    return (torch.diag_embed((s[:, 0] > 0).float()) * y[:, :1]).sum() / y.numel()


@pytest.mark.parametrize("fn, cut", [(counts_stacked, True), (stacked_first, True), (moved_and_indexed, True),
                                     (concatenated_with_a_constant, False), (along_the_diagonal, False)],
                         ids=lambda c: getattr(c, "__name__", str(c)))
def test_operations_that_move_elements_are_followed_by_the_cut(fn, cut):
    scores, target = _multilabel()
    metric, plan = _checked(fn, scores, target)
    chain = metric.structure(plan).chain
    assert (chain is not None) == cut
    if cut:
        rank = torch.randperm(scores.numel(), generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(chain(rank).double(), _every_point(metric, plan, rank).double(), rtol=1e-6,
                                   atol=1e-7)


@pytest.mark.parametrize("name", ["multilabel_exact_match", "multilabel_hamming_distance"])
def test_torchmetrics_multilabel_functions_that_move_their_mask_take_the_cut(name):
    classification = pytest.importorskip("torchmetrics.functional.classification")
    scores, target = _multilabel(n=30, labels=4, seed=6)
    fn = lambda s, y: getattr(classification, name)(s, y, num_labels=4)  # noqa: E731
    metric, plan = _checked(fn, scores, target)
    chain = metric.structure(plan).chain
    assert chain is not None  # movedim and reshapes between the thresholded mask and its counts
    rank = torch.randperm(scores.numel(), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(chain(rank).double(), _every_point(metric, plan, rank).double(), rtol=1e-6, atol=1e-7)


def _heatmaps(n=6, joints=2, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    keypoints = torch.rand(n, joints, 2, generator=g) * (size - 1)
    visible = torch.rand(n, joints, generator=g) < 0.8
    visible[0, 0] = True
    normalizer = 2.0 + 2.0 * torch.rand(n, generator=g)
    return torch.randn(n, joints, size, size, generator=g), uniloss.KeypointTarget(keypoints, visible, normalizer)


def test_a_probed_argmax_chain_through_sums_is_the_tape_at_every_point():
    heat, target = _heatmaps()
    metric, plan = _checked(pck, heat, target)
    assert plan.sites[0].mode == "probe"  # the target holds keypoints: the best pixels are found by probing
    structure = metric.structure(plan)
    assert structure.chain is not None and structure.chain_by_runs  # a run per best pixel
    lengths = torch.as_tensor(structure.runs)  # every bit's best value is 1: a run is whole with no 0-bit
    runs = int(lengths.numel())
    assert metric.best(plan).all()
    for seed in range(3):
        turn = torch.randperm(runs, generator=torch.Generator().manual_seed(seed)) + 1
        at = torch.arange(runs + 1)
        zeros = torch.where(turn[None] <= at[:, None], 0.0, lengths[None].float())  # a run whole from its turn
        torch.testing.assert_close(structure.chain(turn, runs).double(), metric.evaluate_zeros(zeros, plan).double(),
                                   rtol=1e-6, atol=1e-7)


def test_pck_through_the_cut_is_uniloss_pck():
    heat, target = _heatmaps(n=8, seed=1)
    loss, grad = _loss_and_grad(from_metric(pck), heat, target)
    loss_ref, grad_ref = _loss_and_grad(uniloss.PCK(0.5), heat, target, calls=1)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-4, atol=1e-7)


def test_a_probed_cut_gives_the_loss_and_gradient_without_it(monkeypatch):
    _same_as_without_the_cut(pck, *_heatmaps(n=5, seed=2), monkeypatch)


# --------------------------------------------------------------------------- a boolean mask from the step

def kept_by_a_filter(s, y):  # torchmetrics' confusion matrices: x[x >= 0] drops ignore_index, here never
    code = ((s > 0).long() * 2 + y).reshape(-1)
    code = code[code >= 0]
    return torch.bincount(code, minlength=4)[3] / torch.bincount(code, minlength=4)[1:].sum().clamp_min(1)


def selected_by_the_step(s, y):  # a mask that differs between configurations: another shape for each
    return y.float()[s > 0].sum() / y.sum()


def test_a_filter_that_keeps_every_element_is_batched_and_cut():
    scores, target = _multilabel()
    metric, plan = _checked(kept_by_a_filter, scores, target)
    assert plan.tape == "direct"
    chain = metric.structure(plan).chain
    assert chain is not None
    rank = torch.randperm(scores.numel(), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(chain(rank).double(), _every_point(metric, plan, rank).double(), rtol=1e-6, atol=1e-7)


def test_a_mask_that_differs_between_configurations_replays_fn():
    scores, target = _multilabel()
    with pytest.warns(UserWarning, match="one anchor at a time"):
        metric, plan = _checked(selected_by_the_step, scores, target)
    assert plan.tape == "off"
    bits = torch.rand(6, scores.numel(), generator=torch.Generator().manual_seed(0)) < 0.5
    expected = torch.stack([selected_by_the_step(torch.where(b.reshape(scores.shape), 1.0, -1.0), target)
                            for b in bits])  # a bit: a score above 0
    torch.testing.assert_close(metric.evaluate(bits, plan).double(), expected.double())


def test_torchmetrics_multilabel_jaccard_takes_the_cut():
    classification = pytest.importorskip("torchmetrics.functional.classification")
    scores, target = _multilabel(n=30, labels=4, seed=7)
    fn = lambda s, y: classification.multilabel_jaccard_index(s, y, num_labels=4)  # noqa: E731
    metric, plan = _checked(fn, scores, target)
    assert plan.tape == "direct"  # its filter of ignore_index keeps every element
    chain = metric.structure(plan).chain
    assert chain is not None
    rank = torch.randperm(scores.numel(), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(chain(rank).double(), _every_point(metric, plan, rank).double(), rtol=1e-6, atol=1e-7)


def test_torchmetrics_matthews_branches_on_its_counts_and_is_fns_value():
    classification = pytest.importorskip("torchmetrics.functional.classification")
    scores, target = _multilabel(n=40, labels=1, seed=8)
    p, y = scores.reshape(-1).sigmoid(), target.reshape(-1)
    traced = from_metric(classification.binary_matthews_corrcoef)  # its branches: tests/test_traced_guards.py
    assert float(traced.metric(p, y)) == pytest.approx(float(classification.binary_matthews_corrcoef(p, y)))
    scores[0, 0] = 0.5  # no tie: the zoo's metric counts a tied comparison as wrong, torchmetrics' as below
    two = torch.cat([-scores, scores], dim=1)  # a binary task as two classes: zoo's MCC is torchmetrics' value
    expected = classification.binary_matthews_corrcoef((scores.reshape(-1) > 0).long(), target.reshape(-1))
    assert abs(float(zoo.matthews_corrcoef(2).metric(two, target.reshape(-1))) - float(expected)) < 1e-6


# --------------------------------------------------------------------------- probes through the sums

def concordance(s, y):  # of the pairs the target orders, those the scores order alike: a pair's best not in y
    ordered = (y[:, None] > y[None, :]).float()
    return ((s[:, None] > s[None, :]).float() * ordered).sum() / ordered.sum()


def thresholds_counted(s, y):  # the thresholds a sample passes, against a target count
    passed = (s[:, None] > torch.tensor([-1.0, 0.0, 1.0])).sum(1)
    return (passed == y).float().mean()


def _graded(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g), torch.randint(0, 4, (n,), generator=g)


def kendall_by_sign(s, y):  # tau-b: torch.sign of all pairs, two comparisons with 0 each
    a, b = torch.sign(s[:, None] - s[None, :]), torch.sign(y[:, None] - y[None, :]).float()
    return (a * b).sum() / (a.abs().sum() * b.abs().sum()).sqrt()


def directional(s, y):  # the sign of each score against the target's
    return (torch.sign(s) == torch.sign(y - 1.5)).float().mean()


def sign_error(s, y):  # elementwise after the sign, not linear in it; moved by a constant flip; best 0 for grade 1
    aim = torch.where(y == 1, 0.3, torch.sign(y - 1.5))  # (a sign of 0 best: -1 and 1 not alike on the way)
    return -((torch.sign(s).flip(0) - aim.flip(0)) ** 2).mean()


SIGNS = [kendall_by_sign, directional, sign_error]
PROBED = [(concordance, _graded), (thresholds_counted, _graded), (pck, lambda seed=0: _heatmaps(n=5, seed=seed)),
          (kendall_by_sign, _graded), (directional, _graded)]


@pytest.mark.parametrize("fn", SIGNS, ids=lambda f: f.__name__)
def test_a_sign_chain_through_sums_is_the_tape_at_every_point(fn):
    scores, target = _graded(n=12, seed=1)
    scores[3] = 0.0  # a sign of 0 now: both comparisons wrong, or neither
    metric, plan = _checked(fn, scores, target)
    chain = metric.structure(plan).chain
    assert chain is not None and list(metric._sums.values()) == [True]
    l = metric.best(plan).numel()  # each element's two comparisons turn at two points
    for seed in range(3):
        rank = torch.randperm(l, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(chain(rank).double(), _every_point(metric, plan, rank).double(), rtol=1e-6,
                                   atol=1e-7)


@pytest.mark.parametrize("fn", SIGNS, ids=lambda f: f.__name__)
def test_a_sign_cut_gives_the_loss_and_gradient_without_it(fn, monkeypatch):
    _same_as_without_the_cut(fn, *_graded(n=16, seed=2), monkeypatch)


def _cut_probes(monkeypatch):
    """Counts the probes taken through the sums (``traced._probe_by_sums``), at any size."""
    monkeypatch.setattr(traced, "_PROBES_CUT", 0)
    calls = []
    original = traced._probe_by_sums

    def counted(*args, **kwargs):
        calls.append(args[-2].numel())
        return original(*args, **kwargs)

    monkeypatch.setattr(traced, "_probe_by_sums", counted)
    return calls


def test_a_pair_probed_through_the_sums_is_best_where_the_target_orders_it(monkeypatch):
    calls = _cut_probes(monkeypatch)
    monkeypatch.setattr(traced, "_PROBES_CUT", 1 << 20)  # the default: 4,097 replays of 4,096 pairs are past it
    metric = from_metric(concordance)
    loss = uniloss.UniLoss(metric)
    for seed in range(3):  # the first call checks the cut against the replays, the others take it alone
        scores, target = _graded(n=64, seed=seed)
        loss(scores.requires_grad_(), target)
    assert calls == [64 * 64] * 3 and list(metric._probes.values()) == [True]
    replays = []
    monkeypatch.setattr(traced.TracedMetric, "_values", lambda self, plan, payloads, sites: replays.append(
        next(iter(payloads.values())).shape[0]))
    plan = metric.prepare(scores, target)
    assert replays == []  # no configuration replayed: 4,096 of them before
    ordered = target[:, None] > target[None, :]
    hard = scores[:, None] > scores[None, :]  # a pair the target does not order: flipping it changes nothing
    torch.testing.assert_close(metric.best(plan), torch.where(ordered, True, hard).reshape(-1))


@pytest.mark.parametrize("fn, data", PROBED, ids=lambda f: getattr(f, "__name__", ""))
def test_probes_through_the_sums_give_the_loss_and_gradient_of_the_replays(fn, data, monkeypatch):
    scores, target = data(seed=3)
    calls = _cut_probes(monkeypatch)
    with_cut = from_metric(fn)
    loss, grad = _loss_and_grad(with_cut, scores, target)
    assert len(calls) == 3 and list(with_cut._probes.values()) == [True]

    def refused(*args, **kwargs):
        raise RuntimeError("no cut")

    monkeypatch.setattr(traced, "_probe_by_sums", refused)
    without = from_metric(fn)
    loss_ref, grad_ref = _loss_and_grad(without, scores, target)
    assert list(without._probes.values()) == [False]
    torch.testing.assert_close(loss, loss_ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-5, atol=1e-7)


def within_the_grade(s, y):  # two steps, both probed (no 0/1 tensor of the target fits): the others held
    return ((s > y - 0.5) & (s < y + 0.5)).float().mean()


def edges_counted(s, y):  # the same two steps' outputs side by side in one sum: each element follows one
    return torch.cat([s > y - 0.5, s < y + 0.5]).float().mean()


@pytest.mark.parametrize("fn", [within_the_grade, edges_counted], ids=lambda f: f.__name__)
def test_probes_of_several_steps_through_the_sums_give_the_loss_and_gradient_of_the_replays(fn, monkeypatch):
    scores, target = _graded(seed=5)
    scores = scores + target
    calls = _cut_probes(monkeypatch)
    with_cut = from_metric(fn)
    loss, grad = _loss_and_grad(with_cut, scores, target)
    assert len(calls) == 2 * 3 and list(with_cut._probes.values()) == [True, True]
    monkeypatch.setattr(traced, "_probe_by_sums", lambda *args, **kwargs: 1 / 0)
    without = from_metric(fn)
    loss_ref, grad_ref = _loss_and_grad(without, scores, target)
    assert list(without._probes.values()) == [False, False]
    torch.testing.assert_close(loss, loss_ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-5, atol=1e-7)
    low, high = scores < target - 0.5, scores > target + 0.5
    assert bool((grad[low] < 0).all() and (grad[high] > 0).all())  # each pushed into its band


def test_probes_through_the_sums_that_disagree_with_the_replays_are_dropped(monkeypatch):
    monkeypatch.setattr(traced, "_PROBES_CUT", 0)  # the cut tried at any size
    original = traced._probe_by_sums
    monkeypatch.setattr(traced, "_probe_by_sums", lambda *a, **k: 1.0 - original(*a, **k))  # every verdict reversed
    scores, target = _graded(seed=4)
    metric = from_metric(concordance)
    loss, grad = _loss_and_grad(metric, scores, target)
    assert list(metric._probes.values()) == [False]
    monkeypatch.setattr(traced, "_probe_by_sums", original)
    loss_ref, grad_ref = _loss_and_grad(from_metric(concordance), scores, target)
    torch.testing.assert_close(loss, loss_ref)
    torch.testing.assert_close(grad, grad_ref)


def test_small_probes_are_replayed_in_one_batch(monkeypatch):
    calls = _cut_probes(monkeypatch)
    monkeypatch.setattr(traced, "_PROBES_CUT", 1 << 20)  # the default: 5 x 2 heatmaps of 8 x 8 pixels fall short
    heat, target = _heatmaps(n=5, seed=3)
    metric = from_metric(pck)
    _loss_and_grad(metric, heat, target)
    assert calls == [] and metric._probes == {}
