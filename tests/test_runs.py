"""The path "runs": the chain of a metric of whole runs on each run's least comparison
(``Structure.run_least``), against the chain on every comparison (the same structure without
``run_least``) and against brute force."""

import contextlib
import dataclasses
import itertools

import pytest
import torch

import uniloss
from uniloss import functional as F
from uniloss._pairs import set_pairs


class _PCKAllComparisons(uniloss.PCK):
    """PCK whose structure does not give its runs' least comparisons: the chain forms them all."""

    def structure(self, target):
        return dataclasses.replace(super().structure(target), run_least=None)


class _AccuracyAllComparisons(uniloss.MulticlassAccuracy):
    """Accuracy whose structure gives neither the least comparisons nor the pull in closed form."""

    def structure(self, target):
        return dataclasses.replace(super().structure(target), run_least=None, run_pull=None)


def _pck_case(seed, dtype=torch.float64, ties=False, wide=False):
    """Heatmaps with some joints right (a bump at the keypoint), an invisible joint, and with
    ``wide`` a disc that covers a whole heatmap (its positives without a negative)."""
    g = torch.Generator().manual_seed(seed)
    n, j, h, w = 3, 3, 6, 6
    keypoints = torch.rand(n, j, 2, generator=g) * 5
    scores = torch.randn(n, j, h, w, generator=g, dtype=dtype)
    for a, b in itertools.product(range(n), range(j)):
        if (a + b) % 2 == 0:
            scores[a, b, int(keypoints[a, b, 1].round()), int(keypoints[a, b, 0].round())] += 3
    if ties:
        scores = scores.round()
    visible = torch.ones(n, j, dtype=torch.bool)
    visible[0, 1] = False
    normalizer = torch.tensor([1.5, 2.0, 1.0])
    if wide:
        normalizer[1] = 30.0
    return scores, uniloss.KeypointTarget(keypoints, visible, normalizer)


def _accuracy_case(seed, dtype=torch.float64, ties=False):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(12, 5, generator=g, dtype=dtype) * 2
    return (scores.round() if ties else scores), torch.randint(0, 5, (12,), generator=g)


def _call(dec, scores, target, **options):
    leaf = scores.clone().requires_grad_(True)
    loss, info = F.uniloss_with_info(leaf, target, dec, **options)
    (grad,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), grad, info


OPTIONS = [{}, {"pull": 0.0}, {"step": "sum"}, {"grad_scale": 2.5, "temperature": 0.3}, {"pull_per": "run"},
           {"pull": 3.0}, {"validate_args": False}]


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("seed, ties, wide", [(0, False, False), (1, True, False), (2, False, True), (3, True, True)])
def test_pck_runs_equal_the_chain_on_every_comparison(seed, ties, wide, options):
    # float64: every loss, gradient, chain value, metric and count of the two paths agree
    scores, target = _pck_case(seed, ties=ties, wide=wide)
    loss, grad, info = _call(uniloss.PCK(0.5), scores, target, **options)
    ref_loss, ref_grad, ref_info = _call(_PCKAllComparisons(0.5), scores, target, **options)
    assert info.path == "runs" and ref_info.path == "chain"
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)
    assert torch.equal(info.metric, ref_info.metric) and torch.equal(info.anchor_values, ref_info.anchor_values)
    torch.testing.assert_close(info.surrogate, ref_info.surrogate, rtol=1e-12, atol=1e-12)
    assert info.num_bits == ref_info.num_bits > 0 and info.kinds == ref_info.kinds
    assert 0.0 < float(info.metric) < 1.0 and grad.abs().sum() > 0


