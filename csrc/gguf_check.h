// GGUF metadata checks done before llama.cpp sees a file (it aborts or misbehaves on some bad
// input): a readable header, sane layer/expert counts, tensor data inside the file, and whether a
// drafter sidecar fits its target.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

struct gguf_meta {
    std::string arch;
    int64_t n_vocab = -1, n_embd = -1, n_embd_out = -1, n_layer = -1, n_nextn = 0;
    int64_t head_k = -1, head_v = -1, head_k_swa = -1, head_v_swa = -1, n_head_kv = -1;
    int64_t n_kv_shared = 0;
    std::vector<bool> swa_pattern; // per layer: sliding-window?
    int64_t n_head_first = -1;     // query heads of the first layer
    int64_t n_head_kv_swa_last = -1, n_head_kv_full_last = -1; // KV heads of layers n-2 and n-1
};

// read the metadata we need; false and err if the file is missing or not a readable GGUF
bool gguf_meta_read(const std::string & path, gguf_meta & m, std::string & err);

// does a drafter sidecar fit its target? (llama.cpp runs a mismatched one silently, or crashes)
bool sidecar_fits(const gguf_meta & tgt, const gguf_meta & dft, const std::string & dft_path, std::string & err);
