"""Mamba2 mixer benchmark: training layer (forward, forward+backward; plain and packed) and one-token decode.

Layer shapes of the paper's hybrids: Granite-4.0-H-Micro (D 2048, 64 heads x 64, N 128, 1 group, chunk 256) and
Nemotron-H-8B (D 4096, 128 heads x 64, N 128, 8 groups, chunk 128), 8k tokens per step. The whole mixer is timed
(in_proj, conv, SSD scan, gated norm, out_proj) with each available ssd_chunk_scan backend side by side ("torch"
chunked reference, "triton", "mamba_ssm" when installed), and the decode step at batch 64 (conv shift + SSM
update: the whole mixer step with auto backends) and the SSM state update alone: torch reference vs our Triton kernel vs
mamba_ssm's selective_state_update when installed.
    python bench/bench_mamba2.py --device cuda --quick      (GPU check)
    python bench/bench_mamba2.py --device cpu --quick       (CPU: shapes scaled down, labelled)
Rows go to bench/results/mamba2.csv; the table prints ms (p50) and the ratio to the torch backend.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from utils import append_rows, device_name, measure, parse_args, row, time_fn  # noqa: E402

from prism_fast import ops  # noqa: E402
from prism_fast.models.mamba2 import Mamba2Mixer  # noqa: E402

SHAPES = {
    "granite-4.0-h-micro": dict(hidden_size=2048, num_heads=64, head_dim=64, d_state=128, n_groups=1,
                                chunk_size=256),
    "nemotron-h-8b": dict(hidden_size=4096, num_heads=128, head_dim=64, d_state=128, n_groups=8, chunk_size=128),
}
# 2-core CPU: the same structure at 1/8 width and 512 tokens (numbers are for regression tracking, not GPU claims).
CPU_SHAPE = dict(hidden_size=256, num_heads=8, head_dim=64, d_state=64, n_groups=1, chunk_size=64)


def _ssd_backends(device) -> list[str]:
    from prism_fast.ops._dispatch import has_module, triton_usable
    out = ["torch"]
    if device.type == "cuda" and triton_usable("cuda"):
        out.append("triton")
    if device.type == "cuda" and has_module("mamba_ssm"):
        out.append("mamba_ssm")
    return out


def bench_layer(name, shape, tokens, device, dtype, reps):
    mixer = Mamba2Mixer(**shape).to(device=device, dtype=dtype)
    x = torch.randn(1, tokens, shape["hidden_size"], device=device, dtype=dtype, requires_grad=True)
    doc = max(tokens // 8, 1)                                   # packed: 8 documents per row
    seq_idx = (torch.arange(tokens, device=device) // doc).clamp(max=7).to(torch.int32)[None]
    rows, table = [], []
    cfg = dict(shape, tokens=tokens, dtype=str(dtype).removeprefix("torch."), model=name)
    for backend in _ssd_backends(device):
        for packed in (False, True):
            si = seq_idx if packed else None

            def fwd():
                with torch.no_grad():
                    mixer(x, seq_idx=si)

            def full():
                mixer(x, seq_idx=si).float().square().mean().backward()
                x.grad = None
                mixer.zero_grad(set_to_none=True)

            for mode, fn in (("forward", fwd), ("full", full)):
                prov = f"ssd_{backend}" + ("_packed" if packed else "")
                try:
                    mixer.use_kernels(ops.resolve_kernels({"ssd": backend}, device=device, dtype=x.dtype))
                    p50, mem, r = measure("mamba2", prov, mode, fn, tokens, config=cfg, device=device,
                                          warmup=2, reps=reps)
                except Exception as e:                          # a backend that fails is reported, not fatal
                    print(f"  {name} {backend} {mode}: FAILED {type(e).__name__}: {e}")
                    continue
                rows += r
                table.append((name, prov, mode, p50, tokens / p50 * 1e3))
    return rows, table


def bench_decode(name, shape, batch, device, dtype, reps):
    mixer = Mamba2Mixer(**shape).to(device=device, dtype=dtype).eval()
    cache = mixer.new_cache(batch)
    x = torch.randn(batch, 1, shape["hidden_size"], device=device, dtype=dtype)
    cfg = dict(shape, batch=batch, dtype=str(dtype).removeprefix("torch."), model=name)
    rows, table = [], []

    def step():
        with torch.no_grad():
            mixer(x, cache=cache)
    p50, p20, p80 = time_fn(step, device=device, warmup=3, reps=reps)
    rows.append(row("mamba2", "decode_auto", "decode", "time", "ms", batch, p50, p20, p80, config=cfg,
                    device=device))
    table.append((name, "decode_auto (whole mixer step)", "decode", p50, batch / p50 * 1e3))
    # The state-update op alone, against mamba_ssm's Triton selective_state_update when installed.
    H, P, N, G = shape["num_heads"], shape["head_dim"], shape["d_state"], shape["n_groups"]
    st = torch.zeros(batch, H, P, N, device=device, dtype=torch.float32)
    xs = torch.randn(batch, H, P, device=device, dtype=dtype)
    dt = torch.randn(batch, H, device=device, dtype=dtype)
    A = -torch.rand(H, device=device)
    Bm = torch.randn(batch, G, N, device=device, dtype=dtype)
    Cm = torch.randn(batch, G, N, device=device, dtype=dtype)
    D, dtb = torch.ones(H, device=device), torch.zeros(H, device=device)
    provs = {f"state_update_{b}": (lambda b=b: ops.ssd_state_update(st, xs, dt, A, Bm, Cm, D=D, dt_bias=dtb,
                                                                    dt_softplus=True, backend=b))
             for b in (["torch", "triton"] if device.type == "cuda" else ["torch"])}
    try:
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update
        Ae = A[:, None, None].expand(H, P, N)
        provs["state_update_mamba_ssm"] = lambda: selective_state_update(
            st, xs, dt[..., None].expand(batch, H, P), Ae, Bm, Cm, D=D[:, None].expand(H, P),
            dt_bias=dtb[:, None].expand(H, P), dt_softplus=True)
    except ImportError:
        pass
    for prov, fn in provs.items():
        p50, p20, p80 = time_fn(fn, device=device, warmup=3, reps=reps)
        rows.append(row("mamba2", prov, "decode", "time", "ms", batch, p50, p20, p80, config=cfg, device=device))
        table.append((name, prov, "decode", p50, batch / p50 * 1e3))
    return rows, table


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="bfloat16 (GPU default) or float32 (CPU default)")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (GPU check / CI smoke)")
    ap.add_argument("--overwrite", action="store_true", help="replace earlier rows of the same configuration")
    args = parse_args(ap, argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    reps = 5 if args.quick else 20
    if device.type == "cuda":
        shapes, tokens, batch = SHAPES, 8192, 64
    else:
        shapes, tokens, batch = {"cpu-scaled": CPU_SHAPE}, 512, 16
    print(f"Mamba2 mixer on {device_name(device)}, {str(dtype).removeprefix('torch.')}, tokens/step {tokens}")
    rows, table = [], []
    for name, shape in shapes.items():
        r, t = bench_layer(name, shape, tokens, device, dtype, reps)
        rows += r
        table += t
        r, t = bench_decode(name, shape, batch, device, dtype, reps)
        rows += r
        table += t
    def group(p):           # providers compared with each other: ssd_* (plain / packed), state_update_*
        return ("ssd", p.endswith("_packed")) if p.startswith("ssd_") else (p.split("_")[0], False)
    base = {(n, m, group(p)): ms for n, p, m, ms, _ in table if p in ("ssd_torch", "ssd_torch_packed",
                                                                       "state_update_torch")}
    print(f"{'shape':22s} {'provider':34s} {'mode':8s} {'ms p50':>10s} {'tok/s':>12s} {'vs torch':>9s}")
    for n, p, m, ms, tps in table:
        ref = base.get((n, m, group(p)))
        ratio = f"{ref / ms:8.2f}x" if ref else ""
        print(f"{n:22s} {p:34s} {m:8s} {ms:10.3f} {tps:12.0f} {ratio:>9s}")
    print("wrote", append_rows("mamba2", rows, overwrite=args.overwrite))


if __name__ == "__main__":
    main()
