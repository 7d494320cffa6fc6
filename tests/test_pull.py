"""`doit pull` against the local Hub stand-in (tests/hub_server.py): the same result as
`doit download` then `doit`, with or without the tars kept, and its faults."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_doit, start_doit

sys.path.insert(0, str(Path(__file__).parent))
import test_download  # noqa: E402
from hub_server import HubServer, running_hub  # noqa: E402

from sample.generate import make_dataset, write_config  # noqa: E402

REPO = "tester/pulled"
isolated_hf = test_download.isolated_hf  # no user token, cache or telemetry
VOLATILE = {"mtime_ns"}  # when a file was written differs between two builds


def shard_files(
    tmp_path: Path, shards: int = 3, start: int = 0, samples: int = 12
) -> dict[str, bytes]:
    """Generated shards (every quirk) as the repo files `data/<name>.tar`."""
    src = tmp_path / f"src{start}"
    paths = make_dataset(src, shards=shards, samples_per_shard=samples, start=start)
    return {f"data/{p.name}": p.read_bytes() for p in paths}


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with running_hub(shard_files(tmp_path), repo_id=REPO) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


def new_root(tmp_path: Path, name: str, **settings) -> Path:
    root = tmp_path / name
    write_config(root, repo_id=REPO, **settings)
    return root


def rows(root: Path, table: str) -> list[dict]:
    """A manifest table's rows without the columns that depend on when files were written."""
    conn = sqlite3.connect(root / "state" / "manifest.sqlite")
    conn.row_factory = sqlite3.Row
    try:
        found = [dict(r) for r in conn.execute(f"SELECT * FROM {table}")]  # noqa: S608
    finally:
        conn.close()
    return sorted(
        ({k: v for k, v in r.items() if k not in VOLATILE} for r in found),
        key=lambda r: sorted((k, str(v)) for k, v in r.items()),
    )


