"""The SimpleTuner entry for `layout = "tars"`: a `type: webshart` backend over the tars.

SimpleTuner reads the samples from the tars by byte range through webshart, with the
indexes under `<root>/webshart/` (tasks/tar_index.py) as `metadata`. Size settings are
the preset's, as in the folder entry; `[dataloader]` is merged in last.
"""

from __future__ import annotations

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
