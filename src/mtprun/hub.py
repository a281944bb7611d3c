"""Model names from the Hugging Face Hub: ``owner/name[:quant]`` -> a plan -> local files.

Three steps, each usable on its own:

* :func:`parse_spec` checks the name the user typed (llama.cpp's ``-hf`` syntax).
* :func:`resolve` lists the repository (or, offline, the local cache) and decides which files to
  fetch: the model (every part of a split model), its MTP sidecar, optionally its ``mmproj`` and
  files named by ``--include``. The decision itself is :func:`plan_from_listing`, a pure function
  over ``(path, size)`` pairs.
* :func:`download` fetches a plan's files into the standard Hugging Face cache (or a
  ``local_dir``), resumably, and returns local paths plus what the model's GGUF header says.

This module never prints and knows nothing of terminals or of the engine. ``huggingface_hub``
reads several settings once at import time; the ones mtprun honours (``HF_ENDPOINT``,
``HF_HOME``/``HF_HUB_CACHE``, ``HF_TOKEN``, ``HF_HUB_OFFLINE``) are read here at call time and
passed explicitly, so they take effect whenever they are set.

Transfers: ``huggingface_hub`` 2.x (2.4 checked) writes each download to a process-unique
temporary file that is deleted on failure, so an interrupted download starts over. mtprun keeps resumability by doing
the byte transfer itself with ``huggingface_hub``'s own primitives (``get_hf_file_metadata`` for
the HEAD, ``http_get`` for the ranged GET with retries and progress bar) into
``blobs/<etag>.incomplete`` (the partial-file name older ``huggingface_hub`` releases resume
from), moves it to ``blobs/<etag>`` only once its size is right, and then lets
``hf_hub_download`` register the blob in the cache (snapshot link, refs). A partial file never
has a name that anything treats as complete.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from urllib.parse import urlsplit

from . import __version__
from .errors import (
    DiskFullError,
    HubAuthError,
    HubConnectionError,
    HubError,
    HubNotCachedError,
    HubRepoNotFoundError,
    InvalidInputError,
    NoMatchingFileError,
    UnsafeRemotePathError,
)
from .gguf_info import GgufInfo, read_gguf_info

__all__ = [
    "HfSpec",
    "RemoteFile",
    "PlannedFile",
    "Plan",
    "LocalModel",
    "HubSettings",
    "parse_spec",
    "plan_from_listing",
    "resolve",
    "download",
    "fetch",
    "unsafe_path_reason",
    "quant_label",
]

DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_TAGS = ("Q4_K_M", "Q8_0")  # llama.cpp's choice when no quant is given
# basename fragments that mark a .gguf as a sidecar or auxiliary file, not a model to run
_AUX_FRAGMENTS_ANY_CASE = ("mmproj", "imatrix")
_AUX_FRAGMENTS = ("mtp-", "eagle3-", "dflash-", "dspark-")  # case-sensitive, as in llama.cpp
_SPLIT = re.compile(r"^(.+)-([0-9]{5})-of-([0-9]{5})$", re.IGNORECASE)
_LLAMA_TAG = re.compile(r"[-.]([A-Z0-9_]+)$", re.IGNORECASE)
_QUANT = re.compile(
    r"(?:^|[-_.])((?:UD-)?(?:I?Q[0-9]+(?:_[A-Z0-9]+)*|[BM]?F[0-9]+|MXFP4(?:_MOE)?|NVFP4|TQ[0-9]_[0-9]))$",
    re.IGNORECASE,
)
_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_MAX_TAG = 128
_MAX_STALLS = 3  # transfer attempts in a row that add no byte before giving up
_TRUE = {"1", "ON", "YES", "TRUE"}


# ----------------------------------------------------------------------------------------------
# the name the user typed
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HfSpec:
    """``owner/name`` plus an optional quant tag (literal text, matched case-insensitively)."""

    repo: str
    tag: str | None = None

    def __str__(self) -> str:
        return f"{self.repo}:{self.tag}" if self.tag else self.repo


def parse_spec(text: str) -> HfSpec:
    """Parse ``owner/name[:tag]``; raises InvalidInputError with the expected form."""
    raw = text.strip()
    repo, sep, tag = raw.partition(":")
    usage = f"invalid Hugging Face model {text!r}: expected OWNER/NAME[:QUANT], e.g. unsloth/gemma-4-12b-it-GGUF:Q8_0"
    parts = repo.split("/")
    if len(parts) != 2 or not all(_REPO_PART.match(p) for p in parts):
        raise InvalidInputError(usage)
    if any("--" in p or ".." in p or p.endswith(".git") for p in parts):
        raise InvalidInputError(usage)
    if sep and not tag:
        raise InvalidInputError(f"invalid Hugging Face model {text!r}: empty quant after ':'")
    if tag and (len(tag) > _MAX_TAG or any(ord(c) < 32 or ord(c) == 127 or c in "/\\" for c in tag)):
        raise InvalidInputError(f"invalid quant {tag!r} in {text!r}")
    return HfSpec(repo=repo, tag=tag or None)


# ----------------------------------------------------------------------------------------------
# file names
# ----------------------------------------------------------------------------------------------
def unsafe_path_reason(path: str) -> str | None:
    """Why a remote file name must not be used as a local path, or None if it is safe.

    Refused: ``..`` or ``.`` segments (even when they would normalise back inside the repo),
    empty segments, backslashes, absolute / drive / UNC forms, and control characters.
    """
    if not path:
        return "empty name"
    if "\\" in path:
        return "backslash in name"
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        return "control character in name"
    if path.startswith("/") or PurePosixPath(path).is_absolute():
        return "absolute path"
    segments = path.split("/")
    if any(s in ("", ".", "..") for s in segments):
        return "'..', '.' or empty path segment"
    if any(PureWindowsPath(s).drive or ":" in s for s in segments):
        return "drive or stream name (':')"
    return None


def _basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _dir_parts(path: str) -> list[str]:
    return path.split("/")[:-1]


def _is_gguf(path: str) -> bool:
    return path.lower().endswith(".gguf")


def _is_model(path: str) -> bool:
    name = _basename(path)
    lower = name.lower()
    return (
        _is_gguf(path)
        and not any(f in lower for f in _AUX_FRAGMENTS_ANY_CASE)
        and not any(f in name for f in _AUX_FRAGMENTS)
    )


def _is_mtp_sidecar(path: str) -> bool:
    return _is_gguf(path) and "mtp-" in _basename(path)


def _is_mmproj(path: str) -> bool:
    return _is_gguf(path) and "mmproj" in _basename(path).lower()


def _stem(path: str) -> str:
    name = path[: -len(".gguf")] if _is_gguf(path) else path
    return name


def _split_info(path: str) -> tuple[str, int, int]:
    """(prefix, index, count) of ``prefix-0000K-of-0000N.gguf``; (stem, 1, 1) otherwise."""
    stem = _stem(path)
    m = _SPLIT.match(stem)
    if m:
        return m.group(1), int(m.group(2)), int(m.group(3))
    return stem, 1, 1


def quant_bits(path: str) -> int:
    """llama.cpp's ``extract_quant_bits``: Q4_K_M -> 4, BF16 -> 16, no digits -> 0."""
    prefix, _, _ = _split_info(path)
    m = _LLAMA_TAG.search(prefix)
    return _bits_of(m.group(1) if m else "")


