"""The manifest's `quirks` table: data problems found in a shard."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from state.manifest import QUIRK_COLUMNS

_COLUMNS = tuple(QUIRK_COLUMNS)  # shard, kind, member, path, detail


def replace(conn: sqlite3.Connection, shard: str, quirks: Iterable[dict]) -> None:
    """The shard's quirks are now `quirks` (dicts keyed by the table's columns)."""
    conn.execute("DELETE FROM quirks WHERE shard = ?", (shard,))
    conn.executemany(
        f"INSERT INTO quirks ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
        [tuple(q[c] for c in _COLUMNS) for q in quirks],
    )


def rows(db: sqlite3.Connection) -> sqlite3.Cursor:
    """(shard, kind, member, path, detail) of every quirk, by shard in the order found."""
    return db.execute(f"SELECT {', '.join(_COLUMNS)} FROM quirks ORDER BY shard, rowid")


def noted_for_file(db: sqlite3.Connection, path: str, kind: str) -> bool:
    """Whether the build noted a quirk of `kind` on the member the file `path` came from."""
    row = db.execute(
        "SELECT 1 FROM quirks q JOIN files f ON f.shard = q.shard AND f.member = q.member"
        " WHERE f.path = ? AND q.kind = ? LIMIT 1",
        (path, kind),
    ).fetchone()
    return row is not None
