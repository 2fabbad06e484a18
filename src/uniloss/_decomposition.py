"""The base class of every metric decomposition ``e = g(h(f(s)))``."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from . import _validation as V


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

    def num_good_flips(self, target: Any, num_bits: int) -> int:
        """How many bits a good anchor flips away from ``best`` (the paper: 1)."""
        return 1

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _missing(obj: object, method: str) -> TypeError:
    return TypeError(
        f"{type(obj).__name__} subclasses uniloss.Decomposition but does not define {method}(); "
        "a decomposition needs comparisons(), best() and evaluate()"
    )


def validate_scores(scores: object, name: str = "scores") -> Tensor:
    """The checks every decomposition's scores get: a finite floating tensor."""
    scores = V.check_floating(name, scores)
    V.check_finite(name, scores)
    return scores
