"""The manifest's `files` table: one row per file the build wrote or tracks.

A row is a `FileRow` (every column, made by `file_row`) where a caller reads or writes
whole rows; the audit's hot loops get plain tuples in the column order named by
`AUDIT_COLUMNS`/`STAT_COLUMNS`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from operator import itemgetter
from typing import TypedDict, cast

from state.batching import batched
from state.kinds import FileKind
from state.manifest import FILE_FIELDS, query

AUDIT_COLUMNS = ("path", "shard", "kind", "sample", "size", "mtime_ns", "xxh3")
STAT_COLUMNS = ("path", "size", "mtime_ns", "kind", "sample")
LOOKUP_CHUNK = 500  # paths per `IN (...)` lookup
_AUDIT_QUERY = f"SELECT {', '.join(AUDIT_COLUMNS)} FROM files"
_STAT_QUERY = f"SELECT {', '.join(STAT_COLUMNS)} FROM files"
_FILE_COLUMN_LIST = ", ".join(f'"{c}"' for c in FILE_FIELDS)
_UPSERT = (
    f"INSERT INTO files ({_FILE_COLUMN_LIST}) VALUES ({', '.join('?' for _ in FILE_FIELDS)}) "
    "ON CONFLICT (path) DO UPDATE SET "
    + ", ".join(f'"{c}" = excluded."{c}"' for c in FILE_FIELDS if c != "path")
)


_VALUES = itemgetter(*FILE_FIELDS)


class FileRow(TypedDict):
    """One `files` row: every column of `FILE_COLUMNS` (state/manifest.py), None where the
    kind of file has no such value."""

    path: str  # relative to root
    shard: str | None  # the shard that wrote or owns the file (None: the table)
    kind: str  # a FileKind
    sample: str | None  # the sample's key, for a sample's files
    member: str | None  # the tar member the file came from
    offset: int | None  # where the member's data starts in the tar
    size: int | None
    mtime_ns: int | None  # None: not written yet (a pending claim)
    xxh3: str | None
    width: int | None  # an image's header size
    height: int | None


def file_row(
    path: str,
    kind: FileKind,
    *,
    shard: str | None = None,
    sample: str | None = None,
    member: str | None = None,
    offset: int | None = None,
    size: int | None = None,
    mtime_ns: int | None = None,
    xxh3: str | None = None,
    width: int | None = None,
    height: int | None = None,
) -> FileRow:
    """A `files` row; the columns not given are None."""
    return {
        "path": path,
        "shard": shard,
        "kind": kind,
        "sample": sample,
        "member": member,
        "offset": offset,
        "size": size,
        "mtime_ns": mtime_ns,
        "xxh3": xxh3,
        "width": width,
        "height": height,
    }


def _marks(n: int) -> str:
    return ",".join("?" * n)


# --------------------------------------------------------------------------- reads


def _rows(db: sqlite3.Connection, where: str, params: Sequence) -> list[FileRow]:
    return cast(list[FileRow], list(query(db, f"SELECT * FROM files WHERE {where}", params)))


def get(db: sqlite3.Connection, path: str) -> FileRow | None:
    """The row of `path`, or None."""
    rows = _rows(db, "path = ?", [path])
    return rows[0] if rows else None


def of_shard(db: sqlite3.Connection, shard: str, kind: FileKind | None = None) -> list[FileRow]:
    """The rows of one shard, optionally of one kind."""
    if kind is None:
        return _rows(db, "shard = ?", [shard])
    return _rows(db, "shard = ? AND kind = ?", [shard, kind])


def of_kind(db: sqlite3.Connection, kind: FileKind | str) -> list[FileRow]:
    """Every row of one kind."""
    return _rows(db, "kind = ?", [kind])


def stat_of(db: sqlite3.Connection, path: str) -> tuple[int, int, str] | None:
    """(size, mtime_ns, xxh3) recorded for `path`, or None."""
    return db.execute("SELECT size, mtime_ns, xxh3 FROM files WHERE path = ?", [path]).fetchone()


def shard_and_hash(db: sqlite3.Connection, path: str) -> tuple[str, str]:
    """(shard, xxh3) of a row known to exist."""
    return db.execute("SELECT shard, xxh3 FROM files WHERE path = ?", [path]).fetchone()


def member_of(db: sqlite3.Connection, path: str) -> tuple[str, int] | None:
    """(tar member, data offset) a file came from, or None."""
    return db.execute("SELECT member, offset FROM files WHERE path = ?", (path,)).fetchone()


def json_stats(db: sqlite3.Connection) -> sqlite3.Cursor:
    """(path, size, mtime_ns) of every JSON row: all a stat pass needs."""
    return db.execute("SELECT path, size, mtime_ns FROM files WHERE kind = ?", [FileKind.JSON])


def hashes_of(db: sqlite3.Connection, shard: str, kind: FileKind) -> sqlite3.Cursor:
    """(path, xxh3) of one shard's rows of one kind."""
    return db.execute("SELECT path, xxh3 FROM files WHERE shard = ? AND kind = ?", (shard, kind))


