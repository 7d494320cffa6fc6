"""`table`: consolidate the partitions into `<root>/<id>.parquet` (one row per sample).

Columns `width`, `height`, `caption`, `filename`, in the preset's order and types.
Partitions are streamed one at a time, so memory does not grow with the shard count.
A table that is a symlink (to another disk) stays one: its target is replaced.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from state import files, meta, tar_layout
from state.counts import shards_in_build
from state.hashing import hash_file
from state.kinds import FileKind
from state.manifest import open_manifest, write_transaction
from state.through import replacing_through
from tasks.caption_fields import caption_columns, caption_texts, check_caption_fields
from tasks.dataloader import check_id
from tasks.freshness import table_key, table_matches, table_shards
from tasks.partition import read_partition
from tasks.settings import Settings, partition_path

TABLE_SCHEMA = pa.schema(
    [
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("caption", pa.string()),
        ("filename", pa.string()),
    ]
)


# layout = "tars": where each sample's image lies (shard name, member name in its tar)
TARS_TABLE_SCHEMA = TABLE_SCHEMA.append(pa.field("shard", pa.string())).append(
    pa.field("member", pa.string())
)


def sample_locations(db, shard: str, table: pa.Table) -> list[pa.Array]:
    """The `shard` and `member` columns of a partition's rows (from the manifest)."""
    members = tar_layout.member_rows(db, shard)
    names = [
        (members.get(f"data/{f}") or {}).get("member") for f in table.column("filename").to_pylist()
    ]
    return [pa.array([shard] * len(names), pa.string()), pa.array(names, pa.string())]


@dataclass
class TableResult:
    """What `build_table` did."""

    rows: int
    shards: int
    up_to_date: bool


def build_table(settings: Settings) -> TableResult:
    """Write `<id>.parquet` from the partitions, unless the manifest says it is current."""
    db = open_manifest(settings.root)
    try:
        shards = table_shards(db)
        key = table_key(settings, shards)
        rel = os.path.relpath(settings.table_path, settings.root)
        if table_matches(db, settings, key):
            rows = int(meta.get(db, meta.table_rows(rel)) or 0)
            return TableResult(rows, shards_in_build(db), True)
        check_caption_fields(db, settings)
        check_id(settings)  # a table named after an id the dataloader file refuses is no use
        rows = _write(settings, [name for name, _ in shards], db)
        st = os.stat(settings.table_path)
        with write_transaction(db) as conn:
            row = files.file_row(
                rel,
                FileKind.TABLE,
                size=st.st_size,
                mtime_ns=st.st_mtime_ns,
                xxh3=hash_file(settings.table_path),
            )
            files.upsert(conn, [row])
            meta.set(conn, meta.table_key(rel), key)
            meta.set(conn, meta.table_rows(rel), str(rows))
        return TableResult(rows, shards_in_build(db), False)
    finally:
        db.close()


def _write(settings: Settings, shards: list[str], db=None) -> int:
    """Stream the partitions into the table; a symlinked table is written through."""
    rows = 0
    columns = caption_columns(settings) + ["width", "height"]
    tars = settings.layout == "tars"
    schema = TARS_TABLE_SCHEMA if tars else TABLE_SCHEMA
    with (
        replacing_through(settings.table_path) as tmp,
        pq.ParquetWriter(tmp, schema, compression="zstd") as writer,
    ):
        for shard in shards:
            if not partition_path(settings, shard).exists():
                continue
            table = read_partition(settings, shard, columns)
            captions = pa.array(caption_texts(table, settings), type=pa.string())
            located = sample_locations(db, shard, table) if tars else []
            writer.write_table(
                pa.table(
                    [
                        table.column("width"),
                        table.column("height"),
                        captions,
                        table.column("filename"),
                        *located,
                    ],
                    schema=schema,
                )
            )
            rows += table.num_rows
    return rows
