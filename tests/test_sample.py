"""Tests of the sample-data generator (sample/) and of the preset reference."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
import tarfile
import tomllib
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the project is not installed; run from a checkout
    sys.path.insert(0, str(ROOT))

from sample import generate  # noqa: E402
from sample.generate import (  # noqa: E402
    QUIRKS,
    describe_quirks,
    make_dataset,
    plan_dataset,
    sample_key,
    write_config,
)
from sample.images import PNG_SIGNATURE, jpeg_bytes, png_bytes  # noqa: E402
from tests.preset_reference import compile_rows, run_preset  # noqa: E402

# ---------------------------------------------------------------- image parsing helpers


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(tag, payload) of every chunk; asserts signature, lengths and CRCs."""
    assert data[:8] == PNG_SIGNATURE
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        tag, payload = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(tag + payload), f"bad CRC in {tag!r}"
        chunks.append((tag, payload))
        pos += 12 + length
    assert pos == len(data)
    return chunks


def png_size(data: bytes) -> tuple[int, int]:
    chunks = png_chunks(data)
    assert chunks[0][0] == b"IHDR" and chunks[-1] == (b"IEND", b"")
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, color, interlace) == (8, 2, 0)
    raw = zlib.decompress(b"".join(p for t, p in chunks if t == b"IDAT"))
    assert len(raw) == height * (1 + 3 * width)
    return width, height


def jpeg_segments(data: bytes) -> tuple[dict[int, bytes], bytes]:
    """Marker → payload up to SOS, and the entropy-coded data; asserts SOI/EOI."""
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"
    segments, pos = {}, 2
    while True:
        assert data[pos] == 0xFF
        marker = data[pos + 1]
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        segments[marker] = data[pos + 4 : pos + 2 + length]
        pos += 2 + length
        if marker == 0xDA:  # SOS: entropy data follows, up to EOI
            return segments, data[pos:-2]


def jpeg_size(data: bytes) -> tuple[int, int]:
    segments, scan = jpeg_segments(data)
    assert {0xE0, 0xDB, 0xC0, 0xC4, 0xDA} <= segments.keys()
    assert segments[0xE0].startswith(b"JFIF\x00")
    precision, height, width, components = struct.unpack(">BHHB", segments[0xC0][:6])
    assert precision == 8 and components == 3
    # Every 0xFF in the scan is stuffed (followed by 0x00): no stray markers.
    assert all(scan[i + 1] == 0 for i in range(len(scan)) if scan[i] == 0xFF)
    return width, height


def image_size(name: str, data: bytes) -> tuple[int, int]:
    return png_size(data) if name.endswith(".png") else jpeg_size(data)


# ---------------------------------------------------------------------------- images

SIZES = [(1, 1), (7, 13), (64, 48), (8, 8), (9, 17), (1792, 1024)]


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_png_structure(width: int, height: int) -> None:
    assert png_size(png_bytes(width, height, seed=3)) == (width, height)


@pytest.mark.parametrize(("width", "height"), [(1, 1), (7, 13), (64, 48), (256, 128)])
def test_noisy_png_structure_and_size(width: int, height: int) -> None:
    data = png_bytes(width, height, seed=3, noisy=True)
    assert png_size(data) == (width, height)
    assert len(data) > 3 * width * height  # noise does not compress


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_jpeg_structure(width: int, height: int) -> None:
    assert jpeg_size(jpeg_bytes(width, height, seed=3)) == (width, height)


def test_images_deterministic_and_seeded() -> None:
    for make in (png_bytes, jpeg_bytes):
        assert make(24, 16, 5) == make(24, 16, 5)
        assert len({make(24, 16, seed) for seed in range(50)}) == 50
    assert png_bytes(24, 16, 5, noisy=True) == png_bytes(24, 16, 5, noisy=True)
    assert png_bytes(24, 16, 5, noisy=True) != png_bytes(24, 16, 6, noisy=True)


