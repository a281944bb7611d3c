// The draft-length policy (see policy.h).
#include "policy.h"

#include <algorithm>
#include <cmath>

// the costs' Kalman filter (on log seconds). A measurement's own noise (a pass's jitter on a shared
// machine: ~0.1-0.2 here); a measurement further than KF_CLIP standard deviations from what was
// expected counts as that far (a preempted pass moves the estimates a little, not all the way).
// Per step the speed may move by KF_Q_SPEED (a lasting change of load is followed within a few
// steps), the shape by KF_Q_SHAPE (a shape that changes, e.g. when another process takes a core,
// is relearnt over a few hundred steps). Unmeasured: the speed is anything, the shape within a
// factor ~e of the prior shape (T_PRIOR_SLOPE); given costs (mtp_policy_set_costs) within ~1.6x.
static constexpr double KF_R             = 0.15 * 0.15;
static constexpr double KF_CLIP          = 2.0;
static constexpr double KF_Q_SPEED       = 0.05 * 0.05;
static constexpr double KF_Q_SHAPE       = 0.01 * 0.01;
static constexpr double KF_SPEED_PRIOR_V = 25.0;
static constexpr double KF_SHAPE_PRIOR_V = 1.0;
static constexpr double KF_GIVEN_V       = 0.5 * 0.5;
// a batch size's cost counts as known after this many (counted) measurements
static constexpr int32_t T_KNOWN_AFTER   = 4;
// other per-step times (the probe steps', the time outside the decodes): the median of the last
// T_WINDOW measurements, in units of the speed
static constexpr size_t T_WINDOW = 7;
// acceptance: observations fade with the text generated since (per token, not per observation:
// plain stretches observe only the occasional probe, and a change of text must still show within
// a few dozen tokens; half-life ~23 tokens); the prior is worth this many observations
static constexpr double ACC_DECAY_PER_TOKEN = 0.97;
static double acc_decay_tokens(int64_t n) { return n <= 0 ? 1.0 : std::pow(ACC_DECAY_PER_TOKEN, (double) n); }
static constexpr double ACC_PRIOR_W = 1.0;
static constexpr double ACC_PRIOR  = 0.5;  // of position 1; position j's prior is position j-1's estimate
// in plain mode position 1's prior is instead a slowly fading estimate of this text (half-life ~350
// tokens): over a plain stretch the fast counts fade to ACC_PRIOR, and then one accepted probe of a
// head right a third of the time looked like a head right three times in four (a burst of drafts
// that do not pay), while a head right 90% of the time looked like a coin (plain steps where
// drafting pays); once drafting, the fast estimate alone decides
static constexpr double ACC_SLOW_DECAY_PER_TOKEN = 0.998;
// a change of text: outcomes this unlikely together drop all but CHANGE_KEEP of the counts
static constexpr double CHANGE_P    = 0.02;
static constexpr double CHANGE_KEEP = 0.25;
// cost shape assumed for batch sizes never measured: t(k) = t(1) * (1 + SLOPE * (k - 1)) (the
// memory-bound case, where speculation pays; a wrong guess is corrected by the first measurement)
static constexpr double T_PRIOR_SLOPE = 0.25;
static constexpr double T_HEAD_PRIOR  = 0.1; // head decode, relative to t(1)
// exploration: a 1-token probe after this many plain steps (fewer after a probe was accepted,
// more after each rejected one, up to the number of steps over which a probe costs ~1.5%)
static constexpr int32_t PROBE_MIN      = 4;
static constexpr int32_t PROBE_START    = 8;
static constexpr int32_t PROBE_MAX_LO   = 16;
static constexpr int32_t PROBE_MAX_HI   = 128;
static constexpr double  PROBE_OVERHEAD = 0.015;
static constexpr double  REACH_MARGIN   = 0.25;
// while drafting: every SPEC_PERIOD steps one plain step (keeps t(1) measured) and, half a period
// later, one token more than the best when the last position's acceptance is at least SPEC_LONGER_ACC
static constexpr int32_t SPEC_PERIOD     = 32;
static constexpr double  SPEC_LONGER_ACC = 0.6;

