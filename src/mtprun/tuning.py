"""Remembered speculation settings: the best draft length ``mtprun bench --save`` measured, per
model file and machine.

A setting is keyed by the model's identity (resolved path, size and a digest of the GGUF header
bytes, plus the drafter sidecar's when one is used) and the machine's (CPU model and cores, the
engine's backend, the llama.cpp build), so a re-downloaded or requantized file, another machine
or a new llama.cpp build never inherits a figure measured elsewhere. The store is one JSON file
in the user's config directory (``$XDG_CONFIG_HOME/mtprun/tuning.json`` on Linux, the platform's
convention elsewhere), written atomically. A corrupt or foreign file is reported as a warning
(:attr:`Store.warning`) and treated as empty; it is only replaced when a setting is saved.

Library code: it never prints; the CLI shows :attr:`Store.warning`.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import PolicyCosts, SpecConfig
from .errors import InvalidInputError

__all__ = [
    "FORMAT",
    "HEADER_BYTES",
    "Saved",
    "Store",
    "config_dir",
    "machine_identity",
    "model_identity",
    "setting_spec",
    "store_path",
]

FORMAT = "mtprun-tuning/1"
HEADER_BYTES = 1 << 20  # how much of the file's start the digest covers (the GGUF header and metadata)
MAX_STORE_BYTES = 8 << 20  # a larger file is not ours


def config_dir() -> Path:
    """mtprun's config directory: $XDG_CONFIG_HOME/mtprun (Linux and other Unix), %APPDATA%\\mtprun
    (Windows), ~/Library/Application Support/mtprun (macOS)."""
    if sys.platform == "win32":
        base = os.environ.get("APPDATA") or str(Path.home() / "AppData" / "Roaming")
    elif sys.platform == "darwin":
        base = str(Path.home() / "Library" / "Application Support")
    else:
        base = os.environ.get("XDG_CONFIG_HOME") or ""
        if not os.path.isabs(base):  # the XDG spec: a relative value is ignored
            base = str(Path.home() / ".config")
    return Path(base) / "mtprun"


def store_path() -> Path:
    return config_dir() / "tuning.json"


def _file_identity(path: Path) -> dict[str, Any]:
    resolved = Path(path).resolve()
    size = resolved.stat().st_size
    h = hashlib.sha256()
    with open(resolved, "rb") as f:
        h.update(f.read(HEADER_BYTES))
    return {"path": str(resolved), "size": size, "header_sha256": h.hexdigest()}


def model_identity(path: Path, draft_path: Path | None = None) -> dict[str, Any]:
    """Who the model is: resolved path, size and header digest (and the drafter sidecar's)."""
    ident = _file_identity(path)
    if draft_path is not None:
        ident["draft"] = _file_identity(draft_path)
    return ident


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _llama_build() -> str:
    try:
        from ._native import core

        return str(core.runtime_commit())
    except Exception:  # no engine here: the identity still says so
        return "unknown"


def machine_identity(backend: str) -> dict[str, Any]:
    """Where it runs: CPU model and logical cores, the engine's backend (GPU or CPU), llama.cpp build."""
    return {"cpu": _cpu_model(), "cores": os.cpu_count() or 0, "backend": backend, "llama_cpp": _llama_build()}


def _key(model: dict[str, Any], machine: dict[str, Any]) -> str:
    blob = json.dumps({"model": model, "machine": machine}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def setting_spec(setting: str, *, p_min: float = 0.0, cost_prior: PolicyCosts | None = None) -> SpecConfig:
    """A saved setting ("plain", "N", "auto:N") as the engine's SpecConfig; ``cost_prior`` (see
    :meth:`Saved.cost_prior`) starts the adaptive policy."""
    if setting == "plain":
        return SpecConfig(enabled=False)
    return SpecConfig.parse(setting, p_min=p_min, cost_prior=cost_prior)  # "N" is fixed, "auto:N" adaptive


@dataclass(frozen=True)
class Saved:
    """One remembered result."""

    setting: str  # "plain", "N" (fixed draft length) or "auto:N"
    model: dict[str, Any]
    machine: dict[str, Any]
    x_plain: float | None = None  # the setting's tok/s over plain decoding's
    tokens_per_second: float | None = None
    costs: dict[str, Any] = field(default_factory=dict)  # measured draft/verify costs (seconds)
    measured: dict[str, Any] = field(default_factory=dict)  # how: tokens, reps, configurations
    saved_at: str = ""

    def cost_prior(self) -> PolicyCosts | None:
        """The measured costs as the adaptive policy's starting estimate: the target pass by batch
        size (plain, then each fixed draft length's verify, up to the first size not measured) and
        the head decode, else the adaptive run's own final estimates; None when neither is usable."""
        c = self.costs
        target = []
        for t in c.get("target_seconds_by_batch") or []:
            if not isinstance(t, (int, float)) or isinstance(t, bool) or not t > 0:
                break
            target.append(float(t))
        head = c.get("head_seconds")
        policy = c.get("auto_policy") if isinstance(c.get("auto_policy"), dict) else {}
        if not target or not isinstance(head, (int, float)):
            target, head = policy.get("target_seconds_by_batch") or [], policy.get("head_seconds")
        try:
            return PolicyCosts(tuple(target), head)
        except (InvalidInputError, TypeError):
            return None

    def as_dict(self) -> dict[str, Any]:
        return {"setting": self.setting, "model": self.model, "machine": self.machine, "x_plain": self.x_plain,
                "tokens_per_second": self.tokens_per_second, "costs": self.costs, "measured": self.measured,
                "saved_at": self.saved_at}

    @classmethod
    def from_dict(cls, d: Any) -> Saved:
        if not isinstance(d, dict) or not isinstance(d.get("setting"), str) or not isinstance(d.get("model"), dict) \
                or not isinstance(d.get("machine"), dict):
            raise ValueError("entry lacks setting/model/machine")
        setting = d["setting"]
        if setting != "plain" and not setting.startswith("auto"):
            int(setting)  # ValueError for anything else
        return cls(setting=setting, model=d["model"], machine=d["machine"], x_plain=d.get("x_plain"),
                   tokens_per_second=d.get("tokens_per_second"), costs=dict(d.get("costs") or {}),
                   measured=dict(d.get("measured") or {}), saved_at=str(d.get("saved_at", "")))


class Store:
    """The tuning file: ``Store.load()``, then :meth:`get`, :meth:`put` + :meth:`save`, :meth:`forget`."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path is not None else store_path()
        self.entries: dict[str, Saved] = {}
        self.warning: str | None = None  # set when the file was unreadable, corrupt or foreign

    @classmethod
    def load(cls, path: Path | None = None) -> Store:
        store = cls(path)
        p = store.path
        try:
            if not p.exists():
                return store
            if p.stat().st_size > MAX_STORE_BYTES:
                raise ValueError("too large")
            data = json.loads(p.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("entries"), dict):
                raise ValueError("not an mtprun tuning file")
            for key, entry in data["entries"].items():
                store.entries[str(key)] = Saved.from_dict(entry)
        except (OSError, UnicodeDecodeError, ValueError, TypeError) as exc:
            store.entries = {}
            why = "not valid JSON" if isinstance(exc, json.JSONDecodeError) else (getattr(exc, "strerror", None) or str(exc))
            store.warning = f"ignoring the saved settings in {p}: {why}"
        return store

    def get(self, model: dict[str, Any], machine: dict[str, Any]) -> Saved | None:
        return self.entries.get(_key(model, machine))

    def put(self, saved: Saved) -> None:
        if not saved.saved_at:
            saved = Saved(**{**saved.__dict__, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        self.entries[_key(saved.model, saved.machine)] = saved

    def forget(self, model: dict[str, Any], machine: dict[str, Any] | None = None) -> int:
        """Drop the entry for this model on this machine (``machine`` None: on every machine);
        returns how many were dropped."""
        path = model.get("path")
        keys = [k for k, e in self.entries.items()
                if (e.model == model if machine is not None else e.model.get("path") == path)
                and (machine is None or e.machine == machine)]
        for k in keys:
            del self.entries[k]
        return len(keys)

    def save(self) -> None:
        """Write the file atomically (a temp file in the same folder, then rename)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"format": FORMAT, "entries": {k: e.as_dict() for k, e in self.entries.items()}}
        fd, tmp = tempfile.mkstemp(prefix=".tuning-", suffix=".json", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
