"""Packed-sequence attention benchmark: varlen_attention forward and forward+backward, plus decode attention.

Packs of 8k tokens made of documents whose lengths follow a log-normal distribution (median ~600 tokens, long
tail, capped at the pack; the last document is cut to fill the pack exactly), head dim 128, GQA 32/8, causal,
bf16 on GPU. Providers, side by side in one run:
  torch        prism_fast's "torch" backend (SDPA per document: one kernel launch per document)
  sdpa_padded  documents padded to the longest one, one batched SDPA call with is_causal=True (right padding
               never leaks into valid rows under a causal mask); what a user without varlen kernels writes
  triton       prism_fast's Triton FA2 kernels (GPU only; the CPU interpreter is a test tool, not timed)
  flash_attn   flash_attn_varlen_func, when installed
  flex         torch FlexAttention (torch.compile'd) with a document-causal block mask built from the document ids:
               PyTorch's own answer to varlen attention (GPU only; the block mask is built once per pack, outside
               the timing, as a training loop would per batch)
--providers core: torch, sdpa_padded, triton, flash_attn (no torch.compile: the GPU check's first attention
phase); --providers flex: FlexAttention alone (with --sweep: the GPU check's optional phase); default all.
--sweep (GPU) also times the Triton forward under each kernels/configs.py ATTN_FWD_SWEEP config next to the
table's pick (rows provider "triton_cfg:<BLOCK_M>x<BLOCK_N>w<warps>s<stages>"), to confirm or change the table.
TFLOP/s count useful FLOPs only, causal half counted once: fwd = 4 * H * Dh * sum_d L_d (L_d + 1) / 2,
fwd+bwd = 3.5 x fwd (FlashAttention convention). Padded SDPA is charged the same useful FLOPs.
Decode: B sequences with cache lengths spread over [1, S], one token each; GB/s = K/V bytes read / time.
    python bench/bench_attention.py --device cuda --quick --providers core      (GPU check, core phase)
    python bench/bench_attention.py --device cpu --quick       (CPU: 1k-token packs, H 8/2, fp32, labelled)
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from utils import StreamRows, device_name, measure, parse_args, row, time_fn  # noqa: E402

from prism_fast.ops import varlen_attention  # noqa: E402
from prism_fast.ops._dispatch import has_module  # noqa: E402
from prism_fast.ops.decode_attention import decode_attention  # noqa: E402


def doc_lengths(total: int, seed: int, sigma: float = 1.0) -> list[int]:
    """Log-normal document lengths that fill `total` tokens exactly (last one truncated); median 600 tokens
    for an 8k pack, scaled with the pack size (CPU packs keep the same number of documents per pack)."""
    median = 600.0 * total / 8192
    g = torch.Generator().manual_seed(seed)
    lens, used = [], 0
    while used < total:
        n = max(1, int(math.exp(math.log(median) + sigma * torch.randn(1, generator=g).item())))
        n = min(n, total - used)
        lens.append(n)
        used += n
    return lens


def attn_flops(lens, H, Dh, causal=True) -> float:
    return sum(4.0 * H * Dh * (L * (L + 1) / 2 if causal else L * L) for L in lens)


def sdpa_padded(q, k, v, lens):
    """Pad every document to the longest, one batched causal SDPA, unpad. q [T, H, Dh] -> [T, H, Dh]."""
    T, H, Dh = q.shape
    Hkv = k.shape[1]
    n, Lmax = len(lens), max(lens)
    cu = [0]
    for L in lens:
        cu.append(cu[-1] + L)
    idx = torch.cat([torch.arange(L, device=q.device) + b * Lmax for b, L in enumerate(lens)])   # [T]

    def pad(x):
        out = x.new_zeros(n * Lmax, x.shape[1], Dh)
        out[idx] = x
        return out.view(n, Lmax, x.shape[1], Dh).transpose(1, 2)

    o = F.scaled_dot_product_attention(pad(q), pad(k), pad(v), is_causal=True, enable_gqa=Hkv != H)
    return o.transpose(1, 2).reshape(n * Lmax, H, Dh)[idx]


def flex_document_attention(lens, H, device):
    """A compiled FlexAttention call with a document-causal block mask for these document lengths, or None when
    this torch has no FlexAttention. Returns f(q, k, v) on [T, H, Dh] tensors."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError:
        return None
    doc = torch.repeat_interleave(torch.arange(len(lens), device=device), torch.tensor(lens, device=device))
    T = doc.numel()

    def mask_mod(b, h, q_idx, kv_idx):
        return (doc[q_idx] == doc[kv_idx]) & (q_idx >= kv_idx)

    block_mask = create_block_mask(mask_mod, None, None, T, T, device=device)
    flex = torch.compile(flex_attention, dynamic=False)

    def f(q, k, v):
        o = flex(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], block_mask=block_mask,
                 enable_gqa=k.shape[1] != q.shape[1])
        return o[0].transpose(0, 1)
    return f


