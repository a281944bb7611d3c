"""Options shared by commands, declared once (llama-cli names where they exist), and the one place
that turns their values into validated config objects.

Each option is an ``Annotated`` alias; the options several commands share are grouped into frozen
dataclasses (:class:`ModelSource`, :class:`Runtime`, :class:`Sampling`, :class:`Speculation`,
:class:`Template`, :class:`Display`). A command takes a group as one parameter and is wrapped
with :func:`command`, which shows Typer the group's fields as options and hands the command the
group built from them::

    @command
    def chat(opts: Generate, model_arg: ModelArg = None) -> None:  # opts.sampling.temp, ...

:func:`settings` builds the ``GenerationConfig`` and checks the ``ModelConfig`` options of
``run``/``chat`` before any model is resolved; :func:`model_config` builds every ``ModelConfig``.

Hub options are passed to ``mtprun.hub`` with ``offline=offline or None``, so that
``HF_HUB_OFFLINE=1`` applies when the flag is absent.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional, get_type_hints

import typer

from ..config import GenerationConfig, ModelConfig, Placement, SamplingConfig, SpecConfig
from ..errors import InvalidInputError

MODEL = "Model"
SAMPLING = "Sampling"
SPEC = "Speculative decoding (MTP)"
CHAT = "Chat template"
OUTPUT = "Output"

# --- model -----------------------------------------------------------------------------------------
ModelArg = Annotated[Optional[str], typer.Argument(metavar="MODEL", help="GGUF model file (same as -m).", show_default=False)]
ModelPathOpt = Annotated[
    Optional[str],
    typer.Option("-m", "--model", metavar="PATH", help="GGUF model file.", rich_help_panel=MODEL),
]
DraftPathOpt = Annotated[
    Optional[str],
    typer.Option(
        "-md", "--model-draft", metavar="PATH",
        help="MTP drafter sidecar GGUF (mtp-*.gguf, e.g. for Gemma 4) when it is not embedded in the model.",
        rich_help_panel=MODEL,
    ),
]
DemoOpt = Annotated[
    bool,
    typer.Option(
        "--demo",
        help=(
            "Use a small synthetic MTP model, built on first use and cached (each reply recites a fixed passage). "
            "Its template's thinking is off unless --chat-template-kwargs says otherwise."
        ),
        rich_help_panel=MODEL,
    ),
]
DEMO_TEMPLATE_KWARGS = {"enable_thinking": False}
CtxSizeOpt = Annotated[int, typer.Option("-c", "--ctx-size", metavar="N", help="Context size in tokens (0: the model's training context).", rich_help_panel=MODEL)]
ThreadsOpt = Annotated[Optional[int], typer.Option("-t", "--threads", metavar="N", help="CPU threads (default: the number of physical cores).", rich_help_panel=MODEL)]
GpuLayersOpt = Annotated[int, typer.Option("-ngl", "--n-gpu-layers", metavar="N", help="Layers to offload to the GPU (-1: all).", rich_help_panel=MODEL)]
VerboseOpt = Annotated[bool, typer.Option("--verbose", help="Show llama.cpp's own log and the full statistics table.", rich_help_panel=OUTPUT)]
ColorOpt = Annotated[Optional[bool], typer.Option("--color/--no-color", help="Colour output (default: when writing to a terminal).", show_default=False, rich_help_panel=OUTPUT)]

# --- Hugging Face Hub (run, chat, info, download) -------------------------------------------------
HUB_PANEL = "Hugging Face Hub"
SPEC_HELP = (
    "Model on the Hugging Face Hub, as in llama.cpp's -hf: OWNER/NAME[:QUANT], e.g. "
    "unsloth/gemma-4-12b-it-GGUF:UD-Q4_K_XL. Without a quant: Q4_K_M, else Q8_0, else the first model file."
)

HfSpecArg = Annotated[str, typer.Argument(metavar="OWNER/NAME[:QUANT]", help=SPEC_HELP, show_default=False)]
HfRepoOpt = Annotated[
    Optional[str],
    typer.Option("-hf", "--hf-repo", metavar="OWNER/NAME[:QUANT]", help=SPEC_HELP + " Its mtp-*.gguf drafter sidecar is fetched too.", rich_help_panel=HUB_PANEL),
]
RevisionOpt = Annotated[
    Optional[str],
    typer.Option("--revision", help="Branch, tag or commit of the repository (default: main).", rich_help_panel=HUB_PANEL),
]
OfflineOpt = Annotated[
    bool,
    typer.Option(
        "--offline",
        help="Use only what is already downloaded; no network (same as HF_HUB_OFFLINE=1).",
        rich_help_panel=HUB_PANEL,
    ),
]
LocalDirOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--local-dir",
        help="Put the files in this folder (like `hf download --local-dir`) instead of the shared Hugging Face cache.",
        file_okay=False,
        rich_help_panel=HUB_PANEL,
    ),
]
NoMtpSidecarOpt = Annotated[
    bool,
    typer.Option("--no-mtp", help="Do not fetch the MTP sidecar (mtp-*.gguf).", rich_help_panel=HUB_PANEL),
]
MmprojOpt = Annotated[
    bool,
    typer.Option("--mmproj", help="Also fetch the multimodal projector (mmproj-*.gguf).", rich_help_panel=HUB_PANEL),
]
IncludeOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--include",
        metavar="PATTERN",
        help="Also fetch the repository files matching this glob (repeatable), as in `hf download --include`.",
        rich_help_panel=HUB_PANEL,
    ),
]

# --- sampling (llama-cli defaults) -----------------------------------------------------------------
NPredictOpt = Annotated[
    Optional[int],
    typer.Option("-n", "--n-predict", metavar="N", help="Tokens to generate at most (-1, the default: until end of text or a full context).", show_default=False, rich_help_panel=SAMPLING),
]
TempOpt = Annotated[float, typer.Option("--temp", metavar="T", help="Temperature (0: greedy).", rich_help_panel=SAMPLING)]
TopKOpt = Annotated[int, typer.Option("--top-k", metavar="N", help="Top-k sampling (0: off).", rich_help_panel=SAMPLING)]
TopPOpt = Annotated[float, typer.Option("--top-p", metavar="P", help="Top-p sampling (1.0: off).", rich_help_panel=SAMPLING)]
MinPOpt = Annotated[float, typer.Option("--min-p", metavar="P", help="Min-p sampling (0.0: off).", rich_help_panel=SAMPLING)]
RepeatPenaltyOpt = Annotated[float, typer.Option("--repeat-penalty", metavar="X", help="Penalty for repeated tokens (1.0: off).", rich_help_panel=SAMPLING)]
PresencePenaltyOpt = Annotated[float, typer.Option("--presence-penalty", metavar="X", help="Presence penalty (0.0: off).", rich_help_panel=SAMPLING)]
SeedOpt = Annotated[int, typer.Option("-s", "--seed", metavar="N", help="Random seed (-1: a fresh one each time).", rich_help_panel=SAMPLING)]

# --- speculation -----------------------------------------------------------------------------------


class SpecType(str, Enum):
    draft_mtp = "draft-mtp"
    none = "none"


SpecDraftNMaxOpt = Annotated[
    str,
    typer.Option(
        "--spec-draft-n-max", metavar="auto|auto:N|N",
        help="Draft tokens per step: auto (the default) picks 0..6 each step from what it measures on this machine "
             "(0 is a plain step); auto:N picks 0..N; a number N always drafts N.",
        rich_help_panel=SPEC,
    ),
]
DraftPMinOpt = Annotated[
    float,
    typer.Option("--draft-p-min", metavar="P", help="Stop drafting when the head's top probability falls below P.", rich_help_panel=SPEC),
]
NoMtpOpt = Annotated[bool, typer.Option("--no-mtp", help="Plain decoding: do not load or use MTP layers.", rich_help_panel=SPEC)]
SpecTypeOpt = Annotated[
    Optional[SpecType],
    typer.Option("--spec-type", help="llama.cpp spelling: draft-mtp (default) or none (same as --no-mtp).", show_default=False, rich_help_panel=SPEC),
]
RequireMtpOpt = Annotated[bool, typer.Option("--require-mtp", help="Fail (exit 3) instead of decoding plainly when the model has no MTP.", rich_help_panel=SPEC)]

# --- chat template ---------------------------------------------------------------------------------
SystemPromptOpt = Annotated[Optional[str], typer.Option("-sys", "--system-prompt", metavar="TEXT", help="System prompt.", rich_help_panel=CHAT)]
ChatTemplateFileOpt = Annotated[
    Optional[Path],
    typer.Option("--chat-template-file", metavar="FILE", help="Jinja chat template to use instead of the model's.", rich_help_panel=CHAT),
]
ChatTemplateKwargsOpt = Annotated[
    Optional[str],
    typer.Option("--chat-template-kwargs", metavar="JSON", help="""Extra template variables, e.g. '{"enable_thinking": false}'.""", rich_help_panel=CHAT),
]


# --- devices (llama-cli's names and meanings) -------------------------------------------------------
DEVICES = "Devices (llama.cpp RPC servers, several GPUs)"
RpcOpt = Annotated[
    Optional[str],
    typer.Option(
        "--rpc", metavar="HOST:PORT[,...]",
        help="rpc-servers to run the model on (llama.cpp's RPC backend; their devices are RPC0, RPC1, ... in this order). "
             "Needs llama-cpp-python built with CMAKE_ARGS=\"-DGGML_RPC=on\".",
        rich_help_panel=DEVICES,
    ),
]
DeviceOpt = Annotated[
    Optional[str],
    typer.Option("-dev", "--device", metavar="DEV[,DEV...]", help="Devices to offload to (none: no offload; default: RPC servers, then GPUs).", rich_help_panel=DEVICES),
]
DeviceDraftOpt = Annotated[
    Optional[str],
    typer.Option(
        "-devd", "--device-draft", metavar="DEV[,DEV...]",
        help="Where the MTP head runs: a sidecar drafter's devices, or the one device for the model's own MTP layers (default: with the target).",
        rich_help_panel=DEVICES,
    ),
]
TensorSplitOpt = Annotated[
    Optional[str],
    typer.Option("-ts", "--tensor-split", metavar="N0,N1,...", help="Proportion of the model per device, e.g. 3,1 (default: by free memory).", rich_help_panel=DEVICES),
]
SplitModeOpt = Annotated[
    Optional[str],
    typer.Option("-sm", "--split-mode", metavar="none|layer|row|tensor", help="How to split the model across devices (default: layer).", show_default=False, rich_help_panel=DEVICES),
]

# --- groups ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSource:
    """-m / -hf (--revision, --offline) / --demo, and -md."""

    model: ModelPathOpt = None
    hf_repo: HfRepoOpt = None
    revision: RevisionOpt = None
    offline: OfflineOpt = False
    model_draft: DraftPathOpt = None
    demo: DemoOpt = False

    def with_argument(self, model_arg: str | None) -> ModelSource:
        """The MODEL argument (chat, info) as -m."""
        if model_arg is None:
            return self
        if self.model is not None:
            raise InvalidInputError("give the model once: as an argument or with -m")
        return dataclasses.replace(self, model=model_arg)

    @property
    def given(self) -> bool:
        return self.model is not None or self.hf_repo is not None or self.demo


@dataclass(frozen=True)
class Devices:
    """--rpc, -dev, -devd, -ts, -sm."""

    rpc: RpcOpt = None
    device: DeviceOpt = None
    device_draft: DeviceDraftOpt = None
    tensor_split: TensorSplitOpt = None
    split_mode: SplitModeOpt = None

    def placement(self) -> Placement:
        """Validated; fails at once (before any model is resolved) when --rpc is given and the
        installed llama.cpp has no RPC support."""
        from ..engine import check_placement

        p = _invalid_value(lambda: Placement.parse(rpc=self.rpc, device=self.device, device_draft=self.device_draft,
                                                   tensor_split=self.tensor_split, split_mode=self.split_mode))
        check_placement(p)
        return p


@dataclass(frozen=True)
class Runtime:
    """-c, -t, -ngl and the devices."""

    ctx_size: CtxSizeOpt = 4096
    threads: ThreadsOpt = None
    n_gpu_layers: GpuLayersOpt = -1
    devices: Devices = Devices()


@dataclass(frozen=True)
class Sampling:
    n_predict: NPredictOpt = None
    temp: TempOpt = 0.8
    top_k: TopKOpt = 40
    top_p: TopPOpt = 0.95
    min_p: MinPOpt = 0.05
    repeat_penalty: RepeatPenaltyOpt = 1.0
    presence_penalty: PresencePenaltyOpt = 0.0
    seed: SeedOpt = -1


@dataclass(frozen=True)
class Speculation:
    spec_draft_n_max: SpecDraftNMaxOpt = None  # None: what `mtprun bench --save` found, else DEFAULT_N_MAX
    draft_p_min: DraftPMinOpt = 0.0
    no_mtp: NoMtpOpt = False
    spec_type: SpecTypeOpt = None
    require_mtp: RequireMtpOpt = False

    @property
    def mtp(self) -> bool:
        """Whether MTP speculation is asked for, rejecting contradictory switches."""
        off = self.no_mtp or self.spec_type == SpecType.none
        if self.no_mtp and self.spec_type == SpecType.draft_mtp:
            raise InvalidInputError("--no-mtp contradicts --spec-type draft-mtp")
        if off and self.require_mtp:
            raise InvalidInputError("--require-mtp contradicts " + ("--no-mtp" if self.no_mtp else "--spec-type none"))
        return not off


@dataclass(frozen=True)
class Template:
    """-sys, --chat-template-file, --chat-template-kwargs."""

    system_prompt: SystemPromptOpt = None
    chat_template_file: ChatTemplateFileOpt = None
    chat_template_kwargs: ChatTemplateKwargsOpt = None

    @property
    def given(self) -> bool:
        return self.system_prompt is not None or self.chat_template_file is not None or self.chat_template_kwargs is not None


@dataclass(frozen=True)
class Display:
    color: ColorOpt = None
    verbose: VerboseOpt = False

    def output(self):
        from .ui import Output

        return Output(color=self.color, verbose=self.verbose)


@dataclass(frozen=True)
class Generate:
    """Every option ``run`` and ``chat`` share."""

    source: ModelSource
    template: Template
    sampling: Sampling
    spec: Speculation
    runtime: Runtime
    display: Display


GROUPS = (ModelSource, Devices, Runtime, Sampling, Speculation, Template, Display, Generate)

Builder = Callable[[dict[str, Any]], Any]


def _expand(kind: type) -> tuple[list[inspect.Parameter], Builder]:
    """A group's options as parameters, and the function that builds the group from their values."""
    hints = get_type_hints(kind, include_extras=True)
    params: list[inspect.Parameter] = []
    parts: dict[str, Builder] = {}
    for f in dataclasses.fields(kind):
        if hints[f.name] in GROUPS:
            sub, parts[f.name] = _expand(hints[f.name])
            params += sub
        else:
            params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=hints[f.name], default=f.default))
            parts[f.name] = lambda values, n=f.name: values.pop(n)
    return params, lambda values: kind(**{name: build(values) for name, build in parts.items()})


