"""Getting a shard's members onto disk: staged, then moved into place by the one writer.

Reading a shard writes each member under `state/tmp/<shard>/` and needs nothing but the
tar, the settings and the root's folders (so it can run in a worker process); the
manifest's writer settles who owns each path in `data/` (the shard that sorts first)
and renames the staged files into place when it commits the shard. A killed run leaves
only the staging folder, which the shard's next extraction clears: nothing counts as
done until the shard commits. `pending` rows are only met from older builds.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from state import files
from state.atomic import write_new
from state.hashing import file_matches, hash_file
from state.kinds import MEMBER_KINDS, FileKind

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
    """Writes the members of one shard into its staging folder; touches no manifest.

    A member whose file in `data/` already holds its bytes (the shard's last extraction,
    or a file adopted after a reset) is not written again. The writer of the manifest
    moves staged files into place when it commits the shard.
    """

    def __init__(self, root, shard: str, tmp_dir, previous: dict, adopt: bool):
        self.root, self.shard = str(root), shard
        self.tmp_dir, self.previous, self.adopt = str(tmp_dir), previous, adopt
        self.staged = 0
        self.written = 0

    def add(self, m: Member, data: bytes | memoryview) -> None:
        """Stage a member unless its place in `data/` already holds its bytes."""
        if m.kind in DIRECT_KINDS and self._in_place(m):
            return
        self.staged += 1
        self.written += 1
        m.tmp = f"{self.tmp_dir}/{self.staged}"
        m.mtime_ns = write_new(m.tmp, data).st_mtime_ns
        m.loc = None

    def _in_place(self, m: Member) -> bool:
        dest = f"data/{m.path}"
        target = f"{self.root}/{dest}"
        old = self.previous.get(dest)
        if old is not None:
            if old["xxh3"] == m.xxh3 and file_matches(
                target, old["size"], old["mtime_ns"], old["xxh3"]
            ):
                m.loc = dest
                return True
            return False
        if self.adopt and os.path.isfile(target):
            on_disk = hash_file(target)
            if on_disk == m.xxh3 or m.kind == JSON:  # a differing JSON: the user's edit
                m.loc, m.stale_stat = dest, on_disk != m.xxh3
                return True
        return False


def path_blocked(root: str, rel: str, known: dict[str, str | None] | None = None) -> str | None:
    """What stands in the way of a file at `rel` (relative to root), or None.

    `known` carries what was learnt about folders from one call to the next (one shard's
    placements share their folders).
    """
    known = {} if known is None else known
    full = f"{root}/{rel}"
    state = _folder_state(root, os.path.dirname(full), known)
    if state:
        return state
    if state is None and os.path.isdir(full):  # "": its folder is absent, so is the file
        return f"{rel} is a folder"
    return None


def _folder_state(root: str, folder: str, known: dict[str, str | None]) -> str | None:
    """None: `folder` is a folder; "": absent with nothing in the way; else what is."""
    if folder in known:
        return known[folder]
    if len(folder) <= len(root) or os.path.isdir(folder):
        state = None
    elif os.path.lexists(folder):
        state = f"{os.path.relpath(folder, root)} is a file"
    else:
        above = _folder_state(root, os.path.dirname(folder), known)
        state = "" if above is None else above
    known[folder] = state
    return state


def owners_of(conn, paths: list[str]) -> dict[str, str]:
    """path -> owning shard, for the member paths (images, JSON, pending) among `paths`."""
    return files.owners(conn, paths)
