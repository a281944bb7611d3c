"""Memory: what a model will need before it is loaded, what it did allocate, and whether the MTP
head fits beside it on a GPU.

``estimate(target, draft, ...)`` works from GGUF headers alone (``gguf_info``): weights are the
tensor bytes the header lists (the MTP layers or the sidecar apart), the KV cache and recurrent
state follow llama.cpp's own sizing at commit 0c1e570 (context padded to 256 cells, sliding-window
layers holding ``pad256(n_swa + n_ubatch)`` cells with ``swa_full`` off, f16 K/V, V padded to the
widest layer when flash attention is off, recurrent state ``(1 + n_rs_seq)`` copies of the conv
and SSM rows in f32), and compute buffers are a model of llama.cpp's reserved graph (attention
mask / scores over the largest cache for one ubatch, activations, logits for the outputs).

``measured(entries)`` sums llama.cpp's own breakdown (``llama_get_memory_breakdown`` per context
and buffer type) as the engine reports it, so the estimate can be checked.

``mtp_fit(...)`` is the pure decision whether the MTP head may be loaded on a GPU.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from typing import Iterable, Mapping

from .gguf_info import GgufInfo

__all__ = ["MemoryEstimate", "MeasuredMemory", "FitDecision", "estimate", "measured", "mtp_fit"]

F16 = 2
F32 = 4
N_UBATCH = 512  # the engine's (and llama.cpp's) physical batch
_BLOCK = re.compile(r"^blk\.(\d+)\.")


def _pad(x: int, n: int) -> int:
    return -(-x // n) * n


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a run will allocate, by part. ``mtp_*`` parts are what ``--no-mtp`` saves."""

    n_ctx: int
    n_draft: int  # recurrent snapshots / verify width sized for this draft length
    flash_attn: bool
    weights: int  # target weights without the MTP layers
    mtp_weights: int  # embedded MTP layers or the sidecar
    kv: int  # target attention KV cache (full + sliding-window layers)
    kv_swa: int  # of which sliding-window layers
    recurrent: int  # target recurrent state with no rollback snapshots
    mtp_snapshots: int  # recurrent snapshots kept for rolling back rejected drafts
    compute: int  # target compute buffers
    mtp_kv: int  # the MTP context's own KV cache (0 when it shares the target's)
    mtp_compute: int  # the MTP context's compute buffers
    compute_source: str = "model"  # "model": mtprun's model of the graphs; "llama.cpp": its no_alloc dry run

    def with_dry_run(self, dry: MeasuredMemory) -> MemoryEstimate:
        """This estimate with the compute buffers llama.cpp's dry run reserved (no weights read)."""
        return replace(self, compute=dry.compute, mtp_compute=dry.mtp_compute, compute_source="llama.cpp")

    @property
    def mtp_total(self) -> int:
        """What MTP costs on top of plain decoding (what --no-mtp saves)."""
        return self.mtp_weights + self.mtp_snapshots + self.mtp_kv + self.mtp_compute

    @property
    def plain_total(self) -> int:
        return self.weights + self.kv + self.recurrent + self.compute

    @property
    def total(self) -> int:
        return self.plain_total + self.mtp_total

    def as_dict(self) -> dict[str, int | bool]:
        d = asdict(self)
        d.update(mtp_total=self.mtp_total, plain_total=self.plain_total, total=self.total)
        return d


@dataclass(frozen=True)
class MeasuredMemory:
    """What llama.cpp allocated (its memory breakdown), summed over buffer types. ``device``: the
    same per device name ("" for host memory)."""

    weights: int  # target model buffers
    mtp_weights: int  # sidecar model buffers (an embedded head's layers are in ``weights``)
    state: int  # target KV cache + recurrent state
    compute: int  # target compute buffers
    mtp_state: int
    mtp_compute: int
    devices: Mapping[str, int]

    @property
    def total(self) -> int:
        return self.weights + self.mtp_weights + self.state + self.compute + self.mtp_state + self.mtp_compute

    def as_dict(self) -> dict[str, object]:
        return {
            "weights": self.weights, "mtp_weights": self.mtp_weights, "state": self.state, "compute": self.compute,
            "mtp_state": self.mtp_state, "mtp_compute": self.mtp_compute, "total": self.total,
            "devices": dict(self.devices),
        }


