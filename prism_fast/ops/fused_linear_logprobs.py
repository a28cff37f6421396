"""Fused LM-head matmul + per-token log-probability (and entropy) of given tokens, for RL.

hidden [N, D] (or [..., D]), weight [V, D], tokens [N] (int64, in [0, V)). logits = hidden @ weight.T / temperature.
Returns logp [N] fp32 (log p(token), always <= 0) and, with return_entropy=True, entropy [N] fp32 in [0, log V].
Differentiable with respect to hidden and weight through both outputs.

Backends: "torch" (chunked pure PyTorch, the CPU default) and "triton" (same chunk loop, cuBLAS GEMMs + the Triton
row kernels of prism_fast.kernels.fused_linear_logprobs); `auto` = triton on CUDA, torch otherwise.
Memory: one [C, V] logits chunk at a time (see _lm_head_chunks.py). Forward keeps only lse [N] and entropy [N];
backward recomputes each chunk's logits (RL weights each token by its own upstream gradient, so the gradients
cannot be formed in forward as the CE mean/sum path does): 4 GEMMs per chunk for forward + backward, vs 3 unfused.
Both loops are custom ops (prism::fused_linear_logprobs_fwd / _bwd: fake impls, registered autograd).
Rows are chunked on the host, so N = 65,536 and beyond never meets a launch-grid limit (grid = chunk rows).
"""
from __future__ import annotations

import math
from typing import Optional  # custom_op schema inference

import torch

from prism_fast.ops._dispatch import resolve, triton_ok
from prism_fast.ops._lm_head_chunks import (TORCH_BYTES_PER_LOGIT, TORCH_CHUNK_BYTES, TRITON_CHUNK_BYTES,
                                            addmm_fp32_, chunk_rows, flatten_rows, plain_weight)

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


def _lp_fwd_chunk_torch(logits, tokens, *, inv_temperature, return_entropy):
    """Torch twin of kernels.fused_linear_logprobs.fllp_fwd_chunk: (logp [C], entropy [C] or None, lse [C]).

    Same statistics as the kernel, on the shifted row y = x - max (y <= 0): s = sum e^y, t = sum e^y y,
    logp = y_tok - log s, entropy = log s - t / s (>= 0 since t <= 0 and s >= 1).
    """
    x = logits.float().mul_(inv_temperature)                      # a copy unless logits is fp32 (ours anyway)
    m = x.amax(dim=-1, keepdim=True)
    y = x.sub_(m)
    y_tok = y.gather(1, tokens.unsqueeze(1)).squeeze(1)
    ent = None
    if return_entropy:
        e = y.exp()
        s = e.sum(-1)
        t = torch.bmm(e.unsqueeze(1), y.unsqueeze(2)).reshape(-1)   # row dot products, no [C, V] product
        log_s = s.log()
        ent = (log_s - t / s).clamp_(min=0.0, max=math.log(y.shape[1]))
    else:
        log_s = y.exp_().sum(-1).log()
    logp = (y_tok - log_s).clamp_(max=0.0)
    return logp, ent, m.squeeze(1) + log_s


def _lp_bwd_chunk_torch(logits, tokens, lse, ent, g_logp, g_ent, *, inv_temperature):
    """dlogits [C, V] fp32 (raw units) for upstream g_logp [C] and g_ent [C] (or None)."""
    logp = logits.float().mul_(inv_temperature).sub_(lse.unsqueeze(1))
    p = logp.exp()
    if g_ent is not None:
        # d/dz_j = -g_lp p_j - g_H p_j (log p_j + H), built in place on the logp buffer.
        d = logp.add_(ent.unsqueeze(1)).mul_(g_ent.unsqueeze(1)).add_(g_logp.unsqueeze(1)).mul_(p).neg_()
    else:
        d = p.mul_(-g_logp.unsqueeze(1))
    d.scatter_add_(1, tokens.unsqueeze(1), g_logp.unsqueeze(1))
    return d.mul_(inv_temperature)


