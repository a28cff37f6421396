"""GRPO losses and advantages (DESIGN section 10): pure tensor functions, no model code.

Shapes: every per-token tensor is either [B, T] (one sequence per row, right padded) or [N] (sequences packed one
after another; then `seq_ids` [N] says which sequence each token belongs to). `mask` is bool (True = a response
token that is trained on); advantages are per token (a sequence's advantage repeated over its tokens).

What is unusual here:
- The loss is split in two: `per_token_policy_loss` (the per-token objective and the statistics' numerators) and
  `token_weights` (the aggregation as one weight per token). The trainer computes the weights from the GLOBAL counts
  of the whole rollout batch (all ranks, all micro-batches) before micro-batching, so the summed loss and gradients
  do not depend on micro-batch size, packing or world size; `policy_loss` is the same computation with the counts
  of the tensors it is given (the DESIGN signature, used by tests and by anyone with the whole batch in memory).
- Variants (`variant=`): "grpo" (token-level ratio, PPO clip with separate eps_low / eps_high: clip-higher),
  "gspo" (GSPO: one sequence-level ratio exp(mean_t(logp - old_logp)) per sequence, clipped per sequence; the
  gradient flows through the mean, as in the GSPO paper and TRL's importance_sampling_level="sequence"), and
  "cispo" (CISPO, MiniMax-M1: REINFORCE on logp weighted by the clipped, stop-gradient ratio, so clipped tokens
  keep a gradient).
- Truncated importance sampling (`tis_cap`, paper: C = 2): the policy-gradient term of each token is multiplied by
  min(exp(old_logp - gen_logp), C), a constant, correcting the generator/trainer mismatch. The KL term is not.
"""
from __future__ import annotations

import torch

KL_ESTIMATORS = ("k1", "k2", "k3")
AGGREGATIONS = ("token", "seq-mean-token-mean", "seq-mean-token-sum-norm")
ADV_SCALES = ("std", "none")
STAT_KEYS = ("tokens", "clip_low", "clip_high", "kl", "ratio", "tis")


def _check_name(kind: str, name: str, valid: tuple[str, ...]) -> None:
    if name not in valid:
        raise ValueError(f"unknown {kind} {name!r}; valid: {', '.join(valid)}")


# ---------------------------------------------------------------------------------------------------- advantages
def group_advantages(rewards: torch.Tensor, group_size: int, *, scale: str = "std", eps: float = 1e-6) -> torch.Tensor:
    """rewards [n*G] (group g = rows g*G .. g*G+G-1) -> advantages [n*G] (fp32).

    scale="std": (r - mean_group) / (std_group + eps) with the population std (unbiased=False);
    scale="none": r - mean_group (Dr.GRPO)."""
    _check_name("advantage scale", scale, ADV_SCALES)
    if rewards.dim() != 1 or group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be 1-D with a multiple of group_size={group_size} entries, "
                         f"got shape {tuple(rewards.shape)}")
    r_nG = rewards.float().view(-1, group_size)
    centered = r_nG - r_nG.mean(dim=1, keepdim=True)
    if scale == "std":
        centered = centered / (r_nG.std(dim=1, unbiased=False, keepdim=True) + eps)
    return centered.reshape(-1)


def zero_std_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """bool [n]: True for groups whose G rewards are all equal (advantage 0 everywhere: no policy gradient)."""
    r_nG = rewards.view(-1, group_size)
    return (r_nG == r_nG[:, :1]).all(dim=1)


