"""Depthwise causal 1-D convolution with causal_conv1d_fn semantics (Mamba2's short conv).

x [B, C, T], weight [C, W] (W = width, 2..4), bias [C] or None, seq_idx [B, T] int or None.
out[b, c, t] = bias[c] + sum_{k=0}^{W-1} weight[c, W-1-k] * x[b, c, t-k], where terms with t-k < 0 or
seq_idx[b, t-k] != seq_idx[b, t] are dropped (no leakage across packed documents).
activation: None or "silu" ("swish" is accepted as an alias).

Backends: "torch" (causal_conv1d_ref, CPU default), "cuda" (csrc/conv1d -> libprism_cuda.so through ctypes: a
plain C ABI fed data_ptr()s, strides and the current stream; no torch C++ ABI), "triton" (kernels/causal_conv1d.py,
the portable fallback), "causal_conv1d" (Dao-AILab's causal-conv1d package when installed). Both fast paths are
the custom ops prism::causal_conv1d_fwd / _bwd (fake impls, registered autograd: dx, dweight, dbias; the backward
recomputes the pre-activation). The CUDA library reads weight / bias as x's dtype, so a mismatch is a ValueError
naming the argument (check_param_dtypes), checked before anything runs.
Also here: causal_conv1d_update_cuda, the single-step decode update of the CUDA library.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import ctypes
import functools
from pathlib import Path
from typing import Optional  # custom_op schema inference

from prism_fast.ops._dispatch import has_module, resolve, triton_ok

_VALID = ("torch", "triton", "cuda", "causal_conv1d")


def causal_conv1d_ref(x, weight, bias=None, *, seq_idx=None, activation=None):
    """Pure-PyTorch reference: a sum of W shifted copies, masked by document. Computes in fp32."""
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"causal_conv1d: activation must be None or 'silu', got {activation!r}")
    Bsz, Cdim, T = x.shape
    W = weight.shape[1]
    xf, wf = x.float(), weight.float()
    out = torch.zeros_like(xf) if bias is None else bias.float()[None, :, None].expand(Bsz, Cdim, T).clone()
    for k in range(W):
        if k >= T:
            break
        shifted = F.pad(xf, (k, 0))[..., :T]                                  # x[t - k]
        term = wf[:, W - 1 - k][None, :, None] * shifted
        if seq_idx is not None and k > 0:
            same = torch.zeros(Bsz, T, dtype=torch.bool, device=x.device)
            same[:, k:] = seq_idx[:, k:] == seq_idx[:, :-k]
            term = term * same[:, None, :]
        out = out + term
    if activation in ("silu", "swish"):
        out = F.silu(out)
    return out.to(x.dtype)


_DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_I64 = ctypes.c_int64


@functools.cache
def _cuda_lib():
    """libprism_cuda.so (built from csrc/conv1d when nvcc was found at install time), or None."""
    import prism_fast
    for d in prism_fast.__path__:
        p = Path(d) / "libprism_cuda.so"
        if p.exists():
            lib = ctypes.CDLL(str(p))
            i, vp, i32p, f32p = ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p
            lib.prism_conv1d_fwd.argtypes = [i, vp, vp, vp, i32p, vp, i, i, i, i] + [_I64] * 8 + [i, vp]
            lib.prism_conv1d_bwd.argtypes = ([i, vp, vp, vp, i32p, vp, vp, f32p, f32p, i, i, i, i] + [_I64] * 11
                                             + [i, vp])
            lib.prism_conv1d_update.argtypes = [i, vp, vp, vp, vp, vp, i, i, i] + [_I64] * 7 + [i, vp]
            lib.prism_cuda_device_count.argtypes = [ctypes.POINTER(ctypes.c_int)]
            lib.prism_cuda_error_string.restype = ctypes.c_char_p
            lib.prism_cuda_error_string.argtypes = [i]
            return lib
    return None


@functools.cache
def cuda_lib_usable() -> bool:
    """True when the library is built AND its (statically linked, CUDA 13) runtime sees a device. Why not just
    torch.cuda.is_available(): torch may run on an older driver than the library's runtime needs, in which case
    "auto" must fall back to Triton instead of failing at the first call."""
    lib = _cuda_lib()
    if lib is None:
        return False
    n = ctypes.c_int(0)
    return lib.prism_cuda_device_count(ctypes.byref(n)) == 0 and n.value > 0


def _need_cuda(*tensors):
    """The library plus its checks: loaded, tensors on a CUDA device, supported dtype. Raises RuntimeError."""
    lib = _cuda_lib()
    if lib is None:
        raise RuntimeError("causal_conv1d: backend 'cuda' needs libprism_cuda.so, which is built only when nvcc "
                           "is found: reinstall with `pip install --no-build-isolation -e .` on a machine with "
                           "the CUDA toolkit (or use backend='triton' / 'torch')")
    if not all(t.is_cuda for t in tensors if t is not None):
        n = ctypes.c_int(0)
        err = lib.prism_cuda_device_count(ctypes.byref(n))
        why = lib.prism_cuda_error_string(err).decode() if err else f"{n.value} device(s) visible"
        raise RuntimeError(f"causal_conv1d: backend 'cuda' needs a CUDA device and CUDA tensors (CUDA runtime "
                           f"says: {why}); use backend='torch' or 'triton' on CPU")
    if tensors[0].dtype not in _DTYPE_CODE:
        raise RuntimeError(f"causal_conv1d: backend 'cuda' supports fp32/fp16/bf16, got {tensors[0].dtype}")
    return lib


def _check_rc(lib, rc, what):
    if rc:
        raise RuntimeError(f"{what}: CUDA error {rc}: {lib.prism_cuda_error_string(rc).decode()}")


def _empty_like_layout(x):
    """Empty [B, C, T] in x's layout: channels-last (stride over C == 1: the Mamba2 mixer passes a transposed
    [B, T, C] view) or channels-first, so the caller's later [B, T, C] views stay copy-free."""
    Bsz, C, T = x.shape
    if x.stride(1) == 1 and T > 1:
        return torch.empty(Bsz, T, C, device=x.device, dtype=x.dtype).transpose(1, 2)
    return torch.empty(Bsz, C, T, device=x.device, dtype=x.dtype)


