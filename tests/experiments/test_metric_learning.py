"""The metric-learning probe's pieces (uniloss.experiments.metric_learning and
metric_wins.run_metric_learning) against scikit-learn and loops over the pairs."""

import importlib.util
import itertools
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from uniloss.experiments import metric_learning as ML
from uniloss.experiments import metric_wins as M
from uniloss.experiments.data import DatasetNotFoundError

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def _probe(name="metric_learning_probe"):
    """benchmarks/``name``.py as a fresh module (its globals patched per test)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    spec = importlib.util.spec_from_file_location(name, os.path.join(root, "benchmarks", f"{name}.py"))
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    return probe


def _batch(seed, n=12, dim=5, classes=3):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, dim, generator=g), dim=1), torch.randint(0, classes, (n,), generator=g)


def _ap_per_query(e, y):
    """Each sample's AP of the others by cosine similarity (scikit-learn), over queries with a relevant other."""
    s = (e @ e.T).double().numpy()
    aps, hits = [], []
    for q in range(len(y)):
        others = [j for j in range(len(y)) if j != q]
        relevant = [int(y[j] == y[q]) for j in others]
        if sum(relevant):
            aps.append(sklearn_metrics.average_precision_score(relevant, s[q, others]))
            hits.append(relevant[max(range(len(others)), key=lambda k: s[q, others[k]])])
    return sum(aps) / len(aps), sum(hits) / len(hits)


