"""Checksums, with an in-process cache of files already verified.

A file verified once is remembered by ``(real path, size, mtime_ns, inode, algorithm, digest,
decompressed)``, so that repeated loads in one process do not hash it again, while a file that
was replaced or touched is hashed anew.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import threading
import zlib
from typing import Optional

from .errors import ChecksumError, DataFormatError
from .idx import GZIP_MAGIC, maybe_gunzip
from .registry import RemoteFile

__all__ = [
    "digest_bytes",
    "file_digest",
    "verify_file",
    "read_verified",
    "clear_verification_cache",
]

_CHUNK = 1 << 20
_lock = threading.Lock()
_verified: set[tuple] = set()


def _new_hash(algorithm: str):
    try:
        return hashlib.new(algorithm, usedforsecurity=False)
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"unknown hash algorithm {algorithm!r}; expected a hashlib name such as 'sha256' or "
            f"'md5'"
        ) from err


def digest_bytes(data: bytes, algorithm: str = "sha256") -> str:
    """Hex digest of ``data``.

    Example::

        >>> digest_bytes(b"", "md5")
        'd41d8cd98f00b204e9800998ecf8427e'
    """
    h = _new_hash(algorithm)
    h.update(data)
    return h.hexdigest()


def file_digest(path, algorithm: str = "sha256", *, decompressed: bool = False) -> str:
    """Hex digest of a file, streamed in 1 MiB chunks.

    Args:
        path: the file.
        algorithm: a :func:`hashlib.new` name.
        decompressed: hash the gunzipped content when the file starts with the gzip magic bytes
            (a file that is not gzip is hashed as it is).

    Raises:
        DataFormatError: ``decompressed`` and the gzip stream is corrupt or truncated.

    Example::

        >>> file_digest("mnist/t10k-labels-idx1-ubyte.gz", decompressed=True)  # doctest: +SKIP
        'ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2'
    """
    h = _new_hash(algorithm)
    with open(path, "rb") as raw:
        is_gzip = raw.read(2) == GZIP_MAGIC
        raw.seek(0)
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if (decompressed and is_gzip) else raw
        try:
            while True:
                chunk = stream.read(_CHUNK)
                if not chunk:
                    break
                h.update(chunk)
        except (OSError, EOFError, zlib.error) as err:
            raise DataFormatError(
                f"file {os.fspath(path)}: starts with the gzip magic bytes 1f 8b but the gzip "
                f"stream is corrupt or truncated ({type(err).__name__}: {err})"
            ) from err
    return h.hexdigest()


def _key(path, st: os.stat_result, checksum: str, algorithm: str, decompressed: bool) -> tuple:
    return (os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ino,
            algorithm.lower(), checksum.lower(), bool(decompressed))


def _mismatch(path, checksum: str, actual: Optional[str], algorithm: str,
              decompressed: bool, reason: str = "") -> ChecksumError:
    what = f"{algorithm} of the decompressed content" if decompressed else algorithm
    got = actual if actual is not None else f"no digest ({reason})"
    return ChecksumError(
        f"checksum mismatch for {os.fspath(path)}: expected {what} {checksum}, got {got}. "
        f"The file is corrupt, incomplete or a different version: delete it and fetch it again.",
        path=path, expected=checksum, actual=actual,
    )


def verify_file(path, checksum: str, algorithm: str = "sha256", *,
                decompressed: bool = False) -> None:
    """Check a file's digest, hashing it only if this process has not verified it unchanged.

    Args:
        path: the file.
        checksum: expected hex digest (case-insensitive).
        algorithm: a :func:`hashlib.new` name.
        decompressed: the digest is of the gunzipped content (see :func:`file_digest`).

    Raises:
        ChecksumError: the digest differs, or the gzip stream cannot be read.
        FileNotFoundError: no such file.

    Example::

        >>> verify_file("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a", "md5")
        ... # doctest: +SKIP
    """
    st = os.stat(path)
    key = _key(path, st, checksum, algorithm, decompressed)
    with _lock:
        if key in _verified:
            return
    try:
        actual = file_digest(path, algorithm, decompressed=decompressed)
    except DataFormatError as err:
        raise _mismatch(path, checksum, None, algorithm, decompressed, str(err)) from err
    if actual.lower() != checksum.lower():
        raise _mismatch(path, checksum, actual, algorithm, decompressed)
    with _lock:
        _verified.add(key)


def read_verified(path, remote: RemoteFile, *, verify: bool = True) -> bytes:
    """Read a file (gunzipped when ``remote.decompressed`` and it is gzip) and check its digest
    against ``remote.checksum``, unless this process already verified it unchanged.

    Args:
        path: the file on disk.
        remote: its registry entry (checksum, algorithm, decompressed).
        verify: if false, skip the check (for files without a known digest).

    Returns:
        The content: decompressed bytes for ``remote.decompressed`` files, else the raw bytes.

    Raises:
        ChecksumError: the digest differs or the gzip stream is unreadable.

    Example::

        >>> spec = get_spec("mnist")  # doctest: +SKIP
        >>> raw = read_verified(path, spec.files["test-labels"])  # doctest: +SKIP
    """
    st = os.stat(path)
    with open(path, "rb") as f:
        data = f.read()
    if remote.decompressed:
        try:
            data = maybe_gunzip(data, what=f"file {os.fspath(path)}")
        except DataFormatError as err:
            raise _mismatch(path, remote.checksum, None, remote.algorithm, True, str(err)) from err
    if not verify:
        return data
    key = _key(path, st, remote.checksum, remote.algorithm, remote.decompressed)
    with _lock:
        known = key in _verified
    if not known:
        actual = digest_bytes(data, remote.algorithm)
        if actual.lower() != remote.checksum.lower():
            raise _mismatch(path, remote.checksum, actual, remote.algorithm, remote.decompressed)
        with _lock:
            _verified.add(key)
    return data


def clear_verification_cache() -> None:
    """Forget which files were verified, so the next load hashes them again.

    Example::

        >>> clear_verification_cache()
    """
    with _lock:
        _verified.clear()
