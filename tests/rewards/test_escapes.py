"""Escapes from the code sandbox (issue 25), each a hostile program scored through a real Rewarder and sandbox.

A stdin/stdout item whose expected output is "ESCAPED" scores 1.0 exactly when the program got out, so every
case asserts reward 0 plus, where there is one, the host-side evidence (a listener that saw no connection, no
leftover directory, no zombie). One worker, so consecutive items share a worker (and its sandbox uid): what one
run leaves behind would be there for the next."""
import os
import socket
import threading
import time
import uuid

import pytest

from prism_fast.rewards import Rewarder
from tests.rewards.conftest import sandbox_uids, wait_no_processes

_SYSCALL = "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"


def _item(program: str, stdin: str = "", expected: str = "ESCAPED") -> dict:
    return {"domain": "code", "response": f"```python\n{program}\n```\n",
            "reference": {"tests": [{"input": stdin, "output": expected}]}}


@pytest.fixture(scope="module")
def one_worker():
    with Rewarder(num_workers=1, timeout_s=3.0, require_think=False) as r:
        if r._sandbox_config().mode != "namespaces":
            pytest.skip("the escape cases need root and namespaces")
        yield r
        workers = list(r._pool.started_pids)
    assert wait_no_processes(sandbox_uids(r)) == []
    # every run's cgroup is gone (removed after each run, or swept when the pool closed)
    left = [d for root in ("/sys/fs/cgroup/memory", "/sys/fs/cgroup/pids", "/sys/fs/cgroup")
            for d, _, _ in os.walk(root) if any(f"prism_sandbox_{pid}_" in d for pid in workers)]
    assert left == []


def test_keyring_does_not_carry_data_between_runs(one_worker):
    secret = uuid.uuid4().hex
    # add_key(2) into the session (-3) and user (-4) keyrings, then look it up again from the next run
    writer = _SYSCALL + f"""
for ring in (-3, -4):
    libc.syscall(248, b'user', b'prism-leak', b'{secret}', 32, ring)
print('written')"""
    reader = _SYSCALL + f"""
buf = ctypes.create_string_buffer(64)
found = b''
key = libc.syscall(249, b'user', b'prism-leak', None, 0)           # request_key searches every keyring
if key > 0 and libc.syscall(250, 11, key, buf, 64) > 0:            # KEYCTL_READ
    found = buf.value
print('ESCAPED' if found == b'{secret}' else 'no key')"""
    one_worker.score([_item(writer, expected="written")])
    [r] = one_worker.score([_item(reader)])
    assert r.reward == 0.0, r


def test_no_host_unix_socket_reachable(one_worker):
    path = f"/run/prism_escape_{uuid.uuid4().hex[:12]}.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    os.chmod(path, 0o777)
    server.listen(4)
    server.settimeout(0.2)
    seen = []

    def accept():
        end = time.monotonic() + 15
        while time.monotonic() < end and not seen:
            try:
                seen.append(server.accept()[0])
            except OSError:
                pass
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    program = f"""
import socket
s = socket.socket(socket.AF_UNIX)
s.connect({path!r})
s.sendall(b'hi')
print('ESCAPED')"""
    try:
        [r] = one_worker.score([_item(program)])
    finally:
        seen.append(None)
        thread.join()
        server.close()
        os.remove(path)
    assert r.reward == 0.0 and [c for c in seen if c is not None] == [], r


