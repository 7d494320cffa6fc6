"""shardprep: `doit` turns tar shards into a SimpleTuner-ready folder (see README.md).

Settings in (dataset.toml, config=FILE, KEY=VALUE), task dicts out: tasks/build/doit_tasks.py
builds them, the plain functions in tasks/ and state/ do the work. The `shardprep`
command (tasks/build/cli.py) runs the same tasks from any folder.
"""

import os
import sys

from doit import get_initial_workdir

from tasks.build.signals import on_interrupt_say_one_line

on_interrupt_say_one_line()  # before the heavier imports: a Ctrl-C while they load is one line

from tasks.build.doit_tasks import dodo_namespace  # noqa: E402

# doit chdirs to this file's folder before importing it: paths given on the command
# line resolve against the folder doit was started from
globals().update(dodo_namespace(sys.argv[1:], get_initial_workdir() or os.getcwd()))
