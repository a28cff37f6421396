"""Fused LM-head matmul + cross-entropy. Never materializes the [N, V] logits beyond one chunk (fast backends).

hidden [N, D] (or [..., D]), weight [V, D], labels [N] (int64, ignore_index marks tokens without loss).
logits = (hidden @ weight.T) * logit_scale; loss_i = logsumexp(logits_i) - logits_i[label_i]
        + z_loss * logsumexp(logits_i)^2.
reduction: "mean" (over non-ignored tokens), "sum", or "none" ([N], zeros at ignored positions).
return_per_token=True additionally returns the per-token losses [N] (detached), for per-domain logging.

Backends (see _lm_head_chunks.py for the chunk loop and its memory math):
  "torch"  chunked pure PyTorch, the CPU default. "triton": the same chunk loop with cuBLAS GEMMs and the Triton
  row kernel of prism_fast.kernels.fused_linear_cross_entropy (CUDA, or the interpreter in tests).
  "inductor" the torch chunk loop with its row math compiled by torch.compile (one fused kernel per chunk reading
  the 16-bit logits; what the trainer uses when parallel.compile=True). Same results as "torch" to ~1e-6.
  "liger"  Liger-Kernel's LigerFusedLinearCrossEntropyLoss when installed.
The chunk loop is the custom op prism::fused_linear_cross_entropy_fwd (+ _bwd for reduction="none"), with fake
impls and registered autograd, so a compiled model keeps the loss as one graph node.
Gradients: for mean/sum they are computed during forward (Liger-style: dlogits of a chunk are consumed by the two
gradient GEMMs right away, so backward only scales dH/dW in place by the upstream scalar and the 3 GEMMs of the
unfused op are all that run). For reduction="none" the upstream gradient differs
per token, so backward recomputes each chunk's logits (one extra GEMM). Under torch.no_grad() (evaluation) no
gradient work is done.
Compute dtype is weight.dtype (hidden is cast chunk by chunk); dW accumulates across chunks in fp32.
The weight must be a plain tensor: under FSDP2 call the op inside the model's forward (docs/fused_loss.md).
"""
from __future__ import annotations

from typing import Optional  # custom_op schema inference

import torch
from torch._subclasses.fake_tensor import is_fake

from prism_fast.ops._dispatch import has_module, resolve, triton_ok
from prism_fast.ops._lm_head_chunks import (TORCH_BYTES_PER_LOGIT, TORCH_CHUNK_BYTES, TRITON_CHUNK_BYTES,
                                            addmm_fp32_, chunk_rows, flatten_rows, plain_weight)

_VALID = ("torch", "inductor", "triton", "liger")
_REDUCTIONS = ("mean", "sum", "none")


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


def _row_loss(lse, tgt, valid, grad, logit_scale, z_loss):
    """Per-row loss, masked lse and the scaled upstream grad g ([C] each; g None without grad), shared by the eager
    and the compiled row math."""
    zero = torch.zeros((), device=lse.device)
    loss = torch.where(valid, lse - tgt + z_loss * lse * lse, zero)
    lse = torch.where(valid, lse, zero)
    g = None if grad is None else torch.where(valid, grad.expand(valid.shape).float(), zero) * logit_scale
    return loss, lse, g


