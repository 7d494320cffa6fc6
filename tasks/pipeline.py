"""The whole build as plain function calls, in doit's order, for scripts and tests.

`doit` is the way to run the build (it skips what is up to date and runs shards in
parallel); this is the same work without doit, each step deciding from the manifest.
"""

from __future__ import annotations

from tasks.captions import write_captions
from tasks.dataloader import write_dataloader
from tasks.extract import extract_shard
from tasks.scan import scan_edits
from tasks.settings import Settings, shard_names
from tasks.summary import BuildSummary, summarize
from tasks.table import build_table


def build(settings: Settings) -> BuildSummary:
    """Extract every shard, pick up edits, write captions, the table and the entry."""
    for tar in shard_names(settings)[0].values():
        extract_shard(settings, tar)
    scan = scan_edits(settings)
    if scan.errors:
        raise ValueError("\n".join(scan.errors))
    summary = summarize(settings)
    for name in summary.shard_names:
        write_captions(settings, name)
    build_table(settings)
    write_dataloader(settings)
    return summary
