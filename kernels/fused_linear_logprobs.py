"""Triton row kernels of the chunked fused linear log-prob / entropy (RL): forward stats and in-place dlogits.

Same split as kernels/fused_linear_cross_entropy.py (cuBLAS GEMMs per chunk in prism_fast.ops, these kernels
stream each row of the chunk), but the backward recomputes the logits: RL losses weight every token by its own
upstream gradient (advantages, masks), so dW cannot be formed before backward as in the CE mean/sum case.

Per row, with x = raw / temperature, m = running max, s = sum exp(x - m), t = sum exp(x - m) (x - m):
    lse = m + log s,  logp = x_tok - lse,  entropy = log s - t / s.
t <= 0 and s >= 1, so entropy >= 0 by construction and logp <= 0 by rounding monotonicity (x_tok <= m <= lse);
entropy is additionally clamped to log V (uniform rows can round just above it). When m grows to m', the
running terms rescale as s' = a s, t' = a (t + (m - m') s) with a = exp(m - m'). The running max starts at the
token's own logit, so m is finite from the first step (no inf - inf).
Backward (z = x): d logp/d z_j = [j == tok] - p_j,  d H/d z_j = -p_j (log p_j + H).
All loads are upcast to fp32 immediately (the CPU interpreter computes bf16 wrongly); row offsets are int64.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .fused_linear_cross_entropy import row_launch_config


@triton.jit
def _fllp_fwd_kernel(
    Logits_ptr, Logits_stride,         # [C, V] raw logits h_c @ W.T (read only)
    Tokens_ptr,                        # [C] int64, in [0, V)
    Logp_ptr, Ent_ptr, Lse_ptr,        # [C] fp32 outputs
    V, inv_temperature, log_v,
    RETURN_ENTROPY: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = Logits_ptr + row * Logits_stride
    tok = tl.load(Tokens_ptr + row)
    inv_t = tl.cast(inv_temperature, tl.float32)
    cols = tl.arange(0, BLOCK)
    x_tok = tl.load(row_ptr + tok).to(tl.float32) * inv_t
    m = x_tok
    s = tl.zeros([], dtype=tl.float32)
    t = tl.zeros([], dtype=tl.float32)
    for off in range(0, V, BLOCK):
        idx = off + cols
        mask = idx < V
        x = tl.load(row_ptr + idx, mask=mask, other=float("-inf")).to(tl.float32) * inv_t
        m_new = tl.maximum(m, tl.max(x, axis=0))
        a = tl.exp(m - m_new)
        e = tl.exp(x - m_new)
        if RETURN_ENTROPY:
            # masked lanes: e = 0 but x - m_new = -inf; zero the shift first so 0 * -inf never forms a NaN.
            t = a * (t + (m - m_new) * s) + tl.sum(e * tl.where(mask, x - m_new, 0.0), axis=0)
        s = a * s + tl.sum(e, axis=0)
        m = m_new
    log_s = tl.log(s)
    lse = m + log_s
    tl.store(Logp_ptr + row, tl.minimum(x_tok - lse, 0.0))
    tl.store(Lse_ptr + row, lse)
    if RETURN_ENTROPY:
        ent = log_s - t / s
        tl.store(Ent_ptr + row, tl.minimum(tl.maximum(ent, 0.0), tl.cast(log_v, tl.float32)))


@triton.jit
def _fllp_bwd_kernel(
    Logits_ptr, Logits_stride,         # [C, V] raw logits, overwritten by dlogits (raw units)
    Tokens_ptr, Lse_ptr, Ent_ptr,      # [C] int64, fp32, fp32 (Ent unused without HAS_ENT_GRAD)
    GLogp_ptr, GEnt_ptr,               # [C] fp32 upstream grads
    V, inv_temperature,
    HAS_ENT_GRAD: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = Logits_ptr + row * Logits_stride
    tok = tl.load(Tokens_ptr + row)
    lse = tl.load(Lse_ptr + row)
    inv_t = tl.cast(inv_temperature, tl.float32)
    g_lp = tl.load(GLogp_ptr + row)
    if HAS_ENT_GRAD:
        ent = tl.load(Ent_ptr + row)
        g_ent = tl.load(GEnt_ptr + row)
    cols = tl.arange(0, BLOCK)
    for off in range(0, V, BLOCK):
        idx = off + cols
        mask = idx < V
        logp = tl.load(row_ptr + idx, mask=mask, other=0.0).to(tl.float32) * inv_t - lse
        p = tl.exp(logp)
        d = -g_lp * p
        if HAS_ENT_GRAD:
            d -= g_ent * p * (logp + ent)
        d += tl.where(idx == tok, g_lp, 0.0)
        tl.store(row_ptr + idx, (d * inv_t).to(Logits_ptr.dtype.element_ty), mask=mask)


def fllp_fwd_chunk(logits: torch.Tensor, tokens: torch.Tensor, *, inv_temperature: float,
                   return_entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """logits [C, V] (unit stride on V), tokens [C] int64 -> (logp [C], entropy [C] or None, lse [C]), fp32."""
    assert logits.stride(1) == 1 and tokens.is_contiguous()
    c, v = logits.shape
    logp = torch.empty(c, dtype=torch.float32, device=logits.device)
    lse = torch.empty_like(logp)
    ent = torch.empty_like(logp) if return_entropy else None
    if c:
        _fllp_fwd_kernel[(c,)](logits, logits.stride(0), tokens, logp, ent if return_entropy else logp, lse, v,
                               float(inv_temperature), math.log(v), RETURN_ENTROPY=return_entropy,
                               **row_launch_config(logits.device, v))
    return logp, ent, lse


def fllp_bwd_chunk(logits: torch.Tensor, tokens: torch.Tensor, lse: torch.Tensor, ent: torch.Tensor | None,
                   g_logp: torch.Tensor, g_ent: torch.Tensor | None, *, inv_temperature: float) -> torch.Tensor:
    """Overwrite logits [C, V] with d(sum g_logp * logp + g_ent * entropy)/d raw logits; returns `logits`.

    lse, ent, g_logp, g_ent: [C] fp32 contiguous (ent and g_ent both None when no entropy gradient flows).
    """
    assert logits.stride(1) == 1
    c, v = logits.shape
    has_ent = g_ent is not None
    if c:
        _fllp_bwd_kernel[(c,)](logits, logits.stride(0), tokens, lse, ent if has_ent else lse, g_logp,
                               g_ent if has_ent else g_logp, v, float(inv_temperature), HAS_ENT_GRAD=has_ent,
                               **row_launch_config(logits.device, v))
    return logits
