// The MTP drafter (see drafter.h).
#include "drafter.h"
#include "llama_staging.h"
#include "log.h"

#include <algorithm>
#include <climits>
#include <chrono>

// plain steps leave positions pending for a separate-memory head; past this many they are fed in
// one batch of their own (steps that drafted), or the oldest are skipped (plain steps the policy
// chose), so the first draft after a plain stretch stays one short batch and the row window stays
// small (the hidden rows themselves cost the target nothing extra)
static constexpr int32_t CATCH_UP_AT = 32;

using clock_type = std::chrono::steady_clock;

static double seconds_since(clock_type::time_point t0) {
    return std::chrono::duration<double>(clock_type::now() - t0).count();
}

struct mtp_drafter {
    llama_context   * ctx_tgt    = nullptr;
    llama_context   * ctx_dft    = nullptr;
    llama_batch_ext * batch      = nullptr;
    bool              mem_shared = false;
    int32_t           n_embd_h   = 0;
    int32_t           n_batch    = 0;
    int32_t           n_heads    = 1;    // chained heads in the model (1: not chained)
    int32_t           heads_used = 1;    // chained heads fed every cached position

    bool    valid   = false; // the head's state follows the target's cache
    int32_t mtp_len = 0;     // separate memory: positions held by the MTP context
    // target hidden rows for positions [h_pos0, h_pos0 + rows); cover mtp_len-1 .. n_past-1
    std::vector<float> h_rows;
    int32_t            h_pos0 = -1;
    std::vector<float> h_tmp;
    std::vector<float> h_chain; // chained heads: h_{n_past-1}, then each head's output row

    double t_catch_up = 0;
};

bool mtp_batch_add(llama_batch_ext * b, llama_token id, llama_pos pos, const float * h, int32_t n_embd, bool output) {
    const int32_t idx = llama_batch_ext_add_token(b, 0, id);
    if (idx < 0) {
        return false;
    }
    const llama_pos p[4] = { pos, pos, pos, 0 };
    llama_batch_ext_set_pos(b, idx, p);
    if (h && !llama_batch_ext_set_embd_token(b, idx, { h, 1, (size_t) n_embd })) {
        return false;
    }
    if (output) {
        llama_batch_ext_set_output_logits(b, idx, true);
    }
    return true;
}

mtp_drafter * mtp_drafter_init(const mtp_drafter_params & params) {
    mtp_drafter * d = new mtp_drafter();
    d->ctx_tgt    = params.ctx_tgt;
    d->ctx_dft    = params.ctx_dft;
    d->mem_shared = params.mem_shared;
    d->n_embd_h   = params.n_embd_h;
    d->n_heads    = params.mem_shared ? 1 : std::max(1, params.n_heads);
    d->n_batch    = (int32_t) llama_n_batch(params.ctx_dft);
    d->batch      = llama_batch_ext_init(params.ctx_dft);
    mtp_drafter_clear(d);
    return d;
}

void mtp_drafter_free(mtp_drafter * d) {
    if (!d) {
        return;
    }
    if (d->batch) llama_batch_ext_free(d->batch);
    delete d;
}

static const float * h_row(const mtp_drafter * d, int32_t pos) {
    return d->h_rows.data() + (size_t) (pos - d->h_pos0) * d->n_embd_h;
}

// keep only the hidden rows from position `pos` on
static void h_trim_front(mtp_drafter * d, int32_t pos) {
    if (pos <= d->h_pos0) {
        return;
    }
    const size_t drop = (size_t) (pos - d->h_pos0) * d->n_embd_h;
    d->h_rows.erase(d->h_rows.begin(), d->h_rows.begin() + std::min(drop, d->h_rows.size()));
    d->h_pos0 = pos;
}

// keep only the hidden rows before position `pos`
static void h_trim_back(mtp_drafter * d, int32_t pos) {
    const size_t keep = (size_t) std::max(0, pos - d->h_pos0) * d->n_embd_h;
    if (keep < d->h_rows.size()) {
        d->h_rows.resize(keep);
    }
}

void mtp_drafter_clear(mtp_drafter * d) {
    if (!d->mem_shared) {
        llama_memory_clear(llama_get_memory(d->ctx_dft), true);
    }
    if (d->n_heads > 1) {
        llama_set_nextn_layer_offset(d->ctx_dft, 0); // an error may have left another head selected
    }
    d->valid   = true;
    d->mtp_len = 0;
    // position -1 has no target row: the head sees zeros there (as llama.cpp does)
    d->h_pos0 = -1;
    d->h_rows.assign(d->n_embd_h, 0.0f);
}

