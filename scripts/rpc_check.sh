#!/usr/bin/env bash
# mtprun across llama.cpp's RPC backend, for real, on one machine (loopback).
#
#  1. builds (once, cached) from the pinned llama-cpp-python sdist: an RPC-enabled wheel
#     (CMAKE_ARGS="-DGGML_RPC=on") and llama.cpp's rpc-server (target ggml-rpc-server, built from the
#     sdist's vendor/llama.cpp with -DGGML_RPC=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF);
#  2. installs that wheel and this checkout into their own virtual environment (never the caller's);
#  3. starts two rpc-servers on 127.0.0.1 on free ports (stopped at exit, whatever happens);
#  4. runs the synthetic bench model across them (scripts/rpc_check.py): greedy MTP output ==
#     plain output == local output, printing acceptance, tok/s and target passes per token;
#  5. runs tests/test_rpc.py in that environment (RPC_CHECK_TESTS=0 skips it): the RPC tests that
#     are skipped where llama.cpp has no RPC (lost connections, other protocol versions, ...).
#
# Usage: scripts/rpc_check.sh [--build-only] [extra rpc_check.py options, e.g. --tokens 64]
# Cache: ${MTPRUN_RPC_CACHE:-${XDG_CACHE_HOME:-~/.cache}/mtprun-rpc}/llama-cpp-python-<version>-<python>
# (delete it to rebuild). Builds run at `nice -n 10` with CMAKE_BUILD_PARALLEL_LEVEL (default 2).
set -euo pipefail

VERSION=0.3.36
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python3}"
PYTAG="$("$PY" -c 'import sys; print(f"py{sys.version_info[0]}{sys.version_info[1]}")')"
CACHE="${MTPRUN_RPC_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mtprun-rpc}/llama-cpp-python-$VERSION-$PYTAG"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
BUILD_ONLY=0
if [[ "${1:-}" == "--build-only" ]]; then BUILD_ONLY=1; shift; fi

say() { printf 'rpc_check: %s\n' "$*" >&2; }
mkdir -p "$CACHE"
t_start=$SECONDS

