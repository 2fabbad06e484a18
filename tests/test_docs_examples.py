"""The Python examples of the README and the docs run as written: each file's ```python blocks
in order, in one namespace (a later block may use an earlier one's names), as a reader would
paste them. docs/distributed.md is left out: its blocks are fragments of a torchrun, Lightning or
Accelerate script (a process group, a trainer) that no single process here provides."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = ["README.md", "docs/index.md", "docs/getting-started.md", "docs/custom-metrics.md"]


def _blocks(path):
    return re.findall(r"```python\n(.*?)```", (ROOT / path).read_text(), re.S)


@pytest.mark.parametrize("path", FILES)
def test_the_python_examples_run(path, capsys):
    blocks = _blocks(path)
    assert blocks, f"{path} has no ```python block"
    namespace: dict = {"__name__": "__docs__"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{path} (python block {i})", "exec"), namespace)  # noqa: S102


def test_every_docs_page_with_python_examples_is_run_or_said_why_not():
    pages = {p.relative_to(ROOT).as_posix() for p in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]
             if "```python" in p.read_text()}
    assert pages - set(FILES) == {"docs/distributed.md"}, pages - set(FILES)
