// The MTP drafter: llama.cpp's common_speculative shape (init / free / draft / accept) over the
// two drafter layouts, owning the MTP context's state and the window of target hidden rows.
//
// The MTP head at position j reads token x_j together with h_{j-1}, the target's hidden row at
// j-1, and predicts x_{j+1}; when it drafts further it reads its own hidden row instead.
//  - separate memory (Qwen3.5/3.6 and other embedded nextn heads): the MTP context has its own KV
//    for its layer, which must hold (x_j, h_{j-1}) for every cached position. Positions whose
//    target rows are known but not yet fed to the head are "pending"; they are decoded in the
//    same batch as the next draft's first token (no separate catch-up decode), and in one batch
//    of their own when plain steps let too many of them gather (mtp_drafter_accept).
//    Chained heads (several nextn blocks: hy_v3, mimo2, step35): head i drafts position i, as in
//    llama.cpp's draft-mtp; every head in use is fed every cached position (each writes its own
//    layer's KV), and head i re-reads the last token and the drafts so far with the previous
//    heads' output rows.
//  - shared memory (Gemma 4 assistant): the drafter reads the target's KV directly; it only needs
//    h_{n_past-1}, and all its draft tokens sit at the same position.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine.h"
#include "sampling.h"

struct mtp_drafter;

struct mtp_drafter_params {
    llama_context * ctx_tgt    = nullptr; // the target, whose hidden rows feed the head
    llama_context * ctx_dft    = nullptr; // the MTP context (LLAMA_CONTEXT_TYPE_MTP)
    bool            mem_shared = false;   // the drafter reads the target's KV (Gemma 4 assistant)
    int32_t         n_embd_h   = 0;       // width of the hidden rows
    int32_t         n_heads    = 1;       // chained heads (separate memory only); 1: one head drafts every position
};

// what one draft call did
struct mtp_draft_out {
    std::vector<llama_token>                tokens;    // the draft, d1..dn
    std::vector<std::vector<mtp_candidate>> q;         // sampling: the distribution each was drawn from
    int32_t                                 n_decodes = 0; // MTP-head decodes (the first with the catch-up)
    int32_t                                 n_caught  = 0; // pending positions fed in the first one
    double                                  t_decode  = 0; // seconds in them
    double                                  t_choose  = 0; // seconds choosing draft tokens
};

mtp_drafter * mtp_drafter_init(const mtp_drafter_params & params);
void          mtp_drafter_free(mtp_drafter * d);

// forget everything (the target memory was cleared too); the head's state is valid again
void mtp_drafter_clear(mtp_drafter * d);
// whether the head's state follows the target's cache (false after a plain generation)
bool mtp_drafter_valid(const mtp_drafter * d);
void mtp_drafter_invalidate(mtp_drafter * d);

// chained heads: how many the model has; how many are fed (set per generation, before the
// prefill: a generation wanting more heads than were fed must clear first); the longest draft
// (the heads in use when chained, else unbounded)
int32_t mtp_drafter_n_heads(const mtp_drafter * d);
int32_t mtp_drafter_heads_used(const mtp_drafter * d);
void    mtp_drafter_use_heads(mtp_drafter * d, int32_t n);
int32_t mtp_drafter_max_draft(const mtp_drafter * d);

// prompt reuse: the position from which the target must decode again to keep `keep` cached
// tokens usable by the head; then cut the head's state back to that position
int32_t mtp_drafter_reuse_from(const mtp_drafter * d, int32_t keep);
void    mtp_drafter_rewind(mtp_drafter * d, int32_t from);

// the target decoded positions [pos0, pos0 + n): keep their hidden rows
mtp_status mtp_drafter_add_rows(mtp_drafter * d, int32_t pos0, int32_t n, std::string & err);
// the target memory was cut back to positions [0, pos)
void mtp_drafter_rollback(mtp_drafter * d, int32_t pos);

// after a prefill: feed the head every pending cached position (in slices that fit its batch)
mtp_status mtp_drafter_catch_up(mtp_drafter * d, const std::vector<llama_token> & cache, std::string & err);
// after a step (drafted: the head was asked for a draft): drop rows no longer needed; when many
// pending rows gathered, feed them to the head (or, after a plain step, skip the oldest of them)
mtp_status mtp_drafter_accept(mtp_drafter * d, const std::vector<llama_token> & cache, bool drafted, std::string & err);

// draft up to n tokens after id_last (the cache holds positions 0..n_past-1); greedy or sampled
// with smpl, stopping below p_min head confidence; the sampler's history is left as it was
mtp_status mtp_drafter_draft(mtp_drafter * d, const std::vector<llama_token> & cache, llama_token id_last, int32_t n,
                             mtp_sampler & smpl, float p_min, mtp_draft_out & out, std::string & err);

// seconds spent in head decodes outside draft calls (catch-up), since init
double mtp_drafter_t_catch_up(const mtp_drafter * d);

// add a token (optionally with a hidden row for an MTP head) to a batch; false if it cannot
bool mtp_batch_add(llama_batch_ext * b, llama_token id, llama_pos pos, const float * h, int32_t n_embd, bool output);
