"""The command line: what a `doit` or `shardprep` run was asked to do, and `shardprep`.

dodo.py must know before doit opens its dependency file whether the run writes (it
then takes the root's writer lock, see state/lock.py) or only reads (`list`, `help`,
`info`, `audit`: nothing may be created). doit tells a dodo file neither its command
nor its variables as a whole (`get_var` answers for one known name), so the arguments
are read here with doit's own rules: `KEY=VALUE` is a variable, the first other word
is the command when doit has one of that name, else the command is `run`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from doit.cmd_base import DodoTaskLoader
from doit.doit_cmd import DoitMain

READ_ONLY_COMMANDS = frozenset({"help", "list", "info", "dumpdb", "tabcompletion"})
READ_ONLY_TASKS = frozenset({"audit"})


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


def main(argv: list[str] | None = None) -> int:
    """`shardprep [TASK ...] [KEY=VALUE ...]`: the tasks of dodo.py, from any folder."""
    from doit.cmd_base import ModuleTaskLoader

    from tasks.doit_tasks import RunRefused, dodo_namespace

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        namespace = dodo_namespace(args, Path.cwd(), program="shardprep")
    except RunRefused as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 3
    return DoitMain(ModuleTaskLoader(namespace), config_filenames=()).run(args)


if __name__ == "__main__":
    sys.exit(main())
