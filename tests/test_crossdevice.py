"""A root whose `data/` (or `incomplete/`, `state/`, `strays/`) lives on another file
system, through a symlink to another disk."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import images_in, run_doit, table_rows
from tarbuild import M, png, sample_json, write_tar

from sample.generate import write_config

SHARDS = Path("hub/data")


@pytest.fixture
def other_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs mounted for the test (another file system than tmp_path's)."""
    where = tmp_path / "other-disk"
    where.mkdir()
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(where)],
            check=True,
            capture_output=True,
        )
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        reason = getattr(exc, "stderr", b"") or str(exc)
        pytest.skip(f"cannot mount a tmpfs here: {reason!r}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)


def _members(shard: int) -> list[M]:
    """Good samples, and members that go aside out of data/ or are staged."""
    return [
        M("shared.json", sample_json("shared", short_caption=f"from {shard}")),
        M("shared.png", png(50 + shard)),
        M(f"good{shard}.json", sample_json(f"good{shard}")),
        M(f"good{shard}.png", png(shard + 1)),
        M(f"dup{shard}.json", sample_json(f"dup{shard}", short_caption="first")),
        M(f"dup{shard}.png", png(20 + shard)),
        M(f"dup{shard}.json", sample_json(f"dup{shard}", short_caption="second")),
        M(f"bad{shard}.json", b'{"image_name": "bad.png", "width": 1'),
        M(f"bad{shard}.png", png(30 + shard)),
        M(f"lonely{shard}.png", png(40 + shard)),
    ]


@pytest.mark.parametrize("moved", ["data", "incomplete", "state", "strays"])
def test_a_folder_on_another_file_system_builds_repairs_and_audits(
    tmp_path: Path, other_disk: Path, moved: str
):
    root = tmp_path / "ds"
    (root).mkdir()
    (root / moved).symlink_to(other_disk)
    write_tar(root / SHARDS / "data-000001.tar", _members(1))
    write_config(root)
    run_doit(root)  # shard 1 alone owns shared.png first
    write_tar(root / SHARDS / "data-000000.tar", _members(0))
    proc = run_doit(root)  # shard 0 sorts first: shard 1's copy moves off the other disk
    assert "Traceback" not in proc.stdout + proc.stderr
    rows = {r["filename"]: r["caption"] for r in table_rows(root)}
    assert rows == {
        "shared.png": "from 0",
        "good0.png": "short good0",
        "good1.png": "short good1",
        "dup0.png": "second",
        "dup1.png": "second",
    }
    aside = {str(p.relative_to(root / "incomplete")) for p in (root / "incomplete").rglob("*")}
    assert {"data-000001/shared.png", "data-000000/bad0.json", "data-000001/lonely1.png"} <= aside
    assert "data-000000/duplicate-members/0/dup0.json" in aside
    for image in images_in(root / "data"):
        assert image.with_suffix(".json").exists() and image.with_suffix(".txt").exists()
    assert run_doit(root, "audit").returncode == 0

    damaged = root / "data/good1.png"
    damaged.write_bytes(b"not a png")
    (root / "data/stray.png").write_bytes(png(99))
    run_doit(root, "repair")
    assert damaged.read_bytes() == png(2)
    assert (root / "strays/stray.png").exists() and not (root / "data/stray.png").exists()
    audit = run_doit(root, "audit")
    assert "DAMAGE" not in audit.stdout
