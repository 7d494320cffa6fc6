"""`captions:<shard>`: one `data/<stem>.txt` per image, from the shard's partition.

Only files whose text changes are written (in place: a caption's manifest row is
committed after its file is complete, so a killed write is redone); switching
`caption_field` back restores the exact bytes. With `caption_strategy = "parquet"` the
caption files this build wrote are removed (never a file the manifest does not list,
nor one changed since we wrote it).
"""

from __future__ import annotations

import os
import posixpath
import sys
from dataclasses import dataclass

import pyarrow as pa

from state.atomic import InPlaceRewriter, write_if_absent, write_in_place
from state.hashing import file_matches, hash_bytes
from state.manifest import (
    delete_files,
    open_manifest,
    shard_row,
    upsert_files,
    write_transaction,
)
from tasks.freshness import captions_key
from tasks.partition import read_partition
from tasks.records import CAPTION_COLUMNS, join_caption_lines, select_caption
from tasks.settings import Settings, partition_path

WRITE_BATCH = 2000


@dataclass
class CaptionResult:
    """What `write_captions` did for one shard."""

    shard: str
    written: int = 0
    unchanged: int = 0
    removed: int = 0
    kept_edited: int = 0
    up_to_date: bool = False


def caption_texts(table: pa.Table, settings: Settings) -> list[str]:
    """The caption of every row of a partition table, per `caption_field`."""
    fields = settings.caption_field
    known = {f for f in fields if f in CAPTION_COLUMNS}
    columns = {f: table.column(f"cap_{f}").to_pylist() for f in known}
    if known == set(fields):  # the common case, as select_caption without a dict per row
        if len(fields) == 1:
            texts = ["" if v is None else v for v in columns[fields[0]]]
        else:
            rows = zip(*(columns[f] for f in fields), strict=True)
            texts = [_first_caption(values) for values in rows]
        if settings.join_caption_lines:
            texts = [join_caption_lines(t) for t in texts]
        return texts
    raws = table.column("json").to_pylist()
    return [
        select_caption(
            {f: columns[f][i] for f in known}, raws[i], fields, settings.join_caption_lines
        )
        for i in range(table.num_rows)
    ]


def _first_caption(values: tuple[str | None, ...]) -> str:
    """select_caption over values already taken from the fields, in order."""
    for v in values:
        if v is not None and v.strip():
            return v
    return next((v for v in values if v is not None), "")


def caption_path(filename: str) -> str:
    """`data/<stem>.txt` for an image path relative to `data/`."""
    return f"data/{posixpath.splitext(filename)[0]}.txt"


def partition_columns(settings: Settings) -> list[str]:
    """The partition columns needed to make captions under the current settings."""
    cols = ["filename", "sample"] + [
        f"cap_{f}" for f in settings.caption_field if f in CAPTION_COLUMNS
    ]
    if any(f not in CAPTION_COLUMNS for f in settings.caption_field):
        cols.append("json")
    return cols


def write_captions(settings: Settings, shard: str) -> CaptionResult:
    """Bring the caption files of one shard in line with its partition and the settings."""
    result = CaptionResult(shard)
    db = open_manifest(settings.root)
    try:
        row = shard_row(db, shard)
        if row is None or not partition_path(settings, shard).exists():
            result.up_to_date = True
            return result
        key = captions_key(row["part_xxh3"], settings)
        if row["captions_key"] == key:
            result.up_to_date = True
            return result
        existing = _caption_rows(db, shard)
        wanted: dict[str, tuple[str, str]] = {}
        if settings.caption_strategy == "textfile":
            table = read_partition(settings, shard, partition_columns(settings))
            for filename, sample, text in zip(
                table.column("filename").to_pylist(),
                table.column("sample").to_pylist(),
                caption_texts(table, settings),
                strict=True,
            ):
                wanted[caption_path(filename)] = (sample, text)
        _write_wanted(db, settings, shard, wanted, existing, result)
        _remove_unwanted(db, settings, existing, wanted, result)
        with write_transaction(db) as conn:
            conn.execute("UPDATE shards SET captions_key = ? WHERE name = ?", (key, shard))
    finally:
        db.close()
    return result


