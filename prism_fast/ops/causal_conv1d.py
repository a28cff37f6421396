"""Depthwise causal 1-D convolution with causal_conv1d_fn semantics (Mamba2's short conv).

x [B, C, T], weight [C, W] (W = width, 2..4), bias [C] or None, seq_idx [B, T] int or None.
out[b, c, t] = bias[c] + sum_{k=0}^{W-1} weight[c, W-1-k] * x[b, c, t-k], where terms with t-k < 0 or
seq_idx[b, t-k] != seq_idx[b, t] are dropped (no leakage across packed documents).
activation: None or "silu" ("swish" is accepted as an alias).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from prism_fast.ops._dispatch import resolve

_VALID = ("torch", "triton", "cuda", "causal_conv1d")


def causal_conv1d_ref(x, weight, bias=None, *, seq_idx=None, activation=None):
    """Pure-PyTorch reference: a sum of W shifted copies, masked by document. Computes in fp32."""
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"causal_conv1d: activation must be None or 'silu', got {activation!r}")
    Bsz, Cdim, T = x.shape
    W = weight.shape[1]
    xf, wf = x.float(), weight.float()
    out = torch.zeros_like(xf) if bias is None else bias.float()[None, :, None].expand(Bsz, Cdim, T).clone()
    for k in range(W):
        if k >= T:
            break
        shifted = F.pad(xf, (k, 0))[..., :T]                                  # x[t - k]
        term = wf[:, W - 1 - k][None, :, None] * shifted
        if seq_idx is not None and k > 0:
            same = torch.zeros(Bsz, T, dtype=torch.bool, device=x.device)
            same[:, k:] = seq_idx[:, k:] == seq_idx[:, :-k]
            term = term * same[:, None, :]
        out = out + term
    if activation in ("silu", "swish"):
        out = F.silu(out)
    return out.to(x.dtype)


def causal_conv1d(x, weight, bias=None, *, seq_idx=None, activation=None, backend="auto"):
    """See module docstring. Returns [B, C, T] in x.dtype."""
    b = resolve("causal_conv1d", backend, _VALID, ["torch"])
    if b == "torch":
        return causal_conv1d_ref(x, weight, bias, seq_idx=seq_idx, activation=activation)
    raise RuntimeError(f"causal_conv1d: backend {b!r} is not available in this build")
