"""Ahead-of-time compilation of Triton kernels for real GPU targets (sm_90, sm_80) on a CPU-only machine.

Why a subprocess: the test session runs with TRITON_INTERPRET=1 so that kernels execute on the CPU, and under the
interpreter `@triton.jit` yields InterpretedFunction objects that `triton.compile` cannot lower. The child process
imports the kernel module with the interpreter off and compiles each spec with `triton.compile(ASTSource(...),
target=GPUTarget("cuda", arch, 32))`, which produces real cubin for that architecture (ptxas ships with Triton).

A spec is a dict (build it with `kernel_spec`, which reads the signature off the kernel's own argument list):
    {"module": "prism_fast.kernels.foo", "kernel": "_foo_fwd_kernel",
     "signature": {"X_ptr": "*fp32", "X_stride_t": "i32", "X_stride_p": "constexpr", "BLOCK": "constexpr"},
     "constexprs": {"BLOCK": 64, "X_stride_p": 1}, "attrs": ["X_ptr", "X_stride_t"], "num_warps": 4, "num_stages": 2}
It compiles what the JIT compiles at launch: the JIT specializes every pointer whose address is a multiple of 16
and every integer that is a multiple of 16 with the attribute tt.divisibility=16 ("attrs"), and turns an integer
argument equal to 1 into a constant (unit strides: "constexprs"). Without that specialization the compiler
cannot prove aligned, vectorizable accesses, does not pipeline the loads through cp.async, and reports 1.3-2x
less shared memory than the launched kernel uses (measured on the attention kernels with Triton 3.6 / 3.9).
Each record says ok / error, seconds of triton.compile (compile_s: a cold-cache figure when TRITON_CACHE_DIR is
fresh), cubin size, shared memory (bytes) and, from `ptxas -v` on the kernel's PTX (the
ptxas Triton ships), registers per thread and spill bytes (stores + loads), and with want_ir=True the TTGIR
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
import hashlib, importlib, json, os, re, subprocess, sys, tempfile, time, traceback
import triton
from triton.compiler import ASTSource
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia import compiler as nv


def ptxas_info(ptx, arch):
    # Registers and spill bytes from `ptxas -v` with the ptxas this Triton uses for `arch` (the compiled kernel's
    # n_regs / n_spills need a driver to load the cubin). Cached next to Triton's cache, keyed by the PTX.
    key = hashlib.sha256((ptx + str(arch) + triton.__version__).encode()).hexdigest()
    cache = os.path.join(os.environ.get("TRITON_CACHE_DIR", os.path.expanduser("~/.triton/cache")), "prism_ptxas")
    path = os.path.join(cache, key + ".json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        log = subprocess.run([nv.get_ptxas(arch).path, "-v", "--gpu-name=" + nv.sm_arch_from_capability(arch), src,
                              "-o", os.path.join(d, "k.cubin")], capture_output=True, text=True, check=True).stderr
    spills = [int(a) + int(b) for a, b in re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)]
    info = {"n_regs": max(int(r) for r in re.findall(r"Used (\d+) registers", log)), "spill_bytes": sum(spills)}
    os.makedirs(cache, exist_ok=True)
    with open(path, "w") as f:
        json.dump(info, f)
    return info


specs, archs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
out = []
for spec in specs:
    mod = importlib.import_module(spec["module"])
    fn = getattr(mod, spec["kernel"])
    names = list(getattr(fn, "arg_names", None) or fn.fn.__code__.co_varnames[:fn.fn.__code__.co_argcount])
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in spec.get("attrs", ())}
    for arch in archs:
        rec = {"kernel": spec["kernel"], "arch": arch, "constexprs": spec.get("constexprs", {}),
               "num_warps": spec.get("num_warps"), "num_stages": spec.get("num_stages")}
        try:
            src = ASTSource(fn=fn, signature=spec["signature"], constexprs=spec.get("constexprs", {}), attrs=attrs)
            opts = {k: spec[k] for k in ("num_warps", "num_stages") if k in spec}
            t0 = time.perf_counter()
            k = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=opts)
            rec.update(ok=True, cubin_bytes=len(k.asm["cubin"]), shared=k.metadata.shared, triton=triton.__version__,
                       compile_s=round(time.perf_counter() - t0, 2),
                       **ptxas_info(k.asm["ptx"], arch))
            if spec.get("want_ir"):
                rec["ttgir"] = k.asm["ttgir"]
        except Exception as e:
            rec.update(ok=False, error="".join(traceback.format_exception_only(type(e), e))[-2000:])
        out.append(rec)
print("AOT_RESULT" + json.dumps(out))
"""


