"""Loading whole splits into memory as tensors: MNIST, Fashion-MNIST, CIFAR-10, CIFAR-100.

Every loader finds the files by the lookup order of :mod:`.paths`, downloads missing ones when
``download=True``, verifies checksums (once per file and process), and returns a
:class:`DataSplit` -- images and labels as two tensors, so that training indexes a tensor instead
of calling Python code per sample.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch

from . import cifar as _cifar
from .download import download_file
from .errors import DataFormatError, DatasetNotFoundError, DownloadError
from .idx import parse_idx
from .integrity import read_verified, verify_file
from .paths import ENV_VAR, DataRoot, PathArg, download_root, find_file, search_roots
from .registry import DatasetSpec, get_spec

__all__ = [
    "SPLITS",
    "DataSplit",
    "dataset_files",
    "load_mnist",
    "load_fashion_mnist",
    "load_cifar",
    "load_dataset",
]

SPLITS = ("train", "test")


@dataclass(frozen=True, eq=False, repr=False)
class DataSplit:
    """One split of a data set, in memory.

    Attributes:
        images: ``uint8`` tensor, ``[N, 28, 28]`` (MNIST, Fashion-MNIST) or ``[N, 3, 32, 32]``
            (CIFAR, channels R, G, B).
        labels: ``int64`` tensor ``[N]`` with values in ``[0, len(classes))``.
        classes: class names, index = label.
        name: registry name of the data set.
        split: ``"train"`` or ``"test"``.

    Unpacks as ``(images, labels)``::

        >>> images, labels = load_mnist("test")  # doctest: +SKIP
        >>> images.shape, labels.dtype           # doctest: +SKIP
        (torch.Size([10000, 28, 28]), torch.int64)
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    name: str
    split: str

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter((self.images, self.labels))

    @property
    def num_samples(self) -> int:
        """``N``, the number of images."""
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        """``len(classes)``."""
        return len(self.classes)

    def __repr__(self) -> str:
        def t(x: torch.Tensor) -> str:
            return f"{str(x.dtype).replace('torch.', '')}{list(x.shape)}"
        return (f"DataSplit(name={self.name!r}, split={self.split!r}, images={t(self.images)}, "
                f"labels={t(self.labels)}, classes={len(self.classes)})")


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


#: ``UNILOSS_DOWNLOAD=1`` makes every loader fetch missing files, as ``download=True`` does (what the
#: command line's ``--download`` sets, for its own process and the runs it starts).
DOWNLOAD_VAR = "UNILOSS_DOWNLOAD"


def _not_found(spec: DatasetSpec, missing: Sequence[str], roots: Sequence[DataRoot], *,
               download: bool, target: Optional[DataRoot] = None,
               failures: Sequence[DownloadError] = (), alternative: str = "",
               reason: str = "") -> DatasetNotFoundError:
    searched = [r.path / spec.folder for r in roots]
    lines = [f"data set {spec.name!r}: {len(missing)} file(s) not found: {', '.join(missing)}"
             + (f" ({alternative})" if alternative else "")]
    lines.append("Folders searched, in lookup order:")
    lines += [f"  {p}{os.sep}  [{r.source}]" for p, r in zip(searched, roots)]
    if reason:
        lines.append(reason)
    for err in failures:
        lines.append(f"Download of {err.filename} failed:")
        lines += [f"  {url}: {why}" for url, why in err.attempts]
    where = (target or roots[0]).path / spec.folder
    lines.append(
        f"Put the files in {where}{os.sep} (or in DIR{os.sep}{spec.folder}{os.sep} and pass "
        f"data_dir=DIR / --data-dir DIR, or set {ENV_VAR}=DIR)"
        + ("" if download else ", or call again with download=True (on the command line: --download) to "
           "fetch them")
        + "."
    )
    lines.append("Fetch them from:")
    for fn in missing:
        lines += [f"  {url}" for url in spec.urls(fn)]
    return DatasetNotFoundError("\n".join(lines), dataset=spec.name, missing=missing,
                                searched=searched)