@pytest.mark.parametrize("seed", range(4))
def test_retrieval_metrics_are_scikit_learns_ap_and_the_nearest_others_label(seed):
    e, y = _batch(seed, n=30)
    ap, r1 = ML.retrieval_metrics(e, y, chunk=7)  # in chunks that do not divide the queries
    want_ap, want_r1 = _ap_per_query(e, y)
    assert ap == pytest.approx(want_ap, abs=1e-12) and r1 == pytest.approx(want_r1, abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_smooth_ap_at_a_tiny_temperature_is_one_minus_the_exact_mean_ap(seed):
    e, y = _batch(seed)
    e = e.double()
    assert float(ML.smooth_ap(e, y, temperature=1e-9)) == pytest.approx(1 - _ap_per_query(e, y)[0], abs=1e-9)


def test_smooth_ap_follows_its_formula_at_its_temperature():
    e, y = _batch(7, n=7)
    e = e.double()
    s, n, tau = e @ e.T, len(y), 0.01
    terms = []
    for q in range(n):
        pos = [i for i in range(n) if i != q and y[i] == y[q]]
        if not pos:
            continue
        ap = 0.0
        for i in pos:
            step = {j: torch.sigmoid((s[q, j] - s[q, i]) / tau) for j in range(n) if j not in (q, i)}
            ap += (1 + sum(step[j] for j in pos if j != i)) / (1 + sum(step.values()))
        terms.append(ap / len(pos))
    assert float(ML.smooth_ap(e, y)) == pytest.approx(1 - float(sum(terms) / len(terms)), abs=1e-12)


def test_query_pairs_list_each_queries_others_in_order():
    e, y = _batch(1, n=5)
    s, rel, q = ML.query_pairs(e, y)
    want = [(float(e[a] @ e[b]), int(y[a] == y[b]), a) for a in range(5) for b in range(5) if a != b]
    assert q.tolist() == [w[2] for w in want] and rel.tolist() == [w[1] for w in want]
    torch.testing.assert_close(s, torch.tensor([w[0] for w in want]))


@pytest.mark.parametrize("seed", range(3))
def test_the_pairwise_loss_per_query_is_the_suites_pairwise_logistic_grouped_by_query(seed):
    e, y = _batch(seed)
    s, rel, q = ML.query_pairs(e, y)
    torch.testing.assert_close(ML.pairwise_logistic_per_query(e, y, 20.0), M.pairwise_logistic(20.0 * s, rel, q))


def test_contrastive_and_normalised_softmax_follow_their_formulas():
    e, y = _batch(2)
    pairs = [(float(e[a] @ e[b]), bool(y[a] == y[b])) for a, b in itertools.permutations(range(len(y)), 2)]
    pos = [max(0.0, 1 - s) for s, same in pairs if same]
    neg = [max(0.0, s - 0.25) for s, same in pairs if not same]
    assert float(ML.contrastive(e, y, neg_margin=0.25)) == pytest.approx(sum(pos) / len(pos) + sum(neg) / len(neg),
                                                                        abs=1e-6)
    proxies = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    logits = torch.stack([torch.stack([e[i] @ p / p.norm() for p in proxies]) for i in range(len(y))]) / 0.05
    torch.testing.assert_close(ML.normalized_softmax(e, proxies, y), F.cross_entropy(logits, y))


def test_unseen_classes_deal_five_classes_to_training_and_hold_the_other_five_out():
    try:
        a, b = ML.unseen_classes(0), ML.unseen_classes(1)
    except DatasetNotFoundError as exc:  # data absent: the loader's own tests cover the message
        pytest.skip(str(exc))
    from uniloss.experiments.data import load_fashion_mnist

    test = load_fashion_mnist("test")
    for split in (a, b):
        assert sorted(set(split.y_train.tolist())) == [0, 1, 2, 3, 4] and len(split.y_train) == 30_000
        unseen, seen = set(split.y_unseen.tolist()), set(split.y_seen.tolist())
        assert len(unseen) == len(seen) == 5 and not unseen & seen and len(split.y_unseen) == len(split.y_seen) == 5000
        first = test.images[test.labels == split.y_unseen[0]][0].float().reshape(-1) / 255.0
        mean, std = first.mean(), first.std()  # (the standardisation is an affine map of the pixels)
        torch.testing.assert_close(F.normalize(split.x_unseen[0] - split.x_unseen[0].mean(), dim=0),
                                   F.normalize((first - mean) / std, dim=0))
    assert set(a.y_unseen.tolist()) != set(b.y_unseen.tolist())  # another deal


def test_run_metric_learning_trains_each_loss_and_records_the_four_scores(monkeypatch):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 10
    x = torch.randn(60, 784, generator=g) + 3 * F.one_hot(y, 784).float()  # each class a direction of its own
    split = ML.ClassSplit(x[:40][y[:40] < 5], y[:40][y[:40] < 5], x[40:][y[40:] >= 5], y[40:][y[40:] >= 5],
                          x[40:][y[40:] < 5], y[40:][y[40:] < 5])
    monkeypatch.setattr(ML, "unseen_classes", lambda draw, source="fashion": split)
    built = []
    for loss in ("contrastive", "normsoftmax", "smooth-ap", "pairwise", "uniloss", "uniloss-cos", "uniloss-offset",
                 "uniloss-centred"):
        record = []
        curve = M.run_metric_learning(loss, 0, True, {}, epochs=2, batch=8, record=record, trained=built)
        assert len(curve) == 2 and [r["map"] for r in record] == curve
        assert set(record[-1]) == {"map", "r1", "map-seen", "r1-seen"}
        assert all(0 <= v <= 1 for v in record[-1].values()), (loss, record)
        # the learnt threshold moves only where it is subtracted from the scores
        assert (float(built[-1].offset.detach()) != 0.0) == (loss == "uniloss-offset"), loss
    with pytest.raises(ValueError, match="unknown loss"):
        M.run_metric_learning("triplet", 0, True, {})


def test_the_probe_reports_each_loss_at_its_best_rate_for_each_score(tmp_path, monkeypatch):
    probe = _probe()
    # a loss's scores: the rate's scale for the held-out mAP, its reverse for recall@1
    fake = {"contrastive": 0.1, "normsoftmax": 0.2, "smooth-ap": 0.3, "pairwise": 0.4, "uniloss": 0.5,
            "uniloss-cos": 0.6}
    monkeypatch.setattr(probe, "_one", lambda job: {"map": fake[job[0]] + job[1] / 10 + job[2] / 100,
                                                    "r1": fake[job[0]] - job[1] / 10, "map-seen": 0.5, "r1-seen": 0.5})
    monkeypatch.setattr(probe, "_pixels", lambda draw: {"map": 0.3, "r1": 0.4, "map-seen": 0.5, "r1-seen": 0.6})
    out = str(tmp_path / "ml")
    report = probe.main(["--jobs", "1", "--draws", "0", "1", "--lr-scales", "0.5", "1", "--out", out])
    assert report["best_scale"]["map"]["uniloss"] == 1.0 and report["best_scale"]["r1"]["uniloss"] == 0.5
    cell = report["per_scale"]["uniloss"]["1.0"]["map"]
    assert cell["per_draw"] == pytest.approx([0.6, 0.61]) and cell["mean"] == pytest.approx(0.605)
    text = open(out + ".md").read()
    assert "| contrastive | 20.50 ± 0.71 (x1) | 20.00 21.00 | +40.00 ± 0.00 (2 of 2 ahead) |" in text
    assert "raw pixels (no training) | 30.00 ± 0.00" in text


def test_the_probe_trains_only_the_rows_asked_for(tmp_path, monkeypatch):
    probe = _probe()
    trained = []
    monkeypatch.setattr(probe, "_one", lambda job: trained.append(job[0]) or dict.fromkeys(("map", "r1", "map-seen",
                                                                                              "r1-seen"), 0.5))
    monkeypatch.setattr(probe, "_pixels", lambda draw: dict.fromkeys(("map", "r1", "map-seen", "r1-seen"), 0.5))
    report = probe.main(["--jobs", "1", "--draws", "0", "--lr-scales", "2", "--losses", "smooth-ap", "uniloss-cos",
                         "uniloss-offset", "--variant", 'cmp={"pull_per": "comparison"}', "--out", str(tmp_path / "edges")])
    assert sorted(set(trained)) == ["cmp", "smooth-ap", "uniloss-cos", "uniloss-offset"]
    assert sorted(report["per_scale"]) == sorted(set(trained))
    assert report["options"]["cmp"] == {"pull_per": "comparison"} and report["options"]["smooth-ap"] == {}
    text = open(tmp_path / "edges.md").read()
    assert "| Smooth-AP | 50.00 ± 0.00 (x2) | 50.00 |  |" in text and "| UniLoss, cmp (scores cos / 0.05) |" in text


def test_a_variants_keywords_reach_uniloss(monkeypatch):
    probe = _probe()
    seen = []
    monkeypatch.setattr(M, "run_metric_learning", lambda loss, seed, quick, options, **kw: seen.append(
        (loss, options, kw["draw"], M._LR_SCALE)) or kw["record"].append({"map": 0.5}))
    assert probe._one(("cmp", 0.25, 3, 5, "uniloss", '{"pull_per": "comparison"}')) == {"map": 0.5}
    assert seen == [("uniloss", {"pull_per": "comparison"}, 3, 0.25)]


def test_the_geometry_script_reads_the_trained_embeddings_cosines(tmp_path, monkeypatch):
    geometry = _probe("metric_learning_geometry")
    g = torch.Generator().manual_seed(0)
    y = torch.arange(30) % 3
    x = torch.randn(30, 784, generator=g)
    split = ML.ClassSplit(x, y, x, y, x, y)
    monkeypatch.setattr(ML, "unseen_classes", lambda draw, source="fashion": split)
    model = ML.Embedder(torch.nn.Linear(784, 4), 3, 4)
    with torch.no_grad():
        model.offset.fill_(3.0)
    seen = []
    monkeypatch.setattr(M, "run_metric_learning", lambda loss, seed, quick, options, **kw: seen.append(
        (loss, options, kw["draw"], kw["epochs"], M._LR_SCALE)) or kw["trained"].append(model))
    report = geometry.main(["--runs", "uniloss-offset@0.5", 'uniloss@2@{"pull_per": "comparison"}', "--jobs", "1",
                            "--draw", "3", "--epochs", "1", "--out", str(tmp_path / "geo")])
    assert seen == [("uniloss-offset", {}, 3, 1, 0.5), ("uniloss", {"pull_per": "comparison"}, 3, 1, 2.0)]
    with torch.no_grad():
        e = model(x)
    cos = e @ e.T  # every ordered pair of distinct images, split by whether they share a class
    relevant = [float(cos[i, j]) for i in range(30) for j in range(30) if i != j and y[i] == y[j]]
    irrelevant = [float(cos[i, j]) for i in range(30) for j in range(30) if y[i] != y[j]]
    run = report["runs"][0]
    assert run["offset"] == 3.0 and run["map_seen"] == pytest.approx(ML.retrieval_metrics(e, y)[0])
    assert run["relevant"] == pytest.approx(list(np.quantile(relevant, [0.05, 0.5, 0.95])), abs=1e-5)
    assert run["irrelevant"] == pytest.approx(list(np.quantile(irrelevant, [0.05, 0.5, 0.95])), abs=1e-5)
    text = open(tmp_path / "geo.md").read()
    assert "| uniloss | 2 | {\"pull_per\": \"comparison\"} |" in text and "| 3.00 (0.150) |" in text


def test_the_centred_row_takes_each_querys_mean_out_of_the_scores(monkeypatch):
    g = torch.Generator().manual_seed(1)
    y = torch.arange(24) % 3
    x = torch.randn(24, 784, generator=g)
    split = ML.ClassSplit(x[:16], y[:16], x[16:], y[16:], x[16:], y[16:])
    monkeypatch.setattr(ML, "unseen_classes", lambda draw, source="fashion": split)
    fed = []

    def recorder(metric, seed, options):
        def loss(scores, target):
            fed.append((scores.detach(), target.query))
            return (scores - 1).pow(2).mean()
        return loss

    monkeypatch.setattr(M, "_uniloss", recorder)
    for loss in ("uniloss", "uniloss-centred"):
        fed.clear()
        M.run_metric_learning(loss, 0, True, {}, epochs=1, batch=8)
        assert fed
        for scores, query in fed:
            means = torch.zeros(int(query.max()) + 1).index_add_(0, query, scores) / torch.bincount(query)
            if loss == "uniloss-centred":
                torch.testing.assert_close(means, torch.zeros_like(means), atol=1e-5, rtol=0)
            else:
                assert means.abs().max() > 1e-3  # the scaled cosines keep their level
