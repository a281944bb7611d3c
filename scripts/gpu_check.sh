#!/usr/bin/env bash
# On a CUDA machine without network (the device machine: Python 3.12 with scikit-build-core,
# nanobind, CMake, ninja and nvcc), from this checkout with .gpu/ made by scripts/gpu_prep.sh:
#  1. mtprun's dependency wheels in a folder of their own on PYTHONPATH, over the machine's packages
#     (its python3 is itself a virtual environment, whose packages a venv made from it would not see);
#  2. llama-cpp-python 0.3.36 built for CUDA from the trimmed sdist (one GPU architecture);
#  3. mtprun built against it;
#  4. the engine tests (greedy identity, sampling, adaptive policy, memory, architectures);
#  5. scripts/bench_engine.py on the GPU (f16 and Q4_K_M bench models, plain / fixed / auto).
# Everything goes to $OUT (default ./gpu-out): gpu_check.log, pytest.txt, bench_*.json.
#
# Usage: scripts/gpu_check.sh [STAGE...]   STAGE: build (1-3), test (4), bench (5); default all.
# The device tool runs one command for at most 10 minutes: run `build test` in one call and
# `bench` in the next while the machine is warm (the packages stay in .gpu-site, which is not
# carried). Carry .gpu. Not yet run on a GPU: no device was lent to the session that wrote it (the
# whole flow ran on a CPU machine with GPU_CHECK_CMAKE_ARGS=-DGGML_CUDA=off: build 5-5.5 min on 2
# cores, engine tests passed, bench ran).
# Environment: GPU_CHECK_CMAKE_ARGS (default "-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90"; give
# "-DGGML_CUDA=off" to try the whole flow on a CPU machine), GPU_CHECK_QUICK=1 (a short bench and
# fewer tests), GPU_CHECK_JOBS (build parallelism, default the core count).
set -uo pipefail

VERSION=0.3.36
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-$ROOT/gpu-out}"
SITE="${GPU_CHECK_SITE:-$ROOT/.gpu-site}"
CMAKE_FLAGS="${GPU_CHECK_CMAKE_ARGS:--DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90}"
QUICK="${GPU_CHECK_QUICK:-0}"
export CMAKE_BUILD_PARALLEL_LEVEL="${GPU_CHECK_JOBS:-$(nproc)}"
export PYTHONUNBUFFERED=1 PIP_ROOT_USER_ACTION=ignore
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
cd "$ROOT"
t0=$SECONDS
say() { printf '[gpu_check %4ds] %s\n' "$((SECONDS - t0))" "$*"; }
die() { say "FAILED: $*"; exit 1; }
STAGES=("$@"); [[ ${#STAGES[@]} -eq 0 ]] && STAGES=(build test bench)
want() { [[ " ${STAGES[*]} " == *" $1 "* ]]; }
PY=python3
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" PATH="$SITE/bin:$PATH"

[[ -f .gpu/llama_cpp_python-$VERSION-trimmed.tar.gz ]] || die ".gpu/ is missing: run scripts/gpu_prep.sh where pip has network, and carry .gpu"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
say "python: $(python3 --version), cmake args: $CMAKE_FLAGS, jobs: $CMAKE_BUILD_PARALLEL_LEVEL"

if want build; then
# 1. environment
rm -rf "$SITE" && mkdir -p "$SITE" || die "$SITE"
"$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .gpu/wheels/*.whl || die "dependency wheels"

# 2. llama-cpp-python for the GPU
SRC=/tmp/mtprun-gpu-src
rm -rf "$SRC" && mkdir -p "$SRC" && tar -xzf ".gpu/llama_cpp_python-$VERSION-trimmed.tar.gz" -C "$SRC" || die "sdist"
say "building llama-cpp-python $VERSION"
CMAKE_ARGS="$CMAKE_FLAGS -DLLAVA_BUILD=off" "$PY" -m pip install -q --no-index --no-deps --no-build-isolation \
    --target "$SITE" --upgrade "$SRC/llama_cpp_python-$VERSION" >"$OUT/build.txt" 2>&1 || { tail -30 "$OUT/build.txt"; die "llama-cpp-python build"; }
rm -f "$OUT/build.txt"
say "llama-cpp-python built"

# 3. mtprun
# (its own build directory: the checkout's build/ may belong to a developer's editable install)
"$PY" -m pip install -q --no-index --no-deps --no-build-isolation --target "$SITE" --upgrade -Cbuild-dir="$SITE.build" . \
    || die "mtprun build"
"$PY" - <<'PYEOF' || die "import"
import llama_cpp, mtprun
from mtprun._native import core
print("mtprun", mtprun.__version__, "llama_cpp", llama_cpp.__version__, "llama.cpp", core.runtime_commit(),
      "gpu offload:", llama_cpp.llama_supports_gpu_offload())
PYEOF
say "mtprun built"
fi
[[ -d "$SITE/mtprun" ]] || die "mtprun is not built in $SITE: run the build stage first"

# 4. tests (a failure is reported; the bench still runs)
if want test; then
TESTS=(tests/test_engine.py tests/test_adaptive.py tests/test_memory.py tests/test_arch.py)
[[ "$QUICK" == 1 ]] && TESTS=(tests/test_engine.py)
( cd "$ROOT" && timeout 300 "$PY" -m pytest -q -p no:cacheprovider "${TESTS[@]}" ) >"$OUT/pytest.txt" 2>&1
say "tests: rc=$? $(tail -1 "$OUT/pytest.txt")"
fi

# 5. the bench on the GPU (all layers offloaded: ModelConfig's default)
if want bench; then
BENCH=(--agree 0.3,0.9 --n-max 1,2,3,6 --reps 3 --tokens 64 --no-ref)
[[ "$QUICK" == 1 ]] && BENCH=(--agree 0.9 --n-max 1,3 --reps 1 --tokens 16 --no-ref)
for q in f16 Q4_K_M; do
    extra=(); [[ "$q" == f16 && "$QUICK" != 1 ]] && extra=(--phases --phase-spec 90:0.95,90:0.1)
    timeout 270 "$PY" scripts/bench_engine.py --quant "$q" "${BENCH[@]}" "${extra[@]}" --json "$OUT/bench_$q.json" \
        || say "bench $q: rc=$?"
done
fi
say "done in $((SECONDS - t0)) s"
