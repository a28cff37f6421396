"""SSD combined: the dx backward kernel (chunk scan and chunk state share it, as in mamba) and the launch
pipelines that run all stages in order for the forward and the backward pass.

dx kernel, per (b, chunk, head) and a tile of rows j (all of P in one tile; P <= 256):
    U_j = sum_{i >= j, same doc} CB_ij exp(Acum_i - Acum_j) dY_i          (intra-chunk)
    V_j = exp(Acum_last - Acum_j) [seg_j == seg_last] (dS_out @ B_j)      (through the chunk's final state)
    dx_j = dt_j (U_j + V_j) + D dY_j;   ddt_direct_j = x_j . (U_j + V_j);   sv_j = dt_j x_j . V_j
sv_j is the chunk-state pair (last, j): it reaches dA_k for every k > j (ssd_chunk_cumsum backward). The other
dA terms come from ssd_ddA.py, which sums the crossing pairs directly instead of differencing cumulative sums.
Memory: the backward recomputes dt, dA_cumsum, CB and the carried-in states instead of saving them (S_in alone
is B * nc * H * P * N fp32: 268 MB for one Nemotron-H layer at 8k tokens), like mamba_chunk_scan_combined.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._ssd_common import block, dot_mode, launch_opts, mm, program_ids
from .ssd_bmm import ssd_bmm_bwd_dcb, ssd_bmm_fwd
from .ssd_chunk_cumsum import ssd_chunk_cumsum_bwd, ssd_chunk_cumsum_fwd
from .ssd_chunk_scan import (ssd_chunk_scan_bwd_dc, ssd_chunk_scan_bwd_dstates, ssd_chunk_scan_fwd,
                             ssd_gate_bwd)
from .ssd_ddA import ssd_bwd_ddA
from .ssd_chunk_state import ssd_chunk_state_bwd_db, ssd_chunk_state_fwd
from .ssd_state_passing import ssd_state_passing_bwd, ssd_state_passing_fwd


@triton.jit
def _ssd_chunk_scan_chunk_state_bwd_dx_kernel(
    X_ptr, DY_ptr, D_ptr, B_ptr, CB_ptr, DA_CS_ptr, DT_OUT_ptr, SEG_ptr, DS_OUT_ptr,
    DX_ptr, DDT_DIRECT_ptr, SV_ptr, DD_PART_ptr,
    T, H, G, P, N, nc, n_mblk,
    X_stride_b, X_stride_t, X_stride_h, X_stride_p,
    DY_stride_b, DY_stride_t, DY_stride_h, DY_stride_p,
    B_stride_b, B_stride_t, B_stride_g, B_stride_n,
    DX_stride_b, DX_stride_t, DX_stride_h, DX_stride_p,
    L: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_N: tl.constexpr, HAS_SEQ: tl.constexpr, HAS_D: tl.constexpr, D_HAS_HDIM: tl.constexpr,
    DOT_MODE: tl.constexpr,
):
    pid_m, pid_bc, pid_h = program_ids()
    pid_b, pid_c = pid_bc // nc, pid_bc % nc
    g = pid_h // (H // G)
    offs_j = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_p = tl.arange(0, BLOCK_P)
    offs_k = tl.arange(0, BLOCK_K)
    offs_n = tl.arange(0, BLOCK_N)
    tj = pid_c * L + offs_j
    cs_base = ((pid_b * H + pid_h) * nc + pid_c) * L
    a_j = tl.load(DA_CS_ptr + cs_base + offs_j, mask=offs_j < L, other=0.0)
    dt_j = tl.load(DT_OUT_ptr + cs_base + offs_j, mask=offs_j < L, other=0.0)
    a_last = tl.load(DA_CS_ptr + cs_base + L - 1)
    scale_v = tl.exp(tl.minimum(a_last - a_j, 0.0))
    if HAS_SEQ:
        seg_j = tl.load(SEG_ptr + pid_b * nc * L + tj, mask=offs_j < L, other=-1)
        seg_last = tl.load(SEG_ptr + pid_b * nc * L + pid_c * L + L - 1)
        scale_v = tl.where(seg_j == seg_last, scale_v, 0.0)
    # V: gradient through the state leaving the chunk.
    b_base = B_ptr + pid_b * B_stride_b + g * B_stride_g
    ds_base = DS_OUT_ptr + (pid_bc * H + pid_h) * P * N
    acc_v = tl.zeros((BLOCK_M, BLOCK_P), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        nn = n0 + offs_n
        b = tl.load(b_base + tj[:, None] * B_stride_t + nn[None, :] * B_stride_n,
                    mask=(tj < T)[:, None] & (nn < N)[None, :], other=0.0).to(tl.float32)
        dst = tl.load(ds_base + offs_p[None, :] * N + nn[:, None],
                      mask=(offs_p < P)[None, :] & (nn < N)[:, None], other=0.0)
        acc_v += mm(b, dst, DOT_MODE)
    acc_v *= scale_v[:, None]
    # U: intra-chunk, rows i >= j.
    cb_base = CB_ptr + (pid_bc * G + g) * L * L
    dy_base = DY_ptr + pid_b * DY_stride_b + pid_h * DY_stride_h
    acc_u = tl.zeros((BLOCK_M, BLOCK_P), dtype=tl.float32)
    for i0 in range(pid_m * BLOCK_M, L, BLOCK_K):
        ii = i0 + offs_k
        ti = pid_c * L + ii
        cbt = tl.load(cb_base + ii[None, :] * L + offs_j[:, None],
                      mask=(ii < L)[None, :] & (offs_j < L)[:, None], other=0.0)
        a_i = tl.load(DA_CS_ptr + cs_base + ii, mask=ii < L, other=0.0)
        m = (ii[None, :] >= offs_j[:, None]) & (ii < L)[None, :]
        if HAS_SEQ:
            seg_i = tl.load(SEG_ptr + pid_b * nc * L + ti, mask=ii < L, other=-2)
            m &= seg_i[None, :] == seg_j[:, None]
        w = tl.where(m, cbt * tl.exp(tl.minimum(a_i[None, :] - a_j[:, None], 0.0)), 0.0)
        dy = tl.load(dy_base + ti[:, None] * DY_stride_t + offs_p[None, :] * DY_stride_p,
                     mask=(ti < T)[:, None] & (offs_p < P)[None, :], other=0.0).to(tl.float32)
        acc_u += mm(w, dy, DOT_MODE)
    uv = acc_u + acc_v
    rmask = (tj < T)[:, None] & (offs_p < P)[None, :]
    x = tl.load(X_ptr + pid_b * X_stride_b + tj[:, None] * X_stride_t + pid_h * X_stride_h
                + offs_p[None, :] * X_stride_p, mask=rmask, other=0.0).to(tl.float32)
    dy = tl.load(dy_base + tj[:, None] * DY_stride_t + offs_p[None, :] * DY_stride_p,
                 mask=rmask, other=0.0).to(tl.float32)
    dx = dt_j[:, None] * uv
    if HAS_D:
        if D_HAS_HDIM:
            d = tl.load(D_ptr + pid_h * P + offs_p, mask=offs_p < P, other=0.0).to(tl.float32)[None, :]
            tl.store(DD_PART_ptr + ((pid_bc * n_mblk + pid_m) * H + pid_h) * P + offs_p,
                     tl.sum(dy * x, axis=0), mask=offs_p < P)
        else:
            d = tl.load(D_ptr + pid_h).to(tl.float32)
            tl.store(DD_PART_ptr + (pid_bc * n_mblk + pid_m) * H + pid_h, tl.sum(tl.sum(dy * x, axis=1), axis=0))
        dx += d * dy
    tl.store(DX_ptr + pid_b * DX_stride_b + tj[:, None] * DX_stride_t + pid_h * DX_stride_h
             + offs_p[None, :] * DX_stride_p, dx, mask=rmask)
    ddt_direct = tl.sum(x * uv, axis=1)
    jm = offs_j < L
    tl.store(DDT_DIRECT_ptr + cs_base + offs_j, ddt_direct, mask=jm)
    tl.store(SV_ptr + cs_base + offs_j, dt_j * tl.sum(x * acc_v, axis=1), mask=jm)


def ssd_chunk_scan_chunk_state_bwd_dx(x, dy, D, B, CB, dA_cs, dt_out, seg, ds_out):
    """Returns (dx [B,T,H,P] x.dtype, ddt_direct, sv (each [B,H,nc,L] fp32), dD (fp32, D's shape) or None)."""
    Bsz, T, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    nc, L = dt_out.shape[2], dt_out.shape[3]
    if P > 256:
        raise ValueError(f"ssd_chunk_scan (triton): head dim {P} > 256 is not supported; use backend='torch'")
    bm = block(L, 64 if P <= 64 else 32)
    n_mblk = triton.cdiv(L, bm)
    dx = torch.empty(Bsz, T, H, P, device=x.device, dtype=x.dtype)
    ddt_direct, sv = torch.empty_like(dt_out), torch.empty_like(dt_out)
    has_hdim = D is not None and D.dim() == 2
    dd_part = torch.empty(Bsz * nc, n_mblk, H, P if has_hdim else 1, device=x.device, dtype=torch.float32)
    _ssd_chunk_scan_chunk_state_bwd_dx_kernel[(n_mblk, Bsz * nc, H)](
        x, dy, D if D is not None else dt_out, B, CB, dA_cs, dt_out, seg if seg is not None else dt_out,
        ds_out, dx, ddt_direct, sv, dd_part, T, H, G, P, N, nc, n_mblk,
        *x.stride(), *dy.stride(), *B.stride(), *dx.stride(),
        L=L, BLOCK_M=bm, BLOCK_P=max(16, triton.next_power_of_2(P)), BLOCK_K=bm, BLOCK_N=block(N, 32 if P > 64 else 64),
        HAS_SEQ=seg is not None, HAS_D=D is not None, D_HAS_HDIM=has_hdim, DOT_MODE=dot_mode(x.dtype),
        **launch_opts(x))
    dD = None
    if D is not None:
        dD = dd_part.sum((0, 1))
        dD = dD if has_hdim else dD[:, 0]
    return dx, ddt_direct, sv, dD


def ssd_combined_fwd(x, dt, A, B, C, chunk_size, *, D, z, dt_bias, dt_softplus, dt_limit, seg, initial_states):
    """All forward stages. Returns (out, y_pre or None, final_states [B, H, P, N] fp32)."""
    dt_out, dA_cs = ssd_chunk_cumsum_fwd(dt, A, dt_bias, chunk_size, dt_softplus, dt_limit)
    CB = ssd_bmm_fwd(C, B, chunk_size)
    states = ssd_chunk_state_fwd(x, B, dt_out, dA_cs, seg)
    S_in, final = ssd_state_passing_fwd(states, dA_cs, seg, initial_states)
    out, y_pre = ssd_chunk_scan_fwd(CB, x, z, C, S_in, dt_out, dA_cs, seg, D)
    return out, y_pre, final


def ssd_combined_bwd(dout, dfinal, x, dt, A, B, C, chunk_size, *, D, z, dt_bias, dt_softplus, dt_limit, seg,
                     initial_states, y_pre):
    """All backward stages (recomputing the forward intermediates). y_pre: the pre-gate output (= out without z),
    read only by the gate backward (never for dA: see ssd_ddA.py).

    Returns (dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dinitial_states); entries for absent inputs are None.
    """
    dt_out, dA_cs = ssd_chunk_cumsum_fwd(dt, A, dt_bias, chunk_size, dt_softplus, dt_limit)
    CB = ssd_bmm_fwd(C, B, chunk_size)
    states = ssd_chunk_state_fwd(x, B, dt_out, dA_cs, seg)
    S_in, _ = ssd_state_passing_fwd(states, dA_cs, seg, initial_states)
    if z is not None:
        dy, dz = ssd_gate_bwd(dout, z, y_pre)
    else:
        dy, dz = dout, None
    dstates = ssd_chunk_scan_bwd_dstates(dy, C, dA_cs, seg)
    ds_out, dinit, dda_last = ssd_state_passing_bwd(dstates, S_in, dA_cs, seg, dfinal)
    dx, ddt_direct, sv, dD = ssd_chunk_scan_chunk_state_bwd_dx(x, dy, D, B, CB, dA_cs, dt_out, seg, ds_out)
    inter, cross = ssd_bwd_ddA(x, dy, C, CB, S_in, dt_out, dA_cs, seg)
    dCB = ssd_bmm_bwd_dcb(x, dy, dt_out, dA_cs, seg, B.shape[2])
    dC = ssd_chunk_scan_bwd_dc(dy, S_in, dA_cs, seg, dCB, B, C.dtype)
    dB = ssd_chunk_state_bwd_db(x, C, dt_out, dA_cs, seg, ds_out, dCB, B.dtype)
    ddt, dA, ddt_bias = ssd_chunk_cumsum_bwd(dt, A, dt_bias, dt_out, inter, cross, sv, dda_last, ddt_direct,
                                             dt_softplus, dt_limit)
    return (dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dinit if initial_states is not None else None)
