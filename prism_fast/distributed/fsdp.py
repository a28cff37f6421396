"""FSDP2 (`fully_shard`) per block and on the root, HSDP through a 2-D mesh, mixed precision by policy only.

Layout (torchtitan's): each entry of `model.blocks` is its own FSDP unit (all-gather / reduce-scatter per block,
overlapped with compute by FSDP2's implicit prefetch); the root unit holds the rest -- embeddings, final norm and
LM head. Tied embeddings (SmolLM2) stay valid because the shared weight lives in the root unit only.
The last block is not resharded after forward (its params are needed first in backward), as in torchtitan.

Gradient division: FSDP2 divides reduced grads by the data-parallel size by default. The trainer normalizes the
loss by the GLOBAL valid-token count (summed over ranks and micro-steps), so grads must be SUMMED across ranks:
`disable_gradient_division` sets the divide factor to 1 with sum-only reductions (torchtitan's
disable_fsdp_gradient_division); on a torch without that switch the trainer multiplies the loss by dp size.
"""
from __future__ import annotations

import torch
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32,
          "fp16": torch.float16, "float16": torch.float16}


def to_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r} is not known; use one of {sorted(DTYPES)}")
    return DTYPES[name]


def apply_fsdp(model: torch.nn.Module, mesh: DeviceMesh, *, param_dtype: torch.dtype,
               reduce_dtype: torch.dtype = torch.float32, reshard_after_forward: bool = True) -> torch.nn.Module:
    """Shard `model` in place. model.blocks: nn.ModuleList of blocks (models contract). Returns the model."""
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    blocks = list(model.blocks)
    for i, block in enumerate(blocks):
        fully_shard(block, mesh=mesh, mp_policy=mp,
                    reshard_after_forward=reshard_after_forward and i < len(blocks) - 1)
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    return model


def disable_gradient_division(model: torch.nn.Module) -> bool:
    """Make FSDP reduce gradients with a plain SUM (no 1/dp_size). Returns False when this torch cannot (then the
    caller must scale the loss by the data-parallel size instead).

    divide factor 1 alone would make FSDP use ReduceOp.PREMUL_SUM(1.0), which gloo does not implement; forcing
    sum-only reductions turns it into SUM with no post-division, on NCCL and gloo alike."""
    mods = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if mods and _dp_size(mods[0]) == 1:
        # One data-parallel rank: FSDP2 already sums (nothing to divide). Setting factor 1.0 here would make its
        # single-rank path run an extra `grads / 1.0` pass over every gradient per step (~150 ms on SmolLM2-135M,
        # 2-core CPU).
        return True
    if not all(hasattr(m, "set_force_sum_reduction_for_comms") for m in mods):
        return False
    for m in mods:
        m.set_gradient_divide_factor(1.0)
        m.set_force_sum_reduction_for_comms(True)
    return True


def _dp_size(module: FSDPModule) -> int:
    """Number of ranks a gradient of `module` is reduced over (shard x replicate groups)."""
    for p in module.parameters():
        mesh = getattr(p, "device_mesh", None)
        if mesh is not None:
            return mesh.size()
    return 1
