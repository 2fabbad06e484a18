"""Tests of uniloss.experiments.data: IDX reader, registry, lookup order, downloader, loaders.

Real MNIST / Fashion-MNIST are read from ``../shared/data`` (found the way the library finds it);
everything else runs on small fixtures written in the publishers' exact on-disk formats, and the
downloader talks only to an HTTP server on 127.0.0.1 started by these tests.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib
import io
import os
import pickle
import socket
import struct
import tarfile
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from uniloss.experiments import data as D

paths_mod = importlib.import_module("uniloss.experiments.data.paths")
download_mod = importlib.import_module("uniloss.experiments.data.download")
integrity_mod = importlib.import_module("uniloss.experiments.data.integrity")

IDX_FILES = {
    "train-images": "train-images-idx3-ubyte.gz",
    "train-labels": "train-labels-idx1-ubyte.gz",
    "test-images": "t10k-images-idx3-ubyte.gz",
    "test-labels": "t10k-labels-idx1-ubyte.gz",
}


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

_IDX_CODES = {np.dtype("uint8"): 0x08, np.dtype("int8"): 0x09, np.dtype("int16"): 0x0B,
              np.dtype("int32"): 0x0C, np.dtype("float32"): 0x0D, np.dtype("float64"): 0x0E}


def idx_bytes(arr: np.ndarray) -> bytes:
    """IDX encoding of ``arr`` (big-endian), written independently of the library."""
    arr = np.asarray(arr)
    code = _IDX_CODES[arr.dtype]
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def listing(folder: Path) -> list[str]:
    """All names (hidden ones included) under ``folder``, recursively; [] if it does not exist."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture(autouse=True)
def _fresh_verification_cache():
    D.clear_verification_cache()
    yield
    D.clear_verification_cache()


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No $UNILOSS_DATA, cache under tmp, cwd without ../shared/data, no repo-root shared dir."""
    monkeypatch.delenv("UNILOSS_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    cwd = tmp_path / "cwd" / "proj"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(paths_mod, "repo_root", lambda: None)
    monkeypatch.setattr(download_mod, "RETRY_DELAY_S", 0.0)
    monkeypatch.setattr(download_mod, "DEFAULT_TIMEOUT_S", 10.0)
    return tmp_path


# ---- a small MNIST-format data set ---------------------------------------------------------

@dataclasses.dataclass
class MiniIdx:
    raw: dict           # key -> decompressed IDX bytes
    gz: dict            # key -> gzip bytes (what a mirror serves)
    images: dict        # split -> np uint8 [N, 28, 28]
    labels: dict        # split -> np uint8 [N]

    def spec(self, mirrors=("http://127.0.0.1:9/",), name="mnist"):
        files = {k: D.RemoteFile(IDX_FILES[k], sha256(v), "sha256", decompressed=True)
                 for k, v in self.raw.items()}
        return D.replace_spec(name, files=files, mirrors=tuple(mirrors))

    def write(self, folder: Path, keys=None):
        folder.mkdir(parents=True, exist_ok=True)
        for k in keys or IDX_FILES:
            (folder / IDX_FILES[k]).write_bytes(self.gz[k])


@pytest.fixture(scope="module")
def mini_idx() -> MiniIdx:
    rng = np.random.default_rng(0)
    images = {"train": rng.integers(0, 256, (7, 28, 28), dtype=np.uint8),
              "test": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)}
    labels = {"train": np.array([3, 1, 4, 1, 5, 9, 2], np.uint8),
              "test": np.array([6, 5, 3], np.uint8)}
    raw = {}
    for split in ("train", "test"):
        raw[f"{split}-images"] = idx_bytes(images[split])
        raw[f"{split}-labels"] = idx_bytes(labels[split])
    gz = {k: gzip.compress(v, mtime=0) for k, v in raw.items()}
    return MiniIdx(raw, gz, images, labels)


# ---- a local HTTP server -------------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        state = self.server.state
        state.hits[self.path] += 1
        route = state.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        body, mode = route
        if mode == "error":
            self.send_error(503, "unavailable")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if mode == "ok":
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif mode == "cut":          # announces the whole file, sends half, closes
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
        elif mode == "inflate":      # sends the whole (good) file but announces more
            self.send_header("Content-Length", str(len(body) + 1000))
            self.end_headers()
            self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):  # keep test output clean
        pass


class LocalServer:
    def __init__(self):
        self.routes: dict[str, tuple[bytes, str]] = {}
        self.hits: Counter = Counter()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.state = self
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def serve(self, prefix: str, files: dict, mode: str = "ok") -> str:
        """Serve ``{name: bytes}`` under ``/<prefix>/``; return that mirror's base URL."""
        for name, body in files.items():
            self.routes[f"/{prefix}/{name}"] = (body, mode)
        return f"{self.base}/{prefix}/"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    srv = LocalServer()
    yield srv
    srv.close()


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/mirror/"


# --------------------------------------------------------------------------------------------
# real MNIST / Fashion-MNIST from ../shared/data
# --------------------------------------------------------------------------------------------

def _require(name: str) -> None:
    try:
        D.dataset_files(name)
    except D.DatasetNotFoundError as err:
        pytest.skip(f"real {name} not available (looked where the library looks):\n{err}")


