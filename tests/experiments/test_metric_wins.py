"""The metric-wins benchmark: its baselines against brute force, its verdicts, and one tiny run."""

import functools
import itertools
import math
import json
import statistics
import types

import pytest
import torch

import uniloss
from uniloss import zoo
from uniloss.decoders import RankingTarget
from uniloss.experiments import metric_wins as M


def _benchmark(name):
    """A script of benchmarks/ loaded as a module (they are not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
from uniloss.experiments.cli import main as cli
from uniloss.experiments.data import DatasetNotFoundError


def test_pairwise_logistic_is_the_mean_over_relevant_irrelevant_pairs_of_each_group():
    g = torch.Generator().manual_seed(0)
    s, y, q = torch.randn(12, generator=g), torch.randint(0, 2, (12,), generator=g), torch.arange(12) // 5
    terms = [torch.nn.functional.softplus(s[j] - s[i]) for i, j in itertools.product(range(12), range(12))
             if y[i] == 1 and y[j] == 0 and q[i] == q[j]]
    torch.testing.assert_close(M.pairwise_logistic(s, y, q), torch.stack(terms).mean())
    loss = M.pairwise_logistic(s.requires_grad_(), torch.ones(12, dtype=torch.long))
    assert float(loss.detach()) == 0.0 and loss.requires_grad


def test_lovasz_softmax_is_one_minus_iou_at_one_hot_predictions():
    g = torch.Generator().manual_seed(1)
    target = torch.randint(0, 3, (2, 5, 4), generator=g)
    pred = torch.randint(0, 3, (2, 5, 4), generator=g)
    logits = torch.nn.functional.one_hot(pred, 3).movedim(-1, 1).double() * 1e3  # softmax is one-hot
    ious = [float(((pred == c) & (target == c)).sum()) / float(((pred == c) | (target == c)).sum()) for c in range(3)]
    assert float(M.lovasz_softmax(logits, target)) == pytest.approx(1 - sum(ious) / 3, abs=1e-9)


def test_f1_and_tuned_threshold_match_brute_force():
    from sklearn.metrics import f1_score

    g = torch.Generator().manual_seed(2)
    s, y = torch.randn(200, generator=g), (torch.rand(200, generator=g) < 0.2).long()
    assert M.f1_at(s, y, 0.3) == pytest.approx(f1_score(y.numpy(), (s > 0.3).numpy()))
    t = M.tuned_threshold(s, y)
    best = max(f1_score(y.numpy(), (s > u).numpy()) for u in s.tolist() + [float(s.min()) - 1])
    assert M.f1_at(s, y, t) == pytest.approx(best)


def test_f_beta_tuned_threshold_matches_brute_force():
    from sklearn.metrics import fbeta_score
    from uniloss import zoo

    g = torch.Generator().manual_seed(3)
    s, y = torch.randn(300, generator=g), (torch.rand(300, generator=g) < 0.1).long()
    cuts = s.tolist() + [float(s.min()) - 1]
    for beta in (1.0, 2.0, 0.5):
        t = M.tuned_threshold(s, y, beta)
        best = max(fbeta_score(y.numpy(), (s > u).numpy(), beta=beta) for u in cuts)
        assert float(zoo.f_beta(beta, threshold=0.0).metric(s - t, y)) == pytest.approx(best)
    assert M.tuned_threshold(s, y) == M.tuned_threshold(s, y, 1.0)  # F1's threshold as before
    assert M.tuned_threshold(s, y, 2.0) < M.tuned_threshold(s, y, 0.5)  # recall's weight lowers the cut


def test_verdicts_compare_with_the_usual_loss_and_the_best_other_row():
    rows = [dict(dataset="t", loss="usual", kind="usual", mean=0.70, std=0.01),
            dict(dataset="t", loss="base", kind="baseline", mean=0.80, std=0.01),
            dict(dataset="t", loss="uni", kind="uniloss", mean=0.75, std=0.02),
            dict(dataset="t", loss="v", kind="variant", mean=0.795, std=0.001)]
    v = M.verdicts(rows)["t"]
    assert v["uni"]["usual"]["verdict"] == "win" and v["uni"]["best"]["verdict"] == "loss"
    assert v["uni"]["best"]["ref"] == "base" and v["uni"]["best"]["diff"] == pytest.approx(-0.05)
    assert v["v"]["best"]["verdict"] == "tie"


def test_the_seed_by_seed_difference_pairs_the_seeds_by_their_ids():
    # seeds far apart (a data set per seed) hide a difference that every seed shows: the rows' std
    # say tie, the seed-by-seed differences say ahead on each; seeds listed in another order pair by id
    usual = dict(dataset="t", loss="usual", kind="usual", seeds=[0.60, 0.90, 0.70], seed_ids=[0, 1, 2])
    uni = dict(dataset="t", loss="uni", kind="uniloss", seeds=[0.91, 0.71, 0.62], seed_ids=[1, 2, 0])
    rows = M.summarise([dict(task="imb-ap-draws", loss=r["loss"], kind=r["kind"], seed=i, final=v)
                        for r in (usual, uni) for i, v in zip(r["seed_ids"], r["seeds"])])
    e = M.verdicts(rows)["imb-ap-draws"]["uni"]["usual"]
    assert e["verdict"] == "tie"
    assert e["paired"]["mean"] == pytest.approx((0.02 + 0.01 + 0.01) / 3)
    assert e["paired"]["ahead"] == 3 and e["paired"]["seeds"] == 3
    assert e["paired"]["std"] == pytest.approx(statistics.stdev([0.02, 0.01, 0.01]))
    other = dict(rows[0], seed_ids=[3, 4, 5])  # other seeds: nothing to pair
    assert "paired" not in M.verdicts([other, rows[1]])["imb-ap-draws"]["uni"]["usual"]


def test_learning_rate_grid_compares_at_one_scale_and_each_loss_at_its_best():
    rows = [dict(dataset="t", loss="usual", kind="usual", mean=0.70, std=0.01, lr_scale=1.0),
            dict(dataset="t", loss="usual", kind="usual", mean=0.78, std=0.01, lr_scale=2.0),
            dict(dataset="t", loss="uni", kind="uniloss", mean=0.75, std=0.01, lr_scale=1.0),
            dict(dataset="t", loss="uni", kind="uniloss", mean=float("nan"), std=float("nan"), lr_scale=2.0),
            dict(dataset="t", loss="uni", kind="uniloss", mean=0.74, std=0.01, lr_scale=0.5)]
    v = M.verdicts(rows)["t"]
    assert v["uni"]["usual"]["verdict"] == "win"  # against the usual loss at lr x1 only
    assert v["uni @ lr x0.5"] == {}  # no usual row at x0.5
    assert v["uni @ lr x2"]["usual"]["verdict"] == "diverged"
    best = M.best_of_grid(rows)
    assert [(r["loss"], r["lr_scale"]) for r in best] == [("usual", 2.0), ("uni", 1.0)]
    vb = M.verdicts(best, same_lr=False)["t"]
    assert vb["uni"]["usual"]["ref"] == "usual" and vb["uni"]["usual"]["diff"] == pytest.approx(-0.03)
    assert vb["uni"]["usual"]["verdict"] == "loss"
    jobs = M.jobs_for(["digits-f1"], [0, 1], {}, ("usual",), lr_scales=(0.5, 2.0))
    assert sorted((j.lr_scale, j.seed) for j in jobs) == [(0.5, 0), (0.5, 1), (2.0, 0), (2.0, 1)]


def test_the_learning_rate_scale_reaches_the_recipes_optimiser():
    model = torch.nn.Linear(2, 1)
    try:
        M._LR_SCALE = 3.0
        assert M.sgd(model, 0.1).param_groups[0]["lr"] == pytest.approx(0.3)
    finally:
        M._LR_SCALE = 1.0


def test_optimizer_adam_reaches_every_run_and_is_recorded(monkeypatch):
    model = torch.nn.Linear(2, 1)
    monkeypatch.setattr(M, "_LR_SCALE", 2.0)
    monkeypatch.setattr(M, "_OPTIMIZER", "adam")
    opt = M.sgd(model, 0.1, momentum=0.5, weight_decay=1e-4)
    assert isinstance(opt, torch.optim.Adam)
    assert opt.param_groups[0]["lr"] == pytest.approx(2 * M.ADAM_LR) and opt.param_groups[0]["weight_decay"] == 1e-4
    jobs = M.jobs_for(["digits-f1"], [0], {}, ("usual",), optimizer="adam")
    assert [j.optimizer for j in jobs] == ["adam"]
    # the job sets the optimiser in the process that runs it: the digits run trains with Adam
    made, original = [], torch.optim.Adam.__init__

    def spy(self, *args, **kwargs):
        made.append(kwargs.get("lr"))
        original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "__init__", spy)
    monkeypatch.setattr(M, "_OPTIMIZER", "sgd")
    row = M._run_job(jobs[0], quick=True)
    assert made == [pytest.approx(M.ADAM_LR)] and row["optimizer"] == "adam" and 0.5 < row["final"] <= 1.0
    assert "optimizer" not in M._run_job(M.Job("digits-f1", "cross-entropy", "usual", "ce", 0), quick=True)


def test_imbalanced_mnist_keeps_the_stated_share_of_each_digit():
    pytest.importorskip("numpy")
    try:
        xtr, ytr, xte, yte = M.imbalanced_mnist()
    except DatasetNotFoundError as exc:  # data absent: the loader's own tests cover the message
        pytest.skip(str(exc))
    counts = torch.bincount(ytr, minlength=10)
    assert counts[0] == 5923 and counts[9] == round(5949 * 0.6**9) and xtr.shape == (len(ytr), 784)
    assert len(yte) == 10_000


def test_bad_variant_fails_before_any_run():
    with pytest.raises(ValueError, match="JSON"):
        M.parse_variant("a={nope")
    with pytest.raises(ValueError, match="temperature"):
        M.parse_variant('a={"temperature": -1}')
    with pytest.raises(TypeError):
        M.parse_variant('a={"no_such_keyword": 1}')


def test_cli_runs_one_task_and_writes_the_schema(tmp_path, capfd):
    out = tmp_path / "mw"
    assert cli(["reproduce", "metric-wins", "--tasks", "digits-f1", "--seeds", "0", "1", "--jobs", "1",
                "--variant", 't2={"temperature": 2}', "--out", str(out), "--progress"]) == 0
    err = capfd.readouterr().err
    for seed in (0, 1):  # --progress: every epoch of every run
        assert sum(f"digits-f1 cross-entropy seed {seed}: epoch " in line for line in err.splitlines()) == 30
    assert "digits-f1 UniLoss (defaults) seed 0: epoch 30 " in err
    report = json.loads((out / "results.json").read_text())
    assert {r["kind"] for r in report["rows"]} == {"usual", "uniloss", "variant"}
    for row in report["rows"]:
        assert {"dataset", "loss", "metric", "mean", "std", "seeds", "paper", "kind"} <= set(row)
        assert len(row["seeds"]) == 2 and 0.5 < row["mean"] <= 1.0
    assert "digits-f1" in (out / "results.md").read_text() and (out / "curves.png").stat().st_size > 0
    assert cli(["reproduce", "metric-wins", "--variant", "oops"]) == 2


def test_a_diverged_run_is_recorded_and_its_row_is_nan():
    runs = [dict(task="imb-ap", loss="u", kind="uniloss", seed=s, final=v) for s, v in ((0, 0.7), (1, float("nan")))]
    runs += [dict(task="imb-ap", loss="b", kind="usual", seed=s, final=0.7) for s in (0, 1)]
    rows = M.summarise(runs)
    assert rows[0]["diverged"] == 1 and rows[0]["mean"] != rows[0]["mean"]
    assert M.verdicts(rows)["imb-ap"]["u"]["usual"]["verdict"] == "diverged"


def test_merging_reports_pools_their_runs(tmp_path):
    import json

    merge = _benchmark("merge_metric_wins")
    base = dict(table="t", title="T", machine="m", date="d", seeds=[0, 1], jobs=1, quick=True)

    def part(name, loss, kind, lr, finals):
        runs = [dict(task="digits-f1", loss=loss, kind=kind, seed=s, final=f, curve=[f], seconds=1.0, options={},
                     lr_scale=lr) for s, f in enumerate(finals)]
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(dict(
            base, runs=runs, command=f"cmd {name}", total_seconds=2.0, variants={}, lr_scales=[lr])))
        return str(tmp_path / name)

    report = merge.merge([part("a", "cross-entropy", "usual", 1.0, [0.9, 0.92]),
                          part("b", "cross-entropy", "usual", 2.0, [0.95, 0.97]),
                          part("c", "UniLoss (defaults)", "uniloss", 2.0, [0.96, 0.96])])
    assert report["command"] == "cmd a ; cmd b ; cmd c" and report["lr_scales"] == [1.0, 2.0]
    best = {r["loss"]: (r["lr_scale"], r["mean"]) for r in report["best_lr_rows"]}
    assert best["cross-entropy"] == (2.0, pytest.approx(0.96)) and best["UniLoss (defaults)"][0] == 2.0
    assert report["verdicts"]["digits-f1"]["UniLoss (defaults) @ lr x2"]["usual"]["verdict"] == "tie"
    out = tmp_path / "merged"
    merge.main([str(out), str(tmp_path / "a"), str(tmp_path / "c")])  # the written report names the merge too
    written = json.loads((out / "results.json").read_text())["command"]
    assert written == f"cmd a ; cmd c ; python benchmarks/merge_metric_wins.py {out} {tmp_path / 'a'} {tmp_path / 'c'}"
    assert written in (out / "results.md").read_text()


def test_merging_reports_of_other_seeds_lists_them_all(tmp_path):
    """(The Fashion-MNIST ResNet-20 row: seed 0 and seed 1 were run in separate sessions.)"""
    import json

    merge = _benchmark("merge_metric_wins")
    parts = []
    for seed, final in ((0, 0.939), (1, 0.941)):
        run = dict(task="fashion-acc", loss="cross-entropy", kind="usual", seed=seed, final=final, curve=[final],
                   seconds=1.0, options={}, lr_scale=1.0)
        (tmp_path / str(seed)).mkdir()
        (tmp_path / str(seed) / "results.json").write_text(json.dumps(dict(
            table="t", title="T", machine="m", date="d", seeds=[seed], jobs=1, quick=False, runs=[run],
            command=f"cmd {seed}", total_seconds=1.0, variants={}, lr_scales=[1.0])))
        parts.append(str(tmp_path / str(seed)))
    report = merge.merge(parts)
    assert report["seeds"] == [0, 1]
    (row,) = report["rows"]
    assert row["seeds"] == [pytest.approx(0.939), pytest.approx(0.941)] and row["mean"] == pytest.approx(0.94)


def test_noisy_labels_redraw_the_stated_share_uniformly():
    y = torch.arange(20000) % 10
    assert torch.equal(M.noisy_labels(y, 0.0, 10, torch.Generator().manual_seed(0)), y)
    noisy = M.noisy_labels(y, 0.4, 10, torch.Generator().manual_seed(0))
    changed = (noisy != y).float().mean().item()
    assert abs(changed - 0.4 * 0.9) < 0.015  # a redrawn label keeps its class 1 time in 10
    # the redrawn labels are uniform over the classes, whatever the true one
    counts = torch.bincount(noisy[noisy != y], minlength=10).float()
    assert counts.min() / counts.max() > 0.85
    # the rates share their draws: every label changed at 20% is changed the same way at 40%
    low = M.noisy_labels(y, 0.2, 10, torch.Generator().manual_seed(0))
    assert torch.equal(noisy[low != y], low[low != y])


def test_probe_tasks_run_only_when_named():
    suite = ["mnist0-ap", "fashion-acc", "pairs-acc", "digits-f1", "imb-ap", "imb-f1", "bal-acc", "ndcg5", "seg-miou"]
    assert M.SUITE == suite
    probes = [name for name in M.TASKS if name not in suite]
    assert probes and all(not M.TASKS[name].suite for name in probes)
    jobs = M.jobs_for(M.SUITE, [0], {})
    assert {j.task for j in jobs} == set(suite)


def test_a_probe_task_trains_and_scores_its_own_metric():
    # F2 at logit 0 on the imbalanced data without label noise: the run scores what zoo.f_beta(2) gives
    from uniloss import zoo

    row = M._run_job(M.Job("f2-clean", "UniLoss (defaults)", "uniloss", "uniloss", 0), quick=True)
    assert len(row["curve"]) == 20 and 0.3 < row["final"] <= 1.0
    torch.manual_seed(0)
    s, y = torch.randn(50), (torch.rand(50) < 0.3).long()
    tp, fp, fn = int(((s > 0) & (y == 1)).sum()), int(((s > 0) & (y == 0)).sum()), int(((s <= 0) & (y == 1)).sum())
    assert float(zoo.f_beta(2.0, threshold=0.0).metric(s, y)) == pytest.approx(5 * tp / (5 * tp + 4 * fn + fp))


def test_a_tuned_probe_scores_each_model_at_its_validation_threshold(monkeypatch):
    # f2-tuned trains as f2-clean does (same curve up to the threshold) and scores F2 at the cut
    # that tuned_threshold picks on the validation split, not at logit 0
    picked = []
    original = M.tuned_threshold

    def spy(scores, target, beta=1.0):
        picked.append(beta)
        return original(scores, target, beta)

    monkeypatch.setattr(M, "tuned_threshold", spy)
    tuned = M._run_job(M.Job("f2-tuned", "binary cross-entropy", "usual", "bce", 0), quick=True)
    assert picked and set(picked) == {2.0} and len(picked) == len(tuned["curve"]) == 20
    plain = M._run_job(M.Job("f2-clean", "binary cross-entropy", "usual", "bce", 0), quick=True)
    assert tuned["curve"] != plain["curve"] and tuned["final"] >= plain["final"] - 0.05


def test_the_validation_ap_of_each_epoch_leaves_the_run_unchanged():
    # benchmarks/early_stopping_probe.py: one validation AP per epoch, the split's AP of the model
    # as that epoch left it (scikit-learn's), and the test curve the same with or without it
    from sklearn.metrics import average_precision_score

    models = []  # the run's model (trained in place: after the run, as its last epoch left it)
    original = M._binary_logits

    def spy(model, x):
        models.append(model)
        return original(model, x)

    validation: list = []
    plain = M.run_imbalanced("ap", "bce", 0, True, {})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(M, "_binary_logits", spy)
        seen = M.run_imbalanced("ap", "bce", 0, True, {}, validation=validation)
    assert seen == plain and len(validation) == len(plain) == 20
    _, _, xva, yva, _, _ = M.imbalanced_binary()
    model = models[-1]
    with torch.no_grad():
        expected = average_precision_score(yva.numpy(), model(xva).reshape(-1).numpy())
    assert validation[-1] == pytest.approx(expected, abs=1e-6)


def _fake_pairs():
    """A stand-in for the digit pairs' data set: four training and two test images of 28 x 56."""
    return types.SimpleNamespace(x_train=torch.zeros(4, 1568), y_train=torch.arange(4), x_test=torch.zeros(2, 1568),
                                 y_test=torch.arange(2))


