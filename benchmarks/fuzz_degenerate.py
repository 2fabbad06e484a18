"""Fuzz every built-in and zoo metric on small, degenerate and saturated inputs.

    python benchmarks/fuzz_degenerate.py SECONDS SEED             # e.g. 300 3: about 70,000 cases
    python benchmarks/fuzz_degenerate.py SECONDS SEED --static    # static layout == exact layout

Each case draws a metric (AP, accuracy and its options, PCK, and the zoo's binary, ranking,
multi-class, segmentation and keypoint metrics), a batch of 1 to 33, scores that are normal,
saturated (x30 to x3000), rounded (ties), constant or tiny, float32 / float64 / bfloat16, labels
that are random, all negative or all positive, and a random subset of the loss's options. An input
the metric refuses with a ValueError or TypeError is skipped (a clear error is the contract). It
checks: a 0-dim finite loss, a finite gradient, and ``last.metric`` equal to ``metric()``; prints a
line per failure with the case and a summary. On 2026-12-01 it found the two bugs that
``tests/test_degenerate_scales.py`` holds (``temperature_scale="rms"`` on constant scores,
``grad_scale="normalized"`` on saturated ones: 216 failures in 55,980 cases); after the fix,
0 in 68,750 (``300 3``).

``--static``: each case in float64 twice, under a CPU's exact layout and under the accelerators'
static layout (``cpu_static_max_bits`` raised), which must give the same loss, gradient, metric
and number of comparisons. It found PCK's pull per run counting only the runs that hold a
comparison in the static layout where the exact one counts every positive pixel (a joint whose
disc covers the heatmap: 9 failures in 16,142 cases; 0 in 32,876 after, ``240 5 --static``)."""
import math, random, sys, time, traceback, warnings
import torch, uniloss
from uniloss import zoo
from uniloss._limits import limits
from uniloss.decoders import RankingTarget
torch.set_num_threads(1)
warnings.simplefilter("ignore")

def labels_binary(n, g, mode):
    if mode == "none": return torch.zeros(n, dtype=torch.long)
    if mode == "all": return torch.ones(n, dtype=torch.long)
    y = (torch.rand(n, generator=g) < random.choice([0.05, 0.3, 0.7])).long()
    return y

def scores_of(shape, g, mode, dtype):
    s = torch.randn(*shape, generator=g, dtype=torch.float64)
    if mode == "sat": s = s * random.choice([30.0, 300.0, 3000.0])
    elif mode == "tie": s = torch.round(s)
    elif mode == "const": s = torch.zeros(shape, dtype=torch.float64) + 0.5
    elif mode == "tiny": s = s * 1e-6
    return s.to(dtype)

def case(g):
    fam = random.choice(["ap", "acc", "pck", "binary", "ranking", "multiclass", "seg", "zpck"])
    n = random.choice([1, 2, 3, 4, 7, 16, 33])
    smode = random.choice(["normal", "normal", "sat", "tie", "const", "tiny"])
    dtype = random.choice([torch.float32, torch.float32, torch.float64, torch.bfloat16])
    lmode = random.choice(["rand", "rand", "rand", "none", "all"])
    if fam == "ap":
        return uniloss.AveragePrecision(interpolated=random.random() < 0.3), scores_of((n,), g, smode, dtype), labels_binary(n, g, lmode)
    if fam == "binary":
        dec = random.choice([zoo.f_beta(random.choice([0.5, 1.0, 2.0]), threshold=random.choice([0.0, 0.5])), zoo.precision(), zoo.recall()])
        return dec, scores_of((n,), g, smode, dtype), labels_binary(n, g, lmode)
    if fam == "ranking":
        dec = random.choice([zoo.auroc(), zoo.average_precision(), zoo.precision_at_k(random.choice([1, 3])), zoo.recall_at_k(2),
                             zoo.ndcg_at_k(random.choice([None, 3])), zoo.mrr()])
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
        return uniloss.MulticlassAccuracy(**opts), scores_of((n, C), g, smode, dtype), torch.randint(0, C, (n,), generator=g)
    if fam == "multiclass":
        pairs = random.choice(["target", "all"])
        dec = random.choice([zoo.top_k_accuracy(random.choice([1, 2]), num_classes=C), zoo.macro_f1(C, pairs=pairs),
                             zoo.balanced_accuracy(C, pairs=pairs), zoo.matthews_corrcoef(C, pairs=pairs)])
        y = torch.randint(0, C, (n,), generator=g) if lmode == "rand" else torch.zeros(n, dtype=torch.long)
        return dec, scores_of((n, C), g, smode, dtype), y
    if fam == "seg":
        H = random.choice([1, 3, 4]); nb = random.choice([1, 2])
        dec = random.choice([zoo.mean_iou(C), zoo.dice(C)])
        return dec, scores_of((nb, C, H, H), g, smode, dtype), torch.randint(0, C, (nb, H, H), generator=g)
    # pck
    J = random.choice([1, 2]); H = random.choice([4, 6]); nb = random.choice([1, 2])
    kp = torch.rand(nb, J, 2, generator=g) * (H - 1)
    vis = torch.rand(nb, J, generator=g) < (0.0 if lmode == "none" else 0.8)
    tgt = uniloss.KeypointTarget(kp, vis, torch.full((nb,), float(random.choice([1, 2, 4]))))
    dec = uniloss.PCK(random.choice([0.5, 1.0])) if fam == "pck" else zoo.pck(random.choice([0.5, 1.0]))
    return dec, scores_of((nb, J, H, H), g, smode, dtype), tgt

