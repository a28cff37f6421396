"""FP8 training through NVIDIA Transformer Engine (optional; CUDA only).

`apply_fp8(model)` swaps every nn.Linear inside model.blocks for `te.Linear` (weights copied), and
`fp8_autocast_ctx()` returns the te.fp8_autocast context (delayed scaling, HYBRID format: E4M3 forward, E5M2
backward) that the trainer wraps the forward in. Embeddings and the LM head stay in bf16 (standard practice:
their FP8 error is large and they are a small share of FLOPs).

Every block linear is swapped, q/k/v and gate/up included: te.Linear is registered as an FP8 linear type
(models.layers.register_fp8_linear), so CausalLM.configure_kernels resolves kernels.projection="separate" and
each projection calls its TE module (a concatenated-weight GEMM would read .weight and run in bf16).
MFU: `fp8_flop_share` counts the FLOPs of the linears that really are FP8 modules and `mixed_peak_flops` blends
the bf16 and FP8 peaks by that share (the LM head, embeddings and attention stay at the bf16 peak).

The TE path itself is untested here: there is no GPU and no Transformer Engine on the CI machine. Without TE or
CUDA the functions raise RuntimeError naming the install command, never silently run in bf16. The swap and the
routing are tested with `apply_fp8(model, make_linear=...)`, the same code path with another registered type.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch

from prism_fast.models.layers import is_fp8_linear, register_fp8_linear


def _te():
    if not torch.cuda.is_available():
        raise RuntimeError("parallel.fp8=True needs a CUDA GPU (Hopper or newer); set --parallel.fp8=false")
    try:
        import transformer_engine.pytorch as te  # noqa: PLC0415 (optional extension)
    except ImportError as e:
        raise RuntimeError("parallel.fp8=True needs NVIDIA Transformer Engine: "
                           "pip install --no-build-isolation transformer_engine[pytorch]") from e
    return te


def _te_linear(child: torch.nn.Linear) -> torch.nn.Module:
    te = _te()
    register_fp8_linear(te.Linear)
    return te.Linear(child.in_features, child.out_features, bias=child.bias is not None,
                     params_dtype=child.weight.dtype, device=child.weight.device)


def apply_fp8(model: torch.nn.Module, make_linear: Callable[[torch.nn.Linear], torch.nn.Module] | None = None) -> int:
    """Replace nn.Linear layers of the blocks with FP8 linears in place (before FSDP). Returns the count.

    make_linear(child) builds the replacement (default: te.Linear); its type must be registered with
    models.layers.register_fp8_linear. Weights are copied unless on the meta device. Call
    model.configure_kernels() afterwards (model_init does) so the projections route through the new modules."""
    make_linear = make_linear or _te_linear
    n = 0
    for block in model.blocks:
        for name, mod in list(block.named_modules()):
            for cname, child in list(mod.named_children()):
                if type(child) is torch.nn.Linear:
                    if child.in_features % 16 or child.out_features % 16:
                        continue  # FP8 GEMMs need dims divisible by 16; keep those in bf16
                    new = make_linear(child)
                    if not is_fp8_linear(new):
                        raise TypeError(f"apply_fp8: {type(new).__name__} is not a registered FP8 linear type "
                                        f"(models.layers.register_fp8_linear)")
                    if child.weight.device.type != "meta":
                        with torch.no_grad():
                            new.weight.copy_(child.weight)
                            if child.bias is not None:
                                new.bias.copy_(child.bias)
                    setattr(mod, cname, new)
                    n += 1
    return n


def fp8_flop_share(model: torch.nn.Module, seq_len: int) -> float:
    """Fraction of the model's training FLOPs per token (model.flops_per_token) done by FP8 linear modules:
    6 * their weight elements / flops_per_token."""
    n = sum(m.weight.numel() for m in model.modules() if is_fp8_linear(m))
    return 6.0 * n / model.flops_per_token(seq_len)


def mixed_peak_flops(peak_bf16: float, fp8_share: float, fp8_speedup: float = 2.0) -> float:
    """The peak FLOP/s of a step whose `fp8_share` of FLOPs runs at fp8_speedup x the bf16 peak: the time at
    peak is share / (speedup * peak) + (1 - share) / peak, so the blended peak is their harmonic mean."""
    if not 0.0 <= fp8_share <= 1.0:
        raise ValueError(f"fp8_share must be in [0, 1], got {fp8_share}")
    return peak_bf16 / (fp8_share / fp8_speedup + (1.0 - fp8_share))


def fp8_autocast_ctx(enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    te = _te()
    from transformer_engine.common.recipe import DelayedScaling, Format  # noqa: PLC0415
    return te.fp8_autocast(enabled=True, fp8_recipe=DelayedScaling(fp8_format=Format.HYBRID))