def providers(device, which: str = "all") -> list[str]:
    if which == "flex":
        return ["flex"] if device.type == "cuda" else []
    out = ["torch", "sdpa_padded"]
    if device.type == "cuda" and has_module("triton"):
        out.append("triton")
    if device.type == "cuda" and has_module("flash_attn"):
        out.append("flash_attn")
    if device.type == "cuda" and which == "all":
        out.append("flex")
    return out


def sweep_configs(device):
    """(name, config) pairs for --sweep: the table's pick first, then the alternatives."""
    from prism_fast.kernels.configs import ATTN_FWD_SWEEP
    from prism_fast.kernels.flash_attn_fwd import fwd_config
    name = lambda c: f"triton_cfg:{c['BLOCK_M']}x{c['BLOCK_N']}w{c['num_warps']}s{c['num_stages']}"  # noqa: E731
    picked = fwd_config(128, device)
    return [(name(c) + (" (table)" if c == picked else ""), c)
            for c in [picked] + [c for c in ATTN_FWD_SWEEP if c != picked]]


def bench_varlen(args, device, dtype, rows, table):
    H, Hkv, Dh, tokens = args.heads, args.kv_heads, args.head_dim, args.tokens
    for seed in range(args.packs):
        lens = doc_lengths(tokens, seed)
        cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32, device=device)
        g = torch.Generator(device="cpu").manual_seed(seed)
        q, k, v = (torch.randn(tokens, h, Dh, generator=g).to(device=device, dtype=dtype).requires_grad_()
                   for h in (H, Hkv, Hkv))
        do = torch.randn_like(q)
        flops = attn_flops(lens, H, Dh)
        cfg = dict(tokens=tokens, n_docs=len(lens), max_doc=max(lens), H=H, Hkv=Hkv, Dh=Dh, seed=seed,
                   dtype=str(dtype).removeprefix("torch."), causal=True, flops="useful, causal half counted once")
        base = None
        plan = [(p, None) for p in providers(device, args.providers)]
        if args.sweep and device.type == "cuda":
            plan += [(name, c) for name, c in sweep_configs(device)]
        for prov, sweep_cfg in plan:
            if prov == "sdpa_padded":
                f = lambda: sdpa_padded(q, k, v, lens)                                        # noqa: E731
            elif prov == "flex":
                f = flex_document_attention(lens, H, device)
                if f is None:
                    continue
                f = lambda fl=f: fl(q, k, v)                                                   # noqa: E731
            elif sweep_cfg is not None:
                from prism_fast.kernels.flash_attn_fwd import varlen_attn_fwd
                f = lambda c=sweep_cfg: varlen_attn_fwd(  # noqa: E731
                    q, k, v, cu, softmax_scale=Dh ** -0.5, causal=True, config=c)[0]
            else:
                f = lambda p=prov: varlen_attention(q, k, v, cu, max(lens), causal=True, backend=p)  # noqa: E731
            try:
                out = f()
            except Exception as e:               # a provider that fails is reported, not fatal (GPU check)
                print(f"  {prov}: FAILED {type(e).__name__}: {str(e)[:200]}")
                continue
            if base is None:                     # max|diff| is to the first provider of this run
                base = out.detach().float()
            err = (out.detach().float() - base).abs().max().item()
            print(f"  {prov}: max|diff| {err:.2e} vs {plan[0][0]}", flush=True)

            def fwd():
                with torch.no_grad():
                    f()

            def fwd_bwd():
                q.grad = k.grad = v.grad = None
                f().backward(do)

            modes = (("fwd", fwd, flops),) if sweep_cfg is not None else (("fwd", fwd, flops),
                                                                         ("fwd+bwd", fwd_bwd, 3.5 * flops))
            for mode, fn, fl in modes:
                p50, mem, r = measure("attention", prov, mode, fn, tokens, config=cfg, device=device,
                                      warmup=args.warmup, reps=args.reps)
                tf = fl / (p50 * 1e-3) / 1e12
                rows += r + [row("attention", prov, mode, "throughput", "TFLOP/s", tokens, tf, config=cfg,
                                 device=device)]
                table.append((f"pack{seed} ({len(lens)} docs, max {max(lens)})", prov, mode, p50, tf, mem, err))


