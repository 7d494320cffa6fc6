"""Hostile QA of issues 15 and 20: variants beyond the issues' own items, run as a user would.

Each test runs the real `doit` command (tests/conftest.py run_doit) on crafted shards, so it
survives internal refactors. A test marked xfail(strict=True) records a failure found and
not fixed yet: it passes once the behaviour is fixed (then drop the mark).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, images_in, run_doit, table_rows
from tarbuild import M, png, sample_json, write_tar

from sample.generate import write_config

SHARDS = Path("hub/data")


def _shard(root: Path, name: str, keys: list[str], extra: list[M] | None = None) -> Path:
    members = []
    for i, key in enumerate(keys):
        members += [M(f"{key}.png", png(i + 1)), M(f"{key}.json", sample_json(key))]
    return write_tar(root / SHARDS / f"{name}.tar", members + (extra or []))


def _trainer_safe(root: Path) -> None:
    """Every image in data/ has a JSON, a table row and a caption file (textfile)."""
    rows = {r["filename"] for r in table_rows(root)}
    data = root / "data"
    for image in images_in(data):
        rel = str(image.relative_to(data))
        assert image.with_suffix(".json").is_file(), rel
        assert image.with_suffix(".txt").is_file(), rel
        assert rel in rows, rel


def _no_traceback(proc) -> None:
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr


# ------------------------------------------------------------------- shard names


def test_a_shard_named_with_an_equal_sign_stops_only_itself(tmp_path: Path):
    root = tmp_path / "ds"
    _shard(root, "good", ["a"])
    _shard(root, "split=train", ["b"])
    write_config(root)
    proc = run_doit(root, check=False)
    _no_traceback(proc)
    assert "a.png" in {r["filename"] for r in table_rows(root)}, proc.stdout + proc.stderr
    _trainer_safe(root)
    audit = run_doit(root, "audit", check=False)
    _no_traceback(audit)
    assert "OK" in audit.stdout or "DAMAGE" in audit.stdout, audit.stdout + audit.stderr


def test_shards_in_a_hive_style_folder_build(tmp_path: Path):
    root = tmp_path / "ds"
    _shard(root, "split=train/data-000000", ["a"])
    _shard(root, "split=test/data-000000", ["b"])
    write_config(root, shards="hub/**/*.tar")
    proc = run_doit(root, check=False)
    _no_traceback(proc)
    assert {r["filename"] for r in table_rows(root)} == {"a.png", "b.png"}, proc.stderr
    _trainer_safe(root)


# ------------------------------------------------------------------- captions edited by hand


def test_an_edited_caption_kept_aside_survives_a_shard_named_edited_captions(tmp_path: Path):
    root = tmp_path / "ds"
    _shard(root, "a0", ["a"])
    write_config(root)
    run_doit(root)
    (root / "data/a.txt").write_text("MINE, typed by hand")
    run_doit(root, "caption_field=long_caption")
    kept = sorted(p for p in (root / "edited").rglob("*") if p.is_file())
    assert [p.read_text() for p in kept] == ["MINE, typed by hand"]
    _shard(root, "edited-captions", ["b"], extra=[M("a.txt", b"a member of the tar")])
    _shard(root, "edited", ["c"], extra=[M("captions/a.txt", b"a member of the tar")])
    proc = run_doit(root, check=False)
    _no_traceback(proc)
    texts = [p.read_text() for p in (root / "edited").rglob("*") if p.is_file()]
    assert "MINE, typed by hand" in texts, texts


# ------------------------------------------------------------------- audit after a partial switch


def test_the_audit_sees_captions_of_an_unfinished_switch(tmp_path: Path):
    root = tmp_path / "ds"
    _shard(root, "data-000000", ["a", "b"])
    _shard(root, "data-000001", ["c"])
    write_config(root)
    run_doit(root)
    # the captions of one shard are switched, the table is not: what a cut switch leaves
    run_doit(root, "caption_field=long_caption", "captions:data-000000")
    assert (root / "data/a.txt").read_text() == "long a"
    assert {r["caption"] for r in table_rows(root) if r["filename"] == "a.png"} == {"short a"}
    audit = run_doit(root, "audit", check=False)
    _no_traceback(audit)
    report = json.loads((root / "state/audit.json").read_text())
    assert audit.returncode == 1 or not report["ok"], audit.stdout


# ------------------------------------------------------------------- multidatabackend.json


def _entries(root: Path) -> list[dict]:
    return json.loads((root / "multidatabackend.json").read_text())


def test_an_id_that_is_the_text_embeds_entrys_never_merges_into_it(tmp_path: Path):
    root = tmp_path / "ds"
    _shard(root, "data-000000", ["a"])
    write_config(root)
    run_doit(root)
    embeds = [e for e in _entries(root) if e.get("dataset_type") == "text_embeds"]
    assert [e["id"] for e in embeds] == ["text-embeds"]
    proc = run_doit(root, "id=text-embeds", check=False)
    _no_traceback(proc)
    run_doit(root, check=False)
    for entry in _entries(root):
        if entry.get("dataset_type") == "text_embeds":
            assert "instance_data_dir" not in entry, entry
            assert "caption_strategy" not in entry, entry


def test_two_roots_sharing_one_dataloader_file_never_replace_each_others_entry(tmp_path: Path):
    first, second = tmp_path / "A", tmp_path / "B"
    _shard(first, "data-000000", ["a"])
    _shard(second, "data-000000", ["b"])
    write_config(first)
    write_config(second)
    run_doit(first)
    (second / "multidatabackend.json").symlink_to(first / "multidatabackend.json")
    proc = run_doit(second, check=False)
    _no_traceback(proc)
    dirs = {e.get("instance_data_dir") for e in _entries(first)}
    said = str(first / "data") in proc.stdout + proc.stderr
    assert str(first / "data") in dirs or said, (dirs, proc.stdout, proc.stderr)


# ------------------------------------------------------------------- output to a closed pipe


def test_output_into_a_closed_pipe_is_no_traceback(tmp_path: Path):
    root = tmp_path / "ds"
    _shard(root, "data-000000", ["a"])
    _shard(root, "data-000001", ["b"])
    write_config(root)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before doit prints its first line
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "doit", f"config={root / 'dataset.toml'}"],
            cwd=REPO,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    finally:
        os.close(write_end)
    assert "Traceback" not in proc.stderr, proc.stderr


# ------------------------------------------------------------------- a changed shard and edits


def _edit_caption_in_json(root: Path, key: str, text: str) -> None:
    path = root / "data" / f"{key}.json"
    content = json.loads(path.read_text())
    content["short_caption"] = text
    path.write_text(json.dumps(content))


@pytest.mark.parametrize("picked_up_first", [False, True])
def test_an_edited_json_survives_its_shard_changing(tmp_path: Path, picked_up_first: bool):
    root = tmp_path / "ds"
    _shard(root, "data-000000", ["b"])
    write_config(root)
    run_doit(root)
    _edit_caption_in_json(root, "b", "EDITED b")
    if picked_up_first:
        run_doit(root)
        assert (root / "data/b.txt").read_text() == "EDITED b"
    _shard(root, "data-000000", ["b", "e"])  # the same b, one sample more
    proc = run_doit(root, check=False)
    _no_traceback(proc)
    kept = [p.read_text() for p in (root / "edited").rglob("*.json")]
    in_data = json.loads((root / "data/b.json").read_text())["short_caption"]
    assert in_data == "EDITED b" or any("EDITED b" in t for t in kept), proc.stdout


def test_the_summary_counts_the_rows_the_table_holds_after_a_sample_moves(tmp_path: Path):
    root = tmp_path / "ds"
    _shard(root, "s0", ["a", "b"])
    _shard(root, "s1", ["d"])
    write_config(root)
    run_doit(root)
    _shard(root, "s0", ["a", "b", "d"])
    (root / SHARDS / "s1.tar").unlink()
    proc = run_doit(root, check=False)
    _no_traceback(proc)
    rows = len(table_rows(root))
    assert f"{rows} sample(s) in dalle3.parquet" in proc.stdout, (rows, proc.stdout)


def test_a_copy_of_our_entry_with_our_id_is_named(tmp_path: Path):
    root = tmp_path / "ds"
    _shard(root, "data-000000", ["a"])
    write_config(root)
    run_doit(root)
    entries = _entries(root)
    entries.append({**entries[0], "repeats": 2})
    (root / "multidatabackend.json").write_text(json.dumps(entries, indent=4))
    proc = run_doit(root, check=False)
    audit = run_doit(root, "audit", check=False)
    _no_traceback(proc)
    said = proc.stdout + proc.stderr + audit.stdout + audit.stderr
    ours = [e for e in _entries(root) if e.get("instance_data_dir") == str(root / "data")]
    assert len(ours) == 1 or "twice" in said, said


# ------------------------------------------------------------------- special files in data/


def test_a_json_replaced_by_a_fifo_hangs_nothing(tmp_path: Path):
    root = tmp_path / "ds"
    _shard(root, "data-000000", ["a", "b"])
    write_config(root)
    run_doit(root)
    (root / "data/a.json").unlink()
    os.mkfifo(root / "data/a.json")
    proc = run_doit(root, check=False, timeout=20)
    _no_traceback(proc)
    assert "a.json" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    audit = run_doit(root, "audit", check=False, timeout=20)
    _no_traceback(audit)
    assert audit.returncode == 1, audit.stdout


def test_the_deep_audit_of_an_image_replaced_by_a_fifo_ends(tmp_path: Path):
    root = tmp_path / "ds"
    _shard(root, "data-000000", ["a", "b"])
    write_config(root)
    run_doit(root)
    (root / "data/a.png").unlink()
    os.mkfifo(root / "data/a.png")
    audit = run_doit(root, "audit", "--deep", check=False, timeout=20)
    _no_traceback(audit)
    assert audit.returncode == 1 and "a.png" in audit.stdout, audit.stdout


# ------------------------------------------------------------------- a switch that fails midway


def test_a_parquet_switch_whose_entry_cannot_be_written_leaves_training_possible(
    tmp_path: Path,
):
    root = tmp_path / "ds"
    _shard(root, "data-000000", ["a", "b"])
    write_config(root)
    run_doit(root)
    (root / ".multidatabackend.json.shardprep-tmp").mkdir()
    proc = run_doit(root, "caption_strategy=parquet", check=False)
    _no_traceback(proc)
    entry = next(e for e in _entries(root) if e["id"] == "dalle3")
    if entry["caption_strategy"] == "textfile":
        assert (root / "data/a.txt").is_file() and (root / "data/b.txt").is_file()
    assert "Errno" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr


# ------------------------------------------------------------- the build's own output as input


def test_a_recursive_glob_never_takes_the_builds_own_folders_as_shards(tmp_path: Path):
    root = tmp_path / "ds"
    inner = write_tar(
        tmp_path / "inner.tar", [M("in.png", png(7)), M("in.json", sample_json("in"))]
    )
    _shard(root, "s0", ["a"], extra=[M("inner.tar", inner.read_bytes())])
    write_config(root, shards="**/*.tar")
    run_doit(root)
    assert (root / "incomplete/hub__data__s0/inner.tar").is_file()
    again = run_doit(root, check=False)
    _no_traceback(again)
    assert "extract:" not in "".join(
        line for line in again.stdout.splitlines() if line.startswith(".  ")
    ), again.stdout
    assert {r["filename"] for r in table_rows(root)} == {"a.png"}


def test_a_json_edited_into_invalid_json_is_not_called_picked_up(tmp_path: Path):
    root = tmp_path / "ds"
    _shard(root, "data-000000", ["a", "b"])
    write_config(root)
    run_doit(root)
    with open(root / "data/a.json", "a", encoding="utf-8") as f:
        f.write("junk")
    proc = run_doit(root, check=False)
    _no_traceback(proc)
    assert "a.json" in proc.stdout + proc.stderr
    assert "partitions rewritten: \n" not in proc.stdout + "\n", proc.stdout
    run_doit(root, "audit", check=False)
    report = json.loads((root / "state/audit.json").read_text())
    kinds = {f["kind"] for f in report["findings"] if f["path"] == "data/a.json"}
    assert kinds and kinds != {"edited_json"}, kinds


def test_a_symlinked_table_is_written_through_to_its_target(tmp_path: Path):
    root = tmp_path / "ds"
    _shard(root, "data-000000", ["a"])
    write_config(root)
    run_doit(root)
    target = tmp_path / "elsewhere" / "dalle3.parquet"
    target.parent.mkdir()
    (root / "dalle3.parquet").rename(target)
    (root / "dalle3.parquet").symlink_to(target)
    run_doit(root, "caption_field=long_caption")
    assert (root / "dalle3.parquet").is_symlink()
    assert {r["caption"] for r in table_rows(root)} == {"long a"}


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_dataloader_value_that_is_not_json_never_reaches_the_file(tmp_path: Path, value: str):
    root = tmp_path / "ds"
    _shard(root, "data-000000", ["a"])
    write_config(root)
    run_doit(root)
    proc = run_doit(root, f"dataloader={{resolution = {value}}}", check=False)
    _no_traceback(proc)

    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    json.loads((root / "multidatabackend.json").read_text(), parse_constant=refuse)
    assert proc.returncode != 0 and "[dataloader]" in proc.stdout + proc.stderr


def test_an_edited_json_kept_aside_survives_a_member_named_like_its_place(tmp_path: Path):
    root = tmp_path / "ds"
    odd = M("edited-by-hand/a.json", b'{"theirs": 1}')
    _shard(root, "s0", ["a", "b"], extra=[odd])
    write_config(root)
    run_doit(root)
    (root / "data/a.json").write_text('{"short_caption": "MINE"}')
    write_tar(root / SHARDS / "s0.tar", [M("b.png", png(2)), M("b.json", sample_json("b")), odd])
    proc = run_doit(root, check=False)
    _no_traceback(proc)
    texts = [p.read_text() for p in (root / "edited").rglob("*.json")]
    assert any("MINE" in t for t in texts), (texts, proc.stdout)


# ------------------------------------------------------------------- a root that is not UTF-8


def test_a_root_whose_name_is_not_utf8_builds_or_is_refused_in_one_line(tmp_path: Path):
    root = Path(os.fsdecode(os.fsencode(str(tmp_path)) + b"/caf\xe9"))
    _shard(root, "data-000000", ["a"])
    write_config(root)
    proc = run_doit(root, check=False)
    _no_traceback(proc)
    if (root / "data").exists() and images_in(root / "data"):
        _trainer_safe(root)
    else:
        assert proc.returncode != 0 and "ERROR" in proc.stdout + proc.stderr


def test_a_dangling_shard_symlink_is_named(tmp_path: Path):
    root = tmp_path / "ds"
    _shard(root, "data-000000", ["a"])
    (root / SHARDS / "data-000001.tar").symlink_to(tmp_path / "cache" / "blob")
    write_config(root)
    proc = run_doit(root, check=False)
    audit = run_doit(root, "audit", check=False)
    _no_traceback(proc)
    assert "data-000001" in proc.stdout + proc.stderr, proc.stdout
    assert "data-000001" in audit.stdout, audit.stdout


def test_a_first_build_killed_before_doit_saved_its_state_is_no_damage(tmp_path: Path):
    root = tmp_path / "ds"
    _shard(root, "data-000000", ["a"])
    write_config(root)
    run_doit(root)
    # what kill -9 leaves when it lands during a first build's extraction (seen at 2 s of a
    # 32k-sample build): dbm.dumb created its data file, nothing was synced yet
    for path in (root / "state").glob("doit.db*"):
        path.unlink()
    (root / "state" / "doit.db.dat").write_bytes(b"")
    proc = run_doit(root)
    assert "damaged" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert not list((root / "state").glob("damaged-*"))
