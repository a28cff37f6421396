"""Model-agnostic parallelism: device mesh (ParallelDims), FSDP2/HSDP, activation checkpointing, per-block
torch.compile, FP8 via Transformer Engine. Applied from outside to a model built on the meta device."""
from prism_fast.distributed.parallel_dims import ParallelDims, init_distributed, destroy_distributed
from prism_fast.distributed.parallelize import Config, parallelize

__all__ = ["ParallelDims", "init_distributed", "destroy_distributed", "Config", "parallelize"]
