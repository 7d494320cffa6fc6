"""Shards read by worker processes ahead of the one writer of the manifest.

The build's process stays the only writer: it commits shards one at a time, in doit's
order, while up to `workers` processes read the next shards that need work (tar in,
staged members and a pickled `ShardRead` under `state/tmp/<shard>/` out). A worker needs
only the tar, the settings and the root's folders, so the result does not depend on
which process read a shard: a parallel build equals a serial one.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import multiprocessing
import os
import pickle
import shutil
import signal
import sys
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

from state import shards
from state.atomic import DiskFullError, raise_if_disk_full
from tasks.build.cli import parse_command_line, shard_of_task_name
from tasks.extract.shard import ReadRequest, ShardRead, read_request, read_shard
from tasks.settings import Settings, shard_name, shard_names

RESULT_FILE = "read.pickle"
PR_SET_PDEATHSIG = 1
_WRITER_PID = os.getpid()


def default_workers() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def workers_of(settings: Settings) -> int:
    """The `workers` setting, or the number of cores when it is not set."""
    return settings.workers or default_workers()


def reader_for(settings: Settings):
    """The reader `extract_shard` should use: a pool when several workers are allowed and
    this is the build's own process and thread (not one of `doit -n`'s), else None (read
    here)."""
    global _READER
    if workers_of(settings) < 2 or multiprocessing.parent_process() is not None:
        return None
    if threading.current_thread() is not threading.main_thread():  # `doit -P thread`
        return None
    if _READER is None or _READER.settings != settings:
        _READER = ReadAhead(settings, workers_of(settings))
        atexit.register(_READER.close)
    return _READER


_READER: ReadAhead | None = None


class ReadAhead:
    """Hands each shard's read to a worker, a few shards ahead of the writer."""

    def __init__(self, settings: Settings, workers: int) -> None:
        self.settings, self.workers = settings, workers
        self.pool: ProcessPoolExecutor | None = None
        self.ahead: dict[str, tuple[ReadRequest, Future]] = {}
        self.queue: list[Path] | None = None  # shards still to read, in doit's order

    def request(self, db, settings: Settings, tar_path: Path) -> ReadRequest:
        """Start reading `tar_path` (if not started) and the shards after it."""
        if self.queue is None:
            named = _named_shards()
            tars = shard_names(settings)[0].items()
            self.queue = [
                p for n, p in tars if (named is None or n in named) and needs_read(db, settings, p)
            ]
        alone = self.pool is None and len(self.queue) <= 1  # nothing to overlap with
        self.queue = [p for p in self.queue if str(p) != str(tar_path)]
        if alone:
            return read_request(db, settings, tar_path)  # `read` reads it here
        if str(tar_path) not in self.ahead:
            self._submit(read_request(db, settings, tar_path))
        while self.queue and self._running() < self.workers:
            self._submit(read_request(db, settings, self.queue.pop(0)))
        return self.ahead[str(tar_path)][0]

    def read(self, request: ReadRequest) -> ShardRead:
        """The worker's result for `request` (its exception is raised here)."""
        if str(request.tar_path) not in self.ahead:
            return read_shard(request)
        _, future = self.ahead.pop(str(request.tar_path))
        with open(future.result(), "rb") as f:
            result = pickle.load(f)
        if isinstance(result, BaseException):
            raise result
        return result

    def close(self) -> None:
        """Stop the workers; drop what was read for shards this run did not commit."""
        if self.pool is not None:
            processes = list((self.pool._processes or {}).values())
            self.pool.shutdown(wait=False, cancel_futures=True)
            for process in processes:  # a read no shard will commit is not waited for
                process.terminate()
                process.join()
            self.pool = None
        for request, _ in self.ahead.values():
            shutil.rmtree(request.tmp_dir, ignore_errors=True)
        self.ahead.clear()

    def _submit(self, request: ReadRequest) -> None:
        if self.pool is None:
            count = max(1, min(self.workers, len(self.queue or ()) + 1))
            print(f"extract: reading shards in {count} worker process(es)", flush=True)
            global _WRITER_PID
            _WRITER_PID = os.getpid()
            context = multiprocessing.get_context("fork")  # workers share what is imported
            self.pool = ProcessPoolExecutor(count, mp_context=context, initializer=_worker_init)
        self.ahead[str(request.tar_path)] = (request, self.pool.submit(read_to_file, request))

    def _running(self) -> int:
        return sum(1 for _, f in self.ahead.values() if not f.done())


def _named_shards() -> set[str] | None:
    """The shards of a run that names only `extract:<shard>` tasks, else None (any shard may
    be extracted). A guess from the command line: a shard outside it is still read when
    its task asks for it, only not ahead of time."""
    words = parse_command_line(sys.argv[1:]).tasks
    named = {shard_of_task_name(w.split(":", 1)[1]) for w in words if w.startswith("extract:")}
    return named if words and len(named) == len(words) else None


def needs_read(db, settings: Settings, tar_path: Path) -> bool:
    """Whether the manifest has not recorded this very tar (same stat) as done."""
    row = shards.get(db, shard_name(tar_path, settings))
    if row is None or row["status"] != "done":
        return True
    st = os.stat(tar_path)
    return (row["size"], row["mtime_ns"]) != (st.st_size, st.st_mtime_ns)


def read_to_file(request: ReadRequest) -> str:
    """A worker's job: read one shard; pickle its `ShardRead` (or the exception that
    stopped it) beside its staged members; return that file's path."""
    try:
        result: object = read_shard(request)
    except Exception as exc:
        result = exc
    path = request.tmp_dir / RESULT_FILE
    try:
        data = pickle.dumps(result, pickle.HIGHEST_PROTOCOL)
    except Exception:  # an exception that cannot be pickled: its type and message
        data = pickle.dumps(RuntimeError(f"{type(result).__name__}: {result}"))
    try:
        path.write_bytes(data)
    except OSError as exc:  # a full disk: the shard's own trouble is the same one
        if isinstance(result, DiskFullError):
            raise result from None
        raise_if_disk_full(exc, request.tmp_dir)
        raise
    return str(path)


def _worker_init() -> None:
    """Ctrl-C is the writer's to handle (it stops the workers); a worker whose writer was
    killed dies with it, so that it never writes into a later run's staging folder."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):  # Linux only
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != _WRITER_PID:  # the writer died before prctl took effect
        os._exit(1)
