"""`extract:<shard>`: one streaming pass over a tar into `data/`, the manifest and a partition.

The pass reads each member once, hashes it (XXH3-128), parses JSON, reads image headers
and writes it under its claim (see tasks/extract/claims.py: straight into `data/`, or staged when
another shard owns the path). When the tar has been read to its end-of-archive marker,
samples are decided (complete, or kept aside under `incomplete/<shard>/`) and committed
in batches: each batch settles contested paths, moves what goes aside and records final
rows in one write transaction. The shard is marked done last, so a killed run redoes
the shard and nothing half-done counts as done.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from state import files, meta, shards, tar_layout
from state import quirks as quirk_rows
from state.atomic import DiskFullError, atomic_write, move_file
from state.batching import batched
from state.digests import digest_pairs, json_digest
from state.hashing import file_matches, hash_bytes, hash_file
from state.kinds import MEMBER_KINDS, FileKind
from state.manifest import ADOPT_KEY, ManifestError, open_manifest, write_transaction
from tasks.audit.pairing import is_trainer_file
from tasks.captions import caption_path
from tasks.extract.claims import PATH_ERRNOS, Member, MemberWriter, owners_of, path_blocked
from tasks.extract.tarstream import (
    HashingReader,
    ShardReadError,
    iter_members,
    name_problem,
    normalize_member_name,
    printable,
)
from tasks.imagesize import image_size
from tasks.partition import write_partition
from tasks.progress import Progress
from tasks.records import IMAGE_EXTENSIONS, member_kind, parse_json, partition_row, sample_key
from tasks.settings import Settings, partition_path, shard_name

COMMIT_BATCH = 1000
IMAGE, JSON, CAPTION = FileKind.IMAGE, FileKind.JSON, FileKind.CAPTION
ASIDE, PENDING = FileKind.ASIDE, FileKind.PENDING
CAPTION_SUFFIX = ".txt"  # captions are `<image stem>.txt` (tasks/captions.py)


@dataclass
class Sample:
    key: str
    json: Member | None = None
    images: list[Member] = field(default_factory=list)
    others: list[Member] = field(default_factory=list)


@dataclass
class Placement:
    """Where one member ends up: `dest` relative to root, and its manifest kind."""

    member: Member
    dest: str
    kind: str
    sample: str


@dataclass
class ExtractResult:
    """What `extract_shard` did."""

    shard: str
    status: str  # extracted | up-to-date | renamed | failed
    samples: int = 0
    aside: int = 0
    written: int = 0
    error: str | None = None


UNPLACED = tar_layout.UNPLACED


def extract_shard(settings: Settings, tar_path: Path, place: bool | None = None) -> ExtractResult:
    """Bring the manifest, `data/` and the partition of one shard up to date with its tar.

    `place=False` (default: `layout = "tars"`) reads and decides the same way but writes
    no sample into `data/`: their rows keep member, offset and size (mtime_ns UNPLACED),
    which is all the webshart indexes need. Members kept aside are still copied aside.
    """
    if place is None:
        place = settings.layout != "tars"
    db = open_manifest(settings.root)
    try:
        return _extract_shard(db, settings, Path(tar_path), place)
    except (DiskFullError, ManifestError, sqlite3.OperationalError):
        raise  # the root's trouble, not this shard's: every shard would meet it
    except sqlite3.DatabaseError as exc:
        if type(exc) is sqlite3.DatabaseError:  # a damaged manifest
            raise
        return _shard_failed(db, settings, Path(tar_path), exc)
    except Exception as exc:  # whatever a member or value did, it stops this shard only
        return _shard_failed(db, settings, Path(tar_path), exc)
    finally:
        db.close()


def _shard_failed(db, settings: Settings, tar_path: Path, exc: Exception) -> ExtractResult:
    """Record a shard that stopped on something other than its bytes; the rest builds."""
    name = shard_name(tar_path, settings)
    error = (
        f"{tar_path}: could not be extracted ({type(exc).__name__}: {printable(str(exc))}); "
        "the other shards are built; fix or remove this file, then run `doit`"
    )
    st = os.stat(tar_path)
    _record_failure(db, settings, name, os.path.relpath(tar_path, settings.root), st, error)
    return ExtractResult(name, "failed", error=error)


def _extract_shard(
    db: sqlite3.Connection, settings: Settings, tar_path: Path, place: bool = True
) -> ExtractResult:
    name = shard_name(tar_path, settings)
    st = os.stat(tar_path)
    rel = os.path.relpath(tar_path, settings.root)
    row = shards.get(db, name)
    placed_as_asked = not place or not tar_layout.has_unplaced(db, name)
    if row and row["status"] == "done" and row["size"] == st.st_size and placed_as_asked:
        same_stat = (row["mtime_ns"], row["path"]) == (st.st_mtime_ns, rel)
        if same_stat or hash_file(tar_path) == row["xxh3"]:
            if not same_stat:
                with write_transaction(db) as conn:
                    shards.moved(conn, name, rel, st.st_mtime_ns)
            return ExtractResult(name, "up-to-date", samples=row["samples"] or 0)
    renamed_from = _find_renamed(db, settings, name, tar_path, st)
    if renamed_from:
        _adopt_renamed(db, settings, renamed_from, name, rel, st)
        return ExtractResult(
            name, "renamed", samples=(shards.get(db, name) or {}).get("samples", 0)
        )
    return _extract(db, settings, name, tar_path, rel, st, place)


def _find_renamed(db, settings: Settings, name: str, tar_path: Path, st) -> str | None:
    """A done shard whose bytes equal this new tar's and whose tar is gone, or is this
    very tar under the name an earlier naming rule gave it, if any."""
    rel = os.path.relpath(tar_path, settings.root)
    candidates = [
        r
        for r in shards.done_of_size(db, st.st_size, name)
        if r["path"] == rel or not (settings.root / r["path"]).exists()
    ]
    if not candidates:
        return None
    digest = hash_file(tar_path)
    for r in candidates:
        if r["xxh3"] == digest:
            return r["name"]
    return None


def _adopt_renamed(db, settings: Settings, old: str, new: str, rel: str, st) -> None:
    old_part = settings.parts_dir / f"shard={old}"
    new_part = settings.parts_dir / f"shard={new}"
    with write_transaction(db) as conn:
        shards.rename(conn, old, new, rel, st.st_mtime_ns)
        if old_part.exists():
            shutil.rmtree(new_part, ignore_errors=True)
            old_part.rename(new_part)
            old_rel = os.path.relpath(old_part, settings.root)
            new_rel = os.path.relpath(new_part, settings.root)
            files.move_partition_folder(conn, old_rel, new_rel)


@dataclass
class _Job:
    """One shard's extraction: where it reads, what the manifest held, what it found."""

    db: sqlite3.Connection
    settings: Settings
    name: str
    tar_path: Path
    rel: str  # the tar's path under the root
    st: os.stat_result  # the tar's
    previous: dict[str, dict]  # path -> `files` row, as the last extraction left them
    quirks: list[dict] = field(default_factory=list)
    place: bool = True  # False: samples stay in the tar (layout = "tars")


