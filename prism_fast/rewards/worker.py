"""The verifier process: receives tasks on a pipe, runs them in its MAIN thread, sends outcomes back.

Running in the main thread of a process of its own is what makes bounding math-verify possible: an interval
timer (SIGALRM) raises `_SoftTimeout` (a BaseException, so the many `except Exception` blocks inside math-verify
and sympy cannot swallow it) out of pure-Python work such as a deeply nested expression. Work stuck inside C code
(a big-integer power) ignores the signal until it returns; for that the parent kills the whole worker at the hard
limit and starts a new one (pool.py). Code tasks need no timer: the sandbox bounds the candidate program itself.

Task messages are (task_id, kind, payload, budget_s); outcomes are dicts with correct, reason, detail, seconds
and repetition (the repetition fraction when the payload asked for it, else None).
"""
from __future__ import annotations

import ctypes
import os
import signal
import time
import traceback

from prism_fast.rewards.code_sandbox import become_subreaper
from prism_fast.rewards.code_verifier import run_humaneval_test, run_stdio_test
from prism_fast.rewards.mc import verify_mc
from prism_fast.rewards.penalties import repetition_fraction


class _SoftTimeout(BaseException):
    """Raised by the interval timer; BaseException so library `except Exception` handlers let it through."""


def _on_alarm(signum, frame):
    raise _SoftTimeout


def _bounded(fn, budget_s: float):
    """fn() with a SIGALRM-based wall-clock bound (main thread only, which is where workers run tasks)."""
    signal.setitimer(signal.ITIMER_REAL, max(budget_s, 1e-3))
    try:
        return fn()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _run_kind(kind: str, p: dict, budget_s: float) -> tuple[float, str, str]:
    if kind == "math":
        from prism_fast.rewards.math_verifier import verify_math   # already imported in the zygote
        return _bounded(lambda: verify_math(p["answer"], p["reference"]), budget_s)
    if kind == "mc":
        return _bounded(lambda: verify_mc(p["answer"], p["reference"]), budget_s)
    if kind == "code_stdio":
        return run_stdio_test(p["program"], p["input"], p["output"], timeout_s=budget_s, sandbox=p["sandbox"])
    if kind == "code_humaneval":
        return run_humaneval_test(p["program"], p["test_code"], p["entry_point"], timeout_s=budget_s,
                                  sandbox=p["sandbox"], setup_code=p.get("setup_code", ""))
    if kind == "none":          # nothing to verify (format / truncated / bad reference): only the repetition
        return 0.0, p["reason"], p.get("detail", "")
    raise ValueError(f"unknown reward task kind {kind!r}")


def run_task(kind: str, payload: dict, budget_s: float) -> dict:
    """One task -> outcome dict. Never raises: verifier errors become reason "crash" with the error as detail."""
    t0 = time.perf_counter()
    repetition = None
    try:
        correct, reason, detail = _run_kind(kind, payload, budget_s)
        if payload.get("repetition_ngram"):
            repetition = _bounded(lambda: repetition_fraction(payload["response"], payload["repetition_ngram"]),
                                  budget_s)
    except _SoftTimeout:
        correct, reason, detail = 0.0, "timeout", f"verifier passed its {budget_s:g} s limit"
    except Exception as e:  # noqa: BLE001 - a verifier bug must score 0 with its reason, not kill the batch
        correct, reason = 0.0, "crash"
        detail = f"{type(e).__name__}: {e}"[:300] + " | " + traceback.format_exc(limit=-1).strip()[-300:]
    # A candidate program that ran past its limit (an infinite loop) is the model's timeout, not a verifier
    # failure: it must not make a batch count as "all failed" (api.py)
    program_timeout = reason == "timeout" and kind in ("code_stdio", "code_humaneval")
    return {"correct": correct, "reason": reason, "detail": detail, "seconds": time.perf_counter() - t0,
            "repetition": repetition, "program_timeout": program_timeout}


def _die_with_parent() -> None:
    """SIGKILL this worker when its parent (the zygote, which itself exits with the caller) goes away, so a
    caller killed mid-batch does not leave a worker busy in sympy or in a sandbox for up to timeout_s."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)                     # PR_SET_PDEATHSIG
    except (OSError, AttributeError):                              # not Linux: EOF on the pipe still ends us
        return
    if os.getppid() == 1:                                          # parent already gone before prctl
        os._exit(0)


def worker_main(conn) -> None:
    """Serve tasks until the parent sends None or goes away (EOF)."""
    _die_with_parent()
    become_subreaper()          # a sandbox killed at its limit orphans its namespace init: we reap it
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # Ctrl-C is the parent's business; it closes the pool
    signal.signal(signal.SIGALRM, _on_alarm)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        task_id, kind, payload, budget_s = msg
        outcome = run_task(kind, payload, budget_s)
        try:
            conn.send((task_id, outcome))
        except (BrokenPipeError, OSError):
            return