def _bits_of(tag: str) -> int:
    m = re.search(r"[0-9]+", tag)
    return int(m.group()) if m else 0


def quant_label(path: str) -> str | None:
    """The quant a file name carries, as a user would type it (``UD-Q4_K_XL``, ``Q8_0``, ``BF16``)."""
    prefix, _, _ = _split_info(_basename(path))
    for candidate in (prefix, *reversed(_dir_parts(path))):
        m = _QUANT.search(candidate)
        if m:
            return m.group(1).upper()
    m = _LLAMA_TAG.search(prefix)
    return m.group(1).upper() if m else None


def _tag_matches(path: str, tag: str) -> bool:
    """The path contains the tag (literal, any case) followed by '.' or '-'."""
    hay, needle = path.lower(), tag.lower()
    start = hay.find(needle)
    while start >= 0:
        end = start + len(needle)
        if end < len(hay) and hay[end] in ".-":
            return True
        start = hay.find(needle, start + 1)
    return False


# ----------------------------------------------------------------------------------------------
# the plan
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RemoteFile:
    """One entry of a repository listing."""

    path: str
    size: int | None = None
    sha256: str | None = None  # LFS files: the content hash (also the cache blob name)


@dataclass(frozen=True)
class PlannedFile:
    """A file the plan will fetch, with the reason it was picked."""

    path: str
    size: int | None
    role: str  # "model" | "mtp" | "mmproj" | "extra"
    why: str
    sha256: str | None = None


