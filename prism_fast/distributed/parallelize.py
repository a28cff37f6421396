"""parallelize(model, parallel_dims, cfg): FP8 swap -> activation checkpointing -> per-block compile -> FSDP2.

The order is torchtitan's (there: TP, AC, compile, FSDP): AC and compile wrap the blocks that FSDP then shards,
so FSDP's all-gather hooks stay outside the checkpointed / compiled regions. Runs on a meta-device model; the
caller materializes the (sharded) parameters afterwards with `to_empty` and loads weights shard by shard.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from prism_fast.distributed.ac import MODES as AC_MODES, apply_ac
from prism_fast.distributed.compile import apply_compile
from prism_fast.distributed.context_parallel import check_cp_supported
from prism_fast.distributed.fp8 import apply_fp8
from prism_fast.distributed.fsdp import apply_fsdp, disable_gradient_division, to_dtype
from prism_fast.distributed.parallel_dims import ParallelDims
from prism_fast.ranges import check_ranges, ranged


@dataclass(kw_only=True, slots=True)
class Config:
    dp_replicate: int = ranged(1, ge=1)
    """HSDP replica groups (PRISM: 16 x 8 GPUs). 1 = FSDP over all ranks."""
    dp_shard: int = -1
    """FSDP shard group size; -1 = world_size // (dp_replicate * cp)."""
    cp: int = ranged(1, ge=1)
    """Context parallelism: ranks sharing each packed row (load-balanced chunks, K/V all-gather per attention
    layer; distributed/context_parallel.py). Dense models only. PRISM long-context phase: 4."""
    param_dtype: str = "bf16"
    """Compute dtype of the all-gathered params (MixedPrecisionPolicy.param_dtype). Master weights, grads after
    reduction and optimizer state stay fp32. Use fp32 for CPU tests that compare bitwise."""
    reduce_dtype: str = "fp32"
    """Gradient reduce-scatter / all-reduce dtype."""
    ac: str = "none"
    """Activation checkpointing: none | full | every (every `ac_every`-th block)."""
    ac_every: int = ranged(2, ge=1)
    compile: bool = False
    """torch.compile each block (CPU: inductor + g++; first steps are slow while compiling)."""
    fp8: bool = False
    """FP8 linears via Transformer Engine (CUDA + TE only; otherwise a RuntimeError at build)."""
    reshard_after_forward: bool = True
    """FSDP2 ZeRO-3 style resharding (False = keep gathered params until backward: more memory, fewer gathers)."""
    expected_world_size: int | None = ranged(None, ge=1)
    """If set (recipes for a fixed cluster), the launch must match: a clear error otherwise."""

    def __post_init__(self):
        to_dtype(self.param_dtype), to_dtype(self.reduce_dtype)
        check_ranges(self, "parallel")
        if self.dp_shard != -1 and self.dp_shard < 1:
            raise ValueError(f"parallel.dp_shard={self.dp_shard} must be -1 (all remaining ranks) or >= 1")
        if self.ac not in AC_MODES:
            raise ValueError(f"parallel.ac={self.ac!r}; use one of {list(AC_MODES)}")

    def build(self, world_size: int) -> ParallelDims:
        if self.expected_world_size is not None and world_size != self.expected_world_size:
            raise ValueError(
                f"this recipe is laid out for {self.expected_world_size} ranks (dp_replicate={self.dp_replicate} x "
                f"dp_shard={self.dp_shard} x cp={self.cp}) but {world_size} were launched; launch "
                f"{self.expected_world_size} processes or override --parallel.dp_replicate/--parallel.dp_shard and "
                f"--parallel.expected_world_size={world_size} (and the batch size)")
        return ParallelDims(dp_replicate=self.dp_replicate, dp_shard=self.dp_shard, cp=self.cp,
                            world_size=world_size)


def parallelize(model: torch.nn.Module, dims: ParallelDims, cfg: Config, device_type: str) -> dict:
    """Apply FP8, AC, compile and FSDP2 in place. Returns a dict describing what was applied (for logging)."""
    info = {}
    if dims.cp > 1 and hasattr(model, "config"):
        check_cp_supported(model.config, dims.cp)
    if cfg.fp8:
        info["fp8_linears"] = apply_fp8(model)
    info["ac_blocks"] = apply_ac(model, cfg.ac, cfg.ac_every)
    if cfg.compile:
        # Kernel backends (incl. the compiled "inductor" loss on CPU) are the model's KernelChoice, resolved by the
        # caller with compile=cfg.compile (train/model_init.py), not switched here.
        info["compiled_blocks"] = apply_compile(model)
    dims.build_mesh(device_type)
    # With a 1-rank shard group a "shard" is the whole tensor: resharding after forward frees only the bf16
    # compute copies and costs a second all-gather (cast + copies) in backward, so it is skipped there.
    reshard = cfg.reshard_after_forward and dims.dp_shard > 1
    apply_fsdp(model, dims.fsdp_mesh(), param_dtype=to_dtype(cfg.param_dtype),
               reduce_dtype=to_dtype(cfg.reduce_dtype), reshard_after_forward=reshard)
    info["grad_sum"] = disable_gradient_division(model)
    info["mesh"] = {"dp_replicate": dims.dp_replicate, "dp_shard": dims.dp_shard, "cp": dims.cp}
    return info
