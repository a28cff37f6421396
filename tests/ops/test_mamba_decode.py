"""Mamba2 decode ops (causal_conv1d_update, ssd_state_update, mamba_decode_step) and gated_rms_norm.

Stepping the decode ops token by token must reproduce the training ops (causal_conv1d_ref, ssd_scan_naive) over
the whole sequence, including the final states; gated_rms_norm must match transformers' RMSNormGated exactly.
"""
import pytest
import torch
import torch.nn.functional as F

from prism_fast import ops


def _rand_ssm(Bsz, T, H, P, G, N, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(Bsz, T, H, P, generator=g)
    dt = torch.randn(Bsz, T, H, generator=g) * 0.5
    A = -torch.rand(H, generator=g) * 2 - 0.1
    B = torch.randn(Bsz, T, G, N, generator=g)
    C = torch.randn(Bsz, T, G, N, generator=g)
    return x, dt, A, B, C


@pytest.mark.parametrize("C,W,T", [(37, 4, 11), (5, 2, 7), (16, 3, 1)])
def test_conv_update_matches_full_conv(C, W, T):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, C, T, generator=g)
    w = torch.randn(C, W, generator=g)
    b = torch.randn(C, generator=g)
    full = ops.causal_conv1d_ref(x, w, b, activation="silu")
    state = torch.zeros(2, C, W - 1)
    steps = torch.stack([ops.causal_conv1d_update(x[:, :, t], state, w, b, activation="silu")
                         for t in range(T)], dim=-1)
    torch.testing.assert_close(steps, full, atol=1e-6, rtol=1e-6)
    # The state holds the last W-1 inputs (zeros where the sequence is shorter).
    want = F.pad(x, (W - 1, 0))[..., -(W - 1):]
    torch.testing.assert_close(state, want, atol=0, rtol=0)


def test_conv_update_bad_state_and_backend():
    with pytest.raises(ValueError, match="width - 1"):
        ops.causal_conv1d_update(torch.zeros(1, 4), torch.zeros(1, 4, 4), torch.zeros(4, 4))
    if not torch.cuda.is_available():     # the CUDA decode kernel says clearly why it cannot run here
        with pytest.raises(RuntimeError, match="backend 'cuda' needs"):
            ops.causal_conv1d_update(torch.zeros(1, 4), torch.zeros(1, 4, 3), torch.zeros(4, 4), backend="cuda")


@pytest.mark.parametrize("H,G,Dshape,with_z,limit", [
    (4, 1, "h", False, (0.0, float("inf"))),
    (6, 3, "hp", True, (0.05, 0.7)),
])
def test_state_update_matches_naive_scan(H, G, Dshape, with_z, limit):
    Bsz, T, P, N = 2, 13, 5, 7
    x, dt, A, B, C = _rand_ssm(Bsz, T, H, P, G, N)
    D = torch.randn(H) if Dshape == "h" else torch.randn(H, P)
    z = torch.randn(Bsz, T, H, P) if with_z else None
    dt_bias = torch.randn(H) * 0.3
    init = torch.randn(Bsz, H, P, N)
    y_ref, s_ref = ops.ssd_scan_naive(x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=True, dt_limit=limit,
                                      initial_states=init, return_final_states=True)
    state = init.clone()
    ys = [ops.ssd_state_update(state, x[:, t], dt[:, t], A, B[:, t], C[:, t], D=D,
                               z=None if z is None else z[:, t], dt_bias=dt_bias, dt_softplus=True, dt_limit=limit)
          for t in range(T)]
    torch.testing.assert_close(torch.stack(ys, 1), y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state, s_ref, atol=1e-5, rtol=1e-5)


