"""Captions that are never silently wrong or lost (issues 15 and 20, caption side):
blank captions, caption fields no sample has, captions edited by hand, and a caption
file that cannot be written."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_doit, table_rows
from tarbuild import M, png, sample_json, write_tar

from sample.generate import write_config
from tests.preset_reference import compile_rows

SHARDS = Path("hub/data")


def _shard(root: Path, name: str, samples: dict[str, dict]) -> None:
    members = []
    for i, (key, fields) in enumerate(samples.items()):
        members += [M(f"{key}.json", sample_json(key, **fields)), M(f"{key}.png", png(i + 1))]
    write_tar(root / SHARDS / f"{name}.tar", members)


def _audit(root: Path) -> dict:
    run_doit(root, "audit", check=False)
    return json.loads((root / "state" / "audit.json").read_text())


def _findings(report: dict, kind: str) -> list[str]:
    return sorted(f["path"] for f in report["findings"] if f["kind"] == kind)


# --------------------------------------------------------------------------- blank captions


def _blank_dataset(root: Path) -> Path:
    _shard(
        root,
        "data-000000",
        {
            "a": {"short_caption": "   ", "long_caption": "long a"},
            "b": {"short_caption2": ["  ", "item b"], "short_caption": "short b"},
            "c": {"short_caption": "\t", "long_caption": " \n "},
            "d": {"short_caption": "short d"},
        },
    )
    write_config(root)
    return root


def test_a_blank_caption_falls_through_a_list_of_fields(tmp_path: Path):
    root = _blank_dataset(tmp_path / "ds")
    run_doit(root, 'caption_field=["short_caption", "long_caption"]')
    data = root / "data"
    assert (data / "a.txt").read_text() == "long a"
    assert (data / "c.txt").read_text() == "\t"  # nothing left: the first field as is
    rows = {r["filename"]: r["caption"] for r in table_rows(root)}
    assert rows["a.png"] == "long a"
    assert rows["c.png"] == "\t"
    run_doit(root, "caption_field=short_caption2")
    assert (data / "b.txt").read_text() == "item b"  # a blank list item is skipped


def test_a_single_field_keeps_the_presets_bytes_and_the_audit_flags_blank(tmp_path: Path):
    root = _blank_dataset(tmp_path / "ds")
    run_doit(root)
    assert (root / "data" / "a.txt").read_text() == "   "
    preset = sorted(compile_rows(root / "data"), key=lambda r: r["filename"])
    assert table_rows(root) == preset
    assert _findings(_audit(root), "empty_caption") == ["data/a.png", "data/c.png"]
