"""`captions:<shard>`: one `data/<stem>.txt` per image, from the shard's partition.

Only files whose text changes are written (in place: a caption's manifest row is
committed after its file is complete, so a killed write is redone); switching
`caption_field` back restores the exact bytes. With `caption_strategy = "parquet"` the
caption files this build wrote are removed (never a file the manifest does not list,
nor one changed since we wrote it).

A caption file edited by hand (its bytes differ from what the build last wrote) is the
user's: it stays while the build's text for it stays the same (a plain `doit`, a rebuild
of its shard, `parquet` and back), and is moved to `edited/captions/` and named
before a different text replaces it (a `caption_field` switch, an edited JSON).
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass, field
from stat import S_ISDIR, S_ISREG

from state import files, shards
from state.atomic import DiskFullError, InPlaceRewriter, write_if_absent, write_in_place
from state.caption_state import (
    WRITING,
    begin_rewrites,
    caption_rows,
    end_rewrites,
    record_written,
    rewrites_under_way,
    set_caption_failure,
    settle_rewrites,
)
from state.hashing import file_matches, hash_bytes, stat_matches
from state.kinds import EDITED_CAPTIONS, FileKind
from state.manifest import open_manifest, write_transaction
from tasks.caption_fields import caption_columns, caption_texts, check_caption_fields
from tasks.freshness import captions_due
from tasks.partition import read_partition
from tasks.settings import Settings, partition_path

CAPTION = FileKind.CAPTION

WRITE_BATCH = 2000


@dataclass
class CaptionResult:
    """What `write_captions` did for one shard."""

    shard: str
    written: int = 0
    unchanged: int = 0
    removed: int = 0
    kept_edited: list[str] = field(default_factory=list)  # edited by hand, left in place
    moved_edited: list[tuple[str, str]] = field(default_factory=list)  # (from, to)
    failed: list[str] = field(default_factory=list)  # one line per file not written
    up_to_date: bool = False


def caption_path(filename: str) -> str:
    """`data/<stem>.txt` for an image path relative to `data/` (the stem as
    `posixpath.splitext` gives it, without its call cost per file)."""
    sep, dot = filename.rfind("/"), filename.rfind(".")
    if dot > sep:
        # splitext's rule: a name's leading dots start no extension (`.png` has none)
        for i in range(sep + 1, dot):
            if filename[i] != ".":
                return f"data/{filename[:dot]}.txt"
    return f"data/{filename}.txt"


def write_captions(settings: Settings, shard: str) -> CaptionResult:
    """Bring the caption files of one shard in line with its partition and the settings.

    A caption file edited by hand (its bytes differ from what the build last wrote) is
    the user's: left in place while the build's text for it is unchanged, and moved to
    `edited/captions/` (named in the result) before a new text replaces it.
    A file that cannot be written is named in `result.failed`; the rest are written.
    """
    result = CaptionResult(shard)
    db = open_manifest(settings.root)
    try:
        key = captions_due(db, settings, shard)
        if key is None or not partition_path(settings, shard).exists():
            result.up_to_date = True
            return result
        check_caption_fields(db, settings)  # before anything is written
        if rewrites_under_way(db):  # a killed run's batch: its rows become WRITING rows
            with write_transaction(db) as conn:
                settle_rewrites(conn)
        existing = caption_rows(db, shard)
        wanted: dict[str, tuple[str, str]] = {}
        if settings.caption_strategy == "textfile":
            table = read_partition(settings, shard, caption_columns(settings))
            for filename, sample, text in zip(
                table.column("filename").to_pylist(),
                table.column("sample").to_pylist(),
                caption_texts(table, settings),
                strict=True,
            ):
                wanted[caption_path(filename)] = (sample, text)
        _Writer(db, settings, shard, result).write(wanted, existing)
        _remove_unwanted(db, settings, existing, wanted, result)
        failure = _failure_line(shard, result.failed)
        with write_transaction(db) as conn:
            set_caption_failure(conn, shard, failure)
            if failure is None:
                shards.set_captions_key(conn, shard, key)
    finally:
        db.close()
    return result


def _failure_line(shard: str, failed: list[str]) -> str | None:
    if not failed:
        return None
    more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
    return f"captions of {shard}: {failed[0]}{more}"


class _Writer:
    """Writes the wanted captions of one shard, batch by batch, file by file."""

    def __init__(self, db, settings: Settings, shard: str, result: CaptionResult):
        self.db, self.settings, self.shard, self.result = db, settings, shard, result
        self.root = str(settings.root) + os.sep
        self.new: list[files.FileRow] = []
        self.rewrites: list[tuple[str, bytes, str, str]] = []  # (target, data, xxh3, path)

    def write(self, wanted: dict[str, tuple[str, str]], existing: dict) -> None:
        """Write the captions whose text changed; record them (a changed row is updated
        in place: its indexed columns stay as they are, which makes a switch cheap)."""
        with InPlaceRewriter() as rewriter:
            self.rewriter = rewriter
            for path, (sample, text) in wanted.items():
                data = text.encode("utf-8", "surrogatepass")
                try:
                    self._one(path, sample, data, hash_bytes(data), existing.get(path))
                except DiskFullError:
                    raise
                except OSError as exc:
                    self._failed(path, exc)
                if len(self.new) + len(self.rewrites) >= WRITE_BATCH:
                    self._flush()
            self._flush()

    def _one(self, path: str, sample: str, data: bytes, digest: str, old) -> None:
        target = self.root + path
        result = self.result
        if old is None:  # O_EXCL opens nothing that exists: no stat needed first
            self._create(path, sample, target, data, digest)
            return
        st = _stat(target)  # one stat answers every question below
        if st is not None and _special_mode(st.st_mode):  # never opened: a FIFO would block
            result.failed.append(_special_line(path))
        elif old[1] == WRITING:  # a rewrite a killed run may have cut short
            self.rewrites.append((target, data, digest, path))
        elif st is not None and S_ISREG(st.st_mode) and stat_matches(target, st, *old):
            if old[2] == digest:  # what the build last wrote, and its text stays
                result.unchanged += 1
            else:
                self.rewrites.append((target, data, digest, path))
        elif st is None or not S_ISREG(st.st_mode):  # gone (a folder there fails when written)
            self.rewrites.append((target, data, digest, path))
        elif _holds(target, data):
            st = os.stat(target)
            self._flush_rows([(st.st_size, st.st_mtime_ns, digest, path)])
            result.unchanged += 1
        elif old[2] == digest:  # edited by hand; the build's text is the same: the user's
            result.kept_edited.append(path)
        else:
            self._move_aside(path)
            self.rewrites.append((target, data, digest, path))

    def _create(self, path: str, sample: str, target: str, data: bytes, digest: str) -> None:
        result = self.result
        st = write_if_absent(target, data)
        if st is None:
            if _special(target):  # never opened: a FIFO would block the build
                result.failed.append(_special_line(path))
                return
            if _holds(target, data):  # written before the state was reset
                st = os.stat(target)
                result.unchanged += 1
            else:
                if not _cut_short(target, data) and not self._vouched_by_another_shard(
                    path, target
                ):
                    self._move_aside(path)  # edited by hand
                st = write_in_place(target, data)
                result.written += 1
        else:
            result.written += 1
        self.new.append(
            files.file_row(
                path,
                CAPTION,
                shard=self.shard,
                sample=sample,
                size=st.st_size,
                mtime_ns=st.st_mtime_ns,
                xxh3=digest,
            )
        )

    def _vouched_by_another_shard(self, path: str, target: str) -> bool:
        """The file is the caption another shard wrote for the path (its owner changed)."""
        row = files.get(self.db, path)
        return (
            row is not None
            and row["kind"] == CAPTION
            and row["mtime_ns"] != WRITING
            and file_matches(target, row["size"], row["mtime_ns"], row["xxh3"])
        )

    def _move_aside(self, path: str) -> None:
        """Move a caption file the build is about to replace to edited/captions/."""
        dest = move_edited_caption(self.settings, path)
        self.result.moved_edited.append((path, dest))

    def _failed(self, path: str, exc: OSError) -> None:
        if isinstance(exc, IsADirectoryError) or os.path.isdir(self.root + path):
            line = f"{path} is a folder where the caption file goes: move it away"
        else:
            line = (
                f"cannot write {path} ({exc.strerror or exc}): make it writable "
                "(chmod u+w, or chattr -i) or move it away"
            )
        self.result.failed.append(f"{line}, then run doit again")

    def _flush(self) -> None:
        """Record the new rows, then rewrite the changed files (recorded as being written
        first, so a killed rewrite is never taken for a hand edit)."""
        if self.new:
            with write_transaction(self.db) as conn:
                files.upsert(conn, self.new)
            self.new.clear()
        if not self.rewrites:
            return
        jobs, self.rewrites = self.rewrites, []
        with write_transaction(self.db) as conn:
            begin_rewrites(conn, self.shard, [path for _, _, _, path in jobs])
        try:
            stats = self.rewriter.rewrite([(target, data) for target, data, _, _ in jobs])
        except DiskFullError:
            raise
        except OSError:  # one file at a time, to name the ones that cannot be written
            stats = []
            for target, data, _, path in jobs:
                try:
                    stats.append(write_in_place(target, data))
                except DiskFullError:
                    raise
                except OSError as exc:
                    self._failed(path, exc)
                    stats.append(None)
        rows = [
            (st.st_size, st.st_mtime_ns, digest, path)
            for st, (_, _, digest, path) in zip(stats, jobs, strict=True)
            if st is not None
        ]
        unfinished = [path for st, (_, _, _, path) in zip(stats, jobs, strict=True) if st is None]
        self.result.written += len(rows)
        with write_transaction(self.db) as conn:
            record_written(conn, rows)
            end_rewrites(conn, self.shard, unfinished)

    def _flush_rows(self, rows: list[tuple[int, int, str, str]]) -> None:
        if rows:
            with write_transaction(self.db) as conn:
                record_written(conn, rows)


def move_edited_caption(settings: Settings, path: str) -> str:
    """Move `path` (a caption under data/) to edited/captions/, under a new
    name if an earlier edit is there already; its new path relative to the root."""
    rel = path[len("data/") :] if path.startswith("data/") else path
    base = settings.root / EDITED_CAPTIONS / rel
    dest, n = base, 0
    while dest.exists():
        n += 1
        dest = base.with_name(f"{base.name}.{n}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    src = settings.root / path
    try:
        os.rename(src, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        shutil.copy2(src, dest)  # data/ on another file system
        os.unlink(src)
    return os.path.relpath(dest, settings.root)


def _special_line(path: str) -> str:
    return (
        f"{path} is a FIFO, device or socket where the caption file goes: remove it "
        "(or run `doit repair`), then run doit again"
    )


def _stat(path: str) -> os.stat_result | None:
    """The stat of `path` (symlinks followed), or None when nothing is there."""
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _special_mode(mode: int) -> bool:
    """Whether a mode is neither a regular file's nor a folder's."""
    return not S_ISREG(mode) and not S_ISDIR(mode)


def _special(path: str) -> bool:
    """Whether `path` is neither a regular file, nor a folder, nor absent."""
    st = _stat(path)
    return st is not None and _special_mode(st.st_mode)


def _is_file(path: str) -> bool:
    try:
        return S_ISREG(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False


def _cut_short(path: str, data: bytes) -> bool:
    """Whether `path` holds a strict prefix of `data`: a create a killed run did not finish."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(data))
            return len(head) < len(data) and data.startswith(head) and not f.read(1)
    except OSError:
        return False


def _holds(path: str, data: bytes) -> bool:
    """Whether `path` is a file holding exactly `data`."""
    try:
        with open(path, "rb") as f:
            return os.fstat(f.fileno()).st_size == len(data) and f.read() == data
    except FileNotFoundError:
        return False


def _remove_unwanted(db, settings, existing, wanted, result) -> None:
    gone = []
    for path, r in existing.items():
        if path in wanted:
            continue
        target = settings.root / path
        try:
            if r[1] == WRITING or file_matches(target, *r):  # ours (maybe cut short)
                if _is_file(str(target)):
                    os.unlink(target)
                    result.removed += 1
            elif _is_file(str(target)):  # edited by hand: stays, and so does its row
                result.kept_edited.append(path)
                continue
        except OSError as exc:
            result.failed.append(f"cannot remove {path} ({exc.strerror or exc}): remove it by hand")
            continue
        gone.append(path)
    if gone:
        with write_transaction(db) as conn:
            files.delete(conn, gone)