def _fake_imbalanced_mnist(draw=None, source="mnist"):
    """A stand-in for :func:`imbalanced_mnist`: four training and two test images of 784 pixels."""
    return torch.zeros(4, 784), torch.arange(4), torch.zeros(2, 784), torch.arange(2)


def test_the_binary_digits_and_bal_acc_models_are_the_suites_unless_hidden_widths_are_given(monkeypatch):
    # benchmarks/capacity_probe.py varies the model; the suite keeps 20-64-64-1
    built = []
    monkeypatch.setattr(M, "fit", lambda model, *args, **kwargs: built.append(model) or [0.5])
    for hidden in ((64, 64), (), (8,)):
        kwargs = {} if hidden == (64, 64) else {"hidden": hidden}
        assert M.run_imbalanced("ap", "bce", 0, True, {}, **kwargs) == [0.5]
    widths = [[(m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)]
              for model in built]
    assert widths == [[(20, 64), (64, 64), (64, 1)], [(20, 1)], [(20, 8), (8, 1)]]
    # the digits-f1 and bal-acc tasks the same way (the suite's: one hidden layer of 128)
    builds = []
    monkeypatch.setattr(M, "_run_classes", lambda xtr, ytr, xte, yte, build, *args, **kwargs: builds.append(build())
                        or [0.5])
    monkeypatch.setattr(M, "imbalanced_mnist", _fake_imbalanced_mnist)
    M.run_digits_f1("ce", 0, True, {})
    M.run_digits_f1("ce", 0, True, {}, hidden=())
    M.run_balanced("ce", 0, True, {})
    M.run_imbalanced_mnist("balanced_accuracy", "ce", 0, True, {}, hidden=(8,))
    from uniloss.experiments import multiclass  # and the pairs (the suite's: one hidden layer of 512)

    monkeypatch.setattr(multiclass, "load_digit_pairs", lambda data_dir, device: _fake_pairs())
    M.run_pairs("ce", 0, True, {})
    M.run_pairs("ce", 0, True, {}, hidden=(64,))
    widths = [[(m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)]
              for model in builds]
    assert widths == [[(64, 128), (128, 10)], [(64, 10)], [(784, 128), (128, 10)], [(784, 8), (8, 10)],
                      [(1568, 512), (512, 100)], [(1568, 64), (64, 100)]]


def test_the_batch_size_is_the_suites_128_unless_given(monkeypatch):
    # benchmarks/capacity_probe.py --batches varies it; the recipe's learning rate stays
    sizes = []
    monkeypatch.setattr(M, "shuffled", lambda n, batch, gen: sizes.append(batch) or [])
    monkeypatch.setattr(M, "fit", lambda *args, **kwargs: [0.5])
    M.run_imbalanced("f1", "bce", 0, True, {})
    M.run_imbalanced("f1", "bce", 0, True, {}, batch=16)
    assert sizes == [128, 16]
    given = []
    monkeypatch.setattr(M, "_run_classes", lambda *args, batch=128, **kwargs: given.append(batch) or [0.5])
    monkeypatch.setattr(M, "imbalanced_mnist", _fake_imbalanced_mnist)
    M.run_digits_f1("ce", 0, True, {})
    M.run_digits_f1("ce", 0, True, {}, batch=32)
    M.run_balanced("ce", 0, True, {})
    M.run_imbalanced_mnist("balanced_accuracy", "ce", 0, True, {}, batch=512)
    from uniloss.experiments import multiclass

    monkeypatch.setattr(multiclass, "load_digit_pairs", lambda data_dir, device: _fake_pairs())
    M.run_pairs("ce", 0, True, {})
    M.run_pairs("ce", 0, True, {}, batch=64)
    assert given == [128, 32, 128, 512, 128, 64]


def _spy_first_argument(monkeypatch, name):
    """Replace ``M.<name>`` by a spy that records its first argument (the draw; 0 when not given)
    and calls the original: ``(seen, original)``."""
    seen, original = [], getattr(M, name)

    def spy(first=0, *args, **kwargs):
        seen.append(first)
        return original(first, *args, **kwargs)

    monkeypatch.setattr(M, name, spy)
    return seen, original


def test_the_draws_probes_draw_the_data_of_each_seed_and_the_suite_keeps_draw_0(monkeypatch):
    # imb-ap-draws / imb-f1-draws: make_classification's random_state is the seed; imb-ap's is 0
    # whatever the seed (its seeds vary the network and the batches)
    drawn, original = _spy_first_argument(monkeypatch, "imbalanced_binary")
    for task in ("imb-ap-draws", "imb-f1-draws", "imb-ap"):
        M._run_job(M.Job(task, "binary cross-entropy", "usual", "bce", 3), quick=True)
    assert drawn == [3, 3, 0]
    first, other = original(0), original(3)
    assert first[0].shape == other[0].shape and not torch.equal(first[0], other[0])
    assert 0.03 < float(other[1].float().mean()) < 0.08  # ~5% positives, plus the random labels
    splits, _ = _spy_first_argument(monkeypatch, "digits_split")
    monkeypatch.setattr(M, "_run_classes", lambda *args, **kwargs: [0.5])  # (the split is what is asked)
    for task in ("digits-f1-draws", "digits-f1"):
        M._run_job(M.Job(task, "cross-entropy", "usual", "ce", 4), quick=True)
    assert splits == [4, 0]
    queries = []
    original_queries = M.retrieval_queries
    monkeypatch.setattr(M, "retrieval_queries", lambda y, n, size, generator: queries.append(generator.initial_seed())
                        or original_queries(y, n, size, generator))
    monkeypatch.setattr(M, "train_epochs", lambda *args, **kwargs: [0.5], raising=False)
    splits.clear()
    for task in ("ndcg5-draws", "ndcg5"):
        M._run_job(M.Job(task, "pairwise logistic", "baseline", "pairwise", 2), quick=True)
    assert splits == [2, 0] and queries[0] == 1236 and 1234 in queries
    subsets = []
    monkeypatch.setattr(M, "imbalanced_mnist", lambda ratio=0.6, data_dir=None, draw=None, source="mnist":
                        subsets.append(draw) or
                        (torch.zeros(20, 784), torch.arange(20) % 10, torch.zeros(10, 784), torch.arange(10)))
    for task in ("bal-acc-draws", "bal-acc"):
        M._run_job(M.Job(task, "cross-entropy", "usual", "ce", 5), quick=True)
    assert subsets == [5, None]
    masks = []
    kinds = []
    monkeypatch.setattr(M, "noisy_masks", lambda split, count, seed, data_dir=None, source="mnist", digits=False,
                        noise=0.8: masks.append((split, seed, source)) or kinds.append((digits, noise)) or
                        (torch.zeros(4, 1, 28, 28), torch.zeros(4, 28, 28, dtype=torch.long)))
    monkeypatch.setattr(M, "fit", lambda *args, **kwargs: [0.5])
    for task in ("seg-miou-draws", "seg-miou", "seg-miou-fashion", "seg-miou-digits"):
        M._run_job(M.Job(task, "per-pixel cross-entropy", "usual", "ce", 3), quick=True)
    assert masks == [("train", 6, "mnist"), ("test", 7, "mnist"), ("train", 0, "mnist"), ("test", 1, "mnist"),
                     ("train", 6, "fashion"), ("test", 7, "fashion"),  # the suite's: seeds 0 and 1
                     ("train", 6, "mnist"), ("test", 7, "mnist")]
    assert kinds == [(False, 0.8)] * 6 + [(True, M.DIGITS_NOISE)] * 2  # the binary tasks' data unchanged


