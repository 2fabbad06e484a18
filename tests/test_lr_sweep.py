"""benchmarks/lr_sweep.py: the defaults minus cross-entropy per rate, seed by seed, by hand."""

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("lr_sweep", os.path.join(ROOT, "benchmarks", "lr_sweep.py"))
sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sweep)
CE, OURS = sweep.LOSSES[0][0], sweep.LOSSES[-1][0]


def test_the_rows_compared_are_cross_entropy_and_the_defaults():
    assert sweep.LOSSES[0][1] == {"loss": "ce"}
    assert sweep.LOSSES[-1][1] == {"loss": "uniloss"}  # no option: the library's defaults


def test_paired_lines_by_hand():
    rows = [
        dict(loss=CE, lr=0.1, seeds=[0.90, 0.95, 0.97]),
        dict(loss=OURS, lr=0.1, seeds=[0.91, 0.95, 0.96]),  # +1, 0, -1 points: mean 0, std 1
        dict(loss=CE, lr=1.0, seeds=[0.50, 0.60, 0.70]),
        dict(loss=OURS, lr=1.0, seeds=[0.53, 0.62, 0.71]),  # +3, +2, +1: mean +2, std 1
        dict(loss=CE, lr=3.0, seeds=[0.5, 0.5, 0.5]),  # no row of the defaults at this rate
    ]
    lines = sweep._paired_lines(rows, [0.1, 1.0, 3.0])
    assert lines[0] == ""
    assert len(lines) == 3
    assert "lr 0.1:" in lines[1] and "+0.00 ± 1.00 (ahead on 1 of 3 seeds, level on 1)" in lines[1]
    assert "lr 1.0:" in lines[2] and "+2.00 ± 1.00 (ahead on 3 of 3 seeds, level on 0)" in lines[2]


@pytest.mark.parametrize("seeds", [[0.9], []])
def test_no_paired_lines_without_two_seeds_of_each(seeds):
    rows = [dict(loss=CE, lr=0.1, seeds=seeds), dict(loss=OURS, lr=0.1, seeds=seeds)]
    assert sweep._paired_lines(rows, [0.1]) == []
    assert sweep._paired_lines([dict(loss=CE, lr=0.1, seeds=[0.9, 0.8])], [0.1]) == []
