"""``temperature_scale="rms"``: the temperature measured in the comparisons' root mean square."""

import pytest
import torch

import uniloss
from uniloss import functional as F


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(10, 6, generator=g, dtype=torch.float64)
    target = torch.randint(0, 6, (10,), generator=g)
    dec = uniloss.MulticlassAccuracy()
    prepared = dec.prepare(scores, target, None)
    c = dec.comparisons(scores, prepared).reshape(-1)
    anchors = uniloss.sample_anchors(dec.best(prepared).reshape(-1), c > 0, num_good=4, num_nearby=4, num_bad=4,
                                     generator=torch.Generator().manual_seed(1))
    return dec, scores, target, anchors.dense(), c


def _loss_grad(scores, target, dec, **kw):
    kw.setdefault("pull", 0.0)  # the interpolation alone unless a test says otherwise
    kw.setdefault("step", "sum")  # the pull's gradient added, not the step rescaled (see the step tests)
    s = scores.clone().requires_grad_()
    loss = F.uniloss(s, target, dec, **kw, interpolation="anchors")
    loss.backward()
    return loss.detach(), s.grad


@pytest.mark.parametrize("grad_scale", [1.0, "distance"])
def test_rms_scale_is_the_absolute_temperature_of_that_value(grad_scale):
    # The scale is detached: the loss and its gradient are those of the absolute temperature
    # tau * rms(c), computed by hand here.
    dec, scores, target, anchors, c = _batch()
    rms = float(c.square().mean().sqrt())
    rel = _loss_grad(scores, target, dec, anchors=anchors, temperature=0.5, temperature_scale="rms",
                     grad_scale=grad_scale)
    ab = _loss_grad(scores, target, dec, anchors=anchors, temperature=0.5 * rms, grad_scale=grad_scale)
    torch.testing.assert_close(rel[0], ab[0], rtol=1e-12, atol=0)
    torch.testing.assert_close(rel[1], ab[1], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("k", [0.01, 7.0, 1e4])
def test_rms_scale_makes_the_loss_invariant_to_the_scores_scale(k):
    # Absolute temperature: large scores saturate the sigmoid. Relative: the same loss, and a
    # gradient that scales as 1/k (the loss is a function of scores / rms).
    dec, scores, target, anchors, _ = _batch(1)
    base = _loss_grad(scores, target, dec, anchors=anchors, temperature_scale="rms", grad_scale="distance")
    scaled = _loss_grad(scores * k, target, dec, anchors=anchors, temperature_scale="rms", grad_scale="distance")
    torch.testing.assert_close(scaled[0], base[0], rtol=1e-10, atol=0)
    torch.testing.assert_close(scaled[1] * k, base[1], rtol=1e-8, atol=1e-14)
    absolute = _loss_grad(scores * 1e4, target, dec, anchors=anchors, grad_scale="distance")
    assert absolute[1].abs().max() < 1e-12 < base[1].abs().max()  # saturated: no gradient at all


def test_rms_scale_on_an_undefined_batch_and_bad_values():
    s = torch.randn(5, requires_grad=True)
    loss = uniloss.UniLoss(uniloss.AveragePrecision(), temperature_scale="rms", pull_per="run", interpolation="anchors")(
        s, torch.zeros(5, dtype=torch.long))
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.equal(s.grad, torch.zeros(5))
    # the default pull on the margins: binary cross-entropy's gradient, no comparison to scale by
    (grad,) = torch.autograd.grad(uniloss.UniLoss(uniloss.AveragePrecision(), temperature_scale="rms", interpolation="anchors")(
        s, torch.zeros(5, dtype=torch.long)), s)
    torch.testing.assert_close(grad, torch.sigmoid(s.detach()) / 5)
    with pytest.raises(ValueError, match="temperature_scale"):
        uniloss.UniLoss(uniloss.AveragePrecision(), temperature_scale="max", interpolation="anchors")
    with pytest.raises(ValueError, match="temperature_scale"):
        F.uniloss(s, torch.ones(5, dtype=torch.long), uniloss.AveragePrecision(), temperature_scale=1.0, interpolation="anchors")


def _cross_entropy_oracle(scores, target, dec, anchors, temperature):
    """``-g~`` with d_i^2 = sum_k -log P(a_ik | u_k), u = sigmoid(c / tau), by a loop over anchors
    and bits (float64 logs of the sigmoid: independent of the engine's softplus form)."""
    c = dec.comparisons(scores, target).reshape(-1)
    u = torch.sigmoid(c / temperature)
    values = dec.evaluate(anchors, target).to(c.dtype)
    num, den = 0.0, 0.0
    for i in range(anchors.shape[0]):
        sq = sum(-torch.log(u[k]) if anchors[i, k] else -torch.log(1 - u[k]) for k in range(c.numel()))
        num = num + values[i] / sq.sqrt()
        den = den + 1 / sq.sqrt()
    return -num / den


@pytest.mark.parametrize("name", ["ap", "acc"])
def test_cross_entropy_distance_equals_its_loop_oracle(name):
    g = torch.Generator().manual_seed(3)
    if name == "ap":
        dec, scores = uniloss.AveragePrecision(), torch.randn(9, generator=g, dtype=torch.float64)
        target = torch.tensor([1, 0, 0, 1, 0, 0, 1, 0, 0])
    else:
        dec, scores = uniloss.MulticlassAccuracy(), torch.randn(4, 3, generator=g, dtype=torch.float64)
        target = torch.tensor([0, 2, 1, 1])
    prepared = dec.prepare(scores, target, None)
    c = dec.comparisons(scores, prepared).reshape(-1)
    anchors = uniloss.sample_anchors(dec.best(prepared).reshape(-1), c > 0, num_good=3, num_nearby=3, num_bad=3,
                                     generator=torch.Generator().manual_seed(0))
    for given in (anchors, anchors.dense()):  # the structured and the dense path
        ours = _loss_grad(scores, prepared, dec, anchors=given, temperature=0.8, distance="cross_entropy",
                          grad_scale=1.0)
        s = scores.clone().requires_grad_()
        ref = _cross_entropy_oracle(s, prepared, dec, anchors.dense(), 0.8)
        ref.backward()
        torch.testing.assert_close(ours[0], ref.detach(), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(ours[1], s.grad, rtol=1e-8, atol=1e-12)


def test_cross_entropy_distance_keeps_pushing_a_comparison_wrong_by_a_wide_margin():
    # AP of one positive below a negative by a margin m and above two others by 1; anchors best and
    # two single flips (none is the current configuration). The push on the wrong comparison
    # decays like exp(-m) with the Euclidean distance and only like 1/m^2 with the cross-entropy.
    target = torch.tensor([1, 0, 0, 0])
    anchors = torch.tensor([[True, True, True], [True, False, True], [True, True, False]])
    grads = {}
    for distance in ("euclidean", "cross_entropy"):
        for m in (1.0, 20.0):
            s = torch.tensor([0.0, m, -1.0, -1.0], dtype=torch.float64, requires_grad=True)
            F.uniloss(s, target, uniloss.AveragePrecision(), distance=distance, grad_scale=1.0, pull=0,
                      anchors=anchors, interpolation="anchors").backward()
            grads[distance, m] = float(s.grad[1])  # the negative above the positive goes down
    assert all(g > 0 for g in grads.values())
    assert grads["euclidean", 20.0] < 1e-8 * grads["euclidean", 1.0]
    assert grads["cross_entropy", 20.0] > 1e-2 * grads["cross_entropy", 1.0]
    assert grads["cross_entropy", 20.0] > 1e5 * grads["euclidean", 20.0]
    with pytest.raises(ValueError, match="distance"):
        uniloss.UniLoss(uniloss.AveragePrecision(), distance="manhattan", interpolation="anchors")


@pytest.mark.parametrize("structured", [True, False])
@pytest.mark.parametrize("distance", ["euclidean", "cross_entropy"])
def test_normalized_grad_scale_gives_the_comparisons_a_total_push_of_one(structured, distance):
    dec, scores, target, anchors, _ = _batch(2)
    prepared = dec.prepare(scores, target, None)
    given = uniloss.sample_anchors(dec.best(prepared).reshape(-1), dec.comparisons(scores, prepared).reshape(-1) > 0,
                                   num_good=4, num_nearby=4, num_bad=4, generator=torch.Generator().manual_seed(1))
    given = given if structured else given.dense()
    for weight in (1.0, 3.0):
        s = scores.clone().requires_grad_()
        c = dec.comparisons(s, prepared)

        class Given(uniloss.MulticlassAccuracy):  # hands the engine the comparisons computed above
            def comparisons(self, scores, target):
                return c

        loss = F.uniloss(s, prepared, Given(), anchors=given, grad_scale="normalized", distance=distance, pull=0, interpolation="anchors")
        (grad_c,) = torch.autograd.grad(weight * loss, c)
        assert float(grad_c.abs().sum()) == pytest.approx(weight, rel=1e-10)
        plain = F.uniloss(scores.clone().requires_grad_(), prepared, dec, anchors=given, grad_scale=1.0,
                          distance=distance, pull=0, interpolation="anchors")
        assert float(loss.detach()) == pytest.approx(float(plain.detach()), rel=1e-12)  # the value is -g~


@pytest.mark.parametrize("per", ["comparison", "run"])
@pytest.mark.parametrize("structured", [True, False])
def test_pull_adds_the_gradient_of_the_cross_entropy_to_best_and_keeps_the_value(structured, per):
    dec, scores, target, anchors, c = _batch(4)
    prepared = dec.prepare(scores, target, None)
    given = uniloss.sample_anchors(dec.best(prepared).reshape(-1), c > 0, num_good=4, num_nearby=4, num_bad=4,
                                   generator=torch.Generator().manual_seed(1))
    given = given if structured else given.dense()
    plain = _loss_grad(scores, prepared, dec, anchors=given, temperature=0.7, pull_per=per)
    pulled = _loss_grad(scores, prepared, dec, anchors=given, temperature=0.7, pull=2.5, pull_per=per)
    assert torch.equal(pulled[0], plain[0])  # the loss still reads as -g~
    s = scores.clone().requires_grad_()
    t = target
    if per == "comparison":
        # By hand: 2.5 * mean_k log(1 + exp(-(2 b_k - 1) c_k / 0.7)) over the batch's 10 x 5 comparisons.
        others = torch.ones_like(s, dtype=torch.bool).scatter_(1, t[:, None], False)
        diff = (s.gather(1, t[:, None]) - s)[others]  # every best bit is 1: the target above the others
        (2.5 * torch.log1p(torch.exp(-diff / 0.7)).mean()).backward()
    else:  # per sample (accuracy's runs): cross-entropy on the logits at temperature 0.7
        (2.5 * torch.nn.functional.cross_entropy(s / 0.7, t)).backward()
    torch.testing.assert_close(pulled[1], plain[1] + s.grad, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("seed", range(3))
def test_run_pull_by_hand_for_ap_and_the_zoos_argmax_metrics(seed):
    """AP's runs are the positives: log(1 + sum_neg exp(-(s_p - s_n))) summed over the positives and
    divided by the batch size (more samples than positives); the zoo's argmax metrics take
    cross-entropy per row (sample or pixel); the zoo's ranking metrics one run per item (its pairs
    with the less relevant items of its query); a decomposition without runs keeps the mean over
    comparisons (F1 at a threshold: per score, the same)."""
    g = torch.Generator().manual_seed(seed)

    def pull_grad(dec, scores, target, per="run"):
        s = scores.clone().requires_grad_()
        # a vanishing interpolation: the gradient is the pull's alone; every run alike (the
        # metric's weights: tests/test_pull_weights.py)
        F.uniloss(s, target, dec, grad_scale=1e-300, pull_per=per, pull_weights="equal",
                  generator=torch.Generator().manual_seed(0), interpolation="anchors").backward()
        return s.grad

    scores = torch.randn(24, generator=g, dtype=torch.float64) * 3
    labels = torch.arange(24) % 5 == 0
    s = scores.clone().requires_grad_()
    pos, neg = s[labels], s[~labels]
    (torch.log1p(torch.exp(-(pos[:, None] - neg[None, :])).sum(1)).sum() / 24).backward()
    torch.testing.assert_close(pull_grad(uniloss.AveragePrecision(), scores, labels), s.grad, rtol=1e-10, atol=1e-15)

    logits = torch.randn(12, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 6, (12,), generator=g)
    for dec in (uniloss.MulticlassAccuracy(), uniloss.zoo.balanced_accuracy(6), uniloss.zoo.macro_f1(6)):
        s = logits.clone().requires_grad_()
        torch.nn.functional.cross_entropy(s, y).backward()
        torch.testing.assert_close(pull_grad(dec, logits, y), s.grad, rtol=1e-10, atol=1e-15)
    maps, pixels = torch.randn(2, 4, 3, 5, generator=g, dtype=torch.float64), torch.randint(0, 4, (2, 3, 5), generator=g)
    s = maps.clone().requires_grad_()
    torch.nn.functional.cross_entropy(s, pixels).backward()  # per pixel, averaged over the pixels
    torch.testing.assert_close(pull_grad(uniloss.zoo.mean_iou(4), maps, pixels), s.grad, rtol=1e-10, atol=1e-15)

    # The zoo's ranking metrics (the Ranking decoder, pruned pairs): one run per item, its pairs
    # with the less relevant items of its query; for 0/1 relevance AP's runs.
    torch.testing.assert_close(pull_grad(uniloss.zoo.auroc(), scores, labels.long()),
                               pull_grad(uniloss.AveragePrecision(), scores, labels), rtol=1e-10, atol=1e-15)
    grades, query = torch.randint(0, 4, (24,), generator=g), torch.randint(0, 3, (24,), generator=g)
    s = scores.clone().requires_grad_()
    above = (grades[:, None] > grades[None, :]) & (query[:, None] == query[None, :])  # [i, j]: i more relevant
    terms = torch.where(above, torch.exp(-(s[:, None] - s[None, :])), torch.zeros(()).double())
    (torch.log1p(terms.sum(1)).sum() / 24).backward()
    for dec in (uniloss.zoo.ndcg_at_k(5), uniloss.zoo.ndcg_at_k(5, num_grades=4)):
        target = uniloss.decoders.RankingTarget(grades, query)
        torch.testing.assert_close(pull_grad(dec, scores, target), s.grad, rtol=1e-10, atol=1e-15)

    binary = (torch.rand(16, generator=g) < 0.4).long()
    torch.testing.assert_close(pull_grad(uniloss.zoo.f_beta(1.0), scores[:16], binary),
                               pull_grad(uniloss.zoo.f_beta(1.0), scores[:16], binary, per="comparison"))


def test_pull_keeps_pushing_a_comparison_wrong_by_a_wide_margin():
    target = torch.tensor([1, 0, 0, 0])
    anchors = torch.tensor([[True, True, True], [True, False, True], [True, True, False]])
    for per, share in (("comparison", 1 / 3), ("run", 1 / 4)):
        grads = []
        for m in (1.0, 50.0):
            s = torch.tensor([0.0, m, -1.0, -1.0], dtype=torch.float64, requires_grad=True)
            F.uniloss(s, target, uniloss.AveragePrecision(), anchors=anchors, pull=1.0, pull_per=per,
                      step="sum", interpolation="anchors").backward()
            grads.append(float(s.grad[1]))
        # d/dc softplus(c) -> 1, the mean of 3 bits; per run: the one positive's soft maximum, over 4 samples
        assert grads[1] == pytest.approx(share, rel=1e-6) and grads[0] > 0
    with pytest.raises(ValueError, match=r"`pull` to be a finite number >= 0"):  # 0 is the paper's loss
        uniloss.UniLoss(uniloss.AveragePrecision(), pull=-1.0, interpolation="anchors")
    uniloss.UniLoss(uniloss.AveragePrecision(), pull=0.0, interpolation="anchors")
    with pytest.raises(ValueError, match=r"`grad_scale` in \('distance', 'bounded', 'normalized'\)"):
        uniloss.UniLoss(uniloss.AveragePrecision(), grad_scale="Bounded")  # a typo names the modes
    with pytest.raises(ValueError, match=r"`grad_scale` to be a finite number > 0"):
        uniloss.UniLoss(uniloss.AveragePrecision(), grad_scale=-2.0)
    with pytest.raises(ValueError, match="pull_per"):
        uniloss.UniLoss(uniloss.AveragePrecision(), pull_per="query", interpolation="anchors")


@pytest.mark.parametrize("structured", [True, False])
def test_bounded_grad_scale_is_the_distance_scale_capped_at_a_unit_push(structured):
    # The distance-scaled push grows like sqrt(l) near the centre of the cube: l = 1,800 here.
    g = torch.Generator().manual_seed(5)
    dec, scores = uniloss.MulticlassAccuracy(), torch.randn(200, 10, generator=g, dtype=torch.float64)
    target = torch.randint(0, 10, (200,), generator=g)
    prepared = dec.prepare(scores, target, None)
    pushes = {}
    for scale in ("distance", "bounded"):
        for k in (0.05, 30.0):  # near the centre of the cube the distance scale is large; far out, small
            s = (scores * k).clone().requires_grad_()
            c = dec.comparisons(s, prepared)
            given = uniloss.sample_anchors(dec.best(prepared).reshape(-1), c.detach().reshape(-1) > 0, num_good=4,
                                           num_nearby=4, num_bad=4, generator=torch.Generator().manual_seed(1))

            class Given(uniloss.MulticlassAccuracy):
                def comparisons(self, scores, target):
                    return c

            loss = F.uniloss(s, prepared, Given(), anchors=given if structured else given.dense(), grad_scale=scale,
                             pull=0, interpolation="anchors")
            pushes[scale, k] = float(torch.autograd.grad(loss, c)[0].abs().sum())
    assert pushes["distance", 0.05] > 1.0 and pushes["bounded", 0.05] == pytest.approx(1.0, rel=1e-9)
    assert pushes["distance", 30.0] < 1.0 and pushes["bounded", 30.0] == pytest.approx(pushes["distance", 30.0], rel=1e-9)


def _imbalanced_classes(seed=6):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, 4, (20,), generator=g)
    target[:12] = 0
    return uniloss.zoo.balanced_accuracy(4), torch.randn(20, 4, generator=g, dtype=torch.float64), target


# (option, default, another value, the value a module pickled before the option keeps, a batch)
OLD_MODULES = [("pull_per", "sample", "run", "comparison", lambda: _batch(6)[:3]),
               ("pull_weights", "metric", "equal", "equal", _imbalanced_classes)]


@pytest.mark.parametrize("option, default, other, old_value, batch", OLD_MODULES, ids=[o[0] for o in OLD_MODULES])
def test_options_defaults_and_old_modules_keep_theirs(option, default, other, old_value, batch):
    """0.4's default pull is per sample (per run for accuracy: 0.2's), 0.5's weighs the runs by
    the metric; a module pickled before an option existed (no attribute) keeps the behaviour of
    its time (0.1's pull per comparison, 0.4's runs alike), and says which in its repr."""
    dec, scores, target = batch()
    assert getattr(uniloss.UniLoss(dec, interpolation="anchors"), option) == default
    assert option not in repr(uniloss.UniLoss(dec, interpolation="anchors"))
    assert f"{option}={other!r}" in repr(uniloss.UniLoss(dec, **{option: other}, interpolation="anchors"))

    def grad(module):
        s = scores.clone().requires_grad_()
        module(s, target).backward()
        return s.grad

    old = uniloss.UniLoss(dec, generator=torch.Generator().manual_seed(3), interpolation="anchors")
    delattr(old, option)  # as unpickled from before the option
    assert f"{option}={old_value!r}" in repr(old)
    explicit = uniloss.UniLoss(dec, generator=torch.Generator().manual_seed(3), **{option: old_value}, interpolation="anchors")
    torch.testing.assert_close(grad(old), grad(explicit), rtol=0, atol=0)
    assert f"{option}={old_value!r}" in repr(explicit)
    current = uniloss.UniLoss(dec, generator=torch.Generator().manual_seed(3), interpolation="anchors")
    assert not torch.allclose(grad(current), grad(explicit))


# ------------------------------------------------------------------------------ step="pull"


@pytest.mark.parametrize("structured", [True, False])
@pytest.mark.parametrize("grad_scale", ["bounded", 1.0])
def test_step_pull_is_the_summed_gradient_times_the_pulls_share(structured, grad_scale):
    """``step="pull"``: the gradient of ``step="sum"`` times ``P / (P + I)``, by hand for accuracy:
    ``P`` cross-entropy's push on the comparisons ``sum_i (1 - p_{i,y}) / (n tau)``, ``I`` the
    interpolation's alone (``pull=0``), read off the scores' gradient (for ``c_ij = s_iy - s_ij``,
    ``|dL/dc_ij| = |dL/ds_ij|`` off the label). The value stays the interpolated metric's."""
    dec, scores, target, anchors, c = _batch(5)
    prepared = dec.prepare(scores, target, None)
    given = uniloss.sample_anchors(dec.best(prepared).reshape(-1), c > 0, num_good=4, num_nearby=4, num_bad=4,
                                   generator=torch.Generator().manual_seed(1))
    given = given if structured else given.dense()
    kw = dict(anchors=given, temperature=0.7, grad_scale=grad_scale)
    interp = _loss_grad(scores, prepared, dec, **kw)
    summed = _loss_grad(scores, prepared, dec, pull=1.0, **kw)
    stepped = _loss_grad(scores, prepared, dec, pull=1.0, step="pull", **kw)
    off_label = torch.ones_like(scores, dtype=torch.bool).scatter_(1, target[:, None], False)
    push_i = interp[1][off_label].abs().sum()
    push_p = (1 - torch.softmax(scores / 0.7, 1).gather(1, target[:, None])).sum() / (len(target) * 0.7)
    assert torch.equal(stepped[0], summed[0]) and torch.equal(stepped[0], interp[0])
    torch.testing.assert_close(stepped[1], summed[1] * push_p / (push_p + push_i), rtol=1e-10, atol=1e-15)
    assert 0 < push_i and not torch.allclose(stepped[1], summed[1])


def test_step_pull_block_by_block_equals_one_block():
    """PCK over ``chunk_bits`` (the chunked path measures the pull's push in its pass over the
    blocks) gives the one-block engine's loss and gradient with ``step="pull"``."""
    g = torch.Generator().manual_seed(4)
    kp = 5 * torch.rand(2, 3, 2, generator=g, dtype=torch.float64)
    target = uniloss.KeypointTarget(kp, torch.ones(2, 3, dtype=torch.bool), 1 + 2 * torch.rand(2, generator=g, dtype=torch.float64))
    maps = torch.randn(2, 3, 6, 7, generator=g, dtype=torch.float64)
    out = {}
    for chunk_bits in (None, 16):
        s = maps.clone().requires_grad_()
        loss, info = F.uniloss_with_info(s, target, uniloss.PCK(), generator=torch.Generator().manual_seed(2),
                                         chunk_bits=chunk_bits, step="pull", interpolation="anchors")
        loss.backward()
        out[info.path] = loss.detach(), s.grad
    s = maps.clone().requires_grad_()
    F.uniloss(s, target, uniloss.PCK(), generator=torch.Generator().manual_seed(2), step="sum", interpolation="anchors").backward()
    assert set(out) == {"structured", "chunked"}
    torch.testing.assert_close(out["chunked"][0], out["structured"][0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(out["chunked"][1], out["structured"][1], rtol=1e-9, atol=1e-14)
    assert not torch.allclose(out["structured"][1], s.grad)  # the step changed the gradient


def test_step_option_is_checked_and_shown():
    dec = uniloss.MulticlassAccuracy()
    with pytest.raises(ValueError, match="step"):
        uniloss.UniLoss(dec, step="both", interpolation="anchors")
    assert "step='sum'" in repr(uniloss.UniLoss(dec, step="sum", interpolation="anchors"))
    assert "step" not in repr(uniloss.UniLoss(dec, interpolation="anchors"))  # "pull", the default since 0.3
    # pull=0 (the paper's loss): no pull to size the step by, the interpolation's gradient either way
    dec, scores, target, anchors, c = _batch(2)
    one, two = (_loss_grad(scores, target, dec, anchors=anchors, pull=0.0, step=s) for s in ("pull", "sum"))
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


def test_step_pull_with_pull_zero_measures_no_push(monkeypatch):
    """With ``pull=0`` (the paper's loss) and a constant gradient scale, ``step="pull"`` (the
    default) asks the engine for no total push: no extra pass over the comparisons."""
    from uniloss import _interpolation

    calls = []
    real = _interpolation.gradient_scale

    def spy(grad_scale, harmonic, total_push, need_push=False):
        calls.append(need_push)
        return real(grad_scale, harmonic, total_push, need_push)

    monkeypatch.setattr(uniloss._structured, "gradient_scale", spy)
    monkeypatch.setattr(F, "gradient_scale", spy)
    dec, scores, target, anchors, c = _batch(3)
    for given in (anchors, None):  # dense, then sampled (structured)
        F.uniloss(scores.clone().requires_grad_(), target, dec, anchors=given, pull=0.0, grad_scale=1.0,
                  generator=torch.Generator().manual_seed(0), interpolation="anchors").backward()
        F.uniloss(scores.clone().requires_grad_(), target, dec, anchors=given, grad_scale=1.0,
                  generator=torch.Generator().manual_seed(0), interpolation="anchors").backward()
    assert calls == [False, True, False, True]


# ------------------------------------------------------------------------------ pull_per="sample"


def _ap_batch(seed=0, n=12):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(n, generator=g, dtype=torch.float64)
    target = (torch.rand(n, generator=g) < 0.3).long()
    target[:2] = torch.tensor([1, 0])  # both classes
    return scores, target


@pytest.mark.parametrize("metric", ["ap", "zoo-ap", "zoo-auroc"])
def test_pull_per_sample_on_one_ranking_is_binary_cross_entropy(metric):
    """The pull alone (no anchor but best) of a metric ranking one set by binary labels is
    binary cross-entropy on the scores at ``tau = 1``, and ``mean softplus(-m / tau)`` of the
    margins at another ``tau``; ``pull_per="run"`` keeps the pull per positive (0.3)."""
    dec = {"ap": uniloss.AveragePrecision(), "zoo-ap": uniloss.zoo.average_precision(),
           "zoo-auroc": uniloss.zoo.auroc()}[metric]
    scores, target = _ap_batch(3)
    none = dict(num_good=0, num_nearby=0, num_bad=0)
    bce = scores.clone().requires_grad_()
    torch.nn.functional.binary_cross_entropy_with_logits(bce, target.double()).backward()
    torch.testing.assert_close(_loss_grad(scores, target, dec, pull=1.0, **none)[1], bce.grad, rtol=1e-12, atol=1e-15)
    hot = scores.clone().requires_grad_()
    margins = torch.where(target.bool(), hot, -hot)
    torch.nn.functional.softplus(-margins / 0.5).mean().backward()
    torch.testing.assert_close(_loss_grad(scores, target, dec, pull=1.0, temperature=0.5, **none)[1], hot.grad,
                               rtol=1e-12, atol=1e-15)
    per_run = _loss_grad(scores, target, dec, pull=1.0, pull_per="run", **none)[1]
    assert not torch.allclose(per_run, bce.grad)
    assert per_run[target == 0].sum() == pytest.approx(-per_run[target == 1].sum())  # pairs: a zero-sum push


def _ordinal_logistic_grad(scores, relevance, boundaries):
    """The gradient of the all-threshold ordinal logistic loss by hand: per item, the logistic
    losses of ``s > b - 1`` (grade >= b) or ``s < b - 1`` summed over b = 1..boundaries; averaged."""
    s = scores.clone().requires_grad_()
    terms = [torch.nn.functional.softplus((b - 1) - s[i]) if int(relevance[i]) >= b
             else torch.nn.functional.softplus(s[i] - (b - 1))
             for i in range(len(s)) for b in range(1, boundaries + 1)]
    (torch.stack(terms).sum() / len(s)).backward()
    return s.grad


def test_pull_per_sample_of_ranking_metrics_with_queries():
    """0/1 relevance, with query ids too: the pull alone is binary cross-entropy (the zoo's binary
    ranking metrics, NDCG of 0/1 relevance); graded relevance (0.10) the all-threshold ordinal
    logistic loss, binary cross-entropy's extension to grades (0.9 and ``pull_per="run"``: per run)."""
    none = dict(pull=1.0, num_good=0, num_nearby=0, num_bad=0)
    scores, target = _ap_batch(4)
    query = torch.arange(12) % 3
    bce = scores.clone().requires_grad_()
    torch.nn.functional.binary_cross_entropy_with_logits(bce, target.double()).backward()
    for dec in (uniloss.zoo.average_precision(), uniloss.zoo.mrr(), uniloss.zoo.ndcg_at_k(3),
                uniloss.zoo.ndcg_at_k(3, num_grades=2)):
        for relevance in (target, target.bool(), target.double()):
            got = _loss_grad(scores, uniloss.decoders.RankingTarget(relevance, query), dec, **none)[1]
            torch.testing.assert_close(got, bce.grad, rtol=1e-12, atol=1e-15)
    graded = target * 2 + (torch.arange(12) % 2)  # grades 0-3
    relevance = uniloss.decoders.RankingTarget(graded, query)
    for dec in (uniloss.zoo.ndcg_at_k(3), uniloss.zoo.ndcg_at_k(3, num_grades=4)):
        default = _loss_grad(scores, relevance, dec, **none)[1]
        torch.testing.assert_close(default, _ordinal_logistic_grad(scores, graded, 3), rtol=1e-12, atol=1e-15)
        per_run = _loss_grad(scores, relevance, dec, pull_per="run", **none)[1]
        assert not torch.allclose(default, per_run)
    # num_grades=4 decides as a static layout would, whatever this batch holds: three boundaries
    binary_batch = uniloss.decoders.RankingTarget(target, query)
    dec = uniloss.zoo.ndcg_at_k(3, num_grades=4)
    torch.testing.assert_close(_loss_grad(scores, binary_batch, dec, **none)[1],
                               _ordinal_logistic_grad(scores, target, 3), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("structured", [True, False])
def test_step_pull_on_margins_by_hand(structured):
    """AP's default: the interpolation's gradient on the comparisons and binary cross-entropy's on
    the scores, both times ``P / (P + I)``: ``P = sum_i sigmoid(-m_i) / n`` the margins' push,
    ``I`` twice the interpolation's total push on the comparisons (``pull=0``; 0.9, the pull's
    units: each comparison a positive's score minus a negative's moves two scores; the bound of
    its push carried to the scores, which the anchors' pushes of both signs keep below it)."""
    scores, target = _ap_batch(5)
    dec = uniloss.AveragePrecision()
    prepared = dec.prepare(scores, target)
    c0 = dec.comparisons(scores, prepared).detach()
    given = uniloss.sample_anchors(dec.best(prepared).reshape(-1), c0 > 0, num_good=4, num_nearby=4, num_bad=4,
                                   generator=torch.Generator().manual_seed(1))
    given = given if structured else given.dense()

    def grads(**kw):
        s, c = scores.clone().requires_grad_(), c0.clone().requires_grad_()

        class Given(uniloss.AveragePrecision):  # the comparisons a leaf of their own: their gradient apart
            def comparisons(self, scores, target):
                return c

        loss = F.uniloss(s, prepared, Given(), anchors=given, **kw, interpolation="anchors")
        gs, gc = torch.autograd.grad(loss, (s, c), allow_unused=True)
        return loss.detach(), (torch.zeros_like(scores) if gs is None else gs), gc

    interp = grads(pull=0.0)
    default = grads()
    gc = interp[2].view(len(prepared.pos), len(prepared.neg))  # through c = s_pos - s_neg onto the scores
    on_scores = torch.zeros_like(scores).index_add_(0, prepared.pos, gc.sum(1)).index_add_(0, prepared.neg, -gc.sum(0))
    push_i = 2 * interp[2].abs().sum()
    assert 0 < float(on_scores.abs().sum()) < float(push_i)  # (pushes of both signs on one score cancel)
    margins = torch.where(target.bool(), scores, -scores)
    push_p = torch.sigmoid(-margins).sum() / len(scores)
    bce = scores.clone().requires_grad_()
    torch.nn.functional.binary_cross_entropy_with_logits(bce, target.double()).backward()
    f = push_p / (push_p + push_i)
    assert torch.equal(default[0], interp[0]) and 0 < float(push_i)
    torch.testing.assert_close(default[2], interp[2] * f, rtol=1e-10, atol=1e-15)
    torch.testing.assert_close(default[1], bce.grad * f, rtol=1e-10, atol=1e-15)


def test_the_chains_step_on_margins_has_binary_cross_entropys_units():
    """The default (chain, pull on the margins): ``I`` is the interpolation's push carried to the
    scores, the pull's units, computed here through ``c = s_pos - s_neg`` by hand; AP's chain
    pushes every comparison one way, so it is twice the push on the comparisons exactly."""
    scores, target = _ap_batch(7)
    dec = uniloss.AveragePrecision()
    prepared = dec.prepare(scores, target)
    c0 = dec.comparisons(scores, prepared).detach()

    def grads(**kw):
        s, c = scores.clone().requires_grad_(), c0.clone().requires_grad_()

        class Given(uniloss.AveragePrecision):  # the comparisons a leaf of their own
            def comparisons(self, scores, target):
                return c

        loss = F.uniloss(s, prepared, Given(), **kw)
        gs, gc = torch.autograd.grad(loss, (s, c), allow_unused=True)
        return (torch.zeros_like(scores) if gs is None else gs), gc

    _, interp = grads(pull=0.0)
    on_comparisons = interp.view(len(prepared.pos), len(prepared.neg))
    on_scores = (torch.zeros_like(scores).index_add_(0, prepared.pos, on_comparisons.sum(1))
                 .index_add_(0, prepared.neg, -on_comparisons.sum(0)))
    push_i = on_scores.abs().sum()
    torch.testing.assert_close(push_i, 2 * interp.abs().sum(), rtol=1e-12, atol=0)
    push_p = torch.sigmoid(-torch.where(target.bool(), scores, -scores)).sum() / len(scores)
    bce = scores.clone().requires_grad_()
    torch.nn.functional.binary_cross_entropy_with_logits(bce, target.double()).backward()
    f = push_p / (push_p + push_i)
    default_s, default_c = grads()
    torch.testing.assert_close(default_c, interp * f, rtol=1e-10, atol=1e-15)
    torch.testing.assert_close(default_s, bce.grad * f, rtol=1e-10, atol=1e-15)


def test_margins_follow_a_cross_batch_memory():
    """Through :class:`~uniloss.distributed.CrossBatchMemory` the margins cover the batch and the
    memory (the memory detached): the pull alone is the mean over both, its gradient on the batch."""
    from uniloss.distributed import CrossBatchMemory

    scores, target = _ap_batch(6)
    memory = CrossBatchMemory(uniloss.AveragePrecision(), size=8)
    loss = uniloss.UniLoss(memory, num_good=0, num_nearby=0, num_bad=0, interpolation="anchors")
    loss(scores[:6].clone().requires_grad_(), target[:6])  # fills the memory with the first six
    s = scores[6:].clone().requires_grad_()
    loss(s, target[6:]).backward()
    ref = s.detach().clone().requires_grad_()
    both = torch.cat([ref, scores[:6]])  # the memory after the batch (uniloss.distributed's order)
    labels = torch.cat([target[6:], target[:6]]).double()
    (torch.nn.functional.binary_cross_entropy_with_logits(both, labels, reduction="sum") / 12).backward()
    torch.testing.assert_close(s.grad, ref.grad, rtol=1e-12, atol=1e-15)


def test_structure_margins_must_be_callable():
    with pytest.raises(TypeError, match="margins"):
        uniloss.Structure(runs=1, margins=torch.zeros(3))
