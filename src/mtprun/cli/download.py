"""``mtprun download OWNER/NAME[:QUANT]``: show which files a model needs and why, then fetch them.

stdout carries the product: ``role<TAB>path`` lines (or, with ``--dry-run``, the plan);
``--json`` makes it one JSON object. The plan, progress bars and warnings go to stderr.
"""

from __future__ import annotations

from typing import Annotated

import typer

from .. import hub
from ._hub import progress_printer, render_plan, report_mtp, report_notes
from ._options import HfSpecArg, IncludeOpt, LocalDirOpt, MmprojOpt, NoMtpSidecarOpt, OfflineOpt, RevisionOpt
from .ui import Output

DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print the plan (files, sizes, reasons) and stop.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout, for scripts.")]


def download(
    spec: HfSpecArg,
    include: IncludeOpt = None,
    mmproj: MmprojOpt = False,
    no_mtp: NoMtpSidecarOpt = False,
    revision: RevisionOpt = None,
    local_dir: LocalDirOpt = None,
    offline: OfflineOpt = False,
    dry_run: DryRunOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Download a GGUF model from the Hugging Face Hub with its MTP sidecar (and, with --mmproj, its projector)."""

    out = Output()
    plan = hub.resolve(
        hub.parse_spec(spec),
        revision=revision,
        offline=offline or None,  # None: HF_HUB_OFFLINE decides
        want_mtp=not no_mtp,
        want_mmproj=mmproj,
        include=tuple(include or ()),
        local_dir=local_dir,
    )
    if not as_json:
        render_plan(out, plan, to_stdout=dry_run)
    report_notes(out, plan)
    if dry_run:
        if plan.mtp_missing:
            out.info(
                f"no MTP sidecar (mtp-*.gguf) for {plan.model[0].path}: MTP depends on layers inside the "
                "model, checked after download"
            )
        if as_json:
            out.json({"plan": plan.as_dict()})
        return

    local = hub.download(plan, local_dir=local_dir, progress=progress_printer(out, plan))
    report_mtp(out, local)
    if as_json:
        out.json(
            {
                "plan": plan.as_dict(),
                "local": local.paths(),
                "mtp": local.mtp_source,
                "model_info": local.info.as_dict() if local.info else None,
            }
        )
        return
    # one "role<TAB>path" line per file: readable, never wrapped, so scripts can `cut -f2`
    rows = [("model", str(p)) for p in local.parts]
    rows += [(role, str(p)) for role, p in (("mtp", local.mtp), ("mmproj", local.mmproj)) if p is not None]
    rows += [("extra", str(p)) for p in local.extra]
    out.tsv(rows)
