"""From the model options (-m / -hf / --demo, -md) to a loaded engine, shared by run/chat/info."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ..config import ModelConfig
from ..errors import InvalidInputError, ModelError
from .ui import Output


@dataclass(frozen=True)
class ModelChoice:
    path: Path
    draft_path: Path | None
    label: str  # how the model is named to the user (file name, hub spec, or the demo label)
    synthetic: bool = False


def choose_model(out: Output, *, model: Path | None, hf: str | None, draft: Path | None, demo: bool) -> ModelChoice:
    """Resolve the model options to local files (downloading or building the demo if needed)."""
    given = [name for name, v in (("-m", model), ("-hf", hf), ("--demo", demo)) if v]
    if not given:
        raise InvalidInputError("no model given: use -m PATH, -hf REPO[:QUANT] or --demo")
    if len(given) > 1:
        raise InvalidInputError(f"give only one model source, not {' and '.join(given)}")
    if draft is not None and not draft.is_file():
        raise ModelError(f"draft model file not found: {str(draft)!r}")
    if model is not None:
        if not model.is_file():
            what = "is a directory, not a GGUF file" if model.is_dir() else "not found"
            raise ModelError(f"model file {what}: {str(model)!r}")
        return ModelChoice(model, draft, model.name)
    if demo:
        from ..demo import DEMO_LABEL, ensure_demo_model

        path = ensure_demo_model(on_build=lambda p: out.info(f"building the synthetic demo model (first use) in {p.parent} ..."))
        return ModelChoice(path, draft, DEMO_LABEL, synthetic=True)
    return _from_hub(out, str(hf), draft)


def _from_hub(out: Output, spec: str, draft: Path | None) -> ModelChoice:
    from .. import hub

    paths = hub.resolve_and_download(spec, progress=out.info)  # adapted to the hub API when it lands
    sidecar = draft if draft is not None else paths.mtp
    return ModelChoice(paths.model, sidecar, spec)


def open_engine(out: Output, choice: ModelChoice, base: ModelConfig, *, require_mtp: bool = False, quiet: bool = False):
    """Load the model with the runtime options of ``base``; warn (or fail with --require-mtp) when MTP was asked for but is not available.

    ``quiet``: no warnings (for ``info``, which reports the same facts)."""
    from ..engine import Engine

    cfg = replace(base, path=choice.path, draft_path=choice.draft_path)
    if choice.synthetic and not quiet:
        out.warn(f"using the {choice.label}: its text is meaningless, it is for trying mtprun offline")
    eng = Engine(cfg)
    info = eng.info
    if cfg.mtp and not info.mtp_active:
        why = info.mtp_note or "the model has no MTP layers and no drafter sidecar was given"
        if require_mtp:
            eng.close()
            raise ModelError(f"MTP is not available for {choice.label}: {why}")
        if not quiet:
            out.warn(f"MTP is off for {choice.label}: {why}; decoding plainly")
    return eng