def command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Let ``fn`` take option groups: each parameter typed with a group dataclass is shown to Typer
    as the group's fields (their ``Annotated`` options and defaults; nested groups too) and passed
    to ``fn`` as the group built from them. Plain Python: the wrapper's ``__signature__`` is what
    Typer reads."""
    hints = get_type_hints(fn, include_extras=True)
    params: list[inspect.Parameter] = []
    groups: dict[str, Builder] = {}
    for p in inspect.signature(fn).parameters.values():
        kind = hints.get(p.name, p.annotation)
        if kind in GROUPS:
            sub, groups[p.name] = _expand(kind)
            params += sub
        else:
            params.append(p.replace(annotation=kind, kind=inspect.Parameter.KEYWORD_ONLY))
    seen = [p.name for p in params]
    if len(seen) != len(set(seen)):
        raise TypeError(f"{fn.__name__}: an option is declared twice")

    @functools.wraps(fn)
    def wrapper(**kwargs: Any) -> Any:
        for name, build in groups.items():
            kwargs[name] = build(kwargs)
        return fn(**kwargs)

    del wrapper.__wrapped__  # Typer must read the signature below, not fn's
    wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper


# --- options -> config objects (the one place) -----------------------------------------------------


def template_kwargs(text: str | None, *, demo: bool) -> dict:
    """``--chat-template-kwargs``, or the demo model's default (thinking off)."""
    from ..chat import parse_template_kwargs

    if text is None and demo:
        return dict(DEMO_TEMPLATE_KWARGS)
    return parse_template_kwargs(text)


