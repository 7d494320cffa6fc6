"""Odd member names and data values: each is a named quirk of its own shard, never a crash."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import sqlite3
import subprocess
import tarfile
from pathlib import Path

import pytest
from conftest import images_in, run_doit, table_rows
from tarbuild import SHARDS, M, png, quirk_rows, sample_json, write_dataset, write_tar

from sample.generate import write_config
from tasks.settings import load_settings, shard_name


def _good(key: str, seed: int) -> list[M]:
    return [M(f"{key}.json", sample_json(key)), M(f"{key}.png", png(seed))]


def _no_traceback(proc: subprocess.CompletedProcess) -> str:
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out
    return out


def _trainer_safe(root: Path) -> None:
    for image in images_in(root / "data"):
        if image.is_dir():
            continue
        assert image.with_suffix(".json").exists() and image.with_suffix(".txt").exists()


def _build_and_audit(root: Path) -> str:
    """Build (exit 0), then audit (exit 0); return the build's output."""
    proc = run_doit(root, check=False)
    out = _no_traceback(proc)
    assert proc.returncode == 0, out
    audit = run_doit(root, "audit", check=False)
    _no_traceback(audit)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    _trainer_safe(root)
    again = run_doit(root, check=False)  # a rerun neither fails nor redoes the shards
    assert again.returncode == 0 and "samples," not in _no_traceback(again), again.stdout
    return out


def _around(odd: list[M]) -> dict[str, list[M]]:
    """Good shards before and after a shard holding good samples and the odd members."""
    return {
        "data-000000": _good("a", 1),
        "data-000001": _good("b", 2) + odd + _good("c", 3),
        "data-000002": _good("d", 4),
    }


LONG = "n" * 300
ODD_NAMES = {
    "long_path": [M("/".join(["d" * 200] * 25) + ".png", png(9))],
    "long_component": [M(f"{LONG}.json", sample_json(LONG)), M(f"{LONG}.png", png(9))],
    "newline": [M("new\nline.json", sample_json("new\nline")), M("new\nline.png", png(9))],
    "control": [M("bell\x07.png", png(9))],
    "escaping": [M("../up.png", png(9)), M("/abs.json", b"{}"), M("back\\slash.png", png(9))],
    "line_separator": [M("sep\u2028.json", sample_json("sep")), M("sep\u2028.png", png(9))],
    "folder_named_like_a_caption": [M("a.txt/y.json", sample_json("y")), M("a.txt/y.png", png(9))],
    "trainer_file": [
        M("aspect_ratio_bucket_indices_dalle3.json", sample_json("t")),
        M("aspect_ratio_bucket_indices_dalle3.png", png(9)),
    ],
    "file_then_folder": [
        M("x.png", png(8)),
        M("x.json", sample_json("x")),
        M("x.png/y.png", png(9)),
    ],
    "folder_then_file": [
        M("x.png/y.png", png(9)),
        M("x.png/y.json", sample_json("y")),
        M("x.png", png(8)),
    ],
}


@pytest.mark.parametrize("case", sorted(ODD_NAMES))
def test_an_odd_member_name_is_refused_and_the_rest_builds(tmp_path: Path, case: str):
    root = write_dataset(tmp_path / "ds", _around(ODD_NAMES[case]))
    out = _build_and_audit(root)
    names = {r["filename"] for r in table_rows(root)}
    assert {"a.png", "b.png", "c.png", "d.png"} <= names
    quirks = [q for q in quirk_rows(root) if q[1] == "refused"]
    assert quirks, quirk_rows(root)
    assert "\n" not in "".join(q[2] for q in quirks)  # stored and printed escaped
    assert "refused" in out
    for line in out.splitlines():
        assert "line.json" not in line or "new\\nline" in line


