"""`layout = "tars"`: no data/, one webshart index per shard, read back by webshart itself."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import tarfile
from pathlib import Path

import pytest

from sample.generate import make_dataset, write_config
from tests.conftest import run_doit, table_rows
from tests.tarbuild import M, png, sample_json, write_tar

WEBSHART = "webshart==0.6.0"
VENV = Path.home() / ".cache" / "shardprep-tests" / "webshart-0.6.0-py312"


def _tars_dataset(root: Path, shards: int = 3, samples: int = 12, **config) -> Path:
    make_dataset(root, shards=shards, samples_per_shard=samples)
    write_config(root)
    with open(root / "dataset.toml", "a", encoding="utf-8") as f:
        f.write('layout = "tars"\n')
        for key, value in config.items():
            f.write(f"{key} = {json.dumps(value)}\n")
    return root


def _index(root: Path, stem: str) -> dict:
    return json.loads((root / "webshart" / f"{stem}.json").read_text())


def _index_of(root: Path, webshart_shard: str) -> dict:
    return json.loads((root / "webshart" / f"{webshart_shard}.json").read_text())


def _member_bytes(tar: Path) -> dict[str, bytes]:
    with tarfile.open(tar) as t:
        return {m.name: t.extractfile(m).read() for m in t.getmembers() if m.isfile()}


def _by_shard(rows: list[dict]) -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = {}
    for r in rows:
        out.setdefault(r["shard"], {})[r["member"]] = r
    return out


@pytest.fixture
def tars_built(tmp_path: Path) -> Path:
    root = _tars_dataset(tmp_path / "ds")
    run_doit(root)
    return root


def test_tars_layout_writes_indexes_and_no_data(tars_built: Path) -> None:
    root = tars_built
    assert not (root / "data").exists()
    rows = table_rows(root)
    assert rows and {"shard", "member"} <= set(rows[0])
    by_shard = _by_shard(rows)
    tars = sorted((root / "hub" / "data").glob("*.tar"))
    assert sorted(by_shard) == [t.stem for t in tars]
    for tar in tars:
        index = _index(root, tar.stem)
        assert index["filesize"] == tar.stat().st_size
        assert index["includes_image_geometry"] is True
        members = _member_bytes(tar)
        assert set(index["files"]) == set(by_shard[tar.stem])
        raw = tar.read_bytes()
        for name, entry in index["files"].items():
            row = by_shard[tar.stem][name]
            start, end = entry["offset"], entry["offset"] + entry["length"]
            assert raw[start:end] == members[name]
            assert (entry["width"], entry["height"]) == (row["width"], row["height"])
            assert entry["aspect"] == row["width"] / row["height"]
            assert entry["captions"] == row["caption"]
            json_bytes = raw[entry["json_offset"] : entry["json_offset"] + entry["json_length"]]
            assert json_bytes == members[entry["json_path"]]


def test_tars_index_holds_the_folder_build(tmp_path: Path, tars_built: Path) -> None:
    folder = tmp_path / "folder"
    make_dataset(folder, shards=3, samples_per_shard=12)
    write_config(folder)
    run_doit(folder)
    tars_rows = table_rows(tars_built)
    folder_rows = table_rows(folder)
    keep = ("filename", "width", "height", "caption")
    assert [{k: r[k] for k in keep} for r in tars_rows] == folder_rows
    for r in tars_rows:
        entry = _index(tars_built, r["shard"])["files"][r["member"]]
        tar = tars_built / "hub" / "data" / f"{r['shard']}.tar"
        with open(tar, "rb") as f:
            f.seek(entry["offset"])
            assert f.read(entry["length"]) == (folder / "data" / r["filename"]).read_bytes()
        assert (folder / "data" / r["filename"]).with_suffix(".txt").read_text(
            encoding="utf-8"
        ) == entry["captions"]


def test_tars_entry_is_webshart(tars_built: Path) -> None:
    entries = json.loads((tars_built / "multidatabackend.json").read_text())
    ours = next(e for e in entries if e["id"] == "dalle3")
    assert ours["type"] == "webshart"
    assert ours["source"] == str(tars_built / "hub" / "data")
    assert ours["metadata"] == str(tars_built / "webshart")
    assert ours["metadata_backend"] == "webshart"
    assert ours["caption_strategy"] == "webshart"
    assert ours["minimum_image_size"] == 0.75 and ours["resolution_type"] == "area"
    assert "instance_data_dir" not in ours and "parquet" not in ours


def test_tars_dataloader_settings_are_merged(tmp_path: Path) -> None:
    root = _tars_dataset(tmp_path / "ds", shards=1)
    with open(root / "dataset.toml", "a", encoding="utf-8") as f:
        f.write("[dataloader]\nrepeats = 3\n[dataloader.webshart]\nshard_cache_gb = 5\n")
    run_doit(root)
    ours = json.loads((root / "multidatabackend.json").read_text())[0]
    assert ours["repeats"] == 3
    assert ours["webshart"]["shard_cache_gb"] == 5
    assert ours["webshart"]["cache_dir"] == str(root / "cache" / "webshart" / "dalle3")


def test_unknown_layout_is_one_line(tmp_path: Path) -> None:
    root = _tars_dataset(tmp_path / "ds", shards=1)
    proc = run_doit(root, "layout=zip", check=False)
    assert proc.returncode == 3
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == ['ERROR: the command line: `layout` must be "folder" or "tars", got \'zip\'']


def test_caption_switch_rewrites_only_the_indexes(tars_built: Path) -> None:
    root = tars_built
    parts = {p: p.stat().st_mtime_ns for p in (root / "state" / "parts").rglob("*.parquet")}
    proc = run_doit(root, "caption_field=long_caption")
    assert "webshart index written" in proc.stdout
    assert ".  extract:" not in proc.stdout  # no tar read
    assert {p: p.stat().st_mtime_ns for p in parts} == parts  # no partition (no JSON) read
    rows = table_rows(root)
    for r in rows:
        assert _index(root, r["shard"])["files"][r["member"]]["captions"] == r["caption"]
    assert any(r["caption"].startswith("A long") or len(r["caption"]) > 60 for r in rows)
    again = run_doit(root, "caption_field=long_caption")
    assert "webshart index written" not in again.stdout


def test_new_shard_writes_only_its_index(tars_built: Path) -> None:
    root = tars_built
    before = {p.name: p.stat().st_mtime_ns for p in (root / "webshart").glob("*.json")}
    make_dataset(root, shards=1, samples_per_shard=12, start=3)
    proc = run_doit(root)
    assert proc.stdout.count("webshart index written") == 1
    after = {p.name: p.stat().st_mtime_ns for p in (root / "webshart").glob("*.json")}
    assert set(after) == set(before) | {"data-000003.json"}
    assert {k: after[k] for k in before} == before
    assert not (root / "data").exists()


def test_incomplete_and_refused_members_are_not_indexed(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_tar(
        root / "hub" / "data" / "s-000.tar",
        [
            M("./good.json", sample_json("good")),
            M("./good.png", png(1)),
            M("lonely.png", png(2)),
            M("nojson-image.json", b"{not json"),
            M("nojson-image.png", png(3)),
            M("../escape.png", png(4)),
            M("only.json", sample_json("only")),
        ],
    )
    write_config(root)
    with open(root / "dataset.toml", "a", encoding="utf-8") as f:
        f.write('layout = "tars"\n')
    proc = run_doit(root, check=False)
    index = _index(root, "s-000")
    assert list(index["files"]) == ["./good.png"]  # the key is the member name, as in the tar
    assert index["files"]["./good.png"]["json_path"] == "./good.json"
    assert [r["member"] for r in table_rows(root)] == ["./good.png"]
    assert "../escape.png" in proc.stdout  # refused members are named, as in the folder layout
    assert not (root / "data").exists()


def test_audit_checks_indexes_and_tars(tars_built: Path) -> None:
    root = tars_built
    assert run_doit(root, "audit", "--deep", check=False).returncode == 0
    index_file = root / "webshart" / "data-000001.json"
    index = json.loads(index_file.read_text())
    first = sorted(index["files"])[0]
    index["files"][first]["offset"] += 512
    index_file.write_text(json.dumps(index))
    proc = run_doit(root, "audit", check=False)
    assert proc.returncode == 1
    assert "corrupt_index" in proc.stdout and "webshart/data-000001.json" in proc.stdout
    report = json.loads((root / "state" / "audit.json").read_text())
    found = [f for f in report["findings"] if f["kind"] == "corrupt_index"]
    assert found and "offset" in found[0]["detail"]
    repair = run_doit(root, "repair", check=False)
    assert repair.returncode == 0, repair.stdout + repair.stderr
    assert run_doit(root, "audit", check=False).returncode == 0

    (root / "webshart" / "data-000002.json").unlink()
    assert "missing_index" in run_doit(root, "audit", check=False).stdout
    run_doit(root, "repair")
    assert (root / "webshart" / "data-000002.json").is_file()


def test_repair_rebuilds_a_lost_partition_from_the_tar(tars_built: Path) -> None:
    root = tars_built
    part = root / "state" / "parts" / "shard=data-000002" / "part.parquet"
    before = table_rows(root)
    part.unlink()
    audit = run_doit(root, "audit", check=False)
    assert audit.returncode == 1 and "missing_partition" in audit.stdout
    repair = run_doit(root, "repair", check=False)
    assert repair.returncode == 0, repair.stdout + repair.stderr
    assert part.is_file() and table_rows(root) == before
    assert run_doit(root, "audit", check=False).returncode == 0


def test_audit_deep_finds_changed_member_bytes(tars_built: Path) -> None:
    root = tars_built
    tar = root / "hub" / "data" / "data-000000.tar"
    st = tar.stat()
    entry = next(iter(_index(root, "data-000000")["files"].values()))
    with open(tar, "r+b") as f:  # same size and mtime: only reading the bytes can tell
        f.seek(entry["offset"] + entry["length"] // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(tar, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert run_doit(root, "audit", check=False).returncode == 0
    deep = run_doit(root, "audit", "--deep", check=False)
    assert deep.returncode == 1 and "corrupt_member" in deep.stdout
    tar.unlink()
    gone = run_doit(root, "audit", check=False)
    assert gone.returncode == 1 and "missing_tar" in gone.stdout


def test_folder_layout_after_tars_extracts_into_data(tmp_path: Path) -> None:
    root = _tars_dataset(tmp_path / "ds", shards=2)
    run_doit(root)
    run_doit(root, "layout=folder")
    rows = table_rows(root)
    assert rows and "shard" not in rows[0]
    for r in rows:
        assert (root / "data" / r["filename"]).is_file()
    assert run_doit(root, "audit", "layout=folder", check=False).returncode == 0


def test_index_write_is_atomic_and_manifest_records_it(tars_built: Path) -> None:
    conn = sqlite3.connect(tars_built / "state" / "manifest.sqlite")
    try:
        keys = [k for (k,) in conn.execute("SELECT key FROM meta WHERE key LIKE 'webshart%'")]
        unplaced = conn.execute("SELECT count(*) FROM files WHERE mtime_ns = -2").fetchone()[0]
    finally:
        conn.close()
    assert sorted(keys) == [f"webshart_index:data-00000{i}" for i in range(3)]
    assert unplaced > 0
    assert not list((tars_built / "webshart").rglob("*.tmp*"))


def test_rewritten_index_clears_stale_trainer_caches(tars_built: Path) -> None:
    root = tars_built
    cache = root / "cache" / "webshart" / "dalle3"
    meta_cache = cache / "metadata_cache" / str(root / "hub" / "data").replace("/", "_")
    meta_cache.mkdir(parents=True)
    for name in ("data-000000.json", "data-000001.json"):
        (meta_cache / name).write_text("{}")
    buckets = cache / "aspect_ratio_bucket_indices_dalle3.json"
    buckets.write_text("{}")
    other = cache / "aspect_ratio_bucket_indices_other.json"
    other.write_text("{}")
    proc = run_doit(root, "caption_field=long_caption")
    assert "stale SimpleTuner/webshart cache file(s)" in proc.stdout
    assert not buckets.exists() and not list(meta_cache.iterdir())
    assert other.exists()  # another dataset's cache stays


def test_unreadable_shard_has_no_index(tars_built: Path) -> None:
    root = tars_built
    tar = root / "hub" / "data" / "data-000001.tar"
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) // 2])  # its old offsets no longer hold
    proc = run_doit(root, check=False)
    assert proc.returncode != 0
    assert not (root / "webshart" / "data-000001.json").exists()
    assert (root / "webshart" / "data-000000.json").exists()
    tar.write_bytes(data)
    run_doit(root)
    assert (root / "webshart" / "data-000001.json").exists()


def test_symlinked_tar_is_named(tmp_path: Path) -> None:
    root = _tars_dataset(tmp_path / "ds", shards=1)
    elsewhere = tmp_path / "elsewhere.tar"
    tar = root / "hub" / "data" / "data-000000.tar"
    tar.rename(elsewhere)
    tar.symlink_to(elsewhere)
    proc = run_doit(root)
    assert "webshart ignores it" in proc.stdout
    audit = run_doit(root, "audit", check=False)
    assert audit.returncode == 1 and "symlinked_tar" in audit.stdout


def test_shard_sorting_first_takes_a_path_from_an_indexed_one(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    data = root / "hub" / "data"
    write_tar(data / "b.tar", [*_pair("x", 1), *_pair("y", 2)])
    write_config(root)
    with open(root / "dataset.toml", "a", encoding="utf-8") as f:
        f.write('layout = "tars"\n')
    run_doit(root)
    write_tar(data / "a.tar", _pair("x", 3))
    run_doit(root, check=False)
    rows = table_rows(root)
    assert [(r["shard"], r["member"]) for r in rows] == [("a", "x.png"), ("b", "y.png")]
    assert list(_index(root, "a")["files"]) == ["x.png"]
    assert list(_index(root, "b")["files"]) == ["y.png"]
    audit = run_doit(root, "audit", check=False)
    assert audit.returncode == 0, audit.stdout


def _pair(key: str, seed: int) -> list[M]:
    return [M(f"{key}.json", sample_json(key)), M(f"{key}.png", png(seed))]


# ------------------------------------------------------------------ the real reader

READER = r"""
import hashlib, json, sys
import webshart

