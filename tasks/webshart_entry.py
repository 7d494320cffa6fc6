"""The SimpleTuner entry for `layout = "tars"`: a `type: webshart` backend over the tars.

SimpleTuner reads the samples from the tars by byte range through webshart, with the
indexes under `<root>/webshart/` (tasks/tar_index.py) as `metadata`. Size settings are
the preset's, as in the folder entry; `[dataloader]` is merged in last.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.settings import Settings
from tasks.tar_index import index_dir, source_dir

PRESET_SIZES = {
    "resolution": 1.0,
    "maximum_image_size": 2.0,
    "minimum_image_size": 0.75,
    "target_downsample_size": 1.75,
    "resolution_type": "area",
}


def webshart_cache_dir(settings: Settings) -> str:
    """Where SimpleTuner keeps webshart's caches for this dataset (under the root)."""
    return str(settings.root / "cache" / "webshart" / settings.id)


def webshart_entry(settings: Settings) -> dict[str, Any]:
    """The entry before `[dataloader]` is merged (absolute paths)."""
    return {
        "id": settings.id,
        "type": "webshart",
        "dataset_type": "image",
        "source": str(source_dir(settings)),
        "metadata": str(index_dir(settings)),
        "metadata_backend": "webshart",
        "caption_strategy": "webshart",
        **PRESET_SIZES,
        "cache_dir_vae": str(settings.root / "cache" / "vae"),
        # shard_cache_gb 0: local tars are read in place, never copied into a cache
        "webshart": {"cache_dir": webshart_cache_dir(settings), "shard_cache_gb": 0},
    }


def _cache_dirs(settings: Settings) -> tuple[Path, Path]:
    """(cache_dir, metadata_cache_dir) SimpleTuner uses for our entry, as configured."""
    from tasks.dataloader import dataloader_entry

    entry = dataloader_entry(settings)
    block = entry.get("webshart") if isinstance(entry.get("webshart"), dict) else {}
    cache = block.get("cache_dir", entry.get("cache_dir")) or webshart_cache_dir(settings)
    metadata = block.get("metadata_cache_dir", entry.get("metadata_cache_dir"))
    cache_dir = Path(str(cache))
    return cache_dir, Path(str(metadata)) if metadata else cache_dir / "metadata_cache"


def forget_cached(settings: Settings, shard: str) -> list[str]:
    """Remove what SimpleTuner and webshart cached from a shard's previous index; return
    the files removed.

    webshart's metadata cache never notices a rewritten index, and SimpleTuner's bucket and
    caption caches name samples by (shard index, sample index): both would keep training
    on the old offsets and captions. Both are rebuilt from the indexes at the next start.
    """
    cache_dir, metadata_dir = _cache_dirs(settings)
    removed = []
    stale = [
        *metadata_dir.glob(f"*/{glob_escape(shard)}.json"),
        *cache_dir.glob(f"aspect_ratio_bucket_*_{glob_escape(settings.id)}.json*"),
    ]
    for path in stale:
        if path.is_file():
            path.unlink()
            removed.append(str(path))
    return removed


def glob_escape(text: str) -> str:
    """`text` as a literal in a glob pattern."""
    import glob

    return glob.escape(text)
