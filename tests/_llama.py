"""A small driver for llama.cpp through llama-cpp-python's low-level ctypes API (tests only).

Enough to load synthetic models, decode greedily, read logits and hidden rows, and run an MTP head
(embedded qwen35 block or gemma4-assistant sidecar) on chosen (token, hidden row) pairs.
"""

from __future__ import annotations

import ctypes
from typing import Sequence

import numpy as np

import llama_cpp.llama_cpp as L

_lib = L._lib

# Staging MTP functions (src/llama-ext.h) that libllama exports with C++ linkage and
# llama-cpp-python 0.3.36 does not bind: looked up by their mangled names.
_set_embeddings_nextn = getattr(_lib, "_Z26llama_set_embeddings_nextnP13llama_contextbb")
_set_embeddings_nextn.argtypes = [L.llama_context_p_ctypes, ctypes.c_bool, ctypes.c_bool]
_set_embeddings_nextn.restype = None
_get_embeddings_nextn_ith = getattr(_lib, "_Z30llama_get_embeddings_nextn_ithP13llama_contexti")
_get_embeddings_nextn_ith.argtypes = [L.llama_context_p_ctypes, ctypes.c_int32]
_get_embeddings_nextn_ith.restype = ctypes.POINTER(ctypes.c_float)

_log_cb = None


def quiet() -> None:
    """Silence llama.cpp's logging (once per process)."""
    global _log_cb
    if _log_cb is None:
        _log_cb = L.llama_log_callback(lambda level, text, user_data: None)
        L.llama_log_set(_log_cb, ctypes.c_void_p())
        L.llama_backend_init()


class Model:
    def __init__(self, path: str, load_mtp: bool = False) -> None:
        quiet()
        params = L.llama_model_default_params()
        params.load_mtp = load_mtp
        ptr = L.llama_model_load_from_file(str(path).encode(), params)
        if not ptr:
            raise RuntimeError(f"llama.cpp could not load {path}")
        self.ptr = ptr
        self.vocab = L.llama_model_get_vocab(ptr)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        self.n_embd = L.llama_model_n_embd(ptr)
        self.n_layer = L.llama_model_n_layer(ptr)
        self.n_layer_nextn = L.llama_model_n_layer_nextn(ptr)

    def close(self) -> None:
        if self.ptr:
            L.llama_model_free(self.ptr)
            self.ptr = None

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(1 << 16)
        n = L.llama_model_meta_val_str(self.ptr, key.encode(), buf, len(buf))
        return None if n < 0 else buf.value.decode("utf-8")

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        raw = text.encode("utf-8")
        buf = (L.llama_token * (len(raw) + 16))()
        n = L.llama_tokenize(self.vocab, raw, len(raw), buf, len(buf), add_special, parse_special)
        if n < 0:
            raise RuntimeError("tokenize failed")
        return list(buf[:n])

    def piece(self, token: int, special: bool = True) -> bytes:
        buf = ctypes.create_string_buffer(256)
        n = L.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def detokenize(self, tokens: Sequence[int], special: bool = True) -> str:
        return b"".join(self.piece(t, special) for t in tokens).decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        return bool(L.llama_vocab_is_eog(self.vocab, token))


class Context:
    """A llama_context; ``mtp=True`` makes an MTP draft context (``other``: the target context)."""

    def __init__(self, model: Model, n_ctx: int = 1024, n_batch: int = 512, mtp: bool = False,
                 other: Context | None = None, flash_attn: bool | None = None, nextn: bool = False,
                 n_threads: int = 1, n_rs_seq: int = 0) -> None:
        self.model = model
        params = L.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        params.n_threads = n_threads
        params.n_threads_batch = n_threads
        params.no_perf = True
        params.n_rs_seq = n_rs_seq  # recurrent states kept for rolling back (remove_from)
        if flash_attn is not None:
            params.flash_attn_type = 1 if flash_attn else 0
        if mtp:
            params.ctx_type = L.LLAMA_CONTEXT_TYPE_MTP
        if other is not None:
            params.ctx_other = other.ptr
        ptr = L.llama_init_from_model(model.ptr, params)
        if not ptr:
            raise RuntimeError("llama.cpp could not create the context")
        self.ptr = ptr
        self.n_pos = 0
        if nextn or mtp:
            _set_embeddings_nextn(ptr, True, bool(mtp))

    def close(self) -> None:
        if self.ptr:
            L.llama_free(self.ptr)
            self.ptr = None

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def decode(self, tokens: Sequence[int], all_logits: bool = True) -> np.ndarray:
        """Decode ``tokens`` at the next positions; logits [n, n_vocab] (or [1, n_vocab])."""
        n = len(tokens)
        batch = L.llama_batch_init(n, 0, 1)
        try:
            batch.n_tokens = n
            for i, t in enumerate(tokens):
                batch.token[i] = t
                batch.pos[i] = self.n_pos + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = all_logits or i == n - 1
            rc = L.llama_decode(self.ptr, batch)
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc}")
        finally:
            L.llama_batch_free(batch)
        self.n_pos += n
        rows = range(n) if all_logits else [n - 1]
        return np.stack([self.logits(i) for i in rows])

    def logits(self, i: int) -> np.ndarray:
        ptr = L.llama_get_logits_ith(self.ptr, i)
        return np.ctypeslib.as_array(ptr, shape=(self.model.n_vocab,)).copy()

    def hidden(self, i: int, width: int) -> np.ndarray:
        """Row i of the h_nextn output (the input an MTP head takes)."""
        ptr = _get_embeddings_nextn_ith(self.ptr, i)
        if not ptr:
            raise RuntimeError("no h_nextn row (was the context created with nextn=True?)")
        return np.ctypeslib.as_array(ptr, shape=(width,)).copy()

    def remove_from(self, pos: int) -> None:
        """Drop positions >= pos (the sequence's memory and this driver's position)."""
        mem = L.llama_get_memory(self.ptr)
        if not L.llama_memory_seq_rm(mem, 0, pos, -1):
            raise RuntimeError(f"llama_memory_seq_rm(pos={pos}) failed")
        self.n_pos = pos

    def mtp_logits(self, tokens: Sequence[int], hidden: np.ndarray, positions: Sequence[int]) -> np.ndarray:
        """Run this MTP context on (token, hidden row, position) triples; logits per row."""
        n = len(tokens)
        hidden = np.ascontiguousarray(hidden, dtype=np.float32)
        batch = L.llama_batch_ext_init(self.ptr)
        try:
            for i, (t, p) in enumerate(zip(tokens, positions)):
                idx = L.llama_batch_ext_add_token(batch, 0, t)
                assert idx == i, idx
                pos = (L.llama_pos * 4)(p, 0, 0, 0)
                L.llama_batch_ext_set_pos(batch, idx, pos)
                row = hidden[i]
                embd = L.llama_embd(row.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), 1, row.shape[0])
                if not L.llama_batch_ext_set_embd_token(batch, idx, embd):
                    raise RuntimeError("llama_batch_ext_set_embd_token failed")
                L.llama_batch_ext_set_output_logits(batch, idx, True)
            rc = L.llama_process(self.ptr, L.LLAMA_PROCESS_TYPE_DECODE, batch)
            if rc != 0:
                raise RuntimeError(f"llama_process returned {rc}")
        finally:
            L.llama_batch_ext_free(batch)
        return np.stack([self.logits(i) for i in range(n)])


