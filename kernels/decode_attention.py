"""Decode attention in Triton: one query token per sequence against a KV cache (split-K "flash-decoding").

Shapes: q [B, H, Dh]; contiguous cache k/v [B, S, Hkv, Dh]; or paged cache k/v [num_pages, page_size, Hkv, Dh]
with block_table int32 [B, max_blocks] (key j of sequence b lives in page block_table[b, j // page_size], slot
j % page_size, as vLLM / flash_attn_with_kvcache). cache_seqlens [B] counts valid keys INCLUDING the new token;
the query sits at position cache_seqlens - 1 and sees keys max(0, L - 1 - left) <= j < L.

What is unusual here:
- One program per (split, sequence, kv head) handles all GROUP = H / Hkv query heads of that kv head at once
  (a [BLOCK_H, Dh] query tile, BLOCK_H >= 16 for tl.dot), so each K/V byte is read once per kv head, not once
  per query head: decode is memory bound and GQA 32/8 cuts its traffic 4x this way.
- The visible key range is split into num_splits chunks (fixed on the host from the cache capacity and the
  window, no host sync on cache_seqlens); each writes a normalised partial output and its log2-sum-exp, and a
  second kernel merges them. Chunks past a sequence's length write lse = -inf and are ignored by the merge.
- Only the visible range is visited (window and length are loop bounds), so keys are masked only at the end.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._dot import dot
from .configs import DECODE, pick

LOG2E = 1.4426950408889634


@triton.jit
def _decode_attn_fwd_kernel(Q, K, V, SEQLENS, BT, PO, PLSE,
                            stride_qb, stride_qh, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
                            stride_btb, stride_pob, stride_poh, stride_pos, stride_plb, stride_plh,
                            qk_scale2, window_left, split_size,
                            GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr,
                            BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PAGED: tl.constexpr,
                            PAGE_SIZE: tl.constexpr, DOT_LOWP: tl.constexpr):
    split = tl.program_id(0)
    b = tl.program_id(1)
    kvh = tl.program_id(2)
    L = tl.load(SEQLENS + b).to(tl.int32)
    lo = tl.maximum(L - 1 - window_left, 0) + split * split_size
    hi = tl.minimum(lo + split_size, L)
    offs_g = tl.arange(0, BLOCK_H)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    g_ok = offs_g < GROUP
    d_ok = offs_d < HEAD_DIM
    heads = kvh * GROUP + offs_g
    q = tl.load(Q + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :], mask=g_ok[:, None] & d_ok[None, :],
                other=0.0)
    if not DOT_LOWP:
        q = q.to(tl.float32)
    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        cols = start + offs_n
        c_ok = cols < hi
        if PAGED:
            page = tl.load(BT + b * stride_btb + cols // PAGE_SIZE, mask=c_ok, other=0).to(tl.int64)
            k_row = page * stride_kb + (cols % PAGE_SIZE) * stride_ks
            v_row = page * stride_vb + (cols % PAGE_SIZE) * stride_vs
        else:
            k_row = b.to(tl.int64) * stride_kb + cols.to(tl.int64) * stride_ks
            v_row = b.to(tl.int64) * stride_vb + cols.to(tl.int64) * stride_vs
        kv_mask = c_ok[:, None] & d_ok[None, :]
        k = tl.load(K + k_row[:, None] + kvh * stride_kh + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(V + v_row[:, None] + kvh * stride_vh + offs_d[None, :], mask=kv_mask, other=0.0)
        if not DOT_LOWP:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = dot(q, tl.trans(k), DOT_LOWP) * qk_scale2                                # [BLOCK_H, BLOCK_N]
        s = tl.where(c_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])       # every tile has >= 1 valid key, so m_new is finite
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + dot(p.to(v.dtype), v, DOT_LOWP)
        m_i = m_new
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    o = acc / l_safe[:, None]
    lse2 = tl.where(l_i == 0.0, float("-inf"), m_i + tl.log2(l_safe))
    tl.store(PO + b * stride_pob + heads[:, None] * stride_poh + split * stride_pos + offs_d[None, :], o,
             mask=g_ok[:, None] & d_ok[None, :])
    tl.store(PLSE + b * stride_plb + heads * stride_plh + split, lse2, mask=g_ok)


@triton.jit
def _decode_attn_combine_kernel(PO, PLSE, O, n_splits, stride_pob, stride_poh, stride_pos, stride_plb,
                                stride_plh, stride_ob, stride_oh,
                                HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    """out[b, h] = sum_s w_s * po[b, h, s] with w_s = softmax over splits of their log2-sum-exp."""
    b = tl.program_id(0)
    h = tl.program_id(1)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_ok = offs_s < n_splits
    lse2 = tl.load(PLSE + b * stride_plb + h * stride_plh + offs_s, mask=s_ok, other=float("-inf"))
    m = tl.max(lse2, 0)
    m = tl.where(m == float("-inf"), 0.0, m)     # no key at all (cache_seqlens == 0): output zeros
    w = tl.exp2(lse2 - m)
    po = tl.load(PO + b * stride_pob + h * stride_poh + offs_s[:, None] * stride_pos + offs_d[None, :],
                 mask=s_ok[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)
    den = tl.sum(w, 0)
    den = tl.where(den == 0.0, 1.0, den)
    o = tl.sum(w[:, None] * po, 0) / den
    tl.store(O + b * stride_ob + h * stride_oh + offs_d, o.to(O.dtype.element_ty), mask=offs_d < HEAD_DIM)


def decode_config(device: torch.device, head_dim: int = 128) -> dict:
    """Key tile / warps / stages from kernels/configs.py (memory-bound loop; raises past head dim 256)."""
    return pick(DECODE, device, head_dim)


def decode_attn_fwd(q, k_cache, v_cache, cache_seqlens, *, softmax_scale: float, window_left: int = -1,
                    block_table=None, num_splits: int | None = None, block_n: int | None = None):
    """Launch split-K decode attention. See module docstring for shapes. Returns [B, H, Dh] in q.dtype."""
    B, H, Dh = q.shape
    Hkv = k_cache.shape[2]
    group = H // Hkv
    q = q if q.stride(-1) == 1 else q.contiguous()
    k_cache = k_cache if k_cache.stride(-1) == 1 else k_cache.contiguous()
    v_cache = v_cache if v_cache.stride(-1) == 1 else v_cache.contiguous()
    paged = block_table is not None
    page_size = k_cache.shape[1] if paged else 1
    capacity = block_table.shape[1] * page_size if paged else k_cache.shape[1]
    visible = capacity if window_left < 0 else min(capacity, window_left + 1)
    left = capacity if window_left < 0 else window_left
    cfg = decode_config(q.device, Dh)
    if block_n:
        cfg["BLOCK_N"] = block_n
    bn = cfg["BLOCK_N"]
    n_tiles = max(triton.cdiv(visible, bn), 1)
    if num_splits is None:
        if q.device.type == "cuda":
            # ~2 waves of programs over the SMs; a split never holds fewer than 4 tiles of keys.
            sms = torch.cuda.get_device_properties(q.device).multi_processor_count
            num_splits = min(triton.cdiv(2 * sms, B * Hkv), triton.cdiv(n_tiles, 4))
        else:
            num_splits = min(4, n_tiles)
    num_splits = max(1, min(num_splits, n_tiles))
    split_size = triton.cdiv(n_tiles, num_splits) * bn
    num_splits = triton.cdiv(visible, split_size)
    po = torch.empty(B, H, num_splits, Dh, device=q.device, dtype=torch.float32)
    plse = torch.empty(B, H, num_splits, device=q.device, dtype=torch.float32)
    bt = block_table if paged else cache_seqlens  # any int tensor: unused when PAGED=False
    BLOCK_D = triton.next_power_of_2(Dh)
    _decode_attn_fwd_kernel[(num_splits, B, Hkv)](
        q, k_cache, v_cache, cache_seqlens, bt, po, plse,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), bt.stride(0),
        po.stride(0), po.stride(1), po.stride(2), plse.stride(0), plse.stride(1),
        softmax_scale * LOG2E, left, split_size,
        GROUP=group, HEAD_DIM=Dh, BLOCK_H=max(16, triton.next_power_of_2(group)), BLOCK_D=BLOCK_D, PAGED=paged,
        PAGE_SIZE=page_size, DOT_LOWP=(q.device.type == "cuda" and q.dtype in (torch.float16, torch.bfloat16)
                                         and k_cache.dtype == q.dtype),
        **cfg)
    out = torch.empty_like(q)
    _decode_attn_combine_kernel[(B, H)](
        po, plse, out, num_splits, po.stride(0), po.stride(1), po.stride(2), plse.stride(0), plse.stride(1),
        out.stride(0), out.stride(1), HEAD_DIM=Dh, BLOCK_S=max(triton.next_power_of_2(num_splits), 2),
        BLOCK_D=BLOCK_D)
    return out
