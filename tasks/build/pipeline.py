"""The whole build as plain function calls, in doit's order, for scripts and tests.

`doit` is the way to run the build (it skips what is up to date and runs shards in
parallel); this is the same work without doit, each step deciding from the manifest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from tasks.build.steps import STEPS
from tasks.captions import write_captions
from tasks.dataloader import entry_before_captions_go, write_dataloader
from tasks.extract.pool import reader_for
from tasks.extract.shard import extract_shard
from tasks.scan import scan_edits
from tasks.settings import Settings, shard_names
from tasks.summary import BuildSummary, summarize
from tasks.table import build_table


def _extract(settings: Settings) -> None:
    reader = reader_for(settings)
    for tar in shard_names(settings)[0].values():
        extract_shard(settings, tar, reader)


def _scan(settings: Settings) -> None:
    scan = scan_edits(settings)
    if scan.errors:
        raise ValueError("\n".join(scan.errors))


def _captions(settings: Settings) -> None:
    entry_before_captions_go(settings)  # under parquet, before any .txt is removed
    for name in summarize(settings).shard_names:
        write_captions(settings, name)


RUNNERS: dict[str, Callable[[Settings], object]] = {
    "extract": _extract,
    "scan": _scan,
    "captions": _captions,
    "table": build_table,
    "dataloader": write_dataloader,
    "summary": summarize,
}


def build(settings: Settings) -> BuildSummary:
    """Run every step of `STEPS` in order; the summary step's result is returned."""
    result = None
    for step in STEPS:
        result = RUNNERS[step](settings)
    return cast(BuildSummary, result)  # the last step is the summary
