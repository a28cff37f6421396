"""Test helpers: our model and its transformers twin with identical weights, and verbose comparisons."""
from __future__ import annotations

import torch
import transformers

from prism_fast.models import build_model, tiny_config


def hf_from_config(cfg, attn="eager"):
    """The transformers model for cfg.hf_config (random init; load weights separately)."""
    hf_cfg = transformers.AutoConfig.for_model(**cfg.hf_config)
    return transformers.AutoModelForCausalLM.from_config(hf_cfg, attn_implementation=attn).eval()


def twin(model_type="llama", *, std=0.1, seed=0, **overrides):
    """(ours, hf) with the same random weights (normal(0, std) matrices, perturbed norm weights)."""
    cfg = tiny_config(model_type, **overrides)
    torch.manual_seed(seed)
    ours = build_model(cfg)
    ours.init_weights(std)
    with torch.no_grad():
        for n, p in ours.named_parameters():
            if "norm" in n:                      # non-trivial norm weights, so a misplaced norm is caught
                p.uniform_(0.5, 1.5)
    hf = hf_from_config(cfg)
    hf.load_state_dict(ours.state_dict(), strict=True)
    return ours.eval(), hf


def max_diff(a, b) -> float:
    return (a.detach().float() - b.detach().float()).abs().max().item()


def assert_close(a, b, atol, what=""):
    d = (a.detach().float() - b.detach().float()).abs()
    if d.max().item() > atol:
        idx = (d == d.max()).nonzero()[0].tolist()
        raise AssertionError(f"{what}: max abs diff {d.max().item():.3g} > {atol} (mean {d.mean().item():.3g}) "
                             f"at {idx}: {a[tuple(idx)].item()} vs {b[tuple(idx)].item()}")
