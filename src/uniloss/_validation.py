"""Argument and tensor checks shared by every public entry point.

Arguments (counts, temperature) are checked once, at construction; tensors are checked on every
call unless the caller passes ``validate_args=False`` (a hot loop that already trusts its inputs).
Every error names the argument, what was expected and what came.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

_INSIDE = (os.path.dirname(os.path.abspath(__file__)) + os.sep, os.path.dirname(os.path.abspath(torch.nn.__file__)) + os.sep)


def user_stacklevel() -> int:
    """The ``stacklevel`` for a warning raised by the caller of this function that points at the
    first frame outside this package and ``torch.nn`` (the user's call of the loss)."""
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_INSIDE):
        frame, level = frame.f_back, level + 1
    return level


def check_tensor(name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"Expected `{name}` to be a torch.Tensor, but got {type(value).__name__}")
    return value


def check_floating(name: str, value: object) -> Tensor:
    value = check_tensor(name, value)
    if not value.is_floating_point():
        raise TypeError(
            f"Expected `{name}` to be a floating-point tensor (float16, bfloat16, float32 or "
            f"float64), but got dtype {value.dtype}"
        )
    return value


def check_finite(name: str, value: Tensor) -> None:
    if value.numel() and not bool(torch.isfinite(value).all()):
        bad = value[~torch.isfinite(value)]
        raise ValueError(
            f"Expected `{name}` to hold finite values, but got {bad.numel()} NaN or Inf "
            f"value(s) (first: {bad.flatten()[0].item()})"
        )


def check_shape(name: str, value: Tensor, expected: Sequence[Optional[int]], what: str) -> None:
    """Check ``value.shape`` against ``expected`` where ``None`` matches any size."""
    ok = value.dim() == len(expected) and all(
        e is None or e == s for e, s in zip(expected, value.shape)
    )
    if not ok:
        raise ValueError(f"Expected `{name}` of shape {what}, but got shape {tuple(value.shape)}")


def check_target_like_scores(name: str, value: Tensor, scores: Tensor) -> None:
    """Check that ``value`` has the shape of ``scores``, or is ``[n]`` where ``scores`` is ``[n, 1]``
    (one score per sample, a network's single output: the pair :class:`uniloss.AveragePrecision`
    takes, so every binary metric takes it)."""
    shape = tuple(scores.shape)
    if tuple(value.shape) == shape or (len(shape) == 2 and shape[1] == 1 and tuple(value.shape) == shape[:1]):
        return
    column = f" or [{shape[0]}] (one label per score)" if len(shape) == 2 and shape[1] == 1 else ""
    raise ValueError(f"Expected `{name}` of shape {list(shape)} (the shape of scores){column}, but got "
                     f"shape {tuple(value.shape)}")


def check_same_device(**tensors: Tensor) -> None:
    devices = {name: t.device for name, t in tensors.items() if isinstance(t, Tensor)}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"`{n}` on {d}" for n, d in devices.items())
        raise ValueError(f"Expected all tensors on one device, but got {listing}")


def check_integer_labels(name: str, value: Tensor, low: int, high: int) -> None:
    """Check that ``value`` holds integers in ``[low, high)``."""
    if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        raise TypeError(f"Expected `{name}` to be an integer tensor, but got dtype {value.dtype}")
    if value.numel():
        lo, hi = torch.stack(torch.aminmax(value)).tolist()  # one host synchronisation
        if lo < low or hi >= high:
            raise ValueError(
                f"Expected `{name}` to hold integers in [{low}, {high}), but got values in "
                f"[{lo}, {hi}]"
            )


def check_binary_labels(name: str, value: Tensor) -> Tensor:
    """Check that ``value`` holds only 0 and 1 (any dtype) and return it as a bool tensor."""
    value = check_tensor(name, value)
    if value.dtype == torch.bool:
        return value
    if value.numel():
        bad = (value != 0) & (value != 1)
        if bool(bad.any()):
            raise ValueError(
                f"Expected `{name}` to hold only 0 and 1, but got value {value[bad][0].item()}"
            )
    return value != 0


def check_count(name: str, value: object, *, allow_zero: bool = True) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"Expected `{name}` to be an int, but got {type(value).__name__}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"Expected `{name}` {bound}, but got {value}")
    return value


def check_positive(name: str, value: object, bound: str = "> 0") -> float:
    """``value`` as a float where it is a finite number > 0; ``bound``: how the message states
    what is accepted (``pull`` takes 0 too, checked by its caller)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"Expected `{name}` to be a number, but got {type(value).__name__}")
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(f"Expected `{name}` to be a finite number {bound}, but got {value}")
    return float(value)


def check_fraction(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"Expected `{name}` to be a number, but got {type(value).__name__}")
    if not 0 < value <= 1:
        raise ValueError(f"Expected `{name}` in (0, 1], but got {value}")
    return float(value)


def check_generator(generator: object) -> Optional[torch.Generator]:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"Expected `generator` to be a torch.Generator or None, but got "
            f"{type(generator).__name__}"
        )
    return generator


def check_plan(owner: object, plan: Any, plan_type: Union[type, Tuple[type, ...]], methods: str = ".best() and .evaluate()",
               what: str = "target") -> Any:
    """``plan`` if it is what ``owner.prepare(scores, target)`` returns (a ``plan_type``), else a
    TypeError naming ``owner``'s ``methods`` that need it (shared by the paper's metrics, the
    decoders and the traced metrics)."""
    if not isinstance(plan, plan_type):
        raise TypeError(
            f"{type(owner).__name__}{methods} take the {what} returned by .prepare(scores, target), but got "
            f"{type(plan).__name__}"
        )
    return plan


def evaluated(decomposition: Any, bits: Tensor, target: Any) -> Tensor:
    """``decomposition.evaluate(bits, target)``, checked to hold one value per configuration
    (``bits [t, l]`` -> ``[t]``): a metric written for one configuration (a mean over every
    element, a 0-d result) is told so instead of failing inside the engine."""
    values = decomposition.evaluate(bits, target)
    t = bits.shape[0]
    if not isinstance(values, Tensor) or tuple(values.shape) != (t,):
        got = f"shape {tuple(values.shape)}" if isinstance(values, Tensor) else type(values).__name__
        raise ValueError(
            f"Expected {type(decomposition).__name__}.evaluate(bits, target) to return [{t}] values, one per "
            f"configuration (a row of bits [{t}, {bits.shape[1]}]), but got {got}: reduce over the last "
            "dimension only (e.g. .mean(-1), not .mean())"
        )
    return values
