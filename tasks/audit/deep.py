"""`doit audit --deep`: read and hash every file the manifest lists, in reader threads,
and check each image against its JSON's own `md5_file_hash` / `sha512_hash`. Where an
image fails those, the tar's own members (read at their recorded offsets) tell an edited
checksum (a note) from a replaced image (damage). In the same read, each image is checked
to be whole (`tasks/imagecheck.py`): one that is cut or corrupt inside but has the bytes
the build wrote came so from its tar (a note, `truncated_image`); one whose bytes changed
is damage already (`corrupt_image`)."""

from __future__ import annotations

import hashlib
import os
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISDIR, S_ISREG
from typing import NamedTuple

import xxhash

from state import files, quirks, shards
from state.batching import batched
from state.kinds import FileKind
from tasks.audit.pairing import counted_in_data
from tasks.audit.report import AuditReport
from tasks.extract.tarstream import read_member
from tasks.imagecheck import ImageCheck, image_problem
from tasks.progress import Progress
from tasks.records import parse_json

IMAGE, JSON = FileKind.IMAGE, FileKind.JSON
_PAIRED = frozenset((IMAGE, JSON))  # a sample's files: read JSON first, then its image

BIG_FILE = 64 << 20


# positions in a `files.AUDIT_COLUMNS` row
PATH, SHARD, KIND, SAMPLE, SIZE, MTIME_NS, XXH3 = (
    files.AUDIT_COLUMNS.index(c)
    for c in ("path", "shard", "kind", "sample", "size", "mtime_ns", "xxh3")
)


class Read(NamedTuple):
    """What a reader thread found for one manifest row's file."""

    size: int
    mtime_ns: int
    xxh3: str
    data: bytes | None = None  # an edited JSON's bytes (the judge reads it)
    checks: tuple[dict, dict] | None = None  # an image's (wanted, got) md5/sha512
    problem: str | None = None  # why an image is not whole, else None


class Mismatch(NamedTuple):
    """An image whose md5/sha512 differ from what its sample's JSON says."""

    json_row: tuple
    json_digest: str
    image_row: tuple
    want: dict[str, str]
    got: dict[str, str]
    wrong: list[str]


@dataclass
class Seen:
    """What is on disk for one manifest row."""

    exists: bool
    size: int | None = None
    mtime_ns: int | None = None
    xxh3: str | None = None  # None: not read (its stat matched)
    data: bytes | None = None  # JSON bytes, kept when read (deep, or an edited JSON)
    not_regular: bool = False  # a FIFO, device or socket stands where the file was: never read


NOT_REGULAR = "not a regular file"  # what a read returns for a FIFO, device or socket
READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK  # a FIFO never blocks the open


def _deep_work(conn) -> Iterator[list[tuple]]:
    """Manifest rows in batches for the readers, each sample's JSON right before its image.

    One pass in table order (the build records a sample's JSON and image together, so the
    partner is usually near and few rows wait in `pending`).
    """
    pending: dict[tuple, tuple] = {}
    batch: list[tuple] = []
    cursor = files.audit_rows(conn)
    while rows := cursor.fetchmany(4096):
        for r in rows:
            kind = r[KIND]
            if kind in _PAIRED and r[PATH].startswith("data/"):
                key = (r[SHARD], r[SAMPLE])
                other = pending.pop(key, None)
                if other is None:
                    pending[key] = r
                    continue
                batch += (other, r) if kind == IMAGE else (r, other)
            else:
                batch.append(r)
            if len(batch) >= 256:
                yield batch
                batch = []
    batch.extend(pending.values())
    yield from batched(batch, 256)


