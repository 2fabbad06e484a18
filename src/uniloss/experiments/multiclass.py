"""Multi-class accuracy (paper sec. 4.3): ResNet-20 trained with cross-entropy and with UniLoss.

Experiments, each ``uniloss train NAME --loss LOSS [--schedule paper|short|NAME:EPOCHS]``:

========================  ================================================  ===========================
name                      data                                              losses (first: default)
========================  ================================================  ===========================
``fashion-resnet20``      Fashion-MNIST, 28x28 grey, 10 classes             uniloss, ce, uniloss-published,
                                                                            uniloss-t2, uniloss-t4,
                                                                            uniloss-t8, uniloss-g3,
                                                                            uniloss-gs10
``cifar10-resnet20``      CIFAR-10, 32x32 RGB, 10 classes                   uniloss, ce, uniloss-published
``cifar100-resnet20``     CIFAR-100, 32x32 RGB, 100 classes                 uniloss-frac20, ce,
                                                                            uniloss-top20, uniloss,
                                                                            uniloss-top20-warm
``mnist-pairs-resnet20``  two-digit numbers 00-99 from MNIST digit pairs,   uniloss, ce,
                          28x56 grey, 100 classes (offline many-class task) uniloss-frac20,
                                                                            uniloss-top20,
                                                                            uniloss-top20-warm,
                                                                            uniloss-frac20-gs15
========================  ================================================  ===========================

Losses: ``ce`` is cross-entropy; ``uniloss`` is ``UniLoss(MulticlassAccuracy())`` on all
``n*(p-1)`` comparisons of a batch; ``uniloss-frac20`` trains a random 20% of them per step
(``fraction=0.2``, the paper's CIFAR-100 setting); ``uniloss-top20`` keeps the target and the 20
highest-scoring other classes (``top_k=20``, the published code's CIFAR-100 setting). These
UniLoss losses use the library's defaults (0.8: ``interpolation="chain"``, temperature 1,
``pull=1``; the committed tables predate it: 16 good, 16 nearby, 16 bad anchors,
``grad_scale="bounded"``) and the same learning rate as cross-entropy;
``uniloss-previous`` is the defaults before the metric-wins benchmark (``interpolation="anchors"``,
``pull=0``, ``grad_scale="distance"``), with which the committed multiclass tables' ``uniloss`` rows were
measured. ``uniloss-published``
(Fashion-MNIST, CIFAR-10) is the published CIFAR-10 script's update
(:class:`~uniloss.experiments.published.PublishedLoss`: a sigmoid on the outputs and the
script's backward, whose sign makes every anchor attract the bits), for comparison with the paper.

Variants measured on the offline tasks (``docs/results/multiclass/README.md`` says what each
showed): ``uniloss-t2`` / ``-t4`` / ``-t8`` (``temperature`` 2 / 4 / 8), ``uniloss-g3`` (UniLoss's gradient
times 3, its value unchanged), ``uniloss-gs10`` / ``uniloss-frac20-gs15`` (a constant
``grad_scale`` about the one ``"distance"`` gives a fresh network; :data:`UNILOSS_VARIANTS`), and
``uniloss-top20-warm`` (:class:`WarmupLoss`: one epoch of ``uniloss-frac20``, then top-20).

Splits: the validation set is the *last tenth* of the publisher's training set, the rest trains
(CIFAR: 45,000 / 5,000 as in the paper and He et al. 2016, who do not say which 5,000; Fashion-MNIST:
54,000 / 6,000); the publisher's test set gives the result.

Input pipeline: every split lives as ``uint8 [N, C, H, W]`` on the training device; each batch is
randomly cropped (zero padding, i.e. black, as torchvision's ``RandomCrop`` on images) and flipped
in torch (:mod:`~uniloss.experiments.augment`, no per-sample Python), and the model's input layer
(:class:`ImageClassifier`) scales to [0, 1], standardises per channel and hands the network a
channels-last tensor (measured faster on the 2-core CPU, and the layout tensor cores want).

Schedules (:meth:`ScheduledExperiment.recipe_for`):

* ``paper``: batch 128, SGD lr 0.1, momentum 0.9, weight decay 1e-4, 200 epochs, lr / 10 after
  epochs 140 and 160 (He et al.'s CIFAR recipe as the paper uses it). On CIFAR-100
  ``uniloss-frac20`` trains 5x longer (1,000 epochs, lr / 10 after 700 and 800), as the paper.
* ``short``: the same optimiser for a 2-core CPU: :data:`SHORT_EPOCHS` epochs, lr / 10 after
  70% and 85% of them (the 5x factor of CIFAR-100 ``uniloss-frac20`` applies too).
* ``NAME:EPOCHS``, e.g. ``paper:60``: schedule NAME squeezed into EPOCHS epochs, its milestones
  scaled in proportion (what a fixed time budget affords, e.g. on a GPU).

``--epochs`` overrides the number of epochs of any schedule without moving its milestones.

The 100-class offline task (:func:`make_digit_pairs`): the number ``10 * a + b`` is the MNIST
image of digit ``a`` beside one of digit ``b`` (28x56). For each of the 100 numbers, the same
count of pairs is drawn; the two images are drawn uniformly, with replacement, among the pool's
images of each digit. Pools: training pairs from the first nine tenths of MNIST's training set,
validation pairs from its last tenth, test pairs from MNIST's test set (no image is shared between
splits). Sizes: 45,000 / 5,000 / 10,000 (:data:`PAIRS_PER_CLASS`); one generator seeded with
:data:`PAIRS_SEED` draws the three splits in that order, so the task is the same everywhere.

CIFAR-10/100 are read in the publishers' "python version" format (archive or extracted folder, in
the data lookup order); without network here, fetch them once with::

    python -c "from uniloss.experiments.data import load_cifar; load_cifar('cifar-10', download=True)"

Table ``multiclass`` (``uniloss reproduce multiclass``): Fashion-MNIST, CIFAR-10 and CIFAR-100
rows beside the paper's numbers; a part whose data is absent is reported as "data not available
here" instead of failing (:class:`TableGroup`). Table ``mnist-pairs``: the 100-class task, every
loss. Table ``fashion-variants``: the Fashion-MNIST screen of the variants above.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial
from typing import Callable, Dict, NamedTuple, Optional, Sequence, Tuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import uniloss

from .augment import random_crop, random_hflip
from .models import ResNet20
from .registry import MNIST_MEAN, MNIST_STD, Experiment, Recipe, Splits, Table, register, register_table

__all__ = [
    "ScheduledExperiment",
    "TableGroup",
    "ImageClassifier",
    "DigitPairs",
    "make_digit_pairs",
    "load_digit_pairs",
    "load_fashion_splits",
    "load_cifar_splits",
    "multiclass_loss",
    "evaluate_accuracy",
    "PAPER_RECIPE",
    "SHORT_EPOCHS",
    "PAIRS_SEED",
    "PAIRS_PER_CLASS",
]

# --------------------------------------------------------------------------- schedules


@dataclass
class ScheduledExperiment(Experiment):
    """An :class:`~uniloss.experiments.registry.Experiment` with named schedules.

    ``uniloss train NAME --schedule S`` asks :meth:`recipe_for` for its recipe (the training
    loop calls it when an experiment has it), and ``uniloss reproduce`` asks
    :meth:`missing_data` whether the data is here before it starts any run.

    Attributes (besides :class:`Experiment`'s; ``recipe`` is the ``"paper"`` schedule):
        schedules: other named recipes, e.g. ``{"short": Recipe(...)}``.
        epoch_factor: ``{loss: k}``: that loss trains ``k`` times the schedule's epochs, its
            milestones scaled alike (the paper's 5x for CIFAR-100 with 20% of the bits).
        datasets: registry names of the data sets the experiment reads (for
            :meth:`missing_data`).
    """

    schedules: Dict[str, Recipe] = field(default_factory=dict)
    epoch_factor: Dict[str, int] = field(default_factory=dict)
    datasets: Tuple[str, ...] = ()

    def schedule_names(self) -> Tuple[str, ...]:
        """``("paper", *schedules)``."""
        return ("paper", *self.schedules)

    def recipe_for(self, schedule: Optional[str], loss: str) -> Recipe:
        """The recipe of ``schedule`` (``None`` = ``"paper"``) for ``loss``.

        ``"NAME:EPOCHS"`` is schedule NAME squeezed (or stretched) into EPOCHS epochs, milestones
        in proportion; then ``epoch_factor[loss]`` multiplies epochs and milestones.

        Raises:
            ValueError: an unknown schedule name or a malformed ``NAME:EPOCHS``.

        Example::

            >>> from uniloss.experiments.registry import get_experiment
            >>> exp = get_experiment("cifar100-resnet20")
            >>> r = exp.recipe_for("paper", "uniloss-frac20")
            >>> r.epochs, r.milestones
            (1000, (700, 800))
            >>> exp.recipe_for("paper:20", "ce").milestones
            (14, 16)
        """
        name, _, epochs_text = (schedule or "paper").partition(":")
        known = {"paper": self.recipe, **self.schedules}
        if name not in known:
            raise ValueError(f"experiment {self.name} has no schedule {name!r}; choose one of "
                             f"{', '.join(known)} (or NAME:EPOCHS, e.g. paper:60)")
        recipe = replace(known[name])
        if epochs_text:
            try:
                epochs = int(epochs_text)
            except ValueError:
                epochs = 0
            if epochs < 1:
                raise ValueError(f"schedule {schedule!r}: expected NAME:EPOCHS with EPOCHS a positive "
                                 f"integer, got {epochs_text!r}")
            recipe = _scaled(recipe, epochs / recipe.epochs)
        factor = self.epoch_factor.get(loss, 1)
        return _scaled(recipe, factor) if factor != 1 else recipe

    def missing_data(self, data_dir: Optional[str] = None) -> Optional[str]:
        """``None`` when every data set of :attr:`datasets` is found (in the lookup order, without
        downloading or reading it), else a one-line reason naming what is missing."""
        missing = [name for name in self.datasets if not _dataset_present(name, data_dir)]
        if not missing:
            return None
        fetch = "; ".join(f"uniloss.experiments.data.load_cifar({n!r}, download=True) fetches it" if n.startswith("cifar") else
                          f"uniloss.experiments.data.load_dataset({n!r}, download=True) fetches it" for n in missing)
        return f"data not available here ({', '.join(missing)} not found in the data folders; {fetch})"


def _scaled(recipe: Recipe, factor: float) -> Recipe:
    """``recipe`` with ``factor`` times the epochs, milestones rounded in proportion."""
    epochs = max(1, round(recipe.epochs * factor))
    milestones = tuple(min(epochs, max(1, round(m * factor))) for m in recipe.milestones)
    return replace(recipe, epochs=epochs, milestones=milestones)


def _dataset_present(name: str, data_dir: Optional[str]) -> bool:
    """Whether data set ``name`` is in the lookup order: its IDX files, or for CIFAR an archive
    or a complete extracted folder holding both splits. Reads no content."""
    from .data import DatasetNotFoundError, dataset_files, get_spec, search_roots
    from .data.loaders import find_cifar_folder

    spec = get_spec(name)
    if spec.kind == "cifar":
        roots = search_roots(data_dir)
        return all(find_cifar_folder(spec, split, roots) is not None for split in ("train", "test"))
    try:
        dataset_files(name, data_dir=data_dir)
    except DatasetNotFoundError:
        return False
    return True


@dataclass(frozen=True)
class TableGroup:
    """A table of ``uniloss reproduce`` made of several :class:`Table` (one per experiment): their
    rows in one ``results.json``, their curves side by side. A part whose experiment reports
    :meth:`ScheduledExperiment.missing_data` is not run; its rows say "data not available here".

    Attributes:
        parts: the tables, in row order.
        title: the heading of ``results.md``.
    """

    parts: Tuple[Table, ...]
    title: str = ""


# --------------------------------------------------------------------------- data

#: Per-channel mean and standard deviation of the training images, on the [0, 1] scale.
FASHION_MEAN, FASHION_STD = (0.2860,), (0.3530,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)

#: Seed of the digit-pair task's generator (all three splits drawn from it, in order).
PAIRS_SEED = 2020
#: Pairs per two-digit number (100 of them) in each split: 45,000 / 5,000 / 10,000 in all.
PAIRS_PER_CLASS = {"train": 450, "val": 50, "test": 100}


def _split_last_tenth(images: Tensor, labels: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x_train, y_train, x_val, y_val)``: the last ``len // 10`` samples validate."""
    n_val = len(labels) // 10
    cut = len(labels) - n_val
    return images[:cut], labels[:cut], images[cut:], labels[cut:]


def _splits(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, device: torch.device) -> Splits:
    """Whole splits on ``device`` (images stay uint8: the model's input layer converts them)."""
    parts = _split_last_tenth(train_x, train_y) + (test_x, test_y)
    return Splits(*(t.to(device) for t in parts))


def load_fashion_splits(data_dir: Optional[str], device: torch.device) -> Splits:
    """Fashion-MNIST as :class:`Splits` of ``uint8 [N, 1, 28, 28]`` images and int64 labels:
    train 54,000, validation the last 6,000 training images, test 10,000.

    Example::

        >>> s = load_fashion_splits(None, torch.device("cpu"))  # doctest: +SKIP
        >>> s.x_train.shape, s.x_val.shape, s.x_test.dtype       # doctest: +SKIP
        (torch.Size([54000, 1, 28, 28]), torch.Size([6000, 1, 28, 28]), torch.uint8)
    """
    from .data import load_fashion_mnist

    train, test = load_fashion_mnist("train", data_dir=data_dir), load_fashion_mnist("test", data_dir=data_dir)
    return _splits(train.images[:, None], train.labels, test.images[:, None], test.labels, device)


def load_cifar_splits(name: str, data_dir: Optional[str], device: torch.device) -> Splits:
    """CIFAR-10 or CIFAR-100 (``name``) as :class:`Splits` of ``uint8 [N, 3, 32, 32]`` images:
    train 45,000, validation the last 5,000 training images, test 10,000 (fine labels).

    Example::

        >>> s = load_cifar_splits("cifar-10", None, torch.device("cpu"))  # doctest: +SKIP
        >>> len(s.y_train), len(s.y_val), len(s.y_test)                    # doctest: +SKIP
        (45000, 5000, 10000)
    """
    from .data import load_cifar

    train, test = load_cifar(name, "train", data_dir=data_dir), load_cifar(name, "test", data_dir=data_dir)
    return _splits(train.images, train.labels, test.images, test.labels, device)


class DigitPairs(NamedTuple):
    """The two-digit numbers of :func:`make_digit_pairs`.

    Attributes:
        images: ``uint8 [M, 28, 56]``: ``images[k, :, :28]`` is source image ``left[k]``,
            ``images[k, :, 28:]`` source image ``right[k]``.
        labels: ``int64 [M]`` in ``[0, 100)``: ``10 * digit(left) + digit(right)``.
        left, right: ``int64 [M]`` indices into the source images.
    """

    images: Tensor
    labels: Tensor
    left: Tensor
    right: Tensor


def make_digit_pairs(images: Tensor, labels: Tensor, per_class: int, generator: torch.Generator) -> DigitPairs:
    """Two-digit numbers 00-99 made of digit images side by side, ``per_class`` of each number.

    Each number ``10 * a + b`` gets ``per_class`` pairs; each pair's left image is drawn uniformly
    (with replacement) among the images of digit ``a``, its right image among those of digit ``b``;
    the pairs are then shuffled. Everything is drawn from ``generator``, with tensor operations
    only (no loop over samples), so the same generator state gives the same pairs.

    Args:
        images: ``[N, H, W]`` digit images (any dtype).
        labels: ``[N]`` digits in ``[0, 10)``; every digit must occur.
        per_class: pairs per number (``>= 1``).
        generator: a CPU :class:`torch.Generator`.

    Returns:
        :class:`DigitPairs` with ``M = 100 * per_class`` pairs of shape ``[M, H, 2W]``.

    Raises:
        ValueError: bad shapes, labels outside ``[0, 10)``, a digit without images, or
            ``per_class < 1``.

    Example::

        >>> imgs = torch.arange(10, dtype=torch.uint8)[:, None, None].expand(10, 2, 2)
        >>> p = make_digit_pairs(imgs, torch.arange(10), 1, torch.Generator().manual_seed(0))
        >>> p.images.shape, sorted(p.labels.tolist()) == list(range(100))
        (torch.Size([100, 2, 4]), True)
        >>> k = int((p.labels == 37).nonzero()); p.images[k].tolist()
        [[3, 3, 7, 7], [3, 3, 7, 7]]
    """
    if images.dim() != 3 or labels.dim() != 1 or len(images) != len(labels):
        raise ValueError(f"expected images [N, H, W] and labels [N], got {tuple(images.shape)} and {tuple(labels.shape)}")
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    labels = labels.long()
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) > 9):
        raise ValueError(f"expected digits in [0, 10), got values in [{int(labels.min())}, {int(labels.max())}]")
    counts = torch.bincount(labels, minlength=10)
    if bool((counts == 0).any()):
        raise ValueError(f"every digit needs at least one image; none for {(counts == 0).nonzero().flatten().tolist()}")
    by_digit = torch.argsort(labels, stable=True)  # the images of digit d: by_digit[start[d]: start[d] + counts[d]]
    start = torch.cumsum(counts, 0) - counts
    numbers = torch.arange(100).repeat_interleave(per_class)
    numbers = numbers[torch.randperm(len(numbers), generator=generator)]

    def draw(digits: Tensor) -> Tensor:
        u = torch.rand(len(digits), generator=generator, dtype=torch.float64)  # in [0, 1)
        return by_digit[start[digits] + (u * counts[digits]).long()]

    left, right = draw(numbers // 10), draw(numbers % 10)
    return DigitPairs(torch.cat([images[left], images[right]], dim=2), numbers, left, right)


def load_digit_pairs(data_dir: Optional[str], device: torch.device) -> Splits:
    """The 100-class digit-pair task as :class:`Splits` of ``uint8 [N, 1, 28, 56]`` images
    (see the module's docstring: pools, sizes :data:`PAIRS_PER_CLASS`, seed :data:`PAIRS_SEED`).

    Example::

        >>> s = load_digit_pairs(None, torch.device("cpu"))  # doctest: +SKIP
        >>> s.x_train.shape, int(s.y_test.max())             # doctest: +SKIP
        (torch.Size([45000, 1, 28, 56]), 99)
    """
    from .data import load_mnist

    train, test = load_mnist("train", data_dir=data_dir), load_mnist("test", data_dir=data_dir)
    x_pool, y_pool, x_val_pool, y_val_pool = _split_last_tenth(train.images, train.labels)
    g = torch.Generator().manual_seed(PAIRS_SEED)
    out = []
    for split, (x, y) in (("train", (x_pool, y_pool)), ("val", (x_val_pool, y_val_pool)), ("test", (test.images, test.labels))):
        pairs = make_digit_pairs(x, y, PAIRS_PER_CLASS[split], g)
        out += [pairs.images[:, None].to(device), pairs.labels.to(device)]
    return Splits(*out)


def _crop_flip(x: Tensor, generator: torch.Generator, *, padding: int = 4) -> Tensor:
    """The CIFAR augmentation: random crop after ``padding`` pixels of zeros, then a random
    left-right flip, per sample, on ``x``'s device."""
    return cast(Tensor, random_hflip(cast(Tensor, random_crop(x, padding, generator)), generator=generator))


def _crop(x: Tensor, generator: torch.Generator, *, padding: int = 2) -> Tensor:
    """Random crop only (a flip would turn "12" into a mirrored "21")."""
    return cast(Tensor, random_crop(x, padding, generator))


# --------------------------------------------------------------------------- model, losses, metrics


class ImageClassifier(nn.Module):
    """A classifier's input layer plus the network: uint8 (or float) images in, logits out.

    uint8 input is scaled to [0, 1]; then ``(x - mean[c]) / std[c]`` per channel; with
    ``channels_last`` the network's weights and its input use the channels-last layout.
    Normalisation lives in the model, so training batches, evaluation and a user's images go
    through the same preprocessing, and the data stays uint8 on the device (4x less memory).

    Args:
        net: the network, ``[N, C, H, W] -> [N, classes]``.
        mean, std: per-channel statistics on the [0, 1] scale (``C`` values).
        channels_last: use the channels-last memory layout.

    Example::

        >>> m = ImageClassifier(ResNet20(10, in_channels=1), FASHION_MEAN, FASHION_STD)
        >>> m(torch.zeros(2, 1, 28, 28, dtype=torch.uint8)).shape
        torch.Size([2, 10])
    """

    mean: Tensor  # buffers, registered in __init__
    std: Tensor

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float], *, channels_last: bool = True) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1), persistent=False)
        self.channels_last = channels_last
        if channels_last:
            self.net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs omit memory_format

    def forward(self, x: Tensor) -> Tensor:
        """``[N, C, H, W]`` uint8 or float -> logits ``[N, classes]``."""
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        x = (x - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)


