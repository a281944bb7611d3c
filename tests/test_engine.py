"""The native MTP engine through its Python facade, on synthetic models (mtprun.synth).

Numerics: llama.cpp's single-token and batched paths are not bit-identical; with flash attention on,
CPU logits differed by ~1e-2 between them, enough to flip a near-tie. These tests run with flash
attention OFF, on f32 models whose top-1 logit margins are large (oracle: the predicted token's
logit is ORACLE_TOP_LOGIT above all others; random: logits with a large spread), and demand exact
token equality with plain decoding, never "mostly equal".
"""

from __future__ import annotations

import math
import struct
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mtprun import GenerationConfig, ModelConfig, SamplingConfig, SpecConfig
from mtprun.engine import Engine
from mtprun.errors import ContextOverflowError, EngineClosedError, InvalidInputError, ModelError
from mtprun.events import Result, Step

PROMPTS = [" Once upon a quiet", " seven curious foxes wandered", " hills. Every brave"]


def greedy(n: int, spec: bool, n_max: int = 2, **sampling) -> GenerationConfig:
    return GenerationConfig(
        max_tokens=n,
        sampling=SamplingConfig(temperature=0.0, **sampling),
        spec=SpecConfig(enabled=spec, n_max=n_max, adaptive=False),
    )


def run(eng: Engine, prompt: list[int], cfg: GenerationConfig) -> Result:
    events = list(eng.generate(prompt, cfg))
    assert isinstance(events[-1], Result)
    assert all(isinstance(e, Step) for e in events[:-1])
    return events[-1]


def sample_first_two(eng: Engine, prompt: list[int], top1: int, configs):
    """One generation per config (each with its own seed): the first tokens sampled, the second
    ones where the first was ``top1``, tokens accepted and drafted, and how many runs drafted."""
    first, second, accepted, drafted, drafted_runs = [], [], 0, 0, 0
    for cfg in configs:
        r = run(eng, prompt, cfg)
        toks = list(r.tokens) + ([EOG] if r.stop_reason == "eos" else [])
        first.append(toks[0])
        if toks[0] == top1 and len(toks) > 1:
            second.append(toks[1])
        accepted += r.stats.n_accepted
        drafted += r.stats.n_drafted
        drafted_runs += r.stats.n_drafted > 0
    return first, second, accepted, drafted, drafted_runs


def open_engine(model, **kw) -> Engine:
    kw.setdefault("flash_attn", False)
    kw.setdefault("n_ctx", 1024)
    kw.setdefault("n_threads", 1)  # tiny models: one thread is fastest, and CI has two cores
    return Engine(ModelConfig(path=model.model_path, draft_path=model.draft_path, **kw))


# --- lossless greedy ------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["qwen35", "gemma4"])
@pytest.mark.parametrize("mode", ["random", "oracle"])
def test_greedy_mtp_equals_plain_decoding(synth_model, arch, mode):
    model = synth_model(arch=arch, mode=mode, agree=0.7)
    with open_engine(model) as eng:
        assert eng.info.mtp_active
        for text in PROMPTS:
            prompt = eng.tokenize(text)
            plain = run(eng, prompt, greedy(160, spec=False))
            assert not plain.stats.mtp and plain.stats.n_drafted == 0
            for n_max in range(1, 7):
                eng.reset()
                r = run(eng, prompt, greedy(160, spec=True, n_max=n_max))
                assert r.stats.mtp
                assert r.tokens == plain.tokens, (text, n_max)
                assert r.text == plain.text
                # drafts were accepted, and rejections happened and were recovered from
                assert 0 < r.stats.n_accepted < r.stats.n_drafted


@pytest.mark.parametrize("arch", ["qwen35", "gemma4"])
def test_greedy_mtp_equals_plain_with_repetition_and_presence_penalties(synth_model, arch):
    # random weights: long enough a generation comes back to tokens it produced, and the
    # penalties then change which token wins
    model = synth_model(arch=arch, mode="random", agree=0.7)
    with open_engine(model) as eng:
        prompt = eng.tokenize(PROMPTS[0])
        pen = dict(repeat_penalty=1.3, presence_penalty=10.0, repeat_last_n=-1)
        plain = run(eng, prompt, greedy(300, spec=False, **pen))
        unpenalized = run(eng, prompt, greedy(300, spec=False))
        assert plain.tokens != unpenalized.tokens  # the penalties do act
        for n_max in (1, 3, 5):
            r = run(eng, prompt, greedy(300, spec=True, n_max=n_max, **pen))
            assert r.tokens == plain.tokens
            assert 0 < r.stats.n_accepted < r.stats.n_drafted