def _extract(
    db, settings: Settings, name: str, tar_path: Path, rel: str, st, place: bool = True
) -> ExtractResult:
    tmp_dir = settings.state_dir / "tmp" / name
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)
    previous = {r["path"]: r for r in files.of_shard(db, name)}
    job = _Job(db, settings, name, tar_path, rel, st, previous, place=place)
    quirks = job.quirks
    try:
        samples, duplicates, digest, streamed = _read_shard(job, tmp_dir)
    except ShardReadError as exc:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        _drop_unfinished(db, settings, name, previous)
        _record_failure(db, settings, name, rel, st, str(exc))
        return ExtractResult(name, "failed", error=str(exc))
    except Exception:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        _drop_unfinished(db, settings, name, previous)
        raise
    except BaseException:  # interrupted: the rerun finishes what the claims hold
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    try:
        placements, rows = _decide(name, samples, duplicates, quirks)
        kept = _clear_stale_data(db, settings, name, previous, placements, quirks)
        placed, rows, written = _commit(
            db, settings, name, tar_path, placements, rows, quirks, place
        )
        _finish(job, digest, placed, rows, kept)
    except Exception:
        _drop_unfinished(db, settings, name, previous)
        raise
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    aside = sum(1 for p in placed.values() if p.kind == ASIDE)
    return ExtractResult(
        name, "extracted", samples=len(rows), aside=aside, written=streamed + written
    )


