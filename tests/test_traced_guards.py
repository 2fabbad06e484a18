"""from_metric on metrics whose Python control flow reads their discrete steps (``if tp == 0:``,
``int(pred.sum())``): the tape computes each value read at every configuration, and where one
differs from the trace's, ``fn`` is traced again on that other path (its tape stands in where
its values read hold) or replayed there. Checked against ``fn`` on scores that give each
configuration, against an independent decomposition (``zoo.auroc``) and against the same metric
written without its branches; where no trace gives a tape that can check a value read, ``fn`` is
replayed at every configuration, with a warning.
"""

import warnings

import pytest
import torch

import uniloss
from uniloss import from_metric, zoo


def branchy(s, y):  # [n], [n] in {0, 1}: a different formula on each side of two branches
    pred, pos = s > 0, y == 1
    tp, npred = (pred & pos).sum(), pred.sum()
    if npred == 0:
        return torch.tensor(0.5)
    if 2 * tp > pos.sum():  # more than half the positives found: F1, else precision
        return 2 * tp / (npred + pos.sum())
    return tp / npred


def python_count(s, y):  # the count of predictions as a Python number, then used in the value
    pred = s > 0
    k = int(pred.sum())
    return (pred & (y == 1)).sum() / max(k, 1)


def _data(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    target = (torch.rand(n, generator=g) < 0.4).long()
    target[0], target[1] = 1, 0
    return torch.randn(n, generator=g, dtype=torch.float64) + target, target


def _configurations(n, seed=0):
    """Random bits and every point of a chain: many configurations on each side of the branches."""
    g = torch.Generator().manual_seed(seed)
    bits = torch.rand(40, n, generator=g) < torch.rand(40, 1, generator=g)
    rank = torch.randperm(n, generator=g)
    chain = rank[None] < torch.arange(n + 1)[:, None]
    return torch.cat([bits, chain, torch.zeros(1, n, dtype=torch.bool), torch.ones(1, n, dtype=torch.bool)])


@pytest.mark.parametrize("fn", [branchy, python_count], ids=lambda f: f.__name__)
def test_each_configuration_takes_fns_own_path(fn):
    scores, target = _data()
    metric = from_metric(fn)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the tape stands in for fn: no fallback to replaying fn whole
        uniloss.UniLoss(metric)(scores.clone().requires_grad_(), target)
    plan = metric.prepare(scores, target)
    assert plan.tape == "direct" and plan.trace.tape.guards
    bits = _configurations(scores.numel())
    expected = torch.stack([fn(torch.where(b, 1.0, -1.0), target) for b in bits])  # a bit: a score above 0
    paths = {(bool(b.sum() == 0), bool(2 * (b & (target == 1)).sum() > (target == 1).sum())) for b in bits}
    assert len(paths) == 3  # every branch of branchy is taken somewhere
    torch.testing.assert_close(metric.evaluate(bits, plan).double(), expected.double())


@pytest.mark.parametrize("fn", [branchy, python_count], ids=lambda f: f.__name__)
def test_the_loss_is_the_one_of_fn_replayed_at_every_point(fn):
    scores, target = _data(seed=1)
    losses, grads = [], []
    for batched in ("auto", "loop"):  # "loop": fn itself at every configuration
        x = scores.clone().requires_grad_()
        loss = uniloss.UniLoss(from_metric(fn, batched=batched))(x, target)
        loss.backward()
        losses.append(loss.detach())
        grads.append(x.grad)
    torch.testing.assert_close(losses[0], losses[1])
    torch.testing.assert_close(grads[0], grads[1])


def test_torchmetrics_binary_auroc_is_zoo_auroc():
    classification = pytest.importorskip("torchmetrics.functional.classification")
    for seed in range(3):
        scores, target = _data(n=48, seed=seed)
        scores = scores.float()
        x, y = scores.clone().requires_grad_(), scores.clone().requires_grad_()
        # `if fps[-1] <= 0: warn`; no pull: the zoo's is binary cross-entropy, a traced metric's per run
        traced = uniloss.UniLoss(from_metric(classification.binary_auroc), pull=0)
        hand = uniloss.UniLoss(zoo.auroc(), pull=0)
        a, b = traced(x, target), hand(y, target)
        a.backward()
        b.backward()
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(x.grad, y.grad, rtol=1e-5, atol=1e-7)
        assert abs(float(traced.last.metric) - float(classification.binary_auroc(scores, target))) < 1e-6


def test_torchmetrics_matthews_corrcoef_branches_on_its_counts():
    classification = pytest.importorskip("torchmetrics.functional.classification")
    fn = classification.binary_matthews_corrcoef  # `if tp + tn != 0 and fp + fn == 0:`, `if denom == 0`
    scores, target = _data(n=16, seed=2)
    metric = from_metric(fn)
    uniloss.UniLoss(metric)(scores.clone().requires_grad_(), target)
    plan = metric.prepare(scores, target)
    assert plan.tape in ("direct", "vmap")  # the tape, not fn whole
    bits = _configurations(scores.numel(), seed=3)  # all right: 1.0 by its own branch; all wrong...
    expected = torch.stack([fn(torch.where(b, 1.0, -1.0), target) for b in bits])  # sigmoid(s) > 0.5: s > 0
    torch.testing.assert_close(metric.evaluate(bits, plan).double(), expected.double())


def test_torchmetrics_reciprocal_rank_traces_and_is_exact():
    retrieval = pytest.importorskip("torchmetrics.functional.retrieval")
    scores, target = _data(n=16, seed=4)
    fn = retrieval.retrieval_reciprocal_rank  # `if not target.sum():` after masking by preds > 0
    x = scores.float().clone().requires_grad_()
    with pytest.warns(UserWarning, match="one at a time"):  # nonzero: neither the tape nor vmap batches it
        loss = uniloss.UniLoss(from_metric(fn))
        loss(x, target).backward()
    assert float(loss.last.metric) == pytest.approx(float(fn(scores.float(), target)))
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def _read_then_written(s, y):
    hits = (s.argmax(1) == y).float().sum()
    if hits:
        pass
    hits += 1  # the value read is no longer the one the tape holds
    return hits / (len(y) + 1)


def _read_then_written_plain(s, y):
    return ((s.argmax(1) == y).float().sum() + 1) / (len(y) + 1)


def _read_then_out(s, y):
    hits = (s.argmax(1) == y).float()
    total = torch.empty(())
    torch.sum(hits, 0, out=total)  # out=: the recorder stops
    if total > 1:
        return total / len(y)
    return total * 0


def _read_then_out_plain(s, y):
    total = (s.argmax(1) == y).float().sum()
    return torch.where(total > 1, total / len(y), total * 0)


def _python_number(s, y):  # a value made from a Python number read from the step
    return torch.tensor(int((s.argmax(1) == y).sum()) / len(y))


def _accuracy(s, y):
    return (s.argmax(1) == y).float().mean()


def perfect_is_one(s, y):  # F1 with a special case: a batch all right returns a constant
    pred, pos = s > 0, y == 1
    tp = (pred & pos).sum()
    if tp == pos.sum() and pred.sum() == tp:
        return torch.tensor(1.0)
    return 2 * tp / (pred.sum() + pos.sum())


def _f1(s, y):
    pred, pos = s > 0, y == 1
    return 2 * (pred & pos).sum() / (pred.sum() + pos.sum())


def _same_loss(fn, plain, scores, target):
    """fn's loss and gradient equal those of ``plain``, the same metric without its branches."""
    out = []
    for f in (fn, plain):
        x = scores.clone().requires_grad_()
        loss = uniloss.UniLoss(from_metric(f))
        value = loss(x, target)
        value.backward()
        out.append((value.detach(), x.grad, float(loss.last.metric)))
    torch.testing.assert_close(out[0][0], out[1][0])
    torch.testing.assert_close(out[0][1], out[1][1])
    assert out[0][2] == pytest.approx(out[1][2])


@pytest.mark.parametrize("fn, plain, match", [
    (_read_then_written, _read_then_written_plain, None),  # replayed batched, its branch followed path by path
    (_read_then_out, _read_then_out_plain, r"reads the result of argmax .* writes into `out=`"),
    (_python_number, _accuracy, r"reads the result of argmax .* not computed from its steps in tensors"),
])
def test_control_flow_the_tape_cannot_check_replays_fn(fn, plain, match):
    g = torch.Generator().manual_seed(0)
    scores, target = torch.randn(8, 3, generator=g), torch.randint(0, 3, (8,), generator=g)
    if match is not None:  # vmap cannot batch it (out=, int()): one configuration at a time, said
        with pytest.warns(UserWarning, match=match):
            _same_loss(fn, plain, scores, target)
        return
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        _same_loss(fn, plain, scores, target)
    assert not [w for w in said if "one at a time" in str(w.message)]
    text = from_metric(fn).explain(scores, target)
    assert "writes in place into a tensor it read" in text and "fn replayed batched" in text


def test_a_batch_all_right_through_a_special_case():
    """`return tensor(1.0)` on a perfect batch (torchmetrics' Matthews correlation does it): the
    value no longer depends on the step, but fn's branch does; fn traced again at a configuration
    on the other side of the branch gives the chain, without a warning; the loss is the metric's
    without the special case."""
    scores, target = _data(n=10, seed=8)
    scores = torch.where(target == 1, 1.0, -1.0) + 0.01 * torch.arange(10)
    assert float(perfect_is_one(scores, target)) == 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _same_loss(perfect_is_one, _f1, scores, target)
    classification = pytest.importorskip("torchmetrics.functional.classification")
    mcc = uniloss.from_metric(classification.binary_matthews_corrcoef)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # said once above for the other metric
        loss = uniloss.UniLoss(mcc)
        x = scores.float().clone().requires_grad_()
        loss(x, target).backward()
    assert float(loss.last.metric) == 1.0 and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    plan = mcc.prepare(scores.float(), target)
    text = mcc.explain(scores.float(), target)
    assert text.count("one comparison per element") == 1  # gt, not the checks of the input
    assert "on a rare path of this trace (on these scores fn's value is not computed from its steps" in text
    assert "the tape of fn traced again halfway along" in text
    assert plan.trace.forced and plan.trace.tape is not None
    torch.testing.assert_close(mcc.comparisons(scores.float(), plan), scores.float())


def test_explain_names_the_control_flow():
    scores, target = _data()
    text = from_metric(branchy).explain(scores, target)
    assert "Python control flow on the trained steps" in text and "test_traced_guards.py:" in text
    plain = from_metric(lambda s, y: ((s > 0) == (y == 1)).float().mean())
    assert "values read are computed" not in plain.explain(scores, target)


def test_torchmetrics_multiclass_matthews_and_auroc():
    classification = pytest.importorskip("torchmetrics.functional.classification")
    g = torch.Generator().manual_seed(5)
    target = torch.randint(0, 4, (20,), generator=g)
    scores = torch.randn(20, 4, generator=g) + torch.nn.functional.one_hot(target, 4)
    mcc = lambda s, y: classification.multiclass_matthews_corrcoef(s, y, num_classes=4)  # noqa: E731
    grads = []
    for batched in ("auto", "loop"):  # the tape against fn at every configuration
        x = scores.clone().requires_grad_()
        loss = uniloss.UniLoss(from_metric(mcc, batched=batched))
        loss(x, target).backward()
        assert float(loss.last.metric) == pytest.approx(float(mcc(scores, target)), abs=1e-6)
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1])
    auroc = lambda s, y: classification.multiclass_auroc(s, y, num_classes=4)  # noqa: E731
    grads = []
    for batched in ("auto", "loop"):  # its curves' trapz recorded as their parts: the tape, against fn
        x = scores.clone().requires_grad_()
        metric = from_metric(auroc, batched=batched)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "loop": one configuration at a time
            loss = uniloss.UniLoss(metric)
            loss(x, target).backward()
        assert float(loss.last.metric) == pytest.approx(float(auroc(scores, target)), abs=1e-6)
        grads.append(x.grad)
    assert metric.batched == "loop" and torch.isfinite(grads[0]).all() and grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1])
    plan = from_metric(auroc).prepare(scores, target)
    assert plan.tape in ("direct", "vmap")  # the tape stands in for fn (checked against it on this call)


