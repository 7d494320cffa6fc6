"""Do `data/`, the manifest and the table pair up? Answered in memory that does not grow.

A healthy build is confirmed by counts and order-free fingerprints, so the audit never
holds the set of names (3.5M of them for the full dataset):

- every file in `data/` is one the manifest knows  <=>  the walk counts as many files as
  the manifest has rows present in `data/` (those are a subset of the walk: a row is
  counted only if the walk would count its file);
- every image has a caption row  <=  the fingerprint of the images' caption names equals
  the fingerprint of the caption rows;
- the table has a row for each image and no other  <=>  the fingerprint of the table's
  filenames equals the fingerprint of the manifest's images.

Only when two sides differ are names looked up, one batch at a time, to say which ones.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow.parquet as pq

from state import files
from state.batching import batched
from state.kinds import FileKind
from tasks.captions import caption_path

IMAGE, CAPTION = FileKind.IMAGE, FileKind.CAPTION

TRAINER_FILE_PREFIX = "aspect_ratio_bucket_"  # SimpleTuner's own files in data/
TRAINER_DATA_PREFIX = "data/" + TRAINER_FILE_PREFIX
LOOKUP_BATCH = 500  # names per `path IN (...)` query
_MASK = (1 << 64) - 1


def is_trainer_file(name: str) -> bool:
    """SimpleTuner's `aspect_ratio_bucket_*.json` (indices, metadata) in `data/`."""
    return name.startswith(TRAINER_FILE_PREFIX) and name.endswith(".json")


def counted_in_data(path: str) -> bool:
    """Whether `strays` may count a manifest row found on disk: only under `data/`, and not
    under a name SimpleTuner might own (the walk may leave those out; counting fewer here
    than the walk can only send `strays` to its exact, slower lookup)."""
    return path.startswith("data/") and not path.startswith(TRAINER_DATA_PREFIX)


@dataclass
class Fingerprint:
    """An order-free fingerprint of a multiset of names: their count and the sum of their
    `hash()` (SipHash, keyed per process, cached on the string: compare fingerprints made
    in one process, or in processes forked from it, which share the key). Equal multisets
    always agree; different ones agree with odds of about 2**-64.
    """

    count: int = 0
    total: int = 0

    def add(self, name: str) -> None:
        """Count one name."""
        self.count += 1
        self.total += hash(name)

    def merge(self, other: Fingerprint) -> None:
        """Count the names of `other` too (made in this process or one forked from it)."""
        self.count += other.count
        self.total += other.total

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Fingerprint):
            return NotImplemented
        return (self.count, self.total & _MASK) == (other.count, other.total & _MASK)


class PairTallies:
    """Fingerprints of the manifest rows that must pair up: images in `data/`, the
    caption paths they want (textfile captions), and the caption rows."""

    def __init__(self, textfile: bool):
        self.textfile = textfile
        self.images = Fingerprint()
        self.wanted_captions = Fingerprint()
        self.captions = Fingerprint()

    def add(self, path: str, kind: str, sample: str | None) -> None:
        """Count one manifest row (every row, whatever the disk holds)."""
        if kind == IMAGE:
            if path.startswith("data/"):
                self.images.add(path)
                if self.textfile:
                    self.wanted_captions.add(caption_of(path, sample))
        elif kind == CAPTION:
            self.captions.add(path)

    def merge(self, other: PairTallies) -> None:
        """Add the counts of another part of the manifest (see `Fingerprint.merge`)."""
        self.images.merge(other.images)
        self.wanted_captions.merge(other.wanted_captions)
        self.captions.merge(other.captions)


def _data_entries(data_dir: str) -> Iterator[tuple[str, str]]:
    """(folder as `data/...`, name) of every file under `data/`, SimpleTuner's own files
    left out (streamed)."""
    stack = [(data_dir, "data")]
    while stack:
        folder, rel = stack.pop()
        try:
            it = os.scandir(folder)
        except (FileNotFoundError, NotADirectoryError):
            continue
        top = rel == "data"
        with it:
            for entry in it:
                name = entry.name
                if entry.is_dir(follow_symlinks=False):
                    stack.append((entry.path, f"{rel}/{name}"))
                elif not (top and is_trainer_file(name)):
                    yield rel, name


def count_data_files(data_dir: str) -> int:
    """How many files `data_files` would yield (no paths are made)."""
    return sum(1 for _ in _data_entries(data_dir))


def data_files(data_dir: str) -> Iterator[str]:
    """Every file under `data/` as `data/...`, SimpleTuner's own files left out (streamed)."""
    return (f"{rel}/{name}" for rel, name in _data_entries(data_dir))


def known_paths(conn: sqlite3.Connection, paths: list[str]) -> set[str]:
    """Those of `paths` (at most a few hundred) that the manifest has a row for."""
    return files.known(conn, paths)


def strays(conn: sqlite3.Connection, data_dir: str, present: int) -> list[str]:
    """Files in `data/` the manifest does not know, sorted; `present` is how many of the
    manifest's `data/` rows are on disk (a subset of the walk, so equal counts mean none)."""
    if count_data_files(data_dir) == present:
        return []
    found: list[str] = []
    for batch in batched(data_files(data_dir), LOOKUP_BATCH):
        named = [p for p in batch if _is_utf8(p)]  # the manifest holds UTF-8 names only
        known = known_paths(conn, named)
        found.extend(p for p in batch if p not in known)
    return sorted(found)


def _is_utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def images_without_caption(
    conn: sqlite3.Connection, root: str, missing: set[str]
) -> Iterator[tuple[str, str | None, str]]:
    """(image, shard, caption) for images on disk whose caption is neither a manifest row
    nor a file on disk (a caption row whose file is gone is reported as missing already)."""
    rows = files.images_in_data(conn)
    while batch := rows.fetchmany(LOOKUP_BATCH):
        wanted = [(path, shard, caption_of(path, sample)) for path, shard, sample in batch]
        known = known_paths(conn, [cap for _, _, cap in wanted])
        for path, shard, cap in wanted:
            if path not in missing and cap not in known and not os.path.lexists(root + cap):
                yield path, shard, cap


def caption_of(image: str, sample: str | None) -> str:
    """The caption path (`data/<stem>.txt`) of an image path under `data/`."""
    return f"data/{sample}.txt" if sample else caption_path(image[len("data/") :])


def row_mismatches(
    conn: sqlite3.Connection, root: str, table_path: str, missing: set[str]
) -> tuple[list[tuple[str, str | None]], list[str]]:
    """(images on disk without a table row with their shard, table rows whose image is
    neither in the manifest nor on disk), both sorted.

    The table's names are streamed batch by batch (`files.table_mismatches`).
    """
    names = (
        [n for n in batch.column("filename").to_pylist() if n is not None]
        for batch in pq.ParquetFile(table_path).iter_batches(columns=["filename"])
    )
    unnamed, unknown = files.table_mismatches(conn, names)
    no_row = [(path, shard) for path, shard in unnamed if path not in missing]
    no_image = [f"data/{name}" for name in unknown if not os.path.lexists(f"{root}data/{name}")]
    return no_row, no_image
