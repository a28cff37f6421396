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


def _reshard_settings(m):
    """What set_reshard_after_forward changes, saved to be restored exactly (FSDP2 private state, torch 2.6+)."""
    state = m._get_fsdp_state()
    return state._auto_reshard_after_forward, [g.post_forward_mesh_info for g in state._fsdp_param_groups]


def _restore_reshard_settings(m, saved) -> None:
    state = m._get_fsdp_state()
    state._auto_reshard_after_forward = saved[0]
    for g, info in zip(state._fsdp_param_groups, saved[1]):
        g.post_forward_mesh_info = info


@contextlib.contextmanager
def full_weights(model):
    """Context in which `model`'s parameters are full tensors (see module docstring); a no-op for plain models.
    Every rank must enter it (the unshard is a collective); inside, ranks may run different numbers of steps."""
    mods = _fsdp_modules(model)
    if not mods:
        yield
        return
    # the engine calls the blocks, not the root's forward: make the outermost module FSDP's root first (what its
    # first forward would do), or each block would initialize itself as a root
    mods[0]._get_fsdp_state()._lazy_init()
    saved = [_reshard_settings(m) for m in mods]
    for m in mods:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    try:
        yield
    finally:
        for m, s in zip(mods, saved):
            m.reshard()
            _restore_reshard_settings(m, s)


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
