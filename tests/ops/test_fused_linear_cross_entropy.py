"""fused_linear_cross_entropy: torch (chunked) and triton (interpreter on CPU) backends vs the unchunked reference.

Shapes are odd on purpose (N, D, V not multiples of the chunk or BLOCK_V) and chunk_size is forced small, so
every case runs several chunks with a ragged last one. fp32 is checked with tight tolerances; fp16 with the
error-budget rule (error vs the fp32 reference <= 2x plain fp16 PyTorch's, 3x for gradients).
"""
import pytest
import torch

from prism_fast.ops import fused_linear_cross_entropy, fused_linear_cross_entropy_ref

BACKENDS = ["torch", "triton"]
SHAPES = [(47, 31, 1003), (61, 65, 4099)]          # (N, D, V); 4099 > BLOCK_V: two V tiles per row


def assert_close_verbose(name, got, want, atol, rtol):
    """allclose with the max/mean error and the first mismatching indices in the failure message."""
    got, want = got.detach().float(), want.detach().float()
    err = (got - want).abs()
    bad = err > atol + rtol * want.abs()
    assert not torch.isnan(got).any(), f"{name}: NaN in result"
    assert not bad.any(), (f"{name}: max err {err.max().item():.3e}, mean {err.mean().item():.3e}, "
                           f"{int(bad.sum())} bad, first at {bad.nonzero()[:5].tolist()}")


def assert_within_budget(name, got, plain, ref, factor, floor):
    """max|got - ref| <= factor * max|plain - ref| + floor (floor absorbs a lucky near-zero plain error)."""
    e_got = (got.detach().float() - ref.float()).abs().max().item()
    e_plain = (plain.detach().float() - ref.float()).abs().max().item()
    assert e_got <= factor * e_plain + floor, f"{name}: err {e_got:.3e} > {factor} x plain {e_plain:.3e} + {floor}"


def make_inputs(n, d, v, dtype, seed=0, ignore_frac=0.2, ignore_index=-100):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g).to(dtype)
    weight = (torch.randn(v, d, generator=g) * d ** -0.5 * 3).to(dtype)      # logits ~ N(0, 9)
    labels = torch.randint(0, v, (n,), generator=g)
    labels[torch.rand(n, generator=g) < ignore_frac] = ignore_index
    return hidden, weight, labels


def run(fn, hidden, weight, labels, upstream, **kw):
    """Loss and grads (hidden, weight) of fn; upstream weights the loss (scalar or per token)."""
    h = hidden.detach().clone().requires_grad_(True)
    w = weight.detach().clone().requires_grad_(True)
    loss = fn(h, w, labels, **kw)
    (loss.float() * upstream).sum().backward()
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference(backend, dtype, reduction, shape):
    n, d, v = shape
    hidden, weight, labels = make_inputs(n, d, v, dtype, seed=n + v)
    # Granite-style logit_scale and a z-loss on the second shape; plain CE on the first.
    extra = dict(logit_scale=0.25, z_loss=1e-3) if v > 2000 else {}
    up = torch.randn(n, generator=torch.Generator().manual_seed(1)) if reduction == "none" else torch.tensor(1.7)
    got = run(fused_linear_cross_entropy, hidden, weight, labels, up, reduction=reduction, backend=backend,
              chunk_size=32, **extra)
    ref = run(fused_linear_cross_entropy_ref, hidden.float(), weight.float(), labels, up, reduction=reduction,
              **extra)
    # "sum" grows with N: compare per token.
    norm = n if reduction == "sum" else 1
    names = ("loss", "d_hidden", "d_weight")
    if dtype == torch.float32:
        for name, a, b, tol in zip(names, got, ref, (1e-5, 1e-5, 2e-5)):
            assert_close_verbose(name, a / norm, b / norm, atol=tol, rtol=1e-4)
    else:
        plain = run(_plain_half, hidden, weight, labels, up, reduction=reduction, **extra)
        for name, a, p, b, factor in zip(names, got, plain, ref, (2, 3, 3)):
            assert_within_budget(name, a / norm, p / norm, b / norm, factor, floor=2e-3)


