"""Where the interpolation's weight goes: each anchor kind's share of the inverse-distance weights
and how many of its anchors carry information (a value different from the current metric's).

    python benchmarks/nearby_probe.py        # writes docs/results/metric-wins/nearby-probe.txt

A nearby anchor is the current configuration with one wrong bit flipped toward the best one, so
it sits at Hamming distance one from the hard decisions: the closest anchors of all, with the
largest weights. Where one flip does not change the metric (a sample with several wrong
comparisons under accuracy or macro-F1), such an anchor holds weight without a direction and
flattens the interpolation around the current point. The probe measures this on the states a
network passes through: scikit-learn's digits (10 classes), an MLP trained with cross-entropy
for 0, 1, 3 and 10 epochs, batches of 128, accuracy and macro-F1; and the imbalanced binary task
of the metric-wins suite (5% positives) with AP.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import uniloss
from uniloss._interpolation import bit_costs, sq_distances_from_costs
from uniloss.experiments.loop import train_epoch

OUT = Path(__file__).resolve().parents[1] / "docs" / "results" / "metric-wins" / "nearby-probe.txt"


def shares(decomposition, scores, target, num_nearby, generator):
    """Per anchor kind: (share of the IDW weights, fraction of anchors whose value differs from
    the current metric) for one draw at the given scores."""
    prepared = decomposition.prepare(scores, target, generator)
    c = decomposition.comparisons(scores, prepared).reshape(-1).float()
    hard = c > 0
    best = decomposition.best(prepared).reshape(-1)
    anchors = uniloss.sample_anchors(best, hard, num_nearby=num_nearby, generator=generator)
    bits = anchors.dense()
    values = decomposition.evaluate(torch.cat([bits, hard[None]]), prepared).float()
    current, values = values[-1], values[:-1]
    _, base, flip = bit_costs(c, 1.0)
    sq = sq_distances_from_costs(base, flip, (bits != hard).float())
    w = 1.0 / sq.clamp_min(1e-12).sqrt()
    w = w / w.sum()
    out, row = {}, 0
    for name, count in anchors.kinds:
        sl = slice(row, row + count)
        out[name] = (float(w[sl].sum()), float((values[sl] != current).float().mean()))
        row += count
    return out


def states_along(model, x, y, loss_fn):
    """``(epoch, scores of a fixed batch of 128, its target)`` after 0, 1, 3 and 10 epochs of SGD
    (lr 0.1, momentum 0.9, batches of 128) with ``loss_fn``, seed 0."""
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    states, epoch = [], 0
    for target_epoch in (0, 1, 3, 10):
        while epoch < target_epoch:
            train_epoch(model, opt, torch.randperm(len(y)).split(128), lambda m, idx: loss_fn(m(x[idx]), y[idx]))
            epoch += 1
        with torch.no_grad():
            idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(epoch))[:128]
            states.append((epoch, model(x[idx]), y[idx]))
    return states


def digits_states():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32) / 16.0
    y = torch.tensor(y)
    return states_along(torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)),
                        x, y, torch.nn.functional.cross_entropy)


def imbalanced_states():
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=4000, n_features=20, n_informative=8, weights=[0.95], random_state=0)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1), torch.nn.Flatten(0))
    return states_along(model, x, y, lambda s, t: torch.nn.functional.binary_cross_entropy_with_logits(s, t.float()))


def main() -> str:
    torch.set_num_threads(1)
    cases = [("digits, accuracy", uniloss.MulticlassAccuracy(), digits_states()),
             ("digits, macro-F1", uniloss.zoo.macro_f1(10), None),
             ("imbalanced binary, AP", uniloss.AveragePrecision(), imbalanced_states())]
    cases[1] = (cases[1][0], cases[1][1], cases[0][2])
    lines = [__doc__.split("\n\n")[0].strip(), "", f"torch {torch.__version__}; 20 draws per state, "
             "16 good / N nearby / 16 bad anchors; 'share': the kind's share of the IDW weights "
             "(mean over draws); 'informative': the fraction of its anchors whose value differs "
             "from the current metric.", ""]
    header = f"{'task':24s} {'epoch':>5s} {'N':>3s} {'metric':>7s} " + " ".join(
        f"{k + ' share':>13s} {k + ' inform.':>14s}" for k in ("best", "good", "nearby", "bad"))
    lines.append(header)
    for label, metric, states in cases:
        for epoch, scores, target in states:
            for num_nearby in (16, 4):
                acc = {}
                for draw in range(20):
                    gen = torch.Generator().manual_seed(draw)
                    for k, (s, f) in shares(metric, scores, target, num_nearby, gen).items():
                        a = acc.setdefault(k, [0.0, 0.0])
                        a[0] += s / 20
                        a[1] += f / 20
                loss_fn = uniloss.UniLoss(metric, generator=torch.Generator().manual_seed(0))
                loss_fn(scores, target)
                row = f"{label:24s} {epoch:5d} {num_nearby:3d} {float(loss_fn.last.metric):7.3f} " + " ".join(
                    f"{acc.get(k, [0, 0])[0]:13.3f} {acc.get(k, [0, 0])[1]:14.3f}" for k in ("best", "good", "nearby", "bad"))
                lines.append(row)
                print(row, file=sys.stderr)
    text = "\n".join(lines) + "\n"
    OUT.write_text(text)
    return text


if __name__ == "__main__":
    print(main())
