"""The structured engine equals the dense one: loss, gradient and anchor values, for every
decomposition, block by block too; the same generator state gives the same loss."""

import dataclasses

import pytest
import torch

import uniloss
from uniloss import _anchors, _limits, _structured
from uniloss import functional as F
from _reference import AboveOne, good_flips, uniloss_oracle


MarginRecall = AboveOne  # recall of [s > 1] on the positives; no structure(): evaluated densely


def _pck_target(n, j, h, w, g):
    kp = torch.rand(n, j, 2, generator=g, dtype=torch.float64) * torch.tensor([w - 1.0, h - 1.0], dtype=torch.float64)
    vis = torch.rand(n, j, generator=g) < 0.8
    vis[0, 0] = True
    return uniloss.KeypointTarget(kp, vis, 1 + 3 * torch.rand(n, generator=g, dtype=torch.float64))


def _case(name, seed=0):
    """``(decomposition, scores float64, target)``."""
    g = torch.Generator().manual_seed(seed)
    if name.startswith("ap"):
        scores = torch.randn(30, generator=g, dtype=torch.float64)
        labels = (torch.rand(30, generator=g) < 0.3).long()
        labels[:2] = torch.tensor([0, 1])
        return uniloss.AveragePrecision(interpolated=name == "ap-interp"), scores, labels
    if name.startswith("acc"):
        options = {"acc": {}, "acc-topk": {"top_k": 3}, "acc-fraction": {"fraction": 0.3}}[name]
        scores = torch.randn(12, 7, generator=g, dtype=torch.float64)
        return uniloss.MulticlassAccuracy(**options), scores, torch.randint(0, 7, (12,), generator=g)
    if name == "pck-small":  # for the loop oracle
        heat = torch.randn(1, 2, 4, 5, generator=g, dtype=torch.float64)
        return uniloss.PCK(good_flips=2), heat, _pck_target(1, 2, 4, 5, g)
    if name.startswith("pck"):
        heat = torch.randn(2, 3, 6, 7, generator=g, dtype=torch.float64)
        heat[0, 0, 2, 3] += 6  # some joints right
        return uniloss.PCK(good_flips=3 if name == "pck-flips" else 1), heat, _pck_target(2, 3, 6, 7, g)
    scores = torch.randn(25, generator=g, dtype=torch.float64)
    return MarginRecall(), scores, (torch.rand(25, generator=g) < 0.5).long()


CASES = ["ap", "ap-interp", "acc", "acc-topk", "acc-fraction", "pck", "pck-flips", "user"]


def _anchor_set(dec, scores, target, seed, **counts):
    """A structured anchor set for ``scores`` and the prepared target it is drawn over."""
    prepared = dec.prepare(scores, target, torch.Generator().manual_seed(99))
    c = dec.comparisons(scores, prepared).reshape(-1)
    counts = {"num_good": 5, "num_nearby": 6, "num_bad": 11, **counts}
    anchors = uniloss.sample_anchors(
        dec.best(prepared).reshape(-1), c > 0, good_flips=good_flips(dec, prepared, c.numel()),
        generator=torch.Generator().manual_seed(seed), **counts,
    )
    return anchors, prepared


def _run(scores, target, dec, **kw):
    s = scores.clone().requires_grad_()
    loss, info = F.uniloss_with_info(s, target, dec, **kw, interpolation="anchors")
    loss.backward()
    return loss.detach(), s.grad, info


