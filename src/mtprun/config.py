"""Configuration: frozen dataclasses, validated once when built (the edge), never re-checked.

``ModelConfig`` says what to load and how, ``SamplingConfig`` how to pick tokens,
``SpecConfig`` how to speculate, ``GenerationConfig`` bundles one generation's settings.
Defaults follow llama.cpp's ``llama-cli`` where it has one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InvalidInputError


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise InvalidInputError(message)


def _finite(x: float) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _int_in(x: object, lo: int, hi: int) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and lo <= x <= hi


INT32_MAX = (1 << 31) - 1
MAX_THREADS = 512  # ggml's GGML_MAX_N_THREADS
MAX_CTX = 1 << 24


SPLIT_MODES = ("none", "layer", "row", "tensor")  # llama.cpp's llama_split_mode, in its order
MAX_DEVICES = 16  # llama.cpp's llama_max_devices()


def _endpoint_ok(text: object) -> bool:
    """HOST:PORT as ggml's RPC client reads it (an IPv4 host name or address, port 1..65535)."""
    if not isinstance(text, str) or text.count(":") != 1:
        return False
    host, port = text.split(":")
    return bool(host) and host.isprintable() and not any(c.isspace() for c in host) and port.isdigit() \
        and len(port) <= 5 and 1 <= int(port) <= 65535


