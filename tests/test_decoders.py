"""Decoders and DecodedMetric: decoding equals the ordinary decoder on bits from real scores, the
documented rule on inconsistent bits (against loop references), the paper's decompositions
reproduced bit for bit, evaluators batched by vmap or a loop, and errors naming the argument."""

import dataclasses
import functools
import itertools
import math
import typing

import pytest
import torch

import uniloss
from uniloss import functional as F
from uniloss._decomposition import StaticLayout, prepare_with_layout
from uniloss.decoders import Argmax, PixelArgmax, Ranking, RankingTarget, SpatialArgmax, Threshold, TopK


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _decode_scores(dec, scores, target):
    plan = dec.prepare(scores, target)
    return dec.decode((dec.comparisons(scores, plan) > 0)[None], plan)[0]


def _random_bits(dec, scores, target, t=12, seed=0):
    plan = dec.prepare(scores, target)
    l = dec.comparisons(scores, plan).numel()
    return plan, torch.rand(t, l, generator=_gen(seed)) < 0.5


# ------------------------------------------------------------------ loop references


def wins_loop(bits, m):
    """Wins of each of m items from the bits of pairs (j, k), j < k, bit 1 = k wins."""
    wins = [0] * m
    for bit, (j, k) in zip(bits, itertools.combinations(range(m), 2)):
        wins[k if bit else j] += 1
    return wins


def copeland_order(wins):
    return sorted(range(len(wins)), key=lambda i: (-wins[i], i))


def ranks_by_stable_sort(scores, query):
    """0-based position of each item within its query, by score descending, ties by index."""
    ranks = [0] * len(scores)
    for q in set(query):
        items = sorted((i for i in range(len(scores)) if query[i] == q), key=lambda i: (-scores[i], i))
        for pos, i in enumerate(items):
            ranks[i] = pos
    return ranks


def grade_fill_loop(bits, a, b, grade, query):
    """Ranking's rule for pruned pairs, one query, grade and item at a time."""
    n = len(grade)
    lower_wins = [0] * n  # less relevant items that beat each item
    for bit, ai in zip(bits, a):
        lower_wins[ai] += 0 if bit else 1
    ranks = [None] * n
    for q in set(query):
        items = [i for i in range(n) if query[i] == q]
        free = list(range(len(items)))
        for g in sorted({grade[i] for i in items}):
            members = sorted((i for i in items if grade[i] == g), key=lambda i: (lower_wins[i], i))
            slots = [free[lower_wins[i] + place] for place, i in enumerate(members)]
            for i, s in zip(members, slots):
                ranks[i] = s
            free = [s for s in free if s not in slots]
    return ranks


# ------------------------------------------------------------------ argmax, top-k, pixel argmax


CLASS_SHAPES = [(1, 2), (7, 3), (33, 5), (16, 10)]


@pytest.mark.parametrize("n,c", CLASS_SHAPES)
@pytest.mark.parametrize("pairs", ["all", "target"])
def test_argmax_decodes_like_argmax(n, c, pairs):
    scores = torch.randn(n, c, generator=_gen(n * c), dtype=torch.float64)
    target = torch.randint(0, c, (n,), generator=_gen(1))
    dec = Argmax(pairs)
    assert torch.equal(_decode_scores(dec, scores, target), scores.argmax(1))
    plan = dec.prepare(scores, target)
    assert torch.equal(dec.decode(dec.best(plan)[None], plan)[0], target)
    expected = c * (c - 1) // 2 if pairs == "all" else c - 1
    assert dec.comparisons(scores, plan).numel() == n * expected


def test_argmax_ties_go_to_the_lower_class_like_torch_argmax():
    scores = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0], [3.0, 3.0, 3.0]])
    for pairs in ("all", "target"):
        assert torch.equal(_decode_scores(Argmax(pairs), scores, torch.tensor([2, 0, 1])), scores.argmax(1))


def test_argmax_target_pairs_count_a_tie_against_the_target_like_multiclass_accuracy():
    scores = torch.tensor([[2.0, 2.0], [1.0, 1.0]])
    target = torch.tensor([0, 1])
    assert _decode_scores(Argmax("target"), scores, target).tolist() == [1, 0]  # argmax would say [0, 0]
    assert _decode_scores(PixelArgmax("target"), scores[..., None], target[:, None]).reshape(-1).tolist() == [1, 0]
    assert float(uniloss.MulticlassAccuracy().metric(scores, target)) == 0.0


def test_argmax_all_pairs_on_inconsistent_bits_most_wins_lowest_index():
    scores = torch.randn(6, 4, generator=_gen(0))
    dec = Argmax("all")
    plan, bits = _random_bits(dec, scores, torch.zeros(6, dtype=torch.long), t=20)
    ours = dec.decode(bits, plan)
    for t, row in enumerate(bits.reshape(20, 6, 6)):
        for i, sample in enumerate(row):
            wins = wins_loop(sample.tolist(), 4)
            assert int(ours[t, i]) == copeland_order(wins)[0]


def test_argmax_target_pairs_on_any_bits_target_iff_it_beats_all():
    scores = torch.randn(5, 4, generator=_gen(2))
    target = torch.tensor([0, 1, 2, 3, 1])
    dec = Argmax("target")
    plan, bits = _random_bits(dec, scores, target, t=30)
    ours = dec.decode(bits, plan)
    for t in range(30):
        for i in range(5):
            right = bool(bits[t].reshape(5, 3)[i].all())
            best_other = max((j for j in range(4) if j != int(target[i])), key=lambda j: float(scores[i, j]))
            assert int(ours[t, i]) == (int(target[i]) if right else best_other)


