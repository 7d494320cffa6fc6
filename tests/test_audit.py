"""`doit audit [--deep]` and `doit repair` on real built folders (issue 5)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xxhash
from conftest import run_doit, table_rows
from hypothesis import given
from hypothesis import strategies as st
from tarbuild import M, png, write_tar

from sample.generate import make_dataset, write_config
from tasks.audit.pairing import Fingerprint
from tasks.audit.report import write_report
from tasks.audit.run import audit
from tasks.settings import load_settings

DOIT_DB = ("state/doit.db",)  # doit's own dependency file: doit rewrites it after any task


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """One built dataset (3 shards x 12 samples, every quirk), copied by `ds` per test."""
    root = tmp_path_factory.mktemp("template") / "ds"
    make_dataset(root, shards=3, samples_per_shard=12)
    write_config(root)
    run_doit(root)
    return root


@pytest.fixture
def ds(template: Path, tmp_path: Path) -> Path:
    """A private copy of the built template (copy2 keeps mtime_ns, so the manifest holds)."""
    root = tmp_path / "ds"
    shutil.copytree(template, root)
    return root


def _files(root: Path, skip: tuple[str, ...] = ()) -> dict[str, tuple[int, int]]:
    """relative path -> (inode, mtime_ns) of every file under root, but `skip` prefixes."""
    out = {}
    for p in root.rglob("*"):
        rel = str(p.relative_to(root))
        if p.is_file() and not rel.startswith(skip):
            st = p.stat()
            out[rel] = (st.st_ino, st.st_mtime_ns)
    return out


def _audit(root: Path, *args: str) -> tuple[int, dict, str]:
    proc = run_doit(root, "audit", *args, check=False)
    report = json.loads((root / "state" / "audit.json").read_text(encoding="utf-8"))
    return proc.returncode, report, proc.stdout + proc.stderr


def _kinds(report: dict, severity: str | None = None) -> Counter:
    return Counter(
        f["kind"] for f in report["findings"] if severity is None or f["severity"] == severity
    )


def _paths(report: dict, kind: str) -> set[str]:
    return {f["path"] for f in report["findings"] if f["kind"] == kind}


def _manifest(root: Path, sql: str, args=()) -> list[tuple]:
    conn = sqlite3.connect(root / "state" / "manifest.sqlite")
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def _silently_corrupt(path: Path) -> None:
    """Flip one byte and put size and mtime back as they were."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_clean_build_passes_and_the_audit_changes_nothing_but_its_report(ds: Path):
    for name in ("indices", "metadata"):  # SimpleTuner's own files: never strays
        (ds / f"data/aspect_ratio_bucket_{name}_dalle3.json").write_text("{}")
    manifest = ds / "state" / "manifest.sqlite"
    manifest_bytes = manifest.read_bytes()
    before = _files(ds, ("state/audit.json", *DOIT_DB))

    rc, report, out = _audit(ds)
    assert rc == 0, out
    assert {"generated_at", "deep", "ok", "counts", "findings"} <= set(report)
    assert report["ok"] is True and report["deep"] is False
    assert not _kinds(report, "damage")
    for f in report["findings"]:
        assert set(f) == {"kind", "severity", "path", "shard", "detail"}
    counts = report["counts"]
    assert counts["json_without_image"] == counts["image_without_json"] == 3
    assert counts["size_from_header"] == 3  # the no_size quirk
    assert counts["caption_newlines"] == 3 and counts["empty_caption"] == 3
    assert counts["too_small"] == 30  # generated images are tiny; preset: 0.75 MP, area
    assert "stray" not in counts and "image_name_mismatch" not in counts
    assert "set join_caption_lines = true" in out
    assert "would skip 30 image(s) as too small" in out
    assert _files(ds, ("state/audit.json", *DOIT_DB)) == before
    assert manifest.read_bytes() == manifest_bytes

    rc, report, out = _audit(ds, "--deep")
    assert rc == 0, out
    assert report["deep"] is True and report["ok"] is True
    assert report["stats"]["checksums_checked"] == 30  # md5_file_hash and sha512_hash hold
    assert report["stats"]["bytes_read"] > 0 and "MB/s" in out
    assert _files(ds, ("state/audit.json", *DOIT_DB)) == before
    assert manifest.read_bytes() == manifest_bytes

    # the plain function, outside doit: nothing at all changes but the report
    before = _files(ds, ("state/audit.json",))
    settings = load_settings(ds / "dataset.toml")
    write_report(settings, audit(settings, deep=True))
    assert _files(ds, ("state/audit.json",)) == before
    assert manifest.read_bytes() == manifest_bytes


