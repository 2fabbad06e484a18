"""Where data sets are looked up, and where downloads go.

Lookup order for ``<root>/<dataset folder>/<file name>`` (first hit wins, file by file):

1. the explicit ``data_dir`` argument (the command line's ``--data-dir``);
2. the environment variable ``UNILOSS_DATA``;
3. ``../shared/data`` relative to the current working directory, then relative to the
   repository root found from this file's location (a folder with ``pyproject.toml`` and
   ``src/uniloss``) -- this is how development machines and CI find MNIST offline;
4. the user cache directory, ``$XDG_CACHE_HOME/uniloss`` or ``~/.cache/uniloss``.

Downloads go into ``data_dir`` when given and writable, else into the cache directory.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple, Optional, Union

__all__ = [
    "ENV_VAR",
    "DataRoot",
    "repo_root",
    "shared_data_dirs",
    "default_cache_dir",
    "search_roots",
    "find_file",
    "download_root",
]

#: Environment variable naming a data root.
ENV_VAR = "UNILOSS_DATA"

PathArg = Union[str, "os.PathLike[str]"]


class DataRoot(NamedTuple):
    """A folder searched for data sets, and why it is searched.

    Attributes:
        path: the root; a data set's files are at ``path / <dataset folder> / <file>``.
        source: ``"data_dir"``, ``"$UNILOSS_DATA"``, ``"shared (cwd)"``, ``"shared (repo)"`` or
            ``"cache"``.
    """

    path: Path
    source: str


def _as_path(value: PathArg, what: str) -> Path:
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{what} must be a str or os.PathLike, got {type(value).__name__}")
    text = os.fspath(value)
    if isinstance(text, bytes) or text == "":
        raise ValueError(f"{what} must be a non-empty text path, got {value!r}")
    return Path(text).expanduser()


def repo_root() -> Optional[Path]:
    """The checkout this package runs from, or ``None`` when installed elsewhere.

    Found by walking up from this file to the first folder holding both ``pyproject.toml`` and
    ``src/uniloss`` (so a stray ``pyproject.toml`` above a site-packages folder is not taken).

    Example::

        >>> repo_root()  # doctest: +SKIP
        PosixPath('/home/me/uniloss')
    """
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").is_file() and (parent / "src" / "uniloss").is_dir():
            return parent
    return None


def shared_data_dirs() -> list[DataRoot]:
    """The existing ``../shared/data`` folders: relative to the working directory, then to
    :func:`repo_root`; duplicates (same real path) are dropped.

    Example::

        >>> [r.source for r in shared_data_dirs()]  # doctest: +SKIP
        ['shared (cwd)']
    """
    out: list[DataRoot] = []
    candidates = [(Path.cwd() / ".." / "shared" / "data", "shared (cwd)")]
    root = repo_root()
    if root is not None:
        candidates.append((root / ".." / "shared" / "data", "shared (repo)"))
    for path, source in candidates:
        path = Path(os.path.normpath(path))
        if path.is_dir():
            out.append(DataRoot(path, source))
    return out


def default_cache_dir() -> Path:
    """The user cache root: ``$XDG_CACHE_HOME/uniloss`` if that variable holds an absolute path,
    else ``~/.cache/uniloss``. Not created here.

    Example::

        >>> default_cache_dir()  # doctest: +SKIP
        PosixPath('/home/me/.cache/uniloss')
    """
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "uniloss"
    return Path.home() / ".cache" / "uniloss"


def search_roots(data_dir: Optional[PathArg] = None) -> list[DataRoot]:
    """The data roots in lookup order: ``data_dir``, ``$UNILOSS_DATA``, shared folders, cache.

    ``data_dir``, ``$UNILOSS_DATA`` (when set) and the cache are listed whether or not they
    exist (so error messages can name them); shared folders only when they exist. A folder
    reached twice is listed once, at its first place.

    Args:
        data_dir: explicit root (``--data-dir``), or ``None``.

    Returns:
        ``[DataRoot(path, source), ...]``.

    Example::

        >>> [r.source for r in search_roots("my-data")]  # doctest: +SKIP
        ['data_dir', 'shared (cwd)', 'cache']
    """
    roots: list[DataRoot] = []
    if data_dir is not None:
        roots.append(DataRoot(_as_path(data_dir, "data_dir"), "data_dir"))
    env = os.environ.get(ENV_VAR, "")
    if env:
        roots.append(DataRoot(Path(env).expanduser(), "$" + ENV_VAR))
    roots.extend(shared_data_dirs())
    roots.append(DataRoot(default_cache_dir(), "cache"))
    seen: set[str] = set()
    unique: list[DataRoot] = []
    for root in roots:
        key = os.path.realpath(root.path)
        if key not in seen:
            seen.add(key)
            unique.append(root)
    return unique


def find_file(folder: str, names, *, data_dir: Optional[PathArg] = None,
              roots: Optional[list[DataRoot]] = None) -> Optional[Path]:
    """The first ``<root>/<folder>/<name>`` that is a file, roots in lookup order.

    Args:
        folder: the data set's folder, e.g. ``"mnist"``.
        names: a file name, or several accepted names (tried in order within each root).
        data_dir: explicit root, searched first.
        roots: the roots to search (default :func:`search_roots` of ``data_dir``).

    Returns:
        The path found, or ``None``.

    Example::

        >>> find_file("mnist", "t10k-labels-idx1-ubyte.gz")  # doctest: +SKIP
        PosixPath('/home/me/shared/data/mnist/t10k-labels-idx1-ubyte.gz')
    """
    if isinstance(names, str):
        names = (names,)
    if roots is None:
        roots = search_roots(data_dir)
    for root in roots:
        for name in names:
            path = root.path / folder / name
            if path.is_file():
                return path
    return None


def _writable(path: Path) -> bool:
    """Whether ``path`` exists as a writable folder or could be created as one."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            return False
        probe = probe.parent
    return probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)


def download_root(data_dir: Optional[PathArg] = None) -> Optional[DataRoot]:
    """Where downloads go: ``data_dir`` if given and writable, else the cache directory if
    writable, else ``None``. Nothing is created.

    Example::

        >>> download_root().source  # doctest: +SKIP
        'cache'
    """
    candidates = []
    if data_dir is not None:
        candidates.append(DataRoot(_as_path(data_dir, "data_dir"), "data_dir"))
    candidates.append(DataRoot(default_cache_dir(), "cache"))
    for root in candidates:
        if _writable(root.path):
            return root
    return None
