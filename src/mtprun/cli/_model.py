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


def _path(value: str | Path | None, what: str) -> Path | None:
    if value is None:
        return None
    if isinstance(value, str) and not value.strip():
        raise InvalidInputError(f"{what}: the path is empty")
    return Path(value)


def _is_file(path: Path, what: str) -> bool:
    """Whether ``path`` is a regular file; a path the system cannot even look up (too long, ...)
    is a model file problem (exit 3), not an internal error."""
    try:
        if path.is_file():
            return True
        if path.is_dir():
            raise ModelError(f"{what} is a directory, not a GGUF file: {str(path)[:200]!r}")
        if path.exists():
            raise ModelError(f"{what} is not a regular file: {str(path)[:200]!r}")
        return False
    except OSError as exc:
        raise ModelError(f"cannot open {what} {str(path)[:200]!r}...: {exc.strerror or exc}") from None


def choose_model(
    out: Output, *, model: str | Path | None, hf: str | None, draft: str | Path | None, demo: bool, mtp: bool = True,
    revision: str | None = None, offline: bool = False,
) -> ModelChoice:
    """Resolve the model options to local files (downloading or building the demo if needed).

    ``mtp``: whether a drafter sidecar is wanted (looked up beside a local model, fetched with -hf)."""
    model = _path(model, "-m/--model")
    draft = _path(draft, "-md/--model-draft")
    given = [name for name, v in (("-m", model), ("-hf", hf), ("--demo", demo)) if v]
    if not given:
        raise InvalidInputError("no model given: use -m PATH, -hf OWNER/NAME[:QUANT] or --demo")
    if len(given) > 1:
        raise InvalidInputError(f"give only one model source, not {' and '.join(given)}")
    if (revision is not None or offline) and hf is None:
        raise InvalidInputError("--revision and --offline apply to -hf models only")
    if draft is not None and not mtp:
        out.warn(f"MTP is off: the drafter {draft.name[:80]} (-md) is not loaded")
        draft = None
    if draft is not None and not _is_file(draft, "draft model file"):
        raise ModelError(f"draft model file not found: {str(draft)[:200]!r}")
    if model is not None:
        if not _is_file(model, "model file"):
            raise ModelError(f"model file not found: {str(model)[:200]!r}")
        if draft is None and mtp:
            draft = _drafter_beside(out, model)
        return ModelChoice(model, draft, model.name)
    if demo:
        from ..demo import DEMO_LABEL, ensure_demo_model

        path = ensure_demo_model(on_build=lambda p: out.info(f"building the synthetic demo model (first use) in {p.parent} ..."))
        return ModelChoice(path, draft, DEMO_LABEL, synthetic=True)
    from ._hub import fetch_model

    local = fetch_model(out, str(hf), revision=revision, offline=offline, no_mtp=not mtp or draft is not None)
    return ModelChoice(local.model, draft if draft is not None else local.mtp, str(hf))


def _drafter_beside(out: Output, model: Path) -> Path | None:
    """The MTP drafter sidecar (mtp-*.gguf) next to a model without MTP layers, if exactly one fits."""
    from ..gguf_info import read_gguf_info

    candidates = sorted(p for p in model.parent.glob("mtp-*.gguf") if p.is_file() and p != model)
    if not candidates:
        return None
    info = read_gguf_info(model)
    if info.has_embedded_mtp or info.is_mtp_drafter:
        return None
    from ..validate import drafter_misfit

    fitting = []
    for path in candidates:
        try:
            d = read_gguf_info(path)
        except ModelError as exc:
            out.warn(f"skipping {path.name}: {exc}")
            continue
        if not d.is_mtp_drafter:
            continue
        why = drafter_misfit(info, d)
        if why is not None:
            out.warn(f"skipping the MTP drafter {path.name} beside the model: {why}")
            continue
        fitting.append(path)
    named = [p for p in fitting if p.name == f"mtp-{model.name}"]  # the generator's / a user's own pairing
    if len(fitting) == 1 or named:
        chosen = named[0] if named else fitting[0]
        out.info(f"MTP: drafter {chosen.name} found beside the model (-md chooses another)")
        return chosen
    if len(fitting) > 1:
        out.warn(f"several MTP drafters beside {model.name} ({', '.join(p.name for p in fitting)}): choose one with -md")
    return None


def open_engine(out: Output, choice: ModelChoice, base: ModelConfig, *, require_mtp: bool = False, quiet: bool = False):
    """Load the model with the runtime options of ``base``; warn (or fail with --require-mtp) when MTP
    was asked for but is not available.

    ``quiet``: no warnings (for ``info``, which reports the same facts)."""
    from ..engine import Engine

    cfg = replace(base, path=choice.path, draft_path=choice.draft_path)
    if choice.synthetic and not quiet:
        out.warn(f"using the {choice.label}: generated by mtprun, it only recites a fixed passage (for trying mtprun offline, not a real LLM)")
    if cfg.mtp and cfg.n_gpu_layers != 0:
        cfg = _fit_mtp_on_gpu(out, choice, cfg, require_mtp=require_mtp, quiet=quiet)
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


def _fit_mtp_on_gpu(out: Output, choice: ModelChoice, cfg: ModelConfig, *, require_mtp: bool, quiet: bool) -> ModelConfig:
    """With a GPU in use: drop the MTP head (warn; --require-mtp: fail) when the estimate says it
    does not fit beside the model in the GPU's free memory."""
    from ..engine import gpu_free_bytes
    from ..gguf_info import read_gguf_info
    from ..memory import estimate, mtp_fit

    free = gpu_free_bytes()
    if free is None:
        return cfg
    est = estimate(
        read_gguf_info(cfg.path), read_gguf_info(cfg.draft_path) if cfg.draft_path else None,
        n_ctx=cfg.n_ctx, n_draft=cfg.n_draft_capacity, flash_attn=cfg.flash_attn is not False,
    )
    decision = mtp_fit(gpu_free=free, plain_bytes=est.plain_total, mtp_bytes=est.mtp_total)
    if decision.mtp:
        return cfg
    if require_mtp:
        raise ModelError(f"MTP does not fit for {choice.label}: {decision.reason}")
    if not quiet:
        out.warn(f"MTP is off for {choice.label}: {decision.reason}; decoding plainly")
    return replace(cfg, mtp=False)
