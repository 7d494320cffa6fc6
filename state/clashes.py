"""Rows that stand in the way of a path in `data/`: a file where its folder goes, or
files under a folder where it goes (one name used as file and folder across shards)."""

from __future__ import annotations

import posixpath
import sqlite3

from state.manifest import query


def blocking_rows(db: sqlite3.Connection, path: str) -> list[dict]:
    """Rows of the files at `path`'s folders and of the files under `path` as a folder."""
    folders = []
    folder = posixpath.dirname(path)
    while "/" in folder:  # data/... : `data` itself is never a member
        folders.append(folder)
        folder = posixpath.dirname(folder)
    rows = []
    if folders:
        marks = ",".join("?" * len(folders))
        rows += query(db, f"SELECT * FROM files WHERE path IN ({marks})", folders)
    below = path + "/"
    end = path + chr(ord("/") + 1)  # the paths that start with `below` sort before
    rows += query(db, "SELECT * FROM files WHERE path >= ? AND path < ?", [below, end])
    return list(rows)


def sample_rows_in_data(db: sqlite3.Connection, shard: str, sample: str) -> list[dict]:
    """The rows of one sample of one shard under `data/` (image, JSON, caption)."""
    return list(
        query(
            db,
            "SELECT * FROM files WHERE shard = ? AND sample = ? AND path >= 'data/' "
            "AND path < 'data0'",
            [shard, sample],
        )
    )
