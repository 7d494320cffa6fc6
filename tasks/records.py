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
from tasks.caption_fields import CAPTION_COLUMNS, caption_value, clean_text

IMAGE, JSON = FileKind.IMAGE, FileKind.JSON

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

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
    return kind_of_extension(posixpath.splitext(path)[1])


def key_and_kind(path: str) -> tuple[str, str]:
    """`sample_key(path)` and `member_kind(path)` from one split of the path."""
    key, ext = posixpath.splitext(path)
    return key, kind_of_extension(ext)


def kind_of_extension(ext: str) -> str:
    """`member_kind` from the extension alone (as `posixpath.splitext` gives it)."""
    ext = ext.lower()
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


def partition_row(
    image_path: str,
    json_path: str,
    obj: dict,
    raw: str,
    header: tuple[int, int],
    sample: str | None = None,
) -> dict:
    """The partition row of a complete sample (paths relative to `data/`); `sample`, when
    the caller knows it, is `sample_key(image_path)`."""
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
        "sample": sample_key(image_path) if sample is None else sample,
        "json_path": json_path,
        "json": clean_text(raw),
    }
    for column in CAPTION_COLUMNS:
        row[f"cap_{column}"] = caption_value(obj.get(column))
    return row
