"""Context parallelism (CP): one packed row split across the `cp` mesh axis; K/V all-gathered per attention layer.

Layout (load balancing for causal attention): a row of T tokens is cut into 2 * cp equal chunks and cp rank r holds
chunks r and 2cp-1-r -- an early and a late one -- so every rank has the same causal work (Llama-3 / Megatron
"zig-zag" order). Everything that is per token (input_ids, labels, position_ids, domain_ids) is sharded the same
way, so:
- RoPE positions stay global: the loader's position_ids (restarting per document) are indexed, not recomputed;
- labels stay global: they were shifted on the full row before sharding;
- the loss normalization stays global: the trainer divides every rank's summed token loss by the all-reduced count
  of valid tokens (over dp AND cp ranks), and FSDP sums gradients over the flattened (dp_shard, cp) axis.
Attention (Llama-3's all-gather CP, not a ring): each layer all-gathers this rank's K and V (one collective on a
[T/cp, 2, Hkv, Dh] tensor) with `torch.distributed._functional_collectives.all_gather_single`, whose autograd
backward is a reduce-scatter of dK/dV over the cp group. The gathered tensor is put back into global order, and
the local queries attend to it document by document: a local chunk [s, e) meets document [ds, de) as queries
[max(s, ds), min(e, de)) against keys [ds, min(e, de)) with the causal mask aligned bottom-right (the queries are
the last rows of the document prefix). Document masks and sliding windows are preserved exactly.
Unusual: our varlen op (ops.varlen_attention) only does self-attention with one cu_seqlens, so the segments run
through SDPA with a lower-right causal bias (an explicit mask only with a sliding window), or
flash_attn_varlen_func with separate q / k boundaries (CUDA fp16/bf16 with flash-attn installed: one call for all
segments). `cp_attention_ref` is the pure-PyTorch reference (fp32 masked softmax).
Memory: the gathered K/V of one layer is [T, 2, Hkv, Dh] (GQA keeps it small next to the [T/cp, D] activations).
Dense models only: Mamba layers would need their SSM state passed between cp ranks, which is not implemented.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.distributed._functional_collectives import all_gather_single, wait_tensor
from torch.nn.attention.bias import causal_lower_right

_PER_TOKEN = ("input_ids", "labels", "position_ids", "domain_ids")


def chunk_ranges(total_len: int, cp: int, cp_rank: int) -> list[tuple[int, int]]:
    """The two global [start, end) chunks held by `cp_rank`: chunk r and chunk 2cp-1-r of 2cp equal chunks."""
    if total_len % (2 * cp):
        raise ValueError(f"context parallelism cp={cp} splits each packed row into {2 * cp} equal chunks, but the "
                         f"row has {total_len} tokens; make data.seq_len x data.micro_batch_size a multiple of "
                         f"{2 * cp}")
    c = total_len // (2 * cp)
    return [(cp_rank * c, (cp_rank + 1) * c), ((2 * cp - 1 - cp_rank) * c, (2 * cp - cp_rank) * c)]


def local_positions(total_len: int, cp: int, cp_rank: int) -> torch.Tensor:
    """int64 [T / cp]: the global token indices this rank holds, in local order (early chunk, then late chunk)."""
    return torch.cat([torch.arange(s, e) for s, e in chunk_ranges(total_len, cp, cp_rank)])


def gather_order(total_len: int, cp: int) -> torch.Tensor:
    """int64 [T]: index into the all-gathered rank-major [cp * T/cp] tensor that yields global token order."""
    gathered = torch.cat([local_positions(total_len, cp, r) for r in range(cp)])      # global index per slot
    return torch.argsort(gathered)


def plan_segments(cu_seqlens: list[int], chunks: list[tuple[int, int]]) -> list[tuple[int, int, int, int]]:
    """Attention work of one rank: (q_lo, q_hi) local query rows and (k_lo, k_hi) global key rows per piece.

    Every (local chunk, document) overlap is one piece; its queries are the last q_hi - q_lo rows of the key
    range, so the causal mask is bottom-right aligned. The pieces tile [0, T/cp) in increasing order."""
    segs, offset = [], 0
    for s, e in chunks:
        for ds, de in zip(cu_seqlens[:-1], cu_seqlens[1:]):
            lo, hi = max(s, ds), min(e, de)
            if lo < hi:
                segs.append((offset + lo - s, offset + hi - s, ds, hi))
        offset += e - s
    return segs


def _segment_mask(n_q: int, n_k: int, window_left: int, device):
    """What SDPA gets for n_q queries that are the last n_q of n_k keys: without a window a lower-right causal
    bias (CausalBias: CUDA runs it in the memory-efficient kernel, no [n_q, n_k] mask is built), with one a bool
    [n_q, n_k] mask (True = attend)."""
    if window_left < 0:
        return causal_lower_right(n_q, n_k)
    i = torch.arange(n_k - n_q, n_k, device=device)[:, None]
    j = torch.arange(n_k, device=device)[None, :]
    return (j <= i) & (j >= i - window_left)


@dataclass
class CPShard:
    """One rank's view of one context-parallel forward: what Attention needs besides q, k, v.

    Built by `ContextParallel.shard` per batch; passed to the model as `model(..., cp=shard)` and stored in
    ForwardContext.cp. Holds host-side integers only plus one index tensor on the activations' device."""
    group: object                              # the cp ProcessGroup
    size: int                                  # cp
    total_len: int                             # T of the full row
    segments: list[tuple[int, int, int, int]]  # plan_segments(...)
    order: torch.Tensor                        # gather_order(T, cp), int64 [T], on the model's device

    def gather_kv(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v [T/cp, Hkv, Dh] local -> [T, Hkv, Dh] in global order, from every cp rank (autograd: backward
        reduce-scatters dK/dV)."""
        kv = torch.stack((k, v), dim=1).contiguous()                                  # [T/cp, 2, Hkv, Dh]
        full = wait_tensor(all_gather_single(kv, 0, self.group)).index_select(0, self.order)
        return full[:, 0], full[:, 1]

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, softmax_scale: float,
                  window_size=(-1, -1)) -> torch.Tensor:
        """q [T/cp, H, Dh], k / v [T/cp, Hkv, Dh] (this rank's tokens) -> out [T/cp, H, Dh], causal within each
        document over the whole row."""
        if window_size[1] not in (-1, 0):
            raise ValueError("context parallel attention is causal: a right window is not supported")
        k_full, v_full = self.gather_kv(k, v)
        if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and _flash_attn_varlen() is not None:
            return self._attention_flash(q, k_full, v_full, softmax_scale, window_size)
        return segment_attention_sdpa(q, k_full, v_full, self.segments, softmax_scale, window_size[0])

    def _attention_flash(self, q, k_full, v_full, scale, window_size):
        """All segments in one flash_attn_varlen_func call (separate q / k boundaries, bottom-right causal).
        The segments tile the local queries in order, so q needs no gather."""
        segs = self.segments
        k_idx = torch.cat([torch.arange(a, b) for _, _, a, b in segs]).to(q.device)
        cu_q = torch.tensor([0] + [b - a for a, b, _, _ in segs], device=q.device).cumsum(0).to(torch.int32)
        cu_k = torch.tensor([0] + [b - a for _, _, a, b in segs], device=q.device).cumsum(0).to(torch.int32)
        return _flash_attn_varlen()(q, k_full.index_select(0, k_idx), v_full.index_select(0, k_idx), cu_q, cu_k,
                                    max(b - a for a, b, _, _ in segs), max(b - a for _, _, a, b in segs),
                                    softmax_scale=scale, causal=True, window_size=tuple(window_size))


@functools.cache
def _flash_attn_varlen():
    """flash_attn_varlen_func, or None when flash-attn is not installed (probed once)."""
    try:
        from flash_attn import flash_attn_varlen_func  # noqa: PLC0415 (optional CUDA extension)
    except ImportError:
        return None
    return flash_attn_varlen_func


def segment_attention_sdpa(q, k_full, v_full, segments, softmax_scale: float, window_left: int = -1):
    """Local queries q [Tl, H, Dh] against the gathered keys / values [T, Hkv, Dh], one SDPA call per segment
    (plan_segments) with a bottom-right causal mask. Returns [Tl, H, Dh] in q.dtype."""
    gqa = q.shape[1] != k_full.shape[1]
    outs = []
    for qa, qb, ka, kb in segments:
        qd = q[qa:qb].transpose(0, 1).unsqueeze(0)                                    # [1, H, Lq, Dh]
        kd, vd = (x[ka:kb].transpose(0, 1).unsqueeze(0) for x in (k_full, v_full))    # [1, Hkv, Lk, Dh]
        o = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=_segment_mask(qb - qa, kb - ka, window_left, q.device),
                                           scale=softmax_scale, enable_gqa=gqa)
        outs.append(o[0].transpose(0, 1))
    return torch.cat(outs, dim=0)                                                    # segments tile [0, Tl)


def cp_attention_ref(q, k_full, v_full, positions: torch.Tensor, cu_seqlens: list[int], *, softmax_scale=None,
                     window_left: int = -1) -> torch.Tensor:
    """Pure-PyTorch reference: q [Tl, H, Dh] at global rows `positions` [Tl] against the full K/V [T, Hkv, Dh];
    query i sees key j iff same document and j <= i (and i - j <= window_left if set). fp32 softmax."""
    T, H, Dh = k_full.shape[0], q.shape[1], q.shape[2]
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(Dh)
    doc = torch.zeros(T, dtype=torch.int64)
    for b in cu_seqlens[1:-1]:
        doc[b:] += 1
    i, j = positions[:, None], torch.arange(T)[None, :]
    m = (doc[positions][:, None] == doc[None, :]) & (j <= i)
    if window_left >= 0:
        m &= j >= i - window_left
    rep = H // k_full.shape[1]
    kf = k_full.float().repeat_interleave(rep, dim=1).transpose(0, 1)                # [H, T, Dh]
    vf = v_full.float().repeat_interleave(rep, dim=1).transpose(0, 1)
    s = (q.float().transpose(0, 1) @ kf.transpose(-1, -2)) * scale                   # [H, Tl, T]
    p = torch.softmax(s.masked_fill(~m, float("-inf")), dim=-1)
    return (p @ vf).transpose(0, 1).to(q.dtype)


class ContextParallel:
    """The cp axis of the device mesh; shards packed batches for it. `cp_mesh`: the 1-D ("cp",) sub-mesh."""

    def __init__(self, cp_mesh, device: torch.device):
        self.group = cp_mesh.get_group()
        self.size = cp_mesh.size()
        self.rank = cp_mesh.get_local_rank()
        self.device = device
        self._orders: dict[int, torch.Tensor] = {}

    def shard(self, batch: dict) -> dict:
        """A packed row (trainer layout: [1, T] per-token tensors + cu_seqlens, on the host) -> this rank's
        [1, T/cp] tokens and a CPShard under "cp"; cu_seqlens is dropped (the shard carries the boundaries)."""
        T = batch["input_ids"].shape[1]
        if batch["input_ids"].shape[0] != 1:
            raise ValueError("context parallelism needs packed rows (batch size 1)")
        idx = local_positions(T, self.size, self.rank)
        cu = batch["cu_seqlens"].tolist() if "cu_seqlens" in batch else [0, T]
        out = {k: (v[:, idx] if k in _PER_TOKEN else v) for k, v in batch.items() if k != "cu_seqlens"}
        if "position_ids" not in out:                 # one document: positions are the global token indices
            out["position_ids"] = idx[None]
        if T not in self._orders:
            self._orders[T] = gather_order(T, self.size).to(self.device)
        out["cp"] = CPShard(group=self.group, size=self.size, total_len=T,
                            segments=plan_segments(cu, chunk_ranges(T, self.size, self.rank)),
                            order=self._orders[T])
        return out


def check_cp_supported(model_config, cp: int) -> None:
    """ValueError when `cp` > 1 cannot run on this model (hybrids: Mamba state is not passed between ranks)."""
    if cp > 1 and "mamba" in (model_config.layer_types or []):
        raise ValueError(f"parallel.cp={cp}: context parallelism supports dense attention models only; "
                         f"{model_config.model_type} has Mamba layers (their state would have to flow across cp "
                         f"ranks); use --parallel.cp=1")