def _impl_fns(impl):
    if impl == "triton":
        from prism_fast.kernels.fused_linear_logprobs import fllp_bwd_chunk, fllp_fwd_chunk
        return fllp_fwd_chunk, fllp_bwd_chunk
    return _lp_fwd_chunk_torch, _lp_bwd_chunk_torch


def _rows(impl, n, v, dtype, chunk_size):
    if impl == "triton":
        return chunk_rows(n, v, dtype.itemsize, TRITON_CHUNK_BYTES, chunk_size)
    return chunk_rows(n, v, TORCH_BYTES_PER_LOGIT, TORCH_CHUNK_BYTES, chunk_size)


def _fllp_fwd(hidden, weight, tokens, *, impl, inv_temperature, return_entropy, chunk_size):
    """hidden [N, D], weight [V, D], tokens [N] -> (logp [N], entropy [N] or None, lse [N]), all fp32."""
    n, v = hidden.shape[0], weight.shape[0]
    fwd, _ = _impl_fns(impl)
    c = _rows(impl, n, v, weight.dtype, chunk_size)
    logp = torch.empty(n, dtype=torch.float32, device=hidden.device)
    lse = torch.empty_like(logp)
    ent = torch.empty_like(logp) if return_entropy else None
    for s in range(0, n, c):
        e = min(n, s + c)
        logits = hidden[s:e].to(weight.dtype) @ weight.t()                         # [C, V]
        lp_c, ent_c, lse_c = fwd(logits, tokens[s:e], inv_temperature=inv_temperature,
                                 return_entropy=return_entropy)
        logp[s:e], lse[s:e] = lp_c, lse_c
        if return_entropy:
            ent[s:e] = ent_c
        del logits
    return logp, ent, lse


def _fllp_bwd(hidden, weight, tokens, lse, ent, g_logp, g_ent, *, impl, inv_temperature, need_dh, need_dw,
              chunk_size):
    """Recompute each chunk's logits and return (dH [N, D] weight.dtype or None, dW [V, D] fp32 or None)."""
    n, d = hidden.shape
    v, cdt = weight.shape[0], weight.dtype
    _, bwd = _impl_fns(impl)
    c = _rows(impl, n, v, cdt, chunk_size)
    dh = torch.empty(n, d, dtype=cdt, device=hidden.device) if need_dh else None
    dw = torch.zeros(v, d, dtype=torch.float32, device=hidden.device) if need_dw else None
    for s in range(0, n, c):
        e = min(n, s + c)
        h_c = hidden[s:e].to(cdt)
        logits = h_c @ weight.t()
        dl = bwd(logits, tokens[s:e], lse[s:e], None if g_ent is None else ent[s:e], g_logp[s:e],
                 None if g_ent is None else g_ent[s:e], inv_temperature=inv_temperature).to(cdt)
        if dh is not None:
            torch.mm(dl, weight, out=dh[s:e])
        if dw is not None:
            addmm_fp32_(dw, dl.t(), h_c)
        del logits, dl                         # before the next chunk's GEMM: one chunk alive at a time
    return dh, dw


# The chunk loops as torch custom ops (fake impls + registered autograd): torch.compile keeps them as opaque nodes.

