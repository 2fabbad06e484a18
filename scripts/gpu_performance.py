"""All the GPU measurements of the performance issue in one run, for a lent GPU (H100/H200).

    pip install --no-deps -e . && python scripts/gpu_performance.py --out "$OUT/performance-gpu"
    python scripts/gpu_performance.py --tiny --out perf-smoke    # a CPU smoke run (the test)

Parts, each recorded with the card's name, torch's version and the date in ``results.json`` and
``README.md`` under ``--out``:

* ``speed``: every case of ``benchmarks/speed.py`` on the device (the loss cases, PCK memory, the
  MNIST MLP, ResNet-20 and stacked-hourglass training steps, the zoo), written to ``speed/``;
* ``sync``: host synchronisations per loss call with ``validate_args=False`` for AP, accuracy,
  PCK and the zoo's metrics: on CUDA under ``torch.cuda.set_sync_debug_mode("error")`` (the first
  synchronising operation is recorded), on a CPU by the profiler's count of ``aten::nonzero``,
  ``aten::_local_scalar_dense`` and ``aten::item`` (the operators that synchronise on a GPU), under
  the accelerators' layout policy (a CPU itself lays every problem out exactly, see
  ``uniloss._limits.EngineLimits.cpu_static_max_bits``);
* ``compile``: ``torch._dynamo.explain`` of a training step with UniLoss (graphs, graph breaks and
  their first reasons) and the step's eager and compiled times;
* ``graphs``: whether a ResNet-20 step (cross-entropy, then UniLoss) can be captured in a CUDA
  graph, and the replayed step's time where it can (CUDA only).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional

import torch

import uniloss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNC_OPS = ("aten::nonzero", "aten::_local_scalar_dense", "aten::item")


def machine(device: str) -> Dict:
    card = torch.cuda.get_device_name(0) if torch.device(device).type == "cuda" else None
    return dict(device=device, card=card, torch=torch.__version__, python=platform.python_version(),
                cpu=platform.processor() or platform.machine(), date=datetime.date.today().isoformat())


def loss_cases(device: str, tiny: bool) -> Dict[str, Callable[[], tuple]]:
    """name -> () -> (loss_fn, scores requiring grad, target), validate_args=False."""
    g = torch.Generator().manual_seed(0)
    n = 16 if tiny else 128

    def make(metric, scores, target):
        def build():
            gen = torch.Generator(device=device).manual_seed(0)
            fn = uniloss.UniLoss(metric, generator=gen, validate_args=False)
            s = scores.to(device).requires_grad_(True)
            t = target.to(device) if isinstance(target, torch.Tensor) else target
            return fn, s, t
        return build

    labels = torch.randint(0, 10, (n,), generator=g)
    binary = (torch.rand(n, generator=g) < 0.2).long()
    binary[0] = 1
    size, joints = (8, 2) if tiny else (64, 16)
    kp = torch.randint(0, size, (2, joints, 2), generator=g).float()
    pck_target = uniloss.KeypointTarget(kp.to(device), torch.ones(2, joints, dtype=torch.bool, device=device),
                                        torch.full((2,), size / 4.0, device=device))
    return {
        "AP": make(uniloss.AveragePrecision(), torch.randn(n, generator=g), binary),
        "accuracy": make(uniloss.MulticlassAccuracy(), torch.randn(n, 10, generator=g), labels),
        "accuracy, fraction 0.2": make(uniloss.MulticlassAccuracy(fraction=0.2), torch.randn(n, 10, generator=g),
                                       labels),
        "PCK": make(uniloss.PCK(), torch.randn(2, joints, size, size, generator=g), pck_target),
        "zoo.macro_f1": make(uniloss.zoo.macro_f1(10), torch.randn(n, 10, generator=g), labels),
        "zoo.f_beta": make(uniloss.zoo.f_beta(1.0, threshold=0.0), torch.randn(n, generator=g), binary),
        "zoo.auroc": make(uniloss.zoo.auroc(), torch.randn(n, generator=g), binary),
        "zoo.top_k_accuracy(5)": make(uniloss.zoo.top_k_accuracy(5), torch.randn(n, 10, generator=g), labels),
    }


def sync_audit(device: str, tiny: bool) -> List[Dict]:
    out = []
    for name, build in loss_cases(device, tiny).items():
        fn, s, t = build()
        fn(s, t).backward()  # warm-up: first-call caches are allowed to synchronise
        fn, s, t = build()
        row: Dict = dict(case=name)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                fn(s, t).backward()
                row["synchronises"] = False
            except RuntimeError as exc:
                row["synchronises"], row["first"] = True, str(exc).splitlines()[0][:200]
            finally:
                torch.cuda.set_sync_debug_mode(0)
        else:
            from uniloss import _limits

            # what an accelerator gets
            with _limits.limits(cpu_static_max_bits=_limits.current_limits().static_max_bits):
                fn(s, t).backward()  # warm-up under that policy
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                    fn(s, t).backward()
            counts = {op: sum(1 for e in prof.events() if e.name == op) for op in SYNC_OPS}
            row["synchronising_ops"] = counts
            row["synchronises"] = any(counts.values())
        out.append(row)
        print(f"sync  {name:28s} {row}", flush=True)
    return out


def _time(fn: Callable[[], None], repeats: int, device: str) -> float:
    times = []
    for _ in range(repeats):
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _reasons(breaks) -> List[str]:
    """The distinct first lines of the graph-break reasons, with how often each occurred."""
    counts: Dict[str, int] = {}
    for b in breaks:
        line = " ".join(str(getattr(b, "reason", b)).split("Explanation:")[0].split())[:90]
        counts[line] = counts.get(line, 0) + 1
    return [f"{n}x {line}" for line, n in counts.items()]


def _forward(fn, model, one_score: bool):
    def forward(x, t):
        scores = model(x)
        return fn(scores[:, 0] if one_score else scores, t)
    return forward


def _step(fn, model, one_score: bool):
    forward = _forward(fn, model, one_score)

    def step(x, t):
        loss = forward(x, t)
        loss.backward()
        return loss
    return step


def _eager_and_compiled(step, forward, x, t, tiny: bool, device: str) -> Dict:
    """The step eager, the whole step compiled (its ``backward()`` inside: a graph break), and the
    forward pass and loss compiled with ``backward()`` called outside (the usual way to compile a
    training step; the backward pass is then AOTAutograd's compiled one)."""
    torch._dynamo.reset()
    compiled = torch.compile(step)
    compiled_forward = torch.compile(forward)
    repeats = 3 if tiny else 50
    for _ in range(2):  # compile
        compiled(x, t)
        compiled_forward(x, t).backward()
    eager, fast, fast_forward = [], [], []
    for _ in range(1 if tiny else 3):  # alternating: the machine's load falls on all three
        eager.append(_time(lambda: step(x, t), repeats, device))
        fast.append(_time(lambda: compiled(x, t), repeats, device))
        fast_forward.append(_time(lambda: compiled_forward(x, t).backward(), repeats, device))
    return dict(eager_ms=min(eager), compiled_ms=min(fast), compiled_forward_ms=min(fast_forward))


def compile_check(device: str, tiny: bool) -> List[Dict]:
    """``torch.compile`` of a training step (a linear layer and the loss), each case with the
    anchors drawn from a ``torch.Generator`` (its draws run eagerly between graphs) and from the
    global generator (``generator=None``: the draws are in the graph), and the usual loss's step
    (binary cross-entropy or cross-entropy) eager and compiled beside them."""
    out = []
    for name in ("AP", "accuracy", "zoo.macro_f1"):
        one_score = name == "AP"
        for generator in ("torch.Generator", "None (global)", "usual loss"):
            fn, s, t = loss_cases(device, tiny)[name]()
            if generator == "None (global)":
                fn.generator = None
            elif generator == "usual loss":
                fn = ((lambda z, y: torch.nn.functional.binary_cross_entropy_with_logits(z, y.float())) if one_score
                      else torch.nn.functional.cross_entropy)
            width = 1 if one_score else s.shape[-1]
            model = torch.nn.Linear(width, width).to(device)
            x = s.detach()[:, None].clone() if one_score else s.detach().clone()
            step = _step(fn, model, one_score)
            row: Dict = dict(case=name, generator=generator)
            try:
                torch._dynamo.reset()
                ex = torch._dynamo.explain(step)(x, t)
                row.update(graphs=ex.graph_count, graph_breaks=ex.graph_break_count,
                           reasons=_reasons(ex.break_reasons))
                row.update(_eager_and_compiled(step, _forward(fn, model, one_score), x, t, tiny, device))
            except Exception as exc:  # a failure to compile is a result
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            out.append(row)
            print(f"compile {name:12s} {row}", flush=True)
    return out


def graph_check(device: str, tiny: bool) -> List[Dict]:
    if torch.device(device).type != "cuda":
        return [dict(case="CUDA graphs", result="not applicable: no CUDA device")]
    from uniloss.experiments.models import ResNet20

    out = []
    n = 16 if tiny else 128
    for loss_name in ("cross-entropy", "UniLoss accuracy"):
        model = ResNet20(num_classes=10, in_channels=3).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        x = torch.randn(n, 3, 32, 32, device=device)
        y = torch.randint(0, 10, (n,), device=device)
        ul = uniloss.UniLoss(uniloss.MulticlassAccuracy(), generator=torch.Generator(device=device).manual_seed(0),
                             validate_args=False)
        loss_fn = torch.nn.functional.cross_entropy if loss_name == "cross-entropy" else ul

        def step():
            opt.zero_grad(set_to_none=False)
            loss_fn(model(x), y).backward()
            opt.step()

        row: Dict = dict(case=f"ResNet-20 step, batch {n}, {loss_name}")
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):
                    step()
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step()
            row["eager_ms"] = _time(step, 20, device)
            row["graph_ms"] = _time(graph.replay, 20, device)
            row["result"] = "captured"
        except Exception as exc:
            row["result"] = f"not capturable: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        out.append(row)
        print(f"graph {row}", flush=True)
    return out


