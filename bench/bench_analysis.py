"""Benchmark of `python -m prism_fast.analyze weights`: seconds per GB of checkpoint and peak RSS, on two generated
bf16 checkpoints of ~2 GB each (llama-1B-like shapes, sharded HF layout), 1 vs 2 worker processes, side by side
with the script a user would otherwise write (safetensors.load_file both checkpoints, then per-tensor torch math).

Every run is a fresh subprocess (peak RSS = that process + its largest worker, from getrusage). Files are read
from a warm page cache (they were just written; dropping caches would disturb other users of the machine), so
this measures compute + memory copies, not disk. s/GB = wall seconds of the analysis (imports excluded) divided by
the size of ONE checkpoint; both checkpoints are read.

  python bench/bench_analysis.py                 # 2 GB checkpoints, 3 reps
  python bench/bench_analysis.py --quick         # 0.5 GB, 1 rep
  python bench/bench_analysis.py --smollm2 --skip-weights   # CKA end to end on the bundled SmolLM2-135M GGUF
The analysis runs on CPU only (it is memory-bandwidth bound); `--device cuda` is accepted and labels nothing else.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from utils import append_rows, device_name, row  # noqa: E402

NAIVE = r"""
import json, resource, sys, time, torch
from safetensors.torch import load_file
import glob
t0 = time.perf_counter()
cpu0 = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
def load(d):
    sd = {}
    for f in sorted(glob.glob(d + "/*.safetensors")):
        sd.update(load_file(f))
    return sd
A, B = load(sys.argv[1]), load(sys.argv[2])
out = {}
for k in A:
    a, b = A[k].float(), B[k].float()
    d = b - a
    out[k] = [(d.norm() / a.norm()).item()] + [(d.abs() > t * a.abs()).float().mean().item()
                                               for t in (0.001, 0.005, 0.01, 0.02, 0.05, 0.1)]
u = resource.getrusage(resource.RUSAGE_SELF)
hwm = next(int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"seconds": time.perf_counter() - t0, "cpu_seconds": u.ru_utime + u.ru_stime - cpu0,
                  "peak_rss_mb": hwm}))
