"""`doit audit [--deep]`: check the disk against the manifest; change nothing but the report.

Fast (the default) is stat-level: a file whose size and mtime_ns match its manifest row
is not read; only a file whose stat differs is hashed (XXH3-128). `--deep` reads and
hashes every file the manifest lists (bit rot that kept size and mtime) and checks each
image against its JSON's own `md5_file_hash` / `sha512_hash`; it reports its read speed.
Where an image fails those, the tar's own members (read at their recorded offsets) tell
an edited checksum (a note) from a replaced image (damage).

Facts come from the manifest (`files`, `quirks`, `shards`), a walk of `data/`, the
partitions (one at a time, a few columns) and the table (in batches). Memory does not grow
with the number of files: whether images, captions and table rows pair up, and whether
`data/` holds only files the manifest knows, is settled by counts and order-free
fingerprints (`Fingerprint`); only where they differ are names looked up, a batch at a
time, to say which. The manifest is opened read-only (no WAL or lock files are created),
and nothing on disk changes except the report, written atomically to `state/audit.json`:

    {"generated_at": "2026-01-31T12:00:00Z",   # UTC, ISO 8601
     "root": "/abs/root", "deep": false,
     "ok": true,                               # false when any finding is "damage"
     "counts": {"<kind>": n, ...},             # findings per kind (kinds found only)
     "stats": {"files_checked", "bytes_read", "seconds", "mb_per_s",
               "checksums_checked", "samples"},
     "findings": [{"kind", "severity": "damage" | "note",   # one finding per line
                   "path",      # relative to root, or null
                   "shard",     # shard name, or null when not tied to one shard
                   "detail"}]}  # one line for a human

`KINDS` lists every kind with its severity. Damage (exit status 1) is something the build
wrote that is missing or corrupt, or a `data/` that is not trainer-safe; the shards' own
quirks, edited JSON files, deleted tars and an `expected_samples` mismatch are notes.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import sqlite3
import tarfile
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from stat import S_ISDIR

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash

from state.atomic import atomic_write
from state.hashing import hash_file
from state.manifest import manifest_path
from tasks.audit_pairing import (
    Fingerprint,
    batched,
    caption_of,
    counted_in_data,
    images_without_caption,
    row_mismatches,
    strays,
)
from tasks.dataloader import dataloader_entry
from tasks.progress import Progress, human_bytes
from tasks.records import parse_json
from tasks.settings import Settings, partition_path

DAMAGE = "damage"
NOTE = "note"
REPORT_NAME = "audit.json"
EXAMPLES = 3  # names shown per kind in the human summary

# kind -> (severity, what a count of them means; "{n}" is the count)
KINDS: dict[str, tuple[str, str]] = {
    "no_manifest": (DAMAGE, "no manifest: run `doit` first"),
    "missing_image": (DAMAGE, "{n} image(s) recorded in the manifest are missing"),
    "missing_json": (DAMAGE, "{n} JSON file(s) recorded in the manifest are missing"),
    "missing_caption": (DAMAGE, "{n} caption file(s) recorded in the manifest are missing"),
    "missing_aside": (DAMAGE, "{n} kept-aside file(s) under incomplete/ are missing"),
    "missing_partition": (DAMAGE, "{n} partition(s) under state/parts/ are missing"),
    "missing_table": (DAMAGE, "the table is missing"),
    "corrupt_image": (DAMAGE, "{n} image(s) differ from what the build wrote"),
    "corrupt_caption": (DAMAGE, "{n} caption file(s) differ from what the build wrote"),
    "corrupt_aside": (DAMAGE, "{n} kept-aside file(s) differ from what the build wrote"),
    "corrupt_partition": (DAMAGE, "{n} partition(s) differ from what the build wrote"),
    "corrupt_table": (DAMAGE, "the table differs from what the build wrote"),
    "unfinished": (DAMAGE, "{n} file(s) a killed run left unfinished: run doit to finish"),
    "missing_file": (DAMAGE, "{n} other file(s) recorded in the manifest are missing"),
    "corrupt_file": (DAMAGE, "{n} other file(s) differ from what the build wrote"),
    "stray": (DAMAGE, "{n} file(s) in data/ the manifest does not know"),
    "image_without_caption": (DAMAGE, "{n} image(s) in data/ have no <stem>.txt caption"),
    "image_without_row": (DAMAGE, "{n} image(s) in data/ have no table row"),
    "row_without_image": (DAMAGE, "{n} table row(s) name an image that is not in data/"),
    "unreadable_table": (DAMAGE, "the table cannot be read"),
    "checksum_mismatch": (DAMAGE, "{n} image(s) fail their JSON's md5_file_hash/sha512_hash"),
    "edited_json": (NOTE, "{n} JSON file(s) edited since the build: picked up by the next doit"),
    "edited_checksum": (NOTE, "{n} edited JSON file(s) give a hash their image does not have"),
    "shard_checksum_mismatch": (
        NOTE,
        "{n} image(s) in the tars fail their own JSON's md5_file_hash/sha512_hash",
    ),
    "touched": (NOTE, "{n} file(s) have a new mtime but the same content"),
    "refused": (NOTE, "{n} tar member(s) refused (unsafe path or not a regular file)"),
    "invalid_json": (NOTE, "{n} member(s) of samples whose JSON is invalid (kept aside)"),
    "json_without_image": (NOTE, "{n} JSON member(s) without an image (kept aside)"),
    "image_without_json": (NOTE, "{n} image member(s) without a JSON (kept aside)"),
    "duplicate_member": (NOTE, "{n} member(s) repeated in their tar (earlier copy kept aside)"),
    "duplicate_across_shards": (NOTE, "{n} file name(s) in two shards (the later kept aside)"),
    "second_image": (NOTE, "{n} second image(s) for one sample (kept aside)"),
    "bad_image": (NOTE, "{n} member(s) of samples with an unreadable image (kept aside)"),
    "unexpected_member": (NOTE, "{n} member(s) neither image nor JSON (kept aside)"),
    "quirk": (NOTE, "{n} other data quirk(s) of the shards"),
    "size_from_header": (NOTE, "{n} sample(s) have no usable width/height in their JSON"),
    "header_size_mismatch": (NOTE, "{n} image(s) whose header size differs from the JSON's"),
    "image_name_mismatch": (NOTE, "{n} JSON image_name(s) differ from the member's name"),
    "empty_caption": (NOTE, "{n} caption(s) are empty"),
    "caption_newlines": (
        NOTE,
        "{n} caption(s) contain newlines (under caption_strategy textfile each line becomes "
        "a separate caption); set join_caption_lines = true to join them",
    ),
    "too_small": (NOTE, "the generated entry would skip {n} image(s) as too small"),
    "duplicate_content": (NOTE, "{n} image content(s) stored under more than one name"),
    "tar_gone": (NOTE, "{n} shard tar(s) are gone (their samples stay; repair cannot use them)"),
    "tar_changed": (NOTE, "{n} shard tar(s) changed since extraction (the next doit checks)"),
    "shard_failed": (NOTE, "{n} shard(s) could not be read to their end"),
    "shard_new": (NOTE, "{n} shard tar(s) not extracted yet (run doit)"),
    "expected_samples": (NOTE, "the sample count differs from expected_samples"),
}
QUIRK_KINDS = (
    "refused",
    "invalid_json",
    "json_without_image",
    "image_without_json",
    "duplicate_member",
    "duplicate_across_shards",
    "second_image",
    "bad_image",
    "unexpected_member",
)

FILE_QUERY = "SELECT path, shard, kind, sample, size, mtime_ns, xxh3 FROM files"
BIG_FILE = 64 << 20


@dataclass
class Finding:
    """One thing the audit found."""

    kind: str
    severity: str
    path: str | None
    shard: str | None
    detail: str


@dataclass
class AuditReport:
    """What `audit` found, with the numbers of its run."""

    root: str
    deep: bool
    generated_at: str
    findings: list[Finding] = field(default_factory=list)
    files_checked: int = 0
    bytes_read: int = 0
    checksums_checked: int = 0
    samples: int | None = None
    seconds: float = 0.0
    context: dict[str, str] = field(default_factory=dict)  # extra words per kind

    @property
    def ok(self) -> bool:
        return not any(f.severity == DAMAGE for f in self.findings)

    @property
    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(f.kind for f in self.findings).items()))

    @property
    def mb_per_s(self) -> float:
        return self.bytes_read / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def add(self, kind: str, path: str | None, shard: str | None, detail: str, severity=None):
        self.findings.append(Finding(kind, severity or KINDS[kind][0], path, shard, detail))

    def of(self, *kinds: str) -> list[Finding]:
        return [f for f in self.findings if f.kind in kinds]

    def to_dict(self) -> dict:
        return {
            "generated_at": self.generated_at,
            "root": self.root,
            "deep": self.deep,
            "ok": self.ok,
            "counts": self.counts,
            "stats": {
                "files_checked": self.files_checked,
                "bytes_read": self.bytes_read,
                "seconds": round(self.seconds, 3),
                "mb_per_s": round(self.mb_per_s, 1),
                "checksums_checked": self.checksums_checked,
                "samples": self.samples,
            },
            "findings": [
                {
                    "kind": f.kind,
                    "severity": f.severity,
                    "path": f.path,
                    "shard": f.shard,
                    "detail": f.detail,
                }
                for f in self.findings
            ],
        }


@dataclass
class Seen:
    """What is on disk for one manifest row."""

    exists: bool
    size: int | None = None
    mtime_ns: int | None = None
    xxh3: str | None = None  # None: not read (its stat matched)
    data: bytes | None = None  # JSON bytes, kept when read (deep, or an edited JSON)


# --------------------------------------------------------------------------- manifest


def open_readonly(root: Path) -> sqlite3.Connection | None:
    """The manifest opened read-only, or None when there is none.

    With no `-wal` file beside it (no writer running, nothing left uncheckpointed) it is
    opened `immutable`, so SQLite creates no `-wal`/`-shm` files; otherwise `mode=ro`
    (those files exist already) so that the WAL's committed content is read.
    """
    path = manifest_path(root)
    if not path.is_file():
        return None
    uri = path.resolve().as_uri()
    wal = path.with_name(path.name + "-wal")
    conn = sqlite3.connect(
        f"{uri}?mode=ro" if wal.exists() else f"{uri}?immutable=1", uri=True, timeout=60
    )
    conn.execute("PRAGMA query_only=1")
    return conn


# --------------------------------------------------------------------------- audit


def audit(settings: Settings, deep: bool = False) -> AuditReport:
    """Check `data/`, `incomplete/`, the partitions and the table against the manifest."""
    began = time.monotonic()
    report = AuditReport(
        root=str(settings.root),
        deep=deep,
        generated_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    conn = open_readonly(settings.root)
    if conn is None:
        report.add("no_manifest", None, None, f"{manifest_path(settings.root)} does not exist")
        report.seconds = time.monotonic() - began
        return report
    try:
        # the file itself is opened read-only; this allows the TEMP table of row_mismatches
        conn.execute("PRAGMA query_only=0")
        table = _check_table_rows(settings, report)
        judge = _check_files(conn, settings, report, deep)
        _check_pairs(conn, settings, judge, table)
        if not table.readable and not report.of("missing_table", "corrupt_table"):
            rel = os.path.relpath(settings.table_path, settings.root)
            if not report.of("unreadable_table"):
                report.add("missing_table", rel, None, "not built yet: run doit")
        _check_strays(conn, settings, judge.present_in_data, report)
        _check_partitions(conn, settings, report)
        _check_quirks(conn, report)
        _check_shards(conn, settings, report)
        _check_duplicates(conn, report)
        _check_expected(conn, settings, report, table)
    finally:
        conn.close()
    report.seconds = time.monotonic() - began
    return report


@dataclass
class TableFacts:
    readable: bool
    rows: int = 0
    filenames: Fingerprint = field(default_factory=Fingerprint)  # as `data/<filename>`


def _check_table_rows(settings: Settings, report: AuditReport) -> TableFacts:
    """Fingerprint the table's filenames; note empty, multi-line and too-small captions/sizes."""
    facts = TableFacts(readable=False)
    path = settings.table_path
    if not path.is_file():
        return facts
    rel = os.path.relpath(path, settings.root)
    textfile = settings.caption_strategy == "textfile"
    too_small, words = _too_small_rule(settings)
    if words:
        report.context["too_small"] = words
    add = facts.filenames.add
    try:
        pf = pq.ParquetFile(path)
        batches = pf.iter_batches(columns=["filename", "width", "height", "caption"])
        for batch in batches:
            names = batch.column("filename").to_pylist()
            facts.rows += len(names)
            for name in names:
                add(f"data/{name}")
            caption = batch.column("caption")
            _note_rows(report, "empty_caption", names, pc.equal(caption, ""), "caption is empty")
            if textfile:
                multi = pc.match_substring_regex(caption, r"[\r\n]")
                _note_rows(
                    report,
                    "caption_newlines",
                    names,
                    multi,
                    "caption has line breaks: read as several captions",
                )
            if too_small is not None:
                width, height = batch.column("width"), batch.column("height")
                small = _true_indices(too_small(width, height))
                if small:
                    widths, heights = width.to_pylist(), height.to_pylist()
                    for i in small:
                        report.add(
                            "too_small",
                            f"data/{names[i]}",
                            None,
                            f"{widths[i]}x{heights[i]} is under {words}",
                        )
    except (OSError, pa.ArrowException, KeyError) as exc:
        report.add("unreadable_table", rel, None, f"cannot read {rel}: {exc}")
        return facts
    facts.readable = True
    report.samples = facts.rows
    return facts


