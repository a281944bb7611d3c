"""A small Hugging Face Hub on 127.0.0.1, speaking the endpoints huggingface_hub calls.

Two real HTTP servers (ephemeral ports, one thread per request):

* the Hub: ``GET /api/models/{repo}[/revision/{rev}]`` (repo info with ``siblings``; sizes and
  LFS data when asked with ``?blobs=true``) and ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``.
  Small files are answered directly (``ETag`` = git blob id, ``X-Repo-Commit``,
  ``Content-Length``). LFS files (every ``.gguf``) get a ``302`` to the CDN with
  ``X-Linked-Etag`` (sha256), ``X-Linked-Size`` and ``X-Repo-Commit``, as the real Hub does.
  Errors carry the ``X-Error-Code`` values huggingface_hub maps to its exceptions:
  ``RepoNotFound`` (401 without a token, 404 with one: also private repos the token cannot read),
  ``GatedRepo`` (401 without a token, 403 with a token that was not granted access),
  ``RevisionNotFound``, ``EntryNotFound``.
* the CDN, on another port (so another origin, like the real signed CDN URLs): ``GET``/``HEAD``
  of ``/blobs/{sha256}``, honouring ``Range: bytes=N-`` and ``bytes=N-M`` with ``206`` and
  ``Content-Range`` (``ignore_ranges = True``: a server that answers 200 with the whole file).

Knobs for tests: ``cut(path, after_bytes, times)`` drops the connection mid-body; ``stall(path,
after_bytes)`` sends part of the body and then hangs until ``release()``; ``requests`` records
every request (server, method, path, headers); ``sent`` counts the body bytes sent per file; ``declared_size`` makes the listing and headers
announce a size other than the content's.
"""

from __future__ import annotations

import hashlib
import json
import random
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

GATED_MESSAGE = "Access to model {repo} is restricted. You must have access to it and be authenticated to access it. Please log in."


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FakeRepo:
    repo_id: str
    files: dict[str, bytes]
    sha: str
    private: bool = False
    gated: bool = False
    declared_size: dict[str, int] = field(default_factory=dict)
    lfs_suffixes: tuple[str, ...] = (".gguf", ".safetensors", ".bin")

    def is_lfs(self, path: str) -> bool:
        return path.endswith(self.lfs_suffixes)

    def size(self, path: str) -> int:
        return self.declared_size.get(path, len(self.files[path]))