@pytest.mark.parametrize("options", [{}, {"pull_per": "run"}, {"grad_scale": 2.5, "temperature": 0.3}])
@pytest.mark.parametrize("seed, ties", [(0, False), (1, True)])
def test_pck_with_every_joint_visible_reads_the_heatmaps_in_place(seed, ties, options):
    # every joint visible: the plan's rows are the heatmaps themselves (a view, no copy), the same
    # loss and gradient as the chain on every comparison
    scores, target = _pck_case(seed, ties=ties)
    target = target._replace(visible=torch.ones_like(target.visible))
    plan = uniloss.PCK(0.5).prepare(scores, target)
    assert plan.whole and plan.rows_of(scores).data_ptr() == scores.data_ptr()
    torch.testing.assert_close(plan.rows_of(scores), scores.reshape(plan.num_rows, -1), rtol=0, atol=0)
    loss, grad, info = _call(uniloss.PCK(0.5), scores, target, **options)
    ref_loss, ref_grad, ref_info = _call(_PCKAllComparisons(0.5), scores, target, **options)
    assert info.path == "runs" and ref_info.path == "chain"
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)
    assert torch.equal(info.metric, ref_info.metric) and grad.abs().sum() > 0
    partial = uniloss.PCK(0.5).prepare(scores, target._replace(visible=target.visible.clone().index_fill_(1, torch.tensor([1]), False)))
    assert not partial.whole  # (a joint not visible: its rows are copied out)


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("seed, ties", [(0, False), (1, True), (2, False)])
def test_accuracy_runs_equal_the_chain_on_every_comparison(seed, ties, options):
    # the pull per run in closed form (cross-entropy of scores / tau) against the pull on the comparisons
    scores, target = _accuracy_case(seed, ties=ties)
    loss, grad, info = _call(uniloss.MulticlassAccuracy(), scores, target, **options)
    ref_loss, ref_grad, ref_info = _call(_AccuracyAllComparisons(), scores, target, **options)
    assert info.path == "runs" and ref_info.path == "chain"
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)
    assert torch.equal(info.metric, ref_info.metric)
    torch.testing.assert_close(info.anchor_values, ref_info.anchor_values)
    assert info.num_bits == ref_info.num_bits == 12 * 4 and info.kinds == ref_info.kinds


@pytest.mark.parametrize("case", ["pck", "accuracy"])
def test_runs_in_float32_agree_within_rounding(case):
    if case == "pck":
        scores, target = _pck_case(5, dtype=torch.float32)
        decs = uniloss.PCK(0.5), _PCKAllComparisons(0.5)
    else:
        scores, target = _accuracy_case(5, dtype=torch.float32)
        decs = uniloss.MulticlassAccuracy(), _AccuracyAllComparisons()
    (loss, grad, info), (ref_loss, ref_grad, ref_info) = (_call(d, scores, target) for d in decs)
    assert info.path == "runs"
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-6)
    assert torch.equal(info.metric, ref_info.metric)


def test_set_pairs_least_is_the_runs_minimum_and_its_gradient_the_last_tied_comparison():
    # brute force: each positive's comparisons with its row's negatives, their minimum, and the
    # gradient of the one of largest index among those tied for it; a row without negatives: +inf
    g = torch.Generator().manual_seed(4)
    positive = torch.rand(4, 7, generator=g) < 0.4
    positive[2] = True  # no negative
    positive[3, :2] = False
    rows = torch.tensor([0, 2, 3, 5])
    scores = torch.randn(6, 7, generator=g, dtype=torch.float64).round()  # ties among the negatives
    plan = set_pairs(positive, rows, 7)
    leaf = scores.clone().requires_grad_(True)
    least = plan.least(leaf)
    c = plan.comparisons(scores).tolist()
    ia, ib = plan.pairs()
    expected, last = [], []
    for p in range(plan.pos_flat.numel()):
        ks = [k for k in range(len(c)) if int(ia[k]) == p]
        low = min((c[k] for k in ks), default=float("inf"))
        expected.append(low)
        last.append(max((k for k in ks if c[k] == low), default=-1))
    assert least.tolist() == expected
    weights = torch.randn(least.numel(), generator=g, dtype=torch.float64)
    (grad,) = torch.autograd.grad((torch.where(torch.isinf(least), 0.0, least) * weights).sum(), leaf)
    ref = torch.zeros(6 * 7, dtype=torch.float64)
    for p, k in enumerate(last):
        if k >= 0:
            ref[plan.pos_flat[p]] += weights[p]
            ref[plan.neg_flat[ib[k]]] -= weights[p]
    torch.testing.assert_close(grad.reshape(-1), ref)
    assert any(x == float("inf") for x in expected) and len(set(expected)) > 2


