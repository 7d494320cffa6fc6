"""Replacing a file the user may have made a symlink (the table, `multidatabackend.json`).

The link stays and its target is replaced: the temporary file sits beside the target, so
the rename is atomic on the target's own file system, and it is removed when the write
or the rename fails.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from state.atomic import TMP_SUFFIX, write_new


def link_target(path: Path) -> Path:
    """The file to write: `path` itself, or the file a symlink at `path` points to."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


@contextlib.contextmanager
def replacing_through(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write; renamed over `path`'s target when the block ends.

    On any failure (in the block or the rename) the temporary file is removed.
    """
    target = link_target(path)
    tmp = target.parent / f".{target.name}{TMP_SUFFIX}"
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_through(path: Path, data: bytes) -> None:
    """Write `data` to `path` (or its symlink's target) atomically."""
    with replacing_through(path) as tmp:
        write_new(tmp, data)
