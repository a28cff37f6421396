"""The engine's view of the policy weights: a plain model is used as is (no copy); an FSDP2-sharded one is
all-gathered once per generate() call and resharded after it.

Why not FSDP2's own per-forward gathering: decoding runs one forward per token, and ranks generate different
numbers of tokens, so per-forward all-gathers would cost a collective per token and deadlock when one rank stops
first. Instead every FSDPModule is unsharded up front (one collective round, all ranks call generate together)
and told not to reshard after forward; then the decode loop runs with no collectives at all. On exit the modules
are resharded (the gathered copies freed) and their reshard-after-forward setting restored. Peak memory during
generation is therefore one full copy of the (param_dtype) weights besides the shards.
"""
from __future__ import annotations

import contextlib

import torch


def _fsdp_modules(model) -> list:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:                                  # torch built without distributed
        return []
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def _reshards_after_forward(m) -> bool:
    """FSDP2 keeps the setting as the param group's post-forward mesh info (None = keep unsharded)."""
    group = m._get_fsdp_state()._fsdp_param_group
    return group is not None and group.post_forward_mesh_info is not None


@contextlib.contextmanager
def full_weights(model):
    """Context in which `model`'s parameters are full tensors (see module docstring); a no-op for plain models."""
    mods = _fsdp_modules(model)
    if not mods:
        yield
        return
    before = [_reshards_after_forward(m) for m in mods]
    for m in mods:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    try:
        yield
    finally:
        for m, flag in zip(mods, before):
            m.reshard()
            m.set_reshard_after_forward(flag, recurse=False)


def is_sharded(model) -> bool:
    return bool(_fsdp_modules(model))


def model_device(model) -> torch.device:
    return model.lm_head_module().weight.device


@contextlib.contextmanager
def separate_projections(model):
    """Run q/k/v and gate/up as separate GEMMs inside the context (restored after). Why: the model's "fused"
    projection concatenates the weights on every call (ops.concat_linear keeps no concatenated copy, for FSDP2),
    which pays off for thousands of tokens but dominates a decode step of a few dozen rows (SmolLM2, 16 rows, 2-core
    CPU: the weight copies took 21% of decode time)."""
    mods = [m for m in model.modules() if getattr(m, "projection", None) == "fused"]
    for m in mods:
        m.projection = "separate"
    try:
        yield
    finally:
        for m in mods:
            m.projection = "fused"
