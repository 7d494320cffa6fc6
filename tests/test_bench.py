"""bench/'s own parts: the floor's caption writes, profile summaries, the tmpfs mount and
issue 18's targets (the timed run itself is bench/run.py's job, not the suite's)."""

from __future__ import annotations

import argparse
import json
import marshal
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.profiles import format_summary, summarize
from bench.run import caption_pairs, issue18_targets
from bench.tmpfs import MountError, tmpfs_mounted
from sample.generate import make_dataset
from tests.preset_reference import extract_captions, tar_extract_all

REPO = Path(__file__).resolve().parents[1]
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


def run_floor_captions(pairs: list[tuple[bytes, bytes]], tmp_path: Path) -> dict:
    pairs_file = tmp_path / "pairs.marshal"
    pairs_file.write_bytes(marshal.dumps(pairs))
    script = REPO / "bench" / "floor_captions.py"
    done = subprocess.run(
        [sys.executable, "-I", "-S", str(script), str(pairs_file)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_floor_captions_writes_the_presets_caption_files(tmp_path: Path) -> None:
    tars = make_dataset(tmp_path / "ds", shards=2, samples_per_shard=14, quirks=True)
    floor, preset = tmp_path / "floor", tmp_path / "preset"
    tar_extract_all(tars, floor)
    tar_extract_all(tars, preset)
    pairs = caption_pairs(floor)
    phases = run_floor_captions(pairs, tmp_path)
    extract_captions(preset)

    def captions(folder: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in folder.glob("*.txt")}

    assert phases["files"] == len(pairs) > 0
    assert captions(floor) == captions(preset)


def test_floor_captions_truncates_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    target.write_bytes(b"a much longer old caption")
    run_floor_captions([(os.fsencode(target), "new ✓".encode())], tmp_path)
    assert target.read_bytes() == "new ✓".encode()


def test_profile_summary_names_the_functions_that_take_the_time(tmp_path: Path) -> None:
    script = tmp_path / "work.py"
    script.write_text(
        "def busy():\n    return sum(i * i for i in range(300000))\n\n"
        "def idle():\n    return 1\n\nbusy()\nidle()\n"
    )
    prof = tmp_path / "out.prof"
    subprocess.run([sys.executable, "-m", "cProfile", "-o", str(prof), str(script)], check=True)
    summary = summarize(prof, tmp_path, top=5)
    names = [r["function"] for r in summary["by_cumulative"]]
    busy = next(i for i, n in enumerate(names) if n.startswith("work.py:") and n.endswith("(busy)"))
    # a short profile may fill the top 5 with idle's ~0 s too: it must rank below busy
    assert all(i > busy for i, n in enumerate(names) if "(idle)" in n)
    assert summary["total_s"] > 0 and len(summary["by_self"]) == 5
    assert "-- by self time" in format_summary("cold", summary)


@as_root
def test_tmpfs_is_mounted_for_the_block_and_unmounted_after_an_error(tmp_path: Path) -> None:
    folder = tmp_path / "work"
    with pytest.raises(RuntimeError), tmpfs_mounted(folder, "16M"):
        assert os.path.ismount(folder)
        (folder / "file").write_text("x")
        raise RuntimeError("a step failed")
    assert not os.path.ismount(folder)
    assert not (folder / "file").exists()


@as_root
def test_a_refused_mount_is_one_line_naming_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "work"
    with pytest.raises(MountError) as refused, tmpfs_mounted(folder, "not-a-size"):
        pass
    message = str(refused.value)
    assert str(folder) in message and "\n" not in message
    assert not os.path.ismount(folder)


def test_issue18_targets_judge_only_what_was_measured() -> None:
    args = argparse.Namespace(large=False, tmpfs=True, shards=10)
    ratios = {"cold / preset": 0.5, "cold / floor": 2.5, "noop / cold": 0.04}
    verdicts = {t["target"]: t["verdict"] for t in issue18_targets(ratios, 250.0, args)}
    assert verdicts["cold <= 0.6 x preset (tmpfs)"] == "PASS"
    assert verdicts["cold <= 2.0 x floor (tar xf + caption writes)"] == "FAIL"
    assert verdicts["no-op <= 0.05 x cold"] == "PASS"
    assert verdicts["new shard (1 of 11) <= 0.12 x cold"] == "SKIP"
    assert verdicts["peak RSS <= 300 MB per process"] == "PASS"
