"""The engine's one dispatch (uniloss.functional.choose_path) and its one limits object
(uniloss._limits): the decisions on a table of cases, each also checked through the path a real
call reports (LossInfo.path), and no size constant of the engine defined outside _limits.py."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import uniloss
from uniloss import _limits
from uniloss import functional as F

SRC = Path(__file__).resolve().parents[1] / "src" / "uniloss"


def _ap(n=16):
    g = torch.Generator().manual_seed(0)
    return uniloss.AveragePrecision(), torch.randn(n, generator=g), torch.arange(n) % 3 == 0


def _pck():
    g = torch.Generator().manual_seed(0)
    heat = torch.randn(2, 3, 8, 8, generator=g)
    joints = uniloss.KeypointTarget(torch.randint(0, 8, (2, 3, 2), generator=g).float(),
                                    torch.ones(2, 3, dtype=torch.bool), torch.full((2,), 4.0))
    return uniloss.PCK(), heat, joints


def _dense_anchors(dec, scores, target):
    prepared = dec.prepare(scores, target)
    l = dec.comparisons(scores, prepared).numel()
    return torch.rand(5, l, generator=torch.Generator().manual_seed(1)) < 0.5


# (name, case, call options, limits overrides, expected path, expected static offer)
CASES = [
    ("given dense anchors", _ap, "dense", {}, "dense", None),
    ("AP small", _ap, {}, {}, "structured", 0),
    ("PCK small", _pck, {}, {}, "structured", 0),
    ("PCK over chunk_bits", _pck, {"chunk_bits": 8}, {}, "chunked", 0),
    ("PCK over an overridden default chunk_bits", _pck, {}, {"chunk_bits": 8}, "chunked", 0),
    ("PCK, overridden block_bits", _pck, {"chunk_bits": 100}, {"block_bits": 16}, "chunked", 0),
    ("good_anchors='all': no offer", _ap, {"good_anchors": "all"}, {}, "structured", None),
    ("CPU under the accelerators' policy", _ap, {}, {"cpu_static_max_bits": 1 << 22}, "structured", 1 << 22),
    # PCK can also work block by block: it may claim a static layout of at most chunk_bits
    ("PCK static claim capped at chunk_bits", _pck, {"chunk_bits": 100}, {"cpu_static_max_bits": 1 << 22},
     "chunked", 1 << 22),
    ("PCK static layout within chunk_bits", _pck, {}, {"cpu_static_max_bits": 1 << 22}, "structured", 1 << 22),
]


@pytest.mark.parametrize("name, case, options, overrides, path, offer", CASES, ids=[c[0] for c in CASES])
def test_dispatch_decides_and_the_call_runs_that_path(name, case, options, overrides, path, offer):
    dec, scores, target = case()
    if options == "dense":
        options = {"anchors": _dense_anchors(dec, scores, target)}
    with _limits.limits(**overrides) as limits:
        plan = F.choose_path(scores, target, dec, generator=torch.Generator().manual_seed(0), **options, interpolation="anchors")
        _, info = F.uniloss_with_info(scores, target, dec, generator=torch.Generator().manual_seed(0), **options, interpolation="anchors")
    assert (plan.path, plan.static_bits) == (path, offer)
    assert info.path == path
    assert plan.block_bits == min(plan.chunk_bits, limits.block_bits)
    assert (plan.comparisons is None) == (path == "chunked")
    if offer:  # a static layout where offered, but not past chunk_bits for PCK (then chunked)
        assert (plan.layout is not None) == (path == "structured")


def test_cpu_gets_no_static_offer_and_accelerators_do():
    limits = _limits.DEFAULT_LIMITS
    assert limits.static_bits_for(torch.device("cpu")) == 0
    assert limits.static_bits_for("cuda") == limits.static_max_bits == 1 << 22
    assert limits.static_bits_for("mps") == 1 << 22
    dec, scores, target = _ap()
    plan = F.choose_path(scores, target, dec, interpolation="anchors")
    assert plan.static_bits == 0 and plan.layout is None
    _, info = F.uniloss_with_info(scores, target, dec, validate_args=False, interpolation="anchors")
    assert isinstance(info.bit_count, int)  # laid out exactly (a static layout counts on the device)


def test_an_overridden_limit_changes_the_decision_and_is_restored():
    dec, scores, target = _pck()
    l = F.uniloss_with_info(scores, target, dec, interpolation="anchors")[1].num_bits
    assert F.choose_path(scores, target, dec, interpolation="anchors").path == "structured"
    with _limits.limits(chunk_bits=l - 1):
        assert F.choose_path(scores, target, dec, interpolation="anchors").path == "chunked"
        assert F.uniloss_with_info(scores, target, dec, interpolation="anchors")[1].path == "chunked"
        with _limits.limits(chunk_bits=l):  # nests
            assert F.choose_path(scores, target, dec, interpolation="anchors").path == "structured"
        assert _limits.current_limits().chunk_bits == l - 1
    assert _limits.current_limits() is _limits.DEFAULT_LIMITS
    with pytest.raises(TypeError):
        with _limits.limits(no_such_limit=1):
            pass
    assert _limits.current_limits() is _limits.DEFAULT_LIMITS


def test_dispatch_takes_explicit_limits():
    dec, scores, target = _pck()
    plan = F.choose_path(scores, target, dec, limits=_limits.DEFAULT_LIMITS.override(chunk_bits=8), interpolation="anchors")
    assert plan.path == "chunked" and plan.chunk_bits == 8
    assert _limits.current_limits() is _limits.DEFAULT_LIMITS


def test_given_structured_anchors_for_other_comparisons_run_dense():
    dec, scores, target = _ap()
    prepared = dec.prepare(scores, target)
    c = dec.comparisons(scores, prepared).reshape(-1)
    anchors = uniloss.sample_anchors(dec.best(prepared).reshape(-1), c > 0, generator=torch.Generator().manual_seed(0))
    assert F.choose_path(scores, target, dec, anchors=anchors, interpolation="anchors").path == "structured"
    other = uniloss.sample_anchors(dec.best(prepared).reshape(-1), c <= 0, generator=torch.Generator().manual_seed(0))
    plan = F.choose_path(scores, target, dec, anchors=other, interpolation="anchors")
    assert plan.path == "dense" and not plan.anchor_set.is_structured
    assert F.uniloss_with_info(scores, target, dec, anchors=other, interpolation="anchors")[1].path == "dense"


# The sizes the engine decides by: the fields of EngineLimits, and the names they once had.
OLD_NAMES = {"DEFAULT_CHUNK_BITS", "BLOCK_BITS", "STATIC_MAX_BITS", "CPU_STATIC_MAX_BITS", "_UNPACK_LIMIT",
             "_DENSE_LIMIT", "_SELECT_BLOCK", "_SELECT_CHUNK"}


def test_no_module_but_limits_defines_a_limit():
    fields = {f.upper() for f in _limits.EngineLimits.__dataclass_fields__}
    offenders = []
    for path in sorted(SRC.glob("*.py")):
        if path.name == "_limits.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, (ast.AnnAssign, ast.AugAssign)) else []
            for target in targets:
                if isinstance(target, ast.Name) and (target.id in OLD_NAMES or target.id.lstrip("_") in fields):
                    offenders.append(f"{path.name}:{node.lineno}: {target.id}")
    assert offenders == []
    assert set(_limits.EngineLimits.__dataclass_fields__) == {
        "chunk_bits", "block_bits", "static_max_bits", "cpu_static_max_bits", "unpack_bits", "dense_bits",
        "select_block", "select_chunk", "weight_outputs", "weight_counts", "chain_segments", "chain_elements"}
