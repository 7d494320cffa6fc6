"""`doit` on generated shards matches an independent re-implementation of the preset."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import images_in, run_doit, table_rows
from preset_reference import run_preset

from sample.generate import QUIRK_INDEX, plan_dataset


def _preset(root: Path, tmp_path: Path, field: str = "short_caption") -> tuple[list[dict], Path]:
    """The preset's rows for samples whose image exists, and its data folder."""
    work = tmp_path / "preset"
    rows = run_preset(sorted((root / "hub" / "data").glob("*.tar")), work, field)
    data = work / "data"
    rows = [r for r in rows if (data / r["filename"]).exists()]
    return sorted(rows, key=lambda r: r["filename"]), data


def test_rows_match_the_preset_and_keep_samples_without_size(built: Path, tmp_path: Path):
    preset_rows, _ = _preset(built, tmp_path)
    ours = table_rows(built)
    by_name = {r["filename"]: r for r in ours}
    assert len(by_name) == len(ours)
    for row in preset_rows:
        assert by_name[row["filename"]] == row
    extra = sorted(set(by_name) - {r["filename"] for r in preset_rows})
    specs = {s.image_name: s for s in plan_dataset(3, 12) if s.complete}
    assert extra == sorted(n for n, s in specs.items() if not s.has_size)
    for name in extra:  # size from the image header when the JSON lacks it
        assert (by_name[name]["width"], by_name[name]["height"]) == (
            specs[name].width,
            specs[name].height,
        )
    assert sorted(by_name) == sorted(specs)


def test_table_has_the_preset_columns_and_types(built: Path):
    import pyarrow.parquet as pq

    schema = pq.read_schema(built / "dalle3.parquet")
    assert schema.names == ["width", "height", "caption", "filename"]
    assert [str(t) for t in schema.types] == ["int64", "int64", "string", "string"]


def test_caption_files_are_byte_identical_to_the_preset(built: Path, tmp_path: Path):
    _, preset_data = _preset(built, tmp_path)
    images = images_in(built / "data")
    assert images
    compared = 0
    for image in images:
        ours = image.with_suffix(".txt").read_bytes()
        theirs = preset_data / image.with_suffix(".txt").name
        if theirs.exists():
            assert ours == theirs.read_bytes(), image.name
            compared += 1
        else:  # the preset skips JSON without width; the caption is still the JSON's field
            content = json.loads(image.with_suffix(".json").read_text(encoding="utf-8"))
            assert "width" not in content
            assert ours == content["short_caption"].encode("utf-8")
    assert compared >= len(images) - 3


def test_data_is_trainer_safe(built: Path):
    rows = {r["filename"] for r in table_rows(built)}
    images = images_in(built / "data")
    assert len(images) == len(rows) == 3 * 10
    for image in images:
        rel = str(image.relative_to(built / "data"))
        assert rel in rows
        assert image.with_suffix(".json").exists()
        assert image.with_suffix(".txt").exists()


def test_incomplete_samples_are_kept_aside_and_listed(dataset: Path):
    proc = run_doit(dataset)
    aside = sorted(
        p.relative_to(dataset / "incomplete")
        for p in (dataset / "incomplete").rglob("*")
        if p.is_file()
    )
    specs = [s for s in plan_dataset(3, 12) if not s.complete]
    assert len(aside) == len(specs) == 6
    for spec in specs:
        member = (spec.json_member or spec.image_member).removeprefix("./")
        assert Path(f"data-{spec.shard:06d}") / member in aside
        assert not (dataset / "data" / member).exists()
    assert "kept aside: 6 file(s)" in proc.stdout
    assert "json_without_image" in proc.stdout and "image_without_json" in proc.stdout


def test_quirky_sizes_read_as_int_like_the_preset(built: Path):
    rows = {r["filename"]: r for r in table_rows(built)}
    for quirk in ("size_str", "size_float"):
        spec = next(s for s in plan_dataset(3, 12) if s.index == QUIRK_INDEX[quirk])
        assert (rows[spec.image_name]["width"], rows[spec.image_name]["height"]) == (
            spec.width,
            spec.height,
        )


def test_dataloader_entry_keeps_other_entries_and_merges_settings(dataset: Path):
    other = [{"id": "mine", "type": "local", "instance_data_dir": "/elsewhere"}]
    (dataset / "multidatabackend.json").write_text(json.dumps(other))
    with open(dataset / "dataset.toml", "a") as f:
        f.write('\n[dataloader]\nresolution = 1024\nparquet = { caption_column = "caption" }\n')
    run_doit(dataset)
    entries = json.loads((dataset / "multidatabackend.json").read_text())
    ours = next(e for e in entries if e.get("id") == "dalle3")
    assert entries[1] == other[0] or other[0] in entries
    assert ours["instance_data_dir"] == str(dataset.resolve() / "data")
    assert ours["parquet"]["path"] == str(dataset.resolve() / "dalle3.parquet")
    assert ours["parquet"]["identifier_includes_extension"] is True
    assert ours["metadata_backend"] == "parquet"
    assert ours["caption_strategy"] == "textfile"
    assert ours["resolution"] == 1024
    assert ours["parquet"]["filename_column"] == "filename"
    assert sum(1 for e in entries if e.get("dataset_type") == "text_embeds") == 1


def test_summary_reports_counts(dataset: Path):
    proc = run_doit(dataset)
    assert "3 shard(s), 30 sample(s) in dalle3.parquet" in proc.stdout