def _read_shard(job: _Job, tmp_dir: Path):
    """Stream the tar: write every regular member under the shard's claims, collect samples."""
    db, settings, name, tar_path, quirks = job.db, job.settings, job.name, job.tar_path, job.quirks
    previous, total = job.previous, job.st.st_size
    writer = MemberWriter(
        db, settings.root, name, tmp_dir, previous, meta.get(db, ADOPT_KEY) == "1"
    )
    samples: dict[str, Sample] = {}
    seen: dict[str, Member] = {}
    names = _Names()
    duplicates: list[Member] = []
    reader = HashingReader(tar_path)
    progress = Progress(f"extract {name}", total)
    try:
        for tm, data in iter_members(reader, tar_path):
            progress.update(reader.tell())
            if tm.kind == "dir":
                continue
            path = normalize_member_name(tm.name)
            why = _refusal(path, tm.kind, names)
            if why is not None:
                quirks.append(
                    _quirk(name, "refused", printable(tm.name), None, f"{why}: not written")
                )
                continue
            if (other := names.case_twin(path)) is not None:
                quirks.append(_case_collision(name, tm.name, other))
            kind = member_kind(path)
            m = Member(path, tm.name, tm.offset_data, tm.size, hash_bytes(data), kind)
            if kind == IMAGE:
                m.header = image_size(data)
            elif kind == JSON:
                raw = bytes(data)  # a view when large (iter_members)
                m.obj, m.json_error = parse_json(raw)
                if m.obj is not None:
                    m.raw = raw.decode("utf-8")
            if path in seen:  # the later member wins, as with tar xf
                _set_aside_earlier(job, writer, samples, seen[path], duplicates, tm.name)
            seen[path] = m
            if job.place:
                writer.add(m, data)
            key = sample_key(path)
            sample = samples.get(key)
            if sample is None:
                sample = samples[key] = Sample(key)
            if kind == JSON:
                sample.json = m
            elif kind == IMAGE:
                sample.images.append(m)
            else:
                sample.others.append(m)
        writer.flush()
        digest, _ = reader.finish()
    finally:
        reader.close()
        progress.close()
    return samples, duplicates, digest, writer.written


def _case_collision(shard: str, member: str, other: str) -> dict:
    return _quirk(
        shard,
        "case_collision",
        member,
        None,
        f"differs from member {other!r} only in case: both are built, but a "
        "case-insensitive file system (macOS, Windows) would hold only one",
    )


def _set_aside_earlier(
    job: _Job, writer: MemberWriter, samples: dict, earlier: Member, duplicates: list, tm_name: str
) -> None:
    """A later member of the same name replaces `earlier`, which is kept aside."""
    earlier = _drop_member(samples, earlier)
    if job.place:  # else its bytes stay in the tar: the commit copies them aside
        writer.flush()
        writer.move(earlier, _duplicate_dest(job.name, earlier, len(duplicates)))
    duplicates.append(earlier)
    job.quirks.append(
        _quirk(
            job.name,
            "duplicate_member",
            tm_name,
            None,
            "a later member of the same name replaces it (as tar xf)",
        )
    )


