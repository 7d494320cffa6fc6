"""Shards read by worker processes (`workers`): the same build as a serial one, one writer."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO, run_doit

from sample.generate import make_dataset, write_config

POOL_LINE = "extract: reading shards in"


def _dataset(root: Path, **settings) -> Path:
    """Five generated shards with every quirk (cross-shard duplicates among them)."""
    make_dataset(root, shards=5, samples_per_shard=40)
    write_config(root, **settings)
    return root


def _tree(root: Path, *folders: str) -> dict[str, str]:
    """path -> sha256 of every file under `folders` of `root`."""
    out = {}
    for folder in folders:
        for p in sorted((root / folder).rglob("*")):
            if p.is_file():
                out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _manifest(root: Path) -> dict[str, list[tuple]]:
    """The manifest's rows without the columns a second build cannot repeat (mtimes)."""
    conn = sqlite3.connect(root / "state/manifest.sqlite")
    conn.row_factory = sqlite3.Row
    try:
        out = {}
        for table in ("files", "shards", "quirks"):
            rows = [dict(r) for r in conn.execute(f"SELECT * FROM {table}")]
            for r in rows:
                for key in ("mtime_ns", "built_at", "updated_at", "id"):
                    r.pop(key, None)
            out[table] = sorted(repr(sorted(r.items())) for r in rows)
        return out
    finally:
        conn.close()


def _result(root: Path) -> tuple:
    return (
        (root / "dalle3.parquet").read_bytes(),
        _tree(root, "data", "incomplete", "state/parts"),
        _manifest(root),
    )


def test_a_parallel_build_equals_a_serial_one(tmp_path: Path):
    serial = _dataset(tmp_path / "serial", workers=1)
    parallel = _dataset(tmp_path / "parallel", workers=3)
    out_serial = run_doit(serial, check=False)
    out_parallel = run_doit(parallel, check=False)
    assert POOL_LINE not in out_serial.stdout
    assert f"{POOL_LINE} 3 worker process(es)" in out_parallel.stdout
    assert out_serial.returncode == out_parallel.returncode
    assert _result(serial) == _result(parallel)
    assert not list((parallel / "state/tmp").glob("*/*"))  # nothing staged is left


def test_a_new_shard_read_in_parallel_equals_a_serial_build(tmp_path: Path):
    roots = [_dataset(tmp_path / name, workers=n) for name, n in (("s", 1), ("p", 2))]
    for root in roots:
        run_doit(root, check=False)
        make_dataset(root, shards=2, samples_per_shard=40, start=5)
        run_doit(root, check=False)
    assert _result(roots[0]) == _result(roots[1])


def test_workers_default_to_the_cores_and_can_be_capped(tmp_path: Path):
    root = _dataset(tmp_path / "ds")
    cores = len(os.sched_getaffinity(0))
    proc = run_doit(root, check=False)
    if cores > 1:
        assert f"{POOL_LINE} {min(cores, 5)} worker process(es)" in proc.stdout
    else:
        assert POOL_LINE not in proc.stdout
    again = _dataset(tmp_path / "capped")
    capped = run_doit(again, "workers=2", check=False)
    assert f"{POOL_LINE} 2 worker process(es)" in capped.stdout
    assert _result(root) == _result(again)


def test_a_worker_count_below_one_is_refused_in_one_line(tmp_path: Path):
    root = _dataset(tmp_path / "ds")
    proc = run_doit(root, "workers=0", check=False)
    assert proc.returncode != 0
    assert "`workers` must be 1 or more, got 0" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_a_killed_parallel_build_resumes_to_the_same_result(tmp_path: Path):
    serial = _dataset(tmp_path / "serial", workers=1)
    run_doit(serial, check=False)
    root = tmp_path / "killed"
    make_dataset(root, shards=5, samples_per_shard=400)
    write_config(root, workers=3)
    proc = subprocess.Popen(
        [sys.executable, "-m", "doit", f"config={root / 'dataset.toml'}"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        start_new_session=True,
    )
    staged = root / "state/tmp"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if any(staged.glob("*/1")):  # a worker has staged members
            break
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the writer and its workers
    proc.wait()
    assert not (root / "dalle3.parquet").exists()  # killed midway
    # the same shards as `serial`, at the size it was built with, then resume
    for tar in (root / "hub/data").glob("*.tar"):
        tar.unlink()
    make_dataset(root, shards=5, samples_per_shard=40)
    run_doit(root, check=False)
    assert _result(root) == _result(serial)


def test_doits_own_parallel_run_reads_in_its_task_and_equals_a_serial_build(tmp_path: Path):
    serial = _dataset(tmp_path / "serial", workers=1)
    run_doit(serial, check=False)
    root = _dataset(tmp_path / "doit-n", workers=3)
    proc = run_doit(root, "-n", "2", "-P", "process", check=False)
    assert POOL_LINE not in proc.stdout  # no pool inside doit's own workers
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _result(root) == _result(serial)


def test_files_a_killed_commit_placed_without_rows_are_removed_when_the_shard_is_read_again(
    tmp_path: Path,
):
    root = _dataset(tmp_path / "ds", workers=2)
    # as a commit killed between its renames and its transaction leaves them: files in
    # data/ without rows, listed in the shard's staging folder
    staging = root / "state/tmp/data-000002"
    staging.mkdir(parents=True)
    (staging / "placing").write_text("data/gone.png\ndata/sub/gone.json\n")
    (root / "data/sub").mkdir(parents=True)
    (root / "data/gone.png").write_bytes(b"half an image")
    (root / "data/sub/gone.json").write_text("{")
    run_doit(root, check=False)
    assert not (root / "data/gone.png").exists()
    assert not (root / "data/sub").exists()
    serial = _dataset(tmp_path / "serial", workers=1)
    run_doit(serial, check=False)
    assert _result(root) == _result(serial)