def resnet20_for(loss: str, *, num_classes: int, in_channels: int, mean, std) -> nn.Module:
    """ResNet-20 behind :class:`ImageClassifier` (same network for every loss)."""
    return ImageClassifier(ResNet20(num_classes, in_channels=in_channels), mean, std)


class Variant(NamedTuple):
    """A UniLoss loss of these experiments: keywords of :class:`uniloss.MulticlassAccuracy` and of
    :class:`uniloss.UniLoss` (else the library's defaults), and a factor on its gradient (the loss
    value stays ``-surrogate``)."""

    metric: dict = {}
    loss: dict = {}
    gain: float = 1.0


#: The UniLoss losses by name.
UNILOSS_VARIANTS: Dict[str, Variant] = {
    "uniloss": Variant(),
    "uniloss-previous": Variant(loss={"pull": 0.0, "grad_scale": "distance", "interpolation": "anchors"}),
    "uniloss-frac20": Variant(metric={"fraction": 0.2}),
    "uniloss-top20": Variant(metric={"top_k": 20}),
    "uniloss-t2": Variant(loss={"temperature": 2.0}),
    "uniloss-t4": Variant(loss={"temperature": 4.0}),
    "uniloss-t8": Variant(loss={"temperature": 8.0}),
    "uniloss-g3": Variant(gain=3.0),
    "uniloss-gs10": Variant(loss={"grad_scale": 10.0}),
    "uniloss-frac20-gs15": Variant(metric={"fraction": 0.2}, loss={"grad_scale": 15.0}),
}
#: Warm-up losses: name -> (first loss, then loss, steps of the first) (:class:`WarmupLoss`).
WARMUP_VARIANTS: Dict[str, Tuple[str, str, int]] = {"uniloss-top20-warm": ("uniloss-frac20", "uniloss-top20", 352)}


