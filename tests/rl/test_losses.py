"""prism_fast.rl.losses: hand-computed GRPO numbers, REINFORCE at ratio 1, invariance to micro-batching / packing,
and TRL's own GRPO loss code (GRPOTrainer._compute_loss) on the same tensors where the definitions coincide."""
from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from prism_fast.rl.losses import (AGGREGATIONS, group_advantages, kl_term, per_token_policy_loss, policy_loss,
                                  sequence_lengths_per_token, token_weights, zero_std_groups)


def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.5, 0.5])
    # group 1: mean 0.25, population std sqrt(0.1875)
    s = math.sqrt(0.1875)
    want = torch.tensor([0.75 / s, -0.25 / s, -0.25 / s, -0.25 / s])
    got = group_advantages(r[:4].clone(), 4)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(group_advantages(r, 2, scale="none"), torch.tensor([0.5, -0.5, 0, 0, 0, 0]))
    assert zero_std_groups(r, 2).tolist() == [False, True, True]
    with pytest.raises(ValueError, match="valid: std, none"):
        group_advantages(r, 2, scale="rank")
    with pytest.raises(ValueError, match="multiple of group_size"):
        group_advantages(r, 4)


def test_policy_loss_by_hand():
    # two tokens of one sequence; ratio e^0.5 = 1.6487 (> 1 + 0.2: clipped for A > 0), e^-0.5 = 0.6065 (< 0.8)
    logp = torch.tensor([-1.0, -2.0], requires_grad=True)
    old = torch.tensor([-1.5, -1.5])
    adv = torch.tensor([2.0, -1.0])
    mask = torch.tensor([True, True])
    loss, st = policy_loss(logp, old, adv, mask, seq_ids=torch.zeros(2, dtype=torch.long))
    r0, r1 = math.exp(0.5), math.exp(-0.5)
    t0 = -min(r0 * 2.0, 1.2 * 2.0)              # = -2.4 (clipped: no gradient)
    t1 = -min(r1 * -1.0, 0.8 * -1.0)            # = -(-0.8) = 0.8 (clipped: no gradient)
    assert loss.item() == pytest.approx((t0 + t1) / 2, abs=1e-6)
    loss.backward()
    assert logp.grad.abs().max().item() == 0.0
    assert st["clip_frac_high"].item() == 0.5 and st["clip_frac_low"].item() == 0.5
    assert st["ratio_mean"].item() == pytest.approx((r0 + r1) / 2, rel=1e-6)
    # KL k3 with beta and truncated IS by hand
    ref = torch.tensor([-1.2, -1.0])
    gen = torch.tensor([-1.5 - math.log(3.0), -1.5 + 0.1])  # IS weights min(3, 2) = 2 and e^-0.1
    loss2, st2 = policy_loss(logp, old, adv, mask, ref_logp=ref, gen_logp=gen, kl_beta=0.1, tis_cap=2.0)
    d = torch.tensor([-1.2 + 1.0, -1.0 + 2.0])
    k3 = (d.exp() - d - 1)
    want = (t0 * 2.0 + t1 * math.exp(-0.1) + 0.1 * k3.sum().item()) / 2
    assert loss2.item() == pytest.approx(want, abs=1e-6)
    assert st2["kl"].item() == pytest.approx(k3.mean().item(), rel=1e-6)
    assert st2["tis_mean"].item() == pytest.approx((2.0 + math.exp(-0.1)) / 2, rel=1e-6)


def test_kl_estimators_and_errors():
    lp, ref = torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -1.0])
    d = ref - lp
    torch.testing.assert_close(kl_term(lp, ref, "k1"), -d)
    torch.testing.assert_close(kl_term(lp, ref, "k2"), d * d / 2)
    torch.testing.assert_close(kl_term(lp, ref, "k3"), d.exp() - d - 1)
    m = torch.ones(2, dtype=torch.bool)
    with pytest.raises(ValueError, match="valid: k1, k2, k3"):
        policy_loss(lp, lp, lp, m, ref_logp=ref, kl_beta=0.1, kl_estimator="k4")
    with pytest.raises(ValueError, match="valid: token, seq-mean-token-mean"):
        policy_loss(lp, lp, lp, m, agg="mean")
    with pytest.raises(ValueError, match="valid: grpo, gspo, cispo"):
        policy_loss(lp, lp, lp, m, variant="ppo")


