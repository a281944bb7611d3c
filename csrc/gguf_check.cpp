// GGUF metadata checks (see gguf_check.h)
#include "gguf_check.h"
#include "log.h"

#include "gguf.h"

#include <algorithm>
#include <cstring>
#include <fstream>

static int64_t gguf_int(const gguf_context * ctx, const std::string & key, int64_t dflt, size_t idx = 0) {
    const int64_t id = gguf_find_key(ctx, key.c_str());
    if (id < 0) {
        return dflt;
    }
    switch (gguf_get_kv_type(ctx, id)) {
        case GGUF_TYPE_UINT8:  return gguf_get_val_u8 (ctx, id);
        case GGUF_TYPE_INT8:   return gguf_get_val_i8 (ctx, id);
        case GGUF_TYPE_UINT16: return gguf_get_val_u16(ctx, id);
        case GGUF_TYPE_INT16:  return gguf_get_val_i16(ctx, id);
        case GGUF_TYPE_UINT32: return gguf_get_val_u32(ctx, id);
        case GGUF_TYPE_INT32:  return gguf_get_val_i32(ctx, id);
        case GGUF_TYPE_UINT64: return (int64_t) gguf_get_val_u64(ctx, id);
        case GGUF_TYPE_INT64:  return gguf_get_val_i64(ctx, id);
        case GGUF_TYPE_ARRAY: {
            // per-layer arrays (e.g. head_count_kv): element idx
            if (gguf_get_arr_n(ctx, id) <= idx) {
                return dflt;
            }
            const gguf_type t = gguf_get_arr_type(ctx, id);
            const void * d = gguf_get_arr_data(ctx, id);
            if (t == GGUF_TYPE_INT32 || t == GGUF_TYPE_UINT32) {
                return ((const int32_t *) d)[idx];
            }
            return dflt;
        }
        default: return dflt;
    }
}

// read the metadata we need; false and err if the file is missing or not a readable GGUF
bool gguf_meta_read(const std::string & path, gguf_meta & m, std::string & err) {
    {
        std::ifstream f(path, std::ios::binary);
        if (!f) {
            err = "cannot open model file: " + path;
            return false;
        }
        char magic[4] = {0, 0, 0, 0};
        f.read(magic, 4);
        if (f.gcount() != 4 || std::memcmp(magic, "GGUF", 4) != 0) {
            err = "not a GGUF file: " + path;
            return false;
        }
    }
    gguf_init_params gp = { /*no_alloc =*/ true, /*ctx =*/ nullptr };
    gguf_context * ctx = gguf_init_from_file(path.c_str(), gp);
    if (!ctx) {
        const std::string cause = log_last_error();
        err = "damaged or truncated GGUF file: " + path + (cause.empty() ? "" : " (" + cause + ")");
        return false;
    }
    const int64_t arch_id = gguf_find_key(ctx, "general.architecture");
    if (arch_id >= 0 && gguf_get_kv_type(ctx, arch_id) == GGUF_TYPE_STRING) {
        m.arch = gguf_get_val_str(ctx, arch_id);
    }
    if (m.arch.empty() || m.arch.size() > 64) {
        gguf_free(ctx);
        err = "GGUF file has no valid general.architecture: " + path;
        return false;
    }
    const std::string a = m.arch + ".";
    m.n_embd      = gguf_int(ctx, a + "embedding_length", -1);
    m.n_embd_out  = gguf_int(ctx, a + "embedding_length_out", m.n_embd);
    m.n_layer     = gguf_int(ctx, a + "block_count", -1);
    m.n_nextn     = gguf_int(ctx, a + "nextn_predict_layers", 0);
    m.n_vocab     = gguf_int(ctx, a + "vocab_size", -1);
    m.n_head_kv   = gguf_int(ctx, a + "attention.head_count_kv", -1);
    m.head_k      = gguf_int(ctx, a + "attention.key_length", -1);
    m.head_v      = gguf_int(ctx, a + "attention.value_length", -1);
    m.head_k_swa  = gguf_int(ctx, a + "attention.key_length_swa", m.head_k);
    m.head_v_swa  = gguf_int(ctx, a + "attention.value_length_swa", m.head_v);
    m.n_kv_shared = gguf_int(ctx, a + "attention.shared_kv_layers", 0);
    if (m.n_vocab < 0) {
        const int64_t tok_id = gguf_find_key(ctx, "tokenizer.ggml.tokens");
        if (tok_id >= 0 && gguf_get_kv_type(ctx, tok_id) == GGUF_TYPE_ARRAY) {
            m.n_vocab = (int64_t) gguf_get_arr_n(ctx, tok_id);
        }
    }
    // llama.cpp asserts (aborts the process) on some impossible values: refuse them here
    if (m.n_layer < 1 || m.n_layer > 512 || m.n_nextn < 0 || m.n_nextn > m.n_layer) {
        gguf_free(ctx);
        err = "GGUF file has an invalid layer count (block_count " + std::to_string(m.n_layer) +
              ", nextn_predict_layers " + std::to_string(m.n_nextn) + "): " + path;
        return false;
    }
    {
        const int64_t n_expert = gguf_int(ctx, a + "expert_count", 0);
        const int64_t n_used   = gguf_int(ctx, a + "expert_used_count", 0);
        if (n_expert < 0 || n_expert > 4096 || n_used < 0 || n_used > n_expert) {
            gguf_free(ctx);
            err = "GGUF file has an invalid expert configuration: " + path;
            return false;
        }
    }
    // every tensor's data must lie inside the file (a cut-off download fails here, not later)
    {
        size_t end = 0;
        for (int64_t i = 0; i < gguf_get_n_tensors(ctx); ++i) {
            end = std::max(end, gguf_get_tensor_offset(ctx, i) + gguf_get_tensor_size(ctx, i));
        }
        end += gguf_get_data_offset(ctx);
        std::ifstream f(path, std::ios::binary | std::ios::ate);
        const size_t size = f ? (size_t) f.tellg() : 0;
        if (size < end) {
            gguf_free(ctx);
            err = "truncated GGUF file: " + path + " has " + std::to_string(size) + " bytes, its tensors need " +
                  std::to_string(end) + " (an incomplete download?)";
            return false;
        }
    }
    m.n_head_first        = gguf_int(ctx, a + "attention.head_count", -1, 0);
    if (m.n_layer >= 2) {
        m.n_head_kv_swa_last  = gguf_int(ctx, a + "attention.head_count_kv", m.n_head_kv, m.n_layer - 2);
        m.n_head_kv_full_last = gguf_int(ctx, a + "attention.head_count_kv", m.n_head_kv, m.n_layer - 1);
    }
    const int64_t swa_id = gguf_find_key(ctx, (a + "attention.sliding_window_pattern").c_str());
    if (swa_id >= 0 && gguf_get_kv_type(ctx, swa_id) == GGUF_TYPE_ARRAY && gguf_get_arr_type(ctx, swa_id) == GGUF_TYPE_BOOL) {
        const size_t n = gguf_get_arr_n(ctx, swa_id);
        const bool * d = (const bool *) gguf_get_arr_data(ctx, swa_id);
        m.swa_pattern.assign(d, d + n);
    }
    gguf_free(ctx);
    return true;
}