def sample_rows(db: sqlite3.Connection, shard: str) -> Iterator[dict]:
    """path, kind, sample, width, height of one shard's images and JSON."""
    return query(
        db,
        "SELECT path, kind, sample, width, height FROM files WHERE shard = ? AND kind IN (?, ?)",
        [shard, FileKind.IMAGE, FileKind.JSON],
    )


def json_of_sample(db: sqlite3.Connection, shard: str, sample: str) -> FileRow | None:
    """The JSON row of one sample, or None."""
    rows = _rows(db, "shard = ? AND sample = ? AND kind = ?", [shard, sample, FileKind.JSON])
    return rows[0] if rows else None


def owners(db: sqlite3.Connection, paths: Sequence[str]) -> dict[str, str]:
    """path -> owning shard, for the member paths (images, JSON, pending) among `paths`."""
    found: dict[str, str] = {}
    for chunk in batched(paths, LOOKUP_CHUNK):
        found.update(
            db.execute(
                # `+kind`: look rows up by path; an index on kind here scans every file
                f"SELECT path, shard FROM files WHERE path IN ({_marks(len(chunk))}) "
                "AND +kind IN (?, ?, ?)",
                [*chunk, FileKind.IMAGE, FileKind.JSON, FileKind.PENDING],
            ).fetchall()
        )
    return found


def known(db: sqlite3.Connection, paths: Sequence[str]) -> set[str]:
    """Those of `paths` (at most a few hundred) that have a row."""
    rows = db.execute(f"SELECT path FROM files WHERE path IN ({_marks(len(paths))})", paths)
    return {p for (p,) in rows}


def count(db: sqlite3.Connection, kind: FileKind) -> int:
    """How many rows of one kind."""
    return db.execute("SELECT count(*) FROM files WHERE kind = ?", [kind]).fetchone()[0]


def total_size(db: sqlite3.Connection) -> int:
    """The bytes of every file the manifest records."""
    return db.execute("SELECT coalesce(sum(size), 0) FROM files").fetchone()[0]


def rowid_span(db: sqlite3.Connection) -> tuple[int, int | None, int | None]:
    """(row count, first rowid, last rowid)."""
    # three queries: SQLite answers a lone min() or max() from the b-tree's edge, but
    # scans every row for both in one
    (rows,) = db.execute("SELECT count(*) FROM files").fetchone()
    (first,) = db.execute("SELECT min(rowid) FROM files").fetchone()
    (last,) = db.execute("SELECT max(rowid) FROM files").fetchone()
    return rows, first, last


def stat_rows(db: sqlite3.Connection, rowids: tuple[int, int] | None = None) -> sqlite3.Cursor:
    """STAT_COLUMNS tuples of every row, or of one rowid range (inclusive)."""
    if rowids is None:
        return db.execute(_STAT_QUERY)
    return db.execute(_STAT_QUERY + " WHERE rowid BETWEEN ? AND ?", rowids)


def audit_rows(db: sqlite3.Connection, paths: Sequence[str] | None = None) -> sqlite3.Cursor:
    """AUDIT_COLUMNS tuples of every row, or of `paths` (at most a few hundred)."""
    if paths is None:
        return db.execute(_AUDIT_QUERY)
    return db.execute(f"{_AUDIT_QUERY} WHERE path IN ({_marks(len(paths))})", paths)


def aside_members(db: sqlite3.Connection) -> dict[tuple[str, str], str]:
    """(shard, member) -> where the member was kept aside."""
    rows = db.execute("SELECT shard, member, path FROM files WHERE kind = ?", [FileKind.ASIDE])
    return {(shard, member): path for shard, member, path in rows}


def duplicate_images(db: sqlite3.Connection) -> sqlite3.Cursor:
    """(xxh3, path, shard) of every image whose content another image has too."""
    return db.execute(
        "SELECT xxh3, path, shard FROM files WHERE kind = ?1 AND xxh3 IN "
        "(SELECT xxh3 FROM files WHERE kind = ?1 GROUP BY xxh3 HAVING count(*) > 1)",
        [FileKind.IMAGE],
    )