def dataset_files(name: str, keys: Optional[Sequence[str]] = None, *,
                  data_dir: Optional[PathArg] = None, download: bool = False) -> dict[str, Path]:
    """Find (and with ``download=True`` fetch) files of a data set; no checksum is computed for
    files found locally (the loaders verify on read).

    Args:
        name: registry name, e.g. ``"mnist"``.
        keys: which files (keys of ``spec.files``; default all).
        data_dir: explicit data root, searched first and the download target.
        download: download missing files into ``data_dir`` (if given and writable) or the user
            cache directory.

    Returns:
        ``{key: path}``.

    Raises:
        DatasetNotFoundError: files missing and ``download`` false, or every mirror failed; the
            message names the files, the folders searched, where to put them and their URLs.

    Example::

        >>> dataset_files("mnist", ["test-labels"])  # doctest: +SKIP
        {'test-labels': PosixPath('/home/me/shared/data/mnist/t10k-labels-idx1-ubyte.gz')}
    """
    return _ensure_files(get_spec(name), keys, data_dir=data_dir, download=download)


def _ensure_files(spec: DatasetSpec, keys: Optional[Sequence[str]], *,
                  data_dir: Optional[PathArg], download: bool,
                  alternative: str = "") -> dict[str, Path]:
    keys = list(spec.files) if keys is None else list(keys)
    for key in keys:
        if key not in spec.files:
            raise ValueError(f"data set {spec.name!r} has no file {key!r}; expected one of "
                             f"{list(spec.files)}")
    roots = search_roots(data_dir)
    found: dict[str, Path] = {}
    missing: list[str] = []
    for key in keys:
        path = find_file(spec.folder, spec.files[key].local_names, roots=roots)
        if path is None:
            missing.append(key)
        else:
            found[key] = path
    if not missing:
        return found
    names = [spec.files[k].filename for k in missing]
    target = download_root(data_dir)
    download = download or os.environ.get(DOWNLOAD_VAR) == "1"
    if not download:
        raise _not_found(spec, names, roots, download=False, target=target,
                         alternative=alternative)
    if target is None:
        raise _not_found(spec, names, roots, download=True, alternative=alternative,
                         reason="No writable folder to download into (tried data_dir and the "
                                "cache directory).")
    failures: list[DownloadError] = []
    for key in missing:
        remote = spec.files[key]
        try:
            found[key] = download_file(
                spec.urls(remote.filename), target.path / spec.folder / remote.filename,
                checksum=remote.checksum, algorithm=remote.algorithm,
                decompressed=remote.decompressed,
            )
        except DownloadError as err:
            failures.append(err)
    if failures:
        raise _not_found(spec, [e.filename for e in failures], roots, download=True,
                         target=target, failures=failures, alternative=alternative)
    return found


