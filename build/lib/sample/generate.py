"""Deterministic, offline sample data in the DALL·E 3 1M layout.

`make_dataset` writes WebDataset tar shards ``<root>/hub/data/data-NNNNNN.tar`` where
each sample is ``<key>.json`` followed by ``<key>.png|.jpg|.jpeg``. The same arguments
always give byte-identical shards, and keys never collide across shard numbers, so
shards added later with ``start=`` extend a dataset like new Hub shards do.

With ``quirks=True`` every shard holds the data problems listed in `QUIRKS` at fixed
sample indices (see `describe_quirks`). `plan_dataset` returns what will be written
(keys, members, sizes, quirks) without writing anything, for tests to compare against.

CLI: ``python -m sample.generate DIR [--shards N] [--samples N] [--seed S] [--large]
[--no-quirks] [--start K] [--jobs J]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import sys
import tarfile
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sample.images import jpeg_bytes, png_bytes

EXTENSIONS = (".png", ".jpg", ".jpeg")
TAR_MTIME = 1_700_000_000  # fixed member mtime (2023-11-14), so shards are reproducible
SHARD_DIR = Path("hub") / "data"

# Sample index within every shard -> quirk name (quirks=True). Other indices are clean.
QUIRKS: dict[int, str] = {
    1: "no_size",
    2: "size_str",
    3: "size_float",
    4: "unicode",
    5: "newlines",
    6: "empty_caption",
    7: "json_only",
    8: "image_only",
    9: "dot_slash",
    10: "dot_slash_image",
}
QUIRK_INDEX: dict[str, int] = {name: index for index, name in QUIRKS.items()}
QUIRK_DESCRIPTIONS: dict[str, str] = {
    "no_size": "JSON has neither width nor height (the preset drops the sample)",
    "size_str": 'width and height are strings, e.g. "48"',
    "size_float": "width and height are floats, e.g. 48.0",
    "unicode": "short_caption and long_caption contain Japanese, emoji and accents",
    "newlines": "short_caption and long_caption contain embedded newlines",
    "empty_caption": 'short_caption is ""',
    "json_only": "the JSON is in the tar, its image is not",
    "image_only": "the image is in the tar, its JSON is not",
    "dot_slash": "both members are written as ./<key>.json and ./<key>.<ext>",
    "dot_slash_image": "only the image member has the ./ prefix",
}

UNICODE_SHORT = "日本語のキャプション: a café crème, a naïve façade and a 🎨 palette 🐱"
UNICODE_LONG = (
    "桜の木の下で猫が眠っている。Ångström-scale détails, señor, smørrebrød 🍣🌸 — "
    "«guillemets» and “curly quotes”."
)
NEWLINE_SHORT = "First line of the caption.\nSecond line.\n\nFourth line after a blank one."
NEWLINE_LONG = "A long caption\nthat spans\nseveral lines."

_SUBJECTS = ("cat", "lighthouse", "robot", "teapot", "forest", "city", "dragon", "violin")
_STYLES = ("watercolor", "oil painting", "photograph", "pixel art", "3D render", "sketch")
_MOODS = ("at dawn", "in the rain", "under neon lights", "on a quiet beach", "in winter")
_SOURCES = ("DALL-E 3", "DALL-E 3", "DALL-E 3", "Midjourney")
_MASK64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """SplitMix64 finaliser: a bijection on 64-bit integers that looks random."""
    x &= _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def sample_key(seed: int, shard: int, index: int) -> str:
    """The 16-hex-digit key of sample ``index`` in shard ``shard``.

    For one seed, distinct (shard, index) pairs always give distinct keys (the mixing is
    a bijection), so shards made in separate batches with ``start=`` never collide.
    """
    if not (0 <= shard < 1 << 32 and 0 <= index < 1 << 32):
        raise ValueError("shard and index must be within 0 .. 2**32-1")
    return f"{_mix64(((shard << 32) | index) ^ _mix64(seed ^ 0x9E3779B97F4A7C15)):016x}"


def shard_name(shard: int) -> str:
    """``data-NNNNNN.tar`` for a shard number."""
    return f"data-{shard:06d}.tar"


@dataclass(frozen=True)
class SampleSpec:
    """What the generator writes for one sample (no bytes, just the plan)."""

    shard: int
    index: int
    key: str
    ext: str
    width: int
    height: int
    large: bool
    quirk: str | None
    json_member: str | None  # tar member name of the JSON, None when absent
    image_member: str | None  # tar member name of the image, None when absent

    @property
    def image_name(self) -> str:
        """The JSON's ``image_name``: the image's base name with extension."""
        return self.key + self.ext

    @property
    def has_size(self) -> bool:
        """True when the JSON exists and has width/height (the preset makes a row)."""
        return self.json_member is not None and self.quirk != "no_size"

    @property
    def complete(self) -> bool:
        """True when both the JSON and the image are in the tar."""
        return self.json_member is not None and self.image_member is not None

    @property
    def image_seed(self) -> int:
        """Seed of the pixel content (derived from the key)."""
        return int(self.key, 16)


def plan_shard(
    shard: int,
    samples_per_shard: int = 12,
    seed: int = 0,
    large: bool = False,
    quirks: bool = True,
) -> list[SampleSpec]:
    """The samples of one shard, in tar order, without generating any bytes."""
    specs = []
    for index in range(samples_per_shard):
        key = sample_key(seed, shard, index)
        rng = random.Random(int(key, 16))
        ext = EXTENSIONS[(shard + index) % len(EXTENSIONS)]
        if large:
            width, height = (1024, 1024) if index % 2 == 0 else (1792, 1024)
        else:
            width = rng.randint(8, 64)
            height = width if rng.random() < 0.25 else rng.randint(8, 64)
        quirk = QUIRKS.get(index) if quirks else None
        json_member: str | None = key + ".json"
        image_member: str | None = key + ext
        if quirk == "dot_slash":
            json_member, image_member = "./" + key + ".json", "./" + key + ext
        elif quirk == "dot_slash_image":
            image_member = "./" + key + ext
        elif quirk == "json_only":
            image_member = None
        elif quirk == "image_only":
            json_member = None
        specs.append(
            SampleSpec(
                shard, index, key, ext, width, height, large, quirk, json_member, image_member
            )
        )
    return specs


def plan_dataset(
    shards: int = 3,
    samples_per_shard: int = 12,
    seed: int = 0,
    large: bool = False,
    quirks: bool = True,
    start: int = 0,
) -> list[SampleSpec]:
    """All samples `make_dataset` with the same arguments writes, shard by shard."""
    return [
        spec
        for shard in range(start, start + shards)
        for spec in plan_shard(shard, samples_per_shard, seed, large, quirks)
    ]


def image_bytes(spec: SampleSpec) -> bytes:
    """The image file of a sample (PNG, or JPEG for .jpg/.jpeg); large PNGs are noisy."""
    if spec.ext == ".png":
        return png_bytes(spec.width, spec.height, spec.image_seed, noisy=spec.large)
    return jpeg_bytes(spec.width, spec.height, spec.image_seed)


def _caption(rng: random.Random) -> tuple[str, str]:
    subject, style, mood = rng.choice(_SUBJECTS), rng.choice(_STYLES), rng.choice(_MOODS)
    short = f"A {style} of a {subject} {mood}."
    long = (
        f"A detailed {style} showing a {subject} {mood}, with "
        f"{rng.choice(_SUBJECTS)}s in the background and soft light across the scene."
    )
    return short, long


def sample_json(spec: SampleSpec, image: bytes) -> dict[str, Any]:
    """The JSON record of a sample, every field of the real schema (quirks applied)."""
    rng = random.Random(int(spec.key, 16) ^ 0x5EED)
    short, long = _caption(rng)
    if spec.quirk == "unicode":
        short, long = UNICODE_SHORT, UNICODE_LONG
    elif spec.quirk == "newlines":
        short, long = NEWLINE_SHORT, NEWLINE_LONG
    elif spec.quirk == "empty_caption":
        short = ""
    record: dict[str, Any] = {
        "image_name": spec.image_name,
        "md5_pil_hash": hashlib.md5(b"pil:" + spec.key.encode()).hexdigest(),
        "md5_file_hash": hashlib.md5(image).hexdigest(),
        "sha512_hash": hashlib.sha512(image).hexdigest(),
        "short_caption": short,
        "long_caption": long,
        "resolution": f"{spec.width}x{spec.height}",
        "url": f"https://cdn.example.invalid/dalle3/{spec.image_name}",
        "width": spec.width,
        "height": spec.height,
        "source": _SOURCES[spec.index % len(_SOURCES)],
        "original_prompt": f"{short} Prompt #{spec.index}.",
    }
    variant = spec.index % 3  # caption2 fields: absent, strings, lists of strings
    if variant == 1:
        record["short_caption2"] = _caption(rng)[0]
        record["long_caption2"] = _caption(rng)[1]
    elif variant == 2:
        record["short_caption2"] = [_caption(rng)[0], _caption(rng)[0]]
        record["long_caption2"] = [_caption(rng)[1]]
    if spec.quirk == "no_size":
        del record["width"], record["height"]
    elif spec.quirk == "size_str":
        record["width"], record["height"] = str(spec.width), str(spec.height)
    elif spec.quirk == "size_float":
        record["width"], record["height"] = float(spec.width), float(spec.height)
    return record


def _tar_header(name: str, size: int) -> bytes:
    """A GNU tar header block for a regular file, as `tarfile` writes it.

    Fixed mode 0644, uid/gid 0, empty owner names and mtime `TAR_MTIME`, so shards are
    reproducible. Written by hand because `tarfile` spends most of the time per member
    building headers; tests check the bytes equal `tarfile.TarInfo.tobuf`.
    """
    raw = name.encode()
    if len(raw) > 100:  # never for generated keys; let tarfile write a GNU long name
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode, info.uname, info.gname = size, TAR_MTIME, 0o644, "", ""
        return info.tobuf(tarfile.GNU_FORMAT)
    header = bytearray(512)
    header[0 : len(raw)] = raw
    header[100:124] = b"0000644\x00" + b"0000000\x00" + b"0000000\x00"  # mode, uid, gid
    header[124:136] = b"%011o\x00" % size
    header[136:148] = b"%011o\x00" % TAR_MTIME
    header[148:156] = b" " * 8  # checksum field counts as spaces
    header[156:157] = tarfile.REGTYPE
    header[257:265] = tarfile.GNU_MAGIC
    header[148:156] = b"%06o\x00 " % sum(header)
    return bytes(header)


def write_shard(path: Path, specs: Iterable[SampleSpec]) -> int:
    """Write one tar shard (atomically, via a temporary name); returns its member count.

    The layout is what `tarfile` writes in GNU format: header, data padded to 512
    bytes per member, two zero blocks, and zero padding to a 10240-byte record.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    members = 0
    offset = 0
    with open(tmp, "wb") as out:

        def add(name: str, data: bytes) -> None:
            nonlocal members, offset
            pad = -len(data) % tarfile.BLOCKSIZE
            out.write(_tar_header(name, len(data)) + data + b"\x00" * pad)
            members += 1
            offset += tarfile.BLOCKSIZE + len(data) + pad

        for spec in specs:
            image = image_bytes(spec)
            if spec.json_member is not None:
                add(
                    spec.json_member,
                    json.dumps(sample_json(spec, image), ensure_ascii=False).encode(),
                )
            if spec.image_member is not None:
                add(spec.image_member, image)
        offset += 2 * tarfile.BLOCKSIZE
        out.write(b"\x00" * (2 * tarfile.BLOCKSIZE + -offset % tarfile.RECORDSIZE))
    os.replace(tmp, path)
    return members


