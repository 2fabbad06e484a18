r"""Any metric code as a decomposition: :func:`from_metric` traces the discrete steps of a metric.

A metric written as plain torch code, ``fn(scores, target) -> scalar``, takes its discrete steps on
the scores with a handful of operations: ``argmax``/``argmin``/``max``/``min`` over a dimension,
``topk``, ``sort``/``argsort``, ``unique`` (as sklearn-style tie handling does), and comparisons of
scores with a constant or with each other (``>``, ``<``, ``>=``, ``<=``). Everything after them is
a function of their discrete results. :func:`from_metric` runs ``fn`` once per loss call under a
:class:`torch.overrides.TorchFunctionMode` that

1. follows which tensors are computed from the scores (continuously: views, elementwise maths,
   softmax) and which from the result of a discrete step (labels, masks, permutations);
2. intercepts every discrete step on the scores and maps it to a decoder of
   :mod:`uniloss.decoders` (or to thresholding), whose comparisons become UniLoss's bits and
   whose best configuration comes from the target (a label, relevance or 0/1 tensor in it of the
   matching shape), or, where the target holds none, from probing ``fn`` one output at a time;
3. evaluates the anchors by replaying ``fn`` with each intercepted step returning the outputs
   decoded from the anchor's bits, batched over the anchors with :func:`torch.func.vmap` (or
   one anchor at a time where ``fn`` cannot be vmapped).

Monotone maps between the scores and a discrete step are looked through (``sigmoid(s) > 0.5``
compares ``s`` with 0, ``softmax(s).argmax(1)`` is ``s.argmax(1)``), so the comparisons are score
differences in the scores' own units. What cannot be traced raises :class:`TraceError` naming the
operation and the line of ``fn``.
"""

from __future__ import annotations

import copy
import linecache
import math
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union, cast

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from . import _validation as V
from ._decomposition import Decomposition, validate_scores
from ._pairs import grouped_pairs, pair_differences
from .decoders import Argmax, Ranking, RankingTarget

__all__ = ["TraceError", "TracedMetric", "from_metric"]

_MANUAL = (
    "Write the metric by hand instead: a uniloss.DecodedMetric (a decoder from uniloss.decoders and "
    "an evaluator on its outputs) or a subclass of uniloss.Decomposition; see docs/custom-metrics.md."
)


class TraceError(ValueError):
    """``fn`` takes a step :func:`uniloss.from_metric` cannot turn into comparisons of scores.

    The message names the operation, the line of code that called it and why, and points to the
    manual route (:class:`uniloss.DecodedMetric` or a :class:`uniloss.Decomposition` subclass).

    Example::

        >>> import torch, uniloss
        >>> rounded = uniloss.from_metric(lambda s, y: (s.round() == y).float().mean())
        >>> rounded.metric(torch.randn(4), torch.ones(4))
        Traceback (most recent call last):
            ...
        uniloss._traced.TraceError: fn applies `round` to the scores, a discrete step from_metric does not know (at ...
    """


# --------------------------------------------------------------------------- operation tables

_RANK_OPS = {"argmax", "argmin", "max", "min", "topk", "sort", "argsort", "msort", "unique"}
_CMP_OPS = {
    "gt": (False, True), "__gt__": (False, True), "greater": (False, True),
    "ge": (False, False), "__ge__": (False, False), "greater_equal": (False, False),
    "lt": (True, True), "__lt__": (True, True), "less": (True, True),
    "le": (True, False), "__le__": (True, False), "less_equal": (True, False),
}  # name -> (operands swapped, strict)
_EQ_OPS = {"eq", "__eq__", "ne", "__ne__", "equal", "not_equal", "isclose", "allclose"}
_NONZERO_OPS = {"nonzero", "argwhere", "count_nonzero", "unique_consecutive", "nonzero_static"}
_CHECK_OPS = {"isnan", "isinf", "isfinite", "isposinf", "isneginf", "isreal", "is_nonzero"}
_DISCRETE_FLOAT_OPS = {
    "round", "floor", "ceil", "trunc", "fix", "sign", "sgn", "signbit", "heaviside", "frac",
    "floor_divide", "__floordiv__", "__rfloordiv__", "remainder", "fmod", "__mod__", "__rmod__",
    "bucketize", "searchsorted", "histc", "histogram", "kthvalue", "median", "nanmedian", "mode",
    "cummax", "cummin", "bincount",
}
_PYTHON_OPS = {"__bool__", "item", "tolist", "__int__", "__float__", "__index__", "numpy", "__array__",
               "__complex__", "__contains__"}
_CREATION_OPS = {"zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like",
                 "randint_like", "new_zeros", "new_ones", "new_empty", "new_full", "new_tensor"}
_INPLACE_DUNDER = {"__setitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__",
                   "__imod__", "__ipow__", "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__"}
_IDENTITY_OPS = {"clone", "detach", "contiguous", "positive", "__pos__", "float", "double", "half",
                 "bfloat16", "to", "type_as"}
# Strictly increasing elementwise maps, with their inverse and the inverse's domain (for
# looking through them in a comparison with a constant).
_INCREASING: Dict[str, Tuple[Callable[[Tensor], Tensor], Optional[Callable[[Tensor], Tensor]]]] = {
    "sigmoid": (torch.logit, lambda t: (t > 0) & (t < 1)),
    "special_expit": (torch.logit, lambda t: (t > 0) & (t < 1)),
    "exp": (torch.log, lambda t: t > 0),
    "exp2": (torch.log2, lambda t: t > 0),
    "log": (torch.exp, None),
    "log2": (torch.exp2, None),
    "log10": (lambda t: torch.pow(10.0, t), None),
    "tanh": (torch.atanh, lambda t: t.abs() < 1),
    "atan": (torch.tan, lambda t: t.abs() < math.pi / 2),
    "arctan": (torch.tan, lambda t: t.abs() < math.pi / 2),
    "asinh": (torch.sinh, None),
    "arcsinh": (torch.sinh, None),
    "sinh": (torch.asinh, None),
    "erf": (torch.erfinv, lambda t: t.abs() < 1),
    "expm1": (torch.log1p, lambda t: t > -1),
    "log1p": (torch.expm1, None),
    "sqrt": (torch.square, lambda t: t >= 0),
    "log_sigmoid": (lambda t: torch.logit(torch.exp(t)), lambda t: t < 0),
    "logsigmoid": (lambda t: torch.logit(torch.exp(t)), lambda t: t < 0),
}
_DECREASING = {"neg", "negative", "__neg__"}
_AFFINE = {"add", "__add__", "__radd__", "sub", "__sub__", "subtract", "rsub", "__rsub__", "mul", "__mul__",
           "__rmul__", "multiply", "div", "__truediv__", "divide", "true_divide"}
_SOFTMAX = {"softmax", "log_softmax", "special_softmax", "special_log_softmax"}


_NAMES: Dict[Any, str] = {}


def _op_name(func: Any) -> str:
    name = _NAMES.get(func)
    if name is None:
        name = getattr(func, "__name__", "") or ""
        if name == "__get__":  # a property such as Tensor.T
            owner = getattr(func, "__self__", None)
            name = getattr(owner, "__name__", name)
        if len(_NAMES) < 4096:
            _NAMES[func] = name
    return name


# --------------------------------------------------------------------------- where in fn


_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep


def _frames(fn: Any) -> tuple:
    """Where the current torch call comes from: ``(file, line, function)`` of the innermost
    frame outside torch and this module, and of ``fn``'s own frame when that is another one."""
    code = getattr(getattr(fn, "func", fn), "__code__", None)
    frame: Optional[Any] = sys._getframe(1)
    inner = outer = None
    while frame is not None:
        name = frame.f_code.co_filename
        if inner is None and not name.startswith(_TORCH_DIR) and name != __file__ \
                and not name.endswith("contextlib.py"):
            inner = (name, frame.f_lineno, frame.f_code.co_name)
        if code is not None and frame.f_code is code:
            outer = (name, frame.f_lineno, frame.f_code.co_name)
            break
        frame = frame.f_back
    return inner, outer


def _where(frames: tuple) -> str:
    """``file:line in function: `source``` for what :func:`_frames` returned."""
    inner, outer = frames
    if inner is None:
        return "an unknown line"
    text = _frame_text(*inner)
    if outer is not None and outer != inner:
        text += f", called from fn at {_frame_text(*outer)}"
    return text


def _location(fn: Any) -> str:
    return _where(_frames(fn))


def _frame_text(file: str, line: int, function: str) -> str:
    source = linecache.getline(file, line).strip()
    return f"{file}:{line} in {function}" + (f": `{source}`" if source else "")


# --------------------------------------------------------------------------- what the mode records


class _Info:
    """What a tensor met during a run: the scores' values (``score``), discrete results
    (``sites``: indices of the discrete steps it depends on), and, for a monotone map of a score
    tensor, ``peel = (op, parent, constant)``."""

    __slots__ = ("score", "sites", "peel")

    def __init__(self, score: bool, sites: frozenset, peel: Optional[tuple] = None) -> None:
        self.score, self.sites, self.peel = score, sites, peel


@dataclass
class _Call:
    """A discrete step met in ``fn`` (in call order): a site on the scores, or a step held at its
    traced result (a tie test on permuted scores, a count of discrete results)."""

    name: str
    kind: str  # "rank", "compare", "frozen", "bincount"
    shape: Tuple[int, ...]  # of the first tensor argument
    frames: tuple  # see _frames
    out: Any = None  # the traced result
    # rank steps
    x: Any = None  # the step's input (a tensor)
    dim: Optional[int] = None  # None: over every element
    descending: bool = True
    k: Optional[int] = None
    keepdim: bool = False
    flags: Tuple[bool, bool] = (False, False)  # unique: return_inverse, return_counts
    base: Any = None  # the scores-side tensor after looking through monotone maps
    sign: int = 1  # x increases (1) or decreases (-1) with base
    # comparisons: output = [plus - minus > 0] (xor negate), broadcast to out_shape
    plus: Any = None
    minus: Any = None
    negate: bool = False
    strict: bool = True  # as traced: output = plus > minus (strict) or plus >= minus
    out_shape: Tuple[int, ...] = ()
    dtype: Optional[torch.dtype] = None  # the scores side's dtype

    @property
    def axis(self) -> int:
        """The dimension of a step over one (``dim`` given)."""
        return self.dim if self.dim is not None else 0

    @property
    def key_sign(self) -> int:
        """The step orders ``key_sign * base`` from the largest down."""
        return self.sign * (1 if self.descending else -1)

    @property
    def where(self) -> str:
        return _where(self.frames)

    def describe(self, short: bool = False) -> str:
        """``name at file:line in function: `source``` (``short``: without fn's own frame)."""
        if short and self.frames[0] is not None:
            return f"{self.name} at {_frame_text(*self.frames[0])}"
        return f"{self.name} at {self.where}"


