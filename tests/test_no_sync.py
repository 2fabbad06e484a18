"""No host synchronisation per loss call with ``validate_args=False`` (issue #17, "No
synchronisation"): a forward and backward pass runs none of the operators that make a GPU's host
wait (``nonzero``, ``item``), counted by the profiler on the CPU and checked under
``torch.cuda.set_sync_debug_mode("error")`` on CUDA."""

import linecache
import os

import pytest
import torch

import uniloss
from uniloss import _limits, zoo
from uniloss.decoders import RankingTarget
from _reference import good_flips

SYNC_OPS = ("aten::nonzero", "aten::_local_scalar_dense", "aten::item")


def _binary(n, g):
    labels = (torch.rand(n, generator=g) < 0.2).long()
    labels[0], labels[1] = 1, 0
    return labels


def _case(name):
    """``(decomposition, scores, target)`` on the CPU."""
    g = torch.Generator().manual_seed(0)
    if name == "AP, no positive":
        return uniloss.AveragePrecision(), torch.randn(12, generator=g), torch.zeros(12, dtype=torch.long)
    if name.startswith("AP"):
        n = int(name.split()[-1])
        dec = uniloss.AveragePrecision(interpolated="interpolated" in name)
        return dec, torch.randn(n, generator=g), _binary(n, g)
    multiclass = {
        "accuracy": uniloss.MulticlassAccuracy(),
        "accuracy, fraction 0.2": uniloss.MulticlassAccuracy(fraction=0.2),
        "accuracy, fraction 0.2, undrawn current": uniloss.MulticlassAccuracy(fraction=0.2, undrawn="current"),
        "accuracy, top_k 3": uniloss.MulticlassAccuracy(top_k=3),
        "zoo.macro_f1": zoo.macro_f1(10),
        "zoo.top_k_accuracy(5)": zoo.top_k_accuracy(5),
        "zoo.balanced_accuracy": zoo.balanced_accuracy(10),
    }
    if name in multiclass:
        return multiclass[name], torch.randn(32, 10, generator=g), torch.randint(0, 10, (32,), generator=g)
    if name == "PCK":
        kp = 1 + 6 * torch.rand(2, 2, 2, generator=g)
        target = uniloss.KeypointTarget(kp, torch.tensor([[True, True], [True, False]]), torch.full((2,), 3.0))
        return uniloss.PCK(), torch.randn(2, 2, 8, 8, generator=g), target
    if name == "zoo.f_beta":
        return zoo.f_beta(1.0), torch.randn(32, generator=g), _binary(32, g)
    if name == "zoo.auroc":
        return zoo.auroc(), torch.randn(32, generator=g), _binary(32, g)
    if name == "zoo.ndcg_at_k":  # graded relevance: with num_grades the grades are not counted on the host
        return zoo.ndcg_at_k(5, num_grades=3), torch.randn(32, generator=g), torch.randint(0, 3, (32,), generator=g)
    if name == "zoo.ndcg_at_k, bool relevance":
        return zoo.ndcg_at_k(5), torch.randn(32, generator=g), _binary(32, g).bool()
    if name == "zoo.average_precision, queries":
        relevance, query = _binary(32, g), torch.randint(0, 4, (32,), generator=g) * 10
        return zoo.average_precision(), torch.randn(32, generator=g), RankingTarget(relevance, query)
    if name == "zoo.mrr":
        return zoo.mrr(), torch.randn(32, generator=g), _binary(32, g)
    if name == "zoo.recall_at_precision":
        return zoo.recall_at_precision(0.6), torch.randn(32, generator=g), _binary(32, g)
    if name == "zoo.precision_at_recall, queries":
        relevance, query = _binary(32, g), torch.randint(0, 4, (32,), generator=g) * 10
        return zoo.precision_at_recall(0.5), torch.randn(32, generator=g), RankingTarget(relevance, query)
    if name == "zoo.precision_at_k, a relevant item alone in its query":
        # (the fuzz finding of 0.8.1: the padding's pairs fall on the last item in query order, here
        # item 0, whose query holds it alone; the chain evaluated them wrong, so item 0 lost its place)
        target = RankingTarget(torch.tensor([2, 1, 0, 0, 1, 0]), torch.tensor([5, 1, 1, 0, 1, 0]))
        return zoo.precision_at_k(1), torch.randn(6, generator=g), target
    if name == "zoo.mean_iou":
        return zoo.mean_iou(3), torch.randn(2, 3, 4, 4, generator=g), torch.randint(0, 3, (2, 4, 4), generator=g)
    raise KeyError(name)


