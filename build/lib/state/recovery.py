"""Ways back from damaged state: doit's dependency file and the manifest.

doit's own file is only a cache over the manifest, so a damaged one is moved aside and
the run goes on. A damaged manifest is moved aside on request (`doit reset_state`); the
next `doit` then rebuilds it by reading every tar again, without rewriting any file in
`data/` that already holds the right bytes (and keeping JSON files that differ, as
edits).
"""

from __future__ import annotations

import dbm
import json
import time
from pathlib import Path

from state.manifest import manifest_path

DEP_SUFFIXES = ("", ".dir", ".dat", ".bak", ".db")
MANIFEST_SUFFIXES = ("", "-wal", "-shm")


def _move_aside(files: list[Path], state_dir: Path) -> Path | None:
    present = [f for f in files if f.exists()]
    if not present:
        return None
    dest = state_dir / f"damaged-{time.strftime('%Y%m%d-%H%M%S')}"
    dest.mkdir(parents=True, exist_ok=True)
    for f in present:
        f.rename(dest / f.name)
    return dest


def dep_file_is_readable(dep_file: Path) -> bool:
    """Whether doit's dependency file (any dbm flavour) opens, or does not exist yet."""
    if dbm.whichdb(str(dep_file)) is None:
        return not any(Path(f"{dep_file}{s}").exists() for s in DEP_SUFFIXES)
    try:
        with dbm.open(str(dep_file), "r") as db:
            keys = db.keys()  # not every dbm flavour can be iterated directly
            for key in keys:
                json.loads(db[key].decode("utf-8"))  # doit's codec is JSON
    except Exception:  # noqa: BLE001 - any failure means doit could not use it either
        return False
    return True


def quarantine_dep_file(dep_file: Path) -> Path | None:
    """Move a damaged dependency file aside; return where it went (None if it was fine)."""
    if dep_file_is_readable(dep_file):
        return None
    return _move_aside([Path(f"{dep_file}{s}") for s in DEP_SUFFIXES], dep_file.parent)


def reset_state(root: Path) -> Path | None:
    """Move the manifest aside (kept for inspection); return the folder it went to.

    doit's own file stays: every task asks the manifest before trusting it.
    """
    files = [Path(f"{manifest_path(root)}{s}") for s in MANIFEST_SUFFIXES]
    return _move_aside(files, Path(root) / "state")
