"""Readers for the CIFAR-10 / CIFAR-100 "python version" on-disk format.

The publishers' archives hold a folder (``cifar-10-batches-py/`` or ``cifar-100-python/``) of
pickled dicts written by Python 2: ``b'data'`` is a ``uint8`` array ``[N, 3072]`` (per image
1024 red, then 1024 green, then 1024 blue values, each 32x32 row-major), labels are a list of
ints under ``b'labels'`` (CIFAR-10) or ``b'fine_labels'`` / ``b'coarse_labels'`` (CIFAR-100); the
meta file (``batches.meta`` / ``meta``) holds the class names.

Batches are read straight from the ``.tar.gz`` (one sequential pass, nothing extracted) or from
an extracted folder. Unpickling is restricted to the few numpy globals an array needs, so a
tampered file cannot run code.
"""
from __future__ import annotations

import codecs
import io
import os
import pickle
import tarfile
import zlib
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from .errors import DataFormatError

__all__ = ["load_cifar_pickle", "read_cifar_members", "cifar_batches_to_tensors", "meta_classes"]

CIFAR_IMAGE_SHAPE = (3, 32, 32)
_PIXELS = 3 * 32 * 32


def _allowed_globals() -> dict[tuple[str, str], object]:
    reconstruct = np.zeros(1).__reduce__()[0]
    scalar = np.float64(0).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # how Python 3 pickles bytes at protocol 2
    }
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "_reconstruct")] = reconstruct
        allowed[(mod, "scalar")] = scalar
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(mod, "_frombuffer")] = frombuffer
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    _allowed: dict = {}

    def find_class(self, module: str, name: str):
        if not self._allowed:
            type(self)._allowed = _allowed_globals()
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: a CIFAR batch holds only dicts, lists, "
                f"bytes and numpy arrays"
            ) from None


def load_cifar_pickle(data: bytes, *, what: str = "CIFAR file") -> dict[bytes, object]:
    """Unpickle one CIFAR batch or meta file (Python 2 or 3 pickle) safely.

    Args:
        data: the file's bytes.
        what: how to name it in error messages.

    Returns:
        The dict, with keys as bytes (``b'data'``, ``b'labels'``...), whichever Python wrote it.

    Raises:
        DataFormatError: not a pickle, not a dict, or it references globals other than numpy's
            array reconstruction.

    Example::

        >>> import pickle
        >>> load_cifar_pickle(pickle.dumps({b"labels": [3, 1]}, protocol=2))
        {b'labels': [3, 1]}
    """
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, MemoryError, UnicodeDecodeError) as err:
        raise DataFormatError(
            f"{what}: not a CIFAR pickle ({type(err).__name__}: {err}); expected a pickled dict "
            f"as in the publishers' python version"
        ) from err
    if not isinstance(obj, dict):
        raise DataFormatError(f"{what}: expected a pickled dict, got {type(obj).__name__}")
    return {(k.encode() if isinstance(k, str) else k): v for k, v in obj.items()}


