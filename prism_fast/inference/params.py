"""Request-side types of the rollout engine: SamplingParams in, RequestOutput / Completion out (vLLM-shaped).

Log-prob convention (the RL trainer relies on it, DESIGN section 12): `Completion.logprobs[t]` is log p(token_t)
under the distribution token_t was drawn from: the model's logits (logits_scaling applied) divided by the
temperature, then top-k, top-p and min-p truncation and renormalization. Without truncation this is exactly
`model(ids, logprobs_of=tokens, temperature=T)`. Greedy (temperature 0) records log_softmax(logits) of the argmax.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from prism_fast.ranges import check_ranges, ranged

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    """How to continue one prompt. temperature 0 = greedy. top_k 0 = off; top_p 1 = off; min_p 0 = off.

    stop: strings that end a completion (matched on the decoded text, across token boundaries; needs a tokenizer).
    stop_token_ids: extra token ids that end a completion, besides the model's EOS ids (ignore_eos drops those).
    n: completions per prompt; they share ONE prefill. seed: completion j of request i draws from a stream derived
    from (seed, i, j), so results do not depend on batching; None draws a seed from torch's global RNG.
    """
    temperature: float = ranged(1.0, ge=0)
    top_p: float = ranged(1.0, gt=0, le=1)
    top_k: int = ranged(0, ge=0)
    min_p: float = ranged(0.0, ge=0, lt=1)
    max_new_tokens: int = ranged(256, ge=1)
    n: int = ranged(1, ge=1)
    seed: int | None = None
    stop: list[str] | tuple[str, ...] | str | None = None
    stop_token_ids: list[int] | tuple[int, ...] | None = None
    logprobs: bool = True
    ignore_eos: bool = False

    def __post_init__(self):
        check_ranges(self, "SamplingParams", flags=False)  # temperature 0 = greedy; top_k 0 = off
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        if self.stop is not None and any(not s for s in self.stop):
            raise ValueError("SamplingParams: stop strings must be non-empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def truncates(self) -> bool:
        """Whether the sampling distribution is truncated (then log-probs differ from the plain tempered ones)."""
        return not self.greedy and (self.top_k > 0 or self.top_p < 1.0 or self.min_p > 0.0)


@dataclass
class Completion:
    """One sampled continuation. token_ids end with the stop token when one ended it (EOS, stop_token_ids, or the
    token that completed a stop string); text is the decoded text with a matched stop string cut off."""
    token_ids: list[int]
    logprobs: list[float] | None
    text: str | None
    finish_reason: FinishReason
    index: int = 0


@dataclass
class RequestOutput:
    """All n completions of one prompt, in sample order; outputs are returned in prompt order."""
    request_id: int
    prompt_token_ids: list[int]
    outputs: list[Completion] = field(default_factory=list)
    prompt: str | None = None