CASES = [
    "AP 16", "AP 128", "AP interpolated 16", "AP interpolated 64", "AP interpolated 300", "AP, no positive",
    "accuracy", "accuracy, fraction 0.2", "accuracy, fraction 0.2, undrawn current", "accuracy, top_k 3", "PCK",
    "zoo.auroc", "zoo.macro_f1", "zoo.f_beta",
    "zoo.top_k_accuracy(5)", "zoo.ndcg_at_k", "zoo.ndcg_at_k, bool relevance", "zoo.average_precision, queries",
    "zoo.mrr", "zoo.precision_at_k, a relevant item alone in its query", "zoo.balanced_accuracy", "zoo.mean_iou",
    "zoo.recall_at_precision", "zoo.precision_at_recall, queries",
]


def _step(name, device, interpolation="anchors"):
    dec, scores, target = _case(name)
    move = (lambda x: x.to(device)) if device != "cpu" else (lambda x: x)
    target = type(target)(*map(move, target)) if isinstance(target, tuple) else move(target)
    loss_fn = uniloss.UniLoss(dec, generator=torch.Generator(device=device).manual_seed(0), validate_args=False,
                              interpolation=interpolation)

    def step():
        s = move(scores).requires_grad_()
        loss_fn(s, target).backward()
        return s.grad

    return step


@pytest.mark.parametrize("name", CASES)
def test_no_synchronising_operator_on_cpu(name, monkeypatch):
    """The accelerators' layout policy (a CPU lays problems out exactly: it is faster there and
    has no device to wait for) makes no synchronising operator on a CPU's profiler trace."""
    monkeypatch.setattr(_limits, "LIMITS", _limits.LIMITS.override(cpu_static_max_bits=_limits.LIMITS.static_max_bits))
    grad = _without_synchronising_operators(name, _step(name, "cpu"))
    assert torch.isfinite(grad).all()


def _without_synchronising_operators(name, step):
    """``step()``'s gradient, after a warm-up call, checked to run no synchronising operator."""
    step()  # warm-up: first-call caches may do anything
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        grad = step()
    counts = {op: sum(1 for e in prof.events() if e.name == op) for op in SYNC_OPS}
    assert not any(counts.values()), f"{name}: {counts}"
    return grad


@pytest.mark.parametrize("name", ["zoo.auroc", "zoo.average_precision, queries", "zoo.mrr", "zoo.recall_at_precision",
                                  "zoo.precision_at_recall, queries"])
def test_the_ranking_chains_in_closed_form_make_no_synchronising_operator_on_cpu(name, monkeypatch):
    """The default interpolation's closed-form chains of the zoo's rankings (their gains from the
    chain's order; the operating points' running maximum per query) in a static layout."""
    monkeypatch.setattr(_limits, "LIMITS", _limits.LIMITS.override(cpu_static_max_bits=_limits.LIMITS.static_max_bits))
    grad = _without_synchronising_operators(name, _step(name, "cpu", interpolation="chain"))
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", CASES)
def test_no_synchronisation_on_cuda(name):
    _without_synchronisation(_step(name, "cuda"))


