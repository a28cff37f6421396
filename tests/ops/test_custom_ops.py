"""Every fast path is a prism:: custom op: torch.library.opcheck (schema, fake impl, autograd registration, AOT
dispatch) on each, and whole blocks (dense and hybrid) with every fast path compiled with fullgraph=True equal
eager (Triton kernels run under the interpreter: tests/conftest.py sets TRITON_INTERPRET=1)."""
from __future__ import annotations

import pytest
import torch

from prism_fast.distributed.compile import apply_compile
from prism_fast.models import build_model, tiny_config
from prism_fast.ops import causal_conv1d, fused_linear_cross_entropy, fused_linear_logprobs, mamba_decode_step

OPCHECK = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def _opcheck(op, args, tests=OPCHECK):
    torch.library.opcheck(op, args, test_utils=tests)


@pytest.mark.parametrize("reduction,impl", [("mean", "torch"), ("sum", "triton"), ("none", "torch")])
def test_opcheck_fused_linear_cross_entropy(reduction, impl):
    h = torch.randn(19, 16, generator=_g(), requires_grad=True)
    w = torch.randn(37, 16, generator=_g(1), requires_grad=True)
    y = torch.randint(0, 37, (19,), generator=_g(2))
    y[3] = -100
    need = reduction != "none"
    _opcheck(torch.ops.prism.fused_linear_cross_entropy_fwd.default,
             (h, w, y, -100, reduction, 0.5, 1e-3, impl, 8, need, need))
    g = torch.rand(19, generator=_g(3))
    _opcheck(torch.ops.prism.fused_linear_cross_entropy_bwd.default,
             (g, h.detach(), w.detach(), y, -100, 0.5, 1e-3, impl, 8, True, True), OPCHECK[:3])


@pytest.mark.parametrize("entropy,impl", [(True, "torch"), (False, "triton")])
def test_opcheck_fused_linear_logprobs(entropy, impl):
    h = torch.randn(13, 16, generator=_g(), requires_grad=True)
    w = torch.randn(29, 16, generator=_g(1), requires_grad=True)
    t = torch.randint(0, 29, (13,), generator=_g(2))
    _opcheck(torch.ops.prism.fused_linear_logprobs_fwd.default, (h, w, t, 1 / 0.7, entropy, impl, 4))


@pytest.mark.parametrize("bias,seq", [(True, True), (False, False)])
def test_opcheck_causal_conv1d_triton(bias, seq):
    # [B, C, T] as the mixer passes it: a transposed channels-last view
    x = torch.randn(2, 11, 24, generator=_g()).transpose(1, 2).requires_grad_(True)
    w = torch.randn(24, 4, generator=_g(1), requires_grad=True)
    b = torch.randn(24, generator=_g(2), requires_grad=True) if bias else None
    s = torch.tensor([[0] * 5 + [1] * 6, [0] * 11], dtype=torch.int32) if seq else None
    _opcheck(torch.ops.prism.causal_conv1d_fwd.default, (x, w, b, s, True, "triton"))


def test_opcheck_concat_linear():
    x = torch.randn(2, 5, 16, generator=_g(), requires_grad=True)
    ws = [torch.randn(n, 16, generator=_g(i), requires_grad=True) for i, n in enumerate((8, 4, 4))]
    bs = [torch.randn(n, generator=_g(9 + i), requires_grad=True) for i, n in enumerate((8, 4, 4))]
    _opcheck(torch.ops.prism.concat_linear.default, (x, ws, bs))
    _opcheck(torch.ops.prism.concat_linear.default, (x, ws, []))


def test_opcheck_mamba_decode_step():
    """Mutating op (the two cache states): schema + fake impl (no autograd: a decode step has none)."""
    B, H, P, G, N, W = 2, 4, 8, 2, 16, 4
    C = H * P + 2 * G * N
    args = (torch.randn(B, C, generator=_g()), torch.randn(B, H, generator=_g(1)),
            torch.randn(B, C, W - 1, generator=_g(2)), torch.randn(B, H, P, N, generator=_g(3)),
            torch.randn(C, W, generator=_g(4)), torch.randn(C, generator=_g(5)), -torch.rand(H, generator=_g(6)),
            torch.ones(H), None, torch.zeros(H), G, True, 0.0, float("inf"), True, "torch", "triton")
    _opcheck(torch.ops.prism.mamba_decode_step.default, args, ("test_schema", "test_faketensor"))


