"""Is a GGUF file's metadata something llama.cpp can run? Checked before llama.cpp sees the file.

llama.cpp (0c1e570) reads the hyperparameters of a model with few checks: some impossible values
stop it with an exception (a clean error), but many end in ``GGML_ASSERT`` (the process aborts),
an integer division by zero (SIGFPE), a read past a tensor, or a graph that never finishes.
GGUF files come from the network, so :func:`validate_header` checks every hyperparameter the
pinned llama.cpp reads and asserts on for the architectures mtprun runs, table-driven:

- ``GENERIC``: rules every architecture's keys follow (``<arch>.block_count``, heads, head sizes,
  rope, experts, norms, ...): type, range, per-layer array length, divisibility;
- ``ARCH_RULES``: extra keys and cross-field rules per architecture (qwen35 / qwen35moe gated delta
  net sizes and rope sections; gemma4 / gemma4-assistant sliding-window layout and shared KV
  layers; hunyuan / hy_v3 experts);
- tokenizer rules: the tokenizer model is one llama.cpp knows and the one the architecture uses,
  arrays agree in length, every special-token id lies inside the vocabulary.

The header is read by :func:`mtprun.gguf_info.read_gguf_info` (bounded, no tensor data). Problems
raise :class:`~mtprun.errors.ModelError` with one line naming the file, the key, its value and the
rule. Used by ``Engine.__init__`` (target and drafter) and so by every CLI command.

What this cannot check: tensor shapes against the hyperparameters (llama.cpp checks those itself
and fails cleanly), tensor *values* (NaN weights give garbage, not a crash), and architectures
other than those in ``ARCH_RULES`` beyond the generic rules.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelError
from .gguf_info import GgufInfo, read_gguf_info

__all__ = ["validate_header", "validate_file", "ARCH_RULES", "GENERIC", "MIN_CONTEXT"]

LLAMA_MAX_LAYERS = 512
LLAMA_MAX_EXPERTS = 1024
MAX_EMBD = 1 << 20  # hidden sizes; the largest real models use < 32k
MAX_FF = 1 << 22
MAX_HEADS = 4096
MAX_HEAD_DIM = 4096
MAX_CTX_TRAIN = 1 << 27
MAX_VOCAB = 1 << 22
MIN_CONTEXT = 256  # smallest context mtprun asks for (llama.cpp rounds up to a multiple of 256 anyway)

# tokenizer models llama.cpp's vocabulary loader knows (llama-vocab.cpp, load)
TOKENIZER_MODELS = frozenset({"llama", "bert", "gpt2", "t5", "rwkv", "plamo2", "gemma4", "hybriddna", "whitespace"})
# architectures whose tokenizer is known: anything else on them is refused
ARCH_TOKENIZER = {
    "qwen35": {"gpt2"}, "qwen35moe": {"gpt2"}, "qwen3": {"gpt2"}, "qwen3moe": {"gpt2"}, "qwen2": {"gpt2"},
    "gemma4": {"gemma4"}, "gemma4-assistant": {"gemma4"}, "gemma3": {"llama"}, "gemma2": {"llama"},
}
ROPE_SCALING_TYPES = frozenset({"none", "linear", "yarn", "longrope"})

UINT, FLOAT, BOOL, STR = "uint", "float", "bool", "str"


@dataclass(frozen=True)
class Rule:
    """One key ``<arch>.<suffix>``: its type, its range, whether it may (``layered``) or must
    (``array``) be a per-layer array of ``block_count`` entries."""

    suffix: str
    kind: str = UINT
    lo: float = 0
    hi: float = 1 << 31
    required: bool = False
    layered: bool = False  # a number or an array of one number per layer
    array: bool = False  # must be an array (of ``kind``) of one entry per layer
    why: str = ""


# every architecture: what load_hparams (llama-model.cpp) and llama-graph.cpp read
GENERIC: tuple[Rule, ...] = (
    Rule("block_count", lo=1, hi=LLAMA_MAX_LAYERS, required=True),
    Rule("context_length", lo=1, hi=MAX_CTX_TRAIN, required=True),
    Rule("embedding_length", lo=1, hi=MAX_EMBD, required=True),
    Rule("embedding_length_out", lo=1, hi=MAX_EMBD),
    Rule("feed_forward_length", lo=0, hi=MAX_FF, layered=True),
    Rule("attention.head_count", lo=0, hi=MAX_HEADS, layered=True),
    Rule("attention.head_count_kv", lo=0, hi=MAX_HEADS, layered=True),
    Rule("attention.key_length", lo=1, hi=MAX_HEAD_DIM),
    Rule("attention.value_length", lo=1, hi=MAX_HEAD_DIM),
    Rule("attention.key_length_swa", lo=1, hi=MAX_HEAD_DIM),
    Rule("attention.value_length_swa", lo=1, hi=MAX_HEAD_DIM),
    Rule("attention.sliding_window", lo=1, hi=MAX_CTX_TRAIN),
    Rule("attention.layer_norm_rms_epsilon", FLOAT, lo=1e-30, hi=1.0),
    Rule("attention.layer_norm_epsilon", FLOAT, lo=1e-30, hi=1.0),
    Rule("attention.causal", BOOL),
    Rule("rope.dimension_count", lo=2, hi=MAX_HEAD_DIM),
    Rule("rope.dimension_count_swa", lo=2, hi=MAX_HEAD_DIM),
    Rule("rope.freq_base", FLOAT, lo=1e-6, hi=1e30),
    Rule("rope.freq_base_swa", FLOAT, lo=1e-6, hi=1e30),
    Rule("rope.scaling.factor", FLOAT, lo=0, hi=1e6),
    Rule("rope.scale_linear", FLOAT, lo=0, hi=1e6),
    Rule("rope.scaling.attn_factor", FLOAT, lo=0, hi=1e6),
    Rule("rope.scaling.original_context_length", lo=0, hi=MAX_CTX_TRAIN),
    Rule("rope.scaling.type", STR),
    Rule("nextn_predict_layers", lo=0, hi=LLAMA_MAX_LAYERS),
    Rule("expert_count", lo=0, hi=LLAMA_MAX_EXPERTS),
    Rule("expert_used_count", lo=0, hi=LLAMA_MAX_EXPERTS, layered=True),
    Rule("expert_group_count", lo=0, hi=LLAMA_MAX_EXPERTS),
    Rule("expert_group_used_count", lo=0, hi=LLAMA_MAX_EXPERTS),
    Rule("expert_feed_forward_length", lo=0, hi=MAX_FF, layered=True),
    Rule("expert_shared_feed_forward_length", lo=0, hi=MAX_FF),
    Rule("expert_shared_count", lo=0, hi=LLAMA_MAX_EXPERTS),
    Rule("expert_weights_scale", FLOAT, lo=0, hi=1e6),
    Rule("final_logit_softcapping", FLOAT, lo=0, hi=1e6),
    Rule("attn_logit_softcapping", FLOAT, lo=0, hi=1e6),
    Rule("full_attention_interval", lo=1, hi=LLAMA_MAX_LAYERS),
    Rule("vocab_size", lo=1, hi=MAX_VOCAB),
)

_QWEN35 = (
    Rule("attention.layer_norm_rms_epsilon", FLOAT, lo=1e-30, hi=1.0, required=True),
    Rule("rope.dimension_sections", lo=0, hi=MAX_HEAD_DIM, required=True),  # array of 4, checked below
    Rule("ssm.conv_kernel", lo=1, hi=64, required=True),
    Rule("ssm.inner_size", lo=1, hi=MAX_FF, required=True),
    Rule("ssm.state_size", lo=1, hi=1024, required=True),
    Rule("ssm.time_step_rank", lo=1, hi=MAX_HEADS, required=True),
    Rule("ssm.group_count", lo=1, hi=MAX_HEADS, required=True),
    Rule("attention.recurrent_layers", BOOL, array=True),
    Rule("attention.head_count", lo=1, hi=MAX_HEADS, required=True, layered=True),
    Rule("attention.head_count_kv", lo=1, hi=MAX_HEADS, layered=True),
)
_GEMMA4 = (
    Rule("attention.sliding_window_pattern", BOOL, array=True, required=True),
    Rule("attention.shared_kv_layers", lo=0, hi=LLAMA_MAX_LAYERS),
    Rule("attention.sliding_window", lo=1, hi=MAX_CTX_TRAIN, required=True),
    Rule("attention.layer_norm_rms_epsilon", FLOAT, lo=1e-30, hi=1.0, required=True),
    Rule("embedding_length_per_layer_input", lo=0, hi=MAX_EMBD, required=True),
    Rule("attention.key_length_swa", lo=1, hi=MAX_HEAD_DIM, required=True),
    Rule("attention.value_length_swa", lo=1, hi=MAX_HEAD_DIM, required=True),
    Rule("attention.head_count", lo=1, hi=MAX_HEADS, required=True, layered=True),
    Rule("attention.head_count_kv", lo=1, hi=MAX_HEADS, layered=True),
)
_HY = (
    Rule("expert_feed_forward_length", lo=1, hi=MAX_FF, layered=True),
    Rule("expert_gating_func", lo=0, hi=3),
    Rule("attention.head_count", lo=1, hi=MAX_HEADS, required=True, layered=True),
    Rule("attention.head_count_kv", lo=1, hi=MAX_HEADS, layered=True),
)


class _Problems(list):
    def add(self, key: str, value: object, why: str) -> None:
        self.append(f"{key} = {_show(value)} ({why})")


def _show(value: object) -> str:
    if isinstance(value, tuple) and len(value) > 8:
        return f"[{', '.join(map(str, value[:6]))}, ... {len(value)} entries]"
    if isinstance(value, tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    if isinstance(value, str):
        return repr(value[:40])
    return str(value)


class _Header:
    """Typed access to a header's keys; type mismatches are recorded as problems."""

    def __init__(self, info: GgufInfo, problems: _Problems) -> None:
        self.info, self.p = info, problems
        self.arch = info.architecture or ""

    def key(self, suffix: str) -> str:
        return f"{self.arch}.{suffix}"

    def has(self, suffix: str) -> bool:
        k = self.key(suffix)
        return k in self.info.scalars or k in self.info.arrays

    def raw(self, key: str):
        if key in self.info.scalars:
            return self.info.scalars[key]
        if key in self.info.array_values:
            return self.info.array_values[key]
        if key in self.info.arrays:
            return self.info.arrays[key]
        return None


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_number(p: _Problems, key: str, v: object, rule: Rule) -> float | None:
    if rule.kind == UINT:
        if not _is_int(v):
            p.add(key, v, f"an integer was expected, got {_type(v)}")
            return None
    elif rule.kind == FLOAT:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            p.add(key, v, f"a number was expected, got {_type(v)}")
            return None
        if not math.isfinite(v):
            p.add(key, v, "not a finite number")
            return None
    elif rule.kind == BOOL:
        if not isinstance(v, bool):
            p.add(key, v, f"true or false was expected, got {_type(v)}")
        return None
    elif rule.kind == STR:
        if not isinstance(v, str):
            p.add(key, v, f"a string was expected, got {_type(v)}")
        return None
    if not rule.lo <= v <= rule.hi:
        p.add(key, v, f"must be within {_num(rule.lo)}..{_num(rule.hi)}" + (f": {rule.why}" if rule.why else ""))
        return None
    return v


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


