"""Counts that the table's message and the build summary must agree on."""

from __future__ import annotations

import sqlite3

# A shard is in the build when its partition holds rows the table is made from: a done
# shard, or a failed one whose earlier good read still stands.
_IN_BUILD = "part_xxh3 IS NOT NULL AND (status IS NOT 'failed' OR coalesce(samples, 0) > 0)"


def shards_in_build(conn: sqlite3.Connection) -> int:
    """How many shards the table is made from."""
    return conn.execute(f"SELECT count(*) FROM shards WHERE {_IN_BUILD}").fetchone()[0]