@torch.library.custom_op("prism::fused_linear_logprobs_fwd", mutates_args=())
def _fllp_fwd_op(hidden: torch.Tensor, weight: torch.Tensor, tokens: torch.Tensor, inv_temperature: float,
                 return_entropy: bool, impl: str,
                 chunk_size: Optional[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logp [N], entropy [N] or empty, lse [N]), fp32."""
    logp, ent, lse = _fllp_fwd(hidden, weight, tokens, impl=impl, inv_temperature=inv_temperature,
                               return_entropy=return_entropy, chunk_size=chunk_size)
    return logp, (ent if ent is not None else logp.new_empty(0)), lse


@_fllp_fwd_op.register_fake
def _(hidden, weight, tokens, inv_temperature, return_entropy, impl, chunk_size):
    n = hidden.shape[0]
    f32 = dict(dtype=torch.float32)
    return hidden.new_empty(n, **f32), hidden.new_empty(n if return_entropy else 0, **f32), hidden.new_empty(n, **f32)


@torch.library.custom_op("prism::fused_linear_logprobs_bwd", mutates_args=())
def _fllp_bwd_op(g_logp: torch.Tensor, g_ent: Optional[torch.Tensor], hidden: torch.Tensor, weight: torch.Tensor,
                 tokens: torch.Tensor, lse: torch.Tensor, ent: torch.Tensor, inv_temperature: float, impl: str,
                 chunk_size: Optional[int], need_dh: bool, need_dw: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(dH like hidden, dW like weight; empty where not needed). g_ent None: no gradient through the entropy."""
    dh, dw = _fllp_bwd(hidden, weight, tokens, lse, ent if g_ent is not None else None, g_logp, g_ent, impl=impl,
                       inv_temperature=inv_temperature, need_dh=need_dh, need_dw=need_dw, chunk_size=chunk_size)
    return (dh.to(hidden.dtype) if dh is not None else hidden.new_empty(0),
            dw.to(weight.dtype) if dw is not None else weight.new_empty(0))


@_fllp_bwd_op.register_fake
def _(g_logp, g_ent, hidden, weight, tokens, lse, ent, inv_temperature, impl, chunk_size, need_dh, need_dw):
    return (hidden.new_empty(hidden.shape if need_dh else (0,)), weight.new_empty(weight.shape if need_dw else (0,)))


def _fllp_setup_context(ctx, inputs, output):
    hidden, weight, tokens, inv_temperature, return_entropy, impl, chunk_size = inputs
    _, ent, lse = output
    ctx.save_for_backward(hidden, weight, tokens, lse, ent)
    ctx.cfg = (inv_temperature, impl, chunk_size)
    ctx.has_entropy = return_entropy


def _fllp_backward(ctx, g_logp, g_ent, _g_lse):
    hidden, weight, tokens, lse, ent = ctx.saved_tensors
    need_dh, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    g_logp = torch.zeros_like(lse) if g_logp is None else g_logp.float().contiguous()
    g_ent = g_ent.float().contiguous() if (ctx.has_entropy and g_ent is not None) else None
    dh, dw = _fllp_bwd_op(g_logp, g_ent, hidden, weight, tokens, lse, ent, *ctx.cfg, need_dh, need_dw)
    return (dh if need_dh else None, dw if need_dw else None, None, None, None, None, None)


_fllp_fwd_op.register_autograd(_fllp_backward, setup_context=_fllp_setup_context)


def fused_linear_logprobs(hidden, weight, tokens, *, temperature=1.0, return_entropy=False, backend="auto",
                          chunk_size=None):
    """See module docstring. hidden [..., D], weight [V, D] plain tensor, tokens [...] int64 in [0, V).

    Returns logp shaped like tokens (fp32), or (logp, entropy) with return_entropy=True.
    chunk_size: rows per chunk (default: derived from a memory budget, _lm_head_chunks.py).
    """
    if not temperature > 0:
        raise ValueError(f"fused_linear_logprobs: temperature must be > 0, got {temperature}")
    weight = plain_weight(weight, "fused_linear_logprobs")
    auto = ["triton"] if hidden.is_cuda and triton_ok("cuda") else ["torch"]
    b = resolve("fused_linear_logprobs", backend, _VALID, auto)
    if b == "triton" and not triton_ok(hidden.device.type):
        raise RuntimeError("fused_linear_logprobs: backend 'triton' needs a CUDA tensor (or TRITON_INTERPRET=1 "
                           "for CPU tests); use backend='torch' on CPU")
    lead_shape = tokens.shape
    h2, t = flatten_rows(hidden, weight, tokens, "fused_linear_logprobs", "tokens")
    if b == "triton":
        # The row kernels index the logits with the token (see fused_linear_cross_entropy): no host sync.
        torch._assert_async(((t >= 0) & (t < weight.shape[0])).all(),
                            "fused_linear_logprobs: tokens must be in [0, V)")
    inv_t = 1.0 / float(temperature)
    logp, ent, _ = _fllp_fwd_op(h2, weight, t, inv_t, bool(return_entropy), b, chunk_size)
    logp = logp.reshape(lead_shape)
    if not return_entropy:
        return logp
    return logp, ent.reshape(lead_shape)
