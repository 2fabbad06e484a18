"""The package's layering: no import cycles between its modules, no private names imported across
modules, and the core importing nothing from the experiments (every module imports: see
test_doctests.py, which collects them all).

The graph is read from the source (module-level ``import`` statements, including those inside
module-level ``if``/``try``), so a cycle is caught even where Python's import order happens to
tolerate it today."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = SRC.parent


def _modules() -> dict:
    out = {}
    for path in sorted((SRC / "uniloss").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _absolute(current: str, is_package: bool, level: int, module) -> str:
    if level == 0:
        return module or ""
    base = current if is_package else current.rsplit(".", 1)[0]
    for _ in range(level - 1):
        base = base.rsplit(".", 1)[0]
    return f"{base}.{module}" if module else base


def _imports(name: str, path: Path, module_level: bool):
    """``(line, imported module, imported name or None)`` for each import in the file."""
    tree = ast.parse(path.read_text())
    if module_level:
        nodes = []
        for top in tree.body:
            nodes += list(ast.walk(top)) if isinstance(top, (ast.If, ast.Try)) else [top]
    else:
        nodes = list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            base = _absolute(name, path.name == "__init__.py", node.level, node.module)
            for alias in node.names:
                yield node.lineno, base, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, None


def _graph() -> dict:
    graph = {}
    for name, path in MODULES.items():
        deps = set()
        for _, base, item in _imports(name, path, module_level=True):
            target = f"{base}.{item}" if item and f"{base}.{item}" in MODULES else base
            if target in MODULES and target != name:
                deps.add(target)
        graph[name] = deps
    return graph


def _cycles(graph: dict) -> list:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_the_package_modules():
    assert _cycles(_graph()) == []


def test_the_core_imports_nothing_from_the_experiments():
    # uniloss.__main__ (`python -m uniloss`) is the command's entry point: it imports the CLI only
    # when run as a script (tests/experiments/test_cli.py checks that importing it runs nothing).
    core = {n: p for n, p in MODULES.items() if not n.startswith("uniloss.experiments") and n != "uniloss.__main__"}
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {base}"
        for name, path in core.items()
        for line, base, item in _imports(name, path, module_level=False)
        if (f"{base}.{item}" if item else base).startswith("uniloss.experiments")
    ]
    assert offenders == []


def _private_imports(paths) -> list:
    offenders = []
    for name, path in paths:
        for line, base, item in _imports(name, path, module_level=False):
            if item and item.startswith("_") and not item.startswith("__") and f"{base}.{item}" not in MODULES:
                offenders.append(f"{path.relative_to(ROOT)}:{line}: from {base} import {item}")
    return offenders


def test_no_module_imports_another_modules_private_name():
    """``from .x import _name`` across modules (a private module itself may be imported)."""
    assert _private_imports(MODULES.items()) == []


def test_the_benchmarks_and_examples_import_no_private_name():
    paths = [(p.stem, p) for folder in ("benchmarks", "examples", "scripts") for p in sorted((ROOT / folder).glob("*.py"))]
    assert _private_imports(paths) == []


def test_loss_info_names_the_path_that_ran():
    """One dispatch, visible: given dense anchors -> dense; sampled -> structured; above
    chunk_bits comparisons (a decomposition with blocks: PCK) -> chunked."""
    import torch

    import uniloss

    g = torch.Generator().manual_seed(0)
    scores, target = torch.randn(12, generator=g), torch.arange(12) % 3 == 0
    loss_fn = uniloss.UniLoss(uniloss.AveragePrecision(), generator=g, interpolation="anchors")
    loss_fn(scores, target)
    assert loss_fn.last.path == "structured"
    anchors = torch.rand(5, 4 * 8, generator=g) < 0.5
    _, info = uniloss.functional.uniloss_with_info(scores, target, uniloss.AveragePrecision(), anchors=anchors, interpolation="anchors")
    assert info.path == "dense"
    heat = torch.randn(2, 3, 8, 8, generator=g)
    joints = uniloss.KeypointTarget(torch.randint(0, 8, (2, 3, 2), generator=g).float(), torch.ones(2, 3, dtype=torch.bool),
                                    torch.full((2,), 4.0))
    info_small = uniloss.functional.uniloss_with_info(heat, joints, uniloss.PCK(), generator=g, interpolation="anchors")[1]
    info_chunked = uniloss.functional.uniloss_with_info(heat, joints, uniloss.PCK(), generator=g, chunk_bits=8, interpolation="anchors")[1]
    assert (info_small.path, info_chunked.path) == ("structured", "chunked")
