"""`dot`: the matrix product of the attention kernels, with its input precision always stated.

Triton's default input precision on NVIDIA is TF32, so a bare `tl.dot` of fp32 tiles silently rounds both
operands to 10 mantissa bits on Ampere/Hopper: fp32 attention would no longer match an fp32 reference (the
interpreter, which computes exactly, cannot show it). fp32 operands therefore use "ieee"; 16-bit operands
(DOT_LOWP) go to the tensor cores in their own type, where the flag has no effect ("tf32" is Triton's default,
written out so that every call states one). tests/kernels/test_dot_precision.py fails on any `tl.dot` in
kernels/ without an explicit input_precision, and checks the compiled sm_90 IR.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def dot(a, b, LOWP: tl.constexpr):
    """a @ b with an fp32 result. LOWP: 16-bit operands (tensor cores); else fp32 operands in IEEE fp32."""
    if LOWP:
        return tl.dot(a, b, input_precision="tf32")
    else:
        return tl.dot(a, b, input_precision="ieee")
