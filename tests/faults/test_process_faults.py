"""Process-level faults on real jobs: a NaN-loss burst, SIGTERM (preemption) then resume, a rank killed while the
others wait in a collective, and a rank that hangs (the survivors hit --train.dist_timeout_s). Each either
survives with nothing lost, or ends within bounded time with one clear line and intact checkpoints."""
from __future__ import annotations

import os
import signal
import time

import pytest

from prism_fast.train.checkpoint import list_complete
from tests.faults import _faults
from tests.faults._faults import STEPS

pytestmark = pytest.mark.slow


def test_nan_loss_burst_is_skipped_and_the_run_finishes(tmp_path, base, reference):
    """Steps 3 and 4 produce NaN losses (test hook): both updates are skipped on device, the run goes on (the
    burst is shorter than --train.max_nonfinite=3) and the weights after step 4 equal those after step 2."""
    d = tmp_path / "run"
    _faults.run(None, base + [f"--train.run_dir={d}"], PRISM_TEST_NAN_STEPS="3,4")
    recs = {r["step"]: r for r in _faults.records(d) if "loss" in r}
    assert [recs[s]["skipped_steps"] for s in range(1, STEPS + 1)] == [0, 0, 1, 1, 0, 0, 0, 0]
    assert recs[3]["loss"] != recs[3]["loss"] and recs[5]["loss"] == recs[5]["loss"]  # NaN, then finite again
    _faults.assert_same_weights(reference / "checkpoints" / "step-2", d / "checkpoints" / "step-4")
    assert recs[STEPS]["loss"] < recs[1]["loss"] - 0.1, "training still makes progress after the burst"
    _faults.record("NaN loss burst (2 steps, below max_nonfinite=3)", True,
                   "the 2 poisoned steps' updates (skipped on device); the run continues", 0.0)


def test_sigterm_saves_then_resume_equals_the_reference(tmp_path, base, reference):
    d = tmp_path / "run"
    args = base + [f"--train.run_dir={d}"]
    proc = _faults.start(2, args)
    _faults.wait_for(lambda: _faults.logged_steps(d) >= 3, proc, what="three logged steps")
    proc.send_signal(signal.SIGTERM)  # to the torchrun agent, which forwards it to both workers
    out, _ = proc.communicate(timeout=240)  # torchrun itself exits non-zero on a signal; the workers exit 0
    assert out.count("SIGTERM: checkpoint at step") == 2, out[-3000:]
    step = int(list_complete(d / "checkpoints")[-1].name.split("-")[1])
    assert 3 <= step == _faults.logged_steps(d) < STEPS, "preempted at the current step: nothing lost"
    out, secs = _faults.timed_resume(2, args, d)
    assert sorted(_faults.losses(d)) == list(range(1, STEPS + 1))
    _faults.assert_losses_match(reference, d, range(1, STEPS + 1), atol=1e-6)  # 2 ranks vs the 1-rank reference
    _faults.record("SIGTERM (preemption), 2 ranks", True, f"nothing (checkpoint written at step {step})", secs)


def test_rank_killed_while_others_wait_in_a_collective(tmp_path, base, reference):
    """Rank 0 is frozen inside the step-4 save (test hook: after the shards, before COMPLETE) while rank 1 waits
    for it in the save's next collective; SIGKILL rank 0 there. The job ends within bounded time, step-4 is
    never loadable, and the rerun resumes from step-2 and equals the reference."""
    d = tmp_path / "run"
    args = base + [f"--train.run_dir={d}"]
    proc = _faults.start(2, args, PRISM_CKPT_TEST_PAUSE_S=120, PRISM_CKPT_TEST_PAUSE_STEP=4)
    _faults.wait_for((d / "checkpoints" / "step-4.tmp" / "PAUSED").exists, proc, what="the step-4 save")
    pids = _faults.worker_pids(proc.pid)
    assert sorted(pids) == [0, 1], pids
    t0 = time.perf_counter()
    os.kill(pids[0], signal.SIGKILL)
    out, _ = proc.communicate(timeout=120)
    secs = time.perf_counter() - t0
    assert proc.returncode != 0 and secs < 60, (secs, out[-3000:])
    assert "Signal 9" in out or "SIGKILL" in out or "exitcode  : -9" in out, out[-3000:]
    assert "error: rank 0: a collective failed" not in out, "rank 0 is the dead one"
    assert [p.name for p in list_complete(d / "checkpoints")] == ["step-2"]
    out, rsecs = _faults.timed_resume(2, args, d)
    _faults.assert_losses_match(reference, d, range(3, STEPS + 1), atol=1e-6)
    _faults.record("A rank SIGKILLed while the other waits in a collective (2 ranks, torchrun)", True,
                   f"steps 3-4 (the unfinished step-4 save is ignored); job ended {secs:.1f} s after the kill",
                   rsecs)


def test_hung_rank_times_out_with_one_clear_line(tmp_path, base):
    """SIGSTOP rank 1 (a hung rank: alive and silent, so torchrun sees nothing): rank 0 waits in its next
    collective for --train.dist_timeout_s, then prints one line naming the failed collective and exits. (torchrun
    would SIGKILL the stopped rank after its 30 s shutdown grace; the test does it at once to stay short.)"""
    d = tmp_path / "run"
    proc = _faults.start(2, base + [f"--train.run_dir={d}", "--train.steps=400", "--checkpoint.interval=0",
                                    "--train.dist_timeout_s=10"])
    _faults.wait_for(lambda: _faults.logged_steps(d) >= 2, proc, what="two logged steps")
    pids = _faults.worker_pids(proc.pid)
    t0 = time.perf_counter()
    os.kill(pids[1], signal.SIGSTOP)
    try:
        line, secs = _faults.read_until(proc, "error: rank 0: a collective failed", timeout=120)
    finally:
        os.kill(pids[1], signal.SIGKILL)
        out, _ = proc.communicate(timeout=120)
    assert line is not None and secs < 60, (secs, out[-3000:])
    assert "Timed out" in line or "timed out" in line.lower(), line
    assert proc.returncode != 0 and "error: rank 0: a collective failed" not in out, "printed once"
    _faults.record("A rank hangs (SIGSTOP), dist_timeout_s=10, 2 ranks", True,
                   "steps since the newest checkpoint; the survivor exits after the timeout", secs,
                   note="time from the hang to the survivor's error line")
