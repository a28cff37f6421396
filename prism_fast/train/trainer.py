"""The mid-training trainer: train() -> train_step() -> forward_backward_step(), torchtitan-shaped.

One optimizer step = `grad_accum` micro steps per rank; each micro step is one packed row [1, L'] (L' =
micro_batch_size x seq_len; documents never attend across boundaries: cu_seqlens). Unusual points:
- Loss normalization: every micro step's summed token loss is divided by the GLOBAL number of valid tokens of
  the whole optimizer step (all micro steps, all ranks: one all-reduce of a device scalar before the first
  backward; torchtitan's global_valid_tokens). FSDP's gradient division is disabled (distributed/fsdp.py), so the
  summed gradients equal those of one big batch for any (world size, accumulation) layout.
- No host synchronisation inside a step: token counts, per-domain loss sums (scatter_add over domain_ids) and the
  non-finite flag stay on device. Non-finite grad norm -> the fused AdamW skips the update on device (found_inf).
  `.item()` is called only at log steps, where the flags of the window are read; K non-finite steps in a row stop
  the run with the steps and sample ranges named (detected at the first log step after the K-th).
- Preemption: SIGTERM sets a flag; ranks agree through an all-reduce on a gloo (CPU) group each step -- a CPU
  collective, never a device sync -- then save a checkpoint and exit 0.
"""
from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

from prism_fast.distributed import destroy_distributed
from prism_fast.distributed.context_parallel import ContextParallel
from prism_fast.distributed.fp8 import fp8_autocast_ctx, fp8_flop_share, mixed_peak_flops
from prism_fast.ops.kernel_choice import replace_kernels
from prism_fast.entry import UserError
from prism_fast.train import data_setup
from prism_fast.train.checkpoint import Checkpointer
from prism_fast.train.preemption import Preemption
from prism_fast.train.config import JobConfig, save_json
from prism_fast.train.metrics import MFU_FORMULA, MetricsLogger, peak_flops, peak_memory_gib
from prism_fast.train.hf_export import export_checkpoint
from prism_fast.train.model_init import build_parallel_model
from prism_fast.train.optim import set_trainable
from prism_fast.train.process import start_process

log = logging.getLogger(__name__)
IGNORE = -100
# Our forward returns (loss, per_token.view(...)); nothing modifies them in place, so FSDP2's warning is moot.
warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")


# Test hook (tests/faults): PRISM_TEST_NAN_STEPS=3,4 makes the loss NaN at those 1-based steps (a NaN burst).
_TEST_NAN_STEPS = {int(s) for s in os.environ.get("PRISM_TEST_NAN_STEPS", "").split(",") if s.strip()}


class NonFiniteLossError(UserError):
    """K non-finite steps in a row: a one-line error (exit 2) naming the steps, samples and what to change."""


