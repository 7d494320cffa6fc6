"""`doit download`: fetch new or changed shards from the Hugging Face Hub, incrementally.

`download_shards` resolves the revision to a commit, lists the repo tree at that commit
(size and LFS sha256 of every file), and fetches into `<root>/hub/` only the files matching
`allow_patterns` that are missing on disk or differ from the listing. Every fetched file is
checked against the listing's size and sha256 before it is moved into place, and recorded
in the manifest's `hub_files` table (plus `meta.hub_commit` once every file is there).

A file that cannot be fetched (HTTP 404, 401/403, 5xx, a dropped connection, wrong bytes)
does not stop the others: `PartialDownloadError` names each one at the end, with what to do
for its kind of failure. A full disk stops the run, since every later file would fail too.

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

from huggingface_hub import (
    HfApi,
    constants,
    get_hf_file_metadata,
    get_token,
    hf_hub_download,
    hf_hub_url,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
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

from state import hub as hub_files
from state import sources
from state.manifest import open_manifest, write_transaction
from tasks.progress import human_bytes

DEFAULT_PATTERNS: tuple[str, ...] = ("data/*.tar",)
HUB_DIR = "hub"
PARTIAL_DIR = Path(".cache") / "shardprep"  # under <root>/hub, next to huggingface_hub's .cache
LIBRARY = "shardprep"
LOGIN = "log in with `hf auth login` or set HF_TOKEN"
_READ_CHUNK = 8 * 1024 * 1024


class DownloadError(RuntimeError):
    """`doit download` failed; the message is one line that says what to do."""


@dataclass(frozen=True)
class FileFailure:
    """One file that could not be fetched, and why, in one line that says what to do."""

    path: str
    reason: str


class PartialDownloadError(DownloadError):
    """Some files could not be fetched; every other file was. One line per failed file."""

    def __init__(self, summary: DownloadSummary) -> None:
        self.summary = summary
        lines = [f.reason for f in summary.failed]
        if len(lines) > 1:
            lines.insert(0, f"{len(lines)} files could not be fetched:")
        super().__init__("\n".join(lines))


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
    outside_patterns: list[str] = field(default_factory=list)  # recorded, listed, not allowed
    patterns: list[str] = field(default_factory=list)
    failed: list[FileFailure] = field(default_factory=list)

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
            f"fetched {what} ({human_bytes(self.nbytes)}) in {self.seconds:.1f} s; "
            f"{self.skipped} up to date; commit {self.commit[:12]}"
        )
        if self.failed:
            line += f"; {len(self.failed)} could not be fetched: {_names(self.failed_paths)}"
        if self.gone_upstream:
            line += (
                f"; {len(self.gone_upstream)} recorded no longer upstream (kept): "
                f"{_names(self.gone_upstream)}"
            )
        if self.outside_patterns:
            line += (
                f"; {len(self.outside_patterns)} recorded outside allow_patterns "
                f"{self.patterns} (kept, not checked): {_names(self.outside_patterns)}"
            )
        return line

    @property
    def failed_paths(self) -> list[str]:
        return [f.path for f in self.failed]


def _names(paths: Sequence[str], shown: int = 3) -> str:
    """`a, b, c` or `a, b, c and 4 more`."""
    text = ", ".join(paths[:shown])
    return text + (f" and {len(paths) - shown} more" if len(paths) > shown else "")


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
    verified (size, sha256) and recorded in the manifest's `hub_files`. A file that cannot
    be fetched does not stop the others: once every other file is fetched,
    `PartialDownloadError` names each failed file with what to do. Any other failure raises
    `DownloadError` with a one-line message; files already present are never touched by a
    failure. Progress goes to stderr, the summary line to stdout.
    """
    started = time.monotonic()
    root = Path(root)
    hub = root / HUB_DIR
    endpoint = hub_endpoint()
    patterns = [allow_patterns] if isinstance(allow_patterns, str) else list(allow_patterns)
    _check_token(token)
    ctx = _Context(root, hub, repo_id, revision, "", endpoint, token)
    ctx.commit, listing, wanted = _list_at_commit(ctx, patterns)
    commit = ctx.commit
    summary = DownloadSummary(commit=commit, patterns=patterns)

    db = open_manifest(root)
    try:
        todo = _plan(ctx, db, listing, wanted, summary)
        _check_free_space(ctx, [r for r, _ in todo])
        for i, (remote, state) in enumerate(todo, 1):
            _fetch_one(ctx, db, remote, state, f"[{i}/{len(todo)}]", summary)
        if not summary.failed:
            with write_transaction(db) as conn:
                hub_files.record_source(conn, commit, repo_id, revision)
    finally:
        db.close()

    summary.seconds = time.monotonic() - started
    print(summary.describe(), flush=True)
    if summary.failed:
        raise PartialDownloadError(summary)
    return summary


