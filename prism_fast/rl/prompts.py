"""Prompt sets for RL: JSONL records `{"prompt": str | [chat messages], "domain": "math"|"code"|"mc", "reference"}`
tokenized once through the chat template, and a stateless order: the prompts of step s are a pure function of
(seed, s), so the data position in a checkpoint is the step itself and a resumed run, on any world size, draws
exactly the prompts the uninterrupted run would have.

Order: the records of all files are concatenated; epoch e is the permutation torch.randperm(n, generator seeded
with seed + e); the global stream is epoch 0, epoch 1, ...; step s takes stream positions [s*P, (s+1)*P) and rank r
of W takes the r-th contiguous slice of P/W of them (whole groups per rank).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)
DOMAINS = ("math", "code", "mc")


@dataclass(frozen=True, slots=True)
class Prompt:
    index: int                 # position in the concatenated set (stable across runs)
    token_ids: tuple[int, ...]
    domain: str
    reference: object
    text: str                  # the rendered prompt (chat template applied), for logs


def read_records(path: Path) -> list[dict]:
    """Records of one JSONL file; ValueError naming FILE:LINE for a malformed line."""
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
        if not isinstance(rec, dict) or "prompt" not in rec or "reference" not in rec:
            raise ValueError(f"{path}:{n}: a prompt record needs 'prompt', 'domain' and 'reference'")
        if rec.get("domain") not in DOMAINS:
            raise ValueError(f"{path}:{n}: domain {rec.get('domain')!r}; valid: {', '.join(DOMAINS)}")
        out.append(rec)
    if not out:
        raise ValueError(f"{path}: no prompt records")
    return out


def render(tokenizer, prompt, system_prompt: str | None = None) -> list[int]:
    """Chat-template token ids (generation prompt added) of a string or a list of chat messages."""
    msgs = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    if system_prompt and msgs[0].get("role") != "system":
        msgs = [{"role": "system", "content": system_prompt}, *msgs]
    ids = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):   # transformers 5 may return a BatchEncoding
        ids = ids["input_ids"]
    return [int(t) for t in ids]


class PromptSet:
    """All prompts of a run, tokenized, with the stateless per-step order of the module docstring."""

    def __init__(self, files: list[Path], tokenizer, *, seed: int, max_prompt_tokens: int, limit_per_file: int = 0,
                 system_prompt: str | None = None):
        self.seed = seed
        prompts, dropped = [], 0
        for f in files:
            recs = read_records(f)
            for rec in recs[:limit_per_file] if limit_per_file else recs:
                ids = render(tokenizer, rec["prompt"], system_prompt)
                if len(ids) > max_prompt_tokens:
                    dropped += 1
                    continue
                prompts.append(Prompt(len(prompts), tuple(ids), rec["domain"], rec["reference"],
                                      tokenizer.decode(ids)))
        if not prompts:
            raise ValueError(f"no prompt fits prompts.max_prompt_tokens={max_prompt_tokens} in "
                             f"{[str(f) for f in files]}")
        if dropped:
            log.warning("%d prompts longer than %d tokens dropped", dropped, max_prompt_tokens)
        self.prompts = prompts
        self._perms: dict[int, list[int]] = {}

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def domains(self) -> list[str]:
        return sorted({p.domain for p in self.prompts})

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed + epoch)
            self._perms = {epoch: torch.randperm(len(self.prompts), generator=g).tolist()}   # keep one epoch
        return self._perms[epoch]

    def positions(self, step: int, per_step: int, rank: int, world_size: int) -> list[int]:
        """Global stream positions of this rank's prompts at `step` (see module docstring)."""
        per_rank = per_step // world_size
        start = step * per_step + rank * per_rank
        return list(range(start, start + per_rank))

    def at(self, position: int) -> Prompt:
        epoch, i = divmod(position, len(self.prompts))
        return self.prompts[self._perm(epoch)[i]]

    def for_step(self, step: int, per_step: int, rank: int, world_size: int) -> list[tuple[int, Prompt]]:
        """[(global stream position, prompt)] of this rank at `step`."""
        return [(p, self.at(p)) for p in self.positions(step, per_step, rank, world_size)]
