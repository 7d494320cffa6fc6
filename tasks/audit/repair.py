"""`doit repair`: restore what the audit finds damaged; never undo an edited JSON.

What to repair comes from a fresh fast audit (run here, not read from a stale report),
plus the damage only `doit audit --deep` can see (same size and mtime, other bytes; an
image that fails its JSON's md5/sha512) taken from the last report, `state/audit.json`,
and re-checked before anything is done about it (so an outdated report is harmless).

- images, kept-aside files and *missing* JSON files: re-extracted from their tar by
  seeking to the member's data offset recorded in the manifest (reads only the damaged
  members); the bytes must hash (XXH3) to the manifest's value, are written atomically,
  and the row's size/mtime_ns are updated. An edited JSON is never touched.
- partitions: rebuilt from the JSON files in `data/` (as the `scan` task does).
- captions: the shard's caption files are brought back in line with its partition; a
  caption edited by hand is not damage and is left as it is.
- the table: rebuilt from the partitions.
- `multidatabackend.json`: a missing, stale or mangled entry is written as `doit` would.
- stray files in `data/`, and a FIFO, device or socket standing where a file the build
  wrote was (then restored like a missing file): moved to `<root>/strays/<path>` (never
  deleted; not under `incomplete/`, where a shard named `strays` keeps its own files aside).
- touched files (new mtime, same content): their rows get the new stat.

What cannot be restored (the tar is gone, or no longer holds the member's bytes) is
listed plainly in `RepairResult.failed`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from state import files, meta, shards
from state.atomic import atomic_write, move_file
from state.hashing import hash_bytes, hash_file, read_regular
from state.kinds import STRAYS_DIR, FileKind
from state.manifest import open_manifest, write_transaction
from tasks.audit.dataloader import REPAIR_KINDS as DATALOADER_KINDS
from tasks.audit.dataloader import rewrite_entry
from tasks.audit.deep import checksums_match, wanted_checksums
from tasks.audit.report import AuditReport, Finding, load_report
from tasks.audit.run import audit
from tasks.captions import write_captions
from tasks.extract.tarstream import printable, read_member
from tasks.records import parse_json
from tasks.scan import scan_edits
from tasks.settings import Settings
from tasks.table import build_table

RESTORE_KINDS = (
    "missing_image",
    "missing_json",
    "missing_aside",
    "corrupt_image",
    "corrupt_aside",
    "checksum_mismatch",
)
CAPTION_KINDS = ("missing_caption", "corrupt_caption", "image_without_caption")
PARTITION_KINDS = ("missing_partition", "corrupt_partition")
TABLE_KINDS = (
    "missing_table",
    "corrupt_table",
    "unreadable_table",
    "image_without_row",
    "row_without_image",
)
DEEP_ONLY = ("corrupt_image", "corrupt_aside", "corrupt_caption", "checksum_mismatch")
STRAYS = STRAYS_DIR


@dataclass
class RepairResult:
    """What `repair` did, what it could not do, and the audit after it."""

    restored: list[str] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)  # shards whose captions were redone
    partitions: list[str] = field(default_factory=list)
    table: bool = False
    dataloader: bool = False  # our entry in multidatabackend.json was rewritten
    strays: list[tuple[str, str]] = field(default_factory=list)  # (from, to)
    refreshed: int = 0
    notes: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    before: AuditReport | None = None
    after: AuditReport | None = None

    @property
    def ok(self) -> bool:
        return not self.failed and (self.after is None or self.after.ok)


def repair(settings: Settings) -> RepairResult:
    """Restore what a fresh audit (plus the last deep report, re-checked) finds damaged."""
    if settings.layout == "tars":
        from tasks.audit.tars import repair_tars

        return repair_tars(settings)
    result = RepairResult()
    before = audit(settings, deep=False)
    result.before = before
    if before.of("no_manifest"):
        result.failed.append(f"{before.findings[0].detail}: run `doit` to build first")
        return result
    findings = list(before.findings) + _deep_findings(settings, before)
    kinds: dict[str, list[Finding]] = {}
    for f in findings:
        kinds.setdefault(f.kind, []).append(f)

    def of(*names: str) -> list[Finding]:
        return [f for n in names for f in kinds.get(n, [])]

    db = open_manifest(settings.root)
    try:
        _move_strays(settings, of("stray", "not_regular_file"), result)
        for f in _as_missing(db, of("not_regular_file")):
            kinds.setdefault(f.kind, []).append(f)
        _restore_files(db, settings, of(*RESTORE_KINDS), result)
        _refresh_touched(db, settings, of("touched"), result)
    finally:
        db.close()
    damaged_parts = sorted({f.shard for f in of(*PARTITION_KINDS) if f.shard})
    if damaged_parts:
        _rebuild_partitions(settings, damaged_parts, result)
    caption_shards = sorted(
        {f.shard for f in of(*CAPTION_KINDS) if f.shard} | set(result.partitions)
    )
    for shard in caption_shards:
        _rewrite_captions(settings, shard, result)
    if of(*TABLE_KINDS) or result.partitions:
        _rebuild_table(settings, result)
    if of(*DATALOADER_KINDS):
        _rewrite_dataloader(settings, result)
    result.after = audit(settings, deep=False)
    for f in result.after.findings:
        if f.severity == "damage" and not any((f.path or f.detail) in x for x in result.failed):
            result.failed.append(f"still {f.kind}: {f.path or ''} {f.detail}".strip())
    return result


def _as_missing(db, odd: list[Finding]) -> list[Finding]:
    """A FIFO, device or socket moved to strays/ leaves its file missing: restore it so."""
    out = []
    for f in odd:
        row = files.get(db, f.path) if f.path else None
        if row is not None:
            kind = f"missing_{row['kind']}"
            out.append(Finding(kind, "damage", f.path, row["shard"], "moved to strays/"))
    return out


# --------------------------------------------------------------------------- deep findings


def _deep_findings(settings: Settings, fresh: AuditReport) -> list[Finding]:
    """Damage from the last deep report that a fast audit cannot see, if it still holds."""
    report = load_report(settings)
    if not report or not report.get("deep"):
        return []
    seen = {(f.kind, f.path) for f in fresh.findings}
    out = []
    db = open_manifest(settings.root)
    try:
        for item in report.get("findings") or []:
            if not isinstance(item, dict) or item.get("kind") not in DEEP_ONLY:
                continue
            kind, path = item["kind"], item.get("path")
            if not isinstance(path, str) or (kind, path) in seen:
                continue
            row = files.get(db, path)
            if row is None or not (settings.root / path).is_file():
                continue
            if kind == "checksum_mismatch":
                if _checksum_fails(db, settings, row):
                    out.append(Finding(kind, "damage", path, row["shard"], item.get("detail", "")))
            elif hash_file(settings.root / path) != row["xxh3"]:
                out.append(Finding(kind, "damage", path, row["shard"], "found by audit --deep"))
    finally:
        db.close()
    return out


def _json_row(db, row: dict) -> dict | None:
    return files.json_of_sample(db, row["shard"], row["sample"])


def _json_checksums(db, settings: Settings, row: dict) -> dict[str, str]:
    """md5/sha512 the image's JSON (as on disk) gives for it."""
    json_row = _json_row(db, row)
    if json_row is None:
        return {}
    try:
        obj, _ = parse_json(read_regular(settings.root / json_row["path"]))
    except OSError:
        return {}
    return wanted_checksums(obj)


