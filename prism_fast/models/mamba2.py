"""Mamba2 mixer (SSD) shared by the hybrid families (granitemoehybrid = Granite-4.0-H, nemotron_h).

Parameter names and shapes are transformers' (GraniteMoeHybridMambaLayer / NemotronHMamba2Mixer), so HF
checkpoints load unchanged:
    in_proj   Linear(D -> I + conv_dim + H)    output split as [z (I) | xBC (conv_dim) | dt (H)]
    conv1d    depthwise Conv1d(conv_dim, kernel W), weight [conv_dim, 1, W]; conv_dim = I + 2*G*N
    dt_bias [H], A_log [H] (A = -exp(A_log)), D [H]
    norm      gated grouped RMSNorm, weight [I], groups of I // G channels: norm(y * silu(z))
    out_proj  Linear(I -> D)
with I = H * P (heads x head dim), G groups, N state size. Training goes through prism_fast.ops.causal_conv1d and
prism_fast.ops.ssd_chunk_scan (whatever backend they dispatch to); packed rows pass `seq_idx` so the convolution
and the SSM state restart at every document. Decoding uses prism_fast.ops.mamba_decode_step.
The backends are the model's kernel choice (`use_kernels`, called by CausalLM.configure_kernels); a mixer used on
its own dispatches per call ("auto"). The SSD chunk size is an implementation choice (the result does not depend
on it): config.json's chunk_size is kept for saving, the kernels run `ssd_kernel_chunk_size(chunk_size)`.

Legend: B batch, T time, D model width, I inner width, H heads, P head dim, G groups, N state size, W conv width.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from prism_fast import ops
from prism_fast.models.cache import LayerCache

SSD_MIN_CHUNK, SSD_MAX_CHUNK = 16, 256


def ssd_kernel_chunk_size(requested: int) -> int:
    """The chunk the SSD kernels run for a config's chunk_size: the next power of two in [16, 256] (the kernels
    need a power of two >= 16; any positive chunk_size transformers accepts, e.g. 8, maps to a valid one)."""
    if requested < 1:
        raise ValueError(f"Mamba2: chunk_size must be a positive integer, got {requested}")
    c = 1 << (int(requested) - 1).bit_length()
    return min(max(c, SSD_MIN_CHUNK), SSD_MAX_CHUNK)


@dataclass
class MambaCache(LayerCache):
    """Decode state of one Mamba2 layer: the last W-1 conv inputs and the SSM state (batch first, see cache.py).

    conv_state [B, conv_dim, W-1] (model dtype: it stores inputs verbatim, so it is exact in any dtype);
    ssm_state [B, H, P, N] fp32 (the scan accumulates in fp32; storing it in bf16 would make decoding drift from
    the full forward). Zeros = an empty history, which is what the zero-padded causal conv and the zero initial
    SSM state of a fresh sequence mean. Updated in place, so ModelCache.row(b) views work for per-row prefill.
    """
    conv_state: torch.Tensor
    ssm_state: torch.Tensor

    @classmethod
    def empty(cls, batch_size: int, conv_dim: int, conv_width: int, num_heads: int, head_dim: int, d_state: int,
              *, dtype=torch.float32, device=None, ssm_dtype=torch.float32) -> "MambaCache":
        return cls(torch.zeros(batch_size, conv_dim, conv_width - 1, dtype=dtype, device=device),
                   torch.zeros(batch_size, num_heads, head_dim, d_state, dtype=ssm_dtype, device=device))


class GatedRMSNorm(nn.Module):
    """Mamba2's output norm: rms_norm(y * silu(z)) per group, times weight [I] (HF name `norm.weight`)."""

    def __init__(self, hidden_size: int, group_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.group_size = group_size
        self.eps = eps

    def reset_parameters(self):
        nn.init.ones_(self.weight)

    def forward(self, y, z=None):
        return ops.gated_rms_norm(y, z, self.weight, group_size=self.group_size, eps=self.eps)


class Mamba2Mixer(nn.Module):
    """One Mamba2 mixer: x [B, T, D] -> [B, T, D]. See the module docstring for the parameter layout."""

    def __init__(self, hidden_size: int, *, num_heads: int, head_dim: int, d_state: int, n_groups: int = 1,
                 conv_width: int = 4, chunk_size: int = 256, conv_bias: bool = True, proj_bias: bool = False,
                 norm_eps: float = 1e-6, activation: str = "silu",
                 time_step_limit: tuple[float, float] = (0.0, float("inf")),
                 dt_init_range: tuple[float, float, float] | None = None):
        """dt_init_range (dt_min, dt_max, dt_floor): reset_parameters() draws dt log-uniformly in that range and
        stores softplus^-1(dt) in dt_bias (mamba_ssm / Nemotron-H init); None keeps dt_bias = 1 (Granite)."""
        super().__init__()
        self.dt_init_range = dt_init_range
        if num_heads % n_groups:
            raise ValueError(f"Mamba2: mamba heads ({num_heads}) must be a multiple of mamba groups ({n_groups})")
        if activation not in ("silu", "swish"):
            raise ValueError(f"Mamba2: only the 'silu' conv activation is supported, got {activation!r}")
        self.hidden_size = hidden_size
        self.num_heads, self.head_dim, self.d_state, self.n_groups = num_heads, head_dim, d_state, n_groups
        self.conv_width, self.chunk_size, self.activation = conv_width, chunk_size, activation
        self.kernel_chunk_size = ssd_kernel_chunk_size(chunk_size)
        self.backends = {"conv1d": "auto", "ssd": "auto", "conv1d_update": "auto", "ssd_update": "auto"}
        self.time_step_limit = (float(time_step_limit[0]), float(time_step_limit[1]))
        self.intermediate_size = I = num_heads * head_dim
        self.conv_dim = I + 2 * n_groups * d_state
        self.in_proj = nn.Linear(hidden_size, I + self.conv_dim + num_heads, bias=proj_bias)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, conv_width, groups=self.conv_dim, bias=conv_bias,
                                padding=conv_width - 1)
        self.dt_bias = nn.Parameter(torch.ones(num_heads))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, num_heads + 1, dtype=torch.float32)))
        self.D = nn.Parameter(torch.ones(num_heads))
        self.norm = GatedRMSNorm(I, group_size=I // n_groups, eps=norm_eps)
        self.out_proj = nn.Linear(I, hidden_size, bias=proj_bias)

    @classmethod
    def from_config(cls, cfg, *, activation: str = "silu", **kwargs) -> "Mamba2Mixer":
        """Mixer from a ModelConfig's mamba_* fields (norm eps = rms_norm_eps; in/out_proj bias = mamba_proj_bias)."""
        return cls(cfg.hidden_size, num_heads=cfg.mamba_n_heads, head_dim=cfg.mamba_d_head, d_state=cfg.mamba_d_state,
                   n_groups=cfg.mamba_n_groups, conv_width=cfg.mamba_d_conv, chunk_size=cfg.mamba_chunk_size,
                   conv_bias=cfg.mamba_conv_bias, proj_bias=cfg.mamba_proj_bias, norm_eps=cfg.rms_norm_eps,
                   activation=activation, time_step_limit=cfg.time_step_limit, **kwargs)

    @torch.no_grad()
    def reset_parameters(self):
        """Mamba2 init of the SSM scalars as transformers does it: A = -[1..H], D = 1, dt_bias = 1 or, with
        dt_init_range, softplus^-1 of a log-uniform dt (Nemotron-H)."""
        self.A_log.copy_(torch.log(torch.arange(1, self.num_heads + 1, dtype=torch.float32)))
        self.D.fill_(1.0)
        if self.dt_init_range is None:
            self.dt_bias.fill_(1.0)
            return
        lo, hi, floor = self.dt_init_range
        u = torch.rand(self.num_heads, device=self.dt_bias.device, dtype=torch.float32)
        dt = torch.exp(u * (math.log(hi) - math.log(lo)) + math.log(lo)).clamp(min=floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))           # inverse of softplus

    def use_kernels(self, k) -> None:
        """Keep the conv / SSD (training) and decode-step backends of a resolved ops.KernelChoice."""
        self.backends = {op: getattr(k, op) for op in self.backends}

    def new_cache(self, batch_size: int, max_seq_len: int | None = None, dtype=None, device=None) -> MambaCache:
        """Zero state for `batch_size` sequences (max_seq_len is unused: the state has a fixed size)."""
        dtype = dtype or self.in_proj.weight.dtype
        device = device or self.in_proj.weight.device
        return MambaCache.empty(batch_size, self.conv_dim, self.conv_width, self.num_heads, self.head_dim,
                                self.d_state, dtype=dtype, device=device)

    def forward(self, x_BTD, *, seq_idx=None, cache: MambaCache | None = None):
        """x_BTD [B, T, D]; seq_idx [B, T] int32 document ids (packed rows) or None; cache appends T tokens."""
        Bsz, T, _ = x_BTD.shape
        H, P, G, N, I = self.num_heads, self.head_dim, self.n_groups, self.d_state, self.intermediate_size
        if cache is not None and seq_idx is not None and not hasattr(cache, "write_packed"):
            raise ValueError("Mamba2: a cache cannot be combined with packed documents (cu_seqlens); "
                             "decode one batch of sequences with one row each")
        zxbcdt = self.in_proj(x_BTD)
        z_BTI, xBC_BTC, dt_BTH = torch.split(zxbcdt, [I, self.conv_dim, H], dim=-1)
        A_H = -torch.exp(self.A_log.float())
        conv_w = self.conv1d.weight.squeeze(1)                                   # [conv_dim, W]

        if cache is not None and T == 1:
            y = ops.mamba_decode_step(xBC_BTC[:, 0], dt_BTH[:, 0], cache.conv_state, cache.ssm_state, conv_w,
                                      self.conv1d.bias, A_H, n_groups=G, D=self.D, dt_bias=self.dt_bias,
                                      dt_softplus=True, dt_limit=self.time_step_limit, activation=self.activation,
                                      conv_backend=self.backends["conv1d_update"],
                                      ssd_backend=self.backends["ssd_update"])
            y_BTI = y.reshape(Bsz, 1, I)
        else:
            xBC_BCT = xBC_BTC.transpose(1, 2)
            if cache is None or seq_idx is not None:
                conv_BCT = ops.causal_conv1d(xBC_BCT, conv_w, self.conv1d.bias, seq_idx=seq_idx,
                                             activation=self.activation, backend=self.backends["conv1d"])
                if cache is not None:
                    # packed prefill of fresh prompts (prism_fast.inference.prefill): the stand-in cache takes
                    # each document's conv history and final SSM state; the rest is the uncached packed forward
                    cache.write_packed(self, xBC_BCT, conv_BCT, dt_BTH)
                    cache = None
            else:
                # Continue from the cached history: the causal conv over [history | new] equals the conv of
                # the whole sequence for the new positions; the new history is the last W-1 inputs.
                hist = self.conv_width - 1
                ext = torch.cat([cache.conv_state.to(xBC_BCT.dtype), xBC_BCT], dim=-1)
                conv_BCT = ops.causal_conv1d(ext, conv_w, self.conv1d.bias, activation=self.activation,
                                             backend=self.backends["conv1d"])[..., hist:]
                cache.conv_state.copy_(ext[..., ext.shape[-1] - hist:])
            x_BTC = conv_BCT.transpose(1, 2)
            xs, Bm, Cm = torch.split(x_BTC, [I, G * N, G * N], dim=-1)
            out = ops.ssd_chunk_scan(
                xs.reshape(Bsz, T, H, P), dt_BTH, A_H, Bm.reshape(Bsz, T, G, N), Cm.reshape(Bsz, T, G, N),
                self.kernel_chunk_size, D=self.D, dt_bias=self.dt_bias, dt_softplus=True,
                dt_limit=self.time_step_limit, seq_idx=seq_idx,
                initial_states=None if cache is None else cache.ssm_state, return_final_states=cache is not None,
                backend=self.backends["ssd"])
            if cache is not None:
                out, final = out
                cache.ssm_state.copy_(final)
            y_BTI = out.reshape(Bsz, T, I)
        y_BTI = self.norm(y_BTI, z_BTI)
        return self.out_proj(y_BTI.to(x_BTD.dtype))


def seq_idx_from_cu_seqlens(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """cu_seqlens int [n_docs+1] -> seq_idx int32 [1, total] (document id of each token of a packed row)."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    ids = torch.repeat_interleave(torch.arange(lengths.numel(), device=cu_seqlens.device, dtype=torch.int32),
                                  lengths, output_size=total)
    return ids[None]


def hf_float(v) -> float:
    """A float from config.json: plain numbers, "inf"/"Infinity" strings, or transformers' {"__float__": "..."}
    tag for non-finite values (time_step_limit = (0.0, inf) is saved that way)."""
    if isinstance(v, dict) and "__float__" in v:
        v = v["__float__"]
    return float(v)