def _type(v: object) -> str:
    if isinstance(v, bool):
        return "a bool"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, float):
        return "a float"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], int):
        return f"an array of {v[1]} {v[0]}"
    return "an array"


def _apply(h: _Header, rules: Sequence[Rule], n_layer: int | None) -> dict[str, object]:
    """Check the rules; returns the values that passed (per-layer values as tuples)."""
    p = h.p
    values: dict[str, object] = {}
    for rule in rules:
        key = h.key(rule.suffix)
        v = h.raw(key)
        if v is None:
            if rule.required:
                p.add(key, "missing", "required by llama.cpp for this architecture")
            values.pop(rule.suffix, None)
            continue
        if key in h.info.arrays:
            if not (rule.layered or rule.array or rule.suffix == "rope.dimension_sections"):
                p.add(key, h.info.arrays[key], "a single value was expected, not an array")
                continue
            if key not in h.info.array_values:
                p.add(key, h.info.arrays[key], "an array of numbers was expected")
                continue
            items = h.info.array_values[key]
            if rule.suffix != "rope.dimension_sections" and n_layer is not None and len(items) != n_layer:
                p.add(key, items, f"needs one entry per layer, {n_layer} (block_count)")
                continue
            ok = True
            if rule.kind == BOOL and any(not isinstance(x, bool) for x in items):
                # llama.cpp reads int32 arrays as flags too: only 0/1 make sense
                if any((not _is_int(x)) or x not in (0, 1) for x in items):
                    p.add(key, items, "flags (true/false) were expected")
                    ok = False
            elif rule.kind != BOOL:
                for x in items:
                    if _check_number(p, key, x, rule) is None:
                        ok = False
                        break
            if ok:
                values[rule.suffix] = tuple(items)
            continue
        if rule.array:
            p.add(key, v, "a per-layer array was expected")
            continue
        if rule.kind in (BOOL, STR):
            _check_number(p, key, v, rule)
            values[rule.suffix] = v
            continue
        good = _check_number(p, key, v, rule)
        if good is not None:
            values[rule.suffix] = good
    return values


