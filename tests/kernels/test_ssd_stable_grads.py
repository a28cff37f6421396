"""SSD backward: dA / dt_bias gradients stay accurate with 16-bit activations at Nemotron-H-like magnitudes.

Hazard (issue 12, section 3): the old backward formed d Acum_j = dY_j . (y_pre_j - D x_j) - dt_j (x_j . (U_j + V_j))
and then dA_k by the cumsum difference `total - prefix + g`. y_pre is saved in the input dtype, so each
dY_j . y_pre_j carries a 16-bit rounding error of size |dY| |y|, while the true gradient of dA_k only collects the
pairs (i >= k > j) that cross k: with long chunks and strong decay (large |A| dt) that is a tiny number left over
after cancelling hundreds of large terms, and the rounding errors do not cancel. The stable backward (mamba's
ddA_cumsum "stable" kernels) sums the crossing pairs directly and never reads y_pre for dA.

Measured (2-core CPU, interpreter): the old backward gives relative errors 1.0e-1 (dA) and 1.2e-1 (dt_bias)
against the float64 reference, so this test fails on it; the stable one gives 1.9e-4 and 2.4e-4 (what remains is
dY = dout * silu(z) stored in fp16, as in mamba). With fp32 inputs both are ~5e-6.
"""
import torch

from prism_fast.ops import ssd_chunk_scan
from prism_fast.ops.ssd_chunk_scan import ssd_chunk_scan_ref


def _nemotron_like(T=512, H=2, G=1, P=16, N=16, seed=0):
    """A = -exp(A_log), A_log ~ U(log 1, log 16) as Nemotron-H initializes it, dt = softplus(dt + dt_bias) in
    ~[1e-3, 0.1]; x, B, C, z of unit scale, in fp16 (the interpreter's 16-bit type)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    A = -torch.exp(torch.rand(H, generator=g) * torch.log(torch.tensor(16.0))) - 4.0
    dt_bias = torch.log(torch.expm1(torch.empty(H).uniform_(0.05, 0.1, generator=g)))
    half = lambda t: t.half()  # noqa: E731
    return dict(x=half(r(1, T, H, P)), dt=half(r(1, T, H) * 0.5), A=A, B=half(r(1, T, G, N)),
                C=half(r(1, T, G, N)), D=r(H), z=half(r(1, T, H, P)), dt_bias=dt_bias)


def _grads(fn, inp, gy, **kw):
    leaves = {k: v.clone().requires_grad_() for k, v in inp.items()}
    y = fn(leaves["x"], leaves["dt"], leaves["A"], leaves["B"], leaves["C"], 256, D=leaves["D"], z=leaves["z"],
           dt_bias=leaves["dt_bias"], dt_softplus=True, **kw)
    (y.to(gy.dtype) * gy).sum().backward()
    return {k: v.grad for k, v in leaves.items()}


def test_dA_gradient_is_stable_with_fp16_activations():
    inp = _nemotron_like()
    gy = torch.randn(inp["x"].shape, generator=torch.Generator().manual_seed(1)).half()
    want = _grads(ssd_chunk_scan_ref, {k: v.double() for k, v in inp.items()}, gy.double(),
                  compute_dtype=torch.float64)
    got = _grads(ssd_chunk_scan, inp, gy, backend="triton")
    for name in ("A", "dt_bias"):
        # error relative to the largest entry: single entries can be near zero by cancellation in the true value
        err = ((got[name].double() - want[name]).abs().max() / want[name].abs().max()).item()
        assert err < 2e-3, f"d{name}: relative error {err:.2e} vs the float64 reference"
