// mtprun engine: the MTP speculative loop, written on llama.cpp's public API plus three staging
// functions (llama_staging.h). See engine.h for the API.
//
// Terms. The target context holds the conversation: `cache` lists the tokens in its memory
// (positions 0..n_past-1) and `id_last` is the newest token, chosen but not yet decoded. The MTP
// head's side (its two memory layouts and the window of target hidden rows) is the drafter
// (drafter.h); how many tokens to draft each step is the policy's choice (policy.h).
//
// One step, as llama.cpp's speculative-simple: choose n (0 = a plain step) -> draft up to n tokens
// -> decode [id_last, d1..dn] on the target in one batch -> accept the agreeing prefix (greedy:
// equal argmax; sampling: min(1, p/q) with residual resampling) -> remove rejected positions from
// the target memory (hybrid models roll their recurrent state back through llama.cpp's per-token
// snapshots, n_rs_seq) -> the next token becomes id_last -> the policy learns from the step.

#include "engine.h"
#include "drafter.h"
#include "llama_staging.h"
#include "policy.h"
#include "sampling.h"

#include "ggml-backend.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <thread>

#include "gguf_check.h"
#include "log.h"

std::string mtp_build_commit()   { return MTPRUN_GGML_COMMIT; }
std::string mtp_runtime_commit() { return ggml_commit(); }

int32_t mtp_choose_draft_length(const std::vector<double> & t_target, double t_head, const std::vector<double> & acceptance,
                                int32_t n_max) {
    return mtp_policy_best_n(t_target, t_head, acceptance, n_max);
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
    mtp_drafter     * drafter   = nullptr; // the MTP head's state (null: plain decoding only)
    mtp_placement     placement;           // devices of the models (their params point into it)

    int32_t n_vocab   = 0;
    int32_t n_ctx     = 0;
    int32_t n_batch   = 0;
    bool    recurrent = false; // target memory can only roll back a few tokens

    // conversation state
    std::vector<llama_token> cache;   // tokens in the target memory, positions 0..n_past-1
    llama_token id_last = LLAMA_TOKEN_NULL;

    // the draft-length policy's estimates of this machine and text, kept across generations
    mtp_policy policy;

    // generation state
    bool             active = false;
    mtp_gen_params   gen;
    mtp_sampler      smpl;
    mtp_stats        stats;
    std::atomic<bool> cancel{false};
    clock_type::time_point t_gen_start;
    clock_type::time_point t_step_end; // when the last step returned (the caller's time follows)
    bool             stepped = false;  // a step of this generation has returned
    int32_t          n_stepped_tokens = 0; // how many tokens it returned (the caller's time since is theirs)

    // scratch
    mtp_draft_out draft;
    std::vector<llama_token>   verify;
    std::vector<mtp_candidate> p;

    double t_dec_tgt = 0; // seconds in target decodes
};

static int32_t n_past(const mtp_engine * e) { return (int32_t) e->cache.size(); }

static bool mtp_active(const mtp_engine * e) { return e->drafter != nullptr; }

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
        return "llama.cpp runs a single MTP head for architecture '" + m.arch + "', this model has " + std::to_string(m.n_nextn);
    }
    return "";
}

// forget everything cached
static void state_clear(mtp_engine * e) {
    llama_memory_clear(llama_get_memory(e->ctx_tgt), true);
    if (e->drafter) {
        mtp_drafter_clear(e->drafter);
    }
    e->cache.clear();
    e->id_last = LLAMA_TOKEN_NULL;
    e->active  = false;
}