def _ptr(t):
    return t.data_ptr() if t is not None else None


def _stream(x):
    return torch.cuda.current_stream(x.device).cuda_stream


def _conv_fwd_cuda(x, weight, bias, seq_idx, silu):
    lib = _need_cuda(x, weight)
    Bsz, C, T = x.shape
    out = _empty_like_layout(x)
    s_st = seq_idx.stride() if seq_idx is not None else (0, 0)
    rc = lib.prism_conv1d_fwd(_DTYPE_CODE[x.dtype], _ptr(x), _ptr(weight), _ptr(bias), _ptr(seq_idx), _ptr(out),
                              Bsz, C, T, weight.shape[1], *x.stride(), *out.stride(), *s_st, int(silu), _stream(x))
    _check_rc(lib, rc, "causal_conv1d fwd")
    return out


def _conv_bwd_cuda(dout, x, weight, bias, seq_idx, silu):
    lib = _need_cuda(x, weight, dout)
    Bsz, C, T = x.shape
    W = weight.shape[1]
    blk = lib.prism_conv1d_bwd_block_t()
    n_blk = -(-T // blk)
    dx = _empty_like_layout(x)
    dw_part = torch.empty(Bsz, n_blk, C, W, device=x.device, dtype=torch.float32)
    db_part = torch.empty(Bsz, n_blk, C, device=x.device, dtype=torch.float32) if bias is not None else None
    s_st = seq_idx.stride() if seq_idx is not None else (0, 0)
    rc = lib.prism_conv1d_bwd(_DTYPE_CODE[x.dtype], _ptr(x), _ptr(weight), _ptr(bias), _ptr(seq_idx), _ptr(dout),
                              _ptr(dx), _ptr(dw_part), _ptr(db_part), Bsz, C, T, W, *x.stride(), *dout.stride(),
                              *dx.stride(), *s_st, int(silu), _stream(x))
    _check_rc(lib, rc, "causal_conv1d bwd")
    return dx, dw_part.sum((0, 1)), (db_part.sum((0, 1)) if bias is not None else None)


def causal_conv1d_update_cuda(x, conv_state, weight, bias=None, *, activation=None):
    """Decode step on the CUDA library (same contract as ops.mamba_decode.causal_conv1d_update_ref):
    x [B, C], conv_state [B, C, W-1] (x's dtype; shifted in place), weight [C, W] -> out [B, C]."""
    silu = _activation(activation)
    check_param_dtypes(x, weight, bias, "cuda")
    lib = _need_cuda(x, conv_state, weight)
    if conv_state.dtype != x.dtype:
        raise RuntimeError("causal_conv1d_update: backend 'cuda' needs conv_state in x's dtype")
    weight = weight.contiguous()
    bias = bias.contiguous() if bias is not None else None
    Bsz, C = x.shape
    out = torch.empty(Bsz, C, device=x.device, dtype=x.dtype)
    rc = lib.prism_conv1d_update(_DTYPE_CODE[x.dtype], _ptr(x), _ptr(conv_state), _ptr(weight), _ptr(bias),
                                 _ptr(out), Bsz, C, weight.shape[1], *x.stride(), *conv_state.stride(),
                                 *out.stride(), int(silu), _stream(x))
    _check_rc(lib, rc, "causal_conv1d_update")
    return out


# The "cuda" and "triton" paths as torch custom ops (fake impls + registered autograd): torch.compile keeps each
# as one opaque node (fullgraph=True) instead of tracing into ctypes calls or Triton launchers.

@torch.library.custom_op("prism::causal_conv1d_fwd", mutates_args=())
def _conv_fwd_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], seq_idx: Optional[torch.Tensor],
                 silu: bool, backend: str) -> torch.Tensor:
    """out [B, C, T] in x's layout (see _empty_like_layout)."""
    if backend == "cuda":
        return _conv_fwd_cuda(x, weight, bias, seq_idx, silu)
    from prism_fast.kernels.causal_conv1d import causal_conv1d_fwd
    return causal_conv1d_fwd(x, weight, bias, seq_idx, silu, _empty_like_layout(x))


