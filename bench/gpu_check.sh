#!/usr/bin/env bash
# The prepared GPU check: tests on silicon first, then the microbenchmarks against their peers and a ~1B dense +
# ~1B hybrid mid-training MFU figure, within GPU_CHECK_BUDGET seconds (480 by default) on one H100 / H200
# (docs/gpu_check.md has the one `run` call and the per-phase compile-time estimate).
#
#   GPU_CHECK_OUT=$OUT bash bench/gpu_check.sh      # the device run
#   bash bench/gpu_check.sh --dry-run               # CPU: stage, collect tests/gpu, import + parse every bench
#
# Order (what must come back first goes first): header, peers, CUDA library, a fast bf16 test subset (every
# kernel family, head dims 64 and 128), attention core, SSD (mamba-ssm's autotune cut to 2 configs per kernel:
# its rows say "untuned"), fused loss, MFU, conv1d, then the optional rest (the other tests/gpu tests,
# FlexAttention + the forward config sweep) while budget remains. Every phase runs under `timeout` with its cap
# cut to the budget left; a phase that fails or times out is recorded and the next one runs.
#
# Results stream: PYTHONUNBUFFERED=1, every bench prints and appends each CSV row as it is measured (and writes
# the registers / spills / shared memory of every kernel it compiled to kernels.csv when it exits), and after
# every phase -- and on exit by any trappable signal -- everything (report, log, CSVs) is packed into one
# tarball; the report and the tarball are copied to $GPU_CHECK_OUT (2 files: what a run killed mid-phase by the
# device's limit returns is the state after the last finished phase, plus the report so far).
#
# The package is staged, never installed: prism_fast/, kernels/ (as prism_fast/kernels), tests/, bench/ and
# pyproject.toml are copied into a temporary directory first on PYTHONPATH, and every phase runs from there with
# PYTHONSAFEPATH=1, so no repository root can shadow the staged copy (the report prints prism_fast.__file__).
# A dry run goes one step further to mirror a machine where prism_fast is not installed: a development venv's
# scikit-build editable finder sits first on sys.meta_path and would win over PYTHONPATH (SKBUILD_EDITABLE_SKIP
# does not turn it off: it only names build dirs not to rebuild), so the dry run uses a bare venv that sees the
# development venv's site-packages as a plain path (its .pth files, the editable finder's included, never run).
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
SLOW=$(( DRY ? 3 : 1 ))        # a dry run is on a (shared, 2-core) CPU, not bound by the device budget
PY="$(command -v "${PYTHON:-python3}")"
BUDGET=$(( ${GPU_CHECK_BUDGET:-480} * SLOW ))
STAMP="$(date -u +%Y%m%d-%H%M%S)"
RES="${GPU_CHECK_RESULTS:-$ROOT/bench/results}/gpu_check_${STAMP}"
mkdir -p "$RES"
REPORT="$RES/report.md"
LOG="$RES/log.txt"
OUTF="$(mktemp)"                                 # one phase's output
TMP="$(mktemp -d)"
STAGE="$TMP/stage"
T0=$(date +%s)
SUMMARY=""
say() { echo "$*" | tee -a "$REPORT"; }
elapsed() { echo $(( $(date +%s) - T0 )); }

# pack: the whole result directory into one tarball; report + tarball to $GPU_CHECK_OUT. After every phase.
pack() {
  tar czf "$TMP/gpu_check_${STAMP}.tgz" -C "$(dirname "$RES")" "$(basename "$RES")" 2>/dev/null
  if [ -n "${GPU_CHECK_OUT:-}" ]; then
    mkdir -p "$GPU_CHECK_OUT"
    cp "$TMP/gpu_check_${STAMP}.tgz" "$GPU_CHECK_OUT/" && cp "$REPORT" "$GPU_CHECK_OUT/gpu_check_${STAMP}.md"
  fi
}
PHASE_PID=""
# A trapped signal stops the running phase (TERM to its `timeout`, which passes it on), keeps its output so far,
# and exits through the EXIT trap (pack). SIGKILL cannot be trapped: then the last phase's pack is what remains.
on_signal() {
  [ -n "$PHASE_PID" ] && kill -TERM "$PHASE_PID" 2>/dev/null
  cat "$OUTF" >> "$LOG" 2>/dev/null
  say ""; say "**interrupted by signal $1 at $(elapsed) s**"; exit $(( 128 + $2 ))
}
trap 'on_signal TERM 15' TERM
trap 'on_signal INT 2' INT
trap 'on_signal HUP 1' HUP
trap 'pack; rm -rf "$OUTF" "$TMP"' EXIT

