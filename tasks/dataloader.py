"""`dataloader`: the SimpleTuner entry for this dataset in `<root>/multidatabackend.json`.

The file is the user's too. Our entry is merged three ways: what the build wrote last
time (`state/dataloader.json`), what the file holds now, and what the settings give now.
Keys the build does not write are kept; a key the build writes and the user changed by
hand is set back to the settings' value with a warning (set it in `[dataloader]` to keep
it); a key the build wrote before but no longer writes is dropped unless the user changed
it. Entries with other ids are kept. The entry written under a previous `id` is renamed,
not duplicated. A default `text_embeds` entry is added when the file has none and follows
the root when the folder moves, unless the user changed it. A symlinked file is written
through to its target. A file that is not a JSON list is never overwritten.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from state.atomic import TMP_SUFFIX, atomic_write, write_new
from tasks.settings import CAPTION_STRATEGIES, Settings

RECORD_NAME = "dataloader.json"  # under state/: the entry as the build last wrote it
TEXT_EMBEDS_ID = "text-embeds"
# keys that say where the build's output is and how to read it: a stale one breaks training
READ_KEYS = (
    "id",
    "type",
    "instance_data_dir",
    "cache_dir_vae",
    "caption_strategy",
    "metadata_backend",
    "parquet",
)
_MISSING = object()


class DataloaderFileError(ValueError):
    """`multidatabackend.json` cannot be merged into; the message is one line."""


def merge_dicts(base: dict, extra: dict) -> dict:
    """`base` updated with `extra`, nested tables merged key by key."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_dicts(out[key], value)
        else:
            out[key] = value
    return out


def dataloader_entry(settings: Settings) -> dict[str, Any]:
    """The preset's entry with absolute paths, our caption strategy and `[dataloader]` merged."""
    if settings.layout == "tars":
        from tasks.webshart_entry import webshart_entry

        return merge_dicts(webshart_entry(settings), settings.dataloader)
    entry: dict[str, Any] = {
        "id": settings.id,
        "type": "local",
        "instance_data_dir": str(settings.data_dir),
        "resolution": 1.0,
        "maximum_image_size": 2.0,
        "minimum_image_size": 0.75,
        "target_downsample_size": 1.75,
        "resolution_type": "area",
        "cache_dir_vae": str(settings.root / "cache" / "vae"),
        "caption_strategy": settings.caption_strategy,
        "metadata_backend": "parquet",
        "parquet": {
            "path": str(settings.table_path),
            "caption_column": "caption",
            "filename_column": "filename",
            "width_column": "width",
            "height_column": "height",
            "identifier_includes_extension": True,
        },
    }
    return merge_dicts(entry, settings.dataloader)


def text_embeds_entry(settings: Settings) -> dict[str, Any]:
    """A default text-embed cache entry under `<root>/cache/text`."""
    return {
        "id": TEXT_EMBEDS_ID,
        "dataset_type": "text_embeds",
        "default": True,
        "type": "local",
        "cache_dir": str(settings.root / "cache" / "text"),
    }


@dataclass
class DataloaderPlan:
    """What `write_dataloader` would write, and what it found in the file."""

    path: Path
    current: str | None  # the file's text now; None when there is no file
    entries: list = field(default_factory=list)
    record: dict = field(default_factory=dict)  # what state/dataloader.json will hold
    found: bool = False  # the file has an entry with our id
    renamed_from: str | None = None  # the id our entry had before (a one-off id=...)
    replaced: list[tuple[str, Any, Any]] = field(default_factory=list)  # (key, theirs, ours)
    stale: list[str] = field(default_factory=list)  # owned keys whose value differs now
    moved: list[str] = field(default_factory=list)  # of those, the ones written for old_root
    by_settings: list[str] = field(default_factory=list)  # the others the build wrote so
    old_root: Path | None = None  # the root our entry in the file was written for
    text_embeds: str = "kept"  # kept | added | moved
    duplicates: list[str] = field(default_factory=list)  # other ids reading our data/

    @property
    def text(self) -> str:
        return json.dumps(self.entries, indent=4, ensure_ascii=False) + "\n"

    @property
    def changed(self) -> bool:
        return self.current != self.text

    def warnings(self, settings: Settings) -> list[str]:
        """One line per thing the user should know about this write."""
        out = []
        config = settings.config_file.name if settings.config_file else "dataset.toml"
        if self.replaced:
            keys = ", ".join(f"{k} ({_short(t)} -> {_short(o)})" for k, t, o in self.replaced)
            out.append(
                f"{self.path}: entry {settings.id!r}: value(s) changed by hand replaced by the "
                f"settings' value: {keys}; set them in [dataloader] of {config} to keep them"
            )
        if self.renamed_from is not None:
            out.append(
                f"{self.path}: entry {self.renamed_from!r} (this root's previous id) is now "
                f"{settings.id!r}: one entry per data/, or SimpleTuner trains each image twice"
            )
        for other in self.duplicates:
            out.append(
                f"{self.path}: entry {other!r} also reads {settings.data_dir}: SimpleTuner "
                f"would train each image twice; remove that entry from {self.path.name} "
                "unless it is meant to (e.g. another resolution with its own cache_dir_vae)"
            )
        return out


