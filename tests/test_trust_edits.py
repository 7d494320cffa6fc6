"""The user's hand edits, odd files in data/ and what the summary and the audit say (issues 15, 20).

Real `doit` runs (tests/conftest.py run_doit) on real tars (tests/tarbuild.py).
"""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest
from conftest import images_in, run_doit, table_rows
from tarbuild import M, png, sample_json, write_tar

from sample.generate import write_config

SHARDS = Path("hub/data")


def _shard(root: Path, name: str, members: list[M]) -> Path:
    return write_tar(root / SHARDS / f"{name}.tar", members)


def _sample(key: str, seed: int, **fields) -> list[M]:
    return [M(f"{key}.png", png(seed)), M(f"{key}.json", sample_json(key, **fields))]


def _files(folder: Path) -> dict[str, bytes]:
    if not folder.is_dir():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _audit(root: Path) -> tuple[int, dict]:
    proc = run_doit(root, "audit", check=False)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return proc.returncode, json.loads((root / "state/audit.json").read_text())


def _kinds(report: dict, path: str | None = None) -> set[str]:
    return {f["kind"] for f in report["findings"] if path is None or f["path"] == path}


def _trainer_safe(root: Path) -> None:
    rows = {r["filename"] for r in table_rows(root)}
    for image in (p for p in images_in(root / "data") if p.is_file()):
        rel = str(image.relative_to(root / "data"))
        assert image.with_suffix(".json").is_file(), rel
        assert image.with_suffix(".txt").is_file(), rel
        assert rel in rows, rel


def _set_caption(root: Path, key: str, text: str) -> None:
    path = root / "data" / f"{key}.json"
    content = json.loads(path.read_text())
    content["short_caption"] = text
    path.write_text(json.dumps(content))


# ------------------------------------------------------------------- a file/folder clash


@pytest.mark.parametrize("file_shard", ["a", "b"])
def test_a_file_folder_clash_across_shards_ends_the_same_in_either_build_order(
    tmp_path: Path, file_shard: str
):
    """Shard A holds `x.png`, shard B `x.png/y.png`: the shard that sorts first owns its
    path, whichever shard was built first (as for one filename in two shards)."""
    folder_shard = "b" if file_shard == "a" else "a"
    members = {
        file_shard: _sample("k", 1) + _sample("x", 2),
        folder_shard: _sample("m", 3) + [M("x.png/y.png", png(4)), M("x.png/y.json", b"{}")],
    }
    outcomes = []
    for first, second in (("a", "b"), ("b", "a")):
        root = tmp_path / f"{first}-first"
        _shard(root, first, members[first])
        write_config(root)
        run_doit(root)
        _shard(root, second, members[second])
        proc = run_doit(root, check=False)
        assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
        _trainer_safe(root)
        outcomes.append(
            (
                sorted(_files(root / "data")),
                [r["filename"] for r in table_rows(root)],
                sorted(_files(root / "incomplete")),
            )
        )
        code, report = _audit(root)
        assert code == 0, report["findings"]
        rerun = run_doit(root)
        assert "extract:" not in "".join(
            line for line in rerun.stdout.splitlines() if line.startswith(".  ")
        ), rerun.stdout
    assert outcomes[0] == outcomes[1]
    owner_kept = "x.png" if file_shard == "a" else "x.png/y.png"
    assert owner_kept in outcomes[0][1]


# ------------------------------------------------------------ an edited JSON, its shard changed


