"""Mamba2 single-token decode: conv-state shift + SSM state update (causal_conv1d_update / selective_state_update).

Used by the model cache when generating one token at a time. Both ops update their state IN PLACE and return the
token's output, exactly what the training-time ops (causal_conv1d, ssd_chunk_scan) give for the next position:
running a prefix through the training ops with the cache and then stepping here equals one long forward.

Shapes (B batch, C conv channels, W conv width, H heads, P head dim, G groups, N state size):
    causal_conv1d_update: x [B, C], conv_state [B, C, W-1] (the last W-1 conv INPUTS, oldest first),
        weight [C, W], bias [C] -> out [B, C]
        out = act(bias + sum_k weight[:, k] * cat(conv_state, x)[:, :, k]); conv_state <- window[:, :, 1:]
    ssd_state_update: state [B, H, P, N] (fp32 recommended), x [B, H, P], dt [B, H], A [H] (negative),
        B/C [B, G, N], D [H] or [H, P], z [B, H, P], dt_bias [H] -> y [B, H, P]
        dt = clamp(softplus?(dt + dt_bias), *dt_limit); state <- exp(dt*A) * state + dt * x (outer) B
        y = state @ C + D * x, then y *= silu(z)
    mamba_decode_step: both, for the mixer's fused xBC layout [x (H*P) | B (G*N) | C (G*N)] after in_proj.
Note: unlike transformers' torch fallback (which skips dt_limit when decoding) the limit is applied here too, so
decoding matches the chunked forward also for Nemotron-H, whose limit is (time_step_min, inf).
Computation is fp32 in the same operation order as ops.ssd_scan_naive.
mamba_decode_step is the custom op `prism::mamba_decode_step` (mutates conv_state and ssm_state, fake impl for
torch.compile). It has no autograd formula: torch.library refuses one for a mutating op, and decoding runs
under no_grad (a gradient through an in-place cache update is not something any caller wants).
"""
from __future__ import annotations

from typing import Optional  # custom_op schema inference

import torch
import torch.nn.functional as F

from prism_fast.ops._dispatch import resolve, triton_ok
from prism_fast.ops.causal_conv1d import causal_conv1d_update_cuda, cuda_lib_usable
from prism_fast.ops.ssd_chunk_scan import _prep_dt

_VALID = ("torch", "triton", "cuda", "mamba_ssm")


def causal_conv1d_update_ref(x, conv_state, weight, bias=None, *, activation=None):
    """One causal-conv step; shifts `conv_state` in place. Returns out [B, C] in x.dtype."""
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"causal_conv1d_update: activation must be None or 'silu', got {activation!r}")
    W = weight.shape[1]
    if conv_state.shape[-1] != W - 1:
        raise ValueError(f"causal_conv1d_update: conv_state holds {conv_state.shape[-1]} steps, "
                         f"expected width - 1 = {W - 1}")
    window = torch.cat([conv_state, x[:, :, None].to(conv_state.dtype)], dim=-1)    # [B, C, W]
    wf = weight.float()
    # Same summation order as causal_conv1d_ref (newest tap first, bias first) for bitwise-close results.
    out = (torch.zeros_like(x, dtype=torch.float32) if bias is None
           else bias.float()[None, :].expand(x.shape[0], -1).clone())
    for k in range(W):
        out = out + wf[:, W - 1 - k][None, :] * window[:, :, W - 1 - k].float()
    if activation in ("silu", "swish"):
        out = F.silu(out)
    conv_state.copy_(window[:, :, 1:])
    return out.to(x.dtype)


