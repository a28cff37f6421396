"""CPU varlen attention as torch custom ops over ATen's fused CPU flash-attention kernels.

`prism::varlen_attention_cpu_fwd` runs `aten._scaled_dot_product_flash_attention_for_cpu` once per document on
strided [1, H, L, Dh] views of the packed q / k / v (no copies, GQA native) and returns (out [T, H, Dh],
lse [H, T] fp32); `prism::varlen_attention_cpu_bwd` runs the matching ATen backward per document from the saved
(out, lse) -- bitwise what SDPA's own autograd computes.

Why custom ops instead of calling SDPA in eager autograd: the document lengths are data (cu_seqlens), and reading
them is a host sync that torch.compile cannot trace. Inside an opaque custom op (with a shape-only fake impl)
the sync is invisible to dynamo, so a whole transformer block (norms, projections, RoPE, attention, MLP) compiles
as ONE graph and inductor can fuse the elementwise work around the attention. It also saves the autograd
split/cat bookkeeping per document and the contiguous copies of the per-document heads.

Memory: out + lse (fp32 [H, T]) are saved for backward, as in flash-attn; never the [L, L] scores.
Only full causal or full bidirectional attention; sliding windows take the SDPA-with-mask path in
varlen_attention.py.
"""
from __future__ import annotations

import torch

_flash_fwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_flash_bwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def _docs(cu_seqlens: torch.Tensor):
    """(start, end) of every non-empty document (one host read of cu_seqlens)."""
    b = cu_seqlens.tolist()
    return [(s, e) for s, e in zip(b[:-1], b[1:]) if e > s]


def _bhld(x: torch.Tensor, s: int, e: int) -> torch.Tensor:
    """Rows [s, e) of a packed [T, H, Dh] tensor as a strided [1, H, L, Dh] view."""
    return x[s:e].transpose(0, 1).unsqueeze(0)


@torch.library.custom_op("prism::varlen_attention_cpu_fwd", mutates_args=(), device_types="cpu")
def varlen_attention_cpu_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                             causal: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """q [T, H, Dh], k / v [T, Hkv, Dh], cu_seqlens int [n + 1] -> (out [T, H, Dh], lse fp32 [H, T])."""
    out = torch.empty_like(q)
    lse = torch.empty(q.shape[1], q.shape[0], dtype=torch.float32, device=q.device)   # docs cover [0, T)
    for s, e in _docs(cu_seqlens):
        o, l = _flash_fwd(_bhld(q, s, e), _bhld(k, s, e), _bhld(v, s, e), 0.0, causal, scale=scale)
        out[s:e] = o[0].transpose(0, 1)
        lse[:, s:e] = l[0]
    return out, lse


@varlen_attention_cpu_fwd.register_fake
def _(q, k, v, cu_seqlens, causal, scale):
    return torch.empty_like(q), q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)


@torch.library.custom_op("prism::varlen_attention_cpu_bwd", mutates_args=(), device_types="cpu")
def varlen_attention_cpu_bwd(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             out: torch.Tensor, lse: torch.Tensor, cu_seqlens: torch.Tensor, causal: bool,
                             scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (dq, dk, dv) shaped like (q, k, v)."""
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)        # docs cover [0, T)
    for s, e in _docs(cu_seqlens):
        gq, gk, gv = _flash_bwd(_bhld(dout, s, e), _bhld(q, s, e), _bhld(k, s, e), _bhld(v, s, e),
                                _bhld(out, s, e), lse[None, :, s:e], 0.0, causal, scale=scale)
        dq[s:e], dk[s:e], dv[s:e] = gq[0].transpose(0, 1), gk[0].transpose(0, 1), gv[0].transpose(0, 1)
    return dq, dk, dv


@varlen_attention_cpu_bwd.register_fake
def _(dout, q, k, v, out, lse, cu_seqlens, causal, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, cu_seqlens, causal, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_seqlens)
    ctx.causal, ctx.scale = causal, scale


def _backward(ctx, dout, dlse):
    q, k, v, out, lse, cu_seqlens = ctx.saved_tensors
    # dlse is ignored: varlen_attention never returns lse, so no gradient flows into it.
    dq, dk, dv = varlen_attention_cpu_bwd(dout, q, k, v, out, lse, cu_seqlens, ctx.causal, ctx.scale)
    return dq, dk, dv, None, None, None


varlen_attention_cpu_fwd.register_autograd(_backward, setup_context=_setup_context)


def varlen_attention_cpu(q, k, v, cu_seqlens, causal: bool, scale: float) -> torch.Tensor:
    """q [T, H, Dh], k / v [T, Hkv, Dh], cu_seqlens int [n + 1] -> out [T, H, Dh] (full causal / bidirectional)."""
    return varlen_attention_cpu_fwd(q, k, v, cu_seqlens, bool(causal), float(scale))[0]
