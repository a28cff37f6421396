#!/usr/bin/env bash
# One prepared GPU check: build csrc, run tests/gpu, run every microbenchmark in --quick mode, and write a
# markdown + CSV report under bench/results/. Budget: < 8 minutes on one H200.
#
# The GPU machine runs its own image (its own CUDA torch and triton, possibly no package registry), so this
# script installs nothing from the network:
#   - pure-Python deps missing there can travel in bench/wheelhouse/ (make it here with bench/make_wheelhouse.sh;
#     it is git-ignored and carried with the call);
#   - the package is staged, not pip-installed: prism_fast/ + kernels/ (as prism_fast/kernels) + the native
#     modules built by CMake are copied into a temporary directory put first on PYTHONPATH, and pytest runs with
#     --import-mode=append so the repo checkout does not shadow the staged package.
# Usage: bash bench/gpu_check.sh        (env: PYTHON=python3, GPU_CHECK_BENCH_TIMEOUT=75)
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
STAMP="$(date -u +%Y%m%d-%H%M)"
RES="$ROOT/bench/results"
mkdir -p "$RES"
REPORT="$RES/gpu_check_${STAMP}.md"
LOG="$RES/gpu_check_${STAMP}.log"
BENCH_TIMEOUT="${GPU_CHECK_BENCH_TIMEOUT:-75}"
T0=$(date +%s)
say() { echo "$*" | tee -a "$REPORT"; }
elapsed() { echo $(( $(date +%s) - T0 )); }

say "# GPU check ${STAMP} (UTC)"
say ""
say '```'
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -4
  "$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'NONE')"
  "$PY" -c "import triton; print('triton', triton.__version__)" 2>&1 | tail -1
  nvcc --version 2>/dev/null | tail -1; cmake --version 2>/dev/null | head -1; } | tee -a "$REPORT"
say '```'

# 0. Optional wheelhouse (no network on the GPU machine).
if [ -d bench/wheelhouse ]; then
  "$PY" -m pip install -q --no-index --find-links bench/wheelhouse --no-deps bench/wheelhouse/*.whl >>"$LOG" 2>&1 \
    && say "- wheelhouse: installed $(ls bench/wheelhouse | wc -l) wheels" || say "- wheelhouse: install FAILED (see log)"
fi

# 1. Build csrc with CMake (CUDA library always; the nanobind data module when nanobind is importable).
BUILD="$ROOT/build/gpu_check"
STAGE="$(mktemp -d)/stage"
mkdir -p "$STAGE" "$BUILD"
NB_DIR="$("$PY" -m nanobind --cmake_dir 2>/dev/null || true)"
if [ -n "$NB_DIR" ]; then
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DPython_EXECUTABLE="$(command -v "$PY")" >>"$LOG" 2>&1 \
    || cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DPython_EXECUTABLE="$(command -v "$PY")" >>"$LOG" 2>&1
  BUILD_OK=$?
else
  # No nanobind: build only the CUDA library from its own CMake subdirectory.
  cat > "$BUILD/CMakeLists.txt" <<CM
cmake_minimum_required(VERSION 3.24)
project(prism_cuda_only LANGUAGES CXX CUDA)
set(PRISM_CUDA_ARCHS "80;90a" CACHE STRING "")
add_subdirectory("$ROOT/csrc/conv1d" conv1d)
CM
  cmake -S "$BUILD" -B "$BUILD/b" -DCMAKE_BUILD_TYPE=Release >>"$LOG" 2>&1
  BUILD_OK=$?
  BUILD="$BUILD/b"
fi
[ $BUILD_OK -eq 0 ] && cmake --build "$BUILD" -j 16 >>"$LOG" 2>&1; BUILD_OK=$?
cp -r prism_fast "$STAGE/prism_fast"
rm -rf "$STAGE/prism_fast/kernels"; cp -r kernels "$STAGE/prism_fast/kernels"
find "$BUILD" -maxdepth 3 \( -name "libprism_cuda*.so" -o -name "_native*.so" \) -exec cp {} "$STAGE/prism_fast/" \;
say ""
say "## Build ($(elapsed) s)"
say "- cmake build rc=${BUILD_OK}; staged native modules: $(cd "$STAGE/prism_fast" && ls *.so 2>/dev/null | tr '\n' ' ')"
export PYTHONPATH="$STAGE${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

# 2. GPU tests.
say ""
say "## tests/gpu ($(elapsed) s)"
say '```'
timeout 240 "$PY" -m pytest -q -p no:cacheprovider --import-mode=append -o addopts="" tests/gpu 2>&1 \
  | tee -a "$LOG" | tail -25 | tee -a "$REPORT"
say '```'

# 3. Microbenchmarks (each bounded; CSV rows land in bench/results/<op>.csv).
say ""
say "## Benchmarks (--device cuda --quick; ${BENCH_TIMEOUT} s cap each)"
for b in bench_fused_loss bench_attention bench_ssd bench_conv1d bench_mamba2 bench_models bench_midtrain; do
  [ -f "bench/$b.py" ] || continue
  EXTRA=""; grep -q -- "--overwrite" "bench/$b.py" && EXTRA="--overwrite"
  say ""
  say "### $b ($(elapsed) s)"
  say '```'
  timeout "$BENCH_TIMEOUT" "$PY" "bench/$b.py" --device cuda --quick $EXTRA 2>&1 | tee -a "$LOG" | tail -30 \
    | tee -a "$REPORT"
  say "rc=${PIPESTATUS[0]}"
  say '```'
done
say ""
say "Total: $(elapsed) s. Full log: $(basename "$LOG"). CSV rows: bench/results/*.csv (device_name column)."
echo "report: $REPORT"