def ssd_state_update_ref(state, x, dt, A, B, C, *, D=None, z=None, dt_bias=None, dt_softplus=False,
                         dt_limit=(0.0, float("inf"))):
    """One SSM recurrence step; updates `state` in place. Returns y [B, H, P] in x.dtype."""
    Bsz, H, P = x.shape
    G, N = B.shape[1], B.shape[2]
    if H % G:
        raise ValueError(f"ssd_state_update: heads ({H}) must be a multiple of groups ({G})")
    rep = H // G
    dtf = _prep_dt(dt, dt_bias, dt_softplus, dt_limit)                          # [B, H]
    Bh = B.float().repeat_interleave(rep, dim=1)                                 # [B, H, N]
    Ch = C.float().repeat_interleave(rep, dim=1)
    xf = x.float()
    decay = torch.exp(dtf * A.float())                                           # [B, H]
    S = decay[:, :, None, None] * state.float() + (dtf[:, :, None, None] * xf[:, :, :, None]
                                                   * Bh[:, :, None, :])
    y = (S * Ch[:, :, None, :]).sum(-1)                                          # [B, H, P]
    if D is not None:
        Df = D.float()
        y = y + xf * (Df[:, None] if Df.dim() == 1 else Df)
    if z is not None:
        y = y * F.silu(z.float())
    state.copy_(S)
    return y.to(x.dtype)


def causal_conv1d_update(x, conv_state, weight, bias=None, *, activation=None, backend="auto"):
    """See module docstring. x [B, C] -> [B, C]; conv_state [B, C, W-1] is shifted in place.

    backend: "torch" (the reference) or "cuda" (csrc/conv1d's decode kernel, auto on CUDA when the library was
    built and conv_state has x's dtype)."""
    auto = ["torch"]
    if x.is_cuda and conv_state.dtype == x.dtype and cuda_lib_usable():
        auto = ["cuda", "torch"]
    b = resolve("causal_conv1d_update", backend, _VALID, auto)
    if b == "torch":
        return causal_conv1d_update_ref(x, conv_state, weight, bias, activation=activation)
    if b == "cuda":
        return causal_conv1d_update_cuda(x, conv_state, weight, bias, activation=activation)
    raise RuntimeError(f"causal_conv1d_update: backend {b!r} is not available in this build")


def ssd_state_update(state, x, dt, A, B, C, *, D=None, z=None, dt_bias=None, dt_softplus=False,
                     dt_limit=(0.0, float("inf")), backend="auto"):
    """See module docstring. x [B, H, P] -> y [B, H, P]; state [B, H, P, N] is updated in place.

    backend: "torch" (the reference) or "triton" (kernels/ssd_state_update.py: one pass over the state; auto on
    CUDA, or on CPU under TRITON_INTERPRET=1 when asked for explicitly)."""
    auto = ["triton", "torch"] if x.is_cuda and triton_ok("cuda") else ["torch"]
    b = resolve("ssd_state_update", backend, _VALID, auto)
    if b == "torch":
        return ssd_state_update_ref(state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus,
                                    dt_limit=dt_limit)
    if b == "triton":
        if not triton_ok(x.device.type):
            raise RuntimeError("ssd_state_update: backend 'triton' needs CUDA tensors (or TRITON_INTERPRET=1 on CPU)")
        if x.shape[1] % B.shape[1]:
            raise ValueError(f"ssd_state_update: heads ({x.shape[1]}) must be a multiple of groups ({B.shape[1]})")
        from prism_fast.kernels.ssd_state_update import ssd_state_update_fwd
        return ssd_state_update_fwd(state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus,
                                    dt_limit=dt_limit)
    raise RuntimeError(f"ssd_state_update: backend {b!r} is not available in this build")


def _decode_step(conv_update, state_update, xBC, dt, conv_state, ssm_state, conv_weight, conv_bias, A, *,
                 n_groups, D, z, dt_bias, dt_softplus, dt_limit, activation):
    Bsz = xBC.shape[0]
    H, P, N = ssm_state.shape[1], ssm_state.shape[2], ssm_state.shape[3]
    xBC = conv_update(xBC, conv_state, conv_weight, conv_bias, activation=activation)
    x, Bm, Cm = torch.split(xBC, [H * P, n_groups * N, n_groups * N], dim=-1)
    return state_update(ssm_state, x.reshape(Bsz, H, P), dt, A, Bm.reshape(Bsz, n_groups, N),
                        Cm.reshape(Bsz, n_groups, N), D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus,
                        dt_limit=dt_limit)


