"""Graft the MTP (NextN) layers of a donor GGUF onto a model that has none.

Two steps, as in the Hub layer:

* :func:`plan_graft` reads both headers (``gguf.GGUFReader``: metadata and tensor infos only, no
  tensor data), checks that the donor's MTP block fits the model (architecture, tokenizer, width,
  trunk depth, head geometry) and computes the whole output layout: MODEL's metadata with the
  block count and ``nextn_predict_layers`` updated, per-layer arrays extended with the donor's
  entries for the MTP layers, ``mtprun.graft.*`` provenance keys, MODEL's tensors as they are and
  the donor's MTP tensors in whatever type the donor stores them. Nothing is written; every
  refusal is a one-line :class:`~mtprun.errors.ModelError` / ``InvalidInputError``.
* :func:`write_graft` streams the output tensor by tensor (kernel-side copies, never a whole
  tensor in memory) into a temporary file beside OUT, verifies it (size, header re-read, tensor
  count, MTP layers) and only then renames it to OUT. Interrupted or failed, it leaves no OUT.

In the ``gguf`` layout every tensor's data starts at a multiple of ``general.alignment`` from the
start of the data section, and the data section starts at the first aligned offset after the
header; the metadata is copied byte for byte (only the keys that change are re-encoded).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InvalidInputError, ModelError, MtprunError

__all__ = [
    "PROVENANCE_PREFIX",
    "GraftPlan",
    "PlannedTensor",
    "default_output",
    "describe_provenance",
    "graft_provenance",
    "plan_graft",
    "write_graft",
    "strip_mtp",
]

PROVENANCE_PREFIX = "mtprun.graft."
_BLOCK = re.compile(r"^blk\.(\d+)\.")
_COPY_CHUNK = 8 << 20  # bytes per copy call (the fallback read/write path holds one chunk)
# per-architecture keys that must agree between MODEL and donor (when either has them)
_GEOMETRY = (
    ("embedding_length", "width (n_embd)"),
    ("feed_forward_length", "feed-forward width"),
    ("attention.head_count", "attention heads"),
    ("attention.head_count_kv", "KV heads"),
    ("attention.key_length", "head size (keys)"),
    ("attention.value_length", "head size (values)"),
    ("rope.dimension_count", "rotary dimensions"),
    ("expert_count", "experts"),
    ("expert_used_count", "experts used"),
    ("expert_feed_forward_length", "expert feed-forward width"),
    ("ssm.inner_size", "SSM inner size"),
    ("ssm.state_size", "SSM state size"),
    ("vocab_size", "vocabulary size"),
)
_TOKENIZER_KEYS = ("tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.merges")
_STRING, _ARRAY, _UINT32 = 8, 9, 4  # gguf.GGUFValueType values used when re-encoding keys
ProgressFn = Callable[[int, int], None]  # (bytes written, bytes in all)


# ----------------------------------------------------------------------------------------------
# reading a header
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Tensor:
    name: str
    type_id: int
    shape: tuple[int, ...]  # ggml order (ne0 first)
    offset: int  # absolute offset of the data in its file
    nbytes: int

    @property
    def block(self) -> int | None:
        m = _BLOCK.match(self.name)
        return int(m.group(1)) if m else None


@dataclass(frozen=True)
class _Kv:
    key: str
    raw: bytes  # the whole KV entry as stored (key, type, value)
    type_id: int
    value: object  # scalars and strings; arrays: their element values when short, else None
    array_type: int | None = None
    array_len: int | None = None


@dataclass(frozen=True)
class _Header:
    path: Path
    size: int
    version: int
    arch: str
    kvs: tuple[_Kv, ...]
    tensors: tuple[_Tensor, ...]
    alignment: int
    data_offset: int
    tokenizer_hash: str

    def kv(self, key: str) -> _Kv | None:
        for kv in self.kvs:
            if kv.key == key:
                return kv
        return None

    def scalar(self, key: str) -> object:
        kv = self.kv(key)
        return None if kv is None or kv.type_id == _ARRAY else kv.value

    def int_of(self, suffix: str) -> int | None:
        v = self.scalar(f"{self.arch}.{suffix}")
        return v if isinstance(v, int) and not isinstance(v, bool) else None

    @property
    def block_count(self) -> int:
        return self.int_of("block_count") or 0

    @property
    def n_mtp(self) -> int:
        return self.int_of("nextn_predict_layers") or 0

    @property
    def n_trunk(self) -> int:
        return self.block_count - self.n_mtp

    def mtp_tensors(self) -> list[_Tensor]:
        return [t for t in self.tensors if t.block is not None and t.block >= self.n_trunk]


def _read_header(path: Path, role: str) -> _Header:
    """The parts of a GGUF header graft needs (``gguf.GGUFReader`` maps the file, reads no data)."""
    from gguf import GGUFReader, GGUFValueType

    from .gguf_info import read_gguf_info

    read_gguf_info(path)  # bounded sanity check first: one-line ModelError for broken files
    try:
        reader = GGUFReader(path, "r")
    except (ValueError, KeyError, IndexError, OSError) as exc:
        raise ModelError(f"{path}: cannot read the {role}'s GGUF header ({exc})") from None
    if reader.byte_order != "I":
        raise ModelError(f"{path}: a GGUF file of the other byte order (big-endian) cannot be grafted")
    try:
        mm = reader.data
        kvs: list[_Kv] = []
        tok_raw: dict[str, bytes] = {}
        for f in reader.fields.values():
            if f.name.startswith("GGUF."):
                continue
            nbytes = sum(int(p.nbytes) for p in f.parts)
            raw = bytes(mm[f.offset : f.offset + nbytes])
            type_id = int(f.types[0]) if f.types else -1
            value: object = None
            atype = alen = None
            if type_id == GGUFValueType.ARRAY:
                atype = int(f.types[1]) if len(f.types) > 1 else -1
                alen = len(f.data)
                if alen <= 4096 and atype not in (GGUFValueType.STRING, GGUFValueType.ARRAY):
                    value = list(f.contents())
            else:
                value = f.contents()
            if f.name in _TOKENIZER_KEYS:
                tok_raw[f.name] = raw
            kvs.append(_Kv(f.name, raw, type_id, value, atype, alen))
        tensors = tuple(
            _Tensor(
                t.name,
                int(t.tensor_type),
                tuple(int(x) for x in t.shape),
                int(t.data_offset),
                int(t.n_bytes),
            )
            for t in reader.tensors
        )
        version = int(reader.fields["GGUF.version"].parts[0][0])
        data_offset, alignment = int(reader.data_offset), int(reader.alignment)
        size = len(mm)
    finally:
        del reader  # drop the memory map
    arch_kv = next((k for k in kvs if k.key == "general.architecture"), None)
    if arch_kv is None or not isinstance(arch_kv.value, str):
        raise ModelError(f"{path}: the {role} has no general.architecture")
    for t in tensors:
        if t.offset + t.nbytes > size:
            raise ModelError(f"{path}: truncated GGUF file (tensor {t.name} runs past the end)")
    tok = hashlib.sha256()
    for key in _TOKENIZER_KEYS:  # a fixed order: converters may write the keys in another
        tok.update(hashlib.sha256(tok_raw.get(key, b"")).digest())
    return _Header(path, size, version, arch_kv.value, tuple(kvs), tensors, alignment, data_offset, tok.hexdigest())


# ----------------------------------------------------------------------------------------------
# the plan
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlannedTensor:
    """One tensor of OUT: where its bytes come from and where they go."""

    name: str
    source: str  # "model" | "donor"
    src_offset: int
    nbytes: int
    out_offset: int  # absolute, in OUT


@dataclass(frozen=True)
class GraftPlan:
    """Everything :func:`write_graft` needs; built by :func:`plan_graft` (no file written)."""

    model: Path
    donor: Path
    out: Path
    arch: str
    n_trunk: int
    n_mtp: int
    replaced: int  # MTP layers of MODEL that the donor's replace (--replace); 0 otherwise
    header: bytes = field(repr=False)  # OUT's header, padded to the data section
    tensors: tuple[PlannedTensor, ...] = field(repr=False)
    out_size: int = 0
    mtp_types: tuple[str, ...] = ()  # the donor's MTP tensor types, e.g. ("F16", "F32")
    provenance: Mapping[str, str] = field(default_factory=dict)

    @property
    def donor_ranges(self) -> list[tuple[int, int]]:
        """The donor's byte ranges OUT needs, as merged ``(start, end)`` pairs, in file order."""
        spans = sorted((t.src_offset, t.src_offset + t.nbytes) for t in self.tensors if t.source == "donor")
        merged: list[tuple[int, int]] = []
        for a, b in spans:
            if merged and a <= merged[-1][1] + 4096:  # alignment gaps: fetch through them
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        return merged

    @property
    def donor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors if t.source == "donor")

    @property
    def mtp_tensor_count(self) -> int:
        return sum(1 for t in self.tensors if t.source == "donor")


