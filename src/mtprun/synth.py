"""Synthetic GGUF models for tests, benchmarks and the demo (nothing is downloaded).

``write_model(spec, out)`` writes a small (or, with the ``bench`` preset, memory-bound) model that
llama.cpp 0c1e570 (llama-cpp-python 0.3.36) loads exactly like the real thing, with weights chosen
so that what it generates -- and what its MTP head drafts -- is known in advance.

Architectures and file layout
-----------------------------
``qwen35`` -- a Qwen3.5/3.6-style dense hybrid, one file (as converted by ``convert_hf_to_gguf.py``
from a checkpoint with ``mtp_num_hidden_layers = 1``)::

    token_embd, output_norm, output                       [n_embd, n_vocab] / [n_embd]
    blk.i  (i < n_layer, (i+1) % full_attention_interval != 0): gated delta net (linear attention)
        attn_norm, post_attention_norm, attn_qkv, attn_gate, ssm_conv1d, ssm_dt.bias, ssm_a,
        ssm_alpha, ssm_beta, ssm_norm, ssm_out, ffn_gate, ffn_up, ffn_down
    blk.i  (every full_attention_interval-th layer): gated full attention
        attn_norm, post_attention_norm, attn_q (query + gate), attn_k, attn_v, attn_q_norm,
        attn_k_norm, attn_output, ffn_gate, ffn_up, ffn_down
    blk.{n_layer}: the MTP block -- a full-attention block plus nextn.eh_proj [2 n_embd, n_embd],
        nextn.enorm, nextn.hnorm, nextn.shared_head_norm (embeddings and LM head are shared)
    keys: qwen35.block_count = n_layer + 1, qwen35.nextn_predict_layers = 1,
        qwen35.full_attention_interval, qwen35.attention.recurrent_layers, qwen35.ssm.*,
        qwen35.rope.dimension_sections, ...

``gemma4`` -- a Gemma 4-style target (5 sliding-window layers to 1 global layer, the last layer
global; no per-layer embeddings; global layers use K as V as in the large Gemma 4 models) and,
next to it, its drafter ``mtp-<name>.gguf`` (arch ``gemma4-assistant``): ``nextn.pre_projection``
[2 n_embd_target, n_embd], query-only attention layers that read the target's KV cache (its last
sliding layer n_layer-2 and its last global layer n_layer-1), ``nextn.post_projection``
[n_embd, n_embd_target] and ``embedding_length_out = n_embd_target``. The target has an untied
``output`` tensor (real Gemma ties it to ``token_embd``; the oracle needs them to differ).

``qwen35moe`` -- Qwen3.6-35B-A3B's layout: ``qwen35`` with every FFN (trunk and MTP block)
replaced by a softmax router over routed SwiGLU experts plus a shared expert scaled by
sigmoid(ffn_gate_inp_shexp . x)::

    blk.i  ffn_gate_inp [n_embd, n_expert], ffn_gate_exps / ffn_up_exps [n_embd, n_ff_exp, n_expert],
        ffn_down_exps [n_ff_exp, n_embd, n_expert], ffn_gate_inp_shexp [n_embd],
        ffn_gate_shexp / ffn_up_shexp [n_embd, n_ff_exp], ffn_down_shexp [n_ff_exp, n_embd]
    keys: qwen35moe.expert_count, expert_used_count, expert_feed_forward_length,
        expert_shared_feed_forward_length (no feed_forward_length), the rest as qwen35

``hy_v3`` -- dense Hunyuan V3 (no experts) with ``len(head_agree)`` MTP blocks, the cheapest
architecture whose heads llama.cpp chains (head i drafts draft position i)::

    blk.i  (i < n_layer): attn_norm, attn_q/k/v, attn_q_norm, attn_k_norm, attn_output,
        ffn_norm, ffn_gate, ffn_up, ffn_down
    blk.{n_layer + h}: the same block plus nextn.eh_proj, nextn.enorm, nextn.hnorm and
        nextn.shared_head_norm (its final norm before the shared LM head)
    keys: hy_v3.block_count = n_layer + heads, hy_v3.nextn_predict_layers = heads,
        hy_v3.expert_feed_forward_length (required by the loader), ...

Tokenizer: a real BPE vocabulary built from the passage in ``CYCLE_TEXT`` (every word of it is one
token, reachable through merges of its prefixes), all 256 bytes, filler pseudo-words up to
``n_vocab``, and the chat special tokens. ``qwen35`` uses GPT-2 byte-level BPE (``gpt2`` /
pre-tokenizer ``qwen35``, ChatML template with ``<think>``); ``gemma4`` uses Gemma 4's own
SentencePiece-style BPE (``gemma4``: spaces become U+2581, ``<0xNN>`` byte fallback) with the
``<|turn>`` / ``<|channel>thought`` template. Both templates take ``enable_thinking``.

Weights (``mode``)
------------------
``oracle``: the target is a deterministic next-token machine and the MTP head agrees with it on a
chosen fraction ``agree`` of the tokens (construction below).

``random``: the same construction with a *ring* of L ordinary tokens in seeded random order in
place of the passage, every sub-block at full scale, and the trunk's sub-blocks also writing
(seeded, random) into the signal coordinates. The context -- every layer, the gated-delta-net
states included -- then overrides the planted successor on a few of the steps (measured: 1.4%
qwen35, 1.2% gemma4), so zeroing any one layer's output changes what is generated, and the MTP
head, which knows only the planted successor, drafts wrongly exactly there: drafts are partly
accepted at context-dependent points, so rollbacks of the recurrent and KV state are exercised.
Random models have no guaranteed margin: near a context override the top two logits come closer
(top-1 margin over 1800 steps: median 6.7 / 5.1, smallest 0.16 / 0.10 for qwen35 / gemma4, against
a batched vs one-token difference of at most 1.4e-3 / 2.4e-2 with flash attention).

Oracle construction, with d = n_embd:

1. The cycle ``c_0 .. c_{L-1}`` is the token sequence of ``CYCLE_TEXT`` (distinct words and
   punctuation), cut to ``L <= d - d//4``. succ(c_k) = c_{k+1 mod L}; every other token (bytes,
   specials, chat-template text) has successor c_0, so any prompt is answered with the passage.
   With ``end_with_eos`` the last cycle token is the end-of-generation token: a reply recites the
   passage once and stops (the demo model).
2. Each cycle index k owns one *signal* coordinate s_k of the residual stream (a seeded choice of
   L coordinates); the rest is the *complement*. The embedding of c_k is ``a e_{s_k} + b r_t``
   (a = 0.8, b = 0.6, r_t a random unit vector in the complement); a token outside the cycle
   looks like c_{L-1} in the signal part and has its own random complement part.
3. All sub-blocks (gated delta nets, attention, FFNs) have random weights, but their output
   projections have zero rows on the signal coordinates: they write only into the complement.
   Every norm is element-wise, so the signal coordinate of the current token survives all layers
   untouched and every other signal coordinate stays exactly 0. The layers still compute (their
   output changes the hidden rows and, through the final RMS norm, the size of the top logit).
4. The LM head row of succ(c_k) reads s_k with weight w; every other row entry is 0. Hence the
   target's logits are exactly 0 except for the one token succ(x), whose logit is
   ``w * a * sqrt(d) / rms-ratio`` (about ``ORACLE_TOP_LOGIT``): greedy decoding follows the
   cycle, there are no ties, and the top-1 margin equals the top logit: ~20 for qwen35 (measured
   18-24), ~17.5 for gemma4 after its final logit soft-capping (measured 16.4-21.6).
5. MTP head. qwen35: ``eh_proj`` maps the token half ``enorm(embed(t))`` signal s_k -> s_{m(k)}
   (complement -> complement at random), the hidden half only complement -> complement (so h
   changes the draft's hidden row but never its argmax); the MTP block writes only into the
   complement; the shared LM head then predicts succ(c_{m(k)}). gemma4-assistant: the same map in
   ``nextn.pre_projection`` from the target embedding (x sqrt(n_embd)) into the drafter's own
   signal coordinates, its tied ``token_embd`` is the LM head for those coordinates.
   m(k) = k for k in the agree set A (a seeded subset of round(agree * L) cycle indices), so the
   head predicts succ(t) = the target's true next token after t; otherwise m(k) = k + L//2, a
   confidently wrong token. The head is fed its own hidden row when drafting further, but that row
   never moves the argmax, so each drafted position is accepted exactly when the token it follows
   is in A: per-position acceptance ~ agree, ~1.0 at agree = 1. ``SynthResult.simulate_speculative``
   replays llama.cpp's greedy draft/verify loop on these rules to give exact expected counts.
   Chained heads (hy_v3): head h has its own map m_h and agree set A_h (chosen so that, on the
   greedy walk, position h+1 is accepted ~head_agree[h] of the times it is reached) and drafts
   position h+1; ``head_predictions`` lists each head's drafts and the replay uses head h there.
   Experts, router and shared expert (qwen35moe) write only into the complement like any sub-block.

Quantized models (``quant``)
----------------------------
``quant="Q8_0" | "Q4_K_M" | ...`` (see ``QUANTS``) writes the f16/f32 model as above, then runs
llama.cpp's own quantizer on it (``llama_model_quantize`` with its default parameters, through
llama-cpp-python's ctypes API, in a child process so its log and any crash stay there), and
only then moves the files into place. The quantizer loads MTP layers (``load_mtp``): qwen35's
``blk.{n_layer}`` (``nextn.eh_proj`` and the block) is quantized like any other layer. The
gemma4-assistant sidecar is quantized too, with the same type, as shipped drafters are: a
drafter left at f16 beside a 4-bit target would make drafting look dearer than it is. Every
row a quantized tensor is cut into must be a multiple of the type's block (32 values; 256 for
K-quants) -- else llama.cpp silently falls back to another type for that tensor, so such specs
are refused. The oracle survives quantization: zero rows stay exactly zero in every type, the
one non-zero LM-head entry per row keeps its sign and size, and the residual noise (Q4_K's
offsets on zero entries) moves logits by far less than the oracle's margin (tested: cycle,
exact acceptance counts, MTP == plain for Q8_0 and Q4_K_M).

Phase-changing agreement (``agree_phases``)
-------------------------------------------
``agree_phases=((40, 0.95), (40, 0.2))`` lays the agree set out in stretches along the ring,
the pattern repeated from position 0: round(p n) agreeing positions in each stretch of n.
An oracle's cycle grows (filler words after the passage) to a whole number of repetitions of
the pattern, so the phases line up when the cycle wraps. ``SynthResult.agree_positions`` says
which positions agree.

Everything is a pure function of the spec: the same spec and seed give byte-identical files.
"""

from __future__ import annotations

import contextvars
import math
import os
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import gguf
import numpy as np

from mtprun.errors import InvalidInputError

__all__ = [
    "ARCHS",
    "CYCLE_TEXT",
    "DTYPES",
    "MODES",
    "PRESETS",
    "QUANTS",
    "SpecSimulation",
    "SynthResult",
    "SynthSpec",
    "cycle_length",
    "demo_spec",
    "draft_path_for",
    "parse_agree_phases",
    "weight_bytes",
    "write_model",
]

ARCHS = ("qwen35", "gemma4", "qwen35moe", "hy_v3")
MODES = ("random", "oracle")
DTYPES = ("f32", "f16", "q8_0")

# The oracle cycle spells this passage (every word and punctuation mark occurs once).
CYCLE_TEXT = (
    " Once upon a quiet morning, seven curious foxes wandered through golden meadows toward"
    " distant hills. Every brave explorer carried bright lanterns and small maps; nobody"
    " remembered exactly why their journey began! Still they laughed while singing old songs"
    " beneath tall silver trees: perhaps tomorrow would reveal hidden rivers flowing gently into"
    " warm sunlit valleys?"
)

