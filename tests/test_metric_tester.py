"""One shared tester, after torchmetrics' ``MetricTester``: every built-in metric (with its
options) and every ``uniloss.zoo`` metric, through the module and the functional form, on every
engine path that applies, in float64, float32, bfloat16 and float16, on the CPU and on CUDA when there is one.

For each metric, dtype and device, :class:`UniLossTester` checks:

1. the batch's exact metric (``LossInfo.metric`` on every form and path, and ``metric()``) equals
   an independent reference: scikit-learn where it has the metric, else a loop in
   ``tests/_reference.py``;
2. the loss is a finite scalar of the scores' dtype with a finite, non-zero gradient of the
   scores' shape, and ``LossInfo.path`` names the path asked for;
3. the module ``UniLoss(dec, generator=g, interpolation="anchors")`` and the functional ``uniloss`` and
   ``uniloss_with_info`` give the same value and gradient for the same generator seed;
4. the paths agree on value and gradient: ``"structured"`` (the default, sampling its anchors)
   equals ``"structured"`` given the ``AnchorSet`` that ``uniloss.sample_anchors`` draws from the
   same generator state, which equals ``"dense"`` given the same anchors as a ``[t, l]`` tensor
   (``anchors=``); ``"chunked"`` (block by block, a small ``chunk_bits``; decompositions with
   a structure with ``comparisons_block`` only) equals ``"structured"`` for the same generator seed.

The scores are untied and exact in bfloat16 and float16 (``untied_scores``), so all dtypes make
the same decisions and one float64 reference serves them all; half-precision values and gradients
(relaxed in float32, returned in their dtype) are compared within their rounding (float16 since
2026-12-01, when its RMS temperature's floor was fixed).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

import uniloss
from uniloss import functional as F
from uniloss import zoo
from uniloss.decoders import RankingTarget
from _reference import (
    ap_from_scores_loop, good_flips, mean_over_queries, pck_loop, precision_at_k_ref, precision_at_recall_ref,
    recall_at_k_ref, recall_at_precision_ref, reciprocal_rank_ref, untied_scores,
)

SEED = 7  # the anchors' generator seed in every run
CHUNK_BITS = 64  # well below the PCK batches' comparisons (hundreds): several blocks

# Relative tolerances of paths that should agree (gradients: relative to the largest entry).
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 3e-2, torch.float16: 2e-3}
DTYPES = [pytest.param(d, id=str(d).replace("torch.", "")) for d in TOL]
DEVICES = [
    pytest.param("cpu"),
    pytest.param("cuda", marks=[pytest.mark.cuda,
                                pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]),
]


# ---------------------------------------------------------------------------------------- batches


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _binary(seed, n=24):
    g = _gen(seed)
    labels = (torch.rand(n, generator=g) < 0.4).long()
    labels[torch.randperm(n, generator=g)[:2]] = torch.tensor([0, 1])  # both classes
    return untied_scores((n,), g), labels


def _multilabel(seed, n=8, labels=4):
    """Multi-label ``[n, L]`` scores and 0/1 targets; one label never present (scikit-learn's
    ``zero_division=0`` for it unless predicted)."""
    g = _gen(seed)
    target = (torch.rand(n, labels, generator=g) < 0.4).long()
    target[:, -1] = 0
    return untied_scores((n, labels), g), target


def _multiclass(seed, n=24, c=5):
    g = _gen(seed)
    scores = untied_scores((n, c), g)
    target = torch.randint(0, c, (n,), generator=g)
    target[: n // 2] = scores[: n // 2].argmax(1)  # some right, some wrong
    return scores, target


def _queries(seed, grades=2, n=30, num_queries=4):
    """Every query holds a relevant and an irrelevant item, so every ranking metric is defined on
    every query (no convention for undefined queries is tested here)."""
    g = _gen(seed)
    query = torch.randperm(n, generator=g) % num_queries
    relevance = torch.randint(0, grades, (n,), generator=g)
    for q in range(num_queries):
        first, second = (query == q).nonzero().reshape(-1)[:2]
        relevance[first], relevance[second] = grades - 1, 0
    return untied_scores((n,), g), RankingTarget(relevance, query)


def _segmentation(seed, shape=(2, 3, 4, 4)):
    g = _gen(seed)
    n, c, h, w = shape
    scores = untied_scores(shape, g)
    guess = torch.randint(0, c, (n, h, w), generator=g)
    return scores, torch.where(torch.rand(n, h, w, generator=g) < 0.5, scores.argmax(1), guess)


def _keypoints(seed, shape=(2, 3, 6, 7)):
    """Heatmaps and joints, about half of them at the heatmap's argmax (correct for PCK)."""
    g = _gen(seed)
    n, j, h, w = shape
    heat = untied_scores(shape, g)
    flat = heat.reshape(n, j, -1).argmax(-1)
    at_max = torch.stack([flat % w, flat // w], -1).double() + (torch.rand(n, j, 2, generator=g, dtype=torch.float64) - 0.5) * 0.8
    anywhere = torch.rand(n, j, 2, generator=g, dtype=torch.float64) * torch.tensor([w - 1.0, h - 1.0], dtype=torch.float64)
    keypoints = torch.where(torch.rand(n, j, 1, generator=g) < 0.5, at_max, anywhere)
    visible = torch.rand(n, j, generator=g) < 0.8
    visible[0, 0] = True
    return heat, uniloss.KeypointTarget(keypoints, visible, 1 + 3 * torch.rand(n, generator=g, dtype=torch.float64))


# ------------------------------------------------------------------------------------- references


def _labels(s, y):
    return y.numpy(), s.argmax(1).numpy()


def _per_query(per_query):
    return lambda s, t: mean_over_queries(per_query, s.numpy(), t.relevance.numpy(), t.query.numpy())


def _pixels(s, y):
    return y.reshape(-1).numpy(), s.argmax(1).reshape(-1).numpy()


def _pck(threshold):
    return lambda s, t: pck_loop(s, t.keypoints, t.visible, t.normalizer, threshold)


@dataclass(frozen=True)
class Case:
    """A metric to test: what it covers, how to make it, a batch and an independent reference
    ``reference(scores float64, target) -> float``."""

    name: str
    covers: Any  # the built-in class or the zoo function
    make: Callable[[], uniloss.Decomposition]
    batch: Callable[[int], tuple]
    reference: Callable[[torch.Tensor, Any], float]

    def blockwise(self) -> bool:
        """Has the chunked path: its structure has ``comparisons_block``."""
        dec = self.make()
        scores, target = self.batch(0)
        structure = dec.structure(dec.prepare(scores, target))
        return structure is not None and structure.comparisons_block is not None


def _accuracy(s, y):
    return skm.accuracy_score(*_labels(s, y))


_CLASS_WEIGHTS = torch.tensor([0.3, 1.0, 2.0, 5.0, 0.7], dtype=torch.float64)

CASES = [
    # the paper's decompositions, with their options
    Case("AveragePrecision", uniloss.AveragePrecision, lambda: uniloss.AveragePrecision(), _binary,
         lambda s, y: skm.average_precision_score(y.numpy(), s.numpy())),
    Case("AveragePrecision-interpolated", uniloss.AveragePrecision, lambda: uniloss.AveragePrecision(interpolated=True),
         _binary, lambda s, y: ap_from_scores_loop(s.tolist(), y.tolist(), interpolated=True)),
    Case("MulticlassAccuracy", uniloss.MulticlassAccuracy, lambda: uniloss.MulticlassAccuracy(), _multiclass, _accuracy),
    Case("MulticlassAccuracy-top_k", uniloss.MulticlassAccuracy, lambda: uniloss.MulticlassAccuracy(top_k=2),
         _multiclass, _accuracy),
    Case("MulticlassAccuracy-fraction", uniloss.MulticlassAccuracy, lambda: uniloss.MulticlassAccuracy(fraction=0.3),
         _multiclass, _accuracy),
    Case("MulticlassAccuracy-fraction-current", uniloss.MulticlassAccuracy,
         lambda: uniloss.MulticlassAccuracy(fraction=0.3, undrawn="current"), _multiclass, _accuracy),
    Case("PCK", uniloss.PCK, lambda: uniloss.PCK(), _keypoints, _pck(0.5)),
    Case("PCK-threshold-good_flips", uniloss.PCK, lambda: uniloss.PCK(0.8, good_flips=3), _keypoints, _pck(0.8)),
    # the zoo
    Case("top_k_accuracy", zoo.top_k_accuracy, lambda: zoo.top_k_accuracy(2), _multiclass,
         lambda s, y: skm.top_k_accuracy_score(y.numpy(), s.numpy(), k=2, labels=np.arange(s.shape[1]))),
    Case("macro_f1", zoo.macro_f1, lambda: zoo.macro_f1(5), _multiclass,
         lambda s, y: skm.f1_score(*_labels(s, y), average="macro")),
    Case("macro_f1-all-pairs", zoo.macro_f1, lambda: zoo.macro_f1(5, pairs="all"), _multiclass,
         lambda s, y: skm.f1_score(*_labels(s, y), average="macro")),
    Case("macro_f1-class_weights", zoo.macro_f1, lambda: zoo.macro_f1(5, class_weights=_CLASS_WEIGHTS), _multiclass,
         lambda s, y: skm.f1_score(*_labels(s, y), average="macro", labels=sorted(set(_labels(s, y)[0]) | set(_labels(s, y)[1])),
                                   sample_weight=_CLASS_WEIGHTS[y].numpy())),
    Case("balanced_accuracy", zoo.balanced_accuracy, lambda: zoo.balanced_accuracy(5), _multiclass,
         lambda s, y: skm.balanced_accuracy_score(*_labels(s, y))),
    Case("matthews_corrcoef", zoo.matthews_corrcoef, lambda: zoo.matthews_corrcoef(5, pairs="all"), _multiclass,
         lambda s, y: skm.matthews_corrcoef(*_labels(s, y))),
    Case("f_beta", zoo.f_beta, lambda: zoo.f_beta(2.0), _binary,
         lambda s, y: skm.fbeta_score(y.numpy(), s.numpy() > 0, beta=2.0, zero_division=0)),
    Case("precision", zoo.precision, lambda: zoo.precision(), _binary,
         lambda s, y: skm.precision_score(y.numpy(), s.numpy() > 0, zero_division=0)),
    Case("recall", zoo.recall, lambda: zoo.recall(), _binary,
         lambda s, y: skm.recall_score(y.numpy(), s.numpy() > 0, zero_division=0)),
    Case("f_beta-macro", zoo.f_beta, lambda: zoo.f_beta(2.0, average="macro"), _multilabel,
         lambda s, y: skm.fbeta_score(y.numpy(), s.numpy() > 0, beta=2.0, average="macro", zero_division=0)),
    Case("precision-macro", zoo.precision, lambda: zoo.precision(average="macro"), _multilabel,
         lambda s, y: skm.precision_score(y.numpy(), s.numpy() > 0, average="macro", zero_division=0)),
    Case("recall-macro", zoo.recall, lambda: zoo.recall(average="macro"), _multilabel,
         lambda s, y: skm.recall_score(y.numpy(), s.numpy() > 0, average="macro", zero_division=0)),
    Case("auroc", zoo.auroc, lambda: zoo.auroc(), _queries,
         _per_query(lambda s, r: skm.roc_auc_score(r > 0, s))),
    Case("average_precision", zoo.average_precision, lambda: zoo.average_precision(), _queries,
         _per_query(lambda s, r: skm.average_precision_score(r > 0, s))),
    Case("precision_at_k", zoo.precision_at_k, lambda: zoo.precision_at_k(3), _queries,
         _per_query(lambda s, r: precision_at_k_ref(s, r, 3))),
    Case("recall_at_k", zoo.recall_at_k, lambda: zoo.recall_at_k(3), _queries,
         _per_query(lambda s, r: recall_at_k_ref(s, r, 3))),
    Case("ndcg_at_k", zoo.ndcg_at_k, lambda: zoo.ndcg_at_k(3), lambda seed: _queries(seed, grades=4),
         _per_query(lambda s, r: skm.ndcg_score(r[None], s[None], k=3))),
    Case("mrr", zoo.mrr, lambda: zoo.mrr(), _queries, _per_query(reciprocal_rank_ref)),
    Case("recall_at_precision", zoo.recall_at_precision, lambda: zoo.recall_at_precision(0.6), _queries,
         _per_query(lambda s, r: recall_at_precision_ref(s, r, 0.6))),
    Case("precision_at_recall", zoo.precision_at_recall, lambda: zoo.precision_at_recall(0.5), _queries,
         _per_query(lambda s, r: precision_at_recall_ref(s, r, 0.5))),
    Case("mean_iou", zoo.mean_iou, lambda: zoo.mean_iou(3), _segmentation,
         lambda s, y: skm.jaccard_score(*_pixels(s, y), average="macro")),
    Case("mean_iou-all-pairs", zoo.mean_iou, lambda: zoo.mean_iou(3, pairs="all"), _segmentation,
         lambda s, y: skm.jaccard_score(*_pixels(s, y), average="macro")),
    Case("dice", zoo.dice, lambda: zoo.dice(3), _segmentation, lambda s, y: skm.f1_score(*_pixels(s, y), average="macro")),
    Case("pck", zoo.pck, lambda: zoo.pck(0.5), _keypoints, _pck(0.5)),
]
CASE_PARAMS = [pytest.param(case, id=case.name) for case in CASES]

# (form, path): the module takes no anchors; chunked needs comparisons_block.
FORMS_AND_PATHS = [("module", "structured"), ("module", "chunked"), ("functional", "structured"),
                   ("functional", "dense"), ("functional", "chunked")]
CASE_FORM_PATH = [pytest.param(case, form, path, id=f"{case.name}-{form}-{path}")
                  for case in CASES for form, path in FORMS_AND_PATHS if path != "chunked" or case.blockwise()]
CASE_PATH = [pytest.param(case, path, id=f"{case.name}-{path}")
             for case in CASES for path in ("structured", "chunked") if path != "chunked" or case.blockwise()]


def test_every_built_in_and_zoo_metric_has_a_case():
    built_in = {obj for name in uniloss.__all__ if inspect.isclass(obj := getattr(uniloss, name))
                and issubclass(obj, uniloss.Decomposition)}
    generic = {uniloss.Decomposition, uniloss.DecodedMetric, uniloss.TracedMetric}  # wrappers, not metrics
    zoo_metrics = {getattr(zoo, name) for name in zoo.__all__}
    covered = {case.covers for case in CASES}
    assert built_in - generic == {uniloss.AveragePrecision, uniloss.MulticlassAccuracy, uniloss.PCK}
    assert (built_in - generic) | zoo_metrics == covered, "a metric without a case, or a case for no metric"
    assert sum(case.blockwise() for case in CASES) >= 2  # the chunked path is exercised


# ----------------------------------------------------------------------------------------- tester


def _to(target, device):
    if isinstance(target, torch.Tensor):
        return target.to(device)
    return type(target)(*(_to(t, device) for t in target))  # KeypointTarget, RankingTarget


class UniLossTester:
    """One metric case in one dtype on one device: its batch and reference, the loss through a
    form and a path, the anchors the sampled path draws, and the comparison of two runs."""

    def __init__(self, case: Case, dtype: torch.dtype, device: str) -> None:
        self.case, self.dtype, self.tol = case, dtype, TOL[dtype]
        scores, target = case.batch(0)
        self.reference = case.reference(scores, target)
        assert np.isfinite(self.reference)
        self.scores, self.target = scores.to(device=device, dtype=dtype), _to(target, device)
        assert torch.equal(self.scores.double().cpu(), scores), "the scores are exact in this dtype"

    def anchors(self, seed: int = SEED) -> uniloss.AnchorSet:
        """Anchors drawn by ``uniloss.sample_anchors`` (structured) over this batch's comparisons,
        from a generator of ``seed`` that ``prepare`` used first, as in :meth:`run` (so
        MulticlassAccuracy(fraction) trains the same bits)."""
        dec, g = self.case.make(), _gen(seed)
        with torch.no_grad():
            plan = dec.prepare(self.scores, self.target, g)
            c = dec.comparisons(self.scores, plan).reshape(-1)
            best = dec.best(plan).reshape(-1).to(device=c.device, dtype=torch.bool)
            return uniloss.sample_anchors(best, c > 0, good_flips=good_flips(dec, plan, c.numel()), generator=g)

    def run(self, form: str, path: str, seed: int = SEED, anchors=None, **options):
        """``(loss, gradient, LossInfo)``; ``form`` "module", "functional" (uniloss_with_info) or
        "loss-only" (uniloss, whose info is None); ``options`` go to the loss. The dense path
        takes ``anchors`` (default :meth:`anchors`, as a dense tensor); the structured path
        samples its own unless given some."""
        dec, g = self.case.make(), _gen(seed)
        kw = dict(options, chunk_bits=CHUNK_BITS) if path == "chunked" else options
        if path == "dense" and anchors is None:
            anchors = self.anchors(seed).dense()
        if anchors is not None:
            kw["anchors"] = anchors
        scores = self.scores.clone().requires_grad_()
        info = None
        if form == "module":
            module = uniloss.UniLoss(dec, generator=g, **kw, interpolation="anchors")
            loss, info = module(scores, self.target), module.last
        elif form == "loss-only":
            loss = F.uniloss(scores, self.target, dec, generator=g, **kw, interpolation="anchors")
        else:
            loss, info = F.uniloss_with_info(scores, self.target, dec, generator=g, **kw, interpolation="anchors")
        loss.backward()
        return loss.detach(), scores.grad, info

    def assert_close(self, a, b, exact: bool = False):
        """Two ``(loss, gradient)`` pairs agree (to the last bit with ``exact``, on the CPU)."""
        (la, ga), (lb, gb) = a[:2], b[:2]
        if exact and la.device.type == "cpu":
            assert torch.equal(la, lb) and torch.equal(ga, gb)
            return
        tol = self.tol
        torch.testing.assert_close(la.double(), lb.double(), rtol=tol, atol=tol)
        scale = float(ga.abs().max().double()) or 1.0
        torch.testing.assert_close(ga.double(), gb.double(), rtol=tol, atol=tol * scale)


# ------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case,form,path", CASE_FORM_PATH)
def test_metric_equals_the_reference_and_the_loss_is_finite(case, form, path, dtype, device):
    """Checks 1 and 2 on one form and path."""
    t = UniLossTester(case, dtype, device)
    loss, grad, info = t.run(form, path)
    assert info.path == path
    assert float(info.metric) == pytest.approx(t.reference, abs=1e-6)
    assert float(case.make().metric(t.scores, t.target)) == pytest.approx(t.reference, abs=1e-6)
    assert loss.shape == () and loss.dtype == dtype and bool(torch.isfinite(loss))
    assert torch.equal(info.loss, loss)
    assert grad.shape == t.scores.shape and grad.dtype == dtype
    assert bool(torch.isfinite(grad).all()) and bool(grad.abs().sum() > 0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case,path", CASE_PATH)
def test_module_and_functional_forms_agree(case, path, dtype, device):
    """Check 3: the same seed gives the same value and gradient in every form; another seed
    another gradient (the seed is what the forms share; true of these unsaturated batches)."""
    t = UniLossTester(case, dtype, device)
    module = t.run("module", path)
    t.assert_close(module, t.run("functional", path), exact=True)
    t.assert_close(module, t.run("loss-only", path), exact=True)
    assert not torch.equal(module[1], t.run("functional", path, seed=SEED + 1)[1])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pull", [pytest.param(1.0, id="pull-default"), pytest.param(0.0, id="pull-0")])
@pytest.mark.parametrize("case", CASE_PARAMS)
def test_engine_paths_agree(case, pull, dtype, device):
    """Check 4, on value, gradient, anchor values and metric: sampled anchors are those of
    sample_anchors; the structured path given them equals the dense path given them as a tensor;
    where the decomposition has blocks, the chunked path equals the structured one. With the
    default pull too, whose push does not depend on the anchors; without it (the paper's loss)
    the gradient is the anchors' alone, and other anchors change it by far more than the
    tolerances (6-200% of its largest entry on these batches, against 1.2% at most between paths
    in bfloat16)."""
    t = UniLossTester(case, dtype, device)
    anchors = t.anchors()
    pairs = [("structured", {}, "structured", dict(anchors=anchors)),
             ("structured", dict(anchors=anchors), "dense", dict(anchors=anchors.dense()))]
    if case.blockwise():
        pairs.append(("structured", {}, "chunked", {}))
    for path, kw, other_path, other_kw in pairs:
        one, other = t.run("functional", path, pull=pull, **kw), t.run("functional", other_path, pull=pull, **other_kw)
        assert (one[2].path, other[2].path) == (path, other_path)
        t.assert_close(one, other)
        torch.testing.assert_close(other[2].anchor_values, one[2].anchor_values, rtol=0, atol=0, equal_nan=True)
        assert float(other[2].metric) == float(one[2].metric)
