"""`doit pull`: fetch what is new or changed at repo_id@revision and build it, pipelined.

A fetcher thread streams each shard into its partial file (sha256 while streaming,
resumed with Range after a drop), checks it against the listing and moves it into
`hub/`; meanwhile the shards fetched before it are read by up to `workers` processes and
committed in order by one writer (tasks/pull/build.py), with the very `extract_shard`
plain `doit` runs, so the result is the same. With `keep_tars = false` each tar is
deleted once its shard is committed, and the fetcher waits for a free slot: at most two
shards' tar bytes are ever on disk (two being built, or one built and one fetched).
A shard whose bytes do not match the listing counts as not done: its earlier build
leaves `data/` (tasks/pull/forget.py).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from state import hub as hub_files
from state import shards
from state.manifest import open_manifest, write_transaction
from tasks import download as dl
from tasks.progress import human_bytes
from tasks.pull.build import Builder
from tasks.pull.stream import PullStopped, Source, stream_to_part
from tasks.settings import Settings, shard_name

SLOTS_WITHOUT_TARS = 2
REPORT_EVERY_S = 5.0


class PullError(dl.DownloadError):
    """`doit pull` stopped; the message is one line that says what to do."""


class Mismatch(dl.DownloadError):
    """A shard's bytes are not what the Hub lists: nothing of that shard counts as done."""


@dataclass
class Item:
    """One shard to build: its listing entry, its tar under root, whether to fetch it."""

    remote: dl._Remote
    tar: Path
    fetch: bool
    state: str  # new | changed | present
    sha256: str | None = None  # of the bytes fetched
    mismatch: bool = False  # fetched, but not what the listing says


@dataclass
class PullSummary:
    """What one pull did."""

    commit: str
    fetched_new: list[str] = field(default_factory=list)
    fetched_changed: list[str] = field(default_factory=list)
    up_to_date: int = 0
    built: int = 0
    nbytes: int = 0
    peak_tar_bytes: int = 0
    seconds: float = 0.0
    gone_upstream: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @property
    def fetched(self) -> list[str]:
        return self.fetched_new + self.fetched_changed

    def describe(self) -> str:
        """The one-line summary printed at the end of a pull."""
        line = (
            f"pull: {len(self.fetched)} shard(s) fetched ({len(self.fetched_new)} new, "
            f"{len(self.fetched_changed)} changed upstream, {human_bytes(self.nbytes)}) and "
            f"{self.built} built in {self.seconds:.1f} s; {self.up_to_date} up to date; "
            f"commit {self.commit[:12]}; tars on disk at peak: {human_bytes(self.peak_tar_bytes)}"
        )
        if self.gone_upstream:
            line += (
                f"; {len(self.gone_upstream)} recorded no longer upstream (kept): "
                f"{dl._names(self.gone_upstream)}"
            )
        if self.failed:
            line += f"; {len(self.failed)} shard(s) could not be fetched (see above)"
        return line


class _Disk:
    """Tar bytes on disk now, and at most, as the fetcher and the builder change them."""

    def __init__(self, start: int) -> None:
        self.lock = threading.Lock()
        self.now = self.peak = start

    def add(self, n: int) -> None:
        with self.lock:
            self.now += n
            self.peak = max(self.peak, self.now)


def pull(settings: Settings, token: str | None = None) -> PullSummary:
    """Fetch and build every shard new or changed at `repo_id@revision`; see the module doc."""
    started = time.monotonic()
    dl._check_token(token)
    hub = settings.root / dl.HUB_DIR
    ctx = dl._Context(
        settings.root, hub, settings.repo_id, settings.revision, "", dl.hub_endpoint(), token
    )
    ctx.commit, listing, wanted = dl._list_at_commit(ctx, list(settings.allow_patterns))
    summary = PullSummary(commit=ctx.commit)
    db = open_manifest(settings.root)
    try:
        items = _plan(settings, ctx, db, listing, wanted, summary)
    finally:
        db.close()
    _pipeline(settings, ctx, items, summary)
    if not summary.failed:
        db = open_manifest(settings.root)
        try:
            with write_transaction(db) as conn:
                hub_files.record_source(conn, ctx.commit, ctx.repo_id, ctx.revision)
        finally:
            db.close()
    summary.seconds = time.monotonic() - started
    return summary


