"""Bytes from the Hub through huggingface_hub's HTTP session: a whole tar streamed into a
partial file (sha256 while streaming, resumed with Range after a dropped connection), or
one byte range of a tar at a commit (for repair)."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from huggingface_hub import get_session, hf_hub_url
from huggingface_hub.utils import build_hf_headers, hf_raise_for_status

from tasks.download import _TRANSPORT_ERRORS, LIBRARY, DownloadError

TIMEOUT_S = 30.0  # the longest wait for the next bytes before the connection is reopened
MAX_RESUMES = 8  # reconnections in a row that bring no new byte before a shard gives up
_HASH_CHUNK = 8 * 1024 * 1024


class PullStopped(Exception):
    """The pull is ending (the build failed or was interrupted): stop streaming."""


class _RangeIgnored(Exception):
    """The server answered a resumed request with the whole file (HTTP 200)."""


class Source:
    """One file of one repo at one commit on the Hub."""

    def __init__(self, endpoint: str, repo_id: str, commit: str, path: str, token=None) -> None:
        self.endpoint, self.repo_id, self.commit, self.path = endpoint, repo_id, commit, path
        self.token = token

    @property
    def url(self) -> str:
        return hf_hub_url(
            self.repo_id,
            self.path,
            repo_type="dataset",
            revision=self.commit,
            endpoint=self.endpoint,
        )

    def headers(self, first: int, last: int | None = None) -> dict:
        """Our headers (user agent, token) asking for raw bytes `first`..`last`."""
        headers = build_hf_headers(token=self.token, library_name=LIBRARY)
        headers["Accept-Encoding"] = "identity"  # offsets are raw bytes
        if first or last is not None:
            headers["Range"] = f"bytes={first}-{'' if last is None else last}"
        return headers


def stream_to_part(
    src: Source,
    size: int,
    part: Path,
    on_bytes: Callable[[int], None],
    stop: threading.Event,
) -> tuple[int, str]:
    """Append the bytes of `src` missing from `part` until it holds `size` bytes.

    A dropped or stalled connection is reopened at the first byte not yet received.
    Returns (bytes transferred, sha256 of the whole file); the caller compares it with
    the listing.
    """
    have = part.stat().st_size if part.is_file() else 0
    sha = _hash_prefix(part, have)
    pos, sent, idle = have, 0, 0
    with open(part, "r+b" if have else "wb") as f:
        f.seek(pos)
        while pos < size:
            try:
                got = _one_connection(src, size, pos, f, sha, on_bytes, stop)
            except _RangeIgnored:  # the shard restarts from its first byte
                f.seek(0)
                f.truncate()
                pos, sha = 0, hashlib.sha256()
                continue
            except _TRANSPORT_ERRORS:
                got = 0
            idle = 0 if got else idle + 1
            if idle > MAX_RESUMES:
                raise DownloadError(
                    f"{src.path}: the connection to {src.endpoint} broke {idle} times in a row "
                    "without progress; rerun `doit pull` to resume"
                )
            if idle:
                time.sleep(min(0.2 * idle, 2.0))
            pos, sent = pos + got, sent + got
        f.flush()
        os.fsync(f.fileno())
    return sent, sha.hexdigest()


def _one_connection(src: Source, size: int, pos: int, f, sha, on_bytes, stop) -> int:
    """Stream from `pos` into `f` until the body ends or breaks; the bytes got."""
    got = 0
    with get_session().stream("GET", src.url, headers=src.headers(pos), timeout=TIMEOUT_S) as r:
        hf_raise_for_status(r)
        if pos and r.status_code == 200:
            raise _RangeIgnored
        if pos and r.headers.get("Content-Range", "").split("/")[0] != f"bytes {pos}-{size - 1}":
            raise DownloadError(f"{src.path}: the Hub answered a range other than the one asked")
        try:
            for chunk in r.iter_raw():  # no chunk_size: a drop loses no buffered byte
                if stop.is_set():
                    raise PullStopped
                f.write(chunk)
                sha.update(chunk)
                got += len(chunk)
                on_bytes(len(chunk))
        except _TRANSPORT_ERRORS:
            if not got:
                raise
    return got


def _hash_prefix(part: Path, have: int):
    """sha256 of the first `have` bytes of `part` (kept from an earlier run)."""
    sha = hashlib.sha256()
    if have:
        with open(part, "rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                sha.update(chunk)
    return sha


def fetch_range(src: Source, first: int, size: int) -> bytes:
    """Bytes `first`..`first+size-1` of `src` in one ranged GET (a whole file is refused)."""
    last = first + size - 1
    with get_session().stream(
        "GET", src.url, headers=src.headers(first, last), timeout=TIMEOUT_S
    ) as r:
        hf_raise_for_status(r)
        if r.status_code != 206:
            raise DownloadError(f"{src.path}: the Hub at {src.endpoint} does not serve byte ranges")
        data = r.read()
    if len(data) != size:
        raise DownloadError(f"{src.path}: the Hub sent {len(data)} bytes for a {size}-byte range")
    return data
