"""`summary`: what the build holds, what was kept aside, and whether any shard failed."""

from __future__ import annotations

import os
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from state import files, quirks, shards
from state.caption_state import EDITED_CAPTIONS, caption_failures
from state.kinds import FileKind
from state.manifest import connect_if_present, manifest_path, unreadable_manifest
from tasks.extract.tarstream import printable
from tasks.settings import Settings, shard_names

EXAMPLES = 5  # quirks named per kind in the summary; the audit lists them all


@dataclass
class BuildSummary:
    """Counts from the manifest after a build."""

    shards: int = 0
    samples: int = 0
    aside_files: int = 0
    caption_failed: dict[str, str] = field(default_factory=dict)  # shard -> one line
    edited_captions_aside: int = 0  # under incomplete/edited-captions/
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
        s.caption_failed = caption_failures(db)
        s.edited_captions_aside = _count_files(settings.incomplete_dir / EDITED_CAPTIONS)
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
            f"{settings.incomplete_dir / EDITED_CAPTIONS}/"
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
