"""`doit repair` of a pulled folder whose tars are gone: the damaged members' bytes come
from the Hub stand-in (HTTP Range at the recorded commit), checked against the manifest."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import run_doit

sys.path.insert(0, str(Path(__file__).parent))
import test_pull  # noqa: E402
from hub_server import HubServer  # noqa: E402
from test_pull import new_root, result, rows, tree  # noqa: E402

isolated_hf = test_pull.isolated_hf
hub = test_pull.hub


def damage_five_images(root: Path) -> list[dict]:
    """Remove three images of the build and cut two short; their manifest rows."""
    images = [f for f in rows(root, "files") if f["kind"] == "image"][:5]
    assert len(images) == 5 and len({f["shard"] for f in images}) > 1
    for i, f in enumerate(images):
        path = root / f["path"]
        if i < 3:
            path.unlink()
        else:
            path.write_bytes(path.read_bytes()[: f["size"] // 2])
    return images


@pytest.fixture
def pulled(hub: HubServer, tmp_path: Path) -> Path:
    root = new_root(tmp_path, "pulled", keep_tars=False)
    run_doit(root, "pull")
    assert not list((root / "hub").rglob("*.tar"))
    return root


def test_repair_fetches_just_the_damaged_members_from_the_hub(hub: HubServer, pulled: Path) -> None:
    before = result(pulled)
    damaged = damage_five_images(pulled)
    audit = run_doit(pulled, "audit", check=False)
    assert audit.returncode != 0
    assert "restorable from the Hub" in audit.stdout, audit.stdout
    hub.reset_counts()
    proc = run_doit(pulled, "repair")
    assert "fetched from the Hub" in proc.stdout and "XXH3" in proc.stdout, proc.stdout
    assert result(pulled) == before
    fetched = sum(hub.bytes_served.values())
    assert fetched <= sum(1.1 * f["size"] + 64 * 1024 for f in damaged)
    assert all(r.startswith("bytes=") and "-" in r[6:-1] for _, r in hub.ranges)
    assert run_doit(pulled, "audit").returncode == 0


def test_offline_repair_says_what_it_could_not_fetch_and_changes_nothing_else(
    pulled: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    damaged = damage_five_images(pulled)
    on_disk = tree(pulled, "data", "incomplete", "state/parts")
    files_rows = rows(pulled, "files")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    proc = run_doit(pulled, "repair", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    out = proc.stdout + proc.stderr
    for f in damaged:
        line = next(x for x in out.splitlines() if f"cannot restore {f['path']}" in x)
        assert "HF_HUB_OFFLINE is set" in line and "could not fetch" in line
    assert tree(pulled, "data", "incomplete", "state/parts") == on_disk
    assert rows(pulled, "files") == files_rows
    monkeypatch.delenv("HF_HUB_OFFLINE")
    run_doit(pulled, "repair")
    assert run_doit(pulled, "audit").returncode == 0


def test_bytes_from_the_hub_that_differ_from_the_manifest_are_not_placed(
    hub: HubServer, pulled: Path
) -> None:
    damaged = damage_five_images(pulled)
    on_disk = tree(pulled, "data")
    hub.set_files({p: bytes(len(b)) for p, b in hub.files().items()})  # new commit: zeros
    for commit, files in list(hub.commits.items()):  # and the recorded commit rewritten too
        hub.commits[commit] = {p: bytes(len(b)) for p, b in files.items()}
    proc = run_doit(pulled, "repair", check=False)
    assert proc.returncode != 0
    for f in damaged:
        assert f"cannot restore {f['path']}" in proc.stdout, proc.stdout
    assert tree(pulled, "data") == on_disk
