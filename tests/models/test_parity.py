"""Parity of llama / mistral / granite against transformers' own classes: logits, every gradient, loss, hidden
states, logprobs. fp32, random weights, odd sequence lengths; mistral's window (7) is shorter than the sequence."""
import pytest
import torch

from tests.models.hf_twin import assert_close, max_diff, twin

FAMILIES = ["llama", "mistral", "granite"]
VARIANTS = {
    "base": {},
    "tied": {"tie_word_embeddings": True},
    "mha_bias": {"num_key_value_heads": 4, "attention_bias": True},
    "llama3_rope": {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
                    "rope_theta": 500000.0},
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("T", [1, 23, 47])
def test_logits_and_grads_match_transformers(family, T):
    ours, hf = twin(family)
    x = torch.randint(0, 256, (2, T), generator=torch.Generator().manual_seed(T))
    a, b = ours(x), hf(x).logits
    assert_close(a, b, 1e-4, f"{family} T={T} logits")
    w = torch.randn_like(a) / a.numel() ** 0.5            # keeps gradients O(1), so 1e-4 absolute means something
    (a * w).sum().backward()
    (b * w).sum().backward()
    hp = dict(hf.named_parameters())
    for n, p in ours.named_parameters():
        assert_close(p.grad, hp[n].grad, 1e-4, f"{family} grad {n}")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variants_match_transformers(variant):
    ours, hf = twin("llama", **VARIANTS[variant])
    x = torch.randint(0, 256, (1, 37))
    assert_close(ours(x), hf(x).logits, 1e-4, variant)
    if variant == "tied":
        assert ours.lm_head.weight is ours.model.embed_tokens.weight


def test_llama3_rope_scaling_changes_long_positions():
    """Guard against a silently ignored rope_scaling: the scaled model must differ beyond the original context."""
    a, _ = twin("llama", **VARIANTS["llama3_rope"])
    b, _ = twin("llama", rope_theta=500000.0)
    x = torch.randint(0, 256, (1, 40))
    assert max_diff(a(x), b(x)) > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_loss_matches_transformers(family):
    ours, hf = twin(family)
    x = torch.randint(0, 256, (2, 29))
    x[1, -5:] = 0
    hf_labels = x.clone()
    hf_labels[1, -5:] = -100                                       # padding: no loss
    labels = torch.cat([hf_labels[:, 1:], torch.full((2, 1), -100)], 1)   # ours: already shifted
    loss = ours(x, labels=labels)
    ref = hf(x, labels=hf_labels).loss
    assert abs(loss.item() - ref.item()) < 1e-5
    s, per_tok = ours(x, labels=labels, loss_reduction="sum", return_per_token=True)
    assert per_tok.shape == (2, 29) and (per_tok[labels == -100] == 0).all()
    assert abs(s.item() / (labels != -100).sum().item() - ref.item()) < 1e-5


@pytest.mark.parametrize("family", ["llama", "granite"])
def test_hidden_states_match_transformers(family):
    ours, hf = twin(family)
    x = torch.randint(0, 256, (2, 19))
    hs = ours.hidden_states(x)
    ref = hf(x, output_hidden_states=True).hidden_states
    assert len(hs) == len(ref) == ours.config.num_hidden_layers + 1
    for i, (a, b) in enumerate(zip(hs, ref)):
        assert_close(a, b, 1e-5, f"hidden state {i}")


@pytest.mark.parametrize("family", ["llama", "granite"])
def test_logprobs_of_match_log_softmax_of_logits(family):
    ours, _ = twin(family)
    x = torch.randint(0, 256, (2, 21))
    tgt = torch.randint(0, 256, (2, 21))
    logits = ours(x).float()
    ref = torch.log_softmax(logits / 0.7, -1).gather(-1, tgt[..., None])[..., 0]
    logp, ent = ours(x, logprobs_of=tgt, temperature=0.7, return_entropy=True)
    assert_close(logp, ref, 1e-5, "logp")
    p = torch.softmax(logits / 0.7, -1)
    assert_close(ent, -(p * p.clamp_min(1e-30).log()).sum(-1), 1e-4, "entropy")


def test_num_params_and_flops():
    ours, hf = twin("llama")
    assert ours.num_params() == hf.num_parameters()
    cfg = ours.config
    emb = cfg.vocab_size * cfg.hidden_size
    assert ours.num_params(exclude_embeddings=True) == ours.num_params() - emb
    T = 128
    attn = 12 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * T / 2
    assert ours.flops_per_token(T) == 6 * (ours.num_params() - emb) + attn
    tied, _ = twin("llama", tie_word_embeddings=True)
    assert tied.num_params() == ours.num_params() - emb
    assert tied.flops_per_token(T) == ours.flops_per_token(T)        # the LM head matmul is compute either way


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_error_budget_vs_transformers(family):
    """bf16: our error against the fp32 reference is at most 2x transformers' own bf16 error (STYLE.md rule)."""
    ours, hf = twin(family)
    x = torch.randint(0, 256, (2, 45))
    ref = hf(x).logits.float()
    err_hf = max_diff(hf.to(torch.bfloat16)(x).logits, ref)
    err_ours = max_diff(ours.to(torch.bfloat16)(x), ref)
    assert err_ours <= 2 * err_hf + 1e-6, f"{family}: ours {err_ours:.3g} vs transformers {err_hf:.3g}"
