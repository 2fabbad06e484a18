"""Does ``good_anchors="all"`` train as well as the paper's sampled good anchors?

    python benchmarks/good_anchors.py --out docs/performance     # about 20 minutes, one thread

The paper draws 16 good anchors per step, each the best configuration with one random bit
flipped. ``good_anchors="all"`` takes every one of the ``l`` single flips, each weighted
``16 / l`` (the expectation of the sampled ones). Same model, optimiser, data order and seeds for
the three losses (the usual loss, UniLoss with sampled good anchors, UniLoss with all of them):

* ``digits-accuracy``: scikit-learn's digits, 10 classes, MLP 64-128-10, SGD (momentum 0.9),
  batch 128, 30 epochs (as ``uniloss demo`` and the learning-rate sweep), 5 seeds;
* ``fashion-ap``: Fashion-MNIST shirt (the hardest class) against the rest, the first 12,000
  training images, MLP 784-256-1, batch 16 (the paper's AP batch), 3 epochs, test AP on the
  10,000 test images, 3 seeds;
* ``fashion-accuracy``: Fashion-MNIST, 10 classes, the same 12,000 images, MLP 784-256-10,
  batch 128, 10 epochs, 3 seeds.

(Digits 0-vs-rest AP reaches 1.000 with every loss, so it cannot tell them apart.) Writes
``good-anchors.json`` and ``good-anchors.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch
from torch import nn

import uniloss
from uniloss.experiments.loop import shuffled, train_epoch
from uniloss.experiments.reproduce import command_line

LOSSES = ("usual", "sample", "all")


def _data(task: str):
    if task.startswith("digits"):
        from uniloss.experiments.digits import load_digits_split

        return load_digits_split("accuracy")
    from uniloss.experiments.data.idx import read_idx

    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data", "fashion-mnist")
    root = os.environ.get("FASHION_MNIST", root)
    x = read_idx(os.path.join(root, "train-images-idx3-ubyte.gz")).float().div(255).reshape(-1, 784)[:12000]
    y = read_idx(os.path.join(root, "train-labels-idx1-ubyte.gz")).long()[:12000]
    xt = read_idx(os.path.join(root, "t10k-images-idx3-ubyte.gz")).float().div(255).reshape(-1, 784)
    yt = read_idx(os.path.join(root, "t10k-labels-idx1-ubyte.gz")).long()
    if task == "fashion-ap":
        y, yt = (y == 6).long(), (yt == 6).long()
    return x, y, xt, yt


SETTINGS = {
    "digits-accuracy": dict(hidden=128, batch=128, epochs=30, lrs=(0.03, 0.1, 0.3), seeds=5),
    "fashion-ap": dict(hidden=256, batch=16, epochs=3, lrs=(0.003, 0.01), seeds=3),
    "fashion-accuracy": dict(hidden=256, batch=128, epochs=10, lrs=(0.01, 0.1), seeds=3),
}


def train(task: str, loss: str, lr: float, seed: int, data) -> float:
    x, y, xt, yt = data
    cfg = SETTINGS[task]
    ap = task.endswith("-ap")
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(x.shape[1], cfg["hidden"]), nn.ReLU(), nn.Linear(cfg["hidden"], 1 if ap else 10))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    if loss == "usual":
        loss_fn = (lambda s, t: nn.functional.binary_cross_entropy_with_logits(s, t.float())) if ap else nn.functional.cross_entropy
    else:
        dec = uniloss.AveragePrecision() if ap else uniloss.MulticlassAccuracy()
        loss_fn = uniloss.UniLoss(dec, generator=gen, good_anchors=loss)
    def step_loss(m, idx):
        scores = m(x[idx])
        return loss_fn(scores.reshape(-1) if ap else scores, y[idx])

    batches = shuffled(len(x), cfg["batch"], gen)
    for epoch in range(cfg["epochs"]):
        train_epoch(model, opt, batches(epoch), step_loss)
    with torch.no_grad():
        scores = model(xt)
    if ap:
        return float(uniloss.AveragePrecision().metric(scores.reshape(-1), yt))
    return float((scores.argmax(1) == yt).float().mean())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--out", default="docs/performance")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for task in args.tasks:
        data = _data(task)
        cfg = SETTINGS[task]
        for lr in cfg["lrs"]:
            for loss in LOSSES:
                start = time.time()
                values = [train(task, loss, lr, seed, data) for seed in range(cfg["seeds"])]
                rows.append(dict(task=task, loss=loss, lr=lr, values=values, mean=statistics.mean(values),
                                 sd=statistics.stdev(values), seconds=round(time.time() - start, 1)))
                print(f"{task:18s} lr={lr:<6} {loss:7s} {rows[-1]['mean']:.4f} ± {rows[-1]['sd']:.4f}", flush=True)
    report = dict(machine=f"{platform.machine()}, 1 thread, torch {torch.__version__}", date=time.strftime("%Y-%m-%d"),
                  command=command_line("benchmarks/good_anchors.py", argv), settings=SETTINGS, rows=rows)
    names = {"usual": "usual loss (BCE / CE)", "sample": "UniLoss, sampled good anchors (default)",
             "all": 'UniLoss, good_anchors="all"'}
    lines = ["| task | lr | " + " | ".join(names[l] for l in LOSSES) + " |", "|---|---|---|---|---|"]
    for task in args.tasks:
        for lr in SETTINGS[task]["lrs"]:
            cells = [next(r for r in rows if r["task"] == task and r["lr"] == lr and r["loss"] == l) for l in LOSSES]
            lines.append(f"| {task} | {lr} | " + " | ".join(f"{c['mean']:.4f} ± {c['sd']:.4f}" for c in cells) + " |")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "good-anchors.json"), "w") as fh:
        json.dump(report, fh, indent=2)
    with open(os.path.join(args.out, "good-anchors.md"), "w") as fh:
        fh.write(f"Test metric, mean ± sd over seeds; {report['machine']}, {report['date']}. "
                 f"Regenerate: `{report['command'].strip()}`.\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
