"""Shared benchmark harness: timing (warmup, synchronize, quantiles), peak memory, machine label, CSV rows.

Every bench/bench_<op>.py uses it so numbers are comparable: rows go to bench/results/<op>.csv (BENCH_RESULTS
overrides the directory: bench/gpu_check.sh points it at its run's folder) with the columns
op, provider, mode, metric, unit, x, p50, p20, p80, config, device_name, timestamp, version.
Rows stream (StreamRows): each is printed and written to the CSV as soon as it is measured, so a bench killed by
a time limit keeps what it measured. On CUDA, the registers, spill bytes and shared memory of every Triton
kernel the bench compiled go to kernels.csv when it exits (write_kernel_stats).
Timing on CUDA uses CUDA events around each call after `warmup` calls; on CPU, perf_counter. Quantiles are over
`reps` calls (medians are what reports quote).
"""
from __future__ import annotations

import atexit
import csv
import json
import os
import platform
import signal
import statistics
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(os.environ.get("BENCH_RESULTS") or Path(__file__).resolve().parent / "results")
COLUMNS = ["op", "provider", "mode", "metric", "unit", "x", "p50", "p20", "p80", "config", "device_name",
           "timestamp", "version"]


def parse_args(ap, argv=None):
    """ap.parse_args(argv); with BENCH_DRY_RUN=1 (bench/gpu_check.sh --dry-run) stop right after: the script
    imported and its arguments parsed, which is what a CPU machine can check of a GPU benchmark."""
    args = ap.parse_args(argv)
    if os.environ.get("BENCH_DRY_RUN") == "1":
        import prism_fast
        print(f"dry-run ok: {ap.prog} {' '.join(sys.argv[1:] if argv is None else argv)} "
              f"(prism_fast from {Path(prism_fast.__file__).parent})")
        sys.exit(0)
    atexit.register(write_kernel_stats, Path(sys.argv[0]).stem)
    # a phase's `timeout` ends the bench with SIGTERM: exit through atexit so kernels.csv is still written
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    return args


