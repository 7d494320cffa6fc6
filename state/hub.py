"""The manifest's `hub_files` table: what `doit download` fetched from the Hub."""

from __future__ import annotations

import sqlite3

from state import meta
from state.manifest import query


def recorded(db: sqlite3.Connection) -> dict[str, dict]:
    """Hub path -> its row (size, sha256, commit, local_path)."""
    return {row["path"]: row for row in query(db, "SELECT * FROM hub_files")}


def upsert(conn: sqlite3.Connection, row: dict) -> None:
    """Record one fetched (or verified) file."""
    conn.execute(
        'INSERT OR REPLACE INTO hub_files (path, size, sha256, "commit", local_path) '
        "VALUES (:path, :size, :sha256, :commit, :local_path)",
        row,
    )


def record_source(conn: sqlite3.Connection, commit: str, repo_id: str, revision: str) -> None:
    """The Hub commit (and the repo and revision asked for) the download is complete at."""
    meta.set(conn, meta.HUB_COMMIT, commit)
    meta.set(conn, meta.HUB_REPO_ID, repo_id)
    meta.set(conn, meta.HUB_REVISION, revision)


def forget(conn: sqlite3.Connection, path: str) -> None:
    """Drop the row of a Hub file that no longer counts as fetched."""
    conn.execute("DELETE FROM hub_files WHERE path = ?", (path,))
