"""SSD backward on silicon: bf16 activations at Nemotron-H-like magnitudes give dA / dt_bias within 1% of the
float64 reference computed from the same bf16-rounded inputs (the old cumsum-difference backward was ~10% off in
fp16 on CPU; tests/kernels/test_ssd_stable_grads.py has the CPU proof)."""
import pytest
import torch

from prism_fast.ops import ssd_chunk_scan
from prism_fast.ops.ssd_chunk_scan import ssd_chunk_scan_ref

pytestmark = pytest.mark.gpu


def test_bf16_dA_gradient_stable_at_chunk_256():
    g = torch.Generator().manual_seed(0)
    T, H, G, P, N = 4096, 8, 1, 64, 128
    A = -torch.exp(torch.rand(H, generator=g) * torch.log(torch.tensor(16.0))) - 4.0
    inp = dict(x=torch.randn(1, T, H, P, generator=g), dt=torch.randn(1, T, H, generator=g) * 0.5, A=A,
               B=torch.randn(1, T, G, N, generator=g), C=torch.randn(1, T, G, N, generator=g),
               D=torch.randn(H, generator=g), z=torch.randn(1, T, H, P, generator=g),
               dt_bias=torch.log(torch.expm1(torch.empty(H).uniform_(0.05, 0.1, generator=g))))
    gy = torch.randn(1, T, H, P, generator=g).bfloat16()
    lowp = {"x", "dt", "B", "C", "z"}
    inp = {k: v.bfloat16().float() if k in lowp else v for k, v in inp.items()}     # both runs see these values

    def grads(fn, dtype, device, **kw):
        leaves = {k: (v.to(dtype) if k in lowp or dtype == torch.float64 else v).to(device).requires_grad_()
                  for k, v in inp.items()}
        y = fn(*(leaves[k] for k in ("x", "dt", "A", "B", "C")), 256, D=leaves["D"], z=leaves["z"],
               dt_bias=leaves["dt_bias"], dt_softplus=True, **kw)
        (y.double() * gy.to(device).double()).sum().backward()
        return {k: leaves[k].grad.double().cpu() for k in ("A", "dt_bias")}

    want = grads(ssd_chunk_scan_ref, torch.float64, "cpu", compute_dtype=torch.float64)
    got = grads(ssd_chunk_scan, torch.bfloat16, "cuda", backend="triton")
    for k in ("A", "dt_bias"):
        err = ((got[k] - want[k]).abs().max() / want[k].abs().max()).item()
        assert err < 1e-2, f"d{k}: relative error {err:.2e}"
