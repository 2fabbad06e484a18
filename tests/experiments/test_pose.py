"""Keypoints (paper sec. 4.2): the digits-pose canvases, heatmap targets, the MPII reader and PCKh on
a generated fixture, the pose losses, smoke runs of `uniloss train digits-pose`, the pose table."""

import dataclasses
import doctest
import json
import math
from functools import partial
from pathlib import Path

import pytest
import torch

import uniloss
from uniloss.experiments import mpii, pose
from uniloss.experiments.cli import main
from uniloss.experiments.registry import EXPERIMENTS, TABLES

# --------------------------------------------------------------------------- canvases


def _pool(n=40, seed=0):
    """Synthetic 28x28 'digits': a ring (the 0s) or a bar (the others) at random places."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    zeros, others = [], []
    for _ in range(n):
        cx, cy = 10 + 8 * torch.rand(2, generator=g)
        r = ((xx - cx) ** 2 + (yy - cy) ** 2).sqrt()
        zeros.append(((r > 4) & (r < 7)).to(torch.uint8) * 255)
        bar = torch.zeros(28, 28, dtype=torch.uint8)
        bar[4:24, int(cx) : int(cx) + 3] = 255
        others.append(bar)
    return torch.stack(zeros), torch.stack(others)


def test_landmark_is_the_centre_of_the_rendered_zero_and_lies_in_its_box():
    zeros, others = _pool()
    spec = pose.CanvasSpec(max_digits=1)  # the 0 alone: its box is the canvas's ink box
    x, y, layout = pose.make_canvases(zeros, others, 30, torch.Generator().manual_seed(1), spec)
    ink = x[:, 0] >= 128
    rows, cols = ink.any(2), ink.any(1)
    for i in range(30):
        r = rows[i].nonzero().reshape(-1)
        c = cols[i].nonzero().reshape(-1)
        cx, cy, vis, norm = y[i, 0].tolist()
        assert c[0] <= cx <= c[-1] and r[0] <= cy <= r[-1] and vis == 1
        assert abs(cx - (c[0] + c[-1]) / 2) <= 1.0 and abs(cy - (r[0] + r[-1]) / 2) <= 1.0
        w, h = float(c[-1] - c[0] + 1), float(r[-1] - r[0] + 1)
        assert norm == pytest.approx(0.6 * math.hypot(w, h), rel=0.15)  # MPII's head size of the box
    box = layout["box"]  # the 0's box in edge coordinates holds the joint (also with distractors)
    x3, y3, lay3 = pose.make_canvases(zeros, others, 200, torch.Generator().manual_seed(2))
    b = lay3["box"]
    assert bool(((y3[:, 0, 0] > b[:, 0]) & (y3[:, 0, 0] < b[:, 2]) & (y3[:, 0, 1] > b[:, 1]) & (y3[:, 0, 1] < b[:, 3])).all())
    assert box.shape == (30, 4) and set(lay3["present"].sum(1).tolist()) == {1, 2, 3, 4}
    assert bool(lay3["present"][:, 0].all()) and x3.dtype == torch.uint8 and x3.shape == (200, 1, 64, 64)


def test_distractors_leave_the_zero_visible():
    zeros, others = _pool()
    spec = pose.CanvasSpec()
    _, _, lay = pose.make_canvases(zeros, others, 300, torch.Generator().manual_seed(3), spec)
    k = lay["side"][:, 1:] / 28.0
    ob = pose.ink_boxes(others).float()[lay["other_index"]]
    boxes = torch.stack([lay["left"][:, 1:] + ob[..., 0] * k, lay["top"][:, 1:] + ob[..., 1] * k,
                         lay["left"][:, 1:] + (ob[..., 2] + 1) * k, lay["top"][:, 1:] + (ob[..., 3] + 1) * k], -1)
    cover = pose.cover(boxes, lay["box"][:, None])
    assert bool((cover[lay["present"][:, 1:]] <= spec.max_cover + 1e-6).all())


def test_splits_are_deterministic_prefixes_from_disjoint_images():
    a = pose.digits_pose_split("val", size=40)
    b = pose.digits_pose_split("val", size=40)
    c = pose.digits_pose_split("val", size=10)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(a[0][:10], c[0]) and torch.equal(a[1][:10], c[1])
    _, _, src_val, idx_val = pose.digits_pose_split("val", size=1, return_sources=True)
    _, _, src_tr, idx_tr = pose.digits_pose_split("train", size=1, return_sources=True)
    _, _, src_te, _ = pose.digits_pose_split("test", size=1, return_sources=True)
    assert (src_val, src_tr, src_te) == ("train", "train", "test")
    used_val, used_tr = set(idx_val[idx_val >= 0].tolist()), set(idx_tr[idx_tr >= 0].tolist())
    assert used_val and used_tr and not used_val & used_tr
    assert max(used_val) < 6000 <= min(used_tr)
    _, labels = pose.mnist_images(None, "train")
    assert bool((labels[idx_tr[:, 0]] == 0).all()) and bool((labels[idx_tr[:, 1:][idx_tr[:, 1:] >= 0]] != 0).all())


def test_other_draws_render_other_canvases_from_the_same_images():
    base, keep = pose.digits_pose_split("val", size=20), pose.digits_pose_split("val", size=20, draw=0)
    assert torch.equal(base[0], keep[0]) and torch.equal(base[1], keep[1])  # draw 0: the benchmark's data
    _, _, _, one = pose.digits_pose_split("val", size=20, draw=1, return_sources=True)
    _, _, _, two = pose.digits_pose_split("val", size=20, draw=2, return_sources=True)
    x1, y1 = pose.digits_pose_split("val", size=20, draw=1)
    assert not torch.equal(x1, base[0]) and not torch.equal(y1, base[1]) and not torch.equal(one, two)
    assert int(one[one >= 0].max()) < 6000  # still the validation split's images
    for bad in (-1, 1.0, True):
        with pytest.raises(ValueError, match="draw"):
            pose.digits_pose_split("val", size=2, draw=bad)


# --------------------------------------------------------------------------- targets and metric


def test_gaussian_targets_peak_at_the_joint_with_the_given_sigma():
    kp = torch.tensor([[[20.3, 17.6]], [[3.0, 40.0]]])
    vis = torch.tensor([[1.0], [0.0]])
    for sigma in pose.SIGMAS[:5]:
        h = pose.gaussian_heatmaps(kp, vis, (40, 48), sigma)
        assert h.shape == (2, 1, 40, 48) and float(h[1].abs().max()) == 0.0  # invisible: no target
        assert pose.heatmap_argmax(h)[0, 0].tolist() == [20.0, 18.0]  # the nearest pixel
        assert float(h[0, 0, 18, 20]) == pytest.approx(math.exp(-(0.3**2 + 0.4**2) / (2 * sigma**2)), rel=1e-4)
        if sigma >= 1:  # second moment = sigma^2 (the grid holds the bump)
            w = h[0, 0] / h[0, 0].sum()
            xs = torch.arange(48.0)
            var_x = float((w.sum(0) * (xs - 20.3) ** 2).sum())
            assert var_x == pytest.approx(sigma**2, rel=0.03)
    e = pose.exact_heatmaps(kp, vis, (40, 48))
    assert float(e.sum()) == 1.0 and float(e[0, 0, 18, 20]) == 1.0
    with pytest.raises(ValueError, match="sigma"):
        pose.gaussian_heatmaps(kp, vis, (4, 4), 0.0)


def test_heatmap_coordinates_and_pck_agree_with_the_pck_decomposition():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(12, 2, 2, generator=g) * 60 + 2
    y = pose.pack_keypoints(xy, torch.rand(12, 2, generator=g) < 0.8, torch.rand(12, generator=g) * 10 + 4)
    assert torch.allclose(pose.from_heatmap(pose.to_heatmap(xy, 4), 4), xy)
    heat = torch.randn(12, 2, 16, 16, generator=g)
    heat[:, :, 6:10, 6:10] += 3.0  # some argmaxes land near the joints
    reference = uniloss.PCK(0.5).metric(heat, pose.keypoint_target(y, 4))
    ours = pose.pose_evaluate(heat[:, None], y, stride=4)["pck"]
    assert ours == pytest.approx(float(reference))


def test_losses_are_named_as_the_paper_and_give_gradients():
    assert pose.LOSSES[0] == "uniloss" and len(pose.LOSSES) == 11 and "mse-sigma-0.1" in pose.LOSSES
    assert pose.LOSSES[-3:] == ("mse-exact", "uniloss-chain", "uniloss-pck0.25") and {f"mse-sigma-{s:g}" for s in pose.SIGMAS} <= set(pose.LOSSES)
    y = pose.pack_keypoints(torch.tensor([[[30.0, 20.0]], [[10.0, 50.0]]]), torch.ones(2, 1), torch.tensor([12.0, 16.0]))
    for name in pose.LOSSES:
        fn, module = pose.pose_loss(name, torch.Generator().manual_seed(0), stride=4)
        out = torch.randn(2, 1, 1, 16, 16, requires_grad=True)
        loss = fn(out, y)
        loss.backward()
        assert torch.isfinite(loss) and out.grad.abs().sum() > 0
        assert (module is not None) == name.startswith("uniloss")
        if module is not None:
            assert module.last.path == "runs"  # the chain, the library's default since 0.8, on the runs' least comparisons (0.11)
    with pytest.raises(ValueError, match="unknown loss"):
        pose.pose_loss("mse-sigma-2", torch.Generator(), stride=4)


def test_both_configurations_are_single_stack_hourglasses_with_16x16_heatmaps():
    x = torch.zeros(2, 1, 64, 64, dtype=torch.uint8)
    net = EXPERIMENTS["digits-pose"].model("uniloss")
    assert net.hourglass.heads[0].in_channels == 32 and net(x).shape == (2, 1, 1, 16, 16)
    paper_net = EXPERIMENTS["digits-pose-paper"].model("uniloss").hourglass
    assert paper_net.heads[0].in_channels == 256 and paper_net.stride == 4 and paper_net.num_stacks == 1
    paper = EXPERIMENTS["digits-pose-paper"].recipe
    assert (paper.epochs, paper.optimizer, paper.lr, paper.milestones, paper.gamma) == (50, "rmsprop", 2.5e-4, (30, 40), 0.25)


# --------------------------------------------------------------------------- MPII fixture

PIL = pytest.importorskip("PIL.Image")


def _write_mpii(root: Path, headbox_file: bool = True):
    """Three generated images and valid.json/train.json in the single-person format (1-based),
    a white 3x3 dot at each person's head top."""
    people = [  # image size (w, h), centre, scale, head top, head box
        ((120, 100), (60.0, 50.0), 0.35, (50.0, 30.0), ((40.0, 20.0), (70.0, 60.0))),
        ((90, 140), (45.0, 70.0), 0.50, (40.0, 40.0), ((30.0, 30.0), (54.0, 62.0))),
        ((200, 160), (100.0, 80.0), 0.60, (130.0, 50.0), ((110.0, 40.0), (150.0, 70.0))),
    ]
    (root / "images").mkdir(parents=True)
    (root / "annot").mkdir()
    entries, boxes = [], []
    for i, ((w, h), center, scale, head, box) in enumerate(people):
        img = torch.zeros(h, w, 3, dtype=torch.uint8)
        img[..., 2] = 40
        hx, hy = int(head[0]) - 1, int(head[1]) - 1  # 1-based -> 0-based pixel
        img[hy - 1 : hy + 2, hx - 1 : hx + 2] = 255
        name = f"{i:09d}." + ("png" if i < 2 else "jpg")
        PIL.fromarray(img.numpy()).save(root / "images" / name, quality=95)
        joints = [[-1.0, -1.0]] * 16
        vis = [0] * 16
        joints[mpii.HEAD_TOP], vis[mpii.HEAD_TOP] = list(head), 1
        joints[mpii.UPPER_NECK], vis[mpii.UPPER_NECK] = [head[0], head[1] + 12.0], 1
        entries.append({"image": name, "center": list(center), "scale": scale, "joints": joints, "joints_vis": vis})
        boxes.append([list(box[0]), list(box[1])])
    (root / "annot" / "valid.json").write_text(json.dumps(entries))
    (root / "annot" / "train.json").write_text(json.dumps(entries[:2]))
    if headbox_file:
        (root / "annot" / "headboxes.json").write_text(json.dumps(boxes))
    return people


