// The draft-length policy: an online cost model of this machine and an acceptance model of this
// text, and the choice of how many tokens to draft next (0 = a plain step).
//
// Expected tokens of a step that drafts n:  E(n) = 1 + sum_{i<=n} prod_{j<=i} a_j
// its cost:                                 C(n) = n * t_head + t_target(n + 1)
// where a_j is the acceptance of draft position j given that positions 1..j-1 were accepted,
// t_head the cost of one MTP-head decode and t_target(k) that of a target pass over k tokens plus
// whatever else every step costs. Choosing the step's tokens from the verify pass's logits costs
// t_token per token emitted (a row is sampled per token, up to the first rejected draft), and so
// does much of the caller's work between steps (printing them): the step costs C(n) + E(n) * t_token,
// whose rate E / (C + E * t_token) is largest where E / C is, so the choice leaves it out; it must
// only not be counted as a cost per step (it is measured apart).
// The policy picks the n in 0..n_max with the largest E(n) / C(n). Its inputs are measurements
// of earlier steps only: the choice never depends on the current step's random draws, so
// speculation stays lossless whatever it picks.
#pragma once

#include <cstdint>
#include <vector>

// the pure choice: t_target[k-1] = cost of a target pass over k tokens (k = 1..n_max+1),
// acc[j-1] = conditional acceptance of draft position j (j = 1..n_max); returns n in 0..n_max
int32_t mtp_policy_best_n(const std::vector<double> & t_target, double t_head, const std::vector<double> & acc, int32_t n_max);

// what the policy currently believes (seconds; acceptance in 0..1); Python: PolicyEstimates
struct mtp_policy_estimates {
    std::vector<double> acceptance_by_position;  // by draft position 1..cap, conditional on the previous ones
    std::vector<double> target_seconds_by_batch; // a target pass over k = 1..cap+1 tokens
    double              head_seconds = 0;        // one MTP-head decode (catch-up of pending positions included)
    double              token_seconds = 0;       // per token emitted: choosing it from the verify pass's
                                                 // logits, and the caller's time handing it on
};

// running estimates, carried across the generations of one engine
struct mtp_policy {
    int32_t cap = 0;                  // the largest n any generation may ask for

    // the costs: a target pass over k tokens takes load * t_tgt[k-1], a head decode load * t_head,
    // where `load` is the machine's current speed (how long a one-token pass takes now) and
    // t_tgt / t_head are the cost curve's shape (t_tgt[0] = 1). Both are estimated together by a
    // Kalman filter on the logarithms of the measured times (kf_m, kf_P; see policy.cpp): the speed
    // moves from step to step (a machine that gets busy or idle), the shape barely, so timing noise
    // averages out in the shape, and measurements taken at different speeds compare as if taken
    // together. State: [log load, log t_tgt[1..cap], log t_head].
    double  load = 1;
    std::vector<double>  kf_m;        // the state's mean
    std::vector<double>  kf_P;        // its covariance (row-major, kf_m.size() squared)
    std::vector<double>  t_tgt;       // the shape by k (index k-1); < 0: not measured
    std::vector<int32_t> n_tgt;       // measurements by k
    double  t_head    = -1;           // head decode, the shape; < 0: not measured
    int32_t n_head    = 0;            // head measurements
    double  t_fixed   = 0;            // the engine's own per-step time outside the decodes and the token choice
    double  t_token   = 0;            // choosing one emitted token (sampling the verify pass's rows)
    // the caller's time between steps, handing the previous step's k tokens on (a terminal renders
    // each): t_call_step + k * t_call_token, from the times after 1-token steps (w_call1) and
    // what k-token steps add per token beyond those (w_call_tok)
    double  t_call_step = 0, t_call_token = 0;
    bool    pinned    = false;        // costs fixed by mtp_policy_set_costs(pin): timings are not observed
    std::vector<double> w_fixed;
    std::vector<double> w_token;
    std::vector<double> w_call1;
    std::vector<double> w_call_tok;
    std::vector<double>  acc_w;       // decayed accepted counts by draft position
    std::vector<double>  try_w;       // decayed tried counts by draft position
    std::vector<int64_t> acc_at;      // n_tokens when each position's counts were last decayed
    int64_t n_tokens      = 0;        // tokens generated (steps observed), the acceptance clock
    double  surprise      = 1;        // how likely the latest outcomes were, together (see observe_draft)
    int32_t surprise_dir  = 0;        // -1: fewer accepted than expected, +1: more
    double  acc_slow = 0, try_slow = 0; // position 1's counts, fading slowly (this text's longer-run rate)
    int64_t slow_at  = 0;             // n_tokens when they were last decayed

    // exploration
    int32_t n_plain_run    = 0;       // plain steps since the last draft
    int32_t probe_interval = 0;       // plain steps between 1-token probes
    int32_t n_spec_steps   = 0;       // drafting steps, for the occasional longer draft
    int32_t n_last         = 0;       // the length chosen last
    bool    probing        = false;   // the last choice was a probe from plain mode
    bool    plain_mode     = false;   // the last choice's best length was 0
    std::vector<double> w_probe;      // the latest probe steps' whole times (load units): the head's
                                      // catch-up on the plain stretch included, which no estimate has
};

void mtp_policy_init(mtp_policy & p, int32_t cap);
// cost estimates (t_target[k-1] for k = 1..; the last repeats its step beyond): with pin, fixed from
// now on (the timing observations are ignored, acceptance is still learnt: for tests); without, a
// starting estimate (a prior) that each batch size's and the head's own measurements replace
void mtp_policy_set_costs(mtp_policy & p, const std::vector<double> & t_target, double t_head, bool pin);
// whether costs can be given to mtp_policy_set_costs: at least one, all positive and finite, t_head >= 0
bool mtp_policy_costs_valid(const std::vector<double> & t_target, double t_head);

// the length to draft next: the best by the current estimates, or an exploring choice
int32_t mtp_policy_next(mtp_policy & p, int32_t n_max);

// what one step measured: it drafted n_drafted tokens of which the first n_acc were accepted; its
// target pass (over n_drafted + 1 tokens) took t_verify, the whole step t_step, its head decodes
// t_head, of which n_head_decodes can be counted as one decode each (0 after plain steps, when the
// first batch also catches the head up; the probe's whole time still teaches what a probe costs),
// choosing its n_acc + 1 tokens from the verify pass's rows t_choose, and of t_step, t_caller was
// the caller's time since the previous step, which had emitted n_caller_tokens (0: no previous step).
// The first pass over a new batch size also builds its graph: that one is not counted.
void mtp_policy_observe(mtp_policy & p, int32_t n_drafted, int32_t n_acc, double t_step, double t_verify,
                        int32_t n_head_decodes, double t_head, double t_choose = 0, double t_caller = 0,
                        int32_t n_caller_tokens = 0);

// the estimates the choice uses, for statistics (n_max entries of acceptance, n_max+1 of t_target)
mtp_policy_estimates mtp_policy_estimate(const mtp_policy & p, int32_t n_max);