# --- acceptance on constructed models ----------------------------------------------------------------


def expected_counts(model, last: int, n_tokens: int, n_max: int):
    """Our loop's greedy steps replayed on the oracle's successor/MTP maps: drafted and accepted
    counts per draft position, tokens per target pass."""
    succ, mtp = model.successor, model.mtp_prediction
    drafted, accepted = [0] * n_max, [0] * n_max
    produced, passes, cur = 0, 0, last
    while produced < n_tokens:
        n = min(n_max, n_tokens - produced - 1)
        draft, t = [], cur
        for _ in range(n):
            t = mtp[t]
            draft.append(t)
        for i in range(n):
            drafted[i] += 1
        k = 0
        for i, d in enumerate(draft):
            if d != succ[cur]:
                break
            accepted[i] += 1
            cur, k = d, k + 1
        cur = succ[cur]
        produced += k + 1
        passes += 1
    return drafted, accepted, passes


@pytest.mark.parametrize("arch", ["qwen35", "gemma4"])
@pytest.mark.parametrize("agree", [1.0, 0.7, 0.3])
def test_oracle_acceptance_matches_agreement(synth_model, arch, agree):
    model = synth_model(arch=arch, mode="oracle", agree=agree)
    n_tokens = 600  # ten turns of the cycle
    with open_engine(model) as eng:
        prompt = eng.tokenize(PROMPTS[0])
        for n_max in (1, 3):
            eng.reset()
            r = run(eng, prompt, greedy(n_tokens, spec=True, n_max=n_max))
            drafted, accepted, passes = expected_counts(model, prompt[-1], n_tokens, n_max)
            # exactly the constructed behaviour ...
            assert r.stats.drafted_by_position == tuple(drafted)
            assert r.stats.accepted_by_position == tuple(accepted)
            assert r.stats.n_target_passes == passes
            # ... which makes acceptance at the first draft position ~= P (within 0.1)
            assert abs(accepted[0] / drafted[0] - agree) <= 0.1, accepted[0] / drafted[0]
            if agree == 1.0:
                assert r.stats.acceptance == 1.0
                assert r.stats.tokens_per_pass == pytest.approx(n_tokens / math.ceil(n_tokens / (n_max + 1)), rel=0.02)


# Q4_K_M quantizes rows in blocks of 256: the tiny models' n_ff (and gemma4's drafter) widened
QUANT_FIELDS = {"Q8_0": {}, "Q4_K_M": dict(n_embd=512, n_ff=512, draft_n_embd=256)}


@pytest.mark.parametrize("arch", ["qwen35", "gemma4"])
@pytest.mark.parametrize("quant", ["Q8_0", "Q4_K_M"])
def test_quantized_oracle_keeps_its_cycle_acceptance_and_losslessness(synth_model, arch, quant):
    """llama.cpp's quantizer keeps what the oracle construction promises: the cycle, the exact
    draft/accept counts, and greedy MTP output equal to plain decoding."""
    model = synth_model(arch=arch, mode="oracle", agree=0.7, quant=quant, **QUANT_FIELDS[quant])
    n_tokens = 300
    with open_engine(model) as eng:
        assert eng.info.mtp_active
        prompt = eng.tokenize(PROMPTS[1])
        plain = run(eng, prompt, greedy(n_tokens, spec=False))
        assert list(plain.tokens) == model.greedy_continuation(prompt[-1], n_tokens)
        for n_max in (1, 3, 6):
            eng.reset()
            r = run(eng, prompt, greedy(n_tokens, spec=True, n_max=n_max))
            assert r.tokens == plain.tokens, n_max
            drafted, accepted, passes = expected_counts(model, prompt[-1], n_tokens, n_max)
            assert r.stats.drafted_by_position == tuple(drafted)
            assert r.stats.accepted_by_position == tuple(accepted)
            assert r.stats.n_target_passes == passes