class WarmupLoss(nn.Module):
    """``first`` for the first ``steps`` training calls, ``then`` afterwards.

    For a loss that does not train from scratch but refines well (``top_k``: see
    ``docs/results/multiclass/README.md``), warmed up by one that does (``fraction``). Only calls
    with autograd enabled count; the count is in ``state_dict()`` (extra state), so a run resumed
    from its checkpoint switches at the same step. :attr:`last` is the active loss's
    :class:`uniloss.LossInfo`.

    Example::

        >>> w = WarmupLoss(uniloss.UniLoss(uniloss.MulticlassAccuracy(fraction=0.2)),
        ...                uniloss.UniLoss(uniloss.MulticlassAccuracy(top_k=2)), steps=1)
        >>> s, y = torch.randn(4, 5, requires_grad=True), torch.tensor([0, 1, 2, 3])
        >>> _ = w(s, y); _ = w(s, y)
        >>> w.calls, w.last.num_bits
        (2, 8)
    """

    def __init__(self, first: nn.Module, then: nn.Module, steps: int) -> None:
        super().__init__()
        if not isinstance(steps, int) or steps < 0:
            raise ValueError(f"Expected `steps` to be an int >= 0, but got {steps!r}")
        self.first, self.then, self.steps = first, then, steps
        self.calls = 0
        self._active = first if steps > 0 else then

    @property
    def last(self):
        return self._active.last

    def forward(self, scores: Tensor, target: Tensor) -> Tensor:
        self._active = self.first if self.calls < self.steps else self.then
        if torch.is_grad_enabled():
            self.calls += 1
        return self._active(scores, target)

    def get_extra_state(self) -> dict:
        return {"calls": self.calls}

    def set_extra_state(self, state: dict) -> None:
        self.calls = int(state["calls"])