def test_a_name_that_is_not_utf8_is_refused_named_escaped(tmp_path: Path):
    root = tmp_path / "ds"
    write_dataset(root, _around([]))
    raw = root / SHARDS / "data-000001.tar"
    with tarfile.open(raw, "w", format=tarfile.GNU_FORMAT, encoding="latin-1") as tar:
        for m in _good("b", 2) + [M("caf\xe9.png", png(9))] + _good("c", 3):
            info = tarfile.TarInfo(m.name)
            info.size = len(m.data)
            tar.addfile(info, io.BytesIO(m.data))
    out = _build_and_audit(root)
    assert {r["filename"] for r in table_rows(root)} == {"a.png", "b.png", "c.png", "d.png"}
    assert "caf\\xe9.png" in out
    assert ("data-000001", "refused", "caf\\xe9.png") in quirk_rows(root)
    assert (root / "data/c.txt").exists() and (root / "data/d.txt").exists()


def test_a_file_and_folder_of_one_name_across_shards(tmp_path: Path):
    shards = {
        "data-000000": _good("a", 1) + [M("x.png", png(8)), M("x.json", sample_json("x"))],
        "data-000001": [M("x.png/y.png", png(9)), M("x.png/y.json", sample_json("y"))]
        + _good("c", 3),
    }
    root = write_dataset(tmp_path / "ds", shards)
    out = _build_and_audit(root)
    assert {r["filename"] for r in table_rows(root)} == {"a.png", "c.png", "x.png"}
    assert any(q[1] == "path_conflict" for q in quirk_rows(root)), out
    assert "path_conflict" in out


def test_a_folder_then_a_file_of_one_name_across_shards(tmp_path: Path):
    shards = {
        "data-000000": _good("a", 1)
        + [M("x.png/y.png", png(9)), M("x.png/y.json", sample_json("y"))],
        "data-000001": [M("x.png", png(8)), M("x.json", sample_json("x"))] + _good("c", 3),
    }
    root = write_dataset(tmp_path / "ds", shards)
    out = _build_and_audit(root)
    assert {r["filename"] for r in table_rows(root)} == {"a.png", "c.png", "x.png/y.png"}
    assert any(q[1] == "path_conflict" for q in quirk_rows(root)), out
    assert not (root / "data/x.json").exists()


BAD_SIZES = [10**30, -5, 0, True, 1e300, "1e400", "NaN", [1], {"w": 1}, "9" * 5000]


@pytest.mark.parametrize("value", BAD_SIZES, ids=[str(v)[:12] for v in BAD_SIZES])
def test_a_size_that_cannot_be_a_size_is_taken_from_the_header(tmp_path: Path, value):
    text = json.dumps(json.loads(sample_json("b"))).replace(
        '"width": 16', f'"width": {json.dumps(value)}'
    )
    if value in ("1e400", "NaN"):
        text = text.replace(f'"{value}"', value)  # raw JSON number tokens
    odd = [M("odd.json", text.encode()), M("odd.png", png(9))]
    root = write_dataset(tmp_path / "ds", _around(odd))
    _build_and_audit(root)
    rows = {r["filename"]: r for r in table_rows(root)}
    assert (rows["odd.png"]["width"], rows["odd.png"]["height"]) == (16, 12)
    assert len(rows) == 5


ODD_VALUES = {
    "huge_int_caption": b'{"image_name": "odd.png", "short_caption": ' + b"9" * 5000 + b"}",
    "deep_nesting": b'{"image_name": "odd.png", "long_caption": '
    + b"[" * 100000
    + b"]" * 100000
    + b"}",
    "image_name_number": b'{"image_name": 5, "short_caption": "s", "width": 16, "height": 12}',
    "image_name_list": b'{"image_name": ["odd.png"], "short_caption": "s"}',
    "caption_dict": b'{"image_name": "odd.png", "short_caption": {"a": 1}}',
    "image_name_other": b'{"image_name": "a.png", "short_caption": "s"}',
    "surrogate": b'{"image_name": "\\ud800.png", "short_caption": "\\udc80"}',
}


@pytest.mark.parametrize("case", sorted(ODD_VALUES))
def test_an_odd_json_value_never_stops_the_build(tmp_path: Path, case: str):
    odd = [M("odd.json", ODD_VALUES[case]), M("odd.png", png(9))]
    root = write_dataset(tmp_path / "ds", _around(odd))
    _build_and_audit(root)
    names = {r["filename"] for r in table_rows(root)}
    assert {"a.png", "b.png", "c.png", "d.png"} <= names


