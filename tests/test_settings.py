"""Settings: the file, the command line, and one-line errors that name key and file."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_doit

from tasks.settings import SettingsError, load_settings, parse_cli_value


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dataset.toml"
    path.write_text(text)
    return path


def test_defaults_and_relative_root(tmp_path: Path):
    s = load_settings(_write(tmp_path, 'root = "ds"\n'))
    assert s.root == (tmp_path / "ds").resolve()
    assert s.id == "dalle3"
    assert s.caption_field == ("short_caption",)
    assert s.allow_patterns == ("data/*.tar",)
    assert s.table_path == s.root / "dalle3.parquet"


def test_command_line_values_parse_as_toml_else_strings(tmp_path: Path):
    cfg = _write(tmp_path, 'root = "."\n')
    s = load_settings(
        cfg,
        {
            "caption_field": '["long_caption", "short_caption"]',
            "expected_samples": "12",
            "id": "dalle3-long",
        },
    )
    assert s.caption_field == ("long_caption", "short_caption")
    assert s.expected_samples == 12
    assert s.id == "dalle3-long"
    assert parse_cli_value("long_caption") == "long_caption"


def test_root_on_the_command_line_resolves_against_the_working_directory(tmp_path: Path):
    cfg = _write(tmp_path, 'root = "."\n')
    s = load_settings(cfg, {"root": "other"}, cwd=tmp_path / "cwd")
    assert s.root == (tmp_path / "cwd" / "other").resolve()


@pytest.mark.parametrize(
    ("text", "overrides", "expected"),
    [
        ('root = "."\ncaption_feild = "x"\n', {}, "unknown setting `caption_feild`"),
        ('root = "."\nexpected_samples = "many"\n', {}, "`expected_samples` must be an integer"),
        ('root = "."\ncaption_strategy = "json"\n', {}, "`caption_strategy` must be"),
        ('id = "x"\n', {}, "missing required key `root`"),
        ('root = "."\n', {"caption_field": "[1, 2]"}, "the command line: `caption_field`"),
        ('root = "."\n[dataloader\n', {}, "not valid TOML"),
    ],
)
def test_errors_name_the_key_and_the_file(tmp_path, text, overrides, expected):
    cfg = _write(tmp_path, text)
    with pytest.raises(SettingsError) as err:
        load_settings(cfg, overrides)
    message = str(err.value)
    assert expected in message
    assert "\n" not in message
    if not overrides:
        assert str(cfg) in message


def test_missing_config_file_is_a_clear_error(tmp_path: Path):
    with pytest.raises(SettingsError, match="no such settings file"):
        load_settings(None, cwd=tmp_path)


def test_doit_reports_a_bad_setting_and_fails(tmp_path: Path):
    cfg = _write(tmp_path, 'root = "."\ncaption_strategy = 3\n')
    proc = run_doit(tmp_path, check=False, config=cfg)
    assert proc.returncode != 0
    assert "`caption_strategy` must be" in proc.stdout + proc.stderr
    listing = run_doit(tmp_path, "list", config=cfg)
    assert "extract" in listing.stdout and "table" in listing.stdout


@pytest.mark.parametrize(
    ("text", "overrides", "expected"),
    [
        ('root = "."\nexpected_samples = -1\n', {}, "`expected_samples` must be 0 or more, got -1"),
        ('root = "."\n', {"root": ""}, "the command line: `root` must not be empty"),
        ('root = ""\n', {}, "`root` must not be empty"),
        ('root = "."\nshards = "/elsewhere/*.tar"\n', {}, "`shards` '/elsewhere/*.tar' is outside"),
        ('root = "afile"\n', {}, "is a file, not a folder"),
    ],
)
def test_more_settings_that_are_one_line_errors(tmp_path, text, overrides, expected):
    (tmp_path / "afile").write_text("x")
    cfg = _write(tmp_path, text)
    with pytest.raises(SettingsError) as err:
        load_settings(cfg, overrides, cwd=tmp_path)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_an_absolute_shards_glob_under_root_is_accepted(dataset: Path):
    glob = str(dataset / "hub" / "data" / "*.tar")
    s = load_settings(dataset / "dataset.toml", {"shards": glob})
    assert s.shards == "hub/data/*.tar"
    assert len(s.shard_paths()) == 3
    run_doit(dataset, f"shards={glob}")
    assert (dataset / "dalle3.parquet").is_file()


def test_a_glob_that_matches_no_tar_warns_naming_it(tmp_path: Path):
    cfg = _write(tmp_path, 'root = "."\nshards = "nothing/*.tar"\n')
    proc = run_doit(tmp_path, config=cfg)
    assert "warning: no tar matches shards = 'nothing/*.tar' under " + str(tmp_path) in proc.stdout


def test_a_bad_setting_stops_a_build_in_one_line(tmp_path: Path):
    cfg = _write(tmp_path, 'root = "."\nexpected_samples = -5\n')
    proc = run_doit(tmp_path, check=False, config=cfg)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        f"ERROR: {cfg}: `expected_samples` must be 0 or more, got -5"
    ]
    assert proc.stdout == ""
