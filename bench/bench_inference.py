"""Rollout throughput: prism_fast.inference.Engine vs transformers' generate on SmolLM2-135M-Instruct.

Workload: 64 chat requests (the tokenizer's chat template) with uneven prompts (short questions to long pasted
passages) and uneven answers (greedy until EOS, capped at --max-new), the same token-id prompts for both, the same
dtype for both. transformers gets its best plain settings: one batch of all requests, left padding, KV cache,
SDPA attention. Each provider runs in its own child process so its peak RSS is its own (VmHWM, reset after the
model load: the figure is what generation adds). Both wall-clock and process-CPU-time throughput are reported:
on a shared, loaded machine (--concurrent runs both workers at once) the per-CPU-second ratio is the steadier
figure. Generated tokens are counted up to and including EOS for both;
with fp32 the two must produce the same tokens (reported as `agree`).
Usage: python bench/bench_inference.py [--quick] [--dtype fp32|bf16] [--requests 64] [--max-new 64]
Rows go to bench/results/inference.csv; the machine and the load average (`uptime`) are printed with them.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from utils import append_rows, device_name, row  # noqa: E402

TOPICS = ["the water cycle", "prime numbers", "photosynthesis", "the French revolution", "binary search",
          "volcanoes", "the moon landing", "compound interest"]
PASSAGE = ("The quick brown fox jumps over the lazy dog while the farmer counts his sheep in the valley below, "
           "and the river carries the autumn leaves towards the distant sea. ")


def build_prompts(tok, n: int) -> list[list[int]]:
    """n chat prompts: question styles and pasted passages of very different lengths (35 to 206 tokens for 64)."""
    prompts = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        kind = i % 4
        if kind == 0:
            q = f"What is {topic}?"
        elif kind == 1:
            q = f"Explain {topic} to a child in {2 + i % 5} sentences."
        elif kind == 2:
            q = f"Give one word related to {topic}."
        else:
            q = f"{PASSAGE * (1 + i % 5)}\nSummarize the text above and relate it to {topic}."
        prompts.append(list(tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                                    tokenize=True, return_dict=False)))
    return prompts


def _reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS mark (Linux clear_refs 5) and return the current RSS in bytes."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return _status_kb("VmRSS") * 1024


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def worker(provider: str, args) -> dict:
    """Run one provider in this process; returns tokens, seconds and peak memory."""
    import transformers

    from prism_fast.models import from_pretrained, smollm2_hf_dir
    from prism_fast.train.host_allocator import keep_freed_host_memory

    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    d = smollm2_hf_dir()
    tok = transformers.AutoTokenizer.from_pretrained(d)
    prompts = build_prompts(tok, args.requests)
    eos = tok.eos_token_id
    if provider == "prism_fast":
        from prism_fast.inference import Engine, SamplingParams
        keep_freed_host_memory()
        model = from_pretrained(d, dtype=dtype)
        engine = Engine(model, max_batch=args.max_batch)
        params = SamplingParams(temperature=0.0, max_new_tokens=args.max_new)
        engine.generate(prompts[:2], SamplingParams(temperature=0.0, max_new_tokens=4))          # warm-up

        def run():
            outs = engine.generate(prompts, params, progress=args.progress)
            return [o.outputs[0].token_ids for o in outs]
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=dtype, attn_implementation="sdpa").eval()
        tok.padding_side = "left"
        width = max(map(len, prompts))
        ids = torch.tensor([[tok.pad_token_id or eos] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        model.generate(ids[:2], attention_mask=mask[:2], max_new_tokens=4, do_sample=False, pad_token_id=eos)

        def run():
            with torch.no_grad():
                out = model.generate(ids, attention_mask=mask, max_new_tokens=args.max_new, do_sample=False,
                                     pad_token_id=eos, use_cache=True)
            comps = []
            for r in out[:, width:].tolist():
                comps.append(r[:r.index(eos) + 1] if eos in r else r)
            return comps
    base = _reset_peak_rss()
    t0, c0 = time.perf_counter(), time.process_time()
    comps = run()
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    peak = _status_kb("VmHWM") * 1024 - base
    res = {"provider": provider, "seconds": seconds, "cpu_seconds": cpu_seconds, "tokens": sum(map(len, comps)),
           "completions": comps, "prompt_tokens": sum(map(len, prompts)), "peak_rss_mb": peak / 2**20}
    if provider == "prism_fast":
        res["stats"] = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in engine.stats.items()}
    return res


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="16 requests, 24 new tokens")
    ap.add_argument("--dtype", default="fp32", choices=["bf16", "fp32"])
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--max-new", type=int, default=64)
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=max(1, len(os.sched_getaffinity(0))))
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--concurrent", action="store_true",
                    help="run both providers at once (a shared, loaded machine: both then get the same CPU share; "
                         "compare the per-CPU-second figures)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.requests, args.max_new = 16, 24
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return
    procs = {}
    for prov in ("prism_fast", "transformers"):
        cmd = [sys.executable, __file__, "--worker", prov, "--dtype", args.dtype, "--requests", str(args.requests),
               "--max-new", str(args.max_new), "--max-batch", str(args.max_batch), "--threads", str(args.threads)]
        procs[prov] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if not args.concurrent:
            procs[prov].wait()
    res = {}
    for prov, p in procs.items():
        out, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"error: the {prov} worker failed:\n{err[-3000:]}")
        res[prov] = json.loads(out.strip().splitlines()[-1])
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    ours, hf = res["prism_fast"], res["transformers"]
    agree = sum(a == b for a, b in zip(ours["completions"], hf["completions"])) / len(ours["completions"])
    conf = {"model": "SmolLM2-135M-Instruct", "requests": args.requests, "max_new": args.max_new, "dtype": args.dtype,
            "sampling": "greedy until EOS", "prompt_tokens": ours["prompt_tokens"], "threads": args.threads,
            "max_batch": args.max_batch, "hf": "generate, one left-padded batch, sdpa, use_cache",
            "load": uptime.split("load average:")[-1].strip(), "agree": round(agree, 3)}
    conf["concurrent"] = args.concurrent
    rows = []
    for prov, r in res.items():
        rows.append(row("inference", prov, "generate", "tokens_per_s", "tok/s", args.requests,
                        r["tokens"] / r["seconds"], config=conf | {"tokens": r["tokens"]}, device="cpu"))
        rows.append(row("inference", prov, "generate", "tokens_per_cpu_s", "tok/CPU-s", args.requests,
                        r["tokens"] / r["cpu_seconds"], config=conf | {"tokens": r["tokens"]}, device="cpu"))
        rows.append(row("inference", prov, "generate", "peak_rss", "MiB", args.requests, r["peak_rss_mb"],
                        config=conf, device="cpu"))
    path = append_rows("inference", rows)
    print(f"machine: {device_name('cpu')}; torch {torch.__version__}; {args.dtype}; {args.requests} requests, "
          f"{ours['prompt_tokens']} prompt tokens, greedy, max_new {args.max_new}")
    for prov, r in res.items():
        print(f"{prov:12s} {r['tokens']:6d} tokens in {r['seconds']:7.1f} s = {r['tokens'] / r['seconds']:7.1f} tok/s"
              f" ({r['tokens'] / r['cpu_seconds']:6.1f} tok per CPU-s)   peak RSS +{r['peak_rss_mb']:7.0f} MiB")
    speed = lambda r, k: r["tokens"] / r[k]  # noqa: E731
    print(f"speedup ours / transformers: {speed(ours, 'seconds') / speed(hf, 'seconds'):.2f}x wall, "
          f"{speed(ours, 'cpu_seconds') / speed(hf, 'cpu_seconds'):.2f}x per CPU-second; identical completions: "
          f"{agree:.0%}; engine stats: {ours['stats']}")
    print(f"uptime: {uptime}")
    print(f"rows appended to {path}")


if __name__ == "__main__":
    main()