def test_imbalanced_mnist_draws_keep_each_digits_count_and_change_its_images():
    first, drawn, again = M.imbalanced_mnist(), M.imbalanced_mnist(draw=3), M.imbalanced_mnist(draw=3)
    assert torch.equal(torch.bincount(first[1]), torch.bincount(drawn[1]))  # the same share of each digit
    assert torch.equal(drawn[0], again[0]) and not torch.equal(first[0], drawn[0])
    assert torch.equal(first[2], drawn[2])  # the test split whole


def test_pairwise_logistic_on_graded_relevance_takes_every_pair_of_different_grades():
    g = torch.Generator().manual_seed(3)
    s, r, q = torch.randn(15, generator=g), torch.randint(0, 4, (15,), generator=g), torch.arange(15) // 6
    terms = [torch.nn.functional.softplus(s[j] - s[i]) for i, j in itertools.product(range(15), range(15))
             if r[i] > r[j] and q[i] == q[j]]
    torch.testing.assert_close(M.pairwise_logistic(s, r, q), torch.stack(terms).mean())


def test_listnet_is_the_cross_entropy_of_the_softmaxes_per_query():
    g = torch.Generator().manual_seed(4)
    s, r = torch.randn(3 * 7, generator=g, dtype=torch.float64), torch.randint(0, 5, (3 * 7,), generator=g)
    per_query = []
    for i in range(3):
        p = [math.exp(float(v)) for v in r[7 * i:7 * i + 7]]
        z = [math.exp(float(v)) for v in s[7 * i:7 * i + 7]]
        per_query.append(-sum(pk / sum(p) * math.log(zk / sum(z)) for pk, zk in zip(p, z)))
    assert float(M.listnet(s, r, 7)) == pytest.approx(sum(per_query) / 3, rel=1e-12)


def test_lambdarank_weighs_each_pair_by_the_ndcg_change_of_swapping_it():
    # brute force: scikit-learn's NDCG (linear gains, as the zoo's) before and after swapping two scores
    from sklearn.metrics import ndcg_score

    g = torch.Generator().manual_seed(5)
    size = 6
    s, r = torch.randn(2 * size, generator=g, dtype=torch.float64), torch.randint(0, 4, (2 * size,), generator=g)
    weighted, total = 0.0, 0.0
    for q in range(2):
        sq, rq = s[q * size:(q + 1) * size], r[q * size:(q + 1) * size]
        base = ndcg_score([rq.tolist()], [sq.tolist()])
        for i, j in itertools.product(range(size), range(size)):
            if rq[i] > rq[j]:
                swapped = sq.clone()
                swapped[i], swapped[j] = sq[j], sq[i]
                w = abs(ndcg_score([rq.tolist()], [swapped.tolist()]) - base)
                weighted += w * math.log1p(math.exp(float(sq[j] - sq[i])))
                total += w
    assert float(M.lambdarank(s, r, size)) == pytest.approx(weighted / total, rel=1e-9)
    flat = M.lambdarank(torch.zeros(size, requires_grad=True), torch.zeros(size, dtype=torch.long), size)
    assert float(flat.detach()) == 0.0 and flat.requires_grad  # no pair of different grades


def test_graded_queries_keep_their_shares_and_draw_apart():
    from sklearn.metrics import ndcg_score

    x, r, q = M.graded_queries(0, 200, split=1)
    assert x.shape == (6000, 20) and r.min() >= 0 and r.max() <= 4 and torch.equal(q, torch.arange(6000) // 30)
    shares = torch.bincount(r, minlength=5).double() / len(r)
    assert torch.allclose(shares, torch.tensor(M.GRADE_SHARES, dtype=torch.float64), atol=0.03)
    per_query = (r.reshape(200, 30) > 0).sum(1)
    assert per_query.min() < 8 and per_query.max() > 22  # queries differ in how many relevant items they hold
    again, other_split, other_draw = M.graded_queries(0, 200, split=1), M.graded_queries(0, 200), M.graded_queries(1, 200, split=1)
    assert torch.equal(again[0], x) and torch.equal(again[1], r)
    assert not torch.equal(other_split[0], x) and not torch.equal(other_draw[1], r)
    # the task's score is scikit-learn's NDCG@10, averaged over the queries with a relevant item
    from uniloss import zoo
    from uniloss.decoders import RankingTarget

    s = torch.randn(6000, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    expected = [ndcg_score([r[30 * i:30 * i + 30].tolist()], [s[30 * i:30 * i + 30].tolist()], k=10)
                for i in range(200) if r[30 * i:30 * i + 30].any()]
    got = float(zoo.ndcg_at_k(10, num_grades=5).metric(s, RankingTarget(r, q)))
    assert got == pytest.approx(sum(expected) / len(expected), rel=1e-6)


def test_graded_retrieval_queries_grade_the_digit_its_neighbours_and_the_rest():
    neighbours = M.digit_neighbours()
    assert neighbours.shape == (10, 2) and not (neighbours == torch.arange(10)[:, None]).any()
    assert int(neighbours[3, 0]) == 9  # 3 and 9 share most of their strokes
    _, _, _, y = M.digits_split(0)
    items, q, rel, query = M.graded_retrieval_queries(y, 50, 20, torch.Generator().manual_seed(2))
    digit, rel, items = y[items].reshape(50, 20), rel.reshape(50, 20), items.reshape(50, 20)
    near = (digit[:, :, None] == neighbours[q][:, None, :]).any(2)
    assert torch.equal(rel == 2, digit == q[:, None]) and torch.equal(rel == 1, near)
    exact, close = (rel == 2).sum(1), (rel == 1).sum(1)
    assert exact.min() >= 1 and exact.max() <= 4 and close.min() >= 2 and close.max() <= 6
    assert all(len(set(row.tolist())) == 20 for row in items)  # no image twice in a query
    assert torch.equal(query, torch.arange(1000) // 20)


def test_the_ordinal_pull_probe_averages_the_ordinal_margins_over_items_and_boundaries():
    from uniloss import zoo
    from uniloss.decoders import RankingTarget

    s = torch.randn(12, generator=torch.Generator().manual_seed(7))
    rel, q = torch.tensor([0, 1, 2, 0, 0, 3, 1, 0, 2, 0, 0, 1]), torch.arange(12) // 6
    metric = zoo.ndcg_at_k(3, num_grades=4)
    ordinal = M.with_ordinal_pull(metric)
    target = RankingTarget(rel, q)
    margins = ordinal.structure(ordinal.prepare(s, target)).margins(s)
    expected = [float(s[i]) - (b - 1) if rel[i] >= b else (b - 1) - float(s[i]) for i in range(12) for b in (1, 2, 3)]
    torch.testing.assert_close(margins, torch.tensor(expected))
    # the library's own (0.10): the same margins per item and boundary, their terms summed per item
    torch.testing.assert_close(metric.structure(metric.prepare(s, target)).margins(s).reshape(-1), margins)
    assert metric.structure(metric.prepare(s, target)).margins(s).shape == (12, 3)
    assert float(ordinal.metric(s, target)) == float(metric.metric(s, target))
    binary, plain = RankingTarget((rel > 0).long(), q), M.with_ordinal_pull(zoo.ndcg_at_k(3))
    torch.testing.assert_close(plain.structure(plain.prepare(s, binary)).margins(s),  # 0/1: binary cross-entropy's
                               torch.where(rel > 0, s, -s))
    assert M.parse_variant('o={"ordinal_pull": true, "pull": 2.0}') == ("o", {"ordinal_pull": True, "pull": 2.0})
    with pytest.raises(ValueError, match="not a ranking metric"):
        M.with_ordinal_pull(zoo.macro_f1(3))


def test_the_memory_probe_scales_the_memorys_loss_back_to_the_batchs_share():
    import uniloss
    from uniloss.distributed import CrossBatchMemory

    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(8, generator=g), torch.tensor([1, 0, 0, 1, 0, 0, 0, 0])) for _ in range(3)]
    probe = M._uniloss(uniloss.AveragePrecision(), 0, {"memory": 12})
    reference = uniloss.UniLoss(CrossBatchMemory(uniloss.AveragePrecision(), size=12),
                                generator=torch.Generator().manual_seed(1000))
    for call, (s, y) in enumerate(batches):
        a, b = s.clone().requires_grad_(), s.clone().requires_grad_()
        got, want = probe(a, y), reference(b, y)
        m = min(8 * call, 12)  # the memory's length before the call
        torch.testing.assert_close(got, want * ((8 + m) / 8))
        got.backward(), want.backward()
        torch.testing.assert_close(a.grad, b.grad * ((8 + m) / 8))
    assert isinstance(M._uniloss(uniloss.AveragePrecision(), 0, {"memory": 0}), uniloss.UniLoss)
    assert M.parse_variant('m={"memory": 256}') == ("m", {"memory": 256})
    # "memory_as_is": the wrapper as a user writes it, the loss unscaled
    as_is = M._uniloss(uniloss.AveragePrecision(), 0, {"memory_as_is": 12})
    assert isinstance(as_is, uniloss.UniLoss) and repr(as_is.decomposition) == repr(reference.decomposition)
    assert M.parse_variant('m={"memory_as_is": 112}') == ("m", {"memory_as_is": 112})
    with pytest.raises(ValueError, match="not both"):
        M._uniloss(uniloss.AveragePrecision(), 0, {"memory": 12, "memory_as_is": 12})


def test_the_plug_in_probe_weighs_positives_1_plus_beta2_minus_f_and_negatives_f_at_running_counts():
    # step="sum": the probe's gradient minus f_beta's own is the pull's weighted part alone
    from uniloss import functional as F
    from uniloss import zoo

    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(40, generator=g, dtype=torch.float64) * 2, (torch.rand(40, generator=g) < 0.25).long())
               for _ in range(2)]
    probe = M._PlugInWeights(zoo.f_beta(2.0), 0.75)
    counts = []
    for s, y in batches:
        decided, truth = s > 0, y != 0
        counts.append(torch.tensor([float((decided & truth).sum()), float((decided & ~truth).sum()),
                                    float((~decided & truth).sum())], dtype=torch.float64))
        grads = []
        for metric in (probe, zoo.f_beta(2.0)):
            leaf = s.clone().requires_grad_(True)
            grads.append(torch.autograd.grad(F.uniloss(leaf, y, metric, step="sum"), leaf)[0])
        tp, fp, fn = (counts[0] if len(counts) == 1 else 0.75 * counts[0] + 0.25 * counts[1]).tolist()
        f = 5 * tp / (5 * tp + 4 * fn + fp)
        w = torch.where(truth, 5 - f, f).double()
        sign = (2 * y - 1).double()
        expected = (w / w.mean() - 1) * -sign * torch.sigmoid(-sign * s) / len(s)
        torch.testing.assert_close(grads[0] - grads[1], expected, rtol=1e-6, atol=1e-9)
    with torch.no_grad():
        F.uniloss(batches[0][0], batches[0][1], probe)  # no training call: the counts stay
    torch.testing.assert_close(probe.counts, 0.75 * counts[0] + 0.25 * counts[1])
    assert M.parse_variant('p={"plug_in": 0.99}') == ("p", {"plug_in": 0.99})
    with pytest.raises(ValueError, match="f_beta"):
        M._PlugInWeights(zoo.macro_f1(3), 0.9)


def test_the_capacity_probe_reports_each_loss_at_its_best_scale_and_the_differences_draw_by_draw(tmp_path, monkeypatch):
    # benchmarks/capacity_probe.py's bookkeeping, with the trainings replaced by a known table

    probe = _benchmark("capacity_probe")
    final = {("ce", 0.5): 0.90, ("ce", 1.0): 0.92, ("ce-weighted", 0.5): 0.95, ("ce-weighted", 1.0): 0.93,
             ("uniloss", 0.5): 0.96, ("uniloss", 1.0): 0.91}

    def fake(job):
        metric, (model, batch), loss, draw, seed, options, scale = job
        assert metric == "bal-acc" and model == "8" and seed == 1
        if options != "{}":  # the variant: the defaults' run plus 0.002, minus 0.004 on draw 1
            assert json.loads(options) == {"memory": 16} and loss == "uniloss"
            return final[(loss, scale)] + 0.01 * draw + (0.001 if batch == 16 else 0.0) + 0.002 - 0.004 * draw
        return final[(loss, scale)] + 0.01 * draw + (0.001 if batch == 16 else 0.0)

    monkeypatch.setattr(probe, "_one", fake)
    report = probe.main(["--metrics", "bal-acc", "--models", "8", "--batches", "16", "128", "--lr-scales", "0.5", "1",
                         "--draws", "0", "1", "--jobs", "1", "--variant", 'm={"memory": 16}',
                         "--out", str(tmp_path / "probe")])
    small, suite = report["rows"]
    assert (small["batch"], suite["batch"]) == (16, 128) and report["lr_scales"] == [0.5, 1.0]
    assert suite["lr_scale"] == {"cross-entropy": 1.0, "class-weighted CE": 0.5, "UniLoss (defaults)": 0.5,
                                 "UniLoss, m": 0.5}
    assert suite["mean"]["UniLoss (defaults)"] == pytest.approx(96.5)
    assert suite["strongest"] == "class-weighted CE"
    assert suite["vs_best"]["per_draw"] == pytest.approx([1.0, 1.0]) and suite["vs_best"]["ahead"] == 2
    assert suite["vs_usual"]["mean"] == pytest.approx(4.0)
    assert small["mean"]["cross-entropy"] == pytest.approx(92.6)  # (every run of batch 16: +0.1)
    table = (tmp_path / "probe.md").read_text()
    assert "| 8, batch 16 | 92.60 ± 0.71 (x1) | 95.60 ± 0.71 (x0.5) | 96.60 ± 0.71 (x0.5) |" in table
    assert "| 8 | 92.50 ± 0.71 (x1) |" in table
    # the variant draw by draw: minus the defaults (+0.2, -0.2) and minus class-weighted CE (+1.2, +0.8)
    assert suite["variants_vs_defaults"]["UniLoss, m"]["per_draw"] == pytest.approx([0.2, -0.2])
    assert suite["variants_vs_best"]["UniLoss, m"]["per_draw"] == pytest.approx([1.2, 0.8])
    assert "| +0.00 ± 0.28 (1 of 2) | +1.00 ± 0.28 (2 of 2) |" in table
    assert """--variant 'm={"memory": 16}' --out""" in report["command"]  # a command the shell takes as it is


