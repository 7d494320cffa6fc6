"""Switching caption_field / caption_strategy: exact, cheap, reversible (issue 4)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
from conftest import images_in, run_doit, snapshot, table_rows
from hypothesis import given
from hypothesis import strategies as hs

from tasks.caption_fields import caption_texts, caption_value, join_caption_lines, select_caption
from tasks.settings import Settings


def _jsons(root: Path) -> dict[Path, dict]:
    return {
        img: json.loads(img.with_suffix(".json").read_text(encoding="utf-8"))
        for img in images_in(root / "data")
    }


def _scramble_keeping_stat(path: Path) -> None:
    """Overwrite a file with junk of the same size and restore its mtime: only a reader sees it."""
    st = path.stat()
    path.write_bytes(b"#" * st.st_size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _expected(content: dict, fields: list[str]) -> str:
    """The caption rule, written out independently: first non-empty, else ""."""
    for field in fields:
        value = content.get(field)
        if isinstance(value, list):
            value = next((v for v in value if isinstance(v, str) and v), None)
        if isinstance(value, str) and value:
            return value
    return ""


def test_switch_reads_no_tar_and_no_json_and_switching_back_restores_bytes(built: Path):
    contents = _jsons(built)
    original = {img: img.with_suffix(".txt").read_bytes() for img in contents}
    hub = built / "hub"
    hub.rename(built / "hub-away")  # no tar to read
    for img in contents:  # a JSON read now would give junk
        _scramble_keeping_stat(img.with_suffix(".json"))
    media = {k: v for k, v in snapshot(built, "data").items() if not k.endswith(".txt")}

    proc = run_doit(built, "caption_field=long_caption")
    assert "extract" not in " ".join(line for line in proc.stdout.splitlines() if line[:1] == ".")
    for img, content in contents.items():
        assert img.with_suffix(".txt").read_bytes() == content["long_caption"].encode("utf-8")
    rows = {r["filename"]: r["caption"] for r in table_rows(built)}
    for img, content in contents.items():
        assert rows[img.name] == content["long_caption"]
    assert {k: v for k, v in snapshot(built, "data").items() if not k.endswith(".txt")} == media

    run_doit(built)  # dataset.toml still says short_caption
    for img in contents:
        assert img.with_suffix(".txt").read_bytes() == original[img]


def test_only_changed_caption_files_are_rewritten(built: Path):
    contents = _jsons(built)
    before = snapshot(built, "data")
    run_doit(built, 'caption_field=["short_caption2", "short_caption"]')
    after = snapshot(built, "data")
    for img, content in contents.items():
        txt = img.with_suffix(".txt")
        expected = _expected(content, ["short_caption2", "short_caption"])
        assert txt.read_text(encoding="utf-8") == expected
        key = str(txt.relative_to(built))
        assert (after[key] != before[key]) == (expected != content["short_caption"])


def test_a_list_of_fields_falls_through_absent_values(built: Path):
    contents = _jsons(built)
    # a field no sample has is an error now (tests/test_caption_policy.py): one some lack
    run_doit(built, 'caption_field=["long_caption2", "short_caption2", "long_caption"]')
    for img, content in contents.items():
        expected = _expected(content, ["long_caption2", "short_caption2", "long_caption"])
        assert img.with_suffix(".txt").read_text(encoding="utf-8") == expected


def test_parquet_strategy_removes_only_our_caption_files(built: Path):
    user_file = built / "data" / "my-notes.txt"
    user_file.write_text("mine")
    run_doit(built, "caption_strategy=parquet")
    assert sorted(p.name for p in (built / "data").glob("*.txt")) == ["my-notes.txt"]
    entry = json.loads((built / "multidatabackend.json").read_text())[0]
    assert entry["caption_strategy"] == "parquet"
    assert entry["parquet"]["caption_column"] == "caption"
    run_doit(built)
    for img in images_in(built / "data"):
        assert img.with_suffix(".txt").exists()
    assert (
        json.loads((built / "multidatabackend.json").read_text())[0]["caption_strategy"]
        == "textfile"
    )


def test_join_caption_lines_joins_multiline_captions(built: Path):
    contents = _jsons(built)
    multiline = [img for img, c in contents.items() if "\n" in c["short_caption"]]
    assert multiline
    run_doit(built, "join_caption_lines=true")
    for img in multiline:
        text = img.with_suffix(".txt").read_text(encoding="utf-8")
        assert "\n" not in text
        assert text == " ".join(
            line.strip() for line in contents[img]["short_caption"].splitlines() if line.strip()
        )


@given(
    hs.lists(
        hs.tuples(*[hs.sampled_from([None, "", "a", "b c", "two\n lines", " "])] * 3),
        max_size=20,
    ),
    hs.sampled_from(
        [
            ("short_caption",),
            ("long_caption", "short_caption"),
            ("short_caption", "original_prompt", "long_caption"),
            ("custom", "short_caption"),
        ]
    ),
    hs.booleans(),
)
def test_caption_texts_of_a_partition_agree_with_select_caption(rows, fields, join):
    """The whole-column path (every field a partition column) and the per-row path (a field
    only the JSON has) both give what select_caption gives one row at a time."""
    names = ("short_caption", "long_caption", "original_prompt")
    raws = [json.dumps({"custom": r[0]}) if r[0] is not None else "{}" for r in rows]
    table = pa.table(
        {f"cap_{n}": pa.array([r[i] for r in rows], pa.string()) for i, n in enumerate(names)}
        | {"json": pa.array(raws, pa.string())}
    )
    settings = Settings(
        root=Path("."), config_file=Path("x"), caption_field=fields, join_caption_lines=join
    )
    expected = [
        select_caption(dict(zip(names, r, strict=True)), raw, fields, join)
        for r, raw in zip(rows, raws, strict=True)
    ]
    assert caption_texts(table, settings) == expected


def test_caption_rules():
    assert caption_value(["", "b"]) == "b"
    assert caption_value("") == ""
    assert caption_value(None) is None
    assert caption_value(3) is None
    known = {"short_caption": "", "long_caption": "long"}
    assert select_caption(known, None, ("short_caption", "long_caption")) == "long"
    assert select_caption(known, None, ("short_caption",)) == ""
    raw = json.dumps({"custom": ["", "c"]})
    assert select_caption({}, raw, ("custom",)) == "c"
    assert join_caption_lines("a\n\n b \r\nc") == "a b c"


def test_rewriting_in_place_leaves_exactly_the_new_bytes(tmp_path: Path):
    """Longer, shorter, equal-length and new files: the exact bytes, and the stat returned
    is the file's own (the manifest records it)."""
    from state.atomic import write_in_place

    path = tmp_path / "sub" / "cap.txt"
    for text in ["a long caption", "short", "SHORT", "a longer caption than all", ""]:
        st = write_in_place(path, text.encode())
        assert path.read_bytes() == text.encode()
        on_disk = path.stat()
        assert (st.st_size, st.st_mtime_ns, st.st_ino) == (
            on_disk.st_size,
            on_disk.st_mtime_ns,
            on_disk.st_ino,
        )