def _list_at_commit(ctx: _Context, patterns: list[str]) -> tuple[str, list[_Remote], list[_Remote]]:
    """(commit the revision resolves to, every file there, the files `patterns` allow)."""
    api = HfApi(endpoint=ctx.endpoint, token=ctx.token, library_name=LIBRARY)
    with _hub_errors(ctx.endpoint, ctx.repo_id, ctx.revision, ctx.hub):
        info = api.dataset_info(ctx.repo_id, revision=ctx.revision)
        commit = info.sha
        if not commit:
            raise DownloadError(
                f"the Hub at {ctx.endpoint} gave no commit for {ctx.repo_id}@{ctx.revision}"
            )
        tree = api.list_repo_tree(ctx.repo_id, recursive=True, repo_type="dataset", revision=commit)
        listing = [_Remote.from_repo_file(f) for f in tree if isinstance(f, RepoFile)]
    wanted = sorted(
        filter_repo_objects(listing, allow_patterns=patterns, key=lambda r: r.path),
        key=lambda r: r.path,
    )
    if not wanted:
        raise DownloadError(
            f"no file of dataset {ctx.repo_id!r} at {ctx.revision} ({commit[:12]}) matches "
            f"allow_patterns {patterns}"
        )
    return commit, listing, wanted


def _plan(
    ctx: _Context,
    db: sqlite3.Connection,
    listing: list[_Remote],
    wanted: list[_Remote],
    summary: DownloadSummary,
) -> list[tuple[_Remote, str]]:
    """The files to fetch with their state (`new`/`changed`); records the ones up to date
    and notes in `summary` the recorded files no longer upstream or no longer allowed."""
    recorded = hub_files.recorded(db)
    listed = {r.path for r in listing}
    allowed = {r.path for r in wanted}
    summary.gone_upstream = sorted(p for p in recorded if p not in listed)
    summary.outside_patterns = sorted(p for p in recorded if p in listed and p not in allowed)

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
    return todo


def _fetch_one(
    ctx: _Context,
    db: sqlite3.Connection,
    remote: _Remote,
    state: str,
    counter: str,
    summary: DownloadSummary,
) -> None:
    """Fetch and record one file; a failure of this file alone goes into `summary.failed`."""
    _progress(
        f"{counter} {remote.path} {human_bytes(remote.size)}"
        f" ({'new' if state == 'new' else 'changed upstream'})"
    )
    t0 = time.monotonic()
    try:
        sent, sha256 = _fetch(ctx, remote)
    except Exception as exc:  # noqa: BLE001 - sorted by _file_failure; the rest re-raised
        reason = _file_failure(ctx, remote, exc, summary)
        if reason is None:
            raise
        _progress(f"{counter} FAILED: {reason}")
        summary.failed.append(FileFailure(remote.path, reason))
        return
    dt = max(time.monotonic() - t0, 1e-6)
    _progress(
        f"{counter} {remote.path} done: {human_bytes(sent)} in {dt:.1f} s"
        f" ({human_bytes(sent / dt)}/s)"
    )
    summary.nbytes += sent
    (summary.new if state == "new" else summary.changed).append(remote.path)
    with write_transaction(db) as conn:
        _upsert_hub_file(conn, _row(ctx, remote, sha256))


