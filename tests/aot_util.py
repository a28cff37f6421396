"""Ahead-of-time compilation of Triton kernels for real GPU targets (sm_90, sm_80) on a CPU-only machine.

Why a subprocess: the test session runs with TRITON_INTERPRET=1 so that kernels execute on the CPU, and under the
interpreter `@triton.jit` yields InterpretedFunction objects that `triton.compile` cannot lower. The child process
imports the kernel module with the interpreter off and compiles each spec with `triton.compile(ASTSource(...),
target=GPUTarget("cuda", arch, 32))`, which produces real cubin for that architecture (ptxas ships with Triton).

A spec is a dict:
    {"module": "prism_fast.kernels.foo", "kernel": "_foo_fwd_kernel",
     "signature": {"X_ptr": "*fp32", "N": "i32", "BLOCK": "constexpr"},
     "constexprs": {"BLOCK": 64}, "num_warps": 4, "num_stages": 2}
"""
from __future__ import annotations

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