def test_state_update_matches_transformers():
    """transformers' torch fallback of mamba_ssm's selective_state_update (per-head-dim expanded arguments)."""
    from transformers.models.nemotron_h.modeling_nemotron_h import mamba2_selective_state_update as hf_update
    Bsz, H, P, G, N = 3, 4, 6, 2, 8
    x, dt, A, B, C = _rand_ssm(Bsz, 1, H, P, G, N, seed=3)
    D, dt_bias = torch.randn(H), torch.randn(H)
    state0 = torch.randn(Bsz, H, P, N)
    s_hf, s_ours = state0.clone(), state0.clone()
    y_hf = hf_update(s_hf, x[:, 0], dt[:, 0, :, None].expand(-1, -1, P), A[:, None, None].expand(-1, P, N),
                     B[:, 0], C[:, 0], D[:, None].expand(-1, P), dt_bias=dt_bias[:, None].expand(-1, P),
                     dt_softplus=True)
    y = ops.ssd_state_update(s_ours, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], D=D, dt_bias=dt_bias,
                             dt_softplus=True)
    torch.testing.assert_close(y, y_hf, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s_ours, s_hf, atol=1e-5, rtol=1e-5)


def test_decode_step_continues_a_prefix():
    """Prefix through the training ops (with final states) then decode steps == one pass over everything."""
    Bsz, T0, T1, H, P, G, N, W = 2, 9, 4, 4, 3, 2, 5, 4
    I, conv_dim = H * P, H * P + 2 * G * N
    g = torch.Generator().manual_seed(7)
    xBC = torch.randn(Bsz, conv_dim, T0 + T1, generator=g)
    dt = torch.randn(Bsz, T0 + T1, H, generator=g)
    w, cb = torch.randn(conv_dim, W, generator=g), torch.randn(conv_dim, generator=g)
    A, D, dt_bias = -torch.rand(H, generator=g) - 0.1, torch.randn(H, generator=g), torch.randn(H, generator=g)

    def scan(conv, dts, init=None):
        xs, Bm, Cm = torch.split(conv.transpose(1, 2), [I, G * N, G * N], dim=-1)
        Tn = conv.shape[-1]
        return ops.ssd_scan_naive(xs.reshape(Bsz, Tn, H, P), dts, A, Bm.reshape(Bsz, Tn, G, N),
                                  Cm.reshape(Bsz, Tn, G, N), D=D, dt_bias=dt_bias, dt_softplus=True,
                                  initial_states=init, return_final_states=True)

    y_all, _ = scan(ops.causal_conv1d_ref(xBC, w, cb, activation="silu"), dt)
    _, s0 = scan(ops.causal_conv1d_ref(xBC[..., :T0], w, cb, activation="silu"), dt[:, :T0])
    conv_state = xBC[..., T0 - (W - 1):T0].clone()
    for t in range(T0, T0 + T1):
        for fn in (ops.mamba_decode_step, ops.mamba_decode_step_ref):
            cs, ss = conv_state.clone(), s0.clone()
            y = fn(xBC[..., t], dt[:, t], cs, ss, w, cb, A, n_groups=G, D=D, dt_bias=dt_bias)
            torch.testing.assert_close(y, y_all[:, t], atol=1e-5, rtol=1e-5)
        conv_state, s0 = cs, ss


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gated_rms_norm_matches_transformers(dtype):
    from transformers.models.granitemoehybrid.modeling_granitemoehybrid import GraniteMoeHybridRMSNormGated
    D, group = 48, 12
    hf = GraniteMoeHybridRMSNormGated(D, group_size=group, eps=1e-5).to(dtype)
    with torch.no_grad():
        hf.weight.copy_(torch.randn(D))
    x = torch.randn(3, 7, D, dtype=dtype)
    z = torch.randn(3, 7, D, dtype=dtype)
    for gate in (z, None):
        want = hf(x, gate)
        got = ops.gated_rms_norm(x, gate, hf.weight, group_size=group, eps=1e-5)
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_gated_rms_norm_norm_before_gate_and_grad():
    x = torch.randn(5, 32, dtype=torch.float64, requires_grad=True)
    z = torch.randn(5, 32, dtype=torch.float64, requires_grad=True)
    w = torch.randn(32, dtype=torch.float64, requires_grad=True)
    y = ops.gated_rms_norm(x, z, w, group_size=8, eps=1e-6, norm_before_gate=True)
    xg = x.view(5, 4, 8)
    want = (xg * torch.rsqrt(xg.pow(2).mean(-1, keepdim=True) + 1e-6)).view(5, 32) * F.silu(z) * w
    torch.testing.assert_close(y, want, atol=1e-12, rtol=1e-12)
    torch.autograd.gradcheck(lambda a, b, c: ops.gated_rms_norm_ref(a, b, c, group_size=8), (x, z, w))
    with pytest.raises(ValueError, match="group_size"):
        ops.gated_rms_norm(x, z, w, group_size=7)


