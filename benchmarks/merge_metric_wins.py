"""Merge metric-wins reports that were run as separate commands (e.g. the usual losses and
baselines in one, a variant in another, or tasks run apart) into one report: the runs pooled,
the rows, verdicts and best-of-grid tables recomputed, the commands listed in order.

    python benchmarks/merge_metric_wins.py OUT PART [PART ...]

Each PART is a folder holding a ``results.json`` written by ``uniloss reproduce metric-wins``;
OUT gets ``results.json``, ``results.md`` and ``curves.png``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from uniloss.experiments import metric_wins as M
from uniloss.experiments.reproduce import command_line


def merge(parts: list) -> dict:
    reports = [json.loads((Path(p) / "results.json").read_text()) for p in parts]
    runs = [r for rep in reports for r in rep["runs"]]
    report = dict(reports[0])
    report["runs"] = runs
    report["seeds"] = sorted({seed for rep in reports for seed in rep.get("seeds", [])})
    report["rows"] = M.summarise(runs)
    report["verdicts"] = M.verdicts(report["rows"])
    report["lr_scales"] = sorted({s for rep in reports for s in rep.get("lr_scales", [1.0])})
    if len(report["lr_scales"]) > 1:
        report["best_lr_rows"] = M.best_of_grid(report["rows"])
        report["best_lr_verdicts"] = M.verdicts(report["best_lr_rows"], same_lr=False)
    report["variants"] = {k: v for rep in reports for k, v in rep.get("variants", {}).items()}
    report["command"] = " ; ".join(rep["command"] for rep in reports)
    report["total_seconds"] = sum(rep["total_seconds"] for rep in reports)
    report["complete"] = all(rep.get("complete", True) for rep in reports)
    return report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("parts", nargs="+")
    args = parser.parse_args(argv)
    report = merge(args.parts)
    report["command"] += " ; " + command_line("benchmarks/merge_metric_wins.py", argv)  # the merge is a step too
    M.write_report(report, args.out)


if __name__ == "__main__":
    main()