int32_t mtp_policy_best_n(const std::vector<double> & t_target, double t_head, const std::vector<double> & acc, int32_t n_max) {
    n_max = std::min({ n_max, (int32_t) t_target.size() - 1, (int32_t) acc.size() });
    if (t_target.empty() || !(t_target[0] > 0)) {
        return 0;
    }
    int32_t best   = 0;
    double  best_r = 1.0 / t_target[0];
    double  reach  = 1.0; // probability that draft position n is reached and accepted
    double  tokens = 1.0;
    for (int32_t n = 1; n <= n_max; ++n) {
        reach  *= std::clamp(acc[n - 1], 0.0, 1.0);
        tokens += reach;
        const double cost = n * std::max(0.0, t_head) + t_target[n];
        if (cost > 0 && tokens / cost > best_r * (1.0 + 1e-9)) {
            best   = n;
            best_r = tokens / cost;
        }
    }
    return best;
}

// whether drafting (some n in 1..n_max) would pay if every draft position were accepted with probability a
static bool drafting_pays_at(const mtp_policy_estimates & est, double a, int32_t n_max) {
    return mtp_policy_best_n(est.target_seconds_by_batch, est.head_seconds, std::vector<double>(n_max, a), n_max) > 0;
}

// the filter's state: [log load, log t_tgt[k-1] for k = 2..cap+1, log t_head]
static int32_t kf_dim(const mtp_policy & p) { return (int32_t) p.t_tgt.size() + 1; }
static int32_t kf_head(const mtp_policy & p) { return (int32_t) p.t_tgt.size(); }

static void kf_reset(mtp_policy & p) {
    const int32_t d = kf_dim(p);
    p.kf_m.assign(d, 0.0);
    p.kf_P.assign((size_t) d * d, 0.0);
    p.kf_P[0] = KF_SPEED_PRIOR_V;
    for (int32_t i = 1; i < d; ++i) {
        p.kf_m[i] = i == kf_head(p) ? std::log(T_HEAD_PRIOR) : std::log(1.0 + T_PRIOR_SLOPE * i);
        p.kf_P[(size_t) i * d + i] = KF_SHAPE_PRIOR_V;
    }
    p.load = 1;
}

// the shape and speed the state says, for the sizes (and the head) that have been measured or given
static void kf_publish(mtp_policy & p) {
    p.load = std::exp(p.kf_m[0]);
    for (size_t k = 1; k <= p.t_tgt.size(); ++k) {
        if (p.t_tgt[k - 1] > 0) {
            p.t_tgt[k - 1] = k == 1 ? 1.0 : std::exp(p.kf_m[k - 1]);
        }
    }
    if (p.t_head > 0) {
        p.t_head = std::exp(p.kf_m[kf_head(p)]);
    }
}

// a step's time passes: the speed and (slightly) the shape may have moved
static void kf_predict(mtp_policy & p) {
    const int32_t d = kf_dim(p);
    p.kf_P[0] += KF_Q_SPEED;
    for (int32_t i = 1; i < d; ++i) {
        p.kf_P[(size_t) i * d + i] += KF_Q_SHAPE;
    }
}

// a measured time t of the speed times shape entry j (0: a one-token pass, whose shape is 1)
static void kf_update(mtp_policy & p, int32_t j, double t) {
    const int32_t d = kf_dim(p);
    auto P = [&](int32_t a, int32_t b) -> double & { return p.kf_P[(size_t) a * d + b]; };
    std::vector<double> ph(d);
    for (int32_t i = 0; i < d; ++i) {
        ph[i] = P(i, 0) + (j > 0 ? P(i, j) : 0.0);
    }
    const double s = ph[0] + (j > 0 ? ph[j] : 0.0) + KF_R;
    const double lim = KF_CLIP * std::sqrt(s);
    const double innov = std::clamp(std::log(t) - p.kf_m[0] - (j > 0 ? p.kf_m[j] : 0.0), -lim, lim);
    for (int32_t i = 0; i < d; ++i) {
        p.kf_m[i] += ph[i] / s * innov;
    }
    for (int32_t a = 0; a < d; ++a) {
        for (int32_t b = 0; b < d; ++b) {
            P(a, b) -= ph[a] * ph[b] / s;
        }
        P(a, a) = std::max(P(a, a), 1e-12); // (rounding over a very long run must not make it negative)
    }
}

