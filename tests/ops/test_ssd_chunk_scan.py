"""ssd_chunk_scan: chunked torch reference and Triton kernels (interpreter on CPU) vs the naive recurrence.

Ground truth is ssd_scan_naive (one time step at a time, fp32). Gradients of the Triton backend are compared
with autograd through ssd_chunk_scan_ref (itself checked against the naive forward). Shapes are tiny (H 2-4,
P 8-16, N 8-16, chunk 16-32) so the interpreter stays affordable; lengths 1, 37, 130 are not multiples of the
chunk, packed rows put document starts inside chunks, on chunk borders and at t = 0. GPU chunk sizes 64-256 are
covered by tests/kernels/test_aot.py (and tests/gpu/test_ssm_gpu.py on a GPU).
"""
import pytest
import torch

from prism_fast.ops import ssd_chunk_scan, ssd_scan_naive
from prism_fast.ops.ssd_chunk_scan import ssd_chunk_scan_ref

ATOL, RTOL = 2e-5, 2e-5            # fp32 forward
ATOL_G, RTOL_G = 1e-4, 1e-4        # fp32 gradients (dA / ddt_bias are sums over B*T terms: scaled below)


def _assert_close(name, got, want, atol, rtol):
    diff = (got.float() - want.float()).abs()
    bad = diff > atol + rtol * want.float().abs()
    assert not bad.any(), (f"{name}: max diff {diff.max().item():.3e}, mean {diff.mean().item():.3e}, "
                           f"max |want| {want.abs().max().item():.3e}, first bad index {bad.nonzero()[0].tolist()}")


