"""A cut or corrupt image is found without decoding pixels (issue 15.9): `tasks/imagecheck.py`
alone, and in `doit audit --deep`, where an image the tar held cut is a note
(`truncated_image`) and an image cut after the build is damage (`corrupt_image`)."""

from __future__ import annotations

import json
import os
import sqlite3
import struct
import zlib
from pathlib import Path

import pytest
from conftest import run_doit
from hypothesis import given, settings
from hypothesis import strategies as st
from tarbuild import M, jpeg, png, sample_json, write_tar

import tasks.audit.deep
from sample.generate import write_config
from sample.images import jpeg_bytes, png_bytes
from tasks.audit.run import audit
from tasks.imagecheck import ImageCheck, image_problem
from tasks.settings import load_settings

IMAGES = {
    "png": png_bytes(40, 30, 1),
    "png_noisy": png_bytes(64, 64, 2, noisy=True),
    "jpeg": jpeg_bytes(40, 30, 3),
    "jpeg_odd": jpeg_bytes(333, 77, 4),
}


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def _split_idat(png: bytes, size: int) -> bytes:
    """The same PNG with its IDAT cut into chunks of `size` bytes, as libpng writes them."""
    ihdr_end = 8 + 25
    length = struct.unpack(">I", png[ihdr_end : ihdr_end + 4])[0]
    idat = png[ihdr_end + 8 : ihdr_end + 8 + length]
    parts = [_chunk(b"IDAT", idat[i : i + size]) for i in range(0, len(idat), size)]
    return png[:ihdr_end] + b"".join(parts) + _chunk(b"IEND", b"")


def _with_thumbnail(jpeg: bytes) -> bytes:
    """The JPEG with an APP1 segment holding a whole small JPEG (an EXIF thumbnail), whose
    own EOI must not count as the main image's."""
    thumb = b"Exif\x00\x00" + jpeg_bytes(8, 8, 9)
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(thumb) + 2) + thumb + jpeg[2:]


def _fed(data: bytes, sizes: list[int]) -> str | None:
    check = ImageCheck()
    pos = 0
    for size in sizes:
        check.feed(memoryview(data)[pos : pos + size])
        pos += size
    check.feed(data[pos:])
    return check.result()


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_whole_images_pass_and_every_cut_is_found(name: str):
    data = IMAGES[name]
    assert image_problem(data) is None
    for cut in range(2, len(data)):  # one byte cannot tell a JPEG
        problem = image_problem(data[:cut])
        assert problem is not None and "cut" in problem, (cut, problem)


