"""`extract:<shard>`: one streaming pass over a tar into `data/`, the manifest and a partition.

Reading (`read_shard`, in this process or a worker's: tasks/extract/pool.py) needs only
the tar, the settings and the root's folders: each member is read once, hashed
(XXH3-128), its JSON parsed or its image header read, and staged under
`state/tmp/<shard>/` (see tasks/extract/claims.py); when the end-of-archive marker is
reached, samples are decided (complete, or kept aside under `incomplete/<shard>/`) and
the partition is written beside them. Committing is the manifest's one writer's: in
batches, each settles contested paths (the shard that sorts first owns a path), renames
members into place and records their rows in one write transaction. The shard is marked
done last, so a killed run redoes the shard and nothing half-done counts as done.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import shutil
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISDIR, S_ISREG

from state import clashes, edits, files, meta, shards, tar_layout
from state import quirks as quirk_rows
from state.atomic import DiskFullError, atomic_write, move_file, write_new
from state.batching import batched
from state.digests import digest_pairs, json_digest
from state.hashing import file_matches, hash_bytes, hash_file, is_regular
from state.kinds import EDITED_DIR, EDITED_SHARD_FILES, MEMBER_KINDS, STRAYS_DIR, FileKind
from state.manifest import ADOPT_KEY, ManifestError, open_manifest, write_transaction
from tasks.audit.pairing import is_trainer_file
from tasks.captions import caption_path, move_edited_caption
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
from tasks.partition import encode_partition, place_partition, write_partition
from tasks.progress import Progress
from tasks.records import (
    IMAGE_EXTENSIONS,
    key_and_kind,
    parse_json,
    partition_row,
    sample_key,
)
from tasks.settings import PART_FILE, Settings, partition_path, shard_name

COMMIT_BATCH = 1000
PLACING = "placing"  # in the staging folder: the paths a commit batch is filling
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


def extract_shard(settings: Settings, tar_path: Path, reader=None) -> ExtractResult:
    """Bring the manifest, `data/` and the partition of one shard up to date with its tar.

    `reader` reads the tar (`request(db, settings, tar)`, then `read(request)`); by
    default in this process. This process is the manifest's one writer either way.
    Under `layout = "tars"` the samples are recorded, not written (`places_samples`).
    """
    db = open_manifest(settings.root)
    try:
        return _extract_shard(db, settings, Path(tar_path), reader or _ReadHere)
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
    db: sqlite3.Connection, settings: Settings, tar_path: Path, reader
) -> ExtractResult:
    name = shard_name(tar_path, settings)
    st = os.stat(tar_path)
    rel = os.path.relpath(tar_path, settings.root)
    row = shards.get(db, name)
    placed_as_asked = not places_samples(settings) or not tar_layout.has_unplaced(db, name)
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
    return _extract(db, settings, name, tar_path, rel, st, reader)


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
    old_part = partition_path(settings, old).parent
    new_part = partition_path(settings, new).parent
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


@dataclass
class ShardRead:
    """What reading a shard hands to the manifest's writer (picklable: it may come from a
    worker process): where each member goes, the quirks found, and the partition of its
    complete samples, written beside the staged members."""

    placements: list[Placement]
    samples: set[str]  # the complete samples: the partition's rows
    partition: str  # the staged partition file
    partition_xxh3: str
    quirks: list[dict]
    digest: str
    written: int


@dataclass(frozen=True)
class ReadRequest:
    """Everything reading one shard needs: its tar, the settings, its staging folder and
    what the shard's last extraction left in `data/` (no manifest connection)."""

    settings: Settings
    name: str
    tar_path: Path
    tmp_dir: Path
    previous: dict[str, dict]
    adopt: bool
    place: bool  # False: the samples stay in the tar (`places_samples`)


def read_request(db, settings: Settings, tar_path: Path) -> ReadRequest:
    """A fresh staging folder and the manifest's view of a shard, for `read_shard`."""
    name = shard_name(tar_path, settings)
    tmp_dir = settings.state_dir / "tmp" / name
    _remove_unrecorded(db, settings, tmp_dir)
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)
    previous = {r["path"]: r for r in files.of_shard(db, name)}
    adopt = meta.get(db, ADOPT_KEY) == "1"
    return ReadRequest(settings, name, tar_path, tmp_dir, previous, adopt, places_samples(settings))


