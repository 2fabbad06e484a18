"""Data layer of the experiments: MNIST, Fashion-MNIST, CIFAR-10, CIFAR-100 as in-memory tensors.

Quick start::

    from uniloss.experiments.data import load_mnist, load_cifar
    x, y = load_mnist("train")                  # uint8 [60000, 28, 28], int64 [60000]
    d = load_cifar("cifar-10", "test", download=True)
    d.images.shape                               # torch.Size([10000, 3, 32, 32])

Files are looked up as ``<root>/<dataset>/<file>`` in ``data_dir``, ``$UNILOSS_DATA``,
``../shared/data`` (from the working directory or the checkout), then the user cache
(``$XDG_CACHE_HOME/uniloss`` or ``~/.cache/uniloss``); see :mod:`.paths`. Checksums are those of
:mod:`.registry`; downloads (``download=True``) are atomic and verified; see :mod:`.download`.
"""
from .cifar import load_cifar_pickle, read_cifar_members
from .download import download_file
from .errors import ChecksumError, DataFormatError, DatasetNotFoundError, DownloadError
from .idx import parse_idx, read_idx
from .integrity import clear_verification_cache, file_digest, verify_file
from .loaders import (
    SPLITS,
    DataSplit,
    dataset_files,
    load_cifar,
    load_dataset,
    load_fashion_mnist,
    load_mnist,
)
from .paths import (
    ENV_VAR,
    DataRoot,
    default_cache_dir,
    download_root,
    find_file,
    repo_root,
    search_roots,
    shared_data_dirs,
)
from .registry import DATASETS, DatasetSpec, RemoteFile, dataset_names, get_spec, replace_spec

__all__ = [
    # loading
    "DataSplit", "SPLITS", "load_mnist", "load_fashion_mnist", "load_cifar", "load_dataset",
    "dataset_files",
    # formats
    "read_idx", "parse_idx", "load_cifar_pickle", "read_cifar_members",
    # registry
    "DATASETS", "DatasetSpec", "RemoteFile", "get_spec", "replace_spec", "dataset_names",
    # lookup
    "ENV_VAR", "DataRoot", "search_roots", "shared_data_dirs", "repo_root", "default_cache_dir",
    "find_file", "download_root",
    # integrity and download
    "file_digest", "verify_file", "clear_verification_cache", "download_file",
    # errors
    "DataFormatError", "ChecksumError", "DownloadError", "DatasetNotFoundError",
]
