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

Refused in one line, writing nothing: an `id` that is the text_embeds entry's (or another
non-image entry's, or one of an image entry no build wrote), and an entry of our id that
another root wrote into this same file (two roots sharing one file through a symlink). A
second entry with our id is named, not merged.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from state.atomic import DiskFullError, atomic_write
from state.through import write_through
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
    copies: list[tuple[int, bool]] = field(default_factory=list)  # (place, reads our data/)
    written: bool = False  # write_dataloader changed the file

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
        out += [f"{self.path}: {line}" for line in self.copy_lines(settings)]
        return out

    def copy_lines(self, settings: Settings) -> list[str]:
        """One line per further entry with our id (a copy of ours made by hand)."""
        out = []
        for place, reads_ours in self.copies:
            reads = f"it also reads {settings.data_dir}: SimpleTuner would train each image twice; "
            twice = reads if reads_ours else ""
            out.append(
                f"entry {place} of the list has id {settings.id!r} too (only the first is "
                f"kept up to date; SimpleTuner needs one entry per id): {twice}remove the "
                "copy, or give it an id of its own"
            )
        return out


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
    _check_strategy(settings, ours)
    _check_id(settings, plan)

    index = _find_ours(settings, plan, record)
    if index is None:
        plan.entries.insert(0, ours)
        old_root = settings.root
    else:
        theirs = plan.entries[index]
        _check_foreign(settings, plan, theirs, record)
        _check_owner(settings, plan, theirs)
        plan.copies = _copies(settings, plan.entries, index)
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


def check_id(settings: Settings) -> None:
    """Raise `DataloaderFileError` for an `id` that is not ours to take in the file (see
    `_check_id`, `_check_foreign`), so that nothing is written under it (`<id>.parquet`)."""
    try:
        current, entries = read_entries(settings.backend_path)
    except DataloaderFileError:
        return  # the dataloader task says what is wrong with the file
    plan = DataloaderPlan(path=settings.backend_path, current=current, entries=entries or [])
    _check_id(settings, plan)
    record = read_record(settings)
    index = _find_ours(settings, plan, record)
    if index is not None:
        _check_foreign(settings, plan, plan.entries[index], record)


def _check_strategy(settings: Settings, entry: dict) -> None:
    """Refuse a `[dataloader]` caption_strategy of textfile when the build writes no `.txt`:
    SimpleTuner would find no caption for any image."""
    if settings.caption_strategy != "textfile" and entry.get("caption_strategy") == "textfile":
        raise DataloaderFileError(
            f'{_config_name(settings)}: [dataloader] caption_strategy = "textfile" but '
            f"caption_strategy = {settings.caption_strategy!r} writes no .txt files: set "
            "`caption_strategy` itself (not in [dataloader])"
        )


def _check_id(settings: Settings, plan: DataloaderPlan) -> None:
    """Refuse an id that names the text_embeds entry (or any entry that is not for images):
    our image entry would be merged into it."""
    clash = next(
        (
            e
            for e in plan.entries
            if isinstance(e, dict)
            and e.get("id") == settings.id
            and e.get("dataset_type") not in (None, "image")
        ),
        None,
    )
    if clash is None and settings.id != TEXT_EMBEDS_ID:
        return
    what = (
        f"the id of its {clash.get('dataset_type')} entry"
        if clash is not None
        else "the id the build gives the text_embeds entry"
    )
    raise DataloaderFileError(
        f"{plan.path}: id {settings.id!r} is {what}, and our image entry would be merged "
        f"into it: choose another `id` (in {_config_name(settings)}, or id=... on the "
        "command line)"
    )


def _check_foreign(
    settings: Settings, plan: DataloaderPlan, theirs: dict, record: dict | None
) -> None:
    """Refuse an id that names an image entry no build wrote (the user's other dataset):
    neither the record's nor shaped like ours (a table named `<id>.parquet`)."""
    if not plan.found or (record is not None and record["entry"].get("id") == settings.id):
        return
    parquet = theirs.get("parquet")
    path = parquet.get("path") if isinstance(parquet, dict) else None
    if isinstance(path, str) and Path(path).name == f"{settings.id}.parquet":
        return
    if _same_path(theirs.get("instance_data_dir"), settings.data_dir):
        return
    raise DataloaderFileError(
        f"{plan.path}: id {settings.id!r} is the id of an entry this build did not write "
        f"(it reads {theirs.get('instance_data_dir')}), and ours would replace it: choose "
        f"another `id` (in {_config_name(settings)}, or id=... on the command line)"
    )


def _check_owner(settings: Settings, plan: DataloaderPlan, theirs: dict) -> None:
    """Refuse to take over an entry another root wrote into this same file (a symlink
    shared by two roots): that root still exists and its own file is this one."""
    other = _root_of(theirs, settings.root)
    if os.path.normpath(other) == os.path.normpath(settings.root):
        return
    try:
        if os.path.samefile(other, settings.root):
            return  # this root under another name (a symlink or a bind mount)
        shared = os.path.samefile(other / plan.path.name, plan.path)
    except OSError:
        return  # that root is gone, or has no file of its own: the folder was moved
    if shared:
        raise DataloaderFileError(
            f"{plan.path}: entry {theirs.get('id')!r} belongs to {other} (it reads "
            f"{other / 'data'}), which writes this same file: give this root an id of its "
            f"own (`id` in {_config_name(settings)}) so both entries stay"
        )


def _copies(settings: Settings, entries: list, index: int) -> list[tuple[int, bool]]:
    """(place in the list, reads our data/) of the entries after ours that have our id."""
    return [
        (i + 1, _same_path(e.get("instance_data_dir"), settings.data_dir))
        for i, e in enumerate(entries)
        if i != index and isinstance(e, dict) and e.get("id") == settings.id
    ]


def _config_name(settings: Settings) -> str:
    return str(settings.config_file) if settings.config_file else "dataset.toml"


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


def write_dataloader(settings: Settings) -> DataloaderPlan:
    """Write (or update in place) `multidatabackend.json`; return the plan it followed.

    Writers of one file take turns (parallel tasks of a run, two roots sharing the file).
    A file that cannot be written raises `DataloaderFileError` with a one-line message.
    """
    with _turn(settings.backend_path):
        plan = plan_dataloader(settings)
        if plan.changed:
            try:
                write_through(plan.path, plan.text.encode("utf-8"))
            except DiskFullError:
                raise
            except OSError as exc:
                raise DataloaderFileError(
                    f"{plan.path}: cannot be written ({exc.strerror or exc}: "
                    f"{exc.filename or plan.path}); fix that and run doit again"
                ) from exc
            plan.written = True
        if read_record(settings) != plan.record:
            text = json.dumps(plan.record, indent=1, ensure_ascii=False) + "\n"
            atomic_write(record_path(settings), text.encode("utf-8"))
    return plan


def entry_before_captions_go(settings: Settings) -> list[str]:
    """Under `caption_strategy = "parquet"`, put the entry in place before the `.txt` files
    are removed, so training works at every moment; return its warnings if it was written.

    Raises `DataloaderFileError` when it cannot be written (the `.txt` files must stay).
    """
    if settings.caption_strategy == "textfile":
        return []
    plan = write_dataloader(settings)
    return plan.warnings(settings) if plan.written else []


@contextlib.contextmanager
def _turn(path: Path) -> Iterator[None]:
    """Hold an `flock` on the folder of `path` (followed through a symlink) while inside."""
    try:
        fd = os.open(os.path.dirname(os.path.realpath(path)), os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        fd = -1  # the write that follows says what is wrong with the folder
    try:
        if fd >= 0:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        if fd >= 0:
            os.close(fd)
