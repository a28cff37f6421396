"""Model-agnostic parallelism: device mesh (ParallelDims), FSDP2/HSDP, activation checkpointing, per-block
torch.compile, FP8 via Transformer Engine. Applied from outside to a model built on the meta device."""
from prism_fast.distributed.parallel_dims import ParallelDims, destroy_distributed, init_distributed
from prism_fast.distributed.parallelize import Config as ParallelConfig, parallelize as parallelize_model

__all__ = ["ParallelDims", "ParallelConfig", "destroy_distributed", "init_distributed", "parallelize_model"]
