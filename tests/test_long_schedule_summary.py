"""benchmarks/long_schedule_summary.py: the phases of a schedule from runs' logs, on hand-made logs."""

import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("long_schedule_summary",
                                               os.path.join(ROOT, "benchmarks", "long_schedule_summary.py"))
summary = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(summary)


def _write(folder, run, accuracies, drop_at, batch=None):
    os.makedirs(folder / run)
    with open(folder / run / "log.jsonl", "w") as f:
        for epoch, acc in enumerate(accuracies, 1):
            row = {"epoch": epoch, "lr": 0.1 if epoch < drop_at else 0.01, "test": {"accuracy": acc}}
            if batch is not None:
                row["train_batch_metric"] = batch
            f.write(json.dumps(row) + "\n")
        f.write(json.dumps({"final": {"accuracy": accuracies[-1]}}) + "\n")


def test_phases_by_hand(tmp_path, capsys, monkeypatch):
    ce = [0.5 + 0.01 * e for e in range(8)]  # epochs 1-8: 0.50 .. 0.57
    uni = [0.6] * 9  # one epoch further: left out, the runs compared on their common epochs
    _write(tmp_path, "ce-seed0", ce, drop_at=5)
    _write(tmp_path, "uniloss-seed0", uni, drop_at=5, batch=0.9)
    rows = summary.read_log(str(tmp_path / "ce-seed0"))
    assert [r["epoch"] for r in rows] == list(range(1, 9)) and summary.drops(rows) == [5]
    table = summary.phases(rows, 4)
    assert table["epochs 1-4"] == pytest.approx(51.5) and table["epochs 5-8"] == pytest.approx(55.5)
    assert table["before the drop at 5 (1-4)"] == pytest.approx(51.5)
    assert table["after it (5-8)"] == pytest.approx(55.5)
    assert table["final (epoch 8)"] == pytest.approx(57.0) and table["best epoch (8 for this run)"] == pytest.approx(57.0)
    out = tmp_path / "page.md"
    monkeypatch.setattr("sys.argv", ["long_schedule_summary.py", str(tmp_path), "--block", "4", "--out", str(out)])
    summary.main()
    page = out.read_text()
    assert "epochs 1-8 (those every run has finished)" in page
    assert "| epochs 1-4 | 51.50 | 60.00 | +8.50 |" in page  # the usual loss first, then the difference
    assert "| final (epoch 8) | 57.00 | 60.00 | +3.00 |" in page
    assert "mean of the last epoch (8): 90.00%" in page


def test_split_val_reads_the_validation_metric(tmp_path, capsys, monkeypatch):
    # each epoch's val differs from its test, so a page that read the wrong split would show other means
    for run, base in (("ce-seed0", 0.5), ("uniloss-seed0", 0.7)):
        os.makedirs(tmp_path / run)
        with open(tmp_path / run / "log.jsonl", "w") as f:
            for epoch in range(1, 5):
                f.write(json.dumps({"epoch": epoch, "lr": 0.1, "test": {"accuracy": base},
                                    "val": {"accuracy": base + 0.01 * epoch}}) + "\n")
    rows = summary.read_log(str(tmp_path / "ce-seed0"))
    assert summary.phases(rows, 2, "val")["epochs 1-2"] == pytest.approx(51.5)
    assert summary.phases(rows, 2)["epochs 1-2"] == pytest.approx(50.0)
    monkeypatch.setattr("sys.argv", ["long_schedule_summary.py", str(tmp_path), "--block", "2", "--split", "val"])
    summary.main()
    page = capsys.readouterr().out
    assert "--block 2 --split val`. Validation metric (%)" in page
    assert "| epochs 3-4 | 53.50 | 73.50 | +20.00 |" in page and "| final (epoch 4) | 54.00 | 74.00 | +20.00 |" in page


def test_differences_epoch_by_epoch_and_the_plot(tmp_path, monkeypatch):
    # the first run's own metric, then each other run minus it, only on the epochs both have
    _write(tmp_path, "ce-seed0", [0.50, 0.52, 0.55], drop_at=3)
    _write(tmp_path, "uniloss-seed0", [0.51, 0.50], drop_at=3)
    logs = {run: summary.read_log(str(tmp_path / run)) for run in ("ce-seed0", "uniloss-seed0")}
    diff = summary.differences(logs)
    assert diff["ce-seed0"] == pytest.approx([50.0, 52.0, 55.0])
    assert diff["uniloss-seed0"] == pytest.approx([1.0, -2.0])
    with pytest.raises(KeyError):  # these logs have no validation metric
        summary.differences(logs, "val")
    png = tmp_path / "d.png"
    monkeypatch.setattr("sys.argv", ["long_schedule_summary.py", str(tmp_path), "--plot", str(png)])
    summary.main()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_runs_shorter_than_a_block():
    # the "last" block of a 3-epoch run with --block 10 is its 3 epochs (it read epochs -6..0 before)
    rows = [{"epoch": e, "lr": 0.1, "test": {"accuracy": a}} for e, a in ((1, 0.5), (2, 0.6), (3, 0.7))]
    table = summary.phases(rows, 10)
    assert table["last 3 (1-3)"] == pytest.approx(60.0) and table["epochs 1-3"] == pytest.approx(60.0)
