"""Issue 17's own checks of `doit pull`, each against a build from local tars: our Hub
stand-in (tests/hub_server.py) throttled, with Range, dropping one connection; a pull
into an empty root without tars; a pull killed midway and run again; a pulled folder
damaged with its tars gone and repaired; a changed shard whose new bytes do not match."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_doit, start_doit

sys.path.insert(0, str(Path(__file__).parent))
import test_download  # noqa: E402
from hub_server import HubServer, running_hub  # noqa: E402
from test_pull import result, rows, tar_bytes  # noqa: E402

from sample.generate import make_dataset, write_config  # noqa: E402

REPO = "checker/pulled"
SHARDS, SAMPLES = 4, 40
isolated_hf = test_download.isolated_hf  # no user token, cache or telemetry


def local_build(tmp_path: Path, name: str = "local", start: int = 0, **settings) -> Path:
    """A root built by plain `doit` from tars generated in place (the reference)."""
    root = tmp_path / name
    make_dataset(root, shards=SHARDS, samples_per_shard=SAMPLES, start=start)
    write_config(root, repo_id=REPO, **settings)
    run_doit(root)
    return root


def hub_files_of(root: Path) -> dict[str, bytes]:
    """The tars of a local root as the repo files `data/<name>.tar`."""
    return {f"data/{p.name}": p.read_bytes() for p in sorted((root / "hub/data").glob("*.tar"))}


def built(root: Path) -> dict:
    """What a build leaves, without the Hub's own rows (a local build has none)."""
    out = result(root)
    del out["hub_files"], out["hub_sources"]
    return out


def assert_same_build(root: Path, reference: Path, hub: HubServer) -> None:
    """Byte for byte the reference's table, data/, captions, multidatabackend.json and
    manifest; every shard recorded as coming from the Hub's head commit; no tar left."""
    assert built(root) == built(reference)
    listed = {p: hashlib.sha256(b).hexdigest() for p, b in hub.files().items()}
    assert {r["path"]: r["sha256"] for r in rows(root, "hub_files")} == listed
    assert {r["commit"] for r in rows(root, "hub_sources")} == {hub.head}
    assert tar_bytes(root) == 0


@pytest.fixture
def reference(tmp_path: Path) -> Path:
    return local_build(tmp_path)


