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