def deep_files(conn, root: str, report: AuditReport, judge) -> None:
    """Read and hash every file in reader threads; judge the results in order."""
    total = files.total_size(conn)
    progress = Progress("audit --deep", total)
    workers = min(16, 4 * (os.cpu_count() or 1))  # reads wait on the disk: keep it busy
    mismatches: list = []
    cut: list[tuple[str, str, str]] = []
    try:
        with ThreadPoolExecutor(workers) as pool:
            for batch, results in _bounded_map(
                pool, lambda b: _read_batch(root, b), _deep_work(conn), workers * 2
            ):
                last_json = None
                for row, got in zip(batch, results, strict=True):
                    judge.tally(row[PATH], row[KIND], row[SAMPLE])
                    if got is None or got is NOT_REGULAR:
                        judge(row, Seen(got is NOT_REGULAR, not_regular=got is NOT_REGULAR))
                        continue
                    digest = got.xxh3
                    report.bytes_read += got.size
                    if got.problem is not None and digest == row[XXH3]:
                        cut.append((row[PATH], row[SHARD], got.problem))
                    if (
                        digest == row[XXH3]
                        and got.size == row[SIZE]
                        and got.mtime_ns == row[MTIME_NS]
                    ):
                        judge.report.files_checked += 1
                        if counted_in_data(row[PATH]):
                            judge.present_in_data += 1
                    else:
                        judge(row, Seen(True, got.size, got.mtime_ns, digest, got.data))
                    if row[KIND] == JSON:
                        last_json = (row, digest)
                    elif got.checks and last_json and _same_sample(last_json[0], row):
                        _judge_checksums(report, last_json, row, digest, got.checks, mismatches)
                progress.update(report.bytes_read)
    finally:
        progress.close()
    _settle_checksums(conn, Path(root), mismatches, report)
    _note_cut_images(conn, cut, report)


def _note_cut_images(conn, cut: list[tuple[str, str, str]], report: AuditReport) -> None:
    """Note each image the tar held cut or corrupt, but not one the build noted already."""
    for path, shard, problem in cut:
        if not quirks.noted_for_file(conn, path, "truncated_image"):
            report.add("truncated_image", path, shard, problem)


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
    """Read and hash each row's file (a reader thread's work): a `Read`, None for a
    missing file. A JSON in data/ gives the checksums its image must have; the image right
    after it is then hashed with md5/sha512 too."""
    out: list = []
    append = out.append
    want: dict[str, str] = {}
    want_of = None
    xxh3 = xxhash.xxh3_128_hexdigest
    for row in batch:
        path, kind = row[PATH], row[KIND]
        if path.startswith("data/"):
            if kind == JSON:
                got = _read_hash(root + path, {})
                if not isinstance(got, Read):
                    append(got)
                    continue
                want, want_of = wanted_from_bytes(got.data), (row[SHARD], row[SAMPLE])
                append(got if got.xxh3 != row[XXH3] else got._replace(data=None))
                continue
            if kind == IMAGE and want and want_of == (row[SHARD], row[SAMPLE]):
                got = _read_hash(root + path, want, True)
                append(got._replace(data=None) if isinstance(got, Read) else got)
                continue
        try:
            fd = os.open(root + path, READ_FLAGS)
        except (FileNotFoundError, NotADirectoryError):
            append(None)
            continue
        try:  # the common case inline: a small file, one read
            st = os.fstat(fd)
            if not S_ISREG(st.st_mode):
                append(None if S_ISDIR(st.st_mode) else NOT_REGULAR)
                continue
            if st.st_size < BIG_FILE:
                data = os.read(fd, st.st_size + 1)
                if len(data) <= st.st_size:
                    problem = image_problem(data) if kind == IMAGE else None
                    append(Read(len(data), st.st_mtime_ns, xxh3(data), None, None, problem))
                    continue
        finally:
            os.close(fd)
        got = _read_hash(root + path, {}, kind == IMAGE)
        append(got._replace(data=None) if isinstance(got, Read) else got)
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