def places_samples(settings: Settings) -> bool:
    """Whether the build writes samples into `data/`: not under `layout = "tars"`, where
    their rows keep member, offset and size (mtime_ns `UNPLACED`) for the webshart index.
    Members kept aside are written either way (read again from the tar)."""
    return settings.layout != "tars"


def _remove_unrecorded(db, settings: Settings, tmp_dir: Path) -> None:
    """Remove what a killed commit moved into place without recording it (the paths of
    its last batch, listed before they were filled, that have no row)."""
    try:
        listed = (tmp_dir / PLACING).read_bytes().decode("utf-8", "surrogateescape")
    except FileNotFoundError:
        return
    gone = [p for p in listed.split("\n") if p and files.get(db, p) is None]
    for path in gone:
        with contextlib.suppress(OSError):
            (settings.root / path).unlink()
    remove_empty_folders(settings.data_dir, gone)


def _list_placing(settings: Settings, name: str, batch: list[Placement]) -> None:
    """Name the paths this batch is about to fill, for `_remove_unrecorded` after a kill."""
    paths = "\n".join(p.dest for p in batch if p.member.loc != p.dest)
    write_new(settings.state_dir / "tmp" / name / PLACING, paths.encode("utf-8", "surrogateescape"))


def _extract(db, settings: Settings, name: str, tar_path: Path, rel: str, st, reader):
    request = reader.request(db, settings, tar_path)
    previous, tmp_dir = request.previous, request.tmp_dir
    job = _Job(db, settings, name, tar_path, rel, st, previous)
    try:
        read = reader.read(request)
    except ShardReadError as exc:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        _drop_unfinished(db, settings, name, previous)
        _record_failure(db, settings, name, rel, st, str(exc))
        return ExtractResult(name, "failed", error=str(exc))
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    job.quirks = quirks = read.quirks
    _move_special_files(settings, name, previous, quirks)
    edits_aside = _set_edits_aside(db, settings, name, previous)
    try:
        _clear_stale_data(db, settings, name, previous, read.placements, quirks)
        placed, dropped = _commit(db, settings, name, tar_path, read.placements, quirks)
        _settle_edits(db, settings, name, placed, edits_aside, quirks)
        part_row = place_partition(
            settings, name, read.partition, read.partition_xxh3, dropped & read.samples
        )
        _finish(job, read.digest, placed, part_row, len(read.samples - dropped))
    except Exception:
        _drop_unfinished(db, settings, name, previous)
        _put_edits_back(db, settings, previous, edits_aside)
        raise
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    aside = sum(1 for p in placed.values() if p.kind == ASIDE)
    samples = len(read.samples - dropped)
    return ExtractResult(name, "extracted", samples=samples, aside=aside, written=read.written)


def read_shard(request: ReadRequest) -> ShardRead:
    """Stream the tar: stage every regular member, then decide where each one goes."""
    state = _ReadState(request)
    reader = HashingReader(request.tar_path)
    progress = Progress(f"extract {request.name}", os.stat(request.tar_path).st_size)
    try:
        for tm, data in iter_members(reader, request.tar_path):
            progress.update(reader.tell())
            if tm.kind != "dir":
                state.add(tm, data)
        digest, _ = reader.finish()
    finally:
        reader.close()
        progress.close()
    placements, rows = _decide(request.name, state.samples, state.duplicates, state.quirks)
    partition = str(request.tmp_dir / PART_FILE)
    data = encode_partition(rows.values())
    write_new(partition, data)
    return ShardRead(
        placements,
        set(rows),
        partition,
        hash_bytes(data),
        state.quirks,
        digest,
        state.writer.written,
    )


