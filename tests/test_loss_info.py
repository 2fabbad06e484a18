"""``LossInfo.metric`` is computed on first read where the scores are a model's output
(:func:`uniloss.functional.with_exact_metric`): the value is the one an eager computation gives,
and reading it after the scores were modified in place is an error, not a different value."""

import copy
import pickle

import pytest
import torch
from sklearn.metrics import average_precision_score

import uniloss
from uniloss import zoo


def _model_output(values):
    x = torch.tensor(values, dtype=torch.float64, requires_grad=True)
    return x, x * 1.0  # a non-leaf, as a model's output is


@pytest.mark.parametrize("make", [uniloss.AveragePrecision, zoo.auroc, zoo.average_precision])
def test_deferred_metric_equals_the_reference_on_ties(make):
    target = torch.tensor([1, 0, 1, 0, 0, 1])
    _, scores = _model_output([0.5, 0.5, 0.2, 0.2, 0.9, 0.9])  # every pair tied
    loss_fn = uniloss.UniLoss(make(), generator=torch.Generator().manual_seed(0))
    loss_fn(scores, target).backward()
    if make is zoo.auroc:
        from sklearn.metrics import roc_auc_score as reference
    else:
        reference = average_precision_score
    expected = reference(target.numpy(), scores.detach().numpy())
    assert float(loss_fn.last.metric) == pytest.approx(expected, abs=1e-12)


def test_in_place_change_before_the_read_raises():
    target = torch.tensor([1, 0, 1, 0])
    _, scores = _model_output([0.1, 0.4, 0.3, 0.2])
    loss_fn = uniloss.UniLoss(uniloss.AveragePrecision())
    loss_fn(scores, target)
    with torch.no_grad():
        scores.mul_(-1.0)  # AP of the changed scores would be another value
    with pytest.raises(RuntimeError, match="modified in place"):
        loss_fn.last.metric


def test_read_before_the_change_keeps_the_calls_value():
    target = torch.tensor([1, 0, 1, 0])
    _, scores = _model_output([0.1, 0.4, 0.3, 0.2])
    loss_fn = uniloss.UniLoss(uniloss.AveragePrecision())
    loss_fn(scores, target)
    before = float(loss_fn.last.metric)
    with torch.no_grad():
        scores.mul_(-1.0)
    assert float(loss_fn.last.metric) == before == pytest.approx(
        average_precision_score([1, 0, 1, 0], [0.1, 0.4, 0.3, 0.2]))


def test_leaf_scores_an_optimiser_updates_keep_the_calls_value():
    target = torch.tensor([1, 0, 1, 0])
    scores = torch.tensor([0.1, 0.4, 0.3, 0.2], requires_grad=True)
    expected = average_precision_score([1, 0, 1, 0], [0.1, 0.4, 0.3, 0.2])
    loss_fn = uniloss.UniLoss(uniloss.AveragePrecision())
    optimiser = torch.optim.SGD([scores], lr=10.0)
    loss_fn(scores, target).backward()
    optimiser.step()  # changes the scores in place, and their AP
    assert average_precision_score([1, 0, 1, 0], scores.detach().numpy()) != pytest.approx(expected)
    assert float(loss_fn.last.metric) == pytest.approx(expected)


def test_pickle_copy_and_replace_read_the_metric():
    import dataclasses

    target = torch.tensor([1, 0, 1, 0])
    _, scores = _model_output([0.1, 0.4, 0.3, 0.2])
    loss_fn = uniloss.UniLoss(uniloss.AveragePrecision())
    loss_fn(scores, target)
    info = loss_fn.last
    expected = average_precision_score([1, 0, 1, 0], [0.1, 0.4, 0.3, 0.2])
    for other in (pickle.loads(pickle.dumps(info)), copy.deepcopy(info), dataclasses.replace(info, path="x")):
        assert float(other.metric) == pytest.approx(expected)
    assert float(info.metric) == pytest.approx(expected)
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.metric = torch.tensor(0.0)  # still frozen


