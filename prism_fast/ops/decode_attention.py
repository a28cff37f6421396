"""Decode attention: one new query token per sequence against a contiguous KV cache with per-sequence lengths.

Shapes: q [B, H, Dh] (the newest token of each sequence), k_cache / v_cache [B, S, Hkv, Dh] (S = cache capacity),
cache_seqlens int32/int64 [B]: number of valid cache entries per sequence INCLUDING the new token (whose k/v the
caller already wrote at index cache_seqlens - 1). The query sits at position cache_seqlens - 1 and sees keys
j < cache_seqlens (causal), restricted to j >= cache_seqlens - 1 - left when window_size = (left, right), left >= 0
(flash-attn's flash_attn_with_kvcache semantics). GQA: query head h reads kv head h // (H // Hkv).
The torch backend reads only the first max(cache_seqlens) cache rows (one host sync). The "triton" backend is a
split-K kernel (kernels/decode_attention.py, no host sync). Paged cache: pass block_table int32 [B, max_blocks] and
k_cache / v_cache [num_pages, page_size, Hkv, Dh]; key j of sequence b is at page block_table[b, j // page_size].
"""
from __future__ import annotations

import math
from typing import Optional  # torch 2.6's custom_op schema inference predates `X | None`

import torch

from prism_fast.kernels.configs import HEAD_DIM_MAX
from prism_fast.ops._dispatch import resolve, triton_usable

_VALID = ("torch", "triton")
# Probed at import, not inside torch.compile'd code (dynamo warns about tracing through the lru_cache).
_TRITON_CUDA, _TRITON_CPU = triton_usable("cuda"), triton_usable("cpu")


def _check(q, k_cache, v_cache, cache_seqlens):
    B, H, Dh = q.shape
    if k_cache.shape != v_cache.shape or k_cache.shape[0] != B or k_cache.shape[-1] != Dh:
        raise ValueError(f"decode_attention: k_cache {tuple(k_cache.shape)} / v_cache {tuple(v_cache.shape)} must be "
                         f"[B={B}, S, Hkv, Dh={Dh}]")
    if H % k_cache.shape[2]:
        raise ValueError(f"decode_attention: query heads ({H}) must be a multiple of kv heads ({k_cache.shape[2]})")
    if cache_seqlens.shape != (B,):
        raise ValueError(f"decode_attention: cache_seqlens must have shape [{B}], got {tuple(cache_seqlens.shape)}")


def _gather_pages(cache, block_table):
    """Paged [num_pages, page_size, Hkv, Dh] -> contiguous [B, max_blocks * page_size, Hkv, Dh] (torch paths)."""
    if block_table is None:
        return cache
    return cache[block_table.long()].flatten(1, 2)


def decode_attention_ref(q, k_cache, v_cache, cache_seqlens, *, softmax_scale=None, window_size=(-1, -1),
                         block_table=None):
    """Pure-PyTorch reference: explicit fp32 softmax over the whole cache with a length/window mask. [B, H, Dh]."""
    k_cache, v_cache = _gather_pages(k_cache, block_table), _gather_pages(v_cache, block_table)
    _check(q, k_cache, v_cache, cache_seqlens)
    B, H, Dh = q.shape
    S, Hkv = k_cache.shape[1], k_cache.shape[2]
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(Dh)
    k = k_cache.float().repeat_interleave(H // Hkv, dim=2)                       # [B, S, H, Dh]
    v = v_cache.float().repeat_interleave(H // Hkv, dim=2)
    scores = torch.einsum("bhd,bshd->bhs", q.float(), k) * scale                  # [B, H, S]
    j = torch.arange(S, device=q.device)[None, :]
    last = cache_seqlens.long()[:, None] - 1                                       # query position [B, 1]
    visible = j <= last
    if window_size[0] >= 0:
        visible &= j >= last - window_size[0]
    scores = scores.masked_fill(~visible[:, None, :], float("-inf"))
    p = torch.softmax(scores, dim=-1)
    return torch.einsum("bhs,bshd->bhd", p, v).to(q.dtype)


def _decode_attention_torch(q, k_cache, v_cache, cache_seqlens, softmax_scale, window_size):
    """CPU default: SDPA over the first max(cache_seqlens) rows with a boolean mask. GQA without copying the cache:
    the H // Hkv query heads sharing a kv head become that head's "query rows" ([B, Hkv, H/Hkv, Dh])."""
    B, H, Dh = q.shape
    Hkv = k_cache.shape[2]
    S = int(cache_seqlens.max())                                                   # host sync
    k = k_cache[:, :S].transpose(1, 2)                                             # [B, Hkv, S, Dh] (view)
    v = v_cache[:, :S].transpose(1, 2)
    j = torch.arange(S, device=q.device)[None, :]
    last = cache_seqlens.long()[:, None] - 1
    visible = j <= last
    if window_size[0] >= 0:
        visible &= j >= last - window_size[0]
    out = torch.nn.functional.scaled_dot_product_attention(
        q.view(B, Hkv, H // Hkv, Dh), k, v, attn_mask=visible[:, None, None, :], scale=softmax_scale)
    return out.reshape(B, H, Dh)


@torch.library.custom_op("prism::decode_attention", mutates_args=())
def _decode_attention_triton(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                             cache_seqlens: torch.Tensor, softmax_scale: float, window_left: int,
                             block_table: Optional[torch.Tensor]) -> torch.Tensor:
    """Triton split-K kernel as a custom op (inference only: no autograd), so torch.compile keeps one node."""
    from prism_fast.kernels.decode_attention import decode_attn_fwd
    return decode_attn_fwd(q, k_cache, v_cache, cache_seqlens, softmax_scale=softmax_scale,
                           window_left=window_left, block_table=block_table)


@_decode_attention_triton.register_fake
def _(q, k_cache, v_cache, cache_seqlens, softmax_scale, window_left, block_table):
    return q.new_empty(q.shape)


def decode_attention(q, k_cache, v_cache, cache_seqlens, *, softmax_scale=None, window_size=(-1, -1),
                     block_table=None, backend="auto"):
    """One-token attention against the KV cache (see module docstring). Returns [B, H, Dh] in q.dtype."""
    b = resolve("decode_attention", backend, _VALID, ["triton", "torch"] if q.is_cuda else ["torch"])
    if b == "triton":
        if block_table is None:
            _check(q, k_cache, v_cache, cache_seqlens)
        if not (_TRITON_CUDA if q.is_cuda else _TRITON_CPU):
            raise RuntimeError("decode_attention: backend 'triton' needs a CUDA device (or TRITON_INTERPRET=1)")
        if q.shape[-1] > HEAD_DIM_MAX:
            raise ValueError(f"decode_attention: backend 'triton' supports head dims <= {HEAD_DIM_MAX}, got "
                             f"{q.shape[-1]}; use backend='torch'")
        scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
        return _decode_attention_triton(q, k_cache, v_cache, cache_seqlens, float(scale), int(window_size[0]),
                                        block_table)
    k_cache, v_cache = _gather_pages(k_cache, block_table), _gather_pages(v_cache, block_table)
    _check(q, k_cache, v_cache, cache_seqlens)
    if b == "torch":
        return _decode_attention_torch(q, k_cache, v_cache, cache_seqlens, softmax_scale, tuple(window_size))
    raise RuntimeError(f"decode_attention: backend {b!r} is not available in this build")
