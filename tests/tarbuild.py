"""Hand-made tar shards for hostile-input tests: any member name, type and bytes."""

from __future__ import annotations

import io
import json
import sqlite3
import tarfile
from dataclasses import dataclass
from pathlib import Path

from sample.generate import write_config
from sample.images import jpeg_bytes, png_bytes

SHARDS = Path("hub/data")


@dataclass
class M:
    """One member: a regular file unless `type` says otherwise (tarfile's type codes)."""

    name: str
    data: bytes = b""
    type: bytes = tarfile.REGTYPE
    linkname: str = ""


def sample_json(key: str, ext: str = ".png", **fields) -> bytes:
    """A JSON with the real schema's main fields for sample `key`."""
    content = {
        "image_name": key + ext,
        "short_caption": f"short {key}",
        "long_caption": f"long {key}",
        "width": 16,
        "height": 12,
    }
    content.update(fields)
    return json.dumps(content, ensure_ascii=False).encode("utf-8")


def png(seed: int = 1) -> bytes:
    """A real 16x12 PNG."""
    return png_bytes(16, 12, seed)


def jpeg(seed: int = 1) -> bytes:
    """A real 16x12 JPEG."""
    return jpeg_bytes(16, 12, seed)


def write_tar(path: Path, members: list[M]) -> Path:
    """Write `members` in order into a tar at `path` (GNU format)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.type = m.type
            info.linkname = m.linkname
            info.mtime = 1_700_000_000
            if m.type == tarfile.REGTYPE:
                info.size = len(m.data)
                tar.addfile(info, io.BytesIO(m.data))
            else:
                tar.addfile(info)
    return path


def member_offsets(path: Path) -> list[tuple[str, int, int, int]]:
    """(name, header offset, data offset, size) of each member."""
    with tarfile.open(path) as tar:
        return [(m.name, m.offset, m.offset_data, m.size) for m in tar.getmembers()]


def write_dataset(root: Path, shards: dict[str, list[M]], **settings) -> Path:
    """A root holding one tar per `shards` entry under hub/data/, and its dataset.toml."""
    for name, members in shards.items():
        write_tar(root / SHARDS / f"{name}.tar", members)
    write_config(root, **settings)
    return root


def quirk_rows(root: Path) -> list[tuple[str, str, str]]:
    """(shard, kind, member or path) of every quirk the manifest records."""
    conn = sqlite3.connect(root / "state/manifest.sqlite")
    try:
        return list(conn.execute("SELECT shard, kind, coalesce(member, path) FROM quirks"))
    finally:
        conn.close()
