"""varlen_attention: Triton FA2 kernels (interpreter on CPU) and the torch backend vs the per-document reference.

Packs mix documents of length 1, 7, 97, 128 (and 1025 in one small case) so that query/key blocks straddle
document ends. The reference is varlen_attention_ref (explicit fp32 softmax, one document at a time), whose
gradients come from autograd. Small head dims keep the interpreter affordable; one case uses Dh = 64 and one
Dh = 24 (padded to 32 inside the kernel).
"""
import math

import pytest
import torch

from prism_fast.ops import varlen_attention, varlen_attention_ref

TOL = {torch.float32: (2e-5, 2e-5), torch.float16: (2e-3, 2e-3)}
TOL_GRAD = {torch.float32: (1e-4, 1e-4), torch.float16: (4e-3, 4e-3)}


def _pack(lens, H, Hkv, Dh, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    T = sum(lens)
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
    q, k, v = (torch.randn(T, h, Dh, generator=g).to(dtype) for h in (H, Hkv, Hkv))
    return q, k, v, cu


def _assert_close(name, got, want, atol, rtol):
    diff = (got.float() - want.float()).abs()
    bad = diff > atol + rtol * want.float().abs()
    assert not bad.any(), (f"{name}: max diff {diff.max().item():.3e}, mean {diff.mean().item():.3e}, "
                           f"first bad index {bad.nonzero()[0].tolist()}")


def _fwd_bwd(fn, q, k, v, do):
    q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
    out = fn(q, k, v)
    out.backward(do)
    return out.detach(), q.grad, k.grad, v.grad


# (lens, H, Hkv, Dh, causal, window, dtype, block): GQA 1/4/8, causal on/off, windows smaller and larger than the
# documents, fp32 and fp16, one Dh = 64 case, one non-power-of-two Dh, one case with 16-wide blocks.
CASES = [
    ((1, 7, 97, 128), 2, 2, 16, True, (-1, -1), torch.float32, 16),
    ((7, 128, 1, 97), 4, 1, 16, False, (-1, -1), torch.float32, None),
    ((97, 1, 128, 7), 8, 1, 16, True, (5, -1), torch.float32, None),
    ((128, 7, 97, 1), 4, 4, 24, False, (10, 3), torch.float32, 32),
    ((1, 97, 7, 128), 8, 2, 32, True, (300, 0), torch.float16, None),
    ((97, 128, 7, 1), 2, 1, 32, False, (200, 500), torch.float16, None),
    ((7, 97, 1), 2, 1, 64, True, (-1, -1), torch.float32, None),
]


@pytest.mark.parametrize("lens,H,Hkv,Dh,causal,window,dtype,block", CASES)
def test_triton_matches_per_document_reference(lens, H, Hkv, Dh, causal, window, dtype, block):
    from prism_fast.kernels.flash_attn_bwd import varlen_attn_bwd
    from prism_fast.kernels.flash_attn_fwd import varlen_attn_fwd
    q, k, v, cu = _pack(lens, H, Hkv, Dh, dtype)
    do = torch.randn(q.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    scale = 0.7 / math.sqrt(Dh)
    ref = _fwd_bwd(lambda a, b, c: varlen_attention_ref(a.float(), b.float(), c.float(), cu, causal=causal,
                                                        softmax_scale=scale, window_size=window),
                   q, k, v, do.float())
    if block is None:   # through the public op (custom op + autograd)
        got = _fwd_bwd(lambda a, b, c: varlen_attention(a, b, c, cu, causal=causal, softmax_scale=scale,
                                                        window_size=window, backend="triton"), q, k, v, do)
    else:               # launchers directly, to force small blocks (more blocks per document)
        out, lse = varlen_attn_fwd(q, k, v, cu, softmax_scale=scale, causal=causal, window_size=window,
                                   block_m=block, block_n=block)
        got = (out, *varlen_attn_bwd(do, q, k, v, out, lse, cu, softmax_scale=scale, causal=causal,
                                     window_size=window, block_m=block, block_n=block))
    assert got[0].dtype == dtype
    _assert_close("out", got[0], ref[0], *TOL[dtype])
    for name, g, r in zip(("dq", "dk", "dv"), got[1:], ref[1:]):
        _assert_close(name, g, r, *TOL_GRAD[dtype])


def test_long_document_1025():
    from prism_fast.kernels.flash_attn_bwd import varlen_attn_bwd
    from prism_fast.kernels.flash_attn_fwd import varlen_attn_fwd
    q, k, v, cu = _pack((1025, 7), 1, 1, 16, torch.float32, seed=3)
    do = torch.randn(q.shape, generator=torch.Generator().manual_seed(4))
    ref = _fwd_bwd(lambda a, b, c: varlen_attention_ref(a, b, c, cu, causal=True), q, k, v, do)
    out, lse = varlen_attn_fwd(q, k, v, cu, softmax_scale=0.25, causal=True, block_m=64, block_n=64)
    got = (out, *varlen_attn_bwd(do, q, k, v, out, lse, cu, softmax_scale=0.25, causal=True, block_m=64,
                                 block_n=64))
    for name, g, r in zip(("out", "dq", "dk", "dv"), got, ref):
        _assert_close(name, g, r, 1e-4, 1e-4)


def test_doc_block_cumsum_chunks_and_empty_documents():
    from prism_fast.kernels.flash_attn_fwd import doc_block_cumsum
    lens = torch.tensor([0, 1, 16, 17, 0, 40, 3, 33, 64])
    cu = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)]).to(torch.int32)
    for chunk in (2, 4, 1024):
        got = doc_block_cumsum(cu, 16, chunk=chunk)
        assert got.tolist() == ((lens + 15) // 16).cumsum(0).tolist(), chunk
    # empty documents inside a pack do not break the attention kernels either
    q, k, v, _ = _pack((int(lens.sum()),), 2, 1, 16, torch.float32)
    got = varlen_attention(q, k, v, cu, backend="triton")
    _assert_close("out", got, varlen_attention_ref(q, k, v, cu), 2e-5, 2e-5)


def test_lse_matches_logsumexp():
    from prism_fast.kernels.flash_attn_fwd import varlen_attn_fwd
    q, k, v, cu = _pack((7, 40), 2, 1, 16, torch.float32)
    _, lse = varlen_attn_fwd(q, k, v, cu, softmax_scale=0.25, causal=True)
    for s, e in ((0, 7), (7, 47)):
        sc = torch.einsum("thd,shd->hts", q[s:e], k[s:e].expand(-1, 2, -1)) * 0.25
        sc = sc.masked_fill(torch.ones(e - s, e - s, dtype=torch.bool).triu(1), float("-inf"))
        _assert_close("lse", lse[:, s:e], torch.logsumexp(sc, -1), 1e-5, 1e-5)


def test_blocks_outside_the_window_are_not_visited():
    """Poison keys/values 0..31 of a 128-token document with NaN. Query blocks (16 rows) from row 48 on only need
    keys >= 43 with window left = 5: if the kernel visited (and merely masked) earlier blocks, 0 * NaN = NaN in
    P @ V would reach them. Documents after it must be untouched too."""
    from prism_fast.kernels.flash_attn_fwd import varlen_attn_fwd
    q, k, v, cu = _pack((128, 40), 2, 1, 16, torch.float32)
    k[:32], v[:32] = float("nan"), float("nan")
    out, lse = varlen_attn_fwd(q, k, v, cu, softmax_scale=0.25, causal=True, window_size=(5, -1),
                               block_m=16, block_n=16)
    assert torch.isnan(out[:32]).any()      # the poison is real
    kc, vc = k.clone(), v.clone()
    kc[:32], vc[:32] = 0.0, 0.0
    ref = varlen_attention_ref(q, kc, vc, cu, causal=True, softmax_scale=0.25, window_size=(5, -1))
    _assert_close("out[48:]", out[48:], ref[48:], 2e-5, 2e-5)


def test_torch_backend_matches_reference():
    q, k, v, cu = _pack((1, 7, 97, 30), 8, 2, 16, torch.float32)
    for causal, window in ((True, (-1, -1)), (False, (4, 9)), (True, (3, -1))):
        got = varlen_attention(q, k, v, cu, causal=causal, window_size=window, backend="torch")
        _assert_close("torch", got, varlen_attention_ref(q, k, v, cu, causal=causal, window_size=window), 1e-5, 1e-5)
    assert varlen_attention(q, k, v, cu).shape == q.shape      # auto -> torch on CPU


def test_compile_and_fake_impl():
    q, k, v, cu = _pack((7, 40, 3), 4, 2, 16, torch.float32)
    do = torch.randn(q.shape)
    ref = _fwd_bwd(lambda a, b, c: varlen_attention_ref(a, b, c, cu), q, k, v, do)
    for backend, fullgraph in (("torch", False), ("triton", True)):
        torch._dynamo.reset()
        fn = torch.compile(lambda a, b, c: varlen_attention(a, b, c, cu, backend=backend), backend="aot_eager",
                           fullgraph=fullgraph)
        got = _fwd_bwd(fn, q, k, v, do)
        for name, g, r in zip(("out", "dq", "dk", "dv"), got, ref):
            _assert_close(f"{backend} {name}", g, r, 1e-4, 1e-4)
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        fq, fk = torch.empty(50, 8, 80, dtype=torch.bfloat16), torch.empty(50, 2, 80, dtype=torch.bfloat16)
        out, lse = torch.ops.prism.varlen_attention_fwd(fq, fk, fk, torch.empty(4, dtype=torch.int32), True, 0.1,
                                                        -1, 0)
        dq, dk, dv = torch.ops.prism.varlen_attention_bwd(out, fq, fk, fk, out, lse, torch.empty(4, dtype=torch.int32),
                                                          True, 0.1, -1, 0)
    assert out.shape == (50, 8, 80) and out.dtype == torch.bfloat16 and lse.shape == (8, 50)
    assert lse.dtype == torch.float32 and dq.shape == fq.shape and dk.shape == dv.shape == fk.shape
    torch.library.opcheck(torch.ops.prism.varlen_attention_fwd, (q, k, v, cu, True, 0.25, -1, 0))


def _fwd_bwd_strided(fn, q, k, v, do):
    """_fwd_bwd without the clone: q / k / v keep their (non-contiguous) strides."""
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    out = fn(q, k, v)
    out.backward(do)
    return out.detach(), q.grad, k.grad, v.grad


def test_cpu_custom_op_is_bitwise_sdpa_per_document():
    """prism::varlen_attention_cpu_fwd/_bwd (ATen's CPU flash kernels on strided per-document views, runs of equal
    lengths batched) must equal eager SDPA per document exactly: same kernels, no copies of the heads. Odd
    lengths, empty documents, equal-length runs, GQA, strided q/k/v (as the fused q/k/v projection produces),
    fp32 and bf16, causal and bidirectional."""
    import torch.nn.functional as F
    torch.manual_seed(3)
    lens = [5, 0, 37, 1, 90, 16, 16, 16, 3, 3, 0, 3]      # runs of equal lengths go to the kernel as one batch
    cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32)
    from prism_fast.ops._attention_cpu import _runs
    assert _runs(cu) == [[0, 5, 1], [5, 37, 1], [42, 1, 1], [43, 90, 1], [133, 16, 3], [181, 3, 3]]
    T, H, Hkv, Dh = sum(lens), 6, 2, 16
    for dtype in (torch.float32, torch.bfloat16):
        for causal in (True, False):
            qkv = torch.randn(T, (H + 2 * Hkv) * Dh, dtype=dtype)
            q, k, v = (t.reshape(T, -1, Dh) for t in qkv.split([H * Dh, Hkv * Dh, Hkv * Dh], -1))
            do = torch.randn(T, H, Dh, dtype=dtype)
            got = _fwd_bwd_strided(lambda a, b, c: varlen_attention(a, b, c, cu, causal=causal, backend="torch"),
                                   q, k, v, do)
            outs = []

            def per_doc(a, b, c):
                outs.clear()
                for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
                    if e > s:
                        x = [t[s:e].transpose(0, 1).unsqueeze(0) for t in (a, b, c)]
                        outs.append(F.scaled_dot_product_attention(*x, is_causal=causal, scale=Dh ** -0.5,
                                                                   enable_gqa=True)[0].transpose(0, 1))
                return torch.cat(outs)
            want = _fwd_bwd_strided(per_doc, q, k, v, do)
            for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
                assert torch.equal(g, w), f"{dtype} causal={causal} {name}: not bitwise equal"
            ref = varlen_attention_ref(q.double(), k.double(), v.double(), cu, causal=causal)
            _assert_close(f"{dtype} ref", got[0].double(), ref, 2e-2 if dtype == torch.bfloat16 else 1e-5, 1e-5)


