"""Fuzz every built-in and zoo metric on small, degenerate and saturated inputs.

    python benchmarks/fuzz_degenerate.py SECONDS SEED             # e.g. 300 3: about 70,000 cases
    python benchmarks/fuzz_degenerate.py SECONDS SEED --static    # static layout == exact layout
    python benchmarks/fuzz_degenerate.py SECONDS SEED --paths     # structured == dense, same anchors
    python benchmarks/fuzz_degenerate.py SECONDS SEED --chunks    # PCK block by block == in one piece
    python benchmarks/fuzz_degenerate.py SECONDS SEED --wrappers  # GlobalBatch (one process, also static) == plain
    python benchmarks/fuzz_degenerate.py SECONDS SEED --chain     # the chain == its evaluated reference
    python benchmarks/fuzz_degenerate.py SECONDS SEED --static --large   # batches of 64-300, 12-16 px heatmaps
Each case draws a metric (AP, accuracy and its options, PCK, the zoo's binary, ranking,
multi-class, segmentation and keypoint metrics, and three ``uniloss.from_metric`` ones), a batch of 1 to 33, scores that are normal,
saturated (x30 to x3000), rounded (ties), constant or tiny, float32 / float64 / bfloat16 / float16, labels
that are random, all negative or all positive, and a random subset of the loss's options. An input
the metric refuses with a ValueError or TypeError is skipped (a clear error is the contract). It
checks: a 0-dim finite loss, a finite gradient, and ``last.metric`` equal to ``metric()`` (read after
the backward pass; every other case's scores are a non-leaf, as a model's output, whose
``last.metric`` is computed on that first read); prints a
line per failure with the case and a summary. On 2026-12-01 it found the two bugs that
``tests/test_degenerate_scales.py`` holds (``temperature_scale="rms"`` on constant scores,
``grad_scale="normalized"`` on saturated ones: 216 failures in 55,980 cases); after the fix,
0 in 68,750 (``300 3``). float16, drawn from 2026-12-01's second session on, found a third: the
RMS temperature of float16 comparisons of about 1e-6 (relaxed in float32) gave gradients of about
1e6, beyond float16's range (67 failures in 12,712 float16-only cases, all with ``"rms"``); the
unit is now floored at the scores' dtype's ``sqrt(tiny)`` too (0 in 19,756 float16-only cases).
The ``from_metric`` cases draw tied and constant scores too since ``last.metric`` is ``fn``'s own
value. With both, 90 seconds a mode, seed 31 (``90 31 [MODE]``): 0 failures in 19,704 cases
(finite), 11,254 (``--static``), 9,802 (``--paths``), 4,378 PCK cases (``--chunks``) and 4,614
(``--wrappers``).

``--static``: each case in float64 twice, under a CPU's exact layout and under the accelerators'
static layout (``cpu_static_max_bits`` raised), which must give the same loss, gradient, metric
and number of comparisons. It found PCK's pull per run counting only the runs that hold a
comparison in the static layout where the exact one counts every positive pixel (a joint whose
disc covers the heatmap: 9 failures in 16,142 cases; 0 in 32,876 after, ``240 5 --static``).

``--paths``: the structured engine against the dense one on the same anchors (drawn once, kinds
kept), without ``grad_scale="normalized"``: where the interpolation's push is zero (every anchor
has one value) the closed form gives exactly 0 and autograd a rounding residue, which that scale
multiplies up to a unit push (2-3 cases in 16,000 when it was drawn). ``--chunks``: PCK with
``chunk_bits`` of 4-64 (block by block) against the default (one piece). ``--wrappers``:
``GlobalBatch`` without a process group against the plain metric, and three calls of a
``CrossBatchMemory``, finite. On 2026-12-01, 120 seconds each with seed 11 (``120 11
[MODE]``), two runs at a time on the 2-core CPU, 0 failures in every mode: 27,185 cases (finite),
17,832 (``--static``), 13,707 (``--paths``), 6,232 PCK cases (``--chunks``) and 7,231
(``--wrappers``). ``tests/test_fuzz_smoke.py`` runs a fixed sample of each mode (seed 2026).

With the chain as the default (0.8), ``240 48 --static`` found 55 failures in 47,195 cases: 52
were two bugs of the chain in a static layout (its padding walked at the opposite of its best
value where the chain is evaluated with ``evaluate``: the zoo's ranking metrics with query ids;
AP interpolated at every point of the chain in the static layout and 256 in the exact one; both
fixed, ``tests/test_no_sync.py``). After the fix the same seed (65,052 cases in 240 seconds on a
quieter machine) gives 4 failures (#6946, #25468, #30283, #43962), which are not bugs: scores rounded from bfloat16 give exactly tied comparisons, and PyTorch's
vectorised sigmoid and its scalar tail round one of them an ulp apart at lengths where the two
layouts differ, so the chain orders the tie differently in each; the gains of the two tied
comparisons swap (both orders are the extension's at a tie), the loss is equal. ``240 47``
(finite), ``200 49 --paths``, ``200 50 --wrappers``, ``240 51 --chunks``: 0 failures in 75,868,
50,427, 25,714 and 33,587 cases (2026-12-01, two runs at a time).

``--chain`` (new then): the chain's one-node loss and gradient without the pull, from the
metric's closed forms (AP's gains, accuracy's and PCK's runs, the zoo's class counts, AP
interpolated's runs' counts), against :func:`uniloss._interpolation.chain_extension` with the
metric evaluated at every point and differentiated by autograd. ``240 7 --chain`` and ``240 8
--chain``: 0 failures in 119,396 and 118,513 checked cases (gradients within 1e-6: ``evaluate``
counts AP in float32); with AP's gains scaled by 0.9 it fails 7 of the first 309.

``--large`` (new then) draws batches of 64, 182 and 300 and heatmaps of 12 and 16 pixels, where
the layouts switch representation (AP's static layout counts its runs by their ends from 182
samples on, its padding past them). ``300 71 --static --large`` raised in 61 of 18,123 cases, all
AP with the anchors at 182 or 300 samples: a batch without a positive (every bit padding, past
every run's end) and a call with no random anchor (nothing to count by the runs' ends); with
AP interpolated's chain found by a hand-made sweep the same day, fixed (the padding counted in
the last run, an empty count of nothing), ``tests/test_no_sync.py``. After: ``240 71 --static
--large`` 0 failures in 14,134 cases, ``300 72 --large`` (finite) 0 in 57,721, ``240 73 --chain
--large`` 0 in 1,991, ``200 81 --paths --large`` 0 in 38,753, ``200 82 --wrappers --large`` 0 in
7,180, ``200 83 --chunks --large`` 0 in 18,681 PCK cases, ``200 84 --static`` 0 in 62,810.
``--wrappers`` also checks ``GlobalBatch`` in a static layout against the plain metric in the
exact one (0 failures in the first 3,000 cases of seed 5).

On 2026-12-06 (two runs side by side): ``300 61`` (finite) 0 failures in 174,204 cases; ``300 62
--chain`` one gradient mismatch (1.1e-4) in 145,268 checked cases, #84200, AP per query of
bfloat16 scores where one relevant item is compared with two irrelevant ones of one score. Two
comparisons of one value are a kink of the extension: the chain may walk them in either order,
both orders' gradients are the extension's, and the loss is the same (1e-9 between the two
scores and the check holds; ``tests/test_fuzz_smoke.py``). ``--chain`` now reports a gradient
mismatch where two comparisons' magnitudes coincide as ``TIE``, counted apart from the failures."""

