"""Reruns cost what changed, and the shortcuts that make them cheap keep every guarantee:
caption rewrites recorded per batch, one shared manifest connection for the checks,
one stat per caption file."""

from __future__ import annotations

import json
import os
import posixpath
import sqlite3
from pathlib import Path

from conftest import run_doit
from hypothesis import given
from hypothesis import strategies as st
from tarbuild import M, png, sample_json, write_tar

from sample.generate import write_config
from state.caption_state import begin_rewrites
from state.recovery import reset_state
from tasks.captions import caption_path
from tasks.freshness import captions_are_current, shard_is_done
from tasks.settings import load_settings

SHARDS = Path("hub/data")


def _shard(root: Path, name: str, samples: dict[str, dict]) -> None:
    members = []
    for i, (key, fields) in enumerate(samples.items()):
        members += [M(f"{key}.json", sample_json(key, **fields)), M(f"{key}.png", png(i + 1))]
    write_tar(root / SHARDS / f"{name}.tar", members)


def _dataset(root: Path) -> Path:
    _shard(root, "data-000000", {"a": {}, "b": {}, "same": {"long_caption": "short same"}})
    _shard(root, "data-000001", {"c": {}})
    write_config(root)
    return root


def _audit(root: Path, *args: str) -> dict:
    run_doit(root, *args, "audit", check=False)
    return json.loads((root / "state" / "audit.json").read_text())


def _findings(report: dict, kind: str) -> list[str]:
    return sorted(f["path"] for f in report["findings"] if f["kind"] == kind)


def _meta_keys(root: Path, prefix: str) -> list[str]:
    conn = sqlite3.connect(root / "state" / "manifest.sqlite")
    try:
        rows = conn.execute(
            "SELECT key FROM meta WHERE substr(key, 1, ?) = ?", (len(prefix), prefix)
        )
        return [key for (key,) in rows]
    finally:
        conn.close()


def test_a_switch_rewrites_only_the_captions_whose_text_changes(tmp_path: Path):
    root = _dataset(tmp_path / "ds")
    run_doit(root)
    same, changed = root / "data/same.txt", root / "data/a.txt"
    before_same, before_changed = same.stat(), changed.stat()
    run_doit(root, "caption_field=long_caption")
    assert same.read_text() == "short same"
    assert same.stat().st_mtime_ns == before_same.st_mtime_ns  # not written again
    assert changed.read_text() == "long a"
    assert changed.stat().st_mtime_ns != before_changed.st_mtime_ns
    assert _meta_keys(root, "caption_writing:") == []  # every batch ended
    assert _audit(root, "caption_field=long_caption")["ok"]


def test_a_batch_of_rewrites_a_killed_run_left_is_redone_not_taken_for_an_edit(tmp_path: Path):
    root = _dataset(tmp_path / "ds")
    run_doit(root)
    # what a run killed inside a caption switch leaves: its batch recorded, a file half-done
    conn = sqlite3.connect(root / "state" / "manifest.sqlite")
    with conn:
        begin_rewrites(conn, "data-000000", ["data/a.txt"])
        conn.execute("UPDATE shards SET captions_key = NULL")
    conn.close()
    (root / "data/a.txt").write_text("lon")
    (root / "data/b.txt").write_text("my own b")  # edited by hand, in no batch
    report = _audit(root)
    assert _findings(report, "unfinished") == ["data/a.txt"]
    assert not report["ok"]

    out = run_doit(root, "caption_field=long_caption").stdout
    assert (root / "data/a.txt").read_text() == "long a"  # redone, not moved aside
    assert not (root / "edited/captions/a.txt").exists()
    assert (root / "data/b.txt").read_text() == "long b"
    assert (root / "edited/captions/b.txt").read_text() == "my own b"  # the hand edit kept
    assert "edited by hand" in out
    assert _meta_keys(root, "caption_writing:") == []
    assert _audit(root, "caption_field=long_caption")["ok"]


def test_a_fifo_where_a_new_caption_goes_is_named_and_never_opened(tmp_path: Path):
    root = _dataset(tmp_path / "ds")
    (root / "data").mkdir()
    os.mkfifo(root / "data/a.txt")  # there before the first build
    proc = run_doit(root, check=False, timeout=60)
    assert proc.returncode != 0 and "Traceback" not in proc.stdout + proc.stderr
    assert "data/a.txt is a FIFO" in proc.stdout, proc.stdout
    assert (root / "data/b.txt").read_text() == "short b"  # the other captions are written


def test_the_checks_shared_connection_follows_a_manifest_moved_aside(tmp_path: Path):
    root = _dataset(tmp_path / "ds")
    run_doit(root)
    settings = load_settings(root / "dataset.toml")
    assert shard_is_done(settings, "data-000000")
    assert captions_are_current(settings, "data-000001")
    reset_state(root)  # the manifest moved aside: the same process must not read it
    assert not shard_is_done(settings, "data-000000")
    run_doit(root)  # a new manifest, made from the tars and data/
    assert shard_is_done(settings, "data-000000")
    assert captions_are_current(settings, "data-000001")
    run_doit(root, "caption_field=long_caption")
    assert not captions_are_current(settings, "data-000001")  # settings say short_caption


def test_a_writer_adds_the_partial_index_to_a_manifest_made_before_it(tmp_path: Path):
    root = _dataset(tmp_path / "ds")
    run_doit(root)
    conn = sqlite3.connect(root / "state" / "manifest.sqlite")
    with conn:
        conn.execute("DROP INDEX files_unplaced")
    conn.close()
    run_doit(root, "caption_field=long_caption")  # writes: opens the manifest to write
    conn = sqlite3.connect(root / "state" / "manifest.sqlite")
    try:
        names = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    finally:
        conn.close()
    assert "files_unplaced" in names


@given(st.text(alphabet="ab./é", max_size=12))
def test_caption_path_takes_the_stem_as_splitext_does(filename: str):
    assert caption_path(filename) == f"data/{posixpath.splitext(filename)[0]}.txt"
