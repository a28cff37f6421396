"""Llama-family decoders: llama, mistral (sliding window), granite (embedding/residual/attention multipliers,
logits scaling). One pre-norm block: x += r * attn(norm(x)); x += r * mlp(norm(x)) with r = residual_multiplier.

Parameter names are the HF ones (model.layers.{i}.self_attn.q_proj.weight, ...). Granite-4.0 Micro
(granitemoehybrid, all attention) lives in models/granitemoehybrid.py.
"""
from __future__ import annotations

import torch
from torch import nn

from prism_fast.models.base import CausalLM
from prism_fast.models.config import ModelConfig, reject_moe, rope_from_hf
from prism_fast.models.layers import MLP, Attention, ForwardContext, RMSNorm

_ARCH = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "granite": "GraniteForCausalLM"}


class DecoderBlock(nn.Module):
    """input_layernorm -> self_attn -> residual; post_attention_layernorm -> mlp -> residual."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.residual_multiplier = cfg.residual_multiplier
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer_idx)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP.from_config(cfg)

    def forward(self, x_BTD: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        r = self.residual_multiplier
        h = self.self_attn(self.input_layernorm(x_BTD), ctx)
        x_BTD = x_BTD + (h * r if r != 1.0 else h)
        h = self.mlp(self.post_attention_layernorm(x_BTD))
        return x_BTD + (h * r if r != 1.0 else h)

    def new_cache(self, batch_size, max_seq_len, dtype, device):
        return self.self_attn.new_cache(batch_size, max_seq_len, dtype, device)


def config_from_hf(d: dict) -> ModelConfig:
    """Parse a llama / mistral / granite config.json dict."""
    mt = d["model_type"]
    reject_moe(d)
    theta, scaling = rope_from_hf(d)
    num_heads = d["num_attention_heads"]
    sliding = d.get("sliding_window") if mt == "mistral" else None
    granite = mt == "granite"
    return ModelConfig(
        model_type=mt, vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
        intermediate_size=d["intermediate_size"], num_hidden_layers=d["num_hidden_layers"],
        num_attention_heads=num_heads, num_key_value_heads=d.get("num_key_value_heads") or num_heads,
        head_dim=d.get("head_dim") or d["hidden_size"] // num_heads, hidden_act=d.get("hidden_act", "silu"),
        rms_norm_eps=d.get("rms_norm_eps", 1e-6), rope_theta=theta, rope_scaling=scaling,
        max_position_embeddings=d.get("max_position_embeddings", 2048),
        tie_word_embeddings=d.get("tie_word_embeddings", False), sliding_window=sliding,
        attention_bias=d.get("attention_bias", False), mlp_bias=d.get("mlp_bias", False),
        embedding_multiplier=d.get("embedding_multiplier", 1.0) if granite else 1.0,
        residual_multiplier=d.get("residual_multiplier", 1.0) if granite else 1.0,
        attention_multiplier=d.get("attention_multiplier", 1.0) if granite else None,
        logits_scaling=d.get("logits_scaling", 1.0) if granite else 1.0,
        bos_token_id=d.get("bos_token_id"), eos_token_id=d.get("eos_token_id"), pad_token_id=d.get("pad_token_id"),
        hf_config=d)


def build(cfg: ModelConfig) -> CausalLM:
    return CausalLM(cfg, [DecoderBlock(cfg, i) for i in range(cfg.num_hidden_layers)])


def tiny_hf_config(model_type: str = "llama") -> dict:
    """~0.2M-parameter config.json dicts (GQA 4:2, head_dim 16, vocab 256) for tests."""
    d = {"model_type": model_type, "architectures": [_ARCH[model_type]], "vocab_size": 256, "hidden_size": 64,
         "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "head_dim": 16, "hidden_act": "silu", "max_position_embeddings": 512, "rms_norm_eps": 1e-6,
         "rope_theta": 10000.0, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2}
    if model_type == "mistral":
        d["sliding_window"] = 7
    if model_type == "granite":
        d.update(embedding_multiplier=12.0, residual_multiplier=0.22, attention_multiplier=0.0078125,
                 logits_scaling=8.0)
    return d