def test_empty_members_percent_and_our_own_file_names(tmp_path: Path):
    odd = [
        M("empty.json", b""),
        M("empty.png", b""),
        M("100%.json", sample_json("100%")),
        M("100%.png", png(7)),
        M("b.txt", b"a member named like our caption file"),
        M("B.png", png(6)),
        M("B.json", sample_json("B")),
    ]
    root = write_dataset(tmp_path / "ds", _around(odd))
    _build_and_audit(root)
    names = {r["filename"] for r in table_rows(root)}
    assert {"a.png", "b.png", "c.png", "d.png", "100%.png", "B.png"} <= names
    assert (root / "data/b.txt").read_text() == "short b"  # our caption, not the member
    kinds = {(k, m) for _, k, m in quirk_rows(root)}
    assert ("unexpected_member", "b.txt") in kinds
    assert ("case_collision", "B.png") in kinds


def test_a_sparse_member_is_refused_named(tmp_path: Path):
    root = write_dataset(tmp_path / "ds", _around([]))
    work = tmp_path / "src"
    work.mkdir()
    for key, seed in (("b", 2), ("c", 3)):
        (work / f"{key}.json").write_bytes(sample_json(key))
        (work / f"{key}.png").write_bytes(png(seed))
    with open(work / "sparse.png", "wb") as f:
        f.write(png(9))
        f.seek(1 << 20)
        f.write(b"end")
    tar = root / SHARDS / "data-000001.tar"
    for fmt in ("posix", "gnu"):
        subprocess.run(
            ["tar", "--sparse", f"--format={fmt}", "-cf", str(tar), "-C", str(work), "."],
            check=True,
        )
        out = _build_and_audit(root)
        assert {"a.png", "b.png", "c.png", "d.png"} <= {r["filename"] for r in table_rows(root)}
        assert not list((root / "data").glob("**/GNUSparseFile*")), fmt
        assert ("data-000001", "refused") in {(s, k) for s, k, _ in quirk_rows(root)}
        assert "sparse.png" in out


def test_a_gzip_compressed_shard_is_named_as_such(tmp_path: Path):
    root = write_dataset(tmp_path / "ds", _around([]))
    tar = root / SHARDS / "data-000001.tar"
    tar.write_bytes(gzip.compress(tar.read_bytes()))
    proc = run_doit(root, check=False)
    out = _no_traceback(proc)
    assert proc.returncode != 0
    assert "gzip" in out and "gunzip" in out
    assert "download is probably incomplete" not in out
    assert "2 shard(s)" in out
    assert "rows from 3 shard(s)" not in out
    assert {r["filename"] for r in table_rows(root)} == {"a.png", "d.png"}
    _no_traceback(run_doit(root, "audit", check=False))


def test_shards_of_one_name_in_two_folders_are_both_built(tmp_path: Path):
    root = tmp_path / "ds"
    write_tar(root / "hub/a/x.tar", _good("a", 1))
    write_tar(root / "hub/b/x.tar", _good("b", 2))
    write_config(root, shards="hub/**/*.tar")
    _build_and_audit(root)
    assert {r["filename"] for r in table_rows(root)} == {"a.png", "b.png"}
    settings = load_settings(root / "dataset.toml")
    assert {shard_name(p, settings) for p in settings.shard_paths()} == {"a__x", "b__x"}


def test_flat_shard_names_stay_as_they_were(tmp_path: Path):
    root = write_dataset(tmp_path / "ds", {"data-000000": _good("a", 1)})
    settings = load_settings(root / "dataset.toml")
    assert [shard_name(p, settings) for p in settings.shard_paths()] == ["data-000000"]


