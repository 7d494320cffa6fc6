"""`doit pull`: from the Hub to a trainer-ready folder in one pipelined pass.

`run_pull` fetches and extracts (tasks/pull/pipeline.py), then runs the build's later
steps exactly as plain `doit` would: scan, captions, table, dataloader, summary.
"""

from __future__ import annotations

from doit.exceptions import TaskFailed

from tasks.settings import Settings


def run_pull(settings: Settings) -> TaskFailed | None:
    """The action of `doit pull`: one line per failure, the summaries on stdout."""
    from tasks.download import DownloadError
    from tasks.pull.pipeline import pull

    try:
        summary = pull(settings)
    except DownloadError as exc:
        return TaskFailed(str(exc))
    failed = _later_steps(settings)
    print(summary.describe(), flush=True)
    if summary.failed:
        return TaskFailed("\n".join(summary.failed))
    return failed


def _later_steps(settings: Settings) -> TaskFailed | None:
    """scan (when not up to date), captions of every shard, table, dataloader, summary:
    what plain `doit` runs after extracting (each of them skips what is current)."""
    from tasks.build import actions as act
    from tasks.build.doit_tasks import _known_shards
    from tasks.freshness import scan_is_up_to_date
    from tasks.settings import shard_names

    failed = None
    if not scan_is_up_to_date(settings):
        failed = act.run_scan(settings)
    names = sorted(set(shard_names(settings)[0]) | set(_known_shards(settings)))
    for name in names:
        failed = act.run_captions(settings, name) or failed
    failed = act.run_table(settings) or failed
    failed = act.run_dataloader(settings) or failed
    return act.run_summary(settings) or failed
