"""Mamba2's gated, grouped RMSNorm: norm(x * silu(z)) per group of channels (mamba_ssm RMSNormGated semantics).

Shapes: x [..., D], z [..., D] or None (no gate), weight [D]; D = num_groups * group_size.
    g = x * silu(z)                     (norm_before_gate=False, what Mamba2 / Granite-4.0-H / Nemotron-H use)
    y = weight * g / sqrt(mean_group(g^2) + eps)      mean over each contiguous group of `group_size` channels
With norm_before_gate=True the gate is applied after normalising: y = weight * rms_norm(x) * silu(z).
Computed in fp32 (fp64 for fp64 inputs); like transformers' GraniteMoeHybridRMSNormGated / NemotronHRMSNormGated the normalised value
is cast back to x.dtype before the weight multiply, so bf16 results match theirs bit for bit.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from prism_fast.ops._dispatch import resolve

_VALID = ("torch", "triton")


def gated_rms_norm_ref(x, z, weight, *, group_size=None, eps=1e-6, norm_before_gate=False):
    """Pure-PyTorch reference (see module docstring). Returns [..., D] in x.dtype (weight.dtype promotion)."""
    D = x.shape[-1]
    group_size = D if group_size is None else group_size
    if D % group_size:
        raise ValueError(f"gated_rms_norm: last dim {D} is not a multiple of group_size {group_size}")
    if z is not None and z.shape != x.shape:
        raise ValueError(f"gated_rms_norm: z shape {tuple(z.shape)} must equal x shape {tuple(x.shape)}")
    in_dtype = x.dtype
    acc = torch.promote_types(in_dtype, torch.float32)      # fp32, or fp64 for gradcheck
    h = x.to(acc)
    if z is not None and not norm_before_gate:
        h = h * F.silu(z.to(acc))
    hg = h.view(*h.shape[:-1], D // group_size, group_size)
    hg = hg * torch.rsqrt(hg.pow(2).mean(-1, keepdim=True) + eps)
    h = hg.view(*h.shape)
    if z is not None and norm_before_gate:
        h = h * F.silu(z.to(acc))
    return weight * h.to(in_dtype)


def gated_rms_norm(x, z, weight, *, group_size=None, eps=1e-6, norm_before_gate=False, backend="auto"):
    """Gated grouped RMSNorm (see module docstring). group_size None = one group over the whole last dim."""
    b = resolve("gated_rms_norm", backend, _VALID, ["torch"])
    if b == "torch":
        return gated_rms_norm_ref(x, z, weight, group_size=group_size, eps=eps, norm_before_gate=norm_before_gate)
    raise RuntimeError(f"gated_rms_norm: backend {b!r} is not available in this build")
