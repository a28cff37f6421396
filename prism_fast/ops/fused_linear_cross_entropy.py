"""Fused LM-head matmul + cross-entropy. Never materializes the [N, V] logits beyond one chunk (fast backends).

hidden [N, D], weight [V, D], labels [N] (int64, ignore_index marks tokens without loss).
logits = (hidden @ weight.T) * logit_scale; loss_i = logsumexp(logits_i) - logits_i[label_i]
        + z_loss * logsumexp(logits_i)^2.
reduction: "mean" (over non-ignored tokens), "sum", or "none" ([N], zeros at ignored positions).
return_per_token=True additionally returns the per-token losses [N] (detached), for per-domain logging.
"""
from __future__ import annotations

import torch

from prism_fast.ops._dispatch import resolve

_VALID = ("torch", "triton", "liger")


def fused_linear_cross_entropy_ref(hidden, weight, labels, *, ignore_index=-100, reduction="mean",
                                   logit_scale=1.0, z_loss=0.0, return_per_token=False):
    """Unchunked pure-PyTorch reference (materializes all logits in fp32)."""
    logits = (hidden.float() @ weight.float().t()) * logit_scale                      # [N, V]
    valid = labels != ignore_index
    lse = torch.logsumexp(logits, dim=-1)                                             # [N]
    tgt = logits.gather(1, labels.clamp(min=0).unsqueeze(1)).squeeze(1)
    per_tok = (lse - tgt) + z_loss * lse.square()
    per_tok = torch.where(valid, per_tok, torch.zeros_like(per_tok))
    if reduction == "mean":
        loss = per_tok.sum() / valid.sum().clamp(min=1)
    elif reduction == "sum":
        loss = per_tok.sum()
    elif reduction == "none":
        loss = per_tok
    else:
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if return_per_token:
        return loss, per_tok.detach()
    return loss


def fused_linear_cross_entropy(hidden, weight, labels, *, ignore_index=-100, reduction="mean",
                               logit_scale=1.0, z_loss=0.0, return_per_token=False, backend="auto"):
    """See module docstring. Returns a scalar (mean/sum) or [N] (none); (loss, per_token) if return_per_token."""
    b = resolve("fused_linear_cross_entropy", backend, _VALID, ["torch"])
    if b == "torch":
        return fused_linear_cross_entropy_ref(hidden, weight, labels, ignore_index=ignore_index,
                                              reduction=reduction, logit_scale=logit_scale, z_loss=z_loss,
                                              return_per_token=return_per_token)
    raise RuntimeError(f"fused_linear_cross_entropy: backend {b!r} is not available in this build")
