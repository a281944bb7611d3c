"""More MTP architectures of the pinned llama.cpp: qwen35moe (Qwen3.6-35B-A3B's layout: routed
experts, router, gated shared expert, MoE MTP block) and chained multi-head MTP (dense hy_v3 with
three heads: head i drafts draft position i, as llama.cpp's draft-mtp does).

Flash attention off, f32 models, exact token equality (see test_engine.py's module docstring).
"""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from mtprun import GenerationConfig, SamplingConfig, SpecConfig
from mtprun.cli.app import app
from mtprun.errors import InvalidInputError
from mtprun.synth import SynthSpec, write_model

from _llama import Context, Model, top2
from _llama import greedy as llama_greedy
from test_engine import PROMPTS, exact_dist, goodness_of_fit, greedy, open_engine, run, sample_first_two
from test_synth import _speculative

HEADS = (0.9, 0.6, 0.3)  # the three chained heads' agreements


def multi_head(synth_model, mode: str = "oracle"):
    return synth_model(arch="hy_v3", mode=mode, head_agree=HEADS)


# --- the generator ----------------------------------------------------------------------------------


def test_qwen35moe_loads_with_experts_shared_expert_and_a_moe_mtp_block(synth_model):
    r = synth_model(arch="qwen35moe", mode="oracle", agree=0.7)
    with Model(r.model_path) as m:
        assert m.meta("general.architecture") == "qwen35moe"
        assert m.n_layer_nextn == 1 and m.n_layer == r.spec.n_layer
        assert m.meta("qwen35moe.expert_count") == "8" and m.meta("qwen35moe.expert_used_count") == "2"
    import gguf

    names = {t.name: t.shape.tolist() for t in gguf.GGUFReader(r.model_path).tensors}
    d, mtp = r.spec.n_embd, f"blk.{r.spec.n_layer}"
    for blk in ("blk.0", mtp):  # a trunk layer and the MTP block both route through experts
        assert names[f"{blk}.ffn_gate_inp.weight"] == [d, 8]
        assert names[f"{blk}.ffn_down_exps.weight"][2] == 8 and names[f"{blk}.ffn_gate_exps.weight"][2] == 8
        assert names[f"{blk}.ffn_gate_inp_shexp.weight"] == [d]
        assert f"{blk}.ffn_up_shexp.weight" in names and f"{blk}.ffn_gate.weight" not in names
    assert f"{mtp}.nextn.eh_proj.weight" in names


@pytest.mark.parametrize("arch,fields", [("qwen35moe", {}), ("hy_v3", {"head_agree": HEADS})])
def test_oracle_follows_the_cycle_with_a_clear_margin(synth_model, arch, fields):
    r = synth_model(arch=arch, mode="oracle", **fields)
    with Model(r.model_path) as m, Context(m, n_ctx=512) as ctx:
        prompt = m.tokenize(" Once upon a quiet")
        tokens, margins = llama_greedy(ctx, prompt, 120)
        assert tokens == r.greedy_continuation(prompt[-1], 120)
        assert min(margins) > 10  # the experts, router and shared expert never touch the signal


@pytest.mark.parametrize("arch,fields", [("qwen35moe", {}), ("hy_v3", {"head_agree": HEADS})])
def test_random_model_batched_and_one_token_greedy_agree(synth_model, arch, fields):
    """The lossless check is possible: verifying a batch picks what one-token decoding picks."""
    r = synth_model(arch=arch, mode="random", **fields)
    with Model(r.model_path) as m:
        for text in ("Hello there, how are you?", "Once upon a time"):
            prompt = m.tokenize(text)
            with Context(m) as ctx:
                tokens, margins = llama_greedy(ctx, prompt, 150)
            with Context(m) as ctx:
                batched = ctx.decode(prompt + tokens[:-1])[len(prompt) - 1:]
            assert [top2(row)[0] for row in batched] == tokens
            noise = max(abs(top2(row)[1] - mg) for row, mg in zip(batched, margins))
            assert min(margins) > 2 * noise, (min(margins), noise)


