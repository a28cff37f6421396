"""The GRPO trainer: generate -> reward -> advantages -> update -> reference update -> engine weight sync.

One step (one optimizer update; on-policy, paper):
1. generate: this rank's prompts_per_step / W prompts x G samples through the rollout engine, which runs on the
   policy itself (FSDP2 shards gathered once per generate() call; no second copy of the weights to keep in sync).
2. reward: `Rewarder.submit()` returns at once; while the verifier processes score, the trainer computes the
   reference (and, with loss.old_logprobs=recompute, the old-policy) log-probs of every sequence.
3. advantages per group; groups with zero reward std are dropped from the update (loss.filter_zero_std).
4. update: the kept sequences packed into micro-batches of <= train.max_tokens_per_micro tokens; per-token loss
   weights come from the GLOBAL counts (all ranks, all micro-batches) computed before the first backward, so loss
   and gradients do not depend on micro-batching, packing or world size. Ranks with fewer micro-batches run empty
   forwards/backwards so every rank issues the same FSDP collectives.
5. Polyak reference update on local shards (ref_policy.py), then engine.update_weights().
Host syncs: a few per step (reward results, global counts, metrics); a step is seconds to minutes long, so they
are noise. Resume: the step is the data position (prompts.py) and sampling is seeded per (step, prompt), so a run
killed at any point and resumed from its last checkpoint regenerates the same rollouts and losses bit for bit.
"""
from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist

from prism_fast.distributed import destroy_distributed
from prism_fast.rl import logprobs as lp_mod
from prism_fast.rl.config import RLJobConfig
from prism_fast.rl.losses import group_advantages, per_token_policy_loss, stats_means, token_weights, zero_std_groups
from prism_fast.rl.prompts import PromptSet
from prism_fast.rl.ref_policy import RefPolicy
from prism_fast.rl.rollout import generate
from prism_fast.train.checkpoint import Checkpointer
from prism_fast.train.preemption import Preemption
from prism_fast.train.config import save_json
from prism_fast.train.process import start_process
from prism_fast.train.metrics import MetricsLogger, peak_memory_gib
from prism_fast.ops.kernel_choice import replace_kernels
from prism_fast.train.model_init import build_parallel_model

log = logging.getLogger(__name__)
PHASES = ("generate", "reward_wait", "logprobs", "update", "ref_update", "weight_sync")
_STAT_ORDER = ("tokens", "clip_low", "clip_high", "kl", "ratio", "tis")