def _per_layer(values: dict, suffix: str, n_layer: int, default) -> tuple | None:
    v = values.get(suffix, default)
    if v is None:
        return None
    return tuple(v) if isinstance(v, tuple) else (v,) * n_layer


def _generic_cross(h: _Header, v: dict, n_layer: int, role: str) -> None:
    p, k = h.p, h.key
    n_embd = v.get("embedding_length")
    nextn = v.get("nextn_predict_layers", 0)
    if _is_int(nextn):
        limit = n_layer if role == "drafter" or h.arch == "gemma4-assistant" else n_layer - 1
        if nextn > limit:
            p.add(k("nextn_predict_layers"), nextn, f"must be at most {limit} of the {n_layer} layers")
    # heads: grouped-query attention needs n_head % n_head_kv == 0 (llama-graph.cpp divides)
    heads = _per_layer(v, "attention.head_count", n_layer, None)
    kv = _per_layer(v, "attention.head_count_kv", n_layer, heads)
    if heads and kv:
        for il, (nh, nkv) in enumerate(zip(heads, kv)):
            if nh and not nkv:
                p.add(k("attention.head_count_kv"), kv if len(set(kv)) > 1 else nkv, f"layer {il} has {nh} query heads but no KV head")
                break
            if nh and nkv and (nkv > nh or nh % nkv):
                p.add(k("attention.head_count_kv"), kv if len(set(kv)) > 1 else nkv, f"layer {il}: {nh} query heads cannot share {nkv} KV heads")
                break
    n_head0 = next((x for x in (heads or ()) if x), 0)
    head_k = v.get("attention.key_length")
    head_v = v.get("attention.value_length")
    if n_head0 and n_embd and head_k is None:
        if n_embd % n_head0:
            p.add(k("embedding_length"), n_embd, f"not a multiple of the {n_head0} heads (and no attention.key_length)")
        head_k = n_embd // n_head0 or None
    if n_head0 and n_embd and head_v is None:
        head_v = n_embd // n_head0 or None
    # the rotated dimensions, with llama.cpp's defaults (n_rot = head size; the sliding-window
    # layers' n_rot = n_rot): a default can be wrong when another key is missing or renamed
    rot = v.get("rope.dimension_count", head_k)
    rot_key = k("rope.dimension_count") + ("" if h.has("rope.dimension_count") else " (default: the head size)")
    if rot is not None:
        if rot % 2:
            p.add(rot_key, rot, "must be even")
        elif head_k and rot > head_k:
            p.add(rot_key, rot, f"larger than the head size {head_k}")
    uses_swa = h.has("attention.sliding_window_pattern") or h.has("attention.key_length_swa") or h.has("rope.dimension_count_swa")
    head_k_swa = v.get("attention.key_length_swa", head_k)
    rot_swa = v.get("rope.dimension_count_swa", rot)
    rot_swa_key = k("rope.dimension_count_swa") + ("" if h.has("rope.dimension_count_swa") else " (default: rope.dimension_count)")
    if uses_swa and rot_swa is not None:
        if rot_swa % 2:
            p.add(rot_swa_key, rot_swa, "must be even")
        elif head_k_swa and rot_swa > head_k_swa:
            p.add(rot_swa_key, rot_swa, f"larger than the sliding-window head size {head_k_swa}")
    scaling = v.get("rope.scaling.type")
    if isinstance(scaling, str) and scaling not in ROPE_SCALING_TYPES:
        p.add(k("rope.scaling.type"), scaling, f"not one of {', '.join(sorted(ROPE_SCALING_TYPES))}")
    # experts (load_hparams asserts)
    n_expert = v.get("expert_count", 0) or 0
    used = _per_layer(v, "expert_used_count", n_layer, 0) or (0,)
    used_max = max(used)
    groups = v.get("expert_group_count", 0) or 0
    if n_expert:
        if used_max == 0:
            p.add(k("expert_used_count"), used_max if not h.has("expert_used_count") else v.get("expert_used_count", 0),
                  f"a model with {n_expert} experts must route to at least one")
        elif used_max > n_expert:
            p.add(k("expert_used_count"), used_max, f"more than the {n_expert} experts")
        if groups >= n_expert and groups:
            p.add(k("expert_group_count"), groups, f"must be fewer than the {n_expert} experts")
        elif groups > 1:
            g_used = v.get("expert_group_used_count", 0) or 0
            if n_expert % groups:
                p.add(k("expert_group_count"), groups, f"does not divide the {n_expert} experts")
            if not 0 < g_used < groups:
                p.add(k("expert_group_used_count"), g_used, f"must be within 1..{groups - 1}")
    else:
        if used_max:
            p.add(k("expert_used_count"), used_max, "set, but the model has no experts (expert_count)")
        if groups:
            p.add(k("expert_group_count"), groups, "set, but the model has no experts (expert_count)")
    for suffix in ("attention.key_length", "attention.value_length", "attention.key_length_swa",
                   "attention.value_length_swa"):
        val = v.get(suffix)
        if val is not None and n_embd and val > 4 * n_embd and val > 1024:
            p.add(k(suffix), val, f"implausibly large for a {n_embd}-wide model")
    if v.get("embedding_length_out") is not None and n_embd is not None:
        pass  # checked per architecture (drafters read the target's width through it)


