"""The fast audit's stat pass: every manifest row's file `stat`-ed against its record.

On a large build the rows are split into rowid ranges `stat`-ed in parallel by processes
forked from the audit (one range stays in the audit's own process): `stat` waits on the
kernel, so processes overlap it. Threads do not help with the inodes cached (the GIL
hand-offs cost what the overlap gains); figures are in bench/README.md.

Forked, not spawned: a child starts at once without importing anything, and shares the
parent's `hash()` key, so the fingerprints it returns (`PairTallies`) compare with the
parent's. A child only runs SQLite reads and `os.stat`, so the threads pyarrow keeps in the
parent (which Python 3.12+ warns about at fork) cannot hold anything it needs.
"""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from state import files
from state.manifest import open_readonly
from tasks.audit.pairing import PairTallies, counted_in_data
from tasks.progress import Progress

PROCESSES_FROM_ROWS = 50_000  # fewer rows: forking costs more than it saves
MAX_PROCESSES = 4


@dataclass
class StatPass:
    """What the stat pass found over some of the manifest's rows."""

    tallies: PairTallies
    closer: list[str] = field(default_factory=list)  # missing, or stat differs: look closer
    same: int = 0  # rows whose file has the recorded size and mtime
    present: int = 0  # of those, rows `strays` counts in data/

    def merge(self, other: StatPass) -> None:
        """Add another range's findings."""
        self.tallies.merge(other.tallies)
        self.closer.extend(other.closer)
        self.same += other.same
        self.present += other.present


def stat_rows(
    conn: sqlite3.Connection,
    root: str,
    textfile: bool,
    rowids: tuple[int, int] | None = None,
    done: Callable[[int], None] | None = None,
) -> StatPass:
    """Tally and `stat` the files of the manifest rows (of one rowid range, inclusive).

    `root` ends with a separator; `done` is told the rows handled so far, batch by batch.
    One short loop over a lean query; the full rows of the few files to look at closer are
    fetched later by the caller.
    """
    found = StatPass(PairTallies(textfile))
    cursor = files.stat_rows(conn, rowids)
    stat, tally, closer = os.stat, found.tallies.add, found.closer
    same = present = handled = 0
    while batch := cursor.fetchmany(8192):
        for path, size, mtime_ns, kind, sample in batch:
            tally(path, kind, sample)
            try:
                st = stat(root + path)
            except (FileNotFoundError, NotADirectoryError):
                closer.append(path)
                continue
            if st.st_size != size or st.st_mtime_ns != mtime_ns:
                closer.append(path)
                continue
            same += 1
            if counted_in_data(path):
                present += 1
        if done is not None:
            handled += len(batch)
            done(handled)
    found.same, found.present = same, present
    return found


def stat_all_rows(
    conn: sqlite3.Connection, root: str, textfile: bool, processes: int | None = None
) -> StatPass:
    """`stat_rows` over every row, split across processes when the manifest is large.

    `processes` forces a count (tests); by default it follows the row count and the CPUs
    this process may use.
    """
    rows, first, last = files.rowid_span(conn)
    if processes is None:
        processes = _processes_for(rows)
    progress = Progress("audit: stat", rows, unit="files")
    try:
        if processes <= 1 or rows == 0:
            return stat_rows(conn, root, textfile, done=progress.update)
        step = (last - first) // processes + 1
        ranges = [
            (first + i * step, min(last, first + (i + 1) * step - 1)) for i in range(processes)
        ]
        fork = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(len(ranges) - 1, mp_context=fork) as pool:
            parts = [pool.submit(_stat_range, root, textfile, r) for r in ranges[1:]]
            # equal rowid ranges: this process's share stands for the progress of all
            found = stat_rows(
                conn,
                root,
                textfile,
                ranges[0],
                lambda n: progress.update(min(rows, n * len(ranges))),
            )
            for part in parts:
                found.merge(part.result())
        return found
    finally:
        progress.close()


def _processes_for(rows: int) -> int:
    if rows < PROCESSES_FROM_ROWS or "fork" not in multiprocessing.get_all_start_methods():
        return 1
    if multiprocessing.current_process().daemon:  # e.g. a worker of `doit -n N -P process`
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(MAX_PROCESSES, cpus or 1))


def _stat_range(root: str, textfile: bool, rowids: tuple[int, int]) -> StatPass:
    """A child's share: its own read-only connection, one rowid range."""
    conn = open_readonly(Path(root))
    if conn is None:
        raise FileNotFoundError(f"the manifest under {root} is gone")
    try:
        return stat_rows(conn, root, textfile, rowids)
    finally:
        conn.close()