// decode tokens [pos0 .. pos0+n) on the target; the drafter keeps their hidden rows.
// outputs: logits for every token if all_logits, else for the last one only
static mtp_status target_decode(mtp_engine * e, const llama_token * tokens, int32_t n, bool all_logits, std::string & err) {
    const int32_t pos0 = n_past(e);
    llama_batch_ext_clear(e->batch_tgt);
    for (int32_t i = 0; i < n; ++i) {
        if (!mtp_batch_add(e->batch_tgt, tokens[i], pos0 + i, nullptr, 0, all_logits || i == n - 1)) {
            err = "invalid token id " + std::to_string(tokens[i]) + " (vocabulary has " + std::to_string(e->n_vocab) + ")";
            return MTP_ERR_INVALID;
        }
    }
    const auto t0 = clock_type::now();
    const int32_t rc = llama_process(e->ctx_tgt, LLAMA_PROCESS_TYPE_DECODE, e->batch_tgt);
    e->t_dec_tgt += seconds_since(t0);
    if (rc != 0) {
        const std::string cause = log_last_error();
        err = "target decode failed (llama.cpp code " + std::to_string(rc) + ")" + (cause.empty() ? "" : ": " + cause);
        return MTP_ERR_RUNTIME;
    }
    if (e->drafter) {
        const mtp_status st = mtp_drafter_add_rows(e->drafter, pos0, n, err);
        if (st != MTP_OK) {
            return st;
        }
    }
    e->cache.insert(e->cache.end(), tokens, tokens + n);
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
        if (st == MTP_OK && e->drafter) {
            st = mtp_drafter_catch_up(e->drafter, e->cache, err);
        }
        if (st != MTP_OK) {
            return st;
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
    mtp_drafter_free(e->drafter);
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
    mtp_set_verbose(params.verbose);
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

    bool invalid = false;
    if (!mtp_placement_init(params.placement, e->placement, err, invalid)) {
        return init_fail(e, invalid ? MTP_ERR_INVALID : MTP_ERR_DEVICE, status);
    }
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = params.n_gpu_layers;
    mp.load_mtp     = params.mtp && !has_sidecar && meta_tgt.n_nextn > 0 && mtp_unsupported(meta_tgt).empty();
    if (!mtp_placement_apply_target(e->placement, mp, meta_tgt.n_layer, meta_tgt.n_nextn, mp.load_mtp, err)) {
        return init_fail(e, MTP_ERR_INVALID, status);
    }
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
    const bool mtp_possible = params.mtp && (has_sidecar || meta_tgt.n_nextn > 0);
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
    if (!params.mtp) {
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
            mtp_placement_apply_draft(e->placement, dmp);
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
        mtp_drafter_params dfp;
        dfp.ctx_tgt  = e->ctx_tgt;
        dfp.ctx_dft  = e->ctx_dft;
        dfp.n_embd_h = llama_model_n_embd_out(e->model_dft ? e->model_dft : e->model_tgt);
        if (dfp.n_embd_h != llama_model_n_embd_out(e->model_tgt)) {
            err = "the MTP head's input width does not match the target's hidden state";
            return init_fail(e, MTP_ERR_MODEL, status);
        }
        dfp.mem_shared = llama_get_ctx_other(e->ctx_dft) == e->ctx_tgt && info.mtp_kind == MTP_KIND_SIDECAR;
        if (!dfp.mem_shared && n_nextn > 1 && arch_chains(meta_tgt.arch)) {
            dfp.n_heads = n_nextn; // chained heads: head i drafts position i
        }
        llama_set_embeddings_nextn(e->ctx_tgt, true, /*masked*/ false);
        llama_set_embeddings_nextn(e->ctx_dft, true, /*masked*/ true);
        e->drafter = mtp_drafter_init(dfp);
    }
    mtp_policy_init(e->policy, cap);
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
    info.mtp_chain     = e->drafter && mtp_drafter_n_heads(e->drafter) > 1;
    {
        const char * tmpl = llama_model_chat_template(e->model_tgt, nullptr);
        info.chat_template = tmpl ? tmpl : "";
    }
    info.bos_token     = token_text(e->vocab, llama_vocab_bos(e->vocab));
    info.eos_token     = token_text(e->vocab, llama_vocab_eos(e->vocab));
    info.add_bos       = llama_vocab_get_add_bos(e->vocab);
    info.backend       = backend_description();
    info.system_info   = llama_print_system_info();

    e->stats.mtp = false;
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
    if (gp.spec.enabled && (gp.spec.n_max < 1 || gp.spec.n_max > e->params.n_draft_capacity)) {
        err = "draft length must be within 1.." + std::to_string(e->params.n_draft_capacity) + ", got " + std::to_string(gp.spec.n_max);
        return MTP_ERR_INVALID;
    }
    if (!(gp.spec.p_min >= 0.0f && gp.spec.p_min <= 1.0f) || !(gp.sampling.top_p > 0.0f && gp.sampling.top_p <= 1.0f) ||
        !(gp.sampling.min_p >= 0.0f && gp.sampling.min_p <= 1.0f) || !(gp.sampling.temperature >= 0.0f) ||
        !(gp.sampling.repeat_penalty > 0.0f) || gp.sampling.repeat_last_n < -1 || !std::isfinite(gp.sampling.presence_penalty)) {
        err = "invalid sampling parameters";
        return MTP_ERR_INVALID;
    }
    if ((int32_t) prompt.size() > e->n_ctx) {
        err = "the prompt has " + std::to_string(prompt.size()) + " tokens but the context holds " + std::to_string(e->n_ctx);
        return MTP_ERR_CONTEXT;
    }

    e->gen = gp;
    const bool spec = gp.spec.enabled && mtp_active(e);
    const int32_t n_max = spec ? gp.spec.n_max : 0;
    e->stats = mtp_stats();
    e->stats.mtp = spec;
    e->stats.adaptive    = spec && gp.spec.adaptive;
    e->stats.n_max       = n_max;
    e->stats.n_prompt_tokens = (int32_t) prompt.size();
    e->stats.drafted_by_position.assign(n_max, 0);
    e->stats.accepted_by_position.assign(n_max, 0);
    e->stats.steps_by_draft_length.assign(n_max + 1, 0);

    const auto t0 = clock_type::now();

    // how much of the cache can stay: the target must end up holding prompt[0 .. n-2]
    const int32_t n_keep_max = (int32_t) prompt.size() - 1;
    int32_t keep = 0;
    while (keep < n_past(e) && keep < n_keep_max && e->cache[keep] == prompt[keep]) {
        ++keep;
    }
    // chained heads: a generation drafting with more heads than the cache has fed starts over
    const int32_t n_heads    = e->drafter ? mtp_drafter_n_heads(e->drafter) : 1;
    const int32_t heads_want = spec && n_heads > 1 ? std::min(gp.spec.n_max, n_heads) : 1;
    if (spec && (!mtp_drafter_valid(e->drafter) || heads_want > mtp_drafter_heads_used(e->drafter))) {
        state_clear(e); // the head's state went stale in a plain generation: rebuild it
        keep = 0;
    }
    if (spec) {
        mtp_drafter_use_heads(e->drafter, heads_want);
    }
    if (keep < n_past(e)) {
        // re-decode from one position earlier so the hidden row h_{from} is known again (and, for
        // the head, no later than the first position it has not seen)
        const int32_t from = e->drafter ? mtp_drafter_reuse_from(e->drafter, keep) : keep - 1;
        // recurrent state cannot go back arbitrarily far: start over
        if (e->recurrent || from < 0 || !mtp_memory_can_resume(e->ctx_tgt, from) ||
            !llama_memory_seq_rm(llama_get_memory(e->ctx_tgt), 0, from, -1)) {
            state_clear(e);
            keep = 0;
        } else {
            e->cache.resize(from);
            if (e->drafter) {
                mtp_drafter_rewind(e->drafter, from);
            }
        }
    }
    e->stats.n_prompt_reused = std::min(keep, n_past(e));

    // the MTP side follows the target only while speculating
    if (mtp_active(e)) {
        llama_set_embeddings_nextn(e->ctx_tgt, spec, /*masked*/ false);
        if (!spec) {
            mtp_drafter_invalidate(e->drafter);
        }
    }

    const int32_t from = n_past(e);
    mtp_status st = prefill(e, prompt.data() + from, n_keep_max - from, err);
    if (st != MTP_OK) {
        state_clear(e);
        return st;
    }
    e->id_last = prompt.back();
    e->stats.prompt_seconds = seconds_since(t0);

    mtp_sampler_init(e->smpl, gp.sampling, e->n_vocab);
    mtp_sampler_set_history(e->smpl, prompt);

    e->active  = true;
    e->stepped = false;
    e->t_gen_start = clock_type::now();
    return MTP_OK;
}

static void finish(mtp_engine * e, mtp_step_result & out, mtp_stop stop) {
    out.stop = stop;
    e->active = false;
    e->stats.generation_seconds = seconds_since(e->t_gen_start);
}

// the draft length for this step: the policy's choice (adaptive) or the fixed n_max
static int32_t draft_length(mtp_engine * e) {
    if (!e->stats.mtp) {
        return 0;
    }
    // chained heads: one draft position per head in use, as llama.cpp (never past the last head)
    const int32_t n_max = std::min(e->gen.spec.n_max, mtp_drafter_max_draft(e->drafter));
    return e->gen.spec.adaptive ? mtp_policy_next(e->policy, n_max) : n_max;
}

// the target's logits at verify rows 0..n_draft: accept the agreeing prefix of the draft (greedy:
// equal argmax; sampling: min(1, p/q) with residual resampling); *next is the target's own token
static mtp_status accept_prefix(mtp_engine * e, int32_t n_draft, int32_t & n_acc, llama_token & next, std::string & err) {
    const bool greedy = mtp_sampler_greedy(e->smpl);
    const std::vector<llama_token> & draft = e->draft.tokens;
    n_acc = 0;
    next  = LLAMA_TOKEN_NULL;
    for (int32_t i = 0; i <= n_draft; ++i) {
        const float * logits = llama_get_logits_ith(e->ctx_tgt, i);
        if (!logits) {
            err = "target produced no logits";
            return MTP_ERR_RUNTIME;
        }
        llama_token t;
        bool accepted;
        if (greedy) {
            t = mtp_sampler_argmax(e->smpl, logits, nullptr);
            accepted = i < n_draft && t == draft[i];
        } else {
            mtp_sampler_dist(e->smpl, logits, e->p);
            if (i < n_draft) {
                accepted = mtp_sampler_accept(e->smpl, e->p, e->draft.q[i], draft[i], &t);
            } else {
                t = mtp_sampler_draw(e->smpl, e->p);
                accepted = false;
            }
        }
        if (!accepted) {
            next = t;
            break;
        }
        mtp_sampler_push(e->smpl, t);
        n_acc++;
    }
    mtp_sampler_push(e->smpl, next);
    return MTP_OK;
}

// the tokens a step emits: the accepted drafts, then the target's own token; an end-of-generation
// token ends them
static mtp_stop emit(mtp_engine * e, int32_t n_acc, llama_token next, mtp_step_result & out) {
    for (int32_t i = 0; i <= n_acc; ++i) {
        const llama_token t = i < n_acc ? e->draft.tokens[i] : next;
        out.tokens.push_back(t);
        out.from_draft.push_back(i < n_acc ? 1 : 0);
        if (llama_vocab_is_eog(e->vocab, t)) {
            return MTP_STOP_EOS;
        }
    }
    return MTP_STOP_NONE;
}

// the target keeps [.., id_last, the emitted tokens but the last]; the last becomes id_last
static mtp_status roll_back(mtp_engine * e, const mtp_step_result & out, int32_t np, bool drafted, std::string & err) {
    const int32_t keep = np + (int32_t) out.tokens.size();
    if (keep < n_past(e)) {
        if (!llama_memory_seq_rm(llama_get_memory(e->ctx_tgt), 0, keep, -1)) {
            err = "could not roll back the target state";
            return MTP_ERR_RUNTIME;
        }
        e->cache.resize(keep);
        if (e->drafter) {
            mtp_drafter_rollback(e->drafter, keep);
        }
    }
    e->id_last = out.tokens.back();
    return e->stats.mtp ? mtp_drafter_accept(e->drafter, e->cache, drafted, err) : MTP_OK;
}

// statistics and the policy's measurements of one step (t_step includes t_between, the caller's
// time since the previous step)
static void account(mtp_engine * e, int32_t n_draft, int32_t n_acc, double t_verify, double t_step,
                    double t_accept, double t_between) {
    mtp_stats & s = e->stats;
    const mtp_draft_out & d = e->draft;
    for (int32_t i = 0; i < n_draft; ++i) {
        s.drafted_by_position[i]++;
        s.accepted_by_position[i] += i < n_acc ? 1 : 0;
    }
    s.n_drafted  += n_draft;
    s.n_accepted += n_acc;
    s.n_target_passes++;
    s.steps_by_draft_length[std::min(n_draft, (int32_t) s.steps_by_draft_length.size() - 1)]++;
    s.verify_seconds += t_verify;
    s.draft_seconds += d.t_decode;
    s.sample_seconds += d.t_choose + t_accept;
    if (!s.mtp) {
        return;
    }
    // (a draft after a plain stretch catches the head up on it first: not one decode's time each)
    const bool head_alone = d.n_caught <= e->gen.spec.n_max + 1;
    mtp_policy_observe(e->policy, n_draft, n_acc, t_step, t_verify, head_alone ? d.n_decodes : 0, d.t_decode + d.t_choose,
                       t_accept, t_between, e->stepped ? e->n_stepped_tokens : 0);
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
    const auto t_step0 = clock_type::now();
    // the caller's time between steps is part of every step's cost
    const double t_between = e->stepped ? std::chrono::duration<double>(t_step0 - e->t_step_end).count() : 0.0;

    // 1. draft up to n tokens (n = 0: a plain step)
    const int32_t n = std::min({ draft_length(e), e->n_ctx - np - 1, left - 1 });
    e->draft.tokens.clear();
    e->draft.n_decodes = e->draft.n_caught = 0;
    e->draft.t_decode = e->draft.t_choose = 0;
    mtp_status st = n > 0 ? mtp_drafter_draft(e->drafter, e->cache, e->id_last, n, e->smpl, e->gen.spec.p_min, e->draft, err) : MTP_OK;
    const int32_t n_draft = (int32_t) e->draft.tokens.size();

    // 2. verify [id_last, d1..dn] in one target pass
    const double t_tgt0 = e->t_dec_tgt;
    if (st == MTP_OK) {
        e->verify.assign(1, e->id_last);
        e->verify.insert(e->verify.end(), e->draft.tokens.begin(), e->draft.tokens.end());
        st = target_decode(e, e->verify.data(), n_draft + 1, true, err);
    }
    const double t_verify = e->t_dec_tgt - t_tgt0;

    // 3. accept the agreeing prefix and the target's next token
    const auto t_acc0 = clock_type::now();
    int32_t n_acc = 0;
    llama_token next = LLAMA_TOKEN_NULL;
    if (st == MTP_OK) {
        st = accept_prefix(e, n_draft, n_acc, next, err);
    }
    const double t_accept = seconds_since(t_acc0);

    // 4. emit, roll the rejected positions back
    mtp_stop stop = MTP_STOP_NONE;
    const double t_catch_up0 = e->drafter ? mtp_drafter_t_catch_up(e->drafter) : 0.0;
    if (st == MTP_OK) {
        stop = emit(e, n_acc, next, out);
        st = roll_back(e, out, np, n > 0, err); // (the head catches up here after many pending rows)
    }
    e->stats.draft_seconds += e->drafter ? mtp_drafter_t_catch_up(e->drafter) - t_catch_up0 : 0.0;
    if (st != MTP_OK) {
        state_clear(e);
        return st;
    }
    out.n_drafted  = n_draft;
    out.n_accepted = n_acc;
    e->stats.n_generated += (int32_t) out.tokens.size();
    account(e, n_draft, n_acc, t_verify, seconds_since(t_step0) + t_between, t_accept, t_between);

    if (stop != MTP_STOP_NONE) {
        finish(e, out, stop);
    } else if (e->gen.max_tokens >= 0 && e->stats.n_generated >= e->gen.max_tokens) {
        finish(e, out, MTP_STOP_LENGTH);
    }
    e->stepped    = true;
    e->n_stepped_tokens = (int32_t) out.tokens.size();
    e->t_step_end = clock_type::now();
    return MTP_OK;
}

const mtp_stats & mtp_get_stats(mtp_engine * e) {
    if (e->active) {
        e->stats.generation_seconds = seconds_since(e->t_gen_start);
    }
    // what the policy believes now (for the draft lengths this generation could use)
    const int32_t n_max = std::max(e->stats.n_max, 0);
    if (mtp_active(e) && n_max > 0) {
        e->stats.policy = mtp_policy_estimate(e->policy, n_max);
    }
    return e->stats;
}

void mtp_cancel(mtp_engine * e) {
    e->cancel.store(true);
}

void mtp_reset(mtp_engine * e) {
    state_clear(e);
}

mtp_status mtp_set_policy_costs(mtp_engine * e, const std::vector<double> & t_target, double t_head, bool pin, std::string & err) {
    if (e->active) {
        err = "the policy's costs cannot change during a generation";
        return MTP_ERR_STATE;
    }
    if (!mtp_policy_costs_valid(t_target, t_head)) {
        err = "the policy's costs must be positive";
        return MTP_ERR_INVALID;
    }
    mtp_policy_set_costs(e->policy, t_target, t_head, pin);
    return MTP_OK;
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
    if (e->drafter) {
        mtp_drafter_rollback(e->drafter, np);
    }
    return MTP_OK;
}