ORACLE_TOP_LOGIT = 20.0  # nominal logit of the one token an oracle model predicts (all others: 0)
_SIGNAL_A = 0.8  # share of an embedding in its signal coordinate (a^2 + b^2 = 1)
_ORACLE_GAIN = 0.5  # size of the sub-block outputs (complement only) in oracle models
# LM-head weight (x 1/sqrt(d)): the final RMS norm leaves ~0.45 sqrt(d) in an oracle model's
# signal coordinate (measured 0.41-0.52 over 2..12 layers, both arches), so the top logit is ~20.
_HEAD_W = ORACLE_TOP_LOGIT / 0.45
# Random models: how strongly the trunk writes into the signal coordinates (vs 1 into the rest),
# tuned so that the context overrides the planted successor on 1-2% of the steps: more would
# make near-ties (and so batched vs one-token disagreements) frequent.
_RANDOM_CONTEXT = MappingProxyType({"qwen35": 0.7, "gemma4": 0.8, "qwen35moe": 0.55, "hy_v3": 0.85})
_MAX_VOCAB = 262144
_MAX_LAYERS = 128

# Presets: field overrides on top of the SynthSpec defaults (which are the "tiny" preset).
PRESETS: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    "tiny": MappingProxyType({}),
    # >= 300 MB of f16 weights: decoding is bound by memory bandwidth on a CPU.
    "bench": MappingProxyType({
        "n_embd": 2048, "n_layer": 4, "n_ff": 3072, "n_vocab": 16384, "dtype": "f16",
    }),
})
# Per-architecture additions to a preset. qwen35moe bench: Qwen3.6-35B-A3B's expert shape
# (n_ff_exp 512 at n_embd 2048) with 8 experts, 2 used: ~600 MB of f16, ~60% of it read per token.
ARCH_PRESETS: Mapping[tuple[str, str], Mapping[str, Any]] = MappingProxyType({
    ("bench", "qwen35moe"): MappingProxyType({"n_expert": 8, "n_expert_used": 2, "n_ff_exp": 512}),
})


@dataclass(frozen=True)
class SynthSpec:
    """What to generate. The defaults are the ``tiny`` preset (a few MB, milliseconds per token).

    ``agree`` is the fraction of the ring's tokens after which the MTP head drafts the planted
    successor (in random models the target itself sometimes deviates from it). ``n_ff`` and
    ``draft_n_embd`` of 0 are derived from ``n_embd``; ``draft_*`` only apply to gemma4 (its
    ``gemma4-assistant`` sidecar). ``name`` is written as ``general.name``.
    """

    arch: str = "qwen35"
    mode: str = "oracle"
    agree: float = 1.0
    seed: int = 0
    n_embd: int = 256
    n_layer: int = 4
    n_vocab: int = 1024
    n_ctx: int = 4096
    dtype: str = "f32"
    n_ff: int = 0
    draft_n_embd: int = 0
    draft_n_layer: int = 2
    name: str = ""
    end_with_eos: bool = False  # oracle: the passage ends with the end-of-generation token
    # attention / recurrent geometry, 0: derived from n_embd (set them to copy a real model's KV
    # cache and recurrent state at a small n_embd; *_full: gemma4's global layers)
    n_head: int = 0
    n_head_kv: int = 0
    head_dim: int = 0
    n_head_kv_full: int = 0
    head_dim_full: int = 0
    n_swa: int = 0  # gemma4 sliding window
    ssm_d_state: int = 0  # qwen35 gated delta net: head size,
    ssm_n_group: int = 0  # key (and query) heads,
    ssm_dt_rank: int = 0  # value heads
    # Quantize the written (f16/f32) model with llama.cpp's own quantizer: a QUANTS name, or None.
    quant: str | None = None
    # Agreement in stretches along the ring instead of one ``agree``: ((length, agree), ...),
    # repeated from ring position 0; an oracle's cycle is extended with filler words to a whole
    # number of repetitions. None: ``agree`` everywhere.
    agree_phases: tuple[tuple[int, float], ...] | None = None
    # qwen35moe (routed experts + gated shared expert): 0 = 8 experts, 2 used, n_ff_exp = n_ff / 4
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_exp: int = 0
    # hy_v3: one agreement per chained MTP head (head i drafts position i); () = one head, `agree`
    head_agree: tuple[float, ...] = ()

    @classmethod
    def preset(cls, name: str, /, **overrides: Any) -> SynthSpec:
        """The named preset (``tiny`` or ``bench``) with ``overrides`` applied."""
        if name not in PRESETS:
            raise InvalidInputError(f"unknown preset {name!r} (choose from {', '.join(PRESETS)})")
        unknown = sorted(set(overrides) - {f.name for f in fields(cls)})
        if unknown:
            raise InvalidInputError(f"unknown SynthSpec field(s): {', '.join(unknown)}")
        arch_preset = ARCH_PRESETS.get((name, overrides.get("arch", cls.arch)), {})
        return cls(**{**PRESETS[name], **arch_preset, **overrides})

    def validate(self) -> None:
        """Raise ``InvalidInputError`` (one line) unless this spec forms a valid model."""
        _spec_dims(self)


def demo_spec() -> SynthSpec:
    """The model behind ``mtprun --demo``: qwen35 oracle, readable text, ~80% draft acceptance;
    each reply recites the passage once and ends with the end-of-generation token."""
    return SynthSpec(arch="qwen35", mode="oracle", agree=0.8, seed=0, name="mtprun-demo", end_with_eos=True)


def draft_path_for(model_path: str | os.PathLike[str]) -> Path:
    """Where the gemma4 drafter sidecar of ``model_path`` goes: ``mtp-<name>`` in the same folder."""
    p = Path(model_path)
    return p.with_name(f"mtp-{p.name}")


@dataclass(frozen=True)
class SpecSimulation:
    """Expected outcome of llama.cpp's greedy draft/verify loop (``llama-speculative-simple``)."""

    n_max: int
    n_predict: int  # tokens produced (as counted by llama-speculative-simple)
    n_drafted: int
    n_accept: int
    reached_by_position: tuple[int, ...]  # drafts whose position i was verified (all before accepted)
    accepted_by_position: tuple[int, ...]  # ... and accepted at position i
    tokens: tuple[int, ...]  # the generated tokens

    @property
    def acceptance(self) -> float:
        """n_accept / n_drafted, the figure llama-speculative-simple prints as ``accept``."""
        return self.n_accept / self.n_drafted if self.n_drafted else 0.0

    @property
    def acceptance_by_position(self) -> tuple[float, ...]:
        """Acceptance at draft position 1..n_max, given all earlier positions were accepted."""
        return tuple(a / r if r else 0.0 for r, a in zip(self.reached_by_position, self.accepted_by_position))


@dataclass(frozen=True)
class SynthResult:
    """What ``write_model`` wrote, and what an oracle model will do."""

    spec: SynthSpec
    model_path: Path
    draft_path: Path | None  # gemma4 drafter sidecar; None for qwen35 (embedded MTP block)
    model_bytes: int
    draft_bytes: int  # 0 without a sidecar
    weight_bytes: int  # tensor data in all files written
    seconds: float
    n_vocab: int
    bos_id: int
    eos_id: int
    eog_ids: tuple[int, ...]
    add_bos: bool
    # Oracle models only (None for random models):
    cycle: tuple[int, ...] | None = None  # token ids, in order; succ(cycle[k]) = cycle[k+1 mod L]
    cycle_text: str | None = None  # what one turn of the cycle detokenizes to
    successor: Mapping[int, int] | None = None  # target's greedy next token, for every token id
    mtp_prediction: Mapping[int, int] | None = None  # MTP head's greedy draft after each token id
    agree_tokens: frozenset[int] | None = None  # cycle tokens after which the MTP head is right
    expected_acceptance: float | None = None  # per drafted position: len(agree_tokens) / len(cycle)
    top_logit: float | None = None  # nominal oracle top logit = top-1 margin (all others are 0)
    # per cycle position k: whether the MTP head is right after cycle[k] (the phases, in order)
    agree_positions: tuple[bool, ...] | None = None
    # Chained MTP heads (hy_v3 with head_agree; oracle only): head i's greedy draft after each
    # token id when it drafts position i, and its agree-set share. None: one head.
    head_predictions: tuple[Mapping[int, int], ...] | None = None
    head_expected_acceptance: tuple[float, ...] | None = None

    def summary(self) -> str:
        """One line describing what was written."""
        s = self.spec
        parts = [f"wrote {self.model_path} ({_mb(self.model_bytes)})"]
        if self.draft_path is not None:
            parts.append(f"+ drafter {self.draft_path} ({_mb(self.draft_bytes)})")
        desc = f"{s.arch} {s.mode}"
        if self.head_expected_acceptance is not None:
            desc += (f" {len(self.head_expected_acceptance)} chained MTP heads, agree="
                     + "/".join(f"{a:.3f}" for a in self.head_expected_acceptance))
        elif self.expected_acceptance is not None:
            agree = _phases_text(s.agree_phases) if s.agree_phases else f"{s.agree:g}"
            desc += (f" agree={agree} (cycle of {len(self.cycle or ())} tokens, expected acceptance"
                     f" per drafted position {self.expected_acceptance:.3f})")
        parts.append(
            f"{desc}, n_embd={s.n_embd} n_layer={s.n_layer} n_vocab={self.n_vocab} "
            f"n_ctx={s.n_ctx} {s.quant or s.dtype} seed={s.seed}, in {self.seconds:.2f}s"
        )
        return " ".join(parts[:-1]) + ": " + parts[-1]

    def greedy_continuation(self, last_token: int, n: int) -> list[int]:
        """The ``n`` tokens an oracle target generates greedily after a prompt ending in ``last_token``."""
        succ = self._need(self.successor)
        out, t = [], last_token
        for _ in range(n):
            t = succ[t]
            out.append(t)
        return out

    def simulate_speculative(self, last_token: int, n_predict: int, n_max: int) -> SpecSimulation:
        """Replay llama-speculative-simple's greedy loop (draft-mtp, --temp 0, p_min 0) exactly.

        ``last_token`` is the prompt's last token; ``n_predict`` is its ``-n``; ``n_max`` is
        ``--spec-draft-n-max``. Counts follow that program's statistics (the context is assumed
        to have room for the whole generation).
        """
        succ = self._need(self.successor)
        heads = self.head_predictions or (self._need(self.mtp_prediction),)
        if n_max < 0 or n_predict < 0:
            raise InvalidInputError("n_max and n_predict must be >= 0")
        if len(heads) > 1:  # chained heads: head i drafts position i, at most one draft per head
            n_max = min(n_max, len(heads))
        id_last, produced, drafted, accepted = last_token, 0, 0, 0
        reached, by_pos = [0] * n_max, [0] * n_max
        tokens: list[int] = []
        while True:
            room = max(n_predict - produced - 1, 0)
            # common_speculative_draft() only truncates a draft to a positive limit: at 0 the
            # full n_max draft is verified.
            draft: list[int] = []
            t = id_last
            for i in range(min(n_max, room) if room > 0 else n_max):
                t = heads[min(i, len(heads) - 1)][t]
                draft.append(t)
            ids, cur = [], id_last
            for i, d in enumerate(draft):
                reached[i] += 1
                if d != succ[cur]:
                    break
                by_pos[i] += 1
                ids.append(d)
                cur = d
            ids.append(succ[cur])
            drafted += len(draft)
            accepted += len(ids) - 1
            produced += len(ids)
            tokens.extend(ids)
            id_last = ids[-1]
            if produced > n_predict:
                break
        return SpecSimulation(n_max, produced, drafted, accepted, tuple(reached), tuple(by_pos), tuple(tokens))

    @staticmethod
    def _need(v: Any) -> Any:
        if v is None:
            raise InvalidInputError("only oracle models have a known continuation")
        return v


# --------------------------------------------------------------------------------------------
# dimensions and validation


@dataclass(frozen=True)
class _Dims:
    d: int
    n_layer: int
    n_ff: int
    n_vocab: int
    head_dim: int  # qwen35 attention head size; gemma4 sliding-layer head size
    head_dim_full: int  # gemma4 global-layer head size
    n_head: int
    n_head_kv: int  # qwen35; gemma4 sliding layers
    n_head_kv_full: int  # gemma4 global layers
    # qwen35 gated delta net
    ssm_d_state: int
    ssm_n_group: int
    ssm_dt_rank: int
    ssm_conv: int
    full_attn_interval: int
    # gemma4
    n_swa: int
    draft_d: int
    draft_n_layer: int
    draft_n_head: int
    draft_n_ff: int
    cycle_len: int  # ring length: the oracle's cycle, or the random model's planted ring
    # qwen35moe experts (0: dense FFNs)
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_exp: int = 0
    n_ff_shexp: int = 0
    n_nextn: int = 1  # MTP heads (hy_v3 chains several)