_NO = object()


def _tensors(value: Any):
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            if isinstance(v, Tensor):
                yield v


def _arg(args: Sequence, kwargs: Dict, index: int, name: str, default: Any) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default


def _is_const(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) or isinstance(value, Tensor)


class _Mode(TorchFunctionMode):
    """Runs ``fn``: traces it (``calls is None``) or replays it with ``payloads`` (site index ->
    decoded output of one anchor) in place of the traced discrete steps."""

    def __init__(self, fn: Any, scores: Tensor, calls: Optional[List[_Call]] = None,
                 payloads: Optional[Dict[int, Any]] = None, formatters: Optional[Dict[int, Any]] = None,
                 vmapped: bool = False) -> None:
        super().__init__()
        self.fn = fn
        self.info: Dict[int, _Info] = {id(scores): _Info(True, frozenset())}
        self.keep: List[Tensor] = [scores]
        self.tracing = calls is None
        self.calls: List[_Call] = [] if calls is None else calls
        self.payloads = payloads or {}
        self.formatters = formatters or {}
        self.vmapped = vmapped
        self.count = 0
        self.guards: Dict[int, str] = {}  # site -> where fn read it as a Python value

    # -- bookkeeping
    def _get(self, t: Tensor) -> Optional[_Info]:
        return self.info.get(id(t))

    def _set(self, t: Tensor, info: _Info) -> None:
        key = id(t)
        if key not in self.info:
            self.keep.append(t)  # alive until the run ends: its id stays its own
        self.info[key] = info

    def _collect(self, args: Sequence, kwargs: Dict) -> List[_Info]:
        """The records of the tracked tensors among the arguments (the hot path: kept lean)."""
        get, out = self.info.get, []
        for a in args:
            if type(a) is Tensor or isinstance(a, Tensor):
                i = get(id(a))
                if i is not None:
                    out.append(i)
            elif type(a) in (list, tuple):
                for b in a:
                    if isinstance(b, Tensor):
                        i = get(id(b))
                        if i is not None:
                            out.append(i)
        if kwargs:
            for a in kwargs.values():
                if isinstance(a, Tensor):
                    i = get(id(a))
                    if i is not None:
                        out.append(i)
        return out

    def _error(self, message: str) -> TraceError:
        return TraceError(f"{message} (at {_location(self.fn)}). {_MANUAL}")

    # -- the hook
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        infos = self._collect(args, kwargs)
        if not infos:
            return func(*args, **kwargs)
        name = _op_name(func)
        score = False
        sites = infos[0].sites
        for i in infos:
            if i.score:
                score = True
            if i.sites and i.sites is not sites:
                sites = sites | i.sites
        if name in _PYTHON_OPS:
            if score:
                raise self._error(f"fn reads the scores' values as a Python value ({name}); only comparisons "
                                  "of scores can be traced")
            if self.tracing and sites:
                where = None
                for s in sites:
                    if s not in self.guards:
                        where = where or _location(self.fn)
                        self.guards[s] = where
            return func(*args, **kwargs)
        if score:
            special = self._special(func, name, args, kwargs)
            if special is not _NO:
                return special
        elif name == "bincount" and sites:
            return self._bincount(func, args, kwargs, sites)
        if name == "__setitem__" and _mask_fill(args):
            # x[mask] = value with a mask of x's shape: the same as masked_fill_, which vmap batches
            func, args = Tensor.masked_fill_, (args[0], args[1], args[2])
        out = func(*args, **kwargs)
        self._tag(out, name, args, kwargs, score, sites)
        return out

    # -- tagging ordinary results
    def _tag(self, out: Any, name: str, args: Sequence, kwargs: Dict, score: bool, sites: frozenset) -> None:
        if name in _CREATION_OPS:
            return
        inplace = name in _INPLACE_DUNDER or (name[-1:] == "_" and name[:1] != "_")
        if inplace and args and isinstance(args[0], Tensor):
            self._set(args[0], _Info(score, sites))
        if isinstance(out, Tensor):
            outs: Sequence[Tensor] = (out,)
        elif isinstance(out, (list, tuple)):
            outs = [o for o in out if isinstance(o, Tensor)]
        else:
            return
        if not score:
            shared = _Info(False, sites)
            for o in outs:
                if not (inplace and o is args[0]):
                    self._set(o, shared)
            return
        for o in outs:
            if inplace and o is args[0]:
                continue
            if name in _CHECK_OPS:
                self._set(o, _Info(False, sites))
            elif not (o.is_floating_point() or o.is_complex()):
                raise self._error(f"fn turns the scores into {o.dtype} values with `{name}`, a discrete step "
                                  "from_metric does not know")
            else:
                peel = self._peel_info(name, args, kwargs, o) if len(outs) == 1 else None
                self._set(o, _Info(True, sites, peel))

    def _peel_info(self, name: str, args: Sequence, kwargs: Dict, out: Tensor) -> Optional[tuple]:
        """``(op, parent, constant)`` when ``out`` is a monotone map of one score tensor."""
        if not args or not isinstance(args[0], Tensor):
            return None
        first = args[0]
        fi = self._get(first)
        if name in _INCREASING or name in _DECREASING or name in _IDENTITY_OPS or name in _SOFTMAX:
            if fi is None or not fi.score or first is out or tuple(first.shape) != tuple(out.shape):
                return None
            if name == "to" and not out.is_floating_point():
                return None
            if name in _SOFTMAX:
                dim = _arg(args, kwargs, 1, "dim", None)
                return (name, first, dim) if isinstance(dim, int) else None
            if name in ("softplus",):
                return None
            return (name, first, None)
        if name in _AFFINE and len(args) >= 2 and "alpha" not in kwargs:
            a, b = args[0], args[1]
            ai, bi = self._get(a) if isinstance(a, Tensor) else None, self._get(b) if isinstance(b, Tensor) else None
            a_score, b_score = ai is not None and ai.score, bi is not None and bi.score
            if a_score == b_score:
                return None
            score_first = a_score
            x, const = (a, b) if score_first else (b, a)
            if not _is_const(const) or (isinstance(const, Tensor) and self._get(const) is not None):
                return None
            if tuple(x.shape) != tuple(out.shape):
                return None
            if name in ("rsub", "__rsub__"):
                op = "rsub" if score_first else "sub"
            elif name in ("sub", "__sub__", "subtract"):
                op = "sub" if score_first else "rsub"
            elif name in ("div", "__truediv__", "divide", "true_divide"):
                if not score_first or "rounding_mode" in kwargs:
                    return None
                op = "div"
            elif name in ("mul", "__mul__", "__rmul__", "multiply"):
                op = "mul"
            else:
                op = "add"
            return (op, x, const)
        return None

    # -- discrete steps on the scores
    def _special(self, func, name: str, args: Sequence, kwargs: Dict) -> Any:
        if name in _RANK_OPS:
            return self._rank(func, name, args, kwargs)
        if name in _CMP_OPS:
            return self._compare(func, name, args, kwargs)
        if name in _EQ_OPS or name in _NONZERO_OPS or (name == "where" and len(args) + len(kwargs) == 1):
            if not self._permuted_scores(args, kwargs):
                raise self._error(f"fn applies `{name}` to the scores' values (an equality or nonzero test); "
                                  "only orderings and comparisons of scores can be traced")
            return self._frozen(func, name, args, kwargs)
        if name in _DISCRETE_FLOAT_OPS:
            raise self._error(f"fn applies `{name}` to the scores, a discrete step from_metric does not know")
        return _NO

    def _permuted_scores(self, args: Sequence, kwargs: Dict) -> bool:
        """Whether the score tensors among the arguments were gathered by a discrete result
        (sorted or permuted scores, on which a tie test is constant for untied scores)."""
        found = False
        for t in list(_tensors(args)) + [v for v in kwargs.values() if isinstance(v, Tensor)]:
            i = self._get(t)
            if i is not None and i.score:
                if not i.sites:
                    return False
                found = True
        return found

    def _next(self, name: str, shape: Tuple[int, ...]) -> Tuple[int, Any]:
        index = self.count
        self.count += 1
        if self.tracing:
            return index, None
        if index >= len(self.calls) or self.calls[index].name != name or self.calls[index].shape != shape:
            expected = self.calls[index].describe() if index < len(self.calls) else "no further discrete step"
            raise self._error(f"fn took another path when replayed on decoded outputs: its discrete step "
                              f"#{index} is `{name}` on shape {list(shape)} where the trace met {expected} "
                              "(Python control flow on the results of discrete steps cannot be traced)")
        return index, self.calls[index]

    def _frozen(self, func, name: str, args: Sequence, kwargs: Dict) -> Any:
        first = next(_tensors(args), None)
        index, call = self._next(name, tuple(first.shape) if first is not None else ())
        if self.tracing:
            out = func(*args, **kwargs)
            self.calls.append(_Call(name, "frozen", tuple(first.shape) if first is not None else (),
                                    _frames(self.fn), out=out))
            return out
        return call.out

    def _bincount(self, func, args: Sequence, kwargs: Dict, sites: frozenset) -> Any:
        """``bincount`` of discrete results: under vmap (no batching rule) a scatter-add of the
        traced output's size."""
        x = args[0]
        index, call = self._next("bincount", tuple(x.shape))
        if self.tracing:
            out = func(*args, **kwargs)
            self.calls.append(_Call("bincount", "bincount", tuple(x.shape), _frames(self.fn), out=out))
        elif self.vmapped:
            weights = _arg(args, kwargs, 1, "weights", None)
            ref = call.out
            src = torch.ones_like(x, dtype=ref.dtype) if weights is None else weights.to(ref.dtype)
            out = torch.zeros(ref.shape, dtype=ref.dtype, device=ref.device).scatter_add(0, x.long(), src)
        else:
            out = func(*args, **kwargs)
        self._set(out, _Info(False, sites))
        return out

    def _site_result(self, index: int, call: Optional[_Call], x: Tensor, func, args, kwargs) -> Any:
        if self.tracing or call is None:
            return func(*args, **kwargs)
        if index in self.payloads:
            return self.formatters[index](self.payloads[index], x)
        return call.out

    def _tag_site(self, out: Any, index: int, values_from_scores: Tuple[bool, ...]) -> None:
        """Indices and masks depend on the step; values (``max(dim).values``, sorted scores) are
        continuous functions of the scores (order statistics) and count as scores."""
        outs = out if isinstance(out, tuple) else (out,)
        for o, is_value in zip(outs, values_from_scores):
            if isinstance(o, Tensor):
                self._set(o, _Info(True, frozenset()) if is_value else _Info(False, frozenset([index])))

    def _rank(self, func, name: str, args: Sequence, kwargs: Dict) -> Any:
        x = args[0] if args and isinstance(args[0], Tensor) else kwargs.get("input")
        if not isinstance(x, Tensor):
            return _NO
        xi = self._get(x)
        if xi is None or not xi.score:
            return _NO  # e.g. torch.max(a, b) with the scores as b: elementwise, continuous
        ndim = x.dim()
        flags = (False, False)
        values: Tuple[bool, ...]
        k, keepdim = None, False
        if name in ("max", "min"):
            dim = _arg(args, kwargs, 1, "dim", None)
            if dim is None or isinstance(dim, Tensor):
                return _NO  # values only (continuous), or elementwise with another tensor
            keepdim = bool(_arg(args, kwargs, 2, "keepdim", False))
            descending = name == "max"
            values = (True, False)
        elif name in ("argmax", "argmin"):
            dim = _arg(args, kwargs, 1, "dim", None)
            keepdim = bool(_arg(args, kwargs, 2, "keepdim", False))
            descending = name == "argmax"
            values = (False,)
        elif name == "topk":
            k = int(_arg(args, kwargs, 1, "k", 1))
            dim = _arg(args, kwargs, 2, "dim", -1)
            descending = bool(_arg(args, kwargs, 3, "largest", True))
            values = (True, False)
        elif name == "sort":
            dim = _arg(args, kwargs, 1, "dim", -1)
            if isinstance(dim, bool):  # sort(x, descending) has no such overload, but be safe
                dim = -1
            descending = bool(_arg(args, kwargs, 2, "descending", False))
            values = (True, False)
        elif name == "argsort":
            dim = _arg(args, kwargs, 1, "dim", -1)
            descending = bool(_arg(args, kwargs, 2, "descending", False))
            values = (False,)
        elif name == "msort":
            dim, descending, values = 0, False, (True,)
        else:  # unique
            if _arg(args, kwargs, 4, "dim", None) is not None:
                raise self._error("fn calls `unique` with `dim` on the scores; only unique over all values "
                                  "(a ranking of untied scores) can be traced")
            flags = (bool(_arg(args, kwargs, 2, "return_inverse", False)),
                     bool(_arg(args, kwargs, 3, "return_counts", False)))
            dim, descending = None, False
            values = (True, False, False)
        if dim is not None:
            if not isinstance(dim, int):
                raise self._error(f"fn calls `{name}` on the scores over dimension {dim!r}; one int dimension "
                                  "(or none) can be traced")
            dim = dim % max(ndim, 1)
        if xi.sites:
            raise self._error(f"fn applies `{name}` to score values that already depend on another discrete "
                              "step (e.g. scores gathered by a sort or masked by a comparison)")
        index, call = self._next(name, tuple(x.shape))
        out = self._site_result(index, call, x, func, args, kwargs)
        if self.tracing:  # looked through in finish(), for the steps that are trained
            self.calls.append(_Call(
                name, "rank", tuple(x.shape), _frames(self.fn), out=out, x=x, dim=dim, descending=descending,
                k=k, keepdim=keepdim, flags=flags,
            ))
        self._tag_site(out, index, values)
        return out

    def finish(self, call: _Call) -> None:
        """After the trace, for a step that is trained: look through the monotone maps between
        the scores and it (``base``/``sign`` of a ranking, ``plus``/``minus`` of a comparison)."""
        if call.kind == "rank":
            call.base, call.sign = self._peel_rank(call.x, call.dim)
            return
        p, q, strict = self._peel_compare(call.plus, call.minus, call.strict)
        call.dtype = (p if self._score(p) else q).dtype
        call.plus, call.minus, call.negate = (p, q, False) if strict else (q, p, True)

    def _peel_rank(self, x: Tensor, dim: Optional[int]) -> Tuple[Tensor, int]:
        """Look through order-preserving maps: ``x`` is increasing (``sign`` 1) or decreasing
        (-1) in the returned tensor, elementwise (or along ``dim``, for softmax)."""
        sign = 1
        while True:
            info = self._get(x)
            if info is None or info.peel is None:
                return x, sign
            op, parent, const = info.peel
            if op in _INCREASING or op in _IDENTITY_OPS:
                pass
            elif op in _DECREASING or op == "rsub":
                if op == "rsub" and not _scalar(const):
                    return x, sign
                sign = -sign
            elif op in ("add", "sub"):
                if not _scalar(const):
                    return x, sign
            elif op in ("mul", "div"):
                if not _scalar(const) or float(const) == 0:
                    return x, sign
                if float(const) < 0:
                    sign = -sign
            elif op in _SOFTMAX:
                if dim is None or const % x.dim() != dim:
                    return x, sign
            else:
                return x, sign
            x = parent

    def _compare(self, func, name: str, args: Sequence, kwargs: Dict) -> Any:
        if len(args) < 2:
            return _NO
        a, b = args[0], args[1]
        swapped, strict = _CMP_OPS[name]
        p, q = (b, a) if swapped else (a, b)  # output = p > q (strict) or p >= q
        for side in (p, q):
            if isinstance(side, Tensor):
                i = self._get(side)
                if i is not None and i.sites:
                    raise self._error(f"fn compares ({name}) values that depend on the scores and on another "
                                      "discrete step (e.g. scores masked by a comparison)")
        first = next(_tensors(args))
        index, call = self._next(name, tuple(first.shape))
        out = self._site_result(index, call, first, func, args, kwargs)
        if self.tracing:  # looked through in finish(), for the steps that are trained
            self.calls.append(_Call(name, "compare", tuple(first.shape), _frames(self.fn), out=out,
                                    plus=p, minus=q, strict=strict, out_shape=tuple(out.shape)))
        self._tag_site(out, index, (False,))
        return out

    def _score(self, value: Any) -> bool:
        i = self._get(value) if isinstance(value, Tensor) else None
        return i is not None and i.score

    def _peel_compare(self, p: Any, q: Any, strict: bool) -> Tuple[Any, Any, bool]:
        """``p > q`` (or ``>=``) with one side a monotone map of the scores and the other a
        constant: move the map onto the constant while it has an inverse there."""
        while True:
            left = self._score(p) and not self._score(q)
            right = self._score(q) and not self._score(p)
            if not (left or right):
                return p, q, strict
            x, t = (p, q) if left else (q, p)
            step = self._invert(x, t)
            if step is None:
                return p, q, strict
            x0, t0, decreasing = step
            if left != decreasing:  # x0 on the left
                p, q = x0, t0
            else:
                p, q = t0, x0

    def _invert(self, x: Tensor, t: Any) -> Optional[Tuple[Tensor, Tensor, bool]]:
        info = self._get(x)
        if info is None or info.peel is None:
            return None
        op, parent, const = info.peel
        # the constant's inverse in float64 (float32 on Apple MPS, which has no float64)
        wide = torch.float32 if parent.device.type == "mps" else torch.float64
        with torch.no_grad():
            tt = torch.as_tensor(t, dtype=wide, device=parent.device)
            if op in _IDENTITY_OPS:
                return parent, tt, False
            if op in _INCREASING:
                inverse, domain = _INCREASING[op]
                if domain is not None and not bool(domain(tt).all()):
                    return None
                return parent, inverse(tt), False
            if op in _DECREASING:
                return parent, -tt, True
            c = torch.as_tensor(const, dtype=wide, device=parent.device)
            if op == "add":
                return parent, tt - c, False
            if op == "sub":
                return parent, tt + c, False
            if op == "rsub":
                return parent, c - tt, True
            if op in ("mul", "div"):
                if bool((c == 0).any()) or not (bool((c > 0).all()) or bool((c < 0).all())):
                    return None
                return parent, (tt / c if op == "mul" else tt * c), bool((c < 0).all())
        return None