def test_an_edited_json_the_changed_shard_no_longer_holds_is_kept_and_named(tmp_path: Path):
    root = write_dataset(tmp_path / "ds", {"data-000000": _good("a", 1) + _good("b", 2)})
    run_doit(root)
    edited = root / "data/b.json"
    edited.write_text(json.dumps({"image_name": "b.png", "short_caption": "mine"}))
    write_tar(root / SHARDS / "data-000000.tar", _good("a", 1) + _good("c", 3))
    out = _build_and_audit(root)
    kept = list((root / "edited").rglob("b.json"))
    assert len(kept) == 1 and "mine" in kept[0].read_text()
    assert "edited" in out and "b.json" in out
    assert not edited.exists()
    write_tar(root / SHARDS / "data-000000.tar", _good("a", 1))  # changed again
    _build_and_audit(root)
    assert kept[0].exists() and "mine" in kept[0].read_text()  # never deleted by the build


def test_folders_emptied_by_members_kept_aside_are_removed(tmp_path: Path):
    odd = [M("sub/deep/only.json", sample_json("only")), M("sub2/bad.png", b"not an image")]
    odd += [M("sub2/bad.json", sample_json("bad"))]
    root = write_dataset(tmp_path / "ds", _around(odd))
    _build_and_audit(root)
    assert (root / "incomplete/data-000001/sub/deep/only.json").exists()
    assert sorted(p.name for p in (root / "data").iterdir() if p.is_dir()) == []


def test_files_with_odd_names_put_into_data_are_strays_the_audit_names(tmp_path: Path):
    root = write_dataset(tmp_path / "ds", {"data-000000": _good("a", 1)})
    run_doit(root)
    (root / "data").joinpath("new\nline.png").write_bytes(png(2))
    with open(bytes(root / "data") + b"/caf\xe9.png", "wb") as f:
        f.write(png(3))
    audit = run_doit(root, "audit", check=False)
    out = _no_traceback(audit)
    assert audit.returncode != 0 and "caf\\xe9.png" in out and "new\\nline.png" in out
    json.loads((root / "state/audit.json").read_text(encoding="utf-8"))
    repair = run_doit(root, "repair", check=False)
    assert "caf\\xe9.png" in _no_traceback(repair)
    assert run_doit(root, "audit", check=False).returncode == 0


def test_a_shard_cut_short_after_a_written_batch_leaves_data_trainer_safe(tmp_path: Path):
    many = [m for k in range(300) for m in _good(f"k{k}", k + 10)]  # more than one batch
    root = write_dataset(tmp_path / "ds", {"data-000000": _good("a", 1), "data-000001": many})
    tar = root / SHARDS / "data-000001.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size * 9 // 10])
    proc = run_doit(root, check=False)
    assert proc.returncode != 0 and "data-000001.tar: cannot be read to its end" in proc.stdout
    assert sorted(p.name for p in (root / "data").iterdir()) == ["a.json", "a.png", "a.txt"]
    audit = run_doit(root, "audit", check=False)
    assert audit.returncode == 0, audit.stdout
    assert "shard_failed" in audit.stdout


def test_a_json_broken_by_hand_stops_nothing_else(tmp_path: Path):
    root = write_dataset(tmp_path / "ds", {"data-000000": _good("a", 1)})
    run_doit(root)
    (root / "data/a.json").write_text('{"broken')
    write_tar(root / SHARDS / "data-000001.tar", _good("b", 2))
    proc = run_doit(root, check=False)
    out = _no_traceback(proc)
    assert proc.returncode == 0, out
    assert "a.json: invalid JSON" in out and "warning" in out
    assert {r["filename"] for r in table_rows(root)} == {"a.png", "b.png"}
    assert (root / "data/b.txt").read_text() == "short b"
    _trainer_safe(root)
    _no_traceback(run_doit(root, "audit", check=False))


def test_shards_built_under_their_old_names_are_adopted_not_rebuilt(tmp_path: Path):
    root = tmp_path / "ds"
    write_tar(root / "hub/data/x.tar", _good("a", 1))
    write_config(root, shards="hub/**/*.tar")
    run_doit(root)
    conn = sqlite3.connect(root / "state/manifest.sqlite")  # as the flat-name rule left it
    with conn:
        conn.execute("UPDATE shards SET name = 'x'")
        conn.execute("UPDATE files SET shard = 'x' WHERE shard IS NOT NULL")
    conn.close()
    shutil.move(root / "state/parts/shard=data__x", root / "state/parts/shard=x")
    out = _build_and_audit(root)
    assert "same bytes as an extracted shard" in out
    assert not list(root.glob("incomplete/**/*.png"))
    assert {r["filename"] for r in table_rows(root)} == {"a.png"}


