"""`multidatabackend.json` is the user's file too: merges, symlinks, moves, ids, damage."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import run_doit

from sample.generate import write_config
from tasks.dataloader import DataloaderFileError, plan_dataloader, write_dataloader
from tasks.settings import Settings, load_settings

BACKEND = "multidatabackend.json"
TMP = ".multidatabackend.json.shardprep-tmp"


def entries(root: Path) -> list[dict]:
    return json.loads((root / BACKEND).read_text(encoding="utf-8"))


def ours(root: Path, id_: str = "dalle3") -> dict:
    return next(e for e in entries(root) if e.get("id") == id_)


def embeds(root: Path) -> list[dict]:
    return [e for e in entries(root) if e.get("dataset_type") == "text_embeds"]


def edit_ours(root: Path, change, id_: str = "dalle3") -> None:
    """Apply `change(entry)` to our entry in the file, as a user editing it by hand."""
    data = entries(root)
    change(next(e for e in data if e.get("id") == id_))
    (root / BACKEND).write_text(json.dumps(data, indent=2), encoding="utf-8")


def kinds(root: Path) -> dict[str, list[dict]]:
    report = json.loads((root / "state" / "audit.json").read_text(encoding="utf-8"))
    out: dict[str, list[dict]] = {}
    for f in report["findings"]:
        out.setdefault(f["kind"], []).append(f)
    return out


def settings_of(root: Path, **overrides: str) -> Settings:
    return load_settings(root / "dataset.toml", overrides)


def dataloader_findings(root: Path) -> dict[str, list[dict]]:
    return {k: v for k, v in kinds(root).items() if k.startswith("dataloader")}


# --- keys the user added or changed ---------------------------------------------------------


def test_user_keys_survive_a_caption_strategy_switch(built: Path) -> None:
    def customise(entry: dict) -> None:
        entry["repeats"] = 3
        entry["crop"] = True
        entry["parquet"]["caption_column"] = "long_caption"
        entry["parquet"]["my_note"] = "mine"

    edit_ours(built, customise)
    proc = run_doit(built, "caption_strategy=parquet")
    entry = ours(built)
    assert entry["caption_strategy"] == "parquet"
    assert entry["repeats"] == 3 and entry["crop"] is True
    assert entry["parquet"]["my_note"] == "mine"
    # a key the build writes, changed by hand: set back, with a warning naming it
    assert entry["parquet"]["caption_column"] == "caption"
    [warning] = [line for line in proc.stdout.splitlines() if line.startswith("warning:")]
    assert 'parquet.caption_column ("long_caption" -> "caption")' in warning
    assert "[dataloader] of dataset.toml" in warning and BACKEND in warning

    proc = run_doit(built)  # back to textfile: the user's keys stay, nothing to warn
    entry = ours(built)
    assert entry["caption_strategy"] == "textfile"
    assert entry["repeats"] == 3 and entry["crop"] is True
    assert entry["parquet"]["my_note"] == "mine"
    assert [line for line in proc.stdout.splitlines() if line.startswith("warning:")] == []


def test_a_key_dropped_from_dataloader_settings_leaves_the_file(built: Path) -> None:
    write_dataloader(settings_of(built, dataloader="{crop = true, repeats = 2}"))
    assert ours(built)["crop"] is True and ours(built)["repeats"] == 2
    edit_ours(built, lambda e: e.update(repeats=5))  # the user changed one of them
    plan = write_dataloader(settings_of(built))
    entry = ours(built)
    assert "crop" not in entry  # ours before, untouched: gone with the setting
    assert entry["repeats"] == 5  # changed by hand: now the user's
    assert plan.warnings(settings_of(built)) == []


def test_a_file_without_record_merges_by_what_the_entry_names(built: Path) -> None:
    """A root built before the record existed (or with state/ reset) still keeps user keys."""
    (built / "state" / "dataloader.json").unlink()
    edit_ours(built, lambda e: e.update(repeats=4))
    plan = write_dataloader(settings_of(built, caption_strategy="parquet"))
    assert ours(built)["repeats"] == 4 and ours(built)["caption_strategy"] == "parquet"
    assert plan.replaced == []
    assert (built / "state" / "dataloader.json").is_file()


# --- the file itself ------------------------------------------------------------------------


def test_a_symlinked_file_is_written_through_to_its_target(built: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "configs"
    elsewhere.mkdir()
    target = elsewhere / "backends.json"
    mine = {"id": "other-set", "type": "local", "instance_data_dir": "/somewhere/else"}
    target.write_text(json.dumps([mine, *entries(built)]), encoding="utf-8")
    (built / BACKEND).unlink()
    (built / BACKEND).symlink_to(target)

    run_doit(built, "caption_strategy=parquet")
    assert (built / BACKEND).is_symlink() and os.readlink(built / BACKEND) == str(target)
    written = json.loads(target.read_text(encoding="utf-8"))
    assert mine in written
    assert next(e for e in written if e["id"] == "dalle3")["caption_strategy"] == "parquet"
    assert sorted(p.name for p in elsewhere.iterdir()) == ["backends.json"]
    assert not (built / TMP).exists()


def test_a_failed_rename_leaves_no_temporary_file(
    built: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = (built / BACKEND).read_bytes()

    def refuse(src, dst) -> None:
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(DataloaderFileError, match="cannot be written .Permission denied"):
        write_dataloader(settings_of(built, caption_strategy="parquet"))
    monkeypatch.undo()
    assert not (built / TMP).exists()
    assert (built / BACKEND).read_bytes() == before


@pytest.mark.parametrize(
    ("text", "says"),
    [('[{"id": "x",}\n', "not valid JSON"), ('{"id": "x"}\n', "expected a JSON list")],
)
def test_a_file_that_is_not_a_json_list_is_never_overwritten(
    built: Path, text: str, says: str
) -> None:
    (built / BACKEND).write_text(text, encoding="utf-8")
    proc = run_doit(built, "caption_strategy=parquet", check=False)
    assert proc.returncode != 0
    assert (built / BACKEND).read_text(encoding="utf-8") == text
    [line] = [x for x in (proc.stdout + proc.stderr).splitlines() if says in x]
    assert str(built / BACKEND) in line and "fix it or move it away" in line
    assert "Traceback" not in proc.stderr
    proc = run_doit(built, "audit", check=False)
    assert proc.returncode == 1
    assert says in dataloader_findings(built)["dataloader_missing"][0]["detail"]


# --- damage the build and the audit notice ---------------------------------------------------


def test_our_entry_deleted_by_hand_is_reported_and_restored(built: Path) -> None:
    other = {"id": "mine", "type": "local", "instance_data_dir": "/elsewhere"}
    kept = [e for e in entries(built) if e.get("id") != "dalle3"] + [other]
    (built / BACKEND).write_text(json.dumps(kept), encoding="utf-8")
    proc = run_doit(built, "audit", check=False)
    assert proc.returncode == 1
    [finding] = dataloader_findings(built)["dataloader_missing"]
    assert finding["severity"] == "damage" and "no entry with id 'dalle3'" in finding["detail"]

    run_doit(built)  # settings unchanged: the file's content alone makes the task run
    assert ours(built)["instance_data_dir"] == str(built / "data")
    assert other in entries(built)
    run_doit(built, "audit")
    assert dataloader_findings(built) == {}


def test_a_mangled_path_is_stale_damage_and_set_back(built: Path) -> None:
    edit_ours(built, lambda e: e.update(instance_data_dir="/nowhere/data", resolution=2.0))
    proc = run_doit(built, "audit", check=False)
    assert proc.returncode == 1
    found = dataloader_findings(built)
    assert found["dataloader_corrupt"][0]["severity"] == "damage"
    assert "instance_data_dir" in found["dataloader_corrupt"][0]["detail"]
    assert "dataloader_stale" not in found
    assert found["dataloader_edited"][0]["severity"] == "note"
    assert "resolution" in found["dataloader_edited"][0]["detail"]
    proc = run_doit(built)
    assert ours(built)["instance_data_dir"] == str(built / "data")
    assert ours(built)["resolution"] == 1.0
    assert "resolution (2.0 -> 1.0)" in proc.stdout


def test_a_moved_root_is_stale_until_the_next_doit(built: Path, tmp_path: Path) -> None:
    edit_ours(built, lambda e: e.update(repeats=2))
    run_doit(built)  # records the entry as the build wrote it
    moved = tmp_path / "moved"
    shutil.move(built, moved)
    run_doit(moved, "audit")  # a note, as a new shard is: the next doit rewrites it
    found = dataloader_findings(moved)
    assert set(found) == {"dataloader_stale"}
    entry_note, embeds_note = found["dataloader_stale"]
    assert entry_note["severity"] == "note"
    assert (
        f"written for {built} (instance_data_dir, cache_dir_vae, parquet.path)"
        in (entry_note["detail"])
    )
    assert "text_embeds" in embeds_note["detail"]

    run_doit(moved)
    entry = ours(moved)
    assert entry["instance_data_dir"] == str(moved / "data")
    assert entry["cache_dir_vae"] == str(moved / "cache" / "vae")
    assert entry["parquet"]["path"] == str(moved / "dalle3.parquet")
    assert entry["repeats"] == 2
    [text] = embeds(moved)
    assert text["cache_dir"] == str(moved / "cache" / "text")  # follows the root
    run_doit(moved, "audit")
    assert dataloader_findings(moved) == {}


def test_a_text_embeds_cache_the_user_chose_stays_when_the_root_moves(
    built: Path, tmp_path: Path
) -> None:
    data = entries(built)
    next(e for e in data if e.get("dataset_type") == "text_embeds")["cache_dir"] = "/shared/te"
    (built / BACKEND).write_text(json.dumps(data), encoding="utf-8")
    moved = tmp_path / "moved"
    shutil.move(built, moved)
    run_doit(moved)
    [text] = embeds(moved)
    assert text["cache_dir"] == "/shared/te"


def test_without_record_a_moved_root_still_updates_both_entries(
    built: Path, tmp_path: Path
) -> None:
    (built / "state" / "dataloader.json").unlink()
    moved = tmp_path / "moved"
    shutil.move(built, moved)
    plan = write_dataloader(settings_of(moved))
    assert plan.replaced == []
    assert ours(moved)["instance_data_dir"] == str(moved / "data")
    [text] = embeds(moved)
    assert text["cache_dir"] == str(moved / "cache" / "text")


# --- ids --------------------------------------------------------------------------------------


def test_a_one_off_id_renames_our_entry_instead_of_adding_one(built: Path) -> None:
    edit_ours(built, lambda e: e.update(repeats=3))
    proc = run_doit(built, "id=other")
    ids = [e.get("id") for e in entries(built)]
    assert "dalle3" not in ids and ids.count("other") == 1
    entry = ours(built, "other")
    assert entry["repeats"] == 3
    assert entry["parquet"]["path"] == str(built / "other.parquet")
    assert "entry 'dalle3' (this root's previous id) is now 'other'" in proc.stdout
    assert len(embeds(built)) == 1
    run_doit(built)
    assert [e.get("id") for e in entries(built)].count("dalle3") == 1
    assert "other" not in [e.get("id") for e in entries(built)]


def test_another_entry_reading_our_data_is_named_not_removed(built: Path) -> None:
    second = {
        "id": "dalle3-512",
        "type": "local",
        "instance_data_dir": str(built / "data"),
        "resolution": 512,
        "resolution_type": "pixel",
        "cache_dir_vae": str(built / "cache" / "vae-512"),
    }
    (built / BACKEND).write_text(json.dumps([*entries(built), second]), encoding="utf-8")
    plan = plan_dataloader(settings_of(built))
    assert plan.duplicates == ["dalle3-512"]
    proc = run_doit(built, "caption_strategy=parquet")
    assert second in entries(built)
    assert "entry 'dalle3-512' also reads" in proc.stdout and "twice" in proc.stdout
    run_doit(built, "audit", "caption_strategy=parquet")
    [note] = dataloader_findings(built)["dataloader_duplicate"]
    assert note["severity"] == "note" and "dalle3-512" in note["detail"]


def test_a_fresh_file_holds_our_entry_and_one_text_embeds(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    write_config(root)
    settings = settings_of(root)
    write_dataloader(settings)
    first = (root / BACKEND).read_bytes()
    assert [e.get("id") for e in entries(root)] == ["dalle3", "text-embeds"]
    write_dataloader(settings)
    assert (root / BACKEND).read_bytes() == first


def test_an_entry_written_for_other_settings_is_a_note(built: Path) -> None:
    """A one-off setting on the audit is not damage: the next doit with it rewrites the entry."""
    run_doit(built, "audit", "caption_strategy=parquet")
    found = dataloader_findings(built)
    assert set(found) == {"dataloader_stale"}
    assert found["dataloader_stale"][0]["severity"] == "note"
    assert (
        "caption_strategy differ from what the settings give now"
        in (found["dataloader_stale"][0]["detail"])
    )


def test_without_record_the_entry_of_a_previous_id_is_found_by_its_paths(built: Path) -> None:
    (built / "state" / "dataloader.json").unlink()
    mine = {"id": "mine", "type": "local", "instance_data_dir": "/elsewhere/data"}
    (built / BACKEND).write_text(json.dumps([*entries(built), mine]), encoding="utf-8")
    plan = write_dataloader(settings_of(built, id="other"))
    assert plan.renamed_from == "dalle3"
    assert [e.get("id") for e in entries(built)] == ["other", "text-embeds", "mine"]


def test_a_dataloader_setting_json_cannot_hold_is_one_line(built: Path) -> None:
    before = (built / BACKEND).read_bytes()
    proc = run_doit(built, "dataloader={when = 1979-05-27}", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stdout + proc.stderr
    [line] = [x for x in proc.stdout.splitlines() if "JSON cannot hold" in x]
    assert "[dataloader]" in line and "dataset.toml" in line
    assert (built / BACKEND).read_bytes() == before
