"""Running from another folder: `doit -f path/dodo.py` and the `shardprep` command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, run_doit, table_rows

from sample.generate import make_dataset, write_config
from tasks.build.cli import parse_command_line

ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def _doit_f(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "doit", "-f", str(REPO / "dodo.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )


def _shardprep(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """The console script's entry point (`tasks.build.cli:main`), run as a module."""
    return subprocess.run(
        [sys.executable, "-m", "tasks.build.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )


def _repo_files() -> set[str]:
    return {str(p) for p in REPO.rglob("*") if "__pycache__" not in p.parts}


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A working folder `w/` beside a dataset `ds/` that has no dataset.toml of its own."""
    make_dataset(tmp_path / "ds", shards=2, samples_per_shard=6)
    work = tmp_path / "w"
    work.mkdir()
    return work


def test_doit_f_reads_dataset_toml_of_the_working_directory(elsewhere: Path):
    (elsewhere / "dataset.toml").write_text('root = "../ds"\n')
    proc = _doit_f(elsewhere)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (elsewhere.parent / "ds" / "dalle3.parquet").is_file()


def test_relative_config_and_root_resolve_against_the_working_directory(elsewhere: Path):
    write_config(elsewhere.parent / "ds")
    proc = _doit_f(elsewhere, "config=../ds/dataset.toml", "root=../ds")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (elsewhere.parent / "ds" / "dalle3.parquet").is_file()


def test_list_with_a_new_root_creates_nothing_anywhere(elsewhere: Path):
    (elsewhere / "dataset.toml").write_text('root = "../ds"\n')
    before = _repo_files()
    proc = _doit_f(elsewhere, f"config={elsewhere / 'dataset.toml'}", "root=ds1", "list")
    assert proc.returncode == 0, proc.stderr
    assert not (elsewhere / "ds1").exists()
    assert _repo_files() == before


def test_an_empty_root_is_one_line_and_writes_nothing(elsewhere: Path):
    (elsewhere / "dataset.toml").write_text('root = "../ds"\n')
    before = _repo_files()
    proc = _doit_f(elsewhere, "root=")
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        "ERROR: the command line: `root` must not be empty (the dataset folder)"
    ]
    assert _repo_files() == before


def test_shardprep_builds_from_another_folder_like_doit(elsewhere: Path, tmp_path: Path):
    reference = tmp_path / "ref"
    shutil.copytree(tmp_path / "ds", reference)
    write_config(reference)
    run_doit(reference)
    (elsewhere / "dataset.toml").write_text('root = "../ds"\n')
    build = _shardprep(elsewhere)
    assert build.returncode == 0, build.stdout + build.stderr
    assert table_rows(tmp_path / "ds") == table_rows(reference)
    again = _shardprep(elsewhere, "audit")
    assert again.returncode == 0 and ": OK:" in again.stdout, again.stdout + again.stderr
    listing = _shardprep(elsewhere, "list", "root=../elsewhere")
    assert "extract" in listing.stdout
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize(
    ("argv", "command", "tasks", "writes"),
    [
        ([], "run", (), True),
        (["-n", "2", "-P", "process"], "run", (), True),
        (["config=x.toml", "audit", "--deep"], "run", ("audit",), False),
        (["-n", "2", "audit"], "run", ("audit",), False),
        (["audit", "repair"], "run", ("audit", "repair"), True),
        (["list", "--all"], "list", (), False),
        (["help", "extract"], "help", ("extract",), False),
        (["-f", "dodo.py", "info", "table"], "info", ("table",), False),
        (["forget"], "forget", (), True),
        (["captions:data-000001"], "run", ("captions:data-000001",), True),
    ],
)
def test_the_command_line_is_read_as_doit_reads_it(argv, command, tasks, writes):
    line = parse_command_line(argv)
    assert (line.command, line.tasks, line.writes) == (command, tasks, writes)


def test_variables_are_every_key_value_word():
    line = parse_command_line(["config=a.toml", "-n", "2", 'caption_field=["a","b"]', "table"])
    assert line.variables == {"config": "a.toml", "caption_field": '["a","b"]'}
