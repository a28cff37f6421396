"""prism_fast.models: one config dataclass, shared layers, per-family blocks, HF/GGUF IO, cache and generation.

Families: llama, mistral, granite (models/llama.py), granitemoehybrid, nemotron_h (hybrid Mamba2 families).
Contracts: docs/models.md. No distributed or training code here (applied from outside).
"""
from __future__ import annotations

import torch

from prism_fast.models.base import CausalLM
from prism_fast.models.cache import KVCache, LayerCache, ModelCache
from prism_fast.models.config import FAMILIES, ModelConfig, family_module, tiny_config
from prism_fast.models.generate import generate, sample_next
from prism_fast.models.hf_io import (from_pretrained, load_tokenizer, save_pretrained, smollm2_gguf_path,
                                     smollm2_hf_dir)


def build_model(cfg: ModelConfig, *, device="cpu", dtype=torch.float32, kernels=None,
                compile: bool = False) -> CausalLM:
    """Construct the family's model on `device` ("meta" allocates nothing: load weights with assign=True).

    kernels: ops.KernelConfig, a dict of field -> backend ({"attention": "triton"}), a KernelChoice, or None (all
    "auto"); resolved once here for `device` / `dtype` (compile=True: the choice made for compiled blocks) into
    `model.kernels`. A meta build resolves for the CPU; moving the model later (.to / .cuda / to_empty) resolves the
    same request again for the new device and dtype (CausalLM._apply)."""
    with torch.device(device):
        model = family_module(cfg.model_type).build(cfg)
    model = model.to(dtype=dtype)
    dev = torch.device(device)
    model.configure_kernels(kernels, device="cpu" if dev.type == "meta" else dev, compile=compile)
    return model


__all__ = ["CausalLM", "FAMILIES", "KVCache", "LayerCache", "ModelCache", "ModelConfig", "build_model",
           "from_pretrained", "generate", "load_tokenizer", "sample_next", "save_pretrained", "smollm2_gguf_path",
           "smollm2_hf_dir", "tiny_config"]
