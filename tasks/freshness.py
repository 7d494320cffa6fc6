"""What changed since the build: read-only questions to the manifest and the disk.

Every doit `uptodate` check lives here, and the keys that say what an output was made
from. A no-op `doit` runs only these, so this module (like
dodo.py) imports neither pyarrow nor sqlite-utils: the modules that do the work are
imported when a task runs. A manifest that is missing or unreadable is never "up to
date"; the task then runs and names the problem.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from stat import S_ISREG
from typing import NamedTuple

from state import files, meta, shards, tar_layout
from state.hashing import NotRegularFileError, file_matches, hash_file
from state.manifest import connect_if_present, manifest_path
from tasks.dataloader import DataloaderFileError, plan_dataloader, read_record
from tasks.settings import Settings, partition_path

_reader: tuple[tuple, sqlite3.Connection] | None = None  # (whose, which file) -> connection


def _read_connection(root: Path) -> sqlite3.Connection | None:
    """A read connection to the manifest of `root`, shared by the checks of one run (one
    open per run, not one per task); None when there is no manifest.

    Kept per process, thread and manifest file (a manifest moved aside and made again is
    another file), so a forked doit worker or a reset never uses a stale one.
    """
    global _reader
    path = manifest_path(root)
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not S_ISREG(st.st_mode):
        return None
    whose = (os.getpid(), threading.get_ident(), st.st_dev, st.st_ino, str(path))
    if _reader is not None:
        if _reader[0] == whose:
            return _reader[1]
        if _reader[0][:2] == whose[:2]:
            _reader[1].close()
        _reader = None
    conn = connect_if_present(root)
    if conn is not None:
        _reader = (whose, conn)
    return conn


def _forget_reader() -> None:
    """Drop the shared connection (it gave an error)."""
    global _reader
    if _reader is not None:
        with contextlib.suppress(sqlite3.Error):
            _reader[1].close()
        _reader = None


def _reading_manifest(check: Callable[..., bool]) -> Callable[..., bool]:
    """Give `check` a read connection to the manifest as its first argument; False when
    there is no readable manifest."""

    @wraps(check)
    def run(settings: Settings, *args) -> bool:
        conn = _read_connection(settings.root)
        if conn is None:
            return False
        try:
            return check(conn, settings, *args)
        except sqlite3.Error:
            _forget_reader()
            return False

    return run


# --------------------------------------------------------------------------- keys


def caption_settings_key(settings: Settings) -> str:
    """The settings that decide caption text and files, as one comparable string."""
    return json.dumps(
        [list(settings.caption_field), settings.caption_strategy, settings.join_caption_lines]
    )


def captions_key(part_xxh3: str | None, settings: Settings) -> str:
    """What a shard's caption files are made from: its partition and the caption settings."""
    return f"{part_xxh3} {caption_settings_key(settings)}"


def table_shards(db) -> list[tuple[str, str]]:
    """(shard, partition hash) of every shard that has a partition, in name order."""
    return [(name, part) for name, part in shards.with_partition(db)]


def table_key(settings: Settings, shards: list[tuple[str, str]]) -> str:
    """What the table is made from: partitions and the caption settings."""
    key = [shards, list(settings.caption_field), settings.join_caption_lines]
    if settings.layout == "tars":  # its table has the `shard` and `member` columns
        key.append(settings.layout)
    return json.dumps(key)


def table_matches(db, settings: Settings, key: str) -> bool:
    """The table on disk is the one the manifest recorded for `key`."""
    rel = os.path.relpath(settings.table_path, settings.root)
    return meta.get(db, meta.table_key(rel)) == key and _holds_recorded(db, settings, rel)


def _holds_recorded(db, settings: Settings, rel: str) -> bool:
    """The file at `rel` (under the root) has a manifest row and still holds its content."""
    row = files.stat_of(db, rel)
    return row is not None and file_matches(settings.root / rel, *row)