def multiclass_loss(name: str, generator: torch.Generator) -> Tuple[Callable, Optional[nn.Module]]:
    """``(fn, module)`` for the training loop: ``fn(logits [n, p], y [n])`` is the loss,
    ``module`` the :class:`uniloss.UniLoss` behind it (``None`` for ``"ce"``).

    UniLoss skips its per-call tensor checks (``validate_args=False``): the labels were checked
    when the data was read, and a check would wait for the GPU on every step.

    Example::

        >>> fn, module = multiclass_loss("uniloss-top20", torch.Generator().manual_seed(0))
        >>> module.decomposition
        MulticlassAccuracy(top_k=20, fraction=None)
        >>> bool(fn(torch.randn(8, 30), torch.randint(0, 30, (8,))) <= 0)
        True
    """
    if name == "ce":
        return F.cross_entropy, None
    if name == "uniloss-published":  # the published CIFAR script's update (experiments/published.py)
        from .published import PublishedLoss

        published = PublishedLoss(uniloss.MulticlassAccuracy(), generator=generator)
        return published, published
    if name in WARMUP_VARIANTS:
        first, then, steps = WARMUP_VARIANTS[name]
        first_loss, then_loss = multiclass_loss(first, generator)[1], multiclass_loss(then, generator)[1]
        assert first_loss is not None and then_loss is not None  # warm-up variants switch between loss modules
        warmup = WarmupLoss(first_loss, then_loss, steps)
        return warmup, warmup
    if name not in UNILOSS_VARIANTS:
        raise ValueError(f"unknown loss {name!r}; expected ce, uniloss-published or one of "
                         f"{', '.join([*UNILOSS_VARIANTS, *WARMUP_VARIANTS])}")
    variant = UNILOSS_VARIANTS[name]
    module = uniloss.UniLoss(uniloss.MulticlassAccuracy(**variant.metric), generator=generator,
                             validate_args=False, **variant.loss)
    if variant.gain != 1.0:
        gain = variant.gain

        def scaled(scores: Tensor, target: Tensor) -> Tensor:
            loss = module(scores, target)
            return loss.detach() + gain * (loss - loss.detach())

        return scaled, module
    return module, module