source, metadata = sys.argv[1], sys.argv[2]
ds = webshart.discover_dataset(source, metadata=metadata)
loader = webshart.TarDataLoader(ds, load_file_data=True, max_file_size=500_000_000)
out = {"samples": [], "buckets": 0, "iterated": 0}
for s in range(ds.num_shards):
    name = ds.get_shard_info(s)["name"]
    for i, key in enumerate(ds.list_samples_in_shard(s)):
        e = loader.load_sample(s, i)
        out["samples"].append({
            "shard": name, "member": e.path, "captions": e.captions,
            "sha256": hashlib.sha256(bytes(e.data)).hexdigest(),
            "json_sha256": hashlib.sha256(bytes(e.json_data or b"")).hexdigest(),
            "width": e.width, "height": e.height,
        })
for r in loader.list_shard_sample_aspect_buckets(list(range(ds.num_shards))):
    out["buckets"] += sum(len(v) for v in r["buckets"].values())
for e in webshart.TarDataLoader(ds, load_file_data=True):
    out["iterated"] += 1
json.dump(out, sys.stdout)
"""


def _python312() -> str | None:
    """A Python 3.12 interpreter that runs (webshart's wheels need >= 3.12)."""
    pyenv = [Path.home() / ".pyenv", Path(os.environ.get("PYENV_ROOT", "/root/.pyenv"))]
    candidates = [
        *(sorted(glob.glob(str(p / "versions" / "3.12*" / "bin" / "python"))) for p in pyenv),
        [shutil.which("python3.12")],
    ]
    for candidate in (c for group in candidates for c in group):
        if not candidate:
            continue
        probe = subprocess.run(
            [candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 12))"],
            capture_output=True,
            text=True,
        )
        if probe.returncode == 0 and probe.stdout.strip() == "True":
            return candidate
    return None


