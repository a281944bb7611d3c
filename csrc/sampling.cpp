#include "sampling.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

// splitmix64: tiny, fast, and the same numbers on every compiler (std distributions are not)
static uint64_t next_u64(mtp_sampler & s) {
    uint64_t z = (s.state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static double next_unit(mtp_sampler & s) {
    return (double) (next_u64(s) >> 11) * (1.0 / 9007199254740992.0); // [0, 1)
}

void mtp_sampler_init(mtp_sampler & s, const mtp_sampling_params & params, int32_t n_vocab) {
    s.params  = params;
    s.n_vocab = n_vocab;
    s.state   = params.seed;
    s.history.clear();
    s.counts.assign(n_vocab, 0);
    s.work.resize(n_vocab);
    s.dense.assign(n_vocab, 0.0f);
}

bool mtp_sampler_greedy(const mtp_sampler & s) {
    return s.params.temperature <= 0.0f;
}

static bool penalties_active(const mtp_sampler & s) {
    return (s.params.repeat_penalty != 1.0f || s.params.presence_penalty != 0.0f) && s.params.repeat_last_n != 0;
}

static size_t window(const mtp_sampler & s) {
    return s.params.repeat_last_n < 0 ? SIZE_MAX : (size_t) s.params.repeat_last_n;
}

void mtp_sampler_set_history(mtp_sampler & s, const std::vector<llama_token> & tokens) {
    std::fill(s.counts.begin(), s.counts.end(), 0);
    s.history.clear();
    s.history.reserve(tokens.size() + 256);
    for (llama_token t : tokens) {
        mtp_sampler_push(s, t);
    }
}

void mtp_sampler_push(mtp_sampler & s, llama_token token) {
    s.history.push_back(token);
    if (token >= 0 && token < s.n_vocab) {
        s.counts[token]++;
    }
    const size_t w = window(s);
    if (s.history.size() > w) {
        const llama_token old = s.history[s.history.size() - 1 - w];
        if (old >= 0 && old < s.n_vocab) {
            s.counts[old]--;
        }
    }
}

void mtp_sampler_pop(mtp_sampler & s) {
    if (s.history.empty()) {
        return;
    }
    const size_t w = window(s);
    if (s.history.size() > w) {
        const llama_token old = s.history[s.history.size() - 1 - w];
        if (old >= 0 && old < s.n_vocab) {
            s.counts[old]++;
        }
    }
    const llama_token token = s.history.back();
    if (token >= 0 && token < s.n_vocab) {
        s.counts[token]--;
    }
    s.history.pop_back();
}

// the logits with penalties applied (llama.cpp's rule: positive logits are divided by the repeat
// penalty, negative ones multiplied; the presence penalty is subtracted once per seen token)
static const float * penalized(mtp_sampler & s, const float * logits) {
    if (!penalties_active(s)) {
        return logits;
    }
    std::memcpy(s.work.data(), logits, sizeof(float) * s.n_vocab);
    const size_t w = window(s);
    const size_t n = s.history.size();
    const size_t lo = n > w ? n - w : 0;
    for (size_t i = lo; i < n; ++i) {
        const llama_token t = s.history[i];
        if (t < 0 || t >= s.n_vocab || s.counts[t] <= 0 || s.work[t] != logits[t]) {
            continue; // out of range, or already penalized (the same token seen again)
        }
        float v = logits[t];
        v = v <= 0 ? v * s.params.repeat_penalty : v / s.params.repeat_penalty;
        v -= s.params.presence_penalty;
        // a penalty that leaves the value unchanged is harmless to re-apply: nothing to mark
        s.work[t] = v;
    }
    return s.work.data();
}

llama_token mtp_sampler_argmax(mtp_sampler & s, const float * logits_in, float * p_top) {
    const float * logits = penalized(s, logits_in);
    llama_token best = 0;
    float best_v = -INFINITY; // (not logits[0]: a NaN there would never be beaten)
    for (int32_t i = 0; i < s.n_vocab; ++i) {
        if (logits[i] > best_v) {
            best_v = logits[i];
            best = i;
        }
    }
    if (p_top) {
        double sum = 0.0;
        for (int32_t i = 0; i < s.n_vocab; ++i) {
            sum += std::exp(logits[i] - best_v); // (float exponentials, as in mtp_sampler_dist)
        }
        *p_top = (float) (1.0 / sum);
    }
    return best;
}

// sort the first m of v (by p descending, then id: one strict order, so every prefix is the same
// whatever m); the rest stay in no particular order
static void sort_prefix(std::vector<mtp_candidate> & v, size_t m) {
    auto before = [](const mtp_candidate & a, const mtp_candidate & b) { return a.p > b.p || (a.p == b.p && a.id < b.id); };
    m = std::min(m, v.size());
    if (m == v.size()) {
        std::sort(v.begin(), v.end(), before);
    } else {
        std::partial_sort(v.begin(), v.begin() + m, v.end(), before);
    }
}

void mtp_sampler_dist(mtp_sampler & s, const float * logits_in, std::vector<mtp_candidate> & out) {
    const float * logits = penalized(s, logits_in);
    const mtp_sampling_params & p = s.params;
    const bool top_p = p.top_p < 1.0f;
    const bool min_p = p.min_p > 0.0f;

    // the pool: the top-k (by logit), or the whole vocabulary; its largest logit
    const int32_t k = p.top_k > 0 ? std::min(p.top_k, s.n_vocab) : s.n_vocab;
    out.clear();
    if (k < s.n_vocab) {
        // min-heap of the k largest (front is the smallest kept)
        auto by_logit = [](const mtp_candidate & a, const mtp_candidate & b) { return a.p > b.p; };
        out.reserve(k);
        for (int32_t i = 0; i < s.n_vocab; ++i) {
            const float v = logits[i];
            if ((int32_t) out.size() < k) {
                out.push_back({ i, v });
                std::push_heap(out.begin(), out.end(), by_logit);
            } else if (v > out.front().p) {
                std::pop_heap(out.begin(), out.end(), by_logit);
                out.back() = { i, v };
                std::push_heap(out.begin(), out.end(), by_logit);
            }
        }
    }
    const bool whole = out.empty();
    float l_max = -INFINITY;
    if (whole) {
        for (int32_t i = 0; i < s.n_vocab; ++i) {
            l_max = std::max(l_max, logits[i]);
        }
    } else {
        for (const auto & c : out) {
            l_max = std::max(l_max, c.p);
        }
    }
    // the pool's softmax denominator at temperature 1, for top-p (exponentials in float as
    // llama.cpp's softmax, summed in double); a NaN logit weighs nothing, as -inf: the sum is taken
    // again without it, and the filter below leaves it out
    auto pool_sum = [&](bool skip_nan) {
        double sum = 0.0;
        const int32_t n = whole ? s.n_vocab : (int32_t) out.size();
        for (int32_t i = 0; i < n; ++i) {
            const float l = whole ? logits[i] : out[i].p;
            if (!skip_nan || l == l) {
                sum += std::exp(l - l_max);
            }
        }
        return sum;
    };
    double sum = top_p ? pool_sum(false) : 0.0;
    if (std::isnan(sum)) {
        sum = pool_sum(true);
    }

    if (!std::isfinite(l_max)) {
        // no finite logit on top (a broken model): +inf takes all the mass (the first such token
        // by id), else token 0, as argmax would pick
        llama_token id = 0;
        for (int32_t i = 0; i < s.n_vocab && l_max > 0; ++i) {
            if (logits[i] == l_max) {
                id = i;
                break;
            }
        }
        out.assign(1, { id, 1.0f });
        return;
    }

    // top-p and min-p on the pool's softmax at temperature 1 (as llama.cpp: they precede
    // temperature). Both keep a prefix of the pool sorted by logit, so only that prefix is sorted:
    // min-p keeps the tokens whose probability is at least min_p times the top one's, and top-p the
    // shortest prefix whose mass reaches top_p (as llama.cpp: the first 256 sorted, all if short).
    const double l_min = min_p ? l_max + std::log((double) p.min_p) : -INFINITY;
    if (whole) {
        out.reserve(s.n_vocab);
        for (int32_t i = 0; i < s.n_vocab; ++i) {
            if ((double) logits[i] >= l_min) {
                out.push_back({ i, logits[i] });
            }
        }
    } else {
        out.erase(std::remove_if(out.begin(), out.end(), [&](const mtp_candidate & c) { return !((double) c.p >= l_min); }), out.end());
    }
    if (out.empty()) { // (NaN logits only in the top-k, or min_p above 1, which the Python side refuses)
        out.push_back({ 0, 1.0f });
        return;
    }
    size_t n_keep = out.size();
    if (top_p) {
        size_t m = std::min<size_t>(256, out.size());
        sort_prefix(out, m);
        double cum = 0.0;
        for (size_t i = 0; i < out.size(); ++i) {
            if (i == m) { // the sorted prefix holds less than top_p: sort the rest
                m = out.size();
                sort_prefix(out, m);
            }
            cum += std::exp(out[i].p - l_max) / sum;
            if (cum >= p.top_p) {
                n_keep = i + 1;
                break;
            }
        }
        out.resize(n_keep);
    } else if (out.size() < (size_t) s.n_vocab) {
        sort_prefix(out, out.size());
    } else {
        // nothing filtered: no order is needed but the top token's, first
        const auto top = std::find_if(out.begin(), out.end(), [&](const mtp_candidate & c) { return c.p == l_max; });
        if (top != out.end()) {
            std::iter_swap(out.begin(), top);
        }
    }

    // temperature, then normalise
    // (1 / a denormal temperature overflows a float: 0 * inf would make the top token's weight NaN)
    const float inv_t = p.temperature > 0.0f ? (float) std::min(1.0 / p.temperature, 1e30) : 1.0f;
    double z = 0.0;
    for (auto & c : out) {
        c.p = std::exp((c.p - l_max) * inv_t);
        z += c.p;
    }
    for (auto & c : out) {
        c.p = (float) (c.p / z);
    }
}

llama_token mtp_sampler_draw(mtp_sampler & s, const std::vector<mtp_candidate> & dist) {
    double sum = 0.0;
    for (const auto & c : dist) {
        sum += c.p;
    }
    const double u = next_unit(s) * sum;
    double cum = 0.0;
    for (const auto & c : dist) {
        cum += c.p;
        if (u < cum) {
            return c.id;
        }
    }
    return dist.back().id;
}

bool mtp_sampler_accept(mtp_sampler & s, const std::vector<mtp_candidate> & p, const std::vector<mtp_candidate> & q,
                        llama_token draft, llama_token * out) {
    float p_d = 0.0f;
    for (const auto & c : p) {
        if (c.id == draft) {
            p_d = c.p;
            break;
        }
    }
    float q_d = 0.0f;
    for (const auto & c : q) {
        if (c.id == draft) {
            q_d = c.p;
            break;
        }
    }
    if (q_d > 0.0f && next_unit(s) * q_d < p_d) {
        *out = draft;
        return true;
    }

    // residual max(0, p - q), normalised; q is scattered into the dense scratch and cleared after
    for (const auto & c : q) {
        s.dense[c.id] = c.p;
    }
    std::vector<mtp_candidate> & r = s.cand;
    r.clear();
    for (const auto & c : p) {
        const float v = c.p - s.dense[c.id];
        if (v > 0.0f) {
            r.push_back({ c.id, v });
        }
    }
    for (const auto & c : q) {
        s.dense[c.id] = 0.0f;
    }
    *out = r.empty() ? mtp_sampler_draw(s, p) : mtp_sampler_draw(s, r);
    return false;
}