class RLTrainer:
    def __init__(self, cfg: RLJobConfig):
        self.cfg = cfg
        tc = cfg.train
        cfg.validate(int(os.environ.get("WORLD_SIZE", "1")))
        rt = start_process(tc)
        self.rank, self.world_size, self.device, self.cpu_group = rt.rank, rt.world_size, rt.device, rt.cpu_group
        dims = cfg.parallel.build(self.world_size)
        self.run_dir = Path(tc.run_dir).expanduser()
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(tc.seed + self.rank)

        self.model, self.model_cfg, tok_path = build_parallel_model(cfg.model, cfg.parallel, dims, self.device,
                                                                    kernels=cfg.kernels)
        if self.rank == 0:                           # the resolved kernel names (never "auto") go into the run
            save_json(replace_kernels(cfg, self.model.kernels), self.run_dir / "config.json")
            print(self.model.kernels.describe(), flush=True)
        self.ref = None
        if cfg.loss.kl_beta > 0:
            ref_model, _, _ = build_parallel_model(cfg.model, cfg.parallel, dims, self.device, kernels=cfg.kernels)
            self.ref = RefPolicy(ref_model, self.model, tau=cfg.ref.tau, update_every=cfg.ref.update_every)
        from prism_fast.models import load_tokenizer, smollm2_hf_dir  # noqa: PLC0415
        self.tokenizer_path = tok_path or str(smollm2_hf_dir())   # tiny random models use the SmolLM2 vocabulary
        self.tokenizer = load_tokenizer(self.tokenizer_path)
        self.optimizer = cfg.optim.build(self.model)
        self.schedule = cfg.schedule.build(tc.steps)
        pc = cfg.prompts
        self.prompts = PromptSet(pc.resolved_files(), self.tokenizer, seed=pc.seed,
                                 max_prompt_tokens=pc.max_prompt_tokens, limit_per_file=pc.limit_per_file,
                                 system_prompt=pc.system_prompt)
        self.domains = self.prompts.domains
        from prism_fast.inference import Engine  # noqa: PLC0415
        from prism_fast.rewards import Rewarder  # noqa: PLC0415
        with torch.no_grad():
            # FSDP2 initializes lazily at the first forward THROUGH THE ROOT; the engine drives the blocks itself,
            # so without this a block would become its own FSDP root and the trainer's forward would then fail.
            lp_mod.dummy_forward(self.model, self.device, 1.0)
        self.engine = Engine(self.model, max_batch=cfg.rollout.max_batch, tokenizer=self.tokenizer)
        rc = cfg.reward
        self.rewarder = Rewarder(num_workers=rc.num_workers or None, timeout_s=rc.timeout_s,
                                 require_think=rc.require_think, truncation_penalty=rc.truncation_penalty,
                                 repetition_penalty=rc.repetition_penalty, repetition_ngram=rc.repetition_ngram)
        self.checkpointer = Checkpointer(cfg.checkpoint, self.run_dir, rank=self.rank, world_size=self.world_size,
                                         model_hf_config=self.model_cfg.hf_config or None,
                                         control_group=self.cpu_group)
        self.step = 0
        self.filter_state = {"groups": 0, "zero_std_groups": 0, "skipped_updates": 0}
        resume = self.checkpointer.find_resume()
        if resume is not None:
            st = self.checkpointer.load(resume, self.model, self.optimizer.opt, seed=tc.seed, extra=self._extra())
            self.step = st["step"]
            self.filter_state = dict(st.get("filter_state", self.filter_state))
            self.engine.update_weights()
        self.metrics = MetricsLogger(cfg.metrics, self.run_dir, rank=self.rank, total_steps=tc.steps,
                                     start_step=self.step, desc="rl")
        self.history: list[dict] = []
        # SIGTERM: finish the current step, checkpoint, exit 0 (train/preemption.py)
        self.preemption = Preemption(cfg.checkpoint.save_on_sigterm, self.world_size, self.cpu_group)
        if self.rank == 0:
            log.info("run %s: world %d, %d prompts (%s), %d x %d rollouts/step, resume=%s", self.run_dir,
                     self.world_size, len(self.prompts), ",".join(self.domains), cfg.rollout.prompts_per_step,
                     cfg.rollout.group_size, resume)

    def _extra(self) -> dict:
        return {"ref": self.ref.model} if self.ref is not None else {}

    # ---------------------------------------------------------------- loop
    def train(self) -> str:
        tc, ck = self.cfg.train, self.cfg.checkpoint
        while self.step < tc.steps:
            rec = self.train_step()
            self.step += 1
            self.metrics.advance()
            if self.step % self.cfg.metrics.log_every == 0 or self.step == tc.steps:
                self.metrics.log(rec)
            self.history.append(rec)
            last = self.step == tc.steps
            saved = (ck.interval and self.step % ck.interval == 0 and not last) or (last and ck.save_final)
            if saved:
                self.save()
            if self.preemption.agreed():
                if not saved:
                    self.save()
                log.warning("SIGTERM: checkpoint at step %d written, exiting", self.step)
                return "preempted"
        if ck.export_final and ck.save_final:
            self.export()
        return "done"

    def _all_reduce(self, t: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(t, op=op)
        return t

    @contextmanager
    def _phase(self, times: dict, name: str):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        times[name] = times.get(name, 0.0) + time.perf_counter() - t0

    def train_step(self) -> dict:
        cfg, rc, lc = self.cfg, self.cfg.rollout, self.cfg.loss
        times: dict[str, float] = {}
        t_step = time.perf_counter()
        lr = cfg.optim.lr * self.schedule(self.step)
        self.optimizer.set_lr(lr)
        local = self.prompts.for_step(self.step, rc.prompts_per_step, self.rank, self.world_size)
        with self._phase(times, "generate"):
            ro = generate(self.engine, local, rc, seed=cfg.train.seed, step=self.step, chunks=rc.generate_chunks)
        job = self.rewarder.submit(ro.reward_items())
        T, dev, G = rc.temperature, self.device, rc.group_size
        with self._phase(times, "logprobs"):               # overlaps with the verifiers scoring `job`
            micro_all = lp_mod.pack(ro.prompt_ids, ro.response_ids, cfg.train.max_tokens_per_micro)
            n_all = int(self._all_reduce(torch.tensor([len(micro_all)]), dist.ReduceOp.MAX).item())
            R = int(ro.gen_logp.numel())
            ref_lp = (lp_mod.batch_logprobs(self.ref.model, micro_all, R, temperature=T, device=dev, num_micro=n_all)
                      if self.ref is not None else None)
            old_lp = (lp_mod.batch_logprobs(self.model, micro_all, R, temperature=T, device=dev, num_micro=n_all)
                      if lc.old_logprobs == "recompute" else None)
        with self._phase(times, "reward_wait"):
            results = job.result()
        rewards = torch.tensor([r.reward for r in results], dtype=torch.float32)
        adv_seq = group_advantages(rewards, G, scale=lc.adv_scale, eps=lc.adv_eps)
        zero = zero_std_groups(rewards, G)
        keep_group = ~zero if lc.filter_zero_std else torch.ones_like(zero)
        kept = [s for s in range(ro.num_seqs) if keep_group[s // G]]

        # ---- global counts of the update batch (before any micro-batching) ----
        lens = torch.tensor(ro.lengths, dtype=torch.long)
        counts = self._all_reduce(torch.tensor([float(lens[kept].sum()) if kept else 0.0, float(len(kept))],
                                               dtype=torch.float64))
        n_tok, n_seq = counts[0].item(), counts[1].item()
        tok_idx = ro.token_index(kept)
        kept_lens = lens[kept] if kept else lens[:0]
        flat = {"gen": ro.gen_logp[tok_idx], "adv": adv_seq[kept].repeat_interleave(kept_lens) if kept else
                torch.zeros(0), "ref": ref_lp[tok_idx.to(dev)] if ref_lp is not None else None,
                "old": old_lp[tok_idx.to(dev)] if old_lp is not None else None}
        seq_len_tok = kept_lens.float().repeat_interleave(kept_lens)
        w_flat = token_weights(torch.ones_like(seq_len_tok, dtype=torch.bool), lc.agg, seq_lens=seq_len_tok,
                               num_tokens=n_tok, num_seqs=n_seq, norm_len=rc.max_new_tokens)
        flat = {k: (v.to(dev) if v is not None else None) for k, v in flat.items()}
        w_flat = w_flat.to(dev)

        sums = {k: torch.zeros((), device=dev) for k in _STAT_ORDER}
        loss_sum, ent_sum = torch.zeros((), device=dev), torch.zeros((), device=dev)
        diff_sum, diff_max = torch.zeros((), device=dev), torch.zeros((), device=dev)
        grad_norm = torch.zeros(())
        with self._phase(times, "update"):
            if n_tok > 0:
                micro = lp_mod.pack([ro.prompt_ids[s] for s in kept], [ro.response_ids[s] for s in kept],
                                    cfg.train.max_tokens_per_micro)
                # resp_idx of these micro-batches indexes the kept subset's flat order, the order of `flat`
                n_mb = int(self._all_reduce(torch.tensor([len(micro)]), dist.ReduceOp.MAX).item())
                scale = self.model.loss_scale_for_fsdp
                for mb in micro:
                    lp, ent = lp_mod.micro_logprobs(self.model, mb, temperature=T, entropy=True, device=dev)
                    i = mb.resp_idx.to(dev)
                    old = lp.detach() if flat["old"] is None else flat["old"][i]
                    per_tok, st = per_token_policy_loss(
                        lp, old, flat["adv"][i], torch.ones_like(lp, dtype=torch.bool),
                        ref_logp=None if flat["ref"] is None else flat["ref"][i], gen_logp=flat["gen"][i],
                        eps_low=lc.eps_low, eps_high=lc.eps_high, kl_beta=lc.kl_beta, kl_estimator=lc.kl_estimator,
                        tis_cap=lc.tis_cap, variant=lc.variant, seq_ids=mb.seq_ids.to(dev))
                    loss = (per_tok * w_flat[i]).sum()
                    (loss * scale if scale != 1.0 else loss).backward()
                    loss_sum += loss.detach()
                    for k, v in st.items():
                        sums[k] += v
                    ent_sum += ent.detach().sum()
                    d = (lp.detach() - flat["gen"][i]).abs()
                    diff_sum += d.sum()
                    diff_max = torch.maximum(diff_max, d.max())
                for _ in range(n_mb - len(micro)):
                    lp_mod.dummy_forward(self.model, dev, T).backward()
                grad_norm = self.optimizer.clip_grad_norm()
                self.optimizer.step((~torch.isfinite(grad_norm)).to(torch.float32))
            else:
                self.filter_state["skipped_updates"] += 1
        with self._phase(times, "ref_update"):
            if self.ref is not None:
                self.ref.maybe_update(self.step + 1)
        with self._phase(times, "weight_sync"):
            self.engine.update_weights()
        step_s = time.perf_counter() - t_step
        return self._record(ro, results, rewards, zero, sums, loss_sum, ent_sum, diff_sum, diff_max, grad_norm, lr,
                            times, step_s, n_tok)

    # ---------------------------------------------------------------- metrics (one all-reduce per step)
    def _record(self, ro, results, rewards, zero, sums, loss_sum, ent_sum, diff_sum, diff_max, grad_norm, lr, times,
                step_s, n_tok) -> dict:
        D = len(self.domains)
        dom = torch.tensor([self.domains.index(p.domain) for p in ro.prompts])
        correct = torch.tensor([float(r.correct >= 1.0) for r in results])
        per_dom = torch.zeros(3, D, dtype=torch.float64)
        per_dom[0].index_add_(0, dom, rewards.double())
        per_dom[1].index_add_(0, dom, correct.double())
        per_dom[2].index_add_(0, dom, torch.ones(len(dom), dtype=torch.float64))
        rw = self.rewarder.counters(reset=True)
        host = torch.tensor([rewards.double().sum().item(), len(rewards), sum(ro.lengths), sum(ro.truncated),
                             int(zero.sum()), len(zero), rw.get("n_timeout", 0), rw.get("n_crash", 0)],
                            dtype=torch.float64)
        dev_part = torch.stack([loss_sum, ent_sum, diff_sum, *[sums[k] for k in _STAT_ORDER]]).double().cpu()
        packed = self._all_reduce(torch.cat([host, dev_part, per_dom.reshape(-1)]))
        dmax = self._all_reduce(diff_max.detach().double().cpu().reshape(1), dist.ReduceOp.MAX).item()
        times_t = self._all_reduce(torch.tensor([times.get(p, 0.0) for p in PHASES] + [step_s],
                                                dtype=torch.float64), dist.ReduceOp.MAX).tolist()
        v = packed.tolist()
        (r_sum, n, len_sum, n_trunc, n_zero, n_groups, n_timeout, n_crash, loss, ent, dsum) = v[:11]
        st = dict(zip(_STAT_ORDER, (torch.tensor(x) for x in v[11:11 + len(_STAT_ORDER)])))
        pd = torch.tensor(v[11 + len(_STAT_ORDER):]).view(3, D)
        self.filter_state["groups"] += int(n_groups)
        self.filter_state["zero_std_groups"] += int(n_zero)
        ntok = max(st["tokens"].item(), 1.0)
        means = {k: x.item() for k, x in stats_means(st).items()}
        trained = n_tok
        rec = {"step": self.step + 1, "reward": r_sum / n, "loss": loss,
               "reward_per_domain": {d: (pd[0, i].item() / pd[2, i].item() if pd[2, i] else None)
                                     for i, d in enumerate(self.domains)},
               "pass_rate_per_domain": {d: (pd[1, i].item() / pd[2, i].item() if pd[2, i] else None)
                                        for i, d in enumerate(self.domains)},
               "response_length_mean": len_sum / n, "truncated_frac": n_trunc / n,
               "zero_std_frac": n_zero / max(n_groups, 1), "entropy": ent / ntok if trained else None,
               "kl": means.get("kl", 0.0) if trained else None, "clip_frac_low": means.get("clip_frac_low"),
               "clip_frac_high": means.get("clip_frac_high"), "ratio_mean": means.get("ratio_mean"),
               "tis_mean": means.get("tis_mean"), "logprob_diff_max": dmax if trained else None,
               "logprob_diff_mean": dsum / ntok if trained else None,
               "grad_norm": float(grad_norm) if trained else None, "lr": lr,
               "generated_tokens": int(len_sum), "trained_tokens": int(trained),
               "tokens_per_s": (len_sum + trained) / max(times_t[-1], 1e-9), "step_time_s": times_t[-1],
               "seconds": {p: times_t[i] for i, p in enumerate(PHASES)},
               "reward_timeouts": int(n_timeout), "reward_crashes": int(n_crash),
               "peak_mem_gib": peak_memory_gib(self.device), "world_size": self.world_size}
        return rec

    # ---------------------------------------------------------------- checkpoint / export
    def save(self):
        self.checkpointer.save(self.step, self.model, self.optimizer.opt,
                               {"filter_state": self.filter_state,
                                "prompt_position": self.step * self.cfg.rollout.prompts_per_step},
                               extra=self._extra())

    def export(self):
        from prism_fast.train.hf_export import export_checkpoint  # noqa: PLC0415
        out = self.run_dir / "export"
        if self.rank == 0:
            export_checkpoint(self.checkpointer.dir / f"step-{self.step}", out, dtype=self.cfg.checkpoint.export_dtype,
                              tokenizer_path=self.tokenizer_path)
        if dist.is_initialized():
            dist.barrier(group=self.cpu_group)
        self.export_dir = out

    def summary(self) -> str:
        h = self.history
        lines = [f"RL finished at step {self.step} ({self.world_size} rank(s))"]
        if h:
            k = max(1, min(5, len(h) // 3))
            first = sum(r["reward"] for r in h[:k]) / k
            last = sum(r["reward"] for r in h[-k:]) / k
            lines.append(f"mean reward, first {k} steps -> last {k} steps: {first:.3f} -> {last:.3f}")
            lines.append(f"last step: {h[-1]['step_time_s']:.1f} s, {h[-1]['tokens_per_s']:.0f} tokens/s, "
                         f"peak mem {h[-1]['peak_mem_gib']:.2f} GiB")
        lines.append(f"run dir: {self.run_dir} (metrics.jsonl, config.json, checkpoints/)")
        if getattr(self, "export_dir", None):
            lines.append(f"HF export: {self.export_dir}")
        return "\n".join(lines)

    def close(self, barrier: bool = True):
        """barrier=False after a failure: a peer may be dead or stuck in another collective, so do not wait."""
        if hasattr(self, "metrics"):
            self.metrics.close()
        if hasattr(self, "rewarder"):
            self.rewarder.close()
        if barrier:
            destroy_distributed()
        elif dist.is_initialized():
            dist.destroy_process_group()
