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
# apply; at every barrier (one per graph node) a waiting thread spins, then sleeps.
# MTPRUN_OMP_WAIT_POLICY: "spin:N" spins N iterations first (GOMP_SPINCOUNT), "passive" sleeps at
# once, "active" only spins, "default" leaves libgomp's (300000 iterations); an OMP_WAIT_POLICY or
# GOMP_SPINCOUNT the user set is kept.
#
# A long spin holds the core a busy neighbour process wants while it waits for a thread that is not
# running, so every barrier can cost a scheduler time slice; sleeping at once costs a futex wake per
# barrier instead, which on an idle machine is most of a small model's step. Measured with
#   python scripts/bench_load.py --model M --threads 2 --policies passive spin:1000 default --reps 2
# (2-vCPU machine, nothing else running for "idle", one `while 1: pass` per core for "loaded";
# tok/s plain / auto, idle -> loaded):
#   4-layer Q4_K_M bench model (bench-q4km.gguf, --reps 3):
#     passive    86.3 / 78.9  ->  94.2 / 75.8
#     spin:1000 155.8 /154.6  ->  61.2 / 58.5   (0.39x / 0.38x of idle)
#     default   166.7 /163.0  ->  38.0 / 28.3   (0.23x / 0.17x)
#   12-layer f16 bench model (agreement 0.9, --tokens 48):
#     passive    20.5 / 31.0  ->  15.5 / 19.0
#     spin:1000  25.1 / 40.6  ->  14.8 / 18.5   (0.59x / 0.46x)
#     default    28.9 / 44.0  ->   6.9 /  9.9   (0.24x / 0.22x)
# llama.cpp's own llama-completion on the Q4_K_M model: 5.6 ms/token with libgomp's default, 10.5
# with OMP_WAIT_POLICY=PASSIVE, 6.0 with GOMP_SPINCOUNT=3000. A short spin keeps nearly all of the
# idle speed and more than a third of it loaded (issue 15's goal), so it is the default.
_DEFAULT_WAIT_POLICY = "spin:1000"


def _set_wait_policy() -> None:
    import os

    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return  # the user's
    policy = os.environ.get("MTPRUN_OMP_WAIT_POLICY", _DEFAULT_WAIT_POLICY).strip().lower()
    if policy == "default":
        return
    if policy in ("passive", "active"):
        os.environ["OMP_WAIT_POLICY"] = policy.upper()
        return
    if not (policy.startswith("spin:") and policy[5:].isdigit()):
        policy = _DEFAULT_WAIT_POLICY  # an unknown value: the default, not libgomp's long spin
    os.environ["GOMP_SPINCOUNT"] = str(int(policy[5:]))


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
