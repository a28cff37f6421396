"""Hybrid families (granitemoehybrid, nemotron_h) vs transformers 5.x on tiny random configs.

Reference: transformers' own modeling files, which run their pure-torch path on CPU (no mamba_ssm). Each case uses
a sequence length that is not a multiple of the Mamba chunk size. Checked: fp32 logits and every parameter
gradient (<= 1e-4 max abs diff, gradients relative to their scale), hidden_states, packed == per-document,
cached decoding == full forward, bad configs.
"""
import pytest
import torch
import transformers

from prism_fast.models import build_model, tiny_config

CASES = {
    # Granite-4.0 Micro style: all attention, RoPE, GQA.
    "granite_attn": ("granitemoehybrid", dict(layer_types=["attention"] * 3, num_hidden_layers=3,
                                              position_embedding_type="rope")),
    # Granite-4.0-H style: alternating Mamba2 / attention, no positional encoding, tied embeddings.
    "granite_hybrid_a": ("granitemoehybrid", {}),
    # Mamba-heavy pattern, RoPE in the attention layers, one group, projection biases, untied head.
    "granite_hybrid_b": ("granitemoehybrid", dict(layer_types=["attention", "mamba", "mamba", "mamba", "attention"],
                                                  num_hidden_layers=5, position_embedding_type="rope",
                                                  num_key_value_heads=4, mamba_n_groups=1, mamba_proj_bias=True,
                                                  tie_word_embeddings=False, mamba_chunk_size=32)),
    "nemotron_a": ("nemotron_h", {}),                                   # "M-M*-"
    "nemotron_b": ("nemotron_h", dict(hybrid_override_pattern="*M-MM", n_groups=1, use_bias=True,
                                      time_step_min=0.05, chunk_size=32)),
}
T = 37                      # not a multiple of the chunk sizes (16, 32)


def _hf_config(cfg):
    d = dict(cfg.hf_config)
    cls = {"granitemoehybrid": transformers.GraniteMoeHybridConfig,
           "nemotron_h": transformers.NemotronHConfig}[d.pop("model_type")]
    return cls(**d)


def _hf_to_ours(name, model_type):
    return "backbone." + name[len("model."):] if model_type == "nemotron_h" and name.startswith("model.") else name


def _pair(case, seed=0):
    """(hf_model, our_model) with the same random weights (every parameter perturbed, so nothing is trivial)."""
    model_type, overrides = CASES[case]
    cfg = tiny_config(model_type, **overrides)
    hf = transformers.AutoModelForCausalLM.from_config(_hf_config(cfg), attn_implementation="eager")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.rand(p.shape, generator=g) * 1.5 - 0.5)
            elif p.dim() == 1:      # norms, biases, D, dt_bias
                p.copy_((1.0 if "norm" in name else 0.0) + 0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=g))
    ours = build_model(cfg)
    res = ours.load_state_dict({_hf_to_ours(k, model_type): v for k, v in hf.state_dict().items()}, strict=False)
    assert not res.unexpected_keys, res.unexpected_keys
    assert set(res.missing_keys) <= {"lm_head.weight"}
    ours.tie_weights()
    assert (ours.lm_head.weight is ours.embed_tokens_module().weight) == cfg.tie_word_embeddings
    return hf, ours, cfg


