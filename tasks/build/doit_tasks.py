"""The task dicts doit runs, built from the settings and the command line.

dodo.py (for `doit`) and tasks/build/cli.py (for `shardprep`) both call `dodo_namespace`; the
work itself is done by the plain functions in tasks/ and state/ (via tasks/doit_actions).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sqlite3
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from doit import Globals
from doit.exceptions import InvalidDodoFile

from state import lock, shards
from state.checker import checker_for
from state.manifest import open_readonly
from state.recovery import DEP_SUFFIXES, quarantine_dep_file
from tasks.build import actions as act
from tasks.build.cli import (
    READ_ONLY_COMMANDS,
    CommandLine,
    guard_doit_commands,
    output_to_devnull,
    parse_command_line,
    task_name,
)
from tasks.build.signals import on_interrupt_say_one_line
from tasks.build.steps import STEPS
from tasks.freshness import (
    captions_are_current,
    dataloader_is_current,
    scan_is_up_to_date,
    shard_is_done,
    table_is_current,
)
from tasks.settings import Settings, SettingsError, load_settings, partition_path, shard_names
from tasks.tar_index import index_up_to_date

DEFAULT_TASKS = list(STEPS)


class RunRefused(InvalidDodoFile):
    """This run may not start (another run writes the root, or it cannot be written);
    doit prints the message as one `ERROR:` line and exits 3."""


def dodo_namespace(argv: list[str], cwd: Path, program: str = "doit") -> dict:
    """DOIT_CONFIG and the task creators for a run given `argv` from the folder `cwd`."""
    line = parse_command_line(argv)
    on_interrupt_say_one_line()
    _survive_a_closed_pipe()
    guard_doit_commands()
    settings, error = _load(line, cwd)
    if error is not None and line.command not in READ_ONLY_COMMANDS:
        raise RunRefused(error)  # `list` and `help` still show the tasks
    if settings is not None and line.writes:
        dep_file = _take_root(settings, [program, *argv])
    else:
        dep_file = _scratch_dep_file()
        if settings is not None and line.command in READ_ONLY_COMMANDS:
            _say_if_a_build_is_running(settings)
    config = {
        "default_tasks": DEFAULT_TASKS,
        "dep_file": str(dep_file),
        "check_file_uptodate": checker_for(settings.root if settings else Path(cwd)),
        "action_string_formatting": "new",
        # doit took its default output stream when it was imported: give it the guarded one
        "outfile": sys.stdout,
    }
    return {"DOIT_CONFIG": config, **_creators(settings, error, dep_file)}


def _load(line: CommandLine, cwd: Path) -> tuple[Settings | None, str | None]:
    overrides = {k: v for k, v in line.variables.items() if k != "config"}
    try:
        return load_settings(line.variables.get("config"), overrides, cwd=cwd), None
    except SettingsError as exc:
        return None, str(exc)


def _take_root(settings: Settings, argv: list[str]) -> Path:
    """Take the writer lock of the root; return doit's dependency file beside it."""
    try:
        lock.acquire(settings.root, argv)
    except lock.LockHeld as exc:
        raise RunRefused(str(exc)) from None
    except OSError as exc:
        raise RunRefused(
            f"{settings.root}: the dataset folder cannot be written "
            f"({exc.strerror or exc}: {exc.filename}); fix its permissions or choose another "
            "`root`"
        ) from None
    dep_file = settings.state_dir / "doit.db"
    _drop_an_unsaved_dep_file(dep_file)
    if (moved := quarantine_dep_file(dep_file)) is not None:
        print(
            f"warning: doit's state file {dep_file} was damaged and has been moved to "
            f"{moved}; the manifest still knows what is done, so nothing is redone",
            file=sys.stderr,
        )
    return dep_file


def _drop_an_unsaved_dep_file(dep_file: Path) -> None:
    """Remove what a first run killed before doit saved its state leaves: an empty `.dat`
    alone (dbm.dumb creates it on open and writes the rest on close). It is no damage."""
    dat = Path(f"{dep_file}.dat")
    others = [s for s in DEP_SUFFIXES if s != ".dat" and Path(f"{dep_file}{s}").exists()]
    with contextlib.suppress(OSError):
        if not others and dat.stat().st_size == 0:
            dat.unlink()


def _say_if_a_build_is_running(settings: Settings) -> None:
    if (holder := lock.running_writer(settings.root)) is not None:
        print(f"note: a build is running ({holder}) on {settings.root}", file=sys.stderr)


