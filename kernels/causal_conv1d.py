"""Causal depthwise conv1d (Mamba2's short conv) in Triton: forward and backward, widths 2-4, SiLU, seq_idx.

The portable fallback of prism_fast.ops.causal_conv1d (the CUDA library in csrc/conv1d is the other fast path).
Tiles are [BLOCK_C channels, BLOCK_T steps] read through strides, so channels-first and channels-last (the
transposed in_proj output the mixer passes) layouts both work without a copy. The backward recomputes the
pre-activation at t .. t+W-1 instead of saving it (W <= 4: a few extra cached loads, no [B, C, T] buffer), and
writes dweight / dbias partials per time tile (summed by the launcher; deterministic, no atomics).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .configs import CONV1D_BWD, CONV1D_FWD, pick


@triton.jit
def _conv_pre(x_base, seq_base, w_base, bias, offs_c, s, C, T, X_stride_c, X_stride_t, S_stride_t,
              WIDTH: tl.constexpr, HAS_SEQ: tl.constexpr):
    """Pre-activation at steps s [BLOCK_T] for channels offs_c [BLOCK_C] -> [BLOCK_C, BLOCK_T] fp32."""
    acc = tl.zeros((offs_c.shape[0], s.shape[0]), dtype=tl.float32) + bias[:, None]
    if HAS_SEQ:
        s0 = tl.load(seq_base + s * S_stride_t, mask=(s >= 0) & (s < T), other=-1)
    for k in tl.static_range(WIDTH):
        tt = s - k
        m = (tt >= 0) & (s < T)
        if HAS_SEQ:
            m &= tl.load(seq_base + tt * S_stride_t, mask=m, other=-2) == s0
        xv = tl.load(x_base + offs_c[:, None] * X_stride_c + tt[None, :] * X_stride_t,
                     mask=(offs_c < C)[:, None] & m[None, :], other=0.0).to(tl.float32)
        w = tl.load(w_base + offs_c * WIDTH + (WIDTH - 1 - k), mask=offs_c < C, other=0.0).to(tl.float32)
        acc += w[:, None] * xv
    return acc


@triton.jit
def _causal_conv1d_fwd_kernel(
    X_ptr, W_ptr, BIAS_ptr, SEQ_ptr, OUT_ptr,
    C, T,
    X_stride_b, X_stride_c, X_stride_t, O_stride_b, O_stride_c, O_stride_t, S_stride_b, S_stride_t,
    WIDTH: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr, SILU: tl.constexpr,
):
    # int64: pid_b * stride_b and t * stride_t pass 2^31 elements at long context (int32 would wrap)
    pid_t, pid_c, pid_b = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64), tl.program_id(2).to(tl.int64)
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    if HAS_BIAS:
        bias = tl.load(BIAS_ptr + offs_c, mask=offs_c < C, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros((BLOCK_C,), dtype=tl.float32)
    acc = _conv_pre(X_ptr + pid_b * X_stride_b, SEQ_ptr + pid_b * S_stride_b, W_ptr, bias, offs_c, offs_t, C, T,
                    X_stride_c, X_stride_t, S_stride_t, WIDTH, HAS_SEQ)
    if SILU:
        acc = acc * tl.sigmoid(acc)
    tl.store(OUT_ptr + pid_b * O_stride_b + offs_c[:, None] * O_stride_c + offs_t[None, :] * O_stride_t, acc,
             mask=(offs_c < C)[:, None] & (offs_t < T)[None, :])


@triton.jit
def _causal_conv1d_bwd_kernel(
    X_ptr, W_ptr, BIAS_ptr, SEQ_ptr, DOUT_ptr, DX_ptr, DW_PART_ptr, DB_PART_ptr,
    C, T, n_tblk,
    X_stride_b, X_stride_c, X_stride_t, G_stride_b, G_stride_c, G_stride_t,
    DX_stride_b, DX_stride_c, DX_stride_t, S_stride_b, S_stride_t,
    WIDTH: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr, SILU: tl.constexpr,
):
    # int64: pid_b * stride_b and t * stride_t pass 2^31 elements at long context (int32 would wrap)
    pid_t, pid_c, pid_b = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64), tl.program_id(2).to(tl.int64)
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = offs_c < C
    x_base = X_ptr + pid_b * X_stride_b
    seq_base = SEQ_ptr + pid_b * S_stride_b
    g_base = DOUT_ptr + pid_b * G_stride_b
    if HAS_BIAS:
        bias = tl.load(BIAS_ptr + offs_c, mask=cmask, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros((BLOCK_C,), dtype=tl.float32)
    if HAS_SEQ:
        s0 = tl.load(seq_base + offs_t * S_stride_t, mask=offs_t < T, other=-1)
    dx = tl.zeros((BLOCK_C, BLOCK_T), dtype=tl.float32)
    for k in tl.static_range(WIDTH):
        # out[t + k] used x[t] through tap W-1-k (same document only).
        tk = offs_t + k
        m = tk < T
        if HAS_SEQ:
            m &= tl.load(seq_base + tk * S_stride_t, mask=m, other=-2) == s0
        g = tl.load(g_base + offs_c[:, None] * G_stride_c + tk[None, :] * G_stride_t,
                    mask=cmask[:, None] & m[None, :], other=0.0).to(tl.float32)
        if SILU:
            v = _conv_pre(x_base, seq_base, W_ptr, bias, offs_c, tk, C, T, X_stride_c, X_stride_t, S_stride_t,
                          WIDTH, HAS_SEQ)
            sg = tl.sigmoid(v)
            g = g * sg * (1.0 + v * (1.0 - sg))
        w = tl.load(W_ptr + offs_c * WIDTH + (WIDTH - 1 - k), mask=cmask, other=0.0).to(tl.float32)
        dx += w[:, None] * g
        if k == 0:
            g0 = g
    tl.store(DX_ptr + pid_b * DX_stride_b + offs_c[:, None] * DX_stride_c + offs_t[None, :] * DX_stride_t, dx,
             mask=cmask[:, None] & (offs_t < T)[None, :])
    part = DW_PART_ptr + ((pid_b * n_tblk + pid_t) * C + offs_c) * WIDTH
    for k in tl.static_range(WIDTH):
        tt = offs_t - k
        m = (tt >= 0) & (offs_t < T)
        if HAS_SEQ:
            m &= tl.load(seq_base + tt * S_stride_t, mask=m, other=-2) == s0
        xv = tl.load(x_base + offs_c[:, None] * X_stride_c + tt[None, :] * X_stride_t,
                     mask=cmask[:, None] & m[None, :], other=0.0).to(tl.float32)
        tl.store(part + (WIDTH - 1 - k), tl.sum(g0 * xv, axis=1), mask=cmask)
    if HAS_BIAS:
        tl.store(DB_PART_ptr + (pid_b * n_tblk + pid_t) * C + offs_c, tl.sum(g0, axis=1), mask=cmask)


def _blocks(cfg: dict, C: int, T: int) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_T): the table's tiles (kernels/configs.py CONV1D_*) capped at next_pow2(C / T), >= 16."""
    return (max(16, min(cfg["BLOCK_C"], triton.next_power_of_2(C))),
            max(16, min(cfg["BLOCK_T"], triton.next_power_of_2(T))))


