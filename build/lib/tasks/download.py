"""`doit download`: fetch new or changed shards from the Hugging Face Hub, incrementally.

`download_shards` resolves the revision to a commit, lists the repo tree at that commit
(size and LFS sha256 of every file), and fetches into `<root>/hub/` only the files matching
`allow_patterns` that are missing on disk or differ from the listing. Every fetched file is
checked against the listing's size and sha256 before it is moved into place, and recorded
in the manifest's `hub_files` table (plus `meta.hub_commit`).

Transfers:
- Files the Hub serves through Xet storage go through `hf_hub_download` (the hf_xet path
  huggingface_hub uses by default).
- Other files are fetched with huggingface_hub's `http_get` into a partial file that is kept
  across runs (`<root>/hub/.cache/shardprep/<path>.<sha256>.part`): an interrupted
  download resumes with an HTTP Range request on the next run. (huggingface_hub 2.x itself
  writes to a process-unique temporary file and deletes it on failure, so `hf_hub_download`
  alone only resumes within one call.)
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import sqlite3
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from huggingface_hub import HfApi, constants, get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import http_get
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import build_hf_headers, filter_repo_objects
from huggingface_hub.utils._runtime import is_xet_available

from state.manifest import open_manifest, query, set_meta, write_transaction

DEFAULT_PATTERNS: tuple[str, ...] = ("data/*.tar",)
HUB_DIR = "hub"
PARTIAL_DIR = Path(".cache") / "shardprep"  # under <root>/hub, next to huggingface_hub's .cache
LIBRARY = "shardprep"
_READ_CHUNK = 8 * 1024 * 1024


class DownloadError(RuntimeError):
    """`doit download` failed; the message is one line that says what to do."""


@dataclass
class DownloadSummary:
    """What one `download_shards` call did."""

    commit: str
    new: list[str] = field(default_factory=list)  # repo paths fetched that were not on disk
    changed: list[str] = field(default_factory=list)  # on disk but different from upstream
    skipped: int = 0  # already present and matching the listing
    nbytes: int = 0  # bytes transferred in this call
    seconds: float = 0.0
    gone_upstream: list[str] = field(default_factory=list)  # recorded, no longer listed (kept)

    @property
    def fetched(self) -> list[str]:
        """Every repo path fetched in this call (new and changed)."""
        return self.new + self.changed

    def describe(self) -> str:
        """The one-line summary printed at the end of a run."""
        n = len(self.fetched)
        what = f"{n} new shard{'s' if n != 1 else ''}"
        if self.changed:
            what = f"{n} shard{'s' if n != 1 else ''} ({len(self.new)} new, "
            what += f"{len(self.changed)} changed upstream)"
        line = (
            f"fetched {what} ({format_bytes(self.nbytes)}) in {self.seconds:.1f} s; "
            f"{self.skipped} up to date; commit {self.commit[:12]}"
        )
        if self.gone_upstream:
            line += f"; {len(self.gone_upstream)} recorded no longer upstream (kept)"
        return line


@dataclass(frozen=True)
class _Remote:
    """One file of the listing."""

    path: str
    size: int
    sha256: str | None  # LFS files only
    git_oid: str

    @classmethod
    def from_repo_file(cls, f: RepoFile) -> _Remote:
        if f.lfs is not None:
            return cls(f.path, int(f.lfs.size), str(f.lfs.sha256).lower(), f.blob_id)
        return cls(f.path, int(f.size), None, f.blob_id)


@dataclass
class _Context:
    root: Path
    hub: Path
    repo_id: str
    revision: str
    commit: str
    endpoint: str
    token: str | None


def format_bytes(n: float) -> str:
    """Human-readable decimal size: `512 B`, `12.6 MB`, `9.31 GB`."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def hub_endpoint() -> str:
    """The Hub endpoint: `HF_ENDPOINT` as set now, else huggingface_hub's default."""
    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def download_shards(
    root: Path | str,
    repo_id: str,
    revision: str = "main",
    allow_patterns: Sequence[str] = DEFAULT_PATTERNS,
    token: str | None = None,
) -> DownloadSummary:
    """Fetch the files of `repo_id` at `revision` matching `allow_patterns` into `<root>/hub/`.

    Only files missing on disk or different from the Hub's listing are fetched; each is
    verified (size, sha256) and recorded in the manifest's `hub_files`. Raises
    `DownloadError` with a one-line message on any failure; files already present are never
    touched by a failure. Progress goes to stderr, the summary line to stdout.
    """
    started = time.monotonic()
    root = Path(root)
    hub = root / HUB_DIR
    endpoint = hub_endpoint()
    patterns = [allow_patterns] if isinstance(allow_patterns, str) else list(allow_patterns)
    api = HfApi(endpoint=endpoint, token=token, library_name=LIBRARY)

    with _hub_errors(endpoint, repo_id, revision, hub):
        info = api.dataset_info(repo_id, revision=revision)
        commit = info.sha
        if not commit:
            raise DownloadError(f"the Hub at {endpoint} gave no commit for {repo_id}@{revision}")
        tree = api.list_repo_tree(repo_id, recursive=True, repo_type="dataset", revision=commit)
        listing = [_Remote.from_repo_file(f) for f in tree if isinstance(f, RepoFile)]
    wanted = sorted(
        filter_repo_objects(listing, allow_patterns=patterns, key=lambda r: r.path),
        key=lambda r: r.path,
    )
    if not wanted:
        raise DownloadError(
            f"no file of dataset {repo_id!r} at {revision} ({commit[:12]}) matches "
            f"allow_patterns {patterns}"
        )
    ctx = _Context(root, hub, repo_id, revision, commit, endpoint, token)
    summary = DownloadSummary(commit=commit)

    db = open_manifest(root)
    try:
        recorded = {row["path"]: row for row in query(db, "SELECT * FROM hub_files")}
        listed = {r.path for r in wanted}
        summary.gone_upstream = sorted(p for p in recorded if p not in listed)

        todo: list[tuple[_Remote, str]] = []
        up_to_date: list[dict] = []
        for remote in wanted:
            state, sha256 = _local_state(ctx, remote, recorded.get(remote.path))
            if state == "ok":
                up_to_date.append(_row(ctx, remote, sha256))
            else:
                todo.append((remote, state))
        summary.skipped = len(up_to_date)
        with write_transaction(db) as conn:
            for row in up_to_date:
                _upsert_hub_file(conn, row)

        _check_free_space(ctx, [r for r, _ in todo])
        for i, (remote, state) in enumerate(todo, 1):
            _progress(
                f"[{i}/{len(todo)}] {remote.path} {format_bytes(remote.size)}"
                f" ({'new' if state == 'new' else 'changed upstream'})"
            )
            t0 = time.monotonic()
            with _hub_errors(
                endpoint, repo_id, revision, hub, path=remote.path, done=i - 1, total=len(todo)
            ):
                sent, sha256 = _fetch(ctx, remote)
            dt = max(time.monotonic() - t0, 1e-6)
            _progress(
                f"[{i}/{len(todo)}] {remote.path} done: {format_bytes(sent)} in {dt:.1f} s"
                f" ({format_bytes(sent / dt)}/s)"
            )
            summary.nbytes += sent
            (summary.new if state == "new" else summary.changed).append(remote.path)
            with write_transaction(db) as conn:
                _upsert_hub_file(conn, _row(ctx, remote, sha256))

        with write_transaction(db) as conn:
            set_meta(conn, "hub_commit", commit)
            set_meta(conn, "hub_repo_id", repo_id)
            set_meta(conn, "hub_revision", revision)
    finally:
        db.close()

    summary.seconds = time.monotonic() - started
    print(summary.describe(), flush=True)
    return summary


