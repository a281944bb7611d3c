"""Adaptive speculation (``SpecConfig(adaptive=True)``, the CLI's ``--spec-draft-n-max auto``):
the engine picks 0..n_max draft tokens per step from what it measures.

Losslessness is asserted exactly (greedy token for token, sampling by a chi-square test); the
policy's behaviour is asserted from the per-step draft lengths (``Step.n_drafted``), never from
timings. Flash attention is off, as in test_engine.py.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from mtprun import DraftPolicy, GenerationConfig, PolicyCosts, SamplingConfig, SpecConfig
from mtprun.benchmark import SimulatedMachine, simulate_policy
from mtprun._native import core
from mtprun.engine import choose_draft_length
from mtprun.errors import InvalidInputError
from mtprun.events import Result, Step
from test_engine import PROMPTS, exact_dist, goodness_of_fit, open_engine, run, sample_first_two

# big enough that a target pass costs more than the engine's own per-step work, so that
# speculation pays when the head is right (on the tiny preset plain decoding is about as fast)
MEMORY_BOUND = dict(n_embd=1024, n_vocab=2048, dtype="f16")


def auto(n: int, n_max: int = 6, **sampling) -> GenerationConfig:
    sampling.setdefault("temperature", 0.0)
    return GenerationConfig(max_tokens=n, sampling=SamplingConfig(**sampling), spec=SpecConfig(n_max=n_max, adaptive=True))


def plain(n: int) -> GenerationConfig:
    return GenerationConfig(max_tokens=n, sampling=SamplingConfig(temperature=0.0), spec=SpecConfig(enabled=False))


def draft_lengths(eng, prompt, cfg) -> tuple[list[int], Result]:
    events = list(eng.generate(prompt, cfg))
    assert all(isinstance(e, Step) for e in events[:-1]) and isinstance(events[-1], Result)
    return [e.n_drafted for e in events[:-1]], events[-1]


# --- the pure choice ------------------------------------------------------------------------------


def test_a_costly_verify_batch_with_middling_acceptance_gives_plain_steps():
    # a 2-token verify costs 2.5x a single token (ggml's CPU kernels on some machines): at 60%
    # acceptance 1.6 tokens for 2.5+ the cost loses to plain decoding
    t = [1.0 + 1.5 * k for k in range(7)]
    assert choose_draft_length(t, 0.05, [0.6] * 6) == 0
    assert choose_draft_length(t, 0.05, [0.99] * 6) == 0  # every token drafted costs more than it brings
    # the same 2.5x step up, then flat (a kernel that pads small batches): long drafts pay again
    stepped = [1.0] + [2.5 + 0.1 * k for k in range(6)]
    assert choose_draft_length(stepped, 0.05, [0.6] * 6) == 0
    assert choose_draft_length(stepped, 0.05, [0.99] * 6) == 6


def test_cheap_verify_batches_draft_as_far_as_acceptance_carries():
    flat = [1.0 + 0.05 * k for k in range(7)]  # memory-bound: a verify of 7 costs 1.3x one token
    assert choose_draft_length(flat, 0.05, [1.0] * 6) == 6
    assert choose_draft_length(flat, 0.05, [0.0] * 6) == 0
    # falling conditional acceptance: E = 1.8, 2.2, 2.28 for n = 1, 2, 3 over costs 1.3, 1.6, 1.9
    t = [1.0, 1.2, 1.4, 1.6, 1.8]
    assert choose_draft_length(t, 0.1, [0.8, 0.5, 0.2, 0.2]) == 1
    # the ceiling caps the choice
    assert choose_draft_length(flat, 0.05, [1.0] * 6, n_max=3) == 3


# --- lossless ------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["qwen35", "gemma4"])
@pytest.mark.parametrize("mode", ["random", "oracle"])
def test_greedy_auto_equals_plain_decoding(synth_model, arch, mode):
    model = synth_model(arch=arch, mode=mode, agree=0.7)
    with open_engine(model) as eng:
        for text in PROMPTS:
            prompt = eng.tokenize(text)
            ref = run(eng, prompt, plain(200))
            for n_max in (6, 3):
                lengths, r = draft_lengths(eng, prompt, auto(200, n_max=n_max))
                assert r.stats.mtp and r.stats.adaptive
                assert r.tokens == ref.tokens, (text, n_max)
                assert r.text == ref.text
                assert any(n > 0 for n in lengths)  # it did draft (and verified through rollbacks)
                assert max(lengths) <= n_max
                assert sum(r.stats.steps_by_draft_length) == len(lengths) == r.stats.n_target_passes


# min_drafted: generations that drafted (the policy drafts where the head is often right by its
# measure: random ~50% on broad distributions; the oracle's head is rarely right at this temperature)
@pytest.mark.parametrize("arch,mode,temp,min_drafted", [("qwen35", "random", 4.0, 20), ("qwen35", "oracle", 3.0, 1)])
def test_sampling_with_auto_has_the_target_distribution(synth_model, arch, mode, temp, min_drafted):
    """As test_engine's chi-square test, with the draft length chosen per step; the choice uses
    earlier steps only, so every step still samples the target's exact distribution."""
    model = synth_model(arch=arch, mode=mode, agree=0.5)
    eog = set(model.eog_ids)
    n = 1500
    with open_engine(model, n_ctx=256) as eng, open_engine(model, n_ctx=256, mtp=False) as ref:
        # costs pinned to a memory-bound target's, so whether it drafts follows acceptance alone (on
        # a tiny model's measured costs plain steps win and drafting would depend on the machine)
        eng.set_policy_costs(*MEMORY_BOUND_COSTS, pin=True)
        prompt = eng.tokenize(PROMPTS[0])
        run(ref, prompt, plain(0))
        p1 = exact_dist(np.array(ref.next_logits()), temp, eog)
        top1 = max(p1, key=p1.get)
        run(ref, prompt + [top1], plain(0))
        p2 = exact_dist(np.array(ref.next_logits()), temp, eog)

        first, second, _, _, drafted_runs = sample_first_two(eng, prompt, top1, (
            auto(2, temperature=temp, top_k=0, top_p=1.0, min_p=0.0, seed=seed) for seed in range(n)))
    assert drafted_runs >= min_drafted
    assert goodness_of_fit(first, p1) > 0.001
    if len(second) >= 200:
        assert goodness_of_fit(second, p2) > 0.001


