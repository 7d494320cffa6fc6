"""Getting a shard's members onto disk: straight into `data/` under a claim, else staged.

Before writing a batch of members, the shard claims their paths in the manifest (one
write transaction): a path nobody owns gets a provisional `pending` row of this shard,
and the member is written straight to `data/<path>` (no temporary name, no rename: half
of the file-system work of a cold build). A path another shard owns is staged under
`state/tmp/<shard>/` and settled when the shard commits (the shard that sorts first
wins). A killed run leaves at most `pending` rows whose files may be partial: nothing
counts as done until the shard commits, and the rerun hashes before it trusts a file.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from state import files
from state.atomic import move_file, raise_if_disk_full, write_all, write_new
from state.hashing import file_matches, hash_file
from state.kinds import MEMBER_KINDS, FileKind
from state.manifest import write_transaction

JSON = FileKind.JSON

BATCH_MEMBERS = 512
BATCH_BYTES = 32 << 20
DIRECT_KINDS = MEMBER_KINDS
# A path that cannot be written because a file stands where a folder is needed, or
# the other way round: the member is staged and the conflict named at commit.
PATH_ERRNOS = (errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG)


@dataclass
class Member:
    """A regular file member of the shard and where its bytes are now."""

    path: str  # normalized, relative to data/
    member: str  # name as written in the tar
    offset: int
    size: int
    xxh3: str
    kind: str = "other"  # image | json | other, from the extension
    loc: str | None = None  # where the bytes are, relative to root (None: staged or lost)
    tmp: str | None = None  # staging file, when the path was not ours to write
    mtime_ns: int | None = None  # of the written file (a rename keeps it)
    stale_stat: bool = False  # kept a differing JSON on disk: the next scan must hash it
    header: tuple[int, int] | None = None
    obj: dict | None = None
    raw: str | None = None
    json_error: str | None = None


class MemberWriter:
    """Writes the members of one shard, batch by batch, under the shard's claims."""

    def __init__(self, db, root, shard: str, tmp_dir, previous: dict, adopt: bool):
        self.db, self.root, self.shard = db, str(root), shard
        self.tmp_dir, self.previous, self.adopt = str(tmp_dir), previous, adopt
        self.batch: list[tuple[Member, bytes | memoryview]] = []
        self.batch_bytes = 0
        self.staged = 0
        self.written = 0
        self.made_dirs: set[str] = set()

    def add(self, m: Member, data: bytes | memoryview) -> None:
        """Queue a member; write the batch when it is full."""
        self.batch.append((m, data))
        self.batch_bytes += len(data)
        if len(self.batch) >= BATCH_MEMBERS or self.batch_bytes >= BATCH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Claim the queued members' paths, then write each member."""
        if not self.batch:
            return
        claimed = self._claim([m for m, _ in self.batch if m.kind in DIRECT_KINDS])
        for m, data in self.batch:
            if m.path in claimed:
                self._write_direct(m, data)
            else:
                self._stage(m, data)
        self.batch.clear()
        self.batch_bytes = 0

    def move(self, m: Member, dest: str) -> None:
        """Move a member's bytes (already written) to `dest`, relative to root."""
        target = f"{self.root}/{dest}"
        self._ensure_dir(os.path.dirname(target))
        if m.tmp is not None:
            move_file(m.tmp, target)
            m.tmp = None
        elif m.loc is not None:
            move_file(f"{self.root}/{m.loc}", target)
        m.loc = dest

    def _claim(self, members: list[Member]) -> set[str]:
        """Paths (relative to data/) this shard may write directly; records the claims."""
        if not members:
            return set()
        dests = [f"data/{m.path}" for m in members]
        with write_transaction(self.db) as conn:
            owners = owners_of(conn, dests)
            claimed, rows = set(), []
            for m, dest in zip(members, dests, strict=True):
                if owners.get(dest, self.shard) != self.shard:
                    continue
                claimed.add(m.path)
                old = self.previous.get(dest)
                if old is None or old["xxh3"] != m.xxh3:
                    rows.append(pending_row(self.shard, dest, m))
            files.upsert(conn, rows)
        return claimed

    def _write_direct(self, m: Member, data: bytes | memoryview) -> None:
        dest = f"data/{m.path}"
        target = f"{self.root}/{dest}"
        old = self.previous.get(dest)
        if (
            old
            and old["xxh3"] == m.xxh3
            and file_matches(target, old["size"], old["mtime_ns"], old["xxh3"])
        ):
            m.loc = dest
            return
        if self.adopt and old is None and os.path.isfile(target):
            on_disk = hash_file(target)
            if on_disk == m.xxh3 or m.kind == JSON:  # a differing JSON: the user's edit
                m.loc, m.stale_stat = dest, on_disk != m.xxh3
                return
        try:
            fd = self._open_direct(dest, target)
        except OSError as exc:
            if exc.errno not in PATH_ERRNOS:
                raise
            fd = -1  # a file or folder of another shard is in the way: settled at commit
        if fd < 0:
            self._stage(m, data)
            return
        try:
            write_all(fd, data)
            m.mtime_ns = os.fstat(fd).st_mtime_ns
        except OSError as exc:
            os.close(fd)
            fd = -1
            os.unlink(target)
            raise_if_disk_full(exc, os.path.dirname(target))
            raise
        finally:
            if fd >= 0:
                os.close(fd)
        m.loc = dest
        self.written += 1

    def _open_direct(self, dest: str, target: str) -> int:
        """A descriptor to write `target` directly, or -1 if another shard took it."""
        try:
            return os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileNotFoundError:
            self._ensure_dir(os.path.dirname(target))
            return os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            if owners_of(self.db, [dest]).get(dest) != self.shard:
                return -1  # taken meanwhile by a shard that sorts first
            return os.open(target, os.O_WRONLY | os.O_TRUNC)

    def _stage(self, m: Member, data: bytes | memoryview) -> None:
        self.staged += 1
        self.written += 1
        m.tmp = f"{self.tmp_dir}/{self.staged}"
        m.mtime_ns = write_new(m.tmp, data).st_mtime_ns
        m.loc = None

    def _ensure_dir(self, folder: str) -> None:
        if folder not in self.made_dirs:
            os.makedirs(folder, exist_ok=True)
            self.made_dirs.add(folder)


def path_blocked(root: str, rel: str) -> str | None:
    """What stands in the way of a file at `rel` (relative to root), or None."""
    full = f"{root}/{rel}"
    if os.path.isdir(full):
        return f"{rel} is a folder"
    folder = os.path.dirname(full)
    while len(folder) > len(root) and not os.path.isdir(folder):
        if os.path.lexists(folder):
            return f"{os.path.relpath(folder, root)} is a file"
        folder = os.path.dirname(folder)
    return None


def owners_of(conn, paths: list[str]) -> dict[str, str]:
    """path -> owning shard, for the member paths (images, JSON, pending) among `paths`."""
    return files.owners(conn, paths)


def pending_row(shard: str, dest: str, m: Member) -> files.FileRow:
    """A provisional claim: the path is this shard's, the file not yet complete."""
    return files.file_row(
        dest,
        FileKind.PENDING,
        shard=shard,
        member=m.member,
        offset=m.offset,
        size=m.size,
        xxh3=m.xxh3,
    )
