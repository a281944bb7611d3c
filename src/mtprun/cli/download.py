"""``mtprun download OWNER/NAME[:QUANT]``: show which files a model needs and why, then fetch them.

stdout carries the product: the local paths (or, with ``--dry-run``, the plan); ``--json`` makes
it one JSON object. The plan, progress bars and warnings go to stderr.
"""

from __future__ import annotations

from typing import Annotated

import typer

from .. import hub
from ._errors import run_guarded
from ._options import HfSpecArg, IncludeOpt, LocalDirOpt, MmprojOpt, NoMtpOpt, OfflineOpt, RevisionOpt
from .ui import Output, human_size

DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print the plan (files, sizes, reasons) and stop.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout, for scripts.")]


def download(
    spec: HfSpecArg,
    include: IncludeOpt = None,
    mmproj: MmprojOpt = False,
    no_mtp: NoMtpOpt = False,
    revision: RevisionOpt = None,
    local_dir: LocalDirOpt = None,
    offline: OfflineOpt = False,
    dry_run: DryRunOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Download a GGUF model from the Hugging Face Hub with its MTP sidecar (and, with --mmproj, its projector)."""

    def body() -> None:
        out = Output()
        plan = hub.resolve(
            hub.parse_spec(spec),
            revision=revision,
            offline=offline or None,
            want_mtp=not no_mtp,
            want_mmproj=mmproj,
            include=tuple(include or ()),
            local_dir=local_dir,
        )
        if not as_json:
            render_plan(out, plan, to_stdout=dry_run)
        for note in plan.notes:
            out.warn(note)
        if dry_run:
            if plan.mtp_missing:
                out.info(
                    f"no MTP sidecar (mtp-*.gguf) for {plan.model[0].path}: MTP depends on layers inside the "
                    "model, checked after download"
                )
            if as_json:
                out.json({"plan": plan.as_dict()})
            return

        def progress(event: str, f: hub.PlannedFile) -> None:
            if event == "downloading":
                out.info(f"downloading {f.path} ({human_size(f.size)})")
            elif event == "cached" and not plan.offline:
                out.info(f"already downloaded: {f.path}")

        local = hub.download(plan, local_dir=local_dir, progress=progress)
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
        else:  # one "role<TAB>path" line per file: readable, and never wrapped, so scripts can cut it
            rows = [("model", str(p)) for p in local.parts]
            rows += [(role, str(p)) for role, p in (("mtp", local.mtp), ("mmproj", local.mmproj)) if p is not None]
            rows += [("extra", str(p)) for p in local.extra]
            out.tsv(rows)

    run_guarded(body)


def render_plan(out: Output, plan: hub.Plan, *, to_stdout: bool = False) -> None:
    """The plan as a table: role, repo path, size, why it was picked."""
    at = f" @ {plan.commit[:12]}" if plan.commit else ""
    source = {"hub": "", "cache": " (offline, from the cache)", "local-dir": " (offline, from the local folder)"}[plan.source]
    title = f"{plan.spec}{at}{source}"
    rows = [[f.role, f.path, human_size(f.size), f.why] for f in plan.files]
    total = plan.total_size
    rows.append(["", "total", human_size(total) if total is not None else "?", ""])
    out.grid(title, ["role", "file", "size", "why"], rows, to_stdout=to_stdout, right=(2,))


def report_mtp(out: Output, local: hub.LocalModel) -> None:
    """Say where MTP comes from, or that it will be off."""
    source = local.mtp_source
    if source == "sidecar" and local.mtp is not None:
        out.info(f"MTP: drafter {local.plan.mtp.path if local.plan.mtp else local.mtp.name}")
    elif source == "embedded":
        layers = local.info.nextn_predict_layers if local.info else None
        out.info(f"MTP: layers inside the model ({layers or 'some'} NextN layer(s)); no sidecar needed")
    elif source == "none":
        out.warn(
            f"no MTP drafter for {local.plan.model[0].path}: {local.plan.repo} has no mtp-*.gguf sidecar for it "
            "and the model carries no MTP layers; MTP will be off"
        )
