"""doit's file checker on XXH3-128: stat first, the hash only when the stat changed.

doit calls `get_state` after each successful task, serially in its main process. For
tars and build outputs the manifest already knows the hash of a file with that exact
size and mtime_ns (the build computed it while writing), so no file is read twice.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from doit.dependency import FileChangedChecker

from state.hashing import hash_file
from state.manifest import manifest_path


class Xxh3Checker(FileChangedChecker):
    """State of a file: [size, mtime_ns, xxh3]."""

    root: Path | None = None  # set by `checker_for`

    def __init__(self) -> None:
        self._conn: sqlite3.Connection | None = None

    def check_modified(self, file_path, file_stat, state) -> bool:
        size, mtime_ns, digest = state
        if (file_stat.st_size, file_stat.st_mtime_ns) == (size, mtime_ns):
            return False
        if file_stat.st_size != size:
            return True
        return self.digest(file_path, file_stat) != digest

    def get_state(self, dep, current_state):
        st = os.stat(dep)
        if current_state and (st.st_size, st.st_mtime_ns) == tuple(current_state[:2]):
            return None
        return [st.st_size, st.st_mtime_ns, self.digest(dep, st)]

    def digest(self, path, st: os.stat_result) -> str:
        """The file's XXH3, from the manifest when it records this exact size and mtime."""
        known = self._known(path, st)
        return known if known else hash_file(path)

    def _known(self, path, st: os.stat_result) -> str | None:
        if self.root is None or not manifest_path(self.root).exists():
            return None
        try:
            if self._conn is None:
                self._conn = sqlite3.connect(manifest_path(self.root), timeout=60)
            rel = os.path.relpath(os.path.abspath(path), self.root)
            for sql in (
                "SELECT xxh3 FROM shards WHERE path = ? AND size = ? AND mtime_ns = ?",
                "SELECT xxh3 FROM files WHERE path = ? AND size = ? AND mtime_ns = ?",
            ):
                row = self._conn.execute(sql, (rel, st.st_size, st.st_mtime_ns)).fetchone()
                if row and row[0]:
                    return row[0]
        except sqlite3.Error:
            return None
        return None


def checker_for(root: Path) -> type[Xxh3Checker]:
    """An Xxh3Checker class bound to one dataset root (doit instantiates it itself)."""
    return type("Xxh3Checker", (Xxh3Checker,), {"root": Path(root)})