def _make_shard(job: tuple[Path, int, int, int, bool, bool]) -> tuple[Path, int, int]:
    """Write one shard of a dataset; returns (path, samples, members). Picklable job."""
    root, shard, samples_per_shard, seed, large, quirks = job
    path = root / SHARD_DIR / shard_name(shard)
    members = write_shard(path, plan_shard(shard, samples_per_shard, seed, large, quirks))
    return path, samples_per_shard, members


def _make_shards(
    root: Path,
    shards: int,
    samples_per_shard: int,
    seed: int,
    large: bool,
    quirks: bool,
    start: int,
    jobs: int,
) -> Iterator[tuple[Path, int, int]]:
    """Write the shards (in ``jobs`` processes when > 1), yielding results in shard order."""
    work = [
        (Path(root), shard, samples_per_shard, seed, large, quirks)
        for shard in range(start, start + shards)
    ]
    if jobs <= 1 or len(work) <= 1:
        yield from map(_make_shard, work)
        return
    with ProcessPoolExecutor(max_workers=min(jobs, len(work))) as pool:
        yield from pool.map(_make_shard, work)


def make_dataset(
    root: Path,
    shards: int = 3,
    samples_per_shard: int = 12,
    seed: int = 0,
    large: bool = False,
    quirks: bool = True,
    start: int = 0,
    jobs: int = 1,
) -> list[Path]:
    """Write shards ``start .. start+shards-1`` to ``root/hub/data/``; return their paths.

    Byte-identical for the same arguments (``jobs``, the number of worker processes,
    changes only the speed). Existing shards of the same number are overwritten. See
    `plan_dataset` for the samples and `QUIRKS` for the quirks.
    """
    made = _make_shards(root, shards, samples_per_shard, seed, large, quirks, start, jobs)
    return [path for path, _, _ in made]


