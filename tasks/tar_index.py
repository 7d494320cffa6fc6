"""`layout = "tars"`: one webshart index per shard, so SimpleTuner trains from the tars.

An index (webshart's `src/metadata.rs` format) lists the image member of every complete
sample: key = the member's name in the tar, `offset` = first byte of its data, `length`,
`width`/`height`/`aspect` (the table's size), `captions` = the caption the `.txt` files
would hold (tasks/captions.py), and where the sample's JSON lies. It is made from the
manifest (offsets, sizes) and the shard's partition (sizes, captions): no tar and no JSON
is read, so a caption switch rewrites the indexes only. Samples kept aside are not listed.

Indexes live under `<root>/webshart/`, mirroring the tars below `source_dir` (the `shards`
glob's fixed folder), which is where webshart looks with `metadata=<root>/webshart`.
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from state import shards, tar_layout
from state.hashing import file_matches
from state.manifest import connect_if_present
from tasks.settings import Settings, _fixed_parts

INDEX_DIR = "webshart"
INDEX_FORMAT = 1  # bumped when what an index holds changes


@dataclass
class IndexResult:
    """What `write_index` did for one shard."""

    shard: str
    samples: int = 0
    written: bool = False
    removed: bool = False
    forgotten: list[str] = field(default_factory=list)  # trainer caches of the old index
    unseen: str | None = None  # the tar, when webshart will not see it (a symlink)


def source_dir(settings: Settings) -> Path:
    """The folder webshart walks for tars: the `shards` glob's fixed folder."""
    return settings.root.joinpath(*_fixed_parts(settings.shards))


def index_dir(settings: Settings) -> Path:
    """`<root>/webshart`: the `metadata` folder of the SimpleTuner entry."""
    return settings.root / INDEX_DIR


def index_rel(settings: Settings, tar_rel: str) -> str:
    """The index of the tar at `tar_rel` (relative to root), relative to root."""
    under = os.path.relpath(settings.root / tar_rel, source_dir(settings))
    stem = under[:-4] if under.endswith(".tar") else under
    return f"{INDEX_DIR}/{stem}.json"


def webshart_skips(settings: Settings, tar_rel: str) -> bool:
    """Whether webshart cannot see this tar: it ignores symlinked tars and folders when it
    walks a local source."""
    source = source_dir(settings)
    path = settings.root / tar_rel
    while path != source and source in path.parents:
        if path.is_symlink():
            return True
        path = path.parent
    return False


def index_key(settings: Settings, row: dict) -> str:
    """What a shard's index is made from: its tar, its partition, the caption settings."""
    return json.dumps(
        [
            INDEX_FORMAT,
            row["xxh3"],
            row["part_xxh3"],
            os.path.relpath(source_dir(settings), settings.root),
            list(settings.caption_field),
            settings.join_caption_lines,
        ]
    )


def index_is_current(db, settings: Settings, shard: str) -> bool:
    """The shard's index on disk is the one its tar, partition and settings make."""
    row = shards.get(db, shard)
    record = tar_layout.index_record(db, shard)
    if row is None or row["status"] != shards.DONE:
        return record is None
    if record is None or record.get("key") != index_key(settings, row):
        return False
    if record["path"] != index_rel(settings, row["path"]):
        return False
    target = settings.root / record["path"]
    return file_matches(target, record["size"], record["mtime_ns"], record["xxh3"])


def index_up_to_date(settings: Settings, shard: str) -> bool:
    """doit's uptodate of a shard's index (False when there is no readable manifest)."""
    conn = connect_if_present(settings.root)
    if conn is None:
        return False
    try:
        return index_is_current(conn, settings, shard)
    except (sqlite3.Error, KeyError, TypeError):
        return False
    finally:
        conn.close()


def expected_index(db, settings: Settings, row: dict) -> dict:
    """The index of a done shard, from the manifest and its partition."""
    from tasks.caption_fields import caption_columns, caption_texts
    from tasks.partition import read_partition

    shard = row["name"]
    columns = sorted(set(caption_columns(settings)) | {"width", "height", "json_path"})
    table = read_partition(settings, shard, columns)
    captions = caption_texts(table, settings)
    members = tar_layout.member_rows(db, shard)
    entries: dict[str, dict] = {}
    for filename, json_path, width, height, caption in zip(
        table.column("filename").to_pylist(),
        table.column("json_path").to_pylist(),
        table.column("width").to_pylist(),
        table.column("height").to_pylist(),
        captions,
        strict=True,
    ):
        image = members.get(f"data/{filename}")
        sidecar = members.get(f"data/{json_path}")
        if image is None or image["kind"] != "image" or not width or not height:
            continue  # not in the tar as recorded: the audit names it
        entry = {
            "offset": image["offset"],
            "length": image["size"],
            "width": width,
            "height": height,
            "aspect": width / height,
            "captions": caption,
        }
        if sidecar is not None:
            entry.update(
                json_path=sidecar["member"],
                json_offset=sidecar["offset"],
                json_length=sidecar["size"],
            )
        entries[image["member"]] = entry
    return {"filesize": row["size"], "includes_image_geometry": True, "files": entries}


def index_bytes(index: dict) -> bytes:
    """An index as written: sorted keys, ASCII (any member name survives)."""
    return (json.dumps(index, sort_keys=True) + "\n").encode("ascii")


def _webshart_name(rel: str) -> str:
    """webshart's name of a shard, from its index path: the tar's path under the source."""
    return rel.removeprefix(f"{INDEX_DIR}/").removesuffix(".json")


def write_index(settings: Settings, shard: str) -> IndexResult:
    """Write (atomically) or remove the index of one shard; record it in the manifest."""
    from state.atomic import atomic_write
    from state.hashing import hash_bytes
    from state.manifest import open_manifest, write_transaction
    from tasks.caption_fields import check_caption_fields
    from tasks.webshart_entry import forget_cached

    result = IndexResult(shard)
    db = open_manifest(settings.root)
    try:
        row = shards.get(db, shard)
        record = tar_layout.index_record(db, shard)
        if row is None or row["status"] != shards.DONE:
            # a tar that no longer reads to its end: offsets of an earlier read may be wrong
            if record is not None:
                (settings.root / record["path"]).unlink(missing_ok=True)
                result.removed = True
                with write_transaction(db) as conn:
                    tar_layout.drop_index_record(conn, shard)
                result.forgotten = forget_cached(settings, _webshart_name(record["path"]))
            return result
        check_caption_fields(db, settings)
        index = expected_index(db, settings, row)
        result.samples = len(index["files"])
        if webshart_skips(settings, row["path"]):
            result.unseen = row["path"]
        rel = index_rel(settings, row["path"])
        data = index_bytes(index)
        target = settings.root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        st = atomic_write(target, data)
        if record is not None and record["path"] != rel:
            (settings.root / record["path"]).unlink(missing_ok=True)
        new = {
            "key": index_key(settings, row),
            "path": rel,
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "xxh3": hash_bytes(data),
        }
        result.written = record is None or record.get("xxh3") != new["xxh3"]
        with write_transaction(db) as conn:
            tar_layout.set_index_record(conn, shard, new)
        if result.written:  # sample ids or captions may have moved: stale trainer caches go
            result.forgotten = forget_cached(settings, _webshart_name(rel))
    finally:
        db.close()
    return result
