"""decode_attention (torch backend) vs decode_attention_ref vs a causal full-sequence attention: per-sequence cache
lengths, GQA, sliding window, odd sizes; errors for bad shapes."""
import pytest
import torch

from prism_fast.ops import decode_attention, decode_attention_ref, varlen_attention_ref


@pytest.mark.parametrize("B,H,Hkv,Dh,S", [(3, 4, 2, 16, 47), (1, 3, 3, 64, 97), (2, 8, 1, 32, 1025)])
@pytest.mark.parametrize("window", [(-1, -1), (6, 0)])
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.float16, 2e-3)])
def test_decode_matches_last_row_of_full_attention(B, H, Hkv, Dh, S, window, dtype, atol):
    g = torch.Generator().manual_seed(S)
    lens = torch.randint(1, S + 1, (B,), generator=g)
    lens[0] = S
    k = torch.randn(B, S, Hkv, Dh, generator=g).to(dtype)
    v = torch.randn(B, S, Hkv, Dh, generator=g).to(dtype)
    q = torch.randn(B, H, Dh, generator=g).to(dtype)
    out = decode_attention(q, k, v, lens, window_size=window)
    ref = decode_attention_ref(q, k, v, lens, window_size=window)
    assert out.dtype == dtype and out.shape == (B, H, Dh)
    assert (out.float() - ref.float()).abs().max().item() <= atol
    for b in range(B):                         # the last query row of an ordinary causal attention over lens[b]
        L = int(lens[b])
        qs = torch.zeros(L, H, Dh, dtype=torch.float32)
        qs[-1] = q[b].float()
        full = varlen_attention_ref(qs, k[b, :L].float(), v[b, :L].float(), torch.tensor([0, L], dtype=torch.int32),
                                    window_size=window)
        assert (ref[b].float() - full[-1]).abs().max().item() <= atol


def test_decode_attention_errors():
    q = torch.randn(2, 4, 16)
    k = torch.randn(2, 10, 3, 16)
    with pytest.raises(ValueError, match="multiple of kv heads"):
        decode_attention(q, k, k, torch.tensor([3, 4]))
    with pytest.raises(ValueError, match="cache_seqlens must have shape"):
        decode_attention(q, k[:, :, :2], k[:, :, :2], torch.tensor([3]))
    with pytest.raises(ValueError, match="must be"):
        decode_attention(q, k[:, :, :2], k[:, :5, :2], torch.tensor([3, 4]))