@dataclass(frozen=True)
class Plan:
    """Which files of a repository to fetch, and why. Built by :func:`resolve`."""

    repo: str
    tag: str | None
    revision: str | None  # as asked (None: the default branch)
    commit: str | None  # what it resolved to (None when unknown, e.g. offline from a local dir)
    source: str  # "hub" | "cache" | "local-dir"
    model: tuple[PlannedFile, ...]  # part 1 first
    mtp: PlannedFile | None
    mmproj: PlannedFile | None
    extra: tuple[PlannedFile, ...] = ()
    quants: tuple[str, ...] = ()  # model quants the listing offers
    notes: tuple[str, ...] = ()  # things the user should know (no sidecar, ignored names, ...)
    refused: tuple[str, ...] = ()  # unsafe names seen in the listing and ignored
    gated: bool = False
    want_mtp: bool = True

    @property
    def offline(self) -> bool:
        return self.source != "hub"

    @property
    def files(self) -> tuple[PlannedFile, ...]:
        out = list(self.model)
        out += [f for f in (self.mtp, self.mmproj) if f is not None]
        out += self.extra
        return tuple(out)

    @property
    def total_size(self) -> int | None:
        sizes = [f.size for f in self.files]
        return None if any(s is None for s in sizes) else sum(s for s in sizes if s is not None)

    @property
    def spec(self) -> HfSpec:
        return HfSpec(self.repo, self.tag)

    @property
    def mtp_missing(self) -> bool:
        """MTP was wanted but the repo has no sidecar for this model (it may carry MTP layers itself)."""
        return self.want_mtp and self.mtp is None

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready view: repo paths per role, sizes and reasons."""

        def one(f: PlannedFile | None) -> dict[str, object] | None:
            return None if f is None else {"path": f.path, "size": f.size, "why": f.why}

        return {
            "repo": self.repo,
            "quant": self.tag,
            "revision": self.revision,
            "commit": self.commit,
            "source": self.source,
            "files": {
                "model": [one(f) for f in self.model],
                "mtp": one(self.mtp),
                "mmproj": one(self.mmproj),
                "extra": [one(f) for f in self.extra],
            },
            "total_size": self.total_size,
            "quants": list(self.quants),
            "notes": list(self.notes),
            "gated": self.gated,
        }


def _as_remote(entry: RemoteFile | Sequence[object]) -> RemoteFile:
    if isinstance(entry, RemoteFile):
        return entry
    path = entry[0]
    size = entry[1] if len(entry) > 1 else None
    sha = entry[2] if len(entry) > 2 else None
    return RemoteFile(str(path), size if isinstance(size, int) else None, sha if isinstance(sha, str) else None)


def plan_from_listing(
    spec: HfSpec | str,
    listing: Iterable[RemoteFile | Sequence[object]],
    *,
    revision: str | None = None,
    commit: str | None = None,
    source: str = "hub",
    want_mtp: bool = True,
    want_mmproj: bool = False,
    include: Sequence[str] = (),
    gated: bool = False,
) -> Plan:
    """Decide which files to fetch from a repository listing (pure: no I/O).

    Raises NoMatchingFileError when no model matches the tag (listing the quants that exist) and
    UnsafeRemotePathError when a file that would be picked has an unsafe name.
    """
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    entries = sorted({e.path: e for e in map(_as_remote, listing)}.values(), key=lambda e: e.path)
    refused = tuple(e.path for e in entries if unsafe_path_reason(e.path))
    safe = [e for e in entries if not unsafe_path_reason(e.path)]
    where = {"hub": f"in {spec.repo}", "cache": f"cached for {spec.repo} (offline)"}.get(
        source, f"of {spec.repo} in the local folder (offline)"
    )
    quants = _quants(safe)
    notes: list[str] = []

    primary, why = _find_model(safe, spec.tag)
    if primary is None:
        hostile, _ = _find_model([e for e in entries if e.path in refused], spec.tag)
        if hostile is not None:
            raise UnsafeRemotePathError(
                f"refusing remote file name {hostile.path!r} in {spec.repo} ({unsafe_path_reason(hostile.path)})"
            )
        if spec.tag:
            raise NoMatchingFileError(
                f"no model file {where} matches quant {spec.tag!r}; available: {', '.join(quants) or 'none'}",
                quants,
            )
        ggufs = [e.path for e in safe if _is_gguf(e.path)]
        detail = f" (only sidecar/auxiliary files: {', '.join(ggufs[:5])})" if ggufs else ""
        raise NoMatchingFileError(f"no GGUF model file {where}{detail}", quants)

    parts = _split_parts(safe, primary, spec.repo)
    model = tuple(
        PlannedFile(e.path, e.size, "model", why if i == 0 else f"part {i + 1} of {len(parts)} of the split model", e.sha256)
        for i, e in enumerate(parts)
    )

    mtp = None
    if want_mtp:
        found = _find_sibling(safe, primary.path, _is_mtp_sidecar, spec.tag)
        if found is None:
            found = _find_in_mtp_folder(safe, primary.path, spec.tag)
        if found is not None:
            e, reason = found
            mtp = PlannedFile(e.path, e.size, "mtp", reason, e.sha256)

    mmproj = None
    if want_mmproj:
        found = _find_sibling(safe, primary.path, _is_mmproj, spec.tag, what="projector")
        if found is not None:
            e, reason = found
            mmproj = PlannedFile(e.path, e.size, "mmproj", reason, e.sha256)
        else:
            notes.append(f"no mmproj file {where} for {primary.path}")

    chosen = {f.path for f in (*model, mtp, mmproj) if f is not None}
    extra: list[PlannedFile] = []
    if include:
        from huggingface_hub.utils import filter_repo_objects

        all_paths = [e.path for e in entries]
        by_path = {e.path: e for e in entries}
        for pattern in include:
            matched = list(filter_repo_objects(all_paths, allow_patterns=[pattern]))
            if not matched:
                notes.append(f"--include {pattern!r} matches no file {where}")
            for path in matched:
                reason = unsafe_path_reason(path)
                if reason:
                    raise UnsafeRemotePathError(
                        f"refusing remote file name {path!r} in {spec.repo} ({reason}), matched by --include {pattern!r}"
                    )
                if path not in chosen:
                    chosen.add(path)
                    e = by_path[path]
                    extra.append(PlannedFile(path, e.size, "extra", f"matches --include {pattern!r}", e.sha256))

    if refused:
        shown = ", ".join(repr(p) for p in refused[:3]) + (" ..." if len(refused) > 3 else "")
        notes.append(f"ignored {len(refused)} unsafe file name(s) in the listing: {shown}")

    return Plan(
        repo=spec.repo,
        tag=spec.tag,
        revision=revision,
        commit=commit,
        source=source,
        model=model,
        mtp=mtp,
        mmproj=mmproj,
        extra=tuple(extra),
        quants=quants,
        notes=tuple(notes),
        refused=refused,
        gated=gated,
        want_mtp=want_mtp,
    )


def _first_part(e: RemoteFile) -> bool:
    _, index, count = _split_info(e.path)
    return count <= 1 or index == 1


def _quants(entries: Sequence[RemoteFile]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for e in entries:
        if _is_model(e.path) and _first_part(e):
            seen.setdefault(quant_label(e.path) or _basename(e.path), None)
    return tuple(sorted(seen))


def _find_model(entries: Sequence[RemoteFile], tag: str | None) -> tuple[RemoteFile | None, str]:
    models = [e for e in entries if _is_model(e.path) and _first_part(e)]
    if tag:
        for e in models:
            if _tag_matches(e.path, tag):
                return e, f"matches quant {tag!r}"
        return None, ""
    for t in DEFAULT_TAGS:
        for e in models:
            if _tag_matches(e.path, t):
                return e, f"default quant {t} (no quant given)"
    if models:
        return models[0], "first model file (no quant given, no Q4_K_M or Q8_0 in the repo)"
    return None, ""


def _split_parts(entries: Sequence[RemoteFile], primary: RemoteFile, repo: str) -> list[RemoteFile]:
    prefix, _, count = _split_info(primary.path)
    if count <= 1:
        return [primary]
    parts: dict[int, RemoteFile] = {}
    for e in entries:
        p, index, c = _split_info(e.path)
        if p == prefix and c == count and _is_gguf(e.path):
            parts.setdefault(index, e)
    missing = [i for i in range(1, count + 1) if i not in parts]
    if missing:
        raise HubError(
            f"split model {primary.path} in {repo} is incomplete: part(s) {', '.join(map(str, missing))} "
            f"of {count} are missing from the repository"
        )
    return [parts[i] for i in range(1, count + 1)]


def _rank_key(e: RemoteFile, tag_upper: str, target_bits: int) -> tuple[bool, int]:
    exact = bool(tag_upper) and f"-{tag_upper}." in e.path.upper()
    return exact, abs(quant_bits(e.path) - target_bits)


def _describe(e: RemoteFile, exact: bool, tag: str | None, target_bits: int) -> str:
    if exact:
        return f"exact quant match -{tag.upper()}." if tag else "exact quant match"
    bits = quant_bits(e.path)
    basis = f"the {tag!r} quant" if tag else "the model"
    if bits and target_bits:
        return f"{bits}-bit, closest to {basis} ({target_bits}-bit)"
    return "only candidate" if not bits else f"{bits}-bit"


def _find_sibling(
    entries: Sequence[RemoteFile],
    model: str,
    accept: Callable[[str], bool],
    tag: str | None,
    *,
    what: str = "MTP sidecar",
) -> tuple[RemoteFile, str] | None:
    """llama.cpp's ``find_best_sibling``: a file in the model's folder or an ancestor of it;
    prefer the deepest folder, then an exact ``-TAG.`` match, then the closest bit count."""
    tag_upper = (tag or "").upper()
    target_bits = _bits_of(tag_upper) if tag else quant_bits(model)
    model_dir = _dir_parts(model)
    best: tuple[tuple[int, bool, int], RemoteFile] | None = None
    for e in entries:
        if not accept(e.path) or not _first_part(e):
            continue
        sib_dir = _dir_parts(e.path)
        if sib_dir != model_dir[: len(sib_dir)]:
            continue
        exact, diff = _rank_key(e, tag_upper, target_bits)
        key = (len(sib_dir), exact, -diff)
        if best is None or key > best[0]:
            best = (key, e)
    if best is None:
        return None
    (depth, exact, _), e = best
    place = "beside the model" if depth == len(model_dir) else "in a parent folder of the model"
    return e, f"{what} {place}; {_describe(e, exact, tag, target_bits)}"


def _find_in_mtp_folder(entries: Sequence[RemoteFile], model: str, tag: str | None) -> tuple[RemoteFile, str] | None:
    """Fallback: a drafter in an ``MTP/`` folder (any case) beside the model or at the repo root."""
    tag_upper = (tag or "").upper()
    target_bits = _bits_of(tag_upper) if tag else quant_bits(model)
    model_dir = _dir_parts(model)
    best: tuple[tuple[int, bool, int], RemoteFile] | None = None
    for e in entries:
        d = _dir_parts(e.path)
        if not d or d[-1].lower() != "mtp" or not _is_gguf(e.path) or not _first_part(e):
            continue
        name = _basename(e.path)
        if "mmproj" in name.lower() or "imatrix" in name.lower() or any(f in name for f in _AUX_FRAGMENTS[1:]):
            continue
        parent = d[:-1]
        if parent == model_dir:
            rank = 2
        elif not parent:
            rank = 1
        else:
            continue
        exact, diff = _rank_key(e, tag_upper, target_bits)
        key = (rank, exact, -diff)
        if best is None or key > best[0]:
            best = (key, e)
    if best is None:
        return None
    (rank, exact, _), e = best
    folder = "/".join(_dir_parts(e.path))
    place = "beside the model" if rank == 2 else "at the repo root"
    return e, f"MTP drafter in the {folder}/ folder {place}; {_describe(e, exact, tag, target_bits)}"


# ----------------------------------------------------------------------------------------------
# settings, read when used (huggingface_hub reads its own once, at import)
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HubSettings:
    endpoint: str
    cache_dir: Path
    token: str | None  # None: huggingface_hub's own lookup (stored login)
    offline: bool

    @classmethod
    def from_env(cls) -> HubSettings:
        env = os.environ

        def path(value: str) -> Path:
            return Path(os.path.expandvars(os.path.expanduser(value)))

        cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
        if cache:
            cache_dir = path(cache)
        else:
            home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
            cache_dir = path(home) / "hub"
        offline = any((env.get(k) or "").upper() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
        token = (env.get("HF_TOKEN") or env.get("HUGGING_FACE_HUB_TOKEN") or "").strip() or None
        return cls((env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/"), cache_dir, token, offline)

    def storage(self, repo: str) -> Path:
        """The repository's folder in the cache (``models--owner--name``)."""
        return self.cache_dir / ("models--" + repo.replace("/", "--"))


