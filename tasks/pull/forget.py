"""A shard whose bytes from the Hub did not match the listing: nothing of it counts as done.

Its earlier build (from an earlier commit) leaves `data/`, `incomplete/` and its
partition, its manifest rows go (`shards`, `files`, `quirks`, `hub_files`,
`hub_sources`), and so does its earlier tar: the next `doit pull` fetches it as new. A
file of it that was changed by hand is the user's: it is moved to `edited/`, named.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from state import caption_state, edits, files, shards, sources
from state import hub as hub_files
from state import quirks as quirk_rows
from state.hashing import hash_file, is_regular
from state.kinds import EDITED_SHARD_FILES
from state.manifest import open_manifest, write_transaction
from tasks.extract.shard import keep_edited, left_as_built, remove_empty_folders
from tasks.settings import Settings, shard_name

LEGACY_EDITS = "incomplete/{name}/edited-by-hand/"  # the user's files: never deleted
REMOVED = ""


@dataclass
class Dropped:
    """What `drop_shard` removed, and the hand-edited files it kept."""

    shard: str
    removed: int = 0
    kept: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """One line for the pull's output, or '' when the shard had no earlier build."""
        if not self.removed and not self.kept:
            return ""
        line = f"{self.shard}: its earlier build was removed ({self.removed} file(s))"
        if self.kept:
            line += f"; {len(self.kept)} file(s) changed by hand kept in {self.kept[0]}"
            line += " and beside it" if len(self.kept) > 1 else ""
        return line


def drop_shard(settings: Settings, tar: Path, repo_path: str) -> Dropped:
    """Remove every file and row of the shard of `tar` (fetched as `repo_path`) and its tar."""
    name = shard_name(tar, settings)
    rel = os.path.relpath(tar, settings.root)
    out = Dropped(name)
    db = open_manifest(settings.root)
    try:
        row = shards.get(db, name)
        rows = files.of_shard(db, name) if row is not None and row["path"] == rel else []
        originals = edits.originals(db)
        legacy = LEGACY_EDITS.format(name=name)
        for r in rows:
            if r["path"].startswith(legacy):
                continue
            kept = _remove(settings, name, r, originals.get(r["path"], r["xxh3"]))
            if kept == REMOVED:
                out.removed += 1
            elif kept:
                out.kept.append(kept)
        paths = [r["path"] for r in rows]
        with write_transaction(db) as conn:
            files.delete(conn, paths)
            edits.forget(conn, paths)
            if rows:
                quirk_rows.replace(conn, name, [])
                caption_state.set_caption_failure(conn, name, None)
                shards.forget(conn, name)
            hub_files.forget(conn, repo_path)
            sources.forget(conn, rel)
    finally:
        db.close()
    for top in ("data", "incomplete", "state/parts"):
        remove_empty_folders(settings.root / top, [p for p in paths if p.startswith(top + "/")])
    tar.unlink(missing_ok=True)
    return out


def _remove(settings: Settings, name: str, r: dict, original: str) -> str | None:
    """Delete one file of the shard (REMOVED), or move it to `edited/` when it was changed
    by hand (its path there); None: nothing there, or not a file (left alone)."""
    target = settings.root / r["path"]
    if not is_regular(target):
        return None
    if r["kind"] in EDITED_SHARD_FILES and r["path"].startswith("data/"):
        content = r["xxh3"] if left_as_built(target, r) else hash_file(target)
        if content != original:
            return keep_edited(settings, name, r)
    target.unlink()
    return REMOVED
