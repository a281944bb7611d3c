"""The extension loads against the llama.cpp that llama-cpp-python installed, once per process."""

import subprocess
import sys
from importlib import metadata


def test_engine_runs_against_the_llama_cpp_it_was_built_for():
    from mtprun._native import core

    assert core.build_commit() == core.runtime_commit()
    assert core.build_llama_cpp_python_version() == metadata.version("llama-cpp-python")


def _loaded_libs(code: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nprint(open('/proc/self/maps').read())"],
        check=True, capture_output=True, text=True,
    ).stdout
    paths = {line.split()[-1] for line in out.splitlines() if "libllama" in line or "libggml-base" in line}
    return sorted(paths)


def test_one_copy_of_libllama_when_llama_cpp_is_imported_too():
    import pytest

    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc/self/maps")
    for order in ("import mtprun._native\nimport llama_cpp", "import llama_cpp\nimport mtprun._native"):
        libs = _loaded_libs(order)
        llama = [p for p in libs if "libllama" in p]
        base = [p for p in libs if "libggml-base" in p]
        assert len(llama) == 1 and len(base) == 1, (order, libs)


def test_a_mismatched_llama_cpp_python_is_refused_with_a_fix(monkeypatch):
    """If llama-cpp-python is reinstalled at another version after mtprun was built, importing the
    engine fails with a message naming both versions and how to rebuild, instead of crashing."""
    import importlib

    import pytest

    import mtprun._native as native

    from mtprun.errors import MtprunError

    real = native.metadata.version
    monkeypatch.setattr(native.metadata, "version", lambda name: "0.3.99" if name == "llama-cpp-python" else real(name))
    try:
        with pytest.raises(MtprunError) as info:
            importlib.reload(native)
    finally:
        monkeypatch.undo()
        importlib.reload(native)
    message = str(info.value)
    assert isinstance(info.value, ImportError)
    assert "0.3.99" in message and native.core.build_llama_cpp_python_version() in message
    assert "pip install --force-reinstall" in message


def _omp_env(**env: str) -> dict:
    """OMP_WAIT_POLICY / GOMP_SPINCOUNT as libgomp sees them after `import mtprun` in a fresh process."""
    import json
    import os

    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MTPRUN_OMP_WAIT_POLICY")}
    code = "import json, os, mtprun._native\nprint(json.dumps({k: os.environ.get(k) for k in ('OMP_WAIT_POLICY', 'GOMP_SPINCOUNT')}))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env={**clean, **env}).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_cpu_threads_wait_with_a_short_spin_unless_the_user_says_otherwise():
    """By default ggml's OpenMP threads spin briefly at a barrier, then sleep (fast when the machine is
    idle, no stall when it is busy); MTPRUN_OMP_WAIT_POLICY picks another; the user's own OpenMP
    settings are never overridden."""
    default = _omp_env()
    assert default["OMP_WAIT_POLICY"] is None and 0 < int(default["GOMP_SPINCOUNT"]) < 300000
    assert _omp_env(MTPRUN_OMP_WAIT_POLICY="passive") == {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": None}
    assert _omp_env(MTPRUN_OMP_WAIT_POLICY="spin:5000") == {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "5000"}
    assert _omp_env(MTPRUN_OMP_WAIT_POLICY="default") == {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": None}
    assert _omp_env(MTPRUN_OMP_WAIT_POLICY="fastest") == default  # unknown: the default
    assert _omp_env(OMP_WAIT_POLICY="ACTIVE") == {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": None}
    assert _omp_env(GOMP_SPINCOUNT="77") == {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "77"}
