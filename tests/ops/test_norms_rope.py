"""rms_norm and RoPE: the dispatching functions are bit-exact against their references on CPU, match transformers'
LlamaRMSNorm / rotary code (incl. Llama-3 scaling) bit for bit in fp32 and bf16, on odd shapes."""
import pytest
import torch
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.configuration_llama import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRMSNorm, apply_rotary_pos_emb

from prism_fast.ops import (apply_rotary, apply_rotary_ref, rms_norm, rms_norm_ref, rotary_cos_sin,
                            rotary_inv_freq)


@pytest.mark.parametrize("shape", [(1, 47), (3, 97, 123), (2, 5, 1025)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_matches_transformers_bitwise(shape, dtype):
    x = torch.randn(shape, dtype=dtype) * 3
    ref = LlamaRMSNorm(shape[-1], eps=1e-5).to(dtype)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
    out = rms_norm(x, ref.weight, 1e-5)
    assert torch.equal(out, rms_norm_ref(x, ref.weight, 1e-5))
    assert torch.equal(out, ref(x))


def test_rms_norm_gradcheck_fp64():
    x = torch.randn(7, 97, dtype=torch.float64, requires_grad=True)
    w = torch.rand(97, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda a, b: rms_norm(a, b, 1e-6), (x, w))


@pytest.mark.parametrize("scaling", [None, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                            "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
                                     {"rope_type": "linear", "factor": 4.0}])
def test_inv_freq_matches_transformers(scaling):
    params = {"rope_type": "default", "rope_theta": 500000.0} if scaling is None else \
        scaling | {"rope_theta": 500000.0}
    cfg = LlamaConfig(hidden_size=96, num_attention_heads=2, head_dim=48, max_position_embeddings=4096,
                      rope_parameters=params)
    if scaling is None:
        ref = 1.0 / (500000.0 ** (torch.arange(0, 48, 2, dtype=torch.int64).float() / 48))
    else:
        ref, _ = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](cfg, "cpu")
    assert torch.equal(rotary_inv_freq(48, 500000.0, scaling, 4096), ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,T,H,Hkv,Dh", [(1, 47, 4, 2, 16), (2, 97, 3, 3, 64), (3, 5, 8, 1, 128)])
def test_apply_rotary_matches_transformers_bitwise(dtype, B, T, H, Hkv, Dh):
    q = torch.randn(B, T, H, Dh, dtype=dtype)
    k = torch.randn(B, T, Hkv, Dh, dtype=dtype)
    pos = torch.randint(0, 5000, (B, T))
    cos, sin = rotary_cos_sin(pos, rotary_inv_freq(Dh, 10000.0), dtype)
    qo, ko = apply_rotary(q, k, cos, sin)
    qr, kr = apply_rotary_ref(q, k, cos, sin)
    assert torch.equal(qo, qr) and torch.equal(ko, kr)
    qh, kh = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)    # HF layout [B, H, T, Dh]
    assert torch.equal(qo, qh.transpose(1, 2)) and torch.equal(ko, kh.transpose(1, 2))


def test_rotary_preserves_norm_and_relative_positions():
    Dh = 32
    inv = rotary_inv_freq(Dh, 10000.0)
    q, k = torch.randn(1, 1, 1, Dh, dtype=torch.float64), torch.randn(1, 1, 1, Dh, dtype=torch.float64)

    def dot(pq, pk):
        cq, sq = rotary_cos_sin(torch.tensor([[pq]]), inv, torch.float64)
        ck, sk = rotary_cos_sin(torch.tensor([[pk]]), inv, torch.float64)
        qr, _ = apply_rotary(q, q, cq, sq)
        kr, _ = apply_rotary(k, k, ck, sk)
        assert torch.allclose(qr.norm(), q.norm())
        return (qr * kr).sum().item()
    # angles are computed in fp32 (as transformers does), so relative-position invariance holds to ~1e-5
    assert abs(dot(3, 10) - dot(103, 110)) < 1e-4
    assert abs(dot(3, 10) - dot(3, 11)) > 1e-2
