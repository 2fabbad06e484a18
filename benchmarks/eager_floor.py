"""How far the eager AP loss is from its own math: the library's default call against the same
loss written by hand as one autograd function, and binary cross-entropy, in one process.

    python benchmarks/eager_floor.py                  # AP at batch 16 and 128 (about a minute)
    python benchmarks/eager_floor.py --calls 200      # a smoke run

:func:`bare_ap_loss` is ``UniLoss(AveragePrecision())``'s default loss (``interpolation="chain"``,
the pull of binary cross-entropy on per-sample margins, ``step="pull"``) and nothing else: the
comparisons of every positive with every negative, AP's chain gains from two sorts of the scores,
the step factor ``P / (P + 2 I)``, the gradient in closed form, one autograd node; no checks, no
plan, no structure, no ``LossInfo``, no other option. It gives the library's loss and gradient
(asserted before timing; ``tests/test_speed_paths.py`` too), so its time is a floor for an eager
call built from torch's operators: what the math costs, the rest being the generic engine's
dispatch and bookkeeping. Each call is a forward and backward pass on a model's output (``x *
w``, a leaf times a parameter, in every row alike), the three losses alternating call by call
with the first rotating. One thread. The machine is shared: read the ratios.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import uniloss

sys.path.insert(0, str(Path(__file__).resolve().parent))
from version_cost import alternate  # noqa: E402  (calls in turn, the first rotating)


class _BareAP(torch.autograd.Function):
    """The default AP loss of the scores ``s`` ``[n]`` (positives ``pos``, negatives ``neg``,
    ``sign`` +1/-1 per sample), with its gradient computed in the forward pass."""

    @staticmethod
    def forward(ctx, s, pos, neg, sign):
        sp, sn = s[pos], s[neg]
        v = torch.sigmoid(sp[:, None] - sn)  # the relaxed comparisons (temperature 1)
        num_pos, num_neg, n = pos.numel(), neg.numel(), s.numel()
        f64 = torch.float64
        ranks = torch.arange(1, num_pos + 1, dtype=f64)
        place = torch.empty(num_pos, dtype=f64).scatter_(0, sp.argsort(descending=True, stable=True), ranks)
        down = torch.empty(num_neg, dtype=f64).scatter_(0, sn.argsort(stable=True), torch.arange(num_neg, 0, -1, dtype=f64))
        k = place[:, None]
        q = k + down
        gains = (k / (q * (q - 1.0) * num_pos)).to(s.dtype)  # AP's chain gains, as AveragePrecision gives them
        start = ((ranks / (ranks + num_neg)).sum() / num_pos).to(s.dtype)  # AP with every negative above
        value = start + torch.dot(gains.view(-1), v.view(-1))
        chained = gains * v * (1.0 - v)  # d value / d c
        soft = torch.sigmoid(-s * sign)  # the pull: binary cross-entropy on the margins, mean over n
        push = soft.sum() / n
        f = push / (push + 2.0 * chained.sum())  # step="pull": a step of the pull's push
        chained = chained * f
        up = torch.zeros_like(s).index_add_(0, pos, chained.sum(1)).index_add_(0, neg, chained.sum(0), alpha=-1)
        ctx.save_for_backward(up + soft * sign * (f / n))  # minus the loss's gradient
        return -value

    @staticmethod
    def backward(ctx, grad):
        (up,) = ctx.saved_tensors
        return -up * grad, None, None, None


def bare_ap_loss(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``UniLoss(AveragePrecision())(scores, target)`` at its defaults, written out (``[n]`` float
    scores, ``[n]`` 0/1 target with both classes); the same value and gradient."""
    positive = target != 0
    pos, neg = positive.nonzero().view(-1), (~positive).nonzero().view(-1)
    return _BareAP.apply(scores, pos, neg, torch.where(positive, 1.0, -1.0).to(scores.dtype))


def _case(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g)
    y = (torch.rand(n, generator=g) < 0.3).long()
    y[0], y[1] = 1, 0
    return x, y


def check_equal(n: int = 16) -> float:
    """The largest difference of :func:`bare_ap_loss`'s gradient from the library's (asserts the
    losses agree to 1e-6)."""
    x, y = _case(n)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = uniloss.UniLoss(uniloss.AveragePrecision())(a, y)
    bare = bare_ap_loss(b, y)
    assert abs(float(ours.detach()) - float(bare.detach())) <= 1e-6, (float(ours.detach()), float(bare.detach()))
    ours.backward()
    bare.backward()
    return float((a.grad - b.grad).abs().max())


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 128])
    parser.add_argument("--calls", type=int, default=3000, help="timed calls per loss and size")
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    try:
        w = torch.nn.Parameter(torch.ones(1))
        print("| batch | library (ms) | library, validate_args=False (ms) | by hand (ms) | BCE (ms) "
              "| library / BCE | by hand / BCE | by hand / library |")
        print("|---|---|---|---|---|---|---|---|")
        for n in args.sizes:
            diff = check_equal(n)
            assert diff <= 1e-6, diff
            x, y = _case(n)
            losses = {
                "library": uniloss.UniLoss(uniloss.AveragePrecision()),
                "unchecked": uniloss.UniLoss(uniloss.AveragePrecision(), validate_args=False),
                "bare": bare_ap_loss,
                "bce": lambda s, t: F.binary_cross_entropy_with_logits(s, t.to(s.dtype)),
            }
            med = out[n] = alternate({k: (lambda fn=fn: fn(x * w, y).backward()) for k, fn in losses.items()},
                                     args.calls)
            print(f"| {n} | {med['library']:.3f} | {med['unchecked']:.3f} | {med['bare']:.3f} | {med['bce']:.3f} "
                  f"| {med['library'] / med['bce']:.1f}x | {med['bare'] / med['bce']:.1f}x "
                  f"| {med['bare'] / med['library']:.2f}x |", flush=True)
    finally:
        torch.set_num_threads(threads)
    return out


if __name__ == "__main__":
    main()
