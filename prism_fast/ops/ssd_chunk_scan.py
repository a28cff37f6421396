"""Mamba2 SSD scan with mamba_chunk_scan_combined semantics.

Shapes (B batch, T time, H heads, P head dim, G groups (H % G == 0), N state size):
    x [B, T, H, P], dt [B, T, H], A [H] (negative), B [B, T, G, N], C [B, T, G, N]
    D [H] or [H, P] (skip), z [B, T, H, P] (gate: y *= silu(z)), dt_bias [H]
    seq_idx [B, T] int (document id per token; the state is reset where it changes)
    initial_states [B, H, P, N]; final states [B, H, P, N] returned with return_final_states=True.
Recurrence per head h (group g = h // (H // G)):
    dt_t = clamp(softplus?(dt_t + dt_bias), *dt_limit)
    S_t = exp(dt_t * A_h) * S_{t-1} + dt_t * x_t (outer) B_t          S: [P, N]
    y_t = S_t @ C_t + D_h * x_t
A document start (seq_idx[t] != seq_idx[t-1]) uses S_{t-1} = 0; initial_states apply to the first document only.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from prism_fast.ops._dispatch import resolve, triton_usable

_VALID = ("torch", "triton", "mamba_ssm")


def _prep_dt(dt, dt_bias, dt_softplus, dt_limit, dtype=torch.float32):
    dt = dt.to(dtype)
    if dt_bias is not None:
        dt = dt + dt_bias.to(dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    lo, hi = dt_limit
    if lo > 0.0 or hi != float("inf"):
        dt = dt.clamp(min=lo, max=hi)
    return dt


def ssd_scan_naive(x, dt, A, B, C, *, D=None, z=None, dt_bias=None, dt_softplus=False,
                   dt_limit=(0.0, float("inf")), seq_idx=None, initial_states=None, return_final_states=False):
    """Sequential recurrence in fp32, one time step at a time. The ground truth for tests; O(T) Python steps."""
    Bsz, T, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    rep = H // G
    dt = _prep_dt(dt, dt_bias, dt_softplus, dt_limit)                     # [B, T, H]
    Bh = B.float().repeat_interleave(rep, dim=2)                            # [B, T, H, N]
    Ch = C.float().repeat_interleave(rep, dim=2)
    xf = x.float()
    S = (initial_states.float().clone() if initial_states is not None
         else x.new_zeros(Bsz, H, P, N, dtype=torch.float32))
    ys = []
    for t in range(T):
        decay = torch.exp(dt[:, t] * A.float())                             # [B, H]
        if seq_idx is not None and t > 0:
            same = (seq_idx[:, t] == seq_idx[:, t - 1]).float()             # [B]
            decay = decay * same[:, None]
        S = decay[:, :, None, None] * S + (dt[:, t, :, None, None] * xf[:, t, :, :, None]
                                           * Bh[:, t, :, None, :])
        y = (S * Ch[:, t, :, None, :]).sum(-1)                              # [B, H, P]
        ys.append(y)
    y = torch.stack(ys, dim=1) if ys else xf.new_zeros(Bsz, 0, H, P)        # [B, T, H, P]
    if D is not None:
        Df = D.float()
        y = y + xf * (Df[:, None] if Df.dim() == 1 else Df)
    if z is not None:
        y = y * F.silu(z.float())
    y = y.to(x.dtype)
    if return_final_states:
        return y, S
    return y


def _segments(seq_idx, T_pad):
    """Monotone segment ids [B, T_pad] int32 from seq_idx [B, T]: 0 at t=0, +1 at every change of seq_idx.

    Why: the kernels (like mamba's) compare ids by equality within a chunk and at chunk ends, which is only a
    reset-at-change rule when ids never repeat later; renumbering makes any seq_idx (even [0,0,1,1,0]) safe.
    Padded positions repeat the last id so the padded tail belongs to the last document.
    """
    change = torch.zeros_like(seq_idx, dtype=torch.int32)
    change[:, 1:] = (seq_idx[:, 1:] != seq_idx[:, :-1]).to(torch.int32)
    seg = change.cumsum(1, dtype=torch.int32)
    if T_pad > seg.shape[1]:
        seg = torch.cat([seg, seg[:, -1:].expand(-1, T_pad - seg.shape[1])], dim=1)
    return seg.contiguous()


def _segsum(dA):
    """dA [..., L] -> [..., L, L] with entry (i, j) = sum_{j < k <= i} dA_k (-inf above the diagonal).

    Why not Acum_i - Acum_j: that difference of two large cumulative sums loses the small decay between nearby
    positions, and autograd through it gives each dA_k the cancelling sum of + and - terms of every pair. A
    masked cumsum of the repeated row (mamba's ssd_minimal `segsum`) sums only the dA_k inside (j, i], so the
    forward and the gradient only see the pairs that actually cross k.
    """
    L = dA.shape[-1]
    strict = torch.ones(L, L, dtype=torch.bool, device=dA.device).tril(-1)
    rep = dA[..., :, None].expand(*dA.shape, L).masked_fill(~strict, 0.0)     # [..., k, j] = dA_k [j < k]
    seg = rep.cumsum(dim=-2)                                                   # [..., i, j]
    return seg.masked_fill(~strict.logical_or(torch.eye(L, dtype=torch.bool, device=dA.device)), float("-inf"))


def ssd_chunk_scan_ref(x, dt, A, B, C, chunk_size=256, *, D=None, z=None, dt_bias=None, dt_softplus=False,
                       dt_limit=(0.0, float("inf")), seq_idx=None, initial_states=None,
                       return_final_states=False, compute_dtype=torch.float32):
    """Chunked SSD in pure PyTorch (mamba's ssd_minimal algorithm + seq_idx, D, z, dt processing, states).

    Computed in `compute_dtype` (fp32, result in x.dtype; float64 returns float64, for the precision tests);
    differentiable by autograd (the gradient reference for the Triton backend), with stable dA / dt gradients
    (see _segsum). Per chunk of
    L = chunk_size steps (T is zero-padded to a multiple of L with dt = 0, which leaves the state unchanged):
      Acum = cumsum(dt * A) within the chunk                                         [B, H, nc, L]
      intra:  y_i += sum_{j<=i, seg_j == seg_i} (C_i . B_j) exp(Acum_i - Acum_j) dt_j x_j
      chunk state: s_c = sum_{j, seg_j == seg_last} exp(Acum_last - Acum_j) dt_j x_j (outer) B_j   [B, nc, H, P, N]
      passing: S_in[c+1] = exp(Acum_last) [seg_last == seg_prev] S_in[c] + s_c,   S_in[0] = initial_states
      inter:  y_i += exp(Acum_i) [seg_i == seg_prev] S_in[c] @ C_i
    where seg are monotone document ids (see _segments) and seg_prev is the id of the token before the chunk.
    Memory: O(B H T L) for the intra-chunk decay matrix.
    """
    Bsz, T, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    R, L = H // G, chunk_size
    nc = max(1, -(-T // L))
    pad = nc * L - T
    cd = compute_dtype
    dtp = _prep_dt(dt, dt_bias, dt_softplus, dt_limit, cd)                      # [B, T, H]
    xf, Bf, Cf = x.to(cd), B.to(cd), C.to(cd)
    if pad:
        xf, Bf, Cf = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (xf, Bf, Cf))
        dtp = F.pad(dtp, (0, 0, 0, pad))
    xc = xf.reshape(Bsz, nc, L, G, R, P)
    Bc, Cc = Bf.reshape(Bsz, nc, L, G, N), Cf.reshape(Bsz, nc, L, G, N)
    dtc = dtp.reshape(Bsz, nc, L, G, R).permute(0, 3, 4, 1, 2)                  # [B, G, R, nc, L]
    dA = dtc * A.to(cd).reshape(G, R)[None, :, :, None, None]                  # [B, G, R, nc, L]
    Acum = torch.cumsum(dA, dim=-1)
    causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
    if seq_idx is not None:
        seg = _segments(seq_idx, nc * L).reshape(Bsz, nc, L)
        prev = torch.zeros(Bsz, nc, dtype=seg.dtype, device=x.device)
        prev[:, 1:] = seg[:, :-1, -1]
        mask = causal & (seg[:, :, :, None] == seg[:, :, None, :])             # [B, nc, L, L]
        emask = (seg == seg[:, :, -1:]).to(cd)[:, None, None]                  # [B, 1, 1, nc, L]
        smask = (seg == prev[:, :, None]).to(cd)[:, None, None]
        gmask = (seg[:, :, -1] == prev).to(cd)[:, None, None]                  # [B, 1, 1, nc]
        mask = mask[:, None, None]
    else:
        mask, emask, smask, gmask = causal, 1.0, 1.0, 1.0
    seg_sum = _segsum(dA).masked_fill(~mask, float("-inf"))                     # [B, G, R, nc, L, L]
    decay = torch.exp(seg_sum)
    CB = torch.einsum("bclgn,bcsgn->bgcls", Cc, Bc)                             # [B, G, nc, L, L]
    # Explicit pairwise products: a 4-operand einsum may contract in an order that builds huge intermediates.
    M = CB[:, :, None] * decay * dtc[..., None, :]                              # [B, G, R, nc, L, L]
    y = torch.einsum("bgrcls,bcsgrp->bclgrp", M, xc)
    decay_states = torch.exp(seg_sum[..., -1, :]) * emask * dtc   # row L-1: decay to the chunk end
    states = torch.einsum("bclgn,bgrcl,bclgrp->bcgrpn", Bc, decay_states, xc)   # [B, nc, G, R, P, N]
    S = (initial_states.to(cd).reshape(Bsz, G, R, P, N) if initial_states is not None
         else xf.new_zeros(Bsz, G, R, P, N))
    chunk_decay = torch.exp(Acum[..., -1]) * gmask                              # [B, G, R, nc]
    s_in = []
    for c in range(nc):
        s_in.append(S)
        S = chunk_decay[..., c, None, None] * S + states[:, c]
    S_in = torch.stack(s_in, dim=1)                                             # [B, nc, G, R, P, N]
    y = y + torch.einsum("bclgn,bcgrpn,bgrcl->bclgrp", Cc, S_in, torch.exp(Acum) * smask)
    y = y.reshape(Bsz, nc * L, H, P)[:, :T]
    if D is not None:
        Df = D.to(cd)
        y = y + xf[:, :T] * (Df[:, None] if Df.dim() == 1 else Df)
    if z is not None:
        y = y * F.silu(z.to(cd))
    y = y.to(x.dtype if cd == torch.float32 else cd)
    if return_final_states:
        return y, S.reshape(Bsz, H, P, N)
    return y


# Triton backend as torch custom ops (forward and backward): torch.compile sees opaque nodes with shape-only fake
# implementations and an autograd formula instead of tracing the launch pipeline. The forward saves only the
# inputs and, with z, the pre-gate output; the backward recomputes dt, dA_cumsum, CB and the chunk states
# (kernels/ssd_combined.py). Absent optional results travel as empty tensors (custom ops cannot return None).

@torch.library.custom_op("prism::ssd_chunk_scan_fwd", mutates_args=())
def _ssd_fwd_op(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                D: Optional[torch.Tensor], z: Optional[torch.Tensor], dt_bias: Optional[torch.Tensor],
                initial_states: Optional[torch.Tensor], seg: Optional[torch.Tensor], chunk_size: int,
                dt_softplus: bool, dt_min: float, dt_max: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (out [B, T, H, P], y_pre (pre-gate output; empty without z), final_states [B, H, P, N] fp32)."""
    from prism_fast.kernels.ssd_combined import ssd_combined_fwd
    out, y_pre, final = ssd_combined_fwd(x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias,
                                         dt_softplus=dt_softplus, dt_limit=(dt_min, dt_max), seg=seg,
                                         initial_states=initial_states)
    return out, (y_pre if y_pre is not None else x.new_empty(0)), final


@_ssd_fwd_op.register_fake
def _(x, dt, A, B, C, D, z, dt_bias, initial_states, seg, chunk_size, dt_softplus, dt_min, dt_max):
    Bsz, T, H, P = x.shape
    return (x.new_empty(x.shape), x.new_empty(x.shape if z is not None else (0,)),
            x.new_empty((Bsz, H, P, B.shape[3]), dtype=torch.float32))


@torch.library.custom_op("prism::ssd_chunk_scan_bwd", mutates_args=())
def _ssd_bwd_op(dout: torch.Tensor, dfinal: Optional[torch.Tensor], x: torch.Tensor, dt: torch.Tensor,
                A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: Optional[torch.Tensor],
                z: Optional[torch.Tensor], dt_bias: Optional[torch.Tensor], initial_states: Optional[torch.Tensor],
                seg: Optional[torch.Tensor], y_pre: torch.Tensor, chunk_size: int, dt_softplus: bool, dt_min: float,
                dt_max: float) -> list[torch.Tensor]:
    """Returns [dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dinitial_states] (empty where the input is absent)."""
    from prism_fast.kernels.ssd_combined import ssd_combined_bwd
    grads = ssd_combined_bwd(dout, dfinal, x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias,
                             dt_softplus=dt_softplus, dt_limit=(dt_min, dt_max), seg=seg,
                             initial_states=initial_states, y_pre=y_pre)
    refs = (x, dt, A, B, C, D, z, dt_bias, initial_states)
    return [x.new_empty(0) if g is None else g.to(r.dtype) for g, r in zip(grads, refs)]


@_ssd_bwd_op.register_fake
def _(dout, dfinal, x, dt, A, B, C, D, z, dt_bias, initial_states, seg, y_pre, chunk_size, dt_softplus, dt_min,
      dt_max):
    return [t.new_empty(t.shape) if t is not None else x.new_empty(0)
            for t in (x, dt, A, B, C, D, z, dt_bias, initial_states)]


def _ssd_setup_context(ctx, inputs, output):
    x, dt, A, B, C, D, z, dt_bias, initial_states, seg, chunk_size, dt_softplus, dt_min, dt_max = inputs
    out, y_pre, _ = output
    # y_pre (empty without z) is read only by the gate backward, never for dA (kernels/ssd_ddA.py)
    ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, initial_states, seg, y_pre)
    ctx.cfg = (chunk_size, dt_softplus, dt_min, dt_max)


def _ssd_backward(ctx, dout, dy_pre, dfinal):
    x, dt, A, B, C, D, z, dt_bias, initial_states, seg, y_pre = ctx.saved_tensors
    if dout is None:                       # only the final state was used
        dout = torch.zeros_like(x)
    grads = _ssd_bwd_op(dout.contiguous(), dfinal, x, dt, A, B, C, D, z, dt_bias, initial_states, seg, y_pre,
                        *ctx.cfg)
    present = (x, dt, A, B, C, D, z, dt_bias, initial_states)
    return (*[g if t is not None else None for g, t in zip(grads, present)], None, None, None, None, None)


_ssd_fwd_op.register_autograd(_ssd_backward, setup_context=_ssd_setup_context)


def _check(x, dt, A, B, C, chunk_size, D, z, initial_states, seq_idx):
    Bsz, T, H, P = x.shape
    if B.shape != C.shape or B.shape[:2] != (Bsz, T) or H % B.shape[2]:
        raise ValueError(f"ssd_chunk_scan: B/C must be [B, T, G, N] with H % G == 0; got x {tuple(x.shape)}, "
                         f"B {tuple(B.shape)}, C {tuple(C.shape)}")
    if dt.shape != (Bsz, T, H) or A.shape != (H,):
        raise ValueError(f"ssd_chunk_scan: dt must be [B, T, H] and A [H]; got {tuple(dt.shape)}, {tuple(A.shape)}")
    if chunk_size < 16 or chunk_size & (chunk_size - 1):
        raise ValueError(f"ssd_chunk_scan: chunk_size must be a power of two >= 16 (mamba uses 64-256), "
                         f"got {chunk_size}")
    if D is not None and D.shape not in ((H,), (H, P)):
        raise ValueError(f"ssd_chunk_scan: D must be [H] or [H, P], got {tuple(D.shape)}")
    if z is not None and z.shape != x.shape:
        raise ValueError(f"ssd_chunk_scan: z must have x's shape {tuple(x.shape)}, got {tuple(z.shape)}")
    if initial_states is not None and initial_states.shape != (Bsz, H, P, B.shape[3]):
        raise ValueError(f"ssd_chunk_scan: initial_states must be [B, H, P, N] = {(Bsz, H, P, B.shape[3])}")
    if seq_idx is not None and seq_idx.shape != (Bsz, T):
        raise ValueError(f"ssd_chunk_scan: seq_idx must be [B, T] = {(Bsz, T)}, got {tuple(seq_idx.shape)}")


def _ssd_mamba_ssm(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, dt_limit, seq_idx, initial_states,
                   return_final_states):
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except ImportError as e:  # pragma: no cover - GPU extra
        raise RuntimeError("ssd_chunk_scan: backend 'mamba_ssm' needs `pip install mamba-ssm "
                           "--no-build-isolation`") from e
    if seq_idx is not None:  # mamba requires monotone int32 ids; renumbering keeps our reset-at-change rule
        seq_idx = _segments(seq_idx, seq_idx.shape[1])
    return mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias,
                                     dt_softplus=dt_softplus, dt_limit=dt_limit, seq_idx=seq_idx,
                                     initial_states=initial_states, return_final_states=return_final_states)


def ssd_chunk_scan(x, dt, A, B, C, chunk_size=256, *, D=None, z=None, dt_bias=None, dt_softplus=False,
                   dt_limit=(0.0, float("inf")), seq_idx=None, initial_states=None, return_final_states=False,
                   backend="auto"):
    """Chunked SSD scan (see module docstring). Returns y [B, T, H, P] in x.dtype (and final states [B, H, P, N]
    fp32 with return_final_states=True).

    backend: "torch" (ssd_chunk_scan_ref, CPU default), "triton" (kernels/ssd_*.py; CUDA default, or CPU under
    TRITON_INTERPRET=1), "mamba_ssm" (mamba_chunk_scan_combined, when installed), or "auto".
    """
    _check(x, dt, A, B, C, chunk_size, D, z, initial_states, seq_idx)
    auto = ["triton", "torch"] if x.is_cuda and triton_usable("cuda") else ["torch"]
    b = resolve("ssd_chunk_scan", backend, _VALID, auto)
    kw = dict(D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus, dt_limit=dt_limit, seq_idx=seq_idx,
              initial_states=initial_states, return_final_states=return_final_states)
    if b == "torch":
        return ssd_chunk_scan_ref(x, dt, A, B, C, chunk_size, **kw)
    if b == "mamba_ssm":
        return _ssd_mamba_ssm(x, dt, A, B, C, chunk_size, **kw)
    if not triton_usable(x.device.type):
        raise RuntimeError("ssd_chunk_scan: backend 'triton' needs a CUDA tensor (or TRITON_INTERPRET=1 on CPU)")
    if x.shape[1] == 0:
        return ssd_chunk_scan_ref(x, dt, A, B, C, chunk_size, **kw)
    seg = _segments(seq_idx, -(-x.shape[1] // chunk_size) * chunk_size) if seq_idx is not None else None
    contig = lambda t: t.contiguous() if t is not None else None  # noqa: E731  (small parameter tensors)
    out, _, final = _ssd_fwd_op(x, dt, A.contiguous(), B, C, contig(D), z, contig(dt_bias), contig(initial_states),
                                seg, chunk_size, bool(dt_softplus), float(dt_limit[0]), float(dt_limit[1]))
    return (out, final) if return_final_states else out
