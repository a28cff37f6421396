"""Helpers shared by the Mamba2 SSD kernel stages (ssd_chunk_cumsum, ssd_bmm, ssd_chunk_state, ssd_state_passing,
ssd_chunk_scan).

Layout conventions of the intermediates (all fp32, contiguous, allocated by the launchers):
    dt_out, dA_cumsum, and per-position grads   [B, H, nc, L]     (L = chunk_size, nc = ceil(T / L))
    CB, dCB                                     [B, nc, G, L, L]  (only the lower triangle i >= j is meaningful)
    chunk states / S_in / dS_out                [B, nc, H, P, N]
    seg (monotone document ids, padded)         [B, nc * L] int32
User tensors (x, dt, B, C, z, out) are read through their strides, so views of a fused in_proj output work.

`mm` is the one matrix-product helper: fp32 operands use IEEE fp32 (no TF32, so fp32 runs match the fp32
reference to ~1e-5); bf16/fp16 runs cast both operands to that type and accumulate in fp32, like mamba.
Everything else is computed in fp32 right after each load (the interpreter computes bf16 arithmetic wrongly).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .configs import SSD, pick


@triton.jit
def mm(a, b, DOT_MODE: tl.constexpr):
    """a @ b with fp32 accumulation. DOT_MODE (an int so AOT specs stay JSON): 0 fp32 IEEE, 1 bf16, 2 fp16."""
    # the precision flag only affects fp32 operands ("tf32" is Triton's default; see kernels/_dot.py)
    if DOT_MODE == 1:
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), input_precision="tf32")
    elif DOT_MODE == 2:
        return tl.dot(a.to(tl.float16), b.to(tl.float16), input_precision="tf32")
    else:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")


@triton.jit
def program_ids():
    """The three program ids as int64. Every offset in the SSD kernels is a product with one of them, and at
    long context they pass 2^31 elements: t * stride_t of a [B, T, H, P] view at 256k tokens x 128 heads x 64,
    ((b * nc + c) * H + h) * P * N of the chunk states. In int32 those wrap to negative offsets."""
    return tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64), tl.program_id(2).to(tl.int64)


@triton.jit
def carried_in_scale(DA_CS_ptr, cs_base, seg_base, pid_c, offs_i, L: tl.constexpr, HAS_SEQ: tl.constexpr):
    """(Acum_i, exp(Acum_i) [seg_i == seg_prev], seg_i) for rows offs_i of chunk pid_c: how much of the state
    carried into the chunk reaches row i (seg_i: the rows' document ids, -1 past L; zeros without seq_idx)."""
    a_i = tl.load(DA_CS_ptr + cs_base + offs_i, mask=offs_i < L, other=0.0)
    scale = tl.exp(a_i)
    seg_i = tl.zeros_like(offs_i)
    if HAS_SEQ:
        seg_i = tl.load(seg_base + pid_c * L + offs_i, mask=offs_i < L, other=-1)
        seg_prev = tl.load(seg_base + pid_c * L - 1, mask=pid_c > 0, other=0)
        scale = tl.where(seg_i == seg_prev, scale, 0.0)
    return a_i, scale, seg_i


@triton.jit
def row_dots(A_base, A_stride_t, A_stride_p, ti, B_base, B_stride_t, B_stride_p, tj, T, P, BLOCK_K: tl.constexpr,
             DOT_MODE: tl.constexpr):
    """sum_p A[ti, p] B[tj, p] for two [T, P] operands read through strides (rows >= T read as 0): the
    dY_i . x_j products of the intra-chunk backward (dCB, and the stable dA pairs). -> [len(ti), len(tj)] fp32."""
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((ti.shape[0], tj.shape[0]), dtype=tl.float32)
    for k0 in range(0, P, BLOCK_K):
        kk = k0 + offs_k
        a = tl.load(A_base + ti[:, None] * A_stride_t + kk[None, :] * A_stride_p,
                    mask=(ti < T)[:, None] & (kk < P)[None, :], other=0.0).to(tl.float32)
        bt = tl.load(B_base + tj[None, :] * B_stride_t + kk[:, None] * B_stride_p,
                     mask=(tj < T)[None, :] & (kk < P)[:, None], other=0.0).to(tl.float32)
        acc += mm(a, bt, DOT_MODE)
    return acc


@triton.jit
def rows_times_state(A_base, A_stride_t, A_stride_p, t, T, S_base, P, N, offs_n, BLOCK_K: tl.constexpr,
                     DOT_MODE: tl.constexpr):
    """sum_p A[t, p] S[p, n] for the rows t [BM] of a [T, P] operand read through strides (rows >= T read as 0)
    and a contiguous fp32 state S [P, N]: the dC (dY @ S_in) and dB (x @ dS_out) inner products. -> [BM, BN]."""
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((t.shape[0], offs_n.shape[0]), dtype=tl.float32)
    for k in range(0, P, BLOCK_K):
        kk = k + offs_k
        a = tl.load(A_base + t[:, None] * A_stride_t + kk[None, :] * A_stride_p,
                    mask=(t < T)[:, None] & (kk < P)[None, :], other=0.0).to(tl.float32)
        s = tl.load(S_base + kk[:, None] * N + offs_n[None, :], mask=(kk < P)[:, None] & (offs_n < N)[None, :],
                    other=0.0)
        acc += mm(a, s, DOT_MODE)
    return acc


def launch_opts(t: torch.Tensor) -> dict:
    """num_warps / num_stages for a launch on t's device (kernels/configs.py SSD table)."""
    return pick(SSD, t.device, 0)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def dot_mode(dtype: torch.dtype) -> int:
    """DOT_MODE for `mm`: the input's 16-bit type on GPU; fp32 for fp32 inputs and under the interpreter."""
    if interpreting() or dtype == torch.float32:
        return 0
    return 1 if dtype == torch.bfloat16 else 2


# Upper bound on every tile size picked by `block` (64 on GPU). Tests lower it to 16 so that small interpreter
# shapes still run the multi-tile paths (several row / P / N tiles, skipped upper-triangle tiles).
MAX_BLOCK = 64


def block(dim: int, cap: int = 64) -> int:
    """Tile size for a dimension: next power of two, at least 16 (tl.dot minimum), at most min(cap, MAX_BLOCK)."""
    return max(16, min(cap, MAX_BLOCK, triton.next_power_of_2(dim)))
