"""Options shared by commands, declared once as ``Annotated`` aliases (llama-cli names where they exist),
and the helpers that turn their values into validated config objects.

Every command spells and documents an option the same way, e.g.::

    def run(hf_repo: HfRepoOpt = None, revision: RevisionOpt = None, offline: OfflineOpt = False, ...)

Hub options are passed to ``mtprun.hub`` with ``offline=offline or None``, so that
``HF_HUB_OFFLINE=1`` applies when the flag is absent.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

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


def template_kwargs(text: str | None, *, demo: bool) -> dict:
    """``--chat-template-kwargs``, or the demo model's default (thinking off)."""
    from ..chat import parse_template_kwargs

    if text is None and demo:
        return dict(DEMO_TEMPLATE_KWARGS)
    return parse_template_kwargs(text)


def mtp_wanted(no_mtp: bool, spec_type: SpecType | None, require_mtp: bool) -> bool:
    """Whether MTP speculation is asked for, rejecting contradictory switches."""
    off = no_mtp or spec_type == SpecType.none
    if no_mtp and spec_type == SpecType.draft_mtp:
        raise InvalidInputError("--no-mtp contradicts --spec-type draft-mtp")
    if off and require_mtp:
        raise InvalidInputError("--require-mtp contradicts " + ("--no-mtp" if no_mtp else "--spec-type none"))
    return not off


def generation_config(
    *, n_predict: int | None, temp: float, top_k: int, top_p: float, min_p: float, repeat_penalty: float,
    presence_penalty: float, seed: int, mtp: bool, n_max: str, p_min: float,
) -> GenerationConfig:
    """Validated generation settings (raises InvalidInputError naming the option)."""
    n_predict = -1 if n_predict is None else n_predict
    if seed < -1:
        raise InvalidInputError(f"--seed must be -1 (random) or a non-negative integer, got {seed}")
    try:
        sampling = SamplingConfig(
            temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p, repeat_penalty=repeat_penalty,
            presence_penalty=presence_penalty, seed=None if seed == -1 else seed,
        )
        spec = SpecConfig.parse(n_max, enabled=mtp, p_min=p_min)
        return GenerationConfig(max_tokens=n_predict, sampling=sampling, spec=spec)
    except InvalidInputError as exc:
        raise InvalidInputError(f"invalid option value: {exc}") from None


def model_config(*, ctx_size: int, threads: int | None, n_gpu_layers: int, mtp: bool, n_max: int, verbose: bool,
                 placement: Placement | None = None) -> ModelConfig:
    """Validated runtime options for the model, checked before any model is resolved; the path
    (a placeholder here) is filled in with ``dataclasses.replace`` once the model is known.
    ``n_max`` is the run's draft-length ceiling (``GenerationConfig.spec.n_max``; 6 for ``auto``)."""
    try:
        return ModelConfig(
            path=Path(), n_ctx=ctx_size, n_threads=threads, n_gpu_layers=n_gpu_layers, mtp=mtp,
            n_draft_capacity=n_max, verbose=verbose, placement=placement or Placement(),
        )
    except InvalidInputError as exc:
        raise InvalidInputError(f"invalid option value: {exc}") from None


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


def placement(*, rpc: str | None, device: str | None, device_draft: str | None, tensor_split: str | None,
              split_mode: str | None) -> Placement:
    """Validated device options; fails at once (before any model is resolved) when --rpc is given
    and the installed llama.cpp has no RPC support."""
    from ..engine import check_placement

    try:
        p = Placement.parse(rpc=rpc, device=device, device_draft=device_draft, tensor_split=tensor_split, split_mode=split_mode)
    except InvalidInputError as exc:
        raise InvalidInputError(f"invalid option value: {exc}") from None
    check_placement(p)
    return p
