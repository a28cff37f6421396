"""Fused LM-head matmul + per-token log-probability (and entropy) of given tokens, for RL.

hidden [N, D], weight [V, D], tokens [N] (int64). logits = hidden @ weight.T / temperature.
Returns logp [N] fp32 (log p(token), always <= 0) and, with return_entropy=True, entropy [N] fp32 in [0, log V].
Differentiable with respect to hidden and weight through both outputs.
"""
from __future__ import annotations

import torch

from prism_fast.ops._dispatch import resolve

_VALID = ("torch", "triton")


def fused_linear_logprobs_ref(hidden, weight, tokens, *, temperature=1.0, return_entropy=False):
    """Unchunked pure-PyTorch reference (fp32 logits)."""
    logits = (hidden.float() @ weight.float().t()) / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(1, tokens.unsqueeze(1)).squeeze(1)
    if not return_entropy:
        return logp
    ent = -(logp_all.exp() * logp_all).sum(-1)
    return logp, ent


def fused_linear_logprobs(hidden, weight, tokens, *, temperature=1.0, return_entropy=False, backend="auto"):
    """See module docstring."""
    b = resolve("fused_linear_logprobs", backend, _VALID, ["torch"])
    if b == "torch":
        return fused_linear_logprobs_ref(hidden, weight, tokens, temperature=temperature,
                                         return_entropy=return_entropy)
    raise RuntimeError(f"fused_linear_logprobs: backend {b!r} is not available in this build")