def test_mpii_reader_is_zero_based_and_takes_head_boxes(tmp_path):
    people = _write_mpii(tmp_path / "mpii")
    ann = mpii.read_annotations(tmp_path / "mpii" / "annot" / "valid.json",
                                headboxes=tmp_path / "mpii" / "annot" / "headboxes.json")
    assert len(ann) == 3 and ann.joints.shape == (3, 16, 2) and ann.visible.sum() == 6
    assert ann.joints[0, mpii.HEAD_TOP].tolist() == [49.0, 29.0] and ann.center[1].tolist() == [44.0, 69.0]
    assert ann.head_sizes()[0] == pytest.approx(0.6 * 50.0)  # box 30 x 40
    no_boxes = mpii.read_annotations(tmp_path / "mpii" / "annot" / "valid.json")
    assert no_boxes.headboxes is None and no_boxes.head_sizes().tolist() == [12.0] * 3  # neck to head top
    with pytest.raises(ValueError, match="head boxes"):
        mpii.read_annotations(tmp_path / "mpii" / "annot" / "valid.json", headboxes=torch.zeros(2, 2, 2))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image": "a.jpg", "center": [1, 1]}]))
    with pytest.raises(ValueError, match="lacks scale, joints, joints_vis"):
        mpii.read_annotations(bad)
    assert len(people) == 3


