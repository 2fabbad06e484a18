"""The fast paths stay fast: no dense anchors where the structure allows, a bounded number of
operations per small step, blocks within their bound, no host synchronisation on CUDA, and the
benchmark suite runs."""

import importlib.util
import json
import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import uniloss
from uniloss import _limits
from uniloss import functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _batch(kind, seed=0):
    g = torch.Generator().manual_seed(seed)
    if kind == "ap":
        scores = torch.randn(64, generator=g)
        labels = (torch.rand(64, generator=g) < 0.2).long()
        labels[:2] = torch.tensor([1, 0])
        return uniloss.AveragePrecision(), scores, labels
    if kind == "accuracy":
        return uniloss.MulticlassAccuracy(), torch.randn(32, 10, generator=g), torch.randint(0, 10, (32,), generator=g)
    heat = torch.randn(2, 2, 8, 8, generator=g)
    target = uniloss.KeypointTarget(2 + 4 * torch.rand(2, 2, 2, generator=g), torch.ones(2, 2, dtype=torch.bool),
                                    torch.full((2,), 3.0))
    return uniloss.PCK(), heat, target


@pytest.mark.parametrize("dense_limit", [0, 1 << 30])
@pytest.mark.parametrize("kind", ["ap", "accuracy", "pck"])
def test_structured_path_never_forms_dense_anchors_or_calls_evaluate(kind, dense_limit, monkeypatch):
    dec, scores, target = _batch(kind)
    monkeypatch.setattr(_limits, "LIMITS", _limits.LIMITS.override(dense_bits=dense_limit))

    def forbidden(*args):
        raise AssertionError("dense anchors or a dense evaluate() on the structured path")

    monkeypatch.setattr(uniloss.AnchorSet, "dense", forbidden)
    monkeypatch.setattr(type(dec), "evaluate", forbidden)
    s = scores.clone().requires_grad_()
    loss = F.uniloss(s, target, dec, generator=torch.Generator().manual_seed(0), interpolation="anchors")
    loss.backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_decomposition_without_a_structure_is_evaluated_once_per_step():
    calls = []

    class Above(uniloss.Decomposition):
        def comparisons(self, scores, target):
            return scores

        def best(self, target):
            return torch.ones_like(target, dtype=torch.bool)

        def evaluate(self, bits, target):
            calls.append(bits.shape)
            return bits.float().mean(-1)

    s = torch.randn(20, requires_grad=True)
    F.uniloss(s, torch.zeros(20), Above(), generator=torch.Generator().manual_seed(0), interpolation="anchors").backward()
    assert calls == [(50, 20)]  # 49 anchors and the current configuration, one call


def test_blocks_stay_within_chunk_bits(monkeypatch):
    dec, heat, target = _batch("pck", seed=1)
    seen = []
    block = uniloss.PCK._block

    def spy(plan, scores, start, stop):
        out = block(plan, scores, start, stop)
        seen.append(out.numel())
        return out

    monkeypatch.setattr(uniloss.PCK, "_block", staticmethod(spy))
    s = heat.clone().requires_grad_()
    F.uniloss(s, target, dec, generator=torch.Generator().manual_seed(0), chunk_bits=200, interpolation="anchors").backward()
    assert len(seen) > 3 and max(seen) <= 200
    assert torch.isfinite(s.grad).all()