def test_no_nested_user_namespace_or_mount(one_worker):
    # unshare(CLONE_NEWUSER | CLONE_NEWNS), then a private tmpfs past every memory limit (issue 25: 768 MiB)
    program = _SYSCALL + """
import os
uid, gid = os.getuid(), os.getgid()
if libc.unshare(0x10000000 | 0x00020000) != 0:
    raise SystemExit('unshare refused: errno %d' % ctypes.get_errno())
open('/proc/self/setgroups', 'w').write('deny')
open('/proc/self/uid_map', 'w').write('0 %d 1' % uid)
open('/proc/self/gid_map', 'w').write('0 %d 1' % gid)
os.makedirs('/tmp/work/mnt', exist_ok=True)
if libc.mount(b'none', b'/tmp/work/mnt', b'tmpfs', 0, b'size=1g') != 0:
    raise SystemExit('mount refused')
chunk = b'x' * (16 << 20)
for i in range(48):
    with open('/tmp/work/mnt/f%d' % i, 'wb') as f:
        f.write(chunk)
print('ESCAPED')"""
    [r] = one_worker.score([_item(program)])
    assert r.reward == 0.0 and r.reason == "runtime_error" and "unshare refused" in r.detail, r


def test_memory_limit_covers_the_whole_run(one_worker):
    """4 processes x 300 MiB, each under the 512 MiB per-process RLIMIT_AS, all alive at once (issue 25: 1.8 GiB).
    A 10 s limit: filling 1.2 GiB takes ~3 s on this shared machine, and the verdict must not be a mere timeout."""
    program = """
import os, select, time
r, w = os.pipe()
kids = []
for _ in range(4):
    pid = os.fork()
    if pid == 0:
        block = b'x' * (300 << 20)
        os.write(w, b'1')
        time.sleep(60)                   # hold the memory until the run ends
    kids.append(pid)
got = 0
while got < 4:
    if select.select([r], [], [], 0.05)[0]:
        got += len(os.read(r, 4))
    elif any(os.waitpid(k, os.WNOHANG)[0] for k in kids):
        break                            # a child was killed (the run's memory limit)
print('ESCAPED' if got == 4 else 'contained')"""
    with Rewarder(num_workers=1, timeout_s=10.0, require_think=False) as slow:
        [r] = slow.score([_item(program)])
    assert r.reward == 0.0 and r.reason == "wrong", r


@pytest.mark.parametrize("what", ["bytes", "inodes"])
def test_work_directory_is_bounded(one_worker, what):
    program = {"bytes": """
chunk = b'x' * (8 << 20)
for i in range(48):
    with open('big%d' % i, 'wb') as f:
        f.write(chunk)
print('ESCAPED')""", "inodes": """
for i in range(30000):
    open('f%d' % i, 'w').close()
print('ESCAPED')"""}[what]
    [r] = one_worker.score([_item(program)])
    assert r.reward == 0.0 and r.reason == "runtime_error", r
    # a later honest item still has room
    [ok] = one_worker.score([_item("open('x', 'w').write('1' * 1000)\nprint('fine')", expected="fine")])
    assert ok.reason == "ok", ok


def test_deep_tree_leaves_nothing_behind(one_worker):
    program = """
import os
for _ in range(3000):
    os.mkdir('d')
    os.chdir('d')
print('deep')"""
    [r] = one_worker.score([_item(program, expected="deep")])
    assert r.reason == "ok", r
    pool_dir = one_worker._pool._dir
    assert [e for e in os.listdir(pool_dir) if e.startswith("prism_sandbox_")] == []


def _zombies() -> set[int]:
    """pids of zombies that were pid 1 of a nested pid namespace (a sandbox's init)."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/status") as f:
                    status = f.read()
            except OSError:
                continue
            nspid = next((line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:")), [])
            if "\nState:\tZ" in status and len(nspid) > 1 and nspid[-1] == "1":
                found.add(int(entry))
    return found


def test_killed_sandbox_leaves_no_zombie_and_is_the_models_timeout(one_worker):
    before = _zombies()
    job = one_worker.submit([_item("while True:\n    pass"), _item("import time\ntime.sleep(60)")])
    res = job.result()
    assert [r.reason for r in res] == ["timeout", "timeout"]
    # the program's own timeout is the model's fault: the batch is not "all failed" (a verifier failure)
    assert not job.all_failed
    time.sleep(0.3)
    assert _zombies() - before == set()


def test_proc_1_cmdline_shows_no_host_path(one_worker):
    program = """
