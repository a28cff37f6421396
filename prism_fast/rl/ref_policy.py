"""The reference policy of the KL term: a second copy of the model, sharded exactly like the policy, Polyak-updated.

`ref = (1 - tau) * ref + tau * policy` every `update_every` steps, computed in place on each rank's LOCAL shards
(`DTensor.to_local()` of both models; same mesh and placements, so shard i of one is shard i of the other): one
fused `torch._foreach_lerp_` over the parameter list, no all-gather, no communication at all. tau = 0 keeps the
initial policy frozen (the classic reference); tau = 1 copies the policy.
The reference never needs gradients (requires_grad False, no optimizer state); its forward runs under no_grad with the
same FSDP2 all-gathers as the policy. It is saved with the checkpoints (Checkpointer `extra={"ref": model}`).
"""
from __future__ import annotations

import torch
from torch.distributed.tensor import DTensor


def local_tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    """Each parameter's local shard (plain tensors sharing storage with the parameters), in parameter order."""
    return [p.to_local() if isinstance(p, DTensor) else p for p in model.parameters()]


class RefPolicy:
    def __init__(self, model: torch.nn.Module, policy: torch.nn.Module, *, tau: float, update_every: int):
        self.model, self.tau, self.update_every = model, tau, update_every
        model.requires_grad_(False)
        self._ref = [t.detach() for t in local_tensors(model)]
        self._pol = [t.detach() for t in local_tensors(policy)]
        if [t.shape for t in self._ref] != [t.shape for t in self._pol]:
            raise ValueError("reference and policy shards differ in layout; build both with the same parallel config")

    @torch.no_grad()
    def maybe_update(self, step: int) -> bool:
        """Polyak-update after optimizer step `step` (1-based) if it is due; returns whether it ran."""
        if self.tau == 0.0 or step % self.update_every:
            return False
        pol = [p if p.dtype == r.dtype else p.to(r.dtype) for r, p in zip(self._ref, self._pol)]
        torch._foreach_lerp_(self._ref, pol, self.tau)
        return True


def polyak_ref(ref: list[torch.Tensor], policy: list[torch.Tensor], tau: float) -> list[torch.Tensor]:
    """Pure-PyTorch reference of the update (tests): (1 - tau) * ref + tau * policy, out of place."""
    return [(1.0 - tau) * r + tau * p for r, p in zip(ref, policy)]
