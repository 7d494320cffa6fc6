"""Public functions that a consolidation gave one home (issue 16)."""

from __future__ import annotations

import pyarrow as pa

from state import files
from state.kinds import FileKind
from state.manifest import FILE_FIELDS, open_manifest, write_transaction
from tasks.caption_fields import blank_captions, is_blank


def test_a_file_row_has_every_manifest_column_and_round_trips(tmp_path):
    """`file_row` gives every column (None where not given); `get` reads the same row back."""
    row = files.file_row("data/a.png", FileKind.IMAGE, shard="s", size=3, xxh3="x")
    assert tuple(row) == FILE_FIELDS
    assert tuple(files.FileRow.__annotations__) == FILE_FIELDS
    db = open_manifest(tmp_path)
    try:
        with write_transaction(db) as conn:
            files.upsert(conn, [row])
        assert files.get(db, "data/a.png") == row
        assert row["mtime_ns"] is None and row["width"] is None
    finally:
        db.close()


def test_blank_captions_agrees_with_is_blank():
    """The column form of "not blank" (the audit's empty captions) is the rule's own."""
    texts = ["", " ", "\t\n", "a", " a ", "\u3000", "x\ny"]
    mask = blank_captions(pa.array(texts, type=pa.string())).to_pylist()
    assert mask == [is_blank(t) for t in texts]
