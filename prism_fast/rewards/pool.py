"""A fixed-size pool of verifier processes whose per-task wall-clock limit is enforced by the parent.

Why not multiprocessing.Pool / concurrent.futures: neither can kill one stuck task. Here a dispatcher thread in
the caller's process owns every worker, sends one task at a time to an idle one, and waits (one
`multiprocessing.connection.wait` over the pipes, the process sentinels and a wake-up pipe) with a timeout equal
to the nearest deadline. A worker still busy at `budget_s + grace` is SIGKILLed (its sandboxed children die with
it: they hold PR_SET_PDEATHSIG), its task ends as "timeout", and a fresh worker takes its slot; a worker that dies
on its own ends its task as "crash". Nothing here uses signals, so the caller may be any thread.

Workers come from the "forkserver" start method with prism_fast.rewards.worker preloaded: the forkserver imports
math-verify and sympy once (~0.4 s), and each replacement is a cheap fork of it instead of a fresh interpreter,
which keeps a batch full of hanging answers on time.
"""
from __future__ import annotations

import collections
import itertools
import logging
import multiprocessing as mp
import multiprocessing.connection
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prism_fast.rewards.worker import worker_main

log = logging.getLogger(__name__)

_WORKER_MODULE = "prism_fast.rewards.worker"
# Preloaded by the forkserver; the caller's process itself never imports math-verify.
_PRELOAD = [_WORKER_MODULE, "prism_fast.rewards.math_verifier"]
_MAX_STARTUP_DEATHS = 3     # a worker that dies before finishing any task, this many times in a row: pool broken


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
    proc: mp.process.BaseProcess
    conn: mp.connection.Connection
    task: Task | None = None
    task_id: int = -1
    started: float = 0.0
    deadline: float = float("inf")
    served: int = 0
    pids: list = field(default_factory=list)


class WorkerPool:
    """`num_workers` verifier processes; `submit(tasks)` returns at once, each task's `done` fires when it ends."""

    def __init__(self, num_workers: int, *, grace_s: Callable[[float], float]):
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self._ctx = mp.get_context("forkserver")
        # Takes effect when the forkserver starts (the first pool of this process); a forkserver started earlier
        # by other code still works, replacements then import math-verify themselves.
        self._ctx.set_forkserver_preload(_PRELOAD)
        self._grace_s = grace_s
        self._lock = threading.Lock()
        self._queue: collections.deque[Task] = collections.deque()
        self._ids = itertools.count()
        self._closed = False
        self._broken: str | None = None
        self._startup_deaths = 0
        self.restarts = 0
        self.started_pids: list[int] = []
        self._wake_r, self._wake_w = os.pipe()
        self._slots = [self._new_slot() for _ in range(num_workers)]
        self._thread = threading.Thread(target=self._run, name="prism-reward-dispatch", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------------------------------------- public
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
        with self._lock:
            return [s.proc.pid for s in self._slots]

    def close(self) -> None:
        """Stop now: queued and running tasks end as "crash" ("pool closed"), workers exit or are killed."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._wake()
        self._thread.join()
        os.close(self._wake_r)
        os.close(self._wake_w)

    # ---------------------------------------------------------------------------------------------- workers
    def _new_slot(self) -> _Slot:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=worker_main, args=(child_conn,), name="prism-reward-worker", daemon=True)
        proc.start()
        child_conn.close()
        self.started_pids.append(proc.pid)
        return _Slot(proc, parent_conn)

    def _retire(self, slot: _Slot, *, kill: bool) -> None:
        if kill and slot.proc.is_alive():
            slot.proc.kill()
        slot.proc.join(timeout=5)
        slot.conn.close()

    def _replace(self, i: int, *, kill: bool) -> None:
        old = self._slots[i]
        self._retire(old, kill=kill)
        if old.served == 0 and not kill:
            self._startup_deaths += 1
            if self._startup_deaths >= _MAX_STARTUP_DEATHS:
                self._mark_broken(f"reward workers die at startup (exit code {old.proc.exitcode}); "
                                  f"run `python -c 'import {_WORKER_MODULE}'` to see why")
        else:
            self._startup_deaths = 0
        self.restarts += 1
        self._slots[i] = self._new_slot()

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
            if slot.task is not None:
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
                pass                                 # dead worker: its sentinel fires, the task ends as "crash"

    def _finish(self, slot: _Slot, outcome: dict) -> None:
        task, slot.task, slot.deadline = slot.task, None, float("inf")
        slot.served += 1
        task.done(outcome)

    def _run(self) -> None:
        while True:
            with self._lock:
                closed = self._closed
            if closed:
                return self._shutdown()
            self._assign()
            busy = [s for s in self._slots if s.task is not None]
            deadline = min((s.deadline for s in busy), default=None)
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            waitables = [self._wake_r] + [s.conn for s in busy] + [s.proc.sentinel for s in self._slots]
            ready = set(mp.connection.wait(waitables, timeout))
            if self._wake_r in ready:
                os.read(self._wake_r, 65536)
            now = time.monotonic()
            for i, slot in enumerate(self._slots):
                if slot.task is not None and slot.conn in ready:
                    try:
                        task_id, outcome = slot.conn.recv()
                        assert task_id == slot.task_id, (task_id, slot.task_id)
                        self._finish(slot, outcome)
                        continue
                    except (EOFError, OSError):
                        pass                         # died mid-answer: handled as a dead worker below
                if slot.proc.sentinel in ready or not slot.proc.is_alive():
                    if slot.task is not None:
                        self._finish(slot, _outcome("crash", f"verifier worker died (exit code "
                                                    f"{slot.proc.exitcode})", now - slot.started))
                    self._replace(i, kill=False)
                elif slot.task is not None and now >= slot.deadline:
                    self._finish(slot, _outcome("timeout", f"verifier worker killed after {now - slot.started:.1f}"
                                                f" s (limit {slot.task.budget_s:g} s)", now - slot.started))
                    self._replace(i, kill=True)

    def _shutdown(self) -> None:
        with self._lock:
            queued, self._queue = list(self._queue), collections.deque()
        for slot in self._slots:
            if slot.task is not None:
                self._finish(slot, _outcome("crash", "reward pool closed", time.monotonic() - slot.started))
        for t in queued:
            t.done(_outcome("crash", "reward pool closed", 0.0))
        for slot in self._slots:
            try:
                slot.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        end = time.monotonic() + 2.0
        for slot in self._slots:
            slot.proc.join(timeout=max(0.0, end - time.monotonic()))
            self._retire(slot, kill=True)
