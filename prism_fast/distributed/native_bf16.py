"""Whether this machine computes bf16 natively, for recipes whose default precision must just run.

On a CPU without bf16 instructions (x86 without AVX512-BF16 / AMX-BF16, e.g. an AVX2-only EPYC) torch's bf16
GEMMs fall back to conversion loops: a [1024, 576] x [576, 1536] GEMM took 252 ms in bf16 against 30 ms in fp32
on one such core (2026-12-08), and the `demo` mid-training step went from ~17 s (fp32) to minutes.
"""
from __future__ import annotations

import functools
import platform

import torch

# /proc/cpuinfo flags of CPUs with bf16 arithmetic: x86 (AVX512-BF16, AMX-BF16) and aarch64 ("bf16" feature).
_X86_FLAGS = {"avx512_bf16", "amx_bf16"}


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return False
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    if platform.machine() in ("aarch64", "arm64"):
        return "bf16" in flags
    return bool(flags & _X86_FLAGS)


def default_param_dtype() -> str:
    """"bf16" on a CUDA GPU or a CPU with bf16 instructions, else "fp32" (see the module docstring)."""
    return "bf16" if torch.cuda.is_available() or cpu_has_native_bf16() else "fp32"
