// Memory accounting over llama.cpp's staging breakdown API and ggml's device registry.
#include "memory.h"

#include "engine.h"
#include "gguf_check.h"
#include "llama_staging.h"

#include "ggml-backend.h"

#include <algorithm>
#include <mutex>

static bool mtp_memory_dry_run_impl(const mtp_model_params & p, std::vector<mtp_memory_entry> & out, std::string & err);

void mtp_memory_collect(const llama_context * ctx, const char * which, bool shared_model,
                        std::vector<mtp_memory_entry> & out) {
    if (!ctx) {
        return;
    }
    for (const auto & [buft, mb] : llama_get_memory_breakdown(ctx)) {
        mtp_memory_entry m;
        m.context      = which;
        m.buffer       = buft ? ggml_backend_buft_name(buft) : "";
        ggml_backend_dev_t dev = buft ? ggml_backend_buft_get_device(buft) : nullptr;
        m.device       = dev ? ggml_backend_dev_name(dev) : "";
        m.device_description = dev ? ggml_backend_dev_description(dev) : "";
        m.host         = buft ? ggml_backend_buft_is_host(buft) : true;
        m.shared_model = shared_model;
        m.model        = mb.model;
        m.state        = mb.context;
        m.compute      = mb.compute;
        out.push_back(m);
    }
}

std::vector<mtp_device_memory> mtp_memory_devices() {
    std::vector<mtp_device_memory> out;
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        mtp_device_memory d;
        d.name        = ggml_backend_dev_name(dev);
        d.description = ggml_backend_dev_description(dev);
        switch (ggml_backend_dev_type(dev)) {
            case GGML_BACKEND_DEVICE_TYPE_CPU:  d.type = "cpu";   break;
            case GGML_BACKEND_DEVICE_TYPE_GPU:  d.type = "gpu";   break;
            case GGML_BACKEND_DEVICE_TYPE_IGPU: d.type = "igpu";  break;
            default:                            d.type = "accel"; break;
        }
        size_t free = 0, total = 0;
        ggml_backend_dev_memory(dev, &free, &total);
        d.free  = free;
        d.total = total;
        out.push_back(d);
    }
    return out;
}

bool mtp_memory_can_resume(llama_context * ctx, int32_t pos) {
    const int32_t n_swa = llama_model_n_swa(llama_get_model(ctx));
    if (n_swa <= 0 || pos <= 0) {
        return true;
    }
    const llama_pos pos_min = llama_memory_seq_pos_min(llama_get_memory(ctx), 0);
    // the token at `pos` attends to positions > pos - n_swa; they must all still be held
    return pos_min <= std::max(0, pos - n_swa);
}

// The target context, as llama.cpp's tools create theirs (common_context_params_to_llama with
// common_params' defaults; llama-cli, llama-completion, llama-speculative-simple). Every field
// left at llama_context_default_params() is what those tools use too: n_seq_max 1, type_k/type_v
// F16, offload_kqv, op_offload, kv_unified off, rope/yarn/pooling/attention from the model,
// n_outputs_max_per_seq 1, no embeddings, no callbacks. Deliberate differences:
//  - swa_full off, as common_params (llama_context_default_params() turns it on): the
//    sliding-window cache holds pad256(n_swa + n_ubatch) cells, not the whole context.
//    Speculative rollback stays within the last decoded ubatch, whose overwritten cells were
//    already outside every later token's window; prompt-cache reuse that reaches further back is
//    refused by mtp_memory_can_resume.
//  - n_batch = n_ubatch = max(p.n_batch, cap + 1) (512 by default) where llama.cpp has n_batch
//    2048, n_ubatch 512: the compute buffer and the SWA cache follow n_ubatch, so they are the
//    same; the prompt is fed n_batch at a time.
//  - n_outputs_max = cap + 1 (one verify pass) where llama.cpp reserves n_batch outputs: a
//    smaller output buffer and compute graph.
//  - n_rs_seq = cap only when an MTP head will run (llama.cpp: n_max whenever draft-mtp is asked
//    for), 0 otherwise: the recurrent-state snapshots for rolling back rejected drafts.
//  - no_perf on (mtprun keeps its own timings); threads = physical cores as cpu_get_num_math.
llama_context_params mtp_target_context_params(const mtp_model_params & p, bool mtp_possible, int32_t n_threads) {
    const int32_t cap = p.n_draft_capacity;
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx           = (uint32_t) p.n_ctx;
    cp.n_batch         = (uint32_t) std::max(p.n_batch, cap + 1);
    cp.n_ubatch        = cp.n_batch;
    cp.n_seq_max       = 1;
    cp.n_threads       = n_threads;
    cp.n_threads_batch = n_threads;
    cp.flash_attn_type = (llama_flash_attn_type) p.flash_attn;
    cp.no_perf         = true;
    cp.swa_full        = false;
    cp.n_rs_seq        = mtp_possible ? (uint32_t) cap : 0;
    cp.n_outputs_max   = (uint32_t) (cap + 1);
    return cp;
}

