"""Every `tl.dot` in kernels/ states its input precision, and fp32 kernels compile without TF32.

Hazard (issue 12, section 3): Triton's default input precision on NVIDIA is TF32, so a bare `tl.dot` of fp32
tiles rounds both operands to 10 mantissa bits on Ampere / Hopper, and fp32 attention stops matching an fp32
reference; the interpreter computes exactly and cannot show it. On the old code the source test fails (13 bare
dots: the 11 of the attention kernels, which ran fp32 inputs as TF32 on GPU, and the 2 16-bit SSD ones).
"""
import ast
import pathlib

import pytest
import triton
import triton.language as tl

from tests.aot_util import aot_compile, assert_all_compiled, kernel_spec
from tests.kernels.test_aot import FWD, BWD, DEC, ATTN_SIG, ssd_specs

KERNELS = pathlib.Path(__file__).resolve().parents[2] / "kernels"


def _bare_dots(path: pathlib.Path) -> list[int]:
    """Line numbers of tl.dot(...) calls without an input_precision keyword."""
    bad = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "dot"
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "tl"
                and not any(k.arg == "input_precision" for k in node.keywords)):
            bad.append(node.lineno)
    return bad


def test_every_tl_dot_states_its_input_precision():
    files = sorted(KERNELS.glob("*.py"))
    assert len(files) > 10
    bad = {f.name: lines for f in files if (lines := _bare_dots(f))}
    assert not bad, f"tl.dot without input_precision (fp32 would silently run as TF32 on GPU): {bad}"


@triton.jit
def _bare_fp32_dot_kernel(A_ptr, B_ptr, C_ptr, BLOCK: tl.constexpr):
    """Control for the IR test: what a dot without input_precision compiles to."""
    offs = tl.arange(0, BLOCK)
    a = tl.load(A_ptr + offs[:, None] * BLOCK + offs[None, :])
    b = tl.load(B_ptr + offs[:, None] * BLOCK + offs[None, :])
    tl.store(C_ptr + offs[:, None] * BLOCK + offs[None, :], tl.dot(a, b))  # noqa: dot-precision (the control)


def _fp32_specs():
    # jit=False: the dot precision is in the TTGIR whatever the launch specialization, and the unspecialized fp32
    # FMA-path kernels compile faster (15-90 s each; pipelined by the specialization, up to ~3x more here)
    c = dict(GROUP=2, HEAD_DIM=64, BLOCK_D=64, DOT_LOWP=False, BLOCK_M=64, BLOCK_N=64)
    specs = [kernel_spec(FWD, "_varlen_attn_fwd_kernel", "*fp32", c, jit=False, **ATTN_SIG),
             kernel_spec(BWD, "_varlen_attn_bwd_dkdv_kernel", "*fp32", dict(c, HEADS=2), jit=False, **ATTN_SIG),
             kernel_spec(BWD, "_varlen_attn_bwd_dq_kernel", "*fp32", c, jit=False, **ATTN_SIG),
             kernel_spec(DEC, "_decode_attn_fwd_kernel", "*fp32",
                         dict(GROUP=2, HEAD_DIM=64, BLOCK_H=16, BLOCK_N=32, BLOCK_D=64, PAGED=False, PAGE_SIZE=1,
                              DOT_LOWP=False), jit=False, **ATTN_SIG)]
    specs += [s for s in ssd_specs("sm90", L=64, lowp=False, jit=False) if s["kernel"] == "_ssd_chunk_scan_fwd_kernel"]
    return [dict(s, want_ir=True) for s in specs]


@pytest.mark.slow
def test_fp32_kernels_compile_without_tf32_on_sm90():
    control = kernel_spec(__name__, "_bare_fp32_dot_kernel", "*fp32", dict(BLOCK=32), want_ir=True)
    recs = aot_compile([control] + _fp32_specs(), archs=(90,), timeout=1500)   # 597 s measured at load ~9
    assert_all_compiled(recs)
    assert "inputPrecision = tf32" in recs[0]["ttgir"]          # the check can see TF32 when it is there
    for r in recs[1:]:
        assert "tt.dot" in r["ttgir"], r["kernel"]
        assert "inputPrecision = tf32" not in r["ttgir"], f"{r['kernel']}: fp32 dot compiled as TF32"
