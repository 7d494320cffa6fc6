"""The command line: what a `doit` or `shardprep` run was asked to do, and `shardprep`.

dodo.py must know before doit opens its dependency file whether the run writes (it
then takes the root's writer lock, see state/lock.py) or only reads (`list`, `help`,
`info`, `audit`: nothing may be created). doit tells a dodo file neither its command
nor its variables as a whole (`get_var` answers for one known name), so the arguments
are read here with doit's own rules: `KEY=VALUE` is a variable, the first other word
is the command when doit has one of that name, else the command is `run`.
"""

from __future__ import annotations

import contextlib
import dbm
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import wraps
from pathlib import Path
from typing import Any, TextIO

from doit import (
    cmd_clean,
    cmd_dumpdb,
    cmd_forget,
    cmd_ignore,
    cmd_info,
    cmd_list,
    cmd_resetdep,
    cmd_strace,
)
from doit.cmd_base import Command, DodoTaskLoader
from doit.cmdparse import CmdParseError
from doit.doit_cmd import DoitMain
from doit.exceptions import InvalidCommand, InvalidDodoFile, InvalidTask

from tasks.settings import SettingsError

READ_ONLY_COMMANDS = frozenset({"help", "list", "info", "dumpdb", "tabcompletion"})
READ_ONLY_TASKS = frozenset({"audit"})
DOIT_USER_ERRORS = (CmdParseError, InvalidCommand, InvalidDodoFile, InvalidTask)


def _value_options() -> frozenset[str]:
    """Every doit option that takes a value (`-n 2`), so its value is not a task name."""
    found = set()
    for cmd in DoitMain.DOIT_CMDS:
        opts = [*cmd.cmd_options, *getattr(cmd, "base_options", ()), *DodoTaskLoader.cmd_options]
        for opt in opts:
            if opt.get("type") is bool:
                continue
            if opt.get("short"):
                found.add("-" + opt["short"])
            if opt.get("long"):
                found.add("--" + opt["long"])
    return frozenset(found)


@dataclass(frozen=True)
class CommandLine:
    """A run's command (`run`, `list`, ...), its task words and its `KEY=VALUE` variables."""

    command: str = "run"
    tasks: tuple[str, ...] = ()
    variables: dict[str, str] = field(default_factory=dict)

    @property
    def writes(self) -> bool:
        """Whether the run may write the root (or doit's state file in it)."""
        if self.command in READ_ONLY_COMMANDS:
            return False
        if self.command != "run" or not self.tasks:
            return True
        return any(t.split(":", 1)[0] not in READ_ONLY_TASKS for t in self.tasks)


def parse_command_line(argv: list[str]) -> CommandLine:
    """Read `argv` (without the program name) as doit does."""
    value_options = _value_options()
    names = {cmd.get_name() for cmd in DoitMain.DOIT_CMDS}
    variables: dict[str, str] = {}
    words: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg.startswith("-"):
            skip = arg in value_options
        elif "=" in arg:
            key, value = arg.split("=", 1)
            variables[key] = value
        else:
            words.append(arg)
    if words and words[0] in names:
        return CommandLine(words[0], tuple(words[1:]), variables)
    return CommandLine("run", tuple(words), variables)