def speed(device: str, tiny: bool, out: str) -> Dict:
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "speed.py"), "--device", device,
           "--out", os.path.join(out, "speed")]
    if tiny:
        cmd += ["--quick", "--only", "loss"]
    done = subprocess.run(cmd, cwd=ROOT)
    return dict(command=" ".join(cmd[1:]), returncode=done.returncode)


def markdown(report: Dict) -> str:
    m = report["machine"]
    where = m["card"] or f"CPU ({m['cpu']})"
    lines = [f"# Performance run on {where}", "",
             f"torch {m['torch']}, Python {m['python']}, {m['date']}. Regenerate: `{report['command']}`.", ""]
    if "speed" in report:
        lines += [f"Speed suite: [speed/results.md](speed/results.md) (exit status {report['speed']['returncode']}).", ""]
    if "sync" in report:
        lines += ["## Host synchronisations per loss call (validate_args=False)", "", "| case | synchronises | detail |",
                  "|---|---|---|"]
        for r in report["sync"]:
            detail = r.get("first") or json.dumps(r.get("synchronising_ops", {}))
            lines.append(f"| {r['case']} | {'yes' if r['synchronises'] else 'no'} | {detail} |")
        if not m["card"]:
            lines += ["", "On a CPU the detail counts the operators that would synchronise a GPU's host "
                      "(`nonzero`, `item`), under the layout policy an accelerator gets (a CPU itself lays every "
                      "problem out exactly: it has no device to wait for). PCK's case is a large heatmap (more "
                      "comparisons than chunk_bits): the chain lays out a run per pixel (0.11; the anchors' path goes "
                      "block by block, its blocks planned on the host)."]
        lines.append("")
    if "compile" in report:
        lines += ["## torch.compile of a training step", "", "| case | generator | graphs | graph breaks | eager ms | compiled ms | "
                  "compiled forward, backward outside ms | first break reasons / error |", "|---|---|---|---|---|---|---|---|"]
        for r in report["compile"]:
            lines.append(f"| {r['case']} | {r.get('generator', '')} | {r.get('graphs', '')} | {r.get('graph_breaks', '')} | "
                         f"{r.get('eager_ms', float('nan')):.2f} | {r.get('compiled_ms', float('nan')):.2f} | "
                         f"{r.get('compiled_forward_ms', float('nan')):.2f} | "
                         f"{r.get('error') or '; '.join(r.get('reasons', []))} |")
        lines += ["", "\"compiled ms\" compiles the whole step, `backward()` inside (a graph break there); the column "
                  "after it compiles the model and the loss and calls `backward()` outside, the usual way, whose "
                  "backward pass is AOTAutograd's compiled one. Graphs and breaks are those of the whole step.", ""]
    if "graphs" in report:
        lines += ["## CUDA graphs", ""] + [f"- {r['case']}: {r['result']}" + (
            f" (eager {r['eager_ms']:.2f} ms, replay {r['graph_ms']:.2f} ms)" if "graph_ms" in r else "")
            for r in report["graphs"]] + [""]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for results.json, README.md and speed/")
    parser.add_argument("--tiny", action="store_true", help="small sizes, the speed suite's --quick loss part only")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", nargs="+", choices=["speed", "sync", "compile", "graphs"],
                        default=["speed", "sync", "compile", "graphs"])
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    report: Dict = dict(machine=machine(args.device),
                        command="python scripts/gpu_performance.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    print(f"# {report['machine']}", flush=True)
    if "sync" in args.only:
        report["sync"] = sync_audit(args.device, args.tiny)
    if "compile" in args.only:
        report["compile"] = compile_check(args.device, args.tiny)
    if "graphs" in args.only:
        report["graphs"] = graph_check(args.device, args.tiny)
    if "speed" in args.only:
        report["speed"] = speed(args.device, args.tiny, args.out)
    with open(os.path.join(args.out, "results.json"), "w") as fh:
        json.dump(report, fh, indent=2)
    with open(os.path.join(args.out, "README.md"), "w") as fh:
        fh.write(markdown(report))
    return report


if __name__ == "__main__":
    main()
