"""The published script's AP update (uniloss.experiments.published) against loop transcriptions
of that script's ``ap_frombins`` and backward, and its one-sign difference from the true gradient."""

import itertools

import pytest
import torch

from uniloss.experiments.published import PublishedAPLoss, published_anchors, published_gradient, published_values


def _ap_frombins_loop(bits, target):
    """The script's ap_frombins: a topological sort of the pairwise order (0 if it has a cycle),
    then VOC AP of the sorted labels (precision maximised toward higher recall)."""
    pos = [i for i, t in enumerate(target) if t == 1]
    neg = [i for i, t in enumerate(target) if t != 1]
    n = len(target)
    linked = [[] for _ in range(n)]
    above = [0] * n
    for k, (i, j) in enumerate(itertools.product(pos, neg)):
        if bits[k]:  # positive i above negative j
            linked[i].append(j)
            above[j] += 1
        else:
            linked[j].append(i)
            above[i] += 1
    order = []
    while len(order) < n:
        free = [i for i in range(n) if above[i] == 0]
        if not free:
            return 0.0
        i = free[0]
        order.append(i)
        for j in linked[i]:
            above[j] -= 1
        above[i] = -1
    labels = [target[i] for i in order]
    tp, prec, rec = 0, [], []
    for r, y in enumerate(labels, 1):
        tp += y
        prec.append(tp / r)
        rec.append(tp / len(pos))
    for r in range(n - 2, -1, -1):
        prec[r] = max(prec[r], prec[r + 1])
    ap, last = 0.0, 0.0
    for p, r in zip(prec, rec):
        ap += (r - last) * p
        last = r
    return ap


def test_values_match_the_scripts_ap_frombins():
    g = torch.Generator().manual_seed(0)
    seen_zero = seen_positive = 0
    for trial in range(60):
        n = int(torch.randint(4, 9, (1,), generator=g))
        target = [0] * n
        for i in torch.randperm(n, generator=g)[: int(torch.randint(1, n, (1,), generator=g))]:
            target[int(i)] = 1
        P, N = sum(target), n - sum(target)
        if trial % 2:  # consistent bits: from scores
            s = torch.randn(n, generator=g)
            pos = [i for i in range(n) if target[i]]
            neg = [i for i in range(n) if not target[i]]
            bits = torch.tensor([bool(s[i] > s[j]) for i in pos for j in neg])
        else:
            bits = torch.rand(P * N, generator=g) < 0.5
        got = float(published_values(bits[None], P, N)[0])
        want = _ap_frombins_loop(bits.tolist(), target)
        assert got == pytest.approx(want, abs=1e-6)
        seen_zero += want == 0.0
        seen_positive += want > 0.0
    assert seen_zero > 5 and seen_positive > 30  # both branches exercised


def _published_backward_loop(u, anchors, values):
    """The script's backward, coordinate by coordinate, in plain Python floats."""
    t, l = len(anchors), len(anchors[0])
    dis = [sum((u[j] - anchors[i][j]) ** 2 for j in range(l)) ** 0.5 for i in range(t)]
    sum_wi = sum(1 / d for d in dis)
    weighted = sum(v / d for v, d in zip(values, dis))
    grad = []
    for j in range(l):
        a = -sum(values[i] / dis[i] ** 3 * (u[j] - anchors[i][j]) for i in range(t)) / sum_wi
        b = weighted / sum_wi**2 * sum((u[j] - anchors[i][j]) / dis[i] ** 3 for i in range(t))
        grad.append(a - b)
    return grad


def test_gradient_matches_the_scripts_backward_and_differs_from_the_true_one_by_the_sign():
    g = torch.Generator().manual_seed(1)
    u = (torch.rand(12, generator=g, dtype=torch.float64) - 0.5) * 0.9
    anchors = published_anchors(torch.sign(u), 4, g).double()
    values = -torch.rand(anchors.shape[0], generator=g, dtype=torch.float64)
    got = published_gradient(u, anchors, values)
    want = torch.tensor(_published_backward_loop(u.tolist(), anchors.tolist(), values.tolist()), dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)

    # The true gradient of the IDW interpolation, by autograd: they differ by exactly the
    # quotient rule's second term taken twice.
    ur = u.clone().requires_grad_(True)
    w = 1.0 / (ur[None] - anchors).norm(dim=1)
    f = (values * w).sum() / w.sum()
    (true,) = torch.autograd.grad(f, ur)
    dist = (u[None] - anchors).norm(dim=1)
    s = (1 / dist).sum()
    second = float(f.detach()) / s * ((u[None] - anchors) / dist[:, None] ** 3).sum(0)
    torch.testing.assert_close(got, true - 2 * second, rtol=1e-9, atol=1e-12)
    assert (got - true).abs().max() > 1e-3

    torch.testing.assert_close(published_gradient(u, anchors, values, published_sign=False), true, rtol=1e-9, atol=1e-12)

    # Equal values: the interpolation is flat (zero true gradient); the script's still pulls.
    flat = published_gradient(u, anchors, torch.full_like(values, -0.9))
    assert flat.abs().max() > 1e-3