def _member_name(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name


def read_cifar_members(archive, folder: str, names: Iterable[str]) -> dict[str, bytes]:
    """Read some files of ``folder/`` from a CIFAR ``.tar.gz`` in one sequential pass.

    Args:
        archive: path of the ``.tar.gz``.
        folder: the folder inside it (``"cifar-10-batches-py"``).
        names: the file names wanted (``"data_batch_1"``, ``"batches.meta"``...).

    Returns:
        ``{name: bytes}`` for every wanted name.

    Raises:
        DataFormatError: not a readable tar.gz, or a wanted member is missing (the message
            lists what the archive holds).

    Example::

        >>> read_cifar_members("cifar-10-python.tar.gz", "cifar-10-batches-py",
        ...                    ["test_batch"]).keys()  # doctest: +SKIP
        dict_keys(['test_batch'])
    """
    wanted = {f"{folder}/{n}": n for n in names}
    out: dict[str, bytes] = {}
    seen: list[str] = []
    try:
        with tarfile.open(archive, mode="r|*") as tar:
            for member in tar:
                key = _member_name(member.name)
                seen.append(key)
                if key in wanted and member.isfile():
                    f = tar.extractfile(member)
                    out[wanted[key]] = f.read() if f is not None else b""
                    if len(out) == len(wanted):
                        break
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise DataFormatError(
            f"archive {os.fspath(archive)}: not a readable tar.gz ({type(err).__name__}: {err})"
        ) from err
    missing = [k for k, n in wanted.items() if n not in out]
    if missing:
        raise DataFormatError(
            f"archive {os.fspath(archive)}: expected members {', '.join(missing)}; it holds "
            f"{', '.join(seen[:20]) or 'nothing'}{' ...' if len(seen) > 20 else ''}"
        )
    return out


def cifar_batches_to_tensors(batches: Sequence[Mapping[bytes, object]], label_key: bytes,
                             num_classes: int, *, names: Sequence[str] = ()) -> tuple[
                                 torch.Tensor, torch.Tensor]:
    """Stack unpickled CIFAR batches into tensors.

    Args:
        batches: dicts from :func:`load_cifar_pickle`, in order.
        label_key: ``b"labels"``, ``b"fine_labels"`` or ``b"coarse_labels"``.
        num_classes: labels must lie in ``[0, num_classes)``.
        names: batch names for error messages.

    Returns:
        ``images`` uint8 ``[N, 3, 32, 32]`` (channels R, G, B) and ``labels`` int64 ``[N]``.

    Raises:
        DataFormatError: missing keys, wrong dtype or shape, label count or range.

    Example::

        >>> import numpy as np
        >>> b = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 0]}
        >>> x, y = cifar_batches_to_tensors([b], b"labels", 10)
        >>> tuple(x.shape), y.tolist()
        ((2, 3, 32, 32), [1, 0])
    """
    images, labels = [], []
    for i, batch in enumerate(batches):
        what = names[i] if i < len(names) else f"batch {i}"
        if b"data" not in batch or label_key not in batch:
            raise DataFormatError(
                f"{what}: expected keys b'data' and {label_key!r}, got "
                f"{sorted(batch, key=repr)}"
            )
        data = batch[b"data"]
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
                or data.shape[1] != _PIXELS:
            desc = (f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray)
                    else type(data).__name__)
            raise DataFormatError(
                f"{what}: b'data' must be a uint8 array [N, {_PIXELS}], got {desc}"
            )
        try:
            y = np.asarray(batch[label_key], dtype=np.int64)
        except (TypeError, ValueError) as err:
            raise DataFormatError(f"{what}: {label_key!r} must be a list of ints ({err})") from err
        if y.ndim != 1 or y.shape[0] != data.shape[0]:
            raise DataFormatError(
                f"{what}: expected {data.shape[0]} labels under {label_key!r} (one per image), "
                f"got shape {tuple(y.shape)}"
            )
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise DataFormatError(
                f"{what}: labels must lie in [0, {num_classes}), got range "
                f"[{int(y.min())}, {int(y.max())}]"
            )
        images.append(data)
        labels.append(y)
    x = np.concatenate(images) if len(images) != 1 else np.array(images[0], copy=True)
    y = np.concatenate(labels) if len(labels) != 1 else labels[0].copy()
    x = x.reshape(-1, *CIFAR_IMAGE_SHAPE)
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)


def meta_classes(meta: Mapping[bytes, object], key: bytes, expected: int, *,
                 what: str = "meta") -> tuple[str, ...]:
    """Class names from an unpickled meta file.

    Args:
        meta: dict from :func:`load_cifar_pickle` of ``batches.meta`` / ``meta``.
        key: ``b"label_names"``, ``b"fine_label_names"`` or ``b"coarse_label_names"``.
        expected: number of classes the data set has.

    Raises:
        DataFormatError: key missing or the wrong number of names.

    Example::

        >>> meta_classes({b"label_names": [b"cat", b"dog"]}, b"label_names", 2)
        ('cat', 'dog')
    """
    names = meta.get(key)
    if not isinstance(names, (list, tuple)):
        raise DataFormatError(
            f"{what}: expected a list of class names under {key!r}, got "
            f"{type(names).__name__ if key in meta else 'no such key'} (keys: "
            f"{sorted(meta, key=repr)})"
        )
    out = tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names)
    if len(out) != expected:
        raise DataFormatError(f"{what}: expected {expected} class names, got {len(out)}")
    return out
