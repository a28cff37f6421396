"""SSD stage: per-chunk C @ B^T (forward) and its gradient matrix dCB (backward).

CB[b, c, g, i, j] = sum_n C[b, cL+i, g, n] * B[b, cL+j, g, n], only for tiles touching the lower triangle
(j <= i; the scan never reads the rest, so tiles strictly above the diagonal are skipped and left unwritten).
dCB[b, c, g, i, j] = sum_{h in g} exp(Acum_i - Acum_j) dt_j (dY_i . x_j), masked to j <= i within a document:
the gradient of the intra-chunk output w.r.t. CB, summed over the heads sharing group g, from which dC and dB
follow by one more product each (ssd_chunk_scan / ssd_chunk_state backward).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._ssd_common import block, dot_mode, launch_opts, program_ids, row_dots


@triton.jit
def _ssd_bmm_fwd_kernel(
    C_ptr, B_ptr, CB_ptr,
    T, G, N, nc,
    C_stride_b, C_stride_t, C_stride_g, C_stride_n,
    B_stride_b, B_stride_t, B_stride_g, B_stride_n,
    L: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_MODE: tl.constexpr,
):
    pid_t, pid_bc, pid_g = program_ids()
    pid_b, pid_c = pid_bc // nc, pid_bc % nc
    n_tiles_n = tl.cdiv(L, BLOCK_N)
    pid_m, pid_n = pid_t // n_tiles_n, pid_t % n_tiles_n
    if pid_n * BLOCK_N > pid_m * BLOCK_M + BLOCK_M - 1:
        return
    offs_i = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_j = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ti, tj = pid_c * L + offs_i, pid_c * L + offs_j
    c_base = C_ptr + pid_b * C_stride_b + pid_g * C_stride_g
    b_base = B_ptr + pid_b * B_stride_b + pid_g * B_stride_g
    acc = row_dots(c_base, C_stride_t, C_stride_n, ti, b_base, B_stride_t, B_stride_n, tj, T, N, BLOCK_K, DOT_MODE)
    out = CB_ptr + (pid_bc * G + pid_g) * L * L + offs_i[:, None] * L + offs_j[None, :]
    tl.store(out, acc, mask=(offs_i < L)[:, None] & (offs_j < L)[None, :])


@triton.jit
def _ssd_bmm_bwd_dcb_kernel(
    X_ptr, DY_ptr, DT_OUT_ptr, DA_CS_ptr, SEG_ptr, DCB_ptr,
    T, H, G, P, nc,
    X_stride_b, X_stride_t, X_stride_h, X_stride_p,
    DY_stride_b, DY_stride_t, DY_stride_h, DY_stride_p,
    L: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    HAS_SEQ: tl.constexpr, DOT_MODE: tl.constexpr,
):
    pid_t, pid_bc, pid_g = program_ids()
    pid_b, pid_c = pid_bc // nc, pid_bc % nc
    n_tiles_n = tl.cdiv(L, BLOCK_N)
    pid_m, pid_n = pid_t // n_tiles_n, pid_t % n_tiles_n
    if pid_n * BLOCK_N > pid_m * BLOCK_M + BLOCK_M - 1:
        return
    R = H // G
    offs_i = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_j = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ti, tj = pid_c * L + offs_i, pid_c * L + offs_j
    mask = (offs_j[None, :] <= offs_i[:, None]) & (offs_i < L)[:, None]
    if HAS_SEQ:
        seg_i = tl.load(SEG_ptr + pid_b * nc * L + ti, mask=offs_i < L, other=-1)
        seg_j = tl.load(SEG_ptr + pid_b * nc * L + tj, mask=offs_j < L, other=-2)
        mask &= seg_i[:, None] == seg_j[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for r in range(0, R):
        h = pid_g * R + r
        dy_base = DY_ptr + pid_b * DY_stride_b + h * DY_stride_h
        x_base = X_ptr + pid_b * X_stride_b + h * X_stride_h
        dots = row_dots(dy_base, DY_stride_t, DY_stride_p, ti, x_base, X_stride_t, X_stride_p, tj, T, P, BLOCK_K,
                        DOT_MODE)
        cs_base = DA_CS_ptr + ((pid_b * H + h) * nc + pid_c) * L
        a_i = tl.load(cs_base + offs_i, mask=offs_i < L, other=0.0)
        a_j = tl.load(cs_base + offs_j, mask=offs_j < L, other=0.0)
        dt_j = tl.load(DT_OUT_ptr + ((pid_b * H + h) * nc + pid_c) * L + offs_j, mask=offs_j < L, other=0.0)
        # min(., 0): above the diagonal the exponent is positive and could overflow before masking.
        acc += dots * tl.exp(tl.minimum(a_i[:, None] - a_j[None, :], 0.0)) * dt_j[None, :]
    acc = tl.where(mask, acc, 0.0)
    out = DCB_ptr + (pid_bc * G + pid_g) * L * L + offs_i[:, None] * L + offs_j[None, :]
    tl.store(out, acc, mask=(offs_i < L)[:, None] & (offs_j < L)[None, :])


def _tiles(L):
    bm = block(L)
    return bm, triton.cdiv(L, bm)


def ssd_bmm_fwd(C, B, chunk_size):
    """C, B [B, T, G, N] -> CB [B, nc, G, L, L] fp32 (lower-triangle tiles only)."""
    Bsz, T, G, N = C.shape
    L = chunk_size
    nc = max(1, triton.cdiv(T, L))
    CB = torch.empty(Bsz, nc, G, L, L, device=C.device, dtype=torch.float32)
    bm, nt = _tiles(L)
    _ssd_bmm_fwd_kernel[(nt * nt, Bsz * nc, G)](
        C, B, CB, T, G, N, nc, *C.stride(), *B.stride(),
        L=L, BLOCK_M=bm, BLOCK_N=bm, BLOCK_K=block(N, 32), DOT_MODE=dot_mode(C.dtype), **launch_opts(C))
    return CB


def ssd_bmm_bwd_dcb(x, dy, dt_out, dA_cs, seg, G):
    """x, dy [B, T, H, P] -> dCB [B, nc, G, L, L] fp32 (lower triangle, masked by document)."""
    Bsz, T, H, P = x.shape
    nc, L = dt_out.shape[2], dt_out.shape[3]
    dCB = torch.empty(Bsz, nc, G, L, L, device=x.device, dtype=torch.float32)
    bm, nt = _tiles(L)
    _ssd_bmm_bwd_dcb_kernel[(nt * nt, Bsz * nc, G)](
        x, dy, dt_out, dA_cs, seg if seg is not None else dt_out, dCB, T, H, G, P, nc,
        *x.stride(), *dy.stride(),
        L=L, BLOCK_M=bm, BLOCK_N=bm, BLOCK_K=block(P), HAS_SEQ=seg is not None,
        DOT_MODE=dot_mode(x.dtype), **launch_opts(x))
    return dCB