def test_read_under_grad_modes_and_autocast_gives_one_value():
    target = torch.tensor([1, 0, 1, 0, 1])
    values = [0.3, 0.1, 0.3, 0.7, 0.2]
    readers = [torch.no_grad, torch.inference_mode, lambda: torch.autocast("cpu", dtype=torch.bfloat16)]
    read = []
    for reader in readers:
        _, scores = _model_output(values)
        loss_fn = uniloss.UniLoss(uniloss.AveragePrecision())
        loss_fn(scores, target)
        with reader():
            metric = loss_fn.last.metric
        assert not metric.requires_grad and metric.dtype == torch.float64
        read.append(float(metric))
    assert read == [pytest.approx(average_precision_score(target.numpy(), values))] * 3


def _agreement(scores, target):
    return ((scores > 0) == (target > 0)).float().mean()


@pytest.mark.parametrize("make", [lambda: uniloss.MulticlassAccuracy(fraction=0.5), lambda: uniloss.from_metric(_agreement)])
def test_a_batch_metric_the_plan_already_holds_is_reported_at_once(make):
    """Accuracy's and from_metric's batch_metric read a value their plan holds: nothing to defer,
    and the plan is not kept; an in-place change afterwards does not touch the reported value."""
    dec = make()
    if isinstance(dec, uniloss.MulticlassAccuracy):
        _, scores = _model_output([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0], [1.0, 0.0, 2.0]])
        target = torch.tensor([0, 1, 2])
    else:
        _, scores = _model_output([0.5, -0.2, 0.3, -0.7])
        target = torch.tensor([1, 1, 0, 0])
    expected = float(dec.metric(scores.detach(), target))
    loss_fn = uniloss.UniLoss(dec, generator=torch.Generator().manual_seed(0))
    loss_fn(scores, target)
    with torch.no_grad():
        scores.mul_(-1.0)
    assert float(loss_fn.last.metric) == pytest.approx(expected)


@pytest.mark.parametrize("positives, negatives", [(1, 1), (2, 3), (5, 11)])
def test_aps_chain_ends_are_read_when_asked(positives, negatives):
    """AP's chain takes its gains without the order (``Structure.chain_gains``); ``anchor_values``
    then holds the chain's two ends, computed when read: AP with every negative above every
    positive, ``sum_k k / (N + k) / P`` (by hand), and 1 where every comparison is right. Pickling
    and copying read them too."""
    import dataclasses

    target = torch.tensor([1] * positives + [0] * negatives)
    _, scores = _model_output(torch.randn(positives + negatives, generator=torch.Generator().manual_seed(3)).tolist())
    loss_fn = uniloss.UniLoss(uniloss.AveragePrecision())
    loss_fn(scores, target).backward()
    info = loss_fn.last
    start = sum(k / (negatives + k) for k in range(1, positives + 1)) / positives
    assert info.path == "chain" and info.kinds == (("chain", 2),)
    for other in (pickle.loads(pickle.dumps(info)), copy.deepcopy(info), dataclasses.replace(info, path="x"), info):
        assert other.anchor_values.dtype == torch.float64
        torch.testing.assert_close(other.anchor_values, torch.tensor([start, 1.0], dtype=torch.float64))


class _PositiveShare(uniloss.Decomposition):
    """The share of positive scores, whose comparisons are the scores themselves (a view of them:
    a custom metric may return that), a run each, its metric from the runs' counts."""

    def comparisons(self, scores, target):
        return scores.reshape(-1)

    def best(self, target):
        return torch.ones(target.numel(), dtype=torch.bool)

    def evaluate(self, bits, target):
        return bits.float().mean(-1)

    def structure(self, target):
        return uniloss.Structure(1, lambda zeros: (zeros == 0).float().mean(-1))


def test_comparisons_that_are_the_leaf_scores_keep_the_calls_metric():
    """The chain computes the hard bits ``c > 0`` when the metric is read; where the comparisons
    share the scores' storage (a metric whose comparisons are the scores), an optimiser's in-place
    step before that read would change them, so they are taken at the call."""
    target = torch.ones(4)
    scores = torch.tensor([0.5, 0.4, -0.3, -0.2], requires_grad=True)
    loss_fn = uniloss.UniLoss(_PositiveShare())
    loss_fn(scores, target).backward()
    with torch.no_grad():
        scores.copy_(torch.tensor([1.0, 1.0, 1.0, 1.0]))  # in place, as an optimiser's step
    assert loss_fn.last.path == "chain" and float(loss_fn.last.metric) == 0.5  # the call's, not 1.0
