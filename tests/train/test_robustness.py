"""Failure handling of real runs: a blown-up run skips its non-finite updates and stops after K in a row, naming
the steps and samples; SIGTERM (preemption) on a 2-rank torchrun job saves a complete checkpoint and exits."""
from __future__ import annotations

import json
import signal
import time

import pytest

from prism_fast.train.checkpoint import list_complete
from tests.train import _runs

pytestmark = pytest.mark.slow


def _base(tmp_path, hf_tokenizer_dir):
    return [f"--train.run_dir={tmp_path / 'run'}", f"--data.cache_dir={tmp_path / 'corpus'}",
            f"--data.tokenizer={hf_tokenizer_dir}"]


def test_nonfinite_steps_are_skipped_then_the_run_stops(tmp_path, hf_tokenizer_dir):
    # lr = 1e30 (inf itself is refused at config build): the first update sends the weights to ~1e30, so every
    # later forward overflows and every later loss / grad norm is NaN.
    p = _runs.run(None, _base(tmp_path, hf_tokenizer_dir) + ["--optim.lr=1e30", "--train.max_nonfinite=2",
                                                             "--checkpoint.interval=0"], check=False)
    assert p.returncode != 0
    log = p.stdout + p.stderr
    assert "2 consecutive non-finite steps (2..3; updates skipped)" in log, log[-3000:]
    assert "first bad batch = loader samples from global sample 4" in log
    recs = [r for r in _runs.records(tmp_path / "run") if "loss" in r]
    assert [r["skipped_steps"] for r in recs] == [0, 1, 1]
    assert recs[0]["loss"] == pytest.approx(10.79, abs=0.05)


def test_sigterm_two_ranks_saves_and_exits(tmp_path, hf_tokenizer_dir):
    run = tmp_path / "run"
    proc = _runs.start(2, _base(tmp_path, hf_tokenizer_dir) + ["--train.steps=50", "--checkpoint.interval=0",
                                                              "--checkpoint.save_final=false",
                                                              "--parallel.dp_replicate=2"])  # HSDP 2 x 1 mesh
    metrics = run / "metrics.jsonl"
    _runs.wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 2, proc,
                   what="two logged steps")
    proc.send_signal(signal.SIGTERM)   # to the torchrun agent, which forwards SIGTERM to both workers
    out, _ = proc.communicate(timeout=120)
    done = list_complete(run / "checkpoints")
    assert len(done) == 1, out[-3000:]
    step = int(done[0].name.split("-")[1])
    last = max(r["step"] for r in _runs.records(run) if "loss" in r)
    assert 2 <= step == last < 50, (step, last)
    assert "SIGTERM: checkpoint at step" in out
    import torch
    st = torch.load(done[0] / "train_state.pt", weights_only=False)
    assert st["step"] == step and st["world_size"] == 2 and st["loader"]["cursor"] == step * 4
    assert sorted(p.name for p in done[0].glob("rng-rank*.pt")) == ["rng-rank0.pt", "rng-rank1.pt"]
    time.sleep(0)  # keep imports honest
    json.dumps(st["loader"])