void mtp_policy_init(mtp_policy & p, int32_t cap) {
    p = mtp_policy();
    p.cap = cap;
    p.t_tgt.assign(cap + 1, -1.0);
    p.n_tgt.assign(cap + 1, 0);
    kf_reset(p);
    p.acc_w.assign(cap, 0.0);
    p.try_w.assign(cap, 0.0);
    p.acc_at.assign(cap, 0);
    p.probe_interval = PROBE_START;
}

void mtp_policy_set_costs(mtp_policy & p, const std::vector<double> & t_target, double t_head, bool pin) {
    const size_t n = t_target.size();
    const int32_t d = kf_dim(p);
    const double t1 = t_target[0];
    // a prior (the next measurements of each size mostly replace it), in units of a one-token pass
    std::fill(p.kf_P.begin(), p.kf_P.end(), 0.0);
    p.kf_m[0] = std::log(t1);
    for (size_t k = 0; k < p.t_tgt.size(); ++k) {
        const double step = n >= 2 ? t_target[n - 1] - t_target[n - 2] : 0.0;
        p.t_tgt[k] = std::max(1e-9, k < n ? t_target[k] : t_target[n - 1] + step * (double) (k + 1 - n)) / t1;
        p.kf_m[k] = k == 0 ? p.kf_m[0] : std::log(p.t_tgt[k]);
        p.kf_P[k * d + k] = KF_GIVEN_V;
        if (pin) {
            p.n_tgt[k] = 1;
        }
    }
    p.t_tgt[0] = 1.0;
    p.t_head = t_head / t1;
    p.kf_m[kf_head(p)] = std::log(std::max(1e-9, p.t_head));
    p.kf_P[(size_t) kf_head(p) * d + kf_head(p)] = KF_GIVEN_V;
    if (pin) {
        p.n_head  = 1;
        p.t_fixed = 0;
        p.t_token = 0;
        p.t_call_step = p.t_call_token = 0;
    }
    p.load = t1; // the given costs are in seconds: measurements from here are compared to them
    p.pinned = pin;
}

bool mtp_policy_costs_valid(const std::vector<double> & t_target, double t_head) {
    return !t_target.empty() && t_head >= 0 && std::isfinite(t_head) &&
           std::all_of(t_target.begin(), t_target.end(), [](double t) { return t > 0 && std::isfinite(t); });
}

static void window_add(std::vector<double> & w, double t) {
    if (w.size() >= T_WINDOW) {
        w.erase(w.begin());
    }
    w.push_back(t);
}

// the lower median: timing noise only adds (a preempted pass), so of two measurements the smaller
// is the better estimate (the upper one made a batch size drafted rarely, with few measurements,
// look dearer than the sizes drafted often, and so drafted more rarely still)
static double window_median(std::vector<double> w) {
    if (w.empty()) {
        return -1;
    }
    const size_t mid = (w.size() - 1) / 2;
    std::nth_element(w.begin(), w.begin() + mid, w.end());
    return w[mid];
}

// the first pass over a new batch size also builds and allocates its graph: that one is not counted
static void observe_target(mtp_policy & p, int32_t k, double t) {
    if (p.pinned || k < 1 || k > (int32_t) p.t_tgt.size() || !(t > 0) || !std::isfinite(t)) {
        return;
    }
    if (p.n_tgt[k - 1]++ > 0) {
        kf_update(p, k - 1, t);
        p.t_tgt[k - 1] = 1; // measured: published from the state
        kf_publish(p);
    }
}

static void observe_head(mtp_policy & p, int32_t n_decodes, double t) {
    if (!p.pinned && n_decodes > 0 && t > 0 && std::isfinite(t) && p.n_head++ > 0) {
        kf_update(p, kf_head(p), t / n_decodes);
        p.t_head = 1;
        kf_publish(p);
    }
}

