"""Exactness of the paper's decompositions against independent references."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

import uniloss
from uniloss.testing import assert_exact_decomposition
from _reference import ap_from_bits_loop, ap_from_scores_loop, pck_loop

SIZES = [1, 2, 3, 5, 16, 33, 128]


def _binary_batch(n, seed, pos_rate=0.3):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(n, generator=g, dtype=torch.float64)
    labels = (torch.rand(n, generator=g) < pos_rate).long()
    return scores, labels


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("seed", range(5))
def test_ap_equals_sklearn(n, seed):
    scores, labels = _binary_batch(n, seed)
    ours = float(uniloss.AveragePrecision().metric(scores, labels))
    if labels.sum() == 0:
        assert math.isnan(ours)
    else:
        ref = average_precision_score(labels.numpy(), scores.numpy())
        assert ours == pytest.approx(ref, abs=1e-6)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("seed", range(5))
def test_interpolated_ap_equals_voc_loop(n, seed):
    scores, labels = _binary_batch(n, seed, pos_rate=0.4)
    ours = float(uniloss.AveragePrecision(interpolated=True).metric(scores, labels))
    ref = ap_from_scores_loop(scores.tolist(), labels.tolist(), interpolated=True)
    if math.isnan(ref):
        assert math.isnan(ours)
    else:
        assert ours == pytest.approx(ref, abs=1e-6)
        assert ours >= float(uniloss.AveragePrecision().metric(scores, labels)) - 1e-6


def test_interpolated_ap_differs_from_plain_on_a_hand_case():
    # ranking: + - + + : precisions 1, 2/3, 3/4 -> plain 0.8056, interpolated 1, 3/4, 3/4 -> 0.8333
    scores = torch.tensor([4.0, 3.0, 2.0, 1.0])
    labels = torch.tensor([1, 0, 1, 1])
    assert float(uniloss.AveragePrecision().metric(scores, labels)) == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    assert float(uniloss.AveragePrecision(interpolated=True).metric(scores, labels)) == pytest.approx(
        (1 + 3 / 4 + 3 / 4) / 3
    )


@pytest.mark.parametrize("interpolated", [False, True])
def test_ap_evaluate_on_arbitrary_bits_matches_loop(interpolated):
    g = torch.Generator().manual_seed(3)
    labels = torch.tensor([1, 0, 0, 1, 0, 1, 0, 0])
    dec = uniloss.AveragePrecision(interpolated=interpolated)
    plan = dec.prepare(torch.zeros(8), labels)
    bits = torch.rand(20, 3 * 5, generator=g) < 0.5  # inconsistent configurations too
    ours = dec.evaluate(bits, plan)
    for row, value in zip(bits, ours):
        assert float(value.detach()) == pytest.approx(ap_from_bits_loop(row.tolist(), 3, 5, interpolated), abs=1e-6)


def test_ap_all_one_class():
    scores = torch.randn(6)
    assert float(uniloss.AveragePrecision().metric(scores, torch.ones(6))) == 1.0
    assert math.isnan(float(uniloss.AveragePrecision().metric(scores, torch.zeros(6))))


def test_ap_accepts_column_scores_and_bool_targets():
    scores, labels = _binary_batch(20, 1)
    a = uniloss.AveragePrecision().metric(scores[:, None], labels.bool())
    b = uniloss.AveragePrecision().metric(scores, labels.float())
    assert float(a) == float(b)


def _accuracy(scores, target):
    return (scores.argmax(1) == target).float().mean()


@pytest.mark.parametrize("n,p", [(1, 2), (1, 10), (7, 3), (128, 10), (64, 100)])
@pytest.mark.parametrize("options", [{}, {"top_k": 5}, {"top_k": 1}, {"fraction": 0.2}, {"top_k": 3, "fraction": 0.5},
                                     {"fraction": 0.2, "undrawn": "current"}])
def test_accuracy_equals_argmax(n, p, options):
    g = torch.Generator().manual_seed(n * p)
    scores = torch.randn(n, p, generator=g)
    target = torch.randint(0, p, (n,), generator=g)
    scores[: n // 2] += 3 * torch.nn.functional.one_hot(target[: n // 2], p)  # some right
    dec = uniloss.MulticlassAccuracy(**options)
    assert float(dec.metric(scores, target)) == pytest.approx(float(_accuracy(scores, target)))
    assert_exact_decomposition(dec, scores, target, _accuracy)


def test_accuracy_bit_counts():
    scores, target = torch.randn(10, 7), torch.randint(0, 7, (10,))
    assert uniloss.MulticlassAccuracy().comparisons(scores, target).numel() == 10 * 6
    assert uniloss.MulticlassAccuracy(top_k=3).comparisons(scores, target).numel() == 10 * 3
    plan = uniloss.MulticlassAccuracy(fraction=0.2).prepare(scores, target)
    assert uniloss.MulticlassAccuracy(fraction=0.2).comparisons(scores, plan).numel() == 12


def test_accuracy_fraction_fixed_bits_keep_the_metric_exact():
    # A sample wrong only through a bit that is not drawn must still count as wrong.
    scores = torch.tensor([[0.0, 5.0, 0.0], [5.0, 0.0, 0.0]])
    target = torch.tensor([0, 0])
    dec = uniloss.MulticlassAccuracy(fraction=0.25, undrawn="current")  # one of four bits
    for seed in range(8):
        plan = dec.prepare(scores, target, torch.Generator().manual_seed(seed))
        hard = dec.comparisons(scores, plan) > 0
        assert float(dec.evaluate(hard[None], plan)[0]) == 0.5
        assert dec.batch_metric(plan) is None


def test_accuracy_fraction_scores_anchors_on_the_drawn_bits():
    # undrawn="right" (default): a sample is right at an anchor iff its drawn bits are; the
    # exact accuracy of the batch comes from batch_metric(). Brute force over the plan.
    g = torch.Generator().manual_seed(5)
    scores, target = torch.randn(12, 9, generator=g), torch.randint(0, 9, (12,), generator=g)
    dec = uniloss.MulticlassAccuracy(fraction=0.3)
    plan = dec.prepare(scores, target, torch.Generator().manual_seed(1))
    m = 8
    bits = torch.rand(5, plan.selected.numel(), generator=g) < 0.8
    want = []
    for row in bits:
        ok = [True] * 12
        for k, flat in enumerate(plan.selected.tolist()):
            if not row[k]:
                ok[flat // m] = False
        want.append(sum(ok) / 12)
    torch.testing.assert_close(dec.evaluate(bits, plan), torch.tensor(want))
    assert float(dec.batch_metric(plan)) == pytest.approx(float(_accuracy(scores, target)))
    assert float(dec.metric(scores, target)) == pytest.approx(float(_accuracy(scores, target)))


def _pck_batch(n, j, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    heat = torch.randn(n, j, h, w, generator=g, dtype=torch.float64)
    kp = torch.rand(n, j, 2, generator=g, dtype=torch.float64) * torch.tensor([w - 1, h - 1])
    vis = torch.rand(n, j, generator=g) < 0.8
    norm = 1 + 4 * torch.rand(n, generator=g, dtype=torch.float64)
    # Put some argmaxes near the joint so both outcomes occur.
    for a in range(n):
        for b in range(j):
            if (a + b) % 2 == 0:
                x, y = int(round(float(kp[a, b, 0]))), int(round(float(kp[a, b, 1])))
                heat[a, b, y, x] += 10
    return heat, uniloss.KeypointTarget(kp, vis, norm)


@pytest.mark.parametrize("shape", [(1, 1, 5, 5), (2, 3, 8, 8), (4, 2, 6, 9)])
@pytest.mark.parametrize("threshold", [0.5, 1.0])
@pytest.mark.parametrize("seed", range(3))
def test_pck_equals_brute_force(shape, threshold, seed):
    heat, target = _pck_batch(*shape, seed)
    dec = uniloss.PCK(threshold=threshold)
    ref = pck_loop(heat, *target, threshold)
    ours = float(dec.metric(heat, target))
    if math.isnan(ref):
        assert math.isnan(ours)
    else:
        assert ours == pytest.approx(ref)
        assert_exact_decomposition(dec, heat, target, lambda s, t: pck_loop(s, *t, threshold))


def test_pck_no_visible_joint_is_undefined():
    heat = torch.randn(2, 2, 4, 4)
    target = uniloss.KeypointTarget(torch.ones(2, 2, 2), torch.zeros(2, 2, dtype=torch.bool), torch.ones(2))
    assert math.isnan(float(uniloss.PCK().metric(heat, target)))


def test_pck_joint_outside_heatmap_is_wrong():
    heat = torch.randn(1, 2, 4, 4)
    kp = torch.tensor([[[100.0, 100.0], [1.0, 1.0]]])
    heat[0, 1, 1, 1] = 10
    target = uniloss.KeypointTarget(kp, torch.ones(1, 2, dtype=torch.bool), torch.ones(1))
    assert float(uniloss.PCK(threshold=0.5).metric(heat, target)) == 0.5


def test_user_decomposition_with_the_testing_helper():
    class CostWeightedError(uniloss.Decomposition):
        """Binary decisions [s > 0]; a false negative costs 5, a false positive 1."""

        higher_is_better = False

        def comparisons(self, scores, target):
            return scores

        def best(self, target):
            return target.bool()

        def evaluate(self, bits, target):
            pos = target.bool()
            return ((~bits & pos).float() * 5 + (bits & ~pos).float()).mean(-1)

    def reference(scores, target):
        pred = (scores > 0).numpy()
        y = target.numpy().astype(bool)
        return float(np.mean(5 * (~pred & y) + (pred & ~y)))

    scores, target = torch.randn(30), (torch.rand(30) < 0.5).long()
    assert_exact_decomposition(CostWeightedError(), scores, target, reference)
    with pytest.raises(AssertionError, match="reference_fn"):
        assert_exact_decomposition(CostWeightedError(), scores, target, lambda s, t: 0.123)