bool mtp_drafter_valid(const mtp_drafter * d) { return d->valid; }
int32_t mtp_drafter_n_heads(const mtp_drafter * d) { return d ? d->n_heads : 1; }
int32_t mtp_drafter_heads_used(const mtp_drafter * d) { return d ? d->heads_used : 1; }
void mtp_drafter_use_heads(mtp_drafter * d, int32_t n) { d->heads_used = std::max(1, std::min(n, d->n_heads)); }
int32_t mtp_drafter_max_draft(const mtp_drafter * d) { return d && d->n_heads > 1 ? d->heads_used : INT32_MAX; }
void mtp_drafter_invalidate(mtp_drafter * d) { d->valid = false; }

int32_t mtp_drafter_reuse_from(const mtp_drafter * d, int32_t keep) {
    // one position earlier, so the hidden row h_{from} is known again, and for a separate-memory
    // head no later than the first position it has not seen
    int32_t from = keep - 1;
    if (d->valid && !d->mem_shared) {
        from = std::min(from, d->mtp_len - 1);
    }
    return from;
}

void mtp_drafter_rewind(mtp_drafter * d, int32_t from) {
    if (d->valid && !d->mem_shared) {
        d->mtp_len = from + 1;
        llama_memory_seq_rm(llama_get_memory(d->ctx_dft), 0, d->mtp_len, -1);
    }
    d->h_rows.clear();
    d->h_pos0 = from;
}

mtp_status mtp_drafter_add_rows(mtp_drafter * d, int32_t pos0, int32_t n, std::string & err) {
    if (!d->valid) {
        return MTP_OK;
    }
    // rows for positions pos0..pos0+n-1 follow the ones we hold (which end at pos0-1)
    h_trim_back(d, pos0);
    for (int32_t i = 0; i < n; ++i) {
        const float * h = llama_get_embeddings_nextn_ith(d->ctx_tgt, i);
        if (!h) {
            err = "target produced no hidden state for the MTP head";
            return MTP_ERR_RUNTIME;
        }
        d->h_rows.insert(d->h_rows.end(), h, h + d->n_embd_h);
    }
    return MTP_OK;
}

void mtp_drafter_rollback(mtp_drafter * d, int32_t pos) {
    if (d->valid) {
        h_trim_back(d, pos);
    }
}

static int32_t decode(mtp_drafter * d, double & acc) {
    const auto t0 = clock_type::now();
    const int32_t rc = llama_process(d->ctx_dft, LLAMA_PROCESS_TYPE_DECODE, d->batch);
    acc += seconds_since(t0);
    return rc;
}

static mtp_status decode_failed(int32_t rc, std::string & err) {
    const std::string cause = log_last_error();
    err = "MTP head decode failed (llama.cpp code " + std::to_string(rc) + ")" + (cause.empty() ? "" : ": " + cause);
    return MTP_ERR_RUNTIME;
}

// separate memory: feed the MTP context the cached positions [mtp_len, upto) it has not seen and,
// if next is a token, `next` at position upto (== n_past) with output; all in one batch
static mtp_status feed(mtp_drafter * d, const std::vector<llama_token> & cache, int32_t upto, llama_token next,
                       double & acc, std::string & err) {
    llama_memory_seq_rm(llama_get_memory(d->ctx_dft), 0, d->mtp_len, -1);
    llama_batch_ext_clear(d->batch);
    for (int32_t j = d->mtp_len; j < upto; ++j) {
        if (!mtp_batch_add(d->batch, cache[j], j, h_row(d, j - 1), d->n_embd_h, false)) {
            err = "MTP batch overflow";
            return MTP_ERR_RUNTIME;
        }
    }
    if (next != LLAMA_TOKEN_NULL && !mtp_batch_add(d->batch, next, upto, h_row(d, upto - 1), d->n_embd_h, true)) {
        err = "MTP batch overflow";
        return MTP_ERR_RUNTIME;
    }
    const int32_t rc = decode(d, acc);
    if (rc != 0) {
        return decode_failed(rc, err);
    }
    d->mtp_len = upto + (next != LLAMA_TOKEN_NULL ? 1 : 0);
    return MTP_OK;
}

// chained heads: every head in use is fed the cached positions [mtp_len, upto) (each writes only
// its own layer's KV; the cells freed by seq_rm are reused in order for the same positions, so the
// other heads' rows stay, as in llama.cpp's draft-mtp process())
static mtp_status feed_heads(mtp_drafter * d, const std::vector<llama_token> & cache, int32_t upto, std::string & err) {
    if (d->n_heads <= 1) {
        return feed(d, cache, upto, LLAMA_TOKEN_NULL, d->t_catch_up, err);
    }
    const int32_t from = d->mtp_len;
    mtp_status st = MTP_OK;
    for (int32_t head = 0; head < d->heads_used && st == MTP_OK; ++head) {
        d->mtp_len = from;
        llama_set_nextn_layer_offset(d->ctx_dft, head);
        st = feed(d, cache, upto, LLAMA_TOKEN_NULL, d->t_catch_up, err);
    }
    llama_set_nextn_layer_offset(d->ctx_dft, 0);
    return st;
}

