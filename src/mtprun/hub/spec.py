"""The name the user typed (``owner/name[:quant]``) and what remote file names say.

llama.cpp's ``-hf`` syntax and its file-name rules: which ``.gguf`` is a model, a sidecar or a
projector, the parts of a split model, and the quant a name carries. Pure functions, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath, PureWindowsPath

from ..errors import InvalidInputError

# basename fragments that mark a .gguf as a sidecar or auxiliary file, not a model to run
AUX_FRAGMENTS_ANY_CASE = ("mmproj", "imatrix")
AUX_FRAGMENTS = ("mtp-", "eagle3-", "dflash-", "dspark-")  # case-sensitive, as in llama.cpp
_SPLIT = re.compile(r"^(.+)-([0-9]{5})-of-([0-9]{5})$", re.IGNORECASE)
_LLAMA_TAG = re.compile(r"[-.]([A-Z0-9_]+)$", re.IGNORECASE)
_QUANT = re.compile(
    r"(?:^|[-_.])((?:UD-)?(?:I?Q[0-9]+(?:_[A-Z0-9]+)*|[BM]?F[0-9]+|MXFP4(?:_MOE)?|NVFP4|TQ[0-9]_[0-9]))$",
    re.IGNORECASE,
)
_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_MAX_TAG = 128


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


def basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def dir_parts(path: str) -> list[str]:
    return path.split("/")[:-1]


def is_gguf(path: str) -> bool:
    return path.lower().endswith(".gguf")


def is_model(path: str) -> bool:
    name = basename(path)
    lower = name.lower()
    return (
        is_gguf(path)
        and not any(f in lower for f in AUX_FRAGMENTS_ANY_CASE)
        and not any(f in name for f in AUX_FRAGMENTS)
    )


def is_mtp_sidecar(path: str) -> bool:
    return is_gguf(path) and "mtp-" in basename(path)


def is_mmproj(path: str) -> bool:
    return is_gguf(path) and "mmproj" in basename(path).lower()


def _stem(path: str) -> str:
    name = path[: -len(".gguf")] if is_gguf(path) else path
    return name


def split_info(path: str) -> tuple[str, int, int]:
    """(prefix, index, count) of ``prefix-0000K-of-0000N.gguf``; (stem, 1, 1) otherwise."""
    stem = _stem(path)
    m = _SPLIT.match(stem)
    if m:
        return m.group(1), int(m.group(2)), int(m.group(3))
    return stem, 1, 1


def quant_bits(path: str) -> int:
    """llama.cpp's ``extract_quant_bits``: Q4_K_M -> 4, BF16 -> 16, no digits -> 0."""
    prefix, _, _ = split_info(path)
    m = _LLAMA_TAG.search(prefix)
    return bits_of(m.group(1) if m else "")


def bits_of(tag: str) -> int:
    m = re.search(r"[0-9]+", tag)
    return int(m.group()) if m else 0


def quant_label(path: str) -> str | None:
    """The quant a file name carries, as a user would type it (``UD-Q4_K_XL``, ``Q8_0``, ``BF16``)."""
    prefix, _, _ = split_info(basename(path))
    for candidate in (prefix, *reversed(dir_parts(path))):
        m = _QUANT.search(candidate)
        if m:
            return m.group(1).upper()
    m = _LLAMA_TAG.search(prefix)
    return m.group(1).upper() if m else None


def tag_matches(path: str, tag: str) -> bool:
    """The path contains the tag (literal, any case) followed by '.' or '-'."""
    hay, needle = path.lower(), tag.lower()
    start = hay.find(needle)
    while start >= 0:
        end = start + len(needle)
        if end < len(hay) and hay[end] in ".-":
            return True
        start = hay.find(needle, start + 1)
    return False


def is_commit(rev: str) -> bool:
    """A full 40-hex commit hash (as opposed to a branch or tag name)."""
    return bool(_COMMIT.match(rev))


def check_revision(revision: str | None) -> None:
    """Refuse a ``--revision`` that could not name a branch, tag or commit safely."""
    if revision is not None and (not revision.strip() or unsafe_path_reason(revision) or len(revision) > 256):
        raise InvalidInputError(f"invalid revision {revision!r}")
