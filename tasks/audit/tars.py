"""`doit audit` and `doit repair` for `layout = "tars"`: the tars and their webshart indexes.

There is no `data/`: the samples are the tars' members. Each shard's tar must be present
as it was indexed (size and mtime; else its XXH3; `--deep`: every sample member's bytes at
its recorded offset), and each index must hold exactly what the manifest and partition
make (offsets, lengths, sizes, captions). The partitions, the table, kept-aside files and
the dataloader entry are checked as in the folder layout. Repair rewrites the indexes.
"""

from __future__ import annotations

import json
import os
import time

from state import files, shards, tar_layout
from state.hashing import file_matches, hash_bytes, hash_file
from state.kinds import FileKind
from state.manifest import manifest_path, open_manifest, open_readonly
from tasks.audit.dataloader import check_dataloader
from tasks.audit.report import DAMAGE, KINDS, NOTE, AuditReport
from tasks.settings import Settings, shard_name
from tasks.tar_index import expected_index, index_bytes, index_rel, webshart_skips, write_index

KINDS.update(
    {
        "missing_tar": (DAMAGE, "{n} tar(s) the indexes point into are missing"),
        "changed_tar": (DAMAGE, "{n} tar(s) differ from the bytes that were indexed"),
        "corrupt_member": (DAMAGE, "{n} sample member(s) differ at their recorded offset"),
        "missing_index": (DAMAGE, "{n} webshart index(es) are missing"),
        "corrupt_index": (DAMAGE, "{n} webshart index(es) differ from the manifest"),
        "stale_index": (DAMAGE, "{n} webshart index(es) of shards that no longer build"),
        "symlinked_tar": (DAMAGE, "{n} tar(s) are symlinks webshart will not read"),
        "touched_tar": (NOTE, "{n} tar(s) have a new mtime but the same bytes"),
    }
)
_CHECKED_KINDS = (FileKind.PARTITION, FileKind.TABLE, FileKind.ASIDE)


def audit_tars(settings: Settings, deep: bool = False) -> AuditReport:
    """The audit of a `layout = "tars"` build."""
    from tasks.audit import run

    began = time.monotonic()
    report = AuditReport.begin(settings.root, deep)
    conn = open_readonly(settings.root)
    if conn is None:
        report.add("no_manifest", None, None, f"{manifest_path(settings.root)} does not exist")
        return report
    try:
        _check_build_files(conn, settings, report, deep)
        table = run._check_table_rows(settings, report)
        _check_tars(conn, settings, report, deep)
        _check_indexes(conn, settings, report)
        run._check_partitions(conn, settings, report)
        run._check_quirks(conn, report)
        run._check_expected(conn, settings, report, table)
        check_dataloader(settings, report)
    finally:
        conn.close()
    report.seconds = time.monotonic() - began
    return report


def _check_build_files(conn, settings: Settings, report: AuditReport, deep: bool) -> None:
    """Partitions, the table and kept-aside files as the manifest recorded them."""
    for kind in _CHECKED_KINDS:
        for row in files.of_kind(conn, kind):
            path = settings.root / row["path"]
            report.files_checked += 1
            if not path.is_file():
                report.add(f"missing_{_word(kind)}", row["path"], row["shard"], "run `doit repair`")
                continue
            mtime = None if deep else row["mtime_ns"]
            if not file_matches(path, row["size"], mtime, row["xxh3"]):
                detail = "differs from what the build wrote: run `doit repair`"
                report.add(f"corrupt_{_word(kind)}", row["path"], row["shard"], detail)


def _word(kind: str) -> str:
    return {"partition": "partition", "table": "table", "aside": "aside"}[kind]


def _check_tars(conn, settings: Settings, report: AuditReport, deep: bool) -> None:
    """Each shard's tar present with the bytes its index was made from."""
    known = set()
    for name, path, size, mtime_ns, xxh3, status, error in shards.rows(
        conn, "name", "path", "size", "mtime_ns", "xxh3", "status", "error"
    ):
        known.add(name)
        tar = settings.root / path
        try:
            st = os.stat(tar)
        except FileNotFoundError:
            report.add("missing_tar", path, name, "SimpleTuner reads the samples from it")
            continue
        if status != shards.DONE:
            report.add("shard_failed", path, name, error or "not read to its end")
            continue
        if webshart_skips(settings, path):
            detail = "webshart ignores symlinked tars and folders: copy or hard-link it"
            report.add("symlinked_tar", path, name, detail)
        if deep:
            _check_members(conn, settings, report, name, tar)
            continue
        if (st.st_size, st.st_mtime_ns) == (size, mtime_ns):
            continue
        if st.st_size == size and hash_file(tar) == xxh3:
            report.bytes_read += size
            report.add("touched_tar", path, name, "same bytes, new mtime")
        else:
            report.add("changed_tar", path, name, "not the tar that was indexed: run `doit`")
    for tar in settings.shard_paths():
        name = shard_name(tar, settings)
        if name not in known:
            report.add("shard_new", os.path.relpath(tar, settings.root), name, "not indexed yet")


