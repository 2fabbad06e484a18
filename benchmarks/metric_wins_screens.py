"""One table of every metric-wins screen: each UniLoss setting's quick-screen mean per task.

    python benchmarks/metric_wins_screens.py      # writes docs/results/metric-wins/screens.md

Reads ``docs/results/metric-wins/quick-before`` (the usual losses, the baselines and the
defaults before this work) and every ``docs/results/metric-wins/screens/*/``: a screen's
``runs.log`` holds one line per finished run as ``uniloss reproduce metric-wins`` printed it
(``TASK LOSS seed N: VALUE (S s)``), so a screen stopped early still counts what it measured;
its ``results.json``, where present, records the variants' keywords and the command (a screen
stopped before its first report has them in ``variants.json``).
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "docs" / "results" / "metric-wins"
LINE = re.compile(r"^(\S+)\s+(.+?)\s+seed (\d+): ([0-9.]+|nan) \(")  # nan: a diverged run


def read_runs(folder: Path) -> dict:
    """``{(task, loss): {seed: value}}`` from a folder's runs.log (empty where a screen ran a probe instead)."""
    runs: dict = {}
    log = folder / "runs.log"
    for line in (log.read_text().splitlines() if log.exists() else ()):
        m = LINE.match(line.strip())
        if m:
            runs.setdefault((m.group(1), m.group(2)), {})[int(m.group(3))] = float(m.group(4))
    return runs


def main() -> str:
    base = read_runs(ROOT / "quick-before")
    tasks = list(dict.fromkeys(t for t, _ in base))
    rows = {loss: {t: v for (t, l), v in base.items() if l == loss} for loss in dict.fromkeys(l for _, l in base)}
    screens = sorted((ROOT / "screens").iterdir(), key=lambda p: int(p.name[1:]) if p.name[1:].isdigit() else 0)
    options, notes = {}, []
    for folder in screens:
        for (task, loss), seeds in read_runs(folder).items():
            name = f"{loss} [{folder.name}]"
            rows.setdefault(name, {})[task] = seeds
        for source in ("results.json", "variants.json"):  # variants.json: a screen stopped before its first report
            if (folder / source).exists():
                data = json.loads((folder / source).read_text())
                for k, v in (data.get("variants", {}) if source == "results.json" else data).items():
                    options[f"UniLoss, {k} [{folder.name}]"] = v
        if (folder / "NOTE.md").exists():  # a screen of an engine change that is not in the library
            notes.append(f"- {folder.name}: " + " ".join((folder / "NOTE.md").read_text().split()))
    default = rows["UniLoss (defaults)"]
    # From screen v10 on, the defaults of the time are pull=1, grad_scale="bounded": quick/'s row.
    current = {t: v for (t, l), v in read_runs(ROOT / "quick").items() if l == "UniLoss (defaults)"}
    rows["UniLoss (defaults since v10: pull=1, bounded)"] = current
    # From screen v15 on, the anchors are drawn the new way (2026-11-30): quick-new-draws/'s row.
    drawn = {t: v for (t, l), v in read_runs(ROOT / "quick-new-draws").items() if l == "UniLoss (defaults)"}
    rows["UniLoss (defaults, anchor draws of v15 on)"] = drawn
    # From screen v25 on, the defaults of 0.4 (0.3's on every task but MNIST-0, imbalanced AP and NDCG@5): quick-0.4/.
    latest = {t: v for (t, l), v in read_runs(ROOT / "quick-0.4").items() if l == "UniLoss (defaults)"}
    rows["UniLoss (defaults 0.4)"] = latest
    # From screen v33 on, the defaults of 0.5: 0.4's but on the three tasks whose metric weighs its runs
    # unequally (segmentation, balanced accuracy, macro-F1), where screen v31's runs at 1x are 0.5's.
    v31 = read_runs(ROOT / "screens" / "v31")
    now = dict(latest)
    now.update({t: v for (t, l), v in v31.items() if l == "UniLoss, dropsnow"})
    rows["UniLoss (defaults 0.5)"] = now
    lines = ["# Metric-wins screens", "",
             "Quick-screen test metric (x100), mean over the seeds that finished (count in brackets when fewer "
             "than 3); the difference to the defaults of the time below it (`UniLoss (defaults)` before screen "
             "v10, `UniLoss (defaults since v10: ...)` from v10 on, `UniLoss (defaults, anchor draws of v15 on)` "
             "from v15 on, `UniLoss (defaults 0.4)` from v25 on: 0.3's but on MNIST-0, imbalanced AP and NDCG@5; "
             "`UniLoss (defaults 0.5)` from v33 on: 0.4's but on segmentation, balanced accuracy and macro-F1, from "
             "screen v31's runs at 1x). "
             "A blank: "
             "not run (or the screen was stopped first). Regenerate: `python benchmarks/metric_wins_screens.py`.",
             "", "| loss | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for name, per_task in rows.items():
        cells = []
        for t in tasks:
            seeds = per_task.get(t)
            if not seeds:
                cells.append("")
                continue
            mean = statistics.mean(seeds.values()) * 100
            cell = ("diverged" if mean != mean else f"{mean:.2f}") + (f" ({len(seeds)})" if len(seeds) < 3 else "")
            screen = re.search(r"\[v(\d+)\]$", name)
            number = int(screen.group(1)) if screen else 0
            ref = now if number >= 33 else latest if number >= 25 else drawn if number >= 15 else current if number >= 10 \
                else default
            if not name.startswith("UniLoss (defaults") and name.startswith("UniLoss") and ref.get(t) and mean == mean:
                cell += f"<br>{mean - statistics.mean(ref[t].values()) * 100:+.2f}"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if options:
        lines += ["", "Keywords of the variants:", ""] + [f"- {k}: `{json.dumps(v)}`" for k, v in options.items()]
    if notes:
        lines += ["", "Screens of engine changes that were not adopted (each folder's patch.diff, against the "
                  "commit its NOTE.md names, reproduces it):", ""] + notes
    text = "\n".join(lines) + "\n"
    (ROOT / "screens.md").write_text(text)
    return text


if __name__ == "__main__":
    print(main())