def measured(entries: Iterable) -> MeasuredMemory:
    """Sum the engine's breakdown rows (``mtprun._core.MemoryEntry``: context, buffer, device, host,
    shared_model, model, state, compute)."""
    w = mw = st = co = mst = mco = 0
    devices: dict[str, int] = {}
    for e in entries:
        draft = e.context == "draft"
        model = 0 if (draft and e.shared_model) else int(e.model)  # the target's weights, counted once
        if draft:
            mw, mst, mco = mw + model, mst + int(e.state), mco + int(e.compute)
        else:
            w, st, co = w + model, st + int(e.state), co + int(e.compute)
        dev = "" if e.host else str(e.device or e.buffer)
        devices[dev] = devices.get(dev, 0) + model + int(e.state) + int(e.compute)
    return MeasuredMemory(w, mw, st, co, mst, mco, devices)


# --- the estimate ---------------------------------------------------------------------------------


class _Hparams:
    """The per-layer hyperparameters llama.cpp reads, from a GGUF header."""

    def __init__(self, g: GgufInfo) -> None:
        self.g = g
        self.arch = g.architecture or ""
        self.n_layer_all = self.int("block_count", 0)
        self.n_nextn = self.int("nextn_predict_layers", 0) if self.arch != "gemma4-assistant" else 0
        self.n_layer = self.n_layer_all - self.n_nextn
        self.n_embd = self.int("embedding_length", 0)
        self.n_ff = self.int("feed_forward_length", 0)
        self.n_vocab = g.vocab_size or 0
        self.n_head = self.layer("attention.head_count", 0)
        self.n_head_kv = self.layer("attention.head_count_kv", self.n_head)
        self.n_swa = self.int("attention.sliding_window", 0)
        pattern = self.array("attention.sliding_window_pattern")
        self.swa = [bool(pattern[i]) if pattern and i < len(pattern) else False for i in range(self.n_layer_all)]
        if not pattern and self.n_swa:
            self.swa = [True] * self.n_layer_all
        rec = self.array("attention.recurrent_layers")
        interval = self.int("full_attention_interval", 0)
        if rec:
            self.recr = [bool(rec[i]) if i < len(rec) else False for i in range(self.n_layer_all)]
        elif interval:
            self.recr = [(i + 1) % interval != 0 and i < self.n_layer for i in range(self.n_layer_all)]
        else:
            self.recr = [False] * self.n_layer_all
        k, v = self.int("attention.key_length", 0), self.int("attention.value_length", 0)
        if not k and self.n_head[0]:
            k = v = self.n_embd // max(1, self.n_head[0])
        ks, vs = self.int("attention.key_length_swa", k), self.int("attention.value_length_swa", v)
        self.k = [ks if self.swa[i] else k for i in range(self.n_layer_all)]
        self.v = [vs if self.swa[i] else v for i in range(self.n_layer_all)]
        # gated delta net / mamba state (llama_hparams::n_embd_r, n_embd_s)
        d_conv, d_state = self.int("ssm.conv_kernel", 0), self.int("ssm.state_size", 0)
        d_inner, n_group = self.int("ssm.inner_size", 0), self.int("ssm.group_count", 0)
        self.n_embd_r = max(0, d_conv - 1) * (d_inner + 2 * n_group * d_state)
        self.n_embd_s = d_state * d_inner
        self.d_inner = d_inner
        self.conv_dim = d_inner + 2 * n_group * d_state if d_conv else 0
        gated_q = 2 if self.arch.startswith("qwen3") else 1  # Qwen3.5's attention gate rides on Q

        def q_width(layers: range) -> int:
            return max((gated_q * self.n_head[i] * max(self.k[i], self.v[i]) for i in layers if not self.recr[i]), default=0)
        self.q_width = q_width

    def int(self, key: str, default: int) -> int:
        v = self.g.scalars.get(f"{self.arch}.{key}")
        return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else default

    def array(self, key: str) -> tuple | None:
        return self.g.array_values.get(f"{self.arch}.{key}")

    def layer(self, key: str, default) -> list[int]:
        arr = self.array(key)
        if arr:
            return [int(arr[i]) if i < len(arr) else int(arr[-1]) for i in range(self.n_layer_all)]
        base = default if isinstance(default, list) else [default] * self.n_layer_all
        return [self.int(key, base[i] if i < len(base) else 0) for i in range(self.n_layer_all)]

    def kv_bytes(self, il: int, flash_attn: bool) -> int:
        """Bytes per cell of layer il's K and V (f16); V padded to the widest layer without flash attention."""
        v = max(self.n_head_kv[i] * self.v[i] for i in range(self.n_layer_all)) if not flash_attn else self.n_head_kv[il] * self.v[il]
        return (self.n_head_kv[il] * self.k[il] + v) * F16


