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

# Hand edits the build keeps aside, in `<root>/edited/`: a folder of the root itself, so no
# shard name (incomplete/<shard>/) and no member path can reach it.
EDITED_DIR = "edited"
EDITED_CAPTIONS = f"{EDITED_DIR}/captions"  # then the caption's path under data/
EDITED_SHARD_FILES = {  # then <shard>/<path under data/>
    FileKind.JSON: f"{EDITED_DIR}/json",
    FileKind.IMAGE: f"{EDITED_DIR}/images",
}
STRAYS_DIR = "strays"  # files found in data/ that the build did not write (never deleted)