def backend_target(path: Path) -> Path:
    """The file to write: `path` itself, or the file a symlink at `path` points to."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def read_entries(path: Path) -> tuple[str | None, list | None]:
    """(text, entries) of `multidatabackend.json`; (None, None) when it does not exist."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataloaderFileError(
            f"{path}: cannot be read ({exc}); fix it or move it away (it is never overwritten)"
        ) from exc
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataloaderFileError(
            f"{path}: not valid JSON ({exc}); fix it or move it away, then run doit "
            "(it is never overwritten)"
        ) from exc
    if not isinstance(entries, list):
        raise DataloaderFileError(
            f"{path}: expected a JSON list of dataloader entries, found a "
            f"{type(entries).__name__}; fix it or move it away (it is never overwritten)"
        )
    return text, entries


def record_path(settings: Settings) -> Path:
    return settings.state_dir / RECORD_NAME


def read_record(settings: Settings) -> dict | None:
    """What the build last wrote (our entry and text_embeds entry), or None."""
    try:
        record = json.loads(record_path(settings).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("entry"), dict):
        return None
    return record


def plan_dataloader(settings: Settings) -> DataloaderPlan:
    """Merge our entry into the file's entries, without writing anything."""
    path = settings.backend_path
    current, entries = read_entries(path)
    plan = DataloaderPlan(path=path, current=current, entries=list(entries or []))
    record = read_record(settings)
    ours = dataloader_entry(settings)
    _check_json(settings, ours)

    index = _find_ours(settings, plan, record)
    if index is None:
        plan.entries.insert(0, ours)
        old_root = settings.root
    else:
        theirs = plan.entries[index]
        base = _base_entry(settings, theirs, record)
        old_root = plan.old_root = _root_of(base, settings.root)
        plan.stale = _differing(theirs, ours)
        then = dataloader_entry(replace(settings, root=old_root, id=str(theirs.get("id"))))
        plan.moved = [k for k in plan.stale if k not in _differing(theirs, then)]
        as_written = _differing(theirs, base)
        plan.by_settings = [k for k in plan.stale if k not in plan.moved + as_written]
        plan.entries[index] = merge3(base, theirs, ours, user_wins=False, replaced=plan.replaced)

    te_base = (record or {}).get("text_embeds")
    if not isinstance(te_base, dict):
        te_base = text_embeds_entry(replace(settings, root=old_root))
    te_ours = text_embeds_entry(settings)
    plan.text_embeds = _merge_text_embeds(plan.entries, te_base, te_ours)
    plan.record = {"entry": ours, "text_embeds": te_ours}
    plan.duplicates = _duplicates(settings, plan.entries)
    return plan


