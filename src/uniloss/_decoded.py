"""A decomposition made of a decoder (comparisons) and an evaluator (any code): DecodedMetric."""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor

from ._decomposition import Decomposition, Structure
from ._limits import current_limits
from .decoders import Decoder

__all__ = ["DecodedMetric"]

class DecodedMetric(Decomposition):
    r"""Any metric as a decomposition: a decoder's comparisons, then an evaluator on its outputs.

    The metric is ``evaluator(decoder(scores), target)``. The decoder's only discrete step is
    comparing scores (paper, sec. 3.3), so its comparisons are UniLoss's bits and

    .. math:: g(b) = \mathrm{evaluator}(\mathrm{decode}(b), \mathrm{target}),

    evaluated at every anchor at once: ``evaluate(bits [t, l])`` decodes ``t`` configurations
    into outputs with a leading dimension ``t`` and calls the evaluator on them. The paper's
    decompositions are special cases with the same bits: ``Argmax(pairs="target")`` with
    accuracy is :class:`uniloss.MulticlassAccuracy`, ``Ranking()`` with AP is
    :class:`uniloss.AveragePrecision`, ``SpatialArgmax(threshold)`` with PCK is
    :class:`uniloss.PCK` (the same comparisons, best bits and values, hence the same loss).

    Args:
        decoder: a :class:`uniloss.decoders.Decoder` (``Argmax``, ``Threshold``, ``Ranking``,
            ``TopK``, ``SpatialArgmax``, ``PixelArgmax`` or your own).
        evaluator: a function ``(decoded, target) -> values``. ``decoded`` is the decoder's
            output, ``target`` what the decoder's plan holds (its documentation says: labels for
            the argmax decoders, a bool tensor for ``Threshold``, a ``RankingTarget`` with query
            ids ``0..G-1`` for ``Ranking``). The metric must be best (highest, or lowest when
            ``higher_is_better=False``) where the decoded output equals the ground truth.
        higher_is_better: the loss is ``-g~`` when true, ``g~`` otherwise.
        batched: how the evaluator is called:

            * ``True`` (default): it takes outputs with a leading anchor dimension ``[t, ...]``
              and returns ``[t]`` values (vectorise it: no loop over ``t``);
            * ``False``: it is written for one prediction (``decoded[i]``) and returns a scalar;
              the library batches it over anchors with :func:`torch.func.vmap`, and raises a
              ``ValueError`` saying why when vmap cannot (Python control flow on tensor values,
              ``.item()``, data-dependent shapes);
            * ``"loop"``: one prediction at a time in a Python loop over the anchors -- the
              documented fallback for evaluators vmap cannot batch; correct but about ``t``
              times slower (49 calls per step with the default anchors).

    Shapes: as the decoder documents.

    Batches where the metric is undefined (recall or F1 without a positive, a macro average over
    an absent class): the evaluator is called on every batch the decoder finds comparisons in --
    ``Threshold`` and the argmax decoders always do, one or more per score -- and its values at
    the anchors are interpolated as they come. So return a finite value for every configuration,
    the convention you report (the zoo returns 0 for ``0/0``, scikit-learn's ``zero_division``):
    a NaN or Inf at any anchor makes the loss and every gradient NaN, which an optimiser step
    then writes into the weights. A value that is the same for every configuration (as on such
    a batch it usually is) gives a constant loss (minus that value) and no push from the metric;
    only the pull toward the target's configuration moves the scores (nothing with ``pull=0``).
    NaN is harmless only where the decoder finds no comparison (``Ranking`` on a batch without
    a relevant item): the loss is then zero, attached to the graph, with zero gradients, and
    ``UniLoss.last.metric`` is NaN. ``last.metric`` is always the evaluator's value at the
    current scores' configuration.

    Example -- macro recall (balanced accuracy) in a few lines, checked against a reference::

        >>> import torch, uniloss
        >>> from uniloss.decoders import Argmax
        >>> def balanced_accuracy(pred, target):              # pred [t, n] labels, target [n]
        ...     right = (pred == target).float()
        ...     classes = target.unique()
        ...     recall = [right[:, target == c].mean(1) for c in classes]   # loop over classes only
        ...     return torch.stack(recall, 1).mean(1)
        >>> metric = uniloss.DecodedMetric(Argmax(pairs="target"), balanced_accuracy)
        >>> scores = torch.tensor([[2.0, 1.0], [0.0, 1.0], [3.0, 0.0]])
        >>> float(metric.metric(scores, torch.tensor([0, 0, 1])))   # recalls 1/2 and 0
        0.25
        >>> loss = uniloss.UniLoss(metric)(scores.requires_grad_(), torch.tensor([0, 0, 1]))
        >>> loss.backward()
    """

    def __init__(
        self,
        decoder: Decoder,
        evaluator: Callable[[Any, Any], Any],
        *,
        higher_is_better: bool = True,
        batched: Union[bool, str] = True,
    ) -> None:
        if not isinstance(decoder, Decoder):
            raise TypeError(f"Expected `decoder` to be a uniloss.decoders.Decoder, but got {type(decoder).__name__}")
        if not callable(evaluator):
            raise TypeError(f"Expected `evaluator` to be callable (decoded, target) -> values, but got {type(evaluator).__name__}")
        if not isinstance(higher_is_better, bool):
            raise TypeError(f"Expected `higher_is_better` to be a bool, but got {type(higher_is_better).__name__}")
        if not (batched is True or batched is False or batched == "loop"):
            raise ValueError(f"Expected `batched` to be True, False or 'loop', but got {batched!r}")
        self.decoder = decoder
        self.evaluator: Callable[..., Any] = evaluator  # subclasses may pass more arguments
        self.higher_is_better = higher_is_better
        self.batched = batched
        self._vmapped = torch.func.vmap(evaluator, in_dims=(0, None)) if batched is False else None

    def __repr__(self) -> str:
        return f"DecodedMetric({self.decoder!r}, {self.evaluator!r}, higher_is_better={self.higher_is_better}, batched={self.batched!r})"

    def check(self, scores: Tensor, target: Any) -> None:
        self.decoder.check(scores, target)

    def prepare(self, scores: Tensor, target: Any, generator: Optional[torch.Generator] = None) -> Any:
        return self.decoder.prepare(scores, target, generator)

    def comparisons(self, scores: Tensor, target: Any) -> Tensor:
        return self.decoder.comparisons(scores, target)

    def best(self, target: Any) -> Tensor:
        return self.decoder.best(target)

    def structure(self, target: Any) -> Optional[Structure]:
        """The decoder's runs and margins (:meth:`uniloss.decoders.Decoder.runs`,
        :meth:`~uniloss.decoders.Decoder.margins`) and the runs' weights (where the decoder says
        what a toggled run decodes to, :meth:`~uniloss.decoders.Decoder.toggled`), for the pull;
        the anchors are evaluated by decoding them."""
        runs = self.decoder.runs(target)
        if runs is None:
            return None
        chain = self._chain(target)
        return Structure(runs, margins=self.decoder.margins(target), run_weights=lambda: self._run_weights(target),
                         chain=chain, chain_by_runs=chain is not None)

    def _chain(self, plan: Any) -> Optional[Callable[..., Tensor]]:
        """The metric along the chain in closed form, a function of the runs' turns
        (:attr:`uniloss.Structure.chain` with ``chain_by_runs``), where a subclass knows one;
        ``None``: the engine evaluates the chain."""
        return None

    def _run_weights(self, plan: Any) -> Optional[Tensor]:
        """``[S]`` how much the metric changes when run ``s`` alone toggles at the current
        configuration (:meth:`uniloss.decoders.Decoder.toggled`: one element of the decoded output
        changed), from ``S`` toggled outputs; ``None`` where the decoder has no such change or the
        ``S`` outputs would hold more than ``weight_outputs`` elements (:mod:`uniloss._limits`)."""
        with torch.no_grad():
            pair = self.decoder.toggled(plan)
            if pair is None:
                return None
            current, toggled = pair
            g = current.numel()
            if g * g > current_limits().weight_outputs:
                return None
            rows = current.expand(g + 1, g).clone()  # the last row: the current output
            run = torch.arange(g, device=current.device)
            rows[run, run] = toggled
            values = self._values(rows.reshape((g + 1,) + tuple(plan.target.shape)), plan, g + 1)
            return (values[:-1] - values[-1]).abs()

    def decode(self, scores: Tensor, target: Any) -> Any:
        """The decoder's output for the scores' own comparisons, without the anchor dimension
        (e.g. ``scores.argmax(1)`` for :class:`~uniloss.decoders.Argmax`)."""
        with torch.no_grad():
            plan = self.prepare(scores, target)
            bits = self.comparisons(scores, plan) > 0
            return _index(self.decoder.decode(bits[None], plan), 0)

    def evaluate(self, bits: Tensor, target: Any) -> Tensor:
        return self._values(self.decoder.decode(bits, target), target, bits.shape[0])

    def _values(self, decoded: Any, plan: Any, t: int) -> Tensor:
        """``[t]`` the evaluator's values of decoded outputs with a leading ``t`` (floating)."""
        values = self._call(decoded, plan.target, t)
        return values if values.is_floating_point() else values.float()

    def _call(self, decoded: Any, target: Any, t: int) -> Tensor:
        if self.batched is True:
            values = self.evaluator(decoded, target)
        elif self.batched is False and self._vmapped is not None:  # (always set for False)
            try:
                values = self._vmapped(decoded, target)
            except Exception as exc:  # vmap raises RuntimeError, ValueError, TypeError...
                raise ValueError(
                    f"Expected `evaluator` ({_name(self.evaluator)}) to be batchable over anchors with "
                    f"torch.func.vmap (batched=False), but vmap failed: {type(exc).__name__}: {exc}. "
                    "Python control flow on tensor values, .item(), .tolist() and outputs whose shape "
                    "depends on the data cannot be vmapped: write the evaluator for a leading anchor "
                    "dimension (batched=True), or pass batched='loop' to call it once per anchor (slower)."
                ) from exc
        else:
            values = torch.stack([torch.as_tensor(self.evaluator(_index(decoded, i), target)) for i in range(t)])
        if not isinstance(values, Tensor) or values.shape != (t,):
            got = f"shape {tuple(values.shape)}" if isinstance(values, Tensor) else type(values).__name__
            hint = " (an evaluator written for one prediction needs batched=False)" if self.batched is True else ""
            raise ValueError(
                f"Expected `evaluator` ({_name(self.evaluator)}) to return [{t}] values, one per "
                f"configuration, but got {got}{hint}"
            )
        return values


def _name(fn: Any) -> str:
    fn = getattr(fn, "func", fn)  # functools.partial: the wrapped function's name
    return getattr(fn, "__name__", None) or type(fn).__name__


def _index(decoded: Any, i: int) -> Any:
    if isinstance(decoded, Tensor):
        return decoded[i]
    if isinstance(decoded, tuple):
        parts = [_index(d, i) for d in decoded]
        return type(decoded)(*parts) if hasattr(decoded, "_fields") else tuple(parts)
    raise TypeError(f"Expected the decoder's output to be a tensor or a tuple of tensors, but got {type(decoded).__name__}")
