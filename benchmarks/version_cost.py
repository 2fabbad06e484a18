"""The training-step cost of this checkout against an earlier commit's, measured in one run.

    python benchmarks/version_cost.py --ref c54ecf7      # the commit of docs/performance's table

Extracts ``src/`` of ``--ref`` with ``git archive`` into a temporary folder and times, in fresh
interpreters alternating between the two versions (``--rounds`` each, one thread), the issue's
two small cases with each version's default loss: the MNIST MLP training step (784-500-300-1,
batch 16, SGD lr 0.01 momentum 0.5; ``UniLoss(AveragePrecision())`` against binary
cross-entropy) and an accuracy loss call at 128 x 10 (forward and backward, against
cross-entropy), and an AP loss call at batch 16 (leaf scores, about 30% positives; against binary
cross-entropy). Prints each round's medians and ratios, then the median over rounds per version.
The machine is shared and noisy: read the ratios, measured side by side, not the milliseconds.

``--interleaved`` instead loads ``--ref``'s package under another name (``uniloss_ref``; the core
imports itself relatively) into this process and alternates the two versions and the usual loss
call by call, ``--calls`` times per case: machine noise between processes then hits every row
alike. It prints each case's median per version, the usual loss's, and the ratios::

    python benchmarks/version_cost.py --ref 2df9b5b --interleaved

``--zoo NAME ...`` (with ``--interleaved``) times those cases of ``benchmarks/zoo_speed.py``
instead (their names as its table gives them, e.g. ``"mean_iou(2)"``; a loss call on leaf
scores, forward and backward, against that case's usual loss)::

    python benchmarks/version_cost.py --ref bcae8f3 --interleaved --calls 200 --zoo "mean_iou(2)" "macro_f1(100)"
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The cases, shared by both modes: data, the MLP step and a loss call (run in a fresh interpreter
# below, or exec'd into a namespace by --interleaved).
SETUP = r"""
import statistics, time, torch, torch.nn.functional as F
from torch import nn
torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
x = torch.randn(16, 1, 28, 28, generator=g)
y = (torch.rand(16, generator=g) < 0.1).long()
y[0] = 1
xa = torch.randn(128, 10, generator=g)
ya = torch.randint(0, 10, (128,), generator=g)
xb = torch.randn(16, generator=g)
yb = (torch.rand(16, generator=g) < 0.3).long()
yb[0], yb[1] = 1, 0
def bce(s, t):
    return F.binary_cross_entropy_with_logits(s, t.float())
def stepper(loss):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(784, 500), nn.ReLU(), nn.Linear(500, 300), nn.ReLU(), nn.Linear(300, 1))
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.5)
    def run():
        value = loss(m(x).reshape(-1), y)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
    return run
def call(loss, scores, target):
    def run():
        loss(scores.detach().requires_grad_(), target).backward()
    return run
"""

# Runs in a fresh interpreter with one version of the package on its path; prints one line of
# `key=value` medians (milliseconds).
PROBE = SETUP + r"""
import uniloss
def med(f, inner=50, reps=15):
    for _ in range(10):
        f()
    ts = []
    for _ in range(reps):
        a = time.perf_counter()
        for _ in range(inner):
            f()
        ts.append((time.perf_counter() - a) / inner * 1e3)
    return statistics.median(ts)
ap = uniloss.UniLoss(uniloss.AveragePrecision(), generator=torch.Generator().manual_seed(0))
acc = uniloss.UniLoss(uniloss.MulticlassAccuracy(), generator=torch.Generator().manual_seed(0))
r = dict(mlp_uniloss=med(stepper(ap)), mlp_bce=med(stepper(bce)),
         acc_uniloss=med(call(acc, xa, ya)), acc_ce=med(call(F.cross_entropy, xa, ya)),
         ap_uniloss=med(call(ap, xb, yb)), ap_bce=med(call(bce, xb, yb)))
