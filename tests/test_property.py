"""Property: random small shards with random damage keep every invariant of the build."""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
from conftest import images_in
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tarbuild import M, jpeg, png, sample_json, write_tar

from tasks.build.pipeline import build
from tasks.settings import load_settings

UNSAFE = ["../up.png", "/abs.json", "a/../../b.json"]


@st.composite
def shard_plan(draw, index: int):
    """(members, keys expected in the table) for one shard, and whether it is cut short."""
    members: list[M] = []
    good: set[str] = set()
    for i in range(draw(st.integers(0, 6))):
        key = f"s{index}k{i}"
        ext = draw(st.sampled_from([".png", ".jpg", ".jpeg"]))
        image = png(i + 1) if ext == ".png" else jpeg(i + 1)
        fate = draw(st.sampled_from(["ok", "ok", "no_json", "no_image", "bad_json", "empty"]))
        prefix = draw(st.sampled_from(["", "./", "sub/"]))
        name = prefix + key
        if fate != "no_json":
            raw = b'{"width": ' if fate == "bad_json" else sample_json(key, ext)
            members.append(M(name + ".json", raw))
        if fate != "no_image":
            members.append(M(name + ext, b"" if fate == "empty" else image))
        if fate == "ok":
            good.add(prefix.removeprefix("./") + key + ext)
    if draw(st.booleans()):
        members.insert(draw(st.integers(0, len(members))), M(draw(st.sampled_from(UNSAFE)), png()))
    if draw(st.booleans()):
        members.append(M("link.png", type=tarfile.SYMTYPE, linkname="/etc/passwd"))
    cut = draw(st.one_of(st.none(), st.floats(0.05, 0.95)))
    return members, good, cut


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.tuples(shard_plan(0), shard_plan(1), shard_plan(2)))
def test_random_damage_keeps_the_invariants(plans):
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        root = base / "ds"
        expected: set[str] = set()
        for index, (members, good, cut) in enumerate(plans):
            tar = write_tar(root / "hub/data" / f"data-{index:06d}.tar", members)
            if cut is not None:
                data = tar.read_bytes()
                tar.write_bytes(data[: int(len(data) * cut)])
            else:
                expected |= good
        (root / "dataset.toml").write_text('root = "."\n')
        settings_ = load_settings(root / "dataset.toml")
        summary = build(settings_)

        assert sorted(p.name for p in base.iterdir()) == ["ds"]  # nothing outside root
        rows = pq.read_table(root / "dalle3.parquet").to_pylist()
        filenames = [r["filename"] for r in rows]
        assert len(filenames) == len(set(filenames))
        assert expected <= set(filenames)  # every good sample of a readable shard
        data = root / "data"
        on_disk = {str(p.relative_to(data)) for p in images_in(data)}
        assert on_disk == set(filenames)  # trainer-safe: images and rows agree
        for name in filenames:
            assert (data / name).with_suffix(".json").is_file()
            assert (data / name).with_suffix(".txt").is_file()
        cut_shards = {f"data-{i:06d}" for i, (_, _, cut) in enumerate(plans) if cut is not None}
        assert set(summary.failed) <= cut_shards
