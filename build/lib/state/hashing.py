"""XXH3-128 hashing of files and buffers (hex digests, as the manifest stores them)."""

from __future__ import annotations

import os
from pathlib import Path

import xxhash

CHUNK = 1 << 20


def hash_bytes(data: bytes | memoryview) -> str:
    """Hex XXH3-128 digest of a buffer."""
    return xxhash.xxh3_128_hexdigest(data)


def hash_file(path: str | os.PathLike) -> str:
    """Hex XXH3-128 digest of a file's contents, read in 1 MiB chunks."""
    h = xxhash.xxh3_128()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def stat_key(path: str | os.PathLike) -> tuple[int, int] | None:
    """(size, mtime_ns) of a file, or None when it does not exist."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_size, st.st_mtime_ns


def file_matches(
    path: str | Path, size: int | None, mtime_ns: int | None, xxh3: str | None
) -> bool:
    """Whether a file still holds the recorded content (stat first; hash only if stat differs)."""
    key = stat_key(path)
    if key is None:
        return False
    if key == (size, mtime_ns):
        return True
    if key[0] != size:
        return False
    return hash_file(path) == xxh3
