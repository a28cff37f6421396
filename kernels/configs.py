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
# sm_90 rows retuned for 0 spill bytes (tests/kernels/test_spills.py; ptxas -v of the JIT-specialized kernel,
# Triton 3.6.0 = the GPU image's and 3.9.0 = ours, in registers / spill bytes):
#  - dK/dV Dh 64: was 64 x 64 w4 s2 (255 / 1032 B with 3.6, 255 / 128 B with 3.9): 2 stages keep a second K/V
#    tile pair live next to both accumulators; 1 stage: 217 / 219 registers, 0 B.
#  - dK/dV Dh 128: was 64 x 64 w8 s2 (255 / 1180 B, 255 / 320 B); neither 1 stage (3.9: 356 B) nor 32-row
#    query tiles at 2 stages (3.6: 112 B) alone is clean; 32 x 64 w8 s1: 212 / 242 registers, 0 B. The
#    one-head-per-program layout (kv_split) compiles clean at the old tiles too.
#  - dQ Dh 256: was 64 x 32 w8 s1 (255 / 1540 B, 255 / 204 B); 2 stages let the compiler keep the K/V tiles in
#    shared memory instead of registers: 205 / 205 registers, 0 B (128 KiB of the 227 KiB).
ATTN_BWD_DKDV = {
    "interp": [(HEAD_DIM_MAX, _C(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=1))],
    "sm90": [(64, _C(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=1)),      # 1 stage: no spill (above)
             (128, _C(BLOCK_M=32, BLOCK_N=64, num_warps=8, num_stages=1)),     # 32-row q tiles, 1 stage: idem
             (256, _C(BLOCK_M=32, BLOCK_N=32, num_warps=8, num_stages=1))],
    "sm80": [(64, _C(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=2)),
             (128, _C(BLOCK_M=64, BLOCK_N=64, num_warps=8, num_stages=2)),
             (256, _C(BLOCK_M=32, BLOCK_N=32, num_warps=8, num_stages=1))],
}
ATTN_BWD_DQ = {
    "interp": [(HEAD_DIM_MAX, _C(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=1))],
    "sm90": [(64, _C(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=2)),
             (128, _C(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=2)),
             (256, _C(BLOCK_M=64, BLOCK_N=32, num_warps=8, num_stages=2))],     # 2 stages: no spill (above)
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
# SSD chunk cumsum (ssd_chunk_cumsum.py): one [L, BLOCK_H] fp32 tile of 8192 elements per program, several live
# in the backward. sm_90 was the SSD row (w4: 64 elements per thread and tile): the backward spilled 4696 B
# (3.6) / 2368 B (3.9) and the forward 24 B (3.9); 16 warps: 16 elements per thread, 62-125 registers, 0 B.
SSD_CUMSUM = {
    "interp": [(HEAD_DIM_MAX, _C(num_warps=4, num_stages=1))],
    "sm90": [(HEAD_DIM_MAX, _C(num_warps=16, num_stages=1))],
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

# Causal conv1d (causal_conv1d.py): [BLOCK_C channels, BLOCK_T steps] tiles, capped by the launcher at
# next_pow2(C) / next_pow2(T) (16 at least). One row per target keyed by "any channel count".
CONV1D_FWD = {
    "interp": [(VOCAB_ANY, _C(BLOCK_C=64, BLOCK_T=64, num_warps=4))],
    "sm90": [(VOCAB_ANY, _C(BLOCK_C=64, BLOCK_T=64, num_warps=4))],
    "sm80": [(VOCAB_ANY, _C(BLOCK_C=64, BLOCK_T=64, num_warps=4))],
}
# sm_90 backward: was 64 x 64 w4 (168 registers but 6492 B (3.6) / 8796 B (3.9) of spills: the WIDTH unrolled
# shifted x tiles and the gradient tile stay live together); 64 x 32 at 8 warps: 178 registers, 0 B.
CONV1D_BWD = {
    "interp": [(VOCAB_ANY, _C(BLOCK_C=64, BLOCK_T=64, num_warps=4))],
    "sm90": [(VOCAB_ANY, _C(BLOCK_C=64, BLOCK_T=32, num_warps=8))],
    "sm80": [(VOCAB_ANY, _C(BLOCK_C=64, BLOCK_T=64, num_warps=4))],
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