def test_accuracy_least_takes_the_last_tied_class():
    # constant scores: every other class ties; the least comparison's gradient goes to the last one
    scores = torch.zeros(2, 4, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([3, 1])
    dec = uniloss.MulticlassAccuracy()
    least = dec.structure(dec.prepare(scores, target)).run_least(scores)
    (grad,) = torch.autograd.grad(least.sum(), scores)
    assert least.tolist() == [0.0, 0.0]
    assert grad.tolist() == [[0.0, 0.0, -1.0, 1.0], [0.0, 1.0, 0.0, -1.0]]


@pytest.mark.parametrize("case", ["pck", "accuracy"])
def test_runs_differentiate_twice_as_the_chain_does(case):
    # create_graph=True: the gradient's gradient (a Hessian-vector product) equals the chain's
    if case == "pck":
        scores, target = _pck_case(6)
        decs = uniloss.PCK(0.5), _PCKAllComparisons(0.5)
    else:
        scores, target = _accuracy_case(6)
        decs = uniloss.MulticlassAccuracy(), _AccuracyAllComparisons()
    direction = torch.randn(scores.shape, generator=torch.Generator().manual_seed(0), dtype=scores.dtype)
    out = []
    for dec in decs:
        leaf = scores.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.uniloss(leaf, target, dec), leaf, create_graph=True)
        (hvp,) = torch.autograd.grad((grad * direction).sum(), leaf)
        out.append((grad.detach(), hvp))
    torch.testing.assert_close(out[0][0], out[1][0])
    torch.testing.assert_close(out[0][1], out[1][1])
    assert out[0][1].abs().sum() > 0


@pytest.mark.parametrize("options, path", [({"pull_per": "comparison"}, "chain"), ({"temperature_scale": "rms"}, "chain"),
                                           ({"interpolation": "anchors"}, "structured"),
                                           ({"pull_per": "comparison", "chunk_bits": 40}, "chunked")])
def test_options_that_read_every_comparison_take_them_all(options, path):
    scores, target = _pck_case(0)
    assert F.uniloss_with_info(scores, target, uniloss.PCK(0.5), **options)[1].path == path


def test_accuracy_with_a_fraction_or_top_k_keeps_the_comparisons():
    scores, target = _accuracy_case(0)
    for dec in (uniloss.MulticlassAccuracy(fraction=0.5), uniloss.MulticlassAccuracy(top_k=2)):
        assert F.uniloss_with_info(scores, target, dec, generator=torch.Generator().manual_seed(0))[1].path == "chain"


def test_pck_runs_form_no_comparison_at_any_size(monkeypatch):
    # a batch far above chunk_bits: no block, no pair list; the loss of the block-by-block chain
    scores, target = _pck_case(7)
    formed = []
    monkeypatch.setattr(uniloss.PCK, "_block", staticmethod(lambda *a: formed.append(1)))
    pairs = uniloss._pairs.SetPairs.pairs
    monkeypatch.setattr(uniloss._pairs.SetPairs, "pairs", lambda self: formed.append(2) or pairs(self))
    loss, grad, info = _call(uniloss.PCK(0.5), scores, target, chunk_bits=40)
    assert formed == [] and info.path == "runs" and info.num_bits > 40
    monkeypatch.undo()
    ref_loss, ref_grad, ref_info = _call(_PCKAllComparisons(0.5), scores, target, chunk_bits=40)
    assert ref_info.path == "chunked"
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(grad, ref_grad)


