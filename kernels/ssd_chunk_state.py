"""SSD stage: the state each chunk produces on its own (forward), and dB (backward).

Forward: states[b, c, h] = sum_j exp(Acum_last - Acum_j) dt_j [seg_j == seg_last] x_j (outer) B_j   [P, N]
(only tokens of the chunk's last document reach the chunk end; state passing adds the carried-in state).
Backward (dB): dB_j = sum_{h in g} dt_j exp(Acum_last - Acum_j) [seg_j == seg_last] (x_j @ dS_out_h)
                     + sum_{i >= j} dCB_ij C_i
where dS_out is the gradient of the state leaving the chunk (from ssd_state_passing backward) and dCB comes
from ssd_bmm backward. One program owns all heads of a group, so no atomics are needed.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._ssd_common import block, dot_mode, launch_opts, mm, program_ids, rows_times_state


@triton.jit
def _ssd_chunk_state_fwd_kernel(
    X_ptr, B_ptr, DT_OUT_ptr, DA_CS_ptr, SEG_ptr, STATES_ptr,
    T, H, G, P, N, nc,
    X_stride_b, X_stride_t, X_stride_h, X_stride_p,
    B_stride_b, B_stride_t, B_stride_g, B_stride_n,
    L: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    HAS_SEQ: tl.constexpr, DOT_MODE: tl.constexpr,
):
    pid_t, pid_bc, pid_h = program_ids()
    pid_b, pid_c = pid_bc // nc, pid_bc % nc
    n_tiles_n = tl.cdiv(N, BLOCK_N)
    pid_m, pid_n = pid_t // n_tiles_n, pid_t % n_tiles_n
    g = pid_h // (H // G)
    offs_p = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    cs_base = ((pid_b * H + pid_h) * nc + pid_c) * L
    a_last = tl.load(DA_CS_ptr + cs_base + L - 1)
    if HAS_SEQ:
        seg_last = tl.load(SEG_ptr + pid_b * nc * L + pid_c * L + L - 1)
    x_base = X_ptr + pid_b * X_stride_b + pid_h * X_stride_h
    b_base = B_ptr + pid_b * B_stride_b + g * B_stride_g
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, L, BLOCK_K):
        kk = k + offs_k
        t = pid_c * L + kk
        xt = tl.load(x_base + offs_p[:, None] * X_stride_p + t[None, :] * X_stride_t,
                     mask=(offs_p < P)[:, None] & (t < T)[None, :], other=0.0).to(tl.float32)
        b = tl.load(b_base + t[:, None] * B_stride_t + offs_n[None, :] * B_stride_n,
                    mask=(t < T)[:, None] & (offs_n < N)[None, :], other=0.0).to(tl.float32)
        a = tl.load(DA_CS_ptr + cs_base + kk, mask=kk < L, other=0.0)
        dt = tl.load(DT_OUT_ptr + cs_base + kk, mask=kk < L, other=0.0)
        scale = tl.exp(tl.minimum(a_last - a, 0.0)) * dt
        if HAS_SEQ:
            seg = tl.load(SEG_ptr + pid_b * nc * L + t, mask=kk < L, other=-1)
            scale = tl.where(seg == seg_last, scale, 0.0)
        acc += mm(xt, b * scale[:, None], DOT_MODE)
    out = STATES_ptr + ((pid_bc * H + pid_h) * P + offs_p[:, None]) * N + offs_n[None, :]
    tl.store(out, acc, mask=(offs_p < P)[:, None] & (offs_n < N)[None, :])


@triton.jit
def _ssd_chunk_state_bwd_db_kernel(
    X_ptr, C_ptr, DT_OUT_ptr, DA_CS_ptr, SEG_ptr, DS_OUT_ptr, DCB_ptr, DB_ptr,
    T, H, G, P, N, nc,
    X_stride_b, X_stride_t, X_stride_h, X_stride_p,
    C_stride_b, C_stride_t, C_stride_g, C_stride_n,
    DB_stride_b, DB_stride_t, DB_stride_g, DB_stride_n,
    L: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    HAS_SEQ: tl.constexpr, DOT_MODE: tl.constexpr,
):
    pid_t, pid_bc, pid_g = program_ids()
    pid_b, pid_c = pid_bc // nc, pid_bc % nc
    n_tiles_n = tl.cdiv(N, BLOCK_N)
    pid_m, pid_n = pid_t // n_tiles_n, pid_t % n_tiles_n
    R = H // G
    offs_j = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    tj = pid_c * L + offs_j
    emask = offs_j < L
    if HAS_SEQ:
        seg_last = tl.load(SEG_ptr + pid_b * nc * L + pid_c * L + L - 1)
        seg_j = tl.load(SEG_ptr + pid_b * nc * L + tj, mask=offs_j < L, other=-1)
        emask &= seg_j == seg_last
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # Inter-chunk part: the state leaving the chunk, one head at a time.
    for r in range(0, R):
        h = pid_g * R + r
        cs_base = ((pid_b * H + h) * nc + pid_c) * L
        a_last = tl.load(DA_CS_ptr + cs_base + L - 1)
        a = tl.load(DA_CS_ptr + cs_base + offs_j, mask=offs_j < L, other=0.0)
        dt = tl.load(DT_OUT_ptr + cs_base + offs_j, mask=offs_j < L, other=0.0)
        scale = tl.where(emask, tl.exp(tl.minimum(a_last - a, 0.0)) * dt, 0.0)
        part = rows_times_state(X_ptr + pid_b * X_stride_b + h * X_stride_h, X_stride_t, X_stride_p, tj, T,
                                DS_OUT_ptr + (pid_bc * H + h) * P * N, P, N, offs_n, BLOCK_K, DOT_MODE)
        acc += part * scale[:, None]
    # Intra-chunk part: dB_j += sum_{i >= j} dCB[i, j] C_i (dCB is already masked and summed over heads).
    dcb_base = DCB_ptr + (pid_bc * G + pid_g) * L * L
    c_base = C_ptr + pid_b * C_stride_b + pid_g * C_stride_g
    for i0 in range(pid_m * BLOCK_M, L, BLOCK_K):
        ii = i0 + offs_k
        ti = pid_c * L + ii
        dcbt = tl.load(dcb_base + ii[None, :] * L + offs_j[:, None],
                       mask=(ii < L)[None, :] & (offs_j < L)[:, None], other=0.0)
        dcbt = tl.where(ii[None, :] >= offs_j[:, None], dcbt, 0.0)
        c = tl.load(c_base + ti[:, None] * C_stride_t + offs_n[None, :] * C_stride_n,
                    mask=(ti < T)[:, None] & (offs_n < N)[None, :], other=0.0).to(tl.float32)
        acc += mm(dcbt, c, DOT_MODE)
    out = DB_ptr + pid_b * DB_stride_b + tj[:, None] * DB_stride_t + pid_g * DB_stride_g + offs_n[None, :] * DB_stride_n
    tl.store(out, acc, mask=(tj < T)[:, None] & (offs_n < N)[None, :])


def ssd_chunk_state_fwd(x, B, dt_out, dA_cs, seg):
    """x [B, T, H, P], B [B, T, G, N] -> states [B, nc, H, P, N] fp32."""
    Bsz, T, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    nc, L = dt_out.shape[2], dt_out.shape[3]
    states = torch.empty(Bsz, nc, H, P, N, device=x.device, dtype=torch.float32)
    bm, bn = block(P), block(N)
    grid = (triton.cdiv(P, bm) * triton.cdiv(N, bn), Bsz * nc, H)
    _ssd_chunk_state_fwd_kernel[grid](
        x, B, dt_out, dA_cs, seg if seg is not None else dt_out, states, T, H, G, P, N, nc,
        *x.stride(), *B.stride(),
        L=L, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=block(L), HAS_SEQ=seg is not None,
        DOT_MODE=dot_mode(x.dtype), **launch_opts(x))
    return states


def ssd_chunk_state_bwd_db(x, C, dt_out, dA_cs, seg, ds_out, dCB, dtype):
    """Returns dB [B, T, G, N] in `dtype`."""
    Bsz, T, H, P = x.shape
    G, N = C.shape[2], C.shape[3]
    nc, L = dt_out.shape[2], dt_out.shape[3]
    dB = torch.empty(Bsz, T, G, N, device=x.device, dtype=dtype)
    bm, bn = block(L), block(N)
    grid = (triton.cdiv(L, bm) * triton.cdiv(N, bn), Bsz * nc, G)
    _ssd_chunk_state_bwd_db_kernel[grid](
        x, C, dt_out, dA_cs, seg if seg is not None else dt_out, ds_out, dCB, dB, T, H, G, P, N, nc,
        *x.stride(), *C.stride(), *dB.stride(),
        L=L, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=block(max(P, L)), HAS_SEQ=seg is not None,
        DOT_MODE=dot_mode(x.dtype), **launch_opts(x))
    return dB
