"""Shared pieces of the rewards tests: one worker pool per module, a secret in the environment that workers
inherit (the sandbox must not hand it to candidates), and /proc scans for leftover processes."""
import os
import time
import uuid

import pytest

from prism_fast.rewards import Rewarder
from prism_fast.rewards.code_sandbox import sandbox_uid

# Set before any pool (and so its zygote) starts: verifier workers carry it, candidates must never see it.
SECRET = "prism-secret-" + uuid.uuid4().hex
os.environ["PRISM_REWARDS_TEST_SECRET"] = SECRET


def processes_of_uids(uids) -> list[tuple[int, int]]:
    """(pid, uid) of live processes whose real uid is in `uids` (zombies excluded)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                status = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
        except OSError:
            continue
        uid = int(status.get("Uid", "-1").split()[0])
        if uid in uids and not status.get("State", "").startswith("Z"):
            found.append((int(entry), uid))
    return found


def sandbox_uids(rewarder: Rewarder) -> set[int]:
    pool = rewarder._pool                       # None when no batch needed a verifier
    return {sandbox_uid(pid) for pid in (pool.started_pids if pool else [])}


def wait_no_processes(uids, timeout_s: float = 3.0) -> list[tuple[int, int]]:
    """Leftover processes of `uids` after up to timeout_s (namespace teardown is asynchronous by a few ms)."""
    end = time.monotonic() + timeout_s
    while True:
        left = processes_of_uids(uids)
        if not left or time.monotonic() > end:
            return left
        time.sleep(0.05)


@pytest.fixture(scope="module")
def rewarder():
    """2 workers, 2 s per task, no think gate (the hostile programs are the answer part as is)."""
    with Rewarder(num_workers=2, timeout_s=2.0, require_think=False) as r:
        yield r
    assert wait_no_processes(sandbox_uids(r)) == []