def test_pck_runs_without_a_visible_joint_or_a_disc_pixel():
    scores, target = _pck_case(8)
    hidden = uniloss.KeypointTarget(target.keypoints, torch.zeros_like(target.visible), target.normalizer)
    loss, grad, info = _call(uniloss.PCK(0.5), scores, hidden)
    assert float(loss) == 0.0 and torch.isnan(info.metric) and not grad.any()
    # discs off the heatmap: no positive pixel, every visible joint wrong
    far = uniloss.KeypointTarget(target.keypoints + 100.0, target.visible, target.normalizer)
    loss, grad, info = _call(uniloss.PCK(0.5), scores, far)
    ref_loss, ref_grad, ref_info = _call(_PCKAllComparisons(0.5), scores, far)
    assert float(info.metric) == float(ref_info.metric) == 0.0
    assert torch.equal(loss, ref_loss) and torch.equal(grad, ref_grad)


def test_structure_refuses_run_least_without_what_the_path_needs():
    with pytest.raises(TypeError, match="run_least"):
        uniloss.Structure(runs=2, evaluate_zeros=lambda z: z.mean(-1), run_least=lambda s: s)


# ------------------------------------------------------------------ a layout of runs (accelerators)


def _accelerator_policy():
    """The static layouts an accelerator is offered, on this CPU (see uniloss._limits)."""
    from uniloss import _limits

    return _limits.limits(cpu_static_max_bits=1 << 22)


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("seed, ties, wide", [(0, False, False), (1, True, False), (2, False, True), (3, True, True)])
def test_pck_layout_of_runs_equals_the_exact_layout(seed, ties, wide, options):
    # a run per pixel of every joint, shapes from shapes: the exact layout's loss, gradient, metric
    # and count (its chain walks the runs without comparisons too: other points, the same extension)
    scores, target = _pck_case(seed, ties=ties, wide=wide)
    with _accelerator_policy():
        plan = F.choose_path(scores, target, uniloss.PCK(0.5), **{k: v for k, v in options.items() if k == "pull_per"})
        loss, grad, info = _call(uniloss.PCK(0.5), scores, target, **options)
    ref_loss, ref_grad, ref_info = _call(uniloss.PCK(0.5), scores, target, **options)
    assert plan.path == "runs" and plan.layout is not None and plan.comparisons.numel() == scores.numel()
    assert info.path == ref_info.path == "runs"
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(info.surrogate, ref_info.surrogate, rtol=1e-12, atol=1e-12)
    assert torch.equal(info.metric, ref_info.metric) and info.num_bits == ref_info.num_bits
    assert isinstance(info.bit_count, torch.Tensor) == (options.get("validate_args") is False)


def test_pck_layout_of_runs_does_not_synchronise():
    # the operators that would wait for a GPU: none with validate_args=False (the exact layout finds
    # the disc pixels with nonzero)
    from torch.profiler import profile

    scores, target = _pck_case(0, dtype=torch.float32)
    fn = uniloss.UniLoss(uniloss.PCK(0.5), validate_args=False)
    counts = {}
    for policy in ("accelerator", "cpu"):
        leaf = scores.clone().requires_grad_(True)
        with _accelerator_policy() if policy == "accelerator" else contextlib.nullcontext():
            with profile() as prof:
                fn(leaf, target).backward()
        names = [e.name for e in prof.events()]
        counts[policy] = sum(names.count(op) for op in ("aten::nonzero", "aten::_local_scalar_dense", "aten::item"))
    assert counts["accelerator"] == 0 and counts["cpu"] >= 3


def test_pck_layout_of_runs_is_not_asked_where_comparisons_are_read():
    scores, target = _pck_case(1)
    with _accelerator_policy():
        for options in ({"pull_per": "comparison"}, {"temperature_scale": "rms"}, {"interpolation": "anchors"}):
            plan = F.choose_path(scores, target, uniloss.PCK(0.5), **options)
            assert plan.path in ("chain", "structured") and plan.comparisons.numel() > scores.numel()
        # a plan of runs has no comparisons to give
        from uniloss._decomposition import StaticLayout, prepare_with_layout

        dec = uniloss.PCK(0.5)
        layout = StaticLayout.for_decomposition(1 << 22, dec, runs_only=True)
        plan = prepare_with_layout(dec, scores, target, None, layout)
        assert layout.used and layout.runs
        with pytest.raises(RuntimeError, match="lays out runs"):
            dec.comparisons(scores, plan)


