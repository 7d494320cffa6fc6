"""One sequential pass over a tar shard: its members' bytes, and the XXH3 of the whole file.

Python's `tarfile` ends iteration silently at a header cut in half or at garbage, as if
the archive had ended there; `read_shard` only reports success when the end-of-archive
marker (a zero block) was really reached.
"""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import xxhash

BLOCK = tarfile.BLOCKSIZE
READ_BUFFER = 1 << 20
# A path component must leave room for the build's temporary name beside it
# (`.<name>.shardprep-tmp`) within the usual 255-byte file-name limit.
NAME_MAX = 255 - len("..shardprep-tmp")
# Longest member path (bytes) accepted: well inside PATH_MAX (4096) once the root,
# `incomplete/<shard>/duplicate-members/<n>/` and a caption's `.txt` are added.
PATH_MAX = 3000
# C0 and C1 controls, and the Unicode line and paragraph separators (line breaks to
# str.splitlines and to many viewers)
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_MAGIC = {
    b"\x1f\x8b": ("gzip-compressed", "gunzip"),
    b"BZh": ("bzip2-compressed", "bunzip2"),
    b"\xfd7zXZ\x00": ("xz-compressed", "unxz"),
    b"\x28\xb5\x2f\xfd": ("zstd-compressed", "unzstd"),
}
# A member this large is yielded as a view of its padded read rather than copied without
# its padding (a second pass over every byte of a large image).
VIEW_MIN = 64 << 10


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

    def __reduce__(self):
        # pickled by a worker process that read the shard (tasks/extract/pool.py)
        state = (self.shard, self.detail, self.last_member)
        return (_unpickle_read_error, (type(self), str(self), state))


def _unpickle_read_error(cls: type, message: str, state: tuple) -> ShardReadError:
    exc = cls.__new__(cls)
    RuntimeError.__init__(exc, message)
    exc.shard, exc.detail, exc.last_member = state
    return exc


class CompressedShardError(ShardReadError):
    """The shard is a compressed tar under a plain `.tar` name."""

    def __init__(self, shard: Path, what: str, tool: str):
        RuntimeError.__init__(
            self,
            f"{shard}: is {what}, not a plain tar: decompress it ({tool} -c {shard.name} > "
            f"{shard.name}.plain && mv {shard.name}.plain {shard.name}) or fetch the "
            "uncompressed shard, then run `doit`",
        )
        self.shard, self.detail, self.last_member = shard, what, None


def compression_of(head: bytes) -> tuple[str, str] | None:
    """(what, tool to undo it) when `head` starts with a known compression magic."""
    for magic, found in _MAGIC.items():
        if head.startswith(magic):
            return found
    return None


def printable(name: str) -> str:
    """A member name fit for one line: bytes that are not UTF-8 as `\\xNN`, control
    characters escaped as in repr."""
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if _CONTROL.search(text):
        text = repr(text)[1:-1]
    return text


def name_problem(path: str) -> str | None:
    """Why a (normalized) member path cannot be written under `data/`, or None."""
    if _CONTROL.search(path):
        return "name holds control characters (newline, tab, ...)"
    if path.isascii():  # the common case: one byte a character
        size = len(path)
        if size <= NAME_MAX:
            return None
    else:
        try:
            size = len(path.encode("utf-8"))
        except UnicodeEncodeError:
            return "name is not valid UTF-8"
    if size > PATH_MAX:
        return f"path is {size} bytes long (at most {PATH_MAX})"
    if any(len(part.encode("utf-8")) > NAME_MAX for part in path.split("/")):
        return f"a file or folder name is longer than {NAME_MAX} bytes"
    return None


