"""`scan`: pick up JSON files edited in `data/` and bring each shard's partition up to date.

Stat-level: a JSON whose size and mtime_ns match its manifest row is not read. An edited
JSON is re-parsed and only its shard's partition is rewritten. A partition that is
missing, damaged, or whose shard's JSON rows changed otherwise (a path taken over by
a shard that sorts first) is rebuilt from the JSON files in `data/`; no tar is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from state import edits, files, shards
from state.digests import json_digest
from state.hashing import NotRegularFileError, read_regular
from state.kinds import FileKind
from state.manifest import open_manifest, write_transaction
from tasks.freshness import ChangedJson, changed_json_rows, partitions_needing_rebuild
from tasks.partition import read_partition, write_partition
from tasks.records import parse_json, partition_row
from tasks.settings import Settings, partition_path

IMAGE, JSON = FileKind.IMAGE, FileKind.JSON


class EditedJsonError(ValueError):
    """A JSON in `data/` cannot be used; the message names the file."""


@dataclass
class ScanResult:
    """What `scan_edits` found and did."""

    edited: list[str] = field(default_factory=list)
    rebuilt: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def scan_edits(settings: Settings) -> ScanResult:
    """Record edited JSON files and rewrite the partitions that depend on them."""
    result = ScanResult()
    db = open_manifest(settings.root)
    try:
        changed = changed_json_rows(db, settings)
        edited_by_shard: dict[str, set[str]] = {}
        for c in changed:
            if c.content_changed:
                edited_by_shard.setdefault(c.shard, set()).add(c.path)
        full = set(partitions_needing_rebuild(db, settings))
        for shard in sorted(full | set(edited_by_shard)):
            only = None if shard in full else edited_by_shard[shard]
            try:
                part_row = rebuild_partition(db, settings, shard, only)
            except EditedJsonError as exc:
                result.errors.append(str(exc))
                continue
            with write_transaction(db) as conn:
                _remember_originals(conn, changed, shard)
                files.upsert(conn, _stat_rows(db, changed, shard))
                files.upsert(conn, [part_row])
                shards.set_partition(conn, shard, part_row["xxh3"], json_digest(conn, shard))
            result.rebuilt.append(shard)
            result.edited.extend(sorted(edited_by_shard.get(shard, ())))
        untouched = [c for c in changed if c.shard not in result.rebuilt and not c.content_changed]
        if untouched:  # touched without a content change: remember the new stat
            with write_transaction(db) as conn:
                files.set_stat(conn, [(c.size, c.mtime_ns, c.path) for c in untouched])
    finally:
        db.close()
    return result


def _remember_originals(conn, changed: list[ChangedJson], shard: str) -> None:
    """Keep the tar's hash of each JSON of `shard` whose edit is picked up now, so that
    the next extraction of the shard knows the file is the user's (tar's again: forgotten)."""
    for c in changed:
        if c.shard != shard or not c.content_changed:
            continue
        if c.xxh3 is not None and c.xxh3 == edits.original_of(conn, c.path):
            edits.forget(conn, [c.path])
        else:
            edits.remember_original(conn, c.path, files.get(conn, c.path)["xxh3"])


def _stat_rows(db, changed: list[ChangedJson], shard: str) -> list[files.FileRow]:
    """The rows of the shard's changed JSON files, with their new stat and hash."""
    rows: list[files.FileRow] = []
    for c in changed:
        if c.shard == shard:
            old = files.get(db, c.path)
            rows.append({**old, "size": c.size, "mtime_ns": c.mtime_ns, "xxh3": c.xxh3})
    return rows


def _row_from_json(
    settings: Settings, json_path: str, image_path: str, header: tuple[int, int]
) -> dict:
    file = settings.root / "data" / json_path
    try:
        raw = read_regular(file)
    except FileNotFoundError as exc:
        raise EditedJsonError(f"{file}: missing; run `doit repair` to restore it") from exc
    except NotRegularFileError as exc:
        raise EditedJsonError(
            f"{file}: not a regular file (a FIFO, device or socket), never read: remove it, "
            "then run `doit repair` to restore the JSON"
        ) from exc
    obj, error = parse_json(raw)
    if obj is None:
        raise EditedJsonError(
            f"{file}: {error}: your edit cannot be read, so it is not picked up; fix the "
            "file, then run `doit` (until then the table keeps its previous rows)"
        )
    return partition_row(image_path, json_path, obj, raw.decode("utf-8"), header)


def rebuild_partition(db, settings: Settings, shard: str, only: set[str] | None) -> files.FileRow:
    """Rewrite a shard's partition; re-parse only `only` (paths from root) when given."""
    if only is not None and partition_path(settings, shard).exists():
        rows = {r["json_path"]: r for r in read_partition(settings, shard).to_pylist()}
        for path in only:
            json_path = path.removeprefix("data/")
            old = rows.get(json_path)
            if old is None:
                return rebuild_partition(db, settings, shard, None)
            header = (old["header_width"], old["header_height"])
            rows[json_path] = _row_from_json(settings, json_path, old["filename"], header)
        return write_partition(settings, shard, rows.values())
    samples: dict[str, dict] = {}
    for r in files.sample_rows(db, shard):
        samples.setdefault(r["sample"], {})[r["kind"]] = r
    rows = []
    for parts in samples.values():
        if IMAGE not in parts or JSON not in parts:
            continue
        image = parts[IMAGE]
        rows.append(
            _row_from_json(
                settings,
                parts[JSON]["path"].removeprefix("data/"),
                image["path"].removeprefix("data/"),
                (image["width"], image["height"]),
            )
        )
    return write_partition(settings, shard, rows)
