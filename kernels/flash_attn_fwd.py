"""Varlen FlashAttention-2 forward in Triton (packed documents, GQA, causal / sliding window).

Shapes: q [T, H, Dh], k/v [T, Hkv, Dh], cu_seqlens int32 [n_docs + 1]; out [T, H, Dh]; lse fp32 [H, T]
(natural log, flash-attn varlen layout). Query head h reads kv head h // (H // Hkv).

What is unusual here:
- Flat work list instead of a (max_seqlen blocks x n_docs) grid. Program i finds its (document, query block)
  by binary search of the cumulative per-document block counts, which one tiny single-program kernel builds
  from cu_seqlens on the device: no host sync, one extra launch, and at most n_docs programs of the upper-bound
  grid cdiv(T, BLOCK_M) + n_docs exit at once. A (cdiv(max_seqlen, BLOCK_M), n_docs) grid would launch
  n_docs * max_blocks programs, mostly empty for an 8k pack of short documents, and needs max_seqlen on the
  host. Within a document the heaviest blocks start first (less tail): under a causal mask the last query
  blocks see the most keys, while for dK/dV the first key blocks are seen by the most queries (`last_first`).
- Causal is not a kernel variant: flash-attn semantics make causal equal to window right = 0, so the kernel
  only sees a window (left, right), with "unbounded" replaced by T on the host. Key blocks outside the
  document or window are never visited (loop bounds); the key range is split into [masked | unmasked |
  masked] so only the boundary blocks pay for the element mask.
- Loads are upcast to fp32 unless DOT_LOWP: the Triton interpreter computes bf16 arithmetic wrongly, and
  DOT_LOWP=True (GPU, fp16/bf16 inputs) feeds the tensor cores in the input dtype; softmax math is fp32 always.
- Head dims that are not powers of two (80, 96) are padded to BLOCK_D with a masked last dimension.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._dot import dot
from .configs import ATTN_FWD, pick

LOG2E = 1.4426950408889634


@triton.jit
def _load_tile(base, rows, row_ok, stride_t, offs_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
               MASK_ROWS: tl.constexpr, DOT_LOWP: tl.constexpr):
    """Load a [len(rows), BLOCK_D] tile of token-major rows; zero outside rows/head dim; fp32 unless DOT_LOWP."""
    ptrs = base + rows[:, None].to(tl.int64) * stride_t + offs_d[None, :]
    if MASK_ROWS:
        x = tl.load(ptrs, mask=row_ok[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)
    elif HEAD_DIM != BLOCK_D:
        x = tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
    else:
        x = tl.load(ptrs)
    if not DOT_LOWP:
        x = x.to(tl.float32)
    return x


@triton.jit
def _visible(rows, cols, seqlen, window_left, window_right):
    """[rows, cols] bool: key col is inside the document and the (left, right) window of query row."""
    return ((cols[None, :] < seqlen) & (rows[:, None] < seqlen)
            & (cols[None, :] >= rows[:, None] - window_left) & (cols[None, :] <= rows[:, None] + window_right))


@triton.jit
def _block_ranges(r0, r1, seqlen, window_left, window_right, BLOCK: tl.constexpr):
    """Split the keys seen by rows [r0, r1) into masked/unmasked/masked block runs.

    Returns (lo, n_pre, n_full, n_post): blocks start at lo + i * BLOCK; the first n_pre and the last n_post
    blocks need the element mask, the n_full in between are visible to every row of [r0, r1) and in bounds.
    The same function serves the key blocks of a query block and (with left/right swapped) the query blocks
    of a key block.
    """
    lo = tl.maximum(r0 - window_left, 0)
    hi = tl.minimum(r1 - 1 + window_right + 1, seqlen)
    full_lo = tl.maximum(r1 - 1 - window_left, 0)
    full_hi = tl.minimum(r0 + window_right + 1, seqlen)
    n_all = tl.maximum(tl.cdiv(hi - lo, BLOCK), 0)
    n_pre = tl.minimum(tl.cdiv(tl.maximum(full_lo - lo, 0), BLOCK), n_all)
    n_full = tl.maximum((full_hi - (lo + n_pre * BLOCK)) // BLOCK, 0)
    n_full = tl.minimum(n_full, n_all - n_pre)
    n_post = n_all - n_pre - n_full
    return lo, n_pre, n_full, n_post


@triton.jit
def _run(lo, n_pre, n_full, n_post, PHASE: tl.constexpr, BLOCK: tl.constexpr):
    """(first block start, block count) of run PHASE of _block_ranges: 0 masked, 1 unmasked, 2 masked."""
    if PHASE == 0:
        return lo, n_pre
    elif PHASE == 1:
        return lo + n_pre * BLOCK, n_full
    else:
        return lo + (n_pre + n_full) * BLOCK, n_post


@triton.jit
def _find_work(CU, CUM, item, n_docs, last_first):
    """Work item -> (doc, first token as int64, document length, block index), by binary search of the
    inclusive cumulative block counts CUM [n_docs]. doc == n_docs for the spare items past the last block.
    Within a document blocks are numbered last first when last_first != 0, else first first: the launchers
    pick the order that starts the longest programs first (see heavy_last)."""
    lo = item * 0
    hi = lo + n_docs
    while lo < hi:
        mid = (lo + hi) // 2
        right = tl.load(CUM + mid) <= item
        lo = tl.where(right, mid + 1, lo)
        hi = tl.where(right, hi, mid)
    d = tl.minimum(lo, n_docs - 1)              # keep the loads in bounds for spare items (they return)
    first_item = tl.load(CUM + d - 1, mask=d > 0, other=0)
    blk = tl.where(last_first != 0, tl.load(CUM + d) - 1 - item, item - first_item)
    start = tl.load(CU + d)
    return lo, start.to(tl.int64), tl.load(CU + d + 1) - start, blk


@triton.jit
def _doc_block_cumsum_kernel(CU, CUM, n_docs, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    """CUM[d] = sum_{e <= d} cdiv(len_e, BLOCK): one program, CHUNK documents per step with a carry."""
    carry = tl.full((), 0, tl.int32)
    for c0 in range(0, n_docs, CHUNK):
        offs = c0 + tl.arange(0, CHUNK)
        m = offs < n_docs
        lens = tl.load(CU + offs + 1, mask=m, other=0) - tl.load(CU + offs, mask=m, other=0)
        nb = (lens + BLOCK - 1) // BLOCK
        tl.store(CUM + offs, tl.cumsum(nb, 0) + carry, mask=m)
        carry += tl.sum(nb, 0)


@triton.jit
def _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, rows, offs_n, offs_d, start, n_blocks,
               seqlen, window_left, window_right, qk_scale2, MASKED: tl.constexpr, HEAD_DIM: tl.constexpr,
               BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_LOWP: tl.constexpr):
    """Online-softmax update over n_blocks key blocks from `start` (scores kept in log2 units)."""
    for b in range(0, n_blocks):
        cols = start + b * BLOCK_N + offs_n
        k = _load_tile(k_base, cols, cols < seqlen, stride_kt, offs_d, HEAD_DIM, BLOCK_D, MASKED, DOT_LOWP)
        v = _load_tile(v_base, cols, cols < seqlen, stride_vt, offs_d, HEAD_DIM, BLOCK_D, MASKED, DOT_LOWP)
        s = dot(q, tl.trans(k), DOT_LOWP) * qk_scale2                                # [BM, BN]
        if MASKED:
            s = tl.where(_visible(rows, cols, seqlen, window_left, window_right), s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            # A row may have seen no visible key yet: subtract 0 instead of -inf to avoid inf - inf = nan.
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_use = m_new
        p = tl.exp2(s - m_use[:, None])
        alpha = tl.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + dot(p.to(v.dtype), v, DOT_LOWP)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _varlen_attn_fwd_kernel(Q, K, V, O, LSE, CU, CUM,
                            stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
                            stride_ot, stride_oh, stride_lh, n_docs, qk_scale2, window_left, window_right,
                            last_first, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
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
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_tile(Q + tok0 * stride_qt + h * stride_qh, rows, rows < seqlen, stride_qt, offs_d, HEAD_DIM,
                   BLOCK_D, True, DOT_LOWP)
    k_base = K + tok0 * stride_kt + kvh * stride_kh
    v_base = V + tok0 * stride_vt + kvh * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    lo, n_pre, n_full, n_post = _block_ranges(r0, r1, seqlen, window_left, window_right, BLOCK_N)
    for phase in tl.static_range(3):
        s0, nb = _run(lo, n_pre, n_full, n_post, phase, BLOCK_N)
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, rows, offs_n, offs_d,
                                   s0, nb, seqlen, window_left, window_right, qk_scale2, phase != 1, HEAD_DIM,
                                   BLOCK_N, BLOCK_D, DOT_LOWP)
    # Rows past the document end hold garbage (l_i may be 0): they are masked on store.
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    row_ok = rows < seqlen
    o_ptrs = O + tok0 * stride_ot + h * stride_oh + rows[:, None].to(tl.int64) * stride_ot + offs_d[None, :]
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=row_ok[:, None] & (offs_d[None, :] < HEAD_DIM))
    lse = (m_i + tl.log2(l_safe)) / 1.4426950408889634
    tl.store(LSE + h * stride_lh + tok0 + rows, lse, mask=row_ok)


# ----------------------------------------------------------------------------------------------------------
# Host side (launchers). Shared with the backward module.

def doc_block_cumsum(cu_seqlens: torch.Tensor, block: int, chunk: int = 1024) -> torch.Tensor:
    """Inclusive cumulative block counts int32 [n_docs] of the documents (one tiny launch, no host sync).

    The attention kernels binary-search it to map their program id to (document, block): the grid is the
    host-known upper bound cdiv(T, block) + n_docs of sum_d cdiv(len_d, block), spare programs return at once.
    A torch version (diff, div, cumsum) would be 4+ launches per call, which is noticeable next to a ~0.3 ms
    attention kernel for an 8k pack.
    """
    n_docs = cu_seqlens.numel() - 1
    cum = torch.empty(max(n_docs, 1), device=cu_seqlens.device, dtype=torch.int32)
    chunk = min(chunk, max(triton.next_power_of_2(n_docs), 2))
    _doc_block_cumsum_kernel[(1,)](cu_seqlens, cum, n_docs, BLOCK=block, CHUNK=chunk)
    return cum


def window_bounds(causal: bool, window_size, total: int) -> tuple[int, int]:
    """flash-attn window semantics -> finite (left, right): causal forces right = 0; -1 (unbounded) -> T."""
    left, right = window_size
    if causal:
        right = 0
    left = total if left < 0 else min(left, total)
    right = total if right < 0 else min(right, total)
    return left, right


def pick_dot_lowp(dtype: torch.dtype, device: torch.device) -> bool:
    """Tensor-core dots in the input dtype on GPU; fp32 everywhere under the interpreter (bf16 bug)."""
    return device.type == "cuda" and dtype in (torch.float16, torch.bfloat16)


def heavy_last(window_left: int, window_right: int) -> int:
    """1 when the last query blocks of a document see the most keys (causal: left >= right), else 0. The dK/dV
    kernel, whose key blocks are seen by queries on the mirrored side, uses the opposite order."""
    return int(window_left >= window_right)


def fwd_config(head_dim: int, device: torch.device) -> dict:
    """Block sizes / warps / stages from kernels/configs.py (raises past head dim 256)."""
    return pick(ATTN_FWD, device, head_dim)


def varlen_attn_fwd(q, k, v, cu_seqlens, *, softmax_scale: float, causal: bool, window_size=(-1, -1),
                    block_m: int | None = None, block_n: int | None = None, config: dict | None = None):
    """Launch the forward. q [T, H, Dh], k/v [T, Hkv, Dh] (last dim contiguous). Returns (out [T,H,Dh], lse [H,T]).
    config: BLOCK_M / BLOCK_N / num_warps / num_stages instead of the table's (bench_attention.py --sweep)."""
    T, H, Dh = q.shape
    Hkv = k.shape[1]
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    out = torch.empty(q.shape, device=q.device, dtype=q.dtype)        # contiguous, as the fake impl says
    lse = torch.empty(H, T, device=q.device, dtype=torch.float32)
    if T == 0:
        return out, lse
    cfg = dict(config) if config else fwd_config(Dh, q.device)
    if block_m:
        cfg["BLOCK_M"] = block_m
    if block_n:
        cfg["BLOCK_N"] = block_n
    left, right = window_bounds(causal, window_size, T)
    n_docs = cu_seqlens.numel() - 1
    grid = (triton.cdiv(T, cfg["BLOCK_M"]) + n_docs, H)
    _varlen_attn_fwd_kernel[grid](
        q, k, v, out, lse, cu_seqlens, doc_block_cumsum(cu_seqlens, cfg["BLOCK_M"]),
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        out.stride(0), out.stride(1), lse.stride(0), n_docs, softmax_scale * LOG2E, left, right,
        heavy_last(left, right), GROUP=H // Hkv, HEAD_DIM=Dh, BLOCK_D=triton.next_power_of_2(Dh),
        DOT_LOWP=pick_dot_lowp(q.dtype, q.device), **cfg)
    return out, lse