import math
import random
import sys
import time
import warnings

import torch

import uniloss
from uniloss import functional as F
from uniloss import zoo
from uniloss._limits import limits
from uniloss.decoders import RankingTarget
from uniloss.distributed import CrossBatchMemory, GlobalBatch

torch.set_num_threads(1)
warnings.simplefilter("ignore")


def labels_binary(n, g, mode):
    """``[n]`` 0/1 labels: none positive, all positive, or a random share of 5%, 30% or 70%."""
    if mode == "none":
        return torch.zeros(n, dtype=torch.long)
    if mode == "all":
        return torch.ones(n, dtype=torch.long)
    return (torch.rand(n, generator=g) < random.choice([0.05, 0.3, 0.7])).long()


def scores_of(shape, g, mode, dtype):
    """Scores: normal, saturated (x30-x3000), rounded (ties), constant or tiny (x1e-6)."""
    s = torch.randn(*shape, generator=g, dtype=torch.float64)
    if mode == "sat":
        s = s * random.choice([30.0, 300.0, 3000.0])
    elif mode == "tie":
        s = torch.round(s)
    elif mode == "const":
        s = torch.zeros(shape, dtype=torch.float64) + 0.5
    elif mode == "tiny":
        s = s * 1e-6
    return s.to(dtype)


