"""Every functional metric of torchmetrics' classification and retrieval modules, and the rank
correlations of its regression module, through ``uniloss.from_metric``, unmodified: does it
train, is its value torchmetrics' own, what does a loss call cost.

    python benchmarks/torchmetrics_survey.py                       # prints a markdown table
    python benchmarks/torchmetrics_survey.py --out docs/performance/torchmetrics-survey.md

Each function gets the inputs its name asks for: binary ``[64]`` scores and 0/1 labels (about
30% positive), multi-class ``[64, 4]`` scores and labels, multi-label ``[64, 4]`` scores and 0/1
labels, for the retrieval functions one query of 64 items (about 20% relevant), and for the rank
correlations (``spearman_corrcoef``, ``kendall_rank_corrcoef``: the regression metrics computed
from the scores' order alone) a continuous target of 64 values, against mean squared error;
scores are logits that rank most of the positives first (for the correlations, the target plus
as much noise). Functions that need a parameter get a usual one
(``beta=2``; a recall, precision, sensitivity or specificity of 0.5); those that return a
tuple (the ``*_at_fixed_*`` ones) are traced through their first output. Metrics where lower
is better (distances, errors, losses) are passed ``higher_is_better=False``. A row is:

* ``trains``: ``UniLoss(from_metric(fn))`` ran a loss call and its backward; ``last.metric``
  equals ``fn`` on the same scores (within 1e-5) and the gradient is finite. The cost is the
  median of 5 loss calls (forward and backward, library defaults, one thread) after one call
  that fills the caches, and the ratio to a plain ``binary_cross_entropy_with_logits`` /
  ``cross_entropy`` call on the same scores, measured alongside (this machine is shared: read
  the ratio).
* ``refused``: ``from_metric`` raised a ``TraceError``, whose first sentence is quoted (a metric
  that is not computed from comparisons of the scores, or a step it does not know).
* ``not a value``: ``fn`` returns a curve, a confusion matrix or a vector, not one number.
* ``needs other inputs``: ``fn`` takes more than scores and labels (the fairness metrics' groups).
"""

from __future__ import annotations

import argparse
import inspect
import re
import statistics
import sys
import time
import warnings
from typing import Any, Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F

import uniloss

N, K = 64, 4
_LOWER = ("hamming_distance", "calibration_error", "hinge_loss", "coverage_error", "ranking_loss", "_eer",
          "fall_out")
_PARAMS = {"fbeta_score": {"beta": 2.0}, "precision_at_fixed_recall": {"min_recall": 0.5},
           "recall_at_fixed_precision": {"min_precision": 0.5},
           "sensitivity_at_specificity": {"min_specificity": 0.5},
           "specificity_at_sensitivity": {"min_sensitivity": 0.5}}