@pytest.mark.parametrize("k", [1, 2, 4, 6])
@pytest.mark.parametrize("pairs", ["all", "target"])
def test_top_k_decodes_like_topk(k, pairs):
    scores = torch.randn(20, 5, generator=_gen(k), dtype=torch.float64)
    target = torch.randint(0, 5, (20,), generator=_gen(3))
    mask = _decode_scores(TopK(k, pairs), scores, target)
    expected = torch.zeros_like(mask).scatter_(1, scores.topk(min(k, 5), dim=1).indices, True)
    assert torch.equal(mask, expected)
    plan = TopK(k, pairs).prepare(scores, target)
    best = TopK(k, pairs).decode(TopK(k, pairs).best(plan)[None], plan)[0]
    assert best.gather(1, target[:, None]).all() and (best.sum(1) == min(k, 5)).all()


def test_top_k_all_pairs_on_inconsistent_bits():
    scores = torch.randn(4, 5, generator=_gen(4))
    dec = TopK(2)
    plan, bits = _random_bits(dec, scores, torch.zeros(4, dtype=torch.long), t=10)
    ours = dec.decode(bits, plan)
    for t, row in enumerate(bits.reshape(10, 4, 10)):
        for i, sample in enumerate(row):
            top = copeland_order(wins_loop(sample.tolist(), 5))[:2]
            assert sorted(ours[t, i].nonzero().reshape(-1).tolist()) == sorted(top)


@pytest.mark.parametrize("pairs", ["all", "target"])
def test_pixel_argmax_decodes_label_maps(pairs):
    scores = torch.randn(2, 4, 5, 6, generator=_gen(5))
    target = torch.randint(0, 4, (2, 5, 6), generator=_gen(6))
    dec = PixelArgmax(pairs)
    assert torch.equal(_decode_scores(dec, scores, target), scores.argmax(1))
    plan = dec.prepare(scores, target)
    assert torch.equal(dec.decode(dec.best(plan)[None], plan)[0], target)


# ------------------------------------------------------------------ threshold


def test_threshold_decodes_like_comparison_and_best_is_target():
    scores = torch.randn(4, 3, generator=_gen(7))
    target = torch.rand(4, 3, generator=_gen(8)) < 0.5
    dec = Threshold(0.3)
    assert torch.equal(_decode_scores(dec, scores, target), scores > 0.3)
    plan = dec.prepare(scores, target)
    assert torch.equal(dec.decode(dec.best(plan)[None], plan)[0], target)


# ------------------------------------------------------------------ ranking


def _ranking_batch(n, num_queries, grades, seed):
    g = _gen(seed)
    scores = torch.randn(n, generator=g, dtype=torch.float64)
    relevance = torch.randint(0, grades, (n,), generator=g)
    query = torch.randint(0, num_queries, (n,), generator=g) * 7 + 3  # ids need not be 0..G-1
    return scores, RankingTarget(relevance, query)


@pytest.mark.parametrize("n,num_queries,grades", [(1, 1, 2), (9, 1, 2), (30, 4, 2), (25, 3, 4), (40, 1, 3)])
@pytest.mark.parametrize("seed", range(2))
def test_ranking_all_pairs_decodes_the_stable_sort(n, num_queries, grades, seed):
    scores, target = _ranking_batch(n, num_queries, grades, seed)
    ranks = _decode_scores(Ranking("all"), scores, target)
    assert ranks.tolist() == ranks_by_stable_sort(scores.tolist(), target.query.tolist())


@pytest.mark.parametrize("n,num_queries,grades", [(1, 1, 2), (9, 1, 2), (30, 4, 2), (25, 3, 4), (40, 1, 3)])
@pytest.mark.parametrize("pairs", ["relevance", "binary"])
@pytest.mark.parametrize("seed", range(2))
def test_pruned_ranking_gives_the_relevance_order_of_the_sort(n, num_queries, grades, pairs, seed):
    scores, target = _ranking_batch(n, num_queries, grades, seed)
    ranks = _decode_scores(Ranking(pairs), scores, target).tolist()
    truth = ranks_by_stable_sort(scores.tolist(), target.query.tolist())
    key = target.relevance.tolist() if pairs == "relevance" else (target.relevance > 0).long().tolist()
    query = target.query.tolist()
    for q in set(query):
        items = [i for i in range(n) if query[i] == q]
        ours = sorted(ranks[i] for i in items)
        assert ours == list(range(len(items)))  # a permutation of the query
        assert [key[i] for i in sorted(items, key=lambda i: ranks[i])] == [key[i] for i in sorted(items, key=lambda i: truth[i])]


def test_ranking_pairs_layout_and_counts():
    scores, target = _ranking_batch(20, 3, 3, 11)
    rel, query = target.relevance.tolist(), target.query.tolist()
    plan = Ranking().prepare(scores, target)
    order = sorted(range(20), key=lambda i: (query[i], -rel[i], i))
    expected = [(i, j) for i in order for j in order if query[i] == query[j] and rel[i] > rel[j]]
    assert list(zip(plan.a.tolist(), plan.b.tolist())) == expected
    plan = Ranking("all").prepare(scores, target)
    expected = [(j, i) for i in range(20) for j in range(i + 1, 20) if query[i] == query[j]]
    assert sorted(zip(plan.a.tolist(), plan.b.tolist())) == sorted(expected)