def _invalid_value(build: Callable[[], Any]) -> Any:
    try:
        return build()
    except InvalidInputError as exc:
        raise InvalidInputError(f"invalid option value: {exc}") from None


def generation_config(sampling: Sampling, *, mtp: bool, n_max: str, p_min: float) -> GenerationConfig:
    """Validated generation settings (raises InvalidInputError naming the option)."""
    s = sampling
    if s.seed < -1:
        raise InvalidInputError(f"--seed must be -1 (random) or a non-negative integer, got {s.seed}")
    return _invalid_value(lambda: GenerationConfig(
        max_tokens=-1 if s.n_predict is None else s.n_predict,
        sampling=SamplingConfig(
            temperature=s.temp, top_k=s.top_k, top_p=s.top_p, min_p=s.min_p, repeat_penalty=s.repeat_penalty,
            presence_penalty=s.presence_penalty, seed=None if s.seed == -1 else s.seed,
        ),
        spec=SpecConfig.parse(n_max, enabled=mtp, p_min=p_min),
    ))


def model_config(runtime: Runtime, *, mtp: bool, n_max: int, verbose: bool) -> ModelConfig:
    """Validated runtime options for the model; the path (a placeholder here) is filled in with
    ``dataclasses.replace`` once the model is known. ``n_max`` is the largest draft length any
    generation may use (it sizes the engine's draft capacity)."""
    return _invalid_value(lambda: ModelConfig(
        path=Path(), n_ctx=runtime.ctx_size, n_threads=runtime.threads, n_gpu_layers=runtime.n_gpu_layers, mtp=mtp,
        n_draft_capacity=n_max, verbose=verbose, placement=runtime.devices.placement(),
    ))


