"""Small constant tensors the engine needs on every call (index ranges, ranks, bit tables), made
once per key (usually a size and a device) and kept.

Every cache is a :class:`TensorCache`; :func:`clear_all` empties them all (tests do, to make a
call the first one). Two rules hold for every cached tensor:

* it is made outside inference mode: a tensor made under ``torch.inference_mode`` (a first call
  from a validation or sanity step) could not be saved for backward by a later training step;
* inside ``torch.compile`` it is made afresh, a constant of the graph: a cache filled while
  tracing would fail the graph's guards on the next call and compile it again;
* inside a ``torch.func`` transform (``grad``, ``vmap``) it is made afresh too: a tensor made
  there is wrapped for the transform, and kept it would stand for the constant after the
  transform ends (AP's every-bit-one view was then no longer recognised: four more operator calls
  a step, each later step).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Hashable, List

import torch

_ALL: List["TensorCache"] = []


class TensorCache:
    """``get(key, make)``: ``make()`` on the first use of ``key``, the same object afterwards.
    At most ``max_size`` keys (then emptied and refilled: keys are sizes, and a run sees few)."""

    def __init__(self, max_size: int = 64) -> None:
        self._items: Dict[Hashable, Any] = {}
        self.max_size = max_size
        _ALL.append(self)

    def get(self, key: Hashable, make: Callable[[], Any]) -> Any:
        if torch.compiler.is_compiling() or _in_func_transform():
            return make()
        value = self._items.get(key)
        if value is None:
            if len(self._items) >= self.max_size:
                self._items.clear()
            with torch.inference_mode(False):
                value = self._items[key] = make()
        return value

    def peek(self, key: Hashable) -> Any:
        """The cached object of ``key``, or ``None`` (nothing is made)."""
        return self._items.get(key)

    def values(self) -> List[Any]:
        """The cached objects."""
        return list(self._items.values())

    def clear(self) -> None:
        self._items.clear()


_PEEK = getattr(getattr(torch._C, "_functorch", None), "peek_interpreter_stack", None)  # looked up once


def _in_func_transform() -> bool:
    """Whether a ``torch.func`` transform is running (its interpreter stack is not empty)."""
    return _PEEK is not None and _PEEK() is not None


def clear_all() -> None:
    """Empty every cache."""
    for cache in _ALL:
        cache.clear()