def _traced_accuracy(s, y):
    return (s.argmax(1) == y).float().mean()


def _traced_f1(s, y):  # through a sigmoid, which the tracer looks through
    p, t = torch.sigmoid(s) > 0.5, y.bool()
    return 2 * (p & t).sum().float() / (p.sum() + t.sum()).float().clamp_min(1)


def _traced_precision_at_2(s, y):
    return y[s.topk(min(2, s.numel())).indices].float().mean()


TRACED = {"accuracy": uniloss.from_metric(_traced_accuracy), "f1": uniloss.from_metric(_traced_f1),
          "precision@2": uniloss.from_metric(_traced_precision_at_2)}


# Batch sizes and heatmap sides drawn (``--large``: sizes where layouts switch representation, e.g.
# AP's static layout counts its runs by their ends from 182 samples on).
SIZES, HEATMAPS = [1, 2, 3, 4, 7, 16, 33], [4, 6]
LARGE_SIZES, LARGE_HEATMAPS = [64, 182, 300], [12, 16]


def case(g):
    """``(decomposition, scores, target)`` of a random family, size, score mode, dtype and labels."""
    fam = random.choice(["ap", "acc", "pck", "binary", "ranking", "multiclass", "seg", "zpck", "traced"])
    n = random.choice(SIZES)
    if fam == "traced":  # (float32 and float64; ties and constants since last.metric is fn's own value)
        name = random.choice(list(TRACED))
        dtype = random.choice([torch.float32, torch.float64])
        smode = random.choice(["normal", "normal", "sat", "tiny", "tie", "const"])
        if name == "accuracy":
            C = random.choice([2, 3, 5])
            return TRACED[name], scores_of((n, C), g, smode, dtype), torch.randint(0, C, (n,), generator=g)
        scores = scores_of((n,), g, smode, dtype)
        return TRACED[name], scores, labels_binary(n, g, random.choice(["rand", "none", "all"]))
    smode = random.choice(["normal", "normal", "sat", "tie", "const", "tiny"])
    dtype = random.choice([torch.float32, torch.float32, torch.float64, torch.bfloat16, torch.float16])
    lmode = random.choice(["rand", "rand", "rand", "none", "all"])
    if fam == "ap":
        dec = uniloss.AveragePrecision(interpolated=random.random() < 0.3)
        scores = scores_of((n,), g, smode, dtype)
        return dec, scores, labels_binary(n, g, lmode)
    if fam == "binary":
        beta, threshold = random.choice([0.5, 1.0, 2.0]), random.choice([0.0, 0.5])
        dec = random.choice([zoo.f_beta(beta, threshold=threshold), zoo.precision(), zoo.recall()])
        return dec, scores_of((n,), g, smode, dtype), labels_binary(n, g, lmode)
    if fam == "ranking":
        k_precision, k_ndcg = random.choice([1, 3]), random.choice([None, 3])
        dec = random.choice([zoo.auroc(), zoo.average_precision(), zoo.precision_at_k(k_precision), zoo.recall_at_k(2),
                             zoo.ndcg_at_k(k_ndcg), zoo.mrr()])
        rel = labels_binary(n, g, lmode)
        if random.random() < 0.4 and not isinstance(dec, type(zoo.auroc())):
            rel = torch.randint(0, 3, (n,), generator=g)
        target = rel if random.random() < 0.5 else RankingTarget(rel, torch.randint(0, 3, (n,), generator=g))
        try:
            dec.check(scores_of((n,), g, smode, dtype), target)
        except (ValueError, TypeError):
            target = RankingTarget(labels_binary(n, g, "rand"), None)
        return dec, scores_of((n,), g, smode, dtype), target
    C = random.choice([2, 3, 5, 10])
    if fam == "acc":
        opts = random.choice([{}, {"top_k": 1}, {"fraction": 0.5}, {"fraction": 0.3, "undrawn": "current"}])
        scores = scores_of((n, C), g, smode, dtype)
        return uniloss.MulticlassAccuracy(**opts), scores, torch.randint(0, C, (n,), generator=g)
    if fam == "multiclass":
        pairs = random.choice(["target", "all"])
        dec = random.choice([zoo.top_k_accuracy(random.choice([1, 2]), num_classes=C), zoo.macro_f1(C, pairs=pairs),
                             zoo.balanced_accuracy(C, pairs=pairs), zoo.matthews_corrcoef(C, pairs=pairs)])
        y = torch.randint(0, C, (n,), generator=g) if lmode == "rand" else torch.zeros(n, dtype=torch.long)
        return dec, scores_of((n, C), g, smode, dtype), y
    if fam == "seg":
        H, nb = random.choice([1, 3, 4]), random.choice([1, 2])
        dec = random.choice([zoo.mean_iou(C), zoo.dice(C)])
        return dec, scores_of((nb, C, H, H), g, smode, dtype), torch.randint(0, C, (nb, H, H), generator=g)
    # pck
    J, H, nb = random.choice([1, 2]), random.choice(HEATMAPS), random.choice([1, 2])
    kp = torch.rand(nb, J, 2, generator=g) * (H - 1)
    vis = torch.rand(nb, J, generator=g) < (0.0 if lmode == "none" else 0.8)
    tgt = uniloss.KeypointTarget(kp, vis, torch.full((nb,), float(random.choice([1, 2, 4]))))
    dec = uniloss.PCK(random.choice([0.5, 1.0])) if fam == "pck" else zoo.pck(random.choice([0.5, 1.0]))
    return dec, scores_of((nb, J, H, H), g, smode, dtype), tgt


