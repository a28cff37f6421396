"""Per-process runtime shared by the trainers (midtrain, RL): device, threads, host allocator, process groups.

`start_process(tc)` reads the common fields of a trainer's `train` section (device, threads, keep_host_memory)
and returns the pieces every trainer holds. Unusual: on CUDA a second, gloo "control-plane" group carries the
preemption consensus and checkpoint barriers, so those never synchronize the GPU stream; on CPU it is WORLD.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from prism_fast.distributed import init_distributed
from prism_fast.train.host_allocator import keep_freed_host_memory


@dataclass(frozen=True)
class ProcessRuntime:
    rank: int
    world_size: int
    device: torch.device
    cpu_group: object
    """gloo group for control-plane collectives (barriers, flags); dist.group.WORLD on CPU."""


def start_process(tc, *, timeout_s: int = 1800) -> ProcessRuntime:
    """Set threads and the host-allocator policy, then join the default process group (1-rank without torchrun).
    tc: a train section with device ("auto" | "cpu" | "cuda"), threads (0 = torch's default) and
    keep_host_memory. timeout_s bounds every collective (a dead peer ends the job instead of hanging it)."""
    dev_type = "cuda" if tc.device == "cuda" or (tc.device == "auto" and torch.cuda.is_available()) else "cpu"
    if tc.threads:
        torch.set_num_threads(tc.threads)
    if dev_type == "cpu" and tc.keep_host_memory:
        keep_freed_host_memory()
    rank, world_size, local_rank = init_distributed(dev_type, timeout_s=timeout_s)
    device = torch.device(dev_type, local_rank) if dev_type == "cuda" else torch.device("cpu")
    cpu_group = dist.new_group(backend="gloo") if dev_type == "cuda" else dist.group.WORLD
    return ProcessRuntime(rank, world_size, device, cpu_group)
