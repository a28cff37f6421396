"""Varlen FlashAttention-2 backward in Triton: delta preprocess, dK/dV per key block, dQ per query block.

Shapes as the forward (kernels/flash_attn_fwd.py): q/dq [T, H, Dh], k/v/dk/dv [T, Hkv, Dh], lse/delta fp32 [H, T].

What is unusual here:
- Three kernels, no atomics: delta = rowsum(dO * O); dK/dV with one program per (document key block, kv head,
  slice of HEADS of its GROUP query heads); dQ with one program per (document query block, query head).
  Recomputing QK^T and dO V^T in the dQ kernel costs 2 extra matmuls of the 7 (vs 5 with atomic dQ) but the
  result is deterministic run to run.
- GQA: a grid only Hkv wide leaves most SMs idle on short packs (8 kv heads x 16 key blocks = 128 programs for
  132 SMs), so the GROUP query heads of a kv head are split over kv_split programs (kv_split_for: the smallest
  split giving ~2 waves). With kv_split > 1 each slice writes fp32 partial dK/dV to [kv_split, T, Hkv, Dh]
  and one sum reduces them: deterministic (no atomics) at the cost of that buffer and one pass over it, which
  is why the split is only used when the grid is too small (T * Hkv * Dh * 8 bytes per extra slice).
- Key blocks start heaviest first: under a causal mask the first key blocks of a document are seen by the most
  query blocks (the opposite of the forward's order, see heavy_last).
- Same work lists and masked/unmasked block splitting as the forward; a key block only visits the query
  blocks of its own document that its window reaches (left/right swap roles).
- P is rebuilt from the saved logsumexp (log2 units in the kernel), so no per-block renormalisation.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._dot import dot
from .configs import ATTN_BWD_DKDV, ATTN_BWD_DQ, pick
from .flash_attn_fwd import (LOG2E, _block_ranges, _find_work, _load_tile, _run, _visible, doc_block_cumsum,
                             heavy_last, pick_dot_lowp, window_bounds)


@triton.jit
def _varlen_attn_bwd_preprocess_kernel(O, DO, DELTA, stride_ot, stride_oh, stride_dot, stride_doh, stride_dh,
                                       n_tokens, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """delta[h, t] = sum_d dO[t, h, d] * O[t, h, d] in fp32."""
    pid = tl.program_id(0)
    h = tl.program_id(1)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < n_tokens) & (offs_d[None, :] < HEAD_DIM)
    r64 = rows[:, None].to(tl.int64)
    o = tl.load(O + r64 * stride_ot + h * stride_oh + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + r64 * stride_dot + h * stride_doh + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(DELTA + h * stride_dh + rows, tl.sum(o * do, 1), mask=rows < n_tokens)


@triton.jit
def _dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qt, stride_dot, cols, offs_m, offs_d,
                start, n_blocks, seqlen, window_left, window_right, qk_scale2, MASKED: tl.constexpr,
                HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, DOT_LOWP: tl.constexpr):
    """Accumulate dK (unscaled) and dV of one key block over n_blocks query blocks from `start` (transposed form)."""
    for b in range(0, n_blocks):
        rows = start + b * BLOCK_M + offs_m
        row_ok = rows < seqlen
        q = _load_tile(q_base, rows, row_ok, stride_qt, offs_d, HEAD_DIM, BLOCK_D, MASKED, DOT_LOWP)
        do = _load_tile(do_base, rows, row_ok, stride_dot, offs_d, HEAD_DIM, BLOCK_D, MASKED, DOT_LOWP)
        if MASKED:
            lse2 = tl.load(lse_base + rows, mask=row_ok, other=0.0)
            delta = tl.load(delta_base + rows, mask=row_ok, other=0.0)
        else:
            lse2 = tl.load(lse_base + rows)
            delta = tl.load(delta_base + rows)
        lse2 = lse2 * 1.4426950408889634
        s_t = dot(k, tl.trans(q), DOT_LOWP) * qk_scale2                              # [BN, BM]
        p_t = tl.exp2(s_t - lse2[None, :])
        if MASKED:
            p_t = tl.where(tl.trans(_visible(rows, cols, seqlen, window_left, window_right)), p_t, 0.0)
        dv += dot(p_t.to(do.dtype), do, DOT_LOWP)
        dp_t = dot(v, tl.trans(do), DOT_LOWP)                                        # [BN, BM]
        ds_t = p_t * (dp_t - delta[None, :])
        dk += dot(ds_t.to(q.dtype), q, DOT_LOWP)
    return dk, dv


@triton.jit
def _varlen_attn_bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, CU, CUM,
                                 stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
                                 stride_dot, stride_doh, stride_dkt, stride_dkh, stride_dvt, stride_dvh, stride_lh,
                                 stride_dks, n_docs, qk_scale2, sm_scale, window_left, window_right, last_first,
                                 GROUP: tl.constexpr, HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
                                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                                 DOT_LOWP: tl.constexpr):
    """dK/dV of one key block from HEADS of the GROUP query heads of kv head `kvh`; slice `part` of the
    GROUP // HEADS slices writes at DK + part * stride_dks (stride_dks = 0 when HEADS == GROUP)."""
    item = tl.program_id(0)
    kvh = tl.program_id(1) // (GROUP // HEADS)
    part = (tl.program_id(1) % (GROUP // HEADS)).to(tl.int64)       # part * stride_dks may pass 2^31
    doc, tok0, seqlen, nblk = _find_work(CU, CUM, item, n_docs, last_first)
    if doc >= n_docs:
        return
    c0 = nblk * BLOCK_N
    c1 = tl.minimum(c0 + BLOCK_N, seqlen)
    cols = c0 + tl.arange(0, BLOCK_N)
    col_ok = cols < seqlen
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    k = _load_tile(K + tok0 * stride_kt + kvh * stride_kh, cols, col_ok, stride_kt, offs_d, HEAD_DIM, BLOCK_D,
                   True, DOT_LOWP)
    v = _load_tile(V + tok0 * stride_vt + kvh * stride_vh, cols, col_ok, stride_vt, offs_d, HEAD_DIM, BLOCK_D,
                   True, DOT_LOWP)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    # Query rows that see key j: j - right <= i <= j + left, i.e. the forward ranges with left/right swapped.
    lo, n_pre, n_full, n_post = _block_ranges(c0, c1, seqlen, window_right, window_left, BLOCK_M)
    for g in range(0, HEADS):
        h = kvh * GROUP + part * HEADS + g
        q_base = Q + tok0 * stride_qt + h * stride_qh
        do_base = DO + tok0 * stride_dot + h * stride_doh
        lse_base = LSE + h * stride_lh + tok0
        delta_base = DELTA + h * stride_lh + tok0
        for phase in tl.static_range(3):
            s0, nb = _run(lo, n_pre, n_full, n_post, phase, BLOCK_M)
            dk, dv = _dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qt, stride_dot, cols,
                                 offs_m, offs_d, s0, nb, seqlen, window_left, window_right, qk_scale2, phase != 1,
                                 HEAD_DIM, BLOCK_M, BLOCK_D, DOT_LOWP)
    mask = col_ok[:, None] & (offs_d[None, :] < HEAD_DIM)
    c64 = cols[:, None].to(tl.int64)
    tl.store(DK + part * stride_dks + tok0 * stride_dkt + kvh * stride_dkh + c64 * stride_dkt + offs_d[None, :],
             (dk * sm_scale).to(DK.dtype.element_ty), mask=mask)
    tl.store(DV + part * stride_dks + tok0 * stride_dvt + kvh * stride_dvh + c64 * stride_dvt + offs_d[None, :],
             dv.to(DV.dtype.element_ty), mask=mask)


@triton.jit
def _dq_inner(dq, q, do, lse2, delta, k_base, v_base, stride_kt, stride_vt, rows, offs_n, offs_d, start, n_blocks,
              seqlen, window_left, window_right, qk_scale2, MASKED: tl.constexpr, HEAD_DIM: tl.constexpr,
              BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_LOWP: tl.constexpr):
    """Accumulate dQ (unscaled) of one query block over n_blocks key blocks from `start`."""
    for b in range(0, n_blocks):
        cols = start + b * BLOCK_N + offs_n
        k = _load_tile(k_base, cols, cols < seqlen, stride_kt, offs_d, HEAD_DIM, BLOCK_D, MASKED, DOT_LOWP)
        v = _load_tile(v_base, cols, cols < seqlen, stride_vt, offs_d, HEAD_DIM, BLOCK_D, MASKED, DOT_LOWP)
        s = dot(q, tl.trans(k), DOT_LOWP) * qk_scale2                                # [BM, BN]
        p = tl.exp2(s - lse2[:, None])
        if MASKED:
            p = tl.where(_visible(rows, cols, seqlen, window_left, window_right), p, 0.0)
        dp = dot(do, tl.trans(v), DOT_LOWP)
        ds = p * (dp - delta[:, None])
        dq += dot(ds.to(k.dtype), k, DOT_LOWP)
    return dq


@triton.jit
def _varlen_attn_bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, CU, CUM,
                               stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
                               stride_dot, stride_doh, stride_dqt, stride_dqh, stride_lh,
                               n_docs, qk_scale2, sm_scale, window_left, window_right, last_first,
                               GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                               BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_LOWP: tl.constexpr):
    item = tl.program_id(0)
    h = tl.program_id(1)
    doc, tok0, seqlen, mblk = _find_work(CU, CUM, item, n_docs, last_first)
    if doc >= n_docs:
        return
    kvh = h // GROUP
    r0 = mblk * BLOCK_M
    r1 = tl.minimum(r0 + BLOCK_M, seqlen)
    rows = r0 + tl.arange(0, BLOCK_M)
    row_ok = rows < seqlen
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_tile(Q + tok0 * stride_qt + h * stride_qh, rows, row_ok, stride_qt, offs_d, HEAD_DIM, BLOCK_D, True,
                   DOT_LOWP)
    do = _load_tile(DO + tok0 * stride_dot + h * stride_doh, rows, row_ok, stride_dot, offs_d, HEAD_DIM, BLOCK_D,
                    True, DOT_LOWP)
    lse2 = tl.load(LSE + h * stride_lh + tok0 + rows, mask=row_ok, other=0.0) * 1.4426950408889634
    delta = tl.load(DELTA + h * stride_lh + tok0 + rows, mask=row_ok, other=0.0)
    k_base = K + tok0 * stride_kt + kvh * stride_kh
    v_base = V + tok0 * stride_vt + kvh * stride_vh
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    lo, n_pre, n_full, n_post = _block_ranges(r0, r1, seqlen, window_left, window_right, BLOCK_N)
    for phase in tl.static_range(3):
        s0, nb = _run(lo, n_pre, n_full, n_post, phase, BLOCK_N)
        dq = _dq_inner(dq, q, do, lse2, delta, k_base, v_base, stride_kt, stride_vt, rows, offs_n, offs_d, s0, nb,
                       seqlen, window_left, window_right, qk_scale2, phase != 1, HEAD_DIM, BLOCK_N, BLOCK_D,
                       DOT_LOWP)
    tl.store(DQ + tok0 * stride_dqt + h * stride_dqh + rows[:, None].to(tl.int64) * stride_dqt + offs_d[None, :],
             (dq * sm_scale).to(DQ.dtype.element_ty), mask=row_ok[:, None] & (offs_d[None, :] < HEAD_DIM))


