"""nemotron_h: NVIDIA Nemotron-H (Mamba2 / attention / relu^2-MLP layers, e.g. Nemotron-H-8B).

Every layer holds ONE mixer behind its own pre-norm and residual: x + mixer(norm(x)), where the mixer is chosen by
`hybrid_override_pattern` ("M" Mamba2, "*" attention, "-" MLP; "E" = mixture of experts, rejected) or, in
transformers >= 5 configs, `layers_block_type` (linear_attention / full_attention / mlp / moe).
Unusual next to llama: attention has NO positional encoding (no RoPE) and no bias, softmax scale 1/sqrt(head_dim);
the MLP is up_proj -> relu^2 -> down_proj (no gate); the Mamba in/out projections use `use_bias`; the Mamba dt is
clamped to `time_step_limit` (alias `mamba_dt_limit`, default (0, inf)), as mamba-ssm and transformers >= 5.25 do
(transformers <= 5.24 clamped to (time_step_min, inf) instead); the final norm
multiplies its weight in fp32 before casting (unlike llama's RMSNorm). Checkpoint names are the released ones:
backbone.embeddings, backbone.layers.{i}.{norm, mixer.*}, backbone.norm_f, lm_head (transformers renames
backbone. -> model. on load and back on save).
Semantics checked against transformers 5.25 modeling_nemotron_h.py (its torch path; no mamba_ssm on CPU).
"""
from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from prism_fast.models.base import CausalLM
from prism_fast.models.config import ModelConfig
from prism_fast.models.layers import MLP, Attention, ForwardContext
from prism_fast.models.mamba2 import Mamba2Mixer, hf_float

_PATTERN = {"M": "mamba", "*": "attention", "-": "mlp", "E": "moe"}
_BLOCK_TYPE = {"linear_attention": "mamba", "mamba": "mamba", "full_attention": "attention",
               "attention": "attention", "mlp": "mlp", "moe": "moe"}


def layer_types_from_hf(d: dict) -> list[str]:
    """Our per-layer types ("mamba" | "attention" | "mlp", or "moe") from either config.json spelling."""
    types = d.get("layers_block_type") or d.get("layer_types")
    if types is not None:
        bad = sorted(set(types) - set(_BLOCK_TYPE))
        if bad:
            raise ValueError(f"nemotron_h: unknown layers_block_type entries {bad}; valid: {sorted(_BLOCK_TYPE)}")
        return [_BLOCK_TYPE[t] for t in types]
    pattern = d.get("hybrid_override_pattern")
    if pattern is None:
        # transformers' default layers_block_type contains an MoE layer; no sensible default exists
        raise ValueError("nemotron_h: config.json needs hybrid_override_pattern (e.g. 'M-M*-') or layers_block_type")
    bad = sorted(set(pattern) - set(_PATTERN))
    if bad:
        raise ValueError(f"nemotron_h: hybrid_override_pattern has unknown characters {bad}; valid: M * - E")
    return [_PATTERN[c] for c in pattern]


def _get(d, *keys, default=None):
    """First present key (Nemotron-H configs exist with legacy mamba_* and new names for the same field)."""
    for k in keys:
        if k in d and d[k] is not None:
            return d[k]
    return default


def config_from_hf(d: dict) -> ModelConfig:
    """Parse a nemotron_h config.json dict (HF defaults for missing keys, as NemotronHConfig)."""
    layer_types = layer_types_from_hf(d)
    if "moe" in layer_types:
        n = layer_types.count("moe")
        raise ValueError(f"nemotron_h: mixture-of-experts layers are not supported ({n} 'E'/'moe' layers in "
                         "hybrid_override_pattern); use a dense Nemotron-H (patterns of M, * and - only)")
    if _get(d, "mamba_hidden_act", default="silu") not in ("silu", "swish"):
        raise ValueError(f"nemotron_h: mamba_hidden_act must be 'silu', got {d['mamba_hidden_act']!r}")
    tie = d.get("tie_word_embeddings", False)
    if tie:
        # NemotronHForCausalLM has no tied-weights entry: transformers keeps lm_head separate whatever the config.
        warnings.warn("nemotron_h: tie_word_embeddings=True is ignored (as transformers does); lm_head stays a "
                      "separate weight", stacklevel=2)
    heads = d.get("num_attention_heads", 32)
    dt_limit = tuple(hf_float(v) for v in (_get(d, "time_step_limit", "mamba_dt_limit", default=None)
                                            or (0.0, math.inf)))
    m_heads, m_head_dim = d.get("mamba_num_heads", 128), d.get("mamba_head_dim", 64)
    return ModelConfig(
        model_type="nemotron_h", vocab_size=d.get("vocab_size", 131072), hidden_size=d.get("hidden_size", 4096),
        intermediate_size=d.get("intermediate_size", 21504), num_hidden_layers=len(layer_types),
        num_attention_heads=heads, num_key_value_heads=d.get("num_key_value_heads") or heads,
        head_dim=_get(d, "head_dim", "attention_head_dim", default=128), hidden_act=d.get("mlp_hidden_act", "relu2"),
        mlp_gated=False,
        rms_norm_eps=d.get("layer_norm_epsilon", 1e-5), position_embedding_type="nope",
        max_position_embeddings=d.get("max_position_embeddings", 4096),
        tie_word_embeddings=False,
        attention_bias=False,            # NemotronHAttention builds its projections without bias, whatever the config
        mlp_bias=d.get("mlp_bias", False), attention_multiplier=None, layer_types=layer_types,
        mamba_n_heads=m_heads, mamba_d_head=m_head_dim, mamba_d_state=d.get("ssm_state_size", 128),
        mamba_n_groups=_get(d, "n_groups", "mamba_n_groups", default=8),
        mamba_d_conv=_get(d, "conv_kernel", "mamba_d_conv", default=4),
        mamba_expand=_get(d, "expand", "mamba_expand", default=2),
        mamba_chunk_size=_get(d, "chunk_size", "mamba_chunk_size", default=128),
        mamba_conv_bias=_get(d, "use_conv_bias", "mamba_conv_bias", default=True),
        mamba_proj_bias=d.get("use_bias", False), time_step_limit=dt_limit,
        bos_token_id=d.get("bos_token_id", 1), eos_token_id=d.get("eos_token_id", 2),
        pad_token_id=d.get("pad_token_id", 0), hf_config=d)