def _check_token(token: str | None) -> None:
    """Refuse, in one line, a token that cannot go into an HTTP header (not ASCII)."""
    if token is not None:
        source, value = "the token given", token
    else:
        source = next(
            (k for k in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN") if os.environ.get(k)),
            f"the token file {constants.HF_TOKEN_PATH}",
        )
        value = get_token()
    if not value or value.isascii():
        return
    pos, char = next((i, c) for i, c in enumerate(value) if not c.isascii())
    raise DownloadError(
        f"{source} contains a non-ASCII character: {char!r} (U+{ord(char):04X}) at position "
        f"{pos + 1}; a Hub token is ASCII only: copy it again from "
        "https://huggingface.co/settings/tokens"
    )


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
        _progress(f"checking {remote.path} (present, not recorded): hashing {human_bytes(size)}")
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
            f"{human_bytes(needed)} ({needed} bytes) but only {human_bytes(free)} "
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
        return remote.size, _fetch_via_xet(ctx, remote, final)
    part = _partial_path(ctx, remote)
    have = _resumable_bytes(remote, part)
    if have:
        _progress(f"    resuming {remote.path} at {human_bytes(have)}")
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
        _drop_if_empty(part)  # else keep the partial file: the next run resumes it
        raise
    except OSError as exc:
        if exc.errno != errno.ENOSPC and not isinstance(exc, ConnectionError):
            # huggingface_hub's size consistency check: the partial data cannot be trusted
            part.unlink(missing_ok=True)
        raise
    except _TRANSPORT_ERRORS:
        _drop_if_empty(part)
        raise
    sha256 = _verify(remote, part)  # removes the partial file when it does not match
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(part, final)
    return remote.size - have, sha256


def _fetch_via_xet(ctx: _Context, remote: _Remote, final: Path) -> str:
    """Fetch one file with hf_xet (it resumes on its own); its sha256, verified."""
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
    return _verify(remote, final)  # removes the file when it does not match


def _resumable_bytes(remote: _Remote, part: Path) -> int:
    """How much of `part` a download may resume from; partial files of an older upstream
    version of the same file, or longer than the file, are removed."""
    part.parent.mkdir(parents=True, exist_ok=True)
    prefix = Path(remote.path).name + "."
    for stale in part.parent.iterdir():
        if stale != part and stale.name.startswith(prefix) and stale.name.endswith(".part"):
            stale.unlink(missing_ok=True)
    have = part.stat().st_size if part.is_file() else 0
    if have > remote.size:
        part.unlink()
        have = 0
    return have


def _drop_if_empty(part: Path) -> None:
    """Remove a partial file that holds no byte, so that none is said to be kept."""
    with suppress(FileNotFoundError):
        if part.stat().st_size == 0:
            part.unlink()


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
        "repo_id": ctx.repo_id,
    }


def _upsert_hub_file(conn: sqlite3.Connection, row: dict) -> None:
    """Record a fetched or verified file, and where its tar came from."""
    hub_files.upsert(conn, row)
    sources.record(conn, {**row, "repo_path": row["path"]})


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
def _hub_errors(endpoint: str, repo_id: str, revision: str, hub: Path) -> Iterator[None]:
    """Turn huggingface_hub / network / disk errors while listing into one-line errors."""
    try:
        yield
    except DownloadError:
        raise
    except Exception as exc:
        error = _reach_error(exc, endpoint, repo_id, revision, hub) or _refusal_error(
            exc, endpoint, repo_id, revision
        )
        if error is None:
            raise
        raise error from exc