def _read_hash(path: str, want: dict[str, str], image: bool = False) -> Read | str | None:
    """Read a file once and hash it (a `Read`).

    A small file is read in one call (its bytes are in `data`); a big one in chunks.
    `want` names md5/sha512 digests to compute as well; `image`: check the bytes are a
    whole image (`problem` says why not, else None). None: the file is not there;
    NOT_REGULAR: a FIFO, device or socket is (never read).
    """
    try:
        fd = os.open(path, READ_FLAGS)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        st = os.fstat(fd)
        if not S_ISREG(st.st_mode):
            return None if S_ISDIR(st.st_mode) else NOT_REGULAR
        ask = min(st.st_size + 1, BIG_FILE)
        data = os.read(fd, ask)
        if len(data) < ask:  # the whole file (a short read of a regular file is its end)
            got = {algo: hashlib.new(algo, data).hexdigest() for algo in want}
            checks = (want, got) if want else None
            problem = image_problem(data) if image else None
            digest = xxhash.xxh3_128_hexdigest(data)
            return Read(len(data), st.st_mtime_ns, digest, data, checks, problem)
        h = xxhash.xxh3_128()
        extra = {algo: hashlib.new(algo) for algo in want}
        check = ImageCheck() if image else None
        size = 0
        while data:
            size += len(data)
            h.update(data)
            for e in extra.values():
                e.update(data)
            if check is not None:
                check.feed(data)
            data = os.read(fd, BIG_FILE)
    finally:
        os.close(fd)
    got = {algo: e.hexdigest() for algo, e in extra.items()}
    problem = check.result() if check is not None else None
    return Read(size, st.st_mtime_ns, h.hexdigest(), None, (want, got) if want else None, problem)


def _same_sample(a: tuple, b: tuple) -> bool:
    """Two manifest rows of the same shard's same sample."""
    return a[SAMPLE] == b[SAMPLE] and a[SHARD] == b[SHARD]


def _judge_checksums(report, last_json, image_row, digest, checks, mismatches) -> None:
    """Count an image checked against its JSON's md5/sha512; keep mismatches for later."""
    want, got = checks
    if digest != image_row[XXH3]:
        return  # reported as corrupt_image already
    report.checksums_checked += 1
    if got == want:
        return
    wrong = [algo for algo in want if got.get(algo) != want[algo]]
    if wrong:
        json_row, json_digest = last_json
        mismatches.append(Mismatch(json_row, json_digest, image_row, want, got, wrong))


def _settle_checksums(conn, root: Path, mismatches: list, report: AuditReport) -> None:
    """Decide what an image failing its JSON's checksum means, from the tar's own members.

    The JSON's checksum fields differ from the tar's JSON: an edit (note). Else the tar's
    image passes where the one in data/ fails: the image was replaced (damage, repair
    restores it). Else the shard's own image fails its checksum (a note on the source).
    Without the tar: damage, unless the JSON is edited since the build (note).
    """
    names = {"md5": "md5_file_hash", "sha512": "sha512_hash"}
    tars = shards.paths(conn)
    for json_row, json_digest, image_row, want, got, wrong in mismatches:
        image, shard = image_row[PATH], image_row[SHARD]
        detail = ", ".join(f"{a} {got[a][:12]}… but {names[a]} {want[a][:12]}…" for a in wrong)
        tar = root / tars[shard] if tars.get(shard) else None
        if tar is None or not tar.is_file():
            if json_digest != json_row[XXH3]:
                report.add("edited_checksum", json_row[PATH], shard, f"{image}: {detail}")
            else:
                report.add(
                    "checksum_mismatch", image, shard, f"{detail}; its tar is gone (cannot tell)"
                )
            continue
        original_json = member_bytes(conn, tar, json_row[PATH])
        if original_json is not None:
            obj, _ = parse_json(original_json)
            if wanted_checksums(obj) != want:
                report.add("edited_checksum", json_row[PATH], shard, f"{image}: {detail}")
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
    row = files.member_of(conn, path)
    if row is None:
        return None
    try:
        with open(tar, "rb") as fh:
            return read_member(fh, row[0], row[1])
    except OSError:
        return None
