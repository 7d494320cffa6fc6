"""JSON files in `data/` edited by hand whose edit the scan picked up.

Once picked up, a JSON's `files` row holds the user's bytes; `meta` key
`edited_json:<path>` keeps the hash of what the tar held, so that a later extraction of
the shard can still tell the user's version from the tar's.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

PREFIX = "edited_json:"


def remember_original(conn: sqlite3.Connection, path: str, xxh3: str) -> None:
    """Record the tar's hash of an edited JSON, unless an earlier edit recorded it."""
    conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (PREFIX + path, xxh3))


def original_of(db: sqlite3.Connection, path: str) -> str | None:
    """The tar's hash of a JSON whose edit was picked up, or None."""
    row = db.execute("SELECT value FROM meta WHERE key = ?", [PREFIX + path]).fetchone()
    return row[0] if row else None


def forget(conn: sqlite3.Connection, paths: Iterable[str]) -> None:
    """The JSON at these paths is the tar's again (or gone)."""
    conn.executemany("DELETE FROM meta WHERE key = ?", ((PREFIX + p,) for p in paths))


def originals(db: sqlite3.Connection) -> dict[str, str]:
    """path -> the tar's hash, of every JSON whose edit was picked up (few: hand edits)."""
    end = PREFIX[:-1] + chr(ord(PREFIX[-1]) + 1)  # the keys that start with PREFIX sort before
    rows = db.execute("SELECT key, value FROM meta WHERE key >= ? AND key < ?", [PREFIX, end])
    return {key[len(PREFIX) :]: value for key, value in rows}
