"""Everything mtprun takes from ``huggingface_hub``, and the resumable byte transfer built on it.

This is the only module of mtprun that imports ``huggingface_hub``. Besides its documented API
(``HfApi.model_info``, ``hf_hub_url``, ``get_hf_file_metadata``, ``hf_hub_download``,
``try_to_load_from_cache``, ``utils.filter_repo_objects``/``build_hf_headers``/``get_session``)
it relies on internals: ``file_download.http_get`` (a ranged GET with retries and a progress
bar), ``utils.WeakFileLock`` (the lock ``hf download`` takes on a blob), the exception classes of
``huggingface_hub.errors``, the transport errors of the HTTP library it uses, and the cache's
blob layout (``blobs/<etag>``, ``blobs/<etag>.incomplete``, ``.locks/<repo folder>/<etag>.lock``,
and ``local_dir``'s ``.cache/huggingface/download/``). That is why ``pyproject.toml`` pins
``huggingface_hub`` to the range the tests have run against.

Why mtprun transfers bytes itself: ``huggingface_hub`` 2.x (2.4 checked) writes each download to
a process-unique temporary file that is deleted on failure, so an interrupted download starts
over. mtprun keeps resumability by doing the GET itself (``get_hf_file_metadata`` for the HEAD,
``http_get`` for the ranged GET) into ``blobs/<etag>.incomplete`` (the partial-file name older
``huggingface_hub`` releases resume from), moving it to ``blobs/<etag>`` only once its size is
right, and then letting ``hf_hub_download`` register the blob in the cache (snapshot link, refs).
A partial file never has a name that anything treats as complete. Xet storage: see the README
(section "Real models from Hugging Face").
"""

from __future__ import annotations

import errno
import os
import sys
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .._version import __version__
from ..errors import DiskFullError, HubConnectionError
from .cache import require_space
from .settings import HubSettings
from .spec import basename, dir_parts

LIBRARY = {"library_name": "mtprun", "library_version": __version__}  # our User-Agent entry
_MAX_STALLS = 3  # transfer attempts in a row that add no byte before giving up


# --- listing and patterns (public API) ----------------------------------------------------------
@dataclass(frozen=True)
class Listing:
    """A repository at one commit: ``(path, size, sha256)`` per file."""

    files: list[tuple[str, int | None, str | None]]
    commit: str | None
    gated: bool


def list_model(repo: str, revision: str | None, settings: HubSettings) -> Listing:
    """The Hub's listing of a model repository (one ``/api/models`` call, with LFS sizes)."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=settings.endpoint, **LIBRARY)
    info = api.model_info(repo, revision=revision, files_metadata=True, token=settings.token)
    files = [
        (s.rfilename, s.lfs.size if s.lfs is not None else s.size, s.lfs.sha256 if s.lfs is not None else None)
        for s in (info.siblings or [])
        if isinstance(s.rfilename, str)
    ]
    return Listing(files, info.sha if isinstance(info.sha, str) else None, bool(info.gated))


def match_patterns(paths: list[str], pattern: str) -> list[str]:
    """The paths an ``--include`` pattern selects, exactly as ``hf download --include`` would."""
    from huggingface_hub.utils import filter_repo_objects

    return list(filter_repo_objects(paths, allow_patterns=[pattern]))


def cached_file(repo: str, path: str, settings: HubSettings, commit: str | None) -> Path | None:
    """The snapshot path of a complete cached file, or None (no network)."""
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(repo, path, cache_dir=settings.cache_dir, revision=commit)
    return Path(hit) if isinstance(hit, str) else None


# --- where a file is, and with which headers ---------------------------------------------------
@dataclass(frozen=True)
class Located:
    """What the Hub's HEAD says of one file: where to GET it, its ETag and size, the headers to send."""

    location: str
    etag: str | None
    size: int | None
    headers: dict[str, str]


def locate(repo: str, path: str, commit: str | None, settings: HubSettings) -> Located:
    """HEAD the file; the token is sent only to the Hub's own origin, never to a CDN it redirects to."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    url = hf_hub_url(repo, path, revision=commit, endpoint=settings.endpoint)
    meta = get_hf_file_metadata(url, token=settings.token, **LIBRARY)
    headers = build_hf_headers(token=settings.token, **LIBRARY)
    location = meta.location or url
    if _origin(location) != _origin(url):  # signed CDN URL: the Hub token must not leave the Hub
        headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
    return Located(location, meta.etag, meta.size, headers)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


def open_range(url: str, headers: dict[str, str]) -> AbstractContextManager[Any]:
    """A streamed GET through huggingface_hub's own HTTP client (its proxies, TLS and user agent)."""
    from huggingface_hub.utils import get_session

    return get_session().stream("GET", url, headers=headers, follow_redirects=True, timeout=30)


# --- the cache's blob layout, shared with huggingface_hub -------------------------------------
def blob_path(storage: Path, etag: str) -> Path:
    return storage / "blobs" / etag


def partial_path(storage: Path, local_dir: Path | None, path: str, etag: str) -> Path:
    """Where the bytes of an unfinished download live (the name huggingface_hub < 1 resumed from)."""
    if local_dir is None:
        return storage / "blobs" / f"{etag}.incomplete"
    return _local_meta(local_dir, path, f"{basename(path)}.{etag}.incomplete")


