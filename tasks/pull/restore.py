"""Members of a shard whose tar is gone, fetched again from the Hub with HTTP Range.

The manifest records where each tar came from (state/sources.py: repo, path, commit) and
where each member's data starts (`files.offset`): `HubTar` reads exactly those bytes (the
member's 512-byte header, then its data) from the resolve URL at the recorded commit,
through huggingface_hub's session. `doit repair` checks the bytes against the manifest's
XXH3 before placing them, as for a local tar.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path

from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

from state import sources
from tasks import download as dl
from tasks.pull.stream import Source, fetch_range

RESTORABLE_KINDS = ("missing_image", "missing_json", "missing_aside", "corrupt_image")


class HubFetchError(OSError):
    """Bytes of a member could not be fetched from the Hub; the message is one line."""


class HubTar:
    """The tar of one shard on the Hub at its recorded commit, read where `seek` says."""

    def __init__(self, row: dict, endpoint: str, token: str | None = None) -> None:
        self.row = row
        self.src = Source(endpoint, row["repo_id"], row["commit"], row["repo_path"], token)
        self.pos = 0
        self.fetched = 0  # body bytes received

    @property
    def label(self) -> str:
        """`repo@commit/path`, for messages."""
        return f"{self.row['repo_id']}@{self.row['commit'][:12]}/{self.row['repo_path']}"

    def seek(self, pos: int) -> None:
        self.pos = pos

    def read(self, n: int) -> bytes:
        """Bytes `pos`..`pos+n-1` (fewer past the end of the tar), in one ranged GET."""
        n = min(n, int(self.row["size"]) - self.pos)
        if n <= 0:
            return b""
        try:
            data = fetch_range(self.src, self.pos, n)
        except OfflineModeIsEnabled as exc:
            raise HubFetchError(self._why("HF_HUB_OFFLINE is set")) from exc
        except (dl.DownloadError, HfHubHTTPError, *dl._TRANSPORT_ERRORS) as exc:
            raise HubFetchError(self._why(f"{type(exc).__name__}: {dl._first_line(exc)}")) from exc
        self.pos += len(data)
        self.fetched += len(data)
        return data

    def _why(self, reason: str) -> str:
        return (
            f"could not fetch bytes {self.pos}.. of {self.label} from the Hub at "
            f"{self.src.endpoint} ({reason}); nothing was changed for it: rerun `doit repair` "
            "when the Hub can be reached"
        )


def open_hub_tar(db: sqlite3.Connection, shard: str) -> HubTar | None:
    """The Hub copy of `shard`'s tar, when the manifest records where it came from."""
    row = sources.of_shard(db, shard)
    if row is None or not row.get("commit") or not row.get("repo_path"):
        return None
    return HubTar(row, dl.hub_endpoint())


def label_path(root: Path, tar: HubTar) -> Path:
    """A path under root whose relative form names the Hub copy (repair's messages use it)."""
    return root / tar.label


def note_restorable(conn: sqlite3.Connection, report) -> None:
    """Say, in the audit, which damaged files and gone tars the Hub can restore."""
    gone = [f for f in report.of("tar_gone") if f.shard and sources.of_shard(conn, f.shard)]
    if gone:
        report.context["tar_gone"] = f"{len(gone)} of them restorable from the Hub"
    on_hub = {f.shard for f in gone}
    counts = Counter(
        f.kind for f in report.findings if f.kind in RESTORABLE_KINDS and f.shard in on_hub
    )
    for kind, n in counts.items():
        report.context[kind] = f"{n} restorable from the Hub: their tar is gone, `doit repair`"
