"""Parts of a GGUF on the Hub, by HTTP range requests: its header, then chosen byte ranges.

``mtprun graft --mtp-from -hf OWNER/NAME[:QUANT]`` needs only the donor's header and its MTP
tensors, a few percent of the file. :func:`open_donor` resolves the name exactly as downloads do
(:func:`mtprun.hub.resolve`: same quant rules, endpoint, token, offline switch), then reads the
header with ranged GETs; :meth:`RemoteDonor.fetch` fetches the ranges the graft plan asks for.

On disk (``<mtprun cache>/graft/<owner>--<name>/<commit>/<path>``): a sparse file as long as
the remote one, holding the fetched ranges at their own offsets (so ``gguf.GGUFReader`` and the
graft writer read it like the real file), and ``<path>.json`` with the ETag, the size and the
ranges already complete (updated as data arrives, so an interrupted fetch resumes where it
stopped). A complete copy already in the Hugging Face cache is used as it is, with no transfer.
A server that ignores ``Range`` (answers 200 with the whole body) makes this fall back to a full,
resumable download (:func:`mtprun.hub.download`), and the result says so.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import HubConnectionError, HubError, HubNotCachedError, ModelError
from ..gguf_info import header_length
from . import transfer
from .cache import offline_path, read_ref, require_space, write_ref
from .client import download, resolve
from .errors import short, transfer_error
from .plan import Plan, PlannedFile, RemoteFile, plan_from_listing
from .settings import HubSettings
from .spec import HfSpec, is_commit, parse_spec, quant_label

__all__ = ["RemoteDonor", "open_donor", "cache_origin", "ranges_root"]

_FIRST_READ = 64 << 10  # header bytes asked for first (doubled until the header fits)
_SAVE_EVERY = 8 << 20  # record progress in the .json at least this often
_MAX_STALLS = 3
ProgressFn = Callable[[int, int], None]  # (bytes fetched, bytes to fetch)


def ranges_root() -> Path:
    from ..demo import cache_dir

    return cache_dir() / "graft"


@dataclass
class RemoteDonor:
    """A donor GGUF on the Hub: a local path that holds (at least) its header."""

    spec: HfSpec
    repo: str
    file: str  # path in the repository
    commit: str | None
    size: int
    path: Path  # the local file (sparse partial copy, or a complete one)
    complete: bool  # path is the whole file (Hugging Face cache, or the fallback download)
    fetched: int = 0  # bytes transferred by this process
    notes: list[str] = field(default_factory=list)
    _location: str | None = None
    _headers: dict[str, str] = field(default_factory=dict)
    _state: Path | None = None
    _plan: Plan | None = None
    _settings: HubSettings | None = None

    @property
    def provenance(self) -> dict[str, str]:
        return _provenance(self.repo, self.file, self.commit)

    @property
    def label(self) -> str:
        return f"{self.repo}/{self.file}"

    def have(self) -> list[tuple[int, int]]:
        if self.complete or self._state is None:
            return [(0, self.size)]
        return _load_state(self._state).get("have", [])  # type: ignore[return-value]

    def missing(self, ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
        return _subtract(ranges, [tuple(r) for r in self.have()])  # type: ignore[misc]

    def fetch(self, ranges: list[tuple[int, int]], progress: ProgressFn | None = None) -> int:
        """Make sure ``ranges`` are on disk; returns the bytes transferred for them."""
        todo = self.missing(ranges)
        if not todo:
            return 0
        if self._plan is None or self._plan.offline or self._location is None:
            raise HubNotCachedError(
                f"{self.label}: the MTP tensors are not in the cache and mtprun is offline: run once without --offline"
            )
        total = sum(b - a for a, b in todo)
        require_space(self.path.parent, total, f"the MTP tensors of {self.label}")
        done = 0
        notify = progress or (lambda d, t: None)
        for a, b in todo:
            def tick(n: int) -> None:
                nonlocal done
                done += n
                notify(done, total)

            try:
                self._get(a, b, tick)
            except _RangesIgnored:
                self._fallback(progress)
                return done
        return done

    # --- transfers -------------------------------------------------------------------------------
    def _get(self, start: int, end: int, tick: Callable[[int], None]) -> None:
        assert self._state is not None and self._location is not None
        stalls = 0
        pos = start
        while pos < end:
            before = pos
            try:
                pos = self._stream(pos, end, tick)
            except _RangesIgnored:
                raise
            except HubError:
                raise
            except Exception as exc:
                if not transfer.is_network_error(exc):
                    assert self._plan is not None and self._settings is not None
                    f = self._plan.model[0]
                    raise transfer_error(exc, f, self._plan, self._settings) from exc
                pos = max(pos, _covered_from(_load_state(self._state).get("have", []), before))
                stalls = 0 if pos > before else stalls + 1
                if stalls >= _MAX_STALLS:
                    raise HubConnectionError(
                        f"fetching {self.label} was interrupted ({short(exc)}); run again to resume"
                    ) from exc
                time.sleep(0.2 * stalls)

    def _stream(self, start: int, end: int, tick: Callable[[int], None]) -> int:
        """One ranged GET of [start, end) written at its offset; returns how far it got."""
        assert self._state is not None and self._location is not None
        headers = dict(self._headers, Range=f"bytes={start}-{end - 1}")
        pos = start
        saved = start
        # huggingface_hub's own HTTP client; a dropped connection is retried by _get, from what
        # is already on disk
        with transfer.open_range(self._location, headers) as r:
            if r.status_code == 200:
                raise _RangesIgnored
            if r.status_code != 206:
                r.raise_for_status()
                raise HubError(f"the Hub answered {r.status_code} to a range request for {self.label}")
            crange = r.headers.get("Content-Range", "")
            if not crange.startswith(f"bytes {start}-"):
                raise HubError(f"the Hub sent the wrong range for {self.label} ({crange or 'no Content-Range'})")
            fd = os.open(self.path, os.O_WRONLY)
            try:
                for chunk in r.iter_bytes():
                    if not chunk:
                        continue
                    chunk = chunk[: end - pos]
                    view = memoryview(chunk)
                    while view:
                        n = os.pwrite(fd, view, pos)
                        view = view[n:]
                        pos += n
                    self.fetched += len(chunk)
                    tick(len(chunk))
                    if pos - saved >= _SAVE_EVERY:
                        _add_range(self._state, saved, pos)
                        saved = pos
                    if pos >= end:
                        break
            finally:
                if pos > saved:
                    _add_range(self._state, saved, pos)
                os.close(fd)
        return pos

    def _fallback(self, progress: ProgressFn | None) -> None:
        """The server ignores Range: download the whole file (resumable) and use that."""
        assert self._plan is not None
        before = self.fetched
        local = download(self._plan, probe=False, settings=self._settings)
        self.path = local.model
        self.complete = True
        self.fetched = before + self.size
        if progress:
            progress(self.size, self.size)
        self.notes.append(
            f"the server ignored range requests: downloaded the whole donor ({self.size / 1e6:.1f} MB)"
        )


class _RangesIgnored(Exception):
    pass


def open_donor(
    spec: HfSpec | str,
    *,
    revision: str | None = None,
    offline: bool | None = None,
    settings: HubSettings | None = None,
) -> RemoteDonor:
    """Resolve ``spec`` to one GGUF and make its header available locally (ranged GETs)."""
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    settings = settings or HubSettings.from_env()
    is_offline = bool(offline or (offline is None and settings.offline))
    try:
        plan = resolve(spec, revision=revision, offline=is_offline, want_mtp=False, settings=settings)
    except HubNotCachedError:
        if not is_offline:
            raise
        return _offline_partial(spec, revision, settings)
    if len(plan.model) > 1:
        raise HubError(f"{spec}: the donor is split in {len(plan.model)} files; grafting from split donors is not supported")
    f = plan.model[0]
    if plan.offline:
        full = offline_path(plan, f, settings, None)
        return RemoteDonor(spec, plan.repo, f.path, plan.commit, full.stat().st_size, full, True, _plan=plan, _settings=settings)

    if plan.commit is None:
        raise HubError(f"the Hub did not say which commit {spec} is at; cannot cache its header consistently")
    hit = transfer.cached_file(plan.repo, f.path, settings, plan.commit)
    if hit is not None and (f.size is None or os.path.getsize(hit) == f.size):
        return RemoteDonor(spec, plan.repo, f.path, plan.commit, os.path.getsize(hit), hit, True, _plan=plan, _settings=settings)

    try:
        location, headers, etag, size = _locate(plan, f, settings)
    except HubError:
        raise
    except Exception as exc:
        raise transfer_error(exc, f, plan, settings) from exc
    root = ranges_root() / plan.repo.replace("/", "--")
    local = root / plan.commit / Path(*f.path.split("/"))
    state = local.with_name(local.name + ".json")
    local.parent.mkdir(parents=True, exist_ok=True)
    st = _load_state(state)
    if st.get("etag") != etag or st.get("size") != size or not local.is_file() or local.stat().st_size != size:
        with open(local, "wb") as fh:
            fh.truncate(size)  # sparse: only fetched ranges take space
        _save_state(state, {"etag": etag, "size": size, "file": f.path, "have": []})
    write_ref(root, plan.revision, plan.commit)
    donor = RemoteDonor(spec, plan.repo, f.path, plan.commit, size, local, False,
                        _location=location, _headers=headers, _state=state, _plan=plan, _settings=settings)
    # the header: a first slice, grown until it holds the whole header
    n = min(_FIRST_READ, size)
    while True:
        donor.fetch([(0, n)])
        if donor.complete:
            return donor  # the server ignored Range: the whole file is here
        with open(local, "rb") as fh:
            hl = header_length(fh.read(n))
        if hl is not None or n >= size:
            break
        n = min(size, n * 2)
    if hl is None:
        raise ModelError(f"{donor.label}: truncated GGUF header")
    donor.fetch([(0, min(hl, size))])
    return donor


def _locate(plan: Plan, f: PlannedFile, settings: HubSettings) -> tuple[str, dict[str, str], str, int]:
    where = transfer.locate(plan.repo, f.path, plan.commit, settings)
    if not where.etag or where.size is None:
        raise HubError(f"the Hub sent no ETag or size for {f.path}; cannot fetch parts of it safely")
    return where.location, where.headers, where.etag, int(where.size)


def _offline_partial(spec: HfSpec, revision: str | None, settings: HubSettings) -> RemoteDonor:
    """Offline, without a full download: a header (and maybe MTP ranges) fetched earlier."""
    root = ranges_root() / spec.repo.replace("/", "--")
    commit = read_ref(root, revision)
    base = root / commit if commit else None
    listing = []
    if base is not None and base.is_dir():
        for js in base.rglob("*.json"):
            st = _load_state(js)
            if isinstance(st.get("file"), str) and isinstance(st.get("size"), int):
                listing.append(RemoteFile(st["file"], st["size"]))
    if not listing:
        raise HubNotCachedError(
            f"{spec} is not in the cache and mtprun is offline: run once without --offline to fetch its MTP tensors"
        )
    plan = plan_from_listing(spec, listing, commit=commit, source="cache", want_mtp=False)
    f = plan.model[0]
    assert base is not None
    local = base / Path(*f.path.split("/"))
    return RemoteDonor(spec, spec.repo, f.path, commit, int(f.size or 0), local, False,
                       _state=local.with_name(local.name + ".json"), _plan=plan, _settings=settings)


def cache_origin(path: str | os.PathLike[str], settings: HubSettings | None = None) -> dict[str, str] | None:
    """Where a file in the Hugging Face cache came from (``snapshots/<commit>/<path>``), or None."""
    settings = settings or HubSettings.from_env()
    try:
        rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(settings.cache_dir))
    except ValueError:
        return None
    parts = rel.parts
    if len(parts) < 4 or not parts[0].startswith("models--") or parts[1] != "snapshots" or not is_commit(parts[2]):
        return None
    return _provenance(parts[0][len("models--") :].replace("--", "/", 1), "/".join(parts[3:]), parts[2])


def _provenance(repo: str, file: str, commit: str | None) -> dict[str, str]:
    """The ``mtprun.graft.*`` keys naming a Hub donor (the same for a ranged and a full copy)."""
    out = {"mtp_repo": repo, "mtp_file": file}
    if commit:
        out["mtp_commit"] = commit
    quant = quant_label(file)
    if quant:
        out["mtp_quant"] = quant
    return out


# --- the .json state file ---------------------------------------------------------------------
def _load_state(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    have = data.get("have")
    if not isinstance(have, list) or not all(
        isinstance(r, list) and len(r) == 2 and all(isinstance(x, int) for x in r) for r in have
    ):
        data["have"] = []
    return data


def _save_state(path: Path, data: dict[str, object]) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _add_range(path: Path, a: int, b: int) -> None:
    st = _load_state(path)
    have = [tuple(r) for r in st.get("have", [])] + [(a, b)]  # type: ignore[union-attr]
    merged: list[list[int]] = []
    for x, y in sorted(have):
        if merged and x <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], y)
        else:
            merged.append([x, y])
    st["have"] = merged
    _save_state(path, st)


def _covered_from(have: list, pos: int) -> int:
    for a, b in have:
        if a <= pos < b:
            return b
    return pos


def _subtract(want: list[tuple[int, int]], have: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in want:
        cur = a
        for x, y in sorted(have):
            if y <= cur or x >= b:
                continue
            if x > cur:
                out.append((cur, x))
            cur = max(cur, y)
        if cur < b:
            out.append((cur, b))
    return out