def load_mnist(split: str = "train", *, data_dir: Optional[PathArg] = None,
               download: bool = False, name: str = "mnist") -> DataSplit:
    """Load a split of MNIST (or another IDX data set: ``name="fashion-mnist"``) into memory.

    The two IDX files are found by the lookup order (``data_dir``, ``$UNILOSS_DATA``,
    ``../shared/data``, user cache), downloaded if missing and ``download`` is true, and their
    decompressed SHA-256 checked against the registry (once per file and process).

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
        data_dir: explicit data root (``<data_dir>/mnist/train-images-idx3-ubyte.gz``...).
        download: fetch missing files from the publishers' mirrors.
        name: ``"mnist"`` or ``"fashion-mnist"``.

    Returns:
        :class:`DataSplit` with ``images`` uint8 ``[N, 28, 28]`` and ``labels`` int64 ``[N]``.

    Raises:
        DatasetNotFoundError: files missing (and not downloadable).
        ChecksumError: a file's content differs from the registry's digest.
        DataFormatError: a file is not valid IDX or has unexpected shapes / labels.

    Example::

        >>> x, y = load_mnist("train")  # doctest: +SKIP
        >>> x.shape, y[:10].tolist()     # doctest: +SKIP
        (torch.Size([60000, 28, 28]), [5, 0, 4, 1, 9, 2, 1, 3, 1, 4])
    """
    spec = get_spec(name)
    if spec.kind != "idx":
        raise ValueError(f"load_mnist reads the IDX data sets (mnist, fashion-mnist); got "
                         f"{spec.name!r}: use load_cifar or load_dataset")
    _check_split(split)
    img_key, lbl_key = f"{split}-images", f"{split}-labels"
    files = _ensure_files(spec, [img_key, lbl_key], data_dir=data_dir, download=download)
    tensors = {}
    for key in (img_key, lbl_key):
        path = files[key]
        tensors[key] = parse_idx(read_verified(path, spec.files[key]), what=f"file {path}")
    images, labels = tensors[img_key], tensors[lbl_key]
    if images.dtype != torch.uint8 or images.ndim != 3 or tuple(images.shape[1:]) != \
            tuple(spec.image_shape):
        raise DataFormatError(
            f"file {files[img_key]}: expected uint8 images [N, {spec.image_shape[0]}, "
            f"{spec.image_shape[1]}], got {images.dtype} {list(images.shape)}"
        )
    if labels.dtype != torch.uint8 or labels.ndim != 1:
        raise DataFormatError(f"file {files[lbl_key]}: expected uint8 labels [N], got "
                              f"{labels.dtype} {list(labels.shape)}")
    if labels.shape[0] != images.shape[0]:
        raise DataFormatError(f"{spec.name} {split}: {images.shape[0]} images but "
                              f"{labels.shape[0]} labels; expected one label per image")
    labels = labels.to(torch.int64)
    if labels.numel() and int(labels.max()) >= spec.num_classes:
        raise DataFormatError(f"file {files[lbl_key]}: labels must lie in [0, "
                              f"{spec.num_classes}), got maximum {int(labels.max())}")
    return DataSplit(images, labels, spec.classes, spec.name, split)


def load_fashion_mnist(split: str = "train", *, data_dir: Optional[PathArg] = None,
                       download: bool = False) -> DataSplit:
    """Load a split of Fashion-MNIST; same as ``load_mnist(split, name="fashion-mnist")``.

    Returns:
        :class:`DataSplit` with ``images`` uint8 ``[N, 28, 28]``, ``labels`` int64 ``[N]`` and
        the ten class names (``"T-shirt/top"``, ..., ``"Ankle boot"``).

    Example::

        >>> d = load_fashion_mnist("test")  # doctest: +SKIP
        >>> d.labels.bincount().tolist()     # doctest: +SKIP
        [1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000]
    """
    return load_mnist(split, data_dir=data_dir, download=download, name="fashion-mnist")


def find_cifar_folder(spec: DatasetSpec, split: str, roots: Sequence[DataRoot]):
    """First root (in lookup order) holding the archive or a complete extracted folder.
    Within a root the extracted folder wins (no decompression needed)."""
    assert spec.meta is not None and spec.archive_folder is not None  # a CIFAR spec has both
    needed = [m.filename for m in spec.members[split]] + [spec.meta.filename]
    archive_name = spec.files["archive"].filename
    for root in roots:
        folder = root.path / spec.folder / spec.archive_folder
        if all((folder / n).is_file() for n in needed):
            return "folder", folder
        archive = root.path / spec.folder / archive_name
        if archive.is_file():
            return "archive", archive
    return None


