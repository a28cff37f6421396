"""Context parallelism: tokens/s and memory per rank for cp=2 at 2x the sequence length vs cp=1 at 1x.

The ideal is equal tokens/s per rank (each rank still processes L tokens, plus the K/V all-gather and the extra
causal work of attending to 2L keys) at the same activation memory per rank, i.e. half the activation memory per
token of the row. A small dense llama (fp32, no activation checkpointing, so activations dominate) runs one
training step (forward + backward of the summed loss) per repetition on a single long document; gloo on CPU.
Both layouts run side by side in one invocation as torchrun jobs of this file (`--worker`).

Memory per rank, two measures: "saved activations" = bytes of the storages autograd keeps for backward from
the forward, of tensors with a token dimension, each storage once (torch.autograd.graph.saved_tensors_hooks;
exact, allocator-independent, no weights: what CP divides; the model's dims avoid the token counts), and "peak
RSS" = the process's VmHWM after the steps (model included, no optimizer). On CUDA it would be
max_memory_allocated; this bench has only run on CPU. The cp=2 job also pays FSDP's all-gather / reduce-scatter
over its 2 ranks, which cp=1 does not.

    python bench/bench_cp.py [--seq 2048] [--reps 5] [--overwrite]
Rows go to bench/results/cp.csv (bench/utils.py columns).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MODEL = {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4, "num_attention_heads": 8,
         "num_key_value_heads": 4, "vocab_size": 4000, "max_position_embeddings": 65536}


def _vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(seq: int, reps: int, out: str) -> None:
    """One rank of a cp = world-size job on one row of `seq` tokens; rank 0 writes the measurements."""
    import torch
    import torch.distributed as dist

    from prism_fast.distributed import ParallelConfig, destroy_distributed, init_distributed
    from prism_fast.distributed.context_parallel import ContextParallel
    from prism_fast.train.config import ModelSection
    from prism_fast.train.model_init import build_parallel_model

    torch.set_num_threads(1)
    rank, world, _ = init_distributed("cpu")
    pcfg = ParallelConfig(param_dtype="fp32", reduce_dtype="fp32", ac="none", cp=world)
    dims = pcfg.build(world)
    model, _, _ = build_parallel_model(ModelSection(path="tiny", tiny_overrides=MODEL), pcfg, dims,
                                       torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, MODEL["vocab_size"], (1, seq), generator=g)
    batch = {"input_ids": ids, "labels": torch.roll(ids, -1, 1), "position_ids": torch.arange(seq)[None],
             "cu_seqlens": torch.tensor([0, seq], dtype=torch.int32)}
    if world > 1:
        batch = ContextParallel(dims.cp_mesh(), torch.device("cpu")).shard(batch)
    kw = {"cu_seqlens": batch.get("cu_seqlens"), "cp": batch.get("cp")}

    saved: dict[int, int] = {}                                     # storage address -> bytes (views counted once)

    token_dims = {batch["input_ids"].shape[1], seq}                 # this rank's tokens, the row's tokens

    def pack(t):
        if token_dims & set(t.shape):                              # activations have a token dimension; weights
            st = t.untyped_storage()                               # (and their concatenations) do not
            saved[st.data_ptr()] = st.nbytes()
        return t

    def step(count=False):
        with torch.autograd.graph.saved_tensors_hooks(pack if count else (lambda t: t), lambda t: t):
            loss = model(batch["input_ids"], position_ids=batch["position_ids"], labels=batch["labels"],
                         loss_reduction="sum", **kw)
        loss.backward()
        model.zero_grad(set_to_none=True)

    step(count=True)                                               # warmup + saved-activation count
    times = []
    for _ in range(reps):
        dist.barrier()
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    stats = torch.tensor([sorted(times)[len(times) // 2], sum(saved.values()) / 2**20, _vm_hwm_mb()],
                         dtype=torch.float64)
    dist.all_reduce(stats, op=dist.ReduceOp.MAX)                  # the slowest / largest rank
    if rank == 0:
        local = batch["input_ids"].shape[1]
        Path(out).write_text(json.dumps({"cp": world, "seq": seq, "tokens_per_rank": local,
                                         "step_s": stats[0].item(), "tokens_per_s_per_rank": local / stats[0].item(),
                                         "saved_act_mib": stats[1].item(), "peak_rss_mib": stats[2].item()}))
    destroy_distributed()


def _launch(nproc: int, seq: int, reps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
        env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
        p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                            __file__, "--worker", "--seq", str(seq), "--reps", str(reps), "--out", str(out)],
                           env=env, capture_output=True, text=True, timeout=3600)
        if p.returncode:
            raise RuntimeError(f"cp={nproc} job failed:\n{p.stderr[-4000:]}")
        return json.loads(out.read_text())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seq", type=int, default=2048, help="sequence length of the cp=1 run (cp=2 gets 2x)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        return worker(a.seq, a.reps, a.out)
    from bench.utils import append_rows, device_name, row
    load = os.getloadavg()
    res = {1: _launch(1, a.seq, a.reps), 2: _launch(2, 2 * a.seq, a.reps)}
    load_after = os.getloadavg()
    rows, cfg = [], {"model": MODEL, "dtype": "fp32", "ac": "none", "threads_per_rank": 1, "backend": "gloo",
                     "load_avg_1m": [round(load[0], 2), round(load_after[0], 2)]}
    print(f"context parallelism, {device_name('cpu')}, load average {load[0]:.1f} -> {load_after[0]:.1f}")
    print(f"{'layout':>14} {'row tokens':>10} {'tok/s/rank':>10} {'step s':>8} {'saved act MiB/rank':>19} "
          f"{'peak RSS MiB/rank':>18}")
    for cp, r in res.items():
        print(f"{f'cp={cp}':>14} {r['seq']:>10} {r['tokens_per_s_per_rank']:>10.0f} {r['step_s']:>8.3f} "
              f"{r['saved_act_mib']:>19.1f} {r['peak_rss_mib']:>18.0f}")
        for metric, unit, key in (("tokens_per_s_per_rank", "tok/s", "tokens_per_s_per_rank"),
                                  ("saved_activations_per_rank", "MiB", "saved_act_mib"),
                                  ("peak_rss_per_rank", "MiB", "peak_rss_mib")):
            rows.append(row("cp", f"cp={cp}", "train_step", metric, unit, r["seq"], r[key],
                            config={**cfg, "cp": cp}, device="cpu"))
    r1, r2 = res[1], res[2]
    speed = r2["tokens_per_s_per_rank"] / r1["tokens_per_s_per_rank"]
    print(f"ratio cp=2 @ {2 * a.seq} / cp=1 @ {a.seq}: tokens/s per rank {speed:.2f}x, "
          f"saved activations per rank {r2['saved_act_mib'] / r1['saved_act_mib']:.2f}x "
          f"(ideal 1.00x and 1.00x: half the activation memory per token of the row)")
    print(append_rows("cp", rows, overwrite=a.overwrite))


if __name__ == "__main__":
    main()
