"""SSD backward stage: the stable gradient of dA (the per-position dt * A) from the output side.

Why a stage of its own. dA_k enters the output through every decay factor whose span covers k:
    intra:  exp(sum_{j < k' <= i} dA_k')  for pairs j < k <= i          (y_i from x_j in the same chunk)
    inter:  exp(sum_{k' <= i} dA_k')       for i >= k                    (y_i from the carried-in state)
The shortcut d Acum_i = dY_i . y_i - (terms of the pairs that start at i), followed by `total - prefix` over the
chunk, adds and then cancels the contribution of every pair that does NOT cross k. With y saved in bf16 and
strong decay (Nemotron-H: |A| up to 16, chunks of 128-256) the surviving value is far below the rounding of the
cancelled terms (tests/kernels/test_ssd_stable_grads.py: 6e-2 relative error in dA). Like mamba's
`_chunk_scan_bwd_ddAcs_stable`, this kernel sums only the crossing pairs, in fp32, and never reads y:
    W_ij   = (dY_i . x_j) CB_ij exp(Acum_i - Acum_j) dt_j                 j < i, same document
    cross_k = sum_{i >= k} sum_{j < k} W_ij                              (written per row tile, summed after)
    inter_i = exp(Acum_i) [seg_i == seg_prev] dY_i . (S_in C_i)          (reverse-cumsummed in ssd_chunk_cumsum)
Per program (row tile i, b * chunk, head): a running row sum over the column tiles j turns the within-tile
cumsum of W into sum_{j < k} W_ij, so no [L, L] intermediate is stored.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._ssd_common import (block, carried_in_scale, dot_mode, launch_opts, program_ids, row_dots,
                          rows_times_state)


@triton.jit
def _ssd_bwd_ddA_kernel(
    X_ptr, DY_ptr, C_ptr, CB_ptr, S_IN_ptr, DT_OUT_ptr, DA_CS_ptr, SEG_ptr, INTER_ptr, CROSS_PART_ptr,
    T, H, G, P, N, nc, n_mblk,
    X_stride_b, X_stride_t, X_stride_h, X_stride_p,
    DY_stride_b, DY_stride_t, DY_stride_h, DY_stride_p,
    C_stride_b, C_stride_t, C_stride_g, C_stride_n,
    L: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_N: tl.constexpr, HAS_SEQ: tl.constexpr, DOT_MODE: tl.constexpr,
):
    pid_m, pid_bc, pid_h = program_ids()
    pid_b, pid_c = pid_bc // nc, pid_bc % nc
    g = pid_h // (H // G)
    offs_i = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_j = tl.arange(0, BLOCK_J)
    offs_n = tl.arange(0, BLOCK_N)
    ti = pid_c * L + offs_i
    cs_base = ((pid_b * H + pid_h) * nc + pid_c) * L
    a_i, scale_i, seg_i = carried_in_scale(DA_CS_ptr, cs_base, SEG_ptr + pid_b * nc * L, pid_c, offs_i, L, HAS_SEQ)
    dy_base = DY_ptr + pid_b * DY_stride_b + pid_h * DY_stride_h
    # inter_i = scale_i * sum_n C_in (dY_i @ S_in)_n
    c_base = C_ptr + pid_b * C_stride_b + g * C_stride_g
    s_base = S_IN_ptr + (pid_bc * H + pid_h) * P * N
    inter = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        nn = n0 + offs_n
        part = rows_times_state(dy_base, DY_stride_t, DY_stride_p, ti, T, s_base, P, N, nn, BLOCK_K, DOT_MODE)
        c = tl.load(c_base + ti[:, None] * C_stride_t + nn[None, :] * C_stride_n,
                    mask=(ti < T)[:, None] & (nn < N)[None, :], other=0.0).to(tl.float32)
        inter += tl.sum(part * c, axis=1)
    tl.store(INTER_ptr + cs_base + offs_i, inter * scale_i, mask=offs_i < L)
    # Crossing pairs j < k <= i, column tiles left to right (only up to this row tile: W is strictly lower).
    x_base = X_ptr + pid_b * X_stride_b + pid_h * X_stride_h
    cb_base = CB_ptr + (pid_bc * G + g) * L * L
    part_base = CROSS_PART_ptr + (cs_base * n_mblk) + pid_m * L
    rowsum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    hi = tl.minimum((pid_m + 1) * BLOCK_M, L)
    for j0 in range(0, hi, BLOCK_J):
        jj = j0 + offs_j
        tj = pid_c * L + jj
        dots = row_dots(dy_base, DY_stride_t, DY_stride_p, ti, x_base, X_stride_t, X_stride_p, tj, T, P, BLOCK_K,
                        DOT_MODE)
        cb = tl.load(cb_base + offs_i[:, None] * L + jj[None, :],
                     mask=(offs_i < L)[:, None] & (jj < L)[None, :], other=0.0)
        a_j = tl.load(DA_CS_ptr + cs_base + jj, mask=jj < L, other=0.0)
        dt_j = tl.load(DT_OUT_ptr + cs_base + jj, mask=jj < L, other=0.0)
        m = (jj[None, :] < offs_i[:, None]) & (offs_i < L)[:, None]
        if HAS_SEQ:
            seg_j = tl.load(SEG_ptr + pid_b * nc * L + tj, mask=jj < L, other=-2)
            m &= seg_i[:, None] == seg_j[None, :]
        # min(., 0): above the diagonal the exponent is positive and could overflow before masking.
        w = tl.where(m, dots * cb * tl.exp(tl.minimum(a_i[:, None] - a_j[None, :], 0.0)) * dt_j[None, :], 0.0)
        # column jj of the running sum = sum_{j <= jj} W_ij: the pairs crossing position k = jj + 1
        run = rowsum[:, None] + tl.cumsum(w, axis=1)
        rowsum += tl.sum(w, axis=1)
        cross = tl.sum(tl.where(offs_i[:, None] >= jj[None, :] + 1, run, 0.0), axis=0)
        tl.store(part_base + jj + 1, cross, mask=jj + 1 < L)


def ssd_bwd_ddA(x, dy, C, CB, S_in, dt_out, dA_cs, seg):
    """Returns (inter, cross), both [B, H, nc, L] fp32 (see the module docstring)."""
    Bsz, T, H, P = x.shape
    G, N = C.shape[2], C.shape[3]
    nc, L = dt_out.shape[2], dt_out.shape[3]
    bm = block(L, 64 if P <= 64 else 32)
    n_mblk = triton.cdiv(L, bm)
    inter = torch.empty_like(dt_out)
    # zeros: a row tile only writes the positions it can reach (k <= its last row); position 0 has no pairs
    cross_part = torch.zeros(Bsz, H, nc, n_mblk, L, device=x.device, dtype=torch.float32)
    _ssd_bwd_ddA_kernel[(n_mblk, Bsz * nc, H)](
        x, dy, C, CB, S_in, dt_out, dA_cs, seg if seg is not None else dt_out, inter, cross_part,
        T, H, G, P, N, nc, n_mblk, *x.stride(), *dy.stride(), *C.stride(),
        L=L, BLOCK_M=bm, BLOCK_J=bm, BLOCK_K=block(P), BLOCK_N=block(N), HAS_SEQ=seg is not None,
        DOT_MODE=dot_mode(x.dtype), **launch_opts(x))
    return inter, cross_part.sum(3)
