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


def _fused_projection(x: torch.Tensor, *linears: nn.Linear) -> torch.Tensor:
    """Several nn.Linear of the same input as ONE GEMM (ops.concat_linear); the params keep their HF names.
    x [..., D] -> [..., sum of out_features] (the outputs side by side, in argument order)."""
    biases = [m.bias for m in linears] if linears[0].bias is not None else None
    return concat_linear(x, [m.weight for m in linears], biases)


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

    def forward(self, x_BTD: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        B, T, _ = x_BTD.shape
        qkv = _fused_projection(x_BTD, self.q_proj, self.k_proj, self.v_proj)
        nq, nkv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        q, k, v = qkv.split([nq, nkv, nkv], dim=-1)                                # strided views
        q_BTHK = q.view(B, T, self.num_heads, self.head_dim)
        k_BTGK = k.view(B, T, self.num_kv_heads, self.head_dim)
        v_BTGK = v.view(B, T, self.num_kv_heads, self.head_dim)
        if ctx.rope is not None:
            q_BTHK, k_BTGK = apply_rotary(q_BTHK, k_BTGK, *ctx.rope)
        if ctx.cache is None:
            o = varlen_attention(q_BTHK.reshape(B * T, self.num_heads, self.head_dim),
                                 k_BTGK.reshape(B * T, self.num_kv_heads, self.head_dim),
                                 v_BTGK.reshape(B * T, self.num_kv_heads, self.head_dim),
                                 ctx.attn_cu_seqlens, ctx.max_seqlen, causal=True, softmax_scale=self.scale,
                                 window_size=self.window_size)
        else:
            o = ctx.cache.layers[self.layer_idx].attend(q_BTHK, k_BTGK, v_BTGK, ctx.cache.seqlens,
                                                        softmax_scale=self.scale, window_size=self.window_size)
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

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        if self.gate_proj is None:
            return self.down_proj(self.act(self.up_proj(x_BTD)))
        g, u = _fused_projection(x_BTD, self.gate_proj, self.up_proj).chunk(2, dim=-1)
        return self.down_proj(self.act(g) * u)

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> "MLP":
        return cls(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act, bias=cfg.mlp_bias, gated=cfg.mlp_gated)