@dataclass
class Seen:
    server: str  # "hub" | "cdn"
    method: str
    path: str
    headers: dict[str, str]  # lower-case names


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.tokens: dict[str, set[str]] = {}  # token -> repos it may read (private) or was granted (gated)
        self.requests: list[Seen] = []
        self._lock = threading.Lock()
        self._cuts: dict[str, list[int]] = {}
        self._stalls: dict[str, int] = {}
        self.stalled = threading.Event()  # set once a stalled transfer has sent its bytes
        self._release = threading.Event()
        self._blobs: dict[str, tuple[FakeRepo, str]] = {}
        self.ignore_ranges = False  # a CDN that answers every GET with the whole file (200)
        self.sent: dict[str, int] = {}  # CDN body bytes sent per file (whether the client reads them or not)
        self.hub = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, "hub"))
        self.cdn = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, "cdn"))
        self.hub.daemon_threads = self.cdn.daemon_threads = True
        self._threads = [
            threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True) for s in (self.hub, self.cdn)
        ]
        for t in self._threads:
            t.start()

    # --- setup ---------------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.hub.server_address[1]}"

    @property
    def cdn_url(self) -> str:
        return f"http://127.0.0.1:{self.cdn.server_address[1]}"

    def add_repo(
        self,
        repo_id: str,
        files: dict[str, bytes],
        *,
        private: bool = False,
        gated: bool = False,
        sha: str | None = None,
        declared_size: dict[str, int] | None = None,
    ) -> FakeRepo:
        sha = sha or hashlib.sha1("\n".join([repo_id, *sorted(files)]).encode()).hexdigest()
        repo = FakeRepo(repo_id, dict(files), sha, private, gated, dict(declared_size or {}))
        self.repos[repo_id] = repo
        for path, data in files.items():
            self._blobs[hashlib.sha256(data).hexdigest()] = (repo, path)
        return repo

    def grant(self, token: str, *repos: str) -> None:
        self.tokens.setdefault(token, set()).update(repos)

    def cut(self, path: str, after_bytes: int, times: int = 1) -> None:
        """The next ``times`` CDN transfers of ``path`` close the connection after ``after_bytes``."""
        self._cuts.setdefault(path, []).extend([after_bytes] * times)

    def stall(self, path: str, after_bytes: int) -> None:
        """The next CDN transfer of ``path`` sends ``after_bytes`` and then hangs until release()."""
        self._stalls[path] = after_bytes

    def release(self) -> None:
        self._release.set()

    def seen(self, server: str | None = None, method: str | None = None) -> list[Seen]:
        with self._lock:
            return [r for r in self.requests if (server is None or r.server == server) and (method is None or r.method == method)]

    def close(self) -> None:
        self._release.set()
        for s in (self.hub, self.cdn):
            s.shutdown()
            s.server_close()

    # --- helpers used by the handler -------------------------------------------------------------
    def record(self, server: str, method: str, path: str, headers: dict[str, str]) -> None:
        with self._lock:
            self.requests.append(Seen(server, method, path, headers))

    def access(self, repo: FakeRepo | None, token: str | None, *, file: bool) -> tuple[int, str, str] | None:
        """None if allowed, else (status, X-Error-Code, message) as the real Hub answers."""
        allowed = token is not None and repo is not None and repo.repo_id in self.tokens.get(token, set())
        if repo is None or (repo.private and not allowed):
            return (404 if token else 401, "RepoNotFound", "Repository not found")
        if repo.gated and file and not allowed:
            return (403 if token else 401, "GatedRepo", GATED_MESSAGE.format(repo=repo.repo_id))
        return None

    def count(self, path: str, n: int) -> None:
        with self._lock:
            self.sent[path] = self.sent.get(path, 0) + n

    def next_cut(self, path: str) -> int | None:
        with self._lock:
            queue = self._cuts.get(path)
            return queue.pop(0) if queue else None

    def take_stall(self, path: str) -> int | None:
        with self._lock:
            return self._stalls.pop(path, None)


