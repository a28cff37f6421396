"""decode_attention "triton" backend (split-K kernel, interpreter on CPU): vs decode_attention_ref, vs full
(varlen) attention over the cache contents, contiguous vs paged caches (AOT compiles: tests/kernels/test_aot.py)."""
import pytest
import torch

from prism_fast.ops import varlen_attention_ref
from prism_fast.ops.decode_attention import decode_attention, decode_attention_ref
from tests.ops.test_varlen_attention import _assert_close

TOL = {torch.float32: (2e-5, 2e-5), torch.float16: (2e-3, 2e-3)}


def _cache(B, S, H, Hkv, Dh, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Dh, generator=g).to(dtype)
    k = torch.randn(B, S, Hkv, Dh, generator=g).to(dtype)
    v = torch.randn(B, S, Hkv, Dh, generator=g).to(dtype)
    return q, k, v


@pytest.mark.parametrize("H,Hkv,Dh,window,dtype", [
    (4, 4, 16, (-1, -1), torch.float32),
    (8, 2, 32, (10, 0), torch.float32),
    (8, 1, 24, (-1, -1), torch.float16),
    (4, 1, 64, (200, -1), torch.float32),
])
def test_triton_matches_reference(H, Hkv, Dh, window, dtype):
    q, k, v = _cache(3, 100, H, Hkv, Dh, dtype)
    seqlens = torch.tensor([1, 57, 100], dtype=torch.int64)        # the model cache passes int64
    got = decode_attention(q, k, v, seqlens, window_size=window, backend="triton")
    want = decode_attention_ref(q.float(), k.float(), v.float(), seqlens, window_size=window)
    assert got.dtype == dtype and got.shape == q.shape
    _assert_close("decode", got, want, *TOL[dtype])


def test_decode_equals_full_attention_over_cache():
    """The new token's output equals the last row of causal attention over the cached document."""
    H, Hkv, Dh, lens = 4, 2, 16, (1, 33, 70)
    q, k, v = _cache(3, 80, H, Hkv, Dh, torch.float32, seed=5)
    seqlens = torch.tensor(lens, dtype=torch.int32)
    for window in ((-1, -1), (8, 0)):
        got = decode_attention(q, k, v, seqlens, window_size=window, backend="triton")
        for b, L in enumerate(lens):
            qd = torch.randn(L, H, Dh)
            qd[-1] = q[b]                                   # only the last query row matters
            full = varlen_attention_ref(qd, k[b, :L], v[b, :L], torch.tensor([0, L], dtype=torch.int32),
                                        causal=True, window_size=window)
            _assert_close(f"b={b} window={window}", got[b], full[-1], 2e-5, 2e-5)


def test_paged_equals_contiguous_and_split_counts_agree():
    from prism_fast.kernels.decode_attention import decode_attn_fwd
    B, H, Hkv, Dh, P, nb = 3, 8, 2, 16, 16, 6
    q, k, v = _cache(B, nb * P, H, Hkv, Dh, torch.float32, seed=2)
    seqlens = torch.tensor([5, 96, 40], dtype=torch.int32)
    perm = torch.randperm(B * nb + 4, generator=torch.Generator().manual_seed(0))[:B * nb]
    block_table = perm.view(B, nb).to(torch.int32)
    kp = torch.zeros(B * nb + 4, P, Hkv, Dh)
    vp = torch.zeros_like(kp)
    kp[block_table.long()] = k.view(B, nb, P, Hkv, Dh)
    vp[block_table.long()] = v.view(B, nb, P, Hkv, Dh)
    want = decode_attention_ref(q, k, v, seqlens)
    _assert_close("ref paged", decode_attention_ref(q, kp, vp, seqlens, block_table=block_table), want, 1e-6, 1e-6)
    _assert_close("torch paged", decode_attention(q, kp, vp, seqlens, block_table=block_table, backend="torch"),
                  want, 1e-5, 1e-5)
    _assert_close("triton paged", decode_attention(q, kp, vp, seqlens, block_table=block_table, backend="triton"),
                  want, 2e-5, 2e-5)
    for splits in (1, 3, 6):
        _assert_close(f"splits={splits}", decode_attn_fwd(q, k, v, seqlens, softmax_scale=Dh ** -0.5,
                                                          num_splits=splits), want, 2e-5, 2e-5)


def test_compile_fullgraph_and_fake_impl():
    q, k, v = _cache(2, 40, 4, 2, 16, torch.float32, seed=7)
    seqlens = torch.tensor([3, 40], dtype=torch.int32)
    torch._dynamo.reset()
    fn = torch.compile(lambda a, b, c, s: decode_attention(a, b, c, s, window_size=(9, 0), backend="triton"),
                       backend="aot_eager", fullgraph=True)
    _assert_close("compiled", fn(q, k, v, seqlens), decode_attention_ref(q, k, v, seqlens, window_size=(9, 0)),
                  2e-5, 2e-5)
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        fq, fk = torch.empty(3, 8, 128, dtype=torch.bfloat16), torch.empty(3, 64, 2, 128, dtype=torch.bfloat16)
        out = torch.ops.prism.decode_attention(fq, fk, fk, torch.empty(3, dtype=torch.int32), 0.1, -1, None)
    assert out.shape == (3, 8, 128) and out.dtype == torch.bfloat16
    torch.library.opcheck(torch.ops.prism.decode_attention, (q, k, v, seqlens, 0.25, -1, None))