def default_output(model: str | os.PathLike[str]) -> Path:
    """Where OUT goes when ``-o`` is not given: beside MODEL, ``-MTP`` before the quant tag
    (``Qwen3.6-27B-UD-Q4_K_XL.gguf`` -> ``Qwen3.6-27B-MTP-UD-Q4_K_XL.gguf``)."""
    from .hub import quant_label

    p = Path(model)
    stem = p.name[:-5] if p.name.lower().endswith(".gguf") else p.name
    tag = quant_label(p.name)
    if tag and stem.upper().endswith(tag) and len(stem) > len(tag) and stem[-len(tag) - 1] in "-._":
        head, sep = stem[: -len(tag) - 1], stem[-len(tag) - 1]
        return p.with_name(f"{head}-MTP{sep}{stem[-len(tag):]}.gguf")
    return p.with_name(f"{stem}-MTP.gguf")


def plan_graft(
    model: str | os.PathLike[str],
    donor: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    replace: bool = False,
    provenance: Mapping[str, str] | None = None,
) -> GraftPlan:
    """Check that the donor's MTP layers fit MODEL and lay out OUT. Reads headers only."""
    model_p, donor_p, out_p = Path(model), Path(donor), Path(out)
    if out_p.suffix.lower() != ".gguf":
        raise InvalidInputError(f"output {out_p} must end in .gguf")
    for p, what in ((model_p, "MODEL"), (donor_p, "the donor")):
        if _same_file(out_p, p):
            raise InvalidInputError(f"output {out_p} is {what}: choose another name (-o), MODEL is never overwritten")
    if _same_file(model_p, donor_p):
        raise InvalidInputError(f"{model_p} is both MODEL and the donor")
    _check_out_dir(out_p)

    m = _read_header(model_p, "model")
    d = _read_header(donor_p, "donor")
    if m.version != 3:
        raise ModelError(f"{model_p}: GGUF version {m.version} (only version 3 files can be grafted)")
    _check_pair(m, d, replace)

    n_trunk, n_mtp = m.n_trunk, d.n_mtp
    replaced = m.n_mtp
    block_count = n_trunk + n_mtp
    arch = m.arch
    prov = dict(provenance or {})
    mtp = d.mtp_tensors()
    by_type: dict[str, int] = {}
    for t in mtp:
        by_type[_type_name(t.type_id)] = by_type.get(_type_name(t.type_id), 0) + t.nbytes
    types = tuple(sorted(by_type, key=lambda n: -by_type[n]))  # the bulk of the bytes first
    prov.setdefault("mtp_types", "+".join(types))
    prov.setdefault("mtp_layers", str(n_mtp))

    # --- metadata: MODEL's entries byte for byte, the changed ones re-encoded in place ------------
    entries: list[bytes] = []
    has_nextn_key = m.kv(f"{arch}.nextn_predict_layers") is not None
    for kv in m.kvs:
        key = kv.key
        if key.startswith(PROVENANCE_PREFIX):
            continue  # an earlier graft's provenance: replaced below
        if key == f"{arch}.block_count":
            entries.append(_kv_uint32(key, block_count))
        elif key == f"{arch}.nextn_predict_layers":
            entries.append(_kv_uint32(key, n_mtp))
        elif _is_per_layer(kv, m.block_count, d.kv(key), d.block_count):
            entries.append(_per_layer(kv, d.kv(key), n_trunk, d.n_trunk, n_mtp))
        else:
            entries.append(kv.raw)
        if key == f"{arch}.block_count" and not has_nextn_key:
            entries.append(_kv_uint32(f"{arch}.nextn_predict_layers", n_mtp))
    for k, v in sorted(prov.items()):
        entries.append(_kv_string(PROVENANCE_PREFIX + k, str(v)))

    # --- tensors: MODEL's trunk (its MTP layers dropped with --replace), then the donor's block --
    keep = [t for t in m.tensors if t.block is None or t.block < n_trunk]
    names = {t.name for t in keep}
    clash = next((t.name for t in mtp if t.name in names), None)
    if clash:
        raise ModelError(f"{donor_p}: MTP tensor {clash} is also in MODEL's trunk")
    sources = [("model", t) for t in keep] + [("donor", t) for t in mtp]
    align = m.alignment
    infos: list[bytes] = []
    rel = 0
    placed: list[tuple[str, _Tensor, int]] = []
    for src, t in sources:
        infos.append(_tensor_info(t, rel))
        placed.append((src, t, rel))
        rel = _align(rel + t.nbytes, align)
    head = b"GGUF" + struct.pack("<IQQ", 3, len(sources), len(entries)) + b"".join(entries) + b"".join(infos)
    data_start = _align(len(head), align)
    header = head + b"\0" * (data_start - len(head))
    last_end = max((r + t.nbytes for _, t, r in placed), default=0)
    tensors = tuple(PlannedTensor(t.name, src, t.offset, t.nbytes, data_start + r) for src, t, r in placed)
    _check_space(out_p, data_start + last_end)
    return GraftPlan(
        model=model_p,
        donor=donor_p,
        out=out_p,
        arch=arch,
        n_trunk=n_trunk,
        n_mtp=n_mtp,
        replaced=replaced,
        header=header,
        tensors=tensors,
        out_size=data_start + last_end,
        mtp_types=types,
        provenance=prov,
    )