def test_random_qwen35moe_every_layer_and_expert_path_changes_what_is_generated(synth_model, tmp_path):
    r = synth_model(arch="qwen35moe", mode="random")

    def generate(path) -> list[int]:
        out = []
        with Model(path) as m:
            for text in ("Hello there, how are you?", "Once upon a time", "The quick brown fox."):
                with Context(m) as ctx:
                    out += llama_greedy(ctx, m.tokenize(text), 150)[0]
        return out

    import shutil

    import gguf

    base = generate(r.model_path)
    kinds = ("ssm_out", "attn_output", "ffn_down_exps", "ffn_down_shexp")
    names = [t.name for t in gguf.GGUFReader(r.model_path).tensors
             if t.name.split(".")[-2] in kinds and int(t.name.split(".")[1]) < r.spec.n_layer]
    assert {n.split(".")[-2] for n in names} == set(kinds)
    for name in names:
        path = tmp_path / "ablated.gguf"
        shutil.copyfile(r.model_path, path)
        reader = gguf.GGUFReader(path, "r+")
        next(t for t in reader.tensors if t.name == name).data[...] = 0
        del reader
        assert generate(path) != base, f"zeroing {name} changed nothing"


def test_bench_preset_of_qwen35moe_is_hundreds_of_megabytes():
    from mtprun.synth import weight_bytes

    spec = SynthSpec.preset("bench", arch="qwen35moe")
    assert (spec.n_expert, spec.n_expert_used, spec.n_ff_exp) == (8, 2, 512)
    assert 300e6 < weight_bytes(spec) < 1000e6
    assert SynthSpec.preset("bench", arch="qwen35").n_expert == 0


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"arch": "qwen35", "head_agree": (0.9, 0.5)}, "applies to hy_v3 only"),
        ({"arch": "hy_v3", "head_agree": (0.9, 1.5)}, "head_agree entries"),
        ({"arch": "hy_v3", "head_agree": (0.5,) * 5}, "1 to 4 entries"),
        ({"arch": "hy_v3", "head_agree": [0.9]}, "tuple"),
        ({"arch": "hy_v3", "agree": 0.5, "head_agree": (0.9,)}, "differ"),
        ({"arch": "qwen35", "n_expert": 8}, "qwen35moe only"),
        ({"arch": "qwen35moe", "n_expert": 1}, "n_expert must be"),
        ({"arch": "qwen35moe", "n_expert_used": 9}, "n_expert_used"),
        ({"arch": "qwen35moe", "n_ff_exp": 33}, "n_ff_exp"),
    ],
)
def test_bad_arch_fields_are_refused_in_one_line(tmp_path, fields, message):
    with pytest.raises(InvalidInputError, match=message) as exc:
        write_model(SynthSpec(**fields), tmp_path / "m.gguf")
    assert "\n" not in str(exc.value)
    assert not list(tmp_path.iterdir())


# --- qwen35moe through the engine --------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["random", "oracle"])
def test_qwen35moe_greedy_mtp_equals_plain_decoding(synth_model, mode):
    model = synth_model(arch="qwen35moe", mode=mode, agree=0.7)
    with open_engine(model) as eng:
        assert eng.info.mtp_active and eng.info.recurrent and not eng.info.mtp_chain
        for text in PROMPTS:
            prompt = eng.tokenize(text)
            plain = run(eng, prompt, greedy(160, spec=False))
            for n_max in range(1, 7):
                eng.reset()
                r = run(eng, prompt, greedy(160, spec=True, n_max=n_max))
                assert r.tokens == plain.tokens, (text, n_max)
                assert 0 < r.stats.n_accepted < r.stats.n_drafted


@pytest.mark.parametrize(
    "arch,mode,temp,fields",
    [
        ("qwen35moe", "random", 4.0, {"agree": 0.5}),  # a broad distribution over hundreds of tokens
        ("hy_v3", "oracle", 3.0, {"head_agree": HEADS}),  # one likely token; three chained heads draft
    ],
)
@pytest.mark.parametrize("spec", [True, False])
def test_sampling_has_the_target_distribution(synth_model, arch, mode, temp, fields, spec):
    """As test_engine's chi-square test: the first sampled token, and the second given the first
    was the likely one (drafted by the second head when heads chain), follow the target's exact
    distribution at significance 0.001, with and without speculation."""
    model = synth_model(arch=arch, mode=mode, **fields)
    n = 1500
    eog = set(model.eog_ids)
    with open_engine(model, n_ctx=256) as eng, open_engine(model, n_ctx=256, mtp=False) as ref:
        prompt = eng.tokenize(PROMPTS[0])
        run(ref, prompt, greedy(0, spec=False))
        p1 = exact_dist(np.array(ref.next_logits()), temp, eog)
        top1 = max(p1, key=p1.get)
        run(ref, prompt + [top1], greedy(0, spec=False))
        p2 = exact_dist(np.array(ref.next_logits()), temp, eog)
        # (seeds 0..1499 give p = 0.0007 for the chained model's first position: one fixed draw
        # in about a thousand fails at this significance; 6000 samples from 50000 on give p = 0.72)
        first, second, accepted, drafted, _ = sample_first_two(eng, prompt, top1, (
            GenerationConfig(max_tokens=4, sampling=SamplingConfig(temperature=temp, top_k=0, top_p=1.0, min_p=0.0, seed=seed),
                             spec=SpecConfig(enabled=spec, n_max=3, adaptive=False))
            for seed in range(10_000, 10_000 + n)))
    if spec:
        assert 0.1 < accepted / drafted < 0.95  # drafts are both accepted and rejected
    assert goodness_of_fit(first, p1) > 0.001
    if len(second) >= 200:
        assert goodness_of_fit(second, p2) > 0.001
    else:
        assert mode == "random"  # the oracle's likely token comes often enough to test