@pytest.mark.parametrize("picked_up_first", [False, True])
def test_an_edited_json_the_changed_tar_holds_unchanged_stays_and_is_used(
    tmp_path: Path, picked_up_first: bool
):
    root = tmp_path / "ds"
    _shard(root, "s0", _sample("b", 1))
    write_config(root)
    run_doit(root)
    _set_caption(root, "b", "EDITED b")
    if picked_up_first:
        run_doit(root)
    _shard(root, "s0", _sample("b", 1) + _sample("e", 2))
    proc = run_doit(root)
    assert json.loads((root / "data/b.json").read_text())["short_caption"] == "EDITED b"
    assert (root / "data/b.txt").read_text() == "EDITED b"
    captions = {r["filename"]: r["caption"] for r in table_rows(root)}
    assert captions == {"b.png": "EDITED b", "e.png": "short e"}
    assert "edited_json_kept" in proc.stdout and "data/b.json" in proc.stdout, proc.stdout
    assert not (root / "edited").exists()
    code, report = _audit(root)
    assert code == 0 and _kinds(report, "data/b.json") == {"edited_json_kept"}, report["findings"]
    # and once more: the tar changes again, still holding the same b
    _shard(root, "s0", _sample("b", 1) + _sample("f", 3))
    run_doit(root)
    assert (root / "data/b.txt").read_text() == "EDITED b"


def test_an_edited_json_whose_sample_changed_upstream_is_kept_in_edited_and_named(
    tmp_path: Path,
):
    root = tmp_path / "ds"
    _shard(root, "s0", _sample("b", 1))
    write_config(root)
    run_doit(root)
    _set_caption(root, "b", "EDITED b")
    run_doit(root)  # picked up
    _shard(root, "s0", _sample("b", 1, short_caption="upstream b"))
    proc = run_doit(root)
    assert (root / "data/b.txt").read_text() == "upstream b"
    kept = root / "edited/json/s0/b.json"
    assert json.loads(kept.read_text())["short_caption"] == "EDITED b"
    assert "edited/json/s0/b.json" in proc.stdout, proc.stdout
    code, report = _audit(root)
    assert code == 0 and "edited_file_aside" in _kinds(report, "edited/json/s0/b.json")
    _shard(root, "s0", _sample("b", 1, short_caption="upstream again"))
    run_doit(root)
    assert kept.is_file() and "EDITED b" in kept.read_text()  # never deleted by the build


def test_an_edited_caption_and_json_kept_aside_are_never_taken_for_a_shards_files(
    tmp_path: Path,
):
    """Shards named like the edited/ folder's parts, with members named like its files."""
    root = tmp_path / "ds"
    _shard(root, "s0", _sample("a", 1) + _sample("b", 2))
    write_config(root)
    run_doit(root)
    (root / "data/a.txt").write_text("my caption")
    _set_caption(root, "b", "my json")
    run_doit(root, "caption_field=long_caption")
    _shard(root, "s0", _sample("a", 1) + [M("json/s0/b.json", b'{"theirs": 1}')])
    for name in ("edited", "json", "captions"):
        _shard(root, name, [M("captions/a.txt", b"theirs"), M("s0/b.json", b'{"theirs": 2}')])
    proc = run_doit(root, "caption_field=long_caption", check=False)
    assert "Traceback" not in proc.stdout + proc.stderr
    assert (root / "edited/captions/a.txt").read_text() == "my caption"
    assert "my json" in (root / "edited/json/s0/b.json").read_text()


# ------------------------------------------------------------------- not a regular file


def test_repair_moves_a_fifo_aside_and_restores_the_json(tmp_path: Path):
    root = tmp_path / "ds"
    _shard(root, "s0", _sample("a", 1) + _sample("b", 2))
    write_config(root)
    run_doit(root)
    want = (root / "data/a.json").read_bytes()
    (root / "data/a.json").unlink()
    os.mkfifo(root / "data/a.json")
    code, report = _audit(root)
    assert code == 1 and "not_regular_file" in _kinds(report, "data/a.json")
    deep = run_doit(root, "audit", "--deep", check=False, timeout=60)
    assert deep.returncode == 1 and "data/a.json" in deep.stdout, deep.stdout
    proc = run_doit(root, "repair", check=False, timeout=60)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert (root / "data/a.json").read_bytes() == want
    assert (root / "strays/a.json").is_fifo()
    assert _audit(root)[0] == 0


