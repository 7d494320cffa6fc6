"""The shard reader agrees with tarfile on valid tars and refuses what tarfile glosses over."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
import xxhash

from tasks.extract.tarstream import (
    VIEW_MIN,
    HashingReader,
    ShardReadError,
    iter_members,
    normalize_member_name,
)

NAMES = ["a.png", "./b.json", "x" * 150 + ".png", "dir/" * 30 + "deep.json", "日本/語.png"]


def _tar(path: Path, fmt: int, names: list[str] = NAMES) -> Path:
    with tarfile.open(path, "w", format=fmt) as tar:
        for i, name in enumerate(names):
            info = tarfile.TarInfo(name)
            data = bytes([i]) * (i * 700 + 3)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("link.png")
        link.type, link.linkname = tarfile.SYMTYPE, "a.png"
        tar.addfile(link)
    return path


USTAR_NAMES = [n for n in NAMES if not n.startswith("xxx")]  # ustar: no 150-char component


@pytest.mark.parametrize(
    ("fmt", "names"),
    [(tarfile.GNU_FORMAT, NAMES), (tarfile.PAX_FORMAT, NAMES), (tarfile.USTAR_FORMAT, USTAR_NAMES)],
)
def test_members_offsets_and_digest_match_tarfile(tmp_path: Path, fmt: int, names: list[str]):
    path = _tar(tmp_path / "s.tar", fmt, names)
    reader = HashingReader(path)
    ours = [(m.name, m.kind, m.offset_data, m.size, d) for m, d in iter_members(reader, path)]
    digest, size = reader.finish()
    with tarfile.open(path) as tar:
        theirs = []
        for m in tar.getmembers():
            data = tar.extractfile(m).read() if m.isreg() else None
            kind = "file" if m.isreg() else "link"
            theirs.append((m.name, kind, m.offset_data, m.size, data))
    assert ours == theirs
    assert digest == xxhash.xxh3_128_hexdigest(path.read_bytes())
    assert size == path.stat().st_size


def test_a_large_member_comes_as_a_view_of_exactly_its_bytes(tmp_path: Path):
    big = bytes(range(256)) * (VIEW_MIN // 256) + b"tail"  # padded in the tar: 508 zeros
    small = b'{"a": 1}'
    path = tmp_path / "big.tar"
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in [("big.png", big), ("small.json", small), ("exact.png", big[:VIEW_MIN])]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    got = [d for _, d in iter_members(HashingReader(path), path)]
    assert isinstance(got[0], memoryview) and bytes(got[0]) == big
    assert isinstance(got[1], bytes) and got[1] == small
    assert bytes(got[2]) == big[:VIEW_MIN]


def test_garbage_after_members_is_an_error_not_an_end(tmp_path: Path):
    path = _tar(tmp_path / "s.tar", tarfile.GNU_FORMAT)
    data = bytearray(path.read_bytes())
    with tarfile.open(path) as tar:
        end = max(m.offset_data + m.size for m in tar.getmembers())
    end = -(-end // 512) * 512
    data[end : end + 512] = b"\x01" * 512
    path.write_bytes(bytes(data))
    with tarfile.open(path) as tar:  # tarfile stops silently here
        assert len(tar.getmembers()) == len(NAMES) + 1
    with pytest.raises(ShardReadError, match="not a valid tar header"):
        list(iter_members(HashingReader(path), path))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("./a/b.png", "a/b.png"),
        ("a//b.png", "a/b.png"),
        ("../a.png", None),
        ("/a.png", None),
        ("a/../../b", None),
        ("", None),
        (".", None),
    ],
)
def test_normalize_member_name(name, expected):
    assert normalize_member_name(name) == expected