def _check_json(settings: Settings, entry: dict) -> None:
    """Refuse, in one line, a `[dataloader]` value that JSON cannot hold (a TOML date, nan, inf)."""
    try:
        json.dumps(entry, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise DataloaderFileError(
            f"{settings.config_file}: [dataloader] holds a value JSON cannot hold ({exc}); "
            "use a string, number, boolean, array or table"
        ) from exc


def _find_ours(settings: Settings, plan: DataloaderPlan, record: dict | None) -> int | None:
    """Index of our entry: our id, else the entry this root was built with under another id."""
    ids = [e.get("id") if isinstance(e, dict) else None for e in plan.entries]
    if settings.id in ids:
        plan.found = True
        return ids.index(settings.id)
    if record is not None:
        previous = record["entry"].get("id")
        index = ids.index(previous) if previous is not None and previous in ids else None
    else:  # no record: an entry that reads our data/ and our table of its own id
        index = next(
            (
                i
                for i, e in enumerate(plan.entries)
                if isinstance(e, dict)
                and _same_path(e.get("instance_data_dir"), settings.data_dir)
                and isinstance(e.get("parquet"), dict)
                and _same_path(e["parquet"].get("path"), settings.root / f"{e.get('id')}.parquet")
            ),
            None,
        )
    if index is not None:
        plan.renamed_from = str(ids[index])
    return index


def _base_entry(settings: Settings, theirs: dict, record: dict | None) -> dict:
    """What the build wrote for `theirs`: the record, or (none kept) what it would have
    written then, guessed from the root and caption strategy the entry names."""
    if record is not None and record["entry"].get("id") == theirs.get("id"):
        return record["entry"]
    root = _root_of(theirs, settings.root)
    strategy = theirs.get("caption_strategy")
    if strategy not in CAPTION_STRATEGIES:
        strategy = settings.caption_strategy
    then = replace(settings, root=root, id=str(theirs.get("id")), caption_strategy=strategy)
    return dataloader_entry(then)


def _root_of(entry: dict, default: Path) -> Path:
    """The root an entry of ours was written for: its `instance_data_dir`'s parent."""
    data_dir = entry.get("instance_data_dir")
    if isinstance(data_dir, str) and Path(data_dir).name == "data":
        return Path(data_dir).parent
    return default


def merge3(
    base: dict,
    theirs: dict,
    ours: dict,
    *,
    user_wins: bool,
    replaced: list[tuple[str, Any, Any]],
    prefix: str = "",
) -> dict:
    """Three-way merge of one entry, nested dicts key by key.

    A key of `ours` takes our value unless the user changed it from `base`: then the
    user's value stays (`user_wins`) or ours replaces it and `replaced` names it. Keys only
    `theirs` has stay, except those `base` had with the same value (no longer ours).
    """
    out: dict = {}
    for key, value in ours.items():
        mine, was, name = theirs.get(key, _MISSING), base.get(key, _MISSING), prefix + key
        if isinstance(value, dict) and isinstance(mine, dict):
            was = was if isinstance(was, dict) else {}
            out[key] = merge3(
                was, mine, value, user_wins=user_wins, replaced=replaced, prefix=name + "."
            )
        elif mine is _MISSING or _same(mine, value) or _same(mine, was):
            out[key] = value
        elif user_wins:
            out[key] = mine
        else:
            out[key] = value
            replaced.append((name, mine, value))
    for key, mine in theirs.items():
        if key in ours:
            continue
        was = base.get(key, _MISSING)
        if isinstance(mine, dict) and isinstance(was, dict):
            rest = merge3(was, mine, {}, user_wins=True, replaced=replaced, prefix=prefix)
            if rest:
                out[key] = rest
        elif not _same(mine, was):
            out[key] = mine
    return out


def _merge_text_embeds(entries: list, base: dict, ours: dict) -> str:
    """Add the default text_embeds entry when there is none; move ours with the root."""
    embeds = [e for e in entries if isinstance(e, dict) and e.get("dataset_type") == "text_embeds"]
    if not embeds:
        entries.append(ours)
        return "added"
    for i, entry in enumerate(entries):
        if any(entry is e for e in embeds) and entry.get("id") == TEXT_EMBEDS_ID:
            merged = merge3(base, entry, ours, user_wins=True, replaced=[])
            if not _same(merged, entry):
                entries[i] = merged
                return "moved"
    return "kept"


def _duplicates(settings: Settings, entries: list) -> list[str]:
    """Ids of other entries that read our `data/` too."""
    return [
        str(e.get("id"))
        for e in entries
        if isinstance(e, dict)
        and e.get("id") != settings.id
        and e.get("dataset_type") != "text_embeds"
        and _same_path(e.get("instance_data_dir"), settings.data_dir)
    ]


def _differing(theirs: dict, ours: dict, prefix: str = "") -> list[str]:
    """The keys of `ours` (dotted for nested ones) whose value in `theirs` differs."""
    out = []
    for key, value in ours.items():
        mine = theirs.get(key, _MISSING)
        if isinstance(value, dict) and isinstance(mine, dict):
            out += _differing(mine, value, f"{prefix}{key}.")
        elif not _same(mine, value):
            out.append(prefix + key)
    return out


def _same(a: Any, b: Any) -> bool:
    """JSON equality that tells 1 from 1.0 and true."""
    if a is _MISSING or b is _MISSING:
        return a is b
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _same_path(value: Any, path: Path) -> bool:
    return isinstance(value, str) and os.path.normpath(value) == os.path.normpath(path)


def _short(value: Any) -> str:
    if value is _MISSING:
        return "removed"
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def dataloader_is_current(settings: Settings) -> bool:
    """doit's uptodate: the file holds what the build would write, and the record matches."""
    try:
        plan = plan_dataloader(settings)
    except (DataloaderFileError, OSError):
        return False  # the task runs and says what is wrong
    return not plan.changed and read_record(settings) == plan.record


def write_dataloader(settings: Settings) -> DataloaderPlan:
    """Write (or update in place) `multidatabackend.json`; return the plan it followed."""
    plan = plan_dataloader(settings)
    if plan.changed:
        write_through(plan.path, plan.text.encode("utf-8"))
    if read_record(settings) != plan.record:
        text = json.dumps(plan.record, indent=1, ensure_ascii=False) + "\n"
        atomic_write(record_path(settings), text.encode("utf-8"))
    return plan


def write_through(path: Path, data: bytes) -> None:
    """Write `path` atomically; a symlink stays and its target is replaced. The temporary
    file sits beside the target (same file system) and is removed when the rename fails."""
    target = backend_target(path)
    tmp = target.parent / f".{target.name}{TMP_SUFFIX}"
    write_new(tmp, data)
    try:
        os.replace(tmp, target)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