def _checksum_fails(db, settings: Settings, row: dict) -> bool:
    want = _json_checksums(db, settings, row)
    data = (settings.root / row["path"]).read_bytes()
    return bool(want) and not checksums_match(data, want)


# --------------------------------------------------------------------------- strays


def _move_strays(settings: Settings, strays: list[Finding], result: RepairResult) -> None:
    base = settings.root / STRAYS
    for f in strays:
        src = settings.root / f.path
        dest = base / f.path.removeprefix("data/")
        n = 1
        while dest.exists():
            dest = dest.with_name(f"{Path(f.path).stem}.{n}{Path(f.path).suffix}")
            n += 1
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            move_file(src, dest)
        except FileNotFoundError:
            continue
        except shutil.SpecialFileError:  # a FIFO across file systems: it holds no bytes
            src.unlink()
            result.strays.append((f.path, "removed (a FIFO)"))
            continue
        result.strays.append((f.path, os.path.relpath(dest, settings.root)))


# --------------------------------------------------------------------------- files


def _restore_files(db, settings: Settings, findings: list[Finding], result: RepairResult) -> None:
    """Re-extract damaged files from their tars, shard by shard, in member order."""
    by_shard: dict[str, list[tuple[Finding, dict]]] = {}
    for f in findings:
        row = files.get(db, f.path) if f.path else None
        if row is None:
            continue
        if row["kind"] == FileKind.JSON and f.kind != "missing_json":
            continue  # an edited JSON is the user's
        by_shard.setdefault(row["shard"], []).append((f, row))
    tars = shards.paths(db)
    tmp_dir = settings.state_dir / "tmp" / "repair"
    for shard, items in sorted(by_shard.items()):
        tar_rel = tars.get(shard)
        tar = settings.root / tar_rel if tar_rel else None
        if tar is None or not tar.is_file():
            if not _restore_from_hub(db, settings, shard, items, tmp_dir, result):
                where = tar_rel if tar_rel else f"the tar of shard {shard}"
                for f, row in items:
                    result.failed.append(
                        f"cannot restore {row['path']} ({f.kind}): its tar {where} is gone"
                    )
            continue
        tmp_dir.mkdir(parents=True, exist_ok=True)
        with open(tar, "rb") as fh:
            for f, row in sorted(items, key=lambda x: x[1]["offset"] or 0):
                _restore_one(db, settings, fh, tar, f, row, tmp_dir, result)
    if tmp_dir.exists():
        with contextlib.suppress(OSError):
            tmp_dir.rmdir()


