"""SSD stage: the sequential pass over chunks (forward) and its reverse (backward).

Forward, per (b, h) and a block of the flattened [P * N] state, for c = 0 .. nc-1:
    S_in[c] = S;  S = exp(Acum_last[c]) [seg_last[c] == seg_prev[c]] S + states[c]
with S = initial_states (or 0) before chunk 0; S after the last chunk is the final state. S_in overwrites
`states` in place (each chunk's own state is read before its slot is reused), saving one [B, nc, H, P, N] buffer.
Backward, c = nc-1 .. 0, with g = d final_states (or 0):
    dS_out[c] = g;  ddA_last[c] = scale_c * sum(g * S_in[c]);  g = scale_c g + dstates[c]
and g at the end is d initial_states. dS_out overwrites dstates in place; ddA_last is written per state block
and summed by the launcher. nc is small (T / chunk_size), so the sequential loop is cheap; parallelism comes
from B * H * (P * N / BLOCK).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._ssd_common import launch_opts, program_ids


@triton.jit
def _chunk_decay(DA_CS_ptr, SEG_ptr, pid_b, pid_h, c, H, nc, L: tl.constexpr, HAS_SEQ: tl.constexpr):
    """exp(Acum_last[c]) [seg_last[c] == seg_prev[c]]: how much of the carried-in state survives chunk c."""
    scale = tl.exp(tl.load(DA_CS_ptr + ((pid_b * H + pid_h) * nc + c) * L + L - 1))
    if HAS_SEQ:
        seg_last = tl.load(SEG_ptr + pid_b * nc * L + c * L + L - 1)
        seg_prev = tl.load(SEG_ptr + pid_b * nc * L + c * L - 1, mask=c > 0, other=0)
        scale = tl.where(seg_last == seg_prev, scale, 0.0)
    return scale


@triton.jit
def _ssd_state_passing_fwd_kernel(
    STATES_ptr, DA_CS_ptr, SEG_ptr, INIT_ptr, FINAL_ptr,
    H, nc, DIM,
    L: tl.constexpr, BLOCK: tl.constexpr, HAS_INIT: tl.constexpr, HAS_SEQ: tl.constexpr,
):
    pid_blk, pid_b, pid_h = program_ids()
    offs = pid_blk * BLOCK + tl.arange(0, BLOCK)
    m = offs < DIM
    if HAS_INIT:
        s = tl.load(INIT_ptr + (pid_b * H + pid_h) * DIM + offs, mask=m, other=0.0).to(tl.float32)
    else:
        s = tl.zeros((BLOCK,), dtype=tl.float32)
    for c in range(0, nc):
        ptr = STATES_ptr + ((pid_b * nc + c) * H + pid_h) * DIM + offs
        own = tl.load(ptr, mask=m, other=0.0)
        tl.store(ptr, s, mask=m)
        s = _chunk_decay(DA_CS_ptr, SEG_ptr, pid_b, pid_h, c, H, nc, L, HAS_SEQ) * s + own
    tl.store(FINAL_ptr + (pid_b * H + pid_h) * DIM + offs, s, mask=m)


@triton.jit
def _ssd_state_passing_bwd_kernel(
    DSTATES_ptr, S_IN_ptr, DA_CS_ptr, SEG_ptr, DFINAL_ptr, DINIT_ptr, DDA_PART_ptr,
    H, nc, DIM, n_blk,
    L: tl.constexpr, BLOCK: tl.constexpr, HAS_DFINAL: tl.constexpr, HAS_SEQ: tl.constexpr,
):
    pid_blk, pid_b, pid_h = program_ids()
    offs = pid_blk * BLOCK + tl.arange(0, BLOCK)
    m = offs < DIM
    if HAS_DFINAL:
        g = tl.load(DFINAL_ptr + (pid_b * H + pid_h) * DIM + offs, mask=m, other=0.0).to(tl.float32)
    else:
        g = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in range(0, nc):
        c = nc - 1 - i
        off = ((pid_b * nc + c) * H + pid_h) * DIM + offs
        ds = tl.load(DSTATES_ptr + off, mask=m, other=0.0)
        tl.store(DSTATES_ptr + off, g, mask=m)
        s_in = tl.load(S_IN_ptr + off, mask=m, other=0.0)
        scale = _chunk_decay(DA_CS_ptr, SEG_ptr, pid_b, pid_h, c, H, nc, L, HAS_SEQ)
        tl.store(DDA_PART_ptr + ((pid_b * H + pid_h) * nc + c) * n_blk + pid_blk, scale * tl.sum(g * s_in, axis=0))
        g = scale * g + ds
    tl.store(DINIT_ptr + (pid_b * H + pid_h) * DIM + offs, g, mask=m)


def _block(dim):
    return min(1024, triton.next_power_of_2(dim))


def ssd_state_passing_fwd(states, dA_cs, seg, initial_states):
    """states [B, nc, H, P, N] fp32 (overwritten with S_in) -> (S_in, final_states [B, H, P, N] fp32)."""
    Bsz, nc, H, P, N = states.shape
    L = dA_cs.shape[3]
    dim = P * N
    final = torch.empty(Bsz, H, P, N, device=states.device, dtype=torch.float32)
    init = initial_states.contiguous() if initial_states is not None else None
    blk = _block(dim)
    _ssd_state_passing_fwd_kernel[(triton.cdiv(dim, blk), Bsz, H)](
        states, dA_cs, seg if seg is not None else dA_cs, init if init is not None else final, final,
        H, nc, dim, L=L, BLOCK=blk, HAS_INIT=init is not None, HAS_SEQ=seg is not None, **launch_opts(states))
    return states, final


def ssd_state_passing_bwd(dstates, S_in, dA_cs, seg, dfinal):
    """dstates [B, nc, H, P, N] fp32 (overwritten with dS_out) -> (dS_out, dinit [B,H,P,N], ddA_last [B,H,nc])."""
    Bsz, nc, H, P, N = dstates.shape
    L = dA_cs.shape[3]
    dim = P * N
    blk = _block(dim)
    n_blk = triton.cdiv(dim, blk)
    dinit = torch.empty(Bsz, H, P, N, device=dstates.device, dtype=torch.float32)
    dda_part = torch.empty(Bsz, H, nc, n_blk, device=dstates.device, dtype=torch.float32)
    dfinal = dfinal.contiguous() if dfinal is not None else None
    _ssd_state_passing_bwd_kernel[(n_blk, Bsz, H)](
        dstates, S_in, dA_cs, seg if seg is not None else dA_cs, dfinal if dfinal is not None else dinit,
        dinit, dda_part, H, nc, dim, n_blk,
        L=L, BLOCK=blk, HAS_DFINAL=dfinal is not None, HAS_SEQ=seg is not None, **launch_opts(dstates))
    return dstates, dinit, dda_part.sum(-1)
