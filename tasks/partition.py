"""Per-shard parquet partitions under `state/parts/shard=<name>/part.parquet`.

A partition holds one row per complete sample of its shard with every caption field,
so the table and the captions are made from partitions without reading a JSON file.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from state.atomic import atomic_write
from state.files import FileRow, file_row
from state.hashing import hash_bytes
from state.kinds import FileKind
from tasks.records import PARTITION_SCHEMA
from tasks.settings import Settings, partition_path


def encode_partition(rows: Iterable[dict]) -> bytes:
    """A partition's parquet bytes, rows sorted by filename."""
    ordered = sorted(rows, key=lambda r: r["filename"])
    table = pa.Table.from_pylist(ordered, schema=PARTITION_SCHEMA)
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def write_partition(settings: Settings, shard: str, rows: Iterable[dict]) -> FileRow:
    """Write a shard's partition atomically, rows sorted by filename; return its `files` row."""
    data = encode_partition(rows)
    path = partition_path(settings, shard)
    path.parent.mkdir(parents=True, exist_ok=True)
    st = atomic_write(path, data)
    return _file_row(settings, shard, st, hash_bytes(data))


def place_partition(
    settings: Settings, shard: str, staged: str, xxh3: str, dropped: set[str]
) -> FileRow:
    """Move a partition written by the shard's reader (`xxh3`: its digest) into place,
    without the rows of the samples in `dropped` (rewritten only then); return its
    `files` row."""
    if dropped:
        with pq.ParquetFile(staged) as pf:
            rows = [r for r in pf.read().to_pylist() if r["sample"] not in dropped]
        return write_partition(settings, shard, rows)
    path = partition_path(settings, shard)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staged, path)
    return _file_row(settings, shard, os.stat(path), xxh3)


def _file_row(settings: Settings, shard: str, st: os.stat_result, xxh3: str) -> FileRow:
    return file_row(
        os.path.relpath(partition_path(settings, shard), settings.root),
        FileKind.PARTITION,
        shard=shard,
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        xxh3=xxh3,
    )


def read_partition(settings: Settings, shard: str, columns: list[str] | None = None) -> pa.Table:
    """A shard's partition (or only some of its columns).

    Read with `ParquetFile`, not `pq.read_table`: that goes through pyarrow.dataset, whose
    import is slow, and every run that reads a partition would pay it (adding a shard, an
    edited JSON, a caption switch).
    """
    with pq.ParquetFile(partition_path(settings, shard)) as pf:
        return pf.read(columns=columns)
