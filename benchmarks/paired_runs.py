"""Two trained classifiers compared image by image on the same splits: each one's accuracy, the
images only one of them gets right, and the exact McNemar test of whether that split's
difference could be chance.

    python benchmarks/paired_runs.py runs/paper-200/multiclass/fashion-resnet20/ce-seed0 \\
        runs/paper-200/multiclass/fashion-resnet20/uniloss-seed0 \\
        --out docs/results/multiclass/paper-200/paired.md

Each folder is a run of ``uniloss train`` (or ``uniloss reproduce``) with its ``checkpoint.pt``;
the model is the checkpoint's (its last finished epoch), the splits are the experiment's own
(training images without augmentation, validation, test), read from ``--data-dir``, then
``$UNILOSS_DATA`` and ``../shared/data``. Only experiments whose prediction is the argmax of the
outputs over classes (the multi-class accuracy ones) are compared.

The test reads one seed's two models on one split: a small p says the two models differ on
that split's images beyond the luck of which images it holds, not that one loss is better (that
takes several seeds). A large p says the split cannot tell these two models apart.
"""

import argparse
import datetime
import json
import math
import os
from typing import Dict, Optional, Tuple

import torch

from uniloss.experiments.loop import predict


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: the chance, under a fair coin for each of the
    ``only_a + only_b`` images exactly one model gets right, of a split at least as uneven
    (doubled one tail, at most 1; 1.0 when no image separates them)."""
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired_counts(right_a: torch.Tensor, right_b: torch.Tensor) -> Dict[str, int]:
    """Counts of a split's images by which of the two models gets them right (bool ``[N]`` each)."""
    if right_a.shape != right_b.shape or right_a.dim() != 1:
        raise ValueError(f"expected two bool vectors of one length, got {tuple(right_a.shape)} and "
                         f"{tuple(right_b.shape)}")
    return {"n": int(right_a.numel()), "both": int((right_a & right_b).sum()),
            "only_a": int((right_a & ~right_b).sum()), "only_b": int((~right_a & right_b).sum()),
            "neither": int((~right_a & ~right_b).sum())}


def _right(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    out = predict(model, x)  # as the training run's own evaluation reads it
    if out.dim() != 2 or y.dim() != 1:
        raise SystemExit(f"outputs of shape {tuple(out.shape)} with targets {tuple(y.shape)}: only "
                         "multi-class experiments (argmax over classes) are compared")
    return out.argmax(1) == y


def _load(folder: str) -> Tuple[dict, torch.nn.Module, int]:
    from uniloss.experiments.checkpoint import load_checkpoint
    from uniloss.experiments.registry import get_experiment

    state = load_checkpoint(os.path.join(folder, "checkpoint.pt"))
    config = state["config"]
    model = get_experiment(config["experiment"]).model(config["loss"])
    model.load_state_dict(state["model"])
    return config, model, int(state["epoch"])


def compare(folder_a: str, folder_b: str, data_dir: Optional[str]) -> dict:
    """The two runs' counts on each split (``train``, ``val``, ``test``)."""
    from uniloss.experiments.registry import get_experiment

    (config_a, model_a, epoch_a), (config_b, model_b, epoch_b) = _load(folder_a), _load(folder_b)
    if config_a["experiment"] != config_b["experiment"]:
        raise SystemExit(f"the runs train different experiments: {config_a['experiment']} and {config_b['experiment']}")
    data = get_experiment(config_a["experiment"]).load(data_dir, torch.device("cpu"))
    splits = {"train": (data.x_train, data.y_train), "val": (data.x_val, data.y_val), "test": (data.x_test, data.y_test)}
    counts = {name: paired_counts(_right(model_a, x, y), _right(model_b, x, y)) for name, (x, y) in splits.items()}
    from uniloss.experiments.reproduce import machine

    return {"experiment": config_a["experiment"], "a": f"{config_a['loss']}-seed{config_a['seed']}",
            "b": f"{config_b['loss']}-seed{config_b['seed']}", "epochs": [epoch_a, epoch_b], "splits": counts,
            "machine": f"{machine()}, torch {torch.__version__}", "date": datetime.date.today().isoformat()}


def page(report: dict, command: str) -> str:
    a, b = report["a"], report["b"]
    lines = [f"# {a} against {b}, image by image: {report['experiment']}", "",
             f"`{command}`. Models at epochs {report['epochs'][0]} and {report['epochs'][1]}; training "
             "images without augmentation. Accuracy (%); the images exactly one model gets right; the "
             "exact McNemar p-value (two-sided) of that split.", "",
             f"Machine: {report.get('machine', 'not recorded')}; date: {report.get('date', 'not recorded')}.", "",
             f"| split | images | {a} | {b} | {b} - {a} | only {a} right | only {b} right | McNemar p |",
             "|---|---|---|---|---|---|---|---|"]
    for name, c in report["splits"].items():
        acc_a = 100 * (c["both"] + c["only_a"]) / c["n"]
        acc_b = 100 * (c["both"] + c["only_b"]) / c["n"]
        lines.append(f"| {name} | {c['n']} | {acc_a:.2f} | {acc_b:.2f} | {acc_b - acc_a:+.2f} | {c['only_a']} | "
                     f"{c['only_b']} | {mcnemar_exact(c['only_a'], c['only_b']):.3g} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_a", help="a run folder with checkpoint.pt (the reference, e.g. the usual loss)")
    parser.add_argument("run_b", help="the other run folder")
    parser.add_argument("--data-dir", help="where the datasets are (default: $UNILOSS_DATA, then ../shared/data)")
    parser.add_argument("--out", help="write the page there (markdown), and the counts beside it (.json)")
    args = parser.parse_args(argv)
    report = compare(args.run_a, args.run_b, args.data_dir)
    command = "python benchmarks/paired_runs.py " + " ".join(
        [args.run_a, args.run_b] + (["--out", args.out] if args.out else []))
    text = page(report, command)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text)
        with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
            json.dump({**report, "command": command}, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
