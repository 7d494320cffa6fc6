"""The manifest's `hub_sources` table: where on the Hub each downloaded tar came from.

One row per tar fetched or verified from the Hub (`local_path` relative to root): the
repo, its path in the repo, the commit it was listed at, and the listing's size and
sha256. With the member offsets and sizes in `files`, that is enough to fetch any one
member again from the Hub once the tar itself is gone.
"""

from __future__ import annotations

import sqlite3

from state.manifest import query

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS hub_sources (local_path TEXT PRIMARY KEY, repo_id TEXT, "
    'repo_path TEXT, "commit" TEXT, sha256 TEXT, size INTEGER)'
)


def record(conn: sqlite3.Connection, row: dict) -> None:
    """Record (inside the caller's transaction) where the tar at `row['local_path']` came from.

    `row` holds local_path, repo_id, repo_path, commit, sha256 and size.
    """
    conn.execute(_SCHEMA)
    conn.execute(
        'INSERT OR REPLACE INTO hub_sources (local_path, repo_id, repo_path, "commit", sha256, '
        "size) VALUES (:local_path, :repo_id, :repo_path, :commit, :sha256, :size)",
        row,
    )


def of_tar(db: sqlite3.Connection, local_path: str) -> dict | None:
    """Where the tar at `local_path` came from, or None when it did not come from the Hub."""
    rows = _rows(db, "SELECT * FROM hub_sources WHERE local_path = ?", [local_path])
    return rows[0] if rows else None


def of_shard(db: sqlite3.Connection, shard: str) -> dict | None:
    """Where the tar of `shard` (as its `shards` row names it) came from, or None."""
    rows = _rows(
        db,
        "SELECT hub_sources.* FROM hub_sources JOIN shards "
        "ON shards.path = hub_sources.local_path WHERE shards.name = ?",
        [shard],
    )
    return rows[0] if rows else None


def every(db: sqlite3.Connection) -> dict[str, dict]:
    """local_path -> its row, for every tar recorded."""
    return {r["local_path"]: r for r in _rows(db, "SELECT * FROM hub_sources", [])}


def _rows(db: sqlite3.Connection, sql: str, params: list) -> list[dict]:
    """The rows of a query; none when no tar was ever fetched (the table does not exist)."""
    try:
        return list(query(db, sql, params))
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise


def forget(conn: sqlite3.Connection, local_path: str) -> None:
    """Drop where the tar at `local_path` came from (inside the caller's transaction)."""
    conn.execute(_SCHEMA)
    conn.execute("DELETE FROM hub_sources WHERE local_path = ?", (local_path,))
