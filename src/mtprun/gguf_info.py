"""A small, bounded reader of GGUF metadata (no tensor data, no ggml).

``read_gguf_info(path)`` answers what the CLI and the Hub resolver need to know about a model file:
architecture, name, quantization, size, context length, layer counts, whether MTP layers are
embedded (``<arch>.nextn_predict_layers`` > 0 and/or ``blk.N.nextn.*`` tensors), whether the file
is an MTP drafter (``gemma4-assistant`` or an ``mtp-`` sidecar), and the fields that pair a
drafter with its target.

GGUF headers come from the network and are untrusted, so this parser walks the header itself,
through a read-only memory map, with explicit bounds: every length is checked against the bytes
that are left, strings kept for display are cut to ``MAX_TEXT`` characters, arrays are skipped
without being materialised, nesting is limited, and odd value types are tolerated. The ``gguf``
package supplies the format's constants (value types, tensor block sizes, file type names).
``gguf.GGUFReader`` is not used: it materialises every array (a 250k-entry vocabulary costs
seconds) and loops over counts taken from the file without bounding them.

Every problem with the file is a :class:`~mtprun.errors.ModelError` with a one-line message.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from collections.abc import Mapping

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType, LlamaFileType

from .errors import ModelError

__all__ = ["GgufInfo", "read_gguf_info", "header_length", "MAX_TEXT"]

MAX_TEXT = 256  # characters kept of any string value (names, architecture, ...)
MAX_KEY = 65535  # bytes; the GGUF spec's bound for key names
MAX_TENSOR_NAME = 4096  # bytes; ggml itself allows 64
MAX_DIMS = 8  # ggml uses 4
MAX_ARRAY_DEPTH = 3
MAX_SMALL_ARRAY = 4096  # elements: numeric arrays up to this long are kept (per-layer values)
DRAFTER_ARCHS = frozenset({"gemma4-assistant"})
_NEXTN_TENSOR = re.compile(r"^blk\.\d+\.nextn\.")
_MAGIC = b"GGUF"

_SCALAR_FORMATS = {
    GGUFValueType.UINT8: "B",
    GGUFValueType.INT8: "b",
    GGUFValueType.UINT16: "H",
    GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I",
    GGUFValueType.INT32: "i",
    GGUFValueType.FLOAT32: "f",
    GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "Q",
    GGUFValueType.INT64: "q",
    GGUFValueType.FLOAT64: "d",
}

Scalar = int | float | bool | str


@dataclass(frozen=True)
class GgufInfo:
    """What a GGUF file's header says about the model. Fields are None when the file does not say."""

    path: Path
    file_size: int
    version: int
    tensor_count: int
    kv_count: int
    architecture: str | None
    name: str | None
    basename: str | None
    size_label: str | None
    file_type: int | None  # general.file_type (llama_ftype)
    file_type_name: str | None  # e.g. "Q4_K_M", "BF16"
    parameter_count: int | None  # sum of tensor elements in this file
    context_length: int | None
    embedding_length: int | None
    embedding_length_out: int | None
    block_count: int | None
    nextn_predict_layers: int | None
    nextn_tensor_count: int
    has_chat_template: bool
    tokenizer_model: str | None
    vocab_size: int | None
    split_count: int | None
    split_index: int | None  # 0-based, as stored in split.no
    target_hidden_size: int | None  # eagle3/dflash drafters: hidden size of the target
    scalars: Mapping[str, Scalar] = field(default_factory=dict, repr=False)
    arrays: Mapping[str, tuple[str, int]] = field(default_factory=dict, repr=False)
    # numeric arrays of at most MAX_SMALL_ARRAY elements (per-layer hyperparameters), read whole
    small_arrays: Mapping[str, tuple[int | float | bool, ...]] = field(default_factory=dict, repr=False)
    # bytes of tensor data per tensor name (None: a type whose size is unknown)
    tensor_bytes: Mapping[str, int | None] = field(default_factory=dict, repr=False)

    @property
    def has_embedded_mtp(self) -> bool:
        """The file carries its own MTP (NextN) layers, so it needs no sidecar."""
        return bool(self.nextn_predict_layers) or self.nextn_tensor_count > 0

    @property
    def is_mtp_drafter(self) -> bool:
        """The file is an MTP drafter (a sidecar), not a model to run on its own."""
        return self.architecture in DRAFTER_ARCHS or "mtp-" in self.path.name

    @property
    def target_embedding_length(self) -> int | None:
        """For a drafter: the hidden size its target model must have."""
        if self.architecture in DRAFTER_ARCHS:
            return self.embedding_length_out
        return self.target_hidden_size

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready summary (not the raw key/value table)."""
        return {
            "path": str(self.path),
            "file_size": self.file_size,
            "gguf_version": self.version,
            "architecture": self.architecture,
            "name": self.name,
            "size_label": self.size_label,
            "file_type": self.file_type_name,
            "parameter_count": self.parameter_count,
            "context_length": self.context_length,
            "embedding_length": self.embedding_length,
            "block_count": self.block_count,
            "nextn_predict_layers": self.nextn_predict_layers,
            "nextn_tensor_count": self.nextn_tensor_count,
            "has_embedded_mtp": self.has_embedded_mtp,
            "is_mtp_drafter": self.is_mtp_drafter,
            "target_embedding_length": self.target_embedding_length,
            "vocab_size": self.vocab_size,
            "tokenizer_model": self.tokenizer_model,
            "has_chat_template": self.has_chat_template,
            "split_count": self.split_count,
            "tensor_count": self.tensor_count,
        }


def read_gguf_info(path: str | os.PathLike[str]) -> GgufInfo:
    """Read the header of a GGUF file; raises ModelError if it is missing, not GGUF, or truncated."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 24:
                head = f.read(4)
                if head != _MAGIC[: len(head)] or not head:
                    raise ModelError(f"{p}: not a GGUF file")
                raise ModelError(f"{p}: truncated GGUF file ({size} bytes)")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                return _Parser(p, mm, size).parse()
    except ModelError:
        raise
    except IsADirectoryError:
        raise ModelError(f"{p}: is a directory, not a GGUF file") from None
    except FileNotFoundError:
        raise ModelError(f"{p}: no such file") from None
    except OSError as exc:
        raise ModelError(f"cannot read {p}: {exc.strerror or exc}") from None