def causal_conv1d_fwd(x, weight, bias, seq_idx, silu, out):
    """x [B, C, T] (any strides), weight [C, W] contiguous, bias [C] or None, seq_idx [B, T] int32 or None;
    writes out [B, C, T] (any strides) and returns it."""
    Bsz, C, T = x.shape
    cfg = pick(CONV1D_FWD, x.device, 0)
    bc, bt = _blocks(cfg, C, T)
    s = seq_idx if seq_idx is not None else x.new_zeros(1, 1, dtype=torch.int32)
    _causal_conv1d_fwd_kernel[(triton.cdiv(T, bt), triton.cdiv(C, bc), Bsz)](
        x, weight, bias if bias is not None else weight, s, out, C, T,
        *x.stride(), *out.stride(), *s.stride(),
        WIDTH=weight.shape[1], BLOCK_C=bc, BLOCK_T=bt, HAS_BIAS=bias is not None, HAS_SEQ=seq_idx is not None,
        SILU=silu, num_warps=cfg["num_warps"])
    return out


def causal_conv1d_bwd(dout, x, weight, bias, seq_idx, silu, dx):
    """Writes dx [B, C, T] (any strides); returns (dx, dweight [C, W] fp32, dbias [C] fp32 or None)."""
    Bsz, C, T = x.shape
    W = weight.shape[1]
    cfg = pick(CONV1D_BWD, x.device, 0)
    bc, bt = _blocks(cfg, C, T)
    n_tblk = triton.cdiv(T, bt)
    dw_part = torch.empty(Bsz, n_tblk, C, W, device=x.device, dtype=torch.float32)
    db_part = torch.empty(Bsz, n_tblk, C, device=x.device, dtype=torch.float32) if bias is not None else dw_part
    s = seq_idx if seq_idx is not None else x.new_zeros(1, 1, dtype=torch.int32)
    _causal_conv1d_bwd_kernel[(n_tblk, triton.cdiv(C, bc), Bsz)](
        x, weight, bias if bias is not None else weight, s, dout, dx, dw_part, db_part, C, T, n_tblk,
        *x.stride(), *dout.stride(), *dx.stride(), *s.stride(),
        WIDTH=W, BLOCK_C=bc, BLOCK_T=bt, HAS_BIAS=bias is not None, HAS_SEQ=seq_idx is not None,
        SILU=silu, num_warps=cfg["num_warps"])
    return dx, dw_part.sum((0, 1)), (db_part.sum((0, 1)) if bias is not None else None)
