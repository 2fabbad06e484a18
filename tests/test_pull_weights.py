"""``pull_weights="metric"`` (0.5): a run of the pull weighs what the metric loses when that run
alone goes wrong at the best configuration (:attr:`uniloss.Structure.drops`)."""

import pytest
import torch

import uniloss
from uniloss import functional as F
from uniloss._limits import limits
from uniloss import zoo
from uniloss.decoders import Argmax, PixelArgmax

NONE = dict(num_good=0, num_nearby=0, num_bad=0)  # best alone: a constant interpolation, the pull's gradient


def _pull_grad(dec, scores, target, **kw):
    s = scores.clone().requires_grad_()
    F.uniloss(s, target, dec, **NONE, **kw).backward()
    return s.grad


def _brute_drops(metric, scores, target):
    """Each run's drop by hand: best with the run's comparison closest to wrong flipped (the
    other class scoring highest), evaluated through the decomposition's bits."""
    plan = metric.prepare(scores, target)
    best = metric.best(plan).reshape(-1)
    c = metric.comparisons(scores, plan).reshape(-1)
    width = scores.shape[1] - 1
    rows = []
    for s in range(best.numel() // width):
        bits = best.clone()
        bits[s * width + int(c[s * width:(s + 1) * width].argmin())] = False
        rows.append(bits)
    values = metric.evaluate(torch.stack(rows + [best]), plan)
    return values[-1] - values[:-1]


def _classes(n, c, seed, rare=0.7):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(n, c, generator=g, dtype=torch.float64)
    target = torch.randint(0, c, (n,), generator=g)
    target[torch.rand(n, generator=g) < rare] = 0  # imbalanced: class 0 dominates
    return scores, target


def _accuracy_by_row(pred, target):  # exchangeable, but a user's: evaluated once per run
    return (pred == target).double().mean(-1) * (1 + 0.1 * target.double()).mean()


@pytest.mark.parametrize("grouped", [False, True])  # from [S, C] counts, or once per (label, wrong label)
@pytest.mark.parametrize("name", ["balanced_accuracy", "macro_f1", "matthews", "custom"])
def test_drops_are_the_metric_lost_when_each_runs_closest_comparison_flips(name, grouped):
    metric = {"balanced_accuracy": zoo.balanced_accuracy(4), "macro_f1": zoo.macro_f1(4),
              "matthews": zoo.matthews_corrcoef(4),
              "custom": uniloss.DecodedMetric(Argmax(pairs="target"), _accuracy_by_row)}[name]
    for seed in range(3):
        scores, target = _classes(30, 4, seed)
        plan = metric.prepare(scores, target)
        with limits(drop_counts=0 if grouped else 1 << 22):
            drops = metric.structure(plan).drops()
        torch.testing.assert_close(drops, _brute_drops(metric, scores, target).to(drops.dtype), rtol=1e-12, atol=1e-15)
        if name != "custom":
            assert drops.dtype == torch.float64  # the plan's dtype: float64 scores


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("name", ["mean_iou", "dice"])
def test_drops_of_the_segmentation_metrics_by_pixel(name, grouped):
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(2, 3, 4, 5, generator=g)
    pixels = torch.randint(0, 3, (2, 4, 5), generator=g)
    pixels[0] = 0  # a rare class or two
    metric = getattr(zoo, name)(3)
    plan = metric.prepare(maps, pixels)
    with limits(drop_counts=0 if grouped else 1 << 22):
        drops = metric.structure(plan).drops()
    # By hand: each pixel predicted as its highest-scoring other class, the others right.
    rows = pixels.reshape(-1)
    other = maps.movedim(1, -1).reshape(-1, 3).scatter(1, rows[:, None], float("-inf")).argmax(1)
    expected = []
    for i in range(rows.numel()):
        pred = rows.clone()
        pred[i] = other[i]
        expected.append(metric.evaluator(pred.reshape(1, 2, 4, 5), pixels)[0])
    base = metric.evaluator(pixels[None], pixels)[0]
    torch.testing.assert_close(drops, base - torch.stack(expected), rtol=1e-6, atol=1e-7)


def test_balanced_accuracys_pull_is_class_weighted_cross_entropy():
    for seed in range(3):
        scores, target = _classes(40, 5, seed)
        counts = torch.bincount(target, minlength=5).double()
        present = counts > 0
        weight = torch.where(present, 1 / counts.clamp_min(1), torch.zeros(()).double())
        s = scores.clone().requires_grad_()
        torch.nn.functional.cross_entropy(s, target, weight=weight).backward()
        got = _pull_grad(zoo.balanced_accuracy(5), scores, target)
        torch.testing.assert_close(got, s.grad, rtol=1e-10, atol=1e-15)
        equal = _pull_grad(zoo.balanced_accuracy(5), scores, target, pull_weights="equal")
        plain = scores.clone().requires_grad_()
        torch.nn.functional.cross_entropy(plain, target).backward()
        torch.testing.assert_close(equal, plain.grad, rtol=1e-10, atol=1e-15)  # 0.4's pull
        assert not torch.allclose(got, equal)


def test_macro_f1s_pull_weighs_each_sample_by_its_drop_over_the_mean():
    scores, target = _classes(24, 4, 1)
    drops = _brute_drops(zoo.macro_f1(4), scores, target)
    w = drops / drops.mean()
    s = scores.clone().requires_grad_()
    (torch.nn.functional.cross_entropy(s, target, reduction="none") * w).mean().backward()
    torch.testing.assert_close(_pull_grad(zoo.macro_f1(4), scores, target), s.grad, rtol=1e-10, atol=1e-15)
    assert w.std() > 0.1  # the rare classes' samples weigh more: not cross-entropy
    assert float(w[target != 0].mean()) > float(w[target == 0].mean())


def test_metrics_whose_runs_weigh_alike_are_unchanged():
    """Accuracy (no drops: its runs are alike), AP and F1 at a threshold (margins, or no runs)
    give the same loss and gradient with either setting, to the bit."""
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(16, 5, generator=g), torch.randint(0, 5, (16,), generator=g)
    scores, binary = torch.randn(16, generator=g), (torch.rand(16, generator=g) < 0.3)
    binary[:2] = torch.tensor([True, False])
    for dec, x, y in ((uniloss.MulticlassAccuracy(), logits, labels), (uniloss.AveragePrecision(), scores, binary),
                      (zoo.f_beta(1.0), scores, binary.long()), (zoo.top_k_accuracy(2), logits, labels)):
        out = []
        for weights in ("metric", "equal"):
            s = x.clone().requires_grad_()
            loss = F.uniloss(s, y, dec, pull_weights=weights, generator=torch.Generator().manual_seed(4))
            loss.backward()
            out.append((loss.detach(), s.grad))
        assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1]), dec


