"""The GGUF metadata probe: reads what gguf's writer writes, and refuses broken or hostile headers."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import gguf
import numpy as np
import pytest

from hub_fixtures import drafter_gguf, make_gguf, qwen_mtp_gguf
from mtprun.errors import ModelError
from mtprun.gguf_info import MAX_TEXT, read_gguf_info


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def _gguf(tmp_path: Path, name: str = "m.gguf", *, arch: str = "llama", build=None, endian=gguf.GGUFEndian.LITTLE) -> Path:
    p = tmp_path / name
    w = gguf.GGUFWriter(str(p), arch, endianess=endian)
    if build:
        build(w)
    w.add_tensor("token_embd.weight", np.ones((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return p


def _header(kvs: list[bytes], n_tensors: int = 0, version: int = 3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, len(kvs)) + b"".join(kvs)


def _kv_string(key: str, value_len: int, value: bytes = b"") -> bytes:
    k = key.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<IQ", gguf.GGUFValueType.STRING, value_len) + value


def test_reads_model_fields_written_by_the_gguf_package(tmp_path: Path) -> None:
    p = _write(tmp_path, "gemma-Q8_0.gguf", make_gguf("gemma4", name="Tiny Gemma"))
    info = read_gguf_info(p)
    assert info.architecture == "gemma4"
    assert info.name == "Tiny Gemma"
    assert info.file_type_name == "Q8_0"
    assert info.context_length == 4096
    assert info.embedding_length == 8
    assert info.block_count == 2
    assert info.vocab_size == 32
    assert info.tokenizer_model == "gpt2"
    assert info.has_chat_template
    assert info.parameter_count == 32 * 8 + 8
    assert info.tensor_count == 2
    assert not info.has_embedded_mtp
    assert not info.is_mtp_drafter


def test_embedded_mtp_is_seen_from_nextn_layers_and_nextn_tensors(tmp_path: Path) -> None:
    info = read_gguf_info(_write(tmp_path, "qwen.gguf", qwen_mtp_gguf("q")))
    assert info.nextn_predict_layers == 1
    assert info.nextn_tensor_count == 1
    assert info.has_embedded_mtp

    # tensors alone (a part of a split model without the key) also count
    def only_tensor(w: gguf.GGUFWriter) -> None:
        w.add_tensor("blk.3.nextn.enorm.weight", np.ones(8, dtype=np.float32))

    info = read_gguf_info(_gguf(tmp_path, "part.gguf", arch="qwen35", build=only_tensor))
    assert info.nextn_predict_layers is None and info.nextn_tensor_count == 1 and info.has_embedded_mtp


def test_gemma4_assistant_is_a_drafter_and_reports_its_target_width(tmp_path: Path) -> None:
    info = read_gguf_info(_write(tmp_path, "assistant.gguf", drafter_gguf("d")))
    assert info.architecture == "gemma4-assistant"
    assert info.is_mtp_drafter
    assert info.target_embedding_length == 8


def test_a_file_named_mtp_dash_is_a_drafter_whatever_its_architecture(tmp_path: Path) -> None:
    assert read_gguf_info(_write(tmp_path, "mtp-x-Q8_0.gguf", make_gguf("qwen35", name="m"))).is_mtp_drafter


def test_split_fields_are_reported(tmp_path: Path) -> None:
    info = read_gguf_info(_write(tmp_path, "s.gguf", make_gguf("qwen35", name="s", split=(1, 3))))
    assert (info.split_index, info.split_count) == (1, 3)


def test_big_endian_files_are_read(tmp_path: Path) -> None:
    p = _gguf(tmp_path, arch="llama", build=lambda w: w.add_context_length(2048), endian=gguf.GGUFEndian.BIG)
    info = read_gguf_info(p)
    assert info.architecture == "llama" and info.context_length == 2048


def test_long_strings_are_cut_for_display(tmp_path: Path) -> None:
    info = read_gguf_info(_gguf(tmp_path, build=lambda w: w.add_name("x" * 100_000)))
    assert info.name == "x" * MAX_TEXT


def test_values_of_the_wrong_type_count_as_absent(tmp_path: Path) -> None:
    def odd(w: gguf.GGUFWriter) -> None:
        w.add_string("llama.context_length", "lots")
        w.add_float32("general.file_type", 7.0)
        w.add_uint32("general.name", 5)

    info = read_gguf_info(_gguf(tmp_path, build=odd))
    assert info.context_length is None and info.file_type is None and info.name is None


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "not a GGUF file"),
        (b"hello, this is not a model at all, just text\n", "not a GGUF file"),
        (b"GGUF" + struct.pack("<IQQ", 1, 0, 0), "unsupported GGUF version 1"),
        (b"GGUF\x03\x00", "truncated"),
    ],
)
def test_files_that_are_not_gguf_are_model_errors(tmp_path: Path, data: bytes, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        read_gguf_info(_write(tmp_path, "bad.gguf", data))


def test_a_truncated_download_is_a_model_error_not_a_model(tmp_path: Path) -> None:
    full = make_gguf("gemma4", name="whole")
    for cut in (30, len(full) // 2, len(full) - 1):  # in the header, in the KVs, in the tensor data
        with pytest.raises(ModelError, match="truncated"):
            read_gguf_info(_write(tmp_path, f"cut{cut}.gguf", full[:cut]))


def test_a_huge_string_length_is_refused_without_reading_it(tmp_path: Path) -> None:
    data = _header([_kv_string("general.name", 1 << 60, b"abc")])
    with pytest.raises(ModelError, match="truncated or corrupt"):
        read_gguf_info(_write(tmp_path, "huge.gguf", data))
    key = b"k" * 70_000  # longer than any GGUF key may be
    data = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key + struct.pack("<IB", 0, 1)
    with pytest.raises(ModelError, match="corrupt GGUF header"):
        read_gguf_info(_write(tmp_path, "key.gguf", data))


def test_huge_counts_fail_fast_instead_of_looping(tmp_path: Path) -> None:
    k = b"tokenizer.ggml.tokens"
    array = struct.pack("<Q", len(k)) + k + struct.pack("<IIQ", gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING, 1 << 62)
    start = time.perf_counter()
    for data in (_header([array]), b"GGUF" + struct.pack("<IQQ", 3, 1 << 62, 1 << 62)):
        with pytest.raises(ModelError):
            read_gguf_info(_write(tmp_path, "count.gguf", data))
    assert time.perf_counter() - start < 1.0


def test_unknown_value_types_are_model_errors(tmp_path: Path) -> None:
    k = b"general.odd"
    data = _header([struct.pack("<Q", len(k)) + k + struct.pack("<I", 99) + b"\0" * 16])
    with pytest.raises(ModelError, match="unknown value type 99"):
        read_gguf_info(_write(tmp_path, "odd.gguf", data))


def test_missing_paths_and_directories_are_model_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such file"):
        read_gguf_info(tmp_path / "absent.gguf")
    with pytest.raises(ModelError, match="directory"):
        read_gguf_info(tmp_path)


def test_a_large_vocabulary_is_skipped_quickly(tmp_path: Path) -> None:
    def vocab(w: gguf.GGUFWriter) -> None:
        w.add_token_list([f"token-{i}" for i in range(250_000)])

    p = _gguf(tmp_path, build=vocab)
    start = time.perf_counter()
    info = read_gguf_info(p)
    assert info.vocab_size == 250_000
    assert time.perf_counter() - start < 2.0  # ~20 ms; gguf.GGUFReader takes seconds
