"""Data pipeline benchmark: tokenization throughput (1 vs 2 processes), index build times for a 10^9-token
mixture (C++ vs the Python twin, side by side), loader throughput vs what a trainer consumes.

    python bench/bench_data.py                 # full run on this machine (a few minutes on 2 cores)
    python bench/bench_data.py --quick         # smaller inputs (CI / smoke)
    python bench/bench_data.py --device cuda --quick   # also measures the consumer (SmolLM2 fwd+bwd) on the GPU

Rows go to bench/results/data.csv (bench/utils.py columns). Everything except the consumer runs on the CPU by
design: the loader is host code. The consumer reference is measured, not assumed: HF transformers SmolLM2-135M
(de-quantized from the bundled GGUF) forward+backward on one packed row, in tokens/s.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import utils  # noqa: E402

from prism_fast.data import build_loader, default_corpus, prepare  # noqa: E402
from prism_fast.data.corpora import HERE as CORPORA, bundled_tokenizer_path  # noqa: E402
from prism_fast.data.presets import percentages  # noqa: E402
from prism_fast.ops import data_index as di  # noqa: E402

ROWS: list[dict] = []


def record(provider, mode, metric, unit, x, p50, config, p20=None, p80=None):
    ROWS.append(utils.row("data", provider, mode, metric, unit, x, p50, p20, p80, config=config, device="cpu"))


def bench_tokenize(tmp: Path, mb: float, tok: str) -> None:
    """prepare() throughput on the bundled corpora's text repeated to `mb` MB (qa format: real JSON parsing,
    formatting, offsets for the loss mask)."""
    lines = []
    for name in ("math_generated.jsonl", "code_generated.jsonl", "science_generated.jsonl"):
        lines += (CORPORA / name).read_text().splitlines(keepends=True)
    src = tmp / "tok_input.jsonl"
    with open(src, "w") as f:
        n = 0
        while n < mb * 2**20:
            for line in lines:
                f.write(line)
                n += len(line)
    size = os.path.getsize(src) / 2**20
    prepare([str(src)], tok, str(tmp / "warm"), fmt="qa", progress=False)  # loads + caches the tokenizer
    print(f"\n[tokenize] {size:.1f} MB JSONL (qa format), SmolLM2 tokenizer (wall figures depend on how busy the "
          f"machine is; MB per CPU-second does not; load average now {os.getloadavg()[0]:.1f})")
    base = None
    old = os.environ.get("TOKENIZERS_PARALLELISM")
    # (label, workers, Rust threads in the single process)
    for label, workers, rust_threads in (("1 process, 1 thread", 1, False), ("1 process, Rust threads", 1, True),
                                         ("2 processes", 2, False)):
        os.environ["TOKENIZERS_PARALLELISM"] = "true" if rust_threads else "false"
        cpu0, ch0, t0 = time.process_time(), resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        meta = prepare([str(src)], tok, str(tmp / f"tok{workers}"), fmt="qa", workers=workers, progress=False)
        dt = time.perf_counter() - t0
        ch1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # workers are reaped inside prepare()
        cpu = time.process_time() - cpu0 + (ch1.ru_utime + ch1.ru_stime) - (ch0.ru_utime + ch0.ru_stime)
        mbs, tps = size / dt, meta["num_tokens"] / dt
        base = base or mbs
        print(f"  {label:<24}: {dt:6.2f} s wall {mbs:6.2f} MB/s {tps / 1e3:7.1f} k tok/s (x{mbs / base:.2f}) | "
              f"{cpu:6.2f} CPU-s -> {size / cpu:5.2f} MB per CPU-second")
        cfg = {"mb": round(size, 2), "format": "qa", "workers": workers, "rust_threads": rust_threads}
        name = f"prepare_w{workers}" + ("_rust_threads" if rust_threads else "")
        record(name, "tokenize", "throughput", "MB/s", workers, mbs, cfg)
        record(name, "tokenize", "throughput", "tokens/s", workers, tps, cfg)
        record(name, "tokenize", "cpu_efficiency", "MB/CPU-s", workers, size / cpu, cfg)
    if old is None:
        os.environ.pop("TOKENIZERS_PARALLELISM", None)
    else:
        os.environ["TOKENIZERS_PARALLELISM"] = old


def _synthetic_mixture(total_tokens: int, seed: int = 0):
    """MCS-shaped doc lengths: 11 sources sharing `total_tokens`, lognormal lengths around 1k tokens."""
    rng = np.random.default_rng(seed)
    pct = percentages("mcs")
    lens = {}
    for name, p in pct.items():
        want = int(total_tokens * p / 100)
        n = max(1, want // 1000)
        lens[name] = np.clip(rng.lognormal(6.5, 1.0, size=n), 16, 65536).astype(np.int64)
    return pct, lens


def _time(fn, reps):
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return utils.quantiles([t * 1e3 for t in times])


def bench_index(total_tokens: int, seq_len: int, py_docs_cap: int, blend_samples: int, reps: int) -> None:
    pct, lens = _synthetic_mixture(total_tokens)
    all_lens = np.concatenate(list(lens.values()))
    n_docs, tokens = len(all_lens), int(all_lens.sum())
    n_rows = tokens // seq_len
    w = np.array(list(pct.values()))
    print(f"\n[index] MCS-shaped mixture: {tokens / 1e9:.2f}B tokens, {n_docs / 1e6:.2f}M documents, seq_len {seq_len}"
          f" -> {n_rows} rows; native module: {di.native_available()}")
    cap = min(py_docs_cap, n_docs)
    jobs = [
        ("blended", f"{n_rows} samples", lambda b: di.blended_index(w, n_rows, backend=b), n_rows, n_rows),
        ("blended", f"{blend_samples} samples", lambda b: di.blended_index(w, blend_samples, backend=b),
         blend_samples, min(blend_samples, 1_000_000)),
        ("concat", f"{n_docs} docs", lambda b: di.concat_index(all_lens, seq_len, backend=b), n_docs, cap),
        ("bfd", f"{n_docs} docs", lambda b: di.bfd_index(all_lens, seq_len, 256, backend=b), n_docs, cap),
    ]
    print(f"  {'index':<8}{'size':<20}{'native ms':>12}{'python ms':>12}{'python/native':>15}")
    for name, size, fn, n_full, n_py in jobs:
        cfg = {"tokens": tokens, "docs": n_docs, "seq_len": seq_len, "size": size}
        nat = _time(lambda: fn("native"), reps) if di.native_available() else None
        if n_py == n_full:
            py = _time(lambda: fn("python"), 1)
            note = ""
        else:  # the Python twin is timed on a prefix and scaled linearly (label says so)
            sub = all_lens[:n_py] if name in ("concat", "bfd") else None
            if name == "concat":
                one = _time(lambda: di.concat_index(sub, seq_len, backend="python"), 1)
            elif name == "bfd":
                one = _time(lambda: di.bfd_index(sub, seq_len, 256, backend="python"), 1)
            else:
                one = _time(lambda: di.blended_index(w, n_py, backend="python"), 1)
            py = tuple(t * n_full / n_py for t in one)
            note = f"  (python timed on {n_py} and scaled x{n_full / n_py:.1f})"
        ratio = py[0] / nat[0] if nat else float("nan")
        print(f"  {name:<8}{size:<20}{(nat or [float('nan')])[0]:>12.1f}{py[0]:>12.1f}{ratio:>14.1f}x{note}")
        if nat:
            record("native", "index", name, "ms", n_full, *nat[:1], cfg, nat[1], nat[2])
        record("python" if not note else "python_scaled", "index", name, "ms", n_full, py[0], cfg, py[1], py[2])


def _consumer_tokens_per_s(device: str, seq_len: int, steps: int) -> tuple[float, str]:
    """Train-step throughput of HF SmolLM2-135M (fwd + bwd + AdamW) on one packed row: what the loader must
    keep up with on this device."""
    import torch
    import transformers

    if device == "cpu":
        # One intra-op thread: on a shared, oversubscribed machine OpenMP barriers spin and distort the figure.
        torch.set_num_threads(1)
    gguf = Path(bundled_tokenizer_path())
    model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                              dtype=torch.float32).to(device)
    if device == "cuda":
        model = model.to(torch.bfloat16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    ids = torch.randint(0, 49152, (1, seq_len), device=device)

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    p50, _, _ = utils.time_fn(step, device=device, warmup=1, reps=steps)
    return seq_len / (p50 / 1e3), utils.device_name(device)


def bench_loader(tmp: Path, tok: str, seq_len: int, steps: int, device: str, consumer: bool) -> None:
    mix = default_corpus(tok, tmp / "default")
    print(f"\n[loader] bundled default corpus ({sum(mix.train_tokens(i) for i in range(len(mix)))} train tokens, "
          f"{len(mix)} sources), seq_len {seq_len}, micro_batch 1, prefetch 2")
    results = {}
    for packing in ("concat", "bfd"):
        loader = build_loader(mix, seq_len=seq_len, packing=packing, bfd_overlap=128 if packing == "bfd" else 0)
        next(loader)  # index build + thread start
        t0 = time.perf_counter()
        for _ in range(steps):
            next(loader)
        dt = time.perf_counter() - t0
        loader.close()
        tps = steps * seq_len / dt
        results[packing] = tps
        print(f"  {packing:<7}: {tps / 1e6:7.2f} M tokens/s  ({dt / steps * 1e3:.3f} ms per batch)")
        record(f"loader_{packing}", "loader", "throughput", "tokens/s", seq_len, tps,
               {"seq_len": seq_len, "steps": steps, "packing": packing})
    h200 = 10_000
    print(f"  vs an 8B model on one H200 (~{h200 / 1e3:.0f}k tokens/s consumed, issue 3 figure): "
          f"{results['concat'] / h200:,.0f}x headroom")
    if consumer:
        for dev in (["cuda"] if device == "cuda" else ["cpu"]):
            tps, name = _consumer_tokens_per_s(dev, 256 if dev == "cpu" else 2048, 2 if dev == "cpu" else 10)
            print(f"  SmolLM2-135M train step on {name}: {tps:,.0f} tokens/s consumed -> loader headroom "
                  f"{results['concat'] / tps:,.0f}x")
            ROWS.append(utils.row("data", "smollm2_train_step", "consumer", "throughput", "tokens/s",
                                  256 if dev == "cpu" else 2048, tps, config={"model": "SmolLM2-135M"},
                                  device=dev))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--no-consumer", action="store_true", help="skip the SmolLM2 train-step reference")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args()
    print(f"machine: {utils.device_name('cpu')}; native index module: {di.native_available()}")
    tok = bundled_tokenizer_path()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        bench_tokenize(tmp, 2 if args.quick else 8, tok)
        if args.quick:
            bench_index(10**8, 8192, 100_000, 1_000_000, 3)
        else:
            bench_index(10**9, 8192, 200_000, 10_000_000, 3)
        # The CPU consumer reference (minutes on 2 cores) only runs in full mode; on CUDA it always runs.
        consumer = not args.no_consumer and (args.device == "cuda" or not args.quick)
        bench_loader(tmp, tok, 2048, 100 if args.quick else 500, args.device, consumer)
    path = utils.append_rows("data", ROWS, overwrite=args.overwrite)
    print(f"\nrows appended to {path}")


if __name__ == "__main__":
    main()
