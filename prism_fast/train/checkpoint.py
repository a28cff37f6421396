"""Distributed checkpoints with torch.distributed.checkpoint (DCP): atomic, verified, resumable on any world size.

Layout of one checkpoint (`<run>/checkpoints/step-N/`):
  .metadata, __*_*.distcp   DCP: {"model": sharded model state, "optim": sharded AdamW state}
  train_state.pt            step, data-loader state (global sample cursor), trainer counters (rank 0 writes)
  rng-rank{r}.pt            torch / CUDA / python RNG of rank r
  model_config.json         the model's HF config (export builds the model from it)
  COMPLETE                  written last: a manifest of every file's size and CRC-32 (prism_fast/checkpoint/
                            integrity.py); a directory without it is never loaded

Atomicity: every rank writes into `step-N.tmp/`; after a barrier the ranks checksum the files (each a share,
read back from the page cache), rank 0 writes COMPLETE (fsync), renames the directory to `step-N/` (an atomic
rename on one file system) and fsyncs the parent. A crash at any point leaves either a `.tmp` directory
(ignored, deleted at the next start) or a complete checkpoint.
Integrity: `resume=auto` verifies the newest checkpoint (every byte, shared across ranks) and falls back to the
newest intact one with one warning naming the bad file; an explicit `resume=PATH` that fails verification is
refused. Keep-last-K counts only checkpoints whose files are all present at their recorded sizes, so an older
checkpoint is never deleted while a newer one is damaged.
Failures while saving (disk full, quota, read-only, RLIMIT_FSIZE): every rank learns of them (DCP gathers write
errors; the rank-0-only writes go through `agree_on_error`), the partial `.tmp` is removed, the previous
checkpoint is untouched, and every rank raises a UserError saying how many bytes the save needed.
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
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)

from prism_fast.checkpoint import integrity
from prism_fast.checkpoint.integrity import MARKER
from prism_fast.entry import UserError, rank0_result
from prism_fast.ranges import check_ranges, ranged

log = logging.getLogger(__name__)
_STEP_RE = re.compile(r"^step-(\d+)$")


@dataclass(kw_only=True, slots=True)
class Config:
    interval: int = ranged(500, ge=0)
    """Save every N optimizer steps (0 = only at the end / on SIGTERM)."""
    keep_last: int = ranged(3, ge=0)
    """Keep the newest K intact checkpoints (0 = keep all); damaged ones never count toward K."""
    resume: str = "auto"
    """auto (newest intact checkpoint of this run dir, else start fresh) | none | path to a step-N (or run) dir."""
    save_final: bool = True
    export_final: bool = True
    """Write an HF directory (`<run>/export/`) at the end of training (rank 0, through DCP -> save_pretrained)."""
    export_dtype: str = "bf16"
    save_on_sigterm: bool = True
    """On SIGTERM (preemption) all ranks agree, save a checkpoint at the current step and exit 0."""

    def __post_init__(self):
        check_ranges(self, "checkpoint")
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


def _step_of(path: Path) -> int:
    return int(_STEP_RE.match(path.name).group(1))


def is_complete(path: Path) -> bool:
    path = Path(path)
    return bool(_STEP_RE.match(path.name)) and (path / MARKER).is_file()


def list_complete(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoints of a run (COMPLETE marker present; not yet verified), oldest first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    return sorted((p for p in ckpt_dir.iterdir() if p.is_dir() and is_complete(p)), key=_step_of)


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


def _local_bytes(state) -> int:
    """Bytes of the tensors this rank holds in a (nested) state dict: its share of what a save writes."""
    if isinstance(state, dict):
        return sum(_local_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(_local_bytes(v) for v in state)
    if torch.is_tensor(state):
        t = state.to_local() if hasattr(state, "to_local") else state
        return t.numel() * t.element_size()
    return 0


def _os_reason(e: BaseException) -> str:
    """The OS-level cause of a failed write (e.g. 'No space left on device'), found inside DCP's wrappers, else
    the innermost exception's first line (torch.save's zip writer reports a full disk as 'unexpected pos')."""
    seen, todo, last = set(), [e], e
    while todo:
        x = todo.pop(0)
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        last = x
        if isinstance(x, OSError) and x.errno is not None:
            return os.strerror(x.errno)
        wrapped = getattr(x, "failures", {})
        todo += [x.__cause__, x.__context__, *[w[0] if isinstance(w, tuple) else w for w in wrapped.values()]]
    text = str(last).strip()
    return text.splitlines()[0] if text else type(last).__name__


def _write_failure(err_reason: str, needed: int, free: int | None) -> str:
    """Name the likely cause when the writer only said 'unexpected pos': no room left, or a per-file size limit."""
    if "No space" in err_reason or "File too large" in err_reason or "Disk quota" in err_reason:
        return err_reason
    if free is not None and free < needed:
        return "No space left on device"
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY:
        return f"File too large (the file size limit, ulimit -f, is {_mib(soft)})"
    return err_reason


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


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

    def _all_gather(self, obj) -> list:
        if not dist.is_initialized() or self.world_size == 1:
            return [obj]
        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.group)
        return out

    # ------------------------------------------------------------------------------------------------- save
    def save(self, step: int, model, optimizer: torch.optim.Optimizer, train_state: dict,
             extra: dict | None = None) -> Path:
        """extra: {name: model} saved beside "model" under that name (the RL reference policy: "ref")."""
        t0 = time.perf_counter()
        final = self.dir / f"step-{step}"
        tmp = self.dir / f"step-{step}.tmp"
        state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}
        state.update({name: get_model_state_dict(m) for name, m in (extra or {}).items()})
        err = None
        if self.rank == 0:
            try:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
            except OSError as e:
                err = e
        self._fail_if_any(err, step, tmp, _local_bytes(state))
        try:  # phase 1: the data. DCP gathers its write errors itself, so every rank raises those together.
            dcp.save(state, checkpoint_id=str(tmp))
            torch.save(_rng_state(), tmp / f"rng-rank{self.rank}.pt")
            if self.rank == 0:
                torch.save({**train_state, "step": step, "world_size": self.world_size}, tmp / "train_state.pt")
                if self.model_hf_config is not None:
                    _write_file(tmp / "model_config.json", json.dumps(self.model_hf_config, indent=1).encode())
        except (Exception, CheckpointException) as e:  # DCP's CheckpointException is a BaseException
            err = e
        self._fail_if_any(err, step, tmp, _local_bytes(state))
        # phase 2: checksums, each rank a share of the files (read back right after the write: page cache).
        listing = integrity.content_files(tmp) if self.rank == 0 else None
        names = rank0_result(lambda: listing, self.group)
        share = {}
        try:
            share = integrity.describe(tmp, names[self.rank::self.world_size])
        except OSError as e:
            err = e
        self._fail_if_any(err, step, tmp, _local_bytes(state))
        shares = self._all_gather(share)
        err = None
        if self.rank == 0:  # phase 3: the marker and the rename
            try:
                self._commit(step, tmp, final, {k: v for share in shares for k, v in share.items()})
            except OSError as e:
                err = e
        self._fail_if_any(err, step, tmp, _local_bytes(state))
        log.info("checkpoint step %d saved to %s in %.1f s", step, final, time.perf_counter() - t0)
        return final

    def _commit(self, step: int, tmp: Path, final: Path, files: dict):
        pause = float(os.environ.get("PRISM_CKPT_TEST_PAUSE_S", "0") or 0)
        only = os.environ.get("PRISM_CKPT_TEST_PAUSE_STEP")
        if pause > 0 and (only is None or int(only) == step):  # test hook: a kill now must leave no loadable checkpoint
            (tmp / "PAUSED").touch()
            time.sleep(pause)
            (tmp / "PAUSED").unlink()
        _write_file(tmp / MARKER, integrity.manifest_bytes(step, files))
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(self.dir)
        try:
            self._prune()
        except OSError as e:  # the new checkpoint is safe; a failed cleanup only costs disk space
            log.warning("could not prune old checkpoints in %s: %s", self.dir, e)

    def _fail_if_any(self, err: BaseException | None, step: int, tmp: Path, local_bytes: int):
        """Collective. If any rank failed: remove the partial write and raise, on every rank, one UserError that
        says what failed, how much space the save needs and which checkpoint is still intact."""
        gathered = self._all_gather((None if err is None else _os_reason(err), local_bytes))
        failures = [(r, why) for r, (why, _) in enumerate(gathered) if why is not None]
        if not failures:
            return
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        self._barrier()
        needed = sum(b for _, b in gathered)
        try:
            free = shutil.disk_usage(self.dir).free
        except OSError:
            free = None
        prev = list_complete(self.dir)
        kept = f"the previous checkpoint {prev[-1]} is intact" if prev else "no earlier checkpoint exists"
        why = _write_failure(failures[0][1], needed, free)
        free_s = "?" if free is None else _mib(free)
        msg = (f"checkpoint step-{step} could not be written under {self.dir}: {why}; the save needs about "
               f"{_mib(needed)} of tensors ({free_s} free there now; first failure on rank {failures[0][0]}); "
               f"the partial write was removed and {kept}. "
               f"Free space or set --train.run_dir elsewhere, then rerun to resume from it")
        raise UserError(msg) from err  # every rank: all of them saw the same gathered failures

    def _prune(self):
        """Keep the newest K checkpoints that pass the quick check (files present at their recorded sizes);
        delete only checkpoints older than the K-th such one, so a damaged newer one never costs an older one."""
        if self.cfg.keep_last <= 0:
            return
        done = list_complete(self.dir)
        intact = [p for p in done if integrity.verify(p, deep=False)[0] in ("intact", "legacy")]
        if len(intact) <= self.cfg.keep_last:
            return
        oldest_kept = _step_of(intact[-self.cfg.keep_last])
        for old in done:
            if _step_of(old) < oldest_kept:
                # Remove the marker first so a crash mid-delete never leaves a half-deleted "complete" checkpoint.
                (old / MARKER).unlink(missing_ok=True)
                shutil.rmtree(old, ignore_errors=True)

    # ------------------------------------------------------------------------------------------------- resume
    def verify(self, step_dir: Path, *, deep: bool = True) -> tuple[str, list[str]]:
        """Collective when distributed: each rank checksums its share of the files. -> (status, problems)."""
        step_dir = Path(step_dir)
        try:
            files = integrity.read_manifest(step_dir) if self.rank == 0 else None
            ok = True
        except OSError:
            files, ok = None, False
        except integrity.MarkerError as e:  # garbage marker: damage (resume=auto skips it), never "legacy"
            files, ok = str(e), True
        files, ok = rank0_result(lambda: (files, ok), self.group)
        if not ok:
            return "incomplete", [f"{step_dir / MARKER}: missing or unreadable"]
        if isinstance(files, str):
            return "damaged", [files]
        if files is None:
            return "legacy", []
        names = sorted(files)[self.rank::self.world_size]
        mine = integrity.check_files(step_dir, {k: files[k] for k in names}, deep=deep)
        problems = sorted(p for share in self._all_gather(mine) for p in share)
        return ("damaged" if problems else "intact"), problems

    def find_resume(self) -> Path | None:
        """The checkpoint to resume from (verified), or None. Collective when distributed."""
        r = self.cfg.resume
        if r == "none":
            return None
        if r == "auto":
            for cand in reversed(rank0_result(lambda: list_complete(self.dir), self.group)):
                status, problems = self.verify(cand)
                if status in ("intact", "legacy"):
                    return cand
                if self.rank == 0:
                    log.warning("checkpoint %s is damaged (%s%s); falling back to an older one", cand, problems[0],
                                f"; {len(problems) - 1} more" if len(problems) > 1 else "")
            return None
        path = rank0_result(lambda: resolve_step_dir(r), self.group)
        status, problems = self.verify(path)
        if status == "damaged":
            raise UserError(f"--checkpoint.resume={r}: checkpoint {path} is damaged ({problems[0]}); pick an older "
                            f"step-N directory (`python -m prism_fast.checkpoint verify {path.parent.parent}` "
                            f"lists them) or use --checkpoint.resume=auto")
        return path

    def load(self, path: Path, model, optimizer: torch.optim.Optimizer, *, seed: int,
             extra: dict | None = None) -> dict:
        """Load into the (already parallelized) model and optimizer (and the `extra` models saved with save());
        returns train_state. Restores RNG."""
        path = resolve_step_dir(path)
        state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}
        state.update({name: get_model_state_dict(m) for name, m in (extra or {}).items()})
        try:
            dcp.load(state, checkpoint_id=str(path))
            train_state = torch.load(path / "train_state.pt", weights_only=False)
        except (OSError, RuntimeError, KeyError) as e:
            raise UserError(f"checkpoint {path} could not be loaded ({_os_reason(e)}); check it with `python -m "
                            f"prism_fast.checkpoint verify {path.parent.parent}`, or resume from an older one with "
                            f"--checkpoint.resume=PATH") from e
        set_model_state_dict(model, state["model"])
        set_optimizer_state_dict(model, optimizer, state["optim"])
        for name, m in (extra or {}).items():
            set_model_state_dict(m, state[name])
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