def _without_synchronisation(step):
    """``step()`` under ``torch.cuda.set_sync_debug_mode("error")`` after a warm-up call."""
    step()  # warm-up: lazy initialisation may synchronise
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode(0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_chain_of_pck_on_large_heatmaps_does_not_synchronise_on_cuda():
    """0.11: a run per pixel (``Structure.run_least``), 2 x 16 joints x 64 x 64, far above the
    ``2**22`` comparisons of a static layout of comparisons."""
    g = torch.Generator().manual_seed(0)
    target = uniloss.KeypointTarget((torch.rand(2, 16, 2, generator=g) * 63).cuda(),
                                    torch.ones(2, 16, dtype=torch.bool, device="cuda"), torch.full((2,), 16.0, device="cuda"))
    scores = torch.randn(2, 16, 64, 64, generator=g).cuda()
    fn = uniloss.UniLoss(uniloss.PCK(0.5), validate_args=False)
    _without_synchronisation(lambda: fn(scores.clone().requires_grad_(True), target).backward())
    assert fn.last.path == "runs"


# ------------------------------------------------------------------------------ the static layouts


def _float64_case(name, large):
    g = torch.Generator().manual_seed(1)
    n = 300 if large else 30
    labels = _binary(n, g)
    if name == "AP":
        return uniloss.AveragePrecision(), torch.randn(n, generator=g, dtype=torch.float64), labels
    if name == "AP interpolated":
        return uniloss.AveragePrecision(interpolated=True), torch.randn(n, generator=g, dtype=torch.float64), labels
    if name == "PCK":
        h, w = (12, 13) if large else (6, 7)
        kp = (min(h, w) - 1) * torch.rand(2, 3, 2, generator=g, dtype=torch.float64)
        vis = torch.tensor([[True, True, False], [True, False, True]])
        target = uniloss.KeypointTarget(kp, vis, 1 + 3 * torch.rand(2, generator=g, dtype=torch.float64))
        return uniloss.PCK(good_flips=2), torch.randn(2, 3, h, w, generator=g, dtype=torch.float64), target
    if name == "PCK, joints without a negative pixel":  # runs without a comparison: the pull counts them
        h, w = (12, 13) if large else (6, 7)
        kp = (min(h, w) - 1) * torch.rand(2, 3, 2, generator=g, dtype=torch.float64)
        vis = torch.tensor([[True, True, False], [True, False, True]])
        target = uniloss.KeypointTarget(kp, vis, torch.tensor([2.0, 40.0], dtype=torch.float64))  # sample 1: every pixel
        return uniloss.PCK(1.0), torch.randn(2, 3, h, w, generator=g, dtype=torch.float64), target
    scores = torch.randn(n, generator=g, dtype=torch.float64)
    query = torch.randint(0, 3, (n,), generator=g) * 5
    if name == "zoo.auroc, queries":
        return zoo.auroc(), scores, RankingTarget(labels, query)
    if name == "zoo.ndcg_at_k, graded":
        return zoo.ndcg_at_k(4, num_grades=3), scores, RankingTarget(torch.randint(0, 3, (n,), generator=g), query)
    if name == "zoo.ndcg_at_k, 0/1":  # num_grades=2: the pull on margins in both layouts
        return zoo.ndcg_at_k(4, num_grades=2), scores, RankingTarget(labels, query)
    raise KeyError(name)


@pytest.mark.parametrize("large", [False, True], ids=["small", "large"])
@pytest.mark.parametrize("options", [{}, {"distance": "cross_entropy", "temperature_scale": "rms"},
                                     {"grad_scale": 1.0, "pull": 0.0, "nearby": "informative"}, {"step": "pull"}])
@pytest.mark.parametrize("name", ["AP", "AP interpolated", "PCK", "PCK, joints without a negative pixel",
                                  "zoo.auroc, queries", "zoo.ndcg_at_k, graded", "zoo.ndcg_at_k, 0/1"])
def test_static_layout_gives_the_exact_layouts_anchors_and_loss(name, options, large, monkeypatch):
    """The loss of a static layout (a raw target, sampled anchors) is that of the exact layout
    (``prepare()`` called directly) with the anchors ``sample_anchors`` draws from the same
    generator state: the same anchors, values, loss and gradient, under the layout policy of an
    accelerator (a CPU lays every problem out exactly). Large: with their indices spread and their
    runs counted from prefix sums."""
    monkeypatch.setattr(_limits, "LIMITS", _limits.LIMITS.override(cpu_static_max_bits=_limits.LIMITS.static_max_bits))
    dec, scores, target = _float64_case(name, large)
    s = scores.clone().requires_grad_()
    loss, info = uniloss.functional.uniloss_with_info(s, target, dec, generator=torch.Generator().manual_seed(7),
                                                      validate_args=False, **options, interpolation="anchors")
    loss.backward()
    assert isinstance(info.bit_count, torch.Tensor)  # counted on the device: a static layout ran
    prepared = dec.prepare(scores, target)
    c = dec.comparisons(scores, prepared).reshape(-1)
    anchors = uniloss.sample_anchors(dec.best(prepared).reshape(-1), c > 0, generator=torch.Generator().manual_seed(7),
                                     good_flips=good_flips(dec, prepared, c.numel()))
    ref = scores.clone().requires_grad_()
    expected, ref_info = uniloss.functional.uniloss_with_info(ref, prepared, dec, anchors=anchors, **options, interpolation="anchors")
    expected.backward()
    assert info.num_bits == c.numel()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(s.grad, ref.grad, rtol=1e-10, atol=1e-14)
    assert torch.equal(info.anchor_values, ref_info.anchor_values) and torch.equal(info.metric, ref_info.metric)


# ------------------------------------------------------------------------------ torch.compile


def _compile_cases():
    pos = (torch.arange(32) % 4 == 0).long()
    labels = torch.arange(64) % 10
    return {
        "AP": (uniloss.AveragePrecision(), torch.randn(32), pos),
        "AP, batch 128": (uniloss.AveragePrecision(), torch.randn(128), (torch.arange(128) % 5 == 0).long()),
        "accuracy": (uniloss.MulticlassAccuracy(), torch.randn(64, 10), labels),
        "accuracy, fraction": (uniloss.MulticlassAccuracy(fraction=0.2), torch.randn(64, 10), labels),
        "zoo.macro_f1": (uniloss.zoo.macro_f1(10), torch.randn(64, 10), labels),
        "zoo.balanced_accuracy": (uniloss.zoo.balanced_accuracy(10), torch.randn(64, 10), labels),
        "zoo.f_beta": (uniloss.zoo.f_beta(1.0, threshold=0.0), torch.randn(32), pos),
        "zoo.f_beta, macro": (uniloss.zoo.f_beta(1.0, average="macro"), torch.randn(32, 10), (torch.rand(32, 10) < 0.3).long()),
        "zoo.auroc": (uniloss.zoo.auroc(), torch.randn(32), pos),
        "zoo.top_k_accuracy": (uniloss.zoo.top_k_accuracy(5), torch.randn(64, 10), labels),
        "zoo.ndcg_at_k, bool relevance": (uniloss.zoo.ndcg_at_k(5), torch.randn(32), pos.bool()),
        "PCK": (uniloss.PCK(), torch.randn(2, 4, 16, 16), uniloss.KeypointTarget(
            torch.tensor([[[3.0, 4.0], [9.0, 1.0], [15.0, 15.0], [0.0, 8.0]]]).expand(2, 4, 2),
            torch.ones(2, 4, dtype=torch.bool), torch.full((2,), 4.0))),
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", list(_compile_cases()))
def test_a_compiled_loss_breaks_only_for_a_generators_draws(name):
    """``torch._dynamo.explain`` of a loss call: one graph without a generator (the draws, the
    static layout and the counts are all traceable), and with one only at the draws (a graph cannot
    hold a generator: each draw runs eagerly between graphs). Each break on a CPU was a sync or a data-dependent size
    before 2026-11-30: 12 (accuracy) to 22 (AP)."""
    import warnings

    metric, scores, target = _compile_cases()[name]
    for generator in (None, torch.Generator().manual_seed(0)):
        loss_fn = uniloss.UniLoss(metric, generator=generator, validate_args=False, interpolation="anchors")
        torch._dynamo.reset()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ex = torch._dynamo.explain(lambda s, y: loss_fn(s, y))(scores.clone().requires_grad_(), target)
        if generator is None:
            assert ex.graph_break_count == 0, [b.reason for b in ex.break_reasons]
        else:
            draws = [f for b in ex.break_reasons for f in b.user_stack[-1:]]
            assert all(f.filename.endswith("_random.py") for f in draws), [b.reason for b in ex.break_reasons]
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["AP", "accuracy", "PCK"])
def test_the_default_checks_are_the_only_graph_breaks(name):
    """With ``validate_args=True`` (the default) a compiled call breaks where a check reads the
    inputs' values on the host, or where ``LossInfo.bit_count`` becomes an int, and nowhere else
    (docs/performance.md: "pass ``validate_args=False`` in a compiled step")."""
    import warnings

    metric, scores, target = _compile_cases()[name]
    loss_fn = uniloss.UniLoss(metric)
    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ex = torch._dynamo.explain(lambda s, y: loss_fn(s, y))(scores.clone().requires_grad_(), target)
    sites = {(f.filename.rsplit(os.sep, 1)[-1], f.name, linecache.getline(f.filename, f.lineno).strip())
             for b in ex.break_reasons for f in b.user_stack[-1:]}
    assert ex.graph_break_count > 0 and sites, "the checks read values: at least one break"
    assert all(file == "_validation.py" or name in ("check", "_check_scores", "_check_binary")
               or line.startswith(("count = int(count)", "return int(static[0]) if validate_args"))
               for file, name, line in sites), sites
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["AP", "accuracy", "zoo.f_beta", "zoo.f_beta, macro"])
def test_the_compiled_chain_is_one_graph_even_with_a_generator(name):
    """The default interpolation (the chain) draws nothing: a loss call is one graph, backward
    included, also with a generator (the anchors break at each draw, above)."""
    import warnings

    metric, scores, target = _compile_cases()[name]
    loss_fn = uniloss.UniLoss(metric, generator=torch.Generator().manual_seed(0), validate_args=False)
    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ex = torch._dynamo.explain(lambda s, y: loss_fn(s, y))(scores.clone().requires_grad_(), target)
    assert ex.graph_count == 1 and ex.graph_break_count == 0, [b.reason for b in ex.break_reasons]
    torch._dynamo.reset()


