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
import signal
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from ._native import core
from .config import AUTO_CEILING, SPLIT_MODES, GenerationConfig, ModelConfig, Placement, PolicyCosts
from .errors import ContextOverflowError, DeviceError, EngineClosedError, InvalidInputError, ModelError, MtprunError
from .events import GenerationStats, PolicyEstimates, Result, Step, StopReason, TokenPiece
from .memory import DeviceUse, MeasuredMemory, device_usage, measured
from .validate import MIN_CONTEXT, validate_file

__all__ = ["DraftPolicy", "Engine", "ModelInfo", "choose_draft_length"]

def _error(exc: core.CoreError) -> MtprunError:
    """Map a native failure to the library's exception classes."""
    status, message = exc.args
    if status == core.Status.invalid:
        return InvalidInputError(message)
    if status == core.Status.model:
        return ModelError(message)
    if status == core.Status.context:
        return ContextOverflowError(message)
    if status == core.Status.state and "closed" in message:
        return EngineClosedError(message)
    if status == core.Status.device:
        return DeviceError(message)
    return MtprunError(message)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


# The native structs (mtprun._core, bound from csrc/engine.h) share their field names with the
# config and result dataclasses: values cross by name, and only what differs is spelled out.


def _to_native(native_type, config, **values):
    """A native parameter struct from a (validated) config dataclass: the fields they share by
    name, then ``values`` (what needs converting: paths, None defaults, nested structs)."""
    out = native_type()
    for f in fields(config):
        if f.name not in values and hasattr(out, f.name):
            setattr(out, f.name, getattr(config, f.name))
    for name, value in values.items():
        setattr(out, name, value)
    return out


def _from_native(cls, raw, **values):
    """A frozen dataclass from a native struct: the fields they share by name (lists as tuples),
    then ``values``."""
    kwargs = {}
    for f in fields(cls):
        if f.name in values:
            kwargs[f.name] = values[f.name]
        elif hasattr(raw, f.name):
            v = getattr(raw, f.name)
            kwargs[f.name] = tuple(v) if isinstance(v, list) else v
    return cls(**kwargs)


def _model_params(config: ModelConfig, *, n_ctx: int, draft: Path | None):
    return _to_native(
        core.ModelParams, config,
        path=os.fspath(config.path),
        draft_path=os.fspath(draft) if draft is not None else "",
        n_ctx=n_ctx,
        n_threads=config.n_threads or 0,
        flash_attn=-1 if config.flash_attn is None else int(config.flash_attn),
        placement=_placement_params(config.placement),
    )


def _placement_params(placement: Placement):
    """The native placement (``_core.PlacementParams``) of a validated Placement."""
    return _to_native(
        core.PlacementParams, placement,
        rpc=list(placement.rpc), devices=list(placement.devices), devices_draft=list(placement.devices_draft),
        tensor_split=[float(x) for x in placement.tensor_split],
        split_mode=-1 if placement.split_mode is None else SPLIT_MODES.index(placement.split_mode),
        rpc_timeout_ms=max(1, int(placement.rpc_timeout * 1000)),
    )


def rpc_supported() -> bool:
    """Whether the installed llama.cpp was built with RPC support (GGML_RPC=ON)."""
    return bool(core.rpc_supported())