def _check_pair(m: _Header, d: _Header, replace: bool) -> None:
    mp, dp = m.path, d.path
    for h, who in ((m, str(mp)), (d, f"the donor {dp}")):
        parts = h.scalar("split.count")
        if isinstance(parts, int) and parts > 1:
            raise ModelError(f"{who} is one part of a split model ({parts} files): merge it first (llama-gguf-split --merge)")
    if m.arch != d.arch:
        raise ModelError(f"architecture mismatch: {mp} is {m.arch}, the donor {dp} is {d.arch}")
    if not d.n_mtp or not d.mtp_tensors():
        raise ModelError(f"the donor {dp} has no MTP layers ({d.arch}.nextn_predict_layers is {d.n_mtp})")
    if m.n_mtp:
        if not replace:
            raise ModelError(f"{mp} already has {m.n_mtp} MTP layer(s): use `replace` to swap in the donor's", option="replace", path=mp)
    if any(t.block is not None and t.block >= m.block_count for t in m.tensors):
        raise ModelError(f"{mp} has tensors past its {m.block_count} blocks (MTP tensors without nextn_predict_layers?)")
    if m.tokenizer_hash != d.tokenizer_hash:
        raise ModelError(f"tokenizer mismatch: {mp} and the donor {dp} have different token lists or merges")
    if m.n_trunk != d.n_trunk:
        raise ModelError(f"trunk depth mismatch: {mp} has {m.n_trunk} layers, the donor {dp} {d.n_trunk}")
    for suffix, what in _GEOMETRY:
        a, b = m.kv(f"{m.arch}.{suffix}"), d.kv(f"{d.arch}.{suffix}")
        va, vb = _trunk_value(a, m.n_trunk), _trunk_value(b, d.n_trunk)
        if va != vb:
            raise ModelError(f"{what} mismatch: {mp} has {_show(va)}, the donor {dp} {_show(vb)} ({m.arch}.{suffix})")
    # shared tensors the MTP head reads (embeddings, output head) must have the same shape
    ms, ds = {t.name: t.shape for t in m.tensors}, {t.name: t.shape for t in d.tensors}
    for name in ("token_embd.weight", "output_norm.weight", "output.weight"):
        if name in ms and name in ds and ms[name] != ds[name]:
            raise ModelError(f"shape mismatch: {name} is {list(ms[name])} in {mp}, {list(ds[name])} in the donor")