@dataclass(frozen=True)
class Placement:
    """Where the model runs, with llama-cli's meanings.

    ``rpc``: rpc-servers (``HOST:PORT``) whose devices are added, named RPC0, RPC1, ... in order;
    ``devices``: the devices to offload to (``("none",)``: none; empty: llama.cpp's choice, RPC
    servers first, then GPUs); ``devices_draft``: where the MTP head or sidecar runs (empty: with
    the target; an in-model head takes one device); ``tensor_split``: proportions per device
    (empty: by free memory); ``split_mode``: none, layer, row or tensor (None: layer);
    ``rpc_timeout``: seconds to wait for each server to answer when connecting.
    """

    rpc: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    devices_draft: tuple[str, ...] = ()
    tensor_split: tuple[float, ...] = ()
    split_mode: str | None = None
    rpc_timeout: float = 5.0

    def __post_init__(self) -> None:
        for name in ("rpc", "devices", "devices_draft", "tensor_split"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for ep in self.rpc:
            _check(_endpoint_ok(ep), f"RPC server must be HOST:PORT with a port within 1..65535, got {str(ep)[:80]!r}")
        _check(len(set(self.rpc)) == len(self.rpc), "an RPC server is listed twice")
        _check(len(self.rpc) <= MAX_DEVICES, f"at most {MAX_DEVICES} RPC servers, got {len(self.rpc)}")
        for what, names in (("device", self.devices), ("draft device", self.devices_draft)):
            for n in names:
                _check(isinstance(n, str) and n.strip() == n and n != "" and n.isprintable(), f"{what} names must be non-empty, got {str(n)[:80]!r}")
            _check("none" not in names or len(names) == 1, f"{what} 'none' (no offload) cannot be combined with devices")
            _check(len(set(names)) == len(names), f"a {what} is listed twice")
        for x in self.tensor_split:
            _check(_finite(x) and 0 <= x <= 1e9, f"tensor split proportions must be numbers >= 0, got {x!r}")
        _check(not self.tensor_split or sum(self.tensor_split) > 0, "tensor split proportions must not all be 0")
        _check(len(self.tensor_split) < MAX_DEVICES, f"tensor split: at most {MAX_DEVICES - 1} proportions, got {len(self.tensor_split)}")
        _check(self.split_mode is None or self.split_mode in SPLIT_MODES,
               f"split mode must be one of {', '.join(SPLIT_MODES)}, got {str(self.split_mode)[:80]!r}")
        _check(_finite(self.rpc_timeout) and 0 < self.rpc_timeout <= 3600, f"RPC timeout must be within (0, 3600] seconds, got {self.rpc_timeout!r}")

    @classmethod
    def parse(cls, *, rpc: str | None = None, device: str | None = None, device_draft: str | None = None,
              tensor_split: str | None = None, split_mode: str | None = None) -> Placement:
        """From llama-cli's spellings: ``--rpc host:port,host:port``, ``-dev RPC0,RPC1`` or ``none``,
        ``-devd RPC1``, ``-ts 3,1`` (``/`` separates too), ``-sm layer``."""
        def names(text: str | None, what: str) -> tuple[str, ...]:
            if text is None:
                return ()
            items = tuple(x.strip() for x in str(text).split(","))
            _check(all(items), f"{what}: empty name in {str(text)[:80]!r}")
            return items

        split: tuple[float, ...] = ()
        if tensor_split is not None:
            parts = [x.strip() for x in str(tensor_split).replace("/", ",").split(",")]
            try:
                split = tuple(float(x) for x in parts)
            except ValueError:
                raise InvalidInputError(f"tensor split must be numbers separated by commas, e.g. 3,1, got {str(tensor_split)[:80]!r}") from None
        return cls(
            rpc=names(rpc, "RPC servers"), devices=names(device, "devices"), devices_draft=names(device_draft, "draft devices"),
            tensor_split=split, split_mode=None if split_mode is None else str(split_mode).strip().lower(),
        )

    @property
    def is_default(self) -> bool:
        return self == Placement(rpc_timeout=self.rpc_timeout)


@dataclass(frozen=True)
class ModelConfig:
    """What to load: a target GGUF, optionally its MTP drafter sidecar, and runtime options."""

    path: Path
    draft_path: Path | None = None  # mtp-*.gguf sidecar (Gemma 4 assistant); None: embedded or none
    n_ctx: int = 4096  # 0: the model's training context
    n_batch: int = 512
    n_threads: int | None = None  # None: the number of physical cores
    n_gpu_layers: int = -1  # -1: all layers (when llama-cpp-python was built with a GPU backend)
    flash_attn: bool | None = None  # None: llama.cpp decides
    mtp: bool = True  # False: plain decoding; MTP layers and drafter are not loaded
    n_draft_capacity: int = 6  # the largest SpecConfig.n_max any generation may use (sizes rollback snapshots)
    verbose: bool = False  # let llama.cpp's own log through to stderr
    placement: Placement = field(default_factory=Placement)  # devices: RPC servers, -dev, -devd, -ts, -sm

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if self.draft_path is not None:
            object.__setattr__(self, "draft_path", Path(self.draft_path))
        _check(_int_in(self.n_ctx, 0, MAX_CTX), f"context size must be 0 (model default) or within 1..{MAX_CTX}, got {self.n_ctx}")
        _check(_int_in(self.n_batch, 1, 1 << 20), f"batch size must be within 1..{1 << 20}, got {self.n_batch}")
        _check(self.n_threads is None or _int_in(self.n_threads, 1, MAX_THREADS), f"threads must be within 1..{MAX_THREADS}, got {self.n_threads}")
        _check(_int_in(self.n_gpu_layers, -1, 4096), f"GPU layers must be -1 (all) or within 0..4096, got {self.n_gpu_layers}")
        _check(_int_in(self.n_draft_capacity, 1, 32), f"draft capacity must be within 1..32, got {self.n_draft_capacity}")
        _check(isinstance(self.placement, Placement), f"placement must be a Placement, got {type(self.placement).__name__}")


@dataclass(frozen=True)
class SamplingConfig:
    """Token selection. ``temperature <= 0`` is greedy (argmax); the rest apply when sampling.

    Order, as llama.cpp's default chain: penalties, top-k, top-p, min-p, temperature, draw.
    """

    temperature: float = 0.8
    top_k: int = 40  # <= 0: whole vocabulary
    top_p: float = 0.95  # 1.0: off
    min_p: float = 0.05  # 0.0: off
    repeat_penalty: float = 1.0  # 1.0: off
    repeat_last_n: int = 64  # how many recent tokens the penalties look at; -1: whole context
    presence_penalty: float = 0.0  # 0.0: off
    seed: int | None = None  # None: a fresh random seed per generation

    def __post_init__(self) -> None:
        _check(_finite(self.temperature) and 0 <= self.temperature <= 1e6, f"temperature must be within 0..1e6, got {self.temperature}")
        _check(_int_in(self.top_k, -INT32_MAX, INT32_MAX), f"top-k must be an integer within -{INT32_MAX}..{INT32_MAX}, got {self.top_k}")
        _check(_finite(self.top_p) and 0 < self.top_p <= 1, f"top-p must be in (0, 1], got {self.top_p}")
        _check(_finite(self.min_p) and 0 <= self.min_p <= 1, f"min-p must be in [0, 1], got {self.min_p}")
        _check(_finite(self.repeat_penalty) and 1e-6 <= self.repeat_penalty <= 1e6, f"repeat penalty must be within 1e-6..1e6, got {self.repeat_penalty}")
        _check(_int_in(self.repeat_last_n, -1, INT32_MAX), f"repeat-last-n must be -1 or within 0..{INT32_MAX}, got {self.repeat_last_n}")
        _check(_finite(self.presence_penalty) and abs(self.presence_penalty) <= 1e6, f"presence penalty must be within -1e6..1e6, got {self.presence_penalty}")
        _check(self.seed is None or _int_in(self.seed, 0, (1 << 64) - 1), f"seed must be an integer within 0..{(1 << 64) - 1}, got {self.seed}")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


AUTO_CEILING = 6  # the draft-length ceiling of "auto"


@dataclass(frozen=True)
class PolicyCosts:
    """The adaptive policy's costs on some machine, in seconds (the terms of
    :class:`~mtprun.events.PolicyEstimates`): ``target_seconds_by_batch[k-1]`` a target pass over k
    tokens (its last step is extrapolated to larger batches), ``head_seconds`` one MTP-head decode."""

    target_seconds_by_batch: tuple[float, ...]
    head_seconds: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "target_seconds_by_batch", tuple(self.target_seconds_by_batch))
        _check(len(self.target_seconds_by_batch) >= 1 and all(_finite(t) and t > 0 for t in self.target_seconds_by_batch),
               f"the policy's target costs must be positive, got {self.target_seconds_by_batch}")
        _check(_finite(self.head_seconds) and self.head_seconds >= 0, f"the policy's head cost must be positive, got {self.head_seconds}")


