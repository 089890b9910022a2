"""A gzip bomb for the data-file tests: a small file that inflates to gigabytes."""

from __future__ import annotations

import gzip

_CHUNK = 16 << 20  # zeros per gzip member: compressed once, the member repeated


def gzip_bomb(header: bytes, inflated: int = 4 << 30) -> bytes:
    """``header`` followed by zeros, ``inflated`` bytes in all once decompressed (a few MB compressed).

    A gzip file may hold several members, read as one stream; so the bomb is one compressed
    run of zeros repeated, and making it costs one compression of 16 MiB."""
    member = gzip.compress(bytes(_CHUNK), compresslevel=9)
    return gzip.compress(header) + member * -(-(inflated - len(header)) // _CHUNK)