def test_cpu_custom_op_compiles_fullgraph_and_opchecks():
    """The CPU op hides the cu_seqlens host read from dynamo: a whole attention layer compiles as one graph."""
    q, k, v, cu = _pack((7, 40, 3), 4, 2, 16, torch.float32)
    do = torch.randn(q.shape)
    ref = _fwd_bwd(lambda a, b, c: varlen_attention(a, b, c, cu, backend="torch"), q, k, v, do)
    torch._dynamo.reset()
    fn = torch.compile(lambda a, b, c: varlen_attention(a, b, c, cu, backend="torch"), backend="aot_eager",
                       fullgraph=True)
    got = _fwd_bwd(fn, q, k, v, do)
    for name, g, r in zip(("out", "dq", "dk", "dv"), got, ref):
        assert torch.equal(g, r), f"compiled {name} differs from eager"
    torch.library.opcheck(torch.ops.prism.varlen_attention_cpu_fwd, (q, k, v, cu, True, 0.25))
    out, lse = torch.ops.prism.varlen_attention_cpu_fwd(q, k, v, cu, True, 0.25)
    torch.library.opcheck(torch.ops.prism.varlen_attention_cpu_bwd, (do, q, k, v, out, lse, cu, True, 0.25))


def test_user_errors():
    q, k, v, cu = _pack((7,), 3, 2, 16, torch.float32)
    with pytest.raises(ValueError, match="multiple of kv heads"):
        varlen_attention(q, k, v, cu)
    with pytest.raises(ValueError, match="cu_seqlens"):
        varlen_attention(q, q, q, cu.float())
    with pytest.raises(ValueError, match="unknown backend"):
        varlen_attention(q, q, q, cu, backend="cudnn")


