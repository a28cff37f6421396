#!/usr/bin/env bash
# The prepared GPU check: peers, native build, tests/gpu, the microbenchmarks against their peers, and a ~1B
# dense + ~1B hybrid mid-training MFU figure, in < 7 minutes on one H200 (docs/gpu_check.md).
#
#   GPU_CHECK_OUT=$OUT bash bench/gpu_check.sh; tar czf $OUT/results.tgz bench/results
#   bash bench/gpu_check.sh --dry-run      # CPU: every phase's Python entry imports and parses its arguments
#
# Budget: every phase runs under `timeout` with its own cap, cut further so that the phases together never pass
# GPU_CHECK_BUDGET seconds (default 390); a phase that fails or times out is recorded and the next one runs.
# Output: bench/results/gpu_check_<stamp>.md (report with a phase table), .log (everything), the CSV rows each
# benchmark appends to bench/results/<op>.csv; all of them are also copied into $GPU_CHECK_OUT when it is set
# (the device machine returns files only from there).
# No package registry on the GPU machine: the peers (Liger-Kernel and einops wheels, the mamba-ssm sdist) are
# committed in bench/peers/ and unpacked onto PYTHONPATH by bench/peers.py; other missing pure-Python deps can
# travel in bench/wheelhouse/ (bench/make_wheelhouse.sh; carry it with the call). The package is staged, not
# installed: prism_fast/ + kernels/ (as prism_fast/kernels) + the native modules built by CMake are copied into a
# temporary directory put first on PYTHONPATH (pytest runs with --import-mode=append).
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
SLOW=$(( DRY ? 3 : 1 ))        # a dry run is on a (shared, 2-core) CPU, not bound by the device budget
PY="${PYTHON:-python3}"
BUDGET=$(( ${GPU_CHECK_BUDGET:-390} * SLOW ))
STAMP="$(date -u +%Y%m%d-%H%M%S)"
RES="${GPU_CHECK_RESULTS:-$ROOT/bench/results}"
mkdir -p "$RES"
REPORT="$RES/gpu_check_${STAMP}.md"
LOG="$RES/gpu_check_${STAMP}.log"
MARK="$(mktemp)"                                 # CSVs newer than this were written by this run
OUTF="$(mktemp)"                                 # one phase's output
STAGE="$(mktemp -d)/stage"
mkdir -p "$STAGE"
T0=$(date +%s)
SUMMARY=""
say() { echo "$*" | tee -a "$REPORT"; }
elapsed() { echo $(( $(date +%s) - T0 )); }

# phase NAME CAP CMD...: run CMD under timeout min(CAP, budget left); tail of its output into the report.
phase() {
  local name="$1" cap=$(( $2 * SLOW )); shift 2
  local left=$(( BUDGET - $(elapsed) )) t rc start
  t=$(( cap < left ? cap : left ))
  say ""
  say "### ${name} (start $(elapsed) s, cap ${t} s)"
  if [ "$t" -lt 10 ]; then
    say "skipped: budget spent"; SUMMARY+="| ${name} | skipped (budget) | 0 |"$'\n'; return
  fi
  start=$(date +%s)
  timeout -k 5 "$t" "$@" >"$OUTF" 2>&1
  rc=$?
  cat "$OUTF" >> "$LOG"
  say '```'
  tail -40 "$OUTF" | tee -a "$REPORT"
  say '```'
  local status="ok"
  [ $rc -ne 0 ] && status="FAILED rc=${rc}"
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && status="TIMEOUT after ${t} s"
  SUMMARY+="| ${name} | ${status} | $(( $(date +%s) - start )) |"$'\n'
  say "${status}"
}

say "# GPU check ${STAMP} (UTC)$([ $DRY -eq 1 ] && echo ' -- DRY RUN (imports and argument parsing only)')"
say ""
say '```'
{ timeout 20 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -4
  timeout 60 "$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'NONE')"
  timeout 30 "$PY" -c "import triton; print('triton', triton.__version__)" 2>&1 | tail -1
  uptime; } 2>&1 | tee -a "$REPORT"
say '```'

