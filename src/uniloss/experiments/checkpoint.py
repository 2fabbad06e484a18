"""Atomic checkpoints loaded with ``weights_only=True`` and clear errors when they are damaged.

Each checkpoint carries a sha256 digest of its content (every tensor's dtype, shape and bytes,
every number and string), verified on load: a file whose bytes were damaged where neither zip
nor pickle notices (a weight's bytes) is refused instead of resumed with other weights.
Temporary files of a write that was killed are removed on the next save (and when a run starts).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import struct
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Union

import torch


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read: truncated, corrupted or not a uniloss checkpoint."""


FORMAT = "uniloss-checkpoint-v1"
#: The key of the content digest in a checkpoint (absent in checkpoints of older versions, which load unchecked).
DIGEST_KEY = "sha256"


def _update(h, value: Any) -> None:
    """Feed ``value`` to the hash ``h`` in a canonical, type-tagged form (dicts in their order)."""
    if isinstance(value, torch.Tensor):
        t = value.detach()
        if t.layout != torch.strided:
            t = t.to_dense()
        t = t.cpu().resolve_conj().resolve_neg().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
        nbytes = t.numel() * t.element_size()
        if nbytes:
            h.update(memoryview((ctypes.c_char * nbytes).from_address(t.data_ptr())))  # no copy
    elif isinstance(value, dict):
        h.update(f"D{len(value)}:".encode())
        for k, v in value.items():
            _update(h, k)
            _update(h, v)
    elif isinstance(value, (list, tuple)):
        h.update(f"L{len(value)}:".encode())
        for v in value:
            _update(h, v)
    elif value is None or isinstance(value, (bool, int, str)):
        text = repr(value).encode()
        h.update(f"{type(value).__name__}{len(text)}:".encode() + text)
    elif isinstance(value, float):
        h.update(b"float:" + struct.pack("<d", value))
    elif isinstance(value, bytes):
        h.update(f"bytes{len(value)}:".encode() + value)
    else:  # torch.dtype, torch.device and the like: their text is their identity
        text = f"{type(value).__module__}.{type(value).__qualname__}:{value}".encode()
        h.update(f"O{len(text)}:".encode() + text)


def content_digest(state: Dict[str, Any]) -> str:
    """The sha256 of ``state``'s content (tensors by dtype, shape and bytes; the digest key left out).

    Example::

        >>> a = content_digest({"w": torch.ones(2), "epoch": 1})
        >>> a == content_digest({"w": torch.ones(2), "epoch": 1}), a == content_digest({"w": torch.zeros(2), "epoch": 1})
        (True, False)
    """
    h = hashlib.sha256()
    _update(h, {k: v for k, v in state.items() if k != DIGEST_KEY})
    return h.hexdigest()


def _temporary_pattern(path: Path) -> "re.Pattern[str]":
    # ".NAME.pidPID.RANDOM.tmp" (this version), ".NAME.RANDOM.tmp" (earlier ones, without the pid)
    return re.compile(r"\." + re.escape(path.name) + r"\.(?:pid(\d+)\.)?[^.]+\.tmp")


def _alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill would terminate it: count it alive (its open file cannot be removed anyway)
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale_temporaries(path: Union[str, Path]) -> list:
    """Remove the temporary files that writes of checkpoint ``path`` left behind when their process
    was killed (a temporary whose writer is still running is kept). Returns the paths removed.

    Example::

        >>> remove_stale_temporaries("runs/no-such-run/checkpoint.pt")
        []
    """
    path = Path(path)
    pattern = _temporary_pattern(path)
    removed: List[Path] = []
    try:
        names = os.listdir(path.parent)
    except OSError:
        return removed
    for name in names:
        m = pattern.fullmatch(name)
        if m is None or (m.group(1) is not None and _alive(int(m.group(1)))):
            continue
        try:
            os.unlink(path.parent / name)
            removed.append(path.parent / name)
        except OSError:  # gone meanwhile, or still open (Windows)
            pass
    return removed


def save_checkpoint(state: Dict[str, Any], path: Union[str, Path]) -> None:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, fsync, rename.

    A crash at any moment leaves either the previous checkpoint or the new one, never a mix; the
    temporary file a killed write leaves (``.NAME.pidPID.XXXX.tmp``) is removed by the next save.
    ``state`` must hold only tensors, numbers, strings, lists and dicts (``weights_only`` loads).
    The file also holds the sha256 of the content (:func:`content_digest`), which
    :func:`load_checkpoint` verifies.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    full = {"format": FORMAT, **{k: v for k, v in state.items() if k not in ("format", DIGEST_KEY)}}
    full[DIGEST_KEY] = content_digest(full)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.pid{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(full, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: Union[str, Path]) -> Dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``, on the CPU) and
    verify its content digest (checkpoints of versions before the digest load unchecked).

    Raises:
        CheckpointError: the file is truncated, corrupted (its content differs from its digest)
            or not a uniloss checkpoint, with the path and what to do.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # torch raises several types for damaged files
        raise CheckpointError(
            f"Checkpoint {path} is damaged or truncated and cannot be loaded ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}). Delete it to start the "
            "run afresh, or point --out at another folder."
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a uniloss checkpoint (no '{FORMAT}' marker)")
    expected = state.pop(DIGEST_KEY, None)  # None: written before checkpoints carried a digest
    if expected is not None and content_digest(state) != expected:
        raise CheckpointError(
            f"Checkpoint {path} is damaged: its content does not match its sha256 digest (bytes changed "
            "after it was written). Delete it to start the run afresh, or point --out at another folder."
        )
    return state
