"""Rewrite the metadata of a (small) GGUF file: set, retype or delete keys, keep the tensors.

Used by the hostile-input tests and ``scripts/fuzz_hostile.py`` to make files whose header parses
but says something impossible (``block_count`` 0, a string where a number belongs, ...). The
key/value section is re-serialised; tensor infos and tensor data are copied byte for byte (tensor
offsets are relative to the data section, which is re-aligned). Little-endian files only.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from gguf import GGUFReader
from gguf.constants import GGUFValueType

__all__ = ["GGUFValueType", "read_fields", "rewrite_metadata", "encode_kv", "hostile_variants"]

_FMT = {
    GGUFValueType.UINT8: "B", GGUFValueType.INT8: "b", GGUFValueType.UINT16: "H", GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I", GGUFValueType.INT32: "i", GGUFValueType.FLOAT32: "f", GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "Q", GGUFValueType.INT64: "q", GGUFValueType.FLOAT64: "d",
}

Typed = tuple[GGUFValueType, Any]  # (type, value); for arrays: (ARRAY, (element type, [values]))


def _string(s: str | bytes) -> bytes:
    b = s.encode("utf-8") if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def _value(vtype: GGUFValueType, value: Any) -> bytes:
    if vtype == GGUFValueType.STRING:
        return _string(value)
    if vtype == GGUFValueType.ARRAY:
        etype, items = value
        out = [struct.pack("<IQ", int(etype), len(items))]
        out += [_value(etype, v) for v in items]
        return b"".join(out)
    return struct.pack("<" + _FMT[vtype], value)


def encode_kv(key: str, vtype: GGUFValueType, value: Any) -> bytes:
    """One serialised key/value pair."""
    return _string(key) + struct.pack("<I", int(vtype)) + _value(vtype, value)


def read_fields(path: str | os.PathLike[str]) -> dict[str, Typed]:
    """Every metadata key of a GGUF file with its type and value (arrays: element type and items)."""
    r = GGUFReader(path)
    out: dict[str, Typed] = {}
    for name, f in r.fields.items():
        if name.startswith("GGUF."):
            continue
        t = f.types[0]
        if t == GGUFValueType.ARRAY:
            et = f.types[-1]
            if et == GGUFValueType.STRING:
                items = [bytes(f.parts[i]).decode("utf-8", "replace") for i in f.data]
            else:
                items = [f.parts[i].tolist()[0] for i in f.data]
            out[name] = (t, (et, items))
        elif t == GGUFValueType.STRING:
            out[name] = (t, bytes(f.parts[f.data[0]]).decode("utf-8", "replace"))
        else:
            out[name] = (t, f.parts[f.data[0]].tolist()[0])
    return out


def rewrite_metadata(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], *,
    set: Mapping[str, Typed] | None = None, delete: Sequence[str] = (), raw_kv: Sequence[bytes] = (),
    sparse: bool = False,
) -> Path:
    """Copy ``src`` to ``dst`` with keys in ``set`` replaced (or added) and keys in ``delete`` removed;
    ``raw_kv`` appends already serialised pairs (for malformed values). ``sparse``: leave the
    tensor data a hole of zeros (enough for header checks, fast; not for loading)."""
    set = dict(set or {})
    layout = _layout(os.fspath(src), os.stat(src).st_mtime_ns)
    data = layout.data
    kvs: list[bytes] = []
    for name, offset, size in layout.fields:
        if name in delete:
            continue
        if name in set:
            kvs.append(encode_kv(name, *set.pop(name)))
        else:
            kvs.append(data[offset : offset + size])
    for name, typed in set.items():
        kvs.append(encode_kv(name, *typed))
    kvs.extend(raw_kv)
    tensor_infos, align, n_tensors = data[layout.kv_end : layout.ti_end], layout.align, layout.n_tensors
    header = b"GGUF" + struct.pack("<IQQ", 3, n_tensors, len(kvs)) + b"".join(kvs) + tensor_infos
    pad = (-len(header)) % align
    out = Path(dst)
    if sparse:
        with open(out, "wb") as f:
            f.write(header + b"\0" * pad)
            f.truncate(len(header) + pad + len(data) - layout.data_offset)
    else:
        out.write_bytes(header + b"\0" * pad + data[layout.data_offset:])
    return out


@dataclass(frozen=True)
class _Layout:
    data: bytes
    fields: list[tuple[str, int, int]]  # (key, offset, size) of every key/value pair
    kv_end: int
    ti_end: int
    data_offset: int
    align: int
    n_tensors: int


@lru_cache(maxsize=8)
def _layout(path: str, mtime_ns: int) -> _Layout:
    r = GGUFReader(path)
    fields, kv_end = [], 24
    for name, f in r.fields.items():
        size = sum(p.nbytes for p in f.parts)
        kv_end = max(kv_end, f.offset + size)
        if not name.startswith("GGUF."):
            fields.append((name, f.offset, size))
    ti_end = kv_end
    for t in r.tensors:
        ti_end = max(ti_end, t.field.offset + sum(p.nbytes for p in t.field.parts))
    align = 32
    af = r.fields.get("general.alignment")
    if af is not None:
        align = int(af.parts[af.data[0]][0]) or 32
    return _Layout(Path(path).read_bytes(), fields, kv_end, ti_end, r.data_offset, align, len(r.tensors))


HUGE = (1 << 32) - 1


def hostile_variants(typed: Typed) -> list[tuple[str, Typed]]:
    """Impossible-but-parseable replacements of one value: 0, 1, huge, negative, wrong type;
    arrays emptied, shortened, lengthened, zeroed and retyped. (name, (type, value)) pairs."""
    vtype, value = typed
    if vtype == GGUFValueType.ARRAY:
        etype, items = value
        out = [("empty", (GGUFValueType.ARRAY, (etype, []))), ("one", (GGUFValueType.ARRAY, (etype, items[:1])))]
        if items:
            out.append(("short", (GGUFValueType.ARRAY, (etype, items[:-1]))))
            out.append(("long", (GGUFValueType.ARRAY, (etype, items + items[-1:] * 3))))
        if etype in (GGUFValueType.INT32, GGUFValueType.UINT32):
            out += [("zeros", (GGUFValueType.ARRAY, (etype, [0] * len(items)))),
                    ("huge", (GGUFValueType.ARRAY, (GGUFValueType.INT32, [2**31 - 1] * len(items)))),
                    ("neg", (GGUFValueType.ARRAY, (GGUFValueType.INT32, [-1] * len(items))))]
        out.append(("strings", (GGUFValueType.ARRAY, (GGUFValueType.STRING, ["x"] * max(1, len(items))))))
        out.append(("scalar", (GGUFValueType.UINT32, 1)))
        return out
    if vtype == GGUFValueType.STRING:
        return [("empty", (GGUFValueType.STRING, "")), ("bert", (GGUFValueType.STRING, "bert")), ("int", (GGUFValueType.UINT32, 1))]
    if vtype == GGUFValueType.BOOL:
        return [("int", (GGUFValueType.UINT32, 7)), ("string", (GGUFValueType.STRING, "yes"))]
    if vtype in (GGUFValueType.FLOAT32, GGUFValueType.FLOAT64):
        return [("0", (vtype, 0.0)), ("neg", (vtype, -1.0)), ("nan", (vtype, float("nan"))),
                ("inf", (vtype, float("inf"))), ("huge", (vtype, 3e38)), ("string", (GGUFValueType.STRING, "x"))]
    return [("0", (vtype, 0)), ("1", (vtype, 1)), ("7", (vtype, 7)), ("1000", (vtype, 1000)),
            ("huge", (GGUFValueType.UINT32, HUGE)), ("2^31", (GGUFValueType.UINT32, 1 << 31)), ("u64", (GGUFValueType.UINT64, 1 << 40)),
            ("neg", (GGUFValueType.INT32, -1)), ("float", (GGUFValueType.FLOAT32, 1.5)), ("string", (GGUFValueType.STRING, "x"))]