# --- deciding what to fetch -------------------------------------------------------------


def _local_state(ctx: _Context, remote: _Remote, row: dict | None) -> tuple[str, str | None]:
    """`("ok", sha256)` when the file on disk matches the listing, else `("new"|"changed", None)`.

    A file whose size matches and whose manifest row has the listed sha256 is trusted; a
    file present without such a row is hashed once (and then recorded).
    """
    local = ctx.hub / remote.path
    try:
        size = local.stat().st_size
    except FileNotFoundError:
        return "new", None
    if not local.is_file() or size != remote.size:
        return "changed", None
    if (
        remote.sha256 is not None
        and row is not None
        and row["sha256"] == remote.sha256
        and row["size"] == remote.size
    ):
        return "ok", remote.sha256
    if remote.sha256 is not None:
        _progress(f"checking {remote.path} (present, not recorded): hashing {format_bytes(size)}")
    sha256, git_oid = _hash_file(local)
    if remote.sha256 is not None:
        return ("ok", sha256) if sha256 == remote.sha256 else ("changed", None)
    return ("ok", sha256) if git_oid == remote.git_oid else ("changed", None)


def _check_free_space(ctx: _Context, todo: list[_Remote]) -> None:
    """Refuse to start when the files still to fetch do not fit in `<root>/hub`."""
    if not todo:
        return
    ctx.hub.mkdir(parents=True, exist_ok=True)
    needed = 0
    for remote in todo:
        part = _partial_path(ctx, remote)
        have = part.stat().st_size if part.is_file() else 0
        needed += max(remote.size - min(have, remote.size), 0)
    free = shutil.disk_usage(ctx.hub).free
    if needed > free:
        raise DownloadError(
            f"not enough free space in {ctx.hub}: {len(todo)} file(s) to fetch need "
            f"{format_bytes(needed)} ({needed} bytes) but only {format_bytes(free)} "
            f"({free} bytes) is free; free some space or move root"
        )


