"""Math answers through math-verify (parse + verify), meant to run inside a pool worker's main thread.

math-verify bounds its own work with signal.alarm, which raises ValueError off the main thread (the classic
"every reward silently 0" bug of threaded reward loops) and cannot interrupt sympy while it sits in C (a big
integer power such as 10^(10^(10^10)) never returns to the interpreter). So its timeouts are switched off here
(parsing_timeout=None, timeout_seconds=None); the worker arms its own interval timer around the call (worker.py)
and the parent kills the worker at the hard limit (pool.py).

Gold answers are plain strings ("\\frac{1}{2}", "[1,2)", "50\\%"), so they are parsed as `\\boxed{gold}` first (the
latex reading: "1,2" is the set {1, 2}, "50\\%" is 1/2), then `$gold$`, then as written. The response's answer
part is parsed with math-verify's defaults: a `\\boxed{}` wins, else the last expression found.
"""
from __future__ import annotations

import functools
import logging

from math_verify import parse, verify

# With timeouts off math-verify logs a one-time warning per process telling us to bound the call ourselves,
# which worker.py does.
logging.getLogger("math_verify").setLevel(logging.ERROR)


@functools.lru_cache(maxsize=4096)
def parse_gold(reference: str) -> tuple:
    """math-verify's parse of the gold answer (empty when nothing parses); cached: RL scores each prompt G times."""
    for text in ("\\boxed{" + reference + "}", "$" + reference + "$", reference):
        parsed = parse(text, parsing_timeout=None)
        if parsed:
            return tuple(parsed)
    return ()


def verify_math(answer: str, reference: str) -> tuple[float, str, str]:
    """(correct, reason, detail) for one answer part against the gold answer string."""
    gold = parse_gold(str(reference).strip())
    if not gold:
        return 0.0, "bad_reference", f"math-verify cannot parse the gold answer {str(reference)[:60]!r}"
    pred = parse(answer, parsing_timeout=None)
    if not pred:
        return 0.0, "no_answer", "math-verify found no answer expression"
    if verify(list(gold), pred, timeout_seconds=None):
        return 1.0, "ok", ""
    return 0.0, "wrong", f"answer {str(pred[-1])[:60]!r}"


# Warm math-verify's lazily built LaTeX grammar and sympy caches once (~0.4 s). This module is preloaded by the
# pool's zygote, so every worker forked from it (replacements included) starts warm.
verify_math("\\boxed{\\frac{1}{2}}", "0.5")