def test_mpii_crops_follow_the_joints_and_are_cached(tmp_path):
    _write_mpii(tmp_path / "mpii")
    root = tmp_path / "mpii"
    x, y, meta = mpii.load_mpii(root, "valid", size=64, joints=(mpii.HEAD_TOP,), cache_dir=tmp_path / "cache")
    assert x.shape == (3, 3, 64, 64) and x.dtype == torch.uint8 and y.shape == (3, 1, 4)
    for i in range(3):
        bright = (x[i].float().sum(0) == x[i].float().sum(0).max()).nonzero().float().mean(0)  # (row, col)
        assert abs(float(bright[1] - y[i, 0, 0])) <= 1.0 and abs(float(bright[0] - y[i, 0, 1])) <= 1.0
    back = mpii.from_crop(y[..., :2], meta["center"], meta["side"], 64)
    ann = mpii.read_annotations(root / "annot" / "valid.json")
    assert torch.allclose(back[:, 0], ann.joints[:, mpii.HEAD_TOP], atol=1e-4)
    assert torch.allclose(y[:, 0, 3], ann.head_sizes() * 64 / meta["side"])  # head size scaled with the crop
    again, _, _ = mpii.load_mpii(root, "valid", size=64, joints=(mpii.HEAD_TOP,), cache_dir=tmp_path / "cache")
    assert torch.equal(again, x) and len(list((tmp_path / "cache").iterdir())) == 1