def _restore_from_hub(db, settings: Settings, shard: str, items, tmp_dir, result) -> bool:
    """Fetch the damaged members of a shard whose tar is gone from the Hub (HTTP Range at
    the recorded commit); False when the manifest does not say where the tar came from."""
    from tasks.pull.restore import HubFetchError, label_path, open_hub_tar

    hub_tar = open_hub_tar(db, shard)
    if hub_tar is None:
        return False
    tmp_dir.mkdir(parents=True, exist_ok=True)
    before = len(result.restored)
    where = label_path(settings.root, hub_tar)
    for f, row in sorted(items, key=lambda x: x[1]["offset"] or 0):
        try:
            _restore_one(db, settings, hub_tar, where, f, row, tmp_dir, result)
        except HubFetchError as exc:
            result.failed.append(f"cannot restore {row['path']} ({f.kind}): {exc}")
    if len(result.restored) > before:
        result.notes.append(
            f"{len(result.restored) - before} file(s) of {shard} fetched from the Hub "
            f"({hub_tar.label}, {hub_tar.fetched} bytes), each checked against the manifest's XXH3"
        )
    return True


def _restore_one(db, settings, fh, tar: Path, f: Finding, row: dict, tmp_dir, result) -> None:
    rel_tar = os.path.relpath(tar, settings.root)
    data = read_member(fh, row["member"], row["offset"])
    if data is None:
        result.failed.append(
            f"cannot restore {row['path']}: {rel_tar} no longer holds member "
            f"{row['member']!r} at offset {row['offset']} (the tar changed; `doit` "
            "re-extracts the shard if its content changed)"
        )
        return
    digest = hash_bytes(data)
    new_hash = None
    if f.kind == "checksum_mismatch":
        want = _json_checksums(db, settings, row)
        if not want or not checksums_match(data, want):
            result.failed.append(
                f"cannot repair {row['path']}: member {row['member']!r} of {rel_tar} fails the "
                "JSON's md5_file_hash/sha512_hash as well (the shard holds a damaged image)"
            )
            return
        new_hash = digest
    elif digest != row["xxh3"]:
        if row["kind"] != FileKind.JSON:
            result.failed.append(
                f"cannot restore {row['path']}: member {row['member']!r} of {rel_tar} no longer "
                "holds the bytes the build extracted (the tar changed; `doit` re-extracts it)"
            )
            return
        new_hash = digest  # the edit the build had taken up went with the file
        result.notes.append(
            f"{row['path']}: restored as first extracted from {rel_tar}; the edited version "
            "the build had taken up is gone with the file (the next `doit` takes this one up)"
        )
    st = atomic_write(settings.root / row["path"], data, tmp_dir)
    with write_transaction(db) as conn:
        files.set_content(conn, row["path"], st.st_size, st.st_mtime_ns, new_hash or row["xxh3"])
        if new_hash and row["kind"] == FileKind.JSON:
            shards.invalidate(conn, [row["shard"]], partition=True)
    result.restored.append(row["path"])


def _refresh_touched(db, settings: Settings, findings: list[Finding], result) -> None:
    """Rows of files whose mtime changed but content did not get the new stat."""
    updates = []
    for f in findings:
        row = files.get(db, f.path) if f.path else None
        path = settings.root / f.path if f.path else None
        if row is None or path is None or not path.is_file():
            continue
        st = path.stat()
        if hash_file(path) == row["xxh3"]:
            updates.append((st.st_size, st.st_mtime_ns, f.path))
    if updates:
        with write_transaction(db) as conn:
            files.set_stat(conn, updates)
        result.refreshed += len(updates)


