"""The `uniloss` command: train (log, checkpoints, resume after kill -9), reproduce, errors."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from uniloss.experiments.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from uniloss.experiments.cli import main

TINY = ["--limit-train", "1500", "--epochs", "3", "--threads", "1"]


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "uniloss.experiments.cli", *args], capture_output=True, text=True, **kw)


def test_python_dash_m_uniloss_is_the_command():
    r = subprocess.run([sys.executable, "-m", "uniloss", "reproduce", "--help"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: uniloss reproduce")
    import uniloss.__main__  # noqa: F401  (importing it runs nothing)


def test_python_dash_m_uniloss_without_the_experiments_extra_names_it(monkeypatch):
    import runpy

    monkeypatch.setitem(sys.modules, "uniloss.experiments.cli", None)  # as if its packages were missing
    monkeypatch.delitem(sys.modules, "uniloss.__main__", raising=False)  # (imported by the test above)
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("uniloss", run_name="__main__")
    assert 'pip install "uniloss[experiments]"' in str(exit_.value.code)


def test_train_writes_log_checkpoint_and_final_json(tmp_path):
    out = tmp_path / "run"
    r = _cli("train", "mnist-ap", "--loss", "uniloss", "--out", str(out), *TINY)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]  # not a terminal: JSON lines
    assert [line["epoch"] for line in lines[:-1]] == [1, 2, 3] and "final" in lines[-1]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(log) == 3 and {"train_loss", "val", "test", "train_batch_metric", "train_surrogate"} <= set(log[0])
    final = json.loads((out / "final.json").read_text())
    assert final["test"] == log[-1]["test"] and 0.5 < final["test"]["ap_interpolated"] <= 1
    config = json.loads((out / "config.json").read_text())
    assert config["lr"] == 0.01 and config["batch_size"] == 16 and config["momentum"] == 0.5  # the paper's
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["epoch"] == 3


def test_resume_after_kill_9_ends_like_an_uninterrupted_run(tmp_path):
    whole = tmp_path / "whole"
    assert _cli("train", "mnist-ap", "--out", str(whole), *TINY).returncode == 0
    cut = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "-m", "uniloss.experiments.cli", "train", "mnist-ap", "--out", str(cut), *TINY],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (cut / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)  # in the middle of epoch 2
    proc.wait()
    assert not (cut / "final.json").exists()
    r = _cli("train", "mnist-ap", "--out", str(cut), "--resume", *TINY)
    assert r.returncode == 0, r.stderr
    a = json.loads((whole / "final.json").read_text())
    b = json.loads((cut / "final.json").read_text())
    assert a["test"] == b["test"] and a["val"] == b["val"]
    assert len((cut / "log.jsonl").read_text().splitlines()) == 3


def test_existing_run_without_resume_and_damaged_checkpoint_are_clear_errors(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "mnist-ap", "--out", str(out), "--limit-train", "200", "--epochs", "1"]) == 0
    capsys.readouterr()
    assert main(["train", "mnist-ap", "--out", str(out), "--limit-train", "200", "--epochs", "1"]) == 2
    assert "pass --resume" in capsys.readouterr().err
    data = (out / "checkpoint.pt").read_bytes()
    (out / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    assert main(["train", "mnist-ap", "--out", str(out), "--resume", "--limit-train", "200", "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "damaged or truncated" in err and str(out / "checkpoint.pt") in err and len(err.strip().splitlines()) == 1


def test_resume_names_the_changed_setting_and_ignores_edited_notes(tmp_path, capsys):
    out = tmp_path / "run"
    small = ["--limit-train", "200", "--threads", "1"]
    assert main(["train", "mnist-ap", "--out", str(out), "--epochs", "1", *small]) == 0
    capsys.readouterr()
    assert main(["train", "mnist-ap", "--out", str(out), "--resume", "--epochs", "2", *small]) == 2
    err = capsys.readouterr().err
    assert "other settings: epochs 1 (now 2);" in err and "notes" not in err  # the difference, not both configs
    # a checkpoint of the same settings whose experiment description has since been edited (as when
    # the experiment's notes gain a variant) resumes
    state = load_checkpoint(out / "checkpoint.pt")
    state["config"] = {**state["config"], "epochs": 2, "notes": "an older description"}
    save_checkpoint(state, out / "checkpoint.pt")
    assert main(["train", "mnist-ap", "--out", str(out), "--resume", "--epochs", "2", *small]) == 0
    assert [json.loads(line)["epoch"] for line in (out / "log.jsonl").read_text().splitlines()] == [1, 2]


def test_checkpoint_roundtrip_and_foreign_file(tmp_path):
    save_checkpoint({"epoch": 2, "w": torch.arange(3)}, tmp_path / "c.pt")
    state = load_checkpoint(tmp_path / "c.pt")
    assert state["epoch"] == 2 and torch.equal(state["w"], torch.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left
    torch.save({"x": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a uniloss checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip at all")
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(tmp_path / "junk.pt")


@pytest.mark.parametrize("argv,needle", [
    (["train", "no-such-experiment"], "invalid choice"),
    (["train", "mnist-ap", "--epochs", "-3"], "--epochs: must be at least 1"),
    (["train", "mnist-ap", "--data-dir", "/no/such/folder"], "is not a folder"),
    (["train", "mnist-ap", "--loss", "hinge", "--epochs", "1"], "has no loss 'hinge'"),
    (["reproduce", "no-such-table"], "invalid choice"),
])
def test_bad_arguments_exit_nonzero_with_a_message(argv, needle):
    r = _cli(*argv)
    assert r.returncode != 0
    assert needle in r.stderr.strip().splitlines()[-1]


def test_missing_data_names_files_and_places(tmp_path, monkeypatch, capsys):
    from uniloss.experiments.data import paths

    monkeypatch.setattr(paths, "repo_root", lambda: None)  # hide ../shared/data of this checkout
    monkeypatch.setenv("UNILOSS_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "mnist-ap", "--data-dir", str(tmp_path), "--epochs", "1", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("uniloss: error:") and "train-images-idx3-ubyte" in err and str(tmp_path) in err
    assert not (tmp_path / "r").exists()  # no empty run folder left behind


def test_reproduce_writes_the_schema(tmp_path):
    out = tmp_path / "table"
    r = _cli("reproduce", "mnist-ap", "--seeds", "0", "1", "--epochs", "1", "--limit-train", "400",
             "--runs-dir", str(tmp_path / "runs"), "--out", str(out))
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "results.json").read_text())
    assert set(report) >= {"table", "machine", "date", "command", "rows"}
    assert report["table"] == "mnist-ap"
    assert report["command"].endswith(f"--out {out}")  # its command regenerates this table, not the default's
    assert {(row["loss"], row["metric"]) for row in report["rows"]} == {
        (loss, metric) for loss in ("uniloss", "uniloss-paper", "uniloss-published", "ce")
        for metric in ("ap_interpolated", "ap")}
    for row in report["rows"]:
        assert set(row) >= {"dataset", "loss", "metric", "mean", "std", "seeds", "paper"}
        assert len(row["seeds"]) == 2 and all(0 <= v <= 1 for v in row["seeds"])
        assert row["mean"] == pytest.approx(sum(row["seeds"]) / 2)
    paper = {(row["loss"], row["metric"]): row["paper"] for row in report["rows"]}
    assert paper[("uniloss", "ap_interpolated")] == 0.9988 and paper[("ce", "ap")] is None
    assert (out / "curves.png").stat().st_size > 1000 and "| paper |" in (out / "results.md").read_text()
    # A second call reuses the finished runs.
    again = _cli("reproduce", "mnist-ap", "--seeds", "0", "1", "--epochs", "1", "--limit-train", "400",
                 "--runs-dir", str(tmp_path / "runs"), "--out", str(out))
    assert "(0 to train)" in again.stderr


def test_reproduce_losses_picks_rows(tmp_path):
    out = tmp_path / "table"
    r = _cli("reproduce", "mnist-ap", "--seeds", "0", "--epochs", "1", "--limit-train", "200", "--losses", "ce",
             "--runs-dir", str(tmp_path / "runs"), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "1 runs (1 to train)" in r.stderr
    report = json.loads((out / "results.json").read_text())
    assert {row["loss"] for row in report["rows"]} == {"ce"}
    assert "--losses ce" in report["command"]
    bad = _cli("reproduce", "mnist-ap", "--losses", "nope", "--runs-dir", str(tmp_path / "runs"), "--out", str(out))
    assert bad.returncode != 0 and "no loss 'nope'" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_demo_runs_quickly(tmp_path):
    assert main(["demo", "--epochs", "2", "--seeds", "0", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "demo.json").exists() and (tmp_path / "demo.png").exists()


def test_resumed_memory_run_keeps_its_memory(tmp_path, crash_after_first_checkpoint):
    """``--loss uniloss-memory``: the cross-batch memory is in the checkpoint, so a run that dies
    after epoch 1 and resumes ends exactly like an uninterrupted one (with an empty memory after the
    resume it would not)."""
    args = ["train", "mnist-ap", "--loss", "uniloss-memory", "--limit-train", "400", "--epochs", "2", "--threads", "1"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main([*args, "--out", str(whole)]) == 0
    crash_after_first_checkpoint(lambda: main([*args, "--out", str(cut)]))
    memory = load_checkpoint(cut / "checkpoint.pt")["loss"]["decomposition"]
    assert memory["scores"].shape == (256,) and memory["target"].shape == (256,)
    assert main([*args, "--out", str(cut), "--resume"]) == 0
    a, b = (json.loads((d / "final.json").read_text()) for d in (whole, cut))
    assert a["test"] == b["test"] and a["val"] == b["val"]


def test_a_missing_device_is_one_line_and_makes_no_folder(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "run"
    assert main(["train", "mnist-ap", "--device", "cuda", "--epochs", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "sees no CUDA device" in err and "Traceback" not in err and not out.exists()
    assert main(["train", "mnist-ap", "--device", "nonsense", "--out", str(out)]) == 2
    assert "not a device torch knows" in capsys.readouterr().err


def test_download_flag_fetches_missing_files_and_the_error_names_it(tmp_path, monkeypatch, capsys):
    from uniloss.experiments.data import loaders, paths

    monkeypatch.setattr(paths, "repo_root", lambda: None)  # hide ../shared/data of this checkout
    monkeypatch.setenv("UNILOSS_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv(loaders.DOWNLOAD_VAR, "0")  # restored after the test: --download sets it
    monkeypatch.chdir(tmp_path)
    argv = ["train", "mnist-ap", "--data-dir", str(tmp_path), "--epochs", "1", "--out", str(tmp_path / "r")]
    assert main(argv) == 2  # without the flag: the message says how to fetch from the command line
    assert "--download" in capsys.readouterr().err

    class Fetched(Exception):
        pass

    def fake_download(*args, **kwargs):  # no network in tests: record the request and stop
        raise Fetched(args, kwargs)

    monkeypatch.setattr(loaders, "download_file", fake_download)
    with pytest.raises(Fetched):
        main(argv + ["--download"])
    assert os.environ[loaders.DOWNLOAD_VAR] == "1"  # and so for the runs `reproduce` starts


def test_download_flag_fetches_the_files_from_a_server_on_localhost(tmp_path, monkeypatch, capsys):
    """End to end: ``--download`` fetches MNIST from an HTTP server on 127.0.0.1 (serving the
    publishers' files from ../shared/data), verifies the checksums and trains."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from uniloss.experiments.data import loaders, paths, registry

    source = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist"
    if not (source / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"the MNIST files are not at {source}")
    requested = []

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            requested.append(self.path)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(source)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/"
        monkeypatch.setitem(registry.DATASETS, "mnist", registry.replace_spec("mnist", mirrors=(url,)))
        monkeypatch.setattr(paths, "repo_root", lambda: None)  # hide ../shared/data of this checkout
        monkeypatch.setenv("UNILOSS_DATA", str(tmp_path / "env"))
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
        monkeypatch.setenv(loaders.DOWNLOAD_VAR, "0")
        monkeypatch.chdir(tmp_path)
        data = tmp_path / "data"
        data.mkdir()
        argv = ["train", "mnist-ap", "--data-dir", str(data), "--limit-train", "64", "--epochs", "1",
                "--threads", "1", "--out", str(tmp_path / "run")]
        assert main(argv) == 2 and "--download" in capsys.readouterr().err  # not fetched without the flag
        assert requested == []
        assert main(argv + ["--download"]) == 0
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert sorted(p.rsplit("/", 1)[-1] for p in requested) == sorted(p.name for p in source.glob("*.gz"))
    fetched = sorted(p.name for p in tmp_path.rglob("*.gz"))
    assert fetched == sorted(p.name for p in source.glob("*.gz"))
    assert (tmp_path / "run").exists()


SMALL = ["--limit-train", "64", "--epochs", "1", "--threads", "1"]


def test_amp_on_the_cpu_warns_once_what_it_does(tmp_path, capsys):
    assert main(["train", "mnist-ap", "--amp", "--out", str(tmp_path / "run"), *SMALL]) == 0
    err = capsys.readouterr().err
    warned = [line for line in err.splitlines() if line.startswith("uniloss: warning: --amp")]
    assert len(warned) == 1 and "bfloat16" in warned[0] and "CPU" in warned[0]
    assert main(["train", "mnist-ap", "--out", str(tmp_path / "plain"), *SMALL]) == 0
    assert "--amp" not in capsys.readouterr().err


def test_progress_bars_convert_no_tensor_that_requires_grad(tmp_path):
    import warnings

    from uniloss.experiments.registry import get_experiment
    from uniloss.experiments.train import RunOptions, run_training

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_training(get_experiment("mnist-ap"), RunOptions(loss="uniloss", epochs=1, limit_train=64,
                                                            out=str(tmp_path / "run"), progress=True))
    assert not [w for w in caught if "requires_grad" in str(w.message)]


def test_a_corrupt_data_file_is_one_line_naming_it(tmp_path, capsys):
    import gzip

    from uniloss.experiments.data import clear_verification_cache, find_file

    source = find_file("mnist", "t10k-labels-idx1-ubyte.gz")
    if source is None:
        pytest.skip("needs MNIST in ../shared/data")
    raw = bytearray(gzip.decompress(source.read_bytes()))
    raw[100] ^= 1  # one label changed: a valid IDX file whose checksum differs
    bad = tmp_path / "data" / "mnist" / "t10k-labels-idx1-ubyte.gz"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(gzip.compress(bytes(raw)))  # the other files come from ../shared/data
    clear_verification_cache()
    out = tmp_path / "run"
    assert main(["train", "mnist-ap", "--data-dir", str(tmp_path / "data"), "--out", str(out), *SMALL]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("uniloss: error: checksum mismatch for " + str(bad)) and "delete it" in err
    assert not out.exists()


def _one_epoch_run(out, capsys):
    assert main(["train", "mnist-ap", "--out", str(out), *SMALL]) == 0
    capsys.readouterr()
    return out / "checkpoint.pt"


def _resume_error(out, capsys) -> str:
    assert main(["train", "mnist-ap", "--out", str(out), "--resume", *SMALL]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    return err


def test_a_checkpoint_with_missing_keys_or_wrong_shapes_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    path = _one_epoch_run(out, capsys)
    good = load_checkpoint(path)
    save_checkpoint({k: v for k, v in good.items() if k != "optimizer"}, path)
    err = _resume_error(out, capsys)
    assert str(path) in err and "optimizer" in err
    name = next(iter(good["model"]))
    save_checkpoint({**good, "model": {**good["model"], name: torch.zeros(3)}}, path)
    err = _resume_error(out, capsys)
    assert str(path) in err and "size mismatch" in err and name in err


def test_a_checkpoint_with_damaged_weight_bytes_is_refused_naming_it(tmp_path, capsys):
    out = tmp_path / "run"
    path = _one_epoch_run(out, capsys)
    weight = max(load_checkpoint(path)["model"].values(), key=lambda t: t.numel())
    data = bytearray(path.read_bytes())
    at = bytes(data).find(weight.numpy().tobytes()[:64])
    assert at > 0
    data[at + 8] ^= 0x10  # one bit of one weight: still a readable zip and pickle
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="content does not match its sha256"):
        load_checkpoint(path)
    err = _resume_error(out, capsys)
    assert str(path) in err and "damaged" in err


def test_stale_temporary_checkpoints_are_removed_on_the_next_save(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale_old = tmp_path / ".checkpoint.pt.k3j9x2ab.tmp"  # the naming before temporaries carried a pid
    stale_dead = tmp_path / f".checkpoint.pt.pid{int(dead.stdout)}.q1w2e3r4.tmp"  # its writer was killed
    live = tmp_path / f".checkpoint.pt.pid{os.getpid()}.a1s2d3f4.tmp"  # a writer still running
    other = tmp_path / ".other.pt.k3j9x2ab.tmp"  # another file's
    for p in (stale_old, stale_dead, live, other):
        p.write_bytes(b"x" * 100)
    save_checkpoint({"epoch": 1}, tmp_path / "checkpoint.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["checkpoint.pt", live.name, other.name])