def mamba_decode_step_ref(xBC, dt, conv_state, ssm_state, conv_weight, conv_bias, A, *, n_groups, D=None,
                          z=None, dt_bias=None, dt_softplus=True, dt_limit=(0.0, float("inf")), activation="silu"):
    """Conv step then SSM step on the fused xBC [B, H*P + 2*G*N] of one token. Returns y [B, H, P].

    conv_weight [C, W] (nn.Conv1d's [C, 1, W] squeezed), A [H] = -exp(A_log); states are updated in place.
    """
    return _decode_step(causal_conv1d_update_ref, ssd_state_update_ref, xBC, dt, conv_state, ssm_state,
                        conv_weight, conv_bias, A, n_groups=n_groups, D=D, z=z, dt_bias=dt_bias,
                        dt_softplus=dt_softplus, dt_limit=dt_limit, activation=activation)


@torch.library.custom_op("prism::mamba_decode_step", mutates_args=("conv_state", "ssm_state"))
def _mamba_decode_step_op(xBC: torch.Tensor, dt: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor,
                          conv_weight: torch.Tensor, conv_bias: Optional[torch.Tensor], A: torch.Tensor,
                          D: Optional[torch.Tensor], z: Optional[torch.Tensor], dt_bias: Optional[torch.Tensor],
                          n_groups: int, dt_softplus: bool, dt_min: float, dt_max: float, silu: bool,
                          conv_backend: str, ssd_backend: str) -> torch.Tensor:
    """The composition of the two public ops with explicit backends; returns y [B, H, P]."""
    conv = lambda *a, **k: causal_conv1d_update(*a, **k, backend=conv_backend)  # noqa: E731
    ssd = lambda *a, **k: ssd_state_update(*a, **k, backend=ssd_backend)  # noqa: E731
    return _decode_step(conv, ssd, xBC, dt, conv_state, ssm_state, conv_weight, conv_bias, A, n_groups=n_groups,
                        D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus, dt_limit=(dt_min, dt_max),
                        activation="silu" if silu else None)


@_mamba_decode_step_op.register_fake
def _(xBC, dt, conv_state, ssm_state, conv_weight, conv_bias, A, D, z, dt_bias, n_groups, dt_softplus, dt_min,
      dt_max, silu, conv_backend, ssd_backend):
    Bsz, H, P = xBC.shape[0], ssm_state.shape[1], ssm_state.shape[2]
    return xBC.new_empty((Bsz, H, P))


def mamba_decode_step(xBC, dt, conv_state, ssm_state, conv_weight, conv_bias, A, *, n_groups, D=None, z=None,
                      dt_bias=None, dt_softplus=True, dt_limit=(0.0, float("inf")), activation="silu",
                      backend="auto", conv_backend="auto", ssd_backend="auto"):
    """One Mamba2 decode step (see mamba_decode_step_ref) as the custom op prism::mamba_decode_step.
    conv_backend / ssd_backend: the backends of causal_conv1d_update / ssd_state_update (the model passes its
    kernels.conv1d_update / kernels.ssd_update). backend: "torch" (the composition; the only one so far) or
    "auto"."""
    resolve("mamba_decode_step", backend, _VALID, ["torch"])
    silu = activation in ("silu", "swish")
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"mamba_decode_step: activation must be None or 'silu', got {activation!r}")
    if conv_backend == "auto":
        conv_backend = ("cuda" if xBC.is_cuda and conv_state.dtype == xBC.dtype and cuda_lib_usable()
                        else "torch")
    if ssd_backend == "auto":
        ssd_backend = "triton" if xBC.is_cuda and triton_ok("cuda") else "torch"
    return _mamba_decode_step_op(xBC, dt, conv_state, ssm_state, conv_weight, conv_bias, A, D, z, dt_bias,
                                 int(n_groups), bool(dt_softplus), float(dt_limit[0]), float(dt_limit[1]), silu,
                                 conv_backend, ssd_backend)