def test_phase_model_acceptance_follows_its_phases(synth_model):
    model = synth_model(arch="qwen35", mode="oracle", agree_phases=((40, 0.95), (40, 0.2)))
    n_tokens = 3 * len(model.cycle)
    pos = {c: k for k, c in enumerate(model.cycle)}
    with open_engine(model) as eng:
        prompt = eng.tokenize(PROMPTS[0])
        steps = [e for e in eng.generate(prompt, greedy(n_tokens, spec=True, n_max=1)) if isinstance(e, Step)]
    # one draft per step, made after the step's previous token: accepted exactly where the phases say
    prev, by_phase = prompt[-1], ([], [])
    for st in steps:
        if st.n_drafted:
            k = pos[prev]
            assert st.n_accepted == model.agree_positions[k], k
            by_phase[k >= 40].append(st.n_accepted)
        prev = st.pieces[-1].token
    high, low = (sum(x) / len(x) for x in by_phase)
    assert high > 0.9 and low < 0.3


# --- lossless sampling ---------------------------------------------------------------------------


def chi2_sf(x: float, df: int) -> float:
    """Upper tail of the chi-square distribution (Wilson-Hilferty approximation)."""
    z = ((x / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))
    return 0.5 * math.erfc(z / math.sqrt(2))


EOG = -1  # one category for every end-of-generation token (the engine does not emit which)


def exact_dist(logits: np.ndarray, temperature: float, eog_ids, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0) -> dict[int, float]:
    """Plain sampling's exact distribution: llama.cpp's default chain, written out plainly: top-k
    by logit, then top-p (the shortest prefix by probability at temperature 1 whose mass reaches
    top_p) and min-p (probability at least min_p times the top one's), then the softmax at the
    temperature over what is left. Ties are broken by token id."""
    logits = logits.astype(np.float64)
    order = np.lexsort((np.arange(len(logits)), -logits))  # by logit descending, then id
    if top_k > 0:
        order = order[:top_k]
    kept = len(order)
    if top_p < 1.0 or min_p > 0.0:
        q = np.exp(logits[order] - logits[order[0]])
        q /= q.sum()
        if top_p < 1.0:
            kept = min(kept, int(np.searchsorted(np.cumsum(q), top_p)) + 1)
        if min_p > 0.0:
            kept = min(kept, int(np.sum(q >= min_p * q[0])))
    order = order[:kept]
    z = logits[order] / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    full = dict.fromkeys(range(len(logits)), 0.0)
    full.update({int(i): float(x) for i, x in zip(order, p)})
    out = {i: q for i, q in full.items() if i not in eog_ids}
    out[EOG] = float(sum(full[i] for i in eog_ids))
    return out


def goodness_of_fit(samples: list[int], p: dict[int, float]) -> float:
    """p-value of a chi-square goodness-of-fit test of samples against p; tokens expected fewer
    than 5 times share one pooled bin."""
    n = len(samples)
    seen = Counter(samples)
    big = {t for t, q in p.items() if n * q >= 5}
    bins = [(seen[t], n * p[t]) for t in big]
    rest = (sum(c for t, c in seen.items() if t not in big), n * sum(q for t, q in p.items() if t not in big))
    if rest[1] >= 5:
        bins.append(rest)
    else:
        assert rest[0] <= 10, "too many samples of very unlikely tokens"
    assert len(bins) >= 2
    stat = sum((c - e) ** 2 / e for c, e in bins)
    return chi2_sf(stat, len(bins) - 1)


