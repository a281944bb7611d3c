"""Options shared by the commands that take a Hugging Face model (``download``, ``run``, ``chat``).

Declared once as ``Annotated`` aliases so every command spells and documents them the same way:

    def run(hf_repo: HfRepoOpt = None, revision: RevisionOpt = None, offline: OfflineOpt = False, ...)

and passes them to ``mtprun.hub.fetch``/``resolve`` (``offline=offline or None`` so that
``HF_HUB_OFFLINE=1`` applies when the flag is absent).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

HUB_PANEL = "Hugging Face Hub"
SPEC_HELP = (
    "Model on the Hugging Face Hub, as in llama.cpp's -hf: OWNER/NAME[:QUANT], e.g. "
    "unsloth/gemma-4-12b-it-GGUF:UD-Q4_K_XL. Without a quant: Q4_K_M, else Q8_0, else the first model file."
)

HfSpecArg = Annotated[str, typer.Argument(metavar="OWNER/NAME[:QUANT]", help=SPEC_HELP, show_default=False)]
HfRepoOpt = Annotated[
    str | None,
    typer.Option("-hf", "--hf-repo", metavar="OWNER/NAME[:QUANT]", help=SPEC_HELP, rich_help_panel=HUB_PANEL),
]
RevisionOpt = Annotated[
    str | None,
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
    Path | None,
    typer.Option(
        "--local-dir",
        help="Put the files in this folder (like `hf download --local-dir`) instead of the shared Hugging Face cache.",
        file_okay=False,
        rich_help_panel=HUB_PANEL,
    ),
]
NoMtpOpt = Annotated[
    bool,
    typer.Option("--no-mtp", help="Do not fetch the MTP sidecar (mtp-*.gguf).", rich_help_panel=HUB_PANEL),
]
MmprojOpt = Annotated[
    bool,
    typer.Option("--mmproj", help="Also fetch the multimodal projector (mmproj-*.gguf).", rich_help_panel=HUB_PANEL),
]
IncludeOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--include",
        metavar="PATTERN",
        help="Also fetch the repository files matching this glob (repeatable), as in `hf download --include`.",
        rich_help_panel=HUB_PANEL,
    ),
]