def test_tars_that_cannot_be_shards_are_named_and_the_rest_builds(tmp_path: Path):
    root = tmp_path / "ds"
    write_tar(root / "hub/a__x.tar", _good("a", 1))
    write_tar(root / "hub/a/x.tar", _good("b", 2))
    write_tar(root / "hub/c/y.tar", _good("c", 3))
    odd = write_tar(root / "hub/d.tar", _good("d", 4))
    os.rename(bytes(odd), bytes(root / "hub") + b"/caf\xe9.tar")
    write_config(root, shards="hub/**/*.tar")
    proc = run_doit(root, check=False)
    out = _no_traceback(proc)
    assert proc.returncode != 0
    assert "hub/a/x.tar and" in out and "a__x.tar both map to shard name 'a__x'" in out
    assert "caf\\xe9.tar: its file name is not valid UTF-8" in out
    assert {r["filename"] for r in table_rows(root)} == {"c.png"}
    _no_traceback(run_doit(root, "audit", check=False))


def test_a_member_kept_aside_where_an_earlier_build_kept_a_folder_aside(tmp_path: Path):
    root = write_dataset(
        tmp_path / "ds", {"data-000000": _good("a", 1) + [M("x.png/y.png", png(9))]}
    )
    run_doit(root)
    assert (root / "incomplete/data-000000/x.png/y.png").exists()
    write_tar(root / SHARDS / "data-000000.tar", _good("a", 1) + [M("x.png", png(8))])
    out = _build_and_audit(root)
    assert "path_conflict" in out
    kept = list((root / "incomplete/data-000000/unplaced").iterdir())
    assert [p.read_bytes() for p in kept] == [png(8)] and kept[0].suffix == ".png"


def test_a_changed_shard_whose_folder_became_a_file_builds_it(tmp_path: Path):
    before = [M("x.png/y.png", png(9)), M("x.png/y.json", sample_json("y"))]
    root = write_dataset(tmp_path / "ds", {"data-000000": _good("a", 1) + before})
    run_doit(root)
    after = [M("x.png", png(8)), M("x.json", sample_json("x"))]
    write_tar(root / SHARDS / "data-000000.tar", _good("a", 1) + after)
    _build_and_audit(root)
    assert {r["filename"] for r in table_rows(root)} == {"a.png", "x.png"}
    assert (root / "data/x.png").read_bytes() == png(8)


def test_any_other_failure_inside_a_shard_fails_that_shard_alone(tmp_path: Path):
    odd = [M("lonely.png", png(9))]  # kept aside: needs incomplete/, which is a file here
    root = write_dataset(tmp_path / "ds", _around(odd))
    (root / "incomplete").write_text("in the way")
    proc = run_doit(root, check=False)
    out = _no_traceback(proc)
    assert proc.returncode != 0
    assert "data-000001.tar: could not be extracted (" in out
    assert {r["filename"] for r in table_rows(root)} == {"a.png", "d.png"}
    _trainer_safe(root)
    _no_traceback(run_doit(root, "audit", check=False))
    (root / "incomplete").unlink()
    _build_and_audit(root)
    assert {r["filename"] for r in table_rows(root)} == {"a.png", "b.png", "c.png", "d.png"}


def test_a_shard_that_fails_after_a_good_build_is_counted_as_still_built(tmp_path: Path):
    root = write_dataset(tmp_path / "ds", _around([]))
    run_doit(root)
    tar = root / SHARDS / "data-000001.tar"
    tar.write_bytes(gzip.compress(tar.read_bytes()))
    proc = run_doit(root, check=False)
    out = _no_traceback(proc)
    assert proc.returncode != 0 and "is gzip-compressed" in out
    assert "shardprep: 3 shard(s), 4 sample(s)" in out
    assert "shard data-000001 as extracted earlier stays in the build" in out
    assert len(table_rows(root)) == 4
    _trainer_safe(root)
