// Memory: what the contexts allocated (llama.cpp's breakdown per buffer type), what the devices
// have free, and whether the sliding-window cache still holds what a resumed prompt needs.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "llama.h"

struct mtp_model_params;

// one buffer type of one context
struct mtp_memory_entry {
    std::string context;          // "target" or "draft"
    std::string buffer;           // ggml buffer type name, e.g. "CPU", "CUDA0"
    std::string device;           // its device name ("" when none, e.g. a host buffer)
    std::string device_description; // the device's description (an RPC server's HOST:PORT)
    bool        host    = true;   // the buffer type lives in host memory
    bool        shared_model = false; // the weights counted here are the target's (an MTP context on them)
    uint64_t    model   = 0;      // weights
    uint64_t    state   = 0;      // KV cache and recurrent state
    uint64_t    compute = 0;      // compute buffers
};

// a backend device and its memory, as ggml_backend_dev_memory reports it
struct mtp_device_memory {
    std::string name;
    std::string description;
    std::string type;             // "cpu", "gpu", "igpu", "accel"
    uint64_t    free  = 0;
    uint64_t    total = 0;
};

// append ctx's breakdown (llama_get_memory_breakdown) to out, labelled `which`
void mtp_memory_collect(const llama_context * ctx, const char * which, bool shared_model,
                        std::vector<mtp_memory_entry> & out);

// every backend device with its free and total memory
std::vector<mtp_device_memory> mtp_memory_devices();

// whether the target may drop positions >= pos and continue from there: a sliding-window cache
// (swa_full off) keeps only the last n_swa + n_ubatch positions, so resuming further back than
// its window reaches needs a fresh start (llama.cpp's server checks seq_pos_min the same way)
bool mtp_memory_can_resume(llama_context * ctx, int32_t pos);

// the target context's parameters for a run of p (mtp_possible: an MTP head will be attached)
llama_context_params mtp_target_context_params(const mtp_model_params & p, bool mtp_possible, int32_t n_threads);

// the MTP context's parameters, from the target's (cp) and its context
llama_context_params mtp_draft_context_params(const llama_context_params & cp, llama_context * ctx_tgt);

// what a run of p would allocate, without reading any weights: llama.cpp's no_alloc dry run (the
// way its -fit measures), with the contexts created as mtp_engine_init creates them; false and
// err when llama.cpp cannot build them
bool mtp_memory_dry_run(const mtp_model_params & p, std::vector<mtp_memory_entry> & out, std::string & err);
