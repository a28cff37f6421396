"""score() and Rewarder: plan each item in the caller (format gate, reference check, code extraction), verify
in the worker pool, combine outcomes into RewardResults, count reasons.

Planning is cheap string work (find / one linear regex); everything that can be slow or hostile (math-verify,
regexes over the answer, candidate programs, the n-gram count of the repetition penalty) runs in the pool, one
task per math / mc item and one per code test, so the tests of one item run in parallel across workers.

Reward of an item (DESIGN section 9; penalties are sizes >= 0, off at 0):
    reward = correct (0 unless format_ok and not truncated)
             - truncation_penalty * truncated - repetition_penalty * repetition_fraction(response)
A truncated response is not verified (reason "truncated"). Limits: `timeout_s` bounds each task (a math / mc
item, or one code test); the worker stops itself at timeout_s, the parent kills it at 1.1 * timeout_s + 1 s.
"""
from __future__ import annotations

import collections
import logging
import os
import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field

from prism_fast.rewards.code_sandbox import SandboxConfig, default_expose, probe_mode
from prism_fast.rewards.format import extract_program, split_answer
from prism_fast.rewards.items import VERIFIER_FAILURES, RewardItem, RewardResult, as_item, reference_problem
from prism_fast.rewards.pool import Task, WorkerPool

log = logging.getLogger(__name__)


def default_num_workers() -> int:
    """Usable CPUs divided among the ranks of this node (torchrun's LOCAL_WORLD_SIZE): every rank of an RL run
    owns a Rewarder, and 8 ranks x all CPUs worth of sympy processes would oversubscribe the node 8 times."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def _grace_s(budget_s: float) -> float:
    return 1.0 + 0.1 * budget_s


@dataclass(slots=True)
class _Pending:
    """One item waiting for its tasks' outcomes."""
    index: int
    format_ok: bool
    truncated: bool
    outcomes: list
    n_left: int
    fixed: tuple[str, str] | None = None      # (reason, detail) decided at planning time: no verifier ran


class RewardJob:
    """Handle of a submitted batch; `result()` blocks until every item is scored."""

    def __init__(self, n: int):
        self._results: list[RewardResult | None] = [None] * n
        self._left = n
        self._done = threading.Event()
        self._lock = threading.Lock()
        self.all_failed = False
        """True when every item ended as "timeout" or "crash" of the verifier: the zeros come from the verifier,
        not the model (a candidate program past its time limit is the model's timeout and does not count)."""
        self._verifier_fault = [False] * n
        if n == 0:
            self._done.set()

    @property
    def n_done(self) -> int:
        with self._lock:
            return len(self._results) - self._left

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> list[RewardResult]:
        if not self._done.wait(timeout):
            raise TimeoutError(f"reward job not finished after {timeout} s ({self.n_done}/{len(self._results)} "
                               f"items scored)")
        return list(self._results)

    def _set(self, index: int, result: RewardResult) -> bool:
        """Store one result; True when it was the last one."""
        with self._lock:
            self._results[index] = result
            self._left -= 1
            return self._left == 0