def _trunk_value(kv: _Kv | None, n_trunk: int) -> object:
    """A geometry value to compare; per-layer arrays only over the trunk's layers."""
    if kv is None:
        return None
    if kv.type_id == _ARRAY:
        return kv.value[:n_trunk] if isinstance(kv.value, list) else kv.raw
    return kv.value


def _show(v: object) -> str:
    if isinstance(v, bytes):
        return "another per-layer array"
    return "none" if v is None else str(v)


def _is_per_layer(kv: _Kv, n_blocks: int, donor_kv: _Kv | None, donor_blocks: int) -> bool:
    """A per-layer array (one entry per block, e.g. ``attention.recurrent_layers``): its length
    is the block count in MODEL and, when the donor has the key, in the donor too."""
    if kv.type_id != _ARRAY or kv.array_len != n_blocks or not kv.key.count("."):
        return False
    return donor_kv is None or donor_kv.array_len == donor_blocks


def _per_layer(kv: _Kv, donor_kv: _Kv | None, n_trunk: int, donor_trunk: int, n_mtp: int) -> bytes:
    """A per-layer array of MODEL (length block_count) extended with the donor's MTP entries."""
    if donor_kv is None or donor_kv.type_id != _ARRAY or donor_kv.value is None or kv.value is None:
        raise ModelError(f"cannot extend the per-layer key {kv.key}: the donor has no matching array")
    if donor_kv.array_type != kv.array_type or len(donor_kv.value) != donor_trunk + n_mtp:  # type: ignore[arg-type]
        raise ModelError(f"the donor's per-layer key {kv.key} does not match MODEL's")
    values = list(kv.value)[:n_trunk] + list(donor_kv.value)[donor_trunk:]  # type: ignore[call-overload]
    fmt = _ELEM_FORMATS.get(int(kv.array_type or -1))
    if fmt is None:
        raise ModelError(f"cannot extend the per-layer key {kv.key} (element type {kv.array_type})")
    body = struct.pack("<IQ", kv.array_type, len(values)) + b"".join(struct.pack("<" + fmt, v) for v in values)
    return _key(kv.key) + struct.pack("<I", _ARRAY) + body