def _caption_rows(db, shard: str) -> dict[str, tuple[int, int, str]]:
    """path -> (size, mtime_ns, xxh3) of the shard's caption rows."""
    rows = db.execute(
        "SELECT path, size, mtime_ns, xxh3 FROM files WHERE shard = ? AND kind = 'caption'",
        [shard],
    )
    return {path: (size, mtime_ns, xxh3) for path, size, mtime_ns, xxh3 in rows}


def _write_wanted(db, settings, shard, wanted, existing, result) -> None:
    """Write the captions whose text changed; record them (a changed row is updated in
    place: its indexed columns stay as they are, which makes a switch cheap)."""
    new: list[dict] = []
    rewrites: list[tuple[str, bytes, str, str]] = []  # (target, data, xxh3, path)
    root = str(settings.root) + os.sep
    with InPlaceRewriter() as rewriter:
        for path, (sample, text) in wanted.items():
            data = text.encode("utf-8", "surrogatepass")
            digest = hash_bytes(data)
            old = existing.get(path)
            target = root + path
            if old is not None:
                if old[2] == digest and file_matches(target, *old):
                    result.unchanged += 1
                else:
                    rewrites.append((target, data, digest, path))
                    result.written += 1
            else:
                st = write_if_absent(target, data)
                if st is not None:
                    result.written += 1
                elif _holds(target, data):  # written before the state was reset
                    st = os.stat(target)
                    result.unchanged += 1
                else:  # stale, or cut short by a killed run: no row vouches for it
                    st = write_in_place(target, data)
                    result.written += 1
                new.append(
                    {
                        "path": path,
                        "shard": shard,
                        "kind": "caption",
                        "sample": sample,
                        "size": st.st_size,
                        "mtime_ns": st.st_mtime_ns,
                        "xxh3": digest,
                    }
                )
            if len(new) + len(rewrites) >= WRITE_BATCH:
                _flush(db, new, _rewrite(rewriter, rewrites))
        _flush(db, new, _rewrite(rewriter, rewrites))


def _rewrite(rewriter: InPlaceRewriter, rewrites: list[tuple]) -> list[tuple]:
    """Write the batch of changed captions; their (size, mtime_ns, xxh3, path) rows."""
    stats = rewriter.rewrite([(target, data) for target, data, _, _ in rewrites])
    rows = [
        (st.st_size, st.st_mtime_ns, digest, path)
        for st, (_, _, digest, path) in zip(stats, rewrites, strict=True)
    ]
    rewrites.clear()
    return rows


def _holds(path: str, data: bytes) -> bool:
    """Whether `path` is a file holding exactly `data`."""
    try:
        with open(path, "rb") as f:
            return os.fstat(f.fileno()).st_size == len(data) and f.read() == data
    except FileNotFoundError:
        return False


def _flush(db, new: list[dict], changed: list[tuple]) -> None:
    if new or changed:
        with write_transaction(db) as conn:
            upsert_files(conn, new)
            conn.executemany(
                "UPDATE files SET size = ?, mtime_ns = ?, xxh3 = ? WHERE path = ?", changed
            )
        new.clear()
        changed.clear()


def _remove_unwanted(db, settings, existing, wanted, result) -> None:
    gone = []
    for path, r in existing.items():
        if path in wanted:
            continue
        target = settings.root / path
        if file_matches(target, *r):
            os.unlink(target)
            result.removed += 1
        elif target.exists():
            result.kept_edited += 1
            print(
                f"warning: {target} changed since the build wrote it: left in place",
                file=sys.stderr,
            )
        gone.append(path)
    if gone:
        with write_transaction(db) as conn:
            delete_files(conn, gone)
