"""`summary`: what the build holds, what was kept aside, and whether any shard failed."""

from __future__ import annotations

import os
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from state import files, meta, quirks, shards
from state.caption_state import caption_failures
from state.kinds import EDITED_CAPTIONS, EDITED_DIR, EDITED_SHARD_FILES, FileKind
from state.manifest import connect_if_present, manifest_path, unreadable_manifest
from tasks.extract.tarstream import printable
from tasks.freshness import table_key, table_matches, table_shards
from tasks.settings import Settings, shard_names

EXAMPLES = 5  # quirks named per kind in the summary; the audit lists them all


@dataclass
class BuildSummary:
    """Counts from the manifest after a build."""

    shards: int = 0
    samples: int = 0
    aside_files: int = 0
    caption_failed: dict[str, str] = field(default_factory=dict)  # shard -> one line
    edited_captions_aside: int = 0  # under edited/captions/
    edited_files_aside: int = 0  # under edited/json/ and edited/images/
    failed: dict[str, str] = field(default_factory=dict)
    tars_gone: list[str] = field(default_factory=list)
    quirks: Counter = field(default_factory=Counter)
    quirk_examples: dict[str, list[str]] = field(default_factory=dict)
    shard_names: list[str] = field(default_factory=list)
    kept_from_earlier: list[str] = field(default_factory=list)
    refused_tars: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.refused_tars


def summarize(settings: Settings) -> BuildSummary:
    """Read the manifest into a BuildSummary (an empty one when there is no manifest).

    Plain sqlite3, not sqlite-utils: the summary runs on every `doit`, even a no-op one,
    where importing sqlite-utils would be a large part of the run.
    """
    s = BuildSummary(refused_tars=shard_names(settings)[1])
    db = connect_if_present(settings.root)
    if db is None:
        return s
    try:
        for name, tar, status, samples, error in shards.rows(
            db, "name", "path", "status", "samples", "error"
        ):
            s.shard_names.append(name)
            present = (settings.root / tar).exists()
            if status == "failed" and present:
                s.failed[name] = error
                if not samples:
                    continue
                s.kept_from_earlier.append(name)  # its earlier good read stays in the build
            s.shards += 1
            s.samples += samples or 0
            if not present:
                s.tars_gone.append(tar)
        s.samples = _table_rows(db, settings, s.samples)
        s.caption_failed = caption_failures(db)
        s.edited_captions_aside = _count_files(settings.root / EDITED_CAPTIONS)
        s.edited_files_aside = sum(
            _count_files(settings.root / folder) for folder in EDITED_SHARD_FILES.values()
        )
        s.aside_files = files.count(db, FileKind.ASIDE)
        for shard, kind, member, path, detail in quirks.rows(db):
            s.quirks[kind] += 1
            examples = s.quirk_examples.setdefault(kind, [])
            if len(examples) < EXAMPLES or kind == "refused":  # name every refused member
                examples.append(f"{shard}: {printable(member or path)}: {printable(detail)}")
    except sqlite3.DatabaseError as exc:
        raise unreadable_manifest(manifest_path(settings.root), exc) from exc
    finally:
        db.close()
    return s


def _table_rows(db: sqlite3.Connection, settings: Settings, shard_samples: int) -> int:
    """The rows the table holds when it is current (a sample that moved between shards
    counts once there), else the shards' own sample counts."""
    if not table_matches(db, settings, table_key(settings, table_shards(db))):
        return shard_samples
    rel = os.path.relpath(settings.table_path, settings.root)
    recorded = meta.get(db, meta.table_rows(rel))
    return int(recorded) if recorded is not None else shard_samples


def _count_files(folder: Path) -> int:
    """Files under `folder` (0, after one stat, when it does not exist)."""
    if not folder.is_dir():
        return 0
    return sum(len(files) for _, _, files in os.walk(folder))


def format_summary(s: BuildSummary, settings: Settings) -> str:
    """The human summary printed at the end of `doit`."""
    lines = [
        f"shardprep: {s.shards} shard(s), {s.samples} sample(s) in {settings.table_path.name}"
        f" ({settings.root})",
    ]
    if s.aside_files:
        lines.append(
            f"  kept aside: {s.aside_files} file(s) under "
            f"{settings.incomplete_dir}/ (see `doit audit`)"
        )
    if s.edited_captions_aside:
        lines.append(
            f"  note: {s.edited_captions_aside} caption file(s) you edited by hand were "
            f"replaced by a new caption text; yours are under "
            f"{settings.root / EDITED_CAPTIONS}/"
        )
    if s.edited_files_aside:
        lines.append(
            f"  note: {s.edited_files_aside} file(s) of data/ you edited by hand are kept "
            f"under {settings.root / EDITED_DIR}/: their shard's new tar holds another version "
            "or none (`doit audit` names them)"
        )
    for error in s.caption_failed.values():
        lines.append(f"  ERROR: {error}")
    for kind, count in sorted(s.quirks.items()):
        lines.append(f"  warning: {count} x {kind}:")
        lines.extend(f"    {example}" for example in s.quirk_examples[kind])
        if count > len(s.quirk_examples[kind]):
            lines.append(f"    ... and {count - len(s.quirk_examples[kind])} more (`doit audit`)")
    if s.tars_gone and not settings.keep_tars:
        lines.append(
            f"  note: {len(s.tars_gone)} tar(s) not kept (keep_tars = false); their samples stay "
            "in the build and `doit repair` fetches damaged files from the Hub"
        )
    for path in s.tars_gone if settings.keep_tars else []:
        lines.append(f"  note: {path} is gone; its extracted samples stay in the build")
    for message in s.refused_tars:
        lines.append(f"  ERROR: {message}")
    for name, error in sorted(s.failed.items()):
        lines.append(f"  ERROR: shard {name}: {error}")
        if name in s.kept_from_earlier:
            lines.append(f"    (shard {name} as extracted earlier stays in the build)")
    return "\n".join(lines)