# --- what the policy chooses ------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["qwen35", "gemma4"])
def test_a_head_that_is_always_right_settles_on_the_ceiling(synth_model, arch):
    """Costs pinned to a memory-bound target's: on a busy CPU the short head decodes can cost as
    much as a target pass, and then a shorter draft (or none) truly is faster there."""
    model = synth_model(arch=arch, mode="oracle", agree=1.0, **MEMORY_BOUND)
    with open_engine(model) as eng:
        eng.set_policy_costs(*MEMORY_BOUND_COSTS, pin=True)
        prompt = eng.tokenize(PROMPTS[0])
        lengths, r = draft_lengths(eng, prompt, auto(400))
        settled = lengths[len(lengths) // 2:-1]  # the second half (the last step is cut by the token budget)
        assert sum(n == 6 for n in settled) >= 0.8 * len(settled), "".join(map(str, lengths))
        assert r.stats.policy.acceptance_by_position[0] > 0.9


@pytest.mark.parametrize("arch", ["qwen35", "gemma4"])
def test_a_head_that_is_always_wrong_gives_plain_steps(synth_model, arch):
    model = synth_model(arch=arch, mode="oracle", agree=0.0)
    with open_engine(model) as eng:
        prompt = eng.tokenize(PROMPTS[0])
        lengths, r = draft_lengths(eng, prompt, auto(600))
        after = lengths[30:]
        assert sum(n == 0 for n in after) >= 0.9 * len(after), lengths
        assert r.stats.steps_by_draft_length[0] == lengths.count(0)
        # estimates carry over to the next generation of the same engine: plain from the start
        eng.reset()
        lengths, _ = draft_lengths(eng, prompt, auto(100))
        assert sum(n > 0 for n in lengths[:20]) <= 2, lengths


def test_fixed_length_drafts_exactly_n_max(synth_model):
    model = synth_model(arch="qwen35", mode="oracle", agree=0.0)
    with open_engine(model) as eng:
        prompt = eng.tokenize(PROMPTS[0])
        cfg = GenerationConfig(max_tokens=60, sampling=SamplingConfig(temperature=0.0), spec=SpecConfig(n_max=3, adaptive=False))
        lengths, r = draft_lengths(eng, prompt, cfg)
        assert set(lengths[:-3]) == {3} and not r.stats.adaptive  # the last steps are cut by the budget


def _phase_of(model, cur: int, span: int = 8) -> float:
    """The head's agreement over the next `span` tokens of the oracle's passage after `cur`."""
    succ, mtp = model.successor, model.mtp_prediction
    hits = 0
    for _ in range(span):
        hits += mtp[cur] == succ[cur]
        cur = succ[cur]
    return hits / span


# a memory-bound target's costs (a GPU, or a CPU whose decoding is bound by memory bandwidth): a
# verify of k tokens costs 1 + 0.25 (k - 1) single tokens, a head decode 0.1
MEMORY_BOUND_COSTS = ([1.0 + 0.25 * k for k in range(7)], 0.1)


def test_policy_costs_are_checked(synth_model):
    with open_engine(synth_model(arch="qwen35", mode="oracle", agree=0.5)) as eng:
        for bad in (([], 0.1), ([1.0, 0.0], 0.1), ([1.0, float("nan")], 0.1), ([1.0], -1.0)):
            for pin in (True, False):
                with pytest.raises(InvalidInputError, match="positive"):
                    eng.set_policy_costs(*bad, pin=pin)


def test_a_cost_prior_is_the_starting_estimate_that_measurements_replace(synth_model):
    """Costs saved by ``mtprun bench --save`` start a fresh engine's policy (``SpecConfig.cost_prior``,
    as run and chat pass them): with a prior of "a 2-token verify costs 3 single tokens" its first
    steps are plain, where without one the warm-up drafts. The prior is no pin: the measured costs
    replace it, and a later generation does not set it back."""
    model = synth_model(arch="qwen35", mode="oracle", agree=0.9)
    # t(k) = (2k - 1) t(1), in an absurd unit (10 s) that shows whether measurements replaced it
    prior = PolicyCosts(tuple(10.0 * (1 + 2 * k) for k in range(7)), 1.0)
    with_prior = GenerationConfig(max_tokens=8, sampling=SamplingConfig(temperature=0.0), spec=SpecConfig(cost_prior=prior))
    first = {}
    for cfg in (auto(8), with_prior):
        with open_engine(model) as eng:
            first[cfg is with_prior] = run(eng, eng.tokenize(PROMPTS[0]), cfg).stats.steps_by_draft_length
    assert sum(first[False][1:]) > 0  # no prior: the warm-up drafts
    assert sum(first[True][1:]) == 0 and first[True][0] >= 7  # the prior: plain from the first step
    with open_engine(model) as eng:
        run(eng, eng.tokenize(PROMPTS[0]), replace(with_prior, max_tokens=32))
        stats = run(eng, eng.tokenize(PROMPTS[1]), replace(with_prior, max_tokens=4)).stats
    assert stats.policy.target_seconds_by_batch[0] < 1.0  # a single-token pass measured on this machine


def test_the_draft_length_follows_phases_of_agreement(synth_model):
    """Stretches of 90 tokens where the head is right 95% of the time alternate with stretches
    where it is right 10% of the time: the policy drafts long in the first and decodes plainly in
    the second (it can only follow with a lag: it learns from the tokens behind it). Its costs are
    pinned to a memory-bound target's, so the choice follows acceptance alone and the run is
    deterministic (with measured costs it would depend on this machine: on a loaded 2-core CPU a
    2-token verify can cost several single tokens, and then plain decoding wins everywhere)."""
    model = synth_model(arch="qwen35", mode="oracle", agree=0.5, agree_phases=((90, 0.95), (90, 0.1)))
    with open_engine(model) as eng:
        eng.set_policy_costs(*MEMORY_BOUND_COSTS, pin=True)
        prompt = eng.tokenize(PROMPTS[0])
        events = list(eng.generate(prompt, auto(1500)))
    cur, high, low = prompt[-1], [], []
    for i, e in enumerate(events[:-1]):
        if i >= 20:  # warm-up
            phase = _phase_of(model, cur)
            (high if phase >= 0.8 else low if phase <= 0.3 else []).append(e.n_drafted)
        cur = e.pieces[-1].token
    assert high and low
    assert np.mean(high) >= np.mean(low) + 1.5, (np.mean(high), np.mean(low))


# --- the controller on a simulated machine and text ----------------------------------------------
# mtprun.DraftPolicy is the engine's policy outside an engine: fed the times and outcomes a machine
# model and a seeded text model give (mtprun.benchmark.simulate_policy), it makes the choices the
# engine's would. Deterministic, no timing.

CHEAP = SimulatedMachine(slope=0.1, catch_up=0.2)  # a 7-token verify costs 1.6 single tokens (memory-bound)
COSTLY = SimulatedMachine(slope=0.7, catch_up=0.8)  # a 2-token verify costs 1.7 (ggml's CPU kernels, some quants)


def mean_rate(acceptance_at, machine, seeds=4, n_tokens=3000, **kw) -> float:
    return float(np.mean([simulate_policy(acceptance_at, n_tokens, machine, seed=s, **kw)[0] for s in range(seeds)]))


@pytest.mark.parametrize("a", [0.1, 0.3, 0.5, 0.7])
def test_probing_where_drafting_does_not_pay_costs_at_most_a_few_percent(a):
    # where a verify batch costs nearly two single tokens and the first draft after a plain
    # stretch also catches the head up, even a head right 70% of the time does not pay: the
    # probes that watch for a change of text must stay within 3% of plain decoding
    assert mean_rate(lambda i: a, COSTLY) >= 0.97


@pytest.mark.parametrize("a", [0.3, 0.5, 0.7, 0.9])
def test_on_a_steady_text_auto_is_as_fast_as_the_best_fixed_length(a):
    const = lambda i: a  # noqa: E731
    best = max(max(mean_rate(const, CHEAP, fixed=n) for n in range(1, 7)), 1.0)
    assert mean_rate(const, CHEAP) >= 0.95 * best


def test_on_alternating_stretches_auto_beats_every_fixed_length():
    phases = lambda i: 0.95 if (i // 90) % 2 == 0 else 0.1  # noqa: E731
    best = max(mean_rate(phases, CHEAP, fixed=n) for n in range(1, 7))
    assert mean_rate(phases, CHEAP) >= 1.05 * best


# A shared machine's timing is noisy (each pass x exp(N(0, 0.15)) here, as this machine's passes
# vary), and on some the rate peaks sharply at one length: the Q8_0 bench model on this machine,
# where a 2-token verify costs 1.67 single tokens but each further token only 0.16-0.4 more.
SHARP = SimulatedMachine(costs=(1.0, 1.67, 1.83, 2.03, 2.4, 2.8, 3.2), head=0.16, catch_up=0.8, noise=0.15)
NOISY_MID = SimulatedMachine(slope=0.4, catch_up=0.5, noise=0.15)


@pytest.mark.parametrize("machine, a", [(SHARP, 0.9), (SHARP, 0.7), (NOISY_MID, 0.7), (NOISY_MID, 0.9)])
def test_under_timing_noise_auto_is_as_fast_as_the_best_fixed_length(machine, a):
    const = lambda i: a  # noqa: E731
    best = max(max(mean_rate(const, machine, fixed=n) for n in range(1, 7)), mean_rate(const, machine, fixed=0))
    assert mean_rate(const, machine) >= 0.96 * best


@pytest.mark.parametrize("seed", range(4))
def test_under_timing_noise_the_cost_estimates_stay_near_the_machines_costs(seed):
    # the estimates are the cost curve's shape, learnt from passes of whatever lengths were drafted
    # at whatever the machine's speed was then: noise must average out, not accumulate (estimates
    # that random-walk make the policy spread its drafts over lengths that do not pay)
    policy = DraftPolicy(6)
    errors = []
    for _ in range(6):
        simulate_policy(lambda i: 0.9, 500, SHARP, seed=seed, policy=policy)
        t = policy.estimates().target_seconds_by_batch
        assert list(t) == sorted(t), t  # a pass over more tokens is never estimated cheaper
        # the lengths drafted here (n = 1..3), relative to a plain step
        errors += [abs(t[k - 1] / t[0] / SHARP.target(k) - 1) for k in (2, 3, 4)]
    assert np.mean(errors) <= 0.12 and max(errors) <= 0.35, errors


@pytest.mark.parametrize("per_token", ["token", "caller_token"])
@pytest.mark.parametrize("machine, a", [(COSTLY, 0.7), (replace(SHARP, noise=0.0), 0.5)])
def test_a_cost_per_token_emitted_does_not_make_drafting_look_cheaper_than_it_is(machine, a, per_token):
    # choosing each token from the verify pass's logits (sampling a large vocabulary: on a fast GPU
    # a fifth of a plain step with a 248k vocabulary and no top-k), and the caller's time between
    # steps printing each one (a terminal: ~0.3 ms a token), cost per token emitted: a step that
    # emits three tokens pays them three times. Counted as a cost per step, they would make plain
    # steps (one token per payment) look dearer than they are and keep drafting where it does not
    # pay (0.953x-0.966x plain here); measured apart, auto stays within 3% of plain decoding
    machine = replace(machine, **{per_token: 0.2})
    assert mean_rate(lambda i: a, machine, seeds=3) >= 0.97 * mean_rate(lambda i: a, machine, seeds=3, fixed=0)


def test_per_step_and_per_token_costs_are_told_apart():
    # the caller's time after a step of k tokens: 0.1 + 0.2 k; choosing each token: 0.05
    policy = DraftPolicy(6)
    simulate_policy(lambda i: 0.9, 600, replace(CHEAP, token=0.05, caller_step=0.1, caller_token=0.2), policy=policy)
    est = policy.estimates()
    assert est.token_seconds == pytest.approx(0.25, rel=0.02)
    assert est.target_seconds_by_batch[0] == pytest.approx(1.1, rel=0.02)  # a plain step's pass and the per-step part


def test_cost_estimates_never_decrease_with_the_batch_size():
    # a 5-token pass measured cheaper than a 4-token one (noise, one measurement): pooled, so that a
    # single lucky pass does not make drafting one more token look free
    policy = DraftPolicy(6)
    for _ in range(12):
        for n, t in ((0, 1.0), (3, 2.0), (4, 1.9)):
            policy.observe(n, 0, step_seconds=t, verify_seconds=t)
    t = policy.estimates().target_seconds_by_batch
    assert list(t) == sorted(t), t
    assert t[3] == pytest.approx(t[4], rel=1e-6) and 1.85 <= t[3] <= 2.05, t


def _from_token(steps, start):
    """The steps' draft lengths from the one that starts at token `start` on, with the token each starts at."""
    made, out = 0, []
    for n, n_acc in steps:
        if made >= start:
            out.append((made, n))
        made += n_acc + 1
    return out


@pytest.mark.parametrize("seed", range(4))
def test_a_change_of_text_is_followed_within_a_few_dozen_tokens(seed):
    # the head stops being right (code -> prose): a plain step within a dozen steps
    _, steps = simulate_policy(lambda i: 0.95 if i < 400 else 0.05, 800, CHEAP, seed=seed)
    after = [n for _, n in _from_token(steps, 400)]
    assert 0 in after[:12], after[:12]
    # ... and starts being right: drafting again (3 drafting steps in a row) within 64 tokens
    _, steps = simulate_policy(lambda i: 0.05 if i < 400 else 0.95, 800, CHEAP, seed=seed)
    run, back_at = 0, None
    for made, n in _from_token(steps, 400):
        run = run + 1 if n else 0
        if run == 3:
            back_at = made - 400
            break
    assert back_at is not None and back_at <= 64, back_at


def test_a_policy_object_rejects_what_it_cannot_use():
    with pytest.raises(InvalidInputError):
        DraftPolicy(0)
    policy = DraftPolicy(6)
    for bad in ([], [0.0, 1.0], [1.0] * 66):
        with pytest.raises(InvalidInputError):
            policy.set_costs(bad, 0.1, pin=True)
    with pytest.raises(InvalidInputError):
        policy.observe(2, 3, step_seconds=1.0, verify_seconds=1.0)
    with pytest.raises(InvalidInputError):
        policy.observe(7, 0, step_seconds=1.0, verify_seconds=1.0)
