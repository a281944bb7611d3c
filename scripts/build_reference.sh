#!/usr/bin/env bash
# Build llama.cpp's reference tools -- llama-speculative-simple and llama-completion -- from the
# llama.cpp that llama-cpp-python 0.3.36 pins (commit 0c1e570), into DIR/bin. Tests that compare
# against llama.cpp find them through MTPRUN_LLAMA_REF_BIN=DIR/bin (or build/llama-ref/bin).
#
#   scripts/build_reference.sh DIR          # ~10 min on 2 cores; does nothing if already built
#
# Environment: JOBS (parallel jobs, default 2), PYTHON (default python3),
# LLAMA_CPP_PYTHON_SDIST (an already downloaded llama_cpp_python-0.3.36 .tar.gz or unpacked
# folder: skips `pip download`), FORCE=1 (rebuild even if the tools exist).
set -euo pipefail

VERSION=0.3.36
TOOLS=(llama-speculative-simple llama-completion)

if [[ $# -ne 1 || "$1" == -* ]]; then
    echo "usage: $0 DIR   (builds ${TOOLS[*]} into DIR/bin)" >&2
    exit 2
fi
mkdir -p "$1"
DIR="$(cd "$1" && pwd)"
JOBS="${JOBS:-2}"
PYTHON="${PYTHON:-python3}"

if [[ "${FORCE:-0}" != 1 ]] && [[ -x "$DIR/bin/${TOOLS[0]}" && -x "$DIR/bin/${TOOLS[1]}" ]]; then
    echo "already built: $DIR/bin/{${TOOLS[0]},${TOOLS[1]}} (FORCE=1 to rebuild)"
    exit 0
fi

# 1. the sdist (its vendor/llama.cpp is exactly what llama-cpp-python compiles)
SRC="$DIR/src"
mkdir -p "$SRC"
SDIST="${LLAMA_CPP_PYTHON_SDIST:-}"
if [[ -z "$SDIST" ]]; then
    SDIST="$(ls "$SRC"/llama_cpp_python-"$VERSION".tar.gz 2>/dev/null || true)"
fi
if [[ -z "$SDIST" ]]; then
    "$PYTHON" -m pip download --no-deps --no-binary :all: --dest "$SRC" "llama-cpp-python==$VERSION"
    SDIST="$SRC/llama_cpp_python-$VERSION.tar.gz"
fi
if [[ -d "$SDIST" ]]; then
    LLAMA_CPP="$SDIST/vendor/llama.cpp"
else
    tar -xzf "$SDIST" -C "$SRC"
    LLAMA_CPP="$SRC/llama_cpp_python-$VERSION/vendor/llama.cpp"
fi
[[ -f "$LLAMA_CPP/CMakeLists.txt" ]] || { echo "error: no llama.cpp sources in $SDIST" >&2; exit 1; }

# 2. a static Release build of just the two tools (no network features, no tests)
cmake -S "$LLAMA_CPP" -B "$DIR" \
    -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF
cmake --build "$DIR" -j "$JOBS" --target "${TOOLS[@]}"

for tool in "${TOOLS[@]}"; do
    [[ -x "$DIR/bin/$tool" ]] || { echo "error: $DIR/bin/$tool was not built" >&2; exit 1; }
done
echo "built: $DIR/bin/${TOOLS[0]} $DIR/bin/${TOOLS[1]}"
echo "use:   export MTPRUN_LLAMA_REF_BIN=$DIR/bin"