def evaluate_accuracy(outputs: Tensor, y: Tensor, *, top5: bool = False) -> Dict[str, float]:
    """``{"accuracy": top-1, ["top5": top-5]}`` of logits ``[N, p]`` against labels ``[N]``
    (fractions in [0, 1]).

    Example::

        >>> evaluate_accuracy(torch.tensor([[2.0, 1.0], [0.0, 1.0]]), torch.tensor([0, 0]))
        {'accuracy': 0.5}
    """
    result = {"accuracy": float((outputs.argmax(1) == y).double().mean())}
    if top5:
        hit = (outputs.topk(min(5, outputs.shape[1]), dim=1).indices == y[:, None]).any(1)
        result["top5"] = float(hit.double().mean())
    return result


# --------------------------------------------------------------------------- registration

#: He et al.'s CIFAR recipe as the paper uses it.
PAPER_RECIPE = Recipe(epochs=200, batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4,
                      milestones=(140, 160))
#: Epochs of the ``short`` schedule (lr / 10 after 70% and 85% of them).
SHORT_EPOCHS = 30
SHORT_RECIPE = replace(PAPER_RECIPE, epochs=SHORT_EPOCHS, milestones=(round(0.7 * SHORT_EPOCHS), round(0.85 * SHORT_EPOCHS)))