def _mask_fill(args: Sequence) -> bool:
    if len(args) != 3 or not isinstance(args[0], Tensor) or not isinstance(args[1], Tensor):
        return False
    x, mask, value = args
    if mask.dtype != torch.bool or mask.shape != x.shape:
        return False
    return _scalar(value) and (not isinstance(value, Tensor) or value.dim() == 0)


def _scalar(value: Any) -> bool:
    if isinstance(value, Tensor):
        return value.numel() == 1
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# --------------------------------------------------------------------------- sites: comparisons, best, decoding


def _target_tensors(target: Any) -> List[Tensor]:
    """The tensors of the target: itself, or the tensors of a tuple, list or dict."""
    if isinstance(target, Tensor):
        return [target]
    if isinstance(target, dict):
        target = list(target.values())
    if isinstance(target, (tuple, list)):
        return [t for t in target if isinstance(t, Tensor)]
    return []


def _rows_shape(call: _Call) -> Tuple[int, ...]:
    shape = call.shape
    if call.dim is None:
        return ()
    return shape[: call.dim] + shape[call.dim + 1:]


def _fits(t: Tensor, shape: Tuple[int, ...]) -> bool:
    """``t`` has ``shape`` up to dimensions of size one (``[n]`` fits ``[n, 1]``)."""
    return tuple(t.shape) == tuple(shape) or (
        t.numel() == math.prod(shape) and [d for d in t.shape if d != 1] == [d for d in shape if d != 1])


