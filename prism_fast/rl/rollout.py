"""One rollout batch: G sampled responses per prompt from the rollout engine, their generator log-probs, and the
reward items for the Rewarder.

Sampling streams: the engine keys completion j of request i of one generate() call by (seed, i, j). We pass one
SamplingParams per prompt whose seed is derived from (train seed, step, the prompt's global stream position), so
the samples of a step are a pure function of the step (a resumed run regenerates them bit for bit). The request
index i is the prompt's index within its generate() call: a 1-rank run with `rollout.generate_chunks=W` makes the
same calls, prompt for prompt, as each rank of a W-rank run, hence identical samples (the 2-rank == 1-rank test).
Sequences are kept group-contiguous: sequence s belongs to prompt s // G.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from prism_fast.rl.prompts import Prompt


def sample_seed(seed: int, step: int, position: int) -> int:
    """A 63-bit seed for one prompt's G samples at one step (stable across runs, ranks and world sizes)."""
    h = hashlib.blake2b(f"{seed}/{step}/{position}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 1


@dataclass
class Rollouts:
    """S = n_prompts * G sequences, group-contiguous. Flat per-token tensors are in response order (logprobs.py)."""
    prompts: list[Prompt]            # [S] (each prompt repeated G times)
    prompt_ids: list[list[int]]      # [S]
    response_ids: list[list[int]]    # [S]
    texts: list[str]                 # [S] decoded responses
    truncated: list[bool]            # [S] no stop token within max_new_tokens
    gen_logp: torch.Tensor           # [R] fp32: generator log-probs of every response token
    group_size: int

    @property
    def num_seqs(self) -> int:
        return len(self.response_ids)

    @property
    def lengths(self) -> list[int]:
        return [len(r) for r in self.response_ids]

    def reward_items(self) -> list[dict]:
        return [{"domain": p.domain, "response": t, "reference": p.reference, "truncated": tr}
                for p, t, tr in zip(self.prompts, self.texts, self.truncated)]

    def token_index(self, seqs: list[int]) -> torch.Tensor:
        """Flat response-order indices [R_sel] of the tokens of sequences `seqs` (in that order)."""
        lens = torch.tensor(self.lengths, dtype=torch.long)
        starts = torch.cumsum(lens, 0) - lens
        if not seqs:
            return torch.zeros(0, dtype=torch.long)
        return torch.cat([torch.arange(int(starts[s]), int(starts[s] + lens[s])) for s in seqs])


def generate(engine, prompts: list[tuple[int, Prompt]], rc, *, seed: int, step: int, chunks: int = 1) -> Rollouts:
    """Sample `rc.group_size` responses for each (stream position, prompt) with the engine (rc: RolloutSection)."""
    from prism_fast.inference import SamplingParams  # noqa: PLC0415
    params = [SamplingParams(temperature=rc.temperature, top_p=rc.top_p, top_k=rc.top_k, min_p=rc.min_p,
                             max_new_tokens=rc.max_new_tokens, n=rc.group_size, seed=sample_seed(seed, step, pos),
                             logprobs=True) for pos, _ in prompts]
    ids = [list(p.token_ids) for _, p in prompts]
    per_call = -(-len(ids) // max(1, chunks))
    outs = []
    for s in range(0, len(ids), per_call):
        outs += engine.generate(ids[s:s + per_call], params[s:s + per_call])
    seq_prompts, p_ids, r_ids, texts, trunc, lps = [], [], [], [], [], []
    for (_, prompt), out in zip(prompts, outs):
        for c in out.outputs:
            seq_prompts.append(prompt)
            p_ids.append(list(out.prompt_token_ids))
            r_ids.append(list(c.token_ids))
            texts.append(c.text or "")
            trunc.append(c.finish_reason == "length")
            lps.extend(c.logprobs)
    return Rollouts(seq_prompts, p_ids, r_ids, texts, trunc, torch.tensor(lps, dtype=torch.float32), rc.group_size)
