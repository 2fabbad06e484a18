"""MkDocs hooks for the documentation site (``hooks:`` in ``mkdocs.yml``).

The result pages under ``docs/results/`` are written by ``uniloss reproduce`` and the benchmarks
and read on GitHub as well as on the site, so the site adapts to them instead of the reverse:

* a ``results.md`` names its plots (``Curves of the validation metric per epoch: `curves.png`.``)
  without showing them; on the site every PNG of its folder is shown, where it is named or, when
  it is not named, under a closing "Plots" heading;
* a ``results.md`` is mostly a wide table: its page hides the table of contents (the right
  sidebar) to give the table the room;
* a link from a page to a repository file outside ``docs/`` (``../benchmarks/README.md``) has no
  page on the site: it points into the repository when ``repo_url`` is set, and becomes the
  file's path in code otherwise. Every other link is still checked by ``mkdocs build --strict``.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

_LINK = re.compile(r"\[(?P<text>[^\]]*)\]\((?P<target>[^)\s#]+)(?P<anchor>#[^)\s]*)?\)")


def _show_plots(markdown: str, folder: Path) -> str:
    missing = [p.name for p in sorted(folder.glob("*.png")) if f"]({p.name})" not in markdown]
    unnamed = []
    for name in missing:
        # "Some words: `curves.png`." on a line of its own -> "Some words:" and the image.
        mention = re.compile(rf"^(?P<words>[^\n`]*?):?[ \t]*`{re.escape(name)}`\.?[ \t]*$", re.M)
        if mention.search(markdown):
            markdown = mention.sub(
                lambda m, name=name: f"{m['words']}:\n\n![{m['words']}]({name})", markdown, count=1
            )
        else:
            unnamed.append(name)
    if unnamed:
        images = "\n\n".join(f"![{name}]({name})" for name in unnamed)
        markdown = markdown.rstrip("\n") + f"\n\n## Plots\n\n{images}\n"
    return markdown


def _outside_links(markdown: str, src_uri: str, repo_url: str | None) -> str:
    page_dir = posixpath.dirname(src_uri)

    def fix(match: re.Match) -> str:
        target = match["target"]
        if "://" in target or target.startswith(("/", "mailto:")):
            return match[0]
        path = posixpath.normpath(posixpath.join(page_dir, target))
        if not path.startswith("../"):
            return match[0]  # inside docs/: mkdocs checks it
        repo_path = path[len("../") :]
        if repo_url:
            return f"[{match['text']}]({repo_url.rstrip('/')}/blob/main/{repo_path})"
        if match["text"].strip("`") in (repo_path, target):
            return f"`{repo_path}`"
        return f"{match['text']} (`{repo_path}`)"

    return _LINK.sub(fix, markdown)


def on_page_markdown(markdown: str, *, page: Any, config: Any, files: Any) -> str:
    src = page.file.src_uri
    markdown = _outside_links(markdown, src, config.get("repo_url"))
    if posixpath.basename(src) == "results.md" and page.file.abs_src_path:
        markdown = _show_plots(markdown, Path(page.file.abs_src_path).parent)
        page.meta.setdefault("hide", ["toc"])
    return markdown