def _label_candidates(call: _Call, tensors: List[Tensor]) -> List[Tensor]:
    """Integer tensors shaped like one label per row, with values among the classes."""
    rows, num = _rows_shape(call), (call.shape[call.dim] if call.dim is not None else math.prod(call.shape))
    out = []
    for t in tensors:
        if not _fits(t, rows) or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            continue
        if t.numel() == 0 or (int(t.min()) >= 0 and int(t.max()) < num):
            out.append(t.reshape(rows))
    return out


def _relevance_candidates(call: _Call, tensors: List[Tensor]) -> List[Tensor]:
    """Tensors shaped like the ranked scores, >= 0 and finite: a relevance per item."""
    varied: List[Tensor] = []
    constant: List[Tensor] = []
    for t in tensors:
        if not _fits(t, call.shape) or t.is_complex() or t.numel() == 0:
            continue
        v = t.double() if t.dtype != torch.bool else t.long()
        if bool(torch.isfinite(v).all()) and float(v.min()) >= 0:
            # a constant relevance (a batch without positives) ranks nothing: no comparisons
            (varied if float(v.max()) > float(v.min()) else constant).append(t.reshape(call.shape))
    return varied + constant


def _binary_candidates(call: _Call, tensors: List[Tensor]) -> List[Tensor]:
    """0/1 tensors of the output's shape, then those whose shape begins it (one target per
    sample, compared with several thresholds), expanded to it."""
    exact, prefix = [], []
    shape = call.out_shape
    for t in tensors:
        if _fits(t, shape):
            t = t.reshape(shape)
        if t.is_complex() or t.dim() == 0 or tuple(t.shape) != shape[: t.dim()]:
            continue
        if not (t.dtype == torch.bool or t.numel() == 0 or bool(((t == 0) | (t == 1)).all())):
            continue
        if t.dim() == len(shape):
            exact.append(t)
        else:
            prefix.append(t.reshape(tuple(t.shape) + (1,) * (len(shape) - t.dim())).expand(shape))
    return exact + prefix


class _Site:
    """A discrete step whose comparisons are trained. Built per call from its traced ``_Call``."""

    call: _Call
    index: int
    num_bits: int

    def comparisons(self) -> Tensor:
        raise NotImplementedError

    def best(self) -> Tensor:
        raise NotImplementedError

    def runs(self) -> Optional[Tensor]:
        """``[S]`` run lengths (each > 0) whose 0-bit counts alone decide the decoded output, or
        ``None``."""
        return None

    def width(self) -> Optional[int]:
        """The length of every run, where all are equally long (``None`` otherwise)."""
        return None

    def num_runs(self) -> int:
        return self._lengths().numel()

    def _lengths(self) -> Tensor:
        lengths = self.runs()
        if lengths is None:
            raise RuntimeError(f"{type(self).__name__} has no runs of bits")
        return lengths

    def decode(self, bits: Tensor) -> Any:
        raise NotImplementedError

    def decode_zeros(self, zeros: Tensor) -> Any:
        """Decode from the 0-bit counts of each run ``[t, S]``: bits rebuilt with the counted
        0-bits first in each run (the decoded output depends on the counts alone)."""
        t, w = zeros.shape[0], self.width()
        counts = zeros.to(torch.long)
        if w is not None:
            steps = torch.arange(w, device=zeros.device)
            return self.decode((steps >= counts[..., None]).reshape(t, -1))
        if not hasattr(self, "_run_of"):
            lengths = self._lengths()
            self._run_of = torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths)
            start = torch.cumsum(lengths, 0) - lengths
            self._place = torch.arange(self._run_of.numel(), device=lengths.device) - start[self._run_of]
        return self.decode(self._place[None, :] >= counts[:, self._run_of])

    def hard_payload(self) -> Any:
        """The decoded output of the traced scores (one configuration, no anchor dimension)."""
        raise NotImplementedError

    def format(self, payload: Any, x: Tensor) -> Any:
        """What the intercepted operation returns, from one anchor's payload."""
        raise NotImplementedError


def _out_indices(call: _Call) -> Tensor:
    out = call.out
    return out[1] if isinstance(out, tuple) else out


class _ClassSite(_Site):
    """``argmax``/``argmin``/``max``/``min`` over a dimension (and ``topk`` with labels): one
    categorical output per row. With ``labels``: :class:`~uniloss.decoders.Argmax` with
    ``pairs="target"`` (the label against every other class); with ``positive`` (a ``[N, C]``
    mask of the outputs best for each row, found by probing): every positive against every
    negative of its row, as :class:`uniloss.PCK`."""

    def __init__(self, call: _Call, index: int, labels: Optional[Tensor] = None,
                 positive: Optional[Tensor] = None) -> None:
        self.call, self.index = call, index
        key = call.base * call.key_sign
        if call.dim is None:
            rows = key.reshape(1, -1)
        else:
            rows = key.movedim(call.dim, -1)
            rows = rows.reshape(-1, rows.shape[-1])
        self.rows = rows  # [N, C], differentiable in the scores
        self.num_rows, self.num_classes = int(rows.shape[0]), int(rows.shape[1])
        self.rows_shape = _rows_shape(call)
        self.mode = "label" if labels is not None else "probe"
        detached = rows.detach()
        if labels is not None:
            self.decoder = Argmax(pairs="target")
            self.plan = self.decoder.prepare(detached, labels.reshape(-1))
            self.num_bits = self.num_rows * (self.num_classes - 1)
        elif positive is not None:
            self._prepare_sets(detached, positive)
        else:
            raise ValueError("a categorical step needs labels or a mask of positive outputs")

    def _prepare_sets(self, rows: Tensor, positive: Tensor) -> None:
        n, c = rows.shape
        active = positive.any(1) & ~positive.all(1)
        self.active = active.nonzero().reshape(-1)
        pos = positive[self.active]
        pos_row, pos_col = pos.nonzero(as_tuple=True)
        neg_row, neg_col = (~pos).nonzero(as_tuple=True)
        g = self.active.numel()
        self.ia, self.ib = grouped_pairs(pos_row, neg_row, g)
        base = self.active * c
        self.pos_flat = base[pos_row] + pos_col
        self.neg_flat = base[neg_row] + neg_col
        self.pos_row = pos_row
        self.neg_per_row = torch.bincount(neg_row, minlength=g)
        self.num_bits = self.ia.numel()
        sub = rows[self.active]
        inf = torch.full_like(sub, float("-inf"))
        self.by_rank = torch.where(pos, sub, inf).sort(dim=1, descending=True, stable=True).indices
        rank_of = torch.empty_like(self.by_rank).scatter_(
            1, self.by_rank, torch.arange(c, device=rows.device).expand_as(self.by_rank))
        self.pos_rank = rank_of[pos_row, pos_col]
        self.top_negative = torch.where(pos, inf, sub).argmax(1)
        self.current = rows.argmax(1)

    def comparisons(self) -> Tensor:
        if self.mode == "label":
            return self.decoder.comparisons(self.rows, self.plan)
        flat = self.rows.reshape(-1)
        return flat[self.pos_flat][self.ia] - flat[self.neg_flat][self.ib]

    def best(self) -> Tensor:
        if self.mode == "label":
            return self.decoder.best(self.plan)
        return torch.ones(self.num_bits, dtype=torch.bool, device=self.rows.device)

    def runs(self) -> Optional[Tensor]:
        if self.mode == "label":
            if self.num_bits == 0:
                return self.rows.new_zeros(0, dtype=torch.long)
            return torch.full((self.num_rows,), self.num_classes - 1, dtype=torch.long, device=self.rows.device)
        return self.neg_per_row[self.pos_row]

    def width(self) -> Optional[int]:
        return self.num_classes - 1 if self.mode == "label" and self.num_bits else None

    def num_runs(self) -> int:
        if self.mode == "label":
            return self.num_rows if self.num_bits else 0
        return self.pos_row.numel()

    def decode_zeros(self, zeros: Tensor) -> Any:
        if self.mode != "label" or self.call.k is not None:
            return super().decode_zeros(zeros)
        # Argmax(pairs="target"): the label where it beats every other class, else the best
        # other class of the current scores
        ranked = cast(Tensor, self.plan.ranked)
        labels = torch.where(zeros == 0, self.plan.labels[None, :], ranked[None, :, 0])
        return labels.reshape((zeros.shape[0],) + self.rows_shape)

    def labels(self, bits: Tensor) -> Tensor:
        """``[t, N]`` decoded labels."""
        t = bits.shape[0]
        if self.mode == "label":
            if self.num_classes < 2:
                return self.plan.labels.expand(t, -1)
            return self.decoder.decode(bits, self.plan).reshape(t, -1)
        c = self.num_classes
        g = self.active.numel()
        wrong = torch.zeros(t, self.pos_row.numel(), dtype=torch.long, device=bits.device)
        wrong.index_add_(1, self.ia, (~bits).long())
        key = torch.where(wrong == 0, self.pos_rank[None, :], torch.full_like(wrong, c))
        rank = torch.full((t, g), c, dtype=torch.long, device=bits.device)
        rank.scatter_reduce_(1, self.pos_row.expand(t, -1), key, "amin")
        chosen = self.by_rank.gather(1, rank.clamp(max=c - 1).t()).t()
        label = torch.where(rank < c, chosen, self.top_negative[None, :])
        out = self.current.expand(t, -1).clone()
        out[:, self.active] = label
        return out

    def decode(self, bits: Tensor) -> Tensor:
        labels = self.labels(bits)
        if self.call.k is None:
            return labels.reshape((bits.shape[0],) + self.rows_shape)
        # topk with labels: the label at its place among the current ranking of the others
        t, k = bits.shape[0], self.call.k
        losses = (~bits).reshape(t, self.num_rows, self.num_classes - 1).sum(-1)  # classes above the label
        ranked = cast(Tensor, self.plan.ranked)  # [N, C-1], best first by the current scores
        slot = torch.arange(k, device=bits.device)
        other = torch.where(slot[None, None, :] < losses[..., None], slot, slot - 1).clamp(min=0)
        idx = ranked[None].expand(t, -1, -1).gather(2, other.clamp(max=self.num_classes - 2))
        idx = torch.where(slot[None, None, :] == losses[..., None], self.plan.labels[None, :, None], idx)
        return idx.reshape((t,) + self.rows_shape + (k,))

    def hard_payload(self) -> Tensor:
        idx = _out_indices(self.call)
        if self.call.k is not None:
            return idx.movedim(self.call.axis, -1)
        return idx.reshape(self.rows_shape)

    def format(self, payload: Tensor, x: Tensor) -> Any:
        return _format_class(self.call, payload, x)