def _check_revision(revision: str | None) -> None:
    if revision is not None and (not revision.strip() or unsafe_path_reason(revision) or len(revision) > 256):
        raise InvalidInputError(f"invalid revision {revision!r}")


# ----------------------------------------------------------------------------------------------
# resolve
# ----------------------------------------------------------------------------------------------
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
    _check_revision(revision)
    settings = settings or HubSettings.from_env()
    opts = dict(revision=revision, want_mtp=want_mtp, want_mmproj=want_mmproj, include=include)
    if offline or (offline is None and settings.offline):
        listing, commit, source = _local_listing(spec, revision, settings, local_dir)
        return plan_from_listing(spec, listing, commit=commit, source=source, **opts)  # type: ignore[arg-type]

    from huggingface_hub import HfApi

    api = HfApi(endpoint=settings.endpoint, library_name="mtprun", library_version=__version__)
    try:
        info = api.model_info(spec.repo, revision=revision, files_metadata=True, token=settings.token)
    except Exception as exc:
        raise _hub_error(exc, spec, settings, revision=revision, local_dir=local_dir) from exc
    listing = [
        RemoteFile(
            s.rfilename,
            s.lfs.size if s.lfs is not None else s.size,
            s.lfs.sha256 if s.lfs is not None else None,
        )
        for s in (info.siblings or [])
        if isinstance(s.rfilename, str)
    ]
    commit = info.sha if isinstance(info.sha, str) and _COMMIT.match(info.sha) else None
    return plan_from_listing(spec, listing, commit=commit, source="hub", gated=bool(info.gated), **opts)  # type: ignore[arg-type]