# The loss's options a case may set (each with probability 0.3 in 60% of the cases).
OPTS = dict(grad_scale=["bounded", "distance", "normalized", 1.0], temperature=[1.0, 0.5, 4.0], pull=[1.0, 0.0, 0.3],
            pull_per=["sample", "run", "comparison"], step=["pull", "sum"], pull_weights=["metric", "equal"],
            nearby=["all", "informative"], distance=["euclidean", "cross_entropy"], temperature_scale=[None, "rms"],
            num_good=[16, 0, 2], num_nearby=[16, 0], num_bad=[16, 0, 3], interpolation=["anchors", "chain"])

def _options():
    return {} if random.random() < 0.4 else {n: random.choice(v) for n, v in OPTS.items() if random.random() < 0.3}


def _finite(out):
    """Problems of one call ``(loss, grad, info)``, scored against ``metric()`` by the caller."""
    loss, grad, _ = out
    problems = []
    if loss.dim() != 0:
        problems.append("loss not 0-dim")
    if not torch.isfinite(loss.float()):
        problems.append(f"loss {loss.item()}")
    if grad is None:
        problems.append("no grad")
    elif not torch.isfinite(grad.float()).all():
        problems.append(f"grad nonfinite ({int(grad.float().isnan().sum())} NaN)")
    return problems


def _same(a, b):
    """Problems between two calls that must agree (float64)."""
    (la, ga, ia), (lb, gb, ib) = a, b
    problems = []
    if not torch.allclose(la, lb, rtol=1e-9, atol=1e-12, equal_nan=True):
        problems.append(f"loss {la.item()} vs {lb.item()}")
    if ga is None or gb is None or not torch.allclose(ga, gb, rtol=1e-7, atol=1e-10, equal_nan=True):
        problems.append("gradient" if ga is None or gb is None else f"gradient, max diff {(ga - gb).abs().max().item()}")
    ma, mb = float(ia.metric), float(ib.metric)
    if not ((math.isnan(ma) and math.isnan(mb)) or abs(ma - mb) < 1e-9):
        problems.append(f"metric {ma} vs {mb}")
    if ia.num_bits != ib.num_bits:
        problems.append(f"bits {ia.num_bits} vs {ib.num_bits}")
    return problems