def test_damage_is_found_repaired_byte_identical_and_edits_are_kept(ds: Path):
    names = [r["filename"] for r in table_rows(ds)]
    img_missing, img_loud, img_silent, cap_of, json_of, edited_of = (
        ds / "data" / n for n in names[:6]
    )
    caption, json_gone, json_edited = (
        cap_of.with_suffix(".txt"),
        json_of.with_suffix(".json"),
        edited_of.with_suffix(".json"),
    )
    aside = next((ds / "incomplete").rglob("*.json"))
    originals = {
        p: p.read_bytes() for p in (img_missing, img_loud, img_silent, caption, json_gone, aside)
    }
    img_missing.unlink()
    caption.unlink()
    json_gone.unlink()
    aside.unlink()
    img_loud.write_bytes(originals[img_loud] + b"junk")
    _silently_corrupt(img_silent)
    (ds / "data" / "stray.png").write_bytes(b"\x89PNG\r\n\x1a\nnot from the build")
    obj = json.loads(json_edited.read_text(encoding="utf-8"))
    obj["short_caption"] = "edited by hand"
    json_edited.write_text(json.dumps(obj), encoding="utf-8")
    edited_bytes = json_edited.read_bytes()
    rel = lambda p: str(p.relative_to(ds))  # noqa: E731

    rc, report, out = _audit(ds)
    assert rc == 1, out
    assert _paths(report, "missing_image") == {rel(img_missing)}
    assert _paths(report, "missing_caption") == {rel(caption)}
    assert _paths(report, "missing_json") == {rel(json_gone)}
    assert _paths(report, "missing_aside") == {rel(aside)}
    assert _paths(report, "corrupt_image") == {rel(img_loud)}  # the silent one needs --deep
    assert _paths(report, "stray") == {"data/stray.png"}
    edited = [f for f in report["findings"] if f["kind"] == "edited_json"]
    assert [f["path"] for f in edited] == [rel(json_edited)]
    assert edited[0]["severity"] == "note" and "picked up by the next doit" in edited[0]["detail"]
    assert rel(img_missing) in out and "data/stray.png" in out

    rc, report, out = _audit(ds, "--deep")
    assert rc == 1
    assert _paths(report, "corrupt_image") == {rel(img_loud), rel(img_silent)}

    proc = run_doit(ds, "repair", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rc, report, out = _audit(ds, "--deep")
    assert rc == 0, out
    for path, data in originals.items():
        assert path.read_bytes() == data, path
    assert json_edited.read_bytes() == edited_bytes  # never "repaired" away
    assert _paths(report, "edited_json") == {rel(json_edited)}
    assert not (ds / "data" / "stray.png").exists()
    moved = ds / "strays" / "stray.png"
    assert moved.read_bytes().endswith(b"not from the build")

    run_doit(ds)  # the edit is taken up by the build, not by repair
    rc, report, _ = _audit(ds)
    assert rc == 0 and "edited_json" not in report["counts"]
    assert next(r for r in table_rows(ds) if r["filename"] == names[5])["caption"] == (
        "edited by hand"
    )


def test_partition_and_table_damage_is_rebuilt(ds: Path):
    rows = table_rows(ds)
    part = ds / "state" / "parts" / "shard=data-000001" / "part.parquet"
    part.unlink()
    table = pq.read_table(ds / "dalle3.parquet")
    pq.write_table(table.slice(1), ds / "dalle3.parquet")  # one row fewer
    first = "data/" + table.column("filename")[0].as_py()
    touched = ds / "data" / table.column("filename")[5].as_py()
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))

    rc, report, out = _audit(ds)
    assert rc == 1, out
    assert _paths(report, "touched") == {str(touched.relative_to(ds))}  # same bytes: a note
    assert _paths(report, "missing_partition") == {str(part.relative_to(ds))}
    assert _paths(report, "corrupt_table") == {"dalle3.parquet"}
    assert _paths(report, "image_without_row") == {first}

    assert run_doit(ds, "repair", check=False).returncode == 0
    rc, report, out = _audit(ds, "--deep")
    assert rc == 0, out
    assert part.exists()
    assert table_rows(ds) == rows
    assert "touched" not in report["counts"]  # repair recorded the new mtime


def test_moved_strays_and_a_shard_named_strays_never_overwrite_each_other(ds: Path):
    (ds / "data" / "lone.png").write_bytes(png(7) + b"the user's stray")
    assert run_doit(ds, "repair", check=False).returncode == 0
    # a shard named `strays` keeps an image without JSON aside under incomplete/strays/
    write_tar(ds / "hub/data/strays.tar", [M("lone.png", png(8))])
    run_doit(ds)
    assert (ds / "strays" / "lone.png").read_bytes() == png(7) + b"the user's stray"
    assert (ds / "incomplete" / "strays" / "lone.png").read_bytes() == png(8)
    rc, _, out = _audit(ds)
    assert rc == 0, out


