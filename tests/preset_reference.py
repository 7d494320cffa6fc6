"""An independent, plain re-implementation of the manual preset (seed/preset_dalle3.ja.md).

The preset extracts every shard with GNU tar into ``data/``, then runs two scripts in
the dataset folder: compile.py (JSON → rows → ``dalle3.parquet``) and
extract-captions.py (JSON → ``data/<stem>.txt``). This module reproduces their logic
line by line, without pandas or tqdm, so tests and benchmarks can compare shardprep's
output with what the preset produces. It must not import anything from ``tasks/`` or
``state/``: it is the yardstick, not the thing measured.

Behaviours kept on purpose, because they are the preset's:
- only ``data/*.json`` is read (``glob``: no subfolders, no dotfiles), in the order
  ``glob`` returns, which depends on the file system (compare rows as sorted lists);
- a JSON without a ``width`` key is skipped; ``height`` is then assumed present;
- width/height go through ``int()`` (``"48"`` and ``48.0`` both give 48);
- the image is never checked: a JSON whose image is missing still yields a row and a
  caption file;
- the caption is written as is (newlines included, empty string included); a caption
  that is not a string (a list) makes the preset crash, and so does this module.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
from pathlib import Path


def tar_extract_all(shards: list[Path], data_dir: Path) -> None:
    """Run ``tar xf SHARD -C data_dir`` (GNU tar) for each shard, in the order given.

    Like the preset's shell loop, later shards overwrite files of earlier ones.
    ``data_dir`` is created first (the preset's ``mkdir data``).
    """
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    for shard in shards:
        subprocess.run(["tar", "xf", os.fspath(shard), "-C", os.fspath(data_dir)], check=True)


def _json_files(data_dir: Path) -> list[str]:
    """``glob.glob('data/*.json')`` for a data folder anywhere."""
    return glob.glob(os.path.join(glob.escape(os.fspath(data_dir)), "*.json"))


def _load(file_path: str) -> object:
    # The preset uses open(file_path, 'r'): the locale's encoding, UTF-8 here.
    with open(file_path, encoding="utf-8") as file:
        return json.load(file)


def compile_rows(data_dir: Path, caption_field: str = "short_caption") -> list[dict]:
    """compile.py's rows: ``{'width', 'height', 'caption', 'filename'}`` per JSON with width.

    Exactly the preset's logic (compile.py hardcodes ``short_caption``; the field is a
    parameter here). Rows come in ``glob`` order. The image is NOT checked, so a JSON
    whose image is missing still gives a row: callers comparing with a build that keeps
    incomplete samples aside must filter these rows on ``(data_dir / filename).exists()``
    (as the images the preset extracted are on disk).
    """
    rows = []
    for file_path in _json_files(data_dir):
        content = _load(file_path)
        if "width" not in content:
            continue
        width = int(content["width"])
        height = int(content["height"])
        caption = content[caption_field]
        filename = content["image_name"]
        rows.append({"width": width, "height": height, "caption": caption, "filename": filename})
    return rows


def extract_captions(data_dir: Path, caption_field: str = "short_caption") -> None:
    """extract-captions.py: write ``data/<splitext(image_name)[0]>.txt`` per JSON with width.

    The preset opens the file with ``open(text_path, 'w')``: text mode, default newline
    translation (``\\n`` stays ``\\n`` on POSIX) and the locale's encoding; with a UTF-8
    locale that is ``encoding='utf-8'``, used here explicitly. Like the preset, it does
    not check that the image exists, and overwrites existing ``.txt`` files.
    """
    for file_path in _json_files(data_dir):
        content = _load(file_path)
        if "width" not in content:
            continue
        text_path = os.path.join(
            os.fspath(data_dir), os.path.splitext(content["image_name"])[0] + ".txt"
        )
        with open(text_path, "w", encoding="utf-8") as text_file:
            text_file.write(content[caption_field])


def run_preset(
    shards: list[Path], workdir: Path, caption_field: str = "short_caption"
) -> list[dict]:
    """The whole preset in ``workdir``: extract to ``workdir/data``, compile, captions.

    Returns compile.py's rows (no parquet is written; build one from the rows if needed).
    """
    data_dir = Path(workdir) / "data"
    tar_extract_all(shards, data_dir)
    rows = compile_rows(data_dir, caption_field)
    extract_captions(data_dir, caption_field)
    return rows
