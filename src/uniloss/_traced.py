r"""Any metric code as a decomposition: :func:`from_metric` traces the discrete steps of a metric.

A metric written as plain torch code, ``fn(scores, target) -> scalar``, takes its discrete steps on
the scores with a handful of operations: ``argmax``/``argmin``/``max``/``min`` over a dimension,
``topk``, ``sort``/``argsort``, ``unique`` (as sklearn-style tie handling does), comparisons of
scores with a constant or with each other (``>``, ``<``, ``>=``, ``<=``), ``torch.sign`` (two
comparisons with 0 per element), ``torch.round`` of a sigmoid's or a softmax's output (``p > 0.5``)
and ``torch.heaviside`` with a constant 0 or 1 (``x > 0``, ``x >= 0``). Everything after them is
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
compares ``s`` with 0, ``softmax(s).argmax(1)`` is ``s.argmax(1)``, a column of ``softmax(s, 1)``
ranked over the samples or thresholded is its one-vs-rest logits', of which it is the sigmoid), so
the comparisons are score differences in the scores' own units. What cannot be traced raises
:class:`TraceError` naming the operation and the line of ``fn``.

What makes it cheap (``benchmarks/from_metric_training.py``):

* **the tape** (:class:`_Recorder`, :class:`_Tape`): the trace also records the operations that
  depend on the discrete steps. The anchors are evaluated by replaying only those that the
  trained steps' outputs reach, everything else (argument checks, what ``fn`` computes from the
  scores or the target alone) held at its traced value; batched by hand over the anchors where
  every operation has a rule (:func:`_direct_rule`), else under vmap. The first calls of each
  structure compare the tape with ``fn`` replayed whole on the same configurations and keep the
  first way that agrees (``fn`` itself when none does).
* **the chain through sums** (:func:`_split_at_sums`): where the trained steps are comparisons
  (up to eight per element; a sign is two), or one argmax with a label per row (or with best
  outputs found by probing: PCK's pixels within reach of a keypoint) whose outputs reach
  ``fn``'s value only through elementwise operations, operations that move elements (reshapes,
  ``movedim``, indexing by constants, ``torch.stack``) and filters that keep the same elements at
  both ends of the chain, and then sums or counts (F-beta's, precision's and recall's counts,
  pooled or per label; ``count_nonzero``, ``any``, ``all``: subset accuracy; per-class counts of
  ``argmax == c``; ``bincount``: a confusion matrix), the chain's values come from each
  element's change and a cumulative sum, ``O(P C)`` for ``P`` points and sums of ``C``
  elements, instead of the tape replayed at every point (a comparison's mask: ``O(l^2)``; an
  argmax's rows, every one of them at each point, and beyond ``chain_elements`` fewer points,
  segment-averaged); checked against the tape at nine points of a chain on the first call of
  each structure. Where the code after the sums is elementwise in
  them, moves their elements and sums again (subset accuracy, F1 of each row's labels then their
  mean; a confusion matrix's diagonal and sums, then each class's IoU), those steps take the
  sums' changes too (:func:`_walks`, as far as :func:`_boundary` finds it pays): each point
  changes one row's sums, so the next sums take the rows' changes, not ``[P, n]`` rows.
* **the chain through a ranking** (:func:`_split_at_ranks`): where the one trained step is a
  ranking of one query with 0/1 relevance (``argsort``, ``sort``) read only as ``t[order]`` of a
  tensor that takes one value on the relevant items and one on the others, and then through
  elementwise operations, cumulative sums and moves of elements (slices, ``flip``, ``cat`` with
  constants: torchmetrics' precision-recall curve) into sums (AP, AUROC), each point of the chain
  swaps two neighbouring slots of what it reads, and a cumulative sum of the swap changes one
  element: every vector is held as its value at each change (:class:`_Events`, which the cut
  through sums also uses for its sums and the steps after them), and the chain's values take
  ``O(l log l)`` instead of the tape at every point's ``O(l n)``; checked against the tape at
  nine points as the cut through sums is. ``topk`` with a label per row takes the same path: a
  row's output changes only at its last ``k`` turns (:func:`_topk_changes`).
* **the re-run** (:class:`_Graph`, :class:`_Rerun`): the trace records every operation ``fn``
  runs, what its arguments are (numbers, and tensors as the operation that made them) and the
  shapes it returns. A later call with inputs of the same shapes runs ``fn`` under a mode that
  only checks each operation against that record and keeps what it returns; where ``fn`` takes
  the same operations on the same kinds of arguments (only tensor values differ) the discrete
  steps, their comparisons and the tape are the trace's with this run's tensors. A Python branch
  that goes the other way, another argument or another shape is traced again.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import importlib
import linecache
import math
import numbers
import operator
import os
import re
import sys
import warnings
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, cast

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from . import _validation as V
from ._decomposition import Decomposition, Structure, validate_scores
from ._limits import current_limits
from ._pairs import decode_sets, pair_differences, set_pairs, set_ranks
from .decoders import Argmax, Ranking, RankingTarget, ranked_others

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
        uniloss._traced.TraceError: fn applies `round` to the scores, a discrete step ... (it takes ... (at ...
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
_SIGN_OPS = {"sign", "sgn"}  # two comparisons with 0 per element (_SignSite)
_INPLACE_STEPS = {"sign_", "sgn_", "round_", "floor_", "ceil_", "trunc_", "fix_", "frac_", "heaviside_"}
# Maps of the scores into [0, 1], whose round is one comparison with 0.5 (_Mode._unit_step).
_PROBABILITY_OPS = {"sigmoid", "special_expit", "softmax", "special_softmax"}
_DISCRETE_FLOAT_OPS = {
    "round", "floor", "ceil", "trunc", "fix", "signbit", "heaviside", "frac",
    "floor_divide", "__floordiv__", "__rfloordiv__", "remainder", "fmod", "__mod__", "__rmod__",
    "bucketize", "searchsorted", "histc", "histogram", "kthvalue", "median", "nanmedian", "mode",
    "cummax", "cummin", "bincount",
}
_REWRITES = {  # how a discrete step from_metric does not know is written with comparisons it does
    "bucketize": " (write bucketize(x, b) as `(x[..., None] > b).sum(-1)`, or with `>=` for right=True: a "
                 "comparison with each boundary, counted)",
    "round": " (it takes the round of a sigmoid's or a softmax's output, as `p > 0.5`; write a rounded score in "
             "another known range [lo, hi] as `lo + (x[..., None] > torch.arange(lo, hi) + 0.5).sum(-1)`: a "
             "comparison with each half-way point)",
}
_REWRITES.update(searchsorted=_REWRITES["bucketize"])
_PYTHON_OPS = {"__bool__", "item", "tolist", "__int__", "__float__", "__index__", "numpy", "__array__",
               "__complex__", "__contains__"}
_CREATION_OPS = {"zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like",
                 "randint_like", "new_zeros", "new_ones", "new_empty", "new_full", "new_tensor"}
_INPLACE_DUNDER = {"__setitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__",
                   "__imod__", "__ipow__", "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__"}
_IDENTITY_OPS = {"clone", "detach", "data", "contiguous", "positive", "__pos__", "float", "double", "half",
                 "bfloat16", "to", "type_as"}  # (data: `torch.max(outputs.data, 1)`, as tutorials write accuracy)
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
_PARTIAL = {"log", "log2", "log10", "log1p", "sqrt"}  # increasing maps with NaN outside their domain
_AFFINE = {"add", "__add__", "__radd__", "sub", "__sub__", "subtract", "rsub", "__rsub__", "mul", "__mul__",
           "__rmul__", "multiply", "div", "__truediv__", "divide", "true_divide"}
_SOFTMAX = {"softmax", "log_softmax", "special_softmax", "special_log_softmax"}
_AFFINE_OPS = {"add", "sub", "rsub", "mul", "div"}  # the names _Mode._peel_info gives the affine maps
# Moves of a tensor's elements by constants, followed from a ranked tensor back to the scores' shape
# (_Mode._views) to line a target of that shape up with the ranked items.
_VIEWS = {"__getitem__", "select", "narrow", "transpose", "swapaxes", "swapdims", "t", "permute", "movedim",
          "moveaxis", "reshape", "view", "flatten", "ravel", "squeeze", "unsqueeze", "contiguous"}


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
    tensor, ``peel = (op, parent, constant)``; for a score tensor that moves another's elements
    by constants (a column ``s[:, i]``, a transpose), ``view = (parent, func, args, kwargs)``."""

    __slots__ = ("score", "sites", "peel", "view")

    def __init__(self, score: bool, sites: frozenset, peel: Optional[tuple] = None,
                 view: Optional[tuple] = None) -> None:
        self.score, self.sites, self.peel, self.view = score, sites, peel, view


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
    views: tuple = ()  # (shape, moves): how a tensor of that shape becomes x's shape (see _Mode._views)
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
    event: int = -1  # the index of the operation in fn's run (see _Mode.events)
    two_sided: bool = False  # torch.sign: output = [plus > minus] - [plus < minus] (two comparisons per element)
    out_dtype: Optional[torch.dtype] = None  # round, heaviside, sign: the output's dtype (round's 0., 1.), not bool

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


# --------------------------------------------------------------------------- the replay tape

# Python values an operation may return about a tensor without carrying its data (shapes,
# dtypes, flags): under vmap they are the same for every anchor as in the trace.
_META_TYPES = (bool, int, float, complex, str, type(None), torch.Size, torch.dtype, torch.device, torch.layout,
               torch.memory_format)
_MUTATES: Dict[Any, bool] = {}


def _mutates(func: Any, name: str) -> bool:
    """Whether ``func`` writes into its first argument (``add_``, ``x[i] = v``, ``x += y``)."""
    known = _MUTATES.get(func)
    if known is None:
        known = name in _INPLACE_DUNDER or (name[-1:] == "_" and name[:1] != "_") or name == "__set__"
        if len(_MUTATES) < 4096:
            _MUTATES[func] = known
    return known


def _storage(t: Tensor) -> int:
    try:
        return t.untyped_storage().data_ptr()
    except Exception:  # a tensor without storage (a subclass, a functional wrapper)
        return -1


class _Ref:
    """A tensor of the tape inside a container argument: the value of slot ``slot`` when the
    tape is replayed."""

    __slots__ = ("slot",)

    def __init__(self, slot: int) -> None:
        self.slot = slot


class _Step:
    """One operation of the tape. ``kind``: ``"op"`` (``func(*args, **kwargs)``), ``"inplace"``
    (``func`` writing into a copy of its first argument), ``"site"`` (the discrete step
    ``index``: the anchors' decoded outputs, formatted) or ``"bincount"`` (of discrete results).
    ``outs``: the slot of each tensor the step returns (``None`` for other values); ``fills``:
    ``(position, slot)`` of the arguments that are tensors of the tape; ``nested``: positions
    (ints) and keywords (strs) of containers holding some."""

    __slots__ = ("kind", "func", "args", "kwargs", "outs", "single", "fills", "nested", "index", "call", "rule",
                 "memo")

    def __init__(self, kind: str, func: Any, args: tuple, kwargs: Dict, outs: tuple, single: bool,
                 fills: List[Tuple[int, int]], nested: list, index: int = -1,
                 call: Optional["_Call"] = None) -> None:
        self.kind, self.func, self.args, self.kwargs, self.outs, self.single = kind, func, args, kwargs, outs, single
        self.fills, self.nested, self.index, self.call = fills, nested, index, call
        self.rule: Optional[tuple] = None  # how it runs on the anchors' batch by hand (see _direct_rule)
        # what the step's constant arguments decide, kept across the calls of one program (_events_move)
        self.memo: Optional[Dict[Any, Any]] = None


def _leaves(value: Any, kind: type):
    """The instances of ``kind`` inside ``value`` (lists, tuples, dicts, slices), at any depth."""
    if isinstance(value, kind):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _leaves(v, kind)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v, kind)
    elif isinstance(value, slice):
        yield from _leaves((value.start, value.stop, value.step), kind)


def _walk_tensors(value: Any):
    """The tensors inside ``value`` (containers, slices), at any depth."""
    return _leaves(value, Tensor)


_SAME_VALUES = {"reshape", "view", "flatten", "squeeze", "unsqueeze", "ravel", "view_as", "reshape_as", "to", "type",
                "type_as", "float", "double", "long", "int", "bool", "half", "contiguous", "clone", "detach"}


def _map_leaves(value: Any, kind: type, fn: Callable[[Any], Any], opaque: tuple = ()) -> Any:
    """``value`` with each instance of ``kind`` inside it (lists, tuples, dicts, slices, at any
    depth; not inside an ``opaque`` type) replaced by ``fn`` of it (a tuple comes back a tuple)."""
    if isinstance(value, kind):
        return fn(value)
    if isinstance(value, (list, tuple)) and not isinstance(value, opaque):
        items = [_map_leaves(v, kind, fn, opaque) for v in value]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, dict):
        return {k: _map_leaves(v, kind, fn, opaque) for k, v in value.items()}
    if isinstance(value, slice):
        return slice(*(_map_leaves(v, kind, fn, opaque) for v in (value.start, value.stop, value.step)))
    return value


def _realias(value: Any, to: Callable[[int], int]) -> Any:
    """A template with each :class:`_Ref`'s slot renumbered by ``to``."""
    return _map_leaves(value, _Ref, lambda ref: _Ref(to(ref.slot)))


def _key_of(value: Any) -> Any:
    """A hashable stand-in for an argument (tensors by identity), or raise TypeError."""
    if isinstance(value, Tensor):
        return ("tensor", id(value))
    if isinstance(value, (list, tuple)):
        return (type(value),) + tuple(_key_of(v) for v in value)
    if isinstance(value, dict):
        return (dict,) + tuple((k, _key_of(v)) for k, v in value.items())
    if isinstance(value, slice):
        return (slice, _key_of(value.start), _key_of(value.stop), _key_of(value.step))
    hash(value)
    return (type(value), value)


def _step_key_of(s: "_Step") -> Optional[tuple]:
    """Steps with equal keys compute the same thing: the same operation on the same slots and the
    same other arguments."""
    filled = dict(s.fills)
    try:
        args = tuple(("slot", filled[i]) if i in filled else _key_of(a) for i, a in enumerate(s.args))
        return (s.func, args, _key_of(s.kwargs))
    except TypeError:  # an argument without a stable key
        return None


def _reads(s: "_Step") -> List[int]:
    """The slots of the tape a step reads: its arguments' and those inside its containers."""
    return [slot for _, slot in s.fills] + [r.slot for _, t in s.nested for r in _refs(t)]


def _refs(value: Any):
    """The :class:`_Ref` inside a template."""
    return _leaves(value, _Ref)


def _fill(value: Any, env: List[Any]) -> Any:
    """A template with each :class:`_Ref` replaced by its slot's value in ``env``."""
    return _map_leaves(value, _Ref, lambda ref: env[ref.slot])


class _Recorder:
    """While ``fn`` is traced, records the operations that depend on its discrete steps, so that
    evaluating the anchors replays only those (a :class:`_Tape`) instead of all of ``fn``: its
    argument checks and what it computes from the scores or the target alone are the same for
    every anchor. Kept lean: it runs on every operation of every trace. ``off`` says why a tape
    cannot stand in for ``fn`` (a write into a tensor the tape holds, a result that is neither a
    tensor nor a Python scalar...)."""

    def __init__(self) -> None:
        self.slot_of: Dict[int, int] = {}
        self.tensors: List[Tensor] = []  # slot -> its tensor in the trace (kept alive: ids stay unique)
        self.steps: List[_Step] = []
        self.off: Optional[str] = None
        self.snapshots: Dict[int, int] = {}  # id of a copy taken before an operation wrote -> the operation
        self.guards: List[int] = []  # slots fn read as Python values (bool(), .item()...): checked at each point
        self.derived: set = set()  # ids of the tensors of operations recorded as their parts (not fn's own)
        self.unchecked: Optional[str] = None  # why a value fn read cannot be checked so
        # storage pointer -> the held tensors (slots, and the steps' arguments) on it, as of
        # (tensors, steps) seen: extended as they grow (both only grow; a stop empties the steps)
        self._held: Dict[int, List[Tensor]] = {}
        self._seen = (0, 0)

    def stop(self, why: str) -> None:
        if self.off is None:
            self.off = why
        self.steps = []

    def _new(self, t: Tensor) -> int:
        slot = len(self.tensors)
        self.tensors.append(t)
        self.slot_of[id(t)] = slot
        return slot

    def _holds_slot(self, value: Any) -> bool:
        slot_of = self.slot_of
        return any(id(t) in slot_of for t in _walk_tensors(value))

    def _inputs(self, args: Sequence, kwargs: Dict, start: int = 0) -> Tuple[List[Tuple[int, int]], list]:
        slot_of, fills, nested = self.slot_of, [], []
        for i in range(start, len(args)):
            a = args[i]
            if isinstance(a, Tensor):
                slot = slot_of.get(id(a))
                if slot is not None:
                    fills.append((i, slot))
            elif isinstance(a, (list, tuple, slice, dict)) and self._holds_slot(a):
                nested.append(i)
        if kwargs:
            for k, a in kwargs.items():
                if (isinstance(a, Tensor) and id(a) in slot_of) or (
                        isinstance(a, (list, tuple, slice, dict)) and self._holds_slot(a)):
                    nested.append(k)
        return fills, nested

    def _outputs(self, out: Any, name: str) -> Optional[Tuple[tuple, bool]]:
        if isinstance(out, Tensor):
            return (self._new(out),), True
        if isinstance(out, (tuple, list)):
            slots: List[Optional[int]] = []
            for o in out:
                if isinstance(o, Tensor):
                    slots.append(self._new(o))
                elif isinstance(o, _META_TYPES):
                    slots.append(None)
                else:
                    self.stop(f"`{name}` returns a {type(o).__name__}")
                    return None
            return tuple(slots), False
        if not isinstance(out, _META_TYPES):
            self.stop(f"`{name}` returns a {type(out).__name__}")
        return None

    def guard(self, name: str, tensors: List[Tensor]) -> None:
        """``fn`` reads tensors that depend on a discrete step as Python values (``bool()`` of an
        ``if``, ``.item()``): the tape keeps them, so that every configuration whose tensors there
        equal the trace's takes the trace's path, and the others replay ``fn`` itself."""
        if self.off is not None:
            return
        for t in tensors:
            slot = self.slot_of.get(id(t))
            if slot is None:
                self.unchecked = self.unchecked or f"`{name}` reads a tensor the tape does not compute"
            elif slot not in self.guards:
                self.guards.append(slot)

    def op(self, func: Any, name: str, args: Sequence, kwargs: Dict, out: Any) -> None:
        """An operation whose arguments depend on a discrete step."""
        if name in ("trapz", "trapezoid") and self._trapezoid(args, kwargs, out):
            return
        fills, nested = self._inputs(args, kwargs)
        made = self._outputs(out, name)
        if made is not None and self.off is None:
            self.steps.append(_Step("op", func, tuple(args), kwargs, made[0], made[1], fills, nested))

    def _trapezoid(self, args: Sequence, kwargs: Dict, out: Any) -> bool:
        """``trapz(y, x)`` of vectors recorded as what it computes, ``((x[1:] - x[:-1]) * (y[1:] +
        y[:-1]) / 2).sum()`` (``dx`` for ``x - x``): moves, elementwise operations and a sum,
        which the chain's cut through rankings takes (an ROC curve's area). Whether it did."""
        y = args[0] if args else None
        x = args[1] if len(args) > 1 else None
        dx = kwargs.get("dx", 1)
        if not isinstance(y, Tensor) or y.dim() != 1 or len(args) > 2 or set(kwargs) - {"dim", "dx"} or \
                kwargs.get("dim", -1) not in (-1, 0) or not isinstance(out, Tensor) or out.dim() != 0 or \
                (x is not None and (not isinstance(x, Tensor) or x.shape != y.shape or "dx" in kwargs)) or \
                not isinstance(dx, (int, float)) or y.numel() < 2 or not y.is_floating_point():
            return False
        getitem = Tensor.__getitem__

        def record(func: Any, name: str, operands: tuple, value: Tensor) -> Tensor:
            self.op(func, name, operands, {}, value)
            self.derived.add(id(value))
            return value

        after, before = slice(1, None), slice(None, -1)
        heights = record(torch.add, "add", (record(getitem, "__getitem__", (y, after), y[after]),
                                            record(getitem, "__getitem__", (y, before), y[before])), y[after] + y[:-1])
        if x is not None:
            x1 = record(getitem, "__getitem__", (x, after), x[after])
            x0 = record(getitem, "__getitem__", (x, before), x[before])
            widths: Any = record(torch.sub, "sub", (x1, x0), x1 - x0)
        else:
            widths = dx
        areas = record(torch.mul, "mul", (heights, widths), heights * widths)
        halves = record(torch.mul, "mul", (areas, 0.5), areas * 0.5)
        self.op(torch.sum, "sum", (halves,), {}, out)  # the trapezoid's own result: later steps read it
        return True

    def site(self, index: int, call: "_Call", out: Any) -> None:
        """Discrete step ``index``: the anchors' decoded outputs stand in for what it returned."""
        if self.off is None:
            made = self._outputs(out, call.name)
            if made is not None and self.off is None:
                self.steps.append(_Step("site", None, (), {}, made[0], made[1], [], [], index=index, call=call))

    def bincount(self, index: int, call: "_Call", args: Sequence, kwargs: Dict, out: Tensor) -> None:
        if self.off is None:
            pair = (args[0], _arg(args, kwargs, 1, "weights", None))
            fills, nested = self._inputs(pair, {})
            self.steps.append(_Step("bincount", None, pair, {}, (self._new(out),), True, fills, nested,
                                    index=index, call=call))

    def _shares(self, t: Tensor, but: Optional[Tensor] = None) -> bool:
        """Whether a tensor the steps hold (other than ``but`` itself) shares ``t``'s memory. The
        held tensors are indexed by storage as they come (:meth:`_held_storages`): a loop of
        ``fn`` that writes on every pass costs the writes, not the writes times the tape."""
        ptr = _storage(t)
        if ptr == 0:  # no elements: nothing to write
            return False
        return ptr == -1 or any(h is not but for h in self._held_storages().get(ptr, ()))

    def _held_storages(self) -> Dict[int, List[Tensor]]:
        """Storage pointer -> the tensors the tape holds on it (slots and the steps' arguments)."""
        tensors, steps = self._seen
        if steps > len(self.steps):  # (a stop emptied the steps: from the start)
            self._held, tensors, steps = {}, 0, 0
        held = self._held
        for h in self.tensors[tensors:]:
            held.setdefault(_storage(h), []).append(h)
        for step in self.steps[steps:]:
            for h in _walk_tensors((step.args, step.kwargs)):
                held.setdefault(_storage(h), []).append(h)
        self._seen = (len(self.tensors), len(self.steps))
        return held

    def write(self, name: str, args: Sequence, kwargs: Dict, recorded: bool, event: int = -1) -> Optional[Tensor]:
        """Before ``func`` writes into ``args[0]``: whether the tape can follow. ``recorded``: the
        write depends on a discrete step (it becomes an ``"inplace"`` step); otherwise the tape
        must not hold the tensor at all. Returns a snapshot of a constant about to be written."""
        if self.off is not None or not (recorded or self.steps):
            return None
        if kwargs.get("out") is not None:
            self.stop(f"`{name}` writes into `out=`")
            return None
        target = args[0] if args and isinstance(args[0], Tensor) else None
        if target is None:
            self.stop(f"`{name}` writes into something other than its first argument")
            return None
        slot = self.slot_of.get(id(target))
        if not recorded:
            if self._shares(target):
                self.stop(f"`{name}` writes into a tensor the replay reads")
            return None
        if self._shares(target, but=target if slot is not None else None):
            self.stop(f"`{name}` writes into a tensor that shares memory with another one the replay reads")
            return None
        if slot is not None:
            return None
        before = target.clone()
        self.snapshots[id(before)] = event  # a re-run of fn copies the tensor before this operation too
        return before

    def inplace(self, func: Any, name: str, args: Sequence, kwargs: Dict, before: Optional[Tensor]) -> None:
        """After a write into ``args[0]`` that depends on a discrete step: replayed on a copy."""
        if self.off is not None:
            return
        target = args[0]
        slot = self.slot_of.get(id(target))
        fills, nested = self._inputs(args, kwargs, start=1)
        if slot is None:  # a constant written with values of the tape: from its snapshot
            args = (before,) + tuple(args[1:])
            slot = self._new(target)
        else:
            fills.insert(0, (0, slot))
        self.steps.append(_Step("inplace", func, tuple(args), kwargs, (slot,), True, fills, nested))

    def compile(self, out: Tensor, active: set) -> Optional["_Tape"]:
        """The steps ``fn``'s value ``out`` needs, given the discrete steps ``active`` (trained,
        or aliases of trained ones) whose outputs change with the anchors; ``None`` without a
        tape."""
        if self.off is not None:
            return None
        out_slot = self.slot_of.get(id(out))
        if out_slot is None:
            return None
        slot_of = self.slot_of
        written = {s.outs[0] for s in self.steps if s.kind == "inplace"}
        live = [False] * len(self.tensors)
        kept = []
        for s in self.steps:
            if s.kind == "site":
                on = s.index in active
            else:
                on = any(live[slot] for _, slot in s.fills) or bool(written and written.intersection(s.outs))
                for where in s.nested:
                    value = s.args[where] if isinstance(where, int) else s.kwargs[where]
                    on = on or any(live[slot_of[id(t)]] for t in _walk_tensors(value) if id(t) in slot_of)
            if on:
                for o in s.outs:
                    if o is not None:
                        live[o] = True
                kept.append(s)
        if not live[out_slot]:
            return None
        guards = [g for g in self.guards if live[g]]  # the others do not change with the anchors
        if written.intersection(guards):  # the tape holds the value after the write, not the one read
            self.unchecked = self.unchecked or "fn writes in place into a tensor it read as a Python value"
        needed, program = {out_slot, *guards}, []
        for s in reversed(kept):
            if any(o in needed for o in s.outs if o is not None):
                program.append(s)
                needed.update(slot for _, slot in s.fills if live[slot])
                for where in s.nested:
                    value = s.args[where] if isinstance(where, int) else s.kwargs[where]
                    needed.update(slot_of[id(t)] for t in _walk_tensors(value) if id(t) in slot_of)
        program.reverse()
        direct = True
        for s in program:  # slots that do not change with the anchors stay their traced tensors
            s.fills = [(i, slot) for i, slot in s.fills if live[slot]]
            if s.nested:
                templates = [(where, self._template(s.args[where] if isinstance(where, int) else s.kwargs[where],
                                                    live)) for where in s.nested]
                s.nested = [(where, t) for where, t in templates if any(isinstance(v, _Ref) for v in _refs(t))]
            s.rule = _direct_rule(s, self.tensors.__getitem__)
            direct = direct and s.rule is not None
        program, (out_slot, *guards) = self._simplify(program, [out_slot, *guards])
        return _Tape(program, self.tensors, out_slot, direct, guards=list(dict.fromkeys(guards)))

    def _simplify(self, program: List[_Step], slots: List[int]) -> Tuple[List[_Step], List[int]]:
        """Drop the steps that return their input unchanged (a reshape to the same shape, a cast
        to the same dtype) and those that repeat an earlier one on the same arguments (``tp * 2``
        computed twice): their results alias the earlier slots. Returns the steps kept and ``slots``
        (the value's, the guards') as the slots that now hold them."""
        alias: Dict[int, int] = {}

        def to(slot: int) -> int:
            while slot in alias:
                slot = alias[slot]
            return slot

        seen: Dict[tuple, int] = {}
        kept = []
        written = {s.outs[0] for s in program if s.kind == "inplace"}  # slots with several versions
        for s in program:
            s.fills = [(i, to(slot)) for i, slot in s.fills]
            if s.nested:
                s.nested = [(where, _realias(t, to)) for where, t in s.nested]
            elif s.kind == "op" and s.single and s.outs[0] not in written and \
                    not any(slot in written for _, slot in s.fills):
                out = self.tensors[s.outs[0]]
                if len(s.fills) == 1 and s.fills[0][0] == 0 and _op_name(s.func) in _SAME_VALUES:
                    x = self.tensors[s.fills[0][1]]
                    if x.shape == out.shape and x.dtype == out.dtype:
                        alias[s.outs[0]] = s.fills[0][1]
                        continue
                key = _step_key_of(s)
                if key is not None:
                    if key in seen:
                        alias[s.outs[0]] = seen[key]
                        continue
                    seen[key] = s.outs[0]
            kept.append(s)
        return kept, [to(slot) for slot in slots]

    def _template(self, value: Any, live: List[bool]) -> Any:
        """``value`` with the tensors the anchors change replaced by a :class:`_Ref` to their slot."""
        if isinstance(value, Tensor):
            slot = self.slot_of.get(id(value))
            return _Ref(slot) if slot is not None and live[slot] else value
        if isinstance(value, (list, tuple)):
            items = [self._template(v, live) for v in value]
            return items if isinstance(value, list) else tuple(items)
        if isinstance(value, dict):
            return {k: self._template(v, live) for k, v in value.items()}
        if isinstance(value, slice):
            return slice(self._template(value.start, live), self._template(value.stop, live),
                         self._template(value.step, live))
        return value


class _Tape:
    """The part of ``fn`` downstream of its trained discrete steps, as recorded in the trace:
    replayed on the anchors' decoded outputs (under :func:`torch.func.vmap`), with everything
    else held at its traced value."""

    def __init__(self, steps: List[_Step], traced: List[Tensor], out: int, direct: bool,
                 guards: Sequence[int] = ()) -> None:
        self.steps, self.traced, self.num_slots, self.out = steps, traced, len(traced), out
        self.direct = direct  # every step has a rule to run on the anchors' batch by hand
        self.guards = list(guards)  # slots fn reads as Python values: the trace's path holds where they do
        self._readers: Optional[collections.Counter] = None  # how many steps read each slot (readers())

    def __len__(self) -> int:
        return len(self.steps)

    def readers(self, slot: int) -> int:
        """How many times the steps read ``slot`` (counted once per tape)."""
        if self._readers is None:
            self._readers = collections.Counter(r for s in self.steps for r in _reads(s))
        return self._readers[slot]

    def _inputs(self, s: _Step, env: List[Any]) -> Tuple[Any, Dict]:
        kwargs = s.kwargs
        if not (s.fills or s.nested):
            return s.args, kwargs
        args = list(s.args)
        for i, slot in s.fills:
            args[i] = env[slot]
        for where, value in s.nested:
            if isinstance(where, int):
                args[where] = _fill(value, env)
            else:
                kwargs = dict(kwargs)
                kwargs[where] = _fill(value, env)
        return args, kwargs

    def run_direct(self, payloads: Dict[int, Any], formatters: Dict[int, Any], batch: int,
                   check: bool = False) -> Tensor:
        """The value for each of ``batch`` configurations at once, without vmap: ``payloads`` and
        the tensors the anchors change hold a leading anchor dimension (``formatters``: each
        site's ``format_batched``). ``check``: raise where a step's result is not the trace's
        shape and dtype under the anchor dimension. With guards, ``[batch]`` booleans follow: the
        configurations at which every guard holds its traced value (see :meth:`held`)."""
        env: List[Any] = [None] * self.num_slots
        for s in self.steps:
            rule = cast(tuple, s.rule)
            if s.kind == "site":
                call = cast(_Call, s.call)
                if s.index in payloads:
                    result = formatters[s.index](payloads[s.index], call.x)
                elif isinstance(call.out, Tensor):
                    result = _lead(call.out, batch)
                else:
                    result = type(call.out)(tuple(_lead(o, batch) for o in call.out))
            else:
                args, kwargs = self._inputs(s, env)
                result = _run_direct(s, rule, list(args), kwargs, batch)
            outs = (result,) if s.single else result
            for slot, value in zip(s.outs, outs):
                if slot is not None:
                    if check:
                        ref = self.traced[slot]
                        if not isinstance(value, Tensor) or value.dtype != ref.dtype or \
                                tuple(value.shape) != (batch,) + tuple(ref.shape):
                            raise RuntimeError(f"step {_op_name(s.func) if s.func else s.kind} gave "
                                               f"{getattr(value, 'shape', type(value))} for {tuple(ref.shape)}")
                    env[slot] = value
        out = env[self.out].reshape(batch)
        if self.guards:
            return out, self.held([env[g] for g in self.guards], batch)  # type: ignore[return-value]
        return out

    def held(self, values: List[Tensor], batch: int) -> Tensor:
        """``[batch]``: where each guard's value (``values``, ``[batch, ...]``) equals the trace's,
        so that ``fn`` took the trace's path there."""
        same = torch.ones(batch, dtype=torch.bool, device=values[0].device if values else None)
        for g, v in zip(self.guards, values):
            ref = self.traced[g]
            v = v.reshape((batch,) + tuple(ref.shape))
            eq = v == ref
            if ref.is_floating_point() or ref.is_complex():
                eq = eq | (v.isnan() & ref.isnan())
            same = same & eq.reshape(batch, -1).all(1)
        return same

    def run(self, payloads: Dict[int, Any], formatters: Dict[int, Any]) -> Tensor:
        """One configuration's value (vmapped over the anchors): ``formatters``, each site's
        ``format``."""
        env: List[Any] = [None] * self.num_slots
        for s in self.steps:
            if s.kind == "site":
                call = cast(_Call, s.call)
                result = formatters[s.index](payloads[s.index], call.x) if s.index in payloads else call.out
            else:
                args, kwargs = self._inputs(s, env)
                if s.kind == "op":
                    result = s.func(*args, **kwargs)
                elif s.kind == "inplace":
                    result = args[0].clone()
                    s.func(result, *args[1:], **kwargs)
                else:  # bincount: a scatter-add of the traced output's size (bincount has no batching rule)
                    x, weights = args
                    ref = cast(_Call, s.call).out
                    src = torch.ones_like(x, dtype=ref.dtype) if weights is None else weights.to(ref.dtype)
                    result = torch.zeros(ref.shape, dtype=ref.dtype, device=ref.device).scatter_add(0, x.long(), src)
            if s.single:
                env[s.outs[0]] = result
            else:
                for slot, value in zip(s.outs, result):
                    if slot is not None:
                        env[slot] = value
        out = env[self.out]
        out = out if isinstance(out, Tensor) else torch.as_tensor(out)
        if self.guards:  # with the guards' values (the caller compares them: see held)
            return (out, *[env[g] for g in self.guards])  # type: ignore[return-value]
        return out


