"""Mamba2 one-token SSM state update in Triton (selective_state_update semantics, scalar A / dt per head).

The fast path of prism_fast.ops.ssd_state_update (reference: ops/mamba_decode.py ssd_state_update_ref). One
program owns a [BLOCK_P, N] tile of one (batch, head) state: it reads the state once, updates it in place and
writes y for its BLOCK_P channels, so a decode step costs one pass over the [B, H, P, N] state (memory bound:
the torch reference makes ~8 passes through temporaries). All math is fp32 after each load (the state is
usually fp32; x / B / C / z may be bf16).
    dt = clamp(softplus?(dt + dt_bias), dt_min, dt_max); S <- exp(dt * A) * S + dt * x (outer) B
    y = S @ C + D * x; y *= silu(z)
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _ssd_state_update_kernel(
    S_ptr, X_ptr, DT_ptr, A_ptr, B_ptr, C_ptr, D_ptr, Z_ptr, DTB_ptr, Y_ptr,
    P, N, heads_per_group, dt_min, dt_max,
    S_stride_b, S_stride_h, S_stride_p, S_stride_n,
    X_stride_b, X_stride_h, X_stride_p,
    DT_stride_b, DT_stride_h,
    B_stride_b, B_stride_g, B_stride_n,
    C_stride_b, C_stride_g, C_stride_n,
    Z_stride_b, Z_stride_h, Z_stride_p,
    Y_stride_b, Y_stride_h, Y_stride_p,
    D_stride_h,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, HAS_D: tl.constexpr, D_PER_P: tl.constexpr,
    HAS_Z: tl.constexpr, HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr, HAS_DT_LIMIT: tl.constexpr,
):
    pid_p = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)          # b * stride_b of the [B, H, P, N] state cache may pass 2^31
    h = tl.program_id(2).to(tl.int64)
    g = h // heads_per_group
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mp, mn = offs_p < P, offs_n < N

    dt = tl.load(DT_ptr + b * DT_stride_b + h * DT_stride_h).to(tl.float32)
    if HAS_DT_BIAS:
        dt += tl.load(DTB_ptr + h).to(tl.float32)
    if DT_SOFTPLUS:
        # torch's softplus (threshold 20); exp(dt) for very negative dt, where log(1 + exp) rounds to 0 in fp32
        dt = tl.where(dt > 20.0, dt, tl.where(dt < -15.0, tl.exp(dt), tl.log(1.0 + tl.exp(dt))))
    if HAS_DT_LIMIT:
        dt = tl.minimum(tl.maximum(dt, dt_min), dt_max)
    decay = tl.exp(dt * tl.load(A_ptr + h).to(tl.float32))

    x = tl.load(X_ptr + b * X_stride_b + h * X_stride_h + offs_p * X_stride_p, mask=mp, other=0.0).to(tl.float32)
    Bv = tl.load(B_ptr + b * B_stride_b + g * B_stride_g + offs_n * B_stride_n, mask=mn, other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + b * C_stride_b + g * C_stride_g + offs_n * C_stride_n, mask=mn, other=0.0).to(tl.float32)
    s_ptrs = S_ptr + b * S_stride_b + h * S_stride_h + offs_p[:, None] * S_stride_p + offs_n[None, :] * S_stride_n
    m2 = mp[:, None] & mn[None, :]
    s = tl.load(s_ptrs, mask=m2, other=0.0).to(tl.float32)
    s = decay * s + (dt * x)[:, None] * Bv[None, :]
    tl.store(s_ptrs, s.to(S_ptr.dtype.element_ty), mask=m2)

    y = tl.sum(s * Cv[None, :], axis=1)
    if HAS_D:
        if D_PER_P:
            Dv = tl.load(D_ptr + h * D_stride_h + offs_p, mask=mp, other=0.0).to(tl.float32)
        else:
            Dv = tl.load(D_ptr + h * D_stride_h).to(tl.float32)
        y += x * Dv
    if HAS_Z:
        z = tl.load(Z_ptr + b * Z_stride_b + h * Z_stride_h + offs_p * Z_stride_p, mask=mp, other=0.0)
        z = z.to(tl.float32)
        y *= z / (1.0 + tl.exp(-z))
    tl.store(Y_ptr + b * Y_stride_b + h * Y_stride_h + offs_p * Y_stride_p, y.to(Y_ptr.dtype.element_ty), mask=mp)


def ssd_state_update_fwd(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                         dt_limit=(0.0, float("inf")), block_p=None):
    """Launcher: state [Bsz, H, P, N] updated in place; x [Bsz, H, P], dt [Bsz, H], A [H], B/C [Bsz, G, N],
    D [H] or [H, P], z [Bsz, H, P], dt_bias [H]. Returns y [Bsz, H, P] in x.dtype."""
    Bsz, H, P = x.shape
    G, N = B.shape[1], B.shape[2]
    A = A.contiguous()                            # [H] / [H, P] vectors are read with unit stride
    D = D.contiguous() if D is not None else None
    dt_bias = dt_bias.contiguous() if dt_bias is not None else None
    y = torch.empty_like(x)
    BLOCK_N = triton.next_power_of_2(N)
    # Keep a [BLOCK_P, BLOCK_N] fp32 tile near 4K elements (16 KiB of registers across 4 warps).
    BLOCK_P = block_p or max(1, min(triton.next_power_of_2(P), 4096 // BLOCK_N))
    lo, hi = float(dt_limit[0]), float(dt_limit[1])
    has_limit = lo > 0.0 or hi != float("inf")
    d_per_p = D is not None and D.dim() == 2
    zs = z.stride() if z is not None else (0, 0, 0)
    grid = (triton.cdiv(P, BLOCK_P), Bsz, H)
    _ssd_state_update_kernel[grid](
        state, x, dt, A, B, C, D if D is not None else x, z if z is not None else x,
        dt_bias if dt_bias is not None else A, y,
        P, N, H // G, lo, hi if hi != float("inf") else 3.0e38,
        *state.stride(), *x.stride(), *dt.stride(), *B.stride(), *C.stride(), *zs, *y.stride(),
        D.stride(0) if D is not None else 0,
        BLOCK_P=BLOCK_P, BLOCK_N=BLOCK_N, HAS_D=D is not None, D_PER_P=d_per_p, HAS_Z=z is not None,
        HAS_DT_BIAS=dt_bias is not None, DT_SOFTPLUS=bool(dt_softplus), HAS_DT_LIMIT=has_limit,
        num_warps=4,
    )
    return y
