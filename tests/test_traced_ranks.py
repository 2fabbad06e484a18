"""from_metric's chain through a ranking: a traced ranking of one query with 0/1 relevance, read
as ``t[order]`` and then through elementwise operations, cumulative sums, moves (slices, flips,
``cat`` with constants: torchmetrics' precision-recall curve) and sums (AP and AUROC written with
``argsort`` or ``sort``), gives the chain's ``l + 1`` values from the swap of two neighbouring
slots at each point (``O(l log l)``) instead of replaying the tape at every point (``O(l n)``);
``topk`` with a label per row likewise, from each row's last ``k`` turns.

The reference is the tape itself, replayed on every one of the ``l + 1`` configurations of a
chain (the engine's path without the cut), and the loss and gradient of the same metric with
the cut turned off; a metric the cut cannot take must fall back to that path.
"""

import functools

import pytest
import torch

import uniloss
import uniloss._traced as traced
from test_traced_sums import (_a_failing_cut_falls_back, _a_wrong_cut_is_dropped, _checked, _every_point,
                              _loss_and_grad, _same_as_without_the_cut, _takes_no_cut)
from uniloss import _limits
from uniloss import from_metric


def _binary(n=13, seed=0, tie=False):
    g = torch.Generator().manual_seed(seed)
    target = (torch.rand(n, generator=g) < 0.35).long()
    target[0], target[1] = 1, 0
    scores = torch.randn(n, generator=g) + target
    if tie:
        scores[2] = scores[0]  # a relevant item tied with another item
    return scores, target


def ap_argsort(s, y):
    relevant = y[torch.argsort(s, descending=True)].float()
    precision = relevant.cumsum(0) / torch.arange(1, s.numel() + 1)
    return (precision * relevant).sum() / relevant.sum()


def ap_sort_bool(s, y):
    relevant = (y == 1)[s.sort(descending=True).indices]  # a bool table; cumsum of bools is int64
    hits = relevant.cumsum(0)
    return (hits / torch.arange(1, s.numel() + 1) * relevant).sum() / relevant.sum()


def ap_negated(s, y):
    relevant = y[(-s).argsort()].double()  # ascending of -s: descending of s, looked through
    return (relevant.cumsum(0) * relevant / torch.arange(1.0, s.numel() + 1)).sum() / relevant.sum()


def auroc_ascending(s, y):
    relevant = y[s.argsort()].double()  # worst first: the slots counted from the other end
    below = (1 - relevant).cumsum(0)
    return (below * relevant).sum() / (relevant.sum() * (1 - relevant).sum())


def ap_of_a_table(s, y):
    table = 2 * y + 3  # 5 on the relevant items, 3 on the others
    read = table[s.argsort(descending=True)]
    relevant = (read - 3) / 2
    return (relevant.cumsum(0) / torch.arange(1, s.numel() + 1) * relevant).mean() * s.numel() / y.sum()


def counted_hits(s, y):
    relevant = y[s.argsort(descending=True)]
    hits = relevant.cumsum(0) * relevant  # each relevant item's count of relevant items at or above it
    return torch.count_nonzero(hits > 2).float() + (hits == 1).any().float() + (hits < 5).all().float()


def ap_from_its_curve(s, y):
    relevant = y[s.argsort(descending=True)].float()
    tps = relevant.cumsum(0)
    precision, recall = tps / torch.arange(1, s.numel() + 1), tps / tps[-1]  # tps[-1]: a number that holds
    precision = torch.cat([precision.flip(0), torch.ones(1)])  # the curve's end, as scikit-learn's
    recall = torch.cat([recall.flip(0), torch.zeros(1)])
    return -torch.sum((recall[1:] - recall[:-1]) * precision[:-1])


def moved_items(s, y):
    relevant = y[s.argsort(descending=True)].float()
    first = relevant.narrow(0, 0, s.numel() - 1)
    reversed_ = relevant.index_select(0, torch.arange(s.numel() - 1, -1, -1))
    return (first.cumsum(0) * relevant[1:]).sum() + (reversed_ * relevant[torch.arange(s.numel())]).sum()


