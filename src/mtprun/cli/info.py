"""``mtprun info``: what a model is and how mtprun would run it (MTP, chat template, backend)."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

import typer

from ..config import SpecConfig
from ..errors import InvalidInputError
from ..graft import describe_provenance, graft_provenance
from ..memory import estimate
from . import _options as o
from ._errors import EXIT_CODES_HELP
from ._model import open_engine, resolve_files
from .ui import human_size, human_count

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.", rich_help_panel=o.OUTPUT)]

HELP = f"""Architecture, size, quantization, context, MTP (embedded layers or the sidecar that pairs with the model), chat template and runtime backend of a model, and the memory a run at -c N drafting up to --spec-draft-n-max N will allocate: weights, KV cache, recurrent state, compute buffers, and what MTP adds (what --no-mtp saves).

{EXIT_CODES_HELP}"""


def model_facts(choice, info, header=None) -> dict:
    """Everything ``info`` reports, as plain data (``header``: the file's GGUF header, if read)."""
    if info.mtp_kind == "embedded":
        mtp = "embedded MTP layers"
        if info.n_layer_nextn > 1:
            mtp += f", {info.n_layer_nextn} heads " + ("chained (head i drafts position i)" if info.mtp_chain else "(the first drafts)")
        else:
            mtp += ", 1 head"
    elif info.mtp_kind == "sidecar":
        mtp = f"sidecar {info.draft_path}"
    else:
        mtp = "none"
    template = info.chat_template
    grafted = graft_provenance(header) if header is not None else None
    if grafted:
        mtp += f" (grafted by mtprun from {describe_provenance(grafted)})"
    return {
        "model": choice.label,
        "synthetic": choice.synthetic,
        "path": str(choice.path),
        "size_bytes": choice.path.stat().st_size,  # the file on disk
        "draft_size_bytes": info.draft_path.stat().st_size if info.draft_path else None,
        "weights_bytes": info.size_bytes,  # tensor data llama.cpp loaded
        "architecture": info.arch,
        "description": info.description,
        "name": header.name if header is not None else None,
        "quantization": (header.file_type_name if header is not None else None) or _quantization(info.description),
        "parameters": info.n_params,
        "context_train": info.n_ctx_train,
        "layers": info.n_layer,
        "embedding": info.n_embd,
        "vocab": info.n_vocab,
        "mtp": info.mtp_kind,
        "mtp_detail": mtp,
        "mtp_heads": info.n_layer_nextn,
        "mtp_chain": info.mtp_chain,
        "mtp_active": info.mtp_active,
        "mtp_provenance": grafted,
        "mtp_note": info.mtp_note,
        "draft_path": str(info.draft_path) if info.draft_path else None,
        "chat_template": template is not None,
        "chat_template_thinking": bool(template and "<think>" in template),
        "backend": info.backend,
        "system_info": info.system_info,
        "devices": [d.as_dict() for d in info.devices],
    }


def _quantization(description: str) -> str | None:
    # llama.cpp's model description is "<arch> <size> <file type>", e.g. "qwen35 27B Q4_K - Medium"
    parts = description.split(" ", 2)
    return parts[2] if len(parts) == 3 else None


@o.command
def info(
    source: o.ModelSource,
    display: o.Display,
    devices: o.Devices,
    model_arg: o.ModelArg = None,
    ctx_size: o.CtxSizeOpt = 4096,
    spec_draft_n_max: o.SpecDraftNMaxOpt = "auto",
    json_output: JsonOpt = False,
) -> None:
    out = display.output()
    base = o.model_config(o.Runtime(ctx_size=512, devices=devices), mtp=True, n_max=2, verbose=display.verbose)
    choice = resolve_files(out, source.with_argument(model_arg))
    try:
        n_draft = SpecConfig.parse(spec_draft_n_max).n_max  # auto / auto:N: the ceiling sizes the contexts
    except InvalidInputError:
        n_draft = 0
    if ctx_size < 0 or not 1 <= n_draft <= 32:
        raise InvalidInputError("-c must be >= 0 and --spec-draft-n-max auto, auto:N or N with N within 1..32")
    header = choice.info
    # the memory estimate comes from the headers alone, before anything is loaded
    est = estimate(header, choice.draft_info, n_ctx=ctx_size, n_draft=n_draft)
    with open_engine(out, choice, base, quiet=True) as eng:
        facts = model_facts(choice, eng.info, header)
        in_use = eng.info.devices
    # the files passed the engine's checks: llama.cpp's dry run sizes the compute buffers
    from ..engine import dry_run

    est = est.with_dry_run(dry_run(replace(base, path=choice.path, draft_path=choice.draft_path,
                                           n_ctx=ctx_size, n_draft_capacity=n_draft, mtp=True)))
    facts["memory_estimate"] = est.as_dict()
    if json_output:
        out.json(facts)
        return
    rows = [
        ("model", facts["model"] + (f" ({facts['name']})" if facts["name"] and facts["name"] != facts["model"] else "")),
        ("file", facts["path"]),
        ("size", human_size(facts["size_bytes"]) + (f" (+ {human_size(facts['draft_size_bytes'])} drafter)" if facts["draft_size_bytes"] else "")),
        ("architecture", facts["architecture"]),
        ("quantization", facts["quantization"] or "unknown"),
        ("parameters", human_count(facts["parameters"])),
        ("trained context", f"{facts['context_train']} tokens"),
        ("layers / embedding / vocab", f"{facts['layers']} / {facts['embedding']} / {facts['vocab']}"),
        ("MTP", facts["mtp_detail"] + ("" if facts["mtp_active"] else f" (MTP off: {facts['mtp_note'] or 'not available'})")),
        ("chat template", ("yes" + (", with thinking" if facts["chat_template_thinking"] else "")) if facts["chat_template"] else "none (ChatML fallback)"),
        ("backend", facts["backend"]),
        ("devices in use", devices_text(in_use)),
    ]
    if display.verbose and facts["system_info"]:
        rows.append(("system", facts["system_info"]))
    out.table(facts["model"], rows, to_stdout=True)
    out.table(f"memory estimate at -c {est.n_ctx}, drafting up to {n_draft} (flash attention auto)", memory_rows(est), to_stdout=True)


def memory_rows(est) -> list[tuple[str, str]]:
    """The estimate as table rows (MiB, as llama.cpp logs them)."""
    def mib(n: int) -> str:
        return f"{n / 2**20:,.1f} MiB"

    rows = [
        ("model weights", mib(est.weights)),
        ("KV cache", mib(est.kv) + (f" (of which sliding-window {mib(est.kv_swa)})" if est.kv_swa else "")),
    ]
    if est.recurrent:
        rows.append(("recurrent state", mib(est.recurrent)))
    rows += [
        ("compute buffers", mib(est.compute) + (" (llama.cpp dry run)" if est.compute_source == "llama.cpp" else "")),
        ("plain decoding", mib(est.plain_total)),
        ("MTP head weights", mib(est.mtp_weights)),
    ]
    if est.mtp_snapshots:
        rows.append(("MTP rollback snapshots", mib(est.mtp_snapshots)))
    rows += [
        ("MTP context KV / compute", f"{mib(est.mtp_kv)} / {mib(est.mtp_compute)}"),
        ("with MTP", mib(est.total)),
        ("--no-mtp saves", mib(est.mtp_total)),
    ]
    return rows


def devices_text(devices) -> str:
    """The devices in use, e.g. ``RPC0 (127.0.0.1:50052) 557.0 MiB, RPC1 (...) 549.0 MiB (MTP context 9.1 MiB), CPU 64.0 MiB``."""
    parts = []
    for d in devices:
        text = d.name + (f" ({d.description})" if d.description else "") + f" {d.total / 2**20:,.1f} MiB"
        if d.mtp:
            text += f" (MTP context {d.mtp / 2**20:,.1f} MiB)"
        parts.append(text)
    return ", ".join(parts) or "-"
