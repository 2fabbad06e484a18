"""What each data set consists of: file names, checksums, mirrors, classes.

The registry is a plain dict, :data:`DATASETS`, from a name to a :class:`DatasetSpec`; loaders
read it at call time, so tests (or users with a private mirror) may swap an entry with
``dataclasses.replace``.

Checksums:

* MNIST / Fashion-MNIST: SHA-256 of the *decompressed* IDX bytes (they do not depend on how a
  ``.gz`` was compressed), as listed in ``shared/data/SHA256SUMS.uncompressed``.
* CIFAR-10 / CIFAR-100: MD5 of the publishers' ``.tar.gz`` archive, and MD5 of each pickled batch
  inside it (used when the archive was extracted), as published on
  https://www.cs.toronto.edu/~kriz/cifar.html.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Mapping, Optional

__all__ = [
    "RemoteFile",
    "DatasetSpec",
    "DATASETS",
    "get_spec",
    "replace_spec",
    "dataset_names",
    "MNIST_MIRRORS",
    "FASHION_MNIST_MIRRORS",
    "CIFAR_MIRRORS",
]


@dataclass(frozen=True)
class RemoteFile:
    """One file of a data set as its publisher distributes it.

    Attributes:
        filename: publisher's file name, e.g. ``"train-images-idx3-ubyte.gz"``.
        checksum: expected hex digest (lower case).
        algorithm: ``"sha256"`` or ``"md5"`` (any :func:`hashlib.new` name).
        decompressed: if true the digest is of the gunzipped content when the file is gzip
            (detected by magic bytes), so a re-compressed or uncompressed copy verifies too.

    Example::

        >>> RemoteFile("t10k-labels-idx1-ubyte.gz", "ff7b...", "sha256", decompressed=True)
        ... # doctest: +ELLIPSIS
        RemoteFile(filename='t10k-labels-idx1-ubyte.gz', ...)
    """

    filename: str
    checksum: str
    algorithm: str = "sha256"
    decompressed: bool = False

    @property
    def local_names(self) -> tuple[str, ...]:
        """File names accepted on disk: the publisher's, plus the name without ``.gz`` when the
        checksum covers the decompressed content (an already-gunzipped IDX file verifies)."""
        if self.decompressed and self.filename.endswith(".gz"):
            return (self.filename, self.filename[: -len(".gz")])
        return (self.filename,)


@dataclass(frozen=True, eq=False)
class DatasetSpec:
    """Everything the loaders need to know about one data set.

    Attributes:
        name: registry name (``"mnist"``, ``"fashion-mnist"``, ``"cifar-10"``, ``"cifar-100"``).
        folder: sub-folder of a data root holding the files (``<root>/<folder>/<file>``).
        kind: ``"idx"`` (MNIST-like, four IDX files) or ``"cifar"`` (pickled batches in a tar.gz).
        mirrors: base URLs, tried in order; a file's URL is ``mirror + filename``.
        files: key -> :class:`RemoteFile` of the downloadable files. IDX data sets use the keys
            ``"train-images"``, ``"train-labels"``, ``"test-images"``, ``"test-labels"``; CIFAR
            uses ``"archive"``.
        classes: class names, index = label.
        archive_folder: CIFAR only: the folder inside the archive (``"cifar-10-batches-py"``).
        members: CIFAR only: split -> the pickled batches of that split (MD5 of each extracted
            file), in order.
        meta: CIFAR only: the pickled meta file (class names).
        label_key: CIFAR only: the key of the labels in a batch dict (``b"labels"`` for
            CIFAR-10, ``b"fine_labels"`` for CIFAR-100).
        image_shape: shape of one image, ``(28, 28)`` or ``(3, 32, 32)``.
        homepage: where the data set is described.
    """

    name: str
    folder: str
    kind: str
    mirrors: tuple[str, ...]
    files: Mapping[str, RemoteFile]
    classes: tuple[str, ...]
    image_shape: tuple[int, ...]
    archive_folder: Optional[str] = None
    members: Mapping[str, tuple[RemoteFile, ...]] = field(default_factory=dict)
    meta: Optional[RemoteFile] = None
    label_key: Optional[bytes] = None
    homepage: str = ""

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(classes)``)."""
        return len(self.classes)

    def urls(self, filename: str) -> list[str]:
        """The URLs of ``filename``, one per mirror, in mirror order.

        Example::

            >>> get_spec("mnist").urls("t10k-labels-idx1-ubyte.gz")[0]
            'https://ossci-datasets.s3.amazonaws.com/mnist/t10k-labels-idx1-ubyte.gz'
        """
        return [m.rstrip("/") + "/" + filename for m in self.mirrors]


def _idx_files(sums: Mapping[str, str]) -> dict[str, RemoteFile]:
    names = {
        "train-images": "train-images-idx3-ubyte.gz",
        "train-labels": "train-labels-idx1-ubyte.gz",
        "test-images": "t10k-images-idx3-ubyte.gz",
        "test-labels": "t10k-labels-idx1-ubyte.gz",
    }
    return {key: RemoteFile(fn, sums[key], "sha256", decompressed=True)
            for key, fn in names.items()}


MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
FASHION_MNIST_MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
CIFAR_MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)

# SHA-256 of the decompressed IDX files (shared/data/SHA256SUMS.uncompressed).
MNIST_SHA256 = {
    "train-images": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "test-images": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "test-labels": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
FASHION_MNIST_SHA256 = {
    "train-images": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "test-images": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "test-labels": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
# The 100 fine classes of CIFAR-100 in label order (the archive's ``meta`` file is authoritative;
# this list is used to describe the data set before it is downloaded).
CIFAR100_CLASSES = tuple("""
apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly
camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile
cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp
lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree
orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum
rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake spider
squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor train
trout tulip turtle wardrobe whale willow_tree wolf woman worm
""".split())

DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        folder="mnist",
        kind="idx",
        mirrors=MNIST_MIRRORS,
        files=_idx_files(MNIST_SHA256),
        classes=tuple(str(d) for d in range(10)),
        image_shape=(28, 28),
        homepage="http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        folder="fashion-mnist",
        kind="idx",
        mirrors=FASHION_MNIST_MIRRORS,
        files=_idx_files(FASHION_MNIST_SHA256),
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        image_shape=(28, 28),
        homepage="https://github.com/zalandoresearch/fashion-mnist",
    ),
    "cifar-10": DatasetSpec(
        name="cifar-10",
        folder="cifar-10",
        kind="cifar",
        mirrors=CIFAR_MIRRORS,
        files={"archive": RemoteFile("cifar-10-python.tar.gz",
                                     "c58f30108f718f92721af3b95e74349a", "md5")},
        classes=CIFAR10_CLASSES,
        image_shape=(3, 32, 32),
        archive_folder="cifar-10-batches-py",
        members={
            "train": (
                RemoteFile("data_batch_1", "c99cafc152244af753f735de768cd75f", "md5"),
                RemoteFile("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec", "md5"),
                RemoteFile("data_batch_3", "54ebc095f3ab1f0389bbae665268c751", "md5"),
                RemoteFile("data_batch_4", "634d18415352ddfa80567beed471001a", "md5"),
                RemoteFile("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb", "md5"),
            ),
            "test": (RemoteFile("test_batch", "40351d587109b95175f43aff81a1287e", "md5"),),
        },
        meta=RemoteFile("batches.meta", "5ff9c542aee3614f3951f8cda6e48888", "md5"),
        label_key=b"labels",
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
    ),
    "cifar-100": DatasetSpec(
        name="cifar-100",
        folder="cifar-100",
        kind="cifar",
        mirrors=CIFAR_MIRRORS,
        files={"archive": RemoteFile("cifar-100-python.tar.gz",
                                     "eb9058c3a382ffc7106e4002c42a8d85", "md5")},
        classes=CIFAR100_CLASSES,
        image_shape=(3, 32, 32),
        archive_folder="cifar-100-python",
        members={
            "train": (RemoteFile("train", "16019d7e3df5f24257cddd939b257f8d", "md5"),),
            "test": (RemoteFile("test", "f0ef6b0ae62326f3e7ffdfab6717acfc", "md5"),),
        },
        meta=RemoteFile("meta", "7973b15100ade9c7d40fb424638fde48", "md5"),
        label_key=b"fine_labels",
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
    ),
}


def _normalize(name: str) -> str:
    key = name.strip().lower().replace("_", "-")
    key = re.sub(r"^(cifar)-?(\d+)$", r"\1-\2", key)
    if key == "fashionmnist":
        key = "fashion-mnist"
    return key


def dataset_names() -> list[str]:
    """Names of the registered data sets.

    Example::

        >>> dataset_names()
        ['mnist', 'fashion-mnist', 'cifar-10', 'cifar-100']
    """
    return list(DATASETS)


def get_spec(name: str) -> DatasetSpec:
    """The registry entry for ``name`` (case-insensitive; ``_`` or ``-``; ``cifar10`` works too).

    Raises:
        TypeError: ``name`` is not a string.
        ValueError: no such data set; the message lists the known names.

    Example::

        >>> get_spec("Fashion_MNIST").folder
        'fashion-mnist'
        >>> get_spec("cifar100").files["archive"].filename
        'cifar-100-python.tar.gz'
    """
    if not isinstance(name, str):
        raise TypeError(f"data set name must be a str, got {type(name).__name__}")
    key = _normalize(name)
    try:
        return DATASETS[key]
    except KeyError:
        raise ValueError(
            f"unknown data set {name!r}; expected one of {', '.join(map(repr, DATASETS))}"
        ) from None


def replace_spec(name: str, **changes) -> DatasetSpec:
    """A copy of the registry entry ``name`` with some fields changed (see
    :func:`dataclasses.replace`); the registry itself is not modified.

    Example::

        >>> spec = replace_spec("mnist", mirrors=("http://127.0.0.1:8000/",))
        >>> spec.urls("t10k-labels-idx1-ubyte.gz")
        ['http://127.0.0.1:8000/t10k-labels-idx1-ubyte.gz']
    """
    return dataclasses.replace(get_spec(name), **changes)