class _CountOps(TorchDispatchMode):
    """Every operator call that reaches the dispatcher, forward and backward."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def _step_operations(kind: str, **options) -> "list[str]":
    """The operator calls of one loss step (forward and backward) on :func:`_batch`'s ``kind``,
    after a first step (caches filled)."""
    dec, scores, target = _batch(kind)
    loss_fn = uniloss.UniLoss(dec, generator=torch.Generator().manual_seed(0), **options)

    def step():
        loss_fn(scores.clone().requires_grad_(), target).backward()

    step()
    with _CountOps() as count:
        step()
    return count.names


# The defaults' pull and bounded gradient scale cost about 20 operator calls more than the paper's loss
# (the pull per run, a logsumexp per run, 10 more than per comparison: AP 192 against 182, accuracy
# 172 against 162); AP's reported metric, scikit-learn's value on tied scores (two sorts and
# searches), 13 more. step="pull" (the default since 0.3: the pull's push in closed form, the step
# factor, the rescaled gradient) 14 more: AP 206 against 192, accuracy 186 against 172. AP's pull on
# its per-sample margins (pull_per="sample", the default since 0.4: one softplus over n scores
# instead of a logsumexp per positive) 8 fewer: AP 198. 2026-12-01: bool -> float through a uint8 view
# above 4k elements (two cheap calls more, a conversion kernel 2-4x faster: AP's [49, 663] anchors) and
# the other classes' index range cached (one fewer): AP 200, accuracy 185.
@pytest.mark.parametrize("kind,budget", [("ap", 200), ("accuracy", 185)])
def test_small_step_operation_budget(kind, budget):
    # At small sizes a step costs what its operator calls cost (a few microseconds each): keep
    # their number in check. The dense engine this replaced made about 170.
    names = _step_operations(kind, validate_args=False, interpolation="anchors")
    assert len(names) <= budget, f"{len(names)} operator calls: {names}"


# The defaults (interpolation="chain", validate_args=True): 0.12.0 made AP 109 and accuracy 91 calls
# a step. 0.12.1: the chain's node computes the pull's push and gradient without its unused value
# (three calls fewer), AP's two chain ends and the hard bits only when read, P + 2I in one call, no
# "* 1.0" on a push, a signed integer target checked by one bitwise AND, accuracy's other classes
# formed only where read (not on the path "runs"), AP's gains broadcast without two unsqueezes:
# AP 94, accuracy 82.
@pytest.mark.parametrize("kind,budget", [("ap", 94), ("accuracy", 82)])
def test_default_step_operation_budget(kind, budget):
    names = _step_operations(kind)
    assert len(names) <= budget, f"{len(names)} operator calls: {names}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dense_limit", [0, 1 << 30])
def test_no_host_synchronisation_on_cuda(dense_limit, monkeypatch):
    monkeypatch.setattr(_limits, "LIMITS", _limits.LIMITS.override(dense_bits=dense_limit))
    dec, scores, target = _batch("accuracy")
    scores, target = scores.cuda().requires_grad_(), target.cuda()
    loss_fn = uniloss.UniLoss(dec, generator=torch.Generator(device="cuda").manual_seed(0), validate_args=False, interpolation="anchors")
    loss_fn(scores, target).backward()  # warm-up: lazy initialisation may synchronise
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss_fn(scores, target).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_benchmark_suite_smoke_run(tmp_path):
    spec = importlib.util.spec_from_file_location("speed", os.path.join(ROOT, "benchmarks", "speed.py"))
    speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(speed)
    threads = torch.get_num_threads()
    try:
        report = speed.main(["--quick", "--only", "loss", "oracle", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["machine"]["torch"] == torch.__version__
    assert {r["case"] for r in report["losses"]} >= {"AP, batch 16", "accuracy, 128 x 10"}
    assert all(r["ratio"] > 0 and r["uniloss_iqr_ms"][0] <= r["uniloss_iqr_ms"][1] for r in report["losses"])
    assert report["oracle"][0]["speedup"] > 1
    assert (tmp_path / "speed.png").stat().st_size > 0 and "| case |" in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize("n", [2, 16, 128])
def test_the_eager_floor_benchmark_times_the_librarys_own_loss(n):
    """``benchmarks/eager_floor.py`` times a hand-written AP loss as the floor of the library's
    eager call: it must be the same loss, value and gradient, or the comparison says nothing."""
    spec = importlib.util.spec_from_file_location("eager_floor", os.path.join(ROOT, "benchmarks", "eager_floor.py"))
    floor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(floor)
    assert floor.check_equal(n) <= 1e-6


def test_the_target_forms_benchmark_times_its_metrics_on_the_targets_paths():
    """``benchmarks/target_forms.py``: each case is the metric its name says (scikit-learn on the
    hard decisions) and, in this checkout, reads its best output from the target (a label per row,
    the target or its complement), not from probes of ``fn``."""
    from sklearn import metrics as skm

    import uniloss._traced as traced

    spec = importlib.util.spec_from_file_location("target_forms", os.path.join(ROOT, "benchmarks", "target_forms.py"))
    forms = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(forms)
    references = {forms.specificity: lambda x, y: skm.recall_score(y == 0, x < 0),
                  forms.signed_accuracy: lambda x, y: skm.accuracy_score(y > 0, x > 0),
                  forms.rows_accuracy: lambda x, y: skm.accuracy_score(y.argmax(1), x.argmax(1)),
                  forms.accuracy: lambda x, y: skm.accuracy_score(y, x.argmax(1)),
                  forms.smoothed_binary_accuracy: lambda x, y: skm.accuracy_score(y > 0.5, x > 0),
                  forms.pixel_accuracy: lambda x, y: skm.accuracy_score(y[y != 255], x.argmax(1)[y != 255])}
    for name, fn, x, y in forms._cases(torch.Generator().manual_seed(0)):
        assert float(fn(x, y)) == pytest.approx(references[fn](x.numpy(), y.numpy()), abs=1e-6), name
        metric = traced.TracedMetric(fn)
        sites = metric.prepare(x, y).sites
        assert len(sites) == 1 and not isinstance(sites[0], traced._RankSite), name
        assert all(d.get("mode") != "probe" for ds in metric._decisions.values() for d in ds.values()), name
        assert getattr(sites[0], "mode", "label") == "label" or sites[0].ignoring is not None, name


def test_the_probe_cost_benchmark_times_its_metrics_and_probes_them_through_the_sums():
    """``benchmarks/probe_cost.py``: each case is the metric its name says (a loop over the pairs,
    scikit-learn's AUROC for two grades, the count of thresholds passed) and, in this checkout,
    probes its best output through the sums, PCK's small probes aside."""
    from sklearn import metrics as skm

    import uniloss._traced as traced

    spec = importlib.util.spec_from_file_location("probe_cost", os.path.join(ROOT, "benchmarks", "probe_cost.py"))
    probes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probes)

    def pairs(x, y, weigh):  # over the ordered pairs i != j
        return [weigh(float(x[i] - x[j]), float(y[i] - y[j])) for i in range(len(x)) for j in range(len(x)) if i != j]

    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(30, generator=g), torch.randint(0, 3, (30,), generator=g)
    ordered = pairs(x, y, lambda ds, dy: (dy > 0, ds > 0))
    assert float(probes.concordance(x, y)) == pytest.approx(sum(s for o, s in ordered if o) / sum(o for o, _ in ordered))
    binary = y.clamp(max=1)
    assert float(probes.concordance(x, binary)) == pytest.approx(skm.roc_auc_score(binary, x))
    tau = sum(pairs(x, y, lambda ds, dy: ((ds > 0) - (ds < 0)) * ((dy > 0) - (dy < 0)))) / (30 * 29)  # tau-a
    assert float(probes.kendall_tau(x, y)) == pytest.approx(tau)
    passed = [sum(float(v) > t for t in (-1.0, 0.0, 1.0)) for v in x]
    assert float(probes.thresholds_counted(x, y)) == pytest.approx(sum(p == int(t) for p, t in zip(passed, y)) / 30)
    for name, fn, scores, target in probes._cases(torch.Generator().manual_seed(0)):
        if "[256]" in name:
            continue  # as [128], four times the pairs
        metric = traced.TracedMetric(fn)
        loss = uniloss.UniLoss(metric)
        for _ in range(2):
            loss(scores.clone().requires_grad_(), target)
        assert list(metric._probes.values()) == ([] if fn is probes.pck else [True]), name
