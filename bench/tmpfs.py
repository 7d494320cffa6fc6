"""Mount a tmpfs on the benchmark's work folder for the length of a run.

On tmpfs no disk is in the way and a mass delete does not slow later creates (ext4 on
this VM checks recently freed inodes on every create for minutes), so ratios do not
depend on the order of the steps. Mounting needs root (or CAP_SYS_ADMIN).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class MountError(Exception):
    """The tmpfs could not be mounted; the message is one line for the user."""


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[0] if lines else "no message"


def mount_tmpfs(folder: Path, size: str) -> None:
    """`mount -t tmpfs -o size=SIZE tmpfs FOLDER`; MountError with mount's reason if refused."""
    if os.path.ismount(folder):
        raise MountError(f"{folder} is already a mount point: `umount {folder}` first")
    folder.mkdir(parents=True, exist_ok=True)
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError:
        raise MountError("no `mount` command here: leave out --tmpfs") from None
    if done.returncode != 0:
        raise MountError(
            f"cannot mount a tmpfs (size={size}) on {folder}: {_first_line(done.stderr)}"
            " (needs root; check --tmpfs-size, or leave out --tmpfs)"
        )


def unmount(folder: Path) -> str | None:
    """Unmount `folder`, retrying while busy, lazily at last; a note if that was needed."""
    for _ in range(10):
        done = subprocess.run(["umount", str(folder)], capture_output=True, text=True)
        if done.returncode == 0 or not os.path.ismount(folder):
            return None
        time.sleep(0.5)
    subprocess.run(["umount", "-l", str(folder)], capture_output=True, text=True)
    return f"{folder} was busy: unmounted lazily ({_first_line(done.stderr)})"


@contextmanager
def tmpfs_mounted(folder: Path, size: str, keep: bool = False) -> Iterator[list[str]]:
    """A tmpfs on `folder` while the block runs; unmounted after it, also on errors and
    Ctrl-C, unless `keep`. Yields a list that collects notes about the unmount."""
    mount_tmpfs(folder, size)
    notes: list[str] = []
    try:
        yield notes
    finally:
        if keep:
            notes.append(f"tmpfs left mounted on {folder} (--keep): `umount {folder}` when done")
        else:
            note = unmount(folder)
            if note:
                notes.append(note)