def _reach_error(
    exc: Exception, endpoint: str, repo_id: str, revision: str, hub: Path
) -> DownloadError | None:
    """The one-line error when the request could not be made or reach the Hub, else None."""
    kept = f"; nothing was changed, the shards already in {hub} are untouched"
    if isinstance(exc, HFValidationError):
        return DownloadError(
            f"invalid repo_id or revision ({repo_id!r}, {revision!r}): {_first_line(exc)}"
        )
    if isinstance(exc, OfflineModeIsEnabled):
        return DownloadError(
            f"HF_HUB_OFFLINE is set, so the Hub at {endpoint} is not contacted{kept}"
        )
    if isinstance(exc, _TRANSPORT_ERRORS):
        return DownloadError(
            f"cannot reach the Hub at {endpoint} ({type(exc).__name__}: {_first_line(exc)}){kept}"
        )
    if isinstance(exc, UnicodeEncodeError):
        return DownloadError(
            f"a request header holds a non-ASCII character ({_first_line(exc)}): "
            "check HF_TOKEN and the HF_* settings"
        )
    return None


def _refusal_error(
    exc: Exception, endpoint: str, repo_id: str, revision: str
) -> DownloadError | None:
    """The one-line error for an HTTP answer of the Hub that refuses the listing, else None."""
    if isinstance(exc, RevisionNotFoundError):
        return DownloadError(
            f"revision {revision!r} not found in dataset {repo_id!r} at {endpoint}"
        )
    if isinstance(exc, GatedRepoError):
        return DownloadError(
            f"dataset {repo_id!r} at {endpoint} is gated: accept its conditions on the Hub, "
            f"then {LOGIN}"
        )
    if isinstance(exc, RepositoryNotFoundError):
        hint = f" (if it is private, {LOGIN})" if _status(exc) in (401, 403) else ""
        return DownloadError(f"dataset {repo_id!r} not found at {endpoint}{hint}")
    if not isinstance(exc, HfHubHTTPError):
        return None
    status = _status(exc)
    if status in (401, 403):
        return DownloadError(
            f"the Hub at {endpoint} refused access to dataset {repo_id!r} (HTTP {status}): {LOGIN}"
        )
    return DownloadError(
        f"the Hub at {endpoint} answered HTTP {status} for dataset {repo_id!r} ({_first_line(exc)})"
    )


def _file_failure(
    ctx: _Context, remote: _Remote, exc: BaseException, summary: DownloadSummary
) -> str | None:
    """One line for a file that could not be fetched, saying what to do for that kind of
    failure; raises `DownloadError` for a failure that every later file would meet too
    (disk full); None for an exception that is not a download failure."""
    path, status = remote.path, _status(exc)
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        raise DownloadError(
            f"disk full in {ctx.hub} while fetching {path}: free some space and rerun "
            f"({len(summary.fetched)} file(s) fetched before it are kept)"
            + _partial_words(ctx, remote)
        ) from exc
    if isinstance(exc, DownloadError):
        return str(exc)
    if status == 404 or isinstance(exc, EntryNotFoundError):
        return (
            f"{path}: not found at {ctx.revision} ({ctx.commit[:12]}) on {ctx.endpoint} "
            "(HTTP 404): check revision and allow_patterns"
        )
    if status in (401, 403) or isinstance(exc, GatedRepoError):
        return f"{path}: the Hub at {ctx.endpoint} refused access (HTTP {status}): {LOGIN}"
    resume = f"rerun to resume{_partial_words(ctx, remote)}"
    if isinstance(exc, _TRANSPORT_ERRORS):
        return (
            f"{path}: connection to {ctx.endpoint} failed ({type(exc).__name__}: "
            f"{_first_line(exc)}): {resume}"
        )
    if isinstance(exc, HfHubHTTPError):
        return f"{path}: the Hub at {ctx.endpoint} answered HTTP {status}: {resume}"
    if isinstance(exc, OSError):
        return f"{path}: download failed ({_first_line(exc)}): {resume}"
    return None


def _partial_words(ctx: _Context, remote: _Remote) -> str:
    """` (partial data kept: 10.49 MB of 12.58 MB)` when a partial file exists, else ``."""
    part = _partial_path(ctx, remote)
    have = part.stat().st_size if part.is_file() else 0
    if not have:
        return ""
    return f" (partial data kept: {human_bytes(have)} of {human_bytes(remote.size)})"


def _status(exc: BaseException) -> int | None:
    """The HTTP status of a huggingface_hub error, if it carries a response."""
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