class Rewarder:
    """Scores batches of RewardItems with a pool of verifier processes that lives until close().

    Use as a context manager, or call close(). score() blocks; submit() returns a RewardJob at once so the caller
    can overlap scoring with other work. counters() aggregates over all batches since the last reset."""

    def __init__(self, *, num_workers: int | None = None, timeout_s: float = 10.0, require_think: bool = True,
                 truncation_penalty: float = 0.0, repetition_penalty: float = 0.0, repetition_ngram: int = 3,
                 sandbox: SandboxConfig | None = None):
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if truncation_penalty < 0 or repetition_penalty < 0:
            raise ValueError("truncation_penalty and repetition_penalty are sizes >= 0 (subtracted from the "
                             f"reward); got {truncation_penalty}, {repetition_penalty}")
        if repetition_ngram < 1:
            raise ValueError(f"repetition_ngram must be >= 1, got {repetition_ngram}")
        self.timeout_s = float(timeout_s)
        self.require_think = require_think
        self.truncation_penalty = float(truncation_penalty)
        self.repetition_penalty = float(repetition_penalty)
        self.repetition_ngram = repetition_ngram
        python = os.environ.get("PRISM_SANDBOX_PYTHON", "/usr/bin/python3")
        self._sandbox_request = sandbox or SandboxConfig(python=python, expose=default_expose(python))
        self._sandbox: SandboxConfig | None = None
        self._num_workers = num_workers or default_num_workers()
        self._pool: WorkerPool | None = None          # started by the first batch that needs a verifier
        self._closed = False
        self._lock = threading.Lock()
        self._reset_counters()

    # ----------------------------------------------------------------------------------------------- public
    def score(self, items: Iterable[RewardItem | dict]) -> list[RewardResult]:
        return self.submit(items).result()

    def submit(self, items: Iterable[RewardItem | dict]) -> RewardJob:
        if self._closed:
            raise RuntimeError("this Rewarder is closed; create a new one")
        items = [as_item(x, i) for i, x in enumerate(items)]
        job = RewardJob(len(items))
        tasks: list[Task] = []
        ready: list[_Pending] = []
        for i, item in enumerate(items):
            pending, item_tasks = self._plan(i, item, job)
            tasks += item_tasks
            if not item_tasks:
                ready.append(pending)
        with self._lock:
            self._counts["n_batches"] += 1
        if not items:
            return job
        for pending in ready:
            self._finish_item(job, pending)
        if tasks:
            self._get_pool().submit(tasks)
        return job

    def counters(self, reset: bool = False) -> dict:
        """n_items, n_batches, reasons {reason: count}, n_timeout, n_crash, mean_seconds (verifier seconds per
        verified item), all_failed_batches (batches whose items all timed out or crashed), worker_restarts."""
        with self._lock:
            c = dict(self._counts)
            c["reasons"] = dict(self._reasons)
            c["n_timeout"] = self._reasons.get("timeout", 0)
            c["n_crash"] = self._reasons.get("crash", 0)
            c["mean_seconds"] = c.pop("sum_seconds") / max(1, c.pop("n_verified"))
            c["worker_restarts"] = self._restarts() - self._restarts_at_reset
            if reset:
                self._reset_counters()
        return c

    @property
    def sandbox(self) -> SandboxConfig:
        """The code sandbox's configuration, with the mode this machine allows (probed on first use)."""
        return self._sandbox_config()

    def worker_pids(self) -> list[int]:
        """Pids of the current verifier processes (starts the pool if needed)."""
        return self._get_pool().worker_pids()

    def close(self) -> None:
        self._closed = True
        if self._pool is not None:
            self._finalizer()

    def __enter__(self) -> Rewarder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --------------------------------------------------------------------------------------------- planning
    def _reset_counters(self) -> None:
        self._counts = {"n_items": 0, "n_batches": 0, "all_failed_batches": 0, "sum_seconds": 0.0, "n_verified": 0}
        self._reasons: collections.Counter = collections.Counter()
        self._restarts_at_reset = self._restarts()

    def _restarts(self) -> int:
        return 0 if self._pool is None else self._pool.restarts

    def _get_pool(self) -> WorkerPool:
        with self._lock:
            if self._closed:
                raise RuntimeError("this Rewarder is closed; create a new one")
            if self._pool is None:
                self._pool = WorkerPool(self._num_workers, grace_s=_grace_s)
                # A Rewarder dropped without close() still stops its processes when it is collected.
                self._finalizer = weakref.finalize(self, self._pool.close)
            return self._pool

    def _sandbox_config(self) -> SandboxConfig:
        if self._sandbox is None:
            self._sandbox = probe_mode(self._sandbox_request)
        return self._sandbox

    def _plan(self, i: int, item: RewardItem, job: RewardJob) -> tuple[_Pending, list[Task]]:
        """Decide what item i needs: a fixed reason (no verifier) or the verifier tasks to run."""
        answer = split_answer(item.response, require_think=self.require_think)
        pending = _Pending(i, answer is not None, item.truncated, [], 0)
        problem = reference_problem(item.domain, item.reference)
        specs: list[tuple[str, dict]] = []
        if problem is not None:
            pending.fixed = ("bad_reference", f"item {i}: {problem}")
        elif item.truncated:
            pending.fixed = ("truncated", "")
        elif answer is None:
            pending.fixed = ("format", "no `<think> ... </think>` followed by an answer")
        elif item.domain in ("math", "mc"):
            specs.append((item.domain, {"answer": answer, "reference": str(item.reference).strip()}))
        else:
            program = extract_program(answer)
            if program is None:
                pending.fixed = ("no_answer", "no ```python block in the answer part")
            elif "tests" in item.reference:
                sandbox = self._sandbox_config()
                specs += [("code_stdio", {"program": program, "input": t["input"], "output": t["output"],
                                          "sandbox": sandbox}) for t in item.reference["tests"]]
            else:
                specs.append(("code_humaneval", {"program": program, "test_code": item.reference["test_code"],
                                                 "entry_point": item.reference["entry_point"],
                                                 "setup_code": item.reference.get("setup_code", ""),
                                                 "sandbox": self._sandbox_config()}))
        if not specs and self.repetition_penalty > 0:      # nothing to verify, but the n-gram count runs there
            reason, detail = pending.fixed
            specs.append(("none", {"reason": reason, "detail": detail}))
        if specs and self.repetition_penalty > 0:
            specs[0][1].update(repetition_ngram=self.repetition_ngram, response=item.response)
        pending.outcomes = [None] * len(specs)
        pending.n_left = len(specs)
        tasks = [Task(kind, payload, self.timeout_s, self._on_outcome(job, pending, k))
                 for k, (kind, payload) in enumerate(specs)]
        return pending, tasks

    def _on_outcome(self, job: RewardJob, pending: _Pending, k: int):
        def done(outcome: dict) -> None:
            pending.outcomes[k] = outcome
            pending.n_left -= 1                  # only the dispatcher thread calls this: no lock needed
            if pending.n_left == 0:
                self._finish_item(job, pending)
        return done

    # ------------------------------------------------------------------------------------------- combining
    def _finish_item(self, job: RewardJob, p: _Pending) -> None:
        outs = p.outcomes
        seconds = sum(o["seconds"] for o in outs)
        repetition = (outs[0]["repetition"] if outs else None) or 0.0
        program_timeout = False
        if p.fixed is not None:
            correct, (reason, detail) = 0.0, p.fixed
        else:
            correct = sum(o["correct"] for o in outs) / len(outs)
            bad = next((o for o in outs if o["reason"] != "ok"), None)
            reason, detail = ("ok", "") if bad is None else (bad["reason"], bad["detail"])
            program_timeout = bad is not None and bad.get("program_timeout", False)
        job._verifier_fault[p.index] = reason in VERIFIER_FAILURES and not program_timeout
        reward = correct - self.truncation_penalty * p.truncated - self.repetition_penalty * repetition
        result = RewardResult(reward=reward, correct=correct, format_ok=p.format_ok, reason=reason,
                              seconds=seconds, detail=detail)
        with self._lock:
            self._counts["n_items"] += 1
            self._reasons[reason] += 1
            if p.fixed is None:
                self._counts["sum_seconds"] += seconds
                self._counts["n_verified"] += 1
        if job._set(p.index, result):
            self._finish_job(job)

    def _finish_job(self, job: RewardJob) -> None:
        results = job._results
        job.all_failed = all(job._verifier_fault)
        if job.all_failed:
            with self._lock:
                self._counts["all_failed_batches"] += 1
            log.warning("reward batch of %d items: every item timed out or crashed, so its zero rewards come from "
                        "the verifier, not the model (first detail: %s)", len(results), results[0].detail)
        job._done.set()


def score(items: Iterable[RewardItem | dict], *, timeout_s: float = 10.0, require_think: bool = True,
          truncation_penalty: float = 0.0, repetition_penalty: float = 0.0,
          num_workers: int | None = None) -> list[RewardResult]:
    """Score a batch with a temporary pool (see Rewarder; keep a Rewarder to score many batches)."""
    items = [as_item(x, i) for i, x in enumerate(items)]       # bad input fails before any process starts
    with Rewarder(num_workers=num_workers, timeout_s=timeout_s, require_think=require_think,
                  truncation_penalty=truncation_penalty, repetition_penalty=repetition_penalty) as r:
        return r.score(items)