def top2(logits: np.ndarray) -> tuple[int, float]:
    """(argmax, top-1 minus top-2) of one logits row."""
    i = int(np.argmax(logits))
    second = np.partition(logits, -2)[-2]
    return i, float(logits[i] - second)


def greedy(ctx: Context, prompt: Sequence[int], n: int) -> tuple[list[int], list[float]]:
    """Plain greedy decoding, one token per step: (tokens, top-1 margins)."""
    logits = ctx.decode(prompt, all_logits=False)[-1]
    out, margins = [], []
    for _ in range(n):
        t, m = top2(logits)
        out.append(t)
        margins.append(m)
        logits = ctx.decode([t], all_logits=False)[-1]
    return out, margins


def reference_memory(model_path, draft_path=None, *, n_ctx: int, n_max: int, flash_attn: bool,
                     mtp: bool = True) -> tuple[list, list]:
    """llama.cpp's memory breakdown (mtprun._core.context_memory) of the contexts llama.cpp's own tools
    create for this model: the target as common_context_params_to_llama does with common_params'
    defaults (n_batch 2048, n_ubatch 512, swa_full off, n_rs_seq = n_max with draft-mtp), and with
    ``mtp`` the MTP context as common_speculative_init_result does (same parameters, ctx_type MTP,
    the target's n_ctx, no snapshots, ctx_other = the target). Returns (target rows, MTP rows), as
    mtprun._core.MemoryEntry objects."""
    from mtprun._native import core

    quiet()
    mp = L.llama_model_default_params()
    mp.load_mtp = mtp and draft_path is None
    tgt = L.llama_model_load_from_file(str(model_path).encode(), mp)
    if not tgt:
        raise RuntimeError(f"llama.cpp could not load {model_path}")
    dft_model = None
    contexts = []
    try:
        cp = L.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = n_ctx, 2048, 512, 1
        cp.n_outputs_max, cp.n_outputs_max_per_seq = 0, 1
        cp.n_rs_seq = n_max if mtp else 0  # params.speculative.need_n_rs_seq()
        cp.swa_full = False  # common_params.swa_full
        cp.kv_unified = False
        cp.flash_attn_type = 1 if flash_attn else 0
        cp.n_threads = cp.n_threads_batch = 1
        ctx = L.llama_init_from_model(tgt, cp)
        if not ctx:
            raise RuntimeError("llama.cpp could not create the target context")
        contexts.append(ctx)
        if mtp:
            dp = cp
            dp.ctx_type = 1  # LLAMA_CONTEXT_TYPE_MTP
            dp.n_ctx = L.llama_n_ctx(ctx)
            dp.n_rs_seq = 0
            dp.ctx_other = ctx
            if draft_path is not None:
                dmp = L.llama_model_default_params()
                dmp.load_mtp = True
                dft_model = L.llama_model_load_from_file(str(draft_path).encode(), dmp)
            dctx = L.llama_init_from_model(dft_model or tgt, dp)
            if not dctx:
                raise RuntimeError("llama.cpp could not create the MTP context")
            contexts.append(dctx)
        rows = [core.context_memory(ctypes.cast(c, ctypes.c_void_p).value) for c in contexts]
        return rows[0], (rows[1] if len(rows) > 1 else [])
    finally:
        for c in reversed(contexts):
            L.llama_free(c)
        if dft_model:
            L.llama_model_free(dft_model)
        L.llama_model_free(tgt)
