"""The performance suite: UniLoss beside the usual loss, measured in one run.

    python benchmarks/speed.py --out docs/performance     # everything: table, JSON, plot
    python benchmarks/speed.py --quick                    # a smoke run (seconds)
    python benchmarks/speed.py --only loss oracle         # some parts
    python benchmarks/speed.py --device cuda --out DIR    # on a GPU (synchronised, card recorded)

Parts (``--only``):

* ``loss``: one loss forward + backward on fixed scores, UniLoss (defaults) against BCE (AP),
  cross-entropy (accuracy) or MSE against Gaussian target heatmaps (PCK), at the issue's sizes
  and along a size series for the plot;
* ``pck``: peak memory of the loss (CPU: the resident set's high-water mark, reset just before
  the call, above what was live before it, in a fresh process; CUDA: the allocator's peak), PCK
  at 16 x 1, 4 and 16 joints
  of 64 x 64 heatmaps with a PCKh-sized disc (about 180 pixels, 700k comparisons per joint);
* ``train``: whole training steps (forward, loss, backward, SGD/RMSProp step): the MNIST MLP at
  batch 16 (AP vs BCE), ResNet-20 at batch 128 (accuracy vs CE), the stacked hourglass at 64 x 64
  heatmaps, batch 16, 16 joints (PCK vs MSE), and at its default 32 x 32;
* ``oracle``: the loop oracle of the tests (``tests/_reference.py``) against the engine on the
  same anchors, at small sizes: the speed-up of vectorising;
* ``zoo``: every zoo metric at one realistic size (``benchmarks/zoo_speed.py``).

Method: fixed seeds; each case is warmed up, then timed ``repeats`` times, UniLoss and its
baseline interleaved (in alternating order) so that machine noise hits both; the median and
interquartile range of the wall time are reported, the ratio of medians measured in the same
run, and beside it the ratio of process CPU times (robust to a machine shared with other jobs).
CUDA work is synchronised before every clock read. The machine, CPU, threads, torch version,
card and load average (before and after) are recorded with every result.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as nnf

import uniloss
from uniloss.experiments.reproduce import command_line

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PCK_NORMALIZER = 15.14  # threshold 0.5: radius 7.57 px, a disc of about 180 pixels (PCKh-sized)


# ------------------------------------------------------------------------------ timing


def _sync(device) -> None:
    if torch.device(device).type == "cuda" or (torch.cuda.is_available() and torch.cuda.is_initialized()):
        torch.cuda.synchronize()


def time_call(fn: Callable[[], None], inner: int, device="cpu") -> float:
    """Seconds per call of ``fn``, mean over ``inner`` calls (wall clock, synchronised)."""
    _sync(device)
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / inner


def _timed(fn: Callable[[], None], inner: int, device) -> tuple:
    """``(wall, cpu)`` seconds per call."""
    cpu = time.process_time()
    wall = time_call(fn, inner, device)
    return wall, (time.process_time() - cpu) / inner


def timed_step(loss_fn, scores, target) -> Callable[[], None]:
    """One loss forward + backward on fresh leaf scores."""

    def run():
        s = scores.detach().requires_grad_()
        loss_fn(s, target).backward()

    return run


def _quartiles(xs: List[float]) -> Dict[str, float]:
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return dict(median=statistics.median(xs), q1=q[0], q3=q[2])


def compare(ul: Callable, base: Callable, *, repeats: int, inner: int, warmup: int, device) -> Dict:
    """Interleaved timing of two callables: medians, IQRs and ratios (wall and CPU time)."""
    for _ in range(warmup):
        ul()
        base()
    times = {"uniloss": ([], []), "baseline": ([], [])}
    for i in range(repeats):
        order = ("uniloss", "baseline") if i % 2 == 0 else ("baseline", "uniloss")
        for name in order:
            wall, cpu = _timed(ul if name == "uniloss" else base, inner, device)
            times[name][0].append(wall * 1e3)
            times[name][1].append(cpu * 1e3)
    out = {}
    for name, (wall, cpu) in times.items():
        q = _quartiles(wall)
        out[f"{name}_ms"] = q["median"]
        out[f"{name}_iqr_ms"] = [q["q1"], q["q3"]]
        out[f"{name}_cpu_ms"] = statistics.median(cpu)
    out["ratio"] = out["uniloss_ms"] / out["baseline_ms"]
    out["ratio_cpu"] = out["uniloss_cpu_ms"] / out["baseline_cpu_ms"]
    return out


# ------------------------------------------------------------------------------ inputs


def ap_inputs(n: int, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(n, generator=g)
    labels = (torch.rand(n, generator=g) < 0.1).long()
    labels[0], labels[1] = 1, 0
    return scores.to(device), labels.to(device)


def accuracy_inputs(n: int, c: int, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g).to(device), torch.randint(0, c, (n,), generator=g).to(device)


def pck_inputs(n: int, joints: int, size: int, device, seed: int = 0, normalizer: float = PCK_NORMALIZER):
    """Heatmaps, a KeypointTarget (joints away from the border: full discs) and Gaussian
    MSE targets (sigma 1, the usual heatmap target)."""
    g = torch.Generator().manual_seed(seed)
    heat = torch.randn(n, joints, size, size, generator=g)
    margin = min(size / 4, 8.0)
    kp = margin + (size - 1 - 2 * margin) * torch.rand(n, joints, 2, generator=g)
    target = uniloss.KeypointTarget(kp.to(device), torch.ones(n, joints, dtype=torch.bool, device=device),
                                    torch.full((n,), normalizer, device=device))
    ys = torch.arange(size, dtype=torch.float32)[:, None]
    xs = torch.arange(size, dtype=torch.float32)[None, :]
    gauss = torch.exp(-((xs - kp[..., 0, None, None]) ** 2 + (ys - kp[..., 1, None, None]) ** 2) / 2)
    return heat.to(device), target, gauss.to(device)


def _bce(s, y):
    return nnf.binary_cross_entropy_with_logits(s, y.float())


def _num_bits(dec, scores, target) -> int:
    prepared = dec.prepare(scores, target)
    structure = dec.structure(prepared)
    if structure is not None and isinstance(structure.runs, torch.Tensor):
        return int(structure.runs.sum())
    return dec.comparisons(scores, prepared).numel()


def _generator(device) -> torch.Generator:
    """The anchors' generator, on the scores' device (a CPU one would copy draws every step)."""
    return torch.Generator(device=device).manual_seed(0)


def loss_case(kind: str, size: tuple, device) -> Dict:
    """``dict(name, baseline, bits, uniloss, base)`` for one loss case."""
    gen = _generator(device)
    if kind == "ap":
        scores, labels = ap_inputs(size[0], device)
        dec = uniloss.AveragePrecision()
        return dict(name=f"AP, batch {size[0]}", family="AP", baseline="BCE", bits=_num_bits(dec, scores, labels),
                    uniloss=timed_step(uniloss.UniLoss(dec, generator=gen), scores, labels),
                    base=timed_step(_bce, scores, labels))
    if kind == "accuracy":
        scores, labels = accuracy_inputs(*size, device)
        dec = uniloss.MulticlassAccuracy()
        return dict(name=f"accuracy, {size[0]} x {size[1]}", family="accuracy", baseline="CE",
                    bits=_num_bits(dec, scores, labels),
                    uniloss=timed_step(uniloss.UniLoss(dec, generator=gen), scores, labels),
                    base=timed_step(nnf.cross_entropy, scores, labels))
    n, joints, hw = size
    heat, target, gauss = pck_inputs(n, joints, hw, device)
    dec = uniloss.PCK()
    return dict(name=f"PCK, {n} x {joints} joint{'s' if joints > 1 else ''} x {hw}x{hw}", family="PCK",
                baseline="MSE", bits=_num_bits(dec, heat, target),
                uniloss=timed_step(uniloss.UniLoss(dec, generator=gen), heat, target),
                base=timed_step(lambda s, t: nnf.mse_loss(s, gauss), heat, target))


# The issue's sizes (and its targets, issue #17's), then the series for the plot.
TABLE = [
    ("ap", (16,), 5.0), ("ap", (128,), 6.0), ("ap", (1024,), None),
    ("accuracy", (128, 10), 5.0), ("accuracy", (128, 100), 8.0), ("accuracy", (1024, 1000), None),
    ("pck", (16, 1, 64), None), ("pck", (16, 16, 64), None),
]
SERIES = [
    ("ap", (32,)), ("ap", (64,)), ("ap", (256,)), ("ap", (512,)),
    ("accuracy", (128, 30)), ("accuracy", (128, 300)), ("accuracy", (1024, 100)),
    ("pck", (16, 2, 64)), ("pck", (16, 4, 64)), ("pck", (16, 8, 64)),
]


def _budget(bits: int, quick: bool) -> Dict[str, int]:
    """Repeats and calls per repeat by problem size (a 180M-comparison PCK takes seconds)."""
    if quick:
        return dict(repeats=3, inner=1 if bits > 1e6 else 5, warmup=1)
    if bits > 2e7:
        return dict(repeats=3, inner=1, warmup=1)
    if bits > 1e6:
        return dict(repeats=7, inner=1, warmup=1)
    return dict(repeats=15, inner=20, warmup=5)


def run_losses(args, series: bool) -> List[Dict]:
    rows = []
    cases = [(k, s, t) for k, s, t in TABLE] + ([(k, s, None) for k, s in SERIES] if series else [])
    if args.quick:
        cases = [("ap", (16,), 5.0), ("accuracy", (128, 10), 5.0), ("pck", (2, 1, 16), None)]
    for kind, size, goal in cases:
        case = loss_case(kind, size, args.device)
        row = dict(case=case["name"], family=case["family"], baseline=case["baseline"], comparisons=case["bits"],
                   goal=goal, table=(kind, size, goal) in TABLE or args.quick)
        row.update(compare(case["uniloss"], case["base"], device=args.device, **_budget(case["bits"], args.quick)))
        rows.append(row)
        _print_row(row)
    return rows


# ------------------------------------------------------------------------------ memory


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(key)) / 1024


def _reset_peak() -> bool:
    """Reset the resident set's high-water mark (Linux ``clear_refs`` 5); False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def probe(spec: Dict) -> Dict:
    """Peak memory of one loss forward + backward, above what was live before it (MB)."""
    torch.set_num_threads(spec.get("threads") or torch.get_num_threads())
    case = loss_case(spec["kind"], tuple(spec["size"]), spec["device"])
    fn = case["uniloss"] if spec["which"] == "uniloss" else case["base"]
    if torch.device(spec["device"]).type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return dict(peak_mb=(torch.cuda.max_memory_allocated() - before) / 2**20, how="CUDA allocator peak")
    reset = _reset_peak()
    before = _status_mb("VmRSS")
    fn()
    if reset:
        return dict(peak_mb=_status_mb("VmHWM") - before, how="resident set high-water mark (reset before the call) above the live set")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # includes start-up: an upper bound
    return dict(peak_mb=peak - before, how="process peak resident set above the live set (upper bound)")