def lock_path(settings: HubSettings, storage: Path, local_dir: Path | None, path: str, etag: str) -> Path:
    """The lock file huggingface_hub itself takes for the same blob (or local_dir file)."""
    if local_dir is None:
        return settings.cache_dir / ".locks" / storage.name / f"{etag}.lock"
    return _local_meta(local_dir, path, f"{basename(path)}.lock")


def _local_meta(local_dir: Path, path: str, name: str) -> Path:
    return local_dir.joinpath(".cache", "huggingface", "download", *dir_parts(path), name)


def file_lock(path: Path) -> AbstractContextManager[Any]:
    """huggingface_hub's lock: ``hf download`` of the same file waits for us, and we for it."""
    from huggingface_hub.utils import WeakFileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    return WeakFileLock(path)


def register(repo: str, path: str, commit: str | None, settings: HubSettings, local_dir: Path | None) -> Path:
    """Let huggingface_hub link a complete blob into the snapshot (or record local_dir metadata)."""
    from huggingface_hub import hf_hub_download

    return Path(
        hf_hub_download(
            repo,
            path,
            revision=commit,
            cache_dir=settings.cache_dir,
            local_dir=local_dir,
            endpoint=settings.endpoint,
            token=settings.token,
            **LIBRARY,
        )
    )


# --- the byte transfer --------------------------------------------------------------------------
def transfer(url: str, partial: Path, final: Path, size: int | None, headers: dict[str, str], name: str) -> None:
    """GET ``url`` into ``partial`` (resuming what is there), then move it to ``final``."""
    from huggingface_hub.file_download import http_get

    partial.parent.mkdir(parents=True, exist_ok=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(partial, "ab", buffering=0) as raw:  # unbuffered: what arrived is on disk if killed
            fh = _WriteAll(raw)
            have = fh.tell()
            if size is not None and have > size:  # not ours to trust: start over
                fh.truncate(0)
                have = 0
            if size is not None:
                require_space(partial.parent, size - have, name)
            stalls = 0
            while size is None or have < size:
                try:
                    http_get(url, fh, resume_size=have, headers=headers, expected_size=size, displayed_filename=basename(name))
                    break
                except Exception as exc:
                    # The connection dropped and http_get gave up (it retries only some transport
                    # errors, a few times): go on from what is on disk while that keeps growing.
                    got = os.fstat(raw.fileno()).st_size
                    if not is_network_error(exc) or size is None:
                        raise
                    stalls = 0 if got > have else stalls + 1
                    if stalls >= _MAX_STALLS:
                        raise
                    have = got  # a valid prefix either way (a server that ignores Range restarts the file)
                    time.sleep(0.2 * stalls)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise DiskFullError(
                f"disk full while downloading {name} into {partial.parent} ({exc.strerror}); "
                "free some space and run again to resume"
            ) from exc
        raise
    got = partial.stat().st_size
    if size is not None and got != size:
        raise HubConnectionError(f"download of {name} stopped at {got} of {size} bytes; run again to resume")
    os.replace(partial, final)


class _WriteAll:
    """An unbuffered file whose ``write`` never stops short (raw writes may; a short write raises)."""

    def __init__(self, raw: object) -> None:
        self._raw = raw

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            n = self._raw.write(view)  # type: ignore[attr-defined]
            if not n:
                raise OSError(errno.ENOSPC, "No space left on device")
            view = view[n:]
        return len(data)

    def __getattr__(self, name: str) -> object:
        return getattr(self._raw, name)


# --- what huggingface_hub's exceptions mean ----------------------------------------------------
def error_kind(exc: BaseException) -> str | None:
    """"gated", "revision", "repo", "disabled" or "entry" for huggingface_hub's Hub errors, else None."""
    from huggingface_hub import errors as hf_errors

    # most specific first: GatedRepoError is a RepositoryNotFoundError, RevisionNotFoundError and
    # EntryNotFoundError are HTTP errors too
    for kind, name in (
        ("gated", "GatedRepoError"),
        ("revision", "RevisionNotFoundError"),
        ("repo", "RepositoryNotFoundError"),
        ("disabled", "DisabledRepoError"),
        ("entry", "EntryNotFoundError"),
    ):
        cls = getattr(hf_errors, name, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            return kind
    return None


def _network_error_types() -> tuple[type[BaseException], ...]:
    """Transport errors of whichever HTTP library this huggingface_hub uses (already imported)."""
    found: list[type[BaseException]] = []
    for module, names in (("httpx2", ("TransportError",)), ("httpx", ("TransportError",)), ("requests.exceptions", ("ConnectionError", "Timeout", "ChunkedEncodingError"))):
        mod = sys.modules.get(module)
        for n in names:
            t = getattr(mod, n, None) if mod is not None else None
            if isinstance(t, type) and issubclass(t, BaseException):
                found.append(t)
    return tuple(found)


def is_network_error(exc: BaseException) -> bool:
    """The connection failed or dropped (anywhere in the exception's cause chain)."""
    types = _network_error_types()
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, (ConnectionError, TimeoutError)) or (types and isinstance(cur, types)):
            return True
        cur = cur.__cause__ or cur.__context__
    return False