def _plain_half(h, w, y, *, reduction, logit_scale=1.0, z_loss=0.0):
    """What a user writes in fp16 without fusion: logits in the input dtype, CE on their fp32 upcast."""
    logits = (h @ w.t()).float() * logit_scale
    per_tok = torch.nn.functional.cross_entropy(logits, y, ignore_index=-100, reduction="none")
    lse = torch.logsumexp(logits, -1)
    per_tok = per_tok + torch.where(y != -100, z_loss * lse * lse, torch.zeros_like(lse))
    if reduction == "none":
        return per_tok
    return per_tok.sum() / (y != -100).sum().clamp(min=1) if reduction == "mean" else per_tok.sum()


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_ignored_rows_and_return_per_token(backend):
    hidden, weight, labels = make_inputs(37, 17, 1001, torch.float32, ignore_frac=0.0)
    labels[:] = -1
    labels[5] = 3                                     # one valid token: mean must equal its loss
    loss, per_tok = fused_linear_cross_entropy(hidden, weight, labels, ignore_index=-1, backend=backend,
                                               chunk_size=16, return_per_token=True)
    ref_loss, ref_tok = fused_linear_cross_entropy_ref(hidden, weight, labels, ignore_index=-1,
                                                       return_per_token=True)
    assert_close_verbose("per_token", per_tok, ref_tok, 1e-5, 1e-5)
    assert_close_verbose("loss", loss, per_tok[5], 1e-6, 1e-6)
    assert not per_tok.requires_grad and per_tok.shape == labels.shape
    labels[:] = -1
    for reduction in ("mean", "sum", "none"):
        _, gh, gw = run(fused_linear_cross_entropy, hidden, weight, labels, 1.0, ignore_index=-1,
                        reduction=reduction, backend=backend, chunk_size=16)
        assert torch.count_nonzero(gh) == 0 and torch.count_nonzero(gw) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_grad_all_negative_logits(backend):
    """Evaluation path: no graph, no gradient buffers; logits all < 0 stay finite and correct."""
    n, d, v = 41, 9, 1500
    g = torch.Generator().manual_seed(3)
    hidden = torch.rand(n, d, generator=g) + 0.5
    weight = (-(torch.rand(v, d, generator=g) + 0.5)).requires_grad_(True)     # every logit in [-18, -2]
    labels = torch.randint(0, v, (n,), generator=g)
    with torch.no_grad():
        loss = fused_linear_cross_entropy(hidden, weight, labels, backend=backend, chunk_size=16, z_loss=1e-4)
    assert not loss.requires_grad and weight.grad is None
    ref = fused_linear_cross_entropy_ref(hidden, weight.detach(), labels, z_loss=1e-4)
    assert_close_verbose("loss", loss, ref, 1e-5, 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tied_embeddings_and_batched_shape(backend):
    """lm_head tied to the input embedding: grads from both uses accumulate; hidden may be [B, T, D]."""
    b, t, d, v = 3, 13, 24, 1031
    torch.manual_seed(0)
    emb = torch.nn.Embedding(v, d)
    proj = torch.nn.Linear(d, d)
    ids = torch.randint(0, v, (b, t))
    labels = torch.roll(ids, -1, dims=1)
    labels[:, -1] = -100
    grads = []
    for fn in (lambda h, w, y: fused_linear_cross_entropy(h, w, y, backend=backend, chunk_size=8),
               lambda h, w, y: fused_linear_cross_entropy_ref(h.reshape(-1, d), w, y.reshape(-1))):
        emb.zero_grad()
        proj.zero_grad()
        loss = fn(torch.tanh(proj(emb(ids))), emb.weight, labels)
        loss.backward()
        grads.append((loss.detach(), emb.weight.grad.clone(), proj.weight.grad.clone()))
    for name, a, r in zip(("loss", "d_embedding", "d_proj"), *grads):
        assert_close_verbose(name, a, r, 2e-6, 1e-4)


def test_default_chunking_matches_small_chunks():
    hidden, weight, labels = make_inputs(61, 16, 2000, torch.float32)
    a = run(fused_linear_cross_entropy, hidden, weight, labels, 1.0, backend="torch")
    b = run(fused_linear_cross_entropy, hidden, weight, labels, 1.0, backend="torch", chunk_size=7)
    for name, x, y in zip(("loss", "d_hidden", "d_weight"), a, b):
        assert_close_verbose(name, x, y, 1e-6, 1e-5)


def test_errors():
    hidden, weight, labels = make_inputs(8, 4, 50, torch.float32)
    with pytest.raises(ValueError, match="reduction"):
        fused_linear_cross_entropy(hidden, weight, labels, reduction="avg")
    with pytest.raises(ValueError, match="labels must have shape"):
        fused_linear_cross_entropy(hidden, weight, labels[:-1])
    with pytest.raises(ValueError, match="unknown backend"):
        fused_linear_cross_entropy(hidden, weight, labels, backend="cutlass")
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="pip install liger-kernel"):
            fused_linear_cross_entropy(hidden, weight, labels, backend="liger")
    bad = labels.clone()
    bad[3] = 50                                        # == V: out of range
    with pytest.raises(RuntimeError):
        fused_linear_cross_entropy(hidden, weight, bad, backend="triton")
    h = hidden.clone().requires_grad_(True)
    loss = fused_linear_cross_entropy(h, weight, labels, backend="torch")
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):   # gradients are scaled in place
        loss.backward()



def test_inductor_backend_matches_torch_backend():
    """backend="inductor" (the torch chunk loop with its row math compiled; used when parallel.compile=True) vs the
    eager torch backend: mean / sum / none, z-loss and logit scaling, ignored rows, a ragged last chunk, fp32 and
    bf16 (bf16 compared to the fp32 reference within the eager bf16 backend's own error, x2)."""
    torch._dynamo.reset()
    h, w, y = make_inputs(45, 24, 515, torch.float32, seed=4)
    for reduction in ("mean", "sum", "none"):
        outs = {}
        for backend in ("torch", "inductor"):
            hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
            loss = fused_linear_cross_entropy(hh, ww, y, reduction=reduction, logit_scale=0.7, z_loss=1e-3,
                                              chunk_size=16, backend=backend)
            loss.sum().backward() if reduction == "none" else loss.backward()
            outs[backend] = (loss.detach(), hh.grad, ww.grad)
        for name, a, b in zip(("loss", "dh", "dw"), outs["inductor"], outs["torch"]):
            assert_close_verbose(f"inductor {reduction} {name}", a, b, 1e-5, 1e-5)
    hb, wb = h.bfloat16(), w.bfloat16()
    ref = fused_linear_cross_entropy_ref(hb.float(), wb.float(), y)
    got = {b: fused_linear_cross_entropy(hb, wb, y, chunk_size=16, backend=b) for b in ("torch", "inductor")}
    assert_within_budget("inductor bf16 loss", got["inductor"], got["torch"], ref, 2.0, 1e-4)
