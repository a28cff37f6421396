"""concat_linear (one GEMM for several projections of the same input) vs one F.linear per weight."""
import pytest
import torch

from prism_fast.ops import concat_linear, concat_linear_ref


def _grads(fn, x, ws, bs, dy):
    x = x.detach().requires_grad_()
    ws = [w.detach().requires_grad_() for w in ws]
    bs = None if bs is None else [b.detach().requires_grad_() for b in bs]
    y = fn(x, ws, bs)
    y.backward(dy)
    return [y.detach(), x.grad] + [w.grad for w in ws] + ([b.grad for b in bs] if bs else [])


@pytest.mark.parametrize("lead,K,Ns,bias,dtype", [
    ((3, 7), 13, (9, 5, 5), False, torch.float32),
    ((1, 33), 24, (17, 17), True, torch.float32),
    ((2, 5), 40, (40, 8, 8), True, torch.float64),
    ((1, 64), 48, (64, 16, 16), False, torch.bfloat16),
])
def test_matches_separate_linears(lead, K, Ns, bias, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*lead, K, generator=g).to(dtype)
    ws = [torch.randn(n, K, generator=g).to(dtype) / K ** 0.5 for n in Ns]
    bs = [torch.randn(n, generator=g).to(dtype) for n in Ns] if bias else None
    dy = torch.randn(*lead, sum(Ns), generator=g).to(dtype)
    got = _grads(concat_linear, x, ws, bs, dy)
    want = _grads(concat_linear_ref, x, ws, bs, dy)
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 3e-2}[dtype]
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert torch.allclose(a.float(), b.float(), atol=tol, rtol=tol), f"output/grad {i}: {(a - b).abs().max()}"
    # weight grads are row blocks of one GEMM result: contiguous, ready for FSDP's reduce-scatter copy
    assert all(t.is_contiguous() for t in got[2:])


def test_frozen_weight_gets_no_grad_and_backend_separate_is_the_reference():
    x = torch.randn(4, 6, requires_grad=True)
    w1, w2 = torch.randn(3, 6, requires_grad=True), torch.randn(2, 6)          # w2 frozen
    concat_linear(x, [w1, w2]).sum().backward()
    assert w1.grad is not None and x.grad is not None and w2.grad is None
    y = concat_linear(x, [w1, w2], backend="separate")
    assert torch.equal(y, concat_linear_ref(x, [w1, w2]))


def test_user_errors():
    x = torch.randn(2, 5)
    with pytest.raises(ValueError, match="weights must be"):
        concat_linear(x, [torch.randn(3, 4)])
    with pytest.raises(ValueError, match="bias for every weight"):
        concat_linear(x, [torch.randn(3, 5), torch.randn(2, 5)], [torch.randn(3), None])
