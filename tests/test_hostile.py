"""Hostile and broken input: nothing escapes, nothing is lost, errors name shard and member."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import xxhash
from conftest import images_in, run_doit, snapshot, table_rows
from tarbuild import (
    SHARDS,
    M,
    jpeg,
    member_offsets,
    png,
    quirk_rows,
    sample_json,
    write_dataset,
)

from sample.generate import make_dataset, write_config
from sample.images import png_bytes
from state.manifest import ManifestError, open_manifest
from tasks.settings import load_settings
from tasks.summary import summarize


def _tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): xxhash.xxh3_128_hexdigest(p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("cut", ["mid_header", "mid_data", "no_end_marker"])
def test_a_truncated_shard_fails_alone_and_builds_once_replaced(dataset: Path, cut: str):
    tar = dataset / SHARDS / "data-000001.tar"
    good = tar.read_bytes()
    members = member_offsets(tar)
    name, header, data, size = members[5]
    at = {"mid_header": header + 100, "mid_data": data + size // 2, "no_end_marker": header}[cut]
    tar.write_bytes(good[:at])

    proc = run_doit(dataset, check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "data-000001.tar: cannot be read to its end" in out
    assert f"after member {members[4][0]!r}" in out
    assert "doit download" in out
    assert len(table_rows(dataset)) == 20  # the two good shards, complete

    again = run_doit(dataset, check=False)  # still failing, still saying so
    assert again.returncode != 0 and "data-000001" in again.stdout + again.stderr

    tar.write_bytes(good)
    run_doit(dataset)
    assert len(table_rows(dataset)) == 30


def test_members_that_would_escape_or_are_not_files_are_never_written(tmp_path: Path):
    root = tmp_path / "ds"
    hostile = [
        M("../escape.png", png()),
        M("/abs/evil.json", b"{}"),
        M("sub/../../up.json", b"{}"),
        M("link.png", type=tarfile.SYMTYPE, linkname="/etc/passwd"),
        M("hard.png", type=tarfile.LNKTYPE, linkname="good.png"),
        M("dev.png", type=tarfile.CHRTYPE),
        M("fifo.json", type=tarfile.FIFOTYPE),
    ]
    write_dataset(
        root, {"data-000000": [M("good.json", sample_json("good")), M("good.png", png())] + hostile}
    )
    proc = run_doit(root)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    assert sorted(p.name for p in (root / "data").iterdir()) == [
        "good.json",
        "good.png",
        "good.txt",
    ]
    refused = {m for _, kind, m in quirk_rows(root) if kind == "refused"}
    assert refused == {m.name for m in hostile}
    for m in hostile:
        assert m.name in proc.stdout
    assert [r["filename"] for r in table_rows(root)] == ["good.png"]


def test_large_members_are_written_and_parsed_byte_for_byte(tmp_path: Path):
    image = png_bytes(300, 200, seed=3, noisy=True)  # ~180 KB: read as a view of the tar
    caption = " ".join(["a very long caption"] * 4000)  # a JSON of ~80 KB
    meta = sample_json("big", long_caption=caption, width=300, height=200)
    root = write_dataset(
        tmp_path / "ds", {"data-000000": [M("big.json", meta), M("big.png", image)]}
    )
    run_doit(root, "caption_field=long_caption")
    assert (root / "data/big.png").read_bytes() == image
    assert (root / "data/big.json").read_bytes() == meta
    assert (root / "data/big.txt").read_text(encoding="utf-8") == caption
    assert [(r["filename"], r["width"], r["caption"]) for r in table_rows(root)] == [
        ("big.png", 300, caption)
    ]
    assert run_doit(root, "audit", "--deep", "caption_field=long_caption").returncode == 0


def test_data_quirks_are_kept_aside_or_recovered_and_named(tmp_path: Path):
    root = tmp_path / "ds"
    members = [
        M("bad.json", b'{"image_name": "bad.png", "width": 1'),
        M("bad.png", png(2)),
        M("latin.json", '{"short_caption": "caf\xe9"}'.encode("latin-1")),
        M("latin.png", png(3)),
        M("list.json", b"[1, 2]"),
        M("list.png", png(4)),
        M("zero.json", sample_json("zero")),
        M("zero.png", b""),
        M("noname.json", sample_json("noname", image_name=None)),
        M("noname.png", png(5)),
        M("other.json", sample_json("other", image_name="renamed.png")),
        M("other.png", png(6)),
        M("strsize.json", sample_json("strsize", width="1024", height=1024.0)),
        M("strsize.png", png(7)),
        M("dup.json", sample_json("dup", short_caption="first")),
        M("dup.png", png(8)),
        M("dup.json", sample_json("dup", short_caption="second")),
        M("two.json", sample_json("two", ".jpg")),
        M("two.png", png(9)),
        M("two.jpg", jpeg(9)),
        M("sub/dir/deep.json", sample_json("deep")),
        M("sub/dir/deep.png", png(10)),
        M("notes.txt", b"not a sample"),
    ]
    write_dataset(root, {"data-000000": members})
    proc = run_doit(root)
    rows = {r["filename"]: r for r in table_rows(root)}
    assert sorted(rows) == [
        "dup.png",
        "noname.png",
        "other.png",
        "strsize.png",
        "sub/dir/deep.png",
        "two.jpg",
    ]
    assert rows["dup.png"]["caption"] == "second"  # the later member wins, as with tar xf
    assert (rows["strsize.png"]["width"], rows["strsize.png"]["height"]) == (1024, 1024)
    kinds = {(kind, m) for _, kind, m in quirk_rows(root)}
    assert ("invalid_json", "bad.json") in kinds
    assert ("invalid_json", "latin.json") in kinds
    assert ("invalid_json", "list.json") in kinds
    assert ("bad_image", "zero.png") in kinds
    assert ("duplicate_member", "dup.json") in kinds
    assert ("second_image", "two.png") in kinds
    assert ("unexpected_member", "notes.txt") in kinds
    aside = _tree(root / "incomplete" / "data-000000")
    for name in (
        "bad.json",
        "bad.png",
        "latin.json",
        "list.png",
        "zero.png",
        "two.png",
        "notes.txt",
        "duplicate-members/0/dup.json",
    ):
        assert name in aside, name
    assert "invalid_json" in proc.stdout and "bad.json" in proc.stdout
    for image in images_in(root / "data"):  # trainer-safe
        assert image.with_suffix(".json").exists() and image.with_suffix(".txt").exists()


def _two_owners(root: Path, shards: list[str]) -> None:
    content = {
        "data-000000": [
            M("x.json", sample_json("x", short_caption="from 0")),
            M("x.png", png(1)),
            M("a.json", sample_json("a")),
            M("a.png", png(2)),
        ],
        "data-000001": [
            M("x.json", sample_json("x", short_caption="from 1")),
            M("x.png", png(3)),
            M("b.json", sample_json("b")),
            M("b.png", png(4)),
        ],
    }
    write_dataset(root, {name: content[name] for name in shards})


def test_the_same_path_in_two_shards_does_not_depend_on_build_order(tmp_path: Path):
    together, later = tmp_path / "together", tmp_path / "later"
    _two_owners(together, ["data-000000", "data-000001"])
    run_doit(together)
    _two_owners(later, ["data-000001"])
    run_doit(later)
    _two_owners(later, ["data-000000", "data-000001"])
    run_doit(later)
    assert _tree(together / "data") == _tree(later / "data")
    assert _tree(together / "incomplete") == _tree(later / "incomplete")
    assert table_rows(together) == table_rows(later)
    rows = {r["filename"]: r["caption"] for r in table_rows(later)}
    assert rows == {"a.png": "short a", "b.png": "short b", "x.png": "from 0"}
    assert sorted(_tree(later / "incomplete")) == ["data-000001/x.json", "data-000001/x.png"]
    named = [q for q in quirk_rows(later) if q[1] == "duplicate_across_shards"]
    assert named and all("x." in q[2] for q in named)


def _mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
            check=True,
            capture_output=True,
        )
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        pytest.skip(f"cannot mount a small tmpfs here ({exc})")


def test_disk_full_midway_names_the_folder_and_the_next_run_completes(tmp_path: Path):
    small = tmp_path / "small"
    _mount_tmpfs(small, "3m")
    try:
        root = small / "ds"
        make_dataset(root, shards=4, samples_per_shard=150, quirks=False)
        write_config(root)
        used = sum(p.stat().st_size for p in (root / SHARDS).iterdir())
        assert used < 2_500_000
        proc = run_doit(root, check=False)
        assert proc.returncode != 0
        assert f"no space left on the device of {root}" in proc.stdout + proc.stderr
        subprocess.run(["mount", "-o", "remount,size=64m", str(small)], check=True)
        run_doit(root)
        clean = tmp_path / "clean"
        make_dataset(clean, shards=4, samples_per_shard=150, quirks=False)
        write_config(clean)
        run_doit(clean)
        assert _tree(root / "data") == _tree(clean / "data")
        assert table_rows(root) == table_rows(clean)
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_a_damaged_manifest_has_a_documented_way_back(built: Path):
    rows = table_rows(built)
    media = {k: v for k, v in snapshot(built, "data").items()}
    (built / "state/manifest.sqlite").write_bytes(b"this is not sqlite" * 100)
    for suffix in ("-wal", "-shm"):
        (built / f"state/manifest.sqlite{suffix}").unlink(missing_ok=True)
    proc = run_doit(built, check=False)
    assert proc.returncode != 0
    assert "doit reset_state" in proc.stdout + proc.stderr
    run_doit(built, "reset_state")
    run_doit(built)
    assert table_rows(built) == rows
    assert snapshot(built, "data") == media  # no file of data/ rewritten
    assert list((built / "state").glob("damaged-*/manifest.sqlite"))


def test_the_summary_names_a_damaged_manifest_and_the_way_back(tmp_path: Path):
    root = write_dataset(tmp_path / "ds", {})
    settings = load_settings(root / "dataset.toml", {})
    assert summarize(settings).shards == 0  # no manifest yet: nothing built, no error
    settings.state_dir.mkdir(parents=True)
    (settings.state_dir / "manifest.sqlite").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ManifestError, match="doit reset_state"):
        summarize(settings)


def test_an_edited_json_survives_a_state_reset(built: Path):
    image = images_in(built / "data")[0]
    json_path = image.with_suffix(".json")
    content = json.loads(json_path.read_text(encoding="utf-8"))
    content["short_caption"] = "edited before the reset"
    json_path.write_text(json.dumps(content), encoding="utf-8")
    run_doit(built, "reset_state")
    run_doit(built)
    assert json.loads(json_path.read_text(encoding="utf-8"))["short_caption"] == (
        "edited before the reset"
    )
    assert image.with_suffix(".txt").read_text(encoding="utf-8") == "edited before the reset"


def test_a_damaged_doit_state_file_is_moved_aside(built: Path):
    before = snapshot(built, "data")
    dep = next(p for p in (built / "state").glob("doit.db*"))
    dep.write_text("garbage(((\n")
    proc = run_doit(built)
    assert "was damaged and has been moved" in proc.stderr
    assert snapshot(built, "data") == before


def test_replacing_a_shard_file_keeps_other_shards_untouched(dataset: Path):
    run_doit(dataset)
    before = {k: v for k, v in snapshot(dataset, "data").items()}
    shutil.copy(dataset / SHARDS / "data-000000.tar", dataset / "copy.tar")
    (dataset / SHARDS / "data-000000.tar").unlink()
    shutil.copy(dataset / "copy.tar", dataset / SHARDS / "data-000000.tar")  # new mtime
    proc = run_doit(dataset)
    assert ".  extract:data-000000" not in proc.stdout or "samples" not in proc.stdout
    assert snapshot(dataset, "data") == before


def _open_when_released(root: str, barrier, results) -> None:
    barrier.wait()
    try:
        open_manifest(Path(root)).close()
        results.put("ok")
    except Exception as exc:  # reported to the test, which names it
        results.put(f"{type(exc).__name__}: {exc}")


def test_processes_opening_a_new_manifest_at_once_all_get_it(tmp_path: Path):
    """`doit -n N` on a fresh root: every worker creates or opens the manifest at the same
    moment. SQLite refused one of two racing WAL switches now and then ("database is
    locked", reported as a damaged manifest)."""
    import multiprocessing

    import sqlite_utils  # noqa: F401  imported once here, not in each forked worker

    fork = multiprocessing.get_context("fork")
    outcomes = []
    for i in range(25):
        barrier, results = fork.Barrier(3), fork.Queue()
        workers = [
            fork.Process(
                target=_open_when_released, args=(str(tmp_path / str(i)), barrier, results)
            )
            for _ in range(3)
        ]
        for w in workers:
            w.start()
        outcomes += [results.get(timeout=120) for _ in workers]
        for w in workers:
            w.join()
    assert [o for o in outcomes if o != "ok"] == []
    assert len(outcomes) == 75
