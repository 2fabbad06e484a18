"""Downloading one file from a list of mirrors, safely.

Each mirror is tried twice (one retry). A try streams into a temporary file *in the destination
folder*; the file is accepted only if the byte count matches ``Content-Length`` (a transfer cut
off midway is never taken for a whole file) and the checksum matches; then it is moved into place
with :func:`os.replace` (atomic). Whatever fails, no partial or temporary file is left behind.
Only :mod:`urllib` is used.
"""
from __future__ import annotations

import http.client
import logging
import os
import socket
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional, Sequence

from .errors import ChecksumError, DownloadError
from .integrity import verify_file

__all__ = ["download_file", "DEFAULT_TIMEOUT_S", "RETRY_DELAY_S", "USER_AGENT"]

log = logging.getLogger(__name__)

#: Socket timeout of one HTTP try, in seconds.
DEFAULT_TIMEOUT_S = 60.0
#: Pause before retrying the same mirror, in seconds.
RETRY_DELAY_S = 1.0
USER_AGENT = "uniloss-data/0.1 (+https://pypi.org/project/uniloss/; python-urllib)"
_CHUNK = 1 << 20


class _IncompleteTransfer(OSError):
    """The body was shorter (or longer) than the announced Content-Length."""


def _permanent(err: BaseException) -> bool:
    """Errors a retry of the same URL cannot fix (HTTP 4xx other than 408/429, bad URL)."""
    if isinstance(err, urllib.error.HTTPError):
        return 400 <= err.code < 500 and err.code not in (408, 429)
    return isinstance(err, ValueError) and not isinstance(err, ChecksumError)


def _reason(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        return f"cannot connect: {err.reason}"
    if isinstance(err, (socket.timeout, TimeoutError)):
        return "timed out"
    return f"{type(err).__name__}: {err}"


def _fetch_once(url: str, out, timeout: float) -> int:
    """Stream ``url`` into the open binary file ``out``; return the byte count."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        announced = response.headers.get("Content-Length")
        expected: Optional[int] = None
        if announced is not None:
            try:
                expected = int(announced)
            except ValueError:
                raise _IncompleteTransfer(
                    f"invalid Content-Length header {announced!r}; expected an integer"
                ) from None
        received = 0
        try:
            while True:
                chunk = response.read(_CHUNK)
                if not chunk:
                    break
                out.write(chunk)
                received += len(chunk)
        except http.client.IncompleteRead as err:
            received += len(err.partial)
            raise _IncompleteTransfer(
                f"transfer cut off: received {received} bytes, Content-Length announced "
                f"{expected}"
            ) from err
    if expected is not None and received != expected:
        raise _IncompleteTransfer(
            f"transfer cut off: received {received} bytes but Content-Length announced {expected}"
        )
    return received


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def download_file(urls: Sequence[str], dest, *, checksum: str, algorithm: str = "sha256",
                  decompressed: bool = False, timeout: Optional[float] = None,
                  retries: int = 1) -> Path:
    """Download one file from the first mirror that delivers it intact.

    Every URL is tried ``1 + retries`` times (HTTP 4xx errors other than 408/429 are not
    retried). A try writes to a hidden temporary file next to ``dest``, checks the byte count
    against ``Content-Length`` and the digest against ``checksum``, then renames it onto
    ``dest`` atomically. Failed tries leave nothing behind (and a destination folder created
    by this call is removed again if it stays empty).

    Args:
        urls: the file's URLs in preference order (one per mirror).
        dest: the final path, ``<root>/<dataset folder>/<file name>``.
        checksum: expected hex digest.
        algorithm: a :func:`hashlib.new` name (``"sha256"``, ``"md5"``).
        decompressed: ``checksum`` is of the gunzipped content (for ``.gz`` IDX files).
        timeout: socket timeout per try in seconds (default :data:`DEFAULT_TIMEOUT_S`).
        retries: extra tries per URL after a failure.

    Returns:
        ``Path(dest)``, now holding the verified file.

    Raises:
        DownloadError: no URL delivered a complete file with the right digest; its message and
            ``attempts`` list every try and why it failed.

    Example::

        >>> from uniloss.experiments.data import get_spec
        >>> spec = get_spec("mnist"); f = spec.files["test-labels"]
        >>> download_file(spec.urls(f.filename), "data/mnist/" + f.filename,
        ...               checksum=f.checksum, decompressed=True)  # doctest: +SKIP
        PosixPath('data/mnist/t10k-labels-idx1-ubyte.gz')
    """
    dest = Path(dest)
    if not urls:
        raise DownloadError(f"no URL to download {dest.name} from", filename=dest.name)
    timeout = DEFAULT_TIMEOUT_S if timeout is None else timeout
    folder = dest.parent
    created: list[Path] = []
    probe = folder
    while not probe.exists():
        created.append(probe)
        probe = probe.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DownloadError(
            f"cannot download {dest.name}: cannot create the folder {folder}: {err}",
            filename=dest.name,
        ) from err

    attempts: list[tuple[str, str]] = []
    try:
        for url in urls:
            for attempt in range(1 + max(0, retries)):
                if attempt:
                    time.sleep(RETRY_DELAY_S)
                log.info("downloading %s -> %s (try %d)", url, dest, attempt + 1)
                fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=folder)
                try:
                    with os.fdopen(fd, "wb") as out:
                        _fetch_once(url, out, timeout)
                        out.flush()
                        os.fsync(out.fileno())
                    verify_file(tmp, checksum, algorithm, decompressed=decompressed)
                    os.replace(tmp, dest)
                    return dest
                except (OSError, urllib.error.URLError, http.client.HTTPException,
                        ChecksumError, ValueError) as err:
                    reason = _reason(err)
                    if isinstance(err, ChecksumError):
                        what = "decompressed " if decompressed else ""
                        reason = (f"checksum mismatch: expected {algorithm} of {what}content "
                                  f"{checksum}, got {err.actual}")
                    attempts.append((url, reason))
                    log.warning("download of %s failed: %s", url, reason)
                    if _permanent(err):
                        break
                finally:
                    _remove(tmp)
    except BaseException:
        _cleanup_dirs(created)
        raise
    _cleanup_dirs(created)
    lines = "\n".join(f"  {url}: {reason}" for url, reason in attempts)
    raise DownloadError(
        f"could not download {dest.name} into {folder}; every try failed:\n{lines}",
        filename=dest.name, attempts=attempts,
    )


def _cleanup_dirs(created: list[Path]) -> None:
    """Remove the folders this call created, innermost first, if they are still empty."""
    for path in created:
        try:
            path.rmdir()
        except OSError:
            break
