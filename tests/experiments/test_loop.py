"""The shared training loop (uniloss.experiments.loop): the same numbers as a hand-written loop,
hooks called when and as often as documented, autocast of the forward pass only."""

import pytest
import torch
from torch import nn

import uniloss
from uniloss.experiments.loop import Autocast, shuffled, train_epoch, train_epochs


def _setup(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)  # batch order and anchors from one generator, as in digits.py
    loss_fn = uniloss.UniLoss(uniloss.MulticlassAccuracy(), generator=gen)
    return model, opt, gen, loss_fn


def _data():
    g = torch.Generator().manual_seed(123)
    return torch.randn(100, 8, generator=g), torch.randint(0, 4, (100,), generator=g)


def _hand_written_loop(model, opt, loss_fn, x, y, gen, epochs, batch, after_epoch=lambda: None):
    """The loop as digits.py, metric_wins.py and the benchmarks wrote it before the shared one."""
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), batch):
            idx = order[start:start + batch]
            loss = loss_fn(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        after_epoch()


def test_train_epoch_reproduces_a_hand_written_loop_bit_for_bit():
    x, y = _data()
    model, opt, gen, loss_fn = _setup()
    _hand_written_loop(model, opt, loss_fn, x, y, gen, 3, 32)
    expected = [p.detach().clone() for p in model.parameters()]

    model, opt, gen, loss_fn = _setup()
    batches = shuffled(len(x), 32, gen)
    for epoch in range(3):
        assert train_epoch(model, opt, batches(epoch), lambda m, idx: loss_fn(m(x[idx]), y[idx])) == 4
    for p, q in zip(model.parameters(), expected):
        assert torch.equal(p, q)
    model2, _, _, _ = _setup()
    assert not torch.equal(next(model2.parameters()), expected[0])  # the check can fail


def test_hooks_order_and_counts_and_lazy_batches():
    x, y = _data()
    model, opt, _, _ = _setup()
    events = []
    before = {}

    def batches():
        for i in range(3):
            events.append(("batch", i))
            yield torch.arange(10 * i, 10 * i + 10)

    def step_loss(m, idx):
        events.append(("loss", int(idx[0]) // 10))
        return nn.functional.cross_entropy(m(x[idx]), y[idx])

    def on_backward(step, loss):
        events.append(("backward", step))
        assert all(p.grad is not None for p in model.parameters())
        before[step] = [p.detach().clone() for p in model.parameters()]

    def on_step(step, loss):
        events.append(("step", step))
        assert loss.requires_grad  # the step's loss, graph and all
        assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before[step]))  # after the update

    assert train_epoch(model, opt, batches(), step_loss, on_backward=on_backward, on_step=on_step) == 3
    assert events == [e for i in range(3) for e in (("batch", i), ("loss", i), ("backward", i), ("step", i))]
    assert train_epoch(model, opt, [], step_loss, on_step=on_step) == 0


def test_gradients_are_set_to_none_before_backward():
    """A parameter the loss leaves out keeps no stale gradient (zero_grad(set_to_none=True))."""
    x, y = _data()
    model, opt, _, _ = _setup()
    grads = []
    train_epoch(model, opt, [0, 1], lambda m, i: m[0](x).sum() if i == 0 else m(x).sum(),
                on_backward=lambda step, loss: grads.append(model[2].weight.grad is None))
    assert grads == [True, False]
    train_epoch(model, opt, [0], lambda m, i: m[0](x).sum(),
                on_backward=lambda step, loss: grads.append(model[2].weight.grad is None))
    assert grads[-1] is True


@pytest.mark.parametrize("autocast", [None, "cpu", torch.device("cpu")])
def test_autocast_runs_the_forward_in_bfloat16_and_hands_the_loss_float32(autocast):
    x, y = _data()
    model, opt, _, _ = _setup()
    seen = {}
    model[0].register_forward_hook(lambda mod, inp, out: seen.__setitem__("inner", out.dtype))

    def step_loss(m, idx):
        out = m(x[idx])
        seen["outer"] = out.dtype
        seen["wrapped"] = isinstance(m, Autocast)
        return (out - 1).pow(2).mean()

    train_epoch(model, opt, [torch.arange(10)], step_loss, autocast=autocast)
    assert seen["inner"] == (torch.float32 if autocast is None else torch.bfloat16)
    assert seen["outer"] == torch.float32 and seen["wrapped"] == (autocast is not None)


def test_autocast_steps_match_a_hand_written_autocast_loop():
    x, y = _data()
    model, opt, _, _ = _setup()
    for idx in torch.arange(100).split(25):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x[idx])
        loss = nn.functional.cross_entropy(out.float(), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    expected = [p.detach().clone() for p in model.parameters()]
    model, opt, _, _ = _setup()
    train_epoch(model, opt, torch.arange(100).split(25), lambda m, idx: nn.functional.cross_entropy(m(x[idx]), y[idx]),
                autocast="cpu")
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), expected))
    model, opt, _, _ = _setup()
    train_epoch(model, opt, torch.arange(100).split(25), lambda m, idx: nn.functional.cross_entropy(m(x[idx]), y[idx]))
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), expected))  # bfloat16 does change them


