"""The audit's look at `multidatabackend.json`: is our entry there, and does it point here?

Reads the file and `state/dataloader.json` only (a small JSON each); writes nothing.
A missing file or entry, or a value that says where the output is or how to read it
changed by hand, is damage; an entry written for another root (the folder was moved or
copied) or for other settings is a note, as a new shard is: the next `doit` rewrites it,
and so does `doit repair` (`rewrite_entry`). Values only edited by hand are left to `doit`.
"""

from __future__ import annotations

import os

from tasks.audit.report import AuditReport
from tasks.dataloader import (
    READ_KEYS,
    DataloaderFileError,
    DataloaderPlan,
    plan_dataloader,
    write_dataloader,
)
from tasks.settings import Settings


def check_dataloader(settings: Settings, report: AuditReport) -> None:
    """Add the `dataloader_*` findings of `multidatabackend.json`."""
    rel = os.path.relpath(settings.backend_path, settings.root)
    try:
        plan = plan_dataloader(settings)
    except DataloaderFileError as exc:
        report.add("dataloader_missing", None, None, str(exc))
        return
    if plan.current is None:
        report.add("dataloader_missing", None, None, f"{rel} does not exist: run doit to write it")
        return
    if plan.found:
        _check_entry(settings, plan, report)
    else:
        report.add(
            "dataloader_missing",
            None,
            None,
            f"{rel} has no entry with id {settings.id!r}: run doit to add it",
        )
    if plan.text_embeds == "added":
        report.add(
            "dataloader_missing", None, None, f"{rel} has no text_embeds entry: run doit to add it"
        )
    elif plan.text_embeds == "moved":
        report.add(
            "dataloader_stale",
            None,
            None,
            f"the text_embeds entry's cache_dir is not under {settings.root}: run doit",
        )
    for other in plan.duplicates:
        report.add(
            "dataloader_duplicate",
            None,
            None,
            f"entry {other!r} also reads {settings.data_dir}: SimpleTuner would train each "
            "image twice; remove it unless that is meant",
        )
    for line in plan.copy_lines(settings):
        report.add("dataloader_duplicate", None, None, f"{rel}: {line}")


def _check_entry(settings: Settings, plan: DataloaderPlan, report: AuditReport) -> None:
    """Our entry's values that differ from what doit writes, sorted by why."""
    entry = f"entry {settings.id!r}"
    if plan.moved:
        report.add(
            "dataloader_stale",
            None,
            None,
            f"{entry} was written for {plan.old_root} ({', '.join(plan.moved)}), not "
            f"{settings.root}: run doit to rewrite it",
        )
    if plan.by_settings:
        report.add(
            "dataloader_stale",
            None,
            None,
            f"{entry}: {', '.join(plan.by_settings)} differ from what the settings give now: "
            "run doit to rewrite it",
        )
    rest = [k for k in plan.stale if k not in plan.moved + plan.by_settings]
    read = [k for k in rest if k.split(".")[0] in READ_KEYS]
    if read:
        report.add(
            "dataloader_corrupt",
            None,
            None,
            f"{entry}: {', '.join(read)} changed by hand (training would read something else): "
            "run doit to set them back, or set them in [dataloader]",
        )
    edited = [k for k in rest if k.split(".")[0] not in READ_KEYS]
    if edited:
        report.add(
            "dataloader_edited",
            None,
            None,
            f"{entry}: {', '.join(edited)} changed by hand: the next doit sets them back; "
            "set them in [dataloader] to keep them",
        )


# what `doit repair` rewrites: what the next `doit` would rewrite, found by the audit
REPAIR_KINDS = ("dataloader_missing", "dataloader_stale", "dataloader_corrupt")


def rewrite_entry(settings: Settings) -> tuple[bool, list[str]]:
    """Write our entry as `doit` would; (whether the file changed, the warnings).

    Raises `DataloaderFileError` (one line) when the file cannot be merged into or written.
    """
    plan = write_dataloader(settings)
    return plan.written, plan.warnings(settings)
