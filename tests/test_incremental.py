"""Reruns do only the work that new or changed inputs require (issue 3)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import xxhash
from conftest import REPO, run_doit, snapshot, table_rows

from sample.generate import make_dataset, write_config


def _ran(proc: subprocess.CompletedProcess) -> list[str]:
    """Names of the tasks doit executed (lines starting with '.  ')."""
    return [line[3:].strip() for line in proc.stdout.splitlines() if line.startswith(".  ")]


def _content(root: Path) -> dict[str, str]:
    """relative path -> xxh3 of every file under data/ and incomplete/, plus table rows."""
    out = {}
    for sub in ("data", "incomplete"):
        for p in sorted((root / sub).rglob("*")):
            if p.is_file():
                out[str(p.relative_to(root))] = xxhash.xxh3_128_hexdigest(p.read_bytes())
    out["<table>"] = json.dumps(table_rows(root), sort_keys=True)
    return out


def test_noop_rewrites_nothing_and_says_up_to_date(built: Path):
    before = snapshot(built, "data", "state/parts", "incomplete")
    table = built / "dalle3.parquet"
    table_stat = (table.stat().st_ino, table.stat().st_mtime_ns)
    proc = run_doit(built)
    assert _ran(proc) == ["summary"]
    assert "-- extract:data-000000" in proc.stdout and "-- table" in proc.stdout
    assert snapshot(built, "data", "state/parts", "incomplete") == before
    assert (table.stat().st_ino, table.stat().st_mtime_ns) == table_stat


def test_new_shard_is_the_only_one_extracted(built: Path):
    before = snapshot(built, "data", "state/parts")
    rows_before = len(table_rows(built))
    make_dataset(built, shards=1, samples_per_shard=12, start=3)
    proc = run_doit(built)
    ran = _ran(proc)
    assert [t for t in ran if t.startswith("extract")] == ["extract:data-000003"]
    assert [t for t in ran if t.startswith("captions")] == ["captions:data-000003"]
    after = snapshot(built, "data", "state/parts")
    assert {k: v for k, v in after.items() if k in before} == before
    assert len(table_rows(built)) == rows_before + 10


def test_changed_shard_is_reextracted_and_loses_what_it_no_longer_holds(built: Path, tmp_path):
    old_rows = {r["filename"] for r in table_rows(built)}
    tar = built / "hub/data/data-000001.tar"
    other = tmp_path / "other"
    make_dataset(other, shards=1, samples_per_shard=5, seed=7, start=1, quirks=False)
    shutil.copy(other / "hub/data/data-000001.tar", tar)
    proc = run_doit(built)
    assert [t for t in _ran(proc) if t.startswith("extract")] == ["extract:data-000001"]
    rows = {r["filename"] for r in table_rows(built)}
    new = rows - old_rows
    assert len(new) == 5
    assert len(rows) == 20 + 5
    gone = old_rows - rows
    assert len(gone) == 10
    for name in gone:
        assert not (built / "data" / name).exists()
        assert not (built / "data" / name).with_suffix(".txt").exists()
    fresh = tmp_path / "fresh"
    make_dataset(fresh, shards=3, samples_per_shard=12)
    shutil.copy(tar, fresh / "hub/data/data-000001.tar")
    write_config(fresh)
    run_doit(fresh)
    assert _content(fresh) == _content(built)


def test_edited_json_reaches_table_and_caption_only(built: Path):
    row = table_rows(built)[0]
    json_path = (built / "data" / row["filename"]).with_suffix(".json")
    shard_parts = snapshot(built, "state/parts")
    captions = snapshot(built, "data")
    content = json.loads(json_path.read_text(encoding="utf-8"))
    content["short_caption"] = "an edited caption"
    json_path.write_text(json.dumps(content), encoding="utf-8")
    proc = run_doit(built)
    ran = _ran(proc)
    assert not [t for t in ran if t.startswith("extract")]
    edited = next(r for r in table_rows(built) if r["filename"] == row["filename"])
    assert edited["caption"] == "an edited caption"
    txt = json_path.with_suffix(".txt")
    assert txt.read_text(encoding="utf-8") == "an edited caption"
    parts_after = snapshot(built, "state/parts")
    changed_parts = [k for k in parts_after if parts_after[k] != shard_parts.get(k)]
    assert len(changed_parts) == 1
    after = snapshot(built, "data")
    changed = sorted(k for k in after if after[k] != captions.get(k))
    assert changed == sorted([str(txt.relative_to(built)), str(json_path.relative_to(built))])
    assert _ran(run_doit(built)) == ["summary"]


def test_deleted_tar_keeps_its_samples(built: Path):
    rows = table_rows(built)
    before = snapshot(built, "data")
    (built / "hub/data/data-000002.tar").unlink()
    proc = run_doit(built)
    assert table_rows(built) == rows
    assert snapshot(built, "data") == before
    assert "data-000002.tar is gone" in proc.stdout


def test_renamed_shard_costs_no_extraction(built: Path):
    before = snapshot(built, "data")
    rows = table_rows(built)
    os.rename(built / "hub/data/data-000001.tar", built / "hub/data/data-000042.tar")
    proc = run_doit(built)
    assert "data-000042: same bytes as an extracted shard" in proc.stdout
    assert snapshot(built, "data") == before
    assert table_rows(built) == rows
    assert _ran(run_doit(built)) == ["summary"]


def _big_dataset(root: Path) -> None:
    make_dataset(root, shards=6, samples_per_shard=400, seed=3)
    write_config(root)


BUILT = ("data", "incomplete", "state/parts")


def _built(root: Path) -> set[str]:
    """Paths (relative to root) of the files under BUILT, and the table if it exists."""
    out = set()
    for sub in BUILT:
        for folder, _dirs, names in os.walk(root / sub):
            rel = os.path.relpath(folder, root)
            out.update(os.path.join(rel, name) for name in names)
    if (root / "dalle3.parquet").exists():
        out.add("dalle3.parquet")
    return out


def _kill_when(root: Path, final: set[str], at: int) -> int:
    """Start `doit`, kill -9 it once `at` of the files a whole build leaves are on disk
    and this run has added one; return how many were there when it was killed."""
    before = len(_built(root) & final)
    proc = subprocess.Popen(
        [sys.executable, "-m", "doit", f"config={root / 'dataset.toml'}"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        while proc.poll() is None:
            present = len(_built(root) & final)
            if present >= max(at, before + 1):
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the build ended (exit {proc.returncode}) first"
    return present


def test_killed_runs_resume_to_the_same_result(tmp_path: Path):
    """Six kill -9s, each while the build is provably mid-work: after this run added a
    file and before the build left all of its files (checked after the kill)."""
    clean = tmp_path / "clean"
    _big_dataset(clean)
    run_doit(clean)
    expected = _content(clean)
    final = _built(clean)
    rng = random.Random(1234)
    killed = tmp_path / "killed"
    _big_dataset(killed)
    # one kill point in each sixth of the first 90% of the files: extraction, then captions
    span = len(final) * 9 // 10
    points = [rng.randrange(1 + i * span // 6, (i + 1) * span // 6) for i in range(6)]
    for at in points:
        present = _kill_when(killed, final, at)
        after = _built(killed) & final
        assert present >= at and len(after) < len(final), (at, present, len(after), len(final))
    run_doit(killed)
    assert _content(killed) == expected
    assert _ran(run_doit(killed)) == ["summary"]


@pytest.mark.parametrize("args", [("-n", "2", "-P", "process")])
def test_parallel_build_equals_serial(tmp_path: Path, args):
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    for root in (serial, parallel):
        make_dataset(root, shards=4, samples_per_shard=40)
        write_config(root)
    run_doit(serial)
    run_doit(parallel, *args)
    assert _content(parallel) == _content(serial)
    before = snapshot(parallel, "data", "state/parts")
    assert set(_ran(run_doit(parallel, *args))) <= {"summary"}  # worker output may interleave
    assert snapshot(parallel, "data", "state/parts") == before
