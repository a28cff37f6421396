"""ModelConfig: one dataclass for every model family, parsed from / written back to Hugging Face config.json.

How families plug in (hybrid families included): a family module `prism_fast.models.<name>` registered in
`FAMILIES` below (imported lazily, on first use) exposes
    config_from_hf(d: dict) -> ModelConfig     parse a config.json dict; raise ValueError for what it cannot run
                                               (MoE, ...); keep the raw dict in `hf_config`
    build(cfg: ModelConfig) -> CausalLM        construct the model (called under the target device context)
    tiny_hf_config(model_type) -> dict         a few-M-parameter config.json dict used by tiny_config() in tests
Field names follow transformers where one exists. Family-specific knobs that have no field here are read from
`cfg.hf_config` (the raw config.json), which save_pretrained writes back so that round trips are faithful.
Unusual: `layer_types` uses our vocabulary ("attention" | "mamba" | "mlp"), one entry per layer, whatever the
family calls them (HF granitemoehybrid: "attention"/"mamba", nemotron_h: the "M-*" hybrid_override_pattern).
"""
from __future__ import annotations

import copy
import dataclasses
import importlib
import math
from dataclasses import dataclass, field

# model_type -> module that implements it (lazily imported so that a broken family never blocks the others)
FAMILIES: dict[str, str] = {
    "llama": "prism_fast.models.llama",
    "mistral": "prism_fast.models.llama",
    "granite": "prism_fast.models.llama",
    "granitemoehybrid": "prism_fast.models.granitemoehybrid",
    "nemotron_h": "prism_fast.models.nemotron_h",
}
LAYER_TYPES = ("attention", "mamba", "mlp")
# config.json keys that, when > 0, mean a mixture-of-experts model (not supported: dense MLPs only)
MOE_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


@dataclass(kw_only=True)
class ModelConfig:
    """Architecture of one model. Sizes use HF names; see the module docstring for how families extend it."""
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int | None = None
    """None -> num_attention_heads (multi-head attention)."""
    head_dim: int | None = None
    """None -> hidden_size // num_attention_heads."""
    hidden_act: str = "silu"
    """MLP activation: silu / gelu / gelu_pytorch_tanh / relu / relu2."""
    mlp_gated: bool = True
    """SwiGLU-style gate_proj * up_proj (llama); False = up_proj -> act -> down_proj (nemotron_h relu^2 MLP)."""
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    """HF rope_scaling dict ({"rope_type": "llama3", ...}) or None for plain RoPE."""
    position_embedding_type: str = "rope"
    """"rope" or "nope" (no positional encoding in attention: Granite-4.0-H, Nemotron-H)."""
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    sliding_window: int | None = None
    """Each query sees this many keys including itself (HF/Mistral semantics); None = full causal."""
    attention_bias: bool = False
    mlp_bias: bool = False
    embedding_multiplier: float = 1.0
    residual_multiplier: float = 1.0
    attention_multiplier: float | None = None
    """Softmax scale; None -> 1/sqrt(head_dim)."""
    logits_scaling: float = 1.0
    """Logits are divided by this (Granite)."""
    layer_types: list[str] | None = None
    """One of LAYER_TYPES per layer; None -> all "attention"."""
    mamba_n_heads: int | None = None
    mamba_d_head: int | None = None
    mamba_d_state: int | None = None
    mamba_n_groups: int | None = None
    mamba_d_conv: int | None = None
    mamba_expand: int | None = None
    mamba_chunk_size: int | None = None
    mamba_conv_bias: bool = True
    mamba_proj_bias: bool = False
    time_step_limit: tuple[float, float] = (0.0, math.inf)
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    hf_config: dict = field(default_factory=dict)
    """The raw config.json this config came from (written back verbatim, plus dtype, by save_pretrained)."""

    def __post_init__(self):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.layer_types is None:
            self.layer_types = ["attention"] * self.num_hidden_layers
        self.layer_types = list(self.layer_types)
        self.time_step_limit = tuple(self.time_step_limit)
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(f"layer_types has {len(self.layer_types)} entries but num_hidden_layers="
                             f"{self.num_hidden_layers}; give one entry per layer")
        bad = sorted(set(self.layer_types) - set(LAYER_TYPES))
        if bad:
            raise ValueError(f"unknown layer types {bad}; valid: {LAYER_TYPES}")
        if "attention" in self.layer_types and self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                             f"num_key_value_heads ({self.num_key_value_heads})")
        if self.position_embedding_type not in ("rope", "nope"):
            raise ValueError(f"position_embedding_type must be 'rope' or 'nope', got {self.position_embedding_type!r}")

    @property
    def softmax_scale(self) -> float:
        return self.attention_multiplier if self.attention_multiplier is not None else self.head_dim ** -0.5

    @property
    def num_attention_layers(self) -> int:
        return sum(t == "attention" for t in self.layer_types)

    @property
    def eos_token_ids(self) -> list[int]:
        e = self.eos_token_id
        return [] if e is None else ([e] if isinstance(e, int) else list(e))

    def replace(self, **changes) -> "ModelConfig":
        """Copy with some fields changed (hf_config is copied unchanged: edit it too if you save the model)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @staticmethod
    def from_hf_dict(d: dict) -> "ModelConfig":
        """Parse an HF config.json dict, dispatching on d["model_type"] to the family's parser."""
        return family_module(d.get("model_type")).config_from_hf(copy.deepcopy(d))


def family_module(model_type):
    """The module implementing `model_type` (ValueError naming the supported types if unknown)."""
    if model_type not in FAMILIES:
        hint = " (a mixture-of-experts family: only dense MLPs are supported)" if "moe" in str(model_type) or \
            model_type in ("mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v3", "olmoe") else ""
        raise ValueError(f"unsupported model_type {model_type!r}{hint}; supported: {sorted(FAMILIES)}")
    return importlib.import_module(FAMILIES[model_type])


def reject_moe(d: dict, keys=MOE_KEYS) -> None:
    """ValueError when a config.json describes a mixture-of-experts model (any of `keys` > 0)."""
    for k in keys:
        n = d.get(k)
        if isinstance(n, int) and n > 0:
            raise ValueError(f"{d.get('model_type')}: mixture-of-experts configs are not supported ({k}={n}); "
                             f"use a dense checkpoint ({k}=0)")


def rope_from_hf(d: dict) -> tuple[float, dict | None]:
    """(rope_theta, rope_scaling) from either the transformers<5 keys (rope_theta, rope_scaling) or the v5
    `rope_parameters` dict. Plain RoPE gives rope_scaling None."""
    params = d.get("rope_parameters") or {}
    scaling = d.get("rope_scaling") or (params if params.get("rope_type", "default") != "default" else None)
    theta = d.get("rope_theta", params.get("rope_theta", 10000.0))
    if scaling is not None:
        scaling = {k: v for k, v in scaling.items() if k != "rope_theta"}
        if "rope_type" not in scaling and "type" in scaling:
            scaling["rope_type"] = scaling.pop("type")
    return float(theta), scaling


def tiny_config(model_type: str = "llama", **overrides) -> ModelConfig:
    """A small random-init config (a few M parameters) of the family, for tests. `overrides` are config.json keys
    (for llama/mistral/granite they coincide with ModelConfig field names), applied before parsing."""
    d = family_module(model_type).tiny_hf_config(model_type)
    d.update(overrides)
    return ModelConfig.from_hf_dict(d)