def test_aggregations_by_hand():
    per = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    lens = sequence_lengths_per_token(mask)
    sums = {"token": (1 + 2 + 3 + 4) / 4, "seq-mean-token-mean": (2.0 + 4.0) / 2,
            "seq-mean-token-sum-norm": 10.0 / (2 * 3)}
    for agg in AGGREGATIONS:
        w = token_weights(mask, agg, seq_lens=lens, num_tokens=4, num_seqs=2)
        assert (per * w).sum().item() == pytest.approx(sums[agg]), agg


@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_ratio_one_gradient_is_reinforce(agg):
    """old = logp.detach(): grad of the GRPO loss = -sum_t w_t A_t grad logp_t (REINFORCE, group-mean baseline)."""
    torch.manual_seed(0)
    G, T = 4, 6
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    adv = group_advantages(rewards, G, scale="none")[:, None].expand(G, T)
    mask = torch.rand(G, T) > 0.3
    mask[:, 0] = True
    logits = torch.randn(G, T, 11, requires_grad=True)
    tokens = torch.randint(0, 11, (G, T))
    logp = torch.log_softmax(logits, -1).gather(-1, tokens[..., None])[..., 0]
    loss, st = policy_loss(logp, logp.detach(), adv, mask, agg=agg)
    g = torch.autograd.grad(loss, logits, retain_graph=True)[0]
    w = token_weights(mask, agg, seq_lens=sequence_lengths_per_token(mask), num_tokens=mask.sum(), num_seqs=G)
    reinforce = -(w * adv * logp).sum()
    g_ref = torch.autograd.grad(reinforce, logits)[0]
    torch.testing.assert_close(g, g_ref, atol=1e-7, rtol=1e-6)
    assert st["ratio_mean"].item() == 1.0 and st["clip_frac_low"].item() == 0.0


@pytest.mark.parametrize("variant", ["grpo", "gspo", "cispo"])
@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_global_weights_make_micro_batching_and_packing_invisible(variant, agg):
    """The trainer's path (global counts, any split of sequences into packed micro-batches) == one [B, T] batch."""
    torch.manual_seed(1)
    B, T = 6, 9
    lens = torch.tensor([9, 3, 5, 1, 7, 4])
    mask = torch.arange(T)[None] < lens[:, None]
    logp = (-torch.rand(B, T) * 3).requires_grad_()
    old = (logp.detach() + 0.3 * torch.randn(B, T))
    ref, gen = old - 0.1 * torch.rand(B, T), old + 0.2 * torch.randn(B, T)
    adv = torch.randn(B)[:, None].expand(B, T).contiguous()
    kw = dict(ref_logp=ref, gen_logp=gen, kl_beta=0.05, tis_cap=2.0, variant=variant, eps_high=0.28)
    full, _ = policy_loss(logp, old, adv, mask, agg=agg, **kw)
    g_full = torch.autograd.grad(full, logp)[0]
    # packed micro-batches of 1, 2 and 3 sequences: only the masked tokens, concatenated
    total = logp.new_zeros(())
    n_tok, n_seq = mask.sum(), B
    for group in ([0], [1, 2], [3, 4, 5]):
        sel = lambda x: torch.cat([x[i, :lens[i]] for i in group])  # noqa: E731
        ids = torch.cat([torch.full((int(lens[i]),), j) for j, i in enumerate(group)])
        m = torch.ones_like(ids, dtype=torch.bool)
        per, _ = per_token_policy_loss(sel(logp), sel(old), sel(adv), m, ref_logp=sel(ref), gen_logp=sel(gen),
                                       eps_low=0.2, eps_high=0.28, kl_beta=0.05, tis_cap=2.0, variant=variant,
                                       seq_ids=ids)
        w = token_weights(m, agg, seq_lens=sequence_lengths_per_token(m, ids), num_tokens=n_tok, num_seqs=n_seq,
                          norm_len=T)
        total = total + (per * w).sum()
    g_mb = torch.autograd.grad(total, logp)[0]
    torch.testing.assert_close(total, full, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(g_mb, g_full, atol=1e-7, rtol=1e-5)


def _trl_loss(loss_type, level, logp, old, ref, adv, mask, *, beta, eps_low, eps_high, max_len):
    """Run TRL's real GRPOTrainer._compute_loss on given tensors: a namespace stands in for the trainer, and its
    `_get_per_token_logps_and_entropies` returns our logp (so everything after it is TRL's code)."""
    from trl.trainer.grpo_trainer import GRPOTrainer
    acc = SimpleNamespace(reduce=lambda t, reduction="sum": t, gather=lambda t: t, gather_for_metrics=lambda t: t,
                          num_processes=1, sync_gradients=True)
    self = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp, torch.zeros_like(logp), None),
        aux_loss_enabled=False, top_entropy_quantile=1.0, off_policy_mask_threshold=None,
        importance_sampling_level=level, beta=beta, loss_type=loss_type, epsilon_low=eps_low, epsilon_high=eps_high,
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1), use_vllm=False,
        vllm_importance_sampling_correction=False, model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1, max_completion_length=max_len, _entropy_bonus_enabled=False,
        accelerator=acc, _metrics={"train": defaultdict(list)})
    B = logp.shape[0]
    inputs = {"prompt_ids": torch.zeros(B, 1, dtype=torch.long), "prompt_mask": torch.ones(B, 1, dtype=torch.long),
              "completion_ids": torch.zeros_like(mask, dtype=torch.long), "completion_mask": mask.long(),
              "advantages": adv, "old_per_token_logps": old, "ref_per_token_logps": ref,
              "num_items_in_batch": mask.sum().float()}
    return GRPOTrainer._compute_loss(self, None, inputs)


