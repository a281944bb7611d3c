"""The engine facade: load a model, tokenize, and generate with MTP speculative decoding.

Usable without the CLI::

    from mtprun import Engine, ModelConfig, GenerationConfig, SamplingConfig, SpecConfig

    with Engine(ModelConfig(path="model.gguf")) as eng:
        prompt = eng.tokenize("Once upon a time")
        for event in eng.generate(prompt, GenerationConfig(max_tokens=64, sampling=SamplingConfig(temperature=0))):
            if isinstance(event, Step):
                print(event.text, end="", flush=True)
            else:                       # the final Result
                print(event.stats.acceptance)

The speculative loop itself (draft with the MTP head, verify in one target batch, accept, roll
back) runs in C++ (``mtprun._core``), which releases the GIL while llama.cpp computes; Python is
crossed once per step. This module never prints.
"""

from __future__ import annotations

import codecs
import os
import secrets
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ._native import core
from .config import GenerationConfig, ModelConfig, Placement, SPLIT_MODES
from .errors import ContextOverflowError, DeviceError, EngineClosedError, InvalidInputError, ModelError, MtprunError
from .events import GenerationStats, PolicyEstimates, Result, Step, StopReason, TokenPiece
from .memory import DeviceUse, MeasuredMemory, device_usage, measured
from .validate import MIN_CONTEXT, validate_file

__all__ = ["Engine", "ModelInfo", "choose_draft_length"]

_STOP_REASONS: dict[int, StopReason] = {
    core.STOP_EOS: "eos",
    core.STOP_LENGTH: "length",
    core.STOP_CONTEXT: "context",
    core.STOP_CANCELLED: "cancelled",
}