# --- fetching ---------------------------------------------------------------------------


def _fetch(ctx: _Context, remote: _Remote) -> tuple[int, str]:
    """Fetch one file into place, verified. Returns (bytes transferred, sha256)."""
    url = hf_hub_url(
        ctx.repo_id, remote.path, repo_type="dataset", revision=ctx.commit, endpoint=ctx.endpoint
    )
    meta = get_hf_file_metadata(url, token=ctx.token, endpoint=ctx.endpoint, library_name=LIBRARY)
    if meta.size is not None and meta.size != remote.size:
        raise DownloadError(
            f"{remote.path}: the Hub lists {remote.size} bytes but serves {meta.size} bytes"
        )
    final = ctx.hub / remote.path
    if meta.xet_file_data is not None and is_xet_available():
        _progress(f"    via hf_xet: {remote.path}")
        hf_hub_download(
            ctx.repo_id,
            remote.path,
            repo_type="dataset",
            revision=ctx.commit,
            local_dir=ctx.hub,
            token=ctx.token,
            endpoint=ctx.endpoint,
            library_name=LIBRARY,
        )
        sha256 = _verify(remote, final)  # removes the file when it does not match
        return remote.size, sha256

    part = _partial_path(ctx, remote)
    part.parent.mkdir(parents=True, exist_ok=True)
    prefix = Path(remote.path).name + "."
    for stale in part.parent.iterdir():
        if stale != part and stale.name.startswith(prefix) and stale.name.endswith(".part"):
            stale.unlink(missing_ok=True)  # an older upstream version's partial download
    have = part.stat().st_size if part.is_file() else 0
    if have > remote.size:
        part.unlink()
        have = 0
    if have:
        _progress(f"    resuming {remote.path} at {format_bytes(have)}")
    headers = build_hf_headers(token=ctx.token, library_name=LIBRARY)
    if urlsplit(meta.location).netloc != urlsplit(url).netloc:
        headers.pop("authorization", None)  # a signed CDN URL: do not send the token there
    try:
        with open(part, "r+b" if have else "wb") as f:
            f.seek(have)
            f.truncate()
            http_get(
                meta.location,
                f,
                resume_size=have,
                headers=headers,
                expected_size=remote.size,
                displayed_filename=remote.path,
            )
            f.flush()
            os.fsync(f.fileno())
    except HfHubHTTPError:
        raise  # keep the partial file: the next run resumes it
    except OSError as exc:
        if exc.errno != errno.ENOSPC and not isinstance(exc, ConnectionError):
            # huggingface_hub's size consistency check: the partial data cannot be trusted
            part.unlink(missing_ok=True)
        raise
    sha256 = _verify(remote, part)  # removes the partial file when it does not match
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(part, final)
    return remote.size - have, sha256


def _verify(remote: _Remote, path: Path) -> str:
    """Check `path` against the listing; on mismatch delete it and raise naming the file."""
    size = path.stat().st_size
    sha256, git_oid = _hash_file(path)
    problem = None
    if size != remote.size:
        problem = f"size {size} bytes, the Hub lists {remote.size}"
    elif remote.sha256 is not None and sha256 != remote.sha256:
        problem = f"sha256 {sha256}, the Hub lists {remote.sha256}"
    elif remote.sha256 is None and git_oid != remote.git_oid:
        problem = f"git blob id {git_oid}, the Hub lists {remote.git_oid}"
    if problem:
        path.unlink(missing_ok=True)
        raise DownloadError(
            f"{remote.path}: downloaded file does not match the Hub ({problem}); "
            "it was removed, rerun to fetch it again"
        )
    return sha256


