"""Synthetic models for the CLI tests, built once per test session (imported by the test modules)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from mtprun.synth import SynthResult, SynthSpec, demo_spec, write_model


@dataclass(frozen=True)
class CliModels:
    demo: SynthResult  # qwen35 oracle with embedded MTP, the --demo model
    gemma: SynthResult  # gemma4 oracle target + mtp- drafter sidecar beside it
    gemma_alone: Path  # the same gemma4 target in a folder without its sidecar: no MTP


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> CliModels:
    root = tmp_path_factory.mktemp("cli-models")
    demo = write_model(demo_spec(), root / "demo.gguf")
    (root / "gemma").mkdir()
    gemma = write_model(SynthSpec(arch="gemma4", mode="oracle", agree=0.8, seed=1), root / "gemma" / "gemma.gguf")
    alone = root / "alone" / "gemma.gguf"
    alone.parent.mkdir()
    shutil.copy(gemma.model_path, alone)
    return CliModels(demo, gemma, alone)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Nothing may touch the user's home: every cache points into the test's own directory."""
    monkeypatch.setenv("MTPRUN_CACHE", str(tmp_path / "mtprun-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("MTPRUN_DEBUG", raising=False)
