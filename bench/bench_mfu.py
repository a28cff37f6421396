"""Mid-training throughput and MFU of a ~1B dense and a ~1B hybrid model on random weights (one GPU).

    python bench/bench_mfu.py --device cuda --quick                                  # GPU check: both models
    python bench/bench_mfu.py --device cuda --kernels attention=triton,ssd=triton    # one kernels choice
    python bench/bench_mfu.py --device cpu --scale tiny                              # CPU smoke (a few M params)

Models (prism_fast.models, random init, bf16 weights on GPU):
  dense_1b   llama, TinyLlama-1.1B shape: hidden 2048, 22 layers, 32 heads / 4 kv heads, MLP 5632, vocab 32000
  hybrid_1b  nemotron_h: hidden 2048, 28 layers "M-M-M*-" x 4 (12 Mamba2 mixers: 64 heads x 64, state 128,
             8 groups, chunk 128; 12 relu^2 MLPs of 8192; 4 attention layers, 16 heads / 4 kv heads), vocab 32000
A step: one packed row of --tokens tokens (documents of --doc tokens, cu_seqlens), forward + loss + backward +
fused AdamW, the model's resolved `kernels` (the one `--kernels` field, e.g. attention=triton,ssd=torch).
MFU = model FLOPs per second / the GPU's dense bf16 peak (--peak-tflops; default from the device name):
  6 x (matmul parameters: every Linear incl. the LM head, not the embedding) per token
  + 12 x H x Dh x (mean causal context within a document) per token per attention layer
The SSD scan's own FLOPs (chunked state products) are not counted: the figure is conservative for the hybrid.
Rows go to bench/results/mfu.csv (tokens/s and MFU per model and kernels choice).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from utils import StreamRows, device_name, parse_args, row  # noqa: E402

from prism_fast.models import build_model  # noqa: E402
from prism_fast.models.config import tiny_config  # noqa: E402

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}     # dense, SXM
SCALES = {
    "1b": {
        "dense_1b": ("llama", dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                                   num_attention_heads=32, num_key_value_heads=4, head_dim=64)),
        "hybrid_1b": ("nemotron_h", dict(vocab_size=32000, hidden_size=2048, intermediate_size=8192,
                                         hybrid_override_pattern="M-M-M*-" * 4, num_attention_heads=16,
                                         num_key_value_heads=4, head_dim=128, mamba_num_heads=64,
                                         mamba_head_dim=64, ssm_state_size=128, n_groups=8, chunk_size=128,
                                         max_position_embeddings=8192)),
    },
    "tiny": {"dense_1b": ("llama", {}), "hybrid_1b": ("nemotron_h", {})},
}


def parse_kernels(spec: str) -> dict:
    """'attention=triton,ssd=torch' -> {"attention": "triton", "ssd": "torch"} ('' -> all auto)."""
    out = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        key, _, value = item.partition("=")
        if not value:
            raise SystemExit(f"error: --kernels wants field=backend pairs, got {item!r}")
        out[key.removeprefix("kernels.")] = value
    return out


def step_flops_per_token(model, cfg, doc: int) -> float:
    """6 x matmul parameters + causal attention (see the module docstring)."""
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    if not any(m is model.lm_head for m in model.modules() if isinstance(m, torch.nn.Linear)):
        linear += model.lm_head.weight.numel()          # tied / non-Linear head still costs a GEMM
    n_attn = sum(t == "attention" for t in cfg.layer_types) if cfg.layer_types else cfg.num_hidden_layers
    ctx = (doc + 1) / 2
    return 6.0 * linear + 12.0 * n_attn * cfg.num_attention_heads * cfg.head_dim * ctx


def run(name, family, overrides, args, device, dtype, kernels):
    cfg = tiny_config(family, **overrides)
    model = build_model(cfg, device=device, dtype=dtype, kernels=kernels)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    g = torch.Generator().manual_seed(0)
    tokens = args.tokens
    x = torch.randint(0, cfg.vocab_size, (1, tokens), generator=g).to(device)
    cu = torch.arange(0, tokens + 1, args.doc, dtype=torch.int32)
    cu = torch.cat([cu, torch.tensor([tokens], dtype=torch.int32)]) if cu[-1] != tokens else cu
    cu = cu.to(device)

    def step():
        loss = model(x, cu_seqlens=cu, labels=x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    times = []
    for i in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    sec = sorted(times)[len(times) // 2]
    tok_s = tokens / sec
    flops = step_flops_per_token(model, cfg, args.doc) * tok_s
    params = sum(p.numel() for p in model.parameters())
    k = getattr(model, "kernels", None)
    chosen = ({f: v for f, v in dataclasses.asdict(k).items() if f not in ("device", "dtype")}
              if dataclasses.is_dataclass(k) else str(k))
    return params, sec, tok_s, flops, chosen


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--scale", default="1b", choices=list(SCALES), help="1b (GPU) or tiny (CPU smoke)")
    ap.add_argument("--models", default="dense_1b,hybrid_1b")
    ap.add_argument("--kernels", default="", help="the kernels section as one field: attention=triton,ssd=triton")
    ap.add_argument("--tokens", type=int, default=None, help="tokens per step (default 8192 GPU, 256 CPU)")
    ap.add_argument("--doc", type=int, default=None, help="document length inside the packed row (default 2048)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="2 warmup + 4 timed steps")
    ap.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the GPU")
    ap.add_argument("--overwrite", action="store_true")
    args = parse_args(ap, argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.tokens = args.tokens or (8192 if cuda else 256)
    args.doc = min(args.doc or (2048 if cuda else 64), args.tokens)
    args.warmup, args.steps = 2, args.steps or (4 if args.quick else 10)
    dtype = torch.bfloat16 if cuda else torch.float32
    label = device_name(device)
    peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in label), None)
    kernels = parse_kernels(args.kernels)
    rows = StreamRows("mfu", overwrite=args.overwrite)
    print(f"# mid-training step on {label}, {args.tokens} tokens/step in documents of {args.doc}, "
          f"{str(dtype)[6:]}, kernels {kernels or 'auto'}; MFU vs {peak} TFLOP/s dense bf16")
    print(f"{'model':<11}{'params':>9}{'s/step':>9}{'tok/s':>10}{'TFLOP/s':>9}{'MFU':>7}  kernels")
    for name in args.models.split(","):
        family, overrides = SCALES[args.scale][name]
        try:
            params, sec, tok_s, flops, chosen = run(name, family, overrides, args, device, dtype, kernels)
        except Exception as e:                  # one model failing must not hide the other (GPU check)
            print(f"{name:<11} FAILED {type(e).__name__}: {str(e)[:300]}")
            continue
        finally:
            if cuda:
                torch.cuda.empty_cache()
        mfu = flops / (peak * 1e12) if peak else float("nan")
        cfg = dict(model=name, params=params, tokens=args.tokens, doc=args.doc, dtype=str(dtype)[6:],
                   kernels=chosen, peak_tflops=peak, flops="6 x matmul params + causal attention")
        rows += [row("midtrain_mfu", name, "train_step", "throughput", "tok/s", args.tokens, tok_s, config=cfg,
                     device=device),
                 row("midtrain_mfu", name, "train_step", "mfu", "fraction", args.tokens, mfu, config=cfg,
                     device=device)]
        print(f"{name:<11}{params / 1e9:>8.2f}B{sec:>9.3f}{tok_s:>10.0f}{flops / 1e12:>9.1f}{mfu:>7.1%}  {chosen}")
    path = rows.path
    print(f"rows appended to {path}")


if __name__ == "__main__":
    main()
