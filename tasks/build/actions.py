"""The functions doit runs: each calls one task's plain function and reports on it.

Module-level functions only (no lambdas or closures), so `doit -P process` can send
them to worker processes. A known failure becomes a `TaskFailed` with a one-line
message; doit then exits non-zero. Each function imports its task's module when it
runs: a no-op `doit` runs none of them, and so never imports pyarrow or sqlite-utils.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from doit.exceptions import TaskFailed

from state import lock
from state.atomic import DiskFullError
from state.manifest import ManifestError, manifest_path, unreadable_manifest
from state.recovery import reset_state
from tasks.settings import Settings

EXAMPLES = 5  # files named per kind in a task's output
KNOWN_FAILURES = (DiskFullError, ManifestError, ValueError, OSError, sqlite3.Error)


def describe_failure(exc: BaseException, settings: Settings) -> str:
    """One line for a known failure; SQLite's "disk is full" names the folder."""
    if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc):
        return (
            f"no space left on the device of {settings.state_dir} (writing the manifest): "
            "free some space and run `doit` again (nothing half-written counts as done)"
        )
    if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
        return str(unreadable_manifest(manifest_path(settings.root), exc))
    return str(exc)


def fail_settings(message: str) -> TaskFailed:
    """The action of every task when the settings could not be read."""
    return TaskFailed(message)


def run_extract(settings: Settings, tar: str, reader=None) -> TaskFailed | None:
    """Extract one shard (read by a worker process ahead of time when `workers` allows, or
    by `reader`: `doit pull`'s); a shard that cannot be read is reported by `summary`."""
    from tasks.extract.pool import reader_for
    from tasks.extract.shard import extract_shard

    try:
        r = extract_shard(settings, Path(tar), reader or reader_for(settings))
    except KNOWN_FAILURES as exc:
        return TaskFailed(f"{tar}: {describe_failure(exc, settings)}")
    if r.status == "failed":
        print(f"ERROR {r.error}", flush=True)
    elif r.status == "extracted":
        print(
            f"{r.shard}: {r.samples} samples, {r.aside} file(s) kept aside, "
            f"{r.written} file(s) written",
            flush=True,
        )
    elif r.status == "renamed":
        print(f"{r.shard}: same bytes as an extracted shard that was renamed: nothing to extract")
    return None


def run_scan(settings: Settings) -> TaskFailed | None:
    """Pick up edited JSON files; warn naming any JSON that cannot be used."""
    from tasks.scan import scan_edits

    try:
        r = scan_edits(settings)
    except KNOWN_FAILURES as exc:
        return TaskFailed(f"scan of data/: {describe_failure(exc, settings)}")
    if r.edited:
        print(
            f"{len(r.edited)} edited JSON file(s) picked up; partitions rewritten: "
            f"{', '.join(r.rebuilt)}",
            flush=True,
        )
    elif r.rebuilt:
        print(f"partitions rebuilt from data/: {', '.join(r.rebuilt)}", flush=True)
    for error in r.errors:  # a JSON the user broke is a quirk: the other work goes on
        print(f"warning: {error}", flush=True)
    return None


def run_captions(settings: Settings, shard: str) -> TaskFailed | None:
    """Write or remove the caption files of one shard (under parquet, after the entry)."""
    from tasks.caption_fields import CaptionFieldError
    from tasks.captions import write_captions
    from tasks.dataloader import entry_before_captions_go

    try:
        for line in entry_before_captions_go(settings):
            print(f"warning: {line}", flush=True)
    except KNOWN_FAILURES as exc:
        return TaskFailed(
            f"captions of {shard}: the caption files stay until the dataloader entry says "
            f"parquet: {describe_failure(exc, settings)}"
        )
    try:
        r = write_captions(settings, shard)
    except CaptionFieldError as exc:
        return TaskFailed(str(exc))
    except KNOWN_FAILURES as exc:
        return TaskFailed(f"captions of {shard}: {describe_failure(exc, settings)}")
    if not r.up_to_date and (r.written or r.removed):
        print(
            f"{shard}: {r.written} caption file(s) written, {r.removed} removed, "
            f"{r.unchanged} unchanged",
            flush=True,
        )
    for line in describe_caption_edits(r):
        print(line, flush=True)
    for line in r.failed[:EXAMPLES]:  # the summary fails the run; other shards go on
        print(f"ERROR captions of {shard}: {line}", flush=True)
    if len(r.failed) > EXAMPLES:
        print(f"  ... and {len(r.failed) - EXAMPLES} more caption file(s) not written", flush=True)
    return None


def run_index(settings: Settings, shard: str) -> TaskFailed | None:
    """Write (or remove) the webshart index of one shard (`layout = "tars"`)."""
    from tasks.caption_fields import CaptionFieldError
    from tasks.tar_index import write_index

    try:
        r = write_index(settings, shard)
    except CaptionFieldError as exc:
        return TaskFailed(str(exc))
    except KNOWN_FAILURES as exc:
        return TaskFailed(f"webshart index of {shard}: {describe_failure(exc, settings)}")
    if r.written:
        print(f"{shard}: webshart index written ({r.samples} samples)", flush=True)
    elif r.removed:
        print(f"{shard}: webshart index removed (the shard does not read to its end)")
    if r.unseen:
        print(
            f"warning: {r.unseen} is a symlink (or lies in a symlinked folder): webshart "
            "ignores it, so SimpleTuner will not train on this shard; copy or hard-link it",
            flush=True,
        )
    if r.forgotten:
        print(
            f"{shard}: {len(r.forgotten)} stale SimpleTuner/webshart cache file(s) of the old "
            "index removed (rebuilt at the next training start)",
            flush=True,
        )
    return None


