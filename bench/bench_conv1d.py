"""Causal depthwise conv1d benchmark: forward and forward+backward, width 4, SiLU, side by side.

Layer shapes: conv channels = H P + 2 G N (the mixer convolves x, B and C together):
    nemotron-h-8b:        128 x 64 + 2 x 8 x 128 = 10240 channels
    granite-4.0-h-micro:   64 x 64 + 2 x 1 x 128 =  4352 channels
8k tokens as one row, channels-last input (the transposed [B, T, C] view the Mamba2 mixer passes), plain and
packed (8 documents, seq_idx). Providers: "torch" (causal_conv1d_ref), "cuda" (csrc/conv1d library), "triton",
"causal_conv1d" (Dao-AILab's package, when installed). GB/s counts the compulsory traffic only: forward reads x
and writes out (2 B C T elements); forward+backward adds reading x and dout and writing dx (5 in total).
    python bench/bench_conv1d.py --device cuda --quick      (GPU check: bf16, 8k tokens)
    python bench/bench_conv1d.py --device cpu --quick       (CPU: torch reference only, fp32, 1024 tokens)
Rows go to bench/results/causal_conv1d.csv.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from utils import StreamRows, device_name, measure, parse_args, row  # noqa: E402

from prism_fast.ops import causal_conv1d  # noqa: E402
from prism_fast.ops._dispatch import has_module, triton_usable  # noqa: E402
from prism_fast.ops.causal_conv1d import cuda_lib_usable  # noqa: E402

SHAPES = {"nemotron-h-8b": 10240, "granite-4.0-h-micro": 4352}
WIDTH = 4


def _providers(device):
    if device.type == "cpu":
        return ["torch"]
    out = ["torch"] + (["cuda"] if cuda_lib_usable() else []) + (["triton"] if triton_usable("cuda") else [])
    return out + (["causal_conv1d"] if has_module("causal_conv1d") else [])


def bench_shape(name, C, T, device, dtype, reps, packs, rows):
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(1, T, C, generator=g).to(device, dtype).transpose(1, 2)      # channels-last [1, C, T]
    w = torch.randn(C, WIDTH, generator=g).to(device, dtype)
    b = torch.randn(C, generator=g).to(device, dtype)
    seq = (torch.arange(T, device=device) // max(T // 8, 1)).clamp(max=7).to(torch.int32)[None]
    elt = x.element_size()
    table = []
    for packed in packs:
        cfg = dict(channels=C, width=WIDTH, tokens=T, dtype=str(dtype).removeprefix("torch."), model=name,
                   packed=packed, layout="channels_last", activation="silu")
        si = seq if packed else None
        for prov in _providers(device):
            xl, wl, bl = (t.detach().clone().requires_grad_() for t in (x, w, b))

            def fwd(p=prov):
                with torch.no_grad():
                    causal_conv1d(x, w, b, seq_idx=si, activation="silu", backend=p)

            def full(p=prov):
                y = causal_conv1d(xl, wl, bl, seq_idx=si, activation="silu", backend=p)
                y.backward(torch.ones_like(y))

            for mode, fn, n_el in (("fwd", fwd, 2), ("fwd+bwd", full, 5)):
                p50, mem, r = measure("causal_conv1d", prov, mode, fn, T, config=cfg, device=device,
                                      warmup=1 if device.type == "cpu" else 5, reps=reps)
                gbs = n_el * C * T * elt / (p50 * 1e-3) / 1e9
                rows += r + [row("causal_conv1d", prov, mode, "bandwidth", "GB/s", T, gbs, config=cfg,
                                 device=device)]
                table.append((name, packed, prov, mode, p50, gbs))
                print(f"  measured {name} packed={packed} {prov} {mode}: {p50:.3f} ms", flush=True)
    return table


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tokens", type=int, default=None, help="default: 8192 (cuda), 1024 (cpu)")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--overwrite", action="store_true")
    args = parse_args(ap, argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    args.tokens = args.tokens or (8192 if device.type == "cuda" else 1024)
    reps = (10 if args.quick else 50) if device.type == "cuda" else (3 if args.quick else 10)
    print(f"# causal_conv1d on {device_name(device)}, {args.tokens} tokens, W {WIDTH}, silu, channels-last, "
          f"{str(dtype)[6:]}, torch {torch.__version__}")
    print(f"{'shape':22s} {'packed':6s} {'provider':14s} {'mode':8s} {'ms p50':>9s} {'x torch':>8s} "
          f"{'x c_c1d':>8s} {'GB/s':>8s}")
    all_rows = StreamRows("causal_conv1d", overwrite=args.overwrite)
    for name, C in SHAPES.items():
        table = bench_shape(name, C, args.tokens, device, dtype, reps, (False, True), all_rows)
        base = {(r[1], r[3], r[2]): r[4] for r in table}
        for (n, packed, prov, mode, ms, gbs) in table:
            t_ref, c_ref = base.get((packed, mode, "torch")), base.get((packed, mode, "causal_conv1d"))
            ratio = f"{t_ref / ms:8.2f}" if t_ref else f"{'-':>8s}"
            cratio = f"{c_ref / ms:8.2f}" if c_ref else f"{'-':>8s}"
            print(f"{n:22s} {str(packed):6s} {prov:14s} {mode:8s} {ms:9.3f} {ratio} {cratio} {gbs:8.3f}")
    path = all_rows.path
    print(f"# x torch / x c_c1d: speedup over torch / the causal-conv1d package in this run. Rows: {path}")


if __name__ == "__main__":
    main()
