"""Bad input raises ValueError/TypeError naming the argument (DESIGN.md, "Behaviour on bad input")."""

import pytest
import torch

import uniloss
from uniloss import functional as F

AP = uniloss.AveragePrecision()
ACC = uniloss.MulticlassAccuracy()


def _kp(n=2, j=3):
    return uniloss.KeypointTarget(torch.rand(n, j, 2) * 4, torch.ones(n, j, dtype=torch.bool), torch.ones(n))


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: F.uniloss(torch.randn(5, 2), torch.ones(5), AP, interpolation="anchors"), ValueError, r"`scores` of shape \[n\] or \[n, 1\]"),
        (lambda: F.uniloss(torch.randn(5), torch.ones(4), AP, interpolation="anchors"), ValueError, r"`target` of shape \[5\].*got shape \(4,\)"),
        (lambda: F.uniloss(torch.randn(5), torch.tensor([0, 1, 2, 0, 1]), AP, interpolation="anchors"), ValueError, r"`target` to hold only 0 and 1.*2"),
        (lambda: F.uniloss(torch.tensor([1.0, float("nan")]), torch.tensor([0, 1]), AP, interpolation="anchors"), ValueError, r"`scores` to hold finite.*NaN"),
        (lambda: F.uniloss(torch.tensor([1.0, float("inf")]), torch.tensor([0, 1]), AP, interpolation="anchors"), ValueError, r"`scores` to hold finite"),
        (lambda: F.uniloss(torch.tensor([1, 2]), torch.tensor([0, 1]), AP, interpolation="anchors"), TypeError, r"`scores` to be a floating-point.*int64"),
        (lambda: F.uniloss([1.0, 2.0], torch.tensor([0, 1]), AP, interpolation="anchors"), TypeError, r"`scores` to be a torch.Tensor.*list"),
        (lambda: F.uniloss(torch.randn(4, 3), torch.tensor([0, 1, 3, 0]), ACC, interpolation="anchors"), ValueError, r"`target` to hold integers in \[0, 3\), but got values in \[0, 3\]"),
        (lambda: F.uniloss(torch.randn(4, 3), torch.tensor([0, -1, 2, 0]), ACC, interpolation="anchors"), ValueError, r"`target` to hold integers in \[0, 3\)"),
        (lambda: F.uniloss(torch.randn(4, 3), torch.tensor([0.0, 1, 2, 0]), ACC, interpolation="anchors"), TypeError, r"`target` to be an integer tensor"),
        (lambda: F.uniloss(torch.randn(4), torch.tensor([0, 1, 2, 0]), ACC, interpolation="anchors"), ValueError, r"`scores` of shape \[n, p\]"),
        (lambda: F.uniloss(torch.randn(4, 3), torch.tensor([0, 1, 2]), ACC, interpolation="anchors"), ValueError, r"`target` of shape \[4\]"),
        (lambda: F.uniloss(torch.randn(4, 3), torch.zeros(4, dtype=torch.long, device="meta"), ACC, interpolation="anchors"), ValueError, r"one device.*`scores` on cpu.*`target` on meta"),
        (lambda: F.uniloss(torch.randn(4), torch.ones(4), AP, temperature=0, interpolation="anchors"), ValueError, r"`temperature`.*> 0, but got 0"),
        (lambda: F.uniloss(torch.randn(4), torch.ones(4), AP, temperature=-1.0, interpolation="anchors"), ValueError, r"`temperature`"),
        (lambda: F.uniloss(torch.randn(4), torch.ones(4), AP, num_good=-1, interpolation="anchors"), ValueError, r"`num_good` >= 0, but got -1"),
        (lambda: F.uniloss(torch.randn(4), torch.ones(4), AP, num_nearby=-2, interpolation="anchors"), ValueError, r"`num_nearby`"),
        (lambda: F.uniloss(torch.randn(4), torch.ones(4), AP, num_bad=1.5, interpolation="anchors"), TypeError, r"`num_bad` to be an int"),
        (lambda: F.uniloss(torch.randn(4), torch.ones(4), AP, grad_scale=-1.0, interpolation="anchors"), ValueError, r"`grad_scale`"),
        (lambda: F.uniloss(torch.randn(4), torch.ones(4), AP, generator=3, interpolation="anchors"), TypeError, r"`generator`"),
        (lambda: F.uniloss(torch.randn(4), torch.ones(4), "ap", interpolation="anchors"), TypeError, r"`decomposition`"),
        (lambda: F.uniloss(torch.randn(4), torch.tensor([1, 0, 1, 0]), AP, anchors=torch.ones(3, 5, dtype=torch.bool), interpolation="anchors"), ValueError, r"`anchors` of shape \[t, 4\]"),
        (lambda: F.uniloss(torch.randn(2, 3, 5, 5), _kp(2, 2), uniloss.PCK(), interpolation="anchors"), ValueError, r"`target.keypoints` of shape \[2, 3, 2\]"),
        (lambda: F.uniloss(torch.randn(2, 3, 5), _kp(), uniloss.PCK(), interpolation="anchors"), ValueError, r"`scores` of shape \[n, J, H, W\]"),
        (lambda: F.uniloss(torch.randn(2, 3, 5, 5), (torch.zeros(2, 3, 2),), uniloss.PCK(), interpolation="anchors"), TypeError, r"`target` to be a KeypointTarget"),
        (lambda: F.uniloss(torch.randn(2, 3, 5, 5), uniloss.KeypointTarget(torch.zeros(2, 3, 2), torch.ones(2, 3), torch.tensor([1.0, 0.0])), uniloss.PCK(), interpolation="anchors"), ValueError, r"`target.normalizer` to be finite and > 0"),
        (lambda: F.uniloss(torch.randn(2, 3, 5, 5), uniloss.KeypointTarget(torch.full((2, 3, 2), float("nan")), torch.ones(2, 3), torch.ones(2)), uniloss.PCK()), ValueError, r"`target.keypoints` to hold finite values, but got 12 NaN"),
        (lambda: F.uniloss(torch.randn(2, 3, 5, 5), uniloss.KeypointTarget(torch.zeros(2, 3, 2).index_fill_(1, torch.tensor([1]), float("nan")), torch.tensor([[1, 0, 1], [1, 0, 1]]), torch.ones(2)), uniloss.PCK()), ValueError, r"all at joints marked invisible.*torch.nan_to_num"),
    ],
)
def test_bad_input_raises_naming_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize(
    "make,error,match",
    [
        (lambda: uniloss.UniLoss(AP, num_good=-1, interpolation="anchors"), ValueError, "`num_good`"),
        (lambda: uniloss.UniLoss(AP, temperature=0.0, interpolation="anchors"), ValueError, "`temperature`"),
        (lambda: uniloss.UniLoss(AP, temperature=float("nan"), interpolation="anchors"), ValueError, "`temperature`"),
        (lambda: uniloss.UniLoss(AP, generator="seed", interpolation="anchors"), TypeError, "`generator`"),
        (lambda: uniloss.UniLoss(lambda s, t: s, interpolation="anchors"), TypeError, "`decomposition`"),
        (lambda: uniloss.MulticlassAccuracy(top_k=0), ValueError, "`top_k`"),
        (lambda: uniloss.MulticlassAccuracy(fraction=1.5), ValueError, "`fraction`"),
        (lambda: uniloss.MulticlassAccuracy(fraction=0), ValueError, "`fraction`"),
        (lambda: uniloss.PCK(threshold=-0.5), ValueError, "`threshold`"),
        (lambda: uniloss.AveragePrecision(interpolated="yes"), TypeError, "`interpolated`"),
        (lambda: uniloss.MulticlassAccuracy(fraction="half"), TypeError, "`fraction` to be a number"),
        (lambda: uniloss.PCK(threshold=True), TypeError, "`threshold` to be a number"),
        (lambda: uniloss.zoo.f_beta("2"), TypeError, "`beta` to be a number"),
        (lambda: uniloss.UniLoss(AP, pull=None, interpolation="anchors"), TypeError, "`pull` to be a number"),
        (lambda: uniloss.Structure(4, chain=3), TypeError, "Structure.chain to be callable"),
        (lambda: uniloss.Structure(4, chain_gains="gains"), TypeError, "Structure.chain_gains to be callable"),
        (lambda: uniloss.Structure(4, run_pull=1.0), TypeError, "Structure.run_pull to be callable"),
        (lambda: uniloss.Structure(4, chain_by_runs=True), TypeError, "chain_by_runs needs chain"),
        (lambda: uniloss.UniLoss(uniloss.distributed.CrossBatchMemory(AP, size=4))(torch.randn(3), torch.tensor(1)), ValueError,
         "`target` to have a batch dimension"),
        (lambda: uniloss.UniLoss(uniloss.distributed.CrossBatchMemory(uniloss.PCK(), size=4))(
            torch.randn(2, 3, 5, 5), uniloss.KeypointTarget(torch.rand(2, 3, 2), torch.ones(2, 3, dtype=torch.bool),
                                                            torch.ones(3))),
         ValueError, "as many rows each, but got \\[2, 2, 3\\]"),
    ],
)
def test_bad_options_raise_at_construction(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_validate_args_false_skips_checks():
    scores = torch.tensor([1.0, float("nan"), 0.0])
    loss = F.uniloss(scores, torch.tensor([1, 0, 0]), AP, validate_args=False, interpolation="anchors")
    assert loss.shape == ()


def test_incomplete_user_decomposition_says_what_is_missing():
    class Half(uniloss.Decomposition):
        def comparisons(self, scores, target):
            return scores

    with pytest.raises(TypeError, match=r"does not define best\(\)"):
        F.uniloss(torch.randn(3), torch.ones(3), Half(), interpolation="anchors")


@pytest.mark.parametrize("options", [{}, {"interpolation": "anchors"}, {"interpolation": "anchors", "chunk_bits": 8}],
                         ids=["chain", "anchors", "chunked"])
def test_an_evaluate_that_reduces_every_dimension_is_told_so(options):
    class Agreement(uniloss.Decomposition):  # evaluate written for one configuration: .mean(), not .mean(-1)
        def comparisons(self, scores, target):
            return scores

        def best(self, target):
            return target.bool()

        def evaluate(self, bits, target):
            return (bits == target.bool()).float().mean()

    target = torch.tensor([1, 0, 0, 1, 1, 0, 0, 0, 1, 0, 1, 0, 0, 1, 0, 0])
    with pytest.raises(ValueError, match=r"Agreement.evaluate\(bits, target\) to return \[\d+\] values, one per "
                                         r"configuration .* but got shape \(\): reduce over the last dimension"):
        uniloss.UniLoss(Agreement(), **options)(torch.randn(16, requires_grad=True), target)


def test_public_names_have_docstrings():
    for name in uniloss.__all__:
        obj = getattr(uniloss, name)
        assert obj.__doc__ and obj.__doc__.strip(), f"uniloss.{name} has no docstring"
    for name in F.__all__:
        assert getattr(F, name).__doc__, f"uniloss.functional.{name} has no docstring"


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.float16,
                                   torch.float32, torch.bool])
@pytest.mark.parametrize("bad", [2, -1, -2, 3, 127])
def test_binary_targets_of_every_dtype_are_checked(dtype, bad):
    """Binary labels are checked by one reduction whatever their dtype (a signed integer by ``t &
    -2``): 0 and 1 pass; any other value, negative ones and odd ones above 1 included, is named."""
    good = torch.tensor([0, 1, 1, 0, 1]).to(dtype)
    for make in (uniloss.AveragePrecision, uniloss.zoo.f_beta):
        F.uniloss(torch.randn(5), good, make())
        if dtype == torch.bool or (bad < 0 and dtype == torch.uint8):
            continue  # (not representable)
        target = torch.tensor([0, 1, bad, 0, 1]).to(dtype)
        with pytest.raises(ValueError, match=rf"`target` to hold only 0 and 1, but got value {bad}"):
            F.uniloss(torch.randn(5), target, make())
