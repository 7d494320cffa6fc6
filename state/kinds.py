"""The kinds of `files` rows (str-valued: the manifest stores these very strings)."""

from __future__ import annotations

from enum import StrEnum


class FileKind(StrEnum):
    """What a `files` row is."""

    IMAGE = "image"  # a sample's image under data/
    JSON = "json"  # a sample's JSON under data/
    CAPTION = "caption"  # a caption text file the build wrote under data/
    ASIDE = "aside"  # a member kept under incomplete/<shard>/
    PARTITION = "partition"  # a shard's Parquet partition under state/
    TABLE = "table"  # the table of all samples
    PENDING = "pending"  # a path claimed by a shard whose file is not complete yet


MEMBER_KINDS = (FileKind.IMAGE, FileKind.JSON)  # a sample's files, as the tar held them
