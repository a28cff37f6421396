"""No process survives: a scoring process SIGKILLed in the middle of a hostile batch (fork bomb, endless loop,
detached sleeper, a worker stuck in sympy) leaves no worker, zygote or sandboxed process, and no directory.
And the other way round: SIGTERM to the caller's whole process group (what torchrun sends) leaves the verifiers
alive, so a trainer that checkpoints at the next step boundary still scores the step in flight."""
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from tests.rewards.conftest import processes_of_uids, wait_no_processes

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = r'''
import sys, time
from prism_fast.rewards import Rewarder
from prism_fast.rewards.code_sandbox import sandbox_uid
block = lambda p: "```python\n" + p + "\n```"
code = lambda p: {"domain": "code", "response": block(p), "reference": {"tests": [{"input": "", "output": "x"}]}}
r = Rewarder(num_workers=3, timeout_s=20, require_think=False)
print(" ".join(str(sandbox_uid(p)) for p in r.worker_pids()), flush=True)
print(r._pool._dir, flush=True)
r.submit([code("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"),
          code("import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(600)\nwhile True:\n    pass"),
          {"domain": "math", "response": "\\boxed{" + "(" * 40 + "1" + ")" * 40 + "}", "reference": "1"}])
time.sleep(600)
'''


def _tagged(tag: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if tag.encode() in f.read():
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


@pytest.mark.skipif(os.geteuid() != 0, reason="sandboxed programs are found by their own uids, which needs root")
def test_sigkilled_caller_leaves_nothing_running():
    tag = "PRISM_LEFTOVER_TAG=" + uuid.uuid4().hex
    env = dict(os.environ, PRISM_LEFTOVER_TAG=tag.split("=", 1)[1])
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    uids = {int(u) for u in proc.stdout.readline().split()}
    pool_dir = proc.stdout.readline().strip()
    assert len(uids) == 3
    running = lambda: {uid for _, uid in processes_of_uids(uids)}  # noqa: E731
    deadline = time.monotonic() + 60                 # generous: the pool starts and probes the sandbox first
    while len(running()) < 2 and time.monotonic() < deadline:      # both hostile programs are running
        time.sleep(0.05)
    assert len(running()) == 2
    assert len(_tagged(tag)) >= 5                    # caller, zygote, 3 workers
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # the zygote sees EOF and exits, workers die with it and sandboxes with their worker (PR_SET_PDEATHSIG)
    assert wait_no_processes(uids, timeout_s=10) == []
    end = time.monotonic() + 10
    while _tagged(tag) and time.monotonic() < end:
        time.sleep(0.1)
    assert _tagged(tag) == []
    assert not os.path.exists(pool_dir)              # the zygote removed the pool's directory (sandbox dirs too)


GROUP_SIGTERM = r'''
import os, signal, sys
from prism_fast.rewards import Rewarder
got = []
signal.signal(signal.SIGTERM, lambda *_: got.append(1))          # the trainer's handler: finish the step, then exit
r = Rewarder(num_workers=2, timeout_s=20, require_think=False)
assert len(r.worker_pids()) == 2                                  # the pool is up (it starts lazily)
os.killpg(os.getpgid(0), signal.SIGTERM)                          # as torchrun does: the whole process group
items = [{"domain": "math", "response": "\\boxed{" + a + "}", "reference": "1/2"} for a in ("0.5", "2", "1/2")]
res = r.submit(items).result()
print(got, [x.reward for x in res], [x.reason for x in res], flush=True)
r.close()
'''


def test_sigterm_to_the_callers_process_group_spares_the_verifiers():
    p = subprocess.run([sys.executable, "-c", GROUP_SIGTERM], cwd=REPO, capture_output=True, text=True, timeout=120,
                       start_new_session=True)                    # its own group, so pytest is not signalled
    assert p.returncode == 0, p.stderr[-3000:]
    got, rewards, reasons = p.stdout.strip().split("] [", 2)
    assert got == "[1" and rewards == "1.0, 0.0, 1.0", (p.stdout, reasons)
