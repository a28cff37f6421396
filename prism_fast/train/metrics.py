"""Training metrics: `<run>/metrics.jsonl` (one JSON object per logged step), optional TensorBoard, rank-0 tqdm
progress bar with ETA, and MFU.

MFU formula (named in every record as `mfu_formula`):
    MFU = tokens_per_s_per_device * flops_per_token / peak_flops_per_device
    flops_per_token = 6 * N_nonembedding + 12 * n_attn_layers * n_heads * head_dim * seq_len / 2
(model.flops_per_token(seq_len): forward + backward, causal half of attention counted; recomputation from
activation checkpointing NOT counted, i.e. model FLOPs, not hardware FLOPs). The peak is bf16 dense tensor-core
FLOP/s from a table for known GPUs (x2 with fp8), or `metrics.peak_tflops`; on CPU MFU is null unless you set it,
and `tflops_per_device` (achieved) is always logged.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from prism_fast.ranges import check_ranges, ranged

log = logging.getLogger(__name__)
MFU_FORMULA = ("tokens_per_s_per_device * (6*N_nonembed + 12*n_attn_layers*n_heads*head_dim*seq_len/2) "
               "/ peak_flops_per_device")

# bf16 dense peak FLOP/s (no sparsity), by substring of torch.cuda.get_device_name().
_PEAK_BF16 = [("H200", 989.5e12), ("H100 PCIe", 756e12), ("H100", 989.5e12), ("H800", 989.5e12),
              ("B200", 2250e12), ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12), ("A10G", 125e12),
              ("L4", 121e12), ("RTX 4090", 165e12), ("V100", 125e12)]


@dataclass(kw_only=True, slots=True)
class Config:
    log_every: int = ranged(10, ge=1)
    """Log (and host-sync) every N steps; the only place the loop calls .item()."""
    tensorboard: bool = False
    """Also write TensorBoard event files to <run>/tb (needs the tensorboard package)."""
    progress_bar: bool = True
    peak_tflops: float | None = ranged(None, gt=0)
    """Peak dense TFLOP/s per device for MFU; None = look up the GPU (null MFU on CPU)."""

    def __post_init__(self):
        check_ranges(self, "metrics")


def peak_flops(device: torch.device, override_tflops: float | None, fp8: bool = False) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, val in _PEAK_BF16:
        if key in name:
            return val * (2 if fp8 else 1)
    log.warning("unknown GPU %r: MFU not reported; set --metrics.peak_tflops", name)
    return None


def peak_memory_gib(device: torch.device) -> float:
    """Peak allocated accelerator memory, or the process's max RSS on CPU (the OS high-water mark)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource  # noqa: PLC0415
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class MetricsLogger:
    def __init__(self, cfg: Config, run_dir: Path, *, rank: int, total_steps: int, start_step: int,
                 desc: str = "midtrain"):
        self.cfg, self.rank = cfg, rank
        self.path = Path(run_dir) / "metrics.jsonl"
        self._f = open(self.path, "a") if rank == 0 else None
        self._tb = None
        if cfg.tensorboard and rank == 0:
            try:
                from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415
            except ImportError as e:
                raise RuntimeError("metrics.tensorboard=True needs `pip install tensorboard`") from e
            self._tb = SummaryWriter(str(Path(run_dir) / "tb"))
        self._bar = None
        if cfg.progress_bar and rank == 0:
            from tqdm.auto import tqdm  # noqa: PLC0415
            self._bar = tqdm(total=total_steps, initial=start_step, desc=desc, unit="step",
                             dynamic_ncols=True, smoothing=0.1)
        self.t_start = time.perf_counter()

    def log(self, record: dict):
        if self.rank != 0:
            return
        record = {"time": round(time.time(), 3), **record}
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()
        if self._tb is not None:
            step = record["step"]
            for k, v in _flatten(record).items():
                if isinstance(v, (int, float)) and k not in ("step", "time"):
                    self._tb.add_scalar(k, v, step)
        if self._bar is not None and "loss" in record:
            extra = {"reward": f"{record['reward']:.3f}"} if "reward" in record else {}   # RL records
            self._bar.set_postfix(loss=f"{record['loss']:.4f}", **extra,
                                  tok_s=f"{record.get('tokens_per_s', 0):.0f}", refresh=False)
        elif self._bar is None and "loss" in record:
            log.info("step %d loss %.4f lr %.3g tok/s %.0f", record["step"], record["loss"], record["lr"],
                     record.get("tokens_per_s", 0.0))

    def advance(self, n: int = 1):
        if self._bar is not None:
            self._bar.update(n)

    def close(self):
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._f is not None:
            self._f.close()
            self._f = None


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out
