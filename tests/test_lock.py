"""One writer per root: real concurrent `doit` runs on one root, and a killed holder."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, files_under, run_doit, start_doit, table_rows, wait_for_lock_of

from sample.generate import make_dataset, write_config
from state.lock import LockHeld, acquire, lock_path, release, running_writer

REFUSAL = "another shardprep run (pid {pid}: "


def _same_as_clean_build(root: Path, reference: Path) -> None:
    run_doit(reference)
    assert table_rows(root) == table_rows(reference)
    assert files_under(root, "data", "incomplete") == files_under(reference, "data", "incomplete")
    audit = run_doit(root, "audit", check=False)
    assert audit.returncode == 0, audit.stdout + audit.stderr


@pytest.fixture
def two_roots(tmp_path: Path) -> tuple[Path, Path]:
    """A dataset and an identical copy to build alone, for comparison."""
    root = tmp_path / "ds"
    make_dataset(root, shards=4, samples_per_shard=20)
    write_config(root)
    reference = tmp_path / "ref"
    shutil.copytree(root, reference)
    return root, reference


def test_a_second_run_refuses_in_one_line_naming_the_holder(two_roots):
    root, reference = two_roots
    first = start_doit(root)
    try:
        wait_for_lock_of(root, first)
        os.kill(first.pid, signal.SIGSTOP)  # provably still holding the lock below
        second = run_doit(root, check=False)
        audit = run_doit(root, "audit", check=False)
        listing = run_doit(root, "list")
    finally:
        os.kill(first.pid, signal.SIGCONT)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, out + err
    assert second.returncode != 0
    assert second.stdout == ""
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, second.stderr
    assert REFUSAL.format(pid=first.pid) in lines[0]
    assert f"is writing {root}; wait for it or stop it" in lines[0]
    assert f"a build is running (pid {first.pid}: " in audit.stdout
    assert "findings may be transient" in audit.stdout
    assert "extract" in listing.stdout
    assert f"note: a build is running (pid {first.pid}: " in listing.stderr
    _same_as_clean_build(root, reference)


def test_two_runs_at_once_leave_what_a_clean_build_leaves(two_roots):
    root, reference = two_roots
    runs = [start_doit(root, "-n", "2", "-P", "process"), start_doit(root)]
    results = [(p.pid, *p.communicate(timeout=300), p.returncode) for p in runs]
    finished = 0
    for pid, out, err, code in results:
        assert "Traceback" not in out + err
        if code == 0:
            finished += 1
        else:
            other = next(r[0] for r in results if r[0] != pid)
            (line,) = err.strip().splitlines()
            assert line.startswith(f"ERROR: another shardprep run (pid {other}: ")
            assert line.endswith(f"is writing {root}; wait for it or stop it")
    assert finished >= 1
    _same_as_clean_build(root, reference)


def test_the_lock_of_a_killed_run_is_taken_over(two_roots):
    root, reference = two_roots
    first = start_doit(root)
    wait_for_lock_of(root, first)
    first.kill()
    first.communicate(timeout=60)
    assert lock_path(root).read_text().startswith(f"{first.pid}\n")  # left behind
    assert running_writer(root) is None
    run_doit(root)
    _same_as_clean_build(root, reference)


def test_parallel_workers_of_one_run_share_its_lock(two_roots):
    root, reference = two_roots
    run_doit(root, "-n", "2", "-P", "process")
    _same_as_clean_build(root, reference)


def test_a_lock_held_by_another_process_names_it(tmp_path: Path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from state.lock import acquire; acquire(sys.argv[1], ['holder', 'cmd']);"
            " print('held', flush=True); sys.stdin.read()",
            str(tmp_path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert holder.stdout.readline() == "held\n"
        assert running_writer(tmp_path) == f"pid {holder.pid}: holder cmd"
        with pytest.raises(LockHeld, match=rf"\(pid {holder.pid}: holder cmd\) is writing"):
            acquire(tmp_path, ["me"])
    finally:
        holder.communicate("")
    acquire(tmp_path, ["me"])  # free again once the holder is gone
    try:
        assert lock_path(tmp_path).read_text().split("\n")[0] == str(os.getpid())
        assert running_writer(tmp_path) is None  # our own lock is not "another build"
    finally:
        release(tmp_path)


@pytest.mark.parametrize("parallel", [(), ("-n", "2", "-P", "process")])
def test_ctrl_c_is_one_line_and_the_next_run_finishes(two_roots, parallel):
    root, reference = two_roots
    # a session of its own: Ctrl-C reaches every process of the terminal's group
    run = start_doit(root, *parallel, start_new_session=True)
    wait_for_lock_of(root, run)
    os.killpg(run.pid, signal.SIGINT)
    out, err = run.communicate(timeout=300)
    assert run.returncode == 130, out + err
    assert err.strip().splitlines() == [
        "interrupted; run doit again (nothing half-done counts as done)"
    ]
    run_doit(root)
    _same_as_clean_build(root, reference)


def test_a_process_started_by_the_holder_is_part_of_its_run(tmp_path: Path):
    """Workers that import the tasks again (spawn, forkserver) must not refuse their run."""
    script = (
        "import subprocess, sys; from state.lock import acquire; acquire(sys.argv[1], ['run']);"
        " child = 'import sys; from state.lock import acquire; acquire(sys.argv[1]); print(1)';"
        " print(subprocess.run([sys.executable, '-c', child, sys.argv[1]],"
        " capture_output=True, text=True).stdout.strip())"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout.strip() == "1", proc.stderr
