"""State that cannot be written, and commands that must write nothing."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, run_doit

from state.manifest import manifest_path


def _files(*folders: Path) -> dict[str, int]:
    """path -> mtime_ns of every file and folder under `folders`."""
    out = {}
    for folder in folders:
        for p in [folder, *folder.rglob("*")]:
            if p.exists():
                out[str(p)] = p.stat().st_mtime_ns
    return out


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[Path]:
    """`folder` seen through a read-only mount (as root) or with its write bits removed."""
    if os.geteuid() != 0:
        subprocess.run(["chmod", "-R", "a-w", str(folder)], check=True)
        try:
            yield folder
        finally:
            subprocess.run(["chmod", "-R", "u+w", str(folder)], check=True)
        return
    view = folder.with_name(folder.name + "-ro")
    view.mkdir()
    bind = subprocess.run(["mount", "--bind", str(folder), str(view)], capture_output=True)
    if bind.returncode != 0:
        pytest.skip(f"running as root without permission to mount: {bind.stderr!r}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], check=True)
        yield view
    finally:
        subprocess.run(["umount", str(view)], check=True)


def _in_view(built: Path, view: Path) -> Path:
    """A config for the read-only view (the built root's own config names `.`)."""
    config = built.parent / "view.toml"
    config.write_text(f'root = "{view}"\n')
    return config


def test_audit_of_a_read_only_dataset_prints_its_findings(built: Path):
    with read_only(built) as view:
        config = _in_view(built, view)
        audit = run_doit(view, "audit", check=False, config=config)
        listing = run_doit(view, "list", check=False, config=config)
        build = run_doit(view, check=False, config=config)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert f"audit (fast) of {view}: OK" in audit.stdout
    assert "audit.json could not be saved (Read-only file system)" in audit.stdout or (
        "audit.json could not be saved (Permission denied)" in audit.stdout
    )
    assert "Traceback" not in audit.stdout + audit.stderr
    assert listing.returncode == 0 and "extract" in listing.stdout
    assert build.returncode != 0
    (line,) = build.stderr.strip().splitlines()
    assert line.startswith(f"ERROR: {view}: the dataset folder cannot be written")


def test_list_help_info_and_audit_create_nothing(tmp_path: Path):
    root = tmp_path / "new"
    config = tmp_path / "dataset.toml"
    config.write_text(f'root = "{root}"\n')
    before = _files(tmp_path, REPO / "state")
    scratch = _scratch_dep_files()
    for args in (["list"], ["help"], ["help", "extract"], ["info", "table"], ["audit"]):
        proc = run_doit(root, *args, check=False, config=config)
        assert "Traceback" not in proc.stdout + proc.stderr, args
    assert _files(tmp_path, REPO / "state") == before
    assert not root.exists()
    assert _scratch_dep_files() <= scratch  # doit's temporary state file is removed too


def _scratch_dep_files() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("shardprep-*.doit.db*")}


def test_list_and_help_leave_a_built_root_as_it_was(built: Path):
    before = _files(built)
    run_doit(built, "list")
    run_doit(built, "help", "audit")
    assert _files(built) == before


def test_a_root_that_is_a_file_is_one_line(tmp_path: Path):
    (tmp_path / "afile").write_text("x")
    config = tmp_path / "dataset.toml"
    config.write_text('root = "afile"\n')
    build = run_doit(tmp_path, check=False, config=config)
    assert build.returncode != 0
    (line,) = build.stderr.strip().splitlines()
    assert "`root`" in line and "is a file, not a folder" in line and str(config) in line
    listing = run_doit(tmp_path, "list", check=False, config=config)
    assert listing.returncode == 0 and "Traceback" not in listing.stderr


def test_an_unwritable_root_is_one_line(built: Path):
    with read_only(built) as view:
        config = _in_view(built, view)
        proc = run_doit(view, "repair", check=False, config=config)
    assert proc.returncode != 0
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "cannot be written" in proc.stderr


def test_a_truncated_manifest_gives_the_same_message_everywhere(built: Path):
    path = manifest_path(built)
    run_doit(built, "list")
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    outputs = {}
    for task in ("audit", "repair", ""):
        proc = run_doit(built, *([task] if task else []), check=False)
        assert proc.returncode != 0, task
        outputs[task] = proc.stdout + proc.stderr
    for task, text in outputs.items():
        assert "run `doit reset_state`" in text, (task, text)
        assert "Traceback" not in text, task
    shutil.rmtree(built / "state")


@contextlib.contextmanager
def small_tmpfs(folder: Path, size: str = "8m") -> Iterator[Path]:
    """A tmpfs of `size` mounted at `folder` (needs root)."""
    folder.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
    )
    if mount.returncode != 0:
        pytest.skip(f"a full disk needs a small tmpfs, and mount failed: {mount.stderr!r}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_is_named_as_such_not_as_a_damaged_manifest(tmp_path: Path):
    from sample.generate import make_dataset, write_config

    with small_tmpfs(tmp_path / "disk") as disk:
        root = disk / "ds"
        make_dataset(root, shards=2, samples_per_shard=4)
        write_config(root)
        run_doit(root)
        with open(disk / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 65536)
        proc = run_doit(root, check=False)
        (disk / "filler").unlink()
        after = run_doit(root, check=False)
    text = proc.stdout + proc.stderr
    assert "Traceback" not in text
    assert "reset_state" not in text
    assert proc.returncode == 0 or "no space left on the device" in text, text
    assert after.returncode == 0, after.stdout + after.stderr
