"""Triton row kernel of the chunked fused linear cross-entropy: loss, logsumexp and (optionally) dlogits in place.

Design (why not one FlashAttention-like kernel): prism_fast.ops computes one chunk of logits [C, V] = h_c @ W.T
with cuBLAS, then calls `flce_chunk` on it. Per row, this kernel streams the V logits twice: pass 1 keeps a running
max / sum-exp (online softmax) and reads the target logit; pass 2, only when gradients are wanted, overwrites the
logits with dloss/dlogits. The LM head's three GEMMs (h @ W.T, dlogits @ W, dlogits.T @ h) stay on cuBLAS, which
runs them near peak; a fully fused matmul + online-softmax kernel would have to recompute the logits in backward
(4 GEMMs instead of 3) and reduce dW across row blocks with atomics, and it cannot be tuned on a machine without a
GPU. What this kernel adds on top of the unfused GEMMs is 2 reads + 1 write of the bf16 chunk (memory-bound).

Unusual points:
  * the running max starts at the target logit (a member of the row) instead of -inf, so the first rescale
    factor exp(m_old - m_new) is finite and no -inf - -inf NaN can appear;
  * row offsets are int64: one chunk may exceed 2^31 elements (16k rows x 128k vocab);
  * the upstream gradient is read from memory (`G_ptr`, stride 0 for a scalar such as 1/n_valid), so the mean
    reduction needs no host sync;
  * everything is upcast to fp32 right after tl.load (the CPU interpreter computes bf16 arithmetic wrongly).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .configs import LOSS_ROWS, pick


def row_launch_config(device: torch.device, v: int) -> dict:
    """V tile (BLOCK, capped at next_pow2(V)), num_warps and num_stages of the row kernels for this device
    (kernels/configs.py LOSS_ROWS; shared with fused_linear_logprobs.py)."""
    cfg = pick(LOSS_ROWS, device, v)
    cfg["BLOCK"] = min(cfg["BLOCK"], triton.next_power_of_2(v))
    return cfg


@triton.jit
def _flce_chunk_kernel(
    Logits_ptr, Logits_stride,         # [C, V] raw logits of the chunk (h_c @ W.T), overwritten by dlogits
    Labels_ptr,                        # [C] int64
    Loss_ptr, Lse_ptr,                 # [C] fp32 outputs (0 at ignored rows)
    G_ptr, G_stride,                   # upstream grad per row (stride 0: one scalar for all rows)
    V, ignore_index, logit_scale, z_loss,
    HAS_GRAD: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = Logits_ptr + row * Logits_stride
    label = tl.load(Labels_ptr + row)
    scale = tl.cast(logit_scale, tl.float32)
    zl = tl.cast(z_loss, tl.float32)
    cols = tl.arange(0, BLOCK)
    if label == ignore_index:
        tl.store(Loss_ptr + row, 0.0)
        tl.store(Lse_ptr + row, 0.0)
        if HAS_GRAD:
            # The whole chunk feeds the two gradient GEMMs: an ignored row must contribute zeros.
            for off in range(0, V, BLOCK):
                idx = off + cols
                tl.store(row_ptr + idx, tl.zeros([BLOCK], dtype=tl.float32).to(Logits_ptr.dtype.element_ty),
                         mask=idx < V)
        return
    tgt = tl.load(row_ptr + label).to(tl.float32) * scale
    m = tgt
    s = tl.zeros([], dtype=tl.float32)
    for off in range(0, V, BLOCK):
        idx = off + cols
        x = tl.load(row_ptr + idx, mask=idx < V, other=float("-inf")).to(tl.float32) * scale
        m_new = tl.maximum(m, tl.max(x, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new
    lse = m + tl.log(s)
    tl.store(Loss_ptr + row, lse - tgt + zl * lse * lse)
    tl.store(Lse_ptr + row, lse)
    if HAS_GRAD:
        g = tl.load(G_ptr + row * G_stride).to(tl.float32)
        # d(lse - x_t + z lse^2)/dx_j = p_j (1 + 2 z lse) - [j == t]; times d x / d raw = logit_scale.
        coef = (1.0 + 2.0 * zl * lse) * g * scale
        for off in range(0, V, BLOCK):
            idx = off + cols
            mask = idx < V
            x = tl.load(row_ptr + idx, mask=mask, other=0.0).to(tl.float32) * scale
            d = tl.exp(x - lse) * coef - tl.where(idx == label, g * scale, 0.0)
            tl.store(row_ptr + idx, d.to(Logits_ptr.dtype.element_ty), mask=mask)


def flce_chunk(logits: torch.Tensor, labels: torch.Tensor, grad: torch.Tensor | None, *, ignore_index: int,
               logit_scale: float, z_loss: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row CE of one chunk; with `grad`, overwrite `logits` with dloss/dlogits (raw, pre-scale units).

    logits: [C, V] fp32/fp16/bf16, unit stride along V. labels: [C] int64.
    grad: None, a 1-element fp32 tensor (same weight for every row) or [C] fp32 (per-row upstream gradient).
    Returns (loss [C] fp32, lse [C] fp32), both 0 at ignored rows.
    """
    assert logits.stride(1) == 1 and labels.is_contiguous()
    c, v = logits.shape
    loss = torch.empty(c, dtype=torch.float32, device=logits.device)
    lse = torch.empty_like(loss)
    if c == 0:
        return loss, lse
    has_grad = grad is not None
    g = grad if has_grad else loss            # dummy pointer when HAS_GRAD is False
    g_stride = 0 if (not has_grad or grad.numel() == 1) else grad.stride(0)
    # Grid on axis 0 (limit 2^31 - 1); the caller bounds C by its chunk size anyway.
    _flce_chunk_kernel[(c,)](logits, logits.stride(0), labels, loss, lse, g, g_stride, v, ignore_index,
                             float(logit_scale), float(z_loss), HAS_GRAD=has_grad,
                             **row_launch_config(logits.device, v))
    return loss, lse