// The MTP context as common_speculative_init_result makes it (the target's parameters, its n_ctx,
// no snapshots, ctx_other = the target), except: one output row, since every head decode asks for
// the last position's logits only. n_ubatch stays the target's: the catch-up after a prompt feeds
// the head n_batch rows at a time.
llama_context_params mtp_draft_context_params(const llama_context_params & cp, llama_context * ctx_tgt) {
    llama_context_params dp = cp;
    dp.ctx_type      = LLAMA_CONTEXT_TYPE_MTP;
    dp.ctx_other     = ctx_tgt;
    dp.n_ctx         = llama_n_ctx(ctx_tgt);
    dp.n_rs_seq      = 0;
    dp.n_outputs_max = 1;
    return dp;
}

namespace {

// llama.cpp's log during a dry run: kept quiet (the real load logs the same), its last error kept
struct dry_run_log {
    ggml_log_callback prev_cb   = nullptr;
    void *            prev_data = nullptr;
    std::string       last_error;

    dry_run_log() {
        llama_log_get(&prev_cb, &prev_data);
        llama_log_set([](ggml_log_level level, const char * text, void * data) {
            if (level == GGML_LOG_LEVEL_ERROR && text) {
                std::string & e = static_cast<dry_run_log *>(data)->last_error;
                e = text;
                while (!e.empty() && (e.back() == '\n' || e.back() == ' ')) e.pop_back();
            }
        }, this);
    }
    ~dry_run_log() { llama_log_set(prev_cb, prev_data); }
};

} // namespace

bool mtp_memory_dry_run(const mtp_model_params & p, std::vector<mtp_memory_entry> & out, std::string & err) {
    static std::once_flag once;
    std::call_once(once, []() { llama_backend_init(); });
    dry_run_log log;
    bool ok = mtp_memory_dry_run_impl(p, out, err);
    if (!ok && !log.last_error.empty()) {
        err += ": " + log.last_error;
    }
    return ok;
}

static bool mtp_memory_dry_run_impl(const mtp_model_params & p, std::vector<mtp_memory_entry> & out, std::string & err) {
    const bool has_sidecar = !p.draft_path.empty();
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = p.n_gpu_layers;
    mp.no_alloc     = true;
    mp.load_mode    = LLAMA_LOAD_MODE_NONE;
    mp.load_mtp     = p.mtp && !has_sidecar;
    mtp_placement pl; // the engine's devices (--rpc, -dev, -devd, -ts, -sm)
    bool invalid = false;
    gguf_meta meta;
    if (!mtp_placement_init(p.placement, pl, err, invalid) || !gguf_meta_read(p.path, meta, err) ||
        !mtp_placement_apply_target(pl, mp, meta.n_layer, meta.n_nextn, mp.load_mtp, err)) {
        return false;
    }
    llama_model * tgt = llama_model_load_from_file(p.path.c_str(), mp);
    if (!tgt) {
        err = "llama.cpp could not read " + p.path;
        return false;
    }
    llama_model * dft = nullptr;
    llama_context * ctx = nullptr;
    llama_context * dctx = nullptr;
    bool ok = false;
    const bool mtp_possible = p.mtp && (has_sidecar || llama_model_n_layer_nextn(tgt) > 0);
    llama_context_params cp = mtp_target_context_params(p, mtp_possible, 1);
    ctx = llama_init_from_model(tgt, cp);
    if (!ctx) {
        err = "llama.cpp could not size the context for " + p.path;
    } else {
        mtp_memory_collect(ctx, "target", false, out);
        ok = true;
        if (mtp_possible) {
            if (has_sidecar) {
                llama_model_params dmp = mp;
                dmp.load_mtp = true;
                dmp.tensor_buft_overrides = nullptr;
                mtp_placement_apply_draft(pl, dmp);
                dft = llama_model_load_from_file(p.draft_path.c_str(), dmp);
            }
            if (has_sidecar && !dft) {
                err = "llama.cpp could not read " + p.draft_path;
                ok = false;
            } else {
                dctx = llama_init_from_model(dft ? dft : tgt, mtp_draft_context_params(cp, ctx));
                if (!dctx) {
                    err = "llama.cpp could not size the MTP context";
                    ok = false;
                } else {
                    mtp_memory_collect(dctx, "draft", dft == nullptr, out);
                }
            }
        }
    }
    if (dctx) llama_free(dctx);
    if (ctx)  llama_free(ctx);
    if (dft)  llama_model_free(dft);
    llama_model_free(tgt);
    return ok;
}