def peak_memory(kind: str, size: tuple, which: str, args) -> Dict:
    spec = dict(kind=kind, size=list(size), which=which, device=args.device, threads=args.threads)
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--probe", json.dumps(spec)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_memory(args) -> List[Dict]:
    sizes = [(16, 1, 64), (16, 16, 64)] if not args.quick else [(2, 1, 16)]
    if not args.quick:
        sizes[1:1] = [(16, 4, 64)]
    rows = []
    for size in sizes:
        ul = peak_memory("pck", size, "uniloss", args)
        base = peak_memory("pck", size, "baseline", args)
        case = loss_case("pck", size, "cpu")
        rows.append(dict(case=case["name"], comparisons=case["bits"], uniloss_peak_mb=ul["peak_mb"],
                         baseline_peak_mb=base["peak_mb"], how=ul["how"], goal_mb=2048 if size[1] == 16 else None))
        print(f"  memory {rows[-1]['case']:34s} l={case['bits']:>11,}  UniLoss {ul['peak_mb']:8.1f} MB   "
              f"MSE {base['peak_mb']:6.1f} MB", flush=True)
    return rows


# ------------------------------------------------------------------------------ training steps


def _train_step(model, loss_fn, opt, x, y, heatmaps: bool = False) -> Callable[[], None]:
    def run():
        out = model(x)
        if heatmaps:
            loss = sum(loss_fn(o, y) for o in out)
        else:
            loss = loss_fn(out.reshape(-1) if out.shape[-1] == 1 else out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return run


def train_cases(args) -> List[Dict]:
    from uniloss.experiments.models import MLP, ResNet20, StackedHourglass

    device = args.device
    out = []

    def pair(name, baseline, make_model, make_opt, x, y_ul, y_base, ul_loss, base_loss, heatmaps=False, goal=None):
        models = []
        for seed_model in (0, 0):
            torch.manual_seed(seed_model)
            models.append(make_model().to(device))
        ul = _train_step(models[0], ul_loss, make_opt(models[0]), x, y_ul, heatmaps)
        base = _train_step(models[1], base_loss, make_opt(models[1]), x, y_base, heatmaps)
        out.append(dict(name=name, baseline=baseline, goal=goal, ul=ul, base=base))

    g = torch.Generator().manual_seed(0)
    # MNIST MLP, batch 16, the paper's recipe (SGD lr 0.01, momentum 0.5): UniLoss-AP vs BCE.
    x = torch.randn(16, 1, 28, 28, generator=g).to(device)
    y = (torch.rand(16, generator=g) < 0.1).long()
    y[0] = 1
    y = y.to(device)
    sgd = lambda m: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.5)  # noqa: E731
    pair("MNIST MLP step, batch 16", "BCE", MLP, sgd, x, y, y,
         uniloss.UniLoss(uniloss.AveragePrecision(), generator=_generator(device)), _bce, goal=1.3)
    if args.quick:
        return out
    # ResNet-20, CIFAR-sized batch of 128, 10 classes: UniLoss-accuracy vs CE.
    x = torch.randn(128, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (128,), generator=g).to(device)
    sgd = lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)  # noqa: E731
    pair("ResNet-20 step, batch 128", "CE", lambda: ResNet20(num_classes=10), sgd, x, y, y,
         uniloss.UniLoss(uniloss.MulticlassAccuracy(), generator=_generator(device)),
         nnf.cross_entropy, goal=1.05)
    # Stacked hourglass, batch 16, 16 joints: 128x128 input -> 64x64 heatmaps (the size),
    # and the default 64x64 input -> 32x32 heatmaps (disc scaled with it).
    rms = lambda m: torch.optim.RMSprop(m.parameters(), lr=2.5e-4)  # noqa: E731
    for size, normalizer in ((64, PCK_NORMALIZER), (32, PCK_NORMALIZER / 2)):
        x = torch.randn(16, 1, 2 * size, 2 * size, generator=g).to(device)
        _, target, gauss = pck_inputs(16, 16, size, device, normalizer=normalizer)
        pair(f"hourglass step, 16 x 16 joints, {size}x{size} heatmaps", "MSE",
             lambda: StackedHourglass(num_joints=16, in_channels=1), rms, x, target, gauss,
             uniloss.UniLoss(uniloss.PCK(), generator=_generator(device)), nnf.mse_loss,
             heatmaps=True)
    return out