def test_model_packed_training_and_decoding_with_triton_backends():
    """A tiny Mistral (GQA 4/2, sliding window 7) through prism_fast.models: packed loss + every parameter grad with
    the Triton varlen kernels equal the torch backend, and cached decoding with the Triton decode kernel equals
    the torch decode path."""
    from tests.models.hf_twin import twin
    model, _ = twin("mistral")
    lens = [5, 1, 17, 9, 13]
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
    x = torch.randint(0, 256, (1, sum(lens)), generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(1))
    res = {}
    for backend in ("torch", "triton"):
        model.zero_grad()
        model.configure_kernels({"attention": backend, "decode": backend})
        loss = model(x, cu_seqlens=cu, labels=x)
        loss.backward()
        cache = model.new_cache(2, 16)
        with torch.no_grad():
            steps = [model(y[:, :4], cache=cache)] + [model(y[:, t:t + 1], cache=cache) for t in range(4, 12)]
        res[backend] = (loss.detach(), [p.grad.clone() for p in model.parameters()], torch.cat(steps, 1))
    (l0, g0, s0), (l1, g1, s1) = res["torch"], res["triton"]
    _assert_close("loss", l1, l0, 1e-5, 1e-5)
    for i, (a, b) in enumerate(zip(g1, g0)):
        _assert_close(f"grad {i}", a, b, 1e-5, 1e-4)
    _assert_close("decode logits", s1, s0, 1e-4, 1e-4)