def test_the_capacity_probe_scores_imbalanced_mnist_by_macro_f1(monkeypatch):
    # the probe-only metric imb-macro-f1: the bal-acc data, trained and scored on the zoo's macro_f1

    probe = _benchmark("capacity_probe")
    calls = []
    monkeypatch.setattr(M, "run_imbalanced_mnist", lambda *a, **k: calls.append((a, k)) or [0.5, 0.7])
    for metric in ("imb-macro-f1", "bal-acc", "imb-macro-f1-train-prior", "fashion-bal-acc",
                   "fashion-imb-macro-f1-train-prior"):
        assert probe._one((metric, ("32", 16), "ce-weighted", 3, 1, "{}", 1.0)) == 0.7
    assert [a[:2] for a, _ in calls] == [("macro_f1", "ce-weighted"), ("balanced_accuracy", "ce-weighted"),
                                         ("macro_f1", "ce-weighted"), ("balanced_accuracy", "ce-weighted"),
                                         ("macro_f1", "ce-weighted")]
    assert calls[0][1] == dict(draw=3, hidden=(32,), batch=16, test_prior="balanced", source="mnist")
    assert calls[2][1]["test_prior"] == "train"
    assert calls[3][1]["source"] == "fashion" and calls[4][1] == dict(calls[2][1], source="fashion")
    assert set(probe.PROBES_ONLY) <= set(probe.TASKS) and probe.TASKS["imb-macro-f1"][2] is None
    assert probe.TASKS["fashion-bal-acc"][3] == probe.TASKS["bal-acc"][3]  # the same losses
    assert probe._one(("fashion-imb-macro-f1", ("128", 128), "uniloss-test-prior", 0, 1, "{}", 1.0)) == 0.7
    assert calls[-1][0][:2] == ("macro_f1", "uniloss-test-prior") and calls[-1][1]["source"] == "fashion"
    probe._one(("imb-macro-f1", ("128", 128), "uniloss-class-weights-memory", 0, 1, '{"memory": 896}', 1.0))
    assert calls[-1][0][:2] == ("macro_f1", "uniloss-class-weights") and calls[-1][0][4] == {"memory": 896}
    assert [loss for _, loss, _ in probe.EXTRA["imb-macro-f1"]] == ["uniloss-test-prior", "uniloss-traced",
                                                                 "uniloss-class-weights", "uniloss-class-weights-memory"]
    # the Matthews correlation's probes: the zoo's metric, scored as it is and at the training shares
    for metric, prior, source in (("imb-mcc", "balanced", "mnist"), ("imb-mcc-train-prior", "train", "mnist"),
                                  ("fashion-imb-mcc-train-prior", "train", "fashion")):
        probe._one((metric, ("linear", 128), "uniloss", 2, 1, "{}", 1.0))
        assert calls[-1][0][:2] == ("matthews_corrcoef", "uniloss")
        assert calls[-1][1] == dict(draw=2, hidden=(), batch=128, test_prior=prior, source=source)


def test_prior_weighted_macro_f1_matches_scikit_learn_with_sample_weights():
    # macro-F1 at other class shares: each sample weighs prior[c] / share[c]
    from sklearn.metrics import f1_score

    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        y = torch.randint(0, 5, (300,), generator=gen)
        scores = torch.randn(300, 5, generator=gen) + 1.5 * torch.nn.functional.one_hot(y, 5)
        prior = torch.rand(5, generator=gen) + 0.05
        prior = prior / prior.sum()
        weight = (prior.double() / (torch.bincount(y, minlength=5).double() / 300))[y]
        expected = f1_score(y.numpy(), scores.argmax(1).numpy(), average="macro", sample_weight=weight.numpy())
        assert float(M.prior_weighted_macro_f1(scores, y, prior)) == pytest.approx(expected, rel=1e-12)
    # at the sample's own shares it is the plain macro-F1
    share = torch.bincount(y, minlength=5).double() / 300
    assert float(M.prior_weighted_macro_f1(scores, y, share)) == pytest.approx(
        f1_score(y.numpy(), scores.argmax(1).numpy(), average="macro"), rel=1e-12)
    with pytest.raises(ValueError, match="every class present"):
        M.prior_weighted_macro_f1(scores[y != 0], y[y != 0], share)
    with pytest.raises(ValueError, match="test_prior='train' scores macro_f1 and matthews_corrcoef only"):
        M.run_imbalanced_mnist("balanced_accuracy", "ce", 0, True, {}, test_prior="train")
    with pytest.raises(ValueError, match="trains macro_f1 only"):
        M.run_imbalanced_mnist("balanced_accuracy", "uniloss-test-prior", 0, True, {})


def test_prior_weighted_mcc_matches_scikit_learn_with_sample_weights():
    # Gorodkin's R_K at other class shares: each sample weighs prior[c] / share[c]
    from sklearn.metrics import matthews_corrcoef

    gen = torch.Generator().manual_seed(2)
    for n, c in ((300, 5), (40, 3), (500, 10)):
        y = torch.randint(0, c, (n,), generator=gen)
        y[:c] = torch.arange(c)  # every class present
        scores = torch.randn(n, c, generator=gen) + 1.5 * torch.nn.functional.one_hot(y, c)
        prior = torch.rand(c, generator=gen) + 0.05
        prior = prior / prior.sum()
        weight = (prior.double() / (torch.bincount(y, minlength=c).double() / n))[y]
        expected = matthews_corrcoef(y.numpy(), scores.argmax(1).numpy(), sample_weight=weight.numpy())
        assert float(M.prior_weighted_mcc(scores, y, prior)) == pytest.approx(expected, rel=1e-10)
        # at the sample's own shares it is the zoo's (unweighted) Matthews correlation
        share = torch.bincount(y, minlength=c).double() / n
        assert float(M.prior_weighted_mcc(scores.double(), y, share)) == pytest.approx(
            float(uniloss.zoo.matthews_corrcoef(c).metric(scores.double(), y)), rel=1e-10)
    # one class predicted for every sample: the denominator is 0, and so is the metric (scikit-learn's 0)
    const = torch.zeros(n, c)
    const[:, 0] = 1.0
    assert float(M.prior_weighted_mcc(const, y, prior)) == 0.0 == matthews_corrcoef(y.numpy(), const.argmax(1).numpy())
    with pytest.raises(ValueError, match="every class present"):
        M.prior_weighted_mcc(scores[y != 0], y[y != 0], prior)


def test_class_weighted_macro_f1_matches_scikit_learn_and_traces_into_a_loss():
    from sklearn.metrics import f1_score

    gen = torch.Generator().manual_seed(1)
    for n in (7, 64, 300):  # small batches leave classes out of the target and the prediction
        y = torch.randint(0, 6, (n,), generator=gen)
        scores = torch.randn(n, 6, generator=gen, dtype=torch.float64) + torch.nn.functional.one_hot(y, 6)
        weight = torch.rand(6, generator=gen, dtype=torch.float64) * 10 + 0.1
        pred = scores.argmax(1)
        labels = sorted(set(y.tolist()) | set(pred.tolist()))
        expected = f1_score(y.numpy(), pred.numpy(), average="macro", labels=labels,
                            sample_weight=weight[y].numpy())
        assert float(M.class_weighted_macro_f1(scores, y, weight)) == pytest.approx(expected, rel=1e-12)
        # through from_metric: the traced metric is the function, and its best bits score 1
        traced = uniloss.from_metric(functools.partial(M.class_weighted_macro_f1, weight=weight))
        assert float(traced.metric(scores, y)) == pytest.approx(expected, rel=1e-12)
        plan = traced.prepare(scores, y)
        assert float(traced.evaluate(traced.best(plan)[None], plan)[0]) == pytest.approx(1.0)
    # equal weights: the zoo's macro-F1
    assert float(M.class_weighted_macro_f1(scores, y, torch.ones(6))) == pytest.approx(
        float(uniloss.zoo.macro_f1(6).metric(scores, y)), rel=1e-12)


def test_plain_balanced_accuracy_is_scikit_learns_and_the_zoos_and_traces_into_a_loss():
    import warnings

    from sklearn.metrics import balanced_accuracy_score

    gen = torch.Generator().manual_seed(2)
    for n in (9, 64, 300):  # small batches leave classes out of the target
        y = torch.randint(0, 7, (n,), generator=gen)
        scores = torch.randn(n, 7, generator=gen, dtype=torch.float64) + torch.nn.functional.one_hot(y, 7)
        with warnings.catch_warnings():  # scikit-learn warns of predicted classes not in the target
            warnings.simplefilter("ignore")
            expected = balanced_accuracy_score(y.numpy(), scores.argmax(1).numpy())
        assert float(M.plain_balanced_accuracy(scores, y)) == pytest.approx(expected, rel=1e-12)
        assert float(uniloss.zoo.balanced_accuracy(7).metric(scores, y)) == pytest.approx(expected, rel=1e-12)
        traced = uniloss.from_metric(M.plain_balanced_accuracy)
        assert float(traced.metric(scores, y)) == pytest.approx(expected, rel=1e-12)
        plan = traced.prepare(scores, y)
        assert float(traced.evaluate(traced.best(plan)[None], plan)[0]) == pytest.approx(1.0)


def test_fashion_binary_keeps_five_percent_shirts_in_each_split_drawn_per_draw():
    try:
        a = M.fashion_binary(0)
    except DatasetNotFoundError as exc:  # data absent: the loader's own tests cover the message
        pytest.skip(str(exc))
    xtr, ytr, xva, yva, xte, yte = a
    from uniloss.experiments.data import load_fashion_mnist

    negatives = int((load_fashion_mnist("train").labels != 6).sum())
    assert len(ytr) + len(yva) == negatives + round(0.05 / 0.95 * negatives) and len(yva) == (len(ytr) + len(yva)) // 10
    assert len(yte) == 9000 + round(0.05 / 0.95 * 9000) and float(yte.float().mean()) == pytest.approx(0.05, abs=1e-3)
    for y in (ytr, yva):  # the validation split is drawn at random: both near 5%
        assert float(y.float().mean()) == pytest.approx(0.05, abs=0.005)
    assert xtr.shape[1] == 784 and float(xtr.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(xtr.std()) == pytest.approx(1.0, abs=1e-3)
    b, again = M.fashion_binary(1), M.fashion_binary(0)
    assert torch.equal(again[5], yte) and torch.equal(again[4], xte)  # a draw is reproducible
    assert not torch.equal(b[4], xte)  # another draw keeps other shirts (and orders the images otherwise)
    with pytest.raises(ValueError, match="share=0.5: .* which has 6000"):
        M.fashion_binary(0, share=0.5)
    with pytest.raises(ValueError, match="unknown source"):
        M.run_imbalanced("ap", "bce", 0, True, {}, source="cifar")


def test_the_capacity_probe_trains_fashion_shirts_on_the_binary_runner(monkeypatch):
    probe = _benchmark("capacity_probe")
    calls = []
    monkeypatch.setattr(M, "run_imbalanced", lambda *a, **k: calls.append((a, k)) or [0.5, 0.6])
    assert probe._one(("fashion-f1", ("16", 128), "bce-tuned", 2, 1, "{}", 1.0)) == 0.6
    assert probe._one(("ap", ("8", 128), "bce", 2, 1, "{}", 1.0)) == 0.6
    assert [a[:2] for a, _ in calls] == [("f1", "bce-tuned"), ("ap", "bce")]
    assert calls[0][1] == dict(draw=2, hidden=(16,), batch=128, source="fashion")
    assert calls[1][1]["source"] == "synthetic"
    assert {"fashion-ap", "fashion-f1"} <= set(probe.PROBES_ONLY)


def test_imbalanced_fashion_deals_the_shares_to_the_classes_at_random_per_draw():
    with pytest.raises(ValueError, match="source must be"):
        M.imbalanced_mnist(draw=0, source="cifar")
    with pytest.raises(ValueError, match="give a draw"):
        M.imbalanced_mnist(source="fashion")
    try:
        xtr, ytr, xte, yte = M.imbalanced_mnist(draw=0, source="fashion")
    except DatasetNotFoundError as exc:  # data absent: the loader's own tests cover the message
        pytest.skip(str(exc))
    counts = torch.bincount(ytr, minlength=10)  # Fashion-MNIST: 6,000 training images a class
    shares = sorted(int(c) for c in counts)
    assert shares == sorted(round(6000 * 0.6**k) for k in range(10))  # each share once, in some order
    other = torch.bincount(M.imbalanced_mnist(draw=1, source="fashion")[1], minlength=10)
    assert sorted(other.tolist()) == shares and not torch.equal(other, counts)  # another class is the rarest
    assert len(yte) == 10_000 and torch.equal(torch.bincount(yte), torch.full((10,), 1000))
    assert xtr.shape == (len(ytr), 784) and 0.0 <= float(xtr.min()) and float(xtr.max()) <= 1.0
    again = M.imbalanced_mnist(draw=0, source="fashion")
    assert torch.equal(again[1], ytr) and torch.equal(again[0], xtr)  # a draw is reproducible


def test_noisy_fashion_masks_are_the_clean_images_above_one_half():
    with pytest.raises(ValueError, match="source must be"):
        M.noisy_masks("train", 4, 0, source="cifar")
    try:
        x, mask = M.noisy_masks("test", 50, seed=3, source="fashion")
    except DatasetNotFoundError as exc:  # data absent: the loader's own tests cover the message
        pytest.skip(str(exc))
    from uniloss.experiments.data import load_fashion_mnist

    images = load_fashion_mnist("test").images
    chosen = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(3))[:50]
    assert torch.equal(mask, (images[chosen].float() / 255.0 > 0.5).long())  # the masks of the drawn images
    assert x.shape == (50, 1, 28, 28) and 0.2 < float(mask.float().mean()) < 0.5  # garments: a third of a canvas
    digits = M.noisy_masks("test", 50, seed=3)[1]
    assert float(digits.float().mean()) < 0.2 and not torch.equal(digits, mask)  # MNIST's digits: thinner