def _qwen35_cross(h: _Header, v: dict, n_layer: int, role: str) -> None:
    p, k = h.p, h.key
    n_embd = v.get("embedding_length")
    out = v.get("embedding_length_out")
    if out is not None and n_embd is not None and out != n_embd:
        p.add(k("embedding_length_out"), out, f"a {h.arch} model's output width is its embedding_length {n_embd}")
    d_state, dt_rank, groups, inner = (v.get(s) for s in ("ssm.state_size", "ssm.time_step_rank", "ssm.group_count", "ssm.inner_size"))
    if dt_rank and groups and dt_rank % groups:
        p.add(k("ssm.time_step_rank"), dt_rank, f"the value heads must be a multiple of the {groups} key heads (ssm.group_count)")
    if d_state and dt_rank and inner is not None and inner != d_state * dt_rank:
        p.add(k("ssm.inner_size"), inner, f"must be ssm.state_size x ssm.time_step_rank = {d_state * dt_rank}")
    sec_key = k("rope.dimension_sections")
    sections = v.get("rope.dimension_sections")
    if sections is not None:
        sec = sections if isinstance(sections, tuple) else (sections,)
        rot = v.get("rope.dimension_count") or v.get("attention.key_length")
        if len(sec) != 4:
            p.add(sec_key, sec, "needs 4 entries")
        elif not any(x > 0 for x in sec[:3]):
            p.add(sec_key, sec, "one of the first three sections must be positive (ggml's multi-rope asserts it)")
        elif rot and 2 * sum(sec) > rot:
            p.add(sec_key, sec, f"the sections cover more than the {rot} rotated dimensions")
    rec = v.get("attention.recurrent_layers")
    nextn = v.get("nextn_predict_layers", 0) or 0
    if isinstance(rec, tuple):
        trunk = rec[: n_layer - nextn]
        if trunk and all(trunk):
            p.add(k("attention.recurrent_layers"), rec, "no full-attention layer left")
        if any(rec[n_layer - nextn:]):
            p.add(k("attention.recurrent_layers"), rec, "the MTP (nextn) layers must be attention layers")
    if h.arch == "qwen35moe":
        if not v.get("expert_count"):
            p.add(k("expert_count"), v.get("expert_count", "missing"), "a qwen35moe model has experts")