def check_placement(placement: Placement) -> None:
    """Fail early (DeviceError, naming the rebuild) when RPC servers are asked for and the installed
    llama.cpp has no RPC support; cheap, so callers run it before downloading or loading anything."""
    if placement.rpc and not core.rpc_supported():
        raise DeviceError(core.rpc_rebuild_hint())


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
        check_placement(config.placement)
        try:
            self._core = core.Engine(_model_params(config, n_ctx=_context_size(config.n_ctx, header.context_length), draft=draft))
        except core.CoreError as exc:
            raise _error(exc) from None
        raw = self._core.info()
        self.info = _from_native(
            ModelInfo, raw,
            path=path,
            draft_path=draft,
            mtp_kind=raw.mtp_kind.name,
            mtp_note=raw.mtp_note or None,
            chat_template=raw.chat_template or None,
            system_info=raw.system_info.strip(),
            memory=measured(raw.memory),
            devices=device_usage(raw.memory),
        )
        self._busy = threading.Lock()
        self._policy_primed = False  # the policy has costs of its own: set, or measured by a generation

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

    # --- the adaptive policy and the model's state (advanced; tests) ---------------------------
    def set_policy_costs(self, target_seconds_by_batch: Sequence[float], head_seconds: float, *, pin: bool = False) -> None:
        """Give the adaptive draft-length policy its costs (the terms of :class:`PolicyEstimates`):
        ``target_seconds_by_batch[k-1]`` a target pass over k tokens (the last step extrapolated
        to larger batches), ``head_seconds`` one MTP-head decode.

        ``pin=False``: a starting estimate, e.g. the costs ``mtprun bench --save`` measured on this
        machine, so that the first steps of a fresh engine already choose by them; each batch
        size's (and the head's) own measurements replace it as they come in.
        ``pin=True`` (testing): fixed from now on, measurements ignored, so that the policy's
        choices depend on acceptance alone (any unit). Not during a generation."""
        try:
            self._native().set_policy_costs([float(t) for t in target_seconds_by_batch], float(head_seconds), pin)
        except core.CoreError as exc:
            raise _error(exc) from None
        self._policy_primed = True

    def next_logits(self) -> list[float]:
        """The target's logits for the token after the finished conversation (the cache and the
        last generated token), for checking the engine's state against a fresh one (testing).
        The conversation is unchanged."""
        try:
            return self._native().next_logits()
        except core.CoreError as exc:
            raise _error(exc) from None

    def generate(self, prompt: Sequence[int], config: GenerationConfig | None = None) -> Iterator[Step | Result]:
        """Generate after ``prompt`` (token ids): yields a :class:`Step` per speculative step and
        finally one :class:`Result`. Speculation runs when ``config.spec.enabled`` and the model
        has an active MTP head (else plain decoding; ``Result.stats.mtp`` tells which).
        ``config.spec.cost_prior`` starts the adaptive policy of a fresh engine (its first
        speculative generation); later generations keep what it measured."""
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
        if config.spec.enabled and self.info.mtp_active and not self._policy_primed:
            prior = config.spec.cost_prior
            if prior is not None:
                self.set_policy_costs(prior.target_seconds_by_batch, prior.head_seconds)
            self._policy_primed = True  # this generation measures; a later prior would only set it back
        try:
            _interruptible(native.begin, prompt, _gen_params(config, seed), cancel=native.cancel)
        except core.CoreError as exc:
            raise _error(exc) from None

        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        tokens: list[int] = []
        text: list[str] = []
        stop = core.Stop.none
        try:
            while stop == core.Stop.none:
                try:
                    ids, raw, from_draft, n_drafted, n_accepted, stop = native.step()
                except core.CoreError as exc:
                    raise _error(exc) from None
                if stop == core.Stop.eos:
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
            if stop == core.Stop.none:
                # the consumer stopped early (closed the generator): end the native generation
                native.cancel()
                try:
                    native.step()
                except core.CoreError:
                    pass
        text.append(decoder.decode(b"", final=True))  # an incomplete character at the very end
        yield Result("".join(text), tuple(tokens), stop.name, _stats(native.stats()))


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
    """The native generation settings of a validated config."""
    return _to_native(
        core.GenParams, config,
        sampling=_to_native(core.SamplingParams, config.sampling, seed=seed),
        spec=_to_native(core.SpecParams, config.spec),
    )


def _stats(raw) -> GenerationStats:
    return _from_native(GenerationStats, raw, policy=_from_native(PolicyEstimates, raw.policy) if raw.mtp else None)


def choose_draft_length(target_seconds: Sequence[float], head_seconds: float, acceptance: Sequence[float], n_max: int | None = None) -> int:
    """The adaptive policy's choice, a pure function: the draft length n in 0..n_max (0: a plain
    step) maximising E[tokens](n) / cost(n), where E[tokens](n) = 1 + sum_{i<=n} prod_{j<=i} a_j and
    cost(n) = n * head_seconds + target_seconds[n] (``target_seconds[k-1]``: a target pass over k
    tokens; ``acceptance[j-1]``: draft position j's acceptance given the previous ones)."""
    n = len(acceptance) if n_max is None else n_max
    return core.choose_draft_length([float(t) for t in target_seconds], float(head_seconds), [float(a) for a in acceptance], n)