"""


def make_checkpoints(root: Path, target_gb: float) -> tuple[Path, Path, int, dict]:
    """Two HF-sharded bf16 checkpoints with llama-like tensors; new = base with 30% of elements moved by ~2%."""
    from safetensors.torch import save_file

    hidden, inter, vocab = 2048, 5632, 32000
    per_layer = 4 * hidden * hidden + 3 * hidden * inter + 2 * hidden
    n_layers = max(1, round((target_gb * 2**30 / 2 - 2 * vocab * hidden) / per_layer))
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "lm_head.weight": (vocab, hidden),
              "model.norm.weight": (hidden,)}
    for i in range(n_layers):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (hidden, hidden), p + "self_attn.k_proj.weight": (hidden, hidden),
                       p + "self_attn.v_proj.weight": (hidden, hidden), p + "self_attn.o_proj.weight": (hidden, hidden),
                       p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden),
                       p + "mlp.down_proj.weight": (hidden, inter), p + "input_layernorm.weight": (hidden,),
                       p + "post_attention_layernorm.weight": (hidden,)})
    g = torch.Generator().manual_seed(0)
    names = list(shapes)
    n_shards = max(1, round(target_gb * 2))  # ~0.5 GB shards
    size = 0
    for d in ("base", "new"):
        (root / d).mkdir(parents=True, exist_ok=True)
    weight_map = {}
    for s in range(n_shards):
        fn = f"model-{s + 1:05d}-of-{n_shards:05d}.safetensors"
        part_b, part_n = {}, {}
        for name in names[s::n_shards]:
            w = torch.randn(shapes[name], generator=g) * 0.02
            mask = torch.rand(shapes[name], generator=g) < 0.3
            part_b[name] = w.bfloat16()
            part_n[name] = torch.where(mask, w * 1.02, w).bfloat16()
            size += w.numel() * 2
            weight_map[name] = fn
        save_file(part_b, str(root / "base" / fn))
        save_file(part_n, str(root / "new" / fn))
    for d in ("base", "new"):
        (root / d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return root / "base", root / "new", size, {"n_layers": n_layers, "hidden": hidden, "inter": inter,
                                               "vocab": vocab, "dtype": "bf16", "n_shards": n_shards}


def run_prism(base, new, workers: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "prism_fast.analyze", "weights", "--base", str(base), "--new", str(new),
           "--workers", str(workers), "--out", str(out), "--no-plots", "--no-progress"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=1800)
    r = json.loads((out / "weights.json").read_text())
    return {"seconds": r["seconds"], "cpu_seconds": r["cpu_seconds"], "peak_rss_mb": r["peak_rss_mb"]["self"],
            "self_rss_mb": r["peak_rss_mb"]["self"], "child_rss_mb": r["peak_rss_mb"]["largest_worker"],
            "frac1": r["pairs"][0]["group"]["all"]["changed_frac"]["1%"]}


def run_naive(base, new) -> dict:
    p = subprocess.run([sys.executable, "-c", NAIVE, str(base), str(new)], check=True, capture_output=True,
                       text=True, timeout=1800)
    return json.loads(p.stdout.strip().splitlines()[-1])


def bench_smollm2(out: Path) -> dict:
    from prism_fast.models import smollm2_gguf_path

    g = str(smollm2_gguf_path())
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "prism_fast.analyze", "cka", "--a", g, "--b", g, "--num-inputs", "20",
                    "--resamples", "5", "--resample-size", "20", "--max-tokens", "64", "--out", str(out),
                    "--no-progress"], check=True, capture_output=True, timeout=1800)
    r = json.loads((out / "cka.json").read_text())
    return {"wall_s": time.perf_counter() - t0, "analysis_s": r["seconds"],
            "min_cka_all": r["distributions"]["all"]["min_cka"], "layers": len(r["distributions"]["all"]["layer_cka"])}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=2.0, help="size of each generated checkpoint")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="0.5 GB checkpoints, 1 rep")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--no-naive", action="store_true")
    ap.add_argument("--naive-reps", type=int, default=1, help="the naive baseline is slow: 1 rep by default")
    ap.add_argument("--smollm2", action="store_true", help="also run `cka` end to end on SmolLM2-135M (GGUF)")
    ap.add_argument("--skip-weights", action="store_true", help="only the SmolLM2 CKA run")
    ap.add_argument("--device", default="cpu", help="accepted for the common bench interface; analysis is CPU-only")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.gb, args.reps = 0.5, 1
    machine = device_name("cpu")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_analysis_") as tmp:
        tmp = Path(tmp)
        if args.skip_weights:
            args.gb = 0.0
        t0 = time.perf_counter()
        base, new, size, cfg = make_checkpoints(tmp, args.gb) if args.gb else (None, None, 1, {})
        gb = size / 2**30
        print(f"machine: {machine}; generated 2 x {gb:.2f} GiB in {time.perf_counter() - t0:.0f} s; {cfg}")
        providers = [(f"prism_fast workers={w}", lambda w=int(w): run_prism(base, new, w, tmp / f"out{w}"))
                     for w in args.workers.split(",") if not args.skip_weights]
        if providers and not args.no_naive:
            providers.append(("naive load_file + torch", lambda: run_naive(base, new)))
        results = {}
        for name, fn in providers:
            runs = [fn() for _ in range(args.naive_reps if name.startswith("naive") else args.reps)]
            sec = statistics.median(r["seconds"] for r in runs)
            cpu = statistics.median(r["cpu_seconds"] for r in runs)
            rss = max(r["peak_rss_mb"] for r in runs)
            results[name] = (sec, cpu, rss)
            child = max(r.get("child_rss_mb", 0) for r in runs)
            print(f"{name:28s} wall {sec:7.2f} s = {sec / gb:6.2f} s/GiB | CPU {cpu:7.2f} s = {cpu / gb:6.2f} "
                  f"CPU-s/GiB | peak RSS {rss:6.0f} MiB (largest worker {child:.0f} MiB, each worker is a separate"
                  f" process) | wall runs {[round(r['seconds'], 2) for r in runs]}")
            conf = {**cfg, "gib_per_ckpt": round(gb, 3), "reps": len(runs), "page_cache": "warm",
                    "largest_worker_rss_mb": round(child)}
            for metric, unit, vals in (("wall_per_gib", "s/GiB", [r["seconds"] / gb for r in runs]),
                                       ("cpu_per_gib", "CPU-s/GiB", [r["cpu_seconds"] / gb for r in runs])):
                v = sorted(vals)
                rows.append(row("analysis", name, "weights", metric, unit, round(gb, 2), statistics.median(v),
                                v[0], v[-1], config=conf, device="cpu"))
            rows.append(row("analysis", name, "weights", "peak_rss", "MiB", round(gb, 2), rss, config=conf,
                            device="cpu"))
        ref = results.get("naive load_file + torch")
        if ref:
            for name, (sec, cpu, rss) in results.items():
                print(f"  {name:28s} vs naive: wall {ref[0] / sec:5.2f}x faster, CPU {ref[1] / cpu:5.2f}x less, "
                      f"peak RSS {rss / ref[2]:5.2f}x")
        if args.smollm2:
            s = bench_smollm2(tmp / "cka")
            print(f"SmolLM2-135M CKA (3 x 20 inputs, 2 models): {s}")
            rows.append(row("analysis", "prism_fast", "cka_smollm2", "wall", "s", 60, s["wall_s"],
                            config={"num_inputs": 20, "max_tokens": 64}, device="cpu"))
    print("wrote", append_rows("analysis", rows, overwrite=args.overwrite))


if __name__ == "__main__":
    main()
