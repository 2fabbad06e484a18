"""The documentation site: ``mkdocs build --strict`` passes and every page in the navigation exists.

Skipped unless the docs tools are installed (``pip install mkdocs-material mkdocstrings-python``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocs")
pytest.importorskip("material")
pytest.importorskip("mkdocstrings_handlers.python")

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "mkdocs.yml"


def _nav_files(nav):
    """The file paths of a MkDocs ``nav`` (nested lists of strings and one-key dicts)."""
    if isinstance(nav, str):
        if "://" not in nav:
            yield nav
    elif isinstance(nav, list):
        for item in nav:
            yield from _nav_files(item)
    elif isinstance(nav, dict):
        for value in nav.values():
            yield from _nav_files(value)


def test_every_page_in_the_nav_exists():
    from mkdocs.config import load_config

    config = load_config(str(CONFIG))
    pages = list(_nav_files(config["nav"]))
    assert len(pages) > 20
    missing = [p for p in pages if not (Path(config["docs_dir"]) / p).is_file()]
    assert not missing, f"pages in mkdocs.yml's nav without a file under docs/: {missing}"


def test_site_builds_strict(tmp_path):
    site = tmp_path / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", OMP_NUM_THREADS="1")
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(CONFIG),
         "--site-dir", str(site)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, f"mkdocs build --strict failed:\n{run.stdout}\n{run.stderr}"

    # The method's figure, and the result pages' plots shown (not only named).
    assert (site / "img" / "method.png").is_file()
    assert 'src="../img/method.png"' in (site / "method" / "index.html").read_text()
    results = (site / "results" / "mnist-ap" / "results" / "index.html").read_text()
    shown = r'<img alt="Curves of the validation metric per epoch" src="[./]*curves.png"'
    assert re.search(shown, results), "the curves of a results.md page are not shown"

    # The API reference is rendered from the docstrings, their reST turned into Markdown.
    loss = (site / "api" / "loss" / "index.html").read_text()
    assert 'id="uniloss.UniLoss"' in loss
    for page in (site / "api").glob("*/index.html"):
        html = page.read_text()
        for raw in (":func:`", ":class:`", ":math:`", ".. math::", "Example::"):
            assert raw not in html, f"{raw!r} left as text in {page.relative_to(site)}"


def test_docstring_rest_becomes_markdown():
    import importlib.util

    spec = importlib.util.spec_from_file_location("griffe_rst", ROOT / "scripts" / "griffe_rst.py")
    rst = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rst)
    text = (
        "Args:\n    a, b: both,\n        see c, d: not an entry.\n\n"
        "Example::\n\n    >>> 1\n    1\n\n.. math:: x = 1\n\nafter"
    )
    assert rst.convert_blocks(rst.split_joint_parameters(text)).split("\n") == [
        "Args:", "    a: both,", "        see c, d: not an entry.",
        "    b: both,", "        see c, d: not an entry.", "",
        "Example:", "", "```pycon", ">>> 1", "1", "```", "", "",
        "", "$$", "x = 1", "$$", "", "", "after",
    ]