def discounted_cumsum(s, y):
    discount = 1.0 / torch.arange(1, s.numel() + 1)
    return (y[s.argsort(descending=True)].float() * discount).cumsum(0).sum()  # changes that do not cancel


def ap_cumsum_in_float64(s, y):
    relevant = (y == 1)[s.argsort(descending=True)]
    hits = relevant.cumsum(0, dtype=torch.float64)  # bools summed into another dtype
    return (hits / torch.arange(1, s.numel() + 1) * relevant).sum() / relevant.sum()


def through_a_nan(s, y):
    relevant = y[s.argsort(descending=True)].float()
    hits = relevant.cumsum(0)
    seen = torch.nan_to_num(hits / hits)  # 0/0 above the first relevant item: NaN on the way, then 0
    return (seen * relevant * hits / torch.arange(1, s.numel() + 1)).sum()


def auroc_flipped(s, y):
    relevant = y[s.argsort(descending=True)].double()
    below = (1 - relevant).flip(0).cumsum(0).flip(0)  # the irrelevant items at or below each slot
    return (below * relevant).sum() / (relevant.sum() * (1 - relevant).sum())


def inner_slots_from_the_bottom(s, y):
    relevant = y[s.argsort(descending=True)].double()
    precision = relevant.cumsum(0) / torch.arange(1, s.numel() + 1)
    picked = torch.arange(s.numel() - 2, 0, -1)  # reorders the slots and drops both ends
    above = relevant[picked].flip(0).cumsum(0)  # a cumsum after the move: a swap's changes cancel
    return (precision[picked] * above).sum() / relevant.sum()


RANKED = [ap_cumsum_in_float64, ap_argsort, ap_sort_bool, ap_negated, auroc_ascending, ap_of_a_table, counted_hits, ap_from_its_curve,
          moved_items, discounted_cumsum, through_a_nan, auroc_flipped, inner_slots_from_the_bottom]


def precision_at_3(s, y):
    return y[s.argsort(descending=True)].float().cumsum(0)[2] / 3  # an index after the cumsum


def weighted_table(s, y):
    weights = torch.linspace(1.0, 2.0, s.numel()) * y  # relevant items weigh differently
    return weights[s.argsort(descending=True)].cumsum(0).sum()


def order_read_twice(s, y):
    order = s.argsort(descending=True)
    return (y[order].float().cumsum(0) * (order < 5)).sum()  # the order itself read again


def sorted_values_read(s, y):
    values, order = s.sort(descending=True)
    return (y[order].float() * (values.detach() > 0)).sum()  # sort's values: the scores, read


def expanded(s, y):
    relevant = y[s.argsort(descending=True)].float()
    return (relevant[:, None].expand(-1, 2) * torch.tensor([1.0, 2.0])).sum()  # a matrix of the items


def changing_number_broadcast(s, y):
    relevant = y[s.argsort(descending=True)].float()
    hits = relevant.cumsum(0)
    return (relevant * hits[3]).sum()  # hits[3] changes along the chain: every element would


NOT_RANKED = [precision_at_3, weighted_table, order_read_twice, sorted_values_read, expanded]


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("fn", RANKED, ids=lambda f: f.__name__)
def test_the_chain_through_a_ranking_is_the_tape_at_every_point(fn, tie):
    scores, target = _binary(tie=tie)
    metric, plan = _checked(fn, scores, target)
    assert plan.tape == "direct"
    chain = metric.structure(plan).chain
    assert chain is not None, "the cut should take this metric"
    assert list(metric._sums.values()) == [True]
    l = metric.best(plan).numel()
    for seed in range(3):
        rank = torch.randperm(l, generator=torch.Generator().manual_seed(seed))
        values, reference = chain(rank), _every_point(metric, plan, rank)
        assert values.shape == (l + 1,)
        torch.testing.assert_close(values.double(), reference.double(), rtol=1e-6, atol=1e-7)