def test_anchor_kinds():
    g = torch.Generator().manual_seed(2)
    sign = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, 1.0, -1.0, 1.0])
    k = 16
    a = published_anchors(sign, k, g)
    assert a.shape == (1 + 3 * k, 8)
    assert bool((a[0] == 1).all())
    good = a[1 : 1 + k]
    assert ((good == -1).sum(1) == 1).all()
    near = a[1 + k : 1 + 2 * k]
    changed = near != sign
    assert (changed.sum(1) == 1).all()
    assert bool((near[changed] == 1).all())  # a wrong bit set right
    # A tie (sign 0) counts as wrong; the script negates it, which leaves it 0.
    tied = published_anchors(torch.tensor([1.0, 0.0, 1.0]), k, g)[1 + k : 1 + 2 * k]
    assert bool((tied == torch.tensor([1.0, 0.0, 1.0])).all())
    bad = a[1 + 2 * k :]
    assert bool(((bad == 1) | (bad == -1)).all())
    # nothing wrong: nearby anchors are the best with one bit flipped
    a = published_anchors(torch.ones(8), k, g)
    assert ((a[1 + k : 1 + 2 * k] == -1).sum(1) == 1).all()


def test_loss_chains_the_published_gradient_through_both_sigmoids():
    target = torch.tensor([1, 0, 0, 1, 0, 0, 0, 1, 0, 0])
    scores = torch.randn(10, generator=torch.Generator().manual_seed(3), dtype=torch.float64, requires_grad=True)
    loss_fn = PublishedAPLoss(num_each=5, generator=torch.Generator().manual_seed(4))
    loss_fn(scores, target).backward()

    # Same anchors, drawn again from the same seed; the chain rule by autograd.
    s = scores.detach().clone().requires_grad_(True)
    p = torch.sigmoid(s)
    pos, neg = target == 1, target == 0
    u = (2 * torch.sigmoid(p[pos][:, None] - p[neg][None, :]) - 1).flatten()
    anchors = published_anchors(torch.sign(u.detach()), 5, torch.Generator().manual_seed(4)).double()
    values = -published_values(anchors > 0, 3, 7)
    grad_u = published_gradient(u.detach(), anchors, values)
    (grad_u * u).sum().backward()
    torch.testing.assert_close(scores.grad, s.grad, rtol=1e-9, atol=1e-12)

    last = loss_fn.last
    w = 1 / (u.detach()[None] - anchors).norm(dim=1)
    assert float(last.surrogate) == pytest.approx(float((-values * w).sum() / w.sum()), rel=1e-6)
    from uniloss.experiments.metrics import average_precision

    assert float(last.metric) == pytest.approx(average_precision(scores.detach(), target, interpolated=True), abs=1e-6)


def test_batch_without_a_positive_gives_an_attached_zero():
    scores = torch.randn(6, requires_grad=True)
    loss = PublishedAPLoss()(scores, torch.zeros(6, dtype=torch.long))
    assert float(loss.detach()) == 0.0 and loss.requires_grad
    loss.backward()
    assert bool((scores.grad == 0).all())
    with pytest.raises(ValueError, match="num_each"):
        PublishedAPLoss(num_each=0)
    with pytest.raises(ValueError, match="same number"):
        PublishedAPLoss()(torch.randn(5), torch.zeros(6, dtype=torch.long))


def test_multiclass_update_matches_a_loop_of_the_cifar_script():
    # The CIFAR script: bits c_ij = p_{i,y_i} - p_{i,j} of the sigmoid outputs, value of an
    # anchor = -(fraction of samples whose bits are all right), the same backward.
    import uniloss
    from uniloss.experiments.published import PublishedLoss

    g = torch.Generator().manual_seed(7)
    n, c = 6, 4
    scores = torch.randn(n, c, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, c, (n,), generator=g)
    loss_fn = PublishedLoss(uniloss.MulticlassAccuracy(), num_each=4, generator=torch.Generator().manual_seed(8))
    loss_fn(scores, target).backward()

    p = torch.sigmoid(scores.detach()).tolist()
    bits, where = [], []  # the script's order: sample-major, other classes ascending
    for i in range(n):
        for j in range(c):
            if j != int(target[i]):
                bits.append(p[i][int(target[i])] - p[i][j])
                where.append((i, j))
    sig = [1 / (1 + __import__("math").exp(-b)) for b in bits]
    u = [2 * x - 1 for x in sig]
    anchors = published_anchors(torch.sign(torch.tensor(u, dtype=torch.float64)), 4, torch.Generator().manual_seed(8))
    anchors = anchors.tolist()
    values = []
    for a in anchors:
        right = sum(all(a[i * (c - 1) + k] > 0 for k in range(c - 1)) for i in range(n))
        values.append(-right / n)
    grad_u = _published_backward_loop(u, anchors, values)
    want = [[0.0] * c for _ in range(n)]
    for k, (i, j) in enumerate(where):
        gk = 2 * sig[k] * (1 - sig[k]) * grad_u[k]
        want[i][int(target[i])] += gk
        want[i][j] -= gk
    s = torch.sigmoid(scores.detach())
    want = torch.tensor(want, dtype=torch.float64) * s * (1 - s)  # through the model's sigmoid
    # (the library's evaluate gives float32 values, e.g. 1/6: hence 1e-6, not 1e-9)
    torch.testing.assert_close(scores.grad, want, rtol=1e-6, atol=1e-12)
    assert float(loss_fn.last.metric) == pytest.approx(float((scores.argmax(1) == target).double().mean()))