def _call(dec, s, y, opts, seed, static=False, anchors=None):
    leaf = s.clone().requires_grad_()
    # Odd seeds: a model's output (a non-leaf), whose last.metric is computed when first read.
    x = leaf if seed % 2 == 0 else leaf * 1.0
    if anchors is not None:
        loss, info = F.uniloss_with_info(x, y, dec, anchors=anchors, **opts)
    else:
        fn = uniloss.UniLoss(dec, generator=torch.Generator().manual_seed(seed), **opts)
        if static:
            with limits(cpu_static_max_bits=1 << 22):
                loss = fn(x, y)
        else:
            loss = fn(x, y)
        info = fn.last
    loss.backward()
    return loss.detach(), leaf.grad, info


def check_finite(dec, s, y, opts, k):
    out = _call(dec, s, y, opts, k)
    problems = _finite(out)
    ref, got = float(dec.metric(s, y)), float(out[2].metric)
    if not ((math.isnan(ref) and math.isnan(got)) or abs(ref - got) <= 1e-6 * max(1, abs(ref))):
        problems.append(f"last.metric {got} != metric() {ref}")
    return problems


def check_static(dec, s, y, opts, k):
    s = s.double()
    return _same(_call(dec, s, y, opts, k), _call(dec, s, y, opts, k, static=True))


def check_paths(dec, s, y, opts, k):
    s = s.double()
    opts = {n: v for n, v in opts.items() if n not in ("num_good", "num_nearby", "num_bad") and v != "normalized"}
    opts["interpolation"] = "anchors"  # (given anchors are the anchors' interpolation's)
    prepared = dec.prepare(s, y, torch.Generator().manual_seed(1))
    c = dec.comparisons(s, prepared).reshape(-1)
    if c.numel() == 0:
        return None
    structure = dec.structure(prepared)
    flips = 1 if structure is None else min(structure.good_flips, c.numel())
    anchors = uniloss.sample_anchors(dec.best(prepared).reshape(-1), c > 0, good_flips=flips,
                                     generator=torch.Generator().manual_seed(k), num_good=5, num_nearby=6, num_bad=9)
    return _same(_call(dec, s, prepared, opts, k, anchors=anchors),
                 _call(dec, s, prepared, opts, k, anchors=uniloss.AnchorSet(anchors.dense(), anchors.kinds)))


def check_chunks(dec, s, y, opts, k):
    if not isinstance(dec, uniloss.PCK):
        return None
    s = s.double()
    opts = {n: v for n, v in opts.items() if n != "temperature_scale"}
    return _same(_call(dec, s, y, opts, k), _call(dec, s, y, {**opts, "chunk_bits": random.choice([4, 16, 64])}, k))


def check_wrappers(dec, s, y, opts, k):
    s = s.double()
    plain = _call(dec, s, y, opts, k)
    problems = _same(plain, _call(GlobalBatch(dec), s, y, opts, k))
    problems += [f"static: {p}" for p in _same(plain, _call(GlobalBatch(dec), s, y, opts, k, static=True))]
    fn = uniloss.UniLoss(CrossBatchMemory(dec, size=3), generator=torch.Generator().manual_seed(k), **opts)
    for _ in range(3):
        x = (s + 0.1 * torch.randn_like(s)).requires_grad_()
        loss = fn(x, y)
        loss.backward()
        problems += [f"memory: {p}" for p in _finite((loss.detach(), x.grad, fn.last))]
    return problems


