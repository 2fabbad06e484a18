"""A fixed sample of benchmarks/fuzz_degenerate.py's cases in every mode: each metric on small,
degenerate and saturated inputs gives a finite loss and gradient and its exact metric, and the
engine's paths (static layout, dense anchors, blocks, wrappers) agree, and the chain equals its
evaluated reference. Its longer runs found the
bugs of tests/test_degenerate_scales.py and the static layout's PCK pull count."""

import math
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import fuzz_degenerate as fuzz  # noqa: E402


@pytest.mark.parametrize("mode", ["finite", "--static", "--paths", "--chunks", "--wrappers", "--chain"])
@pytest.mark.filterwarnings("ignore:top_k_accuracy.*every sample is a hit")  # the fuzzer draws k >= C on purpose
def test_fuzz_sample_has_no_failure(mode, capsys):
    check = fuzz.check_finite if mode == "finite" else fuzz.CHECKS[mode]
    cases = 3000 if mode == "--chunks" else 250  # (--chunks checks only the PCK cases, about one in eight)
    fails = fuzz.main(math.inf, 2026, check, max_cases=cases)
    out = capsys.readouterr().out
    assert fails == 0, out
    checked = int(out.split(" checked")[0].split()[-1])
    assert checked >= 100  # the sample exercises the check, not only refused inputs


# A case of ``fuzz_degenerate.py 300 62 --chain`` (#84200): AP per query of bfloat16 scores, where
# item 3 (relevant) is compared with items 12 and 32 (irrelevant), both at -0.7421875: two
# comparisons of one value, which the chain may walk in either order.
_TIED_SCORES = [-0.330078125, 0.017822265625, -0.00836181640625, -0.7109375, -1.375, 0.98828125, 0.07080078125,
                -0.1708984375, -1.484375, 0.91015625, -0.4453125, 1.140625, -0.7421875, -0.388671875, 0.361328125,
                0.3203125, 0.478515625, 0.67578125, -0.458984375, -0.75390625, -0.5078125, 0.671875, -0.498046875,
                1.0234375, -1.1953125, 0.1357421875, 2.21875, 0.2236328125, 0.427734375, -0.5703125, 0.095703125,
                0.6875, -0.7421875]
_TIED_RELEVANCE = [0, 0, 0, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 1, 0, 0]
_TIED_QUERY = [0, 1, 2, 2, 2, 2, 2, 0, 0, 2, 1, 1, 2, 0, 0, 0, 0, 2, 1, 1, 2, 0, 0, 1, 0, 0, 1, 2, 2, 2, 1, 0, 2]


def test_chain_check_names_a_tie_of_comparisons_and_checks_the_gradient_off_it():
    import torch

    from uniloss import zoo
    from uniloss.decoders import RankingTarget

    dec = zoo.average_precision()
    target = RankingTarget(torch.tensor(_TIED_RELEVANCE), torch.tensor(_TIED_QUERY))
    s = torch.tensor(_TIED_SCORES, dtype=torch.float64)
    problems = fuzz.check_chain(dec, s, target, {}, 84200)
    # The loss agrees; the gradient is one order's of the tied pair, the reference's the other's.
    assert problems and all(p.startswith(fuzz.TIE) for p in problems), problems
    moved = s.clone()
    moved[32] -= 1e-9  # the tie broken: one order, one gradient, and the check holds to 1e-6
    assert fuzz.check_chain(dec, moved, target, {}, 84200) == []