class _Names:
    """The member paths of one shard, to find a name used as both file and folder."""

    def __init__(self) -> None:
        self.files: set[str] = set()
        self.folders: set[str] = set()
        self.lower: dict[str, str] = {}

    def conflict(self, path: str) -> str | None:
        """Why `path` cannot be written beside the members seen so far, or None."""
        if path in self.folders:
            return f"{path!r} is also the folder of earlier members"
        folder = path
        while "/" in folder:
            folder = folder.rsplit("/", 1)[0]
            if folder in self.files:
                return f"its folder {folder!r} is also an earlier member (a file)"
        return None

    def add(self, path: str) -> None:
        """Remember a member path (and its folders) that will be written."""
        self.files.add(path)
        folder = path
        while "/" in folder:
            folder = folder.rsplit("/", 1)[0]
            self.folders.add(folder)

    def case_twin(self, path: str) -> str | None:
        """An earlier, different path equal to `path` but for case."""
        twin = self.lower.setdefault(path.lower(), path)
        return twin if twin != path else None


def _refusal(path: str | None, kind: str, names: _Names) -> str | None:
    """Why a member is not written at all, or None; records the path when it is."""
    if path is None:
        return "unsafe path"
    if kind == "sparse":
        return "a sparse file (tar --sparse) is not supported: rebuild the tar without --sparse"
    if kind != "file":
        return f"{kind} member"
    why = name_problem(path) or _reserved(path) or names.conflict(path)
    if why is None:
        names.add(path)
    return why


def _reserved(path: str) -> str | None:
    """Why `path` would collide with a file the build or the trainer writes, or None."""
    if "/" not in path:
        if is_trainer_file(path):
            return "named like SimpleTuner's own file in data/ (it rewrites those)"
        return None
    if any(f.endswith(CAPTION_SUFFIX) for f in path.split("/")[:-1]):
        return f"a folder named like a caption file ({CAPTION_SUFFIX}) would block one"
    return None


def _duplicate_dest(shard: str, m: Member, index: int) -> str:
    return f"incomplete/{shard}/duplicate-members/{index}/{m.path}"


def _drop_member(samples: dict[str, Sample], m: Member) -> Member:
    s = samples[sample_key(m.path)]
    if s.json is m:
        s.json = None
    s.images = [x for x in s.images if x is not m]
    s.others = [x for x in s.others if x is not m]
    return m


def _quirk(shard: str, kind: str, member: str | None, path: str | None, detail: str) -> dict:
    return {"shard": shard, "kind": kind, "member": member, "path": path, "detail": detail}


def _winner(sample: Sample) -> Member:
    """Of several images for one key, the one `image_name` names, else png, jpg, jpeg."""
    wanted = sample.json.obj.get("image_name") if sample.json and sample.json.obj else None
    for m in sample.images:
        if isinstance(wanted, str) and os.path.basename(m.path) == wanted:
            return m

    def rank(m: Member) -> int:
        ext = os.path.splitext(m.path)[1].lower()
        return IMAGE_EXTENSIONS.index(ext) if ext in IMAGE_EXTENSIONS else len(IMAGE_EXTENSIONS)

    return min(sample.images, key=rank)


def _aside(shard: str, m: Member, sample: str, sub: str = "") -> Placement:
    return Placement(m, f"incomplete/{shard}/{sub}{m.path}", ASIDE, sample)