# --------------------------------------------------------------------------- the chain through sums

# The chain of ``interpolation="chain"`` walks the configurations of the comparisons from all
# wrong to all right; replaying the tape at each point costs a pass over the step's output. Where
# the trained steps' outputs (comparisons' masks and signs, each element following at most one
# element of each; one argmax's labels with a label per row) reach fn's value only through
# elementwise operations and then sums (the counts of F-beta, precision, recall:
# ``(pred & pos).sum(0)``; per-class counts ``(pred == c).sum()``; a confusion matrix by
# ``bincount``), every point's sums follow from the previous point's: an element that
# takes its best value (a comparison; a row whose run of comparisons is whole) changes its own
# terms alone. The tape is then split there (:func:`_split_at_sums`): its elementwise part runs on
# the two ends (every element at its best value, every one at its value with every comparison
# wrong), the sums take the per-element changes in the chain's order (a cumulative sum), and the
# rest runs on the points' sums. Counts of the same kind: ``count_nonzero``, ``any``/``all`` (a
# count of nonzero/zero elements above zero/at zero), ``bincount`` (an element moves from the count
# of one value to another's). Between the output and the sums, operations that only move elements
# (reshapes, ``permute``, ``movedim``, ``expand``, indexing by constants, ``torch.stack``/``cat``: a
# pixel's x and y) and ``one_hot`` are followed too: each slot keeps which output element each of
# its elements follows. Where those sums are per row (``[n]``) and the rest takes them
# elementwise into sums again (``.all(1).float().mean()``; each row's F1, then their mean), the
# ``[P, n]`` sums at every point would be quadratic again; the steps after them then take their
# changes (:func:`_walks`): the elements that change are the (row, point) pairs at which a row's
# sum changes, each step the operation on the values there.
# Where fn's Python branches on its trained steps take other paths at many configurations than
# the trace's (TracedMetric._other_paths): fn traced again at one of them, up to this many times a
# call, when at least this many are left.
_OTHER_TRACES = 3
_OTHER_MIN = 4
_OTHER_WARN = 64  # more configurations than this replayed one at a time: said once (with a tape too)
# Paths through fn's branches on the numbers it reads with .item() that one call follows batched,
# each in one replay (TracedMetric._number_values), while each gives at least _OTHER_MIN
# configurations; configurations on the others replay fn one at a time
_NUMBER_PATHS = 16
_SUMS = {"sum", "mean", "count_nonzero", "any", "all"}
_NEST = 1.0  # the weight of a step after the sums taken on their changes (0: every one it can; inf: none)
_STEP = 1 << 14  # such a step costs about this many elements of values at every point, and 4 more a change


@dataclass
class _SumSplit:
    """A tape cut at the sums of trained steps' outputs: ``sources``, the slots of the outputs (each
    site and its repeats), ``track`` the step (its place in the tracks given) each holds and
    ``numels`` each track's elements; ``elementwise``, the steps whose every element follows at
    most one element of each output; ``sums``, the sums and counts of those; ``rest``, the steps
    after; ``source_of``, which element of each track's output each element of those steps'
    results follows (``[K, *shape]``, ``-1`` where none); ``elements``, how many elements the sums
    take; ``walk``, how many
    of ``rest``'s first steps the sums' changes can be taken through (:func:`_walks`: a sum per
    row, then each row's F1, then their mean; a confusion matrix, its diagonal and sums, each
    class's IoU, their mean); ``widths[b]``, the elements of the tensors held as changes that
    ``rest[b:]`` reads, which run on their values at every point from step ``b`` on."""

    sources: List[int]
    elementwise: List[_Step]
    sums: List[_Step]
    rest: List[_Step]
    source_of: Dict[int, Tensor]  # slot -> [K, *its shape]: the element of each output each of its elements follows
    track: Dict[int, int] = dataclasses.field(default_factory=dict)  # source slot -> its track
    numels: List[int] = dataclasses.field(default_factory=list)
    elements: int = 0
    walk: int = 0
    widths: List[int] = dataclasses.field(default_factory=list)


_TRACKS = 8  # the most comparisons an element of a cut through sums follows (2^8 configurations of each)
_STEPS = 64  # the most trained steps a cut through sums follows


def _split_at_sums(tape: _Tape, tracks: Sequence[Tuple[set, int]], others: bool = False) -> Optional[_SumSplit]:
    """:class:`_SumSplit` of a tape batched by hand whose trained steps are comparisons (or one
    argmax): ``tracks``, each step's indices (the site and its repeats) and elements of output
    (with ``others``, every other step of the tape a track of its own, held where probes change
    one), or ``None`` where an output reaches the value any other way. Each slot between the
    outputs and the sums keeps which element of each output each of its elements follows
    (``source_of``): elementwise operations keep it (their inputs following the same elements of
    the outputs they follow), operations that move elements (reshapes, ``permute``, ``movedim``,
    ``expand``, indexing by constants, ``torch.stack``/``cat``) move it, ``one_hot`` repeats it
    along its classes; ``bincount`` counts as a sum."""
    source_of: Dict[int, Tensor] = {}  # slot -> [K, *its shape]: the element of each output each element follows
    split = _SumSplit([], [], [], [], source_of)
    groups = [set(indices) for indices, _ in tracks]
    split.numels = [numel for _, numel in tracks]
    sites = [s for s in tape.steps if s.kind == "site"]
    for s in sites:
        if not s.single:
            return None
        if others and not any(s.index in g for g in groups):
            groups.append({s.index})
            split.numels.append(tape.traced[cast(int, s.outs[0])].numel())
    if len(groups) > _STEPS:
        return None
    for s in tape.steps:
        if s.kind == "site":
            made = tape.traced[cast(int, s.outs[0])]
            k = next((k for k, g in enumerate(groups) if s.index in g), None)
            if k is None or made.numel() != split.numels[k]:
                return None
            ids = torch.arange(made.numel(), device=made.device).reshape((1,) + tuple(made.shape))
            if len(groups) > 1:
                ids = torch.cat([ids.new_full(ids.shape, -1)] * k + [ids] + [ids.new_full(ids.shape, -1)] *
                                (len(groups) - k - 1))
            split.sources.append(cast(int, s.outs[0]))
            split.track[cast(int, s.outs[0])] = k
            source_of[cast(int, s.outs[0])] = ids
            continue
        reads = _reads(s)
        if s.rule is None or not reads:
            return None
        inside = [slot in source_of for slot in reads]
        if not any(inside):
            split.rest.append(s)
            continue
        out = tape.traced[s.outs[0]] if s.single and s.outs[0] is not None else None
        if not all(inside) or out is None or out.is_complex() or s.outs[0] in source_of and s.kind != "inplace":
            return None
        if _is_sum(s):
            split.sums.append(s)
            continue
        follows = _follows(s, tape, source_of, reads, out)
        if follows is None:
            return None
        source_of[cast(int, s.outs[0])] = follows
        split.elementwise.append(s)
    outs = {cast(int, s.outs[0]) for s in split.sums}
    if not split.sources or not split.sums or tape.out in source_of or outs & set(source_of):
        return None
    split.elements = sum(tape.traced[s.fills[0][1]].numel() * (2 if s.kind == "bincount" else 1)
                         for s in split.sums)
    _walks(tape, split)
    return split


def _follows(s: _Step, tape: _Tape, source_of: Dict[int, Tensor], reads: List[int], out: Tensor) -> Optional[Tensor]:
    """Which element of each trained step's output each element of ``s``'s result follows
    (``[K, *out.shape]``, ``-1`` where none), where each follows at most one of each; else
    ``None``."""
    kind, name = cast(tuple, s.rule)[0], _op_name(s.func) if s.func is not None else ""
    if kind == "ew" and not s.nested:  # the inputs from one output follow the same element of it at each place
        num = source_of[reads[0]].shape[0]
        try:
            maps = [torch.broadcast_to(source_of[slot], (num,) + tuple(out.shape)) for slot in reads]
        except RuntimeError:
            return None
        if num == 1 or all(m is maps[0] for m in maps[1:]):  # (one output: every element follows it)
            return maps[0] if all(m is maps[0] or torch.equal(m, maps[0]) for m in maps[1:]) else None
        both = torch.stack(maps).amax(0)
        return both if all(bool(((m == both) | (m < 0)).all()) for m in maps) else None
    if s.kind != "op":
        return None
    if kind == "mask" and [i for i, _ in s.fills] == [0, 1]:  # a boolean mask from the output: the same at both
        return source_of[reads[0]][:, tape.traced[reads[1]]]  # ends of the chain, so at every point (else it raises)
    if kind == "same" and name == "one_hot" and not s.nested and out.dim() >= 1:
        follows = source_of[reads[0]]
        return follows[..., None].expand(tuple(follows.shape) + (out.shape[-1],))
    items = s.nested[0][1] if kind == "cat" and [w for w, _ in s.nested] == [0] else None
    if isinstance(items, (list, tuple)) and all(isinstance(v, _Ref) for v in items) or \
            name in _MOVES and [i for i, _ in s.fills] == [0] and not s.nested:
        tracks = []
        for k in range(source_of[reads[0]].shape[0]):
            try:  # the operation itself on the elements' indices, those of each output in turn
                args, kwargs = tape._inputs(s, _source_env(source_of, tape.num_slots, k))
                follows = s.func(*args, **kwargs)
            except Exception:
                return None
            if not (isinstance(follows, Tensor) and tuple(follows.shape) == tuple(out.shape) and
                    follows.dtype == torch.int64):
                return None
            tracks.append(follows)
        return torch.stack(tracks)
    return None


def _source_env(source_of: Dict[int, Tensor], num_slots: int, track: int) -> List[Any]:
    """The tape's slots holding, where known, which element of output ``track`` each element
    follows."""
    env: List[Any] = [None] * num_slots
    for slot, follows in source_of.items():
        env[slot] = follows[track]
    return env


def _is_sum(s: _Step) -> bool:
    return (s.rule is not None and s.rule[0] in ("reduce", "reduce_all") and _op_name(s.func) in _SUMS or
            s.kind == "bincount" and s.args[1] is None) and [i for i, _ in s.fills] == [0]


def _walks(tape: _Tape, split: _SumSplit) -> None:
    """``split.walk`` and ``split.widths``: the first steps after the sums that their changes can
    be taken through (:func:`_takes`), and at each of those steps the elements of the held
    tensors that the steps from there on read (and ``fn``'s value, where it is one of them)."""
    held = {cast(int, s.outs[0]) for s in split.sums}
    walk = 0
    for s in split.rest:
        if not _takes(s, tape, held):
            break
        held.add(cast(int, s.outs[0]))
        walk += 1
    later = {tape.out}.union(*(_reads(s) for s in split.rest[walk:]))  # read by the steps from b on
    width = sum(tape.traced[slot].numel() for slot in later & held)  # of those, held at b
    widths = [width]
    for s in reversed(split.rest[:walk]):  # b - 1: its step's result not held yet, its reads read
        out = cast(int, s.outs[0])
        if out in later:
            width -= tape.traced[out].numel()
        held.discard(out)
        for slot in set(_reads(s)) - later:
            later.add(slot)
            width += tape.traced[slot].numel()  # held: the sums or an earlier step's result
        widths.append(width)
    split.walk, split.widths = walk, widths[::-1]


def _takes(s: _Step, tape: _Tape, held: set) -> bool:
    """Whether a step can be taken on tensors held as changes (:class:`_Events`): every tensor
    it reads is (``held``), and it is a sum or a count (:func:`_is_sum`) or :func:`_moves_along`."""
    reads = _reads(s)
    out = tape.traced[s.outs[0]] if s.single and s.outs[0] is not None else None
    if s.rule is None or not reads or not held.issuperset(reads) or s.kind != "op" or out is None or \
            out.is_complex():
        return False
    if _is_sum(s):
        return True
    kind = s.rule[0]
    if kind == "ew" and any(tuple(tape.traced[slot].shape) != tuple(out.shape) for slot in reads):
        return False  # a held tensor broadcast: a changing number would change every element
    return _moves_along(s, out)


def _moves_along(s: _Step, out: Tensor) -> bool:
    """Whether :func:`_events_steps` takes a step: an elementwise operation, a cumulative sum of a
    vector, or an operation that moves elements (a reshape, a slice, ``flip``, ``narrow``,
    ``index_select``, a matrix's diagonal, a transpose, indexing by constants, ``cat`` with
    constants)."""
    rule = cast(tuple, s.rule)
    kind, name = rule[0], _op_name(s.func) if s.func is not None else ""
    if s.nested and kind != "cat":
        return False
    if [i for i, _ in s.fills] == [0] and (name in _MOVES - _EXPANDS or kind == "diag" and rule[1] == 2):
        return True  # each element of the result is one of the input's (one element in two places: raises)
    return (kind == "ew" and rule[4] is None or kind == "reshape" or
            kind == "along" and name == "cumsum" and out.dim() == 1 or
            kind in ("take", "basic", "cat") and not (kind == "take" and rule[1]))


def _sum_cells(s: _Step, shape: Tuple[int, ...], device: torch.device) -> Tuple[Tensor, int]:
    """Which element of a sum's result each element of its input ``[*shape]`` (flat order) adds
    to, and how many add to each."""
    nd = len(shape)
    dim = None if s.rule is not None and s.rule[0] == "reduce_all" else _arg(s.args, s.kwargs, 1, "dim", None)
    dims = set(range(nd)) if dim is None else {d % max(nd, 1) for d in ((dim,) if isinstance(dim, int) else dim)}
    kept = [1 if d in dims else shape[d] for d in range(nd)]
    cells = torch.arange(math.prod(kept), device=device).reshape(kept).expand(shape).reshape(-1)
    return cells, math.prod(shape[d] for d in dims)


_INT32_MAX = 2 ** 31 - 1
_PROBES_CUT = 1 << 20  # the fewest elements of a probe's replays (its sums' inputs) it takes through the sums


def _unique_codes(code: Tensor, bound: int) -> Tuple[Tensor, Tensor]:
    """``torch.unique(code, return_inverse=True)`` of codes below ``bound``: sorted in int32
    where they fit (half the time of int64's sort on a CPU), the keys back in int64."""
    if bound > _INT32_MAX:
        return torch.unique(code, return_inverse=True)
    keys, where = torch.unique(code.to(torch.int32), return_inverse=True)
    return keys.long(), where


def _argsort_codes(code: Tensor, bound: int) -> Tensor:
    """``code.argsort()`` of distinct codes below ``bound``, sorted in int32 where they fit."""
    return (code.to(torch.int32) if bound <= _INT32_MAX else code).argsort()


_Memo = Dict[int, Tuple[Tensor, Tensor]]  # codes by id -> (the codes, their elements): :func:`_cells`