@pytest.mark.parametrize(
    "arch,mode,temp",
    [
        # random weights: a broad distribution over hundreds of tokens; the unrelated MTP head's
        # drafts are accepted about half the time, so residual resampling shapes most of it
        ("qwen35", "random", 4.0),
        ("gemma4", "random", 4.0),
        # oracle: one token carries most of the mass, and the head agrees on half the tokens;
        # the second position is tested too (given the first token was the likely one)
        ("qwen35", "oracle", 3.0),
    ],
)
@pytest.mark.parametrize("spec", [True, False])
def test_sampling_has_the_target_distribution(synth_model, arch, mode, temp, spec):
    """Sampled tokens follow the target's exact sampling distribution: chi-square goodness of fit
    at significance 0.001 per tested position, with MTP speculation and without."""
    model = synth_model(arch=arch, mode=mode, agree=0.5)
    eog = set(model.eog_ids)
    n = 1500
    with open_engine(model, n_ctx=256) as eng, open_engine(model, n_ctx=256, mtp=False) as ref:
        prompt = eng.tokenize(PROMPTS[0])
        run(ref, prompt, greedy(0, spec=False))
        p1 = exact_dist(np.array(ref.next_logits()), temp, eog)
        top1 = max(p1, key=p1.get)
        run(ref, prompt + [top1], greedy(0, spec=False))
        p2 = exact_dist(np.array(ref.next_logits()), temp, eog)

        first, second, accepted, drafted, _ = sample_first_two(eng, prompt, top1, (
            GenerationConfig(max_tokens=2, sampling=SamplingConfig(temperature=temp, top_k=0, top_p=1.0, min_p=0.0, seed=seed),
                             spec=SpecConfig(enabled=spec, n_max=3, adaptive=False))
            for seed in range(n)))
    if spec:
        assert 0.2 < accepted / drafted < 0.95  # drafts are both accepted and rejected
    assert goodness_of_fit(first, p1) > 0.001
    if len(second) >= 200:
        assert goodness_of_fit(second, p2) > 0.001


def cut_filters(logits: np.ndarray, top_k: int, n_top_p: int, n_min_p: int) -> dict:
    """Filter values that keep exactly n_top_p / n_min_p tokens of the pool (the top_k, or the
    whole vocabulary) on these logits: each threshold halfway between two tokens' values."""
    pool = np.sort(logits.astype(np.float64))[::-1][: top_k if top_k > 0 else None]
    q = np.exp(pool - pool[0])
    q /= q.sum()
    c = np.cumsum(q)
    return dict(top_k=top_k,
                top_p=float((c[n_top_p - 2] + c[n_top_p - 1]) / 2) if n_top_p else 1.0,
                min_p=float(math.sqrt(q[n_min_p - 1] * q[n_min_p]) / q[0]) if n_min_p else 0.0)


@pytest.mark.parametrize(
    "cut,kept",
    [((0, 12, 0), 12), ((0, 0, 6), 6), ((0, 12, 6), 6), ((20, 8, 0), 8), ((5, 0, 0), 5)],
    ids=["top_p", "min_p", "top_p+min_p", "top_k+top_p", "top_k"],
)
@pytest.mark.parametrize("spec", [True, False])
def test_filtered_sampling_has_the_filtered_distribution(synth_model, cut, kept, spec):
    """With top-k / top-p / min-p cutting the vocabulary, sampled tokens never leave the kept set
    and follow its renormalised distribution at the temperature (chi-square at 0.001), with MTP
    speculation and without; top-p and min-p are computed on the pool's softmax at temperature 1
    (llama.cpp's order). The cuts are placed where they keep a known number of tokens."""
    model = synth_model(arch="qwen35", mode="random", agree=0.5)
    eog = set(model.eog_ids)
    temp, n = 4.0, 1200
    with open_engine(model, n_ctx=256) as eng, open_engine(model, n_ctx=256, mtp=False) as ref:
        prompt = eng.tokenize(PROMPTS[0])
        run(ref, prompt, greedy(0, spec=False))
        logits = np.array(ref.next_logits())
        filters = cut_filters(logits, *cut)
        p1 = exact_dist(logits, temp, eog, **filters)
        support = {t for t, q in p1.items() if q > 0}
        assert len(support) == kept
        first, _, accepted, drafted, _ = sample_first_two(eng, prompt, -2, (
            GenerationConfig(max_tokens=2, sampling=SamplingConfig(temperature=temp, seed=seed, **filters),
                             spec=SpecConfig(enabled=spec, n_max=3, adaptive=False))
            for seed in range(n)))
    if spec:
        assert 0 < accepted < drafted  # the first token was a verified draft, accepted or resampled
    assert set(first) <= support
    assert goodness_of_fit(first, p1) > 0.001


