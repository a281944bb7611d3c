"""Hub output for ``download``: the plan as a table, and the notes of :mod:`mtprun.resolve`
(planner notes, progress, where MTP comes from) rendered as ``run``/``chat`` render them."""

from __future__ import annotations

from .. import hub
from ..resolve import hub_drafter, hub_plan_notes, hub_progress
from ._model import render_note
from .ui import Output, human_size


def render_plan(out: Output, plan: hub.Plan, *, to_stdout: bool = False) -> None:
    """The plan as a table: role, repo path, size, why it was picked."""
    at = f" @ {plan.commit[:12]}" if plan.commit else ""
    source = {"hub": "", "cache": " (offline, from the cache)", "local-dir": " (offline, from the local folder)"}[plan.source]
    rows = [[f.role, f.path, human_size(f.size), f.why] for f in plan.files]
    total = plan.total_size
    rows.append(["", "total", human_size(total) if total is not None else "?", ""])
    out.grid(f"{plan.spec}{at}{source}", ["role", "file", "size", "why"], rows, to_stdout=to_stdout, right=(2,))


def report_notes(out: Output, plan: hub.Plan) -> None:
    for note in hub_plan_notes(plan):
        render_note(out, note)


def progress_printer(out: Output, plan: hub.Plan) -> hub.ProgressFn:
    return hub_progress(plan, lambda note: render_note(out, note))


def report_mtp(out: Output, local: hub.LocalModel) -> None:
    """Say where MTP comes from, or warn that it will be off (the sidecar is not judged: nothing is loaded)."""
    for note in hub_drafter(local, judge=False)[2]:
        render_note(out, note)