// chained heads: head `head` decodes the positions [from, n_past) it has not seen, id_last at
// n_past and the drafts so far d_1..d_head after it (fed the previous heads' rows, h_chain), with
// output on the last one (or, when output is false, only up to id_last and without output)
static mtp_status chain_decode(mtp_drafter * d, const std::vector<llama_token> & cache, llama_token id_last,
                               const std::vector<llama_token> & draft, int32_t from, int32_t head, bool output,
                               double & acc, std::string & err) {
    const int32_t np = (int32_t) cache.size();
    llama_memory_seq_rm(llama_get_memory(d->ctx_dft), 0, from, -1);
    llama_set_nextn_layer_offset(d->ctx_dft, head);
    llama_batch_ext_clear(d->batch);
    bool ok = true;
    for (int32_t j = from; j < np && ok; ++j) {
        ok = mtp_batch_add(d->batch, cache[j], j, h_row(d, j - 1), d->n_embd_h, false);
    }
    const int32_t n_draft = output ? head : 0;
    for (int32_t t = 0; t <= n_draft && ok; ++t) {
        const llama_token tok = t == 0 ? id_last : draft[t - 1];
        ok = mtp_batch_add(d->batch, tok, np + t, d->h_chain.data() + (size_t) t * d->n_embd_h, d->n_embd_h,
                           output && t == n_draft);
    }
    if (!ok) {
        err = "MTP batch overflow";
        return MTP_ERR_RUNTIME;
    }
    const int32_t rc = decode(d, acc);
    if (rc != 0) {
        return decode_failed(rc, err);
    }
    return MTP_OK;
}

// feed pending positions until at most `leave` remain
static mtp_status catch_up_to(mtp_drafter * d, const std::vector<llama_token> & cache, int32_t leave, std::string & err) {
    const int32_t n_past = (int32_t) cache.size();
    while (d->mtp_len < n_past - leave) {
        const mtp_status st = feed_heads(d, cache, std::min(n_past - leave, d->mtp_len + d->n_batch), err);
        if (st != MTP_OK) {
            return st;
        }
    }
    return MTP_OK;
}

mtp_status mtp_drafter_catch_up(mtp_drafter * d, const std::vector<llama_token> & cache, std::string & err) {
    if (!d->valid) {
        return MTP_OK;
    }
    if (!d->mem_shared) {
        const mtp_status st = catch_up_to(d, cache, 0, err);
        if (st != MTP_OK) {
            return st;
        }
    }
    h_trim_front(d, (int32_t) cache.size() - 1); // only h_{n_past-1} is needed from here
    return MTP_OK;
}

mtp_status mtp_drafter_accept(mtp_drafter * d, const std::vector<llama_token> & cache, bool drafted, std::string & err) {
    if (!d->valid) {
        return MTP_OK;
    }
    const int32_t n_past = (int32_t) cache.size();
    if (d->mem_shared) {
        h_trim_front(d, n_past - 1);
        return MTP_OK;
    }
    // the next draft batch holds the pending positions and one token (chained heads: up to one
    // per head in use): keep it within the batch
    const int32_t limit = std::max(0, std::min(CATCH_UP_AT, d->n_batch - (d->n_heads > 1 ? d->heads_used : 1)));
    if (!drafted && n_past - d->mtp_len > limit) {
        // a plain step: the head is idle, and feeding it every position would cost a plain stretch
        // one head pass per token (a quarter of a step on a small model in a compute-bound
        // backend). Skip the oldest pending positions instead: the head's memory gets a gap, which
        // only its drafts can feel (never the output), and the next draft still reads the last
        // `limit` positions
        // (drop from the head's old end: a rejected draft's entries there would otherwise stay
        // inside the gap, where the next feed's removal from the new end no longer reaches)
        llama_memory_seq_rm(llama_get_memory(d->ctx_dft), 0, d->mtp_len, -1);
        d->mtp_len = n_past - limit;
        h_trim_front(d, d->mtp_len - 1);
        return MTP_OK;
    }
    if (n_past - d->mtp_len > limit) {
        const mtp_status st = catch_up_to(d, cache, 0, err);
        if (st != MTP_OK) {
            return st;
        }
        h_trim_front(d, n_past - 1);
    }
    return MTP_OK;
}

double mtp_drafter_t_catch_up(const mtp_drafter * d) { return d->t_catch_up; }

