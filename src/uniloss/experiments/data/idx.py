"""Reader for the IDX format of MNIST and Fashion-MNIST, raw or gzip-compressed.

An IDX file is a 4-byte magic number ``00 00 TT NN`` (``TT`` the element type, ``NN`` the number
of dimensions), then ``NN`` big-endian uint32 sizes, then the elements in row-major order,
big-endian. Compression is recognised by the gzip magic bytes ``1f 8b``, never by the file name.
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib
from typing import Union

import numpy as np
import torch

from .errors import DataFormatError

__all__ = ["read_idx", "parse_idx", "maybe_gunzip", "GZIP_MAGIC", "IDX_TYPES"]

GZIP_MAGIC = b"\x1f\x8b"

#: IDX element type code -> (name, big-endian numpy dtype, torch dtype).
IDX_TYPES: dict[int, tuple[str, str, torch.dtype]] = {
    0x08: ("uint8", ">u1", torch.uint8),
    0x09: ("int8", ">i1", torch.int8),
    0x0B: ("int16", ">i2", torch.int16),
    0x0C: ("int32", ">i4", torch.int32),
    0x0D: ("float32", ">f4", torch.float32),
    0x0E: ("float64", ">f8", torch.float64),
}

Source = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview]


def _describe(source) -> str:
    return f"file {os.fspath(source)!s}" if isinstance(source, (str, os.PathLike)) else "IDX data"


def maybe_gunzip(data: bytes, *, what: str = "data") -> bytes:
    """Return ``data`` decompressed if it starts with the gzip magic bytes, else unchanged.

    Args:
        data: raw file content.
        what: how to name the content in error messages (e.g. a path).

    Returns:
        The decompressed bytes (all gzip members concatenated) or ``data`` itself.

    Raises:
        DataFormatError: the content starts like gzip but the stream is corrupt or truncated.

    Example::

        >>> import gzip
        >>> maybe_gunzip(gzip.compress(b"abc")), maybe_gunzip(b"abc")
        (b'abc', b'abc')
    """
    if bytes(data[:2]) != GZIP_MAGIC:
        return bytes(data) if not isinstance(data, bytes) else data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:
        raise DataFormatError(
            f"{what}: starts with the gzip magic bytes 1f 8b but the gzip stream is corrupt or "
            f"truncated ({type(err).__name__}: {err}); expected a complete gzip file"
        ) from err


def parse_idx(data: bytes, *, what: str = "IDX data") -> torch.Tensor:
    """Decode uncompressed IDX bytes into a tensor.

    Args:
        data: the IDX content (header and payload), not compressed.
        what: how to name the content in error messages.

    Returns:
        A new tensor of the header's shape and element type (``torch.uint8`` for MNIST images
        ``[N, 28, 28]`` and labels ``[N]``; also int8, int16, int32, float32, float64), in native
        byte order.

    Raises:
        DataFormatError: bad magic number, unknown element type, zero dimensions, truncated
            header, or a payload size that disagrees with the header.

    Example::

        >>> import struct
        >>> raw = b"\\x00\\x00\\x08\\x02" + struct.pack(">II", 2, 3) + bytes(range(6))
        >>> parse_idx(raw)
        tensor([[0, 1, 2],
                [3, 4, 5]], dtype=torch.uint8)
    """
    n = len(data)
    if n < 4:
        raise DataFormatError(
            f"{what}: IDX header too short: expected at least 4 bytes (the magic number), got {n}"
        )
    b0, b1, type_code, ndim = data[0], data[1], data[2], data[3]
    if b0 != 0 or b1 != 0:
        raise DataFormatError(
            f"{what}: not an IDX file: the magic number must start with two zero bytes, got "
            f"{bytes(data[:4]).hex(' ')}"
        )
    if type_code not in IDX_TYPES:
        known = ", ".join(f"0x{k:02X} ({v[0]})" for k, v in IDX_TYPES.items())
        raise DataFormatError(
            f"{what}: unknown IDX element type 0x{type_code:02X}; expected one of {known}"
        )
    if ndim == 0:
        raise DataFormatError(f"{what}: IDX header declares 0 dimensions; expected at least 1")
    header_len = 4 + 4 * ndim
    if n < header_len:
        raise DataFormatError(
            f"{what}: IDX header truncated: {ndim} dimensions need a {header_len}-byte header, "
            f"got only {n} bytes"
        )
    dims = struct.unpack(f">{ndim}I", bytes(data[4:header_len]))
    name, np_dtype, torch_dtype = IDX_TYPES[type_code]
    itemsize = np.dtype(np_dtype).itemsize
    count = 1
    for d in dims:
        count *= d
    need = count * itemsize
    have = n - header_len
    if have != need:
        problem = "truncated" if have < need else "has trailing bytes"
        raise DataFormatError(
            f"{what}: IDX payload {problem}: header dims {tuple(dims)} of {name} need {need} "
            f"bytes after the {header_len}-byte header, got {have}"
        )
    arr = np.frombuffer(data, dtype=np_dtype, count=count, offset=header_len)
    arr = arr.astype(np.dtype(np_dtype).newbyteorder("="), copy=True)  # native order, writable
    return torch.from_numpy(arr).reshape(dims)


def read_idx(source: Source) -> torch.Tensor:
    """Read an IDX file (raw or gzip-compressed, told apart by magic bytes) into a tensor.

    Args:
        source: a path (``str`` or path-like) or the file's bytes.

    Returns:
        A tensor with the header's shape and dtype, e.g. ``uint8 [60000, 28, 28]`` for
        ``train-images-idx3-ubyte.gz`` and ``uint8 [60000]`` for ``train-labels-idx1-ubyte.gz``.

    Raises:
        TypeError: ``source`` is neither a path nor bytes.
        FileNotFoundError: the path does not exist.
        DataFormatError: the content is not valid IDX (see :func:`parse_idx`) or not valid gzip.

    Example::

        >>> labels = read_idx("../shared/data/mnist/train-labels-idx1-ubyte.gz")  # doctest: +SKIP
        >>> labels.shape, labels.dtype, labels[:3].tolist()                        # doctest: +SKIP
        (torch.Size([60000]), torch.uint8, [5, 0, 4])
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            data = f.read()
    else:
        raise TypeError(
            f"read_idx expects a path (str or os.PathLike) or bytes, got {type(source).__name__}"
        )
    what = _describe(source)
    return parse_idx(maybe_gunzip(data, what=what), what=what)
