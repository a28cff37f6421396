"""Verifiable rewards (DESIGN section 9): math via math-verify, code in a sandbox, multiple-choice letters, the
`<think>` format gate, truncation and repetition penalties, counters. A leaf package: no model code, no torch.

    from prism_fast.rewards import score, Rewarder, RewardItem, RewardResult
    score([{"domain": "math", "response": "<think>..</think> \\\\boxed{1/2}", "reference": "0.5"}])
    with Rewarder(timeout_s=10) as r:          # keeps its worker pool across calls (RL)
        job = r.submit(items); ...; results = job.result(); r.counters()

Command line: python -m prism_fast.rewards score --domain D --input FILE.jsonl [--out FILE] [--no-think]
[--timeout S]. See docs/rewards.md.
"""
from prism_fast.rewards.api import Rewarder, RewardJob, score
from prism_fast.rewards.code_sandbox import SandboxConfig, SandboxUnavailable
from prism_fast.rewards.items import REASONS, RewardItem, RewardResult

__all__ = ["score", "Rewarder", "RewardJob", "RewardItem", "RewardResult", "SandboxConfig", "SandboxUnavailable",
           "REASONS"]