def _partition_intact(db, settings: Settings, shard: str) -> bool:
    """The shard's partition is on disk as the manifest recorded it."""
    return _holds_recorded(
        db, settings, os.path.relpath(partition_path(settings, shard), settings.root)
    )


# --------------------------------------------------------------------------- changes


class ChangedJson(NamedTuple):
    """A JSON in data/ whose stat differs from its manifest row, as found on disk now."""

    path: str
    shard: str
    size: int
    mtime_ns: int
    xxh3: str | None  # None: not a regular file, never read
    content_changed: bool  # False: touched, same bytes


def changed_json_rows(db, settings: Settings) -> list[ChangedJson]:
    """JSON rows whose file changed on disk (a missing one is the audit's to report)."""
    changed = []
    root = str(settings.root)
    stat = os.stat
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return changed
    try:
        # only what the stat needs: shard and hash are looked up for changed rows only;
        # paths relative to the root's descriptor, so each stat walks only its own path
        moved = [
            (path, st)
            for path, size, mtime_ns in files.json_stats(db)
            if (st := _stat_at(stat, path, root_fd)) is not None
            and (st.st_mtime_ns != mtime_ns or st.st_size != size)
        ]
    finally:
        os.close(root_fd)
    for path, st in moved:
        shard, xxh3 = files.shard_and_hash(db, path)
        try:
            new = hash_file(f"{root}/{path}")
        except NotRegularFileError:  # a FIFO or device: never read; the scan names it
            new = None
        changed.append(ChangedJson(path, shard, st.st_size, st.st_mtime_ns, new, new != xxh3))
    return changed


def _stat_at(stat, path: str, root_fd: int) -> os.stat_result | None:
    """The stat of `path` (relative to the root), or None when nothing is there."""
    try:
        return stat(path, dir_fd=root_fd)
    except FileNotFoundError:
        return None


def partitions_needing_rebuild(db, settings: Settings) -> list[str]:
    """Done shards whose partition is missing or damaged, or whose JSON rows moved."""
    stale = []
    for name, digest in shards.json_digests(db):
        if digest is None or not _partition_intact(db, settings, name):
            stale.append(name)
    return stale


# --------------------------------------------------------------------------- uptodate


@_reading_manifest
def shard_is_done(db, settings: Settings, name: str) -> bool:
    """`extract:<shard>`: done in the manifest, its partition intact (and, for the folder
    layout, its samples in data/ rather than left in the tar by `layout = "tars"`)."""
    if settings.layout != "tars" and tar_layout.has_unplaced(db, name):
        return False
    return shards.status(db, name) == shards.DONE and _partition_intact(db, settings, name)


@_reading_manifest
def scan_is_up_to_date(db, settings: Settings) -> bool:
    """`scan`: no JSON in data/ changed and every partition is intact."""
    return not changed_json_rows(db, settings) and not partitions_needing_rebuild(db, settings)


def captions_due(db, settings: Settings, shard: str) -> str | None:
    """The key the shard's caption files are to be made to, or None when they were made
    from its partition under the caption settings (or the manifest has no such shard)."""
    row = shards.caption_inputs(db, shard)
    if row is None:
        return None
    key = captions_key(row[0], settings)
    return None if row[1] == key else key


@_reading_manifest
def captions_are_current(db, settings: Settings, shard: str) -> bool:
    """`captions:<shard>`: the caption files match the shard's partition and the settings."""
    return captions_due(db, settings, shard) is None


@_reading_manifest
def table_is_current(db, settings: Settings) -> bool:
    """`table`: the table on disk was made from the current partitions and settings."""
    return table_matches(db, settings, table_key(settings, table_shards(db)))


def dataloader_is_current(settings: Settings) -> bool:
    """`dataloader`: the file holds what the build would write, and the record matches."""
    try:
        plan = plan_dataloader(settings)
    except (DataloaderFileError, OSError):
        return False  # the task runs and says what is wrong
    return not plan.changed and read_record(settings) == plan.record
