"""scripts/gpu_performance.py, the one script for a lent GPU, runs on a CPU in a tiny configuration."""

import importlib.util
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script():
    spec = importlib.util.spec_from_file_location("gpu_performance", os.path.join(ROOT, "scripts", "gpu_performance.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_sync_audit_and_graph_parts_write_their_report(tmp_path):
    report = _script().main(["--tiny", "--device", "cpu", "--only", "sync", "graphs", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["machine"]["device"] == "cpu" and saved["machine"]["card"] is None
    cases = {r["case"]: r for r in saved["sync"]}
    assert {"AP", "accuracy", "PCK", "zoo.macro_f1"} <= set(cases)
    for row in cases.values():  # the flag is the profiler's count, per case
        assert row["synchronises"] == any(row["synchronising_ops"].values())
    assert saved["graphs"][0]["result"].startswith("not applicable")
    text = (tmp_path / "README.md").read_text()
    assert "Host synchronisations" in text and "CPU" in text
    assert report["sync"] == saved["sync"]
