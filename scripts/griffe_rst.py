"""A griffe extension for the documentation site: the docstrings' reST, rendered as Markdown.

uniloss's docstrings are Google-style with a few reStructuredText habits (Sphinx roles, math
directives, literal blocks after ``::``), which the library's own readers (``help()``, IDEs,
doctests) see unchanged. mkdocstrings renders Markdown, so before rendering this extension
rewrites, in the text it will render and nowhere else:

* ``:func:`~uniloss.zoo.dice``` (and ``class``, ``meth``, ``attr``, ``mod``, ``data``, ``exc``,
  ``obj``) into a cross-reference, resolved like Sphinx (the object's class, its module and the
  modules above, then the name as written) and left as plain code where it names nothing the
  site documents (``torch.Tensor``, private helpers);
* ``:math:`x``` into ``$x$`` and ``.. math:: x`` into a ``$$`` block (pymdownx.arithmatex);
* a paragraph ending in ``::`` followed by an indented block into ``:`` and a fenced code
  block (``pycon`` when it starts with ``>>>``);
* an ``Args:`` or ``Attributes:`` entry for several names (``num_good, num_nearby, num_bad:``)
  into one entry per name, each with the description: the Google style has no joint entry.

Used from ``mkdocs.yml`` (``plugins: mkdocstrings: handlers: python: options: extensions``).
"""

from __future__ import annotations

import html
import re
import textwrap
from typing import Any, Iterator, List, Optional

import griffe

_ROLE = re.compile(r":(?:py:)?(func|class|meth|attr|mod|data|exc|obj|const):`([~!]?)([^`]+)`")
_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_MATH_DIRECTIVE = re.compile(r"^(\s*)\.\. math::[ \t]*(.*)$")
_LITERAL_MARKER = re.compile(r"^(\s*)(.*?)[ \t]*::[ \t]*$")
_ARGS_HEADER = re.compile(
    r"^(\s*)(Args|Arguments|Parameters|Keyword Args|Other Parameters|Attributes):\s*$"
)
_JOINT_ENTRY = re.compile(r"^(\s*)(\w+(?:,\s*\w+)+):(.*)$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _block(lines: List[str], start: int, base: int) -> int:
    """End (exclusive) of the block of lines indented deeper than ``base`` from ``start``."""
    end = start
    while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > base):
        end += 1
    while end > start and not lines[end - 1].strip():  # trailing blank lines are not the block's
        end -= 1
    return end


def convert_blocks(text: str) -> str:
    """``.. math::`` directives and ``::`` literal blocks into Markdown blocks."""
    lines = text.split("\n")
    out: List[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        math = _MATH_DIRECTIVE.match(line)
        if math:
            pad, first = math.groups()
            end = _block(lines, i + 1, len(pad))
            rest = textwrap.dedent("\n".join(lines[i + 1 : end])).split("\n")
            body = [b.rstrip() for b in [first, *rest] if b.strip()]  # no blank line inside $$
            out += ["", pad + "$$", *(pad + b for b in body), pad + "$$", ""]
            i = end
            continue
        literal = _LITERAL_MARKER.match(line)
        if literal and not line.lstrip().startswith(".."):
            pad, words = literal.groups()
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            if j < len(lines) and _indent(lines[j]) > len(pad):
                end = _block(lines, j, len(pad))
                code = textwrap.dedent("\n".join(lines[j:end])).split("\n")
                lang = "pycon" if code[0].lstrip().startswith(">>>") else "python"
                if words:
                    out += [pad + words + ":", ""]
                out += [pad + "```" + lang, *(pad + c if c.strip() else "" for c in code)]
                out += [pad + "```", ""]
                i = end
                continue
        out.append(line)
        i += 1
    return "\n".join(out)


def split_joint_parameters(text: str) -> str:
    """``a, b: text`` in an ``Args:``/``Attributes:`` section into ``a: text`` and ``b: text``."""
    lines = text.split("\n")
    out: List[str] = []
    i = 0
    section: Optional[int] = None  # indentation of the current Args header
    entry: Optional[int] = None  # indentation of its entries (their first lines)
    while i < len(lines):
        line = lines[i]
        header = _ARGS_HEADER.match(line)
        if header:
            section, entry = len(header.group(1)), None
        elif line.strip() and section is not None:
            if _indent(line) <= section:
                section = None
            elif entry is None:
                entry = _indent(line)
        joint = _JOINT_ENTRY.match(line) if section is not None else None
        if joint and _indent(line) != entry:
            joint = None  # a description's continuation, not an entry
        if joint:
            pad, names, first = joint.groups()
            end = _block(lines, i + 1, len(pad))
            for name in re.split(r",\s*", names):
                out += [f"{pad}{name}:{first}", *lines[i + 1 : end]]
            i = end
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def _exists(collection: Any, path: str) -> bool:
    try:
        collection[path]
    except Exception:  # KeyError, or an alias whose target is outside the loaded packages
        return False
    return True


def _scopes(obj: griffe.Object) -> Iterator[griffe.Object]:
    """The object (when a class or module), then its parents, innermost first."""
    scope: Optional[griffe.Object] = obj if obj.is_class or obj.is_module else obj.parent
    while scope is not None:
        yield scope
        scope = scope.parent


def resolve(name: str, obj: griffe.Object, collection: Any) -> str:
    """The documented path a role's target names, seen from ``obj`` (``name`` if none)."""
    if name.startswith("."):
        module = obj if obj.is_module else obj.module
        base = module if module.is_package else module.parent
        for _ in range(len(name) - len(name.lstrip(".")) - 1):
            base = base.parent if base is not None else None
        return f"{base.path}.{name.lstrip('.')}" if base is not None else name
    for scope in _scopes(obj):
        if _exists(collection, f"{scope.path}.{name}"):
            return f"{scope.path}.{name}"
    return name


def convert_roles(text: str, obj: griffe.Object, collection: Any) -> str:
    """Sphinx roles into optional autorefs cross-references, ``:math:`` into ``$...$``."""
    text = _MATH_ROLE.sub(lambda m: "$" + " ".join(m.group(1).split()) + "$", text)

    def role(match: re.Match) -> str:
        kind, prefix, target = match.groups()
        target = target.strip()
        title = target.rsplit(".", 1)[-1] if prefix == "~" else target.lstrip(".")
        if kind in ("func", "meth"):
            title += "()"
        code = f"<code>{html.escape(title)}</code>"
        if prefix == "!":
            return code
        identifier = html.escape(resolve(target, obj, collection), quote=True)
        return f'<autoref identifier="{identifier}" optional>{code}</autoref>'

    return _ROLE.sub(role, text)


def _walk(obj: griffe.Object) -> Iterator[griffe.Object]:
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)


class RstToMarkdown(griffe.Extension):
    """Rewrite every docstring of a loaded package from reST habits to Markdown."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        for obj in _walk(pkg):
            if obj.docstring is not None:
                text = convert_blocks(split_joint_parameters(obj.docstring.value))
                obj.docstring.value = convert_roles(text, obj, loader.modules_collection)