def test_pckh_hand_computed():
    # two people, head size 0.6 * 50 = 30 (box 30 x 40): radius 15 px, inclusive
    boxes = torch.tensor([[[0.0, 0.0], [30.0, 40.0]], [[10.0, 10.0], [40.0, 50.0]]])
    hs = mpii.head_sizes(boxes)
    assert hs.tolist() == pytest.approx([30.0, 30.0])
    gt = torch.zeros(2, 16, 2)
    vis = torch.ones(2, 16)
    vis[1, 0] = 0  # person 2's right ankle is not annotated: left out
    pred = gt.clone()
    pred[0, mpii.HEAD_TOP] = torch.tensor([9.0, 12.0])  # distance 15: correct
    pred[1, mpii.HEAD_TOP] = torch.tensor([9.0, 12.1])  # 15.07: wrong
    pred[:, 0] = torch.tensor([100.0, 0.0])  # ankles wrong (person 2's not counted)
    pred[:, 6] = torch.tensor([100.0, 0.0])  # pelvis wrong: not in the benchmark's mean
    r = mpii.mpii_pckh(pred, gt, vis, hs)
    assert float(r["head"]) == 0.5 and float(r["per_joint"][0]) == 0.0 and float(r["per_joint"][6]) == 0.0
    # mean over joints except pelvis/thorax, weighted by visible counts: 27 of them, 1 + 1 wrong
    assert float(r["mean"]) == pytest.approx((27 - 2) / 27)
    assert float(r["all"]) == pytest.approx((31 - 4) / 31)
    # PCKh in crop pixels (a similarity) equals PCKh in image pixels
    center, side = torch.tensor([[10.0, 20.0], [25.0, 30.0]]), torch.tensor([80.0, 120.0])
    y = pose.pack_keypoints(mpii.to_crop(gt, center, side, 64), vis, hs * 64 / side)
    crop_pred = mpii.to_crop(pred, center, side, 64)
    assert float(pose.keypoint_pck(crop_pred, y[..., :2], y[..., 2], y[:, 0, 3])) == pytest.approx(float(r["all"]))


