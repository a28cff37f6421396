"""causal_conv1d: Triton kernels (interpreter on CPU) vs the torch reference, and the CUDA library's build/ABI.

The CUDA kernels cannot run here (no GPU); this file checks that the library was built whenever nvcc exists,
exports the C symbols the ctypes loader binds, loads without a driver (static CUDA runtime), that calling it
without a GPU raises a clear RuntimeError, and runs the kernels' own per-thread code (compiled for the host,
prism_conv1d_host) in both launch shapes against the reference. Numerics of the CUDA path: tests/gpu/test_ssm_gpu.py.
"""
import ctypes
import shutil
from pathlib import Path

import pytest
import torch

import prism_fast
from prism_fast.ops import causal_conv1d, causal_conv1d_ref
from prism_fast.ops.causal_conv1d import _cuda_lib, causal_conv1d_update_cuda, cuda_lib_usable
from prism_fast.ops.mamba_decode import causal_conv1d_update_ref
from tests.aot_util import aot_compile, assert_all_compiled


def _assert_close(name, got, want, atol, rtol):
    diff = (got.float() - want.float()).abs()
    bad = diff > atol + rtol * want.float().abs()
    assert not bad.any(), (f"{name}: max diff {diff.max().item():.3e}, mean {diff.mean().item():.3e}, "
                           f"first bad index {bad.nonzero()[0].tolist()}")


def _seq(Bsz, T):
    """Documents of lengths 1, 2 and longer; row 1 starts a document at t = 1 and at a tile border (t = 16)."""
    s = torch.zeros(Bsz, T, dtype=torch.int64)
    s[0, 1:] = 1
    s[0, 3:] = 2
    s[0, 30:] = 3
    s[0, 64:] = 4
    if Bsz > 1:
        s[1, 1:] = 5
        s[1, 16:] = 6
        s[1, 127:] = 7
    return s


@pytest.mark.parametrize("W", [2, 3, 4])
@pytest.mark.parametrize("seq,act,channels_last,dtype", [
    (False, None, False, torch.float32),
    (True, "silu", True, torch.float32),
    (True, None, False, torch.float16),
    (False, "silu", True, torch.float16),
])
def test_triton_fwd_bwd(W, seq, act, channels_last, dtype):
    """C 70 / T 150: two channel tiles and three time tiles (64 wide), documents across tile borders."""
    Bsz, C, T = 2, 70, 150
    g = torch.Generator().manual_seed(W)
    x = torch.randn(Bsz, T, C, generator=g).transpose(1, 2) if channels_last else torch.randn(Bsz, C, T, generator=g)
    x = x.to(dtype)
    w, b = torch.randn(C, W, generator=g).to(dtype), torch.randn(C, generator=g).to(dtype)
    s = _seq(Bsz, T) if seq else None
    dout = torch.randn(Bsz, C, T, generator=g).to(dtype)

    def run(fn, dt):
        leaves = [t.detach().to(dt).requires_grad_() for t in (x, w, b)]
        y = fn(*leaves)
        return (y, *torch.autograd.grad(y, leaves, dout.to(dt)))

    got = run(lambda a, c, d: causal_conv1d(a, c, d, seq_idx=s, activation=act, backend="triton"), dtype)
    ref = run(lambda a, c, d: causal_conv1d_ref(a, c, d, seq_idx=s, activation=act), torch.float32)
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    for name, a, r in zip(("out", "dx", "dweight", "dbias"), got, ref):
        assert a.dtype == dtype
        scale = (Bsz * T) ** 0.5 if name in ("dweight", "dbias") else 1.0   # sums over B*T terms
        _assert_close(name, a, r, tol * scale, tol * 4)


def test_triton_packed_equals_loop_over_documents():
    C, W, lens = 8, 4, (1, 5, 30)
    x = torch.randn(1, C, sum(lens))
    w, b = torch.randn(C, W), torch.randn(C)
    seq = torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(lens))[None]
    y = causal_conv1d(x, w, b, seq_idx=seq, activation="silu", backend="triton")
    t0 = 0
    for n in lens:
        yd = causal_conv1d(x[..., t0:t0 + n], w, b, activation="silu", backend="triton")
        _assert_close(f"doc at {t0}", y[..., t0:t0 + n], yd, 1e-6, 1e-5)
        t0 += n


def test_user_errors():
    x = torch.randn(1, 4, 8)
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d(x, torch.randn(4, 3), activation="relu")
    with pytest.raises(ValueError, match="squeeze"):
        causal_conv1d(x, torch.randn(4, 1, 3))
    with pytest.raises(ValueError, match="widths 2-4"):
        causal_conv1d(x, torch.randn(4, 5), backend="triton")


_SYMBOLS = ("prism_conv1d_fwd", "prism_conv1d_bwd", "prism_conv1d_bwd_block_t", "prism_conv1d_update",
            "prism_conv1d_host", "prism_cuda_device_count", "prism_cuda_error_string")
_NEEDS_LIB = pytest.mark.skipif(shutil.which("nvcc") is None, reason="no CUDA toolkit: the library is not built")


