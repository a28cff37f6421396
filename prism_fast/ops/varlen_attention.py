"""Packed-sequence (varlen) attention with flash_attn_varlen_func semantics.

Shapes (T = total tokens of the pack, H query heads, Hkv key/value heads, Dh head dim):
    q [T, H, Dh], k [T, Hkv, Dh], v [T, Hkv, Dh], cu_seqlens int32 [n_docs + 1] (0 = cu[0] < ... < cu[-1] = T).
Attention never crosses documents. GQA: query head h reads kv head h // (H // Hkv).
window_size = (left, right) as in flash-attn: query i sees key j iff i - left <= j <= i + right (-1 = unbounded);
causal=True additionally requires j <= i. Positions are relative to the document start.

Backends: "torch" (SDPA per document, eager autograd; the CPU default; one host sync on cu_seqlens), "triton"
(FlashAttention-2 forward/backward in kernels/flash_attn_{fwd,bwd}.py, registered as the custom ops
prism::varlen_attention_fwd / _bwd with fake impls and autograd, no host sync), "flash_attn" (when installed).
Memory: the Triton and flash-attn backends keep O(T) extra state (out + logsumexp [H, T] fp32), never the [L, L]
scores; the torch backend's memory depends on the SDPA kernel PyTorch picks per document.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from prism_fast.kernels.configs import HEAD_DIM_MAX
from prism_fast.ops._attention_cpu import varlen_attention_cpu
from prism_fast.ops._dispatch import has_module, resolve, triton_usable

_VALID = ("torch", "triton", "flash_attn")
# Probed once at import (not inside the traced function: dynamo warns about tracing through lru_cache).
_HAS_TRITON = has_module("triton")
_HAS_FLASH_ATTN = has_module("flash_attn")
_TRITON_CPU_OK = triton_usable("cpu")  # TRITON_INTERPRET=1 (tests)
_FLASH_CPU_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _window_mask(Tq: int, Tk: int, causal: bool, window_size, device) -> torch.Tensor | None:
    """Boolean [Tq, Tk] mask (True = attend) for one document, or None when everything is visible."""
    left, right = window_size
    if not causal and left < 0 and right < 0:
        return None
    i = torch.arange(Tq, device=device)[:, None]
    j = torch.arange(Tk, device=device)[None, :]
    m = torch.ones(Tq, Tk, dtype=torch.bool, device=device)
    if causal:
        m &= j <= i
    if left >= 0:
        m &= j >= i - left
    if right >= 0:
        m &= j <= i + right
    return m


def varlen_attention_ref(q, k, v, cu_seqlens, max_seqlen=None, *, causal=True, softmax_scale=None,
                         window_size=(-1, -1)):
    """Pure-PyTorch reference: explicit softmax in fp32, one document at a time. Returns [T, H, Dh] in q.dtype."""
    T, H, Dh = q.shape
    Hkv = k.shape[1]
    if H % Hkv:
        raise ValueError(f"varlen_attention: query heads ({H}) must be a multiple of kv heads ({Hkv})")
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(Dh)
    out = torch.empty_like(q)
    bounds = cu_seqlens.tolist()
    rep = H // Hkv
    for s, e in zip(bounds[:-1], bounds[1:]):
        qd = q[s:e].float().transpose(0, 1)                                       # [H, L, Dh]
        kd = k[s:e].float().transpose(0, 1).repeat_interleave(rep, dim=0)         # [H, L, Dh]
        vd = v[s:e].float().transpose(0, 1).repeat_interleave(rep, dim=0)
        scores = (qd @ kd.transpose(-1, -2)) * scale                              # [H, L, L]
        m = _window_mask(e - s, e - s, causal, window_size, q.device)
        if m is not None:
            scores = scores.masked_fill(~m, float("-inf"))
        p = torch.softmax(scores, dim=-1)
        p = torch.nan_to_num(p, nan=0.0)  # rows with no visible key (impossible when causal) -> zero output
        out[s:e] = (p @ vd).transpose(0, 1).to(q.dtype)
    return out


def _varlen_attention_torch(q, k, v, cu_seqlens, causal, softmax_scale, window_size):
    """CPU default. Without a window: the prism::varlen_attention_cpu_fwd custom op (ATen's CPU flash kernels per
    document, compile-friendly; _attention_cpu.py). With a window: SDPA with a boolean mask per document (one
    host sync to read cu_seqlens).

    torch.split (not slicing) so that autograd joins the per-document grads with one cat instead of one
    zero-filled [T, H, Dh] buffer per document; [1, H, L, Dh] contiguous inputs and enable_gqa (no
    repeat_interleave copies) keep SDPA on its fused CPU kernel. Together ~4x faster fwd+bwd on a 12-document
    1k-token pack than slicing (2-core CPU).
    """
    windowed = window_size[0] >= 0 or window_size[1] >= 0
    if not windowed and q.device.type == "cpu" and q.dtype in _FLASH_CPU_DTYPES:
        return varlen_attention_cpu(q, k, v, cu_seqlens, causal, softmax_scale)
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    gqa = q.shape[1] != k.shape[1]
    outs = []
    for qd, kd, vd in zip(q.split(lens), k.split(lens), v.split(lens)):
        L = qd.shape[0]
        if L == 0:
            outs.append(qd)
            continue
        qd, kd, vd = (x.transpose(0, 1).unsqueeze(0).contiguous() for x in (qd, kd, vd))    # [1, H, L, Dh]
        m = _window_mask(L, L, causal, window_size, q.device) if windowed else None
        o = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=m, is_causal=causal and not windowed,
                                           scale=softmax_scale, enable_gqa=gqa)
        outs.append(o[0].transpose(0, 1))
    return torch.cat(outs, dim=0) if outs else q.new_empty(q.shape)


# ----------------------------------------------------------------------------------------------------------
# Triton backend as a torch custom op: torch.compile sees one opaque node with a fake (shape-only) impl and
# an autograd formula, instead of tracing into the launcher (which builds work lists on the device).

@torch.library.custom_op("prism::varlen_attention_fwd", mutates_args=())
def _varlen_attention_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                             causal: bool, softmax_scale: float, window_left: int,
                             window_right: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (out [T, H, Dh], lse fp32 [H, T])."""
    from prism_fast.kernels.flash_attn_fwd import varlen_attn_fwd
    return varlen_attn_fwd(q, k, v, cu_seqlens, softmax_scale=softmax_scale, causal=causal,
                           window_size=(window_left, window_right))