def _gemma4_cross(h: _Header, v: dict, n_layer: int, role: str) -> None:
    p, k = h.p, h.key
    for a, b in (("attention.key_length", "attention.value_length"), ("attention.key_length_swa", "attention.value_length_swa")):
        if v.get(a) is not None and v.get(b) is not None and v[a] != v[b]:
            p.add(k(b), v[b], f"Gemma 4 needs it equal to {a} ({v[a]})")
    swa = v.get("attention.sliding_window_pattern")
    shared = v.get("attention.shared_kv_layers", 0) or 0
    if isinstance(swa, tuple) and len(swa) == n_layer:
        if shared:
            start = n_layer - shared
            if start < 2 or not swa[start - 2] or swa[start - 1]:
                p.add(k("attention.shared_kv_layers"), shared,
                      f"the layers sharing KV need a sliding-window then a full-attention layer before them (of {n_layer})")
        if role == "target" and n_layer >= 2 and not all(swa) and swa[-1]:
            pass  # the drafter pairing (engine) checks the layout it needs
    n_embd = v.get("embedding_length")
    out = v.get("embedding_length_out")
    if h.arch == "gemma4-assistant":
        if out is None:
            p.add(k("embedding_length_out"), "missing", "a gemma4-assistant drafter names its target's width")
    elif out is not None and n_embd is not None and out != n_embd:
        p.add(k("embedding_length_out"), out, f"a gemma4 model's output width is its embedding_length {n_embd}")


