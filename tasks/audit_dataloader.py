"""The audit's look at `multidatabackend.json`: is our entry there, and does it point here?

Reads the file and `state/dataloader.json` only (a small JSON each); writes nothing.
"""

from __future__ import annotations

import os

from tasks.audit_report import AuditReport
from tasks.dataloader import READ_KEYS, DataloaderFileError, plan_dataloader
from tasks.settings import Settings


def check_dataloader(settings: Settings, report: AuditReport) -> None:
    """Add `dataloader_*` findings: a missing or unreadable file or entry, an entry that
    points elsewhere (stale), values changed by hand, other entries reading our data/."""
    rel = os.path.relpath(settings.backend_path, settings.root)
    try:
        plan = plan_dataloader(settings)
    except DataloaderFileError as exc:
        report.add("dataloader_missing", None, None, str(exc))
        return
    if plan.current is None:
        report.add("dataloader_missing", None, None, f"{rel} does not exist: run doit to write it")
        return
    if not plan.found:
        report.add(
            "dataloader_missing",
            None,
            None,
            f"{rel} has no entry with id {settings.id!r}: run doit to add it",
        )
    stale = [k for k in plan.stale if k.split(".")[0] in READ_KEYS]
    if stale and plan.found:
        report.add(
            "dataloader_stale",
            None,
            None,
            f"entry {settings.id!r}: {', '.join(stale)} differ from what doit writes for "
            f"{settings.root}: run doit to rewrite them",
        )
    edited = [k for k in plan.stale if k.split(".")[0] not in READ_KEYS]
    if edited and plan.found:
        report.add(
            "dataloader_edited",
            None,
            None,
            f"entry {settings.id!r}: {', '.join(edited)} changed by hand: the next doit "
            "sets them back; set them in [dataloader] to keep them",
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
