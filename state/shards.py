"""The manifest's `shards` table: one row per tar shard, `status` done or failed."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Sequence

from state.manifest import SHARD_COLUMNS, query

DONE = "done"
FAILED = "failed"
# columns a rebuild can be forced through: null one and its step sees its input as changed
_INVALIDATES = ("json_digest", "captions_key")


def _columns(columns: Sequence[str]) -> str:
    unknown = [c for c in columns if c not in SHARD_COLUMNS]
    if unknown:
        raise ValueError(f"not a shards column: {unknown}")
    return ", ".join(columns)


# --------------------------------------------------------------------------- reads


def get(db: sqlite3.Connection, name: str) -> dict | None:
    """The row of `name`, or None."""
    found = list(query(db, "SELECT * FROM shards WHERE name = ?", [name]))
    return found[0] if found else None


def rows(db: sqlite3.Connection, *columns: str) -> sqlite3.Cursor:
    """Tuples of `columns` of every shard, in name order."""
    return db.execute(f"SELECT {_columns(columns)} FROM shards ORDER BY name")


def status(db: sqlite3.Connection, name: str) -> str | None:
    """done, failed, or None (no row, or no status yet)."""
    row = db.execute("SELECT status FROM shards WHERE name = ?", [name]).fetchone()
    return row[0] if row else None


def with_partition(db: sqlite3.Connection) -> list[tuple[str, str]]:
    """(shard, partition hash) of every shard that has a partition, in name order."""
    return db.execute(
        "SELECT name, part_xxh3 FROM shards WHERE part_xxh3 IS NOT NULL ORDER BY name"
    ).fetchall()


def paths(db: sqlite3.Connection) -> dict[str, str]:
    """name -> tar path."""
    return dict(db.execute("SELECT name, path FROM shards").fetchall())


def done_of_size(db: sqlite3.Connection, size: int, other_than: str) -> list[dict]:
    """name, path, xxh3 of done shards of a tar size (candidates for a renamed tar)."""
    return list(
        query(
            db,
            "SELECT name, path, xxh3 FROM shards WHERE status = ? AND size = ? AND name != ?",
            [DONE, size, other_than],
        )
    )


def json_digests(db: sqlite3.Connection) -> list[tuple[str, str | None]]:
    """(name, json_digest) of every done shard."""
    return db.execute("SELECT name, json_digest FROM shards WHERE status = ?", [DONE]).fetchall()


def caption_inputs(db: sqlite3.Connection, name: str) -> tuple[str | None, str | None] | None:
    """(part_xxh3, captions_key) of a shard, or None."""
    return db.execute(
        "SELECT part_xxh3, captions_key FROM shards WHERE name = ?", [name]
    ).fetchone()


def total_samples(db: sqlite3.Connection) -> int:
    """The samples of every shard."""
    return db.execute("SELECT coalesce(sum(samples), 0) FROM shards").fetchone()[0]


# --------------------------------------------------------------------------- writes


def moved(conn: sqlite3.Connection, name: str, path: str, mtime_ns: int) -> None:
    """The shard's tar is at `path` with this mtime (same bytes)."""
    conn.execute("UPDATE shards SET mtime_ns = ?, path = ? WHERE name = ?", (mtime_ns, path, name))


def rename(conn: sqlite3.Connection, old: str, new: str, path: str, mtime_ns: int) -> None:
    """Shard `old` is now `new` (tar at `path`), its rows and quirks with it; its captions
    are written again (their key names the shard's partition)."""
    conn.execute("DELETE FROM shards WHERE name = ?", (new,))
    conn.execute(
        "UPDATE shards SET name = ?, path = ?, mtime_ns = ?, captions_key = NULL WHERE name = ?",
        (new, path, mtime_ns, old),
    )
    conn.execute("UPDATE files SET shard = ? WHERE shard = ?", (new, old))
    conn.execute("UPDATE quirks SET shard = ? WHERE shard = ?", (new, old))


def mark_done(
    conn: sqlite3.Connection,
    name: str,
    path: str,
    st: os.stat_result,
    *,
    xxh3: str,
    members: int,
    samples: int,
    aside: int,
    part_xxh3: str,
    json_digest: str | None,
) -> None:
    """The shard was read to its end and committed: its row, replaced whole."""
    conn.execute("DELETE FROM shards WHERE name = ?", (name,))
    conn.execute(
        "INSERT INTO shards (name, path, size, mtime_ns, xxh3, status, members, samples, "
        "aside, error, part_xxh3, json_digest, captions_key) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, NULL)",
        (
            name,
            path,
            st.st_size,
            st.st_mtime_ns,
            xxh3,
            DONE,
            members,
            samples,
            aside,
            part_xxh3,
            json_digest,
        ),
    )


def mark_failed(
    conn: sqlite3.Connection,
    name: str,
    path: str,
    st: os.stat_result,
    *,
    error: str,
    part_xxh3: str | None,
) -> None:
    """The shard failed; what an earlier good read recorded stays (`part_xxh3` None keeps
    the recorded partition)."""
    if not _exists(conn, name):
        conn.execute(
            "INSERT INTO shards (name, path, size, mtime_ns, samples) VALUES (?, ?, ?, ?, 0)",
            (name, path, st.st_size, st.st_mtime_ns),
        )
    conn.execute(
        "UPDATE shards SET status = ?, error = ?, path = ?, "
        "part_xxh3 = coalesce(?, part_xxh3) WHERE name = ?",
        (FAILED, error, path, part_xxh3, name),
    )


def _exists(db: sqlite3.Connection, name: str) -> bool:
    return db.execute("SELECT 1 FROM shards WHERE name = ?", (name,)).fetchone() is not None


def set_partition(conn: sqlite3.Connection, name: str, part_xxh3: str, json_digest: str) -> None:
    """Record a rebuilt partition and the JSON digest it was made from."""
    conn.execute(
        "UPDATE shards SET part_xxh3 = ?, json_digest = ? WHERE name = ?",
        (part_xxh3, json_digest, name),
    )


def set_captions_key(conn: sqlite3.Connection, name: str, key: str) -> None:
    """The shard's caption files are the ones `key` describes."""
    conn.execute("UPDATE shards SET captions_key = ? WHERE name = ?", (key, name))


def invalidate(
    conn: sqlite3.Connection,
    names: Iterable[str],
    *,
    partition: bool = False,
    captions: bool = False,
) -> None:
    """Force a rebuild of the shards' partition (`scan`) or caption files (`captions`):
    the recorded input they were made from is forgotten."""
    names = list(names)
    for column, wanted in zip(_INVALIDATES, (partition, captions), strict=True):
        if wanted:
            conn.executemany(
                f"UPDATE shards SET {column} = NULL WHERE name = ?", [(n,) for n in names]
            )


def forget(conn: sqlite3.Connection, name: str) -> None:
    """Drop the shard's row: nothing of it counts as built (its files are dropped apart)."""
    conn.execute("DELETE FROM shards WHERE name = ?", (name,))
