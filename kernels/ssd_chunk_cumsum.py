"""SSD stage 1: dt processing and the within-chunk cumulative sum of dt * A (forward), and its backward.

Forward per (b, chunk, head-block): dt <- clamp(softplus?(dt + dt_bias), lo, hi), zero past T (so a padded
tail leaves the state unchanged), dA_cumsum = cumsum_l(dt * A).
Backward: the gradient of each position's dA = dt * A, assembled from terms that never cancel (no
`total - prefix` over y; see ssd_ddA.py):
    d dA_k = sum_{i >= k} inter_i        (carried-in state reaching y_i, reverse cumsum)
           + sum_{j < k} sv_j            (chunk-state pairs crossing k)
           + ddA_last                    (state passing's exp(Acum_last))
           + cross_k                     (intra-chunk pairs crossing k)
then flows to dt (through clamp / softplus, matching torch's softplus threshold of 20), A and dt_bias.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._ssd_common import program_ids
from .configs import SSD_CUMSUM, pick

_SOFTPLUS_THRESHOLD = 20.0


@triton.jit
def _ssd_chunk_cumsum_fwd_kernel(
    DT_ptr, A_ptr, DT_BIAS_ptr, DT_OUT_ptr, DA_CS_ptr,
    T, H, nc, dt_min, dt_max,
    DT_stride_b, DT_stride_t, DT_stride_h,
    L: tl.constexpr, BLOCK_H: tl.constexpr,
    HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr, HAS_LIMIT: tl.constexpr,
):
    pid_b, pid_c, pid_h = program_ids()
    offs_l = tl.arange(0, L)
    offs_h = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    t = pid_c * L + offs_l
    mask = (t < T)[:, None] & (offs_h < H)[None, :]
    dt = tl.load(DT_ptr + pid_b * DT_stride_b + t[:, None] * DT_stride_t + offs_h[None, :] * DT_stride_h,
                 mask=mask, other=0.0).to(tl.float32)
    if HAS_DT_BIAS:
        dt += tl.load(DT_BIAS_ptr + offs_h, mask=offs_h < H, other=0.0).to(tl.float32)[None, :]
    if DT_SOFTPLUS:
        dt = tl.where(dt <= 20.0, tl.log(1.0 + tl.exp(dt)), dt)
    if HAS_LIMIT:
        dt = tl.minimum(tl.maximum(dt, dt_min), dt_max)
    dt = tl.where(mask, dt, 0.0)
    A = tl.load(A_ptr + offs_h, mask=offs_h < H, other=0.0).to(tl.float32)
    dA_cs = tl.cumsum(dt * A[None, :], axis=0)
    out_off = ((pid_b * H + offs_h[None, :]) * nc + pid_c) * L + offs_l[:, None]
    hmask = (offs_h < H)[None, :]
    tl.store(DT_OUT_ptr + out_off, dt, mask=hmask)
    tl.store(DA_CS_ptr + out_off, dA_cs, mask=hmask)


@triton.jit
def _ssd_chunk_cumsum_bwd_kernel(
    DT_ptr, A_ptr, DT_BIAS_ptr, DT_OUT_ptr, INTER_ptr, CROSS_ptr, SV_ptr, DDA_LAST_ptr, DDT_DIRECT_ptr,
    DDT_ptr, DA_PART_ptr, DDT_BIAS_PART_ptr,
    T, H, nc, dt_min, dt_max,
    DT_stride_b, DT_stride_t, DT_stride_h, DDT_stride_b, DDT_stride_t, DDT_stride_h,
    L: tl.constexpr, BLOCK_H: tl.constexpr,
    HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr, HAS_LIMIT: tl.constexpr,
):
    pid_b, pid_c, pid_h = program_ids()
    offs_l = tl.arange(0, L)
    offs_h = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    t = pid_c * L + offs_l
    hmask = offs_h < H
    mask = (t < T)[:, None] & hmask[None, :]
    off = ((pid_b * H + offs_h[None, :]) * nc + pid_c) * L + offs_l[:, None]
    inter = tl.load(INTER_ptr + off, mask=hmask[None, :], other=0.0)
    sv = tl.load(SV_ptr + off, mask=hmask[None, :], other=0.0)
    last = tl.load(DDA_LAST_ptr + (pid_b * H + offs_h) * nc + pid_c, mask=hmask, other=0.0)
    # cumsum(sv) - sv is the exclusive prefix sum_{j < k} sv_j (fp32 terms computed from fp32 inputs)
    d_dA = (tl.cumsum(inter, axis=0, reverse=True) + (tl.cumsum(sv, axis=0) - sv) + last[None, :]
            + tl.load(CROSS_ptr + off, mask=hmask[None, :], other=0.0))
    dt = tl.load(DT_OUT_ptr + off, mask=hmask[None, :], other=0.0)
    A = tl.load(A_ptr + offs_h, mask=hmask, other=0.0).to(tl.float32)
    ddt = tl.load(DDT_DIRECT_ptr + off, mask=hmask[None, :], other=0.0) + d_dA * A[None, :]
    ddt = tl.where(mask, ddt, 0.0)
    tl.store(DA_PART_ptr + (pid_b * nc + pid_c) * H + offs_h, tl.sum(d_dA * dt, axis=0), mask=hmask)
    v = tl.load(DT_ptr + pid_b * DT_stride_b + t[:, None] * DT_stride_t + offs_h[None, :] * DT_stride_h,
                mask=mask, other=0.0).to(tl.float32)
    if HAS_DT_BIAS:
        v += tl.load(DT_BIAS_ptr + offs_h, mask=hmask, other=0.0).to(tl.float32)[None, :]
    if HAS_LIMIT:
        sp = v
        if DT_SOFTPLUS:
            sp = tl.where(v <= 20.0, tl.log(1.0 + tl.exp(v)), v)
        ddt = tl.where((sp >= dt_min) & (sp <= dt_max), ddt, 0.0)
    if DT_SOFTPLUS:
        ddt = tl.where(v <= 20.0, ddt * tl.sigmoid(v), ddt)
    tl.store(DDT_ptr + pid_b * DDT_stride_b + t[:, None] * DDT_stride_t + offs_h[None, :] * DDT_stride_h,
             ddt, mask=mask)
    if HAS_DT_BIAS:
        tl.store(DDT_BIAS_PART_ptr + (pid_b * nc + pid_c) * H + offs_h, tl.sum(ddt, axis=0), mask=hmask)


def _limits(dt_limit):
    lo, hi = float(dt_limit[0]), float(dt_limit[1])
    has = lo > 0.0 or hi != float("inf")
    return has, lo, min(hi, 3.0e38)


def _block_h(H, L):
    # Keep the [L, BLOCK_H] tile at <= 8k elements (registers).
    return max(1, min(triton.next_power_of_2(H), 8192 // L))


def ssd_chunk_cumsum_fwd(dt, A, dt_bias, chunk_size, dt_softplus, dt_limit):
    """dt [B, T, H] -> (dt_out, dA_cumsum), both [B, H, nc, L] fp32."""
    Bsz, T, H = dt.shape
    L = chunk_size
    nc = max(1, triton.cdiv(T, L))
    dt_out = torch.empty(Bsz, H, nc, L, device=dt.device, dtype=torch.float32)
    dA_cs = torch.empty_like(dt_out)
    has_limit, lo, hi = _limits(dt_limit)
    BH = _block_h(H, L)
    _ssd_chunk_cumsum_fwd_kernel[(Bsz, nc, triton.cdiv(H, BH))](
        dt, A, dt_bias if dt_bias is not None else A, dt_out, dA_cs, T, H, nc, lo, hi,
        dt.stride(0), dt.stride(1), dt.stride(2),
        L=L, BLOCK_H=BH, HAS_DT_BIAS=dt_bias is not None, DT_SOFTPLUS=dt_softplus, HAS_LIMIT=has_limit,
        **pick(SSD_CUMSUM, dt.device, 0))
    return dt_out, dA_cs


def ssd_chunk_cumsum_bwd(dt, A, dt_bias, dt_out, inter, cross, sv, dda_last, ddt_direct, dt_softplus, dt_limit):
    """Returns (ddt [B, T, H] in dt.dtype, dA [H] fp32, ddt_bias [H] fp32 or None)."""
    Bsz, T, H = dt.shape
    nc, L = dt_out.shape[2], dt_out.shape[3]
    ddt = torch.empty(Bsz, T, H, device=dt.device, dtype=torch.float32)
    dA_part = torch.empty(Bsz, nc, H, device=dt.device, dtype=torch.float32)
    dbias_part = torch.empty_like(dA_part) if dt_bias is not None else dA_part
    has_limit, lo, hi = _limits(dt_limit)
    BH = _block_h(H, L)
    _ssd_chunk_cumsum_bwd_kernel[(Bsz, nc, triton.cdiv(H, BH))](
        dt, A, dt_bias if dt_bias is not None else A, dt_out, inter, cross, sv, dda_last, ddt_direct,
        ddt, dA_part, dbias_part, T, H, nc, lo, hi,
        dt.stride(0), dt.stride(1), dt.stride(2), ddt.stride(0), ddt.stride(1), ddt.stride(2),
        L=L, BLOCK_H=BH, HAS_DT_BIAS=dt_bias is not None, DT_SOFTPLUS=dt_softplus, HAS_LIMIT=has_limit,
        **pick(SSD_CUMSUM, dt.device, 0))
    ddt_bias = dbias_part.sum((0, 1)) if dt_bias is not None else None
    return ddt.to(dt.dtype), dA_part.sum((0, 1)), ddt_bias
