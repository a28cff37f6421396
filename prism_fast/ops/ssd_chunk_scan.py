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

import torch
import torch.nn.functional as F

from prism_fast.ops._dispatch import resolve

_VALID = ("torch", "triton", "mamba_ssm")


def _prep_dt(dt, dt_bias, dt_softplus, dt_limit):
    dt = dt.float()
    if dt_bias is not None:
        dt = dt + dt_bias.float()
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


def ssd_chunk_scan(x, dt, A, B, C, chunk_size=256, *, D=None, z=None, dt_bias=None, dt_softplus=False,
                   dt_limit=(0.0, float("inf")), seq_idx=None, initial_states=None, return_final_states=False,
                   backend="auto"):
    """Chunked SSD scan (see module docstring). Returns y [B, T, H, P] (and final states if asked)."""
    if x.shape[2] % B.shape[2]:
        raise ValueError(f"ssd_chunk_scan: heads ({x.shape[2]}) must be a multiple of groups ({B.shape[2]})")
    b = resolve("ssd_chunk_scan", backend, _VALID, ["torch"])
    if b == "torch":
        return ssd_scan_naive(x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus,
                              dt_limit=dt_limit, seq_idx=seq_idx, initial_states=initial_states,
                              return_final_states=return_final_states)
    raise RuntimeError(f"ssd_chunk_scan: backend {b!r} is not available in this build")
