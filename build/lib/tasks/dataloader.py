"""`dataloader`: the SimpleTuner entry for this dataset in `<root>/multidatabackend.json`.

Entries with other ids are kept; ours is replaced in place. A default `text_embeds`
entry is added when the file has none, as SimpleTuner requires one.
"""

from __future__ import annotations

import json
from typing import Any

from state.atomic import atomic_write
from tasks.settings import Settings


def merge_dicts(base: dict, extra: dict) -> dict:
    """`base` updated with `extra`, nested tables merged key by key."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_dicts(out[key], value)
        else:
            out[key] = value
    return out


def dataloader_entry(settings: Settings) -> dict[str, Any]:
    """The preset's entry with absolute paths, our caption strategy and `[dataloader]` merged."""
    entry: dict[str, Any] = {
        "id": settings.id,
        "type": "local",
        "instance_data_dir": str(settings.data_dir),
        "resolution": 1.0,
        "maximum_image_size": 2.0,
        "minimum_image_size": 0.75,
        "target_downsample_size": 1.75,
        "resolution_type": "area",
        "cache_dir_vae": str(settings.root / "cache" / "vae"),
        "caption_strategy": settings.caption_strategy,
        "metadata_backend": "parquet",
        "parquet": {
            "path": str(settings.table_path),
            "caption_column": "caption",
            "filename_column": "filename",
            "width_column": "width",
            "height_column": "height",
            "identifier_includes_extension": True,
        },
    }
    return merge_dicts(entry, settings.dataloader)


def text_embeds_entry(settings: Settings) -> dict[str, Any]:
    """A default text-embed cache entry under `<root>/cache/text`."""
    return {
        "id": "text-embeds",
        "dataset_type": "text_embeds",
        "default": True,
        "type": "local",
        "cache_dir": str(settings.root / "cache" / "text"),
    }


def write_dataloader(settings: Settings) -> list[dict]:
    """Write (or update in place) `multidatabackend.json`; return the list written."""
    path = settings.backend_path
    entries: list = []
    if path.exists():
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: not valid JSON ({exc}); fix or remove it") from exc
        if not isinstance(entries, list):
            raise ValueError(f"{path}: expected a JSON list of dataloader entries")
    ours = dataloader_entry(settings)
    ids = [e.get("id") if isinstance(e, dict) else None for e in entries]
    if settings.id in ids:
        entries[ids.index(settings.id)] = ours
    else:
        entries.insert(0, ours)
    if not any(isinstance(e, dict) and e.get("dataset_type") == "text_embeds" for e in entries):
        entries.append(text_embeds_entry(settings))
    text = json.dumps(entries, indent=4, ensure_ascii=False) + "\n"
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        atomic_write(path, text.encode("utf-8"))
    return entries
