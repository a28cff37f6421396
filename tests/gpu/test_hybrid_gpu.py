"""Hybrid models and their decode ops on CUDA with the default ("auto") backends (Triton SSD, CUDA conv).

fp32: logits vs transformers on the same GPU; bf16: error vs the fp32 reference within 2x of transformers' bf16
error; cached decoding (Mamba decode step + KV cache) equals the full forward. Skipped without CUDA.
"""
import pytest
import torch

from tests.models.test_hybrid_models import _ids, _pair

CASES = ["granite_hybrid_b", "nemotron_a"]


@pytest.mark.parametrize("case", CASES)
def test_fp32_logits_match_transformers_on_cuda(case):
    hf, ours, cfg = _pair(case)
    hf, ours = hf.cuda().eval(), ours.cuda().eval()
    ids = _ids(cfg, B=2, Tn=300).cuda()
    with torch.no_grad():
        err = (ours(ids).float() - hf(ids).logits.float()).abs().max().item()
    assert err <= 1e-3, f"{case}: fp32 logits differ by {err:.3e} on CUDA"


@pytest.mark.parametrize("case", CASES)
def test_bf16_error_budget_on_cuda(case):
    hf, ours, cfg = _pair(case)
    hf, ours = hf.cuda().eval(), ours.cuda().eval()
    ids = _ids(cfg, B=2, Tn=300).cuda()
    with torch.no_grad():
        ref = hf(ids).logits.float()
        err_hf = (hf.to(torch.bfloat16)(ids).logits.float() - ref).abs().max().item()
        err = (ours.to(torch.bfloat16)(ids).float() - ref).abs().max().item()
    assert err <= 2 * err_hf, f"{case}: bf16 error {err:.3e} > 2 x transformers' {err_hf:.3e}"


@pytest.mark.parametrize("case", CASES)
def test_cached_decoding_equals_full_forward_on_cuda(case):
    _, ours, cfg = _pair(case)
    ours = ours.cuda().eval()
    ids = _ids(cfg, B=3, Tn=80).cuda()
    with torch.no_grad():
        full = ours(ids)
        cache = ours.new_cache(3, 96)
        steps = [ours(ids[:, :50], cache=cache)] + [ours(ids[:, t:t + 1], cache=cache) for t in range(50, 80)]
    err = (torch.cat(steps, 1) - full).abs().max().item()
    assert err <= 1e-3, f"{case}: cached decoding differs by {err:.3e} on CUDA"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("W", [2, 4])
def test_conv_update_backends_on_cuda(dtype, W):
    """auto (the CUDA decode kernel when built) == the torch reference, output and shifted state."""
    from prism_fast import ops
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(5, 97, device="cuda", dtype=dtype, generator=g)
    w = torch.randn(97, W, device="cuda", dtype=dtype, generator=g)
    b = torch.randn(97, device="cuda", dtype=dtype, generator=g)
    s0 = torch.randn(5, 97, W - 1, device="cuda", dtype=dtype, generator=g)
    s_ref, s_auto = s0.clone(), s0.clone()
    ref = ops.causal_conv1d_update_ref(x, s_ref, w, b, activation="silu")
    got = ops.causal_conv1d_update(x, s_auto, w, b, activation="silu")
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(got, ref, atol=tol, rtol=tol)
    torch.testing.assert_close(s_auto, s_ref, atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_update_triton_on_cuda(dtype):
    """Triton SSM decode step == reference at Nemotron-H-8B head shapes (128 heads x 64, N 128, 8 groups)."""
    from prism_fast import ops
    g = torch.Generator(device="cuda").manual_seed(0)
    Bsz, H, P, N, G = 7, 128, 64, 128, 8
    x = torch.randn(Bsz, H, P, device="cuda", generator=g).to(dtype)
    dt = torch.randn(Bsz, H, device="cuda", generator=g).to(dtype)
    A = -torch.rand(H, device="cuda", generator=g) * 4
    Bm = torch.randn(Bsz, G, N, device="cuda", generator=g).to(dtype)
    Cm = torch.randn(Bsz, G, N, device="cuda", generator=g).to(dtype)
    D, dt_bias = torch.randn(H, device="cuda", generator=g), torch.randn(H, device="cuda", generator=g)
    s_ref = torch.randn(Bsz, H, P, N, device="cuda", generator=g)
    s_tri = s_ref.clone()
    kw = dict(D=D, dt_bias=dt_bias, dt_softplus=True, dt_limit=(0.001, float("inf")))
    y_ref = ops.ssd_state_update(s_ref, x, dt, A, Bm, Cm, backend="torch", **kw)
    y_tri = ops.ssd_state_update(s_tri, x, dt, A, Bm, Cm, backend="triton", **kw)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(y_tri.float(), y_ref.float(), atol=tol, rtol=tol)
    torch.testing.assert_close(s_tri, s_ref, atol=1e-4, rtol=1e-4)