def _true_indices(mask: pa.Array) -> list[int]:
    return pc.indices_nonzero(pc.fill_null(mask, False)).to_pylist()


def _note_rows(report, kind: str, names: list[str], mask, detail: str) -> None:
    for i in _true_indices(mask):
        report.add(kind, f"data/{names[i]}", None, detail)


def _too_small_rule(settings: Settings):
    """(mask(width, height), words) for SimpleTuner's minimum_image_size, or (None, "")."""
    entry = dataloader_entry(settings)
    minimum = entry.get("minimum_image_size")
    kind = entry.get("resolution_type")
    if not isinstance(minimum, int | float) or isinstance(minimum, bool) or minimum <= 0:
        return None, ""
    if kind == "pixel_area":  # SimpleTuner turns pixel_area into area (pixels squared / 1e6)
        minimum, kind = minimum * minimum / 1e6, "area"
    words = (
        f"minimum_image_size = {entry['minimum_image_size']}, "
        f"resolution_type = {entry.get('resolution_type')}"
    )
    if kind == "pixel":

        def mask(width, height):
            return pc.or_(pc.less(width, minimum), pc.less(height, minimum))

        return mask, words
    if kind != "area":
        return None, ""
    area = minimum * 1_000_000
    square_crop = bool(entry.get("crop")) and entry.get("crop_aspect", "square") == "square"
    edge = int(area**0.5)

    def area_mask(width, height):
        small = pc.less(pc.multiply(pc.cast(width, pa.float64()), height), area)
        if square_crop:
            small = pc.or_(small, pc.or_(pc.less(width, edge), pc.less(height, edge)))
        return small

    return area_mask, words