static void observe_fixed(mtp_policy & p, double t) {
    if (!p.pinned && t >= 0) {
        window_add(p.w_fixed, t / p.load);
        p.t_fixed = window_median(p.w_fixed);
    }
}

// choosing the step's tokens from the verify rows: one row per token emitted (a step that emits
// three tokens reads three rows, a plain step one), so it is a cost per token, not per step
static void observe_token(mtp_policy & p, int32_t n_tokens, double t) {
    if (!p.pinned && n_tokens > 0 && t >= 0 && std::isfinite(t)) {
        window_add(p.w_token, t / n_tokens / p.load);
        p.t_token = window_median(p.w_token);
    }
}

// the caller's time after a step that emitted k tokens: a per-step part and a per-token part, each
// a lower median (robust to a preempted caller), told apart by the steps that emitted one token
static void observe_caller(mtp_policy & p, int32_t k, double t) {
    if (p.pinned || k < 1 || !(t >= 0) || !std::isfinite(t)) {
        return;
    }
    if (k == 1) {
        window_add(p.w_call1, t / p.load);
    } else if (!p.w_call1.empty()) {
        window_add(p.w_call_tok, std::max(0.0, (t / p.load - window_median(p.w_call1)) / (k - 1)));
    }
    p.t_call_token = p.w_call_tok.empty() ? 0.0 : window_median(p.w_call_tok);
    p.t_call_step  = p.w_call1.empty() ? 0.0 : std::max(0.0, window_median(p.w_call1) - p.t_call_token);
}

// conditional acceptance by draft position 1..n_max: the fading counts, position 1's prior `prior`
static std::vector<double> acceptance(const mtp_policy & p, int32_t n_max, double prior) {
    std::vector<double> acc(n_max, 0.0);
    double prev = prior;
    for (int32_t j = 0; j < n_max; ++j) {
        const bool   known = j < (int32_t) p.acc_w.size();
        const double decay = known ? acc_decay_tokens(p.n_tokens - p.acc_at[j]) : 0.0;
        const double a = known ? p.acc_w[j] * decay : 0.0;
        const double n = known ? p.try_w[j] * decay : 0.0;
        prev = (a + ACC_PRIOR_W * prev) / (n + ACC_PRIOR_W);
        acc[j] = prev;
    }
    return acc;
}

// position 1's acceptance over the longer run (ACC_SLOW_DECAY_PER_TOKEN)
static double slow_decay(const mtp_policy & p) {
    return std::pow(ACC_SLOW_DECAY_PER_TOKEN, (double) std::max<int64_t>(0, p.n_tokens - p.slow_at));
}

static double slow_acceptance(const mtp_policy & p) {
    const double decay = slow_decay(p);
    return (p.acc_slow * decay + ACC_PRIOR_W * ACC_PRIOR) / (p.try_slow * decay + ACC_PRIOR_W);
}

// would drafting pay if every position's acceptance were REACH_MARGIN above the first position's
// current estimate (a text that changed enough for probes to be accepted moves it that far)
static bool drafting_within_reach(const mtp_policy & p) {
    if (p.cap <= 0) {
        return false;
    }
    const mtp_policy_estimates est = mtp_policy_estimate(p, p.cap);
    return drafting_pays_at(est, std::min(1.0, est.acceptance_by_position[0] + REACH_MARGIN), p.cap);
}

