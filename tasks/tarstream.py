"""One sequential pass over a tar shard: its members' bytes, and the XXH3 of the whole file.

Python's `tarfile` ends iteration silently at a header cut in half or at garbage, as if
the archive had ended there; `read_shard` only reports success when the end-of-archive
marker (a zero block) was really reached.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import xxhash

BLOCK = tarfile.BLOCKSIZE
READ_BUFFER = 1 << 20


class ShardReadError(RuntimeError):
    """The shard could not be read to its end-of-archive marker."""

    def __init__(self, shard: Path, detail: str, last_member: str | None):
        self.shard = shard
        self.detail = detail
        self.last_member = last_member
        after = f"after member {last_member!r}" if last_member else "before its first member"
        super().__init__(
            f"{shard}: cannot be read to its end ({detail}) {after}; the download is "
            "probably incomplete or damaged: run `doit download` again or replace/delete "
            "the file, then run `doit`"
        )


class HashingReader(io.RawIOBase):
    """A read-only file wrapper that hashes each byte of the file once, in file order.

    Seeking forward past unread bytes reads and hashes them, so the digest always
    covers the file from its start; seeking back re-reads without hashing again.
    """

    def __init__(self, path: Path):
        self._f = open(path, "rb", buffering=READ_BUFFER)  # noqa: SIM115
        self._hash = xxhash.xxh3_128()
        self._hashed = 0
        self._pos = 0
        self.name = str(path)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        end = self._pos + len(data)
        if end > self._hashed:
            self._hash.update(memoryview(data)[self._hashed - self._pos :])
            self._hashed = end
        self._pos = end
        return data

    def readinto(self, b) -> int:  # pragma: no cover - tarfile does not use it
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._pos
        elif whence == io.SEEK_END:
            raise io.UnsupportedOperation("HashingReader cannot seek from the end")
        if offset > self._hashed:
            self._f.seek(self._hashed)
            self._pos = self._hashed
            while self._pos < offset:
                if not self.read(min(READ_BUFFER, offset - self._pos)):
                    break
        self._f.seek(offset)
        self._pos = offset
        return offset

    def finish(self) -> tuple[str, int]:
        """Hash the rest of the file; return (hex digest, file size)."""
        self.seek(self._hashed)
        while self.read(READ_BUFFER):
            pass
        return self._hash.hexdigest(), self._hashed

    def close(self) -> None:
        self._f.close()
        super().close()


@dataclass
class TarMember:
    """One member as found in the tar (name as written, not yet normalized)."""

    name: str
    kind: str  # file | dir | link | special
    offset_data: int
    size: int


def normalize_member_name(name: str) -> str | None:
    """The member's path under `data/` (leading `./` removed), or None if it would escape."""
    if not name or name.startswith("/") or "\\" in name or "\x00" in name:
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        return None
    return posixpath.join(*parts)


def _kind(info: tarfile.TarInfo) -> str:
    if info.isreg():
        return "file"
    if info.isdir():
        return "dir"
    if info.issym() or info.islnk():
        return "link"
    return "special"


def iter_members(reader: HashingReader, shard: Path) -> Iterator[tuple[TarMember, bytes | None]]:
    """Yield each member with its bytes (None for non-files), then check the end marker.

    Raises ShardReadError when the shard ends before its end-of-archive marker.
    """
    last: str | None = None
    try:
        tar = tarfile.open(fileobj=reader, mode="r:")  # noqa: SIM115
    except tarfile.TarError as exc:
        raise ShardReadError(shard, f"not a tar archive: {exc}", None) from exc
    while True:
        try:
            info = tar.next()
        except tarfile.TarError as exc:
            raise ShardReadError(shard, f"bad header: {exc}", last) from exc
        tar.members = []  # tarfile keeps every TarInfo otherwise
        if info is None:
            break
        member = TarMember(info.name, _kind(info), info.offset_data, info.size)
        data = None
        if member.kind == "file":
            reader.seek(info.offset_data)
            data = reader.read(info.size)
            if len(data) != info.size:
                raise ShardReadError(
                    shard,
                    f"member {info.name!r} is cut short ({len(data)} of {info.size} bytes)",
                    last,
                )
        last = info.name
        yield member, data
    reader.seek(tar.offset)
    if reader.read(BLOCK) != bytes(BLOCK):
        raise ShardReadError(shard, f"no end-of-archive marker at byte {tar.offset}", last)
