"""What a loss call on torchmetrics' curves costs through ``from_metric``: this checkout against a
commit's, call by call, the same loss and gradient checked.

    python benchmarks/traced_curves_cost.py 358c251 15     # the commit, calls of each

torchmetrics' AP and AUROC compute a precision-recall or ROC curve (per label, or per class, in a
Python loop) through slices, ``flip`` and ``cat`` with constants: operations that move elements,
which the chain through a ranking takes on each point's changes. Cases: multi-label AP of 10
labels at batches 16 and 64, binary AP and AUROC of 128 scores, multi-class AUROC of 5 classes
at batch 64; a loss call is forward and backward at the library's defaults, one thread, medians.
"""

from __future__ import annotations

import functools
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from version_cost import traced_table  # noqa: E402  (this checkout against a commit, call by call)


def _cases():
    from torchmetrics.functional.classification import (binary_auroc, binary_average_precision, multiclass_auroc,
                                                        multilabel_average_precision)

    g = torch.Generator().manual_seed(0)
    for n, labels in [(16, 10), (64, 10)]:
        y = (torch.rand(n, labels, generator=g) < 0.3).long()
        y[0], y[1] = 1, 0  # every label has a positive and a negative
        fn = functools.partial(multilabel_average_precision, num_labels=labels)
        yield f"multilabel_average_precision, [{n}, {labels}]", fn, torch.randn(n, labels, generator=g) + y, y
    y = (torch.rand(128, generator=g) < 0.2).long()
    x = torch.randn(128, generator=g) + y
    yield "binary_average_precision, [128]", binary_average_precision, x, y
    yield "binary_auroc, [128]", binary_auroc, x, y
    y = torch.randint(0, 5, (64,), generator=g)
    yield ("multiclass_auroc, [64, 5]", functools.partial(multiclass_auroc, num_classes=5),
           torch.randn(64, 5, generator=g) + torch.nn.functional.one_hot(y, 5), y)


if __name__ == "__main__":
    traced_table(_cases(), int(sys.argv[2]) if len(sys.argv) > 2 else 15, sys.argv[1] if len(sys.argv) > 1 else "HEAD",
                 same=True)