_COMMON_NOTES = (
    "ResNet-20 (0.27M parameters, option-A shortcuts), batch 128, SGD momentum 0.9, weight decay 1e-4, lr 0.1 "
    "for every loss; validation = the last tenth of the training set, result on the test set; UniLoss is "
    "UniLoss(MulticlassAccuracy(...)) with the library's defaults (0.8: interpolation='chain', pull=1; before 0.8 "
    "16/16/16 anchors, grad_scale='bounded'; -previous: interpolation='anchors', pull=0, grad_scale='distance', the "
    "defaults the committed tables' uniloss rows used) except "
    "where the loss name says: -t2/-t4/-t8 temperature 2/4/8, -g3 the gradient times 3, -gs10/-gs15 a constant "
    "grad_scale of 10/15, -top20-warm 352 steps (one epoch of the 100-class task) of -frac20 before top-20."
)


def _experiment(name: str, description: str, dataset: str, losses: Tuple[str, ...], load, *, classes: int,
                channels: int, mean, std, augment, datasets: Tuple[str, ...], paper=None, epoch_factor=None,
                notes: str = "") -> ScheduledExperiment:
    return ScheduledExperiment(
        name=name, description=description, dataset=dataset, losses=losses, recipe=PAPER_RECIPE, load=load,
        model=partial(resnet20_for, num_classes=classes, in_channels=channels, mean=mean, std=std),
        loss=multiclass_loss, evaluate=partial(evaluate_accuracy, top5=classes >= 20), paper=dict(paper or {}),
        augment=augment, notes=" ".join(filter(None, (_COMMON_NOTES, notes))),
        schedules={"short": SHORT_RECIPE}, epoch_factor=dict(epoch_factor or {}), datasets=datasets,
    )