@pytest.mark.parametrize("pairs", ["relevance", "binary"])
@pytest.mark.parametrize("seed", range(2))
def test_pruned_ranking_on_inconsistent_bits_follows_the_grade_fill_rule(pairs, seed):
    scores, target = _ranking_batch(18, 3, 4, seed)
    dec = Ranking(pairs)
    plan, bits = _random_bits(dec, scores, target, t=8, seed=seed)
    ours = dec.decode(bits, plan)
    grade, query = plan.grade.tolist(), plan.target.query.tolist()
    for t in range(8):
        assert ours[t].tolist() == grade_fill_loop(bits[t].tolist(), plan.a.tolist(), plan.b.tolist(), grade, query)


@pytest.mark.parametrize("n,num_queries", [(2, 1), (37, 1), (64, 3), (50, 50)])
@pytest.mark.parametrize("static", [False, True])
def test_pruned_ranking_of_many_grades_follows_the_grade_fill_rule(n, num_queries, static):
    """A continuous relevance (every item its own grade; Spearman's rho through from_metric) and
    integer grades up to n, dynamic and static layouts: the merged decode against the loop."""
    g = _gen(n + num_queries)
    scores = torch.randn(n, generator=g, dtype=torch.float64)
    relevance = torch.randint(0, n, (n,), generator=g) if static else torch.randn(n, generator=g)
    target = RankingTarget(relevance, torch.randint(0, num_queries, (n,), generator=g))
    dec = Ranking("relevance", num_grades=n if static else None)
    layout = StaticLayout(1 << 20, (dec,)) if static else None
    plan = prepare_with_layout(dec, scores, target, None, layout)
    assert (layout is not None and layout.used) == static
    bits = torch.rand(9, dec.comparisons(scores, plan).numel(), generator=_gen(n)) < 0.5
    grade, query, a = plan.grade.tolist(), plan.target.query.tolist(), plan.a.tolist()
    if static:  # the padding pairs, 1 as the comparisons give them (an item against itself): none in the loop
        bits = bits | layout.padding
        keep = ~layout.padding
        ours, bits, a = dec.decode(bits, plan), bits[:, keep], plan.a[keep].tolist()
    else:
        ours = dec.decode(bits, plan)
    for t in range(9):
        assert ours[t].tolist() == grade_fill_loop(bits[t].tolist(), a, None, grade, query)


@pytest.mark.parametrize("n", [1, 2, 3, 8, 13, 64, 100])
def test_free_slots_decodes_an_inversion_table(n):
    """Each item, in order, takes the (skip + 1)-th free slot: a loop, against log2(n) merges."""
    from uniloss.decoders import _free_slots
    g = _gen(n)
    skip = torch.stack([torch.stack([torch.randint(0, n - k, (), generator=g) for k in range(n)]) for _ in range(7)])
    ours = _free_slots(skip)
    for row, mine in zip(skip.tolist(), ours.tolist()):
        free, slots = list(range(n)), []
        for k in row:
            slots.append(free.pop(k))
        assert mine == slots
    assert torch.equal(ours.sort(1).values, torch.arange(n).expand(7, n))  # a permutation


def test_ranking_all_pairs_on_inconsistent_bits_most_wins_then_index():
    scores, target = _ranking_batch(12, 2, 3, 5)
    dec = Ranking("all")
    plan, bits = _random_bits(dec, scores, target, t=6)
    ours = dec.decode(bits, plan)
    a, b, query = plan.a.tolist(), plan.b.tolist(), plan.target.query.tolist()
    for t in range(6):
        losses = [0] * 12
        for bit, ai, bi in zip(bits[t].tolist(), a, b):
            losses[bi if bit else ai] += 1
        assert ours[t].tolist() == ranks_by_stable_sort([-x for x in losses], query)


def test_ranking_best_decodes_to_an_ideal_ranking():
    scores, target = _ranking_batch(30, 3, 4, 2)
    for pairs in ("relevance", "binary", "all"):
        dec = Ranking(pairs)
        plan = dec.prepare(scores, target)
        ranks = dec.decode(dec.best(plan)[None], plan)[0].tolist()
        rel = target.relevance.tolist() if pairs != "binary" else (target.relevance > 0).long().tolist()
        for q in set(plan.target.query.tolist()):
            items = sorted((i for i in range(30) if plan.target.query[i] == q), key=lambda i: ranks[i])
            assert [rel[i] for i in items] == sorted((rel[i] for i in items), reverse=True)


# ------------------------------------------------------------------ spatial argmax


def _keypoint_batch(n, j, h, w, seed):
    g = _gen(seed)
    heat = torch.randn(n, j, h, w, generator=g, dtype=torch.float64)
    kp = torch.rand(n, j, 2, generator=g, dtype=torch.float64) * torch.tensor([w - 1, h - 1])
    vis = torch.rand(n, j, generator=g) < 0.8
    norm = 1 + 3 * torch.rand(n, generator=g, dtype=torch.float64)
    for a in range(n):  # some argmaxes at the joint so both outcomes occur
        for b in range(0, j, 2):
            heat[a, b, int(round(float(kp[a, b, 1]))), int(round(float(kp[a, b, 0])))] += 10
    return heat, uniloss.KeypointTarget(kp, vis, norm)


