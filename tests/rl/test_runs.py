"""Real RL jobs (torchrun + gloo, fp32 on CPU) on the `tiny` recipe with a 2-layer SmolLM2 slice (conftest.py):
SIGKILL + resume is bitwise identical, 2 ranks equal 1 rank, a 2-rank checkpoint resumes on 1 rank, the HF export
loads, `analyze trajectory` reads the checkpoints, and config errors are one line with exit status 2."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prism_fast.train.checkpoint import list_complete
from tests.train._runs import ROOT, env, final_weights, kill9, records, wait_for


def _cmd(nproc, args):
    head = [sys.executable, "-m", "prism_fast.rl"] if nproc is None else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m",
         "prism_fast.rl"]
    return head + list(args)


def _run(nproc, args, timeout=600, check=True):
    p = subprocess.run(_cmd(nproc, args), cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"job failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}")
    return p


def _args(model: Path, run_dir: Path, *extra) -> list[str]:
    return ["--recipe", "tiny", f"--model.path={model}", f"--train.run_dir={run_dir}",
            "--prompts.system_prompt=Answer briefly.", "--rollout.max_new_tokens=8", "--rollout.prompts_per_step=2",
            "--rollout.group_size=4", "--reward.repetition_penalty=1", "--reward.repetition_ngram=1",
            "--train.max_tokens_per_micro=128", *extra]


def _by_step(run_dir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in records(run_dir) if "reward" in r}      # a resumed run's re-logged step wins


@pytest.mark.slow
def test_sigkill_then_resume_is_bitwise_identical(smol_slice, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    _run(1, _args(smol_slice, full))
    proc = subprocess.Popen(_cmd(1, _args(smol_slice, killed)), cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_for(lambda: (killed / "checkpoints/step-2/COMPLETE").exists() and 3 in _by_step(killed), proc,
                 timeout=600, what="step 3 after the step-2 checkpoint")
        kill9(proc)
    finally:
        if proc.poll() is None:
            kill9(proc)
    assert not (killed / "checkpoints/step-4").exists()
    _run(1, _args(smol_slice, killed))
    a, b = _by_step(full), _by_step(killed)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    rewards = [a[s]["reward"] for s in a]
    assert len(set(rewards)) > 1 and a[4]["kl"] > 0, "the run must actually train (non-zero advantages, KL)"
    for s in (3, 4):
        for k in ("loss", "reward", "kl", "entropy", "grad_norm", "logprob_diff_max", "response_length_mean"):
            assert a[s][k] == b[s][k], (s, k, a[s][k], b[s][k])
    wa, wb = final_weights(full / "checkpoints/step-4"), final_weights(killed / "checkpoints/step-4")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_two_ranks_equal_one_rank_and_resume_on_one_rank(smol_slice, tmp_path):
    """1 rank with generate_chunks=2 makes the same generate() calls as each of 2 ranks: identical samples, and
    the update (global-count normalization, summed grads) equal up to reduction order. The 2-rank run's step-2
    checkpoint then resumes on 1 rank and continues like the 1-rank run; the final HF export loads."""
    one, two = tmp_path / "one", tmp_path / "two"
    _run(None, _args(smol_slice, one, "--train.steps=3", "--rollout.generate_chunks=2"))
    _run(2, _args(smol_slice, two, "--train.steps=2"))
    _run(None, _args(smol_slice, two, "--train.steps=3", "--rollout.generate_chunks=2",
                     "--checkpoint.export_final=true", "--checkpoint.export_dtype=fp32"))
    a, b = _by_step(one), _by_step(two)
    assert b[1]["world_size"] == 2 and b[3]["world_size"] == 1
    for s in (1, 2, 3):
        assert a[s]["generated_tokens"] == b[s]["generated_tokens"], s         # the same samples
        assert a[s]["reward"] == pytest.approx(b[s]["reward"], rel=1e-12), s  # fp64 sums, reduced in another order
        # step 1: same weights, only the reduction order differs; later steps: Adam's first updates (m / sqrt(v)
        # ~ sign(g)) amplify that rounding noise in the weights, and the loss (a sum with cancellation) shows it
        rel = 1e-5 if s == 1 else 1e-3
        for k in ("loss", "kl", "entropy", "grad_norm"):
            assert a[s][k] == pytest.approx(b[s][k], rel=rel, abs=1e-7), (s, k, a[s][k], b[s][k])
    from prism_fast.models import from_pretrained
    exported = from_pretrained(two / "export")
    ckpt = final_weights(two / "checkpoints/step-3")
    for k, v in exported.state_dict().items():
        torch.testing.assert_close(v, ckpt[k], atol=0, rtol=0)
    out = tmp_path / "traj"
    p = subprocess.run([sys.executable, "-m", "prism_fast.analyze", "trajectory", "--ckpts", str(two / "checkpoints"),
                        "--out", str(out), "--workers", "1", "--no-plots", "--no-progress"], cwd=ROOT, env=env(),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (out / "trajectory.json").exists()


@pytest.mark.slow
def test_sigterm_checkpoints_at_the_step_boundary_and_resumes(smol_slice, tmp_path):
    """SIGTERM (preemption) to the trainer process: it finishes its step, writes a complete checkpoint at that step
    (no interval checkpoint configured) and exits 0; a relaunch resumes from it and runs the next step. (Signalled
    alone, not through torchrun: the agent itself exits non-zero on a forwarded signal, and it signals the worker's
    process group, verifier workers included.)"""
    run = tmp_path / "run"
    args = _args(smol_slice, run, "--checkpoint.interval=0", "--checkpoint.save_final=false")
    proc = subprocess.Popen(_cmd(None, args + ["--train.steps=50"]), cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_for(lambda: (run / "metrics.jsonl").exists() and 2 in _by_step(run), proc, timeout=600,
                 what="two logged steps")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            kill9(proc)
    assert proc.returncode == 0, out[-3000:]
    assert "SIGTERM: checkpoint at step" in out, out[-3000:]
    done = list_complete(run / "checkpoints")
    assert len(done) == 1, out[-3000:]
    step = int(done[0].name.split("-")[1])
    assert 2 <= step == max(_by_step(run)) < 50
    n_before = len([r for r in records(run) if "reward" in r])
    _run(None, args + [f"--train.steps={step + 1}"])
    steps_after = [r["step"] for r in records(run) if "reward" in r]
    assert len(steps_after) == n_before + 1 and steps_after[-1] == step + 1    # resumed: exactly one new step


def test_config_errors_are_one_line_exit_2(tmp_path, capsys):
    from prism_fast.entry import run_entry
    from prism_fast.rl.__main__ import main
    assert run_entry(main, ["--recipe", "tiny", "--loss.agg=mean"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: loss.agg='mean'; valid: token, seq-mean-token-mean, seq-mean-token-sum-norm"]
    assert run_entry(main, ["--recipe", "nope"]) == 2
    assert "available: demo, tiny, granite_3_3_8b" in capsys.readouterr().err
    p = _run(None, ["--recipe", "llama_3_1_8b", f"--train.run_dir={tmp_path}"], check=False)   # a real launch
    assert p.returncode == 2 and "model.path='runs/llama_3_1_8b/export' does not exist" in p.stderr
    assert "Traceback" not in p.stderr


def test_list_and_print_config_without_weights():
    p = _run(None, ["--list-recipes"])
    names = p.stdout.split()
    assert names[:2] == ["demo", "tiny"] and "nemotron_h_8b" in names
    p = _run(None, ["--recipe", "mistral_small_24b", "--print-config"])
    cfg = json.loads(p.stdout)
    assert (cfg["rollout"]["group_size"], cfg["rollout"]["prompts_per_step"], cfg["optim"]["lr"]) == (16, 64, 5e-7)
    assert (cfg["loss"]["kl_beta"], cfg["loss"]["tis_cap"], cfg["rollout"]["temperature"]) == (0.05, 2.0, 1.0)
    assert cfg["schedule"]["name"] == "linear" and cfg["train"]["steps"] == 1000
    assert cfg["rollout"]["max_new_tokens"] + cfg["prompts"]["max_prompt_tokens"] == 16384