# --spec-draft-n-max when neither given nor saved: the adaptive draft length
DEFAULT_N_MAX = "auto"


@dataclass(frozen=True)
class Settings:
    """What ``run`` and ``chat`` generate with, checked before any model is resolved."""

    mtp: bool
    require_mtp: bool
    gen: GenerationConfig
    n_max_given: bool  # --spec-draft-n-max was typed (else a saved setting may apply)
    template_kwargs: dict
    runtime: Runtime
    verbose: bool

    def model_config(self, capacity: int = 0) -> ModelConfig:
        """``capacity``: the largest draft length a saved setting may use."""
        return model_config(self.runtime, mtp=self.mtp, n_max=max(self.gen.spec.n_max, capacity), verbose=self.verbose)


def settings(opts: Generate) -> Settings:
    """Every option of ``run``/``chat`` that needs no model, validated (InvalidInputError naming it)."""
    spec, display = opts.spec, opts.display
    mtp = spec.mtp
    n_max = DEFAULT_N_MAX if spec.spec_draft_n_max is None else spec.spec_draft_n_max
    gen = generation_config(opts.sampling, mtp=mtp, n_max=n_max, p_min=spec.draft_p_min)
    kwargs = template_kwargs(opts.template.chat_template_kwargs, demo=opts.source.demo)
    out = Settings(mtp, spec.require_mtp, gen, spec.spec_draft_n_max is not None, kwargs, opts.runtime, display.verbose)
    out.model_config()  # -c, -t, -ngl: checked now, not after a download
    return out