def tree(root: Path, *folders: str) -> dict[str, str]:
    """path -> sha256 of every file under the folders."""
    out = {}
    for folder in folders:
        for p in sorted((root / folder).rglob("*")):
            if p.is_file():
                out[p.relative_to(root).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def result(root: Path) -> dict:
    """Everything a build leaves that must not depend on how the shards arrived."""
    backend = (root / "multidatabackend.json").read_text().replace(str(root), "<root>")
    out = {
        "tree": tree(root, "data", "incomplete", "state/parts"),
        "table": hashlib.sha256((root / "dalle3.parquet").read_bytes()).hexdigest(),
        "backend": backend,
    }
    for table in ("shards", "files", "quirks", "hub_files", "hub_sources"):
        out[table] = rows(root, table)
    return out


def download_then_build(tmp_path: Path, name: str = "reference") -> Path:
    root = new_root(tmp_path, name)
    run_doit(root, "download")
    run_doit(root)
    return root


# --- the same result as download, then doit --------------------------------------------


@pytest.mark.parametrize("keep_tars", [True, False])
def test_pull_builds_what_download_then_doit_builds(
    hub: HubServer, tmp_path: Path, keep_tars: bool
) -> None:
    reference = download_then_build(tmp_path)
    pulled = new_root(tmp_path, "pulled", keep_tars=keep_tars)
    proc = run_doit(pulled, "pull")
    assert "pull: 3 shard(s) fetched (3 new" in proc.stdout, proc.stdout
    assert "Traceback" not in proc.stderr
    assert result(pulled) == result(reference)
    tars = sorted(p.name for p in (pulled / "hub" / "data").glob("*.tar"))
    assert tars == (sorted(Path(p).name for p in hub.files()) if keep_tars else [])
    assert list((pulled / "hub").rglob("*.part")) == []


def test_the_manifest_says_where_each_shard_came_from(hub: HubServer, tmp_path: Path) -> None:
    root = new_root(tmp_path, "pulled", keep_tars=False)
    run_doit(root, "pull")
    sources = rows(root, "hub_sources")
    assert [s["repo_path"] for s in sources] == sorted(hub.files())
    for s in sources:
        data = hub.files()[s["repo_path"]]
        assert s["repo_id"] == REPO and s["commit"] == hub.head
        assert (s["sha256"], s["size"]) == (hashlib.sha256(data).hexdigest(), len(data))
        assert s["local_path"] == f"hub/{s['repo_path']}"


def test_without_tars_a_second_pull_and_plain_doit_do_nothing(
    hub: HubServer, tmp_path: Path
) -> None:
    root = new_root(tmp_path, "pulled", keep_tars=False)
    run_doit(root, "pull")
    before = result(root)
    gets = sum(hub.gets.values())
    proc = run_doit(root, "pull")
    assert "pull: 0 shard(s) fetched" in proc.stdout and "3 up to date" in proc.stdout
    assert sum(hub.gets.values()) == gets
    proc = run_doit(root)
    assert "ERROR" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert "no tar matches" not in proc.stdout and "3 tar(s) not kept" in proc.stdout
    assert result(root) == before
    assert not (root / "hub" / "data").exists() or not any((root / "hub" / "data").iterdir())


def test_a_new_commit_fetches_only_the_new_and_changed_shards(
    hub: HubServer, tmp_path: Path
) -> None:
    root = new_root(tmp_path, "pulled", keep_tars=False)
    run_doit(root, "pull")
    files = hub.files()
    names = sorted(files)
    extra = shard_files(tmp_path, shards=2, start=3)
    files[names[1]] = extra.pop(sorted(extra)[0])  # shard 1 changes upstream
    files.update(extra)  # one shard more
    hub.set_files(files)
    hub.reset_counts()
    proc = run_doit(root, "pull")
    assert "pull: 2 shard(s) fetched (1 new, 1 changed upstream" in proc.stdout, proc.stdout
    assert set(hub.gets) == {names[1], *extra}
    reference = download_then_build(tmp_path)
    assert result(root) == result(reference)


def test_shards_are_built_while_the_next_one_downloads(hub: HubServer, tmp_path: Path) -> None:
    root = new_root(tmp_path, "pulled")
    last = sorted(hub.files())[-1]
    seen: list[int] = []  # files in data/ while the last shard is being sent
    hub.rate = 20_000  # bytes/s: each shard takes about 1.5 s to arrive
    hub.watch = lambda path: seen.append(
        len(list((root / "data").rglob("*"))) if path == last and (root / "data").exists() else 0
    )
    run_doit(root, "pull")
    assert max(seen) > 0  # a pull that built after downloading everything would see none
    hub.rate, hub.watch = None, None
    assert result(root) == result(download_then_build(tmp_path))


def test_after_download_and_doit_a_pull_fetches_nothing_and_may_drop_the_tars(
    hub: HubServer, tmp_path: Path
) -> None:
    root = download_then_build(tmp_path)
    before = result(root)
    hub.reset_counts()
    proc = run_doit(root, "pull", "keep_tars=false")
    assert "pull: 0 shard(s) fetched" in proc.stdout, proc.stdout
    assert sum(hub.gets.values()) == 0
    assert list((root / "hub").rglob("*.tar")) == []
    assert result(root) == before


def test_a_shard_gone_upstream_is_kept_and_noted(hub: HubServer, tmp_path: Path) -> None:
    root = new_root(tmp_path, "pulled", keep_tars=False)
    run_doit(root, "pull")
    before = result(root)
    files = hub.files()
    gone = sorted(files)[2]
    del files[gone]
    hub.set_files(files)
    proc = run_doit(root, "pull")
    assert f"1 recorded no longer upstream (kept): {gone}" in proc.stdout, proc.stdout
    after = result(root)
    assert after["tree"] == before["tree"] and after["files"] == before["files"]


# --- faults ----------------------------------------------------------------------------


def test_a_dropped_connection_resumes_where_it_stopped(hub: HubServer, tmp_path: Path) -> None:
    path = sorted(hub.files())[1]
    hub.drop_next(path, 10_000, times=2)
    root = new_root(tmp_path, "pulled", keep_tars=False)
    proc = run_doit(root, "pull")
    assert "Traceback" not in proc.stderr
    assert hub.bytes_served[path] == len(hub.files()[path])  # no byte sent twice
    assert [r for p, r in hub.ranges if p == path] == ["bytes=10000-", "bytes=20000-"]
    assert result(root) == result(download_then_build(tmp_path))


def test_bytes_that_do_not_match_the_listing_build_nothing_of_their_shard(
    hub: HubServer, tmp_path: Path
) -> None:
    bad = sorted(hub.files())[1]
    hub.corrupt(bad)
    root = new_root(tmp_path, "pulled", keep_tars=False)
    proc = run_doit(root, "pull", check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    out = proc.stdout + proc.stderr
    lines = [line for line in out.splitlines() if line.startswith(bad)]
    assert lines and "do not match the Hub listing" in lines[0], out
    assert "rerun `doit pull`" in lines[0]
    assert sorted(s["name"] for s in rows(root, "shards")) == ["data-000000", "data-000002"]
    assert not [f for f in rows(root, "files") if f["shard"] == "data-000001"]
    assert list((root / "hub").rglob("*.tar")) + list((root / "hub").rglob("*.part")) == []
    hub.corrupted.clear()
    run_doit(root, "pull")
    assert result(root) == result(download_then_build(tmp_path))


def test_offline_pull_fails_in_one_line_naming_the_hub(
    hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = new_root(tmp_path, "pulled", keep_tars=False)
    run_doit(root, "pull")
    before = result(root)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    proc = run_doit(root, "pull", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert hub.url in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    monkeypatch.delenv("HF_HUB_OFFLINE")
    url = hub.url
    hub.stop()
    proc = run_doit(root, "pull", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"cannot reach the Hub at {url}" in proc.stdout + proc.stderr
    assert result(root) == before


def tar_bytes(root: Path) -> int:
    """Bytes of tars and partial tars under `<root>/hub` now."""
    total = 0
    for p in list((root / "hub").rglob("*.tar")) + list((root / "hub").rglob("*.part")):
        with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
            total += p.stat().st_size
    return total


def test_without_tars_at_most_two_shards_are_on_disk(tmp_path: Path, monkeypatch) -> None:
    files = shard_files(tmp_path, shards=4, samples=200)  # extracting is slower than fetching
    root = new_root(tmp_path, "pulled", keep_tars=False)
    seen: list[int] = []
    with running_hub(files, repo_id=REPO) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        server.watch = lambda path: seen.append(tar_bytes(root))
        proc = run_doit(root, "pull")
    largest_two = sum(sorted(len(b) for b in files.values())[-2:])
    assert seen and max(seen) <= largest_two
    peak = proc.stdout.split("tars on disk at peak: ")[1].split(";")[0].split()[0]
    assert float(peak) * 1000 <= largest_two  # kB as printed
    assert tar_bytes(root) == 0


@pytest.mark.parametrize("keep_tars", [True, False])
def test_kill_9_then_pull_again_gives_the_same_result(
    hub: HubServer, tmp_path: Path, keep_tars: bool
) -> None:
    root = new_root(tmp_path, "pulled", keep_tars=keep_tars)
    hub.rate = 20_000  # bytes/s: a shard takes about 1.5 s
    proc = start_doit(root, "pull", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while sum(hub.bytes_served.values()) < 45_000 and proc.poll() is None:
            time.sleep(0.05)  # killed inside the second shard's transfer
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    hub.rate = None
    run_doit(root, "pull")
    assert result(root) == result(download_then_build(tmp_path))