print(" ".join(f"{k}={v:.4f}" for k, v in r.items()))
"""


def alternate(runs: "dict", calls: int, warmup: int = 20) -> "dict[str, float]":
    """The median time (ms) of each of ``runs`` (name -> callable), called in turn ``calls`` times,
    the first of each turn rotating, after ``warmup`` calls each."""
    import time

    for fn in runs.values():
        for _ in range(warmup):
            fn()
    times: dict = {k: [] for k in runs}
    names = list(runs)
    for i in range(calls):
        for k in names[i % len(names):] + names[:i % len(names)]:
            start = time.perf_counter()
            runs[k]()
            times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def traced_table(cases, calls: int, ref: str, same: bool = False) -> None:
    """Prints a markdown table: each case ``(name, fn, scores, target)`` traced by ``from_metric``
    of this checkout and of commit ``ref``, a loss call (forward and backward, library defaults)
    on ``scores`` times a parameter, calls alternating, medians of ``calls``. ``same``: after three
    calls of each, both give the same loss and gradient (checked); a case the commit refuses with
    a ``TraceError`` past ``probe_limit`` is timed in this checkout alone."""
    import tempfile

    import torch

    import uniloss

    torch.set_num_threads(1)
    w = torch.nn.Parameter(torch.ones(1))
    print(f"| case | {ref} (ms) | this checkout (ms) | this / {ref} |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        old = load_ref(tmp, ref)
        for name, fn, x, y in cases:
            losses = {"ref": old.UniLoss(old.from_metric(fn)), "this": uniloss.UniLoss(uniloss.from_metric(fn))}
            ends, refused = {}, ""
            for key, loss in losses.items():  # the first calls check the tape and the probes
                try:
                    for _ in range(3 if same else 1):
                        s = x.clone().requires_grad_()
                        value = loss(s, y)
                        value.backward()
                except old.TraceError as error:  # past probe_limit: the commit refuses it
                    if key != "ref" or ", and probing it costs " not in str(error):
                        raise
                    refused = str(error).split(", and probing it costs ")[1].split(" per call")[0]
                    del losses["ref"]
                    break
                ends[key] = (value.detach(), s.grad)
            if same and "ref" in ends:
                torch.testing.assert_close(ends["ref"], ends["this"], rtol=1e-5, atol=1e-7)
            med = alternate({k: (lambda f=f: f(x * w, y).backward()) for k, f in losses.items()}, calls, warmup=2)
            if refused:
                print(f"| {name} | refused ({refused}, above probe_limit) | {med['this']:.2f} | |", flush=True)
            else:
                print(f"| {name} | {med['ref']:.2f} | {med['this']:.2f} | {med['this'] / med['ref']:.3f}x |", flush=True)


def measure(src: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    values = dict(item.split("=") for item in out.stdout.split())
    r = {k: float(v) for k, v in values.items()}
    r["mlp_ratio"] = r["mlp_uniloss"] / r["mlp_bce"]
    r["acc_ratio"] = r["acc_uniloss"] / r["acc_ce"]
    r["ap_ratio"] = r["ap_uniloss"] / r["ap_bce"]
    return r


def load_ref(tmp: str, ref: str):
    """``--ref``'s package, imported as ``uniloss_ref`` from ``tmp``."""
    import importlib

    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "src/uniloss"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
    os.rename(Path(tmp) / "src" / "uniloss", Path(tmp) / "src" / "uniloss_ref")
    sys.path.insert(0, str(Path(tmp) / "src"))
    return importlib.import_module("uniloss_ref")


def _zoo_cases(old, names, call) -> dict:
    """``--zoo``: those cases of ``benchmarks/zoo_speed.py``, each metric of both versions (built
    from its name, ``zoo.<name>``) and the case's usual loss."""
    import torch

    import uniloss

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import zoo_speed

    data, known = zoo_speed.batches("cpu"), {case[0]: case for case in zoo_speed.CASES}
    cases = {}
    for name in names:
        if name not in known or name.startswith("uniloss."):
            raise SystemExit(f"--zoo: unknown case {name!r}; the zoo's: {[c for c in known if not c.startswith('uniloss.')]}")
        _, _, batch, base_name, base = known[name]
        scores, target = data[batch]
        runs = {k: call(u.UniLoss(eval("zoo." + name, {"zoo": u.zoo}), generator=torch.Generator().manual_seed(0)),
                        scores, target) for k, u in (("ref", old), ("now", uniloss))}
        cases[f"zoo.{name}, {batch} (vs {base_name})"] = dict(runs, base=call(base, scores, target))
    return cases


