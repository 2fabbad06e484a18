"""The multi-class experiments (paper sec. 4.3): data splits, digit pairs, augmentation, model,
losses, schedules, smoke runs of ``uniloss train`` and the ``multiclass`` table.

Everything runs on tiny fixtures (CIFAR in the publishers' exact format, written with the data
tests' helpers; a small Fashion-MNIST in IDX format) or on MNIST from ``../shared/data``; the
training runs are one epoch of two or three steps.
"""

from __future__ import annotations

import doctest
import gzip
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from test_data import MiniCifar, MiniIdx, _pickle, _tar_gz, idx_bytes  # the data tests' format writers
from uniloss.experiments import data as D
from uniloss.experiments import multiclass as MC
from uniloss.experiments import reproduce as R
from uniloss.experiments.augment import random_crop, random_hflip
from uniloss.experiments.cli import main
from uniloss.experiments.models import ResNet20, count_parameters
from uniloss.experiments.registry import TABLES, Table, get_experiment
from uniloss.experiments.train import RunError, RunOptions, resolve_recipe

NAMES = ("fashion-resnet20", "cifar10-resnet20", "cifar100-resnet20", "mnist-pairs-resnet20")
SMOKE = ["--epochs", "1", "--batch-size", "32", "--limit-train", "64", "--threads", "1"]


