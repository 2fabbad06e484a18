"""``pull_weights="metric"`` (0.5): a run of the pull weighs how much the metric changes when that
run alone toggles at the current configuration (:attr:`uniloss.Structure.run_weights`)."""

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
    F.uniloss(s, target, dec, **NONE, **kw, interpolation="anchors").backward()
    return s.grad


def _brute_weights(metric, scores, target):
    """Each run's weight by hand, through the decomposition's bits: from the current bits, a
    right run's comparison closest to wrong flipped (the other class scoring highest), a wrong
    run's comparisons all set right; the metric's change, in absolute value."""
    plan = metric.prepare(scores, target)
    c = metric.comparisons(scores, plan).reshape(-1)
    hard = c > 0
    width = scores.shape[1] - 1
    rows = []
    for s in range(hard.numel() // width):
        bits = hard.clone()
        run = slice(s * width, (s + 1) * width)
        if bits[run].all():
            bits[s * width + int(c[run].argmin())] = False
        else:
            bits[run] = True
        rows.append(bits)
    values = metric.evaluate(torch.stack(rows + [hard]), plan)
    return (values[:-1] - values[-1]).abs()


def _classes(n, c, seed, rare=0.7):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(n, c, generator=g, dtype=torch.float64)
    target = torch.randint(0, c, (n,), generator=g)
    target[torch.rand(n, generator=g) < rare] = 0  # imbalanced: class 0 dominates
    return scores, target


def _accuracy_by_row(pred, target):  # exchangeable, but a user's: evaluated once per run
    return (pred == target).double().mean(-1) * (1 + 0.1 * target.double()).mean()


@pytest.mark.parametrize("grouped", [False, True])  # from [S, C] counts, or once per (right, label, other class)
@pytest.mark.parametrize("name", ["balanced_accuracy", "macro_f1", "macro_f1_weighted", "matthews", "custom"])
def test_run_weights_are_the_metrics_change_when_each_run_alone_toggles(name, grouped):
    metric = {"balanced_accuracy": zoo.balanced_accuracy(4), "macro_f1": zoo.macro_f1(4),
              "macro_f1_weighted": zoo.macro_f1(4, class_weights=torch.tensor([0.5, 2.0, 3.0, 7.0])),
              "matthews": zoo.matthews_corrcoef(4),
              "custom": uniloss.DecodedMetric(Argmax(pairs="target"), _accuracy_by_row)}[name]
    n = 40 if grouped else 30  # more rows than 2 C^2 = 32: once per (right, label, other class)
    for seed in range(3):
        scores, target = _classes(n, 4, seed)
        plan = metric.prepare(scores, target)
        assert 0 < int(plan.right.sum()) < n  # right rows and wrong rows both
        weights = metric.structure(plan).run_weights()
        torch.testing.assert_close(weights, _brute_weights(metric, scores, target).to(weights.dtype),
                                   rtol=1e-12, atol=1e-15)
        if name != "custom":
            assert weights.dtype == torch.float64  # the plan's dtype: float64 scores


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("name", ["mean_iou", "dice"])
def test_run_weights_of_the_segmentation_metrics_by_pixel(name, grouped):
    g = torch.Generator().manual_seed(0)
    shape = (2, 4, 5) if grouped else (1, 3, 5)  # 40 or 15 pixels, 2 C^2 = 18
    maps = torch.randn(shape[0], 3, *shape[1:], generator=g)
    pixels = torch.randint(0, 3, shape, generator=g)
    pixels[0, 0] = 0  # a rare class or two
    metric = getattr(zoo, name)(3)
    plan = metric.prepare(maps, pixels)
    weights = metric.structure(plan).run_weights()
    # By hand: each pixel toggled alone, a right one to its highest-scoring other class, a wrong one to its label.
    rows, now = pixels.reshape(-1), maps.argmax(1).reshape(-1)
    other = maps.movedim(1, -1).reshape(-1, 3).scatter(1, rows[:, None], float("-inf")).argmax(1)
    expected = []
    for i in range(rows.numel()):
        pred = now.clone()
        pred[i] = other[i] if now[i] == rows[i] else rows[i]
        expected.append(metric.evaluator(pred.reshape(1, *shape), pixels)[0])
    base = metric.evaluator(now.reshape(1, *shape), pixels)[0]
    torch.testing.assert_close(weights, (torch.stack(expected) - base).abs(), rtol=1e-6, atol=1e-7)


def test_mean_ious_missed_pixels_weigh_more_than_false_ones_while_its_iou_is_low():
    """Two classes, the foreground mostly missed: fixing a missed foreground pixel gains its IoU
    1 / U, removing a false one IoU / U (Lovász-softmax's weighting of the errors)."""
    target = torch.zeros(1, 1, 20, dtype=torch.long)
    target[0, 0, :10] = 1
    scores = torch.zeros(1, 2, 1, 20)
    scores[0, 0] = 0.5
    scores[0, 1, 0, 8:12] = 1.0  # predicted foreground: 8, 9 right; 10, 11 false; 0-7 missed
    metric = zoo.mean_iou(2)
    weights = metric.structure(metric.prepare(scores, target)).run_weights()
    # fg: TP 2, FP 2, FN 8 (U 12); bg: TP 8, FP 8, FN 2 (U 18). A missed pixel fixed: (3/12 - 2/12
    # + 8/17 - 8/18) / 2; a false one removed: (2/11 - 2/12 + 9/18 - 8/18) / 2.
    torch.testing.assert_close(weights[:8], torch.full((8,), (1 / 12 + 8 / 17 - 8 / 18) / 2))
    torch.testing.assert_close(weights[10:12], torch.full((2,), (2 / 11 - 2 / 12 + 1 / 18) / 2))
    assert float(weights[0]) > 1.5 * float(weights[10])


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


def test_macro_f1s_pull_weighs_each_sample_by_its_weight_over_the_mean():
    scores, target = _classes(24, 4, 1)
    weights = _brute_weights(zoo.macro_f1(4), scores, target)
    w = weights / weights.mean()
    s = scores.clone().requires_grad_()
    (torch.nn.functional.cross_entropy(s, target, reduction="none") * w).mean().backward()
    torch.testing.assert_close(_pull_grad(zoo.macro_f1(4), scores, target), s.grad, rtol=1e-10, atol=1e-15)
    assert w.std() > 0.1  # the rare classes' samples weigh more: not cross-entropy
    assert float(w[target != 0].mean()) > float(w[target == 0].mean())


def test_metrics_whose_runs_weigh_alike_are_unchanged():
    """Accuracy (no run weights: its runs are alike), AP and F1 at a threshold (margins, or no runs)
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
            loss = F.uniloss(s, y, dec, pull_weights=weights, generator=torch.Generator().manual_seed(4), interpolation="anchors")
            loss.backward()
            out.append((loss.detach(), s.grad))
        assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1]), dec


def test_too_many_changed_outputs_fall_back_to_equal_weights():
    """A user's evaluator (not known to be a function of class counts) on 5,000 pixels: 5,000
    toggled maps of 5,000 pixels exceed the 2**24 cap, so no weights and every run alike; the
    zoo's mean IoU computes them from counts."""
    metric = uniloss.DecodedMetric(PixelArgmax(pairs="target"), lambda pred, t: (pred == t).float().mean((1, 2, 3)))
    g = torch.Generator().manual_seed(0)
    maps, pixels = torch.randn(2, 3, 50, 50, generator=g), torch.randint(0, 3, (2, 50, 50), generator=g)
    assert metric.structure(metric.prepare(maps, pixels)).run_weights() is None
    assert zoo.mean_iou(3).structure(zoo.mean_iou(3).prepare(maps, pixels)).run_weights().shape == (5000,)
    torch.testing.assert_close(_pull_grad(metric, maps, pixels), _pull_grad(metric, maps, pixels, pull_weights="equal"),
                               rtol=0, atol=0)


def test_too_many_class_counts_fall_back_to_equal_weights():
    scores, target = _classes(30, 4, 0)
    metric = zoo.macro_f1(4)
    plan = metric.prepare(scores, target)
    assert metric.structure(plan).run_weights() is not None
    with limits(weight_counts=30 * 4 - 1):
        assert metric.structure(plan).run_weights() is None


def test_zero_weights_weigh_alike_and_a_wrong_count_is_refused():
    from uniloss.functional import _run_weights

    torch.testing.assert_close(_run_weights(torch.zeros(4), 4), torch.ones(4))
    torch.testing.assert_close(_run_weights(torch.tensor([1.0, -1.0, 3.0, 0.0]), 4), torch.tensor([1.0, 0.0, 3.0, 0.0]))
    with pytest.raises(ValueError, match="one weight per run"):
        _run_weights(torch.ones(3), 4)
    with pytest.raises(TypeError, match="run_weights to be callable"):
        uniloss.Structure(runs=2, run_weights=torch.ones(3))


def test_the_option_is_checked():
    """(Its default, repr and modules pickled before it: tests/test_relaxation_options.py.)"""
    dec = zoo.balanced_accuracy(4)
    with pytest.raises(ValueError, match="pull_weights"):
        uniloss.UniLoss(dec, pull_weights="class", interpolation="anchors")
    with pytest.raises(ValueError, match="pull_weights"):
        F.uniloss(torch.randn(4, 4), torch.arange(4), dec, pull_weights=None, interpolation="anchors")
