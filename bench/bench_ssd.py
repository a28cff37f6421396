"""SSD chunked scan benchmark (the op alone, not the mixer): forward and forward+backward, side by side.

Layer shapes (HF config.json of each model; transformers' NemotronHConfig defaults are the 8B values):
    nemotron-h-8b:        H 128 heads x P 64, G 8 groups, N 128 state, chunk 128
    granite-4.0-h-micro:  H 64 heads x P 64 (d_inner 4096 = 2 x 2048), G 1, N 128, chunk 256
8k tokens as one row (B = 1), plain and packed (8 documents, seq_idx). Providers: "torch" (ssd_chunk_scan_ref,
the chunked pure-PyTorch reference), "naive" (ssd_scan_naive, CPU only, forward only), "triton" (ours, CUDA),
"mamba_ssm" (mamba_chunk_scan_combined, when installed). Ratios are to "torch" and to "mamba_ssm".
TFLOP/s counts the forward's matmul work with the causal half of the intra-chunk products:
    B T (L G N + 4 H P N + L H P)  (x 2 flops per multiply-add already folded in; backward ~2x forward).
    python bench/bench_ssd.py --device cuda --quick --mamba-configs 1 --shapes granite-4.0-h-micro   (GPU check)
--mamba-configs N keeps the first N of each mamba-ssm Triton kernel's autotune configs (~140 per key otherwise:
minutes of compiling); its rows are then provider "mamba_ssm_untuned", a lower bound on mamba-ssm's speed.
    python bench/bench_ssd.py --device cpu --quick       (CPU: fp32, 512 tokens, torch chunked vs naive)
Rows go to bench/results/ssd_chunk_scan.csv.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from utils import StreamRows, device_name, measure, parse_args  # noqa: E402

from prism_fast.ops import ssd_chunk_scan, ssd_scan_naive  # noqa: E402
from prism_fast.ops._dispatch import has_module, triton_usable  # noqa: E402

SHAPES = {
    "nemotron-h-8b": dict(H=128, P=64, G=8, N=128, L=128),
    "granite-4.0-h-micro": dict(H=64, P=64, G=1, N=128, L=256),
}


def _inputs(shape, T, device, dtype, packed):
    H, P, G, N = shape["H"], shape["P"], shape["G"], shape["N"]
    g = torch.Generator(device="cpu").manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g).to(device, dtype)  # noqa: E731
    x, dt, B, C = r(1, T, H, P), r(1, T, H) - 2.0, r(1, T, G, N), r(1, T, G, N)
    A = -torch.rand(H, generator=g).to(device) * 4 - 0.5
    kw = dict(D=torch.ones(H, device=device), dt_bias=torch.zeros(H, device=device), dt_softplus=True)
    if packed:
        kw["seq_idx"] = (torch.arange(T, device=device) // max(T // 8, 1)).clamp(max=7).to(torch.int32)[None]
    return [x, dt, A, B, C], kw


def _providers(device):
    if device.type == "cpu":
        return ["torch", "naive"]
    out = ["torch"] + (["triton"] if triton_usable("cuda") else [])
    return out + (["mamba_ssm"] if has_module("mamba_ssm") else [])


def _flops(shape, T):
    return T * (shape["L"] * shape["G"] * shape["N"] + 4 * shape["H"] * shape["P"] * shape["N"]
                + shape["L"] * shape["H"] * shape["P"])


def cut_mamba_autotune(n: int) -> int:
    """Keep the first n configs of every autotuned kernel of mamba-ssm's Triton SSD modules; returns how many
    kernels were cut (0 when mamba-ssm is absent)."""
    import importlib
    cut = 0
    for m in ("ssd_bmm", "ssd_chunk_state", "ssd_chunk_scan", "ssd_state_passing", "ssd_combined", "layernorm_gated"):
        try:
            mod = importlib.import_module(f"mamba_ssm.ops.triton.{m}")
        except ImportError:
            continue
        for obj in vars(mod).values():
            if hasattr(obj, "configs") and hasattr(obj, "fn") and len(obj.configs) > n:
                obj.configs = obj.configs[:n]
                cut += 1
    return cut


def bench_shape(name, shape, T, device, dtype, reps, packs, rows, mamba_label="mamba_ssm"):
    table = []
    for packed in packs:
        args, kw = _inputs(shape, T, device, dtype, packed)
        cfg = dict(shape, tokens=T, dtype=str(dtype).removeprefix("torch."), model=name, packed=packed)
        for prov in _providers(device):
            if prov == "naive":
                fwd = lambda: ssd_scan_naive(*args, **kw)  # noqa: E731
            else:
                fwd = lambda p=prov: ssd_chunk_scan(*args, shape["L"], **kw, backend=p)  # noqa: E731
            leaves = [a.detach().clone().requires_grad_() for a in args]

            def full(p=prov):
                y = ssd_chunk_scan(*leaves, shape["L"], **kw, backend=p)
                y.backward(torch.ones_like(y))

            modes = [("fwd", fwd)] + ([("fwd+bwd", full)] if prov != "naive" else [])
            for mode, fn in modes:
                def run(fn=fn, mode=mode):
                    if mode == "fwd":
                        with torch.no_grad():
                            fn()
                    else:
                        fn()
                try:
                    slow = prov == "naive"       # T Python steps: one timed call is enough
                    p50, mem, r = measure("ssd_chunk_scan", prov, mode, run, T, config=cfg, device=device,
                                          warmup=0 if slow else 1 if device.type == "cpu" else 3,
                                          reps=1 if slow else reps)
                except torch.OutOfMemoryError:
                    table.append((name, packed, prov, mode, float("nan"), None, None))
                    continue
                tflops = _flops(shape, T) / (p50 * 1e-3) / 1e12 if mode == "fwd" else None
                if prov == "mamba_ssm":
                    for x in r:
                        x["provider"] = mamba_label
                rows += r
                table.append((name, packed, prov, mode, p50, mem, tflops))
    return table


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tokens", type=int, default=None, help="default: 8192 (cuda), 512 (cpu)")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions; plain rows only on CPU")
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--mamba-configs", type=int, default=0, help="cut mamba-ssm's autotune to N configs per kernel")
    ap.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated subset of {', '.join(SHAPES)}")
    args = parse_args(ap, argv)
    device = torch.device(args.device)
    T = args.tokens or (8192 if device.type == "cuda" else 512)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    reps = (5 if args.quick else 20) if device.type == "cuda" else (2 if args.quick else 5)
    packs = (False, True) if device.type == "cuda" or not args.quick else (False,)
    print(f"# ssd_chunk_scan on {device_name(device)}, {T} tokens, {str(dtype)[6:]}, torch {torch.__version__}")
    mamba_label = "mamba_ssm"
    if args.mamba_configs and has_module("mamba_ssm") and cut_mamba_autotune(args.mamba_configs):
        mamba_label = "mamba_ssm_untuned"
        print(f"# mamba-ssm autotune cut to {args.mamba_configs} configs per kernel: rows say {mamba_label}")
    all_rows = StreamRows("ssd_chunk_scan", overwrite=args.overwrite)
    print(f"{'shape':22s} {'packed':6s} {'provider':10s} {'mode':8s} {'ms p50':>10s} {'x torch':>8s} "
          f"{'x mamba':>8s} {'MiB':>8s} {'TFLOP/s':>8s}")
    for name in args.shapes.split(","):
        shape = SHAPES[name]
        table = bench_shape(name, shape, T, device, dtype, reps, packs, all_rows, mamba_label)
        base = {(r[1], r[3], r[2]): r[4] for r in table}
        for (n, packed, prov, mode, ms, mem, tf) in table:
            t_ref, m_ref = base.get((packed, mode, "torch")), base.get((packed, mode, "mamba_ssm"))
            ratio = f"{t_ref / ms:8.2f}" if t_ref and ms == ms else f"{'-':>8s}"
            mratio = f"{m_ref / ms:8.2f}" if m_ref and ms == ms else f"{'-':>8s}"
            print(f"{n:22s} {str(packed):6s} {prov:10s} {mode:8s} {ms:10.2f} {ratio} {mratio} "
                  f"{(f'{mem:8.0f}' if mem is not None else '       -')} {(f'{tf:8.3f}' if tf else '       -')}")
    path = all_rows.path
    print(f"# x torch / x mamba: speedup over that provider in this run (>1 = faster). Rows: {path}")


if __name__ == "__main__":
    main()
