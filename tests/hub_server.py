"""A small, real HTTP server that answers the Hub endpoints huggingface_hub 2.x calls.

It serves one dataset repo from an in-memory `{repo path: bytes}` dict, on 127.0.0.1:

- `GET /api/datasets/{repo}` and `GET /api/datasets/{repo}/revision/{rev}` (repo info:
  `sha`, `siblings`; with `?blobs=true` also size, blobId and lfs of each sibling)
- `GET /api/datasets/{repo}/tree/{rev}[/{path}]?recursive=...` (files with `oid`, `size`,
  `lfs: {oid, size, pointerSize}`; folders as `type: directory`; one page)
- `HEAD` / `GET /datasets/{repo}/resolve/{rev}/{path}` with `X-Repo-Commit`, `ETag`,
  `X-Linked-Etag` / `X-Linked-Size` (LFS files), `Content-Length`, `Accept-Ranges` and
  `Range` support (206 + `Content-Range`)
- `GET /api/agent-harnesses` (huggingface_hub's user-agent detection; an empty registry)

Errors carry the headers huggingface_hub maps to its exceptions: `X-Error-Code`
RepoNotFound / RevisionNotFound / EntryNotFound, and 401 for a missing or wrong token.

Every change of the files makes a new commit (older commits stay servable). The server
counts requests (`gets`, `heads`, `ranges`, `bytes_served`), can throttle file bodies
(`rate`, bytes per second), calls `watch(path)` after each slice of a file body, and can
inject faults into the next GETs of a file: drop the connection after n body bytes,
answer an HTTP status, or serve corrupted bytes; and into its next HEADs: answer an HTTP status.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".tar", ".parquet", ".bin")
_REPO = r"(?P<repo>[^/]+/[^/]+)"


def git_blob_oid(data: bytes) -> str:
    """The git blob sha1 of `data` (what the Hub calls `oid` of a regular file)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    """The git-lfs pointer file stored in git for `data`."""
    return (
        "version https://git-lfs.github.com/spec/v1\n"
        f"oid sha256:{hashlib.sha256(data).hexdigest()}\nsize {len(data)}\n"
    ).encode()