OPTS = dict(grad_scale=["bounded", "distance", "normalized", 1.0], temperature=[1.0, 0.5, 4.0], pull=[1.0, 0.0, 0.3],
            pull_per=["sample", "run", "comparison"], step=["pull", "sum"], pull_weights=["metric", "equal"],
            nearby=["all", "informative"], distance=["euclidean", "cross_entropy"], temperature_scale=[None, "rms"],
            num_good=[16, 0, 2], num_nearby=[16, 0], num_bad=[16, 0, 3])

def main(seconds, seed):
    random.seed(seed); g = torch.Generator().manual_seed(seed)
    t0 = time.time(); k = 0; fails = 0
    while time.time() - t0 < seconds:
        k += 1
        dec, s, y = case(g)
        opts = {} if random.random() < 0.4 else {name: random.choice(v) for name, v in OPTS.items() if random.random() < 0.3}
        desc = f"#{k} {dec!r} shape={tuple(s.shape)} dtype={s.dtype} opts={opts}"
        try:
            x = s.clone().requires_grad_()
            loss_fn = uniloss.UniLoss(dec, generator=torch.Generator().manual_seed(k), **opts)
            try:
                loss = loss_fn(x, y)
            except (ValueError, TypeError) as e:
                continue  # a refused input: fine as long as it is a clear error
            loss.backward()
            problems = []
            if loss.dim() != 0: problems.append("loss not 0-dim")
            if not torch.isfinite(loss.float()): problems.append(f"loss {loss.item()}")
            if x.grad is None: problems.append("no grad")
            elif not torch.isfinite(x.grad.float()).all(): problems.append(f"grad nonfinite {x.grad.float().isnan().sum().item()} nan")
            ref = dec.metric(s, y)
            got = loss_fn.last.metric
            if not ((math.isnan(float(ref)) and math.isnan(float(got))) or abs(float(ref) - float(got)) <= 1e-6 * max(1, abs(float(ref)))):
                problems.append(f"last.metric {float(got)} != metric() {float(ref)}")
            if problems:
                fails += 1
                print("FAIL", desc, problems, "scores:", s.flatten()[:8].tolist(), "target:", (y if isinstance(y, torch.Tensor) else y[0]).flatten()[:8].tolist(), flush=True)
        except Exception as e:
            fails += 1
            print("ERROR", desc, type(e).__name__, str(e)[:300], flush=True)
    print(f"done {k} cases, {fails} failures")
    return fails

def _run(dec, s, y, opts, seed, static):
    x = s.clone().requires_grad_()
    fn = uniloss.UniLoss(dec, generator=torch.Generator().manual_seed(seed), **opts)
    if static:
        with limits(cpu_static_max_bits=1 << 22):
            loss = fn(x, y)
    else:
        loss = fn(x, y)
    loss.backward()
    return loss.detach(), x.grad, fn.last


def main_static(seconds, seed):
    random.seed(seed); g = torch.Generator().manual_seed(seed)
    t0 = time.time(); k = fails = 0
    while time.time() - t0 < seconds:
        k += 1
        dec, s, y = case(g)
        s = s.double()
        opts = {} if random.random() < 0.4 else {n: random.choice(v) for n, v in OPTS.items() if random.random() < 0.3}
        desc = f"#{k} {dec!r} shape={tuple(s.shape)} opts={opts}"
        try:
            try:
                la, ga, ia = _run(dec, s, y, opts, k, False)
            except (ValueError, TypeError):
                continue
            lb, gb, ib = _run(dec, s, y, opts, k, True)
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
            if problems:
                fails += 1
                print("FAIL", desc, problems, "scores:", s.flatten()[:6].tolist(), flush=True)
        except Exception as e:
            fails += 1
            print("ERROR", desc, type(e).__name__, str(e)[:300], flush=True)
    print(f"done {k} cases, {fails} failures")
    return fails


if __name__ == "__main__":
    run = main_static if "--static" in sys.argv[3:] else main
    sys.exit(1 if run(float(sys.argv[1]), int(sys.argv[2])) else 0)
