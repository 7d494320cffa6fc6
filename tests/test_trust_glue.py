"""The doit glue as a user meets it: doit's own commands, blank settings, SIGTERM, task names
that doit would refuse, and which tars a glob may take. Each runs the real `doit`."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    REPO,
    files_under,
    images_in,
    run_doit,
    start_doit,
    table_rows,
    wait_for_lock_of,
)
from tarbuild import M, png, sample_json, write_tar

from sample.generate import make_dataset, write_config
from tasks.settings import load_settings, partition_path

INTERRUPTED = "interrupted; run doit again (nothing half-done counts as done)"


def _shard(path: Path, keys: list[str]) -> Path:
    members = []
    for i, key in enumerate(keys):
        members += [M(f"{key}.png", png(i + 1)), M(f"{key}.json", sample_json(key))]
    return write_tar(path, members)


def _no_traceback(proc: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr


# ------------------------------------------------------------------- doit's own commands


@pytest.mark.parametrize(
    "args",
    [("info", "nosuch"), ("info",), ("forget", "nosuch"), ("strace", "nosuch"), ("dumpdb",)],
)
def test_doit_commands_we_do_not_use_print_no_traceback(built: Path, args: tuple[str, ...]):
    proc = run_doit(built, *args, check=False)
    _no_traceback(proc)
    if args[0] != "dumpdb":
        assert proc.returncode == 3 and proc.stderr.startswith("ERROR:"), proc.stderr


def test_dumpdb_shows_the_roots_own_state(built: Path):
    proc = run_doit(built, "dumpdb")
    assert "extract:data-000000" in proc.stdout, proc.stdout


def test_dumpdb_before_any_build_is_one_line(dataset: Path, tmp_path: Path):
    for args in [("dumpdb",), ("dumpdb", "--db-file", str(tmp_path / "nothing.db"))]:
        proc = run_doit(dataset, *args, check=False)
        _no_traceback(proc)
        assert proc.returncode == 3, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "run `doit` first" in proc.stderr


def test_info_of_a_task_still_works(built: Path):
    proc = run_doit(built, "info", "table", check=False)
    _no_traceback(proc)
    assert "dalle3.parquet" in proc.stdout, proc.stdout


# ------------------------------------------------------------------- blank settings


@pytest.mark.parametrize(
    ("arg", "key"),
    [("id= ", "id"), ("id=", "id"), ("revision=", "revision"), ("shards=  ", "shards")],
)
def test_a_blank_setting_is_refused_in_one_line(dataset: Path, arg: str, key: str):
    proc = run_doit(dataset, arg, check=False)
    _no_traceback(proc)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"`{key}`" in lines[0], proc.stderr
    assert not (dataset / "data").exists()


def test_a_blank_id_in_the_settings_file_is_refused(dataset: Path):
    config = dataset / "dataset.toml"
    config.write_text(config.read_text() + 'id = "  "\n')
    proc = run_doit(dataset, check=False)
    assert proc.returncode == 3 and "`id`" in proc.stderr, proc.stderr
    assert str(config) in proc.stderr


# ------------------------------------------------------------------- SIGTERM


@pytest.mark.parametrize("parallel", [(), ("-n", "2", "-P", "process")])
def test_sigterm_is_one_line_and_the_next_run_finishes(tmp_path: Path, parallel):
    root = tmp_path / "ds"
    make_dataset(root, shards=4, samples_per_shard=20)
    write_config(root)
    reference = tmp_path / "ref"
    shutil.copytree(root, reference)
    run = start_doit(root, *parallel)
    wait_for_lock_of(root, run)
    run.send_signal(signal.SIGTERM)  # to the run alone, as `kill PID` does
    out, err = run.communicate(timeout=300)
    assert run.returncode == 128 + signal.SIGTERM, out + err
    assert err.strip().splitlines() == [INTERRUPTED], err
    run_doit(root)
    run_doit(reference)
    assert table_rows(root) == table_rows(reference)
    assert files_under(root, "data", "incomplete") == files_under(reference, "data", "incomplete")
    audit = run_doit(root, "audit", check=False)
    assert audit.returncode == 0, audit.stdout + audit.stderr


# ------------------------------------------------------------------- names doit refuses


def test_a_shard_name_with_an_equal_sign_keeps_its_name_and_runs_alone(tmp_path: Path):
    root = tmp_path / "ds"
    _shard(root / "hub/data/split=train.tar", ["a"])
    _shard(root / "hub/data/good.tar", ["b"])
    write_config(root)
    listing = run_doit(root, "list", "--all").stdout
    assert "extract:split%3Dtrain" in listing, listing
    run_doit(root, "extract:split%3Dtrain")
    settings = load_settings(root / "dataset.toml")
    assert partition_path(settings, "split=train").is_file()  # the contract's shard=<name>
    assert not partition_path(settings, "good").exists()  # only the task asked for ran
    assert [p.name for p in images_in(root / "data")] == ["a.png"]
    run_doit(root)
    assert {r["filename"] for r in table_rows(root)} == {"a.png", "b.png"}


# ------------------------------------------------------------------- which tars a glob takes


def test_a_wildcard_glob_never_enters_the_builds_own_folders(tmp_path: Path):
    root = tmp_path / "ds"
    for rel in [
        "x.tar",
        "hub/data/a.tar",
        "mirror/deep/b.tar",
        "data/c.tar",
        "incomplete/s0/d.tar",
        "strays/e.tar",
        "state/tmp/f.tar",
        "cache/vae/g.tar",
    ]:
        _shard(root / rel, ["k"])
    write_config(root, shards="**/*.tar")
    found = load_settings(root / "dataset.toml").shard_paths()
    assert [str(p.relative_to(root)) for p in found] == [
        "hub/data/a.tar",
        "mirror/deep/b.tar",
        "x.tar",
    ]
    write_config(root, shards="*/*/*.tar")
    found = load_settings(root / "dataset.toml").shard_paths()
    assert [str(p.relative_to(root)) for p in found] == ["hub/data/a.tar", "mirror/deep/b.tar"]
    write_config(root, shards="data/*.tar")  # named on purpose: taken
    found = load_settings(root / "dataset.toml").shard_paths()
    assert [str(p.relative_to(root)) for p in found] == ["data/c.tar"]


# ------------------------------------------------------------------- a pipe whose reader left


@pytest.mark.parametrize("args", [("list", "--all"), ("info", "table"), ("audit",)])
def test_a_command_into_a_closed_pipe_is_no_traceback(built: Path, args: tuple[str, ...]):
    read_end, write_end = os.pipe()
    os.close(read_end)  # `doit list | head -1` once head has its line
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "doit", f"config={built / 'dataset.toml'}", *args],
            cwd=REPO,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    finally:
        os.close(write_end)
    assert proc.stderr == "", proc.stderr
    assert proc.returncode == 0