class HashingReader(io.RawIOBase):
    """A read-only, forward-only file wrapper that hashes each byte as it is read."""

    def __init__(self, path: Path):
        self._f = open(path, "rb", buffering=READ_BUFFER)  # noqa: SIM115
        with contextlib.suppress(OSError, AttributeError):  # a larger read-ahead; Linux only
            os.posix_fadvise(self._f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        self._hash = xxhash.xxh3_128()
        self._pos = 0
        self.name = str(path)

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._hash.update(data)
        self._pos += len(data)
        return data

    def finish(self) -> tuple[str, int]:
        """Hash the rest of the file; return (hex digest, file size)."""
        while self.read(READ_BUFFER):
            pass
        return self._hash.hexdigest(), self._pos

    def close(self) -> None:
        self._f.close()
        super().close()


@dataclass
class TarMember:
    """One member as found in the tar (name as written, not yet normalized)."""

    name: str
    kind: str  # file | dir | link | special | sparse
    offset_data: int
    size: int


def normalize_member_name(name: str) -> str | None:
    """The member's path under `data/` (leading `./` removed), or None if it would escape."""
    if not name or name.startswith("/") or "\\" in name or "\x00" in name:
        return None
    if "." not in name.partition("/")[0][:1] and "/." not in name and "//" not in name:
        return name.rstrip("/") or None  # the common case: nothing to normalize
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        return None
    return posixpath.join(*parts)


def _skip_sparse_extensions(reader, shard: Path, offset: int, last: str | None) -> int:
    """Read the extension blocks of an old GNU sparse header (type `S`); their bytes."""
    read = 0
    while True:
        ext = reader.read(BLOCK)
        read += BLOCK
        if len(ext) < BLOCK:
            raise ShardReadError(shard, f"a sparse header cut short at byte {offset}", last)
        if not ext[504]:
            return read


_KINDS = {b"0": "file", b"\0": "file", b"7": "file", b"5": "dir", b"1": "link", b"2": "link"}
ZERO_BLOCK = bytes(BLOCK)


def _octal(field: bytes) -> int:
    """A numeric header field: octal text, or GNU base-256 when the high bit is set."""
    if field[:1] and field[0] & 0x80:
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * (len(field) - 1))) if field[0] & 0x40 else value
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _pax_records(data: bytes) -> dict[str, str]:
    """`length key=value\n` records of a pax extended header."""
    records, pos = {}, 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


def parse_header(block: bytes) -> tuple[str, int, bytes] | None:
    """(name, size, typeflag) of one 512-byte header block, or None when its checksum is wrong."""
    stored = block[148:156]
    try:
        # the checksum field counts as eight spaces (8 * 32 = 256)
        if int(stored.split(b"\0", 1)[0].strip(), 8) != sum(block) - sum(stored) + 256:
            return None
        size = _octal(block[124:136])
    except ValueError:
        return None
    name = _text(block[0:100])
    if block[257:263] == b"ustar\0" and block[345]:  # POSIX prefix field
        name = _text(block[345:500]) + "/" + name
    return name, size, block[156:157]


def read_member(fh, member: str | None, offset: int | None) -> bytes | None:
    """A member's bytes at its recorded data offset, if the tar header before it names it."""
    if offset is None or offset < BLOCK or not member:
        return None
    fh.seek(offset - BLOCK)
    block = fh.read(BLOCK)
    header = parse_header(block) if len(block) == BLOCK else None
    if header is None:
        return None
    name, size, _ = header
    # a long name is cut to its first 100 bytes in the header itself (GNU/pax)
    if not (name == member or (len(name) >= 99 and member.startswith(name))):
        return None
    data = fh.read(size)
    return data if len(data) == size else None


