"""End-to-end training step: prism_fast's mid-training step vs a plain Hugging Face training step.

    python bench/bench_midtrain.py                      # CPU: SmolLM2-135M, bf16, 4 x 512 tokens per step
    python bench/bench_midtrain.py --device cuda --quick

Same model (SmolLM2-135M-Instruct from the bundled GGUF), same token rows, same optimizer hyperparameters.
Providers (each in its own process, so peak memory is clean):
  ours         prism_fast: FSDP2 (1 rank) with MixedPrecisionPolicy(bf16 params, fp32 reduce), fp32 master weights,
               packed row + cu_seqlens, loss = sum / global tokens through the chunked fused linear-CE (no [N, V]
               logits), fused AdamW with the on-device non-finite skip -- the exact calls Trainer.train_step makes.
               On CPU, like Trainer (train.keep_host_memory=true), freed host memory is kept for reuse
               (train/host_allocator.py: glibc mallopt), so MB-sized tensors are not page-faulted in every step.
  ours_compiled  the same with --parallel.compile=true: per-block torch.compile (one graph per block: the CPU
               attention is an opaque custom op) and the LM-head loss's row math compiled.
  hf_autocast  transformers AutoModelForCausalLM, fp32 weights, torch.autocast(bf16), model(labels=...) mean loss,
               torch.optim.AdamW (default foreach), clip_grad_norm_ -- what HF Trainer --bf16 does. Same numerics
               class as ours (fp32 master weights): the primary baseline.
  hf_bf16      same but the whole model in bf16 (bf16 weights + AdamW states): less memory, lossy updates.
  hf_autocast_keepmem  hf_autocast in a process with the same allocator setting as ours (to separate what the
               allocator buys from what our code buys; not in the default set).
Metrics: tokens/s (median step time after warmup) and peak resident memory during the steps (CPU: VmHWM after
resetting it through /proc/self/clear_refs once the model and optimizer exist; CUDA: max_memory_allocated).
Rows go to bench/results/midtrain.csv; ratios are printed from this one run.
Timing is LOCKSTEP: all providers are set up at once (one process each), then step i of every provider runs back to
back (in rotating order) before step i+1 of any, so a slow spell of a shared machine hits every provider alike.
Reported: median step time per provider and the median over steps of the per-step time ratio.
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

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import utils  # noqa: E402

PROVIDERS = ("ours_compiled", "ours", "hf_autocast", "hf_bf16", "hf_autocast_keepmem")


def _rows(seq_len, batch, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, seq_len), generator=g)


def _reset_peak_rss():
    """Return freed heap to the OS (glibc keeps it otherwise: setup garbage would count as step memory), then reset
    the VmHWM high-water mark so the peak covers only the training steps."""
    import gc
    gc.collect()
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_gib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def _setup_ours(args, device):
    from prism_fast.distributed import ParallelConfig, ParallelDims, init_distributed
    from prism_fast.train import optim
    from prism_fast.train.config import ModelSection
    from prism_fast.train.model_init import build_parallel_model
    if device.type == "cpu":            # what Trainer does for train.keep_host_memory=true (the default)
        from prism_fast.train.host_allocator import keep_freed_host_memory
        keep_freed_host_memory()
    init_distributed(device.type)
    pcfg = ParallelConfig(param_dtype="bf16", reduce_dtype="fp32", ac=args.ac, compile=args.compile)
    model, cfg, _ = build_parallel_model(ModelSection(path="smollm2"), pcfg, ParallelDims(world_size=1), device)
    opt = optim.Config(lr=1e-5, weight_decay=0.1, grad_clip=1.0).build(model)
    B, T = args.batch, args.seq_len
    ids = _rows(T, B, cfg.vocab_size).to(device)
    labels = torch.cat([ids[:, 1:], torch.full((B, 1), -100, device=device)], 1)    # no target across rows
    ids1, lab1 = ids.reshape(1, B * T), labels.reshape(1, B * T)
    cu = torch.arange(0, B * T + 1, T, dtype=torch.int32, device=device)
    dom = torch.zeros(B * T, dtype=torch.int64, device=device)
    dom_loss = torch.zeros(1, device=device)

    def step():
        n_tok = (lab1 != -100).sum().float()
        loss_sum, per_tok = model(ids1, cu_seqlens=cu, labels=lab1, loss_reduction="sum", return_per_token=True)
        (loss_sum / n_tok).backward()
        dom_loss.scatter_add_(0, dom, per_tok.reshape(-1).float())
        norm = opt.clip_grad_norm()
        opt.step((~torch.isfinite(norm)).float())
        return loss_sum.detach() / n_tok
    return step, cfg


def _setup_hf(args, device, pure_bf16):
    import transformers

    from prism_fast.models.hf_io import smollm2_gguf_path
    g = smollm2_gguf_path()
    model = transformers.AutoModelForCausalLM.from_pretrained(str(g.parent), gguf_file=g.name, dtype=torch.float32)
    model.to(device=device, dtype=torch.bfloat16 if pure_bf16 else torch.float32).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), eps=1e-10, weight_decay=0.1)
    ids = _rows(args.seq_len, args.batch, model.config.vocab_size).to(device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=not pure_bf16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()
    return step, model.config


def worker(args):
    """One provider. Protocol on stdin/stdout: prints READY after setup + warmup; each "step" line runs one step
    and answers "T <seconds>"; "done" answers "RESULT <json>" (peak memory, first loss) and exits."""
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.worker.startswith("ours"):
        args.compile = args.worker == "ours_compiled"
        step, _ = _setup_ours(args, device)
    else:
        if args.worker == "hf_autocast_keepmem" and device.type == "cpu":
            from prism_fast.train.host_allocator import keep_freed_host_memory
            keep_freed_host_memory()
        step, _ = _setup_hf(args, device, pure_bf16=args.worker == "hf_bf16")
    utils.sync(device)
    losses = [float(step()) for _ in range(args.warmup)]          # includes compilation for ours_compiled
    utils.sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    reset_ok = _reset_peak_rss()
    print("READY", flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "step":
            t0 = time.perf_counter()
            step()
            utils.sync(device)
            print(f"T {time.perf_counter() - t0}", flush=True)
        elif cmd == "done":
            break
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else _peak_rss_gib()
    print("RESULT " + json.dumps({"provider": args.worker, "peak_gib": peak,
                                  "peak_is_step_only": bool(reset_ok or device.type == "cuda"),
                                  "first_loss": losses[0] if losses else None}), flush=True)
    if args.worker.startswith("ours"):
        from prism_fast.distributed import destroy_distributed
        destroy_distributed()


def _read_until(proc, prefix):
    """Next stdout line of `proc` starting with `prefix` (other lines are echoed); None if the process ended."""
    for line in proc.stdout:
        if line.startswith(prefix):
            return line[len(prefix):].strip()
    return None


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--quick", action="store_true", help="fewer steps (GPU check script)")
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="timed lockstep steps per provider")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--ac", default="none")
    p.add_argument("--providers", default="ours_compiled,ours,hf_autocast",
                   help=f"comma-separated subset of {','.join(PROVIDERS)} (each process holds a model + AdamW: "
                        "~5-6 GiB each for SmolLM2 on CPU)")
    p.add_argument("--worker", choices=PROVIDERS, help=argparse.SUPPRESS)
    args = utils.parse_args(p)
    cuda = args.device == "cuda"
    args.seq_len = args.seq_len or (2048 if cuda else 512)
    args.batch = args.batch or (8 if cuda else 4)
    args.steps = args.steps or ((5 if cuda else 4) if args.quick else (20 if cuda else 8))
    args.compile = False
    if args.worker:
        return worker(args)

    provs = [x for x in args.providers.split(",") if x]
    for x in provs:
        if x not in PROVIDERS:
            raise SystemExit(f"unknown provider {x!r}; choose from {PROVIDERS}")
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    procs, logs = {}, {}
    for prov in provs:
        cmd = [sys.executable, __file__, "--worker", prov, "--device", args.device, "--seq-len", str(args.seq_len),
               "--batch", str(args.batch), "--warmup", str(args.warmup), "--threads", str(args.threads),
               "--ac", args.ac]
        # each ours-worker is its own 1-rank torch.distributed job (init_distributed picks a free port)
        penv = {k: v for k, v in env.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
        logs[prov] = tempfile.TemporaryFile(mode="w+")
        procs[prov] = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=logs[prov],
                                       text=True, env=penv)
    failed = set()
    for prov, proc in procs.items():
        if _read_until(proc, "READY") is None:
            logs[prov].seek(0)
            print(f"{prov}: FAILED during setup\n{logs[prov].read()[-3000:]}")
            failed.add(prov)
    live = [x for x in provs if x not in failed]
    times = {x: [] for x in live}
    for i in range(args.steps):
        order = live[i % len(live):] + live[:i % len(live)] if live else []
        for prov in order:
            procs[prov].stdin.write("step\n")
            procs[prov].stdin.flush()
            t = _read_until(procs[prov], "T ")
            if t is None:
                raise SystemExit(f"{prov} died during step {i}")
            times[prov].append(float(t))
    results = {}
    for prov in live:
        procs[prov].stdin.write("done\n")
        procs[prov].stdin.flush()
        results[prov] = json.loads(_read_until(procs[prov], "RESULT "))
        procs[prov].wait()
    for prov in failed:
        procs[prov].kill()

    tokens = args.seq_len * args.batch
    dev = utils.device_name(args.device)
    load1 = os.getloadavg()[0]
    cfg = {"model": "SmolLM2-135M-Instruct", "seq_len": args.seq_len, "batch": args.batch, "dtype": "bf16",
           "timing": "lockstep", "steps": args.steps, "ac": args.ac, "torch_threads": torch.get_num_threads()}
    print(f"\nmid-training step, SmolLM2-135M, {args.batch} x {args.seq_len} tokens/step, bf16, on {dev} "
          f"(lockstep, {args.steps} steps each, load1 {load1:.1f})")
    print(f"{'provider':<15}{'ms/step p50':>12}{'(min-max)':>18}{'tokens/s':>11}{'peak GiB':>10}")
    rows = []
    for prov, r in results.items():
        ts = sorted(times[prov])
        p50 = statistics.median(ts) * 1e3
        r["tps"] = tokens / (p50 / 1e3)
        print(f"{prov:<15}{p50:>12.0f}{f'({ts[0] * 1e3:.0f}-{ts[-1] * 1e3:.0f})':>18}{r['tps']:>11.0f}"
              f"{r['peak_gib']:>10.2f}")
        rows.append(utils.row("midtrain", prov, "full", "step_time", "ms", tokens, p50, ts[0] * 1e3, ts[-1] * 1e3,
                              config=cfg, device=args.device))
        rows.append(utils.row("midtrain", prov, "full", "tokens_per_s", "tok/s", tokens, r["tps"], config=cfg,
                              device=args.device))
        rows.append(utils.row("midtrain", prov, "full", "peak_memory", "GiB", tokens, r["peak_gib"], config=cfg,
                              device=args.device))
    for ours in ("ours_compiled", "ours"):
        for base in ("hf_autocast", "hf_bf16", "hf_autocast_keepmem"):
            if ours in results and base in results:
                step_ratio = statistics.median(b / o for o, b in zip(times[ours], times[base]))
                mem = results[ours]["peak_gib"] / results[base]["peak_gib"]
                print(f"{ours} vs {base}: {step_ratio:.2f}x tokens/s (median of per-step ratios), "
                      f"{mem:.2f}x peak memory")
                rows.append(utils.row("midtrain", f"{ours}_vs_{base}", "full", "speedup", "x", tokens, step_ratio,
                                      config=cfg, device=args.device))
    mem = "peak RSS during the steps (VmHWM reset after setup)" if args.device == "cpu" else "max_memory_allocated"
    print(f"memory = {mem}; losses at step 1: " +
          ", ".join(f"{k} {v['first_loss']:.4f}" for k, v in results.items() if v.get("first_loss") is not None))
    path = utils.append_rows("midtrain", rows)
    print(f"rows appended to {path}")


if __name__ == "__main__":
    main()