def poison_logits(model, tokens, path):
    """A copy of the model whose output head gives NaN logits for ``tokens`` (a NaN weight in each
    one's row of output.weight, which the MTP head shares): what a broken quantization can give."""
    from gguf import GGUFReader

    data = bytearray(Path(model.model_path).read_bytes())
    out = next(t for t in GGUFReader(model.model_path).tensors if t.name == "output.weight")
    assert out.tensor_type.name == "F32"
    n_embd = int(out.shape[0])
    for t in tokens:
        struct.pack_into("<f", data, int(out.data_offset) + 4 * n_embd * t, float("nan"))
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("spec", [True, False])
def test_nan_logits_are_never_chosen(synth_model, tmp_path, spec):
    """A token whose logit is NaN weighs nothing: greedy decoding goes on as if it were not there
    (token 0's included, where a running maximum starts), and sampling, with filters and without,
    never draws it (one NaN used to make every probability NaN)."""
    model = synth_model(arch="qwen35", mode="random", agree=0.5)
    with open_engine(model, n_ctx=256) as eng:
        prompt = eng.tokenize(PROMPTS[0])
        clean = run(eng, prompt, greedy(24, spec=spec)).tokens
        sampled = Counter()
        for seed in range(30):
            sampled.update(run(eng, prompt, GenerationConfig(max_tokens=6, sampling=SamplingConfig(temperature=4.0, top_k=0, top_p=1.0, min_p=0.0, seed=seed),
                                                             spec=SpecConfig(enabled=spec, n_max=3, adaptive=False))).tokens)
    likely = [t for t, _ in sampled.most_common() if t not in clean and t != 0][:3]  # drawn often, never greedy's
    assert likely
    poisoned = poison_logits(model, [0, *likely], tmp_path / "nan.gguf")
    with Engine(ModelConfig(path=poisoned, n_ctx=256, flash_attn=False, n_threads=1)) as eng:
        assert run(eng, prompt, greedy(24, spec=spec)).tokens == clean
        for filters in (dict(top_k=0, top_p=1.0, min_p=0.0), dict(top_k=0, top_p=0.95, min_p=0.0), dict(top_k=40, top_p=0.95, min_p=0.01)):
            drawn, first = Counter(), Counter()
            for seed in range(30):
                toks = run(eng, prompt, GenerationConfig(max_tokens=6, sampling=SamplingConfig(temperature=4.0, seed=seed, **filters),
                                                         spec=SpecConfig(enabled=spec, n_max=3, adaptive=False))).tokens
                drawn.update(toks)
                first[toks[0]] += 1
            assert not set(drawn) & {0, *likely}, filters
            assert len(first) > 3, filters  # still a distribution: the seed decides, not a stuck draw


def test_same_seed_gives_the_same_sample(synth_model):
    model = synth_model(arch="qwen35", mode="oracle", agree=0.5)
    with open_engine(model) as eng:
        prompt = eng.tokenize(PROMPTS[1])
        cfg = GenerationConfig(max_tokens=40, sampling=SamplingConfig(temperature=2.0, seed=7), spec=SpecConfig(n_max=3, adaptive=False))
        assert run(eng, prompt, cfg).tokens == run(eng, prompt, cfg).tokens


# --- state: rollback, multi-turn --------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["random", "oracle"])
def test_rollback_restores_recurrent_state(synth_model, mode):
    """After many partial acceptances on the hybrid (gated delta net) model, the engine's state
    equals a fresh one that processed the same tokens: its next-token logits agree to float
    precision. (On random models every layer, the recurrent ones included, changes the output.)"""
    model = synth_model(arch="qwen35", mode=mode, agree=0.7)
    with open_engine(model) as eng, open_engine(model, mtp=False) as fresh:
        assert eng.info.recurrent
        prompt = eng.tokenize(PROMPTS[0])
        r = run(eng, prompt, greedy(100, spec=True, n_max=4))
        assert 0 < r.stats.n_accepted < r.stats.n_drafted  # partly accepted, rolled back
        ours = np.array(eng.next_logits())
        run(fresh, prompt + list(r.tokens), greedy(0, spec=False))
        theirs = np.array(fresh.next_logits())
        assert np.abs(ours - theirs).max() < 1e-3
        # and generation continues exactly as plain decoding from scratch would
        cont = prompt + list(r.tokens) + eng.tokenize(" and", add_special=False)
        assert run(eng, cont, greedy(60, spec=True, n_max=3)).tokens == run(fresh, cont, greedy(60, spec=False)).tokens


