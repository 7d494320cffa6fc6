"""Digests of file sets: one value that says whether any file of the set changed."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

import xxhash

from state import files
from state.kinds import FileKind


def digest_pairs(pairs: Iterable[tuple[str, str]]) -> str:
    """XXH3-128 of sorted (path, hash) pairs: one value that changes when any file does."""
    h = xxhash.xxh3_128()
    for path, digest in sorted(pairs):
        h.update(f"{path}\t{digest}\n".encode())
    return h.hexdigest()


def json_digest(conn: sqlite3.Connection, shard: str) -> str:
    """The digest of the shard's JSON files as the manifest records them."""
    return digest_pairs(files.hashes_of(conn, shard, FileKind.JSON))
