// Declarations of the few functions mtprun uses from llama.cpp's staging MTP API
// (src/llama-ext.h at llama.cpp 0c1e570, exported by libllama with C++ linkage but not installed
// with its public headers). Signatures must match that commit exactly; mtprun checks at import
// that the loaded libllama is the build it was compiled against.
#pragma once

#include "llama.h"

// output the target hidden states that feed an MTP head ("nextn" embeddings);
// masked: only for outputs flagged in the batch, else for every token
LLAMA_API void llama_set_embeddings_nextn(struct llama_context * ctx, bool value, bool masked);

// the nextn embeddings of the i-th token of the last batch
LLAMA_API float * llama_get_embeddings_nextn_ith(struct llama_context * ctx, int32_t i);

// the context whose memory or weights a drafter context uses (ctx_other at creation)
LLAMA_API llama_context * llama_get_ctx_other(struct llama_context * ctx);

// --- device memory (src/llama-ext.h at 0c1e570) ---------------------------------------------------
#include <map>

// bytes of one buffer type held by a context
struct llama_memory_breakdown_data {
    size_t model   = 0; // memory allocated for the model
    size_t context = 0; // memory allocated for the context (KV cache, recurrent state)
    size_t compute = 0; // memory allocated for temporary compute buffers

    size_t total() const {
        return model + context + compute;
    }
};

using llama_memory_breakdown = std::map<ggml_backend_buffer_type_t, llama_memory_breakdown_data>;

// what a context allocated, per buffer type: its model's weights, its memory, its compute buffers
LLAMA_API llama_memory_breakdown llama_get_memory_breakdown(const struct llama_context * ctx);
// select which appended NextN block the MTP graph runs (layer n_layer + offset; default 0): models
// with several trained heads (hy_v3, mimo2, step35) draft position i with head i
LLAMA_API void llama_set_nextn_layer_offset(struct llama_context * ctx, int32_t offset);
