"""Trainer-side log-probs (packed rows through the fused op) vs an unpacked full-logits reference and vs the rollout
engine's generator log-probs; the truncated-IS path with a deliberately perturbed generator copy; Polyak updates."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from prism_fast.inference import Engine, SamplingParams
from prism_fast.models import build_model, tiny_config
from prism_fast.rl.logprobs import logprobs_ref, micro_logprobs, pack
from prism_fast.rl.losses import per_token_policy_loss
from prism_fast.rl.ref_policy import RefPolicy, polyak_ref


def _tiny(seed=0, vocab=97):
    torch.manual_seed(seed)
    m = build_model(tiny_config("llama", vocab_size=vocab), device="cpu")
    m.init_weights(std=0.2)   # peaked enough that sampled tokens vary in probability
    return m.float().eval()


def _rollout(model, prompts, *, T=1.0, n=3, max_new=7, seed=5):
    eng = Engine(model, max_batch=8)
    outs = eng.generate(prompts, SamplingParams(temperature=T, n=n, max_new_tokens=max_new, seed=seed))
    p_ids, r_ids, gen = [], [], []
    for o in outs:
        for c in o.outputs:
            p_ids.append(list(o.prompt_token_ids)), r_ids.append(list(c.token_ids)), gen.append(list(c.logprobs))
    return p_ids, r_ids, gen


PROMPTS = [[1, 5, 9, 2], [7, 3], [11, 12, 13, 14, 15, 16, 17], [4]]


@pytest.mark.parametrize("max_tokens", [1, 13, 1000])
def test_packed_logprobs_equal_unpacked_reference(max_tokens):
    model = _tiny()
    p_ids, r_ids, _ = _rollout(model, PROMPTS)
    want = torch.cat(logprobs_ref(model, p_ids, r_ids, temperature=0.7))
    got = torch.zeros_like(want)
    micro = pack(p_ids, r_ids, max_tokens)
    assert sum(len(m.resp_idx) for m in micro) == want.numel()
    with torch.no_grad():
        for mb in micro:
            lp, ent = micro_logprobs(model, mb, temperature=0.7, entropy=True, device="cpu")
            got[mb.resp_idx] = lp
            assert (ent >= 0).all()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["llama", "nemotron_h"])
def test_response_positions_equal_full_path(family):
    """CausalLM.forward(positions=...) (the LM head on the response rows only, what micro_logprobs uses) gives the
    same log-probs, entropies and gradients (hidden path and LM head weight) as the full [B, T] path indexed
    afterwards: dense and hybrid (Mamba) tiny models, fp32."""
    torch.manual_seed(3)
    model = build_model(tiny_config(family, vocab_size=97), device="cpu").float()
    model.init_weights(std=0.2)
    mb = pack([[1, 5, 9, 2], [7, 3], [11, 12, 13, 14, 15, 16]], [[4, 8, 6], [2, 2, 9, 1], [5]], 1000)[0]
    g_lp, g_ent = torch.randn(len(mb.resp_pos)), torch.randn(len(mb.resp_pos))
    results = []
    for sel in (False, True):
        model.zero_grad()
        lp, ent = model(mb.input_ids, cu_seqlens=mb.cu_seqlens, logprobs_of=mb.targets, temperature=0.8,
                        return_entropy=True, positions=mb.resp_pos if sel else None)
        if not sel:
            lp, ent = lp[0, mb.resp_pos], ent[0, mb.resp_pos]
        assert lp.shape == ent.shape == (len(mb.resp_pos),)
        ((lp * g_lp).sum() + (ent * g_ent).sum()).backward()
        results.append((lp.detach(), ent.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (lp0, ent0, g0), (lp1, ent1, g1) = results
    torch.testing.assert_close(lp1, lp0, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ent1, ent0, atol=1e-6, rtol=1e-6)
    assert g0.keys() == g1.keys() and g0["lm_head.weight"].abs().max() > 0
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], atol=1e-6, rtol=1e-5, msg=lambda m: f"{n}: {m}")
    with pytest.raises(ValueError, match="positions"):
        model(mb.input_ids, cu_seqlens=mb.cu_seqlens, positions=mb.resp_pos)


@pytest.mark.parametrize("T", [1.0, 0.6])
def test_generator_logprobs_equal_trainer_logprobs(T):
    """Same weights, fp32, no truncation: the engine's recorded log-probs (KV-cached decoding) equal the trainer's
    packed recompute within 1e-5 (the RL trainer's TIS weights and logprob_diff metric rely on it)."""
    model = _tiny(1)
    p_ids, r_ids, gen = _rollout(model, PROMPTS, T=T)
    gen = torch.tensor([x for g in gen for x in g])
    got = torch.zeros_like(gen)
    with torch.no_grad():
        for mb in pack(p_ids, r_ids, 64):
            got[mb.resp_idx] = micro_logprobs(model, mb, temperature=T, entropy=False, device="cpu")[0]
    assert (got - gen).abs().max().item() <= 1e-5
    assert gen.min().item() < -0.5           # not a degenerate (near one-hot) distribution


def test_truncated_is_with_a_perturbed_generator():
    """Generate with a perturbed copy (the generator/trainer mismatch made large on purpose): the TIS weights are
    min(pi_old / pi_gen, C) per token, they scale each token's policy gradient, and C caps them."""
    model = _tiny(2)
    gen_model = copy.deepcopy(model)
    with torch.no_grad():
        for p in gen_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    p_ids, r_ids, gen = _rollout(gen_model, PROMPTS, n=4)
    gen = torch.tensor([x for g in gen for x in g])
    (mb,) = pack(p_ids, r_ids, 10_000)
    lp, _ = micro_logprobs(model, mb, temperature=1.0, entropy=False, device="cpu")
    ratio_gen = torch.exp(lp.detach() - gen)
    assert (ratio_gen - 1).abs().max() > 0.05, "the perturbation should be visible"
    assert (ratio_gen > 2.0).any(), "some tokens should hit the cap C = 2"
    adv = torch.randn(len(r_ids)).repeat_interleave(torch.tensor([len(r) for r in r_ids]))
    m = torch.ones_like(lp, dtype=torch.bool)
    loss_tok, st = per_token_policy_loss(lp, lp.detach(), adv, m, gen_logp=gen, tis_cap=2.0, seq_ids=mb.seq_ids)
    w = torch.clamp(ratio_gen, max=2.0)
    assert st["tis"].item() == pytest.approx(w.sum().item(), rel=1e-5)
    # at ratio 1 the per-token loss is -A * w (and its gradient -A * w * grad logp)
    torch.testing.assert_close(loss_tok, -adv * w, atol=1e-6, rtol=1e-5)
    g = torch.autograd.grad(loss_tok.sum(), [p for p in model.parameters()][0], retain_graph=True)[0]
    g_ref = torch.autograd.grad((-adv * w * lp).sum(), [p for p in model.parameters()][0])[0]
    torch.testing.assert_close(g, g_ref, atol=1e-6, rtol=1e-4)


def test_polyak_update_in_place_on_local_tensors():
    pol, ref_m = _tiny(3), _tiny(4)
    before = [p.detach().clone() for p in ref_m.parameters()]
    ref = RefPolicy(ref_m, pol, tau=0.25, update_every=2)
    assert not ref.maybe_update(1)
    assert all(torch.equal(a, b) for a, b in zip(before, ref_m.parameters()))
    assert ref.maybe_update(2)
    want = polyak_ref(before, [p.detach() for p in pol.parameters()], 0.25)
    for w, p in zip(want, ref_m.parameters()):
        torch.testing.assert_close(p.detach(), w, atol=1e-7, rtol=1e-6)
    assert not any(p.requires_grad for p in ref_m.parameters())
    frozen = RefPolicy(_tiny(4), pol, tau=0.0, update_every=1)
    assert not frozen.maybe_update(1)
    assert math.isfinite(sum(p.sum().item() for p in ref_m.parameters()))
