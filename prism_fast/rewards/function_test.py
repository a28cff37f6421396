"""Function-style code tests (HumanEval, and LiveCodeBench functional tests converted to that form) that a
candidate cannot forge.

The old way, one program of candidate + test code + `check(entry_point)` passing on exit status 0, let a
candidate pass with os._exit(0), sys.exit(0), an atexit hook, a sys.excepthook, an object whose __eq__ is always
True, or by reading the asserts from its own file. Here the candidate and the checks run in two sandboxes that
share nothing but two pipes (made here, in the verifier worker, and handed one end each):

  candidate sandbox: main.py (the program) + serve.py (_function_server.py): answers "call this with these
      arguments" with plain data (plain_data.py). It never sees the test code or an expected value.
  check sandbox: check.py (_function_check.py) holding the test code and a fresh nonce; `candidate` there is a
      proxy whose calls go down the pipe. No candidate code runs in it, and what comes back is rebuilt from
      builtins, so `==` is the builtin comparison and exits, hooks or signals of the candidate cannot reach it.

A pass needs the check sandbox's verdict, the last line of its stderr (a pipe to this process that the candidate
cannot reach), {"op": "done", "nonce": <this run's nonce>}, AND its exit status 0; exit statuses and output of
the candidate mean nothing. Costs: two sandboxes per test (started in parallel); calls go straight between them
(the worker is not woken per call, which matters on a busy machine). Limits (docs/rewards.md): in-place mutation of arguments is not seen by the test; values that are not
plain data (generators, custom classes) fail; names the test code takes from the prompt (`poly` in HumanEval/32)
come from the reference's `setup_code` (the problem's prompt) when it has one, else from the candidate's program.
"""
from __future__ import annotations

import json
import os
import secrets
import selectors
import subprocess
import time
from pathlib import Path

from prism_fast.rewards.code_sandbox import CHECK_UID_OFFSET, ProgramRun, SandboxConfig, Started

_HERE = Path(__file__).parent
_CODEC = (_HERE / "plain_data.py").read_text()
SERVER_SCRIPT = _CODEC + "\n" + (_HERE / "_function_server.py").read_text() + "\nserve('main.py')\n"
_CHECK_SOURCE = _CODEC + "\n" + (_HERE / "_function_check.py").read_text()
VERDICT_MARK = "PRISM-VERDICT "  # _function_check.py's mark on its verdict line


def check_script(test_code: str, entry_point: str, nonce: str, setup_code: str = "") -> str:
    return _CHECK_SOURCE + f"\nrun_check({test_code!r}, {entry_point!r}, {nonce!r}, {setup_code!r})\n"


def run_function_test(program: str, test_code: str, entry_point: str, *, timeout_s: float,
                      sandbox: SandboxConfig, setup_code: str = "") -> tuple[float, str, str]:
    """(correct 0/1, reason, detail) of one function-style test. Never raises for program faults.

    setup_code: the problem's own code (HumanEval's prompt: imports, helpers such as `poly`, the stub), run in the
    check sandbox before the test code, so the helpers the test calls are the problem's, not the candidate's."""
    nonce = secrets.token_hex(16)
    t0 = time.monotonic()
    cand = check = None
    verdict, why, tails = None, "", {"cand": "", "check": ""}
    to_cand_r, to_cand_w = os.pipe()             # requests: checker -> candidate
    to_check_r, to_check_w = os.pipe()           # replies: candidate -> checker
    try:
        try:
            cand = Started({"main.py": program, "serve.py": SERVER_SCRIPT}, "serve.py", to_cand_r,
                           stdout=to_check_w, timeout_s=timeout_s, config=sandbox)
            # -I -S: the test code needs the stdlib only; no site import saves ~15 ms of CPU per test. A uid
            # other than the candidate's: without namespaces (uid mode) the candidate could otherwise read
            # check.py (the nonce, the expected values) through /proc/<checker>/cwd
            check = Started({"check.py": check_script(test_code, entry_point, nonce, setup_code)}, "check.py", to_check_r,
                            stdout=to_cand_w, timeout_s=timeout_s, config=sandbox,
                            python_flags=("-I", "-S", "-B"), uid_offset=CHECK_UID_OFFSET)
        finally:
            for fd in (to_cand_r, to_cand_w, to_check_r, to_check_w):
                os.close(fd)             # the two sandboxes hold them now; EOF then means the other side is gone
        why = _await_checker(cand.proc, check.proc, t0 + timeout_s, tails)
        if not why:
            try:
                check.proc.wait(timeout=max(0.1, t0 + timeout_s - time.monotonic()))
            except subprocess.TimeoutExpired:
                why = "timeout"
    finally:
        started = [x for x in (cand, check) if x is not None]
        for x in started:              # both killed first, then both torn down: the teardowns overlap
            x.kill()
        for x in started:
            x.finish()
    seconds = time.monotonic() - t0
    cand_tail, check_tail = tails["cand"], tails["check"]
    if _setup_failed(check, check_tail) or _setup_failed(cand, cand_tail):
        return 0.0, "crash", (check_tail or cand_tail).strip()[-300:]
    if why == "timeout":
        return 0.0, "timeout", f"program passed its {seconds:.1f} s limit"
    verdict = _last_verdict(check_tail)
    if verdict is None:
        return 0.0, "runtime_error", f"the checker ended without a verdict: {cand_tail.strip()[-300:]}"
    if verdict.get("op") == "done" and verdict.get("nonce") == nonce and check.proc.returncode == 0:
        return 1.0, "ok", ""
    detail = str(verdict.get("detail", ""))[-300:]
    if verdict.get("kind") == "assert":
        return 0.0, "wrong", detail
    return 0.0, "runtime_error", f"{detail} | {cand_tail.strip()[-200:]}"


def _setup_failed(started: Started, tail: str) -> bool:
    return ProgramRun(started.proc.returncode, b"", tail, False, False, 0.0).setup_failed


def _last_verdict(check_stderr: str) -> dict | None:
    """The checker's verdict: its stderr's last line that starts with the mark (test code output comes before)."""
    lines = [line for line in check_stderr.splitlines() if line.startswith(VERDICT_MARK)]
    if not lines:
        return None
    try:
        verdict = json.loads(lines[-1][len(VERDICT_MARK):])
    except ValueError:
        return None
    return verdict if isinstance(verdict, dict) else None


def _await_checker(cand, check, deadline: float, tails: dict) -> str:
    """Collect both stderr tails until the checker closes its stderr (it has written its verdict and is
    exiting) or the deadline: "" or "timeout". The calls themselves go straight between the two sandboxes."""
    sel = selectors.DefaultSelector()
    bufs = {cand.stderr: bytearray(), check.stderr: bytearray()}
    for stream in bufs:
        sel.register(stream, selectors.EVENT_READ)
    why = ""
    try:
        while any(key.fileobj is check.stderr for key in sel.get_map().values()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                why = "timeout"
                break
            for key, _ in sel.select(remaining):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                buf = bufs[key.fileobj]
                buf += chunk
                del buf[:-8192]
    finally:
        sel.close()
        tails["cand"] = bytes(bufs[cand.stderr]).decode("utf-8", "replace")
        tails["check"] = bytes(bufs[check.stderr]).decode("utf-8", "replace")
    return why