def run_train(args) -> List[Dict]:
    rows = []
    for case in train_cases(args):
        heavy = "hourglass" in case["name"]
        budget = dict(repeats=3, inner=1, warmup=1) if args.quick or heavy else dict(repeats=9, inner=3, warmup=2)
        if "ResNet" in case["name"]:
            budget = dict(repeats=7, inner=1, warmup=2)
        row = dict(case=case["name"], baseline=case["baseline"], goal=case["goal"])
        row.update(compare(case["ul"], case["base"], device=args.device, **budget))
        rows.append(row)
        _print_row(row)
    return rows


# ------------------------------------------------------------------------------ the loop oracle


def run_oracle(args) -> List[Dict]:
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from _reference import uniloss_oracle

    rows = []
    cases = [("ap", (16,)), ("accuracy", (8, 5))] if not args.quick else [("ap", (16,))]
    for kind, size in cases:
        if kind == "ap":
            scores, target = ap_inputs(size[0], "cpu")
            dec, name = uniloss.AveragePrecision(), f"AP, batch {size[0]}"
        else:
            scores, target = accuracy_inputs(*size, "cpu")
            dec, name = uniloss.MulticlassAccuracy(), f"accuracy, {size[0]} x {size[1]}"
        scores = scores.double()
        prepared = dec.prepare(scores, target)
        c = dec.comparisons(scores, prepared)
        anchors = uniloss.sample_anchors(dec.best(prepared), c > 0, generator=torch.Generator().manual_seed(0))
        dense = anchors.dense()
        engine = timed_step(lambda s, t: uniloss.functional.uniloss(s, t, dec, anchors=anchors, grad_scale=1.0, interpolation="anchors"), scores, prepared)
        oracle = timed_step(lambda s, t: uniloss_oracle(s, t, dec, dense), scores, prepared)
        row = dict(case=name, comparisons=c.numel(), anchors=dense.shape[0])
        timing = compare(oracle, engine, repeats=3, inner=1, warmup=1, device="cpu")
        row.update(oracle_ms=timing["uniloss_ms"], engine_ms=timing["baseline_ms"], speedup=timing["ratio"])
        rows.append(row)
        print(f"  oracle {name:24s} l={row['comparisons']:5d}  loop {row['oracle_ms']:9.1f} ms   "
              f"engine {row['engine_ms']:.3f} ms   {row['speedup']:,.0f}x faster", flush=True)
    return rows


