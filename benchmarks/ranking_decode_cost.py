"""What decoding a ranking of many grades costs, by this checkout and by a commit's.

    python benchmarks/ranking_decode_cost.py 20 5f4ad69     # medians of 20, against 5f4ad69

``Ranking(pairs="relevance")`` decodes a configuration of its pairs into ranks by placing the
grades from the most relevant down, each item in the slots the more relevant grades left free.
Up to 5f4ad69 that was one pass a grade (a cumulative count and a search over every item): a
relevance with as many grades as items, a regression target ranked by Spearman's rho through
``from_metric``, took ``n`` passes at each of the chain's 257 points. The same placement is an
inversion table's decode, which now takes ``log2(n)`` pairwise merges of blocks (a sort and a
search each). The ranks are the same (tested against a loop); this prints the time of one loss
call (forward and backward, library defaults, one thread) of this checkout and of the commit's,
interleaved call by call in one process (medians), after checking that both give the same loss
and gradient: ``from_metric`` cases first, then the zoo's NDCG with integer grades.
"""

from __future__ import annotations

import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from plain_code_gallery import ndcg_at_10, spearman_rho  # noqa: E402  (the gallery's metrics)
from version_cost import alternate, load_ref, traced_table  # noqa: E402  (this checkout against a commit)


def _traced_cases(g):
    for n in (64, 128, 256, 512):
        y = torch.randn(n, generator=g)
        yield f"Spearman's rho, [{n}] (n grades)", spearman_rho, y + torch.randn(n, generator=g), y
    for n in (128, 512):
        y = torch.randint(0, 5, (n,), generator=g).float()
        yield f"NDCG@10, five grades, [{n}]", ndcg_at_10, y + torch.randn(n, generator=g), y


def _zoo_table(calls: int, ref: str) -> None:
    import uniloss

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(1)
    print(f"| case | {ref} (ms) | this checkout (ms) | this / {ref} |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        old = load_ref(tmp, ref)
        for n, grades in ((128, 5), (1024, 5), (1024, 32)):
            y = torch.randint(0, grades, (n,), generator=g)
            x = y.float() / grades + torch.randn(n, generator=g)
            losses = {"ref": old.UniLoss(old.zoo.ndcg_at_k(10)), "this": uniloss.UniLoss(uniloss.zoo.ndcg_at_k(10))}
            ends = {}
            for key, loss in losses.items():
                s = x.clone().requires_grad_()
                value = loss(s, y)
                value.backward()
                ends[key] = (value.detach(), s.grad)
            torch.testing.assert_close(ends["ref"], ends["this"], rtol=1e-5, atol=1e-7)
            w = torch.nn.Parameter(torch.ones(1))
            med = alternate({k: (lambda f=f: f(x * w, y).backward()) for k, f in losses.items()}, calls, warmup=3)
            print(f"| zoo.ndcg_at_k(10), {grades} grades, [{n}] | {med['ref']:.2f} | {med['this']:.2f} | "
                  f"{med['this'] / med['ref']:.3f}x |", flush=True)


def main(calls: int, ref: str) -> None:
    print("Through `from_metric` (the same loss and gradient, checked):\n")
    traced_table(_traced_cases(torch.Generator().manual_seed(0)), calls, ref, same=True)
    print("\nThe zoo's NDCG@10 of integer grades (the same loss and gradient, checked):\n")
    _zoo_table(calls, ref)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20, sys.argv[2] if len(sys.argv) > 2 else "HEAD")
