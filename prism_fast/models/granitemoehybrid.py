"""granitemoehybrid: IBM Granite-4.0 (Micro: all attention; H-Micro/H-Tiny-dense: Mamba2 + attention hybrid).

Each decoder layer = pre-norm mixer (Mamba2 or attention, per `layer_types`) + pre-norm dense "shared" MLP, both
residual branches scaled by residual_multiplier; embeddings scaled by embedding_multiplier, logits divided by
logits_scaling, attention softmax scale = attention_multiplier (HF default 1.0, NOT 1/sqrt(head_dim)). Attention
uses RoPE only when position_embedding_type == "rope" (Granite-4.0-H uses none: "nope").
HF parameter names: model.layers.{i}.{input_layernorm, post_attention_layernorm, self_attn.*, mamba.*,
shared_mlp.input_linear (gate and up stacked: [2*I, D], gate first), shared_mlp.output_linear}.
Mixture-of-experts configs (num_local_experts > 0; HF's default when the key is missing is 8) are rejected.
Semantics checked against transformers 5.24 modeling_granitemoehybrid.py (its torch path; no mamba_ssm on CPU).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from prism_fast.models.base import CausalLM
from prism_fast.models.config import ModelConfig, rope_from_hf
from prism_fast.models.layers import Attention, ForwardContext, RMSNorm, activation
from prism_fast.models.mamba2 import Mamba2Mixer, hf_float

# HF spells layer types "mamba"/"attention" (config.json of the released checkpoints) or, since transformers 5,
# "linear_attention"/"full_attention".
_LAYER_TYPE = {"mamba": "mamba", "linear_attention": "mamba", "attention": "attention",
               "full_attention": "attention"}


def config_from_hf(d: dict) -> ModelConfig:
    """Parse a granitemoehybrid config.json dict (HF defaults for missing keys, as GraniteMoeHybridConfig)."""
    n_experts = d.get("num_local_experts", 8)
    if n_experts:
        raise ValueError(f"granitemoehybrid: mixture-of-experts configs are not supported (num_local_experts="
                         f"{n_experts}{', the transformers default' if 'num_local_experts' not in d else ''}); "
                         "only dense Granite-4.0 models (num_local_experts=0, e.g. granite-4.0-micro / h-micro) run")
    hidden, n_layers = d.get("hidden_size", 4096), d.get("num_hidden_layers", 32)
    raw_types = d.get("layer_types") or d.get("layers_block_type") or ["mamba"] * n_layers
    bad = sorted(set(raw_types) - set(_LAYER_TYPE))
    if bad:
        raise ValueError(f"granitemoehybrid: unknown layer_types {bad}; valid: {sorted(_LAYER_TYPE)}")
    layer_types = [_LAYER_TYPE[t] for t in raw_types]
    pos = d.get("position_embedding_type")
    if pos not in (None, "rope", "nope"):
        raise ValueError(f"granitemoehybrid: position_embedding_type must be 'rope' or None, got {pos!r}")
    heads = d.get("num_attention_heads", 32)
    m_heads, expand = d.get("mamba_n_heads", 128), d.get("mamba_expand", 2)
    d_head = d.get("mamba_d_head", "auto")
    if d_head in (None, "auto"):
        d_head = expand * hidden // m_heads
    if "mamba" in layer_types and d_head * m_heads != expand * hidden:
        raise ValueError(f"granitemoehybrid: mamba_n_heads * mamba_d_head ({m_heads} * {d_head}) must equal "
                         f"mamba_expand * hidden_size ({expand} * {hidden})")
    theta, scaling = rope_from_hf(d)
    return ModelConfig(
        model_type="granitemoehybrid", vocab_size=d.get("vocab_size", 32000), hidden_size=hidden,
        intermediate_size=d.get("shared_intermediate_size", 1024), num_hidden_layers=len(layer_types),
        num_attention_heads=heads, num_key_value_heads=d.get("num_key_value_heads") or heads,
        head_dim=d.get("head_dim") or hidden // heads, hidden_act=d.get("hidden_act", "silu"), mlp_gated=True,
        rms_norm_eps=d.get("rms_norm_eps", 1e-6), rope_theta=theta, rope_scaling=scaling,
        position_embedding_type="rope" if pos == "rope" else "nope",
        max_position_embeddings=d.get("max_position_embeddings", 2048),
        tie_word_embeddings=d.get("tie_word_embeddings", False), attention_bias=d.get("attention_bias", False),
        embedding_multiplier=float(d.get("embedding_multiplier", 1.0)),
        residual_multiplier=float(d.get("residual_multiplier", 1.0)),
        attention_multiplier=float(d.get("attention_multiplier", 1.0)),
        logits_scaling=float(d.get("logits_scaling", 1.0)), layer_types=layer_types,
        mamba_n_heads=m_heads, mamba_d_head=d_head, mamba_d_state=d.get("mamba_d_state", 256),
        mamba_n_groups=d.get("mamba_n_groups", 1), mamba_d_conv=d.get("mamba_d_conv", 4), mamba_expand=expand,
        mamba_chunk_size=d.get("mamba_chunk_size", 256), mamba_conv_bias=d.get("mamba_conv_bias", True),
        mamba_proj_bias=d.get("mamba_proj_bias", False),
        time_step_limit=tuple(hf_float(v) for v in (d.get("time_step_limit") or (0.0, math.inf))),
        bos_token_id=d.get("bos_token_id", 1), eos_token_id=d.get("eos_token_id", 2),
        pad_token_id=d.get("pad_token_id"), hf_config=d)


def tiny_hf_config(model_type: str = "granitemoehybrid") -> dict:
    """A ~1M-parameter hybrid (mamba, attention, mamba, attention) with Granite's multipliers, for tests."""
    return {
        "model_type": "granitemoehybrid", "architectures": ["GraniteMoeHybridForCausalLM"],
        "vocab_size": 512, "hidden_size": 64, "shared_intermediate_size": 96, "intermediate_size": 96,
        "num_hidden_layers": 4, "layer_types": ["mamba", "attention", "mamba", "attention"],
        "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_act": "silu", "rms_norm_eps": 1e-5,
        "max_position_embeddings": 512, "position_embedding_type": "nope", "rope_theta": 10000.0,
        "embedding_multiplier": 12.0, "residual_multiplier": 0.22, "attention_multiplier": 0.0625,
        "logits_scaling": 4.0, "num_local_experts": 0, "num_experts_per_tok": 0,
        "mamba_n_heads": 8, "mamba_d_head": 16, "mamba_d_state": 16, "mamba_n_groups": 2, "mamba_d_conv": 4,
        "mamba_expand": 2, "mamba_chunk_size": 16, "mamba_conv_bias": True, "mamba_proj_bias": False,
        "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
    }