def _host_conv(backward, layout, x, w, b, seq, dout, silu):
    """Run the CUDA kernels' per-thread code on the CPU (prism_conv1d_host) -> out or (dx, dweight, dbias)."""
    lib = _cuda_lib()
    f = lib.prism_conv1d_host
    f.argtypes = [ctypes.c_int] * 2 + [ctypes.c_void_p] * 8 + [ctypes.c_int] * 4 + [ctypes.c_int64] * 11 + [
        ctypes.c_int]
    Bsz, C, T = x.shape
    W = w.shape[1]
    out = torch.empty(Bsz, T, C).transpose(1, 2) if layout == 1 else torch.empty(Bsz, C, T)
    nblk = -(-T // lib.prism_conv1d_bwd_block_t())
    dw, db = torch.zeros(Bsz, nblk, C, W), torch.zeros(Bsz, nblk, C)
    g = dout if dout is not None else out
    s_st = seq.stride() if seq is not None else (0, 0)
    ptr = lambda t: t.data_ptr() if t is not None else None  # noqa: E731
    f(int(backward), layout, ptr(x), ptr(w), ptr(b), ptr(seq), ptr(dout), ptr(out), ptr(dw), ptr(db),
      Bsz, C, T, W, *x.stride(), *g.stride(), *out.stride(), *s_st, int(silu))
    return (out, dw.sum((0, 1)), db.sum((0, 1))) if backward else out


@_NEEDS_LIB
@pytest.mark.parametrize("W", [2, 3, 4])
@pytest.mark.parametrize("layout", [0, 1])
def test_cuda_kernel_code_on_host(W, layout):
    """The CUDA kernels' segment functions (both launch shapes) vs the reference, fwd and bwd, with documents
    and T = 300 > one 128-step block (window carried across block borders in the channels-last shape)."""
    Bsz, C, T = 2, 5, 300
    g = torch.Generator().manual_seed(10 + W)
    x = torch.randn(Bsz, T, C, generator=g).transpose(1, 2) if layout else torch.randn(Bsz, C, T, generator=g)
    w, b, dout = torch.randn(C, W, generator=g), torch.randn(C, generator=g), torch.randn(Bsz, C, T, generator=g)
    seq = torch.zeros(Bsz, T, dtype=torch.int32)
    seq[0, 1:], seq[0, 127:], seq[0, 129:], seq[1, 200:] = 1, 2, 3, 4
    for s in (None, seq):
        for silu in (False, True):
            act = "silu" if silu else None
            leaves = [t.clone().requires_grad_() for t in (x, w, b)]
            ref = causal_conv1d_ref(*leaves, seq_idx=s, activation=act)
            rgrads = torch.autograd.grad(ref, leaves, dout)
            _assert_close("out", _host_conv(False, layout, x, w, b, s, None, silu), ref, 1e-5, 1e-5)
            for name, got, want in zip(("dx", "dweight", "dbias"), _host_conv(True, layout, x, w, b, s, dout, silu),
                                       rgrads):
                _assert_close(name, got, want, 1e-4, 1e-5)


@_NEEDS_LIB
def test_cuda_library_built_and_exports_c_abi():
    libs = [Path(d) / "libprism_cuda.so" for d in prism_fast.__path__ if (Path(d) / "libprism_cuda.so").exists()]
    assert libs, f"nvcc is present but libprism_cuda.so is missing from {prism_fast.__path__}: rebuild"
    lib = ctypes.CDLL(str(libs[0]))          # loads without a driver: the CUDA runtime is linked statically
    for sym in _SYMBOLS:
        assert hasattr(lib, sym), f"libprism_cuda.so does not export {sym}"
    assert _cuda_lib() is not None
    assert _cuda_lib().prism_conv1d_bwd_block_t() == 128


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without a GPU")
@_NEEDS_LIB
def test_cuda_backend_without_gpu_says_it_needs_one():
    lib = _cuda_lib()
    n = ctypes.c_int(-1)
    assert lib.prism_cuda_device_count(ctypes.byref(n)) != 0      # the C side reports the missing device/driver
    assert not cuda_lib_usable()                                   # so "auto" never picks it
    x, w = torch.randn(1, 4, 8), torch.randn(4, 3)
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        causal_conv1d(x, w, backend="cuda")
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        causal_conv1d_update_cuda(x[..., 0], torch.zeros(1, 4, 2), w)
    # auto never picks "cuda" for CPU tensors; the torch reference runs.
    _assert_close("auto on CPU", causal_conv1d(x, w), causal_conv1d_ref(x, w), 0, 0)


def test_update_reference_continues_the_full_conv():
    """Decode contract the CUDA update implements: conv of a prefix, then steps == conv of the whole row."""
    C, W, T = 6, 4, 9
    x, w, b = torch.randn(1, C, T), torch.randn(C, W), torch.randn(C)
    full = causal_conv1d_ref(x, w, b, activation="silu")
    state = torch.zeros(1, C, W - 1)
    steps = [causal_conv1d_update_ref(x[:, :, t], state, w, b, activation="silu") for t in range(T)]
    _assert_close("steps", torch.stack(steps, -1), full, 1e-6, 1e-6)


@pytest.mark.slow
def test_aot_compile_sm90_sm80():
    """Both kernels at each target's CONV1D_* row (sm_90's spill check is tests/kernels/test_spills.py)."""
    from tests.kernels.test_spills import conv1d_specs
    recs = aot_compile(conv1d_specs("sm90"), archs=(90,)) + aot_compile(conv1d_specs("sm80"), archs=(80,))
    assert_all_compiled(recs)
    assert len(recs) == 4