def _error(exc: core.CoreError) -> MtprunError:
    """Map a native failure to the library's exception classes."""
    status, message = exc.args
    if status == core.STATUS_INVALID:
        return InvalidInputError(message)
    if status == core.STATUS_MODEL:
        return ModelError(message)
    if status == core.STATUS_CONTEXT:
        return ContextOverflowError(message)
    if status == core.STATUS_STATE and "closed" in message:
        return EngineClosedError(message)
    if status == getattr(core, "STATUS_DEVICE", None):
        return DeviceError(message)
    return MtprunError(message)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded model offers. ``mtp_kind`` is what the files carry; ``mtp_active`` whether
    speculation runs (``mtp_note`` says why not)."""

    path: Path
    arch: str
    description: str
    size_bytes: int
    n_params: int
    n_vocab: int
    n_ctx: int
    n_ctx_train: int
    n_layer: int
    n_embd: int
    n_layer_nextn: int
    mtp_kind: str  # "embedded" | "sidecar" | "none"
    mtp_active: bool
    mtp_note: str | None
    draft_path: Path | None
    recurrent: bool
    chat_template: str | None
    bos_token: str
    eos_token: str
    add_bos: bool
    backend: str
    system_info: str  # llama.cpp's feature line (CPU instruction sets, backends)
    memory: MeasuredMemory | None = None  # what llama.cpp allocated for the contexts (its breakdown)
    mtp_chain: bool = False  # several MTP heads, chained: head i drafts draft position i
    devices: tuple[DeviceUse, ...] = ()  # the devices in use, with what llama.cpp allocated on each


class Engine:
    """A loaded target model (and MTP head), its contexts, and the conversation cache.

    One generation at a time. ``generate`` reuses the longest cached prefix of the prompt, so a
    multi-turn chat that resends the whole conversation only processes the new tokens.
    """

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        path = Path(config.path)
        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        # the drafter is only loaded for MTP: with MTP off a drafter that does not fit is no error
        draft = Path(config.draft_path) if config.draft_path is not None and config.mtp else None
        if draft is not None and not draft.is_file():
            raise ModelError(f"drafter file not found: {draft}")
        # llama.cpp aborts the process on some impossible metadata: check it before it sees the files
        header = validate_file(path, role="target")
        if draft is not None:
            validate_file(draft, role="drafter")
        flash = -1 if config.flash_attn is None else int(config.flash_attn)
        check_placement(config.placement)
        try:
            self._core = core.Engine(
                os.fspath(path),
                os.fspath(draft) if draft is not None else "",
                _context_size(config.n_ctx, header.context_length),
                config.n_batch,
                config.n_threads or 0,
                config.n_gpu_layers,
                flash,
                config.mtp,
                config.n_draft_capacity,
                config.verbose,
                _placement_params(config.placement),
            )
        except core.CoreError as exc:
            raise _error(exc) from None
        raw = self._core.info()
        template = _text(raw["chat_template"]) or None
        self.info = ModelInfo(
            path=path,
            arch=raw["arch"],
            description=raw["description"],
            size_bytes=raw["size_bytes"],
            n_params=raw["n_params"],
            n_vocab=raw["n_vocab"],
            n_ctx=raw["n_ctx"],
            n_ctx_train=raw["n_ctx_train"],
            n_layer=raw["n_layer"],
            n_embd=raw["n_embd"],
            n_layer_nextn=raw["n_layer_nextn"],
            mtp_kind=raw["mtp_kind"],
            mtp_active=raw["mtp_active"],
            mtp_note=raw["mtp_note"] or None,
            draft_path=draft,
            recurrent=raw["recurrent"],
            chat_template=template,
            bos_token=_text(raw["bos_token"]),
            eos_token=_text(raw["eos_token"]),
            add_bos=raw["add_bos"],
            backend=raw["backend"],
            system_info=raw["system_info"].strip(),
            memory=measured(raw.get("memory", ())),
            mtp_chain=raw["mtp_chain"],
            devices=device_usage(raw.get("memory", ())),
        )
        self._busy = threading.Lock()

    # --- lifecycle ----------------------------------------------------------------------------
    def close(self) -> None:
        """Free the model and contexts. Further use raises EngineClosedError."""
        self._core.close()

    @property
    def closed(self) -> bool:
        return self._core.closed

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _native(self):
        if self._core.closed:
            raise EngineClosedError("the engine is closed")
        return self._core

    # --- text ---------------------------------------------------------------------------------
    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Text to token ids. ``add_special`` adds BOS where the model wants it; ``parse_special``
        turns special-token text (e.g. chat template markers) into their ids."""
        try:
            return self._native().tokenize(text.encode("utf-8", errors="surrogatepass"), add_special, parse_special)
        except core.CoreError as exc:
            raise _error(exc) from None

    def detokenize(self, tokens: Sequence[int]) -> str:
        return _text(self._native().detokenize(list(tokens)))

    # --- generation ---------------------------------------------------------------------------
    def cancel(self) -> None:
        """Stop the running generation at the next step boundary (safe from signal handlers and
        other threads). The generation ends with stop reason ``"cancelled"``; the engine stays usable."""
        if not self._core.closed:
            self._core.cancel()

    def reset(self) -> None:
        """Forget the cached conversation."""
        self._native().reset()

    def generate(self, prompt: Sequence[int], config: GenerationConfig | None = None) -> Iterator[Step | Result]:
        """Generate after ``prompt`` (token ids): yields a :class:`Step` per speculative step and
        finally one :class:`Result`. Speculation runs when ``config.spec.enabled`` and the model
        has an active MTP head (else plain decoding; ``Result.stats.mtp`` tells which)."""
        config = config or GenerationConfig()
        native = self._native()
        if not prompt:
            raise InvalidInputError("the prompt is empty")
        if not self._busy.acquire(blocking=False):
            raise InvalidInputError("the engine is already generating")
        try:
            yield from self._generate(native, list(prompt), config)
        finally:
            self._busy.release()

    def _generate(self, native, prompt: list[int], config: GenerationConfig) -> Iterator[Step | Result]:
        s = config.sampling
        seed = s.seed if s.seed is not None else secrets.randbits(64)
        try:
            _interruptible(native.begin, prompt, _gen_params(config, seed), cancel=native.cancel)
        except core.CoreError as exc:
            raise _error(exc) from None

        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        tokens: list[int] = []
        text: list[str] = []
        stop = core.STOP_NONE
        try:
            while stop == core.STOP_NONE:
                try:
                    ids, raw, from_draft, n_drafted, n_accepted, stop = native.step()
                except core.CoreError as exc:
                    raise _error(exc) from None
                if stop == core.STOP_EOS:
                    # the end-of-generation token ends the text; it is not part of it
                    ids, raw, from_draft = ids[:-1], raw[:-1], from_draft[:-1]
                pieces = []
                for tok, piece_bytes, drafted in zip(ids, raw, from_draft):
                    piece = decoder.decode(piece_bytes)
                    pieces.append(TokenPiece(tok, piece, drafted))
                    text.append(piece)
                tokens.extend(ids)
                if pieces or n_drafted:
                    yield Step(tuple(pieces), n_drafted, n_accepted)
        finally:
            if stop == core.STOP_NONE:
                # the consumer stopped early (closed the generator): end the native generation
                native.cancel()
                try:
                    native.step()
                except core.CoreError:
                    pass
        text.append(decoder.decode(b"", final=True))  # an incomplete character at the very end
        yield Result("".join(text), tuple(tokens), _STOP_REASONS[stop], _stats(native.stats()))