# Optional wheelhouse of pure-Python deps (carried with the call; none is fetched from a network).
if [ -d bench/wheelhouse ] && [ $DRY -eq 0 ]; then
  timeout 60 "$PY" -m pip install -q --no-index --find-links bench/wheelhouse --no-deps bench/wheelhouse/*.whl \
    >>"$LOG" 2>&1 && say "- wheelhouse: installed $(ls bench/wheelhouse | wc -l) wheels" \
    || say "- wheelhouse: install FAILED (see log)"
fi

# Stage the package (no install): prism_fast + kernels; native modules are added by the build phase.
cp -r prism_fast "$STAGE/prism_fast"
rm -rf "$STAGE/prism_fast/kernels"; cp -r kernels "$STAGE/prism_fast/kernels"
PEERS="$STAGE/peers"
export PYTHONPATH="$STAGE:$PEERS${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
[ $DRY -eq 1 ] && export BENCH_DRY_RUN=1

build_native() {       # CMake: the CUDA conv1d library always, the nanobind data module when nanobind imports
  local build="$ROOT/build/gpu_check" nb
  mkdir -p "$build"
  nb="$("$PY" -m nanobind --cmake_dir 2>/dev/null || true)"
  if [ -n "$nb" ]; then
    cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DPython_EXECUTABLE="$(command -v "$PY")" \
      || cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DPython_EXECUTABLE="$(command -v "$PY")" || return 1
  else
    printf 'cmake_minimum_required(VERSION 3.24)\nproject(prism_cuda_only LANGUAGES CXX CUDA)\nset(PRISM_CUDA_ARCHS "80;90a" CACHE STRING "")\nadd_subdirectory("%s/csrc/conv1d" conv1d)\n' \
      "$ROOT" > "$build/CMakeLists.txt"
    cmake -S "$build" -B "$build/b" -DCMAKE_BUILD_TYPE=Release || return 1
    build="$build/b"
  fi
  cmake --build "$build" -j 16 || return 1
  find "$build" -maxdepth 3 \( -name "libprism_cuda*.so" -o -name "_native*.so" \) -exec cp {} "$STAGE/prism_fast/" \;
  echo "staged native modules: $(cd "$STAGE/prism_fast" && ls ./*.so 2>/dev/null | tr '\n' ' ')"
}
export -f build_native
export ROOT PY STAGE

say ""
say "## Phases (budget ${BUDGET} s)"
phase "peers (Liger-Kernel, mamba-ssm sdist, einops, FlexAttention)" 30 "$PY" bench/peers.py --dest "$PEERS" --check
if [ $DRY -eq 1 ]; then
  phase "tests/gpu (collect only)" 60 "$PY" -m pytest -q -p no:cacheprovider --import-mode=append -o addopts="" \
    --collect-only tests/gpu
else
  phase "native build (cmake)" 60 bash -c build_native
  phase "tests/gpu" 90 "$PY" -m pytest -q -p no:cacheprovider --import-mode=append -o addopts="" tests/gpu
fi
phase "attention: triton vs torch / SDPA padded / FlexAttention / flash_attn, + config sweep" 55 \
  "$PY" bench/bench_attention.py --device cuda --quick --sweep --overwrite
phase "ssd: triton vs torch / mamba_ssm (sdist Triton kernels)" 35 \
  "$PY" bench/bench_ssd.py --device cuda --quick --overwrite
phase "conv1d: triton / cuda vs torch conv1d" 20 "$PY" bench/bench_conv1d.py --device cuda --quick --overwrite
phase "fused loss: triton vs torch / Liger-Kernel" 30 \
  "$PY" bench/bench_fused_loss.py --device cuda --quick --overwrite
phase "mid-training MFU: ~1B dense + ~1B hybrid, random weights" 60 \
  "$PY" bench/bench_mfu.py --device cuda --quick --kernels "${GPU_CHECK_KERNELS:-}" --overwrite

say ""
say "## Summary"
say ""
say "| phase | status | seconds |"
say "|---|---|---|"
printf "%s" "$SUMMARY" | tee -a "$REPORT"
say ""
say "Total: $(elapsed) s. Log: $(basename "$LOG"). CSV rows: bench/results/*.csv (device_name column)."
if [ -n "${GPU_CHECK_OUT:-}" ]; then
  mkdir -p "$GPU_CHECK_OUT"
  cp "$REPORT" "$LOG" "$GPU_CHECK_OUT"/
  find "$RES" -maxdepth 1 -name "*.csv" -newer "$MARK" -exec cp {} "$GPU_CHECK_OUT"/ \;
  echo "copied report, log and $(find "$RES" -maxdepth 1 -name '*.csv' -newer "$MARK" | wc -l) CSVs to $GPU_CHECK_OUT"
fi
rm -f "$MARK" "$OUTF"
echo "report: $REPORT"
