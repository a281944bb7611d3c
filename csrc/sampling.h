// Token choice shared by the target and the MTP drafter: repetition/presence penalties, top-k,
// top-p, min-p, temperature (llama.cpp's default order), greedy argmax, and the lossless
// speculative acceptance test.
#pragma once

#include <cstdint>
#include <vector>

#include "engine.h"

struct mtp_candidate {
    llama_token id;
    float       p;
};

struct mtp_sampler {
    mtp_sampling_params       params;
    int32_t                   n_vocab = 0;
    uint64_t                  state   = 0; // splitmix64 state: reproducible on every platform

    std::vector<llama_token>  history; // every token in the context, for the penalty window
    std::vector<int32_t>      counts;  // per token id: occurrences inside the penalty window

    std::vector<float>        work;    // n_vocab scratch (penalized logits)
    std::vector<float>        dense;   // n_vocab scratch (zero between uses)
    std::vector<mtp_candidate> cand;   // scratch
};

void mtp_sampler_init(mtp_sampler & s, const mtp_sampling_params & params, int32_t n_vocab);

// the token history the penalties look at: set from the context, then push/pop as tokens are accepted
void mtp_sampler_set_history(mtp_sampler & s, const std::vector<llama_token> & tokens);
void mtp_sampler_push(mtp_sampler & s, llama_token token);
void mtp_sampler_pop (mtp_sampler & s);

bool mtp_sampler_greedy(const mtp_sampler & s);

// argmax of the penalized logits; if p_top is given, also the top token's softmax probability
llama_token mtp_sampler_argmax(mtp_sampler & s, const float * logits, float * p_top);

// the sampling distribution (summing to 1) of the penalized, filtered logits: sorted by p when a
// filter (top-k, top-p, min-p) cut it; over the whole vocabulary only the most probable is put first
void mtp_sampler_dist(mtp_sampler & s, const float * logits, std::vector<mtp_candidate> & out);

// draw from a distribution
llama_token mtp_sampler_draw(mtp_sampler & s, const std::vector<mtp_candidate> & dist);

// speculative sampling: accept `draft` (drawn from q) with probability min(1, p/q); on rejection
// draw from the normalised residual max(0, p - q). Returns true if accepted; *out is the token.
bool mtp_sampler_accept(mtp_sampler & s, const std::vector<mtp_candidate> & p, const std::vector<mtp_candidate> & q,
                        llama_token draft, llama_token * out);