def test_writing_if_absent_creates_once_and_never_touches_an_existing_file(tmp_path: Path):
    from state.atomic import write_if_absent

    path = tmp_path / "sub" / "cap.txt"
    st = write_if_absent(path, b"first")
    assert path.read_bytes() == b"first"
    assert (st.st_size, st.st_ino) == (5, path.stat().st_ino)
    before = path.stat()
    assert write_if_absent(path, b"second, longer") is None
    after = path.stat()
    assert path.read_bytes() == b"first"
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_the_rewriter_keeps_order_and_bytes_serial_or_threaded(tmp_path: Path):
    """Threads (chosen when the probed rewrites are slow) change nothing but the speed."""
    from state.atomic import InPlaceRewriter

    paths = [str(tmp_path / f"{i:03d}.txt") for i in range(50)]
    for path in paths:
        Path(path).write_bytes(b"an old caption, longer than some new ones")
    for slow_s, threaded in [(float("inf"), False), (-1.0, True)]:
        jobs = [(p, f"caption {i} {'x' * (i % 7)} {slow_s}".encode()) for i, p in enumerate(paths)]
        with InPlaceRewriter() as rewriter:
            rewriter.PROBE, rewriter.SLOW_S = 4, slow_s
            stats = rewriter.rewrite(jobs[:3]) + rewriter.rewrite(jobs[3:])
            assert rewriter.threaded is threaded
        for (path, data), st in zip(jobs, stats, strict=True):
            assert Path(path).read_bytes() == data
            assert (st.st_ino, st.st_size) == (os.stat(path).st_ino, len(data))