def _local_listing(
    spec: HfSpec, revision: str | None, settings: HubSettings, local_dir: str | os.PathLike[str] | None
) -> tuple[list[RemoteFile], str | None, str]:
    """The files already on disk for this repo: a cache snapshot, or a ``local_dir``."""
    if local_dir is not None:
        root = Path(local_dir)
        if not root.is_dir():
            raise HubNotCachedError(f"{spec} is not downloaded: {root} does not exist (offline)")
        listing = [RemoteFile(rel, size) for rel, size in _walk(root, skip_top=".cache")]
        return listing, None, "local-dir"
    commit = _cached_commit(spec.repo, revision, settings)
    if commit is None:
        raise HubNotCachedError(
            f"{spec} is not in the cache ({settings.cache_dir}) and mtprun is offline"
            + (" (HF_HUB_OFFLINE is set)" if settings.offline else "")
            + ": run once without --offline to download it"
        )
    snapshot = settings.storage(spec.repo) / "snapshots" / commit
    return [RemoteFile(rel, size) for rel, size in _walk(snapshot)], commit, "cache"


def _cached_commit(repo: str, revision: str | None, settings: HubSettings) -> str | None:
    storage = settings.storage(repo)
    rev = revision or "main"
    if _COMMIT.match(rev):
        commit = rev
    else:
        try:
            commit = (storage / "refs" / rev).read_text().strip()
        except OSError:
            return None
    if not _COMMIT.match(commit) or not (storage / "snapshots" / commit).is_dir():
        return None
    return commit


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


