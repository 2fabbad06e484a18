"""benchmarks/seg_digits_steps.py: the gradient's norm against autograd, the network left as it
was, the measurement at the initial network, and the table's medians and ratios by hand."""

import importlib.util
import os
import statistics

import pytest
import torch
import torch.nn.functional as F

import uniloss.experiments.metric_wins as mw

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("seg_digits_steps",
                                               os.path.join(ROOT, "benchmarks", "seg_digits_steps.py"))
steps = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(steps)


def test_grad_norm_is_autograds_and_leaves_the_network_as_it_was():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 3))
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    model.load_state_dict(before)  # (that forward pass moved BatchNorm's running statistics)
    expected = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))
    assert steps.grad_norm(model, F.cross_entropy, x, y) == pytest.approx(expected, rel=1e-6)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running statistics restored
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def test_the_first_measurement_is_at_the_initial_network(monkeypatch):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4000, 1, 28, 28, generator=g)
    masks = torch.randint(0, 11, (4000, 28, 28), generator=g)
    monkeypatch.setattr(mw, "noisy_masks", lambda *args, **kwargs: (x, masks))
    norms = steps.run((4, 2.0, 1, 2, None))
    assert set(norms) == {"ce", "lovasz", "uniloss"} and all(list(v) == [0] for v in norms.values())
    probe = torch.randperm(4000, generator=torch.Generator().manual_seed(504))[:64].reshape(2, 32)
    fresh = mw.seeded(4, lambda: mw.DigitSegmenter(11))  # the seed's initial network, measured before a step
    fresh.train()
    expected = [steps.grad_norm(fresh, F.cross_entropy, x[b], masks[b]) for b in probe]
    assert norms["ce"][0] == pytest.approx(expected, rel=1e-5)
    assert norms["lovasz"][0] != pytest.approx(norms["ce"][0])


def test_the_table_by_hand():
    seed_a = {"ce": {0: [2.0, 4.0, 3.0]}, "lovasz": {0: [0.1, 0.3, 0.2]}, "uniloss": {0: [1.0, 2.0, 1.0]}}
    seed_b = {"ce": {0: [1.0, 1.0, 1.0]}, "lovasz": {0: [0.5, 0.5, 0.5]}, "uniloss": {0: [1.0, 1.0, 1.0]}}
    row = steps.table([seed_a, seed_b])[2]
    cells = [c.strip() for c in row.strip("|").split("|")]
    # medians: CE 3 and 1, Lovász 0.2 and 0.5, UniLoss 1 and 1; ratios to UniLoss per batch:
    # Lovász 0.1, 0.15, 0.2 (median 0.15) and 0.5; CE 2, 2, 3 (median 2) and 1
    assert cells[0] == "0"
    assert cells[1] == "2.0000 ± 1.4142" and cells[2] == "0.3500 ± 0.2121" and cells[3] == "1.0000 ± 0.0000"
    assert cells[4] == "0.33 ± 0.25" and cells[5] == "1.50 ± 0.71"


def test_logit_norms_are_the_gradients_on_the_logits_and_leave_the_network_as_it_was():
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 3))
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    logits = model(x).detach().requires_grad_()
    model.load_state_dict(before)
    grad = torch.autograd.grad(F.cross_entropy(logits, y), logits)[0]
    # cross-entropy's gradient on the logits by hand: (softmax - one-hot) / n
    by_hand = (logits.detach().softmax(1) - F.one_hot(y, 3)) / 16
    torch.testing.assert_close(grad, by_hand)
    l1, l2 = steps.logit_norms(model, F.cross_entropy, x, y)
    assert l1 == pytest.approx(float(by_hand.abs().sum()), rel=1e-6)
    assert l2 == pytest.approx(float(by_hand.norm()), rel=1e-6)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_on_the_logits_uniloss_steps_by_its_pulls_total_push(monkeypatch):
    # the step rule (step="pull"): the defaults' total push is the pull's; the chain's is its own
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4000, 1, 28, 28, generator=g)
    masks = torch.randint(0, 11, (4000, 28, 28), generator=g)
    monkeypatch.setattr(mw, "noisy_masks", lambda *args, **kwargs: (x, masks))
    norms = steps.run((4, 2.0, 1, 2, None, "logits"))
    assert set(norms) == {"ce", "lovasz", "uniloss", "chain", "pull"}
    for (u1, _), (p1, _), (c1, _) in zip(norms["uniloss"][0], norms["pull"][0], norms["chain"][0]):
        assert u1 == pytest.approx(p1, rel=1e-3) and c1 != pytest.approx(p1, rel=0.1)
    lines = steps.logit_table([norms, norms], 0)
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert len(cells) == 8 and cells[3] == cells[5]  # UniLoss's L1 is the pull's (to the printed digits)
    assert cells[7] == f"{statistics.median(c[0] / u[0] for c, u in zip(norms['chain'][0], norms['uniloss'][0])):.2f} ± 0.00"