# --------------------------------------------------------------------------- the chain's cuts with branches


def _chain_points(metric, plan, rank):
    """The configurations of the chain of ``rank``: comparison ``k`` right from point ``rank[k] + 1``."""
    best = metric.best(plan)
    return torch.where(rank[None] < torch.arange(best.numel() + 1)[:, None], best[None], ~best[None])


@pytest.mark.parametrize("name", ["branchy", "matthews"])
def test_the_chain_through_sums_follows_fns_branches(name):
    classification = pytest.importorskip("torchmetrics.functional.classification")
    fn = branchy if name == "branchy" else classification.binary_matthews_corrcoef
    scores, target = _data(n=24, seed=6)
    metric = from_metric(fn)
    uniloss.UniLoss(metric)(scores.clone().requires_grad_(), target)
    plan = metric.prepare(scores, target)
    chain = metric.structure(plan).chain
    assert plan.tape == "direct" and plan.trace.tape.guards and chain is not None  # the cut, with its checks
    for seed in range(3):
        rank = torch.randperm(scores.numel(), generator=torch.Generator().manual_seed(seed))
        bits = _chain_points(metric, plan, rank)
        expected = torch.stack([fn(torch.where(b, 1.0, -1.0), target) for b in bits])  # fn's own path at each
        torch.testing.assert_close(chain(rank).double(), expected.double(), rtol=1e-6, atol=1e-7)


