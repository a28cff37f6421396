"""Shared layers: RMSNorm, RoPE tables, Attention (GQA, sliding window, packed, KV cache) and the (gated) MLP.

How hybrid families plug in: a block is an nn.Module with an int `layer_idx` and `forward(x [B, T, D], ctx:
ForwardContext) -> [B, T, D]`, plus `new_cache(batch_size, max_seq_len, dtype, device) -> LayerCache | None`.
Reuse `Attention`, `MLP` and `RMSNorm` from here (parameter names are the HF ones: q_proj/k_proj/v_proj/o_proj,
gate_proj/up_proj/down_proj, weight). Mamba blocks read `ctx.seq_idx` (document index per token, set for packed
batches) and `ctx.cache.layers[self.layer_idx]`.
All math goes through prism_fast.ops (rms_norm, apply_rotary, varlen_attention, decode_attention), where fast
backends plug in. The uncached path always runs varlen attention: a plain [B, T] batch is B documents of length T.
Shape legend: B batch, T tokens, D hidden, H query heads, Hkv kv heads, Dh head dim, I intermediate size.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from prism_fast.models.cache import KVCache, ModelCache
from prism_fast.models.config import ModelConfig
from prism_fast.ops import apply_rotary, concat_linear, rms_norm, rotary_cos_sin, rotary_inv_freq, varlen_attention


@dataclass
class ForwardContext:
    """What every block needs besides its input; built once per forward by CausalLM.make_context."""
    position_ids: torch.Tensor                       # [B, T] int64
    rope: tuple[torch.Tensor, torch.Tensor] | None   # (cos, sin) [B, T, Dh] in the activation dtype, or None
    attn_cu_seqlens: torch.Tensor | None             # int32 [n+1] over the flattened B*T tokens (uncached path)
    max_seqlen: int                                  # longest document (for varlen kernels)
    cu_seqlens: torch.Tensor | None = None           # the caller's packed boundaries (B == 1), else None
    seq_idx: torch.Tensor | None = None              # [B, T] int32 document index per token when packed
    cache: ModelCache | None = None
    cp: object | None = None                         # context parallelism: distributed.context_parallel.CPShard


_ACTS = {
    "silu": F.silu,
    "swish": F.silu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "relu2": lambda x: F.relu(x).square(),
}


def activation(name: str):
    if name not in _ACTS:
        raise ValueError(f"unsupported hidden_act {name!r}; supported: {sorted(_ACTS)}")
    return _ACTS[name]


# Linear module types that run FP8 GEMMs (Transformer Engine's te.Linear; distributed/fp8.py registers it when
# it swaps the block linears). Their math is inside the module (scaling state, FP8 casts), so a projection made
# of them must call each module: a concatenated-weight GEMM would read .weight and run in bf16.
FP8_LINEAR_TYPES: list[type] = []


def register_fp8_linear(cls: type) -> type:
    """Declare `cls` an FP8 linear module type (see FP8_LINEAR_TYPES). Returns cls."""
    if cls not in FP8_LINEAR_TYPES:
        FP8_LINEAR_TYPES.append(cls)
    return cls


def is_fp8_linear(m: nn.Module) -> bool:
    return isinstance(m, tuple(FP8_LINEAR_TYPES))


def _fused_projection(x: torch.Tensor, projection: str, *linears: nn.Module) -> torch.Tensor:
    """Several linears of the same input; x [..., D] -> [..., sum of out_features] (outputs side by side, in
    argument order). projection (the model's kernels.projection): "fused" = ONE GEMM over the concatenated
    weights (ops.concat_linear; params keep their HF names), "separate" = one module call each (FP8 / TE)."""
    if projection == "separate":
        return torch.cat([m(x) for m in linears], dim=-1)
    if any(type(m) is not nn.Linear for m in linears):
        raise RuntimeError(f"kernels.projection='fused' needs plain nn.Linear modules, got "
                           f"{sorted({type(m).__name__ for m in linears})}: call model.configure_kernels() after "
                           f"swapping linears (FP8 resolves projection='separate')")
    biases = [m.bias for m in linears] if linears[0].bias is not None else None
    return concat_linear(x, [m.weight for m in linears], biases, backend="torch")


class RMSNorm(nn.Module):
    """weight [D]; HF rounding order (see prism_fast.ops.norms)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps)

    def reset_parameters(self):
        nn.init.ones_(self.weight)