def _argmax_xy(heat):
    n, j, h, w = heat.shape
    flat = heat.reshape(n, j, -1).argmax(-1)
    return torch.stack([flat % w, flat // w], -1).to(heat.dtype)


@pytest.mark.parametrize("threshold", [None, 0.5, 1.0])
@pytest.mark.parametrize("seed", range(2))
def test_spatial_argmax_decodes_the_argmax_pixel(threshold, seed):
    heat, target = _keypoint_batch(2, 3, 5, 6, seed)
    dec = SpatialArgmax(threshold)
    assert torch.equal(_decode_scores(dec, heat, target), _argmax_xy(heat))


def test_spatial_argmax_best_is_the_keypoint_pixel():
    heat, target = _keypoint_batch(2, 2, 5, 5, 1)
    dec = SpatialArgmax()
    plan = dec.prepare(heat, target)
    xy = dec.decode(dec.best(plan)[None], plan)[0]
    vis = target.visible
    assert torch.equal(xy[vis], target.keypoints[vis].round())


def test_spatial_argmax_region_on_inconsistent_bits():
    heat, target = _keypoint_batch(2, 2, 4, 5, 3)
    dec = SpatialArgmax(threshold=1.0)
    plan, bits = _random_bits(dec, heat, target, t=10)
    ours = dec.decode(bits, plan)
    positive = uniloss.PCK(1.0).positive_mask(heat.shape, target)
    ia, ib = plan.region.pairs()
    comparisons = [(a, b) for a, b in zip(plan.region.pos_flat[ia].tolist(), plan.region.neg_flat[ib].tolist())]
    flat = heat.reshape(-1)
    for t in range(10):
        beaten = {a for (a, _), bit in zip(comparisons, bits[t].tolist()) if not bit}
        for s in range(2):
            for j in range(2):
                base = (s * 2 + j) * 20
                pixels = range(base, base + 20)
                if not target.visible[s, j]:
                    expected = max(pixels, key=lambda p: (float(flat[p]), -p))
                else:
                    pos = [p for p in pixels if positive.reshape(-1)[p]]
                    ok = [p for p in pos if p not in beaten]
                    pool = ok if ok else [p for p in pixels if not positive.reshape(-1)[p]]
                    expected = max(pool, key=lambda p: (float(flat[p]), -p))
                assert ours[t, s, j].tolist() == [(expected - base) % 5, (expected - base) // 5]


# ------------------------------------------------------------------ the paper's decompositions, reproduced


def _accuracy(pred, target):
    return (pred == target).float().mean(-1)


def _same_loss(a, b, scores, target, seed=0, atol=0.0, **options):
    la = F.uniloss(scores.clone().requires_grad_(), target, a, generator=_gen(seed), **options, interpolation="anchors")
    lb = F.uniloss(scores.clone().requires_grad_(), target, b, generator=_gen(seed), **options, interpolation="anchors")
    sa, sb = scores.clone().requires_grad_(), scores.clone().requires_grad_()
    F.uniloss(sa, target, a, generator=_gen(seed), **options, interpolation="anchors").backward()
    F.uniloss(sb, target, b, generator=_gen(seed), **options, interpolation="anchors").backward()
    assert torch.allclose(la, lb, atol=atol, rtol=0) and torch.allclose(sa.grad, sb.grad, atol=max(atol, 1e-12))


def _same_decomposition(ours, paper, scores, target, t=16):
    po, pp = ours.prepare(scores, target), paper.prepare(scores, target)
    assert torch.equal(ours.comparisons(scores, po), paper.comparisons(scores, pp))
    assert torch.equal(ours.best(po), paper.best(pp))
    bits = torch.rand(t, ours.comparisons(scores, po).numel(), generator=_gen(9)) < 0.5
    assert torch.allclose(ours.evaluate(bits, po).double(), paper.evaluate(bits, pp).double(), atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("n,c", [(8, 3), (64, 10)])
def test_argmax_target_with_accuracy_is_multiclass_accuracy(n, c):
    scores = torch.randn(n, c, generator=_gen(c), dtype=torch.float64)
    target = torch.randint(0, c, (n,), generator=_gen(n))
    ours = uniloss.DecodedMetric(Argmax("target"), _accuracy)
    _same_decomposition(ours, uniloss.MulticlassAccuracy(), scores, target)
    _same_decomposition(uniloss.zoo.top_k_accuracy(1), uniloss.MulticlassAccuracy(), scores, target)
    _same_loss(ours, uniloss.MulticlassAccuracy(), scores, target, atol=1e-12)
    # one kernel for the label against the other classes: the comparisons' gradient to the bit
    for metric in (ours, uniloss.MulticlassAccuracy()):
        s = scores.float().requires_grad_()
        comparisons = metric.comparisons(s, metric.prepare(s, target))
        cotangent = torch.randn(comparisons.shape, generator=_gen(5))
        (grad,) = torch.autograd.grad(comparisons, s, cotangent)
        others = torch.tensor([[j for j in range(c) if j != y] for y in target.tolist()])  # class order
        expected = torch.zeros(n, c).scatter_(1, others, -cotangent.view(n, c - 1))
        expected[torch.arange(n), target] = cotangent.view(n, c - 1).sum(1)
        assert torch.equal(grad, expected)


def test_argmax_all_pairs_with_accuracy_gives_the_same_metric():
    scores = torch.randn(40, 6, generator=_gen(1))
    target = torch.randint(0, 6, (40,), generator=_gen(2))
    ours = uniloss.DecodedMetric(Argmax("all"), _accuracy)
    assert float(ours.metric(scores, target)) == float(uniloss.MulticlassAccuracy().metric(scores, target))


@pytest.mark.parametrize("n", [2, 9, 40])
def test_ranking_with_ap_evaluator_is_average_precision(n):
    g = _gen(n)
    scores = torch.randn(n, generator=g, dtype=torch.float64)
    labels = (torch.rand(n, generator=g) < 0.35).long()
    labels[0], labels[1] = 1, 0
    ours = uniloss.zoo.average_precision()
    _same_decomposition(ours, uniloss.AveragePrecision(), scores, labels)
    # AP evaluates in float32. Ranking's comparisons have no runs (decoders.Decoder.runs), so the
    # pull is taken per comparison on both sides (AP's default takes it per positive).
    _same_loss(ours, uniloss.AveragePrecision(), scores, labels, atol=1e-6, pull_per="comparison")


def test_spatial_argmax_with_pck_evaluator_is_pck():
    heat, target = _keypoint_batch(2, 3, 6, 6, 4)
    _same_decomposition(uniloss.zoo.pck(0.7), uniloss.PCK(0.7), heat, target)
    # PCK evaluates in float32; SpatialArgmax's region has PCK's runs: the same pull per run
    _same_loss(uniloss.zoo.pck(0.7), uniloss.PCK(0.7), heat, target, atol=1e-6)


# ------------------------------------------------------------------ DecodedMetric: evaluators


def _f1_one(pred, target):
    """F1 of one prediction: no control flow on values, so vmap can batch it."""
    tp = (pred & target).sum()
    return 2 * tp / (pred.sum() + target.sum()).clamp_min(1)


def _f1_one_with_item(pred, target):
    tp = (pred & target).sum()
    if int(pred.sum() + target.sum()) == 0:  # data-dependent Python control flow: vmap cannot
        return torch.tensor(0.0)
    return 2 * tp / (pred.sum() + target.sum())


def _binary_batch(n=30, seed=0):
    g = _gen(seed)
    return torch.randn(n, generator=g), (torch.rand(n, generator=g) < 0.4).long()


def test_single_prediction_evaluator_batched_by_vmap_and_by_loop():
    scores, target = _binary_batch()
    batched = uniloss.zoo.f_beta(1.0)
    plan = batched.prepare(scores, target)
    bits = torch.rand(20, 30, generator=_gen(1)) < 0.5
    reference = batched.evaluate(bits, plan).double()  # the zoo computes in float32 for float32 scores
    for how, fn in ((False, _f1_one), ("loop", _f1_one), ("loop", _f1_one_with_item)):
        metric = uniloss.DecodedMetric(Threshold(0.0), fn, batched=how)
        assert torch.allclose(metric.evaluate(bits, plan).double(), reference, atol=1e-6)
        loss = uniloss.UniLoss(metric, generator=_gen(0), interpolation="anchors")(scores.clone().requires_grad_(), target)
        assert torch.isfinite(loss)


def test_vmap_failure_says_why_and_what_to_do():
    scores, target = _binary_batch()
    metric = uniloss.DecodedMetric(Threshold(0.0), _f1_one_with_item, batched=False)
    with pytest.raises(ValueError, match=r"`evaluator` \(_f1_one_with_item\).*vmap failed.*batched='loop'"):
        metric.metric(scores, target)


def test_evaluator_returning_the_wrong_shape_is_reported():
    scores, target = _binary_batch()
    metric = uniloss.DecodedMetric(Threshold(0.0), _f1_one)  # written for one prediction
    with pytest.raises(ValueError, match=r"return \[1\] values.*batched=False"):
        metric.metric(scores, target)


def test_torchmetrics_functional_evaluator_works_unchanged():
    classification = pytest.importorskip("torchmetrics.functional.classification")
    from sklearn.metrics import f1_score

    scores, target = _binary_batch(40, 3)
    reference = f1_score(target.numpy(), (scores > 0).numpy())
    vmapped = uniloss.DecodedMetric(Threshold(0.0), functools.partial(classification.binary_f1_score, validate_args=False), batched=False)
    looped = uniloss.DecodedMetric(Threshold(0.0), classification.binary_f1_score, batched="loop")
    for metric in (vmapped, looped):
        assert float(metric.metric(scores, target)) == pytest.approx(reference, abs=1e-6)
        plan = metric.prepare(scores, target)
        bits = torch.rand(8, 40, generator=_gen(2)) < 0.5
        assert torch.allclose(metric.evaluate(bits, plan).double(), uniloss.zoo.f_beta().evaluate(bits, plan).double(), atol=1e-6)
        scores_ = scores.clone().requires_grad_()
        uniloss.UniLoss(metric, generator=_gen(0), interpolation="anchors")(scores_, target).backward()
        assert torch.isfinite(scores_.grad).all()
    multiclass = functools.partial(classification.multiclass_f1_score, num_classes=4, average="macro")
    scores, labels = torch.randn(30, 4, generator=_gen(4)), torch.randint(0, 4, (30,), generator=_gen(5))
    metric = uniloss.DecodedMetric(Argmax(), multiclass, batched="loop")  # vmap cannot: data-dependent shapes
    assert float(metric.metric(scores, labels)) == pytest.approx(float(uniloss.zoo.macro_f1(4).metric(scores, labels)), abs=1e-6)


def test_decode_convenience_and_repr():
    metric = uniloss.zoo.macro_f1(3)
    scores = torch.randn(5, 3, generator=_gen(0))
    assert torch.equal(metric.decode(scores, torch.zeros(5, dtype=torch.long)), scores.argmax(1))
    assert repr(metric) == "DecodedMetric(Argmax(pairs='target', num_classes=3), macro_f1(num_classes=3), higher_is_better=True, batched=True)"


def test_lower_is_better_evaluator():
    scores, target = _binary_batch(20, 1)

    def error(pred, y):
        return (pred != y.bool()).float().mean(-1)

    metric = uniloss.DecodedMetric(Threshold(0.0), error, higher_is_better=False)
    loss_fn = uniloss.UniLoss(metric, generator=_gen(0), interpolation="anchors")
    loss = loss_fn(scores.clone().requires_grad_(), target).detach()
    assert float(loss.detach()) == pytest.approx(float(loss_fn.last.surrogate)) and float(loss.detach()) > 0


# ------------------------------------------------------------------ losses: gradients, devices, degenerate batches


DECODED = [
    (lambda: Argmax(), lambda g: (torch.randn(16, 5, generator=g), torch.randint(0, 5, (16,), generator=g))),
    (lambda: TopK(2, "all"), lambda g: (torch.randn(16, 5, generator=g), torch.randint(0, 5, (16,), generator=g))),
    (lambda: PixelArgmax(), lambda g: (torch.randn(2, 3, 4, 4, generator=g), torch.randint(0, 3, (2, 4, 4), generator=g))),
    (lambda: Ranking("all"), lambda g: (torch.randn(12, generator=g), RankingTarget(torch.randint(0, 3, (12,), generator=g), torch.arange(12) % 2))),
    (lambda: Ranking("relevance"), lambda g: (torch.randn(12, generator=g), RankingTarget(torch.randint(0, 3, (12,), generator=g), torch.arange(12) % 2))),
    (lambda: SpatialArgmax(), lambda g: _keypoint_batch(1, 2, 3, 3, 0)),
    (lambda: SpatialArgmax(0.5), lambda g: _keypoint_batch(1, 2, 5, 5, 0)),
]


def _to(target, device):
    if isinstance(target, tuple):
        return type(target)(*(None if x is None else x.to(device) for x in target))
    return target.to(device)


@pytest.mark.parametrize("make_decoder,make_batch", DECODED)
def test_generic_evaluator_loss_has_finite_gradient_and_is_deterministic(make_decoder, make_batch, device):
    scores, target = make_batch(_gen(0))
    scores, target = scores.to(device), _to(target, device)

    def agreement(decoded, _target):  # any evaluator on the decoded outputs
        return decoded.reshape(decoded.shape[0], -1).float().sin().mean(-1)

    metric = uniloss.DecodedMetric(make_decoder(), agreement)
    s = scores.detach().clone().requires_grad_()
    loss = F.uniloss(s, target, metric, generator=_gen(1), interpolation="anchors")
    loss.backward()
    assert torch.isfinite(s.grad).all() and loss.device == s.device
    again = F.uniloss(scores, target, metric, generator=_gen(1), interpolation="anchors")
    assert float(again.detach()) == float(loss.detach())


def test_ranking_batch_without_comparisons_gives_attached_zero_loss():
    scores = torch.randn(6, requires_grad=True)
    loss = F.uniloss(scores, torch.ones(6), uniloss.zoo.auroc(), pull_per="run", interpolation="anchors")
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.equal(scores.grad, torch.zeros(6))
    assert math.isnan(float(uniloss.zoo.auroc().metric(scores, torch.ones(6))))


def test_ranking_batch_without_comparisons_keeps_the_margin_pull():
    # One ranking, every item relevant: no comparison, but the pull on the margins (the default
    # pull_per="sample") is binary cross-entropy, which still pulls each score up.
    scores = torch.randn(6, requires_grad=True)
    loss = F.uniloss(scores, torch.ones(6), uniloss.zoo.auroc(), interpolation="anchors")
    (grad,) = torch.autograd.grad(loss, scores)
    (bce,) = torch.autograd.grad(torch.nn.functional.binary_cross_entropy_with_logits(scores, torch.ones(6)), scores)
    assert float(loss.detach()) == 0.0
    torch.testing.assert_close(grad, bce)


def _all_threshold_logistic(scores, relevance, boundaries):
    """The all-threshold ordinal logistic loss by hand: for every item the logistic losses of
    ``s > b - 1`` (grade >= b) or ``s < b - 1`` (grade < b) summed over the boundaries b = 1..B,
    averaged over the items."""
    terms = [torch.nn.functional.softplus(-(s - (b - 1)) if int(r) >= b else -((b - 1) - s))
             for s, r in zip(scores, relevance) for b in range(1, boundaries + 1)]
    return torch.stack(terms).sum() / len(scores)


@pytest.mark.parametrize("num_grades", [None, 5])
def test_graded_relevance_pulls_with_the_all_threshold_ordinal_logistic_loss(num_grades):
    # step="sum" adds the pull's gradient to the interpolation's: the difference of pull=1 and
    # pull=0 is the pull's own gradient, here the ordinal logistic loss's (num_grades: 4 boundaries
    # although the batch's highest grade is 3; without it, the batch's 3)
    g = torch.Generator().manual_seed(11)
    scores = (2 * torch.randn(16, generator=g, dtype=torch.float64)).requires_grad_()
    relevance = torch.tensor([0, 1, 2, 3, 0, 0, 1, 2, 0, 3, 1, 0, 0, 2, 1, 0])
    target = RankingTarget(relevance, torch.arange(16) // 8)
    metric = uniloss.zoo.ndcg_at_k(5, num_grades=num_grades)
    with_pull, without = (torch.autograd.grad(F.uniloss(scores, target, metric, pull=p, step="sum"), scores)[0]
                          for p in (1.0, 0.0))
    (expected,) = torch.autograd.grad(_all_threshold_logistic(scores, relevance, 4 if num_grades else 3), scores)
    torch.testing.assert_close(with_pull - without, expected)


def test_ordinal_margins_reduce_to_binary_cross_entropys_and_need_integer_grades():
    from uniloss._pairs import binary_margins, ordinal_margins

    s = torch.randn(7, generator=torch.Generator().manual_seed(12))
    level = torch.tensor([0, 2, 1, 0, 2, 2, 0])
    assert torch.equal(ordinal_margins(s, level.clamp_max(1), 1), binary_margins(s, level > 0)[:, None])
    expected = torch.stack([torch.stack([s[i] if level[i] >= 1 else -s[i], s[i] - 1 if level[i] >= 2 else 1 - s[i]])
                            for i in range(7)])
    torch.testing.assert_close(ordinal_margins(s, level, 2), expected)
    # relevance that is not a whole number has no levels: the pull per run (its item's comparisons)
    fractional = RankingTarget(torch.tensor([0.0, 0.5, 1.5, 0.0]))
    assert uniloss.zoo.ndcg_at_k(2).structure(uniloss.zoo.ndcg_at_k(2).prepare(s[:4], fractional)).margins is None
    whole = RankingTarget(torch.tensor([0.0, 1.0, 2.0, 0.0]))
    metric = uniloss.zoo.ndcg_at_k(2)
    torch.testing.assert_close(metric.structure(metric.prepare(s[:4], whole)).margins(s[:4]),
                               ordinal_margins(s[:4], torch.tensor([0, 1, 2, 0]), 2))


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: F.uniloss(torch.randn(4), torch.zeros(4, dtype=torch.long), uniloss.zoo.macro_f1(3), interpolation="anchors"), ValueError, r"`scores` of shape \[n, C\]"),
        (lambda: F.uniloss(torch.randn(4, 2), torch.zeros(4, dtype=torch.long), uniloss.zoo.macro_f1(3), interpolation="anchors"), ValueError, r"`scores` with 3 classes"),
        (lambda: F.uniloss(torch.randn(4, 3), torch.tensor([0, 1, 3, 0]), uniloss.zoo.macro_f1(3), interpolation="anchors"), ValueError, r"`target` to hold integers in \[0, 3\)"),
        (lambda: F.uniloss(torch.randn(2, 3, 4, 4), torch.zeros(2, 4, 5, dtype=torch.long), uniloss.zoo.mean_iou(3), interpolation="anchors"), ValueError, r"`target` of shape \[2, 4, 4\]"),
        (lambda: F.uniloss(torch.randn(4, 3), torch.zeros(4, 3, dtype=torch.long), uniloss.zoo.mean_iou(3), interpolation="anchors"), ValueError, r"`scores` of shape \[n, C, H, W\]"),
        (lambda: F.uniloss(torch.randn(5), torch.tensor([0, 2, 1, 0, 1]), uniloss.zoo.f_beta(), interpolation="anchors"), ValueError, r"`target` to hold only 0 and 1"),
        (lambda: F.uniloss(torch.randn(5), torch.ones(4), uniloss.zoo.recall(), interpolation="anchors"), ValueError, r"`target` of shape \[5\]"),
        (lambda: F.uniloss(torch.randn(5, 2), torch.ones(5), uniloss.zoo.mrr(), interpolation="anchors"), ValueError, r"`scores` of shape \[n\] or \[n, 1\]"),
        (lambda: F.uniloss(torch.randn(5), torch.tensor([1.0, -1, 0, 0, 1]), uniloss.zoo.ndcg_at_k(3), interpolation="anchors"), ValueError, r"`target.relevance` to be >= 0"),
        (lambda: F.uniloss(torch.randn(5), RankingTarget(torch.ones(5), torch.zeros(4, dtype=torch.long)), uniloss.zoo.mrr(), interpolation="anchors"), ValueError, r"`target.query` of shape \[5\]"),
        (lambda: F.uniloss(torch.randn(5), RankingTarget(torch.ones(5), torch.zeros(5)), uniloss.zoo.mrr(), interpolation="anchors"), TypeError, r"`target.query` to be an integer tensor"),
        (lambda: F.uniloss(torch.randn(5), (torch.ones(5), None, None), uniloss.zoo.mrr(), interpolation="anchors"), TypeError, r"`target` to be a RankingTarget"),
        (lambda: F.uniloss(torch.randn(1, 2, 4, 4), (torch.zeros(1, 2, 2),), uniloss.zoo.pck(), interpolation="anchors"), TypeError, r"`target` to be a KeypointTarget"),
        (lambda: Argmax("some"), ValueError, r"`pairs` to be one of \('all', 'target'\), but got 'some'"),
        (lambda: Ranking("target"), ValueError, r"`pairs` to be one of"),
        (lambda: TopK(0), ValueError, r"`k` > 0, but got 0"),
        (lambda: Threshold(float("nan")), ValueError, r"`threshold` to be a finite number"),
        (lambda: SpatialArgmax(-1.0), ValueError, r"`threshold`"),
        (lambda: uniloss.zoo.macro_f1(0), ValueError, r"`num_classes` > 0"),
        (lambda: uniloss.zoo.f_beta(beta=0), ValueError, r"`beta`"),
        (lambda: uniloss.zoo.precision_at_k(2.5), TypeError, r"`k` to be an int"),
        (lambda: uniloss.DecodedMetric(lambda s: s, _accuracy), TypeError, r"`decoder` to be a uniloss.decoders.Decoder"),
        (lambda: uniloss.DecodedMetric(Argmax(), "accuracy"), TypeError, r"`evaluator` to be callable"),
        (lambda: uniloss.DecodedMetric(Argmax(), _accuracy, batched="vmap"), ValueError, r"`batched` to be True, False or 'loop'"),
        (lambda: uniloss.DecodedMetric(Argmax(), _accuracy, higher_is_better=1), TypeError, r"`higher_is_better` to be a bool"),
        (lambda: Argmax().best(torch.zeros(3, dtype=torch.long)), TypeError, r"take the plan returned by \.prepare"),
    ],
)
def test_bad_input_raises_naming_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_public_names_have_docstrings_and_examples():
    for module in (uniloss.decoders, uniloss.zoo):
        for name in module.__all__:
            doc = getattr(module, name).__doc__
            assert doc and doc.strip(), f"{module.__name__}.{name} has no docstring"
    for name in uniloss.zoo.__all__:
        assert ">>>" in getattr(uniloss.zoo, name).__doc__, f"uniloss.zoo.{name} has no example"


@pytest.mark.parametrize("ties", [False, True])
def test_argmax_plans_hold_the_best_other_class_the_full_ranking_would_put_first(ties):
    # Argmax reads only each row's best other class: an argmax of the others (the first of those
    # tied), the first column of the stable descending sort TopK keeps; the same decoded labels
    from uniloss._pairs import other_classes
    from uniloss.decoders import ranked_others

    g = torch.Generator().manual_seed(3)
    rows = torch.randn(200, 7, generator=g)
    rows = rows.round() if ties else rows
    labels = torch.randint(0, 7, (200,), generator=g)
    cols = other_classes(labels, 7)
    full, best = ranked_others(rows, cols), ranked_others(rows, cols, everyone=False)
    assert best.shape == (200, 1) and torch.equal(best[:, 0], full[:, 0])
    if ties:
        assert (rows.gather(1, cols).max(1).values[:, None] == rows.gather(1, cols)).sum(1).max() > 1
    bits = torch.rand(5, 200 * 6, generator=g) < 0.7
    argmax = Argmax(pairs="target")
    plan = argmax.prepare(rows, labels)
    assert plan.ranked.shape == (200, 1) and TopK(2, pairs="target").prepare(rows, labels).ranked.shape == (200, 6)
    ranked_fully = dataclasses.replace(plan, ranked=full)
    assert torch.equal(argmax.decode(bits, plan), argmax.decode(bits, ranked_fully))
    assert all(torch.equal(a, b) for a, b in zip(argmax.toggled(plan), argmax.toggled(ranked_fully)))


@pytest.mark.parametrize("decoder, shape, c", [(Argmax(pairs="target"), (9,), 2), (Argmax(pairs="target"), (9,), 5),
                                               (PixelArgmax(pairs="target"), (2, 3, 4), 4)])
def test_argmax_decode_losses_is_decode_of_any_bits(decoder, shape, c):
    """Argmax's labels from each row's lost comparisons (what the zoo's metrics of counts read)
    equal decode of bits with those counts, consistent or not, tied scores included (the best
    other class the first of those tied)."""
    g = torch.Generator().manual_seed(c)
    scores = torch.randint(0, 3, (shape[0], c) + shape[1:], generator=g).float()  # ties
    target = torch.randint(0, c, shape, generator=g)
    plan = decoder.prepare(scores, target)
    rows = plan.labels.numel()
    bits = torch.rand(20, rows * (c - 1), generator=g) < 0.6
    losses = (~bits).view(20, rows, c - 1).sum(-1)
    assert torch.equal(decoder.decode_losses(losses, plan), decoder.decode(bits, plan))


def test_argmax_decode_losses_needs_the_target_pairs():
    tournament = Argmax(pairs="all")
    plan = tournament.prepare(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="tournament"):
        tournament.decode_losses(torch.zeros(1, 4), plan)


class _Decision(typing.NamedTuple):
    pred: torch.Tensor  # [..., n] bool
    count: torch.Tensor  # [...] how many predicted positive


class _ThresholdAndCount(Threshold):
    """A decoder whose output is a named tuple, and one whose output is a plain tuple."""

    def __init__(self, named=True):
        super().__init__(0.0)
        self.named = named

    def decode(self, bits, plan):
        pred = super().decode(bits, plan)
        return _Decision(pred, pred.sum(-1)) if self.named else (pred, pred.sum(-1))


def _f1_from_parts(decoded, target):  # works on one output or on a leading anchor dimension
    pred, count = decoded
    tp = (pred & target.bool()).sum(-1).double()
    return 2 * tp / (count.double() + target.sum().double())


@pytest.mark.parametrize("named", [True, False])
def test_a_decoder_that_returns_a_tuple_is_indexed_per_anchor_when_looped(named):
    """batched='loop' hands the evaluator one anchor's output at a time: each part of a tuple
    (named or not) indexed, the named tuple's type kept; batched=True gets the whole batch."""
    scores, target = _binary_batch(30, 2)
    seen = []

    def one(decoded, y):
        seen.append(type(decoded))
        assert decoded[0].shape == (30,) and decoded[1].shape == ()
        return _f1_from_parts(decoded, y)

    looped = uniloss.DecodedMetric(_ThresholdAndCount(named), one, batched="loop")
    whole = uniloss.DecodedMetric(_ThresholdAndCount(named), _f1_from_parts, batched=True)
    plan = whole.prepare(scores, target)
    bits = torch.rand(6, 30, generator=_gen(1)) < 0.5
    torch.testing.assert_close(looped.evaluate(bits, plan), whole.evaluate(bits, plan))
    assert seen == [_Decision if named else tuple] * 6
    reference = uniloss.zoo.f_beta().evaluate(bits, plan).double()
    torch.testing.assert_close(whole.evaluate(bits, plan), reference)  # the same F1 as the zoo's
    decoded = looped.decode(scores, target)  # the convenience: no anchor dimension
    assert type(decoded) is (_Decision if named else tuple) and torch.equal(decoded[0], scores > 0)


def test_a_decoder_output_that_is_neither_a_tensor_nor_a_tuple_is_named():
    class Listed(Threshold):
        def decode(self, bits, plan):
            return [super().decode(bits, plan)]

    scores, target = _binary_batch(10, 0)
    metric = uniloss.DecodedMetric(Listed(0.0), lambda d, y: d[0].float().mean(), batched="loop")
    with pytest.raises(TypeError, match="tensor or a tuple of tensors, but got list"):
        metric.metric(scores, target)
