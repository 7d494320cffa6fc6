"""Is every `caption_field` one that some sample of the dataset has?

A field no sample has (a typo such as `long_captoin`) would turn every caption into the
empty string, or silently leave a list's fallback doing all the work: it is an error,
raised before any caption file or the table is written. A field that only some samples
lack is fine (the audit notes the empty captions).

Answered from the partitions, never from a JSON file or a tar: a common field by its
`cap_<field>` column (the footer's null count, when it has one), any other by whether
the field's quoted name occurs in the raw `json` column. The answer is kept in the
manifest's `meta` for the current set of partitions, so each `captions:<shard>` task
does not look again.
"""

from __future__ import annotations

import json

import pyarrow.compute as pc
import pyarrow.parquet as pq

from state import meta
from state.caption_state import FIELDS_KEY
from state.manifest import write_transaction
from tasks.freshness import table_shards
from tasks.records import CAPTION_COLUMNS, parse_json
from tasks.settings import Settings, partition_path

SEEN_ROWS = 200  # rows whose JSON keys are named when a field is unknown


class CaptionFieldError(ValueError):
    """A caption field that no sample of the dataset has (one line for the user)."""


def check_caption_fields(db, settings: Settings) -> None:
    """Raise CaptionFieldError naming a `caption_field` no sample has, and the fields seen."""
    recorded = table_shards(db)
    parts = json.dumps(recorded)
    cached = _cached(db, parts)
    if all(cached.get(f) for f in settings.caption_field):
        return  # the usual case once one task has looked: no partition is opened
    shards = [name for name, _ in recorded if _rows(settings, name)]
    if not shards:  # no sample at all: nothing to tell a field from a typo
        return
    present = {f: cached[f] for f in settings.caption_field if f in cached}
    for field in settings.caption_field:
        if field not in present:
            present[field] = any(_has_field(settings, shard, field) for shard in shards)
    if present.keys() - cached.keys():
        with write_transaction(db) as conn:
            meta.set(conn, FIELDS_KEY, json.dumps({"parts": parts, "present": cached | present}))
    missing = [f for f in settings.caption_field if not present[f]]
    if missing:
        raise CaptionFieldError(_message(settings, shards, missing))


def _cached(db, parts: str) -> dict[str, bool]:
    try:
        value = json.loads(meta.get(db, FIELDS_KEY) or "{}")
    except ValueError:
        return {}
    return value.get("present", {}) if value.get("parts") == parts else {}


def _rows(settings: Settings, shard: str) -> int:
    path = partition_path(settings, shard)
    if not path.exists():
        return 0
    with pq.ParquetFile(path) as pf:
        return pf.metadata.num_rows


def _has_field(settings: Settings, shard: str, field: str) -> bool:
    """Whether some sample of the shard has `field` (with a caption, for a common field)."""
    with pq.ParquetFile(partition_path(settings, shard)) as pf:
        if field in CAPTION_COLUMNS:
            column = f"cap_{field}"
            nulls = _null_count(pf, column)
            if nulls is not None:
                return nulls < pf.metadata.num_rows
            return pf.read(columns=[column]).column(0).null_count < pf.metadata.num_rows
        raw = pf.read(columns=["json"]).column(0)
    quoted = json.dumps(field, ensure_ascii=False)
    return pc.any(pc.match_substring(raw, quoted)).as_py() or (
        quoted != json.dumps(field) and pc.any(pc.match_substring(raw, json.dumps(field))).as_py()
    )


def _null_count(pf: pq.ParquetFile, column: str) -> int | None:
    """The column's null count from the footer's statistics, or None if any is missing."""
    index = pf.schema_arrow.get_field_index(column)
    total = 0
    for i in range(pf.metadata.num_row_groups):
        stats = pf.metadata.row_group(i).column(index).statistics
        if stats is None or not stats.has_null_count:
            return None
        total += stats.null_count
    return total


def _message(settings: Settings, shards: list[str], missing: list[str]) -> str:
    names = ", ".join(f"`{f}`" for f in missing)
    seen = ", ".join(_fields_seen(settings, shards[0])) or "none"
    where = settings.config_file.name if settings.config_file else "dataset.toml"
    return (
        f"caption_field: no sample has {names} (fields seen: {seen}); "
        f"fix caption_field in {where} (or on the command line)"
    )


def _fields_seen(settings: Settings, shard: str) -> list[str]:
    """The JSON keys holding text (a string or a list), in the order the samples give them."""
    with pq.ParquetFile(partition_path(settings, shard)) as pf:
        batch = next(pf.iter_batches(batch_size=SEEN_ROWS, columns=["json"]), None)
    seen: dict[str, None] = {}
    for raw in batch.column(0).to_pylist() if batch is not None else []:
        obj, _ = parse_json(raw.encode("utf-8", "surrogatepass")) if raw else (None, None)
        for key, value in (obj or {}).items():
            if isinstance(value, str | list):
                seen.setdefault(key)
    return list(seen)
