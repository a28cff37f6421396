"""A fixed-size pool of verifier processes whose per-task wall-clock limit is enforced by the parent.

Why not multiprocessing.Pool / concurrent.futures: neither can kill one stuck task. Here a dispatcher thread in
the caller's process owns every worker, sends one task at a time to an idle one, and waits (one
`multiprocessing.connection.wait` over the worker connections and a wake-up pipe) with a timeout equal to the
nearest deadline. A worker still busy at `budget_s + grace_s(budget_s)` is SIGKILLed (its sandboxed children die
with it: they hold PR_SET_PDEATHSIG), its task ends as "timeout", and a fresh worker takes its slot; a worker
whose connection hits EOF died on its own and its task ends as "crash". Nothing here uses signals, so the caller
may be any thread.

Workers are forked by a zygote process (zygote.py) that imported and warmed math-verify once, so a replacement
costs a fork (milliseconds) rather than a new interpreter (~0.5 s of imports), which keeps a batch full of
hanging answers on time. Workers connect back over a Unix socket in a private (0700) directory and prove
themselves with a random token.
"""
from __future__ import annotations

import collections
import itertools
import logging
import multiprocessing.connection
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_MAX_STARTUP_DEATHS = 3     # a worker that dies before running any task, this many times in a row: pool broken
_CONNECT_TIMEOUT_S = 120.0  # a new worker must connect back within this (generous: the zygote imports first)


@dataclass(slots=True)
class Task:
    kind: str
    payload: dict
    budget_s: float
    done: Callable[[dict], None]
    """Called once, on the dispatcher thread, with the outcome dict (see worker.run_task)."""


def _outcome(reason: str, detail: str, seconds: float) -> dict:
    return {"correct": 0.0, "reason": reason, "detail": detail, "seconds": seconds, "repetition": None}


@dataclass(slots=True)
class _Slot:
    pid: int
    conn: multiprocessing.connection.Connection
    task: Task | None = None
    task_id: int = -1
    started: float = 0.0
    deadline: float = float("inf")
    served: int = 0