# --------------------------------------------------------------------------- files


def _check_files(conn, settings: Settings, report: AuditReport, deep: bool) -> _Judge:
    """Every manifest row against the disk (stat-level, or read in full with `deep`)."""
    root = str(settings.root) + os.sep
    judge = _Judge(settings, report)
    if deep:
        _deep_files(conn, root, report, judge)
    else:
        _fast_files(conn, root, judge)
    return judge


def _fast_files(conn, root: str, judge: _Judge) -> None:
    """Stat every file; look closer (`_look`) only where it is missing or its stat differs.

    The common case (stat matches) is one short loop over a lean query (path, size,
    mtime_ns, kind, sample); full rows are fetched for the rest only.
    Serial on purpose: measured here, threads did not make 90k stats faster (the time is
    the kernel's, and the GIL hand-offs cost what the overlap gains).
    """
    stat, tally = os.stat, judge.tally
    closer: list[str] = []
    same = present = 0
    cursor = conn.execute("SELECT path, size, mtime_ns, kind, sample FROM files")
    while batch := cursor.fetchmany(8192):
        for path, size, mtime_ns, kind, sample in batch:
            tally(path, kind, sample)
            try:
                st = stat(root + path)
            except (FileNotFoundError, NotADirectoryError):
                closer.append(path)
                continue
            if st.st_size != size or st.st_mtime_ns != mtime_ns:
                closer.append(path)
                continue
            same += 1
            if counted_in_data(path):
                present += 1
    judge.report.files_checked += same
    judge.present_in_data += present
    for chunk in batched(closer):
        marks = ",".join("?" * len(chunk))
        for row in conn.execute(f"{FILE_QUERY} WHERE path IN ({marks})", chunk):
            judge(row, _look(root, row))


