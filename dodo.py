"""shardprep: `doit` turns tar shards into a SimpleTuner-ready folder (see README.md).

Settings in (dataset.toml, config=FILE, KEY=VALUE), task dicts out; the work is done by
the plain functions in tasks/ and state/.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import tempfile
from pathlib import Path

from doit import doit_cmd, get_var
from doit.tools import config_changed

from state.checker import checker_for
from state.manifest import connect_if_present
from state.recovery import quarantine_dep_file
from tasks import doit_actions as act
from tasks.dataloader import dataloader_entry
from tasks.freshness import (
    captions_are_current,
    scan_is_up_to_date,
    shard_is_done,
    table_is_current,
)
from tasks.settings import SettingsError, load_settings, partition_path, shard_names


def _overrides() -> dict[str, str]:
    values = dict(getattr(doit_cmd, "_CMDLINE_VARS", None) or {})
    values.pop("config", None)
    return values


try:
    SETTINGS = load_settings(get_var("config"), _overrides())
    SETTINGS_ERROR = None
    SETTINGS.state_dir.mkdir(parents=True, exist_ok=True)
except SettingsError as exc:
    SETTINGS, SETTINGS_ERROR = None, str(exc)

DEP_FILE = (
    SETTINGS.state_dir / "doit.db"
    if SETTINGS
    else Path(tempfile.gettempdir()) / "shardprep-unconfigured.doit.db"
)
if (moved := quarantine_dep_file(DEP_FILE)) is not None:
    print(
        f"warning: doit's state file {DEP_FILE} was damaged and has been moved to {moved}; "
        "the manifest still knows what is done, so nothing is redone",
        file=sys.stderr,
    )

DOIT_CONFIG = {
    "default_tasks": ["extract", "scan", "captions", "table", "dataloader", "summary"],
    "dep_file": str(DEP_FILE),
    "check_file_uptodate": checker_for(SETTINGS.root if SETTINGS else os.getcwd()),
    "action_string_formatting": "new",
}


def _failing(doc: str) -> dict:
    return {"doc": doc, "actions": [(act.fail_settings, [SETTINGS_ERROR])], "uptodate": [False]}


def _shards() -> dict[str, str]:
    """shard name -> tar path, for the tars present (the summary names those refused)."""
    return {name: str(path) for name, path in shard_names(SETTINGS)[0].items()}


def _known_shards() -> list[str]:
    """Shards the manifest has a partition for (their tar may be gone)."""
    conn = connect_if_present(SETTINGS.root)
    if conn is None:
        return []
    try:
        return [r[0] for r in conn.execute("SELECT name FROM shards WHERE part_xxh3 IS NOT NULL")]
    except sqlite3.Error:
        return []
    finally:
        conn.close()


def _all_shards() -> list[str]:
    return sorted(set(_shards()) | set(_known_shards()))


def task_extract():
    """Read each tar shard once into data/, the manifest and its partition."""
    if SETTINGS is None:
        yield {"name": None, **_failing("Read each tar shard once.")}
        return
    for name, tar in _shards().items():
        yield {
            "name": name,
            "doc": f"extract {tar}",
            "actions": [(act.run_extract, [SETTINGS, tar])],
            "file_dep": [tar],
            "targets": [str(partition_path(SETTINGS, name))],
            "uptodate": [(shard_is_done, [SETTINGS, name])],
            "verbosity": 2,
        }


def task_scan():
    """Pick up JSON files edited in data/ (stat-level); rewrite only their shards' partitions."""
    if SETTINGS is None:
        return _failing("Pick up JSON files edited in data/.")
    return {
        "actions": [(act.run_scan, [SETTINGS])],
        "task_dep": ["extract"],
        "uptodate": [(scan_is_up_to_date, [SETTINGS])],
        "verbosity": 2,
    }


def task_captions():
    """Write data/<stem>.txt per image (caption_strategy=textfile); only changed files."""
    if SETTINGS is None:
        yield {"name": None, **_failing("Write caption files.")}
        return
    present = _shards()
    for name in _all_shards():
        yield {
            "name": name,
            "actions": [(act.run_captions, [SETTINGS, name])],
            "file_dep": [str(partition_path(SETTINGS, name))] if name in present else [],
            "task_dep": ["scan"],
            "uptodate": [(captions_are_current, [SETTINGS, name])],
            "verbosity": 2,
        }


def task_table():
    """Consolidate the partitions into <root>/<id>.parquet (caption_field chosen here)."""
    if SETTINGS is None:
        return _failing("Consolidate the table.")
    return {
        "actions": [(act.run_table, [SETTINGS])],
        "file_dep": [str(partition_path(SETTINGS, n)) for n in _shards()],
        "task_dep": ["scan"],
        "targets": [str(SETTINGS.table_path)],
        "uptodate": [(table_is_current, [SETTINGS])],
        "verbosity": 2,
    }


def task_dataloader():
    """Write the SimpleTuner entry into <root>/multidatabackend.json."""
    if SETTINGS is None:
        return _failing("Write the SimpleTuner entry.")
    return {
        "actions": [(act.run_dataloader, [SETTINGS])],
        "targets": [str(SETTINGS.backend_path)],
        "uptodate": [config_changed(dataloader_entry(SETTINGS))],
        "verbosity": 2,
    }


def task_summary():
    """Print what the build holds and what was kept aside; fail if a shard was unreadable."""
    if SETTINGS is None:
        return _failing("Print the build summary.")
    return {
        "actions": [(act.run_summary, [SETTINGS])],
        "task_dep": ["extract", "scan", "captions", "table", "dataloader"],
        "uptodate": [False],
        "verbosity": 2,
    }


def task_reset_state():
    """Move a damaged manifest aside; the next doit rebuilds it from the tars and data/."""
    if SETTINGS is None:
        return _failing("Move damaged state aside.")
    return {
        "actions": [(act.run_reset_state, [SETTINGS])],
        "uptodate": [False],
        "verbosity": 2,
    }


def task_download():
    """Fetch new or changed shards of repo_id@revision from the Hub into <root>/hub/."""
    if SETTINGS is None:
        return _failing("Fetch shards from the Hub.")
    return {
        "actions": [(act.run_download, [SETTINGS])],
        "uptodate": [False],
        "verbosity": 2,
    }


def task_audit():
    """Check data/, the table and kept-aside files against the manifest (--deep: re-hash all)."""
    if SETTINGS is None:
        return _failing("Check the disk against the manifest.")
    return {
        "actions": [(act.run_audit, [SETTINGS])],
        "params": [
            {
                "name": "deep",
                "long": "deep",
                "type": bool,
                "default": False,
                "help": "re-hash every file and check images against the JSON's md5/sha512",
            }
        ],
        "uptodate": [False],
        "verbosity": 2,
    }


def task_repair():
    """Restore damaged or missing files from the tars and partitions; move strays aside."""
    if SETTINGS is None:
        return _failing("Restore damaged files.")
    return {
        "actions": [(act.run_repair, [SETTINGS])],
        "uptodate": [False],
        "verbosity": 2,
    }