static void observe_draft(mtp_policy & p, int32_t n_drafted, int32_t n_acc) {
    // position j was tried when 1..j-1 were accepted
    const int32_t n = std::min(n_drafted, (int32_t) p.acc_w.size());
    // a change of text (prose -> code, the end of a repetitive stretch): outcomes the estimates
    // make unlikely, one after another in the same direction (each less likely than a coin's side:
    // P(as few accepted or fewer), or P(as many or more)), until together they are less likely
    // than CHANGE_P; then the counts from before are mostly dropped (x CHANGE_KEEP), so that the
    // estimates follow within a step or two instead of fading over a few dozen tokens
    // (scripts/policy_sim.py: alternating stretches at 0.95 / 0.1 1.095x -> 1.119x the best fixed
    // length on a memory-bound machine, a steady text 0.3-1% below what it was without)
    bool accepted_beyond_expectation = false;
    if (n >= 1) {
        const std::vector<double> acc = acceptance(p, n, ACC_PRIOR);
        double reach = 1.0; // P(positions 1..n_acc accepted)
        for (int32_t j = 0; j < std::min(n_acc, n); ++j) {
            reach *= acc[j];
        }
        const double p_down = n_acc >= n ? 1.0 : 1.0 - reach * acc[n_acc]; // P(n_acc or fewer)
        const double p_up   = reach;                                       // P(n_acc or more)
        const int32_t dir   = p_down < 0.5 ? -1 : p_up < 0.5 ? 1 : 0;
        accepted_beyond_expectation = dir > 0;
        if (dir == 0 || dir != p.surprise_dir) {
            p.surprise = 1.0;
        }
        p.surprise_dir = dir;
        p.surprise *= dir < 0 ? p_down : dir > 0 ? p_up : 1.0;
        if (p.surprise < CHANGE_P) {
            for (size_t j = 0; j < p.acc_w.size(); ++j) {
                p.acc_w[j] *= CHANGE_KEEP;
                p.try_w[j] *= CHANGE_KEEP;
            }
            p.surprise = 1.0;
            p.surprise_dir = 0;
        }
    }
    for (int32_t j = 0; j < n && j <= n_acc; ++j) {
        const double decay = acc_decay_tokens(p.n_tokens - p.acc_at[j]);
        p.acc_w[j]  = p.acc_w[j] * decay + (j < n_acc ? 1.0 : 0.0);
        p.try_w[j]  = p.try_w[j] * decay + 1.0;
        p.acc_at[j] = p.n_tokens;
    }
    if (n >= 1) { // position 1, slowly fading
        const double decay = slow_decay(p);
        p.acc_slow = p.acc_slow * decay + (n_acc > 0 ? 1.0 : 0.0);
        p.try_slow = p.try_slow * decay + 1.0;
        p.slow_at  = p.n_tokens;
    }
    p.n_tokens += std::max(0, n_acc) + 1; // the step's tokens: the accepted drafts and the target's
    // a probe from plain mode: rejected, or accepted no more than expected -> back off (a head
    // right 70% of the time, where a verify batch costs nearly two single tokens, has most probes
    // accepted and drafting still does not pay: every probe costs about a plain step); accepted
    // beyond expectation -> look again sooner, if drafting is within reach of what was just seen
    if (p.probing && n_drafted >= 1) {
        p.probing = false;
        if (accepted_beyond_expectation) {
            if (drafting_within_reach(p)) {
                p.probe_interval /= 2;
            }
        } else if (n_acc == 0 || !drafting_pays_at(mtp_policy_estimate(p, p.cap), slow_acceptance(p), p.cap)) {
            p.probe_interval *= 2;
        }
    }
}

void mtp_policy_observe(mtp_policy & p, int32_t n_drafted, int32_t n_acc, double t_step, double t_verify,
                        int32_t n_head_decodes, double t_head, double t_choose, double t_caller, int32_t n_caller_tokens) {
    if (!p.pinned) {
        kf_predict(p);
    }
    observe_target(p, n_drafted + 1, t_verify);
    if (n_head_decodes > 0) {
        observe_head(p, n_head_decodes, t_head);
    }
    if (!p.pinned && p.probing && t_step > 0) {
        window_add(p.w_probe, t_step / p.load);
    }
    observe_draft(p, n_drafted, n_acc);
    t_choose = std::isfinite(t_choose) ? std::max(0.0, t_choose) : 0.0;
    t_caller = std::isfinite(t_caller) ? std::max(0.0, t_caller) : 0.0;
    observe_token(p, n_acc + 1, t_choose);
    observe_caller(p, n_caller_tokens, t_caller);
    observe_fixed(p, std::max(0.0, t_step - t_verify - t_head - t_choose - t_caller));
}

