"""Hub output shared by the commands that take ``-hf OWNER/NAME[:QUANT]`` (download, run, chat).

``run``/``chat`` call :func:`fetch_model` with their ``_options`` values and hand
``local.model`` / ``local.mtp`` to the engine; ``download`` uses the pieces separately.
"""

from __future__ import annotations

from pathlib import Path

from .. import hub
from .ui import Output, human_size


def fetch_model(
    out: Output,
    spec: str,
    *,
    revision: str | None = None,
    offline: bool = False,
    local_dir: Path | None = None,
    no_mtp: bool = False,
    mmproj: bool = False,
) -> hub.LocalModel:
    """Resolve and download ``spec`` with progress on stderr; say where MTP comes from."""
    plan = hub.resolve(
        hub.parse_spec(spec),
        revision=revision,
        offline=offline or None,  # None: HF_HUB_OFFLINE decides
        want_mtp=not no_mtp,
        want_mmproj=mmproj,
        local_dir=local_dir,
    )
    report_notes(out, plan)
    local = hub.download(plan, local_dir=local_dir, progress=progress_printer(out, plan))
    report_mtp(out, local)
    return local


def render_plan(out: Output, plan: hub.Plan, *, to_stdout: bool = False) -> None:
    """The plan as a table: role, repo path, size, why it was picked."""
    at = f" @ {plan.commit[:12]}" if plan.commit else ""
    source = {"hub": "", "cache": " (offline, from the cache)", "local-dir": " (offline, from the local folder)"}[plan.source]
    rows = [[f.role, f.path, human_size(f.size), f.why] for f in plan.files]
    total = plan.total_size
    rows.append(["", "total", human_size(total) if total is not None else "?", ""])
    out.grid(f"{plan.spec}{at}{source}", ["role", "file", "size", "why"], rows, to_stdout=to_stdout, right=(2,))


def report_notes(out: Output, plan: hub.Plan) -> None:
    for note in plan.notes:
        out.warn(note)
    if plan.gated and not plan.offline:
        out.info(f"{plan.repo} is gated: downloading needs accepted access and a token (`hf auth login` or HF_TOKEN)")


def progress_printer(out: Output, plan: hub.Plan) -> hub.ProgressFn:
    def progress(event: str, f: hub.PlannedFile) -> None:
        if event == "downloading":
            out.info(f"downloading {f.path} ({human_size(f.size)})")
        elif event == "cached" and not plan.offline:
            out.info(f"already downloaded: {f.path}")

    return progress


def report_mtp(out: Output, local: hub.LocalModel) -> None:
    """Say where MTP comes from, or warn that it will be off."""
    source = local.mtp_source
    if source == "sidecar" and local.plan.mtp is not None:
        out.info(f"MTP: drafter {local.plan.mtp.path}")
    elif source == "embedded":
        layers = local.info.nextn_predict_layers if local.info else None
        out.info(f"MTP: layers inside the model ({layers or 'some'} NextN layer(s)); no sidecar needed")
    elif source == "none":
        out.warn(
            f"no MTP drafter for {local.plan.model[0].path}: {local.plan.repo} has no mtp-*.gguf sidecar for it "
            "and the model carries no MTP layers; MTP will be off"
        )
