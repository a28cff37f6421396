"""Model forward / forward+backward time: prism_fast CausalLM vs transformers' own class, side by side, one run.

Default: the SmolLM2-135M architecture (llama, 30 layers, d=576, GQA 9:3, vocab 49152, tied) with random weights
(timing does not depend on the values), one sequence of 512 tokens, bf16, loss through labels (ours: fused linear
cross-entropy inside forward; transformers: logits + its loss). Also times greedy decoding (tokens/s, KV cache).
Usage: python bench/bench_models.py [--device cuda] [--quick] [--seq 512] [--dtype bf16]
Rows go to bench/results/models.csv; absolute numbers are labelled with the machine.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from utils import append_rows, device_name, measure, parse_args, row, time_fn  # noqa: E402

from prism_fast.models import build_model, generate, tiny_config  # noqa: E402

SMOLLM2 = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
               num_attention_heads=9, num_key_value_heads=3, head_dim=64, tie_word_embeddings=True,
               rope_theta=100000.0, max_position_embeddings=8192, rms_norm_eps=1e-5)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--decode-tokens", type=int, default=16)
    args = parse_args(ap, argv)
    dev = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    reps = 2 if dev.type == "cpu" else (5 if args.quick else 20)
    cfg = tiny_config("llama", **SMOLLM2)
    torch.manual_seed(0)
    ours = build_model(cfg, device=dev)
    ours.init_weights(0.02)
    ours = ours.to(dtype)
    hf = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**cfg.hf_config),
                                                       attn_implementation="sdpa").to(dev, dtype)
    hf.load_state_dict(ours.state_dict())
    B, T = args.batch, args.seq
    x = torch.randint(0, cfg.vocab_size, (B, T), device=dev)
    labels = torch.cat([x[:, 1:], torch.full((B, 1), -100, device=dev)], 1)
    runs = {
        ("prism_fast", "forward"): lambda: ours(x, labels=labels),
        ("transformers", "forward"): lambda: hf(x, labels=x).loss,
        ("prism_fast", "full"): lambda: ours(x, labels=labels).backward(),
        ("transformers", "full"): lambda: hf(x, labels=x).loss.backward(),
    }
    conf = {"model": "SmolLM2-135M arch", "batch": B, "seq": T, "dtype": args.dtype, "attn_hf": "sdpa"}
    rows, res = [], {}
    for (prov, mode), fn in runs.items():
        ctx = torch.no_grad() if mode == "forward" else torch.enable_grad()
        with ctx:
            p50, _, r = measure("models", prov, mode, fn, T, config=conf, device=dev,
                                warmup=1 if dev.type == "cpu" else 3, reps=reps, mem_metric="peak_memory")
        res[(prov, mode)] = p50
        rows += r
        ours.zero_grad(set_to_none=True)
        hf.zero_grad(set_to_none=True)
    # greedy decode throughput, batch of 4 prompts of 64 tokens (ours: our cache; transformers: generate())
    prompts = [list(range(10 + i, 74 + i)) for i in range(4)]
    n = args.decode_tokens
    t_ours = time_fn(lambda: generate(ours, prompts, max_new_tokens=n, eos_token_id=[]), device=dev, warmup=1,
                     reps=1 if dev.type == "cpu" else 3)[0]
    ids = torch.tensor(prompts, device=dev)
    t_hf = time_fn(lambda: hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0),
                   device=dev, warmup=1, reps=1 if dev.type == "cpu" else 3)[0]
    for prov, t in (("prism_fast", t_ours), ("transformers", t_hf)):
        rows.append(row("models", prov, "generate", "tokens_per_s", "tok/s", n, 4 * n / t * 1e3,
                        config=conf | {"prompts": 4, "prompt_len": 64}, device=dev))
    path = append_rows("models", rows)
    print(f"machine: {device_name(dev)}; torch {torch.__version__}, transformers {transformers.__version__}; "
          f"SmolLM2-135M arch, B={B} T={T} {args.dtype}")
    for mode in ("forward", "full"):
        a, b = res[("prism_fast", mode)], res[("transformers", mode)]
        print(f"{mode:8s} prism_fast {a:9.1f} ms   transformers {b:9.1f} ms   ratio (hf/ours) {b / a:5.2f}x")
    print(f"generate prism_fast {4 * n / t_ours * 1e3:7.1f} tok/s   transformers {4 * n / t_hf * 1e3:7.1f} tok/s "
          f"(4 prompts x 64 tokens, {n} new, greedy)")
    print(f"rows appended to {path}")


if __name__ == "__main__":
    main()
