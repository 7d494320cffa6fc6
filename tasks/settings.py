"""Settings: `dataset.toml` (or `config=FILE`) plus one-off `KEY=VALUE` overrides."""

from __future__ import annotations

import contextlib
import fnmatch
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = "dataset.toml"
DALLE3_REPO = "ProGamerGov/synthetic-dataset-1m-dalle3-high-quality-captions"
CAPTION_STRATEGIES = ("textfile", "parquet")
LAYOUTS = ("folder", "tars")


class SettingsError(ValueError):
    """A setting is missing, unknown or of the wrong type; the message names key and file."""


@dataclass(frozen=True)
class Settings:
    """Everything a build needs to know, with paths made absolute."""

    root: Path
    config_file: Path | None
    id: str = "dalle3"
    shards: str = "hub/data/*.tar"
    repo_id: str = DALLE3_REPO
    revision: str = "main"
    allow_patterns: tuple[str, ...] = ("data/*.tar",)
    caption_field: tuple[str, ...] = ("short_caption",)
    caption_strategy: str = "textfile"
    join_caption_lines: bool = False
    expected_samples: int | None = None
    keep_tars: bool = True  # `doit pull`: keep each tar after its shard is built
    workers: int | None = None  # processes reading shards at once; None: the cores
    layout: str = "folder"
    dataloader: dict[str, Any] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def parts_dir(self) -> Path:
        return self.state_dir / "parts"

    @property
    def incomplete_dir(self) -> Path:
        return self.root / "incomplete"

    @property
    def table_path(self) -> Path:
        return self.root / f"{self.id}.parquet"

    @property
    def backend_path(self) -> Path:
        return self.root / "multidatabackend.json"

    def shard_paths(self) -> list[Path]:
        """The tar shards matching the `shards` glob, sorted by path."""
        return [p for p in self.shard_matches() if p.is_file()]

    def dangling_shards(self) -> list[Path]:
        """Matches of the `shards` glob that are symlinks to nothing (a cleaned Hub cache)."""
        return [p for p in self.shard_matches() if p.is_symlink() and not p.exists()]

    def shard_matches(self) -> list[Path]:
        """Every path the `shards` glob matches, sorted; a wildcard never enters the
        folders the build itself writes (`data/`, `incomplete/`, `state/`, ...)."""
        first, _, rest = self.shards.partition("/")
        if not rest or not _is_wildcard(first):
            return sorted(self.root.glob(self.shards))
        found = set()
        if first == "**":
            found.update(self.root.glob(rest))
        for child in _scandir(self.root):
            if child.name in OWN_FOLDERS or not child.is_dir():
                continue
            if first == "**":
                found.update(child.glob(self.shards))
            elif fnmatch.fnmatchcase(child.name, first):
                found.update(child.glob(rest))
        return sorted(found)


PART_FILE = "part.parquet"
# folders under root that the build (or the trainer, `cache/`) writes: never shards
OWN_FOLDERS = frozenset({"data", "incomplete", "strays", "edited", "webshart", "state", "cache"})


def _is_wildcard(part: str) -> bool:
    return any(c in part for c in "*?[")