def test_decode_step_compiles_fullgraph_and_updates_the_states_like_eager():
    B, H, P, G, N, W = 2, 4, 8, 2, 16, 4
    C = H * P + 2 * G * N
    xBC, dt = torch.randn(B, C, generator=_g()), torch.randn(B, H, generator=_g(1))
    cw, cb, A = torch.randn(C, W, generator=_g(4)), torch.randn(C, generator=_g(5)), -torch.rand(H, generator=_g(6))
    states = [(torch.randn(B, C, W - 1, generator=_g(2)), torch.randn(B, H, P, N, generator=_g(3))) for _ in range(2)]
    step = lambda cs, ss: mamba_decode_step(xBC, dt, cs, ss, cw, cb, A, n_groups=G, D=torch.ones(H),  # noqa: E731
                                            conv_backend="torch", ssd_backend="triton")
    y0 = step(*states[0])
    y1 = torch.compile(step, backend="aot_eager", fullgraph=True)(*states[1])
    torch.testing.assert_close(y1, y0)
    for a, b in zip(states[1], states[0]):
        torch.testing.assert_close(a, b)


def _fast_kernels(model_type):
    k = {"attention": "triton", "loss": "triton", "logprobs": "triton", "projection": "fused"}
    if model_type != "llama":
        k |= {"ssd": "triton", "conv1d": "triton"}
    return k


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["llama", "nemotron_h"])
def test_blocks_with_every_fast_path_compile_fullgraph_and_match_eager(model_type):
    """Dense (attention + fused q/k/v and gate/up) and hybrid (+ Mamba conv1d and SSD) tiny models with every
    fast path as its Triton custom op: each block compiled with fullgraph=True (any graph break raises), plus the
    fused loss and log-probs compiled fullgraph, give eager's loss, log-probs and every gradient."""
    torch.manual_seed(0)
    torch._dynamo.reset()
    cfg = tiny_config(model_type, num_hidden_layers=3)
    kernels = _fast_kernels(model_type)
    ref = build_model(cfg, kernels=kernels)
    ref.init_weights(0.1)
    comp = build_model(cfg, kernels=kernels)
    comp.load_state_dict(ref.state_dict())
    apply_compile(comp, fullgraph=True, backend="aot_eager")
    ids = torch.randint(0, cfg.vocab_size, (1, 24))
    cu = torch.tensor([0, 9, 10, 24], dtype=torch.int32)
    labels = torch.roll(ids, -1, 1)
    labels[0, [8, 23]] = -100
    out = {}
    for name, m in (("eager", ref), ("compiled", comp)):
        h = m.forward_hidden(ids, cu_seqlens=cu)[0]
        head = lambda h, w, y, t: (fused_linear_cross_entropy(h, w, y, backend="triton", chunk_size=16),  # noqa
                                   fused_linear_logprobs(h, w, t, backend="triton", chunk_size=16))
        if name == "compiled":
            head = torch.compile(head, backend="aot_eager", fullgraph=True)
        loss, lp = head(h, m.lm_head.weight, labels[0], ids[0])
        (loss + 0.1 * lp.sum()).backward()
        out[name] = (loss.detach(), lp.detach(), {n: p.grad for n, p in m.named_parameters()})
    (l0, lp0, g0), (l1, lp1, g1) = out["eager"], out["compiled"]
    torch.testing.assert_close(l1, l0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lp1, lp0, atol=1e-5, rtol=1e-5)
    for n, g in g0.items():
        torch.testing.assert_close(g1[n], g, atol=1e-5, rtol=1e-4, msg=n)


def test_conv1d_cuda_path_names_a_mismatched_weight_or_bias_dtype():
    """The CUDA library reads weight / bias as x's dtype: a mismatch is refused (naming the argument) before any
    kernel runs (checked first, so this runs on a CPU machine too)."""
    x = torch.randn(1, 8, 5, dtype=torch.float16)
    with pytest.raises(ValueError, match=r"needs weight in x's dtype \(torch.float16\), got torch.float32"):
        causal_conv1d(x, torch.randn(8, 4), None, backend="cuda")
    with pytest.raises(ValueError, match=r"needs bias in x's dtype \(torch.float16\), got torch.bfloat16"):
        causal_conv1d(x, torch.randn(8, 4).half(), torch.zeros(8, dtype=torch.bfloat16), backend="cuda")