def test_digit_masks_label_each_digits_pixels_by_its_class():
    try:
        x, binary = M.noisy_masks("test", 40, seed=5)
        _, digits = M.noisy_masks("test", 40, seed=5, digits=True)
        quiet, _ = M.noisy_masks("test", 40, seed=5, noise=0.0)
    except DatasetNotFoundError as exc:  # data absent: the loader's own tests cover the message
        pytest.skip(str(exc))
    from uniloss.experiments.data import load_mnist

    labels = load_mnist("test").labels
    chosen = torch.randperm(len(labels), generator=torch.Generator().manual_seed(5))[:40]
    assert torch.equal(digits > 0, binary.bool())  # the same pixels, the same images
    assert torch.equal(digits.amax((1, 2)), labels[chosen].long() + 1)  # each image's pixels: its digit + 1
    assert set(digits.unique().tolist()) <= set(range(11))
    visible = quiet != 0  # without noise the input is the clean image outside the occluding patch
    assert torch.equal((quiet[visible] > 0.5), binary[:, None].bool()[visible])
    assert M.DigitSegmenter(11)(x[:3]).shape == (3, 11, 28, 28)


def test_the_capacity_probe_adds_the_extra_rows_of_a_metric_and_filters_them(tmp_path, monkeypatch):
    probe = _benchmark("capacity_probe")
    runs = []

    def fake(job):
        runs.append(job[2])
        return {"ce": 0.80, "ce-weighted": 0.90, "uniloss": 0.85, "uniloss-test-prior": 0.86,
                "uniloss-traced": 0.84, "uniloss-class-weights": 0.88,
                "uniloss-class-weights-memory": 0.89}[job[2]] + 0.01 * job[3]

    monkeypatch.setattr(probe, "_one", fake)
    argv = ["--metrics", "imb-macro-f1", "--models", "128", "--draws", "0", "1", "--jobs", "1"]
    row, = probe.main(argv + ["--extras", "uniloss-class-weights", "--out", str(tmp_path / "a")])["rows"]
    assert set(runs) == {"ce", "ce-weighted", "uniloss", "uniloss-class-weights"}  # the filter
    assert runs.count("uniloss-class-weights") == 2  # two draws; the memory's row is filtered out
    label = "UniLoss, zoo.macro_f1(class_weights=test share / training share)"
    assert row["variants_vs_defaults"][label]["per_draw"] == pytest.approx([3.0, 3.0])
    assert row["variants_vs_best"][label]["per_draw"] == pytest.approx([-2.0, -2.0])  # class-weighted CE
    assert row["strongest"] == "class-weighted CE"  # the extra rows are not among the others
    runs.clear()
    row, = probe.main(argv + ["--out", str(tmp_path / "b")])["rows"]
    assert set(runs) == {"ce", "ce-weighted", "uniloss", "uniloss-test-prior", "uniloss-traced",
                         "uniloss-class-weights", "uniloss-class-weights-memory"} and len(row["variants_vs_best"]) == 4
    runs.clear()
    row, = probe.main(argv + ["--extras", "--out", str(tmp_path / "c")])["rows"]
    assert "uniloss-class-weights" not in runs and "variants_vs_best" not in row


def test_the_capacity_probe_trains_only_the_rows_asked_for_at_more_scales(tmp_path, monkeypatch):
    probe = _benchmark("capacity_probe")
    runs = []

    def fake(job):
        metric, (model, _), loss, draw, _, _, scale = job
        runs.append((model, loss, scale))
        return 0.5 + 0.1 * scale + 0.01 * draw

    monkeypatch.setattr(probe, "_one", fake)
    report = probe.main(["--metrics", "mlabel-map", "--models", "linear", "128", "--only", "bce-posweight",
                         "--lr-scales", "0.25", "0.5", "--draws", "0", "1", "--jobs", "1", "--out", str(tmp_path / "o")])
    assert {loss for _, loss, _ in runs} == {"bce-posweight"} and len(runs) == 2 * 2 * 2
    assert [(r["model"], r["lr_scale"]) for r in report["rows"]] == [("linear", 0.25), ("linear", 0.5),
                                                                     ("128", 0.25), ("128", 0.5)]
    assert report["rows"][1]["mean"] == pytest.approx(55.5) and report["rows"][1]["per_draw"] == pytest.approx([55, 56])
    assert json.loads((tmp_path / "o.json").read_text())["command"].endswith("--out " + str(tmp_path / "o"))
    assert not (tmp_path / "o.md").exists()  # no comparison table


def test_retrieval_probes_train_and_score_their_own_zoo_metric(monkeypatch):
    # p-at-5, r-at-5 and mrr run the ndcg5 task on their metric, beside the pointwise and pairwise losses
    from uniloss.decoders import RankingTarget

    metrics = []
    monkeypatch.setattr(M, "run_ndcg", lambda *a, **k: metrics.append(k["metric"]) or [0.5])
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(40, generator=gen)
    target = RankingTarget(torch.rand(40, generator=gen) < 0.3, torch.arange(40) // 20)
    values = {}
    for name, ref in (("p-at-5", uniloss.zoo.precision_at_k(5)), ("r-at-5", uniloss.zoo.recall_at_k(5)),
                      ("mrr", uniloss.zoo.mrr())):
        task = M.TASKS[name]
        assert task.run("uniloss", 0, True, {}) == [0.5] and not task.suite
        assert task.losses["pairwise logistic"] == ("baseline", "pairwise")
        assert task.losses["binary cross-entropy (pointwise)"] == ("usual", "bce")
        values[name] = float(metrics[-1].metric(scores, target))
        assert values[name] == pytest.approx(float(ref.metric(scores, target)))
    assert len(set(values.values())) == 3  # three different metrics on this ranking


def test_multilabel_macro_f1_matches_scikit_learn_and_traces_into_the_loss():
    from sklearn.metrics import f1_score

    gen = torch.Generator().manual_seed(3)
    for n, labels in ((5, 4), (64, 10), (300, 7)):  # small batches leave labels without a positive
        y = (torch.rand(n, labels, generator=gen) < 0.2).long()
        scores = torch.randn(n, labels, generator=gen) + 1.5 * y
        scores[:, 0] = -1.0  # a label never predicted
        y[:, 1] = 0  # a label never present
        expected = f1_score(y.numpy(), (scores > 0).numpy(), average="macro", zero_division=0)
        assert float(M.multilabel_macro_f1(scores, y)) == pytest.approx(expected, rel=1e-6)
        traced = uniloss.from_metric(M.multilabel_macro_f1)
        assert float(traced.metric(scores, y)) == pytest.approx(expected, rel=1e-6)
        plan = traced.prepare(scores, y)
        best = float(traced.evaluate(traced.best(plan)[None], plan)[0])
        # the best decisions are the target's: F1 1 on each label with a positive, 0 on the others
        assert best == pytest.approx(float((y.sum(0) > 0).float().mean()))
        s = scores.clone().requires_grad_()
        loss = uniloss.UniLoss(traced)(s, y)
        loss.backward()
        assert torch.isfinite(s.grad).all() and float(s.grad.abs().sum()) > 0


def test_multilabel_mosaics_show_the_classes_their_labels_name():
    try:
        xtr, ytr, xva, yva, xte, yte = M.multilabel_mnist(0)
    except DatasetNotFoundError as exc:  # data absent: the loader's own tests cover the message
        pytest.skip(str(exc))
    assert xtr.shape == (54000, 784) and xva.shape == (6000, 784) and xte.shape == (10000, 784)
    assert ytr.shape == (54000, 10) and set(ytr.unique().tolist()) == {0, 1}
    assert float(xtr.mean()) == pytest.approx(0.0, abs=1e-4) and float(xtr.std()) == pytest.approx(1.0, abs=1e-3)
    # a class's share of the mosaics: 1 - (1 - fill * p_c) ** 4, p_c proportional to 0.7 ** c
    p = 0.7 ** torch.arange(10.0)
    expected = 1 - (1 - 0.5 * p / p.sum()) ** 4
    for y in (ytr, yte):
        torch.testing.assert_close(y.float().mean(0), expected, atol=0.012, rtol=0)
    # a mosaic with no label is blank, and one with a label is not
    tiles = xtr.reshape(-1, 2, 14, 2, 14)
    blank = (tiles - xtr.min()).abs().amax(dim=(1, 2, 3, 4)) < 1e-6
    assert torch.equal(blank, ytr.sum(1) == 0)
    again = M.multilabel_mnist(0)
    assert torch.equal(again[5], yte) and torch.equal(again[0], xtr)  # a draw is reproducible
    assert not torch.equal(M.multilabel_mnist(1)[5], yte)
    fashion = M.multilabel_mnist(0, source="fashion")[1].float().mean(0)
    assert sorted(fashion.tolist(), reverse=True) == pytest.approx(expected.tolist(), abs=0.012)  # shares dealt
    assert not torch.allclose(fashion, expected, atol=0.012)  # in another order


def _labels_read_from_inputs(monkeypatch, gen):
    """Stands in for the mosaics: ten labels, each read from one input (about 16% positives),
    1,200 training, 400 validation and 400 test samples."""
    x = torch.randn(2000, 784, generator=gen)
    x[:, 10:] = 0.0
    y = (x[:, :10] > 1.0).long()
    data = (x[:1200], y[:1200], x[1200:1600], y[1200:1600], x[1600:], y[1600:])
    monkeypatch.setattr(M, "multilabel_mnist", lambda draw, source="mnist": data)


def _probe_calls(monkeypatch, job, result):
    """``capacity_probe._one(job)`` with ``run_multilabel`` recorded (returning ``[0.5, result]``):
    its value and the calls' ``(args, kwargs)``."""
    probe = _benchmark("capacity_probe")
    calls = []
    monkeypatch.setattr(M, "run_multilabel", lambda *a, **k: calls.append((a, k)) or [0.5, result])
    return probe._one(job), calls, probe


def test_run_multilabel_scores_each_loss_and_the_tuned_thresholds(monkeypatch):
    _labels_read_from_inputs(monkeypatch, torch.Generator().manual_seed(0))
    results = {loss: M.run_multilabel(loss, 0, True, {}, hidden=()) for loss in
               ("bce", "bce-posweight", "bce-tuned", "uniloss", "uniloss-zoo")}
    assert all(len(r) == 5 and 0.0 <= min(r) and max(r) <= 1.0 for r in results.values())
    assert results["uniloss"][-1] > 0.85  # the labels are linear in the inputs: the loss learns them
    assert results["uniloss-zoo"][-1] > 0.85  # and so does the zoo's macro F1
    # the same training as BCE, scored at each label's F1-tuned threshold: better on labels of 16%
    assert results["bce-tuned"][-1] > results["bce"][-1] + 0.05
    with pytest.raises(ValueError, match="unknown loss 'ce'"):
        M.run_multilabel("ce", 0, True, {})
    probe = _benchmark("capacity_probe")
    calls = []
    monkeypatch.setattr(M, "run_multilabel", lambda *a, **k: calls.append((a, k)) or [0.5, 0.7])
    assert probe._one(("fashion-mlabel-f1", ("128", 128), "bce-tuned", 3, 1, "{}", 1.0)) == 0.7
    assert calls[0][0][:2] == ("bce-tuned", 1) and calls[0][1] == dict(draw=3, hidden=(128,), batch=128,
                                                                       source="fashion", epochs=5)
    assert probe._one(("mlabel-f1-15", ("512-512", 128), "uniloss", 0, 1, "{}", 1.0)) == 0.7
    assert calls[1][1] == dict(draw=0, hidden=(512, 512), batch=128, source="mnist", epochs=15)
    assert {"mlabel-f1", "fashion-mlabel-f1", "mlabel-f1-15"} <= set(probe.PROBES_ONLY)
    assert not M.TASKS["mlabel-f1"].suite


def test_multilabel_map_matches_scikit_learn_and_its_losses_rank_within_each_label(monkeypatch):
    from sklearn.metrics import average_precision_score
    gen = torch.Generator().manual_seed(1)
    for n, labels in ((50, 3), (200, 10)):
        scores = torch.randn(n, labels, generator=gen).round(decimals=1)  # ties too
        y = (torch.rand(n, labels, generator=gen) < 0.3).long()
        y[0] = 1
        assert M.multilabel_map(scores, y) == pytest.approx(
            average_precision_score(y.numpy(), scores.numpy(), average="macro"), rel=1e-12)
    # each label a query: the items of label j are column j, and pairs never cross labels
    scores, y = torch.randn(6, 2, generator=gen), torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0], [0, 1], [1, 0]])
    flat, relevance, query = M._by_label(scores, y)
    assert torch.equal(flat, torch.cat([scores[:, 0], scores[:, 1]]))
    assert torch.equal(relevance, torch.cat([y[:, 0], y[:, 1]])) and query.tolist() == [0] * 6 + [1] * 6
    both = M.pairwise_logistic(flat, relevance, query)
    pairs = [(i, j, c) for c in range(2) for i in range(6) for j in range(6) if y[i, c] > y[j, c]]
    expected = sum(float(torch.nn.functional.softplus(scores[j, c] - scores[i, c])) for i, j, c in pairs) / len(pairs)
    assert float(both) == pytest.approx(expected, rel=1e-6)
    # training on labels read from the inputs: every loss learns them
    _labels_read_from_inputs(monkeypatch, gen)
    for loss in ("bce", "bce-posweight", "pairwise", "uniloss"):
        result = M.run_multilabel(loss, 0, True, {}, hidden=(), metric="map")
        assert len(result) == 5 and result[-1] > 0.95, loss  # AP of a label linear in one input
    with pytest.raises(ValueError, match="unknown loss 'bce-tuned' for the labels' mean AP"):
        M.run_multilabel("bce-tuned", 0, True, {}, metric="map")
    with pytest.raises(ValueError, match="unknown metric 'auc'"):
        M.run_multilabel("bce", 0, True, {}, metric="auc")
    value, calls, probe = _probe_calls(monkeypatch, ("mlabel-map", ("linear", 128), "pairwise", 2, 1, "{}", 1.0), 0.8)
    assert value == 0.8
    assert calls[0][0][:2] == ("pairwise", 1) and calls[0][1] == dict(draw=2, hidden=(), batch=128, metric="map")
    assert "mlabel-map" in probe.PROBES_ONLY


