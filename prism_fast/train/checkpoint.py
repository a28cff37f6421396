"""Distributed checkpoints with torch.distributed.checkpoint (DCP), written atomically, resumable on any world size.

Layout of one checkpoint (`<run>/checkpoints/step-N/`):
  .metadata, __*_*.distcp   DCP: {"model": sharded model state, "optim": sharded AdamW state}
  train_state.pt            step, data-loader state (global sample cursor), trainer counters (rank 0 writes)
  rng-rank{r}.pt            torch / CUDA / python RNG of rank r
  model_config.json         the model's HF config (export builds the model from it)
  COMPLETE                  written last; a directory without it is never loaded

Atomicity: every rank writes into `step-N.tmp/`; after a barrier rank 0 writes COMPLETE (fsync), renames the
directory to `step-N/` (an atomic rename on one file system) and fsyncs the parent. A crash at any point leaves
either a `.tmp` directory (ignored, deleted at the next start) or a complete checkpoint.
Resharding: DCP stores DTensor shards with their global offsets, so a checkpoint written by 2 ranks loads into 1
(or 16). RNG files of ranks that no longer exist are ignored; new ranks reseed from (seed, step, rank).
Test hook: env PRISM_CKPT_TEST_PAUSE_S=<seconds> (optionally only at PRISM_CKPT_TEST_PAUSE_STEP=<step>) makes
rank 0 touch `<tmp>/PAUSED` and sleep after the shards are written but before COMPLETE, so a test can kill the
job mid-write.
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)

log = logging.getLogger(__name__)
_STEP_RE = re.compile(r"^step-(\d+)$")
MARKER = "COMPLETE"


@dataclass(kw_only=True, slots=True)
class Config:
    interval: int = 500
    """Save every N optimizer steps (0 = only at the end / on SIGTERM)."""
    keep_last: int = 3
    """Keep the newest K complete checkpoints (0 = keep all)."""
    resume: str = "auto"
    """auto (newest complete checkpoint of this run dir, else start fresh) | none | path to a step-N dir."""
    save_final: bool = True
    export_final: bool = True
    """Write an HF directory (`<run>/export/`) at the end of training (rank 0, through DCP -> save_pretrained)."""
    export_dtype: str = "bf16"
    save_on_sigterm: bool = True
    """On SIGTERM (preemption) all ranks agree, save a checkpoint at the current step and exit 0."""

    def __post_init__(self):
        if self.interval < 0 or self.keep_last < 0:
            raise ValueError("checkpoint.interval and checkpoint.keep_last must be >= 0")
        if self.export_dtype not in ("bf16", "fp32"):
            raise ValueError(f"checkpoint.export_dtype={self.export_dtype!r}; use bf16 | fp32")


def _fsync_dir(path: Path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes):
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def is_complete(path: Path) -> bool:
    path = Path(path)
    return bool(_STEP_RE.match(path.name)) and (path / MARKER).is_file()


def list_complete(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if p.is_dir() and is_complete(p)]
    return sorted(found, key=lambda p: int(_STEP_RE.match(p.name).group(1)))


def resolve_step_dir(path: str | Path) -> Path:
    """A step-N dir, a checkpoints/ dir or a run dir -> the newest complete step dir (ValueError if none)."""
    p = Path(path)
    if is_complete(p):
        return p
    if _STEP_RE.match(p.name.removesuffix(".tmp")):
        raise ValueError(f"{p} is not a complete checkpoint (no {MARKER} marker: the write was interrupted); "
                         f"use an older step-N directory")
    for d in (p / "checkpoints", p):
        done = list_complete(d)
        if done:
            return done[-1]
    raise ValueError(f"no complete checkpoint (step-N/ with a {MARKER} marker) under {p}")


def _rng_state() -> dict:
    st = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state()
    return st


def _set_rng_state(st: dict):
    torch.set_rng_state(st["torch"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state(st["cuda"])


class Checkpointer:
    """Saves / loads model + optimizer (DCP), trainer state, loader state and RNG. All ranks call save/load."""

    def __init__(self, cfg: Config, run_dir: Path, *, rank: int, world_size: int, model_hf_config: dict | None,
                 control_group=None):
        self.cfg = cfg
        self.dir = Path(run_dir) / "checkpoints"
        self.rank, self.world_size = rank, world_size
        self.model_hf_config = model_hf_config
        self.group = control_group  # gloo group: barriers never touch the accelerator stream
        if rank == 0:
            self.dir.mkdir(parents=True, exist_ok=True)
            for stale in self.dir.glob("step-*.tmp"):
                log.warning("removing interrupted checkpoint write %s", stale)
                shutil.rmtree(stale, ignore_errors=True)
        self._barrier()

    def _barrier(self):
        if dist.is_initialized():
            dist.barrier(group=self.group)

    def save(self, step: int, model, optimizer: torch.optim.Optimizer, train_state: dict) -> Path:
        t0 = time.perf_counter()
        final = self.dir / f"step-{step}"
        tmp = self.dir / f"step-{step}.tmp"
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self._barrier()
        state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}
        dcp.save(state, checkpoint_id=str(tmp))
        torch.save(_rng_state(), tmp / f"rng-rank{self.rank}.pt")
        if self.rank == 0:
            torch.save({**train_state, "step": step, "world_size": self.world_size}, tmp / "train_state.pt")
            if self.model_hf_config is not None:
                _write_file(tmp / "model_config.json", json.dumps(self.model_hf_config, indent=1).encode())
        self._barrier()
        if self.rank == 0:
            pause = float(os.environ.get("PRISM_CKPT_TEST_PAUSE_S", "0") or 0)
            only = os.environ.get("PRISM_CKPT_TEST_PAUSE_STEP")
            if pause > 0 and (only is None or int(only) == step):  # test hook: a kill now must leave no loadable checkpoint
                (tmp / "PAUSED").touch()
                time.sleep(pause)
            _write_file(tmp / MARKER, f"step {step}\n".encode())
            _fsync_dir(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
            _fsync_dir(self.dir)
            self._prune()
        self._barrier()
        log.info("checkpoint step %d saved to %s in %.1f s", step, final, time.perf_counter() - t0)
        return final

    def _prune(self):
        if self.cfg.keep_last <= 0:
            return
        for old in list_complete(self.dir)[:-self.cfg.keep_last]:
            # Remove the marker first so a crash mid-delete never leaves a half-deleted "complete" checkpoint.
            (old / MARKER).unlink(missing_ok=True)
            shutil.rmtree(old, ignore_errors=True)

    def find_resume(self) -> Path | None:
        r = self.cfg.resume
        if r == "none":
            return None
        if r == "auto":
            done = list_complete(self.dir)
            return done[-1] if done else None
        return resolve_step_dir(r)

    def load(self, path: Path, model, optimizer: torch.optim.Optimizer, *, seed: int) -> dict:
        """Load into the (already parallelized) model and optimizer; returns train_state. Restores RNG."""
        path = resolve_step_dir(path)
        state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}
        dcp.load(state, checkpoint_id=str(path))
        set_model_state_dict(model, state["model"])
        set_optimizer_state_dict(model, optimizer, state["optim"])
        train_state = torch.load(path / "train_state.pt", weights_only=False)
        rng_file = path / f"rng-rank{self.rank}.pt"
        if rng_file.exists() and train_state.get("world_size") == self.world_size:
            _set_rng_state(torch.load(rng_file, weights_only=False))
        else:  # world size changed: ranks' RNG streams do not map; reseed deterministically
            torch.manual_seed(seed + 1000003 * train_state["step"] + self.rank)
            random.seed(seed + train_state["step"] + self.rank)
        log.info("resumed from %s (step %d, written by %s ranks)", path, train_state["step"],
                 train_state.get("world_size"))
        return train_state


def load_model_weights(step_dir: Path, model: torch.nn.Module):
    """Single-process load of the model part of a DCP checkpoint into an unsharded model (export, analysis)."""
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=False))
    dcp.load({"model": state}, checkpoint_id=str(step_dir), no_dist=True)
    set_model_state_dict(model, state)
