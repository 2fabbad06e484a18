"""from_metric's tape on the layout operations a metric may apply after its discrete steps.

The tape runs a traced metric on many anchors at once in one of three forms: each operation batched
by hand over the anchors (``"direct"``), the tape under ``torch.vmap`` and ``fn`` replayed on each
anchor (``"off"``, the reference: it is the user's own code). Each case below applies one layout
operation (transpose, permute, expand, pad, flip, diagonal, movedim, ...) to a tensor that depends
on the comparisons, so it must be batched over the anchors; the three forms must give the same
values on random bits, and the traced metric must equal ``fn`` on the scores.
"""

import pytest
import torch
import torch.nn.functional as F

import uniloss
from uniloss import from_metric


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _binary(n=24, seed=0):
    g = _gen(seed)
    target = (torch.rand(n, generator=g) < 0.4).long()
    target[0], target[1] = 1, 0
    return torch.randn(n, generator=g, dtype=torch.float64) + target, target


def _f1(tp, pred, true):
    return 2 * tp / (pred + true)


def _grid(s, y):  # the decisions and the targets as [4, n / 4] grids
    return (s > 0).double().view(4, -1), y.double().view(4, -1)


def f1_t(s, y):
    p, t = _grid(s, y)
    p, t = p.t(), t.t()
    return _f1((p * t).sum(), p.sum(), t.sum())


def f1_T_rows(s, y):  # per-row F1 of the transposed grid, averaged: the layout matters
    p, t = _grid(s, y)
    p, t = p.T, t.T
    return _f1((p * t).sum(1), p.sum(1), t.sum(1)).nan_to_num(0.0).mean()


def f1_mT(s, y):
    p, t = (s > 0).double().view(2, 3, -1), y.double().view(2, 3, -1)
    p = p.mT
    return _f1((p * t.mT)[:, :, 0].sum(), p[:, :, 0].sum(), t.mT[:, :, 0].sum())


def f1_permute(s, y):
    p, t = (s > 0).double().view(2, 3, -1), y.double().view(2, 3, -1)
    p, t = p.permute(2, 0, 1), t.permute(2, 0, 1)
    return _f1((p[0] * t[0]).sum(), p[0].sum(), t[0].sum())  # only the first slice after the permute


def f1_transpose(s, y):
    p, t = _grid(s, y)
    p, t = p.transpose(0, 1), t.transpose(0, 1)
    return _f1((p[:2] * t[:2]).sum(), p[:2].sum(), t[:2].sum())


def f1_swapaxes(s, y):
    p, t = _grid(s, y)
    p, t = p.swapaxes(0, 1), t.swapaxes(0, 1)
    return _f1((p[1:3] * t[1:3]).sum(), p[1:3].sum(), t[1:3].sum())


def f1_movedim(s, y):
    p, t = (s > 0).double().view(2, 3, -1), y.double().view(2, 3, -1)
    p, t = p.movedim(2, 0), t.movedim(2, 0)
    return _f1((p[:3] * t[:3]).sum(), p[:3].sum(), t[:3].sum())


def f1_flip(s, y):
    p, t = _grid(s, y)
    w = torch.arange(1.0, 7.0, dtype=torch.float64)  # weights that make the order matter
    p = p.flip(1) * w
    return _f1((p * t.flip(1)).sum(), p.sum(), (t * w).sum())


def f1_expand(s, y):
    p, t = (s > 0).double(), y.double()
    p = p[:, None].expand(-1, 3) * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    return _f1((p * t[:, None]).sum(), p.sum(), 6 * t.sum())


def f1_expand_as(s, y):
    p, t = (s > 0).double(), y.double()
    grid = torch.zeros(2, p.numel(), dtype=torch.float64)
    p = p.expand_as(grid)
    return _f1((p * t).sum() / 2, p.sum() / 2, t.sum())


def f1_pad(s, y):
    p, t = _grid(s, y)
    p, t = F.pad(p, (1, 2)), F.pad(t, (1, 2))
    w = torch.arange(p.shape[1], dtype=torch.float64)
    return _f1((p * t * w).sum(), (p * w).sum(), (t * w).sum())


def f1_diagonal(s, y):
    p, t = (s > 0).double().view(6, -1)[:, :4], y.double().view(6, -1)[:, :4]
    d_p, d_t = p.diagonal(), t.diagonal()
    return (_f1((p * t).sum(), p.sum(), t.sum()) + (d_p * d_t).sum() / 4) / 2


def f1_diag(s, y):
    p, t = (s > 0).double()[:4], y.double()[:4]
    m = torch.diag(p)  # a 1-D tensor made a diagonal matrix
    return _f1(((s > 0).double() * y).sum(), (s > 0).double().sum(), y.double().sum()) + (m @ t).sum() / 8


def f1_t_vector(s, y):  # .t() of a 1-D tensor: itself
    p, t = (s > 0).double(), y.double()
    return _f1((p.t() * t).sum(), p.t().sum(), t.sum())


