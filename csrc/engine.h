// mtprun engine: the MTP speculative decoding loop on llama.cpp's public API.
//
// Plain C++ (no Python): an opaque engine with init/free, begin (prefill a prompt), step (one
// speculative step: draft with the MTP head, verify in one target batch, accept, roll back) and
// stats. Functions return an mtp_status and fill an error string; no exception leaves them.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "devices.h"
#include "llama.h"
#include "memory.h"
#include "policy.h"

enum mtp_status {
    MTP_OK            = 0,
    MTP_ERR_INVALID   = 1, // a parameter or input value is out of range
    MTP_ERR_MODEL     = 2, // a model file is missing, not GGUF, damaged, or does not fit its drafter
    MTP_ERR_CONTEXT   = 3, // the prompt does not fit in the context
    MTP_ERR_RUNTIME   = 4, // llama.cpp failed while computing (the engine resets its cache)
    MTP_ERR_STATE     = 5, // call out of order (e.g. step without begin)
    MTP_ERR_DEVICE    = 6, // a device is unavailable: no RPC support, an RPC server unreachable or of another version
};

enum mtp_head_kind {
    MTP_KIND_NONE     = 0, // the model has no MTP head
    MTP_KIND_EMBEDDED = 1, // MTP layers inside the target GGUF (Qwen3.5/3.6 nextn layers, ...)
    MTP_KIND_SIDECAR  = 2, // a separate drafter GGUF (Gemma 4 assistant, mtp-*.gguf)
};

enum mtp_stop {
    MTP_STOP_NONE      = 0, // generation goes on
    MTP_STOP_EOS       = 1, // an end-of-generation token was produced
    MTP_STOP_LENGTH    = 2, // the token budget is spent
    MTP_STOP_CONTEXT   = 3, // the context is full
    MTP_STOP_CANCELLED = 4, // mtp_engine_cancel was called
};

struct mtp_model_params {
    std::string path;              // target GGUF
    std::string draft_path;        // drafter sidecar GGUF; empty: embedded MTP layers or none
    int32_t n_ctx            = 4096; // 0: the model's training context
    int32_t n_batch          = 512;
    int32_t n_threads        = 0;    // 0: physical cores
    int32_t n_gpu_layers     = -1;   // -1: all
    int32_t flash_attn       = -1;   // -1 auto, 0 off, 1 on
    bool    mtp              = true; // load the MTP head; false: plain decoding only, MTP layers are not loaded
    int32_t n_draft_capacity = 6;    // the largest n_max a generation may ask for (sizes the rollback snapshots)
    bool    verbose          = false; // let llama.cpp's own log through to stderr (process-wide)
    mtp_placement_params placement;   // --rpc, -dev, -devd, -ts, -sm (devices.h)
};

struct mtp_model_info {
    std::string arch;
    std::string description;
    uint64_t    size_bytes   = 0;
    uint64_t    n_params     = 0;
    int32_t     n_vocab      = 0;
    int32_t     n_ctx        = 0;
    int32_t     n_ctx_train  = 0;
    int32_t     n_layer      = 0;
    int32_t     n_embd       = 0;
    int32_t     n_layer_nextn = 0;
    mtp_head_kind mtp_kind   = MTP_KIND_NONE; // what the files offer
    bool        mtp_active   = false;         // whether the MTP head is loaded (generations can draft)
    std::string mtp_note;                     // why MTP is off, when it is
    bool        recurrent    = false;         // hybrid/recurrent target (rollback via snapshots)
    bool        mtp_chain    = false;         // n_layer_nextn > 1 heads chained: head i drafts position i
    std::string chat_template;                // empty: none in the GGUF
    std::string bos_token;
    std::string eos_token;
    bool        add_bos      = false;
    std::string backend;
    std::string system_info;                  // llama.cpp's CPU/backend feature line
    std::vector<mtp_memory_entry> memory;     // what the contexts allocated (llama.cpp's breakdown)
};

struct mtp_sampling_params {
    float    temperature      = 0.8f;  // <= 0: greedy
    int32_t  top_k            = 40;    // <= 0: whole vocabulary
    float    top_p            = 0.95f; // 1: off
    float    min_p            = 0.05f; // 0: off
    float    repeat_penalty   = 1.0f;  // 1: off
    int32_t  repeat_last_n    = 64;    // -1: the whole context
    float    presence_penalty = 0.0f;  // 0: off
    uint64_t seed             = 0;
};

// how a generation drafts (Python: SpecConfig); the values are validated by the Python config
// classes, the engine only guards against what would break it (n_max beyond the capacity)
struct mtp_spec_params {
    bool    enabled  = true; // draft with the MTP head when it is loaded (mtp_model_info::mtp_active)
    int32_t n_max    = 6;    // draft tokens per step, 1..n_draft_capacity (adaptive: the ceiling)
    bool    adaptive = true; // the policy picks 0..n_max per step from measured costs and acceptance
    float   p_min    = 0.0f; // stop drafting below this head confidence
};

