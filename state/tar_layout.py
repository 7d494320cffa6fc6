"""Manifest facts for `layout = "tars"`: members left in their tar, and the webshart indexes.

- A sample's image/JSON row whose `mtime_ns` is `UNPLACED` was recorded but not written:
  its bytes stay in the tar at `offset` (`size` bytes), under the tar name `member`.
- `meta` key `webshart_index:<shard>`: the index written for a shard, as JSON
  `{"key": what it was made from, "path": relative to root, "size", "mtime_ns", "xxh3"}`.
"""

from __future__ import annotations

import json
import sqlite3

UNPLACED = -2
INDEX_PREFIX = "webshart_index:"
_MEMBERS = (
    "SELECT path, kind, sample, member, offset, size, xxh3 FROM files "
    "WHERE shard = ? AND kind IN ('image', 'json')"
)


def has_unplaced(db: sqlite3.Connection, shard: str) -> bool:
    """Whether any sample member of `shard` was left in its tar."""
    # the literal matches the partial index files_unplaced (state/manifest.py)
    row = db.execute(
        f"SELECT 1 FROM files WHERE shard = ? AND mtime_ns = {UNPLACED} LIMIT 1", (shard,)
    ).fetchone()
    return row is not None


def reread(conn: sqlite3.Connection, shard: str) -> None:
    """Have the next extraction of `shard` read its tar again (inside the caller's
    transaction): a shard sorting first took one of its sample paths."""
    conn.execute("UPDATE shards SET status = NULL WHERE name = ?", (shard,))


def member_rows(db: sqlite3.Connection, shard: str) -> dict[str, dict]:
    """path (`data/...`) -> {kind, sample, member, offset, size, xxh3} of a shard's samples."""
    out = {}
    for path, kind, sample, member, offset, size, xxh3 in db.execute(_MEMBERS, (shard,)):
        out[path] = {
            "kind": kind,
            "sample": sample,
            "member": member,
            "offset": offset,
            "size": size,
            "xxh3": xxh3,
        }
    return out


def index_record(db: sqlite3.Connection, shard: str) -> dict | None:
    """What the manifest recorded for a shard's index, or None."""
    row = db.execute("SELECT value FROM meta WHERE key = ?", (INDEX_PREFIX + shard,)).fetchone()
    if row is None:
        return None
    try:
        return json.loads(row[0])
    except ValueError:
        return None


def all_index_records(db: sqlite3.Connection) -> dict[str, dict]:
    """shard -> its index record, for every shard that has one."""
    out = {}
    rows = db.execute(
        "SELECT key, value FROM meta WHERE key >= ? AND key < ?",
        (INDEX_PREFIX, INDEX_PREFIX[:-1] + chr(ord(":") + 1)),
    )
    for key, value in rows:
        try:
            out[key[len(INDEX_PREFIX) :]] = json.loads(value)
        except ValueError:
            continue
    return out


def set_index_record(conn: sqlite3.Connection, shard: str, record: dict) -> None:
    """Record a shard's index (inside the caller's transaction)."""
    conn.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
        (INDEX_PREFIX + shard, json.dumps(record, sort_keys=True)),
    )


def drop_index_record(conn: sqlite3.Connection, shard: str) -> None:
    """Forget a shard's index (inside the caller's transaction)."""
    conn.execute("DELETE FROM meta WHERE key = ?", (INDEX_PREFIX + shard,))
