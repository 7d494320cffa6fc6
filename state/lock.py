"""One writer per root: `<root>/state/lock`, held with `flock` for a whole run.

The kernel drops an `flock` when its holder dies, so a lock left by a killed run is taken
over at once; the file only says who holds it (pid, host, command line) for the message.
Processes forked by the holder (`doit -n 2 -P process` workers) share its open file and
so its lock: they never take it themselves.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shlex
import socket
import sys
from pathlib import Path

LOCK_NAME = "lock"
# "<pid> <root>" of the lock this process or an ancestor holds: a worker that imports the
# task definitions again (spawn or forkserver start methods) must not refuse its own run
HOLDER_ENV = "SHARDPREP_WRITER"
_held: dict[Path, int] = {}  # root -> fd of the lock this process holds


class LockHeld(RuntimeError):
    """Another run holds the lock of a root; the message names it."""


def lock_path(root: Path) -> Path:
    """Where the writer lock of `root` lives."""
    return Path(root) / "state" / LOCK_NAME


def _holder_pid(root: Path) -> str:
    try:
        return lock_path(root).read_text(encoding="utf-8", errors="replace").split("\n")[0]
    except OSError:
        return ""


def holder_text(root: Path) -> str:
    """`pid 1234: doit ...` from the lock file, or a plain phrase when it says nothing yet."""
    try:
        text = lock_path(root).read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        text = ""
    pid, _, rest = text.partition("\n")
    host, _, command = rest.partition("\n")
    if not pid:
        return "pid unknown"
    where = "" if host in ("", socket.gethostname()) else f" on {host}"
    return f"pid {pid}{where}: {command}" if command else f"pid {pid}{where}"


def acquire(root: Path, command: list[str] | None = None) -> None:
    """Take the writer lock of `root` for the rest of this process (creates `state/`).

    Raises LockHeld naming the holder when another live run has it, and OSError when the
    folder cannot be written.
    """
    root = Path(root)
    if root in _held:
        return
    path = lock_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
            raise
        if os.environ.get(HOLDER_ENV) == f"{_holder_pid(root)} {root}":
            return
        raise LockHeld(
            f"another shardprep run ({holder_text(root)}) is writing {root}; wait for it or stop it"
        ) from None
    argv = command if command is not None else sys.argv
    text = f"{os.getpid()}\n{socket.gethostname()}\n{shlex.join(argv)}\n"
    # the command line holds what the OS gave, which need not be UTF-8
    info = text.encode("utf-8", "surrogateescape")
    os.ftruncate(fd, 0)
    os.pwrite(fd, info, 0)
    _held[root] = fd
    os.environ[HOLDER_ENV] = f"{os.getpid()} {root}"


def release(root: Path) -> None:
    """Give the lock of `root` back (the end of the process does it too)."""
    fd = _held.pop(Path(root), None)
    if fd is not None:
        os.close(fd)
        if os.environ.get(HOLDER_ENV) == f"{os.getpid()} {Path(root)}":
            del os.environ[HOLDER_ENV]


def running_writer(root: Path) -> str | None:
    """The holder of the lock of `root` when a run is writing it, else None.

    For readers: it creates nothing and works on a read-only folder.
    """
    root = Path(root)
    if root in _held:
        return None
    try:
        fd = os.open(lock_path(root), os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return holder_text(root)
    finally:
        os.close(fd)
    return None
