"""The experiments the ``uniloss`` command knows, with the paper's settings as defaults.

An :class:`Experiment` bundles the data (whole splits as tensors), the model for each loss, the
losses, the evaluation and the optimiser recipe. Add one by building an ``Experiment`` and
calling :func:`register`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple, TypeVar

import torch
from torch import Tensor, nn

import uniloss

from .metrics import average_precision


@dataclass
class Splits:
    """Whole data splits as tensors (already normalised), on one device."""

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor


@dataclass
class Recipe:
    """Optimiser and schedule (paper defaults per experiment)."""

    epochs: int
    batch_size: int
    optimizer: str = "sgd"  # "sgd" or "rmsprop"
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    milestones: Tuple[int, ...] = ()
    gamma: float = 0.1


@dataclass
class Experiment:
    """One training set-up of the paper (or of ours), runnable as ``uniloss train NAME``.

    Attributes:
        name, description: what ``uniloss train --help`` lists.
        dataset: a label for tables, e.g. ``"MNIST 0-vs-rest"``.
        losses: the loss names this experiment accepts; the first is UniLoss.
        recipe: the optimiser defaults (the paper's).
        load: ``(data_dir, device) -> Splits``.
        model: ``(loss_name) -> nn.Module``.
        loss: ``(loss_name, generator) -> (fn, module)``: ``fn(outputs, y)`` gives the scalar
            loss; ``module`` is the :class:`uniloss.UniLoss` behind it (for its ``.last``) or
            ``None`` for a usual loss.
        evaluate: ``(outputs [N, ...], y) -> {metric: value}`` on a whole split; the first key is
            the headline metric.
        paper: ``{(loss, metric): value}`` the paper reports.
        augment: optional ``(x, generator) -> x`` applied to each training batch.
    """

    name: str
    description: str
    dataset: str
    losses: Tuple[str, ...]
    recipe: Recipe
    load: Callable[[Optional[str], torch.device], Splits]
    model: Callable[[str], nn.Module]
    loss: Callable[[str, torch.Generator], Tuple[Callable, Optional[nn.Module]]]
    evaluate: Callable[[Tensor, Tensor], Dict[str, float]]
    paper: Dict[Tuple[str, str], float] = field(default_factory=dict)
    augment: Optional[Callable[[Tensor, torch.Generator], Tensor]] = None
    notes: str = ""

    def config(self) -> dict:
        return {"experiment": self.name, "dataset": self.dataset, **asdict(self.recipe)}


EXPERIMENTS: Dict[str, Experiment] = {}


def register(experiment: Experiment) -> Experiment:
    EXPERIMENTS[experiment.name] = experiment
    return experiment


@dataclass(frozen=True)
class Table:
    """A table of the paper for ``uniloss reproduce NAME``: runs of ``experiment`` for each loss
    and seed; ``metrics`` are read from each run's ``final.json`` (the first is plotted).
    ``paper_dataset`` names the dataset of the paper's numbers when it is not ours: the table
    then shows them labelled as such and computes no gap."""

    experiment: str
    losses: Tuple[str, ...]
    metrics: Tuple[str, ...]
    seeds: Tuple[int, ...] = (0, 1, 2)
    title: str = ""
    paper_dataset: Optional[str] = None


# name -> a Table, or a group of tables with ``parts`` (multiclass.TableGroup, defined above this module)
TABLES: Dict[str, Any] = {}
_T = TypeVar("_T")


def register_table(name: str, table: _T) -> _T:
    TABLES[name] = table
    return table


def get_experiment(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose one of: {', '.join(sorted(EXPERIMENTS))}")
    return EXPERIMENTS[name]


# --------------------------------------------------------------------------- MNIST AP (sec. 4.1)

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def _load_mnist_zero_vs_rest(data_dir: Optional[str], device: torch.device) -> Splits:
    from .data import load_mnist

    def prep(images: Tensor) -> Tensor:
        return ((images.float() / 255.0 - MNIST_MEAN) / MNIST_STD).reshape(len(images), -1).to(device)

    train, test = load_mnist("train", data_dir=data_dir), load_mnist("test", data_dir=data_dir)
    x, y = prep(train.images), (train.labels == 0).long().to(device)
    # The paper: the first 6,000 training images for validation, the other 54,000 for training.
    return Splits(x[6000:], y[6000:], x[:6000], y[:6000], prep(test.images), (test.labels == 0).long().to(device))


def _binary_scores(outputs: Tensor) -> Tensor:
    """One score per sample: the output itself, or the logit difference of a two-class head."""
    return outputs[:, 1] - outputs[:, 0] if outputs.shape[1] == 2 else outputs[:, 0]


def _ap_model(loss: str) -> nn.Module:
    from .models import MLP

    return MLP(784, (500, 300), 2 if loss == "ce" else 1)


def _ap_loss(loss: str, generator: torch.Generator) -> Tuple[Callable, Optional[nn.Module]]:
    if loss in ("uniloss", "uniloss-previous", "uniloss-paper"):
        presets: Dict[str, Dict[str, Any]] = {"uniloss": {}, "uniloss-previous": dict(pull=0.0, grad_scale="distance", interpolation="anchors"),
                                              "uniloss-paper": dict(pull=0.0, grad_scale=1.0, interpolation="anchors")}
        options = presets[loss]
        ul = uniloss.UniLoss(uniloss.AveragePrecision(), generator=generator, **options)
        return lambda out, y: ul(out[:, 0], y), ul
    if loss == "uniloss-memory":  # the batch plus the 256 most recent training samples
        from ..distributed import CrossBatchMemory

        ul = uniloss.UniLoss(CrossBatchMemory(uniloss.AveragePrecision(), size=256), generator=generator)
        return lambda out, y: ul(out[:, 0], y), ul
    if loss in ("uniloss-published", "uniloss-published-truegrad"):  # the published script (published.py)
        from .published import PublishedAPLoss

        published = PublishedAPLoss(generator=generator, published_sign=loss == "uniloss-published")
        return lambda out, y: published(out[:, 0], y), published
    if loss == "ce":
        return nn.functional.cross_entropy, None
    if loss == "bce":
        return (lambda out, y: nn.functional.binary_cross_entropy_with_logits(out[:, 0], y.float())), None
    raise ValueError(f"unknown loss {loss!r}")


def _ap_evaluate(outputs: Tensor, y: Tensor) -> Dict[str, float]:
    s = _binary_scores(outputs)
    return {"ap_interpolated": average_precision(s, y, interpolated=True), "ap": average_precision(s, y)}


register(Experiment(
    name="mnist-ap",
    description="MNIST digit 0 vs rest, MLP 784-500-300-1, average precision (paper sec. 4.1)",
    dataset="MNIST 0-vs-rest",
    losses=("uniloss", "ce", "bce", "uniloss-memory", "uniloss-published", "uniloss-published-truegrad",
            "uniloss-previous", "uniloss-paper"),
    recipe=Recipe(epochs=30, batch_size=16, optimizer="sgd", lr=0.01, momentum=0.5),
    load=_load_mnist_zero_vs_rest,
    model=_ap_model,
    loss=_ap_loss,
    evaluate=_ap_evaluate,
    paper={("uniloss", "ap_interpolated"): 0.9988, ("ce", "ap_interpolated"): 0.9989,
           ("uniloss-published", "ap_interpolated"): 0.9988},
    notes="`uniloss` is the library's loss at its defaults (0.8: AP's Lovász extension along the chain of its "
    "comparisons, with the pull) on the raw score of a one-output MLP; `uniloss-paper` the paper's equations "
    "alone (interpolation='anchors', pull=0, grad_scale=1); `uniloss-previous` the defaults before the metric-wins "
    "benchmark (interpolation='anchors', pull=0, grad_scale='distance'), with which the committed table's `uniloss` row was measured. `uniloss-published` is the published training "
    "script's update (uniloss.experiments.published): a sigmoid on the output, AP 0 for contradictory "
    "anchors, and its hand-written backward, whose quotient-rule term has the opposite sign, so that "
    "every anchor attracts the bits, the better ones more. Cross-entropy uses a two-class head, as "
    "the paper's baseline. AP is computed on the whole test set from the raw score (the logit "
    "difference for cross-entropy).",
))
register_table("mnist-ap", Table("mnist-ap", ("uniloss", "uniloss-paper", "uniloss-published", "ce"), ("ap_interpolated", "ap"),
                                 title="MNIST digit 0 vs rest, test AP (paper sec. 4.1)"))

# The experiments defined in their own modules (pose, multiclass) register themselves when the
# package imports them (uniloss/experiments/__init__.py), so this module imports none of them.