# ----------------------------------------------------------------------------------------------
# download
# ----------------------------------------------------------------------------------------------
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


# progress events: ("cached" | "downloading" | "done", file)
ProgressFn = Callable[[str, PlannedFile], None]


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
            local[f.path] = _offline_path(plan, f, settings, local_dir)
            notify("cached", f)
    else:
        fetcher = _Fetcher(plan, settings, local_dir)
        fetcher.check_space()
        for f in plan.files:
            local[f.path], cached = fetcher.fetch(f, notify)
            notify("cached" if cached else "done", f)
        fetcher.write_ref()

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
    revision: str | None = None,
    offline: bool | None = None,
    want_mtp: bool = True,
    want_mmproj: bool = False,
    include: Sequence[str] = (),
    local_dir: str | os.PathLike[str] | None = None,
    progress: ProgressFn | None = None,
) -> LocalModel:
    """resolve + download: what ``run``/``chat`` call for ``-hf owner/name[:quant]``."""
    settings = HubSettings.from_env()
    plan = resolve(
        spec,
        revision=revision,
        offline=offline,
        want_mtp=want_mtp,
        want_mmproj=want_mmproj,
        include=include,
        local_dir=local_dir,
        settings=settings,
    )
    return download(plan, local_dir=local_dir, progress=progress, settings=settings)


def _offline_path(plan: Plan, f: PlannedFile, settings: HubSettings, local_dir: str | os.PathLike[str] | None) -> Path:
    if local_dir is not None:
        p = Path(local_dir, *f.path.split("/"))
    else:
        p = settings.storage(plan.repo) / "snapshots" / str(plan.commit) / Path(*f.path.split("/"))
    if not p.is_file():
        raise HubNotCachedError(f"{f.path} of {plan.spec} is not in the cache and mtprun is offline")
    return p