def describe_caption_edits(r) -> list[str]:
    """Lines naming the caption files edited by hand that a captions run kept or moved."""
    lines = []
    if r.kept_edited:
        lines.append(
            f"{r.shard}: {len(r.kept_edited)} caption file(s) edited by hand kept as they are "
            "(the table's caption column keeps the caption field's text):"
        )
        lines += [f"  {p}" for p in r.kept_edited[:EXAMPLES]]
        if len(r.kept_edited) > EXAMPLES:
            lines.append(f"  ... and {len(r.kept_edited) - EXAMPLES} more (`doit audit`)")
    if r.moved_edited:
        lines.append(
            f"warning: {r.shard}: {len(r.moved_edited)} caption file(s) edited by hand were "
            "replaced by the new caption text; your version is kept at:"
        )
        lines += [f"  {a} -> {b}" for a, b in r.moved_edited[:EXAMPLES]]
        if len(r.moved_edited) > EXAMPLES:
            lines.append(f"  ... and {len(r.moved_edited) - EXAMPLES} more (`doit audit`)")
    return lines


def run_table(settings: Settings) -> TaskFailed | None:
    """Consolidate the partitions into the table."""
    from tasks.caption_fields import CaptionFieldError
    from tasks.dataloader import DataloaderFileError
    from tasks.table import build_table

    try:
        r = build_table(settings)
    except (CaptionFieldError, DataloaderFileError) as exc:  # their message names the file
        return TaskFailed(str(exc))
    except KNOWN_FAILURES as exc:
        return TaskFailed(f"{settings.table_path}: {describe_failure(exc, settings)}")
    if not r.up_to_date:
        print(f"{settings.table_path.name}: {r.rows} rows from {r.shards} shard(s)", flush=True)
    return None


def run_dataloader(settings: Settings) -> TaskFailed | None:
    """Write the SimpleTuner dataloader entry."""
    from tasks.dataloader import write_dataloader

    try:
        plan = write_dataloader(settings)
    except KNOWN_FAILURES as exc:
        return TaskFailed(describe_failure(exc, settings))
    for line in plan.warnings(settings):
        print(f"warning: {line}", flush=True)
    return None


def run_summary(settings: Settings) -> TaskFailed | None:
    """Print the build summary; fail when a shard could not be read to its end."""
    from tasks.summary import format_summary, summarize

    try:
        s = summarize(settings)
    except KNOWN_FAILURES as exc:
        return TaskFailed(describe_failure(exc, settings))
    print(format_summary(s, settings), flush=True)
    if not settings.shard_paths() and (settings.keep_tars or not s.shards):
        print(
            f"warning: no tar matches shards = {settings.shards!r} under {settings.root}; "
            "check `shards` and `root` (or run `doit download`)",
            flush=True,
        )
    if s.caption_failed and not s.failed:
        return TaskFailed(
            f"the caption files of {len(s.caption_failed)} shard(s) could not all be written "
            "(see above)"
        )
    if not s.ok:
        return TaskFailed(
            f"{len(s.failed) + len(s.refused_tars)} shard(s) could not be read to their end "
            "(see above)"
        )
    return None


def run_reset_state(settings: Settings) -> None:
    """Move the manifest aside, saying where it went."""
    moved = reset_state(settings.root)
    if moved is None:
        print("no manifest to move aside")
    else:
        print(
            f"moved the manifest to {moved}; run `doit` to rebuild it "
            "(every tar is read again; files already in data/ are not rewritten)"
        )


def run_download(settings: Settings) -> TaskFailed | None:
    """Fetch new shards from the Hub (HF_ENDPOINT and HF_TOKEN honoured); the summary line
    is printed by `download_shards`, also when some files failed."""
    from tasks.download import DownloadError, download_shards

    try:
        download_shards(settings.root, settings.repo_id, settings.revision, settings.allow_patterns)
    except DownloadError as exc:
        return TaskFailed(str(exc))
    return None


def run_audit(settings: Settings, deep: bool = False) -> TaskFailed | None:
    """Check the disk against the manifest, write state/audit.json; fail on damage.

    The findings are printed even when audit.json cannot be saved (a read-only dataset).
    """
    from tasks.audit.report import format_report, write_report
    from tasks.audit.run import audit

    if (holder := lock.running_writer(settings.root)) is not None:
        print(f"note: a build is running ({holder}): findings may be transient", flush=True)
    try:
        report = audit(settings, deep=deep)
    except KNOWN_FAILURES as exc:
        return TaskFailed(f"audit: {describe_failure(exc, settings)}")
    try:
        saved = write_report(settings, report)
        unsaved = None
    except OSError as exc:
        saved, unsaved = None, exc
    print(format_report(report, settings if saved else None), flush=True)
    if unsaved is not None:
        print(
            f"note: {settings.state_dir / 'audit.json'} could not be saved "
            f"({unsaved.strerror or unsaved})",
            flush=True,
        )
    if not report.ok:
        damage = sum(1 for f in report.findings if f.severity == "damage")
        return TaskFailed(f"audit: {damage} damaged or missing file(s); see above")
    return None


def run_repair(settings: Settings) -> TaskFailed | None:
    """Restore what the audit finds damaged; fail naming what could not be restored."""
    from tasks.audit.repair import format_repair, repair

    try:
        result = repair(settings)
    except KNOWN_FAILURES as exc:
        return TaskFailed(f"repair: {describe_failure(exc, settings)}")
    print(format_repair(result, settings), flush=True)
    if not result.ok:
        return TaskFailed(f"repair: {len(result.failed)} problem(s) could not be repaired")
    return None