# --------------------------------------------------------------------------- derived files


def _rebuild_partitions(settings: Settings, names: list[str], result: RepairResult) -> None:
    """Rebuild damaged partitions from data/ (clear json_digest, then run `scan`)."""
    db = open_manifest(settings.root)
    try:
        with write_transaction(db) as conn:
            shards.invalidate(conn, names, partition=True)
    finally:
        db.close()
    scan = scan_edits(settings)
    result.partitions.extend(s for s in scan.rebuilt)
    for error in scan.errors:
        result.failed.append(f"cannot rebuild a partition: {error}")
    if scan.edited:
        result.notes.append(
            f"{len(scan.edited)} edited JSON file(s) taken up while rebuilding partitions"
        )


def _rewrite_captions(settings: Settings, shard: str, result: RepairResult) -> None:
    db = open_manifest(settings.root)
    try:
        with write_transaction(db) as conn:
            shards.invalidate(conn, [shard], captions=True)
    finally:
        db.close()
    try:
        r = write_captions(settings, shard)
    except (OSError, ValueError) as exc:
        result.failed.append(f"cannot rewrite the captions of {shard}: {exc}")
        return
    result.failed.extend(f"captions of {shard}: {line}" for line in r.failed)
    result.notes.extend(
        f"{a}: edited by hand, replaced by the caption text; your version is kept at {b}"
        for a, b in r.moved_edited
    )
    result.captions.append(shard)


def _rebuild_table(settings: Settings, result: RepairResult) -> None:
    rel = os.path.relpath(settings.table_path, settings.root)
    db = open_manifest(settings.root)
    try:
        with write_transaction(db) as conn:
            meta.delete(conn, meta.table_key(rel))
    finally:
        db.close()
    try:
        build_table(settings)
    except (OSError, ValueError) as exc:
        result.failed.append(f"cannot rebuild {rel}: {exc}")
        return
    result.table = True


def _rewrite_dataloader(settings: Settings, result: RepairResult) -> None:
    try:
        result.dataloader, warnings = rewrite_entry(settings)
    except (OSError, ValueError) as exc:
        result.failed.append(f"cannot rewrite the dataloader entry: {exc}")
        return
    result.notes.extend(warnings)


# --------------------------------------------------------------------------- output


def format_repair(result: RepairResult, settings: Settings) -> str:
    """What repair did, what it could not do (plainly), and what the audit says now."""
    lines = []
    if result.restored:
        lines.append(f"restored {len(result.restored)} file(s) from their tars:")
        lines += [f"  {printable(p)}" for p in result.restored[:20]]
        if len(result.restored) > 20:
            lines.append(f"  … {len(result.restored) - 20} more")
    if result.strays:
        lines.append(
            f"moved {len(result.strays)} stray file(s) out of data/ to {settings.root / STRAYS}/:"
        )
        lines += [f"  {printable(a)} -> {printable(b)}" for a, b in result.strays[:20]]
    if result.partitions:
        lines.append(f"rebuilt partition(s) from data/: {', '.join(result.partitions)}")
    if result.captions:
        lines.append(f"rewrote the caption files of: {', '.join(result.captions)}")
    if result.table:
        lines.append(f"rebuilt {settings.table_path.name}")
    if result.dataloader:
        lines.append(f"rewrote entry {settings.id!r} in {settings.backend_path.name}")
    if result.refreshed:
        lines.append(f"recorded the new mtime of {result.refreshed} touched file(s)")
    lines += [f"note: {n}" for n in result.notes]
    if not lines and not result.failed:
        lines.append("nothing to repair")
    for message in result.failed:
        lines.append(f"NOT REPAIRED: {message}")
    if result.after is not None:
        edited = len(result.after.of("edited_json"))
        if edited:
            lines.append(f"left as edited: {edited} JSON file(s) (the next `doit` takes them up)")
        edited = len(result.after.of("edited_caption"))
        if edited:
            lines.append(f"left as edited: {edited} caption file(s) (yours; see `doit audit`)")
    lines.append(
        "repair done; run `doit audit --deep` to confirm"
        if result.ok
        else "repair incomplete: see NOT REPAIRED above"
    )
    return "\n".join(lines)
