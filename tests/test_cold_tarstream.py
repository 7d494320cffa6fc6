"""A tar header's checksum: tarfile's headers pass, one changed byte anywhere fails."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from tasks.extract.tarstream import (
    BLOCK,
    HashingReader,
    ShardReadError,
    iter_members,
    parse_header,
)


def _one_member_tar(path: Path, fmt: int) -> bytes:
    with tarfile.open(path, "w", format=fmt) as tar:
        info = tarfile.TarInfo("img/0001.png")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    return path.read_bytes()


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_tarfile_headers_pass(tmp_path: Path, fmt: int) -> None:
    _one_member_tar(tmp_path / "a.tar", fmt)
    path = tmp_path / "a.tar"
    found = [(m.name, m.size, bytes(d)) for m, d in iter_members(HashingReader(path), path)]
    assert found == [("img/0001.png", 5, b"hello")]


@pytest.mark.parametrize("where", [0, 100, 147, 156, 300, 511])
def test_one_changed_byte_fails_the_checksum(tmp_path: Path, where: int) -> None:
    data = bytearray(_one_member_tar(tmp_path / "a.tar", tarfile.USTAR_FORMAT))
    block = bytes(data[:BLOCK])
    assert parse_header(block) == ("img/0001.png", 5, b"0")
    data[where] = (data[where] + 1) % 256
    assert parse_header(bytes(data[:BLOCK])) is None
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(data))
    with pytest.raises(ShardReadError, match="not a valid tar header at byte 0"):
        list(iter_members(HashingReader(bad), bad))


def test_checksum_field_with_space_terminator(tmp_path: Path) -> None:
    data = bytearray(_one_member_tar(tmp_path / "a.tar", tarfile.USTAR_FORMAT))
    total = sum(data[:148]) + sum(data[156:BLOCK]) + 256
    data[148:156] = b"%06o \0" % total  # old tars end the field with a space, then NUL
    assert parse_header(bytes(data[:BLOCK])) == ("img/0001.png", 5, b"0")