def check_chain(dec, s, y, opts, k):
    """``interpolation="chain"`` without the pull (one autograd node, closed forms where the metric
    has them) against :func:`uniloss._interpolation.chain_extension` differentiated by autograd,
    the metric evaluated with ``evaluate`` at every point of the chain (at the engine's points where
    it has only ``evaluate``). ``evaluate`` may count in float32: agreement to 1e-6."""
    from uniloss._interpolation import chain_extension, chain_segments
    from uniloss._limits import current_limits

    s = s.double()
    temperature = opts.get("temperature", 1.0)
    prepared = dec.prepare(s, y, torch.Generator().manual_seed(1))
    l = dec.comparisons(s, prepared).numel()
    if l == 0:
        return None
    structure = dec.structure(prepared)
    exact = structure is not None and any(
        f is not None for f in (structure.chain, structure.chain_gains, structure.evaluate_zeros))
    lim = current_limits()
    segments = l if exact else chain_segments(l, lim.chain_segments, lim.chain_elements)
    leaf = s.clone().requires_grad_()
    c = dec.comparisons(leaf, prepared).reshape(-1)
    best = dec.best(prepared).reshape(-1).bool()
    g, *_ = chain_extension(c, best, lambda bits: dec.evaluate(bits, prepared), temperature, segments)
    ref = (-g if dec.higher_is_better else g)
    ref.backward()
    loss, grad, _ = _call(dec, s, prepared, {"temperature": temperature, "pull": 0.0, "interpolation": "chain"}, k)
    problems = []
    if not torch.allclose(loss, ref.detach(), rtol=1e-6, atol=1e-6):
        problems.append(f"loss {loss.item()} vs reference {ref.item()}")
    scale = max(float(leaf.grad.abs().max()), 1e-12)
    if grad is None or not torch.allclose(grad, leaf.grad, rtol=0, atol=1e-6 * (1 + scale)):  # (float32 counts)
        problem = "gradient" if grad is None else f"gradient, max diff {(grad - leaf.grad).abs().max().item()}"
        if grad is not None and c.detach().abs().unique().numel() < c.numel():
            # Two comparisons of equal value: the chain may walk them in either order, both
            # orders' gradients are the extension's (it is not differentiable there), and the
            # sum of the two tied comparisons' gains, hence the loss, is the same.
            problem = TIE + problem
        problems.append(problem)
    return problems


#: Marks a problem that is a tie of two comparisons (the extension's kink), not a failure.
TIE = "tie of comparisons: "


CHECKS = {"--static": check_static, "--paths": check_paths, "--chunks": check_chunks, "--wrappers": check_wrappers,
          "--chain": check_chain}


def main(seconds, seed, check=check_finite, max_cases=None):
    """Fuzz for ``seconds`` (or ``max_cases`` cases: a fixed set for a seed); returns the failures."""
    random.seed(seed)
    g = torch.Generator().manual_seed(seed)
    t0, k, compared, fails, ties = time.time(), 0, 0, 0, 0
    while time.time() - t0 < seconds and (max_cases is None or k < max_cases):
        k += 1
        dec, s, y = case(g)
        opts = _options()
        desc = f"#{k} {dec!r} shape={tuple(s.shape)} dtype={s.dtype} opts={opts}"
        try:
            try:
                problems = check(dec, s, y, opts, k)
            except (ValueError, TypeError):
                continue  # a refused input: fine, a clear error is the contract
            if problems is None:
                continue
            compared += 1
            if problems:
                tie = all(p.startswith(TIE) for p in problems)
                ties += tie
                fails += not tie
                target = y if isinstance(y, torch.Tensor) else y[0]
                print("TIE" if tie else "FAIL", desc, problems, "scores:", s.flatten()[:8].tolist(), "target:",
                      target.flatten()[:8].tolist(), flush=True)
        except Exception as e:  # noqa: BLE001 - any other error is a finding
            fails += 1
            print("ERROR", desc, type(e).__name__, str(e)[:300], flush=True)
    print(f"done {k} cases, {compared} checked, {fails} failures"
          + (f" ({ties} gradients that differ only at a tie of two comparisons, not failures)" if ties else ""))
    return fails


if __name__ == "__main__":
    if "--large" in sys.argv:
        sys.argv.remove("--large")
        SIZES[:], HEATMAPS[:] = LARGE_SIZES, LARGE_HEATMAPS
    modes = [CHECKS[a] for a in sys.argv[3:]]
    sys.exit(1 if main(float(sys.argv[1]), int(sys.argv[2]), *(modes or [check_finite])) else 0)