def _decide(name: str, samples: dict[str, Sample], duplicates: list[Member], quirks: list[dict]):
    """Placements of every member and the partition row of every complete sample."""
    placements: list[Placement] = []
    rows: dict[str, dict] = {}
    for i, m in enumerate(duplicates):  # loc None: still in the tar (place=False)
        dest = m.loc or _duplicate_dest(name, m, i)
        placements.append(Placement(m, dest, ASIDE, sample_key(m.path)))
    for key, s in samples.items():
        for m in s.others:
            quirks.append(
                _quirk(
                    name,
                    "unexpected_member",
                    m.member,
                    None,
                    "not an image (.png/.jpg/.jpeg) or .json: kept aside",
                )
            )
            placements.append(_aside(name, m, key))
        members = ([s.json] if s.json else []) + s.images
        if not members:
            continue
        problem = None
        if s.json is None:
            problem = ("image_without_json", "image has no JSON")
        elif not s.images:
            problem = ("json_without_image", "JSON has no image")
        elif s.json.obj is None:
            problem = ("invalid_json", s.json.json_error)
        if problem is None:
            image = _winner(s)
            if image.header is None:
                problem = (
                    "bad_image",
                    f"{image.member}: not a readable PNG/JPEG header ({image.size} bytes)",
                )
        if problem:
            for m in members:
                quirks.append(_quirk(name, problem[0], m.member, None, problem[1]))
                placements.append(_aside(name, m, key))
            continue
        for m in s.images:
            if m is not image:
                quirks.append(
                    _quirk(
                        name,
                        "second_image",
                        m.member,
                        None,
                        f"another image of sample {key!r} was kept",
                    )
                )
                placements.append(_aside(name, m, key))
        placements.append(Placement(s.json, f"data/{s.json.path}", JSON, key))
        placements.append(Placement(image, f"data/{image.path}", IMAGE, key))
        rows[key] = partition_row(image.path, s.json.path, s.json.obj, s.json.raw, image.header)
        s.json.obj = None  # the row holds what is needed now
    return placements, rows


def _commit(
    db,
    settings: Settings,
    name: str,
    tar_path: Path,
    placements: list[Placement],
    rows: dict,
    quirks: list[dict],
    place: bool = True,
):
    """Settle contested paths, move members to their places and record them, batch by batch.

    With `place=False` a sample's members are recorded, not written (see extract_shard).
    """
    placed: dict[str, Placement] = {}
    made_dirs: set[str] = set()
    written = 0
    blocked = _blocked(settings, name, placements, quirks)
    for batch in batched(placements, COMMIT_BATCH):
        with write_transaction(db) as conn:
            lost = _settle(conn, settings, name, batch, quirks) | blocked
            files.drop_pending(
                conn, name, [p.dest for p in batch if p.sample in lost and p.kind != ASIDE]
            )
            file_rows, vacated = [], []
            for p in batch:
                if p.sample in lost and p.kind != ASIDE:
                    p = _aside(name, p.member, p.sample)
                    rows.pop(p.sample, None)
                m = p.member
                if m.loc and m.loc != p.dest and m.loc.startswith("data/"):
                    vacated.append(m.loc)
                if not place and p.kind != ASIDE:
                    file_rows.append(_unplaced_row(name, p))
                    placed[p.dest] = p
                    continue
                try:
                    written += _place(settings, tar_path, p, made_dirs)
                except OSError as exc:
                    if p.kind != ASIDE or exc.errno not in PATH_ERRNOS:
                        raise
                    p = _unplaced(name, p, len(placed), quirks)
                    written += _place(settings, tar_path, p, made_dirs)
                file_rows.append(_file_row(settings, name, p))
                placed[p.dest] = p
            files.drop_of_shard(conn, name, vacated)
            remove_empty_folders(settings.data_dir, vacated)
            files.upsert(conn, file_rows)
    return placed, rows, written


def _unplaced_row(shard: str, p: Placement) -> dict:
    """The `files` row of a sample member left in its tar (nothing on disk)."""
    m = p.member
    width, height = m.header if m.header else (None, None)
    return {
        "path": p.dest,
        "shard": shard,
        "kind": p.kind,
        "sample": p.sample,
        "member": m.member,
        "offset": m.offset,
        "size": m.size,
        "mtime_ns": UNPLACED,
        "xxh3": m.xxh3,
        "width": width,
        "height": height,
    }