def _ids(cfg, B=2, Tn=T, seed=1):
    return torch.randint(0, cfg.vocab_size, (B, Tn), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("case", list(CASES))
def test_logits_and_grads_match_transformers(case):
    hf, ours, cfg = _pair(case)
    hf.train(), ours.train()                       # train mode: the path training takes (no dropout configured)
    ids = _ids(cfg)
    logits_hf = hf(ids).logits
    logits = ours(ids)
    err = (logits.float() - logits_hf.float()).abs().max().item()
    print(f"{case}: fp32 logits max abs diff {err:.2e}")
    assert err <= 1e-4, f"{case}: logits differ by {err:.3e}"
    w = torch.randn(logits.shape, generator=torch.Generator().manual_seed(2))
    (logits_hf.float() * w).sum().backward()
    (logits.float() * w).sum().backward()
    hf_grads = {_hf_to_ours(k, cfg.model_type): p.grad for k, p in hf.named_parameters()}
    worst = 0.0
    for name, p in ours.named_parameters():
        ref = hf_grads[name if name in hf_grads else "backbone.embeddings.weight"]
        rel = ((p.grad - ref).abs().max() / ref.abs().max().clamp_min(1.0)).item()
        worst = max(worst, rel)
        assert rel <= 1e-4, f"{case}: grad of {name} differs (scaled max diff {rel:.3e})"
    print(f"{case}: grads scaled max diff {worst:.2e}")


@pytest.mark.parametrize("case", ["granite_hybrid_b", "nemotron_a"])
def test_hidden_states_and_loss_match_transformers(case):
    hf, ours, cfg = _pair(case, seed=3)
    ids = _ids(cfg, B=1, Tn=21)
    with torch.no_grad():
        out = hf(ids, labels=ids, output_hidden_states=True)
        hs = ours.hidden_states(ids)
        labels = torch.cat([ids[:, 1:], torch.full((1, 1), -100)], dim=1)    # ours takes pre-shifted labels
        loss = ours(ids, labels=labels)
    assert len(hs) == len(out.hidden_states) == cfg.num_hidden_layers + 1
    for i, (a, b) in enumerate(zip(hs, out.hidden_states)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=lambda m: f"hidden state {i}: {m}")
    torch.testing.assert_close(loss, out.loss, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", ["granite_hybrid_b", "nemotron_b"])
def test_packed_equals_per_document(case):
    _, ours, cfg = _pair(case, seed=4)
    lengths = [9, 1, 17, 10]                         # a 1-token document and ones crossing chunk boundaries
    ids = _ids(cfg, B=1, Tn=sum(lengths), seed=5)
    cu = torch.tensor([0, 9, 10, 27, 37], dtype=torch.int32)
    with torch.no_grad():
        packed = ours(ids, cu_seqlens=cu)
        per_doc = torch.cat([ours(ids[:, s:e]) for s, e in zip(cu[:-1].tolist(), cu[1:].tolist())], dim=1)
    err = (packed - per_doc).abs().max().item()
    assert err <= 1e-5, f"{case}: packed vs per-document max diff {err:.3e}"


@pytest.mark.parametrize("case", ["granite_hybrid_b", "nemotron_a"])
def test_cached_decoding_equals_full_forward(case):
    _, ours, cfg = _pair(case, seed=6)
    ids = _ids(cfg, B=2, Tn=25, seed=7)
    ours.eval()
    with torch.no_grad():
        full = ours(ids)
        cache = ours.new_cache(2, 32)
        steps = [ours(ids[:, :11], cache=cache)]                     # prefill (crosses a chunk boundary)
        steps += [ours(ids[:, t:t + 1], cache=cache) for t in range(11, 25)]
        # Same again but token by token from the start: exercises the decode path on an empty history.
        cache2 = ours.new_cache(2, 32)
        steps2 = [ours(ids[:, t:t + 1], cache=cache2) for t in range(25)]
    for got in (torch.cat(steps, 1), torch.cat(steps2, 1)):
        err = (got - full).abs().max().item()
        assert err <= 1e-4, f"{case}: cached decoding differs from the full forward by {err:.3e}"
    for c1, c2 in zip(cache.layers, cache2.layers):
        if c1 is not None and hasattr(c1, "ssm_state"):
            torch.testing.assert_close(c1.ssm_state, c2.ssm_state, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(c1.conv_state, c2.conv_state, atol=1e-5, rtol=1e-5)


def test_moe_and_bad_configs_rejected():
    with pytest.raises(ValueError, match="num_local_experts=4"):
        tiny_config("granitemoehybrid", num_local_experts=4)
    d = tiny_config("granitemoehybrid").hf_config
    d.pop("num_local_experts")
    from prism_fast.models.config import ModelConfig
    with pytest.raises(ValueError, match="transformers default"):
        ModelConfig.from_hf_dict(d)                  # a missing key means 8 experts in transformers
    with pytest.raises(ValueError, match="mixture-of-experts"):
        tiny_config("nemotron_h", hybrid_override_pattern="M-E*")
    with pytest.raises(ValueError, match="mixture-of-experts"):
        tiny_config("nemotron_h", hybrid_override_pattern=None,
                    layers_block_type=["linear_attention", "moe", "full_attention"])
    with pytest.raises(ValueError, match="unknown characters"):
        tiny_config("nemotron_h", hybrid_override_pattern="M-X")
    with pytest.raises(ValueError, match="mamba_n_heads"):
        tiny_config("granitemoehybrid", mamba_d_head=4)
    with pytest.raises(ValueError, match="multiple of mamba groups"):
        build_model(tiny_config("nemotron_h", n_groups=3))
    with pytest.warns(UserWarning, match="tie_word_embeddings=True is ignored"):
        assert not tiny_config("nemotron_h", tie_word_embeddings=True).tie_word_embeddings   # as transformers


@pytest.mark.parametrize("case", ["granite_hybrid_a", "nemotron_b"])
def test_save_pretrained_round_trips_through_transformers(case, tmp_path):
    """ours -> save_pretrained (sharded) -> transformers loads identical weights and logits; transformers'
    save_pretrained -> our from_pretrained gives the same logits again."""
    from prism_fast.models.hf_io import from_pretrained
    _, ours, cfg = _pair(case, seed=8)
    ids = _ids(cfg, B=1, Tn=T, seed=9)
    ours.save_pretrained(tmp_path / "ours", max_shard_size="100KB")
    assert (tmp_path / "ours" / "model.safetensors.index.json").exists()
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
    hf_sd = {_hf_to_ours(k, cfg.model_type): v for k, v in hf.state_dict().items()}
    for k, v in ours.state_dict().items():
        assert torch.equal(hf_sd[k], v), f"{case}: {k} changed on the way through transformers"
    with torch.no_grad():
        ref = ours(ids)
        assert (hf(ids).logits - ref).abs().max().item() <= 1e-4
    hf.save_pretrained(tmp_path / "hf")
    back = from_pretrained(tmp_path / "hf")
    assert back.config.layer_types == cfg.layer_types
    with torch.no_grad():
        torch.testing.assert_close(back(ids), ref, atol=0, rtol=0)


@pytest.mark.parametrize("case", ["granite_hybrid_a", "nemotron_a"])
def test_batched_generate_equals_uncached_greedy(case):
    """Prompts of different lengths share one cache (per-row prefill into row views, then batched Mamba/KV
    decode steps); each continuation must equal greedy decoding by full forwards without a cache."""
    from prism_fast.models.generate import generate
    _, ours, cfg = _pair(case, seed=10)
    prompts = [_ids(cfg, B=1, Tn=n, seed=11 + n)[0].tolist() for n in (5, 19, 1)]
    got = generate(ours, prompts, max_new_tokens=6, eos_token_id=[])
    with torch.no_grad():
        for p, g in zip(prompts, got):
            seq = list(p)
            for _ in range(6):
                seq.append(int(ours(torch.tensor([seq]))[0, -1].argmax()))
            assert g == seq[len(p):]


@pytest.mark.parametrize("case", ["granite_hybrid_b", "nemotron_a"])
def test_bf16_error_budget(case):
    """bf16 logits vs the fp32 transformers reference: within 2x of transformers' own bf16 error."""
    hf, ours, cfg = _pair(case, seed=12)
    ids = _ids(cfg, seed=13)
    with torch.no_grad():
        ref = hf(ids).logits.float()
        err_hf = (hf.to(torch.bfloat16)(ids).logits.float() - ref).abs().max().item()
        err = (ours.to(torch.bfloat16)(ids).float() - ref).abs().max().item()
    assert err <= 2 * err_hf, f"{case}: bf16 error {err:.3e} > 2 x transformers' bf16 error {err_hf:.3e}"


def test_mixer_with_triton_ssd_backend():
    """The model path with ops.ssd_chunk_scan's Triton backend (CPU interpreter): packed forward + grads and a
    cached prefill equal the torch backend."""
    from prism_fast import ops
    from prism_fast.models.mamba2 import Mamba2Mixer, seq_idx_from_cu_seqlens
    torch.manual_seed(0)
    m = Mamba2Mixer(64, num_heads=8, head_dim=16, d_state=16, n_groups=2, chunk_size=16, time_step_limit=(0.01, 5.0))
    x = torch.randn(1, 37, 64, requires_grad=True)
    seq_idx = seq_idx_from_cu_seqlens(torch.tensor([0, 9, 10, 37], dtype=torch.int32), 37)
    outs, caches = [], []
    for backend in ("torch", "triton"):
        m.use_kernels(ops.resolve_kernels({"ssd": backend}))
        y = m(x, seq_idx=seq_idx)
        outs.append((y, *torch.autograd.grad(y.square().sum(), (x, m.A_log, m.dt_bias, m.D))))
        caches.append(m.new_cache(1))
        with torch.no_grad():
            m(x[:, :20], cache=caches[-1])
    for a, b in zip(*outs):
        torch.testing.assert_close(b, a, atol=2e-4, rtol=2e-4)
    torch.testing.assert_close(caches[1].ssm_state, caches[0].ssm_state, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_type", ["granitemoehybrid", "nemotron_h"])
def test_meta_build_and_random_init(model_type):
    """The trainer's from-scratch path: meta build -> to_empty -> init_weights gives a finite loss and gradients;
    Mamba dt starts in Nemotron-H's (time_step_min, time_step_max) range (Granite: dt_bias = 1, as transformers)."""
    import torch.nn.functional as F
    cfg = tiny_config(model_type)
    model = build_model(cfg, device="meta")
    model.to_empty(device="cpu")
    torch.manual_seed(0)
    model.init_weights()
    ids = _ids(cfg, seed=14)
    loss = model(ids, labels=ids.roll(-1, dims=1))
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())
    for blk in model.blocks:
        if blk.layer_type == "mamba":
            mixer = blk.mamba if model_type == "granitemoehybrid" else blk.mixer
            dt = F.softplus(mixer.dt_bias.detach())
            lo, hi = (1.3, 1.32) if model_type == "granitemoehybrid" else (0.001 - 1e-6, 0.1 + 1e-6)
            assert ((dt >= lo) & (dt <= hi)).all(), dt
            assert torch.equal(mixer.A_log.detach(), torch.log(torch.arange(1.0, mixer.num_heads + 1)))


# Paper-scale layouts (Nemotron-H-8B: 52 layers "M-M-...*-..."; Granite-4.0-H-Micro: 40 layers, 4 attention), in
# the key spellings of released config.json files (remote-code attention_head_dim, the Infinity float tag).
NEMOTRON_H_8B = {"model_type": "nemotron_h", "hidden_size": 4096, "intermediate_size": 21504,
                 "hybrid_override_pattern": "M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M-",
                 "num_attention_heads": 32, "num_key_value_heads": 8, "attention_head_dim": 128,
                 "mamba_num_heads": 128, "mamba_head_dim": 64, "ssm_state_size": 128, "n_groups": 8,
                 "conv_kernel": 4, "expand": 2, "chunk_size": 128, "mlp_hidden_act": "relu2",
                 "mamba_hidden_act": "silu", "vocab_size": 131072, "num_hidden_layers": 52, "use_bias": False}
GRANITE_4_H_MICRO = {"model_type": "granitemoehybrid", "hidden_size": 2048, "shared_intermediate_size": 8192,
                     "num_hidden_layers": 40, "layer_types": (["mamba"] * 9 + ["attention"]) * 4,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "mamba_n_heads": 64, "mamba_d_head": 64,
                     "mamba_d_state": 128, "mamba_n_groups": 1, "mamba_expand": 2, "num_local_experts": 0,
                     "position_embedding_type": "nope", "vocab_size": 100352, "tie_word_embeddings": True,
                     "time_step_limit": [0.0, {"__float__": "Infinity"}]}


@pytest.mark.parametrize("d", [NEMOTRON_H_8B, GRANITE_4_H_MICRO], ids=["nemotron_h_8b", "granite_4_h_micro"])
def test_paper_scale_configs_match_transformers_on_meta(d):
    """Full-size configs build on the meta device (no memory) with exactly transformers' parameter names/shapes."""
    from prism_fast.models.config import ModelConfig
    cfg = ModelConfig.from_hf_dict(d)
    ours = build_model(cfg, device="meta", dtype=torch.bfloat16)
    hd = dict(d, time_step_limit=[0.0, float("inf")])
    hf_cfg = transformers.AutoConfig.for_model(hd.pop("model_type"), **hd)
    with torch.device("meta"):
        hf = transformers.AutoModelForCausalLM.from_config(hf_cfg)
    want = {_hf_to_ours(k, cfg.model_type): tuple(v.shape) for k, v in hf.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert got == want
    assert ours.num_params() == sum(p.numel() for p in hf.parameters())


def test_nemotron_backbone_submodule_reachable_by_name():
    """`backbone.*` names must resolve by getattr (DCP's get_model_state_dict walks FQNs that way)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    model = build_model(tiny_config("nemotron_h"))
    assert model.backbone is model.backbone_module
    assert set(get_model_state_dict(model)) == set(model.state_dict())