class _Events:
    """A tensor along the chain, flat: its value at point 0 (``start``) and, at ``code = element *
    span + point`` (sorted, unique; ``span``: the chain's points plus one), the value it holds
    from that point on (``value``, ``start``'s dtype). Both cuts hold every tensor between the
    trained step and the steps that run at every point so: a ranking's relevance and what follows
    it, the sums, and the steps after them that take their changes. Made from changes (:meth:`of`), it keeps
    them and orders them only when ``code`` or ``value`` is read: the last sums are only
    added up at every point (:meth:`dense`)."""

    def __init__(self, start: Tensor, code: Optional[Tensor], value: Optional[Tensor],
                 changes: Optional[tuple] = None) -> None:
        self.start = start
        self._code, self._value, self._changes = code, value, changes

    @staticmethod
    def of(start: Tensor, cell: Tensor, point: Tensor, delta: Tensor, span: int,
           finish: Optional[Callable[[Tensor], Tensor]] = None) -> "_Events":
        """From changes ``delta`` (float64 or int64, summed where they meet) to the elements
        ``cell`` at ``point``, from ``start`` (in ``delta``'s dtype where ``finish`` is given):
        the running totals, through ``finish`` (a sum's reduction and dtype; by default
        ``start``'s dtype)."""
        done: Callable[[Tensor], Tensor] = finish or (lambda total: total.to(start.dtype))
        return _Events(done(start), None, None, (start, cell, point, delta, span, done))

    def _ordered(self) -> None:
        start, cell, point, delta, span, finish = cast(tuple, self._changes)
        code, inverse = _unique_codes(cell * span + point, start.numel() * span)
        merged = delta.new_zeros(code.numel()).index_add_(0, inverse, delta)
        keep = merged != 0
        code, merged = code[keep], merged[keep]
        self._code, self._value = code, _totals(start, code // span, merged, finish)
        self._changes = None

    @property
    def code(self) -> Tensor:
        if self._code is None:
            self._ordered()
        return cast(Tensor, self._code)

    @property
    def value(self) -> Tensor:
        if self._value is None:
            self._ordered()
        return cast(Tensor, self._value)

    def before(self, span: int, memo: _Memo) -> Tensor:
        """Its values just before each of its changes: the change before it where that is the
        same element's, its start otherwise; ``memo``: each key set's elements (:func:`_cells`)."""
        own = _cells(self.code, span, memo)
        if not own.numel():
            return self.value
        earlier = torch.zeros_like(own, dtype=torch.bool)
        earlier[1:] = own[1:] == own[:-1]
        return torch.where(earlier, self.value.roll(1), self.start[own])

    def changes(self, span: int, memo: _Memo, acc: torch.dtype) -> Tensor:
        """Its change at each of its codes, in ``acc``. Raises where a value is not finite (its
        change would not say what follows)."""
        return _finite(self.value.to(acc) - self.before(span, memo).to(acc))

    def dense(self, points: int, memo: _Memo) -> Tensor:
        """Its values at points ``0 .. points``: ``[points + 1, elements]`` (its changes added up
        in float64 or int64: the values themselves, which the changes of values in ``fn``'s
        dtype give back)."""
        span, width, acc = points + 1, self.start.numel(), _acc(self.start)
        if self._changes is not None:  # the changes as they came: their running totals
            start, cell, point, delta, _, finish = self._changes
            steps = delta.new_zeros(span, width).index_put_((point, cell), delta, accumulate=True)
            return finish(steps.cumsum(0) + start.to(delta.dtype))
        steps = torch.zeros(span, width, dtype=acc, device=self.start.device)
        if self.code.numel():
            steps[self.code % span, self.code // span] = self.changes(span, memo, acc)
        return (steps.cumsum(0) + self.start.to(acc)).to(self.start.dtype)


def _cells(code: Tensor, span: int, memo: _Memo) -> Tensor:
    """The elements of codes, kept in ``memo`` by the codes' ``id`` with the codes themselves (so
    that no other tensor takes that ``id`` while the memo lives)."""
    if id(code) not in memo:
        memo[id(code)] = code, code // span
    return memo[id(code)][1]


def _totals(start: Tensor, cell: Tensor, merged: Tensor, finish: Callable[[Tensor], Tensor],
            head: Optional[Tensor] = None) -> Tensor:
    """The values after changes ``merged`` to the elements ``cell`` (sorted codes' elements):
    ``start`` plus their running totals, through ``finish``."""
    return finish(start.to(merged.dtype)[cell] + _running(cell, merged, head))


def _finite(delta: Tensor) -> Tensor:
    """``delta``; raises where a change is not finite (it would not say what follows)."""
    if delta.is_floating_point() and not bool(torch.isfinite(delta).all()):
        raise RuntimeError("a change to or from a value that is not finite")
    return delta


def _acc(t: Tensor) -> torch.dtype:
    return torch.float64 if t.is_floating_point() else torch.int64


def _heads(key: Tensor) -> Tensor:
    """Each entry's group's first entry, in groups of equal ``key`` (sorted)."""
    first = torch.ones_like(key, dtype=torch.bool)
    first[1:] = key[1:] != key[:-1]
    return torch.cummax(torch.where(first, torch.arange(key.numel(), device=key.device), 0), 0).values


def _running(key: Tensor, delta: Tensor, head: Optional[Tensor] = None) -> Tensor:
    """``delta``'s running total within each group of equal ``key`` (sorted; ``head``: its
    :func:`_heads`, where known), this entry included."""
    head = _heads(key) if head is None else head
    total = delta.cumsum(0)
    return total - (total[head] - delta[head])


def _sum_events(s: _Step, tape: _Tape, env: List[Any], first: Tensor, before: Tensor, after: Tensor,
                flat: Optional[Tensor], point: Tensor, span: int) -> _Events:
    """:class:`_Events` of the sum ``s`` whose input is ``first`` (``[1, *shape]``) at point 0 and
    changes at elements ``flat`` (``None``: each element, in flat order) from ``before`` to
    ``after`` at ``point``."""
    ref = tape.traced[cast(int, s.outs[0])]
    width, device = ref.numel(), first.device
    finish = lambda total: total.to(ref.dtype)  # noqa: E731
    if s.kind == "bincount":  # an element adds one to the count of its value: it moves from one to another
        one = torch.ones_like(before, dtype=torch.int64)
        start = torch.zeros(width, dtype=torch.int64, device=device).index_add_(
            0, first.reshape(-1).long(), torch.ones(first.numel(), dtype=torch.int64, device=device))
        return _Events.of(start, torch.cat([before.long(), after.long()]), torch.cat([point, point]),
                          torch.cat([-one, one]), span, finish)
    name = _op_name(s.func)
    cells, count = _sum_cells(s, tuple(first.shape[1:]), device)
    if name in ("sum", "mean"):
        args, kwargs = tape._inputs(s, env)
        args = list(args)
        args[0] = first
        acc = torch.float64 if ref.is_floating_point() or name == "mean" else torch.int64
        start = _run_direct(s, cast(tuple, s.rule), args, kwargs, 1).reshape(width).to(acc)  # as fn takes it
        delta = _finite(after.to(acc) - before.to(acc))
        if name == "mean":
            delta = delta / count
    else:  # a count: of nonzero elements (count_nonzero, any) or of zero ones (all)
        counted = (lambda x: (x == 0).long()) if name == "all" else (lambda x: (x != 0).long())
        start = torch.zeros(width, dtype=torch.int64, device=device).index_add_(0, cells, counted(first.reshape(-1)))
        delta = counted(after) - counted(before)
        if name in ("any", "all"):
            finish = lambda total: (total > 0 if name == "any" else total == 0).to(ref.dtype)  # noqa: E731
    return _Events.of(start, cells if flat is None else cells[flat], point, delta, span, finish)


def _events_sums(sums: List[_Step], tape: _Tape, first: List[Any], events: List[Any], span: int,
                 memo: _Memo) -> None:
    """The sums' :class:`_Events` from their inputs' (``events``), and their values at point 0
    (``first``, batch 1)."""
    for s in sums:
        x = s.fills[0][1]
        e = events[x]
        _hold_sum(s, tape, first, events, _sum_events(s, tape, first, first[x], e.before(span, memo), e.value,
                                                      _cells(e.code, span, memo), e.code % span, span))


def _aligned(events: List[_Events], span: int, memo: _Memo) -> List[_Events]:
    """The same tensors at one set of codes (the union of theirs): one sort of all their changes
    where they are held as changes (sums), else each key's value from the tensor's last change at
    or before it (a running maximum over the union, no search)."""
    if len(events) == 1:
        return list(events)
    if all(e._changes is not None for e in events):
        changes = [cast(tuple, e._changes) for e in events]
        bound = max(c[0].numel() for c in changes) * span
        keys, inverse = _unique_codes(torch.cat([cell * span + point for _, cell, point, _, _, _ in changes]), bound)
        cell, aligned, offset = _cells(keys, span, memo), [], 0
        head = _heads(cell)
        for e, (start, cells, _, delta, _, finish) in zip(events, changes):
            merged = delta.new_zeros(keys.numel()).index_add_(0, inverse[offset: offset + cells.numel()], delta)
            offset += cells.numel()
            aligned.append(_Events(e.start, keys, _totals(start, cell, merged, finish, head)))
        return aligned
    codes = [e.code for e in events]
    if all(c is codes[0] for c in codes[1:]):
        return list(events)
    if all(c.shape == codes[0].shape for c in codes[1:]) and all(torch.equal(c, codes[0]) for c in codes[1:]):
        return [_Events(e.start, codes[0], e.value) for e in events]  # the same codes (an ROC curve's two axes)
    keys, key_of = _unique_codes(torch.cat(codes), max(e.start.numel() for e in events) * span)  # each code's place
    cell, offset, aligned = _cells(keys, span, memo), 0, []
    first_code = cell * span  # each key's element's first code
    for e, code in zip(events, codes):  # each key's value: its last change at or before it, on the key's element
        last = torch.full((keys.numel(),), -1, dtype=torch.long, device=keys.device)
        last[key_of[offset: offset + code.numel()]] = torch.arange(code.numel(), device=keys.device)
        offset += code.numel()
        last = torch.cummax(last, 0).values
        j = last.clamp_min(0)
        held = e.start[cell]
        if code.numel():
            held = torch.where((last >= 0) & (code[j] >= first_code), e.value[j], held)
        aligned.append(_Events(e.start, keys, held))
    return aligned


def _hold_sum(s: _Step, tape: _Tape, first: List[Any], events: List[Any], e: _Events) -> None:
    out = cast(int, s.outs[0])
    events[out] = e
    first[out] = e.start.reshape((1,) + tuple(tape.traced[out].shape))


def _chain_by_sums(split: _SumSplit, tape: _Tape, parts: Sequence[Tuple["_Site", Any, Tensor]], points: int) -> Tensor:
    """fn's value at every point ``0 .. points`` of a chain from a tape cut by
    :func:`_split_at_sums`: ``parts``, for each track, its site, ``payload`` and ``place``:
    ``place``, ``[B, outputs]``, the point from which each of the ``B`` comparisons of each element
    of the output (in flat order: a comparison's; an argmax's row; ``B = 2`` for a sign's ``> 0``
    and ``< 0``) is right (``0``: from the start; ``[outputs]``: ``B = 1``); ``payload``, the
    step's decoded output at the ``2^B`` configurations of those (row ``r``: comparison ``b``
    right where bit ``b`` of ``r`` is set; ``B = 1``: every comparison wrong, every one right).
    Each slot of the elementwise part holds its values at every configuration of the comparisons
    of the tracks it follows (``2^W`` rows for ``W`` of them, at most ``_TRACKS`` and within
    ``chain_elements``; else it raises: a loop over many thresholds, each summed apart, keeps two
    rows a slot; five counted per element, 32), and each sum takes an element's
    change at each of its comparisons' points. ``[points + 1]``."""
    places = [place.reshape(1, -1) if place.dim() == 1 else place for _, _, place in parts]
    widths = [p.shape[0] for p in places]
    env: List[Any] = [None] * tape.num_slots  # the slots before the sums, at each configuration of their steps
    steps: Dict[int, Tuple[int, ...]] = {}  # slot -> the tracks its values follow (its rows: their configurations)
    for slot in split.sources:
        k = split.track[slot]
        site, payload, _ = parts[k]
        env[slot], steps[slot] = site.format_batched(payload, site.call.x), (k,)
    for s in split.elementwise:
        reads = _reads(s)
        tracks = tuple(sorted({k for slot in reads for k in steps[slot]}))
        width = sum(widths[k] for k in tracks)
        if width > _TRACKS or (1 << width) * tape.traced[cast(int, s.outs[0])].numel() > current_limits().chain_elements:
            raise RuntimeError("an element follows more comparisons than the cut takes")
        spread = {slot for slot in reads if steps[slot] != tracks}  # inputs of fewer steps than their union
        local = list(env) if spread else env
        for slot in spread:
            local[slot] = _spread_rows(env[slot], steps[slot], tracks, widths)
        args, kwargs = tape._inputs(s, local)
        env[s.outs[0]] = _run_direct(s, cast(tuple, s.rule), list(args), kwargs, 1 << width)
        steps[s.outs[0]] = tracks
    first: List[Any] = [None] * tape.num_slots
    events: List[Any] = [None] * tape.num_slots
    for s in split.sums:  # each element changes once per comparison it follows, at its point
        x = env[s.fills[0][1]]
        values = x.reshape(x.shape[0], -1)
        tracks = steps[s.fills[0][1]]
        follows = split.source_of[s.fills[0][1]]
        bits = sum(widths[k] for k in tracks)
        if bits == 1:
            _hold_sum(s, tape, first, events, _sum_events(s, tape, env, x[:1], values[0], values[1], None,
                                                          places[tracks[0]][0, follows[tracks[0]].reshape(-1)],
                                                          points + 1))
            continue
        follows = follows.reshape(follows.shape[0], -1)  # [K, E]
        where = torch.cat([torch.where(follows[k] >= 0, places[k][:, follows[k].clamp_min(0)], 0)
                           for k in tracks])  # [bits, E]: the point at which each comparison an element follows turns
        when, which = where.sort(dim=0, stable=True)  # each element's comparisons in the order they turn right
        state = torch.cumsum(torch.ones_like(which) << which, 0)  # the configuration after each of them
        row = torch.arange(values.shape[1], device=values.device)
        after = values[state, row]
        before = torch.cat([values[:1], after[:-1]])
        _hold_sum(s, tape, first, events, _sum_events(s, tape, env, x[:1], before.reshape(-1), after.reshape(-1),
                                                      row.repeat(bits), when.reshape(-1), points + 1))
    return _after_sums(split, tape, first, events, points, {}, 8 * (points + split.elements))


def _spread_rows(value: Tensor, have: Tuple[int, ...], want: Tuple[int, ...], widths: List[int]) -> Tensor:
    """``value`` at the configurations of the tracks ``have`` (its leading dimension: ``2^W`` rows,
    row ``r`` holding each track's comparisons at its bits of ``r``, the tracks in order from the
    lowest bits, each ``widths[k]`` wide) at those of ``want``, a superset: each row of ``want``
    takes the row of ``have`` with the same comparisons of ``have``'s tracks."""
    offsets, at = {}, 0
    for k in want:
        offsets[k], at = at, at + widths[k]
    rows = torch.arange(1 << at, device=value.device)
    index, shift = torch.zeros_like(rows), 0
    for k in have:
        index |= ((rows >> offsets[k]) & ((1 << widths[k]) - 1)) << shift
        shift += widths[k]
    return value[index]


def _probe_by_sums(split: _SumSplit, tape: _Tape, site: "_Site", payload: Any, element: Tensor,
                   variant: Tensor) -> Any:
    """fn's value with one element of a trained step's output changed at a time, from a tape cut
    by :func:`_split_at_sums` (the step its first track, any others held at their traced
    outputs): ``payload``, the step's decoded outputs (a leading dimension of ``V``: the current
    one first, then whole outputs to take elements from); probe ``p`` takes element
    ``element[p]`` (in flat order: a comparison's; an argmax's row) from output ``variant[p]``,
    every other from the current one. Each probe is two points of a chain through the sums, the
    change and its undoing, so all ``P`` cost ``O(P + E)`` (``E`` the elements the sums take)
    and the steps after the sums at ``2 P + 1`` points. ``[P + 1]``: the probes', then the
    current output's value. Raises on a tape with guards (``fn`` reads values as Python numbers,
    which may differ from probe to probe: replay those)."""
    env: List[Any] = [None] * tape.num_slots  # the slots before the sums, at every output of the payload
    size = payload.shape[0]
    for slot in split.sources:
        held = tape.traced[slot]
        env[slot] = site.format_batched(payload, site.call.x) if split.track[slot] == 0 else \
            held.expand((size,) + tuple(held.shape))
    for s in split.elementwise:
        args, kwargs = tape._inputs(s, env)
        env[s.outs[0]] = _run_direct(s, cast(tuple, s.rule), list(args), kwargs, size)
    probes, span = element.numel(), 2 * element.numel() + 1
    outputs = split.numels[0]
    first: List[Any] = [None] * tape.num_slots
    events: List[Any] = [None] * tape.num_slots
    for s in split.sums:  # the elements that follow each probe's element change at its point and back at the next
        fed = env[s.fills[0][1]]
        x = fed.reshape(fed.shape[0], -1)
        source = split.source_of[s.fills[0][1]][0].reshape(-1)
        order = source.argsort(stable=True)
        counts = torch.bincount(source + 1, minlength=outputs + 1)[1:]  # (-1: follows no element of the step)
        starts = counts.cumsum(0) - counts + (source < 0).sum()
        each = counts[element]  # the sum's elements each probe changes
        probe = torch.repeat_interleave(torch.arange(probes, device=element.device), each)
        within = torch.arange(probe.numel(), device=element.device) - (each.cumsum(0) - each)[probe]
        flat = order[starts[element][probe] + within]
        before, after = x[0, flat], x[variant[probe], flat]
        point = 2 * probe + 1
        _hold_sum(s, tape, first, events, _sum_events(
            s, tape, env, fed[:1], torch.cat([before, after]),
            torch.cat([after, before]), torch.cat([flat, flat]), torch.cat([point, point + 1]), span))
    values = _after_sums(split, tape, first, events, span - 1, {}, 8 * (span + split.elements))
    if isinstance(values, tuple):
        raise RuntimeError("a tape with guards: replay fn where the values it reads differ")
    return values[torch.cat([torch.arange(1, span, 2, device=values.device), values.new_zeros(1, dtype=torch.long)])]


def _after_sums(split: _SumSplit, tape: _Tape, first: List[Any], events: List[Any], points: int,
                memo: _Memo, budget: int) -> Tensor:
    """fn's value at points ``0 .. points`` from its sums' :class:`_Events`: the steps after them
    taken on their changes while the values they read at every point would be large
    (:func:`_boundary`: a sum per row; a confusion matrix), then the others on those values at
    every point. ``[points + 1]``; with the tape's guards, also ``[points + 1]`` booleans: where
    each value ``fn`` reads as a Python value is the trace's (``RuntimeError`` where one is read
    before the sums)."""
    span = points + 1
    stop = _boundary(split, points)
    if stop:  # the sums of one shape at one set of codes: one sort of all their changes
        shapes: Dict[tuple, List[int]] = {}
        for s in split.sums:
            shapes.setdefault(tuple(tape.traced[cast(int, s.outs[0])].shape), []).append(cast(int, s.outs[0]))
        for slots in shapes.values():
            for slot, e in zip(slots, _aligned([events[slot] for slot in slots], span, memo) if len(slots) > 1 else ()):
                events[slot] = e
    for i, s in enumerate(split.rest[:stop]):
        try:
            _events_steps([s], tape, first, events, span, memo, budget)
        except RuntimeError:  # one this chain's changes cannot take (an element to two places): values from here
            if span * split.widths[i] > current_limits().chain_elements:
                raise
            stop = i
            break
    at: List[Any] = [None] * tape.num_slots
    for slot in {slot for s in split.rest[stop:] for slot in _reads(s)} | {tape.out}:
        if events[slot] is not None:
            at[slot] = events[slot].dense(points, memo).reshape((span,) + tuple(tape.traced[slot].shape))
    for s in split.rest[stop:]:
        args, kwargs = tape._inputs(s, at)
        result = _run_direct(s, cast(tuple, s.rule), list(args), kwargs, span)
        for slot, value in zip(s.outs, (result,) if s.single else result):
            if slot is not None:
                at[slot] = value
    values = at[tape.out].reshape(span)
    values = values if values.is_floating_point() else values.float()
    if not tape.guards:
        return values
    read = []  # the values fn reads as Python values, at every point (Tape.held)
    for g in tape.guards:
        if at[g] is None and events[g] is None:
            raise RuntimeError("fn reads a value before the sums")  # the tape at every point instead
        v = at[g] if at[g] is not None else events[g].dense(points, memo)
        read.append(v.reshape((span,) + tuple(tape.traced[g].shape)))
    return values, tape.held(read, span)  # type: ignore[return-value]


def _boundary(split: _SumSplit, points: int) -> int:
    """How many steps after the sums to take on their changes: the number ``b`` that costs least,
    ``b`` steps on the changes (each about ``_STEP`` elements' work and four a change: the sums'
    elements, each changing once along a chain through sums; about two a point through a
    ranking) and the held tensors that the steps from there on read, at every one of
    ``points + 1`` points (the first ``b`` where two cost the same)."""
    if _NEST == 0 or math.isinf(_NEST):
        return split.walk if _NEST == 0 else 0
    step = _NEST * (_STEP + 4 * max(split.elements, 2 * points))
    costs = [b * step + (points + 1) * width for b, width in enumerate(split.widths)]
    return costs.index(min(costs))


def _dense_width(split: _SumSplit, points: int) -> int:
    """The elements :func:`_after_sums` holds at every one of ``points + 1`` points."""
    return split.widths[_boundary(split, points)]


# --------------------------------------------------------------------------- the chain through a ranking

# A ranking of one query with 0/1 relevance (the paper's AP layout: each relevant item against
# every irrelevant one) decodes from the count of irrelevant items above each relevant one. Along
# the chain one comparison turns at each point: one relevant item passes one irrelevant item, and
# the ranking's relevance read slot by slot (``target[order]``) swaps two neighbouring slots. AP,
# precision at k, DCG of 0/1 relevance read it through a cumulative sum (``cumsum`` of the
# relevant items: one slot of it changes), elementwise maths and sums, so every point's sums
# follow from the previous point's in ``O(1)`` (:func:`_split_at_ranks`), where the tape replayed
# at each point costs a pass over the ``n`` items: ``O(l n)`` for ``l = P N`` comparisons, and
# beyond ``chain_elements`` fewer points, segment-averaged.


@dataclass
class _RankSplit:
    """A tape cut after rankings' outputs (:func:`_split_at_ranks`): ``lookups``, for binary
    rankings, each step that reads a tensor of ``fn``'s own in a ranking's order
    (``target[order]``), the index of its site and that tensor (``None`` for a ranking without
    comparisons: nothing it reads changes); ``source``, for ``topk`` with labels, its indices,
    which change themselves; ``steps``, the elementwise operations, cumulative sums and moves that
    follow; ``cut``, their sums and the steps after them (:class:`_SumSplit`'s ``sums``, ``rest``
    and ``more``: the rest cut again where it takes the sums elementwise into sums)."""

    lookups: List[Tuple[_Step, int, Optional[Tensor]]]
    source: int
    steps: List[_Step]
    cut: _SumSplit


def _split_at_ranks(tape: _Tape, indices: Dict[int, "_Site"]) -> Optional[_RankSplit]:
    """:class:`_RankSplit` of a tape batched by hand whose trained steps are binary rankings (one,
    or one per class's curve), each read only as ``t[order]`` of tensors ``t`` of ``fn``'s own (a
    0/1 relevance, or the labels that a curve then compares with its class), or one ``topk`` with
    labels (its indices; ``indices``: each site and its repeats, by step index), and then only
    through elementwise operations, ``cumsum`` (of a vector) and operations that move elements
    (slices, ``flip``, indexing by constants, ``cat`` with constants: a precision-recall curve)
    into sums; else ``None``."""
    ranked = all(isinstance(site, _RankSite) for site in indices.values())
    sources: Dict[int, _Site] = {}  # each ranking's order -> its site
    region: set = set()
    lookups: Dict[int, Tuple[_Step, int, Optional[Tensor]]] = {}  # by the slot each fills
    steps: List[_Step] = []
    cut = _SumSplit([], [], [], [], {})
    unread: set = set()  # sort's and topk's values: the scores in the output's order, not to be read
    for s in tape.steps:
        if s.kind == "site":
            name = s.call.name if s.call is not None else ""
            order = s.outs[0] if s.single else s.outs[1] if len(s.outs) == 2 and name in ("sort", "topk") else None
            site = indices.get(s.index)
            if site is None or order is None or \
                    ranked and tuple(tape.traced[order].shape) != (cast(_RankSite, site).items,):
                return None
            sources[order] = site
            unread.update(slot for slot in s.outs if slot is not None and slot != order)
            if not ranked:  # topk's indices change themselves
                region.add(order)
            continue
        reads = _reads(s)
        if s.rule is None or not reads or unread.intersection(reads):
            return None
        out = tape.traced[s.outs[0]] if s.single and s.outs[0] is not None else None
        if ranked and any(slot in sources for slot in reads):  # the lookup, t[order], and nothing else
            site = sources.get(reads[0]) if [i for i, _ in s.fills] == [1] else None
            n = cast(_RankSite, site).items if site is not None else -1
            table = s.args[0] if s.args else None
            if site is None or s.kind != "op" or s.rule != ("index", False, "plain") or \
                    s.nested or not isinstance(table, Tensor) or tuple(table.shape) != (n,) or out is None or \
                    tuple(out.shape) != (n,):
                return None
            # each point's swap is of one relevant and one irrelevant item, both known: what each of
            # the two slots reads then is that item's value (one per relevant item, or per class)
            lookups[cast(int, s.outs[0])] = (s, site.index, table.detach() if site.num_bits else None)
            region.add(cast(int, s.outs[0]))
            continue
        inside = [slot in region for slot in reads]
        if not any(inside):
            cut.rest.append(s)
            continue
        if not all(inside) or s.kind != "op" or out is None or out.is_complex():
            return None
        if _is_sum(s):
            cut.sums.append(s)
            continue
        if not _moves_along(s, out):
            return None
        steps.append(s)
        region.add(cast(int, s.outs[0]))
    sums = {cast(int, s.outs[0]) for s in cut.sums}
    sites = {site.index for site in indices.values()}
    if ranked and {index for _, index, _ in lookups.values()} != sites or not ranked and len(sites) != 1 or \
            not sources or not cut.sums or \
            tape.out in region or sums & region:
        return None
    cut.elements = sum(tape.traced[s.fills[0][1]].numel() for s in cut.sums)
    _walks(tape, cut)
    return _RankSplit(list(lookups.values()), next(iter(sources)), steps, cut)


def _swaps(site: "_RankSite", rank: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Where a binary ranking's relevance changes along the chain of ``rank`` (comparison ``k``
    right from point ``rank[k] + 1``): at each point a relevant item with ``c`` irrelevant ones
    above it passes the ``c``-th of them, which moves one slot down: the slot that one held turns
    relevant and the next one irrelevant. Returns ``(up, down, point)``, each ``[l]``, the slots
    in the order of ``fn``'s ranking."""
    num_pos, num_neg, n = site.pos.numel(), site.neg.numel(), site.items
    narrow = torch.int32 if rank.numel() < _INT32_MAX else rank.dtype  # sorted in int32 where the points fit
    turns = (rank.reshape(num_pos, num_neg) + 1).to(narrow).sort(dim=1).values  # [P, N]: each item's f-th pass
    earlier = turns.argsort(dim=0)  # each item's place in its column: the items whose f-th pass came earlier
    place = torch.arange(num_pos, device=rank.device)[:, None].expand_as(earlier)
    before = torch.empty_like(earlier).scatter_(0, earlier, place)
    passes = torch.arange(num_neg, device=rank.device)
    slot = (num_neg - 1 - passes) + before  # c - 1 irrelevant items, then the relevant ones at most c - 1 below them
    slot, point = slot.reshape(-1), turns.reshape(-1).long()
    if site.reverse:  # the slots counted from the other end
        return n - 1 - slot, n - 2 - slot, point
    return slot, slot + 1, point


def _events_cumsum(e: _Events, start: Tensor, span: int, budget: int, memo: _Memo,
                   own_keys: bool = True) -> _Events:
    """The :class:`_Events` of ``cumsum`` of a vector held by ``e``: at each point the input's
    changes, in order, add their running total to every element from theirs to the next one's;
    nothing where they cancel (a swap of neighbours changes one element). Where every change stays
    at its element, the result keeps only the keys at which it changes (``own_keys``: half of a
    swap's, and half the work of every step after it) or, else, ``e``'s keys (the same object:
    nothing to align where a later step reads the input too). Raises past ``budget`` changes
    (changes that do not cancel at once)."""
    m, acc = e.start.numel(), _acc(start)  # the changes in the result's dtype (cumsum(dtype=...))
    change = e.changes(span, memo, acc)
    cell, point = _cells(e.code, span, memo), e.code % span
    order = _argsort_codes(point * m + cell, span * m)
    cell, point, delta = cell[order], point[order], change[order]
    running = _running(point, delta)
    last = torch.ones_like(point, dtype=torch.bool)
    last[:-1] = point[1:] != point[:-1]
    length = torch.where(last, m - cell, cell.roll(-1) - cell)
    keep = running != 0
    if not bool((keep & (length != 1)).any()):  # every change stays at an element that changes
        own, code = _cells(e.code, span, memo), e.code
        change = torch.empty_like(running).scatter_(0, order, running)  # in the codes' order
        if own_keys and not bool(keep.all()):  # the keys where the result changes (a swap: one of two)
            moves = change != 0
            code, own, change = code[moves], own[moves], change[moves]
            memo[id(code)] = code, own
        total = start.to(acc)[own] + _running(own, change)
        return _Events(start, code, total.to(start.dtype))
    cell, point, running, length = cell[keep], point[keep], running[keep], length[keep]
    count = int(length.sum())
    if count > budget:
        raise RuntimeError("a cumulative sum whose changes do not cancel")
    offset = torch.arange(count, device=cell.device) - torch.repeat_interleave(length.cumsum(0) - length, length)
    return _Events.of(start, torch.repeat_interleave(cell, length) + offset, torch.repeat_interleave(point, length),
                      torch.repeat_interleave(running, length), span)


def _events_move(s: _Step, tape: _Tape, events: List[Any], start: Tensor, span: int, memo: _Memo) -> _Events:
    """The :class:`_Events` of an operation that moves elements (a reshape, a slice, ``flip``,
    indexing by a constant, ``cat`` with constants): the operation applied to each input's element
    indices says where each element comes from. Raises where one element goes to two places.
    What the move does to the elements that change is decided on the elements (a few hundred),
    not on their changes (one or two a point)."""
    reads = _reads(s)
    if len(set(reads)) != 1:
        raise RuntimeError("a move of two changing tensors")
    e = events[reads[0]]
    key = (tuple(tape.traced[reads[0]].shape), start.device)
    target = s.memo.get(key) if s.memo is not None else None
    if target is None:  # where each input element goes (-1: dropped), from the move on the elements' indices
        env: List[Any] = [None] * tape.num_slots
        for slot in reads:
            env[slot] = torch.arange(events[slot].start.numel(), device=start.device).reshape(tape.traced[slot].shape)
        args, kwargs = tape._inputs(s, env)
        if s.nested:  # cat: the constants' elements come from nowhere
            args = list(args)
            args[0] = _fill(_map_leaves(s.nested[0][1], Tensor, lambda t: torch.full(t.shape, -1, device=t.device)),
                            env)
        source = s.func(*args, **kwargs).reshape(-1)
        target = torch.full((e.start.numel(),), -1, dtype=torch.long, device=start.device)
        taken = source >= 0
        if bool((torch.bincount(source[taken], minlength=e.start.numel()) > 1).any()):
            raise RuntimeError("an element moved to two places")
        target[source[taken]] = torch.arange(source.numel(), device=start.device)[taken]
        if s.memo is not None:
            s.memo[key] = target
    cell = _cells(e.code, span, memo)
    changing = torch.bincount(cell, minlength=e.start.numel()).nonzero().reshape(-1)  # in order
    to = target[changing]
    if bool((to == changing).all()):
        return _Events(start, e.code, e.value)  # the elements that change stay in place: the same keys
    moved = target[cell]
    code, value = moved * span + (e.code - cell * span), e.value
    if not bool((to >= 0).all()):  # some are dropped (a slice)
        kept = moved >= 0
        code, value, moved, to = code[kept], value[kept], moved[kept], to[to >= 0]
    if to.numel() > 1 and not bool((to[1:] > to[:-1]).all()):  # a move that reorders them (flip)
        order = _argsort_codes(code, start.numel() * span)
        code, value, moved = code[order], value[order], moved[order]
    memo[id(code)] = code, moved
    return _Events(start, code, value)


def _events_elementwise(s: _Step, tape: _Tape, first: List[Any], events: List[Any], start: Tensor,
                        span: int, memo: _Memo) -> _Events:
    """The :class:`_Events` of an elementwise operation: at every (element, point) at which one
    of its changing inputs changes, the operation on their values there. A number among the
    inputs that never changes is taken as it is; one that changes would change every element."""
    shape = tuple(tape.traced[cast(int, s.outs[0])].shape)
    reads = [slot for _, slot in s.fills]
    moving = [slot for slot in dict.fromkeys(reads) if tuple(tape.traced[slot].shape) == shape]
    for slot in set(reads) - set(moving):
        e = events[slot]
        if tape.traced[slot].numel() != 1 or bool((e.value != e.start[e.code // span]).any()):
            raise RuntimeError("a changing input broadcast over the elements")
    if not moving:
        raise RuntimeError("no changing input of the result's shape")
    for slot, e in zip(moving, _aligned([events[slot] for slot in moving], span, memo)):
        events[slot] = e  # one key set, sorted once (a later step reading them again finds it)
    keys = events[moving[0]].code
    env: List[Any] = [None] * tape.num_slots
    for slot in reads:
        if slot in moving:
            env[slot] = events[slot].value.to(tape.traced[slot].dtype)
        else:
            env[slot] = first[slot].reshape(tape.traced[slot].shape)  # a number held
    cell = _cells(keys, span, memo)
    filled = {i for i, slot in s.fills if slot in moving}
    numel = max(1, math.prod(shape))
    picked = lambda v: v.expand(shape).reshape(numel)[cell] if isinstance(v, Tensor) and v.dim() else v  # noqa: E731
    args, kwargs = tape._inputs(s, env)
    args = [a if i in filled else picked(a) for i, a in enumerate(args)]
    cast_to = cast(tuple, s.rule)[3]
    if cast_to is not None:
        for i in cast_to[0]:
            args[i] = args[i].to(cast_to[1])
    value = s.func(*args, **{k: picked(v) for k, v in kwargs.items()})
    return _Events(start, keys, value.reshape(-1).to(start.dtype))  # at every key, unchanged ones kept


def _events_steps(steps: List[_Step], tape: _Tape, first: List[Any], events: List[Any], span: int,
                  memo: _Memo, budget: int) -> None:
    """Elementwise operations, cumulative sums, moves and sums on :class:`_Events` (``events``),
    and their values at point 0 (``first``, batch 1)."""
    for s in steps:
        if _is_sum(s):
            _events_sums([s], tape, first, events, span, memo)
            continue
        out = cast(int, s.outs[0])
        args, kwargs = tape._inputs(s, first)
        first[out] = _run_direct(s, cast(tuple, s.rule), list(args), kwargs, 1)
        start = first[out].reshape(-1)
        kind, name = cast(tuple, s.rule)[0], _op_name(s.func)
        if name == "cumsum":  # its own keys where no other step reads its input (then none to align with)
            x = s.fills[0][1]
            alone = tape.readers(x) == 1
            events[out] = _events_cumsum(events[x], start, span, budget, memo, own_keys=alone)
        elif kind == "ew":
            events[out] = _events_elementwise(s, tape, first, events, start, span, memo)
        else:
            events[out] = _events_move(s, tape, events, start, span, memo)


def _chain_by_ranks(split: _RankSplit, tape: _Tape, sites: Dict[int, Tuple["_Site", int]], rank: Tensor) -> Tensor:
    """fn's value at every point ``0 .. l`` of the chain of ``rank`` (comparison ``k`` right from
    point ``rank[k] + 1``) from a tape cut by :func:`_split_at_ranks`; ``sites``: each site and
    the place of its first comparison among the ``l``, by step index (its repeats too). ``[l + 1]``."""
    points, span = rank.numel(), rank.numel() + 1
    first: List[Any] = [None] * tape.num_slots  # every slot at point 0 (batch 1)
    events: List[Any] = [None] * tape.num_slots  # every slot from the lookup on along the chain
    for s in tape.steps:
        if s.kind == "site":
            site = sites[s.index][0]
            result = site.format_batched(site.decode(~site.best().reshape(1, -1)), site.call.x)
            for slot, value in zip(s.outs, (result,) if s.single else result):
                if slot is not None:
                    first[slot] = value
    width, swaps = 0, {}
    for lookup, index, table in split.lookups:  # binary rankings: two slots of what each reads swap at each point
        site, offset = sites[index]
        out = cast(int, lookup.outs[0])
        args, kwargs = tape._inputs(lookup, first)
        first[out] = _run_direct(lookup, cast(tuple, lookup.rule), list(args), kwargs, 1)
        width += first[out].numel()
        if table is None:  # a ranking without comparisons: nothing changes
            events[out] = _Events(first[out].reshape(-1), rank.new_zeros(0), first[out].reshape(-1)[:0])
            continue
        rank_site = cast(_RankSite, site)
        if index not in swaps:  # the ranking's swaps, for each tensor it reads in its order
            swaps[index] = _swaps(rank_site, rank[offset: offset + site.num_bits])
        up, down, point = swaps[index]
        # the f-th pass of relevant item i is of the (N - f)-th irrelevant one (index order): slot `up`
        # turns from that one's value to item i's, slot `down` back
        values = table.reshape(-1).to(_acc(table))
        rise = (values[rank_site.pos][:, None] - values[rank_site.neg].flip(0)[None, :]).reshape(-1)
        events[out] = _Events.of(first[out].reshape(-1), torch.cat([up, down]), torch.cat([point, point]),
                                 torch.cat([rise, -rise]), span)
    if not split.lookups:  # topk with labels: the label climbs one slot at each of its row's last k turns
        out, site = split.source, next(iter(sites.values()))[0]
        events[out] = _Events.of(first[out].reshape(-1), *_topk_changes(cast(_ClassSite, site), rank), span)
        width = first[out].numel()
    memo: _Memo = {}  # the key sets' elements (_cells)
    budget = 8 * (points + width)
    _events_steps(split.steps, tape, first, events, span, memo, budget)
    _events_sums(split.cut.sums, tape, first, events, span, memo)
    return _after_sums(split.cut, tape, first, events, points, memo, budget)


def _topk_changes(site: "_ClassSite", rank: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Where ``topk`` with labels changes along the chain of ``rank``: a row's label is at slot
    ``z``, the count of its classes above it, while ``z < k`` (the best other classes of the
    current scores fill the other slots in order); its ``j``-th last turn (``z``: ``j`` ->
    ``j - 1``) puts the label at slot ``j - 1`` and that slot's class at slot ``j``. Returns
    ``(element, point, delta)`` of the output's indices (int64)."""
    rows, c, k = site.num_rows, site.num_classes, cast(int, site.call.k)
    labels, ranked = site.plan.labels, cast(Tensor, site.plan.ranked)  # [N], [N, C - 1]
    turns = (rank.reshape(rows, c - 1) + 1).sort(dim=1).values  # each row's comparisons' turns, in order
    j = torch.arange(1, min(k, c - 1) + 1, device=rank.device)  # z: j -> j - 1, at the row's (C - j)-th turn
    point = turns[:, c - 1 - j]  # [N, J]
    other = ranked[:, j - 1]  # the class the label passes
    row = torch.arange(rows, device=rank.device)[:, None].expand_as(point)
    payload = torch.arange(rows * k, device=rank.device).reshape((1,) + site.rows_shape + (k,))
    element = torch.empty(rows * k, dtype=torch.long, device=rank.device)  # payload (row, slot) -> output element
    element[payload.movedim(-1, site.call.axis + 1).reshape(-1)] = torch.arange(rows * k, device=rank.device)
    up = element[row * k + (j - 1)]  # slot j - 1: from the passed class to the label
    gain = labels[:, None] - other
    below = j < k  # slot j, where there is one: from the label to the passed class
    down = element[(row * k + j.clamp(max=k - 1))][:, below]
    return (torch.cat([up.reshape(-1), down.reshape(-1)]), torch.cat([point.reshape(-1), point[:, below].reshape(-1)]),
            torch.cat([gain.reshape(-1), -gain[:, below].reshape(-1)]))


# --------------------------------------------------------------------------- re-running fn without tracing it again

_PLAIN = (str, type(None), torch.dtype, torch.device, torch.layout, torch.memory_format)


def _sig(value: Any, produced: Dict[int, tuple], objects: Optional[Dict[int, Any]]) -> Any:
    """What an argument is, comparable across runs of ``fn``: numbers with their type, tensors as
    the operation that produced them (``produced``: id -> ``(operation, position)`` or
    ``("in", k)``), anything else from outside by identity (kept alive in ``objects``)."""
    kind = type(value)
    if kind is Tensor:
        ref = produced.get(id(value))
        if ref is not None:
            return ref
    elif kind is int or kind is float or kind is bool:
        return (kind, value)
    elif kind is tuple:
        return (tuple,) + tuple([_sig(v, produced, objects) for v in value])
    if isinstance(value, Tensor):
        ref = produced.get(id(value))
        if ref is not None:
            return ref
    elif isinstance(value, _PLAIN) or value is Ellipsis:
        return value
    elif isinstance(value, (bool, int, float, complex)):
        return (type(value), value)
    elif isinstance(value, (tuple, list)):
        return (type(value),) + tuple([_sig(v, produced, objects) for v in value])
    elif isinstance(value, dict):
        return (dict,) + tuple([(k, _sig(v, produced, objects)) for k, v in value.items()])
    elif isinstance(value, slice):
        return (slice, _sig(value.start, produced, objects), _sig(value.stop, produced, objects),
                _sig(value.step, produced, objects))
    if objects is not None:
        objects[id(value)] = value
    return ("obj", id(value))


class _Static:
    """A tensor of one call of ``fn`` in a cached tape program, by reference (see :func:`_sig`):
    ``(operation, position)`` (``-1``: its only output), ``("in", k)``, ``("snap", operation)``
    or ``("obj", id)``."""

    __slots__ = ("ref",)

    def __init__(self, ref: tuple) -> None:
        self.ref = ref


def _has_static(value: Any) -> bool:
    if isinstance(value, _Static):
        return True
    if isinstance(value, (list, tuple)):
        return any(_has_static(v) for v in value)
    if isinstance(value, dict):
        return any(_has_static(v) for v in value.values())
    if isinstance(value, slice):
        return _has_static((value.start, value.stop, value.step))
    return False


def _statics(value: Any, resolve: Callable[[tuple], Any]) -> Any:
    """``value`` with each :class:`_Static` resolved (a ``torch.Size`` kept as it is)."""
    return _map_leaves(value, _Static, lambda static: resolve(static.ref), (torch.Size,))


class _TapeProgram:
    """A compiled tape with its tensors by reference: the tape of a later call of ``fn`` that ran
    the same operations on the same kinds of arguments (see :class:`_Graph`)."""

    def __init__(self, tape: "_Tape", ref: Callable[[Tensor], tuple]) -> None:
        self.out, self.direct, self.num_slots, self.guards = tape.out, tape.direct, tape.num_slots, tape.guards
        self.steps = []
        for s in tape.steps:
            live = {i for i, _ in s.fills}
            args = [None if i in live else self._static(a, ref) for i, a in enumerate(s.args)]
            kwargs = {k: self._static(v, ref) for k, v in s.kwargs.items()}
            nested = [(where, self._static(t, ref)) for where, t in s.nested]
            direct = [(i, a.ref) for i, a in enumerate(args) if isinstance(a, _Static)]
            deep = [i for i, a in enumerate(args) if not isinstance(a, _Static) and _has_static(a)]
            deep_kw = any(_has_static(v) for v in kwargs.values()) or any(_has_static(t) for _, t in nested)
            # the step without the trace's tensors (a cached program must not keep them alive)
            bare = _Step(s.kind, s.func, (), {}, s.outs, s.single, s.fills, [], s.index)
            bare.call = None if s.call is None else s.call.event  # type: ignore[assignment]  # a flag here
            bare.rule = s.rule
            # a step whose constants are the same at every call (no tensor of the trace among them; cat's
            # tensors, which a move reads only for their shapes) keeps what they decide across calls
            fixed = not direct and not any(_has_static(v) for v in kwargs.values()) and (
                not deep and not deep_kw or _op_name(s.func) in ("cat", "concat", "concatenate") and deep == [0])
            bare.memo = {} if fixed else None
            self.steps.append((bare, args, kwargs, nested, direct, deep, deep_kw))
        self.traced = {o: ref(tape.traced[o]) for s in tape.steps for o in s.outs if o is not None}

    @staticmethod
    def _static(value: Any, ref: Callable[[Tensor], tuple]) -> Any:
        if isinstance(value, Tensor):
            return _Static(ref(value))
        if isinstance(value, (list, tuple)) and not isinstance(value, torch.Size):
            items = [_TapeProgram._static(v, ref) for v in value]
            return items if isinstance(value, list) else tuple(items)
        if isinstance(value, dict):
            return {k: _TapeProgram._static(v, ref) for k, v in value.items()}
        if isinstance(value, slice):
            return slice(_TapeProgram._static(value.start, ref), _TapeProgram._static(value.stop, ref),
                         _TapeProgram._static(value.step, ref))
        return value

    def instantiate(self, resolve: Callable[[tuple], Any], calls: List["_Call"]) -> "_Tape":
        steps = []
        for s, args, kwargs, nested, direct, deep, deep_kw in self.steps:
            bound = list(args)
            for i, r in direct:
                bound[i] = resolve(r)
            for i in deep:
                bound[i] = _statics(args[i], resolve)
            if deep_kw:
                kwargs = _statics(kwargs, resolve)
                nested = [(where, _statics(t, resolve)) for where, t in nested]
            step = _Step(s.kind, s.func, tuple(bound), kwargs, s.outs, s.single, s.fills, nested, s.index,
                         calls[s.index] if s.call is not None else None)
            step.rule, step.memo = s.rule, s.memo
            steps.append(step)
        traced: List[Any] = [None] * self.num_slots
        for slot, r in self.traced.items():
            traced[slot] = resolve(r)
        return _Tape(steps, traced, self.out, self.direct, guards=self.guards)


@dataclass
class _Graph:
    """What a trace of ``fn`` found, in terms of the operations it ran, so that a later call whose
    run of ``fn`` is the same sequence of operations on the same kinds of arguments (only tensor
    values differ) needs no tracing: ``fn`` runs under :class:`_Rerun`, which checks each
    operation against ``events`` and keeps what it returns, and the discrete steps, their
    comparisons and the tape are the trace's with this run's tensors."""

    events: List[list]  # [func, signature of the arguments, shapes returned]
    out: tuple  # the reference of fn's value
    objects: Dict[int, Any]
    snapshots: frozenset  # operations whose first argument is copied before they run
    calls: List[Tuple["_Call", Dict[str, tuple]]]  # each discrete step without tensors, and their references
    finished: List[int]  # the steps whose monotone maps are looked through (trained and their aliases)
    chains: List[tuple]  # (reference, score, (op, parent, constant) or None, view or None): what looking through reads
    trained: List[int]
    guards: Dict[int, str]
    aliases: Dict[int, int]
    program: Optional[_TapeProgram]
    why_no_tape: Optional[str]


class _Rerun(TorchFunctionMode):
    """Runs ``fn`` as a trace found it (see :class:`_Graph`): checks that each operation is the
    recorded one, on arguments of the recorded kinds, returning tensors of the recorded shapes,
    and keeps what each returns. A difference sets ``diverged`` (fn then runs on untouched, and
    the caller traces it)."""

    def __init__(self, graph: _Graph, inputs: Sequence[Tensor]) -> None:
        super().__init__()
        self.graph, self.events, self.inputs = graph, graph.events, list(inputs)
        self.produced: Dict[int, tuple] = {}
        for k, t in enumerate(self.inputs):
            self.produced.setdefault(id(t), ("in", k))
        self.outputs: List[Any] = [None] * len(self.events)
        self.snapshots: Dict[int, Tensor] = {}
        self.count = 0
        self.diverged = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.diverged:
            return func(*args, **kwargs)
        index = self.count
        if index >= len(self.events):
            self.diverged = True
            return func(*args, **kwargs)
        recorded, signature, kw_signature, shapes, writes = self.events[index]
        produced = self.produced
        same = recorded == func and len(args) == len(signature)
        if same:
            for a, sig in zip(args, signature):
                if (produced.get(id(a)) if type(a) is Tensor else _sig(a, produced, None)) != sig:
                    same = False
                    break
        if not same or kw_signature != (_sig(kwargs, produced, None) if kwargs else None):
            self.diverged = True
            return func(*args, **kwargs)
        self.count = index + 1
        if index in self.graph.snapshots:
            self.snapshots[index] = args[0].clone()
        out = func(*args, **kwargs)
        result = args[0] if writes else out
        if isinstance(result, Tensor):
            if result.shape != shapes:
                self.diverged = True
            produced[id(result)] = (index, -1)
        elif isinstance(result, (tuple, list)):
            if not isinstance(shapes, tuple) or len(shapes) != len(result):
                self.diverged = True
                return out
            for pos, (o, shape) in enumerate(zip(result, shapes)):
                if isinstance(o, Tensor):
                    if o.shape != shape:
                        self.diverged = True
                    produced[id(o)] = (index, pos)
        self.outputs[index] = result
        return out

    def resolve(self, ref: tuple) -> Any:
        """A tensor of this run by reference (see :class:`_Static`); ``(operation, None)``: all
        that the operation returned."""
        head = ref[0]
        if head == "in":
            return self.inputs[ref[1]]
        if head == "snap":
            return self.snapshots[ref[1]]
        if head == "obj":
            return self.graph.objects[ref[1]]
        out = self.outputs[head]
        return out if ref[1] is None or ref[1] == -1 else out[ref[1]]


def _written(func: Any, args: Sequence, out: Any) -> Any:
    """What an operation leaves behind: its result, or the tensor it wrote into (``x[i] = v``
    returns nothing; the trace runs it as ``masked_fill_``, which returns ``x``)."""
    if out is None and args and isinstance(args[0], Tensor) and _mutates(func, _op_name(func)):
        return args[0]
    if out is not None and isinstance(out, Tensor) and args and out is args[0] and _op_name(func) == "__setitem__":
        return args[0]
    return out


def _input_key(inputs: Sequence[Tensor]) -> tuple:
    """Calls whose inputs have these shapes, dtypes and devices, under this grad mode (``with
    torch.no_grad()`` in fn restores it on exit), may re-run an earlier trace."""
    return (torch.is_grad_enabled(),) + tuple((t.shape, t.dtype, t.device) for t in inputs)


# --------------------------------------------------------------------------- the tape batched by hand

# How each operation of the tape runs on a batch of anchors without vmap: every tensor the
# anchors change holds a leading anchor dimension [t, *shape in the trace]; the rest are the
# trace's. A tape with an operation outside these tables runs under vmap; a tape that runs is
# checked against fn itself on the first call of each structure (see TracedMetric._tape_values).
_BINARY = {
    "eq", "ne", "lt", "le", "gt", "ge", "__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "greater",
    "greater_equal", "less", "less_equal", "not_equal", "add", "sub", "mul", "div", "true_divide", "divide",
    "multiply", "subtract", "rsub", "__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__",
    "__truediv__", "__rtruediv__", "__and__", "__rand__", "__or__", "__ror__", "__xor__", "__rxor__", "bitwise_and",
    "bitwise_or", "bitwise_xor", "logical_and", "logical_or", "logical_xor", "pow", "__pow__", "__rpow__",
    "minimum", "maximum", "fmin", "fmax", "floor_divide", "__floordiv__", "__rfloordiv__", "remainder", "__mod__",
    "__rmod__", "fmod", "atan2", "xlogy", "where", "masked_fill", "max", "min",
}
_UNARY = {
    "neg", "__neg__", "negative", "abs", "__abs__", "logical_not", "bitwise_not", "__invert__", "isnan", "isinf",
    "isfinite", "isposinf", "isneginf", "exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "sqrt", "rsqrt",
    "reciprocal", "sigmoid", "tanh", "square", "float", "double", "half", "long", "int", "bool", "short", "byte",
    "to", "type", "type_as", "clone", "detach", "contiguous", "zeros_like", "ones_like", "empty_like", "full_like",
    "nan_to_num", "relu", "clamp", "clip", "clamp_min", "clamp_max", "positive", "__pos__", "sign", "sgn", "floor",
    "ceil", "round", "trunc", "frac", "logit", "erf",
}
_INPLACE_EW = {"__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__imod__", "__ipow__",
               "__iand__", "__ior__", "__ixor__", "add_", "sub_", "mul_", "div_", "masked_fill_", "clamp_",
               "clamp_min_", "clamp_max_", "fill_", "zero_", "neg_", "abs_", "pow_", "nan_to_num_"}
_RESHAPES = {"reshape", "view", "flatten", "unflatten", "squeeze", "unsqueeze", "ravel", "view_as", "reshape_as"}
_EXPANDS = {"expand", "expand_as", "broadcast_to"}
# Operations that only move, copy or drop elements: each element of the result is one element of
# the input, so the result's elements follow what the operation applied to the input's follow.
_MOVES = _RESHAPES | _EXPANDS | {"permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis", "flip",
                                 "roll", "narrow", "select", "index_select", "diagonal", "__getitem__", "t"}
_REDUCTIONS = {"sum", "mean", "nansum", "nanmean", "prod", "amax", "amin", "any", "all", "count_nonzero", "max",
               "min", "logsumexp"}
# operations on one tensor along dimension(s) given at (position, keyword, default; _NO: required)
_ALONG = {
    "cumsum": (1, "dim", _NO), "cumprod": (1, "dim", _NO), "cummax": (1, "dim", _NO), "cummin": (1, "dim", _NO),
    "logcumsumexp": (1, "dim", _NO), "softmax": (1, "dim", _NO), "log_softmax": (1, "dim", _NO),
    "narrow": (1, "dim", _NO), "select": (1, "dim", _NO), "index_select": (1, "dim", _NO), "unbind": (1, "dim", 0),
    "sort": (1, "dim", -1), "argsort": (1, "dim", -1), "topk": (2, "dim", -1), "diff": (2, "dim", -1),
    "split": (2, "dim", 0), "chunk": (2, "dim", 0), "flip": (1, "dims", _NO), "roll": (2, "dims", _NO),
    "transpose": (1, "dim0", _NO), "swapaxes": (1, "axis0", _NO), "swapdims": (1, "dim0", _NO),
    "movedim": (1, "source", _NO), "moveaxis": (1, "source", _NO),
}
_GATHERS = {"gather": (0, 2, None), "scatter": (0, 2, 3), "scatter_add": (0, 2, 3), "scatter_add_": (0, 2, 3),
            "scatter_": (0, 2, 3)}  # positions of the input, index, src


def _shift(dim: Any) -> Any:
    """A dimension of one anchor's tensor in the tensor of all anchors (negative ones count from
    the end and stay)."""
    if isinstance(dim, (list, tuple)):
        return type(dim)(_shift(d) for d in dim)
    return dim + 1 if dim >= 0 else dim


def _is_dim(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_is_dim(v) for v in value)
    return isinstance(value, int) and not isinstance(value, bool)


def _lead(t: Tensor, batch: int) -> Tensor:
    """A tensor of the trace, repeated over the anchors (a view)."""
    return t.expand((batch,) + tuple(t.shape))


def _direct_rule(step: _Step, traced: Callable[[int], Tensor]) -> Optional[tuple]:
    """How ``step`` runs on the anchors' batch by hand, or ``None`` (vmap). ``traced(slot)``: the
    tensor of a slot in the trace. ``step.nested`` holds only containers with tensors the
    anchors change."""
    kind = step.kind
    if kind == "site":
        return ("site",)
    if kind == "bincount":
        return ("bincount",) if not step.nested else None
    name = _op_name(step.func)
    args, kwargs = step.args, step.kwargs
    batched = {i for i, _ in step.fills}
    nested = dict(step.nested)
    if any(not isinstance(w, int) for w in nested):
        return None  # a tensor of the tape as a keyword
    outs = [traced(o) for o in step.outs if o is not None]

    def per_sample(i: int) -> Any:  # an argument as one anchor sees it
        slot = next((s for j, s in step.fills if j == i), None)
        return traced(slot) if slot is not None else args[i]

    if kind == "inplace":
        target_shape = tuple(traced(step.outs[0]).shape)
        if name in _INPLACE_EW and not nested:
            return ("ew", len(target_shape), _reshapes(step, per_sample, len(target_shape)),
                    _common_dtype(name, args, per_sample, inplace=True), target_shape)
        if name in _GATHERS and not nested and _is_dim(_arg(args, kwargs, 1, "dim", None)):
            return ("gather", _GATHERS[name], target_shape)
        if name == "__setitem__" and 1 in batched and len(args) == 3 and not nested:
            index = per_sample(1)
            if not isinstance(index, Tensor):
                return None
            if index.dtype == torch.bool:  # x[mask] = value with a mask of x's shape: masked_fill
                if 2 not in batched and tuple(index.shape) == target_shape and (
                        not isinstance(args[2], Tensor) or args[2].dim() == 0):
                    return ("masked_write", target_shape)
                return None
            if not index.is_floating_point() and len(target_shape) >= 1:  # x[i] = value, i an integer tensor
                value_dim = per_sample(2).dim() if isinstance(args[2], Tensor) else 0  # (ranks by `r[order] = arange`)
                return ("index_write", index.dim() + len(target_shape) - 1, value_dim)
            return None
        if name == "index_put_" and 1 not in batched and set(nested) <= {1} and len(args) >= 3:
            items = nested.get(1, args[1])  # a confusion matrix counted by index_put_(..., accumulate=True)
            if not isinstance(items, (list, tuple)) or not items:
                return None
            seen = [traced(v.slot) if isinstance(v, _Ref) else v for v in items]  # each as one anchor sees it
            if all(isinstance(i, Tensor) and not i.is_floating_point() and i.dtype != torch.bool for i in seen):
                return ("index_put", tuple(isinstance(v, _Ref) for v in items), target_shape)
            return None
        if name == "__setitem__" and 1 not in batched and len(args) == 3:
            index = args[1] if isinstance(args[1], tuple) else (args[1],)
            if all(isinstance(i, (int, slice, type(None), type(Ellipsis))) or (
                    isinstance(i, Tensor) and len(index) == 1) for i in index) and not nested:
                region = torch.empty(target_shape, device="meta")[args[1]].dim()
                value_dim = per_sample(2).dim() if isinstance(args[2], Tensor) else 0
                return ("setitem", region, value_dim, target_shape)
        return None
    if not outs:
        return None
    out = outs[0]
    if name in ("norm", "linalg_vector_norm") and batched == {0} and not nested:  # the norm of all the elements
        order = _arg(args, kwargs, 1, "p" if name == "norm" else "ord", "fro" if name == "norm" else 2)
        order = 2 if order == "fro" or order is None else order
        if _arg(args, kwargs, 2, "dim", None) is not None or _arg(args, kwargs, 3, "keepdim", False) or \
                _arg(args, kwargs, 4, "dtype", None) is not None or not isinstance(order, (int, float)):
            return None
        return ("norm_all", order)
    if name in _REDUCTIONS and not (len(args) > 1 and isinstance(args[1], Tensor)):
        if batched != {0} or nested:
            return None
        dim = _arg(args, kwargs, 1, "dim", None)
        if dim is not None and not _is_dim(dim):
            return None
        if per_sample(0).dim() == 0 or dim is None or (isinstance(dim, (list, tuple)) and not dim):
            if dim is None and _arg(args, kwargs, 2, "keepdim", False):
                return None
            return ("reduce_all",)
        return ("reduce", "dim" in kwargs)
    if name in _BINARY or name in _UNARY:
        if name in ("to", "type_as", "type"):
            return ("ew", 0, [], None, None) if 0 in batched and not nested else None
        if nested or (name in _UNARY and batched != {0}):
            return None
        if name == "masked_fill" and 2 in batched:
            return None
        if name == "where" and len(args) != 3:
            return None
        nd = out.dim()
        return ("ew", nd, _reshapes(step, per_sample, nd), _common_dtype(name, args, per_sample), None)
    if name in _RESHAPES:
        return ("reshape", tuple(out.shape)) if 0 in batched and not nested else None
    if name in _EXPANDS:
        if batched != {0} or nested:
            return None
        return ("expand", tuple(out.shape), per_sample(0).dim())
    if name in ("permute", "t", "T", "mT"):
        if batched != {0} or nested:
            return None
        nd = per_sample(0).dim()
        if name == "permute":
            dims = args[1:] if len(args) > 2 else (args[1] if len(args) > 1 else kwargs.get("dims"))
            if dims is None or not _is_dim(dims):
                return None
            return ("permute", (0,) + tuple(d % nd + 1 for d in dims))
        if name == "t" and nd < 2:
            return ("reshape", tuple(out.shape))
        if nd < 2 or (name in ("t", "T") and nd != 2):  # T reverses every dimension
            return None
        return ("permute", (0,) + tuple(range(1, nd - 1)) + (nd, nd - 1))
    if name == "one_hot":  # a class per element -> [*shape, C]: the anchors' dimension leads as it is
        classes = _arg(args, kwargs, 1, "num_classes", -1)
        return ("same",) if batched == {0} and not nested and isinstance(classes, int) and classes > 0 else None
    if name == "pad":  # F.pad: the last dimensions, constant mode
        if batched != {0} or nested:
            return None
        return ("same",) if _arg(args, kwargs, 2, "mode", "constant") == "constant" else None
    if name in _ALONG:
        if batched != {0} or nested:
            return None
        position, key, default = _ALONG[name]
        if name in ("diff",) and (_arg(args, kwargs, 3, "prepend", None) is not None
                                  or _arg(args, kwargs, 4, "append", None) is not None):
            return None
        if name in ("flip", "permute") and len(args) > position + 1:
            return None  # dims as several arguments
        dim = _arg(args, kwargs, position, key, default)
        if dim is _NO or dim is None or not _is_dim(dim):
            return None
        second = None
        if name in ("transpose", "swapaxes", "swapdims", "movedim", "moveaxis"):
            keys = {"transpose": "dim1", "swapaxes": "axis1", "swapdims": "dim1", "movedim": "destination",
                    "moveaxis": "destination"}
            second = _arg(args, kwargs, 2, keys[name], _NO)
            if second is _NO or not _is_dim(second):
                return None
        return ("along", position, key, dim, second)
    if name == "trace":  # a matrix's trace: its diagonal's sum
        return ("trace",) if batched == {0} and not nested and not kwargs else None
    if name in ("trapz", "trapezoid"):  # along dim (keyword only), of y (and x, or a spacing dx)
        dim = kwargs.get("dim", -1)
        if nested or not batched <= {0, 1} or not _is_dim(dim) or set(kwargs) - {"dim", "dx"}:
            return None
        return ("trapz", dim)
    if name in ("diag", "diagonal"):
        if batched != {0} or nested or (name == "diagonal" and len(args) > 2) or \
                set(kwargs) - {"offset", "diagonal"}:
            return None  # diagonal(x, offset, dim1, dim2) with other planes: vmap
        offset = _arg(args, kwargs, 1, "diagonal" if name == "diag" else "offset", 0)
        nd = per_sample(0).dim()
        return ("diag", nd, offset) if isinstance(offset, int) and nd in (1, 2) else None
    if name in _GATHERS:
        dim = _arg(args, kwargs, 1, "dim", None)
        if nested or not _is_dim(dim):
            return None
        return ("gather", _GATHERS[name], None)
    if name in ("cat", "concat", "concatenate", "stack"):
        items = nested.get(0)
        if batched or list(nested) != [0] or not isinstance(items, (list, tuple)):
            return None
        dim = _arg(args, kwargs, 1, "dim", 0)
        return ("cat", dim, tuple(isinstance(v, _Ref) for v in items)) if _is_dim(dim) else None
    if name == "__getitem__" and len(args) == 2:
        index = args[1]
        if 1 in batched or 1 in nested:
            if 1 in batched:
                t, form = per_sample(1), "plain"
            else:
                inner = nested[1]
                if not (isinstance(inner, tuple) and len(inner) == 1 and isinstance(inner[0], _Ref)):
                    return None
                t, form = traced(inner[0].slot), "tuple"
            if t.dtype == torch.bool and form == "plain":  # batched where every anchor's mask is the same
                return ("mask", 0 in batched)
            if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
                return None
            return ("index", 0 in batched, form)
        if nested or 0 not in batched:
            return None
        parts = index if isinstance(index, tuple) else (index,)
        if all(isinstance(p, (int, slice, type(None), type(Ellipsis))) and not isinstance(p, bool) for p in parts):
            return ("basic",)
        if len(parts) == 1 and isinstance(parts[0], Tensor):
            return ("take", parts[0].dtype == torch.bool)
        return None
    return None


def _reshapes(step: _Step, per_sample: Callable[[int], Any], nd: int) -> List[Tuple[int, int]]:
    """``(position, dims to add)`` of the anchors' tensors that have fewer dimensions than the
    result: one anchor's tensor broadcasts from the right, so the anchor dimension needs ones
    between it and the anchor's own dimensions."""
    return [(i, nd - per_sample(i).dim()) for i, _ in step.fills if nd > per_sample(i).dim()]


def _common_dtype(name: str, args: tuple, per_sample: Callable[[int], Any], inplace: bool = False
                  ) -> Optional[Tuple[Tuple[int, ...], torch.dtype]]:
    """Where a zero-dimensional tensor meets a tensor of another dtype, it takes part in type
    promotion as a number; with an anchor dimension it would not. Cast the operands to the
    dtype one anchor's operation computes in: ``(positions, dtype)``, or ``None``."""
    positions = [i for i in range(len(args)) if isinstance(args[i], Tensor)]
    if name == "where":
        positions = [i for i in positions if i > 0]
    elif name == "masked_fill" or name == "masked_fill_":
        return None
    if len(positions) != 2:
        return None
    a, b = per_sample(positions[0]), per_sample(positions[1])
    if a.dtype == b.dtype or (a.dim() > 0 and b.dim() > 0):
        return None
    dtype = torch.result_type(a, b)
    return (tuple(positions[1:]) if inplace else tuple(positions)), dtype


def _run_direct(step: _Step, rule: tuple, args: list, kwargs: Dict, batch: int) -> Any:
    """One operation of the tape on the anchors' batch, by hand (see :func:`_direct_rule`)."""
    kind = rule[0]
    func = step.func
    if kind == "ew":
        _, nd, reshapes, cast_to, target_shape = rule
        for i, extra in reshapes:
            a = args[i]
            args[i] = a.reshape((a.shape[0],) + (1,) * extra + tuple(a.shape[1:]))
        if cast_to is not None:
            positions, dtype = cast_to
            for i in positions:
                args[i] = args[i].to(dtype)
        if target_shape is None:
            return func(*args, **kwargs)
        target = args[0]
        result = target.clone() if _batched(step, 0) else _lead(target, batch).clone()
        func(result, *args[1:], **kwargs)
        return result
    if kind == "norm_all":
        return torch.linalg.vector_norm(args[0].reshape(batch, -1), ord=rule[1], dim=1)
    if kind == "reduce_all":
        kwargs = {k: v for k, v in kwargs.items() if k not in ("dim", "keepdim")}
        result = func(args[0].reshape(batch, -1), 1, **kwargs)
        return result[0] if isinstance(result, tuple) else result
    if kind == "reduce":
        if rule[1]:
            kwargs = dict(kwargs, dim=_shift(kwargs["dim"]))
        else:
            args[1] = _shift(args[1])
        return func(*args, **kwargs)
    if kind == "reshape":
        return args[0].reshape((batch,) + rule[1])
    if kind == "expand":
        _, shape, nd = rule
        x = args[0]
        return x.reshape((batch,) + (1,) * (len(shape) - nd) + tuple(x.shape[1:])).expand((batch,) + shape)
    if kind == "permute":
        return args[0].permute(rule[1])
    if kind == "diag":  # a vector into a matrix, or a matrix's diagonal
        _, nd, offset = rule
        return torch.diag_embed(args[0], offset) if nd == 1 else args[0].diagonal(offset, 1, 2).clone()
    if kind == "same":
        return func(*args, **kwargs)
    if kind == "trace":
        return args[0].diagonal(0, 1, 2).sum(-1)
    if kind == "trapz":
        for i in range(len(args)):
            if isinstance(args[i], Tensor) and not _batched(step, i):
                args[i] = _lead(args[i], batch)
        return func(*args, **dict(kwargs, dim=_shift(rule[1])))
    if kind == "along":
        _, position, key, dim, second = rule
        if key in kwargs:
            kwargs = dict(kwargs, **{key: _shift(dim)})
        elif position < len(args):
            args[position] = _shift(dim)
        else:
            kwargs = dict(kwargs, **{key: _shift(dim)})
        if second is not None:
            keys = {"transpose": "dim1", "swapaxes": "axis1", "swapdims": "dim1", "movedim": "destination",
                    "moveaxis": "destination"}
            k2 = keys[_op_name(func)]
            if k2 in kwargs:
                kwargs = dict(kwargs, **{k2: _shift(second)})
            else:
                args[2] = _shift(second)
        return func(*args, **kwargs)
    if kind == "gather":
        (xi, ii, si), target_shape = rule[1], rule[2]
        for i in (xi, ii, si):
            if i is not None and i < len(args) and isinstance(args[i], Tensor) and not _batched(step, i):
                args[i] = _lead(args[i], batch)
        if "dim" in kwargs:
            kwargs = dict(kwargs, dim=_shift(kwargs["dim"]))
        else:
            args[1] = _shift(args[1])
        if target_shape is None:
            return func(*args, **kwargs)
        result = args[xi].clone()
        func(result, *args[1:], **kwargs)
        return result
    if kind == "cat":
        items = [v if changes else _lead(v, batch) for changes, v in zip(rule[2], args[0])]
        dim = rule[1]
        if len(args) > 1:
            args[1] = _shift(dim)
        else:
            kwargs = dict(kwargs, dim=_shift(dim))
        return func(items, *args[1:], **kwargs)
    if kind == "basic":
        index = args[1] if isinstance(args[1], tuple) else (args[1],)
        return args[0][(slice(None),) + index]
    if kind == "take":  # an anchor's tensor indexed by one tensor of the trace
        return args[0][:, args[1]]
    if kind == "mask":  # a boolean mask per anchor: the same for every anchor (a filter that keeps all:
        mask = args[1]  # torchmetrics' `x[x >= 0]` of ignore_index), else a result of another shape each
        if not bool((mask == mask[:1]).all()):
            raise RuntimeError("a boolean mask that differs between configurations cannot be batched")
        return (args[0] if rule[1] else _lead(args[0], batch))[:, mask[0]]
    if kind == "index":  # indexed by one tensor per anchor
        x_batched, form = rule[1], rule[2]
        index = args[1][0] if form == "tuple" else args[1]
        if not x_batched:
            return args[0][index]
        rows = torch.arange(batch, device=index.device).reshape((batch,) + (1,) * (index.dim() - 1))
        return args[0][rows, index]
    if kind == "index_put":  # each anchor's indices, prefixed by its row of the batch
        _, changes, target_shape = rule
        result = args[0].clone() if _batched(step, 0) else _lead(args[0], batch).clone()
        cores = [i.dim() - 1 if c else i.dim() for i, c in zip(args[1], changes)]
        dims = max(cores)
        where = [i.reshape((batch if c else 1,) + (1,) * (dims - core) + tuple(i.shape[1 if c else 0:]))
                 for i, c, core in zip(args[1], changes, cores)]
        rows = torch.arange(batch, device=result.device).reshape((batch,) + (1,) * dims)
        value = args[2]
        if isinstance(value, Tensor) and _batched(step, 2):  # aligned after the anchors' dimension
            full = dims + len(target_shape) - len(where)
            value = value.reshape((batch,) + (1,) * (full - value.dim() + 1) + tuple(value.shape[1:]))
        accumulate = kwargs.get("accumulate", args[3] if len(args) > 3 else False)
        return result.index_put_((rows, *where), value, accumulate)
    if kind == "index_write":  # each anchor's integer index along the first dimension, prefixed by its row
        _, region, value_dim = rule
        target, index, value = args
        result = target.clone() if _batched(step, 0) else _lead(target, batch).clone()
        rows = torch.arange(batch, device=result.device).reshape((batch,) + (1,) * (index.dim() - 1))
        if isinstance(value, Tensor) and _batched(step, 2):  # aligned after the anchors' dimension
            value = value.reshape((batch,) + (1,) * (region - value_dim) + tuple(value.shape[1:]))
        result[rows, index] = value
        return result
    if kind == "masked_write":
        target, mask, value = args
        result = target.clone() if _batched(step, 0) else _lead(target, batch).clone()
        return result.masked_fill_(mask, value)
    if kind == "setitem":
        _, region, value_dim, target_shape = rule
        target, index, value = args
        result = target.clone() if _batched(step, 0) else _lead(target, batch).clone()
        index = index if isinstance(index, tuple) else (index,)
        if isinstance(value, Tensor) and _batched(step, 2) and region > value_dim:
            value = value.reshape((batch,) + (1,) * (region - value_dim) + tuple(value.shape[1:]))
        result[(slice(None),) + index] = value
        return result
    if kind == "bincount":
        x, weights = args
        ref = cast(_Call, step.call).out
        x = x if _batched(step, 0) else _lead(x, batch)
        src = torch.ones_like(x, dtype=ref.dtype) if weights is None else (
            weights if _batched(step, 1) else _lead(weights, batch)).to(ref.dtype)
        return torch.zeros((batch,) + tuple(ref.shape), dtype=ref.dtype, device=ref.device).scatter_add(
            1, x.long(), src)
    raise RuntimeError(f"no batched rule {kind!r}")


def _batched(step: _Step, position: int) -> bool:
    return any(i == position for i, _ in step.fills)


def _has_number(args: Sequence, kwargs: Dict) -> bool:
    for a in (*args, *kwargs.values()):
        if isinstance(a, _Number) or (type(a) in (list, tuple) and any(isinstance(b, _Number) for b in a)):
            return True
    return False


class _Escape(TypeError):
    """A number read with ``.item()`` or ``.tolist()`` used other than in arithmetic during a batched
    replay."""


_ARITHMETIC: Dict[str, Callable[[Any, Any], Any]] = {
    "add": operator.add, "sub": operator.sub, "mul": operator.mul, "truediv": operator.truediv,
    "floordiv": operator.floordiv, "mod": operator.mod}


class _Number:
    """A number ``fn`` reads with ``.item()`` (or ``.tolist()``) from a tensor its steps made, in a
    replay batched over configurations (:meth:`TracedMetric._number_values`): ``t`` holds its
    value at each, as float64, int64 or bool for the Python float, int or bool it stands for (a
    bool's arithmetic that of an int, as Python's), and Python arithmetic on it
    (``+ - * /``, ``//`` and ``%`` of ints, ``-x``, ``abs``, an int's ``**`` of a Python int,
    ``round()`` and ``math.floor``/``ceil``/``trunc`` to an int) is that arithmetic on ``t``, in
    Python's types, so that each configuration's value is the one Python computes; a comparison
    (``<``, ``==``...) is a bool number. ``fn`` may return it or hand it to ``torch.tensor``
    (alone, or in a flat list of numbers); code that adds such numbers itself (NumPy's ``mean`` of
    a list of them) does so in its own order, which on a list of floats may differ in the last
    bits. Its truth value (``if n > 0:``, ``x if n else 0``, ``max(n, 1)``) is the one ``fn`` took
    at a reference configuration, replayed unbatched first (``mode.path is None``: the values read
    are recorded in ``mode.reads``); in the batched replay each configuration whose own truth value
    differs is recorded (``mode.off_path``) and replayed on its own path later. Any other use
    (``float()``, ``int()``, ``math.sqrt``, ``round(x, digits)`` of a float, a float's ``**``,
    formatting, another torch function, an attribute a Python number has) raises :class:`_Escape`
    and marks the replay, whose values are then not used; an attribute it lacks raises
    ``AttributeError``, as a Python number's would. Where Python raises at a configuration (a
    divisor 0, ``round()`` of NaN), or an int is 2**53 or more in a product, a power or a division
    of ints or compared with a float (Python's ints are unbounded, its division of two rounds
    once, and it compares an int with a float exactly), that is recorded
    (``mode.raising``, ``mode.products``, ``mode.bounded``), and ``fn`` replayed there. Sums are
    not checked: to leave int64 from below 2**53 takes about a thousand terms."""

    __slots__ = ("t", "mode")

    def __init__(self, t: Tensor, mode: "_Mode") -> None:
        self.t, self.mode = t, mode

    def _escape(self, what: str) -> Any:
        return self.mode.escape(f"a number read with .item() or .tolist() used in {what}")

    def _wrap(self, t: Tensor) -> "_Number":
        return _Number(t, self.mode)

    def _operands(self, other: Any, op: str) -> Optional[Tuple[Any, Any, bool]]:
        """Both operands in the type of the result (int64 or float64 tensors, Python numbers)
        and whether it is an int; ``None`` for an operand that is not a number."""
        o: Any
        if isinstance(other, _Number):
            o, o_int = other.int_or_float(), not other.t.is_floating_point()
        elif isinstance(other, (bool, int)):
            o, o_int = int(other), True
        elif isinstance(other, float):
            o, o_int = float(other), False
        else:
            return None
        as_int = o_int and not self.t.is_floating_point() and op != "truediv"
        a = self.int_or_float()
        a = a if as_int or a.is_floating_point() else a.double()
        if not as_int and isinstance(o, Tensor) and not o.is_floating_point():
            o = o.double()
        elif not as_int and isinstance(o, int):
            o = float(o)
        return a, o, as_int

    def _binary(self, other: Any, op: str, reflected: bool) -> Any:
        both = self._operands(other, op)
        if both is None:
            return NotImplemented
        a, b, as_int = both
        if reflected:
            a, b = b, a
        if op in ("floordiv", "mod") and not as_int:
            return self._escape(f"float `{op}`")
        if op in ("truediv", "floordiv", "mod"):
            if isinstance(b, Tensor):
                self.mode.raising.append(b == 0)
            elif b == 0:
                raise ZeroDivisionError("division by zero")
        # Python's operators on the tensors (one of a and b is one): floor division and remainder
        # of ints floor as Python's do; true division of float64 rounds as Python's float
        apply = _ARITHMETIC[op]
        # Python's ints are unbounded, and its division of two ints rounds once: a product of ints
        # past 2**53 (where int64 may wrap), or a division of such an int by an int (which float64
        # rounds twice), is left to fn itself at that configuration (checked once, at the end:
        # mode.products, mode.bounded)
        if as_int and op == "mul":
            self.mode.products.append((a, b))
        elif op == "truediv" and not self.t.is_floating_point() and (
                isinstance(other, int) or isinstance(other, _Number) and not other.t.is_floating_point()):
            self.mode.bounded.extend((a, b))
        return self._wrap(apply(a, b))

    def __add__(self, other: Any) -> Any:
        return self._binary(other, "add", False)

    def __radd__(self, other: Any) -> Any:
        return self._binary(other, "add", True)

    def __sub__(self, other: Any) -> Any:
        return self._binary(other, "sub", False)

    def __rsub__(self, other: Any) -> Any:
        return self._binary(other, "sub", True)

    def __mul__(self, other: Any) -> Any:
        return self._binary(other, "mul", False)

    def __rmul__(self, other: Any) -> Any:
        return self._binary(other, "mul", True)

    def __truediv__(self, other: Any) -> Any:
        return self._binary(other, "truediv", False)

    def __rtruediv__(self, other: Any) -> Any:
        return self._binary(other, "truediv", True)

    def __floordiv__(self, other: Any) -> Any:
        return self._binary(other, "floordiv", False)

    def __rfloordiv__(self, other: Any) -> Any:
        return self._binary(other, "floordiv", True)

    def __mod__(self, other: Any) -> Any:
        return self._binary(other, "mod", False)

    def __rmod__(self, other: Any) -> Any:
        return self._binary(other, "mod", True)

    def int_or_float(self) -> Tensor:
        """The values as arithmetic sees them: a bool as an int (``True + True == 2``)."""
        return self.t.long() if self.t.dtype == torch.bool else self.t

    def __neg__(self) -> "_Number":
        return self._wrap(-self.int_or_float())

    def __pos__(self) -> "_Number":
        return self._wrap(self.int_or_float())

    def __abs__(self) -> "_Number":
        return self._wrap(self.int_or_float().abs())

    def tensor(self, dtype: Optional[torch.dtype] = None) -> Tensor:
        """``torch.tensor(number)``: the dtype Python's float, int or bool would take."""
        if dtype is None:
            dtype = torch.get_default_dtype() if self.t.is_floating_point() else self.t.dtype
        return self.t.to(dtype)

    def __bool__(self) -> bool:
        truth = self.t if self.t.dtype == torch.bool else self.t != 0  # NaN is true, as Python's
        mode = self.mode
        if mode.path is None:  # the reference configuration, unbatched: its truth values recorded
            value = bool(truth)
            mode.reads.append(value)
            return value
        k = len(mode.off_path)
        if k >= len(mode.path):
            return self._escape("a branch the reference configuration did not take")
        value = mode.path[k]
        mode.off_path.append(truth != value)
        return value

    def _compare(self, other: Any, op: Callable[[Any, Any], Any]) -> Any:
        both = self._operands(other, "compare")
        if both is None:
            return NotImplemented
        a, b, as_int = both
        if not as_int:  # Python compares an int with a float exactly, float64 only below 2**53
            self.mode.bounded.extend(v.int_or_float() if isinstance(v, _Number) else v for v in (self, other)
                                     if isinstance(v, int) or isinstance(v, _Number) and not v.t.is_floating_point())
        return self._wrap(op(a, b))

    def __float__(self) -> float:
        return self._escape("`float()`")

    def __int__(self) -> int:
        return self._escape("`int()`")

    def __index__(self) -> int:
        return self._escape("an index")

    def __complex__(self) -> complex:
        return self._escape("`complex()`")

    def _integral(self, op: Callable[[Tensor], Tensor]) -> "_Number":
        """``round()``, ``math.floor``, ``math.ceil``, ``math.trunc``: Python's int. An int (or a
        bool) is itself; a float is rounded in float64 (``torch.round`` halves to even, as
        ``round()`` does), and where it is NaN or infinite (Python raises) or 2**62 or more (near
        the end of int64, where a Python int still holds it) ``fn`` is replayed on its own."""
        if not self.t.is_floating_point():
            return self._wrap(self.int_or_float())
        r = op(self.t)
        held = r.abs() < 2.0 ** 62  # false at NaN too
        self.mode.raising.append(~held)
        return self._wrap(torch.where(held, r, torch.zeros_like(r)).long())

    def __round__(self, ndigits: Any = None) -> Any:
        if ndigits is None:
            return self._integral(torch.round)
        if not self.t.is_floating_point() and type(ndigits) is int and ndigits >= 0:
            return self._wrap(self.int_or_float())  # an int rounded to digits after the point: itself
        return self._escape("`round()` with digits")  # Python rounds a float's decimal digits exactly

    def __floor__(self) -> "_Number":
        return self._integral(torch.floor)

    def __ceil__(self) -> "_Number":
        return self._integral(torch.ceil)

    def __trunc__(self) -> "_Number":
        return self._integral(torch.trunc)

    def __pow__(self, other: Any, mod: Any = None) -> Any:
        # an int to a power that is a Python int >= 0 is an int: exact in int64, and kept below 2**53
        # so that a division of it converts it to a float exactly, as Python's division of ints
        # rounds once (beyond, fn is replayed on its own); floats' powers round as C's pow does,
        # which torch's need not: those escape
        if mod is not None or self.t.is_floating_point() or type(other) not in (int, bool) or other < 0:
            return self._escape("`**`")
        a = self.int_or_float()
        held = a.double().abs() ** int(other) < 2.0 ** 53
        self.mode.raising.append(~held)
        return self._wrap(torch.where(held, a, torch.zeros_like(a)) ** int(other))

    def __rpow__(self, other: Any) -> Any:
        return self._escape("`**`")

    def __eq__(self, other: Any) -> Any:  # type: ignore[override]
        return self._compare(other, operator.eq)

    def __ne__(self, other: Any) -> Any:  # type: ignore[override]
        return self._compare(other, operator.ne)

    def __lt__(self, other: Any) -> Any:
        return self._compare(other, operator.lt)

    def __le__(self, other: Any) -> Any:
        return self._compare(other, operator.le)

    def __gt__(self, other: Any) -> Any:
        return self._compare(other, operator.gt)

    def __ge__(self, other: Any) -> Any:
        return self._compare(other, operator.ge)

    def __hash__(self) -> int:
        return self._escape("a hash")

    def __format__(self, spec: str) -> str:
        return self._escape("formatting")

    def __repr__(self) -> str:
        return "<a number read with .item() or .tolist(), batched over configurations>"

    def __getattr__(self, name: str) -> Any:
        # what a Python number lacks, it lacks (NumPy asks for `dtype`); what it has escapes
        if name.startswith("__") or not hasattr(float if self.t.is_floating_point() else int, name):
            raise AttributeError(name)
        return self._escape(f"`.{name}`")


class _Mode(TorchFunctionMode):
    """Runs ``fn``: traces it (``calls is None``) or replays it with ``payloads`` (site index ->
    decoded output of one anchor) in place of the traced discrete steps."""

    def __init__(self, fn: Any, scores: Tensor, calls: Optional[List[_Call]] = None,
                 payloads: Optional[Dict[int, Any]] = None, formatters: Optional[Dict[int, Any]] = None,
                 vmapped: bool = False, inputs: Sequence[Tensor] = (),
                 force: Optional[Dict[int, Tuple[Any, Callable[[Any, Tensor], Any]]]] = None,
                 numbers: bool = False, path: Optional[List[bool]] = None) -> None:
        super().__init__()
        self.fn = fn
        self.numbers = numbers  # a batched replay: .item() of the steps' results gives a _Number
        self.escaped = False  # a _Number used other than in arithmetic (its replay's values unused)
        self.why = ""  # the first such use
        self.raising: List[Tensor] = []  # where Python raises on a _Number (a divisor 0, round() of NaN)
        self.products: List[Tuple[Any, Any]] = []  # products of int _Numbers, to be below 2**53
        self.bounded: List[Any] = []  # ints divided by ints or compared with floats (tensors, Python ints), below 2**53
        # a _Number's truth values: None, the reference configuration's replay (recorded in reads);
        # else the ones it read, which the batched replay takes (off_path: where each differs)
        self.path: Optional[List[bool]] = path
        self.reads: List[bool] = []
        self.off_path: List[Tensor] = []
        self.force = force or {}  # a trace's step -> (payload, format): it returns that configuration's output
        self.info: Dict[int, _Info] = {id(scores): _Info(True, frozenset())}
        self.keep: List[Any] = [scores]
        self.logged: Dict[tuple, Tensor] = {}  # see _peel_rank: the tensors it makes, by what they look through
        self.tracing = calls is None
        self.calls: List[_Call] = [] if calls is None else calls
        self.payloads = payloads or {}
        self.formatters = formatters or {}
        self.vmapped = vmapped
        self.count = 0
        self.guards: Dict[int, str] = {}  # site -> where fn read it as a Python value
        self.last_read: frozenset = frozenset()  # the sites of the last value fn read so
        self.rec: Optional[_Recorder] = _Recorder() if self.tracing else None
        # A trace also records every operation fn runs (see _Graph): the operation, what its
        # arguments are (numbers as such, tensors as the operation that made them: _sig) and the
        # shapes it returns; `produced` maps a tensor to (operation, position) or ("in", k).
        self.events: Optional[List[list]] = [] if self.tracing else None
        self.produced: Dict[int, tuple] = {}
        self.objects: Dict[int, Any] = {}  # what fn used from outside its arguments, by id (kept alive)
        self.event = -1  # the operation being run
        if self.tracing:
            for k, t in enumerate([scores, *inputs]):
                self.produced.setdefault(id(t), ("in", k))
                self.keep.append(t)

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
        events = self.events
        if events is None:
            return self._handle(func, args, kwargs)
        index = len(events)
        produced, objects = self.produced, self.objects
        event = [func, tuple([_sig(a, produced, objects) for a in args]),
                 _sig(kwargs, produced, objects) if kwargs else None, None, False]
        events.append(event)
        self.event = index
        out = self._handle(func, args, kwargs)
        result = _written(func, args, out)
        event[4] = result is not out or (result is not None and _op_name(func) == "__setitem__")
        if isinstance(result, Tensor):
            produced[id(result)] = (index, -1)
            event[3] = result.shape
        elif isinstance(result, (tuple, list)):
            shapes = []
            for pos, o in enumerate(result):
                if isinstance(o, Tensor):
                    produced[id(o)] = (index, pos)
                    shapes.append(o.shape)
                else:
                    shapes.append(None)
            event[3] = tuple(shapes)
        self.keep.append(result)
        return out

    def _handle(self, func, args: Sequence, kwargs: Dict) -> Any:
        if self.numbers and _has_number(args, kwargs):
            return self._number_call(func, args, kwargs)
        infos = self._collect(args, kwargs)
        rec = self.rec
        if not infos:
            if rec is not None and rec.off is None and rec.steps and (
                    kwargs.get("out") is not None or _mutates(func, _op_name(func))):
                rec.write(_op_name(func), args, kwargs, recorded=False)
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
            if self.numbers and name in ("item", "tolist") and sites and not score and len(args) == 1 and \
                    not kwargs and not args[0].is_complex() and (name == "tolist" or args[0].numel() == 1):
                return self._numbers_of(args[0], name == "item")
            if self.numbers and name == "__bool__" and sites and not score and args[0].numel() == 1:
                return bool(self._numbers_of(args[0], True))  # a branch on a tensor: followed as on a number
            if score:
                hint = ""
                if name in ("numpy", "__array__", "tolist"):
                    hint = ("; a NumPy or scikit-learn metric of the scores themselves (roc_auc_score, "
                            "average_precision_score) has a zoo form (uniloss.zoo.auroc(), zoo.average_precision()), "
                            "or pass NumPy a step's output instead, `(s > 0).numpy()` or the ranks "
                            "`s.argsort().argsort().numpy()`, which from_metric follows by replaying fn (slow)")
                raise self._error(f"fn reads the scores' values as a Python value ({name}); only comparisons "
                                  f"of scores can be traced{hint}")
            if self.tracing and sites:
                where = None
                for s in sites:
                    if s not in self.guards:
                        where = where or _location(self.fn)
                        self.guards[s] = where
                self.last_read = sites
                if rec is not None:
                    rec.guard(name, [t for t in _walk_tensors((args, kwargs)) if getattr(self._get(t), "sites", None)])
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
        if rec is None or rec.off is not None:
            out = func(*args, **kwargs)
            self._tag(out, name, args, kwargs, score, sites)
            return out
        writes = kwargs.get("out") is not None or _mutates(func, name)  # (torch.norm passes out=None on)
        before = rec.write(name, args, kwargs, recorded=bool(sites), event=self.event) if writes else None
        out = func(*args, **kwargs)
        self._tag(out, name, args, kwargs, score, sites)
        if sites:
            if writes:
                rec.inplace(func, name, args, kwargs, before)
            else:
                rec.op(func, name, args, kwargs, out)
        return out

    def _numbers_of(self, x: Tensor, item: bool) -> Any:
        """``x.item()`` (``item``) or ``x.tolist()`` in a batched number replay: a :class:`_Number`,
        or nested lists of them, each in the dtype of the Python number it stands for."""
        kind = torch.float64 if x.is_floating_point() else torch.bool if x.dtype == torch.bool else torch.int64
        x = x.detach().to(kind)  # a tensor of its own, untracked: its truth value is read once (__bool__)
        if item or x.dim() == 0:
            return _Number(x, self)

        def nest(t: Tensor) -> Any:
            return [_Number(e, self) if e.dim() == 0 else nest(e) for e in t.unbind(0)]

        return nest(x)

    def _number_call(self, func, args: Sequence, kwargs: Dict) -> Any:
        """A torch function given a :class:`_Number`: ``torch.tensor(number)`` (and ``as_tensor``,
        ``scalar_tensor``) is its tensor in the dtype the Python number would take; anything else
        escapes (Python scalars and tensors promote differently)."""
        name = _op_name(func)
        if name in ("tensor", "as_tensor", "scalar_tensor") and len(args) == 1 \
                and set(kwargs) <= {"dtype", "device", "requires_grad"}:
            x, dtype = args[0], kwargs.get("dtype")
            out: Optional[Tensor] = None
            if isinstance(x, _Number):
                out = x.tensor(dtype)
            elif type(x) in (list, tuple) and x and name != "scalar_tensor" and \
                    all(isinstance(e, (_Number, int, float)) for e in x):
                # a flat list of numbers, in the dtype torch.tensor infers: a float among them gives
                # the default float dtype, else int64, bools alone bool
                if dtype is None:
                    kinds = [e.t.dtype if isinstance(e, _Number) else torch.bool if type(e) is bool else
                             torch.float64 if isinstance(e, float) else torch.int64 for e in x]
                    dtype = torch.get_default_dtype() if torch.float64 in kinds else \
                        torch.bool if all(k == torch.bool for k in kinds) else torch.int64
                out = torch.stack([e.tensor(dtype) if isinstance(e, _Number) else torch.tensor(e, dtype=dtype)
                                   for e in x])
            if out is not None:
                return out if kwargs.get("device") is None else out.to(kwargs["device"])
        return self.escape(f"a number read with .item() or .tolist() given to `{name}`")

    def escape(self, why: str) -> Any:
        """A :class:`_Number` used other than in arithmetic, comparisons and branches: the replay
        is marked (its values are not used, even where ``fn`` catches this) and says why."""
        self.escaped = True
        self.why = self.why or why
        raise _Escape(why)

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
                view = None
                if self.tracing and peel is None and len(outs) == 1 and name in _VIEWS and args and \
                        isinstance(args[0], Tensor) and not any(self._get(t) is not None
                                                                for t in _walk_tensors((args[1:], kwargs))):
                    view = (args[0], getattr(Tensor, name), tuple(args[1:]), dict(kwargs))
                self._set(o, _Info(True, sites, peel, view))

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
        if name in _SIGN_OPS:
            return self._sign(func, name, args, kwargs)
        if name in _EQ_OPS or name in _NONZERO_OPS or (name == "where" and len(args) + len(kwargs) == 1):
            if not self._permuted_scores(args, kwargs):
                raise self._error(f"fn applies `{name}` to the scores' values (an equality or nonzero test); "
                                  "only orderings and comparisons of scores can be traced")
            return self._frozen(func, name, args, kwargs)
        if name in ("round", "heaviside"):
            stepped = self._unit_step(func, name, args, kwargs)
            if stepped is not _NO:
                return stepped
        if name in _INPLACE_STEPS and name[:-1] in _SIGN_OPS | {"round", "heaviside"}:
            raise self._error(f"fn applies `{name}` to the scores in place; write it out of place "
                              f"(`y = x.{name[:-1]}(...)` instead of `x.{name}(...)`)")
        if name in _INPLACE_STEPS:
            name = name[:-1]
        if name in _DISCRETE_FLOAT_OPS:
            hint = _REWRITES.get(name, "")
            raise self._error(f"fn applies `{name}` to the scores, a discrete step from_metric does not know{hint}")
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
                                    _frames(self.fn), out=out, event=self.event))
            return out
        return call.out

    def _bincount(self, func, args: Sequence, kwargs: Dict, sites: frozenset) -> Any:
        """``bincount`` of discrete results: under vmap (no batching rule) a scatter-add of the
        traced output's size."""
        x = args[0]
        index, call = self._next("bincount", tuple(x.shape))
        if self.tracing:
            out = func(*args, **kwargs)
            self.calls.append(_Call("bincount", "bincount", tuple(x.shape), _frames(self.fn), out=out,
                                    event=self.event))
            cast(_Recorder, self.rec).bincount(index, self.calls[-1], args, kwargs, out)
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
            if index in self.force:  # traced on another configuration (TracedMetric._forced_tape)
                payload, format = self.force[index]
                return format(payload, x)
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
                k=k, keepdim=keepdim, flags=flags, event=self.event, views=self._views(x),
            ))
            cast(_Recorder, self.rec).site(index, self.calls[-1], out)
        self._tag_site(out, index, values)
        return out

    def _views(self, x: Tensor) -> tuple:
        """How ``x`` came from larger score tensors by moves with constants (``s.sigmoid()[:, i]``,
        a column of ``[n, L]`` scores, as torchmetrics' multi-label curves take it), through
        elementwise maps: ``((shape, moves), ...)``, each the moves that turn a tensor of that
        shape into ``x``'s, so that a target of the scores' shape gives each item's relevance."""
        out: List[tuple] = []
        moves: List[tuple] = []
        t = x
        for _ in range(64):
            info = self._get(t)
            if info is None:
                break
            if info.view is not None:
                parent, func, rest, kw = info.view
                moves.insert(0, (func, rest, kw))
                t = parent
                out.append((tuple(t.shape), tuple(moves)))
            elif info.peel is not None and isinstance(info.peel[1], Tensor) and info.peel[1].shape == t.shape:
                t = info.peel[1]  # an elementwise map: the same places
            else:
                break
        return tuple(out)

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
        (-1) in the returned tensor, elementwise (or along ``dim``, for softmax), so that a ranking
        compares the scores in their own units. Also under moves by constants (a column
        ``s.sigmoid()[:, i]``, a row of ``-s.sigmoid()``, as torchmetrics' multi-label curves and
        label rankings take logits): the returned tensor is then the same moves of the tensor
        looked through to, made here once per ``x``. A softmax over another dimension than the
        ranking's (a class's column of ``softmax(s, 1)`` ranked over the samples: torchmetrics'
        one-vs-rest curves), or under moves, is not monotone in its input, but each entry is the
        sigmoid of its one-vs-rest logit (:func:`_one_vs_rest`), which ranks the same in the
        scores' units, instead of probabilities, whose differences are at most 1 and vanish where
        a row saturates (a ``log_softmax``'s too: its differences vanish where ``p`` nears 1)."""
        moves: List[tuple] = []
        sign, peeled, t = 1, False, x
        for _ in range(256):
            # (a move by a tensor, a row filter from the target, is this run's: such a trace is not
            # re-run (_Graph), so its rankings are looked through anew each call)
            t, info = self._up(t, moves, by_tensors=True)
            if info is None or info.view is not None or info.peel is None:
                break
            op, parent, const = info.peel
            if op in _SOFTMAX:
                if moves or dim is None or const % t.dim() != dim:
                    if parent.shape[const] > 1:  # softmax or log_softmax: the same order
                        t, peeled = self._one_vs_rest(t, parent, const), True
                    break
            else:
                direction = _direction(op, const)
                if not direction:
                    break
                sign *= direction
            t, peeled = parent, True
        if not moves or not peeled:
            return (x if moves else t), sign
        return self._replay(x, t, moves, "moved"), sign

    def _up(self, t: Tensor, moves: List[tuple], by_tensors: bool) -> Tuple[Tensor, Optional[_Info]]:
        """From ``t`` up through the moves that made it (each put in front of ``moves``) to a
        tensor that is not a move, and its info; stops at a move by a tensor unless ``by_tensors``,
        and at ``contiguous`` returning itself (the info returned is then still a view's)."""
        for _ in range(256):
            info = self._get(t)
            if info is None or info.view is None:
                return t, info
            parent, func, rest, kw = info.view
            if parent is t or (not by_tensors and any(True for _ in _walk_tensors((rest, kw)))):
                return t, info
            moves.insert(0, (func, rest, kw))
            t = parent
        return t, None

    def _replay(self, x: Tensor, base: Tensor, moves: List[tuple], key: str) -> Tensor:
        """``moves`` (from :meth:`_up`) replayed on ``base``: made once per ``x`` and ``key``."""
        return self._cached((key, id(x)), x, lambda: _moved(base, moves))

    def _one_vs_rest(self, probs: Tensor, logits: Tensor, dim: int) -> Tensor:
        """``probs = softmax(logits, dim)`` (or its log) in the scores' units: each entry's
        one-vs-rest logit ``log(p / (1 - p))``, the logit less the log-sum-exp of the others along
        ``dim``, of which the probability is the sigmoid (two classes: ``s1 - s0``). Made once per
        ``probs``."""
        return self._cached(("one_vs_rest", id(probs)), probs, lambda: _one_vs_rest(logits, dim))

    def _cached(self, key: tuple, holder: Tensor, make: Callable[[], Tensor]) -> Tensor:
        """One tensor per key in a run (a ranking's base made by looking through: the same object
        for every step that ranks ``holder``, whose id the key holds and which is kept alive)."""
        if key not in self.logged:
            self.logged[key] = make()
            self.keep.append(holder)
        return self.logged[key]

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
        return self._element_step(func, name, args, kwargs, next(_tensors(args)), p, q, strict)

    def _element_step(self, func, name: str, args: Sequence, kwargs: Dict, first: Tensor, plus: Any, minus: Any,
                      strict: bool, **fields: Any) -> Any:
        """A step of comparisons per element (``plus > minus``, or ``>=``; ``fields``: the sign's
        two sides): its call recorded while tracing (looked through in ``finish()``, for the steps
        that are trained; an output that is not bool, round's or a sign's, keeps its dtype), its
        result ``fn``'s or a replay's."""
        index, call = self._next(name, tuple(first.shape))
        out = self._site_result(index, call, first, func, args, kwargs)
        if self.tracing:
            self.calls.append(_Call(name, "compare", tuple(first.shape), _frames(self.fn), out=out, plus=plus,
                                    minus=minus, strict=strict, out_shape=tuple(out.shape), event=self.event,
                                    out_dtype=None if out.dtype == torch.bool else out.dtype, **fields))
            cast(_Recorder, self.rec).site(index, self.calls[-1], out)
        self._tag_site(out, index, (False,))
        return out

    def _sign(self, func, name: str, args: Sequence, kwargs: Dict) -> Any:
        """``torch.sign(x)`` of the scores: the two comparisons ``x > 0`` and ``x < 0`` of each
        element, one step (:class:`_SignSite`); its output ``[x > 0] - [x < 0]`` as ``torch.sign``
        returns it, 0 where ``x`` is 0."""
        x = args[0] if args and isinstance(args[0], Tensor) else kwargs.get("input")
        if not isinstance(x, Tensor) or x.is_complex() or kwargs.get("out") is not None:
            raise self._error(f"fn applies `{name}` to the scores in a form from_metric does not know "
                              "(a complex tensor, or out=)")
        i = self._get(x)
        if i is not None and i.sites:
            raise self._error(f"fn takes the sign ({name}) of values that depend on the scores and on another "
                              "discrete step (e.g. scores masked by a comparison)")
        return self._element_step(func, name, args, kwargs, x, x, 0.0, True, two_sided=True)

    def _unit_step(self, func, name: str, args: Sequence, kwargs: Dict) -> Any:
        """``torch.round(p)`` of a probability of the scores (a sigmoid's or a softmax's output,
        in ``[0, 1]``): ``p > 0.5`` of each element (round half to even takes 0.5 to 0); and
        ``torch.heaviside(x, v)`` of the scores with a constant ``v`` of 0 or 1: ``x > 0`` or
        ``x >= 0``. One comparison per element (:class:`_CompareSite`), its output as the op
        returns it: 0. or 1. in ``x``'s dtype. ``_NO`` for any other form (the caller refuses it)."""
        x = args[0] if args and isinstance(args[0], Tensor) else kwargs.get("input")
        if not isinstance(x, Tensor) or not x.is_floating_point() or not self._score(x) or \
                kwargs.get("out") is not None:
            return _NO
        if name == "round":
            # (a replay takes the trace's decision: it does not follow the maps)
            if _arg(args, kwargs, 1, "decimals", 0) != 0 or (self.tracing and not self._probability(x)):
                return _NO
            threshold, strict = 0.5, True
        else:
            v = _arg(args, kwargs, 1, "values", None)
            if not isinstance(v, Tensor) or v.dim() != 0 or self._get(v) is not None or float(v) not in (0.0, 1.0):
                return _NO
            threshold, strict = 0.0, float(v) == 0.0
        i = self._get(x)
        if i is not None and i.sites:
            raise self._error(f"fn applies `{name}` to values that depend on the scores and on another discrete "
                              "step (e.g. scores masked by a comparison)")
        return self._element_step(func, name, args, kwargs, x, x, threshold, strict)

    def _probability(self, x: Tensor) -> bool:
        """Whether ``x`` is a sigmoid's or a softmax's output of the scores (looked through
        ``.float()``, ``.clone()`` and the like, and moves of its elements: a column
        ``softmax(s, 1)[:, 1]``): values in ``[0, 1]``."""
        t: Any = x
        for _ in range(64):
            info = self._get(t)
            if info is not None and info.view is not None:
                t = info.view[0]
                continue
            if info is None or info.peel is None:
                return False
            op, parent, _ = info.peel
            if op in _PROBABILITY_OPS:
                return True
            if op not in _IDENTITY_OPS:
                return False
            t = parent
        return False

    def _score(self, value: Any) -> bool:
        i = self._get(value) if isinstance(value, Tensor) else None
        return i is not None and i.score

    def _peel_compare(self, p: Any, q: Any, strict: bool) -> Tuple[Any, Any, bool]:
        """``p > q`` (or ``>=``) with one side a monotone map of the scores and the other a
        constant: move the map onto the constant while it has an inverse there. Both sides the
        same map of the scores: look through it on both (:meth:`_peel_both`)."""
        if self._score(p) and self._score(q):
            both = self._peel_both(p, q)
            if both is None:
                return p, q, strict
            p0, q0, decreasing = both
            return (q0, p0, strict) if decreasing else (p0, q0, strict)
        left = self._score(p) and not self._score(q)
        if not (left or (self._score(q) and not self._score(p))):
            return p, q, strict
        step = self._invert(*((p, q) if left else (q, p)))
        if step is None:
            return p, q, strict
        x0, t0, decreasing = step
        return (x0, t0, strict) if left != decreasing else (t0, x0, strict)  # where x0 goes

    def _peel_both(self, p: Tensor, q: Tensor) -> Optional[Tuple[Tensor, Tensor, bool]]:
        """``p > q`` with both sides the same strictly monotone elementwise map (``sigmoid(a) >
        sigmoid(b)``, also under moves by constants, and affine maps by the same number) as ``a > b``
        (``b > a`` where the maps decrease: ``decreasing``), and two entries of one row of a softmax
        (``softmax(s, 1)[:, 1] > softmax(s, 1)[:, 0]``, one normaliser) as the logits'. The moves are
        replayed on what the walk reaches, and a move by a tensor stops it."""
        moves_p: List[tuple] = []
        moves_q: List[tuple] = []
        a, b, decreasing, peeled = p, q, False, False
        for _ in range(256):
            a, ia = self._up(a, moves_p, by_tensors=False)
            b, ib = self._up(b, moves_q, by_tensors=False)
            if ia is None or ib is None or ia.view is not None or ib.view is not None or ia.peel is None \
                    or ib.peel is None or ia.peel[0] != ib.peel[0]:
                break
            (op, pa, ca), (_, pb, cb) = ia.peel, ib.peel
            if op in _SOFTMAX:
                if pa is not pb or ca != cb or not self._same_rows(pa, ca, moves_p, moves_q):
                    break
            else:
                # (not log or sqrt: log(a) > log(b) is False where a is negative, a > b need not be)
                direction = 0 if op in _PARTIAL else _direction(op, ca)
                if not direction or (op in _AFFINE_OPS and not (_scalar(cb) and float(ca) == float(cb))):
                    break
                decreasing ^= direction < 0
            a, b, peeled = pa, pb, True
        if not peeled:
            return None
        sides = []
        for x, base, moves, key in ((p, a, moves_p, "left"), (q, b, moves_q, "right")):
            if moves:
                base = self._replay(x, base, moves, key)
            if self._get(base) is None:
                self._set(base, _Info(True, frozenset()))
            sides.append(base)
        return sides[0], sides[1], decreasing

    @staticmethod
    def _same_rows(probs: Tensor, dim: int, *moves: List[tuple]) -> bool:
        """Each set of ``moves`` takes the elements of ``probs`` from the same rows along ``dim``
        (rows of one softmax, whose entries order as its logits do) at each place."""
        rows = torch.arange(probs.numel(), device=probs.device).reshape(probs.shape).narrow(dim, 0, 1)
        rows = rows.expand(probs.shape)
        try:
            left, right = torch.broadcast_tensors(*(_moved(rows, sequence) for sequence in moves))
        except RuntimeError:
            return False
        return bool(torch.equal(left, right))

    def _invert(self, x: Tensor, t: Any) -> Optional[Tuple[Tensor, Tensor, bool]]:
        """``x > t``, ``t`` a constant, as ``x0 > t0`` (``x0 < t0`` where decreasing): the maps from
        ``x0`` to ``x`` moved onto ``t``, through moves by constants and invertible maps together,
        the moves replayed on what the walk reaches (elementwise maps commute with them; a map by a
        tensor constant does not, and stops it), so that a threshold on a column of ``s.sigmoid()``
        compares the scores, as without the move. A softmax is not elementwise, but its entry is the sigmoid
        of its one-vs-rest logit (:func:`_one_vs_rest`), so ``softmax(y) > t`` is that logit against
        ``logit(t)`` for ``0 < t < 1`` (``log_softmax(y) > u``: against ``logit(exp(u))``): in the
        scores' units (of two classes, ``y1 - y0``), where probabilities differ by at most 1 and not
        at all where a row saturates, and where ``log_softmax`` would bound a right decision's
        comparison by ``-log t``. A move by a tensor (a row filter from the target) stops the walk,
        as it stops a re-run's."""
        moves: List[tuple] = []
        cur, tt, decreasing, peeled = x, t, False, False
        for _ in range(256):
            cur, info = self._up(cur, moves, by_tensors=False)
            if info is None or info.view is not None or info.peel is None:
                break
            op, parent, const = info.peel
            if op in _SOFTMAX:
                with torch.no_grad():  # the threshold as a probability
                    p = torch.as_tensor(tt, dtype=_wide(parent.device), device=parent.device)
                    p = p.exp() if "log" in op else p
                if parent.shape[const] < 2 or not bool(((p > 0) & (p < 1)).all()):
                    break  # (a threshold every probability is on one side of)
                cur, tt, peeled = self._one_vs_rest(cur, parent, const), torch.logit(p), True
                break
            if moves and not (const is None or _scalar(const)):
                break
            step = self._inverse(op, const, tt, parent.device)
            if step is None:
                break
            cur, (tt, flip), peeled = parent, step, True
            decreasing ^= flip
        if not peeled:
            return None
        if moves:
            cur = self._replay(x, cur, moves, "compared")
        if self._get(cur) is None:  # made here: a score tensor with nothing more to look through
            self._set(cur, _Info(True, frozenset()))
        return cur, torch.as_tensor(tt), decreasing

    def _inverse(self, op: str, const: Any, t: Any, device: torch.device) -> Optional[Tuple[Tensor, bool]]:
        """:meth:`_invert_constant`, kept for a threshold and constant given as Python numbers."""
        wide = _wide(device)
        key = None
        if type(t) in (int, float) and (const is None or type(const) in (int, float)) and \
                not torch.is_inference_mode_enabled():  # an inference tensor could not be used by autograd later
            key = (op, type(t), t, type(const), const, wide, device)
            if key in _INVERSES:  # the same threshold on every call (sigmoid(s) > 0.5): computed once
                return _INVERSES[key]
        step = self._invert_constant(op, const, t, device, wide)
        if key is not None:
            if len(_INVERSES) >= 1024:
                _INVERSES.clear()
            _INVERSES[key] = step
        return step

    @staticmethod
    def _invert_constant(op: str, const: Any, t: Any, device: torch.device, wide: torch.dtype
                         ) -> Optional[Tuple[Tensor, bool]]:
        """``(t0, decreasing)``: the threshold ``t`` of ``op(x, const) > t`` moved onto ``x``."""
        with torch.no_grad():
            tt = torch.as_tensor(t, dtype=wide, device=device)
            if op in _IDENTITY_OPS:
                return tt, False
            if op in _INCREASING:
                inverse, domain = _INCREASING[op]
                if domain is not None and not bool(domain(tt).all()):
                    return None
                return inverse(tt), False
            if op in _DECREASING:
                return -tt, True
            c = torch.as_tensor(const, dtype=wide, device=device)
            if op == "add":
                return tt - c, False
            if op == "sub":
                return tt + c, False
            if op == "rsub":
                return c - tt, True
            if op in ("mul", "div"):
                if bool((c == 0).any()) or not (bool((c > 0).all()) or bool((c < 0).all())):
                    return None
                return (tt / c if op == "mul" else tt * c), bool((c < 0).all())
        return None


_INVERSES: Dict[tuple, Optional[Tuple[Tensor, bool]]] = {}  # see _Mode._inverse


def _one_vs_rest(y: Tensor, dim: int) -> Tensor:
    """``log(p / (1 - p))`` of ``p = softmax(y, dim)``, stably: ``y`` less the log-sum-exp of the
    others along ``dim``. Every entry but a row's largest has ``p <= 1/2``, where ``log p -
    log(1 - p)`` loses nothing; the largest takes the others' log-sum-exp directly (its ``1 - p``
    rounds to 0 where the row saturates)."""
    ls = torch.log_softmax(y, dim).clamp(max=-math.log(2.0))  # the largest's replaced below
    out = ls - torch.log1p(-ls.exp())
    top = y.argmax(dim, keepdim=True)
    rest = y.scatter(dim, top, float("-inf")).logsumexp(dim, keepdim=True)
    return out.scatter(dim, top, y.gather(dim, top) - rest)


def _direction(op: str, const: Any) -> int:
    """1 (-1) where ``op`` (with ``const``, a number for an affine map) is a strictly increasing
    (decreasing) elementwise map, 0 where it is neither or not known to be."""
    if op in _INCREASING or op in _IDENTITY_OPS:
        return 1
    if op in _DECREASING:
        return -1
    if op not in _AFFINE_OPS or not _scalar(const):
        return 0
    if op in ("add", "sub"):
        return 1
    if op == "rsub":
        return -1
    c = float(const)  # mul, div
    return 0 if c == 0 else 1 if c > 0 else -1


def _moved(t: Tensor, moves: List[tuple]) -> Tensor:
    """``moves`` (``(func, args, kwargs)``, in order) applied to ``t``."""
    for func, rest, kw in moves:
        t = func(t, *rest, **kw)
    return t


def _wide(device: torch.device) -> torch.dtype:
    """The dtype of a threshold moved through a map: float64, float32 on Apple MPS (no float64)."""
    return torch.float32 if device.type == "mps" else torch.float64


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


def _num_outputs(call: _Call) -> int:
    """How many outputs a row of a categorical step chooses among."""
    return call.shape[call.dim] if call.dim is not None else math.prod(call.shape)


def _label_candidates(call: _Call, tensors: List[Tensor]) -> List[Tensor]:
    """Integer tensors shaped like one label per row, with values among the classes; then, from
    a tensor shaped like the scores whose every row is one entry above all the others, equal
    (one-hot or label-smoothed targets, read as ``y.argmax(1)``), that entry's place. Graded
    relevance is left to the ranking's site."""
    rows, num = _rows_shape(call), _num_outputs(call)
    out, rowwise = [], []
    for t in tensors:
        if call.dim is not None and t.numel() and not t.is_complex() and _fits(t, call.shape):
            v = t.reshape(call.shape).to(torch.float64)
            high, low = v.amax(call.dim, keepdim=True), v.amin(call.dim, keepdim=True)
            if bool(torch.isfinite(v).all()) and bool(((v == high) | (v == low)).all()) and \
                    bool(((v == high).sum(call.dim) == 1).all()) and bool((high > low).all()):
                rowwise.append(v.argmax(call.dim))
        if not _fits(t, rows) or t.is_complex() or t.dtype == torch.bool:
            continue
        if t.is_floating_point():  # class indices stored as floats (loaded from an array): whole numbers
            if not bool((torch.isfinite(t) & (t == t.round())).all()):
                continue
            t = t.long()
        if t.numel() == 0 or (int(t.min()) >= 0 and int(t.max()) < num):
            out.append(t.reshape(rows))
    return out + rowwise


def _ignored_label_candidates(call: _Call, tensors: List[Tensor]) -> List[Tuple[Tensor, Tensor]]:
    """Integer tensors shaped like one label per row whose values are among the classes but for
    one other value (an ignore index: 255, -100): ``(labels, ignored)``, the ignored rows' labels
    set to 0."""
    rows, num = _rows_shape(call), _num_outputs(call)
    out = []
    for t in tensors:
        if not _fits(t, rows) or t.numel() == 0 or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            continue
        t = t.reshape(rows)
        ignored = (t < 0) | (t >= num)
        if bool(ignored.any()) and not bool(ignored.all()) and torch.unique(t[ignored]).numel() == 1:
            out.append((torch.where(ignored, 0, t), ignored))
    return out


def _relevance_candidates(call: _Call, tensors: List[Tensor]) -> List[Tensor]:
    """Tensors shaped like the ranked scores and finite: a relevance per item (where it is
    negative somewhere, only its order counts: two values as 0/1, -1/+1 labels; more, a regression
    target, moved to a least value of 0); where none
    is, the target's tensors moved as the scores were before the ranking (``call.views``: a
    label's column of a multi-label target)."""
    varied: List[Tensor] = []
    constant: List[Tensor] = []
    fitting = [t for t in tensors if _fits(t, call.shape)]
    if not fitting:
        for shape, moves in call.views:
            for t in tensors:
                if tuple(t.shape) != shape:
                    continue
                moved: Any = t
                try:
                    for func, rest, kw in moves:
                        moved = func(moved, *rest, **kw)
                except (RuntimeError, IndexError, TypeError):  # e.g. view() of a non-contiguous target
                    continue
                if isinstance(moved, Tensor) and _fits(moved, call.shape):
                    fitting.append(moved)
    for t in fitting:
        if t.is_complex() or t.numel() == 0:
            continue
        v = t.double() if t.dtype != torch.bool else t.long()
        if bool(torch.isfinite(v).all()):
            low = float(v.min())
            if low < 0:  # only its order counts: -1/+1 labels as 0/1 (a binary ranking), else moved to >= 0
                t = (t == t.max()).to(t.dtype) if torch.unique(v).numel() == 2 else t - t.min()
            # a constant relevance (a batch without positives) ranks nothing: no comparisons
            (varied if float(v.max()) > low else constant).append(t.reshape(call.shape))
    return varied + constant


_GRADES = 64  # the most grades of a relevance whose each grade alone on top the first call tries


def _graded(relevance: Tensor, choice: dict) -> Tensor:
    """A ranking's relevance as its site's decision reads it: one grade on top and the others
    alike (``relevance == grade``) where the first call found that better, else as it is."""
    return relevance == choice["grade"] if "grade" in choice else relevance


def _binary_candidates(call: _Call, tensors: List[Tensor]) -> List[Tensor]:
    """0/1 tensors of the output's shape, then those whose shape begins it (one target per
    sample, compared with several thresholds), expanded to it; a target of -1/+1 labels (the
    margin losses' convention) as ``t > 0``, and one of two other values (smoothed labels, 0.1
    and 0.9) as where it holds the higher."""
    exact, prefix = [], []
    shape = call.out_shape
    for t in tensors:
        if _fits(t, shape):
            t = t.reshape(shape)
        if t.is_complex() or t.dim() == 0 or tuple(t.shape) != shape[: t.dim()]:
            continue
        if not (t.dtype == torch.bool or t.numel() == 0 or bool(((t == 0) | (t == 1)).all())):
            if bool(((t == -1) | (t == 1)).all()):
                t = t > 0
            else:
                values = torch.unique(t)
                if values.numel() != 2 or not bool(torch.isfinite(values).all()):
                    continue
                t = t == values[1]
        if t.dim() == len(shape):
            exact.append(t)
        else:
            prefix.append(t.reshape(tuple(t.shape) + (1,) * (len(shape) - t.dim())).expand(shape))
    return exact + prefix


class _Site:
    """A discrete step whose comparisons are trained. Built per call from its traced ``_Call``;
    each kind of step (class index, ranking, comparison, probe) implements the methods it takes part
    in (a probe site only formats; a ranking's hard output is never asked for), and the others say
    so by raising."""

    call: _Call
    index: int
    num_bits: int

    def comparisons(self) -> Tensor:
        """The step's ``[num_bits]`` comparisons, differentiable in the scores."""
        raise NotImplementedError(f"{type(self).__name__} has no comparisons()")

    def best(self) -> Tensor:
        """The ``[num_bits]`` bool best configuration."""
        raise NotImplementedError(f"{type(self).__name__} has no best()")

    def runs(self) -> Optional[Tensor]:
        """``[S]`` run lengths (each > 0) whose 0-bit counts alone decide the decoded output, or
        ``None``."""
        return None

    def width(self) -> Optional[int]:
        """The length of every run, where all are equally long (``None`` otherwise)."""
        return None

    def num_runs(self) -> int:
        return self._lengths().numel()

    def samples(self) -> Optional[int]:
        """How many samples the step's runs are drawn from (the pull per run is divided by the
        larger of this, summed over the steps, and the runs), ``None`` where unknown (the batch size
        then)."""
        return None

    def _lengths(self) -> Tensor:
        lengths = self.runs()
        if lengths is None:
            raise RuntimeError(f"{type(self).__name__} has no runs of bits")
        return lengths

    def decode(self, bits: Tensor) -> Any:
        """The decoded outputs (payloads) of ``[t, num_bits]`` bit configurations."""
        raise NotImplementedError(f"{type(self).__name__} has no decode()")

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
        raise NotImplementedError(f"{type(self).__name__} has no hard_payload()")

    def format(self, payload: Any, x: Tensor) -> Any:
        """What the intercepted operation returns, from one anchor's payload."""
        raise NotImplementedError(f"{type(self).__name__} has no format()")

    def format_batched(self, payload: Any, x: Tensor) -> Any:
        """:meth:`format` for a batch of payloads (a leading anchor dimension)."""
        return torch.func.vmap(lambda p: self.format(p, x))(payload)


def _past_2_53(products: List[Tuple[Any, Any]], bounded: List[Any]) -> Tensor:
    """Whether one of ``products`` (pairs of int tensors or Python ints), or of ``bounded`` (the
    same), is 2**53 or more in magnitude: where int64 may have wrapped, or a division rounded
    twice."""
    device = next(v for v in [*bounded, *(v for pair in products for v in pair)] if isinstance(v, Tensor)).device \
        if products or bounded else None

    def double(v: Any) -> Tensor:
        return v.double().reshape(()) if isinstance(v, Tensor) else torch.tensor(float(v), dtype=torch.float64,
                                                                                 device=device)

    big = torch.zeros((), dtype=torch.bool, device=device)
    if products:
        wide = torch.stack([double(a) for a, _ in products]) * torch.stack([double(b) for _, b in products])
        big = big | (wide.abs() >= 2.0 ** 53).any()
    if bounded:
        big = big | (torch.stack([double(v) for v in bounded]).abs() >= 2.0 ** 53).any()
    return big


def _is_number(x: Any) -> bool:
    """A real Python or NumPy number other than a bool: what ``fn`` returns where it reads its
    counts with ``.item()`` (``correct / total``) or calls a NumPy metric."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and not isinstance(x, Tensor)


def _number_value(x: Any) -> Tensor:
    """``fn``'s Python number as a float64 scalar (a Python float is a double: nothing rounded)."""
    return torch.tensor(float(x), dtype=torch.float64)


def _out_indices(call: _Call) -> Tensor:
    out = call.out
    return out[1] if isinstance(out, tuple) else out


class _ClassSite(_Site):
    """``argmax``/``argmin``/``max``/``min`` over a dimension (and ``topk`` with labels): one
    categorical output per row. With ``labels``: :class:`~uniloss.decoders.Argmax` with
    ``pairs="target"`` (the label against every other class); with ``positive`` (a ``[N, C]``
    mask of the outputs best for each row, found by probing): every positive against every
    negative of its row, as :class:`uniloss.PCK`. ``ignoring``: ``(labels, ignored)`` where that
    mask was built from labels with an ignore index instead (spot-checked on the first call)."""

    def __init__(self, call: _Call, index: int, labels: Optional[Tensor] = None,
                 positive: Optional[Tensor] = None, ignoring: Optional[Tuple[Tensor, Tensor]] = None) -> None:
        self.call, self.index, self.ignoring = call, index, ignoring
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
            if call.k is not None and self.plan.cols is not None:  # topk: every other class, ranked
                self.plan = replace(self.plan, ranked=ranked_others(detached, self.plan.cols))
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
        self.sets = set_pairs(pos, self.active, c)
        self.num_bits = self.sets.pairs()[0].numel()
        self.ranks = set_ranks(rows[self.active], pos, self.sets)
        self.current = rows.argmax(1)

    def comparisons(self) -> Tensor:
        if self.mode == "label":
            return self.decoder.comparisons(self.rows, self.plan)
        return self.sets.comparisons(self.rows)

    def best(self) -> Tensor:
        if self.mode == "label":
            return self.decoder.best(self.plan)
        return torch.ones(self.num_bits, dtype=torch.bool, device=self.rows.device)

    def runs(self) -> Optional[Tensor]:
        if self.mode == "label":
            if self.num_bits == 0:
                return self.rows.new_zeros(0, dtype=torch.long)
            return torch.full((self.num_rows,), self.num_classes - 1, dtype=torch.long, device=self.rows.device)
        return self.sets.run_lengths()

    def width(self) -> Optional[int]:
        return self.num_classes - 1 if self.mode == "label" and self.num_bits else None

    def num_runs(self) -> int:
        if self.mode == "label":
            return self.num_rows if self.num_bits else 0
        return self.sets.pos_row.numel()

    def samples(self) -> int:
        return self.num_runs()  # the rows with comparisons (not those an ignore index leaves out), as CE counts

    def decode_zeros(self, zeros: Tensor) -> Any:
        if self.mode == "label" and self.call.k is not None:
            return self._top_k(zeros.to(torch.long))  # a run's 0-bit count is its label's losses
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
        label = decode_sets(bits, self.sets, self.ranks)
        out = self.current.expand(t, -1).clone()
        out[:, self.active] = label
        return out

    def decode(self, bits: Tensor) -> Tensor:
        if self.call.k is None:
            return self.labels(bits).reshape((bits.shape[0],) + self.rows_shape)
        t = bits.shape[0]
        return self._top_k((~bits).reshape(t, self.num_rows, self.num_classes - 1).sum(-1))

    def _top_k(self, losses: Tensor) -> Tensor:
        """``topk`` with labels, ``[t, *rows, k]`` indices from ``losses [t, N]`` (how many other
        classes beat each row's label): the label at its place among the current ranking of the
        others."""
        t, k = losses.shape[0], cast(int, self.call.k)
        ranked = cast(Tensor, self.plan.ranked)  # [N, C-1], best first by the current scores
        slot = torch.arange(k, device=losses.device)
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

    def format_batched(self, payload: Tensor, x: Tensor) -> Any:
        return _format_class_batched(self.call, payload, x)


def _format_class_batched(call: _Call, payload: Tensor, x: Tensor) -> Any:
    """:func:`_format_class` for payloads with a leading anchor dimension."""
    t, d = payload.shape[0], call.axis + 1
    if call.k is not None:
        idx = payload.movedim(-1, d)
        return torch.return_types.topk((_lead(x, t).gather(d, idx), idx))
    if call.name in ("argmax", "argmin"):
        return payload.reshape((t,) + tuple(call.out.shape))
    idx = payload.unsqueeze(d)
    values = _lead(x, t).gather(d, idx)
    if not call.keepdim:
        idx, values = idx.squeeze(d), values.squeeze(d)
    kind = torch.return_types.max if call.name == "max" else torch.return_types.min
    return kind((values, idx))


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

    def samples(self) -> int:
        return self.flat.numel()  # the items of every query (a column per label: n L, as the zoo's form counts)

    def decode_zeros(self, zeros: Tensor) -> Tuple[Tensor, Tensor]:
        if self.binary:
            return self._binary_payload(zeros.to(torch.long))
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

    def _binary_payload(self, above: Tensor) -> Tuple[Tensor, Tensor]:
        """:meth:`_payload` of :meth:`_binary_ranks`, without its search for the free slots: the
        j-th irrelevant item (index order) follows the relevant ones with at most j irrelevant
        items above them, so it sits at slot ``j + #{k: count_k <= j}``."""
        if self.num_bits == 0:
            return self._payload(self._binary_ranks(above))
        t, n, device = above.shape[0], self.items, above.device
        num_pos, num_neg = self.pos.numel(), self.neg.numel()
        counts, order = above.sort(dim=1, stable=True)
        pos_items = self.pos[order]
        pos_slots = counts + torch.arange(num_pos, device=device)
        js = torch.arange(num_neg, device=device)
        neg_slots = js + torch.searchsorted(counts, js.expand(t, num_neg).contiguous(), right=True)
        neg_items = self.neg.expand(t, num_neg)
        ranks = torch.empty(t, n, dtype=torch.long, device=device)
        ranks.scatter_(1, pos_items, pos_slots).scatter_(1, neg_items, neg_slots)
        items = torch.empty(t, n, dtype=torch.long, device=device)
        items.scatter_(1, pos_slots, pos_items).scatter_(1, neg_slots, neg_items)
        return self._payload(ranks, items)

    def _payload(self, ranks: Tensor, order: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        t, n = ranks.shape[0], self.items
        ranks = ranks.reshape(t, -1, n)
        if order is None:
            order = torch.empty_like(ranks).scatter_(2, ranks, torch.arange(n, device=ranks.device).expand_as(ranks))
        else:
            order = order.reshape(t, -1, n)
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

    def format_batched(self, payload: Tuple[Tensor, Tensor], x: Tensor) -> Any:
        call = self.call
        order, ranks = payload
        t = order.shape[0]
        if call.name == "unique":
            values = x.reshape(-1)[order.reshape(t, -1)]
            extra = []
            if call.flags[0]:
                extra.append(ranks.reshape((t,) + tuple(x.shape)))
            if call.flags[1]:
                extra.append(torch.ones_like(ranks.reshape(t, -1)))
            return values if not extra else tuple([values] + extra)
        if call.dim is None:
            return order.reshape(t, -1)[:, 0].reshape((t,) + tuple(call.out.shape))
        d = call.dim + 1
        idx = order.movedim(-1, d)
        if call.name == "argsort":
            return idx
        if call.name in ("sort", "msort"):
            values = _lead(x, t).gather(d, idx)
            return values if call.name == "msort" else torch.return_types.sort((values, idx))
        if call.name == "topk":
            idx = idx.narrow(d, 0, call.k if call.k is not None else 1)
            return torch.return_types.topk((_lead(x, t).gather(d, idx), idx))
        top = idx.narrow(d, 0, 1)
        if call.name in ("argmax", "argmin"):
            return top.reshape((t,) + tuple(call.out.shape))
        values = _lead(x, t).gather(d, top)
        if not call.keepdim:
            top, values = top.squeeze(d), values.squeeze(d)
        kind = torch.return_types.max if call.name == "max" else torch.return_types.min
        return kind((values, top))


class _ElementSite(_Site):
    """A step with comparisons of each element of its (broadcast) output, ``p - q`` (``call.plus``,
    ``call.minus``; ``> 0`` right), each a run of its own, its output the decoded bits as they are
    (:class:`_CompareSite`, :class:`_SignSite`)."""

    def __init__(self, call: _Call, index: int, num_bits: int, best_bits: Tensor) -> None:
        self.call, self.index = call, index
        self.shape = call.out_shape
        self.size = math.prod(self.shape)
        self.num_bits = num_bits
        self.best_bits = best_bits

    def differences(self) -> Tensor:
        """``[size]``: ``p - q`` of each element, in the scores' dtype."""
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

    def samples(self) -> int:
        return self.size  # each element compared

    def decode_zeros(self, zeros: Tensor) -> Tensor:
        return self.decode(zeros == 0)

    def hard_payload(self) -> Tensor:
        return self.call.out

    def format(self, payload: Tensor, x: Tensor) -> Tensor:
        return _as_output(self.call, payload)

    def format_batched(self, payload: Tensor, x: Tensor) -> Tensor:
        return _as_output(self.call, payload)

    def configurations(self) -> Tensor:
        """The output at each configuration of an element's ``B`` comparisons (``2^B`` rows, row
        ``r``: comparison ``b`` right where bit ``b`` of ``r`` is set, wrong elsewhere), every
        element alike: what :func:`_chain_by_sums` takes with the comparisons' places as
        ``[B, size]``."""
        per = self.num_bits // self.size
        device = self.best_bits.device
        right = (torch.arange(1 << per, device=device)[:, None] >> torch.arange(per, device=device)) & 1
        return self.decode(torch.where(right.bool().repeat_interleave(self.size, 1), self.best_bits, ~self.best_bits))


def _as_output(call: _Call, payload: Tensor) -> Tensor:
    """A comparison's decoded output as ``fn``'s step returned it: bool, or 0./1. in the dtype of
    ``torch.round``'s and ``torch.heaviside``'s results (``call.out_dtype``; a sign's decodes to its
    dtype already)."""
    return payload if call.out_dtype is None else payload.to(call.out_dtype)


class _CompareSite(_ElementSite):
    """``p > q`` (or ``>=``, ``<``, ``<=``) with the scores on one side or both: one comparison
    per element of the (broadcast) output; the best output from a 0/1 tensor of the target of
    that shape, or from probing."""

    def __init__(self, call: _Call, index: int, best_out: Tensor) -> None:
        super().__init__(call, index, math.prod(call.out_shape), (best_out.reshape(-1) != 0) ^ call.negate)

    def comparisons(self) -> Tensor:
        return self.differences()

    def decode(self, bits: Tensor) -> Tensor:
        out = bits ^ self.call.negate
        return out.reshape((bits.shape[0],) + self.shape)


class _SignSite(_ElementSite):
    """``torch.sign(p - q)`` of the scores (``sign(x)``: ``p = x``, ``q = 0``): two comparisons per
    element of the output, ``p > q`` then ``p < q`` (the first ``m`` bits, then the next ``m``),
    decoded to ``[p > q] - [p < q]`` in the output's dtype: ``-1``, ``0`` (both bits or neither;
    a tie) or ``1``, as ``torch.sign`` returns it. The best output of each element, found by
    probing ``fn`` at each of the three values, decides both bits (``1``: ``(1, 0)``; ``-1``:
    ``(0, 1)``; ``0``: ``(0, 0)``)."""

    def __init__(self, call: _Call, index: int, best_bits: Tensor) -> None:
        super().__init__(call, index, 2 * math.prod(call.out_shape), best_bits)

    def comparisons(self) -> Tensor:
        c = self.differences()
        return torch.cat([c, -c])

    def decode(self, bits: Tensor) -> Tensor:
        dtype = self.call.out.dtype
        out = bits[:, : self.size].to(dtype) - bits[:, self.size:].to(dtype)
        return out.reshape((bits.shape[0],) + self.shape)


# --------------------------------------------------------------------------- the decomposition


@dataclass
class _Trace:
    calls: List[_Call]
    value: Tensor
    trained: List[int]
    guards: Dict[int, str]
    aliases: Dict[int, int]  # a step repeated on the same tensor -> its first occurrence
    tape: Optional[_Tape] = None  # the part of fn the anchors change, replayed in place of fn
    why_no_tape: Optional[str] = None
    forced: bool = False  # the tape is that of fn traced again halfway along (TracedMetric._adopt_forced_tape)

    @property
    def branches(self) -> bool:
        """Whether fn reads a trained step's results as Python values (vmap cannot batch it)."""
        return any(s in self.guards for s in self.trained)


def _operand_key(value: Any) -> Any:
    if isinstance(value, Tensor) and value.numel() != 1:
        return ("tensor", id(value))
    if isinstance(value, Tensor) and value.requires_grad:
        return ("tensor", id(value))
    return ("number", float(value))


def _step_key(call: _Call) -> tuple:
    """Steps with equal keys take the same decision on the same values (``s.argmax(1)`` twice)."""
    if call.kind == "compare":
        return ("compare", _operand_key(call.plus), _operand_key(call.minus), call.negate, call.out_shape,
                call.two_sided, call.out_dtype)
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
    key: tuple = ()  # the structure of this call (see TracedMetric._signature)
    tape: str = "off"  # how the tape replays: "direct", "vmap", "check" (each, against fn) or "off"


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

    # batch_metric reads a value the plan already holds: the engine reports it at once rather than
    # keep the plan until last.metric is read (see functional.with_exact_metric).
    _batch_metric_is_cheap = True

    def __init__(self, fn: Callable[[Tensor, Any], Tensor], *, higher_is_better: bool = True,
                 batched: str = "auto", probe_limit: int = 1 << 16) -> None:
        if not callable(fn):
            raise TypeError(f"Expected `fn` to be callable (scores, target) -> scalar tensor, but got {type(fn).__name__}")
        if isinstance(fn, torch.nn.Module) and hasattr(fn, "update") and hasattr(fn, "compute"):
            functional = _functional_form(fn)
            raise TypeError(
                f"Expected `fn` to be a stateless function (scores, target) -> scalar tensor, but got the stateful "
                f"metric object {type(fn).__name__}, which from_metric's replays would update: pass its functional "
                + (f"form with the object's arguments, functools.partial({functional}, ...)" if functional else
                   "form (e.g. torchmetrics.functional.classification.multiclass_accuracy)"))
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
        self._tapes: Dict[tuple, str] = {}  # structure -> how its tape replays: "direct", "vmap" or "off"
        self._sums: Dict[tuple, bool] = {}  # structure -> whether its chain through sums gave fn's values
        self._probes: Dict[tuple, bool] = {}  # (structure, step) -> whether its probes through sums did
        self._others: Dict[tuple, Any] = {}  # structure -> its forced traces' checks: a count, True or False
        # structure (replayed at every configuration) -> whether one replay batched with vmap, the
        # numbers fn reads with .item() carried as tensors (_Number), gives fn's values
        self._numbers: Dict[tuple, bool] = {}
        self._straight: Dict[tuple, bool] = {}  # structure -> its last reference replay read no truth value
        self._escapes: Dict[tuple, str] = {}  # structure -> what stopped its numbers' batched replay
        self._graphs: Dict[tuple, _Graph] = {}  # input shapes -> the last trace of fn on them
        self._unsaid: List[Any] = []  # warnings of fn's replays held while a tape stood in for them
        self._reruns_failed: Dict[tuple, int] = {}
        self._warned_branches = False  # fn's branches on its steps replayed whole: said once
        self._held_warnings: Optional[List[str]] = None  # while preparing: what _other_paths would say

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
        """What ``fn`` does on these tensors: from a re-run of ``fn`` that checks it takes the
        operations of an earlier trace with the same input shapes (:class:`_Rerun`), else from
        tracing it."""
        tensors = _target_tensors(target)
        inputs = [scores] + tensors
        key = _input_key(inputs)
        graph = self._graphs.get(key)
        if graph is not None:
            trace = self._rerun(graph, scores, target, inputs)
            if trace is not None:
                self._reruns_failed.pop(key, None)
                return trace
            self._reruns_failed[key] = self._reruns_failed.get(key, 0) + 1
        trace, graph = self._full_trace(scores, target, tensors)
        if self._reruns_failed.get(key, 0) >= 3:  # fn does not repeat itself (e.g. new objects each call)
            self._graphs.pop(key, None)
        elif graph is not None:
            if len(self._graphs) >= 16:
                self._graphs.clear()
            self._graphs[key] = graph
        return trace

    def _rerun(self, graph: _Graph, scores: Tensor, target: Any, inputs: List[Tensor]) -> Optional[_Trace]:
        mode = _Rerun(graph, inputs)
        with mode:
            out = self.fn(scores, target)
        if mode.diverged or mode.count != len(graph.events) or not isinstance(out, Tensor) or \
                mode.produced.get(id(out)) != graph.out:
            return None
        resolve = mode.resolve
        calls = []
        for static, refs in graph.calls:
            call = copy.copy(static)
            for field, ref in refs.items():
                setattr(call, field, resolve(ref))
            calls.append(call)
        if graph.finished:
            looking = _Mode(self.fn, scores, calls=[])
            for ref, score, peel, view in graph.chains:
                t = resolve(ref)
                if peel is not None:
                    op, parent, const = peel
                    peel = (op, resolve(parent), resolve(const.ref) if isinstance(const, _Static) else const)
                if view is not None:
                    view = (resolve(view[0]),) + tuple(view[1:])
                looking.info[id(t)] = _Info(score, frozenset(), peel, view)
                looking.keep.append(t)
            for s in graph.finished:
                looking.finish(calls[s])
        tape = graph.program.instantiate(resolve, calls) if graph.program is not None else None
        return _Trace(calls, out.detach().reshape(()), graph.trained, graph.guards, graph.aliases, tape,
                      graph.why_no_tape)

    def _full_trace(self, scores: Tensor, target: Any, tensors: List[Tensor]) -> Tuple[_Trace, Optional[_Graph]]:
        out, mode = self._run(scores, target, inputs=tensors)
        number = type(out).__name__ if _is_number(out) else None
        if number:  # `correct / total` of a count read with .item(): fn replayed where it turns
            out = _number_value(out)
        elif not isinstance(out, Tensor):
            raise TraceError(f"Expected `fn` to return a tensor or a Python number, but it returned "
                             f"{type(out).__name__}. {_MANUAL}")
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
        if not sites and mode.guards:
            # A value chosen by Python control flow on discrete steps without computing it from them
            # (the Matthews correlation's `return tensor(1.0)` on a batch all right; a count read
            # with int()): it depends on the steps of the last value read so, through the branch
            # taken there (earlier reads: validation, `if not torch.all((s >= 0) * (s <= 1))`, held);
            # fn replayed gives it at each configuration.
            sites = {s for s in mode.last_read if calls[s].kind in ("rank", "compare")}
        both = sorted(s for s in sites if s in mode.guards)
        trained: List[int] = []
        aliases: Dict[int, int] = {}
        first: Dict[tuple, int] = {}
        raw = [(c.out, c.x, c.plus, c.minus) for c in calls]  # before looking through monotone maps
        finished = sorted(s for s in sites if calls[s].kind in ("rank", "compare"))
        for s in finished:
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
        rec = cast(_Recorder, mode.rec)
        tape = rec.compile(out, set(trained) | set(aliases))
        why = None if tape is not None else (rec.off or "fn's value is not computed by the recorded operations")
        if both and (tape is None or rec.unchecked):
            # Python control flow on a step that feeds the value, which the tape cannot check at each
            # configuration (Tape.held): fn traced again on the other side of the branch, or replayed
            # there (_other_paths, which warns where it replays many)
            if number:
                why = f"fn returns a Python number ({number}), made from values it read in Python"
            elif info is None or not info.sites:
                why = ("on these scores fn's value is not computed from its steps in tensors (a constant a branch "
                       "returns, or a tensor made from numbers read in Python)")
            tape, why = None, rec.unchecked or why
        trace = _Trace(calls, out.detach().reshape(()), trained, mode.guards, aliases, tape, why)
        return trace, self._graph(mode, out, trace, raw, finished)

    def _graph(self, mode: _Mode, out: Tensor, trace: _Trace, raw: List[tuple], finished: List[int]
               ) -> Optional[_Graph]:
        """The trace in terms of the operations fn ran (see :class:`_Graph`), or ``None``."""
        produced, objects = mode.produced, dict(mode.objects)
        snapshots = cast(_Recorder, mode.rec).snapshots

        def ref(t: Tensor) -> tuple:
            r = produced.get(id(t))
            if r is not None:
                return r
            if id(t) in snapshots:
                return ("snap", snapshots[id(t)])
            objects[id(t)] = t
            return ("obj", id(t))

        out_ref = produced.get(id(out))
        if out_ref is None or mode.events is None:
            return None
        if any(True for call in trace.calls for _, moves in call.views for move in moves
               for _ in _walk_tensors(move[1:])):
            return None  # a move by a tensor of this call (a row filter from the target): traced anew each call
        templates = []
        for call, (c_out, c_x, c_plus, c_minus) in zip(trace.calls, raw):
            static = copy.copy(call)
            refs = {"out": (call.event, None)}
            static.out, static.base = None, None
            for field, value in (("x", c_x), ("plus", c_plus), ("minus", c_minus)):
                if isinstance(value, Tensor):
                    refs[field] = ref(value)
                    setattr(static, field, None)
                else:
                    setattr(static, field, value)
            templates.append((static, refs))
        chains: Dict[int, tuple] = {}
        starts = []
        for s in finished:
            starts += [raw[s][1]] if trace.calls[s].kind == "rank" else [raw[s][2], raw[s][3]]
        while starts:
            t = starts.pop()
            if not isinstance(t, Tensor) or id(t) in chains:
                continue
            info = mode._get(t)
            if info is None:
                continue
            peel, view = info.peel, info.view
            if peel is not None:
                op, parent, const = peel
                peel = (op, ref(parent), _Static(ref(const)) if isinstance(const, Tensor) else const)
                starts.append(parent)
            if view is not None and any(True for _ in _walk_tensors(view[2:])):
                view = None  # a move by a tensor: not re-run (checked above), nothing to refer to
            if view is not None:  # moves by constants: a column of sigmoid(s) or of softmax(s, 1) (_peel_rank)
                parent, func, rest, kw = view
                view = (ref(parent), func, rest, kw)
                starts.append(parent)
            chains[id(t)] = (ref(t), info.score, peel, view)
        derived = cast(_Recorder, mode.rec).derived
        for step in trace.tape.steps if trace.tape is not None and derived else ():
            live = {i for i, _ in step.fills}
            held = [a for i, a in enumerate(step.args) if i not in live] + list(step.kwargs.values()) + \
                [t for _, t in step.nested]
            if any(id(t) in derived for t in _walk_tensors(held)):
                return None  # a part of a recorded operation (_Recorder._trapezoid) held: no reference to it
        program = _TapeProgram(trace.tape, ref) if trace.tape is not None else None
        return _Graph(mode.events, out_ref, objects, frozenset(snapshots.values()), templates, finished,
                      list(chains.values()), trace.trained, trace.guards, trace.aliases, program, trace.why_no_tape)

    # -- building the sites of one call
    def _build(self, plan: "_Plan", decision: dict) -> List[_Site]:
        tensors = _target_tensors(plan.target)
        return [self._site(plan, plan.trace.calls[i], i, tensors, decision.get(i, {})) for i in plan.trace.trained]

    def _site(self, plan: "_Plan", call: _Call, index: int, tensors: List[Tensor], choice: dict) -> _Site:
        mode = choice.get("mode", "auto")
        if call.two_sided:
            return _SignSite(call, index, self._probe_sign(plan, call, index))
        if call.kind == "compare":
            candidates = _binary_candidates(call, tensors)
            if mode != "probe" and candidates:
                best = candidates[choice.get("which", 0) % len(candidates)]
                return _CompareSite(call, index, best == 0 if choice.get("complement") else best)
            return _CompareSite(call, index, self._probe_compare(plan, call, index))
        relevance = _relevance_candidates(call, tensors)
        if relevance and mode != "probe" and (call.name not in ("argmax", "argmin", "max", "min") or
                                               not _label_candidates(call, tensors)):
            return _RankSite(call, index, _graded(relevance[choice.get("which", 0) % len(relevance)], choice),
                             orient=choice.get("orient", 1), pairs=choice.get("pairs", "relevance"))
        if call.name in ("argmax", "argmin", "max", "min", "topk"):
            labels = _label_candidates(call, tensors)
            if labels and mode != "probe":
                return _ClassSite(call, index, labels=labels[choice.get("which", 0) % len(labels)])
            ignoring = _ignored_label_candidates(call, tensors)
            if ignoring and mode != "probe" and call.name != "topk":  # a row's label, or every output where ignored
                labels_, ignored = ignoring[0]
                positive = torch.nn.functional.one_hot(labels_.reshape(-1), call.shape[cast(int, call.dim)]).bool()
                return _ClassSite(call, index, positive=positive | ignored.reshape(-1, 1), ignoring=ignoring[0])
            if call.name != "topk":
                return _ClassSite(call, index, positive=self._probe_class(plan, call, index))
        raise TraceError(
            f"fn {'sorts' if call.name != 'topk' else 'takes the top k of'} the scores ({call.describe()}) but the "
            f"target holds no tensor to infer the best result from: a relevance per item of shape "
            f"{list(call.shape)} (more relevant = higher score)"
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
        c = _num_outputs(call)
        rows = torch.arange(n, device=hard.device).repeat_interleave(c)
        outputs = torch.arange(c, device=hard.device).repeat(n)
        site = _ProbeSite(call, index, "class")

        def replayed(which: Tensor) -> Tensor:
            probe = which[which < n * c]
            variants = hard.expand(which.numel(), n).clone()
            variants[(which < n * c).nonzero().reshape(-1), rows[probe]] = outputs[probe]
            return self._values(plan, {index: variants.reshape((which.numel(),) + rows_shape)}, {index: site})

        whole = torch.cat([hard[None], torch.arange(c, device=hard.device)[:, None].expand(c, n)])  # every row at c
        values = self._probed(plan, call, site, whole.reshape((c + 1,) + rows_shape), rows, outputs + 1, replayed,
                              f"{n} rows x {c} outputs", current=False)
        return _best_mask(values[:n * c].reshape(n, c), self.higher_is_better)

    def _probe_compare(self, plan: "_Plan", call: _Call, index: int) -> Tensor:
        hard = call.out.reshape(-1) != 0  # (bool, or round's 0./1.)
        m = hard.numel()
        idx = torch.arange(m, device=hard.device)
        site = _ProbeSite(call, index, "compare")

        def replayed(which: Tensor) -> Tensor:
            variants = hard.expand(which.numel(), m).clone()
            at, probe = (which < m).nonzero().reshape(-1), which[which < m]
            variants[at, probe] = ~variants[at, probe]
            return self._values(plan, {index: variants.reshape((which.numel(),) + call.out_shape)}, {index: site})

        values = self._probed(plan, call, site, torch.stack([hard, ~hard]).reshape((2,) + call.out_shape),
                              idx, torch.ones_like(idx), replayed, f"{m} elements")
        flipped, current = values[:m], values[m]
        better = flipped > current if self.higher_is_better else flipped < current
        return torch.where(better & ~torch.isnan(flipped), ~hard, hard).reshape(call.out_shape)

    def _probe_sign(self, plan: "_Plan", call: _Call, index: int) -> Tensor:
        """The best bits of a :class:`_SignSite`: each element of the output set alone to -1, 0
        and 1, ``fn`` at each (through the sums where it pays, as a comparison's probes); an element
        keeps its current sign where that is among its best, else takes the best of 1, -1, 0 in
        that order (a side before a tie)."""
        hard = call.out.reshape(-1)
        m = hard.numel()
        signs = torch.tensor([1.0, -1.0, 0.0], dtype=hard.dtype, device=hard.device)
        element = torch.arange(m, device=hard.device).repeat(3)
        site = _ProbeSite(call, index, "compare")

        def replayed(which: Tensor) -> Tensor:
            variants = hard.expand(which.numel(), m).clone()
            at, probe = (which < 3 * m).nonzero().reshape(-1), which[which < 3 * m]
            variants[at, element[probe]] = signs[probe // m]
            return self._values(plan, {index: variants.reshape((which.numel(),) + call.out_shape)}, {index: site})

        whole = torch.cat([hard[None], signs[:, None].expand(3, m)])
        values = self._probed(plan, call, site, whole.reshape((4,) + call.out_shape), element,
                              torch.arange(1, 4, device=hard.device).repeat_interleave(m), replayed,
                              f"{m} elements x 3 signs")
        at = values[:3 * m].reshape(3, m)
        at = torch.where(torch.isnan(at), values[3 * m], at)  # (fn undefined there: no better than now)
        best = at.amax(0) if self.higher_is_better else at.amin(0)
        tol = 1e-6 * best.abs().clamp_min(1.0)
        good = (at >= best - tol) if self.higher_is_better else (at <= best + tol)
        current = good[0] & (hard == 1) | good[1] & (hard == -1) | good[2] & (hard == 0)
        chosen = torch.where(current, hard, signs[good.float().argmax(0)])  # argmax: the first best of 1, -1, 0
        return torch.cat([chosen > 0, chosen < 0])

    _PROBES_CHECKED = 32  # of the probes that gain and of those that do not, the most the first call replays

    def _probed(self, plan: "_Plan", call: _Call, site: "_ProbeSite", whole: Tensor, element: Tensor,
                variant: Tensor, replayed: Callable[[Tensor], Tensor], what: str, current: bool = True) -> Tensor:
        """A probe's values, ``[P + 1]``: ``fn`` with element ``element[p]`` of the step's output
        taken from ``whole[variant[p]]`` and the others from ``whole[0]``, the current output, then
        ``fn`` at the current output. Through the sums (:func:`_probe_by_sums`, ``O(P)``) where
        the step reaches ``fn``'s value only through elementwise operations and sums, ``fn``
        reads no value as a Python one, and the replays would hold more than ``2^20`` elements of the
        sums' inputs and more than the cut holds of what follows the sums (pairs of ``n`` scores
        summed to one number), within ``chain_elements``; else ``replayed(which)``,
        the configurations ``which`` (``P``: the current output; its value NaN unless ``current``)
        replayed, within ``probe_limit``.
        The first call of a structure checks the cut against replays of the current output and
        of up to 32 probes that gain and 32 that do not, and keeps the verdict."""
        probes = element.numel()
        verdict = self._probes.get((plan.key, site.index))
        checked = plan.tape == "direct" if verdict else plan.tape in ("check", "direct")  # the tape's verdict
        split = self._probe_cut(plan, site.index, probes, int(whole[0].numel())) if verdict is not False and \
            checked else None
        if split is not None:
            try:
                with torch.no_grad():
                    values = _probe_by_sums(split, cast(_Tape, plan.trace.tape), site, whole, element, variant)
                values = values if values.is_floating_point() else values.float()
                if verdict is None:  # the first call: the cut against fn's replays where it gains and where not
                    gains = values[:-1] > values[-1] if self.higher_is_better else values[:-1] < values[-1]
                    which = torch.cat([_spread(gains.nonzero().reshape(-1), self._PROBES_CHECKED),
                                       _spread((~gains).nonzero().reshape(-1), self._PROBES_CHECKED),
                                       torch.tensor([probes], device=values.device)])
                    ok = _same(values[which], replayed(which)) and plan.tape == "direct"
                    self._remember_probes(plan, site.index, ok)
                    if not ok:
                        raise RuntimeError("probes through the sums are not fn's")
                return values
            except Exception:  # not expected after the check: the replays from now on
                self._remember_probes(plan, site.index, False)
        replays = probes + 1 if current else probes
        self._probe_budget(replays, call, what)
        values = replayed(torch.arange(replays, device=element.device))
        return values if current else torch.cat([values, values.new_full((1,), math.nan)])

    @staticmethod
    def _probe_cut(plan: "_Plan", index: int, probes: int, outputs: int) -> Optional[_SumSplit]:
        """The tape cut at the sums of step ``index`` (``outputs`` elements) for ``probes`` probes,
        where the cut is worth it: the cut holds what follows the sums at ``2 P + 1`` points, the
        replays the sums' inputs at ``P + 1``; the cut where that is more and at least
        ``_PROBES_CUT`` (below, the replays' few batched operations cost less), within
        ``chain_elements``. ``None`` otherwise, or on a tape with guards."""
        tape = plan.trace.tape
        if tape is None or tape.guards or (probes + 1) * max(  # a cheap bound first: the largest tensor
                [t.numel() for t in tape.traced if isinstance(t, Tensor)] + [0]) < _PROBES_CUT:
            return None
        indices = {index} | {a for a, o in plan.trace.aliases.items() if o == index}
        split = _split_at_sums(tape, [(indices, outputs)], others=True)
        if split is None:
            return None
        held, replayed = (2 * probes + 1) * _dense_width(split, 2 * probes), (probes + 1) * split.elements
        return split if held <= current_limits().chain_elements and held < replayed and \
            replayed >= _PROBES_CUT else None

    def _remember_probes(self, plan: "_Plan", index: int, ok: bool) -> None:
        if len(self._probes) >= 256:
            self._probes.clear()
        self._probes[(plan.key, index)] = ok

    # -- evaluating configurations by replaying fn
    def _values(self, plan: "_Plan", payloads: Dict[int, Any], sites: Dict[int, _Site]) -> Tensor:
        """``fn`` replayed for ``t`` configurations: ``payloads`` maps a site to its decoded
        outputs ``[t, ...]``; other steps keep their traced results."""
        payloads, sites = self._with_aliases(plan, payloads, sites)
        formatters = {i: s.format for i, s in sites.items()}
        leaves = [p for v in payloads.values() for p in (v if isinstance(v, tuple) else (v,))]
        t = leaves[0].shape[0] if leaves else 1
        with torch.no_grad():
            if self.batched != "loop" and plan.tape != "off" and plan.trace.tape is not None:
                values = self._tape_values(plan, payloads, sites, t)
                if values is not None:
                    return values
            if plan.trace.branches:  # no tape, or one fn's path through a Python branch ends in a constant
                return self._other_paths(plan, payloads, sites, t)
            return self._fn_values(plan, payloads, formatters, t)

    @staticmethod
    def _with_aliases(plan: "_Plan", payloads: Dict[int, Any], sites: Dict[int, _Site]
                      ) -> Tuple[Dict[int, Any], Dict[int, _Site]]:
        """The payloads and sites with each alias of a step (the same step repeated) given its
        original's."""
        sites = dict(sites)
        calls = plan.trace.calls
        if plan.trace.aliases:
            payloads = dict(payloads)
            for alias, original in plan.trace.aliases.items():
                if original in payloads:
                    twin = copy.copy(sites[original])
                    twin.call, twin.index = calls[alias], alias
                    payloads[alias], sites[alias] = payloads[original], twin
        return payloads, sites

    def _flipped(self, plan: "_Plan", sites: Dict[int, _Site], every: int) -> Dict[int, Any]:
        """The payloads of one configuration: every ``every``-th comparison of each step wrong."""
        chosen = {}
        for site in plan.sites:
            bits = site.best().reshape(-1).clone()
            bits[::every] = ~bits[::every]
            chosen[site.index] = site.decode(bits[None])
        return self._with_aliases(plan, chosen, sites)[0]

    def _decide_numbers(self, plan: "_Plan") -> None:
        """For a structure whose ``fn`` is replayed at every configuration (no tape, not even
        halfway along), whether one replay batched with vmap, the numbers it reads with
        ``.item()`` carried as tensors (:class:`_Number`), gives ``fn``'s values: checked once,
        on its first call, against ``fn`` at two configurations (every other comparison wrong,
        every third)."""
        if len(self._numbers) >= 256:
            self._numbers.clear()
        sites = self._with_aliases(plan, {}, {site.index: site for site in plan.sites})[1]
        try:
            two = [self._flipped(plan, sites, 2), self._flipped(plan, sites, 3)]
            both = {i: _cat_payloads([two[0][i], two[1][i]]) for i in two[0]}
            self._numbers[plan.key] = self._numbers_agree(plan, both, sites)
        except Exception:
            self._numbers[plan.key] = False

    def _adopt_forced_tape(self, plan: "_Plan") -> None:
        """A trace whose ``fn`` reads its trained steps' results as Python values and whose path
        is a rare one: without a tape (a batch all right, whose value a special case returns as a
        constant), or whose values read differ halfway along (every other comparison of each step
        wrong: a batch all predicted positive). ``fn`` is traced again halfway along and that tape
        stands in for the trace's, the chain's cuts through sums and rankings included, ``fn``
        taking its own path (:meth:`_other_paths`) wherever that tape's values read differ. The
        tape is checked against ``fn``'s value where it was traced, and, as every tape, on the
        first calls of a structure against ``fn`` replayed whole."""
        kind = self._tapes.get(plan.key, "check")
        if kind == "off" or self._others.get(plan.key) is False:
            return

        sites = self._with_aliases(plan, {}, {site.index: site for site in plan.sites})[1]
        halfway = self._flipped(plan, sites, 2)
        try:
            if plan.trace.tape is not None:  # the trace's own path holds halfway along: it stays
                _, held = self._run_tape(plan.trace.tape, _tape_kind(plan.trace.tape), halfway, sites, 1, False)
                if held is None or bool(held[0]):
                    return
            # halfway along, and every third comparison wrong for the structure's first checks
            third = self._flipped(plan, sites, 3)
            both = {i: _cat_payloads([halfway[i], third[i]]) for i in halfway}
            forced = self._checked_forced_tape(plan, both, sites, 0)
        except Exception:  # fn that this configuration breaks: the trace's replays stay
            return
        if forced is None:
            if plan.trace.tape is None:  # no tape halfway either (a value made from Python numbers,
                self._others[plan.key] = False  # `correct / total`): fn at every configuration (_replays)
            return
        tape = forced[0]
        kind = "vmap" if kind == "direct" and not tape.direct else kind
        plan.trace.tape, plan.trace.forced, plan.tape = tape, True, kind

    def _other_paths(self, plan: "_Plan", payloads: Dict[int, Any], sites: Dict[int, _Site], t: int) -> Tensor:
        """``fn``'s values at ``t`` configurations where it takes another path through its Python
        branches on the trained steps than the trace did (or where the trace gave no tape: a branch
        that returns a constant, as the Matthews correlation's on a batch all right). Replaying
        ``fn`` at each costs a call of ``fn`` each; instead ``fn`` is traced again with its steps
        returning the middle one's outputs (:meth:`_forced_tape`), that trace's tape gives the
        values wherever its guards hold, and so on for what is left, up to ``_OTHER_TRACES``
        traces; ``fn`` is replayed at the configurations left (and where a tape fails). Each such
        tape is checked against ``fn``'s value where it was traced; the first ones of each
        structure against ``fn`` replayed at two more configurations."""
        formatters = {i: s.format for i, s in sites.items()}
        left = torch.arange(t)
        if self.batched == "loop" or t < _OTHER_MIN:
            return self._fn_values(plan, payloads, formatters, t, loop=True)
        values: Optional[Tensor] = None
        misses = 0  # configurations whose path gave no tape (fn returns a constant there): the next one tried
        for _ in range(0 if self._others.get(plan.key) is False else _OTHER_TRACES):
            if len(left) < _OTHER_MIN:
                break
            middle = len(left) * (1 + 2 * misses) // 4 if misses else len(left) // 2
            try:
                forced = self._checked_forced_tape(plan, _pick(payloads, left), sites, middle)
            except Exception:  # a trace or a tape that fails, or disagrees with fn: fn replayed instead
                self._others[plan.key] = False
                break
            if forced is None:
                misses += 1
                continue
            _, got, held = forced
            if values is None:
                values = torch.empty(t, dtype=got.dtype, device=got.device)
            values[left[held].to(values.device)] = got[held.to(got.device)].to(values.dtype)
            left = left[~held]
            if int(held.sum()) < _OTHER_MIN:  # paths too many to trace each (a count read as a Python number)
                break
        if len(left) and self._numbers.get(plan.key):
            batched = self._number_values(plan, _pick(payloads, left), formatters, len(left))
            if batched is None:  # not expected after the structure's check: fn replayed from now on
                self._numbers[plan.key] = False
            else:
                got, bad = batched
                if values is None:
                    values = torch.empty(t, dtype=got.dtype, device=got.device)
                values[left[~bad].to(values.device)] = got[~bad].to(values.dtype)
                left = left[bad]  # a divisor 0 there, where Python raises: fn itself
        no_tape = values is None and plan.trace.tape is None
        if (no_tape and len(left) >= _OTHER_MIN or len(left) > _OTHER_WARN) and not self._warned_branches:
            trace = plan.trace
            s = next(i for i in trace.trained if i in trace.guards)
            why = (trace.why_no_tape or "on these scores fn takes other paths, which tracing it again did not give a "
                   "tape") if no_tape else ("its path turns at more configurations than tracing it again covers (a "
                                            "Python loop or branch on each element of a curve or a count)")
            message = (
                f"from_metric: fn reads the result of {trace.calls[s].describe()} as a Python value (at "
                f"{trace.guards[s]}) and {why}: {len(left)} of {t} configurations replay fn one at a time (slower; "
                "keeping what fn reads a tensor keeps the fast path: torch.where in place of a branch, a count "
                "without .item() or int())")
            if self._held_warnings is not None and plan.key not in self._numbers:
                self._held_warnings.append(message)  # a structure's first call: said if its replays stay one at a time
            else:
                self._warned_branches = True
                warnings.warn(message, stacklevel=V.user_stacklevel())
        rest = self._fn_values(plan, _pick(payloads, left), formatters, len(left), loop=True) if len(left) else None
        if values is None:
            return cast(Tensor, rest)
        if rest is not None:
            values[left.to(values.device)] = rest.to(values.dtype)
        return values

    def _number_values(self, plan: "_Plan", payloads: Dict[int, Any], formatters: Dict[int, Any], t: int
                       ) -> Optional[Tuple[Tensor, Tensor]]:
        """``fn``'s values at ``t`` configurations from replays batched with vmap, each number
        it reads with ``.item()`` from its steps' results carried as a tensor of its values
        (:class:`_Number`), and ``[t]`` booleans where they are not given: a divisor was 0 (Python
        raises there), or the configuration's path through ``fn``'s branches on such numbers is
        none of those batched (up to ``_NUMBER_PATHS``, while each gives ``_OTHER_MIN``
        configurations: ``fn`` itself is replayed at the others). Each batched replay
        takes the path ``fn`` takes at a reference configuration, the middle one of those left
        (replayed unbatched first, the truth values it reads recorded), and gives the values of the
        configurations whose truth values are the same. Where the last reference read none, the
        reference replay is left out; a truth value read (or any escape) then redoes the replay
        with one. ``None`` where ``fn`` uses such a number other than in arithmetic, comparisons
        and branches, returns something else, or vmap fails otherwise."""
        scores, target, calls = plan.scores.detach(), plan.target, plan.trace.calls
        escaped: List[str] = []

        def one(chosen: Dict[int, Any], path: Optional[List[bool]]) -> Tuple[Tensor, Tensor, Tensor, List[bool]]:
            out, mode = self._run(scores, target, calls=calls, payloads=chosen, formatters=formatters,
                                  vmapped=True, numbers=True, path=path)
            if mode.escaped:
                escaped.append(mode.why)
            if isinstance(out, _Number):
                out = out.t.double()
            elif _is_number(out):
                out = _number_value(out)
            elif not isinstance(out, Tensor):
                raise _Escape(f"fn returned {type(out).__name__}")
            false = torch.zeros((), dtype=torch.bool, device=out.device)
            if path is None:  # the reference replay: only the truth values it read are used
                return out.reshape(()), false, false, mode.reads
            zero = torch.stack([z.reshape(()) for z in mode.raising]).any() if mode.raising else false
            if mode.products or mode.bounded:
                zero = zero | _past_2_53(mode.products, mode.bounded)
            off = torch.stack([o.reshape(()) for o in mode.off_path]).any() if mode.off_path else false
            return out.reshape(()), zero, off, mode.reads

        def batch(part: Dict[int, Any], n: int, path: List[bool]) -> Tuple[Tensor, Tensor, Tensor]:
            return torch.func.vmap(lambda chosen: one(chosen, path)[:3], chunk_size=4096 if n > 4096 else None)(part)

        values: Optional[Tensor] = None
        given = torch.zeros(t, dtype=torch.bool)
        left = torch.arange(t)
        straight = self._straight.get(plan.key, False)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(_NUMBER_PATHS):
                part = payloads if len(left) == t else _pick(payloads, left)
                middle = len(left) // 2
                try:
                    batched: Optional[Tuple[Tensor, Tensor, Tensor]] = None
                    if straight:  # no truth value read last time: no reference replay
                        try:
                            batched = batch(part, len(left), [])
                        except Exception:
                            batched = None
                        if batched is None or escaped:  # one read now (or another escape): with a reference
                            batched, straight = None, False
                            escaped.clear()
                    if batched is None:
                        path = one(_pick(part, middle), None)[3]
                        batched = batch(part, len(left), path)
                        if len(self._straight) >= 256:
                            self._straight.clear()
                        self._straight[plan.key] = not path
                    got, zero, off = batched
                except Exception as exc:  # a number formatted, given to torch; or fn not batchable
                    if isinstance(exc, _Escape):
                        self._escaped(plan, str(exc))
                    return None
                if escaped:  # fn caught the escape and went on: its values are not fn's
                    self._escaped(plan, escaped[0])
                    return None
                zero, off = zero.reshape(-1).cpu(), off.reshape(-1).cpu()
                if bool(off[middle]):  # the reference's own path differs in the batch: not expected
                    return None
                here = ~(zero | off)
                if values is None and bool(here.all()):  # one path, no divisor 0: every value at once
                    values = got.reshape(-1).cpu()
                    given.fill_(True)
                    break
                values = torch.zeros(t, dtype=got.dtype) if values is None else values
                values[left[here]] = got.reshape(-1).cpu()[here].to(values.dtype)
                given[left[here]] = True
                left = left[off]  # a divisor 0 off this path is not one fn meets there
                if not len(left) or int(here.sum()) < _OTHER_MIN:  # paths too many to batch each
                    break
        values = cast(Tensor, values)
        return (values if values.is_floating_point() else values.float()), ~given

    def _escaped(self, plan: "_Plan", why: str) -> None:
        if len(self._escapes) >= 256:
            self._escapes.clear()
        self._escapes[plan.key] = why

    def _numbers_agree(self, plan: "_Plan", payloads: Dict[int, Any], sites: Dict[int, _Site]) -> bool:
        """Whether :meth:`_number_values` gives ``fn``'s own values at these configurations (the
        check of a structure's first call)."""
        formatters = {i: s.format for i, s in sites.items()}
        leaves = [p for v in payloads.values() for p in (v if isinstance(v, tuple) else (v,))]
        t = leaves[0].shape[0]
        batched = self._number_values(plan, payloads, formatters, t)
        if batched is None or bool(batched[1].all()):
            return False
        given = ~batched[1]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                reference = self._fn_values(plan, _pick(payloads, given), formatters, int(given.sum()), loop=True)
            except Exception:
                return False
        return _agrees(batched[0][given], reference)

    def _checked_forced_tape(self, plan: "_Plan", payloads: Dict[int, Any], sites: Dict[int, _Site], at: int
                             ) -> Optional[Tuple[_Tape, Tensor, Tensor]]:
        """``fn`` traced again at configuration ``at`` of ``payloads`` (:meth:`_forced_tape`):
        its tape, that tape's values at every configuration of ``payloads`` and ``[t]`` booleans,
        where its path holds; ``None`` where the trace gives no tape. Raises where the tape does
        not give ``fn``'s value at ``at``, or, for the first three such tapes of a structure, at
        up to two more configurations where it holds, ``fn`` replayed there (the structure then
        takes no more forced tapes)."""
        forced = self._forced_tape(plan, _pick(payloads, at), sites)
        if forced is None:
            return None
        tape, value = forced
        leaves = [p for v in payloads.values() for p in (v if isinstance(v, tuple) else (v,))]
        t = leaves[0].shape[0]
        got, guarded = self._run_tape(tape, _tape_kind(tape), payloads, sites, t, False)
        held = torch.ones(t, dtype=torch.bool) if guarded is None else guarded.cpu()
        ok = bool(held[at]) and _agrees(got[at], value)
        checks = self._others.get(plan.key, 0)
        if ok and checks is not True:  # the structure's first tapes: against fn at two more points
            more = held.nonzero().flatten()
            more = more[more != at][:: max(1, (len(more) - 1) // 2)][:2]
            if len(more):
                formatters = {i: s.format for i, s in sites.items()}
                ok = _agrees(got[more], self._fn_values(plan, _pick(payloads, more), formatters, len(more), loop=True))
            if ok:
                self._others[plan.key] = True if int(checks) >= 2 else int(checks) + 1
        if not ok:
            if len(self._others) >= 256:
                self._others.clear()
            self._others[plan.key] = False
            raise RuntimeError("a forced trace's tape does not give fn's values")
        return tape, got, held

    def _forced_tape(self, plan: "_Plan", chosen: Dict[int, Any], sites: Dict[int, _Site]
                     ) -> Optional[Tuple[_Tape, Tensor]]:
        """``fn`` traced again with its trained steps returning one configuration's outputs
        (``chosen``: site -> payload): the tape of the path ``fn`` takes there and its value there;
        ``None`` where that trace takes other discrete steps than the plan's or gives no tape."""
        force = {i: (p, sites[i].format) for i, p in chosen.items()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out, mode = self._run(plan.scores.detach(), plan.target, inputs=_target_tensors(plan.target), force=force)
        calls = plan.trace.calls
        if not isinstance(out, Tensor) or out.numel() != 1 or len(mode.calls) != len(calls) or any(
                a.name != b.name or a.shape != b.shape for a, b in zip(mode.calls, calls)):
            return None
        rec = cast(_Recorder, mode.rec)
        tape = rec.compile(out, set(plan.trace.trained) | set(plan.trace.aliases))
        if tape is None or rec.unchecked:
            return None
        return tape, out.detach().reshape(())

    def _tape_values(self, plan: "_Plan", payloads: Dict[int, Any], sites: Dict[int, _Site],
                     t: int) -> Optional[Tensor]:
        """The configurations' values from the trace's tape (the part of ``fn`` downstream of the
        trained steps): batched by hand (``"direct"``) or under vmap (``"vmap"``). The first calls
        of a structure (``plan.tape == "check"``) also replay ``fn`` whole and keep the first way
        that gives its values on several configurations; where none does, or where a tape fails
        later, ``fn`` is replayed whole for this structure from then on. ``None``: replay ``fn``."""
        tape = cast(_Tape, plan.trace.tape)

        def run(kind: str, check: bool) -> Tensor:
            values, held = self._run_tape(tape, kind, payloads, sites, t, check)
            if held is None:
                return values
            return self._held_or_tape((values, held), lambda where: self._other_paths(
                plan, _pick(payloads, where), sites, len(where)))

        if plan.tape in ("direct", "vmap"):
            try:
                return run(plan.tape, False)
            except Exception:  # not expected after the check: replay fn whole from now on
                self._remember_tape(plan, "off")
                return None
        formatters = {i: s.format for i, s in sites.items()}
        with warnings.catch_warnings(record=True) as said:  # fn that vmap cannot batch: said if the tape fails too
            warnings.simplefilter("always")
            full = self._fn_values(plan, payloads, formatters, t)
        self._unsaid += said
        for kind in ("direct", "vmap") if tape.direct else ("vmap",):
            try:
                values = run(kind, True)
            except Exception:
                continue
            if values.shape == full.shape and _agrees(values, full):
                if t >= 2:  # a batch shows the batching right
                    self._remember_tape(plan, kind)
                return full
        self._remember_tape(plan, "off")
        for w in self._unsaid:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        self._unsaid = []
        if plan.trace.branches and not self._warned_branches:  # fn cannot be vmapped either: say so once
            self._warned_branches = True
            warnings.warn("from_metric: fn reads its discrete steps' results as Python values, which vmap cannot "
                          "batch, and its recorded operations cannot stand in for it (data-dependent shapes such "
                          "as boolean indexing or nonzero): each configuration replays fn one at a time (slower)",
                          stacklevel=V.user_stacklevel())
        return full

    @staticmethod
    def _run_tape(tape: _Tape, kind: str, payloads: Dict[int, Any], sites: Dict[int, _Site], t: int,
                  check: bool) -> Tuple[Tensor, Optional[Tensor]]:
        """``t`` configurations' values from ``tape``, batched by hand (``"direct"``) or under vmap
        (``"vmap"``), and, where the tape has guards, ``[t]`` booleans: where fn takes the tape's
        path (see :meth:`_Tape.held`); ``None`` without guards."""
        held: Optional[Tensor] = None
        if kind == "direct":
            batched = {i: s.format_batched for i, s in sites.items()}
            step = 4096
            parts = []
            for start in range(0, t, step):  # bounded memory, as vmap's chunks
                chunk = payloads if t <= step else _pick(payloads, slice(start, start + step))
                parts.append(tape.run_direct(chunk, batched, min(step, t - start), check))
            if tape.guards:
                held = torch.cat([h for _, h in parts])
                parts = [v for v, _ in parts]
            values = parts[0] if len(parts) == 1 else torch.cat(parts)
        else:
            formatters = {i: s.format for i, s in sites.items()}

            def one(chosen):
                out = tape.run(chosen, formatters)
                return (out[0].reshape(()), *out[1:]) if tape.guards else out.reshape(())

            values = torch.func.vmap(one, chunk_size=4096 if t > 4096 else None)(payloads)
            if tape.guards:
                held = tape.held(list(values[1:]), t)
                values = values[0]
        return (values if values.is_floating_point() else values.float()), held

    def _remember_tape(self, plan: "_Plan", kind: str) -> None:
        plan.tape = kind
        if len(self._tapes) >= 256:
            self._tapes.clear()
        self._tapes[plan.key] = kind

    def _fn_values(self, plan: "_Plan", payloads: Dict[int, Any], formatters: Dict[int, Any], t: int,
                   loop: bool = False) -> Tensor:
        """The anchors' values from ``fn`` replayed whole, its discrete steps returning the
        decoded outputs: vmapped, or one anchor at a time where vmap fails (or ``loop``, or where
        ``fn``'s Python control flow reads the decoded outputs)."""
        scores, target, calls = plan.scores.detach(), plan.target, plan.trace.calls
        loop = loop or plan.trace.branches
        vmapped = True

        def one(chosen):
            out, _ = self._run(scores, target, calls=calls, payloads=chosen, formatters=formatters,
                               vmapped=vmapped)
            if _is_number(out):
                out = _number_value(out)
            elif not isinstance(out, Tensor):
                out = torch.as_tensor(out)
            return out.reshape(())

        with torch.no_grad():
            if self._use_vmap and not loop:
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
                        stacklevel=V.user_stacklevel())
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
        # A structure's first call probes and checks fn by replaying it; that fn's replays are
        # one at a time is said once it is known that they stay so (not where its numbers read
        # with .item() batch, _decide_numbers)
        held: List[str] = []
        outer, self._held_warnings = self._held_warnings, held
        try:
            plan = self._prepare(scores, target)
        finally:
            self._held_warnings = outer
        if held and not self._numbers.get(plan.key) and not self._warned_branches:
            self._warned_branches = True
            message, why = held[0], self._escapes.get(plan.key)  # what kept the numbers from batching
            if why and message.endswith(")"):
                message = f"{message[:-1]}; here the batched replay stopped at {why})"
            warnings.warn(message, stacklevel=V.user_stacklevel())
        return plan

    def _prepare(self, scores: Tensor, target: Any) -> _Plan:
        trace = self._trace(scores, target)
        plan = _Plan(target, scores, trace, [], [], 0)
        key = self._signature(trace, _target_tensors(target))
        decision = self._decisions.get(key)
        verified = decision is not None
        plan.key = key
        if trace.tape is not None and self.batched != "loop":
            plan.tape = self._tapes.get(key, "check")
        decision = dict(decision or {})
        sites = self._build(plan, decision)
        if not verified:
            sites, decision, done = self._verify(plan, sites, decision)
            if done:
                if len(self._decisions) >= 256:  # shapes that change every call: keep the cache bounded
                    self._decisions.clear()
                self._decisions[key] = decision
        plan = self._finish(plan, sites)
        if trace.branches and self.batched != "loop" and plan.num_bits:
            self._adopt_forced_tape(plan)
            if plan.trace.tape is None and self._others.get(plan.key) is False and plan.key not in self._numbers:
                self._decide_numbers(plan)
        return plan

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

    def _verify(self, plan: _Plan, sites: List[_Site], decision: dict, graded: bool = True):
        """First call of a new structure: check the best configuration inferred from the target
        against probes of fn, the rankings' orientation (and, for a relevance of several grades,
        whether one grade on top, the others alike, is better: torchmetrics' per-class curves read
        ``target == c``; not with ``graded=False``), and that replaying fn on the decoded outputs of
        the current scores gives fn's value. Returns ``(sites, decision, done)``; ``done`` is false
        when ties in the scores left the check undecided."""
        tensors = _target_tensors(plan.target)
        out_sites = list(sites)
        for pos, site in enumerate(sites):
            choice = dict(decision.get(site.index, {}))
            if isinstance(site, _ClassSite) and site.mode == "label" and site.call.k is None:
                if not self._spot_check_class(plan, site):
                    choice["mode"] = "probe"
                    out_sites[pos] = self._site(plan, site.call, site.index, tensors, choice)
            elif isinstance(site, _ClassSite) and site.ignoring is not None:
                if not self._spot_check_ignored(plan, site):
                    choice["mode"] = "probe"
                    out_sites[pos] = self._site(plan, site.call, site.index, tensors, choice)
            elif isinstance(site, _CompareSite) and _binary_candidates(site.call, tensors):
                if not self._spot_check_compare(plan, site):  # best where it is not the target (s < t for y == 0)?
                    choice["complement"] = True
                    out_sites[pos] = self._site(plan, site.call, site.index, tensors, choice)
                    if not self._spot_check_compare(plan, cast(_CompareSite, out_sites[pos])):
                        choice = {k: v for k, v in choice.items() if k != "complement"}
                        choice["mode"] = "probe"  # neither: the best output of each element, probed every call
                        out_sites[pos] = self._site(plan, site.call, site.index, tensors, choice)
            elif isinstance(site, _RankSite):
                relevance = _relevance_candidates(site.call, tensors)[0]
                options = [({}, site), ({"orient": -1}, _RankSite(site.call, site.index, relevance, orient=-1,
                                                                   pairs=site.pairs))]
                grades = torch.unique(relevance) if graded else relevance.new_zeros(0)
                if 2 < grades.numel() <= _GRADES:  # one grade on top, the others alike (`target[order] == c`)
                    top, rel = grades[-1] + 1, relevance.to(grades.dtype)
                    for g in grades:  # each grade on top alone; on top and at the bottom of the others in order,
                        options.append(({"grade": g.item()}, _RankSite(site.call, site.index, rel == g,  # and reversed
                                                                       pairs=site.pairs)))
                        options += [({}, _RankSite(site.call, site.index, torch.where(rel == g, end, r),
                                                   pairs=site.pairs))
                                    for end, r in ((top, rel), (top, grades[-1] - rel), (0, rel + 1), (0, top - rel))]
                best = [s.decode(s.best()[None]) for _, s in options]
                values = self._values(plan, {site.index: _cat_payloads(best)}, {site.index: site})
                values = values if self.higher_is_better else -values
                pick = int(values[:2].argmax())  # the relevance as it is, or reversed (the first where they tie)
                for k in range(2, len(options), 5):
                    # a grade alone on top where fn reads that grade against the others only (the others'
                    # order moves nothing, with the grade on top or at the bottom) and that ranks best:
                    # the fewest comparisons for that value
                    alone = bool(values[k] == values[k + 1]) and bool(values[k] == values[k + 2]) and \
                        bool(values[k + 3] == values[k + 4])
                    better = pick < 2 or bool(values[k] > values[pick]) or \
                        options[k][1].num_bits < options[pick][1].num_bits
                    if alone and bool(values[k] >= values[pick]) and better:
                        pick = k
                if pick:
                    choice.update(options[pick][0])
                    out_sites[pos] = options[pick][1]
            decision[site.index] = choice
        sites = out_sites
        # exactness on the current scores (undecided where comparisons tie)
        if any(bool((s.comparisons().detach() == 0).any()) for s in sites):
            return sites, decision, False
        # within rounding of a tie: fn's own maps (a sigmoid, a softmax) may round those scores to a tie
        tolerance = 4 * torch.finfo(plan.scores.dtype).eps * max(1.0, float(plan.scores.detach().abs().max())) \
            if plan.scores.is_floating_point() and plan.scores.numel() else 0.0
        near = [s.comparisons().detach().abs() <= tolerance for s in sites]
        for attempt in range(2):
            right = [s.comparisons().detach() > 0 for s in sites]
            # as the scores say; then near ties wrong, as fn's rounding to a tie counts them; then flipped
            for bits in (right, [r & ~m for r, m in zip(right, near)], [r ^ m for r, m in zip(right, near)]):
                payloads = {s.index: s.decode(b[None]) for s, b in zip(sites, bits)}
                value = self._values(plan, payloads, {s.index: s for s in sites})[0]
                if _same(value, plan.trace.value):
                    return sites, decision, True
                if not any(bool(m.any()) for m in near):
                    break
            ranks = [p for p, s in enumerate(sites) if isinstance(s, _RankSite) and s.pairs != "all"]
            if attempt or not ranks:
                break
            for p in ranks:
                s = sites[p]
                decision[s.index] = dict(decision.get(s.index, {}), pairs="all")
                sites[p] = _RankSite(s.call, s.index, _graded(_relevance_candidates(s.call, tensors)[0],
                                                              decision[s.index]),
                                     orient=decision[s.index].get("orient", 1), pairs="all")
            near = [s.comparisons().detach().abs() <= tolerance for s in sites]
        if any(bool(m.any()) for m in near):  # undecided: a later call decides
            return sites, decision, False
        if graded and any("grade" in choice for choice in decision.values()):  # a grade on top is not what fn reads
            plain = {i: {k: v for k, v in choice.items() if k != "grade"} for i, choice in decision.items()}
            return self._verify(plan, self._build(plan, plain), plain, graded=False)
        raise TraceError(
            f"replaying fn with its discrete steps ({', '.join(s.call.describe() for s in sites)}) decoded from "
            f"the comparisons of the scores gives {float(value):.6g}, but fn gives {float(plan.trace.value):.6g}: "
            f"fn's value depends on something the traced steps do not capture. {_MANUAL}")

    def _spot_check_class(self, plan: _Plan, site: "_ClassSite") -> bool:
        """For a few rows, every output: the label must be among the best ones."""
        hard = site.hard_payload().reshape(-1)
        labels = site.plan.labels
        if hard.numel() == 0 or site.num_classes < 2:
            return True
        wrong = (hard != labels).nonzero().reshape(-1)
        rows = torch.cat([wrong, (hard == labels).nonzero().reshape(-1)])[:8]
        grid, at_label = self._row_values(plan, site, rows, labels[rows])
        best = grid.amax(1) if self.higher_is_better else grid.amin(1)
        worst = grid.amin(1) if self.higher_is_better else grid.amax(1)
        if bool(_close_or_better(worst, at_label, self.higher_is_better).all()) and \
                not bool(_close_or_better(at_label, best, self.higher_is_better).all()):
            # fn at its worst wherever a row takes its label: an error rate or a cost passed without
            # higher_is_better=False, which probing would then train away from the labels, silently
            direction, flag = ("lowest", "higher_is_better=False for an error rate or a cost") if \
                self.higher_is_better else ("highest", "higher_is_better=True for a score")
            warnings.warn(
                f"from_metric({self._fn_where()}): fn is {direction} where a row's output is its label in the "
                f"target, on every row probed. Pass {flag}; as it is, the loss trains each row toward the outputs "
                f"fn scores best, found by probing fn (right only where the labels are not the best outputs by "
                f"design).", stacklevel=V.user_stacklevel())
        return bool(_close_or_better(at_label, best, self.higher_is_better).all())

    def _row_values(self, plan: _Plan, site: "_ClassSite", rows: Tensor, labels: Tensor) -> Tuple[Tensor, Tensor]:
        """``fn`` with each of ``rows`` set to each output (at most 256 a row, evenly spaced), the
        others held, and with each set to its ``labels``: ``([rows, outputs], [rows])``."""
        hard = site.hard_payload().reshape(-1)
        n, c = hard.numel(), site.num_classes
        cols = torch.arange(0, c, max(1, -(-c // 256)), device=hard.device)
        r = rows.repeat_interleave(cols.numel())
        variants = hard.expand(r.numel() + rows.numel(), n).clone()
        variants[torch.arange(r.numel(), device=hard.device), r] = cols.repeat(rows.numel())
        variants[r.numel() + torch.arange(rows.numel(), device=hard.device), rows] = labels
        probe = _ProbeSite(site.call, site.index, "class")
        values = self._values(plan, {site.index: variants.reshape((variants.shape[0],) + site.rows_shape)},
                              {site.index: probe})
        return values[: r.numel()].reshape(rows.numel(), -1), values[r.numel():]

    def _spot_check_ignored(self, plan: _Plan, site: "_ClassSite") -> bool:
        """For a few rows of each kind, every output: a labelled row's label must be among its
        best outputs, an ignored row's outputs all equally good (``fn`` leaves it out)."""
        labels, ignored = (t.reshape(-1) for t in cast(Tuple[Tensor, Tensor], site.ignoring))
        rows = torch.cat([(~ignored).nonzero().reshape(-1)[:8], ignored.nonzero().reshape(-1)[:8]])
        grid, at_label = self._row_values(plan, site, rows, labels[rows])
        kept = ~ignored[rows]
        best = grid[kept].amax(1) if self.higher_is_better else grid[kept].amin(1)
        return bool(_close_or_better(at_label[kept], best, self.higher_is_better).all()) and \
            bool(_best_mask(grid[~kept], self.higher_is_better).all())

    def _spot_check_compare(self, plan: _Plan, site: "_CompareSite") -> bool:
        hard = site.call.out.reshape(-1) != 0  # (bool, or round's 0./1.)
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

    def structure(self, target: Any) -> Optional[Structure]:
        """Runs of bits where every traced site decodes from per-run 0-bit counts; with the chain
        through sums where :meth:`_chain_by_sums` gives it."""
        plan = self._prepared(target)
        if not plan.structured:
            return None
        runs = plan.width if plan.width is not None else plan.run_lengths
        # the pull per run over the samples the steps compare, not the scores' first dimension: a
        # ranking per label's column of [n, L] scores draws its runs from n L items, as the zoo's form
        # of the same metric counts them and binary cross-entropy averages (over n, the pull was L
        # times the zoo's: torchmetrics' multi-label AP at lr 0.1 blew the scores up)
        samples = [s.samples() for s in plan.sites if s.num_bits]
        rows = sum(cast(List[int], samples)) if None not in samples else None
        structure = Structure(runs, lambda zeros: self.evaluate_zeros(zeros, plan), rows=rows)
        cut = self._chain_by_sums(plan)
        if cut is not None:
            return replace(structure, chain=cut[0], chain_by_runs=cut[1])
        ranked = self._chain_by_ranks(plan)
        if ranked is not None:
            return replace(structure, chain=ranked)
        # The chain through the runs' counts takes as many points as chain_elements holds of [S] counts, but
        # the traced code decodes each point's counts to its [l] bits: where those pass chain_elements (a
        # probed argmax over a heatmap's pixels), the chain through evaluate instead, at fewer points.
        limits, l = current_limits(), plan.num_bits
        if l > limits.chain_segments and self._replays(plan):
            # a call of fn per point: the chain through evaluate, at chain_segments + 1 points,
            # segment-averaged (as for any metric without counts), instead of all l + 1
            return Structure(runs, rows=rows)
        num = l // runs if isinstance(runs, int) else int(cast(Tensor, runs).numel())
        points = min(l, limits.chain_elements // max(num, 1) - 1) + 1
        return structure if points * l <= limits.chain_elements else Structure(runs, rows=rows)

    def _replays(self, plan: _Plan) -> bool:
        """Whether ``fn`` has to be called once per configuration: the tape it recorded failed its
        check against ``fn`` (data-dependent shapes such as boolean indexing), and ``fn`` cannot be
        vmapped or reads its steps' results in Python branches (torchmetrics' retrieval AP, its
        LogAUC). Known from the first call of a structure on (the check tries vmap too), so every
        call of it takes the same chain. Not with ``batched="loop"``, which calls ``fn`` once per
        configuration by request, the check of the other modes at every point; nor without a tape
        (then nothing has tried vmap yet, and a later call would decide otherwise), unless ``fn``
        traced again halfway along gave none either (:meth:`_adopt_forced_tape`: a value made from
        numbers read in Python, ``correct / total`` of a count read with ``.item()``) and those
        numbers do not batch (:meth:`_decide_numbers`), on the structure's first call as on every
        later one."""
        if self.batched == "loop":
            return False
        if plan.trace.tape is None:
            return plan.trace.branches and self._others.get(plan.key) is False and not self._numbers.get(plan.key)
        if plan.tape != "off":
            return False
        return not self._use_vmap or bool(plan.trace.branches)

    def _chain_by_sums(self, plan: _Plan) -> Optional[Tuple[Callable[..., Tensor], bool]]:
        """The chain's values in ``O(l + S C)`` (:func:`_chain_by_sums`, ``C`` the elements of the
        tensors it holds at every point, :func:`_dense_width`) where the trained steps' outputs
        reach ``fn``'s value only through elementwise operations and sums: comparisons and signs,
        one or several (``Structure.chain``, a run per comparison; an element of the cut
        following an element of each, changing at each of its comparisons' points), an argmax with a label per row
        (``chain_by_runs``: a row decodes to its label once its run is whole, to its best other
        class before) or an argmax with probed best outputs (a run per best output: a row decodes
        to a best output from its first whole run on, to its best other output before; which of
        its best outputs is taken as the one at the chain's end, the same value wherever the
        probe's outputs are equally good, which the check below tests). Only on a tape checked
        against ``fn`` (``plan.tape == "direct"``) and within ``chain_elements``; ``None``
        otherwise (the runs' counts through the tape at every point: ``O(l S)``). The first call
        of each structure checks it against the tape at nine points of a chain and keeps the
        verdict."""
        if not plan.sites or plan.tape != "direct" or self._sums.get(plan.key) is False:
            return None
        sites, tape = plan.sites, cast(_Tape, plan.trace.tape)
        site = sites[0]
        elementwise = all(isinstance(s, _ElementSite) for s in sites)  # comparisons, signs: one or several
        probed = isinstance(site, _ClassSite) and site.mode == "probe"
        if elementwise:
            by_runs = False
        elif len(sites) == 1 and isinstance(site, _ClassSite) and site.call.k is None and \
                (site.mode == "label" or probed and site.call.name in ("argmax", "argmin")):
            by_runs = True
        else:
            return None
        num = sum(s.num_runs() for s in sites)
        if not num:
            return None

        def repeats(s: _Site) -> set:
            return {s.index} | {a for a, o in plan.trace.aliases.items() if o == s.index}

        if elementwise:
            sizes = [cast(_ElementSite, s).size for s in sites]
            if 0 in sizes:
                return None
            tracks = [(repeats(s), size) for s, size in zip(sites, sizes)]
        else:
            tracks = [(repeats(site), cast(_ClassSite, site).num_rows if probed else num)]
        split = _split_at_sums(tape, tracks)
        if split is None:  # the tape's form: the same for every call of this structure
            self._remember_sums(plan, False)
            return None
        if (num + 1) * _dense_width(split, num) > current_limits().chain_elements:
            return None
        best = site.best() if len(sites) == 1 else torch.cat([s.best() for s in sites])
        runs = site._lengths() if len(sites) == 1 else torch.cat([s._lengths() for s in sites])
        lengths = runs.to(torch.float32)  # the runs' 0-bit counts at the chain's two ends:
        ones = torch.zeros(num, device=best.device).index_add_(  # every comparison wrong, every one right
            0, torch.repeat_interleave(torch.arange(num, device=best.device), runs), best.float())
        ends = torch.stack([ones, lengths - ones])
        if probed:  # every comparison wrong, every one right; a row turns at its first whole run
            probe = cast(_ClassSite, site)
            payload = probe.decode(torch.stack([~best, best]))
            rows = probe.active[probe.sets.pos_row]

            def parts(place: Tensor) -> List[Tuple[_Site, Any, Tensor]]:
                first = place.new_zeros(probe.num_rows).scatter_reduce_(0, rows, place, "amin", include_self=False)
                return [(site, payload, first)]
        elif elementwise and not (len(sites) == 1 and isinstance(site, _CompareSite)):
            element_sites = [cast(_ElementSite, s) for s in sites]  # each element's comparisons at their
            payloads = [s.configurations() for s in element_sites]  # configurations; places by site, [B, size]
            starts = torch.tensor([0] + [s.num_bits for s in element_sites]).cumsum(0).tolist()

            def parts(place: Tensor) -> List[Tuple[_Site, Any, Tensor]]:
                return [(s, p, place[a:b].reshape(-1, s.size))
                        for s, p, a, b in zip(element_sites, payloads, starts, starts[1:])]
        else:  # a run per element of the output (a comparison) or per row (an argmax with labels)
            at_ends = site.decode_zeros(ends)

            def parts(place: Tensor) -> List[Tuple[_Site, Any, Tensor]]:
                return [(site, at_ends, place)]

        def cut(place: Tensor, points: int) -> Tensor:
            return self._held_or_tape(_chain_by_sums(split, tape, parts(place), points),
                                      lambda at: self._chain_points(plan, ends, place, at))

        def values(place: Tensor, points: int = num) -> Tensor:
            try:
                return cut(place, points)
            except Exception:  # not expected after the check: the tape at every point from now on
                self._remember_sums(plan, False)
                return self._chain_points(plan, ends, place, torch.arange(points + 1, device=place.device))

        if not self._cut_agrees(plan, num, lambda order: cut(order + 1, num),
                                lambda order, at: self._chain_points(plan, ends, order + 1, at)):
            return None
        if by_runs:
            return values, True  # (turn, length)
        return (lambda rank: values(rank + 1)), False

    def _chain_by_ranks(self, plan: _Plan) -> Optional[Callable[[Tensor], Tensor]]:
        """The chain's values in ``O(l log l)`` (:func:`_chain_by_ranks`) where the trained steps
        are binary rankings of one query each (one, or one per class's curve: torchmetrics'
        ``multiclass_auroc``) read as ``t[order]`` into cumulative sums, elementwise operations,
        moves and sums (AP, AUROC written with ``argsort``), or one ``topk`` with a label per row
        read the same way (top-k accuracy); ``None`` otherwise
        (the runs' counts through the tape at every point: ``O(l n)``). Only on a tape checked
        against ``fn`` and within ``chain_elements``; the first call of each structure checks it
        against the tape at nine points of a chain and keeps the verdict."""
        if not plan.sites or plan.tape != "direct" or self._sums.get(plan.key) is False:
            return None
        site, tape = plan.sites[0], cast(_Tape, plan.trace.tape)
        topk = len(plan.sites) == 1 and isinstance(site, _ClassSite) and site.mode == "label" and \
            site.call.name == "topk" and site.call.k is not None and site.num_classes > 1
        if not (all(isinstance(s, _RankSite) and s.binary for s in plan.sites) or topk) or not plan.num_bits:
            return None
        sites = {}  # each site and its first comparison's place, by step index (its repeats too)
        for s, offset in zip(plan.sites, plan.offsets):
            for index in {s.index} | {a for a, o in plan.trace.aliases.items() if o == s.index}:
                sites[index] = (s, offset)
        split = _split_at_ranks(tape, {index: s for index, (s, _) in sites.items()})
        if split is None:
            self._remember_sums(plan, False)
            return None
        num, limit = plan.num_bits, current_limits().chain_elements
        # its sums at every point, and the changes it holds (two or so a point for each step's result)
        steps = len(split.steps) + _boundary(split.cut, num)
        if (num + 1) * _dense_width(split.cut, num) > limit or 2 * (num + 1) * max(1, steps) > limit:
            return None

        def cut(rank: Tensor) -> Tensor:
            return self._held_or_tape(_chain_by_ranks(split, tape, sites, rank),
                                      lambda at: self._ranked_points(plan, rank, at))

        def values(rank: Tensor) -> Tensor:
            try:
                return cut(rank)
            except Exception:  # not expected after the check: the tape at every point from now on
                self._remember_sums(plan, False)
                return self._ranked_points(plan, rank, torch.arange(num + 1, device=rank.device))

        if not self._cut_agrees(plan, num, cut, lambda order, at: self._ranked_points(plan, order, at)):
            return None
        return values

    @staticmethod
    def _held_or_tape(result: Any, tape_at: Callable[[Tensor], Tensor]) -> Tensor:
        """Values from a tape or a cut; where ``fn`` reads values as Python values (``result`` is
        then ``(values, held)``: where each is the trace's), the others from ``tape_at(points)``,
        which replays ``fn`` there."""
        if not isinstance(result, tuple):
            return result
        values, held = result
        if not bool(held.all()):
            where = (~held).nonzero().flatten()
            values = values.clone()
            values[where] = tape_at(where).to(values.dtype)
        return values

    def _cut_agrees(self, plan: _Plan, num: int, cut: Callable[[Tensor], Tensor],
                    tape_at: Callable[[Tensor, Tensor], Tensor]) -> bool:
        """Whether a cut's chain (``cut(order)``, ``order`` a permutation of the ``num``
        comparisons or runs) equals the tape's (``tape_at(order, at)``) at nine points of a chain;
        decided on the first call of each structure and kept (an operation the cut cannot take
        counts as a disagreement: the tape at every point)."""
        if plan.key not in self._sums:
            device = plan.scores.device
            order = torch.randperm(num, generator=torch.Generator().manual_seed(0)).to(device)
            at = torch.linspace(0, num, 9, device=device).round().long().unique()
            try:
                with torch.no_grad():
                    ok = _same(cut(order)[at], tape_at(order, at))
            except Exception:
                ok = False
            self._remember_sums(plan, ok)
        return bool(self._sums.get(plan.key, False))

    def _ranked_points(self, plan: _Plan, rank: Tensor, at: Tensor) -> Tensor:
        """The tape at the chain's points ``at`` (comparison ``k`` right from point ``rank[k] +
        1``), in blocks within ``chain_elements``."""
        best = torch.cat([s.best().reshape(-1) for s in plan.sites])
        step = max(1, current_limits().chain_elements // max(rank.numel(), 1))
        return torch.cat([self.evaluate(torch.where(rank[None] < j[:, None], best, ~best), plan)
                          for j in at.split(step)])

    def _remember_sums(self, plan: _Plan, ok: bool) -> None:
        if len(self._sums) >= 256:
            self._sums.clear()
        self._sums[plan.key] = ok

    def _chain_points(self, plan: _Plan, ends: Tensor, place: Tensor, at: Tensor) -> Tensor:
        """The tape at the chain's points ``at``: the runs of ``place <= j`` with their 0-bit
        counts at ``ends[1]`` (every comparison right), the others at ``ends[0]``, in blocks
        within ``chain_elements``."""
        step = max(1, current_limits().chain_elements // max(place.numel(), 1))
        return torch.cat([self.evaluate_zeros(torch.where(place[None] <= j[:, None], ends[1], ends[0]), plan)
                          for j in at.split(step)])

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
        return V.check_plan(self, target, _Plan)

    def metric(self, scores: Tensor, target: Any) -> Tensor:
        """``fn(scores, target)`` itself (float32; float64 where ``fn`` returns float64): exact,
        tied scores included, where the hard configuration's ``evaluate`` counts a tied comparison
        as wrong (``torch.argmax`` of equal scores picks the first; the comparisons cannot)."""
        with torch.no_grad():
            return self._reported(self.prepare(scores, target))

    def batch_metric(self, target: Any) -> Optional[Tensor]:
        """The value ``fn`` gave on the scores the plan was traced on (the trace computes it): the
        batch's exact metric, ties included (see :meth:`metric`)."""
        return self._reported(target) if isinstance(target, _Plan) else None

    @staticmethod
    def _reported(plan: _Plan) -> Tensor:
        value = plan.trace.value
        return value if value.dtype in (torch.float32, torch.float64) else value.float()

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
            elif isinstance(site, _SignSite):
                how = (f"the sign of each element as two comparisons with 0 (> 0, < 0), best signs found by "
                       f"probing fn: {site.num_bits} comparisons")
            elif isinstance(site, _RankSite):
                how = (f"ranking by the target's relevance, {site.num_bits} comparisons "
                       f"(uniloss.decoders.Ranking(pairs={site.pairs!r}))")
            elif call.name in ("round", "heaviside"):
                how = (f"one comparison per element ({'p > 0.5' if call.name == 'round' else 'x > 0 or x >= 0'}, "
                       f"as 0. or 1.), {site.num_bits} in all")
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
        tape = plan.trace.tape
        where = "; ".join(sorted({plan.trace.guards[s] for s in trained if s in plan.trace.guards}))
        if tape is not None and plan.trace.forced:
            why = plan.trace.why_no_tape or "its values read differ halfway along"
            lines.append(f"  Python control flow on the trained steps (at {where}) on a rare path of this trace "
                         f"({why}): the tape of fn traced again halfway along (every other "
                         "comparison wrong) stands in where its values read hold; fn takes its own path at the others")
        elif tape is not None and tape.guards:
            lines.append(f"  Python control flow on the trained steps (at {where}): {len(tape.guards)} "
                         "values read are computed at every configuration; where one differs from this trace's, "
                         "fn traced again on that path, or replayed")
        elif plan.trace.branches and self._others.get(plan.key) is False and self._numbers.get(plan.key):
            lines.append(f"  Python control flow on the trained steps (at {where}) without a tape of this trace "
                         f"({plan.trace.why_no_tape}): fn replayed batched over the configurations with vmap, "
                         "each value it reads with .item() or .tolist() carried as a tensor of its values, one "
                         "replay for each path through its branches")
        elif plan.trace.branches and self._others.get(plan.key) is False:
            lines.append(f"  Python control flow on the trained steps (at {where}) without a tape of this trace "
                         f"({plan.trace.why_no_tape}), nor of fn traced again halfway along: fn replayed at every "
                         "configuration the loss evaluates, one at a time (the chain at no more than "
                         "chain_segments + 1 points)")
        elif plan.trace.branches:
            lines.append(f"  Python control flow on the trained steps (at {where}) without a tape of this trace "
                         f"({plan.trace.why_no_tape}): fn traced again at a configuration on another path, its "
                         "tape used where the values read are that trace's, fn replayed where none is")
        return "\n".join(lines)


class _ProbeSite(_Site):
    """Formats a probe's payload (labels or a bool mask) as the traced step's result."""

    def __init__(self, call: _Call, index: int, kind: str) -> None:
        self.call, self.index, self.kind = call, index, kind

    def format(self, payload: Tensor, x: Tensor) -> Any:
        if self.kind == "compare":
            return _as_output(self.call, payload)
        return _format_class(self.call, payload, x)

    def format_batched(self, payload: Tensor, x: Tensor) -> Any:
        if self.kind == "compare":
            return _as_output(self.call, payload)
        return _format_class_batched(self.call, payload, x)


def _tape_kind(tape: _Tape) -> str:
    """How a tape runs on a batch of configurations: by hand where every step can, else vmapped."""
    return "direct" if tape.direct else "vmap"


def _agrees(values: Tensor, reference: Tensor) -> bool:
    """Whether a tape's values are ``fn``'s (the tolerance of every tape's check)."""
    return bool(torch.allclose(values.double().cpu(), reference.double().cpu(), rtol=1e-6, atol=1e-9,
                               equal_nan=True))


def _pick(payloads: Dict[int, Any], where: Any) -> Dict[int, Any]:
    """The sites' payloads at some configurations (``where`` indexes their leading dimension)."""
    return {i: (tuple(q[where] for q in p) if isinstance(p, tuple) else p[where]) for i, p in payloads.items()}


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


def _spread(index: Tensor, most: int) -> Tensor:
    """At most ``most`` entries of ``index``, evenly spread over it (its ends included)."""
    if index.numel() <= most:
        return index
    return index[torch.linspace(0, index.numel() - 1, most, device=index.device).round().long()]


def _same(a: Tensor, b: Tensor) -> bool:
    a, b = a.double().cpu(), b.double().cpu()
    return bool(torch.allclose(a, b, atol=1e-6, rtol=1e-5, equal_nan=True))


def _cat_payloads(payloads: List[Any]) -> Any:
    if isinstance(payloads[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*payloads))
    return torch.cat(payloads)


def _functional_form(metric: object) -> str:
    """The functional form of a torchmetrics metric object where its name gives it
    (``BinaryF1Score``: ``torchmetrics.functional.classification.binary_f1_score``), else ``""``."""
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", type(metric).__name__).lower()
    name = name.replace("_corr_coef", "_corrcoef")  # SpearmanCorrCoef: spearman_corrcoef
    parts = type(metric).__module__.split(".")
    if len(parts) < 2 or parts[0] != "torchmetrics":
        return ""
    where = f"torchmetrics.functional.{parts[1]}"
    try:
        found = callable(getattr(importlib.import_module(where), name, None))
    except ImportError:
        return ""
    return f"{where}.{name}" if found else ""


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
      target shaped like the scores, or, for items moved out of larger scores by constants such
      as a label's column ``s[:, i]``, shaped like those and moved the same way; more relevant =
      higher score): pairs of items of different relevance (``decoders.Ranking``,
      :class:`uniloss.AveragePrecision`'s layout for 0/1);
    * ``s > t``, ``s < t``, ``>=``, ``<=`` (``t`` a constant, a tensor of the target or other
      scores): one comparison per element; best, a 0/1 tensor of the target of the output's shape
      (or of its leading dimensions), else probing;
    * ``torch.sign(x)`` (``sgn``; ``x`` the scores or a difference of them, ``s[:, None] -
      s[None, :]``): two comparisons per element, ``x > 0`` and ``x < 0``, decoded to ``[x > 0] -
      [x < 0]`` (0 where ``x`` is 0, as ``torch.sign`` gives); the best sign of each element
      found by probing ``fn`` at each of its three values;
    * ``torch.round(p)`` of a sigmoid's or a softmax's output ``p`` (binary accuracy written as
      ``(torch.sigmoid(s).round() == y)``): ``p > 0.5``, one comparison per element (round half to
      even takes 0.5 to 0), its output 0. or 1. in ``p``'s dtype as ``round`` gives; best as for
      ``>``. ``torch.heaviside(x, v)`` with a constant ``v`` of 0 or 1: ``x > 0`` or ``x >= 0``, the
      same way. Other rounding (of unbounded scores, ``floor``, ``ceil``) raises, with how to
      write it as comparisons.

    Monotone maps before a step are looked through (``sigmoid(s) > 0.5`` is ``s > 0``;
    ``softmax(s, 1).argmax(1)`` is ``s.argmax(1)``; a column ``s.sigmoid()[:, i]`` ranked is
    ``s[:, i]`` ranked, and ``s.sigmoid()[:, i] > 0.5`` is ``s[:, i] > 0``; a class's column of
    ``softmax(s, 1)``, ranked over the samples as torchmetrics' one-vs-rest curves rank logits, or
    thresholded (``softmax(s, 1)[:, c] > t``), is ranked or thresholded by its one-vs-rest logits
    ``s_c - logsumexp_{j != c} s_j``, whose sigmoid it is: of two classes, ``s1 - s0``; a
    ``log_softmax``'s column too; the same map on both sides of a comparison, ``sigmoid(a) >
    sigmoid(b)`` or two entries of one softmax row, compares what it maps), so the comparisons are
    in the scores' units. The pull per run is divided by the larger of the runs and the samples the
    steps compare (a ranking's items over all its queries, as the zoo's form of the same metric
    counts them). The anchors are evaluated by replaying ``fn`` with each step returning the outputs
    decoded from the anchor's bits, batched with :func:`torch.func.vmap` (or one call per anchor
    where ``fn`` cannot be vmapped: a warning says so once; the chain then takes
    ``chain_segments + 1`` points, segment-averaged, where it would take one per comparison, unless
    ``batched="loop"``). Steps whose results only steer Python control flow
    (``if not torch.all((s >= 0) * (s <= 1)): s = s.sigmoid()``) and tie tests on sorted scores
    are held at their current results. Python control flow on results that also feed the value
    (``if tp == 0:``, ``int(pred.sum())``) is followed: each tensor ``fn`` reads as a Python value is
    computed at every configuration, and where it differs from the trace's, ``fn`` is traced again
    on that path (its steps returning one such configuration's outputs) and that tape gives the
    values where it holds, ``fn`` itself replayed at the rest (where no trace can compute the values
    read, at every configuration, with a warning). ``fn`` may return a Python or NumPy number
    (``correct / total`` of a count read with ``.item()``, a scikit-learn metric of ``.numpy()`` of
    a step's output), taken as a float64 tensor. A number read with ``.item()`` (or a list of them
    from ``.tolist()``) and used only in Python's arithmetic, then returned or given to
    ``torch.tensor``, is carried as a tensor of its values at every configuration, so ``fn`` is
    replayed once, batched; comparisons of such numbers and branches on them (``tp / pp if pp > 0
    else 0.0``, ``max(pp, 1)``) are followed path by path, each path's configurations in one
    batched replay, as are ``round()`` and ``math.floor`` of them to ints; used otherwise
    (``math.sqrt``, ``round()`` to digits, NumPy), ``fn`` is replayed at every configuration
    (exact and slow). On
    the first call of each input structure the inferred best configuration is checked against
    probes of ``fn``, and the replay on the current scores against ``fn`` itself.

    Exact: ``metric(scores, target)`` and ``UniLoss.last.metric`` are ``fn``'s own value (the trace
    computes it), tied scores included; on untied scores the hard configuration's bits give that
    value too, and for the metrics above the bits are the hand-written decompositions'
    (``tests/test_from_metric.py``). Exact ties count as wrong comparisons in the bits, as in the
    built-in metrics. A score within rounding of a threshold that ``fn``'s own map rounds to a tie
    (``sigmoid(s) > 0.5`` at ``s = 1e-9``: ``sigmoid`` gives 0.5) is right in the bits and wrong in
    ``fn``; the reported metric is ``fn``'s, and the first call's check accepts it.

    Args:
        fn: ``fn(scores, target) -> scalar tensor`` (or a number, above); called once per loss
            call on the scores and once (vmapped) per evaluation of the anchors.
        higher_is_better: the loss is ``-g~`` when true, ``g~`` otherwise (``False`` for an error
            rate or a cost).
        batched: ``"auto"`` (default), ``"vmap"`` or ``"loop"``: see :class:`TracedMetric`.
        probe_limit: most replays of ``fn`` per call for probing (see :class:`TracedMetric`).

    Returns:
        A :class:`TracedMetric` (a :class:`uniloss.Decomposition`); :meth:`TracedMetric.explain`
        describes what was found.

    Raises:
        TraceError: when ``fn`` takes a step that cannot be traced (an operation that turns scores
            into integers other than the ones above, ``.item()`` on scores, a value that depends
            on the scores continuously),
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

    Example -- a threshold on a probability is compared in the scores' units (of two classes, the
    logits' difference, not the probability's distance to the threshold)::

        >>> def positive_f1(scores, target):                  # scores [n, 2], target [n] in {0, 1}
        ...     pred = scores.softmax(dim=1)[:, 1] > 0.5
        ...     tp = (pred & (target == 1)).sum()
        ...     return 2 * tp / (pred.sum() + (target == 1).sum())
        >>> f1 = uniloss.from_metric(positive_f1)
        >>> logits, labels = torch.tensor([[0.0, 3.0], [1.0, -1.0], [0.0, 0.5]]), torch.tensor([1, 0, 0])
        >>> f1.comparisons(logits, labels)                    # s1 - s0
        tensor([ 3.0000, -2.0000,  0.5000])
        >>> f1.metric(logits, labels)                         # tp 1, fp 1, fn 0
        tensor(0.6667)
    """
    return TracedMetric(fn, higher_is_better=higher_is_better, batched=batched, probe_limit=probe_limit)
