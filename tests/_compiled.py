"""The torch.compile checks of tests/test_no_sync.py, run in a fresh interpreter each (see there):
``python tests/_compiled.py without_generator AP`` exits 0 when the check holds."""

import os
import sys
import warnings

os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import torch  # noqa: E402
import torch._inductor.config as inductor_config  # noqa: E402

import uniloss  # noqa: E402


def _cases():
    pos = (torch.arange(32) % 4 == 0).long()
    labels = torch.arange(64) % 10
    return {
        "AP": (uniloss.AveragePrecision(), torch.randn(32), pos),
        "zoo.macro_f1": (uniloss.zoo.macro_f1(10), torch.randn(64, 10), labels),
    }


def without_generator(name: str) -> None:
    """Draws in the graph; with ``fallback_random`` the compiled call gives the eager loss and
    gradient from the same global seed, and its second call compiles nothing new."""
    torch.manual_seed(0)
    metric, scores, target = _cases()[name]
    loss_fn = uniloss.UniLoss(metric, validate_args=False)

    def step(call):
        s = scores.clone().requires_grad_()
        torch.manual_seed(5)
        loss = call(s, target)
        loss.backward()
        return loss.detach(), s.grad

    with inductor_config.patch(fallback_random=True):
        call = torch.compile(lambda s, y: loss_fn(s, y))
        compiled = step(call)
        with torch._dynamo.config.patch(error_on_recompile=True):  # the caches filled no guard
            again = step(call)
    eager = step(loss_fn)
    torch.testing.assert_close(again[0], compiled[0], rtol=0, atol=0)
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compiled[1], eager[1], rtol=1e-5, atol=1e-6)


def with_generator() -> None:
    """The generator's draws run eagerly, in order: the eager loss and gradient, step after step."""
    torch.manual_seed(0)
    s0, y = torch.randn(32, 10), torch.randint(0, 10, (32,))

    def steps(compiled):
        loss_fn = uniloss.UniLoss(uniloss.MulticlassAccuracy(), generator=torch.Generator().manual_seed(3),
                                  validate_args=False, interpolation="anchors")
        call = torch.compile(lambda s: loss_fn(s, y)) if compiled else (lambda s: loss_fn(s, y))
        out = []
        for _ in range(3):
            s = s0.clone().requires_grad_()
            loss = call(s)
            loss.backward()
            out.append((loss.detach(), s.grad))
        return out

    eager, compiled = steps(False), steps(True)
    assert not torch.equal(eager[0][1], eager[1][1])  # the anchors change from step to step
    for (le, ge), (lc, gc) in zip(eager, compiled):
        torch.testing.assert_close(lc, le, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(gc, ge, rtol=1e-6, atol=1e-6)


def chain(name: str) -> None:
    """``interpolation="chain"`` (no anchors drawn) compiled: the eager loss and gradient (AP: the
    static layout a graph takes against the exact one of eager mode), and the second call compiles
    nothing new."""
    g = torch.Generator().manual_seed(0)
    metric, scores, labels = {
        "zoo.macro_f1": (uniloss.zoo.macro_f1(10), torch.randn(64, 10, generator=g), torch.arange(64) % 10),
        "AP": (uniloss.AveragePrecision(), torch.randn(32, generator=g), (torch.arange(32) % 4 == 0).long()),
        "PCK": (uniloss.PCK(), torch.randn(2, 3, 8, 8, generator=g),  # (a static layout in the graph, its runs' chain)
                uniloss.KeypointTarget(torch.rand(2, 3, 2, generator=g) * 7, torch.tensor([[1, 1, 0], [1, 1, 1]]).bool(),
                                       torch.full((2,), 4.0))),
    }[name]
    loss_fn = uniloss.UniLoss(metric, interpolation="chain", validate_args=False)

    def step(call):
        s = scores.clone().requires_grad_()
        loss = call(s, labels)
        loss.backward()
        return loss.detach(), s.grad

    call = torch.compile(lambda s, y: loss_fn(s, y))
    compiled = step(call)
    with torch._dynamo.config.patch(error_on_recompile=True):
        again = step(call)
    eager = step(loss_fn)
    torch.testing.assert_close(again[0], compiled[0], rtol=0, atol=0)
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compiled[1], eager[1], rtol=1e-5, atol=1e-6)
    assert eager[1].abs().sum() > 0


if __name__ == "__main__":
    warnings.simplefilter("ignore")  # dynamo's notes on the graph breaks
    {"without_generator": without_generator, "with_generator": with_generator,
     "chain": chain}[sys.argv[1]](*sys.argv[2:])