def _isolate_data_environment(tmp_path, monkeypatch):
    """Whatever the environment's data variables say: no $UNILOSS_DATA, no $UNILOSS_DOWNLOAD (a
    test expecting missing data would fetch it), the user cache under tmp."""
    from uniloss.experiments.data.loaders import DOWNLOAD_VAR

    monkeypatch.delenv(D.ENV_VAR, raising=False)
    monkeypatch.delenv(DOWNLOAD_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """No data variables, the user cache under tmp (so no CIFAR is found but the fixtures)."""
    _isolate_data_environment(tmp_path, monkeypatch)
    D.clear_verification_cache()
    yield
    D.clear_verification_cache()


def test_the_data_variables_of_the_environment_do_not_reach_the_tests(tmp_path, monkeypatch):
    env_root = tmp_path / "env"  # what a user's $UNILOSS_DATA may hold: a (here unreadable) CIFAR-10
    (env_root / "cifar-10").mkdir(parents=True)
    (env_root / "cifar-10" / "cifar-10-python.tar.gz").write_bytes(b"not a tar file")
    monkeypatch.setenv(D.ENV_VAR, str(env_root))
    monkeypatch.setenv("UNILOSS_DOWNLOAD", "1")
    monkeypatch.setattr(D.loaders, "download_file", lambda *a, **k: pytest.fail("a test may not download"))
    monkeypatch.setattr(D.paths, "repo_root", lambda: None)  # hide ../shared/data: MNIST missing too
    monkeypatch.chdir(tmp_path)
    _isolate_data_environment(tmp_path, monkeypatch)
    assert not any(MC._dataset_present(name, None) for name in ("cifar-10", "cifar-100", "mnist"))


def _mnist_available() -> bool:
    return MC._dataset_present("mnist", None)


def _mini_cifar(name: str, n_train: int, n_test: int) -> MiniCifar:
    """A CIFAR-10/100 archive of random images in the publishers' format (``n_train`` split over
    the five CIFAR-10 batches)."""
    rng = np.random.default_rng(5)
    spec = D.get_spec(name)
    classes = spec.num_classes
    label_key = b"labels" if name == "cifar-10" else b"fine_labels"
    members, data, labels = {}, {}, {}
    for split, n in (("train", n_train), ("test", n_test)):
        data[split] = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels[split] = [int(v) for v in np.arange(n) % classes]
        files = [m.filename for m in spec.members[split]]
        chunks = np.array_split(np.arange(n), len(files))
        for fn, idx in zip(files, chunks):
            batch = {b"batch_label": fn.encode(), b"data": data[split][idx],
                     label_key: [labels[split][i] for i in idx], b"filenames": [b"x.png"] * len(idx)}
            if name == "cifar-100":
                batch[b"coarse_labels"] = [0] * len(idx)
            members[fn] = _pickle(batch)
    names_key = b"label_names" if name == "cifar-10" else b"fine_label_names"
    members[spec.meta.filename] = _pickle({names_key: [c.encode() for c in spec.classes]})
    return MiniCifar(name, spec.files["archive"].filename, spec.archive_folder,
                     _tar_gz(spec.archive_folder, members), members, data, labels, {})


def _mini_fashion(n_train: int = 120, n_test: int = 40) -> MiniIdx:
    rng = np.random.default_rng(3)
    images = {"train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
              "test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)}
    labels = {s: (np.arange(len(images[s])) % 10).astype(np.uint8) for s in images}
    raw = {f"{s}-{k}": idx_bytes(v[s]) for s in images for k, v in (("images", images), ("labels", labels))}
    return MiniIdx(raw, {k: gzip.compress(v, mtime=0) for k, v in raw.items()}, images, labels)


@pytest.fixture
def fixture_root(tmp_path, monkeypatch):
    """A data root with a tiny Fashion-MNIST, CIFAR-10 (archive) and CIFAR-100 (extracted folder),
    the registry's checksums swapped for the fixtures'."""
    root = tmp_path / "data"
    fashion = _mini_fashion()
    monkeypatch.setitem(D.DATASETS, "fashion-mnist", fashion.spec(name="fashion-mnist"))
    fashion.write(root / "fashion-mnist")
    c10, c100 = _mini_cifar("cifar-10", 50, 20), _mini_cifar("cifar-100", 110, 30)
    for mini in (c10, c100):
        monkeypatch.setitem(D.DATASETS, mini.name, mini.spec())
    c10.write_archive(root)
    c100.write_folder(root)
    return root, {"cifar-10": c10, "cifar-100": c100}


def test_docstring_examples_run():
    failures, tried = doctest.testmod(MC, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert failures == 0 and tried > 0


# --------------------------------------------------------------------------- data


@pytest.mark.parametrize("name", ["cifar-10", "cifar-100"])
def test_cifar_splits_from_the_publishers_format(fixture_root, name):
    root, minis = fixture_root
    mini = minis[name]
    s = MC.load_cifar_splits(name, str(root), torch.device("cpu"))
    images = torch.from_numpy(mini.data["train"].reshape(-1, 3, 32, 32))
    labels = torch.tensor(mini.labels["train"])
    n_val = len(labels) // 10  # the last tenth validates (45,000 / 5,000 on the real data)
    assert s.x_train.dtype == torch.uint8 and s.x_train.shape[1:] == (3, 32, 32)
    assert torch.equal(s.x_train, images[:-n_val]) and torch.equal(s.y_train, labels[:-n_val])
    assert torch.equal(s.x_val, images[-n_val:]) and torch.equal(s.y_val, labels[-n_val:])
    assert torch.equal(s.x_test, torch.from_numpy(mini.data["test"].reshape(-1, 3, 32, 32)))
    assert s.y_test.tolist() == mini.labels["test"]
    exp = get_experiment("cifar10-resnet20" if name == "cifar-10" else "cifar100-resnet20")
    assert exp.missing_data(str(root)) is None
    assert "data not available here" in exp.missing_data(str(root.parent / "empty"))


def test_fashion_splits_keep_the_last_tenth_for_validation(fixture_root):
    root, _ = fixture_root
    s = MC.load_fashion_splits(str(root), torch.device("cpu"))
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (108, 12, 40)
    assert s.x_train.shape[1:] == (1, 28, 28) and s.x_val.dtype == torch.uint8


def _source_digits(n: int = 30):
    """``n`` distinct 28x28 "digit" images (image i is filled with i), labels ``i % 10``."""
    images = torch.arange(n, dtype=torch.uint8)[:, None, None].expand(n, 28, 28).clone()
    return images, torch.arange(n) % 10


def test_digit_pairs_are_two_digits_side_by_side_labelled_10a_plus_b():
    images, labels = _source_digits()
    p = MC.make_digit_pairs(images, labels, 3, torch.Generator().manual_seed(0))
    assert p.images.shape == (300, 28, 56) and p.images.dtype == torch.uint8
    assert torch.equal(p.images[:, :, :28], images[p.left]) and torch.equal(p.images[:, :, 28:], images[p.right])
    assert torch.equal(p.labels, 10 * labels[p.left] + labels[p.right])
    assert torch.bincount(p.labels, minlength=100).tolist() == [3] * 100  # balanced
    assert p.labels[:100].tolist() != sorted(p.labels[:100].tolist())  # shuffled


def test_digit_pairs_are_deterministic_and_checked():
    images, labels = _source_digits()
    a = MC.make_digit_pairs(images, labels, 2, torch.Generator().manual_seed(7))
    b = MC.make_digit_pairs(images, labels, 2, torch.Generator().manual_seed(7))
    c = MC.make_digit_pairs(images, labels, 2, torch.Generator().manual_seed(8))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a.images, c.images)
    with pytest.raises(ValueError, match=r"none for \[9\]"):
        MC.make_digit_pairs(images[labels != 9], labels[labels != 9], 1, torch.Generator())
    with pytest.raises(ValueError, match="digits in"):
        MC.make_digit_pairs(images, labels + 1, 1, torch.Generator())


@pytest.mark.skipif(not _mnist_available(), reason="needs MNIST in ../shared/data")
def test_digit_pair_task_is_the_documented_construction(monkeypatch):
    monkeypatch.setattr(MC, "PAIRS_PER_CLASS", {"train": 2, "val": 1, "test": 1})
    s = MC.load_digit_pairs(None, torch.device("cpu"))
    train, test = D.load_mnist("train"), D.load_mnist("test")
    g = torch.Generator().manual_seed(MC.PAIRS_SEED)
    expected = [MC.make_digit_pairs(train.images[:54000], train.labels[:54000], 2, g),  # disjoint pools
                MC.make_digit_pairs(train.images[54000:], train.labels[54000:], 1, g),
                MC.make_digit_pairs(test.images, test.labels, 1, g)]
    for (x, y), p in zip(((s.x_train, s.y_train), (s.x_val, s.y_val), (s.x_test, s.y_test)), expected):
        assert x.shape[1:] == (1, 28, 56) and torch.equal(x[:, 0], p.images) and torch.equal(y, p.labels)
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (200, 100, 100)


# --------------------------------------------------------------------------- augmentation, model, losses


def test_augmentation_runs_on_the_data_device(device):
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, device=device)
    exp = get_experiment("cifar10-resnet20")
    out = exp.augment(x, torch.Generator(device=device).manual_seed(1))
    g = torch.Generator(device=device).manual_seed(1)
    assert out.device == x.device and out.dtype == torch.uint8 and out.shape == x.shape
    assert torch.equal(out, random_hflip(random_crop(x, 4, g), generator=g))  # crop 4 + flip
    pairs = torch.randint(0, 256, (8, 1, 28, 56), dtype=torch.uint8, device=device)
    out = get_experiment("mnist-pairs-resnet20").augment(pairs, torch.Generator(device=device).manual_seed(2))
    assert torch.equal(out, random_crop(pairs, 2, torch.Generator(device=device).manual_seed(2)))  # never flipped


def test_resnet20_classifier_counts_and_channels_last_gives_the_same_outputs():
    assert count_parameters(MC.ImageClassifier(ResNet20(10), MC.CIFAR10_MEAN, MC.CIFAR10_STD)) == 269_722
    for name in NAMES:
        assert 0.26e6 < count_parameters(get_experiment(name).model("ce")) < 0.28e6
    torch.manual_seed(0)
    fast = MC.ImageClassifier(ResNet20(10, in_channels=1), MC.FASHION_MEAN, MC.FASHION_STD).eval()
    plain = MC.ImageClassifier(ResNet20(10, in_channels=1), MC.FASHION_MEAN, MC.FASHION_STD, channels_last=False).eval()
    plain.load_state_dict(fast.state_dict())
    x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    assert fast.net.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(fast(x), plain(x), atol=1e-5)
    assert torch.allclose(fast(x), fast(x.float() / 255), atol=1e-6)  # uint8 and [0, 1] floats alike


@pytest.mark.parametrize("name", NAMES)
def test_every_loss_gives_a_finite_loss_and_gradient(name):
    exp = get_experiment(name)
    classes = 10 if name in ("fashion-resnet20", "cifar10-resnet20") else 100
    for loss in exp.losses:
        fn, module = exp.loss(loss, torch.Generator().manual_seed(0))
        y = torch.randint(0, classes, (32,))
        # a partly trained model's scores: with random ones, the 20% variant's anchors all score 0
        # on 100 classes (the bits it does not train stay wrong), and its gradient is exactly zero
        scores = (torch.randn(32, classes) + 4 * torch.nn.functional.one_hot(y, classes)).requires_grad_()
        value = fn(scores, y)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(scores.grad).all() and scores.grad.abs().sum() > 0
        assert (module is None) == (loss == "ce")
        if module is not None:
            assert float(module.last.metric) == float((scores.argmax(1) == y).float().mean())


# --------------------------------------------------------------------------- schedules


def test_schedules_paper_short_scaled_and_the_cifar100_factor():
    exp = get_experiment("cifar100-resnet20")
    paper = exp.recipe_for("paper", "ce")
    assert (paper.epochs, paper.milestones, paper.lr, paper.momentum, paper.weight_decay, paper.batch_size) == \
        (200, (140, 160), 0.1, 0.9, 1e-4, 128)
    assert exp.recipe_for(None, "ce") == paper
    assert (exp.recipe_for("paper", "uniloss-frac20").epochs, exp.recipe_for("paper", "uniloss-frac20").milestones) == \
        (1000, (700, 800))
    assert exp.recipe_for("paper", "uniloss-top20") == paper
    short = exp.recipe_for("short", "ce")
    assert (short.epochs, short.milestones) == (MC.SHORT_EPOCHS, MC.SHORT_RECIPE.milestones)
    assert exp.recipe_for("short", "uniloss-frac20").epochs == 5 * MC.SHORT_EPOCHS
    assert exp.recipe_for("paper:20", "ce").milestones == (14, 16)
    pairs = get_experiment("mnist-pairs-resnet20")  # the 100-class task: same steps for every loss
    assert pairs.recipe_for("short", "uniloss-frac20") == pairs.recipe_for("short", "ce")
    for bad in ("long", "paper:0", "paper:x"):
        with pytest.raises(ValueError, match="schedule"):
            exp.recipe_for(bad, "ce")
    r = resolve_recipe(exp, RunOptions(loss="ce", schedule="short", epochs=3))
    assert r.epochs == 3 and r.milestones == short.milestones  # --epochs keeps the milestones
    with pytest.raises(RunError, match="only the paper's schedule"):
        resolve_recipe(get_experiment("mnist-ap"), RunOptions(loss="ce", schedule="short"))
    assert resolve_recipe(get_experiment("mnist-ap"), RunOptions(loss="ce", schedule="paper")) == get_experiment("mnist-ap").recipe


def test_schedule_option_reaches_train_and_reproduce(tmp_path, capsys):
    assert main(["train", "mnist-ap", "--schedule", "short", "--out", str(tmp_path / "r")]) == 2
    assert "only the paper's schedule" in capsys.readouterr().err
    args = SimpleNamespace(device="cpu", epochs=None, data_dir=None, limit_train=None, schedule="short", amp=True)
    cmd = R._run_command(Table("fashion-resnet20", ("ce",), ("accuracy",)), "ce", 0, tmp_path, args)
    assert cmd[cmd.index("--schedule") + 1] == "short" and "--amp" in cmd


# --------------------------------------------------------------------------- uniloss train (smoke)


@pytest.mark.parametrize("name, loss", [("fashion-resnet20", "uniloss"), ("cifar10-resnet20", "ce"),
                                        ("cifar100-resnet20", "uniloss-frac20")])
def test_smoke_training_run(fixture_root, tmp_path, name, loss):
    root, _ = fixture_root
    out = tmp_path / "run"
    assert main(["train", name, "--loss", loss, "--schedule", "short", "--data-dir", str(root),
                 "--out", str(out), *SMOKE]) == 0
    final = json.loads((out / "final.json").read_text())
    assert final["epochs"] == 1 and 0.0 <= final["test"]["accuracy"] <= 1.0
    config = json.loads((out / "config.json").read_text())
    milestones = get_experiment(name).recipe_for("short", loss).milestones  # x5 for CIFAR-100's 20% UniLoss
    assert config["schedule"] == "short" and config["milestones"] == list(milestones)
    assert config["momentum"] == 0.9 and config["weight_decay"] == 1e-4
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and ("train_batch_metric" in log[0]) == (loss != "ce")


def test_log_records_the_learning_rate_each_epoch_trained_with(fixture_root, tmp_path):
    """``short:3`` decays after epochs 2 and 3 (milestones round(2.1), round(2.55)): epochs 1-3 train
    at 0.1, 0.1, 0.01 (the scheduler's value after an epoch is the next epoch's, not this one's)."""
    root, _ = fixture_root
    out = tmp_path / "run"
    args = SMOKE[2:]  # all but "--epochs 1"
    assert "--epochs" not in args
    assert main(["train", "fashion-resnet20", "--loss", "ce", "--schedule", "short:3", "--data-dir", str(root),
                 "--out", str(out), *args]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["milestones"] == [2, 3] and config["epochs"] == 3
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [h["lr"] for h in log] == pytest.approx([0.1, 0.1, 0.01])


@pytest.mark.skipif(not _mnist_available(), reason="needs MNIST in ../shared/data")
def test_smoke_training_run_of_the_100_class_task(tmp_path, monkeypatch):
    monkeypatch.setattr(MC, "PAIRS_PER_CLASS", {"train": 1, "val": 1, "test": 1})
    out = tmp_path / "run"
    assert main(["train", "mnist-pairs-resnet20", "--loss", "uniloss-top20", "--out", str(out), *SMOKE]) == 0
    final = json.loads((out / "final.json").read_text())
    assert set(final["test"]) == {"accuracy", "top5"} and final["test"]["top5"] >= final["test"]["accuracy"]


def test_gain_variant_scales_the_gradient_and_keeps_the_value():
    y = torch.randint(0, 10, (16,))
    scores = torch.randn(16, 10, generator=torch.Generator().manual_seed(0))
    out = {}
    for name in ("uniloss", "uniloss-g3"):
        fn, module = MC.multiclass_loss(name, torch.Generator().manual_seed(1))  # the same anchors
        s = scores.clone().requires_grad_()
        value = fn(s, y)
        value.backward()
        out[name] = (value.detach(), s.grad, module.last.surrogate)
    assert torch.equal(out["uniloss"][0], out["uniloss-g3"][0]) and float(out["uniloss"][0]) == -float(out["uniloss"][2])
    assert torch.allclose(out["uniloss-g3"][1], MC.UNILOSS_VARIANTS["uniloss-g3"].gain * out["uniloss"][1], rtol=1e-5, atol=1e-8)


def test_warmup_loss_switches_at_its_step_and_keeps_the_count_in_its_state():
    import uniloss

    def pair(seed):
        g = torch.Generator().manual_seed(seed)
        return (uniloss.UniLoss(uniloss.MulticlassAccuracy(fraction=0.2), generator=g),
                uniloss.UniLoss(uniloss.MulticlassAccuracy(top_k=3), generator=g))

    warm = MC.WarmupLoss(*pair(0), steps=2)
    first, then = pair(0)  # the same two losses, called by hand in the same order
    y = torch.randint(0, 10, (16,))
    for step in range(4):
        s = torch.randn(16, 10, generator=torch.Generator().manual_seed(step))
        expected = (first if step < 2 else then)(s, y)
        assert torch.equal(warm(s, y), expected)
        assert warm.last.num_bits == (round(0.2 * 16 * 9) if step < 2 else 16 * 3)
    with torch.no_grad():  # evaluation calls do not count
        warm(s, y)
    assert warm.calls == 4
    fresh = MC.WarmupLoss(*pair(0), steps=2)
    fresh.load_state_dict(warm.state_dict())
    assert fresh.calls == 4
    with pytest.raises(ValueError, match="steps"):
        MC.WarmupLoss(first, then, steps=-1)


@pytest.mark.skipif(not _mnist_available(), reason="needs MNIST in ../shared/data")
def test_warmup_count_is_checkpointed_so_resume_switches_at_the_same_step(tmp_path, monkeypatch, crash_after_first_checkpoint):
    from uniloss.experiments.checkpoint import load_checkpoint

    monkeypatch.setattr(MC, "PAIRS_PER_CLASS", {"train": 1, "val": 1, "test": 1})
    monkeypatch.setitem(MC.WARMUP_VARIANTS, "uniloss-top20-warm", ("uniloss-frac20", "uniloss-top20", 6))
    args = ["train", "mnist-pairs-resnet20", "--loss", "uniloss-top20-warm", "--batch-size", "32",
            "--threads", "1"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main([*args, "--epochs", "2", "--out", str(whole)]) == 0
    crash_after_first_checkpoint(lambda: main([*args, "--epochs", "2", "--out", str(cut)]))
    steps = -(-len(MC.load_digit_pairs(None, torch.device("cpu")).x_train) // 32)  # 4: the switch (6) is in epoch 2
    assert steps == 4 and load_checkpoint(cut / "checkpoint.pt")["loss"]["_extra_state"]["calls"] == steps
    assert main([*args, "--epochs", "2", "--out", str(cut), "--resume"]) == 0
    assert load_checkpoint(cut / "checkpoint.pt")["loss"]["_extra_state"]["calls"] == 2 * steps
    a, b = (json.loads((d / "final.json").read_text()) for d in (whole, cut))
    assert a["test"] == b["test"] and a["val"] == b["val"]


# --------------------------------------------------------------------------- the table


def _fake_run(folder, accuracy: float, epochs: int = 2) -> None:
    """A finished run as ``uniloss train`` leaves it (final.json, log.jsonl)."""
    folder.mkdir(parents=True)
    log = [{"epoch": e + 1, "val": {"accuracy": accuracy - 0.01 * (epochs - e - 1)}} for e in range(epochs)]
    (folder / "log.jsonl").write_text("".join(json.dumps(h) + "\n" for h in log))
    (folder / "final.json").write_text(json.dumps({"epochs": epochs, "test": {"accuracy": accuracy},
                                                   "mean_epoch_time_s": 60.0}))


def test_multiclass_table_reports_missing_cifar_instead_of_failing(tmp_path, monkeypatch, capsys):
    table = TABLES["multiclass"]
    assert [p.experiment for p in table.parts] == ["fashion-resnet20", "cifar10-resnet20", "cifar100-resnet20"]
    monkeypatch.setattr(get_experiment("fashion-resnet20"), "missing_data", lambda data_dir: None)
    runs = tmp_path / "runs"
    assert table.parts[0].losses == ("ce", "uniloss")  # the two runs the 90-minute CPU target is about
    _fake_run(runs / "multiclass-short" / "fashion-resnet20" / "ce-seed0", 0.93, MC.SHORT_EPOCHS)
    _fake_run(runs / "multiclass-short" / "fashion-resnet20" / "uniloss-seed0", 0.925, MC.SHORT_EPOCHS)
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "table"
    assert main(["reproduce", "multiclass", "--seeds", "0", "--schedule", "short", "--runs-dir", str(runs),
                 "--out", str(out), "--data-dir", str(empty)]) == 0
    report = json.loads((out / "results.json").read_text())
    assert report["table"] == "multiclass" and report["schedule"] == "short" and report["epochs"] == MC.SHORT_EPOCHS
    assert report["command"] == f"uniloss reproduce multiclass --seeds 0 --schedule short --out {out}"
    rows = {(r["dataset"], r["loss"], r["metric"]): r for r in report["rows"]}
    assert rows["Fashion-MNIST", "ce", "accuracy"]["mean"] == 0.93 and rows["Fashion-MNIST", "ce", "accuracy"]["paper"] is None
    for key, paper in [(("CIFAR-10", "ce", "accuracy"), 0.9149), (("CIFAR-10", "uniloss", "accuracy"), 0.9164),
                       (("CIFAR-10", "uniloss-published", "accuracy"), 0.9164),
                       (("CIFAR-100", "ce", "accuracy"), 0.6590), (("CIFAR-100", "uniloss-frac20", "accuracy"), 0.6592)]:
        assert rows[key]["paper"] == paper and rows[key]["mean"] is None
        assert rows[key]["note"] == "data not available here"
    md = (out / "results.md").read_text()
    assert md.count("data not available here |") == 11 and "| Fashion-MNIST | uniloss | test accuracy | — | 0.9250" in md
    assert (out / "curves.png").exists()


def test_curve_legend_names_the_seed_of_a_one_seed_table():
    assert R._curve_label("ce", [1]) == "ce (seed 1)"
    assert R._curve_label("uniloss", [0, 1, 2]) == "uniloss (mean of 3 seeds)"


def test_reproduce_refuses_a_finished_run_of_another_schedule(tmp_path, monkeypatch, capsys):
    """A run left by an older ``short`` schedule (12 epochs, lr / 10 after 8 and 10) is neither reused
    under the new schedule's name nor resumed into a mix of the two: the command stops and says why."""
    import uniloss.experiments.reproduce as R

    monkeypatch.setattr(get_experiment("fashion-resnet20"), "missing_data", lambda data_dir: None)
    monkeypatch.setattr(R, "_run_all", lambda pending, args: pending and pytest.fail(f"nothing may train: {pending}"))
    runs = tmp_path / "runs"
    folder = runs / "fashion-variants-short" / "ce-seed0"
    epochs = 12 if MC.SHORT_EPOCHS != 12 else 20  # an older `short`, e.g. the 12 epochs it once had
    old = get_experiment("fashion-resnet20").recipe_for(f"short:{epochs}", "ce")
    assert old.milestones == ((8, 10) if epochs == 12 else (14, 17))
    _fake_run(folder, 0.93, epochs)
    final = json.loads((folder / "final.json").read_text())
    (folder / "final.json").write_text(json.dumps({**final, "config": {**old.__dict__, "milestones": list(old.milestones)}}))
    args = ["reproduce", "fashion-variants", "--seeds", "0", "--schedule", "short", "--losses", "ce",
            "--runs-dir", str(runs), "--out", str(tmp_path / "table")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "ce-seed0 holds a finished run of other settings" in err
    assert f"epochs {epochs} (now {MC.SHORT_EPOCHS})" in err and f"milestones {list(old.milestones)}" in err
    # the same run under the schedule it was trained with (short squeezed into its epochs) is reused
    squeezed = runs / f"fashion-variants-short-{epochs}" / "ce-seed0"
    squeezed.parent.mkdir(parents=True)
    folder.rename(squeezed)
    args[args.index("short")] = f"short:{epochs}"
    assert main(args) == 0
    assert json.loads((tmp_path / "table" / "results.json").read_text())["rows"][0]["mean"] == 0.93