@pytest.mark.parametrize("arch", ["qwen35", "gemma4"])
def test_multi_turn_append_reuses_the_cache_and_matches_a_fresh_run(synth_model, arch):
    model = synth_model(arch=arch, mode="random")
    with open_engine(model) as eng, open_engine(model) as fresh:
        convo = eng.tokenize(PROMPTS[0])
        for turn in range(3):
            r = run(eng, convo, greedy(30, spec=True, n_max=3))
            if turn:
                # only the new tokens were processed
                assert r.stats.n_prompt_reused == len(convo) - len(new) - 1
            assert r.tokens == run(fresh, convo, greedy(30, spec=False)).tokens
            fresh.reset()
            new = eng.tokenize(" next question", add_special=False)
            convo = convo + list(r.tokens) + new


def test_edited_history_is_processed_again_correctly(synth_model):
    model = synth_model(arch="gemma4", mode="random")
    with open_engine(model) as eng, open_engine(model) as fresh:
        a = eng.tokenize(PROMPTS[0] + PROMPTS[1])
        run(eng, a, greedy(20, spec=True))
        b = a[:4] + eng.tokenize(" different ending", add_special=False)
        r = run(eng, b, greedy(40, spec=True, n_max=2))
        # the 4 shared tokens stay; the last of them is decoded again for its hidden state
        assert r.stats.n_prompt_reused == 3
        assert r.tokens == run(fresh, b, greedy(40, spec=False)).tokens


# --- stopping -----------------------------------------------------------------------------------------


def test_token_budget_is_exact_even_with_drafts_in_flight(synth_model):
    model = synth_model(arch="qwen35", mode="oracle", agree=1.0)
    with open_engine(model) as eng:
        prompt = eng.tokenize(PROMPTS[0])
        for n in (1, 2, 7, 50):
            r = run(eng, prompt, greedy(n, spec=True, n_max=6))
            assert len(r.tokens) == n and r.stop_reason == "length"
        assert run(eng, prompt, greedy(0, spec=True)).tokens == ()


@pytest.mark.parametrize("arch", ["qwen35", "gemma4"])
def test_end_of_generation_inside_an_accepted_draft_stops_there(synth_model, arch):
    """The passage ends with the end-of-generation token and the head drafts it: generation stops
    at it (the text is the passage, nothing after), and the next turn continues correctly."""
    model = synth_model(arch=arch, mode="oracle", agree=1.0, end_with_eos=True)
    assert model.cycle[-1] in model.eog_ids
    with open_engine(model) as eng, open_engine(model, mtp=False) as fresh:
        prompt = eng.tokenize(" Once")
        events = list(eng.generate(prompt, greedy(500, spec=True, n_max=4)))
        r = events[-1]
        assert r.stop_reason == "eos"
        assert r.text == model.cycle_text[len(" Once"):]
        assert r.stats.n_generated == len(r.tokens) + 1  # the end token counts, but is not text
        # it came inside an accepted draft: the last step accepted a draft and emitted no token
        # after the end of generation
        last = events[-2]
        assert last.n_accepted >= 1 and all(p.from_draft for p in last.pieces)
        nxt = prompt + list(r.tokens) + [model.eos_id] + eng.tokenize(" Once", add_special=False)
        assert run(eng, nxt, greedy(30, spec=True, n_max=4)).tokens == run(fresh, nxt, greedy(30, spec=False)).tokens


def test_full_context_stops_with_a_reason(synth_model):
    model = synth_model(arch="qwen35", mode="oracle", agree=1.0)
    with open_engine(model, n_ctx=64) as eng:
        prompt = eng.tokenize(PROMPTS[0])
        r = run(eng, prompt, greedy(-1, spec=True, n_max=4))
        assert r.stop_reason == "context"
        assert len(prompt) + len(r.tokens) == eng.info.n_ctx + 1  # the last token needs no position
        plain = run(eng, prompt, greedy(-1, spec=False))
        assert plain.stop_reason == "context" and plain.tokens == r.tokens


def test_prompt_longer_than_the_context_is_refused(synth_model):
    model = synth_model(arch="qwen35", mode="random")
    with open_engine(model, n_ctx=32) as eng:
        prompt = eng.tokenize(" word") * (eng.info.n_ctx + 1)
        with pytest.raises(ContextOverflowError, match="context"):
            run(eng, prompt, greedy(5, spec=True))
        assert len(run(eng, prompt[:10], greedy(5, spec=True)).tokens) == 5  # still usable