def load_cifar(name: str = "cifar-10", split: str = "train", *,
               data_dir: Optional[PathArg] = None, download: bool = False,
               label_kind: str = "fine") -> DataSplit:
    """Load a split of CIFAR-10 or CIFAR-100 ("python version") into memory.

    Looks, root by root in lookup order, for the extracted folder
    ``<root>/cifar-10/cifar-10-batches-py/`` (each batch MD5-checked) or the publishers' archive
    ``<root>/cifar-10/cifar-10-python.tar.gz`` (MD5-checked, read without extracting); for
    CIFAR-100 ``<root>/cifar-100/cifar-100-python[.tar.gz]``. Downloads the archive when missing
    and ``download`` is true.

    Args:
        name: ``"cifar-10"`` or ``"cifar-100"``.
        split: ``"train"`` (50,000 images; CIFAR-10 ``data_batch_1`` .. ``5`` in order) or
            ``"test"`` (10,000).
        data_dir: explicit data root.
        download: fetch the archive from the publishers' site if missing.
        label_kind: CIFAR-100 only: ``"fine"`` (100 classes, ``b'fine_labels'``) or
            ``"coarse"`` (20 super-classes, ``b'coarse_labels'``).

    Returns:
        :class:`DataSplit` with ``images`` uint8 ``[N, 3, 32, 32]`` (R, G, B), ``labels`` int64
        ``[N]`` and the class names from the meta file.

    Raises:
        DatasetNotFoundError: neither archive nor extracted folder found (and not downloadable).
        ChecksumError: the archive's or a batch's MD5 differs from the registry's.
        DataFormatError: the content is not in the publishers' format.

    Example::

        >>> d = load_cifar("cifar-10", "test", download=True)  # doctest: +SKIP
        >>> d.images.shape, d.classes[:2]                         # doctest: +SKIP
        (torch.Size([10000, 3, 32, 32]), ('airplane', 'automobile'))
    """
    spec = get_spec(name)
    if spec.kind != "cifar":
        raise ValueError(f"load_cifar reads cifar-10 and cifar-100; got {spec.name!r}: use "
                         f"load_mnist or load_dataset")
    _check_split(split)
    if label_kind not in ("fine", "coarse"):
        raise ValueError(f"label_kind must be 'fine' or 'coarse', got {label_kind!r}")
    if label_kind == "coarse" and spec.name != "cifar-100":
        raise ValueError(f"label_kind='coarse' exists only for cifar-100, got {spec.name!r}")
    if spec.label_key == b"labels":
        label_key, names_key, n_classes = b"labels", b"label_names", spec.num_classes
    elif label_kind == "fine":
        label_key, names_key, n_classes = b"fine_labels", b"fine_label_names", spec.num_classes
    else:
        label_key, names_key, n_classes = b"coarse_labels", b"coarse_label_names", 20

    assert spec.meta is not None and spec.archive_folder is not None  # a CIFAR spec has both
    members = list(spec.members[split]) + [spec.meta]
    found = find_cifar_folder(spec, split, search_roots(data_dir))
    if found is not None and found[0] == "folder":
        folder = found[1]
        raw = {m.filename: read_verified(folder / m.filename, m) for m in members}
        where = str(folder)
    else:
        if found is not None:
            archive = found[1]
        else:
            archive = _ensure_files(
                spec, ["archive"], data_dir=data_dir, download=download,
                alternative=f"nor an extracted folder {spec.archive_folder}{os.sep} holding "
                             f"{', '.join(m.filename for m in members)}",
            )["archive"]
        remote = spec.files["archive"]
        verify_file(archive, remote.checksum, remote.algorithm, decompressed=remote.decompressed)
        raw = _cifar.read_cifar_members(archive, spec.archive_folder,
                                        [m.filename for m in members])
        where = f"{archive}:{spec.archive_folder}"
    dicts = [_cifar.load_cifar_pickle(raw[m.filename], what=f"{where}{os.sep}{m.filename}")
             for m in members]
    batch_names = [f"{where}{os.sep}{m.filename}" for m in members]
    classes = _cifar.meta_classes(dicts[-1], names_key, n_classes, what=batch_names[-1])
    images, labels = _cifar.cifar_batches_to_tensors(dicts[:-1], label_key, n_classes,
                                                     names=batch_names[:-1])
    return DataSplit(images, labels, classes, spec.name, split)


def load_dataset(name: str, split: str = "train", *, data_dir: Optional[PathArg] = None,
                 download: bool = False) -> DataSplit:
    """Load any registered data set by name (``"mnist"``, ``"fashion-mnist"``, ``"cifar-10"``,
    ``"cifar-100"``; case and ``_``/``-`` do not matter).

    Returns:
        :class:`DataSplit` (see :func:`load_mnist`, :func:`load_cifar` for shapes).

    Example::

        >>> load_dataset("fashion_mnist", "test")  # doctest: +SKIP
        DataSplit(name='fashion-mnist', split='test', images=uint8[10000, 28, 28], labels=int64[10000], classes=10)
    """
    spec = get_spec(name)
    if spec.kind == "idx":
        return load_mnist(split, data_dir=data_dir, download=download, name=spec.name)
    return load_cifar(spec.name, split, data_dir=data_dir, download=download)