# ---------------------------------------------------------------------------------------------------- helpers
def kl_term(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token KL(pi || ref) estimate with d = ref_logp - logp: k1 = -d, k2 = d^2 / 2, k3 = exp(d) - d - 1."""
    _check_name("KL estimator", estimator, KL_ESTIMATORS)
    d = ref_logp - logp
    if estimator == "k1":
        return -d
    if estimator == "k2":
        return 0.5 * d * d
    return torch.expm1(d) - d


def _flat_seq_ids(mask: torch.Tensor, seq_ids: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    """Sequence index of every token, flattened ([B, T] rows are sequences), and the number of sequences."""
    if seq_ids is None:
        if mask.dim() != 2:
            raise ValueError("1-D (packed) inputs need seq_ids [N] for sequence-level variants / aggregations")
        B, T = mask.shape
        return torch.arange(B, device=mask.device).repeat_interleave(T), B
    if seq_ids.shape != mask.shape:
        raise ValueError(f"seq_ids shape {tuple(seq_ids.shape)} must equal mask shape {tuple(mask.shape)}")
    ids = seq_ids.reshape(-1).long()
    return ids, (int(ids.max()) + 1 if ids.numel() else 0)


def _segment_sum(x: torch.Tensor, ids: torch.Tensor, n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=x.dtype, device=x.device).index_add_(0, ids, x)


def sequence_lengths_per_token(mask: torch.Tensor, seq_ids: torch.Tensor | None = None) -> torch.Tensor:
    """For each token, the number of masked tokens of its sequence (same shape as mask, fp32)."""
    ids, n = _flat_seq_ids(mask, seq_ids)
    lens = _segment_sum(mask.reshape(-1).float(), ids, n)
    return lens[ids].view(mask.shape)


# ---------------------------------------------------------------------------------------------------- aggregation
def token_weights(mask: torch.Tensor, agg: str, *, seq_lens: torch.Tensor | None = None,
                  num_tokens: float | torch.Tensor, num_seqs: float | torch.Tensor,
                  norm_len: float | None = None) -> torch.Tensor:
    """Weight of each token in the aggregated loss (0 where mask is False): loss = sum(per_token * weights).

    num_tokens / num_seqs are the counts of the batch being normalized over (the global rollout batch in the
    trainer); seq_lens [same shape] the masked length of each token's sequence (seq-mean-token-mean only);
    norm_len the constant length of Dr.GRPO's sum-norm (defaults to the width T of a [B, T] mask).
      token:                   1 / num_tokens
      seq-mean-token-mean:     1 / (num_seqs * seq_len)
      seq-mean-token-sum-norm: 1 / (num_seqs * norm_len)"""
    _check_name("aggregation", agg, AGGREGATIONS)
    m = mask.float()
    if agg == "token":
        return m / torch.as_tensor(num_tokens, dtype=torch.float32).clamp(min=1.0)
    if agg == "seq-mean-token-mean":
        if seq_lens is None:
            raise ValueError("agg='seq-mean-token-mean' needs seq_lens")
        return m / (seq_lens.float().clamp(min=1.0) * torch.as_tensor(num_seqs, dtype=torch.float32).clamp(min=1.0))
    if norm_len is None:
        if mask.dim() != 2:
            raise ValueError("agg='seq-mean-token-sum-norm' on packed inputs needs norm_len (the max response length)")
        norm_len = mask.shape[1]
    return m / (torch.as_tensor(num_seqs, dtype=torch.float32).clamp(min=1.0) * float(norm_len))


# ---------------------------------------------------------------------------------------------------- the objective
def _pg_ppo_clip(ratio, clipped, adv, logp):
    """GRPO / GSPO: -min(ratio * A, clip(ratio) * A) (the gradient flows through ratio)."""
    return -torch.minimum(ratio * adv, clipped * adv)


def _pg_cispo(ratio, clipped, adv, logp):
    """CISPO: -sg(clip(ratio)) * A * logp (clipping bounds the weight, never drops a token's gradient)."""
    return -clipped.detach() * adv * logp


# name -> (sequence-level ratio?, policy-gradient term)
LOSS_VARIANTS = {"grpo": (False, _pg_ppo_clip), "gspo": (True, _pg_ppo_clip), "cispo": (False, _pg_cispo)}
VARIANTS = tuple(LOSS_VARIANTS)


def per_token_policy_loss(logp, old_logp, advantages, mask, *, ref_logp=None, gen_logp=None, eps_low=0.2,
                          eps_high=0.2, kl_beta=0.0, kl_estimator="k3", tis_cap=None, variant="grpo",
                          seq_ids=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token loss (same shape as logp, 0 where mask is False) and the statistics' masked SUMS (detached 0-d
    fp32 tensors, keys STAT_KEYS: divide by sums["tokens"] for means). See the module docstring for the variants."""
    _check_name("loss variant", variant, VARIANTS)
    _check_name("KL estimator", kl_estimator, KL_ESTIMATORS)
    shape = logp.shape
    for name, t in (("old_logp", old_logp), ("advantages", advantages), ("mask", mask), ("ref_logp", ref_logp),
                    ("gen_logp", gen_logp)):
        if t is not None and t.shape != shape:
            raise ValueError(f"{name} shape {tuple(t.shape)} must equal logp shape {tuple(shape)}")
    if kl_beta > 0 and ref_logp is None:
        raise ValueError("kl_beta > 0 needs ref_logp")
    if tis_cap is not None and gen_logp is None:
        raise ValueError("tis_cap needs gen_logp (the generator's log-probs)")
    m = mask.bool()
    mf = m.float()
    logp = logp.float()
    old_logp = old_logp.float().detach()
    adv = advantages.float().detach()
    log_ratio = torch.where(m, logp - old_logp, torch.zeros_like(logp))   # padding never overflows exp()
    seq_level, pg_fn = LOSS_VARIANTS[variant]
    if seq_level:
        ids, n = _flat_seq_ids(m, seq_ids)
        lens = _segment_sum(mf.reshape(-1), ids, n).clamp(min=1.0)
        seq_log_ratio = _segment_sum(log_ratio.reshape(-1), ids, n) / lens
        log_ratio = seq_log_ratio[ids].view(shape)
    ratio = torch.exp(log_ratio)
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
    pg = pg_fn(ratio, clipped, adv, logp)
    stats = {"tokens": mf.sum()}
    if tis_cap is not None:
        w = torch.clamp(torch.exp(torch.where(m, old_logp - gen_logp.float(), torch.zeros_like(logp))), max=tis_cap)
        pg = pg * w.detach()
        stats["tis"] = (w * mf).sum()
    loss = pg
    if kl_beta > 0:
        k = kl_term(logp, ref_logp.float().detach(), kl_estimator)
        loss = loss + kl_beta * k
        stats["kl"] = (k.detach() * mf).sum()
    loss = torch.where(m, loss, torch.zeros_like(loss))
    r = ratio.detach()
    stats["clip_low"] = (((r < 1.0 - eps_low) & (adv < 0)).float() * mf).sum()
    stats["clip_high"] = (((r > 1.0 + eps_high) & (adv > 0)).float() * mf).sum()
    stats["ratio"] = (r * mf).sum()
    return loss, {k: v.detach() for k, v in stats.items()}


def stats_means(sums: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Statistic sums (per_token_policy_loss) -> means over masked tokens: clip_frac_low, clip_frac_high, kl,
    ratio_mean, tis_mean (the last two only when present)."""
    n = sums["tokens"].clamp(min=1.0)
    names = {"clip_low": "clip_frac_low", "clip_high": "clip_frac_high", "kl": "kl", "ratio": "ratio_mean",
             "tis": "tis_mean"}
    return {names[k]: v / n for k, v in sums.items() if k in names}


def policy_loss(logp, old_logp, advantages, mask, *, ref_logp=None, gen_logp=None, eps_low=0.2, eps_high=0.2,
                kl_beta=0.0, kl_estimator="k3", tis_cap=None, agg="token", variant="grpo", seq_ids=None,
                norm_len=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DESIGN section 10's policy_loss: (0-d loss, stats) normalized over the tensors given (see module docstring).

    stats: clip_frac_low, clip_frac_high, kl (mean k; 0 without KL), ratio_mean, tis_mean (with tis_cap)."""
    _check_name("aggregation", agg, AGGREGATIONS)
    per_tok, sums = per_token_policy_loss(logp, old_logp, advantages, mask, ref_logp=ref_logp, gen_logp=gen_logp,
                                          eps_low=eps_low, eps_high=eps_high, kl_beta=kl_beta,
                                          kl_estimator=kl_estimator, tis_cap=tis_cap, variant=variant,
                                          seq_ids=seq_ids)
    m = mask.bool()
    seq_lens = None
    if agg != "token":
        ids, n_seq = _flat_seq_ids(m, seq_ids)
        seq_lens = sequence_lengths_per_token(m, seq_ids) if agg == "seq-mean-token-mean" else None
        # sequences with no masked token still count (a [B, T] batch has B sequences whatever their masks)
    else:
        n_seq = 0
    w = token_weights(m, agg, seq_lens=seq_lens, num_tokens=sums["tokens"], num_seqs=n_seq, norm_len=norm_len)
    stats = stats_means(sums)
    stats.setdefault("kl", torch.zeros(()))
    return (per_tok * w).sum(), stats
