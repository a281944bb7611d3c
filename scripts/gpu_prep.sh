#!/usr/bin/env bash
# Prepare .gpu/ for scripts/gpu_check.sh on a CUDA machine that has no network (and Python 3.12, a
# CUDA compiler, CMake, ninja, scikit-build-core and nanobind, but not llama-cpp-python).
#
#  1. the pinned llama-cpp-python sdist, trimmed to what its build reads (llama.cpp's test models,
#     docs and benches left out: the whole sdist is 77 MB, more than a device call carries);
#  2. wheels of mtprun's Python dependencies at the versions this checkout's tests ran with (the
#     machine's own packages serve the rest), for CPython 3.12 on manylinux x86-64.
#
# Usage: scripts/gpu_prep.sh [PYTHON_VERSION]   (default 3.12; needs pip's network here)
# Then, on the device: scripts/gpu_check.sh (carry .gpu).
set -euo pipefail

VERSION=0.3.36
PYV="${1:-3.12}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIR="$ROOT/.gpu"
PY="${PYTHON:-python3}"
say() { printf 'gpu_prep: %s\n' "$*" >&2; }

rm -rf "$DIR" && mkdir -p "$DIR/wheels" "$DIR/tmp"
trap 'rm -rf "$DIR/tmp"' EXIT

say "llama-cpp-python $VERSION sdist"
"$PY" -m pip download -q --no-deps --no-binary llama-cpp-python "llama-cpp-python==$VERSION" -d "$DIR/tmp"
tar -xzf "$DIR/tmp/llama_cpp_python-$VERSION.tar.gz" -C "$DIR/tmp"
SRC="$DIR/tmp/llama_cpp_python-$VERSION"
# the commit llama.cpp's and ggml's builds read from git: without the history they say "unknown",
# so the trimmed copy states it ("-trimmed": not the pip build's own string, whose ggml says -dirty)
COMMIT="$(git -C "$SRC/vendor/llama.cpp" rev-parse --short HEAD)-trimmed"
sed -i "s/^\( *\)set(GGML_BUILD_COMMIT \"unknown\")/\1set(GGML_BUILD_COMMIT \"$COMMIT\")/" "$SRC/vendor/llama.cpp/ggml/CMakeLists.txt"
sed -i "s/^set(BUILD_COMMIT \"unknown\")/set(BUILD_COMMIT \"$COMMIT\")/" "$SRC/vendor/llama.cpp/cmake/build-info.cmake"
grep -q "\"$COMMIT\"" "$SRC/vendor/llama.cpp/ggml/CMakeLists.txt" || { say "could not set the build commit"; exit 1; }
# what a build of the Python package (LLAMA_STANDALONE off: no tests, tools, examples) never reads,
# and the git history the sdist carries (38 MB)
rm -rf "$SRC/vendor/llama.cpp/"{models,docs,benches,tests,examples,media,gguf-py,scripts,conversion} \
       "$SRC/docs" "$SRC/examples" "$SRC/tests" "$SRC/.git" "$SRC/vendor/llama.cpp/.git"
find "$SRC/vendor/llama.cpp/tools" -mindepth 1 -maxdepth 1 ! -name mtmd -exec rm -rf {} +
tar -czf "$DIR/llama_cpp_python-$VERSION-trimmed.tar.gz" -C "$DIR/tmp" "llama_cpp_python-$VERSION"

say "dependency wheels for CPython $PYV"
# the versions the tests ran with here (pip freeze of a venv made by the README's first command)
PINS=(gguf==0.19.0 huggingface_hub==2.4.0 hf-xet==1.8.0 httpx2==2.16.2 httpcore2==2.16.2 diskcache==5.6.3
      typer==0.29.2 rich==15.0.0 pexpect==4.9.0 ptyprocess==0.7.0 shellingham==1.5.4 annotated-doc==0.0.7
      click==8.5.1 markdown-it-py==4.3.0 mdurl==0.1.2 typing_extensions==4.16.0 pydantic==2.14.4
      pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 truststore==0.10.5)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$DIR/wheels" "${PINS[@]}"
du -ch "$DIR"/*.tar.gz "$DIR"/wheels/* | tail -1 >&2
say "done: carry .gpu to the device and run scripts/gpu_check.sh there"