def _bce(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(s, t.float())


def _inputs(kind: str, g: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor, Callable]:
    """Scores, labels and the usual loss for a function of ``kind``."""
    if kind == "multiclass":
        y = torch.randint(0, K, (N,), generator=g)
        return torch.randn(N, K, generator=g) + 1.5 * F.one_hot(y, K), y, F.cross_entropy
    if kind == "multilabel":
        y = (torch.rand(N, K, generator=g) < 0.3).long()
        return torch.randn(N, K, generator=g) + 1.5 * y, y, _bce
    if kind == "regression":
        y = torch.randn(N, generator=g)
        return y + torch.randn(N, generator=g), y, F.mse_loss
    y = (torch.rand(N, generator=g) < (0.3 if kind == "binary" else 0.2)).long()  # binary, or one query
    y[:2] = torch.tensor([1, 0])
    return torch.randn(N, generator=g) + 1.5 * y, y, _bce


def _functions() -> List[Tuple[str, str, Callable]]:
    from torchmetrics.functional import classification, retrieval

    out = []
    for module, kinds in ((classification, ("binary", "multiclass", "multilabel")), (retrieval, ("retrieval",))):
        for name in sorted(dir(module)):
            f = getattr(module, name)
            kind = next((k for k in kinds if name.startswith(k + "_")), None)
            if kind is None or inspect.isclass(f) or not callable(f):
                continue
            params = next((p for suffix, p in _PARAMS.items() if name.endswith(suffix)), {})
            if kind in ("multiclass", "multilabel"):
                size = "num_classes" if kind == "multiclass" else "num_labels"
                params = {size: K, **params}
            out.append((name, kind, _bound(f, params)))
    from torchmetrics.functional import regression

    out += [(name, "regression", _bound(getattr(regression, name), {}))
            for name in ("spearman_corrcoef", "kendall_rank_corrcoef")]
    return out


def _bound(f: Callable, params: dict) -> Callable:
    def fn(s: torch.Tensor, t: torch.Tensor) -> Any:
        value = f(s, t, **params)
        # the binary ``*_at_fixed_*`` metrics return ``(value, threshold)``: two scalars
        pair = isinstance(value, tuple) and len(value) == 2 and all(
            isinstance(v, torch.Tensor) and v.numel() == 1 for v in value)
        return value[0] if pair else value

    fn.__name__ = f.__name__
    return fn


def median_ms(call: Callable[[], Any], times: int = 5) -> float:
    """The median wall time of ``times`` calls of ``call``, in milliseconds."""
    out = []
    for _ in range(times):
        t = time.perf_counter()
        call()
        out.append((time.perf_counter() - t) * 1e3)
    return statistics.median(out)


def print_page(lines: List[str], out: Optional[str]) -> None:
    """Prints a markdown page given as lines, and writes it to ``out`` too where given."""
    text = "\n".join(lines) + "\n"
    if out:
        with open(out, "w") as f:
            f.write(text)
    print(text, end="")


def survey(names: Optional[List[str]] = None) -> List[Tuple[str, str, str, str]]:
    rows = []
    g = torch.Generator().manual_seed(0)
    for name, kind, fn in _functions():
        scores, target, usual = _inputs(kind, g)  # drawn for every function: --only sees the same data
        if names and name not in names:
            continue
        try:
            ref = fn(scores, target)
        except Exception as exc:  # noqa: BLE001 (a survey: every failure is a row)
            rows.append((name, "needs other inputs", f"{type(exc).__name__}: {str(exc).splitlines()[0][:90]}", ""))
            continue
        if not isinstance(ref, torch.Tensor) or ref.numel() != 1:
            rows.append((name, "not a value", f"returns {type(ref).__name__}"
                         + (f" of shape {list(ref.shape)}" if isinstance(ref, torch.Tensor) else ""), ""))
            continue
        lower = any(part in name for part in _LOWER)
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            try:
                loss = uniloss.UniLoss(uniloss.from_metric(fn, higher_is_better=not lower))

                def call() -> torch.Tensor:
                    x = scores.clone().requires_grad_()
                    loss(x, target).backward()
                    return x

                x = call()
            except uniloss.TraceError as exc:
                why = re.split(r"\. (?=[A-Z])", re.sub(r"^fn \S+ at \S+: ", "", str(exc)))[0]
                why = re.sub(r"\s*\(at \S+ in .*$|; discrete steps found:.*$", "", why)  # the place in torchmetrics
                why = re.sub(r"/\S*/site-packages/", "", why)
                why = why.split(" (write ")[0]  # the rewrite a user's own code could take, not torchmetrics'
                rows.append((name, "refused", why[:240].replace("|", "/"), ""))
                continue
            except Exception as exc:  # noqa: BLE001
                rows.append((name, "error", f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}", ""))
                continue
            ms = median_ms(call)
        usual_ms = median_ms(lambda: usual(scores.clone().requires_grad_(), target).backward())
        value = float(loss.last.metric)
        exact = abs(value - float(ref)) <= 1e-5 and x.grad is not None and bool(torch.isfinite(x.grad).all())
        notes = sorted({_note(str(w.message)) for w in said if str(w.message).startswith("from_metric")})
        status = "trains" if exact else f"value {value:.4f}, fn {float(ref):.4f}"
        rows.append((name, status, f"{ms:.1f} ms ({ms / usual_ms:.0f}x the usual loss)"
                     + ("; higher_is_better=False" if lower else ""), "; ".join(notes)))
        print(f"{name}: {rows[-1][1]} {rows[-1][2]}", file=sys.stderr, flush=True)
    return rows


def _note(message: str) -> str:
    """A from_metric warning in a few words."""
    if "cannot batch" in message or "cannot be batched" in message:
        return "vmap cannot batch fn (data-dependent shapes): fn replayed one configuration at a time"
    if "turns at more configurations" in message:
        return "a Python branch on every point of a curve: fn replayed one configuration at a time"
    if "one at a time" in message:
        return "Python branches: fn replayed one configuration at a time"
    return message.split(":", 1)[1].strip()[:100]


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform

        return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="write the table there (markdown) as well")
    parser.add_argument("--only", nargs="*", help="these functions alone")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import torchmetrics

    rows = survey(args.only)
    counts = {s: sum(1 for r in rows if r[1] == s) for s in ("trains", "refused", "not a value", "needs other inputs")}
    lines = [
        "# torchmetrics' functional metrics through `from_metric`",
        "",
        "`python benchmarks/torchmetrics_survey.py --out docs/performance/torchmetrics-survey.md`: every "
        "functional metric of torchmetrics' classification and retrieval modules, and the rank correlations of "
        "its regression module, through `uniloss.from_metric`, "
        "unmodified. " + " ".join(__doc__.split(chr(10) * 2)[2].split()).replace("``", "`"),
        "",
    ] + [("- " + " ".join(item.split())).replace("``", "`") for item in __doc__.split(chr(10) * 2)[3].split("* ")[1:]] + ["",
        "",
        f"{_cpu()}, torch {torch.__version__}, torchmetrics {torchmetrics.__version__}, "
        f"uniloss {uniloss.__version__}, one thread, {time.strftime('%Y-%m-%d')}. Of {len(rows)} functions: "
        + ", ".join(f"{v} {k}" for k, v in counts.items()) + ".",
        "",
        "| function | result | cost of a loss call, or why | from_metric said |",
        "|---|---|---|---|",
    ] + [f"| `{a}` | {b} | {c} | {d} |" for a, b, c, d in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
