"""FP8 training through NVIDIA Transformer Engine (optional; CUDA only).

`apply_fp8(model)` swaps every nn.Linear inside model.blocks for `te.Linear` (weights copied), and
`fp8_autocast_ctx()` returns the te.fp8_autocast context (delayed scaling, HYBRID format: E4M3 forward, E5M2
backward) that the trainer wraps the forward in. Embeddings and the LM head stay in bf16 (standard practice:
their FP8 error is large and they are a small share of FLOPs).

Untested in this repository: there is no GPU and no Transformer Engine on the CI machine. Without TE or CUDA
the functions raise RuntimeError naming the install command, never silently run in bf16.
"""
from __future__ import annotations

import contextlib

import torch


def _te():
    if not torch.cuda.is_available():
        raise RuntimeError("parallel.fp8=True needs a CUDA GPU (Hopper or newer); set --parallel.fp8=false")
    try:
        import transformer_engine.pytorch as te  # noqa: PLC0415 (optional extension)
    except ImportError as e:
        raise RuntimeError("parallel.fp8=True needs NVIDIA Transformer Engine: "
                           "pip install --no-build-isolation transformer_engine[pytorch]") from e
    return te


def apply_fp8(model: torch.nn.Module) -> int:
    """Replace nn.Linear layers of the blocks with te.Linear in place (before FSDP). Returns the count."""
    te = _te()
    n = 0
    for block in model.blocks:
        for name, mod in list(block.named_modules()):
            for cname, child in list(mod.named_children()):
                if type(child) is torch.nn.Linear:
                    if child.in_features % 16 or child.out_features % 16:
                        continue  # FP8 GEMMs need dims divisible by 16; keep those in bf16
                    new = te.Linear(child.in_features, child.out_features, bias=child.bias is not None,
                                    params_dtype=child.weight.dtype, device=child.weight.device)
                    if child.weight.device.type != "meta":
                        with torch.no_grad():
                            new.weight.copy_(child.weight)
                            if child.bias is not None:
                                new.bias.copy_(child.bias)
                    setattr(mod, cname, new)
                    n += 1
    return n


def fp8_autocast_ctx(enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    te = _te()
    from transformer_engine.common.recipe import DelayedScaling, Format  # noqa: PLC0415
    return te.fp8_autocast(enabled=True, fp8_recipe=DelayedScaling(fp8_format=Format.HYBRID))
