"""What is already on disk: the Hugging Face cache's snapshots and refs, a ``local_dir``, free space.

The documented cache layout (``models--owner--name/{refs,snapshots}``) is read here, with no
network; the blob files and locks that downloads write belong to :mod:`.transfer`.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import DiskFullError, HubNotCachedError
from ..gguf_info import GgufInfo
from .plan import Plan, PlannedFile, RemoteFile
from .settings import HubSettings
from .spec import HfSpec, is_commit


@dataclass(frozen=True)
class LocalModel:
    """Local paths of a plan's files, plus what the model's header says (when probed)."""

    plan: Plan
    model: Path  # part 1: what the engine opens
    parts: tuple[Path, ...]
    mtp: Path | None
    mmproj: Path | None
    extra: tuple[Path, ...] = ()
    info: GgufInfo | None = None
    mtp_info: GgufInfo | None = None
    embedded_mtp: bool | None = None  # None: not probed

    @property
    def mtp_source(self) -> str:
        """"sidecar", "embedded", "none" (MTP will be off), "off" (not wanted) or "unknown"."""
        if self.mtp is not None:
            return "sidecar"
        if self.embedded_mtp:
            return "embedded"
        if not self.plan.want_mtp:
            return "off"
        return "unknown" if self.embedded_mtp is None else "none"

    def paths(self) -> dict[str, object]:
        """Local paths per role (``model`` is part 1, what the engine opens)."""
        return {
            "model": str(self.model),
            "parts": [str(p) for p in self.parts],
            "mtp": str(self.mtp) if self.mtp else None,
            "mmproj": str(self.mmproj) if self.mmproj else None,
            "extra": [str(p) for p in self.extra],
        }


# --- listings of what is on disk ---------------------------------------------------------------
def local_listing(
    spec: HfSpec, revision: str | None, settings: HubSettings, local_dir: str | os.PathLike[str] | None
) -> tuple[list[RemoteFile], str | None, str]:
    """The files already on disk for this repo: a cache snapshot, or a ``local_dir``."""
    if local_dir is not None:
        root = Path(local_dir)
        if not root.is_dir():
            raise HubNotCachedError(f"{spec} is not downloaded: {root} does not exist (offline)")
        listing = [RemoteFile(rel, size) for rel, size in _walk(root, skip_top=".cache")]
        return listing, None, "local-dir"
    commit = cached_commit(spec.repo, revision, settings)
    if commit is None:
        raise HubNotCachedError(
            f"{spec} is not in the cache ({settings.cache_dir}) and mtprun is offline"
            + (" (HF_HUB_OFFLINE is set)" if settings.offline else "")
            + ": run once without `offline` to download it",
            option="offline",
        )
    snapshot = settings.storage(spec.repo) / "snapshots" / commit
    return [RemoteFile(rel, size) for rel, size in _walk(snapshot)], commit, "cache"


def cached_commit(repo: str, revision: str | None, settings: HubSettings) -> str | None:
    """The commit the cache holds a snapshot of for this revision, or None."""
    storage = settings.storage(repo)
    commit = read_ref(storage, revision)
    if commit is None or not (storage / "snapshots" / commit).is_dir():
        return None
    return commit


def offline_path(plan: Plan, f: PlannedFile, settings: HubSettings, local_dir: str | os.PathLike[str] | None) -> Path:
    """A planned file's path in the snapshot (or ``local_dir``); HubNotCachedError if it is not there."""
    if local_dir is not None:
        p = Path(local_dir, *f.path.split("/"))
    else:
        p = settings.storage(plan.repo) / "snapshots" / str(plan.commit) / Path(*f.path.split("/"))
    if not p.is_file():
        raise HubNotCachedError(f"{f.path} of {plan.spec} is not in the cache and mtprun is offline")
    return p


def _walk(root: Path, skip_top: str | None = None) -> list[tuple[str, int]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        if skip_top and Path(dirpath) == root and skip_top in dirnames:
            dirnames.remove(skip_top)
        for name in filenames:
            full = Path(dirpath, name)
            try:
                size = full.stat().st_size  # follows the snapshot link to its blob
            except OSError:
                continue  # dangling link: the blob is gone
            out.append((full.relative_to(root).as_posix(), size))
    return out


# --- refs: revision -> commit, as huggingface_hub records them ---------------------------------
def read_ref(root: Path, revision: str | None) -> str | None:
    """The commit ``root/refs/<revision>`` names (a commit hash names itself), or None."""
    rev = revision or "main"
    if is_commit(rev):
        return rev
    try:
        commit = (root / "refs" / Path(*rev.split("/"))).read_text().strip()
    except OSError:
        return None
    return commit if is_commit(commit) else None


def write_ref(root: Path, revision: str | None, commit: str | None) -> None:
    """Record ``root/refs/<revision>`` -> commit, so that offline runs find the snapshot."""
    rev = revision or "main"
    if commit is None or is_commit(rev):
        return
    ref = root / "refs" / Path(*rev.split("/"))
    try:
        if ref.is_file() and ref.read_text().strip() == commit:
            return
        ref.parent.mkdir(parents=True, exist_ok=True)
        tmp = ref.with_name(ref.name + f".{os.getpid()}.tmp")
        tmp.write_text(commit)
        os.replace(tmp, ref)
    except OSError:
        pass  # a read-only cache still works online


# --- files and space ---------------------------------------------------------------------------
def complete_file(path: Path, size: int | None) -> bool:
    try:
        return path.is_file() and (size is None or path.stat().st_size == size)
    except OSError:
        return False


def require_space(where: Path, need: int, what: str) -> None:
    """DiskFullError unless the filesystem holding ``where`` has ``need`` bytes free."""
    if need <= 0:
        return
    probe = where
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return
    if free < need:
        raise DiskFullError(
            f"not enough disk space for {what} in {where}: needs {_human(need)}, {_human(free)} free"
        )


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"