def f1_keepdim(s, y):  # a reduction over every dimension that keeps them
    p, t = _grid(s, y)
    return _f1((p * t).sum(dim=(0, 1), keepdim=True), p.sum(), t.sum()).squeeze()


# Forms of the operations that the rules above do not batch by hand: the tape leaves them to vmap
def f1_diff_prepend(s, y):
    p, t = _grid(s, y)
    d = p.diff(dim=1, prepend=torch.zeros(4, 1, dtype=torch.float64)).abs()  # decisions that change along a row
    return _f1((p * t).sum(), p.sum(), t.sum()) + d.sum() / 100


def f1_flip_dims_as_arguments(s, y):
    p, t = _grid(s, y)
    w = torch.arange(24.0, dtype=torch.float64).view(4, 6)
    return _f1((p.flip(0, 1) * t.flip(0, 1) * w).sum(), (p.flip(0, 1) * w).sum(), (t * w.flip(0, 1)).sum())


def f1_diagonal_of_other_planes(s, y):
    p, t = (s > 0).double().view(2, 3, 4), y.double().view(2, 3, 4)
    return _f1((p * t).sum(), p.sum(), t.sum()) + torch.diagonal(p, 0, 1, 2).sum() / 100


def f1_pad_reflect(s, y):
    p, t = _grid(s, y)
    q = F.pad(p, (2, 1), mode="reflect")
    w = torch.arange(q.shape[1], dtype=torch.float64)
    return _f1((p * t).sum(), p.sum(), t.sum()) + (q * w).sum() / 1000


TO_VMAP = (f1_diff_prepend, f1_flip_dims_as_arguments, f1_diagonal_of_other_planes, f1_pad_reflect)
CASES = {f.__name__: f for f in (f1_t, f1_T_rows, f1_mT, f1_permute, f1_transpose, f1_swapaxes, f1_movedim,
                                 f1_flip, f1_expand, f1_expand_as, f1_pad, f1_diagonal, f1_diag, f1_t_vector,
                                 f1_keepdim) + TO_VMAP}


@pytest.mark.parametrize("name", sorted(CASES))
def test_layout_operations_batched_by_hand_under_vmap_and_replayed_agree(name):
    fn = CASES[name]
    scores, target = _binary()
    traced = from_metric(fn)
    assert float(traced.metric(scores, target)) == pytest.approx(float(fn(scores, target)), abs=1e-12)
    plan = traced.prepare(scores, target)
    bits = torch.rand(11, plan.num_bits, generator=_gen(3)) < 0.5
    bits[0] = traced.best(plan)  # a configuration whose value is known: every decision right
    values = {}
    for kind in ("direct", "vmap", "off"):
        if kind == "direct" and not (plan.trace.tape is not None and plan.trace.tape.direct):
            continue
        plan.tape = kind
        values[kind] = traced.evaluate(bits, plan)
    reference = values.pop("off")
    for kind, got in values.items():
        assert torch.allclose(got, reference, atol=1e-9, equal_nan=True), kind
    # the best bits score what fn gives for scores that put every decision right
    perfect = torch.where(target.bool(), 1.0, -1.0).double()
    assert float(reference[0]) == pytest.approx(float(fn(perfect, target)), abs=1e-9)


@pytest.mark.parametrize("name", ["f1_t", "f1_permute", "f1_expand", "f1_pad", "f1_flip", "f1_diagonal"])
def test_layout_operations_run_batched_by_hand(name):
    """The layout operations with a rule of their own are batched by hand, not left to vmap."""
    scores, target = _binary()
    traced = from_metric(CASES[name])
    plan = traced.prepare(scores, target)
    assert plan.trace.tape is not None and plan.trace.tape.direct, plan.trace.why_no_tape


@pytest.mark.parametrize("fn", TO_VMAP, ids=lambda f: f.__name__)
def test_forms_without_a_rule_of_their_own_are_left_to_vmap(fn):
    """A form the rules refuse (an argument they do not read) falls to vmap rather than to a
    rule that would ignore the argument; the first test checks that its values still agree."""
    scores, target = _binary()
    plan = from_metric(fn).prepare(scores, target)
    assert plan.trace.tape is not None and not plan.trace.tape.direct


@pytest.mark.parametrize("name", ["f1_T_rows", "f1_movedim", "f1_pad"])
def test_a_loss_through_layout_operations_trains(name):
    scores, target = _binary(seed=1)
    x = scores.clone().requires_grad_()
    loss = uniloss.UniLoss(from_metric(CASES[name]), generator=_gen(0))(x, target)
    loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # descending the loss on the scores themselves reaches every decision right
    assert float(from_metric(CASES[name]).metric(scores, target)) < 0.7
    y = scores.clone().requires_grad_()
    opt = torch.optim.SGD([y], lr=5.0)
    fn = uniloss.UniLoss(from_metric(CASES[name]), generator=_gen(0))
    for _ in range(50):
        opt.zero_grad()
        fn(y, target).backward()
        opt.step()
    assert float(from_metric(CASES[name]).metric(y.detach(), target)) == pytest.approx(1.0)