def _scandir(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError:  # an absent root has no shards yet
        return []


def partition_path(settings: Settings, shard: str) -> Path:
    """Where the partition of `shard` lives."""
    return settings.parts_dir / f"shard={shard}" / PART_FILE


SHARD_FOLDER_SEPARATOR = "__"


def shard_name(tar_path: Path, settings: Settings | None = None) -> str:
    """A shard's name: its path below the `shards` glob's fixed folder, without `.tar`.

    A tar right in that folder is named by its file name (`hub/data/*.tar`:
    `data-000000`); one in a subfolder keeps the folders, joined by `__`
    (`hub/**/*.tar`: `hub/a/x.tar` is `a__x`, `hub/b/x.tar` is `b__x`), so two tars of
    one file name in two folders are two shards.
    """
    rel = Path(tar_path.name)
    if settings is not None:
        base = settings.root.joinpath(*_fixed_parts(settings.shards))
        with contextlib.suppress(ValueError):
            rel = Path(tar_path).relative_to(base)
    name = SHARD_FOLDER_SEPARATOR.join(rel.parts)
    return name[:-4] if name.endswith(".tar") else name


def _fixed_parts(pattern: str) -> list[str]:
    """The leading folders of a glob that hold no wildcard."""
    parts = pattern.split("/")[:-1]
    fixed = []
    for part in parts:
        if _is_wildcard(part):
            break
        fixed.append(part)
    return fixed


def shard_names(settings: Settings) -> tuple[dict[str, Path], list[str]]:
    """(name -> tar of each shard to build, one message per tar that cannot be built).

    A tar whose file name is not UTF-8, or that shares its shard name with another tar,
    is not built: the build summary names it and fails.
    """
    found: dict[str, list[Path]] = {}
    refused: list[str] = []
    for path in settings.dangling_shards():
        refused.append(
            f"{_escaped(path)} is a symlink to {_escaped(Path(os.readlink(path)))}, which does "
            "not exist (a cleaned download cache?); download the shard again, then run `doit`"
        )
    for path in settings.shard_paths():
        name = shard_name(path, settings)
        if not _is_utf8(name):
            refused.append(
                f"{_escaped(path)}: its file name is not valid UTF-8; rename it, then run `doit`"
            )
            continue
        found.setdefault(name, []).append(path)
    for name, paths in found.items():
        if len(paths) > 1:
            listed = " and ".join(str(p) for p in paths)
            refused.append(
                f"{listed} both map to shard name {name!r}; neither is extracted: rename or "
                "move one of them, then run `doit`"
            )
    return {name: paths[0] for name, paths in found.items() if len(paths) == 1}, refused


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _escaped(path: Path | str) -> str:
    """A path for one line: bytes that are not UTF-8 as `\\xNN`."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# key -> (accepted types, description used in errors)
_SCHEMA: dict[str, tuple[tuple[type, ...], str]] = {
    "id": ((str,), "a string"),
    "root": ((str,), "a path string"),
    "shards": ((str,), "a glob string"),
    "repo_id": ((str,), "a string"),
    "revision": ((str,), "a string"),
    "allow_patterns": ((list, str), "a list of glob strings"),
    "caption_field": ((list, str), "a field name or a list of field names"),
    "caption_strategy": ((str,), '"textfile" or "parquet"'),
    "join_caption_lines": ((bool,), "true or false"),
    "expected_samples": ((int,), "an integer"),
    "workers": ((int,), "a whole number of processes, 1 or more"),
    "layout": ((str,), '"folder" or "tars"'),
    "dataloader": ((dict,), "a table"),
    "keep_tars": ((bool,), "true or false"),
}
SETTING_KEYS = tuple(_SCHEMA)


def parse_cli_value(text: str) -> Any:
    """A command-line value: a TOML value when it parses as one, else the plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def load_settings(
    config: str | Path | None = None,
    overrides: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Read the config file (default `dataset.toml` in `cwd`) and apply `KEY=VALUE` overrides.

    Relative paths in the file resolve against the file's folder; relative paths given
    on the command line resolve against `cwd`.
    """
    cwd = Path(cwd or Path.cwd()).resolve()
    config_file = Path(config) if config else cwd / DEFAULT_CONFIG
    if not config_file.is_absolute():
        config_file = cwd / config_file
    if not config_file.is_file():
        where = "config=" + str(config) if config else f"{DEFAULT_CONFIG} in {cwd}"
        raise SettingsError(
            f"{config_file}: no such settings file ({where}); create it with at least "
            '`root = "..."`, or pass config=FILE'
        )
    try:
        values: dict[str, Any] = tomllib.loads(config_file.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{config_file}: not valid TOML ({exc})") from exc
    sources = {key: str(config_file) for key in values}
    for key, text in (overrides or {}).items():
        values[key] = parse_cli_value(text)
        sources[key] = "the command line"
    for key, value in values.items():
        _check(key, value, sources[key])
    if "root" not in values:
        raise SettingsError(f"{config_file}: missing required key `root` (the dataset folder)")
    base = cwd if sources["root"] == "the command line" else config_file.parent
    root = (base / values["root"]).resolve()
    if not _is_utf8(str(root)):
        raise SettingsError(
            f"{_escaped(sources['root'])}: `root` {_escaped(root)} is not valid UTF-8, and "
            "SimpleTuner's multidatabackend.json must name it; rename the folder (or a parent), "
            "then run `doit`"
        )
    if root.exists() and not root.is_dir():
        raise SettingsError(f"{sources['root']}: `root` {root} is a file, not a folder")
    if "shards" in values:
        unresolved = (base / values["root"]).absolute()
        values["shards"] = _relative_glob(values["shards"], root, unresolved, sources["shards"])
    return _build(values, root, config_file.resolve(), sources)


def _relative_glob(pattern: str, root: Path, unresolved: Path, source: str) -> str:
    """`shards` relative to root; an absolute glob is accepted when it lies under root."""
    if not Path(pattern).is_absolute():
        return pattern
    for top in (root, unresolved):
        try:
            return str(Path(pattern).relative_to(top))
        except ValueError:
            continue
    raise SettingsError(
        f"{source}: `shards` {pattern!r} is outside root {root}; give a glob relative to root"
    )


def _check(key: str, value: Any, source: str) -> None:
    if key not in _SCHEMA:
        known = ", ".join(SETTING_KEYS)
        raise SettingsError(f"{source}: unknown setting `{key}` (known: {known})")
    types, what = _SCHEMA[key]
    if isinstance(value, bool) and bool not in types:
        raise SettingsError(f"{source}: `{key}` must be {what}, got {value!r}")
    if not isinstance(value, types):
        raise SettingsError(f"{source}: `{key}` must be {what}, got {value!r}")
    if isinstance(value, list) and not all(isinstance(v, str) and v for v in value):
        raise SettingsError(f"{source}: `{key}` must be {what}, got {value!r}")
    if isinstance(value, list) and not value:
        raise SettingsError(f"{source}: `{key}` must not be empty")
    if key == "caption_strategy" and value not in CAPTION_STRATEGIES:
        raise SettingsError(f"{source}: `caption_strategy` must be {what}, got {value!r}")
    if key == "layout" and value not in LAYOUTS:
        raise SettingsError(f"{source}: `layout` must be {what}, got {value!r}")
    if key in ("id", "shards", "caption_field", "repo_id", "revision") and value == "":
        raise SettingsError(f"{source}: `{key}` must not be empty")
    if key in ("id", "shards", "repo_id", "revision") and not value.strip():
        raise SettingsError(f"{source}: `{key}` must not be blank, got {value!r}")
    if key == "root" and value == "":
        raise SettingsError(f"{source}: `root` must not be empty (the dataset folder)")
    if key == "expected_samples" and value < 0:
        raise SettingsError(f"{source}: `expected_samples` must be 0 or more, got {value}")
    if key == "workers" and value < 1:
        raise SettingsError(f"{source}: `workers` must be 1 or more, got {value}")
    if key == "id" and ("/" in value or value.startswith(".")):
        raise SettingsError(f"{source}: `id` must be a plain name, got {value!r}")


def _as_tuple(value: str | list[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _build(values: dict[str, Any], root: Path, config_file: Path, sources: dict) -> Settings:
    kwargs: dict[str, Any] = {k: v for k, v in values.items() if k != "root"}
    for key in ("allow_patterns", "caption_field"):
        if key in kwargs:
            kwargs[key] = _as_tuple(kwargs[key])
    return Settings(root=root, config_file=config_file, **kwargs)