@pytest.mark.parametrize("H,G,P,N,Dshape,with_z,limit,dtype", [
    (6, 3, 5, 7, "h", True, (0.05, 0.7), torch.float32),          # odd P, N; groups; gate; dt limits
    (4, 1, 16, 16, "hp", False, (0.0, float("inf")), torch.float16),
])
def test_state_update_triton_matches_ref(H, G, P, N, Dshape, with_z, limit, dtype):
    """Triton kernel (interpreter on CPU) == reference, output and in-place state, over 3 steps."""
    Bsz = 2
    x, dt, A, B, C = _rand_ssm(Bsz, 3, H, P, G, N, seed=4)
    x, B, C = x.to(dtype), B.to(dtype), C.to(dtype)
    dt = dt * 20 - 10                      # spans softplus' exp branch (< -15) and its log(1 + exp) branch
    D = torch.randn(H) if Dshape == "h" else torch.randn(H, P)
    z = torch.randn(Bsz, 3, H, P).to(dtype) if with_z else None
    dt_bias = torch.randn(H)
    s_ref = torch.randn(Bsz, H, P, N)
    s_tri = s_ref.clone()
    for t in range(3):
        kw = dict(D=D, z=None if z is None else z[:, t], dt_bias=dt_bias, dt_softplus=True, dt_limit=limit)
        y_ref = ops.ssd_state_update(s_ref, x[:, t], dt[:, t], A, B[:, t], C[:, t], backend="torch", **kw)
        y_tri = ops.ssd_state_update(s_tri, x[:, t], dt[:, t], A, B[:, t], C[:, t], backend="triton", **kw)
        tol = 1e-5 if dtype == torch.float32 else 2e-3
        torch.testing.assert_close(y_tri, y_ref, atol=tol, rtol=tol)
        torch.testing.assert_close(s_tri, s_ref, atol=1e-5, rtol=1e-5)
    # Several programs per (batch, head): P split into tiles of 2 (last tile partial when P is odd).
    from prism_fast.kernels.ssd_state_update import ssd_state_update_fwd
    s2 = s_ref.clone()
    kw = dict(D=D, z=None if z is None else z[:, 0], dt_bias=dt_bias, dt_softplus=True, dt_limit=limit)
    y_ref = ops.ssd_state_update_ref(s_ref, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], **kw)
    y_tri = ssd_state_update_fwd(s2, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], block_p=2, **kw)
    torch.testing.assert_close(y_tri, y_ref, atol=tol, rtol=tol)
    torch.testing.assert_close(s2, s_ref, atol=1e-5, rtol=1e-5)


def test_state_update_kernel_aot_sm90_sm80():
    import inspect
    from importlib import import_module

    from tests.aot_util import aot_compile, assert_all_compiled
    m = "prism_fast.kernels.ssd_state_update"
    params = list(inspect.signature(import_module(m)._ssd_state_update_kernel.fn).parameters)
    specs = []
    for x_ty, cexp in (("*bf16", dict(BLOCK_P=32, BLOCK_N=128, HAS_D=True, D_PER_P=False, HAS_Z=False,
                                      HAS_DT_BIAS=True, DT_SOFTPLUS=True, HAS_DT_LIMIT=True)),
                       ("*fp32", dict(BLOCK_P=16, BLOCK_N=256, HAS_D=True, D_PER_P=True, HAS_Z=True,
                                      HAS_DT_BIAS=False, DT_SOFTPLUS=False, HAS_DT_LIMIT=False))):
        sig = {p: ("constexpr" if p in cexp else "*fp32" if p in ("S_ptr", "A_ptr", "D_ptr", "DTB_ptr") else
                   x_ty if p.endswith("_ptr") else "fp32" if p in ("dt_min", "dt_max") else "i32") for p in params}
        specs.append({"module": m, "kernel": "_ssd_state_update_kernel", "signature": sig, "constexprs": cexp,
                      "num_warps": 4})
    recs = aot_compile(specs)
    assert_all_compiled(recs)
    assert len(recs) == 4