def test_bad_sizes_rejected() -> None:
    with pytest.raises(ValueError):
        png_bytes(0, 5, 1)
    with pytest.raises(ValueError):
        jpeg_bytes(5, 70000, 1)


# --------------------------------------------------------------------------- shards


def read_shard(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def strip(name: str) -> str:
    return name.removeprefix("./")


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("ds")
    return root, make_dataset(root)


def test_layout_and_paths(generated: tuple[Path, list[Path]]) -> None:
    root, paths = generated
    assert paths == [root / "hub" / "data" / f"data-00000{i}.tar" for i in range(3)]
    listing = subprocess.run(["tar", "tf", paths[0]], check=True, capture_output=True, text=True)
    assert listing.stdout.splitlines() == [name for name, _ in read_shard(paths[0])]


def test_deterministic(tmp_path: Path, generated: tuple[Path, list[Path]]) -> None:
    _, paths = generated
    again = make_dataset(tmp_path / "a")
    parallel = make_dataset(tmp_path / "b", jobs=2)
    for path, other, other2 in zip(paths, again, parallel, strict=True):
        assert path.read_bytes() == other.read_bytes() == other2.read_bytes()
    with tarfile.open(paths[0]) as tar:
        member = tar.getmembers()[0]
    assert (member.mtime, member.uid, member.gid, member.uname, member.mode) == (
        generate.TAR_MTIME, 0, 0, "", 0o644
    )  # fmt: skip
    assert make_dataset(tmp_path / "c", seed=1)[0].read_bytes() != paths[0].read_bytes()


def test_tar_header_matches_tarfile() -> None:
    for name, size in [("a.json", 0), ("./0123456789abcdef.jpeg", 123456789), ("x" * 120, 5)]:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode, info.uname, info.gname = (
            size, generate.TAR_MTIME, 0o644, "", ""
        )  # fmt: skip
        assert generate._tar_header(name, size) == info.tobuf(tarfile.GNU_FORMAT)


def test_keys_unique_across_batches(tmp_path: Path) -> None:
    first = make_dataset(tmp_path, shards=2, samples_per_shard=5)
    later = make_dataset(tmp_path, shards=2, samples_per_shard=5, start=2)
    assert [p.name for p in later] == ["data-000002.tar", "data-000003.tar"]
    keys = [strip(name).rsplit(".", 1)[0] for path in first + later for name, _ in read_shard(path)]
    assert len(set(keys)) == 4 * 5
    whole = make_dataset(tmp_path / "whole", shards=4, samples_per_shard=5)
    assert [p.read_bytes() for p in whole] == [p.read_bytes() for p in first + later]
    many = {sample_key(0, shard, index) for shard in range(70) for index in range(300)}
    assert len(many) == 70 * 300
    assert all(len(key) == 16 and int(key, 16) >= 0 for key in many)


def test_samples_in_real_schema(generated: tuple[Path, list[Path]]) -> None:
    _, paths = generated
    fields = {
        "image_name", "md5_pil_hash", "md5_file_hash", "sha512_hash", "short_caption",
        "long_caption", "resolution", "url", "width", "height", "source", "original_prompt",
    }  # fmt: skip
    caption2_kinds, exts, sizes = set(), set(), set()
    for path in paths:
        members = read_shard(path)
        images = {strip(n): d for n, d in members if not n.endswith(".json")}
        for i, (name, data) in enumerate(members):
            if not name.endswith(".json"):
                continue
            record = json.loads(data.decode("utf-8"))
            assert fields - {"width", "height"} <= record.keys()
            image_name = record["image_name"]
            exts.add(image_name.rsplit(".", 1)[1])
            for field in ("short_caption2", "long_caption2"):
                caption2_kinds.add(type(record.get(field)).__name__)
            if image_name not in images:
                continue
            # The image follows its JSON directly in the tar.
            assert strip(members[i + 1][0]) == image_name
            image = images[image_name]
            assert strip(name).removesuffix(".json") == image_name.rsplit(".", 1)[0]
            assert record["md5_file_hash"] == hashlib.md5(image).hexdigest()
            assert record["sha512_hash"] == hashlib.sha512(image).hexdigest()
            width, height = image_size(image_name, image)
            assert record["resolution"] == f"{width}x{height}"
            sizes.add((width, height))
            assert 8 <= width <= 64 and 8 <= height <= 64
            if "width" in record:
                assert (int(record["width"]), int(record["height"])) == (width, height)
    assert exts == {"png", "jpg", "jpeg"}
    assert caption2_kinds == {"NoneType", "str", "list"}
    assert any(w == h for w, h in sizes) and any(w != h for w, h in sizes)


def quirks_of_shard(path: Path) -> set[str]:
    """Which quirks a shard shows, found from its contents alone."""
    found: set[str] = set()
    members = read_shard(path)
    names = [n for n, _ in members]
    keys_json = {strip(n)[:-5] for n in names if n.endswith(".json")}
    keys_image = {strip(n).rsplit(".", 1)[0] for n in names if not n.endswith(".json")}
    if keys_json - keys_image:
        found.add("json_only")
    if keys_image - keys_json:
        found.add("image_only")
    dotted = [n for n in names if n.startswith("./")]
    if 0 < len(dotted) < len(names):
        found.add("dot_slash")
    for name, data in members:
        if not name.endswith(".json"):
            continue
        assert b"\\u" not in data  # written with ensure_ascii=False
        record = json.loads(data.decode("utf-8"))
        if "width" not in record and "height" not in record:
            found.add("no_size")
        elif isinstance(record["width"], str) and isinstance(record["height"], str):
            found.add("size_str")
        elif isinstance(record["width"], float) and isinstance(record["height"], float):
            found.add("size_float")
        short = record["short_caption"]
        if short == "":
            found.add("empty_caption")
        if "\n" in short:
            found.add("newlines")
        if "日本語" in short and any(ord(c) > 0xFFFF for c in short) and "é" in short:
            found.add("unicode")
    return found


def test_every_shard_has_every_quirk(generated: tuple[Path, list[Path]]) -> None:
    _, paths = generated
    expected = set(QUIRKS.values()) - {"dot_slash_image"}  # shows as dot_slash
    for path in paths:
        assert quirks_of_shard(path) == expected
        names = [n for n, _ in read_shard(path)]
        # dot_slash_image: the JSON has no prefix but its image has
        key = sample_key(0, int(path.stem[-6:]), generate.QUIRK_INDEX["dot_slash_image"])
        assert key + ".json" in names
        assert any(n.startswith(f"./{key}.") for n in names)


def test_quirk_plan_and_description() -> None:
    specs = plan_dataset()
    assert [d["name"] for d in describe_quirks()] == list(QUIRKS.values())
    assert [d["index"] for d in describe_quirks(5)] == [1, 2, 3, 4]
    for spec in specs:
        assert spec.quirk == QUIRKS.get(spec.index)
    by_quirk = {(s.shard, s.quirk): s for s in specs}
    for shard in range(3):
        assert by_quirk[shard, "json_only"].image_member is None
        assert by_quirk[shard, "image_only"].json_member is None
        assert by_quirk[shard, "dot_slash"].json_member.startswith("./")
        # each quirk appears with a different extension in each of the three shards
    for quirk in QUIRKS.values():
        assert {by_quirk[shard, quirk].ext for shard in range(3)} == {".png", ".jpg", ".jpeg"}


def test_no_quirks_is_clean(tmp_path: Path) -> None:
    paths = make_dataset(tmp_path, shards=2, samples_per_shard=15, quirks=False)
    for path in paths:
        assert quirks_of_shard(path) == set()
        members = read_shard(path)
        assert len(members) == 2 * 15
        for name, data in members:
            if name.endswith(".json"):
                record = json.loads(data)
                assert type(record["width"]) is int and type(record["height"]) is int
                assert record["short_caption"]


def test_large_plan() -> None:
    specs = plan_dataset(shards=1, large=True)
    assert {(s.width, s.height) for s in specs} == {(1024, 1024), (1792, 1024)}
    png = next(s for s in specs if s.ext == ".png" and s.width == 1024)
    data = generate.image_bytes(png)
    assert png_size(data) == (1024, 1024) and len(data) > 3_000_000


# ---------------------------------------------------------------- config and CLI


def test_write_config(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        id="d3",
        caption_field=["long_caption", "short_caption"],
        expected_samples=33,
        dataloader={"resolution": 1.0, "crop": False, "odd key": 'a "quoted" 日本'},
    )
    assert path == tmp_path / "dataset.toml"
    assert tomllib.loads(path.read_text(encoding="utf-8")) == {
        "root": ".",
        "id": "d3",
        "caption_field": ["long_caption", "short_caption"],
        "expected_samples": 33,
        "dataloader": {"resolution": 1.0, "crop": False, "odd key": 'a "quoted" 日本'},
    }
    assert tomllib.loads(write_config(tmp_path, root="/x").read_text())["root"] == "/x"


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert generate.main([str(tmp_path), "--shards", "2", "--samples", "4", "--start", "7"]) == 0
    out = capsys.readouterr().out
    assert "data-000007.tar" in out and "data-000008.tar" in out and "dataset.toml" in out
    assert tomllib.loads((tmp_path / "dataset.toml").read_text()) == {"root": "."}
    (tmp_path / "dataset.toml").write_text('root = "."\nid = "mine"\n')
    generate.main([str(tmp_path), "--shards", "1", "--no-quirks"])
    assert "kept" in capsys.readouterr().out
    assert "mine" in (tmp_path / "dataset.toml").read_text()
    assert sorted(p.name for p in (tmp_path / "hub" / "data").iterdir()) == [
        "data-000000.tar", "data-000007.tar", "data-000008.tar"
    ]  # fmt: skip


# ------------------------------------------------------------------ preset reference


def test_preset_reference_rows_and_captions(
    tmp_path: Path, generated: tuple[Path, list[Path]]
) -> None:
    _, paths = generated
    rows = run_preset(paths, tmp_path)
    data = tmp_path / "data"
    specs = plan_dataset()
    expected = []
    for spec in specs:
        if not spec.has_size:
            continue
        record = generate.sample_json(spec, generate.image_bytes(spec))
        expected.append(
            {
                "width": spec.width,
                "height": spec.height,
                "caption": record["short_caption"],
                "filename": spec.image_name,
            }
        )
    assert sorted(rows, key=lambda r: r["filename"]) == sorted(
        expected, key=lambda r: r["filename"]
    )
    assert all(type(r["width"]) is int and type(r["height"]) is int for r in rows)
    # One row per JSON with width: not the samples without size or without JSON.
    assert len(rows) == 3 * (12 - 2)
    for spec in specs:
        txt = data / f"{spec.key}.txt"
        assert txt.exists() == spec.has_size
        image_on_disk = (data / spec.image_name).exists()
        assert image_on_disk == (spec.image_member is not None)
    by_name = {r["filename"]: r for r in rows}
    for row in rows:  # caption bytes exactly as written by the preset (newlines kept)
        stem = row["filename"].rsplit(".", 1)[0]
        assert (data / f"{stem}.txt").read_bytes() == row["caption"].encode("utf-8")
    json_only = next(s for s in specs if s.quirk == "json_only")
    assert json_only.image_name in by_name  # the preset does not check the image
    newline = next(s for s in specs if s.quirk == "newlines")
    assert b"\n" in (data / f"{newline.key}.txt").read_bytes()
    long_rows = compile_rows(data, "long_caption")
    assert {r["filename"] for r in long_rows} == set(by_name)