class _ReadState:
    """The members of one shard read so far, grouped by sample."""

    def __init__(self, request: ReadRequest) -> None:
        self.name = request.name
        self.place = request.place
        self.writer = MemberWriter(
            request.settings.root, self.name, request.tmp_dir, request.previous, request.adopt
        )
        self.samples: dict[str, Sample] = {}
        self.seen: dict[str, Member] = {}
        self.names = _Names()
        self.duplicates: list[tuple[Member, str]] = []
        self.quirks: list[dict] = []

    def add(self, tm, data) -> None:
        """Stage one non-folder member (or refuse it, with a quirk)."""
        path = normalize_member_name(tm.name)
        why = _refusal(path, tm.kind, self.names)
        if why is not None:
            self.quirks.append(
                _quirk(self.name, "refused", printable(tm.name), None, f"{why}: not written")
            )
            return
        if (other := self.names.case_twin(path)) is not None:
            self.quirks.append(_case_collision(self.name, tm.name, other))
        key, kind = key_and_kind(path)
        m = _member(path, tm, data, kind)
        if path in self.seen:  # the later member wins, as with tar xf
            self._set_aside_earlier(self.seen[path], tm.name)
        self.seen[path] = m
        if self.place:  # else its bytes stay in the tar; one kept aside is read again
            self.writer.add(m, data)
        sample = self.samples.get(key)
        if sample is None:
            sample = self.samples[key] = Sample(key)
        if m.kind == JSON:
            sample.json = m
        elif m.kind == IMAGE:
            sample.images.append(m)
        else:
            sample.others.append(m)

    def _set_aside_earlier(self, earlier: Member, tm_name: str) -> None:
        """A later member of the same name replaces `earlier`, which is kept aside."""
        earlier = _drop_member(self.samples, earlier)
        dest = _duplicate_dest(self.name, earlier, len(self.duplicates))
        self.duplicates.append((earlier, dest))
        detail = "a later member of the same name replaces it (as tar xf)"
        self.quirks.append(_quirk(self.name, "duplicate_member", tm_name, None, detail))


class _ReadHere:
    """Reads a shard in this process: the serial build's reader."""

    request = staticmethod(read_request)
    read = staticmethod(read_shard)


def _member(path: str, tm, data, kind: str) -> Member:
    """A member with its hash and what its bytes say (image size, parsed JSON)."""
    m = Member(path, tm.name, tm.offset_data, tm.size, hash_bytes(data), kind)
    if kind == IMAGE:
        m.header = image_size(data)
    elif kind == JSON:
        raw = bytes(data)  # a view when large (iter_members)
        m.obj, m.json_error = parse_json(raw)
        if m.obj is not None:
            m.raw = raw.decode("utf-8")
    return m