_ELEM_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def _key(key: str) -> bytes:
    b = key.encode()
    return struct.pack("<Q", len(b)) + b


def _kv_uint32(key: str, value: int) -> bytes:
    return _key(key) + struct.pack("<II", _UINT32, value)


def _kv_string(key: str, value: str) -> bytes:
    b = value.encode()
    return _key(key) + struct.pack("<IQ", _STRING, len(b)) + b


def _tensor_info(t: _Tensor, rel_offset: int) -> bytes:
    name = t.name.encode()
    return (
        struct.pack("<Q", len(name)) + name + struct.pack("<I", len(t.shape))
        + b"".join(struct.pack("<Q", n) for n in t.shape) + struct.pack("<IQ", t.type_id, rel_offset)
    )


def _align(n: int, a: int) -> int:
    return -(-n // a) * a


def _type_name(type_id: int) -> str:
    from gguf.constants import GGMLQuantizationType

    try:
        return GGMLQuantizationType(type_id).name
    except ValueError:
        return f"type{type_id}"


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _check_out_dir(out: Path) -> None:
    parent = out.parent if str(out.parent) else Path(".")
    if out.is_dir():
        raise InvalidInputError(f"output {out} is a directory")
    if not parent.is_dir():
        raise InvalidInputError(f"output directory {parent} does not exist")
    try:  # a real probe: permissions, read-only mounts, root squash
        tmp = _new_temp(out)
    except OSError as exc:
        raise InvalidInputError(f"cannot write to the output directory {parent}: {exc.strerror or exc}") from None
    tmp.unlink()


def _new_temp(final: Path) -> Path:
    for _ in range(100):
        tmp = final.with_name(f".{final.name}.graft-{os.getpid()}-{os.urandom(4).hex()}.tmp")
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise OSError(errno.EEXIST, "cannot create a temporary file")


def _stale_temps(final: Path) -> None:
    """Remove temp files left by grafts to ``final`` whose process is gone (killed mid-write)."""
    pat = re.compile(rf"^\.{re.escape(final.name)}\.graft-(\d+)-[0-9a-f]{{8}}\.tmp$")
    try:
        names = os.listdir(final.parent if str(final.parent) else ".")
    except OSError:
        return
    for name in names:
        m = pat.match(name)
        if not m:
            continue
        pid = int(m.group(1))
        try:
            os.kill(pid, 0)
            continue  # still running (or not ours to judge)
        except ProcessLookupError:
            pass
        except OSError:
            continue
        try:
            final.with_name(name).unlink()
        except OSError:
            pass


# ----------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------
def write_graft(plan: GraftPlan, *, progress: ProgressFn | None = None) -> Path:
    """Write OUT as planned: temp file, streamed copies, verification, then rename."""
    notify = progress or (lambda done, total: None)
    out = plan.out
    _stale_temps(out)
    _check_space(out, plan.out_size)
    try:
        tmp = _new_temp(out)
    except OSError as exc:
        raise InvalidInputError(f"cannot write to {out.parent}: {exc.strerror or exc}") from None
    try:
        with open(plan.model, "rb") as fm, open(plan.donor, "rb") as fd, open(tmp, "wb", buffering=0) as fo:
            _write_all(fo, plan.header)
            total = plan.out_size
            pos = len(plan.header)
            last = [0.0]

            def tick(n: int) -> None:
                nonlocal pos
                pos += n
                now = time.monotonic()
                if now - last[0] > 0.1:
                    notify(pos, total)
                    last[0] = now

            for t in plan.tensors:
                if t.out_offset > pos:
                    _write_all(fo, b"\0" * (t.out_offset - pos))
                    tick(t.out_offset - pos)
                _copy(fm if t.source == "model" else fd, fo, t.src_offset, t.nbytes, tick)
            os.fsync(fo.fileno())
            notify(total, total)
        _verify(plan, tmp)
        os.replace(tmp, out)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise MtprunError(f"disk full while writing {out} ({exc.strerror}); nothing was written") from None
        raise
    finally:
        if tmp.exists():
            try:
                tmp.unlink()
            except OSError:
                pass
    return out


def _write_all(fo, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = fo.write(view)
        if not n:
            raise OSError(errno.ENOSPC, "No space left on device")
        view = view[n:]


def _copy(src, dst, offset: int, nbytes: int, tick: Callable[[int], None]) -> None:
    """Copy ``nbytes`` of ``src`` from ``offset`` to ``dst``'s current position, in bounded chunks."""
    left = nbytes
    in_fd, out_fd = src.fileno(), dst.fileno()
    pos = offset
    use_kernel = hasattr(os, "copy_file_range")
    while left > 0:
        n = min(left, _COPY_CHUNK)
        got = 0
        if use_kernel:
            try:
                got = os.copy_file_range(in_fd, out_fd, n, pos)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                    raise
                use_kernel = False
                got = 0
        if not use_kernel:
            data = os.pread(in_fd, n, pos)
            if data:
                _write_all(dst, data)
            got = len(data)
        if got <= 0:
            raise ModelError(f"{src.name}: file ended early (truncated while grafting?)")
        pos += got
        left -= got
        tick(got)


def _verify(plan: GraftPlan, tmp: Path) -> None:
    from .gguf_info import read_gguf_info

    size = tmp.stat().st_size
    if size != plan.out_size:
        raise ModelError(f"graft verification failed: wrote {size} bytes, expected {plan.out_size}")
    info = read_gguf_info(tmp)
    if info.tensor_count != len(plan.tensors):
        raise ModelError(f"graft verification failed: {info.tensor_count} tensors, expected {len(plan.tensors)}")
    if info.block_count != plan.n_trunk + plan.n_mtp or info.nextn_predict_layers != plan.n_mtp:
        raise ModelError("graft verification failed: the block count or MTP layer count did not come out right")
    if info.nextn_tensor_count == 0 and plan.arch.startswith("qwen3"):
        raise ModelError("graft verification failed: no nextn tensors in the output")


def _check_space(out: Path, need: int) -> None:
    try:
        free = shutil.disk_usage(out.parent if str(out.parent) else Path(".")).free
    except OSError:
        return
    if free < need:
        raise MtprunError(f"not enough disk space for {out}: needs {need / 1e6:.1f} MB, {free / 1e6:.1f} MB free")


def graft_provenance(info) -> dict[str, object] | None:
    """The ``mtprun.graft.*`` keys of a file's header (a ``GgufInfo``): where its MTP layers
    came from, or None if mtprun did not graft them."""
    keys = {k[len(PROVENANCE_PREFIX):]: v for k, v in info.scalars.items() if k.startswith(PROVENANCE_PREFIX)}
    return keys or None


def describe_provenance(keys: Mapping[str, object]) -> str:
    """``repo/file @ commit, types`` for display."""
    where = "/".join(str(keys[k]) for k in ("mtp_repo", "mtp_file") if k in keys) or "a donor file"
    if "mtp_commit" in keys:
        where += f" @ {str(keys['mtp_commit'])[:12]}"
    if "mtp_types" in keys:
        where += f", {keys['mtp_types']}"
    return where


# ----------------------------------------------------------------------------------------------
# a helper for tests and for making a no-MTP file: drop the MTP block, optionally quantize
# ----------------------------------------------------------------------------------------------
def strip_mtp(src: str | os.PathLike[str], out: str | os.PathLike[str], *, quantize: str | None = None) -> Path:
    """Write ``src`` without its MTP layers to ``out`` (``quantize="q8_0"``: 2-D weights whose
    rows are a multiple of 32 become Q8_0, as llama-quantize would store them). Holds the model
    in memory: meant for test-sized files."""
    import gguf

    h = _read_header(Path(src), "model")
    if not h.n_mtp:
        raise ModelError(f"{src} has no MTP layers to strip")
    if quantize not in (None, "q8_0"):
        raise InvalidInputError(f"unsupported quantization {quantize!r} (only q8_0)")
    reader = gguf.GGUFReader(src)
    n_trunk = h.n_trunk
    w = gguf.GGUFWriter(out, h.arch)
    try:
        for f in reader.fields.values():
            if f.name.startswith("GGUF.") or f.name in ("general.architecture", f"{h.arch}.nextn_predict_layers"):
                continue
            vtype = f.types[0]
            value = f.contents()
            if f.name == f"{h.arch}.block_count":
                value = n_trunk
            elif f.name == "general.file_type" and quantize:
                value = gguf.LlamaFileType.MOSTLY_Q8_0.value
            elif vtype == gguf.GGUFValueType.ARRAY and f.name.startswith(f"{h.arch}.") and len(f.data) == h.block_count:
                value = value[:n_trunk]
            sub = f.types[1] if vtype == gguf.GGUFValueType.ARRAY and len(f.types) > 1 else None
            w.add_key_value(f.name, value, vtype, sub_type=sub)
        for t in reader.tensors:
            m = _BLOCK.match(t.name)
            if m and int(m.group(1)) >= n_trunk:
                continue
            data = np.array(t.data)
            ttype = gguf.GGMLQuantizationType(int(t.tensor_type))
            if (
                quantize == "q8_0" and ttype in (gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.F32)
                and data.ndim == 2 and data.shape[-1] % 32 == 0 and t.name.endswith(".weight")
                and not t.name.endswith("_norm.weight") and ".ssm_conv1d." not in t.name
            ):
                q = gguf.quants.quantize(data.astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
                w.add_tensor(t.name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            elif ttype in (gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.F32):
                w.add_tensor(t.name, data)
            else:
                w.add_tensor(t.name, data, raw_shape=tuple(reversed([int(x) for x in t.shape])), raw_dtype=ttype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()
        del reader
    return Path(out)