def describe_quirks(samples_per_shard: int = 12) -> list[dict[str, Any]]:
    """The quirks every shard holds with ``quirks=True``: index, name, description.

    Only indices below ``samples_per_shard`` exist; the default of 12 holds them all.
    """
    return [
        {"index": index, "name": name, "description": QUIRK_DESCRIPTIONS[name]}
        for index, name in sorted(QUIRKS.items())
        if index < samples_per_shard
    ]


# ------------------------------------------------------------------------ config

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key, ensure_ascii=False)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | os.PathLike):
        # A JSON string is a valid TOML basic string (same escapes, no "\/" emitted).
        return json.dumps(os.fspath(value), ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as a TOML value")


def write_config(root: Path, /, **settings: Any) -> Path:
    """Write ``root/dataset.toml``: ``root = "."`` plus ``settings``; return its path.

    Values may be strings, paths, ints, floats, bools and lists of those; a dict becomes
    a table (e.g. ``dataloader={"resolution": 1.0}`` → ``[dataloader]``). A ``root``
    setting replaces the default ``"."``.
    """
    root = Path(root)
    settings = {"root": ".", **settings}
    tables = {k: v for k, v in settings.items() if isinstance(v, dict)}
    lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in settings.items() if k not in tables]
    for name, table in tables.items():
        lines += ["", f"[{_toml_key(name)}]"]
        lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items()]
    root.mkdir(parents=True, exist_ok=True)
    path = root / "dataset.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: make shards and (if absent) ``DIR/dataset.toml``."""
    parser = argparse.ArgumentParser(
        prog="python -m sample.generate",
        description="Write deterministic DALL·E 3-style WebDataset shards to DIR/hub/data/.",
    )
    parser.add_argument("dir", type=Path, help="dataset root (gets hub/data/ and dataset.toml)")
    parser.add_argument("--shards", type=int, default=3, help="number of shards (default 3)")
    parser.add_argument("--samples", type=int, default=12, help="samples per shard (default 12)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    parser.add_argument("--large", action="store_true", help="1024x1024 / 1792x1024 images")
    parser.add_argument("--no-quirks", action="store_true", help="only complete, clean samples")
    parser.add_argument("--start", type=int, default=0, help="first shard number (default 0)")
    parser.add_argument(
        "--jobs", type=int, default=1, help="worker processes (default 1; output is the same)"
    )
    args = parser.parse_args(argv)
    if args.shards < 0 or args.samples < 0 or args.start < 0:
        parser.error("--shards, --samples and --start must not be negative")

    began = time.perf_counter()
    total_bytes = 0
    quirks = not args.no_quirks
    made = _make_shards(
        args.dir, args.shards, args.samples, args.seed, args.large, quirks, args.start, args.jobs
    )
    for path, samples, members in made:
        size = path.stat().st_size
        total_bytes += size
        print(f"wrote {path} ({samples} samples, {members} members, {size:,} bytes)", flush=True)
    config = args.dir / "dataset.toml"
    if config.exists():
        print(f"kept {config}")
    else:
        print(f"wrote {write_config(args.dir)}")
    elapsed = time.perf_counter() - began
    print(
        f"{args.shards} shards, {args.shards * args.samples} samples, "
        f"{total_bytes:,} bytes in {elapsed:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
