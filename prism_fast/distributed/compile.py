"""Per-block torch.compile (torchtitan's pattern): each block compiles once and the graph is reused for every
layer of the same structure, which keeps compile time flat in depth and leaves FSDP2's hooks outside the graphs.

Uses nn.Module.compile() (in place) so parameter names do not change. Hybrid models have several block kinds
(attention / Mamba / MLP); dynamo caches one graph per kind. On CPU inductor needs a C++ compiler (g++).
"""
from __future__ import annotations

import torch


def apply_compile(model: torch.nn.Module, *, fullgraph: bool = False, dynamic: bool | None = None,
                  backend: str = "inductor") -> int:
    """Compile every block of model.blocks in place; returns the number compiled (backend: torch.compile's, e.g.
    "aot_eager" in tests)."""
    for block in model.blocks:
        block.compile(fullgraph=fullgraph, dynamic=dynamic, backend=backend)
    return len(model.blocks)
