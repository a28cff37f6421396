"""SSD stage: chunk output (forward) and the output-side gradients (backward).

Forward, per (b, chunk, head) and a tile of rows i x head-dim p:
    y_i = exp(Acum_i) [seg_i == seg_prev] (C_i @ S_in^T)                 carried-in state (inter-chunk)
        + sum_{j <= i, seg_j == seg_i} CB_ij exp(Acum_i - Acum_j) dt_j x_j  (intra-chunk)
        + D x_i;   out = y * silu(z) (y, the pre-gate value, is also stored when z is given: backward needs it)
Backward kernels here:
    _ssd_gate_bwd_kernel         dY = dout * silu(z), dz (only when z is given)
    _ssd_chunk_scan_bwd_dstates  dstates_c = sum_i exp(Acum_i) [seg_i == seg_prev] dY_i (outer) C_i
    _ssd_chunk_scan_bwd_dc       dC = sum_h exp(Acum_i) [..] dY_i @ S_in_h + sum_{j <= i} dCB_ij B_j
(dx, the direct part of ddt and dD: ssd_combined.py; the gradient of dA: ssd_ddA.py, which never reads y.)
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._ssd_common import block, carried_in_scale, dot_mode, launch_opts, mm, program_ids, rows_times_state


@triton.jit
def _ssd_chunk_scan_fwd_kernel(
    CB_ptr, X_ptr, Z_ptr, C_ptr, S_IN_ptr, DT_OUT_ptr, DA_CS_ptr, SEG_ptr, D_ptr, OUT_ptr, YPRE_ptr,
    T, H, G, P, N, nc,
    X_stride_b, X_stride_t, X_stride_h, X_stride_p,
    Z_stride_b, Z_stride_t, Z_stride_h, Z_stride_p,
    C_stride_b, C_stride_t, C_stride_g, C_stride_n,
    O_stride_b, O_stride_t, O_stride_h, O_stride_p,
    L: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    HAS_SEQ: tl.constexpr, HAS_D: tl.constexpr, D_HAS_HDIM: tl.constexpr, HAS_Z: tl.constexpr,
    DOT_MODE: tl.constexpr,
):
    pid_t, pid_bc, pid_h = program_ids()
    pid_b, pid_c = pid_bc // nc, pid_bc % nc
    n_tiles_n = tl.cdiv(P, BLOCK_N)
    pid_m, pid_n = pid_t // n_tiles_n, pid_t % n_tiles_n
    g = pid_h // (H // G)
    offs_i = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_p = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    ti = pid_c * L + offs_i
    cs_base = ((pid_b * H + pid_h) * nc + pid_c) * L
    a_i, scale_i, seg_i = carried_in_scale(DA_CS_ptr, cs_base, SEG_ptr + pid_b * nc * L, pid_c, offs_i, L, HAS_SEQ)
    # Carried-in state: (C_i @ S_in^T) scaled by exp(Acum_i).
    c_base = C_ptr + pid_b * C_stride_b + g * C_stride_g
    s_base = S_IN_ptr + (pid_bc * H + pid_h) * P * N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, N, BLOCK_K):
        kk = k + offs_k
        c = tl.load(c_base + ti[:, None] * C_stride_t + kk[None, :] * C_stride_n,
                    mask=(ti < T)[:, None] & (kk < N)[None, :], other=0.0).to(tl.float32)
        s = tl.load(s_base + offs_p[None, :] * N + kk[:, None],
                    mask=(offs_p < P)[None, :] & (kk < N)[:, None], other=0.0)
        acc += mm(c, s, DOT_MODE)
    acc *= scale_i[:, None]
    # Intra-chunk: only columns j <= i (tiles up to this row block).
    cb_base = CB_ptr + (pid_bc * G + g) * L * L
    x_base = X_ptr + pid_b * X_stride_b + pid_h * X_stride_h
    hi = tl.minimum((pid_m + 1) * BLOCK_M, L)
    for j0 in range(0, hi, BLOCK_K):
        jj = j0 + offs_k
        tj = pid_c * L + jj
        cb = tl.load(cb_base + offs_i[:, None] * L + jj[None, :],
                     mask=(offs_i < L)[:, None] & (jj < L)[None, :], other=0.0)
        a_j = tl.load(DA_CS_ptr + cs_base + jj, mask=jj < L, other=0.0)
        dt_j = tl.load(DT_OUT_ptr + cs_base + jj, mask=jj < L, other=0.0)
        m = (jj[None, :] <= offs_i[:, None]) & (jj < L)[None, :]
        if HAS_SEQ:
            seg_j = tl.load(SEG_ptr + pid_b * nc * L + tj, mask=jj < L, other=-2)
            m &= seg_i[:, None] == seg_j[None, :]
        w = tl.where(m, cb * tl.exp(tl.minimum(a_i[:, None] - a_j[None, :], 0.0)) * dt_j[None, :], 0.0)
        x = tl.load(x_base + tj[:, None] * X_stride_t + offs_p[None, :] * X_stride_p,
                    mask=(tj < T)[:, None] & (offs_p < P)[None, :], other=0.0).to(tl.float32)
        acc += mm(w, x, DOT_MODE)
    omask = (ti < T)[:, None] & (offs_p < P)[None, :]
    if HAS_D:
        x_i = tl.load(x_base + ti[:, None] * X_stride_t + offs_p[None, :] * X_stride_p,
                      mask=omask, other=0.0).to(tl.float32)
        if D_HAS_HDIM:
            d = tl.load(D_ptr + pid_h * P + offs_p, mask=offs_p < P, other=0.0).to(tl.float32)
            acc += x_i * d[None, :]
        else:
            acc += x_i * tl.load(D_ptr + pid_h).to(tl.float32)
    o_off = pid_b * O_stride_b + ti[:, None] * O_stride_t + pid_h * O_stride_h + offs_p[None, :] * O_stride_p
    if HAS_Z:
        tl.store(YPRE_ptr + o_off, acc, mask=omask)
        z = tl.load(Z_ptr + pid_b * Z_stride_b + ti[:, None] * Z_stride_t + pid_h * Z_stride_h
                    + offs_p[None, :] * Z_stride_p, mask=omask, other=0.0).to(tl.float32)
        acc *= z * tl.sigmoid(z)
    tl.store(OUT_ptr + o_off, acc, mask=omask)


@triton.jit
def _ssd_gate_bwd_kernel(
    DOUT_ptr, Z_ptr, YPRE_ptr, DY_ptr, DZ_ptr,
    T, P,
    DO_stride_b, DO_stride_t, DO_stride_h, DO_stride_p,
    Z_stride_b, Z_stride_t, Z_stride_h, Z_stride_p,
    Y_stride_b, Y_stride_t, Y_stride_h, Y_stride_p,
    BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr,
):
    pid_t, pid_b, pid_h = program_ids()
    t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    p = tl.arange(0, BLOCK_P)
    m = (t < T)[:, None] & (p < P)[None, :]
    do = tl.load(DOUT_ptr + pid_b * DO_stride_b + t[:, None] * DO_stride_t + pid_h * DO_stride_h
                 + p[None, :] * DO_stride_p, mask=m, other=0.0).to(tl.float32)
    z = tl.load(Z_ptr + pid_b * Z_stride_b + t[:, None] * Z_stride_t + pid_h * Z_stride_h
                + p[None, :] * Z_stride_p, mask=m, other=0.0).to(tl.float32)
    y_off = pid_b * Y_stride_b + t[:, None] * Y_stride_t + pid_h * Y_stride_h + p[None, :] * Y_stride_p
    y = tl.load(YPRE_ptr + y_off, mask=m, other=0.0).to(tl.float32)
    sig = tl.sigmoid(z)
    tl.store(DY_ptr + y_off, do * z * sig, mask=m)
    tl.store(DZ_ptr + y_off, do * y * sig * (1.0 + z * (1.0 - sig)), mask=m)


@triton.jit
def _ssd_chunk_scan_bwd_dstates_kernel(
    DY_ptr, C_ptr, DA_CS_ptr, SEG_ptr, DSTATES_ptr,
    T, H, G, P, N, nc,
    DY_stride_b, DY_stride_t, DY_stride_h, DY_stride_p,
    C_stride_b, C_stride_t, C_stride_g, C_stride_n,
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
    if HAS_SEQ:
        seg_prev = tl.load(SEG_ptr + pid_b * nc * L + pid_c * L - 1, mask=pid_c > 0, other=0)
    dy_base = DY_ptr + pid_b * DY_stride_b + pid_h * DY_stride_h
    c_base = C_ptr + pid_b * C_stride_b + g * C_stride_g
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, L, BLOCK_K):
        kk = k + offs_k
        t = pid_c * L + kk
        dyt = tl.load(dy_base + offs_p[:, None] * DY_stride_p + t[None, :] * DY_stride_t,
                      mask=(offs_p < P)[:, None] & (t < T)[None, :], other=0.0).to(tl.float32)
        c = tl.load(c_base + t[:, None] * C_stride_t + offs_n[None, :] * C_stride_n,
                    mask=(t < T)[:, None] & (offs_n < N)[None, :], other=0.0).to(tl.float32)
        scale = tl.exp(tl.load(DA_CS_ptr + cs_base + kk, mask=kk < L, other=0.0))
        if HAS_SEQ:
            seg = tl.load(SEG_ptr + pid_b * nc * L + t, mask=kk < L, other=-1)
            scale = tl.where(seg == seg_prev, scale, 0.0)
        acc += mm(dyt, c * scale[:, None], DOT_MODE)
    out = DSTATES_ptr + ((pid_bc * H + pid_h) * P + offs_p[:, None]) * N + offs_n[None, :]
    tl.store(out, acc, mask=(offs_p < P)[:, None] & (offs_n < N)[None, :])


@triton.jit
def _ssd_chunk_scan_bwd_dc_kernel(
    DY_ptr, S_IN_ptr, DA_CS_ptr, SEG_ptr, DCB_ptr, B_ptr, DC_ptr,
    T, H, G, P, N, nc,
    DY_stride_b, DY_stride_t, DY_stride_h, DY_stride_p,
    B_stride_b, B_stride_t, B_stride_g, B_stride_n,
    DC_stride_b, DC_stride_t, DC_stride_g, DC_stride_n,
    L: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    HAS_SEQ: tl.constexpr, DOT_MODE: tl.constexpr,
):
    pid_t, pid_bc, pid_g = program_ids()
    pid_b, pid_c = pid_bc // nc, pid_bc % nc
    n_tiles_n = tl.cdiv(N, BLOCK_N)
    pid_m, pid_n = pid_t // n_tiles_n, pid_t % n_tiles_n
    R = H // G
    offs_i = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    ti = pid_c * L + offs_i
    smask = offs_i < L
    if HAS_SEQ:
        seg_i = tl.load(SEG_ptr + pid_b * nc * L + ti, mask=offs_i < L, other=-1)
        seg_prev = tl.load(SEG_ptr + pid_b * nc * L + pid_c * L - 1, mask=pid_c > 0, other=0)
        smask &= seg_i == seg_prev
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for r in range(0, R):
        h = pid_g * R + r
        a_i = tl.load(DA_CS_ptr + ((pid_b * H + h) * nc + pid_c) * L + offs_i, mask=offs_i < L, other=0.0)
        scale = tl.where(smask, tl.exp(a_i), 0.0)
        part = rows_times_state(DY_ptr + pid_b * DY_stride_b + h * DY_stride_h, DY_stride_t, DY_stride_p, ti, T,
                                S_IN_ptr + (pid_bc * H + h) * P * N, P, N, offs_n, BLOCK_K, DOT_MODE)
        acc += part * scale[:, None]
    dcb_base = DCB_ptr + (pid_bc * G + pid_g) * L * L
    b_base = B_ptr + pid_b * B_stride_b + pid_g * B_stride_g
    hi = tl.minimum((pid_m + 1) * BLOCK_M, L)
    for j0 in range(0, hi, BLOCK_K):
        jj = j0 + offs_k
        tj = pid_c * L + jj
        dcb = tl.load(dcb_base + offs_i[:, None] * L + jj[None, :],
                      mask=(offs_i < L)[:, None] & (jj < L)[None, :], other=0.0)
        dcb = tl.where(jj[None, :] <= offs_i[:, None], dcb, 0.0)
        b = tl.load(b_base + tj[:, None] * B_stride_t + offs_n[None, :] * B_stride_n,
                    mask=(tj < T)[:, None] & (offs_n < N)[None, :], other=0.0).to(tl.float32)
        acc += mm(dcb, b, DOT_MODE)
    out = DC_ptr + pid_b * DC_stride_b + ti[:, None] * DC_stride_t + pid_g * DC_stride_g + offs_n[None, :] * DC_stride_n
    tl.store(out, acc, mask=(ti < T)[:, None] & (offs_n < N)[None, :])


def ssd_chunk_scan_fwd(CB, x, z, C, S_in, dt_out, dA_cs, seg, D):
    """Returns (out [B, T, H, P] in x.dtype, y_pre (pre-gate output; None without z))."""
    Bsz, T, H, P = x.shape
    G, N = C.shape[2], C.shape[3]
    nc, L = dt_out.shape[2], dt_out.shape[3]
    out = torch.empty(Bsz, T, H, P, device=x.device, dtype=x.dtype)
    y_pre = torch.empty_like(out) if z is not None else None
    bm, bn = block(L), block(P)
    grid = (triton.cdiv(L, bm) * triton.cdiv(P, bn), Bsz * nc, H)
    _ssd_chunk_scan_fwd_kernel[grid](
        CB, x, z if z is not None else x, C, S_in, dt_out, dA_cs, seg if seg is not None else dt_out,
        D if D is not None else dt_out, out, y_pre if y_pre is not None else out,
        T, H, G, P, N, nc, *x.stride(), *(z if z is not None else x).stride(), *C.stride(), *out.stride(),
        L=L, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=block(max(N, L)), HAS_SEQ=seg is not None,
        HAS_D=D is not None, D_HAS_HDIM=D is not None and D.dim() == 2, HAS_Z=z is not None,
        DOT_MODE=dot_mode(x.dtype), **launch_opts(CB))
    return out, y_pre


def ssd_gate_bwd(dout, z, y_pre):
    """Returns (dY, dz), both [B, T, H, P] contiguous in dout.dtype."""
    Bsz, T, H, P = dout.shape
    dy = torch.empty(Bsz, T, H, P, device=dout.device, dtype=dout.dtype)
    dz = torch.empty_like(dy)
    bp = triton.next_power_of_2(P)
    bt = max(1, min(64, 4096 // bp))
    _ssd_gate_bwd_kernel[(triton.cdiv(T, bt), Bsz, H)](
        dout, z, y_pre, dy, dz, T, P, *dout.stride(), *z.stride(), *y_pre.stride(),
        BLOCK_T=bt, BLOCK_P=bp, **launch_opts(dout))
    return dy, dz


def ssd_chunk_scan_bwd_dstates(dy, C, dA_cs, seg):
    """dY [B, T, H, P] -> dstates [B, nc, H, P, N] fp32 (gradient of each chunk's carried-in state)."""
    Bsz, T, H, P = dy.shape
    G, N = C.shape[2], C.shape[3]
    nc, L = dA_cs.shape[2], dA_cs.shape[3]
    dstates = torch.empty(Bsz, nc, H, P, N, device=dy.device, dtype=torch.float32)
    bm, bn = block(P), block(N)
    grid = (triton.cdiv(P, bm) * triton.cdiv(N, bn), Bsz * nc, H)
    _ssd_chunk_scan_bwd_dstates_kernel[grid](
        dy, C, dA_cs, seg if seg is not None else dA_cs, dstates, T, H, G, P, N, nc, *dy.stride(), *C.stride(),
        L=L, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=block(L), HAS_SEQ=seg is not None,
        DOT_MODE=dot_mode(dy.dtype), **launch_opts(dy))
    return dstates


def ssd_chunk_scan_bwd_dc(dy, S_in, dA_cs, seg, dCB, B, dtype):
    """Returns dC [B, T, G, N] in `dtype`."""
    Bsz, T, H, P = dy.shape
    G, N = B.shape[2], B.shape[3]
    nc, L = dA_cs.shape[2], dA_cs.shape[3]
    dC = torch.empty(Bsz, T, G, N, device=dy.device, dtype=dtype)
    bm, bn = block(L), block(N)
    grid = (triton.cdiv(L, bm) * triton.cdiv(N, bn), Bsz * nc, G)
    _ssd_chunk_scan_bwd_dc_kernel[grid](
        dy, S_in, dA_cs, seg if seg is not None else dA_cs, dCB, B, dC, T, H, G, P, N, nc,
        *dy.stride(), *B.stride(), *dC.stride(),
        L=L, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=block(max(P, L)), HAS_SEQ=seg is not None,
        DOT_MODE=dot_mode(dy.dtype), **launch_opts(dy))
    return dC
