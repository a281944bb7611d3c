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