def _format_class(call: _Call, payload: Tensor, x: Tensor) -> Any:
    """The result of a categorical step (``argmax``, ``max``/``min`` over a dim, ``topk`` with
    labels) from one configuration's labels (or top-k indices)."""
    d = call.axis
    if call.k is not None:
        idx = payload.movedim(-1, d)
        return torch.return_types.topk((x.gather(d, idx), idx))
    if call.name in ("argmax", "argmin"):
        return payload.reshape(call.out.shape)
    idx = payload.unsqueeze(d)
    values = x.gather(d, idx)
    if not call.keepdim:
        idx, values = idx.squeeze(d), values.squeeze(d)
    kind = torch.return_types.max if call.name == "max" else torch.return_types.min
    return kind((values, idx))


class _RankSite(_Site):
    """``sort``/``argsort``/``topk``/``unique`` (and ``argmax`` with a relevance per item): a
    ranking of the items along a dimension, each other index a query, through
    :class:`~uniloss.decoders.Ranking` with the target's relevance (more relevant = higher
    score)."""

    def __init__(self, call: _Call, index: int, relevance: Tensor, orient: int = 1, pairs: str = "relevance") -> None:
        self.call, self.index, self.orient, self.pairs = call, index, orient, pairs
        base = call.base * orient
        if call.dim is None:
            moved, rel = base.reshape(1, -1), relevance.reshape(1, -1)
        else:
            moved, rel = base.movedim(call.dim, -1), relevance.movedim(call.dim, -1)
        self.items = moved.shape[-1]
        self.queries_shape = tuple(moved.shape[:-1])
        self.flat = moved.reshape(-1)
        queries = self.flat.numel() // max(self.items, 1)
        query = torch.arange(queries, device=base.device).repeat_interleave(self.items)
        rel = rel.reshape(-1)
        rel = rel.long() if rel.dtype == torch.bool else rel
        self.reverse = call.key_sign != orient
        grades = torch.unique(rel)
        # One query with two grades (0/1 relevance): the paper's AP layout, each relevant item
        # against every irrelevant one in index order, kept without the general plan.
        self.binary = queries == 1 and grades.numel() <= 2 and pairs != "all"
        if self.binary:
            high = rel == grades[-1] if grades.numel() == 2 else torch.zeros_like(rel, dtype=torch.bool)
            self.pos, self.neg = high.nonzero().reshape(-1), (~high).nonzero().reshape(-1)
            self.num_bits = self.pos.numel() * self.neg.numel()
            return
        self.decoder = Ranking(pairs)
        self.plan = self.decoder.prepare(self.flat.detach(), RankingTarget(rel, query))
        self.num_bits = self.plan.a.numel()
        # the comparisons of one item as `a` are consecutive: one run per item
        self.run_items, self.run_lengths = torch.unique_consecutive(self.plan.a, return_counts=True)

    def comparisons(self) -> Tensor:
        if self.binary:
            return pair_differences(self.flat, self.pos, self.neg)
        return self.decoder.comparisons(self.flat, self.plan)

    def best(self) -> Tensor:
        if self.binary:
            return torch.ones(self.num_bits, dtype=torch.bool, device=self.flat.device)
        return self.decoder.best(self.plan)

    def runs(self) -> Optional[Tensor]:
        if self.binary:
            return torch.full((self.pos.numel() if self.num_bits else 0,), self.neg.numel(), dtype=torch.long,
                              device=self.flat.device)
        return None if self.pairs == "all" else self.run_lengths

    def width(self) -> Optional[int]:
        return self.neg.numel() if self.binary and self.num_bits else None

    def num_runs(self) -> int:
        if self.binary:
            return self.pos.numel() if self.num_bits else 0
        return self._lengths().numel()

    def decode_zeros(self, zeros: Tensor) -> Tuple[Tensor, Tensor]:
        if self.binary:
            return self._payload(self._binary_ranks(zeros.to(torch.long)))
        a_loses = torch.zeros(zeros.shape[0], self.flat.numel(), dtype=torch.long, device=zeros.device)
        a_loses[:, self.run_items] = zeros.to(torch.long)
        return self._payload(self.decoder.decode_losses(a_loses, self.plan))

    def _binary_ranks(self, above: Tensor) -> Tensor:
        """``[t, n]`` ranks from ``above [t, P]``, the irrelevant items above each relevant one:
        what :meth:`uniloss.decoders.Ranking.decode` gives for two grades -- the relevant items
        by (count, index), the k-th at slot ``count + k``, the irrelevant ones in index order in
        the slots left."""
        t, n = above.shape[0], self.items
        ranks = torch.arange(n, device=above.device).expand(t, n).clone()
        if self.num_bits == 0:
            return ranks
        counts, order = above.sort(dim=1, stable=True)
        slots = counts + torch.arange(self.pos.numel(), device=above.device)
        ranks[:, self.pos] = torch.empty_like(slots).scatter_(1, order, slots)
        free = torch.ones(t, n, dtype=torch.bool, device=above.device).scatter_(1, slots, False)
        ranks[:, self.neg] = free.nonzero()[:, 1].reshape(t, self.neg.numel())
        return ranks

    def _payload(self, ranks: Tensor) -> Tuple[Tensor, Tensor]:
        t, n = ranks.shape[0], self.items
        ranks = ranks.reshape(t, -1, n)
        order = torch.empty_like(ranks).scatter_(2, ranks, torch.arange(n, device=ranks.device).expand_as(ranks))
        if self.reverse:
            order, ranks = order.flip(-1), n - 1 - ranks
        shape = (t,) + self.queries_shape + (n,)
        return order.reshape(shape), ranks.reshape(shape)

    def decode(self, bits: Tensor) -> Tuple[Tensor, Tensor]:
        if self.binary:
            above = (~bits).reshape(bits.shape[0], self.pos.numel(), -1).sum(-1) if self.num_bits else \
                bits.new_zeros(bits.shape[0], self.pos.numel(), dtype=torch.long)
            return self._payload(self._binary_ranks(above))
        return self._payload(self.decoder.decode(bits, self.plan))

    def format(self, payload: Tuple[Tensor, Tensor], x: Tensor) -> Any:
        call = self.call
        order, ranks = payload
        if call.name == "unique":
            values = x.reshape(-1).gather(0, order.reshape(-1))
            extra = []
            if call.flags[0]:
                extra.append(ranks.reshape(x.shape))
            if call.flags[1]:
                extra.append(torch.ones_like(ranks.reshape(-1)))
            return values if not extra else tuple([values] + extra)
        if call.dim is None:  # argmax/argmin over every element
            return order.reshape(-1)[0].reshape(call.out.shape)
        d = call.dim
        idx = order.movedim(-1, d)
        if call.name == "argsort":
            return idx
        k = call.k if call.k is not None else 1
        if call.name in ("sort", "msort"):
            values = x.gather(d, idx)
            return values if call.name == "msort" else torch.return_types.sort((values, idx))
        if call.name == "topk":
            idx = idx.narrow(d, 0, k)
            return torch.return_types.topk((x.gather(d, idx), idx))
        top = idx.narrow(d, 0, 1)
        if call.name in ("argmax", "argmin"):
            return top.reshape(call.out.shape)
        values = x.gather(d, top)
        if not call.keepdim:
            top, values = top.squeeze(d), values.squeeze(d)
        kind = torch.return_types.max if call.name == "max" else torch.return_types.min
        return kind((values, top))


class _CompareSite(_Site):
    """``p > q`` (or ``>=``, ``<``, ``<=``) with the scores on one side or both: one comparison
    per element of the (broadcast) output; the best output from a 0/1 tensor of the target of
    that shape, or from probing."""

    def __init__(self, call: _Call, index: int, best_out: Tensor) -> None:
        self.call, self.index = call, index
        self.shape = call.out_shape
        self.num_bits = math.prod(self.shape)
        self.best_bits = (best_out.reshape(-1) != 0) ^ call.negate

    def comparisons(self) -> Tensor:
        call = self.call
        plus, minus = call.plus, call.minus
        plus = plus.to(call.dtype) if isinstance(plus, Tensor) else plus
        minus = minus.to(call.dtype) if isinstance(minus, Tensor) else minus
        return (plus - minus).broadcast_to(self.shape).reshape(-1)

    def best(self) -> Tensor:
        return self.best_bits

    def runs(self) -> Tensor:
        return torch.ones(self.num_bits, dtype=torch.long, device=self.best_bits.device)

    def width(self) -> int:
        return 1

    def num_runs(self) -> int:
        return self.num_bits

    def decode_zeros(self, zeros: Tensor) -> Tensor:
        return self.decode(zeros == 0)

    def decode(self, bits: Tensor) -> Tensor:
        out = bits ^ self.call.negate
        return out.reshape((bits.shape[0],) + self.shape)

    def hard_payload(self) -> Tensor:
        return self.call.out

    def format(self, payload: Tensor, x: Tensor) -> Tensor:
        return payload


# --------------------------------------------------------------------------- the decomposition


@dataclass
class _Trace:
    calls: List[_Call]
    value: Tensor
    trained: List[int]
    guards: Dict[int, str]
    aliases: Dict[int, int]  # a step repeated on the same tensor -> its first occurrence


def _operand_key(value: Any) -> Any:
    if isinstance(value, Tensor) and value.numel() != 1:
        return ("tensor", id(value))
    if isinstance(value, Tensor) and value.requires_grad:
        return ("tensor", id(value))
    return ("number", float(value))


def _step_key(call: _Call) -> tuple:
    """Steps with equal keys take the same decision on the same values (``s.argmax(1)`` twice)."""
    if call.kind == "compare":
        return ("compare", _operand_key(call.plus), _operand_key(call.minus), call.negate, call.out_shape)
    return (call.kind, call.name, id(call.base), call.sign, call.descending, call.dim, call.k, call.keepdim,
            call.flags, call.shape)


