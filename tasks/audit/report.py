"""What the audit finds, and its report: kinds and severities, findings, output.

The report is written atomically to `state/audit.json`:

    {"generated_at": "2026-01-31T12:00:00Z",   # UTC, ISO 8601
     "root": "/abs/root", "deep": false,
     "ok": true,                               # false when any finding is "damage"
     "counts": {"<kind>": n, ...},             # findings per kind (kinds found only)
     "stats": {"files_checked", "bytes_read", "seconds", "mb_per_s",
               "checksums_checked", "samples"},
     "findings": [{"kind", "severity": "damage" | "note",   # one finding per line
                   "path",      # relative to root, or null
                   "shard",     # shard name, or null when not tied to one shard
                   "detail"}]}  # one line for a human

`KINDS` lists every kind with its severity. Damage (exit status 1) is something the build
wrote that is missing or corrupt, or a `data/` that is not trainer-safe; the shards' own
quirks, edited JSON and caption files, deleted tars and an `expected_samples` mismatch
are notes.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from state.atomic import atomic_write
from tasks.extract.tarstream import printable
from tasks.progress import human_bytes
from tasks.settings import Settings

DAMAGE = "damage"
NOTE = "note"
REPORT_NAME = "audit.json"
EXAMPLES = 3  # names shown per kind in the human summary

# kind -> (severity, what a count of them means; "{n}" is the count)
KINDS: dict[str, tuple[str, str]] = {
    "no_manifest": (DAMAGE, "no manifest: run `doit` first"),
    "missing_image": (DAMAGE, "{n} image(s) recorded in the manifest are missing"),
    "missing_json": (DAMAGE, "{n} JSON file(s) recorded in the manifest are missing"),
    "missing_caption": (DAMAGE, "{n} caption file(s) recorded in the manifest are missing"),
    "missing_aside": (DAMAGE, "{n} kept-aside file(s) under incomplete/ are missing"),
    "missing_partition": (DAMAGE, "{n} partition(s) under state/parts/ are missing"),
    "missing_table": (DAMAGE, "the table is missing"),
    "corrupt_image": (DAMAGE, "{n} image(s) differ from what the build wrote"),
    "corrupt_caption": (DAMAGE, "{n} caption file(s) differ from what the build wrote"),
    "corrupt_aside": (DAMAGE, "{n} kept-aside file(s) differ from what the build wrote"),
    "corrupt_partition": (DAMAGE, "{n} partition(s) differ from what the build wrote"),
    "corrupt_table": (DAMAGE, "the table differs from what the build wrote"),
    "not_regular_file": (
        DAMAGE,
        "{n} file(s) the build wrote are now a FIFO, device or socket: remove, then `doit repair`",
    ),
    "captions_unfinished": (
        DAMAGE,
        "the caption files of {n} shard(s) are not those of the table (a switch cut short): "
        "run doit",
    ),
    "unfinished": (DAMAGE, "{n} file(s) a killed run left unfinished: run doit to finish"),
    "missing_file": (DAMAGE, "{n} other file(s) recorded in the manifest are missing"),
    "corrupt_file": (DAMAGE, "{n} other file(s) differ from what the build wrote"),
    "stray": (DAMAGE, "{n} file(s) in data/ the manifest does not know"),
    "image_without_caption": (DAMAGE, "{n} image(s) in data/ have no <stem>.txt caption"),
    "image_without_row": (DAMAGE, "{n} image(s) in data/ have no table row"),
    "row_without_image": (DAMAGE, "{n} table row(s) name an image that is not in data/"),
    "unreadable_table": (DAMAGE, "the table cannot be read"),
    "checksum_mismatch": (DAMAGE, "{n} image(s) fail their JSON's md5_file_hash/sha512_hash"),
    "edited_json": (NOTE, "{n} JSON file(s) edited since the build: picked up by the next doit"),
    "edited_json_unreadable": (
        NOTE,
        "{n} JSON file(s) edited into something that cannot be read: not picked up; fix them",
    ),
    "edited_caption": (
        NOTE,
        "{n} caption file(s) edited by hand: kept (a caption switch that changes their text "
        "moves them to edited/captions/)",
    ),
    "edited_caption_aside": (
        NOTE,
        "{n} caption file(s) edited by hand were replaced by a new caption text: your "
        "version is under edited/captions/",
    ),
    "edited_file_aside": (
        NOTE,
        "{n} file(s) of data/ edited by hand whose shard's new tar holds another version or "
        "none: yours are under edited/json/ or edited/images/",
    ),
    "edited_json_kept": (
        NOTE,
        "{n} JSON file(s) edited by hand stayed in data/ when their shard's tar changed "
        "(it holds the same JSON for them)",
    ),
    "edited_kept_aside": (
        NOTE,
        "{n} file(s) edited by hand whose shard's new tar holds another version or none: "
        "moved to edited/",
    ),
    "edited_checksum": (NOTE, "{n} edited JSON file(s) give a hash their image does not have"),
    "shard_checksum_mismatch": (
        NOTE,
        "{n} image(s) in the tars fail their own JSON's md5_file_hash/sha512_hash",
    ),
    "touched": (NOTE, "{n} file(s) have a new mtime but the same content"),
    "refused": (NOTE, "{n} tar member(s) refused (unsafe path or not a regular file)"),
    "invalid_json": (NOTE, "{n} member(s) of samples whose JSON is invalid (kept aside)"),
    "json_without_image": (NOTE, "{n} JSON member(s) without an image (kept aside)"),
    "image_without_json": (NOTE, "{n} image member(s) without a JSON (kept aside)"),
    "duplicate_member": (NOTE, "{n} member(s) repeated in their tar (earlier copy kept aside)"),
    "duplicate_across_shards": (NOTE, "{n} file name(s) in two shards (the later kept aside)"),
    "second_image": (NOTE, "{n} second image(s) for one sample (kept aside)"),
    "bad_image": (NOTE, "{n} member(s) of samples with an unreadable image (kept aside)"),
    "truncated_image": (
        NOTE,
        "{n} image(s) cut short or corrupt inside, as their tar held them (PNG chunk CRC or "
        "IEND, JPEG EOI)",
    ),
    "unexpected_member": (NOTE, "{n} member(s) neither image nor JSON (kept aside)"),
    "quirk": (NOTE, "{n} other data quirk(s) of the shards"),
    "size_from_header": (NOTE, "{n} sample(s) have no usable width/height in their JSON"),
    "header_size_mismatch": (NOTE, "{n} image(s) whose header size differs from the JSON's"),
    "image_name_mismatch": (NOTE, "{n} JSON image_name(s) differ from the member's name"),
    "empty_caption": (NOTE, "{n} caption(s) are empty"),
    "caption_newlines": (
        NOTE,
        "{n} caption(s) contain newlines (under caption_strategy textfile each line becomes "
        "a separate caption); set join_caption_lines = true to join them",
    ),
    "too_small": (NOTE, "the generated entry would skip {n} image(s) as too small"),
    "duplicate_content": (NOTE, "{n} image content(s) stored under more than one name"),
    "tar_gone": (NOTE, "{n} shard tar(s) are gone (their samples stay; repair needs the Hub)"),
    "tar_changed": (NOTE, "{n} shard tar(s) changed since extraction (the next doit checks)"),
    "shard_failed": (NOTE, "{n} shard(s) could not be read to their end"),
    "shard_new": (NOTE, "{n} shard tar(s) not extracted yet (run doit)"),
    "expected_samples": (NOTE, "the sample count differs from expected_samples"),
    "dataloader_missing": (
        DAMAGE,
        "multidatabackend.json, our entry or a text_embeds entry is missing or unreadable",
    ),
    "dataloader_corrupt": (
        DAMAGE,
        "the dataloader entry's paths or columns were changed by hand: run doit to set them back",
    ),
    "dataloader_stale": (
        NOTE,
        "the dataloader entry was written for another root (folder moved or copied) or "
        "other settings: run doit",
    ),
    "dataloader_edited": (NOTE, "the dataloader entry has values changed by hand"),
    "dataloader_duplicate": (NOTE, "{n} other dataloader entry(ies) read this data/ too"),
}


@dataclass
class Finding:
    """One thing the audit found."""

    kind: str
    severity: str
    path: str | None
    shard: str | None
    detail: str


@dataclass
class AuditReport:
    """What `audit` found, with the numbers of its run."""

    root: str
    deep: bool
    generated_at: str
    findings: list[Finding] = field(default_factory=list)
    files_checked: int = 0
    bytes_read: int = 0
    checksums_checked: int = 0
    samples: int | None = None
    seconds: float = 0.0
    context: dict[str, str] = field(default_factory=dict)  # extra words per kind

    @classmethod
    def begin(cls, root: object, deep: bool) -> AuditReport:
        """An empty report of an audit starting now."""
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return cls(root=str(root), deep=deep, generated_at=now)

    @property
    def ok(self) -> bool:
        return not any(f.severity == DAMAGE for f in self.findings)

    @property
    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(f.kind for f in self.findings).items()))

    @property
    def mb_per_s(self) -> float:
        return self.bytes_read / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def add(self, kind: str, path: str | None, shard: str | None, detail: str, severity=None):
        self.findings.append(Finding(kind, severity or KINDS[kind][0], path, shard, detail))

    def of(self, *kinds: str) -> list[Finding]:
        return [f for f in self.findings if f.kind in kinds]

    def to_dict(self) -> dict:
        return {
            "generated_at": self.generated_at,
            "root": self.root,
            "deep": self.deep,
            "ok": self.ok,
            "counts": self.counts,
            "stats": {
                "files_checked": self.files_checked,
                "bytes_read": self.bytes_read,
                "seconds": round(self.seconds, 3),
                "mb_per_s": round(self.mb_per_s, 1),
                "checksums_checked": self.checksums_checked,
                "samples": self.samples,
            },
            "findings": [
                {
                    "kind": f.kind,
                    "severity": f.severity,
                    "path": f.path,
                    "shard": f.shard,
                    "detail": f.detail,
                }
                for f in self.findings
            ],
        }


# --------------------------------------------------------------------------- output


def report_path(settings: Settings) -> Path:
    """Where the machine-readable report goes: `<root>/state/audit.json`."""
    return settings.state_dir / REPORT_NAME


def write_report(settings: Settings, report: AuditReport) -> Path | None:
    """Write the report atomically to `state/audit.json`; return its path.

    A root that was never built has no `state/`: the audit creates nothing there (None).
    """
    path = report_path(settings)
    if not path.parent.is_dir():
        return None
    data = report.to_dict()
    findings = data.pop("findings")
    head = json.dumps(data, ensure_ascii=False, indent=1)  # ends with "\n}"
    # one finding per line: inside a JSON string every quote is escaped, so the text
    # '}, {"kind": ' only ever occurs between two findings
    rows = json.dumps(findings, ensure_ascii=False)[1:-1].replace('}, {"kind": ', '},\n  {"kind": ')
    text = head[:-2] + ',\n "findings": [' + (f"\n  {rows}\n ]" if rows else "]") + "\n}\n"
    # a name that is not UTF-8 stays a JSON escape (`\udce9`), so the file stays valid
    atomic_write(path, text.encode("utf-8", "backslashreplace"))
    return path


def load_report(settings: Settings) -> dict | None:
    """The last written report, or None when there is none (or it cannot be read)."""
    try:
        data = json.loads(report_path(settings).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def format_report(report: AuditReport, settings: Settings | None = None) -> str:
    """The short human summary: a verdict, then per kind its count and first names."""
    damage = sum(1 for f in report.findings if f.severity == DAMAGE)
    notes = len(report.findings) - damage
    mode = "deep" if report.deep else "fast"
    verdict = "OK" if report.ok else "DAMAGE"
    lines = [f"audit ({mode}) of {report.root}: {verdict}: {damage} damage, {notes} note(s)"]
    if report.samples is not None:
        lines[0] += f"; {report.samples} sample(s) in the table"
    by_kind: dict[str, list[Finding]] = defaultdict(list)
    for f in report.findings:
        by_kind[f.kind].append(f)
    order = sorted(by_kind, key=lambda k: (by_kind[k][0].severity != DAMAGE, k))
    for kind in order:
        found = by_kind[kind]
        severity = "DAMAGE" if found[0].severity == DAMAGE else "note"
        text = KINDS.get(kind, (NOTE, kind + ": {n}"))[1].format(n=len(found))
        if kind in report.context:
            text += f" ({report.context[kind]})"
        more = f", … {len(found) - EXAMPLES} more" if len(found) > EXAMPLES else ""
        lines.append(f"  {severity:6} {kind}: {text}")
        if all(f.path for f in found[:EXAMPLES]):
            names = ", ".join(printable(f.path) for f in found[:EXAMPLES])
            lines.append(f"         {'' if len(found) == 1 else 'e.g. '}{names}{more}")
        else:
            lines.append(f"         {printable(found[0].detail)}{more}")
    if report.deep:
        lines.append(
            f"  read {human_bytes(report.bytes_read)} in {report.files_checked} file(s) in "
            f"{report.seconds:.1f} s: {report.mb_per_s:.1f} MB/s; "
            f"{report.checksums_checked} image(s) checked against md5_file_hash/sha512_hash"
        )
    if settings is not None:
        lines.append(f"  full list: {report_path(settings)}")
    if not report.ok and not report.of("no_manifest"):
        lines.append("  run `doit repair` to restore what the build wrote")
    return "\n".join(lines)