class Rotary:
    """RoPE tables for one config. Not an nn.Module on purpose: inv_freq must stay fp32 under model.to(bf16) and be
    real under a meta-device build, so it is a plain tensor, cached per device."""

    def __init__(self, cfg: ModelConfig):
        self.inv_freq = rotary_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling, cfg.max_position_embeddings)
        self._per_device: dict[torch.device, torch.Tensor] = {}

    def __call__(self, position_ids: torch.Tensor, dtype: torch.dtype):
        dev = position_ids.device
        if dev not in self._per_device:
            self._per_device[dev] = self.inv_freq.to(dev)
        return rotary_cos_sin(position_ids, self._per_device[dev], dtype)


class Attention(nn.Module):
    """Causal self-attention with GQA, optional sliding window and RoPE (given through ctx.rope)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.scale = cfg.softmax_scale
        # HF sliding_window = keys visible INCLUDING the query itself -> flash-attn left window = sliding_window - 1
        self.window_size = (cfg.sliding_window - 1, 0) if cfg.sliding_window else (-1, -1)
        D, bias = cfg.hidden_size, cfg.attention_bias
        self.q_proj = nn.Linear(D, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(D, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(D, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, D, bias=bias)
        self.attn_backend = self.decode_backend = "auto"     # set by CausalLM.configure_kernels (use_kernels)
        self.projection = "fused"

    def use_kernels(self, k) -> None:
        """Keep this module's backends from a resolved ops.KernelChoice."""
        self.attn_backend, self.decode_backend, self.projection = k.attention, k.decode, k.projection

    def forward(self, x_BTD: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        B, T, _ = x_BTD.shape
        qkv = _fused_projection(x_BTD, self.projection, self.q_proj, self.k_proj, self.v_proj)
        nq, nkv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        q, k, v = qkv.split([nq, nkv, nkv], dim=-1)                                # strided views
        q_BTHK = q.view(B, T, self.num_heads, self.head_dim)
        k_BTGK = k.view(B, T, self.num_kv_heads, self.head_dim)
        v_BTGK = v.view(B, T, self.num_kv_heads, self.head_dim)
        if ctx.rope is not None:
            q_BTHK, k_BTGK = apply_rotary(q_BTHK, k_BTGK, *ctx.rope)
        if ctx.cp is not None:  # this rank holds T of the row's tokens; K/V are gathered over the cp group
            o = ctx.cp.attention(q_BTHK.reshape(B * T, self.num_heads, self.head_dim),
                                 k_BTGK.reshape(B * T, self.num_kv_heads, self.head_dim),
                                 v_BTGK.reshape(B * T, self.num_kv_heads, self.head_dim),
                                 softmax_scale=self.scale, window_size=self.window_size)
        elif ctx.cache is None:
            o = varlen_attention(q_BTHK.reshape(B * T, self.num_heads, self.head_dim),
                                 k_BTGK.reshape(B * T, self.num_kv_heads, self.head_dim),
                                 v_BTGK.reshape(B * T, self.num_kv_heads, self.head_dim),
                                 ctx.attn_cu_seqlens, ctx.max_seqlen, causal=True, softmax_scale=self.scale,
                                 window_size=self.window_size, backend=self.attn_backend)
        else:
            o = ctx.cache.layers[self.layer_idx].attend(q_BTHK, k_BTGK, v_BTGK, ctx.cache.seqlens,
                                                        softmax_scale=self.scale, window_size=self.window_size,
                                                        backend=self.decode_backend)
        return self.o_proj(o.reshape(B, T, self.num_heads * self.head_dim))

    def new_cache(self, batch_size, max_seq_len, dtype, device) -> KVCache:
        return KVCache.empty(batch_size, max_seq_len, self.num_kv_heads, self.head_dim, dtype=dtype, device=device)


class MLP(nn.Module):
    """gated=True: down(act(gate(x)) * up(x)) (SwiGLU); gated=False: down(act(up(x))) (e.g. relu^2)."""

    def __init__(self, hidden_size: int, intermediate_size: int, act: str = "silu", *, bias: bool = False,
                 gated: bool = True):
        super().__init__()
        self.act = activation(act)
        if gated:
            self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        else:
            self.gate_proj = None
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)
        self.projection = "fused"                             # set by CausalLM.configure_kernels (use_kernels)

    def use_kernels(self, k) -> None:
        self.projection = k.projection

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        if self.gate_proj is None:
            return self.down_proj(self.act(self.up_proj(x_BTD)))
        g, u = _fused_projection(x_BTD, self.projection, self.gate_proj, self.up_proj).chunk(2, dim=-1)
        return self.down_proj(self.act(g) * u)

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> "MLP":
        return cls(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act, bias=cfg.mlp_bias, gated=cfg.mlp_gated)