def _unplaced(name: str, p: Placement, index: int, quirks: list[dict]) -> Placement:
    """A place under `incomplete/<shard>/unplaced/` for a member kept aside whose own
    path there is blocked (by what an earlier build of the shard kept aside)."""
    dest = f"incomplete/{name}/unplaced/{index}{posixpath.splitext(p.dest)[1]}"
    detail = f"{p.dest} is blocked by a file or folder: kept as {dest}"
    quirks.append(_quirk(name, "path_conflict", p.member.member, dest, detail))
    return Placement(p.member, dest, ASIDE, p.sample)


def _blocked(settings: Settings, name: str, placements: list[Placement], quirks: list[dict]):
    """Samples whose path in `data/` a file or folder of another shard stands in the way of.

    Only members not yet at their place are looked at: a member written straight into
    `data/` found its path free.
    """
    blocked: set[str] = set()
    root = str(settings.root)
    for p in placements:
        if p.kind == ASIDE or p.member.loc == p.dest or p.sample in blocked:
            continue
        why = path_blocked(root, p.dest)
        if why is not None:
            blocked.add(p.sample)
            quirks.append(
                _quirk(
                    name,
                    "path_conflict",
                    p.member.member,
                    p.dest,
                    f"{why} in data/: its sample is kept aside",
                )
            )
    return blocked


def _settle(conn, settings: Settings, name: str, batch: list[Placement], quirks: list[dict]):
    """Samples of this batch whose paths a shard sorting earlier owns (they go aside).

    Paths owned by a shard sorting later are taken over: that shard's copies go aside.
    A member this shard wrote straight into `data/` whose path was taken meanwhile (by
    a shard sorting earlier) finds its bytes where that shard put them, else in the tar.
    """
    dests = [p.dest for p in batch if p.kind != ASIDE]
    owners = {k: v for k, v in owners_of(conn, dests).items() if v != name}
    lost: set[str] = set()
    for p in batch:
        other = owners.get(p.dest)
        if other is None:
            continue
        if other < name:
            lost.add(p.sample)
            quirks.append(
                _quirk(
                    name,
                    "duplicate_across_shards",
                    p.member.member,
                    p.dest,
                    f"{p.dest} belongs to shard {other} (it sorts first): kept aside",
                )
            )
        else:
            _displace(conn, settings, other, p.dest)
            quirks.append(
                _quirk(
                    other,
                    "duplicate_across_shards",
                    None,
                    p.dest,
                    f"{p.dest} taken by shard {name} (it sorts first): kept aside",
                )
            )
    for p in batch:
        m = p.member
        if p.sample in lost and m.loc == p.dest:  # our direct copy was replaced
            moved = f"incomplete/{name}/{m.path}"
            m.loc = moved if file_matches(settings.root / moved, m.size, None, m.xxh3) else None
    return lost


def _displace(conn, settings: Settings, other: str, dest: str) -> None:
    """Move another shard's copy of `dest` aside so that this shard can own the path."""
    row = files.get(conn, dest)
    if row["mtime_ns"] == UNPLACED:  # left in its tar: that shard is read again, and decides anew
        files.delete(conn, [dest])
        tar_layout.reread(conn, other)
        return
    aside = f"incomplete/{other}/{dest.removeprefix('data/')}"
    src = settings.root / dest
    if file_matches(src, row["size"], row["mtime_ns"], row["xxh3"]):
        (settings.root / aside).parent.mkdir(parents=True, exist_ok=True)
        move_file(src, settings.root / aside)
        remove_empty_folders(settings.data_dir, [dest])
    row.update(path=aside, kind=ASIDE)
    files.delete(conn, [dest])
    files.upsert(conn, [row])
    shards.invalidate(conn, [other], partition=True)