def _context_size(n_ctx: int, n_ctx_train: int | None) -> int:
    """The context to ask llama.cpp for: at least MIN_CONTEXT tokens.

    llama.cpp rounds every context up to a multiple of 256 anyway, but sizes its batches from the
    number asked for: below the speculative window plus one (recurrent models keep n_max + 1
    rollback snapshots per micro-batch) it aborts (``GGML_ASSERT(n_ubatch > n_keep_tail)``), and a
    1-token batch breaks the Gemma 4 drafter. Asking for MIN_CONTEXT gives the same memory and
    a usable batch. ``n_ctx`` 0 is the model's training context (bounded the same way)."""
    if n_ctx == 0:
        n_ctx = n_ctx_train or 0
    return max(n_ctx, MIN_CONTEXT)


def _gen_params(config: GenerationConfig, seed: int):
    """The native generation settings (a nanobind-bound struct) of a validated config."""
    s, spec = config.sampling, config.spec
    g = core.GenParams()
    g.max_tokens = config.max_tokens
    g.speculate = spec.enabled
    g.n_max = spec.n_max
    g.adaptive = spec.adaptive
    g.p_min = spec.p_min
    sp = core.SamplingParams()
    sp.temp = s.temperature
    sp.top_k = s.top_k
    sp.top_p = s.top_p
    sp.min_p = s.min_p
    sp.repeat_penalty = s.repeat_penalty
    sp.repeat_last_n = s.repeat_last_n
    sp.presence_penalty = s.presence_penalty
    sp.seed = seed
    g.sampling = sp
    return g


def _stats(raw) -> GenerationStats:
    return GenerationStats(
        n_prompt_tokens=raw.n_prompt,
        n_prompt_reused=raw.n_prompt_reused,
        prompt_seconds=raw.t_prompt_s,
        n_generated=raw.n_generated,
        generation_seconds=raw.t_gen_s,
        n_drafted=raw.n_drafted,
        n_accepted=raw.n_accepted,
        drafted_by_position=tuple(raw.drafted_at),
        accepted_by_position=tuple(raw.accepted_at),
        n_target_passes=raw.n_target_passes,
        draft_seconds=raw.t_draft_s,
        verify_seconds=raw.t_verify_s,
        sample_seconds=raw.t_sample_s,
        mtp=raw.speculative,
        adaptive=raw.adaptive,
        n_max=raw.n_max,
        steps_by_draft_length=tuple(raw.steps_by_n),
        policy=PolicyEstimates(
            acceptance_by_position=tuple(raw.est_acceptance),
            target_seconds_by_batch=tuple(raw.est_t_target),
            head_seconds=raw.est_t_head,
        ) if raw.speculative else None,
    )