def test_pck_layout_of_runs_through_a_wrapper():
    # GlobalBatch (one process): the wrapper's structure places this call's scores in its set
    from uniloss.distributed import GlobalBatch

    scores, target = _pck_case(2)
    with _accelerator_policy():
        plan = F.choose_path(scores, target, GlobalBatch(uniloss.PCK(0.5)))
        loss, grad, info = _call(GlobalBatch(uniloss.PCK(0.5)), scores, target)
    ref_loss, ref_grad, _ = _call(uniloss.PCK(0.5), scores, target)
    assert plan.path == "runs" and plan.layout is not None and info.path == "runs"
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(grad, ref_grad)



def test_no_run_is_the_dense_paths_zero_loss():
    # an empty batch (no run, no comparison): the dense path's exact zero, as before the runs
    scores = torch.zeros(0, 5, requires_grad=True)
    loss, info = F.uniloss_with_info(scores, torch.zeros(0, dtype=torch.long), uniloss.MulticlassAccuracy())
    loss.backward()
    assert info.path == "dense" and str(float(loss.detach())) == "0.0" and torch.isnan(info.metric)



# ---------------------------------------------------------------- the zoo's metrics of class counts

from uniloss import zoo  # noqa: E402

ZOO = {
    "macro_f1": (lambda: zoo.macro_f1(5), (12, 5)),
    "balanced_accuracy": (lambda: zoo.balanced_accuracy(5), (12, 5)),
    "matthews_corrcoef": (lambda: zoo.matthews_corrcoef(5), (12, 5)),
    "mean_iou": (lambda: zoo.mean_iou(4), (2, 4, 3, 3)),
    "dice": (lambda: zoo.dice(4), (2, 4, 3, 3)),
    "macro_f1, two classes": (lambda: zoo.macro_f1(2), (12, 2)),
}


def _all_comparisons(metric):
    """The zoo metric with the structure of any decoded metric (its runs, chain and weights, no
    run_least, run_pull or evaluate_zeros): the chain on every comparison, anchors decoded."""
    metric.structure = lambda target: uniloss.DecodedMetric.structure(metric, target)
    return metric


def _zoo_case(shape, seed, dtype=torch.float64, ties=False):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(*shape, generator=g, dtype=dtype) * 2
    target = torch.randint(0, shape[1], (shape[0],) + shape[2:], generator=g)
    return (scores.round() if ties else scores), target


@pytest.mark.parametrize("options", OPTIONS + [{"pull_weights": "equal"}])
@pytest.mark.parametrize("name", list(ZOO))
@pytest.mark.parametrize("seed, ties", [(0, False), (1, True)])
def test_zoo_runs_equal_the_chain_on_every_comparison(name, seed, ties, options):
    make, shape = ZOO[name]
    scores, target = _zoo_case(shape, seed, ties=ties)
    loss, grad, info = _call(make(), scores, target, **options)
    ref_loss, ref_grad, ref_info = _call(_all_comparisons(make()), scores, target, **options)
    assert info.path == "runs" and ref_info.path == "chain"
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)
    assert torch.equal(info.metric, ref_info.metric)
    assert torch.equal(info.metric, make().metric(scores, target).to(info.metric.dtype))
    torch.testing.assert_close(info.anchor_values, ref_info.anchor_values, rtol=1e-12, atol=1e-12)
    rows = target.numel()
    assert info.num_bits == ref_info.num_bits == rows * (shape[1] - 1) and grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["macro_f1", "mean_iou"])