def test_multilabel_samples_f1_matches_scikit_learn_and_its_probe_tunes_one_threshold(monkeypatch):
    from sklearn.metrics import f1_score

    gen = torch.Generator().manual_seed(4)
    for n, labels in ((7, 3), (100, 10)):
        y = (torch.rand(n, labels, generator=gen) < 0.25).long()
        y[0] = 0  # a row with no label
        scores = torch.randn(n, labels, generator=gen) + y
        expected = f1_score(y.numpy(), (scores > 0).numpy(), average="samples", zero_division=0)
        assert float(M.multilabel_samples_f1(scores, y)) == pytest.approx(expected, rel=1e-6)
    # the tuned threshold: the best of its candidates, at least as good as logit 0
    scores, y = torch.randn(300, 10, generator=gen) - 1.0, (torch.rand(300, 10, generator=gen) < 0.2).long()
    scores = scores + 0.8 * y
    t = M.tuned_samples_threshold(scores, y)
    assert float(M.multilabel_samples_f1(scores - t, y)) >= float(M.multilabel_samples_f1(scores, y))
    grid = torch.linspace(float(scores.min()), float(scores.max()), 400)
    best = max(float(M.multilabel_samples_f1(scores - g, y)) for g in grid)
    assert float(M.multilabel_samples_f1(scores - t, y)) >= best - 0.01  # quantiles: as good as a fine grid
    # training on labels read from the inputs
    _labels_read_from_inputs(monkeypatch, gen)
    results = {loss: M.run_multilabel(loss, 0, True, {}, hidden=(), metric="samples-f1")
               for loss in ("bce", "bce-posweight", "bce-tuned", "uniloss")}
    assert all(len(r) == 5 and 0.0 <= min(r) and max(r) <= 1.0 for r in results.values())
    # through from_metric (a sum per row, then their mean); a row without a label scores 0 whatever is
    # predicted (zero_division=0, 17% of these rows), and BCE at logit 0 predicts too few labels of 16%
    assert results["uniloss"][-1] > 0.65 and results["uniloss"][-1] > results["bce"][-1] + 0.1
    assert results["bce-tuned"][-1] > results["bce"][-1] + 0.1
    with pytest.raises(ValueError, match="unknown loss 'uniloss-zoo'"):
        M.run_multilabel("uniloss-zoo", 0, True, {}, metric="samples-f1")
    value, calls, probe = _probe_calls(monkeypatch, ("mlabel-samples-f1", ("128", 128), "bce-tuned", 2, 1, "{}", 1.0),
                                       0.6)
    assert value == 0.6
    assert calls[0][1] == dict(draw=2, hidden=(128,), batch=128, metric="samples-f1")
    assert "mlabel-samples-f1" in probe.PROBES_ONLY


def test_the_softmax_threshold_benchmark_scores_f1_of_the_positive_class_as_scikit_learn():
    """benchmarks/traced_softmax_threshold.py: its metric, written on probabilities and on the
    logits' difference, is scikit-learn's F1 of the decision "class 1 above 1/2"."""
    from sklearn.metrics import f1_score

    bench = _benchmark("traced_softmax_threshold")
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        s, y = 2 * torch.randn(64, 2, generator=g), (torch.rand(64, generator=g) < 0.2).long()
        expected = f1_score(y.numpy(), (s[:, 1] > s[:, 0]).long().numpy(), zero_division=0)
        assert float(bench.f1(s, y)) == pytest.approx(expected, abs=1e-6)
        assert float(bench.f1_on_logits(s, y)) == pytest.approx(expected, abs=1e-6)


def test_the_concordance_benchmark_scores_harrells_c_and_ranknets_loss_by_hand():
    """benchmarks/traced_concordance.py: the traced metric and the test metric are the share of the
    target's ordered pairs the scores order alike (scikit-learn's AUROC for two grades; a tie in the
    scores counted half), the pairwise loss RankNet's over those pairs, each against a loop."""
    from sklearn.metrics import roc_auc_score

    bench = _benchmark("traced_concordance")
    g = torch.Generator().manual_seed(0)
    s, y = torch.randn(40, generator=g), torch.randint(0, 4, (40,), generator=g).float()
    s[3] = s[5]  # a tie
    pairs = [(i, j) for i in range(40) for j in range(40) if y[i] > y[j]]
    won = sum(float(s[i] > s[j]) + 0.5 * float(s[i] == s[j]) for i, j in pairs) / len(pairs)
    assert bench.harrell_c(s, y) == pytest.approx(won)
    assert float(bench.concordance(s, y)) == pytest.approx(sum(float(s[i] > s[j]) for i, j in pairs) / len(pairs))
    binary = (y > 1).float()
    assert bench.harrell_c(s, binary) == pytest.approx(roc_auc_score(binary.numpy(), s.numpy()))
    ranknet = sum(math.log1p(math.exp(float(s[j] - s[i]))) for i, j in pairs) / len(pairs)
    assert float(bench.pairwise_logistic(s, y)) == pytest.approx(ranknet, rel=1e-5)


def test_the_spearman_benchmark_trains_scipys_rho_with_the_targets_ties_at_their_average_rank():
    """benchmarks/traced_spearman.py: the traced metric (scores ranked by ``argsort`` twice, the
    target's ties at their average rank) is scipy's ``spearmanr`` on untied scores, tied targets too."""
    from scipy import stats

    bench = _benchmark("traced_spearman")
    g = torch.Generator().manual_seed(0)
    s = torch.randn(40, generator=g)
    for y in (torch.randn(40, generator=g), torch.randint(0, 5, (40,), generator=g).float()):
        expected = stats.spearmanr(s.numpy(), y.numpy()).statistic
        assert float(bench.spearman(s, y)) == pytest.approx(expected, abs=1e-6)
        assert bench._spearmanr(s, y) == pytest.approx(expected, abs=1e-12)


def test_the_kappa_benchmark_scores_quadratic_kappa_as_scikit_learn_and_cuts_diabetes_into_quintiles():
    """benchmarks/traced_kappa.py: its traced metric is scikit-learn's quadratic weighted kappa of
    the argmax, and its diabetes task has five grades of about a fifth of the training split each."""
    from sklearn.metrics import cohen_kappa_score

    bench = _benchmark("traced_kappa")
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        y = torch.randint(0, 5, (60,), generator=g)
        s = torch.randn(60, 5, generator=g) + torch.nn.functional.one_hot(y, 5)
        expected = cohen_kappa_score(y.numpy(), s.argmax(1).numpy(), weights="quadratic")
        assert float(bench.quadratic_kappa(s, y)) == pytest.approx(expected, abs=1e-6)
    xtr, ytr, xte, yte, grades = bench.load("diabetes", 0)
    assert grades == 5 and xtr.shape[1] == 10 and len(xtr) + len(xte) == 442
    assert torch.bincount(ytr, minlength=5).min() >= 0.18 * len(ytr) and set(yte.tolist()) <= set(range(5))


def test_the_tolerance_benchmark_scores_the_share_within_and_half_a_grade_rounds_to_the_digit():
    """benchmarks/traced_tolerance.py: its traced metric and its test metric are a loop's share of
    predictions strictly within ``tol``; on digits ``tol`` is half a grade of the standardised
    target, so a prediction is within it exactly where it rounds to its image's digit."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bench = _benchmark("traced_tolerance")
    g = torch.Generator().manual_seed(0)
    y = torch.randint(-3, 4, (50,), generator=g).float()
    pred = y + torch.randn(50, generator=g)
    pred[:3] = y[:3] + torch.tensor([0.5, -0.5, 0.25])  # two at the tolerance itself: not within
    loop = sum(abs(float(p) - float(t)) < 0.5 for p, t in zip(pred, y)) / 50
    assert 0.2 < loop < 0.8
    assert bench._share_within(pred, y, 0.5) == pytest.approx(loop)
    assert float(bench.within(pred, y, 0.5)) == pytest.approx(loop)
    assert bench.tolerance("diabetes", 0) == 0.5
    _, digits = load_digits(return_X_y=True)
    _, _, ytr, _ = train_test_split(digits, digits, test_size=0.3, random_state=1)
    centre, scale, tol = float(ytr.mean()), float(ytr.std()), bench.tolerance("digits", 1)
    grades = torch.randint(0, 10, (200,), generator=g).double()
    guesses = grades + 2.2 * (torch.rand(200, generator=g, dtype=torch.float64) - 0.5)  # off by up to 1.1
    standardised = lambda v: (v - centre) / scale  # noqa: E731
    rounds_right = float((guesses.round() == grades).double().mean())
    assert 0.2 < rounds_right < 0.9
    assert bench._share_within(standardised(guesses), standardised(grades), tol) == pytest.approx(rounds_right)


def _least_expected_cost(logits, cost):
    """The class ``j`` of least ``sum_i softmax(logits)_i cost[i, j]``, by a loop over the classes."""
    p = logits.softmax(0)
    expected = [sum(float(p[i]) * float(cost[i, j]) for i in range(len(cost))) for j in range(len(cost))]
    return min(range(len(cost)), key=expected.__getitem__)


def test_the_cost_benchmark_prices_the_argmax_and_takes_the_decision_of_least_expected_cost():
    """benchmarks/cost_sensitive_probe.py: the cost matrix (zero diagonal, [1, 10] elsewhere, one per
    seed), the traced metric against a loop over the samples, and the Bayes decision against a loop
    over the candidate classes of each sample's expected cost."""
    bench = _benchmark("cost_sensitive_probe")
    cost = bench.cost_matrix(0)
    assert cost.shape == (10, 10) and bool((cost.diagonal() == 0).all())
    off = cost[~torch.eye(10, dtype=torch.bool)]
    assert float(off.min()) >= 1 and float(off.max()) <= 10 and not torch.equal(cost, bench.cost_matrix(1))
    g = torch.Generator().manual_seed(0)
    logits, target = 2 * torch.randn(300, 10, generator=g), torch.randint(0, 10, (300,), generator=g)
    loop = sum(float(cost[int(t), int(row.argmax())]) for row, t in zip(logits, target)) / 300
    assert float(bench.mean_cost_metric(cost)(logits, target)) == pytest.approx(loop, rel=1e-6)
    decided = bench.bayes_decision(logits, cost)
    for row, d in zip(logits.double(), decided):
        assert int(d) == _least_expected_cost(row, cost)
    assert bool((decided != logits.argmax(1)).any())  # the costs move some decisions off the argmax
    moves = bench.bayes_moves(logits, cost, target)  # against a loop over the samples
    order = [sorted(range(10), key=lambda j: -float(row[j]))[:2] for row in logits]
    kinds = [(1 if int(d) == o[1] else 2) if int(d) != o[0] else 0 for d, o in zip(decided, order)]
    saved = [float(cost[int(t), o[0]] - cost[int(t), int(d)]) for t, o, d in zip(target, order, decided)]
    assert moves["to_second"] == pytest.approx(kinds.count(1) / 300)
    assert moves["outside_top2"] == pytest.approx(kinds.count(2) / 300) and kinds.count(2) > 0
    assert moves["saved_second"] == pytest.approx(sum(v for v, k in zip(saved, kinds) if k == 1) / 300, abs=1e-9)
    assert moves["saved_outside"] == pytest.approx(sum(v for v, k in zip(saved, kinds) if k == 2) / 300, abs=1e-9)
    by_argmax, by_bayes = (float(cost[target, c].double().mean()) for c in (logits.argmax(1), decided))
    assert moves["saved_second"] + moves["saved_outside"] == pytest.approx(by_argmax - by_bayes, abs=1e-9)
    scale = float(cost.sum(1).mean())
    loop = sum(float(cost[int(t), j]) * math.log1p(math.exp(float(row[j] - row[int(t)])))
               for row, t in zip(logits.double(), target) for j in range(10)) / 300 / scale
    assert float(bench.cost_weighted_pairwise(logits, target, cost)) == pytest.approx(loop, rel=1e-5)
    # two classes: the expected loss at posterior p is least where the score difference's sign is
    # the Bayes decision's (p cost[1, 0] against (1 - p) cost[0, 1])
    two = torch.tensor([[0.0, 1.0], [4.0, 0.0]])
    d = torch.linspace(-6, 6, 1201)
    scores = torch.stack([torch.zeros_like(d), d], 1)
    for p in (0.1, 0.15, 0.25, 0.5, 0.9):
        expected = [p * float(bench.cost_weighted_pairwise(scores[i:i + 1], torch.tensor([1]), two))
                    + (1 - p) * float(bench.cost_weighted_pairwise(scores[i:i + 1], torch.tensor([0]), two))
                    for i in range(len(d))]
        best = float(d[min(range(len(d)), key=expected.__getitem__)])
        assert (best > 0) == (p * 4.0 > (1 - p) * 1.0), (p, best)