# The two tests that compile with inductor run in a fresh interpreter (tests/_compiled.py): inductor's
# C++ kernels bring their own OpenMP threads into the process, and a later test in the same run once
# waited on a futex for 15 minutes after them (twice in three full runs on this 2-core machine).
def _run_compiled(check: str, *args: str) -> None:
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(__file__), "_compiled.py")
    done = subprocess.run([sys.executable, script, check, *args], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["AP", "zoo.macro_f1"])
def test_compiled_step_without_generator_is_the_eager_step(name):
    """Without a generator the draws are in the graph; with ``fallback_random`` (inductor draws as
    eager does) a compiled call from the same global seed gives the eager loss and gradient. AP is
    laid out statically inside a graph (no data-dependent shape) and exactly in eager mode on a CPU:
    the same loss. The second call runs the same graph (a cache filled while tracing recompiled it)."""
    _run_compiled("without_generator", name)


@pytest.mark.slow
def test_compiled_step_draws_the_eager_anchors():
    """A compiled loss call (the generator's draws run eagerly, in order, in one disabled region)
    gives the eager call's loss and gradient for the same generator seed, step after step
    (docs/performance.md, "Randomness, and a compiled step")."""
    _run_compiled("with_generator")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["zoo.macro_f1", "AP", "PCK"])
