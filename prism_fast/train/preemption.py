"""SIGTERM -> checkpoint at the next step boundary, exit 0: the preemption rule of both trainers (midtrain, RL).

The handler only sets a flag: the signal can land inside a collective, a kernel or a checkpoint write, none of which
may be interrupted half-way. At each step boundary the ranks agree with a MAX all-reduce of the flag on the host
(gloo) group, so whichever rank the scheduler signalled, all of them save the same step and stop together.
"""
from __future__ import annotations

import signal

import torch
import torch.distributed as dist


class Preemption:
    """enabled: install the SIGTERM handler (checkpoint.save_on_sigterm). group: the host process group (None at
    world size 1, where no collective is needed)."""

    def __init__(self, enabled: bool, world_size: int, group=None):
        self.requested = False
        self.world_size, self.group = world_size, group
        if enabled:
            signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame) -> None:
        self.requested = True

    def agreed(self) -> bool:
        """At a step boundary, on every rank: True if any rank got SIGTERM (one small all-reduce, host group)."""
        if self.world_size == 1:
            return self.requested
        flag = torch.tensor([int(self.requested)], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
        return bool(flag.item())
