// mtprun engine: the MTP speculative loop, written on llama.cpp's public API plus three staging
// functions (llama_staging.h). See engine.h for the API.
//
// Terms. The target context holds the conversation: `cache` lists the tokens in its memory
// (positions 0..n_past-1) and `id_last` is the newest token, chosen but not yet decoded. The MTP
// head at position j reads token x_j together with h_{j-1}, the target's hidden row at j-1, and
// predicts x_{j+1}; when it drafts further it reads its own hidden row instead of the target's.
//
// Two drafter layouts:
//  - separate memory (Qwen3.5/3.6 and other embedded nextn heads): the MTP context has its own KV
//    for its layer, which must hold (x_j, h_{j-1}) for every cached position. Positions whose
//    target rows are known but not yet fed to the head are "pending"; they are decoded in the same
//    batch as the next draft's first token (one MTP decode per draft token, no separate catch-up).
//  - shared memory (Gemma 4 assistant): the drafter reads the target's KV directly; it only needs
//    h_{n_past-1}, and all its draft tokens sit at the same position.
//
// One step: draft up to n tokens -> decode [id_last, d1..dn] on the target in one batch -> accept
// the agreeing prefix (greedy: equal argmax; sampling: min(1, p/q) with residual resampling) ->
// remove rejected positions from the target memory (hybrid models roll their recurrent state back
// through llama.cpp's per-token snapshots, n_rs_seq) -> the next token becomes id_last.

#include "engine.h"
#include "llama_staging.h"
#include "sampling.h"

#include "ggml-backend.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <mutex>
#include <thread>

#include "gguf.h"

// ---------------------------------------------------------------------------------------------
// logging: llama.cpp's log is swallowed unless verbose; the last error lines are kept for messages

static std::mutex  g_log_mutex;
static bool        g_log_verbose = false;
static std::string g_log_errors; // recent error/warning text from llama.cpp

static void log_callback(enum ggml_log_level level, const char * text, void * /*user_data*/) {
    std::lock_guard<std::mutex> lock(g_log_mutex);
    if (g_log_verbose) {
        fputs(text, stderr);
        fflush(stderr);
    }
    if (level == GGML_LOG_LEVEL_ERROR || level == GGML_LOG_LEVEL_WARN) {
        g_log_errors += text;
        if (g_log_errors.size() > 4096) {
            g_log_errors.erase(0, g_log_errors.size() - 4096);
        }
    }
}

static void log_install() {
    static std::once_flag once;
    std::call_once(once, []() { llama_backend_init(); });
    llama_log_set(log_callback, nullptr);
}

void mtp_set_verbose(bool verbose) {
    std::lock_guard<std::mutex> lock(g_log_mutex);
    g_log_verbose = verbose;
}

static void log_clear() {
    std::lock_guard<std::mutex> lock(g_log_mutex);
    g_log_errors.clear();
}

// the most recent llama.cpp error line, trimmed, or "" (gives failures a cause)
static std::string log_last_error() {
    std::lock_guard<std::mutex> lock(g_log_mutex);
    std::string s = g_log_errors;
    while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) {
        s.pop_back();
    }
    const size_t nl = s.rfind('\n');
    if (nl != std::string::npos) {
        s = s.substr(nl + 1);
    }
    return s;
}

std::string mtp_build_commit()   { return MTPRUN_GGML_COMMIT; }
std::string mtp_runtime_commit() { return ggml_commit(); }

// ---------------------------------------------------------------------------------------------
// GGUF metadata checks done before llama.cpp sees a file (it aborts or misbehaves on some bad input)