def _case_collision(shard: str, member: str, other: str) -> dict:
    return _quirk(
        shard,
        "case_collision",
        member,
        None,
        f"differs from member {other!r} only in case: both are built, but a "
        "case-insensitive file system (macOS, Windows) would hold only one",
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


def _decide(name: str, samples: dict[str, Sample], duplicates: list, quirks: list[dict]):
    """Placements of every member and the partition row of every complete sample."""
    placements = [Placement(m, dest, ASIDE, sample_key(m.path)) for m, dest in duplicates]
    rows: dict[str, dict] = {}
    for key, s in samples.items():
        for m in s.others:
            detail = "not an image (.png/.jpg/.jpeg) or .json: kept aside"
            quirks.append(_quirk(name, "unexpected_member", m.member, None, detail))
            placements.append(_aside(name, m, key))
        members = ([s.json] if s.json else []) + s.images
        if not members:
            continue
        problem, image = _problem(s)
        if problem:
            for m in members:
                quirks.append(_quirk(name, problem[0], m.member, None, problem[1]))
                placements.append(_aside(name, m, key))
            continue
        for m in s.images:
            if m is not image:
                detail = f"another image of sample {key!r} was kept"
                quirks.append(_quirk(name, "second_image", m.member, None, detail))
                placements.append(_aside(name, m, key))
        placements.append(Placement(s.json, f"data/{s.json.path}", JSON, key))
        placements.append(Placement(image, f"data/{image.path}", IMAGE, key))
        rows[key] = partition_row(
            image.path, s.json.path, s.json.obj, s.json.raw, image.header, key
        )
        s.json.obj = s.json.raw = None  # the row holds what is needed now
    return placements, rows


def _problem(s: Sample) -> tuple[tuple[str, str] | None, Member | None]:
    """Why a sample is incomplete ((quirk kind, detail) or None), and its image."""
    if s.json is None:
        return ("image_without_json", "image has no JSON"), None
    if not s.images:
        return ("json_without_image", "JSON has no image"), None
    if s.json.obj is None:
        return ("invalid_json", s.json.json_error or ""), None
    image = _winner(s)
    if image.header is None:
        detail = f"{image.member}: not a readable PNG/JPEG header ({image.size} bytes)"
        return ("bad_image", detail), image
    return None, image


def _commit(
    db,
    settings: Settings,
    name: str,
    tar_path: Path,
    placements: list[Placement],
    quirks: list[dict],
) -> tuple[dict[str, Placement], set[str]]:
    """Settle contested paths, move members to their places and record them, batch by batch;
    return the placements by destination and the samples that lost their place."""
    placed: dict[str, Placement] = {}
    dropped: set[str] = set()
    made_dirs: set[str] = set()
    blocked = _blocked(db, settings, name, placements, quirks)
    places = places_samples(settings)
    for batch in batched(placements, COMMIT_BATCH):
        fresh: list[str] = []  # placed by this batch, with no row until it commits
        _list_placing(settings, name, batch)
        try:
            with write_transaction(db) as conn:
                lost = _settle(conn, settings, name, batch, quirks) | blocked
                files.drop_pending(
                    conn, name, [p.dest for p in batch if p.sample in lost and p.kind != ASIDE]
                )
                file_rows, vacated = [], []
                for p in batch:
                    if p.sample in lost and p.kind != ASIDE:
                        p = _aside(name, p.member, p.sample)
                        dropped.add(p.sample)
                    if p.member.loc and p.member.loc != p.dest:
                        vacated.append(p.member.loc)
                    if not places and p.kind != ASIDE:
                        file_rows.append(_unplaced_row(name, p))
                    else:
                        p = _place_or_unplace(
                            settings, tar_path, name, p, made_dirs, fresh, len(placed), quirks
                        )
                        file_rows.append(_file_row(settings, name, p))
                    placed[p.dest] = p
                vacated = [v for v in vacated if v.startswith("data/")]
                files.drop_of_shard(conn, name, vacated)
                remove_empty_folders(settings.data_dir, vacated)
                files.upsert(conn, file_rows)
        except BaseException:
            for dest in fresh:  # nothing unrecorded stays in data/
                if dest.startswith("data/"):
                    Path(settings.root, dest).unlink(missing_ok=True)
            raise
    return placed, dropped


def _unplaced_row(shard: str, p: Placement) -> files.FileRow:
    """The `files` row of a sample member left in its tar (nothing on disk)."""
    return _member_row(shard, p, p.member.size, tar_layout.UNPLACED)


def _place_or_unplace(
    settings: Settings,
    tar_path: Path,
    name: str,
    p: Placement,
    made_dirs: set[str],
    fresh: list[str],
    index: int,
    quirks: list[dict],
) -> Placement:
    """Place a member; one kept aside whose own path is blocked goes to `unplaced/`."""
    new = p.member.loc != p.dest
    try:
        _place(settings, tar_path, p, made_dirs)
    except OSError as exc:
        if p.kind != ASIDE or exc.errno not in PATH_ERRNOS:
            raise
        p = _unplaced(name, p, index, quirks)
        _place(settings, tar_path, p, made_dirs)
    if new:
        fresh.append(p.dest)
    return p


def _unplaced(name: str, p: Placement, index: int, quirks: list[dict]) -> Placement:
    """A place under `incomplete/<shard>/unplaced/` for a member kept aside whose own
    path there is blocked (by what an earlier build of the shard kept aside)."""
    dest = f"incomplete/{name}/unplaced/{index}{posixpath.splitext(p.dest)[1]}"
    detail = f"{p.dest} is blocked by a file or folder: kept as {dest}"
    quirks.append(_quirk(name, "path_conflict", p.member.member, dest, detail))
    return Placement(p.member, dest, ASIDE, p.sample)


def _blocked(db, settings: Settings, name: str, placements: list[Placement], quirks: list[dict]):
    """Samples whose path in `data/` a file or folder of another shard stands in the way of.

    Only members not yet at their place are looked at. What shards sorting later put in
    the way is moved aside
    (`_take_over`), so the outcome does not depend on which shard was built first.
    """
    blocked: set[str] = set()
    root = str(settings.root)
    folders: dict[str, str | None] = {}
    for p in placements:
        if p.kind == ASIDE or p.member.loc == p.dest or p.sample in blocked:
            continue
        why = path_blocked(root, p.dest, folders)
        if why is not None and _take_over(db, settings, name, p.dest, quirks):
            folders.clear()  # the take-over moved files: what was learnt may be stale
            why = path_blocked(root, p.dest, folders)
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


def _take_over(db, settings: Settings, name: str, dest: str, quirks: list[dict]) -> bool:
    """Move aside the samples of shards sorting later whose files block `dest` (a file
    where its folder goes, files under a folder where it goes); False (nothing moved)
    when anything else blocks it: this shard's own files, a shard sorting first, or a
    file the manifest does not know."""
    rows = clashes.blocking_rows(db, dest)
    if not rows or any(
        r["shard"] is None or r["shard"] <= name or r["kind"] not in (IMAGE, JSON, CAPTION)
        for r in rows
    ):
        return False
    with write_transaction(db) as conn:
        for other, sample in sorted({(r["shard"], r["sample"]) for r in rows}):
            for r in clashes.sample_rows_in_data(conn, other, sample):
                if r["kind"] == CAPTION:
                    _drop_caption(conn, settings, r)
                elif r["kind"] in MEMBER_KINDS:
                    _displace(conn, settings, other, r["path"])
            detail = f"{dest} of shard {name} (it sorts first) needs this path: kept aside"
            quirks.append(_quirk(other, "path_conflict", None, dest, detail))
        shards.invalidate(conn, {r["shard"] for r in rows}, partition=True, captions=True)
    return True


def _drop_caption(conn, settings: Settings, r: dict) -> None:
    """Remove the caption file of a sample moved aside; a hand edit goes to edited/."""
    target = settings.root / r["path"]
    if left_as_built(target, r):
        target.unlink()
    elif is_regular(target):
        move_edited_caption(settings, r["path"])
    files.delete(conn, [r["path"]])
    remove_empty_folders(settings.data_dir, [r["path"]])


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
    if row["mtime_ns"] == tar_layout.UNPLACED:  # left in its tar: that shard is read again
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


def _file_row(settings: Settings, shard: str, p: Placement) -> files.FileRow:
    m = p.member
    if m.mtime_ns is None or m.stale_stat:
        st = os.stat(f"{settings.root}/{p.dest}")
        return _member_row(shard, p, st.st_size, -1 if m.stale_stat else st.st_mtime_ns)
    return _member_row(shard, p, m.size, m.mtime_ns)


def _member_row(shard: str, p: Placement, size: int, mtime_ns: int) -> files.FileRow:
    """The `files` row of a member at its placement, with the given stat."""
    m = p.member
    width, height = m.header if m.header else (None, None)
    return files.file_row(
        p.dest,
        p.kind,
        shard=shard,
        sample=p.sample,
        member=m.member,
        offset=m.offset,
        size=size,
        mtime_ns=mtime_ns,
        xxh3=m.xxh3,
        width=width,
        height=height,
    )


def _finish(job: _Job, digest: str, placed: dict, part_row: files.FileRow, samples: int) -> None:
    """Drop what this shard no longer holds, write its partition, mark it done."""
    db, settings, name, rel, st = job.db, job.settings, job.name, job.rel, job.st
    previous, quirks = job.previous, job.quirks
    legacy = f"incomplete/{name}/edited-by-hand/"  # where earlier versions kept hand edits
    stale = [
        r
        for path, r in previous.items()
        if path not in placed
        and r["kind"] in (IMAGE, JSON, ASIDE, PENDING)
        and not (r["kind"] == ASIDE and path.startswith(legacy))  # the user's: never deleted
    ]
    _drop_stale(settings, name, stale, quirks)
    with write_transaction(db) as conn:
        files.delete(conn, [r["path"] for r in stale])
        quirk_rows.replace(conn, name, quirks)
        files.upsert(conn, [part_row])
        current = json_digest(conn, name)
        expected = digest_pairs((d, p.member.xxh3) for d, p in placed.items() if p.kind == JSON)
        shards.mark_done(
            conn,
            name,
            rel,
            st,
            xxh3=digest,
            members=len(placed),
            samples=samples,
            aside=sum(1 for p in placed.values() if p.kind == ASIDE),
            part_xxh3=part_row["xxh3"],
            json_digest=current if current == expected else None,
        )


def _clear_stale_data(
    db, settings: Settings, name: str, previous: dict, placements: list[Placement], quirks: list
) -> None:
    """Before placing: drop this shard's files in `data/` that the new tar no longer
    holds, and their images' unedited captions, so that they never stand in the way of
    its new paths; edited ones go to `edited/`. Their rows go when the shard is committed."""
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
        if ours and left_as_built(settings.root / caption["path"], caption):
            (settings.root / caption["path"]).unlink()
            dropped.append(caption["path"])
    with write_transaction(db) as conn:
        files.delete(conn, dropped)
    _drop_stale(settings, name, stale, quirks)


def _drop_stale(settings: Settings, name: str, stale: list[dict], quirks: list) -> None:
    """Delete stale files of this shard that are as the build left them; move files in
    `data/` that were changed by hand to `edited/` (named in a quirk)."""
    for r in stale:
        target = settings.root / r["path"]
        if left_as_built(target, r):
            target.unlink(missing_ok=True)
        elif r["path"].startswith("data/") and r["kind"] in MEMBER_KINDS and is_regular(target):
            dest = keep_edited(settings, name, r)
            detail = (
                f"{r['path']} was changed by hand, but the shard's new tar no longer holds "
                f"its sample: your version is kept as {dest}"
            )
            quirks.append(_quirk(name, "edited_kept_aside", r["member"], dest, detail))
    remove_empty_folders(settings.data_dir, [r["path"] for r in stale])


def left_as_built(target: Path, r: dict) -> bool:
    """Whether `target` is the file its row describes (False when its folder is gone
    or has become a file)."""
    try:
        return file_matches(target, r["size"], r["mtime_ns"], r["xxh3"])
    except NotADirectoryError:
        return False


def keep_edited(settings: Settings, name: str, r: dict) -> str:
    """Move a file of this shard in `data/` changed by hand to
    `edited/{json,images}/<shard>/<its path under data/>` (a new name if an earlier edit is
    there); its new path relative to the root. Not a manifest row: the user's file."""
    rel = r["path"].removeprefix("data/")
    base = settings.root / EDITED_SHARD_FILES[FileKind(r["kind"])] / name / rel
    dest, n = base, 0
    while os.path.lexists(dest):
        n += 1
        dest = base.with_name(f"{base.name}.{n}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    move_file(settings.root / r["path"], dest)
    remove_empty_folders(settings.data_dir, [r["path"]])
    return os.path.relpath(dest, settings.root)


def _move_special_files(settings: Settings, name: str, previous: dict, quirks: list) -> None:
    """Move a FIFO, device or socket standing where this shard's file in `data/` was to
    `strays/` (never opened: a FIFO would block the build), named; the tar's file is
    written in its place."""
    for path, r in previous.items():
        if not path.startswith("data/") or r["kind"] not in (*MEMBER_KINDS, CAPTION):
            continue
        target = settings.root / path
        try:
            mode = os.stat(target).st_mode
        except (FileNotFoundError, NotADirectoryError):
            continue
        if S_ISREG(mode) or S_ISDIR(mode):
            continue
        base = settings.root / STRAYS_DIR / path.removeprefix("data/")
        dest, n = base, 0
        while os.path.lexists(dest):
            n += 1
            dest = base.with_name(f"{base.name}.{n}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(target, dest)
            rel = os.path.relpath(dest, settings.root)
        except OSError as exc:  # strays/ on another file system: it holds no bytes to keep
            if exc.errno != errno.EXDEV:
                raise
            target.unlink()
            rel = None
        where = f"moved to {rel}" if rel else "removed"
        detail = f"{path} was a FIFO, device or socket (never read): {where}"
        quirks.append(_quirk(name, "special_file_moved", r["member"], rel or path, detail))


@dataclass
class _EditAside:
    """A JSON edited by hand, moved to `edited/` while its shard's changed tar is read."""

    path: str  # under data/, relative to the root
    kept: str  # where the user's version is now, relative to the root
    original: str  # XXH3 of the JSON as the earlier tar held it


def _set_edits_aside(db, settings: Settings, name: str, previous: dict) -> list[_EditAside]:
    """Before a changed tar is read: move each JSON of this shard in `data/` that differs
    from what the earlier tar held (an edit, picked up or not) to `edited/`, so that
    the new tar's copy never overwrites it (`_settle_edits` decides where it ends up)."""
    originals = edits.originals(db)
    out = []
    for path, r in previous.items():
        if r["kind"] != JSON or not path.startswith("data/"):
            continue
        target = settings.root / path
        original = originals.get(path, r["xxh3"])
        if not is_regular(target) or (left_as_built(target, r) and r["xxh3"] == original):
            continue  # gone, not a file, or as the tar held it
        if hash_file(target) == original:
            continue  # touched, or edited back to the tar's bytes
        out.append(_EditAside(path, keep_edited(settings, name, r), original))
    return out


def _settle_edits(
    db, settings: Settings, name: str, placed: dict, aside: list[_EditAside], quirks: list
) -> None:
    """After the new tar is placed: an edited JSON whose sample the new tar holds
    unchanged goes back to `data/` (picked up by the scan); any other stays in `edited/`,
    named: the new tar's JSON is in `data/`."""
    back, gone = [], []
    for e in aside:
        p = placed.get(e.path)
        if p is not None and p.kind == JSON and p.member.xxh3 == e.original:
            move_file(settings.root / e.kept, settings.root / e.path)
            st = os.stat(settings.root / e.path)
            back.append((e, st.st_size, st.st_mtime_ns, hash_file(settings.root / e.path)))
            detail = (
                f"{e.path} was edited by hand; the shard's new tar holds the same JSON for "
                "it, so your version stays in data/ and is used"
            )
            quirks.append(_quirk(name, "edited_json_kept", p.member.member, e.path, detail))
            continue
        gone.append(e.path)
        held = "holds another version of it" if p is not None else "no longer holds its sample"
        detail = (
            f"{e.path} was edited by hand, but the shard's new tar {held}: the tar's version "
            f"is used; yours is kept as {e.kept} (copy your changes over to keep them)"
        )
        member = p.member.member if p is not None else None
        quirks.append(_quirk(name, "edited_kept_aside", member, e.kept, detail))
    _tidy_edited(settings, [e.kept for e, *_ in back])
    kept_back = {e.path for e, *_ in back}
    tars_own = [p for p in edits.originals(db) if p in placed and p not in kept_back]
    with write_transaction(db) as conn:
        for e, size, mtime_ns, xxh3 in back:
            files.set_content(conn, e.path, size, mtime_ns, xxh3)
            edits.remember_original(conn, e.path, e.original)
        edits.forget(conn, gone + tars_own)  # data/ holds the tar's JSON there now


def _put_edits_back(db, settings: Settings, previous: dict, aside: list[_EditAside]) -> None:
    """A failed extraction: edited JSON files set aside go back to `data/` as they were."""
    rows = []
    for e in aside:
        (settings.root / e.path).parent.mkdir(parents=True, exist_ok=True)
        move_file(settings.root / e.kept, settings.root / e.path)
        if e.path in previous:
            rows.append(previous[e.path])
    _tidy_edited(settings, [e.kept for e in aside])
    with write_transaction(db) as conn:
        files.upsert(conn, rows)


def _tidy_edited(settings: Settings, moved_out: list[str]) -> None:
    """Remove the folders of `edited/` that files moved back out of left empty."""
    top = settings.root / EDITED_DIR
    remove_empty_folders(top, moved_out)
    with contextlib.suppress(OSError):
        top.rmdir()  # when empty: nothing of the user's is kept aside


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
        if left_as_built(target, r):
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