def test_cancel_ends_generation_within_one_step_and_the_engine_stays_usable(synth_model):
    model = synth_model(arch="qwen35", mode="oracle", agree=0.7)
    with open_engine(model) as eng:
        prompt = eng.tokenize(PROMPTS[0])
        gen = eng.generate(prompt, greedy(500, spec=True, n_max=3))
        first = next(gen)
        assert isinstance(first, Step)
        eng.cancel()
        rest = list(gen)
        assert len(rest) == 1 and rest[0].stop_reason == "cancelled"
        assert 0 < len(rest[0].tokens) < 10
        # a cancel from another thread while generating
        timer = threading.Timer(0.05, eng.cancel)
        timer.start()
        r = run(eng, prompt, greedy(100_000, spec=True, n_max=3))
        timer.join()
        assert r.stop_reason in ("cancelled", "context")
        assert run(eng, prompt, greedy(30, spec=True)).tokens == run(eng, prompt, greedy(30, spec=False)).tokens


_SIGINT_CONSUMER = """
import sys
from mtprun import Engine, GenerationConfig, ModelConfig, SamplingConfig
eng = Engine(ModelConfig(path=sys.argv[1], n_ctx=2048, n_threads=1, flash_attn=False))
prompt = eng.tokenize(" Once upon a quiet hill seven curious foxes wandered" * 150)  # ~1500 tokens of prefill
print("ready", flush=True)
try:
    while True:
        for event in eng.generate(prompt, GenerationConfig(max_tokens=100, sampling=SamplingConfig(temperature=0.7))):
            pass
        eng.reset()  # the next prompt is processed again: Ctrl-C lands in prefill or in steps
except KeyboardInterrupt:
    eng.close()
    print("interrupted", flush=True)
    sys.exit(3)
"""


def test_ctrl_c_while_iterating_generate_exits_cleanly(synth_model):
    """SIGINT delivered at any point while the main thread iterates ``Engine.generate`` (prefill in
    its worker thread, or steps) is a KeyboardInterrupt in the consumer, after which it can close
    the engine and exit: no signal death (it used to die of SIGSEGV now and then, the prefill
    worker still inside the engine while the interpreter exited)."""
    import signal
    import subprocess
    import sys
    import time

    model = synth_model(arch="qwen35")
    for delay in (0.0, 0.01, 0.03, 0.07, 0.12, 0.2, 0.3, 0.45):
        p = subprocess.Popen([sys.executable, "-c", _SIGINT_CONSUMER, str(model.model_path)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert p.stdout.readline() == "ready\n"
        time.sleep(delay)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=120)
        assert p.returncode == 3 and "interrupted" in out, (delay, p.returncode, err[-2000:])


def test_closing_the_generator_early_leaves_the_engine_usable(synth_model):
    model = synth_model(arch="gemma4", mode="oracle", agree=0.7)
    with open_engine(model) as eng:
        prompt = eng.tokenize(PROMPTS[0])
        gen = eng.generate(prompt, greedy(100, spec=True))
        next(gen)
        gen.close()
        assert run(eng, prompt, greedy(20, spec=True)).tokens == run(eng, prompt, greedy(20, spec=False)).tokens


# --- what a model offers -----------------------------------------------------------------------------


def test_gemma4_without_its_drafter_runs_plain_and_says_why(synth_model):
    model = synth_model(arch="gemma4", mode="oracle", agree=0.7)
    with Engine(ModelConfig(path=model.model_path, flash_attn=False, n_ctx=512)) as eng:
        assert eng.info.mtp_kind == "none" and not eng.info.mtp_active
        assert "mtp-" in eng.info.mtp_note
        r = run(eng, eng.tokenize(PROMPTS[0]), greedy(20, spec=True))
        assert not r.stats.mtp and r.stats.n_drafted == 0 and len(r.tokens) == 20


def test_info_reports_what_the_model_offers(synth_model):
    q = synth_model(arch="qwen35", mode="random")
    g = synth_model(arch="gemma4", mode="random")
    with open_engine(q) as a, open_engine(g) as b, open_engine(q, mtp=False) as c:
        assert (a.info.arch, a.info.mtp_kind, a.info.mtp_active, a.info.n_layer_nextn) == ("qwen35", "embedded", True, 1)
        assert (b.info.arch, b.info.mtp_kind, b.info.mtp_active) == ("gemma4", "sidecar", True)
        assert c.info.mtp_kind == "embedded" and not c.info.mtp_active and c.info.mtp_note == "MTP disabled"
        assert a.info.chat_template and "enable_thinking" in a.info.chat_template
        assert a.info.n_vocab == q.n_vocab and a.info.backend


# --- bad input ----------------------------------------------------------------------------------------


def test_missing_and_non_gguf_files_are_refused(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        Engine(ModelConfig(path=tmp_path / "nope.gguf"))
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"this is not a model at all")
    with pytest.raises(ModelError, match="not a GGUF"):
        Engine(ModelConfig(path=junk))


@pytest.mark.parametrize("keep", [0.3, 0.98, 200])
def test_truncated_gguf_is_refused(synth_model, tmp_path, keep):
    model = synth_model(arch="qwen35", mode="random")
    data = model.model_path.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: int(len(data) * keep) if keep < 1 else keep])
    with pytest.raises(ModelError, match="truncated|damaged"):
        Engine(ModelConfig(path=cut))