def _scratch_dep_file() -> Path:
    """doit's dependency file for a run that writes nothing: a temporary one, removed at exit.

    A read-only run must create nothing under root (which may be read-only or absent);
    its tasks (`audit`) are never up to date, so doit's memory of them is not needed.
    """
    path = Path(tempfile.gettempdir()) / f"shardprep-{os.getpid()}.doit.db"
    atexit.register(_remove_dep_files, path)
    return path


def _remove_dep_files(path: Path) -> None:
    # `list` and `help` never close doit's file, and dbm writes it when it is collected
    if Globals.dep_manager is not None:
        with contextlib.suppress(Exception):
            Globals.dep_manager.close()
    for suffix in DEP_SUFFIXES:
        Path(f"{path}{suffix}").unlink(missing_ok=True)


class _ClosedPipeSafe:
    """A standard stream whose reader may leave (`doit | head -1`): from then on its output
    goes to /dev/null and the run goes on, instead of a BrokenPipeError traceback."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._reader_is_gone()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._reader_is_gone()

    def _reader_is_gone(self) -> None:
        output_to_devnull(self._stream)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _survive_a_closed_pipe() -> None:
    """Wrap the process's own stdout and stderr (not a test's capture) in `_ClosedPipeSafe`."""
    if sys.stdout is sys.__stdout__ and sys.stdout is not None:
        sys.stdout = _ClosedPipeSafe(sys.stdout)  # type: ignore[assignment]
    if sys.stderr is sys.__stderr__ and sys.stderr is not None:
        sys.stderr = _ClosedPipeSafe(sys.stderr)  # type: ignore[assignment]


def _guard_dep_file_save(dep_file: Path) -> None:
    """A failed save of doit's dependency file (disk full) is one warning, not a traceback.

    The manifest records every finished piece of work, so the next run redoes nothing.
    """
    manager = Globals.dep_manager
    if manager is None or getattr(manager, "_shardprep_guarded", False):
        return
    close = manager.close

    def guarded_close() -> None:
        try:
            close()
        except OSError as exc:
            print(
                f"warning: doit's state file {dep_file} could not be saved "
                f"({exc.strerror or exc}); the manifest knows what is done, "
                "so the next run redoes nothing",
                file=sys.stderr,
            )

    manager.close = guarded_close
    manager._shardprep_guarded = True


# The makers of the task dicts, one per task family, in the order `doit` runs them. Each
# takes the settings and returns doit's dict (or the dicts of its subtasks); `_creators`
# turns them into the `task_<name>` creators of one run.

TaskMaker = Callable[[Settings], "dict | Iterator[dict]"]
_TASKS: dict[str, tuple[TaskMaker, str, bool]] = {}  # name -> (maker, doc, has subtasks)


def creator(doc: str, subtasks: bool = False) -> Callable[[TaskMaker], TaskMaker]:
    """Register `task_<name>` as the maker of task `name`, with its help text."""

    def register(make: TaskMaker) -> TaskMaker:
        _TASKS[make.__name__.removeprefix("task_")] = (make, doc, subtasks)
        return make

    return register


def _present_shards(s: Settings) -> dict[str, str]:
    """shard name -> tar path, for the tars present."""
    # tars that cannot be shards are named by the summary
    return {name: str(path) for name, path in shard_names(s)[0].items()}


def _all_shards(s: Settings) -> list[str]:
    """Present shards and those the manifest has a partition for."""
    return sorted(set(_present_shards(s)) | set(_known_shards(s)))


@creator("Read each tar shard once into data/, the manifest and its partition.", subtasks=True)
def task_extract(s: Settings) -> Iterator[dict]:
    for name, tar in _present_shards(s).items():
        yield {
            "name": task_name(name),
            "doc": f"extract {tar}",
            "actions": [(act.run_extract, [s, tar])],
            "file_dep": [tar],
            "targets": [str(partition_path(s, name))],
            "uptodate": [(shard_is_done, [s, name])],
        }


@creator("Pick up JSON files edited in data/ (stat-level); rewrite only their partitions.")
def task_scan(s: Settings) -> dict:
    if s.layout == "tars":  # no data/: the samples' JSON stays in the tars
        return {"actions": [], "task_dep": ["extract"]}
    return {
        "actions": [(act.run_scan, [s])],
        "task_dep": ["extract"],
        "uptodate": [(scan_is_up_to_date, [s])],
    }


@creator(
    "Write data/<stem>.txt per image (caption_strategy=textfile); only changed.", subtasks=True
)
def task_captions(s: Settings) -> Iterator[dict]:
    present = _present_shards(s)
    for name in _all_shards(s):
        if s.layout == "tars":
            yield index_task(s, name, present)
            continue
        yield {
            "name": task_name(name),
            "actions": [(act.run_captions, [s, name])],
            "file_dep": [str(partition_path(s, name))] if name in present else [],
            "task_dep": ["scan"],
            "uptodate": [(captions_are_current, [s, name])],
        }


@creator("Consolidate the partitions into <root>/<id>.parquet (caption_field chosen here).")
def task_table(s: Settings) -> dict:
    return {
        "actions": [(act.run_table, [s])],
        "file_dep": [str(partition_path(s, n)) for n in _present_shards(s)],
        "task_dep": ["scan"],
        "targets": [str(s.table_path)],
        "uptodate": [(table_is_current, [s])],
    }


@creator("Write the SimpleTuner entry into <root>/multidatabackend.json.")
def task_dataloader(s: Settings) -> dict:
    return {
        "actions": [(act.run_dataloader, [s])],
        "targets": [str(s.backend_path)],
        "uptodate": [(dataloader_is_current, [s])],
    }


@creator("Print what the build holds and what was kept aside; fail if a shard was unreadable.")
def task_summary(s: Settings) -> dict:
    return {
        "actions": [(act.run_summary, [s])],
        "task_dep": [step for step in STEPS if step != "summary"],
        "uptodate": [False],
    }


@creator("Move a damaged manifest aside; the next doit rebuilds it from the tars and data/.")
def task_reset_state(s: Settings) -> dict:
    return {"actions": [(act.run_reset_state, [s])], "uptodate": [False]}


@creator("Fetch new or changed shards of repo_id@revision from the Hub into <root>/hub/.")
def task_download(s: Settings) -> dict:
    return {"actions": [(act.run_download, [s])], "uptodate": [False]}


@creator("Fetch new or changed shards of repo_id@revision and build them, pipelined.")
def task_pull(s: Settings) -> dict:
    from tasks.pull import run_pull  # loaded only when the task runs

    return {"actions": [(run_pull, [s])], "uptodate": [False]}


_DEEP = {
    "name": "deep",
    "long": "deep",
    "type": bool,
    "default": False,
    "help": "re-hash every file and check images against the JSON's md5/sha512",
}


@creator("Check data/, the table and kept-aside files against the manifest (--deep: re-hash).")
def task_audit(s: Settings) -> dict:
    return {"actions": [(act.run_audit, [s])], "params": [_DEEP], "uptodate": [False]}


@creator("Restore damaged or missing files from the tars and partitions; move strays aside.")
def task_repair(s: Settings) -> dict:
    return {"actions": [(act.run_repair, [s])], "uptodate": [False]}


def _creators(settings: Settings | None, error: str | None, dep_file: Path) -> dict:
    """The task creators (`task_<name>` functions) of one run."""
    return {
        f"task_{name}": _creator(make, doc, subtasks, settings, error, dep_file)
        for name, (make, doc, subtasks) in _TASKS.items()
    }


def _creator(
    make: TaskMaker,
    doc: str,
    subtasks: bool,
    settings: Settings | None,
    error: str | None,
    dep_file: Path,
) -> Callable:
    """A `task_<name>` function: the settings error, the dep-file guard, verbosity 2."""

    def task_creator():
        _guard_dep_file_save(dep_file)
        if settings is None:
            failing = {"actions": [(act.fail_settings, [error])], "uptodate": [False]}
            made = [{"name": None, **failing}] if subtasks else failing
        else:
            made = make(settings)
        if subtasks:
            return ({"doc": doc, "verbosity": 2, **t} for t in made)
        return {"doc": doc, "verbosity": 2, **made}

    task_creator.__doc__ = doc
    return task_creator


def index_task(s: Settings, name: str, present: dict[str, str]) -> dict:
    """`captions:<shard>` under `layout = "tars"`: the shard's webshart index."""
    return {
        "name": task_name(name),
        "doc": f"webshart index of shard {name}",
        "actions": [(act.run_index, [s, name])],
        "file_dep": [str(partition_path(s, name))] if name in present else [],
        "task_dep": ["scan"],
        "uptodate": [(index_up_to_date, [s, name])],
    }


def _known_shards(settings: Settings) -> list[str]:
    """Shards the manifest has a partition for (their tar may be gone)."""
    conn = open_readonly(settings.root)
    if conn is None:
        return []
    try:
        return [name for name, _ in shards.with_partition(conn)]
    except sqlite3.Error:
        return []
    finally:
        conn.close()
