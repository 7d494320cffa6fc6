"""XXH3-128 hashing of files and buffers (hex digests, as the manifest stores them)."""

from __future__ import annotations

import os
from pathlib import Path
from stat import S_ISREG

import xxhash

CHUNK = 1 << 20


def hash_bytes(data: bytes | memoryview) -> str:
    """Hex XXH3-128 digest of a buffer."""
    return xxhash.xxh3_128_hexdigest(data)


class NotRegularFileError(OSError):
    """A path that should hold a file holds a FIFO, a device or a socket: never read."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(f"{os.fspath(path)} is not a regular file (a FIFO, device or socket)")
        self.filename = os.fspath(path)


def open_regular(path: str | os.PathLike) -> int:
    """A read descriptor of a regular file; NotRegularFileError for anything else.

    Opened non-blocking so that a FIFO never blocks; the flag is cleared for the read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFileError(path)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: str | os.PathLike) -> bytes:
    """The bytes of a regular file (never blocking on a FIFO or reading a device)."""
    with open(open_regular(path), "rb") as f:
        return f.read()


def hash_file(path: str | os.PathLike) -> str:
    """Hex XXH3-128 digest of a regular file's contents, read in 1 MiB chunks."""
    h = xxhash.xxh3_128()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(open_regular(path), "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def is_regular(path: str | os.PathLike) -> bool:
    """Whether `path` is a regular file (symlinks followed)."""
    try:
        return S_ISREG(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False


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
    """Whether a file still holds the recorded content (stat first; hash only if stat differs).

    Anything but a regular file (a FIFO or device put in its place) does not match.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    return S_ISREG(st.st_mode) and stat_matches(path, st, size, mtime_ns, xxh3)


def stat_matches(
    path: str | Path, st: os.stat_result, size: int | None, mtime_ns: int | None, xxh3: str | None
) -> bool:
    """`file_matches` given the regular file's stat `st`, taken by the caller."""
    key = st.st_size, st.st_mtime_ns
    if key == (size, mtime_ns):
        return True
    if key[0] != size:
        return False
    return hash_file(path) == xxh3
