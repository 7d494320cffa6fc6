"""The manifest's `meta` table: small key/value facts, and the one spelling of each key."""

from __future__ import annotations

import sqlite3

HUB_COMMIT = "hub_commit"
HUB_REPO_ID = "hub_repo_id"
HUB_REVISION = "hub_revision"
# which caption fields the partitions hold, for one set of partitions
CAPTION_FIELDS = "caption_fields"


def table_key(rel: str) -> str:
    """The key of what the table at `rel` was made from."""
    return f"table_key:{rel}"


def table_rows(rel: str) -> str:
    """The key of the row count of the table at `rel`."""
    return f"table_rows:{rel}"


def get(db: sqlite3.Connection, key: str) -> str | None:
    """A value, or None."""
    row = db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
    return row[0] if row else None


def set(conn: sqlite3.Connection, key: str, value: str) -> None:  # noqa: A001
    """Set a value (inside the caller's transaction)."""
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))


def delete(conn: sqlite3.Connection, key: str) -> None:
    """Forget a value (inside the caller's transaction)."""
    conn.execute("DELETE FROM meta WHERE key = ?", (key,))