// one generation's settings (Python: GenerationConfig)
struct mtp_gen_params {
    int32_t             max_tokens = -1;  // -1: unlimited
    mtp_sampling_params sampling;
    mtp_spec_params     spec;
};

struct mtp_step_result {
    std::vector<llama_token> tokens;     // tokens emitted by this step, in order
    std::vector<uint8_t>     from_draft; // per token: 1 if it was an accepted draft
    int32_t                  n_drafted  = 0;
    int32_t                  n_accepted = 0;
    mtp_stop                 stop       = MTP_STOP_NONE;
};

// statistics of a generation (Python: GenerationStats, same field names)
struct mtp_stats {
    int32_t n_prompt_tokens = 0; // prompt tokens given
    int32_t n_prompt_reused = 0; // of which found in the cache
    double  prompt_seconds  = 0;
    int32_t n_generated     = 0;
    double  generation_seconds = 0;
    int32_t n_drafted       = 0;
    int32_t n_accepted      = 0;
    std::vector<int32_t> drafted_by_position;  // drafts verified at draft position 1, 2, ...
    std::vector<int32_t> accepted_by_position; // of which accepted
    int32_t n_target_passes = 0;
    double  draft_seconds   = 0; // in llama.cpp decodes of the MTP head (drafts and catch-up)
    double  verify_seconds  = 0; // in llama.cpp decodes of the target while generating
    double  sample_seconds  = 0; // choosing tokens: draft choice, acceptance tests, sampling
    bool    mtp             = false; // this generation drafted with the MTP head (spec.enabled and mtp_active)
    bool    adaptive        = false; // the draft length was chosen per step
    int32_t n_max           = 0;     // the (ceiling of the) draft length; 0: plain decoding
    std::vector<int32_t> steps_by_draft_length; // steps that drafted n = 0..n_max tokens
    // the policy's current estimates (carried across generations), for the draft lengths this
    // generation could use; empty without MTP
    mtp_policy_estimates policy;
};

struct mtp_engine;

// load the target (and drafter), create the contexts; nullptr and err on failure (status in *status)
mtp_engine * mtp_engine_init(const mtp_model_params & params, std::string & err, mtp_status * status);
void         mtp_engine_free(mtp_engine * eng);

const mtp_model_info & mtp_engine_info(const mtp_engine * eng);

// text <-> tokens with the target vocabulary
mtp_status  mtp_tokenize(const mtp_engine * eng, const std::string & text, bool add_special, bool parse_special,
                         std::vector<llama_token> & out, std::string & err);
std::string mtp_token_piece(const mtp_engine * eng, llama_token token); // raw bytes, specials rendered
std::string mtp_detokenize(const mtp_engine * eng, const std::vector<llama_token> & tokens);

// start a generation: reuse the cached prefix, process the rest of the prompt
mtp_status mtp_begin(mtp_engine * eng, const std::vector<llama_token> & prompt, const mtp_gen_params & params, std::string & err);
// one step: draft, verify, accept; fills out (out.stop != NONE ends the generation)
mtp_status mtp_step(mtp_engine * eng, mtp_step_result & out, std::string & err);
// statistics of the current / last generation
const mtp_stats & mtp_get_stats(mtp_engine * eng);

// ask a running begin/step to stop at the next step boundary (thread- and signal-safe)
void mtp_cancel(mtp_engine * eng);
// forget the cached conversation
void mtp_reset(mtp_engine * eng);
// the policy's cost estimates (t_target[k-1]: a target pass over k tokens, t_head: one head decode,
// in seconds; the last t_target entry's step is extrapolated to larger batches):
// - pin false: a starting estimate (e.g. costs measured by an earlier benchmark on this machine)
//   that the online measurements replace as they come in (each batch size's own first ones);
// - pin true: fixed from now on, measurements ignored, so that the policy's choices depend on
//   acceptance alone (any unit): for tests, which must not depend on the machine's timings
mtp_status mtp_set_policy_costs(mtp_engine * eng, const std::vector<double> & t_target, double t_head, bool pin, std::string & err);

// the target's logits for the token after the conversation (cache + id_last), for checking the
// engine's state against a fresh one in tests; the conversation is unchanged
mtp_status mtp_next_logits(mtp_engine * eng, std::vector<float> & out, std::string & err);

// the draft-length policy's pure choice (policy.h): the n in 0..n_max maximising expected tokens
// per second, given t_target[k-1] (a target pass over k tokens), t_head and acceptance[j-1]
int32_t mtp_choose_draft_length(const std::vector<double> & t_target, double t_head, const std::vector<double> & acceptance,
                                int32_t n_max);

// the llama.cpp build this engine was compiled against, and the one loaded at run time
std::string mtp_build_commit();
std::string mtp_runtime_commit();

// route llama.cpp's log to stderr (verbose) or swallow it (errors are still kept for messages);
// mtp_engine_init sets it from mtp_model_params::verbose
void mtp_set_verbose(bool verbose);