def _hy_cross(h: _Header, v: dict, n_layer: int, role: str) -> None:
    # hy_v3 also comes dense (llama.cpp's loader takes ffn_gate/up/down without experts)
    if h.arch == "hunyuan-moe" and not v.get("expert_count"):
        h.p.add(h.key("expert_count"), v.get("expert_count", "missing"), f"a {h.arch} model has experts")


ArchCheck = Callable[[_Header, dict, int, str], None]
ARCH_RULES: dict[str, tuple[tuple[Rule, ...], ArchCheck | None]] = {
    "qwen35": (_QWEN35, _qwen35_cross),
    "qwen35moe": (_QWEN35 + (Rule("expert_feed_forward_length", lo=1, hi=MAX_FF, layered=True),), _qwen35_cross),
    "gemma4": (_GEMMA4, _gemma4_cross),
    "gemma4-assistant": (_GEMMA4 + (Rule("embedding_length_out", lo=1, hi=MAX_EMBD, required=True),), _gemma4_cross),
    "hy_v3": (_HY + (Rule("expert_feed_forward_length", lo=1, hi=MAX_FF, layered=True),), _hy_cross),
    "hy_v4": (_HY, _hy_cross),
    "hunyuan-moe": (_HY, _hy_cross),
    "hunyuan-dense": (_HY[2:], None),
}