@dataclass
class _Plan:
    """What one loss call needs: the traced calls, the trained sites, the scores and target."""

    target: Any
    scores: Tensor
    trace: _Trace
    sites: List[_Site]
    offsets: List[int]
    num_bits: int
    run_lengths: Optional[Tensor] = None
    width: Optional[int] = None  # every run this long
    structured: bool = False  # every site decodes from its runs' 0-bit counts


class TracedMetric(Decomposition):
    r"""The decomposition :func:`uniloss.from_metric` returns: a metric written as plain torch
    code, its discrete steps found by tracing it (see :func:`uniloss.from_metric`).

    Args:
        fn: the metric, ``fn(scores, target) -> scalar tensor``.
        higher_is_better: the loss is ``-g~`` when true, ``g~`` otherwise.
        batched: how anchors are evaluated: ``"auto"`` (default: :func:`torch.func.vmap` over the
            anchors, falling back to one call of ``fn`` per anchor, with a warning, where vmap
            fails), ``"vmap"`` (raise instead of falling back) or ``"loop"``.
        probe_limit: most replays of ``fn`` per call spent on probing the best output of a step
            whose target holds no label for it (rows x classes for an argmax, elements for a
            comparison); above it a :class:`TraceError` is raised.

    Shapes: those ``fn`` takes; ``target`` may be a tensor, a tuple (named or not), a list or a
    dict of tensors; it is passed to ``fn`` as given.

    Example -- F1 at a threshold, with the comparisons of :func:`uniloss.zoo.f_beta`::

        >>> import torch, uniloss
        >>> def f1(scores, target):                            # scores [n], target [n] in {0, 1}
        ...     pred = torch.sigmoid(scores) > 0.5               # looked through: scores > 0
        ...     tp = (pred & (target == 1)).sum()
        ...     return 2 * tp / (pred.sum() + (target == 1).sum())
        >>> metric = uniloss.TracedMetric(f1)
        >>> scores, target = torch.tensor([1.0, -1.0, 2.0, 0.5]), torch.tensor([1, 1, 0, 1])
        >>> metric.comparisons(scores, target)
        tensor([ 1.0000, -1.0000,  2.0000,  0.5000])
        >>> round(float(metric.metric(scores, target)), 4)     # tp 2, fp 1, fn 1
        0.6667
    """

    def __init__(self, fn: Callable[[Tensor, Any], Tensor], *, higher_is_better: bool = True,
                 batched: str = "auto", probe_limit: int = 1 << 16) -> None:
        if not callable(fn):
            raise TypeError(f"Expected `fn` to be callable (scores, target) -> scalar tensor, but got {type(fn).__name__}")
        if isinstance(fn, torch.nn.Module) and hasattr(fn, "update") and hasattr(fn, "compute"):
            raise TypeError(
                f"Expected `fn` to be a stateless function (scores, target) -> scalar tensor, but got the stateful "
                f"metric object {type(fn).__name__}, which from_metric's replays would update: pass its functional "
                "form (e.g. torchmetrics.functional.classification.multiclass_accuracy)")
        if not isinstance(higher_is_better, bool):
            raise TypeError(f"Expected `higher_is_better` to be a bool, but got {type(higher_is_better).__name__}")
        if batched not in ("auto", "vmap", "loop"):
            raise ValueError(f"Expected `batched` to be 'auto', 'vmap' or 'loop', but got {batched!r}")
        self.fn = fn
        self.higher_is_better = higher_is_better
        self.batched = batched
        self.probe_limit = V.check_count("probe_limit", probe_limit)
        self._use_vmap = batched != "loop"
        self._decisions: Dict[tuple, dict] = {}

    def __repr__(self) -> str:
        name = getattr(getattr(self.fn, "func", self.fn), "__name__", type(self.fn).__name__)
        return f"from_metric({name}, higher_is_better={self.higher_is_better}, batched={self.batched!r})"

    # -- tracing
    def _run(self, scores: Tensor, target: Any, **replay) -> Tuple[Any, _Mode]:
        mode = _Mode(self.fn, scores, **replay)
        with mode:
            out = self.fn(scores, target)
        return out, mode

    def _fn_where(self) -> str:
        code = getattr(getattr(self.fn, "func", self.fn), "__code__", None)
        if code is None:
            return repr(self.fn)
        return f"fn {code.co_name} at {code.co_filename}:{code.co_firstlineno}"

    def _trace(self, scores: Tensor, target: Any) -> _Trace:
        out, mode = self._run(scores, target)
        if not isinstance(out, Tensor):
            raise TraceError(f"Expected `fn` to return a tensor, but it returned {type(out).__name__}. {_MANUAL}")
        if out.numel() != 1:
            raise TraceError(f"Expected `fn` to return a scalar tensor, but it returned shape {tuple(out.shape)}. "
                             f"{_MANUAL}")
        info = mode._get(out)
        calls = mode.calls

        def found() -> str:
            return ", ".join(c.describe() for c in calls if c.kind in ("rank", "compare")) or "none"

        if info is not None and info.score:
            raise TraceError(
                f"{self._fn_where()}: its value depends on the scores other than through comparisons (it returns "
                f"or sums score values: e.g. a loss, not a metric); discrete steps found: {found()}. {_MANUAL}")
        sites = set(info.sites) if info is not None else set()
        both = sorted(s for s in sites if s in mode.guards)
        if both:
            s = both[0]
            raise TraceError(
                f"fn reads the result of {calls[s].describe()} as a Python value (bool(), .item(), int()... at "
                f"{mode.guards[s]}) and also computes its value from it; Python control flow on the results of "
                f"discrete steps cannot be traced (use torch.where). {_MANUAL}")
        trained: List[int] = []
        aliases: Dict[int, int] = {}
        first: Dict[tuple, int] = {}
        for s in sorted(s for s in sites if calls[s].kind in ("rank", "compare")):
            mode.finish(calls[s])
            key = _step_key(calls[s])
            if key in first:
                aliases[s] = first[key]
            else:
                first[key] = s
                trained.append(s)
        if not trained:
            extra = ""
            if mode.guards:
                extra = (" fn reads discrete results as Python values (at "
                         f"{next(iter(mode.guards.values()))}), which cannot be traced; keep them tensors.")
            raise TraceError(
                f"{self._fn_where()}: its value does not depend on any discrete step on the scores that from_metric traces "
                f"(argmax, max/min over a dim, topk, sort, argsort, unique, >, <, >=, <=); found: {found()}.{extra} "
                f"{_MANUAL}")
        return _Trace(calls, out.detach().reshape(()), trained, mode.guards, aliases)

    # -- building the sites of one call
    def _build(self, plan: "_Plan", decision: dict) -> List[_Site]:
        tensors = _target_tensors(plan.target)
        return [self._site(plan, plan.trace.calls[i], i, tensors, decision.get(i, {})) for i in plan.trace.trained]

    def _site(self, plan: "_Plan", call: _Call, index: int, tensors: List[Tensor], choice: dict) -> _Site:
        mode = choice.get("mode", "auto")
        if call.kind == "compare":
            candidates = _binary_candidates(call, tensors)
            if mode != "probe" and candidates:
                return _CompareSite(call, index, candidates[choice.get("which", 0) % len(candidates)])
            return _CompareSite(call, index, self._probe_compare(plan, call, index))
        relevance = _relevance_candidates(call, tensors)
        if relevance and mode != "probe" and (call.name not in ("argmax", "argmin", "max", "min") or
                                               not _label_candidates(call, tensors)):
            return _RankSite(call, index, relevance[choice.get("which", 0) % len(relevance)],
                             orient=choice.get("orient", 1), pairs=choice.get("pairs", "relevance"))
        if call.name in ("argmax", "argmin", "max", "min", "topk"):
            labels = _label_candidates(call, tensors)
            if labels and mode != "probe":
                return _ClassSite(call, index, labels=labels[choice.get("which", 0) % len(labels)])
            if call.name != "topk":
                return _ClassSite(call, index, positive=self._probe_class(plan, call, index))
        raise TraceError(
            f"fn {'sorts' if call.name != 'topk' else 'takes the top k of'} the scores ({call.describe()}) but the "
            f"target holds no tensor to infer the best result from: a relevance per item of shape "
            f"{list(call.shape)} (>= 0, more relevant = higher score)"
            + (f" or a label per row of shape {list(_rows_shape(call))}" if call.name == "topk" else "")
            + f". {_MANUAL}")

    # -- probing the best output of a step from fn itself
    def _probe_budget(self, count: int, call: _Call, what: str) -> None:
        if count > self.probe_limit:
            raise TraceError(
                f"the best output of fn's {call.describe()} is not in the target (no tensor of the target has "
                f"its shape, or probing fn showed that the one found is not its best output), and probing it "
                f"costs {count} replays of fn per call ({what}), above probe_limit={self.probe_limit}. Put the "
                f"desired output in the target (a label per row, or a 0/1 tensor) or raise probe_limit. {_MANUAL}")

    def _probe_class(self, plan: "_Plan", call: _Call, index: int) -> Tensor:
        """``[N, C]`` bool: for each row, the outputs that give the best value with every other
        output held at its current one."""
        hard = _out_indices(call)
        rows_shape = _rows_shape(call)
        hard = hard.reshape(-1)
        n = hard.numel()
        c = call.shape[call.dim] if call.dim is not None else math.prod(call.shape)
        self._probe_budget(n * c, call, f"{n} rows x {c} outputs")
        variants = hard.expand(n * c, n).clone()
        rows = torch.arange(n, device=hard.device).repeat_interleave(c)
        variants[torch.arange(n * c, device=hard.device), rows] = torch.arange(c, device=hard.device).repeat(n)
        site = _ProbeSite(call, index, "class")
        values = self._values(plan, {index: variants.reshape((n * c,) + rows_shape)}, {index: site})
        return _best_mask(values.reshape(n, c), self.higher_is_better)

    def _probe_compare(self, plan: "_Plan", call: _Call, index: int) -> Tensor:
        hard = call.out.reshape(-1)
        m = hard.numel()
        self._probe_budget(m + 1, call, f"{m} elements")
        variants = hard.expand(m + 1, m).clone()
        idx = torch.arange(m, device=hard.device)
        variants[idx, idx] = ~variants[idx, idx]
        site = _ProbeSite(call, index, "compare")
        values = self._values(plan, {index: variants.reshape((m + 1,) + call.out_shape)}, {index: site})
        flipped, current = values[:m], values[m]
        better = flipped > current if self.higher_is_better else flipped < current
        return torch.where(better & ~torch.isnan(flipped), ~hard, hard).reshape(call.out_shape)

    # -- evaluating configurations by replaying fn
    def _values(self, plan: "_Plan", payloads: Dict[int, Any], sites: Dict[int, _Site]) -> Tensor:
        """``fn`` replayed for ``t`` configurations: ``payloads`` maps a site to its decoded
        outputs ``[t, ...]``; other steps keep their traced results."""
        formatters = {i: s.format for i, s in sites.items()}
        scores, target, calls = plan.scores.detach(), plan.target, plan.trace.calls
        if plan.trace.aliases:
            payloads = dict(payloads)
            for alias, original in plan.trace.aliases.items():
                if original in payloads:
                    twin = copy.copy(sites[original])
                    twin.call, twin.index = calls[alias], alias
                    payloads[alias], formatters[alias] = payloads[original], twin.format
        leaves = [p for v in payloads.values() for p in (v if isinstance(v, tuple) else (v,))]
        t = leaves[0].shape[0] if leaves else 1

        def one(chosen):
            out, _ = self._run(scores, target, calls=calls, payloads=chosen, formatters=formatters,
                               vmapped=vmapped)
            if not isinstance(out, Tensor):
                out = torch.as_tensor(out)
            return out.reshape(())

        with torch.no_grad():
            if self._use_vmap:
                vmapped = True
                try:
                    batched = torch.func.vmap(one, chunk_size=4096 if t > 4096 else None)
                    if any(c.kind == "bincount" for c in calls):  # no batching rule: a slow fallback warns
                        with warnings.catch_warnings():
                            warnings.filterwarnings("ignore", message=".*batching rule.*")
                            values = batched(payloads)
                    else:
                        values = batched(payloads)
                    return values if values.is_floating_point() else values.float()
                except TraceError:
                    raise
                except Exception as exc:  # vmap raises RuntimeError, ValueError, TypeError...
                    if self.batched == "vmap":
                        raise TraceError(
                            f"fn cannot be batched over the anchors with torch.func.vmap ({type(exc).__name__}: "
                            f"{exc}); pass batched='loop' (one call of fn per anchor). {_MANUAL}") from exc
                    self._use_vmap = False
                    warnings.warn(
                        f"from_metric: fn cannot be batched over the anchors with torch.func.vmap "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); evaluating "
                        "one anchor at a time (slower). Data-dependent shapes (boolean indexing, nonzero), "
                        ".item() and in-place writes into tensors made before the discrete step stop vmap.",
                        stacklevel=4)
            vmapped = False
            rows = []
            for i in range(t):
                chosen = {k: (tuple(p[i] for p in v) if isinstance(v, tuple) else v[i]) for k, v in payloads.items()}
                rows.append(one(chosen))
            values = torch.stack(rows)
            return values if values.is_floating_point() else values.float()

    # -- Decomposition
    def check(self, scores: Tensor, target: Any) -> None:
        if isinstance(target, _Plan):
            return
        validate_scores(scores)

    def prepare(self, scores: Tensor, target: Any, generator: Optional[torch.Generator] = None) -> _Plan:
        if isinstance(target, _Plan):
            return target
        trace = self._trace(scores, target)
        plan = _Plan(target, scores, trace, [], [], 0)
        key = self._signature(trace, _target_tensors(target))
        decision = self._decisions.get(key)
        verified = decision is not None
        decision = dict(decision or {})
        sites = self._build(plan, decision)
        if not verified:
            sites, decision, done = self._verify(plan, sites, decision)
            if done:
                if len(self._decisions) >= 256:  # shapes that change every call: keep the cache bounded
                    self._decisions.clear()
                self._decisions[key] = decision
        return self._finish(plan, sites)

    def _finish(self, plan: _Plan, sites: List[_Site]) -> _Plan:
        offsets, total = [], 0
        for site in sites:
            offsets.append(total)
            total += site.num_bits
        plan.sites, plan.offsets, plan.num_bits = sites, offsets, total
        active = [s for s in sites if s.num_bits]
        widths = {s.width() for s in active}
        if len(widths) == 1 and None not in widths:
            plan.width = widths.pop()
        elif active:
            runs = [s.runs() for s in active]
            if all(r is not None for r in runs):
                plan.run_lengths = torch.cat([cast(Tensor, r).to(plan.scores.device) for r in runs])
        plan.structured = bool(active) and (plan.width is not None or plan.run_lengths is not None)
        return plan

    def _signature(self, trace: _Trace, tensors: List[Tensor]) -> tuple:
        shapes = tuple((tuple(t.shape), t.dtype) for t in tensors)
        return tuple((i, trace.calls[i].name, trace.calls[i].shape) for i in trace.trained) + shapes

    def _verify(self, plan: _Plan, sites: List[_Site], decision: dict):
        """First call of a new structure: check the best configuration inferred from the target
        against probes of fn, the rankings' orientation, and that replaying fn on the decoded
        outputs of the current scores gives fn's value. Returns ``(sites, decision, done)``;
        ``done`` is false when ties in the scores left the check undecided."""
        tensors = _target_tensors(plan.target)
        out_sites = list(sites)
        for pos, site in enumerate(sites):
            choice = dict(decision.get(site.index, {}))
            if isinstance(site, _ClassSite) and site.mode == "label" and site.call.k is None:
                if not self._spot_check_class(plan, site):
                    choice["mode"] = "probe"
                    out_sites[pos] = self._site(plan, site.call, site.index, tensors, choice)
            elif isinstance(site, _CompareSite) and _binary_candidates(site.call, tensors):
                if not self._spot_check_compare(plan, site):
                    choice["mode"] = "probe"
                    out_sites[pos] = self._site(plan, site.call, site.index, tensors, choice)
            elif isinstance(site, _RankSite):
                flipped = _RankSite(site.call, site.index, _relevance_candidates(site.call, tensors)[0], orient=-1,
                                    pairs=site.pairs)
                best = [s.decode(s.best()[None]) for s in (site, flipped)]
                values = self._values(plan, {site.index: _cat_payloads(best)}, {site.index: site})
                worse = values[0] < values[1] if self.higher_is_better else values[0] > values[1]
                if bool(worse):
                    choice["orient"] = -1
                    out_sites[pos] = flipped
            decision[site.index] = choice
        sites = out_sites
        # exactness on the current scores (undecided where comparisons tie)
        if any(bool((s.comparisons().detach() == 0).any()) for s in sites):
            return sites, decision, False
        for attempt in range(2):
            payloads = {s.index: s.decode((s.comparisons().detach() > 0)[None]) for s in sites}
            value = self._values(plan, payloads, {s.index: s for s in sites})[0]
            if _same(value, plan.trace.value):
                return sites, decision, True
            ranks = [p for p, s in enumerate(sites) if isinstance(s, _RankSite) and s.pairs != "all"]
            if attempt or not ranks:
                break
            for p in ranks:
                s = sites[p]
                decision[s.index] = dict(decision.get(s.index, {}), pairs="all")
                sites[p] = _RankSite(s.call, s.index, _relevance_candidates(s.call, tensors)[0],
                                     orient=decision[s.index].get("orient", 1), pairs="all")
        raise TraceError(
            f"replaying fn with its discrete steps ({', '.join(s.call.describe() for s in sites)}) decoded from "
            f"the comparisons of the scores gives {float(value):.6g}, but fn gives {float(plan.trace.value):.6g}: "
            f"fn's value depends on something the traced steps do not capture. {_MANUAL}")

    def _spot_check_class(self, plan: _Plan, site: "_ClassSite") -> bool:
        """For a few rows, every output: the label must be among the best ones."""
        hard = site.hard_payload().reshape(-1)
        labels = site.plan.labels
        n, c = hard.numel(), site.num_classes
        if n == 0 or c < 2:
            return True
        wrong = (hard != labels).nonzero().reshape(-1)
        rows = torch.cat([wrong, (hard == labels).nonzero().reshape(-1)])[:8]
        cols = torch.arange(0, c, max(1, -(-c // 256)), device=hard.device)  # at most 256 outputs a row
        r = rows.repeat_interleave(cols.numel())
        v = cols.repeat(rows.numel())
        variants = hard.expand(r.numel() + rows.numel(), n).clone()
        variants[torch.arange(r.numel(), device=hard.device), r] = v
        variants[r.numel() + torch.arange(rows.numel(), device=hard.device), rows] = labels[rows]
        probe = _ProbeSite(site.call, site.index, "class")
        values = self._values(plan, {site.index: variants.reshape((variants.shape[0],) + site.rows_shape)},
                              {site.index: probe})
        grid, at_label = values[: r.numel()].reshape(rows.numel(), -1), values[r.numel():]
        best = grid.amax(1) if self.higher_is_better else grid.amin(1)
        return bool(_close_or_better(at_label, best, self.higher_is_better).all())

    def _spot_check_compare(self, plan: _Plan, site: "_CompareSite") -> bool:
        hard = site.call.out.reshape(-1)
        best_out = site.best_bits ^ site.call.negate
        m = hard.numel()
        differ = (hard != best_out).nonzero().reshape(-1)
        idx = torch.cat([differ, (hard == best_out).nonzero().reshape(-1)])[:32]
        k = idx.numel()
        if k == 0:
            return True
        variants = hard.expand(2 * k, m).clone()
        rows = torch.arange(k, device=hard.device)
        variants[rows, idx] = best_out[idx]
        variants[k + rows, idx] = ~best_out[idx]
        probe = _ProbeSite(site.call, site.index, "compare")
        values = self._values(plan, {site.index: variants.reshape((2 * k,) + site.shape)}, {site.index: probe})
        return bool(_close_or_better(values[:k], values[k:], self.higher_is_better).all())

    def _plan_of(self, scores: Tensor, plan: Any) -> _Plan:
        if isinstance(plan, _Plan) and scores is plan.scores:
            return plan
        if isinstance(plan, _Plan):
            fresh = self.prepare(scores, plan.target)
            if fresh.num_bits != plan.num_bits:
                raise ValueError(f"Expected the scores `prepare` saw: these give {fresh.num_bits} comparisons "
                                 f"where the plan holds {plan.num_bits}")
            return fresh
        return self.prepare(scores, plan)

    def comparisons(self, scores: Tensor, target: Any) -> Tensor:
        plan = self._plan_of(scores, target)
        parts = [s.comparisons().reshape(-1).to(scores.dtype) for s in plan.sites]
        if not parts:
            return scores.new_zeros(0)
        if torch.is_grad_enabled() and scores.requires_grad:
            for site, part in zip(plan.sites, parts):
                if part.numel() and not part.requires_grad:
                    raise TraceError(
                        f"fn computes the input of {site.call.describe()} without a gradient path to the scores "
                        f"(under torch.no_grad(), or from detached scores), so its comparisons cannot train. "
                        f"{_MANUAL}")
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def best(self, target: Any) -> Tensor:
        plan = self._prepared(target)
        parts = [s.best().reshape(-1) for s in plan.sites]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def segments(self, target: Any) -> Optional[Union[int, Tensor]]:
        plan = self._prepared(target)
        if not plan.structured:
            return None
        return plan.width if plan.width is not None else plan.run_lengths

    def evaluate(self, bits: Tensor, target: Any) -> Tensor:
        plan = self._prepared(target)
        payloads = {}
        for site, start in zip(plan.sites, plan.offsets):
            payloads[site.index] = site.decode(bits[:, start: start + site.num_bits])
        return self._values(plan, payloads, {s.index: s for s in plan.sites})

    def evaluate_zeros(self, zeros: Tensor, target: Any) -> Tensor:
        """Each site decodes from the 0-bit counts of its runs (``[t, S]``, sites in order), then
        ``fn`` is replayed as in :meth:`evaluate`."""
        plan = self._prepared(target)
        payloads, start = {}, 0
        for site in plan.sites:
            if not site.num_bits:
                payloads[site.index] = site.decode(zeros.new_zeros(zeros.shape[0], 0, dtype=torch.bool))
                continue
            count = site.num_runs()
            payloads[site.index] = site.decode_zeros(zeros[:, start: start + count])
            start += count
        return self._values(plan, payloads, {s.index: s for s in plan.sites})

    def _prepared(self, target: Any) -> _Plan:
        if not isinstance(target, _Plan):
            raise TypeError(
                "TracedMetric.best() and .evaluate() take the target returned by .prepare(scores, target), but "
                f"got {type(target).__name__}")
        return target

    def explain(self, scores: Tensor, target: Any) -> str:
        """A description of what tracing ``fn`` on these tensors found: each discrete step, where
        fn takes it, how it became comparisons, and the steps held at their current results.

        Example::

            >>> import torch, uniloss
            >>> acc = uniloss.from_metric(lambda s, y: (s.argmax(1) == y).float().mean())
            >>> print(acc.explain(torch.randn(4, 3), torch.tensor([0, 1, 2, 0])))  # doctest: +ELLIPSIS
            from_metric(<lambda>, ...): 8 comparisons
              argmax at ...: label per row (the target's), 2 comparisons per row (uniloss.decoders.Argmax(pairs='target'))
        """
        plan = self.prepare(scores, target)
        lines = [f"{self!r}: {plan.num_bits} comparisons"]
        for site in plan.sites:
            call = site.call
            if isinstance(site, _ClassSite) and site.mode == "label":
                how = (f"label per row (the target's), {site.num_classes - 1} comparisons per row "
                       "(uniloss.decoders.Argmax(pairs='target'))")
            elif isinstance(site, _ClassSite):
                how = (f"best outputs per row found by probing fn, every best output against every other: "
                       f"{site.num_bits} comparisons")
            elif isinstance(site, _RankSite):
                how = (f"ranking by the target's relevance, {site.num_bits} comparisons "
                       f"(uniloss.decoders.Ranking(pairs={site.pairs!r}))")
            else:
                how = f"one comparison per element, {site.num_bits} in all"
            lines.append(f"  {call.describe(short=True)}: {how}")
        trained = {s.index for s in plan.sites}
        calls = plan.trace.calls
        for i, call in enumerate(calls):
            if i in plan.trace.aliases:
                lines.append(f"  {call.describe(short=True)}: the same step as {calls[plan.trace.aliases[i]].name} "
                             "above (its comparisons, once)")
            elif i not in trained and call.kind in ("rank", "compare", "frozen"):
                lines.append(f"  {call.describe(short=True)}: held at its current result (not trained)")
        return "\n".join(lines)


class _ProbeSite(_Site):
    """Formats a probe's payload (labels or a bool mask) as the traced step's result."""

    def __init__(self, call: _Call, index: int, kind: str) -> None:
        self.call, self.index, self.kind = call, index, kind

    def format(self, payload: Tensor, x: Tensor) -> Any:
        if self.kind == "compare":
            return payload
        return _format_class(self.call, payload, x)


def _best_mask(values: Tensor, higher_is_better: bool) -> Tensor:
    """``[N, C]`` values -> bool mask of each row's best ones (a row of NaN: every output)."""
    filled = torch.nan_to_num(values, nan=float("-inf") if higher_is_better else float("inf"))
    top = filled.amax(1, keepdim=True) if higher_is_better else filled.amin(1, keepdim=True)
    tol = 1e-6 * top.abs().clamp_min(1.0)
    mask = (filled >= top - tol) if higher_is_better else (filled <= top + tol)
    return mask | torch.isnan(values).all(1, keepdim=True)


def _close_or_better(a: Tensor, b: Tensor, higher_is_better: bool) -> Tensor:
    tol = 1e-6 * torch.maximum(a.abs(), b.abs()).clamp_min(1.0)
    ok = a >= b - tol if higher_is_better else a <= b + tol
    return ok | (torch.isnan(a) & torch.isnan(b))


def _same(a: Tensor, b: Tensor) -> bool:
    a, b = a.double().cpu(), b.double().cpu()
    return bool(torch.allclose(a, b, atol=1e-6, rtol=1e-5, equal_nan=True))


def _cat_payloads(payloads: List[Any]) -> Any:
    if isinstance(payloads[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*payloads))
    return torch.cat(payloads)


def from_metric(fn: Callable[[Tensor, Any], Tensor], *, higher_is_better: bool = True, batched: str = "auto",
                probe_limit: int = 1 << 16) -> TracedMetric:
    r"""Any metric written as plain torch code, as a decomposition :class:`uniloss.UniLoss` trains with.

    ``fn(scores, target)`` returns the metric of a batch as a scalar tensor, computed with ordinary
    torch operations. Its discrete steps on the scores are found by tracing it on every loss call:

    * ``argmax``/``argmin``, ``max``/``min`` over a dim (``[n, C]``, ``[n, C, H, W]``, flattened
      heatmaps...): the target's label of each row against every other class
      (``decoders.Argmax(pairs="target")``, :class:`uniloss.MulticlassAccuracy`'s layout); without a
      label in the target, the best outputs of each row, found by probing ``fn``, against the
      others (:class:`uniloss.PCK`'s layout);
    * ``topk`` over classes: as ``argmax``, with a label per row;
    * ``sort``/``argsort``/``topk``/``unique`` of items with a relevance each (a tensor of the
      target shaped like the scores; more relevant = higher score): pairs of items of different
      relevance (``decoders.Ranking``, :class:`uniloss.AveragePrecision`'s layout for 0/1);
    * ``s > t``, ``s < t``, ``>=``, ``<=`` (``t`` a constant, a tensor of the target or other
      scores): one comparison per element; best, a 0/1 tensor of the target of the output's shape
      (or of its leading dimensions), else probing.

    Monotone maps before a step are looked through (``sigmoid(s) > 0.5`` is ``s > 0``;
    ``softmax(s, 1).argmax(1)`` is ``s.argmax(1)``), so the comparisons are in the scores' units. The
    anchors are evaluated by replaying ``fn`` with each step returning the outputs decoded from the
    anchor's bits, batched with :func:`torch.func.vmap` (or one call per anchor where ``fn`` cannot
    be vmapped: a warning says so once). Steps whose results only steer Python control flow
    (``if not torch.all((s >= 0) * (s <= 1)): s = s.sigmoid()``) and tie tests on sorted scores
    are held at their current results. On the first call of each input structure the inferred best
    configuration is checked against probes of ``fn``, and the replay on the current scores against
    ``fn`` itself.

    Exact: on untied scores ``metric(scores, target)`` equals ``fn(scores, target)``, and for the
    metrics above the bits are the hand-written decompositions' (``tests/test_from_metric.py``).
    Exact ties (and scores within rounding of a threshold seen through a ``sigmoid``) may differ.

    Args:
        fn: ``fn(scores, target) -> scalar tensor``; called once per loss call on the scores and
            once (vmapped) per evaluation of the anchors.
        higher_is_better: the loss is ``-g~`` when true, ``g~`` otherwise (``False`` for an error
            rate or a cost).
        batched: ``"auto"`` (default), ``"vmap"`` or ``"loop"``: see :class:`TracedMetric`.
        probe_limit: most replays of ``fn`` per call for probing (see :class:`TracedMetric`).

    Returns:
        A :class:`TracedMetric` (a :class:`uniloss.Decomposition`); :meth:`TracedMetric.explain`
        describes what was found.

    Raises:
        TraceError: when ``fn`` takes a step that cannot be traced (an operation that turns scores
            into integers other than the ones above, ``.item()`` on scores, Python control flow on a
            result that also feeds the value, a value that depends on the scores continuously),
            naming the operation and the line, and pointing to :class:`uniloss.DecodedMetric`.

    Shapes: those ``fn`` takes; ``target`` a tensor, a tuple, a list or a dict of tensors.

    Example -- accuracy written plainly, trained with UniLoss::

        >>> import torch, uniloss
        >>> def accuracy(scores, target):                     # scores [n, C], target [n]
        ...     return (scores.argmax(dim=1) == target).float().mean()
        >>> metric = uniloss.from_metric(accuracy)
        >>> scores = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]])
        >>> metric.metric(scores, torch.tensor([0, 1]))
        tensor(0.5000)
        >>> loss = uniloss.UniLoss(metric)(scores.requires_grad_(), torch.tensor([0, 1]))
        >>> loss.backward()
    """
    return TracedMetric(fn, higher_is_better=higher_is_better, batched=batched, probe_limit=probe_limit)
