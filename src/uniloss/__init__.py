"""uniloss: evaluation metrics as training losses by the UniLoss method.

UniLoss (Liu, Wang, Deng, ECCV 2020) re-expresses a metric on a mini-batch as
``e = g(h(f(s)))``: score differences ``c = f(s)``, bits ``b = [c > 0]``, any function ``g`` of
the bits. It relaxes the bits with a sigmoid and interpolates ``g`` between configurations of the
bits, giving a differentiable surrogate of the metric itself: by default (0.8) along the chain of
the comparisons (the metric's Lovász extension), or as the paper does, by inverse distance
weighting over anchor configurations (``interpolation="anchors"``).

    >>> import torch, uniloss
    >>> loss_fn = uniloss.UniLoss(uniloss.AveragePrecision())
    >>> scores = torch.randn(16, requires_grad=True)
    >>> loss = loss_fn(scores, torch.arange(16) % 4 == 0)
    >>> loss.backward()
"""

from . import decoders, distributed, functional, testing, zoo
from ._anchors import AnchorSet, sample_anchors
from ._decoded import DecodedMetric
from ._decomposition import Decomposition, Structure
from ._interpolation import interpolate, relax
from ._metrics import PCK, AveragePrecision, KeypointTarget, MulticlassAccuracy
from ._module import UniLoss
from ._traced import TracedMetric, TraceError, from_metric
from .functional import LossInfo

__version__ = "0.14.0"

__all__ = [
    "AnchorSet",
    "AveragePrecision",
    "DecodedMetric",
    "Decomposition",
    "KeypointTarget",
    "LossInfo",
    "MulticlassAccuracy",
    "PCK",
    "Structure",
    "TraceError",
    "TracedMetric",
    "UniLoss",
    "decoders",
    "distributed",
    "from_metric",
    "functional",
    "interpolate",
    "relax",
    "sample_anchors",
    "testing",
    "zoo",
]
