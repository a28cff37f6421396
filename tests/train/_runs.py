"""Helpers for tests that launch real training jobs (torchrun + gloo, fp32 on CPU) with the `tiny` recipe."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def env(**extra) -> dict:
    e = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
             PYTHONUNBUFFERED="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TRITON_INTERPRET"):
        e.pop(k, None)
    e.update({k: str(v) for k, v in extra.items()})
    return e


def cmd(nproc: int | None, args: list[str]) -> list[str]:
    """nproc=None: plain `python -m prism_fast.midtrain` (1 rank, no torchrun)."""
    head = [sys.executable, "-m", "prism_fast.midtrain"] if nproc is None else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
         "-m", "prism_fast.midtrain"]
    return head + ["--recipe", "tiny", *args]


def run(nproc, args, *, timeout=300, check=True, **env_extra) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd(nproc, args), cwd=ROOT, env=env(**env_extra), capture_output=True, text=True,
                       timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"job failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}")
    return p


def start(nproc, args, **env_extra) -> subprocess.Popen:
    return subprocess.Popen(cmd(nproc, args), cwd=ROOT, env=env(**env_extra), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_for(pred, proc: subprocess.Popen, timeout=240.0, what="condition"):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return
        if proc.poll() is not None:
            raise AssertionError(f"job exited ({proc.returncode}) before {what}:\n{proc.stdout.read()[-4000:]}")
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def kill9(proc: subprocess.Popen):
    """SIGKILL the whole job (torchrun agent + workers): what a node crash looks like."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def losses(run_dir: Path) -> dict[int, float]:
    """step -> train loss; the LAST record of a step wins (a resumed run re-logs the steps after its checkpoint)."""
    out = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "loss" in r:
            out[r["step"]] = r["loss"]
    return out


def records(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def final_weights(step_dir: Path) -> dict[str, torch.Tensor]:
    """Model tensors of a DCP checkpoint, loaded in this process into a model rebuilt from model_config.json."""
    from prism_fast.models import ModelConfig, build_model
    from prism_fast.train.checkpoint import load_model_weights
    cfg = ModelConfig.from_hf_dict(json.loads((Path(step_dir) / "model_config.json").read_text()))
    model = build_model(cfg, device="cpu")
    load_model_weights(step_dir, model)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