def test_a_caption_replaced_by_a_fifo_fails_its_shard_in_one_line_and_repair_mends_it(
    tmp_path: Path,
):
    root = tmp_path / "ds"
    _shard(root, "s0", _sample("a", 1))
    write_config(root)
    run_doit(root)
    (root / "data/a.txt").unlink()
    os.mkfifo(root / "data/a.txt")
    proc = run_doit(root, "caption_field=long_caption", check=False, timeout=60)
    assert proc.returncode != 0 and "Traceback" not in proc.stdout + proc.stderr
    assert "data/a.txt is a FIFO" in proc.stdout, proc.stdout
    run_doit(root, "repair", "caption_field=long_caption", timeout=60)
    assert (root / "data/a.txt").read_text() == "long a"
    run_doit(root, "caption_field=long_caption")


def test_an_image_replaced_by_a_symlink_to_a_device_is_never_read(tmp_path: Path):
    root = tmp_path / "ds"
    _shard(root, "s0", _sample("a", 1))
    write_config(root)
    run_doit(root)
    (root / "data/a.png").unlink()
    (root / "data/a.png").symlink_to("/dev/zero")
    proc = run_doit(root, "audit", "--deep", check=False, timeout=60)
    assert proc.returncode == 1 and "a.png" in proc.stdout, proc.stdout


# ------------------------------------------------------------------- what the build says


def test_an_invalid_edit_is_named_with_what_to_do_until_it_is_fixed(tmp_path: Path):
    root = tmp_path / "ds"
    _shard(root, "s0", _sample("a", 1))
    write_config(root)
    run_doit(root)
    (root / "data/a.json").write_text('{"short_caption": "half')
    proc = run_doit(root, check=False)
    out = proc.stdout + proc.stderr
    assert "a.json" in out and "not picked up" in out and "file(s) picked up" not in out, out
    _, report = _audit(root)
    assert _kinds(report, "data/a.json") == {"edited_json_unreadable"}
    (root / "data/a.json").write_text(json.dumps({"short_caption": "fixed a"}))
    proc = run_doit(root)
    assert "1 edited JSON file(s) picked up" in proc.stdout
    assert (root / "data/a.txt").read_text() == "fixed a"


@pytest.mark.parametrize("ext", ["json", "png", "txt"])
def test_a_fifo_in_data_hangs_no_rebuild_of_its_changed_shard(tmp_path: Path, ext: str):
    root = tmp_path / "ds"
    _shard(root, "s0", _sample("a", 1))
    write_config(root)
    run_doit(root)
    (root / f"data/a.{ext}").unlink()
    os.mkfifo(root / f"data/a.{ext}")
    _shard(root, "s0", _sample("a", 1) + _sample("b", 2))
    proc = run_doit(root, timeout=60)
    assert f"data/a.{ext} was a FIFO" in proc.stdout, proc.stdout
    assert (root / f"strays/a.{ext}").is_fifo()
    _trainer_safe(root)
    assert _audit(root)[0] == 0


def test_an_edited_json_stays_in_data_when_its_changed_shard_cannot_be_read(tmp_path: Path):
    root = tmp_path / "ds"
    _shard(root, "s0", _sample("a", 1) + _sample("b", 2))
    write_config(root)
    run_doit(root)
    _set_caption(root, "b", "EDITED b")
    tar = _shard(root, "s0", _sample("a", 1) + _sample("b", 2) + _sample("c", 3))
    with tarfile.open(tar) as t:
        cut = t.getmembers()[-1].offset_data + 10  # inside the last member
    tar.write_bytes(tar.read_bytes()[:cut])
    proc = run_doit(root, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stdout + proc.stderr
    assert json.loads((root / "data/b.json").read_text())["short_caption"] == "EDITED b"
    assert not (root / "edited").exists()
    _shard(root, "s0", _sample("a", 1) + _sample("b", 2) + _sample("c", 3))
    run_doit(root)
    assert (root / "data/b.txt").read_text() == "EDITED b"