def test_zoo_runs_in_float32_and_twice_differentiated(name):
    make, shape = ZOO[name]
    scores, target = _zoo_case(shape, 5, dtype=torch.float32)
    (loss, grad, info), (ref_loss, ref_grad, _) = (_call(d, scores, target) for d in (make(), _all_comparisons(make())))
    assert info.path == "runs"
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-6)
    scores = scores.double()
    direction = torch.randn(scores.shape, generator=torch.Generator().manual_seed(0), dtype=scores.dtype)
    out = []
    for dec in (make(), _all_comparisons(make())):
        leaf = scores.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.uniloss(leaf, target, dec), leaf, create_graph=True)
        out.append(torch.autograd.grad((g * direction).sum(), leaf)[0])
    torch.testing.assert_close(out[0], out[1])
    assert out[0].abs().sum() > 0


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_metric_from_the_runs_counts_is_the_decoded_metrics(name):
    # brute force: random bits decoded and evaluated against evaluate_zeros of their runs' counts
    make, shape = ZOO[name]
    scores, target = _zoo_case(shape, 2)
    metric = make()
    plan = metric.prepare(scores, target)
    structure = metric.structure(plan)
    bits = torch.rand(64, metric.comparisons(scores, plan).numel(), generator=torch.Generator().manual_seed(1)) < 0.9
    bits[0] = True  # every row right
    zeros = (~bits).reshape(64, target.numel(), shape[1] - 1).sum(-1).float()
    assert torch.equal(structure.evaluate_zeros(zeros), metric.evaluate(bits, plan))
    assert float(structure.evaluate_zeros(zeros[:1])) == 1.0


@pytest.mark.parametrize("name", ["macro_f1", "mean_iou"])
def test_zoo_anchors_unchanged_by_the_runs_counts(name):
    # interpolation="anchors": the anchors' values now come from the runs' counts (the same values,
    # the same loss) and the pull per run from cross-entropy (the same gradient to rounding)
    make, shape = ZOO[name]
    scores, target = _zoo_case(shape, 3)
    out = [_call(d, scores, target, interpolation="anchors", generator=torch.Generator().manual_seed(0))
           for d in (make(), _all_comparisons(make()))]
    assert out[0][2].path == out[1][2].path == "structured"
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][2].anchor_values, out[1][2].anchor_values)
    torch.testing.assert_close(out[0][1], out[1][1], rtol=1e-12, atol=1e-15)


def test_zoo_runs_least_takes_the_last_tied_class_of_each_pixel():
    scores = torch.zeros(1, 3, 1, 2, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([[[0, 2]]])
    metric = zoo.mean_iou(3)
    least = metric.structure(metric.prepare(scores, target)).run_least(scores)
    (grad,) = torch.autograd.grad(least.sum(), scores)
    assert least.tolist() == [0.0, 0.0]
    assert grad[0, :, 0, :].tolist() == [[1.0, 0.0], [0.0, -1.0], [-1.0, 1.0]]


def test_zoo_metrics_that_are_not_of_the_class_counts_keep_their_comparisons():
    scores, target = _zoo_case((12, 5), 0)
    for metric in (zoo.top_k_accuracy(2), uniloss.DecodedMetric(uniloss.decoders.Argmax(pairs="target"),
                                                                lambda pred, y: (pred == y).float().mean(-1))):
        assert F.uniloss_with_info(scores, target, metric)[1].path == "chain"


@pytest.mark.parametrize("name", ["macro_f1", "mean_iou"])
def test_zoo_good_anchors_all_takes_every_single_bit_flip(name):
    # good_anchors="all" needs the metric from the runs' counts (evaluate_zeros), which 0.11's zoo
    # had not: it raised; now every single-bit flip of the best configuration is a good anchor
    make, shape = ZOO[name]
    scores, target = _zoo_case(shape, 4)
    loss, grad, info = _call(make(), scores, target, interpolation="anchors", good_anchors="all",
                             generator=torch.Generator().manual_seed(0))
    assert dict(info.kinds)["good"] == info.num_bits == target.numel() * (shape[1] - 1)
    assert torch.isfinite(loss) and torch.isfinite(grad).all() and grad.abs().sum() > 0
    with pytest.raises(ValueError, match="evaluate_zeros"):
        _call(_all_comparisons(make()), scores, target, interpolation="anchors", good_anchors="all",
              generator=torch.Generator().manual_seed(0))
