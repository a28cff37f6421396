"""ParallelDims: the data-parallel layout (dp_replicate x dp_shard) and its DeviceMesh.

Only data parallelism exists here (FSDP when dp_replicate == 1, HSDP otherwise); the mesh is always built with
named axes and callers ask for them by name, never assuming 1-D. The loss / token-count reductions span every
rank (all ranks are data-parallel ranks), so `dp_rank` == global rank and `dp_size` == world size.
Process-group setup lives here too so that `python -m prism_fast.midtrain` (no torchrun) runs as a 1-rank job.
"""
from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(device_type: str, timeout_s: int = 1800) -> tuple[int, int, int]:
    """Initialize the default process group (nccl on CUDA, gloo on CPU). Works without torchrun (world size 1).

    Returns (rank, world_size, local_rank).
    """
    if "RANK" not in os.environ:  # plain `python -m prism_fast.midtrain`: a 1-rank job
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        backend = "cuda:nccl,cpu:gloo" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return dist.get_rank(), dist.get_world_size(), local_rank


def destroy_distributed():
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


@dataclass(kw_only=True, slots=True)
class ParallelDims:
    dp_replicate: int = 1
    """HSDP replica groups (PRISM: 16). 1 = plain FSDP."""
    dp_shard: int = -1
    """FSDP shard group size (PRISM: 8). -1 = world_size // dp_replicate."""
    world_size: int = 1
    _mesh: DeviceMesh | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.dp_replicate < 1:
            raise ValueError(f"parallel.dp_replicate={self.dp_replicate} must be >= 1")
        if self.dp_shard == -1:
            if self.world_size % self.dp_replicate:
                raise ValueError(f"world size {self.world_size} is not divisible by parallel.dp_replicate="
                                 f"{self.dp_replicate}; launch a multiple of it or change dp_replicate")
            self.dp_shard = self.world_size // self.dp_replicate
        if self.dp_shard < 1 or self.dp_replicate * self.dp_shard != self.world_size:
            raise ValueError(
                f"parallel.dp_replicate ({self.dp_replicate}) x parallel.dp_shard ({self.dp_shard}) must equal the "
                f"world size ({self.world_size}); launch with torchrun --nproc_per_node/--nnodes giving "
                f"{self.dp_replicate * max(self.dp_shard, 1)} processes or set --parallel.dp_shard=-1")

    @property
    def dp_size(self) -> int:
        return self.world_size

    @property
    def hsdp(self) -> bool:
        return self.dp_replicate > 1

    def build_mesh(self, device_type: str) -> DeviceMesh:
        """2-D ("dp_replicate", "dp_shard") mesh for HSDP, 1-D ("dp_shard",) for FSDP."""
        if self._mesh is None:
            if self.hsdp:
                self._mesh = init_device_mesh(device_type, (self.dp_replicate, self.dp_shard),
                                              mesh_dim_names=("dp_replicate", "dp_shard"))
            else:
                self._mesh = init_device_mesh(device_type, (self.dp_shard,), mesh_dim_names=("dp_shard",))
        return self._mesh

    def fsdp_mesh(self) -> DeviceMesh:
        """The mesh fully_shard gets: 2-D means HSDP (replicate over dim 0, shard over dim 1)."""
        assert self._mesh is not None, "build_mesh() first"
        if self.hsdp:
            return self._mesh["dp_replicate", "dp_shard"]
        return self._mesh["dp_shard"]