def bwd_config(head_dim: int, device: torch.device) -> tuple[dict, dict]:
    """(dK/dV config, dQ config) from kernels/configs.py (raises past head dim 256)."""
    return pick(ATTN_BWD_DKDV, device, head_dim), pick(ATTN_BWD_DQ, device, head_dim)


def kv_split_for(group: int, n_key_blocks: int, n_kv_heads: int, n_sm: int) -> int:
    """Smallest divisor s of GROUP whose dK/dV grid (key blocks x kv heads x s) reaches ~2 waves of programs
    over n_sm SMs (0 off CUDA: no split). More slices only add partial-buffer traffic once the GPU is full."""
    target = 2 * n_sm
    for s in range(1, group + 1):
        if group % s == 0 and n_key_blocks * n_kv_heads * s >= target:
            return s
    return group


def varlen_attn_bwd(do, q, k, v, out, lse, cu_seqlens, *, softmax_scale: float, causal: bool,
                    window_size=(-1, -1), block_m: int | None = None, block_n: int | None = None,
                    kv_split: int | None = None):
    """Launch the backward. Returns (dq [T,H,Dh], dk [T,Hkv,Dh], dv [T,Hkv,Dh]) in the input dtypes.
    kv_split: programs per kv head for dK/dV (a divisor of H // Hkv; default kv_split_for)."""
    T, H, Dh = q.shape
    Hkv = k.shape[1]
    group = H // Hkv
    do, q, k, v, out = (x if x.stride(-1) == 1 else x.contiguous() for x in (do, q, k, v, out))
    dq, dk, dv = (torch.empty(x.shape, device=x.device, dtype=x.dtype) for x in (q, k, v))   # contiguous
    if T == 0:
        return dq, dk, dv
    cfg_kv, cfg_q = bwd_config(Dh, q.device)
    BLOCK_D = triton.next_power_of_2(Dh)
    delta = torch.empty_like(lse)
    pre_bm = 64 if q.device.type == "cuda" else 32
    _varlen_attn_bwd_preprocess_kernel[(triton.cdiv(T, pre_bm), H)](
        out, do, delta, out.stride(0), out.stride(1), do.stride(0), do.stride(1), delta.stride(0), T,
        HEAD_DIM=Dh, BLOCK_M=pre_bm, BLOCK_D=BLOCK_D)
    for c in (cfg_kv, cfg_q):
        if block_m:
            c["BLOCK_M"] = block_m
        if block_n:
            c["BLOCK_N"] = block_n
    left, right = window_bounds(causal, window_size, T)
    lowp = pick_dot_lowp(q.dtype, q.device)
    n_docs = cu_seqlens.numel() - 1
    common = dict(HEAD_DIM=Dh, BLOCK_D=BLOCK_D, DOT_LOWP=lowp, GROUP=group)
    n_kblk = triton.cdiv(T, cfg_kv["BLOCK_N"])
    n_sm = torch.cuda.get_device_properties(q.device).multi_processor_count if q.is_cuda else 0
    split = kv_split or kv_split_for(group, n_kblk, Hkv, n_sm)
    if group % split:
        raise ValueError(f"varlen_attn_bwd: kv_split={split} must divide the query heads per kv head ({group})")
    # split > 1: fp32 partial sums per slice of query heads, reduced below (deterministic, no atomics)
    dk_out, dv_out = (torch.empty(split, *x.shape, device=x.device, dtype=torch.float32) if split > 1 else x
                      for x in (dk, dv))
    _varlen_attn_bwd_dkdv_kernel[(n_kblk + n_docs, Hkv * split)](
        q, k, v, do, lse, delta, dk_out, dv_out, cu_seqlens, doc_block_cumsum(cu_seqlens, cfg_kv["BLOCK_N"]),
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), do.stride(0), do.stride(1),
        dk.stride(0), dk.stride(1), dv.stride(0), dv.stride(1), lse.stride(0), dk.numel() if split > 1 else 0,
        n_docs, softmax_scale * LOG2E, softmax_scale, left, right, 1 - heavy_last(left, right),
        HEADS=group // split, **common, **cfg_kv)
    if split > 1:
        dk.copy_(dk_out.sum(0))
        dv.copy_(dv_out.sum(0))
    _varlen_attn_bwd_dq_kernel[(triton.cdiv(T, cfg_q["BLOCK_M"]) + n_docs, H)](
        q, k, v, do, lse, delta, dq, cu_seqlens, doc_block_cumsum(cu_seqlens, cfg_q["BLOCK_M"]),
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), do.stride(0), do.stride(1),
        dq.stride(0), dq.stride(1), lse.stride(0),
        n_docs, softmax_scale * LOG2E, softmax_scale, left, right, heavy_last(left, right), **common, **cfg_q)
    return dq, dk, dv
