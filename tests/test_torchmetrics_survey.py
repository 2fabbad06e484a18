"""benchmarks/torchmetrics_survey.py on a few functions whose outcome is known: a metric that
trains with its own value, one that returns a curve, one that is a loss (refused), one whose
branches read its counts, one that ranks rows the target filters, and one that needs groups."""

import pathlib
import sys

import pytest

pytest.importorskip("torchmetrics")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import torchmetrics_survey as survey  # noqa: E402


def test_survey_sorts_known_functions():
    rows = {name: (status, detail) for name, status, detail, _ in survey.survey(
        ["binary_accuracy", "binary_roc", "binary_hinge_loss", "binary_matthews_corrcoef", "binary_fairness",
         "multiclass_hamming_distance", "multilabel_ranking_loss"])}
    assert rows["binary_accuracy"][0] == "trains" and rows["binary_accuracy"][1].endswith("x the usual loss)")
    assert rows["binary_matthews_corrcoef"][0] == "trains"
    assert rows["multiclass_hamming_distance"] == ("trains", rows["multiclass_hamming_distance"][1])
    assert "higher_is_better=False" in rows["multiclass_hamming_distance"][1]
    assert rows["binary_roc"][0] == "not a value"
    assert rows["binary_hinge_loss"][0] == "refused" and "other than through comparisons" in rows["binary_hinge_loss"][1]
    assert rows["binary_fairness"][0] == "needs other inputs"
    assert rows["multilabel_ranking_loss"][0] == "trains"  # its ranking follows the target's row filter