def _ce_chunk_torch(logits, labels, grad, *, ignore_index, logit_scale, z_loss):
    """Pure-PyTorch twin of kernels.fused_linear_cross_entropy.flce_chunk.

    logits [C, V] (any float dtype), labels [C]; grad None, [1] or [C] fp32.
    Returns (loss [C] fp32, lse [C] fp32, dlogits [C, V] fp32 or None). Works in place on one fp32 [C, V]
    buffer (`logits` itself when it is fp32): max, exp(x - max) in place, row sums; torch.logsumexp would
    allocate a second [C, V] temporary and exponentiate twice.
    """
    x = logits.float()
    if logit_scale != 1.0:
        x.mul_(logit_scale)
    valid = labels != ignore_index
    safe = torch.where(valid, labels, torch.zeros_like(labels)).unsqueeze(1)
    m = x.amax(dim=-1, keepdim=True)                                                         # [C, 1]
    tgt = x.gather(1, safe).squeeze(1)
    s = x.sub_(m).exp_().sum(dim=-1, keepdim=True)                                         # x <- exp(x - m)
    loss, lse, g = _row_loss((m + s.log()).squeeze(1), tgt, valid, grad, logit_scale, z_loss)
    if grad is None:
        return loss, lse, None
    x.mul_(((1.0 + 2.0 * z_loss * lse) * g).unsqueeze(1) / s)                               # p (1 + 2 z lse) g s
    x.scatter_add_(1, safe, (-g).unsqueeze(1))                                              # - [j == t] g s
    return loss, lse, x


def _ce_rows_functional(logits, labels, grad, ignore_index: int, logit_scale: float, z_loss: float):
    """The row math of _ce_chunk_torch written out of place, for torch.compile: inductor fuses it into a few loops
    that read the 16-bit GEMM output directly (max, sum of exp, then dlogits = exp(x - m) * coef written straight
    back in the GEMM dtype) and needs no fp32 [C, V] buffer, so chunks can be 2x larger. Measured on the 2-core
    CPU (1280 x 49152 bf16 chunk): 245 ms, the same as eager's in-place passes -- the win is memory, not time.
    Returns (loss [C] fp32, lse [C] fp32, dlogits [C, V] in logits.dtype or None)."""
    x = logits.float() * logit_scale
    valid = labels != ignore_index
    safe = torch.where(valid, labels, torch.zeros_like(labels)).unsqueeze(1)
    m = x.amax(dim=-1, keepdim=True)
    s = torch.exp(x - m).sum(dim=-1, keepdim=True)
    loss, lse, g = _row_loss((m + s.log()).squeeze(1), x.gather(1, safe).squeeze(1), valid, grad, logit_scale,
                             z_loss)
    if grad is None:
        return loss, lse, None
    coef = ((1.0 + 2.0 * z_loss * lse) * g).unsqueeze(1) / s
    d = torch.exp(x - m) * coef
    d = d.scatter_add(1, safe, (-g).unsqueeze(1))
    return loss, lse, d.to(logits.dtype)


_COMPILED_ROWS = None


def _ce_chunk_inductor(logits, labels, grad, *, ignore_index, logit_scale, z_loss):
    """_ce_chunk_torch's math compiled by inductor (CPU: vectorized C++; CUDA: Triton). Compiled once per
    process with dynamic shapes (the last chunk is shorter); the first call pays the compile (~10-30 s on CPU)."""
    global _COMPILED_ROWS
    if _COMPILED_ROWS is None:
        _COMPILED_ROWS = torch.compile(_ce_rows_functional, dynamic=True, fullgraph=True)
    return _COMPILED_ROWS(logits, labels, grad, ignore_index, logit_scale, z_loss)


def _ce_chunk_triton(logits, labels, grad, *, ignore_index, logit_scale, z_loss):
    from prism_fast.kernels.fused_linear_cross_entropy import flce_chunk
    g = None if grad is None else grad.float().contiguous()
    loss, lse = flce_chunk(logits, labels, g, ignore_index=ignore_index, logit_scale=logit_scale, z_loss=z_loss)
    return loss, lse, (logits if grad is not None else None)