def _look(root: str, row: tuple) -> Seen:
    """Stat one file; hash it only when its size is right but its mtime is not."""
    path, _shard, kind, _sample, size, mtime_ns, xxh3 = row
    try:
        st = os.stat(root + path)
    except (FileNotFoundError, NotADirectoryError):
        return Seen(False)
    if S_ISDIR(st.st_mode):
        return Seen(False)
    seen = Seen(True, st.st_size, st.st_mtime_ns)
    if (st.st_size, st.st_mtime_ns) == (size, mtime_ns):
        seen.xxh3 = xxh3
    elif st.st_size == size or kind == "json":
        seen.data = _read(root + path) if kind == "json" else None
        seen.xxh3 = xxhash.xxh3_128_hexdigest(seen.data) if seen.data is not None else None
        if seen.xxh3 is None:
            seen.xxh3 = hash_file(root + path)
    return seen


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


class _Judge:
    """Turns (manifest row, what is on disk) into findings; tallies what must pair up."""

    def __init__(self, settings: Settings, report: AuditReport):
        self.report = report
        self.textfile = settings.caption_strategy == "textfile"
        self.images = Fingerprint()  # image rows in data/
        self.wanted_captions = Fingerprint()  # their caption paths
        self.captions = Fingerprint()  # caption rows
        self.present_in_data = 0  # manifest rows in data/ found on disk (trainer files aside)
        self.missing: set[str] = set()

    def tally(self, path: str, kind: str, sample: str | None) -> None:
        """Count a manifest row into the fingerprints (every row, whatever the disk holds)."""
        if kind == "image":
            if path.startswith("data/"):
                self.images.add(path)
                if self.textfile:
                    self.wanted_captions.add(caption_of(path, sample))
        elif kind == "caption":
            self.captions.add(path)

    def __call__(self, row: tuple, seen: Seen) -> None:
        path, shard, kind, _sample, size, mtime_ns, xxh3 = row
        report = self.report
        report.files_checked += 1
        if kind == "pending":  # claimed by a run that did not finish it
            self._unfinished(path, shard, seen)
            return
        if not seen.exists:
            self.missing.add(path)
            report.add(
                f"missing_{kind}" if f"missing_{kind}" in KINDS else "missing_file",
                path,
                shard,
                f"recorded in the manifest ({kind}, {size} bytes), not on disk",
            )
            return
        if counted_in_data(path):
            self.present_in_data += 1
        same_stat = (seen.size, seen.mtime_ns) == (size, mtime_ns)
        if seen.xxh3 is not None and seen.xxh3 == xxh3:
            if not same_stat:
                report.add("touched", path, shard, "mtime or size changed, content did not")
        elif kind == "json":
            report.add("edited_json", path, shard, _edited_words(seen))
        else:
            how = (
                f"{seen.size} bytes, the build wrote {size}"
                if seen.size != size
                else "same size"
                + (" and mtime" if same_stat else "")
                + ", different content (XXH3)"
            )
            name = f"corrupt_{kind}" if f"corrupt_{kind}" in KINDS else "corrupt_file"
            report.add(name, path, shard, how)

    def _unfinished(self, path: str, shard: str | None, seen: Seen) -> None:
        if not seen.exists:
            self.missing.add(path)
            words = "claimed by a killed run, never written"
        else:
            if counted_in_data(path):
                self.present_in_data += 1
            words = "written by a killed run, maybe only in part"
        self.report.add("unfinished", path, shard, f"{words}: run doit to finish the build")