class WorkerPool:
    """`num_workers` verifier processes; `submit(tasks)` returns at once, each task's `done` fires when it ends."""

    def __init__(self, num_workers: int, *, grace_s: Callable[[float], float]):
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self._grace_s = grace_s
        self._lock = threading.Lock()
        self._queue: collections.deque[Task] = collections.deque()
        self._ids = itertools.count()
        self._closed = False
        self._broken: str | None = None
        self._startup_deaths = 0
        self.restarts = 0
        self.started_pids: list[int] = []
        self._start_zygote()
        self._wake_r, self._wake_w = os.pipe()
        self._slots = [self._new_slot() for _ in range(num_workers)]
        self._thread = threading.Thread(target=self._run, name="prism-reward-dispatch", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------------------------------------- public
    @property
    def closed(self) -> bool:
        return self._closed

    def submit(self, tasks: list[Task]) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the reward pool is closed")
            broken = self._broken
            if broken is None:
                self._queue.extend(tasks)
        if broken is not None:
            for t in tasks:
                t.done(_outcome("crash", broken, 0.0))
        self._wake()

    def worker_pids(self) -> list[int]:
        return [s.pid for s in self._slots]

    def close(self) -> None:
        """Stop now: queued and running tasks end as "crash" ("pool closed"); workers and the zygote exit."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._wake()
        self._thread.join()
        os.close(self._wake_r)
        os.close(self._wake_w)

    # ---------------------------------------------------------------------------------------------- workers
    def _start_zygote(self) -> None:
        # Traversable (the sandbox work directories below it, 0700 each, belong to the sandbox uids) but not
        # listable; the socket itself is 0600, so only our uid can connect.
        self._dir = tempfile.mkdtemp(prefix="prism_rewards_")
        os.chmod(self._dir, 0o711)
        address = os.path.join(self._dir, "pool.sock")
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(address)
        os.chmod(address, 0o600)
        self._listener.listen(64)
        self._listener.settimeout(0.5)              # accept() polls so a worker dying at birth is noticed
        self._token = secrets.token_hex(16)
        package_root = str(Path(__file__).resolve().parents[2])
        # TMPDIR: sandbox work directories go under the pool's private directory, removed with the pool even
        # when a worker was killed in the middle of a run.
        env = dict(os.environ, TMPDIR=self._dir, PYTHONPATH=os.pathsep.join(
            filter(None, [package_root, os.environ.get("PYTHONPATH")])))
        # Own session: a signal to the caller's process group (torchrun and job schedulers send SIGTERM to the
        # whole group) must not kill the verifiers while the caller finishes its step and checkpoints; the pool
        # still ends with its caller (EOF on the zygote's stdin, whatever way the caller exits).
        self._zygote = subprocess.Popen([sys.executable, "-m", "prism_fast.rewards.zygote"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, env=env, close_fds=True, start_new_session=True)
        self._zygote.stdin.write(f"{self._token}\n{address}\n".encode())
        self._zygote.stdin.flush()

    def _new_slot(self) -> _Slot:
        """Ask the zygote for a worker and accept its connection (checked by token and pid)."""
        try:
            self._zygote.stdin.write(b"spawn\n")
            self._zygote.stdin.flush()
            line = self._zygote.stdout.readline()
        except (BrokenPipeError, OSError):
            line = b""
        if not line.strip():
            raise RuntimeError("the reward worker factory (python -m prism_fast.rewards.zygote) exited with code "
                               f"{self._zygote.poll()}; its stderr above says why")
        pid = int(line)
        conn = multiprocessing.connection.Connection(self._accept(pid).detach())
        if not conn.poll(_CONNECT_TIMEOUT_S) or conn.recv() != (pid, self._token):
            conn.close()
            raise RuntimeError(f"reward worker {pid} did not identify itself")
        self.started_pids.append(pid)
        return _Slot(pid, conn)

    def _accept(self, pid: int) -> socket.socket:
        """The connection of new worker `pid`; fails fast if it dies first (the zygote reaps it at once)."""
        end = time.monotonic() + _CONNECT_TIMEOUT_S
        while time.monotonic() < end:
            try:
                sock, _ = self._listener.accept()
                sock.settimeout(None)
                return sock
            except TimeoutError:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    raise RuntimeError(f"reward worker {pid} exited before connecting; run `python -m "
                                       f"prism_fast.rewards.zygote </dev/null` to see import errors") from None
        raise RuntimeError(f"reward worker {pid} did not connect within {_CONNECT_TIMEOUT_S:g} s")

    def _kill(self, slot: _Slot) -> None:
        try:
            os.kill(slot.pid, signal.SIGKILL)    # the zygote reaps it (SIGCHLD ignored there)
        except ProcessLookupError:
            pass
        slot.conn.close()

    def _replace(self, i: int, *, killed: bool) -> None:
        old = self._slots[i]
        if killed:
            self._kill(old)
        else:
            old.conn.close()
            if old.served == 0 and old.task is None:               # died before it ever ran a task
                self._startup_deaths += 1
        if self._startup_deaths >= _MAX_STARTUP_DEATHS:
            return self._mark_broken("reward workers die at startup; run `python -m prism_fast.rewards.zygote "
                                     "</dev/null` to see why")
        self.restarts += 1
        try:
            self._slots[i] = self._new_slot()
        except (RuntimeError, OSError) as e:
            self._mark_broken(str(e))

    def _mark_broken(self, why: str) -> None:
        log.error("%s", why)
        with self._lock:
            self._broken = why
            queued, self._queue = list(self._queue), collections.deque()
        for t in queued:
            t.done(_outcome("crash", why, 0.0))

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    # ------------------------------------------------------------------------------------------- dispatcher
    def _assign(self) -> None:
        for slot in self._slots:
            if slot.task is not None or slot.conn.closed:
                continue
            with self._lock:
                if not self._queue:
                    return
                task = self._queue.popleft()
            slot.task, slot.task_id = task, next(self._ids)
            slot.started = time.monotonic()
            slot.deadline = slot.started + task.budget_s + self._grace_s(task.budget_s)
            try:
                slot.conn.send((slot.task_id, task.kind, task.payload, task.budget_s))
            except (BrokenPipeError, OSError):
                pass                                 # dead worker: its connection reads EOF, the task "crash"es

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as e:  # noqa: BLE001 - a dispatcher bug must fail the jobs, never hang them
            log.exception("reward dispatcher failed")
            self._mark_broken(f"reward dispatcher failed: {e!r}")
            for slot in self._slots:
                if slot.task is not None:
                    task, slot.task = slot.task, None
                    task.done(_outcome("crash", self._broken, 0.0))
            self._shutdown()

    def _loop(self) -> None:
        while True:
            with self._lock:
                closed = self._closed
            if closed:
                return self._shutdown()
            self._assign()
            live = [s for s in self._slots if not s.conn.closed]
            deadline = min((s.deadline for s in live if s.task is not None), default=None)
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = set(multiprocessing.connection.wait([self._wake_r] + [s.conn for s in live], timeout))
            if self._wake_r in ready:
                os.read(self._wake_r, 65536)
            now = time.monotonic()
            for i, slot in enumerate(self._slots):
                if slot.conn.closed:
                    continue
                task, elapsed = slot.task, now - slot.started
                if slot.conn in ready:
                    try:
                        task_id, outcome = slot.conn.recv()
                    except (EOFError, OSError):       # the worker died (crashed, OOM-killed, killed itself)
                        outcome = _outcome("crash", "verifier worker died", elapsed)
                        self._replace(i, killed=False)
                    else:
                        assert task is not None and task_id == slot.task_id, (task_id, slot.task_id)
                        slot.task, slot.deadline = None, float("inf")
                        slot.served += 1
                        self._startup_deaths = 0
                elif task is not None and now >= slot.deadline:
                    outcome = _outcome("timeout", f"verifier worker killed after {elapsed:.1f} s (limit "
                                       f"{task.budget_s:g} s)", elapsed)
                    self._replace(i, killed=True)
                else:
                    continue
                if task is not None:                 # after any replacement, so counters see the restart
                    task.done(outcome)

    def _shutdown(self) -> None:
        with self._lock:
            queued, self._queue = list(self._queue), collections.deque()
        for slot in self._slots:
            if slot.task is not None:
                task, slot.task = slot.task, None
                task.done(_outcome("crash", "reward pool closed", time.monotonic() - slot.started))
        for t in queued:
            t.done(_outcome("crash", "reward pool closed", 0.0))
        for slot in self._slots:
            if not slot.conn.closed:
                try:
                    slot.conn.send(None)
                except (BrokenPipeError, OSError):
                    pass
                slot.conn.close()
        # EOF on its stdin ends the zygote; workers still busy die with it (PR_SET_PDEATHSIG).
        try:
            self._zygote.stdin.close()
        except OSError:
            pass
        try:
            self._zygote.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._zygote.kill()
            self._zygote.wait()
        self._zygote.stdout.close()
        self._listener.close()
        shutil.rmtree(self._dir, ignore_errors=True)