def test_a_drafter_that_does_not_fit_its_target_is_refused(synth_model):
    q = synth_model(arch="qwen35", mode="random")
    g = synth_model(arch="gemma4", mode="random")
    g_wide = synth_model(arch="gemma4", mode="random", n_embd=512)
    # a qwen35 target with a gemma4 drafter (crashes llama.cpp if allowed)
    with pytest.raises(ModelError, match="does not fit"):
        Engine(ModelConfig(path=q.model_path, draft_path=g.draft_path))
    # a gemma4 drafter built for another width (runs silently with garbage drafts in llama.cpp)
    with pytest.raises(ModelError, match="hidden states of width"):
        Engine(ModelConfig(path=g.model_path, draft_path=g_wide.draft_path))
    # a target given as drafter
    with pytest.raises(ModelError, match="not an MTP drafter"):
        Engine(ModelConfig(path=g.model_path, draft_path=g.model_path))


def test_bad_generation_values_raise_clear_errors(synth_model):
    model = synth_model(arch="qwen35", mode="random")
    with pytest.raises(InvalidInputError, match="n_max"):
        SpecConfig(n_max=0)
    with pytest.raises(InvalidInputError, match="top-p"):
        SamplingConfig(top_p=1.5)
    with pytest.raises(InvalidInputError, match="temperature"):
        SamplingConfig(temperature=-1)
    with pytest.raises(InvalidInputError, match="context size"):
        ModelConfig(path=model.model_path, n_ctx=-5)
    with open_engine(model, n_draft_capacity=4) as eng:
        prompt = eng.tokenize(PROMPTS[0])
        with pytest.raises(InvalidInputError, match="draft length"):
            run(eng, prompt, greedy(5, spec=True, n_max=6))
        with pytest.raises(InvalidInputError, match="invalid token"):
            run(eng, [1, 2, eng.info.n_vocab + 5], greedy(5, spec=True))
        with pytest.raises(InvalidInputError, match="empty"):
            run(eng, [], greedy(5, spec=True))
    eng.close()
    with pytest.raises(EngineClosedError):
        eng.tokenize("hello")
    with pytest.raises(EngineClosedError):
        list(eng.generate([1, 2, 3], greedy(5, spec=True)))


def test_draft_p_min_stops_drafting_when_the_head_is_unsure(synth_model):
    """The oracle head's drafts are sure but not certain: at temperature 3 its top token has a
    probability of about 0.99 (a logit margin of ~30). A p-min above that drafts nothing, one
    below it drafts as usual."""
    model = synth_model(arch="qwen35", mode="oracle", agree=0.7)
    with open_engine(model) as eng:
        prompt = eng.tokenize(PROMPTS[0])

        def with_p_min(p_min: float) -> Result:
            cfg = GenerationConfig(max_tokens=40, sampling=SamplingConfig(temperature=3.0, top_k=0, top_p=1.0, min_p=0.0, seed=1),
                                   spec=SpecConfig(n_max=3, adaptive=False, p_min=p_min))
            return run(eng, prompt, cfg)

        unsure, sure = with_p_min(0.999), with_p_min(0.5)
        assert unsure.stats.mtp and unsure.stats.n_drafted == 0 and unsure.stats.n_generated > 0
        assert sure.stats.n_drafted > 0
