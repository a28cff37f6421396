"""Reward items and results, and the up-front checks that turn bad input into a clear error or a scored reason.

An item is a `RewardItem` or a plain dict with the same keys (extra keys such as an id are ignored). A malformed
*item* (unknown domain, response not a string) is the caller's bug and raises ValueError naming the item; a
malformed *reference* is a data problem and scores 0 with reason "bad_reference" (the pool keeps going, the
counters show it), because one bad row of a prompt set must not stop an RL run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DOMAINS = ("math", "code", "mc")

# Every reason a result can carry. "timeout" and "crash" are the verifier's failures (not the model's); the
# counters keep them apart from "wrong" so an all-zero batch caused by the verifier is never read as bad answers.
REASONS = (
    "ok",             # verified correct (code: every test passed)
    "wrong",          # an answer was found and checked, and it is wrong (code: some test failed on its output)
    "format",         # require_think and no `<think> ... </think> answer` with a non-empty answer part
    "truncated",      # the response hit the token budget (no EOS); not verified
    "no_answer",      # no parseable answer / no choice letter / no ```python block in the answer part
    "bad_reference",  # the reference is empty or malformed (see RewardResult.detail for what is wrong)
    "timeout",        # the verifier or the candidate program ran past its wall-clock limit
    "runtime_error",  # the candidate program exited non-zero or was killed by a resource limit
    "output_limit",   # the candidate program wrote more than the stdout cap
    "crash",          # the verifier itself failed (worker died, sandbox setup failed, internal error)
)
VERIFIER_FAILURES = ("timeout", "crash")


@dataclass(slots=True)
class RewardItem:
    """One response to score. `reference` per domain (DESIGN section 9):
    math: gold answer string; mc: correct letter; code: {"tests": [{"input", "output"}, ...]} (stdin -> stdout)
    or {"test_code": str, "entry_point": str, "setup_code": str (optional)} (HumanEval style; setup_code is the
    problem's own prompt code, whose helpers the test code may call: the checker runs it, not the candidate's)."""
    domain: str
    response: str
    reference: Any
    truncated: bool = False
    """True when generation stopped at the token budget (no EOS)."""


@dataclass(slots=True)
class RewardResult:
    reward: float
    """What the trainer optimizes: correct (0 unless format_ok and not truncated) minus the penalties."""
    correct: float
    """The verifier's score in [0, 1] (code: fraction of tests passed)."""
    format_ok: bool
    reason: str
    """One of REASONS."""
    seconds: float
    """Verifier wall time spent on this item in the worker pool (all its tasks together)."""
    detail: str = field(default="")
    """Free text for humans: what was wrong with a reference, the tail of a program's stderr, ..."""


def as_item(obj: Any, index: int) -> RewardItem:
    """Normalize a RewardItem or dict; raise ValueError naming item `index` when it cannot be scored at all."""
    if isinstance(obj, RewardItem):
        item = obj
    elif isinstance(obj, dict):
        missing = [k for k in ("domain", "response", "reference") if k not in obj]
        if missing:
            raise ValueError(f"reward item {index}: missing key(s) {missing}; an item needs domain, response, "
                             f"reference (and optionally truncated)")
        item = RewardItem(obj["domain"], obj["response"], obj["reference"], obj.get("truncated", False))
    else:
        raise ValueError(f"reward item {index}: expected a RewardItem or dict, got {type(obj).__name__}")
    if item.domain not in DOMAINS:
        raise ValueError(f"reward item {index}: unknown domain {item.domain!r}; valid domains: {', '.join(DOMAINS)}")
    if not isinstance(item.response, str):
        raise ValueError(f"reward item {index}: response must be a str, got {type(item.response).__name__}")
    if not isinstance(item.truncated, bool):
        raise ValueError(f"reward item {index}: truncated must be a bool, got {item.truncated!r}")
    return item


def reference_problem(domain: str, reference: Any) -> str | None:
    """None when `reference` has the shape its domain needs, else a one-line description of what is wrong."""
    if domain in ("math", "mc"):
        if not isinstance(reference, (str, int, float)) or isinstance(reference, bool):
            return f"{domain} reference must be a string, got {type(reference).__name__}"
        if not str(reference).strip():
            return f"{domain} reference is empty"
        if domain == "mc" and not (len(str(reference).strip()) == 1 and str(reference).strip().isalpha()):
            return f"mc reference must be one letter such as 'C', got {str(reference)[:40]!r}"
        return None
    if not isinstance(reference, dict):
        return f"code reference must be a dict, got {type(reference).__name__}"
    if "tests" in reference:
        tests = reference["tests"]
        if not isinstance(tests, list) or not tests:
            return "code reference 'tests' must be a non-empty list of {'input': str, 'output': str}"
        for i, t in enumerate(tests):
            if not (isinstance(t, dict) and isinstance(t.get("input"), str) and isinstance(t.get("output"), str)):
                return f"code reference test {i} must be {{'input': str, 'output': str}}, got {str(t)[:60]!r}"
        return None
    if "test_code" in reference or "entry_point" in reference:
        code, entry = reference.get("test_code"), reference.get("entry_point")
        if not (isinstance(code, str) and code.strip()):
            return "code reference 'test_code' must be a non-empty string"
        if not (isinstance(entry, str) and entry.isidentifier()):
            return f"code reference 'entry_point' must be a Python identifier, got {entry!r}"
        if not isinstance(reference.get("setup_code", ""), str):
            return "code reference 'setup_code' (the problem's own helper code) must be a string"
        return None
    return ("code reference must be {'tests': [{'input', 'output'}, ...]} or {'test_code': str, "
            f"'entry_point': str}}; got keys {sorted(reference)[:6]}")