def test_compiled_chain_is_the_eager_chain(name):
    """``interpolation="chain"`` compiled gives the eager loss and gradient (its closed forms trace;
    AP and PCK in the static layout inside the graph, PCK by its runs' closed form)."""
    _run_compiled("chain", name)


@pytest.mark.parametrize("name", CASES)
def test_the_chain_synchronises_nothing_and_its_static_layout_is_the_exact_one(name, monkeypatch):
    """``interpolation="chain"`` under the accelerators' layout policy: no synchronising operator
    on a CPU's trace, and the static layout's loss and gradient those of the exact layout (its
    padding last in the chain with no gain, its cuts from the number of real comparisons)."""
    dec, scores, target = _case(name)
    scores = scores.double()

    def step():
        generator.manual_seed(0)  # (accuracy's fraction draws its bits: the same draws each step)
        s = scores.clone().requires_grad_()
        loss = loss_fn(s, target)
        loss.backward()
        return loss.detach(), s.grad

    generator = torch.Generator()
    loss_fn = uniloss.UniLoss(dec, interpolation="chain", validate_args=False, generator=generator)
    exact = step()
    monkeypatch.setattr(_limits, "LIMITS", _limits.LIMITS.override(cpu_static_max_bits=_limits.LIMITS.static_max_bits))
    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        static = step()
    counts = {op: sum(1 for e in prof.events() if e.name == op) for op in SYNC_OPS}
    assert not any(counts.values()), f"{name}: {counts}"
    torch.testing.assert_close(static[0], exact[0], rtol=0, atol=1e-9)
    torch.testing.assert_close(static[1], exact[1], rtol=0, atol=1e-9)


@pytest.mark.parametrize("dec, scores, target", [
    (uniloss.AveragePrecision(), torch.tensor([-1.5, 2.0, 0.25, -3.0]), torch.ones(4, dtype=torch.long)),
    (uniloss.zoo.precision_at_k(1), torch.tensor([0.0, -1.0]), torch.tensor([2, 2])),
])
def test_the_chain_without_a_real_comparison_is_zero_in_the_static_layout_too(dec, scores, target, monkeypatch):
    """A batch without a comparison (AP with every label positive, a ranking with no pair) has
    the exact layout's zero loss also in a static layout, where padding alone makes the chain
    (the fuzz finding of 0.8: ``g(S_0)``, the metric of the padding's configuration, was returned)."""
    def call():
        s = scores.double().requires_grad_()
        loss, info = uniloss.functional.uniloss_with_info(s, target, dec, interpolation="chain", validate_args=False)
        loss.backward()
        return loss.detach(), s.grad, info.path

    exact = call()
    monkeypatch.setattr(_limits, "LIMITS", _limits.LIMITS.override(cpu_static_max_bits=_limits.LIMITS.static_max_bits))
    static = call()
    assert exact[2] == "dense" and static[2] == "chain"  # (the static layout holds padding: the chain runs)
    assert float(exact[0]) == float(static[0]) == 0.0
    torch.testing.assert_close(static[1], exact[1], rtol=0, atol=1e-12)  # the pull's alone (on the margins)


