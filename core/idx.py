"""The four canonical MNIST files: finding them, downloading them, reading and verifying them.

They are gzip-compressed IDX files, looked up in an explicit directory, in ``$MNIST_DIR``,
or in the download cache (``cache_dir() / "mnist"``); only the cache is ever downloaded
into. Every file is parsed and checked (gzip stream, magic number, dimensions, item
count, length and the SHA-256 of the decompressed bytes) before it is used, so a damaged
file fails loudly with a one-line ``DataError`` instead of yielding wrong data.
Pure standard library, and NumPy for the decoded items.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
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
    "MIRRORS",
    "MNIST_FILES",
    "N_PIXELS",
    "TEST_IMAGES",
    "TEST_LABELS",
    "TRAIN_IMAGES",
    "TRAIN_LABELS",
    "DataError",
    "ProgressCallback",
    "cache_dir",
    "find_or_download",
    "locate_mnist",
    "read_idx",
]

#: Base URLs of public MNIST mirrors, tried in order.
MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

ProgressCallback = Callable[[str, int, int | None], None]

N_PIXELS = 28 * 28
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
        return N_PIXELS if self.magic == _IMAGES_MAGIC else 1


TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"

MNIST_FILES: dict[str, _IdxFile] = {
    TRAIN_IMAGES: _IdxFile(_IMAGES_MAGIC, 60000, "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
    TRAIN_LABELS: _IdxFile(_LABELS_MAGIC, 60000, "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    TEST_IMAGES: _IdxFile(_IMAGES_MAGIC, 10000, "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    TEST_LABELS: _IdxFile(_LABELS_MAGIC, 10000, "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
}


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
    return items.reshape(count, N_PIXELS) if spec.magic == _IMAGES_MAGIC else items


def read_idx(path: Path) -> np.ndarray:
    """Read and verify one canonical MNIST file (see ``_decode_idx``)."""
    try:
        with path.open("rb") as compressed:
            return _decode_idx(compressed, MNIST_FILES[path.name], str(path))
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None


# ---------------------------------------------------------------------------
# Locating and downloading


def find_or_download(
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

    missing = [name for name in MNIST_FILES if not (directory / name).is_file()]
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
                _decode_idx(compressed, MNIST_FILES[name], url)
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
    directory, downloaded = find_or_download(data_dir, progress, mirrors)
    for name in MNIST_FILES:
        if name not in downloaded:
            read_idx(directory / name)
    return directory
