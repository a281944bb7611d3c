"""``mtprun graft MODEL --mtp-from DONOR.gguf|-hf OWNER/NAME[:QUANT] [-o OUT]``: add a donor's MTP
layers to a model that has none. A Hub donor is read with range requests: its header and its MTP
tensors only. stdout carries OUT's path (``--json``: one object); the rest goes to stderr."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import graft as g
from .. import hub
from ..hub import ranges
from ..errors import InvalidInputError, ModelError
from . import _options as o
from ._errors import EXIT_CODES_HELP
from .ui import Output, human_size

HELP = f"""Add MTP layers to a GGUF model that has none (e.g. a quant made before MTP), taken from a donor GGUF of the same model: a local file (--mtp-from DONOR.gguf) or one on the Hugging Face Hub (--mtp-from -hf OWNER/NAME[:QUANT]), of which only the header and the MTP tensors are downloaded. MODEL is never modified; OUT appears only when complete.

{EXIT_CODES_HELP}"""

_HF_FLAGS = ("-hf", "--hf-repo")
PathsArg = Annotated[list[str], typer.Argument(metavar="MODEL", help="The GGUF model to add MTP layers to.", show_default=False)]
MtpFromOpt = Annotated[
    Optional[str],
    typer.Option("--mtp-from", metavar="DONOR.gguf | -hf OWNER/NAME[:QUANT]", help="Where the MTP layers come from: a GGUF file, or -hf and a Hub model (only its header and MTP tensors are fetched)."),
]
OutOpt = Annotated[Optional[Path], typer.Option("-o", "--output", metavar="OUT.gguf", help="Output file (default: beside MODEL, -MTP added to its name).")]
ReplaceOpt = Annotated[bool, typer.Option("--replace", help="MODEL already has MTP layers: swap in the donor's.")]
HfDonorOpt = Annotated[
    Optional[str],
    typer.Option("-hf", "--hf-repo", metavar="OWNER/NAME[:QUANT]", help="The donor on the Hugging Face Hub (same as --mtp-from -hf OWNER/NAME[:QUANT]); the quant is chosen as for downloads.", rich_help_panel=o.HUB_PANEL),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]


def graft(
    paths: PathsArg,
    mtp_from: MtpFromOpt = None,
    hf_repo: HfDonorOpt = None,
    output: OutOpt = None,
    replace: ReplaceOpt = False,
    revision: o.RevisionOpt = None,
    offline: o.OfflineOpt = False,
    json_output: JsonOpt = False,
    color: o.ColorOpt = None,
) -> None:
    out = Output(color=color)

    model, donor_file, spec = _sources(paths, mtp_from, hf_repo)
    if not Path(model).is_file():
        raise ModelError(f"{model}: no such file")
    dest = output if output is not None else g.default_output(model)
    remote: ranges.RemoteDonor | None = None
    if spec is not None:
        remote = ranges.open_donor(spec, revision=revision, offline=offline or None)
        donor_path = remote.path
        provenance = remote.provenance
    else:
        if revision is not None:
            raise InvalidInputError("--revision applies to -hf donors only")
        donor_path = Path(donor_file)  # type: ignore[arg-type]
        if not donor_path.is_file():
            raise ModelError(f"donor {donor_path}: no such file")
        provenance = ranges.cache_origin(donor_path) or {"mtp_file": donor_path.name}
    plan = g.plan_graft(model, donor_path, dest, replace=replace, provenance=provenance)
    what = f"{plan.n_mtp} MTP layer(s) ({'+'.join(plan.mtp_types)}, {human_size(plan.donor_bytes)})"
    source = remote.label if remote else str(donor_path)
    out.info(f"grafting {what} from {source} onto {model}" + (f" (replacing its {plan.replaced})" if plan.replaced else ""))
    fetched = 0
    if remote is not None:
        todo = remote.missing(plan.donor_ranges)
        if todo:
            with out.progress("fetching MTP tensors", sum(b - a for a, b in todo)) as update:
                remote.fetch(plan.donor_ranges, progress=lambda d, t: update(d, t))
            if remote.complete and remote.path != donor_path:  # fell back to a full download
                plan = g.plan_graft(model, remote.path, dest, replace=replace, provenance=provenance)
        for note in remote.notes:
            out.warn(note)
        fetched = remote.fetched
        out.info(f"fetched {human_size(fetched)} of {human_size(remote.size)} ({100 * fetched / max(remote.size, 1):.1f}%) of {remote.label}")
    with out.progress(f"writing {Path(dest).name}", plan.out_size) as update:
        g.write_graft(plan, progress=lambda d, t: update(d, t))
    out.info(f"wrote {dest} ({human_size(plan.out_size)}): {plan.n_trunk} layers + {plan.n_mtp} MTP")
    if json_output:
        out.json({
            "output": str(dest),
            "model": str(model),
            "donor": source,
            "mtp_layers": plan.n_mtp,
            "mtp_types": list(plan.mtp_types),
            "mtp_bytes": plan.donor_bytes,
            "replaced": plan.replaced,
            "size_bytes": plan.out_size,
            "fetched_bytes": fetched if remote else None,
            "donor_size_bytes": remote.size if remote else None,
            "provenance": dict(plan.provenance),
        })
    else:
        out.tsv([("output", str(dest))])


def _sources(paths: list[str], mtp_from: str | None, hf_repo: str | None) -> tuple[str, str | None, hub.HfSpec | None]:
    """MODEL, and the donor as a file or a Hub name (``--mtp-from -hf SPEC`` leaves SPEC positional)."""
    if mtp_from in _HF_FLAGS:
        if hf_repo is not None:
            if len(paths) != 1:
                raise InvalidInputError("give one MODEL")
            return paths[0], None, hub.parse_spec(hf_repo)
        if len(paths) != 2:
            raise InvalidInputError("--mtp-from -hf needs a Hub model: mtprun graft MODEL --mtp-from -hf OWNER/NAME[:QUANT]")
        return paths[0], None, hub.parse_spec(paths[1])
    if len(paths) != 1:
        raise InvalidInputError(f"give one MODEL (got {len(paths)} file arguments)")
    if mtp_from is not None and hf_repo is not None:
        raise InvalidInputError("give the donor once: --mtp-from DONOR.gguf or --mtp-from -hf OWNER/NAME[:QUANT]")
    if mtp_from is None and hf_repo is None:
        raise InvalidInputError("say where the MTP layers come from: --mtp-from DONOR.gguf or --mtp-from -hf OWNER/NAME[:QUANT]")
    if hf_repo is not None:
        return paths[0], None, hub.parse_spec(hf_repo)
    return paths[0], mtp_from, None
