"""Rotary position embedding (RoPE): inverse frequencies (default and Llama-3 scaling), cos/sin tables, rotation.

Shapes: q [B, T, H, Dh], k [B, T, Hkv, Dh], position_ids [B, T] int64, cos/sin [B, T, Dh] (the two halves of the last
dim repeat the same Dh/2 frequencies: the "rotate_half" layout of Hugging Face/Llama, not the interleaved layout of
the original Meta code). Unusual: cos/sin are computed in fp32 and cast to the activation dtype before the rotation,
which is what transformers does; computing the rotation in fp32 instead is more accurate but not bit-identical.
"""
from __future__ import annotations

import math

import torch

from prism_fast.ops._dispatch import resolve

_VALID = ("torch",)
SUPPORTED_ROPE_TYPES = ("default", "llama3", "linear")


def rotary_inv_freq(head_dim: int, theta: float, rope_scaling: dict | None = None,
                    max_position_embeddings: int | None = None, device="cpu") -> torch.Tensor:
    """Inverse frequencies [Dh/2] fp32. rope_scaling: HF dict ({"rope_type": "llama3", "factor", "low_freq_factor",
    "high_freq_factor", "original_max_position_embeddings"} or {"rope_type": "linear", "factor"}) or None.
    `device` is explicit so that building a model under `with torch.device("meta")` still gets real values."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim))
    rope_type = (rope_scaling or {}).get("rope_type", (rope_scaling or {}).get("type", "default"))
    if rope_type == "default":
        return inv_freq
    if rope_type == "linear":
        return inv_freq / rope_scaling["factor"]
    if rope_type == "llama3":
        factor = rope_scaling["factor"]
        low, high = rope_scaling["low_freq_factor"], rope_scaling["high_freq_factor"]
        old_ctx = rope_scaling.get("original_max_position_embeddings", max_position_embeddings)
        low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
        wavelen = 2 * math.pi / inv_freq
        # long wavelengths (low frequencies) are divided by `factor`, short ones kept, the middle band interpolated
        out = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * out / factor + smooth * out
        medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
        return torch.where(medium, smoothed, out)
    raise ValueError(f"rope_scaling type {rope_type!r} is not supported; supported: {SUPPORTED_ROPE_TYPES} "
                     "(remove rope_scaling from config.json or use one of these)")


def rotary_cos_sin(position_ids: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype):
    """position_ids [B, T] -> (cos, sin) [B, T, Dh] in `dtype` (computed in fp32)."""
    freqs = position_ids[..., None].float() * inv_freq.to(position_ids.device, torch.float32)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_ref(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """Pure-PyTorch reference. q [B,T,H,Dh], k [B,T,Hkv,Dh], cos/sin [B,T,Dh] -> rotated (q, k), same dtypes."""
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def apply_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, backend: str = "auto"):
    """Rotate q and k by the per-position angles (see module docstring). Returns new tensors (q, k)."""
    b = resolve("apply_rotary", backend, _VALID, ["torch"])
    if b == "torch":
        return apply_rotary_ref(q, k, cos, sin)
    raise RuntimeError(f"apply_rotary: backend {b!r} is not available in this build")
