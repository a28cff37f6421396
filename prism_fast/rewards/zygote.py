"""The pool's worker factory: a process that imports math-verify once and forks verifier workers on request.

Started by WorkerPool as `python -m prism_fast.rewards.zygote`. Protocol on its stdin: a first line with the
hex token and a second with the parent's Unix socket path; then one "spawn" line per worker wanted, each
answered with the new worker's pid on stdout. A worker connects back to that socket, sends (pid, token) and
serves tasks (worker.worker_main). EOF on stdin (the pool closed, or the caller died) ends the zygote: it
SIGKILLs its workers (their sandboxes follow through PR_SET_PDEATHSIG) and removes the pool's directory, which a
caller killed with SIGKILL could not do itself.

Why not multiprocessing's forkserver: its children re-import the caller's __main__ module (a training script
importing torch, in every replacement worker), and it is one process-wide server shared with unrelated code.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import time

from prism_fast.rewards import math_verifier  # noqa: F401 - imported (and warmed) once here, inherited by forks
from prism_fast.rewards.sandbox_cgroup import sweep_stale
from prism_fast.rewards.worker import worker_main


def _serve_worker(address: str, token: str) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)       # the worker waits on its sandbox subprocesses
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)                                 # stdout of the zygote is the pid channel
    from multiprocessing.connection import Connection

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(address)
    conn = Connection(sock.detach())
    conn.send((os.getpid(), token))
    worker_main(conn)


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)        # Ctrl-C is the caller's; it closes the pool
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)       # workers are reaped by the kernel
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    token = stdin.readline().decode().strip()
    address = stdin.readline().decode().strip()
    workers = []
    for line in stdin:
        if line.strip() != b"spawn":
            continue
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _serve_worker(address, token)
            except BaseException:  # noqa: BLE001 - a worker never returns into the zygote's loop
                code = 1
            os._exit(code)
        workers.append(pid)
        stdout.write(b"%d\n" % pid)
        stdout.flush()
    for pid in workers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if address:
        shutil.rmtree(os.path.dirname(address), ignore_errors=True)
    time.sleep(0.05)                                    # the killed workers' sandboxes leave their cgroups
    sweep_stale()


if __name__ == "__main__":
    main()