def _check_pairs(conn, settings: Settings, judge: _Judge, table: TableFacts) -> None:
    """Images without a caption or a table row, rows without an image (`audit_pairing`)."""
    report, root = judge.report, str(settings.root) + os.sep
    if judge.textfile and judge.wanted_captions != judge.captions:
        for path, shard, cap in images_without_caption(conn, root, judge.missing):
            report.add("image_without_caption", path, shard, f"{cap} does not exist")
    if table.readable and table.filenames != judge.images:
        rel = os.path.relpath(settings.table_path, settings.root)
        no_row, no_image = row_mismatches(conn, root, str(settings.table_path), judge.missing)
        for path, shard in no_row:
            report.add("image_without_row", path, shard, "the table has no row for it")
        for path in no_image:
            report.add("row_without_image", path, None, f"{rel} has a row for it, not in data/")


def _edited_words(seen: Seen) -> str:
    words = "edited, picked up by the next doit"
    if seen.data is not None:
        _, error = parse_json(seen.data)
        if error:
            words += f"; but it is not usable now ({error}): fix it first"
    return words


# --------------------------------------------------------------------------- deep


def _deep_work(conn) -> Iterator[list[tuple]]:
    """Manifest rows in batches for the readers, each sample's JSON right before its image.

    One pass in table order (the build records a sample's JSON and image together, so the
    partner is usually near and few rows wait in `pending`).
    """
    pending: dict[tuple, tuple] = {}
    batch: list[tuple] = []
    cursor = conn.execute(FILE_QUERY)
    while rows := cursor.fetchmany(4096):
        for r in rows:
            kind = r[2]
            if (kind == "json" or kind == "image") and r[0].startswith("data/"):
                key = (r[1], r[3])
                other = pending.pop(key, None)
                if other is None:
                    pending[key] = r
                    continue
                batch += (other, r) if kind == "image" else (r, other)
            else:
                batch.append(r)
            if len(batch) >= 256:
                yield batch
                batch = []
    batch.extend(pending.values())
    for i in range(0, len(batch), 256):
        yield batch[i : i + 256]


def _deep_files(conn, root: str, report: AuditReport, judge: _Judge) -> None:
    """Read and hash every file in reader threads; judge the results in order."""
    total = conn.execute("SELECT coalesce(sum(size), 0) FROM files").fetchone()[0]
    progress = Progress("audit --deep", total)
    workers = min(16, 4 * (os.cpu_count() or 1))  # reads wait on the disk: keep it busy
    mismatches: list = []
    try:
        with ThreadPoolExecutor(workers) as pool:
            for batch, results in _bounded_map(
                pool, lambda b: _read_batch(root, b), _deep_work(conn), workers * 2
            ):
                last_json = None
                for row, got in zip(batch, results, strict=True):
                    judge.tally(row[0], row[2], row[3])
                    if got is None:
                        judge(row, Seen(False))
                        continue
                    size, mtime_ns, digest, data, checks = got
                    report.bytes_read += size
                    if digest == row[6] and size == row[4] and mtime_ns == row[5]:
                        judge.report.files_checked += 1
                        if counted_in_data(row[0]):
                            judge.present_in_data += 1
                    else:
                        judge(row, Seen(True, size, mtime_ns, digest, data))
                    if row[2] == "json":
                        last_json = (row, digest)
                    elif checks and last_json and last_json[0][1:4:2] == row[1:4:2]:
                        _judge_checksums(report, last_json, row, digest, checks, mismatches)
                progress.update(report.bytes_read)
    finally:
        progress.close()
    _settle_checksums(conn, Path(root), mismatches, report)


def _bounded_map(pool, fn: Callable, items: Iterable, ahead: int):
    """(item, fn(item)) in order, with at most `ahead` calls in flight (memory stays flat)."""
    pending: deque = deque()
    for item in items:
        pending.append((item, pool.submit(fn, item)))
        if len(pending) >= ahead:
            item0, fut = pending.popleft()
            yield item0, fut.result()
    while pending:
        item0, fut = pending.popleft()
        yield item0, fut.result()