mtp_status mtp_drafter_draft(mtp_drafter * d, const std::vector<llama_token> & cache, llama_token id_last, int32_t n,
                             mtp_sampler & smpl, float p_min, mtp_draft_out & out, std::string & err) {
    out.tokens.clear();
    out.n_decodes = out.n_caught = 0;
    out.t_decode = out.t_choose = 0;
    const bool chained = d->n_heads > 1;
    if (chained) {
        n = std::min(n, d->heads_used); // one draft position per trained head, as llama.cpp
    }
    if (n <= 0) {
        return MTP_OK;
    }
    const int32_t np = (int32_t) cache.size();
    const int32_t from = d->mtp_len; // chained heads: the first cached position head 0 feeds now
    const bool greedy = mtp_sampler_greedy(smpl);

    // first decode: id_last at n_past with h_{n_past-1} (separate memory: after the pending positions)
    if (d->mem_shared) {
        llama_memory_seq_rm(llama_get_memory(d->ctx_dft), 0, np, -1);
        llama_batch_ext_clear(d->batch);
        mtp_batch_add(d->batch, id_last, np, h_row(d, np - 1), d->n_embd_h, true);
        const int32_t rc = decode(d, out.t_decode);
        if (rc != 0) {
            return decode_failed(rc, err);
        }
    } else {
        out.n_caught = std::max(0, np - d->mtp_len);
        const mtp_status st = feed(d, cache, np, id_last, out.t_decode, err);
        if (st != MTP_OK) {
            return st;
        }
    }
    out.n_decodes = 1;
    int32_t heads_run = 1; // chained heads that decoded this step (head 0: the feed above)
    if (chained) {
        const float * h0 = h_row(d, np - 1);
        d->h_chain.assign(h0, h0 + d->n_embd_h);
    }

    if ((int32_t) out.q.size() < n) {
        out.q.resize(n);
    }
    for (int32_t i = 0; i < n; ++i) {
        const float * logits = llama_get_logits_ith(d->ctx_dft, -1);
        if (!logits) {
            err = "MTP head produced no logits";
            return MTP_ERR_RUNTIME;
        }
        const auto t_choice = clock_type::now();
        llama_token tok;
        if (greedy) {
            float p_top = 1.0f;
            tok = mtp_sampler_argmax(smpl, logits, p_min > 0.0f ? &p_top : nullptr);
            if (p_top < p_min) {
                break;
            }
        } else {
            mtp_sampler_dist(smpl, logits, out.q[i]);
            if (out.q[i].front().p < p_min) {
                break;
            }
            tok = mtp_sampler_draw(smpl, out.q[i]);
        }
        out.tokens.push_back(tok);
        mtp_sampler_push(smpl, tok); // penalties for the next draft position see it
        out.t_choose += seconds_since(t_choice);
        if (i + 1 == n) {
            break;
        }
        // draft position i+2: feed the token back with the head's own hidden row
        const float * h = llama_get_embeddings_nextn_ith(d->ctx_dft, -1);
        if (!h) {
            err = "MTP head produced no hidden state";
            return MTP_ERR_RUNTIME;
        }
        if (chained) {
            // head i+1 drafts position i+2: it re-reads the pending positions, id_last and the
            // draft so far with its own layer (KV is per layer), fed the previous heads' rows
            d->h_chain.insert(d->h_chain.end(), h, h + d->n_embd_h);
            const mtp_status st = chain_decode(d, cache, id_last, out.tokens, from, i + 1, true, out.t_decode, err);
            if (st != MTP_OK) {
                return st;
            }
            out.n_decodes++;
            heads_run++;
            continue;
        }
        d->h_tmp.assign(h, h + d->n_embd_h);
        llama_batch_ext_clear(d->batch);
        const llama_pos pos = d->mem_shared ? np : np + 1 + i;
        mtp_batch_add(d->batch, tok, pos, d->h_tmp.data(), d->n_embd_h, true);
        const int32_t rc = decode(d, out.t_decode);
        if (rc != 0) {
            return decode_failed(rc, err);
        }
        out.n_decodes++;
    }
    for (size_t i = 0; i < out.tokens.size(); ++i) {
        mtp_sampler_pop(smpl);
    }
    if (chained) {
        // heads that did not draft this time still need the positions up to id_last
        for (int32_t head = heads_run; head < d->heads_used; ++head) {
            const mtp_status st = chain_decode(d, cache, id_last, out.tokens, from, head, false, out.t_decode, err);
            if (st != MTP_OK) {
                return st;
            }
            out.n_decodes++;
        }
        llama_set_nextn_layer_offset(d->ctx_dft, 0);
    }
    // the rows before n_past-1 have been fed; keep h_{n_past-1} and the next verify's rows
    h_trim_front(d, np - 1);
    if (d->mem_shared) {
        llama_memory_seq_rm(llama_get_memory(d->ctx_dft), 0, np, -1);
    }
    return MTP_OK;
}
