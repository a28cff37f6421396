"""Several linear layers that read the same input, run as ONE GEMM: y = x @ cat(W_1, ..., W_n).T (+ cat(b_i)).

Used for q/k/v (attention) and gate/up (SwiGLU MLP), whose parameters keep their own HF names (q_proj.weight,
...) so checkpoints, FSDP sharding and the analyses are unchanged; only the math is fused.

Why: on a CPU with AMX, a [T, 576] x [576, 192] bf16 GEMM (SmolLM2's k_proj) runs far below peak, and the
backward adds the three dX GEMM results elementwise. Measured on the 2-core dev box (bf16, T = 2048, fwd + dX +
dW GEMMs per layer): q/k/v 23.7 ms separate vs 6.5 ms as one [960, 576] GEMM; gate/up 42.6 vs 25.5 ms. On GPUs
it is Megatron's fused QKV / fc1 layout: fewer, larger GEMMs.

Memory: the autograd Function saves x and the individual weights (the same tensors nn.Linear would save) and
rebuilds the concatenated weight in backward, so FSDP2's reshard-after-forward still frees the unsharded weights
between forward and backward; the concatenated copy lives only inside forward and inside backward.

Shapes: x [..., K], weights [N_i, K], biases None or [N_i] each; returns [..., sum N_i] in x's dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from prism_fast.ops._dispatch import resolve

_VALID = ("torch", "separate")


def concat_linear_ref(x: torch.Tensor, weights, biases=None) -> torch.Tensor:
    """Reference: one F.linear per weight, outputs concatenated on the last dim."""
    biases = biases if biases is not None else [None] * len(weights)
    return torch.cat([F.linear(x, w, b) for w, b in zip(weights, biases)], dim=-1)


class _ConcatLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, n_weights: int, *params):
        weights, biases = params[:n_weights], params[n_weights:]
        w = torch.cat(weights, dim=0)                                              # [N, K]
        b = torch.cat(biases, dim=0) if biases else None
        ctx.save_for_backward(x, *weights)
        ctx.n_weights, ctx.has_bias = n_weights, bool(biases)
        return F.linear(x, w, b)

    @staticmethod
    def backward(ctx, dy):
        x, *weights = ctx.saved_tensors
        sizes = [w.shape[0] for w in weights]
        dx = dw = None
        x2, dy2 = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])          # [M, K], [M, N]
        if ctx.needs_input_grad[0]:
            dx = (dy2 @ torch.cat(weights, dim=0)).view(x.shape)
        n = ctx.n_weights
        need_w = any(ctx.needs_input_grad[2:2 + n])
        dws = list(torch.mm(dy2.t(), x2).split(sizes, dim=0)) if need_w else [None] * n   # row blocks: contiguous
        dbs = []
        if ctx.has_bias:
            dbs = list(dy2.sum(0).split(sizes)) if any(ctx.needs_input_grad[2 + n:]) else [None] * n
        dws = [g if ctx.needs_input_grad[2 + i] else None for i, g in enumerate(dws)]
        return (dx, None, *dws, *dbs)


def concat_linear(x: torch.Tensor, weights, biases=None, *, backend: str = "auto") -> torch.Tensor:
    """x [..., K] @ cat(weights).T (+ cat(biases)) -> [..., sum N_i]. backend: "auto" / "torch" (one GEMM, custom
    autograd) or "separate" (the reference: one GEMM per weight, eager autograd)."""
    weights = list(weights)
    if not weights or any(w.dim() != 2 or w.shape[1] != x.shape[-1] for w in weights):
        raise ValueError(f"concat_linear: weights must be [N_i, {x.shape[-1]}] matrices, got "
                         f"{[tuple(w.shape) for w in weights]}")
    if biases is not None and (len(biases) != len(weights) or any(b is None for b in biases)):
        raise ValueError("concat_linear: give a bias for every weight or biases=None")
    b = resolve("concat_linear", backend, _VALID, ["torch"])
    if b == "separate" or len(weights) == 1:
        return concat_linear_ref(x, weights, biases)
    return _ConcatLinear.apply(x, len(weights), *weights, *(biases or ()))