class HubServer:
    """An in-memory dataset repo behind a real threaded HTTP server (see the module doc)."""

    def __init__(
        self,
        repo_id: str = "tester/shards",
        files: dict[str, bytes] | None = None,
        *,
        token: str | None = None,
        lfs_suffixes: tuple[str, ...] = LFS_SUFFIXES,
    ) -> None:
        self.repo_id = repo_id
        self.token = token  # when set, requests must send `Authorization: Bearer <token>`
        self.lfs_suffixes = lfs_suffixes
        self.lock = threading.Lock()
        self.commits: dict[str, dict[str, bytes]] = {}
        self.branches: dict[str, str] = {}
        self.gets: Counter[str] = Counter()  # GET /resolve per repo path (full or ranged)
        self.heads: Counter[str] = Counter()
        self.ranges: list[tuple[str, str]] = []  # (repo path, Range header) of ranged GETs
        self.bytes_served: Counter[str] = Counter()
        self.requests: list[tuple[str, str]] = []  # (method, raw path) of every request
        self.faults: dict[str, list[tuple]] = {}
        self.head_faults: dict[str, list[int]] = {}  # statuses for the next HEADs of a file
        self.corrupted: set[str] = set()
        self.rate: float | None = None  # bytes per second per file transfer; None: no limit
        self.watch = None  # called (repo path) after each slice of a file's body is sent
        self._counter = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self.set_files(files or {})

    # --- repo content -------------------------------------------------------------------

    def set_files(self, files: dict[str, bytes], branch: str = "main") -> str:
        """Make `files` the content of `branch` as a new commit; returns its sha."""
        with self.lock:
            self._counter += 1
            h = hashlib.sha1(b"commit %d\n" % self._counter, usedforsecurity=False)
            for path in sorted(files):
                h.update(path.encode() + b"\0" + hashlib.sha256(files[path]).digest())
            sha = h.hexdigest()
            self.commits[sha] = dict(files)
            self.branches[branch] = sha
            return sha

    def files(self, branch: str = "main") -> dict[str, bytes]:
        """The files at the head of `branch`."""
        with self.lock:
            return dict(self.commits[self.branches[branch]])

    def add_file(self, path: str, data: bytes, branch: str = "main") -> str:
        """Add or replace one file upstream (a new commit); returns the commit sha."""
        files = self.files(branch)
        files[path] = data
        return self.set_files(files, branch)

    @property
    def head(self) -> str:
        """The commit `main` points at."""
        return self.branches["main"]

    # --- fault injection ----------------------------------------------------------------

    def drop_next(self, path: str, after_bytes: int, times: int = 1) -> None:
        """The next `times` GETs of `path` send `after_bytes` body bytes, then hang up."""
        self.faults.setdefault(path, []).extend([("drop", after_bytes)] * times)

    def fail_next(self, path: str, status: int, times: int = 1) -> None:
        """The next `times` GETs of `path` answer HTTP `status`."""
        self.faults.setdefault(path, []).extend([("status", status)] * times)

    def fail_next_head(self, path: str, status: int, times: int = 1) -> None:
        """The next `times` HEADs of `path` (the metadata request before a GET) answer
        HTTP `status`; with 404 as the Hub says it: `X-Error-Code: EntryNotFound`."""
        self.head_faults.setdefault(path, []).extend([status] * times)

    def corrupt(self, path: str) -> None:
        """Serve `path` with one byte changed (same size) from now on."""
        self.corrupted.add(path)

    def reset_counts(self) -> None:
        """Forget the request counters."""
        with self.lock:
            self.gets.clear()
            self.heads.clear()
            self.ranges.clear()
            self.bytes_served.clear()
            self.requests.clear()

    # --- lifecycle ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The endpoint to put in HF_ENDPOINT."""
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        """Listen on 127.0.0.1 (a free port) in a background thread."""
        handler = type("BoundHubHandler", (_Handler,), {"hub": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut open keep-alive connections (clients then get refused)."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        with self.lock:
            conns = list(self._conns)
        for conn in conns:
            with suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def running_hub(files: dict[str, bytes] | None = None, **kwargs) -> Iterator[HubServer]:
    """A started `HubServer`, stopped on exit."""
    server = HubServer(files=files, **kwargs).start()
    try:
        yield server
    finally:
        server.stop()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: HubServer  # set on the bound subclass

    def setup(self) -> None:
        super().setup()
        with self.hub.lock:
            self.hub._conns.add(self.connection)

    def finish(self) -> None:
        with self.hub.lock:
            self.hub._conns.discard(self.connection)
        with suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        pass

    # --- plumbing -----------------------------------------------------------------------

    def _send(
        self,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        head_only: bool = False,
    ) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and not head_only:
            self.wfile.write(body)

    def _json(self, payload: object) -> None:
        self._send(200, json.dumps(payload).encode(), {"Content-Type": "application/json"})

    def _error(
        self,
        status: int,
        code: str | None,
        message: str,
        head_only: bool = False,
        commit: str | None = None,
    ) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        if commit:
            headers["X-Repo-Commit"] = commit
        self._send(status, json.dumps({"error": message}).encode(), headers, head_only)

    def _authorized(self, head_only: bool) -> bool:
        token = self.hub.token
        if token is None:
            return True
        sent = self.headers.get("Authorization")
        if sent is None:
            self._error(401, "RepoNotFound", "Invalid username or password.", head_only)
            return False
        if sent != f"Bearer {token}":
            self._error(401, None, "Invalid credentials in Authorization header", head_only)
            return False
        return True

    def _resolve_rev(self, repo: str, rev: str, head_only: bool = False) -> str | None:
        if repo != self.hub.repo_id:
            self._error(404, "RepoNotFound", "Repository not found", head_only)
            return None
        rev = unquote(rev)
        with self.hub.lock:
            sha = self.hub.branches.get(rev) or (rev if rev in self.hub.commits else None)
        if sha is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", head_only)
        return sha

    def _is_lfs(self, path: str) -> bool:
        return path.endswith(self.hub.lfs_suffixes)

    # --- routes -------------------------------------------------------------------------

    def do_HEAD(self) -> None:  # noqa: N802 - http.server naming
        self._route("HEAD")

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._route("GET")

    def _route(self, method: str) -> None:
        with self.hub.lock:
            self.hub.requests.append((method, self.path))
        split = urlsplit(self.path)
        path, query = split.path, parse_qs(split.query)
        head_only = method == "HEAD"
        if path == "/api/agent-harnesses":
            self._json({"standardEnvVars": [], "harnesses": {}})
            return
        if not self._authorized(head_only):
            return
        if m := re.fullmatch(rf"/datasets/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)", path):
            self._resolve(m["repo"], m["rev"], unquote(m["file"]), head_only)
        elif method == "GET" and (
            m := re.fullmatch(rf"/api/datasets/{_REPO}(?:/revision/(?P<rev>[^/]+))?", path)
        ):
            self._repo_info(m["repo"], m["rev"] or "main", query)
        elif method == "GET" and (
            m := re.fullmatch(rf"/api/datasets/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<sub>.*))?", path)
        ):
            self._tree(m["repo"], m["rev"], unquote(m["sub"] or ""), query)
        elif re.fullmatch(r"/api/(models|spaces)/.*|/(?!datasets/).+/resolve/.*", path):
            self._error(404, "RepoNotFound", "Repository not found", head_only)
        else:
            self._error(404, None, "Not found", head_only)

    def _repo_info(self, repo: str, rev: str, query: dict) -> None:
        sha = self._resolve_rev(repo, rev)
        if sha is None:
            return
        with self.hub.lock:
            files = dict(self.hub.commits[sha])
        blobs = query.get("blobs", ["false"])[0].lower() == "true"
        siblings = []
        for p in sorted(files):
            entry: dict = {"rfilename": p}
            if blobs:
                entry.update(self._blob_fields(p, files[p]))
                if "lfs" in entry:
                    lfs = entry["lfs"]
                    entry["lfs"] = {
                        "sha256": lfs["oid"],
                        "size": lfs["size"],
                        "pointerSize": lfs["pointerSize"],
                    }
                entry["blobId"] = entry.pop("oid")
            siblings.append(entry)
        self._json(
            {
                "_id": hashlib.md5(repo.encode(), usedforsecurity=False).hexdigest()[:24],
                "id": repo,
                "author": repo.split("/")[0],
                "sha": sha,
                "lastModified": "2024-01-01T00:00:00.000Z",
                "createdAt": "2024-01-01T00:00:00.000Z",
                "private": False,
                "gated": False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
                "usedStorage": sum(len(b) for b in files.values()),
            }
        )

    def _blob_fields(self, path: str, data: bytes) -> dict:
        if self._is_lfs(path):
            pointer = lfs_pointer(data)
            return {
                "oid": git_blob_oid(pointer),
                "size": len(data),
                "lfs": {
                    "oid": hashlib.sha256(data).hexdigest(),
                    "size": len(data),
                    "pointerSize": len(pointer),
                },
            }
        return {"oid": git_blob_oid(data), "size": len(data)}

    def _tree(self, repo: str, rev: str, sub: str, query: dict) -> None:
        sha = self._resolve_rev(repo, rev)
        if sha is None:
            return
        with self.hub.lock:
            files = dict(self.hub.commits[sha])
        recursive = query.get("recursive", ["false"])[0].lower() in ("true", "1")
        prefix = sub.strip("/") + "/" if sub.strip("/") else ""
        under = {p: b for p, b in files.items() if p.startswith(prefix)}
        if prefix and not under:
            self._error(404, "EntryNotFound", f"{sub} does not exist", commit=sha)
            return
        entries: dict[str, dict] = {}
        for p, data in sorted(under.items()):
            rest = p[len(prefix) :].split("/")
            # folders between prefix and the file
            for depth in range(1, len(rest)):
                if depth > 1 and not recursive:
                    break
                folder = prefix + "/".join(rest[:depth])
                oid = hashlib.sha1(f"tree {sha} {folder}".encode(), usedforsecurity=False)
                entries.setdefault(
                    folder, {"type": "directory", "oid": oid.hexdigest(), "size": 0, "path": folder}
                )
            if len(rest) == 1 or recursive:
                entries[p] = {"type": "file", "path": p, **self._blob_fields(p, data)}
        self._json(list(entries.values()))

    def _file_headers(self, sha: str, file: str, data: bytes) -> dict[str, str]:
        """The Hub's headers for a file: commit, ETag (the LFS oid for LFS files)."""
        fields = self._blob_fields(file, data)
        headers = {
            "X-Repo-Commit": sha,
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'attachment; filename="{file.rsplit("/", 1)[-1]}"',
        }
        if "lfs" in fields:
            headers["ETag"] = f'"{fields["lfs"]["oid"]}"'
            headers["X-Linked-Etag"] = f'"{fields["lfs"]["oid"]}"'
            headers["X-Linked-Size"] = str(len(data))
        else:
            headers["ETag"] = f'"{fields["oid"]}"'
        return headers

    def _byte_range(self, rng: str, size: int, sha: str) -> tuple[int, int] | None:
        """(first, last) byte of a Range header; None after answering 416 to a bad one."""
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
        if m is None or (not m[1] and not m[2]):
            self._error(416, None, f"bad range {rng}", commit=sha)
            return None
        if m[1]:
            start = int(m[1])
            end = min(int(m[2]), size - 1) if m[2] else size - 1
        else:
            start, end = max(size - int(m[2]), 0), size - 1
        if start >= size or start > end:
            self._error(416, None, f"unsatisfiable range {rng}", commit=sha)
            return None
        return start, end

    def _resolve(self, repo: str, rev: str, file: str, head_only: bool) -> None:
        sha = self._resolve_rev(repo, rev, head_only)
        if sha is None:
            return
        with self.hub.lock:
            data = self.hub.commits[sha].get(file)
            if not head_only:
                self.hub.gets[file] += 1
            else:
                self.hub.heads[file] += 1
            fault = None
            if not head_only and self.hub.faults.get(file):
                fault = self.hub.faults[file].pop(0)
            elif head_only and self.hub.head_faults.get(file):
                fault = ("head", self.hub.head_faults[file].pop(0))
            corrupted = file in self.hub.corrupted
        if data is None:
            self._error(404, "EntryNotFound", f"{file} does not exist", head_only, commit=sha)
            return
        headers = self._file_headers(sha, file, data)
        if fault is not None and fault[0] == "head":
            code = "EntryNotFound" if fault[1] == 404 else None
            self._error(fault[1], code, f"injected HTTP {fault[1]}", head_only, commit=sha)
            return
        if fault is not None and fault[0] == "status":
            self._error(fault[1], None, f"injected HTTP {fault[1]}", head_only, commit=sha)
            return
        if corrupted:
            mid = len(data) // 2
            data = data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1 :]

        status, start, end = 200, 0, len(data) - 1
        rng = self.headers.get("Range")
        if rng and not head_only:
            span = self._byte_range(rng, len(data), sha)
            if span is None:
                return
            status, (start, end) = 206, span
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            with self.hub.lock:
                self.hub.ranges.append((file, rng))
        body = data[start : end + 1]

        if head_only:
            self._send(status, body, headers, head_only)
            return
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        dropped = fault is not None and fault[0] == "drop"
        self._write_body(file, memoryview(body)[: fault[1]] if dropped else memoryview(body))
        if dropped:
            self.wfile.flush()
            self.close_connection = True
            with suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    def _write_body(self, file: str, body: memoryview, slice_bytes: int = 16 * 1024) -> None:
        """Send `body` in slices, no faster than `hub.rate`, counting what was sent."""
        start = time.monotonic()
        sent = 0
        for at in range(0, len(body), slice_bytes):
            piece = body[at : at + slice_bytes]
            try:
                self.wfile.write(piece)
            except OSError:
                break  # the client hung up
            sent += len(piece)
            with self.hub.lock:
                self.hub.bytes_served[file] += len(piece)
            if self.hub.watch is not None:
                self.hub.watch(file)
            if self.hub.rate:
                time.sleep(max(sent / self.hub.rate - (time.monotonic() - start), 0))
