"""Manifest facts about caption files: rewrites under way, shards whose captions failed.

- A caption row whose `mtime_ns` is `WRITING` is being rewritten by the build: a file
  that differs from such a row was cut short by a killed run, not edited by hand.
- `meta` key `caption_writing:<shard>`: the paths (a JSON list) of the batch of caption
  files the build is rewriting in place; a row listed there counts as `WRITING`. One row
  per batch, where marking each file's row would write it twice. `settle_rewrites` turns
  a batch a killed run left into `WRITING` rows.
- `meta` key `caption_failed:<shard>`: why the shard's caption files could not all be
  written (the summary fails the run while one is recorded).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

from state import meta

WRITING = -1
FAILED_PREFIX = "caption_failed:"
WRITING_PREFIX = "caption_writing:"
_WRITING_KEYS = (WRITING_PREFIX, WRITING_PREFIX[:-1] + ";")  # every key with the prefix


def caption_rows(db: sqlite3.Connection, shard: str) -> dict[str, tuple[int, int, str]]:
    """path -> (size, mtime_ns, xxh3) of the shard's caption rows."""
    rows = db.execute(
        "SELECT path, size, mtime_ns, xxh3 FROM files WHERE shard = ? AND kind = 'caption'",
        [shard],
    )
    return {path: (size, mtime_ns, xxh3) for path, size, mtime_ns, xxh3 in rows}


def mark_writing(conn: sqlite3.Connection, paths: Sequence[str]) -> None:
    """Mark caption rows as being rewritten (inside the caller's transaction)."""
    conn.executemany("UPDATE files SET mtime_ns = ? WHERE path = ?", ((WRITING, p) for p in paths))


def begin_rewrites(conn: sqlite3.Connection, shard: str, paths: Sequence[str]) -> None:
    """Record the batch of the shard's caption files about to be rewritten in place
    (inside the caller's transaction): until `end_rewrites`, they count as `WRITING`."""
    meta.set(conn, WRITING_PREFIX + shard, json.dumps(list(paths)))


def end_rewrites(conn: sqlite3.Connection, shard: str, unfinished: Sequence[str] = ()) -> None:
    """The shard's batch is written (inside the caller's transaction, with its rows);
    the paths in `unfinished` stay `WRITING`."""
    mark_writing(conn, unfinished)
    meta.delete(conn, WRITING_PREFIX + shard)


def rewrites_under_way(db: sqlite3.Connection) -> set[str]:
    """Paths of every batch of caption rewrites recorded and not ended (a killed run's)."""
    rows = db.execute(
        "SELECT value FROM meta WHERE key >= ? AND key < ?",
        _WRITING_KEYS,
    )
    return {path for (value,) in rows for path in json.loads(value)}


def settle_rewrites(conn: sqlite3.Connection) -> None:
    """Turn the batches a killed run left into `WRITING` rows and forget them (inside the
    caller's transaction)."""
    mark_writing(conn, sorted(rewrites_under_way(conn)))
    conn.execute(
        "DELETE FROM meta WHERE key >= ? AND key < ?",
        _WRITING_KEYS,
    )


def record_written(conn: sqlite3.Connection, rows: Sequence[tuple[int, int, str, str]]) -> None:
    """Set (size, mtime_ns, xxh3) of rewritten caption files, given as (..., path)."""
    conn.executemany("UPDATE files SET size = ?, mtime_ns = ?, xxh3 = ? WHERE path = ?", rows)


def set_caption_failure(conn: sqlite3.Connection, shard: str, detail: str | None) -> None:
    """Record why a shard's captions failed, or clear it (`detail` None)."""
    if detail is None:
        meta.delete(conn, FAILED_PREFIX + shard)
    else:
        meta.set(conn, FAILED_PREFIX + shard, detail)


def caption_failures(db: sqlite3.Connection) -> dict[str, str]:
    """shard -> why its captions could not all be written (shards the manifest still has:
    a shard renamed since keeps no stale failure)."""
    rows = db.execute(
        "SELECT key, value FROM meta WHERE key >= ? AND key < ? "
        "AND substr(key, ?) IN (SELECT name FROM shards) ORDER BY key",
        (FAILED_PREFIX, FAILED_PREFIX[:-1] + chr(ord(":") + 1), len(FAILED_PREFIX) + 1),
    )
    return {key[len(FAILED_PREFIX) :]: value for key, value in rows}