@pytest.mark.parametrize("trl_type, level, agg, variant", [
    ("bnpo", "token", "token", "grpo"),                               # token-level normalization (the paper's)
    ("grpo", "token", "seq-mean-token-mean", "grpo"),                 # TRL's default / original GRPO
    ("dr_grpo", "token", "seq-mean-token-sum-norm", "grpo"),          # Dr.GRPO
    ("grpo", "sequence", "seq-mean-token-mean", "gspo"),              # GSPO
])
def test_matches_trl_grpo_loss(trl_type, level, agg, variant):
    torch.manual_seed(2)
    B, T = 5, 7
    lens = torch.tensor([7, 2, 5, 6, 3])
    mask = torch.arange(T)[None] < lens[:, None]
    base = -torch.rand(B, T) * 2
    old = base + 0.25 * torch.randn(B, T)
    ref = base + 0.3 * torch.randn(B, T)
    adv = torch.randn(B)
    ours_lp = base.clone().requires_grad_()
    trl_lp = base.clone().requires_grad_()
    loss, _ = policy_loss(ours_lp, old, adv[:, None].expand(B, T), mask, ref_logp=ref, kl_beta=0.04,
                          eps_low=0.2, eps_high=0.28, agg=agg, variant=variant)
    want = _trl_loss(trl_type, level, trl_lp, old, ref, adv, mask, beta=0.04, eps_low=0.2, eps_high=0.28, max_len=T)
    torch.testing.assert_close(loss, want, atol=1e-6, rtol=1e-6)
    g, g_trl = torch.autograd.grad(loss, ours_lp)[0], torch.autograd.grad(want, trl_lp)[0]
    torch.testing.assert_close(g * mask, g_trl * mask, atol=1e-7, rtol=1e-5)


def test_cispo_matches_trl_when_the_caps_coincide():
    """TRL's CISPO caps the ratio at epsilon_high (absolute, upper only) and normalizes by the token count; ours
    clamps to [1 - eps_low, 1 + eps_high]. With eps_low = 1 (no lower bound) and TRL's cap = 1 + eps_high they agree."""
    torch.manual_seed(3)
    B, T = 4, 5
    mask = torch.rand(B, T) > 0.2
    base = -torch.rand(B, T) * 2
    old = base + 0.5 * torch.randn(B, T)
    adv = torch.randn(B)
    ours_lp, trl_lp = base.clone().requires_grad_(), base.clone().requires_grad_()
    loss, _ = policy_loss(ours_lp, old, adv[:, None].expand(B, T), mask, eps_low=1.0, eps_high=0.5, variant="cispo")
    want = _trl_loss("cispo", "token", trl_lp, old, None, adv, mask, beta=0.0, eps_low=1.0, eps_high=1.5, max_len=T)
    torch.testing.assert_close(loss, want, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(torch.autograd.grad(loss, ours_lp)[0] * mask,
                               torch.autograd.grad(want, trl_lp)[0] * mask, atol=1e-7, rtol=1e-5)