class _Truncated(Exception):
    pass


class _Corrupt(Exception):
    pass


class _Parser:
    def __init__(self, path: Path, buf: mmap.mmap, size: int) -> None:
        self.path = path
        self.buf = buf
        self.size = size
        self.pos = 0
        self.endian = "<"
        self.small: tuple | None = None  # the last small numeric array read by _value

    # --- primitives ------------------------------------------------------------------------------
    def _take(self, n: int) -> bytes:
        end = self.pos + n
        if n < 0 or end > self.size:
            raise _Truncated
        data = self.buf[self.pos : end]
        self.pos = end
        return data

    def _skip(self, n: int) -> None:
        if n < 0 or self.pos + n > self.size:
            raise _Truncated
        self.pos += n

    def _u32(self) -> int:
        return struct.unpack(self.endian + "I", self._take(4))[0]

    def _u64(self) -> int:
        return struct.unpack(self.endian + "Q", self._take(8))[0]

    def _string(self, limit: int, what: str) -> str:
        n = self._u64()
        if n > self.size - self.pos:
            raise _Truncated
        if n > limit:
            raise _Corrupt(f"{what} of {n} bytes at offset {self.pos - 8}")
        return self._take(n).decode("utf-8", errors="replace")

    def _text(self) -> str:
        """A string value: validated in full, kept up to MAX_TEXT characters."""
        n = self._u64()
        if n > self.size - self.pos:
            raise _Truncated
        keep = self.buf[self.pos : self.pos + min(n, MAX_TEXT * 4)].decode("utf-8", errors="replace")
        self.pos += n
        return keep[:MAX_TEXT]

    def _value(self, vtype: int, depth: int = 0) -> Scalar | tuple[str, int] | None:
        """Read one value; arrays are skipped and reported as (element type name, count)."""
        fmt = _SCALAR_FORMATS.get(vtype)  # type: ignore[call-overload]
        if fmt is not None:
            return struct.unpack(self.endian + fmt, self._take(struct.calcsize(fmt)))[0]
        if vtype == GGUFValueType.STRING:
            return self._text()
        if vtype == GGUFValueType.ARRAY:
            if depth >= MAX_ARRAY_DEPTH:
                raise _Corrupt("arrays nested too deep")
            etype = self._u32()
            count = self._u64()
            fmt = _SCALAR_FORMATS.get(etype)  # type: ignore[call-overload]
            if depth == 0 and fmt is not None and count <= MAX_SMALL_ARRAY:
                n = count * struct.calcsize(fmt)
                self.small = tuple(struct.unpack(self.endian + fmt * count, self._take(n)))
            else:
                self._skip_array(etype, count, depth)
            return (_type_name(etype), count)
        raise _Corrupt(f"unknown value type {vtype}")

    def _skip_array(self, etype: int, count: int, depth: int) -> None:
        fmt = _SCALAR_FORMATS.get(etype)  # type: ignore[call-overload]
        if fmt is not None:
            self._skip(count * struct.calcsize(fmt))
            return
        if etype == GGUFValueType.STRING:
            if count * 8 > self.size - self.pos:  # every string has at least its 8-byte length
                raise _Truncated
            buf, end, pos = self.buf, self.size, self.pos
            unpack = struct.Struct(self.endian + "Q").unpack_from
            for _ in range(count):
                if pos + 8 > end:
                    raise _Truncated
                pos += 8 + unpack(buf, pos)[0]
                if pos > end:
                    raise _Truncated
            self.pos = pos
            return
        if etype == GGUFValueType.ARRAY:
            if count * 12 > self.size - self.pos:
                raise _Truncated
            for _ in range(count):
                self._value(GGUFValueType.ARRAY, depth + 1)
            return
        raise _Corrupt(f"unknown array element type {etype}")

    # --- the file --------------------------------------------------------------------------------
    def parse(self) -> GgufInfo:
        try:
            return self._parse()
        except _Truncated:
            raise ModelError(f"{self.path}: truncated or corrupt GGUF file (header runs past the end)") from None
        except _Corrupt as exc:
            raise ModelError(f"{self.path}: corrupt GGUF header ({exc})") from None

    def _parse(self) -> GgufInfo:
        if self._take(4) != _MAGIC:
            raise ModelError(f"{self.path}: not a GGUF file")
        version = struct.unpack("<I", self._take(4))[0]
        if version & 0xFFFF == 0 and version != 0:  # written big-endian
            self.endian = ">"
            version = struct.unpack(">I", struct.pack("<I", version))[0]
        if version not in (2, 3):
            raise ModelError(f"{self.path}: unsupported GGUF version {version}")
        n_tensors = self._u64()
        n_kv = self._u64()
        # every KV needs at least 12 bytes, every tensor info at least 24: bound the loops by the file
        if n_kv * 12 > self.size or n_tensors * 24 > self.size:
            raise _Truncated

        scalars: dict[str, Scalar] = {}
        arrays: dict[str, tuple[str, int]] = {}
        small_arrays: dict[str, tuple] = {}
        for _ in range(n_kv):
            key = self._string(MAX_KEY, "key")
            vtype = self._u32()
            self.small = None
            value = self._value(vtype)
            if isinstance(value, tuple):
                arrays[key] = value
                if self.small is not None and not key.startswith("tokenizer."):
                    small_arrays[key] = self.small
            elif value is not None:
                scalars[key] = value

        tensor_bytes: dict[str, int | None] = {}
        n_params = 0
        nextn = 0
        data_end = 0  # bytes of tensor data the header promises
        sizes_known = True
        for _ in range(n_tensors):
            name = self._string(MAX_TENSOR_NAME, "tensor name")
            n_dims = self._u32()
            if n_dims > MAX_DIMS:
                raise _Corrupt(f"tensor {name[:64]!r} has {n_dims} dimensions")
            n_elem = 1
            for _ in range(n_dims):
                n_elem *= self._u64()
            ttype = self._u32()
            offset = self._u64()
            n_params += n_elem
            if _NEXTN_TENSOR.match(name):
                nextn += 1
            nbytes = _tensor_bytes(ttype, n_elem)
            tensor_bytes[name] = nbytes
            if nbytes is None:
                sizes_known = False
            else:
                data_end = max(data_end, offset + nbytes)

        alignment = _int(scalars.get("general.alignment")) or 32
        if alignment <= 0 or alignment & (alignment - 1):
            alignment = 32
        data_start = -(-self.pos // alignment) * alignment
        if n_tensors and sizes_known and data_start + data_end > self.size:
            raise ModelError(
                f"{self.path}: truncated GGUF file ({self.size} bytes, its tensors need {data_start + data_end})"
            )

        arch = _str(scalars.get("general.architecture"))

        def arch_int(suffix: str) -> int | None:
            return _int(scalars.get(f"{arch}.{suffix}")) if arch else None

        ftype = _int(scalars.get("general.file_type"))
        tokens = arrays.get("tokenizer.ggml.tokens")
        split_count = _int(scalars.get("split.count"))
        return GgufInfo(
            path=self.path,
            file_size=self.size,
            version=version,
            tensor_count=n_tensors,
            kv_count=n_kv,
            architecture=arch,
            name=_str(scalars.get("general.name")),
            basename=_str(scalars.get("general.basename")),
            size_label=_str(scalars.get("general.size_label")),
            file_type=ftype,
            file_type_name=_ftype_name(ftype),
            parameter_count=n_params if n_tensors else None,
            context_length=arch_int("context_length"),
            embedding_length=arch_int("embedding_length"),
            embedding_length_out=arch_int("embedding_length_out"),
            block_count=arch_int("block_count"),
            nextn_predict_layers=arch_int("nextn_predict_layers"),
            nextn_tensor_count=nextn,
            has_chat_template="tokenizer.chat_template" in scalars
            or any(k.startswith("tokenizer.chat_template.") for k in scalars),
            tokenizer_model=_str(scalars.get("tokenizer.ggml.model")),
            vocab_size=arch_int("vocab_size") or (tokens[1] if tokens else None),
            split_count=split_count,
            split_index=_int(scalars.get("split.no")) if split_count else None,
            target_hidden_size=arch_int("target_hidden_size"),
            scalars=MappingProxyType(scalars),
            arrays=MappingProxyType(arrays),
            small_arrays=MappingProxyType(small_arrays),
            tensor_bytes=MappingProxyType(tensor_bytes),
        )


def _type_name(vtype: int) -> str:
    try:
        return GGUFValueType(vtype).name.lower()
    except ValueError:
        return f"type{vtype}"


def _tensor_bytes(ttype: int, n_elem: int) -> int | None:
    try:
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
    except (ValueError, KeyError):
        return None
    return n_elem // block * type_size


def _ftype_name(ftype: int | None) -> str | None:
    if ftype is None:
        return None
    try:
        name = LlamaFileType(ftype).name
    except ValueError:
        return f"type {ftype}"
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")


def _int(value: object) -> int | None:
    """An integer-valued field; other types (a string where a number belongs) count as absent."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def header_length(data: bytes | memoryview) -> int | None:
    """Bytes of the GGUF header at the start of ``data`` (up to the aligned start of the tensor
    data), or None when ``data`` holds only part of it. Used to read a remote file's header with
    ranged requests: fetch a prefix, ask, fetch more. Raises ModelError if it is not GGUF."""
    p = _Parser(Path("<header>"), data, len(data))  # type: ignore[arg-type]
    try:
        if p._take(4) != _MAGIC:
            raise ModelError("not a GGUF file")
        version = struct.unpack("<I", p._take(4))[0]
        if version & 0xFFFF == 0 and version != 0:
            p.endian = ">"
            version = struct.unpack(">I", struct.pack("<I", version))[0]
        if version not in (2, 3):
            raise ModelError(f"unsupported GGUF version {version}")
        n_tensors, n_kv = p._u64(), p._u64()
        alignment = 32
        for _ in range(n_kv):
            key = p._string(MAX_KEY, "key")
            value = p._value(p._u32())
            if key == "general.alignment" and _int(value):
                alignment = int(value)  # type: ignore[arg-type]
        for _ in range(n_tensors):
            p._string(MAX_TENSOR_NAME, "tensor name")
            n_dims = p._u32()
            if n_dims > MAX_DIMS:
                raise _Corrupt(f"a tensor has {n_dims} dimensions")
            p._skip(8 * n_dims + 4 + 8)
    except _Truncated:
        return None
    except _Corrupt as exc:
        raise ModelError(f"corrupt GGUF header ({exc})") from None
    if alignment <= 0 or alignment & (alignment - 1):
        alignment = 32
    return -(-p.pos // alignment) * alignment
