"""A Decomposition is the metric (prepare, check, comparisons, best, evaluate) plus one optional
description of its structure, uniloss.Structure: the guide's example with and without its counts
gives the same loss, gradient and anchor values, without runs the pull is taken per comparison,
the structure's fields are checked, and a class written to the hooks the structure replaced is
refused with the way to port it."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch
from sklearn.metrics import balanced_accuracy_score

import uniloss
from uniloss import functional as F
from uniloss._interpolation import chain_extension

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "custom-metrics.md"


def _guide_class():
    """``BalancedAccuracy`` as docs/custom-metrics.md section 4 writes it (run from the guide)."""
    text = GUIDE.read_text()
    block = re.search(r"```python\n(import torch, uniloss\n\nclass BalancedAccuracy.*?)```", text, re.S)
    assert block, "docs/custom-metrics.md no longer holds the BalancedAccuracy example"
    namespace: dict = {}
    exec(compile(block.group(1), str(GUIDE), "exec"), namespace)
    return namespace["BalancedAccuracy"]


def _batch(seed, n=40, classes=5):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(n, classes, generator=g, dtype=torch.float64)
    target = torch.randint(0, classes, (n,), generator=g)
    target[: classes - 1] = torch.arange(classes - 1)  # the last class may be absent
    return scores, target


def _run(dec, scores, target, seed, **options):
    s = scores.clone().requires_grad_()
    loss, info = F.uniloss_with_info(s, target, dec, generator=torch.Generator().manual_seed(seed),
                                     **{"interpolation": "anchors", **options})
    loss.backward()
    return loss.detach(), s.grad, info


@pytest.mark.parametrize("seed", range(4))
def test_the_guides_structure_changes_the_speed_not_the_loss(seed):
    """Its counts (``evaluate_zeros``) change the speed, not the loss: the same runs without them
    give the same loss, gradient and anchor values, evaluated densely."""
    with_structure = _guide_class()
    without = type("Dense", (with_structure,), {
        "structure": lambda self, plan: uniloss.Structure(with_structure.structure(self, plan).runs,
                                                          run_weights=with_structure.structure(self, plan).run_weights)})
    scores, target = _batch(seed)
    uniloss.testing.assert_exact_decomposition(
        with_structure(), scores, target, lambda s, y: balanced_accuracy_score(y, s.argmax(1)))
    evaluated = []
    spy = type("Spy", (with_structure,), {"evaluate": lambda self, bits, plan: evaluated.append(bits.shape)
                                          or with_structure.evaluate(self, bits, plan)})
    for options in ({}, {"grad_scale": 1.0, "pull": 0.0}):
        fast = _run(spy(), scores, target, seed, **options)
        dense = _run(without(), scores, target, seed, **options)
        torch.testing.assert_close(fast[0], dense[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(fast[1], dense[1], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(fast[2].anchor_values, dense[2].anchor_values, rtol=0, atol=1e-12)
        assert fast[2].path == dense[2].path == "structured"
    assert evaluated == []  # the structure evaluated every anchor from counts


@pytest.mark.parametrize("seed", range(3))
def test_the_guides_chain_of_whole_runs_is_the_chain_of_its_evaluated_bits(seed):
    """The guide's ``chain`` (``chain_by_runs``): the loss and gradient of the chain walked by the
    samples' runs equal the full chain's, every configuration along it evaluated bit by bit."""
    dec = _guide_class()()
    scores, target = _batch(seed, n=24, classes=4)
    scores = scores.round(decimals=1)  # ties
    loss, grad, info = _run(dec, scores, target, seed, interpolation="chain", pull=0.0, temperature=0.5)
    assert info.path == "chain" and info.kinds == (("chain", 25),)
    leaf = scores.clone().requires_grad_()
    plan = dec.prepare(leaf, target)
    ref, *_ = chain_extension(dec.comparisons(leaf, plan), dec.best(plan), lambda bits: dec.evaluate(bits, plan),
                              0.5, plan["others"].numel())
    (-ref).backward()
    torch.testing.assert_close(loss, -ref.detach())
    torch.testing.assert_close(grad, leaf.grad)
    assert grad.abs().sum() > 0


def test_the_guides_run_weights_make_its_pull_class_weighted_cross_entropy():
    """The guide's ``run_weights`` (1 / n_c per sample): its pull alone is class-weighted cross-entropy,
    as the zoo's balanced accuracy's; without them (``pull_weights="equal"``) cross-entropy."""
    scores, target = _batch(2)
    counts = torch.bincount(target, minlength=scores.shape[1]).double()
    none = dict(num_good=0, num_nearby=0, num_bad=0)
    for weights, reference in (("metric", 1 / counts.clamp_min(1)), ("equal", None)):
        s = scores.clone().requires_grad_()
        torch.nn.functional.cross_entropy(s, target, weight=reference).backward()
        got = _run(_guide_class()(), scores, target, 0, pull_weights=weights, **none)[1]
        torch.testing.assert_close(got, s.grad, rtol=1e-6, atol=1e-12)  # the guide counts in float32
        zoo = _run(uniloss.zoo.balanced_accuracy(scores.shape[1]), scores, target, 0, pull_weights=weights, **none)[1]
        torch.testing.assert_close(zoo, s.grad, rtol=1e-10, atol=1e-15)


def test_good_anchors_all_uses_the_structure():
    dec = _guide_class()()
    scores, target = _batch(5)
    fast = _run(dec, scores, target, 0, good_anchors="all")
    for dense in (uniloss.Decomposition.structure, lambda self, plan: uniloss.Structure(plan["others"].shape[1])):
        with pytest.raises(ValueError, match="evaluate_zeros"):  # no structure, or runs without counts
            _run(type("Dense", (type(dec),), {"structure": dense})(), scores, target, 0, good_anchors="all")
    # its closed form given explicitly equals the generic one-hot evaluation
    structure = dec.structure(dec.prepare(scores, target))
    zeros = torch.randint(0, 2, (scores.shape[0],), generator=torch.Generator().manual_seed(1)).double()
    explicit = dataclasses.replace(structure, evaluate_zeros_plus_one=lambda z: torch.stack(
        [structure.evaluate_zeros((z + torch.nn.functional.one_hot(torch.tensor(i), z.numel()))[None])[0]
         for i in range(z.numel())]))
    torch.testing.assert_close(structure.plus_one(zeros), explicit.plus_one(zeros))
    assert torch.isfinite(fast[1]).all()


def test_a_structure_is_checked():
    evaluate = lambda zeros: zeros.sum(-1)  # noqa: E731
    with pytest.raises(TypeError, match="runs"):
        uniloss.Structure("3", evaluate)
    with pytest.raises(TypeError, match="runs"):
        uniloss.Structure(True, evaluate)
    with pytest.raises(TypeError, match="callable"):
        uniloss.Structure(3, 5)
    with pytest.raises(TypeError, match="need evaluate_zeros"):
        uniloss.Structure(3, evaluate_zeros_plus_one=evaluate)
    with pytest.raises(TypeError, match="run lengths"):
        uniloss.Structure(3, evaluate, comparisons_block=lambda s, a, b: s)
    with pytest.raises(ValueError, match="good_flips"):
        uniloss.Structure(3, evaluate, good_flips=0)


def test_structure_must_return_a_structure_or_none():
    class Wrong(uniloss.Decomposition):
        def comparisons(self, scores, target):
            return scores

        def best(self, target):
            return torch.ones_like(target, dtype=torch.bool)

        def evaluate(self, bits, target):
            return bits.float().mean(-1)

        def structure(self, target):
            return 1

    with pytest.raises(TypeError, match="uniloss.Structure"):
        F.uniloss(torch.randn(4), torch.ones(4), Wrong(), interpolation="anchors")


@pytest.mark.parametrize("hook", ["segments", "evaluate_zeros_plus_one", "comparisons_block", "num_good_flips"])
def test_the_replaced_hooks_are_refused_with_the_way_to_port_them(hook):
    with pytest.raises(TypeError, match=r"structure\(target\).*uniloss\.Structure"):
        type("Old", (uniloss.Decomposition,), {hook: lambda self, *args: None})


def test_the_interface_a_metric_author_meets():
    """A new metric needs three methods (comparisons, best, evaluate), five with the optional
    per-call hooks (prepare, check), plus one optional structure for speed; what else the base
    offers is derived (metric) or for reporting and wrappers (batch_metric, state_dict,
    load_state_dict). The guide's full example defines exactly the five and the structure."""
    public = {name for name, value in vars(uniloss.Decomposition).items()
              if callable(value) and not name.startswith("_")}
    assert public == {"prepare", "check", "comparisons", "best", "evaluate", "structure", "metric",
                      "batch_metric", "state_dict", "load_state_dict"}
    guide = _guide_class()
    defined = {name for name in vars(guide) if not name.startswith("_")}
    assert defined == {"check", "prepare", "comparisons", "best", "evaluate", "structure"}


