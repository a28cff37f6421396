"""Which kernel backend every fast path of a model runs: chosen ONCE, when the model is built.

`KernelConfig` is the `kernels` section of the config tree (one field per op family, "auto" or a backend name).
`resolve_kernels(cfg, device, dtype, compile=..., fp8=...)` turns it into a frozen `KernelChoice` of concrete
backend names for that device and compute dtype; the model keeps it (`model.kernels`) and every block passes the
names to the ops as `backend=...`. So:
  - "auto" is decided here, once, from the same preference lists the ops document (best first);
  - an explicit name that is unknown, not installed, or not valid for the device / dtype fails HERE, at build,
    with a message listing what is usable -- never a silent fallback mid-run;
  - the resolved names (never "auto") are what the trainer writes into the run's config.json and prints at start.
The ops keep their own `backend="auto"` argument for direct callers and tests (same preference order per call).

Fields and backends (docs/kernels_dispatch.md has the full table):
    attention        torch | triton | flash_attn        (ops.varlen_attention: training / prefill)
    decode           torch | triton                     (ops.decode_attention: one token against the KV cache)
    ssd              torch | triton | mamba_ssm         (ops.ssd_chunk_scan)
    conv1d           torch | triton | cuda | causal_conv1d   (ops.causal_conv1d)
    conv1d_update    torch | cuda                       (Mamba decode: ops.causal_conv1d_update)
    ssd_update       torch | triton                     (Mamba decode: ops.ssd_state_update)
    loss             torch | inductor | triton | liger  (ops.fused_linear_cross_entropy)
    logprobs         torch | triton                     (ops.fused_linear_logprobs)
    projection       fused | separate                   (q/k/v and gate/up: one GEMM via ops.concat_linear, or
                                                          one call per linear module -- required under FP8, where
                                                          the modules are Transformer Engine linears)
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Callable

import torch

from prism_fast.ops._dispatch import has_module

_16BIT = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Target:
    """What a choice is validated against: device type, compute dtype and the build options that matter."""
    device: str                         # "cpu" | "cuda"
    dtype: torch.dtype
    compile: bool = False
    fp8: bool = False


def _interpreter() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _triton(t: Target) -> str | None:
    """Why Triton kernels cannot run for this target, or None when they can."""
    if not has_module("triton"):
        return "triton is not installed"
    if t.device == "cuda":
        return None
    if not _interpreter():
        return "Triton kernels need a CUDA device (on CPU only under TRITON_INTERPRET=1, a test tool)"
    if t.dtype not in (torch.float32, torch.float16):
        return f"the Triton interpreter runs fp32/fp16 only, not {t.dtype}"
    return None


def _cuda_only(package: str, dtypes=None) -> Callable[[Target], str | None]:
    def check(t: Target) -> str | None:
        if not has_module(package):
            return f"the {package} package is not installed"
        if t.device != "cuda":
            return f"{package} runs on CUDA only"
        if dtypes is not None and t.dtype not in dtypes:
            return f"{package} supports {[str(d) for d in dtypes]}, not {t.dtype}"
        return None
    return check


def _conv_cuda_lib(t: Target) -> str | None:
    from prism_fast.ops.causal_conv1d import cuda_lib_usable  # noqa: PLC0415 (ctypes probe, only when asked)
    if t.device != "cuda":
        return "libprism_cuda.so runs on CUDA devices only"
    if t.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"libprism_cuda.so supports fp32/fp16/bf16, not {t.dtype}"
    return None if cuda_lib_usable() else "libprism_cuda.so is not built or its CUDA runtime sees no device"


def _always(t: Target) -> str | None:
    return None


def _fused_projection(t: Target) -> str | None:
    if t.fp8:
        return ("FP8 is on: q/k/v and gate/up must run through the Transformer Engine modules (one call each), "
                "a concatenated-weight GEMM would bypass them")
    return None


# op field -> ordered {backend: availability check}; the order is the "auto" preference on CUDA. On CPU (and for
# anything not CUDA) "auto" is the first usable backend of _AUTO_CPU (the interpreter is never picked by auto).
_BACKENDS: dict[str, dict[str, Callable[[Target], str | None]]] = {
    "attention": {"flash_attn": _cuda_only("flash_attn", _16BIT), "triton": _triton, "torch": _always},
    "decode": {"triton": _triton, "torch": _always},
    "ssd": {"triton": _triton, "mamba_ssm": _cuda_only("mamba_ssm"), "torch": _always},
    "conv1d": {"cuda": _conv_cuda_lib, "triton": _triton, "causal_conv1d": _cuda_only("causal_conv1d"),
               "torch": _always},
    "conv1d_update": {"cuda": _conv_cuda_lib, "torch": _always},
    "ssd_update": {"triton": _triton, "torch": _always},
    "loss": {"triton": _triton, "inductor": _always, "torch": _always, "liger": _cuda_only("liger_kernel")},
    "logprobs": {"triton": _triton, "torch": _always},
    "projection": {"fused": _fused_projection, "separate": _always},
}
# CUDA "auto" skips these (picked only when named): liger/mamba_ssm/causal_conv1d are peers for benchmarks; the
# inductor loss is a CPU memory optimization (CUDA keeps the Triton row kernel).
_NOT_AUTO_CUDA = {("loss", "liger"), ("loss", "inductor"), ("ssd", "mamba_ssm"), ("conv1d", "causal_conv1d")}
# CUDA: the conv1d CUDA library's runtime may not match the driver; auto then moves on to Triton (probed at build).


def _auto(op: str, t: Target) -> str:
    if t.device != "cuda":
        if op == "loss" and t.compile:
            return "inductor"             # the row math compiled with the blocks (docs/fused_loss.md)
        if op == "projection":
            return "separate" if t.fp8 else "fused"
        return "torch" if "torch" in _BACKENDS[op] else next(iter(_BACKENDS[op]))
    for name, check in _BACKENDS[op].items():
        if (op, name) not in _NOT_AUTO_CUDA and check(t) is None:
            return name
    raise ValueError(f"kernels.{op}: no usable backend for {t.device}/{t.dtype}")  # unreachable: torch is always ok


@dataclass(kw_only=True, slots=True)
class KernelConfig:
    """The `kernels` section: "auto" or a backend name per op family (see the module docstring)."""
    attention: str = "auto"
    decode: str = "auto"
    ssd: str = "auto"
    conv1d: str = "auto"
    conv1d_update: str = "auto"
    ssd_update: str = "auto"
    loss: str = "auto"
    logprobs: str = "auto"
    projection: str = "auto"

    def __post_init__(self):
        for op in _BACKENDS:
            name = getattr(self, op)
            if name != "auto" and name not in _BACKENDS[op]:
                raise ValueError(f"kernels.{op}={name!r} is not a backend of {op}; use auto or one of "
                                 f"{list(_BACKENDS[op])}")


@dataclass(frozen=True, slots=True)
class KernelChoice:
    """Resolved backends (never "auto") for one device type and compute dtype; held by the model."""
    device: str
    dtype: str
    attention: str
    decode: str
    ssd: str
    conv1d: str
    conv1d_update: str
    ssd_update: str
    loss: str
    logprobs: str
    projection: str

    def as_config(self) -> KernelConfig:
        """The same names as a KernelConfig (what the run's saved config.json records)."""
        return KernelConfig(**{op: getattr(self, op) for op in _BACKENDS})

    def describe(self) -> str:
        """One line for the start-of-run log."""
        return f"kernels ({self.device}, {self.dtype}): " + ", ".join(f"{op}={getattr(self, op)}" for op in _BACKENDS)


def usable_backends(op: str, device: str, dtype: torch.dtype, *, compile: bool = False,
                    fp8: bool = False) -> list[str]:
    """Backends of `op` that can run for this device / dtype (what an error message lists)."""
    t = Target(device, dtype, compile, fp8)
    return [n for n, check in _BACKENDS[op].items() if check(t) is None]


def resolve_kernels(kernels: KernelConfig | KernelChoice | dict | None = None, *, device="cpu",
                    dtype: torch.dtype = torch.float32, compile: bool = False, fp8: bool = False) -> KernelChoice:
    """Resolve every "auto" and validate every explicit name for (device, dtype). ValueError naming the usable
    backends when a choice cannot run. `kernels` may be a KernelConfig, a dict of field -> name (missing = auto),
    an already resolved KernelChoice (re-validated for this target) or None (all auto)."""
    dev = torch.device(device).type
    if dev == "meta":
        raise ValueError("resolve_kernels: a meta device runs no kernels; resolve for the device the model will "
                         "run on (CausalLM.configure_kernels(kernels, device=...))")
    if isinstance(kernels, KernelChoice):
        kernels = kernels.as_config()
    elif isinstance(kernels, dict):
        kernels = KernelConfig(**kernels)
    elif kernels is None:
        kernels = KernelConfig()
    t = Target(dev, dtype, compile, fp8)
    chosen = {}
    for op, table in _BACKENDS.items():
        name = getattr(kernels, op)
        if name == "auto":
            chosen[op] = _auto(op, t)
            continue
        why = table[name](t)
        if why is not None:
            raise ValueError(f"kernels.{op}={name!r} cannot run on {dev} with {dtype} ({why}); usable here: "
                             f"{usable_backends(op, dev, dtype, compile=compile, fp8=fp8)} or 'auto'")
        chosen[op] = name
    return KernelChoice(device=dev, dtype=str(dtype).removeprefix("torch."), **chosen)


def kernel_fields() -> list[str]:
    """The op fields of KernelConfig / KernelChoice, in order."""
    return list(_BACKENDS)


def replace_kernels(cfg, choice: KernelChoice):
    """Copy of a config tree (any dataclass with a `kernels` field) holding the resolved names."""
    return dataclasses.replace(cfg, kernels=choice.as_config())
