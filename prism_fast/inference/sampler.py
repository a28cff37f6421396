"""Sampling for the rollout engine: counter-based RNG, temperature / top-k / top-p / min-p, exact log-probs.

RNG: every completion (request i, sample j) owns a 64-bit key derived on the host from (seed, i, j); the uniform
used for its t-th token is a pure hash of (key, t) computed on the device (murmur3 fmix32 rounds on int64 tensors
holding uint32 values). So a completion's draws depend only on (seed, i, j, t): not on which slot it sits in, how
many rows share the step, max_batch, or how often the host syncs; and a run resumes from any t with no RNG state
to save. One uniform per token drives an inverse-CDF draw over the processed distribution (24 random bits:
tokens below ~6e-8 probability are under-sampled by at most that much).
Processing order (vLLM's): logits (model logits_scaling already applied) / temperature -> top-k -> top-p -> min-p,
each mask renormalizing what it keeps. Masks are thresholds on the tempered logit, so tokens tied with the last
kept one are kept too (exact ties are measure-zero in float logits). Greedy rows (temperature 0) take the argmax and
record log_softmax(logits) of it.
`sample_tokens` is the batched, sync-free path (per-row parameters as tensors); `sample_tokens_ref` is the
row-by-row pure-PyTorch reference the tests compare it with.
"""
from __future__ import annotations

import torch

_U32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9


def _fmix32(x: torch.Tensor) -> torch.Tensor:
    """murmur3's 32-bit finalizer on int64 tensors holding uint32 values (products wrap; the mask keeps 32 bits)."""
    x = x ^ (x >> 16)
    x = (x * 0x85EBCA6B) & _U32
    x = x ^ (x >> 13)
    x = (x * 0xC2B2AE35) & _U32
    return x ^ (x >> 16)


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def stream_key(seed: int, request: int, sample: int) -> tuple[int, int]:
    """The (k1, k2) uint32 key pair of completion `sample` of request `request` under `seed` (host, exact ints)."""
    h = _splitmix64(_splitmix64(_splitmix64(seed & 0xFFFFFFFFFFFFFFFF) ^ request) ^ sample)
    return h & _U32, h >> 32


def uniforms(keys_B2: torch.Tensor, counter_B: torch.Tensor) -> torch.Tensor:
    """keys [B, 2] int64 (uint32 values), counter [B] int64 (token index) -> uniforms in (0, 1), fp32 [B]."""
    h = _fmix32((keys_B2[:, 0] + counter_B * _GOLDEN) & _U32)
    h = _fmix32(h ^ keys_B2[:, 1])
    return ((h >> 8).to(torch.float32) + 0.5) * (1.0 / 2**24)


def _truncation_mask(scaled_BV, top_k_B, top_p_B, min_p_B) -> torch.Tensor:
    """Boolean [B, V]: tokens kept by top-k, then top-p (on the top-k renormalized probs), then min-p."""
    V = scaled_BV.shape[-1]
    sorted_v, _ = scaled_BV.sort(dim=-1, descending=True)
    rank = torch.arange(V, device=scaled_BV.device)
    k = torch.where(top_k_B > 0, top_k_B, V)
    keep = rank[None, :] < k[:, None]                                               # top-k: a prefix of the sort
    p = torch.softmax(sorted_v.masked_fill(~keep, float("-inf")), dim=-1)
    # top-p: keep the smallest prefix whose mass reaches top_p (the token that crosses it is kept); top_p = 1
    # keeps everything even when the fp32 cumsum rounds above 1
    keep &= ((p.cumsum(-1) - p) < top_p_B[:, None]) | (top_p_B[:, None] >= 1.0)
    keep &= p >= min_p_B[:, None] * p[:, :1]                                         # min-p: relative to the max
    keep[:, 0] = True
    n_keep = keep.sum(-1, keepdim=True)                                              # keep is a prefix
    threshold = sorted_v.gather(-1, n_keep - 1)
    return scaled_BV >= threshold


def sample_tokens(logits_BV: torch.Tensor, temperature_B: torch.Tensor, top_k_B: torch.Tensor, top_p_B: torch.Tensor,
                  min_p_B: torch.Tensor, u_B: torch.Tensor, *, truncate: bool = True,
                  greedy_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Next tokens [B] int64 and their log-probs [B] fp32 (see module docstring), without host syncs.

    logits [B, V] (any float dtype; computed in fp32), temperature [B] fp32 (0 = greedy), top_k [B] int64 (0 = off),
    top_p [B] fp32, min_p [B] fp32, u [B] uniforms in (0, 1). truncate=False skips the sort when the caller knows
    no row truncates (the result is the same: every mask would keep everything); greedy_only=True when the caller
    knows every row is greedy (argmax and log-softmax only, the same result)."""
    logits = logits_BV.float()
    if greedy_only:                            # every row greedy: skip the CDF (the common eval case)
        tokens = logits.argmax(-1)
        return tokens, logits.gather(-1, tokens[:, None]).squeeze(-1) - logits.logsumexp(-1)
    greedy = temperature_B <= 0
    scaled = logits / torch.where(greedy, 1.0, temperature_B)[:, None]
    if truncate:
        keep = _truncation_mask(scaled, top_k_B, top_p_B, min_p_B) | greedy[:, None]
        scaled = scaled.masked_fill(~keep, float("-inf"))
    logp = torch.log_softmax(scaled, dim=-1)
    cdf = logp.exp().cumsum(-1)
    drawn = torch.searchsorted(cdf, (u_B * cdf[:, -1])[:, None]).squeeze(-1).clamp_(max=logits.shape[-1] - 1)
    tokens = torch.where(greedy, logits.argmax(-1), drawn)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)


def sample_tokens_ref(logits_BV, temperature, top_k, top_p, min_p, u) -> tuple[list[int], list[float]]:
    """Row-by-row reference of sample_tokens (rank-based masks, explicit renormalization). Lists of floats/ints
    per row for the parameters; returns (tokens, log-probs) as lists."""
    toks, lps = [], []
    for b in range(logits_BV.shape[0]):
        x = logits_BV[b].double()
        if temperature[b] == 0:
            t = int(x.argmax())
            toks.append(t)
            lps.append(float(torch.log_softmax(x, -1)[t]))
            continue
        x = x / temperature[b]
        order = x.argsort(descending=True)
        p = torch.softmax(x[order], -1)
        n = len(p) if top_k[b] == 0 else min(top_k[b], len(p))
        p = p[:n] / p[:n].sum()
        if top_p[b] < 1.0:
            c = p.cumsum(0)
            n = int((c - p < top_p[b]).sum())
            p = p[:n] / p[:n].sum()
        n = int((p >= min_p[b] * p[0]).sum())
        p = p[:n] / p[:n].sum()
        full = torch.zeros_like(x).index_put_((order[:n],), p)                 # inverse CDF in vocabulary order
        c = full.cumsum(0)
        t = min(int((c < u[b] * c[-1]).sum()), len(x) - 1)
        toks.append(t)
        lps.append(float(full[t].log()))
    return toks, lps