// a pass over more tokens never costs less: the estimates of the sizes in `seen` (ascending), pooled
// where they are not (pool-adjacent-violators, weighted by measurement count; a size measured once
// or twice otherwise decides alone whether drafting one token more is cheap); indexed as t_tgt
static std::vector<double> nondecreasing(const mtp_policy & p, const std::vector<int32_t> & seen) {
    std::vector<double> val, wt;
    std::vector<size_t> len;
    for (int32_t k : seen) {
        val.push_back(p.t_tgt[k - 1]);
        wt.push_back(std::max(1, p.n_tgt[k - 1]));
        len.push_back(1);
        while (val.size() >= 2 && val[val.size() - 2] > val.back()) {
            const size_t b = val.size() - 1;
            val[b - 1] = (val[b - 1] * wt[b - 1] + val[b] * wt[b]) / (wt[b - 1] + wt[b]);
            wt[b - 1] += wt[b];
            len[b - 1] += len[b];
            val.pop_back(); wt.pop_back(); len.pop_back();
        }
    }
    std::vector<double> tv(p.t_tgt.size(), -1.0);
    size_t s = 0;
    for (size_t b = 0; b < val.size(); ++b) {
        for (size_t i = 0; i < len[b]; ++i) {
            tv[seen[s++] - 1] = val[b];
        }
    }
    return tv;
}

mtp_policy_estimates mtp_policy_estimate(const mtp_policy & p, int32_t n_max) {
    mtp_policy_estimates e;
    const int32_t nk = n_max + 1;
    e.target_seconds_by_batch.assign(nk, 0.0);

    // measured batch sizes; unmeasured ones interpolated between them, or extrapolated
    std::vector<int32_t> seen;
    for (int32_t k = 1; k <= std::min(nk, (int32_t) p.t_tgt.size()); ++k) {
        if (p.t_tgt[k - 1] > 0) {
            seen.push_back(k);
        }
    }
    const std::vector<double> tv = nondecreasing(p, seen);
    auto prior = [](int32_t k) { return 1.0 + T_PRIOR_SLOPE * (k - 1); };
    if (seen.empty()) {
        for (int32_t k = 1; k <= nk; ++k) {
            e.target_seconds_by_batch[k - 1] = prior(k) * 1e-3; // arbitrary units until something is measured
        }
    } else {
        const int32_t lo = seen.front(), hi = seen.back();
        const double t_lo = tv[lo - 1], t_hi = tv[hi - 1];
        // slope beyond the largest measured size: the prior's, or the two largest sizes' when that
        // is less (optimistic, so that a longer draft is tried and measured rather than ruled out
        // by a guess; one measurement corrects it)
        double slope = T_PRIOR_SLOPE * t_lo / prior(lo);
        if (seen.size() >= 2) {
            const int32_t k2 = seen[seen.size() - 2];
            slope = std::clamp((t_hi - tv[k2 - 1]) / (hi - k2), 0.0, slope);
        }
        size_t s = 0;
        for (int32_t k = 1; k <= nk; ++k) {
            double t;
            if (k < lo) {
                t = t_lo * prior(k) / prior(lo);
            } else if (k > hi) {
                t = t_hi + slope * (k - hi);
            } else {
                while (seen[s] < k && seen[s + 1] <= k) {
                    ++s;
                }
                const int32_t a = seen[s];
                if (a == k) {
                    t = tv[k - 1];
                } else {
                    const int32_t b = seen[s + 1];
                    t = tv[a - 1] + (tv[b - 1] - tv[a - 1]) * (k - a) / (double) (b - a);
                }
            }
            e.target_seconds_by_batch[k - 1] = t;
        }
    }
    // the per-step time outside the decodes (the engine's and the caller's) is paid by every step,
    // plain or not
    const double t_step_other = p.t_fixed + p.t_call_step;
    for (double & t : e.target_seconds_by_batch) {
        t += t_step_other;
    }
    e.head_seconds = p.t_head >= 0 ? p.t_head : T_HEAD_PRIOR * (e.target_seconds_by_batch[0] - t_step_other);
    // in seconds at the machine's current speed (the choice only depends on their ratios)
    for (double & t : e.target_seconds_by_batch) {
        t *= p.load;
    }
    e.head_seconds *= p.load;
    e.token_seconds = (p.t_token + p.t_call_token) * p.load;

    e.acceptance_by_position = acceptance(p, n_max, ACC_PRIOR);
    return e;
}

