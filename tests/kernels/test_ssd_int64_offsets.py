"""SSD kernels index with int64: views whose element offsets pass 2^31 read and write the right memory.

Hazard (issue 12, section 3): offsets like t * stride_t were int32 products; past 2^31 elements (the fused
in_proj output of Nemotron-H-8B has ~18.5k columns, so t * stride_t wraps at ~116k tokens) they turn negative.
Here x, z, B, C and dt are views into one in_proj buffer (the mixer's layout) whose token stride is
2^31 / 48 elements, so the products t * stride_t of tokens 48..63 (the last chunk) pass 2^31. The buffer is
a ~5.6 GB fp16 allocation that is reserved but never touched except for the 64 rows (the interpreter reads
tensors in place, and Linux commits only the pages written). Outputs and gradients must equal a run on a
contiguous copy. On the old int32 kernels this test dies with SIGSEGV (reads 8 GB before the buffer). The AOT
side (the int64 index math compiles for sm_90 / sm_80) is in tests/kernels/test_aot.py.
"""
import torch

from prism_fast.kernels.ssd_combined import ssd_combined_bwd, ssd_combined_fwd

T, H, G, P, N, L = 64, 2, 1, 16, 16, 16
W = 2 * H * P + 2 * G * N + H                  # x | z | B | C | dt, as the Mamba2 in_proj lays them out


def _split(proj):
    x, z = proj[..., :H * P].unflatten(-1, (H, P)), proj[..., H * P:2 * H * P].unflatten(-1, (H, P))
    o = 2 * H * P
    B, C = proj[..., o:o + G * N].unflatten(-1, (G, N)), proj[..., o + G * N:o + 2 * G * N].unflatten(-1, (G, N))
    return x, z, B, C, proj[..., -H:]


def _run(proj, dout, A, D, dt_bias):
    x, z, B, C, dt = _split(proj)
    kw = dict(D=D, z=z, dt_bias=dt_bias, dt_softplus=True, dt_limit=(0.0, float("inf")), seg=None,
              initial_states=None)
    out, y_pre, final = ssd_combined_fwd(x, dt, A, B, C, L, **kw)
    grads = ssd_combined_bwd(dout, None, x, dt, A, B, C, L, **kw, y_pre=y_pre)
    return [out, final] + [g for g in grads if g is not None]


def test_offsets_past_2_31_elements():
    token_stride = -(-2 ** 31 // 48)                # token 48 starts at element 2^31
    storage = torch.empty((T - 1) * token_stride + W, dtype=torch.float16)   # reserved; ~64 pages touched
    proj = storage.as_strided((1, T, W), (T * token_stride, token_stride, 1))
    g = torch.Generator().manual_seed(0)
    proj.copy_(torch.randn(1, T, W, generator=g) * 0.5)
    assert 48 * proj.stride(1) >= 2 ** 31 > 47 * proj.stride(1)
    dout = torch.randn(1, T, H, P, generator=g).half()
    A, D, dt_bias = -torch.rand(H, generator=g) - 0.5, torch.randn(H, generator=g), torch.randn(H, generator=g)
    got = _run(proj, dout, A, D, dt_bias)
    want = _run(proj.contiguous(), dout, A, D, dt_bias)
    for i, (a, b) in enumerate(zip(got, want)):
        assert torch.equal(a, b), f"result {i} differs: max {(a.float() - b.float()).abs().max():.3e}"
