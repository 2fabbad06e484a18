"""benchmarks/seg_digits_errors.py: the counts against scikit-learn, the error kinds by hand and by a
loop, the table's differences, and the check that the counts repeat the run's mean IoU."""

import importlib.util
import os

import pytest
import torch
from sklearn.metrics import confusion_matrix, jaccard_score

import uniloss
import uniloss.experiments.metric_wins as mw

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("seg_digits_errors",
                                               os.path.join(ROOT, "benchmarks", "seg_digits_errors.py"))
errors = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(errors)


def _maps(seed, background=0.6):
    g = torch.Generator().manual_seed(seed)
    shape = (3, 9, 9)

    def draw():
        return torch.where(torch.rand(shape, generator=g) < background, 0, torch.randint(1, 11, shape, generator=g))

    return draw(), draw()


@pytest.mark.parametrize("seed", range(5))
def test_counts_and_mean_iou_are_scikit_learns_and_the_zoos(seed):
    pred, target = _maps(seed)
    counts = errors.confusion(pred, target)
    assert (counts.numpy() == confusion_matrix(target.reshape(-1), pred.reshape(-1), labels=range(11))).all()
    found = errors.breakdown(counts)
    assert found["miou"] == pytest.approx(jaccard_score(target.reshape(-1), pred.reshape(-1), average="macro"))
    one_hot = torch.nn.functional.one_hot(pred, 11).permute(0, 3, 1, 2).float()
    assert found["miou"] == pytest.approx(float(uniloss.zoo.mean_iou(11).metric(one_hot, target)), abs=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_error_kinds_by_a_loop_over_the_pixels(seed):
    pred, target = _maps(seed)
    found = errors.breakdown(errors.confusion(pred, target))
    missed = spurious = wrong = digits = background = both = either = 0
    for p, t in zip(pred.reshape(-1).tolist(), target.reshape(-1).tolist()):
        digits += t > 0
        background += t == 0
        missed += t > 0 and p == 0
        spurious += t == 0 and p > 0
        wrong += t > 0 and p > 0 and p != t
        both += t > 0 and p > 0
        either += t > 0 or p > 0
    assert found["missed"] == pytest.approx(missed / digits)
    assert found["spurious"] == pytest.approx(spurious / background)
    assert found["wrong_digit"] == pytest.approx(wrong / digits)
    assert found["any_digit"] == pytest.approx(both / either)
    iou = [found["iou"][c] for c in range(11) if found["iou"][c] is not None]
    assert found["background"] == iou[0] and found["digits"] == pytest.approx(sum(iou[1:]) / len(iou[1:]))


@pytest.mark.parametrize("seed", range(3))
def test_missed_pixels_split_by_the_patch_by_a_loop(seed):
    pred, target = _maps(seed)
    hidden = torch.rand(target.shape, generator=torch.Generator().manual_seed(seed + 10)) < 0.3
    found = errors.by_patch(pred, target, hidden)
    under = visible = digits = digits_under = 0
    for p, t, h in zip(pred.reshape(-1).tolist(), target.reshape(-1).tolist(), hidden.reshape(-1).tolist()):
        digits += t > 0
        digits_under += t > 0 and h
        under += t > 0 and p == 0 and h
        visible += t > 0 and p == 0 and not h
    assert (found["missed_hidden"], found["missed_visible"]) == pytest.approx((under / digits, visible / digits))
    assert found["hidden_share"] == pytest.approx(digits_under / digits)
    whole = errors.breakdown(errors.confusion(pred, target))["missed"]
    assert found["missed_hidden"] + found["missed_visible"] == pytest.approx(whole)  # the two add up


def test_a_case_by_hand():
    target = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    pred = torch.tensor([0, 1, 0, 0, 1, 2, 3, 2])
    found = errors.breakdown(errors.confusion(pred, target))
    # digits' pixels 5: one called background (index 3), one the wrong digit (index 6); background 3, one spurious
    assert (found["missed"], found["wrong_digit"], found["spurious"]) == pytest.approx((1 / 5, 1 / 5, 1 / 3))
    # any digit: 4 pixels digit in both, 6 in either
    assert found["any_digit"] == pytest.approx(4 / 6)
    # IoU: background 2/4, class 1 1/3, class 2 2/3, class 3 0/1; classes 4-10 absent from both
    assert found["iou"][:4] == pytest.approx([2 / 4, 1 / 3, 2 / 3, 0.0]) and found["iou"][4:] == [None] * 7
    assert found["miou"] == pytest.approx((2 / 4 + 1 / 3 + 2 / 3 + 0) / 4)
    assert found["digits"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)


def test_the_table_subtracts_each_row_from_the_last_seed_by_seed():
    def run(miou, missed):
        return dict(miou=miou, background=0.9, digits=miou, any_digit=0.8, missed=missed, spurious=0.01,
                    wrong_digit=0.1, missed_hidden=missed / 4, missed_visible=3 * missed / 4,
                    iou=[0.9] + [miou] * 9 + [None])

    results = {("ce", 2.0): [run(0.60, 0.10), run(0.62, 0.12)],
               ("uniloss", 2.0): [run(0.64, 0.05), run(0.65, 0.08)]}
    lines = errors.table(results)
    assert lines[2].startswith("| per-pixel cross-entropy | 2 | 61.00 ± 1.41 |")
    against = next(line for line in lines if line.startswith("| per-pixel cross-entropy (2x) |"))
    cells = [c.strip() for c in against.strip("|").split("|")]
    assert cells[1] == "+3.50 ± 0.71"  # mean IoU: +4 and +3
    assert cells[5] == "-4.50 ± 0.71"  # missed: -5 and -4 (fewer errors)
    assert cells[6] == "-1.12 ± 0.18" and cells[7] == "-3.38 ± 0.53"  # a quarter of them hidden
    last = lines[-1]
    assert last.startswith("| UniLoss (defaults) (2x) | 90.0 | 64.5 |") and last.endswith("| 64.5 | – |")


def test_losses_are_given_as_loss_at_scale():
    assert errors._parse("lovasz@8") == ("lovasz", 8.0)
    for bad in ("lovasz", "hinge@2", "ce@"):
        with pytest.raises(Exception, match="loss@scale"):
            errors._parse(bad)


def test_a_run_checks_its_counts_against_the_runs_mean_iou(monkeypatch):
    x = torch.zeros(2, 1, 28, 28)
    target = torch.zeros(2, 28, 28, dtype=torch.long)
    target[0, :5] = 3
    target[1, 10:] = 7

    class Constant(torch.nn.Module):  # calls every pixel class 3
        def forward(self, inputs):
            scores = torch.zeros(inputs.shape[0], 11, 28, 28)
            scores[:, 3] = 1.0
            return scores

    right = float(uniloss.zoo.mean_iou(11).metric(Constant()(x), target))
    seen = []

    def fake(loss, seed, quick, options, data_dir=None, draw=0, digits=False, trained=None):
        seen.append((loss, seed, quick, draw, digits, mw._LR_SCALE))
        if trained is not None:
            trained.append((Constant(), x, target))
        return [0.0, reported]

    monkeypatch.setattr(mw, "run_segmentation", fake)
    reported = right
    found = errors.run(("ce", 4.0, 2, True, None))
    mw.TASKS["seg-miou-digits"].run("ce", 2, True, {})  # the suite's task: the same call
    assert seen[0] == ("ce", 2, True, 2, True, 4.0) and seen[0][:5] == seen[1][:5]
    assert found["miou"] == pytest.approx(right) and found["curve"] == [0.0, right]
    assert found["hidden_share"] == 1.0  # an input of 0 is the patch's
    reported = right + 0.01  # counts that do not repeat the run's score are an error, not a row
    with pytest.raises(RuntimeError, match="mean IoU"):
        errors.run(("ce", 4.0, 2, True, None))


def test_the_pages_carry_the_command_and_the_payload(tmp_path):
    out = str(tmp_path / "page")
    errors.write_pages(out, "A title", "Some text.", "Test split, x100", [0, 1], 2, 1.25, "python x.py --jobs 2",
                       ["| a |", "|---|"], dict(rows=[1, 2]))
    page = open(out + ".md").read()
    assert page.startswith("# A title\n\nSome text.\n\nTest split, x100, mean ± std over seeds [0, 1]; ")
    assert "2 at a time" in page and "1.2 minutes. Command: `python x.py --jobs 2`.\n\n| a |\n|---|\n" in page
    import json

    saved = json.load(open(out + ".json"))
    assert saved["command"] == "python x.py --jobs 2" and saved["seeds"] == [0, 1] and saved["rows"] == [1, 2]
