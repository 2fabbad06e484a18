"""What ``torch.sign`` of the scores costs through ``from_metric``, against the forms it had to be
written in before it was traced: two comparisons, ``(x > 0).float() - (x < 0).float()`` (exact,
ties included), and one, ``2 * (x > 0).float() - 1`` (a tie of the scores counted as -1).

    python benchmarks/traced_sign.py                                  # prints a markdown table
    python benchmarks/traced_sign.py --out docs/performance/sign-cost.md

``torch.sign`` of the scores is one traced step of two comparisons per element, ``x > 0`` and
``x < 0``, whose output is ``[x > 0] - [x < 0]``; the best sign of each element is probed at its
three values and the chain goes through the metric's sums with each element changing at the
points of its two comparisons. Written as two comparisons, the same metric is two steps, each
probed with the other held, and a chain through the sums over both. Each case times one loss
call (forward and backward, library defaults, one thread) of each form, calls alternating,
medians. Before timing, ``torch.sign``'s loss and gradient are compared with the two
comparisons', and, for the directional accuracy, each form's share of the wrongly signed
predictions that a descent step moves toward the target's side.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Dict, List

import torch

import uniloss

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torchmetrics_survey import print_page  # noqa: E402  (a markdown page printed and written)


def _pairs(s: torch.Tensor) -> torch.Tensor:
    return s[:, None] - s[None, :]


def kendall_by_sign(s, y):
    """Kendall's tau-a with ``torch.sign``."""
    n = s.numel()
    return (torch.sign(_pairs(s)) * torch.sign(_pairs(y))).sum() / (n * (n - 1))


def kendall_two_comparisons(s, y):
    """The same, the scores' sign written as two comparisons."""
    n, d = s.numel(), _pairs(s)
    return (((d > 0).float() - (d < 0).float()) * torch.sign(_pairs(y))).sum() / (n * (n - 1))


def kendall_one_comparison(s, y):
    """The same, the scores' sign written as one comparison (a tie counted as -1)."""
    n = s.numel()
    return ((2 * (_pairs(s) > 0).float() - 1) * torch.sign(_pairs(y))).sum() / (n * (n - 1))


def directional_by_sign(s, y):
    """The share of predictions on the target's side of zero, with ``torch.sign``."""
    return (torch.sign(s) == torch.sign(y)).float().mean()


def directional_two_comparisons(s, y):
    return (((s > 0).float() - (s < 0).float()) == torch.sign(y)).float().mean()


def directional_one_comparison(s, y):
    return ((2 * (s > 0).float() - 1) == torch.sign(y)).float().mean()


FORMS = {"kendall": (kendall_by_sign, kendall_two_comparisons, kendall_one_comparison),
         "directional": (directional_by_sign, directional_two_comparisons, directional_one_comparison)}


def _inputs(kind: str, n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    if kind == "kendall":
        y = torch.randint(0, 4, (n,), generator=g).float()
        return torch.randn(n, generator=g) + y, y
    y = torch.randn(n, generator=g)
    return y + torch.randn(n, generator=g), y


def _call(loss: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
    s = x.clone().requires_grad_()
    value = loss(s, y)
    value.backward()
    return value.detach(), s.grad


def case(kind: str, n: int, calls: int) -> Dict[str, object]:
    """One case: ``torch.sign``'s loss and gradient against the two comparisons', the share of
    wrong signs each form pushes toward the target's side, then the medians (ms)."""
    x, y = _inputs(kind, n)
    losses = [uniloss.UniLoss(uniloss.from_metric(fn)) for fn in FORMS[kind]]
    ends = []
    for _ in range(2):  # the first calls trace, check the tapes, the probes and the cuts
        ends = [_call(loss, x, y) for loss in losses]
    (l0, g0), (l1, g1) = ends[0], ends[1]
    same = bool(torch.allclose(l0, l1, rtol=1e-6, atol=1e-7) and torch.allclose(g0, g1, rtol=1e-5, atol=1e-7))
    pushed = None
    if kind == "directional":
        wrong = torch.sign(x) != torch.sign(y)
        pushed = [float((-g[wrong] * torch.sign(y[wrong]) > 0).float().mean()) for _, g in ends]
    times: List[List[float]] = [[], [], []]
    for _ in range(calls):
        for k, loss in enumerate(losses):
            start = time.perf_counter()
            _call(loss, x, y)
            times[k].append(1e3 * (time.perf_counter() - start))
    ms = [statistics.median(t) for t in times]
    return {"case": f"{kind}, [{n}]", "ms": ms, "same": same, "pushed": pushed}


def main(argv: List[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--out", help="write the table there (markdown) as well")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.time()
    cases = [("kendall", 32), ("kendall", 64), ("kendall", 128), ("directional", 1024), ("directional", 16384)]
    rows = []
    for kind, n in cases:
        rows.append(case(kind, n, args.calls))
        print(rows[-1], flush=True)
    lines = ["# traced_sign.py: `torch.sign` of the scores through `from_metric`", "",
             " ".join((__doc__ or "").split("\n\n")[2].split()).replace("``", "`"), "",
             f"`python benchmarks/traced_sign.py --out docs/performance/sign-cost.md`: AMD EPYC 2-core, torch "
             f"{torch.__version__}, uniloss {uniloss.__version__}, one thread, medians of {args.calls} calls, "
             f"{time.strftime('%Y-%m-%d')}, {time.time() - start:.1f} s.", "",
             "| case | `torch.sign` (ms) | two comparisons (ms) | one comparison (ms) | sign / two | "
             "sign / one | sign's loss and gradient against two's | wrong signs pushed "
             "(sign, two, one) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ms, same, pushed = r["ms"], r["same"], r["pushed"]
        same_text = "equal" if same else "differ"
        pushed_text = "" if pushed is None else ", ".join(f"{100 * p:.0f}%" for p in pushed)
        lines.append(f"| {r['case']} | {ms[0]:.2f} | {ms[1]:.2f} | {ms[2]:.2f} | {ms[0] / ms[1]:.2f}x | "
                     f"{ms[0] / ms[2]:.2f}x | {same_text} | {pushed_text} |")
    lines += ["", "Where the two comparisons differ from `torch.sign` on the directional accuracy, they are "
              "wrong: each of their two steps is probed with the other held, and from a wrong sign (-1 where "
              "the target is positive: `x > 0` false, `x < 0` true) neither comparison alone reaches the right "
              "one (either gives 0, no better for `sign(s) == sign(y)`), so the probes find no better output "
              "and the loss does not push the wrong predictions at all (0% above). `torch.sign`'s probes set "
              "each element to each of its three values. The one-comparison form pushes them too, but counts "
              "a score of exactly 0 as -1, where `torch.sign` and the metric give 0."]
    print_page(lines, args.out)


if __name__ == "__main__":
    main()