def _kv_heads(n_head: int, ratio: int) -> int:
    """The largest divisor of n_head that is at most n_head / ratio (grouped-query attention)."""
    return max(k for k in range(1, n_head + 1) if n_head % k == 0 and k * ratio <= max(n_head, ratio))


def _dims(spec: SynthSpec) -> _Dims:
    """Validate ``spec`` (one-line InvalidInputError) and derive every dimension from it."""
    bad = InvalidInputError
    if spec.arch not in ARCHS:
        raise bad(f"unknown arch {spec.arch!r} (choose from {', '.join(ARCHS)})")
    if spec.mode not in MODES:
        raise bad(f"unknown mode {spec.mode!r} (choose from {', '.join(MODES)})")
    if spec.dtype not in DTYPES:
        raise bad(f"unknown dtype {spec.dtype!r} (choose from {', '.join(DTYPES)})")
    if isinstance(spec.agree, bool) or not isinstance(spec.agree, (int, float)) or not (
        math.isfinite(spec.agree) and 0.0 <= spec.agree <= 1.0
    ):
        raise bad(f"agree must be a number in [0, 1], got {spec.agree!r}")
    for fname in ("seed", "n_embd", "n_layer", "n_vocab", "n_ctx", "n_ff", "draft_n_embd", "draft_n_layer"):
        v = getattr(spec, fname)
        if isinstance(v, bool) or not isinstance(v, int):
            raise bad(f"{fname} must be an integer, got {v!r}")
    if not 0 <= spec.seed < 2**63:
        raise bad(f"seed must be in [0, 2^63), got {spec.seed}")
    d = spec.n_embd
    if d < 64 or d % 64 or d > 16384:
        raise bad(f"n_embd must be a multiple of 64 in [64, 16384], got {d}")
    # qwen35: at least one gated-delta-net layer and one full-attention layer (its KV cache);
    # gemma4: the drafter reads the target's last sliding (n_layer-2) and global (n_layer-1) layers
    if not 2 <= spec.n_layer <= _MAX_LAYERS:
        raise bad(f"n_layer must be in [2, {_MAX_LAYERS}], got {spec.n_layer}")
    if not 64 <= spec.n_ctx <= 1 << 20:
        raise bad(f"n_ctx must be in [64, 1048576], got {spec.n_ctx}")
    min_vocab = _Vocab.minimum_size(spec.arch)
    if not min_vocab <= spec.n_vocab <= _MAX_VOCAB:
        raise bad(f"n_vocab must be in [{min_vocab}, {_MAX_VOCAB}] for {spec.arch}'s tokenizer, got {spec.n_vocab}")
    n_ff = spec.n_ff or (3 * d) // 2
    if n_ff < 32 or n_ff % 32 or n_ff > 65536:
        raise bad(f"n_ff must be a multiple of 32 in [32, 65536], got {n_ff}")
    if not isinstance(spec.name, str) or len(spec.name) > 200 or any(ord(c) < 32 for c in spec.name):
        raise bad("name must be a printable string of at most 200 characters")

    head_dim = 64 if d <= 512 else 128
    n_head = max(2, d // head_dim)
    draft_d = draft_n_layer = draft_n_head = draft_n_ff = 0
    if spec.arch != "gemma4":
        n_head_kv = _kv_heads(n_head, 4)
        head_dim_full = head_dim
        n_head_kv_full = n_head_kv
        ssm_d_state = 32 if d <= 512 else 128
        ssm_n_group = max(1, d // (2 * ssm_d_state))
        ssm_dt_rank = 2 * ssm_n_group
        n_swa = 0
    else:
        head_dim_full = 2 * head_dim
        n_head = max(2, d // (2 * head_dim))
        n_head_kv = _kv_heads(n_head, 2)
        n_head_kv_full = _kv_heads(n_head, 4)
        ssm_d_state = ssm_n_group = ssm_dt_rank = 0
        n_swa = min(512, max(32, spec.n_ctx // 8))
        draft_d = spec.draft_n_embd or max(128, d // 4 // 64 * 64)
        if draft_d < 64 or draft_d % 64 or draft_d > 16384:
            raise bad(f"draft_n_embd must be a multiple of 64 in [64, 16384], got {draft_d}")
        if draft_d == d:
            raise bad("draft_n_embd must differ from n_embd (gemma4-assistant needs embedding_length_out != n_embd)")
        draft_n_layer = spec.draft_n_layer
        if not 1 <= draft_n_layer <= 16:
            raise bad(f"draft_n_layer must be in [1, 16], got {draft_n_layer}")
        # its queries attend to the target's KV heads: a multiple of both kinds of KV head count
        group = math.lcm(n_head_kv, n_head_kv_full)
        draft_n_head = max(group, draft_d // head_dim // group * group)
        draft_n_ff = 2 * draft_d
    geometry = ("n_head", "n_head_kv", "head_dim", "n_head_kv_full", "head_dim_full", "n_swa",
                "ssm_d_state", "ssm_n_group", "ssm_dt_rank")
    for fname in geometry:
        v = getattr(spec, fname)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 1 << 16:
            raise bad(f"{fname} must be an integer in [0, 65536], got {v!r}")
    n_head = spec.n_head or n_head
    head_dim = spec.head_dim or head_dim
    n_head_kv = spec.n_head_kv or (n_head_kv if not spec.n_head else _kv_heads(n_head, 4 if spec.arch == "qwen35" else 2))
    head_dim_full = spec.head_dim_full or (head_dim if spec.arch == "qwen35" else 2 * head_dim)
    n_head_kv_full = spec.n_head_kv_full or (n_head_kv if spec.arch == "qwen35" else _kv_heads(n_head, 4))
    if n_head % n_head_kv or n_head % n_head_kv_full or head_dim % 2 or head_dim_full % 2:
        raise bad(f"KV heads must divide n_head ({n_head}) and head sizes be even")
    if spec.arch == "qwen35":
        ssm_d_state = spec.ssm_d_state or ssm_d_state
        ssm_n_group = spec.ssm_n_group or ssm_n_group
        ssm_dt_rank = spec.ssm_dt_rank or ssm_dt_rank
        if ssm_dt_rank % ssm_n_group:
            raise bad(f"ssm_n_group ({ssm_n_group}) must divide ssm_dt_rank ({ssm_dt_rank})")
    else:
        n_swa = spec.n_swa or n_swa
        group = math.lcm(n_head_kv, n_head_kv_full)
        draft_n_head = max(group, draft_d // head_dim // group * group)
    room = min(d, draft_d or d)
    room -= room // 4  # keep a quarter of the residual stream for the complement
    if spec.end_with_eos and spec.mode != "oracle":
        raise bad("end_with_eos applies to oracle models only")
    if spec.mode == "oracle":
        cycle_len = min(len(_Vocab.cycle_words()) + int(spec.end_with_eos), room)
    else:
        cycle_len = min(room, len(_vocab(spec.arch, spec.n_vocab).ordinary_ids()))
    return _arch_dims(spec, _Dims(
        d=d, n_layer=spec.n_layer, n_ff=n_ff, n_vocab=spec.n_vocab, head_dim=head_dim,
        head_dim_full=head_dim_full, n_head=n_head, n_head_kv=n_head_kv, n_head_kv_full=n_head_kv_full,
        ssm_d_state=ssm_d_state, ssm_n_group=ssm_n_group, ssm_dt_rank=ssm_dt_rank, ssm_conv=4,
        full_attn_interval=min(4, spec.n_layer), n_swa=n_swa, draft_d=draft_d, draft_n_layer=draft_n_layer,
        draft_n_head=draft_n_head, draft_n_ff=draft_n_ff, cycle_len=cycle_len,
    ))


# --------------------------------------------------------------------------------------------
# tokenizer


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


_BYTE_CHARS = _bytes_to_unicode()

_QWEN_SPECIALS = (
    ("<|endoftext|>", gguf.TokenType.CONTROL),
    ("<|im_start|>", gguf.TokenType.CONTROL),
    ("<|im_end|>", gguf.TokenType.CONTROL),
    ("<think>", gguf.TokenType.USER_DEFINED),
    ("</think>", gguf.TokenType.USER_DEFINED),
)
_GEMMA_SPECIALS = (
    ("<pad>", gguf.TokenType.CONTROL),
    ("<eos>", gguf.TokenType.CONTROL),
    ("<bos>", gguf.TokenType.CONTROL),
    ("<unk>", gguf.TokenType.UNKNOWN),
    ("<mask>", gguf.TokenType.CONTROL),
    ("<|turn>", gguf.TokenType.CONTROL),
    ("<turn|>", gguf.TokenType.CONTROL),
    ("<|think|>", gguf.TokenType.CONTROL),
    ("<|channel>", gguf.TokenType.USER_DEFINED),
    ("<channel|>", gguf.TokenType.USER_DEFINED),
)

_QWEN_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content | trim + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'system' %}"
    "{%- if not loop.first %}{{- raise_exception('System message must be at the beginning.') }}{%- endif %}"
    "{%- elif message.role == 'user' %}"
    "{{- '<|im_start|>user\\n' + message.content | trim + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{%- set content = message.content | trim %}"
    "{%- if '</think>' in content %}{%- set content = content.split('</think>')[-1] | trim %}{%- endif %}"
    "{{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- raise_exception('Unexpected message role.') }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- else %}"
    "{{- '<think>\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)

_GEMMA_TEMPLATE = (
    "{%- set thinking = enable_thinking is defined and enable_thinking -%}"
    "{%- set loop_messages = messages -%}"
    "{{- bos_token -}}"
    "{%- if thinking or messages[0].role in ['system', 'developer'] -%}"
    "{{- '<|turn>system\\n' -}}"
    "{%- if thinking -%}{{- '<|think|>\\n' -}}{%- endif -%}"
    "{%- if messages[0].role in ['system', 'developer'] -%}"
    "{{- messages[0].content | trim -}}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- endif -%}"
    "{{- '<turn|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if message.role not in ['user', 'assistant'] -%}"
    "{{- raise_exception('Unexpected message role.') -}}"
    "{%- endif -%}"
    "{%- set role = 'model' if message.role == 'assistant' else message.role -%}"
    "{%- set content = message.content -%}"
    "{%- if role == 'model' and '<channel|>' in content -%}{%- set content = content.split('<channel|>')[-1] -%}{%- endif -%}"
    "{{- '<|turn>' + role + '\\n' + content | trim + '<turn|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|turn>model\\n' -}}"
    "{%- if not thinking -%}{{- '<|channel>thought\\n<channel|>' -}}{%- endif -%}"
    "{%- endif -%}"
)


class _Vocab:
    """A BPE vocabulary in which every word of CYCLE_TEXT is a single token.

    Words are built by merges of their prefixes (``▁w ▁wo ▁wor ...``); every merge's left side
    starts with the space symbol, so inside one pre-token only one chain of merges can apply and
    llama.cpp's BPE always yields the whole word. The vocabulary does not depend on the seed.
    """

    def __init__(self, arch: str, n_vocab: int) -> None:
        self.arch = arch
        self.spm = arch == "gemma4"  # Gemma 4's SentencePiece-style BPE; else GPT-2 byte-level
        self.space = "\u2581" if self.spm else _BYTE_CHARS[0x20]
        self.tokens: list[str] = []
        self.types: list[int] = []
        self.merges: list[str] = []
        self.index: dict[str, int] = {}
        specials = _GEMMA_SPECIALS if self.spm else _QWEN_SPECIALS
        if self.spm:
            for text, ttype in specials:
                self._add(text, ttype)
            for b in range(256):
                self._add(f"<0x{b:02X}>", gguf.TokenType.BYTE)
            for ch in [self.space, "\n", "\t"] + [chr(c) for c in range(0x21, 0x7F)]:
                self._add(ch, gguf.TokenType.NORMAL)
        else:
            for b in range(256):
                self._add(_BYTE_CHARS[b], gguf.TokenType.NORMAL)
        for word in self.cycle_words():
            self._add_word(self._sym(word))
        n_specials_after = 0 if self.spm else len(specials)
        self._fill(n_vocab - n_specials_after)
        if not self.spm:
            for text, ttype in specials:
                self._add(text, ttype)
        assert len(self.tokens) == n_vocab, (len(self.tokens), n_vocab)

    @staticmethod
    def cycle_words() -> list[str]:
        """CYCLE_TEXT split the way both pre-tokenizers split it: ' word' and punctuation."""
        out: list[str] = []
        for chunk in CYCLE_TEXT.split(" ")[1:]:
            word = chunk.rstrip(",.;:!?")
            out.append(" " + word)
            out.extend(chunk[len(word):])
        return out

    @classmethod
    def minimum_size(cls, arch: str) -> int:
        key = ("min", arch)
        if key not in _VOCAB_CACHE:
            _VOCAB_CACHE[key] = cls._base_size(arch)
        return _VOCAB_CACHE[key]

    @classmethod
    def _base_size(cls, arch: str) -> int:
        spm = arch == "gemma4"
        space = "\u2581" if spm else _BYTE_CHARS[0x20]
        base = {(_BYTE_CHARS[b] if not spm else f"<0x{b:02X}>") for b in range(256)}
        if spm:
            base |= {space, "\n", "\t"} | {chr(c) for c in range(0x21, 0x7F)}
        words = set()
        for w in cls.cycle_words():
            s = w.replace(" ", space) if spm else "".join(_BYTE_CHARS[b] for b in w.encode())
            for k in range(2, len(s) + 1):
                words.add(s[:k])
        n_special = len(_GEMMA_SPECIALS if spm else _QWEN_SPECIALS)
        return len(base | words) + n_special

    def _sym(self, text: str) -> str:
        if self.spm:
            return text.replace(" ", self.space)
        return "".join(_BYTE_CHARS[b] for b in text.encode("utf-8"))

    def _add(self, text: str, ttype: int) -> int:
        if text in self.index:
            return self.index[text]
        self.index[text] = len(self.tokens)
        self.tokens.append(text)
        self.types.append(int(ttype))
        return self.index[text]

    def _add_word(self, sym: str) -> None:
        for k in range(2, len(sym) + 1):
            if sym[:k] not in self.index:
                self.merges.append(f"{sym[:k - 1]} {sym[k - 1]}")
                self._add(sym[:k], gguf.TokenType.NORMAL)

    def _fill(self, target: int) -> None:
        """Add pseudo-words (one new token and merge each) until there are ``target`` tokens."""
        rng = np.random.default_rng(20240531)  # fixed: the tokenizer must not depend on the seed
        letters = "abcdefghijklmnopqrstuvwxyz"
        stems = [self.space]
        while len(self.tokens) < target:
            stem = stems[int(rng.integers(len(stems)))]
            word = stem + letters[int(rng.integers(26))]
            if word in self.index:
                continue
            self.merges.append(f"{stem} {word[-1]}")
            self._add(word, gguf.TokenType.NORMAL)
            if len(word) < 9:
                stems.append(word)

    def id(self, text: str) -> int:
        return self.index[text]

    def ordinary_ids(self) -> list[int]:
        """Multi-character ordinary tokens (words, word prefixes, filler words)."""
        return [i for i, (tok, ty) in enumerate(zip(self.tokens, self.types))
                if ty == gguf.TokenType.NORMAL and len(tok) > 1]

    def cycle_ids(self) -> list[int]:
        return [self.id(self._sym(w)) for w in self.cycle_words()]

    def write(self, w: gguf.GGUFWriter) -> None:
        if self.spm:
            w.add_string("tokenizer.ggml.model", "gemma4")
        else:
            w.add_string("tokenizer.ggml.model", "gpt2")
            w.add_string("tokenizer.ggml.pre", "qwen35")
        w.add_array("tokenizer.ggml.tokens", self.tokens)
        if self.spm:
            w.add_array("tokenizer.ggml.scores", [float(-i) for i in range(len(self.tokens))])
        w.add_array("tokenizer.ggml.token_type", self.types)
        w.add_array("tokenizer.ggml.merges", self.merges)
        if self.spm:
            w.add_uint32("tokenizer.ggml.bos_token_id", self.id("<bos>"))
            w.add_uint32("tokenizer.ggml.eos_token_id", self.id("<eos>"))
            w.add_uint32("tokenizer.ggml.unknown_token_id", self.id("<unk>"))
            w.add_uint32("tokenizer.ggml.padding_token_id", self.id("<pad>"))
            w.add_bool("tokenizer.ggml.add_bos_token", True)
            w.add_bool("tokenizer.ggml.add_space_prefix", False)
            w.add_string("tokenizer.chat_template", _GEMMA_TEMPLATE)
        else:
            w.add_uint32("tokenizer.ggml.eos_token_id", self.id("<|im_end|>"))
            w.add_uint32("tokenizer.ggml.padding_token_id", self.id("<|endoftext|>"))
            w.add_uint32("tokenizer.ggml.bos_token_id", self.id("<|endoftext|>"))
            w.add_bool("tokenizer.ggml.add_bos_token", False)
            w.add_string("tokenizer.chat_template", _QWEN_TEMPLATE)

    @property
    def bos_id(self) -> int:
        return self.id("<bos>") if self.spm else self.id("<|endoftext|>")

    @property
    def eos_id(self) -> int:
        return self.id("<eos>") if self.spm else self.id("<|im_end|>")

    @property
    def eog_ids(self) -> tuple[int, ...]:
        if self.spm:
            return (self.id("<eos>"), self.id("<turn|>"))
        return (self.id("<|endoftext|>"), self.id("<|im_end|>"))


_VOCAB_CACHE: dict[Any, Any] = {}


def _vocab(arch: str, n_vocab: int) -> _Vocab:
    key = (arch, n_vocab)
    if key not in _VOCAB_CACHE:
        _VOCAB_CACHE[key] = _Vocab(arch, n_vocab)
    return _VOCAB_CACHE[key]


# --------------------------------------------------------------------------------------------
# weights


def _rng(seed: int, *tags: str) -> np.random.Generator:
    """An independent, stable random stream for (seed, tags...)."""
    return np.random.default_rng([seed & 0xFFFFFFFF, seed >> 32, *(zlib.crc32(t.encode()) for t in tags)])


_DRY_RUN: contextvars.ContextVar[bool] = contextvars.ContextVar("synth_dry_run", default=False)


def _gauss(seed: int, tag: str, shape: tuple[int, ...], std: float) -> np.ndarray:
    if _DRY_RUN.get():  # weight_bytes(): shapes only (zero pages are never touched)
        return np.zeros(shape, dtype=np.float32)
    return _rng(seed, tag).standard_normal(shape, dtype=np.float32) * np.float32(std)


@dataclass
class _Plan:
    """Token-level plan shared by both modes (see the module docstring).

    ``ring`` is the oracle's cycle (the passage) or, in random mode, a seeded random order of
    ordinary tokens; ring[k] owns signal coordinate ``signal[k]`` and its planted successor is
    ring[k+1]. ``context`` is how strongly the trunk's sub-blocks write into the signal
    coordinates (0 for oracle models: then the ring is followed exactly).
    """

    ring: list[int]  # token ids
    alias: np.ndarray  # [n_vocab] ring index each token behaves like
    agree: list[bool]  # per ring index: the MTP head drafts the planted successor
    mtp_index: list[int]  # m(k): the ring index whose successor the MTP head drafts after ring[k]
    signal: np.ndarray  # [L] target signal coordinates
    draft_signal: np.ndarray | None  # [L] gemma4-assistant signal coordinates
    gain: float  # size of the sub-block outputs in the complement
    context: float  # size of the trunk sub-block outputs in the signal coordinates
    jitter: float  # random spread of the norm weights
    # chained heads (hy_v3): per head i, its agree set and m_i(k); head 0's are agree / mtp_index
    head_agree: list[list[bool]] = field(default_factory=list)
    head_mtp_index: list[list[int]] = field(default_factory=list)

    @property
    def L(self) -> int:
        return len(self.ring)


def _plan(spec: SynthSpec, dims: _Dims, vocab: _Vocab) -> _Plan:
    L = dims.cycle_len
    if spec.mode == "oracle":
        # with end_with_eos the passage (cut to fit) is followed by the end-of-generation token
        ring = vocab.cycle_ids()[: L - 1] + [vocab.eos_id] if spec.end_with_eos else vocab.cycle_ids()[:L]
        alias = np.full(dims.n_vocab, L - 1, dtype=np.int64)
        gain, context, jitter = _ORACLE_GAIN / math.sqrt(max(1.0, dims.n_layer / 4)), 0.0, 0.0
    else:
        pool = vocab.ordinary_ids()
        ring = [pool[int(i)] for i in _rng(spec.seed, "ring").permutation(len(pool))[:L]]
        alias = _rng(spec.seed, "alias").integers(0, L, dims.n_vocab)
        gain, context, jitter = 1.0, _RANDOM_CONTEXT[spec.arch], 0.1
    if spec.agree_phases and spec.mode == "oracle" and len(ring) < L:  # room for whole phase repetitions
        ring = _extend_ring(ring, vocab, L)
    alias[ring] = np.arange(L)
    agree = _phase_agree_set(spec.seed, L, spec.agree_phases) if spec.agree_phases else _agree_set(spec.seed, L, spec.agree)
    mtp_index = [k if agree[k] else (k + L // 2) % L for k in range(L)]
    signal = _rng(spec.seed, "signal").permutation(dims.d)[:L]
    draft_signal = _rng(spec.seed, "draft-signal").permutation(dims.draft_d)[:L] if dims.draft_d else None
    return _with_heads(spec, _Plan(ring, alias, agree, mtp_index, signal, draft_signal, gain, context, jitter))


def _agree_set(seed: int, L: int, p: float) -> list[bool]:
    """round(p L) ring indices after which the MTP head is right, spread so that along the ring
    P(next in A | in A) and P(next in A | this and previous in A) are also close to p: then every
    draft position, not just the first, is accepted with probability ~p (best of 256 seeded
    random choices)."""
    n = int(round(p * L))
    rng = _rng(seed, "agree")
    best, best_score = [False] * L, math.inf
    for _ in range(256 if 0 < n < L else 1):
        a = np.zeros(L, dtype=bool)
        a[rng.permutation(L)[:n]] = True
        a1, a2 = np.roll(a, -1), np.roll(a, -2)
        pairs, triples = int((a & a1).sum()), int((a & a1 & a2).sum())
        score = abs(pairs / max(n, 1) - p) + abs(triples / max(pairs, 1) - p)
        if score < best_score:
            best, best_score = a.tolist(), score
    return best


class _Tensors:
    """Named float32 tensors (numpy order: [ne1, ne0]) plus the rules to store them."""

    def __init__(self, dtype: str) -> None:
        self.dtype = dtype
        self.items: list[tuple[str, np.ndarray]] = []

    def add(self, name: str, arr: np.ndarray) -> None:
        self.items.append((name, np.ascontiguousarray(arr, dtype=np.float32)))

    def storage(self, name: str, arr: np.ndarray) -> str:
        """How a tensor is stored, by convert_hf_to_gguf.py's rules: norms, 1-D tensors, the
        convolution and non-".weight" tensors stay f32; q8_0 needs rows of 32k values (else f16)."""
        if arr.ndim <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight") or ".ssm_conv1d." in name:
            return "f32"
        if self.dtype == "q8_0" and arr.shape[-1] % 32:
            return "f16"
        return self.dtype

    def nbytes(self) -> int:
        sizes = {"f32": 4.0, "f16": 2.0, "q8_0": 34 / 32}
        return int(sum(arr.size * sizes[self.storage(name, arr)] for name, arr in self.items))

    def write(self, w: gguf.GGUFWriter) -> int:
        """Hand every tensor to ``w`` in its storage type (and drop the float32 copies)."""
        total = 0
        items, self.items = self.items, []
        while items:
            name, arr = items.pop(0)
            kind = self.storage(name, arr)
            if kind == "q8_0":
                data = gguf.quants.quantize(arr, gguf.GGMLQuantizationType.Q8_0)
                w.add_tensor(name, data, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            else:
                data = arr if kind == "f32" else arr.astype(np.float16)
                w.add_tensor(name, data)
            total += data.nbytes
        return total

    @property
    def file_type(self) -> int:
        return {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[self.dtype].value


def _out_proj(seed: int, tag: str, n_out: int, n_in: int, gain: float, signal: np.ndarray, signal_gain: float) -> np.ndarray:
    """A sub-block's output projection [n_out, n_in]: ``gain`` into the complement, ``signal_gain``
    into the signal coordinates (0: it never touches them)."""
    w = _gauss(seed, tag, (n_out, n_in), gain / math.sqrt(n_in))
    w[signal] *= np.float32(signal_gain / gain)
    return w


def _norm(n: int, seed: int = 0, tag: str = "", jitter: float = 0.0, value: float = 1.0) -> np.ndarray:
    v = np.full(n, value, dtype=np.float32)
    if jitter:
        v += _gauss(seed, tag, (n,), jitter * value)
    return v


def _embeddings(spec: SynthSpec, dims: _Dims, plan: _Plan, row_norm: float) -> np.ndarray:
    """token_embd [n_vocab, d]: a e_{signal[alias(t)]} + b r_t (r_t random in the complement)."""
    V, d = dims.n_vocab, dims.d
    comp = np.ones(d, dtype=bool)
    comp[plan.signal] = False
    r = _gauss(spec.seed, "token_embd", (V, int(comp.sum())), 1.0)
    r /= np.maximum(np.linalg.norm(r, axis=1, keepdims=True), np.float32(1e-30))
    b = math.sqrt(1.0 - _SIGNAL_A**2)
    e = np.zeros((V, d), dtype=np.float32)
    e[:, comp] = b * r
    e[np.arange(V), plan.signal[plan.alias]] = _SIGNAL_A
    return e * np.float32(row_norm)


def _lm_head(dims: _Dims, plan: _Plan, signal: np.ndarray, d: int) -> np.ndarray:
    """LM head [n_vocab, d]: row ring[k+1] reads signal[k]; every other entry is 0."""
    w = np.zeros((dims.n_vocab, d), dtype=np.float32)
    L = plan.L
    for k in range(L):
        w[plan.ring[(k + 1) % L], signal[k]] = _HEAD_W / math.sqrt(d)
    return w


def _signal_map(plan: _Plan, src_signal: np.ndarray, dst_signal: np.ndarray, n_dst: int, n_src: int) -> np.ndarray:
    """[n_dst, n_src] matrix sending the src signal coordinate of k to the dst one of m(k)."""
    m = np.zeros((n_dst, n_src), dtype=np.float32)
    for k in range(plan.L):
        m[dst_signal[plan.mtp_index[k]], src_signal[k]] = 1.0
    return m


def _complement_map(seed: int, tag: str, n_dst: int, n_src: int, gain: float,
                    dst_signal: np.ndarray, src_signal: np.ndarray) -> np.ndarray:
    """Random [n_dst, n_src] map that reads and writes only complement coordinates."""
    m = _gauss(seed, tag, (n_dst, n_src), gain / math.sqrt(n_src))
    m[dst_signal] = 0.0
    m[:, src_signal] = 0.0
    return m


def _qwen35_tensors(spec: SynthSpec, dims: _Dims, plan: _Plan, t: _Tensors) -> None:
    s, d, sig, jit = spec.seed, dims.d, plan.signal, plan.jitter
    hd, nh, nkv = dims.head_dim, dims.n_head, dims.n_head_kv
    key_dim = dims.ssm_d_state * dims.ssm_n_group
    value_dim = dims.ssm_d_state * dims.ssm_dt_rank
    conv_dim = 2 * key_dim + value_dim

    t.add("token_embd.weight", _embeddings(spec, dims, plan, math.sqrt(d)))
    t.add("output_norm.weight", _norm(d, s, "output_norm", jit))
    t.add("output.weight", _lm_head(dims, plan, sig, d))

    # qwen35 adds sub-block outputs to the residual stream unnormalized: 2x is about unit size
    def ffn(p: str, il: int, context: float) -> None:
        if dims.n_expert:  # qwen35moe: routed experts + gated shared expert, trunk and MTP block
            _moe_ffn(spec, dims, plan, t, p, il, context)
            return
        t.add(f"{p}.ffn_gate.weight", _gauss(s, f"{il}.ffn_gate", (dims.n_ff, d), 1 / math.sqrt(d)))
        t.add(f"{p}.ffn_up.weight", _gauss(s, f"{il}.ffn_up", (dims.n_ff, d), 1 / math.sqrt(d)))
        t.add(f"{p}.ffn_down.weight", _out_proj(s, f"{il}.ffn_down", d, dims.n_ff, 2 * plan.gain, sig, 2 * context))

    def attention(p: str, il: int, context: float) -> None:
        t.add(f"{p}.attn_q.weight", _gauss(s, f"{il}.attn_q", (2 * nh * hd, d), 1 / math.sqrt(d)))
        t.add(f"{p}.attn_k.weight", _gauss(s, f"{il}.attn_k", (nkv * hd, d), 1 / math.sqrt(d)))
        t.add(f"{p}.attn_v.weight", _gauss(s, f"{il}.attn_v", (nkv * hd, d), 1 / math.sqrt(d)))
        t.add(f"{p}.attn_q_norm.weight", _norm(hd, s, f"{il}.q_norm", jit))
        t.add(f"{p}.attn_k_norm.weight", _norm(hd, s, f"{il}.k_norm", jit))
        t.add(f"{p}.attn_output.weight", _out_proj(s, f"{il}.attn_output", d, nh * hd, 2 * plan.gain, sig, 2 * context))

    for il in range(dims.n_layer):
        p = f"blk.{il}"
        t.add(f"{p}.attn_norm.weight", _norm(d, s, f"{il}.attn_norm", jit))
        t.add(f"{p}.post_attention_norm.weight", _norm(d, s, f"{il}.post_attention_norm", jit))
        if (il + 1) % dims.full_attn_interval != 0:
            nv = dims.ssm_dt_rank
            t.add(f"{p}.attn_qkv.weight", _gauss(s, f"{il}.attn_qkv", (conv_dim, d), 1 / math.sqrt(d)))
            t.add(f"{p}.attn_gate.weight", _gauss(s, f"{il}.attn_gate", (value_dim, d), 1 / math.sqrt(d)))
            t.add(f"{p}.ssm_conv1d.weight", _gauss(s, f"{il}.ssm_conv1d", (conv_dim, dims.ssm_conv), 0.5))
            # per-head decay exp(-a * softplus(alpha + dt_bias)): a in [1, 16], dt in [1e-3, 0.1]
            r = _rng(s, f"{il}.ssm_params")
            a = np.exp(r.uniform(0.0, math.log(16.0), nv)).astype(np.float32)
            dt = np.exp(r.uniform(math.log(1e-3), math.log(0.1), nv)).astype(np.float32)
            t.add(f"{p}.ssm_a", -a)
            t.add(f"{p}.ssm_dt.bias", np.log(np.expm1(dt)).astype(np.float32))
            t.add(f"{p}.ssm_alpha.weight", _gauss(s, f"{il}.ssm_alpha", (nv, d), 0.5 / math.sqrt(d)))
            t.add(f"{p}.ssm_beta.weight", _gauss(s, f"{il}.ssm_beta", (nv, d), 1 / math.sqrt(d)))
            t.add(f"{p}.ssm_norm.weight", _norm(dims.ssm_d_state, s, f"{il}.ssm_norm", jit))
            t.add(f"{p}.ssm_out.weight", _out_proj(s, f"{il}.ssm_out", d, value_dim, 2 * plan.gain, sig, 2 * plan.context))
        else:
            attention(p, il, plan.context)
        ffn(p, il, plan.context)

    # the MTP block, blk.{n_layer}: like the trunk, but it never writes into the signal coordinates
    il = dims.n_layer
    p = f"blk.{il}"
    t.add(f"{p}.attn_norm.weight", _norm(d, s, f"{il}.attn_norm", jit))
    t.add(f"{p}.post_attention_norm.weight", _norm(d, s, f"{il}.post_attention_norm", jit))
    attention(p, il, 0.0)
    ffn(p, il, 0.0)
    tok = _signal_map(plan, sig, sig, d, d) + _complement_map(s, "nextn.eh_proj.e", d, d, 0.5, sig, sig)
    hid = _complement_map(s, "nextn.eh_proj.h", d, d, 0.5, sig, sig)
    t.add(f"{p}.nextn.eh_proj.weight", np.concatenate([tok, hid], axis=1))
    t.add(f"{p}.nextn.enorm.weight", _norm(d, s, "nextn.enorm", jit))
    t.add(f"{p}.nextn.hnorm.weight", _norm(d, s, "nextn.hnorm", jit))
    t.add(f"{p}.nextn.shared_head_norm.weight", _norm(d, s, "nextn.shared_head_norm", jit))


def _gemma4_layer_is_swa(il: int, n_layer: int) -> bool:
    return not ((il + 1) % 6 == 0 or il == n_layer - 1)


def _rope_freqs(hd: int) -> np.ndarray:
    """Gemma 4's proportional RoPE on global layers: rotate the first quarter of the dimensions."""
    n_rot = hd // 2 // 4
    return np.array([1.0] * n_rot + [1e30] * (hd // 2 - n_rot), dtype=np.float32)


def _gemma4_target_tensors(spec: SynthSpec, dims: _Dims, plan: _Plan, t: _Tensors) -> None:
    s, d, sig, jit = spec.seed, dims.d, plan.signal, plan.jitter
    # Gemma scales token_embd by sqrt(n_embd): rows of norm 1 give a residual stream of RMS 1
    t.add("token_embd.weight", _embeddings(spec, dims, plan, 1.0))
    t.add("output.weight", _lm_head(dims, plan, sig, d))
    t.add("output_norm.weight", _norm(d, s, "output_norm", jit))
    rope_freqs_done = False
    for il in range(dims.n_layer):
        p = f"blk.{il}"
        swa = _gemma4_layer_is_swa(il, dims.n_layer)
        hd = dims.head_dim if swa else dims.head_dim_full
        nkv = dims.n_head_kv if swa else dims.n_head_kv_full
        nh = dims.n_head
        t.add(f"{p}.attn_norm.weight", _norm(d, s, f"{il}.attn_norm", jit))
        t.add(f"{p}.attn_q.weight", _gauss(s, f"{il}.attn_q", (nh * hd, d), 1 / math.sqrt(d)))
        t.add(f"{p}.attn_k.weight", _gauss(s, f"{il}.attn_k", (nkv * hd, d), 1 / math.sqrt(d)))
        if swa:  # global layers use K as V (attention_k_eq_v), as in the large Gemma 4 models
            t.add(f"{p}.attn_v.weight", _gauss(s, f"{il}.attn_v", (nkv * hd, d), 1 / math.sqrt(d)))
        # the post-norms below set the sub-block sizes; these rows set signal vs complement
        t.add(f"{p}.attn_output.weight", _out_proj(s, f"{il}.attn_output", d, nh * hd, 1.0, sig, plan.context))
        # Gemma 4 does not scale q.k (f_attention_scale = 1): norms of hd^-1/4 keep scores ~N(0, 1)
        t.add(f"{p}.attn_q_norm.weight", _norm(hd, s, f"{il}.q_norm", jit, hd**-0.25))
        t.add(f"{p}.attn_k_norm.weight", _norm(hd, s, f"{il}.k_norm", jit, hd**-0.25))
        t.add(f"{p}.post_attention_norm.weight", _norm(d, s, f"{il}.post_attention_norm", jit, plan.gain))
        t.add(f"{p}.layer_output_scale.weight", np.ones(1, dtype=np.float32))
        if not swa and not rope_freqs_done:
            t.add("rope_freqs.weight", _rope_freqs(hd))
            rope_freqs_done = True
        t.add(f"{p}.ffn_norm.weight", _norm(d, s, f"{il}.ffn_norm", jit))
        t.add(f"{p}.ffn_gate.weight", _gauss(s, f"{il}.ffn_gate", (dims.n_ff, d), 1 / math.sqrt(d)))
        t.add(f"{p}.ffn_up.weight", _gauss(s, f"{il}.ffn_up", (dims.n_ff, d), 1 / math.sqrt(d)))
        t.add(f"{p}.ffn_down.weight", _out_proj(s, f"{il}.ffn_down", d, dims.n_ff, 1.0, sig, plan.context))
        t.add(f"{p}.post_ffw_norm.weight", _norm(d, s, f"{il}.post_ffw_norm", jit, plan.gain))


def _gemma4_draft_tensors(spec: SynthSpec, dims: _Dims, plan: _Plan, t: _Tensors) -> None:
    s, D, da, jit = spec.seed, dims.d, dims.draft_d, plan.jitter
    sig_t, sig_a = plan.signal, plan.draft_signal
    assert sig_a is not None
    # the drafter's token_embd is only its (tied) LM head; its input is the target's embedding
    t.add("token_embd.weight", _lm_head(dims, plan, sig_a, da))
    t.add("output_norm.weight", _norm(da, s, "draft.output_norm", jit))
    # the target embedding x sqrt(D) has RMS 1, its signal entry is a sqrt(D): rescale to sqrt(da)
    tok = _signal_map(plan, sig_t, sig_a, da, D) * np.float32(math.sqrt(da / D))
    tok += _complement_map(s, "draft.pre_projection.e", da, D, 0.5, sig_a, sig_t)
    hid = _complement_map(s, "draft.pre_projection.h", da, D, 0.5, sig_a, sig_t)
    t.add("nextn.pre_projection.weight", np.concatenate([tok, hid], axis=1))
    post = _complement_map(s, "draft.post_projection", D, da, 1.0, sig_t, sig_a)
    post[sig_t, sig_a] = 1.0
    t.add("nextn.post_projection.weight", post)
    rope_freqs_done = False
    for il in range(dims.draft_n_layer):
        p = f"blk.{il}"
        swa = il != dims.draft_n_layer - 1
        hd = dims.head_dim if swa else dims.head_dim_full
        nh = dims.draft_n_head
        t.add(f"{p}.attn_norm.weight", _norm(da, s, f"draft.{il}.attn_norm", jit))
        t.add(f"{p}.attn_q.weight", _gauss(s, f"draft.{il}.attn_q", (nh * hd, da), 1 / math.sqrt(da)))
        t.add(f"{p}.attn_output.weight", _out_proj(s, f"draft.{il}.attn_output", da, nh * hd, 1.0, sig_a, 0.0))
        t.add(f"{p}.attn_q_norm.weight", _norm(hd, s, f"draft.{il}.q_norm", jit, hd**-0.25))
        t.add(f"{p}.post_attention_norm.weight", _norm(da, s, f"draft.{il}.post_attention_norm", jit, plan.gain))
        t.add(f"{p}.layer_output_scale.weight", np.ones(1, dtype=np.float32))
        if not swa and not rope_freqs_done:
            t.add("rope_freqs.weight", _rope_freqs(hd))
            rope_freqs_done = True
        t.add(f"{p}.ffn_norm.weight", _norm(da, s, f"draft.{il}.ffn_norm", jit))
        t.add(f"{p}.ffn_gate.weight", _gauss(s, f"draft.{il}.ffn_gate", (dims.draft_n_ff, da), 1 / math.sqrt(da)))
        t.add(f"{p}.ffn_up.weight", _gauss(s, f"draft.{il}.ffn_up", (dims.draft_n_ff, da), 1 / math.sqrt(da)))
        t.add(f"{p}.ffn_down.weight", _out_proj(s, f"draft.{il}.ffn_down", da, dims.draft_n_ff, 1.0, sig_a, 0.0))
        t.add(f"{p}.post_ffw_norm.weight", _norm(da, s, f"draft.{il}.post_ffw_norm", jit, plan.gain))


# --------------------------------------------------------------------------------------------
# more architectures: qwen35moe (experts) and hy_v3 (chained MTP heads)


def _arch_dims(spec: SynthSpec, dims: _Dims) -> _Dims:
    """Validate the qwen35moe / hy_v3 fields of ``spec`` and add their dimensions to ``dims``."""
    bad = InvalidInputError
    for fname in ("n_expert", "n_expert_used", "n_ff_exp"):
        v = getattr(spec, fname)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise bad(f"{fname} must be an integer >= 0, got {v!r}")
    if spec.arch == "qwen35moe":
        n_expert = spec.n_expert or 8
        n_used = spec.n_expert_used or min(2, n_expert)
        n_ff_exp = spec.n_ff_exp or max(32, dims.n_ff // 4 // 32 * 32)
        if not 2 <= n_expert <= 256:
            raise bad(f"n_expert must be in [2, 256], got {n_expert}")
        if not 1 <= n_used <= n_expert:
            raise bad(f"n_expert_used must be in [1, n_expert={n_expert}], got {n_used}")
        if n_ff_exp % 32 or not 32 <= n_ff_exp <= 65536:
            raise bad(f"n_ff_exp must be a multiple of 32 in [32, 65536], got {n_ff_exp}")
        dims = replace(dims, n_expert=n_expert, n_expert_used=n_used, n_ff_exp=n_ff_exp, n_ff_shexp=n_ff_exp)
    elif spec.n_expert or spec.n_expert_used or spec.n_ff_exp:
        raise bad("n_expert, n_expert_used and n_ff_exp apply to qwen35moe only")
    heads = spec.head_agree
    if not isinstance(heads, tuple):
        raise bad(f"head_agree must be a tuple of numbers, got {heads!r}")
    if heads:
        if spec.arch != "hy_v3":
            raise bad(f"head_agree (several chained MTP heads) applies to hy_v3 only: llama.cpp runs one head for {spec.arch}")
        if not 1 <= len(heads) <= 4:
            raise bad(f"head_agree must have 1 to 4 entries, got {len(heads)}")
        for v in heads:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and 0.0 <= v <= 1.0):
                raise bad(f"head_agree entries must be numbers in [0, 1], got {v!r}")
        if spec.agree not in (1.0, heads[0]):
            raise bad("agree and head_agree[0] differ: with head_agree, it sets every head's agreement")
        dims = replace(dims, n_nextn=len(heads))
    return dims


def _with_heads(spec: SynthSpec, plan: _Plan) -> _Plan:
    """Give each MTP head its own agree set (head 0: ``agree`` or ``head_agree[0]``)."""
    L = plan.L
    for i, p in enumerate(spec.head_agree or (spec.agree,)):
        if not spec.head_agree:
            a = plan.agree
        elif i == 0:
            a = _agree_set(spec.seed, L, p)
        else:
            a = _chained_agree_set(spec.seed, L, p, plan.head_agree)
        plan.head_agree.append(a)
        plan.head_mtp_index.append([k if a[k] else (k + L // 2) % L for k in range(L)])
    plan.agree, plan.mtp_index = plan.head_agree[0], plan.head_mtp_index[0]
    return plan


def _chained_agree_set(seed: int, L: int, p: float, earlier: list[list[bool]]) -> list[bool]:
    """Head i's agree set (i = len(earlier)): round(p L) ring indices, the best of 256 seeded
    random choices at making the acceptance at draft position i+1, given the earlier positions
    were accepted, ~p on the greedy walk a prompt outside the cycle starts (drafting with heads
    0..i, four turns of the cycle). A head is right after ring index k exactly when k is in its set."""
    i, n = len(earlier), int(round(p * L))
    rng = _rng(seed, f"agree.{i}")
    best, best_score = [False] * L, math.inf
    for _ in range(256 if 0 < n < L else 1):
        a = np.zeros(L, dtype=bool)
        a[rng.permutation(L)[:n]] = True
        heads = [*earlier, a.tolist()]
        reached = accepted = produced = 0
        cur = L - 1  # the last prompt token behaves like the cycle's last token
        while produced < 4 * L:
            t = cur
            for j, h in enumerate(heads):  # head j drafts position j+1 after token index t
                reached += j == i
                if not h[t]:
                    break
                accepted += j == i
                t = (t + 1) % L
            produced += (t - cur) % L + 1
            cur = (t + 1) % L
        score = abs(accepted / reached - p) if reached else 0.0
        if score < best_score:
            best, best_score = a.tolist(), score
    return best


def _moe_ffn(spec: SynthSpec, dims: _Dims, plan: _Plan, t: _Tensors, p: str, il: int, context: float) -> None:
    """qwen35moe's FFN: a softmax router over ``n_expert`` SwiGLU experts (``n_expert_used`` per
    token) plus a shared expert scaled by sigmoid(ffn_gate_inp_shexp . x). Experts and shared
    expert write into the complement only (``context`` into the signal coordinates)."""
    s, d, sig = spec.seed, dims.d, plan.signal
    E, F, Fs = dims.n_expert, dims.n_ff_exp, dims.n_ff_shexp
    t.add(f"{p}.ffn_gate_inp.weight", _gauss(s, f"{il}.ffn_gate_inp", (E, d), 1 / math.sqrt(d)))
    t.add(f"{p}.ffn_gate_exps.weight", _gauss(s, f"{il}.ffn_gate_exps", (E, F, d), 1 / math.sqrt(d)))
    t.add(f"{p}.ffn_up_exps.weight", _gauss(s, f"{il}.ffn_up_exps", (E, F, d), 1 / math.sqrt(d)))
    down = _gauss(s, f"{il}.ffn_down_exps", (E, d, F), 2 * plan.gain / math.sqrt(F))
    down[:, sig, :] *= np.float32(context / plan.gain)
    t.add(f"{p}.ffn_down_exps.weight", down)
    t.add(f"{p}.ffn_gate_inp_shexp.weight", _gauss(s, f"{il}.ffn_gate_inp_shexp", (d,), 1 / math.sqrt(d)))
    t.add(f"{p}.ffn_gate_shexp.weight", _gauss(s, f"{il}.ffn_gate_shexp", (Fs, d), 1 / math.sqrt(d)))
    t.add(f"{p}.ffn_up_shexp.weight", _gauss(s, f"{il}.ffn_up_shexp", (Fs, d), 1 / math.sqrt(d)))
    # x2: the sigmoid gate halves the shared expert on average
    t.add(f"{p}.ffn_down_shexp.weight", _out_proj(s, f"{il}.ffn_down_shexp", d, Fs, 4 * plan.gain, sig, 4 * context))


def _hy_v3_tensors(spec: SynthSpec, dims: _Dims, plan: _Plan, t: _Tensors) -> None:
    """Dense hy_v3 (Hunyuan V3 without experts): pre-norm attention with q/k norms and a SwiGLU
    FFN per layer, then ``n_nextn`` MTP blocks blk.{n_layer + i}, each a full decoder block plus
    nextn.eh_proj / enorm / hnorm / shared_head_norm. Head i drafts position i (llama.cpp feeds
    it head i-1's output row); its eh_proj maps signal s_k -> s_{m_i(k)} with head i's own agree set."""
    s, d, sig, jit = spec.seed, dims.d, plan.signal, plan.jitter
    hd, nh, nkv = dims.head_dim, dims.n_head, dims.n_head_kv
    t.add("token_embd.weight", _embeddings(spec, dims, plan, math.sqrt(d)))
    t.add("output_norm.weight", _norm(d, s, "output_norm", jit))
    t.add("output.weight", _lm_head(dims, plan, sig, d))

    def block(il: int, context: float) -> None:
        p = f"blk.{il}"
        t.add(f"{p}.attn_norm.weight", _norm(d, s, f"{il}.attn_norm", jit))
        t.add(f"{p}.attn_q.weight", _gauss(s, f"{il}.attn_q", (nh * hd, d), 1 / math.sqrt(d)))
        t.add(f"{p}.attn_k.weight", _gauss(s, f"{il}.attn_k", (nkv * hd, d), 1 / math.sqrt(d)))
        t.add(f"{p}.attn_v.weight", _gauss(s, f"{il}.attn_v", (nkv * hd, d), 1 / math.sqrt(d)))
        t.add(f"{p}.attn_q_norm.weight", _norm(hd, s, f"{il}.q_norm", jit))
        t.add(f"{p}.attn_k_norm.weight", _norm(hd, s, f"{il}.k_norm", jit))
        t.add(f"{p}.attn_output.weight", _out_proj(s, f"{il}.attn_output", d, nh * hd, 2 * plan.gain, sig, 2 * context))
        t.add(f"{p}.ffn_norm.weight", _norm(d, s, f"{il}.ffn_norm", jit))
        t.add(f"{p}.ffn_gate.weight", _gauss(s, f"{il}.ffn_gate", (dims.n_ff, d), 1 / math.sqrt(d)))
        t.add(f"{p}.ffn_up.weight", _gauss(s, f"{il}.ffn_up", (dims.n_ff, d), 1 / math.sqrt(d)))
        t.add(f"{p}.ffn_down.weight", _out_proj(s, f"{il}.ffn_down", d, dims.n_ff, 2 * plan.gain, sig, 2 * context))

    for il in range(dims.n_layer):
        block(il, plan.context)
    for i in range(dims.n_nextn):
        il = dims.n_layer + i
        p = f"blk.{il}"
        block(il, 0.0)
        tok = np.zeros((d, d), dtype=np.float32)
        for k in range(plan.L):
            tok[sig[plan.head_mtp_index[i][k]], sig[k]] = 1.0
        tok += _complement_map(s, f"{il}.nextn.eh_proj.e", d, d, 0.5, sig, sig)
        hid = _complement_map(s, f"{il}.nextn.eh_proj.h", d, d, 0.5, sig, sig)
        t.add(f"{p}.nextn.eh_proj.weight", np.concatenate([tok, hid], axis=1))
        t.add(f"{p}.nextn.enorm.weight", _norm(d, s, f"{il}.nextn.enorm", jit))
        t.add(f"{p}.nextn.hnorm.weight", _norm(d, s, f"{il}.nextn.hnorm", jit))
        t.add(f"{p}.nextn.shared_head_norm.weight", _norm(d, s, f"{il}.nextn.shared_head_norm", jit))


def _moe_kv(w: gguf.GGUFWriter, a: str, dims: _Dims) -> None:
    w.add_uint32(f"{a}.expert_count", dims.n_expert)
    w.add_uint32(f"{a}.expert_used_count", dims.n_expert_used)
    w.add_uint32(f"{a}.expert_feed_forward_length", dims.n_ff_exp)
    w.add_uint32(f"{a}.expert_shared_feed_forward_length", dims.n_ff_shexp)


def _hy_v3_kv(w: gguf.GGUFWriter, spec: SynthSpec, dims: _Dims) -> None:
    a = "hy_v3"
    w.add_uint32(f"{a}.block_count", dims.n_layer + dims.n_nextn)
    w.add_uint32(f"{a}.context_length", spec.n_ctx)
    w.add_uint32(f"{a}.embedding_length", dims.d)
    w.add_uint32(f"{a}.feed_forward_length", dims.n_ff)
    w.add_uint32(f"{a}.expert_feed_forward_length", dims.n_ff)  # required key; no experts here
    w.add_uint32(f"{a}.attention.head_count", dims.n_head)
    w.add_uint32(f"{a}.attention.head_count_kv", dims.n_head_kv)
    w.add_uint32(f"{a}.attention.key_length", dims.head_dim)
    w.add_uint32(f"{a}.attention.value_length", dims.head_dim)
    w.add_uint32(f"{a}.rope.dimension_count", dims.head_dim)
    w.add_float32(f"{a}.rope.freq_base", 10_000.0)
    w.add_float32(f"{a}.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_uint32(f"{a}.nextn_predict_layers", dims.n_nextn)


# --------------------------------------------------------------------------------------------
# metadata


def _general(w: gguf.GGUFWriter, spec: SynthSpec, t: _Tensors, name: str) -> None:
    w.add_string("general.type", "model")
    w.add_string("general.name", name)
    w.add_string("general.description",
                 f"mtprun synthetic model: arch={spec.arch} mode={spec.mode} agree={spec.agree:g} seed={spec.seed}")
    w.add_uint32("general.file_type", t.file_type)
    w.add_uint32("general.quantization_version", gguf.GGML_QUANT_VERSION)


def _default_name(spec: SynthSpec) -> str:
    return spec.name or f"mtprun-synth-{spec.arch}-{spec.mode}"


def _qwen35_kv(w: gguf.GGUFWriter, spec: SynthSpec, dims: _Dims, a: str = "qwen35") -> None:
    n_all = dims.n_layer + 1
    w.add_uint32(f"{a}.block_count", n_all)
    w.add_uint32(f"{a}.context_length", spec.n_ctx)
    w.add_uint32(f"{a}.embedding_length", dims.d)
    if dims.n_expert:
        _moe_kv(w, a, dims)
    else:
        w.add_uint32(f"{a}.feed_forward_length", dims.n_ff)
    w.add_uint32(f"{a}.attention.head_count", dims.n_head)
    w.add_uint32(f"{a}.attention.head_count_kv", dims.n_head_kv)
    w.add_uint32(f"{a}.attention.key_length", dims.head_dim)
    w.add_uint32(f"{a}.attention.value_length", dims.head_dim)
    w.add_float32(f"{a}.rope.freq_base", 10_000_000.0)
    w.add_float32(f"{a}.attention.layer_norm_rms_epsilon", 1e-6)
    n_rot = dims.head_dim // 4  # partial_rotary_factor 0.25
    t_h = round(n_rot / 2 * 11 / 32)  # Qwen3.5's mrope_section [11, 11, 10] at n_rot 64, scaled
    w.add_array(f"{a}.rope.dimension_sections", [t_h, t_h, n_rot // 2 - 2 * t_h, 0])
    w.add_uint32(f"{a}.rope.dimension_count", n_rot)
    w.add_uint32(f"{a}.ssm.conv_kernel", dims.ssm_conv)
    w.add_uint32(f"{a}.ssm.state_size", dims.ssm_d_state)
    w.add_uint32(f"{a}.ssm.group_count", dims.ssm_n_group)
    w.add_uint32(f"{a}.ssm.time_step_rank", dims.ssm_dt_rank)
    w.add_uint32(f"{a}.ssm.inner_size", dims.ssm_d_state * dims.ssm_dt_rank)
    recurrent = [(i + 1) % dims.full_attn_interval != 0 for i in range(dims.n_layer)] + [False]
    w.add_array(f"{a}.attention.recurrent_layers", recurrent)
    w.add_uint32(f"{a}.full_attention_interval", dims.full_attn_interval)
    w.add_uint32(f"{a}.nextn_predict_layers", 1)


def _gemma4_common_kv(w: gguf.GGUFWriter, a: str, spec: SynthSpec, dims: _Dims, n_layer: int, swa: list[bool]) -> None:
    w.add_uint32(f"{a}.block_count", n_layer)
    w.add_uint32(f"{a}.context_length", spec.n_ctx)
    w.add_uint32(f"{a}.attention.key_length", dims.head_dim_full)
    w.add_uint32(f"{a}.attention.value_length", dims.head_dim_full)
    w.add_uint32(f"{a}.attention.key_length_swa", dims.head_dim)
    w.add_uint32(f"{a}.attention.value_length_swa", dims.head_dim)
    w.add_float32(f"{a}.rope.freq_base", 1_000_000.0)
    w.add_float32(f"{a}.rope.freq_base_swa", 10_000.0)
    w.add_uint32(f"{a}.rope.dimension_count", dims.head_dim_full)
    w.add_uint32(f"{a}.rope.dimension_count_swa", dims.head_dim)
    w.add_float32(f"{a}.attention.layer_norm_rms_epsilon", 1e-6)
    w.add_uint32(f"{a}.attention.sliding_window", dims.n_swa)
    w.add_array(f"{a}.attention.sliding_window_pattern", swa)
    w.add_array(f"{a}.attention.head_count_kv", [dims.n_head_kv if x else dims.n_head_kv_full for x in swa])
    w.add_uint32(f"{a}.attention.shared_kv_layers", 0)
    w.add_uint32(f"{a}.embedding_length_per_layer_input", 0)


def _gemma4_target_kv(w: gguf.GGUFWriter, spec: SynthSpec, dims: _Dims) -> None:
    a = "gemma4"
    swa = [_gemma4_layer_is_swa(i, dims.n_layer) for i in range(dims.n_layer)]
    _gemma4_common_kv(w, a, spec, dims, dims.n_layer, swa)
    w.add_uint32(f"{a}.embedding_length", dims.d)
    w.add_uint32(f"{a}.feed_forward_length", dims.n_ff)
    w.add_uint32(f"{a}.attention.head_count", dims.n_head)
    w.add_float32(f"{a}.final_logit_softcapping", 30.0)


def _gemma4_draft_kv(w: gguf.GGUFWriter, spec: SynthSpec, dims: _Dims) -> None:
    a = "gemma4-assistant"
    swa = [i != dims.draft_n_layer - 1 for i in range(dims.draft_n_layer)]
    _gemma4_common_kv(w, a, spec, dims, dims.draft_n_layer, swa)
    w.add_uint32(f"{a}.embedding_length", dims.draft_d)
    w.add_uint32(f"{a}.embedding_length_out", dims.d)
    w.add_uint32(f"{a}.feed_forward_length", dims.draft_n_ff)
    w.add_uint32(f"{a}.attention.head_count", dims.draft_n_head)
    w.add_uint32(f"{a}.nextn_predict_layers", dims.draft_n_layer)


# --------------------------------------------------------------------------------------------
# writing


def _write_gguf(path: Path, arch: str, kv: Any, vocab: _Vocab, tensors: _Tensors) -> int:
    """Write one GGUF file at ``path`` (a fresh temp file); returns its tensor-data bytes."""
    w = gguf.GGUFWriter(path, arch)
    try:
        kv(w, tensors)
        vocab.write(w)
        n = tensors.write(w)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()
    return n


def _check_out(out: str | os.PathLike[str]) -> Path:
    try:
        p = Path(os.fspath(out))
    except TypeError:
        raise InvalidInputError(f"output path must be a path, got {out!r}") from None
    if not p.name or p.name in (".", ".."):
        raise InvalidInputError(f"output path must name a file: {str(p)!r}")
    if p.is_dir():
        raise InvalidInputError(f"output path is a directory: {p}")
    if not p.parent.is_dir():
        raise InvalidInputError(f"output directory does not exist: {p.parent}")
    return p


def _build(spec: SynthSpec, dims: _Dims, plan: _Plan) -> list[tuple[bool, str, _Tensors]]:
    """The tensors of each file to write, in order: [(is_drafter, arch, tensors)]."""
    tgt = _Tensors(spec.dtype)
    if spec.arch in ("qwen35", "qwen35moe"):
        _qwen35_tensors(spec, dims, plan, tgt)
        return [(False, spec.arch, tgt)]
    if spec.arch == "hy_v3":
        _hy_v3_tensors(spec, dims, plan, tgt)
        return [(False, "hy_v3", tgt)]
    dft = _Tensors(spec.dtype)
    _gemma4_draft_tensors(spec, dims, plan, dft)
    _gemma4_target_tensors(spec, dims, plan, tgt)
    return [(True, "gemma4-assistant", dft), (False, "gemma4", tgt)]


def weight_bytes(spec: SynthSpec) -> int:
    """Tensor data bytes ``write_model(spec, ...)`` would write (all files), without writing;
    for a ``quant`` spec, those of the f16/f32 files it quantizes."""
    dims = _spec_dims(spec)
    plan = _plan(spec, dims, _vocab(spec.arch, dims.n_vocab))
    token = _DRY_RUN.set(True)
    try:
        return sum(t.nbytes() for _, _, t in _build(spec, dims, plan))
    finally:
        _DRY_RUN.reset(token)


def _new_temp(final: Path) -> Path:
    """A new empty file next to ``final`` (mode 0666 & ~umask, like a plain open())."""
    for _ in range(100):
        tmp = final.with_name(f".{final.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        except OSError as exc:
            raise InvalidInputError(f"cannot write to {final.parent}: {exc.strerror}") from None
        return tmp
    raise InvalidInputError(f"cannot create a temporary file in {final.parent}")


def write_model(spec: SynthSpec, out: str | os.PathLike[str]) -> SynthResult:
    """Validate ``spec``, then write the model to ``out`` (and, for gemma4, ``mtp-<name>`` beside it).

    Files appear atomically (temp file in the same folder, then ``os.replace``); on bad input
    nothing is written and ``InvalidInputError`` says why in one line.
    """
    t0 = time.perf_counter()
    if not isinstance(spec, SynthSpec):
        raise InvalidInputError(f"spec must be a SynthSpec, got {type(spec).__name__}")
    dims = _spec_dims(spec)
    path = _check_out(out)
    draft_path = draft_path_for(path) if spec.arch == "gemma4" else None

    vocab = _vocab(spec.arch, dims.n_vocab)
    plan = _plan(spec, dims, vocab)
    name = _default_name(spec)
    if spec.quant:
        _check_quant_rows(spec, dims, plan)

    kv_writers = {
        "qwen35": lambda w, t: (_general(w, spec, t, name), _qwen35_kv(w, spec, dims)),
        "qwen35moe": lambda w, t: (_general(w, spec, t, name), _qwen35_kv(w, spec, dims, "qwen35moe")),
        "hy_v3": lambda w, t: (_general(w, spec, t, name), _hy_v3_kv(w, spec, dims)),
        "gemma4": lambda w, t: (_general(w, spec, t, name), _gemma4_target_kv(w, spec, dims)),
        "gemma4-assistant": lambda w, t: (_general(w, spec, t, f"{name}-assistant"), _gemma4_draft_kv(w, spec, dims)),
    }
    # for gemma4 the drafter comes first: a complete target then always has its sidecar
    jobs = [(draft_path if is_drafter else path, arch, kv_writers[arch], tensors)
            for is_drafter, arch, tensors in _build(spec, dims, plan)]

    temps: list[tuple[Path, Path]] = []
    n_weight_bytes = 0
    try:
        for final, arch, kv, tensors in jobs:
            tmp = _new_temp(final)
            temps.append((tmp, final))
            n_weight_bytes += _write_gguf(tmp, arch, kv, vocab, tensors)
        if spec.quant:
            n_weight_bytes = _quantize_files(temps, spec.quant)
        for tmp, final in temps:
            os.replace(tmp, final)
    finally:
        for tmp, _ in temps:
            if tmp.exists():
                tmp.unlink()

    extra: dict[str, Any] = {}
    if spec.mode == "oracle":
        L = plan.L
        succ = {i: plan.ring[(int(plan.alias[i]) + 1) % L] for i in range(dims.n_vocab)}
        mtp = {i: plan.ring[(plan.mtp_index[int(plan.alias[i])] + 1) % L] for i in range(dims.n_vocab)}
        agree = frozenset(c for k, c in enumerate(plan.ring) if plan.agree[k])
        words = _Vocab.cycle_words()[: L - int(spec.end_with_eos)]
        extra = dict(
            cycle=tuple(plan.ring),
            cycle_text="".join(words) if len(words) == L - int(spec.end_with_eos) else _ring_text(vocab, plan.ring),
            successor=MappingProxyType(succ),
            mtp_prediction=MappingProxyType(mtp),
            agree_tokens=agree,
            expected_acceptance=len(agree) / L,
            top_logit=ORACLE_TOP_LOGIT,
            agree_positions=tuple(plan.agree),
        )
        if dims.n_nextn > 1:
            extra["head_predictions"] = tuple(
                MappingProxyType({i: plan.ring[(m[int(plan.alias[i])] + 1) % L] for i in range(dims.n_vocab)})
                for m in plan.head_mtp_index)
            extra["head_expected_acceptance"] = tuple(sum(a) / L for a in plan.head_agree)
    return SynthResult(
        spec=spec,
        model_path=path,
        draft_path=draft_path,
        model_bytes=path.stat().st_size,
        draft_bytes=draft_path.stat().st_size if draft_path else 0,
        weight_bytes=n_weight_bytes,
        seconds=time.perf_counter() - t0,
        n_vocab=dims.n_vocab,
        bos_id=vocab.bos_id,
        eos_id=vocab.eos_id,
        eog_ids=vocab.eog_ids,
        add_bos=vocab.spm,
        **extra,
    )


# --------------------------------------------------------------------------------------------
# quantized models and phase-changing agreement (SynthSpec.quant, SynthSpec.agree_phases)

# llama.cpp's llama_ftype for each quantization name (include/llama.h), and the block size its
# main tensor type needs along a row (K-quants: 256 values, the rest: 32).
QUANTS: Mapping[str, tuple[int, int]] = MappingProxyType({
    "Q4_0": (2, 32), "Q4_1": (3, 32), "Q8_0": (7, 32), "Q5_0": (8, 32), "Q5_1": (9, 32),
    "Q2_K": (10, 256), "Q3_K_S": (11, 256), "Q3_K_M": (12, 256), "Q3_K_L": (13, 256),
    "Q4_K_S": (14, 256), "Q4_K_M": (15, 256), "Q5_K_S": (16, 256), "Q5_K_M": (17, 256), "Q6_K": (18, 256),
})
_MAX_PHASES = 64


def parse_agree_phases(text: str) -> tuple[tuple[int, float], ...]:
    """``"40:0.95,40:0.2"`` -> ``((40, 0.95), (40, 0.2))`` (InvalidInputError on bad text)."""
    out = []
    for part in str(text).split(","):
        length, sep, agree = part.strip().partition(":")
        try:
            if not sep:
                raise ValueError
            out.append((int(length), float(agree)))
        except ValueError:
            raise InvalidInputError(f"agree phases must look like LENGTH:AGREE,LENGTH:AGREE (e.g. 40:0.95,40:0.2), got {text!r}") from None
    return tuple(out)


def cycle_length(spec: SynthSpec) -> int:
    """How many tokens the spec's ring has: an oracle's cycle (the passage, grown to whole
    repetitions of ``agree_phases``), a random model's ring."""
    return _spec_dims(spec).cycle_len


def _phases_text(phases: tuple[tuple[int, float], ...]) -> str:
    return ",".join(f"{n}:{p:g}" for n, p in phases)


def _spec_dims(spec: SynthSpec) -> _Dims:
    """``_dims`` plus the checks of ``quant`` and ``agree_phases``; with phases, an oracle's cycle
    grows (filler words after the passage) to a whole number of phase repetitions."""
    dims = _dims(spec)
    bad = InvalidInputError
    if spec.quant is not None:
        if spec.quant not in QUANTS:
            raise bad(f"unknown quant {spec.quant!r} (choose from {', '.join(QUANTS)})")
        if spec.dtype not in ("f16", "f32"):
            raise bad(f"quant needs f16 or f32 weights to quantize from, got dtype {spec.dtype!r}")
    if spec.agree_phases is None:
        return dims
    phases = spec.agree_phases
    if not isinstance(phases, tuple) or not 1 <= len(phases) <= _MAX_PHASES or not all(
        isinstance(ph, tuple) and len(ph) == 2 for ph in phases
    ):
        raise bad(f"agree_phases must be a tuple of 1..{_MAX_PHASES} (length, agree) pairs, got {phases!r}")
    for n, p in phases:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 100_000:
            raise bad(f"agree phase lengths must be integers in [1, 100000], got {n!r}")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not (math.isfinite(p) and 0.0 <= p <= 1.0):
            raise bad(f"agree phase values must be numbers in [0, 1], got {p!r}")
    if spec.end_with_eos:
        raise bad("end_with_eos and agree_phases cannot be combined")
    if spec.mode != "oracle":
        return dims  # the random ring is as long as the model allows; the phases repeat along it
    period = sum(n for n, _ in phases)
    L = -(-dims.cycle_len // period) * period
    room = min(dims.d, dims.draft_d or dims.d)
    room -= room // 4
    if L > room:
        raise bad(f"agree phases repeat every {period} tokens: the cycle needs {L} tokens, "
                  f"but n_embd={spec.n_embd} allows at most {room}")
    spare = len(_filler_ids(_vocab(spec.arch, dims.n_vocab)))
    if L - dims.cycle_len > spare:
        raise bad(f"agree phases need {L - dims.cycle_len} filler tokens, n_vocab={dims.n_vocab} has {spare}")
    return replace(dims, cycle_len=L)


def _filler_ids(vocab: _Vocab) -> list[int]:
    """Ordinary tokens outside the passage, in vocabulary order from the end (the filler words)."""
    passage = set(vocab.cycle_ids())
    return [i for i in reversed(vocab.ordinary_ids()) if i not in passage]


def _extend_ring(ring: list[int], vocab: _Vocab, L: int) -> list[int]:
    return ring + _filler_ids(vocab)[: L - len(ring)]


def _ring_text(vocab: _Vocab, ring: list[int]) -> str:
    """What the ring's tokens detokenize to (passage words and filler words)."""
    if vocab.spm:
        return "".join(vocab.tokens[i].replace(vocab.space, " ") for i in ring)
    inverse = {c: b for b, c in _BYTE_CHARS.items()}
    return b"".join(bytes(inverse[c] for c in vocab.tokens[i]) for i in ring).decode("utf-8", errors="replace")


def _phase_agree_set(seed: int, L: int, phases: tuple[tuple[int, float], ...]) -> list[bool]:
    """The agree set laid out in stretches: the phases repeated from ring position 0 (the last
    stretch cut at L), each stretch with round(p n) agreeing positions spread as ``_agree_set``."""
    out: list[bool] = []
    j = 0
    while len(out) < L:
        n, p = phases[j % len(phases)]
        n = min(n, L - len(out))
        out += _agree_set((seed + 1_000_003 * (j + 1)) % 2**63, n, float(p))
        j += 1
    return out


def _check_quant_rows(spec: SynthSpec, dims: _Dims, plan: _Plan) -> None:
    """llama.cpp quantizes rows in blocks (32 values, 256 for K-quants) and silently falls back
    to another type for a tensor whose rows do not fit; refuse such a spec instead (one line)."""
    assert spec.quant is not None
    block = QUANTS[spec.quant][1]
    token = _DRY_RUN.set(True)
    try:
        rule = _Tensors("f16")  # what stays f32 is what llama.cpp's quantizer leaves alone too
        for is_drafter, _, tensors in _build(spec, dims, plan):
            for name, arr in tensors.items:
                if rule.storage(name, arr) != "f32" and arr.shape[-1] % block:
                    where = "drafter " if is_drafter else ""
                    raise InvalidInputError(
                        f"{spec.quant} quantizes rows in blocks of {block}: {where}{name} has rows of "
                        f"{arr.shape[-1]} (choose n_embd, n_ff and draft_n_embd as multiples of {block})")
    finally:
        _DRY_RUN.reset(token)


# Runs in a child process: llama.cpp's quantizer logs to stderr through a process-wide logger
# (which mtprun's engine also sets), and a crash must not take the caller with it.
_QUANTIZE_SCRIPT = """
import ctypes, sys
import llama_cpp
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = int(sys.argv[3])
p.nthread = int(sys.argv[4])
sys.exit(0 if llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)) == 0 else 3)
"""


def _quantize_files(temps: list[tuple[Path, Path]], quant: str) -> int:
    """Quantize every written temp file (target and gemma4 drafter alike) in place with llama.cpp's
    ``llama_model_quantize`` (llama-cpp-python's ctypes API, default parameters); returns the
    tensor-data bytes of the quantized files."""
    total = 0
    for i, (tmp, final) in enumerate(temps):
        qtmp = _new_temp(final)
        try:
            proc = subprocess.run(
                [sys.executable, "-c", _QUANTIZE_SCRIPT, os.fspath(tmp), os.fspath(qtmp),
                 str(QUANTS[quant][0]), str(os.cpu_count() or 1)],
                capture_output=True, text=True, errors="replace",
            )
            if proc.returncode != 0:
                if "No module named 'llama_cpp'" in proc.stderr:
                    raise InvalidInputError("quantizing needs llama-cpp-python (pip install llama-cpp-python)")
                lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
                raise InvalidInputError(f"llama.cpp's quantizer failed on {final.name}: {lines[-1] if lines else proc.returncode}")
            os.replace(qtmp, tmp)
        finally:
            if qtmp.exists():
                qtmp.unlink()
        total += sum(int(t.n_bytes) for t in gguf.GGUFReader(tmp).tensors)
        temps[i] = (tmp, final)
    return total


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"
