"""From what the user named -- a local GGUF path, a Hub spec or the demo -- to the files to load.

:func:`resolve_model` returns :class:`ModelFiles`: the model file (and the parts of a split
model), the MTP drafter sidecar to load (or None), the GGUF header summaries, and why the drafter
was chosen or skipped, as :class:`Note` data for a front end to show. The drafter rule lives here
once and is applied the same way wherever a drafter comes from:

* beside a local model (``mtp-*.gguf`` in its folder: one that fits, or the one named
  ``mtp-<model file name>``),
* given explicitly (``draft=``): it must fit, else :class:`~mtprun.errors.ModelError`,
* picked by the Hub planner by name (:func:`mtprun.hub.resolve`): once downloaded, its header
  is judged; one that does not fit is reported and not passed on.

"Fits" is :func:`drafter_misfit`: the drafter's own metadata checks plus the pairing rules the
engine's C++ check (``sidecar_fits`` in ``csrc/gguf_check.cpp``) applies, read the way it reads
them, so a drafter chosen here is never one the engine then refuses. The C++ check stays as the
last guard in front of llama.cpp.

This module never prints and knows no command-line option names: errors carry the argument they
concern (``InvalidInputError.option``) and notes carry a ``kind`` a front end can add hints to.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InvalidInputError, ModelError
from .gguf_info import GgufInfo, read_gguf_info

__all__ = ["ModelFiles", "Note", "NoteFn", "resolve_model", "drafter_misfit", "drafters_beside",
           "hub_plan_notes", "hub_progress", "hub_drafter"]


@dataclass(frozen=True)
class Note:
    """Something the user should know about how the files were chosen.

    ``kind`` (stable, for front ends): ``drafter-beside`` (a drafter found beside a local model),
    ``drafter-skipped`` (one that does not fit, or cannot be read), ``drafters-ambiguous`` (several
    fit, none chosen), ``drafter-unused`` (given, but MTP is off), ``drafter-hub`` (the Hub
    repository's sidecar), ``mtp-embedded`` (the model carries MTP layers), ``mtp-none`` (no MTP for
    this model), ``hub-plan`` (a note of the Hub planner), ``hub-gated``, ``downloading``,
    ``cached``, ``building-demo``."""

    kind: str
    message: str  # one line, in the library's words
    warning: bool = False
    path: Path | None = None  # the file it is about, when there is one
    size: int | None = None  # bytes, for ``downloading``


NoteFn = Callable[[Note], None]


@dataclass(frozen=True)
class ModelFiles:
    """The files a model resolves to (``resolve_model``'s answer)."""

    path: Path  # what the engine opens (part 1 of a split model)
    label: str  # how the model is named to the user: file name, Hub spec, or the demo's label
    draft_path: Path | None = None  # the MTP drafter sidecar to load; None: embedded MTP, none, or MTP off
    parts: tuple[Path, ...] = ()  # every part of a split model, part 1 first; () for a single file
    info: GgufInfo | None = None  # the model's GGUF header (part 1)
    draft_info: GgufInfo | None = None  # the drafter's
    notes: tuple[Note, ...] = ()
    synthetic: bool = False  # the generated demo model, not a real LLM
    source: str = "local"  # "local" | "hub" | "demo"
    plan: object | None = field(default=None, repr=False)  # the Hub's plan (``hub.Plan``), for -hf models

    @property
    def mtp_source(self) -> str:
        """"sidecar", "embedded", "none" (MTP will be off) or "unknown" (header not read)."""
        if self.draft_path is not None:
            return "sidecar"
        if self.info is None:
            return "unknown"
        return "embedded" if self.info.has_embedded_mtp else "none"

    @property
    def warnings(self) -> tuple[Note, ...]:
        return tuple(n for n in self.notes if n.warning)


class _Notes(list):
    def __init__(self, on_note: NoteFn | None) -> None:
        super().__init__()
        self.on_note = on_note

    def add(self, kind: str | Note, message: str = "", *, warning: bool = False, path: Path | None = None) -> None:
        note = kind if isinstance(kind, Note) else Note(kind, message, warning, path)
        self.append(note)
        if self.on_note is not None:
            self.on_note(note)


# --- the model sources --------------------------------------------------------------------------


def resolve_model(
    model: str | Path | None = None,
    *,
    hf: str | None = None,
    demo: bool = False,
    draft: str | Path | None = None,
    mtp: bool = True,
    revision: str | None = None,
    offline: bool | None = None,
    on_note: NoteFn | None = None,
) -> ModelFiles:
    """Resolve exactly one model source -- ``model`` (a local GGUF path), ``hf`` (``owner/name[:quant]``,
    downloaded if needed) or ``demo`` -- to local files, with its MTP drafter.

    ``draft``: a drafter sidecar to use instead of looking for one; ``mtp=False``: no drafter is
    looked for or loaded. ``revision``/``offline`` apply to ``hf`` (``offline=None``:
    ``HF_HUB_OFFLINE`` decides). ``on_note`` sees each :class:`Note` as it is made (progress of a
    download, say); all of them are in ``ModelFiles.notes`` too.

    Raises InvalidInputError (``.option`` names the argument: ``model``, ``draft``, ``source``,
    ``revision``), ModelError (a file is missing, unreadable, or an explicit drafter does not fit),
    HubError subclasses."""
    notes = _Notes(on_note)
    model_path = _path(model, "model")
    draft_path = _path(draft, "draft")
    given = [name for name, v in (("model", model_path), ("hf", hf), ("demo", demo)) if v]
    if len(given) != 1:
        what = "no model given" if not given else f"give only one model source, not {' and '.join(given)}"
        raise InvalidInputError(what, option="source")
    if (revision is not None or offline) and hf is None:
        raise InvalidInputError("a revision and offline mode apply to Hub models only", option="revision")
    if draft_path is not None and not mtp:
        notes.add("drafter-unused", f"MTP is off: the drafter {draft_path.name[:80]} is not loaded", warning=True, path=draft_path)
        draft_path = None
    if draft_path is not None and not _is_file(draft_path, "draft model file"):
        raise ModelError(f"draft model file not found: {str(draft_path)[:200]!r}", path=draft_path)
    if model_path is not None:
        return _local(model_path, draft_path, mtp, notes)
    if demo:
        return _demo(draft_path, notes)
    return _hub(str(hf), draft_path, mtp, revision, offline, notes)


def _local(model: Path, draft: Path | None, mtp: bool, notes: _Notes) -> ModelFiles:
    if not _is_file(model, "model file"):
        raise ModelError(f"model file not found: {str(model)[:200]!r}", path=model)
    info = read_gguf_info(model)
    draft_info = None
    if draft is not None:
        draft_info = _judge_given(info, draft)
    elif mtp and not (info.has_embedded_mtp or info.is_mtp_drafter):
        draft, draft_info = drafters_beside(model, info, notes)
    return ModelFiles(model, model.name, draft, _split_parts(model), info, draft_info, tuple(notes))


def _demo(draft: Path | None, notes: _Notes) -> ModelFiles:
    from .demo import DEMO_LABEL, ensure_demo_model

    path = ensure_demo_model(on_build=lambda p: notes.add(
        "building-demo", f"building the synthetic demo model (first use) in {p.parent} ...", path=p))
    info = read_gguf_info(path)
    draft_info = _judge_given(info, draft) if draft is not None else None
    return ModelFiles(path, DEMO_LABEL, draft, (), info, draft_info, tuple(notes), synthetic=True, source="demo")


def _hub(spec: str, draft: Path | None, mtp: bool, revision: str | None, offline: bool | None, notes: _Notes) -> ModelFiles:
    from . import hub

    plan = hub.resolve(hub.parse_spec(spec), revision=revision, offline=offline or None, want_mtp=mtp and draft is None)
    for note in hub_plan_notes(plan):
        notes.add(note)
    local = hub.download(plan, progress=hub_progress(plan, notes.add))
    if draft is not None:
        draft_info = _judge_given(local.info, draft)
    else:
        draft, draft_info, found = hub_drafter(local)
        for note in found:
            notes.add(note)
    parts = local.parts if len(local.parts) > 1 else ()
    return ModelFiles(local.model, spec, draft, parts, local.info, draft_info, tuple(notes), source="hub", plan=plan)


def hub_plan_notes(plan) -> list[Note]:
    """What the Hub planner wants the user to know about a ``hub.Plan``, before anything is fetched."""
    found = [Note("hub-plan", text, warning=True) for text in plan.notes]
    if plan.gated and not plan.offline:
        found.append(Note("hub-gated", f"{plan.repo} is gated: downloading needs accepted access and a token "
                                       "(`hf auth login` or HF_TOKEN)"))
    return found


def hub_progress(plan, on_note: NoteFn):
    """A ``hub.download`` progress callback that reports each file as a Note (``downloading`` with
    its size, or ``cached``)."""
    def progress(event: str, f) -> None:
        if event == "downloading":
            on_note(Note("downloading", f"downloading {f.path}", size=f.size))
        elif event == "cached" and not plan.offline:
            on_note(Note("cached", f"already downloaded: {f.path}"))

    return progress


def hub_drafter(local, *, judge: bool = True) -> tuple[Path | None, GgufInfo | None, list[Note]]:
    """The drafter of a downloaded ``hub.LocalModel``: the sidecar the planner picked by name, if
    its header fits the model (else reported and dropped), and where MTP comes from.
    ``judge=False``: the planner's pick as it is (a download that loads nothing)."""
    plan, info = local.plan, local.info
    if local.mtp is not None:
        why = drafter_misfit(info, local.mtp_info) if judge and info is not None and local.mtp_info is not None else None
        if why is None:
            return local.mtp, local.mtp_info, [Note("drafter-hub", f"MTP: drafter {plan.mtp.path}", path=local.mtp)]
        return None, None, [Note("drafter-skipped", f"skipping the MTP drafter {plan.mtp.path} of {plan.repo}: {why}; "
                                                    "MTP will be off", warning=True, path=local.mtp)]
    if local.embedded_mtp:
        layers = info.nextn_predict_layers if info else None
        return None, None, [Note("mtp-embedded", f"MTP: layers inside the model ({layers or 'some'} NextN layer(s)); no sidecar needed")]
    if local.embedded_mtp is False and plan.want_mtp:
        return None, None, [Note("mtp-none", f"no MTP drafter for {plan.model[0].path}: {plan.repo} has no mtp-*.gguf sidecar "
                                             "for it and the model carries no MTP layers; MTP will be off", warning=True)]
    return None, None, []


# --- drafters -----------------------------------------------------------------------------------


def drafters_beside(model: Path, info: GgufInfo, notes: _Notes | None = None) -> tuple[Path | None, GgufInfo | None]:
    """The MTP drafter sidecar (``mtp-*.gguf``) next to ``model``: the only one that fits, or the
    fitting one named ``mtp-<model file name>``. Why others were skipped goes to ``notes``."""
    notes = notes if notes is not None else _Notes(None)
    candidates = sorted(p for p in model.parent.glob("mtp-*.gguf") if p.is_file() and p != model)
    fitting: list[tuple[Path, GgufInfo]] = []
    for path in candidates:
        try:
            d = read_gguf_info(path)
        except ModelError as exc:
            notes.add("drafter-skipped", f"skipping {path.name}: {exc}", warning=True, path=path)
            continue
        if not d.is_mtp_drafter:
            continue
        why = drafter_misfit(info, d)
        if why is not None:
            notes.add("drafter-skipped", f"skipping the MTP drafter {path.name} beside the model: {why}", warning=True, path=path)
            continue
        fitting.append((path, d))
    named = [f for f in fitting if f[0].name == f"mtp-{model.name}"]  # the generator's / a user's own pairing
    if len(fitting) == 1 or named:
        chosen = named[0] if named else fitting[0]
        notes.add("drafter-beside", f"MTP: drafter {chosen[0].name} found beside the model", path=chosen[0])
        return chosen
    if len(fitting) > 1:
        notes.add("drafters-ambiguous", f"several MTP drafters beside {model.name} ({', '.join(p.name for p, _ in fitting)})",
                  warning=True)
    return None, None


def _judge_given(target: GgufInfo | None, draft: Path) -> GgufInfo:
    """A drafter the caller named must fit (ModelError otherwise)."""
    from .validate import validate_header

    d = validate_header(read_gguf_info(draft), role="drafter")
    why = drafter_misfit(target, d) if target is not None else None
    if why is not None:
        raise ModelError(f"drafter {draft} does not fit its target: {why}", path=draft)
    return d


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _gguf_int(info: GgufInfo, key: str, default: int, idx: int = 0) -> int:
    """An integer the way the engine's C++ check reads it (``gguf_int`` in gguf_check.cpp): an
    integer scalar, or element ``idx`` of an int32/uint32 array; anything else is ``default``."""
    if key in info.scalars:
        v = info.scalars[key]
        return v if _is_int(v) else default
    if key in info.arrays:
        etype, n = info.arrays[key]
        values = info.array_values.get(key, ())
        if etype not in ("int32", "uint32") or n <= idx or idx >= len(values):
            return default
        return values[idx] if _is_int(values[idx]) else default
    return default


@dataclass(frozen=True)
class _Meta:
    """What the pairing rule reads of a header, with the C++ reader's defaults (``gguf_meta``)."""

    arch: str
    n_embd: int
    n_embd_out: int
    n_vocab: int
    head_k: int
    head_k_swa: int
    n_layer: int
    n_head_first: int
    n_head_kv_swa_last: int
    n_head_kv_full_last: int
    swa_pattern: tuple[bool, ...]


def _meta(info: GgufInfo) -> _Meta:
    arch = info.architecture or ""
    a = arch + "."
    n_embd = _gguf_int(info, a + "embedding_length", -1)
    n_vocab = _gguf_int(info, a + "vocab_size", -1)
    if n_vocab < 0 and "tokenizer.ggml.tokens" in info.arrays:
        n_vocab = info.arrays["tokenizer.ggml.tokens"][1]
    head_k = _gguf_int(info, a + "attention.key_length", -1)
    n_layer = _gguf_int(info, a + "block_count", -1)
    n_head_kv = _gguf_int(info, a + "attention.head_count_kv", -1)
    kv_swa = kv_full = -1
    if n_layer >= 2:
        kv_swa = _gguf_int(info, a + "attention.head_count_kv", n_head_kv, n_layer - 2)
        kv_full = _gguf_int(info, a + "attention.head_count_kv", n_head_kv, n_layer - 1)
    swa_key = a + "attention.sliding_window_pattern"
    swa = info.array_values.get(swa_key, ()) if info.arrays.get(swa_key, ("",))[0] == "bool" else ()
    return _Meta(
        arch=arch, n_embd=n_embd, n_embd_out=_gguf_int(info, a + "embedding_length_out", n_embd), n_vocab=n_vocab,
        head_k=head_k, head_k_swa=_gguf_int(info, a + "attention.key_length_swa", head_k), n_layer=n_layer,
        n_head_first=_gguf_int(info, a + "attention.head_count", -1, 0), n_head_kv_swa_last=kv_swa,
        n_head_kv_full_last=kv_full, swa_pattern=tuple(bool(x) for x in swa),
    )


def drafter_misfit(target: GgufInfo, drafter: GgufInfo) -> str | None:
    """Why an MTP drafter sidecar cannot serve ``target`` (None: it fits): the drafter's own
    metadata checks, then the engine's pairing rule (``sidecar_fits``) over the values read the
    way the engine reads them -- at least as strict as the engine, so it never refuses a pair
    this accepted."""
    from .validate import problems

    found = problems(drafter, role="drafter")
    if found:
        return f"invalid metadata: {found[0]}"
    t, d = _meta(target), _meta(drafter)
    if d.arch != "gemma4-assistant":
        return f"architecture {drafter.architecture!r} is not an MTP drafter mtprun can pair"
    if t.arch != "gemma4":
        return f"a gemma4-assistant drafter pairs with a gemma4 target, not {target.architecture!r}"
    if d.n_vocab != t.n_vocab:
        return f"vocabulary size {d.n_vocab} vs the target's {t.n_vocab}"
    if d.n_embd_out != t.n_embd:
        return f"it reads hidden states of width {d.n_embd_out}, the target's are {t.n_embd}"
    if d.head_k != t.head_k:
        return f"attention.key_length {d.head_k} vs the target's {t.head_k}"
    if d.head_k_swa != t.head_k_swa:
        return f"attention.key_length_swa {d.head_k_swa} vs the target's {t.head_k_swa}"
    n = t.n_layer
    if n < 2 or len(t.swa_pattern) < n:
        return f"the target's layer layout ({n} layers, its sliding-window pattern as a bool array) cannot be read"
    if not t.swa_pattern[n - 2] or t.swa_pattern[n - 1]:
        return "it reads the target's last sliding-window and last full-attention layers, which the target does not have in that layout"
    for il, kv in ((n - 2, t.n_head_kv_swa_last), (n - 1, t.n_head_kv_full_last)):
        if d.n_head_first <= 0 or kv <= 0 or d.n_head_first % kv:
            return f"its {d.n_head_first} attention heads cannot share the target's {kv} KV heads of layer {il}"
    return None


# --- helpers -------------------------------------------------------------------------------------

_SPLIT = re.compile(r"^(?P<stem>.+)-(?P<no>\d{5})-of-(?P<n>\d{5})\.gguf$", re.IGNORECASE)


def _split_parts(model: Path) -> tuple[Path, ...]:
    """Every part of a split model named ``*-00001-of-0000N.gguf`` (as llama.cpp finds them), when
    ``model`` is part 1 and all parts are there; () otherwise."""
    m = _SPLIT.match(model.name)
    if m is None or int(m["no"]) != 1 or int(m["n"]) < 2:
        return ()
    n = int(m["n"])
    parts = tuple(model.with_name(f"{m['stem']}-{i:05d}-of-{n:05d}.gguf") for i in range(1, n + 1))
    return parts if all(p.is_file() for p in parts) else ()


def _path(value: str | Path | None, option: str) -> Path | None:
    if value is None:
        return None
    if isinstance(value, str) and not value.strip():
        raise InvalidInputError("the path is empty", option=option)
    return Path(value)


def _is_file(path: Path, what: str) -> bool:
    """Whether ``path`` is a regular file; a path the system cannot even look up (too long, ...)
    is a model file problem, not an internal error."""
    try:
        if path.is_file():
            return True
        if path.is_dir():
            raise ModelError(f"{what} is a directory, not a GGUF file: {str(path)[:200]!r}", path=path)
        if path.exists():
            raise ModelError(f"{what} is not a regular file: {str(path)[:200]!r}", path=path)
        return False
    except OSError as exc:
        raise ModelError(f"cannot open {what} {str(path)[:200]!r}...: {exc.strerror or exc}", path=path) from None
