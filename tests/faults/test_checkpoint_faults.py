"""Faults around checkpoints, each on a real job of the tiny recipe compared with the uninterrupted reference:
SIGKILL during a step, SIGKILL during a checkpoint write, a damaged newest checkpoint (the issue's case: a
truncated `__0_0.distcp` whose COMPLETE marker is present), and a disk that fills up during a save.
What may be lost is only the steps since the newest intact checkpoint; the resumed run must then equal the
uninterrupted one (bitwise on the same world size, within 1e-6 across world sizes)."""
from __future__ import annotations

import os
import resource
import shutil
import subprocess

import pytest

from prism_fast.checkpoint import integrity
from prism_fast.checkpoint.__main__ import main as verify_main
from prism_fast.train.checkpoint import list_complete
from tests.faults import _faults
from tests.faults._faults import STEPS

pytestmark = pytest.mark.slow


def _copy_checkpoints(reference, dst, steps):
    (dst / "checkpoints").mkdir(parents=True)
    for s in steps:
        shutil.copytree(reference / "checkpoints" / f"step-{s}", dst / "checkpoints" / f"step-{s}")


def test_sigkill_during_a_step_loses_only_steps_since_the_checkpoint(tmp_path, base, reference):
    d = tmp_path / "run"
    args = base + [f"--train.run_dir={d}"]
    proc = _faults.start(None, args)
    _faults.wait_for(lambda: _faults.logged_steps(d) >= 5, proc, what="step 5")
    _faults.kill9(proc)  # during step 6 (or 7): nothing of it reaches the disk
    killed_at = _faults.logged_steps(d)
    assert [p.name for p in list_complete(d / "checkpoints")][-1] == "step-4"
    out, secs = _faults.timed_resume(None, args, d)
    assert "resume=" in out and "step-4" in out
    assert _faults.losses(d) == _faults.losses(reference), "resumed loss sequence must equal the reference bitwise"
    _faults.assert_same_weights(reference / "checkpoints" / f"step-{STEPS}", d / "checkpoints" / f"step-{STEPS}")
    _faults.record("SIGKILL during a training step", True,
                   f"steps 5..{killed_at + 1} (done or in flight after step-4), redone", secs)


def test_sigkill_during_checkpoint_write_leaves_no_loadable_half(tmp_path, base, reference):
    d = tmp_path / "run"
    args = base + [f"--train.run_dir={d}"]
    proc = _faults.start(None, args, PRISM_CKPT_TEST_PAUSE_S=120, PRISM_CKPT_TEST_PAUSE_STEP=6)
    _faults.wait_for((d / "checkpoints" / "step-6.tmp" / "PAUSED").exists, proc, what="the step-6 write")
    _faults.kill9(proc)  # shards of step 6 are on disk, its COMPLETE manifest is not
    assert [p.name for p in list_complete(d / "checkpoints")] == ["step-2", "step-4"]
    out, secs = _faults.timed_resume(None, args, d)
    assert "removing interrupted checkpoint write" in out
    assert not (d / "checkpoints" / "step-6.tmp").exists()
    assert _faults.losses(d) == _faults.losses(reference)
    _faults.assert_same_weights(reference / "checkpoints" / f"step-{STEPS}", d / "checkpoints" / f"step-{STEPS}")
    _faults.record("SIGKILL during a checkpoint write", True, "steps 5-6 (the half-written step-6 is removed)", secs)


