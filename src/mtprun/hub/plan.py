"""Which files of a repository to fetch, and why: a pure function over a listing.

:func:`plan_from_listing` takes ``(path, size[, sha256])`` entries (a Hub listing, a cache
snapshot or a local folder) and picks the model (every part of a split model), its MTP sidecar
(llama.cpp's sibling rule, then an ``MTP/`` folder), optionally its ``mmproj`` and ``--include``
matches, recording the reason for each. No I/O; tested with plain lists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ..errors import HubError, NoMatchingFileError, UnsafeRemotePathError
from .spec import (
    AUX_FRAGMENTS,
    HfSpec,
    basename,
    bits_of,
    dir_parts,
    is_gguf,
    is_mmproj,
    is_model,
    is_mtp_sidecar,
    split_info,
    tag_matches,
    parse_spec,
    quant_bits,
    quant_label,
    unsafe_path_reason,
)

DEFAULT_TAGS = ("Q4_K_M", "Q8_0")  # llama.cpp's choice when no quant is given


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
        ggufs = [e.path for e in safe if is_gguf(e.path)]
        detail = f" (only sidecar/auxiliary files: {', '.join(ggufs[:5])})" if ggufs else ""
        raise NoMatchingFileError(f"no GGUF model file {where}{detail}", quants)

    parts = _split_parts(safe, primary, spec.repo)
    model = tuple(
        PlannedFile(e.path, e.size, "model", why if i == 0 else f"part {i + 1} of {len(parts)} of the split model", e.sha256)
        for i, e in enumerate(parts)
    )

    mtp = None
    if want_mtp:
        found = _find_sibling(safe, primary.path, is_mtp_sidecar, spec.tag)
        if found is None:
            found = _find_in_mtp_folder(safe, primary.path, spec.tag)
        if found is not None:
            e, reason = found
            mtp = PlannedFile(e.path, e.size, "mtp", reason, e.sha256)

    mmproj = None
    if want_mmproj:
        found = _find_sibling(safe, primary.path, is_mmproj, spec.tag, what="projector")
        if found is not None:
            e, reason = found
            mmproj = PlannedFile(e.path, e.size, "mmproj", reason, e.sha256)
        else:
            notes.append(f"no mmproj file {where} for {primary.path}")

    chosen = {f.path for f in (*model, mtp, mmproj) if f is not None}
    extra: list[PlannedFile] = []
    if include:
        from .transfer import match_patterns  # huggingface_hub's own pattern rules, as `hf download`

        all_paths = [e.path for e in entries]
        by_path = {e.path: e for e in entries}
        for pattern in include:
            matched = match_patterns(all_paths, pattern)
            if not matched:
                notes.append(f"include pattern {pattern!r} matches no file {where}")
            for path in matched:
                reason = unsafe_path_reason(path)
                if reason:
                    raise UnsafeRemotePathError(
                        f"refusing remote file name {path!r} in {spec.repo} ({reason}), matched by the include pattern {pattern!r}"
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
    _, index, count = split_info(e.path)
    return count <= 1 or index == 1


def _quants(entries: Sequence[RemoteFile]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for e in entries:
        if is_model(e.path) and _first_part(e):
            seen.setdefault(quant_label(e.path) or basename(e.path), None)
    return tuple(sorted(seen))


def _find_model(entries: Sequence[RemoteFile], tag: str | None) -> tuple[RemoteFile | None, str]:
    models = [e for e in entries if is_model(e.path) and _first_part(e)]
    if tag:
        for e in models:
            if tag_matches(e.path, tag):
                return e, f"matches quant {tag!r}"
        return None, ""
    for t in DEFAULT_TAGS:
        for e in models:
            if tag_matches(e.path, t):
                return e, f"default quant {t} (no quant given)"
    if models:
        return models[0], "first model file (no quant given, no Q4_K_M or Q8_0 in the repo)"
    return None, ""


def _split_parts(entries: Sequence[RemoteFile], primary: RemoteFile, repo: str) -> list[RemoteFile]:
    prefix, _, count = split_info(primary.path)
    if count <= 1:
        return [primary]
    parts: dict[int, RemoteFile] = {}
    for e in entries:
        p, index, c = split_info(e.path)
        if p == prefix and c == count and is_gguf(e.path):
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
    target_bits = bits_of(tag_upper) if tag else quant_bits(model)
    model_dir = dir_parts(model)
    best: tuple[tuple[int, bool, int], RemoteFile] | None = None
    for e in entries:
        if not accept(e.path) or not _first_part(e):
            continue
        sib_dir = dir_parts(e.path)
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
    target_bits = bits_of(tag_upper) if tag else quant_bits(model)
    model_dir = dir_parts(model)
    best: tuple[tuple[int, bool, int], RemoteFile] | None = None
    for e in entries:
        d = dir_parts(e.path)
        if not d or d[-1].lower() != "mtp" or not is_gguf(e.path) or not _first_part(e):
            continue
        name = basename(e.path)
        if "mmproj" in name.lower() or "imatrix" in name.lower() or any(f in name for f in AUX_FRAGMENTS[1:]):
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
    folder = "/".join(dir_parts(e.path))
    place = "beside the model" if rank == 2 else "at the repo root"
    return e, f"MTP drafter in the {folder}/ folder {place}; {_describe(e, exact, tag, target_bits)}"
