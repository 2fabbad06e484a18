"""Atomic checkpoints loaded with ``weights_only=True`` and clear errors when they are damaged."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Union

import torch


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read: truncated, corrupted or not a uniloss checkpoint."""


FORMAT = "uniloss-checkpoint-v1"


def save_checkpoint(state: Dict[str, Any], path: Union[str, Path]) -> None:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, fsync, rename.

    A crash at any moment leaves either the previous checkpoint or the new one, never a mix.
    ``state`` must hold only tensors, numbers, strings, lists and dicts (``weights_only`` loads).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save({"format": FORMAT, **state}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: Union[str, Path]) -> Dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``, on the CPU).

    Raises:
        CheckpointError: the file is truncated, corrupted or not a uniloss checkpoint, with the
            path and what to do.
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
    return state