@dataclass(frozen=True)
class SpecConfig:
    """Speculation with the MTP head; ``enabled=False`` decodes plainly.

    ``enabled`` is whether *this generation* drafts; ``ModelConfig.mtp`` whether the engine loads
    the head at all. They are two settings because one loaded engine runs plain and speculative
    generations side by side (``mtprun bench`` alternates them); a generation drafts when both
    hold and the model has a head (``ModelInfo.mtp_active``), which ``GenerationStats.mtp`` reports.

    ``adaptive=True`` (the default): ``n_max`` is a ceiling and the engine picks 0..n_max draft
    tokens each step from what it measures (target cost by batch size, head cost, acceptance by
    position), 0 being a plain step. ``adaptive=False``: every step drafts ``n_max`` tokens.
    Either way the output is what plain decoding gives (greedy: token for token; sampling: the
    same distribution; a fixed ``n_max`` also reproduces a seeded sample exactly).
    """

    enabled: bool = True
    n_max: int = AUTO_CEILING  # draft tokens per step (adaptive: the most)
    adaptive: bool = True
    p_min: float = 0.0  # stop drafting when the head's top probability falls below this
    # the adaptive policy's starting estimate of this machine's costs (e.g. what ``mtprun bench
    # --save`` measured), used by an engine's first generation; its measurements replace it
    cost_prior: PolicyCosts | None = None

    def __post_init__(self) -> None:
        _check(self.cost_prior is None or isinstance(self.cost_prior, PolicyCosts), f"cost_prior must be a PolicyCosts, got {self.cost_prior!r}")
        _check(_int_in(self.n_max, 1, 32), f"draft length (n_max) must be within 1..32, got {self.n_max}")
        _check(isinstance(self.adaptive, bool), f"adaptive must be True or False, got {self.adaptive!r}")
        _check(_finite(self.p_min) and 0 <= self.p_min <= 1, f"draft p-min must be in [0, 1], got {self.p_min}")

    @classmethod
    def parse(cls, text: str, *, enabled: bool = True, p_min: float = 0.0, cost_prior: PolicyCosts | None = None) -> SpecConfig:
        """From the CLI spelling: ``auto`` (adaptive, ceiling 6), ``auto:N`` (adaptive, ceiling N)
        or ``N`` (always N draft tokens)."""
        raw = str(text).strip().lower()
        if raw == "auto":
            return cls(enabled=enabled, n_max=AUTO_CEILING, adaptive=True, p_min=p_min, cost_prior=cost_prior)
        adaptive = raw.startswith("auto:")
        num = raw[len("auto:"):] if adaptive else raw
        _check(num.isdigit(), f"draft length must be auto, auto:N or N (N within 1..32), got {text!r}")
        return cls(enabled=enabled, n_max=int(num), adaptive=adaptive, p_min=p_min, cost_prior=cost_prior)

    @property
    def label(self) -> str:
        """The CLI spelling of this setting (``auto``, ``auto:N`` or ``N``)."""
        if not self.adaptive:
            return str(self.n_max)
        return "auto" if self.n_max == AUTO_CEILING else f"auto:{self.n_max}"


@dataclass(frozen=True)
class GenerationConfig:
    """One generation: how many tokens at most, how to sample, how to speculate."""

    max_tokens: int = -1  # -1: until end of generation or a full context
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    spec: SpecConfig = field(default_factory=SpecConfig)

    def __post_init__(self) -> None:
        _check(_int_in(self.max_tokens, -1, INT32_MAX), f"n-predict must be -1 (unlimited) or within 0..{INT32_MAX}, got {self.max_tokens}")