@pytest.mark.parametrize("seed", range(3))
def test_the_traced_cost_of_the_argmax_never_raises_a_score_other_than_the_targets(seed):
    """The cost page's reading: ``from_metric`` decomposes the argmax of a cost matrix into the
    target's class against each other class, so UniLoss's gradient lowers (or leaves) every other
    class's score and raises the target's; a hedge, a class that is cheap but rarely true, is never
    asked for. Fails if a comparison's sign or the pull's target turns."""
    import uniloss

    bench = _benchmark("cost_sensitive_probe")
    cost = bench.cost_matrix(seed)
    g = torch.Generator().manual_seed(seed)
    scores = (3 * torch.randn(64, 10, generator=g)).requires_grad_()
    target = torch.randint(0, 10, (64,), generator=g)
    decomposition = uniloss.from_metric(bench.mean_cost_metric(cost), higher_is_better=False)
    assert "Argmax(pairs='target')" in decomposition.explain(scores.detach(), target)
    uniloss.UniLoss(decomposition)(scores, target).backward()
    own = torch.nn.functional.one_hot(target, 10).bool()
    assert bool((scores.grad[~own] >= 0).all()) and bool((scores.grad[own] <= 0).all())
    assert float(scores.grad[~own].sum()) > 0


@pytest.mark.parametrize("seed", range(3))
def test_the_cost_as_a_decoded_metric_is_the_users_metric_on_either_layout(seed):
    """The cost-pairs page's rows: ``decoded_cost(cost, pairs)`` is the mean cost of the argmax
    (against a loop) for both layouts; its loss is ``from_metric``'s comparisons with
    ``"target"``, while with ``"all"`` (which wrong class wins is a comparison too) the gradient
    raises some other class's score. Fails if a layout decodes another label or the rows swap."""
    import uniloss

    bench = _benchmark("cost_sensitive_probe")
    cost = bench.cost_matrix(seed)
    g = torch.Generator().manual_seed(seed)
    scores = 3 * torch.randn(64, 10, generator=g)
    target = torch.randint(0, 10, (64,), generator=g)
    loop = sum(float(cost[int(t), int(row.argmax())]) for row, t in zip(scores, target)) / 64
    own = torch.nn.functional.one_hot(target, 10).bool()
    raised = {}
    for pairs in ("target", "all"):
        metric = bench.decoded_cost(cost, pairs)
        assert float(metric.metric(scores, target)) == pytest.approx(loop, rel=1e-6)
        x = scores.clone().requires_grad_()
        uniloss.UniLoss(metric, pull=0.0)(x, target).backward()
        raised[pairs] = int((x.grad[~own] < 0).sum())
    assert raised["target"] == 0 and raised["all"] > 0


@pytest.mark.parametrize("seed", range(3))
def test_the_expected_cost_is_the_metric_under_the_softmax_and_its_minimiser_hedges(seed):
    """The expected-cost page's rows: ``expected_cost`` is ``sum_j softmax_j cost[y, j]`` averaged
    (against a loop), tends to the argmax's mean cost as the scores sharpen, and, trained on a
    posterior whose Bayes decision is a class outside its top two, puts its argmax there (the
    hedge UniLoss's pull never asks for). Fails if the cost's rows and columns swap."""
    bench = _benchmark("cost_sensitive_probe")
    cost = bench.cost_matrix(seed)
    g = torch.Generator().manual_seed(seed)
    scores, target = 2 * torch.randn(64, 10, generator=g), torch.randint(0, 10, (64,), generator=g)
    loop = sum(sum(float(p) * float(cost[int(t), j]) for j, p in enumerate(row.softmax(0)))
               for row, t in zip(scores.double(), target)) / 64
    assert float(bench.expected_cost(scores, target, cost)) == pytest.approx(loop, rel=1e-5)
    sharp = float(bench.expected_cost(1e4 * scores, target, cost))
    assert sharp == pytest.approx(float(bench.mean_cost_metric(cost)(scores, target)), rel=1e-6)
    # a posterior split between two classes whose cheapest decision, a third class, is a hedge
    pairs = [(a, b) for a in range(10) for b in range(a + 1, 10)
             if int((cost[a] + cost[b]).argmin()) not in (a, b)]
    a, b = pairs[0]  # every seed's matrix has such pairs (its confusions cost up to 10, a hedge from 1)
    hedge = int((cost[a] + cost[b]).argmin())
    posterior = torch.zeros(10)
    posterior[[a, b]] = 0.5
    logits = torch.zeros(10, requires_grad=True)
    opt = torch.optim.SGD([logits], lr=1.0)
    for _ in range(300):
        opt.zero_grad()
        sum(0.5 * bench.expected_cost(logits[None], torch.tensor([i]), cost) for i in (a, b)).backward()
        opt.step()
    assert int(logits.argmax()) == hedge == int(bench.bayes_decision((posterior + 1e-12).log()[None], cost))


@pytest.mark.parametrize("seed", range(3))
def test_one_price_per_true_class_makes_the_bayes_decision_a_reweighted_posterior(seed):
    """``cost_matrix(seed, kind="per-class")``: 0 on the diagonal, one price in [1, 10] per true
    class across its row, and its Bayes decision is ``argmax_j w_j P(j | x)`` (the posterior
    reweighted, the decision class-weighted cross-entropy is consistent for), checked against the
    probe's ``bayes_decision``. Fails if the price is per decided class (a column) instead."""
    bench = _benchmark("cost_sensitive_probe")
    cost = bench.cost_matrix(seed, kind="per-class")
    off = ~torch.eye(10, dtype=torch.bool)
    w = cost.sum(1) / 9
    assert bool((cost.diagonal() == 0).all()) and torch.allclose(cost, w[:, None] * off)
    assert float(w.min()) >= 1 and float(w.max()) <= 10 and len(set(w.tolist())) == 10
    g = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(500, 10, generator=g)
    decided = bench.bayes_decision(logits, cost)
    assert torch.equal(decided, (logits.double().softmax(1) * w.double()).argmax(1))
    assert bool((decided != logits.argmax(1)).any())


@pytest.mark.parametrize("reject", [0.1, 0.2, 0.4])
def test_a_reject_option_is_chows_rule_and_the_traced_argmax_never_raises_it(reject):
    """``cost_matrix(kind="reject")``: 0/1 over the classes and ``reject`` for one more decision,
    no class. Its Bayes decision on a softmax is Chow's rule (reject where the largest probability
    is below ``1 - reject``, else the argmax), checked against the probe's ``bayes_decision``; the
    user's metric on one output more prices the argmax as a loop does; and UniLoss on it never
    raises the reject output's score (the best configuration decides each sample's label, which is
    never the reject): the reject page's prediction, as an invariant of the decomposition."""
    import uniloss

    bench = _benchmark("cost_sensitive_probe")
    cost = bench.cost_matrix(3, kind="reject", reject=reject)
    assert cost.shape == (10, 11) and torch.equal(cost, bench.cost_matrix(4, kind="reject", reject=reject))
    assert torch.equal(cost[:, :10], 1 - torch.eye(10)) and bool((cost[:, 10] == reject).all())
    g = torch.Generator().manual_seed(int(10 * reject))
    logits = 2 * torch.randn(400, 10, generator=g)
    p = logits.double().softmax(1)
    chow = torch.where(p.max(1).values < 1 - reject, torch.tensor(10), p.argmax(1))
    decided = bench.bayes_decision(logits, cost)
    assert torch.equal(decided, chow) and 0 < int((decided == 10).sum()) < 400
    scores = (3 * torch.randn(64, 11, generator=g)).requires_grad_()
    target = torch.randint(0, 10, (64,), generator=g)
    loop = sum(float(cost[int(t), int(row.argmax())]) for row, t in zip(scores.detach(), target)) / 64
    assert float(bench.mean_cost_metric(cost)(scores.detach(), target)) == pytest.approx(loop, rel=1e-6)
    assert bool((scores.detach().argmax(1) == 10).any())  # some samples start out rejected
    decomposition = uniloss.from_metric(bench.mean_cost_metric(cost), higher_is_better=False)
    uniloss.UniLoss(decomposition)(scores, target).backward()
    assert bool((scores.grad[:, 10] >= 0).all()) and float(scores.grad[:, 10].sum()) > 0


def test_the_cost_probe_tables_a_reject_option_and_skips_a_decision_it_has_not(monkeypatch, capsys):
    """``--cost reject``: each job carries the reject's price, the table adds the share rejected
    (one row's share, 25%, as given), and a row whose decision no run has (the Bayes decision of a
    loss trained on eleven outputs) is skipped with a word rather than ending the run. The runs are
    stubbed: this checks the table, not the training."""
    bench = _benchmark("cost_sensitive_probe")
    seen = []

    def fake_runs(fn, jobs, processes):
        seen.extend(jobs)
        score = lambda c, r: {"cost": c, "accuracy": 0.8, "classes": 11, "rejected": r}  # noqa: E731
        return {job: ({"argmax": score(0.11, 0.0), "bayes": score(0.07, 0.25)} if job[0] == "ce"
                      else {"argmax": score(0.10, 0.0)}) for job in jobs}

    monkeypatch.setattr(bench, "run_jobs", fake_runs)
    bench.main(["--quick", "--cost", "reject", "--reject-cost", "0.3", "--losses", "ce", "expected-cost",
                "--versus", "ce:bayes"])
    out = capsys.readouterr().out
    assert {job[-1] for job in seen} == {"reject:0.3"}
    assert "| rejected % at it |" in out and "| 25.00 ± 0.00 |" in out
    assert "Bayes decision on its softmax: no rate scored it, so no row" in out
    assert "| expected cost under the softmax, argmax |" in out


def test_every_loss_the_cost_probe_trains_has_a_row():
    """A loss ``--losses`` accepts but no row of ``ROWS`` scores trains for nothing (the deployed
    page's first grid lost its ``pull=0`` runs so); every row names a loss it can train."""
    bench = _benchmark("cost_sensitive_probe")
    losses = bench.TRAINED + bench.DECODED + bench.EXTRA + bench.DEPLOYED + bench.PLAIN
    assert {row[1] for row in bench.ROWS} == set(losses) and len(set(losses)) == len(losses)


def test_the_cost_probe_refuses_a_reference_row_it_does_not_train(capsys):
    """``--versus LOSS:DECISION`` names the row the paired column compares with; one the losses
    trained do not score is refused before any training, with the rows that could be named."""
    bench = _benchmark("cost_sensitive_probe")
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--losses", "uniloss", "expected-cost", "--versus", "ce:bayes"])
    err = capsys.readouterr().err
    assert "--versus ce:bayes" in err and "expected-cost:bayes" in err and "uniloss:argmax" in err