def _flce_chunks(hidden, weight, labels, *, impl, ignore_index, logit_scale, z_loss, grad, need_dh, need_dw,
                 chunk_size):
    """The chunk loop. hidden [N, D], weight [V, D], labels [N]; grad None / [1] / [N] fp32 upstream per row.

    Returns (loss [N] fp32, dH [N, D] in weight.dtype or None, dW [V, D] fp32 or None).
    """
    n, d = hidden.shape
    v = weight.shape[0]
    cdt = weight.dtype
    if impl == "triton":
        chunk_fn, c = _ce_chunk_triton, chunk_rows(n, v, cdt.itemsize, TRITON_CHUNK_BYTES, chunk_size)
    elif impl == "inductor":
        # No fp32 [C, V] temporaries: the 16-bit GEMM output + the 16-bit dlogits (4 B per logit at bf16), so the
        # same budget holds 2x the rows of the eager torch path (fewer chunks: fewer dW accumulations).
        chunk_fn = _ce_chunk_inductor
        c = chunk_rows(n, v, 2 * cdt.itemsize, TORCH_CHUNK_BYTES, chunk_size)
    else:
        chunk_fn, c = _ce_chunk_torch, chunk_rows(n, v, TORCH_BYTES_PER_LOGIT, TORCH_CHUNK_BYTES, chunk_size)
    with_grad = grad is not None and (need_dh or need_dw)
    loss = torch.empty(n, dtype=torch.float32, device=hidden.device)
    dh = torch.empty(n, d, dtype=cdt, device=hidden.device) if with_grad and need_dh else None
    want_dw = with_grad and need_dw
    dw = None            # fp32 [V, D]: the first chunk's GEMM result, then accumulated (no zero-fill pass)
    for s in range(0, n, c):
        e = min(n, s + c)
        h_c = hidden[s:e].to(cdt)
        g_c = None if not with_grad else (grad if grad.numel() == 1 else grad[s:e])
        logits = h_c @ weight.t()                                                        # [C, V], the only one
        loss[s:e], _, dl = chunk_fn(logits, labels[s:e], g_c, ignore_index=ignore_index,
                                    logit_scale=logit_scale, z_loss=z_loss)
        if with_grad:
            dl = dl.to(cdt)                                    # no-op when the chunk fn already wrote cdt
            if dh is not None:
                torch.mm(dl, weight, out=dh[s:e])
            if want_dw and dw is None:
                dw = torch.mm(dl.t(), h_c).float()
            elif want_dw:
                addmm_fp32_(dw, dl.t(), h_c)
        # Drop this chunk's buffers before the next GEMM allocates its own (else 2 chunks would be alive).
        del logits, dl
    if want_dw and dw is None:                                                   # n == 0
        dw = torch.zeros(v, d, dtype=torch.float32, device=hidden.device)
    return loss, dh, dw


# The chunk loop as torch custom ops (fake impls + registered autograd): torch.compile keeps the loss as one opaque
# node (fullgraph=True), the chunk loop and its data-dependent buffers stay eager inside.