class DraftPolicy:
    """The adaptive draft-length policy an engine runs (``--spec-draft-n-max auto``), on its own:
    fed the times and outcomes of steps by hand, it makes the choices the engine's would. For
    simulating a machine and a text (``mtprun.benchmark.simulate_policy``) and for tests of the
    controller that must not depend on this machine's timing. Times in any one unit."""

    def __init__(self, ceiling: int = AUTO_CEILING) -> None:
        if not 1 <= ceiling <= 64:
            raise InvalidInputError(f"the draft ceiling must be in 1..64, not {ceiling}")
        self.ceiling = ceiling
        self._p = core.Policy(ceiling)

    def set_costs(self, target_seconds_by_batch: Sequence[float], head_seconds: float, *, pin: bool = False) -> None:
        """As :meth:`Engine.set_policy_costs` (checked as :class:`~mtprun.config.PolicyCosts`; at
        most one cost per batch size a 64-token ceiling allows)."""
        costs = PolicyCosts(target_seconds_by_batch, head_seconds)
        if len(costs.target_seconds_by_batch) > 65:
            raise InvalidInputError("policy costs: at most 65 target costs (batch sizes 1..65)")
        self._p.set_costs([float(t) for t in costs.target_seconds_by_batch], float(costs.head_seconds), pin)

    def next(self) -> int:
        """The number of tokens to draft in the next step (0: a plain step)."""
        return self._p.next(self.ceiling)

    def observe(self, n_drafted: int, n_accepted: int, *, step_seconds: float, verify_seconds: float,
                head_decodes: int = 0, head_seconds: float = 0.0, choose_seconds: float = 0.0,
                caller_seconds: float = 0.0, caller_tokens: int = 0) -> None:
        """What the step just taken did, as the engine reports it: it drafted ``n_drafted`` tokens
        of which the first ``n_accepted`` were accepted, its target pass (over n_drafted + 1
        tokens) took ``verify_seconds``, the whole step ``step_seconds``, its MTP-head work
        ``head_seconds``: ``head_decodes`` decodes (give 0 when the draft also caught the head up
        on the positions of the plain steps before it: that time is not one decode's each),
        choosing its n_accepted + 1 tokens from the verify pass's logits ``choose_seconds``, and
        ``caller_seconds`` of ``step_seconds`` were the caller's, handing on the ``caller_tokens``
        tokens of the step before (0: this is a generation's first step)."""
        if not 0 <= n_accepted <= n_drafted <= self.ceiling:
            raise InvalidInputError(f"a step drafts 0..{self.ceiling} tokens and accepts at most those")
        if head_decodes < 0 or caller_tokens < 0:
            raise InvalidInputError("a step makes 0 or more head decodes, after a step of 0 or more tokens")
        self._p.observe(int(n_drafted), int(n_accepted), float(step_seconds), float(verify_seconds),
                        int(head_decodes), float(head_seconds), float(choose_seconds), float(caller_seconds), int(caller_tokens))

    def estimates(self) -> PolicyEstimates:
        """What the policy currently believes (as ``GenerationStats.policy``)."""
        return _from_native(PolicyEstimates, self._p.estimate(self.ceiling))


def _interruptible(fn, *args, cancel):
    """Run a long native call (prompt processing) in a worker thread so the main thread keeps
    handling signals: Ctrl-C (or a signal handler calling ``Engine.cancel``) asks the native call
    to stop at its next chunk; KeyboardInterrupt is raised once it has.

    Nothing leaves this function while the worker is still inside the engine: an exception that
    did (a second Ctrl-C landing between two checks, say) would let the caller close the engine,
    or the interpreter exit, under the running native call, and the process die of SIGSEGV. So
    while the worker runs, Python's default SIGINT handler is replaced by one that only cancels
    (the KeyboardInterrupt is raised after the join), and anything another handler raises is
    held until the worker is done. The worker is no daemon: at exit Python waits for it."""
    if threading.current_thread() is not threading.main_thread():
        return fn(*args)
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = fn(*args)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    interrupted: list[int] = []

    def on_sigint(signum, frame) -> None:
        interrupted.append(signum)
        cancel()

    worker = threading.Thread(target=run, name="mtprun-prefill")
    swap = signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if swap:
        signal.signal(signal.SIGINT, on_sigint)
    held: BaseException | None = None
    try:
        worker.start()
        while True:
            try:
                if not worker.is_alive():
                    break
                worker.join(0.05)
            except BaseException as exc:  # another handler raised: stop the worker, raise it after
                held = held or exc
                cancel()
    finally:
        if swap:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    if "error" in box:
        raise box["error"]
    if held is not None:
        raise held
    if interrupted:
        raise KeyboardInterrupt
    return box.get("value")


def gpu_free_bytes() -> int | None:
    """Free memory of the first GPU llama.cpp sees (ggml_backend_dev_memory), or None without one."""
    for dev in core.devices():
        if dev.type in ("gpu", "igpu"):
            return int(dev.free)
    return None


def dry_run(config: ModelConfig) -> MeasuredMemory:
    """What loading ``config`` would allocate, from llama.cpp's no_alloc dry run (the way its -fit
    measures: no weights are read), with the engine's contexts. Run it on files an Engine has
    already accepted: llama.cpp's own loader is all that checks them here."""
    try:
        rows = core.memory_dry_run(_model_params(config, n_ctx=config.n_ctx, draft=config.draft_path))
    except core.CoreError as exc:
        raise _error(exc) from None
    return measured(rows)