@pytest.mark.parametrize("weighted", [False, True])
def test_fixed_size_counts_equal_bincount(monkeypatch, weighted):
    """``_pairs.counts``' scatter-add (a GPU's, and a compiled graph's) counts as ``bincount`` does."""
    from uniloss._pairs import counts

    g = torch.Generator().manual_seed(0)
    index = torch.randint(0, 50, (1000,), generator=g).to(torch.uint8)
    weights = torch.randn(1000, generator=g, dtype=torch.float64) if weighted else None
    want = torch.bincount(index, weights, minlength=64)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    got = counts(index, 64, weights)
    assert got.dtype == want.dtype and got.shape == (64,)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("options", [{}, {"pull_per": "comparison"}], ids=["layout of runs", "static comparisons"])
def test_pcks_chain_in_the_static_layout_is_exact_where_counts_at_every_point_would_not_fit(options, monkeypatch):
    """PCK's static layout walks its runs' last comparisons with its own closed form (the padding a
    run of no joint), as the exact layout does: equal loss and gradient on 3 x 32 x 32 heatmaps,
    138,658 comparisons of 3 x 262,144, where the runs' counts at every point of the chain pass
    ``chain_elements`` (before: fewer points, and a gradient 0.05 off). With the defaults (0.11)
    the chain takes the runs' least comparisons in a layout of a run per pixel; a pull per
    comparison reads them all, in the static layout of comparisons."""
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(1, 3, 32, 32, generator=g, dtype=torch.float64)
    target = uniloss.KeypointTarget(torch.rand(1, 3, 2, generator=g) * 31, torch.ones(1, 3, dtype=torch.bool),
                                    torch.full((1,), 8.0))

    def call():
        s = scores.clone().requires_grad_()
        loss, info = uniloss.functional.uniloss_with_info(s, target, uniloss.PCK(), validate_args=False, **options)
        loss.backward()
        return loss.detach(), s.grad, info

    exact = call()
    monkeypatch.setattr(_limits, "LIMITS", _limits.LIMITS.override(cpu_static_max_bits=_limits.LIMITS.static_max_bits))
    static = call()
    assert isinstance(static[2].bit_count, torch.Tensor) and int(static[2].bit_count) == exact[2].bit_count == 138658
    torch.testing.assert_close(static[0], exact[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(static[1], exact[1], rtol=0, atol=1e-12)


@pytest.mark.parametrize("labels, options", [
    ("random", {"num_bad": 0}),  # no random anchor: nothing to count by the runs' ends
    ("none", {}),  # no positive: every bit padding, past every run's end
    ("random", {"interpolation": "chain"}),
], ids=["no random anchor", "no positive", "chain"])
def test_aps_static_layout_of_182_samples_and_more_gives_the_exact_loss(labels, options, monkeypatch):
    """From 182 samples (``n^2 / 4 >= 8192`` bits) AP's static layout counts its runs by their
    ends, and its padding lies past them; a sweep at these sizes (``fuzz_degenerate.py --large``)
    found three calls that raised there: an empty kind of anchor, a batch without a positive and
    AP interpolated's chain. Each now gives the exact layout's loss and gradient."""
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(182, generator=g, dtype=torch.float64)
    target = (torch.rand(182, generator=g) < 0.3).long() if labels == "random" else torch.zeros(182, dtype=torch.long)
    dec = uniloss.AveragePrecision(interpolated=options.get("interpolation") == "chain")
    options = {"interpolation": "anchors", **options}

    def call():
        s = scores.clone().requires_grad_()
        loss = uniloss.UniLoss(dec, generator=torch.Generator().manual_seed(1), **options)(s, target)
        loss.backward()
        return loss.detach(), s.grad

    exact = call()
    monkeypatch.setattr(_limits, "LIMITS", _limits.LIMITS.override(cpu_static_max_bits=_limits.LIMITS.static_max_bits))
    static = call()
    torch.testing.assert_close(static[0], exact[0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(static[1], exact[1], rtol=1e-10, atol=1e-14)