def test_the_chain_of_ap_ends_at_one_and_starts_at_the_worst_ranking():
    scores, target = _binary(n=9, seed=3)
    metric, plan = _checked(ap_argsort, scores, target)
    num_pos, n = int(target.sum()), target.numel()
    l = num_pos * (n - num_pos)
    values = metric.structure(plan).chain(torch.randperm(l, generator=torch.Generator().manual_seed(0)))
    worst = sum((k + 1) / (n - num_pos + k + 1) for k in range(num_pos)) / num_pos  # every relevant item last
    torch.testing.assert_close(values[0].double(), torch.tensor(worst, dtype=torch.float64))
    assert float(values[-1]) == 1.0


@pytest.mark.parametrize("fn", NOT_RANKED, ids=lambda f: f.__name__)
def test_a_ranking_read_otherwise_takes_the_tape_at_every_point(fn):
    _takes_no_cut(fn, *_binary())


@pytest.mark.parametrize("fn, n", [(discounted_cumsum, 60), (changing_number_broadcast, 13)],
                         ids=["changes that do not cancel, past the budget", "a changing number broadcast"])
def test_a_cut_that_cannot_follow_the_changes_is_dropped_and_remembered(fn, n, monkeypatch):
    """Taken by the split, refused when run (a cumulative sum whose changes reach more than a few
    times the points' elements; a number that changes, broadcast over the items): the first
    call's check keeps the tape, with its loss and gradient."""
    scores, target = _binary(n=n)
    metric, plan = _checked(fn, scores, target)
    assert traced._split_at_ranks(plan.trace.tape, {plan.sites[0].index: plan.sites[0]}) is not None
    assert list(metric._sums.values()) == [False]
    _, grad = _loss_and_grad(metric, scores, target)
    monkeypatch.setattr(traced.TracedMetric, "_chain_by_ranks", lambda self, plan: None)
    torch.testing.assert_close(grad, _loss_and_grad(from_metric(fn), scores, target)[1])


