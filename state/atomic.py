"""Writing files so that a killed run never leaves a half-written file under its real name."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

TMP_SUFFIX = ".shardprep-tmp"


class DiskFullError(OSError):
    """No space left while writing; the message names the folder."""


def open_creating(path: str | os.PathLike, flags: int) -> int:
    """`os.open` for writing with O_CREAT, creating the file's folder if it is missing."""
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | flags, 0o644)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return os.open(path, os.O_WRONLY | os.O_CREAT | flags, 0o644)


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write every byte of `data` to `fd` (os.write may write less than asked)."""
    written = os.write(fd, data)  # nearly always all of it: no view for the common case
    if written < len(data):
        view = memoryview(data)[written:]
        while view:
            view = view[os.write(fd, view) :]


def write_new(path: str | os.PathLike, data: bytes | memoryview) -> os.stat_result:
    """Write `data` to `path` (which must be a temporary name); return its stat."""
    fd = open_creating(path, os.O_TRUNC)
    try:
        write_all(fd, data)
        return os.fstat(fd)
    except OSError as exc:
        os.close(fd)
        fd = -1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise_if_disk_full(exc, Path(path).parent)
        raise
    finally:
        if fd >= 0:
            os.close(fd)


def write_in_place(path: str | os.PathLike, data: bytes | memoryview) -> os.stat_result:
    """Write `path` directly (created or overwritten); return its stat.

    For files whose manifest row is committed only after the write completes: a
    killed write leaves a file that no row vouches for, and the next run rewrites it.
    An existing file is overwritten and then cut to length rather than opened with
    O_TRUNC: on ext4, truncate-then-rewrite forces writeback. It is cut only when it was
    longer: ext4 journals every `ftruncate`, even one that keeps the size.
    """
    return _write_and_close(open_creating(path, 0), path, data)


def write_if_absent(path: str | os.PathLike, data: bytes | memoryview) -> os.stat_result | None:
    """Create `path` holding `data` and return its stat; None, writing nothing, if a file
    of that name exists already. One `open` where a probe and then a write would take two
    (a name looked up in vain is costly in a large `data/`)."""
    try:
        fd = open_creating(path, os.O_EXCL)
    except FileExistsError:
        return None
    return _write_and_close(fd, path, data)


def _write_and_close(fd: int, path: str | os.PathLike, data: bytes | memoryview) -> os.stat_result:
    try:
        write_all(fd, data)
        st = os.fstat(fd)
        if st.st_size != len(data):
            os.ftruncate(fd, len(data))
            st = os.fstat(fd)
        return st
    except OSError as exc:
        raise_if_disk_full(exc, Path(path).parent)
        raise
    finally:
        os.close(fd)


class InPlaceRewriter:
    """`write_in_place` for many existing files: serial while rewrites are fast, threads
    once they prove slow.

    A rewrite whose file's block is not in the page cache waits for the kernel to read it
    back first (a partial-block write): threads overlap those waits, but from a warm cache
    their GIL hand-offs cost more than they save. So the first `PROBE` rewrites are timed
    and threads are used only when they averaged over `SLOW_S` seconds each.
    """

    PROBE = 256
    SLOW_S = 50e-6
    THREADS = 8

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._probed = 0
        self._probe_s = 0.0

    def __enter__(self) -> InPlaceRewriter:
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown()

    def rewrite(self, jobs: list[tuple[str, bytes]]) -> list[os.stat_result]:
        """Write each (path, data); return their stats in the same order."""
        done: list[os.stat_result] = []
        while self._pool is None and self._probed < self.PROBE and len(done) < len(jobs):
            began = time.perf_counter()
            done.append(write_in_place(*jobs[len(done)]))
            self._probe_s += time.perf_counter() - began
            self._probed += 1
            if self._probed == self.PROBE and self._probe_s / self.PROBE > self.SLOW_S:
                self._pool = ThreadPoolExecutor(self.THREADS, thread_name_prefix="rewrite")
        rest = jobs[len(done) :]
        if self._pool is None or not rest:
            return done + [write_in_place(path, data) for path, data in rest]
        step = -(-len(rest) // self.THREADS)
        chunks = [rest[i : i + step] for i in range(0, len(rest), step)]
        for stats in self._pool.map(_rewrite_chunk, chunks):
            done.extend(stats)
        return done

    @property
    def threaded(self) -> bool:
        """Whether the probe chose threads."""
        return self._pool is not None


def _rewrite_chunk(jobs: list[tuple[str, bytes]]) -> list[os.stat_result]:
    return [write_in_place(path, data) for path, data in jobs]


def move_into_place(src: Path, dest: Path) -> None:
    """Move `src` to `dest` (see `move_file`), creating `dest`'s folder if needed."""
    try:
        move_file(src, dest)
    except FileNotFoundError:
        if not os.path.exists(src):
            raise
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        move_file(src, dest)


def move_file(src: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Rename `src` to `dest`; across file systems (`data/` on another disk), copy it to
    a temporary name beside `dest`, fsync, rename that into place, then delete `src`.

    The copy keeps `src`'s mtime, so a manifest row made from `src`'s stat still holds.
    """
    try:
        os.replace(src, dest)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    tmp = os.path.join(os.path.dirname(dest), f".{os.path.basename(dest)}{TMP_SUFFIX}")
    try:
        shutil.copyfile(src, tmp)
        shutil.copystat(src, tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, dest)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise_if_disk_full(exc, Path(dest).parent)
        raise
    os.unlink(src)


def atomic_write(
    path: Path, data: bytes | memoryview, tmp_dir: Path | None = None
) -> os.stat_result:
    """Write `path` through a temporary name (beside it, or in `tmp_dir` on the same
    filesystem) and rename it into place; return the final file's stat.

    The temporary name is fixed, so a write killed half-way leaves at most one
    leftover, which the next write of the same file replaces.
    """
    tmp = (tmp_dir or path.parent) / f".{path.name}{TMP_SUFFIX}"
    st = write_new(tmp, data)
    move_into_place(tmp, path)
    return st


def raise_if_disk_full(exc: OSError, folder: Path) -> None:
    """Turn ENOSPC/EDQUOT into a DiskFullError that names the folder."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        raise DiskFullError(
            exc.errno,
            f"no space left on the device of {folder}: free some space and run "
            "`doit` again (nothing half-written counts as done)",
        ) from exc
