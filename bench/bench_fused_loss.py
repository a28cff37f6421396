"""Benchmark: fused linear cross-entropy / log-probs vs unfused PyTorch (time + peak memory, fwd and fwd+bwd).

Providers, measured side by side in one run on the same inputs:
  unfused  logits = h @ W.T in the input dtype, then F.cross_entropy on logits.float() (what HF-style training
           code does); for log-probs: log_softmax on the fp32 upcast, gather, entropy.
  torch    prism_fast chunked pure-PyTorch backend.     triton  prism_fast Triton backend (CUDA only).
  liger    Liger-Kernel's fused linear CE (CUDA, when liger_kernel is installed; CE only).
Modes: "forward" = evaluation forward under torch.no_grad(); "full" = forward + backward with grads for h and W.
Memory: CUDA = torch.cuda.max_memory_allocated above the inputs; CPU = peak RSS growth (VmHWM reset through
/proc/self/clear_refs right before the call; large buffers are mmap-backed so frees return to the OS).
Rates: TFLOP/s counts the useful GEMM work (2 N D V forward, 6 N D V forward + backward), whatever a provider
recomputes. Results: bench/results/fused_loss.csv (columns of bench/utils.py).

  python bench/bench_fused_loss.py                       # CPU: D scaled down (see CPU_SHAPES)
  python bench/bench_fused_loss.py --device cuda --quick # GPU check (~2 min on one H100/H200)
  python bench/bench_fused_loss.py --device cuda         # the issue's full grid
"""
from __future__ import annotations

import argparse
import gc
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from utils import StreamRows, device_name, parse_args, peak_memory_mb, row, sync, time_fn  # noqa: E402

from prism_fast.ops import fused_linear_cross_entropy, fused_linear_logprobs  # noqa: E402
from prism_fast.ops._dispatch import has_module  # noqa: E402

# (N, D, V). The grid is N in {4k, 16k, 32k}, D 4096, V in {49152, 128256} on a GPU. On a 2-core CPU a
# single N=16k, D=4096, V=128k step is ~26 TFLOP (hours), so the CPU grid keeps V and scales D down to 128.
GPU_SHAPES = [(n, 4096, v) for v in (49152, 128256) for n in (4096, 16384, 32768)]
GPU_QUICK = [(4096, 4096, 128256), (32768, 4096, 128256)]
CPU_SHAPES = [(1024, 128, 49152), (4096, 128, 49152)]
CPU_QUICK = [(1024, 128, 49152)]


def peak_rss_mb(fn) -> float | None:
    """Peak resident-memory growth (MiB) during fn() on Linux; None where /proc/self/clear_refs is missing."""
    def status(key):
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith(key)) / 1024
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    base = status("VmRSS:")
    fn()
    return status("VmHWM:") - base


def _unfused_ce(h, w, y):
    return F.cross_entropy((h @ w.t()).float(), y)


def _unfused_lp(h, w, y):
    logp_all = torch.log_softmax((h @ w.t()).float(), -1)
    return logp_all.gather(1, y.unsqueeze(1)).squeeze(1), -(logp_all.exp() * logp_all).sum(-1)


def _fn(op, provider, h, w, y):
    if op == "fused_linear_cross_entropy":
        if provider == "unfused":
            return lambda: _unfused_ce(h, w, y)
        return lambda: fused_linear_cross_entropy(h, w, y, backend=provider)
    if provider == "unfused":
        f = lambda: _unfused_lp(h, w, y)  # noqa: E731
    else:
        f = lambda: fused_linear_logprobs(h, w, y, return_entropy=True, backend=provider)  # noqa: E731
    return lambda: (lambda lp, ent: lp.sum() - 0.01 * ent.sum())(*f())


def _mode_fn(f, mode, h, w):
    if mode == "forward":
        def run():
            with torch.no_grad():
                f()
    else:
        def run():
            h.grad = w.grad = None
            f().backward()
    return run