def run_zoo(args) -> Dict:
    sys.path.insert(0, HERE)
    import zoo_speed

    argv = ["--device", args.device, "--repeats", "3" if args.quick else "11", "--inner", "2" if args.quick else "5"]
    if args.quick:
        argv += ["--only", "macro_f1(10)"]
    return zoo_speed.main(argv)


# ------------------------------------------------------------------------------ report


def machine(device) -> Dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    out = dict(platform=platform.platform(), cpu=cpu, cores=os.cpu_count(), threads=torch.get_num_threads(),
               python=platform.python_version(), torch=torch.__version__, device=str(device),
               date=time.strftime("%Y-%m-%d %H:%M"))
    if torch.device(device).type == "cuda":
        out["card"] = torch.cuda.get_device_name()
    return out


def _print_row(row: Dict) -> None:
    iqr = row["uniloss_iqr_ms"]
    print(f"  {row['case']:48s} UniLoss {row['uniloss_ms']:10.3f} ms [{iqr[0]:.3f}, {iqr[1]:.3f}]   "
          f"{row['baseline']} {row['baseline_ms']:9.3f} ms   {row['ratio']:6.1f}x (CPU time {row['ratio_cpu']:.1f}x)",
          flush=True)


def _fmt_ms(ms: float) -> str:
    return f"{ms:,.0f} ms" if ms >= 100 else f"{ms:.3g} ms"