@pytest.mark.parametrize("mode", ["random", "oracle"])
def test_qwen35moe_rollback_restores_recurrent_state(synth_model, mode):
    model = synth_model(arch="qwen35moe", mode=mode, agree=0.7)
    with open_engine(model) as eng, open_engine(model, mtp=False) as fresh:
        prompt = eng.tokenize(PROMPTS[0])
        r = run(eng, prompt, greedy(100, spec=True, n_max=4))
        assert 0 < r.stats.n_accepted < r.stats.n_drafted
        ours = np.array(eng.next_logits())
        run(fresh, prompt + list(r.tokens), greedy(0, spec=False))
        assert np.abs(ours - np.array(fresh.next_logits())).max() < 1e-3
        cont = prompt + list(r.tokens) + eng.tokenize(" and", add_special=False)
        assert run(eng, cont, greedy(60, spec=True, n_max=3)).tokens == run(fresh, cont, greedy(60, spec=False)).tokens


# --- chained heads -----------------------------------------------------------------------------------


def chained_counts(model, last: int, n_tokens: int, n_max: int):
    """mtprun's greedy loop replayed with head i drafting position i (at most one position per
    head): drafted and accepted counts per position, and target passes."""
    heads = model.head_predictions
    succ = model.successor
    drafted, accepted = [0] * n_max, [0] * n_max
    produced, passes, cur = 0, 0, last
    while produced < n_tokens:
        n = min(n_max, len(heads), n_tokens - produced - 1)
        draft, t = [], cur
        for i in range(n):
            t = heads[i][t]
            draft.append(t)
        k = 0
        for i, d in enumerate(draft):
            drafted[i] += 1
        for i, d in enumerate(draft):
            if d != succ[cur]:
                break
            accepted[i] += 1
            cur, k = d, k + 1
        cur = succ[cur]
        produced += k + 1
        passes += 1
    return drafted, accepted, passes


def test_multi_head_model_chains_its_heads(synth_model):
    model = multi_head(synth_model)
    assert len(model.head_predictions) == 3
    with open_engine(model) as eng:
        assert eng.info.n_layer_nextn == 3 and eng.info.mtp_chain and eng.info.mtp_active


@pytest.mark.parametrize("n_max", [1, 2, 3, 5])
def test_chained_acceptance_by_position_is_each_heads_agreement(synth_model, n_max):
    """Exact counts: head i drafts position i. Head 0 alone would be right after 90% of the
    tokens at every position; the heads here are right 90% / 60% / 30% of the time."""
    model = multi_head(synth_model)
    n_tokens = 600
    with open_engine(model) as eng:
        for text in PROMPTS:
            prompt = eng.tokenize(text)
            eng.reset()
            r = run(eng, prompt, greedy(n_tokens, spec=True, n_max=n_max))
            drafted, accepted, passes = chained_counts(model, prompt[-1], n_tokens, n_max)
            assert r.stats.drafted_by_position == tuple(drafted)
            assert r.stats.accepted_by_position == tuple(accepted)
            assert r.stats.n_target_passes == passes
            # past the third head nothing is drafted (as llama.cpp, the draft length is capped)
            assert all(d == 0 for d in r.stats.drafted_by_position[3:])
            rates = [a / d for a, d in zip(accepted, drafted) if d]
            for i, rate in enumerate(rates):
                reached = drafted[i] if i == 0 else accepted[i - 1]
                assert accepted[i] / reached == pytest.approx(HEADS[i], abs=0.1)
            assert r.tokens == tuple(model.greedy_continuation(prompt[-1], n_tokens))


@pytest.mark.parametrize("mode", ["oracle", "random"])
def test_chained_greedy_mtp_equals_plain_decoding(synth_model, mode):
    model = multi_head(synth_model, mode)
    with open_engine(model) as eng:
        for text in PROMPTS:
            prompt = eng.tokenize(text)
            plain = run(eng, prompt, greedy(160, spec=False))
            for n_max in range(1, 7):
                eng.reset()
                r = run(eng, prompt, greedy(160, spec=True, n_max=n_max))
                assert r.tokens == plain.tokens, (text, n_max)
                assert 0 < r.stats.n_accepted < r.stats.n_drafted