@_varlen_attention_fwd_op.register_fake
def _(q, k, v, cu_seqlens, causal, softmax_scale, window_left, window_right):
    return q.new_empty(q.shape), q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)


@torch.library.custom_op("prism::varlen_attention_bwd", mutates_args=())
def _varlen_attention_bwd_op(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             out: torch.Tensor, lse: torch.Tensor, cu_seqlens: torch.Tensor, causal: bool,
                             softmax_scale: float, window_left: int,
                             window_right: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (dq, dk, dv) shaped like (q, k, v)."""
    from prism_fast.kernels.flash_attn_bwd import varlen_attn_bwd
    return varlen_attn_bwd(do, q, k, v, out, lse, cu_seqlens, softmax_scale=softmax_scale, causal=causal,
                           window_size=(window_left, window_right))


@_varlen_attention_bwd_op.register_fake
def _(do, q, k, v, out, lse, cu_seqlens, causal, softmax_scale, window_left, window_right):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, cu_seqlens, causal, softmax_scale, window_left, window_right = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_seqlens)
    ctx.args = (causal, softmax_scale, window_left, window_right)


def _backward(ctx, dout, dlse):
    q, k, v, out, lse, cu_seqlens = ctx.saved_tensors
    # dlse is ignored: the public function never returns lse, so no gradient flows into it.
    dq, dk, dv = _varlen_attention_bwd_op(dout.contiguous(), q, k, v, out, lse, cu_seqlens, *ctx.args)
    return dq, dk, dv, None, None, None, None, None


_varlen_attention_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def _varlen_attention_flash_attn(q, k, v, cu_seqlens, max_seqlen, causal, softmax_scale, window_size):
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError as e:  # pragma: no cover - GPU extra
        raise RuntimeError("varlen_attention: backend 'flash_attn' needs `pip install flash-attn "
                           "--no-build-isolation` on a CUDA machine") from e
    if max_seqlen is None:
        max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())                     # host sync
    return flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen,
                                  softmax_scale=softmax_scale, causal=causal, window_size=tuple(window_size))


def _auto_order(q: torch.Tensor) -> list[str]:
    """Best first. flash-attn leads on CUDA fp16/bf16 while our Triton kernel has no H200 measurement
    (see docs/attention.md); the Triton interpreter is never picked automatically (it is a test tool)."""
    if q.device.type != "cuda":
        return ["torch"]
    order = []
    if q.dtype in (torch.float16, torch.bfloat16) and _HAS_FLASH_ATTN:
        order.append("flash_attn")
    if _HAS_TRITON:
        order.append("triton")
    return order + ["torch"]


def _check(q, k, v, cu_seqlens):
    if q.dim() != 3 or k.dim() != 3 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
        raise ValueError(f"varlen_attention: expected q [T, H, Dh] and k, v [T, Hkv, Dh]; got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"varlen_attention: query heads ({q.shape[1]}) must be a multiple of kv heads "
                         f"({k.shape[1]})")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or cu_seqlens.is_floating_point():
        raise ValueError("varlen_attention: cu_seqlens must be an integer tensor [n_docs + 1] starting at 0 and "
                         f"ending at T={q.shape[0]}; got shape {tuple(cu_seqlens.shape)}")


def varlen_attention(q, k, v, cu_seqlens, max_seqlen=None, *, causal=True, softmax_scale=None,
                     window_size=(-1, -1), backend="auto"):
    """Attention over a pack of documents (flash_attn_varlen_func semantics). Returns [T, H, Dh] in q.dtype.

    q [T, H, Dh], k / v [T, Hkv, Dh] (H % Hkv == 0), cu_seqlens int [n_docs + 1] (0, ..., T) on q's device,
    max_seqlen: longest document (only the flash_attn backend uses it; computed with a host sync if None).
    causal: query i sees keys j <= i of its document. window_size (left, right): i - left <= j <= i + right,
    -1 = unbounded (Mistral sliding window = (W - 1, 0)). softmax_scale defaults to Dh ** -0.5.
    backend: "auto" (CPU: "torch"; CUDA: "flash_attn" if installed, else "triton"), "torch" (per-document SDPA,
    eager autograd), "triton" (FA2 kernels, a custom op `prism::varlen_attention_fwd` with a fake impl and
    autograd, so torch.compile keeps it as one node), "flash_attn".
    """
    _check(q, k, v, cu_seqlens)
    b = resolve("varlen_attention", backend, _VALID, _auto_order(q))
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    window_size = tuple(int(w) for w in window_size)
    if b == "torch":
        return _varlen_attention_torch(q, k, v, cu_seqlens, causal, scale, window_size)
    if b == "triton":
        if not (_HAS_TRITON and (q.is_cuda or _TRITON_CPU_OK)):
            raise RuntimeError("varlen_attention: backend 'triton' needs a CUDA device (or TRITON_INTERPRET=1 "
                               "for CPU tests) and `pip install triton`")
        if q.shape[-1] > HEAD_DIM_MAX:
            raise ValueError(f"varlen_attention: backend 'triton' supports head dims <= {HEAD_DIM_MAX} (its tiles "
                             f"must fit in shared memory), got {q.shape[-1]}; use backend='torch' or 'flash_attn'")
        out, _ = _varlen_attention_fwd_op(q, k, v, cu_seqlens.to(q.device, torch.int32), bool(causal), float(scale),
                                          *window_size)
        return out
    return _varlen_attention_flash_attn(q, k, v, cu_seqlens.to(q.device, torch.int32), max_seqlen, causal, scale,
                                        window_size)