@_conv_fwd_op.register_fake
def _(x, weight, bias, seq_idx, silu, backend):
    return _empty_like_layout(x)


@torch.library.custom_op("prism::causal_conv1d_bwd", mutates_args=())
def _conv_bwd_op(dout: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                 seq_idx: Optional[torch.Tensor], silu: bool,
                 backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx like x, dweight [C, W] in weight's dtype, dbias [C] in bias's dtype, or empty without bias). The
    backward recomputes the pre-activation."""
    if backend == "cuda":
        dx, dw, db = _conv_bwd_cuda(dout, x, weight, bias, seq_idx, silu)
    else:
        from prism_fast.kernels.causal_conv1d import causal_conv1d_bwd
        dx, dw, db = causal_conv1d_bwd(dout, x, weight, bias, seq_idx, silu, _empty_like_layout(x))
    return dx, dw.to(weight.dtype), (db.to(bias.dtype) if db is not None else x.new_empty(0))


@_conv_bwd_op.register_fake
def _(dout, x, weight, bias, seq_idx, silu, backend):
    return (_empty_like_layout(x), weight.new_empty(weight.shape),
            bias.new_empty(bias.shape) if bias is not None else x.new_empty(0))


def _conv_setup_context(ctx, inputs, output):
    x, weight, bias, seq_idx, silu, backend = inputs
    ctx.save_for_backward(x, weight, bias, seq_idx)
    ctx.cfg = (silu, backend)


def _conv_backward(ctx, dout):
    x, weight, bias, seq_idx = ctx.saved_tensors
    dx, dw, db = _conv_bwd_op(dout, x, weight, bias, seq_idx, *ctx.cfg)
    return dx, dw, (db if bias is not None else None), None, None, None


_conv_fwd_op.register_autograd(_conv_backward, setup_context=_conv_setup_context)


def check_param_dtypes(x, weight, bias, backend: str) -> None:
    """The CUDA library reads weight and bias through x's element type (one dtype code per call): a mismatch would
    reinterpret their bytes. Raise naming the argument instead."""
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.dtype != x.dtype:
            raise ValueError(f"causal_conv1d: backend {backend!r} needs {name} in x's dtype ({x.dtype}), got "
                             f"{t.dtype}; cast it (e.g. {name}.to(x.dtype)) or use backend='triton' / 'torch'")


def _activation(activation):
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"causal_conv1d: activation must be None or 'silu', got {activation!r}")
    return activation is not None


def causal_conv1d(x, weight, bias=None, *, seq_idx=None, activation=None, backend="auto"):
    """See module docstring. x [B, C, T] (any strides), weight [C, W] (W in 2..4 for the fast paths), bias [C],
    seq_idx [B, T] int. Returns [B, C, T] in x.dtype."""
    silu = _activation(activation)
    if weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        raise ValueError(f"causal_conv1d: weight must be [C, W] with C = x.shape[1] = {x.shape[1]}, "
                         f"got {tuple(weight.shape)} (squeeze nn.Conv1d's [C, 1, W] weight)")
    auto = ["torch"]
    if x.is_cuda:
        auto = (["cuda"] if cuda_lib_usable() else []) + (["triton"] if triton_ok("cuda") else []) + auto
    b = resolve("causal_conv1d", backend, _VALID, auto)
    if b == "torch":
        return causal_conv1d_ref(x, weight, bias, seq_idx=seq_idx, activation=activation)
    if b == "causal_conv1d":
        if not has_module("causal_conv1d"):
            raise RuntimeError("causal_conv1d: backend 'causal_conv1d' needs `pip install causal-conv1d`")
        from causal_conv1d import causal_conv1d_fn
        return causal_conv1d_fn(x, weight, bias, seq_idx=seq_idx.to(torch.int32) if seq_idx is not None else None,
                                activation=activation)
    if not 2 <= weight.shape[1] <= 4:
        raise ValueError(f"causal_conv1d: backend {b!r} supports widths 2-4, got {weight.shape[1]}; use 'torch'")
    if b == "triton" and not triton_ok(x.device.type):
        raise RuntimeError("causal_conv1d: backend 'triton' needs a CUDA tensor (or TRITON_INTERPRET=1 on CPU)")
    if b == "cuda":
        check_param_dtypes(x, weight, bias, b)
        _need_cuda(x, weight)
    seq = seq_idx.to(torch.int32) if seq_idx is not None else None
    return _conv_fwd_op(x, weight.contiguous(), bias.contiguous() if bias is not None else None, seq, silu, b)