# phase NAME CAP CMD...: run CMD (in the stage) under timeout min(CAP, budget left); its tail into the report.
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
  echo "=== ${name}" >> "$LOG"
  # In the background + wait: bash runs a trap only after the foreground command ends, but interrupts `wait`.
  ( cd "$STAGE" && exec timeout -k 5 "$t" "$@" ) > "$OUTF" 2>&1 &
  PHASE_PID=$!
  wait "$PHASE_PID"
  rc=$?
  PHASE_PID=""
  cat "$OUTF" >> "$LOG"
  say '```'
  tail -60 "$OUTF" | tee -a "$REPORT"
  say '```'
  local status="ok"
  [ $rc -ne 0 ] && status="FAILED rc=${rc}"
  { [ $rc -eq 124 ] || [ $rc -eq 137 ]; } && status="TIMEOUT after ${t} s"
  SUMMARY+="| ${name} | ${status} | $(( $(date +%s) - start )) |"$'\n'
  say "${status}"
  pack
}

# Stage the package (no install): native modules are added by the build phase.
mkdir -p "$STAGE"
cp -r prism_fast tests bench pyproject.toml "$STAGE/"
rm -rf "$STAGE/prism_fast/kernels" "$STAGE/bench/results" "$STAGE/bench/wheelhouse"
cp -r kernels "$STAGE/prism_fast/kernels"
find "$STAGE" -name __pycache__ -prune -exec rm -rf {} +
PEERS="$STAGE/peers"
export PYTHONPATH="$STAGE:$PEERS${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 PYTHONSAFEPATH=1 BENCH_RESULTS="$RES"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
unset TRITON_INTERPRET
if [ $DRY -eq 1 ]; then
  export BENCH_DRY_RUN=1
  "$PY" -m venv --without-pip "$TMP/venv" || exit 1
  "$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > \
    "$("$TMP/venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/dev_site.pth"
  PY="$TMP/venv/bin/python"
fi

say "# GPU check ${STAMP} (UTC)$([ $DRY -eq 1 ] && echo ' -- DRY RUN (collect tests, import and parse benches)')"
say ""
say '```'
{ timeout 20 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -4
  (cd "$STAGE" && timeout 60 "$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'NONE')")
  (cd "$STAGE" && timeout 60 "$PY" -c "import triton, prism_fast, prism_fast.kernels as k; print('triton', triton.__version__); print('prism_fast.__file__', prism_fast.__file__); print('prism_fast.kernels', list(k.__path__))") 2>&1 | tail -3
  uptime; } 2>&1 | tee -a "$REPORT"
say '```'

# Optional wheelhouse of pure-Python deps (carried with the call; none is fetched from a network).
if [ -d bench/wheelhouse ] && [ $DRY -eq 0 ]; then
  timeout 60 "$PY" -m pip install -q --no-index --find-links bench/wheelhouse --no-deps bench/wheelhouse/*.whl \
    >>"$LOG" 2>&1 && say "- wheelhouse: installed $(ls bench/wheelhouse | wc -l) wheels" \
    || say "- wheelhouse: install FAILED (see log)"
fi

# The CUDA library alone (csrc/conv1d): PRISM_CUDA_ONLY needs neither Python headers nor nanobind. One build
# directory per generator: CMake refuses to re-configure a directory with another one.
build_native() {
  local gen=() build="$ROOT/build/gpu_check_make"
  command -v ninja >/dev/null && { gen=(-G Ninja); build="$ROOT/build/gpu_check_ninja"; }
  cmake -S "$ROOT" -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DPRISM_CUDA_ONLY=ON \
    -DPRISM_CUDA_ARCHS=90a || return 1      # the device is sm_90: one arch halves the nvcc time
  cmake --build "$build" -j 16 || return 1
  find "$build" -maxdepth 3 -name "libprism_cuda*.so" -exec cp {} "$STAGE/prism_fast/" \;
  echo "staged: $(cd "$STAGE/prism_fast" && ls ./*.so 2>/dev/null | tr '\n' ' ')"
}
export -f build_native
export ROOT STAGE

PYTEST=("$PY" -m pytest -p no:cacheprovider -o addopts="" -rs)
# --timeout needs pytest-timeout (in the wheelhouse); without it a per-test limit is dropped, not the tests
T_SHORT=() T_LONG=()
if (cd "$STAGE" && "$PY" -c "import pytest_timeout" 2>/dev/null); then T_SHORT=(--timeout 60); T_LONG=(--timeout 90)
else say "- pytest-timeout missing: tests run without a per-test limit (carry bench/wheelhouse)"; fi
# The fast bf16 subset (14 tests, ~35 Triton compiles: docs/gpu_check.md): every kernel family once -- attention
# fwd+bwd at head dims 64 and 128 (GQA 4, causal, and the 8k bench pack), decode (paged and not),
# fused CE and log-probs, SSD (chunk 256), conv1d (Triton and the CUDA library), the Mamba state update. The
# other dims and GQA shapes, the fp32 FMA-path kernels (15-90 s of compile each), the models and the
# mamba-ssm / transformers comparisons wait for the optional rest.
FAST='varlen_bf16_error_budget and (window0-64 or window0-128) or large_pack or decode_bf16_error_budget and 128 or ce_bf16_error_budget[mean-triton] or logprobs_bf16_error_budget[triton] or ssd_triton_bf16_error_budget[256-1] or conv1d_bf16 or state_update_triton_on_cuda[dtype1] or cuda_library_sees or conv1d_update_cuda'
say ""
say "## Phases (budget ${BUDGET} s)"
phase "peers (Liger-Kernel, mamba-ssm sdist, einops, FlexAttention)" 30 "$PY" bench/peers.py --dest "$PEERS" --check
# Dry run: import every bench module (their mains sit behind __name__ guards) from the stage.
IMPORT_BENCHES='
import importlib.util, pathlib, sys
sys.path.insert(0, "bench")
bad = 0
for p in sorted(pathlib.Path("bench").glob("*.py")):
    spec = importlib.util.spec_from_file_location("bench_import_" + p.stem, p)
    try:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
        print("imported", p.name)
    except Exception as e:
        bad += 1
        print("FAILED", p.name, type(e).__name__, e)
import prism_fast
print("prism_fast.__file__", prism_fast.__file__)
sys.exit(1 if bad else 0)'
if [ $DRY -eq 1 ]; then
  phase "tests/gpu (collect only: all)" 60 "${PYTEST[@]}" -q --collect-only tests/gpu
  phase "tests/gpu (collect only: fast bf16 subset)" 60 "${PYTEST[@]}" -q --collect-only tests/gpu -k "$FAST"
  phase "import every bench" 60 "$PY" -c "$IMPORT_BENCHES"
else
  phase "native build (CUDA library only)" 45 bash -c build_native
  phase "tests/gpu: fast bf16 subset" 120 "${PYTEST[@]}" -v --durations=15 "${T_SHORT[@]}" tests/gpu -k "$FAST"
fi
phase "attention core: triton vs torch / SDPA padded / flash_attn; decode" 45 \
  "$PY" bench/bench_attention.py --device cuda --quick --providers core --overwrite
phase "ssd: triton vs torch / mamba_ssm (sdist Triton kernels, untuned: 1 config), granite-4.0-h shape" 60 \
  "$PY" bench/bench_ssd.py --device cuda --quick --mamba-configs 1 --shapes granite-4.0-h-micro --overwrite
phase "fused loss: triton vs torch / Liger-Kernel" 35 \
  "$PY" bench/bench_fused_loss.py --device cuda --quick --overwrite
phase "mid-training MFU: ~1B dense + ~1B hybrid, random weights" 90 \
  "$PY" bench/bench_mfu.py --device cuda --quick --kernels "${GPU_CHECK_KERNELS:-}" --overwrite
phase "conv1d: triton / cuda vs torch conv1d" 25 "$PY" bench/bench_conv1d.py --device cuda --quick --overwrite
say ""
say "## Optional (while budget remains)"
if [ $DRY -eq 1 ]; then
  phase "tests/gpu: the rest (collect only)" 60 "${PYTEST[@]}" -q --collect-only tests/gpu -k "not ($FAST)"
else
  phase "tests/gpu: the rest (fp32, mamba, models)" 150 "${PYTEST[@]}" -v --durations=15 "${T_LONG[@]}" \
    tests/gpu -k "not ($FAST)"
fi
phase "attention: FlexAttention + forward config sweep" 90 \
  "$PY" bench/bench_attention.py --device cuda --quick --providers flex --sweep --overwrite

say ""
say "## Summary"
say ""
say "| phase | status | seconds |"
say "|---|---|---|"
printf "%s" "$SUMMARY" | tee -a "$REPORT"
say ""
say "Total: $(elapsed) s. In gpu_check_${STAMP}.tgz: this report, log.txt (every phase's full output), the CSV"
say "rows (device_name column) and kernels.csv (registers, spills, shared memory of every compiled kernel)."
