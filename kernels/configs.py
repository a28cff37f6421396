"""Launch configurations (tile sizes, warps, pipeline stages) per target, in one table.

Why a table and not `triton.autotune`: the attention and SSD launchers derive their grids and work lists from
the tile sizes before the launch (doc_block_cumsum, the number of row tiles, per-tile partial buffers), which
autotune's pick-at-launch cannot feed back; and under TRITON_INTERPRET=1 autotune would run every candidate
through the interpreter. So a target picks its row here, and bench/bench_attention.py --sweep measures the
candidates on a GPU (bench/gpu_check.sh runs it) to confirm or change the default.

Targets: "interp" (the CPU interpreter: one small config, fast tests), "sm90" (Hopper: H100 / H200, 227 KiB of
shared memory per block), "sm80" (Ampere and anything else with CUDA: 163 KiB). Rows are keyed by the largest
head dim they serve. The sm_90 rows are FA2-Triton / mamba-style starting points, NOT yet measured on an H200
here (no GPU was available): tests/kernels/test_aot.py compiles every row for its architecture and checks its
shared memory against the limit (ptxas accepts more than a block may use). Head dim 256 gets 64 x 32 forward
tiles: the 128 x 64 tiles of head dim 128 do fit there (128 KiB of shared memory on sm_90, by the AOT compile),
but keep a 128 x 256 fp32 accumulator and the Q tile in registers, ~190 of the 255 per thread at 8 warps.
"""
from __future__ import annotations

import os

import torch

HEAD_DIM_MAX = 256
SHARED_MEM_LIMIT = {"sm90": 232448, "sm80": 166912}      # bytes of dynamic shared memory per block

_C = dict  # a config: tile sizes (BLOCK_M / BLOCK_N) where the launcher takes them, num_warps, num_stages

# (max head dim, config), first match wins.
ATTN_FWD = {
    "interp": [(HEAD_DIM_MAX, _C(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=1))],
    "sm90": [(64, _C(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=3)),
             (128, _C(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3)),
             (256, _C(BLOCK_M=64, BLOCK_N=32, num_warps=8, num_stages=2))],
    "sm80": [(64, _C(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=3)),
             (128, _C(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=2)),
             (256, _C(BLOCK_M=64, BLOCK_N=32, num_warps=8, num_stages=1))],
}
# dK/dV keeps two fp32 [BLOCK_N, Dh] accumulators plus the K/V tiles for the whole program (64-key blocks;
# 128 would spill at Dh = 128); dQ keeps one accumulator and takes 128-row blocks.
ATTN_BWD_DKDV = {
    "interp": [(HEAD_DIM_MAX, _C(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=1))],
    "sm90": [(64, _C(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=2)),
             (128, _C(BLOCK_M=64, BLOCK_N=64, num_warps=8, num_stages=2)),
             (256, _C(BLOCK_M=32, BLOCK_N=32, num_warps=8, num_stages=1))],
    "sm80": [(64, _C(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=2)),
             (128, _C(BLOCK_M=64, BLOCK_N=64, num_warps=8, num_stages=2)),
             (256, _C(BLOCK_M=32, BLOCK_N=32, num_warps=8, num_stages=1))],
}
ATTN_BWD_DQ = {
    "interp": [(HEAD_DIM_MAX, _C(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=1))],
    "sm90": [(64, _C(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=2)),
             (128, _C(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=2)),
             (256, _C(BLOCK_M=64, BLOCK_N=32, num_warps=8, num_stages=1))],
    "sm80": [(64, _C(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=2)),
             (128, _C(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=2)),
             (256, _C(BLOCK_M=64, BLOCK_N=32, num_warps=8, num_stages=1))],
}
DECODE = {
    "interp": [(HEAD_DIM_MAX, _C(BLOCK_N=16, num_warps=4, num_stages=1))],
    "sm90": [(128, _C(BLOCK_N=64, num_warps=4, num_stages=2)), (256, _C(BLOCK_N=32, num_warps=4, num_stages=2))],
    "sm80": [(128, _C(BLOCK_N=64, num_warps=4, num_stages=2)), (256, _C(BLOCK_N=32, num_warps=4, num_stages=2))],
}
# SSD: warps / stages of every stage's launch (tiles come from kernels/_ssd_common.block, at most 64 wide, as
# mamba's kernels use); one row per target.
SSD = {
    "interp": [(HEAD_DIM_MAX, _C(num_warps=4, num_stages=1))],
    "sm90": [(HEAD_DIM_MAX, _C(num_warps=4, num_stages=3))],
    "sm80": [(HEAD_DIM_MAX, _C(num_warps=4, num_stages=2))],
}

# Fused-loss row kernels (fused_linear_cross_entropy.py, fused_linear_logprobs.py): memory-bound streaming passes
# over one row of a [C, V] logits chunk; BLOCK is the V tile per loop step (capped at next_pow2(V) by the
# launcher). One row per target keyed by "any vocab". Hopper gets a 2x wider tile (8192 bf16 = 16 KiB per step,
# 16 elements per thread at 16 warps) so each loop step keeps more bytes in flight against its higher bandwidth;
# NOT measured on a GPU yet (bench_fused_loss.py, run by gpu_check.sh, is where to confirm or change it).
VOCAB_ANY = 1 << 31
LOSS_ROWS = {
    "interp": [(VOCAB_ANY, _C(BLOCK=4096, num_warps=4, num_stages=1))],
    "sm90": [(VOCAB_ANY, _C(BLOCK=8192, num_warps=16, num_stages=1))],
    "sm80": [(VOCAB_ANY, _C(BLOCK=4096, num_warps=16, num_stages=1))],
}

# Alternatives bench_attention.py --sweep measures on a GPU next to the table's pick (head dim <= 128).
ATTN_FWD_SWEEP = [_C(BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=s)
                  for bm, bn, w, s in ((128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 2), (64, 64, 4, 3),
                                       (128, 32, 4, 4))]


def target(device: torch.device) -> str:
    """"interp" off CUDA (or with TRITON_INTERPRET=1), "sm90" for compute capability >= 9, else "sm80"."""
    if device.type != "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        return "interp"
    return "sm90" if torch.cuda.get_device_capability(device)[0] >= 9 else "sm80"


def pick(table: dict, device: torch.device, head_dim: int) -> dict:
    """A copy of the table's config for this device and head dim (raises for head dims past the last row)."""
    for max_dim, cfg in table[target(device)]:
        if head_dim <= max_dim:
            return dict(cfg)
    raise ValueError(f"head dim {head_dim} > {table[target(device)][-1][0]} is not supported by the Triton kernels; "
                     f"use the 'torch' backend")


def rows(table: dict, tgt: str) -> list[tuple[int, dict]]:
    """Every (max head dim, config) row of one target (the AOT test compiles each)."""
    return [(d, dict(c)) for d, c in table[tgt]]