def bench_decode(args, device, dtype, rows, table):
    B, H, Hkv, Dh, S = args.decode_batch, args.heads, args.kv_heads, args.head_dim, args.decode_cache
    g = torch.Generator(device="cpu").manual_seed(0)
    q = torch.randn(B, H, Dh, generator=g).to(device=device, dtype=dtype)
    kc = torch.randn(B, S, Hkv, Dh, generator=g).to(device=device, dtype=dtype)
    vc = torch.randn(B, S, Hkv, Dh, generator=g).to(device=device, dtype=dtype)
    seqlens = torch.randint(1, S + 1, (B,), generator=g).to(device)
    kv_bytes = 2 * int(seqlens.sum()) * Hkv * Dh * kc.element_size()
    cfg = dict(B=B, H=H, Hkv=Hkv, Dh=Dh, cache=S, dtype=str(dtype).removeprefix("torch."))
    if args.providers == "flex":
        return
    names = ["torch"] + (["triton"] if device.type == "cuda" and has_module("triton") else [])
    base = None
    for prov in names:
        fn = lambda p=prov: decode_attention(q, kc, vc, seqlens, backend=p)                    # noqa: E731
        out = fn().float()
        base = out if base is None else base
        p50, p20, p80 = time_fn(fn, device=device, warmup=args.warmup, reps=args.reps)
        gbs = kv_bytes / (p50 * 1e-3) / 1e9
        rows.append(row("attention", prov, "decode", "time", "ms", B, p50, p20, p80, config=cfg, device=device))
        rows.append(row("attention", prov, "decode", "bandwidth", "GB/s", B, gbs, config=cfg, device=device))
        table.append((f"decode B={B} S<={S}", prov, "decode", p50, gbs, None, (out - base).abs().max().item()))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="fewer packs and repetitions")
    ap.add_argument("--overwrite", action="store_true", help="replace earlier rows of the same key in the CSV")
    ap.add_argument("--sweep", action="store_true", help="GPU: also time the Triton forward per candidate config")
    ap.add_argument("--providers", default="all", choices=["all", "core", "flex"],
                    help="core: no torch.compile'd FlexAttention; flex: FlexAttention alone")
    a = parse_args(ap)
    device = torch.device(a.device)
    cuda = device.type == "cuda"
    a.tokens, a.heads, a.kv_heads, a.head_dim = (8192, 32, 8, 128) if cuda else (1024, 8, 2, 64)
    a.packs = (1 if a.quick else 3) if cuda else 1
    a.warmup, a.reps = (3, 10 if a.quick else 30) if cuda else (2, 3 if a.quick else 15)
    a.decode_batch, a.decode_cache = (64, 4096) if cuda else (8, 512)
    dtype = torch.bfloat16 if cuda else torch.float32
    rows, table = StreamRows("attention", overwrite=a.overwrite), []
    bench_varlen(a, device, dtype, rows, table)
    bench_decode(a, device, dtype, rows, table)
    path = rows.path
    print(f"# attention on {device_name(device)}, {str(dtype)[6:]}, packs of {a.tokens} tokens, "
          f"H {a.heads}/{a.kv_heads}, Dh {a.head_dim}, causal; FLOPs: useful, causal half counted once")
    print(f"{'case':<34}{'provider':<31}{'mode':<9}{'ms p50':>10}{'TFLOP/s|GB/s':>14}{'MiB':>9}{'vs torch':>10}"
          f"{'max|diff|':>11}")
    ref = {(c, m): t for c, p, m, t, *_ in table if p == "torch"}
    ref.update({k: float("nan") for c, p, m, *_ in table if (k := (c, m)) not in ref})
    for case, prov, mode, ms, rate, mem, err in table:
        mem_s = "-" if mem is None else f"{mem:.0f}"
        print(f"{case:<34}{prov:<31}{mode:<9}{ms:>10.3f}{rate:>14.3g}{mem_s:>9}{ref[(case, mode)] / ms:>9.2f}x"
              f"{err:>11.2e}")
    print(f"rows appended to {path}")


if __name__ == "__main__":
    main()
