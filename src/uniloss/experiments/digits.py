"""Small, fast experiments on scikit-learn's digits (8x8 images, 1,797 samples, shipped with it).

Used by ``uniloss demo``, the training tests and the learning-rate sweep. Two tasks:

* ``"ap"``: digit 0 against the rest, AP of a one-output MLP (UniLoss-AP vs binary cross-entropy);
* ``"accuracy"``: the ten classes (UniLoss-accuracy vs cross-entropy).

The split is fixed: a stratified 75/25 train/test split with ``random_state=0``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Optional

import torch
from torch import nn

import uniloss

from .loop import shuffled, train_epochs
from .metrics import average_precision


def _require_sklearn():
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "The digits experiments need scikit-learn: pip install 'uniloss[experiments]'"
        ) from exc
    return load_digits, train_test_split


def load_digits_split(task: str = "accuracy"):
    """``(x_train [N,64] float32 in [0,1], y_train, x_test, y_test)``; labels int64 (0/1 for ``"ap"``)."""
    load_digits, train_test_split = _require_sklearn()
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    if task == "ap":
        ytr, yte = (ytr == 0).long(), (yte == 0).long()
    elif task != "accuracy":
        raise ValueError(f"Expected `task` in ('ap', 'accuracy'), but got {task!r}")
    return xtr, ytr, xte, yte


def _mlp(out: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, out))


@dataclass
class DigitsResult:
    task: str
    loss: str
    lr: float
    epochs: int
    seed: int
    test_metric: float
    curve: List[float] = field(default_factory=list)  # test metric after each epoch


def train_digits(
    task: str = "accuracy",
    loss: str = "uniloss",
    *,
    lr: float = 0.1,
    epochs: int = 30,
    batch_size: int = 128,
    momentum: float = 0.9,
    seed: int = 0,
    grad_scale=None,
    options: Optional[dict] = None,
    progress: Optional[Callable[[int, float], None]] = None,
) -> DigitsResult:
    """Train an MLP 64-128-out with SGD and return the test metric per epoch.

    Args:
        task: ``"accuracy"`` (10 classes) or ``"ap"`` (digit 0 vs rest).
        loss: ``"uniloss"`` or ``"ce"`` (cross-entropy; binary cross-entropy for ``"ap"``).
        lr, epochs, batch_size, momentum: plain SGD settings, the same for both losses.
        seed: initialisation, batch order and anchors.
        grad_scale: passed to :class:`uniloss.UniLoss` (``None``: the library's default).
        options: more keywords of :class:`uniloss.UniLoss` (e.g. ``interpolation="anchors", pull=0`` with
            ``grad_scale=1.0`` for the paper's loss).
        progress: optional callable ``(epoch, metric)`` called after each epoch.
    """
    torch.set_num_threads(min(2, torch.get_num_threads()))
    xtr, ytr, xte, yte = load_digits_split(task)
    out = 1 if task == "ap" else 10
    model = _mlp(out, seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    decomposition = uniloss.AveragePrecision() if task == "ap" else uniloss.MulticlassAccuracy()
    gen = torch.Generator().manual_seed(seed)
    loss_fn: Callable[..., torch.Tensor]
    if loss == "uniloss":
        keywords = dict(options or {})
        if grad_scale is not None:
            keywords["grad_scale"] = grad_scale
        loss_fn = uniloss.UniLoss(decomposition, generator=gen, **keywords)
    elif loss == "ce":
        loss_fn = (
            (lambda s, y: nn.functional.binary_cross_entropy_with_logits(s, y.float()))
            if task == "ap"
            else nn.functional.cross_entropy
        )
    else:
        raise ValueError(f"Expected `loss` in ('uniloss', 'ce'), but got {loss!r}")

    def evaluate(m: nn.Module) -> float:  # called in evaluation mode, without gradients
        s = m(xte)
        if task == "ap":
            return average_precision(s, yte)
        return float((s.argmax(1) == yte).float().mean())

    def step_loss(m: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        scores = m(xtr[idx])
        return loss_fn(scores.reshape(-1) if task == "ap" else scores, ytr[idx])

    curve = train_epochs(model, opt, shuffled(len(xtr), batch_size, gen), step_loss, epochs, evaluate,
                         on_epoch=progress)
    return DigitsResult(task, loss, lr, epochs, seed, curve[-1], curve)
