"""Captions that are never silently wrong or lost (issues 15 and 20, caption side):
blank captions, caption fields no sample has, captions edited by hand, and a caption
file that cannot be written."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pytest
from conftest import run_doit, table_rows
from preset_reference import compile_rows
from tarbuild import M, png, sample_json, write_tar

from sample.generate import write_config
from tasks.caption_fields import caption_value, select_caption

SHARDS = Path("hub/data")


def _shard(root: Path, name: str, samples: dict[str, dict]) -> None:
    members = []
    for i, (key, fields) in enumerate(samples.items()):
        members += [M(f"{key}.json", sample_json(key, **fields)), M(f"{key}.png", png(i + 1))]
    write_tar(root / SHARDS / f"{name}.tar", members)


def _audit(root: Path, *args: str) -> dict:
    run_doit(root, *args, "audit", check=False)
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


# --------------------------------------------------------------------------- hand edits


def _two_shards(root: Path) -> Path:
    _shard(root, "data-000000", {"a": {}, "b": {}})
    _shard(root, "data-000001", {"c": {}, "d": {}})
    write_config(root)
    return root


def test_a_caption_edited_by_hand_is_kept_named_and_never_lost_across_a_switch(tmp_path: Path):
    root = _two_shards(tmp_path / "ds")
    run_doit(root)
    txt = root / "data" / "a.txt"
    txt.write_text("my own caption")

    run_doit(root)  # nothing changed: the edit stays
    assert txt.read_text() == "my own caption"
    report = _audit(root)
    assert report["ok"]
    assert _findings(report, "edited_caption") == ["data/a.txt"]

    out = run_doit(root, "caption_field=long_caption").stdout
    aside = root / "edited" / "captions" / "a.txt"
    assert aside.read_text() == "my own caption"
    assert "data/a.txt -> edited/captions/a.txt" in out
    assert txt.read_text() == "long a"
    out = run_doit(root).stdout  # and back: the build's text, the edit still aside
    assert txt.read_text() == "short a"
    assert "1 caption file(s) you edited by hand" in out  # the summary keeps saying so
    assert aside.read_text() == "my own caption"
    report = _audit(root)
    assert report["ok"]
    assert _findings(report, "edited_caption_aside") == ["edited/captions/a.txt"]


def test_an_edit_whose_text_the_build_keeps_survives_a_rebuild_of_its_shard(tmp_path: Path):
    root = _two_shards(tmp_path / "ds")
    run_doit(root)
    (root / "data" / "a.txt").write_text("mine")
    sidecar = root / "data" / "b.json"  # another sample of the shard: its captions run again
    sidecar.write_text(sidecar.read_text().replace("short b", "short B"))
    out = run_doit(root).stdout
    assert (root / "data" / "a.txt").read_text() == "mine"
    assert (root / "data" / "b.txt").read_text() == "short B"
    assert "data/a.txt" in out  # named as kept
    result = run_doit(root, "repair")
    assert (root / "data" / "a.txt").read_text() == "mine"
    assert "nothing to repair" in result.stdout
    assert "left as edited: 1 caption file(s)" in result.stdout
    (root / "data" / "b.txt").unlink()  # damage in the same shard: its captions are redone
    result = run_doit(root, "repair")
    assert (root / "data" / "b.txt").read_text() == "short B"
    assert (root / "data" / "a.txt").read_text() == "mine"


def test_parquet_and_back_keeps_an_edited_caption_and_a_new_text_moves_it_aside(
    tmp_path: Path,
):
    root = _two_shards(tmp_path / "ds")
    run_doit(root)
    (root / "data" / "c.txt").write_text("mine")
    out = run_doit(root, "caption_strategy=parquet").stdout
    assert (root / "data" / "c.txt").read_text() == "mine"
    assert not (root / "data" / "d.txt").exists()
    assert "data/c.txt" in out
    report = _audit(root, "caption_strategy=parquet")
    assert report["ok"]  # not a stray: still the user's caption
    assert _findings(report, "edited_caption") == ["data/c.txt"]
    run_doit(root)
    assert (root / "data" / "c.txt").read_text() == "mine"  # the build's text is the same
    out = run_doit(root, "caption_strategy=parquet", "caption_field=long_caption").stdout
    out += run_doit(root, "caption_field=long_caption").stdout
    assert (root / "data" / "c.txt").read_text() == "long c"
    assert (root / "edited" / "captions" / "c.txt").read_text() == "mine"
    assert "edited/captions/c.txt" in out


# --------------------------------------------------------------------------- unwritable


def test_a_caption_path_that_is_a_folder_fails_only_its_own_shards_captions(tmp_path: Path):
    root = _two_shards(tmp_path / "ds")
    (root / "data" / "a.txt").mkdir(parents=True)
    proc = run_doit(root, check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out
    assert "data/a.txt is a folder where the caption file goes: move it away" in out
    assert (root / "data" / "b.txt").read_text() == "short b"  # its own shard's others
    assert (root / "data" / "c.txt").read_text() == "short c"  # and the other shard's
    assert [r["filename"] for r in table_rows(root)] == ["a.png", "b.png", "c.png", "d.png"]
    (root / "data" / "a.txt").rmdir()
    run_doit(root)
    assert (root / "data" / "a.txt").read_text() == "short a"


def _immutable(path: Path, on: bool) -> bool:
    flag = "+i" if on else "-i"
    return subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0


def test_an_immutable_caption_fails_only_its_own_shard_across_a_switch(tmp_path: Path):
    root = _two_shards(tmp_path / "ds")
    run_doit(root)
    locked = root / "data" / "c.txt"
    if not _immutable(locked, True):
        pytest.skip("chattr +i does not work here (needs root on ext4)")
    try:
        proc = run_doit(root, "caption_field=long_caption", check=False)
        assert proc.returncode != 0
        out = proc.stdout + proc.stderr
        assert "Traceback" not in out
        assert "cannot write data/c.txt" in out
        assert (root / "data" / "a.txt").read_text() == "long a"
        assert (root / "data" / "d.txt").read_text() == "long d"
        assert {r["caption"] for r in table_rows(root)} == {"long a", "long b", "long c", "long d"}
    finally:
        _immutable(locked, False)
    run_doit(root, "caption_field=long_caption")
    assert locked.read_text() == "long c"
    assert _audit(root)["ok"]


# --------------------------------------------------------------------------- unknown fields


def _caption_files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "data").glob("*.txt"))}


@pytest.mark.parametrize(
    "value, named",
    [
        ("long_captoin", "`long_captoin`"),
        ('["long_captoin", "short_caption"]', "`long_captoin`"),
        ('["short_caption", "nope", "missing"]', "`nope`, `missing`"),
    ],
)
def test_a_caption_field_no_sample_has_is_an_error_and_changes_nothing(
    tmp_path: Path, value: str, named: str
):
    root = _two_shards(tmp_path / "ds")
    run_doit(root)
    before = _caption_files(root)
    table = (root / "dalle3.parquet").read_bytes()
    proc = run_doit(root, f"caption_field={value}", check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out
    assert f"caption_field: no sample has {named} (fields seen: " in out
    assert "short_caption, long_caption" in out
    assert _caption_files(root) == before
    assert (root / "dalle3.parquet").read_bytes() == table
    proc = run_doit(root, f"caption_field={value}", "table", check=False)  # the table alone too
    assert proc.returncode != 0 and "no sample has" in proc.stdout + proc.stderr
    assert (root / "dalle3.parquet").read_bytes() == table


def test_a_field_only_the_json_has_is_found_and_a_field_some_samples_lack_is_fine(
    tmp_path: Path,
):
    root = tmp_path / "ds"
    _shard(root, "data-000000", {"a": {"my_caption": "mine a"}, "b": {}})
    _shard(root, "data-000001", {"c": {}})
    write_config(root)
    run_doit(root, 'caption_field=["my_caption", "short_caption"]')
    assert _caption_files(root) == {"a.txt": b"mine a", "b.txt": b"short b", "c.txt": b"short c"}
    run_doit(root, "caption_field=my_caption")
    assert _caption_files(root)["c.txt"] == b""
    assert _findings(_audit(root), "empty_caption") == ["data/b.png", "data/c.png"]


def test_a_rewrite_a_killed_run_cut_short_is_redone_not_taken_for_an_edit(tmp_path: Path):
    root = _two_shards(tmp_path / "ds")
    run_doit(root)
    # what a run killed inside a caption switch leaves: the row marked, the file half-done
    conn = sqlite3.connect(root / "state" / "manifest.sqlite")
    with conn:
        conn.execute("UPDATE files SET mtime_ns = -1 WHERE path = 'data/a.txt'")
        conn.execute("UPDATE shards SET captions_key = NULL")
    conn.close()
    (root / "data" / "a.txt").write_text("lon")
    report = _audit(root)
    assert _findings(report, "unfinished") == ["data/a.txt"]
    assert not report["ok"]
    out = run_doit(root, "caption_field=long_caption").stdout
    assert (root / "data" / "a.txt").read_text() == "long a"
    assert not (root / "incomplete").exists()
    assert "edited" not in out
    assert _audit(root, "caption_field=long_caption")["ok"]


def test_blank_caption_rules():
    assert caption_value(["  ", "", "b"]) == "b"
    assert caption_value(["  ", "\t"]) == "  "  # nothing else: the value as given
    assert caption_value("   ") == "   "
    fields = ("short_caption", "long_caption")
    assert select_caption({"short_caption": " ", "long_caption": "l"}, None, fields) == "l"
    assert select_caption({"short_caption": " ", "long_caption": None}, None, fields) == " "
    assert select_caption({"short_caption": None, "long_caption": "\n"}, None, fields) == "\n"
    assert select_caption({"short_caption": None, "long_caption": "\n"}, None, fields, True) == ""
    raw = json.dumps({"custom": "  "})
    assert select_caption({"short_caption": "s"}, raw, ("custom", "short_caption")) == "s"
    assert select_caption({}, raw, ("custom",)) == "  "