def test_damaged_newest_checkpoint_resumes_from_the_older_one_on_two_ranks(tmp_path, base, reference):
    """The issue's scenario: step-6's `__0_0.distcp` truncated after it was written, COMPLETE present; resume=auto
    on a 2-rank torchrun job warns once naming the file and continues from step-4 (1 -> 2 ranks resharded)."""
    d = tmp_path / "run"
    _copy_checkpoints(reference, d, [2, 4, 6])
    bad = d / "checkpoints" / "step-6" / "__0_0.distcp"
    os.truncate(bad, bad.stat().st_size // 2)
    assert (bad.parent / integrity.MARKER).exists()
    assert verify_main(["verify", str(d)]) == 1  # the CLI lists step-6 as damaged
    out, secs = _faults.timed_resume(2, base + [f"--train.run_dir={d}"], d)
    warnings = [ln for ln in out.splitlines() if "is damaged" in ln]
    assert len(warnings) == 1 and str(bad) in warnings[0] and "truncated" in warnings[0], out[-3000:]
    assert "Traceback" not in out
    assert sorted(_faults.losses(d)) == [5, 6, 7, 8], "resumed from step-4"
    _faults.assert_losses_match(reference, d, range(5, STEPS + 1), atol=1e-6)
    assert verify_main(["verify", str(d)]) == 0, "step-6 was rewritten intact"
    _faults.record("Newest checkpoint damaged (truncated __0_0.distcp, COMPLETE present), 2 ranks", True,
                   "steps 5-6 (step-6 is skipped with one warning)", secs)


def test_explicit_resume_of_a_damaged_checkpoint_is_refused(tmp_path, base, reference):
    d = tmp_path / "run"
    _copy_checkpoints(reference, d, [2])
    f = d / "checkpoints" / "step-2" / "train_state.pt"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped: only the checksum can tell
    f.write_bytes(bytes(data))
    p = _faults.run(None, base + [f"--train.run_dir={tmp_path / 'other'}",
                                  f"--checkpoint.resume={d / 'checkpoints' / 'step-2'}"], check=False)
    assert p.returncode == 2, p.stderr[-3000:]
    errs = _faults.error_lines(p.stderr)
    assert len(errs) == 1 and str(f) in errs[0] and "CRC-32" in errs[0], p.stderr[-3000:]
    assert "Traceback" not in p.stderr


def _limit_fsize(nbytes):
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))


def test_disk_full_during_save_keeps_the_previous_checkpoint(tmp_path, base, reference):
    """A run dir with room for one checkpoint (a 64 MiB tmpfs when mounting works, else RLIMIT_FSIZE): the step-4
    save fails, its partial write is removed, step-2 stays intact, and the run stops with one line saying how
    much the save needed. Moved to a disk with room, it resumes and equals the reference."""
    d = tmp_path / "full"
    d.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(d)],
                             capture_output=True).returncode == 0
    try:
        _copy_checkpoints(reference, d, [2])  # ~49 MiB: the next save cannot fit
        args = base + [f"--train.run_dir={d}"]
        if mounted:
            p = _faults.run(None, args, check=False)
        else:  # no mount permission: each file may grow to 20 MiB, less than one checkpoint shard
            p = subprocess.run(_faults._runs.cmd(None, args), cwd=_faults._runs.ROOT, env=_faults._runs.env(),
                               capture_output=True, text=True, timeout=300, preexec_fn=_limit_fsize(20 << 20))
        assert p.returncode == 2, (p.stdout[-2000:], p.stderr[-3000:])
        errs = _faults.error_lines(p.stderr)
        assert len(errs) == 1 and "Traceback" not in p.stderr, p.stderr[-3000:]
        reason = "No space left on device" if mounted else "File too large"
        assert f"checkpoint step-4 could not be written under {d / 'checkpoints'}: {reason}" in errs[0], errs[0]
        assert "the save needs about" in errs[0] and f"{d / 'checkpoints' / 'step-2'} is intact" in errs[0]
        assert sorted(x.name for x in (d / "checkpoints").iterdir()) == ["step-2"], "the partial step-4 is removed"
        assert integrity.verify(d / "checkpoints" / "step-2")[0] == "intact"
        roomy = tmp_path / "roomy"
        shutil.copytree(d, roomy)
    finally:
        if mounted:
            subprocess.run(["umount", str(d)], check=False)
    out, secs = _faults.timed_resume(None, base + [f"--train.run_dir={roomy}"], roomy)
    _faults.assert_losses_match(reference, roomy, range(3, STEPS + 1))
    _faults.assert_same_weights(reference / "checkpoints" / f"step-{STEPS}", roomy / "checkpoints" / f"step-{STEPS}")
    _faults.record(f"Disk full during a save ({'64 MiB tmpfs' if mounted else 'RLIMIT_FSIZE'})", True,
                   "steps 3-4 (run stops at the failed save; resumed from step-2 elsewhere)", secs)