def _tokenizer(h: _Header, p: _Problems) -> None:
    info = h.info
    model = info.scalars.get("tokenizer.ggml.model")
    if model is None:
        p.add("tokenizer.ggml.model", "missing", "the file has no tokenizer")
        return
    if not isinstance(model, str):
        p.add("tokenizer.ggml.model", model, f"a string was expected, got {_type(model)}")
        return
    if model not in TOKENIZER_MODELS:
        p.add("tokenizer.ggml.model", model, "not a tokenizer llama.cpp can run")
        return
    want = ARCH_TOKENIZER.get(h.arch)
    if want is not None and model not in want:
        p.add("tokenizer.ggml.model", model, f"a {h.arch} model uses the {'/'.join(sorted(want))} tokenizer")
    tokens = info.arrays.get("tokenizer.ggml.tokens")
    if tokens is None or tokens[0] != "string":
        p.add("tokenizer.ggml.tokens", tokens or "missing", "an array of token strings is required")
        return
    n_vocab = tokens[1]
    if not 1 <= n_vocab <= MAX_VOCAB:
        p.add("tokenizer.ggml.tokens", tokens, f"vocabulary size must be within 1..{MAX_VOCAB}")
        return
    if info.duplicate_token is not None:
        p.add("tokenizer.ggml.tokens", tokens, f"token {info.duplicate_token} repeats an earlier token's text")
    for key, etypes in (("tokenizer.ggml.scores", ("float32",)), ("tokenizer.ggml.token_type", ("int32", "uint32"))):
        arr = info.arrays.get(key)
        if key in info.scalars:
            p.add(key, info.scalars[key], "an array was expected")
        elif arr is not None and (arr[0] not in etypes or arr[1] != n_vocab):
            p.add(key, arr, f"needs {n_vocab} {etypes[0]} entries, one per token")
    merges = info.arrays.get("tokenizer.ggml.merges")
    if "tokenizer.ggml.merges" in info.scalars or (merges is not None and merges[0] != "string"):
        p.add("tokenizer.ggml.merges", merges or info.scalars["tokenizer.ggml.merges"], "an array of strings was expected")
    elif model in ("gpt2", "gemma4") and merges is None:
        p.add("tokenizer.ggml.merges", "missing", f"the {model} tokenizer needs its merges")
    for key, value in info.scalars.items():
        if key.startswith("tokenizer.ggml.") and key.endswith("_token_id"):
            if not _is_int(value):
                p.add(key, value, f"a token id was expected, got {_type(value)}")
            elif not 0 <= value < n_vocab:
                p.add(key, value, f"outside the vocabulary of {n_vocab} tokens")
        elif key.startswith("tokenizer.ggml.add_") and not isinstance(value, bool):
            p.add(key, value, f"true or false was expected, got {_type(value)}")
        elif key == "tokenizer.ggml.pre" and not isinstance(value, str):
            p.add(key, value, f"a string was expected, got {_type(value)}")


def problems(info: GgufInfo, *, role: str = "target") -> list[str]:
    """Every problem found in a header (empty: llama.cpp can be given the file).
    ``role``: "target" (a model to run) or "drafter" (an MTP sidecar)."""
    p = _Problems()
    arch = info.architecture
    if not arch or len(arch) > 64:
        p.add("general.architecture", arch or "missing", "the file does not say what model it is")
        return p
    h = _Header(info, p)
    # block_count first: the per-layer rules need it
    n_layer_v = _apply(h, GENERIC[:1], None).get("block_count")
    if not p and _is_int(n_layer_v):
        n_layer = int(n_layer_v)
        arch_rules, cross = ARCH_RULES.get(arch, ((), None))
        overridden = {r.suffix for r in arch_rules}
        values = _apply(h, [r for r in GENERIC[1:] if r.suffix not in overridden], n_layer)
        values.update(_apply(h, arch_rules, n_layer))
        values["block_count"] = n_layer
        _generic_cross(h, values, n_layer, role)
        if cross is not None:
            cross(h, values, n_layer, role)
    _tokenizer(h, p)
    return list(dict.fromkeys(p))


def validate_header(info: GgufInfo, *, role: str = "target") -> GgufInfo:
    """Raise ModelError (one line) unless llama.cpp can be given this file; returns ``info``."""
    found = problems(info, role=role)
    if found:
        more = f" (and {len(found) - 1} more problem{'s' if len(found) > 2 else ''})" if len(found) > 1 else ""
        what = "drafter" if role == "drafter" else "model"
        raise ModelError(f"{what} {info.path.name}: invalid metadata: {found[0]}{more}")
    return info


def validate_file(path: str | os.PathLike[str], *, role: str = "target") -> GgufInfo:
    """Read a GGUF header and validate it (ModelError on any problem)."""
    return validate_header(read_gguf_info(Path(path)), role=role)