def _hash_file(path: Path) -> tuple[str, str]:
    """(sha256, git blob sha1) of a file, in one pass."""
    sha256 = hashlib.sha256()
    git = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_READ_CHUNK):
            sha256.update(chunk)
            git.update(chunk)
    return sha256.hexdigest(), git.hexdigest()


def _partial_path(ctx: _Context, remote: _Remote) -> Path:
    version = remote.sha256 or remote.git_oid
    return ctx.hub / PARTIAL_DIR / f"{remote.path}.{version}.part"


# --- manifest ---------------------------------------------------------------------------


def _row(ctx: _Context, remote: _Remote, sha256: str | None) -> dict:
    local = (ctx.hub / remote.path).relative_to(ctx.root)
    return {
        "path": remote.path,
        "size": remote.size,
        "sha256": sha256 or remote.sha256,
        "commit": ctx.commit,
        "local_path": local.as_posix(),
    }


def _upsert_hub_file(conn: sqlite3.Connection, row: dict) -> None:
    conn.execute(
        'INSERT OR REPLACE INTO hub_files (path, size, sha256, "commit", local_path) '
        "VALUES (:path, :size, :sha256, :commit, :local_path)",
        row,
    )


# --- errors and progress ----------------------------------------------------------------


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Network-level exception classes of whichever HTTP client huggingface_hub uses."""
    found: list[type[BaseException]] = []
    for module, name in (
        ("httpx2", "TransportError"),
        ("httpx", "TransportError"),
        ("requests", "ConnectionError"),
        ("requests", "Timeout"),
    ):
        with suppress(ImportError, AttributeError):
            found.append(getattr(__import__(module), name))
    return tuple(found)


_TRANSPORT_ERRORS = _transport_errors()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextmanager
def _hub_errors(
    endpoint: str,
    repo_id: str,
    revision: str,
    hub: Path,
    *,
    path: str | None = None,
    done: int = 0,
    total: int = 0,
) -> Iterator[None]:
    """Turn huggingface_hub / network / disk errors into one-line `DownloadError`s."""
    where = f" while fetching {path}" if path else ""
    kept = (
        f"; {done} of {total} files fetched before it, partial data kept: rerun to resume"
        if path
        else f"; nothing was changed, the shards already in {hub} are untouched"
    )
    login = "log in with `hf auth login` or set HF_TOKEN"
    try:
        yield
    except DownloadError:
        raise
    except HFValidationError as exc:
        raise DownloadError(
            f"invalid repo_id or revision ({repo_id!r}, {revision!r}): {_first_line(exc)}"
        ) from exc
    except OfflineModeIsEnabled as exc:
        raise DownloadError(
            f"HF_HUB_OFFLINE is set, so the Hub at {endpoint} is not contacted{kept}"
        ) from exc
    except _TRANSPORT_ERRORS as exc:
        raise DownloadError(
            f"cannot reach the Hub at {endpoint}{where} ({type(exc).__name__}: "
            f"{_first_line(exc)}){kept}"
        ) from exc
    except RevisionNotFoundError as exc:
        raise DownloadError(
            f"revision {revision!r} not found in dataset {repo_id!r} at {endpoint}"
        ) from exc
    except GatedRepoError as exc:
        raise DownloadError(
            f"dataset {repo_id!r} at {endpoint} is gated: accept its conditions on the Hub, "
            f"then {login}"
        ) from exc
    except RepositoryNotFoundError as exc:
        status = exc.response.status_code if exc.response is not None else None
        hint = f" (if it is private, {login})" if status in (401, 403) else ""
        raise DownloadError(f"dataset {repo_id!r} not found at {endpoint}{hint}") from exc
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403):
            raise DownloadError(
                f"the Hub at {endpoint} refused access to dataset {repo_id!r}{where} "
                f"(HTTP {status}): {login}"
            ) from exc
        raise DownloadError(
            f"the Hub at {endpoint} answered HTTP {status}{where} for dataset {repo_id!r} "
            f"({_first_line(exc)}){kept if path else ''}"
        ) from exc
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DownloadError(
                f"disk full in {hub}{where}: free some space and rerun{kept if path else ''}"
            ) from exc
        if path:
            raise DownloadError(f"{path}: download failed ({_first_line(exc)})") from exc
        raise


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