def test_auto_never_drafts_past_the_last_chained_head(synth_model):
    """auto (ceiling 6) on the three-head model: the policy's ceiling is the number of heads. Its
    costs are pinned to a nearly flat verify (drafting as far as acceptance carries pays), so the
    cap, not the cost model, stops it at three; the output is plain decoding's."""
    model = multi_head(synth_model)
    with open_engine(model) as eng:
        eng.set_policy_costs([1.0 + 0.02 * k for k in range(7)], 0.01, pin=True)
        prompt = eng.tokenize(PROMPTS[0])
        plain = run(eng, prompt, greedy(200, spec=False))
        cfg = GenerationConfig(max_tokens=200, sampling=SamplingConfig(temperature=0.0), spec=SpecConfig.parse("auto"))
        events = list(eng.generate(prompt, cfg))
        lengths, r = [e.n_drafted for e in events[:-1]], events[-1]
        assert r.stats.adaptive and r.tokens == plain.tokens
        assert max(lengths) == len(HEADS), lengths
        assert sum(r.stats.drafted_by_position[len(HEADS):]) == 0


def test_chained_heads_follow_a_multi_turn_conversation_and_a_growing_draft_length(synth_model):
    """The cache is reused across turns; a later turn that drafts with more heads than the cache
    has fed starts the heads over. Each turn gives exactly the counts of a fresh engine."""
    model = multi_head(synth_model)
    with open_engine(model) as eng, open_engine(model) as fresh:
        convo = eng.tokenize(PROMPTS[0])
        for n_max in (1, 3, 2, 3):
            r = run(eng, convo, greedy(80, spec=True, n_max=n_max))
            f = run(fresh, convo, greedy(80, spec=True, n_max=n_max))
            fresh.reset()
            assert r.tokens == f.tokens
            assert r.stats.accepted_by_position == f.stats.accepted_by_position
            convo = convo + list(r.tokens) + eng.tokenize(" and", add_special=False)


@pytest.mark.parametrize("n_max", [1, 2, 3, 4])
def test_chained_counts_equal_llama_speculative_simple(llama_ref_bin, synth_model, n_max):
    """llama.cpp's own draft-mtp loop on the same model: its counts are the replay of its loop
    with head i at position i (simulate_speculative), which differ from head 0 everywhere."""
    model = multi_head(synth_model)
    prompt, n_predict = "Hello there", 200
    text, stats = _speculative(llama_ref_bin, model, prompt, n_predict, n_max)
    with Model(model.model_path) as m:
        last = m.tokenize(prompt)[-1]
    sim = model.simulate_speculative(last, n_predict, n_max)
    assert (stats["n_predict"], stats["n_drafted"], stats["n_accept"]) == (sim.n_predict, sim.n_drafted, sim.n_accept)
    first_head_only = dataclasses.replace(model, head_predictions=None).simulate_speculative(last, n_predict, n_max)
    if n_max > 1:
        assert stats["n_accept"] != first_head_only.n_accept
    assert text.startswith(model.cycle_text)
    # and mtprun, on the same prompt, per position
    with open_engine(model) as eng:
        r = run(eng, eng.tokenize(prompt), greedy(n_predict, spec=True, n_max=n_max))
    drafted, accepted, _ = chained_counts(model, last, n_predict, n_max)
    assert r.stats.accepted_by_position == tuple(accepted)


# --- mtprun info ---------------------------------------------------------------------------------------


def test_info_names_the_architecture_and_its_mtp_heads(synth_model):
    three = multi_head(synth_model)
    moe = synth_model(arch="qwen35moe", mode="oracle", agree=0.7)
    runner = CliRunner()
    r = runner.invoke(app, ["info", str(three.model_path)])
    assert r.exit_code == 0, r.stderr
    assert "hy_v3" in r.stdout and re.search(r"3 heads\s+chained", r.stdout)
    d = json.loads(runner.invoke(app, ["info", str(three.model_path), "--json"]).stdout)
    assert (d["architecture"], d["mtp_heads"], d["mtp_chain"], d["mtp_active"]) == ("hy_v3", 3, True, True)
    d = json.loads(runner.invoke(app, ["info", str(moe.model_path), "--json"]).stdout)
    assert (d["architecture"], d["mtp_heads"], d["mtp_chain"], d["mtp_active"]) == ("qwen35moe", 1, False, True)
    assert "1 head" in d["mtp_detail"]