def test_torchmetrics_binary_average_precision_takes_the_cut(monkeypatch):
    """Its curve: ``target[order] == 1``, a cumulative sum, indexing by its distinct scores' places
    (held: every place, for untied scores), ``tps[-1]``, flips, ``cat`` with the curve's end,
    slices and ``isnan``/``where``: exact at every point, and the loss and gradient without it."""
    classification = pytest.importorskip("torchmetrics.functional.classification")
    fn = classification.binary_average_precision
    scores, target = _binary(n=30, seed=2)
    metric, plan = _checked(fn, scores, target)
    chain = metric.structure(plan).chain
    assert chain is not None and list(metric._sums.values()) == [True]
    rank = torch.randperm(metric.best(plan).numel(), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(chain(rank).double(), _every_point(metric, plan, rank).double(), rtol=1e-6, atol=1e-7)
    _same_as_without_the_cut(fn, scores, target, monkeypatch, name="_chain_by_ranks")


@pytest.mark.parametrize("fn", RANKED, ids=lambda f: f.__name__)
def test_the_loss_and_gradient_are_those_without_the_cut(fn, monkeypatch):
    n = 16 if fn is discounted_cumsum else 40  # its changes pass the budget at 40 (the test below)
    _same_as_without_the_cut(fn, *_binary(n=n, seed=1), monkeypatch, name="_chain_by_ranks")


def test_a_cut_that_disagrees_with_the_tape_is_dropped(monkeypatch):
    _a_wrong_cut_is_dropped(ap_argsort, *_binary(), "_chain_by_ranks", monkeypatch)


def test_a_cut_that_fails_later_falls_back_to_the_tape(monkeypatch):
    _a_failing_cut_falls_back(ap_argsort, *_binary(), "_chain_by_ranks", monkeypatch)


def test_the_cut_stays_within_chain_elements():
    """Its sums at every point and the changes it holds, two a point for each of its steps' results
    (AP by argsort: four, float, cumsum, the division and the product), within ``chain_elements``."""
    scores, target = _binary()
    metric, plan = _checked(ap_argsort, scores, target)
    l = metric.best(plan).numel()
    with _limits.limits(chain_elements=2 * (l + 1) * 4 - 1):
        assert metric.structure(plan).chain is None
    with _limits.limits(chain_elements=2 * (l + 1) * 4):
        assert metric.structure(plan).chain is not None


def test_the_cut_is_exact_where_the_tape_at_every_point_would_pass_chain_elements():
    """Where the tape at every point (``[l + 1, n]``) passes ``chain_elements`` the engine takes
    fewer points, segment-averaged; the cut holds two sums at every point and stays exact."""
    scores, target = _binary(n=120, seed=4)
    metric, plan = _checked(ap_argsort, scores, target)
    l = metric.best(plan).numel()
    rank = torch.randperm(l, generator=torch.Generator().manual_seed(0))
    with _limits.limits(chain_elements=(l + 1) * 8):  # the cut's own bound: 2 (l + 1) per step
        assert (l + 1) * scores.numel() > _limits.current_limits().chain_elements
        values = metric.structure(plan).chain(rank)
    torch.testing.assert_close(values.double(), _every_point(metric, plan, rank).double(), rtol=1e-6, atol=1e-7)


def test_ap_through_the_cut_is_scikit_learns_on_the_hard_scores():
    sklearn = pytest.importorskip("sklearn.metrics")
    scores, target = _binary(n=300, seed=5)
    metric = from_metric(ap_argsort)
    loss = uniloss.UniLoss(metric)
    loss(scores.clone().requires_grad_(), target).backward()
    assert list(metric._sums.values()) == [True]
    reference = sklearn.average_precision_score(target.numpy(), scores.numpy())
    assert float(loss.last.metric) == pytest.approx(reference, abs=1e-6)


def _classes(n=12, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, c, (n,), generator=g)
    return torch.randn(n, c, generator=g) + torch.nn.functional.one_hot(target, c), target


def top2_accuracy(s, y):
    return (s.topk(2, dim=1).indices == y[:, None]).any(dim=1).float().mean()


def top_all_but_none(s, y):  # k = C: the label always in; its slot changes
    idx = s.topk(s.shape[1], dim=1).indices
    return ((idx == y[:, None]).float() * torch.arange(s.shape[1], 0, -1)).sum() / y.numel()


def top2_columns(s, y):  # topk along dim 0 of the transposed scores: the output's elements in another order
    return (s.t().topk(2, dim=0).indices == y[None, :]).any(dim=0).float().mean()


def top3_weighted_slots(s, y):
    hit = s.topk(3, dim=1).indices == y[:, None]
    return (hit.float() * torch.tensor([1.0, 0.5, 0.25])).sum(1).mean()  # reciprocal-rank-like, per row


TOPK = [top2_accuracy, top_all_but_none, top2_columns, top3_weighted_slots]


@pytest.mark.parametrize("fn", TOPK, ids=lambda f: f.__name__)
def test_the_chain_through_topk_with_labels_is_the_tape_at_every_point(fn, monkeypatch):
    """topk with a label per row: the label climbs one slot at each of its row's last k turns,
    swapping with the class it passes; read through elementwise steps and sums per row."""
    scores, target = _classes()
    metric, plan = _checked(fn, scores, target)
    chain = metric.structure(plan).chain
    assert chain is not None and list(metric._sums.values()) == [True]
    l = metric.best(plan).numel()
    for seed in range(3):
        rank = torch.randperm(l, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(chain(rank).double(), _every_point(metric, plan, rank).double(), rtol=1e-6,
                                   atol=1e-7)
    _same_as_without_the_cut(fn, *_classes(n=30, seed=1), monkeypatch, name="_chain_by_ranks")


def test_topk_read_by_a_cumulative_sum_of_rows_takes_the_tape():
    """A cumulative sum along the rows of a matrix: the cut's cumsum runs along a vector only."""
    _takes_no_cut(lambda s, y: (s.topk(3, dim=1).indices == y[:, None]).float().cumsum(1).sum(), *_classes())



def _values_by_hand(e, span):
    """Each element's value at every point ``0 .. span - 1``, a loop over its changes."""
    out = e.start.repeat(span, 1).clone()
    for code, value in zip(e.code.tolist(), e.value.tolist()):
        out[code % span:, code // span] = value
    return out


@pytest.mark.parametrize("seed", range(4))
def test_tensors_aligned_to_one_key_set_keep_their_values_at_every_point(seed):
    """``_aligned`` puts tensors held at different codes on the union of them: each keeps its
    value at every point (a loop over its changes), elements with no change included."""
    g = torch.Generator().manual_seed(seed)
    span, width = 11, 6
    events = []
    for count in (9, 14, 0, 5):
        code = torch.unique(torch.randint(0, width, (count,), generator=g) * span +
                            torch.randint(1, span, (count,), generator=g))
        events.append(traced._Events(torch.randn(width, generator=g, dtype=torch.float64), code,
                                     torch.randn(code.numel(), generator=g, dtype=torch.float64)))
    aligned = traced._aligned(events, span, {})
    keys = aligned[0].code
    assert all(a.code is keys for a in aligned)
    assert torch.equal(keys, torch.unique(torch.cat([e.code for e in events])))
    for a, e in zip(aligned, events):
        torch.testing.assert_close(_values_by_hand(a, span), _values_by_hand(e, span), rtol=0, atol=0)


def _ranking_loss_batch(seed, skipped):
    """[12, 4] scores and 0/1 labels whose rows ``skipped`` hold no relevant label (torchmetrics'
    label ranking loss filters those rows out before it ranks)."""
    g = torch.Generator().manual_seed(seed)
    target = (torch.rand(12, 4, generator=g) < 0.4).long()
    target[:, 0] = 1  # every row has a relevant label and an irrelevant one ...
    target[:, 1] = 0
    target[list(skipped)] = 0  # ... but the skipped rows
    return torch.randn(12, 4, generator=g) + target, target


def test_a_ranking_after_a_row_filter_takes_the_filtered_target_as_its_relevance():
    """torchmetrics' ``multilabel_ranking_loss`` ranks ``preds[mask]``, the rows with some but not
    every label relevant, a mask from the target: the relevance is the target under the same
    filter (it raised a ``TraceError`` before). The loss and gradient are those of fn replayed at
    every configuration; the best configuration (each row's relevant labels first) scores 0; and
    a second batch of the same shapes whose filter keeps other rows is traced anew, not given the
    first batch's filter."""
    classification = pytest.importorskip("torchmetrics.functional.classification")

    def fn(s, y):
        return classification.multilabel_ranking_loss(s, y, num_labels=4)

    metric = from_metric(fn, higher_is_better=False)
    for seed, skipped in ((0, (2, 7)), (1, (0, 5))):  # the same number of rows kept, other rows
        scores, target = _ranking_loss_batch(seed, skipped)
        out = []
        for m in (metric, from_metric(fn, higher_is_better=False, batched="loop")):
            x = scores.clone().requires_grad_()
            loss = uniloss.UniLoss(m, generator=torch.Generator().manual_seed(0))
            value = loss(x, target)
            value.backward()
            out.append((value.detach(), x.grad))
            assert float(loss.last.metric) == pytest.approx(float(fn(scores, target)), abs=1e-6)
        torch.testing.assert_close(out[0][0], out[1][0])
        torch.testing.assert_close(out[0][1], out[1][1])
        plan = metric.prepare(scores, target)
        keep = torch.ones(12, dtype=torch.bool)
        keep[list(skipped)] = False
        site = plan.sites[0]
        relevance = traced._relevance_candidates(site.call, [target])
        torch.testing.assert_close(relevance[0].reshape(-1, 4).long(), target[keep])
        assert float(metric.evaluate(metric.best(plan)[None], plan)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("bound", [1_000, 2 ** 31 - 1, 2 ** 31, 2 ** 40])
def test_codes_sort_in_int32_where_they_fit_and_give_torchs_order(bound):
    """The codes' unique keys, their places and their order are ``torch.unique``'s and
    ``argsort``'s, on both sides of int32's range (int64 keys back either way)."""
    g = torch.Generator().manual_seed(0)
    code = torch.randint(0, min(bound, 2 ** 62), (500,), generator=g)
    keys, where = traced._unique_codes(code, bound)
    want_keys, want_where = torch.unique(code, return_inverse=True)
    assert keys.dtype == torch.int64 and torch.equal(keys, want_keys) and torch.equal(where, want_where)
    distinct = want_keys[torch.randperm(want_keys.numel(), generator=g)]
    assert torch.equal(distinct[traced._argsort_codes(distinct, bound)], want_keys)


@pytest.mark.parametrize("seed", range(3))
def test_a_cumulative_sum_of_swaps_holds_only_the_changes_of_its_values(seed):
    """A swap of neighbours changes one element of a cumulative sum: its events hold that one
    (half the input's codes), and its values at every point are the cumulative sums of the
    input's."""
    g = torch.Generator().manual_seed(seed)
    width, points = 9, 12
    span = points + 1
    start = (torch.rand(width, generator=g) < 0.5).long()
    codes, values, now = [], [], start.clone()
    for p in range(1, span):  # at each point a 1 moves one slot down, where there is one to move
        at = [i for i in range(width - 1) if now[i] == 1 and now[i + 1] == 0]
        if not at:
            continue
        i = at[int(torch.randint(0, len(at), (1,), generator=g))]
        now[i], now[i + 1] = 0, 1
        codes += [i * span + p, (i + 1) * span + p]
        values += [0, 1]
    order = torch.tensor(codes).argsort()
    e = traced._Events(start, torch.tensor(codes)[order], torch.tensor(values)[order])
    out = traced._events_cumsum(e, start.cumsum(0), span, 10_000, {})
    assert out.code.numel() == len(codes) // 2
    torch.testing.assert_close(_values_by_hand(out, span), _values_by_hand(e, span).cumsum(1), rtol=0, atol=0)


def _best_value(metric, scores, target):
    plan = metric.prepare(scores, target)
    return float(metric.evaluate(metric.best(plan)[None], plan)[0]), plan


@pytest.mark.parametrize("name", ["multiclass_auroc", "multiclass_average_precision"])
def test_a_curve_per_class_ranks_its_class_on_top(name):
    """torchmetrics' one-vs-rest curves rank each class's column and read ``target[order] == c``:
    each ranking's relevance is its class against the others (not the labels' order), so the best
    configuration scores 1 and each class's comparisons are its items against the others'."""
    classification = pytest.importorskip("torchmetrics.functional.classification")
    fn = functools.partial(getattr(classification, name), num_classes=4)
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (32,), generator=g)
    value, plan = _best_value(from_metric(fn), torch.randn(32, 4, generator=g), target)
    assert value == pytest.approx(1.0)
    counts = torch.bincount(target, minlength=4)
    assert [s.num_bits for s in plan.sites] == [int(c * (32 - c)) for c in counts]


def test_a_metric_of_one_grade_against_the_rest_ranks_that_grade_alone():
    """Precision@3 of the items of grade 3: one grade on top, the others' order reads nothing."""
    g = torch.Generator().manual_seed(1)
    relevance = torch.randint(0, 4, (20,), generator=g)
    fn = lambda s, r: (r[s.argsort(descending=True)][:3] == 3).float().mean()  # noqa: E731
    value, plan = _best_value(from_metric(fn), torch.randn(20, generator=g), relevance)
    assert value == 1.0
    assert plan.num_bits == int((relevance == 3).sum() * (relevance != 3).sum())


@pytest.mark.parametrize("top", [1, 5])
def test_a_graded_metric_keeps_its_grades(top):
    """DCG@3 of four grades reads the order below the top grade too (with ``top`` items of the top
    grade, more than three of them included): its best configuration is the ideal ranking's."""
    g = torch.Generator().manual_seed(2)
    relevance = torch.cat([torch.full((top,), 3), torch.randint(0, 3, (20 - top,), generator=g)])
    relevance = relevance[torch.randperm(20, generator=g)]

    def dcg3(s, r):
        gains = r[s.argsort(descending=True)][:3].float()
        return (gains / torch.log2(torch.arange(2, 5, dtype=torch.float32))).sum()

    value, plan = _best_value(from_metric(dcg3), torch.randn(20, generator=g), relevance)
    ideal = relevance.sort(descending=True).values[:3].float()
    assert value == pytest.approx(float((ideal / torch.log2(torch.arange(2, 5, dtype=torch.float32))).sum()))
    pairs = sum(int((relevance == a).sum() * (relevance == b).sum()) for a in range(4) for b in range(a))
    assert plan.num_bits == pairs  # every pair of different grades


def _classes_batch(n=24, classes=3, absent=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.arange(n) % (classes - 1 if absent else classes)  # every class present, or the last absent
    target = target[torch.randperm(n, generator=g)]
    return torch.randn(n, classes, generator=g) + torch.nn.functional.one_hot(target, classes), target


def _per_class_ap(s, y):
    """Mean over the classes of each class's AP, its column ranked by its own ``argsort``: the
    ranking reads the labels (``y[order]``), not a 0/1 relevance, and compares them with the class."""
    aps = []
    for c in range(s.shape[1]):
        hits = (y[s[:, c].argsort(descending=True)] == c).float()
        aps.append(((hits.cumsum(0) / torch.arange(1, len(y) + 1)) * hits).sum() / hits.sum().clamp_min(1))
    return torch.stack(aps).mean()


@pytest.mark.parametrize("absent", [False, True], ids=["every class", "a class absent"])
@pytest.mark.parametrize("name", ["multiclass_auroc", "multiclass_average_precision", "per_class_ap"])
@pytest.mark.filterwarnings("ignore:No positive samples in targets",  # torchmetrics on the absent class, on purpose
                            "ignore:Average precision score for one or more")
def test_a_ranking_per_class_takes_the_chain_through_its_swaps(name, absent, monkeypatch):
    """One binary ranking per class, each reading the labels in its order: each point's swap is of
    one of its class's items with another item, whose labels say what the two slots read, so the
    chain is exact at every point (the tape at every point) through every class's curve, a class
    without comparisons included; the same loss and gradient as without the cut."""
    if name == "per_class_ap":
        fn = _per_class_ap
    else:
        classification = pytest.importorskip("torchmetrics.functional.classification")
        fn = functools.partial(getattr(classification, name), num_classes=3)
    scores, target = _classes_batch(absent=absent)
    metric, plan = _checked(fn, scores, target)
    assert len(plan.sites) == 3 and all(s.binary for s in plan.sites)
    chain = metric.structure(plan).chain
    assert chain is not None and list(metric._sums.values()) == [True]
    rank = torch.randperm(plan.num_bits, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(chain(rank).double(), _every_point(metric, plan, rank).double(), rtol=1e-6, atol=1e-7)
    _same_as_without_the_cut(fn, scores, target, monkeypatch, name="_chain_by_ranks")


def _ap_at_the_positives(s, y):  # the curve read at places given by the target: another index each call
    relevant = y[s.argsort(descending=True)].float()
    precision = relevant.cumsum(0) / torch.arange(1, len(s) + 1)
    at = torch.nonzero(y).reshape(-1)
    return (precision * relevant)[at].sum() / y.sum() + precision[1:].mean() / 100


def test_a_move_keeps_what_its_constants_decide_across_calls_and_nothing_else():
    """A move by slices (``precision[1:]``) keeps its map of elements in the program across calls;
    one by a tensor of the call (``[at]``) decides it again: each call's loss and gradient are a
    fresh metric's."""
    kept = uniloss.UniLoss(uniloss.from_metric(_ap_at_the_positives))
    g = torch.Generator().manual_seed(0)
    for call in range(4):  # the same shapes and number of positives, the positives elsewhere
        y = torch.zeros(24, dtype=torch.long)
        y[torch.randperm(24, generator=g)[:6]] = 1
        s = torch.randn(24, generator=g) + y
        x, fresh = s.clone().requires_grad_(), s.clone().requires_grad_()
        loss = kept(x, y)
        loss.backward()
        reference = uniloss.UniLoss(uniloss.from_metric(_ap_at_the_positives))(fresh, y)
        reference.backward()
        torch.testing.assert_close(loss, reference)
        torch.testing.assert_close(x.grad, fresh.grad)
    tape = kept.decomposition.prepare(s, y).trace.tape
    assert any(step.memo for step in tape.steps) and any(step.memo is None for step in tape.steps if step.kind == "op")