def images_in_data(db: sqlite3.Connection) -> sqlite3.Cursor:
    """(path, shard, sample) of every image under data/."""
    return db.execute(
        "SELECT path, shard, sample FROM files WHERE kind = ? AND substr(path, 1, 5) = 'data/'",
        [FileKind.IMAGE],
    )


def table_mismatches(
    conn: sqlite3.Connection, names: Iterable[Iterable[str]]
) -> tuple[list[tuple[str, str]], list[str]]:
    """(images in data/ that no name names, as (path, shard); names whose `data/<name>` has
    no row), both sorted; `names` comes in batches (a table's `filename` column).

    The names go into a temporary SQLite table (file-backed: memory stays flat), then two
    anti-joins on primary keys answer both questions.
    """
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS table_rows (name TEXT PRIMARY KEY) WITHOUT ROWID")
    conn.execute("DELETE FROM temp.table_rows")
    for batch in names:
        conn.executemany("INSERT OR IGNORE INTO temp.table_rows VALUES (?)", ((n,) for n in batch))
    no_row = conn.execute(
        "SELECT path, shard FROM files WHERE kind = ? AND substr(path, 1, 5) = 'data/' "
        "AND substr(path, 6) NOT IN (SELECT name FROM temp.table_rows) ORDER BY path",
        [FileKind.IMAGE],
    ).fetchall()
    no_file = [
        name
        for (name,) in conn.execute(
            "SELECT name FROM temp.table_rows WHERE 'data/' || name NOT IN "
            "(SELECT path FROM files) ORDER BY name"
        )
    ]
    conn.execute("DROP TABLE temp.table_rows")
    return no_row, no_file


# --------------------------------------------------------------------------- writes


def upsert(conn: sqlite3.Connection, rows: Iterable[FileRow]) -> None:
    """Insert rows, or overwrite the row of the same path, in one statement batch.

    An existing row is updated in place, not replaced (`INSERT OR REPLACE` deletes and
    re-inserts): its entry in the path index, whose random keys put almost every row in
    another page, stays where it is. Each file's row is written twice in a build (claimed,
    then committed), so this cuts the WAL and checkpoint writes of every shard.
    """
    conn.executemany(_UPSERT, map(_VALUES, rows))


def delete(conn: sqlite3.Connection, paths: Iterable[str]) -> None:
    """Delete the rows of `paths`."""
    conn.executemany("DELETE FROM files WHERE path = ?", ((p,) for p in paths))


def set_stat(conn: sqlite3.Connection, rows: Iterable[tuple[int, int, str]]) -> None:
    """Record a new (size, mtime_ns) for files whose content did not change, given as
    (size, mtime_ns, path)."""
    conn.executemany("UPDATE files SET size = ?, mtime_ns = ? WHERE path = ?", rows)


def set_content(conn: sqlite3.Connection, path: str, size: int, mtime_ns: int, xxh3: str) -> None:
    """Record a file rewritten in place."""
    conn.execute(
        "UPDATE files SET size = ?, mtime_ns = ?, xxh3 = ? WHERE path = ?",
        (size, mtime_ns, xxh3, path),
    )


def drop_pending(conn: sqlite3.Connection, shard: str, paths: Iterable[str]) -> None:
    """Withdraw the shard's provisional claims on `paths`."""
    conn.executemany(
        "DELETE FROM files WHERE path = ? AND shard = ? AND kind = ?",
        [(p, shard, FileKind.PENDING) for p in paths],
    )


def drop_of_shard(conn: sqlite3.Connection, shard: str, paths: Iterable[str]) -> None:
    """Delete the rows of `paths` that belong to `shard`."""
    conn.executemany("DELETE FROM files WHERE path = ? AND shard = ?", [(p, shard) for p in paths])


def move_partition_folder(conn: sqlite3.Connection, old_rel: str, new_rel: str) -> None:
    """Point the partition rows under folder `old_rel` to folder `new_rel`."""
    conn.execute(
        # substr, not LIKE: a shard name may hold `_` or `%`
        "UPDATE files SET path = ? || substr(path, ?) WHERE kind = ? AND substr(path, 1, ?) = ?",
        (new_rel, len(old_rel) + 1, FileKind.PARTITION, len(old_rel) + 1, old_rel + "/"),
    )
