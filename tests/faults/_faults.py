"""Helpers of the fault-injection suite: launch real jobs (tests/train/_runs), time their recovery, find worker
processes, and record one row per fault for docs/faults.md (when PRISM_FAULTS_TABLE names a JSONL file)."""
from __future__ import annotations

import json
import os
import queue
import threading
import time
from pathlib import Path

import torch

from tests.train import _runs
from tests.train._runs import final_weights, kill9, losses, records, run, start, wait_for  # noqa: F401

STEPS = 8


def base_args(corpus: Path, tokenizer_dir: Path) -> list[str]:
    return [f"--data.cache_dir={corpus}", f"--data.tokenizer={tokenizer_dir}", f"--train.steps={STEPS}",
            "--checkpoint.interval=2", "--checkpoint.keep_last=0"]


def n_records(run_dir: Path) -> int:
    m = Path(run_dir) / "metrics.jsonl"
    return len(m.read_text().splitlines()) if m.exists() else 0


def logged_steps(run_dir: Path) -> int:
    """Highest training step logged so far (0 before the first)."""
    m = Path(run_dir) / "metrics.jsonl"
    if not m.exists():
        return 0
    steps = [json.loads(x).get("step", 0) for x in m.read_text().splitlines() if '"loss"' in x]
    return max(steps, default=0)


def timed_resume(nproc, args: list[str], run_dir: Path, *, timeout: float = 240.0, **env) -> tuple[str, float]:
    """Relaunch a job and time its recovery: seconds from the launch to the first training step logged after
    the checkpoint it resumed from (startup + verification + load + one step). Returns (output, seconds)."""
    before = n_records(run_dir)
    t0 = time.perf_counter()
    proc = start(nproc, args, **env)
    first = None
    while proc.poll() is None and time.perf_counter() - t0 < timeout:
        if first is None and n_records(run_dir) > before:
            first = time.perf_counter() - t0
        time.sleep(0.02)
    out, _ = proc.communicate(timeout=max(1.0, timeout - (time.perf_counter() - t0)))
    assert proc.returncode == 0, f"resumed job failed ({proc.returncode}):\n{out[-4000:]}"
    return out, first if first is not None else time.perf_counter() - t0


def read_until(proc, prefix: str, *, timeout: float) -> tuple[str | None, float]:
    """Read the job's merged output line by line until a line starting with `prefix` (or EOF / timeout).
    Returns (the line or None, seconds waited). Lines read here are no longer in proc.communicate()'s output."""
    t0 = time.perf_counter()
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in iter(proc.stdout.readline, "")] + [lines.put(None)],
                     daemon=True).start()
    while time.perf_counter() - t0 < timeout:
        try:
            ln = lines.get(timeout=max(0.01, timeout - (time.perf_counter() - t0)))
        except queue.Empty:
            break
        if ln is None:
            break
        if ln.startswith(prefix):
            return ln.rstrip("\n"), time.perf_counter() - t0
    return None, time.perf_counter() - t0


def worker_pids(agent_pid: int) -> dict[int, int]:
    """rank -> pid of the workers a torchrun agent started (its child processes, read from /proc)."""
    out = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            if int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) != agent_pid:
                continue
            env = dict(kv.split("=", 1) for kv in (p / "environ").read_bytes().decode().split("\0") if "=" in kv)
        except (OSError, IndexError, ValueError):
            continue
        if "RANK" in env:
            out[int(env["RANK"])] = int(p.name)
    return out


def error_lines(out: str) -> list[str]:
    return [ln for ln in out.splitlines() if ln.startswith("error: ")]


def assert_same_weights(a: Path, b: Path, *, atol: float = 0.0):
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        if atol == 0.0:
            assert torch.equal(wa[k], wb[k]), f"{k} differs"
        else:
            torch.testing.assert_close(wa[k], wb[k], atol=atol, rtol=0, msg=k)


def assert_losses_match(ref: Path, run_dir: Path, steps, *, atol: float = 0.0):
    la, lb = losses(ref), losses(run_dir)
    for s in steps:
        assert abs(la[s] - lb[s]) <= atol, (s, la[s], lb[s])


def record(fault: str, survived: bool, lost: str, recovery_s: float | None, note: str = ""):
    """One row of docs/faults.md's table, appended to $PRISM_FAULTS_TABLE (JSONL) when it is set."""
    path = os.environ.get("PRISM_FAULTS_TABLE")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"fault": fault, "survived": survived, "lost": lost,
                                "recovery_s": None if recovery_s is None else round(recovery_s, 1),
                                "note": note}) + "\n")


__all__ = ["STEPS", "kill9", "losses", "records", "run", "start", "wait_for", "_runs"]