def _tensor_sum(g: GgufInfo, keep) -> int:
    return sum(n or 0 for name, n in g.tensor_bytes.items() if keep(name))


def _compute(n_kv: int, n_kv_swa: int, n_head: int, q_width: int, n_embd: int, n_ff: int, conv_dim: int,
             n_vocab: int, n_outputs: int, flash_attn: bool) -> int:
    """llama.cpp's reserved compute buffer for one ubatch, modelled on its CPU graphs at 0c1e570: the
    attention mask (f16 with flash attention; else f32 plus one layer's f32 scores), the widest
    activations of a layer (attention: 2 x the query width; FFN: 3 x n_ff; gated delta net:
    3 x its conv width) over two residual rows, and the logits of the outputs."""
    mask = F16 if flash_attn else F32
    attn = N_UBATCH * (n_kv * (mask if flash_attn else F32 * (1 + n_head)) + n_kv_swa * mask)
    acts = N_UBATCH * F32 * (max(2 * q_width, 3 * n_ff, 3 * conv_dim) + 2 * n_embd)
    return attn + acts + n_outputs * n_vocab * F32


def estimate(target: GgufInfo, draft: GgufInfo | None = None, *, n_ctx: int, n_draft: int,
             mtp: bool = True, flash_attn: bool = True) -> MemoryEstimate:
    """Bytes a run of ``target`` (with its sidecar ``draft``, if any) will allocate at context
    ``n_ctx`` (0: the model's training context) drafting up to ``n_draft`` tokens, as the engine
    creates its contexts; ``mtp=False`` as with --no-mtp (the MTP parts are then 0)."""
    h = _Hparams(target)
    n_ctx = n_ctx or target.context_length or 4096
    n_cells = _pad(max(1, n_ctx), 256)
    has_head = draft is not None or h.n_nextn > 0
    use_mtp = mtp and has_head
    n_ubatch = max(N_UBATCH, n_draft + 1)

    # weights: the target's layers; embedded MTP layers (blk.N, N >= n_layer) are loaded only with MTP
    def is_nextn(name: str) -> bool:
        m = _BLOCK.match(name)
        return bool(m) and int(m.group(1)) >= h.n_layer
    weights = _tensor_sum(target, lambda n: not is_nextn(n))
    mtp_weights = 0
    if use_mtp:
        mtp_weights = _tensor_sum(draft, lambda n: True) if draft is not None else _tensor_sum(target, is_nextn)

    # target KV cache: trunk attention layers
    n_swa_cells = min(n_cells, _pad(h.n_swa + n_ubatch, 256)) if h.n_swa else n_cells
    kv = kv_swa = 0
    for il in range(h.n_layer):
        if h.recr[il]:
            continue
        cells = n_swa_cells if h.swa[il] else n_cells
        b = cells * h.kv_bytes(il, flash_attn)
        kv += b
        kv_swa += b if h.swa[il] else 0
    # recurrent state: one copy plus n_rs_seq snapshots when drafting
    per_state = sum(1 for il in range(h.n_layer) if h.recr[il]) * (h.n_embd_r + h.n_embd_s) * F32
    snapshots = per_state * n_draft if use_mtp else 0

    n_head = max(h.n_head[: max(1, h.n_layer)] or [0])
    has_full = any(not h.recr[i] and not h.swa[i] for i in range(h.n_layer))
    n_kv_full = n_cells if has_full else 0
    n_kv_swa = n_swa_cells if any(h.swa[: h.n_layer]) else 0
    compute = _compute(n_kv_full, n_kv_swa, n_head, h.q_width(range(h.n_layer)), h.n_embd, h.n_ff,
                       h.conv_dim if any(h.recr[: h.n_layer]) else 0, h.n_vocab, n_draft + 1, flash_attn)

    mtp_kv = mtp_compute = 0
    if use_mtp:
        if draft is not None:  # gemma4-assistant: reads the target's KV cache, none of its own
            d = _Hparams(draft)
            d_head = max(d.n_head or [0])
            # the assistant's rows enter and leave at the target's width (pre/post projection)
            d_embd = max(d.n_embd, d.int("embedding_length_out", 0))
            mtp_compute = _compute(n_kv_full, n_kv_swa, d_head, d.q_width(range(d.n_layer_all)), d_embd, d.n_ff, 0,
                                   h.n_vocab, 1, flash_attn)
        else:  # embedded: a plain KV cache for the nextn layers
            for il in range(h.n_layer, h.n_layer_all):
                mtp_kv += n_cells * h.kv_bytes(il, flash_attn)
            d_head = max(h.n_head[h.n_layer:] or [n_head])
            mtp_compute = _compute(n_cells, 0, d_head, h.q_width(range(h.n_layer, h.n_layer_all)), h.n_embd, h.n_ff, 0,
                                   h.n_vocab, 1, flash_attn)

    return MemoryEstimate(
        n_ctx=n_cells, n_draft=n_draft if use_mtp else 0, flash_attn=flash_attn, weights=weights,
        mtp_weights=mtp_weights, kv=kv, kv_swa=kv_swa, recurrent=per_state, mtp_snapshots=snapshots,
        compute=compute, mtp_kv=mtp_kv, mtp_compute=mtp_compute,
    )