static std::string i2s(int64_t v) { return std::to_string(v); }

// does a drafter sidecar fit its target? (llama.cpp runs a mismatched one silently, or crashes)
bool sidecar_fits(const gguf_meta & tgt, const gguf_meta & dft, const std::string & dft_path, std::string & err) {
    const std::string who = "drafter " + dft_path + " does not fit its target: ";
    if (dft.arch != "gemma4-assistant") {
        err = who + "architecture '" + dft.arch + "' is not an MTP drafter mtprun can pair (expected gemma4-assistant)";
        return false;
    }
    if (tgt.arch != "gemma4") {
        err = who + "a gemma4-assistant drafter pairs with a gemma4 target, not '" + tgt.arch + "'";
        return false;
    }
    if (dft.n_vocab != tgt.n_vocab) {
        err = who + "vocabulary size " + i2s(dft.n_vocab) + " vs the target's " + i2s(tgt.n_vocab);
        return false;
    }
    if (dft.n_embd_out != tgt.n_embd) {
        err = who + "it reads hidden states of width " + i2s(dft.n_embd_out) + " but the target's are " + i2s(tgt.n_embd);
        return false;
    }
    if (dft.head_k != tgt.head_k || dft.head_k_swa != tgt.head_k_swa) {
        err = who + "attention head size " + i2s(dft.head_k) + "/" + i2s(dft.head_k_swa) + " (full/sliding) vs the target's " +
              i2s(tgt.head_k) + "/" + i2s(tgt.head_k_swa);
        return false;
    }
    // the drafter reads the target's KV of its last sliding-window layer and its last full layer
    if (tgt.n_layer < 2 || (int64_t) tgt.swa_pattern.size() < tgt.n_layer) {
        err = who + "the target's layer layout (" + i2s(tgt.n_layer) + " layers) cannot be read";
        return false;
    }
    if (!tgt.swa_pattern[tgt.n_layer - 2] || tgt.swa_pattern[tgt.n_layer - 1]) {
        err = who + "it reads the target's layers " + i2s(tgt.n_layer - 2) + " (sliding window) and " + i2s(tgt.n_layer - 1) +
              " (full attention), which the target does not have in that layout";
        return false;
    }
    // its query heads attend over the target's KV heads (grouped-query attention)
    if (dft.n_head_first <= 0 || tgt.n_head_kv_swa_last <= 0 || tgt.n_head_kv_full_last <= 0 ||
        dft.n_head_first % tgt.n_head_kv_swa_last != 0 || dft.n_head_first % tgt.n_head_kv_full_last != 0) {
        err = who + "its " + i2s(dft.n_head_first) + " attention heads cannot share the target's " + i2s(tgt.n_head_kv_swa_last) +
              "/" + i2s(tgt.n_head_kv_full_last) + " KV heads";
        return false;
    }
    return true;
}