class GraniteSharedMLP(nn.Module):
    """Granite's dense MLP: input_linear [2*I, D] holds gate (first half) and up; out = output_linear(act(g) * u)."""

    def __init__(self, hidden_size: int, intermediate_size: int, act: str):
        super().__init__()
        self.act = activation(act)
        self.input_linear = nn.Linear(hidden_size, 2 * intermediate_size, bias=False)
        self.output_linear = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x_BTD):
        gate, up = self.input_linear(x_BTD).chunk(2, dim=-1)
        return self.output_linear(self.act(gate) * up)


class GraniteHybridBlock(nn.Module):
    """x + rm * mixer(norm1(x)), then + rm * shared_mlp(norm2(.)); mixer = mamba or self_attn (one is None)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx, self.layer_type = layer_idx, cfg.layer_types[layer_idx]
        if self.layer_type == "mlp":
            raise ValueError("granitemoehybrid has no MLP-only layers; layer_types must be mamba or attention")
        self.residual_multiplier = cfg.residual_multiplier
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        if self.layer_type == "mamba":
            self.mamba = Mamba2Mixer.from_config(cfg, activation=cfg.hidden_act)
        else:
            self.self_attn = Attention(cfg, layer_idx)
        self.shared_mlp = GraniteSharedMLP(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act)

    def forward(self, x_BTD: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        h = self.input_layernorm(x_BTD)
        if self.layer_type == "mamba":
            h = self.mamba(h, seq_idx=ctx.seq_idx,
                           cache=None if ctx.cache is None else ctx.cache.layers[self.layer_idx])
        else:
            h = self.self_attn(h, ctx)
        x_BTD = x_BTD + h * self.residual_multiplier
        return x_BTD + self.shared_mlp(self.post_attention_layernorm(x_BTD)) * self.residual_multiplier

    def new_cache(self, batch_size, max_seq_len, dtype, device):
        if self.layer_type == "mamba":
            return self.mamba.new_cache(batch_size, max_seq_len, dtype, device)
        return self.self_attn.new_cache(batch_size, max_seq_len, dtype, device)


def build(cfg: ModelConfig) -> CausalLM:
    """Granite-4.0 (hybrid) causal LM with HF parameter names (model.embed_tokens, model.layers, model.norm)."""
    blocks = [GraniteHybridBlock(cfg, i) for i in range(cfg.num_hidden_layers)]
    return CausalLM(cfg, blocks, prefix="model", embed_name="embed_tokens", norm_name="norm")
