"""``run`` and ``chat`` use the setting ``mtprun bench --save`` remembered, when no
``--spec-draft-n-max`` was given (see :mod:`mtprun.tuning`)."""

from __future__ import annotations

from dataclasses import replace

from ..config import GenerationConfig
from ..errors import InvalidInputError
from .. import tuning
from ..resolve import ModelFiles
from .ui import Output


def _n(setting: str) -> int:
    if setting == "plain":
        return 1
    return int(setting.split(":", 1)[1]) if ":" in setting else int(setting) if setting.isdigit() else 6


class SavedSetting:
    """Looks the model up before loading (to size the engine's draft capacity) and picks the
    entry for this machine once the engine says which backend it runs on."""

    def __init__(self, out: Output, choice: ModelFiles, *, wanted: bool) -> None:
        self.out, self.choice = out, choice
        self.candidates: list[tuning.Saved] = []
        self.used: tuning.Saved | None = None
        if not wanted:
            return
        store = tuning.Store.load()
        if store.warning:
            out.warn(store.warning)
            return
        try:
            ident = tuning.model_identity(choice.path)
        except OSError:
            return
        here = tuning.machine_identity("")
        for e in store.entries.values():
            model = {k: v for k, v in e.model.items() if k != "draft"}
            machine = {k: v for k, v in e.machine.items() if k != "backend"}
            if model == ident and machine == {k: v for k, v in here.items() if k != "backend"}:
                self.candidates.append(e)

    @property
    def capacity(self) -> int:
        """The largest draft length a saved setting for this model may use (0: none saved)."""
        return max((_n(e.setting) for e in self.candidates), default=0)

    def apply(self, info, gen: GenerationConfig) -> GenerationConfig:
        """``gen`` with the saved setting for this machine, if there is one (else unchanged)."""
        if not self.candidates:
            return gen
        ident = tuning.model_identity(self.choice.path, self.choice.draft_path if info.mtp_kind == "sidecar" else None)
        machine = tuning.machine_identity(info.backend)
        for e in self.candidates:
            if e.model == ident and e.machine == machine:
                try:
                    spec = tuning.setting_spec(e.setting, p_min=gen.spec.p_min, cost_prior=e.cost_prior())
                except InvalidInputError as exc:
                    self.out.warn(f"ignoring the saved setting: {exc}")
                    return gen
                self.used = e
                return replace(gen, spec=spec)
        return gen

    @property
    def source(self) -> str:
        return "saved" if self.used else "default"

    @property
    def note(self) -> str | None:
        """For the statistics line."""
        if not self.used:
            return None
        what = "plain decoding" if self.used.setting == "plain" else f"draft length {self.used.setting}"
        return f"{what} saved by mtprun bench"
