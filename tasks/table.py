"""`table`: consolidate the partitions into `<root>/<id>.parquet` (one row per sample).

Columns `width`, `height`, `caption`, `filename`, in the preset's order and types.
Partitions are streamed one at a time, so memory does not grow with the shard count.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from state import files, meta, tar_layout
from state.atomic import TMP_SUFFIX
from state.counts import shards_in_build
from state.hashing import hash_file
from state.kinds import FileKind
from state.manifest import open_manifest, write_transaction
from tasks.caption_fields import check_caption_fields
from tasks.captions import caption_texts, partition_columns
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
        rows = _write(settings, [name for name, _ in shards], db)
        st = os.stat(settings.table_path)
        with write_transaction(db) as conn:
            files.upsert(
                conn,
                [
                    {
                        "path": rel,
                        "kind": FileKind.TABLE,
                        "size": st.st_size,
                        "mtime_ns": st.st_mtime_ns,
                        "xxh3": hash_file(settings.table_path),
                    }
                ],
            )
            meta.set(conn, meta.table_key(rel), key)
            meta.set(conn, meta.table_rows(rel), str(rows))
        return TableResult(rows, shards_in_build(db), False)
    finally:
        db.close()


def _write(settings: Settings, shards: list[str], db=None) -> int:
    tmp = settings.table_path.with_name(f".{settings.table_path.name}{TMP_SUFFIX}")
    rows = 0
    columns = partition_columns(settings) + ["width", "height"]
    tars = settings.layout == "tars"
    schema = TARS_TABLE_SCHEMA if tars else TABLE_SCHEMA
    with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
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
    os.replace(tmp, settings.table_path)
    return rows