def _handler(hub: FakeHub, server: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # quiet
            pass

        def do_HEAD(self) -> None:
            self._serve(head=True)

        def do_GET(self) -> None:
            self._serve(head=False)

        # --- plumbing ----------------------------------------------------------------------------
        def _token(self) -> str | None:
            auth = self.headers.get("Authorization", "")
            return auth[7:] if auth.startswith("Bearer ") else None

        def _send(self, status: int, headers: dict[str, str], body: bytes = b"", head: bool = False) -> None:
            self.send_response(status)
            for k, v in headers.items():
                if k.lower() != "content-length":
                    self.send_header(k, v)
            self.send_header("Content-Length", headers.get("Content-Length", str(len(body))))
            self.end_headers()
            if not head and body:
                self.wfile.write(body)

        def _error(self, status: int, code: str, message: str, head: bool, extra: dict[str, str] | None = None) -> None:
            body = json.dumps({"error": message}).encode()
            headers = {"Content-Type": "application/json", "X-Error-Code": code, "X-Error-Message": message}
            headers.update(extra or {})
            self._send(status, headers, body, head)

        def _serve(self, head: bool) -> None:
            url = urlsplit(self.path)
            hub.record(server, self.command, url.path, {k.lower(): v for k, v in self.headers.items()})
            try:
                if server == "cdn":
                    self._cdn(url.path, head)
                elif url.path.startswith("/api/models/"):
                    self._api(url.path[len("/api/models/") :], parse_qs(url.query), head)
                else:
                    self._resolve(url.path, head)
            except (BrokenPipeError, ConnectionResetError):
                pass

        # --- /api/models/{repo}[/revision/{rev}] -------------------------------------------------
        def _api(self, rest: str, query: dict[str, list[str]], head: bool) -> None:
            parts = rest.split("/")
            repo_id = "/".join(unquote(p) for p in parts[:2])
            revision = unquote("/".join(parts[3:])) if len(parts) > 3 and parts[2] == "revision" else "main"
            repo = hub.repos.get(repo_id)
            denied = hub.access(repo, self._token(), file=False)
            if denied:
                return self._error(*denied, head)
            assert repo is not None
            if revision not in ("main", repo.sha):
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head)
            blobs = query.get("blobs", ["false"])[0].lower() == "true"
            siblings = []
            for path, data in repo.files.items():
                entry: dict[str, object] = {"rfilename": path}
                if blobs:
                    entry["size"] = repo.size(path)
                    entry["blobId"] = git_blob_id(data)
                    if repo.is_lfs(path):
                        entry["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": repo.size(path), "pointerSize": 134}
                siblings.append(entry)
            random.Random(repo.sha).shuffle(siblings)  # the Hub's order is not ours to rely on
            info = {
                "_id": repo.sha[:24],
                "id": repo.repo_id,
                "modelId": repo.repo_id,
                "author": repo.repo_id.split("/")[0],
                "sha": repo.sha,
                "private": repo.private,
                "gated": "manual" if repo.gated else False,
                "disabled": False,
                "tags": ["gguf"],
                "siblings": siblings,
            }
            self._send(200, {"Content-Type": "application/json"}, json.dumps(info).encode(), head)

        # --- /{repo}/resolve/{rev}/{path} --------------------------------------------------------
        def _resolve(self, path: str, head: bool) -> None:
            parts = path.lstrip("/").split("/")
            if len(parts) < 5 or parts[2] != "resolve":
                return self._error(404, "EntryNotFound", "Not found", head)
            repo_id = "/".join(unquote(p) for p in parts[:2])
            revision = unquote(parts[3])
            filename = unquote("/".join(parts[4:]))
            repo = hub.repos.get(repo_id)
            denied = hub.access(repo, self._token(), file=True)
            if denied:
                return self._error(*denied, head)
            assert repo is not None
            if revision not in ("main", repo.sha):
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head)
            commit = {"X-Repo-Commit": repo.sha}
            if filename not in repo.files:
                return self._error(404, "EntryNotFound", f"{filename} does not exist", head, commit)
            data = repo.files[filename]
            if repo.is_lfs(filename):
                sha256 = hashlib.sha256(data).hexdigest()
                location = f"{hub.cdn_url}/blobs/{sha256}?name={quote(filename, safe='')}&X-Amz-Signature=fake"
                headers = {
                    **commit,
                    "Location": location,
                    "ETag": f'"{git_blob_id(data)}"',
                    "X-Linked-Etag": f'"{sha256}"',
                    "X-Linked-Size": str(repo.size(filename)),
                    "Content-Length": "0",
                }
                return self._send(302, headers, b"", head)
            headers = {**commit, "ETag": f'"{git_blob_id(data)}"', "Content-Type": "application/octet-stream"}
            self._send(200, headers, data, head)

        # --- CDN: /blobs/{sha256} ----------------------------------------------------------------
        def _cdn(self, path: str, head: bool) -> None:
            sha = path.rsplit("/", 1)[-1]
            found = hub._blobs.get(sha)
            if not path.startswith("/blobs/") or found is None:
                return self._send(404, {"Content-Type": "text/plain"}, b"NoSuchKey", head)
            repo, filename = found
            data = repo.files[filename]
            total = repo.size(filename)
            start = 0
            rng = self.headers.get("Range")
            status = 200
            headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes", "ETag": f'"{sha}"'}
            stop = total  # exclusive
            if hub.ignore_ranges:
                headers.pop("Accept-Ranges")
            elif rng and rng.startswith("bytes="):
                first, _, last = rng[6:].partition("-")
                start = int(first) if first else 0
                if last:
                    stop = min(int(last) + 1, total)
                if start >= total or stop <= start:
                    return self._send(416, {"Content-Range": f"bytes */{total}"}, b"", head)
                status = 206
                headers["Content-Range"] = f"bytes {start}-{stop - 1}/{total}"
            body = data[start:stop]
            headers["Content-Length"] = str(stop - start)
            if head:
                return self._send(status, headers, b"", True)
            cut = hub.next_cut(filename)
            stall = hub.take_stall(filename) if cut is None else None
            if cut is None and stall is None:
                hub.count(filename, len(body))
                return self._send(status, headers, body)
            keep = cut if cut is not None else stall
            headers["Connection"] = "close"
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body[:keep])
            self.wfile.flush()
            hub.count(filename, len(body[:keep]))
            if stall is not None:
                hub.stalled.set()
                hub._release.wait(60)
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    return Handler


def closed_port_endpoint() -> str:
    """An endpoint where nothing listens (connection refused): 'no network'."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"
