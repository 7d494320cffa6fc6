"""A sample's JSON turned into a partition row, with the preset's semantics.

A partition row keeps every caption field (so switching `caption_field` re-reads no
JSON) and the raw JSON text (for fields outside the common ones).
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

import pyarrow as pa

from state.kinds import FileKind

IMAGE, JSON = FileKind.IMAGE, FileKind.JSON

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
CAPTION_COLUMNS = (
    "short_caption",
    "long_caption",
    "short_caption2",
    "long_caption2",
    "original_prompt",
)

PARTITION_SCHEMA = pa.schema(
    [
        ("filename", pa.string()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("size_source", pa.string()),  # json | header
        ("header_width", pa.int64()),
        ("header_height", pa.int64()),
        ("image_name", pa.string()),
        ("sample", pa.string()),
        ("json_path", pa.string()),
        *[(f"cap_{c}", pa.string()) for c in CAPTION_COLUMNS],
        ("json", pa.string()),
    ]
)


def member_kind(path: str) -> str:
    """`image`, `json` or `other`, from a member path's extension (case-insensitive)."""
    ext = posixpath.splitext(path)[1].lower()
    if ext in IMAGE_EXTENSIONS:
        return IMAGE
    if ext == ".json":
        return JSON
    return "other"


def sample_key(path: str) -> str:
    """The sample a member belongs to: its path without the extension."""
    return posixpath.splitext(path)[0]


def parse_json(raw: bytes) -> tuple[dict | None, str | None]:
    """(object, None) for a JSON object in UTF-8, else (None, what is wrong)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8 ({exc.reason} at byte {exc.start})"
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
    except RecursionError:
        return None, "invalid JSON (nested too deeply)"
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        return None, f"invalid JSON ({str(exc).split(';')[0]})"
    if not isinstance(obj, dict):
        return None, f"JSON is a {type(obj).__name__}, not an object"
    return obj, None


def caption_value(value: Any) -> str | None:
    """A field's caption: a string as is (even empty or blank), a list's first string
    that is not blank (else its first string).

    Anything else (absent, null, a number, a list of no strings) is no caption (None).
    """
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        strings = [v for v in value if isinstance(v, str)]
        for item in strings:
            if not is_blank(item):
                return item
        return strings[0] if strings else None
    return None


def is_blank(text: str | None) -> bool:
    """Whether a caption is absent, empty or whitespace only (no caption to train on)."""
    return text is None or not text.strip()


# The largest side an image can have (PNG's limit); larger values are not sizes.
MAX_SIDE = 2**31 - 1


def json_size(obj: dict) -> tuple[int, int] | None:
    """(width, height) as the preset reads them (`int()` of each), or None if unusable.

    Unusable: missing, not a number, a bool, or outside 1..MAX_SIDE (so that it fits the
    table's int64 columns and is a size at all).
    """
    if "width" not in obj or "height" not in obj:
        return None
    size = _side(obj["width"]), _side(obj["height"])
    return None if None in size else size  # type: ignore[return-value]


def _side(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    if isinstance(value, str) and len(value) > 32:
        return None
    try:
        side = int(value)
    except (ValueError, OverflowError):
        return None
    return side if 1 <= side <= MAX_SIDE else None


def clean_text(text: str | None) -> str | None:
    """Text safe for Arrow (lone surrogates, which UTF-8 cannot hold, become U+FFFD)."""
    if text is None:
        return None
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def partition_row(
    image_path: str, json_path: str, obj: dict, raw: str, header: tuple[int, int]
) -> dict:
    """The partition row of a complete sample (paths relative to `data/`)."""
    size = json_size(obj)
    width, height = size if size is not None else header
    image_name = obj.get("image_name")
    row = {
        "filename": image_path,
        "width": width,
        "height": height,
        "size_source": "json" if size is not None else "header",
        "header_width": header[0],
        "header_height": header[1],
        "image_name": clean_text(image_name) if isinstance(image_name, str) else None,
        "sample": sample_key(image_path),
        "json_path": json_path,
        "json": clean_text(raw),
    }
    for column in CAPTION_COLUMNS:
        row[f"cap_{column}"] = clean_text(caption_value(obj.get(column)))
    return row


def select_caption(
    row_captions: dict[str, str | None],
    raw: str | None,
    fields: tuple[str, ...],
    join_lines: bool = False,
) -> str:
    """The caption of one sample for `caption_field` (a tuple tried in order).

    The first field whose caption is not blank wins; when every one is blank or absent,
    the first field that has a string gives it as is (the preset writes a field's value
    unchanged), else the caption is "". `row_captions` maps known field -> caption.
    """
    parsed: dict | None = None
    fallback: str | None = None
    for field in fields:
        if field in row_captions:
            value = row_captions[field]
        else:
            if parsed is None:
                parsed = (json.loads(raw) if raw else None) or {}
            value = clean_text(caption_value(parsed.get(field)))
        if not is_blank(value):
            return join_caption_lines(value) if join_lines else value
        if fallback is None:
            fallback = value
    if fallback is None:
        return ""
    return join_caption_lines(fallback) if join_lines else fallback


def join_caption_lines(text: str) -> str:
    """One line from a multi-line caption: stripped non-empty lines joined by spaces."""
    if "\n" not in text and "\r" not in text:
        return text
    return " ".join(line.strip() for line in text.splitlines() if line.strip())
