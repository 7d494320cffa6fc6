"""The caption rule: which caption a sample gets from its JSON, given `caption_field`.

- A field's caption: a string as is; a list gives its first string that is not blank.
- `caption_field` is one field or a list tried in order: the first field whose caption
  is not blank wins; when none is, the first field that has a string gives it as is
  (the preset writes a field's value unchanged), else the caption is "".
- A field no sample has (a typo such as `long_captoin`) is an error, raised before any
  caption file or the table is written; a field only some samples lack is fine (the
  audit notes the empty captions).

Partitions keep the caption of every common field (`cap_<field>` columns) and the raw
JSON, so the rule is applied to partitions, never to a JSON file or a tar. Whether a
field is present is answered from the partitions (a common field by its column's
footer null count, any other by its quoted name in the raw `json` column) and kept in
the manifest's `meta` for the current set of partitions.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from state import meta, shards
from state.manifest import write_transaction
from tasks.settings import Settings, partition_path

CAPTION_COLUMNS = (
    "short_caption",
    "long_caption",
    "short_caption2",
    "long_caption2",
    "original_prompt",
)


def caption_value(value: Any) -> str | None:
    """A field's caption: a string as is (even empty or blank), a list's first string
    that is not blank (else its first string); text Arrow can hold (`clean_text`).

    Anything else (absent, null, a number, a list of no strings) is no caption (None).
    """
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, list):
        strings = [v for v in value if isinstance(v, str)]
        for item in strings:
            if not is_blank(item):
                return clean_text(item)
        return clean_text(strings[0]) if strings else None
    return None


def is_blank(text: str | None) -> bool:
    """Whether a caption is absent, empty or whitespace only (no caption to train on)."""
    return text is None or not text.strip()


def clean_text(text: str | None) -> str | None:
    """Text safe for Arrow (lone surrogates, which UTF-8 cannot hold, become U+FFFD)."""
    if text is None:
        return None
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def select_caption(
    row_captions: dict[str, str | None],
    raw: str | None,
    fields: tuple[str, ...],
    join_lines: bool = False,
) -> str:
    """The caption of one sample for `caption_field` (a tuple tried in order).

    `row_captions` maps a common field -> its caption; any other field is read from
    `raw`, the sample's JSON text.
    """
    text = first_caption(_field_captions(row_captions, raw, fields))
    return join_caption_lines(text) if join_lines else text


def _field_captions(
    row_captions: dict[str, str | None], raw: str | None, fields: tuple[str, ...]
) -> Iterator[str | None]:
    """Each field's caption in turn; the JSON is parsed only when a field needs it."""
    parsed: dict | None = None
    for field in fields:
        if field in row_captions:
            yield row_captions[field]
            continue
        if parsed is None:
            parsed = (json.loads(raw) if raw else None) or {}
        yield caption_value(parsed.get(field))


def first_caption(values: Iterable[str | None]) -> str:
    """The caption given each field's caption in `caption_field` order: the first that is
    not blank, else the first string, else ""."""
    fallback = None
    for value in values:
        if not is_blank(value):
            return value  # type: ignore[return-value]
        if fallback is None:
            fallback = value
    return "" if fallback is None else fallback


def blank_captions(captions: pa.Array) -> pa.Array:
    """`is_blank` of each caption of a string column (null stays null)."""
    import pyarrow.compute as pc  # slow to import; a caption switch never needs it

    return pc.or_(pc.equal(captions, ""), pc.utf8_is_space(captions))


def join_caption_lines(text: str) -> str:
    """One line from a multi-line caption: stripped non-empty lines joined by spaces."""
    if "\n" not in text and "\r" not in text:
        return text
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def caption_columns(settings: Settings) -> list[str]:
    """The partition columns needed to make captions under the current settings."""
    cols = ["filename", "sample"] + [
        f"cap_{f}" for f in settings.caption_field if f in CAPTION_COLUMNS
    ]
    if any(f not in CAPTION_COLUMNS for f in settings.caption_field):
        cols.append("json")
    return cols


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
            texts = [first_caption(values) for values in rows]
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


# --------------------------------------------------------------------------- unknown fields

SEEN_ROWS = 200  # rows whose JSON keys are named when a field is unknown


class CaptionFieldError(ValueError):
    """A caption field that no sample of the dataset has (one line for the user)."""


def check_caption_fields(db, settings: Settings) -> None:
    """Raise CaptionFieldError naming a `caption_field` no sample has, and the fields seen."""
    recorded = shards.with_partition(db)
    parts = json.dumps(recorded)
    cached = _cached(db, parts)
    if all(cached.get(f) for f in settings.caption_field):
        return  # the usual case once one task has looked: no partition is opened
    names = [name for name, _ in recorded if _rows(settings, name)]
    if not names:  # no sample at all: nothing to tell a field from a typo
        return
    present = {f: cached[f] for f in settings.caption_field if f in cached}
    for field in settings.caption_field:
        if field not in present:
            present[field] = any(_has_field(settings, name, field) for name in names)
    if present.keys() - cached.keys():
        with write_transaction(db) as conn:
            meta.set(
                conn, meta.CAPTION_FIELDS, json.dumps({"parts": parts, "present": cached | present})
            )
    missing = [f for f in settings.caption_field if not present[f]]
    if missing:
        raise CaptionFieldError(_message(settings, names, missing))


def _cached(db, parts: str) -> dict[str, bool]:
    try:
        value = json.loads(meta.get(db, meta.CAPTION_FIELDS) or "{}")
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
    import pyarrow.compute as pc  # slow to import; only a field outside the common ones

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


def _message(settings: Settings, shard_names: list[str], missing: list[str]) -> str:
    names = ", ".join(f"`{f}`" for f in missing)
    seen = ", ".join(_fields_seen(settings, shard_names[0])) or "none"
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
        for key, value in _json_object(raw).items():
            if isinstance(value, str | list):
                seen.setdefault(key)
    return list(seen)


def _json_object(raw: str | None) -> dict:
    """The object a partition's `json` column holds, or {} (no JSON, or not an object)."""
    try:
        obj = json.loads(raw) if raw else None
    except (ValueError, RecursionError):
        return {}
    return obj if isinstance(obj, dict) else {}
