"""RMSNorm with the exact rounding order of Hugging Face's LlamaRMSNorm (Mamba2's gated RMSNorm: ops/gated_rms_norm.py).

Shapes: x [..., D], weight [D].   y = weight * (x_fp32 * rsqrt(mean(x_fp32^2) + eps)).to(x.dtype)
Unusual: the product with `weight` happens in x.dtype after the downcast (HF's order); doing it in fp32 changes bf16
results by one ulp and would break bit-level parity with transformers in bf16.
"""
from __future__ import annotations

import torch

from prism_fast.ops._dispatch import resolve

_VALID = ("torch",)


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Pure-PyTorch reference. x [..., D], weight [D] -> [..., D] in x.dtype (weight promotes as in HF)."""
    xf = x.to(torch.promote_types(x.dtype, torch.float32))          # fp32 for 16-bit inputs, fp64 stays fp64
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, *, backend: str = "auto") -> torch.Tensor:
    """RMSNorm over the last dim (see module docstring). A fused Triton backend can be added behind this name."""
    b = resolve("rms_norm", backend, _VALID, ["torch"])
    if b == "torch":
        return rms_norm_ref(x, weight, eps)
    raise RuntimeError(f"rms_norm: backend {b!r} is not available in this build")