# --- 1. the pinned sdist -------------------------------------------------------------------------
SDIST="$(ls "$CACHE"/sdist/llama_cpp_python-$VERSION.tar.gz 2>/dev/null || true)"
if [[ -z "$SDIST" ]]; then
    say "downloading the llama-cpp-python $VERSION sdist"
    "$PY" -m pip download -q --no-deps --no-binary llama-cpp-python "llama-cpp-python==$VERSION" -d "$CACHE/sdist.tmp"
    mkdir -p "$CACHE/sdist" && mv "$CACHE"/sdist.tmp/*.tar.gz "$CACHE/sdist/" && rm -rf "$CACHE/sdist.tmp"
    SDIST="$(ls "$CACHE"/sdist/llama_cpp_python-$VERSION.tar.gz)"
fi
SRC="$CACHE/src/llama_cpp_python-$VERSION"
if [[ ! -d "$SRC/vendor/llama.cpp" ]]; then
    rm -rf "$CACHE/src" && mkdir -p "$CACHE/src" && tar -xzf "$SDIST" -C "$CACHE/src"
fi

# --- 2. rpc-server --------------------------------------------------------------------------------
RPC_SERVER="$CACHE/rpc-server/bin/ggml-rpc-server"
if [[ ! -x "$RPC_SERVER" ]]; then
    say "building rpc-server from the sdist's vendor/llama.cpp (once; cached in $CACHE)"
    t0=$SECONDS
    nice -n 10 cmake -S "$SRC/vendor/llama.cpp" -B "$CACHE/rpc-server" -DCMAKE_BUILD_TYPE=Release \
        -DGGML_RPC=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DBUILD_SHARED_LIBS=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF >"$CACHE/rpc-server.log" 2>&1 \
        || { tail -20 "$CACHE/rpc-server.log" >&2; exit 1; }
    nice -n 10 cmake --build "$CACHE/rpc-server" --target ggml-rpc-server >>"$CACHE/rpc-server.log" 2>&1 \
        || { tail -20 "$CACHE/rpc-server.log" >&2; exit 1; }
    say "rpc-server built in $((SECONDS - t0)) s"
fi

# --- 3. the RPC-enabled wheel ---------------------------------------------------------------------
# pip's cache may hold the ordinary (non-RPC) wheel of the same version, which pip would pick for
# any install by name: the RPC wheel is built from the sdist file with --no-cache-dir (for this
# one build) and kept here, and installed by file name.
WHEEL="$(ls "$CACHE"/wheel/llama_cpp_python-$VERSION-*.whl 2>/dev/null || true)"
if [[ -z "$WHEEL" ]]; then
    say "building llama-cpp-python $VERSION with GGML_RPC=on (once; cached in $CACHE)"
    t0=$SECONDS
    CMAKE_ARGS="-DGGML_RPC=on ${CMAKE_ARGS:-}" nice -n 10 "$PY" -m pip wheel -q --no-deps --no-cache-dir \
        -w "$CACHE/wheel.tmp" "$SDIST"
    mkdir -p "$CACHE/wheel" && mv "$CACHE"/wheel.tmp/*.whl "$CACHE/wheel/" && rm -rf "$CACHE/wheel.tmp"
    WHEEL="$(ls "$CACHE"/wheel/llama_cpp_python-$VERSION-*.whl)"
    say "RPC wheel built in $((SECONDS - t0)) s"
fi

# --- 4. the environment: the RPC wheel + this checkout --------------------------------------------
VENV="$CACHE/venv"
if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import llama_cpp' 2>/dev/null; then
    rm -rf "$VENV"
    "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install -q scikit-build-core nanobind gguf huggingface_hub typer rich numpy jinja2 pytest
    "$VENV/bin/pip" install -q --no-deps "$WHEEL"
fi
# mtprun from this checkout, built against the RPC llama.cpp in a build folder of its own (the
# checkout's build/ belongs to the developer's environment); incremental after the first time
nice -n 10 "$VENV/bin/pip" install -q --no-build-isolation --no-deps -Cbuild-dir="$CACHE/build-mtprun" "$ROOT" >&2
say "environment ready in $((SECONDS - t_start)) s"
[[ $BUILD_ONLY == 1 ]] && { echo "$VENV"; exit 0; }

# --- 5. two rpc-servers on free loopback ports ------------------------------------------------------
free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PIDS=()
WORK="$(mktemp -d)"
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
ENDPOINTS=()
for i in 1 2; do
    port="$(free_port)"
    "$RPC_SERVER" -H 127.0.0.1 -p "$port" -t "${RPC_THREADS:-1}" >"$WORK/rpc-$i.log" 2>&1 &
    PIDS+=($!)
    ENDPOINTS+=("127.0.0.1:$port")
done
for ep in "${ENDPOINTS[@]}"; do  # wait until each listens (bounded)
    for _ in $(seq 100); do
        "$PY" -c "import socket,sys; socket.create_connection(('${ep%:*}', ${ep#*:}), 0.2).close()" 2>/dev/null && break
        sleep 0.1
    done
done
say "rpc-servers on ${ENDPOINTS[*]}"
RPC="$(IFS=,; echo "${ENDPOINTS[*]}")"

# --- 6. the check -------------------------------------------------------------------------------------
cd "$WORK"  # import mtprun from the environment, not from the checkout's src/
"$VENV/bin/python" "$ROOT/scripts/rpc_check.py" --rpc "$RPC" --model-dir "$CACHE/models" "$@"

# --- 7. the RPC tests, in this RPC-enabled environment (against the rpc-server binary) --------------
if [[ "${RPC_CHECK_TESTS:-1}" == 1 ]]; then
    say "tests/test_rpc.py with RPC support"
    (cd "$ROOT" && MTPRUN_RPC_SERVER="$RPC_SERVER" "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/test_rpc.py)
fi
say "done in $((SECONDS - t_start)) s"
