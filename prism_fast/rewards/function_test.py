"""Function-style code tests (HumanEval, and LiveCodeBench functional tests converted to that form) that a
candidate cannot forge.

The old way, one program of candidate + test code + `check(entry_point)` passing on exit status 0, let a
candidate pass with os._exit(0), sys.exit(0), an atexit hook, a sys.excepthook, an object whose __eq__ is always
True, or by reading the asserts from its own file. Here the candidate and the checks run in two sandboxes that
share nothing but a relay in this (the verifier worker's) process:

  candidate sandbox: main.py (the program) + serve.py (_function_server.py): answers "call this with these
      arguments" with plain data (plain_data.py). It never sees the test code or an expected value.
  check sandbox: check.py (_function_check.py) holding the test code and a fresh nonce; `candidate` there is a
      proxy whose calls go through the relay. No candidate code runs in it, and what comes back is rebuilt from
      builtins, so `==` is the builtin comparison and exits, hooks or signals of the candidate cannot reach it.

A pass needs the check sandbox's verdict line {"op": "done", "nonce": <this run's nonce>} AND its exit status 0;
exit statuses of the candidate mean nothing. Costs: two sandboxes per test (started in parallel), one relay hop
per call. Limits (docs/rewards.md): in-place mutation of arguments is not seen by the test; values that are not
plain data (generators, custom classes) fail; names the test code takes from the prompt (`poly` in HumanEval/32)
come from the candidate's program.
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
MAX_LINE = 4 << 20              # one protocol message; a longer one ends the test as the candidate's failure


def check_script(test_code: str, entry_point: str, nonce: str) -> str:
    return _CHECK_SOURCE + f"\nrun_check({test_code!r}, {entry_point!r}, {nonce!r})\n"


def run_function_test(program: str, test_code: str, entry_point: str, *, timeout_s: float,
                      sandbox: SandboxConfig) -> tuple[float, str, str]:
    """(correct 0/1, reason, detail) of one function-style test. Never raises for program faults."""
    nonce = secrets.token_hex(16)
    t0 = time.monotonic()
    cand = check = None
    verdict, why, tails = None, "", {"cand": "", "check": ""}
    try:
        cand = Started({"main.py": program, "serve.py": SERVER_SCRIPT}, "serve.py", subprocess.PIPE, timeout_s=timeout_s,
                       config=sandbox)
        # -I -S: the test code needs the stdlib only; no site import saves ~15 ms of CPU per test. A uid other
        # than the candidate's: without namespaces (uid mode) the candidate could otherwise read check.py (the
        # nonce, the expected values) or open /proc/<checker>/fd/1 and write a verdict
        check = Started({"check.py": check_script(test_code, entry_point, nonce)}, "check.py", subprocess.PIPE,
                        timeout_s=timeout_s, config=sandbox, python_flags=("-I", "-S", "-B"),
                        uid_offset=CHECK_UID_OFFSET)
        verdict, why = _relay(cand.proc, check.proc, t0 + timeout_s, tails)
        if verdict is not None:                           # the checker has spoken: wait for its exit status
            try:
                check.proc.wait(timeout=max(0.1, t0 + timeout_s - time.monotonic()))
            except Exception:  # noqa: BLE001 - TimeoutExpired: no exit status, no pass
                pass
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
    if verdict is None:
        if why == "timeout":
            return 0.0, "timeout", f"program passed its {seconds:.1f} s limit"
        return 0.0, "runtime_error", f"{why}: {cand_tail.strip()[-300:]}"
    if verdict.get("op") == "done" and verdict.get("nonce") == nonce and check.proc.returncode == 0:
        return 1.0, "ok", ""
    detail = str(verdict.get("detail", ""))[-300:]
    if verdict.get("kind") == "assert":
        return 0.0, "wrong", detail
    return 0.0, "runtime_error", f"{detail} | {cand_tail.strip()[-200:]}"


def _setup_failed(started: Started, tail: str) -> bool:
    return ProgramRun(started.proc.returncode, b"", tail, False, False, 0.0).setup_failed


def _relay(cand, check, deadline: float, tails: dict) -> tuple[dict | None, str]:
    """Pass request lines from the checker to the candidate and reply lines back until the checker's verdict.
    Returns (verdict, "") or (None, why): "timeout", or the side that stopped talking."""
    sel = selectors.DefaultSelector()
    buffers = {cand.stdout: bytearray(), check.stdout: bytearray(), cand.stderr: bytearray(),
               check.stderr: bytearray()}
    for stream in buffers:
        os.set_blocking(stream.fileno(), False)
        sel.register(stream, selectors.EVENT_READ)
    pending_out = {cand.stdin: bytearray(), check.stdin: bytearray()}
    for stream in pending_out:
        os.set_blocking(stream.fileno(), False)
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None, "timeout"
            for stream, data in pending_out.items():
                if data and not stream.closed:
                    try:
                        del data[:os.write(stream.fileno(), data)]
                    except BlockingIOError:
                        pass
                    except OSError:
                        data.clear()
            waiting = any(pending_out.values())
            events = sel.select(min(remaining, 0.01) if waiting else remaining)
            for key, _ in events:
                stream = key.fileobj
                try:
                    chunk = os.read(stream.fileno(), 1 << 16)
                except BlockingIOError:
                    continue
                if not chunk:
                    sel.unregister(stream)
                    if stream is check.stdout:
                        return None, "the checker exited without a verdict"
                    if stream is cand.stdout:
                        pending_out[check.stdin].clear()
                        check.stdin.close()            # the checker's next read sees EOF: CandidateGone
                    continue
                buf = buffers[stream]
                buf += chunk
                if stream in (cand.stderr, check.stderr):
                    del buf[:-8192]
                    continue
                if len(buf) > MAX_LINE and b"\n" not in buf:
                    return None, "a protocol message over the size limit"
                while b"\n" in buf:
                    line, _, rest = bytes(buf).partition(b"\n")
                    buf[:] = rest
                    if stream is cand.stdout:
                        if not check.stdin.closed:
                            pending_out[check.stdin] += line + b"\n"
                        continue
                    try:
                        message = json.loads(line)
                    except ValueError:
                        return None, "the checker sent a malformed line"
                    if message.get("op") in ("done", "fail"):
                        return message, ""
                    pending_out[cand.stdin] += line + b"\n"
    finally:
        sel.close()
        tails["cand"] = bytes(buffers[cand.stderr]).decode("utf-8", "replace")
        tails["check"] = bytes(buffers[check.stderr]).decode("utf-8", "replace")