@pytest.mark.parametrize("seed", range(3))
def test_the_deployed_cost_is_the_cost_of_the_bayes_decision_and_traces_to_its_comparisons(seed):
    """The deployed-decision page's rows: ``bayes_cost_metric`` prices the Bayes decision (against a
    loop over each sample's expected costs), ``from_metric`` finds the argmin of those expected
    costs (the target's against each other class's) and its decomposition prices the batch as the
    user's code does. Fails if the decision read is the argmax, or the cost's rows and columns
    swap."""
    import uniloss

    bench = _benchmark("cost_sensitive_probe")
    cost = bench.cost_matrix(seed)
    g = torch.Generator().manual_seed(seed)
    scores, target = 2 * torch.randn(64, 10, generator=g), torch.randint(0, 10, (64,), generator=g)
    loop = sum(float(cost[int(t), _least_expected_cost(row, cost)]) for row, t in zip(scores.double(), target)) / 64
    metric = bench.bayes_cost_metric(cost)
    assert float(metric(scores, target)) == pytest.approx(loop, rel=1e-6)
    assert float(metric(scores, target)) != pytest.approx(float(bench.mean_cost_metric(cost)(scores, target)))
    decomposition = uniloss.from_metric(metric, higher_is_better=False)
    assert "argmin" in decomposition.explain(scores, target) and "Argmax(pairs='target')" in decomposition.explain(
        scores, target)
    assert float(decomposition.metric(scores, target)) == pytest.approx(loop, rel=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_the_operating_point_score_is_the_zoo_metric_it_trains(seed):
    # metric_wins.operating_point reads scikit-learn's curve; the zoo's metrics decode ranks
    # (tests/test_zoo.py and the shared tester check them against scikit-learn and a loop over
    # thresholds): one value on untied scores.
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(300, generator=g, dtype=torch.float64)
    labels = (torch.rand(300, generator=g) < 0.1 + 0.3 * torch.sigmoid(2 * scores)).long()
    for level in (0.3, 0.6, 0.8):
        assert M.operating_point(scores, labels, level, of_recall=True) == pytest.approx(
            float(uniloss.zoo.recall_at_precision(level).metric(scores, labels)), abs=1e-12)
        assert M.operating_point(scores, labels, level, of_recall=False) == pytest.approx(
            float(uniloss.zoo.precision_at_recall(level).metric(scores, labels)), abs=1e-12)
    # by hand: the cuts below the 1st, 2nd and 3rd positive have precision 1, 2/3, 3/5 and recall 1/3, 2/3, 1
    scores, labels = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5]), torch.tensor([1, 0, 1, 0, 1])
    assert M.operating_point(scores, labels, 0.6, of_recall=True) == 1.0
    assert M.operating_point(scores, labels, 0.7, of_recall=True) == pytest.approx(1 / 3)
    assert M.operating_point(scores, labels, 0.5, of_recall=False) == pytest.approx(2 / 3)
    assert M.operating_point(scores, torch.tensor([0, 0, 0, 1, 0]), 0.5, of_recall=True) == 0.0  # best cut: 1/4


def test_the_operating_point_probes_train_their_metric_or_ap_and_score_the_point(monkeypatch):
    # the probe's UniLoss row trains the operating point's zoo metric, its extra row ("uniloss-ap")
    # the zoo's AP; both are scored by operating_point on the test split
    trained = []
    monkeypatch.setattr(M, "_uniloss",
                        lambda decomposition, *args: trained.append(decomposition) or (lambda s, y: s.sum()))
    monkeypatch.setattr(M, "fit", lambda model, opt, batches, step, epochs, evaluate, sched: [evaluate(model)])
    scored = []
    monkeypatch.setattr(M, "operating_point", lambda s, y, level, of_recall: scored.append((level, of_recall)) or 0.5)
    assert M.run_imbalanced("recall-at-p80", "uniloss", 0, True, {}) == [0.5]
    assert M.run_imbalanced("precision-at-r60", "uniloss-ap", 0, True, {}) == [0.5]
    assert [repr(d.evaluator) for d in trained] == ["recall_at_precision(min_precision=0.8)", "average_precision()"]
    assert scored == [(0.8, True), (0.6, False)]


def test_the_push_probe_finds_every_loss_at_the_pulls_total_push(tmp_path):
    # benchmarks/push_concentration.py: the step rule gives UniLoss's step the pull's total push,
    # binary cross-entropy's on these margins, so every row's total equals BCE's; what differs is
    # the largest push on one score, BCE's own row 1.0x
    out = tmp_path / "push.md"
    _benchmark("push_concentration").main(["--batches", "128", "--samples", "2", "--out", str(out)])
    rows = [line.split(" | ") for line in out.read_text().splitlines() if line.startswith("| 128 |")]
    assert [row[1] for row in rows] == [
        "binary cross-entropy", "UniLoss, zoo.average_precision()", "UniLoss, zoo.recall_at_precision(0.8)",
        "UniLoss, zoo.precision_at_recall(0.6)"]
    totals = [float(row[2]) for row in rows]
    assert all(t == pytest.approx(totals[0], rel=0.02) for t in totals)
    assert rows[0][4] == "1.0x" and float(rows[2][4].rstrip("x")) > 1.0


@pytest.mark.parametrize("make, batch", [
    (lambda: uniloss.zoo.recall_at_precision(0.8), "binary"), (lambda: uniloss.AveragePrecision(), "binary"),
    (lambda: uniloss.MulticlassAccuracy(), "classes")])
def test_the_euclidean_step_probe_keeps_the_direction_at_the_pulls_euclidean_size(make, batch):
    # --variant '{"euclidean_step": true}': the defaults' gradient, rescaled so that its norm on the
    # scores is the pull's (binary cross-entropy, cross-entropy: the defaults' pulls here)
    g = torch.Generator().manual_seed(3)
    if batch == "binary":
        base, target = torch.randn(128, generator=g), (torch.rand(128, generator=g) < 0.1).long()
        target[0] = 1
        usual = lambda s: torch.nn.functional.binary_cross_entropy_with_logits(s, target.float())  # noqa: E731
    else:
        base, target = torch.randn(32, 10, generator=g), torch.randint(0, 10, (32,), generator=g)
        usual = lambda s: torch.nn.functional.cross_entropy(s, target)  # noqa: E731
    w = torch.nn.Parameter(torch.ones(()))
    probe = M._uniloss(make(), 0, {M.EUCLIDEAN_STEP: True})
    scores = base * w
    step = torch.autograd.grad(probe(scores, target), scores)[0]
    leaf = base.clone().requires_grad_()
    default = torch.autograd.grad(uniloss.UniLoss(make())(leaf, target), leaf)[0]
    leaf = base.clone().requires_grad_()
    pull = torch.autograd.grad(usual(leaf), leaf)[0]
    assert float(torch.nn.functional.cosine_similarity(step.reshape(-1), default.reshape(-1), 0)) > 1 - 1e-6
    assert float(step.norm()) == pytest.approx(float(pull.norm()), rel=1e-5)
    assert float(default.abs().sum()) == pytest.approx(float(pull.abs().sum()), rel=1e-3)  # the step rule's size
    assert M.parse_variant('e={"euclidean_step": true}') == ("e", {"euclidean_step": True})


@pytest.mark.parametrize("key, other", [(M.SIZE_OF, "lovasz"), (M.DIRECTION_OF, "lovasz"), (M.SIZE_OF, "ce")])
def test_the_segmentation_step_probes_take_one_losss_direction_at_the_others_size(monkeypatch, key, other):
    # --variant '{"size_of": "lovasz"}': UniLoss's gradient on the logits at Lovász-softmax's
    # Euclidean norm, batch by batch; '{"direction_of": "lovasz"}': the converse
    g = torch.Generator().manual_seed(5)
    x, masks = torch.zeros(6, 1, 28, 28), torch.randint(0, 11, (6, 28, 28), generator=g)
    monkeypatch.setattr(M, "noisy_masks", lambda split, count, seed, **kwargs: (x, masks))
    steps = []
    monkeypatch.setattr(M, "fit", lambda model, opt, batches, step_loss, *args, **kwargs: steps.append(step_loss) or [0.5])
    assert M._run_job(M.Job("seg-miou-digits", "UniLoss, p", "variant", "uniloss", 0, options={key: other}),
                      quick=True)["final"] == 0.5
    base = torch.randn(6, 11, 28, 28, generator=g)
    leaf = base.clone().requires_grad_()
    step = torch.autograd.grad(steps[0](lambda _: leaf * 1.0, torch.arange(6)), leaf)[0]
    leaf = base.clone().requires_grad_()
    ours = torch.autograd.grad(uniloss.UniLoss(zoo.mean_iou(11))(leaf, masks), leaf)[0]
    leaf = base.clone().requires_grad_()
    theirs = torch.autograd.grad(M.SEGMENTATION_LOSSES[other](leaf, masks), leaf)[0]
    direction, size = (ours, theirs) if key == M.SIZE_OF else (theirs, ours)
    assert float(torch.nn.functional.cosine_similarity(theirs.reshape(-1), ours.reshape(-1), 0)) < 1 - 1e-3
    assert float(torch.nn.functional.cosine_similarity(step.reshape(-1), direction.reshape(-1), 0)) > 1 - 1e-6
    assert float(step.norm()) == pytest.approx(float(size.norm()), rel=1e-5)
    if other == "lovasz":  # (the sizes differ: a real swap; cross-entropy's is near the step rule's)
        assert float(ours.norm()) != pytest.approx(float(theirs.norm()), rel=0.5)


@pytest.mark.parametrize("mode", M.CHAIN_STEPS)
@pytest.mark.parametrize("make, batch", [
    (lambda: uniloss.zoo.mean_iou(3), "pixels"), (lambda: uniloss.AveragePrecision(), "binary")])
def test_the_chain_step_probe_keeps_the_direction_at_the_chains_total_push(make, batch, mode):
    # --variant '{"chain_step": "chain"}': the defaults' gradient on the scores at the L1 norm of
    # UniLoss(pull=0)'s; "max": at the larger of that and the defaults' own
    g = torch.Generator().manual_seed(4)
    if batch == "pixels":
        base, target = torch.randn(4, 3, 6, 6, generator=g) * 3, torch.randint(0, 3, (4, 6, 6), generator=g)
    else:
        base, target = torch.randn(64, generator=g) * 3, (torch.rand(64, generator=g) < 0.2).long()
    leaf = base.clone().requires_grad_()
    step = torch.autograd.grad(M._uniloss(make(), 0, {M.CHAIN_STEP: mode})(leaf, target), leaf)[0]
    grads = []
    for options in ({}, {"pull": 0}):
        leaf = base.clone().requires_grad_()
        grads.append(torch.autograd.grad(uniloss.UniLoss(make(), **options)(leaf, target), leaf)[0])
    default, chain = grads
    assert float(torch.nn.functional.cosine_similarity(step.reshape(-1), default.reshape(-1), 0)) > 1 - 1e-6
    assert float(torch.nn.functional.cosine_similarity(chain.reshape(-1), default.reshape(-1), 0)) < 1 - 1e-3
    sizes = sorted([float(default.abs().sum()), float(chain.abs().sum())])
    assert sizes[1] > 1.2 * sizes[0]  # (the two sizes differ: the rescaling is seen)
    wanted = float(chain.abs().sum()) if mode == "chain" else sizes[1]
    assert float(step.abs().sum()) == pytest.approx(wanted, rel=1e-5)


def test_the_segmentation_step_probes_refuse_what_they_cannot_do():
    assert M.parse_variant('p={"size_of": "lovasz"}') == ("p", {"size_of": "lovasz"})
    with pytest.raises(ValueError, match="not one of"):
        M.parse_variant('p={"direction_of": "dice"}')
    with pytest.raises(ValueError, match="only the segmentation tasks"):
        M._uniloss(uniloss.AveragePrecision(), 0, {M.SIZE_OF: "ce"})
    with pytest.raises(ValueError, match="not both"):
        M.run_segmentation("uniloss", 0, True, {M.SIZE_OF: "ce", M.DIRECTION_OF: "lovasz"})
    with pytest.raises(ValueError, match="not one of"):
        M._uniloss(uniloss.AveragePrecision(), 0, {M.CHAIN_STEP: "pull"})
    assert M.parse_variant('c={"chain_step": "max"}') == ("c", {"chain_step": "max"})
    with pytest.raises(ValueError, match="not one of"):
        M.parse_variant('c={"chain_step": "pull"}')  # in the parent, not in a worker


def test_the_centred_queries_probe_takes_each_querys_mean_out_of_the_scores():
    seen = []
    fn = M._centred_queries(lambda scores, target: seen.append(scores) or scores.sum())
    scores = torch.tensor([1.0, 3.0, 10.0, 2.0, 20.0], requires_grad=True)
    query = torch.tensor([7, 7, -2, 7, -2])  # ids of any values, items of a query not contiguous
    fn(scores, RankingTarget(torch.tensor([1, 0, 1, 0, 0]), query)).backward()
    torch.testing.assert_close(seen[-1], torch.tensor([-1.0, 1.0, -5.0, 0.0, 5.0]))
    torch.testing.assert_close(scores.grad, torch.zeros(5))  # the sum of centred scores has no level
    fn(torch.tensor([1.0, 2.0, 6.0]), RankingTarget(torch.tensor([1, 0, 0])))  # no query ids: one query
    torch.testing.assert_close(seen[-1], torch.tensor([-2.0, -1.0, 3.0]))
    with pytest.raises(TypeError, match="RankingTarget"):
        fn(torch.zeros(3), torch.zeros(3))
    # through the suite's loss factory: the keyword is taken before UniLoss sees the rest
    assert M.parse_variant('c={"centred_queries": true}') == ("c", {"centred_queries": True})
    loss = M._uniloss(zoo.ndcg_at_k(2), 0, {"centred_queries": True})
    plain = M._uniloss(zoo.ndcg_at_k(2), 0, {})
    target = RankingTarget(torch.tensor([1, 0, 0, 1]), torch.tensor([0, 0, 1, 1]))
    shifted = torch.tensor([4.5, 3.0, -1.0, -2.7], requires_grad=True)  # [0.5, -1, 2, 0.3] moved per query
    centred = torch.tensor([0.75, -0.75, 0.85, -0.85], requires_grad=True)
    loss(shifted, target).backward()
    plain(centred, target).backward()
    # the pull (binary cross-entropy on each score) reads the level: the gradient is the plain
    # loss's at the centred scores, itself centred per query
    g = centred.grad
    torch.testing.assert_close(shifted.grad, g - torch.stack([g[:2].mean()] * 2 + [g[2:].mean()] * 2))
    assert not torch.allclose(shifted.grad, (lambda x: torch.autograd.grad(plain(x, target), x)[0])(
        shifted.detach().requires_grad_()))
