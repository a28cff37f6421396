"""Learning-rate schedules as pure functions of the optimizer-step index (no scheduler object state).

The trainer sets `group["lr"] = peak_lr * factor(step)` before each update, so resuming only needs the step
counter (saved in the checkpoint) -- there is no LambdaLR state to keep in sync with DCP.
`step` is 0-based: factor(0) is the multiplier for the first update.

Schedules (all with a linear warmup of `warmup_steps` from 1/(warmup_steps+1) to 1, torchtitan's convention, so the
first update never runs at lr 0):
- "cosine": the paper's (Table 16): cosine from 1 to `min_lr_ratio` over the remaining steps (PRISM: 500 warmup,
  24,500 cosine, floor 0.1).
- "wsd": warmup-stable-decay; stable at 1, then the last `decay_fraction` of the steps decay to `min_lr_ratio`
  (`decay_shape` "linear" | "cosine" | "sqrt" (1 - sqrt(progress))).
- "linear": linear decay to `min_lr_ratio` (the RL recipe's "linear decay").
- "exponential": the long-context repair phase ("warmup 100, exponential decay to 0"). A pure exponential never
  reaches 0, so we use the shifted form f(p) = (exp(-k p) - exp(-k)) / (1 - exp(-k)), p in [0, 1], rate
  k = `exp_rate` (default 5): starts at 1, decays exponentially, and is exactly 0 (or the floor) at the last step.
- "constant": warmup then 1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from prism_fast.ranges import check_ranges, ranged

SCHEDULES = ("cosine", "wsd", "linear", "exponential", "constant")


@dataclass(kw_only=True, slots=True)
class Config:
    name: str = "cosine"
    """One of cosine | wsd | linear | exponential | constant."""
    warmup_steps: int = ranged(0, ge=0)
    """Linear warmup steps (PRISM mid-training: 500; long-context repair: 100)."""
    min_lr_ratio: float = ranged(0.0, ge=0, le=1)
    """Floor as a fraction of the peak lr (PRISM cosine: 0.1)."""
    decay_fraction: float = ranged(0.1, gt=0, le=1)
    """wsd only: fraction of the total steps spent decaying."""
    decay_shape: str = "linear"
    """wsd only: linear | cosine | sqrt."""
    exp_rate: float = ranged(5.0, gt=0)
    """exponential only: rate k of the shifted exponential."""

    def __post_init__(self):
        if self.name not in SCHEDULES:
            raise ValueError(f"schedule.name={self.name!r} is not known; use one of {list(SCHEDULES)}")
        if self.decay_shape not in ("linear", "cosine", "sqrt"):
            raise ValueError(f"schedule.decay_shape={self.decay_shape!r}; use linear | cosine | sqrt")
        check_ranges(self, "schedule")

    def build(self, total_steps: int) -> "Schedule":
        if total_steps <= self.warmup_steps:
            raise ValueError(f"schedule.warmup_steps={self.warmup_steps} must be < the number of steps "
                             f"({total_steps}); lower the warmup or raise train.steps")
        return Schedule(self, total_steps)


class Schedule:
    """factor(step) -> multiplier of the peak lr. Stateless: the step lives in the trainer."""

    def __init__(self, cfg: Config, total_steps: int):
        self.cfg = cfg
        self.total_steps = total_steps

    def __call__(self, step: int) -> float:
        c = self.cfg
        if step < c.warmup_steps:
            return (step + 1) / (c.warmup_steps + 1)
        if c.name == "constant":
            return 1.0
        decay_steps = self.total_steps - c.warmup_steps
        floor = c.min_lr_ratio
        if c.name == "wsd":
            n_decay = max(1, int(round(c.decay_fraction * decay_steps)))
            start = self.total_steps - n_decay
            if step < start:
                return 1.0
            p = min(1.0, (step - start + 1) / n_decay)
            shape = {"linear": 1.0 - p, "cosine": 0.5 * (1.0 + math.cos(math.pi * p)),
                     "sqrt": 1.0 - math.sqrt(p)}[c.decay_shape]
            return floor + (1.0 - floor) * shape
        # progress in [0, 1]: 0 at the first post-warmup step, 1 at the last step (total_steps - 1).
        p = min(1.0, (step - c.warmup_steps) / max(1, decay_steps - 1))
        if c.name == "cosine":
            shape = 0.5 * (1.0 + math.cos(math.pi * p))
        elif c.name == "linear":
            shape = 1.0 - p
        else:  # exponential
            k = c.exp_rate
            shape = (math.exp(-k * p) - math.exp(-k)) / (1.0 - math.exp(-k))
        return floor + (1.0 - floor) * shape