def test_a_gone_tar_is_a_note_and_repair_says_plainly_what_it_cannot_restore(ds: Path):
    tar = ds / "hub" / "data" / "data-000002.tar"
    tar.unlink()
    rc, report, out = _audit(ds)
    assert rc == 0, out
    assert _paths(report, "tar_gone") == {"hub/data/data-000002.tar"}

    (image,) = _manifest(
        ds,
        "SELECT path FROM files WHERE shard = 'data-000002' AND kind = 'image' "
        "ORDER BY path LIMIT 1",
    )[0:1]
    (ds / image[0]).unlink()
    rc, report, _ = _audit(ds)
    assert rc == 1
    proc = run_doit(ds, "repair", check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert f"cannot restore {image[0]}" in out and "hub/data/data-000002.tar is gone" in out


def test_expected_samples_mismatch_is_a_note(ds: Path):
    rc, report, out = _audit(ds, "expected_samples=31")
    assert rc == 0, out
    (finding,) = [f for f in report["findings"] if f["kind"] == "expected_samples"]
    assert finding["severity"] == "note" and "30" in finding["detail"]
    rc, report, _ = _audit(ds, "expected_samples=30")
    assert rc == 0 and "expected_samples" not in report["counts"]


def test_deep_checks_images_against_the_datasets_own_md5_and_sha512(ds: Path):
    names = [r["filename"] for r in table_rows(ds)]
    # an edited JSON with a wrong md5_file_hash: the user's edit, a note (also once built)
    wrong = (ds / "data" / names[0]).with_suffix(".json")
    obj = json.loads(wrong.read_text(encoding="utf-8"))
    obj["md5_file_hash"] = "0" * 32
    wrong.write_text(json.dumps(obj), encoding="utf-8")
    # an image replaced together with its manifest row: only the dataset's hashes tell
    image = ds / "data" / names[1]
    original = image.read_bytes()
    _silently_corrupt(image)
    data, st = image.read_bytes(), image.stat()
    conn = sqlite3.connect(ds / "state" / "manifest.sqlite")
    with conn:
        conn.execute(
            "UPDATE files SET size = ?, mtime_ns = ?, xxh3 = ? WHERE path = ?",
            (st.st_size, st.st_mtime_ns, xxhash.xxh3_128_hexdigest(data), f"data/{names[1]}"),
        )
    conn.close()

    assert _audit(ds)[0] == 0  # invisible to the stat-level audit
    rc, report, out = _audit(ds, "--deep")
    assert rc == 1, out
    assert _paths(report, "checksum_mismatch") == {f"data/{names[1]}"}
    assert _paths(report, "edited_checksum") == {str(wrong.relative_to(ds))}
    for f in report["findings"]:
        if f["path"] == str(wrong.relative_to(ds)):
            assert f["severity"] == "note", f

    assert run_doit(ds, "repair", check=False).returncode == 0
    assert image.read_bytes() == original
    run_doit(ds)  # the JSON edit is taken up; the wrong md5 is still the user's note
    rc, report, out = _audit(ds, "--deep")
    assert rc == 0, out
    assert _paths(report, "edited_checksum") == {str(wrong.relative_to(ds))}


def test_captions_are_needed_under_textfile_only(ds: Path):
    write_config(ds, caption_strategy="parquet")
    run_doit(ds)  # the build removes the caption files it wrote
    assert not list((ds / "data").glob("*.txt"))
    rc, report, out = _audit(ds)
    assert rc == 0, out
    assert "image_without_caption" not in report["counts"]
    assert "caption_newlines" not in report["counts"]  # one caption per row under parquet

    rc, report, _ = _audit(ds, "caption_strategy=textfile")
    assert rc == 1
    assert report["counts"]["image_without_caption"] == 30
    proc = run_doit(ds, "repair", "caption_strategy=textfile", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(list((ds / "data").glob("*.txt"))) == 30
    assert _audit(ds, "caption_strategy=textfile")[0] == 0


def test_names_are_found_when_counts_or_fingerprints_differ(ds: Path):
    """A healthy build passes on counts and fingerprints alone; damage that upsets them is
    named by lookups: a table row too many, an image turned into a folder holding a file."""
    table = pq.read_table(ds / "dalle3.parquet")
    names = table.column("filename").to_pylist()
    extra = table.slice(0, 1)
    col = extra.schema.get_field_index("filename")
    extra = extra.set_column(col, "filename", pa.array(["ghost.png"]))
    pq.write_table(pa.concat_tables([table, extra]), ds / "dalle3.parquet")
    folder = ds / "data" / names[2]
    folder.unlink()
    folder.mkdir()
    (folder / "inner.png").write_bytes(b"\x89PNG\r\n\x1a\nnot from the build")

    for args in ((), ("--deep",)):
        rc, report, out = _audit(ds, *args)
        assert rc == 1, out
        assert _paths(report, "missing_image") == {f"data/{names[2]}"}
        assert _paths(report, "stray") == {f"data/{names[2]}/inner.png"}
        assert _paths(report, "row_without_image") == {"data/ghost.png"}
        assert "image_without_row" not in report["counts"]
        assert "image_without_caption" not in report["counts"]


@given(st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=30), st.randoms())
def test_fingerprints_ignore_order_and_see_any_one_change(names: list[str], rnd) -> None:
    def of(items):
        fp = Fingerprint()
        for item in items:
            fp.add(item)
        return fp

    shuffled = list(names)
    rnd.shuffle(shuffled)
    assert of(names) == of(shuffled)
    assert of(names) != of(names[1:])
    assert of(names) != of([*names[1:], names[0] + "x"])


def test_a_killed_runs_unfinished_file_is_damage_until_doit_finishes(ds: Path):
    """The state `kill -9` mid-extraction leaves: a `pending` claim, a partial file and
    no shard row. The audit names it; the next doit rewrites it in full."""
    ((path, shard),) = _manifest(
        ds, "SELECT path, shard FROM files WHERE kind = 'image' ORDER BY path LIMIT 1"
    )
    image = ds / path
    original = image.read_bytes()
    conn = sqlite3.connect(ds / "state" / "manifest.sqlite")
    with conn:
        conn.execute(
            "UPDATE files SET kind = 'pending', sample = NULL, mtime_ns = NULL WHERE path = ?",
            (path,),
        )
        conn.execute("DELETE FROM shards WHERE name = ?", (shard,))
    conn.close()
    image.write_bytes(original[: len(original) // 2])

    rc, report, out = _audit(ds)
    assert rc == 1, out
    assert _paths(report, "unfinished") == {path}
    assert "run doit to finish" in out
    assert "stray" not in report["counts"]

    run_doit(ds)
    assert image.read_bytes() == original
    rc, report, out = _audit(ds, "--deep")
    assert rc == 0, out


def _damage_for_the_stat_pass(ds: Path) -> list[str]:
    """Missing, resized, touched and edited files and a removed caption; their paths."""
    names = [r["filename"] for r in table_rows(ds)]
    gone, grown, touched, edited = (ds / "data" / n for n in names[:4])
    gone.unlink()
    grown.write_bytes(grown.read_bytes() + b"junk")
    os.utime(touched, ns=(1, 1))
    json_path = edited.with_suffix(".json")
    json_path.write_text(json_path.read_text(encoding="utf-8") + " ", encoding="utf-8")
    caption = ds / "data" / Path(names[4]).with_suffix(".txt")
    caption.unlink()
    return [f"data/{p}" for p in (names[0], names[1], names[2])] + [
        str(json_path.relative_to(ds)),
        str(caption.relative_to(ds)),
    ]


@pytest.mark.parametrize("processes", [2, 3])
def test_the_stat_pass_split_across_processes_finds_what_the_serial_one_does(
    ds: Path, processes: int
):
    from state.manifest import open_readonly
    from tasks.audit.stat_pass import stat_all_rows

    damaged = _damage_for_the_stat_pass(ds)
    conn = open_readonly(ds)
    try:
        serial = stat_all_rows(conn, f"{ds}{os.sep}", True, processes=1)
        split = stat_all_rows(conn, f"{ds}{os.sep}", True, processes=processes)
    finally:
        conn.close()
    assert sorted(serial.closer) == sorted(damaged)
    assert sorted(split.closer) == sorted(serial.closer)
    assert (split.same, split.present) == (serial.same, serial.present)
    for name in ("images", "wanted_captions", "captions"):
        assert getattr(split.tallies, name) == getattr(serial.tallies, name), name


def test_an_audit_with_its_stat_pass_forked_reports_what_a_serial_one_does(ds: Path, monkeypatch):
    import tasks.audit.stat_pass

    _damage_for_the_stat_pass(ds)
    (ds / "data" / "stray.png").write_bytes(b"\x89PNG\r\n\x1a\nnot from the build")
    settings = load_settings(ds / "dataset.toml")
    serial = audit(settings)
    monkeypatch.setattr(tasks.audit.stat_pass, "PROCESSES_FROM_ROWS", 0)
    if tasks.audit.stat_pass._processes_for(1) < 2:
        pytest.skip("one CPU here: the audit never forks")
    forked = audit(settings)
    findings = lambda r: sorted(  # noqa: E731
        (f.kind, f.path or "", f.detail) for f in r.findings
    )
    assert findings(forked) == findings(serial)
    assert {"missing_image", "corrupt_image", "edited_json", "stray"} <= set(serial.counts)
    assert forked.files_checked == serial.files_checked
