"""Backend selection shared by every op in prism_fast.ops.

Each op calls `resolve(op, backend, valid, auto_order)`. "auto" picks the first available backend of the op's
preference list for the device (direct callers and tests). Models do not use "auto" per call: their choice is
resolved once at build (ops/kernel_choice.py) and passed to every op as an explicit name.
Availability of optional packages is probed once (cached), not per call.
"""
from __future__ import annotations

import functools
import importlib.util
import os

@functools.cache
def has_module(name: str) -> bool:
    """True when `name` is importable (probed once)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def triton_usable(device_type: str) -> bool:
    """Triton kernels run on CUDA devices, or anywhere under the interpreter (TRITON_INTERPRET=1, tests)."""
    if not has_module("triton"):
        return False
    return device_type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def resolve(op: str, backend: str, valid: tuple[str, ...], auto_order: list[str]) -> str:
    """Return the backend to run.

    op: op name, for messages. backend: what the caller asked for.
    valid: every backend name this op knows. auto_order: backends usable *now* for this device/dtype, best first.
    """
    if backend == "auto":
        if not auto_order:
            raise RuntimeError(f"{op}: no usable backend (known: {valid})")
        return auto_order[0]
    if backend not in valid:
        raise ValueError(f"{op}: unknown backend {backend!r}; valid backends are {list(valid)} or 'auto'")
    return backend


# Probed once at import: the ops consult it inside torch.compile'd code, where tracing through has_module's
# lru_cache makes dynamo warn.
_TRITON_OK = {"cuda": triton_usable("cuda"), "cpu": triton_usable("cpu")}


def triton_ok(device_type: str) -> bool:
    """triton_usable(device_type), probed at import (compile-friendly)."""
    return _TRITON_OK.get(device_type, False)
