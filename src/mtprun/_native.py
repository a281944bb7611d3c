"""Loads the compiled engine and checks it runs against the llama.cpp it was built for.

The extension links the libllama/libggml that ``llama-cpp-python`` installs. If that package was
upgraded, downgraded or rebuilt after mtprun was built, the staging MTP functions mtprun calls may
have changed shape, so we refuse to run rather than crash.
"""

from __future__ import annotations

import ctypes
import importlib.util
import sys
from importlib import metadata
from pathlib import Path

from .errors import MtprunError


class NativeBuildMismatch(MtprunError, ImportError):
    """The loaded llama.cpp is not the build the extension was compiled against."""


def _preload_llama() -> None:
    """Load libllama from the very file ``llama_cpp`` loads (``llama_cpp/lib/libllama.so``).

    Wheels cannot hold symlinks, so llama-cpp-python installs libllama.so, libllama.so.0 and
    libllama.so.0.5.0 as three copies. Our extension needs ``libllama.so.0`` (its soname); if the
    loader took that copy while ``llama_cpp`` loads ``libllama.so`` by path, two llama.cpp runtimes
    would live in one process. Loading llama_cpp's file first makes the soname match it.
    """
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return
    lib_dir = Path(list(spec.submodule_search_locations)[0]) / "lib"
    if sys.platform == "win32":
        names = ["llama.dll", "libllama.dll"]
    elif sys.platform == "darwin":
        names = ["libllama.so", "libllama.dylib"]
    else:
        names = ["libllama.so"]
    for name in names:
        if (lib_dir / name).exists():
            ctypes.CDLL(str(lib_dir / name))
            return


# OpenMP's wait policy for ggml's CPU threads, fixed when libgomp loads (with libllama, below):
# llama-cpp-python builds libggml-cpu with OpenMP, so ggml's own threadpool `poll` level does not
# apply; libgomp's threads spin at every barrier (one per graph node) before they sleep.
# MTPRUN_OMP_WAIT_POLICY: "passive" or "active" sets OMP_WAIT_POLICY, "default" leaves libgomp's;
# an OMP_WAIT_POLICY the user set is kept.
#
# Measured with scripts/bench_load.py (2-core shared machine, a memory-bound synthetic f16 model,
# 48 greedy tokens, tok/s plain / auto; "idle" had other developers' builds running, "load" adds
# one `while 1: pass` process per core):
#   libgomp default (spin), -t 2:  16.4 / 18.3 idle,   4.8 /   6.3 loaded  (0.29x / 0.34x)
#   libgomp default (spin), -t 1: 176.3 / 160.5 idle, 73.6 /  62.3 loaded  (0.42x / 0.39x)
#   passive,                -t 2: 165.1 / 119.4 idle, 150.8 / 139.5 loaded (0.91x / 1.17x)
# and again on a quieter machine (same command): spin -t 2 stalled loaded (no result within 60 s,
# 48.3 / 41.5 idle), spin -t 1 0.19x / 0.23x, passive -t 2 116.4 / 96.9 idle, 126.8 / 186.8 loaded.
# A spinning thread holds the core its busy neighbour wants while it waits for a thread that is
# not running, so every barrier can cost a scheduler time slice; sleeping threads do not. Passive
# waiting with the physical core count (the default -t) degrades gracefully, so it is the default.
_DEFAULT_WAIT_POLICY = "passive"


def _set_wait_policy() -> None:
    import os

    if "OMP_WAIT_POLICY" in os.environ:
        return
    policy = os.environ.get("MTPRUN_OMP_WAIT_POLICY", _DEFAULT_WAIT_POLICY).lower()
    if policy in ("passive", "active"):
        os.environ["OMP_WAIT_POLICY"] = policy.upper()


def _load():
    try:
        _set_wait_policy()
        _preload_llama()
        from . import _core
    except (ImportError, OSError) as exc:  # missing libllama, wrong ABI, not built
        raise NativeBuildMismatch(
            f"cannot load mtprun's native engine ({exc}); reinstall with "
            "`pip install --force-reinstall --no-deps llama-cpp-python==0.3.36` and then "
            "`pip install --force-reinstall --no-deps --no-cache-dir mtprun`"
        ) from exc
    built, loaded = _core.build_commit(), _core.runtime_commit()
    try:
        installed = metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        installed = "not installed"
    if built != loaded or installed != _core.build_llama_cpp_python_version():
        raise NativeBuildMismatch(
            f"mtprun was built against llama.cpp {built} (llama-cpp-python "
            f"{_core.build_llama_cpp_python_version()}) but llama.cpp {loaded} (llama-cpp-python "
            f"{installed}) is loaded; reinstall mtprun so it is rebuilt against the installed "
            "llama-cpp-python: `pip install --force-reinstall --no-deps --no-cache-dir mtprun` "
            "(or from a checkout: `pip install --force-reinstall --no-deps .`)"
        )
    return _core


core = _load()