def test_train_epochs_steps_the_schedule_and_evaluates_in_eval_mode_without_grad():
    x, y = _data()
    model, opt, gen, _ = _setup()
    model.append(nn.Dropout(0.5))
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
    modes, lrs, reported = [], [], []

    def step_loss(m, idx):
        modes.append(("train", m.training))
        lrs.append(opt.param_groups[0]["lr"])
        return nn.functional.cross_entropy(m(x[idx]), y[idx])

    def evaluate(m):
        modes.append(("eval", m.training, torch.is_grad_enabled()))
        return torch.tensor(float(len(modes)))

    curve = train_epochs(model, opt, shuffled(len(x), 50, gen), step_loss, 3, evaluate, sched,
                         on_epoch=lambda epoch, value: reported.append((epoch, value)))
    assert curve == [3.0, 6.0, 9.0] and all(isinstance(v, float) for v in curve)
    assert reported == [(0, 3.0), (1, 6.0), (2, 9.0)]
    assert lrs == [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]
    assert modes[:3] == [("train", True), ("train", True), ("eval", False, False)]
    assert modes[3] == ("train", True)  # back in training mode after an evaluation


def test_shuffled_draws_a_fresh_permutation_per_call_from_its_generator():
    batches = shuffled(10, 4, torch.Generator().manual_seed(0))
    first, second = batches(0), batches(1)
    assert [len(b) for b in first] == [4, 4, 2]
    assert sorted(torch.cat(first).tolist()) == sorted(torch.cat(second).tolist()) == list(range(10))
    assert not torch.equal(torch.cat(first), torch.cat(second))
    assert torch.equal(torch.cat(first), torch.randperm(10, generator=torch.Generator().manual_seed(0)))


def test_train_digits_matches_the_loop_it_replaced():
    """``train_digits`` (now on the shared loop) against its former hand-written loop."""
    pytest.importorskip("sklearn")
    from uniloss.experiments.digits import load_digits_split, train_digits

    result = train_digits("accuracy", "uniloss", seed=0, epochs=2, lr=0.1)
    xtr, ytr, xte, yte = load_digits_split("accuracy")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    loss_fn = uniloss.UniLoss(uniloss.MulticlassAccuracy(), generator=gen)
    curve = []

    def evaluate():
        with torch.no_grad():
            curve.append(float((model(xte).argmax(1) == yte).float().mean()))

    _hand_written_loop(model, opt, loss_fn, xtr, ytr, gen, 2, 128, evaluate)
    assert result.curve == curve


def test_metric_wins_trains_with_the_shared_loop():
    from uniloss.experiments import metric_wins

    assert metric_wins.shuffled is shuffled
    calls = []
    metric_wins._ON_EPOCH = lambda epoch, value: calls.append((epoch, value))
    try:
        model = torch.nn.Linear(2, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x = torch.randn(8, 2)
        curve = metric_wins.fit(model, opt, lambda e: [torch.arange(8)], lambda m, i: m(x[i]).square().mean(), 3,
                                lambda m: float(m(x).square().mean()))
    finally:
        metric_wins._ON_EPOCH = None
    assert [e for e, _ in calls] == [0, 1, 2] and [v for _, v in calls] == curve


def test_predict_is_the_evaluation_forward_pass_in_chunks_and_restores_the_mode():
    from uniloss.experiments.loop import predict

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.Dropout(0.5), nn.Linear(7, 3))
    x = torch.randn(23, 5)
    model.train()
    for _ in range(3):  # running statistics away from their initial values
        model(torch.randn(16, 5) * 3 + 1)
    model.eval()
    with torch.no_grad():
        expected = model(x)  # one pass over everything, in evaluation mode
    for chunk in (1, 4, 23, 100):
        model.train()
        out = predict(model, x, chunk=chunk)
        assert model.training  # restored
        assert not out.requires_grad
        assert out.shape == (23, 3)
        torch.testing.assert_close(out, expected)
    model.eval()
    predict(model, x, chunk=5)
    assert not model.training  # restored, also from evaluation mode
    assert predict(model, x[:0]).shape == (0, 3)
    with pytest.raises(ValueError, match="at least 1"):
        predict(model, x, chunk=0)


def test_predict_restores_the_mode_when_the_forward_pass_raises():
    from uniloss.experiments.loop import predict

    model = nn.Linear(5, 2)
    model.train()
    with pytest.raises(RuntimeError):
        predict(model, torch.randn(4, 6))
    assert model.training