class _Fetcher:
    """Downloads one plan's files; see the module docstring for the on-disk protocol."""

    def __init__(self, plan: Plan, settings: HubSettings, local_dir: str | os.PathLike[str] | None) -> None:
        if plan.commit is None:
            raise HubError(f"the Hub did not say which commit {plan.spec} is at; cannot download consistently")
        self.plan = plan
        self.settings = settings
        self.local_dir = Path(local_dir).expanduser().resolve() if local_dir is not None else None
        self.storage = settings.storage(plan.repo)

    # --- where things go -------------------------------------------------------------------------
    def _target(self, f: PlannedFile) -> Path:
        assert self.local_dir is not None
        return self.local_dir.joinpath(*f.path.split("/"))

    def _partial(self, f: PlannedFile, etag: str) -> Path:
        if self.local_dir is None:
            return self.storage / "blobs" / f"{etag}.incomplete"
        return self.local_dir.joinpath(".cache", "huggingface", "download", *_dir_parts(f.path), f"{_basename(f.path)}.{etag}.incomplete")

    def _lock(self, f: PlannedFile, etag: str) -> Path:
        if self.local_dir is None:  # the lock huggingface_hub takes for the same blob
            return self.settings.cache_dir / ".locks" / self.storage.name / f"{etag}.lock"
        return self.local_dir.joinpath(".cache", "huggingface", "download", *_dir_parts(f.path), f"{_basename(f.path)}.lock")

    def _complete(self, f: PlannedFile) -> Path | None:
        """The file's local path if it is already complete (no network)."""
        if self.local_dir is not None:
            return None  # huggingface_hub checks local_dir files against the Hub's etag (below)
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(self.plan.repo, f.path, cache_dir=self.settings.cache_dir, revision=self.plan.commit)
        if isinstance(hit, str):
            size = os.path.getsize(hit)
            if f.size is not None and size != f.size:
                raise HubError(
                    f"cached {f.path} has {size} bytes but the Hub lists {f.size}: delete {hit} and run again"
                )
            return Path(hit)
        return None

    # --- checks ----------------------------------------------------------------------------------
    def check_space(self) -> None:
        """Before any transfer: is there room for every file that is not complete yet?"""
        need = 0
        for f in self.plan.files:
            if f.size is None or self._complete(f) is not None:
                continue
            if self.local_dir is not None:
                target = self._target(f)
                if target.is_file() and target.stat().st_size == f.size:
                    continue
            have = 0
            if f.sha256:
                try:
                    have = self._partial(f, f.sha256).stat().st_size
                except OSError:
                    pass
            need += max(f.size - have, 0)
        _require_space(self.local_dir or self.settings.cache_dir, need, "the download")

    # --- one file --------------------------------------------------------------------------------
    def fetch(self, f: PlannedFile, notify: ProgressFn) -> tuple[Path, bool]:
        hit = self._complete(f)
        if hit is not None:
            return hit, True
        if self.local_dir is not None:
            target = self._target(f)
            if target.is_file() and (f.size is None or target.stat().st_size == f.size):
                return self._register(f), True  # huggingface_hub verifies it against the Hub's etag
        try:
            return self._fetch(f, notify), False
        except HubError:
            raise
        except Exception as exc:
            raise _transfer_error(exc, f, self.plan, self.settings) from exc

    def _fetch(self, f: PlannedFile, notify: ProgressFn) -> Path:
        from huggingface_hub import get_hf_file_metadata, hf_hub_url
        from huggingface_hub.utils import build_hf_headers

        url = hf_hub_url(self.plan.repo, f.path, revision=self.plan.commit, endpoint=self.settings.endpoint)
        meta = get_hf_file_metadata(url, token=self.settings.token, library_name="mtprun", library_version=__version__)
        etag, size = meta.etag, meta.size
        if not etag or unsafe_path_reason(etag) or len(etag) > 128:
            raise HubError(f"the Hub sent no usable ETag for {f.path}; cannot cache it safely")
        # in the cache a blob named by its etag is complete by construction; a local_dir file of
        # another size is an older version, replaced once the new one is complete
        final = self._target(f) if self.local_dir is not None else self.storage / "blobs" / etag
        if not _complete_file(final, size):
            headers = build_hf_headers(token=self.settings.token, library_name="mtprun", library_version=__version__)
            location = meta.location or url
            if _origin(location) != _origin(url):
                # signed CDN URL: the Hub token must not leave the Hub
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            partial = self._partial(f, etag)
            lock = self._lock(f, etag)
            lock.parent.mkdir(parents=True, exist_ok=True)
            from huggingface_hub.utils import WeakFileLock

            notify("downloading", f)
            with WeakFileLock(lock):  # the lock huggingface_hub itself takes: `hf download` waits for us
                if not _complete_file(final, size):
                    _transfer(location, partial, final, size, headers, f.path)
        return self._register(f)

    def _register(self, f: PlannedFile) -> Path:
        """Let huggingface_hub link the complete blob into the snapshot (or record local_dir metadata)."""
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(
            self.plan.repo,
            f.path,
            revision=self.plan.commit,
            cache_dir=self.settings.cache_dir,
            local_dir=self.local_dir,
            endpoint=self.settings.endpoint,
            token=self.settings.token,
            library_name="mtprun",
            library_version=__version__,
        )
        return Path(path)

    def write_ref(self) -> None:
        """Record ``refs/<revision>`` -> commit, as huggingface_hub does, so offline runs find it."""
        if self.local_dir is not None or self.plan.commit is None:
            return
        rev = self.plan.revision or "main"
        if _COMMIT.match(rev):
            return
        ref = self.storage / "refs" / Path(*rev.split("/"))
        try:
            if ref.is_file() and ref.read_text().strip() == self.plan.commit:
                return
            ref.parent.mkdir(parents=True, exist_ok=True)
            tmp = ref.with_name(ref.name + f".{os.getpid()}.tmp")
            tmp.write_text(self.plan.commit)
            os.replace(tmp, ref)
        except OSError:
            pass  # a read-only cache still works online


def _complete_file(path: Path, size: int | None) -> bool:
    try:
        return path.is_file() and (size is None or path.stat().st_size == size)
    except OSError:
        return False


