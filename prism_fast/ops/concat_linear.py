"""Several linear layers that read the same input, run as ONE GEMM: y = x @ cat(W_1, ..., W_n).T (+ cat(b_i)).

Used for q/k/v (attention) and gate/up (SwiGLU MLP), whose parameters keep their own HF names (q_proj.weight,
...) so checkpoints, FSDP sharding and the analyses are unchanged; only the math is fused.

Why: on a CPU with AMX, a [T, 576] x [576, 192] bf16 GEMM (SmolLM2's k_proj) runs far below peak, and the
backward adds the three dX GEMM results elementwise. Measured on the 2-core dev box (bf16, T = 2048, fwd + dX +
dW GEMMs per layer): q/k/v 23.7 ms separate vs 6.5 ms as one [960, 576] GEMM; gate/up 42.6 vs 25.5 ms. On GPUs
it is Megatron's fused QKV / fc1 layout: fewer, larger GEMMs.

It is the custom op `prism::concat_linear` (fake impl + registered autograd; backward `prism::concat_linear_bwd`),
so torch.compile keeps it as one node with fullgraph=True.
Memory: the op saves x and the individual weights (the same tensors nn.Linear would save) and
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


@torch.library.custom_op("prism::concat_linear", mutates_args=())
def _concat_linear_op(x: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor]) -> torch.Tensor:
    """x [..., K] @ cat(weights).T (+ cat(biases); [] = no bias) as one GEMM; the concatenated weight lives only
    in here."""
    return F.linear(x, torch.cat(weights, dim=0), torch.cat(biases, dim=0) if biases else None)


@_concat_linear_op.register_fake
def _(x, weights, biases):
    return x.new_empty((*x.shape[:-1], sum(w.shape[0] for w in weights)))


@torch.library.custom_op("prism::concat_linear_bwd", mutates_args=())
def _concat_linear_bwd_op(dy: torch.Tensor, x: torch.Tensor, weights: list[torch.Tensor], need_dx: bool,
                          need_dw: bool, need_db: bool) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """(dx [..., K] or empty, dW_i [N_i, K] each or [], db_i [N_i] each or [])."""
    sizes = [w.shape[0] for w in weights]
    x2, dy2 = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])              # [M, K], [M, N]
    dx = (dy2 @ torch.cat(weights, dim=0)).view(x.shape) if need_dx else x.new_empty(0)
    # Row blocks of one [N, K] GEMM result are contiguous; clone so no output aliases another (custom-op rule).
    dws = [g.clone() for g in torch.mm(dy2.t(), x2).split(sizes, dim=0)] if need_dw else []
    dbs = [g.clone() for g in dy2.sum(0).split(sizes)] if need_db else []
    return dx, dws, dbs


@_concat_linear_bwd_op.register_fake
def _(dy, x, weights, need_dx, need_dw, need_db):
    return (x.new_empty(x.shape) if need_dx else x.new_empty(0),
            [w.new_empty(w.shape) for w in weights] if need_dw else [],
            [w.new_empty(w.shape[0]) for w in weights] if need_db else [])


def _setup_context(ctx, inputs, output):
    x, weights, biases = inputs
    ctx.save_for_backward(x, *weights)               # the tensors nn.Linear would save; never the concatenation
    ctx.has_bias = len(biases) > 0


def _backward(ctx, dy):
    x, *weights = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad
    dx, dws, dbs = _concat_linear_bwd_op(dy, x, weights, bool(need_x), bool(need_w), bool(need_b and ctx.has_bias))
    n = len(weights)
    return (dx if need_x else None, dws if need_w else [None] * n,
            dbs if (need_b and ctx.has_bias) else [None] * (n if ctx.has_bias else 0))


_concat_linear_op.register_autograd(_backward, setup_context=_setup_context)


def concat_linear(x: torch.Tensor, weights, biases=None, *, backend: str = "auto") -> torch.Tensor:
    """x [..., K] @ cat(weights).T (+ cat(biases)) -> [..., sum N_i]. backend: "auto" / "torch" (one GEMM, the custom
    op) or "separate" (the reference: one GEMM per weight, eager autograd)."""
    weights = list(weights)
    if not weights or any(w.dim() != 2 or w.shape[1] != x.shape[-1] for w in weights):
        raise ValueError(f"concat_linear: weights must be [N_i, {x.shape[-1]}] matrices, got "
                         f"{[tuple(w.shape) for w in weights]}")
    if biases is not None and (len(biases) != len(weights) or any(b is None for b in biases)):
        raise ValueError("concat_linear: give a bias for every weight or biases=None")
    b = resolve("concat_linear", backend, _VALID, ["torch"])
    if b == "separate" or len(weights) == 1:
        return concat_linear_ref(x, weights, biases)
    return _concat_linear_op(x, weights, list(biases) if biases is not None else [])
