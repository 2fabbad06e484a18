"""Regressions for issue #16, bugs 5, 6 and 8: double backward through the structured engine,
warnings for per-rank anchors and per-rank set metrics under torch.distributed, and the reported
metric on tied scores."""

import os
import pickle
import warnings

import pytest
import torch

import uniloss
from _reference import AboveOne, good_flips, run_ranks
from uniloss import _limits, zoo
from uniloss import functional as F
from uniloss.distributed import CrossBatchMemory, GlobalBatch


# ---------------------------------------------------------------------------- bug 5: double backward


_AboveOne = AboveOne


def _double_case(name, seed=0):
    """``(decomposition, scores float64, target)``."""
    g = torch.Generator().manual_seed(seed)
    if name == "ap":
        labels = (torch.rand(20, generator=g) < 0.3).long()
        labels[:2] = torch.tensor([0, 1])
        return uniloss.AveragePrecision(), torch.randn(20, generator=g, dtype=torch.float64), labels
    if name == "acc":
        return uniloss.MulticlassAccuracy(), torch.randn(9, 5, generator=g, dtype=torch.float64), torch.randint(
            0, 5, (9,), generator=g)
    if name == "pck":  # three bits per good anchor: flips held as [t, 3] indices
        keypoints = torch.rand(2, 2, 2, generator=g, dtype=torch.float64) * 4
        target = uniloss.KeypointTarget(keypoints, torch.ones(2, 2, dtype=torch.bool), torch.full((2,), 2.0))
        return uniloss.PCK(good_flips=3), torch.randn(2, 2, 5, 5, generator=g, dtype=torch.float64), target
    if name == "auroc":
        labels = torch.tensor([1, 0] * 8)
        return zoo.auroc(), torch.randn(16, generator=g, dtype=torch.float64), labels
    labels = (torch.rand(15, generator=g) < 0.5).long()
    return _AboveOne(), torch.randn(15, generator=g, dtype=torch.float64) + 1.0, labels


def _structured_anchors(dec, scores, target, seed=1, **counts):
    prepared = dec.prepare(scores, target, torch.Generator().manual_seed(9))
    c = dec.comparisons(scores, prepared).reshape(-1)
    counts = {"num_good": 6, "num_nearby": 5, "num_bad": 11, **counts}
    anchors = uniloss.sample_anchors(dec.best(prepared).reshape(-1), c > 0,
                                     good_flips=good_flips(dec, prepared, c.numel()),
                                     generator=torch.Generator().manual_seed(seed), **counts)
    return anchors, prepared


def _hessian_vector(scores, target, dec, vector, **kw):
    """``(d loss / ds, d (grad . vector) / ds)``: a Hessian-vector product through ``create_graph``."""
    s = scores.clone().requires_grad_(True)
    loss = F.uniloss(s, target, dec, **kw, interpolation="anchors")
    (grad,) = torch.autograd.grad(loss, s, create_graph=True)
    assert grad.requires_grad  # the structured engine's gradient was a constant for autograd
    (hv,) = torch.autograd.grad((grad * vector).sum(), s)
    return grad.detach(), hv


@pytest.fixture(params=["small", "blocks"])
def regime(request, monkeypatch):
    """Small problems form the anchors' disagreement densely; larger ones keep it structured (and
    the random anchors packed)."""
    if request.param == "blocks":
        monkeypatch.setattr(_limits, "LIMITS", _limits.LIMITS.override(dense_bits=0, unpack_bits=0))
    return request.param


@pytest.mark.parametrize("options", [dict(grad_scale=1.0, pull=0.0), dict(), dict(grad_scale="distance"),
                                     dict(distance="cross_entropy", temperature=0.7),
                                     dict(temperature_scale="rms", grad_scale="normalized")],
                         ids=["paper", "defaults", "distance", "cross_entropy", "rms"])
