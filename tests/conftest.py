"""Shared fixtures: generated datasets and a runner for the real `doit` command."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sample.generate import make_dataset, write_config
from state.lock import lock_path

REPO = Path(__file__).resolve().parents[1]
IMAGE_EXTS = (".png", ".jpg", ".jpeg")


def start_doit(root: Path, *args: str, **popen: object) -> subprocess.Popen:
    """Start `python -m doit config=<root>/dataset.toml ARGS` from the repository root, in
    the background (output piped as text unless `popen` says otherwise)."""
    options: dict = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, **popen}
    return subprocess.Popen(
        [sys.executable, "-m", "doit", f"config={root / 'dataset.toml'}", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        **options,
    )


def run_doit(
    root: Path, *args: str, check: bool = True, config: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run `python -m doit config=<root>/dataset.toml ARGS` from the repository root."""
    config = config or root / "dataset.toml"
    proc = subprocess.run(
        [sys.executable, "-m", "doit", f"config={config}", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"doit {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def table_rows(root: Path, name: str = "dalle3") -> list[dict]:
    """The rows of `<root>/<name>.parquet`, sorted by filename."""
    rows = pq.read_table(root / f"{name}.parquet").to_pylist()
    return sorted(rows, key=lambda r: r["filename"])


def images_in(folder: Path) -> list[Path]:
    """Every image file under `folder`."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS)


def snapshot(root: Path, *subdirs: str) -> dict[str, tuple[int, int]]:
    """path -> (inode, mtime_ns) of every file under the given folders of `root`."""
    out = {}
    for sub in subdirs:
        for p in sorted((root / sub).rglob("*")):
            if p.is_file():
                st = p.stat()
                out[str(p.relative_to(root))] = (st.st_ino, st.st_mtime_ns)
    return out


def wait_for_lock_of(root: Path, proc: subprocess.Popen) -> None:
    """Until the lock file names `proc` (it took the lock), or `proc` ended."""
    while proc.poll() is None:
        try:
            if lock_path(root).read_text().split("\n", 1)[0] == str(proc.pid):
                return
        except OSError:
            pass
        time.sleep(0.01)
    raise AssertionError(f"doit ended before taking the lock:\n{proc.communicate()}")


def files_under(root: Path, *subdirs: str) -> list[str]:
    """The files under `root`'s `subdirs`, relative to root, sorted."""
    return sorted(
        str(p.relative_to(root)) for sub in subdirs for p in (root / sub).rglob("*") if p.is_file()
    )


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """Three generated shards (12 samples each, with every quirk) and a dataset.toml."""
    root = tmp_path / "ds"
    make_dataset(root, shards=3, samples_per_shard=12)
    write_config(root)
    return root


@pytest.fixture
def built(dataset: Path) -> Path:
    """The `dataset` after a complete `doit`."""
    run_doit(dataset)
    return dataset