def test_without_runs_the_pull_is_per_comparison():
    """A decomposition without a structure takes the pull per comparison, whatever ``pull_per``;
    with runs, ``pull_per="comparison"`` gives that same loss and gradient."""
    guide = _guide_class()
    none = type("None", (guide,), {"structure": uniloss.Decomposition.structure})
    scores, target = _batch(9)
    a = _run(none(), scores, target, 0)
    b = _run(none(), scores, target, 0, pull_per="comparison")
    c = _run(guide(), scores, target, 0, pull_per="comparison")
    for x, y in ((a, b), (a, c)):
        torch.testing.assert_close(x[0], y[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(x[1], y[1], rtol=1e-10, atol=1e-12)
    per_run = _run(guide(), scores, target, 0)
    assert not torch.allclose(per_run[1], c[1])  # the runs change the pull


class _PCKPullFromComparisons(uniloss.PCK):
    """PCK whose pull per run is taken from its comparisons (no closed form, ``run_pull=None``)."""
    def structure(self, target):
        return dataclasses.replace(super().structure(target), run_pull=None, run_least=None)


@pytest.mark.parametrize("options", [
    {}, {"interpolation": "chain"}, {"chunk_bits": 40}, {"chunk_bits": 40, "interpolation": "chain"},
    {"step": "sum", "temperature": 0.4}, {"temperature_scale": "rms", "chunk_bits": 40}, {"pull": 2.5},
])
def test_pcks_pull_in_closed_form_is_the_pull_of_its_comparisons(options):
    """``Structure.run_pull``: PCK's positive pixels share their joint's negatives, so each run's
    term of the pull is one log-sum-exp per joint; the loss and gradient equal those of the pull
    taken from every comparison, one block or block by block, with a joint without negatives
    (the disc covers the heatmap) and an invisible joint."""
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(3, 2, 6, 6, generator=g, dtype=torch.float64)
    target = uniloss.KeypointTarget(torch.rand(3, 2, 2, generator=g) * 5, torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]]),
                                    torch.tensor([1.5, 2.0, 8.0]))
    results = []
    for dec in (uniloss.PCK(0.5), _PCKPullFromComparisons(0.5)):
        leaf = scores.clone().requires_grad_()
        loss, info = F.uniloss_with_info(leaf, target, dec, generator=torch.Generator().manual_seed(0),
                                         **{"interpolation": "anchors", **options})
        loss.backward()
        results.append((loss.detach(), leaf.grad, info.path))
    (loss, grad, path), (ref_loss, ref_grad, ref_path) = results
    expected = "chunked" if "chunk_bits" in options else "chain" if "interpolation" in options else "structured"
    # (the chain of PCK's runs takes their least comparisons alone, Structure.run_least: tests/test_runs.py)
    assert ref_path == expected and path == ("runs" if options.get("interpolation") == "chain" else expected)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(grad, ref_grad)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