def _verdict(wall: float, cpu: float, goal: float) -> str:
    """Met or missed by both clocks, else borderline (a shared machine moves the wall clock)."""
    if wall <= goal and cpu <= goal:
        return " met"
    if wall > goal and cpu > goal:
        return " **missed**"
    return " borderline"


def _fmt_ratio(ratio: float) -> str:
    return f"{ratio:.2f}x" if ratio < 10 else f"{ratio:,.0f}x"


def markdown(report: Dict) -> str:
    m = report["machine"]
    lines = [
        f"Measured {m['date']} on {m['cpu']} ({m['cores']} cores, {m['threads']} torch thread(s)), "
        f"torch {m['torch']}, device {m['device']}{', ' + m['card'] if 'card' in m else ''}; load average "
        f"{report['load_before'][0]:.1f} before, {report['load_after'][0]:.1f} after (other jobs shared the machine). "
        "Median wall time (interquartile range) and the ratio of medians in the same run; CPU-time ratio beside it.",
        "",
        "| case | UniLoss | baseline | ratio | ratio (CPU time) | goal |",
        "|---|---|---|---|---|---|",
    ]
    for r in report.get("losses", []) + report.get("train", []):
        if not r.get("table", True):
            continue
        goal = f"<= {r['goal']:g}x" if r.get("goal") else ""
        met = "" if not r.get("goal") else _verdict(r["ratio"], r["ratio_cpu"], r["goal"])
        lines.append(
            f"| {r['case']} | {_fmt_ms(r['uniloss_ms'])} ({_fmt_ms(r['uniloss_iqr_ms'][0])}-{_fmt_ms(r['uniloss_iqr_ms'][1])}) "
            f"| {r['baseline']} {_fmt_ms(r['baseline_ms'])} | {_fmt_ratio(r['ratio'])} | {_fmt_ratio(r['ratio_cpu'])} | {goal}{met} |"
        )
    pck = report.get("pck_share")
    if pck:
        lines.append(f"| PCK loss (16 x 16 joints) / hourglass step with MSE (64x64 heatmaps) | {_fmt_ms(pck['loss_ms'])} "
                     f"| step {_fmt_ms(pck['step_ms'])} | {pck['share'] * 100:.0f}% | {pck['share_cpu'] * 100:.0f}% "
                     f"| <= 20%{_verdict(pck['share'], pck['share_cpu'], 0.2)} |")
    if report.get("memory"):
        lines += ["", "| peak memory of the loss | comparisons | UniLoss | MSE | goal |", "|---|---|---|---|---|"]
        for r in report["memory"]:
            goal = "" if not r["goal_mb"] else "<= 2 GB" + _verdict(r["uniloss_peak_mb"], r["uniloss_peak_mb"], r["goal_mb"])
            lines.append(f"| {r['case']} | {r['comparisons']:,} | {r['uniloss_peak_mb']:,.0f} MB | {r['baseline_peak_mb']:,.0f} MB | {goal} |")
    if report.get("oracle"):
        lines += ["", "| loop oracle (tests) vs engine, same anchors | comparisons | loop | engine | speed-up |", "|---|---|---|---|---|"]
        for r in report["oracle"]:
            lines.append(f"| {r['case']} | {r['comparisons']} | {_fmt_ms(r['oracle_ms'])} | {_fmt_ms(r['engine_ms'])} | {_fmt_ratio(r['speedup'])} |")
    if report.get("zoo"):
        lines += ["", "| zoo metric | batch | comparisons | UniLoss | baseline | ratio |", "|---|---|---|---|---|---|"]
        for r in report["zoo"]["rows"]:
            lines.append(f"| `{r['metric']}` | {r['batch']} | {r['comparisons']:,} | {_fmt_ms(r['uniloss_ms'])} | "
                         f"{r['baseline']} {_fmt_ms(r['baseline_ms'])} | {_fmt_ratio(r['ratio'])} |")
    return "\n".join(lines) + "\n"


