"""benchmarks/paired_runs.py: counts and the exact McNemar test, against scipy and by hand."""

import importlib.util
import os

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("paired_runs", os.path.join(ROOT, "benchmarks", "paired_runs.py"))
paired = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(paired)


@pytest.mark.parametrize("only_a, only_b", [(163, 175), (120, 118), (0, 7), (3, 0), (10, 10), (1, 30), (222, 228)])
def test_mcnemar_exact_is_scipys_two_sided_binomial_test(only_a, only_b):
    stats = pytest.importorskip("scipy.stats")
    expected = stats.binomtest(min(only_a, only_b), only_a + only_b, 0.5).pvalue
    assert paired.mcnemar_exact(only_a, only_b) == pytest.approx(expected, rel=1e-9)


def test_mcnemar_by_hand():
    assert paired.mcnemar_exact(0, 0) == 1.0
    assert paired.mcnemar_exact(0, 3) == pytest.approx(2 / 8)  # both tails of 3 coins all one way
    assert paired.mcnemar_exact(1, 3) == pytest.approx(2 * 5 / 16)  # P(X <= 1) for 4 coins, doubled
    assert paired.mcnemar_exact(2, 2) == 1.0  # a doubled tail above 1 is capped


def test_counts_and_the_models_right_answers():
    a = torch.tensor([True, True, False, False, True])
    b = torch.tensor([True, False, True, False, True])
    assert paired.paired_counts(a, b) == {"n": 5, "both": 2, "only_a": 1, "only_b": 1, "neither": 1}
    with pytest.raises(ValueError, match="one length"):
        paired.paired_counts(a, b[:4])
    model = torch.nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3, 2))  # class 0 <- feature 0, class 1 <- feature 1, class 2 <- 0
    x = torch.tensor([[2.0, 1.0], [0.0, 1.0], [1.0, 3.0]])
    assert paired._right(model, x, torch.tensor([0, 1, 0])).tolist() == [True, True, False]


def test_page_reads_the_counts():
    report = {"experiment": "e", "a": "ce-seed0", "b": "uniloss-seed0", "epochs": [3, 3],
              "splits": {"test": {"n": 10, "both": 6, "only_a": 1, "only_b": 3, "neither": 0}}}
    text = paired.page(report, "cmd")
    assert "| test | 10 | 70.00 | 90.00 | +20.00 | 1 | 3 | 0.625 |" in text
    assert "Machine: not recorded" in text
    assert "Machine: box, torch 9; date: 2026-01-02." in paired.page({**report, "machine": "box, torch 9",
                                                                      "date": "2026-01-02"}, "cmd")