def tiny_hf_config(model_type: str = "nemotron_h") -> dict:
    """A ~1M-parameter Nemotron-H with every layer kind ("M-M*-": mamba, mlp, mamba, attention, mlp)."""
    return {
        "model_type": "nemotron_h", "architectures": ["NemotronHForCausalLM"],
        "vocab_size": 512, "hidden_size": 64, "intermediate_size": 160, "hybrid_override_pattern": "M-M*-",
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "mlp_hidden_act": "relu2",
        "layer_norm_epsilon": 1e-5, "max_position_embeddings": 512, "mamba_num_heads": 8, "mamba_head_dim": 16,
        "ssm_state_size": 16, "n_groups": 2, "conv_kernel": 4, "expand": 2, "chunk_size": 16,
        "use_conv_bias": True, "use_bias": False, "mlp_bias": False, "time_step_min": 0.001,
        "time_step_max": 0.1, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
    }


class NemotronHRMSNorm(nn.Module):
    """RMSNorm with transformers' NemotronHRMSNorm rounding: (weight_fp32 * normed_fp32).to(x.dtype).

    Not prism_fast.ops.rms_norm: that one multiplies after the downcast (llama order), one bf16 ulp apart."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def reset_parameters(self):
        nn.init.ones_(self.weight)

    def forward(self, x):
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight.float() * xf).to(x.dtype)


class NemotronHBlock(nn.Module):
    """x + mixer(norm(x)) with mixer = Mamba2Mixer | Attention (no RoPE) | MLP (relu^2, ungated)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx, self.layer_type = layer_idx, cfg.layer_types[layer_idx]
        self.norm = NemotronHRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        if self.layer_type == "mamba":
            d = cfg.hf_config
            dt_init = (hf_float(_get(d, "time_step_min", "mamba_dt_min", default=0.001)),
                       hf_float(_get(d, "time_step_max", "mamba_dt_max", default=0.1)),
                       hf_float(_get(d, "time_step_floor", "mamba_dt_init_floor", default=1e-4)))
            self.mixer = Mamba2Mixer.from_config(cfg, activation=d.get("mamba_hidden_act", "silu"),
                                                 dt_init_range=dt_init)
        elif self.layer_type == "attention":
            self.mixer = Attention(cfg, layer_idx)
        else:
            self.mixer = MLP.from_config(cfg)

    def forward(self, x_BTD: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        h = self.norm(x_BTD)
        if self.layer_type == "mamba":
            h = self.mixer(h, seq_idx=ctx.seq_idx,
                           cache=None if ctx.cache is None else ctx.cache.layers[self.layer_idx])
        elif self.layer_type == "attention":
            h = self.mixer(h, ctx)
        else:
            h = self.mixer(h)
        return x_BTD + h

    def new_cache(self, batch_size, max_seq_len, dtype, device):
        if self.layer_type == "mlp":
            return None
        return self.mixer.new_cache(batch_size, max_seq_len, dtype, device)


def build(cfg: ModelConfig) -> CausalLM:
    """Nemotron-H causal LM with the released checkpoint names (backbone.embeddings, backbone.layers,
    backbone.norm_f, lm_head)."""
    blocks = [NemotronHBlock(cfg, i) for i in range(cfg.num_hidden_layers)]
    return CausalLM(cfg, blocks, prefix="backbone", embed_name="embeddings", norm_name="norm_f",
                    norm=NemotronHRMSNorm(cfg.hidden_size, cfg.rms_norm_eps))
