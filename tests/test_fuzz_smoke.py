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
def test_fuzz_sample_has_no_failure(mode, capsys):
    check = fuzz.check_finite if mode == "finite" else fuzz.CHECKS[mode]
    cases = 3000 if mode == "--chunks" else 250  # (--chunks checks only the PCK cases, about one in eight)
    fails = fuzz.main(math.inf, 2026, check, max_cases=cases)
    out = capsys.readouterr().out
    assert fails == 0, out
    checked = int(out.split(" checked")[0].split()[-1])
    assert checked >= 100  # the sample exercises the check, not only refused inputs
