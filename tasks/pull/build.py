"""The build side of `doit pull`: each shard read as soon as its tar is there, by up to
`workers` reader processes at once, then committed, in order, by one writer process.

It has the shape of the build's read-ahead pool (tasks/extract/pool.py) and uses its very
parts (`read_request`, `read_to_file`, `extract_shard`), so the folder is the same as
plain `doit`'s. The writer is the manifest's one writer while the pipeline runs (the
Hub rows of fetched shards included). A shard that arrives while the writer is idle is
read by the writer itself (as plain `doit` with `workers = 1` reads it); one that arrives
while the writer is busy is read meanwhile by one of `workers - 1` readers. Both kinds of
process are spawned (the pull's fetcher thread must not be forked) and end with the pull,
even on kill -9.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import queue
import shutil
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from tasks import download as dl
from tasks.progress import human_bytes
from tasks.settings import Settings, shard_name

PR_SET_PDEATHSIG = 1  # prctl(2)
WAKE = (None, None)  # put on the queue when a reader or the writer finishes something
IDLE_WAIT_S = 1.0


@dataclass
class _Shard:
    """One shard handed over by the fetcher, on its way through read and commit."""

    item: object  # pipeline.Item
    error: str | None  # why it could not be fetched
    builds: bool  # inside the `shards` glob: plain `doit` would build it
    t0: float
    request: object = None  # its ReadRequest, when a reader reads it
    read: Future | None = None
    read_checked: bool = False  # whether a read ahead was considered
    commit: Future | None = None
    committed: bool = False


def _finished(future: Future | None) -> bool:
    return future is None or future.done()


class Builder:
    """Reads shards in reader processes as they arrive; commits them in the writer."""

    def __init__(self, settings: Settings, ctx, summary, events: queue.Queue) -> None:
        from tasks.extract.pool import workers_of

        self.settings, self.ctx, self.summary, self.events = settings, ctx, summary, events
        self.workers = workers_of(settings)
        spawn = {
            "mp_context": get_context("spawn"),
            "initializer": _end_with_parent,
            "initargs": (os.getpid(),),
        }
        self.ahead = None
        if self.workers > 1:
            self.ahead = ProcessPoolExecutor(max_workers=self.workers - 1, **spawn)
        self.writer = ProcessPoolExecutor(max_workers=1, **spawn)
        self.shards: list[_Shard] = []
        self.captions: list[Future] = []
        self.writer_jobs: list[Future] = []  # its jobs not known to be done
        self._db = None

    def warm_up(self) -> None:
        """Start the processes and import the extractor while the first shard downloads."""
        self.writer.submit(_warm_up)
        for _ in range(self.workers - 1):
            self.ahead.submit(_warm_up)

    def run(self, count: int, release: Callable[[object], None]) -> None:
        """Build the `count` shards the fetcher puts on the queue, in their order; `release`
        each one once committed (its tar may go)."""
        committing = done = 0
        while done < count:
            self._wait(count)
            more = True
            while more:  # again when a shard turned out to need no read
                while committing < len(self.shards):
                    s = self.shards[committing]
                    if not _finished(s.read) or not (s.read_checked or self._writer_idle()):
                        break  # read ahead still running, or the writer busy: read it ahead
                    self._submit_commit(s)
                    committing += 1
                more = False
                for s in self.shards[committing:]:
                    if self.ahead is None or self._busy_readers() >= self.workers - 1:
                        break
                    if not s.read_checked:
                        self._start_read(s)
                        more = more or s.read is None
            while done < committing and _finished(self.shards[done].commit):
                self._after_commit(self.shards[done])
                release(self.shards[done].item)
                done += 1
        for future in self.captions:
            if (failed := future.result()) is not None:
                raise _pull_error(failed)

    def close(self, wait: bool) -> None:
        """Stop the processes (not waited for after a failure: they end with the pull)."""
        for pool in (self.ahead, self.writer):
            if pool is not None:
                pool.shutdown(wait=wait, cancel_futures=not wait)
        if self._db is not None:
            self._db.close()

    # --- steps ----------------------------------------------------------------------

    def _wait(self, count: int) -> None:
        """Take what the fetcher handed over; block until something happens."""
        try:
            events = [self.events.get(timeout=IDLE_WAIT_S)]
        except queue.Empty:
            return
        with contextlib.suppress(queue.Empty):
            while True:
                events.append(self.events.get_nowait())
        for item, error in events:
            if isinstance(error, BaseException):
                raise error
            if item is not None:
                builds = error is None and item.tar in self.settings.shard_paths()
                self.shards.append(_Shard(item, error, builds, time.monotonic()))

    def _busy_readers(self) -> int:
        return sum(1 for s in self.shards if not _finished(s.read))

    def _writer_idle(self) -> bool:
        return all(f.done() for f in self.writer_jobs)

    def _start_read(self, s: _Shard) -> None:
        """Read a shard ahead in a reader, unless there is nothing to read."""
        from tasks.extract.pool import needs_read, read_to_file
        from tasks.extract.shard import read_request

        s.read_checked, s.t0 = True, time.monotonic()
        if not s.builds or not needs_read(self._manifest(), self.settings, s.item.tar):
            return  # nothing to read ahead: the writer sees at once that it is up to date
        s.request = read_request(self._manifest(), self.settings, s.item.tar)
        s.read = self.ahead.submit(read_to_file, s.request)
        s.read.add_done_callback(self._wake)

    def _submit_commit(self, s: _Shard) -> None:
        item = s.item
        if item.mismatch:
            job = (_drop_in_writer, self.settings, str(item.tar), item.remote.path)
        elif s.error is not None:
            return  # nothing of it to build or record
        else:
            result: object = None
            if s.read is not None:
                try:
                    result = s.read.result()
                except Exception as exc:  # noqa: BLE001 - the writer's extract_shard sorts it
                    result = exc
            row = dl._row(self.ctx, item.remote, item.sha256) if item.fetch else None
            job = (
                _commit_in_writer,
                self.settings,
                str(item.tar),
                row,
                s.builds,
                s.request,
                result,
            )
        if not s.read_checked:
            s.t0 = time.monotonic()  # read by the writer itself
        s.commit = self.writer.submit(*job)
        s.commit.add_done_callback(self._wake)
        self.writer_jobs = [f for f in self.writer_jobs if not f.done()] + [s.commit]

    def _after_commit(self, s: _Shard) -> None:
        if s.commit is None:
            return
        failed, built, said = s.commit.result()
        if failed is not None:
            raise _pull_error(failed)
        if said:
            dl._progress(said)
        if not built:
            return
        self.summary.built += 1
        dt = max(time.monotonic() - s.t0, 1e-6)
        size = s.item.remote.size
        dl._progress(
            f"  {s.item.remote.path} extracted: {human_bytes(size)} in {dt:.1f} s "
            f"({human_bytes(size / dt)}/s)"
            if s.item.fetch
            else f"  {s.item.remote.path} checked: {human_bytes(size)} in {dt:.1f} s"
        )
        captions = self.writer.submit(_captions_in_writer, self.settings, str(s.item.tar))
        captions.add_done_callback(self._wake)
        self.captions.append(captions)
        self.writer_jobs.append(captions)

    def _wake(self, _future: Future) -> None:
        self.events.put(WAKE)

    def _manifest(self):
        """A connection for the read requests (reads only: the writer writes)."""
        if self._db is None:
            from state.manifest import open_manifest

            self._db = open_manifest(self.settings.root)
        return self._db


def _pull_error(message: str) -> Exception:
    from tasks.pull.pipeline import PullError

    return PullError(message)


class _Prepared:
    """The reader `extract_shard` meets in the writer: the shard was read by a reader."""

    def __init__(self, request, result) -> None:
        self.prepared, self.result = request, result

    def request(self, db, settings: Settings, tar_path: Path):
        return self.prepared

    def read(self, request):
        if isinstance(self.result, BaseException):
            raise self.result
        with open(self.result, "rb") as f:
            read = pickle.load(f)
        if isinstance(read, BaseException):
            raise read
        return read


# --- what the processes run ---------------------------------------------------------------


def _end_with_parent(parent: int) -> None:
    """A worker ends when the pull is killed (kill -9): never writes behind the next run;
    Ctrl-C is the pull's to handle (one line, no traceback from the worker)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the pull died before the line above ran
        os._exit(1)


