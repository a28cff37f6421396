"""Batched generation with the model's cache: greedy or temperature + top-p sampling, per-sequence EOS stop.

Layout: prompts of different lengths are prefilled one by one into their own row of a batched cache (a row view,
see models/cache.py), so no padding ever enters attention or Mamba state; then all rows decode together, one
token per step, each at its own position. Rows that hit EOS keep decoding (their tokens are dropped) until every
row is done: simpler than compacting the batch, and costs nothing when lengths are similar.
Unusual: one host sync per step (EOS bookkeeping). This is the small reference path (demo, analysis); rollouts and
evaluation use prism_fast.inference.Engine (continuous batching, packed prefill, exact sampling log-probs, sync-free
decode steps). It does not delegate to the engine because models/ never imports inference/ (DESIGN section 1).
"""
from __future__ import annotations

import torch


def sample_next(logits_BV: torch.Tensor, temperature: float = 0.0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Next tokens [B] from logits [B, V]: argmax when temperature == 0, else nucleus sampling at `temperature`."""
    if temperature <= 0.0:
        return logits_BV.argmax(dim=-1)
    probs = torch.softmax(logits_BV.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, idx = probs.sort(dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (the token that crosses the threshold is kept)
        drop = sorted_p.cumsum(-1) - sorted_p >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, idx, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model, prompts: list[list[int]], *, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
             eos_token_id: int | list[int] | None = None, seed: int | None = None) -> list[list[int]]:
    """Continue each prompt (list of token ids); returns the NEW tokens of each, at most max_new_tokens, ending
    with the EOS token when one was produced. eos_token_id=None uses the model config's EOS ids; [] disables."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate: every prompt needs at least one token (prepend a BOS token to empty prompts)")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"generate: top_p must be in (0, 1], got {top_p}")
    if eos_token_id is None:
        eos = set(model.config.eos_token_ids)
    else:
        eos = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id)
    device = model.lm_head_module().weight.device
    gen = None
    if seed is not None:
        gen = torch.Generator(device=device).manual_seed(seed)
    B = len(prompts)
    was_training = model.training
    model.eval()
    cache = model.new_cache(B, max(len(p) for p in prompts) + max_new_tokens)
    last = []
    for b, p in enumerate(prompts):
        # the LM head runs on the last position only (a prompt's other logits are never used)
        h = model.forward_hidden(torch.tensor([p], dtype=torch.long, device=device), cache=cache.row(b))
        last.append(model.logits(h[:, -1:])[0, -1])
    nxt = sample_next(torch.stack(last), temperature, top_p, gen)
    out: list[list[int]] = [[] for _ in range(B)]
    done = [False] * B
    for step in range(max_new_tokens):
        for b, t in enumerate(nxt.tolist()):                                  # host sync: EOS bookkeeping
            if not done[b]:
                out[b].append(t)
                done[b] = t in eos
        if all(done) or step == max_new_tokens - 1:
            break
        logits = model(nxt[:, None], cache=cache)
        nxt = sample_next(logits[:, -1], temperature, top_p, gen)
    model.train(was_training)
    return out