def _place(settings: Settings, tar_path: Path, p: Placement, made_dirs: set[str]) -> int:
    """Move a member's bytes to its destination; 1 if a file was written, else 0."""
    m = p.member
    if m.loc == p.dest:
        return 0
    dest = f"{settings.root}/{p.dest}"
    folder = os.path.dirname(dest)
    if folder not in made_dirs:
        os.makedirs(folder, exist_ok=True)
        made_dirs.add(folder)
    if m.tmp is not None:
        move_file(m.tmp, dest)
    elif m.loc is not None:
        move_file(f"{settings.root}/{m.loc}", dest)
    else:  # bytes no longer on disk: read the member again from the tar
        with open(tar_path, "rb") as f:
            f.seek(m.offset)
            data = f.read(m.size)
        if hash_bytes(data) != m.xxh3:
            raise ShardReadError(tar_path, f"member {m.member!r} changed during extraction", None)
        m.mtime_ns = atomic_write(Path(dest), data).st_mtime_ns
    m.loc, m.tmp = p.dest, None
    return 1


def _file_row(settings: Settings, shard: str, p: Placement) -> dict:
    m = p.member
    if m.mtime_ns is None or m.stale_stat:
        st = os.stat(f"{settings.root}/{p.dest}")
        size, mtime_ns = st.st_size, (-1 if m.stale_stat else st.st_mtime_ns)
    else:
        size, mtime_ns = m.size, m.mtime_ns
    width, height = m.header if m.header else (None, None)
    return {
        "path": p.dest,
        "shard": shard,
        "kind": p.kind,
        "sample": p.sample,
        "member": m.member,
        "offset": m.offset,
        "size": size,
        "mtime_ns": mtime_ns,
        "xxh3": m.xxh3,
        "width": width,
        "height": height,
    }


def _finish(job: _Job, digest: str, placed: dict, rows: dict, kept: list[dict]) -> None:
    """Drop what this shard no longer holds, write its partition, mark it done."""
    db, settings, name, rel, st = job.db, job.settings, job.name, job.rel, job.st
    previous, quirks = job.previous, job.quirks
    edited = _edited_dir(name)
    stale = [
        r
        for path, r in previous.items()
        if path not in placed
        and r["kind"] in (IMAGE, JSON, ASIDE, PENDING)
        and not path.startswith(edited)  # the user's version, kept: never deleted
    ]
    kept = kept + _drop_stale(settings, name, stale, quirks)
    part_row = write_partition(settings, name, rows.values())
    with write_transaction(db) as conn:
        files.delete(conn, [r["path"] for r in stale])
        quirk_rows.replace(conn, name, quirks)
        files.upsert(conn, [part_row, *kept])
        current = json_digest(conn, name)
        expected = digest_pairs((d, p.member.xxh3) for d, p in placed.items() if p.kind == JSON)
        shards.mark_done(
            conn,
            name,
            rel,
            st,
            xxh3=digest,
            members=len(placed),
            samples=len(rows),
            aside=sum(1 for p in placed.values() if p.kind == ASIDE),
            part_xxh3=part_row["xxh3"],
            json_digest=current if current == expected else None,
        )


def _clear_stale_data(
    db, settings: Settings, name: str, previous: dict, placements: list[Placement], quirks: list
) -> list[dict]:
    """Before placing: drop this shard's files in `data/` that the new tar no longer
    holds, and their images' unedited captions, so that they never stand in the way of
    its new paths; return the rows of edited ones kept aside. Their rows go when the
    shard is committed."""
    planned = {p.dest for p in placements}
    stale = [
        r
        for path, r in previous.items()
        if path.startswith("data/") and path not in planned and r["kind"] in MEMBER_KINDS
    ]
    dropped = []
    for r in stale:
        if r["kind"] != IMAGE:
            continue
        caption = files.get(db, caption_path(r["path"].removeprefix("data/")))
        ours = caption is not None and caption["kind"] == CAPTION and caption["shard"] == name
        if ours and _left_as_built(settings.root / caption["path"], caption):
            (settings.root / caption["path"]).unlink()
            dropped.append(caption["path"])
    with write_transaction(db) as conn:
        files.delete(conn, dropped)
    return _drop_stale(settings, name, stale, quirks)