register(_experiment(
    "fashion-resnet20", "Fashion-MNIST, ResNet-20, accuracy (stand-in for paper sec. 4.3)", "Fashion-MNIST",
    ("uniloss", "ce", "uniloss-published", "uniloss-t2", "uniloss-t4", "uniloss-t8", "uniloss-g3", "uniloss-gs10"),
    load_fashion_splits, classes=10, channels=1, mean=FASHION_MEAN, std=FASHION_STD,
    augment=_crop_flip, datasets=("fashion-mnist",),
    notes="Fashion-MNIST: 54,000 / 6,000 / 10,000 images, crop (4 px) + flip; no paper number exists.",
))
register(_experiment(
    "cifar10-resnet20", "CIFAR-10, ResNet-20, accuracy (paper sec. 4.3, Table 2)", "CIFAR-10",
    ("uniloss", "ce", "uniloss-published"), partial(load_cifar_splits, "cifar-10"), classes=10, channels=3,
    mean=CIFAR10_MEAN, std=CIFAR10_STD, augment=_crop_flip, datasets=("cifar-10",),
    paper={("ce", "accuracy"): 0.9149, ("uniloss", "accuracy"): 0.9164, ("uniloss-published", "accuracy"): 0.9164},
    notes="CIFAR-10: 45,000 / 5,000 / 10,000 images, crop (4 px) + flip.",
))
register(_experiment(
    "cifar100-resnet20", "CIFAR-100, ResNet-20, accuracy (paper sec. 4.3, Table 2)", "CIFAR-100",
    ("uniloss-frac20", "ce", "uniloss-top20", "uniloss", "uniloss-top20-warm"), partial(load_cifar_splits, "cifar-100"),
    classes=100,
    channels=3, mean=CIFAR100_MEAN, std=CIFAR100_STD, augment=_crop_flip, datasets=("cifar-100",),
    paper={("ce", "accuracy"): 0.6590, ("uniloss-frac20", "accuracy"): 0.6592}, epoch_factor={"uniloss-frac20": 5},
    notes="CIFAR-100: 45,000 / 5,000 / 10,000 images, crop (4 px) + flip. uniloss-frac20 (the paper's UniLoss: a "
    "random 20% of the comparisons per step) trains 5x the epochs, as the paper; uniloss-top20 (the published "
    "code: target and top-20 other classes) trains the schedule as is.",
))
register(_experiment(
    "mnist-pairs-resnet20", "two-digit numbers 00-99 from MNIST pairs (28x56), ResNet-20, 100-class accuracy",
    "MNIST pairs 00-99", ("uniloss", "ce", "uniloss-frac20", "uniloss-top20", "uniloss-top20-warm", "uniloss-frac20-gs15"),
    load_digit_pairs, classes=100,
    channels=1, mean=(MNIST_MEAN,), std=(MNIST_STD,), augment=_crop, datasets=("mnist",),
    notes=f"MNIST digit pairs: 45,000 / 5,000 / 10,000 numbers (seed {PAIRS_SEED}; train and validation pairs from "
    "disjoint parts of MNIST's training set, test pairs from its test set), crop (2 px), no flip; every loss trains "
    "the same number of steps.",
))