@pytest.mark.parametrize("name", ["ap", "acc", "pck", "auroc", "user"])
def test_structured_second_derivative_equals_the_dense_one(name, options, regime):
    dec, scores, target = _double_case(name)
    anchors, prepared = _structured_anchors(dec, scores, target)
    assert anchors.is_structured
    vector = torch.randn(scores.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    grad, hv = _hessian_vector(scores, prepared, dec, vector, anchors=anchors, **options)
    ref_grad, ref_hv = _hessian_vector(scores, prepared, dec, vector, anchors=anchors.dense(), **options)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-9, atol=1e-13)
    torch.testing.assert_close(hv, ref_hv, rtol=1e-8, atol=1e-12)
    assert hv.abs().sum() > 0
    # without create_graph the closed form still runs, and gives the same first derivative
    s = scores.clone().requires_grad_(True)
    (closed,) = torch.autograd.grad(F.uniloss(s, prepared, dec, anchors=anchors, **options, interpolation="anchors"), s)
    torch.testing.assert_close(closed, ref_grad, rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("regime_limits", [None, 0], ids=["small", "blocks"])
def test_structured_all_good_anchors_second_derivative_equals_its_dense_weighted_form(regime_limits, monkeypatch):
    """``good_anchors="all"``: the l single flips of best, weighted num_good / l; the dense
    reference repeats each anchor in proportion to its weight (here num_good = l, weight 1)."""
    if regime_limits is not None:
        monkeypatch.setattr(_limits, "LIMITS", _limits.LIMITS.override(dense_bits=regime_limits))
    dec, scores, target = _double_case("ap", seed=2)
    prepared = dec.prepare(scores, target)
    c = dec.comparisons(scores, prepared)
    l = c.numel()
    vector = torch.randn(scores.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    kw = dict(num_good=l, num_nearby=4, num_bad=5, grad_scale=1.0, pull=0.0)
    state = torch.Generator().manual_seed(5).get_state()
    grad, hv = _hessian_vector(scores, prepared, dec, vector, good_anchors="all",
                               generator=torch.Generator().set_state(state), **kw)
    # the same draws, good anchors excluded, then every single flip of best once
    sampled = uniloss.sample_anchors(dec.best(prepared), c > 0, num_good=0, num_nearby=4, num_bad=5,
                                     generator=torch.Generator().set_state(state)).dense()
    singles = ~torch.eye(l, dtype=torch.bool)
    dense = torch.cat([sampled[:1], singles, sampled[1:]])
    ref_grad, ref_hv = _hessian_vector(scores, prepared, dec, vector, anchors=dense, grad_scale=1.0, pull=0.0)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-9, atol=1e-13)
    torch.testing.assert_close(hv, ref_hv, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("name", ["ap", "acc", "pck"])
def test_structured_gradgradcheck(name):
    """The second derivative against finite differences of the first (fixed anchors, constant
    gradient scale: ``grad_scale=1.0`` and ``step="sum"``; the step factor, like the bounded
    scale, is a detached function of the comparisons)."""
    dec, scores, target = _double_case(name, seed=5)
    anchors, prepared = _structured_anchors(dec, scores, target, seed=6)

    def loss(s):
        return F.uniloss(s, prepared, dec, anchors=anchors, grad_scale=1.0, temperature=0.8, step="sum", interpolation="anchors")

    assert torch.autograd.gradgradcheck(loss, (scores.clone().requires_grad_(True),), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_gradient_penalty_through_the_module_equals_the_dense_path():
    """A gradient penalty on the inputs (WGAN-GP style) through UniLoss with sampled anchors (the
    structured engine): the parameters' gradient equals the dense path's on the same anchors."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 4, generator=g, dtype=torch.float64)
    y = (x[:, 0] + 0.3 * torch.randn(24, generator=g, dtype=torch.float64) > 0).long()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1)).double()

    def penalty_grads(loss_of_scores):
        xi = x.clone().requires_grad_(True)
        scores = model(xi)[:, 0]
        loss = loss_of_scores(scores)
        (gx,) = torch.autograd.grad(loss, xi, create_graph=True)
        total = loss + 10.0 * gx.square().sum()
        return torch.autograd.grad(total, list(model.parameters()))

    loss_fn = uniloss.UniLoss(uniloss.AveragePrecision(), generator=torch.Generator().manual_seed(7), interpolation="anchors")
    ours = penalty_grads(lambda s: loss_fn(s, y))
    with torch.no_grad():
        s = model(x)[:, 0]
        dec = uniloss.AveragePrecision()
        prepared = dec.prepare(s, y)
        c = dec.comparisons(s, prepared)
        anchors = uniloss.sample_anchors(dec.best(prepared), c > 0, generator=torch.Generator().manual_seed(7))
    ref = penalty_grads(lambda s: F.uniloss(s, y, dec, anchors=anchors.dense(), interpolation="anchors"))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)


def test_block_by_block_double_backward_raises_naming_chunk_bits():
    g = torch.Generator().manual_seed(0)
    heat = torch.randn(2, 2, 6, 6, generator=g, dtype=torch.float64, requires_grad=True)
    target = uniloss.KeypointTarget(torch.rand(2, 2, 2, generator=g, dtype=torch.float64) * 5,
                                    torch.ones(2, 2, dtype=torch.bool), torch.full((2,), 2.0))
    loss_fn = uniloss.UniLoss(uniloss.PCK(), chunk_bits=40, generator=torch.Generator().manual_seed(1), interpolation="anchors")
    loss = loss_fn(heat, target)
    num_bits = loss_fn.last.num_bits
    assert num_bits > 40
    (grad,) = torch.autograd.grad(loss, heat, retain_graph=True)  # first order: fine
    assert grad.abs().sum() > 0
    with pytest.raises(RuntimeError, match=f"chunk_bits={num_bits}"):
        torch.autograd.grad(loss, heat, create_graph=True)
    # the advice works: the one-block engine on the same anchors differentiates twice
    loss_fn = uniloss.UniLoss(uniloss.PCK(), chunk_bits=num_bits, generator=torch.Generator().manual_seed(1), interpolation="anchors")
    loss2 = loss_fn(heat, target)
    assert float(loss2.detach()) == pytest.approx(float(loss.detach()), rel=1e-10)
    (grad2,) = torch.autograd.grad(loss2, heat, create_graph=True)
    torch.testing.assert_close(grad2.detach(), grad, rtol=1e-9, atol=1e-13)
    (hv,) = torch.autograd.grad(grad2.square().sum(), heat)
    assert torch.isfinite(hv).all() and hv.abs().sum() > 0


# ---------------------------------------------------------------------------- bug 6: per-rank warnings

WORLD = 2
SEED = 7


def _calls(loss_fn, rank, times=2):
    """The PerRankWarning messages of each of ``times`` calls, and the calls' loss values."""
    g = torch.Generator().manual_seed(100 + rank)  # each rank its own batch
    messages, losses = [], []
    for _ in range(times):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loss = loss_fn(torch.randn(8, generator=g, dtype=torch.float64, requires_grad=True),
                           torch.tensor([1, 0, 0, 1, 0, 0, 1, 0]))
        messages.append([str(w.message) for w in caught if issubclass(w.category, uniloss.distributed.PerRankWarning)])
        losses.append(float(loss.detach()))
    return messages, losses


def _accuracy_calls(loss_fn, rank, times=2):
    g = torch.Generator().manual_seed(200 + rank)
    messages = []
    for _ in range(times):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loss_fn(torch.randn(6, 4, generator=g, requires_grad=True), torch.tensor([0, 1, 2, 3, 0, 1]))
        messages.append([str(w.message) for w in caught if issubclass(w.category, uniloss.distributed.PerRankWarning)])
    return messages


def _warning_worker(rank, port, path):
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.manual_seed(rank)  # the ranks' global random states differ, as they do in practice
    torch.set_num_threads(1)
    out = {}
    # before the process group exists: the plain loss cannot know, and warns later
    early = uniloss.UniLoss(uniloss.AveragePrecision(), generator=torch.Generator().manual_seed(SEED), interpolation="anchors")
    out["before-init"] = _calls(early, rank, times=1)[0]
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        seeded = torch.Generator().manual_seed(SEED)
        out["early-after-init"] = _calls(early, rank)[0]
        out["ap"] = _calls(uniloss.UniLoss(uniloss.AveragePrecision(), generator=seeded, interpolation="anchors"), rank)[0]
        out["auroc"] = _calls(uniloss.UniLoss(zoo.auroc(), generator=seeded, interpolation="anchors"), rank)[0]
        out["memory"] = _calls(uniloss.UniLoss(CrossBatchMemory(uniloss.AveragePrecision(), size=8),
                                               generator=seeded, interpolation="anchors"), rank)[0]
        out["accuracy"] = _accuracy_calls(uniloss.UniLoss(uniloss.MulticlassAccuracy(), interpolation="anchors"), rank)
        out["top_k"] = _accuracy_calls(uniloss.UniLoss(zoo.top_k_accuracy(2), interpolation="anchors"), rank)
        out["global-seeded"] = _calls(uniloss.UniLoss(GlobalBatch(uniloss.AveragePrecision()),
                                                      generator=torch.Generator().manual_seed(SEED), interpolation="anchors"), rank)
        out["global-none"] = _calls(uniloss.UniLoss(GlobalBatch(uniloss.AveragePrecision()), interpolation="anchors"), rank)
        out["global-rank-seeded"] = _calls(uniloss.UniLoss(GlobalBatch(uniloss.AveragePrecision()),
                                                           generator=torch.Generator().manual_seed(SEED + rank), interpolation="anchors"), rank)
        out["global-memory-seeded"] = _calls(uniloss.UniLoss(
            GlobalBatch(CrossBatchMemory(uniloss.AveragePrecision(), size=8)),
            generator=torch.Generator().manual_seed(SEED), interpolation="anchors"), rank)[0]
    finally:
        torch.distributed.destroy_process_group()
    with open(f"{path}.{rank}", "wb") as fh:
        pickle.dump(out, fh)


@pytest.fixture(scope="module")
def rank_warnings(tmp_path_factory):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    return run_ranks(_warning_worker, WORLD, str(tmp_path_factory.mktemp("ranks")))


@pytest.mark.parametrize("name", ["ap", "auroc", "memory", "early-after-init"])
def test_plain_set_metric_in_a_process_group_warns_once_naming_global_batch(rank_warnings, name):
    for out in rank_warnings:
        first, second = out[name]
        assert len(first) == 1 and second == []
        assert "GlobalBatch" in first[0] and "2 ranks" in first[0]
        assert out["before-init"] == [[]]


@pytest.mark.parametrize("name", ["accuracy", "top_k"])
def test_per_sample_metrics_do_not_warn(rank_warnings, name):
    for out in rank_warnings:
        assert out[name] == [[], []]


def test_global_batch_with_one_seed_does_not_warn_and_agrees(rank_warnings):
    messages = [out["global-seeded"][0] for out in rank_warnings]
    assert messages == [[[], []]] * WORLD
    losses = [out["global-seeded"][1] for out in rank_warnings]
    assert losses[0] == pytest.approx(losses[1], abs=1e-12)  # the same anchors on both ranks
    assert [out["global-memory-seeded"] for out in rank_warnings] == [[[], []]] * WORLD


def test_global_batch_without_generator_warns_once(rank_warnings):
    for out in rank_warnings:
        (first, second), _ = out["global-none"]
        assert second == [] and len(first) == 1
        assert "generator=None" in first[0] and "manual_seed" in first[0]
    # what the warning is about: the ranks drew different anchors from their own global states
    losses = [out["global-none"][1] for out in rank_warnings]
    assert losses[0] != pytest.approx(losses[1], abs=1e-9)


def test_global_batch_with_generators_seeded_per_rank_warns_once(rank_warnings):
    for out in rank_warnings:
        (first, second), _ = out["global-rank-seeded"]
        assert second == [] and len(first) == 1
        assert "different states" in first[0]


def test_which_metrics_count_as_set_level():
    from uniloss._module import _per_rank_set_metric

    per_sample = [uniloss.MulticlassAccuracy(), uniloss.PCK(), zoo.top_k_accuracy(1), zoo.top_k_accuracy(5), zoo.pck(),
                  GlobalBatch(uniloss.AveragePrecision()), CrossBatchMemory(GlobalBatch(zoo.auroc()), size=4)]
    set_level = [uniloss.AveragePrecision(), zoo.auroc(), zoo.macro_f1(3), zoo.ndcg_at_k(3), zoo.mean_iou(3),
                 CrossBatchMemory(uniloss.AveragePrecision(), size=4), _AboveOne()]
    assert not any(_per_rank_set_metric(d) for d in per_sample)
    assert all(_per_rank_set_metric(d) for d in set_level)


def test_no_warning_without_a_process_group():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for dec in (uniloss.AveragePrecision(), GlobalBatch(uniloss.AveragePrecision())):
            uniloss.UniLoss(dec, interpolation="anchors")(torch.randn(6, requires_grad=True), torch.tensor([1, 0, 0, 1, 0, 0]))


# ---------------------------------------------------------------------------- bug 8: ties

from hypothesis import given, settings, strategies as st  # noqa: E402
from sklearn.metrics import average_precision_score, roc_auc_score  # noqa: E402

from uniloss.decoders import RankingTarget  # noqa: E402
from uniloss.experiments.metrics import average_precision as voc_average_precision  # noqa: E402


def _sk_per_query(fn, scores, relevance, query):
    """The mean over queries where ``fn`` is defined (both classes for AUROC, a positive for AP)."""
    values = []
    for q in query.unique():
        rows = query == q
        y = (relevance[rows] > 0).numpy()
        if y.any() and (fn is average_precision_score or not y.all()):
            values.append(fn(y, scores[rows].numpy()))
    return sum(values) / len(values) if values else float("nan")


def test_at_or_above_equals_a_loop():
    from uniloss._pairs import at_or_above

    for seed in range(30):
        g = torch.Generator().manual_seed(seed)
        n = int(torch.randint(0, 25, (1,), generator=g))
        scores = torch.randint(-2, 3, (n,), generator=g).double()
        positive = torch.rand(n, generator=g) < 0.4
        group = torch.randint(0, 3, (n,), generator=g) * 5
        for grp in (None, group):
            pos, neg = at_or_above(scores, positive, grp)
            for i in range(n):
                same = [j for j in range(n) if (grp is None or grp[j] == grp[i]) and scores[j] >= scores[i]]
                assert int(pos[i]) == sum(bool(positive[j]) for j in same)
                assert int(neg[i]) == sum(not bool(positive[j]) for j in same)


def test_constant_scores_hand_case():
    """The issue's case: every score equal."""
    scores = torch.zeros(8, dtype=torch.float64)
    target = torch.tensor([1, 0, 0, 0, 1, 0, 0, 0])
    assert float(uniloss.AveragePrecision().metric(scores, target)) == pytest.approx(0.25)  # was 0.196
    assert float(uniloss.AveragePrecision(interpolated=True).metric(scores, target)) == pytest.approx(0.25)
    assert float(zoo.auroc().metric(scores, target)) == 0.5  # was 0.0
    assert float(zoo.average_precision().metric(scores, target)) == pytest.approx(0.25)
    for dec, expected in ((uniloss.AveragePrecision(), 0.25), (zoo.auroc(), 0.5), (zoo.average_precision(), 0.25),
                          (GlobalBatch(uniloss.AveragePrecision()), 0.25),
                          (CrossBatchMemory(zoo.auroc(), size=4), 0.5)):
        loss_fn = uniloss.UniLoss(dec, generator=torch.Generator().manual_seed(0), interpolation="anchors")
        loss_fn(scores.clone().requires_grad_(True), target)
        assert float(loss_fn.last.metric) == pytest.approx(expected), dec
        assert float(loss_fn.last.anchor_values[0]) == 1.0  # best is still every comparison right


def test_ties_among_positives_alone():
    """Two tied positives below a negative: one threshold, precision 2/3 for both (the bits give
    the places 1 and 2 among the positives: (1/2 + 2/3) / 2)."""
    scores = torch.tensor([3.0, 1.0, 1.0, 0.0])
    target = torch.tensor([0, 1, 1, 0])
    assert float(uniloss.AveragePrecision().metric(scores, target)) == pytest.approx(2 / 3)
    assert average_precision_score(target.numpy(), scores.numpy()) == pytest.approx(2 / 3)


_TIED = st.integers(min_value=2, max_value=24).flatmap(lambda n: st.tuples(
    st.lists(st.integers(-2, 2), min_size=n, max_size=n),  # five values: many ties
    st.lists(st.booleans(), min_size=n, max_size=n),
    st.lists(st.integers(0, 2), min_size=n, max_size=n)))


@settings(max_examples=150, deadline=None)
@given(_TIED, st.sampled_from([torch.float32, torch.float64]))
def test_reported_ap_matches_sklearn_on_tied_scores(case, dtype):
    values, labels, _ = case
    scores = torch.tensor(values, dtype=dtype) * 0.5
    target = torch.tensor(labels).long()
    if not target.any():
        assert torch.isnan(uniloss.AveragePrecision().metric(scores, target))
        return
    expected = average_precision_score(target.numpy(), scores.numpy())
    assert float(uniloss.AveragePrecision().metric(scores, target)) == pytest.approx(expected, abs=1e-6)
    interpolated = voc_average_precision(scores, target, interpolated=True)
    assert float(uniloss.AveragePrecision(interpolated=True).metric(scores, target)) == pytest.approx(
        interpolated, abs=1e-6)
    loss_fn = uniloss.UniLoss(uniloss.AveragePrecision(), generator=torch.Generator().manual_seed(0), interpolation="anchors")
    loss_fn(scores.clone().requires_grad_(True), target)
    assert float(loss_fn.last.metric) == pytest.approx(expected, abs=1e-6)
    assert loss_fn.last.metric.dtype == dtype


@settings(max_examples=150, deadline=None)
@given(_TIED)
def test_reported_zoo_auroc_and_ap_match_sklearn_per_query_on_tied_scores(case):
    values, labels, queries = case
    scores = torch.tensor(values, dtype=torch.float64) * 0.5
    relevance = torch.tensor(labels).long() * torch.tensor(queries).add(1)  # graded: relevance > 0 counts
    query = torch.tensor(queries)
    target = RankingTarget(relevance, query)
    for metric, fn in ((zoo.auroc(), roc_auc_score), (zoo.average_precision(), average_precision_score)):
        expected = _sk_per_query(fn, scores, relevance, query)
        got = float(metric.metric(scores, target))
        assert got == pytest.approx(expected, abs=1e-12, nan_ok=True), metric
        if metric.comparisons(scores, metric.prepare(scores, target)).numel():
            loss_fn = uniloss.UniLoss(metric, generator=torch.Generator().manual_seed(0), interpolation="anchors")
            loss_fn(scores.clone().requires_grad_(True), target)
            assert float(loss_fn.last.metric) == pytest.approx(expected, abs=1e-12, nan_ok=True)


class _BitsAP(uniloss.AveragePrecision):
    """AveragePrecision reporting the metric of the bits (the behaviour before the fix)."""

    def batch_metric(self, target):
        return None


@pytest.mark.parametrize("interpolated", [False, True])
def test_the_loss_and_gradient_do_not_change_on_ties(interpolated):
    scores = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, -1.0, 0.0, 1.0], dtype=torch.float64)
    target = torch.tensor([1, 0, 1, 0, 1, 0, 0, 0])
    out = []
    for dec in (uniloss.AveragePrecision(interpolated=interpolated), _BitsAP(interpolated=interpolated)):
        s = scores.clone().requires_grad_(True)
        loss_fn = uniloss.UniLoss(dec, generator=torch.Generator().manual_seed(3), interpolation="anchors")
        loss = loss_fn(s, target)
        loss.backward()
        out.append((loss.detach(), s.grad, loss_fn.last))
    (loss, grad, tied), (loss_bits, grad_bits, bits) = out
    assert torch.equal(loss, loss_bits) and torch.equal(grad, grad_bits)
    assert torch.equal(tied.anchor_values, bits.anchor_values) and torch.equal(tied.surrogate, bits.surrogate)
    expected = voc_average_precision(scores, target, interpolated=interpolated)
    assert float(tied.metric) == pytest.approx(expected, abs=1e-6)
    if not interpolated:  # (interpolated, the running maximum already lifts a run to its end's precision)
        assert float(bits.metric) < expected - 0.05  # the bits count the ties as wrong


def test_interpolated_ap_of_the_bits_is_the_tied_one():
    """VOC AP needs no tie handling: the running maximum from the right gives every positive of a
    tied run the precision at the run's end, which is what scikit-learn-style thresholds give."""
    dec = uniloss.AveragePrecision(interpolated=True)
    for seed in range(200):
        g = torch.Generator().manual_seed(seed)
        n = int(torch.randint(2, 30, (1,), generator=g))
        scores = torch.randint(0, 4, (n,), generator=g).double()
        target = (torch.rand(n, generator=g) < 0.4).long()
        target[0] = 1
        plan = dec.prepare(scores, target)
        bits = dec.comparisons(scores, plan) > 0
        assert float(dec.evaluate(bits[None], plan)[0]) == pytest.approx(
            voc_average_precision(scores, target, interpolated=True), abs=1e-6)


@pytest.mark.parametrize("interpolated", [False, True])
def test_untied_reported_ap_is_the_bits_metric_to_the_last_bit(interpolated):
    dec = uniloss.AveragePrecision(interpolated=interpolated)
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        scores = torch.randn(40, generator=g)
        target = (torch.rand(40, generator=g) < 0.3).long()
        target[0] = 1
        plan = dec.prepare(scores, target)
        bits = dec.comparisons(scores, plan) > 0
        assert torch.equal(dec.metric(scores, target), dec.evaluate(bits[None], plan)[0])
        if interpolated:  # the bits' interpolated AP is the tied one already: the engine reports it
            assert dec.batch_metric(plan) is None
        else:
            assert torch.equal(dec.batch_metric(plan), dec.evaluate(bits[None], plan)[0])
