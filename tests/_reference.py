"""Slow, obviously-correct references: loops over anchors, bits, samples and pixels."""

import math

import numpy as np
import torch


def ap_from_scores_loop(scores, labels, interpolated=False):
    """AP by walking the ranking; ``interpolated`` takes the running max of precision from the right."""
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    num_pos = sum(int(labels[i]) for i in order)
    if num_pos == 0:
        return float("nan")
    tp = fp = 0
    precisions = []
    for i in order:
        if int(labels[i]):
            tp += 1
            precisions.append(tp / (tp + fp))
        else:
            fp += 1
    if interpolated:
        for k in range(len(precisions) - 2, -1, -1):
            precisions[k] = max(precisions[k], precisions[k + 1])
    return sum(precisions) / num_pos


def ap_from_bits_loop(bits, num_pos, num_neg, interpolated=False):
    """AP from positive-major pair bits: count negatives above each positive, sort, sum."""
    above = []
    for i in range(num_pos):
        above.append(sum(1 for j in range(num_neg) if not bool(bits[i * num_neg + j])))
    above.sort()
    precisions = [(k + 1) / (k + 1 + a) for k, a in enumerate(above)]
    if interpolated:
        for k in range(len(precisions) - 2, -1, -1):
            precisions[k] = max(precisions[k], precisions[k + 1])
    return sum(precisions) / num_pos


def pck_loop(heatmaps, keypoints, visible, normalizer, threshold):
    """Brute-force PCK: the argmax pixel of each visible heatmap within the radius."""
    n, j, h, w = heatmaps.shape
    hits = total = 0
    for a in range(n):
        for b in range(j):
            if not bool(visible[a, b]):
                continue
            total += 1
            flat = int(torch.argmax(heatmaps[a, b]))
            y, x = divmod(flat, w)
            dist = math.hypot(x - float(keypoints[a, b, 0]), y - float(keypoints[a, b, 1]))
            hits += dist <= threshold * float(normalizer[a])
    return hits / total if total else float("nan")


def untied_scores(shape, generator):
    """Random untied float64 scores: a permutation of the odd multiples of 1/8 centred on 0 (at
    most 255 of them). None is 0 (the threshold metrics' default), and every score and every
    difference of two is exact in bfloat16, so float64, float32 and bfloat16 copies make the same
    decisions and one reference serves them all."""
    numel = math.prod(shape)
    assert numel <= 255, "bfloat16 holds odd numerators up to 255 exactly"
    odd = 2 * torch.randperm(numel, generator=generator).double() + 1 - 2 * (numel // 2)
    return (odd / 8).reshape(shape)


def _relevance_by_rank(scores, relevance):
    """Relevances from the highest score down (untied scores)."""
    return np.asarray(relevance)[np.argsort(-np.asarray(scores, dtype=float))]


def precision_at_k_ref(scores, relevance, k):
    """Relevant items among the ``k`` highest scores, over ``k``."""
    return float(np.count_nonzero(_relevance_by_rank(scores, relevance)[:k] > 0)) / k


def recall_at_k_ref(scores, relevance, k):
    """Relevant items among the ``k`` highest scores, over all relevant items."""
    hits = _relevance_by_rank(scores, relevance) > 0
    return float(hits[:k].sum() / hits.sum())


def reciprocal_rank_ref(scores, relevance):
    """1 / (1-based rank of the highest-scoring relevant item)."""
    return 1.0 / (1 + int(np.flatnonzero(_relevance_by_rank(scores, relevance) > 0)[0]))


def operating_points_loop(scores, relevance):
    """``(precision, recall)`` of every threshold on the scores, each distinct score one (every
    item at or above it predicted relevant), by a loop over the thresholds."""
    scores, relevant = np.asarray(scores, dtype=float), np.asarray(relevance) > 0
    points = []
    for threshold in np.unique(scores):
        kept = scores >= threshold
        hits = int(np.count_nonzero(relevant & kept))
        points.append((hits / int(np.count_nonzero(kept)), hits / int(np.count_nonzero(relevant))))
    return points


def recall_at_precision_ref(scores, relevance, min_precision):
    """The largest recall of a threshold whose precision is at least ``min_precision`` (0 if none)."""
    return max([r for p, r in operating_points_loop(scores, relevance) if p >= min_precision], default=0.0)


def precision_at_recall_ref(scores, relevance, min_recall):
    """The largest precision of a threshold whose recall is at least ``min_recall``."""
    return max(p for p, r in operating_points_loop(scores, relevance) if r >= min_recall)


def mean_over_queries(per_query, scores, relevance, query):
    """``per_query(scores_q, relevance_q)`` averaged over the query ids (numpy arrays in)."""
    scores, relevance, query = (np.asarray(a) for a in (scores, relevance, query))
    return float(np.mean([per_query(scores[query == q], relevance[query == q]) for q in np.unique(query)]))


def idw_loop(u, anchors, values):
    """Shepard's inverse distance weighting, one anchor and one bit at a time (float64 lists)."""
    dists = []
    for a in anchors:
        dists.append(math.sqrt(sum((float(uk) - float(ak)) ** 2 for uk, ak in zip(u, a))))
    for d, v in zip(dists, values):
        if d == 0:
            return float(v)
    num = sum(float(v) / d for d, v in zip(dists, values))
    den = sum(1.0 / d for d in dists)
    return num / den


def uniloss_oracle(scores, target, decomposition, anchors, temperature=1.0):
    """The loss (-g~ for higher-is-better) with an autograd-able loop over anchors and bits."""
    prepared = decomposition.prepare(scores, target)
    c = decomposition.comparisons(scores, prepared)
    u = [torch.sigmoid(ck / temperature) for ck in c]
    with torch.no_grad():
        values = [float(decomposition.evaluate(a[None], prepared)[0]) for a in anchors]
    dists = []
    for a in anchors:
        total = 0.0
        for uk, ak in zip(u, a):
            total = total + (uk - float(ak)) ** 2
        dists.append(torch.sqrt(total))
    num = sum(v / d for v, d in zip(values, dists))
    den = sum(1.0 / d for d in dists)
    g = num / den
    return -g if decomposition.higher_is_better else g


class AboveOne(__import__("uniloss").Decomposition):
    """Recall of ``[s > 1]`` on the positives, from their bits alone (the negatives' bits do not
    count). No structure(): evaluated densely, distances still structured."""

    def comparisons(self, scores, target):
        return scores - 1.0

    def best(self, target):
        return target.bool()

    def evaluate(self, bits, target):
        pos = target.bool()
        return (bits & pos).sum(-1) / pos.sum().clamp_min(1)


def good_flips(decomposition, prepared, num_bits: int) -> int:
    """The bits a good anchor flips, as the engine reads them from ``structure()``."""
    structure = decomposition.structure(prepared)
    return 1 if structure is None else min(structure.good_flips, max(num_bits, 1))


def run_ranks(worker, world: int, folder: str) -> list:
    """Spawn ``world`` processes of ``worker(rank, port, path)`` (each pickles its results to
    ``path.rank``) on a free local port and return the ranks' results in rank order."""
    import pickle
    import socket

    import torch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = f"{folder}/out"
    torch.multiprocessing.spawn(worker, args=(port, path), nprocs=world, join=True)
    results = []
    for rank in range(world):
        with open(f"{path}.{rank}", "rb") as fh:
            results.append(pickle.load(fh))
    return results
