"""The I/O around the pure planner: list a repository, then fetch a plan's files.

:func:`resolve` lists the repository (or, offline, the cache or a ``local_dir``) and hands the
listing to :func:`~.plan.plan_from_listing`; :func:`download` fetches the plan's files into the
Hugging Face cache (or a ``local_dir``), resumably, and reads the model's GGUF header;
:func:`fetch` is both. The on-disk protocol of a transfer is described in :mod:`.transfer`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import HubError
from ..gguf_info import read_gguf_info
from . import transfer
from .cache import LocalModel, complete_file, local_listing, offline_path, require_space, write_ref
from .errors import hub_error, transfer_error
from .plan import Plan, PlannedFile, RemoteFile, plan_from_listing
from .settings import HubSettings
from .spec import HfSpec, check_revision, is_commit, parse_spec, unsafe_path_reason

# progress events: ("cached" | "downloading" | "done", file)
ProgressFn = Callable[[str, PlannedFile], None]


def resolve(
    spec: HfSpec | str,
    *,
    revision: str | None = None,
    offline: bool | None = None,
    want_mtp: bool = True,
    want_mmproj: bool = False,
    include: Sequence[str] = (),
    local_dir: str | os.PathLike[str] | None = None,
    settings: HubSettings | None = None,
) -> Plan:
    """List the repository (offline: the cache, or ``local_dir``) and plan what to fetch."""
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    check_revision(revision)
    settings = settings or HubSettings.from_env()
    opts = dict(revision=revision, want_mtp=want_mtp, want_mmproj=want_mmproj, include=include)
    if offline or (offline is None and settings.offline):
        listing, commit, source = local_listing(spec, revision, settings, local_dir)
        return plan_from_listing(spec, listing, commit=commit, source=source, **opts)  # type: ignore[arg-type]
    try:
        remote = transfer.list_model(spec.repo, revision, settings)
    except Exception as exc:
        raise hub_error(exc, spec, settings, revision=revision, local_dir=local_dir) from exc
    listing = [RemoteFile(*entry) for entry in remote.files]
    commit = remote.commit if remote.commit is not None and is_commit(remote.commit) else None
    return plan_from_listing(spec, listing, commit=commit, source="hub", gated=remote.gated, **opts)  # type: ignore[arg-type]


def download(
    plan: Plan,
    *,
    local_dir: str | os.PathLike[str] | None = None,
    probe: bool = True,
    progress: ProgressFn | None = None,
    settings: HubSettings | None = None,
) -> LocalModel:
    """Fetch every file of the plan (already complete ones are reused) and return local paths.

    Offline plans only look files up. Raises HubError subclasses; nothing is returned unless all
    files are complete. With ``probe``, the model's GGUF header is read (ModelError if broken).
    """
    settings = settings or HubSettings.from_env()
    notify = progress or (lambda event, f: None)
    local: dict[str, Path] = {}
    if plan.offline:
        for f in plan.files:
            local[f.path] = offline_path(plan, f, settings, local_dir)
            notify("cached", f)
    else:
        fetcher = _Fetcher(plan, settings, local_dir)
        fetcher.check_space()
        for f in plan.files:
            local[f.path], cached = fetcher.fetch(f, notify)
            notify("cached" if cached else "done", f)
        if fetcher.local_dir is None:
            write_ref(fetcher.storage, plan.revision, plan.commit)

    parts = tuple(local[f.path] for f in plan.model)
    info = mtp_info = None
    embedded = None
    if probe:
        info = read_gguf_info(parts[0])
        embedded = info.has_embedded_mtp
        for extra_part in parts[1:]:  # split models: NextN tensors may sit in any part
            embedded = embedded or read_gguf_info(extra_part).nextn_tensor_count > 0
        if plan.mtp is not None:
            mtp_info = read_gguf_info(local[plan.mtp.path])
    return LocalModel(
        plan=plan,
        model=parts[0],
        parts=parts,
        mtp=local[plan.mtp.path] if plan.mtp else None,
        mmproj=local[plan.mmproj.path] if plan.mmproj else None,
        extra=tuple(local[f.path] for f in plan.extra),
        info=info,
        mtp_info=mtp_info,
        embedded_mtp=embedded,
    )


def fetch(
    spec: HfSpec | str,
    *,
    local_dir: str | os.PathLike[str] | None = None,
    progress: ProgressFn | None = None,
    **options: Any,
) -> LocalModel:
    """resolve + download in one call (the library's shortcut; ``options`` are :func:`resolve`'s:
    revision, offline, want_mtp, want_mmproj, include)."""
    settings = HubSettings.from_env()
    plan = resolve(spec, local_dir=local_dir, settings=settings, **options)
    return download(plan, local_dir=local_dir, progress=progress, settings=settings)


class _Fetcher:
    """Downloads one plan's files; see :mod:`.transfer` for the on-disk protocol."""

    def __init__(self, plan: Plan, settings: HubSettings, local_dir: str | os.PathLike[str] | None) -> None:
        if plan.commit is None:
            raise HubError(f"the Hub did not say which commit {plan.spec} is at; cannot download consistently")
        self.plan = plan
        self.settings = settings
        self.local_dir = Path(local_dir).expanduser().resolve() if local_dir is not None else None
        self.storage = settings.storage(plan.repo)

    def _target(self, f: PlannedFile) -> Path:
        assert self.local_dir is not None
        return self.local_dir.joinpath(*f.path.split("/"))

    def _complete(self, f: PlannedFile) -> Path | None:
        """The file's local path if it is already complete (no network)."""
        if self.local_dir is not None:
            return None  # huggingface_hub checks local_dir files against the Hub's etag (below)
        hit = transfer.cached_file(self.plan.repo, f.path, self.settings, self.plan.commit)
        if hit is not None:
            size = os.path.getsize(hit)
            if f.size is not None and size != f.size:
                raise HubError(
                    f"cached {f.path} has {size} bytes but the Hub lists {f.size}: delete {hit} and run again"
                )
        return hit

    def check_space(self) -> None:
        """Before any transfer: is there room for every file that is not complete yet?"""
        need = 0
        for f in self.plan.files:
            if f.size is None or self._complete(f) is not None:
                continue
            if self.local_dir is not None and complete_file(self._target(f), f.size):
                continue
            have = 0
            if f.sha256:
                try:
                    have = transfer.partial_path(self.storage, self.local_dir, f.path, f.sha256).stat().st_size
                except OSError:
                    pass
            need += max(f.size - have, 0)
        require_space(self.local_dir or self.settings.cache_dir, need, "the download")

    def fetch(self, f: PlannedFile, notify: ProgressFn) -> tuple[Path, bool]:
        hit = self._complete(f)
        if hit is not None:
            return hit, True
        if self.local_dir is not None and complete_file(self._target(f), f.size):
            return self._register(f), True  # huggingface_hub verifies it against the Hub's etag
        try:
            return self._fetch(f, notify), False
        except HubError:
            raise
        except Exception as exc:
            raise transfer_error(exc, f, self.plan, self.settings) from exc

    def _fetch(self, f: PlannedFile, notify: ProgressFn) -> Path:
        where = transfer.locate(self.plan.repo, f.path, self.plan.commit, self.settings)
        etag, size = where.etag, where.size
        if not etag or unsafe_path_reason(etag) or len(etag) > 128:
            raise HubError(f"the Hub sent no usable ETag for {f.path}; cannot cache it safely")
        # in the cache a blob named by its etag is complete by construction; a local_dir file of
        # another size is an older version, replaced once the new one is complete
        final = self._target(f) if self.local_dir is not None else transfer.blob_path(self.storage, etag)
        if not complete_file(final, size):
            partial = transfer.partial_path(self.storage, self.local_dir, f.path, etag)
            notify("downloading", f)
            with transfer.file_lock(transfer.lock_path(self.settings, self.storage, self.local_dir, f.path, etag)):
                if not complete_file(final, size):
                    transfer.transfer(where.location, partial, final, size, where.headers, f.path)
        return self._register(f)

    def _register(self, f: PlannedFile) -> Path:
        return transfer.register(self.plan.repo, f.path, self.plan.commit, self.settings, self.local_dir)