@pytest.fixture
def hub(reference: Path, monkeypatch: pytest.MonkeyPatch):
    """Throttled, serving Range, and dropping the connection of one shard once."""
    files = hub_files_of(reference)
    with running_hub(files, repo_id=REPO) as server:
        server.rate = 400_000  # bytes/s: each shard takes a noticeable time to arrive
        server.drop_next(sorted(files)[1], len(files[sorted(files)[1]]) // 3)
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


def pulled_root(tmp_path: Path, name: str = "pulled", **settings) -> Path:
    root = tmp_path / name
    write_config(root, repo_id=REPO, **{"keep_tars": False, **settings})
    return root


@pytest.mark.parametrize("workers", [1, 2])
def test_a_pull_into_an_empty_root_equals_the_local_build(
    hub: HubServer, reference: Path, tmp_path: Path, workers: int
) -> None:
    root = pulled_root(tmp_path, workers=workers)
    largest_two = sum(sorted(len(b) for b in hub.files().values())[-2:])
    seen: list[int] = []
    hub.watch = lambda path: seen.append(tar_bytes(root))
    proc = run_doit(root, "pull")
    hub.watch = None
    assert "Traceback" not in proc.stderr
    dropped = sorted(hub.files())[1]
    assert [r for p, r in hub.ranges if p == dropped] == [
        f"bytes={len(hub.files()[dropped]) // 3}-"
    ]  # resumed where the connection dropped: nothing sent twice
    assert hub.bytes_served[dropped] == len(hub.files()[dropped])
    assert seen and max(seen) <= largest_two
    assert_same_build(root, reference, hub)


def kill_when(root: Path, hub: HubServer, ready) -> None:
    """Start `doit pull` on `root`, kill -9 it once `ready()` holds (or it ended)."""
    proc = start_doit(root, "pull", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not ready() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def test_kill_9_midway_then_pull_again_equals_the_local_build(
    hub: HubServer, reference: Path, tmp_path: Path
) -> None:
    root = pulled_root(tmp_path)
    first = sorted(hub.files())[0]
    total = sum(len(b) for b in hub.files().values())
    # once inside a transfer, once while the first shard is committed, once near the end
    kill_when(root, hub, lambda: sum(hub.bytes_served.values()) > len(hub.files()[first]) // 2)
    kill_when(root, hub, lambda: (root / "data").is_dir() and any((root / "data").iterdir()))
    kill_when(root, hub, lambda: sum(hub.bytes_served.values()) > total * 0.8)
    hub.rate = None
    proc = run_doit(root, "pull")
    assert "Traceback" not in proc.stderr
    assert_same_build(root, reference, hub)
    assert run_doit(root, "audit").returncode == 0


def test_a_damaged_pull_without_tars_is_repaired_from_the_hub(
    hub: HubServer, reference: Path, tmp_path: Path
) -> None:
    root = pulled_root(tmp_path)
    run_doit(root, "pull")
    hub.rate = None
    files = rows(root, "files")
    images = [f for f in files if f["kind"] == "image"]
    jsons = [f for f in files if f["kind"] == "json"]
    cut = [images[0], images[len(images) // 2]]
    damaged = [*cut, images[-1], jsons[1], jsons[-2]]  # a changed JSON is an edit: kept
    for f in damaged:
        path = root / f["path"]
        if f in cut:
            path.write_bytes(path.read_bytes()[: f["size"] // 2])
        else:
            path.unlink()
    assert run_doit(root, "audit", check=False).returncode != 0
    hub.reset_counts()
    proc = run_doit(root, "repair")
    assert "fetched from the Hub" in proc.stdout, proc.stdout
    assert sum(hub.bytes_served.values()) <= sum(1.1 * f["size"] + 64 * 1024 for f in damaged)
    assert all(r.startswith("bytes=") for _, r in hub.ranges)
    assert_same_build(root, reference, hub)
    assert run_doit(root, "audit").returncode == 0


@pytest.mark.parametrize("keep_tars", [False, True])
def test_a_changed_shard_whose_bytes_do_not_match_leaves_data(
    hub: HubServer, tmp_path: Path, keep_tars: bool
) -> None:
    root = pulled_root(tmp_path, keep_tars=keep_tars)
    run_doit(root, "pull")
    hub.rate = None
    path = sorted(hub.files())[-1]
    shard = Path(path).stem
    earlier = [f["path"] for f in rows(root, "files") if f["shard"] == shard]
    assert any(p.startswith("data/") for p in earlier)
    other = make_dataset(tmp_path / "other", shards=1, samples_per_shard=SAMPLES, seed=1)
    hub.add_file(path, other[0].read_bytes())  # a new commit changes the shard...
    hub.corrupt(path)  # ...and what arrives is not what the listing says
    proc = run_doit(root, "pull", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    line = next(x for x in (proc.stdout + proc.stderr).splitlines() if x.startswith(path))
    assert "do not match the Hub listing" in line and f"shard {shard}" in line
    assert "rerun `doit pull`" in line
    assert [p for p in earlier if (root / p).exists()] == []  # its files left data/
    assert not [f for f in rows(root, "files") if f["shard"] == shard]
    assert shard not in {s["name"] for s in rows(root, "shards")}
    assert path not in {r["path"] for r in rows(root, "hub_files")}
    assert not (root / "hub" / path).exists() and not list((root / "hub").rglob("*.part"))
    assert run_doit(root, "audit").returncode == 0  # what is left is trainer-safe
    hub.corrupted.clear()
    proc = run_doit(root, "pull")
    assert "pull: 1 shard(s) fetched" in proc.stdout, proc.stdout
    reference = tmp_path / "upstream"
    make_dataset(reference, shards=SHARDS - 1, samples_per_shard=SAMPLES)
    (reference / "hub" / path).write_bytes(hub.files()[path])
    write_config(reference, repo_id=REPO, keep_tars=keep_tars)
    run_doit(reference)
    assert built(root) == built(reference)