def _warm_up() -> None:
    """Import the extractor while the first shard downloads."""
    import tasks.build.actions  # noqa: F401
    import tasks.extract.pool  # noqa: F401
    import tasks.extract.shard  # noqa: F401


def _commit_in_writer(
    settings: Settings, tar: str, hub_row: dict | None, build: bool, request, result
) -> tuple[str | None, bool, str]:
    """Record a fetched shard's Hub row, then extract it as plain `doit` does (printing the
    same lines) from what a reader read; (failure of the root as one line, built, '')."""
    from state.manifest import open_manifest, write_transaction
    from tasks.build.actions import run_extract

    if hub_row is not None:
        db = open_manifest(settings.root)
        try:
            with write_transaction(db) as conn:
                dl._upsert_hub_file(conn, hub_row)
        finally:
            db.close()
    if not build:
        return None, False, ""
    try:
        failed = run_extract(settings, tar, None if request is None else _Prepared(request, result))
    finally:
        if request is not None:  # read, but found up to date after all: nothing staged stays
            shutil.rmtree(request.tmp_dir, ignore_errors=True)
    return (None if failed is None else str(getattr(failed, "message", failed))), True, ""


def _drop_in_writer(settings: Settings, tar: str, repo_path: str) -> tuple[None, bool, str]:
    """A shard whose bytes did not match the listing: its earlier build leaves."""
    from tasks.pull.forget import drop_shard

    return None, False, drop_shard(settings, Path(tar), repo_path).describe()


def _captions_in_writer(settings: Settings, tar: str) -> str | None:
    """Write one shard's captions as plain `doit` does, while the next shard downloads."""
    from tasks.build.actions import run_captions

    failed = run_captions(settings, shard_name(Path(tar), settings))
    return None if failed is None else str(getattr(failed, "message", failed))