class Trainer:
    def __init__(self, cfg: JobConfig):
        self.cfg = cfg
        tc = cfg.train
        # Launch-time validation first (files, mesh, batch), before any process group or model exists.
        self.grad_accum = cfg.validate(int(os.environ.get("WORLD_SIZE", "1")))
        rt = start_process(tc, timeout_s=tc.dist_timeout_s)
        self.rank, self.world_size, self.device, self.cpu_group = rt.rank, rt.world_size, rt.device, rt.cpu_group
        self.dims = cfg.parallel.build(self.world_size)
        self.run_dir = Path(tc.run_dir).expanduser()
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_json(cfg, self.run_dir / "config.json")
        torch.manual_seed(tc.seed + self.rank)

        self.model, self.model_cfg, tok_path = build_parallel_model(cfg.model, cfg.parallel, self.dims, self.device,
                                                                    kernels=cfg.kernels)
        if self.rank == 0:  # the run's config records the resolved kernel names, never "auto"
            save_json(replace_kernels(cfg, self.model.kernels), self.run_dir / "config.json")
            print(self.model.kernels.describe(), flush=True)
        if cfg.data.seq_len > self.model_cfg.max_position_embeddings:
            raise ValueError(f"data.seq_len={cfg.data.seq_len} exceeds the model's max_position_embeddings="
                             f"{self.model_cfg.max_position_embeddings}; lower --data.seq_len")
        # Context parallelism: the cp ranks of one data-parallel rank read the same rows and each keeps its chunks.
        self.cp = ContextParallel(self.dims.cp_mesh(), self.device) if self.dims.cp > 1 else None
        self.trainable = set_trainable(self.model, tc.trainable)
        self.optimizer = cfg.optim.build(self.model)
        self.schedule = cfg.schedule.build(tc.steps)
        self.data = data_setup.build(cfg.data, tokenizer_path=tok_path, rank=self.rank, world_size=self.world_size,
                                     vocab_size=self.model_cfg.vocab_size,
                                     data_rank=self.dims.data_parallel_rank(self.rank),
                                     data_world_size=self.dims.data_parallel_size)
        self.domains = list(self.data.domains)
        self.checkpointer = Checkpointer(cfg.checkpoint, self.run_dir, rank=self.rank, world_size=self.world_size,
                                         model_hf_config=self.model_cfg.hf_config or None, control_group=self.cpu_group)
        self.step = 0
        self.first_val: dict | None = None
        resume = self.checkpointer.find_resume()
        if resume is not None:
            st = self.checkpointer.load(resume, self.model, self.optimizer.opt, seed=tc.seed)
            self.step = st["step"]
            self.data.loader.load_state_dict(st["loader"])
            self.first_val = st.get("first_val")
        self.data_iter = iter(self.data.loader)
        self.tokens_per_step = tc.global_batch_size * cfg.data.seq_len
        self.flops_per_token = self.model.flops_per_token(cfg.data.seq_len)
        self.peak_flops = peak_flops(self.device, cfg.metrics.peak_tflops)
        if self.peak_flops and cfg.parallel.fp8:  # only the swapped block linears run at the FP8 peak
            self.peak_flops = mixed_peak_flops(self.peak_flops, fp8_flop_share(self.model, cfg.data.seq_len))
        self.metrics = MetricsLogger(cfg.metrics, self.run_dir, rank=self.rank, total_steps=tc.steps,
                                     start_step=self.step)
        # SIGTERM: finish the current step, checkpoint, exit 0 (train/preemption.py)
        self.preemption = Preemption(cfg.checkpoint.save_on_sigterm, self.world_size, self.cpu_group)
        self._reset_window()
        self.last_record: dict = {}
        self.last_val: dict = {}
        if self.rank == 0:
            log.info("run %s: world %d, grad_accum %d, %d tokens/step, resume=%s", self.run_dir, self.world_size,
                     self.grad_accum, self.tokens_per_step, resume)

    # ---------------------------------------------------------------- loop
    def train(self):
        tc, ck = self.cfg.train, self.cfg.checkpoint
        if self.step == 0 and self.cfg.data.val_batches > 0:
            self.first_val = self.validate()
        self.win["t_start"] = time.perf_counter()
        while self.step < tc.steps:
            self.train_step()
            self.step += 1
            self.metrics.advance()
            last = self.step == tc.steps
            if self.step % self.cfg.metrics.log_every == 0 or last:
                self.log_window()
            t_aside = time.perf_counter()
            ve = self.cfg.data.val_every
            if self.cfg.data.val_batches > 0 and ((ve and self.step % ve == 0) or last):
                self.last_val = self.validate()
            saved = (ck.interval and self.step % ck.interval == 0 and not last) or (last and ck.save_final)
            if saved:
                self.save()
            self.win["t_start"] += time.perf_counter() - t_aside  # throughput counts training steps only
            if self.preemption.agreed():
                if not saved:
                    self.save()
                log.warning("SIGTERM: checkpoint at step %d written, exiting", self.step)
                return "preempted"
        if ck.export_final and ck.save_final:
            self.export()
        return "done"

    def train_step(self):
        """Lr -> micro steps (forward/backward) -> clip -> optimizer (skip on device if non-finite)."""
        lr = self.cfg.optim.lr * self.schedule(self.step)
        self.optimizer.set_lr(lr)
        cursor = self.data.cursor()
        micro = [self._to_device(next(self.data_iter)) for _ in range(self.grad_accum)]
        # Global valid-token count of this optimizer step, on device (collective, no host sync).
        n_tok = torch.stack([(mb["labels"] != IGNORE).sum() for mb in micro]).sum().to(torch.float32)
        if self.world_size > 1:
            dist.all_reduce(n_tok)
        step_loss = torch.zeros((), device=self.device, dtype=torch.float32)
        for mb in micro:
            step_loss += self.forward_backward_step(mb, n_tok)
        grad_norm = self.optimizer.clip_grad_norm()
        found_inf = (~torch.isfinite(grad_norm)).to(torch.float32)
        self.optimizer.step(found_inf)
        w = self.win
        w["loss_sum"] += step_loss
        w["tokens"] += n_tok
        w["last_loss"] = step_loss
        w["last_tokens"] = n_tok
        w["grad_norm"] = grad_norm
        w["nonfinite"].append((self.step + 1, found_inf, cursor))  # 1-based, as logged
        w["lr"] = lr
        w["steps"] += 1

    def forward_backward_step(self, mb: dict, n_tok_global: torch.Tensor) -> torch.Tensor:
        """One micro step. Returns this rank's summed token loss (detached, fp32 device scalar)."""
        with fp8_autocast_ctx(self.cfg.parallel.fp8):
            loss_sum, per_tok = self.model(mb["input_ids"], position_ids=mb["position_ids"],
                                           cu_seqlens=mb.get("cu_seqlens"), labels=mb["labels"], loss_reduction="sum",
                                           return_per_token=True, cp=mb.get("cp"))
        if self.step + 1 in _TEST_NAN_STEPS:
            loss_sum = loss_sum * float("nan")
        scale = self.model.loss_scale_for_fsdp  # 1.0 unless FSDP can only average (older torch)
        (loss_sum * scale / n_tok_global if scale != 1.0 else loss_sum / n_tok_global).backward()
        dom = mb["domain_ids"].reshape(-1)
        valid = (mb["labels"].reshape(-1) != IGNORE).to(torch.float32)
        self.win["dom_loss"].scatter_add_(0, dom, per_tok.reshape(-1).float() * valid)
        self.win["dom_tok"].scatter_add_(0, dom, valid)
        return loss_sum.detach().float()

    # ---------------------------------------------------------------- logging (the only host syncs)
    def _reset_window(self):
        n = len(self.domains)
        z = lambda *s: torch.zeros(*s, device=self.device, dtype=torch.float32)  # noqa: E731
        self.win = {"loss_sum": z(()), "tokens": z(()), "dom_loss": z(n), "dom_tok": z(n), "nonfinite": [],
                    "steps": 0, "t_start": time.perf_counter(), "lr": 0.0, "grad_norm": z(()),
                    "last_loss": z(()), "last_tokens": z(())}
        self._streak = getattr(self, "_streak", [])

    def log_window(self):
        w = self.win
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - w["t_start"]
        packed = torch.cat([w["last_loss"].view(1), w["loss_sum"].view(1), w["dom_loss"], w["dom_tok"]])
        if self.world_size > 1:
            dist.all_reduce(packed)
        vals = packed.tolist()  # host sync (log step)
        n = len(self.domains)
        last_tok, win_tok = w["last_tokens"].item(), w["tokens"].item()
        flags = torch.stack([f for _, f, _ in w["nonfinite"]]).tolist()
        for (step, _, cursor), bad in zip(w["nonfinite"], flags):
            if bad:
                self._streak.append((step, cursor))
                log.warning("step %d: non-finite loss/grad norm; update skipped (samples %s)", step, cursor)
            else:
                self._streak = []
        tok_s = w["steps"] * self.tokens_per_step / max(elapsed, 1e-9)
        per_dev = tok_s / self.world_size
        rec = {"step": self.step, "loss": vals[0] / max(last_tok, 1.0), "loss_window": vals[1] / max(win_tok, 1.0),
               "domain_loss": {d: (vals[2 + i] / vals[2 + n + i] if vals[2 + n + i] else None)
                               for i, d in enumerate(self.domains)},
               "lr": w["lr"], "grad_norm": w["grad_norm"].item(), "tokens_per_s": tok_s,
               "tokens_per_s_per_device": per_dev, "tflops_per_device": per_dev * self.flops_per_token / 1e12,
               "mfu": (per_dev * self.flops_per_token / self.peak_flops) if self.peak_flops else None,
               "mfu_formula": MFU_FORMULA, "step_time_s": elapsed / max(w["steps"], 1),
               "peak_mem_gib": peak_memory_gib(self.device), "valid_tokens": last_tok,
               "skipped_steps": sum(flags), "world_size": self.world_size}
        self.metrics.log(rec)
        self.last_record = rec
        self._reset_window()
        k = self.cfg.train.max_nonfinite
        if k and len(self._streak) >= k:
            steps = [s for s, _ in self._streak]
            raise NonFiniteLossError(
                f"{len(steps)} consecutive non-finite steps ({steps[0]}..{steps[-1]}; updates skipped); first bad "
                f"batch = loader samples {self._streak[0][1]}. Lower --optim.lr, check the data at those samples, "
                f"or raise --train.max_nonfinite")

    @torch.no_grad()
    def validate(self) -> dict:
        """Held-out loss per domain (token-weighted over every rank's share of the validation rows)."""
        n = len(self.domains)
        sums = torch.zeros(2 * n, device=self.device, dtype=torch.float64)
        for batch in self.data.val_loader:
            mb = self._to_device(batch)
            _, per_tok = self.model(mb["input_ids"], position_ids=mb["position_ids"], cu_seqlens=mb.get("cu_seqlens"),
                                    labels=mb["labels"], loss_reduction="sum", return_per_token=True, cp=mb.get("cp"))
            dom = mb["domain_ids"].reshape(-1)
            valid = (mb["labels"].reshape(-1) != IGNORE).to(torch.float64)
            sums[:n].scatter_add_(0, dom, per_tok.reshape(-1).double() * valid)
            sums[n:].scatter_add_(0, dom, valid)
        if self.world_size > 1:
            dist.all_reduce(sums)
        v = sums.tolist()
        out = {d: (v[i] / v[n + i] if v[n + i] else None) for i, d in enumerate(self.domains)}
        self.metrics.log({"step": self.step, "val_loss": out})
        return out

    # ---------------------------------------------------------------- checkpoint / export
    def save(self):
        self.checkpointer.save(self.step, self.model, self.optimizer.opt,
                               {"loader": self.data.loader.state_dict(), "first_val": self.first_val})

    def export(self):
        out = self.run_dir / "export"
        if self.rank == 0:
            export_checkpoint(self.checkpointer.dir / f"step-{self.step}", out, dtype=self.cfg.checkpoint.export_dtype,
                              tokenizer_path=self.data.tokenizer_path)
        dist.barrier(group=self.cpu_group)
        self.export_dir = out

    def _to_device(self, batch: dict) -> dict:
        nb = self.device.type == "cuda"
        batch = data_setup.as_packed_row(batch)
        if self.cp is not None:  # on the host: this rank's two chunks + the attention plan (no device sync)
            batch = self.cp.shard(batch)
        # cu_seqlens stays on the host: the model validates it and reads the longest document there (no
        # device-to-host sync per micro step), then copies it to the device asynchronously.
        return {k: v.to(self.device, non_blocking=nb) if torch.is_tensor(v) and k != "cu_seqlens" else v
                for k, v in batch.items()}

    def summary(self) -> str:
        r, lines = self.last_record, [f"mid-training finished at step {self.step} ({self.world_size} rank(s))"]
        if self.first_val and self.last_val:
            lines.append("held-out loss per domain (start -> end):")
            for d in self.domains:
                a, b = self.first_val.get(d), self.last_val.get(d)
                if a is not None and b is not None:
                    lines.append(f"  {d:>10}: {a:.4f} -> {b:.4f} ({b - a:+.4f})")
        if r:
            mfu = f", MFU {100 * r['mfu']:.1f}%" if r.get("mfu") else ""
            lines.append(f"last train loss {r['loss']:.4f}; {r['tokens_per_s']:.0f} tokens/s "
                         f"({r['tflops_per_device']:.3f} TFLOP/s per device{mfu}); peak mem {r['peak_mem_gib']:.2f} GiB")
        lines.append(f"run dir: {self.run_dir} (metrics.jsonl, config.json, checkpoints/)")
        if getattr(self, "export_dir", None):
            lines.append(f"HF export: {self.export_dir}")
        return "\n".join(lines)

    def close(self, barrier: bool = True):
        """barrier=False after a failure: a peer may be dead or stuck in another collective, so do not wait."""
        self.metrics.close()
        if hasattr(self, "data"):
            self.data.close()
        if barrier:
            destroy_distributed()
        elif dist.is_initialized():
            dist.destroy_process_group()