def _drop_stale(settings: Settings, name: str, stale: list[dict], quirks: list) -> list[dict]:
    """Delete stale files of this shard that are as the build left them; keep aside (and
    return the rows of) files in `data/` that were edited by hand."""
    kept: list[dict] = []
    for r in stale:
        target = settings.root / r["path"]
        if _left_as_built(target, r):
            target.unlink(missing_ok=True)
        elif r["path"].startswith("data/") and r["kind"] != PENDING and target.is_file():
            kept.append(_keep_edited(settings, name, r, quirks))
    remove_empty_folders(settings.data_dir, [r["path"] for r in stale])
    return kept


def _left_as_built(target: Path, r: dict) -> bool:
    """Whether `target` is the file its row describes (False when its folder is gone
    or has become a file)."""
    try:
        return file_matches(target, r["size"], r["mtime_ns"], r["xxh3"])
    except NotADirectoryError:
        return False


def _edited_dir(shard: str) -> str:
    return f"incomplete/{shard}/edited-by-hand/"


def _keep_edited(settings: Settings, name: str, r: dict, quirks: list[dict]) -> dict:
    """Move a file of this shard that was changed on disk, and that the shard's new
    bytes no longer hold, to `incomplete/<shard>/edited/`; return its `files` row."""
    dest = f"{_edited_dir(name)}{r['path'].removeprefix('data/')}"
    target = settings.root / dest
    target.parent.mkdir(parents=True, exist_ok=True)
    move_file(settings.root / r["path"], target)
    st = target.stat()
    quirks.append(
        _quirk(
            name,
            "edited_kept_aside",
            r["member"],
            dest,
            f"{r['path']} was changed by hand, but the shard's new tar no longer holds its "
            f"sample: your version is kept as {dest}",
        )
    )
    return {
        **r,
        "path": dest,
        "kind": ASIDE,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "xxh3": hash_file(target),
    }


def remove_empty_folders(top: Path, paths: Iterable[str]) -> None:
    """Remove the folders of `paths` (relative to top's parent) that are now empty, up to
    `top` (kept)."""
    base = top.parent
    folders = {os.path.dirname(base / p) for p in paths}
    for folder in sorted(folders, key=len, reverse=True):
        while len(folder) > len(str(top)) and folder.startswith(str(top)):
            try:
                os.rmdir(folder)
            except OSError:
                break
            folder = os.path.dirname(folder)


def _drop_unfinished(db, settings: Settings, name: str, previous: dict) -> None:
    """Remove what a failed extraction put into `data/` that the shard's last good
    extraction does not vouch for: images without a partition row (so without a
    caption) would make `data/` unsafe for training. A file that differs from what the
    build wrote (a JSON the user edited) stays."""
    rows = [
        r
        for r in files.of_shard(db, name)
        if r["path"].startswith("data/")
        and r["kind"] in (IMAGE, JSON, PENDING)
        and not _vouched(previous.get(r["path"]), r)
    ]
    for r in rows:
        target = settings.root / r["path"]
        if _left_as_built(target, r):
            target.unlink()
    with write_transaction(db) as conn:
        files.delete(conn, [r["path"] for r in rows])
    remove_empty_folders(settings.data_dir, [r["path"] for r in rows])


def _vouched(old: dict | None, r: dict) -> bool:
    """Whether the last good extraction recorded this very file."""
    return old is not None and old["kind"] in MEMBER_KINDS and old["xxh3"] == r["xxh3"]


def _record_failure(db, settings: Settings, name: str, rel: str, st, error: str) -> None:
    """Mark the shard failed; files and partition of an earlier good read stay as they were."""
    part = partition_path(settings, name)
    part_row = None if part.exists() else write_partition(settings, name, [])
    with write_transaction(db) as conn:
        if part_row:
            files.upsert(conn, [part_row])
        part_xxh3 = part_row["xxh3"] if part_row else None
        shards.mark_failed(conn, name, rel, st, error=error, part_xxh3=part_xxh3)