def choose_draft_length(target_seconds: Sequence[float], head_seconds: float, acceptance: Sequence[float], n_max: int | None = None) -> int:
    """The adaptive policy's choice, a pure function: the draft length n in 0..n_max (0: a plain
    step) maximising E[tokens](n) / cost(n), where E[tokens](n) = 1 + sum_{i<=n} prod_{j<=i} a_j and
    cost(n) = n * head_seconds + target_seconds[n] (``target_seconds[k-1]``: a target pass over k
    tokens; ``acceptance[j-1]``: draft position j's acceptance given the previous ones)."""
    n = len(acceptance) if n_max is None else n_max
    return core.choose_draft_length([float(t) for t in target_seconds], float(head_seconds), [float(a) for a in acceptance], n)


def _interruptible(fn, *args, cancel):
    """Run a long native call (prompt processing) in a worker thread so the main thread keeps
    handling signals: Ctrl-C (or a signal handler calling ``Engine.cancel``) asks the native call
    to stop at its next chunk; KeyboardInterrupt is re-raised once it has."""
    if threading.current_thread() is not threading.main_thread():
        return fn(*args)
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = fn(*args)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=run, name="mtprun-prefill", daemon=True)
    worker.start()
    interrupted = None
    while worker.is_alive():
        try:
            worker.join(0.05)
        except KeyboardInterrupt as exc:
            cancel()
            interrupted = exc
    if "error" in box:
        raise box["error"]
    if interrupted is not None:
        raise interrupted
    return box.get("value")


def gpu_free_bytes() -> int | None:
    """Free memory of the first GPU llama.cpp sees (ggml_backend_dev_memory), or None without one."""
    for dev in core.devices():
        if dev["type"] in ("gpu", "igpu"):
            return int(dev["free"])
    return None


def dry_run(config: ModelConfig) -> MeasuredMemory:
    """What loading ``config`` would allocate, from llama.cpp's no_alloc dry run (the way its -fit
    measures: no weights are read), with the engine's contexts. Run it on files an Engine has
    already accepted: llama.cpp's own loader is all that checks them here."""
    flash = -1 if config.flash_attn is None else int(config.flash_attn)
    try:
        rows = core.memory_dry_run(
            os.fspath(config.path), os.fspath(config.draft_path) if config.draft_path is not None else "",
            config.n_ctx, config.n_batch, config.n_gpu_layers, flash, config.mtp, config.n_draft_capacity,
            _placement_params(config.placement),
        )
    except core.CoreError as exc:
        raise _error(exc) from None
    return measured(rows)


def rpc_supported() -> bool:
    """Whether the installed llama.cpp was built with RPC support (GGML_RPC=ON)."""
    return bool(core.rpc_supported())


def check_placement(placement: Placement) -> None:
    """Fail early (DeviceError, naming the rebuild) when RPC servers are asked for and the installed
    llama.cpp has no RPC support; cheap, so callers run it before downloading or loading anything."""
    if placement.rpc and not core.rpc_supported():
        raise DeviceError(core.rpc_rebuild_hint())


def _placement_params(placement: Placement):
    """The native placement (a nanobind-bound struct) of a validated Placement."""
    p = core.PlacementParams()
    p.rpc = list(placement.rpc)
    p.devices = list(placement.devices)
    p.devices_draft = list(placement.devices_draft)
    p.tensor_split = [float(x) for x in placement.tensor_split]
    p.split_mode = -1 if placement.split_mode is None else SPLIT_MODES.index(placement.split_mode)
    p.rpc_timeout_ms = max(1, int(placement.rpc_timeout * 1000))
    return p