def device_name(device) -> str:
    """Human label of the machine, e.g. 'NVIDIA H200' or '2-core CPU, no GPU'."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = "" if torch.cuda.is_available() else ", no GPU"
    return f"{n}-core CPU ({platform.machine()}){gpu}"


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def quantiles(samples) -> tuple[float, float, float]:
    """(p50, p20, p80) of a list of numbers."""
    s = sorted(samples)
    if len(s) == 1:
        return s[0], s[0], s[0]
    q = statistics.quantiles(s, n=10, method="inclusive")      # deciles: q[1] = p20, q[7] = p80
    return statistics.median(s), q[1], q[7]


def time_fn(fn, *, device, warmup: int = 3, reps: int = 10) -> tuple[float, float, float]:
    """Milliseconds per call of fn() as (p50, p20, p80), after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    cuda = torch.device(device).type == "cuda"
    for _ in range(reps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return quantiles(times)


def peak_memory_mb(fn, *, device) -> float | None:
    """Peak CUDA memory (MiB) allocated during one fn() call above what was allocated before; None on CPU."""
    if torch.device(device).type != "cuda":
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def measure(op, provider, mode, fn, x, *, config: dict, device, warmup: int, reps: int,
            mem_metric: str = "peak_mem") -> tuple[float, float | None, list[dict]]:
    """Time fn() (time_fn) and measure its CUDA peak (peak_memory_mb, None on CPU).

    Returns (p50 ms, peak MiB or None, rows): the "time" row and, where memory was measured, the `mem_metric`
    row. Throughput rows differ per op (TFLOP/s, GB/s) and stay with the caller."""
    p50, p20, p80 = time_fn(fn, device=device, warmup=warmup, reps=reps)
    mem = peak_memory_mb(fn, device=device)
    rows = [row(op, provider, mode, "time", "ms", x, p50, p20, p80, config=config, device=device)]
    if mem is not None:
        rows.append(row(op, provider, mode, mem_metric, "MiB", x, mem, config=config, device=device))
    return p50, mem, rows


def row(op, provider, mode, metric, unit, x, p50, p20=None, p80=None, *, config: dict, device) -> dict:
    """One CSV row (p20/p80 default to p50 for single-shot metrics such as memory)."""
    return {"op": op, "provider": provider, "mode": mode, "metric": metric, "unit": unit, "x": x,
            "p50": f"{p50:.6g}", "p20": f"{(p50 if p20 is None else p20):.6g}",
            "p80": f"{(p50 if p80 is None else p80):.6g}", "config": json.dumps(config, sort_keys=True),
            "device_name": device_name(device), "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "version": f"torch {torch.__version__}"}


def append_rows(op: str, rows: list[dict], *, overwrite: bool = False) -> Path:
    """Append rows to bench/results/<op>.csv (with overwrite=True, drop earlier rows of the same op, provider,
    mode, metric, x and device first). Returns the CSV path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{op}.csv"
    old = []
    if path.exists():
        with open(path, newline="") as f:
            old = list(csv.DictReader(f))
    if overwrite:
        key = lambda r: (r["op"], r["provider"], r["mode"], r["metric"], str(r["x"]), r["device_name"])  # noqa: E731
        new_keys = {key(r) for r in rows}
        old = [r for r in old if key(r) not in new_keys]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(old + rows)
    return path


class StreamRows(list):
    """A list of CSV rows that prints each row and writes it to bench/results/<op>.csv as it is added
    (`rows += r`, `rows.append(r)`), so what was measured survives a bench killed by a time limit.
    With overwrite, each batch replaces earlier rows of the same key (append_rows); path: the CSV."""

    def __init__(self, op: str, *, overwrite: bool = False):
        super().__init__()
        self.op, self.overwrite, self.path = op, overwrite, RESULTS / f"{op}.csv"

    def extend(self, rows):
        rows = list(rows)
        super().extend(rows)
        for r in rows:
            print(f"  row: {r['provider']} {r['mode']} {r['metric']} x={r['x']} p50={r['p50']} {r['unit']}",
                  flush=True)
        self.path = append_rows(self.op, rows, overwrite=self.overwrite)

    def append(self, r):
        self.extend([r])

    def __iadd__(self, rows):
        self.extend(rows)
        return self


def compiled_kernels():
    """(kernel name, CompiledKernel) for every Triton kernel compiled in this process so far: the JIT caches of
    every @triton.jit function reachable from loaded modules (ours and the peers'; autotuners unwrapped)."""
    try:
        from triton.runtime.jit import JITFunction
    except ImportError:
        return []
    seen, out = set(), []
    for mod in list(sys.modules.values()):
        for obj in list(getattr(mod, "__dict__", {}).values()):
            fn = obj
            while fn is not None and not isinstance(fn, JITFunction) and hasattr(fn, "fn"):
                fn = fn.fn                        # Autotuner / Heuristics -> JITFunction
            if not isinstance(fn, JITFunction) or id(fn) in seen:
                continue
            seen.add(id(fn))
            for cache in getattr(fn, "device_caches", {}).values():
                for k in cache[0].values():
                    out.append((f"{fn.__module__}.{fn.__name__}", k))
    return out


def write_kernel_stats(bench: str) -> None:
    """Append one kernels.csv row per compiled kernel (registers, spill bytes, shared memory, warps, stages) and
    print them; CUDA only (the numbers come from loading the cubin)."""
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return
    rows = []
    for name, k in compiled_kernels():
        try:
            k._init_handles()                    # loads the cubin: n_regs / n_spills are read there
            md = k.metadata
            rows.append({"bench": bench, "kernel": name, "n_regs": k.n_regs, "n_spills": k.n_spills,
                         "shared": md.shared, "num_warps": md.num_warps, "num_stages": md.num_stages,
                         "device_name": torch.cuda.get_device_name(), "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S")})
        except Exception as e:                   # a stat that cannot be read is reported, never fatal
            print(f"kernel stats: {name}: {type(e).__name__}: {e}")
    if not rows:
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "kernels.csv"
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        if new:
            w.writeheader()
        w.writerows(rows)
    print(f"# kernels compiled by {bench}: registers / spill bytes / shared memory -> {path}")
    for r in sorted(rows, key=lambda r: -r["n_spills"]):
        print(f"  {r['kernel']:<70} w{r['num_warps']} s{r['num_stages']} regs {r['n_regs']:>3} "
              f"spills {r['n_spills']:>5} smem {r['shared']}")
