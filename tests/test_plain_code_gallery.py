"""benchmarks/plain_code_gallery.py: metrics as users write them in plain torch. Each is the
metric its name says (scikit-learn or scipy, else a Python loop, on the hard scores) and trains
through ``from_metric``: ``last.metric`` is its value and the gradient is finite."""

import importlib.util
import os

import pytest
import torch

import uniloss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("plain_code_gallery",
                                               os.path.join(ROOT, "benchmarks", "plain_code_gallery.py"))
gallery = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gallery)


@pytest.mark.parametrize("case", gallery.CASES, ids=lambda c: c.fn.__name__)
def test_each_metric_of_the_gallery_is_its_reference(case):
    for seed in range(4):
        scores, target = case.inputs(torch.Generator().manual_seed(seed))
        assert float(case.fn(scores, target)) == pytest.approx(case.reference(scores.numpy(), target.numpy()),
                                                               abs=1e-6), seed
    x = scores.clone().requires_grad_()
    case.usual(x, target).backward()  # the usual loss the cost is compared with runs on the same inputs
    assert torch.isfinite(x.grad).all()


@pytest.mark.filterwarnings("ignore:from_metric")  # those that vmap cannot batch say so
@pytest.mark.parametrize("case", gallery.CASES, ids=lambda c: c.fn.__name__)
def test_each_metric_of_the_gallery_trains_through_from_metric(case):
    loss = uniloss.UniLoss(uniloss.from_metric(case.fn, higher_is_better=case.higher_is_better))
    for seed in range(2):  # the first call traces and checks, the second reruns
        scores, target = case.inputs(torch.Generator().manual_seed(seed))
        x = scores.clone().requires_grad_()
        loss(x, target).backward()
        assert float(loss.last.metric) == pytest.approx(float(case.fn(scores, target)), abs=1e-5)
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
