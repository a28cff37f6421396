"""End-to-end evaluation benchmark: SmolLM2-135M on the three bundled stand-ins with their default decoding.

    python bench/bench_eval.py [--out DIR] [--limit K] [--record DIR --load 'L1, L5, L15']

Runs `python -m prism_fast.eval`'s evaluate() into a fresh DIR (or, with --record, reads the results.json of
an evaluation already run with these settings) and writes rows to bench/results/eval.csv: wall time, generated
tokens/s, the rollout engine's share of the wall time (generate calls), scoring time, with the machine's load
average (the CPU is shared: figures are only comparable at similar load).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from utils import append_rows, row

BENCHES = ["math_standin", "code_standin", "science_standin"]


def record(res: dict, load: str, limit: int | None) -> None:
    t = res["timing"]
    cfg = {"model": res["model"], "benches": BENCHES, "limit": limit, "load": load,
           "threads": int(os.environ.get("OMP_NUM_THREADS", 0)) or None, "samples": t["generated_samples"],
           "tokens": t["generated_tokens"], "avg_paper": res["avg_paper"]["value"],
           "decoding": {n: b["decoding"] for n, b in res["benchmarks"].items()}}
    x = t["generated_samples"]
    rows = [row("eval", "prism_fast", "standins", "wall", "s", x, t["wall_s"], config=cfg, device="cpu"),
            row("eval", "prism_fast", "standins", "tokens_per_s", "tok/s", x, t["generated_tokens_per_s"],
                config=cfg, device="cpu"),
            row("eval", "prism_fast", "standins", "engine_share", "fraction", x, t["engine_share_of_wall"],
                config=cfg, device="cpu"),
            row("eval", "prism_fast", "standins", "score", "s", x, t["score_s"], config=cfg, device="cpu")]
    print(f"wrote {append_rows('eval', rows)}")
    print(json.dumps({k: t[k] for k in ("wall_s", "generate_s", "score_s", "generated_samples", "generated_tokens",
                                        "generated_tokens_per_s", "engine_share_of_wall")}, indent=2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, help="evaluation directory (default: a fresh temporary one)")
    p.add_argument("--limit", type=int)
    p.add_argument("--record", type=Path, help="record the results.json of a finished run instead of running")
    p.add_argument("--load", help="with --record: the `uptime` load averages seen during that run")
    a = p.parse_args()
    load = a.load or ", ".join(f"{x:.2f}" for x in os.getloadavg())
    if a.record:
        record(json.loads((a.record / "results.json").read_text()), load, a.limit)
        return
    from prism_fast.eval.runner import EvalConfig, evaluate
    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
        out = a.out or Path(tmp) / "run"
        res = evaluate(EvalConfig(model="smollm2", benches=BENCHES, out=out, limit=a.limit))
    record(res, load, a.limit)


if __name__ == "__main__":
    main()