def _transfer(url: str, partial: Path, final: Path, size: int | None, headers: dict[str, str], name: str) -> None:
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
                _require_space(partial.parent, size - have, name)
            stalls = 0
            while size is None or have < size:
                try:
                    http_get(url, fh, resume_size=have, headers=headers, expected_size=size, displayed_filename=_basename(name))
                    break
                except Exception as exc:
                    # The connection dropped (huggingface_hub < 2 does not retry this itself):
                    # go on from what is on disk while that keeps growing.
                    got = os.fstat(raw.fileno()).st_size
                    if not _is_network_error(exc) or size is None:
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


def _require_space(where: Path, need: int, what: str) -> None:
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


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


# ----------------------------------------------------------------------------------------------
# errors from huggingface_hub / the network, as one line each
# ----------------------------------------------------------------------------------------------
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


def _is_network_error(exc: BaseException) -> bool:
    types = _network_error_types()
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, (ConnectionError, TimeoutError)) or (types and isinstance(cur, types)):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    return code if isinstance(code, int) else None


def _login_hint(settings: HubSettings) -> str:
    return "log in with `hf auth login` or set HF_TOKEN" if settings.token is None else "check that HF_TOKEN has access"


def _hub_error(
    exc: BaseException,
    spec: HfSpec,
    settings: HubSettings,
    *,
    revision: str | None,
    local_dir: str | os.PathLike[str] | None,
) -> HubError:
    from huggingface_hub import errors as hf_errors

    name = type(exc).__name__
    status = _status(exc)
    if isinstance(exc, getattr(hf_errors, "GatedRepoError", ())):
        return HubAuthError(
            f"{spec.repo} is gated: accept its conditions at {settings.endpoint}/{spec.repo}, then {_login_hint(settings)}"
        )
    if isinstance(exc, getattr(hf_errors, "RevisionNotFoundError", ())):
        return HubRepoNotFoundError(f"revision {revision or 'main'!r} not found in {spec.repo}")
    if isinstance(exc, getattr(hf_errors, "RepositoryNotFoundError", ())):
        return HubRepoNotFoundError(
            f"repository {spec.repo} not found on {settings.endpoint} (if it is private, {_login_hint(settings)})"
        )
    if isinstance(exc, getattr(hf_errors, "DisabledRepoError", ())):
        return HubRepoNotFoundError(f"repository {spec.repo} has been disabled on {settings.endpoint}")
    if status == 401:
        return HubAuthError(f"the Hub rejected the credentials for {spec.repo} (401): {_login_hint(settings)}")
    if status == 403:
        return HubAuthError(f"access to {spec.repo} denied (403): {_login_hint(settings)}")
    if _is_network_error(exc):
        try:
            listing, _, _ = _local_listing(spec, revision, settings, local_dir)
            plan_from_listing(spec, listing, want_mtp=False)
            cached = f"; {spec} is already downloaded: run again with --offline to use it"
        except HubError:
            cached = f"; {spec} is not downloaded either"
        return HubConnectionError(f"cannot reach {settings.endpoint} ({_short(exc)}){cached}")
    if status is not None:
        return HubError(f"the Hub answered {status} for {spec.repo}: {_short(exc)}")
    return HubError(f"listing {spec.repo} failed: {name}: {_short(exc)}")


def _transfer_error(exc: BaseException, f: PlannedFile, plan: Plan, settings: HubSettings) -> HubError:
    from huggingface_hub import errors as hf_errors

    if isinstance(exc, (getattr(hf_errors, "GatedRepoError", ()), getattr(hf_errors, "RepositoryNotFoundError", ()))) or _status(exc) in (401, 403):
        return _hub_error(exc, plan.spec, settings, revision=plan.revision, local_dir=None)
    if isinstance(exc, getattr(hf_errors, "EntryNotFoundError", ())) or _status(exc) == 404:
        return HubError(f"{f.path} is listed in {plan.repo} but the Hub has no such file at {plan.commit}")
    if _is_network_error(exc) or (isinstance(exc, OSError) and "Consistency check failed" in str(exc)):
        return HubConnectionError(f"download of {f.path} was interrupted ({_short(exc)}); run again to resume")
    if isinstance(exc, ValueError) and "Invalid filename" in str(exc):
        return UnsafeRemotePathError(f"refusing remote file name {f.path!r}: {_short(exc)}")
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return DiskFullError(f"disk full while saving {f.path} ({exc.strerror}); free some space and run again")
    status = _status(exc)
    if status is not None:
        return HubError(f"the Hub answered {status} for {f.path}: {_short(exc)}")
    return HubError(f"downloading {f.path} failed: {type(exc).__name__}: {_short(exc)}")


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if not text:
        return type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
