"""The manifest: `<root>/state/manifest.sqlite`, what the build wrote and from where.

Tables (paths are relative to `root`, so the folder can be moved):

- `shards`: one row per tar shard (`name`: see `shard_name` in tasks/settings.py).
- `files`: one row per file the build wrote or tracks (images, JSON, captions,
  files kept aside), with the tar member and data offset it came from.
- `quirks`: data problems found in a shard (refused members, invalid JSON, ...).
- `meta`: small key/value facts (table key, Hub commit, ...).
- `hub_files`: what `doit download` fetched, with the Hub's size and sha256.
- `hub_sources`: where each tar fetched from the Hub came from (repo, path, commit,
  sha256; state/sources.py), so that a member can be fetched again once the tar is gone.

Several processes may write at once (`doit -n 2 -P process`): the database runs in
WAL mode with a long busy timeout, and writers that must read-then-write take the
write lock first with `write_transaction`.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from state.meta import set as set_meta
from state.tar_layout import UNPLACED

MANIFEST_NAME = "manifest.sqlite"
WAL_SWITCH_WAIT_S = 60  # how long a first open retries a WAL switch another process holds up
# set when the manifest is created over a data/ that already holds files (state reset):
# extraction then keeps files that already hold the right bytes instead of rewriting them
ADOPT_KEY = "adopt_existing_files"

SHARD_COLUMNS = {
    "name": str,
    "path": str,
    "size": int,
    "mtime_ns": int,
    "xxh3": str,
    "status": str,  # done | failed
    "members": int,
    "samples": int,
    "aside": int,
    "error": str,
    "part_xxh3": str,
    "json_digest": str,
    "captions_key": str,
}

FILE_COLUMNS = {
    "path": str,
    "shard": str,
    "kind": str,  # a FileKind (state/kinds.py)
    "sample": str,
    "member": str,
    "offset": int,
    "size": int,
    "mtime_ns": int,
    "xxh3": str,
    "width": int,
    "height": int,
}

FILE_FIELDS = tuple(FILE_COLUMNS)

QUIRK_COLUMNS = {
    "shard": str,
    "kind": str,
    "member": str,
    "path": str,
    "detail": str,
}

SOURCE_COLUMNS = {  # also created by state/sources.py in a manifest made before it existed
    "local_path": str,
    "repo_id": str,
    "repo_path": str,
    "commit": str,
    "sha256": str,
    "size": int,
}

HUB_FILE_COLUMNS = {
    "path": str,
    "size": int,
    "sha256": str,
    "commit": str,
    "local_path": str,
}


def manifest_path(root: Path) -> Path:
    """Where the manifest of the dataset under `root` lives."""
    return Path(root) / "state" / MANIFEST_NAME


def connect_if_present(root: Path) -> sqlite3.Connection | None:
    """A plain sqlite3 connection to the manifest of `root`, or None when there is none.

    For readers: it creates nothing and imports no sqlite-utils (the uptodate checks and
    the summary of a no-op `doit` read the manifest only this way).
    """
    path = manifest_path(root)
    return sqlite3.connect(path, timeout=600) if path.is_file() else None


def open_readonly(root: Path) -> sqlite3.Connection | None:
    """The manifest opened read-only, or None when there is none.

    With no `-wal` file beside it (no writer running, nothing left uncheckpointed) it is
    opened `immutable`, so SQLite creates no `-wal`/`-shm` files; otherwise `mode=ro`
    (those files exist already) so that the WAL's committed content is read.
    """
    path = manifest_path(root)
    if not path.is_file():
        return None
    uri = path.resolve().as_uri()
    wal = path.with_name(path.name + "-wal")
    return sqlite3.connect(
        f"{uri}?mode=ro" if wal.exists() else f"{uri}?immutable=1", uri=True, timeout=60
    )


def open_manifest(root: Path) -> sqlite3.Connection:
    """Open (creating if needed) the manifest of `root`, ready for concurrent writers."""
    path = manifest_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=600)
    try:
        _switch_to_wal(conn)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=600000")
        # a build rewrites the same index pages in batch after batch: checkpoint them into
        # the database every ~40 MB of WAL, not every 4 MB, and keep 8 MiB of them cached
        conn.execute("PRAGMA wal_autocheckpoint=10000")
        conn.execute("PRAGMA cache_size=-8192")
    except sqlite3.DatabaseError as exc:
        conn.close()
        if _is_locked(exc):
            raise ManifestError(
                f"{path}: still locked by another process after {WAL_SWITCH_WAIT_S} s ({exc})"
            ) from exc
        if _no_space_left(path.parent):
            raise ManifestError(
                f"no space left on the device of {path.parent} (opening the manifest: {exc}); "
                "free some space and run `doit` again (nothing half-written counts as done)"
            ) from exc
        raise unreadable_manifest(path, exc) from exc
    _ensure_schema(conn, Path(root))
    _ensure_indexes(conn)
    return conn


# Partial indexes, added to a manifest made before them by its next writer (readers do
# without: their queries are the same, only slower).
INDEXES = (
    # samples left in their tar (`layout = "tars"`): asked for every shard on every run
    f"CREATE INDEX IF NOT EXISTS files_unplaced ON files (shard) WHERE mtime_ns = {UNPLACED}",
)


def _ensure_indexes(conn: sqlite3.Connection) -> None:
    """Create the partial indexes of `INDEXES` that the manifest lacks."""
    names = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    missing = [sql for sql in INDEXES if sql.split()[5] not in names]
    if missing:
        with write_transaction(conn):
            for sql in missing:
                conn.execute(sql)


def _switch_to_wal(conn: sqlite3.Connection) -> None:
    """`PRAGMA journal_mode=WAL`, retried while another connection holds the file.

    When two processes open a new manifest at once (`doit -n 2` on a fresh root), SQLite
    answers one switch with "database is locked" at once, without waiting on the busy
    timeout.
    """
    deadline = time.monotonic() + WAL_SWITCH_WAIT_S
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if not _is_locked(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _no_space_left(folder: Path) -> bool:
    """SQLite says only "disk I/O error" when it cannot create its -wal/-shm files."""
    try:
        return os.statvfs(folder).f_bavail == 0
    except OSError:
        return False


def _is_locked(exc: sqlite3.Error) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)


class ManifestError(RuntimeError):
    """The manifest cannot be opened or used."""


def unreadable_manifest(path: Path, exc: Exception) -> ManifestError:
    """The error for a manifest that is not a readable SQLite database, with the way back."""
    return ManifestError(
        f"{path}: not a readable SQLite database ({exc}); run `doit reset_state` to "
        "move it aside, then `doit` to rebuild it from the tars and data/"
    )


def _ensure_schema(conn: sqlite3.Connection, root: Path) -> None:
    """Create the tables (with sqlite-utils) unless they exist already."""
    (found,) = conn.execute(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('files', 'meta')"
    ).fetchone()
    if found == 2:
        return
    # imported here only: it is slow to import, and only a new manifest needs it
    import sqlite_utils

    db = sqlite_utils.Database(conn)
    data = root / "data"
    adopt = data.is_dir() and any(data.iterdir())
    with write_transaction(conn):
        db["shards"].create(SHARD_COLUMNS, pk="name", if_not_exists=True)
        db["files"].create(FILE_COLUMNS, pk="path", if_not_exists=True)
        db["files"].create_index(["shard", "kind"], if_not_exists=True)
        db["files"].create_index(["kind"], if_not_exists=True)
        db["quirks"].create(QUIRK_COLUMNS, if_not_exists=True)
        db["quirks"].create_index(["shard"], if_not_exists=True)
        db["meta"].create({"key": str, "value": str}, pk="key", if_not_exists=True)
        db["hub_files"].create(HUB_FILE_COLUMNS, pk="path", if_not_exists=True)
        db["hub_sources"].create(SOURCE_COLUMNS, pk="local_path", if_not_exists=True)
        if adopt:
            set_meta(conn, ADOPT_KEY, "1")


@contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A transaction that holds SQLite's write lock from its first statement.

    Use it where a decision read from the manifest must still hold when the
    write commits (claiming a path another shard may claim at the same time).
    """
    if conn.in_transaction:
        conn.commit()
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.rollback()
        raise
    else:
        conn.commit()


def query(db: sqlite3.Connection, sql: str, params: Sequence = ()) -> Iterator[dict]:
    """The rows of a query as dicts keyed by column name."""
    cursor = db.execute(sql, params)
    keys = [d[0] for d in cursor.description]
    for row in cursor:
        yield dict(zip(keys, row, strict=True))
