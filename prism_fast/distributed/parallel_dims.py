"""ParallelDims: the layout dp_replicate x dp_shard x cp and its DeviceMesh.

Data parallelism (FSDP when dp_replicate == 1, HSDP otherwise) plus context parallelism (`cp` ranks share one
packed row; distributed/context_parallel.py). The mesh is always built with named axes and callers ask for them by
name, never assuming 1-D. Ranks are laid out row-major with cp innermost, so the cp ranks of one row are
neighbours (one node). FSDP shards parameters over the flattened ("dp_shard", "cp") axis "dp_shard_cp" (as
torchtitan does): cp ranks hold different tokens of the same batch, so their gradients are summed like those of
data-parallel ranks. The loss / token-count reductions span every rank, so `dp_size` (ranks a gradient is reduced
over) == world size, while the loader is sharded over `data_parallel_size` = world / cp ranks.
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
    """FSDP shard group size (PRISM: 8). -1 = world_size // (dp_replicate * cp)."""
    cp: int = 1
    """Context-parallel group size (PRISM long-context phase: 4). 1 = off."""
    world_size: int = 1
    _mesh: DeviceMesh | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.dp_replicate < 1:
            raise ValueError(f"parallel.dp_replicate={self.dp_replicate} must be >= 1")
        if self.cp < 1:
            raise ValueError(f"parallel.cp={self.cp} must be >= 1")
        if self.dp_shard == -1:
            if self.world_size % (self.dp_replicate * self.cp):
                raise ValueError(f"world size {self.world_size} is not divisible by parallel.dp_replicate="
                                 f"{self.dp_replicate} x parallel.cp={self.cp}; launch a multiple of it or change "
                                 f"them")
            self.dp_shard = self.world_size // (self.dp_replicate * self.cp)
        if self.dp_shard < 1 or self.dp_replicate * self.dp_shard * self.cp != self.world_size:
            cp = f" x parallel.cp ({self.cp})" if self.cp > 1 else ""
            raise ValueError(
                f"parallel.dp_replicate ({self.dp_replicate}) x parallel.dp_shard ({self.dp_shard}){cp} must equal "
                f"the world size ({self.world_size}); launch with torchrun "
                f"--nproc_per_node/--nnodes giving {self.dp_replicate * max(self.dp_shard, 1) * self.cp} processes "
                f"or set --parallel.dp_shard=-1")

    @property
    def dp_size(self) -> int:
        return self.world_size

    @property
    def data_parallel_size(self) -> int:
        """Ranks that read different batches (the loader's world size): world / cp."""
        return self.world_size // self.cp

    def data_parallel_rank(self, rank: int) -> int:
        """The loader rank of global `rank` (cp is the innermost mesh axis)."""
        return rank // self.cp

    @property
    def hsdp(self) -> bool:
        return self.dp_replicate > 1

    def build_mesh(self, device_type: str) -> DeviceMesh:
        """Mesh over ("dp_replicate", "dp_shard", "cp"), keeping only the axes in use (dp_shard always). With cp
        a flattened "dp_shard_cp" axis is added for FSDP."""
        if self._mesh is None:
            axes = [(n, s) for n, s in (("dp_replicate", self.dp_replicate), ("dp_shard", self.dp_shard),
                                        ("cp", self.cp)) if s > 1 or n == "dp_shard"]
            self._mesh = init_device_mesh(device_type, tuple(s for _, s in axes),
                                          mesh_dim_names=tuple(n for n, _ in axes))
            if self.cp > 1:
                self._mesh["dp_shard", "cp"]._flatten("dp_shard_cp")
        return self._mesh

    def fsdp_mesh(self) -> DeviceMesh:
        """The mesh fully_shard gets: 2-D means HSDP (replicate over dim 0, shard over dim 1)."""
        assert self._mesh is not None, "build_mesh() first"
        shard = "dp_shard_cp" if self.cp > 1 else "dp_shard"
        if self.hsdp:
            return self._mesh["dp_replicate", shard]
        return self._mesh[shard]

    def cp_mesh(self) -> DeviceMesh:
        """The 1-D ("cp",) sub-mesh (cp > 1 only)."""
        assert self._mesh is not None and self.cp > 1, "build_mesh() first, with cp > 1"
        return self._mesh["cp"]
