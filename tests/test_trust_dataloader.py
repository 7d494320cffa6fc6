"""The user's `multidatabackend.json` and table under hostile use (issues 15 and 20): ids
that clash, two roots sharing one file, copies of our entry, a parquet switch whose entry
cannot be written, symlinked tables, and `doit repair` of the entry."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import run_doit, table_rows
from tarbuild import M, png, sample_json, write_tar
from test_crossdevice import other_disk  # noqa: F401  (a fixture: a tmpfs for the test)

from sample.generate import write_config

BACKEND = "multidatabackend.json"


def _shard(root: Path, name: str, keys: list[str]) -> Path:
    members = []
    for i, key in enumerate(keys):
        members += [M(f"{key}.png", png(i + 1)), M(f"{key}.json", sample_json(key))]
    return write_tar(root / "hub" / "data" / f"{name}.tar", members)


def _built(root: Path, **settings) -> Path:
    _shard(root, "data-000000", ["a", "b"])
    _shard(root, "data-000001", ["c"])
    write_config(root, **settings)
    run_doit(root)
    return root


def entries(root: Path) -> list[dict]:
    return json.loads((root / BACKEND).read_text(encoding="utf-8"))


def ours(root: Path, id_: str = "dalle3") -> dict:
    return next(e for e in entries(root) if e.get("id") == id_)


def said(proc) -> str:
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def lines_with(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]


def dataloader_findings(root: Path) -> dict[str, list[dict]]:
    report = json.loads((root / "state" / "audit.json").read_text(encoding="utf-8"))
    out: dict[str, list[dict]] = {}
    for f in report["findings"]:
        if f["kind"].startswith("dataloader"):
            out.setdefault(f["kind"], []).append(f)
    return out


def captions(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "data").glob("*.txt"))


# --- ids that are not ours to take -------------------------------------------------------------


@pytest.mark.parametrize(
    "other",
    [
        None,
        {"id": "edges", "dataset_type": "conditioning"},
        {"id": "mine", "type": "local", "instance_data_dir": "/elsewhere/data", "repeats": 2},
    ],
)
def test_an_id_that_is_not_ours_to_take_is_refused_in_one_line(tmp_path: Path, other) -> None:
    root = _built(tmp_path / "ds")
    if other is not None:
        (root / BACKEND).write_text(json.dumps([*entries(root), other], indent=2))
    before = (root / BACKEND).read_bytes()
    id_ = "text-embeds" if other is None else other["id"]
    proc = run_doit(root, f"id={id_}", check=False)
    assert proc.returncode != 0
    [line] = lines_with(said(proc), "choose another `id`")
    assert str(root / BACKEND) in line and repr(id_) in line
    assert "merged into it" in line or "ours would replace it" in line
    assert (root / BACKEND).read_bytes() == before
    assert not (root / f"{id_}.parquet").exists()  # refused before anything is written
    run_doit(root)
    assert entries(root) == json.loads(before)


# --- two roots, one file ---------------------------------------------------------------------


def test_two_roots_sharing_one_file_keep_both_entries_once_ids_differ(tmp_path: Path) -> None:
    first = _built(tmp_path / "A")
    second = tmp_path / "B"
    _shard(second, "data-000000", ["x"])
    write_config(second)
    (second / BACKEND).symlink_to(first / BACKEND)
    before = (first / BACKEND).read_bytes()

    proc = run_doit(second, check=False)
    assert proc.returncode != 0
    [line] = lines_with(said(proc), "id of its own")
    assert str(first / "data") in line and str(second / "dataset.toml") in line
    assert (first / BACKEND).read_bytes() == before
    audit = run_doit(second, "audit", check=False)
    assert str(first / "data") in said(audit)

    write_config(second, id="bset")
    run_doit(second)
    assert ours(first)["instance_data_dir"] == str(first / "data")
    assert ours(first, "bset")["instance_data_dir"] == str(second / "data")
    assert len([e for e in entries(first) if e.get("dataset_type") == "text_embeds"]) == 1
    shared = (first / BACKEND).read_bytes()
    for root in (first, second, first):  # neither build flips the other's entry
        run_doit(root)
        assert (first / BACKEND).read_bytes() == shared
        run_doit(root, "audit")
        assert dataloader_findings(root) == {}
    assert (second / BACKEND).is_symlink()


def test_a_copied_root_with_a_file_of_its_own_takes_its_entry(tmp_path: Path) -> None:
    first = _built(tmp_path / "A")
    before = (first / BACKEND).read_bytes()
    second = tmp_path / "B"
    shutil.copytree(first, second, symlinks=True)
    run_doit(second)
    assert ours(second)["instance_data_dir"] == str(second / "data")
    assert (first / BACKEND).read_bytes() == before


# --- a copy of our entry -----------------------------------------------------------------------


def test_a_copy_of_our_entry_is_named_and_left_as_it_is(tmp_path: Path) -> None:
    root = _built(tmp_path / "ds")
    copy = {**ours(root), "repeats": 2}
    (root / BACKEND).write_text(json.dumps([*entries(root), copy], indent=2))

    proc = run_doit(root, "caption_strategy=parquet")
    [line] = lines_with(said(proc), "has id 'dalle3' too")
    assert "entry 3 of the list" in line and "twice" in line and str(root / "data") in line
    assert [e for e in entries(root) if e.get("id") == "dalle3"] == [ours(root), copy]
    assert ours(root)["caption_strategy"] == "parquet"  # the first is ours; the copy stays

    run_doit(root, "caption_strategy=parquet", "audit")
    [finding] = dataloader_findings(root)["dataloader_duplicate"]
    assert "entry 3 of the list" in finding["detail"] and finding["severity"] == "note"


# --- a caption strategy switch keeps the folder trainable ----------------------------------------


def test_a_parquet_switch_keeps_the_captions_until_the_entry_says_parquet(tmp_path: Path) -> None:
    root = _built(tmp_path / "ds")
    obstacle = root / f".{BACKEND}.shardprep-tmp"
    obstacle.mkdir()
    proc = run_doit(root, "caption_strategy=parquet", check=False)
    assert proc.returncode != 0
    [line] = lines_with(said(proc), "cannot be written")
    assert str(root / BACKEND) in line and "Errno" not in line
    assert ours(root)["caption_strategy"] == "textfile"
    assert captions(root) == ["a.txt", "b.txt", "c.txt"]
    assert obstacle.is_dir()  # not ours to remove

    obstacle.rmdir()
    run_doit(root, "caption_strategy=parquet")
    assert ours(root)["caption_strategy"] == "parquet" and captions(root) == []
    run_doit(root, "caption_strategy=parquet", "audit")
    run_doit(root)
    assert ours(root)["caption_strategy"] == "textfile"
    assert captions(root) == ["a.txt", "b.txt", "c.txt"]


def test_a_dataloader_textfile_override_under_parquet_keeps_the_captions(tmp_path: Path) -> None:
    root = _built(tmp_path / "ds")
    write_config(root, dataloader={"caption_strategy": "textfile"})
    proc = run_doit(root, "caption_strategy=parquet", check=False)
    assert proc.returncode != 0
    [line] = lines_with(said(proc), "writes no .txt files")
    assert "[dataloader] caption_strategy" in line and str(root / "dataset.toml") in line
    assert captions(root) == ["a.txt", "b.txt", "c.txt"]
    assert ours(root)["caption_strategy"] == "textfile"


def test_a_parallel_parquet_switch_writes_one_valid_file(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    for n in range(4):
        _shard(root, f"data-00000{n}", [f"k{n}a", f"k{n}b"])
    write_config(root)
    run_doit(root)
    other = {"id": "mine", "type": "local", "instance_data_dir": str(root / "data")}
    (root / BACKEND).write_text(json.dumps([*entries(root), other]))
    proc = run_doit(root, "-n", "3", "-P", "process", "caption_strategy=parquet")
    # the entry is written once, by whichever task came first: its warning is said once
    assert len(lines_with(said(proc), "also reads")) == 1
    assert ours(root)["caption_strategy"] == "parquet" and other in entries(root)
    assert captions(root) == []
    assert sorted(p.name for p in root.glob(f".{BACKEND}*")) == []


# --- a symlinked table -------------------------------------------------------------------------


def test_a_symlinked_table_on_another_disk_is_written_through(
    tmp_path: Path,
    other_disk: Path,  # noqa: F811
) -> None:
    root = _built(tmp_path / "ds")
    target = other_disk / "dalle3.parquet"
    shutil.move(root / "dalle3.parquet", target)
    (root / "dalle3.parquet").symlink_to(target)

    run_doit(root, "caption_field=long_caption")
    assert (root / "dalle3.parquet").is_symlink()
    assert {r["caption"] for r in table_rows(root)} == {"long a", "long b", "long c"}
    assert sorted(p.name for p in other_disk.iterdir()) == ["dalle3.parquet"]
    assert not list(root.glob(".dalle3.parquet*"))
    run_doit(root, "caption_field=long_caption", "audit")

    target.write_bytes(target.read_bytes()[:100])  # damage the target
    assert run_doit(root, "caption_field=long_caption", "audit", check=False).returncode != 0
    run_doit(root, "caption_field=long_caption", "repair")
    assert (root / "dalle3.parquet").is_symlink()
    assert len(table_rows(root)) == 3
    run_doit(root, "caption_field=long_caption", "audit")


# --- doit repair of the entry ------------------------------------------------------------------


def _delete_ours(root: Path) -> None:
    kept = [e for e in entries(root) if e.get("id") != "dalle3"]
    (root / BACKEND).write_text(json.dumps(kept))


def _mangle_ours(root: Path) -> None:
    data = entries(root)
    next(e for e in data if e.get("id") == "dalle3")["instance_data_dir"] = "/nowhere/data"
    (root / BACKEND).write_text(json.dumps(data))


def _remove_file(root: Path) -> None:
    (root / BACKEND).unlink()


@pytest.mark.parametrize("damage", [_delete_ours, _mangle_ours, _remove_file, "moved"])
def test_repair_rewrites_a_missing_or_stale_entry(tmp_path: Path, damage) -> None:
    root = _built(tmp_path / "ds")
    data = entries(root)
    mine = {"id": "mine", "type": "local", "instance_data_dir": "/elsewhere/data"}
    (root / BACKEND).write_text(json.dumps([*data, mine]))
    run_doit(root)
    if damage == "moved":
        moved = tmp_path / "moved"
        shutil.move(root, moved)
        root = moved
    else:
        damage(root)
    run_doit(root, "audit", check=False)
    assert dataloader_findings(root)

    proc = run_doit(root, "repair")
    assert f"rewrote entry 'dalle3' in {BACKEND}" in said(proc)
    assert ours(root)["instance_data_dir"] == str(root / "data")
    assert ours(root)["parquet"]["path"] == str(root / "dalle3.parquet")
    if damage is not _remove_file:
        assert mine in entries(root)
    run_doit(root, "audit")
    assert dataloader_findings(root) == {}


def test_repair_leaves_a_value_only_edited_by_hand(tmp_path: Path) -> None:
    root = _built(tmp_path / "ds")
    data = entries(root)
    next(e for e in data if e.get("id") == "dalle3")["resolution"] = 2.0
    (root / BACKEND).write_text(json.dumps(data))
    proc = run_doit(root, "repair")
    assert BACKEND not in said(proc)
    assert ours(root)["resolution"] == 2.0


def test_repair_never_overwrites_a_file_that_is_not_a_json_list(tmp_path: Path) -> None:
    root = _built(tmp_path / "ds")
    (root / BACKEND).write_text("{broken\n")
    proc = run_doit(root, "repair", check=False)
    assert proc.returncode != 0
    [line] = lines_with(said(proc), "NOT REPAIRED:")  # named once
    assert "cannot rewrite the dataloader entry" in line
    assert "not valid JSON" in line and "fix it or move it away" in line
    assert (root / BACKEND).read_text() == "{broken\n"
