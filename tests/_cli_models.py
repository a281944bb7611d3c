"""The synthetic models the CLI tests use (built through conftest's ``synth_model``), imported by the
CLI test modules together with a per-test cache directory."""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

from mtprun.synth import SynthResult, demo_spec


@dataclass(frozen=True)
class CliModels:
    demo: SynthResult  # the --demo model: qwen35 oracle with embedded MTP layers, replies end
    endless: SynthResult  # the same without an end-of-generation token: replies run to -n
    gemma: SynthResult  # gemma4 oracle target + mtp- drafter sidecar
    gemma_pair: Path  # the gemma4 target in a folder holding only it and its drafter
    gemma_alone: Path  # the gemma4 target in a folder without a drafter: no MTP


@pytest.fixture(scope="session")
def models(synth_model, tmp_path_factory) -> CliModels:
    demo = synth_model(**asdict(demo_spec()))
    endless = synth_model(**{**asdict(demo_spec()), "end_with_eos": False})
    gemma = synth_model(arch="gemma4", mode="oracle", agree=0.8, seed=1)
    root = tmp_path_factory.mktemp("cli-models")
    (root / "pair").mkdir()
    (root / "alone").mkdir()
    pair = root / "pair" / "gemma.gguf"
    shutil.copy(gemma.model_path, pair)
    shutil.copy(gemma.draft_path, root / "pair" / f"mtp-{pair.name}")
    alone = root / "alone" / "gemma.gguf"
    shutil.copy(gemma.model_path, alone)
    return CliModels(demo, endless, gemma, pair, alone)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Each test gets its own mtprun cache (the demo model is built there) and Hugging Face home."""
    monkeypatch.setenv("MTPRUN_CACHE", str(tmp_path / "mtprun-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("MTPRUN_DEBUG", raising=False)
