"""The synthetic model generator: what llama.cpp makes of the models it writes."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import jinja2
import numpy as np
import pytest

import mtprun.synth as synth
from mtprun.errors import InvalidInputError
from mtprun.synth import SynthSpec, demo_spec, write_model

from _llama import Context, Model, greedy, top2

ROOT = Path(__file__).resolve().parent.parent
CHAT_PROMPTS = {
    "qwen35": "<|im_start|>user\nTell me a story.<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
    "gemma4": "<bos><|turn>user\nTell me a story.<turn|>\n<|turn>model\n<|channel>thought\n<channel|>",
}
# tolerance of the measured draft acceptance (one draft per step) around the chosen agreement
ACCEPTANCE_TOLERANCE = 0.1


def _load_target(result, load_mtp: bool = True) -> Model:
    return Model(result.model_path, load_mtp=load_mtp)


# ------------------------------------------------------------------------------------ loading


@pytest.mark.parametrize("load_mtp", [True, False])
def test_qwen35_oracle_loads_with_one_mtp_layer(synth_model, load_mtp):
    r = synth_model("qwen35", "oracle", agree=0.7)
    with _load_target(r, load_mtp) as m:
        assert m.n_layer_nextn == 1
        assert m.n_layer == r.spec.n_layer
        assert m.n_vocab == r.spec.n_vocab
        assert m.meta("general.architecture") == "qwen35"
        assert m.meta("qwen35.nextn_predict_layers") == "1"


@pytest.mark.parametrize("arch", ["qwen35", "gemma4"])
@pytest.mark.parametrize("mode", ["oracle", "random"])
@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
def test_every_arch_mode_and_dtype_loads_and_generates(synth_model, arch, mode, dtype):
    r = synth_model(arch, mode, agree=0.7, dtype=dtype)
    for load_mtp in (True, False):
        with _load_target(r, load_mtp) as m, Context(m, n_ctx=256) as ctx:
            tokens, _ = greedy(ctx, m.tokenize("Hello there"), 8)
            assert len(tokens) == 8 and all(0 <= t < m.n_vocab for t in tokens)


def test_gemma4_drafter_loads_against_its_target(synth_model):
    r = synth_model("gemma4", "oracle", agree=0.7)
    assert r.draft_path == r.model_path.with_name("mtp-" + r.model_path.name)
    with _load_target(r) as m, Model(r.draft_path) as dm:
        assert m.meta("general.architecture") == "gemma4"
        assert dm.meta("general.architecture") == "gemma4-assistant"
        assert dm.n_layer_nextn == r.spec.draft_n_layer
        assert int(dm.meta("gemma4-assistant.embedding_length_out")) == m.n_embd != dm.n_embd
        with Context(m, nextn=True) as tgt, Context(dm, mtp=True, other=tgt) as dft:
            prompt = m.tokenize("Hello there")
            tgt.decode(prompt)
            h = tgt.hidden(len(prompt) - 1, m.n_embd)
            logits = dft.mtp_logits([r.successor[prompt[-1]]], h[None], [len(prompt)])
            assert logits.shape == (1, m.n_vocab)


def test_gemma4_drafter_needs_its_target_context(synth_model):
    r = synth_model("gemma4", "oracle")
    with Model(r.draft_path) as dm, pytest.raises(RuntimeError):
        Context(dm, mtp=True)  # no ctx_other: llama.cpp refuses


# ---------------------------------------------------------------------- greedy generation


@pytest.mark.parametrize("arch", ["qwen35", "gemma4"])
def test_oracle_greedy_follows_the_cycle_after_a_chat_prompt(synth_model, arch):
    r = synth_model(arch, "oracle", agree=0.7)
    with _load_target(r) as m, Context(m) as ctx:
        prompt = m.tokenize(CHAT_PROMPTS[arch], add_special=False)
        tokens, margins = greedy(ctx, prompt, 2 * len(r.cycle) + 5)
        assert tokens == r.greedy_continuation(prompt[-1], len(tokens))
        assert tokens[: len(r.cycle)] == list(r.cycle)
        assert m.detokenize(tokens[: len(r.cycle)]) == r.cycle_text == synth.CYCLE_TEXT


@pytest.mark.parametrize("arch", ["qwen35", "gemma4"])
def test_oracle_logits_have_one_clear_winner_and_no_ties(synth_model, arch):
    r = synth_model(arch, "oracle", agree=0.3, dtype="q8_0")
    with _load_target(r) as m, Context(m) as ctx:
        prompt = m.tokenize("What happens next? 12345 ÄÖÜ 🙂")
        seq = prompt + r.greedy_continuation(prompt[-1], 150)
        logits = ctx.decode(seq)  # one batch: every position's logits
        for row, want in zip(logits[len(prompt) - 1:], seq[len(prompt):]):
            top, margin = top2(row)
            assert top == want
            assert margin >= 10.0  # the documented guarantee: all other logits are exactly 0
            assert np.count_nonzero(row) == 1


@pytest.mark.parametrize("arch", ["qwen35", "gemma4"])
@pytest.mark.parametrize("mode", ["oracle", "random"])
def test_greedy_generation_is_deterministic(synth_model, arch, mode):
    r = synth_model(arch, mode)
    runs = []
    for _ in range(2):
        with _load_target(r) as m, Context(m) as ctx:
            runs.append(greedy(ctx, m.tokenize("Once upon a time"), 40)[0])
    assert runs[0] == runs[1]


@pytest.mark.parametrize("arch", ["qwen35", "gemma4"])
def test_random_model_batched_and_one_token_greedy_agree(synth_model, arch):
    """The lossless check is possible: verifying a batch picks what one-token decoding picks."""
    r = synth_model(arch, "random")
    with _load_target(r) as m:
        for text in ("Hello there, how are you?", "Once upon a time"):
            prompt = m.tokenize(text)
            with Context(m) as ctx:
                tokens, margins = greedy(ctx, prompt, 150)
            with Context(m) as ctx:
                batched = ctx.decode(prompt + tokens[:-1])[len(prompt) - 1:]
            assert [top2(row)[0] for row in batched] == tokens
            noise = max(abs(top2(row)[1] - mg) for row, mg in zip(batched, margins))
            assert min(margins) > 2 * noise, (min(margins), noise)


ABLATED = {"qwen35": ("ssm_out", "attn_output", "ffn_down"), "gemma4": ("attn_output", "ffn_down")}


@pytest.mark.parametrize("arch", ["qwen35", "gemma4"])
def test_random_model_every_layer_changes_what_is_generated(synth_model, arch, tmp_path):
    r = synth_model(arch, "random")

    def generate(path: Path) -> list[int]:
        out = []
        with Model(path) as m:
            for text in ("Hello there, how are you?", "Once upon a time", "The quick brown fox."):
                with Context(m) as ctx:
                    out += greedy(ctx, m.tokenize(text), 150)[0]
        return out

    base = generate(r.model_path)
    names = [t.name for t in gguf.GGUFReader(r.model_path).tensors
             if t.name.split(".")[-2] in ABLATED[arch] and int(t.name.split(".")[1]) < r.spec.n_layer]
    assert any(".ssm_out." in n for n in names) == (arch == "qwen35")
    for name in names:
        path = tmp_path / "ablated.gguf"
        shutil.copyfile(r.model_path, path)
        reader = gguf.GGUFReader(path, "r+")
        next(t for t in reader.tensors if t.name == name).data[...] = 0
        del reader
        assert generate(path) != base, f"zeroing {name} changed nothing"


# -------------------------------------------------------------------------------- MTP head


@pytest.mark.parametrize("arch", ["qwen35", "gemma4"])
@pytest.mark.parametrize("agree", [1.0, 0.7, 0.3])
def test_mtp_head_drafts_the_planned_token(synth_model, arch, agree):
    r = synth_model(arch, "oracle", agree=agree)
    assert len(r.agree_tokens) == round(agree * len(r.cycle))
    assert r.expected_acceptance == pytest.approx(agree, abs=0.5 / len(r.cycle))
    with _load_target(r) as m:
        prompt = m.tokenize("Hello there")
        seq = prompt + r.greedy_continuation(prompt[-1], 2 * len(r.cycle))
        with Context(m, nextn=True) as tgt:
            tgt.decode(seq)
            hidden = np.stack([tgt.hidden(i, m.n_embd) for i in range(len(seq))])
            # the head at position p+1 gets token x_{p+1} and the target's h_p
            pairs = list(zip(seq[1:], hidden[:-1], range(1, len(seq))))
            if r.draft_path is None:
                with Context(m, mtp=True, other=tgt) as dft:
                    logits = dft.mtp_logits(*map(list, zip(*pairs)))
            else:  # the assistant reads the target's KV cache, one draft position at a time
                with Model(r.draft_path) as dm, Context(dm, mtp=True, other=tgt) as dft:
                    logits = np.concatenate([dft.mtp_logits([t], h[None], [p]) for t, h, p in pairs])
    drafted = [top2(row) for row in logits]
    assert [t for t, _ in drafted] == [r.mtp_prediction[t] for t, _, _ in pairs]
    assert min(margin for _, margin in drafted) >= 10.0
    right = [r.mtp_prediction[t] == r.successor[t] for t in seq[len(prompt):-1]]
    assert sum(right) / len(right) == pytest.approx(agree, abs=1.5 / len(r.cycle))


# ------------------------------------------------------- llama.cpp's own draft-mtp loop


def _run(tool: Path, *args: str, last_line: str) -> subprocess.CompletedProcess:
    """Run a llama.cpp tool. Its logger thread races the process exit and loses the tail of the
    output now and then (llama.cpp leaks the logger on purpose, see its common/log.cpp), so run
    again until ``last_line`` -- printed after everything we read -- made it out. (On a busy
    machine most runs of a tiny model can lose it: the summary is written just before exit.)"""
    for _ in range(50):
        # one thread: tiny models gain nothing from two, and spinning threads suffer on a busy CPU
        out = subprocess.run([str(tool), *args, "-t", "1"], capture_output=True, text=True, timeout=300, check=True)
        if last_line in out.stderr:
            return out
    raise AssertionError(f"{tool.name} output kept getting cut short:\n{out.stderr[-2000:]}")


def _speculative(bin_dir: Path, r, prompt: str, n_predict: int, n_max: int) -> tuple[str, dict[str, int]]:
    args = ["-m", str(r.model_path), "--spec-type", "draft-mtp", "--spec-draft-n-max", str(n_max),
            "-p", prompt, "-n", str(n_predict), "--temp", "0", "--seed", "0", "-c", "1024"]
    if r.draft_path:
        args += ["-md", str(r.draft_path)]
    out = _run(bin_dir / "llama-speculative-simple", *args, last_line="n_accept")
    stats = {k: int(v) for k, v in re.findall(r"(n_predict|n_drafted|n_accept)\s*=\s*(\d+)", out.stderr)}
    return out.stdout.split(prompt, 1)[1], stats


def _completion(bin_dir: Path, r, prompt: str, n_predict: int) -> str:
    out = _run(bin_dir / "llama-completion", "-m", str(r.model_path), "-p", prompt, "-n", str(n_predict),
               "--temp", "0", "--seed", "0", "-c", "1024", "-no-cnv", last_line="total time")
    return out.stdout.split(prompt, 1)[1].rstrip("\n")


@pytest.mark.parametrize("arch", ["qwen35", "gemma4"])
@pytest.mark.parametrize("agree", [1.0, 0.7, 0.3])
@pytest.mark.parametrize("n_max", [1, 3])
def test_draft_mtp_acceptance_matches_agreement(llama_ref_bin, synth_model, arch, agree, n_max):
    r = synth_model(arch, "oracle", agree=agree)
    prompt, n_predict = "Hello there", 200
    text, stats = _speculative(llama_ref_bin, r, prompt, n_predict, n_max)
    with Model(r.model_path) as m:
        last = m.tokenize(prompt)[-1]
    sim = r.simulate_speculative(last, n_predict, n_max)
    assert (stats["n_predict"], stats["n_drafted"], stats["n_accept"]) == (sim.n_predict, sim.n_drafted, sim.n_accept)
    if agree == 1.0:
        assert stats["n_accept"] == stats["n_drafted"]
    # each drafted position is accepted with probability ~agree given the previous one was
    # (later positions are reached less often: a wider tolerance, and only with 20+ samples)
    for i, (reached, rate) in enumerate(zip(sim.reached_by_position, sim.acceptance_by_position)):
        if reached >= 20:
            assert rate == pytest.approx(agree, abs=ACCEPTANCE_TOLERANCE * (1.5 if i else 1.0))
    if n_max == 1:
        assert stats["n_accept"] / stats["n_drafted"] == pytest.approx(agree, abs=ACCEPTANCE_TOLERANCE)
    assert text.startswith(r.cycle_text)


@pytest.mark.parametrize("arch", ["qwen35", "gemma4"])
@pytest.mark.parametrize("mode,agree", [("oracle", 0.7), ("random", 1.0), ("random", 0.7)])
def test_draft_mtp_output_equals_plain_greedy_output(llama_ref_bin, synth_model, arch, mode, agree):
    r = synth_model(arch, mode, agree=agree)
    prompt, n_predict = "Hello there, how are you?", 300
    plain = _completion(llama_ref_bin, r, prompt, n_predict)
    for n_max in (1, 3):
        drafted, stats = _speculative(llama_ref_bin, r, prompt, n_predict, n_max)
        assert drafted.startswith(plain), (n_max, plain, drafted)
        if mode == "random":  # even at agree=1, context overrides make some drafts fail
            assert 0.5 * agree < stats["n_accept"] / stats["n_drafted"] < 1.0


# ----------------------------------------------------------------------- tokenizer, chat


@pytest.mark.parametrize("arch", ["qwen35", "gemma4"])
def test_tokenizer_spells_the_passage_one_word_per_token(synth_model, arch):
    r = synth_model(arch, "oracle")
    with Model(r.model_path) as m:
        assert m.tokenize(r.cycle_text, add_special=False) == list(r.cycle)
        assert m.detokenize(r.cycle) == r.cycle_text
        odd = "naïve café, 東京 🙂\n\ttabs and  spaces"
        assert m.detokenize(m.tokenize(odd, add_special=False)).strip() == odd.strip()
        assert m.is_eog(r.eos_id) and all(m.is_eog(t) for t in r.eog_ids)
        assert (m.tokenize("hi")[0] == r.bos_id) == r.add_bos


@pytest.mark.parametrize("arch", ["qwen35", "gemma4"])
@pytest.mark.parametrize("thinking", [True, False])
def test_chat_template_renders_roles_and_thinking_switch(synth_model, arch, thinking):
    r = synth_model(arch, "oracle")
    with Model(r.model_path) as m:
        template = m.meta("tokenizer.chat_template")
        env = jinja2.Environment()

        def raise_exception(msg: str) -> None:
            raise ValueError(msg)

        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"},
                    {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Story?"}]
        text = env.from_string(template).render(
            messages=messages, add_generation_prompt=True, enable_thinking=thinking,
            bos_token=m.piece(r.bos_id).decode(), raise_exception=raise_exception)
        for content in ("Be brief.", "Hi!", "Hello.", "Story?"):
            assert content in text
        if arch == "qwen35":
            assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
            assert text.endswith("<|im_start|>assistant\n<think>\n" if thinking else "<think>\n\n</think>\n\n")
        else:
            assert text.startswith("<bos><|turn>system\n" + ("<|think|>\n" if thinking else "") + "Be brief.<turn|>\n")
            assert "<|turn>model\nHello.<turn|>\n" in text
            assert text.endswith("<|turn>model\n" if thinking else "<|channel>thought\n<channel|>")
        tokens = m.tokenize(text, add_special=False)
        specials = [t for t in tokens if m.piece(t).startswith(b"<") and len(m.piece(t)) > 3]
        assert len(specials) >= 8  # role markers are single special tokens
        with Context(m) as ctx:  # and the model answers with the passage
            answer, _ = greedy(ctx, tokens, len(r.cycle))
        assert m.detokenize(answer) == r.cycle_text


# ------------------------------------------------------------------- files and bad input


@pytest.mark.parametrize("arch", ["qwen35", "gemma4"])
@pytest.mark.parametrize("mode", ["oracle", "random"])
def test_same_seed_gives_identical_files(tmp_path, arch, mode):
    spec = SynthSpec(arch=arch, mode=mode, agree=0.7, seed=7, dtype="q8_0")
    a, b = write_model(spec, tmp_path / "a.gguf"), write_model(spec, tmp_path / "b.gguf")
    assert a.model_path.read_bytes() == b.model_path.read_bytes()
    if arch == "gemma4":
        assert a.draft_path.read_bytes() == b.draft_path.read_bytes()
    c = write_model(SynthSpec(arch=arch, mode=mode, agree=0.7, seed=8, dtype="q8_0"), tmp_path / "c.gguf")
    assert c.model_path.read_bytes() != a.model_path.read_bytes()


@pytest.mark.parametrize("bad, message", [
    (dict(arch="llama"), "unknown arch"),
    (dict(mode="perfect"), "unknown mode"),
    (dict(agree=1.5), "agree must be"),
    (dict(agree=-0.1), "agree must be"),
    (dict(agree=float("nan")), "agree must be"),
    (dict(n_embd=100), "n_embd must be"),
    (dict(n_layer=1), "n_layer must be"),
    (dict(n_vocab=100), "n_vocab must be"),
    (dict(n_ctx=10), "n_ctx must be"),
    (dict(dtype="q4_0"), "unknown dtype"),
    (dict(arch="gemma4", draft_n_embd=256), "draft_n_embd must differ"),
    (dict(seed=-1), "seed must be"),
    (dict(quant="Q9_9"), "unknown quant"),
    (dict(quant="q8_0"), "unknown quant"),
    (dict(quant="Q8_0", dtype="q8_0"), "quant needs f16 or f32"),
    (dict(quant="Q4_K_M"), "rows of 384"),  # tiny's n_ff = 384 is not a multiple of 256
    (dict(arch="gemma4", quant="Q4_K_M", n_embd=512, n_ff=512), "drafter .* rows of 128"),
    (dict(agree_phases=()), "agree_phases must be"),
    (dict(agree_phases=[(40, 0.5)]), "agree_phases must be"),
    (dict(agree_phases=((0, 0.5),)), "phase lengths"),
    (dict(agree_phases=((40, 1.5),)), "phase values"),
    (dict(agree_phases=((150, 0.9), (150, 0.1))), "allows at most 192"),
    (dict(agree_phases=((40, 0.9),), end_with_eos=True), "cannot be combined"),
])
def test_bad_input_fails_with_one_line_and_writes_nothing(tmp_path, bad, message):
    with pytest.raises(InvalidInputError, match=message) as err:
        write_model(SynthSpec(**bad), tmp_path / "m.gguf")
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_bad_output_path_writes_nothing(tmp_path):
    with pytest.raises(InvalidInputError, match="does not exist"):
        write_model(SynthSpec(), tmp_path / "missing" / "m.gguf")
    with pytest.raises(InvalidInputError, match="is a directory"):
        write_model(SynthSpec(), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_no_file_behind(tmp_path, monkeypatch):
    def boom(self, writer):
        raise OSError("disk full")

    monkeypatch.setattr(synth._Tensors, "write", boom)
    with pytest.raises(OSError, match="disk full"):
        write_model(SynthSpec(arch="gemma4"), tmp_path / "m.gguf")
    assert list(tmp_path.iterdir()) == []


def _script(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "synth_gguf.py"), *args],
                          capture_output=True, text=True, cwd=cwd, timeout=120)


def test_script_writes_model_and_prints_one_summary_line(tmp_path):
    out = _script("--arch", "gemma4", "--mode", "oracle", "--agree", "0.7", "--out", "m.gguf", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("\n") == 1 and "m.gguf" in out.stdout and "mtp-m.gguf" in out.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf", "mtp-m.gguf"]
    with Model(tmp_path / "m.gguf") as m:
        assert m.meta("general.architecture") == "gemma4"


@pytest.mark.parametrize("args", [
    ["--arch", "llama"], ["--agree", "1.5"], ["--agree", "abc"], ["--n-embd", "100"], ["--bogus"],
    ["--preset", "huge"], [], ["--quant", "Q3"], ["--quant", "Q4_K_M"], ["--agree-phases", "40:0.9,40"],
    ["--agree-phases", "40:0.9,x:0.2"],
])
def test_script_bad_input_prints_one_error_line_and_exits_2(tmp_path, args):
    out = _script(*args, *(["--out", "m.gguf"] if args else []), cwd=tmp_path)
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1, out.stderr
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------- presets, demo


def test_demo_spec_is_a_readable_qwen35_oracle(synth_model):
    spec = demo_spec()
    assert (spec.arch, spec.mode) == ("qwen35", "oracle") and 0.7 <= spec.agree <= 0.9
    r = synth_model(**{f: getattr(spec, f) for f in ("arch", "mode", "agree", "seed", "name")})
    assert r.cycle_text == synth.CYCLE_TEXT and r.model_bytes < 50_000_000


def test_bench_preset_is_large_enough_to_be_memory_bound():
    spec = SynthSpec.preset("bench", arch="qwen35")
    assert spec.dtype == "f16" and spec.n_embd >= 2048
    for arch in ("qwen35", "gemma4"):
        assert synth.weight_bytes(SynthSpec.preset("bench", arch=arch)) >= 300e6
        assert synth.weight_bytes(SynthSpec(arch=arch)) < 20e6


def test_weight_bytes_is_what_gets_written(synth_model):
    for arch in ("qwen35", "gemma4"):
        r = synth_model(arch, "random", dtype="q8_0")
        assert synth.weight_bytes(r.spec) == r.weight_bytes
        assert r.model_bytes + r.draft_bytes > r.weight_bytes


def test_end_with_eos_closes_the_oracle_passage_and_only_for_oracles(tmp_path):
    r = write_model(SynthSpec(arch="qwen35", mode="oracle", end_with_eos=True), tmp_path / "e.gguf")
    assert r.cycle[-1] == r.eos_id and r.successor[r.cycle[-2]] == r.eos_id
    assert demo_spec().end_with_eos
    with pytest.raises(InvalidInputError, match="end_with_eos"):
        write_model(SynthSpec(arch="qwen35", mode="random", end_with_eos=True), tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


# ----------------------------------------------------------------------- quantized models

# Q4_K_M needs rows that are multiples of 256: tiny models with n_ff (and gemma4's drafter) widened
QUANT_FIELDS = {"Q8_0": {}, "Q4_K_M": dict(n_embd=512, n_ff=512, draft_n_embd=256)}


@pytest.mark.parametrize("arch", ["qwen35", "gemma4"])
@pytest.mark.parametrize("quant", ["Q8_0", "Q4_K_M"])
def test_quantized_model_keeps_its_mtp_tensors_quantized(synth_model, arch, quant):
    r = synth_model(arch, "oracle", agree=0.7, quant=quant, **QUANT_FIELDS[quant])
    files = [r.model_path] + ([r.draft_path] if r.draft_path else [])
    types = {}
    for i, path in enumerate(files):
        reader = gguf.GGUFReader(path)
        assert reader.fields["general.file_type"].parts[-1][0] == synth.QUANTS[quant][0]
        types.update({(i, t.name): t.tensor_type.name for t in reader.tensors})
    want = {"Q8_0": {"Q8_0"}, "Q4_K_M": {"Q4_K", "Q6_K"}}[quant]
    big = [k for k in types if k[1].endswith(".weight") and "norm" not in k[1] and "rope" not in k[1]
           and "layer_output_scale" not in k[1]]
    assert {types[k] for k in big} <= want | {"F32"} and {types[k] for k in big} & want
    # the MTP block (qwen35) and the whole drafter (gemma4) are quantized as well
    mtp = [k for k in big if (k[0] == 1 if arch == "gemma4" else k[1].startswith(f"blk.{r.spec.n_layer}."))]
    assert mtp and all(types[k] in want for k in mtp if types[k] != "F32")
    assert any("nextn" in k[1] for k in mtp)
    assert r.weight_bytes == sum(int(t.n_bytes) for p in files for t in gguf.GGUFReader(p).tensors)
    assert r.weight_bytes < 0.6 * synth.weight_bytes(r.spec)  # smaller than the f32 model it came from
    with _load_target(r) as m:
        assert m.n_layer_nextn == (1 if arch == "qwen35" else 0)


@pytest.mark.parametrize("arch", ["qwen35", "gemma4"])
def test_quantized_oracle_greedy_follows_the_cycle(synth_model, arch):
    r = synth_model(arch, "oracle", agree=0.7, quant="Q4_K_M", **QUANT_FIELDS["Q4_K_M"])
    with _load_target(r) as m, Context(m) as ctx:
        prompt = m.tokenize(CHAT_PROMPTS[arch], add_special=False)
        tokens, margins = greedy(ctx, prompt, 2 * len(r.cycle) + 5)
        assert tokens == r.greedy_continuation(prompt[-1], len(tokens))
        assert min(margins) >= 10.0


def test_quantizing_writes_atomically_and_reports_quantizer_failures(tmp_path, monkeypatch):
    monkeypatch.setattr(synth, "_QUANTIZE_SCRIPT", "import sys; print('boom: bad tensor', file=sys.stderr); sys.exit(3)")
    with pytest.raises(InvalidInputError, match="quantizer failed on mtp-m.gguf: boom: bad tensor"):
        write_model(SynthSpec(arch="gemma4", quant="Q8_0"), tmp_path / "m.gguf")
    assert list(tmp_path.iterdir()) == []


def test_script_quantizes(tmp_path):
    out = _script("--quant", "Q8_0", "--agree", "0.5", "--out", "q.gguf", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("\n") == 1 and "Q8_0" in out.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["q.gguf"]
    assert gguf.GGUFReader(tmp_path / "q.gguf").fields["general.file_type"].parts[-1][0] == 7
    again = write_model(SynthSpec(agree=0.5, quant="Q8_0"), tmp_path / "again.gguf")
    assert again.model_path.read_bytes() == (tmp_path / "q.gguf").read_bytes()  # still a pure function of the spec


# ------------------------------------------------------------- phase-changing agreement

PHASES = ((40, 0.95), (40, 0.2))


@pytest.mark.parametrize("arch", ["qwen35", "gemma4"])
def test_agree_phases_lay_out_the_agreement_in_stretches(synth_model, arch):
    r = synth_model(arch, "oracle", agree_phases=PHASES)
    L = len(r.cycle)
    assert L == 80  # the 60-token passage grown to a whole repetition of the 80-token pattern
    assert len(set(r.cycle)) == L and r.cycle[:60] == tuple(synth_model(arch, "oracle").cycle)
    pos = r.agree_positions
    assert len(pos) == L
    assert sum(pos[:40]) == 38 and sum(pos[40:]) == 8  # round(0.95 * 40), round(0.2 * 40)
    assert r.agree_tokens == frozenset(c for c, a in zip(r.cycle, pos) if a)
    assert r.expected_acceptance == pytest.approx(46 / 80)
    for k, c in enumerate(r.cycle):
        assert (r.mtp_prediction[c] == r.successor[c]) == pos[k]
    # the cycle still reads as text: the passage, then filler words
    assert r.cycle_text.startswith(synth.CYCLE_TEXT) and len(r.cycle_text) > len(synth.CYCLE_TEXT)


@pytest.mark.parametrize("arch", ["qwen35", "gemma4"])
def test_phase_model_generates_its_cycle_and_drafts_by_phase(synth_model, arch):
    r = synth_model(arch, "oracle", agree_phases=PHASES)
    with _load_target(r) as m:
        prompt = m.tokenize("Hello there")
        seq = prompt + r.greedy_continuation(prompt[-1], len(r.cycle) + 1)
        with Context(m) as ctx:
            tokens, _ = greedy(ctx, prompt, len(r.cycle))
        assert tokens == list(r.cycle)
        assert m.detokenize(tokens) == r.cycle_text
        with Context(m, nextn=True) as tgt:
            tgt.decode(seq)
            hidden = np.stack([tgt.hidden(i, m.n_embd) for i in range(len(seq))])
            pairs = list(zip(seq[1:], hidden[:-1], range(1, len(seq))))
            if r.draft_path is None:
                with Context(m, mtp=True, other=tgt) as dft:
                    logits = dft.mtp_logits(*map(list, zip(*pairs)))
            else:
                with Model(r.draft_path) as dm, Context(dm, mtp=True, other=tgt) as dft:
                    logits = np.concatenate([dft.mtp_logits([t], h[None], [p]) for t, h, p in pairs])
    drafts = [top2(row)[0] for row in logits]
    # the head's draft after cycle[k] is right exactly where the phases say
    right = [d == r.successor[t] for d, (t, _, _) in zip(drafts, pairs)][len(prompt) - 1:][: len(r.cycle)]
    assert right == list(r.agree_positions)
    assert sum(right[:40]) / 40 > 0.9 > 0.3 > sum(right[40:]) / 40


def test_agree_phases_repeat_along_a_long_cycle_and_in_random_models(tmp_path):
    r = write_model(SynthSpec(n_embd=512, agree_phases=((100, 1.0), (20, 0.0))), tmp_path / "a.gguf")
    assert len(r.cycle) == 120 and r.agree_positions == (True,) * 100 + (False,) * 20
    r = write_model(SynthSpec(agree_phases=((10, 1.0), (15, 0.0))), tmp_path / "b.gguf")
    assert len(r.cycle) == 75 and r.agree_positions == ((True,) * 10 + (False,) * 15) * 3
    rnd = write_model(SynthSpec(mode="random", agree_phases=((10, 1.0), (10, 0.0))), tmp_path / "c.gguf")
    plain = write_model(SynthSpec(mode="random"), tmp_path / "d.gguf")
    assert rnd.model_path.read_bytes() != plain.model_path.read_bytes()  # the head drafts by phase


def test_script_writes_a_phase_model(tmp_path):
    out = _script("--agree-phases", "40:0.95, 40:0.2", "--out", "p.gguf", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "agree=40:0.95,40:0.2 (cycle of 80 tokens" in out.stdout


@pytest.mark.parametrize("arch", ["qwen35", "gemma4"])
def test_bench_preset_rows_fit_k_quant_blocks(arch):
    """bench_engine.py quantizes the bench preset (and its 12-layer variant) to Q4_K_M/Q6_K: every
    row must be a whole number of 256-value blocks, or llama.cpp would fall back per tensor."""
    for shape in ({}, {"n_layer": 12, "n_ff": 4096}):
        spec = SynthSpec.preset("bench", arch=arch, quant="Q4_K_M", **shape)
        dims = synth._spec_dims(spec)
        synth._check_quant_rows(spec, dims, synth._plan(spec, dims, synth._vocab(arch, dims.n_vocab)))
    spec = SynthSpec(arch=arch, quant="Q4_K_M")  # the tiny preset does not fit, and says so
    dims = synth._spec_dims(spec)
    with pytest.raises(InvalidInputError, match="blocks of 256"):
        synth._check_quant_rows(spec, dims, synth._plan(spec, dims, synth._vocab(arch, dims.n_vocab)))