def _inputs(Bsz, T, H, G, P, N, *, seq=None, d_hdim=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    x, dt, B, C, z = r(Bsz, T, H, P), r(Bsz, T, H) - 1.0, r(Bsz, T, G, N), r(Bsz, T, G, N), r(Bsz, T, H, P)
    A = -torch.rand(H, generator=g) - 0.3
    D = r(H, P) if d_hdim else r(H)
    kw = dict(D=D, z=z, dt_bias=r(H) * 0.5, initial_states=r(Bsz, H, P, N), seq_idx=seq)
    return [x, dt, A, B, C], kw


def _seq(Bsz, T, starts):
    """seq_idx [B, T] with document starts at `starts` (row 0) and a shifted pattern in the other rows."""
    s = torch.zeros(Bsz, T, dtype=torch.int32)
    for b in range(Bsz):
        for k, st in enumerate(starts):
            st = min(T - 1, st + 3 * b)
            s[b, st:] = k + 1
    return s


# (B, T, H, G, P, N, chunk, doc starts or None, D per channel)
CASES = [
    (1, 1, 2, 1, 8, 8, 16, None, False),
    (2, 37, 4, 2, 8, 16, 16, None, True),
    (1, 130, 3, 1, 16, 8, 32, None, False),
    (2, 37, 4, 4, 8, 8, 16, (5, 16, 17), False),
    (1, 130, 2, 1, 8, 16, 32, (1, 32, 64, 100), True),
]


@pytest.mark.parametrize("Bsz,T,H,G,P,N,L,starts,d_hdim", CASES)
def test_chunked_ref_equals_naive(Bsz, T, H, G, P, N, L, starts, d_hdim):
    seq = _seq(Bsz, T, starts) if starts else None
    args, kw = _inputs(Bsz, T, H, G, P, N, seq=seq, d_hdim=d_hdim)
    opt = dict(dt_softplus=True, dt_limit=(0.01, 2.0), return_final_states=True)
    y0, s0 = ssd_scan_naive(*args, **kw, **opt)
    y1, s1 = ssd_chunk_scan_ref(*args, L, **kw, **opt)
    _assert_close("y", y1, y0, 1e-5, 1e-5)
    _assert_close("final", s1, s0, 1e-5, 1e-5)


@pytest.mark.parametrize("Bsz,T,H,G,P,N,L,starts,d_hdim", CASES)
def test_triton_fwd_bwd(Bsz, T, H, G, P, N, L, starts, d_hdim):
    """Forward vs the naive recurrence; gradients of all nine inputs vs autograd through the chunked ref."""
    seq = _seq(Bsz, T, starts) if starts else None
    args, kw = _inputs(Bsz, T, H, G, P, N, seq=seq, d_hdim=d_hdim, seed=1)
    opt = dict(dt_softplus=True, dt_limit=(0.01, 2.0), return_final_states=True)
    names = ["x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states"]

    def run(fn, **extra):
        leaves = [t.clone().requires_grad_() for t in args + [kw[n] for n in names[5:]]]
        kws = dict(zip(names[5:], leaves[5:]), seq_idx=seq)
        y, s = fn(*leaves[:5], **kws, **opt, **extra)
        gen = torch.Generator().manual_seed(7)
        gy, gs = torch.randn(y.shape, generator=gen), torch.randn(s.shape, generator=gen)
        grads = torch.autograd.grad((y * gy).sum() + (s * gs).sum(), leaves)
        return y.detach(), s.detach(), grads

    y, s, grads = run(ssd_chunk_scan, chunk_size=L, backend="triton")
    y0, s0 = ssd_scan_naive(*args, **kw, **opt)
    _assert_close("y", y, y0, ATOL, RTOL)
    _assert_close("final", s, s0, ATOL, RTOL)
    _, _, ref = run(ssd_chunk_scan_ref, chunk_size=L)
    for n, g_, r_ in zip(names, grads, ref):
        scale = (Bsz * T) ** 0.5 if n in ("A", "D", "dt_bias") else 1.0     # reductions over all tokens
        _assert_close("d" + n, g_, r_, ATOL_G * scale, RTOL_G)


def test_triton_multi_tile_paths(monkeypatch):
    """16-wide tiles on P 32, N 48 (3 N tiles, the last partial), chunk 32 (2 row tiles, a skipped upper tile),
    state blocks of 1024 over P*N = 1536: the tile-indexing paths GPU shapes take, fwd and all grads."""
    import prism_fast.kernels._ssd_common as common
    monkeypatch.setattr(common, "MAX_BLOCK", 16)
    Bsz, T, H, G, P, N, L = 1, 70, 4, 2, 32, 48, 32
    seq = _seq(Bsz, T, (20, 32, 33))
    args, kw = _inputs(Bsz, T, H, G, P, N, seq=seq, d_hdim=True, seed=6)
    names = ["x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states"]
    opt = dict(dt_softplus=True, return_final_states=True)

    def run(fn, **extra):
        leaves = [t.clone().requires_grad_() for t in args + [kw[n] for n in names[5:]]]
        y, s = fn(*leaves[:5], **dict(zip(names[5:], leaves[5:])), seq_idx=seq, **opt, **extra)
        return [y.detach(), s.detach(), *torch.autograd.grad(y.sum() + (s * s).sum(), leaves)]

    got = run(ssd_chunk_scan, chunk_size=L, backend="triton")
    ref = run(ssd_chunk_scan_ref, chunk_size=L)
    for n, g_, r_ in zip(["y", "final"] + names, got, ref):
        # |s|^2 makes gradients large (~1e3): fp32 summation-order noise scales with the largest entry
        _assert_close(n, g_, r_, ATOL_G + 1e-6 * r_.abs().max().item(), RTOL_G)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_packed_equals_loop_over_documents(backend):
    """One packed row with seq_idx == each document run alone (initial state only feeds the first document)."""
    lens, H, G, P, N, L = (5, 16, 1, 20), 2, 1, 8, 8, 16
    T = sum(lens)
    seq = torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(lens))[None]
    args, kw = _inputs(1, T, H, G, P, N, seq=seq, seed=2)
    opt = dict(dt_softplus=True, return_final_states=True)
    y, s = ssd_chunk_scan(*args, L, **kw, **opt, backend=backend)
    t0 = 0
    for k, n in enumerate(lens):
        part = [a[:, t0:t0 + n] if a.dim() > 1 else a for a in args]
        kd = dict(kw, z=kw["z"][:, t0:t0 + n], seq_idx=None,
                  initial_states=kw["initial_states"] if k == 0 else None)
        yd, sd = ssd_chunk_scan(*part, L, **kd, **opt, backend=backend)
        _assert_close(f"doc {k}", y[:, t0:t0 + n], yd, ATOL, RTOL)
        t0 += n
    _assert_close("final state = last document's", s, sd, ATOL, RTOL)