def test_real_mnist_train():
    _require("mnist")
    d = D.load_mnist("train")
    x, y = d
    assert x.dtype == torch.uint8 and tuple(x.shape) == (60000, 28, 28)
    assert y.dtype == torch.int64 and tuple(y.shape) == (60000,)
    assert y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert int((y == 0).sum()) == 5923
    assert d.classes == tuple("0123456789") and d.num_samples == 60000
    assert int(x.max()) == 255 and int(x.min()) == 0


def test_real_mnist_test():
    _require("mnist")
    x, y = D.load_mnist("test")
    assert tuple(x.shape) == (10000, 28, 28) and tuple(y.shape) == (10000,)
    assert y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert int((y == 0).sum()) == 980


def test_real_fashion_mnist_balanced():
    _require("fashion-mnist")
    train = D.load_fashion_mnist("train")
    test = D.load_dataset("Fashion_MNIST", "test")
    assert tuple(train.images.shape) == (60000, 28, 28) and train.images.dtype == torch.uint8
    assert tuple(test.images.shape) == (10000, 28, 28)
    assert train.labels.bincount(minlength=10).tolist() == [6000] * 10
    assert test.labels.bincount(minlength=10).tolist() == [1000] * 10
    assert train.classes[0] == "T-shirt/top" and train.classes[9] == "Ankle boot"


def test_registry_checksums_equal_shared_sums_file():
    sums = None
    for root in D.search_roots():
        candidate = root.path / "SHA256SUMS.uncompressed"
        if candidate.is_file():
            sums = candidate
            break
    if sums is None:
        pytest.skip("SHA256SUMS.uncompressed not found in any data root")
    listed = {}
    for line in sums.read_text().splitlines():
        if line.strip():
            digest, name = line.split()
            listed[name.lstrip("*")] = digest
    checked = 0
    for name in ("mnist", "fashion-mnist"):
        spec = D.get_spec(name)
        for remote in spec.files.values():
            key = f"{spec.folder}/{remote.filename[:-3]}"
            assert listed[key] == remote.checksum, key
            checked += 1
    assert checked == 8


def test_shared_data_found_from_repo_root_whatever_the_cwd(tmp_path, monkeypatch):
    root = D.repo_root()
    if root is None or not (root / ".." / "shared" / "data" / "mnist").is_dir():
        pytest.skip("no ../shared/data/mnist beside the checkout")
    monkeypatch.delenv("UNILOSS_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    sources = [r.source for r in D.search_roots()]
    assert sources == ["shared (repo)", "cache"]
    path = D.find_file("mnist", "t10k-labels-idx1-ubyte.gz")
    assert path is not None
    assert path.resolve() == (root / ".." / "shared" / "data" / "mnist" /
                              "t10k-labels-idx1-ubyte.gz").resolve()
    assert D.load_mnist("test").labels[:3].tolist() == [7, 2, 1]


# --------------------------------------------------------------------------------------------
# IDX reader
# --------------------------------------------------------------------------------------------

def test_idx_raw_and_gzip_detected_by_magic_not_name(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = idx_bytes(arr)
    # gzip content under a name without .gz, raw content under a .gz name
    (tmp_path / "a-idx3-ubyte").write_bytes(gzip.compress(raw))
    (tmp_path / "b-idx3-ubyte.gz").write_bytes(raw)
    for source in (raw, gzip.compress(raw), tmp_path / "a-idx3-ubyte",
                   str(tmp_path / "b-idx3-ubyte.gz")):
        t = D.read_idx(source)
        assert t.dtype == torch.uint8
        assert tuple(t.shape) == (2, 3, 4)
        assert torch.equal(t, torch.from_numpy(arr))


@pytest.mark.parametrize("dtype,values", [
    ("int8", [-128, -1, 0, 127]),
    ("int16", [-30000, -2, 258, 30000]),
    ("int32", [-(2 ** 31), -1, 70000, 2 ** 31 - 1]),
    ("float32", [-1.5, 0.0, 3.25, 1e30]),
    ("float64", [-1e300, 0.1, 2.0, 3.0]),
])
def test_idx_multibyte_types_are_big_endian(dtype, values):
    arr = np.array(values, dtype=dtype).reshape(2, 2)
    t = D.read_idx(idx_bytes(arr))
    assert t.dtype == getattr(torch, dtype)
    assert t.tolist() == arr.tolist()


def test_idx_labels_one_dim_and_empty():
    t = D.read_idx(idx_bytes(np.array([5, 0, 4], np.uint8)))
    assert tuple(t.shape) == (3,) and t.tolist() == [5, 0, 4]
    empty = D.read_idx(idx_bytes(np.zeros((0, 28, 28), np.uint8)))
    assert tuple(empty.shape) == (0, 28, 28)


def test_idx_tensor_is_writable_copy():
    raw = idx_bytes(np.array([1, 2, 3], np.uint8))
    t = D.read_idx(raw)
    t[0] = 9  # must not raise nor touch the source
    assert raw[-3:] == b"\x01\x02\x03"


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(dtype=st.sampled_from([np.uint8, np.int16, np.int32, np.float64]),
                  shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5)))
def test_idx_roundtrip_property(arr):
    t = D.read_idx(gzip.compress(idx_bytes(arr)))
    assert tuple(t.shape) == arr.shape
    np.testing.assert_array_equal(t.numpy(), arr)


_GOOD = idx_bytes(np.zeros((2, 3), np.uint8))


