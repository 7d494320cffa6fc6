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
and nothing on disk changes except the report (`tasks/audit/report.py`).
The `--deep` reading lives in `tasks/audit/deep.py`.
"""

from __future__ import annotations

import json
import os
import posixpath
import time
from collections import defaultdict
from dataclasses import dataclass, field
from stat import S_ISDIR, S_ISREG

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash

from state import files, meta, quirks, shards
from state.batching import batched
from state.caption_state import WRITING
from state.hashing import hash_file, read_regular
from state.kinds import EDITED_CAPTIONS, EDITED_SHARD_FILES, FileKind
from state.manifest import manifest_path, open_readonly
from tasks.audit.dataloader import check_dataloader
from tasks.audit.deep import Seen, deep_files
from tasks.audit.pairing import (
    LOOKUP_BATCH,
    Fingerprint,
    PairTallies,
    counted_in_data,
    images_without_caption,
    row_mismatches,
    strays,
)
from tasks.audit.report import KINDS, AuditReport
from tasks.audit.stat_pass import stat_all_rows
from tasks.caption_fields import blank_captions
from tasks.dataloader import dataloader_entry
from tasks.partition import read_partition
from tasks.pull.restore import note_restorable
from tasks.records import member_kind, parse_json
from tasks.settings import Settings, shard_name

IMAGE, JSON, CAPTION, PENDING = FileKind.IMAGE, FileKind.JSON, FileKind.CAPTION, FileKind.PENDING

EDITED_CAPTION_WORDS = (
    "edited by hand: kept (the table keeps the caption field's text); moved to "
    "edited/captions/ if a caption setting changes this caption's text"
)

# --------------------------------------------------------------------------- audit


def audit(settings: Settings, deep: bool = False) -> AuditReport:
    """Check `data/`, `incomplete/`, the partitions and the table against the manifest."""
    if settings.layout == "tars":  # no data/: the tars and their indexes instead
        from tasks.audit.tars import audit_tars

        return audit_tars(settings, deep)
    began = time.monotonic()
    report = AuditReport.begin(settings.root, deep)
    conn = open_readonly(settings.root)
    if conn is None:
        report.add("no_manifest", None, None, f"{manifest_path(settings.root)} does not exist")
        report.seconds = time.monotonic() - began
        return report
    try:
        # files first: the stat pass may fork, best while this process is small
        judge = _check_files(conn, settings, report, deep)
        table = _check_table_rows(settings, report)
        _check_pairs(conn, settings, judge, table)
        if not table.readable and not report.of("missing_table", "corrupt_table"):
            rel = os.path.relpath(settings.table_path, settings.root)
            if not report.of("unreadable_table"):
                report.add("missing_table", rel, None, "not built yet: run doit")
        _check_strays(conn, settings, judge.present_in_data, report)
        _check_edited_aside(settings, report)
        _check_partitions(conn, settings, report)
        _check_captions_current(conn, settings, report)
        _check_quirks(conn, report)
        _check_shards(conn, settings, report)
        note_restorable(conn, report)
        _check_duplicates(conn, report)
        _check_expected(conn, settings, report, table)
        check_dataloader(settings, report)
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
            blank = blank_captions(caption)
            _note_rows(report, "empty_caption", names, blank, "caption is empty or blank")
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
        deep_files(conn, root, report, judge)
    else:
        _fast_files(conn, root, judge)
    return judge


def _fast_files(conn, root: str, judge: _Judge) -> None:
    """Stat every file (`stat_pass`); look closer (`_look`) only where it is missing or
    its stat differs: full rows are fetched for those only."""
    found = stat_all_rows(conn, root, judge.textfile)
    judge.tallies.merge(found.tallies)
    judge.report.files_checked += found.same
    judge.present_in_data += found.present
    for chunk in batched(found.closer, LOOKUP_BATCH):
        for row in files.audit_rows(conn, chunk):
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
    if not S_ISREG(st.st_mode):
        return Seen(True, not_regular=True)
    seen = Seen(True, st.st_size, st.st_mtime_ns)
    if (st.st_size, st.st_mtime_ns) == (size, mtime_ns):
        seen.xxh3 = xxh3
    elif st.st_size == size or kind == JSON:
        seen.data = _read(root + path) if kind == JSON else None
        seen.xxh3 = xxhash.xxh3_128_hexdigest(seen.data) if seen.data is not None else None
        if seen.xxh3 is None:
            seen.xxh3 = hash_file(root + path)
    return seen


def _read(path: str) -> bytes | None:
    try:
        return read_regular(path)
    except OSError:
        return None


class _Judge:
    """Turns (manifest row, what is on disk) into findings; tallies what must pair up."""

    def __init__(self, settings: Settings, report: AuditReport):
        self.report = report
        self.textfile = settings.caption_strategy == "textfile"
        self.tallies = PairTallies(self.textfile)  # what must pair up, over every row
        self.tally = self.tallies.add
        self.present_in_data = 0  # manifest rows in data/ found on disk (trainer files aside)
        self.missing: set[str] = set()

    def __call__(self, row: tuple, seen: Seen) -> None:
        path, shard, kind, _sample, size, mtime_ns, xxh3 = row
        report = self.report
        report.files_checked += 1
        if kind == PENDING or (kind == CAPTION and mtime_ns == WRITING):
            self._unfinished(path, shard, seen)  # claimed or rewritten by an unfinished run
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
        if seen.not_regular:
            report.add(
                "not_regular_file",
                path,
                shard,
                f"a FIFO, device or socket stands where the build wrote this {kind}: "
                "remove it, then run `doit repair`",
            )
            return
        if counted_in_data(path):
            self.present_in_data += 1
        same_stat = (seen.size, seen.mtime_ns) == (size, mtime_ns)
        if seen.xxh3 is not None and seen.xxh3 == xxh3:
            if not same_stat:
                report.add("touched", path, shard, "mtime or size changed, content did not")
        else:
            self._changed(path, shard, kind, size, seen, same_stat)

    def _changed(
        self, path: str, shard: str | None, kind: str, size: int, seen: Seen, same_stat: bool
    ) -> None:
        """Content differs from the manifest: a hand edit we pick up, or damage."""
        report = self.report
        if kind == JSON:
            error = parse_json(seen.data)[1] if seen.data is not None else None
            if error:
                report.add(
                    "edited_json_unreadable",
                    path,
                    shard,
                    f"edited by hand, but your edit cannot be read ({error}), so the table "
                    "keeps its previous row: fix the file, then run doit",
                )
            else:
                report.add("edited_json", path, shard, "edited, picked up by the next doit")
        elif kind == CAPTION and not same_stat:  # written since the build: a hand edit
            report.add("edited_caption", path, shard, EDITED_CAPTION_WORDS)
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
    """Images without a caption or a table row, rows without an image (`pairing`)."""
    report, root = judge.report, str(settings.root) + os.sep
    tallies = judge.tallies
    if judge.textfile and tallies.wanted_captions != tallies.captions:
        for path, shard, cap in images_without_caption(conn, root, judge.missing):
            report.add("image_without_caption", path, shard, f"{cap} does not exist")
    if table.readable and table.filenames != tallies.images:
        rel = os.path.relpath(settings.table_path, settings.root)
        no_row, no_image = row_mismatches(conn, root, str(settings.table_path), judge.missing)
        for path, shard in no_row:
            report.add("image_without_row", path, shard, "the table has no row for it")
        for path in no_image:
            report.add("row_without_image", path, None, f"{rel} has a row for it, not in data/")


# --------------------------------------------------------------------------- the rest


def _check_strays(conn, settings: Settings, present: int, report: AuditReport) -> None:
    for path in strays(conn, str(settings.data_dir), present):
        is_image = member_kind(path) == IMAGE
        report.add(
            "stray",
            path,
            None,
            "image the build did not write: the trainer would load it"
            if is_image
            else "file the build did not write",
        )


def _check_edited_aside(settings: Settings, report: AuditReport) -> None:
    """Files of data/ edited by hand that the build moved to edited/ before replacing
    (caption files) or dropping (a changed shard's JSON or image) them."""
    folders = [(EDITED_CAPTIONS, "edited_caption_aside", "a new caption replaced it")]
    folders += [
        (folder, "edited_file_aside", "its shard's new tar holds another version or none")
        for folder in EDITED_SHARD_FILES.values()
    ]
    for folder, kind, why in folders:
        top = settings.root / folder
        if not top.is_dir():
            continue
        for dirpath, _dirs, names in os.walk(top):
            for name in sorted(names):
                path = os.path.relpath(os.path.join(dirpath, name), settings.root)
                report.add(kind, path, None, f"your edit, kept when {why}")


def _check_captions_current(conn, settings: Settings, report: AuditReport) -> None:
    """Shards whose caption files were made from another partition, or for other caption
    settings than the table's (a caption switch cut short, or one shard's task run alone).

    The table's settings are the reference, not the audit's own: a build with a one-off
    `caption_field=...` is finished as it is."""
    made_for: dict[str, tuple] = {}
    for name, part_xxh3, key in shards.rows(conn, "name", "part_xxh3", "captions_key"):
        if part_xxh3 is None:
            continue
        prefix = f"{part_xxh3} "
        if key is None or not key.startswith(prefix):
            _captions_unfinished(report, name, "were made from an earlier partition")
            continue
        try:
            fields, strategy, join = json.loads(key[len(prefix) :])
        except ValueError:
            _captions_unfinished(report, name, "were made by another version of shardprep")
            continue
        made_for[name] = (fields, join, strategy)
    table = meta.get(conn, meta.table_key(os.path.relpath(settings.table_path, settings.root)))
    strategies = {v[2] for v in made_for.values()}
    for name, (fields, join, strategy) in sorted(made_for.items()):
        if table is not None and [fields, join] != json.loads(table)[1:]:
            _captions_unfinished(report, name, "hold another caption field than the table")
        elif len(strategies) > 1 and strategy != settings.caption_strategy:
            _captions_unfinished(report, name, f"were made for caption_strategy = {strategy}")


def _captions_unfinished(report: AuditReport, shard: str, why: str) -> None:
    report.add(
        "captions_unfinished",
        None,
        shard,
        f"its caption files {why} (a caption switch or rebuild cut short): run doit to finish it",
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
    for shard, _ in shards.with_partition(conn):
        try:
            t = read_partition(settings, shard, columns)
        except (OSError, pa.ArrowException):
            continue  # missing or corrupt: reported with the files
        names = t.column("filename").to_pylist()
        _note_sizes(t, names, shard, report)
        _note_image_names(t, names, shard, report)


def _note_sizes(t: pa.Table, names: list[str], shard: str, report: AuditReport) -> None:
    """Sizes taken from the image header, and JSON sizes the header contradicts."""
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


def _note_image_names(t: pa.Table, names: list[str], shard: str, report: AuditReport) -> None:
    """JSON `image_name`s that are missing or differ from the member's file name."""
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
    aside = files.aside_members(conn)
    for shard, kind, member, path, detail in quirks.rows(conn):
        where = aside.get((shard, member)) or path
        words = f"{member}: {detail}" if member else detail
        if kind not in KINDS:
            report.add("quirk", where, shard, f"{kind}: {words}")
        else:
            report.add(kind, where, shard, words)


def _check_shards(conn, settings: Settings, report: AuditReport) -> None:
    known = set()
    for name, path, size, mtime_ns, status, error in shards.rows(
        conn, "name", "path", "size", "mtime_ns", "status", "error"
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
        name = shard_name(tar, settings)
        if name not in known:
            rel = os.path.relpath(tar, settings.root)
            report.add("shard_new", rel, name, "not extracted yet")
    for tar in settings.dangling_shards():
        rel = os.path.relpath(tar, settings.root)
        report.add("shard_failed", rel, shard_name(tar, settings), "a symlink to nothing")


def _check_duplicates(conn, report: AuditReport) -> None:
    """Images with the same content under several names (one grouped scan of the images)."""
    groups: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for digest, path, shard in files.duplicate_images(conn):
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
        samples = shards.total_samples(conn)
        report.samples = samples
    if samples != settings.expected_samples:
        report.add(
            "expected_samples",
            None,
            None,
            f"{samples} sample(s) in the build, expected_samples = {settings.expected_samples}",
        )