int32_t mtp_policy_next(mtp_policy & p, int32_t n_max) {
    n_max = std::min(n_max, p.cap);
    if (n_max <= 0) {
        return 0;
    }
    const mtp_policy_estimates est = mtp_policy_estimate(p, n_max);
    // (leaving plain mode is judged with position 1's prior at this text's longer run)
    const int32_t best = mtp_policy_best_n(est.target_seconds_by_batch, est.head_seconds,
                                           p.plain_mode ? acceptance(p, n_max, slow_acceptance(p)) : est.acceptance_by_position, n_max);
    p.plain_mode = best == 0;
    int32_t n = best;
    if (best == 0) {
        // plain: probe with one draft token now and then, less often while probes keep failing
        // (at most as often as keeps a probe's extra cost near PROBE_OVERHEAD of the time)
        // (what a probe costs more than a plain step: as measured, the head's catch-up on the
        // plain stretch included, else as the estimates say)
        const double t_probe = p.w_probe.empty() ? est.target_seconds_by_batch[std::min(1, n_max)] + est.head_seconds
                                                 : window_median(p.w_probe) * p.load;
        const double t_plain = est.target_seconds_by_batch[0] + est.token_seconds; // a plain step, whole
        const double extra = t_probe - t_plain;
        const int32_t probe_max = std::clamp((int32_t) std::ceil(extra / (PROBE_OVERHEAD * t_plain)), PROBE_MAX_LO, PROBE_MAX_HI);
        p.probe_interval = std::clamp(p.probe_interval, PROBE_MIN, probe_max);
        // when drafting could not pay even if every draft were accepted (a verify batch costs
        // several single-token passes, as in ggml's CPU kernels for some quantizations), a probe
        // can only re-measure the costs: probe as rarely as the overhead cap allows, however
        // often probes are accepted
        // (once the 2-token cost rests on several measurements, or was given: one preempted
        // probe must not stop the probing that would correct it)
        const bool t2_known = p.t_tgt.size() > 1 && p.t_tgt[1] > 0 && (p.pinned || p.n_tgt[1] == 0 || p.n_tgt[1] - 1 >= T_KNOWN_AFTER);
        if (t2_known && !drafting_pays_at(est, 1.0, n_max)) {
            p.probe_interval = probe_max;
        }
        if (++p.n_plain_run >= p.probe_interval) {
            // the best length that drafts at all (1 unless acceptance is believed high)
            n = 1;
            double best_r = 0;
            double reach = 1, tokens = 1;
            for (int32_t m = 1; m <= n_max; ++m) {
                reach  *= est.acceptance_by_position[m - 1];
                tokens += reach;
                const double r = tokens / (m * est.head_seconds + est.target_seconds_by_batch[m]);
                if (r > best_r) {
                    best_r = r;
                    n = m;
                }
            }
            p.n_plain_run = 0;
        }
    } else {
        // drafting: the interval for when it stops paying comes down towards PROBE_START (a
        // drafting stretch that ends may come back), a step at a time (a single step after a
        // lucky probe keeps most of the interval that the probes before it had earned)
        p.n_plain_run = 0;
        p.probe_interval = std::max(PROBE_START, p.probe_interval / 2);
        const int32_t phase = ++p.n_spec_steps % SPEC_PERIOD;
        if (phase == 0 || (phase == 2 && p.n_tgt[0] == 0)) {
            n = 0; // keep the plain cost measured
        } else if (phase == SPEC_PERIOD / 2 && best < n_max && est.acceptance_by_position[best - 1] >= SPEC_LONGER_ACC) {
            n = best + 1;
        }
    }
    p.n_last  = n;
    p.probing = best == 0 && n > 0;
    return n;
}
