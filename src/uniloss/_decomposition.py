"""The base class of every metric decomposition ``e = g(h(f(s)))``."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from . import _validation as V


@dataclass(frozen=True)
class Structure:
    r"""How a metric depends on its bits: the one optional description a
    :class:`Decomposition` gives the engine (:meth:`Decomposition.structure`) for its fast paths.

    The ``l`` bits fall into ``S`` consecutive *runs*, the units the metric is made of (AP: one
    run per positive, its comparisons with the negatives; accuracy: one per sample, its ``C - 1``
    comparisons). The pull toward the best configuration is taken per run (for accuracy's runs,
    cross-entropy), or per sample on the structure's ``margins`` where it gives them (AP: binary
    cross-entropy). Where the metric depends on the bits only through each run's number of 0-bits
    (``evaluate_zeros``), the engine also evaluates every anchor from ``[S]`` counts (a flipped
    bit changes one count by one) instead of ``[t, l]`` bits.

    Attributes:
        runs: an ``int`` ``w`` (``l // w`` runs of ``w`` bits each) or an int64 tensor ``[S]`` of
            run lengths summing to ``l``.
        evaluate_zeros: optional, ``zeros [t, S]`` (float counts of 0-bits per run) -> ``[t]``
            metric values, equal to ``evaluate`` on any bits with those counts. ``None``: the runs
            group the comparisons (for the pull) and the anchors are evaluated with ``evaluate``.
        evaluate_zeros_plus_one: optional, ``zeros [S]`` -> ``[S]``: the value when run ``s`` gains
            one more 0-bit, for every ``s`` (``good_anchors="all"``). ``None``: ``S`` one-hot rows
            through ``evaluate_zeros`` (``O(S^2)``); give it where there is a closed form.
        comparisons_block: optional, ``(scores, start, stop)`` -> the comparisons of runs
            ``start .. stop - 1``, flat and in order, differentiable in ``scores`` (``runs`` a
            tensor): the engine then processes a huge ``l`` (PCK on large heatmaps) block by block
            in bounded memory, forming each block anew in each pass over them.
        good_flips: how many bits a good anchor flips away from ``best`` (the paper: 1).
        rows: the number of samples the runs are drawn from (the pull per run is divided by the
            larger of it and the number of runs); ``None`` (default): the scores' batch size. A
            wrapper that evaluates its metric on a larger set (:mod:`uniloss.distributed`) sets it.
        margins: optional, ``scores`` -> ``[n]`` one margin per sample, right when ``> 0``, for a
            metric of binary labels (AP, AUROC, ranking metrics of 0/1 relevance): ``s`` for a
            positive, ``-s`` for a negative; its comparisons each a positive's score minus a
            negative's (the step rule, ``step="pull"``, counts each as pushing two scores). The
            pull (``pull_per="sample"``, the default) is then
            taken on them, ``mean softplus(-m / tau)``: binary cross-entropy at ``tau = 1``, the
            usual loss of binary labels as cross-entropy is accuracy's pull. Or ``[n, B]``,
            ``B`` margins a sample whose terms add, averaged over the samples (the zoo's ranking
            metrics of integer grades: one per grade boundary, the all-threshold ordinal logistic
            loss, binary cross-entropy's extension to grades; 0.10). It pushes every
            sample on its own: in-batch pairs tie nothing across batches (a held-out AP ranks the
            whole test set) and a batch without a positive has none (``docs/results/metric-wins/``,
            0.4). ``None``: the pull per run.
        run_weights: optional, ``()`` -> ``[S]`` (or ``None``): each run's weight in the pull,
            any common scale: how much the metric changes when that run alone toggles at the
            current configuration (a right run goes wrong, a wrong one right). With
            ``pull_weights="metric"`` (the default) a run's term of the pull weighs it over the
            runs' mean, so the pull weighs the units as the metric does (balanced accuracy:
            class-weighted cross-entropy; mean IoU: a missed pixel of a class weighs more than a
            false one while its IoU is low, as Lovász-softmax weighs them). Called only where
            the pull is taken per run; ``None``: every run alike (metrics whose units count
            alike, accuracy, PCK, need none). The zoo's argmax metrics give them
            (:meth:`uniloss.DecodedMetric.structure`).
        chain: optional, ``rank [l]`` (int64, a permutation of ``0 .. l - 1``) -> ``[l + 1]``
            values: the metric at every point of the chain ``interpolation="chain"`` walks,
            ``g(S_j)`` with ``S_j`` the configuration whose comparisons of rank ``< j`` take their
            ``best`` value and the others the opposite one (NaN where undefined). Give it where the
            metric along the chain has a closed form cheaper than ``evaluate`` of ``[l + 1, l]``
            bits: the chain is then exact at every one of its ``l`` steps. ``None``: the engine
            evaluates it from the runs' counts where ``evaluate_zeros`` is given (every point,
            ``[l + 1, S]`` counts, fewer points beyond ``chain_elements``), else with ``evaluate``
            at up to ``chain_segments + 1`` points. :class:`AveragePrecision`, :class:`MulticlassAccuracy`,
            :class:`PCK` and the zoo's metrics of class counts with one run per row (mean IoU,
            Dice, macro-F1, balanced accuracy) give it (all but AP with ``chain_by_runs``).
        chain_gains: optional, ``v [l] -> (start, gains [l])``: the metric's value at the chain's
            start ``g(S_0)`` (0-dim) and every comparison's gain ``g(S_k) - g(S_{k-1})`` at its
            place ``k`` in the chain of the relaxed agreements ``v`` (descending, ties by index),
            where the metric gives them without the chain's order (plain AP: a sort of each
            positive's row and of each column instead of a sort of all the comparisons; the zoo's
            F-beta, precision and recall: a comparison that comes right changes one label's
            counts by one, a sort by label and place and a cumulative sum). The
            engine then takes ``g~ = start + sum_k gains_k v_k`` and reports the chain's two ends.
            Unlike ``chain``, it is also used in a static layout, where the structure gives it
            for that layout (its padding last in the chain, without gain: AP's, in shapes from
            the layout's).
        run_pull: optional, ``(scores, temperature) -> [S]``: each run's term of the pull per
            run, ``log(1 + sum_k exp(z_k))`` with ``z_k = -(2 best_k - 1) c_k / temperature``
            over the run's comparisons, in closed form and differentiable in ``scores``, where it
            costs less than forming the comparisons (PCK: a positive pixel's comparisons share
            their joint's negatives, so its term is ``softplus(LSE_n(s_n / tau) - s_p / tau)``,
            ``O(pixels)`` against ``O(l)``). Exact layouts only; the engine uses it wherever the
            pull is taken per run.
        chain_by_runs: ``True`` where the metric depends on the bits only through which runs are
            *whole*, every bit at its ``best`` value (accuracy: a sample is right iff its run is;
            PCK: a joint iff one of its positive pixels' runs is; the zoo's argmax metrics: a
            row). ``chain`` then takes ``(turn [S], length)`` instead: ``turn[s]`` (int64) the
            point of a chain of ``length`` steps from which run ``s`` is whole (``0`` for a run
            without bits; distinct otherwise), and gives the ``[length + 1]`` values. Along the
            chain only a run's last comparison changes such a metric, so the engine walks the
            runs' last comparisons alone: ``O(l)`` and one sort of the ``S`` runs instead of a
            sort of the ``l`` comparisons, and block by block above ``chunk_bits``.
        run_least: optional, with ``chain_by_runs``, ``run_pull`` and ``evaluate_zeros``, for runs
            whose every ``best`` bit is 1: ``scores -> [S]``, each run's least comparison
            ``min_k c_k`` (``+inf`` for a run without bits), differentiable in ``scores`` (where
            several comparisons tie for the least, through the one of largest index), in closed
            form where it costs less than forming the comparisons (PCK: a positive pixel's score
            minus its joint's best negative one, ``O(pixels)`` against ``O(l)``). A run is whole
            iff its least comparison is ``> 0``, and the chain of such a metric turns on these
            alone, so ``interpolation="chain"`` then never forms the comparisons (path ``"runs"``:
            the same loss, gradient and chain as the comparisons give; not with
            ``pull_per="comparison"`` or ``temperature_scale``, which read every comparison).

    Example -- accuracy over ``n`` samples with one threshold comparison each (runs of 1 bit)::

        >>> import torch, uniloss
        >>> class Above(uniloss.Decomposition):
        ...     def comparisons(self, scores, target):
        ...         return scores - 1.0
        ...     def best(self, target):
        ...         return torch.ones_like(target, dtype=torch.bool)
        ...     def evaluate(self, bits, target):
        ...         return bits.float().mean(dim=1)
        ...     def structure(self, target):   # 0-bits per run of one bit: 1 - the bit
        ...         return uniloss.Structure(runs=1, evaluate_zeros=lambda zeros: 1.0 - zeros.mean(dim=1))
        >>> scores = torch.tensor([0.5, 2.0, 3.0], requires_grad=True)
        >>> loss, info = uniloss.functional.uniloss_with_info(scores, torch.zeros(3), Above())
        >>> info.path, round(float(info.metric), 4)
        ('chain', 0.6667)
    """

    runs: Any  # int or Tensor (or a static layout's uniloss._structured.Runs)
    evaluate_zeros: Optional[Callable[[Tensor], Tensor]] = None
    evaluate_zeros_plus_one: Optional[Callable[[Tensor], Tensor]] = None
    comparisons_block: Optional[Callable[[Tensor, int, int], Tensor]] = None
    good_flips: int = 1
    rows: Optional[int] = None
    margins: Optional[Callable[[Tensor], Tensor]] = None
    run_weights: Optional[Callable[[], Optional[Tensor]]] = None
    chain: Optional[Callable[..., Tensor]] = None
    chain_by_runs: bool = False
    run_pull: Optional[Callable[[Tensor, Any], Tensor]] = None
    chain_gains: Optional[Callable[[Tensor], Any]] = None
    run_least: Optional[Callable[[Tensor], Tensor]] = None

    def __post_init__(self) -> None:
        # (or a static layout's runs, uniloss._structured.Runs, which has run_ids)
        if not (isinstance(self.runs, (int, Tensor)) or hasattr(self.runs, "run_ids")) or isinstance(self.runs, bool):
            raise TypeError(f"Expected Structure.runs to be an int or an int64 tensor of run lengths, "
                            f"but got {type(self.runs).__name__}")
        if self.evaluate_zeros is not None and not callable(self.evaluate_zeros):
            raise TypeError("Expected Structure.evaluate_zeros to be callable: zeros [t, S] -> [t]")
        if (self.evaluate_zeros_plus_one is not None or self.comparisons_block is not None) and self.evaluate_zeros is None:
            raise TypeError("Structure.evaluate_zeros_plus_one and comparisons_block need evaluate_zeros")
        if self.comparisons_block is not None and not isinstance(self.runs, Tensor):
            raise TypeError("Structure.comparisons_block needs run lengths: `runs` as an int64 tensor [S]")
        V.check_count("good_flips", self.good_flips, allow_zero=False)
        if self.margins is not None and not callable(self.margins):
            raise TypeError("Expected Structure.margins to be callable: scores -> [n] margins")
        if self.run_weights is not None and not callable(self.run_weights):
            raise TypeError("Expected Structure.run_weights to be callable: () -> [S] weights (or None)")
        if self.chain is not None and not callable(self.chain):
            raise TypeError("Expected Structure.chain to be callable: rank [l] -> [l + 1] values along the chain")
        if self.chain_gains is not None and not callable(self.chain_gains):
            raise TypeError("Expected Structure.chain_gains to be callable: v [l] -> (start, gains [l])")
        if self.run_pull is not None and not callable(self.run_pull):
            raise TypeError("Expected Structure.run_pull to be callable: (scores, temperature) -> [S] terms")
        if self.run_least is not None and not (callable(self.run_least) and self.chain_by_runs
                                                and self.run_pull is not None and self.evaluate_zeros is not None):
            raise TypeError("Structure.run_least must be callable (scores -> [S] least comparisons) and needs "
                            "chain_by_runs, run_pull and evaluate_zeros")
        if self.chain_by_runs and self.chain is None:
            raise TypeError("Structure.chain_by_runs needs chain: (turn [S], length) -> [length + 1] values")

    def plus_one(self, zeros: Tensor) -> Tensor:
        """``[S]`` counts -> ``[S]``: :attr:`evaluate_zeros_plus_one`, or ``S`` one-hot rows
        through :attr:`evaluate_zeros` where it is not given."""
        if self.evaluate_zeros_plus_one is not None:
            return self.evaluate_zeros_plus_one(zeros)
        assert self.evaluate_zeros is not None  # the engine asks only a structure with counts
        num = zeros.numel()
        step = max(1, (1 << 20) // max(num, 1))
        out = []
        for start in range(0, num, step):
            idx = torch.arange(start, min(num, start + step), device=zeros.device)
            rows = zeros.expand(idx.numel(), num).clone()
            rows[torch.arange(idx.numel(), device=zeros.device), idx] += 1
            out.append(self.evaluate_zeros(rows))
        return torch.cat(out) if out else zeros.new_zeros(0)


class Decomposition:
    r"""A metric re-expressed as comparisons of scores followed by a function of bits.

    UniLoss needs three things from a metric (paper, sec. 3.1-3.3):

    * ``comparisons(scores, target)`` -- the map :math:`f`: a flat tensor ``c`` of ``l`` score
      differences (``s_a - s_b`` or ``s_a - constant``), differentiable in ``scores``; the metric's
      binary variables are ``b = [c > 0]``.
    * ``best(target)`` -- the ``[l]`` bool configuration the ground truth implies (every
      comparison "right"). ``best`` and ``evaluate`` receive the target that ``prepare``
      returned (by default the target itself).
    * ``evaluate(bits, target)`` -- the map :math:`g`: bits ``[t, l]`` (bool, ``t`` configurations
      at once) to ``[t]`` metric values. It runs on anchors only, without gradient, and must be
      vectorised over the leading dimension.

    ``metric(scores, target)`` is then exact by construction: ``evaluate(comparisons > 0)``.
    Check a decomposition of your own against a reference with
    :func:`uniloss.testing.assert_exact_decomposition`.

    Optional hooks, all with working defaults:

    * ``prepare(scores, target, generator)`` runs once per loss call before the others and may
      return an enriched target (for instance the bits chosen for this step when only a
      fraction of them is trained); ``comparisons``, ``best`` and ``evaluate`` then receive it.
    * ``check(scores, target)`` validates the tensors (shapes, label ranges); the engine calls it
      unless ``validate_args=False``.
    * ``higher_is_better`` (class attribute): the loss is ``-g~`` when true, ``g~`` otherwise.
    * ``structure(target)``: a :class:`Structure` for a metric that depends on the bits only
      through how many 0-bits each of ``S`` consecutive runs holds (AP: the negatives above each
      positive; accuracy: the wrong comparisons of each sample; PCK: of each positive pixel). The
      engine then evaluates the anchors from per-run counts, without a dense ``[t, l]`` tensor,
      and where the structure gives ``comparisons_block``, works block by block on a huge ``l``.

    A batch on which the metric is undefined (``l == 0`` comparisons, e.g. AP without a positive)
    gives a zero loss that is still attached to the graph.

    Example -- the fraction of samples whose score beats a fixed margin of 1, written by hand::

        >>> import torch, uniloss
        >>> class AboveMargin(uniloss.Decomposition):
        ...     def comparisons(self, scores, target):
        ...         return scores - 1.0                      # l = n bits: [s_i > 1]
        ...     def best(self, target):
        ...         return torch.ones_like(target, dtype=torch.bool)
        ...     def evaluate(self, bits, target):
        ...         return bits.float().mean(dim=1)          # [t, n] -> [t]
        >>> AboveMargin().metric(torch.tensor([0.5, 2.0, 3.0]), torch.zeros(3))
        tensor(0.6667)
    """

    higher_is_better: bool = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _reject_legacy_hooks(cls)

    def prepare(self, scores: Tensor, target: Any, generator: Optional[torch.Generator] = None) -> Any:
        """Per-call hook run before ``comparisons``; returns the target the others receive."""
        return target

    def check(self, scores: Tensor, target: Any) -> None:
        """Validate ``scores`` and ``target``; raise ``ValueError``/``TypeError`` naming them."""

    def comparisons(self, scores: Tensor, target: Any) -> Tensor:  # pragma: no cover - abstract
        """Return the ``[l]`` score differences; ``b = [c > 0]`` are the metric's bits."""
        raise _missing(self, "comparisons")

    def best(self, target: Any) -> Tensor:  # pragma: no cover - abstract
        """Return the ``[l]`` bool configuration implied by the ground truth."""
        raise _missing(self, "best")

    def evaluate(self, bits: Tensor, target: Any) -> Tensor:  # pragma: no cover - abstract
        """Map bits ``[t, l]`` (bool) to metric values ``[t]`` (float)."""
        raise _missing(self, "evaluate")

    def metric(self, scores: Tensor, target: Any) -> Tensor:
        """The exact metric of the hard decisions: ``evaluate(comparisons(...)[None] > 0)[0]``
        (on the target as ``prepare`` returns it)."""
        with torch.no_grad():
            target = self.prepare(scores, target)
            c = self.comparisons(scores, target)
            return self.evaluate((c > 0)[None], target)[0]

    def batch_metric(self, target: Any) -> Optional[Tensor]:
        """Optional: the exact metric of the batch's hard decisions, for a decomposition whose
        ``evaluate`` of the hard configuration is not it (one that trains a subset of its
        comparisons and scores anchors on that subset, e.g. ``MulticlassAccuracy(fraction=...)``,
        or one that reports tied scores as its reference counts them, e.g.
        :class:`~uniloss.AveragePrecision`). ``None`` (the default): the engine reports
        ``evaluate`` of the hard configuration. Computed from ``target`` alone (the prepared
        target), possibly after the loss call: the engine calls it when ``LossInfo.metric`` is
        first read, so it should not read state that a later call changes."""
        return None

    def state_dict(self) -> Any:
        """Optional: state the decomposition carries from call to call (e.g. the memory of
        :class:`uniloss.distributed.CrossBatchMemory`), for a checkpoint. ``None`` (the default):
        none. :class:`uniloss.UniLoss` stores a non-``None`` state in its own ``state_dict()``
        under the key ``"decomposition"`` and hands it back to :meth:`load_state_dict`."""
        return None

    def load_state_dict(self, state: Any) -> None:
        """Optional: restore what :meth:`state_dict` returned."""
        raise ValueError(f"{type(self).__name__} keeps no state to load, but got {type(state).__name__}")

    def structure(self, target: Any) -> Optional["Structure"]:
        """Optional: a :class:`Structure` describing how the metric depends on its bits, for the
        engine's fast paths (on the target as ``prepare`` returns it). ``None`` (the default): the
        engine evaluates the anchors densely with :meth:`evaluate`."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _missing(obj: object, method: str) -> TypeError:
    return TypeError(
        f"{type(obj).__name__} subclasses uniloss.Decomposition but does not define {method}(); "
        "a decomposition needs comparisons(), best() and evaluate()"
    )


_LEGACY_HOOKS = ("segments", "evaluate_zeros_plus_one", "comparisons_block", "num_good_flips")


def _reject_legacy_hooks(cls: type) -> None:
    """The hooks ``segments``, ``evaluate_zeros_plus_one``, ``comparisons_block`` and
    ``num_good_flips`` of uniloss 0.1 became the fields of :class:`Structure`: a class that still
    defines one would silently lose its fast path, so it is refused with the way to port it."""
    old = [name for name in _LEGACY_HOOKS if name in vars(cls)]
    if old:
        raise TypeError(
            f"{cls.__name__} defines {', '.join(f'{n}()' for n in old)}: these hooks of "
            "uniloss.Decomposition were replaced by one optional method, structure(target), "
            "returning uniloss.Structure(runs=..., evaluate_zeros=..., evaluate_zeros_plus_one=..., "
            "comparisons_block=..., good_flips=...) (see docs/custom-metrics.md)"
        )


def validate_scores(scores: object, name: str = "scores") -> Tensor:
    """The checks every decomposition's scores get: a finite floating tensor."""
    scores = V.check_floating(name, scores)
    V.check_finite(name, scores)
    return scores


# --------------------------------------------------------------------------- static layouts


class StaticLayout:
    r"""The engine's offer of a *static layout* to the ``prepare`` it is calling.

    A decomposition whose number of comparisons ``l`` depends on the target's values (AP:
    ``P*N``; PCK: the pixels of each disc) needs that number on the host to shape its tensors,
    which on a GPU costs a synchronisation (``nonzero``, ``.item()``) per call. While the engine
    samples its anchors (no ``anchors`` given) it calls ``prepare`` under :func:`static_layout`,
    and a decomposition may answer with a layout whose shapes come from the tensors' shapes only:

    * ``num_bits`` comparisons ``L`` (a Python int from shapes, at most :attr:`max_bits`), of which
      the first ``num_valid`` (a 0-dim int64 tensor, on the device) are the comparisons of the
      exact layout, in its order, and the rest padding;
    * every padding comparison is ``+inf`` (so its bit is 1 and its relaxed bit exactly 1), with no
      gradient; ``best`` is 1 there and ``evaluate``/``evaluate_zeros`` ignore those bits.

    The engine then draws the anchors among the first ``num_valid`` bits only (the same anchors
    as :func:`uniloss.sample_anchors` draws for the exact layout from the same generator state),
    keeps every anchor at 1 on the padding and leaves the padding out of every distance, so the
    loss is the exact layout's, computed on tensors of a fixed size.

    The engine offers at most ``2**22`` comparisons (``chunk_bits`` for a decomposition that can
    be processed block by block, which says so when it claims), on accelerators only: a CPU has
    no synchronisation to avoid and the padding only costs time there (AP lays out ``n^2 / 4`` comparisons whatever its number of positives;
    1.2-1.8x the exact layout's time per call), so it gets no offer.
    Given ``anchors`` and ``good_anchors="all"`` get no offer. The offer stands for the
    decomposition the engine calls and those it delegates to through a ``decomposition`` or
    ``decoder`` attribute (the wrappers of :mod:`uniloss.distributed`, a
    :class:`~uniloss.DecodedMetric`'s decoder): one used inside another's ``prepare`` in any other
    way gets none and lays its comparisons out exactly. The decomposition takes the offer with
    :meth:`claim` (once; a second claim is refused, and the engine prepares again without the
    offer, as it does when a wrapper's comparisons are not the static layout's).

    ``runs_only``: the engine will take the path ``"runs"`` (:attr:`Structure.run_least`) if the
    structure allows it, so it never asks for the comparisons: a decomposition may then claim a
    layout of its *runs* (``claim(..., runs=True)``, at most :attr:`max_bits` of them), shaped
    by the tensors' shapes, whose structure gives ``run_least``, ``run_pull``, ``chain`` and
    ``evaluate_zeros`` on them (runs of no comparison where the exact layout has none; its
    ``runs`` a :class:`uniloss._structured.Runs` with ``ends``, the comparisons' count, and
    ``real``, the exact layout's runs) and whose ``comparisons`` need not exist. It gives
    ``set_valid`` the number of comparisons.
    """

    __slots__ = ("max_bits", "block_max_bits", "owners", "num_bits", "num_valid", "padding", "claims", "runs_only",
                 "runs")

    def __init__(self, max_bits: int, owners: tuple = (), block_max_bits: Optional[int] = None,
                 runs_only: bool = False) -> None:
        self.max_bits = max_bits
        self.block_max_bits = max_bits if block_max_bits is None else min(max_bits, block_max_bits)
        self.owners = owners
        self.num_bits = -1
        self.num_valid: Optional[Tensor] = None
        self.padding: Optional[Tensor] = None
        self.claims = 0
        self.runs_only = runs_only
        self.runs = False  # a layout of runs was claimed

    @staticmethod
    def for_decomposition(max_bits: int, decomposition: "Decomposition",
                          block_max_bits: Optional[int] = None, runs_only: bool = False) -> "StaticLayout":
        """The offer for ``decomposition`` and the objects it delegates to (``block_max_bits``:
        the most a decomposition that can also work block by block may claim, ``chunk_bits``;
        ``runs_only``: a layout of runs may be claimed)."""
        owners: list = []
        obj: Optional[object] = decomposition
        while obj is not None and len(owners) < 16 and not any(obj is o for o in owners):
            owners.append(obj)
            inner = getattr(obj, "decomposition", None)  # (not `or`: a wrapper may define __len__)
            obj = inner if inner is not None else getattr(obj, "decoder", None)
        return StaticLayout(max_bits, tuple(owners), block_max_bits, runs_only)

    def claim(self, owner: object, num_bits: int, blockwise: bool = False, runs: bool = False) -> bool:
        """Whether ``owner`` may lay out ``num_bits`` comparisons statically (it then calls
        :meth:`set_valid` before returning its plan). ``blockwise``: the owner's exact layout has a
        :attr:`Structure.comparisons_block`, and above ``chunk_bits`` it is processed block by
        block instead. ``runs``: ``num_bits`` runs instead, where :attr:`runs_only` (see the
        class)."""
        if not any(owner is o for o in self.owners) or (runs and not self.runs_only):
            return False
        self.claims += 1
        if self.claims > 1 or num_bits > (self.max_bits if runs or not blockwise else self.block_max_bits):
            return False
        self.num_bits, self.runs = num_bits, runs
        return True

    def set_valid(self, num_valid: Tensor, padding: Optional[Tensor] = None) -> None:
        """The number of real comparisons, a 0-dim int64 tensor (and, where the decomposition has
        it, the ``[num_bits]`` bool padding, ``True`` from bit ``num_valid`` on)."""
        self.num_valid, self.padding = num_valid, padding

    @property
    def used(self) -> bool:
        """One claim granted, and its count given (more than one claim: the engine prepares again
        without the offer)."""
        return self.claims == 1 and self.num_valid is not None


# The offer of the engine call running in this thread (thread-local: nn.DataParallel calls the
# loss from several threads at once; a ContextVar would also do, but torch.compile breaks its
# graph on one). Each thread's offer is None from its first use, so the attribute always exists
# (a compiled graph guarded on its absence was compiled again on the next call).
class _Offer(threading.local):
    def __init__(self) -> None:
        self.layout: Optional[StaticLayout] = None


_OFFER = _Offer()


def static_layout() -> Optional[StaticLayout]:
    """The engine's :class:`StaticLayout` offer while it calls ``prepare`` (``None`` otherwise:
    a ``prepare`` called by user code lays its comparisons out exactly)."""
    return _OFFER.layout


def prepare_with_layout(decomposition: Decomposition, scores: Tensor, target: Any,
                        generator: Optional[torch.Generator], layout: Optional[StaticLayout]) -> Any:
    """``decomposition.prepare(scores, target, generator)`` with ``layout`` offered (``None``: not)."""
    previous = _OFFER.layout
    _OFFER.layout = layout
    try:
        return decomposition.prepare(scores, target, generator)
    finally:
        _OFFER.layout = previous
