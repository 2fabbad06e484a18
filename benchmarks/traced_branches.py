"""What a traced metric that branches in Python on its own counts costs, against the zoo's
decomposition of the same metric.

    python benchmarks/traced_branches.py 15            # medians of 15 calls, interleaved
    python benchmarks/traced_branches.py 15 eb61167    # also traced by a commit's from_metric

torchmetrics' ``binary_auroc`` (``if fps[-1] <= 0:``) and the Matthews correlation (``if tp + tn
!= 0 and fp + fn == 0:``, ``if denom == 0:``) read their counts as Python values. ``from_metric``
computes each value read at every configuration through the tape; where one differs from the
trace's, it traces ``fn`` again on that other path and takes that tape there, replaying ``fn``
where neither holds. Batches all right and all predicted positive put the Matthews correlation's
trace on a rare path (its special cases), where nearly every configuration takes another. Each
case times one loss call (forward and backward, library defaults, one thread) of the traced
torchmetrics function and of the zoo's metric (and, given a commit, of the function traced by
that commit's ``from_metric``), interleaved call by call in one process (medians), and checks
before timing that the traced metric's value is torchmetrics' own.
"""

from __future__ import annotations

import os
import sys
import tempfile

import torch

import uniloss
from uniloss import zoo

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from version_cost import alternate, load_ref  # noqa: E402  (a commit's package; calls in turn, medians)


def _cases(g):
    from torchmetrics.functional.classification import binary_auroc, binary_matthews_corrcoef

    for n in (64, 256, 1024):
        y = (torch.rand(n, generator=g) < 0.3).long()
        s = torch.randn(n, generator=g) + y
        yield f"AUROC, [{n}]", binary_auroc, zoo.auroc(), s, y, s
        # the zoo's Matthews correlation takes two columns of scores: s > 0 is column 1 above column 0
        yield f"Matthews correlation, [{n}]", binary_matthews_corrcoef, zoo.matthews_corrcoef(2), s, y, \
            torch.stack([-s / 2, s / 2], 1)
    # batches on a rare path of the Matthews correlation's branches: all right (`return tensor(1.0)`),
    # every score above 0 (`denom == 0`); nearly every configuration takes another path than the trace
    for n in (64, 256, 1024):
        y = (torch.rand(n, generator=g) < 0.3).long()
        noise = 1 + torch.rand(n, generator=g)
        for name, s in (("all right", (2 * y - 1) * noise), ("all predicted positive", noise)):
            yield f"Matthews correlation, {name}, [{n}]", binary_matthews_corrcoef, zoo.matthews_corrcoef(2), s, y, \
                torch.stack([-s / 2, s / 2], 1)


def main(calls: int, ref: str = "") -> None:
    torch.set_num_threads(1)
    w = torch.nn.Parameter(torch.ones(1))
    extra = f" {ref} traced (ms) | this / {ref} |" if ref else ""
    print(f"| case | zoo (ms) | traced (ms) | traced / zoo |{extra}")
    print("|---|---|---|---|" + ("---|---|" if ref else ""))
    with tempfile.TemporaryDirectory() as tmp:
        old = load_ref(tmp, ref) if ref else None
        for name, fn, hand, x, y, x_hand in _cases(torch.Generator().manual_seed(0)):
            traced = uniloss.from_metric(fn)
            value = float(traced.metric(x, y))
            if abs(value - float(fn(x, y))) > 1e-6:
                raise AssertionError(f"{name}: the traced metric {value} is not torchmetrics' {float(fn(x, y))}")
            losses = {"zoo": (uniloss.UniLoss(hand), x_hand), "traced": (uniloss.UniLoss(traced), x)}
            if old is not None:
                losses["ref"] = (old.UniLoss(old.from_metric(fn)), x)
            med = alternate({k: (lambda f=f, a=a: f(a * w, y).backward()) for k, (f, a) in losses.items()},
                            calls, warmup=2)
            row = f"| {name} | {med['zoo']:.2f} | {med['traced']:.2f} | {med['traced'] / med['zoo']:.1f}x |"
            if old is not None:
                row += f" {med['ref']:.2f} | {med['traced'] / med['ref']:.2f}x |"
            print(row, flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10, sys.argv[2] if len(sys.argv) > 2 else "")