def _assert_same(a, b, rtol=1e-10):
    (la, ga, ia), (lb, gb, ib) = a, b
    torch.testing.assert_close(la, lb, rtol=rtol, atol=1e-14)
    torch.testing.assert_close(ga, gb, rtol=rtol, atol=1e-14)
    torch.testing.assert_close(ia.anchor_values, ib.anchor_values, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(ia.metric, ib.metric, rtol=0, atol=0, equal_nan=True)


@pytest.fixture(params=["small", "blocks"])
def regime(request, monkeypatch):
    """Small problems form the anchors' disagreement densely; larger ones keep it structured."""
    if request.param == "blocks":
        monkeypatch.setattr(_limits, "LIMITS", _limits.LIMITS.override(dense_bits=0, unpack_bits=0))
    return request.param


@pytest.mark.parametrize("distance", ["euclidean", "cross_entropy"])
@pytest.mark.parametrize("temperature_scale", [None, "rms"])
@pytest.mark.parametrize("grad_scale", [1.0, "distance", "bounded", "normalized"])
@pytest.mark.parametrize("name", CASES)
def test_structured_equals_dense_value_gradient_and_anchor_values(name, grad_scale, temperature_scale, distance,
                                                                  regime):
    dec, scores, target = _case(name)
    anchors, prepared = _anchor_set(dec, scores, target, seed=1)
    assert anchors.is_structured
    kw = dict(grad_scale=grad_scale, temperature=0.7, temperature_scale=temperature_scale, distance=distance)
    structured = _run(scores, prepared, dec, anchors=anchors, **kw)
    dense = _run(scores, prepared, dec, anchors=anchors.dense(), **kw)
    _assert_same(structured, dense)
    assert structured[1].abs().sum() > 0


@pytest.mark.parametrize("name", ["ap", "acc-fraction", "pck-small", "user"])
def test_structured_equals_the_loop_oracle(name):
    dec, scores, target = _case(name, seed=3)
    anchors, prepared = _anchor_set(dec, scores, target, seed=2, num_good=3, num_nearby=3, num_bad=3)
    ours = _run(scores, prepared, dec, anchors=anchors, grad_scale=1.0, pull=0)
    s = scores.clone().requires_grad_()
    ref = uniloss_oracle(s, prepared, dec, anchors.dense())
    ref.backward()
    assert float(ours[0]) == pytest.approx(float(ref.detach()), rel=1e-10, abs=1e-12)
    torch.testing.assert_close(ours[1], s.grad, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("name", CASES)
def test_sampled_loss_is_the_structured_loss_of_its_anchors(name):
    # uniloss(generator=...) draws the same anchors as sample_anchors with that generator state.
    dec, scores, target = _case(name, seed=4)
    prepared = dec.prepare(scores, target, torch.Generator().manual_seed(5))
    sampled = _run(scores, prepared, dec, generator=torch.Generator().manual_seed(8))
    anchors, _ = _anchor_set(dec, scores, prepared, seed=8, num_good=16, num_nearby=16, num_bad=16)
    given = _run(scores, prepared, dec, anchors=anchors.dense())
    _assert_same(sampled, given)


@pytest.mark.parametrize("name", CASES)
def test_same_generator_state_same_loss(name, regime):
    dec, scores, target = _case(name, seed=6)
    a = _run(scores, target, dec, generator=torch.Generator().manual_seed(3))
    b = _run(scores, target, dec, generator=torch.Generator().manual_seed(3))
    c = _run(scores, target, dec, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


# ------------------------------------------------------------------------------ block by block


def _pck_batch(seed, n=2, j=3, h=9, w=8, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    heat = torch.randn(n, j, h, w, generator=g, dtype=dtype)
    heat[0, 1, 4, 4] += 5
    return heat, _pck_target(n, j, h, w, g)


@pytest.mark.parametrize("options", [dict(pull=0, grad_scale="distance"), dict(temperature_scale="rms"),
                                     dict(distance="cross_entropy", grad_scale="normalized"),
                                     dict(temperature_scale="rms", distance="cross_entropy", pull=0.7),
                                     dict(nearby="informative", num_nearby=9)])
@pytest.mark.parametrize("chunk_bits", [1, 37, 200])
@pytest.mark.parametrize("good_flips", [1, 2])
def test_blocks_equal_one_block(chunk_bits, good_flips, options, monkeypatch):
    heat, target = _pck_batch(0)
    dec = uniloss.PCK(good_flips=good_flips)
    kw = dict(num_bad=13, **options)
    whole = _run(heat, target, dec, generator=torch.Generator().manual_seed(2), **kw)

    def no_full_comparisons(*args):
        raise AssertionError("the block path must not form all comparisons")

    monkeypatch.setattr(uniloss.PCK, "comparisons", no_full_comparisons)
    blocks = _run(heat, target, dec, generator=torch.Generator().manual_seed(2), chunk_bits=chunk_bits, **kw)
    _assert_same(whole, blocks, rtol=1e-9)
    assert blocks[2].num_bits == whole[2].num_bits > chunk_bits


@pytest.mark.parametrize("pull", [0.0, 0.4])
def test_blocks_with_wide_runs_equal_one_block(pull, monkeypatch):
    """Runs of 64 bits or more: the random anchors' zeros come from byte histograms per run
    (unpacked bits off), the one-block engine from the unpacked bits."""
    heat, target = _pck_batch(3, n=2, j=2, h=12, w=12)
    dec = uniloss.PCK()
    whole = _run(heat, target, dec, generator=torch.Generator().manual_seed(5), num_bad=21, pull=pull)
    monkeypatch.setattr(_limits, "LIMITS", _limits.LIMITS.override(unpack_bits=0))
    blocks = _run(heat, target, dec, generator=torch.Generator().manual_seed(5), num_bad=21, pull=pull,
                  chunk_bits=300)
    _assert_same(whole, blocks, rtol=1e-9)
    assert blocks[2].path == "chunked" and blocks[2].num_bits > 300


class _WeighedPCK(uniloss.PCK):
    """PCK whose structure also gives run weights or per-sample margins (the block path reads both)."""

    def __init__(self, extra):
        super().__init__()
        self.extra = extra

    def structure(self, target):
        s = super().structure(target)
        if self.extra == "weights":
            weights = torch.linspace(0.2, 3.0, s.runs.numel(), dtype=torch.float64)
            return dataclasses.replace(s, run_weights=lambda: weights)
        return dataclasses.replace(s, margins=lambda scores: scores.flatten(1).amax(1) - 1.0)


@pytest.mark.parametrize("extra", ["weights", "margins"])
@pytest.mark.parametrize("step", ["pull", "sum"])
def test_blocks_take_the_structures_run_weights_and_margins(extra, step):
    heat, target = _pck_batch(4)
    dec = _WeighedPCK(extra)
    kw = dict(generator=torch.Generator().manual_seed(7), step=step, pull_per="sample")
    whole = _run(heat, target, dec, **kw)
    blocks = _run(heat, target, dec, chunk_bits=40, **dict(kw, generator=torch.Generator().manual_seed(7)))
    assert blocks[2].path == "chunked" and whole[2].path == "structured"
    _assert_same(whole, blocks, rtol=1e-9)
    plain = _run(heat, target, uniloss.PCK(), chunk_bits=40, **dict(kw, generator=torch.Generator().manual_seed(7)))
    assert not torch.allclose(plain[1], blocks[1])  # the weights or margins moved the gradient


def test_blocks_take_no_pass_in_backward_and_none_for_gradients_under_no_grad(monkeypatch):
    """With a graph to record, one pass over the blocks after the anchors gives the pushes and
    both gradients (the backward pass only scales them); under no_grad that pass is skipped."""
    heat, target = _pck_batch(0)
    calls = []
    block = uniloss.PCK._block
    monkeypatch.setattr(uniloss.PCK, "_block", staticmethod(lambda *a: calls.append(1) or block(*a)))
    kw = dict(generator=torch.Generator().manual_seed(2), chunk_bits=40)
    s = heat.clone().requires_grad_()
    loss, info = F.uniloss_with_info(s, target, uniloss.PCK(), **kw, interpolation="anchors")
    blocks = len(_structured.blocks_of(uniloss.PCK().structure(uniloss.PCK().prepare(heat, target)).runs, 40))
    assert info.path == "chunked" and blocks > 2
    # hard, squared distances, then the gradients' pass (PCK's pull per run in closed form: no block)
    assert len(calls) == 3 * blocks
    calls.clear()
    loss.backward()
    assert calls == [] and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    with torch.no_grad():
        again, _ = F.uniloss_with_info(heat, target, uniloss.PCK(), generator=torch.Generator().manual_seed(2),
                                       chunk_bits=40, interpolation="anchors")
    assert len(calls) == 2 * blocks
    assert torch.equal(again, loss.detach())
    # the chain: the runs' last comparisons (hard with them), then the gradients' pass; with the
    # runs' least comparisons in closed form (Structure.run_least, PCK's default) no block at all
    calls.clear()
    chained = F.uniloss(heat.clone().requires_grad_(), target, _PCKWithoutLeast(), chunk_bits=40, interpolation="chain")
    assert len(calls) == 2 * blocks
    calls.clear()
    chained.backward()
    assert calls == []
    loss, info = F.uniloss_with_info(heat.clone().requires_grad_(), target, uniloss.PCK(), chunk_bits=40)
    loss.backward()
    assert calls == [] and info.path == "runs"


class _PCKWithoutLeast(uniloss.PCK):
    def structure(self, target):
        return dataclasses.replace(super().structure(target), run_least=None)


@pytest.mark.parametrize("num", [5, 8, 16, 21])
def test_random_anchor_kernels_equal_brute_force(num):
    g = torch.Generator().manual_seed(num)
    groups, width, runs = -(-num // 8), 70, 3
    codes = torch.randint(0, 256, (groups, width * runs), generator=g, dtype=torch.uint8)
    bits = _anchors.unpack_codes(codes, num).bool()  # [num, L]: D_jk
    hard = torch.rand(width * runs, generator=g) < 0.6
    zeros_hard = (~hard).view(runs, width).sum(1).float()
    expected = (bits == hard[None]).view(num, runs, width).sum(2).float()  # anchor j's bits are hard xor D_j
    assert torch.equal(_structured.random_zeros(codes, num, hard, width, zeros_hard), expected)
    grad = torch.randn(num, generator=g, dtype=torch.float64)
    tables = _structured.random_tables(grad, groups)
    torch.testing.assert_close(_structured.random_lookup(tables, codes), grad @ bits.double(), rtol=1e-12, atol=1e-12)


def test_blocks_in_half_precision_and_same_state_same_loss():
    heat, target = _pck_batch(1, dtype=torch.float32)
    heat = heat.half()
    a = _run(heat, target, uniloss.PCK(), generator=torch.Generator().manual_seed(0), chunk_bits=30)
    b = _run(heat, target, uniloss.PCK(), generator=torch.Generator().manual_seed(0), chunk_bits=30)
    whole = _run(heat, target, uniloss.PCK(), generator=torch.Generator().manual_seed(0))
    assert a[0].dtype == torch.float16 and torch.isfinite(a[1]).all()
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    torch.testing.assert_close(a[1].float(), whole[1].float(), rtol=1e-2, atol=1e-4)


def test_blocks_of_runs_keep_equal_widths_and_bounds():
    lengths = torch.tensor([4, 4, 4, 0, 3, 3, 5])
    blocks = _structured.blocks_of(lengths, 8)
    assert blocks == [(0, 2, 0, 8, 4), (2, 3, 8, 12, 4), (4, 6, 12, 18, 3), (6, 7, 18, 23, 5)]


# ------------------------------------------------------------------------------ sampling


def test_structured_anchor_kinds():
    g = torch.Generator().manual_seed(0)
    best = torch.rand(40, generator=g) < 0.7
    hard = torch.rand(40, generator=g) < 0.5
    a = uniloss.sample_anchors(best, hard, num_good=4, num_nearby=5, num_bad=9, generator=g)
    bits = a.dense()
    s = a.kind_slices()
    assert torch.equal(bits[0], best)
    assert ((bits[s["good"]] != best).sum(1) == 1).all()
    near = bits[s["nearby"]]
    assert ((near != hard).sum(1) == 1).all()
    assert (near[near != hard] == best[(near != hard).nonzero()[:, 1]]).all()
    assert torch.equal(bits[s["bad"]] ^ hard, _anchors.unpack_codes(a.codes, 9).bool())
    assert a.num_anchors == bits.shape[0] == 19


def test_random_words_are_random_s_full_range_stream():
    """``random_words`` (a ``randint`` that torch.compile keeps in its graph) draws the values of
    ``Tensor.random_(-2**63, None)``, the full-range draw the random anchors were made from: the
    same anchors for the same generator state as before."""
    from uniloss._random import random_words

    for n in (1, 7, 1000):
        g_old, g_new = torch.Generator().manual_seed(n), torch.Generator().manual_seed(n)
        want = torch.empty(n, dtype=torch.int64).random_(-(2**63), None, generator=g_old)
        assert torch.equal(random_words(n, g_new, "cpu"), want)
        assert torch.equal(g_new.get_state(), g_old.get_state())  # and the draws after them too


@pytest.mark.parametrize("rows,per_row", [(2, 5000), (3, 4097), (5, 777), (1, 9000), (4, 1), (100, 300)])
def test_random_word_rows_deal_the_one_draw_out_piece_by_piece(rows, per_row, monkeypatch):
    """Large draws on a CPU generator are made a piece at a time into the result (the peak memory
    of PCK's random anchors: the result's, not three times it): the same words as one draw dealt
    out over the rows, and the generator left where one draw leaves it."""
    from uniloss import _random

    monkeypatch.setattr(_random, "_PIECE_WORDS", 64)
    g_one, g_pieces = torch.Generator().manual_seed(rows), torch.Generator().manual_seed(rows)
    want = _random.random_words(rows * per_row, g_one, "cpu").view(per_row, rows).t()
    got = _random.random_word_rows(rows, per_row, g_pieces, "cpu")
    assert got.shape == (rows, per_row) and got.is_contiguous() and torch.equal(got, want)
    assert torch.equal(g_pieces.get_state(), g_one.get_state())
    torch.manual_seed(3)  # the global generator too
    want = _random.random_words(rows * per_row, None, "cpu").view(per_row, rows).t()
    torch.manual_seed(3)
    assert torch.equal(_random.random_word_rows(rows, per_row, None, "cpu"), want)


@pytest.mark.parametrize("w", [7, 8, 2040, 2041, 4096, 8 * 509, 8 * 256 + 3, 3 * 8 * 1024])
def test_byte_sum_is_the_sum(w):
    # wide runs are summed as int64 words in groups of at most 255 (a byte lane's room): 4096
    # bits (select_chunk) in 4 x 128 words without the zero padding a group of 255 needed
    from uniloss._structured import byte_sum

    x = (torch.rand(2, 40, w, generator=torch.Generator().manual_seed(w)) < 0.97).to(torch.uint8)
    assert torch.equal(byte_sum(x), x.sum(-1, dtype=torch.int32))
    assert torch.equal(byte_sum(x, torch.float32), x.sum(-1, dtype=torch.float32))


def test_random_codes_are_uniform_bits():
    codes = _anchors._random_bytes(1 << 16, torch.Generator().manual_seed(0), "cpu")
    bits = _anchors.unpack_codes(codes.view(1, -1), 8).float()
    assert (bits.mean(1) - 0.5).abs().max() < 0.01


def test_rank_select_by_blocks_equals_one_pass(monkeypatch):
    g = torch.Generator().manual_seed(0)
    u = torch.rand(64, generator=g, dtype=torch.float64)
    r = (u * _anchors._UNIFORM).long()  # the draws r in [0, 2**53) of u in [0, 1)
    for density in (0.0, 0.01, 0.5):
        mask = torch.rand(1000, generator=g) < density
        whole = _anchors._pick_index(mask, r)
        monkeypatch.setattr(_limits, "LIMITS", _limits.LIMITS.override(select_block=64, select_chunk=96))
        blocks = _anchors._pick_index(mask, r)
        monkeypatch.undo()
        assert torch.equal(whole, blocks)
        assert bool(mask[whole].all()) if density else bool((whole == (u * 1000).long()).all())


# ------------------------------------------------------------------------------ counts


@pytest.mark.parametrize("name", ["ap", "ap-interp", "acc", "acc-fraction", "pck"])
def test_evaluate_equals_evaluate_zeros_of_the_counts(name):
    dec, scores, target = _case(name, seed=7)
    prepared = dec.prepare(scores, target, torch.Generator().manual_seed(1))
    l = dec.comparisons(scores, prepared).numel()
    bits = torch.rand(9, l, generator=torch.Generator().manual_seed(2)) < 0.6
    structure = dec.structure(prepared)
    runs = _structured.Runs.of(structure.runs, l, bits.device, True)
    torch.testing.assert_close(
        dec.evaluate(bits, prepared), structure.evaluate_zeros(runs.zeros(~bits, torch.float32)), equal_nan=True
    )


@pytest.mark.parametrize("name", ["ap", "ap-interp", "acc", "acc-fraction", "pck"])
def test_closed_form_single_flip_values_equal_the_generic_ones(name):
    dec, scores, target = _case(name, seed=8)
    prepared = dec.prepare(scores, target, torch.Generator().manual_seed(1))
    l = dec.comparisons(scores, prepared).numel()
    structure = dec.structure(prepared)
    runs = _structured.Runs.of(structure.runs, l, scores.device, True)
    assert (structure.evaluate_zeros_plus_one is None) == (name == "ap-interp")  # a closed form elsewhere
    generic_structure = dataclasses.replace(structure, evaluate_zeros_plus_one=None)
    for zeros in (torch.zeros(runs.num), torch.randint(0, 3, (runs.num,)).float()):
        ours = structure.plus_one(zeros)
        generic = generic_structure.plus_one(zeros)
        torch.testing.assert_close(ours, generic, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------ every single-flip good anchor


def _weighted_reference(scores, prepared, dec, anchors, weights, grad_scale):
    """The weighted IDW loss on dense anchors, through autograd."""
    from uniloss._interpolation import residual, sq_distances

    c = dec.comparisons(scores, prepared).reshape(-1)
    hard, r = residual(c, 1.0)
    with torch.no_grad():
        values = dec.evaluate(anchors, prepared).to(c.dtype)
    d = sq_distances(r, (anchors != hard).to(c.dtype)).sqrt()
    g = (weights * values / d).sum() / (weights / d).sum()
    scale = 1.0 if grad_scale == 1.0 else (weights.sum() / (weights / d.detach()).sum())
    return -g.detach() + (-g + g.detach()) * scale


@pytest.mark.parametrize("grad_scale", [1.0, "distance"])
@pytest.mark.parametrize("name", ["ap", "acc", "pck"])
def test_all_single_flip_good_anchors_equal_their_dense_weighted_form(name, grad_scale, regime):
    dec, scores, target = _case(name, seed=9)
    prepared = dec.prepare(scores, target)
    ours = _run(scores, prepared, dec, generator=torch.Generator().manual_seed(4), good_anchors="all",
                num_good=16, grad_scale=grad_scale, pull=0)
    c = dec.comparisons(scores, prepared).reshape(-1)
    best = dec.best(prepared).reshape(-1)
    hard = c > 0
    drawn = _anchors.draw_anchors(best, hard, hard != best, num_good=0, num_nearby=16, num_bad=16,
                                  good_flips=1, generator=torch.Generator().manual_seed(4)).dense()
    l = c.numel()
    singles = best[None] ^ torch.eye(l, dtype=torch.bool)
    dense = torch.cat([drawn[:1], singles, drawn[1:]])
    weights = torch.ones(dense.shape[0], dtype=scores.dtype)
    weights[1 : 1 + l] = 16 / l
    s = scores.clone().requires_grad_()
    ref = _weighted_reference(s, prepared, dec, dense, weights, grad_scale)
    ref.backward()
    assert float(ours[0]) == pytest.approx(float(ref.detach()), rel=1e-6)
    torch.testing.assert_close(ours[1], s.grad, rtol=1e-5, atol=1e-12)
    assert ours[2].kinds[1] == ("good", l) and ours[2].anchor_values.shape == (dense.shape[0],)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(good_anchors="every"), "`good_anchors`"),
        (dict(chunk_bits=0), "`chunk_bits`"),
        (dict(nearby="useful"), "`nearby`"),
        (dict(good_anchors="all", anchors=torch.ones(2, 6, dtype=torch.bool)), "good_anchors='all'"),
    ],
)
def test_bad_structured_options_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        F.uniloss(torch.randn(5), torch.tensor([1, 0, 0, 1, 0]), uniloss.AveragePrecision(), **kw, interpolation="anchors")


def test_all_good_anchors_need_a_structure():
    with pytest.raises(ValueError, match="structure"):
        F.uniloss(torch.randn(6), torch.tensor([1, 0, 0, 1, 0, 1]), MarginRecall(), good_anchors="all", interpolation="anchors")


@pytest.mark.parametrize("grad_scale", [1.0, "bounded"])
@pytest.mark.parametrize("name", CASES)
def test_informative_nearby_anchors_are_the_anchor_set_without_the_uninformative_ones(name, grad_scale, regime):
    """nearby="informative" on the structured path equals the dense path on the same anchors,
    and equals nearby="all" on the anchor set from which the nearby anchors no better than the
    hard configuration were removed by hand."""
    dec, scores, target = _case(name)
    anchors, prepared = _anchor_set(dec, scores, target, seed=1, num_nearby=12)
    kw = dict(grad_scale=grad_scale, temperature=0.7, pull=0.5)
    structured = _run(scores, prepared, dec, anchors=anchors, nearby="informative", **kw)
    dense = _run(scores, prepared, dec, anchors=uniloss.AnchorSet(anchors.dense(), anchors.kinds),
                 nearby="informative", **kw)
    _assert_same(structured, dense)
    # The oracle: drop the uninformative nearby rows and interpolate over the rest, all weighing one.
    bits = anchors.dense()
    hard = dec.comparisons(scores, prepared).reshape(-1) > 0
    values = dec.evaluate(torch.cat([bits, hard[None]]), prepared).double()
    metric, values = values[-1], values[:-1]
    better = values > metric if dec.higher_is_better else values < metric
    keep, kinds, row = [], [], 0
    for kind, count in anchors.kinds:
        rows = [i for i in range(row, row + count) if kind != "nearby" or better[i]]
        keep += rows
        kinds.append((kind, len(rows)))
        row += count
    reduced = _run(scores, prepared, dec, anchors=uniloss.AnchorSet(bits[keep], tuple(kinds)), nearby="all", **kw)
    torch.testing.assert_close(structured[0], reduced[0], rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(structured[1], reduced[1], rtol=1e-10, atol=1e-14)
    if ("nearby", 12) in anchors.kinds and len(keep) < bits.shape[0]:  # something was dropped: the rule matters
        assert not torch.equal(structured[1], _run(scores, prepared, dec, anchors=anchors, nearby="all", **kw)[1])


@pytest.mark.parametrize("grad_scale", ["bounded", "distance", 0.5])
@pytest.mark.parametrize("name", CASES)
def test_backward_twice_and_the_reused_push_agree_with_the_dense_path(name, grad_scale):
    """The structured backward pass rescales the push that the forward pass measured (the
    interpolation's gradient is linear in its coefficient); a second backward pass
    (``retain_graph=True``) computes it again. Both equal the dense path's gradient on the same
    anchors."""
    dec, scores, target = _case(name)
    anchors, prepared = _anchor_set(dec, scores, target, seed=3)
    s = scores.clone().requires_grad_()
    loss, info = F.uniloss_with_info(s * 1.0, prepared, dec, anchors=anchors, grad_scale=grad_scale, interpolation="anchors")
    assert info.path == "structured"
    loss.backward(retain_graph=True)
    first = s.grad.clone()
    s.grad = None
    loss.backward()
    torch.testing.assert_close(s.grad, first, rtol=1e-12, atol=1e-15)
    dense = _run(scores, prepared, dec, anchors=uniloss.AnchorSet(anchors.dense(), anchors.kinds), grad_scale=grad_scale)
    torch.testing.assert_close(first, dense[1], rtol=1e-9, atol=1e-12)