def _plan(settings: Settings, ctx, db, listing, wanted, summary: PullSummary) -> list[Item]:
    """The shards to fetch or build, in order; records those built and unchanged upstream."""
    recorded = hub_files.recorded(db)
    listed = {r.path for r in listing}
    summary.gone_upstream = sorted(p for p in recorded if p not in listed)
    items: list[Item] = []
    unchanged: list[dict] = []
    for remote in wanted:
        tar = ctx.hub / remote.path
        if tar.exists():
            state, sha256 = dl._local_state(ctx, remote, recorded.get(remote.path))
            items.append(Item(remote, tar, state != "ok", "present" if state == "ok" else state))
            if state == "ok":  # as `doit download` records it (also a tar a kill left unrecorded)
                unchanged.append(dl._row(ctx, remote, sha256))
            continue
        if _built_from(settings, db, tar, remote, recorded.get(remote.path)):
            unchanged.append(dl._row(ctx, remote, remote.sha256))
            continue
        state = "changed" if remote.path in recorded else "new"
        items.append(Item(remote, tar, True, state))
    summary.up_to_date = len(unchanged) - sum(1 for i in items if not i.fetch)
    with write_transaction(db) as conn:
        for row in unchanged:
            dl._upsert_hub_file(conn, row)
    return items


def _built_from(settings: Settings, db, tar: Path, remote, row: dict | None) -> bool:
    """Whether the shard of `tar` (gone: keep_tars = false) was built from these very bytes."""
    if row is None or remote.sha256 is None or row["sha256"] != remote.sha256:
        return False
    done = shards.get(db, shard_name(tar, settings))
    rel = os.path.relpath(tar, settings.root)
    return bool(done) and done["status"] == "done" and done["path"] == rel


def _pipeline(settings: Settings, ctx, items: list[Item], summary: PullSummary) -> None:
    """Fetch in a thread, build in processes (the extraction holds the GIL, which would
    starve the fetcher): each shard read once its tar is there, up to `workers` at once,
    committed in order by one writer; at most two tars on disk without keep_tars."""
    present = sum(i.tar.stat().st_size for i in items if not i.fetch and i.tar.exists())
    disk = _Disk(present)
    limit = len(items) + 1 if settings.keep_tars else SLOTS_WITHOUT_TARS
    slots = threading.Semaphore(limit)
    events: queue.Queue = queue.Queue()
    stop = threading.Event()
    fetcher = threading.Thread(
        target=_fetch_all, args=(ctx, items, slots, events, stop, disk, summary), daemon=True
    )

    def release(item: Item) -> None:
        """A shard committed (or given up): its tar may go, the next download may start."""
        if not settings.keep_tars and item.tar.exists():
            size = item.tar.stat().st_size
            item.tar.unlink()
            disk.add(-size)
        slots.release()  # the captions need no tar

    builder = Builder(settings, ctx, summary, events)
    try:
        fetcher.start()
        if items:
            builder.warm_up()  # while the first shard downloads
        builder.run(len(items), release)
    except BaseException:
        stop.set()  # Ctrl-C or a failure: the workers are not waited for (they end with us)
        builder.close(wait=False)
        raise
    else:
        builder.close(wait=True)
        fetcher.join(timeout=60)
    finally:
        stop.set()
        summary.peak_tar_bytes = disk.peak


def _fetch_all(ctx, items, slots, ready, stop, disk: _Disk, summary: PullSummary) -> None:
    """The fetcher thread; whatever stops it unexpectedly stops the pull, not a hang."""
    try:
        _fetch_each(ctx, items, slots, ready, stop, disk, summary)
    except BaseException as exc:  # noqa: BLE001 - handed to the main thread, raised there
        ready.put((None, exc))


def _fetch_each(ctx, items, slots, ready, stop, disk: _Disk, summary: PullSummary) -> None:
    """Each shard in order, once a tar slot is free: fetched if needed, then handed on."""
    report = _Report(items)
    for i, item in enumerate(items, 1):
        while not slots.acquire(timeout=0.2):
            if stop.is_set():
                return
        if stop.is_set():
            return
        error: str | BaseException | None = None
        if item.fetch:
            try:
                _fetch_one(ctx, item, disk, report, stop, summary, f"[{i}/{len(items)}]")
            except PullStopped:
                return
            except Exception as exc:  # noqa: BLE001 - this shard's own failure, or fatal
                item.mismatch = isinstance(exc, Mismatch)
                error = _shard_failure(ctx, item, exc, summary)
                if isinstance(error, str):
                    summary.failed.append(error)
                    dl._progress(f"[{i}/{len(items)}] FAILED: {error}")
        report.finished(item)
        ready.put((item, error))
        if isinstance(error, BaseException):
            return


