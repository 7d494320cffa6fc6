"""Ctrl-C and SIGTERM at several moments of a `doit -n 2 -P process` run, including the
forks of its workers: one line on stderr, the signal's exit status, and a next run that
ends as an unbroken build does. Each moment is an event of the run, not a delay."""

from __future__ import annotations

import functools
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import files_under, run_doit, start_doit, table_rows

from sample.generate import make_dataset, write_config
from state.lock import lock_path
from tasks.settings import load_settings, partition_path

INTERRUPTED = "interrupted; run doit again (nothing half-done counts as done)"
PARALLEL = ("-n", "2", "-P", "process")


def _children(pid: int) -> int:
    try:
        return len(Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
    except OSError:
        return 0


def _holds_lock(root: Path, pid: int) -> bool:
    try:
        return lock_path(root).read_text().split("\n", 1)[0] == str(pid)
    except OSError:
        return False


@functools.cache
def _parts_dir(root: Path) -> Path:
    return partition_path(load_settings(root / "dataset.toml"), "x").parents[1]


def _group_is_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


# the moment the signal is sent: the run took the lock; doit forked its first worker (it is
# starting up); both workers exist; a worker is writing a shard's partition
MOMENTS: dict[str, Callable[[Path, int], bool]] = {
    "lock": _holds_lock,
    "first-worker": lambda root, pid: _children(pid) >= 1,
    "second-worker": lambda root, pid: _children(pid) >= 2,
    "partition": lambda root, pid: any(_parts_dir(root).glob("shard=*/*")),
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated dataset (`base/`) and its unbroken build (`ref/`)."""
    top = tmp_path_factory.mktemp("signals")
    make_dataset(top / "base", shards=4, samples_per_shard=20)
    write_config(top / "base")
    shutil.copytree(top / "base", top / "ref")
    run_doit(top / "ref")
    return top


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
@pytest.mark.parametrize("moment", list(MOMENTS))
def test_a_signal_at_any_moment_is_one_line_and_the_next_run_finishes(
    reference: Path, tmp_path: Path, moment: str, signum: int
):
    root = tmp_path / "ds"
    shutil.copytree(reference / "base", root)
    run = start_doit(root, *PARALLEL, start_new_session=True)
    reached = MOMENTS[moment]
    while run.poll() is None and not reached(root, run.pid):
        pass  # no sleep: the worker start-up lasts milliseconds
    assert run.poll() is None, f"the run ended before {moment}: {run.communicate()}"
    if signum == signal.SIGINT:
        os.killpg(run.pid, signum)  # Ctrl-C: the terminal signals the whole group
    else:
        run.send_signal(signum)  # `kill PID`: the run alone
    out, err = run.communicate(timeout=60)
    assert run.returncode == 128 + signum, out + err
    assert err.strip().splitlines() == [INTERRUPTED], err
    assert _group_is_gone(run.pid)  # no worker outlives the run
    run_doit(root)
    assert table_rows(root) == table_rows(reference / "ref")
    assert files_under(root, "data", "incomplete") == files_under(
        reference / "ref", "data", "incomplete"
    )
    audit = run_doit(root, "audit", check=False)
    assert audit.returncode == 0, audit.stdout + audit.stderr