def bench_one(op, shape, providers, device, dtype, warmup, reps, rows):
    n, d, v = shape
    gen = torch.Generator(device=device).manual_seed(0)
    h = torch.randn(n, d, device=device, dtype=dtype, generator=gen).requires_grad_(True)
    w = (torch.randn(v, d, device=device, generator=gen) * d ** -0.5).to(dtype).requires_grad_(True)
    y = torch.randint(0, v, (n,), device=device, generator=gen)
    cfg = {"N": n, "D": d, "V": v, "dtype": str(dtype).replace("torch.", "")}
    table = []
    for mode in ("forward", "full"):
        flops = (2 if mode == "forward" else 6) * n * d * v
        for p in providers:
            run = _mode_fn(_fn(op, p, h, w, y), mode, h, w)
            try:
                gc.collect()
                if device == "cuda":
                    torch.cuda.empty_cache()
                mem = peak_memory_mb(run, device=device) if device == "cuda" else peak_rss_mb(run)
                p50, p20, p80 = time_fn(run, device=device, warmup=warmup, reps=reps)
            except torch.cuda.OutOfMemoryError if device == "cuda" else MemoryError:
                table.append((mode, p, None, None, None))
                continue
            finally:
                h.grad = w.grad = None
            rows.append(row(op, p, mode, "time", "ms", n, p50, p20, p80, config=cfg, device=device))
            if mem is not None:
                rows.append(row(op, p, mode, "peak_memory", "MiB", n, mem, config=cfg, device=device))
            rows.append(row(op, p, mode, "throughput", "TFLOP/s", n, flops / p50 / 1e9, config=cfg,
                            device=device))
            table.append((mode, p, p50, mem, flops / p50 / 1e9))
    return table


def print_table(op, shape, table):
    n, d, v = shape
    print(f"\n{op}  N={n} D={d} V={v}")
    print("| mode | provider | time ms (p50) | x unfused | peak MiB | x unfused | TFLOP/s |")
    print("|---|---|---|---|---|---|---|")
    base = {m: (t, mem) for m, p, t, mem, _ in table if p == "unfused"}
    for mode, p, t, mem, tf in table:
        if t is None:
            print(f"| {mode} | {p} | OOM | | | | |")
            continue
        bt, bm = base.get(mode, (None, None))
        rt = f"{t / bt:.2f}" if bt else "-"
        rm = f"{mem / bm:.3f}" if (mem is not None and bm) else "-"
        ms = f"{mem:.0f}" if mem is not None else "-"
        print(f"| {mode} | {p} | {t:.2f} | {rt} | {ms} | {rm} | {tf:.3g} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--quick", action="store_true", help="fewer shapes and reps (GPU check script)")
    ap.add_argument("--op", default="both", choices=["ce", "logprobs", "both"])
    ap.add_argument("--overwrite", action="store_true", help="replace earlier CSV rows of the same keys")
    args = parse_args(ap, argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible")
    cuda = args.device == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    if not cuda:
        torch.set_num_threads(len(os.sched_getaffinity(0)))
    shapes = (GPU_QUICK if args.quick else GPU_SHAPES) if cuda else (CPU_QUICK if args.quick else CPU_SHAPES)
    warmup, reps = (2, 5 if args.quick else 10) if cuda else (1, 3)
    print(f"machine: {device_name(args.device)}; torch {torch.__version__}; dtype {dtype}")
    ops = {"ce": ["fused_linear_cross_entropy"], "logprobs": ["fused_linear_logprobs"],
           "both": ["fused_linear_cross_entropy", "fused_linear_logprobs"]}[args.op]
    all_rows = StreamRows("fused_loss", overwrite=args.overwrite)
    for op in ops:
        providers = ["unfused", "torch"] + (["triton"] if cuda else [])
        if cuda and op == "fused_linear_cross_entropy" and has_module("liger_kernel"):
            providers.append("liger")
        for shape in (shapes if op == "fused_linear_cross_entropy" else shapes[:1]):
            table = bench_one(op, shape, providers, args.device, dtype, warmup, reps, all_rows)
            sync(args.device)
            print_table(op, shape, table)
    path = all_rows.path
    print(f"\nrows appended to {path}")


if __name__ == "__main__":
    main()