def aot_compile(specs: list[dict], archs=(90, 80), timeout: float = 600.0, python: str | None = None,
                env: dict | None = None) -> list[dict]:
    """Compile every spec for every arch in a child process; return one record per (spec, arch).
    python / env: another interpreter and environment for the child (tests/kernels/test_aot_triton36.py runs
    the device image's Triton from a throwaway venv that way)."""
    env = {k: v for k, v in (os.environ if env is None else env).items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([python or sys.executable, "-c", _CHILD, json.dumps(specs), json.dumps(list(archs))],
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
                num_stages: int | None = None, want_ir: bool = False, unit: tuple = (), jit: bool = True,
                **sig_kw) -> dict:
    """One aot_compile spec (signature from kernel_signature with **sig_kw), specialized as the JIT does at a
    launch on contiguous tensors (jit=True): `unit` names the integer arguments the launcher passes as 1 (the
    innermost strides: constants), and every pointer and every other argument named *stride* gets divisibility
    16 (torch allocations are 256-byte aligned; outer strides of contiguous [.., H, Dh] tensors are multiples
    of Dh). Lengths (T, V, n_docs, ...) get no attribute: the JIT compiles both variants, the unaligned one is
    the conservative one."""
    sig = kernel_signature(module, kernel, ptr, constexprs, **sig_kw)
    missing = set(unit) - set(sig)
    assert not missing, f"{kernel} has no arguments {sorted(missing)}"
    constexprs = dict(constexprs, **{n: 1 for n in unit})
    sig.update({n: "constexpr" for n in unit})
    spec = {"module": module, "kernel": kernel, "constexprs": constexprs, "num_warps": num_warps, "signature": sig}
    if jit:
        spec["attrs"] = [n for n, t in sig.items() if t.startswith("*") or (t == "i32" and "stride" in n.lower())]
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


def assert_no_spills(records: list[dict]) -> None:
    """No compiled kernel spills registers to local memory (ptxas -v: spill stores + loads == 0 bytes)."""
    bad = [r for r in records if r["ok"] and r["spill_bytes"]]
    assert not bad, "kernels spill registers:\n" + "\n".join(
        f"{r['kernel']} sm_{r['arch']} w{r['num_warps']} s{r['num_stages']} {r['constexprs']}: {r['n_regs']} regs, "
        f"{r['spill_bytes']} B spilled" for r in bad)


def format_table(records: list[dict]) -> str:
    """Markdown table of kernel, arch, config, registers, spill bytes and shared memory (reports, docs)."""
    keys = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "BLOCK_C", "BLOCK_T", "BLOCK", "HEAD_DIM", "HEADS", "GROUP", "L", "DOT_LOWP", "DOT_MODE")
    lines = ["| kernel | arch | tiles / dims | warps | stages | regs | spill B | smem B |", "|---|---|---|---|---|---|---|---|"]
    for r in records:
        if not r["ok"]:
            lines.append(f"| {r['kernel']} | sm_{r['arch']} | compile FAILED | | | | | |")
            continue
        tiles = " ".join(f"{k}={r['constexprs'][k]}" for k in keys if k in r["constexprs"])
        lines.append(f"| {r['kernel']} | sm_{r['arch']} | {tiles} | {r['num_warps']} | {r['num_stages']} | "
                     f"{r['n_regs']} | {r['spill_bytes']} | {r['shared']} |")
    return "\n".join(lines)
