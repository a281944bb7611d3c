"""Fixtures for the Hub tests: tiny real GGUF files, realistic repositories, a per-test fake Hub.

Import from a test module with ``from hub_fixtures import *`` (``tests/conftest.py`` belongs to
the engine tests). Every test gets its own ``HF_HOME``/cache in a temp dir, ``HF_ENDPOINT``
pointing at its own fake Hub, and no token or offline switch inherited from the environment.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from hub_server import FakeHub

# huggingface_hub reads these once, when first imported: keep this test process from sending a
# token stored in the real home, and from fetching its agent registry into the real home.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
os.environ.setdefault("HF_TOKEN_PATH", os.path.join(tempfile.gettempdir(), "mtprun-tests-no-hf-token"))

__all__ = [
    "make_gguf",
    "model_gguf",
    "qwen_mtp_gguf",
    "drafter_gguf",
    "big_gguf",
    "REPOS",
    "add_standard_repos",
    "fake_hub",
    "hf_env",
    "hub",
    "cli_env",
    "start_cli",
    "run_cli",
]



@functools.cache
def make_gguf(
    arch: str = "gemma4",
    *,
    name: str = "tiny",
    ftype: int = 7,
    nextn: int = 0,
    embd_out: int | None = None,
    split: tuple[int, int] | None = None,
    salt: str = "",
    extra_floats: int = 0,
) -> bytes:
    """A small valid GGUF written with the gguf package (2 blocks, 8-wide, a 32-token vocab)."""
    import gguf

    with tempfile.TemporaryDirectory() as d:
        path = Path(d, "m.gguf")
        w = gguf.GGUFWriter(str(path), arch)
        w.add_name(name + salt)
        w.add_file_type(ftype)
        w.add_context_length(4096)
        w.add_embedding_length(8)
        w.add_block_count(2 + nextn)
        if nextn:
            w.add_uint32(f"{arch}.nextn_predict_layers", nextn)
        if embd_out:
            w.add_uint32(f"{arch}.embedding_length_out", embd_out)
        if split:
            w.add_uint16("split.no", split[0])
            w.add_uint16("split.count", split[1])
        w.add_tokenizer_model("gpt2")
        w.add_token_list([f"tok{i}" for i in range(32)])
        w.add_chat_template("{% for m in messages %}{{ m.content }}{% endfor %}")
        w.add_tensor("token_embd.weight", np.ones((32, 8), dtype=np.float32))
        w.add_tensor("blk.0.attn_norm.weight", np.ones(8, dtype=np.float32))
        if nextn:
            w.add_tensor("blk.2.nextn.eh_proj.weight", np.ones((8, 16), dtype=np.float32))
        if extra_floats:
            w.add_tensor("blk.1.ffn_up.weight", np.arange(extra_floats, dtype=np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return path.read_bytes()


def model_gguf(name: str) -> bytes:
    return make_gguf("gemma4", name=name)


def qwen_mtp_gguf(name: str) -> bytes:
    return make_gguf("qwen35", name=name, nextn=1)


def drafter_gguf(name: str) -> bytes:
    return make_gguf("gemma4-assistant", name=name, embd_out=8)


def big_gguf(name: str, mb: int = 24) -> bytes:
    """A GGUF larger than huggingface_hub's 10 MB transfer chunk, to cut a transfer after a chunk."""
    return make_gguf("gemma4", name=name, extra_floats=mb * 1024 * 1024 // 4)


def _small(text: str) -> bytes:
    return text.encode()


@functools.cache
def _repos() -> dict[str, dict]:
    g = "gemma-4-12b-it"
    q = "Qwen3.6-27B"
    qat = "gemma-4-12B-it-qat"
    repos: dict[str, dict] = {
        # Gemma 4: many quants incl. UD- and lowercase, a split BF16 in a folder, mmproj, mtp- sidecars at the root
        "unsloth/gemma-4-12b-it-GGUF": {
            "files": {
                f"{g}-Q4_K_M.gguf": model_gguf("Q4_K_M"),
                f"{g}-Q8_0.gguf": model_gguf("Q8_0"),
                f"{g}-UD-Q4_K_XL.gguf": model_gguf("UD-Q4_K_XL"),
                f"{g}-UD-Q2_K_XL.gguf": model_gguf("UD-Q2_K_XL"),
                f"{g}-IQ4_XS.gguf": model_gguf("IQ4_XS"),
                f"{g}-q5_k_m.gguf": model_gguf("q5_k_m"),
                f"BF16/{g}-BF16-00001-of-00002.gguf": model_gguf("BF16-1"),
                f"BF16/{g}-BF16-00002-of-00002.gguf": model_gguf("BF16-2"),
                "mmproj-BF16.gguf": model_gguf("mmproj-BF16"),
                "mmproj-F16.gguf": model_gguf("mmproj-F16"),
                "mmproj-F32.gguf": model_gguf("mmproj-F32"),
                f"mtp-{g}-Q8_0.gguf": drafter_gguf("mtp-Q8_0"),
                f"mtp-{g}-BF16.gguf": drafter_gguf("mtp-BF16"),
                f"mtp-{g}-F16.gguf": drafter_gguf("mtp-F16"),
                "imatrix_unsloth.gguf": model_gguf("imatrix"),
                "README.md": _small("# gemma 4\n"),
                "config.json": _small('{"model_type": "gemma4"}'),
                ".gitattributes": _small("*.gguf filter=lfs\n"),
            }
        },
        # Qwen3.6 MTP: the MTP layers are inside the GGUFs; splits live in quant folders
        "unsloth/Qwen3.6-27B-MTP-GGUF": {
            "files": {
                f"{q}-UD-Q4_K_XL.gguf": qwen_mtp_gguf("UD-Q4_K_XL"),
                f"{q}-Q4_K_M.gguf": qwen_mtp_gguf("Q4_K_M"),
                f"{q}-Q8_0.gguf": qwen_mtp_gguf("Q8_0"),
                f"UD-Q8_K_XL/{q}-UD-Q8_K_XL-00001-of-00003.gguf": make_gguf("qwen35", name="p1", nextn=1, split=(0, 3)),
                f"UD-Q8_K_XL/{q}-UD-Q8_K_XL-00002-of-00003.gguf": make_gguf("qwen35", name="p2", split=(1, 3)),
                f"UD-Q8_K_XL/{q}-UD-Q8_K_XL-00003-of-00003.gguf": make_gguf("qwen35", name="p3", split=(2, 3)),
                "mmproj-F16.gguf": model_gguf("q-mmproj"),
                "README.md": _small("# qwen\n"),
            }
        },
        # Gemma 4 QAT: drafters only under MTP/ (llama.cpp finds none)
        "unsloth/gemma-4-12B-it-qat-GGUF": {
            "files": {
                f"{qat}-UD-Q4_K_XL.gguf": model_gguf("qat-UD-Q4_K_XL"),
                f"{qat}-Q4_0.gguf": model_gguf("qat-Q4_0"),
                "mmproj-F16.gguf": model_gguf("qat-mmproj"),
                f"MTP/mtp-{qat}-Q8_0.gguf": drafter_gguf("qat-mtp-Q8_0"),
                f"MTP/mtp-{qat}-BF16.gguf": drafter_gguf("qat-mtp-BF16"),
            }
        },
        # no sidecar and no embedded MTP layers: MTP will be off
        "acme/plain-GGUF": {"files": {"plain-Q4_K_M.gguf": model_gguf("plain")}},
        "acme/gated-GGUF": {"files": {"gated-Q8_0.gguf": model_gguf("gated")}, "gated": True},
        "acme/private-GGUF": {"files": {"private-Q8_0.gguf": model_gguf("private")}, "private": True},
        "acme/safetensors-only": {
            "files": {"model.safetensors": b"\0" * 64, "config.json": _small("{}"), "README.md": _small("hi")}
        },
        "evil/hostile-GGUF": {
            "files": {
                "nested/../inside-Q8_0.gguf": model_gguf("evil1"),
                "..\\win-escape-IQ4_XS.gguf": model_gguf("evil2"),
                "ok-Q5_K_M.gguf": model_gguf("ok"),
            }
        },
    }
    return repos


REPOS = _repos()


def add_standard_repos(hub: FakeHub) -> None:
    for repo_id, spec in REPOS.items():
        hub.add_repo(repo_id, spec["files"], private=spec.get("private", False), gated=spec.get("gated", False))


@pytest.fixture
def fake_hub() -> Iterator[FakeHub]:
    hub = FakeHub()
    add_standard_repos(hub)
    try:
        yield hub
    finally:
        hub.close()


@pytest.fixture
def hf_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean Hugging Face environment in a temp dir; returns HF_HOME."""
    home = tmp_path / "hf-home"
    home.mkdir()
    for var in (
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_ENDPOINT",
        "MTPRUN_DEBUG",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    return home


@pytest.fixture
def hub(fake_hub: FakeHub, hf_env: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    """The fake Hub, with HF_ENDPOINT pointing at it and a clean HF_HOME."""
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.endpoint)
    return fake_hub


def cache_dir() -> Path:
    return Path(os.environ["HF_HOME"]) / "hub"


def cli_env(**extra: str) -> dict[str, str]:
    """The current (test) environment for a ``python -m mtprun`` subprocess."""
    env = dict(os.environ)
    # the mtprun this test process imported (installed, with its engine; or src/ in a bare checkout)
    import mtprun

    pkg_root = str(Path(mtprun.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["COLUMNS"] = "200"
    env.update(extra)
    return env


def start_cli(*args: str, preexec_fn=None, **extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mtprun", *args],
        env=cli_env(**extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=preexec_fn,
    )


def run_cli(*args: str, timeout: float = 60, preexec_fn=None, **extra: str) -> subprocess.CompletedProcess:
    """Run ``python -m mtprun ARGS`` (huggingface_hub imported fresh, with this test's env)."""
    return subprocess.run(
        [sys.executable, "-m", "mtprun", *args],
        env=cli_env(**extra),
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=preexec_fn,
    )