import os
seen = open('/proc/1/cmdline', 'rb').read().decode(errors='replace') + open('/proc/self/mountinfo').read()
print('ESCAPED' if any(s in seen for s in ('/work', '/root', 'prism', 'rewards')) else 'clean')"""
    [r] = one_worker.score([_item(program, expected="clean")])
    assert r.reason == "ok", r


def test_no_host_runtime_or_temp_directories(one_worker):
    program = """
import os
visible = [d for d in ('/run', '/var', '/home', '/root', '/work', '/srv', '/mnt', '/opt') if os.path.exists(d)]
print(sorted(os.listdir('/tmp')), visible)"""
    [r] = one_worker.score([_item(program, expected="['.shm', 'work'] []")])
    assert r.reason == "ok", r


def test_lone_surrogates_are_the_models_problem(one_worker):
    bad_code = "print('\ud800')"
    res = one_worker.score([_item(bad_code, expected="x"), _item("print(len(input()))", "\udcff\ud800", "2"),
                            {"domain": "code", "response": "```python\ndef f():\n    return '\ud800'\n```",
                             "reference": {"test_code": "def check(c):\n    assert c() == 'x'", "entry_point": "f"}}])
    assert [r.reason for r in res] != ["crash"] * 3
    assert all(r.reason in ("runtime_error", "wrong") for r in res), res


def test_seccomp_denies_namespace_mount_key_and_unix_socket_calls(one_worker):
    if os.uname().machine != "x86_64":
        pytest.skip("the program below uses x86_64 syscall numbers")
    program = _SYSCALL + """
import errno, multiprocessing, os, socket, subprocess

def result(rc):
    return 'ok' if rc >= 0 else errno.errorcode[ctypes.get_errno()]

out = {'unshare': result(libc.unshare(0x10000000)), 'setns': result(libc.setns(0, 0)),
       'keyctl': result(libc.syscall(250, 0, -3, 0))}
pid = libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0)          # clone(CLONE_NEWUSER | SIGCHLD)
if pid == 0:
    os._exit(0)
out['clone_newuser'] = result(pid)
try:
    socket.socket(socket.AF_UNIX)
    out['af_unix'] = 'ok'
except OSError as e:
    out['af_unix'] = errno.errorcode[e.errno]
# what ordinary programs use keeps working
a, b = socket.socketpair()
out['socketpair'] = 'ok'
out['subprocess'] = subprocess.run(['true']).returncode
with multiprocessing.Pool(2) as p:
    out['pool'] = p.map(abs, [-1, -2])
print(sorted(out.items()))"""
    expected = sorted({"unshare": "EPERM", "setns": "EPERM", "keyctl": "EPERM", "clone_newuser": "EPERM",
                       "af_unix": "EACCES", "socketpair": "ok", "subprocess": 0, "pool": [1, 2]}.items())
    [r] = one_worker.score([_item(program, expected=str(expected))])
    assert r.reason == "ok", r


def test_without_a_cgroup_the_process_count_bounds_memory(monkeypatch):
    from prism_fast.rewards import code_sandbox

    cfg = code_sandbox.probe_mode(code_sandbox.SandboxConfig())
    if cfg.mode != "namespaces":
        pytest.skip("needs root and namespaces")
    monkeypatch.setattr(code_sandbox.RunCgroup, "create", classmethod(lambda cls, *a: None))
    run = code_sandbox.run_program("import resource\nprint(resource.getrlimit(resource.RLIMIT_NPROC)[0])", "",
                                   timeout_s=5, config=cfg)
    n = int(run.stdout)
    with open("/proc/meminfo") as f:
        total_mb = int(f.readline().split()[1]) >> 10
    assert 4 <= n <= cfg.max_processes
    assert n == 4 or n * cfg.memory_mb <= total_mb // (2 * os.cpu_count())
