"""The documentation's figure of the method: what UniLoss does to a metric, on a 2-bit toy.

    python scripts/method_figure.py            # writes docs/img/method.png

The toy metric is the average precision of one positive ranked against two negatives. Its two
comparisons are ``c_1 = s+ - s-_1`` and ``c_2 = s+ - s-_2``; AP is 1/3, 1/2 or 1 as the positive
beats none, one or both negatives. The three panels are the method's three steps, computed with
the library itself (``uniloss.AveragePrecision``, ``uniloss.relax``, ``uniloss.interpolate``):

1. the bits ``[c > 0]`` are relaxed to ``sigmoid(c / tau)``;
2. the metric, known only at the corners of ``{0, 1}^2`` (the anchors), is interpolated over the
   square by inverse distance weighting; the arrow is the direction the loss pushes the relaxed
   bits in, at one point;
3. along a line of scores the interpolated AP is a smooth, increasing surrogate of the exact
   step function, with a gradient where the exact metric has none.

Needs matplotlib (``pip install 'uniloss[experiments]'``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import uniloss

TARGET = torch.tensor([1, 0, 0])  # one positive, two negatives
METRIC = uniloss.AveragePrecision()
CORNERS = torch.tensor([[False, False], [True, False], [False, True], [True, True]])


def corner_values() -> torch.Tensor:
    """AP at the four configurations of the two bits (the anchors)."""
    return METRIC.evaluate(CORNERS, TARGET).to(torch.float64)


def surrogate(u: torch.Tensor) -> torch.Tensor:
    """``g~(u)``: AP interpolated over the four corners (u: ``[2]`` relaxed bits)."""
    return uniloss.interpolate(u, CORNERS, corner_values())


def draw(out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 12, "legend.fontsize": 11, "axes.titlesize": 13})
    fig = plt.figure(figsize=(11, 10))
    grid_spec = fig.add_gridspec(2, 2, height_ratios=[1.15, 1], width_ratios=[1, 1.15])
    axes = [fig.add_subplot(grid_spec[0, 0]), fig.add_subplot(grid_spec[0, 1]),
            fig.add_subplot(grid_spec[1, :])]

    # 1. Relaxation of the bits.
    ax = axes[0]
    c = torch.linspace(-6, 6, 601, dtype=torch.float64)
    ax.plot(c, (c > 0).double(), color="black", lw=2, label=r"bit $[c > 0]$")
    for tau, style in ((0.5, ":"), (1.0, "-"), (2.0, "--")):
        ax.plot(c, uniloss.relax(c, tau), style, color="tab:blue", lw=2,
                label=rf"relaxed $\sigma(c / {tau:g})$")
    ax.set_xlabel(r"comparison $c = s_a - s_b$")
    ax.set_ylabel("bit")
    ax.set_title(r"1. Relax each bit $[c > 0]$ with a sigmoid", pad=10)
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)

    # 2. Inverse-distance-weighted interpolation between the anchors.
    ax = axes[1]
    grid = torch.linspace(0.0, 1.0, 201, dtype=torch.float64)
    points = torch.cartesian_prod(grid, grid).flip(1)  # rows (u_1, u_2), u_2 slowest
    field = torch.func.vmap(surrogate)(points).reshape(len(grid), len(grid))
    image = ax.contourf(grid, grid, field, levels=20, cmap="viridis", vmin=0.3, vmax=1.0)
    ax.contour(grid, grid, field, levels=[0.4, 0.5, 0.6, 0.7, 0.8, 0.9], colors="white",
               linewidths=0.6, alpha=0.7)
    fig.colorbar(image, ax=ax, label=r"interpolated AP $\tilde g(u)$",
                 ticks=[1 / 3, 0.5, 0.75, 1.0], format="%.2f")
    names = {(0, 0): "anchor", (1, 0): "good anchor", (0, 1): "good anchor", (1, 1): "best anchor"}
    for (x, y), value in zip(CORNERS.long().tolist(), corner_values().tolist()):
        ax.plot(x, y, marker="*" if (x, y) == (1, 1) else "o", ms=16 if (x, y) == (1, 1) else 11,
                color="gold" if (x, y) == (1, 1) else "white", mec="black", clip_on=False,
                zorder=5)
        ax.annotate(f"{names[x, y]} ({x}, {y})\nAP = {value:.2f}", (x, y),
                    xytext=(-10 if x else 10, -26 if y else 14), textcoords="offset points",
                    ha="right" if x else "left", fontsize=10, color="white" if not y else "black",
                    bbox=dict(boxstyle="round", fc="black" if not y else "white", alpha=0.6))
    scores = torch.tensor([0.0, 0.8, -1.5], dtype=torch.float64)  # s+, s-_1, s-_2
    u = uniloss.relax(METRIC.comparisons(scores, TARGET)).requires_grad_(True)
    (grad,) = torch.autograd.grad(surrogate(u), u)
    (x, y), (dx, dy) = u.tolist(), (0.28 * grad / grad.norm()).tolist()
    ax.annotate("", xy=(x + dx, y + dy), xytext=(x, y),
                arrowprops=dict(arrowstyle="-|>", color="red", lw=2.5), zorder=6)
    ax.plot(x, y, "o", color="red", mec="black", ms=9, zorder=7)
    ax.annotate("relaxed bits $u$: the loss\npushes them along the arrow", (x, y),
                xytext=(12, -34), textcoords="offset points", fontsize=10, color="black",
                bbox=dict(boxstyle="round", fc="white", alpha=0.8))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel(r"$u_1 = \sigma(s^+ - s^-_1)$")
    ax.set_ylabel(r"$u_2 = \sigma(s^+ - s^-_2)$")
    ax.set_title("2. Interpolate the metric between anchors", pad=20)

    # 3. Exact metric and surrogate along a line of scores.
    ax = axes[2]
    s_pos = torch.linspace(-5, 5, 501, dtype=torch.float64)
    negatives = (0.0, 1.5)
    exact, smooth, slope = [], [], []
    for s in s_pos:
        scores = torch.tensor([float(s), *negatives], dtype=torch.float64, requires_grad=True)
        comparisons = METRIC.comparisons(scores, TARGET)
        value = surrogate(uniloss.relax(comparisons))
        (grad,) = torch.autograd.grad(value, scores)
        exact.append(float(METRIC.metric(scores.detach(), TARGET)))
        smooth.append(float(value.detach()))
        slope.append(float(grad[0]))
    ax.plot(s_pos, exact, color="black", lw=2, label="exact AP (a step function)")
    ax.plot(s_pos, smooth, color="tab:blue", lw=2, label=r"UniLoss surrogate $\tilde g$")
    ax.plot(s_pos, slope, "--", color="tab:red", lw=1.5,
            label=r"its gradient $\partial \tilde g / \partial s^+$")
    for s in negatives:
        ax.axvline(s, color="gray", lw=0.8, ls=":")
    ax.set_xlabel(r"score of the positive $s^+$ (the negatives at 0 and 1.5)")
    ax.set_ylabel("AP")
    ax.set_title("3. A differentiable surrogate of the metric itself", pad=10)
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)

    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/img/method.png"))
    args = parser.parse_args(argv)
    draw(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