struct gguf_meta {
    std::string arch;
    int64_t n_vocab = -1, n_embd = -1, n_embd_out = -1, n_layer = -1, n_nextn = 0;
    int64_t head_k = -1, head_v = -1, head_k_swa = -1, head_v_swa = -1, n_head_kv = -1;
    int64_t n_kv_shared = 0;
    std::vector<bool> swa_pattern; // per layer: sliding-window?
    int64_t n_head_first = -1;     // query heads of the first layer
    int64_t n_head_kv_swa_last = -1, n_head_kv_full_last = -1; // KV heads of layers n-2 and n-1
};

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
static bool gguf_meta_read(const std::string & path, gguf_meta & m, std::string & err) {
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
static bool sidecar_fits(const gguf_meta & tgt, const gguf_meta & dft, const std::string & dft_path, std::string & err) {
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

// ---------------------------------------------------------------------------------------------
// the engine

using clock_type = std::chrono::steady_clock;

static double seconds_since(clock_type::time_point t0) {
    return std::chrono::duration<double>(clock_type::now() - t0).count();
}

struct mtp_engine {
    mtp_model_params params;
    mtp_model_info   info;

    llama_model   * model_tgt = nullptr;
    llama_model   * model_dft = nullptr; // sidecar drafter, if any
    llama_context * ctx_tgt   = nullptr;
    llama_context * ctx_dft   = nullptr; // MTP context (null: plain decoding only)
    const llama_vocab * vocab = nullptr;

    llama_batch_ext * batch_tgt = nullptr;
    llama_batch_ext * batch_dft = nullptr;

    int32_t n_vocab    = 0;
    int32_t n_ctx      = 0;
    int32_t n_batch    = 0;
    int32_t n_embd_h   = 0;     // width of the hidden rows fed to the head
    bool    mem_shared = false; // drafter reads the target's KV (Gemma 4 assistant)
    bool    recurrent  = false; // target memory can only roll back a few tokens
    // chained heads (several nextn blocks, separate memory): head i drafts position i, as in
    // llama.cpp's draft-mtp; n_heads = 1 drafts every position with the first head
    int32_t n_heads    = 1;
    int32_t heads_used = 1;     // heads this generation drafts with, all fed every cached position
    std::vector<float> h_chain; // rows fed to the heads: h_{n_past-1}, then each head's output

    // conversation state
    std::vector<llama_token> cache;   // tokens in the target memory, positions 0..n_past-1
    llama_token id_last   = LLAMA_TOKEN_NULL;
    bool        mtp_valid = false;    // h rows / MTP memory are in sync with the cache
    int32_t     mtp_len   = 0;        // separate memory: positions held by the MTP context
    // target hidden rows for positions [h_pos0, h_pos0 + rows); must cover mtp_len-1 .. n_past-1
    std::vector<float> h_rows;
    int32_t     h_pos0    = -1;

    // generation state
    bool             active = false;
    mtp_gen_params   gen;
    mtp_sampler      smpl;
    mtp_stats        stats;
    std::atomic<bool> cancel{false};
    clock_type::time_point t_gen_start;

    // scratch
    std::vector<llama_token> draft;
    std::vector<llama_token> verify;
    std::vector<std::vector<mtp_candidate>> q;  // draft distributions (sampling)
    std::vector<mtp_candidate> p;
    std::vector<float> h_tmp;

    // time accounts (seconds): target decodes, MTP decodes, token choice
    double t_dec_tgt = 0, t_dec_dft = 0, t_choose = 0;
};

static int32_t n_past(const mtp_engine * e) { return (int32_t) e->cache.size(); }

// llama_process, timed into `acc` (the engine's decode-time accounts)
static int32_t process_timed(llama_context * ctx, llama_batch_ext * batch, double & acc) {
    const auto t0 = clock_type::now();
    const int32_t rc = llama_process(ctx, LLAMA_PROCESS_TYPE_DECODE, batch);
    acc += seconds_since(t0);
    return rc;
}

static bool use_mtp(const mtp_engine * e) { return e->ctx_dft != nullptr; }

// architectures whose MTP graph in llama.cpp 0c1e570 runs any of several heads (nextn layer
// offset), and those whose graph asserts exactly one head
static bool arch_chains(const std::string & arch) {
    return arch == "hy_v3" || arch == "mimo2" || arch == "step35";
}
static bool arch_single_head(const std::string & arch) {
    static const char * names[] = { "qwen35", "qwen35moe", "qwen3next", "deepseek2", "deepseek32", "deepseek4",
                                    "glm4moe", "glm-dsa", "bailingmoe3", "cohere2moe", "nemotron_h_moe" };
    return std::find(std::begin(names), std::end(names), arch) != std::end(names);
}

// why llama.cpp cannot run the embedded MTP layers of a model ("" if it can): it would abort the
// process (a graph asserting one head) or fail to create the MTP context
static std::string mtp_unsupported(const gguf_meta & m) {
    if (m.arch == "glm5-next") { // the nextn layers load, but the MTP graph throws "not implemented yet"
        return "llama.cpp has no MTP graph for architecture 'glm5-next' yet";
    }
    if (m.n_nextn > 1 && arch_single_head(m.arch)) {
        return "llama.cpp runs a single MTP head for architecture '" + m.arch + "', this model has " + i2s(m.n_nextn);
    }
    return "";
}

static void set_pos(llama_batch_ext * b, int32_t idx, llama_pos pos) {
    const llama_pos p[4] = { pos, pos, pos, 0 };
    llama_batch_ext_set_pos(b, idx, p);
}

// add a token (optionally with a hidden row for the MTP head) to a batch; false if it cannot
static bool batch_add(llama_batch_ext * b, llama_token id, llama_pos pos, const float * h, int32_t n_embd, bool output) {
    const int32_t idx = llama_batch_ext_add_token(b, 0, id);
    if (idx < 0) {
        return false;
    }
    set_pos(b, idx, pos);
    if (h && !llama_batch_ext_set_embd_token(b, idx, { h, 1, (size_t) n_embd })) {
        return false;
    }
    if (output) {
        llama_batch_ext_set_output_logits(b, idx, true);
    }
    return true;
}

static const float * h_row(const mtp_engine * e, int32_t pos) {
    return e->h_rows.data() + (size_t) (pos - e->h_pos0) * e->n_embd_h;
}

// forget everything cached
static void state_clear(mtp_engine * e) {
    llama_memory_clear(llama_get_memory(e->ctx_tgt), true);
    if (e->ctx_dft && !e->mem_shared) {
        llama_memory_clear(llama_get_memory(e->ctx_dft), true);
    }
    if (e->ctx_dft && e->n_heads > 1) {
        llama_set_nextn_layer_offset(e->ctx_dft, 0); // an error may have left another head selected
    }
    e->cache.clear();
    e->id_last   = LLAMA_TOKEN_NULL;
    e->mtp_len   = 0;
    e->mtp_valid = use_mtp(e);
    // position -1 has no target row: the head sees zeros there (as llama.cpp does)
    e->h_pos0 = -1;
    e->h_rows.assign(e->n_embd_h, 0.0f);
    e->active = false;
}

// keep only the hidden rows from position `pos` on
static void h_trim_front(mtp_engine * e, int32_t pos) {
    if (pos <= e->h_pos0) {
        return;
    }
    const size_t drop = (size_t) (pos - e->h_pos0) * e->n_embd_h;
    e->h_rows.erase(e->h_rows.begin(), e->h_rows.begin() + std::min(drop, e->h_rows.size()));
    e->h_pos0 = pos;
}

// keep only the hidden rows before position `pos`
static void h_trim_back(mtp_engine * e, int32_t pos) {
    const size_t keep = (size_t) std::max(0, pos - e->h_pos0) * e->n_embd_h;
    if (keep < e->h_rows.size()) {
        e->h_rows.resize(keep);
    }
}

// decode tokens [pos0 .. pos0+n) on the target; keeps their hidden rows when MTP is in use.
// outputs: logits for every token if all_logits, else for the last one only
static mtp_status target_decode(mtp_engine * e, const llama_token * tokens, int32_t n, bool all_logits, std::string & err) {
    const int32_t pos0 = n_past(e);
    llama_batch_ext_clear(e->batch_tgt);
    for (int32_t i = 0; i < n; ++i) {
        if (!batch_add(e->batch_tgt, tokens[i], pos0 + i, nullptr, 0, all_logits || i == n - 1)) {
            err = "invalid token id " + std::to_string(tokens[i]) + " (vocabulary has " + std::to_string(e->n_vocab) + ")";
            return MTP_ERR_INVALID;
        }
    }
    const int32_t rc = process_timed(e->ctx_tgt, e->batch_tgt, e->t_dec_tgt);
    if (rc != 0) {
        const std::string cause = log_last_error();
        err = "target decode failed (llama.cpp code " + std::to_string(rc) + ")" + (cause.empty() ? "" : ": " + cause);
        return MTP_ERR_RUNTIME;
    }
    if (e->mtp_valid) {
        // rows for positions pos0..pos0+n-1 follow the ones we hold (which end at pos0-1)
        h_trim_back(e, pos0);
        for (int32_t i = 0; i < n; ++i) {
            const float * h = llama_get_embeddings_nextn_ith(e->ctx_tgt, i);
            if (!h) {
                err = "target produced no hidden state for the MTP head";
                return MTP_ERR_RUNTIME;
            }
            e->h_rows.insert(e->h_rows.end(), h, h + e->n_embd_h);
        }
    }
    e->cache.insert(e->cache.end(), tokens, tokens + n);
    return MTP_OK;
}

// separate-memory heads: feed the MTP context the cached positions [mtp_len, upto) it has not seen
// and, if next is a token, `next` at position upto (== n_past) with output; all in one batch
static mtp_status mtp_feed(mtp_engine * e, int32_t upto, llama_token next, std::string & err) {
    llama_memory_seq_rm(llama_get_memory(e->ctx_dft), 0, e->mtp_len, -1);
    llama_batch_ext_clear(e->batch_dft);
    for (int32_t j = e->mtp_len; j < upto; ++j) {
        if (!batch_add(e->batch_dft, e->cache[j], j, h_row(e, j - 1), e->n_embd_h, false)) {
            err = "MTP batch overflow";
            return MTP_ERR_RUNTIME;
        }
    }
    if (next != LLAMA_TOKEN_NULL && !batch_add(e->batch_dft, next, upto, h_row(e, upto - 1), e->n_embd_h, true)) {
        err = "MTP batch overflow";
        return MTP_ERR_RUNTIME;
    }
    const int32_t rc = process_timed(e->ctx_dft, e->batch_dft, e->t_dec_dft);
    if (rc != 0) {
        const std::string cause = log_last_error();
        err = "MTP head decode failed (llama.cpp code " + std::to_string(rc) + ")" + (cause.empty() ? "" : ": " + cause);
        return MTP_ERR_RUNTIME;
    }
    e->mtp_len = upto + (next != LLAMA_TOKEN_NULL ? 1 : 0);
    return MTP_OK;
}

// chained heads: every head in use catches up on the cached positions [mtp_len, upto) (each
// writes only its own layer's KV; the cells freed by seq_rm are reused in order for the same
// positions, so the other heads' rows stay, as in llama.cpp's draft-mtp process())
static mtp_status mtp_feed_heads(mtp_engine * e, int32_t upto, std::string & err) {
    if (e->n_heads <= 1) {
        return mtp_feed(e, upto, LLAMA_TOKEN_NULL, err);
    }
    const int32_t from = e->mtp_len;
    mtp_status st = MTP_OK;
    for (int32_t head = 0; head < e->heads_used && st == MTP_OK; ++head) {
        e->mtp_len = from;
        llama_set_nextn_layer_offset(e->ctx_dft, head);
        st = mtp_feed(e, upto, LLAMA_TOKEN_NULL, err);
    }
    llama_set_nextn_layer_offset(e->ctx_dft, 0);
    return st;
}

// chained heads: head `head` decodes the positions [from, n_past) it has not seen, id_last at
// n_past and the drafts so far d_1..d_head after it (fed the previous heads' rows, h_chain),
// with output on the last one (or none when there are no drafts to extend)
static mtp_status mtp_chain_decode(mtp_engine * e, int32_t from, int32_t head, bool output, std::string & err) {
    const int32_t np = n_past(e);
    llama_memory_seq_rm(llama_get_memory(e->ctx_dft), 0, from, -1);
    llama_set_nextn_layer_offset(e->ctx_dft, head);
    llama_batch_ext_clear(e->batch_dft);
    bool ok = true;
    for (int32_t j = from; j < np && ok; ++j) {
        ok = batch_add(e->batch_dft, e->cache[j], j, h_row(e, j - 1), e->n_embd_h, false);
    }
    const int32_t n_draft = output ? head : 0;
    for (int32_t t = 0; t <= n_draft && ok; ++t) {
        const llama_token tok = t == 0 ? e->id_last : e->draft[t - 1];
        ok = batch_add(e->batch_dft, tok, np + t, e->h_chain.data() + (size_t) t * e->n_embd_h, e->n_embd_h,
                       output && t == n_draft);
    }
    if (!ok) {
        err = "MTP batch overflow";
        return MTP_ERR_RUNTIME;
    }
    const int32_t rc = process_timed(e->ctx_dft, e->batch_dft, e->t_dec_dft);
    if (rc != 0) {
        const std::string cause = log_last_error();
        err = "MTP head decode failed (llama.cpp code " + std::to_string(rc) + ")" + (cause.empty() ? "" : ": " + cause);
        return MTP_ERR_RUNTIME;
    }
    return MTP_OK;
}

// process prompt tokens into the target (and MTP context), n_batch at a time
static mtp_status prefill(mtp_engine * e, const llama_token * tokens, int32_t n, std::string & err) {
    for (int32_t i = 0; i < n; i += e->n_batch) {
        if (e->cancel.load()) {
            return MTP_OK; // the caller sees the cancel at the first step
        }
        const int32_t m = std::min(e->n_batch, n - i);
        mtp_status st = target_decode(e, tokens + i, m, false, err);
        if (st != MTP_OK) {
            return st;
        }
        if (e->mtp_valid && !e->mem_shared) {
            // catch the head up in slices that fit its batch; the target rows stay until fed
            while (e->mtp_len < n_past(e)) {
                st = mtp_feed_heads(e, std::min(n_past(e), e->mtp_len + e->n_batch), err);
                if (st != MTP_OK) {
                    return st;
                }
            }
        }
        if (e->mtp_valid) {
            h_trim_front(e, n_past(e) - 1); // only h_{n_past-1} is needed from here
        }
    }
    return MTP_OK;
}

// ---------------------------------------------------------------------------------------------
// init / free

static std::string backend_description() {
    std::string gpus;
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        const auto type = ggml_backend_dev_type(dev);
        if (type == GGML_BACKEND_DEVICE_TYPE_GPU || type == GGML_BACKEND_DEVICE_TYPE_IGPU) {
            if (!gpus.empty()) gpus += ", ";
            gpus += std::string(ggml_backend_dev_name(dev)) + ": " + ggml_backend_dev_description(dev);
        }
    }
    return gpus.empty() ? "CPU" : gpus + " (+ CPU)";
}

static std::string token_text(const llama_vocab * vocab, llama_token t) {
    if (t == LLAMA_TOKEN_NULL) {
        return "";
    }
    const char * s = llama_vocab_get_text(vocab, t);
    return s ? s : "";
}

// physical cores (hyper-threads slow llama.cpp's decoding down), as llama.cpp's own tools count
// them on Linux; elsewhere, or when that fails, the logical CPU count
static int32_t default_threads() {
    const int32_t logical = (int32_t) std::max(1u, std::thread::hardware_concurrency());
#if defined(__linux__)
    std::ifstream f("/proc/cpuinfo");
    std::string line;
    std::vector<std::pair<int, int>> cores; // (physical id, core id)
    int phys = 0;
    while (std::getline(f, line)) {
        const size_t colon = line.find(':');
        if (colon == std::string::npos) {
            continue;
        }
        const std::string key = line.substr(0, line.find_last_not_of(" \t", colon - 1) + 1);
        const int value = std::atoi(line.c_str() + colon + 1);
        if (key == "physical id") {
            phys = value;
        } else if (key == "core id") {
            const std::pair<int, int> c = { phys, value };
            if (std::find(cores.begin(), cores.end(), c) == cores.end()) {
                cores.push_back(c);
            }
        }
    }
    if (!cores.empty() && (int32_t) cores.size() <= logical) {
        return (int32_t) cores.size();
    }
#endif
    return logical;
}

void mtp_engine_free(mtp_engine * e) {
    if (!e) {
        return;
    }
    if (e->batch_dft) llama_batch_ext_free(e->batch_dft);
    if (e->batch_tgt) llama_batch_ext_free(e->batch_tgt);
    if (e->ctx_dft)   llama_free(e->ctx_dft);
    if (e->ctx_tgt)   llama_free(e->ctx_tgt);
    if (e->model_dft) llama_model_free(e->model_dft);
    if (e->model_tgt) llama_model_free(e->model_tgt);
    delete e;
}

static mtp_engine * init_fail(mtp_engine * e, mtp_status code, mtp_status * status) {
    mtp_engine_free(e);
    if (status) *status = code;
    return nullptr;
}

mtp_engine * mtp_engine_init(const mtp_model_params & params, std::string & err, mtp_status * status) {
    log_install();
    log_clear();
    if (status) *status = MTP_OK;

    if (params.n_ctx < 0 || params.n_batch < 1 || params.n_threads < 0 || params.n_gpu_layers < -1 ||
        params.flash_attn < -1 || params.flash_attn > 1 || params.n_draft_capacity < 1 || params.n_draft_capacity > 32) {
        err = "invalid engine parameters";
        if (status) *status = MTP_ERR_INVALID;
        return nullptr;
    }

    gguf_meta meta_tgt, meta_dft;
    if (!gguf_meta_read(params.path, meta_tgt, err)) {
        if (status) *status = MTP_ERR_MODEL;
        return nullptr;
    }
    const bool has_sidecar = !params.draft_path.empty();
    if (has_sidecar) {
        if (!gguf_meta_read(params.draft_path, meta_dft, err)) {
            if (status) *status = MTP_ERR_MODEL;
            return nullptr;
        }
        if (!sidecar_fits(meta_tgt, meta_dft, params.draft_path, err)) {
            if (status) *status = MTP_ERR_MODEL;
            return nullptr;
        }
    }

    mtp_engine * e = new mtp_engine();
    e->params = params;

    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = params.n_gpu_layers;
    mp.load_mtp     = params.use_mtp && !has_sidecar && meta_tgt.n_nextn > 0 && mtp_unsupported(meta_tgt).empty();
    e->model_tgt = llama_model_load_from_file(params.path.c_str(), mp);
    if (!e->model_tgt) {
        const std::string cause = log_last_error();
        err = "failed to load model " + params.path + (cause.empty() ? "" : ": " + cause);
        return init_fail(e, MTP_ERR_MODEL, status);
    }
    e->vocab   = llama_model_get_vocab(e->model_tgt);
    e->n_vocab = llama_vocab_n_tokens(e->vocab);

    const int32_t n_threads = params.n_threads > 0 ? params.n_threads
                            : default_threads();
    const int32_t cap = params.n_draft_capacity;

    // what the files offer
    mtp_model_info & info = e->info;
    const int32_t n_nextn = llama_model_n_layer_nextn(e->model_tgt);
    info.mtp_kind  = has_sidecar ? MTP_KIND_SIDECAR : (meta_tgt.n_nextn > 0 ? MTP_KIND_EMBEDDED : MTP_KIND_NONE);
    e->recurrent   = llama_model_is_recurrent(e->model_tgt) || llama_model_is_hybrid(e->model_tgt);

    // the contexts as llama.cpp's tools create theirs; the choices are documented in memory.cpp
    const bool mtp_possible = params.use_mtp && (has_sidecar || meta_tgt.n_nextn > 0);
    llama_context_params cp = mtp_target_context_params(params, mtp_possible, n_threads);

    e->ctx_tgt = llama_init_from_model(e->model_tgt, cp);
    if (!e->ctx_tgt) {
        const std::string cause = log_last_error();
        err = "failed to create the context for " + params.path + (cause.empty() ? "" : ": " + cause);
        return init_fail(e, MTP_ERR_MODEL, status);
    }
    e->n_ctx   = (int32_t) llama_n_ctx(e->ctx_tgt);
    e->n_batch = (int32_t) llama_n_batch(e->ctx_tgt);
    e->batch_tgt = llama_batch_ext_init(e->ctx_tgt);

    // the drafter context
    if (!params.use_mtp) {
        info.mtp_note = "MTP disabled";
    } else if (info.mtp_kind == MTP_KIND_NONE) {
        info.mtp_note = meta_tgt.arch == "gemma4"
            ? "this Gemma 4 model needs its MTP drafter sidecar (mtp-*.gguf); none was given"
            : "the model has no MTP layers";
    } else if (e->recurrent && llama_n_rs_seq(e->ctx_tgt) < (uint32_t) cap) {
        info.mtp_note = "llama.cpp cannot roll back the recurrent state of architecture '" + meta_tgt.arch + "'";
    } else if (info.mtp_kind == MTP_KIND_EMBEDDED && !mtp_unsupported(meta_tgt).empty()) {
        info.mtp_note = mtp_unsupported(meta_tgt);
    } else if (info.mtp_kind == MTP_KIND_EMBEDDED && n_nextn <= 0) {
        info.mtp_note = "llama.cpp did not load the model's MTP layers";
    } else {
        llama_context_params dp = mtp_draft_context_params(cp, e->ctx_tgt);
        if (has_sidecar) {
            llama_model_params dmp = llama_model_default_params();
            dmp.n_gpu_layers = params.n_gpu_layers;
            dmp.load_mtp     = true;
            e->model_dft = llama_model_load_from_file(params.draft_path.c_str(), dmp);
            if (!e->model_dft) {
                const std::string cause = log_last_error();
                err = "failed to load drafter " + params.draft_path + (cause.empty() ? "" : ": " + cause);
                return init_fail(e, MTP_ERR_MODEL, status);
            }
            if (llama_vocab_n_tokens(llama_model_get_vocab(e->model_dft)) != e->n_vocab) {
                err = "drafter " + params.draft_path + " does not fit its target: different vocabulary";
                return init_fail(e, MTP_ERR_MODEL, status);
            }
        }
        e->ctx_dft = llama_init_from_model(e->model_dft ? e->model_dft : e->model_tgt, dp);
        if (!e->ctx_dft) {
            const std::string cause = log_last_error();
            err = "failed to create the MTP context" + (cause.empty() ? "" : ": " + cause);
            return init_fail(e, MTP_ERR_MODEL, status);
        }
        e->n_embd_h = llama_model_n_embd_out(e->model_dft ? e->model_dft : e->model_tgt);
        if (e->n_embd_h != llama_model_n_embd_out(e->model_tgt)) {
            err = "the MTP head's input width does not match the target's hidden state";
            return init_fail(e, MTP_ERR_MODEL, status);
        }
        e->mem_shared = llama_get_ctx_other(e->ctx_dft) == e->ctx_tgt && info.mtp_kind == MTP_KIND_SIDECAR;
        if (!e->mem_shared && n_nextn > 1 && arch_chains(meta_tgt.arch)) {
            e->n_heads = n_nextn;
        }
        llama_set_embeddings_nextn(e->ctx_tgt, true, /*masked*/ false);
        llama_set_embeddings_nextn(e->ctx_dft, true, /*masked*/ true);
        e->batch_dft = llama_batch_ext_init(e->ctx_dft);
    }
    if (e->n_embd_h == 0) {
        e->n_embd_h = llama_model_n_embd_out(e->model_tgt);
    }
    mtp_memory_collect(e->ctx_tgt, "target", false, info.memory);
    mtp_memory_collect(e->ctx_dft, "draft", e->model_dft == nullptr, info.memory);

    info.arch          = meta_tgt.arch;
    {
        char buf[256];
        llama_model_desc(e->model_tgt, buf, sizeof(buf));
        info.description = buf;
    }
    info.size_bytes    = llama_model_size(e->model_tgt) + (e->model_dft ? llama_model_size(e->model_dft) : 0);
    info.n_params      = llama_model_n_params(e->model_tgt);
    info.n_vocab       = e->n_vocab;
    info.n_ctx         = e->n_ctx;
    info.n_ctx_train   = llama_model_n_ctx_train(e->model_tgt);
    info.n_layer       = llama_model_n_layer(e->model_tgt);
    info.n_embd        = llama_model_n_embd(e->model_tgt);
    info.n_layer_nextn = std::max(n_nextn, (int32_t) meta_tgt.n_nextn);
    info.mtp_active    = e->ctx_dft != nullptr;
    info.recurrent     = e->recurrent;
    info.mtp_chain     = e->n_heads > 1;
    {
        const char * tmpl = llama_model_chat_template(e->model_tgt, nullptr);
        info.chat_template = tmpl ? tmpl : "";
    }
    info.bos_token     = token_text(e->vocab, llama_vocab_bos(e->vocab));
    info.eos_token     = token_text(e->vocab, llama_vocab_eos(e->vocab));
    info.add_bos       = llama_vocab_get_add_bos(e->vocab);
    info.backend       = backend_description();
    info.system_info   = llama_print_system_info();

    e->stats.speculative = false;
    state_clear(e);
    return e;
}

const mtp_model_info & mtp_engine_info(const mtp_engine * e) {
    return e->info;
}

// ---------------------------------------------------------------------------------------------
// text

mtp_status mtp_tokenize(const mtp_engine * e, const std::string & text, bool add_special, bool parse_special,
                        std::vector<llama_token> & out, std::string & err) {
    if (text.size() > (size_t) INT32_MAX / 2) {
        err = "text too long to tokenize";
        return MTP_ERR_INVALID;
    }
    out.resize(text.size() + 8);
    int32_t n = llama_tokenize(e->vocab, text.data(), (int32_t) text.size(), out.data(), (int32_t) out.size(), add_special, parse_special);
    if (n < 0) {
        out.resize(-n);
        n = llama_tokenize(e->vocab, text.data(), (int32_t) text.size(), out.data(), (int32_t) out.size(), add_special, parse_special);
    }
    if (n < 0) {
        err = "tokenization failed";
        return MTP_ERR_INVALID;
    }
    out.resize(n);
    return MTP_OK;
}

std::string mtp_token_piece(const mtp_engine * e, llama_token token) {
    if (token < 0 || token >= e->n_vocab) {
        return "";
    }
    char buf[128];
    int32_t n = llama_token_to_piece(e->vocab, token, buf, sizeof(buf), 0, true);
    if (n >= 0) {
        return std::string(buf, n);
    }
    std::string s(-n, '\0');
    n = llama_token_to_piece(e->vocab, token, s.data(), (int32_t) s.size(), 0, true);
    return n >= 0 ? s.substr(0, n) : "";
}

std::string mtp_detokenize(const mtp_engine * e, const std::vector<llama_token> & tokens) {
    std::string out;
    for (llama_token t : tokens) {
        out += mtp_token_piece(e, t);
    }
    return out;
}

// ---------------------------------------------------------------------------------------------
// generation

mtp_status mtp_begin(mtp_engine * e, const std::vector<llama_token> & prompt, const mtp_gen_params & gp, std::string & err) {
    log_clear();
    e->active = false;
    e->cancel.store(false);

    if (prompt.empty()) {
        err = "the prompt is empty";
        return MTP_ERR_INVALID;
    }
    for (llama_token t : prompt) {
        if (t < 0 || t >= e->n_vocab) {
            err = "invalid token id " + std::to_string(t) + " in the prompt (vocabulary has " + std::to_string(e->n_vocab) + ")";
            return MTP_ERR_INVALID;
        }
    }
    if (gp.max_tokens < -1) {
        err = "max_tokens must be -1 or >= 0";
        return MTP_ERR_INVALID;
    }
    if (gp.speculate && (gp.n_max < 1 || gp.n_max > e->params.n_draft_capacity)) {
        err = "draft length must be within 1.." + std::to_string(e->params.n_draft_capacity) + ", got " + std::to_string(gp.n_max);
        return MTP_ERR_INVALID;
    }
    if (!(gp.p_min >= 0.0f && gp.p_min <= 1.0f) || !(gp.sampling.top_p > 0.0f && gp.sampling.top_p <= 1.0f) ||
        !(gp.sampling.min_p >= 0.0f && gp.sampling.min_p <= 1.0f) || !(gp.sampling.temp >= 0.0f) ||
        !(gp.sampling.repeat_penalty > 0.0f) || gp.sampling.repeat_last_n < -1 || !std::isfinite(gp.sampling.presence_penalty)) {
        err = "invalid sampling parameters";
        return MTP_ERR_INVALID;
    }
    if ((int32_t) prompt.size() > e->n_ctx) {
        err = "the prompt has " + std::to_string(prompt.size()) + " tokens but the context holds " + std::to_string(e->n_ctx);
        return MTP_ERR_CONTEXT;
    }

    e->gen = gp;
    const bool spec = gp.speculate && use_mtp(e);
    e->stats = mtp_stats();
    e->stats.speculative = spec;
    e->stats.n_prompt = (int32_t) prompt.size();
    e->stats.drafted_at.assign(spec ? gp.n_max : 0, 0);
    e->stats.accepted_at.assign(spec ? gp.n_max : 0, 0);

    const auto t0 = clock_type::now();

    // how much of the cache can stay: the target must end up holding prompt[0 .. n-2]
    const int32_t n_keep_max = (int32_t) prompt.size() - 1;
    int32_t keep = 0;
    while (keep < n_past(e) && keep < n_keep_max && e->cache[keep] == prompt[keep]) {
        ++keep;
    }
    // chained heads: a generation drafting with more heads than the cache has fed starts over
    const int32_t heads_want = spec && e->n_heads > 1 ? std::min(gp.n_max, e->n_heads) : 1;
    if (spec && (!e->mtp_valid || heads_want > e->heads_used)) {
        state_clear(e); // the head's state went stale in a plain generation: rebuild it
        keep = 0;
    }
    if (spec) {
        e->heads_used = heads_want;
    }
    if (keep < n_past(e)) {
        // re-decode from one position earlier so the hidden row h_{from} is known again (and, for a
        // separate-memory head, no earlier than the first position it has not seen)
        int32_t from = keep - 1;
        if (e->mtp_valid && !e->mem_shared) {
            from = std::min(from, e->mtp_len - 1);
        }
        // recurrent state cannot go back arbitrarily far: start over
        if (e->recurrent || from < 0 || !mtp_memory_can_resume(e->ctx_tgt, from) ||
            !llama_memory_seq_rm(llama_get_memory(e->ctx_tgt), 0, from, -1)) {
            state_clear(e);
            keep = 0;
        } else {
            e->cache.resize(from);
            if (e->mtp_valid && !e->mem_shared) {
                e->mtp_len = from + 1;
                llama_memory_seq_rm(llama_get_memory(e->ctx_dft), 0, e->mtp_len, -1);
            }
            e->h_rows.clear();
            e->h_pos0 = from;
        }
    }
    e->stats.n_prompt_reused = std::min(keep, n_past(e));

    // the MTP side follows the target only while speculating
    if (use_mtp(e)) {
        llama_set_embeddings_nextn(e->ctx_tgt, spec, /*masked*/ false);
        if (!spec) {
            e->mtp_valid = false;
        }
    }

    const int32_t from = n_past(e);
    mtp_status st = prefill(e, prompt.data() + from, n_keep_max - from, err);
    if (st != MTP_OK) {
        state_clear(e);
        return st;
    }
    e->id_last = prompt.back();
    e->stats.t_prompt_s = seconds_since(t0);

    mtp_sampler_init(e->smpl, gp.sampling, e->n_vocab);
    mtp_sampler_set_history(e->smpl, prompt);

    e->active = true;
    e->t_gen_start = clock_type::now();
    return MTP_OK;
}

// draft up to n tokens after id_last; fills e->draft (and e->q when sampling)
static mtp_status draft_tokens(mtp_engine * e, int32_t n, std::string & err) {
    e->draft.clear();
    if (e->n_heads > 1) {
        n = std::min(n, e->heads_used); // one draft position per trained head, as llama.cpp
    }
    if (n <= 0) {
        return MTP_OK;
    }
    const int32_t np = n_past(e);
    const int32_t from = e->mtp_len; // chained heads: the first cached position not yet fed
    const bool greedy = mtp_sampler_greedy(e->smpl);
    const float p_min = e->gen.p_min;

    mtp_status st;
    if (e->mem_shared) {
        llama_memory_seq_rm(llama_get_memory(e->ctx_dft), 0, np, -1);
        llama_batch_ext_clear(e->batch_dft);
        batch_add(e->batch_dft, e->id_last, np, h_row(e, np - 1), e->n_embd_h, true);
        const int32_t rc = process_timed(e->ctx_dft, e->batch_dft, e->t_dec_dft);
        st = rc == 0 ? MTP_OK : MTP_ERR_RUNTIME;
        if (rc != 0) err = "MTP drafter decode failed (llama.cpp code " + std::to_string(rc) + ")";
    } else {
        st = mtp_feed(e, np, e->id_last, err); // chained heads: head 0 (the default offset)
    }
    if (st != MTP_OK) {
        return st;
    }
    int32_t heads_run = 1;
    if (e->n_heads > 1) {
        const float * h0 = h_row(e, np - 1);
        e->h_chain.assign(h0, h0 + e->n_embd_h);
    }

    if ((int32_t) e->q.size() < n) {
        e->q.resize(n);
    }
    for (int32_t i = 0; i < n; ++i) {
        const float * logits = llama_get_logits_ith(e->ctx_dft, -1);
        if (!logits) {
            err = "MTP head produced no logits";
            return MTP_ERR_RUNTIME;
        }
        const auto t_choice = clock_type::now();
        llama_token d;
        if (greedy) {
            float p_top = 1.0f;
            d = mtp_sampler_argmax(e->smpl, logits, p_min > 0.0f ? &p_top : nullptr);
            if (p_top < p_min) {
                break;
            }
        } else {
            mtp_sampler_dist(e->smpl, logits, e->q[i]);
            if (e->q[i].front().p < p_min) {
                break;
            }
            d = mtp_sampler_draw(e->smpl, e->q[i]);
        }
        e->draft.push_back(d);
        mtp_sampler_push(e->smpl, d); // penalties for the next draft position see it
        e->t_choose += seconds_since(t_choice);
        if (i + 1 == n) {
            break;
        }
        // feed the draft token back with the head's own hidden row
        const float * h = llama_get_embeddings_nextn_ith(e->ctx_dft, -1);
        if (!h) {
            err = "MTP head produced no hidden state";
            return MTP_ERR_RUNTIME;
        }
        if (e->n_heads > 1) {
            // the next head re-reads the whole draft prefix with its own layer (KV is per layer)
            e->h_chain.insert(e->h_chain.end(), h, h + e->n_embd_h);
            st = mtp_chain_decode(e, from, i + 1, true, err);
            if (st != MTP_OK) {
                return st;
            }
            heads_run++;
            continue;
        }
        e->h_tmp.assign(h, h + e->n_embd_h);
        llama_batch_ext_clear(e->batch_dft);
        const llama_pos pos = e->mem_shared ? np : np + 1 + i;
        batch_add(e->batch_dft, d, pos, e->h_tmp.data(), e->n_embd_h, true);
        const int32_t rc = process_timed(e->ctx_dft, e->batch_dft, e->t_dec_dft);
        if (rc != 0) {
            err = "MTP head decode failed (llama.cpp code " + std::to_string(rc) + ")";
            return MTP_ERR_RUNTIME;
        }
    }
    for (size_t i = 0; i < e->draft.size(); ++i) {
        mtp_sampler_pop(e->smpl);
    }
    // chained heads that did not draft this time still need the positions up to id_last
    for (int32_t head = heads_run; head < e->heads_used && e->n_heads > 1; ++head) {
        st = mtp_chain_decode(e, from, head, false, err);
        if (st != MTP_OK) {
            return st;
        }
    }
    if (e->n_heads > 1) {
        llama_set_nextn_layer_offset(e->ctx_dft, 0);
    }
    // the rows before n_past-1 have been fed; keep h_{n_past-1} and the next verify's rows
    h_trim_front(e, np - 1);
    if (e->mem_shared) {
        llama_memory_seq_rm(llama_get_memory(e->ctx_dft), 0, np, -1);
    }
    return MTP_OK;
}

static void finish(mtp_engine * e, mtp_step_result & out, int32_t stop) {
    out.stop = stop;
    e->active = false;
    e->stats.t_gen_s = seconds_since(e->t_gen_start);
}

mtp_status mtp_step(mtp_engine * e, mtp_step_result & out, std::string & err) {
    out.tokens.clear();
    out.from_draft.clear();
    out.n_drafted = out.n_accepted = 0;
    out.stop = MTP_STOP_NONE;
    if (!e->active) {
        err = "no generation in progress";
        return MTP_ERR_STATE;
    }
    if (e->cancel.load()) {
        finish(e, out, MTP_STOP_CANCELLED);
        return MTP_OK;
    }
    const int32_t np = n_past(e);
    const int32_t left = e->gen.max_tokens < 0 ? INT32_MAX : e->gen.max_tokens - e->stats.n_generated;
    if (left <= 0) {
        finish(e, out, MTP_STOP_LENGTH);
        return MTP_OK;
    }
    if (np >= e->n_ctx) {
        finish(e, out, MTP_STOP_CONTEXT); // no position left for id_last
        return MTP_OK;
    }

    // 1. draft
    const double t_tgt0 = e->t_dec_tgt, t_dft0 = e->t_dec_dft, t_cho0 = e->t_choose;
    const bool spec = e->stats.speculative;
    const int32_t n_draft_max = spec ? std::min({ e->gen.n_max, e->n_ctx - np - 1, left - 1 }) : 0;
    e->draft.clear();
    mtp_status st = spec ? draft_tokens(e, n_draft_max, err) : MTP_OK;
    if (st != MTP_OK) {
        state_clear(e);
        return st;
    }
    const int32_t n_draft = (int32_t) e->draft.size();

    // 2. verify [id_last, d1..dn] in one target pass
    std::vector<llama_token> & verify = e->verify;
    verify.assign(1, e->id_last);
    verify.insert(verify.end(), e->draft.begin(), e->draft.end());
    st = target_decode(e, verify.data(), (int32_t) verify.size(), true, err);
    if (st != MTP_OK) {
        state_clear(e);
        return st;
    }
    e->stats.n_target_passes++;

    // 3. accept the agreeing prefix, choose the next token
    const auto t0 = clock_type::now();
    const bool greedy = mtp_sampler_greedy(e->smpl);
    int32_t n_acc = 0;
    llama_token next = LLAMA_TOKEN_NULL;
    for (int32_t i = 0; i <= n_draft; ++i) {
        const float * logits = llama_get_logits_ith(e->ctx_tgt, i);
        if (!logits) {
            err = "target produced no logits";
            state_clear(e);
            return MTP_ERR_RUNTIME;
        }
        llama_token t;
        bool accepted;
        if (greedy) {
            t = mtp_sampler_argmax(e->smpl, logits, nullptr);
            accepted = i < n_draft && t == e->draft[i];
        } else {
            mtp_sampler_dist(e->smpl, logits, e->p);
            if (i < n_draft) {
                accepted = mtp_sampler_accept(e->smpl, e->p, e->q[i], e->draft[i], &t);
            } else {
                t = mtp_sampler_draw(e->smpl, e->p);
                accepted = false;
            }
        }
        if (!accepted) {
            next = t;
            break;
        }
        e->stats.accepted_at[i]++;
        mtp_sampler_push(e->smpl, t);
        n_acc++;
    }
    mtp_sampler_push(e->smpl, next);
    for (int32_t i = 0; i < n_draft; ++i) {
        e->stats.drafted_at[i]++;
    }
    e->stats.n_drafted  += n_draft;
    e->stats.n_accepted += n_acc;
    e->t_choose += seconds_since(t0);
    e->stats.t_verify_s += e->t_dec_tgt - t_tgt0;
    e->stats.t_draft_s  += e->t_dec_dft - t_dft0;
    e->stats.t_sample_s += e->t_choose - t_cho0;
    out.n_drafted  = n_draft;
    out.n_accepted = n_acc;

    // emitted: the accepted drafts, then the target's own token; stop after an end-of-generation one
    int32_t stop = MTP_STOP_NONE;
    for (int32_t i = 0; i <= n_acc; ++i) {
        const llama_token t = i < n_acc ? e->draft[i] : next;
        out.tokens.push_back(t);
        out.from_draft.push_back(i < n_acc ? 1 : 0);
        if (llama_vocab_is_eog(e->vocab, t)) {
            stop = MTP_STOP_EOS;
            break;
        }
    }
    const int32_t n_out = (int32_t) out.tokens.size();
    e->stats.n_generated += n_out;

    // 4. roll back: the target keeps [.., id_last, tokens emitted before the last one]
    const int32_t keep = np + n_out;
    if (keep < n_past(e)) {
        if (!llama_memory_seq_rm(llama_get_memory(e->ctx_tgt), 0, keep, -1)) {
            err = "could not roll back the target state";
            state_clear(e);
            return MTP_ERR_RUNTIME;
        }
        e->cache.resize(keep);
        if (e->mtp_valid) {
            h_trim_back(e, keep);
        }
    }
    e->id_last = out.tokens.back();

    if (stop != MTP_STOP_NONE) {
        finish(e, out, stop);
    } else if (e->gen.max_tokens >= 0 && e->stats.n_generated >= e->gen.max_tokens) {
        finish(e, out, MTP_STOP_LENGTH);
    }
    return MTP_OK;
}

const mtp_stats & mtp_get_stats(mtp_engine * e) {
    if (e->active) {
        e->stats.t_gen_s = seconds_since(e->t_gen_start);
    }
    return e->stats;
}

void mtp_cancel(mtp_engine * e) {
    e->cancel.store(true);
}

void mtp_reset(mtp_engine * e) {
    state_clear(e);
}

mtp_status mtp_next_logits(mtp_engine * e, std::vector<float> & out, std::string & err) {
    const int32_t np = n_past(e);
    if (e->active || e->id_last == LLAMA_TOKEN_NULL) {
        err = "next_logits needs a finished generation";
        return MTP_ERR_STATE;
    }
    if (np >= e->n_ctx) {
        err = "the context is full";
        return MTP_ERR_CONTEXT;
    }
    // llama.cpp rolls recurrent state back only to a point inside the last decoded batch, so a
    // one-token probe is undone by saving and restoring the sequence state instead
    std::vector<uint8_t> saved;
    if (e->recurrent) {
        saved.resize(llama_state_seq_get_size_ext(e->ctx_tgt, 0, LLAMA_STATE_SEQ_FLAGS_NONE));
        saved.resize(llama_state_seq_get_data_ext(e->ctx_tgt, saved.data(), saved.size(), 0, LLAMA_STATE_SEQ_FLAGS_NONE));
    }
    const llama_token t = e->id_last;
    mtp_status st = target_decode(e, &t, 1, true, err);
    if (st != MTP_OK) {
        state_clear(e);
        return st;
    }
    const float * logits = llama_get_logits_ith(e->ctx_tgt, 0);
    out.assign(logits, logits + e->n_vocab);
    bool undone;
    if (e->recurrent) {
        llama_memory_seq_rm(llama_get_memory(e->ctx_tgt), 0, -1, -1);
        undone = llama_state_seq_set_data_ext(e->ctx_tgt, saved.data(), saved.size(), 0, LLAMA_STATE_SEQ_FLAGS_NONE) == saved.size();
    } else {
        undone = llama_memory_seq_rm(llama_get_memory(e->ctx_tgt), 0, np, -1);
    }
    if (!undone) {
        state_clear(e);
        err = "could not restore the target state";
        return MTP_ERR_RUNTIME;
    }
    e->cache.resize(np);
    if (e->mtp_valid) {
        h_trim_back(e, np);
    }
    return MTP_OK;
}
