"""Code tests on top of the sandbox: stdin -> stdout tests and HumanEval-style test code.

stdin/stdout (LiveCodeBench / Codeforces style): the program's output and the expected output are compared line
by line with trailing whitespace stripped (trailing blank lines ignored); output that is not UTF-8 is decoded
with replacement characters and so compares unequal. A non-zero exit fails the test even when the output matched.
HumanEval style: the program and `check(entry_point)` run in two sandboxes that exchange only plain data
(function_test.py); the test passes only on the checker's verdict carrying this run's nonce.
Each function runs one test and returns (correct 0/1, reason, detail); api.py spreads the tests of an item over
the pool and averages them.
"""
from __future__ import annotations

from prism_fast.rewards.code_sandbox import ProgramRun, SandboxConfig, run_program
from prism_fast.rewards.function_test import run_function_test


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.rstrip().split("\n")]


def outputs_match(got: str, expected: str) -> bool:
    return _lines(got.replace("\r\n", "\n")) == _lines(expected.replace("\r\n", "\n"))


def _failure(run: ProgramRun) -> tuple[float, str, str] | None:
    """The (0, reason, detail) of a run that did not finish cleanly, else None."""
    tail = run.stderr_tail.strip()[-300:]
    if run.setup_failed:
        return 0.0, "crash", tail
    if run.timed_out:
        return 0.0, "timeout", f"program passed its {run.seconds:.1f} s limit"
    if run.output_limited:
        return 0.0, "output_limit", f"program wrote more than {len(run.stdout)} bytes to stdout"
    if run.returncode != 0:
        return None if "AssertionError" in tail else (0.0, "runtime_error", f"exit {run.returncode}: {tail}")
    return None


def run_stdio_test(program: str, stdin: str, expected: str, *, timeout_s: float,
                   sandbox: SandboxConfig) -> tuple[float, str, str]:
    # Output longer than twice the expected one (plus slack) cannot match; stop such a run early.
    cap = min(sandbox.stdout_cap_bytes, 2 * len(expected.encode()) + (64 << 10))
    run = run_program(program, stdin, timeout_s=timeout_s, config=sandbox, stdout_cap=cap)
    failed = _failure(run)
    if failed is not None:
        return failed
    if run.returncode != 0:                      # an AssertionError in a stdio program is still a crash of it
        return 0.0, "runtime_error", f"exit {run.returncode}: {run.stderr_tail.strip()[-300:]}"
    got = run.stdout.decode("utf-8", "replace")
    if outputs_match(got, expected):
        return 1.0, "ok", ""
    return 0.0, "wrong", f"output {got[:80]!r} != expected {expected[:80]!r}"


def run_humaneval_test(program: str, test_code: str, entry_point: str, *, timeout_s: float,
                       sandbox: SandboxConfig, setup_code: str = "") -> tuple[float, str, str]:
    """The candidate and `check(entry_point)` in two sandboxes (function_test.py): exit status 0 is no pass."""
    return run_function_test(program, test_code, entry_point, timeout_s=timeout_s, sandbox=sandbox,
                             setup_code=setup_code)