def test_mpii_evaluate_reads_the_last_stack_and_scores_pckh_in_crop_pixels():
    # stride 4: heatmap pixel (x, y) is crop pixel (4x + 1.5, 4y + 1.5); head size 12: radius 6 px
    n, joints, h = 2, 16, 16
    heat = torch.zeros(n, 2, joints, h, h)
    heat[:, 0, :, 0, 0] = 10.0  # the first stack points elsewhere: only the last one is read
    peak = torch.tensor([[3, 5], [8, 2]])  # (x, y) per person, every joint of a person alike
    for i, (x, y) in enumerate(peak.tolist()):
        heat[i, 1, :, y, x] = 1.0
    pred = peak.float() * 4 + 1.5
    gt = pred[:, None, :].repeat(1, joints, 1)
    gt[0, :8, 0] += 6.0  # distance 6: right (inclusive)
    gt[0, 8:, 0] += 6.5  # 6.5: wrong, the head top (9) among them
    gt[1, :, 1] += 2.0  # every joint of person 2 right
    vis = torch.ones(n, joints)
    vis[1, 0] = 0
    y = pose.pack_keypoints(gt, vis, torch.tensor([12.0, 12.0]))
    r = pose.mpii_evaluate(heat, y, stride=4)
    assert r["pckh_head"] == pytest.approx(0.5)  # person 1's head top is wrong, person 2's right
    assert r["pckh_all"] == pytest.approx((8 + 15) / 31)
    # the benchmark's mean leaves out pelvis (6) and thorax (7), both right for person 1
    assert r["pckh"] == pytest.approx((6 + 13) / 27)  # person 2: 13 of these visible
    # one joint (mpii-head): every figure is that joint's PCKh
    one = pose.mpii_evaluate(heat[:, :, :1], y[:, :1], stride=4)
    assert one == {"pckh": 1.0, "pckh_head": 1.0, "pckh_all": 1.0}


def test_plot_examples_draws_the_canvases_and_their_heatmaps(tmp_path):
    pytest.importorskip("matplotlib")
    from uniloss.experiments.pose.plots import plot_examples

    from uniloss.experiments.data import DatasetNotFoundError

    try:
        path = plot_examples(str(tmp_path / "examples.png"), count=3, sigmas=(1.0, 3.0))
    except DatasetNotFoundError as exc:  # MNIST absent: the loaders' own tests cover the message
        pytest.skip(f"needs MNIST: {exc}")
    import matplotlib.image

    image = matplotlib.image.imread(path)
    assert image.shape[0] > image.shape[1] / 2 and image.std() > 0.05  # 4 rows of 3 panels, not blank


def test_mpii_experiment_loads_the_fixture_and_says_when_mpii_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    _write_mpii(tmp_path / "data" / "mpii", headbox_file=False)
    splits = EXPERIMENTS["mpii-head"].load(str(tmp_path / "data"), torch.device("cpu"))
    assert splits.x_train.shape == (2, 3, 256, 256) and splits.y_val.shape == (3, 1, 4)
    assert TABLES["pose-mpii"].experiment == "mpii-head"
    from uniloss.experiments.data import DatasetNotFoundError

    monkeypatch.setenv("UNILOSS_DATA", str(tmp_path / "nothing"))
    with pytest.raises(DatasetNotFoundError, match="MPII is not here"):
        mpii.find_mpii(tmp_path / "empty")


