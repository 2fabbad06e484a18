"""Per-step time and memory of the pose losses, and the time of ``uniloss reproduce pose``.

    python benchmarks/pose_steps.py                  # table on stdout (about 2 minutes)
    python benchmarks/pose_steps.py --json out.json  # also the raw figures

Method: one thread (as each ``uniloss reproduce`` run), fixed seeds, the reduced configuration of
``digits-pose`` (hourglass width 32, batch 16, 16 x 16 heatmaps, real canvases). For each loss:
``--steps`` whole training steps (forward, loss, backward, RMSProp) after 2 warm-up steps, median
and interquartile range; the loss alone (forward + backward on fixed heatmaps); the loss's peak
memory above what was live before it, in a fresh process, during one forward + backward (on a
CPU, which has no allocator statistics, the sampled resident set; on CUDA the allocator's peak;
see :func:`loss_memory`). Also the evaluation forward per canvas, and the issue's memory case: PCK on 64 x 64
heatmaps, batch 16, a positive disc of about 180 pixels (about 700k comparisons per joint).

The table estimate: per run, ``epochs * (train / batch) * step + epochs * (val + test) * eval +
setup``; runs two at a time (``--jobs 2``), 9 losses x 3 seeds. It assumes each run has a core to
itself; on a machine shared with other work, time two real runs side by side instead
(``docs/results/pose/README.md`` does both).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Dict, List

import torch


def _quartiles(values: List[float]) -> Dict[str, float]:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return {"median": statistics.median(values), "q1": q[0], "q3": q[2]}


def _loss_inputs(heat: int, batch: int, radius: float, seed: int = 0):
    """Random heatmaps and joints (inside the heatmap) with a PCK radius of ``radius`` pixels."""
    from uniloss.experiments.pose import pack_keypoints

    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(batch, 1, 1, heat, heat, generator=g)
    xy = (torch.rand(batch, 1, 2, generator=g) * (heat - 2 * radius) + radius) * 4 + 1.5  # input px
    y = pack_keypoints(xy, torch.ones(batch, 1), torch.full((batch,), 2 * radius * 4))
    return scores, y


def _rss() -> int:
    """Current resident set size in bytes (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def loss_memory(loss: str, heat: int, batch: int, radius: float) -> Dict[str, float]:
    """Peak memory (MB) of one forward + backward of ``loss`` above what was live before it.

    CUDA: the allocator's peak. CPU: the resident set sampled every 0.2 ms by a thread while
    the loss runs, in a process started with ``MALLOC_MMAP_THRESHOLD_=65536`` so that freed
    tensors leave the resident set (see :func:`_memory_in_subprocess`)."""
    import threading

    from uniloss.experiments.pose import pose_loss

    fn, module = pose_loss(loss, torch.Generator().manual_seed(0), stride=4)
    scores, y = _loss_inputs(heat, batch, radius)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    scores, y = scores.to(device), y.to(device)
    s = scores.clone().requires_grad_()
    fn(s.detach().clone().requires_grad_(), y).backward()  # warm-up: lazy initialisation
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn(s, y).backward()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        base, top, done = _rss(), [0], threading.Event()

        def sample() -> None:
            while not done.is_set():
                top[0] = max(top[0], _rss())
                time.sleep(0.0002)

        thread = threading.Thread(target=sample)
        thread.start()
        fn(s, y).backward()
        done.set()
        thread.join()
        peak = max(top[0], _rss()) - base
    bits = module.last.num_bits if module is not None else 0
    return {"peak_mb": peak / 2**20, "num_bits": bits, "device": device}


def _memory_in_subprocess(loss: str, heat: int, batch: int, radius: float) -> Dict[str, float]:
    code = (f"import json, torch; torch.set_num_threads(1); import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
            f"from pose_steps import loss_memory; print(json.dumps(loss_memory({loss!r}, {heat}, {batch}, {radius})))")
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(steps: int, losses: List[str]) -> Dict:
    from uniloss.experiments.pose import REDUCED, REDUCED_RECIPE, digits_pose_split, pose_loss

    torch.set_num_threads(1)
    x, y = digits_pose_split("train", size=16 * (steps + 2))
    results: Dict = {"losses": {}}
    for loss in losses:
        torch.manual_seed(0)
        model = REDUCED.model()
        opt = torch.optim.RMSprop(model.parameters(), lr=REDUCED_RECIPE.lr)
        fn, _ = pose_loss(loss, torch.Generator().manual_seed(0), stride=REDUCED.stride)
        times = []
        for i in range(steps + 2):
            xb, yb = x[16 * i : 16 * (i + 1)], y[16 * i : 16 * (i + 1)]
            t = time.perf_counter()
            out = fn(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            out.backward()
            opt.step()
            if i >= 2:
                times.append(time.perf_counter() - t)
        scores, yy = _loss_inputs(16, 16, 2.0)
        loss_times = []
        for i in range(steps + 2):
            s = scores.clone().requires_grad_()
            t = time.perf_counter()
            fn(s, yy).backward()
            if i >= 2:
                loss_times.append(time.perf_counter() - t)
        results["losses"][loss] = {
            "step_s": _quartiles(times), "loss_s": _quartiles(loss_times),
            "memory_16x16": _memory_in_subprocess(loss, 16, 16, 2.0),
        }
        print(f"  {loss:14s} step {statistics.median(times) * 1000:7.1f} ms   loss {statistics.median(loss_times) * 1000:6.2f} ms",
              file=sys.stderr, flush=True)
    model = REDUCED.model().eval()
    xe = x[:256]
    with torch.no_grad():
        model(xe[:32])
        t = time.perf_counter()
        model(xe)
        results["eval_per_canvas_s"] = (time.perf_counter() - t) / len(xe)
    results["issue_case_64x64"] = {
        "uniloss": {**_memory_in_subprocess("uniloss", 64, 16, 7.6)},
    }
    scores, yy = _loss_inputs(64, 16, 7.6)
    fn, _ = pose_loss("uniloss", torch.Generator().manual_seed(0), stride=4)
    ts = []
    for i in range(3):
        s = scores.clone().requires_grad_()
        t = time.perf_counter()
        fn(s, yy).backward()
        ts.append(time.perf_counter() - t)
    results["issue_case_64x64"]["uniloss"]["loss_s"] = _quartiles(ts[1:])
    return results


def estimate(results: Dict, jobs: int = 2, seeds: int = 3, setup_s: float = 15.0) -> Dict:
    """Wall time of ``uniloss reproduce pose`` from the measured step and evaluation times."""
    from uniloss.experiments.pose import DIGITS_POSE, REDUCED, REDUCED_RECIPE

    steps = -(-REDUCED.train // REDUCED_RECIPE.batch_size)
    eval_n = DIGITS_POSE["val"][0] + DIGITS_POSE["test"][0]
    runs = {}
    for loss, r in results["losses"].items():
        epoch = steps * r["step_s"]["median"] + eval_n * results["eval_per_canvas_s"]
        runs[loss] = {"epoch_s": epoch, "run_s": REDUCED_RECIPE.epochs * epoch + setup_s}
    total_run_s = seeds * sum(v["run_s"] for v in runs.values())
    return {"per_loss": runs, "serial_s": total_run_s, "wall_s_with_jobs": total_run_s / jobs, "jobs": jobs,
            "seeds": seeds}


def main() -> None:
    from uniloss.experiments.pose import LOSSES

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--losses", nargs="+", default=list(LOSSES))
    parser.add_argument("--json")
    args = parser.parse_args()
    results = measure(args.steps, args.losses)
    results["estimate"] = estimate(results)
    results["machine"] = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "load_average": os.getloadavg(), "torch": torch.__version__, "threads": 1,
                          "date": time.strftime("%Y-%m-%d")}
    print("| loss | train step (ms, median [q1, q3]) | loss fwd+bwd (ms) | loss peak memory (MB) | bits | est. epoch (s) |")
    print("|---|---|---|---|---|---|")
    for loss, r in results["losses"].items():
        st, ls, mem = r["step_s"], r["loss_s"], r["memory_16x16"]
        print(f"| {loss} | {st['median'] * 1e3:.0f} [{st['q1'] * 1e3:.0f}, {st['q3'] * 1e3:.0f}] | "
              f"{ls['median'] * 1e3:.2f} | {mem['peak_mb']:.1f} | {mem['num_bits']} | "
              f"{results['estimate']['per_loss'][loss]['epoch_s']:.0f} |")
    issue = results["issue_case_64x64"]["uniloss"]
    print(f"\nevaluation: {results['eval_per_canvas_s'] * 1e3:.2f} ms per canvas")
    print(f"issue case (64x64 heatmaps, batch 16, r=7.6): {issue['num_bits']} comparisons, "
          f"{issue['loss_s']['median']:.2f} s, peak {issue['peak_mb']:.0f} MB ({issue['device']})")
    est = results["estimate"]
    print(f"uniloss reproduce pose: {est['serial_s'] / 3600:.2f} h of runs, about {est['wall_s_with_jobs'] / 3600:.2f} h "
          f"wall with --jobs {est['jobs']} (load average {os.getloadavg()[0]:.1f})")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
