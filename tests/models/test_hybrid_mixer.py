"""Mamba2 mixer vs transformers' mixers (GraniteMoeHybridMambaLayer, NemotronHMamba2Mixer) on random weights.

Also: packed rows (seq_idx) == per-document forwards, and cache prefill + token steps == the full forward.
transformers runs its pure-torch path here (no mamba_ssm on CPU); that path is the reference.
"""
import pytest
import torch

from prism_fast.models.mamba2 import Mamba2Mixer, seq_idx_from_cu_seqlens

D_MODEL, H, P, N, G, W, CHUNK = 64, 8, 16, 16, 2, 4, 16


def _hf_mixer(family):
    if family == "granitemoehybrid":
        from transformers import GraniteMoeHybridConfig
        from transformers.models.granitemoehybrid.modeling_granitemoehybrid import GraniteMoeHybridMambaLayer
        cfg = GraniteMoeHybridConfig(hidden_size=D_MODEL, mamba_n_heads=H, mamba_d_head=P, mamba_d_state=N,
                                     mamba_n_groups=G, mamba_d_conv=W, mamba_expand=2, mamba_chunk_size=CHUNK,
                                     num_hidden_layers=1, layer_types=["mamba"], rms_norm_eps=1e-5,
                                     num_local_experts=0, time_step_limit=(0.0, float("inf")))
        hf = GraniteMoeHybridMambaLayer(cfg, 0)
        ours = Mamba2Mixer(D_MODEL, num_heads=H, head_dim=P, d_state=N, n_groups=G, conv_width=W, chunk_size=CHUNK,
                           conv_bias=True, proj_bias=False, norm_eps=1e-5, time_step_limit=(0.0, float("inf")))
    else:
        from transformers import NemotronHConfig
        from transformers.models.nemotron_h.modeling_nemotron_h import NemotronHMamba2Mixer
        cfg = NemotronHConfig(hidden_size=D_MODEL, mamba_num_heads=H, mamba_head_dim=P, ssm_state_size=N,
                              n_groups=G, conv_kernel=W, chunk_size=CHUNK, layers_block_type=["linear_attention"],
                              layer_norm_epsilon=1e-5, use_bias=True, time_step_limit=(0.05, float("inf")))
        hf = NemotronHMamba2Mixer(cfg, 0)
        # transformers' Nemotron-H mixer clamps dt to time_step_limit (>= 5.25; earlier, to (time_step_min, inf)).
        ours = Mamba2Mixer(D_MODEL, num_heads=H, head_dim=P, d_state=N, n_groups=G, conv_width=W, chunk_size=CHUNK,
                           conv_bias=True, proj_bias=True, norm_eps=1e-5, time_step_limit=(0.05, float("inf")))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.dim() < 2 else 0.2))
    missing = ours.load_state_dict(hf.state_dict(), strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys
    return hf, ours


@pytest.mark.parametrize("family", ["granitemoehybrid", "nemotron_h"])
def test_mixer_matches_transformers(family):
    hf, ours = _hf_mixer(family)
    hf.train()
    ours.train()
    x = torch.randn(2, 37, D_MODEL, generator=torch.Generator().manual_seed(1))     # 37: not a multiple of 16
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_hf, y = hf(x1), ours(x2)
    err = (y - y_hf).abs().max().item()
    assert err <= 1e-4, f"{family} mixer max abs diff {err:.3e}"
    gy = torch.randn_like(y)
    (y_hf * gy).sum().backward()
    (y * gy).sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad, atol=1e-4, rtol=1e-4)
    hf_params = dict(hf.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, hf_params[name].grad, atol=1e-4, rtol=1e-4, msg=lambda m: f"{name}: {m}")


def test_mixer_packed_equals_per_document():
    _, ours = _hf_mixer("granitemoehybrid")
    lengths = [5, 19, 1, 13]
    x = torch.randn(1, sum(lengths), D_MODEL)
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    with torch.no_grad():
        packed = ours(x, seq_idx=seq_idx_from_cu_seqlens(cu, x.shape[1]))
        per_doc = torch.cat([ours(x[:, s:e]) for s, e in zip(cu[:-1].tolist(), cu[1:].tolist())], dim=1)
    torch.testing.assert_close(packed, per_doc, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("prefill", [0, 2, 21])
def test_mixer_cache_equals_full_forward(prefill):
    _, ours = _hf_mixer("nemotron_h")
    T = 26
    x = torch.randn(2, T, D_MODEL, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = ours(x)
        cache = ours.new_cache(2)
        outs = [ours(x[:, :prefill], cache=cache)] if prefill else []
        # A multi-token chunk after the prefill exercises the conv-history path, then single-token steps.
        outs.append(ours(x[:, prefill:prefill + 3], cache=cache))
        outs += [ours(x[:, t:t + 1], cache=cache) for t in range(prefill + 3, T)]
    torch.testing.assert_close(torch.cat(outs, dim=1), full, atol=1e-5, rtol=1e-5)
    # The states after the prefill are the states the token-by-token path leaves.
    with torch.no_grad():
        c1, c2 = ours.new_cache(2), ours.new_cache(2)
        ours(x[:, :7], cache=c1)
        for t in range(7):
            ours(x[:, t:t + 1], cache=c2)
    torch.testing.assert_close(c1.conv_state, c2.conv_state, atol=1e-5, rtol=1e-5)   # in_proj GEMM shapes differ
    torch.testing.assert_close(c1.ssm_state, c2.ssm_state, atol=1e-5, rtol=1e-5)


def test_nemotron_h_dt_limit_comes_from_time_step_limit():
    """dt is clamped to time_step_limit (alias mamba_dt_limit), not to time_step_min (the init range's floor)."""
    from prism_fast.models.nemotron_h import config_from_hf, tiny_hf_config
    d = tiny_hf_config() | {"time_step_min": 0.05}
    assert config_from_hf(d).time_step_limit == (0.0, float("inf"))
    assert config_from_hf(d | {"time_step_limit": [0.01, 10.0]}).time_step_limit == (0.01, 10.0)
    assert config_from_hf(d | {"mamba_dt_limit": [0.02, "Infinity"]}).time_step_limit == (0.02, float("inf"))