@pytest.mark.parametrize(
    "data",
    [
        _split_idat(png_bytes(64, 64, 5, noisy=True), 8192),
        _split_idat(png_bytes(64, 64, 6), 7),
        _with_thumbnail(jpeg_bytes(40, 30, 7)),
        IMAGES["png"] + b"\x00" * 100,  # bytes after IEND / EOI: some tools append them
        IMAGES["jpeg"] + b"\x00" * 100,
        IMAGES["jpeg"] + b"trailer data of a phone",
        IMAGES["jpeg"][:2] + b"\x00\x00" + IMAGES["jpeg"][2:],  # decoders skip stray bytes
    ],
    ids=[
        "png_8k_idats",
        "png_tiny_idats",
        "jpeg_exif_thumbnail",
        "png_pad",
        "jpeg_pad",
        "jpeg_tail",
        "jpeg_stray_bytes",
    ],
)
def test_real_encoder_layouts_pass_and_their_cuts_are_found(data: bytes):
    assert image_problem(data) is None
    body = data.rstrip(b"\x00") if data.endswith(b"\x00") else data
    end = body.rfind(b"IEND") + 8 if body.startswith(b"\x89PNG") else body.rfind(b"\xff\xd9") + 2
    for cut in range(2, end, max(1, end // 200)):
        assert image_problem(data[:cut]) is not None, cut


def test_a_changed_byte_inside_a_png_chunk_fails_its_crc():
    data = bytearray(IMAGES["png_noisy"])
    data[len(data) // 2] ^= 0x01
    assert "IDAT chunk at byte 33 fails its CRC" in image_problem(bytes(data))
    assert image_problem(bytes(data), crc=False) is None  # the length walk alone passes it


def test_other_formats_are_not_judged():
    assert image_problem(b"RIFF\x00\x00\x00\x00WEBPVP8 ") is None
    assert image_problem(b"") is None


@settings(max_examples=150, deadline=None)
@given(
    name=st.sampled_from(sorted(IMAGES)),
    cut=st.integers(0, 1 << 20),
    flip=st.one_of(st.none(), st.integers(0, 1 << 20)),
    sizes=st.lists(st.integers(0, 3000), max_size=12),
)
def test_pieces_of_any_size_give_the_answer_of_the_whole(name, cut, flip, sizes):
    data = bytearray(IMAGES[name][: max(cut, 1)])
    if flip is not None:
        data[flip % len(data)] ^= 0x40
    assert _fed(bytes(data), sizes) == image_problem(bytes(data))


# --------------------------------------------------------------------------- audit


def _cut_dataset(root: Path) -> dict[str, bytes]:
    """A shard holding a cut PNG and a cut JPEG (headers whole) beside good samples."""
    big_png = png_bytes(200, 150, 11, noisy=True)
    images = {
        "good_a.png": png(1),
        "good_b.jpg": jpeg(2),
        "cut_c.png": big_png[: len(big_png) // 2],
        "cut_d.jpg": jpeg_bytes(64, 48, 12)[:-40],
        "bad_crc_e.png": _flipped(png_bytes(64, 64, 13, noisy=True)),
    }
    members = []
    for name, data in images.items():
        key, ext = os.path.splitext(name)
        members += [M(f"{key}.json", sample_json(key, ext)), M(name, data)]
    write_tar(root / "hub/data/data-000000.tar", members)
    write_config(root)
    return images


def _flipped(data: bytes) -> bytes:
    out = bytearray(data)
    out[len(out) // 2] ^= 0x01
    return bytes(out)


def _audit(root: Path, *args: str) -> tuple[int, dict]:
    proc = run_doit(root, "audit", *args, check=False)
    report = json.loads((root / "state/audit.json").read_text(encoding="utf-8"))
    return proc.returncode, report


def _found(report: dict, kind: str) -> dict[str, dict]:
    return {f["path"]: f for f in report["findings"] if f["kind"] == kind}


def test_deep_audit_notes_images_the_tar_held_cut_and_calls_later_cuts_damage(tmp_path: Path):
    root = tmp_path / "ds"
    _cut_dataset(root)
    run_doit(root)
    for name in ("cut_c.png", "cut_d.jpg", "bad_crc_e.png"):
        assert (root / "data" / name).is_file()  # their headers are whole: the build keeps them

    rc, report = _audit(root, "--deep")
    assert rc == 0, report  # a quirk of the data, not damage
    cut = _found(report, "truncated_image")
    assert set(cut) == {"data/cut_c.png", "data/cut_d.jpg", "data/bad_crc_e.png"}
    assert all(f["severity"] == "note" and f["shard"] == "data-000000" for f in cut.values())
    assert "no IEND" not in cut["data/cut_c.png"]["detail"]  # cut inside its IDAT
    assert "inside its IDAT chunk" in cut["data/cut_c.png"]["detail"]
    assert "no EOI marker" in cut["data/cut_d.jpg"]["detail"]
    assert "fails its CRC" in cut["data/bad_crc_e.png"]["detail"]

    good = root / "data/good_a.png"
    st_good = good.stat()
    good.write_bytes(good.read_bytes()[:-20])  # cut after the build: damage, not a quirk
    os.utime(good, ns=(st_good.st_atime_ns, st_good.st_mtime_ns))
    rc, report = _audit(root, "--deep")
    assert rc == 1
    assert "data/good_a.png" in _found(report, "corrupt_image")
    assert set(_found(report, "truncated_image")) == set(cut)


def test_big_images_are_checked_while_read_in_chunks(tmp_path: Path, monkeypatch):
    """A file past BIG_FILE is read in pieces; the check follows them (same read)."""
    root = tmp_path / "ds"
    _cut_dataset(root)
    run_doit(root)
    monkeypatch.setattr(tasks.audit.deep, "BIG_FILE", 1000)
    report = audit(load_settings(root / "dataset.toml"), deep=True)
    assert {f.path for f in report.of("truncated_image")} == {
        "data/cut_c.png",
        "data/cut_d.jpg",
        "data/bad_crc_e.png",
    }
    assert report.ok


def test_an_image_the_build_noted_cut_is_named_once(tmp_path: Path):
    """When the build records the cut as a quirk (the length walk, `crc=False`), the deep
    audit does not name the same image a second time."""
    root = tmp_path / "ds"
    _cut_dataset(root)
    run_doit(root)
    conn = sqlite3.connect(root / "state/manifest.sqlite")
    with conn:  # the row the build's check would write for cut_c.png
        conn.execute(
            "INSERT INTO quirks (shard, kind, member, path, detail) VALUES (?, ?, ?, ?, ?)",
            ("data-000000", "truncated_image", "cut_c.png", "data/cut_c.png", "PNG cut at build"),
        )
    conn.close()
    rc, report = _audit(root, "--deep")
    assert rc == 0
    cut = [f for f in report["findings"] if f["kind"] == "truncated_image"]
    assert sorted(f["path"] for f in cut) == [
        "data/bad_crc_e.png",
        "data/cut_c.png",
        "data/cut_d.jpg",
    ]
    assert next(f for f in cut if f["path"] == "data/cut_c.png")["detail"].endswith("at build")
