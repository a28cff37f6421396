"""The sm_90 rows of kernels/configs.py, run under the interpreter: a retuned tile shape (kernels/configs.py says
why each changed) must still compute the right thing. Each test points the "interp" target at the sm_90 row
(monkeypatch of the table; warps and stages mean nothing to the interpreter, tiles and the GQA head loop do) and
compares with the fp32 reference, in fp32 (the interpreter computes bf16 wrongly). Head dims 64 / 128 with GQA 4
(the dK/dV kernel's whole-group loop), 256 for its own rows; packs with 1-token, odd and multi-block documents.
"""
import math

import pytest
import torch

from prism_fast.kernels import configs
from prism_fast.ops import causal_conv1d, causal_conv1d_ref, varlen_attention, varlen_attention_ref


def _use_sm90_rows(monkeypatch, *tables):
    for t in tables:
        monkeypatch.setitem(t, "interp", t["sm90"])


def _close(name, got, want, atol, rtol):
    diff = (got.float() - want.float()).abs()
    bad = diff > atol + rtol * want.float().abs()
    assert not bad.any(), f"{name}: max diff {diff.max().item():.3e} at {bad.nonzero()[0].tolist()}"


@pytest.mark.parametrize("Dh,lens,H,Hkv", [(64, (1, 97, 40), 8, 2), (128, (70, 1, 33), 8, 2), (256, (33, 40), 4, 1)])
@pytest.mark.slow
def test_attention_sm90_tiles_match_reference(monkeypatch, Dh, lens, H, Hkv):
    _use_sm90_rows(monkeypatch, configs.ATTN_FWD, configs.ATTN_BWD_DKDV, configs.ATTN_BWD_DQ)
    g = torch.Generator().manual_seed(Dh)
    T = sum(lens)
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
    q, k, v = (torch.randn(T, h, Dh, generator=g) for h in (H, Hkv, Hkv))
    do = torch.randn(T, H, Dh, generator=g)
    scale = 1 / math.sqrt(Dh)
    outs = []
    for fn in (lambda a, b, c: varlen_attention(a, b, c, cu, max(lens), causal=True, softmax_scale=scale,
                                                backend="triton"),
               lambda a, b, c: varlen_attention_ref(a, b, c, cu, causal=True, softmax_scale=scale)):
        a, b, c = (x.clone().requires_grad_() for x in (q, k, v))
        o = fn(a, b, c)
        o.backward(do)
        outs.append((o.detach(), a.grad, b.grad, c.grad))
    for name, got, want in zip(("out", "dq", "dk", "dv"), *outs):
        _close(name, got, want, 1e-4, 1e-4)


def test_conv1d_sm90_tiles_match_reference(monkeypatch):
    """Channels-last x as the Mamba2 mixer passes it; 100 steps = 3 full 32-step tiles + a partial one."""
    _use_sm90_rows(monkeypatch, configs.CONV1D_FWD, configs.CONV1D_BWD)
    g = torch.Generator().manual_seed(0)
    Bsz, C, T, W = 2, 80, 100, 4
    x = torch.randn(Bsz, T, C, generator=g).transpose(1, 2)
    w, b = torch.randn(C, W, generator=g), torch.randn(C, generator=g)
    seq = (torch.arange(T) >= 37).to(torch.int32)[None].expand(Bsz, T).contiguous()
    dout = torch.randn(Bsz, C, T, generator=g)
    res = []
    for fn in (lambda *a: causal_conv1d(*a, seq_idx=seq, activation="silu", backend="triton"),
               lambda *a: causal_conv1d_ref(*a, seq_idx=seq, activation="silu")):
        xs, ws, bs = (t.detach().clone().requires_grad_() for t in (x, w, b))
        y = fn(xs, ws, bs)
        y.backward(dout)
        res.append((y.detach(), xs.grad, ws.grad, bs.grad))
    for name, got, want in zip(("y", "dx", "dw", "db"), *res):
        _close(name, got, want, 1e-4, 1e-4)
