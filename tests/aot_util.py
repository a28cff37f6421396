"""Ahead-of-time compilation of Triton kernels for real GPU targets (sm_90, sm_80) on a CPU-only machine.

Why a subprocess: the test session runs with TRITON_INTERPRET=1 so that kernels execute on the CPU, and under the
interpreter `@triton.jit` yields InterpretedFunction objects that `triton.compile` cannot lower. The child process
imports the kernel module with the interpreter off and compiles each spec with `triton.compile(ASTSource(...),
target=GPUTarget("cuda", arch, 32))`, which produces real cubin for that architecture (ptxas ships with Triton).

A spec is a dict (build it with `kernel_spec`, which reads the signature off the kernel's own argument list):
    {"module": "prism_fast.kernels.foo", "kernel": "_foo_fwd_kernel",
     "signature": {"X_ptr": "*fp32", "N": "i32", "BLOCK": "constexpr"},
     "constexprs": {"BLOCK": 64}, "num_warps": 4, "num_stages": 2}
Each record says ok / error, cubin size, registers and shared memory (bytes), and with want_ir=True the TTGIR
text (tests/kernels/test_dot_precision.py reads the dot precision from it).
This is the one AOT helper of the test suite: the kernel tests of every package build their specs with it.
"""
from __future__ import annotations

import importlib
import inspect
import json
import os
import subprocess
import sys

_CHILD = r"""
import importlib, json, sys, traceback
import triton
from triton.compiler import ASTSource
from triton.backends.compiler import GPUTarget
specs, archs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
out = []
for spec in specs:
    mod = importlib.import_module(spec["module"])
    fn = getattr(mod, spec["kernel"])
    for arch in archs:
        rec = {"kernel": spec["kernel"], "arch": arch, "constexprs": spec.get("constexprs", {})}
        try:
            src = ASTSource(fn=fn, signature=spec["signature"], constexprs=spec.get("constexprs", {}))
            opts = {k: spec[k] for k in ("num_warps", "num_stages") if k in spec}
            k = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=opts)
            rec.update(ok=True, cubin_bytes=len(k.asm["cubin"]), n_regs=getattr(k, "n_regs", None),
                       shared=k.metadata.shared)
            if spec.get("want_ir"):
                rec["ttgir"] = k.asm["ttgir"]
        except Exception as e:
            rec.update(ok=False, error="".join(traceback.format_exception_only(type(e), e))[-2000:])
        out.append(rec)
print("AOT_RESULT" + json.dumps(out))
"""


def aot_compile(specs: list[dict], archs=(90, 80), timeout: float = 600.0) -> list[dict]:
    """Compile every spec for every arch in a child process; return one record per (spec, arch)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(specs), json.dumps(list(archs))],
                          capture_output=True, text=True, env=env, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith("AOT_RESULT"):
            return json.loads(line[len("AOT_RESULT"):])
    raise RuntimeError(f"AOT compile child failed (rc={proc.returncode}):\n{proc.stderr[-4000:]}")


def assert_all_compiled(records: list[dict]) -> None:
    bad = [r for r in records if not r["ok"]]
    assert not bad, "kernels failed to compile for GPU targets:\n" + "\n".join(
        f"{r['kernel']} sm_{r['arch']} {r['constexprs']}: {r['error']}" for r in bad)


def kernel_signature(module: str, kernel: str, ptr: str, constexprs: dict, *, fp32_ptrs=(), int_ptrs=(),
                     floats=(), is_ptr=None) -> dict:
    """Triton signature from the kernel's argument list: constexprs (given or annotated) -> "constexpr",
    pointers -> `ptr` (user tensors, e.g. "*bf16"), "*fp32" (fp32_ptrs) or "*i32" (int_ptrs), `floats` -> "fp32",
    other scalars -> "i32". is_ptr(name) tells pointers from scalars (default: the name ends in "_ptr")."""
    fn = getattr(importlib.import_module(module), kernel)
    fn = getattr(fn, "fn", fn)
    is_ptr = is_ptr or (lambda name: name.endswith("_ptr"))
    sig = {}
    for name, par in inspect.signature(fn).parameters.items():
        if name in constexprs or "constexpr" in str(par.annotation):
            sig[name] = "constexpr"
        elif name in fp32_ptrs:
            sig[name] = "*fp32"
        elif name in int_ptrs:
            sig[name] = "*i32"
        elif is_ptr(name):
            sig[name] = ptr
        else:
            sig[name] = "fp32" if name in floats else "i32"
    return sig


def kernel_spec(module: str, kernel: str, ptr: str, constexprs: dict, *, num_warps: int = 4,
                num_stages: int | None = None, want_ir: bool = False, **sig_kw) -> dict:
    """One aot_compile spec (signature from kernel_signature with **sig_kw)."""
    spec = {"module": module, "kernel": kernel, "constexprs": dict(constexprs), "num_warps": num_warps,
            "signature": kernel_signature(module, kernel, ptr, constexprs, **sig_kw)}
    if num_stages is not None:
        spec["num_stages"] = num_stages
    if want_ir:
        spec["want_ir"] = True
    return spec


def assert_fits_shared_memory(records: list[dict], limits: dict) -> None:
    """Every compiled kernel's static shared memory fits its architecture's per-block limit {arch: bytes}:
    ptxas accepts more than the device allows, so an over-sized config would only fail at launch on the GPU."""
    over = [r for r in records if r["ok"] and r["shared"] > limits[r["arch"]]]
    assert not over, "configs exceed shared memory:\n" + "\n".join(
        f"{r['kernel']} sm_{r['arch']} {r['constexprs']}: {r['shared']} > {limits[r['arch']]} bytes" for r in over)
