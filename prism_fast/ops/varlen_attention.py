"""Packed-sequence (varlen) attention with flash_attn_varlen_func semantics.

Shapes (T = total tokens of the pack, H query heads, Hkv key/value heads, Dh head dim):
    q [T, H, Dh], k [T, Hkv, Dh], v [T, Hkv, Dh], cu_seqlens int32 [n_docs + 1] (0 = cu[0] < ... < cu[-1] = T).
Attention never crosses documents. GQA: query head h reads kv head h // (H // Hkv).
window_size = (left, right) as in flash-attn: query i sees key j iff i - left <= j <= i + right (-1 = unbounded);
causal=True additionally requires j <= i. Positions are relative to the document start.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from prism_fast.ops._dispatch import resolve

_VALID = ("torch", "triton", "flash_attn")


def _window_mask(Tq: int, Tk: int, causal: bool, window_size, device) -> torch.Tensor | None:
    """Boolean [Tq, Tk] mask (True = attend) for one document, or None when everything is visible."""
    left, right = window_size
    if not causal and left < 0 and right < 0:
        return None
    i = torch.arange(Tq, device=device)[:, None]
    j = torch.arange(Tk, device=device)[None, :]
    m = torch.ones(Tq, Tk, dtype=torch.bool, device=device)
    if causal:
        m &= j <= i
    if left >= 0:
        m &= j >= i - left
    if right >= 0:
        m &= j <= i + right
    return m


def varlen_attention_ref(q, k, v, cu_seqlens, max_seqlen=None, *, causal=True, softmax_scale=None,
                         window_size=(-1, -1)):
    """Pure-PyTorch reference: explicit softmax in fp32, one document at a time. Returns [T, H, Dh] in q.dtype."""
    T, H, Dh = q.shape
    Hkv = k.shape[1]
    if H % Hkv:
        raise ValueError(f"varlen_attention: query heads ({H}) must be a multiple of kv heads ({Hkv})")
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(Dh)
    out = torch.empty_like(q)
    bounds = cu_seqlens.tolist()
    rep = H // Hkv
    for s, e in zip(bounds[:-1], bounds[1:]):
        qd = q[s:e].float().transpose(0, 1)                                       # [H, L, Dh]
        kd = k[s:e].float().transpose(0, 1).repeat_interleave(rep, dim=0)         # [H, L, Dh]
        vd = v[s:e].float().transpose(0, 1).repeat_interleave(rep, dim=0)
        scores = (qd @ kd.transpose(-1, -2)) * scale                              # [H, L, L]
        m = _window_mask(e - s, e - s, causal, window_size, q.device)
        if m is not None:
            scores = scores.masked_fill(~m, float("-inf"))
        p = torch.softmax(scores, dim=-1)
        p = torch.nan_to_num(p, nan=0.0)  # rows with no visible key (impossible when causal) -> zero output
        out[s:e] = (p @ vd).transpose(0, 1).to(q.dtype)
    return out


def _varlen_attention_torch(q, k, v, cu_seqlens, causal, softmax_scale, window_size):
    """CPU default: SDPA per document (one host sync to read cu_seqlens)."""
    T, H, Dh = q.shape
    Hkv = k.shape[1]
    rep = H // Hkv
    outs = []
    bounds = cu_seqlens.tolist()
    for s, e in zip(bounds[:-1], bounds[1:]):
        qd = q[s:e].transpose(0, 1)
        kd = k[s:e].transpose(0, 1)
        vd = v[s:e].transpose(0, 1)
        if rep > 1:
            kd = kd.repeat_interleave(rep, dim=0)
            vd = vd.repeat_interleave(rep, dim=0)
        left, right = window_size
        if left < 0 and right < 0:
            o = F.scaled_dot_product_attention(qd, kd, vd, is_causal=causal, scale=softmax_scale)
        else:
            m = _window_mask(e - s, e - s, causal, window_size, q.device)
            o = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=m, scale=softmax_scale)
        outs.append(o.transpose(0, 1))
    return torch.cat(outs, dim=0) if outs else q.new_empty(q.shape)


def varlen_attention(q, k, v, cu_seqlens, max_seqlen=None, *, causal=True, softmax_scale=None,
                     window_size=(-1, -1), backend="auto"):
    """Attention over a pack of documents (see module docstring for shapes and masking). Returns [T, H, Dh]."""
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"varlen_attention: query heads ({q.shape[1]}) must be a multiple of kv heads "
                         f"({k.shape[1]})")
    b = resolve("varlen_attention", backend, _VALID, ["torch"])
    if b == "torch":
        return _varlen_attention_torch(q, k, v, cu_seqlens, causal, softmax_scale, tuple(window_size))
    raise RuntimeError(f"varlen_attention: backend {b!r} is not available in this build")