def _check_members(conn, settings: Settings, report: AuditReport, name: str, tar) -> None:
    """`--deep`: every sample member's bytes at its recorded offset hash as recorded."""
    rows = sorted(tar_layout.member_rows(conn, name).values(), key=lambda r: r["offset"])
    with open(tar, "rb") as f:
        for r in rows:
            f.seek(r["offset"])
            data = f.read(r["size"])
            report.bytes_read += len(data)
            report.checksums_checked += 1
            if len(data) != r["size"] or hash_bytes(data) != r["xxh3"]:
                report.add(
                    "corrupt_member",
                    os.path.relpath(tar, settings.root),
                    name,
                    f"member {r['member']!r} at offset {r['offset']} differs from what was "
                    "indexed: run `doit`",
                )


def _check_indexes(conn, settings: Settings, report: AuditReport) -> None:
    """Each done shard's index on disk holds what the manifest and partition make."""
    records = tar_layout.all_index_records(conn)
    for row in shards.rows(conn, "name", "path", "size", "xxh3", "part_xxh3", "status"):
        row = dict(zip(("name", "path", "size", "xxh3", "part_xxh3", "status"), row, strict=True))
        name = row["name"]
        rel = index_rel(settings, row["path"])
        if row["status"] != shards.DONE:
            if (settings.root / rel).exists():
                report.add("stale_index", rel, name, "its tar does not read: run `doit`")
            continue
        report.files_checked += 1
        try:
            text = (settings.root / rel).read_bytes()
        except FileNotFoundError:
            report.add("missing_index", rel, name, "webshart skips its tar: run `doit repair`")
            continue
        try:
            expected = expected_index(conn, settings, row)
        except OSError:
            continue  # the partition is missing: reported with the build files
        if text == index_bytes(expected):
            continue
        report.add("corrupt_index", rel, name, _difference(text, expected, records.get(name)))


def _difference(text: bytes, expected: dict, record: dict | None) -> str:
    """One line saying how an index differs from what it should hold."""
    try:
        found = json.loads(text)
        entries = found["files"]
    except (ValueError, KeyError, TypeError):
        return "not a webshart index: run `doit repair`"
    want = expected["files"]
    if set(entries) != set(want):
        extra, missing = sorted(set(entries) - set(want)), sorted(set(want) - set(entries))
        return f"lists other samples (extra {extra[:3]}, missing {missing[:3]}): run `doit repair`"
    for key in sorted(want):
        for field in ("offset", "length", "captions", "width", "height", "json_offset"):
            if entries[key].get(field) != want[key].get(field):
                return f"{key!r}: {field} differs from the manifest: run `doit repair`"
    if record is not None and hash_bytes(text) != record.get("xxh3"):
        return "differs from what the build wrote: run `doit repair`"
    return "differs from the manifest (settings changed since): run `doit`"


def repair_tars(settings: Settings):
    """`doit repair` for `layout = "tars"`: rewrite the indexes found damaged, and the
    table; a missing or changed tar needs the tar back (or `doit` to index the new one)."""
    from tasks.audit.repair import RepairResult, _rebuild_table

    result = RepairResult()
    result.before = before = audit_tars(settings)
    if before.of("no_manifest"):
        result.failed.append(f"{before.findings[0].detail}: run `doit` to build first")
        return result
    lost = before.of("missing_partition", "corrupt_partition")
    parts = sorted({f.shard for f in lost if f.shard})
    for name in parts:
        _reread(settings, name, result)
    index_kinds = ("missing_index", "corrupt_index", "stale_index")
    damaged = sorted({f.shard for f in before.of(*index_kinds)} | set(result.partitions))
    for name in damaged:
        write_index(settings, name)
        result.restored.append(index_rel_of(settings, name))
    if before.of("missing_table", "corrupt_table") or result.partitions:
        _rebuild_table(settings, result)
    result.after = audit_tars(settings)
    for f in result.after.findings:
        if f.severity == DAMAGE:
            result.failed.append(f"still {f.kind}: {f.path or ''} {f.detail}".strip())
    return result


def _reread(settings: Settings, name: str, result) -> None:
    """Rebuild a shard's partition by reading its tar again (there is no data/ to read)."""
    from state.manifest import write_transaction
    from tasks.extract.shard import extract_shard

    db = open_manifest(settings.root)
    try:
        row = shards.get(db, name)
        with write_transaction(db) as conn:
            tar_layout.reread(conn, name)
    finally:
        db.close()
    if row is None or not (settings.root / row["path"]).is_file():
        result.failed.append(f"partition of {name}: its tar is gone, so it cannot be rebuilt")
        return
    r = extract_shard(settings, settings.root / row["path"])
    if r.status == "failed":
        result.failed.append(f"partition of {name}: {r.error}")
    else:
        result.partitions.append(name)


def index_rel_of(settings: Settings, shard: str) -> str:
    """The index path of a shard the manifest knows (relative to root)."""
    db = open_manifest(settings.root)
    try:
        row = shards.get(db, shard)
    finally:
        db.close()
    return index_rel(settings, row["path"]) if row else shard
