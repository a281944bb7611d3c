"""Shared fixtures: synthetic models built once per session, private cache dirs, llama.cpp tools.

``synth_model(arch=..., mode=..., agree=..., seed=..., **fields)`` returns a ``SynthResult`` for a
model written (once per distinct spec per session) into a session temp dir; every test uses these
instead of real models. ``llama_ref_bin`` is the folder holding llama.cpp's reference tools
(``llama-speculative-simple``, ``llama-completion``) built by ``scripts/build_reference.sh``.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
try:  # the installed package (with its compiled engine) comes first
    import mtprun  # noqa: F401
except ImportError:  # a checkout without mtprun installed: the generator is pure Python
    sys.path.insert(0, str(SRC))

from mtprun.synth import SynthResult, SynthSpec, write_model  # noqa: E402

REF_TOOLS = ("llama-speculative-simple", "llama-completion")


@pytest.fixture(scope="session", autouse=True)
def private_cache_dirs(tmp_path_factory: pytest.TempPathFactory):
    """Point every cache and config dir at a session temp dir: no test touches the user's home."""
    home = tmp_path_factory.mktemp("home")
    env = {
        "HOME": home,
        "XDG_CACHE_HOME": home / ".cache",
        "XDG_CONFIG_HOME": home / ".config",
        "XDG_DATA_HOME": home / ".local" / "share",
        "HF_HOME": home / ".cache" / "huggingface",
        "HF_HUB_CACHE": home / ".cache" / "huggingface" / "hub",
        "HF_HUB_OFFLINE": "1",
        "LLAMA_CACHE": home / ".cache" / "llama.cpp",
        "MTPRUN_CACHE": home / ".cache" / "mtprun",
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, str(value))
        yield home


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("synth-models")


@pytest.fixture(scope="session")
def synth_model(synth_dir: Path) -> Callable[..., SynthResult]:
    """Factory: ``synth_model(arch="qwen35", mode="oracle", agree=1.0, seed=0, **fields)``.

    Fields are those of ``SynthSpec`` (``preset="bench"`` picks a preset). Each distinct spec is
    written once per session; the result says where, and what an oracle model will generate.
    """
    cache: dict[SynthSpec, SynthResult] = {}

    def make(arch: str = "qwen35", mode: str = "oracle", agree: float = 1.0, seed: int = 0,
             preset: str = "tiny", **fields: Any) -> SynthResult:
        spec = SynthSpec.preset(preset, arch=arch, mode=mode, agree=agree, seed=seed, **fields)
        if spec not in cache:
            key = hashlib.sha256(repr(spec).encode()).hexdigest()[:12]
            cache[spec] = write_model(spec, synth_dir / f"{arch}-{mode}-{key}.gguf")
        return cache[spec]

    return make


@pytest.fixture(scope="session")
def llama_ref_bin() -> Path:
    """llama.cpp's reference tools from the pinned sdist; skips the test when they are absent."""
    candidates = []
    if os.environ.get("MTPRUN_LLAMA_REF_BIN"):
        candidates.append(Path(os.environ["MTPRUN_LLAMA_REF_BIN"]))
    candidates.append(ROOT / "build" / "llama-ref" / "bin")
    for folder in candidates:
        if all((folder / tool).is_file() and os.access(folder / tool, os.X_OK) for tool in REF_TOOLS):
            return folder
    pytest.skip(
        "llama.cpp reference tools not found: build them with `scripts/build_reference.sh DIR` "
        "and set MTPRUN_LLAMA_REF_BIN=DIR/bin (looked in: " + ", ".join(map(str, candidates)) + ")"
    )