@pytest.mark.parametrize("data,pattern", [
    (b"\x00\x00\x08", r"header too short.*at least 4 bytes.*got 3"),
    (b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00", r"two zero bytes.*01 00 08 01"),
    (b"\x00\x00\x0a\x01" + struct.pack(">I", 1) + b"\x00", r"unknown IDX element type 0x0A"),
    (b"\x00\x00\x08\x00", r"0 dimensions"),
    (b"\x00\x00\x08\x03" + struct.pack(">I", 2), r"header truncated.*16-byte header.*got only 8"),
    (_GOOD[:-1], r"payload truncated.*\(2, 3\).*need 6 bytes.*got 5"),
    (_GOOD + b"\x00", r"trailing bytes.*need 6 bytes.*got 7"),
    (b"\x00\x00\x0c\x01" + struct.pack(">I", 2) + b"\x00" * 7, r"int32 need 8 bytes.*got 7"),
])
def test_idx_bad_headers(data, pattern):
    with pytest.raises(D.DataFormatError, match=pattern) as info:
        D.read_idx(data)
    assert isinstance(info.value, ValueError)


def test_idx_bad_header_in_file_names_the_file(tmp_path):
    path = tmp_path / "broken-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + struct.pack(">I", 10) + b"\x00"))
    with pytest.raises(D.DataFormatError, match=r"broken-idx1-ubyte\.gz.*truncated"):
        D.read_idx(path)


def test_idx_truncated_gzip_is_rejected():
    gz = gzip.compress(idx_bytes(np.arange(1000, dtype=np.int32)))
    with pytest.raises(D.DataFormatError, match=r"gzip stream is corrupt or truncated"):
        D.read_idx(gz[: len(gz) // 2])


def test_idx_wrong_source_type():
    with pytest.raises(TypeError, match=r"path .* or bytes, got int"):
        D.read_idx(123)


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------

def test_registry_contents():
    mnist = D.get_spec("MNIST")
    assert mnist.mirrors == ("https://ossci-datasets.s3.amazonaws.com/mnist/",
                             "http://yann.lecun.com/exdb/mnist/")
    assert {k: f.filename for k, f in mnist.files.items()} == IDX_FILES
    assert all(f.algorithm == "sha256" and f.decompressed for f in mnist.files.values())
    assert mnist.files["train-images"].checksum == \
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"
    assert mnist.urls("t10k-labels-idx1-ubyte.gz") == [
        "https://ossci-datasets.s3.amazonaws.com/mnist/t10k-labels-idx1-ubyte.gz",
        "http://yann.lecun.com/exdb/mnist/t10k-labels-idx1-ubyte.gz"]
    fashion = D.get_spec("fashion-mnist")
    assert fashion.urls("train-images-idx3-ubyte.gz") == [
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/train-images-idx3-ubyte.gz"]
    c10, c100 = D.get_spec("cifar10"), D.get_spec("CIFAR_100")
    assert c10.urls(c10.files["archive"].filename) == [
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"]
    assert c10.files["archive"].checksum == "c58f30108f718f92721af3b95e74349a"
    assert c100.files["archive"].filename == "cifar-100-python.tar.gz"
    assert c100.files["archive"].checksum == "eb9058c3a382ffc7106e4002c42a8d85"
    assert [m.filename for m in c10.members["train"]] == [f"data_batch_{i}" for i in range(1, 6)]
    assert len(c100.classes) == 100 and len(c10.classes) == 10
    assert [s.folder for s in D.DATASETS.values()] == ["mnist", "fashion-mnist", "cifar-10",
                                                       "cifar-100"]
    with pytest.raises(ValueError, match=r"unknown data set 'svhn'.*'mnist'"):
        D.get_spec("svhn")
    with pytest.raises(TypeError):
        D.get_spec(3)


# --------------------------------------------------------------------------------------------
# lookup order
# --------------------------------------------------------------------------------------------

def test_lookup_order_data_dir_env_shared_cache(isolated, monkeypatch):
    tmp = isolated
    d, e = tmp / "explicit", tmp / "env"
    s = tmp / "cwd" / "shared" / "data"        # = <cwd>/../shared/data
    c = tmp / "xdg" / "uniloss"
    monkeypatch.setenv("UNILOSS_DATA", str(e))
    name = "t10k-labels-idx1-ubyte.gz"
    for root in (d, e, s, c):
        (root / "mnist").mkdir(parents=True)
        (root / "mnist" / name).write_bytes(b"x")
    roots = D.search_roots(d)
    assert [(r.path, r.source) for r in roots] == [
        (d, "data_dir"), (e, "$UNILOSS_DATA"), (s, "shared (cwd)"), (c, "cache")]
    for expected in (d, e, s, c):
        assert D.find_file("mnist", name, data_dir=d) == expected / "mnist" / name
        assert D.dataset_files("mnist", ["test-labels"], data_dir=d)["test-labels"] == \
            expected / "mnist" / name
        (expected / "mnist" / name).unlink()
    assert D.find_file("mnist", name, data_dir=d) is None
    # without data_dir the environment variable comes first
    (e / "mnist" / name).write_bytes(b"x")
    (c / "mnist" / name).write_bytes(b"x")
    assert D.find_file("mnist", name) == e / "mnist" / name


def test_lookup_shared_relative_to_repo_root(isolated, monkeypatch):
    tmp = isolated
    repo = tmp / "checkout"
    (repo / "src" / "uniloss").mkdir(parents=True)
    shared = tmp / "shared" / "data"
    (shared / "mnist").mkdir(parents=True)
    (shared / "mnist" / "t10k-labels-idx1-ubyte.gz").write_bytes(b"x")
    monkeypatch.setattr(paths_mod, "repo_root", lambda: repo)
    roots = D.search_roots()
    assert [r.source for r in roots] == ["shared (repo)", "cache"]
    assert roots[0].path.resolve() == shared.resolve()
    assert D.find_file("mnist", "t10k-labels-idx1-ubyte.gz").resolve() == \
        (shared / "mnist" / "t10k-labels-idx1-ubyte.gz").resolve()


def test_repo_root_is_this_checkout():
    root = D.repo_root()
    here = Path(__file__).resolve()
    if root is None:
        pytest.skip("package not run from a checkout")
    assert (root / "pyproject.toml").is_file() and (root / "src" / "uniloss").is_dir()
    assert root in here.parents


def test_cache_dir_xdg_and_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert D.default_cache_dir() == tmp_path / "x" / "uniloss"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert D.default_cache_dir() == tmp_path / "home" / ".cache" / "uniloss"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert D.default_cache_dir() == tmp_path / "home" / ".cache" / "uniloss"


def test_uncompressed_idx_file_is_accepted(isolated, mini_idx, monkeypatch):
    monkeypatch.setitem(D.DATASETS, "mnist", mini_idx.spec())
    folder = isolated / "d" / "mnist"
    folder.mkdir(parents=True)
    (folder / "t10k-images-idx3-ubyte").write_bytes(mini_idx.raw["test-images"])
    (folder / "t10k-labels-idx1-ubyte").write_bytes(mini_idx.raw["test-labels"])
    x, y = D.load_mnist("test", data_dir=isolated / "d")
    assert torch.equal(x, torch.from_numpy(mini_idx.images["test"]))
    assert y.tolist() == mini_idx.labels["test"].tolist()


def test_bad_data_dir_argument(isolated):
    with pytest.raises(TypeError, match=r"data_dir must be a str or os.PathLike, got int"):
        D.search_roots(5)
    with pytest.raises(ValueError, match=r"non-empty"):
        D.search_roots("")


# --------------------------------------------------------------------------------------------
# loading, checksums, verification cache (fixtures)
# --------------------------------------------------------------------------------------------

def test_load_fixture_mnist_and_checksum(isolated, mini_idx, monkeypatch):
    monkeypatch.setitem(D.DATASETS, "mnist", mini_idx.spec())
    root = isolated / "d"
    mini_idx.write(root / "mnist")
    d = D.load_mnist("train", data_dir=root)
    assert d.images.dtype == torch.uint8 and tuple(d.images.shape) == (7, 28, 28)
    assert d.labels.dtype == torch.int64 and d.labels.tolist() == [3, 1, 4, 1, 5, 9, 2]
    assert torch.equal(d.images, torch.from_numpy(mini_idx.images["train"]))
    assert "uint8[7, 28, 28]" in repr(d)
    # the real registry checksum rejects the fixture
    monkeypatch.setitem(D.DATASETS, "mnist", D.replace_spec(
        "mnist", files=dict(D.get_spec("mnist").files,
                            **{"train-labels": D.RemoteFile(IDX_FILES["train-labels"], "0" * 64,
                                                            decompressed=True)})))
    with pytest.raises(D.ChecksumError, match=r"train-labels-idx1-ubyte\.gz.*expected sha256 "
                                              r"of the decompressed content 0{64}, got [0-9a-f]{64}"):
        D.load_mnist("train", data_dir=root)


def test_verification_is_cached_until_file_changes(isolated, mini_idx, monkeypatch):
    monkeypatch.setitem(D.DATASETS, "mnist", mini_idx.spec())
    root = isolated / "d"
    mini_idx.write(root / "mnist")
    calls = []
    real = integrity_mod.digest_bytes
    monkeypatch.setattr(integrity_mod, "digest_bytes",
                        lambda data, algorithm="sha256": calls.append(algorithm) or real(data,
                                                                                       algorithm))
    D.load_mnist("test", data_dir=root)
    assert len(calls) == 2          # images and labels hashed once
    D.load_mnist("test", data_dir=root)
    D.load_mnist("test", data_dir=root)
    assert len(calls) == 2          # not rehashed
    # corrupt the labels file in place, same size, new mtime: it is hashed again and rejected
    path = root / "mnist" / IDX_FILES["test-labels"]
    bad = gzip.compress(idx_bytes(np.array([6, 5, 4], np.uint8)), mtime=0)
    assert len(bad) == len(mini_idx.gz["test-labels"])
    path.write_bytes(bad)
    st_ = path.stat()
    os.utime(path, ns=(st_.st_atime_ns, st_.st_mtime_ns + 5_000_000_000))
    with pytest.raises(D.ChecksumError):
        D.load_mnist("test", data_dir=root)
    assert len(calls) == 3


def test_load_rejects_wrong_shapes(isolated, monkeypatch):
    raw_img = idx_bytes(np.zeros((2, 27, 28), np.uint8))
    raw_lbl = idx_bytes(np.array([1, 2], np.uint8))
    spec = D.replace_spec("mnist", files={
        "test-images": D.RemoteFile(IDX_FILES["test-images"], sha256(raw_img), decompressed=True),
        "test-labels": D.RemoteFile(IDX_FILES["test-labels"], sha256(raw_lbl), decompressed=True),
    })
    monkeypatch.setitem(D.DATASETS, "mnist", spec)
    folder = isolated / "d" / "mnist"
    folder.mkdir(parents=True)
    (folder / IDX_FILES["test-images"]).write_bytes(gzip.compress(raw_img))
    (folder / IDX_FILES["test-labels"]).write_bytes(gzip.compress(raw_lbl))
    with pytest.raises(D.DataFormatError, match=r"expected uint8 images \[N, 28, 28\], got "
                                                r"torch.uint8 \[2, 27, 28\]"):
        D.load_mnist("test", data_dir=isolated / "d")


def test_load_argument_errors(isolated):
    with pytest.raises(ValueError, match=r"split must be one of \('train', 'test'\), got 'val'"):
        D.load_mnist("val")
    with pytest.raises(ValueError, match=r"use load_cifar"):
        D.load_mnist("train", name="cifar-10")
    with pytest.raises(ValueError, match=r"use load_mnist"):
        D.load_cifar("mnist", "train")
    with pytest.raises(ValueError, match=r"label_kind='coarse' exists only for cifar-100"):
        D.load_cifar("cifar-10", "train", label_kind="coarse")


def test_missing_files_without_download_clear_error(isolated):
    root = isolated / "d"
    with pytest.raises(D.DatasetNotFoundError) as info:
        D.load_mnist("train", data_dir=root)
    err = info.value
    msg = str(err)
    assert isinstance(err, RuntimeError)
    assert "train-images-idx3-ubyte.gz" in msg and "train-labels-idx1-ubyte.gz" in msg
    assert str(root / "mnist") in msg                                     # data_dir searched
    assert str(isolated / "xdg" / "uniloss" / "mnist") in msg             # cache searched
    assert "download=True" in msg and "UNILOSS_DATA" in msg
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz" in msg
    assert "http://yann.lecun.com/exdb/mnist/train-labels-idx1-ubyte.gz" in msg
    assert err.missing == ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
    assert err.searched[0] == root / "mnist"
    assert listing(root) == []                                             # nothing created


# --------------------------------------------------------------------------------------------
# downloader (local HTTP server only)
# --------------------------------------------------------------------------------------------

def test_download_good_file(isolated, server, mini_idx):
    name = IDX_FILES["test-labels"]
    base = server.serve("good", {name: mini_idx.gz["test-labels"]})
    dest = isolated / "dl" / "mnist" / name
    out = D.download_file([base + name], dest, checksum=sha256(mini_idx.raw["test-labels"]),
                          decompressed=True)
    assert out == dest
    assert dest.read_bytes() == mini_idx.gz["test-labels"]
    assert listing(dest.parent) == [name]
    assert server.hits[f"/good/{name}"] == 1


def test_download_then_load_end_to_end(isolated, server, mini_idx, monkeypatch):
    base = server.serve("good", {IDX_FILES[k]: v for k, v in mini_idx.gz.items()})
    monkeypatch.setitem(D.DATASETS, "mnist", mini_idx.spec([base]))
    root = isolated / "d"
    x, y = D.load_mnist("train", data_dir=root, download=True)
    assert torch.equal(x, torch.from_numpy(mini_idx.images["train"]))
    assert y.tolist() == mini_idx.labels["train"].tolist()
    assert listing(root / "mnist") == sorted([IDX_FILES["train-images"],
                                              IDX_FILES["train-labels"]])
    hits = sum(server.hits.values())
    D.load_mnist("train", data_dir=root, download=True)   # found locally now
    assert sum(server.hits.values()) == hits


def test_download_goes_to_cache_without_data_dir(isolated, server, mini_idx, monkeypatch):
    base = server.serve("good", {IDX_FILES[k]: v for k, v in mini_idx.gz.items()})
    monkeypatch.setitem(D.DATASETS, "fashion-mnist", mini_idx.spec([base], "fashion-mnist"))
    d = D.load_fashion_mnist("test", download=True)
    assert d.labels.tolist() == [6, 5, 3]
    cache = isolated / "xdg" / "uniloss" / "fashion-mnist"
    assert listing(cache) == sorted([IDX_FILES["test-images"], IDX_FILES["test-labels"]])


def test_download_corrupted_file_rejected_nothing_left(isolated, server, mini_idx):
    name = IDX_FILES["test-labels"]
    corrupted = gzip.compress(idx_bytes(np.array([6, 5, 4], np.uint8)))
    base = server.serve("bad", {name: corrupted})
    folder = isolated / "dl" / "mnist"
    folder.mkdir(parents=True)
    with pytest.raises(D.DownloadError, match=r"checksum mismatch") as info:
        D.download_file([base + name], folder / name,
                        checksum=sha256(mini_idx.raw["test-labels"]), decompressed=True)
    assert listing(folder) == []                    # not the file, not a temporary file
    assert [url for url, _ in info.value.attempts] == [base + name] * 2   # retried once
    # a folder the download created is removed again
    with pytest.raises(D.DownloadError):
        D.download_file([base + name], isolated / "new" / "mnist" / name,
                        checksum=sha256(mini_idx.raw["test-labels"]), decompressed=True)
    assert not (isolated / "new").exists()


def test_download_garbage_not_gzip_rejected(isolated, server, mini_idx):
    name = IDX_FILES["test-labels"]
    half_gzip = mini_idx.gz["test-labels"][:-10]     # gzip magic, truncated stream
    base = server.serve("bad", {name: half_gzip})
    folder = isolated / "dl"
    folder.mkdir()
    with pytest.raises(D.DownloadError, match=r"checksum mismatch"):
        D.download_file([base + name], folder / name,
                        checksum=sha256(mini_idx.raw["test-labels"]), decompressed=True)
    assert listing(folder) == []


@pytest.mark.parametrize("mode", ["cut", "inflate"])
def test_download_cut_off_transfer_rejected(isolated, server, mini_idx, mode):
    # "cut": Content-Length of the whole file, half the body, then the server closes.
    # "inflate": the whole, correct body but a larger Content-Length: the checksum would pass,
    # only the length check can catch it.
    name = IDX_FILES["test-images"]
    base = server.serve(mode, {name: mini_idx.gz["test-images"]}, mode=mode)
    folder = isolated / "dl" / "mnist"
    folder.mkdir(parents=True)
    with pytest.raises(D.DownloadError, match=r"cut off") as info:
        D.download_file([base + name], folder / name,
                        checksum=sha256(mini_idx.raw["test-images"]), decompressed=True)
    assert listing(folder) == []
    assert all("cut off" in why for _, why in info.value.attempts)
    assert server.hits[f"/{mode}/{name}"] == 2


def test_download_first_mirror_fails_second_succeeds(isolated, server, mini_idx, monkeypatch):
    files = {IDX_FILES[k]: v for k, v in mini_idx.gz.items()}
    bad = server.serve("down", files, mode="error")
    good = server.serve("good", files)
    monkeypatch.setitem(D.DATASETS, "mnist", mini_idx.spec([bad, good]))
    root = isolated / "d"
    x, y = D.load_mnist("test", data_dir=root, download=True)
    assert y.tolist() == [6, 5, 3]
    for key in ("test-images", "test-labels"):
        assert server.hits[f"/down/{IDX_FILES[key]}"] == 2     # tried, retried once
        assert server.hits[f"/good/{IDX_FILES[key]}"] == 1
    assert listing(root / "mnist") == sorted([IDX_FILES["test-images"],
                                              IDX_FILES["test-labels"]])


def test_download_404_not_retried_then_next_mirror(isolated, server, mini_idx):
    name = IDX_FILES["test-labels"]
    good = server.serve("good", {name: mini_idx.gz["test-labels"]})
    missing = f"{server.base}/nothing-here/"
    dest = isolated / "dl" / name
    D.download_file([missing + name, good + name], dest,
                    checksum=sha256(mini_idx.raw["test-labels"]), decompressed=True)
    assert server.hits[f"/nothing-here/{name}"] == 1
    assert dest.read_bytes() == mini_idx.gz["test-labels"]


def test_no_mirror_reachable_clear_error(isolated, mini_idx, monkeypatch):
    mirrors = [closed_port_url(), closed_port_url()]
    monkeypatch.setitem(D.DATASETS, "mnist", mini_idx.spec(mirrors))
    root = isolated / "d"
    with pytest.raises(D.DatasetNotFoundError) as info:
        D.load_mnist("train", data_dir=root, download=True)
    msg = str(info.value)
    assert isinstance(info.value, RuntimeError)
    for key in ("train-images", "train-labels"):
        assert IDX_FILES[key] in msg
        for mirror in mirrors:
            assert mirror + IDX_FILES[key] in msg          # the URLs tried / to fetch from
    assert str(root / "mnist") in msg                       # where it looked / where to put
    assert "cannot connect" in msg
    assert "download=True" not in msg                       # it was already on
    assert listing(root) == []                              # nothing left behind


def test_download_into_cache_when_data_dir_not_writable(isolated, server, mini_idx,
                                                        monkeypatch):
    ro = isolated / "ro"
    ro.mkdir()
    # permission bits do not bind root, so fake the check rather than chmod
    real = paths_mod._writable
    monkeypatch.setattr(paths_mod, "_writable", lambda p: Path(p) != ro and real(p))
    base = server.serve("good", {IDX_FILES[k]: v for k, v in mini_idx.gz.items()})
    monkeypatch.setitem(D.DATASETS, "mnist", mini_idx.spec([base]))
    assert D.download_root(ro).source == "cache"
    assert D.download_root(isolated / "rw" / "new").source == "data_dir"
    D.load_mnist("test", data_dir=ro, download=True)
    assert (isolated / "xdg" / "uniloss" / "mnist" / IDX_FILES["test-labels"]).is_file()
    assert listing(ro) == []


# --------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 fixtures in the publishers' on-disk format
# --------------------------------------------------------------------------------------------

def _pickle(obj) -> bytes:
    return pickle.dumps(obj, protocol=2)


def _tar_gz(folder: str, members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo(folder)
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tar.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@dataclasses.dataclass
class MiniCifar:
    name: str
    archive_name: str
    folder: str
    archive: bytes
    members: dict        # member name -> bytes
    data: dict           # split -> np uint8 [N, 3072]
    labels: dict         # split -> list[int]   (fine for cifar-100)
    coarse: dict         # split -> list[int]   (cifar-100 only)

    def spec(self, mirrors=("http://127.0.0.1:9/",)):
        base = D.get_spec(self.name)
        return dataclasses.replace(
            base,
            mirrors=tuple(mirrors),
            files={"archive": D.RemoteFile(self.archive_name, md5(self.archive), "md5")},
            members={split: tuple(D.RemoteFile(m.filename, md5(self.members[m.filename]), "md5")
                                  for m in ms) for split, ms in base.members.items()},
            meta=D.RemoteFile(base.meta.filename, md5(self.members[base.meta.filename]), "md5"),
        )

    def write_archive(self, root: Path) -> Path:
        path = root / self.name / self.archive_name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.archive)
        return path

    def write_folder(self, root: Path) -> Path:
        folder = root / self.name / self.folder
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in self.members.items():
            (folder / name).write_bytes(data)
        return folder


def _images(rng, n):
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8)


@pytest.fixture(scope="module")
def mini_cifar10() -> MiniCifar:
    rng = np.random.default_rng(10)
    members, data, labels = {}, {"train": [], "test": None}, {"train": [], "test": None}
    for i in range(1, 6):
        x = _images(rng, 3)
        y = [int(v) for v in rng.integers(0, 10, 3)]
        members[f"data_batch_{i}"] = _pickle({
            b"batch_label": f"training batch {i} of 5".encode(), b"labels": y, b"data": x,
            b"filenames": [f"img_{i}_{j}.png".encode() for j in range(3)]})
        data["train"].append(x)
        labels["train"] += y
    data["train"] = np.concatenate(data["train"])
    x = _images(rng, 4)
    x[0, :1024], x[0, 1024:2048], x[0, 2048:] = 10, 20, 30   # one image: R=10, G=20, B=30
    x[1] = np.arange(3072) % 256                            # pixel (c, i, j) = c*1024+i*32+j
    y = [9, 0, 3, 7]
    members["test_batch"] = _pickle({b"batch_label": b"testing batch 1 of 1", b"labels": y,
                                     b"data": x, b"filenames": [b"t.png"] * 4})
    data["test"], labels["test"] = x, y
    classes = [c.encode() for c in D.get_spec("cifar-10").classes]
    members["batches.meta"] = _pickle({b"num_cases_per_batch": 3, b"label_names": classes,
                                       b"num_vis": 3072})
    members["readme.html"] = b"<html></html>"
    archive = _tar_gz("cifar-10-batches-py", members)
    return MiniCifar("cifar-10", "cifar-10-python.tar.gz", "cifar-10-batches-py", archive,
                     members, data, labels, {})


@pytest.fixture(scope="module")
def mini_cifar100() -> MiniCifar:
    rng = np.random.default_rng(100)
    members, data, fine, coarse = {}, {}, {}, {}
    for split, n in (("train", 5), ("test", 2)):
        data[split] = _images(rng, n)
        fine[split] = [int(v) for v in rng.integers(0, 100, n)]
        coarse[split] = [int(v) for v in rng.integers(0, 20, n)]
        members[split] = _pickle({b"filenames": [b"f.png"] * n, b"batch_label": split.encode(),
                                  b"fine_labels": fine[split], b"coarse_labels": coarse[split],
                                  b"data": data[split]})
    members["meta"] = _pickle({
        b"fine_label_names": [c.encode() for c in D.get_spec("cifar-100").classes],
        b"coarse_label_names": [f"super_{i}".encode() for i in range(20)]})
    archive = _tar_gz("cifar-100-python", members)
    return MiniCifar("cifar-100", "cifar-100-python.tar.gz", "cifar-100-python", archive,
                     members, data, fine, coarse)


def _expected_images(flat: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(flat.reshape(-1, 3, 32, 32).copy())


def test_cifar10_from_archive(isolated, mini_cifar10, monkeypatch):
    monkeypatch.setitem(D.DATASETS, "cifar-10", mini_cifar10.spec())
    root = isolated / "d"
    mini_cifar10.write_archive(root)
    train = D.load_cifar("cifar-10", "train", data_dir=root)
    assert train.images.dtype == torch.uint8 and tuple(train.images.shape) == (15, 3, 32, 32)
    assert train.labels.dtype == torch.int64 and train.labels.tolist() == \
        mini_cifar10.labels["train"]
    assert torch.equal(train.images, _expected_images(mini_cifar10.data["train"]))
    assert train.classes == D.get_spec("cifar-10").classes
    x, y = D.load_dataset("CIFAR10", "test", data_dir=root)
    assert tuple(x.shape) == (4, 3, 32, 32) and y.tolist() == [9, 0, 3, 7]
    # channel-major layout: 1024 R, 1024 G, 1024 B, each 32x32 row-major
    assert x[0, 0].unique().tolist() == [10] and x[0, 1].unique().tolist() == [20]
    assert x[0, 2].unique().tolist() == [30]
    assert int(x[1, 0, 0, 1]) == 1 and int(x[1, 0, 1, 0]) == 32 and int(x[1, 1, 0, 0]) == 0
    assert int(x[1, 2, 7, 5]) == (2 * 1024 + 7 * 32 + 5) % 256


def test_cifar10_from_extracted_folder(isolated, mini_cifar10, monkeypatch):
    monkeypatch.setitem(D.DATASETS, "cifar-10", mini_cifar10.spec())
    root = isolated / "d"
    mini_cifar10.write_folder(root)
    assert not (root / "cifar-10" / "cifar-10-python.tar.gz").exists()
    train = D.load_cifar("cifar-10", "train", data_dir=root)
    assert torch.equal(train.images, _expected_images(mini_cifar10.data["train"]))
    assert train.labels.tolist() == mini_cifar10.labels["train"]
    test = D.load_cifar("cifar-10", "test", data_dir=root)
    assert torch.equal(test.images, _expected_images(mini_cifar10.data["test"]))


def test_cifar_checksums(isolated, mini_cifar10, monkeypatch):
    root = isolated / "d"
    archive = mini_cifar10.write_archive(root)
    # the real registry md5 rejects the fixture archive
    with pytest.raises(D.ChecksumError, match=r"cifar-10-python\.tar\.gz.*expected md5 "
                                              r"c58f30108f718f92721af3b95e74349a"):
        D.load_cifar("cifar-10", "test", data_dir=root)
    monkeypatch.setitem(D.DATASETS, "cifar-10", mini_cifar10.spec())
    assert D.load_cifar("cifar-10", "test", data_dir=root).labels.tolist() == [9, 0, 3, 7]
    # extracted folder: a tampered batch is caught by its own md5
    archive.unlink()
    folder = mini_cifar10.write_folder(root)
    tampered = pickle.loads(mini_cifar10.members["test_batch"])
    tampered[b"labels"] = [1, 1, 1, 1]
    (folder / "test_batch").write_bytes(_pickle(tampered))
    with pytest.raises(D.ChecksumError, match=r"test_batch.*expected md5"):
        D.load_cifar("cifar-10", "test", data_dir=root)


def test_cifar100_fine_and_coarse(isolated, mini_cifar100, monkeypatch):
    monkeypatch.setitem(D.DATASETS, "cifar-100", mini_cifar100.spec())
    root = isolated / "d"
    mini_cifar100.write_archive(root)
    train = D.load_cifar("cifar-100", "train", data_dir=root)
    assert tuple(train.images.shape) == (5, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.labels.dtype == torch.int64
    assert train.labels.tolist() == mini_cifar100.labels["train"]
    assert torch.equal(train.images, _expected_images(mini_cifar100.data["train"]))
    assert len(train.classes) == 100 and train.classes[0] == "apple"
    test = D.load_cifar("cifar-100", "test", data_dir=root, label_kind="coarse")
    assert test.labels.tolist() == mini_cifar100.coarse["test"]
    assert test.classes == tuple(f"super_{i}" for i in range(20))
    # the extracted folder gives the same
    (root / "cifar-100" / "cifar-100-python.tar.gz").unlink()
    mini_cifar100.write_folder(root)
    again = D.load_cifar("cifar-100", "train", data_dir=root)
    assert torch.equal(again.images, train.images) and torch.equal(again.labels, train.labels)


def test_cifar_download_from_local_server(isolated, server, mini_cifar10, monkeypatch):
    base = server.serve("kriz", {"cifar-10-python.tar.gz": mini_cifar10.archive})
    monkeypatch.setitem(D.DATASETS, "cifar-10", mini_cifar10.spec([closed_port_url(), base]))
    root = isolated / "d"
    test = D.load_cifar("cifar-10", "test", data_dir=root, download=True)
    assert test.labels.tolist() == [9, 0, 3, 7]
    assert listing(root / "cifar-10") == ["cifar-10-python.tar.gz"]


def test_cifar_missing_clear_error(isolated):
    with pytest.raises(D.DatasetNotFoundError) as info:
        D.load_cifar("cifar-100", "train", data_dir=isolated / "d")
    msg = str(info.value)
    assert "cifar-100-python.tar.gz" in msg and "cifar-100-python" in msg
    assert str(isolated / "d" / "cifar-100") in msg
    assert "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz" in msg


def test_cifar_format_errors(isolated, mini_cifar10, monkeypatch):
    root = isolated / "d"
    # an archive without test_batch
    members = {k: v for k, v in mini_cifar10.members.items() if k != "test_batch"}
    archive = _tar_gz("cifar-10-batches-py", members)
    spec = dataclasses.replace(mini_cifar10.spec(), files={"archive": D.RemoteFile(
        "cifar-10-python.tar.gz", md5(archive), "md5")})
    monkeypatch.setitem(D.DATASETS, "cifar-10", spec)
    (root / "cifar-10").mkdir(parents=True)
    (root / "cifar-10" / "cifar-10-python.tar.gz").write_bytes(archive)
    with pytest.raises(D.DataFormatError, match=r"expected members "
                                                r"cifar-10-batches-py/test_batch"):
        D.load_cifar("cifar-10", "test", data_dir=root)
    # wrong array shape / label count / label range
    from uniloss.experiments.data.cifar import cifar_batches_to_tensors
    with pytest.raises(D.DataFormatError, match=r"uint8 array \[N, 3072\], got uint8 array of "
                                                r"shape \(2, 3000\)"):
        cifar_batches_to_tensors([{b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}],
                                 b"labels", 10)
    with pytest.raises(D.DataFormatError, match=r"expected 2 labels"):
        cifar_batches_to_tensors([{b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}],
                                 b"labels", 10)
    with pytest.raises(D.DataFormatError, match=r"labels must lie in \[0, 10\)"):
        cifar_batches_to_tensors([{b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]}],
                                 b"labels", 10)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_cifar_pickle_cannot_run_code(tmp_path):
    marker = tmp_path / "pwned"
    payload = _pickle({b"data": _Evil(str(marker)), b"labels": []})
    with pytest.raises(D.DataFormatError, match=r"refusing to load global posix.mkdir"):
        D.load_cifar_pickle(payload)
    assert not marker.exists()
    # and a legitimate batch (Python 3 pickle, protocol 2 and 4) loads
    batch = {b"data": np.ones((1, 3072), np.uint8), b"labels": [3]}
    for protocol in (2, 4):
        out = D.load_cifar_pickle(pickle.dumps(batch, protocol=protocol))
        assert out[b"labels"] == [3] and out[b"data"].shape == (1, 3072)
    with pytest.raises(D.DataFormatError, match=r"expected a pickled dict, got list"):
        D.load_cifar_pickle(_pickle([1, 2]))