def interleaved(ref: str, calls: int, zoo_names=None) -> dict:
    """The three cases of :data:`PROBE` (or ``zoo_names``' cases), both versions and the usual
    loss in this process, call by call."""
    import torch

    import uniloss

    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        old = load_ref(tmp, ref)
        ns: dict = {}
        exec(SETUP, ns)  # (sets one thread)
        stepper, call, bce, F = ns["stepper"], ns["call"], ns["bce"], ns["F"]

        def versions(make):
            return {"ref": old.UniLoss(make(old), generator=torch.Generator().manual_seed(0)),
                    "now": uniloss.UniLoss(make(uniloss), generator=torch.Generator().manual_seed(0))}

        if zoo_names:
            cases = _zoo_cases(old, zoo_names, call)
        else:
            ap, acc = versions(lambda u: u.AveragePrecision()), versions(lambda u: u.MulticlassAccuracy())
            cases = {
                "MLP step, batch 16 (AP vs BCE)": dict({k: stepper(v) for k, v in ap.items()}, base=stepper(bce)),
                "accuracy 128 x 10 (vs CE)": dict({k: call(v, ns["xa"], ns["ya"]) for k, v in acc.items()},
                                                  base=call(F.cross_entropy, ns["xa"], ns["ya"])),
                "AP batch 16 (vs BCE)": dict({k: call(v, ns["xb"], ns["yb"]) for k, v in ap.items()},
                                             base=call(bce, ns["xb"], ns["yb"])),
            }
        out = {}
        try:
            for name, runs in cases.items():
                med = out[name] = alternate(runs, calls)
                print(f"{name}: {ref} {med['ref']:.3f} ms = {med['ref'] / med['base']:.2f}x, this checkout "
                      f"{med['now']:.3f} ms = {med['now'] / med['base']:.2f}x the usual loss's {med['base']:.3f} ms; "
                      f"this checkout / {ref}: {med['now'] / med['ref']:.2f}x", flush=True)
        finally:
            torch.set_num_threads(threads)
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", default="c54ecf7", help="the earlier commit (default: docs/performance's table)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--interleaved", action="store_true", help="both versions in this process, call by call")
    parser.add_argument("--calls", type=int, default=3000, help="--interleaved: timed calls per version and case")
    parser.add_argument("--zoo", nargs="+", metavar="NAME", help="--interleaved: these zoo_speed.py cases instead")
    args = parser.parse_args(argv)
    if args.zoo and not args.interleaved:
        parser.error("--zoo needs --interleaved")
    if args.interleaved:
        return interleaved(args.ref, args.calls, args.zoo)
    results: dict = {"ref": [], "now": []}
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.ref, "src"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        versions = {"ref": Path(tmp) / "src", "now": ROOT / "src"}
        for i in range(args.rounds):
            for name in (("ref", "now") if i % 2 == 0 else ("now", "ref")):
                r = measure(versions[name])
                results[name].append(r)
                print(f"round {i + 1} {name:3s} ({args.ref if name == 'ref' else 'this checkout'}): MLP step "
                      f"{r['mlp_uniloss']:.2f} ms vs BCE {r['mlp_bce']:.2f} ms = {r['mlp_ratio']:.2f}x; accuracy 128 x 10 "
                      f"{r['acc_uniloss']:.3f} ms vs CE {r['acc_ce']:.3f} ms = {r['acc_ratio']:.1f}x; AP batch 16 "
                      f"{r['ap_uniloss']:.3f} ms vs BCE {r['ap_bce']:.3f} ms = {r['ap_ratio']:.1f}x", flush=True)
    for name in ("ref", "now"):
        rows = results[name]
        print(f"median over {len(rows)} rounds, {args.ref if name == 'ref' else 'this checkout'}: MLP step "
              f"{statistics.median(r['mlp_ratio'] for r in rows):.2f}x BCE's, accuracy loss call "
              f"{statistics.median(r['acc_uniloss'] for r in rows):.3f} ms = "
              f"{statistics.median(r['acc_ratio'] for r in rows):.1f}x CE's, AP batch 16 loss call "
              f"{statistics.median(r['ap_uniloss'] for r in rows):.3f} ms = "
              f"{statistics.median(r['ap_ratio'] for r in rows):.1f}x BCE's")
    return results


if __name__ == "__main__":
    main()