# --------------------------------------------------------------------------- training and the table


@pytest.fixture
def small_digits_pose(monkeypatch):
    """digits-pose with 64 validation and test canvases (the training loop evaluates each epoch)."""
    exp = EXPERIMENTS["digits-pose"]
    small = dataclasses.replace(exp, load=partial(pose.load_digits_pose, train=pose.REDUCED.train, val=64, test=64))
    monkeypatch.setitem(EXPERIMENTS, "digits-pose", small)
    return small


@pytest.mark.parametrize("loss", ["uniloss", "mse-sigma-1"])
def test_train_digits_pose_smoke(loss, tmp_path, small_digits_pose, capsys):
    out = tmp_path / loss
    code = main(["train", "digits-pose", "--loss", loss, "--epochs", "1", "--limit-train", "192",
                 "--threads", "1", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    final = json.loads((out / "final.json").read_text())
    assert 0.0 <= final["test"]["pck"] <= 1.0 and set(final["test"]) == {"pck", "pck_0.25", "mean_distance"}
    log = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert ("train_batch_metric" in log) == (loss == "uniloss")
    config = json.loads((out / "config.json").read_text())
    assert config["optimizer"] == "rmsprop" and config["lr"] == 2.5e-4 and config["milestones"] == [6, 8]


def test_pose_table_reports_the_paper_beside_ours_as_another_dataset(tmp_path, monkeypatch):
    from uniloss.experiments.reproduce import run_table

    table = TABLES["pose"]
    assert table.experiment == "digits-pose" and table.losses == pose.TABLE_LOSSES and table.metrics[0] == "pck"
    runs = tmp_path / "runs" / "pose"
    for i, loss in enumerate(table.losses):
        for seed in (0, 1):
            d = runs / f"{loss}-seed{seed}"
            d.mkdir(parents=True)
            test = {"pck": 0.9 + 0.01 * i, "pck_0.25": 0.5, "mean_distance": 0.2}
            (d / "final.json").write_text(json.dumps({"epochs": 10, "test": test, "mean_epoch_time_s": 40.0}))
            (d / "log.jsonl").write_text(json.dumps({"val": test}) + "\n")
    args = type("Args", (), dict(seeds=[0, 1], runs_dir=str(tmp_path / "runs"), out=str(tmp_path / "out"),
                                 epochs=None, jobs=1, device="cpu", data_dir=None, limit_train=None))()
    assert run_table("pose", args) == 0
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    rows = {(r["loss"], r["metric"]): r for r in report["rows"]}
    assert rows[("mse-sigma-3", "pck")]["paper"] == 0.9574 and rows[("uniloss", "pck")]["paper"] == 0.9577
    assert rows[("mse-exact", "pck")]["paper"] is None and rows[("uniloss", "pck_0.25")]["paper"] is None
    assert "MPII" in rows[("uniloss", "pck")]["dataset"]
    md = (tmp_path / "out" / "results.md").read_text()
    assert "different dataset" in md


@pytest.mark.parametrize("module", [pose, mpii])
def test_docstring_examples(module):
    failures, tried = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert failures == 0 and tried > 0


def test_the_tables_leave_out_uniloss_chain_which_is_the_defaults_loss():
    # The defaults interpolate along the chain (0.8), so "uniloss-chain" is "uniloss" again: the
    # same loss and gradient on the same heatmaps, and the tables train it once.
    for name in ("pose", "pose-paper", "pose-mpii"):
        assert "uniloss-chain" not in TABLES[name].losses and "uniloss" in TABLES[name].losses
        assert set(TABLES[name].losses) == set(pose.LOSSES) - {"uniloss-chain", "uniloss-pck0.25"}
    g = torch.Generator().manual_seed(0)
    heat = torch.randn(4, 2, 1, 16, 16, generator=g)
    y = pose.pack_keypoints(torch.rand(4, 1, 2, generator=g) * 60 + 2, torch.ones(4, 1), torch.full((4,), 12.0))
    values = []
    for loss in ("uniloss", "uniloss-chain"):
        fn, _ = pose.pose_loss(loss, torch.Generator().manual_seed(1), stride=4)
        h = heat.clone().requires_grad_()
        value = fn(h, y)
        value.backward()
        values.append((value.detach(), h.grad))
    torch.testing.assert_close(values[0][0], values[1][0], rtol=0, atol=0)
    torch.testing.assert_close(values[0][1], values[1][1], rtol=0, atol=0)


def test_uniloss_pck025_trains_the_stricter_threshold():
    # The same heatmaps and joints: PCK@0.25's positives are the pixels within a quarter of the
    # normaliser, a subset of PCK@0.5's, and its batch metric is the one the table reports as pck_0.25.
    y = pose.pack_keypoints(torch.tensor([[[30.0, 20.0]], [[10.0, 50.0]]]), torch.ones(2, 1), torch.tensor([24.0, 32.0]))
    heat = torch.randn(2, 1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    heat[0, 0, 0, 5, 7] = 10.0  # the first sample's peak at its joint (30, 20): right at both thresholds
    heat[1, 0, 0, 12, 5] = 10.0  # the second's about two heatmap pixels off: right at 0.5 only
    metrics = {}
    for name in ("uniloss", "uniloss-pck0.25"):
        fn, module = pose.pose_loss(name, torch.Generator().manual_seed(0), stride=4)
        fn(heat.clone().requires_grad_(), y).backward()
        assert module.decomposition.threshold == (0.25 if name.endswith("0.25") else 0.5)
        metrics[name] = float(module.last.metric)
    expected = pose.pose_evaluate(heat, y, stride=4)
    assert (expected["pck"], expected["pck_0.25"]) == (1.0, 0.5)
    assert metrics == {"uniloss": pytest.approx(expected["pck"]), "uniloss-pck0.25": pytest.approx(expected["pck_0.25"])}


def test_reproduce_trains_an_experiment_loss_that_is_not_a_row_when_asked(tmp_path):
    # "uniloss-chain" and "uniloss-pck0.25" are losses of digits-pose but not rows of the table:
    # --losses adds them after the rows asked for; a loss the experiment does not know still fails.
    from uniloss.experiments.reproduce import run_table

    runs = tmp_path / "runs" / "pose"
    for i, loss in enumerate(("uniloss", "uniloss-pck0.25", "mse-sigma-1")):
        d = runs / f"{loss}-seed0"
        d.mkdir(parents=True)
        test = {"pck": 0.9 + 0.01 * i, "pck_0.25": 0.8 + 0.01 * i, "mean_distance": 0.2}
        (d / "final.json").write_text(json.dumps({"epochs": 10, "test": test, "mean_epoch_time_s": 4.0}))
        (d / "log.jsonl").write_text(json.dumps({"val": test}) + "\n")

    def args(losses):
        return type("Args", (), dict(seeds=[0], runs_dir=str(tmp_path / "runs"), out=str(tmp_path / "out"),
                                     epochs=None, jobs=1, device="cpu", data_dir=None, limit_train=None,
                                     losses=losses))()

    assert run_table("pose", args(["uniloss-pck0.25", "mse-sigma-1", "uniloss"])) == 0
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    order = list(dict.fromkeys(r["loss"] for r in report["rows"]))
    assert order == ["uniloss", "mse-sigma-1", "uniloss-pck0.25"]  # the table's rows first, then the probe
    rows = {(r["loss"], r["metric"]): r for r in report["rows"]}
    assert rows[("uniloss-pck0.25", "pck_0.25")]["mean"] == pytest.approx(0.81)
    assert rows[("uniloss-pck0.25", "pck")]["paper"] is None
    with pytest.raises(ValueError, match="has no loss 'mse-sigma-2'"):
        run_table("pose", args(["uniloss", "mse-sigma-2"]))