def _fetch_one(ctx, item: Item, disk: _Disk, report, stop, summary, counter: str) -> None:
    """Stream one shard into its partial file, verify it, move it into `hub/`."""
    remote = item.remote
    part = dl._partial_path(ctx, remote)
    had = dl._resumable_bytes(remote, part)
    disk.add(had)
    what = "new" if item.state == "new" else "changed upstream"
    resumed = f", resuming at {human_bytes(had)}" if had else ""
    dl._progress(f"{counter} {remote.path} {human_bytes(remote.size)} ({what}{resumed})")
    t0 = time.monotonic()

    def on_bytes(n: int) -> None:
        disk.add(n)
        report.tick(item, n)

    src = Source(ctx.endpoint, ctx.repo_id, ctx.commit, remote.path, ctx.token)
    sent, sha256 = stream_to_part(src, remote.size, part, on_bytes, stop)
    _verify(ctx, item, part, sha256, disk)
    item.tar.parent.mkdir(parents=True, exist_ok=True)
    os.replace(part, item.tar)
    dt = max(time.monotonic() - t0, 1e-6)
    dl._progress(
        f"{counter} {remote.path} fetched: {human_bytes(sent)} in {dt:.1f} s "
        f"({human_bytes(sent / dt)}/s)"
    )
    summary.nbytes += sent
    (summary.fetched_new if item.state == "new" else summary.fetched_changed).append(remote.path)
    item.sha256 = sha256  # recorded by the writer, with the shard


def _verify(ctx, item: Item, part: Path, sha256: str, disk: _Disk) -> None:
    """Size and sha256 as the listing says, else the partial file goes and the shard fails
    (its earlier build leaves `data/`: tasks/pull/forget.py)."""
    remote = item.remote
    size = part.stat().st_size
    problem = None
    if size != remote.size:
        problem = f"{size} bytes, the Hub lists {remote.size}"
    elif remote.sha256 is not None and sha256 != remote.sha256:
        problem = f"sha256 {sha256}, the Hub lists {remote.sha256}"
    if problem is None:
        return
    part.unlink(missing_ok=True)
    disk.add(-size)
    raise Mismatch(
        f"{remote.path}: the bytes fetched do not match the Hub listing ({problem}): "
        f"nothing of shard {item.tar.stem} counts as done (the bytes and any earlier build "
        "of it in data/ were removed); rerun `doit pull` to fetch it again"
    )


def _shard_failure(ctx, item: Item, exc: Exception, summary) -> str | BaseException:
    """One line for a shard that could not be fetched, or the exception that stops the pull."""
    try:
        reason = dl._file_failure(ctx, item.remote, exc, summary)
    except dl.DownloadError as fatal:  # disk full: every later shard would fail too
        return fatal
    if reason is None:
        return exc
    return reason.replace("rerun to resume", "rerun `doit pull` to resume")


class _Report:
    """Progress lines on stderr: the shard's bytes and rate, overall bytes and time left."""

    def __init__(self, items: list[Item]) -> None:
        self.left = sum(i.remote.size for i in items if i.fetch)
        self.count = sum(1 for i in items if i.fetch)
        self.index = 0
        self.start = self.last = time.monotonic()
        self.done = self.shard_done = 0
        self.lock = threading.Lock()

    def tick(self, item: Item, n: int) -> None:
        with self.lock:
            self.done += n
            self.shard_done += n
            now = time.monotonic()
            if now - self.last < REPORT_EVERY_S:
                return
            self.last = now
        rate = self.done / max(now - self.start, 1e-6)
        left = max(self.left - self.done, 0)
        dl._progress(
            f"  {item.remote.path}: {human_bytes(self.shard_done)} of "
            f"{human_bytes(item.remote.size)} at {human_bytes(rate)}/s; shard "
            f"{self.index + 1} of {self.count} to fetch, {human_bytes(left)} left, "
            f"about {_duration(left / rate if rate else 0)} to go"
        )

    def finished(self, item: Item) -> None:
        if item.fetch:
            self.index += 1
        self.shard_done = 0


def _duration(seconds: float) -> str:
    """`1h 02m`, `3m 10s` or `12s`."""
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s}s"