def test_nonmonotone_seq_idx_resets_at_every_change():
    """seq_idx [0,0,1,1,0,0,...]: a later reuse of id 0 is still a new document (renumbered internally)."""
    T = 40
    seq = torch.tensor([[0] * 10 + [1] * 10 + [0] * 20])
    args, kw = _inputs(1, T, 2, 1, 8, 8, seq=seq, seed=3)
    y0 = ssd_scan_naive(*args, **kw, dt_softplus=True)
    _assert_close("torch", ssd_chunk_scan(*args, 16, **kw, dt_softplus=True, backend="torch"), y0, 1e-5, 1e-5)
    _assert_close("triton", ssd_chunk_scan(*args, 16, **kw, dt_softplus=True, backend="triton"), y0, ATOL, RTOL)


def test_strided_views_and_plain_options():
    """x/z/B/C/dt as views into one fused projection (the mixer's layout), no D/z/bias/softplus/limit."""
    Bsz, T, H, G, P, N = 2, 21, 2, 2, 8, 8
    g = torch.Generator().manual_seed(4)
    proj = torch.randn(Bsz, T, H * P + 2 * G * N + H, generator=g)
    x = proj[..., :H * P].view(Bsz, T, H, P)
    B = proj[..., H * P:H * P + G * N].view(Bsz, T, G, N)
    C = proj[..., H * P + G * N:H * P + 2 * G * N].view(Bsz, T, G, N)
    dt = proj[..., -H:].sigmoid()
    A = -torch.rand(H, generator=g)
    y = ssd_chunk_scan(x, dt, A, B, C, 16, backend="triton")
    _assert_close("y", y, ssd_scan_naive(x, dt, A, B, C), ATOL, RTOL)


@pytest.mark.slow
def test_custom_op_opcheck_and_compile():
    """prism::ssd_chunk_scan_fwd/bwd: schema, fake impl, autograd registration (opcheck), and one fullgraph
    torch.compile (aot_eager: fake tensors + the registered backward) with seq_idx and z."""
    from prism_fast.ops.ssd_chunk_scan import _segments, _ssd_fwd_op
    args, kw = _inputs(1, 20, 2, 1, 8, 8, seed=5)
    leaves = [t.requires_grad_() for t in args + [kw["D"], kw["z"]]]
    seg = _segments(torch.tensor([[0] * 7 + [1] * 13]), 32)
    res = torch.library.opcheck(_ssd_fwd_op, (*leaves, None, None, seg, 16, True, 0.0, float("inf")))
    assert all(v == "SUCCESS" for v in res.values()), res
    fn = torch.compile(lambda *a: ssd_chunk_scan(*a[:5], 16, D=a[5], z=a[6], dt_softplus=True, backend="triton"),
                       backend="aot_eager", fullgraph=True)
    fn(*leaves).sum().backward()
    grads = [t.grad for t in leaves]
    want = torch.autograd.grad(ssd_chunk_scan_ref(*leaves[:5], 16, D=leaves[5], z=leaves[6], dt_softplus=True).sum(),
                               leaves)
    for g_, w_ in zip(grads, want):
        _assert_close("compiled grad", g_, w_, ATOL_G * 5, RTOL_G)


def test_user_errors():
    args, _ = _inputs(1, 8, 2, 1, 8, 8)
    with pytest.raises(ValueError, match="power of two"):
        ssd_chunk_scan(*args, 48)
    with pytest.raises(ValueError, match="H % G == 0"):
        ssd_chunk_scan(args[0], args[1], args[2], torch.randn(1, 8, 3, 8), torch.randn(1, 8, 3, 8), 16)
    with pytest.raises(ValueError, match="unknown backend"):
        ssd_chunk_scan(*args, 16, backend="cuda")