def _read_batch(root: str, batch: list[tuple]) -> list:
    """Read and hash each row's file (a reader thread's work); None for a missing file.

    Each result is (size, mtime_ns, xxh3, bytes of an edited JSON or None, checks).
    A JSON in data/ gives the checksums its image must have; the image right after it is
    then hashed with md5/sha512 too, and `checks` is (wanted, got) for it.
    """
    out: list = []
    append = out.append
    want: dict[str, str] = {}
    want_of = None
    xxh3 = xxhash.xxh3_128_hexdigest
    for row in batch:
        path, kind = row[0], row[2]
        if path.startswith("data/"):
            if kind == "json":
                got = _read_hash(root + path, {})
                if got is None:
                    append(None)
                    continue
                data = got[3]
                want, want_of = wanted_from_bytes(data), (row[1], row[3])
                append((got[0], got[1], got[2], data if got[2] != row[6] else None, None))
                continue
            if kind == "image" and want and want_of == (row[1], row[3]):
                got = _read_hash(root + path, want)
                append(None if got is None else (got[0], got[1], got[2], None, got[4]))
                continue
        try:
            fd = os.open(root + path, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            append(None)
            continue
        try:  # the common case inline: a small file, one read
            st = os.fstat(fd)
            if S_ISDIR(st.st_mode):
                append(None)
                continue
            if st.st_size < BIG_FILE:
                data = os.read(fd, st.st_size + 1)
                if len(data) <= st.st_size:
                    append((len(data), st.st_mtime_ns, xxh3(data), None, None))
                    continue
        finally:
            os.close(fd)
        got = _read_hash(root + path, {})
        append(None if got is None else (got[0], got[1], got[2], None, None))
    return out


MD5_FIELD = re.compile(rb'"md5_file_hash"\s*:\s*"\s*([0-9a-fA-F]+)\s*"')
SHA512_FIELD = re.compile(rb'"sha512_hash"\s*:\s*"\s*([0-9a-fA-F]+)\s*"')


def wanted_from_bytes(raw: bytes | None) -> dict[str, str]:
    """`wanted_checksums` of a JSON file's bytes; a plain one is not parsed (a regex finds
    the two fields), anything unusual (a key twice, a value not hex) is."""
    if not raw:
        return {}
    want = {}
    for key, algo, pattern in (
        (b'"md5_file_hash"', "md5", MD5_FIELD),
        (b'"sha512_hash"', "sha512", SHA512_FIELD),
    ):
        n = raw.count(key)
        if not n:
            continue
        found = pattern.search(raw) if n == 1 else None
        if found is None:
            obj, _ = parse_json(raw)
            return wanted_checksums(obj)
        want[algo] = found.group(1).decode("ascii").lower()
    return want


def wanted_checksums(obj: dict | None) -> dict[str, str]:
    """The hex md5/sha512 a sample's JSON gives for its image (`md5_file_hash`, `sha512_hash`)."""
    if not obj:
        return {}
    want = {}
    for field_name, algo in (("md5_file_hash", "md5"), ("sha512_hash", "sha512")):
        value = obj.get(field_name)
        if isinstance(value, str) and value.strip():
            want[algo] = value.strip().lower()
    return want


def _read_hash(path: str, want: dict[str, str]) -> tuple | None:
    """Read a file once: (size, mtime_ns, xxh3, bytes or None, (want, got) or None).

    A small file is read in one call (its bytes are returned); a big one in chunks.
    `want` names md5/sha512 digests to compute as well. None: the file is not there.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        st = os.fstat(fd)
        if S_ISDIR(st.st_mode):
            return None
        ask = min(st.st_size + 1, BIG_FILE)
        data = os.read(fd, ask)
        if len(data) < ask:  # the whole file (a short read of a regular file is its end)
            got = {algo: hashlib.new(algo, data).hexdigest() for algo in want}
            checks = (want, got) if want else None
            return len(data), st.st_mtime_ns, xxhash.xxh3_128_hexdigest(data), data, checks
        h = xxhash.xxh3_128()
        extra = {algo: hashlib.new(algo) for algo in want}
        size = 0
        while data:
            size += len(data)
            h.update(data)
            for e in extra.values():
                e.update(data)
            data = os.read(fd, BIG_FILE)
    finally:
        os.close(fd)
    got = {algo: e.hexdigest() for algo, e in extra.items()}
    return size, st.st_mtime_ns, h.hexdigest(), None, (want, got) if want else None


def _judge_checksums(report, last_json, image_row, digest, checks, mismatches) -> None:
    """Count an image checked against its JSON's md5/sha512; keep mismatches for later."""
    want, got = checks
    if digest != image_row[6]:
        return  # reported as corrupt_image already
    report.checksums_checked += 1
    if got == want:
        return
    wrong = [algo for algo in want if got.get(algo) != want[algo]]
    if wrong:
        json_row, json_digest = last_json
        mismatches.append((json_row, json_digest, image_row, want, got, wrong))


def _settle_checksums(conn, root: Path, mismatches: list, report: AuditReport) -> None:
    """Decide what an image failing its JSON's checksum means, from the tar's own members.

    The JSON's checksum fields differ from the tar's JSON: an edit (note). Else the tar's
    image passes where the one in data/ fails: the image was replaced (damage, repair
    restores it). Else the shard's own image fails its checksum (a note on the source).
    Without the tar: damage, unless the JSON is edited since the build (note).
    """
    names = {"md5": "md5_file_hash", "sha512": "sha512_hash"}
    tars = {n: p for n, p in conn.execute("SELECT name, path FROM shards")}
    for json_row, json_digest, image_row, want, got, wrong in mismatches:
        image, shard = image_row[0], image_row[1]
        detail = ", ".join(f"{a} {got[a][:12]}… but {names[a]} {want[a][:12]}…" for a in wrong)
        tar = root / tars[shard] if tars.get(shard) else None
        if tar is None or not tar.is_file():
            if json_digest != json_row[6]:
                report.add("edited_checksum", json_row[0], shard, f"{image}: {detail}")
            else:
                report.add(
                    "checksum_mismatch", image, shard, f"{detail}; its tar is gone (cannot tell)"
                )
            continue
        original_json = member_bytes(conn, tar, json_row[0])
        if original_json is not None:
            obj, _ = parse_json(original_json)
            if wanted_checksums(obj) != want:
                report.add("edited_checksum", json_row[0], shard, f"{image}: {detail}")
                continue
        original_image = member_bytes(conn, tar, image)
        if original_image is not None and checksums_match(original_image, want):
            report.add(
                "checksum_mismatch",
                image,
                shard,
                f"{detail}; the tar's member passes: the image was replaced",
            )
        elif original_image is not None:
            report.add(
                "shard_checksum_mismatch",
                image,
                shard,
                f"{detail}; the tar's own member fails too (damaged at the source)",
            )
        else:
            report.add("checksum_mismatch", image, shard, f"{detail}; the tar changed")


def checksums_match(data: bytes, want: dict[str, str]) -> bool:
    return all(hashlib.new(algo, data).hexdigest() == value for algo, value in want.items())


def member_bytes(conn, tar: Path, path: str) -> bytes | None:
    """The bytes of the tar member a manifest row came from, or None (tar changed)."""
    row = conn.execute("SELECT member, offset FROM files WHERE path = ?", (path,)).fetchone()
    if row is None:
        return None
    try:
        with open(tar, "rb") as fh:
            return read_member(fh, row[0], row[1])
    except OSError:
        return None


def read_member(fh, member: str | None, offset: int | None) -> bytes | None:
    """A member's bytes at its recorded data offset, if the tar header before it names it."""
    if offset is None or offset < tarfile.BLOCKSIZE or not member:
        return None
    fh.seek(offset - tarfile.BLOCKSIZE)
    block = fh.read(tarfile.BLOCKSIZE)
    try:
        info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.TarError:
        return None
    # a long name is cut to its first 100 bytes in the header itself (GNU/pax)
    if not (info.name == member or (len(info.name) >= 99 and member.startswith(info.name))):
        return None
    data = fh.read(info.size)
    return data if len(data) == info.size else None


# --------------------------------------------------------------------------- the rest


def _check_strays(conn, settings: Settings, present: int, report: AuditReport) -> None:
    for path in strays(conn, str(settings.data_dir), present):
        is_image = posixpath.splitext(path)[1].lower() in (".png", ".jpg", ".jpeg")
        report.add(
            "stray",
            path,
            None,
            "image the build did not write: the trainer would load it"
            if is_image
            else "file the build did not write",
        )


def _check_partitions(conn, settings: Settings, report: AuditReport) -> None:
    """Size and name notes from each shard's partition (a few columns, one at a time)."""
    columns = [
        "filename",
        "width",
        "height",
        "size_source",
        "header_width",
        "header_height",
        "image_name",
    ]
    for (shard,) in conn.execute(
        "SELECT name FROM shards WHERE part_xxh3 IS NOT NULL ORDER BY name"
    ).fetchall():
        part = partition_path(settings, shard)
        try:
            t = pq.read_table(part, columns=columns)
        except (OSError, pa.ArrowException):
            continue  # missing or corrupt: reported with the files
        names = t.column("filename").to_pylist()
        header = pc.equal(t.column("size_source"), "header")
        for i in _true_indices(header):
            report.add(
                "size_from_header",
                f"data/{names[i]}",
                shard,
                "JSON has no usable width/height: the image header's "
                f"{t['header_width'][i].as_py()}x{t['header_height'][i].as_py()} is used",
            )
        differs = pc.and_(
            pc.invert(header),
            pc.or_(
                pc.not_equal(t.column("width"), t.column("header_width")),
                pc.not_equal(t.column("height"), t.column("header_height")),
            ),
        )
        for i in _true_indices(differs):
            report.add(
                "header_size_mismatch",
                f"data/{names[i]}",
                shard,
                f"JSON says {t['width'][i].as_py()}x{t['height'][i].as_py()}, the image header "
                f"{t['header_width'][i].as_py()}x{t['header_height'][i].as_py()}",
            )
        base = pc.replace_substring_regex(t.column("filename"), pattern=r"^.*/", replacement="")
        wrong = pc.fill_null(pc.not_equal(t.column("image_name"), base), True)
        for i in _true_indices(wrong):
            name = t["image_name"][i].as_py()
            report.add(
                "image_name_mismatch",
                f"data/{names[i]}",
                shard,
                "JSON has no image_name"
                if name is None
                else f"JSON image_name {name!r}, the member is {posixpath.basename(names[i])!r}",
            )


def _check_quirks(conn, report: AuditReport) -> None:
    aside = {
        (shard, member): path
        for shard, member, path in conn.execute(
            "SELECT shard, member, path FROM files WHERE kind = 'aside'"
        )
    }
    for shard, kind, member, path, detail in conn.execute(
        "SELECT shard, kind, member, path, detail FROM quirks ORDER BY shard, rowid"
    ):
        where = aside.get((shard, member)) or path
        words = f"{member}: {detail}" if member else detail
        if kind not in KINDS:
            report.add("quirk", where, shard, f"{kind}: {words}")
        else:
            report.add(kind, where, shard, words)


def _check_shards(conn, settings: Settings, report: AuditReport) -> None:
    known = set()
    for name, path, size, mtime_ns, status, error in conn.execute(
        "SELECT name, path, size, mtime_ns, status, error FROM shards ORDER BY name"
    ):
        known.add(name)
        try:
            st = os.stat(settings.root / path)
        except FileNotFoundError:
            report.add("tar_gone", path, name, "its extracted samples stay in the build")
            continue
        if status == "failed":
            report.add("shard_failed", path, name, error or "not read to its end")
        elif (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
            report.add("tar_changed", path, name, "size or mtime differs from the extracted tar")
    for tar in settings.shard_paths():
        name = tar.name[:-4] if tar.name.endswith(".tar") else tar.name
        if name not in known:
            rel = os.path.relpath(tar, settings.root)
            report.add("shard_new", rel, name, "not extracted yet")


def _check_duplicates(conn, report: AuditReport) -> None:
    """Images with the same content under several names (one grouped scan of the images)."""
    groups: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for digest, path, shard in conn.execute(
        "SELECT xxh3, path, shard FROM files WHERE kind = 'image' AND xxh3 IN "
        "(SELECT xxh3 FROM files WHERE kind = 'image' GROUP BY xxh3 HAVING count(*) > 1)"
    ):
        groups[digest].append((path, shard))
    for members in groups.values():
        members.sort()
        (first, shard), others = members[0], [p for p, _ in members[1:]]
        report.add("duplicate_content", first, shard, "same bytes as " + ", ".join(others))


def _check_expected(conn, settings: Settings, report: AuditReport, table: TableFacts) -> None:
    if settings.expected_samples is None:
        return
    samples = table.rows if table.readable else None
    if samples is None:
        samples = conn.execute("SELECT coalesce(sum(samples), 0) FROM shards").fetchone()[0]
        report.samples = samples
    if samples != settings.expected_samples:
        report.add(
            "expected_samples",
            None,
            None,
            f"{samples} sample(s) in the build, expected_samples = {settings.expected_samples}",
        )


# --------------------------------------------------------------------------- output


def report_path(settings: Settings) -> Path:
    """Where the machine-readable report goes: `<root>/state/audit.json`."""
    return settings.state_dir / REPORT_NAME


def write_report(settings: Settings, report: AuditReport) -> Path:
    """Write the report atomically to `state/audit.json`; return its path."""
    path = report_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = report.to_dict()
    findings = data.pop("findings")
    head = json.dumps(data, ensure_ascii=False, indent=1)  # ends with "\n}"
    # one finding per line: inside a JSON string every quote is escaped, so the text
    # '}, {"kind": ' only ever occurs between two findings
    rows = json.dumps(findings, ensure_ascii=False)[1:-1].replace('}, {"kind": ', '},\n  {"kind": ')
    text = head[:-2] + ',\n "findings": [' + (f"\n  {rows}\n ]" if rows else "]") + "\n}\n"
    atomic_write(path, text.encode("utf-8"))
    return path


def load_report(settings: Settings) -> dict | None:
    """The last written report, or None when there is none (or it cannot be read)."""
    try:
        data = json.loads(report_path(settings).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def format_report(report: AuditReport, settings: Settings | None = None) -> str:
    """The short human summary: a verdict, then per kind its count and first names."""
    damage = sum(1 for f in report.findings if f.severity == DAMAGE)
    notes = len(report.findings) - damage
    mode = "deep" if report.deep else "fast"
    verdict = "OK" if report.ok else "DAMAGE"
    lines = [f"audit ({mode}) of {report.root}: {verdict}: {damage} damage, {notes} note(s)"]
    if report.samples is not None:
        lines[0] += f"; {report.samples} sample(s) in the table"
    by_kind: dict[str, list[Finding]] = defaultdict(list)
    for f in report.findings:
        by_kind[f.kind].append(f)
    order = sorted(by_kind, key=lambda k: (by_kind[k][0].severity != DAMAGE, k))
    for kind in order:
        found = by_kind[kind]
        severity = "DAMAGE" if found[0].severity == DAMAGE else "note"
        text = KINDS.get(kind, (NOTE, kind + ": {n}"))[1].format(n=len(found))
        if kind in report.context:
            text += f" ({report.context[kind]})"
        more = f", … {len(found) - EXAMPLES} more" if len(found) > EXAMPLES else ""
        lines.append(f"  {severity:6} {kind}: {text}")
        if all(f.path for f in found[:EXAMPLES]):
            names = ", ".join(f.path for f in found[:EXAMPLES])
            lines.append(f"         {'' if len(found) == 1 else 'e.g. '}{names}{more}")
        else:
            lines.append(f"         {found[0].detail}{more}")
    if report.deep:
        lines.append(
            f"  read {human_bytes(report.bytes_read)} in {report.files_checked} file(s) in "
            f"{report.seconds:.1f} s: {report.mb_per_s:.1f} MB/s; "
            f"{report.checksums_checked} image(s) checked against md5_file_hash/sha512_hash"
        )
    if settings is not None:
        lines.append(f"  full list: {report_path(settings)}")
    if not report.ok and not report.of("no_manifest"):
        lines.append("  run `doit repair` to restore what the build wrote")
    return "\n".join(lines)