def plot(report: Dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {"AP": "tab:blue", "accuracy": "tab:orange", "PCK": "tab:green"}
    for family, color in colors.items():
        rows = sorted((r for r in report["losses"] if r["family"] == family), key=lambda r: r["comparisons"])
        if not rows:
            continue
        l = [r["comparisons"] for r in rows]
        axes[0].plot(l, [r["uniloss_ms"] for r in rows], "o-", color=color, label=f"UniLoss {family}")
        axes[0].plot(l, [r["baseline_ms"] for r in rows], "x--", color=color, alpha=0.6, label=rows[0]["baseline"])
    axes[0].set(xscale="log", yscale="log", xlabel="comparisons l", ylabel="loss forward + backward (ms)",
                title="time against problem size")
    axes[0].legend(fontsize=7, ncol=2)
    mem = report.get("memory") or []
    if mem:
        l = [r["comparisons"] for r in mem]
        axes[1].plot(l, [r["uniloss_peak_mb"] for r in mem], "o-", color="tab:green", label="UniLoss PCK")
        axes[1].plot(l, [max(r["baseline_peak_mb"], 0.1) for r in mem], "x--", color="tab:green", alpha=0.6, label="MSE")
        axes[1].plot(l, [4 * 3 * x / 2**20 for x in l], ":", color="grey", label="3 float tensors of l (dense)")
        axes[1].axhline(2048, color="red", lw=0.8, label="goal 2 GB")
        axes[1].set(xscale="log", yscale="log", xlabel="comparisons l", ylabel="peak memory of the loss (MB)",
                    title="PCK, 16 x J x 64x64, disc of 180 px")
        axes[1].legend(fontsize=7)
    m = report["machine"]
    fig.suptitle(f"uniloss {uniloss.__version__}: {m['cpu']}, {m['threads']} thread(s), torch {m['torch']}, {m['device']}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=["loss", "pck", "train", "oracle", "zoo"],
                        default=["loss", "pck", "train", "oracle", "zoo"])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repeats: a smoke run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--out", help="write results.json, results.md and speed.png into this folder")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        print(json.dumps(probe(json.loads(args.probe))))
        return {}
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    report = dict(machine=machine(args.device), load_before=list(os.getloadavg()),
                  command=command_line("benchmarks/speed.py", argv))
    print(f"# {report['machine']}")
    if "loss" in args.only:
        report["losses"] = run_losses(args, series=not args.quick)
    if "pck" in args.only and torch.device(args.device).type in ("cpu", "cuda"):
        report["memory"] = run_memory(args)
    if "train" in args.only:
        report["train"] = run_train(args)
        steps = [r for r in report["train"] if r["case"].startswith("hourglass") and "64x64" in r["case"]]
        losses = [r for r in report.get("losses", []) if r["case"] == "PCK, 16 x 16 joints x 64x64"]
        if steps and losses:
            report["pck_share"] = dict(loss_ms=losses[0]["uniloss_ms"], step_ms=steps[0]["baseline_ms"],
                                       share=losses[0]["uniloss_ms"] / steps[0]["baseline_ms"],
                                       share_cpu=losses[0]["uniloss_cpu_ms"] / steps[0]["baseline_cpu_ms"])
    if "oracle" in args.only:
        report["oracle"] = run_oracle(args)
    if "zoo" in args.only:
        report["zoo"] = run_zoo(args)
    report["load_after"] = list(os.getloadavg())
    table = markdown(report)
    print("\n" + table)
    paths = []
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        paths = [os.path.join(args.out, "results.json")]
        with open(os.path.join(args.out, "results.md"), "w") as fh:
            fh.write(table)
        if report.get("losses"):
            plot(report, os.path.join(args.out, "speed.png"))
    if args.json:
        paths.append(args.json)
    for path in paths:
        with open(path, "w") as fh:
            json.dump(report, fh, indent=2)
    return report


if __name__ == "__main__":
    main()
