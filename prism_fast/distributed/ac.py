"""Activation checkpointing of whole blocks: "none", "full" (every block) or every k-th block ("selective" in
torchtitan's layer-wise sense: `every=k` recomputes blocks 0, k, 2k, ...).

Wraps with torch's checkpoint_wrapper (non-reentrant), applied BEFORE fully_shard, as torchtitan does. The
wrapper inserts `_checkpoint_wrapped_module.` into parameter names; state_dict() and DCP's get_model_state_dict
strip it, so checkpoints and exports keep the HF names. Memory: saves only each wrapped block's input
([B, T, D]) instead of its internal activations, at the cost of one extra block forward in backward.
"""
from __future__ import annotations

import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

MODES = ("none", "full", "every")


def apply_ac(model: torch.nn.Module, mode: str = "none", every: int = 1) -> int:
    """Wrap blocks of model.blocks in place; returns how many were wrapped."""
    if mode not in MODES:
        raise ValueError(f"parallel.ac={mode!r}; use one of {list(MODES)}")
    if mode == "none":
        return 0
    k = 1 if mode == "full" else every
    if k < 1:
        raise ValueError(f"parallel.ac_every={every} must be >= 1")
    n = 0
    for i in range(len(model.blocks)):
        if i % k == 0:
            model.blocks[i] = checkpoint_wrapper(model.blocks[i], preserve_rng_state=False)
            n += 1
    return n
