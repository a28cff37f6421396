"""Public ops: one function per op, `backend="auto"` dispatch, and a pure-PyTorch `*_ref` beside each.
Models pick their backends once at build (kernel_choice.py: KernelConfig -> resolve_kernels -> KernelChoice).

This package is the only caller of prism_fast.kernels (Triton) and the csrc/ native modules.
"""
from prism_fast.ops.causal_conv1d import causal_conv1d, causal_conv1d_ref
from prism_fast.ops.concat_linear import concat_linear, concat_linear_ref
from prism_fast.ops.decode_attention import decode_attention, decode_attention_ref
from prism_fast.ops.fused_linear_cross_entropy import (fused_linear_cross_entropy,
                                                       fused_linear_cross_entropy_ref)
from prism_fast.ops.fused_linear_logprobs import fused_linear_logprobs, fused_linear_logprobs_ref
from prism_fast.ops.kernel_choice import KernelChoice, KernelConfig, resolve_kernels
from prism_fast.ops.gated_rms_norm import gated_rms_norm, gated_rms_norm_ref
from prism_fast.ops.mamba_decode import (causal_conv1d_update, causal_conv1d_update_ref, mamba_decode_step,
                                         mamba_decode_step_ref, ssd_state_update, ssd_state_update_ref)
from prism_fast.ops.norms import rms_norm, rms_norm_ref
from prism_fast.ops.rope import apply_rotary, apply_rotary_ref, rotary_cos_sin, rotary_inv_freq
from prism_fast.ops.ssd_chunk_scan import ssd_chunk_scan, ssd_chunk_scan_ref, ssd_scan_naive
from prism_fast.ops.varlen_attention import varlen_attention, varlen_attention_ref

__all__ = [
    "causal_conv1d", "causal_conv1d_ref",
    "concat_linear", "concat_linear_ref",
    "decode_attention", "decode_attention_ref",
    "rms_norm", "rms_norm_ref",
    "apply_rotary", "apply_rotary_ref", "rotary_cos_sin", "rotary_inv_freq",
    "fused_linear_cross_entropy", "fused_linear_cross_entropy_ref",
    "fused_linear_logprobs", "fused_linear_logprobs_ref",
    "gated_rms_norm", "gated_rms_norm_ref",
    "causal_conv1d_update", "causal_conv1d_update_ref", "mamba_decode_step", "mamba_decode_step_ref",
    "ssd_state_update", "ssd_state_update_ref",
    "KernelChoice", "KernelConfig", "resolve_kernels",
    "ssd_chunk_scan", "ssd_chunk_scan_ref", "ssd_scan_naive",
    "varlen_attention", "varlen_attention_ref",
]