@torch.library.custom_op("prism::fused_linear_cross_entropy_fwd", mutates_args=())
def _flce_fwd_op(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, ignore_index: int, reduction: str,
                 logit_scale: float, z_loss: float, impl: str, chunk_size: Optional[int], need_dh: bool,
                 need_dw: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss: [] for mean/sum, [N] for none; per-token loss [N]; dH [N, D] and dW [V, D] in weight's dtype for a
    unit upstream gradient, mean/sum only, else empty). All losses fp32."""
    kw = dict(impl=impl, ignore_index=ignore_index, logit_scale=logit_scale, z_loss=z_loss, chunk_size=chunk_size)
    empty = lambda: hidden.new_empty(0, dtype=weight.dtype)  # noqa: E731  (outputs must not alias each other)
    if reduction == "none" or not (need_dh or need_dw):
        loss_tok, _, _ = _flce_chunks(hidden, weight, labels, grad=None, need_dh=False, need_dw=False, **kw)
        if reduction == "none":
            return loss_tok.clone(), loss_tok, empty(), empty()
        denom = (labels != ignore_index).sum().clamp(min=1) if reduction == "mean" else 1
        return (loss_tok.sum() / denom).reshape(()), loss_tok, empty(), empty()
    if reduction == "mean":
        g = 1.0 / (labels != ignore_index).sum().clamp(min=1).float().reshape(1)         # on device: no sync
    else:
        g = torch.ones(1, dtype=torch.float32, device=hidden.device)
    loss_tok, dh, dw = _flce_chunks(hidden, weight, labels, grad=g, need_dh=need_dh, need_dw=need_dw, **kw)
    # dW is kept in the weight's dtype between forward and backward (half the memory of the fp32 accumulator).
    return ((loss_tok.sum() * g).reshape(()), loss_tok, dh if dh is not None else empty(),
            dw.to(weight.dtype) if dw is not None else empty())


@_flce_fwd_op.register_fake
def _(hidden, weight, labels, ignore_index, reduction, logit_scale, z_loss, impl, chunk_size, need_dh, need_dw):
    n = hidden.shape[0]
    grads = reduction != "none" and (need_dh or need_dw)
    f32 = dict(dtype=torch.float32)
    return (hidden.new_empty((n,) if reduction == "none" else (), **f32), hidden.new_empty((n,), **f32),
            hidden.new_empty(hidden.shape if grads and need_dh else (0,), dtype=weight.dtype),
            hidden.new_empty(weight.shape if grads and need_dw else (0,), dtype=weight.dtype))


@torch.library.custom_op("prism::fused_linear_cross_entropy_bwd", mutates_args=())
def _flce_bwd_op(grad: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                 ignore_index: int, logit_scale: float, z_loss: float, impl: str, chunk_size: Optional[int],
                 need_dh: bool, need_dw: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """reduction="none" backward: recompute each chunk's logits; grad [N] fp32 -> (dH like hidden, dW like
    weight; empty where not needed)."""
    _, dh, dw = _flce_chunks(hidden, weight, labels, grad=grad, need_dh=need_dh, need_dw=need_dw, impl=impl,
                             ignore_index=ignore_index, logit_scale=logit_scale, z_loss=z_loss, chunk_size=chunk_size)
    return (dh.to(hidden.dtype) if dh is not None else hidden.new_empty(0),
            dw.to(weight.dtype) if dw is not None else weight.new_empty(0))


@_flce_bwd_op.register_fake
def _(grad, hidden, weight, labels, ignore_index, logit_scale, z_loss, impl, chunk_size, need_dh, need_dw):
    return (hidden.new_empty(hidden.shape if need_dh else (0,)), weight.new_empty(weight.shape if need_dw else (0,)))


def _flce_setup_context(ctx, inputs, output):
    hidden, weight, labels, ignore_index, reduction, logit_scale, z_loss, impl, chunk_size, need_dh, need_dw = inputs
    ctx.reduction, ctx.need = reduction, (need_dh, need_dw)
    ctx.dtypes = (hidden.dtype, weight.dtype)
    ctx.kw = (ignore_index, logit_scale, z_loss, impl, chunk_size)
    if reduction == "none":
        ctx.save_for_backward(hidden, weight, labels)
    else:
        ctx.save_for_backward(output[2], output[3])


def _flce_backward(ctx, g_loss, _g_tok, _g_dh, _g_dw):
    need_dh, need_dw = ctx.need
    if ctx.reduction == "none":
        hidden, weight, labels = ctx.saved_tensors
        dh, dw = _flce_bwd_op(g_loss.float().contiguous(), hidden, weight, labels, *ctx.kw, need_dh, need_dw)
    else:
        # The gradients were formed in forward for a unit upstream gradient; scale them IN PLACE: the loss backward
        # runs first in a step's backward, while every activation is alive, so a copy of dW [V, D] and dH [N, D]
        # there would raise the step's peak memory. The buffers are ours and used once: a second backward through
        # a retained graph is refused by autograd's version check of the saved tensors. g_loss stays fp32:
        # 1/grad_accum or 1/global_tokens must not be rounded to bf16 first.
        # Traced (torch.compile / AOT) backward graphs may not mutate their saved inputs: scale out of place there.
        dh, dw = ctx.saved_tensors
        if torch.compiler.is_compiling() or is_fake(dh) or is_fake(dw):
            return ((dh * g_loss).to(ctx.dtypes[0]) if need_dh else None,
                    (dw * g_loss).to(ctx.dtypes[1]) if need_dw else None, *([None] * 9))
        dh, dw = dh.mul_(g_loss).to(ctx.dtypes[0]), dw.mul_(g_loss).to(ctx.dtypes[1])
    return (dh if need_dh else None, dw if need_dw else None, *([None] * 9))


_flce_fwd_op.register_autograd(_flce_backward, setup_context=_flce_setup_context)


def _liger(hidden, weight, labels, *, ignore_index, reduction, logit_scale, z_loss, return_per_token):
    if not has_module("liger_kernel"):
        raise RuntimeError("fused_linear_cross_entropy: backend 'liger' needs Liger-Kernel: "
                           "pip install liger-kernel (CUDA only)")
    from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss
    h = hidden * logit_scale if logit_scale != 1.0 else hidden                # exact: (s h) W^T = s (h W^T)
    red = "none" if return_per_token else reduction
    out = LigerFusedLinearCrossEntropyLoss(ignore_index=ignore_index, lse_square_scale=z_loss,
                                           reduction=red)(weight, h, labels)
    if not return_per_token:
        return out
    per_tok = out.float()
    if reduction == "mean":
        loss = per_tok.sum() / (labels != ignore_index).sum().clamp(min=1)
    else:
        loss = per_tok.sum() if reduction == "sum" else per_tok
    return loss, per_tok.detach()


def fused_linear_cross_entropy(hidden, weight, labels, *, ignore_index=-100, reduction="mean",
                               logit_scale=1.0, z_loss=0.0, return_per_token=False, backend="auto",
                               chunk_size=None):
    """See module docstring. Returns a scalar (mean/sum) or [N] (none); (loss, per_token) if return_per_token.

    hidden [..., D] float, weight [V, D] (plain tensor, not a DTensor), labels [...] int64.
    Outputs are fp32. chunk_size: rows per chunk (default: derived from a memory budget, _lm_head_chunks.py).
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    weight = plain_weight(weight, "fused_linear_cross_entropy")
    on_cuda = hidden.is_cuda
    auto = ["triton"] if on_cuda and triton_ok("cuda") else ["torch"]
    b = resolve("fused_linear_cross_entropy", backend, _VALID, auto)
    lead_shape = labels.shape
    h2, y = flatten_rows(hidden, weight, labels, "fused_linear_cross_entropy", "labels")
    if b == "liger":
        out = _liger(h2, weight, y, ignore_index=ignore_index, reduction=reduction, logit_scale=logit_scale,
                     z_loss=z_loss, return_per_token=return_per_token)
        loss, per_tok = out if return_per_token else (out, None)
    else:
        if b == "triton" and not triton_ok(hidden.device.type):
            raise RuntimeError("fused_linear_cross_entropy: backend 'triton' needs a CUDA tensor (or "
                               "TRITON_INTERPRET=1 for CPU tests); use backend='torch' on CPU")
        if b == "triton":
            # The row kernel indexes the logits with the label: an out-of-range label would read out of bounds.
            # Checked on device without a host sync (a device-side assert on CUDA, like F.cross_entropy's).
            torch._assert_async(((y == ignore_index) | ((y >= 0) & (y < weight.shape[0]))).all(),
                                "fused_linear_cross_entropy: labels must be in [0, V) or ignore_index")
        kw = dict(impl=b, ignore_index=ignore_index, logit_scale=float(logit_scale), z_loss=float(z_loss),
                  chunk_size=chunk_size)
        grad_on = torch.is_grad_enabled()
        loss, per_tok, _, _ = _flce_fwd_op(h2, weight, y, int(ignore_index), reduction, kw["logit_scale"],
                                           kw["z_loss"], b, chunk_size, grad_on and h2.requires_grad,
                                           grad_on and weight.requires_grad)
    if reduction == "none":
        loss = loss.reshape(lead_shape)
    if return_per_token:
        return loss, per_tok.detach().reshape(lead_shape)
    return loss