def _extended_header(
    reader: HashingReader, shard: Path, typeflag: bytes, size: int, offset: int, last: str | None
) -> dict[str, str]:
    """Read a GNU long name (`L`; `K` is skipped) or pax header (`x`; `g` is skipped); the
    records it sets for the next member."""
    padded = -(-size // BLOCK) * BLOCK
    meta = reader.read(padded)
    if len(meta) < padded:
        raise ShardReadError(shard, f"an extended header cut short at byte {offset}", last)
    meta = meta[:size]
    if typeflag == b"L":
        return {"path": meta.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")}
    if typeflag == b"x":
        try:
            return _pax_records(meta)
        except ValueError as exc:
            detail = f"a malformed pax header at byte {offset}"
            raise ShardReadError(shard, detail, last) from exc
    return {}


def _apply_extended(
    reader: HashingReader,
    shard: Path,
    block: bytes,
    pending: dict[str, str],
    member: tuple[str, int, str, int],
    last: str | None,
) -> tuple[str, int, str, int]:
    """(name, size, kind, data offset) of a member after the extended header records
    (`pending`) before it, and an old GNU sparse header's extension blocks."""
    name, size, kind, offset_data = member
    offset = offset_data - BLOCK
    typeflag = block[156:157]
    if "path" in pending:
        name = pending["path"]
    if "size" in pending:
        if not pending["size"].isdigit():
            raise ShardReadError(shard, f"a malformed pax size at byte {offset}", last)
        size = int(pending["size"])
    if typeflag == b"S" or any(k.startswith("GNU.sparse.") for k in pending):
        kind = "sparse"  # its data is a sparse map, not the file: never written
        name = pending.get("GNU.sparse.name", name)
        if typeflag == b"S" and block[482]:
            offset_data += _skip_sparse_extensions(reader, shard, offset, last)
    return name, size, kind, offset_data


def _member_data(
    reader: HashingReader,
    shard: Path,
    name: str,
    kind: str,
    typeflag: bytes,
    size: int,
    padded: int,
    last: str | None,
) -> bytes | memoryview | None:
    """A file member's bytes (None for other members, whose data is skipped)."""
    if kind == "file":
        data = reader.read(padded)
        if len(data) < size:
            raise ShardReadError(
                shard, f"member {name!r} is cut short ({len(data)} of {size} bytes)", last
            )
        if len(data) != padded:
            raise ShardReadError(shard, f"member {name!r} is cut short (padding)", last)
        if padded != size:
            return memoryview(data)[:size] if size >= VIEW_MIN else data[:size]
        return data
    if kind != "dir" and size and typeflag not in (b"1", b"2"):
        skipped = reader.read(padded)  # data of a special member: read, never written
        if len(skipped) != padded:
            raise ShardReadError(shard, f"member {name!r} is cut short", last)
    return None


def iter_members(
    reader: HashingReader, shard: Path
) -> Iterator[tuple[TarMember, bytes | memoryview | None]]:
    """Yield each member with its bytes (None for non-files), then check the end marker.

    Members of VIEW_MIN bytes or more come as a memoryview, smaller ones as bytes.

    A small ustar/GNU/pax header reader (tarfile's own is slow per member): GNU long
    names (`L`/`K`) and pax `path`/`size`/`linkpath` records apply to the next member.
    Raises ShardReadError when the shard ends before its end-of-archive marker, or at a
    header whose checksum is wrong.
    """
    last: str | None = None
    pending: dict[str, str] = {}
    offset = 0
    while True:
        block = reader.read(BLOCK)
        if offset == 0 and (compressed := compression_of(block)):
            raise CompressedShardError(shard, *compressed)
        if len(block) < BLOCK:
            what = "no end-of-archive marker" if not block else "a header cut short"
            raise ShardReadError(shard, f"{what} at byte {offset}", last)
        if block == ZERO_BLOCK:
            return
        header = parse_header(block)
        if header is None:
            raise ShardReadError(shard, f"not a valid tar header at byte {offset}", last)
        name, size, typeflag = header
        offset_data = offset + BLOCK
        padded = -(-size // BLOCK) * BLOCK
        kind = _KINDS.get(typeflag, "special")
        if typeflag in (b"L", b"K", b"x", b"g"):
            pending.update(_extended_header(reader, shard, typeflag, size, offset, last))
            offset = offset_data + padded
            continue
        if pending or typeflag == b"S":
            name, size, kind, offset_data = _apply_extended(
                reader, shard, block, pending, (name, size, kind, offset_data), last
            )
            padded = -(-size // BLOCK) * BLOCK
            pending = {}
        data = _member_data(reader, shard, name, kind, typeflag, size, padded, last)
        offset = offset_data + padded
        last = name
        yield TarMember(name, kind, offset_data, size), data