register_table("multiclass", TableGroup(
    parts=(
        Table("fashion-resnet20", ("ce", "uniloss"), ("accuracy",)),  # the short schedule's two runs fit 90 CPU minutes
        Table("cifar10-resnet20", ("ce", "uniloss", "uniloss-published"), ("accuracy",)),
        Table("cifar100-resnet20", ("ce", "uniloss-frac20", "uniloss-top20", "uniloss-top20-warm"), ("accuracy", "top5")),
    ),
    title="Multi-class accuracy of ResNet-20, cross-entropy against UniLoss (paper sec. 4.3, Table 2)",
))
register_table("mnist-pairs", Table(
    "mnist-pairs-resnet20", ("ce", "uniloss-frac20", "uniloss-top20", "uniloss", "uniloss-top20-warm", "uniloss-frac20-gs15"),
    ("accuracy", "top5"),
    title="100-class accuracy of ResNet-20 on two-digit MNIST numbers: cross-entropy against the UniLoss variants",
))
register_table("fashion-variants", Table(
    "fashion-resnet20", ("ce", "uniloss", "uniloss-t2", "uniloss-t4", "uniloss-g3", "uniloss-gs10", "uniloss-published"),
    ("accuracy",),
    title="Fashion-MNIST, ResNet-20: UniLoss variants against cross-entropy",
))