def test_torchmetrics_auroc_takes_the_cut_through_rankings():
    """Its `trapz` recorded as moves, products and a sum; AUROC along a chain of pairs is the share of
    pairs right: point k of l is k / l."""
    classification = pytest.importorskip("torchmetrics.functional.classification")
    scores, target = _data(n=30, seed=7)
    scores = scores.float()
    metric = from_metric(classification.binary_auroc)
    uniloss.UniLoss(metric)(scores.clone().requires_grad_(), target)
    plan = metric.prepare(scores, target)
    chain = metric.structure(plan).chain
    assert plan.tape == "direct" and plan.trace.tape.guards and chain is not None
    l = plan.num_bits
    rank = torch.randperm(l, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(chain(rank).double(), torch.arange(l + 1, dtype=torch.float64) / l)


def area_to_a_target_scale(s, y):
    """The area under a recall curve whose x axis the target sets (it differs from call to call)."""
    order = s.argsort(descending=True)
    relevant = y[order].float()
    recall = relevant.cumsum(0) / relevant.sum()
    x = torch.linspace(0, 1, len(y)) * (1 + y.float().mean())
    return torch.trapz(recall, x)


def test_a_trapezoid_of_a_curve_on_another_calls_axis():
    """trapz's parts over an x the target gives, constant along the chain: each call's own x (a re-run
    that reused the first call's parts would be wrong)."""
    metric = from_metric(area_to_a_target_scale)
    loss = uniloss.UniLoss(metric)
    for seed in range(3):
        scores, target = _data(n=20, seed=10 + seed)
        x = scores.float().clone().requires_grad_()
        loss(x, target).backward()
        assert float(loss.last.metric) == pytest.approx(float(area_to_a_target_scale(scores.float(), target)))
        plan = metric.prepare(scores.float(), target)
        assert plan.tape == "direct"
        bits = _configurations(plan.num_bits, seed=seed)[:8]
        reference = uniloss.from_metric(area_to_a_target_scale, batched="loop")  # fn (torch.trapz) at each
        expected = reference.evaluate(bits, reference.prepare(scores.float(), target))
        torch.testing.assert_close(metric.evaluate(bits, plan).double(), expected.double())


@pytest.mark.parametrize("name", ["binary_matthews_corrcoef", "binary_auroc", "branchy", "perfect_is_one",
                                  "multiclass_matthews_corrcoef"])
def test_every_kind_of_batch_gives_fns_loss(name):
    """Batches mixed, well separated, all wrong, all right and all predicted positive: the loss and
    gradient of the tape, the cuts and the replays equal those of fn replayed at every
    configuration (``batched="loop"``), and the metric reported is fn's own."""
    classification = pytest.importorskip("torchmetrics.functional.classification")
    fn = {"branchy": branchy, "perfect_is_one": perfect_is_one,
          "multiclass_matthews_corrcoef": lambda s, y: classification.multiclass_matthews_corrcoef(s, y, num_classes=3),
          }.get(name) or getattr(classification, name)
    multiclass = name.startswith("multiclass")
    losses = [uniloss.UniLoss(from_metric(fn)), uniloss.UniLoss(from_metric(fn, batched="loop"))]
    for mode, shift in enumerate([0.0, 0.5, 5.0, -5.0, None]):
        g = torch.Generator().manual_seed(mode)
        n = 12 + 3 * mode
        if multiclass:
            target = torch.randint(0, 3, (n,), generator=g)
            scores = torch.randn(n, 3, generator=g) + torch.nn.functional.one_hot(target, 3) * (shift or 0.0)
            if shift is None:
                scores[:, 0] += 10  # every sample in class 0
        else:
            target = (torch.rand(n, generator=g) < 0.4).long()
            target[0], target[1] = 1, 0
            scores = torch.randn(n, generator=g) + (2 * target - 1) * (shift or 0.0)
            if shift is None:
                scores = scores.abs() + 0.1  # every sample predicted positive
        out = []
        for loss in losses:
            x = scores.clone().requires_grad_()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # replays said once
                value = loss(x, target)
            value.backward()
            out.append((value.detach(), x.grad))
            assert float(loss.last.metric) == pytest.approx(float(fn(scores, target)), abs=1e-6)
        torch.testing.assert_close(out[0][0], out[1][0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out[0][1], out[1][1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["perfect", "all positive"])
def test_a_batch_on_a_rare_path_replays_fn_at_few_configurations(kind, monkeypatch):
    """torchmetrics' Matthews correlation on a batch all right (``return tensor(1.0)``) or all
    predicted positive (its ``denom == 0`` case): nearly every configuration of the chain and the
    anchors takes another path than the trace's. fn is traced again at one of them
    (``_forced_tape``) and that tape gives the rest: after the first calls of a structure (its
    checks against fn), a call replays fn at a handful of configurations (the chain's two ends,
    whose paths are the special cases), not at every one; the loss equals fn replayed everywhere."""
    classification = pytest.importorskip("torchmetrics.functional.classification")
    from uniloss import _traced

    replays = []
    original = _traced.TracedMetric._fn_values

    def counted(self, plan, payloads, formatters, t, loop=False):
        replays.append(t)
        return original(self, plan, payloads, formatters, t, loop)

    monkeypatch.setattr(_traced.TracedMetric, "_fn_values", counted)
    n = 64
    g = torch.Generator().manual_seed(3)
    target = (torch.rand(n, generator=g) < 0.3).long()
    noise = 1 + torch.rand(n, generator=g)
    scores = (2 * target - 1) * noise if kind == "perfect" else noise
    metric = from_metric(classification.binary_matthews_corrcoef)
    losses = [uniloss.UniLoss(m, generator=torch.Generator().manual_seed(0))
              for m in (metric, from_metric(classification.binary_matthews_corrcoef, batched="loop"))]
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no replay of fn at every configuration, so no warning
        for loss in losses[:1]:
            for _ in range(4):  # the structure's first calls check the forced traces against fn
                replays.clear()
                x = scores.clone().requires_grad_()
                value = loss(x, target)
                value.backward()
    assert 0 < sum(replays) <= 4
    plan = metric.prepare(scores, target)  # the tape of fn traced halfway along stands in for the trace's
    assert plan.trace.forced and plan.tape == "direct"
    # a mixed batch keeps its own trace's tape
    assert not metric.prepare(torch.randn(n, generator=g), target).trace.forced
    out.append((value.detach(), x.grad))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x = scores.clone().requires_grad_()
        value = losses[1](x, target)
        value.backward()
    out.append((value.detach(), x.grad))
    assert float(losses[0].last.metric) == pytest.approx(float(classification.binary_matthews_corrcoef(scores, target)))
    torch.testing.assert_close(out[0][0], out[1][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[0][1], out[1][1], rtol=1e-4, atol=1e-6)


def _best_running_count(s, y):  # a Python branch on every element: nearly a path per configuration
    hits = ((s > 0) & (y == 1)).cumsum(0)
    best = torch.tensor(0.0)
    for h in hits:
        if h > best:
            best = h.float()
    return best / (y == 1).sum()


def test_a_path_per_configuration_is_replayed_with_a_warning():
    """Where fn's path turns at more configurations than a few more traces cover (a Python
    branch on every element of a running count, as torchmetrics' ``*_at_fixed_*`` metrics loop
    over their curve), fn is replayed at each, exact, and a warning says so once, though the
    trace has a tape."""
    g = torch.Generator().manual_seed(2)
    target = (torch.rand(80, generator=g) < 0.5).long()
    scores = torch.randn(80, generator=g)
    out = []
    for batched in ("auto", "loop"):
        x = scores.clone().requires_grad_()
        loss = uniloss.UniLoss(from_metric(_best_running_count, batched=batched))
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            value = loss(x, target)
        value.backward()
        out.append((value.detach(), x.grad, [str(w.message) for w in said]))
    assert any("its path turns at more configurations than tracing it again covers" in m for m in out[0][2])
    torch.testing.assert_close(out[0][0], out[1][0])
    torch.testing.assert_close(out[0][1], out[1][1])