def _unavailable(reason: str) -> None:
    """Skip on a developer's machine; in CI (CI set) these tests must run, so fail."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def webshart_python() -> str:
    """A Python 3.12 with webshart 0.6.0 (a venv made once, cached between runs)."""
    python = VENV / "bin" / "python"
    if (VENV / "ready").is_file():
        return str(python)
    base = _python312()
    if base is None:
        _unavailable("webshart 0.6.0 needs Python 3.12 and none was found (python3.12, pyenv)")
    VENV.parent.mkdir(parents=True, exist_ok=True)
    tmp = VENV.with_name(f"{VENV.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run([base, "-m", "venv", str(tmp)], check=True, capture_output=True)
    pip = subprocess.run(
        [str(tmp / "bin" / "python"), "-m", "pip", "install", "-q", WEBSHART],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if pip.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        _unavailable(f"could not install {WEBSHART} from the package registry: {pip.stderr[-300:]}")
    VENV.parent.mkdir(parents=True, exist_ok=True)
    (tmp / "ready").write_text(WEBSHART + "\n")
    try:
        tmp.rename(VENV)  # bin/python is a link to the base interpreter: the venv can move
    except OSError:  # another run made it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return str(python)


def read_with_webshart(source: Path, metadata: Path) -> dict:
    proc = subprocess.run(
        [webshart_python(), "-c", READER, str(source), str(metadata)],
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_webshart_reads_every_sample_of_the_table(tmp_path: Path) -> None:
    root = _tars_dataset(tmp_path / "ds", shards=3)
    make_dataset(root, shards=1, samples_per_shard=12, start=3)  # a fourth, in a subfolder
    sub = root / "hub" / "data" / "more"
    sub.mkdir()
    (root / "hub" / "data" / "data-000003.tar").rename(sub / "data-000003.tar")
    with open(root / "dataset.toml", "a", encoding="utf-8") as f:
        f.write('shards = "hub/data/**/*.tar"\ncaption_field = ["long_caption", "short_caption"]\n')
    run_doit(root)
    assert (root / "webshart" / "more" / "data-000003.json").is_file()
    entry = json.loads((root / "multidatabackend.json").read_text())[0]
    got = read_with_webshart(Path(entry["source"]), Path(entry["metadata"]))

    rows = table_rows(root)
    tars = {
        shard: _member_bytes(next((root / "hub" / "data").rglob(f"{shard.split('__')[-1]}.tar")))
        for shard in {r["shard"] for r in rows}
    }
    expected = {
        (r["shard"].replace("__", "/"), r["member"]): (
            _sha(tars[r["shard"]][r["member"]]),
            r["caption"],
            r["width"],
            r["height"],
        )
        for r in rows
    }
    found = {
        (s["shard"], s["member"]): (s["sha256"], s["captions"], s["width"], s["height"])
        for s in got["samples"]
    }
    assert found == expected
    assert got["buckets"] == len(rows)  # every sample has a size: none dropped by bucketing
    assert got["iterated"] == len(rows)
    for s in got["samples"]:
        shard = s["shard"].replace("/", "__")
        json_member = _index_of(root, s["shard"])["files"][s["member"]]["json_path"]
        assert s["json_sha256"] == _sha(tars[shard][json_member])


def test_webshart_sees_a_caption_switch_and_quirky_members(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    long_name = "x" * 120
    write_tar(
        root / "hub" / "data" / "s-000.tar",
        [
            M("./dot.json", sample_json("dot")),
            M("./dot.png", png(1)),
            M(f"{long_name}.json", sample_json(long_name)),  # a pax/GNU long-name header
            M(f"{long_name}.png", png(2)),
            M("alone.png", png(3)),
            M("empty.json", sample_json("empty", short_caption="")),
            M("empty.png", png(4)),
            M("list.json", sample_json("list", short_caption=["", "second"])),
            M("list.png", png(5)),
            M("lines.json", sample_json("lines", short_caption="one\ntwo")),
            M("lines.png", png(6)),
        ],
    )
    write_config(root)
    with open(root / "dataset.toml", "a", encoding="utf-8") as f:
        f.write('layout = "tars"\n')
    run_doit(root, check=False)
    metadata, source = root / "webshart", root / "hub" / "data"
    got = read_with_webshart(source, metadata)
    members = _member_bytes(root / "hub" / "data" / "s-000.tar")
    assert {(s["member"], s["captions"], s["sha256"]) for s in got["samples"]} == {
        ("./dot.png", "short dot", _sha(members["./dot.png"])),
        (f"{long_name}.png", f"short {long_name}", _sha(members[f"{long_name}.png"])),
        # the .txt files' rule: "" stays "", a list gives its first non-blank item
        ("empty.png", "", _sha(members["empty.png"])),
        ("list.png", "second", _sha(members["list.png"])),
        ("lines.png", "one\ntwo", _sha(members["lines.png"])),
    }
    run_doit(root, "caption_field=long_caption", check=False)
    got = read_with_webshart(source, metadata)
    assert sorted(s["captions"] for s in got["samples"]) == sorted(
        ["long dot", f"long {long_name}", "long empty", "long list", "long lines"]
    )