def output_to_devnull(stream: TextIO) -> None:
    """Send what is still to be written to `stream` (a pipe whose reader is gone) nowhere."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, stream.fileno())
    finally:
        os.close(devnull)
    with contextlib.suppress(OSError):
        stream.flush()  # what was buffered for the gone reader now goes nowhere


def _in_one_line(name: str, call: Callable[[], int]) -> int:
    """Run a doit command's work: an error doit does not expect (a task name it does not
    know, a file it cannot open) is one `ERROR:` line, not a traceback."""
    try:
        return call()
    except DOIT_USER_ERRORS:
        raise  # doit prints these as one line itself
    except BrokenPipeError:  # `doit list | head -1`: the reader has what it wanted
        output_to_devnull(sys.stdout)
        return 0
    except Exception as exc:  # noqa: BLE001 - any other failure is one line too
        what = str(exc).strip().replace("\n", " ") or type(exc).__name__
        if isinstance(exc, KeyError):
            what = f"{exc} is not a task; `doit list --all` names them"
        sys.stderr.write(f"ERROR: `doit {name}` failed: {what}\n")
        return 3


# doit's commands that load dodo.py; their work (`_execute`) runs after it is loaded
_LOADING_COMMANDS = (
    cmd_list.List,
    cmd_info.Info,
    cmd_forget.Forget,
    cmd_ignore.Ignore,
    cmd_clean.Clean,
    cmd_strace.Strace,
    cmd_resetdep.ResetDep,
)


def guard_doit_commands() -> None:
    """Make the commands of `_LOADING_COMMANDS` say an unexpected error in one line.

    Called while dodo.py loads, so it holds however doit was started (installed or not).
    """
    for cls in _LOADING_COMMANDS:
        work = cls._execute
        if getattr(work, "_shardprep_guarded", False):
            continue

        @wraps(work)  # doit passes the parameters that `_execute`'s signature names
        def guarded(self: Command, *args: Any, _work: Callable = work, **kwargs: Any) -> int:
            return _in_one_line(self.get_name(), lambda: _work(self, *args, **kwargs))

        guarded._shardprep_guarded = True  # type: ignore[attr-defined]
        cls._execute = guarded


class DumpDB(cmd_dumpdb.DumpDB):
    """`doit dumpdb` (which loads no dodo.py) shows the root's own state file,
    `<root>/state/doit.db`, by default; pyproject.toml puts it in place of doit's."""

    def execute(self, params: dict, args: list[str]) -> int:
        return _in_one_line("dumpdb", lambda: self._dump(params, args))

    def _dump(self, params: dict, args: list[str]) -> int:
        if params["dep_file"] == cmd_dumpdb.opt_depfile["default"]:
            try:
                params["dep_file"] = str(_root_dep_file())
            except SettingsError as exc:
                sys.stderr.write(f"ERROR: {exc}\n")
                return 3
        if dbm.whichdb(params["dep_file"]) is None:
            sys.stderr.write(
                f"ERROR: {params['dep_file']}: no doit state saved there yet; run `doit` first\n"
            )
            return 3
        return super().execute(params, args)


DUMPDB = f"{__name__}:DumpDB"  # as doit names a command plugin (pyproject.toml names it too)


def _root_dep_file() -> Path:
    """doit's state file of the root the command line's settings name."""
    from doit import get_initial_workdir, get_var

    from tasks.settings import SETTING_KEYS, load_settings

    overrides = {k: v for k in SETTING_KEYS if (v := get_var(k)) is not None}
    cwd = Path(get_initial_workdir() or Path.cwd())
    return load_settings(get_var("config"), overrides, cwd=cwd).state_dir / "doit.db"


def main(argv: list[str] | None = None) -> int:
    """`shardprep [TASK ...] [KEY=VALUE ...]`: the tasks of dodo.py, from any folder."""
    from doit.cmd_base import ModuleTaskLoader

    from tasks.build.signals import on_interrupt_say_one_line

    on_interrupt_say_one_line()  # before the heavier imports: a Ctrl-C meanwhile is one line
    from tasks.build.doit_tasks import RunRefused, dodo_namespace

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        namespace = dodo_namespace(args, Path.cwd(), program="shardprep")
    except RunRefused as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 3
    doit = DoitMain(
        ModuleTaskLoader(namespace),
        config_filenames=(),
        extra_config={"COMMAND": {"dumpdb": DUMPDB}},
    )
    return doit.run(args)


if __name__ == "__main__":
    sys.exit(main())


def task_name(shard: str) -> str:
    """A shard's name as a doit subtask name: doit forbids `=`, so `%` and `=` are escaped
    (`split=train` -> `split%3Dtrain`); `shard_of_task_name` reverses it."""
    return shard.replace("%", "%25").replace("=", "%3D")


def shard_of_task_name(name: str) -> str:
    """The shard a subtask name stands for (the inverse of `task_name`)."""
    return name.replace("%3D", "=").replace("%25", "%")