# --- GPU fit --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FitDecision:
    """Whether to load the MTP head: ``mtp`` False means run plain; ``reason`` says why (None: fits)."""

    mtp: bool
    reason: str | None = None


def mtp_fit(*, gpu_free: int | None, plain_bytes: int, mtp_bytes: int, margin: int = 256 << 20) -> FitDecision:
    """Pure decision: with ``gpu_free`` bytes free on the GPU (None: no GPU in use), does the MTP
    head (``mtp_bytes``) fit beside the model (``plain_bytes``) with ``margin`` to spare? When only
    it does not fit, run plain (the head is the part that can go)."""
    if gpu_free is None or mtp_bytes <= 0:
        return FitDecision(True)
    if plain_bytes + mtp_bytes + margin <= gpu_free:
        return FitDecision(True)
    return FitDecision(False, (
        f"the MTP head needs {mtp_bytes / 2**20:.0f} MiB beside the model's {plain_bytes / 2**20:.0f} MiB "
        f"but the GPU has {gpu_free / 2**20:.0f} MiB free"
    ))


@dataclass(frozen=True)
class DeviceUse:
    """One device a loaded model uses: what llama.cpp allocated on it (its memory breakdown).
    ``mtp``: the MTP context's part (the head's KV cache and compute buffers, a sidecar's
    weights); an in-model head's weights count in ``weights``."""

    name: str  # llama.cpp's device name: "CPU" (host memory), "RPC0", "CUDA0", ...
    description: str  # e.g. an RPC server's HOST:PORT
    weights: int
    state: int
    compute: int
    mtp: int

    @property
    def total(self) -> int:
        return self.weights + self.state + self.compute + self.mtp

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "description": self.description, "weights": self.weights, "state": self.state,
                "compute": self.compute, "mtp": self.mtp, "total": self.total}


def device_usage(entries: Iterable) -> tuple[DeviceUse, ...]:
    """The engine's breakdown rows (``mtprun._core.MemoryEntry``) grouped by device (host buffers
    as "CPU"), in first-seen order, devices with nothing allocated left out."""
    sums: dict[str, list[int]] = {}
    descriptions: dict[str, str] = {}
    for e in entries:
        name = "CPU" if e.host else str(e.device or e.buffer)
        if not e.host:
            descriptions.setdefault(name, str(getattr(e, "device_description", "")))
        s = sums.setdefault(name, [0, 0, 0, 0])
        if e.context == "draft":
            own = 0 if e.shared_model else int(e.model)
            s[3] += own + int(e.state) + int(e.compute)
        else:
            s[0] += int(e.model)
            s[1] += int(e.state)
            s[2] += int(e.compute)
    return tuple(DeviceUse(name, descriptions.get(name, ""), *s) for name, s in sums.items() if any(s))