def test_too_many_changed_outputs_fall_back_to_equal_weights():
    """A user's evaluator (not known to be a function of class counts) on 5,000 pixels: 5,000
    changed maps of 5,000 pixels exceed the 2**24 cap, so no drops and every run alike; the
    zoo's mean IoU computes them from counts."""
    metric = uniloss.DecodedMetric(PixelArgmax(pairs="target"), lambda pred, t: (pred == t).float().mean((1, 2, 3)))
    g = torch.Generator().manual_seed(0)
    maps, pixels = torch.randn(2, 3, 50, 50, generator=g), torch.randint(0, 3, (2, 50, 50), generator=g)
    assert metric.structure(metric.prepare(maps, pixels)).drops() is None
    assert zoo.mean_iou(3).structure(zoo.mean_iou(3).prepare(maps, pixels)).drops().shape == (5000,)
    torch.testing.assert_close(_pull_grad(metric, maps, pixels), _pull_grad(metric, maps, pixels, pull_weights="equal"),
                               rtol=0, atol=0)


def test_zero_drops_weigh_alike_and_a_wrong_count_is_refused():
    from uniloss.functional import _run_weights

    torch.testing.assert_close(_run_weights(torch.zeros(4), 4), torch.ones(4))
    torch.testing.assert_close(_run_weights(torch.tensor([1.0, -1.0, 3.0, 0.0]), 4), torch.tensor([1.0, 0.0, 3.0, 0.0]))
    with pytest.raises(ValueError, match="one drop per run"):
        _run_weights(torch.ones(3), 4)
    with pytest.raises(TypeError, match="drops to be callable"):
        uniloss.Structure(runs=2, drops=torch.ones(3))


def test_the_option_is_checked():
    """(Its default, repr and modules pickled before it: tests/test_relaxation_options.py.)"""
    dec = zoo.balanced_accuracy(4)
    with pytest.raises(ValueError, match="pull_weights"):
        uniloss.UniLoss(dec, pull_weights="class")
    with pytest.raises(ValueError, match="pull_weights"):
        F.uniloss(torch.randn(4, 4), torch.arange(4), dec, pull_weights=None)
