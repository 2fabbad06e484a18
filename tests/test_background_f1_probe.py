"""benchmarks/background_f1_probe.py: the metric against scikit-learn, the offset and the split by hand."""

import importlib.util
import os

import pytest
import torch
from sklearn.metrics import f1_score

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("background_f1_probe",
                                               os.path.join(ROOT, "benchmarks", "background_f1_probe.py"))
probe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(probe)


@pytest.mark.parametrize("seed", range(6))
def test_micro_f1_is_scikit_learns_micro_average_over_the_classes_but_0(seed):
    g = torch.Generator().manual_seed(seed)
    n, c = 40, 5
    scores = torch.randn(n, c, generator=g)
    scores[:, 0] += 2.0 * (seed % 3)  # from few decided entities to many
    target = torch.where(torch.rand(n, generator=g) < 0.3, torch.randint(1, c, (n,), generator=g), 0)
    expected = f1_score(target.numpy(), scores.argmax(1).numpy(), labels=list(range(1, c)), average="micro",
                        zero_division=0)
    assert float(probe.micro_f1(scores, target)) == pytest.approx(expected, abs=1e-6)


def test_tuned_offset_by_hand():
    # background minus entity: 0.5 and 0.3 on the two entities, 2.0 and 3.0 on the two backgrounds:
    # an offset in (0.5, 2.0) decides every sample right; the grid's smallest such is 0.55
    logits = torch.tensor([[0.5, 0.0], [0.3, 0.0], [2.0, 0.0], [3.0, 0.0]])
    target = torch.tensor([1, 1, 0, 0])
    assert probe.tuned_offset(logits, target) == pytest.approx(0.55)
    # every sample already right at 0: 0 among the ties, so 0
    assert probe.tuned_offset(torch.tensor([[-1.0, 0.0], [2.0, 0.0]]), torch.tensor([1, 0])) == 0.0


def test_extraction_split_keeps_the_background_and_a_share_of_each_entity_class():
    labels = torch.arange(10).repeat_interleave(8)  # 8 images of each class
    index, new = probe.extraction_split(labels, torch.Generator().manual_seed(0), share=0.25)
    assert torch.equal(index, index.sort().values)
    original = labels[index]
    assert int((original < 6).sum()) == 48  # every background image
    for c in range(6, 10):
        assert int((original == c).sum()) == 2  # a quarter of 8
    assert torch.equal(new[original < 6], torch.zeros(48, dtype=torch.long))
    assert torch.equal(new[original >= 6], original[original >= 6] - 5)


def _result(argmax, tuned):
    return {"argmax": argmax, "tuned": tuned, "offset": 0.5, "oracle": tuned + 0.01, "oracle_offset": 0.25,
            "entities": 0.1, "entities_tuned": 0.12, "entities_oracle": 0.13, "entities_true": 0.14}


def test_table_takes_each_row_at_its_best_rate_and_compares_seed_by_seed():
    seeds, rates, epochs = [0, 1], [0.1, 0.2], 8
    results = {key + (0.25,): value for key, value in {
        ("ce", 0.1, 0, epochs): _result(0.80, 0.81), ("ce", 0.1, 1, epochs): _result(0.82, 0.83),
        ("ce", 0.2, 0, epochs): _result(0.70, 0.71), ("ce", 0.2, 1, epochs): _result(0.72, 0.73),
        ("uniloss", 0.1, 0, epochs): _result(0.78, 0.78), ("uniloss", 0.1, 1, epochs): {},  # diverged
        ("uniloss", 0.2, 0, epochs): _result(0.83, 0.84), ("uniloss", 0.2, 1, epochs): _result(0.82, 0.84),
    }.items()}
    assert probe.table(results, rates, seeds, epochs, share=0.05) == (probe.table({}, rates, seeds, epochs)[0], [])
    lines, rows = probe.table(results, rates, seeds, epochs, share=0.25)
    assert [(r["trains"], r["decision"], r["best_lr"]) for r in rows] == [
        ("ce", "argmax", 0.1), ("ce", "tuned", 0.1), ("ce", "oracle", 0.1),
        ("uniloss", "argmax", 0.2), ("uniloss", "tuned", 0.2), ("uniloss", "oracle", 0.2)]
    assert rows[2]["offsets"] == [0.25, 0.25] and rows[1]["offsets"] == [0.5, 0.5]  # each decision's own offset
    assert rows[2]["entities"] == [13.0, 13.0] and rows[1]["entities"] == [12.0, 12.0]
    assert rows[3]["diverged"] == {"0.1": 2, "0.2": 0}  # a rate with a diverged seed scores no row
    assert "diverged" in lines[5]  # UniLoss's argmax row, rate 0.1
    # UniLoss's argmax (83, 82) minus cross-entropy's argmax (80, 82): +3 and 0
    assert "+1.50 ± 2.12, ahead on 1 of 2" in lines[2]
    assert lines[5].endswith("|  |")  # no comparison with itself
