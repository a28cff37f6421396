"""One GRPO step, generation included: prism_fast.rl vs TRL's GRPOTrainer (use_vllm=False), side by side in one run.

    python bench/bench_rl.py            # 8 prompts x 8 samples, 256 new tokens, 2 steps each (the issue's setting)
    python bench/bench_rl.py --quick    # 4 prompts x 4 samples, 48 new tokens, 1 step each (minutes)
    python bench/bench_rl.py --quick --precision bf16   # both sides compute in bf16 (fp32 master weights)

Same model (SmolLM2-135M-Instruct, the HF directory of smollm2_hf_dir()), same prompts (the bundled math set, chat
template), same group size, max new tokens, sampling (T = 1, top-p 1), lr, beta (KL to a reference; 0 = none),
eps 0.2, one optimizer update per rollout batch, the same reward function (prism_fast.rewards.score).
Precision (--precision, like for like; fp32 master weights and Adam state on both sides):
  fp32  ours --parallel.param_dtype=fp32; TRL bf16=False.
  bf16  ours --parallel.param_dtype=bf16 --parallel.reduce_dtype=fp32 (FSDP2 mixed precision: bf16 gathered weights
        for the update AND for generation); TRL bf16=True (its default: CPU autocast in the update; its generate
        runs outside autocast, on the fp32 weights).
TRL's gradient_checkpointing stays at its default (True in trl 1.x: recomputes each layer in backward, less memory,
more time); ours keeps every activation. Both are recorded in the config row. Each provider reports the dtype its
blocks actually computed in (a forward hook on one layer, with and without grad) and its parameter dtype.
Zero-std groups are NOT dropped on our side here (TRL trains on them), so both do the same work.
  ours  RLTrainer.train_step (rollout engine with continuous batching on the KV cache, packed fused log-probs,
        global-count normalization, fused AdamW).
  trl   GRPOTrainer.train() for the same number of steps (HF generate with padding, full-logits log-probs).
Each provider runs in its own process (clean peak memory: VmHWM reset after setup). Reported per provider: median
step time, tokens/s = (generated + trained tokens) / step time, peak RSS during the steps, and each phase's share
(ours: generate / reward wait / logprobs / update / ref update; trl: generate (its _generate), reward
(_calculate_rewards), the rest = log-probs + update). Rows to bench/results/rl.csv.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import utils  # noqa: E402
from bench_midtrain import _peak_rss_gib, _reset_peak_rss  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _prompts(n: int) -> list[dict]:
    from prism_fast.rl.prompts import read_records
    return read_records(ROOT / "prism_fast/rl/prompts/math.jsonl")[:n]


def run_ours(args) -> dict:
    from prism_fast.recipes import get_rl_recipe
    from prism_fast.rl.trainer import RLTrainer
    from prism_fast.train.config import apply_overrides
    tmp = tempfile.mkdtemp(prefix="bench_rl_")
    with open(f"{tmp}/prompts.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in _prompts(args.prompts * (args.steps + 1)))
    cfg = apply_overrides(get_rl_recipe("demo")(run_dir=f"{tmp}/run"), [
        f"--prompts.files=[\"{tmp}/prompts.jsonl\"]", f"--rollout.prompts_per_step={args.prompts}",
        f"--rollout.group_size={args.group}", f"--rollout.max_new_tokens={args.new_tokens}",
        f"--rollout.max_batch={args.prompts * args.group}", f"--optim.lr={args.lr}", f"--loss.kl_beta={args.beta}",
        "--loss.eps_high=0.2", "--loss.filter_zero_std=false", f"--train.steps={args.steps + 1}",
        "--checkpoint.interval=0", "--checkpoint.save_final=false", "--metrics.progress_bar=false",
        f"--parallel.param_dtype={args.precision}", "--parallel.reduce_dtype=fp32", *args.ours])
    tr = RLTrainer(cfg)
    seen = _dtype_probe(tr.model.blocks[0])
    tr.train_step()                       # warmup step (first-call allocations); not timed
    tr.step += 1
    _reset_peak_rss()
    recs = []
    for _ in range(args.steps):
        recs.append(tr.train_step())
        tr.step += 1
    peak = _peak_rss_gib()
    tr.close()
    phases = {k: statistics.median(r["seconds"][k] for r in recs) for k in recs[0]["seconds"]}
    step_s = statistics.median(r["step_time_s"] for r in recs)
    toks = statistics.median(r["generated_tokens"] + r["trained_tokens"] for r in recs)
    return {"step_s": step_s, "tokens": toks, "peak_gib": peak, "phases": phases,
            "reward": statistics.mean(r["reward"] for r in recs), "compute_dtypes": sorted(seen),
            "param_dtype": str(next(tr.model.parameters()).dtype), "gradient_checkpointing": False,
            "logprob_diff_max": max((r["logprob_diff_max"] or 0.0) for r in recs),
            "logprob_diff_mean": statistics.mean((r["logprob_diff_mean"] or 0.0) for r in recs)}


def _dtype_probe(module) -> set:
    """Forward hook on one layer: the set of 'grad:<dtype>' / 'no_grad:<dtype>' of its outputs (the compute dtype
    each phase really ran in: generation is no-grad, the update has grad)."""
    import torch
    seen: set = set()

    def hook(_m, _inp, out):
        out = out[0] if isinstance(out, tuple) else out
        seen.add(f"{'grad' if torch.is_grad_enabled() else 'no_grad'}:{str(out.dtype).removeprefix('torch.')}")
    module.register_forward_hook(hook)
    return seen


def run_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from prism_fast.models import smollm2_hf_dir
    from prism_fast.rewards import score
    torch.manual_seed(0)
    recs = _prompts(args.prompts * (args.steps + 1))
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}], "reference": r["reference"]}
                            for r in recs])
    n_tok = {"gen": 0}

    def reward(completions, reference, completion_ids=None, **_):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        if completion_ids is not None:
            n_tok["gen"] += sum(len(c) for c in completion_ids)
        return [r.reward for r in score([{"domain": "math", "response": t, "reference": ref}
                                         for t, ref in zip(texts, reference)], require_think=False)]

    out = tempfile.mkdtemp(prefix="bench_rl_trl_")
    cfg = GRPOConfig(output_dir=out, use_vllm=False, num_generations=args.group,
                     per_device_train_batch_size=args.prompts * args.group, gradient_accumulation_steps=1,
                     steps_per_generation=1, max_completion_length=args.new_tokens, temperature=1.0, top_p=1.0,
                     learning_rate=args.lr, beta=args.beta, epsilon=0.2, loss_type="bnpo", max_steps=args.steps + 1,
                     logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                     bf16=args.precision == "bf16", seed=0,
                     lr_scheduler_type="constant", dataloader_num_workers=0, disable_tqdm=True)
    trainer = GRPOTrainer(model=str(smollm2_hf_dir()), reward_funcs=[reward], args=cfg, train_dataset=ds)
    seen = _dtype_probe(trainer.model.model.layers[0].mlp.down_proj)   # a Linear: autocast shows in its output
    times = {"generate": [], "reward": [], "step": []}

    def timed(name, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                times[name].append(time.perf_counter() - t0)
        return wrapper

    trainer._generate = timed("generate", trainer._generate)
    trainer._calculate_rewards = timed("reward", trainer._calculate_rewards)
    marks = {}

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            if len(times["step"]) == 1 and "reset" not in marks:   # after the warmup step
                marks["reset"] = _reset_peak_rss()
            marks["t0"] = time.perf_counter()
            marks["gen0"] = n_tok["gen"]

        def on_step_end(self, *a, **k):
            times["step"].append(time.perf_counter() - marks["t0"])
            times.setdefault("tokens", []).append(2 * (n_tok["gen"] - marks["gen0"]))   # generated + trained

    trainer.add_callback(StepTimer())
    trainer.train()
    peak = _peak_rss_gib()
    steps, gens, rews = times["step"][1:], times["generate"][1:], times["reward"][1:]
    step_s = statistics.median(steps)
    g, r = statistics.median(gens), statistics.median(rews)
    return {"step_s": step_s, "tokens": statistics.median(times["tokens"][1:]), "peak_gib": peak,
            "phases": {"generate": g, "reward": r, "logprobs+update": step_s - g - r}, "compute_dtypes": sorted(seen),
            "param_dtype": str(next(trainer.model.parameters()).dtype),
            "gradient_checkpointing": bool(cfg.gradient_checkpointing)}


def worker(args) -> int:
    res = (run_ours if args.worker == "ours" else run_trl)(args)
    print("RESULT " + json.dumps(res), flush=True)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--prompts", type=int, default=None)
    p.add_argument("--group", type=int, default=None)
    p.add_argument("--new-tokens", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="timed steps per provider (after one warmup step)")
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--beta", type=float, default=0.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="compute dtype of both providers (fp32 master weights either way)")
    p.add_argument("--providers", default="ours,trl")
    p.add_argument("--ours", action="append", default=[], metavar="--SECTION.FIELD=VALUE",
                   help="extra config override for our trainer (repeatable), e.g. --ours=--train.keep_host_memory=false")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    q = args.quick
    args.prompts = args.prompts or (4 if q else 8)
    args.group = args.group or (4 if q else 8)
    args.new_tokens = args.new_tokens or (48 if q else 256)
    args.steps = args.steps or (1 if q else 2)
    if args.worker:
        import torch
        torch.set_num_threads(args.threads)
        return worker(args)
    results = {}
    for prov in args.providers.split(","):
        cmd = [sys.executable, __file__, "--worker", prov, "--prompts", str(args.prompts), "--group", str(args.group),
               "--new-tokens", str(args.new_tokens), "--steps", str(args.steps), "--lr", str(args.lr), "--beta",
               str(args.beta), "--threads", str(args.threads), "--precision", args.precision,
               *[f"--ours={o}" for o in args.ours]]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false",
                   HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(f"{prov} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}", file=sys.stderr)
            return 1
        results[prov] = json.loads(lines[-1][7:])
    load = os.getloadavg()
    config = {"prompts": args.prompts, "group": args.group, "new_tokens": args.new_tokens, "steps": args.steps,
              "lr": args.lr, "beta": args.beta, "threads": args.threads, "precision": args.precision,
              **({"ours_overrides": args.ours} if args.ours else {}),
              "trl_gradient_checkpointing": results.get("trl", {}).get("gradient_checkpointing"),
              "load_avg_1m": round(load[0], 2)}
    mode = ("quick" if q else "full") + ("" if args.precision == "fp32" else f"_{args.precision}")
    rows = []
    print(f"RL step, {args.prompts} prompts x {args.group} samples, {args.new_tokens} new tokens, {args.precision}; "
          f"{utils.device_name('cpu')}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    for prov, r in results.items():
        tok_s = r["tokens"] / r["step_s"]
        shares = ", ".join(f"{k} {100 * v / r['step_s']:.0f}%" for k, v in r["phases"].items())
        print(f"  {prov:>5}: step {r['step_s']:.1f} s, {tok_s:.1f} tokens/s, peak RSS {r['peak_gib']:.2f} GiB; "
              f"{shares}")
        print(f"         params {r['param_dtype']}, layer outputs {', '.join(r['compute_dtypes'])}, gradient "
              f"checkpointing {r['gradient_checkpointing']}" + (f", |generator - trainer logp| mean "
              f"{r['logprob_diff_mean']:.3g} max {r['logprob_diff_max']:.3g}" if "logprob_diff_max" in r else ""))
        for metric, unit, val in (("step_time", "s", r["step_s"]), ("tokens_per_s", "tok/s", tok_s),
                                  ("peak_rss", "GiB", r["peak_gib"])):
            rows.append(utils.row("rl_step", prov, mode, metric, unit, args.new_tokens, val, config=config,
                                  device="cpu"))
        for k, v in r["phases"].items():
            rows.append(utils.row("rl_step", prov, mode, f"share_{k}", "fraction", args.new_tokens,
                                  v / r["step_s"], config=config, device="cpu"))
    if "ours" in results and "trl" in results:
        o, t = results["ours"], results["trl"]
        ratio = (o["tokens"] / o["step_s"]) / (t["tokens"] / t["step_s"])
        print(f"  ours / trl: {ratio:.2f}x tokens/s, {t['step_s'] / o['step_s']:.2f}x step time, "
              f"memory {o['peak_gib'] / t['peak_gib']:.2f}x")
        rows.append(utils.row("rl_step", "ours/trl", mode, "tokens_per_s_ratio", "x", args.new_tokens, ratio,
                              config=config, device="cpu"))
    print(f"rows -> {utils.append_rows('rl', rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
